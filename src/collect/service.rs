//! `retina.v1.Collector/Push`: one node's log arriving, written to JetStream, acknowledged.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::CollectorMetrics;
use super::pump::{Pump, next_batch, offset_of};
use super::sink::Sink;
use crate::access::Caller;
use crate::pb::{self, collector_server::Collector};
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
        let session = PushSession {
            pump: Pump::new(node, self.sink.clone(), self.metrics.clone(), held),
        };
        tokio::spawn(session.run(incoming, replies));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One node's push: batches of records to JetStream, each acknowledged once stored.
struct PushSession {
    pump: Pump,
}

impl PushSession {
    async fn run(
        mut self,
        mut incoming: Streaming<pb::PushMessage>,
        replies: mpsc::Sender<Result<pb::PushReply, Status>>,
    ) {
        let node = self.pump.node().to_string();
        let mut last_received: Option<u64> = None;
        loop {
            let Some((batch, ended)) = next_batch(&mut incoming).await else {
                self.pump.note().await;
                return;
            };
            let mut records = Vec::with_capacity(batch.len());
            for message in batch {
                let Some(pb::push_message::Kind::Record(record)) = message.kind else {
                    let _ = replies
                        .send(Err(Status::invalid_argument(
                            "after the hello, a push sends only records",
                        )))
                        .await;
                    return;
                };
                let offset = offset_of(&record);
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
                records.push(record);
            }
            match self.pump.store(records).await {
                Err(err) => {
                    let _ = replies.send(Err(Status::from(err))).await;
                    return;
                }
                Ok(Some(newest)) => {
                    let reply = pb::PushReply {
                        stored_through: Some(newest),
                    };
                    if replies.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
            }
            if let Some(end) = ended {
                if let Some(status) = end {
                    tracing::info!(%node, %status, "push stream ended");
                }
                self.pump.note().await;
                return;
            }
        }
    }
}
