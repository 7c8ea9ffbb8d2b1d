//! What every way a node's log reaches the collector shares (a push, a pull): records in
//! batches, not yet held ones written to JetStream with their context restored, the newest
//! offset noted as held once JetStream has them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Status, Streaming};

use super::CollectorMetrics;
use super::sink::Sink;
use crate::error::Result;
use crate::pb;
use crate::wire::{context_of, copy_context};

/// Records read from a node before they are written as one batch: a batch is confirmed by
/// JetStream as a whole, so larger batches cost fewer round trips; the node keeps sending while
/// one is written, up to what HTTP/2 flow control lets through.
pub const BATCH_MAX: usize = 256;

/// The offset a record stands for: a gap notice, the last one it covers.
pub fn offset_of(record: &pb::FrameDescriptor) -> u64 {
    record.gap.as_ref().map_or(record.offset, |gap| gap.last_offset)
}

/// One node's records on their way into JetStream.
pub struct Pump {
    node: String,
    sink: Arc<Sink>,
    metrics: Arc<CollectorMetrics>,
    /// The highest offset held for this node: records at or below it are not written again.
    held: Option<u64>,
    /// The highest offset noted in the offsets stream, and when.
    noted: Option<u64>,
    noted_at: Instant,
    context: ContextRestorer,
}

/// How often the offset held is noted in JetStream at most. Noting it after every batch cost as
/// much as the batch itself when nodes send a few records a second (a batch of one). A note that
/// lags (the collector killed in between) only has a node send again records of the last second,
/// which JetStream's duplicate window (`duplicate_window_seconds`, at least 1 s and 120 s by
/// default) drops by id.
pub const NOTE_INTERVAL: Duration = Duration::from_millis(500);

impl Pump {
    pub fn new(node: String, sink: Arc<Sink>, metrics: Arc<CollectorMetrics>, held: Option<u64>) -> Pump {
        Pump {
            node,
            sink,
            metrics,
            held,
            noted: held,
            noted_at: Instant::now(),
            context: ContextRestorer::default(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Writes the records of a batch (in offset order) that are not held yet, waiting for
    /// JetStream as long as it takes, and notes the batch's newest offset as held. Returns that
    /// offset: every record up to it is durable at the centre. Records held already count too:
    /// they were stored before.
    pub async fn store(&mut self, records: Vec<pb::FrameDescriptor>) -> Result<Option<u64>> {
        let mut outgoing = Vec::with_capacity(records.len());
        let mut newest = None;
        for mut record in records {
            let offset = offset_of(&record);
            newest = Some(offset);
            // Before the check below: a record held already may be the one that carries its
            // camera's context.
            if record.gap.is_none() {
                self.context.restore(&mut record);
            }
            if self.held.is_some_and(|held| offset <= held) {
                continue;
            }
            outgoing.push(self.sink.outgoing(&self.node, &record));
        }
        let (metrics, node) = (&self.metrics, &self.node);
        self.sink
            .write(&outgoing, |err| {
                metrics.jetstream_waits.inc();
                tracing::warn!(%node, %err, "JetStream is not storing: holding this node's records");
            })
            .await?;
        self.metrics.records.inc_by(outgoing.len() as u64);
        self.held = self.held.max(newest);
        if self.noted_at.elapsed() >= NOTE_INTERVAL {
            self.note().await;
        }
        Ok(newest)
    }

    /// Notes the offset held in JetStream if it moved since the last note: at most every
    /// [`NOTE_INTERVAL`], and when the node's stream ends.
    pub async fn note(&mut self) {
        if self.held <= self.noted {
            return;
        }
        let Some(held) = self.held else { return };
        match self.sink.hold_through(&self.node, held).await {
            Ok(()) => {
                self.noted = Some(held);
                self.noted_at = Instant::now();
            }
            // JetStream holds the records; the note is tried again with the next batch, and a
            // record sent again meanwhile is dropped by its id.
            Err(err) => tracing::warn!(node = %self.node, %err, "the offset held was not recorded"),
        }
    }
}

/// One message of a node's stream, waited for, and whatever else has already arrived (up to [`BATCH_MAX`]); with
/// how the stream ended if it did meanwhile (`Some(None)`: closed, `Some(Some(status))`: broken).
/// None when it ended before a message.
pub async fn next_batch<T>(incoming: &mut Streaming<T>) -> Option<(Vec<T>, Option<Option<Status>>)> {
    let mut batch = Vec::new();
    match incoming.message().await {
        Ok(Some(message)) => batch.push(message),
        Ok(None) => return None,
        Err(status) => {
            tracing::info!(%status, "stream ended");
            return None;
        }
    }
    let mut ended = None;
    while batch.len() < BATCH_MAX {
        match futures_now(incoming.message()) {
            Some(Ok(Some(message))) => batch.push(message),
            Some(Ok(None)) => {
                ended = Some(None);
                break;
            }
            Some(Err(status)) => {
                ended = Some(Some(status));
                break;
            }
            None => break,
        }
    }
    Some((batch, ended))
}

/// The next message if it has already arrived, without waiting.
fn futures_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let waker = std::task::Waker::noop();
    match future.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Fills in the context fields a node sent only when they changed, so that every record in
/// JetStream stands alone: a consumer may start anywhere.
#[derive(Default)]
struct ContextRestorer {
    per_camera: HashMap<String, pb::FrameDescriptor>,
}

impl ContextRestorer {
    fn restore(&mut self, record: &mut pb::FrameDescriptor) {
        if record.detector.is_some() {
            self.per_camera.insert(record.camera_id.clone(), context_of(record));
        } else if let Some(context) = self.per_camera.get(&record.camera_id) {
            copy_context(context, record);
        }
    }
}
