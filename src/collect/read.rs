//! Reading at the centre: the records collectors wrote into JetStream, through a pull consumer,
//! printed and decoded by the same code as a node's own stream (`deliver::client`). A durable
//! consumer keeps its place on the server: a reader that stops, crashes or is moved resumes
//! where it left off, and several readers with the same durable name share the work.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use prost::Message;
use tokio_stream::StreamExt;

use crate::deliver::client::{Decoder, Output, Printer, Summary};
use crate::error::redact_uri;
use crate::pb;

/// Records asked for at once; each is acknowledged as it is printed.
const BATCH: usize = 256;
/// How long one request for records waits on the server when there are none.
const POLL: Duration = Duration::from_secs(5);

/// Where a new consumer starts; a durable consumer that exists resumes where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the records that arrive from now on.
    New,
    /// With the oldest record the stream keeps.
    Earliest,
    /// With the first record stored at or after this time.
    Time(SystemTime),
}

#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub url: String,
    pub stream: String,
    /// Which records, e.g. `retina.>` (all), `retina.node-7.>` (one node) or `retina.*.gate`.
    pub subject: String,
    /// Keep the consumer's place on the server under this name.
    pub durable: Option<String>,
    pub start: Start,
    pub output: Output,
    pub max_frames: Option<u64>,
    /// Stop once every record the consumer had was read, instead of waiting for more.
    pub until_caught_up: bool,
}

/// Reads, prints and acknowledges records until `max_frames`, or until caught up if asked.
pub async fn read(options: ReadOptions) -> anyhow::Result<Summary> {
    let client = async_nats::ConnectOptions::new()
        .name("retina-edge subscribe")
        .connection_timeout(Duration::from_secs(10))
        .connect(crate::config::nats_servers(&options.url).map_err(anyhow::Error::msg)?)
        .await
        .with_context(|| format!("connecting to NATS at {}", redact_uri(&options.url)))?;
    let jetstream = jetstream::new(client.clone());
    let stream = jetstream
        .get_stream(&options.stream)
        .await
        .with_context(|| format!("opening stream {}", options.stream))?;
    let config = consumer::pull::Config {
        durable_name: options.durable.clone(),
        filter_subject: options.subject.clone(),
        deliver_policy: deliver_policy(options.start)?,
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    let mut consumer = match &options.durable {
        Some(name) => stream.get_or_create_consumer(name, config).await,
        None => stream.create_consumer(config).await,
    }
    .context("creating the consumer")?;
    let waiting = {
        let info = consumer.info().await.context("reading the consumer's state")?;
        info.num_pending + info.num_ack_pending as u64
    };
    let mut printer = Printer::new(options.output, options.max_frames, true);
    let mut nodes = NodeDecoders::new(stream);
    if options.until_caught_up && waiting == 0 {
        return Ok(printer.finish(None));
    }
    // Pulled in batches no larger than what is still to be printed: a reader that stops at
    // --max-frames leaves nothing delivered and unacknowledged, which the next reader with the
    // same durable name would otherwise wait out (the consumer's ack wait, 30 s) before getting.
    'reading: loop {
        let wanted = options.max_frames.map_or(BATCH, |max| {
            (max.saturating_sub(printer.descriptors()) as usize).clamp(1, BATCH)
        });
        let mut batch = consumer
            .batch()
            .max_messages(wanted)
            .expires(POLL)
            .messages()
            .await
            .context("asking the consumer for records")?;
        let mut received = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("reading from the consumer: {e}"))?;
            received += 1;
            let caught_up = message.info().map(|info| info.pending == 0).unwrap_or(false);
            let more = match read_one(&message, &mut nodes, &mut printer).await {
                Ok(more) => {
                    message
                        .ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("acknowledging a record: {e}"))?;
                    more
                }
                Err(err) => {
                    // Sent again it would fail again: said once, then taken off the consumer.
                    tracing::error!(subject = %message.subject, "skipping a message: {err:#}");
                    message
                        .ack_with(jetstream::AckKind::Term)
                        .await
                        .map_err(|e| anyhow::anyhow!("acknowledging a record: {e}"))?;
                    true
                }
            };
            if !more || (options.until_caught_up && caught_up) {
                break 'reading;
            }
        }
        if received == 0 && options.until_caught_up {
            // Records may have been taken by another reader sharing the durable name.
            let info = consumer.info().await.context("reading the consumer's state")?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
        }
    }
    // The acknowledgements are on their way; this waits until the server has them.
    client.flush().await.context("sending the acknowledgements")?;
    Ok(printer.finish(None))
}

/// Decodes and prints one message; false once the printer has printed what it was asked for.
async fn read_one(
    message: &jetstream::Message,
    nodes: &mut NodeDecoders,
    printer: &mut Printer,
) -> anyhow::Result<bool> {
    match Kind::of(&message.subject) {
        Kind::NodeInfo => {
            let info =
                pb::NodeInfo::decode(message.payload.as_ref()).context("a node's info that is not a NodeInfo")?;
            nodes.learn(&message.subject, &info);
            Ok(true)
        }
        Kind::Record => {
            let record = pb::FrameDescriptor::decode(message.payload.as_ref())
                .context("a record that is not a FrameDescriptor")?;
            let decoder = nodes.decoder(&message.subject).await;
            printer.print(record, decoder)
        }
    }
}

fn deliver_policy(start: Start) -> anyhow::Result<consumer::DeliverPolicy> {
    Ok(match start {
        Start::New => consumer::DeliverPolicy::New,
        Start::Earliest => consumer::DeliverPolicy::All,
        Start::Time(at) => {
            let nanos = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .context("a start time before 1970")?
                .as_nanos();
            consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(nanos as i128)
                    .context("a start time out of range")?,
            }
        }
    })
}

/// What a subject holds: `<prefix>.<node>._node` a node's info, anything else a record (or a
/// gap notice, on `<prefix>.<node>._gap`).
enum Kind {
    NodeInfo,
    Record,
}

impl Kind {
    fn of(subject: &str) -> Kind {
        if subject.ends_with("._node") {
            Kind::NodeInfo
        } else {
            Kind::Record
        }
    }
}

/// One decoder per node, naming classes as the node's detector does. The node's info is read
/// from its `._node` subject the first time one of its records arrives (the consumer may not
/// see that subject) and replaced whenever a newer one passes by.
struct NodeDecoders {
    stream: stream::Stream,
    decoders: HashMap<String, Decoder>,
}

impl NodeDecoders {
    fn new(stream: stream::Stream) -> NodeDecoders {
        NodeDecoders {
            stream,
            decoders: HashMap::new(),
        }
    }

    fn learn(&mut self, info_subject: &str, info: &pb::NodeInfo) {
        self.decoders
            .insert(node_info_subject(info_subject), Decoder::for_node(info));
    }

    async fn decoder(&mut self, record_subject: &str) -> &mut Decoder {
        let key = node_info_subject(record_subject);
        if !self.decoders.contains_key(&key) {
            let decoder = match self.stream.get_last_raw_message_by_subject(&key).await {
                Ok(message) => match pb::NodeInfo::decode(message.payload.as_ref()) {
                    Ok(info) => Decoder::for_node(&info),
                    Err(err) => {
                        tracing::warn!(subject = %key, %err, "a node's info that does not decode: classes shown by number");
                        Decoder::default()
                    }
                },
                Err(err) => {
                    tracing::warn!(subject = %key, %err, "no info of this node: classes shown by number");
                    Decoder::default()
                }
            };
            self.decoders.insert(key.clone(), decoder);
        }
        self.decoders.entry(key).or_default()
    }
}

/// `<prefix>.<node>._node` for any subject `<prefix>.<node>.<camera>`.
fn node_info_subject(subject: &str) -> String {
    match subject.rsplit_once('.') {
        Some((node, _)) => format!("{node}._node"),
        None => format!("{subject}._node"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_known_by_the_subject_before_its_last_token() {
        assert_eq!(node_info_subject("retina.node-7.gate"), "retina.node-7._node");
        assert_eq!(
            node_info_subject("city.north.retina.n1._gap"),
            "city.north.retina.n1._node"
        );
        assert_eq!(node_info_subject("retina.n1._node"), "retina.n1._node");
        assert!(matches!(Kind::of("retina.n1._node"), Kind::NodeInfo));
        assert!(matches!(Kind::of("retina.n1._gap"), Kind::Record));
        assert!(matches!(Kind::of("retina.n1.node"), Kind::Record));
    }
}
