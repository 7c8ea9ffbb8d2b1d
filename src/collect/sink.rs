//! Where the collector puts records: a JetStream stream, one subject per node and camera, and a
//! second stream that keeps one message per node, the highest offset held (a key-value bucket in
//! all but name: async-nats' bucket calls do not parse Debian's nats-server 2.9 replies).
//!
//! Each record is published with the message id `<node>:<offset>`, so that JetStream drops a
//! record sent twice within its duplicate window (a collector that died between storing a record
//! and acknowledging it to the node gets it again at once). A break of any length is covered by
//! the bucket: a node that comes back is told what is held and starts after it.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use prost::Message;
use prost::bytes::Bytes;
use tokio_stream::StreamExt as _;

use crate::config::NatsConfig;
use crate::error::{Error, Result, redact_uri};
use crate::pb;

/// The header JetStream deduplicates on.
const MSG_ID: &str = "Nats-Msg-Id";

/// Records published at once, and awaiting confirmation at once over all nodes: below the 5,000
/// the client allows (`max_ack_inflight`), leaving room for the offset notes and node infos.
const CHUNK: usize = 256;
const IN_FLIGHT: usize = 4096;

pub struct Sink {
    jetstream: jetstream::Context,
    in_flight: tokio::sync::Semaphore,
    offsets: stream::Stream,
    /// The records' stream.
    stream: String,
    offsets_prefix: String,
    prefix: String,
}

/// A record ready to be written: where it goes and its bytes.
pub struct Outgoing {
    pub offset: u64,
    subject: String,
    id: String,
    payload: Bytes,
}

impl Sink {
    /// Connects to NATS and makes sure the stream and the bucket exist with this config. The
    /// client reconnects by itself when the server goes away later.
    pub async fn connect(config: &NatsConfig) -> Result<Sink> {
        let unavailable = |what: &str, err: &dyn std::fmt::Display| Error::Unavailable(format!("{what}: {err}"));
        let client = async_nats::ConnectOptions::new()
            .name("retina-edge collect")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected: holding the nodes' records until it is back")
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            })
            .connect(
                crate::config::nats_servers(&config.url).map_err(|e| Error::Unavailable(format!("nats.url: {e}")))?,
            )
            .await
            .map_err(|e| unavailable(&format!("connecting to NATS at {}", redact_uri(&config.url)), &e))?;
        let jetstream = jetstream::new(client);
        let stream_config = stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            max_age: Duration::from_secs_f64(config.max_age_hours * 3600.0),
            max_bytes: if config.max_bytes == 0 {
                -1
            } else {
                config.max_bytes as i64
            },
            duplicate_window: Duration::from_secs_f64(config.duplicate_window_seconds),
            ..Default::default()
        };
        // JetStream may still be starting (or electing a leader) when the collector starts.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match jetstream.create_or_update_stream(stream_config.clone()).await {
                Ok(_) => break,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(%err, stream = %config.stream, "JetStream not ready yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => return Err(unavailable(&format!("creating stream {}", config.stream), &err)),
            }
        }
        let offsets_prefix = config.offsets_stream.clone();
        jetstream
            .create_or_update_stream(stream::Config {
                name: config.offsets_stream.clone(),
                description: Some("highest offset held per retina-edge node".into()),
                subjects: vec![format!("{offsets_prefix}.>")],
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                max_messages_per_subject: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&format!("creating stream {}", config.offsets_stream), &e))?;
        let offsets = jetstream
            .get_stream(&config.offsets_stream)
            .await
            .map_err(|e| unavailable(&format!("opening stream {}", config.offsets_stream), &e))?;
        Ok(Sink {
            jetstream,
            in_flight: tokio::sync::Semaphore::new(IN_FLIGHT),
            offsets,
            stream: config.stream.clone(),
            offsets_prefix,
            prefix: config.subject_prefix.clone(),
        })
    }

    /// The highest offset held for `node`, if any: the last one noted, or the newest record of
    /// the node's in the stream, whichever is higher. Notes are made at most twice a second
    /// (`pump::NOTE_INTERVAL`), so after a kill the records say more; once retention has removed
    /// a node's records, the note still does.
    pub async fn held_through(&self, node: &str) -> Result<Option<u64>> {
        let failed = |e: &dyn std::fmt::Display| Error::Unavailable(format!("reading the offset held for {node}: {e}"));
        let subject = self.offsets_subject(node);
        let noted = match self.offsets.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|text| text.parse::<u64>().ok()),
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
            Err(err) => return Err(failed(&err)),
        };
        // The newest record on each of the node's subjects (one per camera, and gap notices).
        let records = self.jetstream.get_stream(&self.stream).await.map_err(|e| failed(&e))?;
        let mut subjects = records
            .info_with_subjects(format!("{}.{}.>", self.prefix, subject_token(node)))
            .await
            .map_err(|e| failed(&e))?;
        let mut newest = noted;
        while let Some(entry) = subjects.next().await {
            let (subject, _) = entry.map_err(|e| failed(&e))?;
            if subject.ends_with("._node") {
                continue;
            }
            let message = match records.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => message,
                // Removed by retention since the listing.
                Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => continue,
                Err(err) => return Err(failed(&err)),
            };
            if let Ok(record) = pb::FrameDescriptor::decode(message.payload.as_ref()) {
                newest = newest.max(Some(super::pump::offset_of(&record)));
            }
        }
        Ok(newest)
    }

    fn offsets_subject(&self, node: &str) -> String {
        format!("{}.{}", self.offsets_prefix, subject_token(node))
    }

    /// Records that `node` is held through `offset`.
    pub async fn hold_through(&self, node: &str, offset: u64) -> Result<()> {
        let failed =
            |e: &dyn std::fmt::Display| Error::Unavailable(format!("recording the offset held for {node}: {e}"));
        self.jetstream
            .publish(self.offsets_subject(node), offset.to_string().into())
            .await
            .map_err(|e| failed(&e))?
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    /// Writes what `node` says of itself to `<prefix>.<node>._node` (once per run of the node:
    /// the id is its run id), where a reader finds the detector's class names.
    pub async fn write_node_info(&self, node: &str, info: &pb::NodeInfo) -> Result<()> {
        let record = Outgoing {
            offset: 0,
            subject: format!("{}.{}._node", self.prefix, subject_token(node)),
            id: format!("{node}:node:{}", info.node_run_id),
            payload: Bytes::from(info.encode_to_vec()),
        };
        self.publish_from(std::slice::from_ref(&record))
            .await
            .map_err(|(_, err)| err)
    }

    /// Where a record of `node` goes, and its id.
    pub fn outgoing(&self, node: &str, record: &pb::FrameDescriptor) -> Outgoing {
        let offset = record.gap.as_ref().map_or(record.offset, |gap| gap.last_offset);
        let camera = if record.gap.is_some() {
            "_gap"
        } else {
            record.camera_id.as_str()
        };
        // A gap notice's last offset may be one a record was sent live with before a crash: the
        // two must not share an id, or JetStream would keep only one.
        let id = match &record.gap {
            Some(gap) => format!("{node}:gap:{}-{}", gap.first_offset, gap.last_offset),
            None => format!("{node}:{offset}"),
        };
        Outgoing {
            offset,
            subject: format!("{}.{}.{}", self.prefix, subject_token(node), subject_token(camera)),
            id,
            payload: Bytes::from(record.encode_to_vec()),
        }
    }

    /// Writes `batch` in order and returns once JetStream has stored every record of it. A
    /// record JetStream did not confirm is sent again, with the same id, until it does: nothing
    /// is acknowledged to the node before that, and nothing is stored twice.
    pub async fn write(&self, batch: &[Outgoing], mut on_wait: impl FnMut(&Error)) -> Result<()> {
        let mut confirmed = 0;
        let mut delay = Duration::from_millis(100);
        while confirmed < batch.len() {
            match self.publish_from(&batch[confirmed..]).await {
                Ok(()) => confirmed = batch.len(),
                Err((stored, err)) => {
                    confirmed += stored;
                    on_wait(&err);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        Ok(())
    }

    /// Publishes all of `records`, then waits for each confirmation in order; on a failure,
    /// how many in a row from the start were confirmed.
    async fn publish_from(&self, records: &[Outgoing]) -> std::result::Result<(), (usize, Error)> {
        let mut confirmed = 0;
        for chunk in records.chunks(CHUNK) {
            self.publish_chunk(chunk)
                .await
                .map_err(|(stored, err)| (confirmed + stored, err))?;
            confirmed += chunk.len();
        }
        Ok(())
    }

    /// [`Sink::publish_from`] for at most [`CHUNK`] records. The client lets at most 5,000
    /// publications await their confirmation and makes a publication wait for a place, which an
    /// awaited confirmation frees: many nodes' batches, each holding places while publishing the
    /// rest, would take them all and wait for each other forever (a benchmark with 100 nodes did).
    /// So a chunk takes all the places it needs at once, from a budget below the client's.
    async fn publish_chunk(&self, records: &[Outgoing]) -> std::result::Result<(), (usize, Error)> {
        let _places = self
            .in_flight
            .acquire_many(records.len() as u32)
            .await
            .map_err(|_| (0, Error::Internal("the publication budget was closed".into())))?;
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let mut headers = HeaderMap::new();
            headers.insert(MSG_ID, record.id.as_str());
            match self
                .jetstream
                .publish_with_headers(record.subject.clone(), headers, record.payload.clone())
                .await
            {
                Ok(ack) => pending.push(ack),
                // Those published before it may be stored: sent again, they are dropped by id.
                Err(err) => return Err((0, Error::Unavailable(format!("publishing to JetStream: {err}")))),
            }
        }
        for (confirmed, ack) in pending.into_iter().enumerate() {
            if let Err(err) = ack.await {
                return Err((
                    confirmed,
                    Error::Unavailable(format!("JetStream did not store a record: {err}")),
                ));
            }
        }
        Ok(())
    }
}

/// A node or camera id as one subject token: ids may hold '.', which would split it.
fn subject_token(id: &str) -> String {
    id.replace(['.', '*', '>', ' '], "_")
}
