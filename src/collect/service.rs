//! `retina.v1.Collector/Push`: one node's log arriving, written to JetStream, acknowledged.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::CollectorMetrics;
use super::sink::{Outgoing, Sink};
use crate::access::Caller;
use crate::pb::{self, collector_server::Collector};
use crate::wire::{context_of, copy_context};

/// Records read from a node before they are written as one batch: a batch is confirmed by
/// JetStream as a whole, so larger batches cost fewer round trips; the node keeps sending while
/// one is written, up to what HTTP/2 flow control lets through.
const BATCH_MAX: usize = 256;
/// Replies waiting for the node to read them.
const REPLY_BUFFER: usize = 16;

pub struct CollectorService {
    pub sink: Arc<Sink>,
    pub metrics: Arc<CollectorMetrics>,
    /// Without tokens (loopback or `insecure`), a node is taken at its word.
    pub tokens_required: bool,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::PushReply, Status>> + Send>>;

#[tonic::async_trait]
impl Collector for CollectorService {
    type PushStream = ReplyStream;

    async fn push(&self, request: Request<Streaming<pb::PushMessage>>) -> Result<Response<ReplyStream>, Status> {
        let caller = request.extensions().get::<Arc<Caller>>().cloned();
        let mut incoming = request.into_inner();
        let hello = match incoming.message().await? {
            Some(pb::PushMessage {
                kind: Some(pb::push_message::Kind::Hello(hello)),
            }) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a push must be a PushHello",
                ));
            }
        };
        let node = hello.node_id;
        let valid = !node.is_empty()
            && node.len() <= 128
            && node.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(Status::invalid_argument(format!(
                "node_id {}: use 1 to 128 letters, digits, '-', '_' or '.'",
                crate::error::quoted(&node)
            )));
        }
        match &caller {
            Some(caller) if caller.name != node => {
                return Err(Status::permission_denied(format!(
                    "the token {:?} may push only as node {:?}, not {}",
                    caller.name,
                    caller.name,
                    crate::error::quoted(&node)
                )));
            }
            None if self.tokens_required => return Err(Status::unauthenticated("no token")),
            _ => {}
        }
        if let Some(info) = &hello.node {
            // Beside the records, for readers at the centre: class names, models, cameras.
            self.sink.write_node_info(&node, info).await.map_err(Status::from)?;
        }
        let held = self.sink.held_through(&node).await.map_err(Status::from)?;
        if let Some(held) = held
            && held >= hello.log_next_offset
        {
            tracing::warn!(
                %node, held, log_next_offset = hello.log_next_offset,
                "this node's log is behind what the centre holds of it (a new log?): its next records are taken as they come"
            );
        }
        tracing::info!(%node, ?held, "node pushing");
        let (replies, rx) = mpsc::channel(REPLY_BUFFER);
        replies
            .send(Ok(pb::PushReply { stored_through: held }))
            .await
            .map_err(|_| Status::cancelled("the node went away"))?;
        let pump = Pump {
            node,
            sink: self.sink.clone(),
            metrics: self.metrics.clone(),
            held,
        };
        tokio::spawn(pump.run(incoming, replies));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One node's stream: batches of records to JetStream, then an acknowledgement.
struct Pump {
    node: String,
    sink: Arc<Sink>,
    metrics: Arc<CollectorMetrics>,
    /// The highest offset held for this node: records at or below it are not written again.
    held: Option<u64>,
}

impl Pump {
    async fn run(
        mut self,
        mut incoming: Streaming<pb::PushMessage>,
        replies: mpsc::Sender<Result<pb::PushReply, Status>>,
    ) {
        let mut context = ContextRestorer::default();
        let mut last_received: Option<u64> = None;
        loop {
            // Wait for one record, then take whatever else has already arrived.
            let mut batch = Vec::new();
            let mut ended = None;
            match incoming.message().await {
                Ok(Some(message)) => batch.push(message),
                Ok(None) => return,
                Err(status) => {
                    tracing::info!(node = %self.node, %status, "push stream ended");
                    return;
                }
            }
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
            let mut outgoing: Vec<Outgoing> = Vec::with_capacity(batch.len());
            let mut newest = None;
            for message in batch {
                let Some(pb::push_message::Kind::Record(mut record)) = message.kind else {
                    let _ = replies
                        .send(Err(Status::invalid_argument(
                            "after the hello, a push sends only records",
                        )))
                        .await;
                    return;
                };
                let offset = record.gap.as_ref().map_or(record.offset, |gap| gap.last_offset);
                if last_received.is_some_and(|last| offset <= last) {
                    let _ = replies
                        .send(Err(Status::invalid_argument(format!(
                            "offset {offset} after {}: a push goes forward",
                            last_received.unwrap_or_default()
                        ))))
                        .await;
                    return;
                }
                last_received = Some(offset);
                newest = Some(offset);
                if self.held.is_some_and(|held| offset <= held) {
                    continue; // held already: acknowledged again below, not written again
                }
                if record.gap.is_none() {
                    context.restore(&mut record);
                }
                outgoing.push(self.sink.outgoing(&self.node, &record));
            }
            let records = outgoing.len() as u64;
            let metrics = &self.metrics;
            let node = &self.node;
            let written = self
                .sink
                .write(&outgoing, |err| {
                    metrics.jetstream_waits.inc();
                    tracing::warn!(%node, %err, "JetStream is not storing: holding this node's records");
                })
                .await;
            if let Err(err) = written {
                let _ = replies.send(Err(Status::from(err))).await;
                return;
            }
            metrics.records.inc_by(records);
            if let Some(newest) = newest {
                if self.held < Some(newest) {
                    if let Err(err) = self.sink.hold_through(&self.node, newest).await {
                        // JetStream holds the records; the bucket catches up with the next batch,
                        // and a record sent again meanwhile is dropped by its id.
                        tracing::warn!(node = %self.node, %err, "the offset held was not recorded");
                    }
                    self.held = Some(newest);
                }
                if replies
                    .send(Ok(pb::PushReply {
                        stored_through: Some(newest),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(end) = ended {
                if let Some(status) = end {
                    tracing::info!(node = %self.node, %status, "push stream ended");
                }
                return;
            }
        }
    }
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
