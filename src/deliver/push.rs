//! Push mode: the node dials out to central collectors (`[[push]]`) and streams its log to each,
//! for boxes the centre cannot reach (NAT, a carrier's network).
//!
//! Per target, one task: connect, say hello, learn from the collector's first reply what it
//! already holds, then send records after that (or after this node's own record of what the
//! target acknowledged, if later) while acknowledgements come back on the same stream. The
//! highest acknowledged offset is kept in a file beside the log, so a restart or an uplink lost
//! for hours resumes where the centre stopped. A target reads the log like any subscriber: it
//! never holds up analysis, live subscribers or the other targets, and offsets the log no longer
//! has reach it as gap notices.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::client::{BearerToken, Credentials};
use super::filter::{Filter, SentContext, gap_notice};
use super::service::NodeFacts;
use crate::clock::{Backoff, now_unix_nanos, timestamp_nanos};
use crate::config::{PushConfig, write_atomically};
use crate::error::{Error, Result};
use crate::log::{Entry, LogReader, Start};
use crate::metrics::{Metrics, PushRecorder};
use crate::pb::{self, collector_client::CollectorClient};
use crate::shutdown::Shutdown;

/// Records sent and not yet acknowledged, at most: what a target may owe at once. A collector
/// that stops acknowledging stops the sending, not the node.
const MAX_UNACKED: usize = 4096;
/// Records waiting between the log reader and the HTTP/2 stream.
const SEND_BUFFER: usize = 64;
/// The acknowledged offset is written to disk at most this often (and when a session ends): a
/// crash re-sends at most this much, which the collector stores once (it knows what it holds).
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// A collector that has not answered the hello by then is treated as down.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// When the node stops, how long the last acknowledgements are waited for.
const DRAIN: Duration = Duration::from_secs(5);

/// The offsets each target acknowledged, in `<log>.push.toml`.
pub struct PushCursors {
    path: PathBuf,
    acked: Mutex<BTreeMap<String, u64>>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorFile {
    /// Target name → the highest offset it acknowledged.
    #[serde(default)]
    acked: BTreeMap<String, u64>,
}

impl PushCursors {
    pub fn load(path: PathBuf) -> Result<PushCursors> {
        let acked = match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str::<CursorFile>(&text)
                    .map_err(|e| Error::Config {
                        path: path.clone(),
                        message: e.message().to_string(),
                    })?
                    .acked
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(Error::io(format!("reading {}", path.display()), err)),
        };
        Ok(PushCursors {
            path,
            acked: Mutex::new(acked),
        })
    }

    pub fn acked(&self, target: &str) -> Option<u64> {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(target)
            .copied()
    }

    /// Records `offset` for `target` (never moving it back) and writes the file.
    fn save(&self, target: &str, offset: u64) -> Result<()> {
        let text = {
            let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
            let entry = acked.entry(target.to_string()).or_insert(offset);
            *entry = (*entry).max(offset);
            toml::to_string(&CursorFile { acked: acked.clone() })
                .map_err(|e| Error::Internal(format!("push cursors: {e}")))?
        };
        write_atomically(&self.path, &text)
    }
}

/// Starts one task per target; each ends when `stop` is triggered.
pub fn start(
    targets: &[PushConfig],
    resolve: impl Fn(&std::path::Path) -> PathBuf,
    log: LogReader,
    facts: Arc<NodeFacts>,
    cursors: Arc<PushCursors>,
    metrics: &Metrics,
    stop: Shutdown,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for config in targets {
        let filter_request = pb::SubscribeRequest {
            camera_ids: config.camera_ids.clone(),
            class_names: config.class_names.clone(),
            min_score: config.min_score,
            include_empty_frames: config.include_empty_frames,
            ..Default::default()
        };
        // Checked now, once: a class the detector does not have is a config error.
        Filter::without_camera_check(&filter_request, &facts).map_err(|status| Error::Config {
            path: PathBuf::from(format!("push {:?}", config.name)),
            message: status.message().to_string(),
        })?;
        let (ca_cert, client_cert) = config.tls_files(&resolve);
        let target = Target {
            name: config.name.clone(),
            address: config.address.clone(),
            ca_cert,
            client_cert,
            token_file: config.token_file.as_deref().map(&resolve),
            filter_request,
            backoff: (
                Duration::from_secs_f64(config.reconnect_initial_seconds),
                Duration::from_secs_f64(config.reconnect_max_seconds),
            ),
            recorder: metrics.push_recorder(&config.name),
        };
        let (log, facts, cursors, stop) = (log.clone(), facts.clone(), cursors.clone(), stop.clone());
        tasks.push(tokio::spawn(run(target, log, facts, cursors, stop)));
    }
    Ok(tasks)
}

struct Target {
    name: String,
    address: String,
    ca_cert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    token_file: Option<PathBuf>,
    filter_request: pb::SubscribeRequest,
    backoff: (Duration, Duration),
    recorder: PushRecorder,
}

async fn run(target: Target, log: LogReader, facts: Arc<NodeFacts>, cursors: Arc<PushCursors>, stop: Shutdown) {
    let mut backoff = Backoff::new(target.backoff.0, target.backoff.1, Instant::now);
    if let Some(acked) = cursors.acked(&target.name) {
        target.recorder.acked_offset.set(acked as i64);
    }
    loop {
        target.recorder.state("connecting");
        backoff.start_run();
        let ended = tokio::select! {
            ended = session(&target, &log, &facts, &cursors) => ended,
            () = stop.wait() => return,
        };
        if let Ok(LogEnd::Closed) = ended {
            return; // the node is stopping, and everything was sent (and acknowledged, or waited for)
        }
        backoff.end_run();
        let delay = backoff.next_delay();
        target.recorder.state("retrying");
        // While the target is away the log moves on: the lag keeps counting.
        let behind = match cursors.acked(&target.name) {
            Some(acked) => log.next_offset().saturating_sub(acked + 1),
            None => log.next_offset(),
        };
        target.recorder.lag_records.set(behind as i64);
        target.recorder.reconnects.inc();
        match ended {
            Ok(_) => tracing::info!(target = %target.name, retry_in = ?delay, "push target ended the stream"),
            Err(err) => tracing::warn!(target = %target.name, %err, retry_in = ?delay, "push target unavailable"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.wait() => return,
            // A stopping node does not wait for a target that is away: the rest goes next time.
            () = log.closed() => return,
        }
    }
}

/// How a session that did not fail ended.
enum LogEnd {
    /// The log closed (the node is stopping) and what was sent was acknowledged or waited for.
    Closed,
}

/// One connection to the target, until it breaks or the log closes. `Err` says why, in an
/// operator's words.
async fn session(target: &Target, log: &LogReader, facts: &NodeFacts, cursors: &PushCursors) -> Result<LogEnd> {
    let token = match &target.token_file {
        Some(path) => Some(crate::files::read_secret_line(path, "push token file")?),
        None => None,
    };
    let credentials = Credentials {
        ca_cert: target.ca_cert.clone(),
        client_cert: target.client_cert.clone(),
        token: token.clone(),
    };
    let unavailable = |what: &str, err: &dyn std::fmt::Display| Error::Unavailable(format!("{what}: {err}"));
    let channel = super::client::channel(&target.address, &credentials)
        .await
        .map_err(|e| unavailable(&format!("connecting to {}", target.address), &format!("{e:#}")))?;
    let bearer = BearerToken::new(token.as_deref()).map_err(|e| Error::Access(e.to_string()))?;
    let mut client = CollectorClient::with_interceptor(channel, bearer);

    let (tx, rx) = mpsc::channel::<pb::PushMessage>(SEND_BUFFER);
    let hello = pb::PushMessage {
        kind: Some(pb::push_message::Kind::Hello(pb::PushHello {
            node_id: facts.node_id.clone(),
            log_next_offset: log.next_offset(),
            node: Some(super::service::node_info(facts)),
        })),
    };
    let _ = tx.send(hello).await;
    let mut replies = client
        .push(ReceiverStream::new(rx))
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    let first = tokio::time::timeout(HELLO_TIMEOUT, replies.message())
        .await
        .map_err(|_| Error::Unavailable("the collector did not answer the hello".into()))?
        .map_err(|s| status_error(&s))?
        .ok_or_else(|| Error::Unavailable("the collector closed the stream at once".into()))?;

    // Start after what the collector holds or what it acknowledged before, whichever is later: a
    // collector that lost its acknowledgement on the way still holds the records.
    let acked = cursors.acked(&target.name);
    let resume_after = acked.max(first.stored_through);
    if let Some(held) = first.stored_through
        && acked < Some(held)
    {
        cursors.save(&target.name, held)?;
    }
    let next = log.next_offset();
    let start = match resume_after {
        None => Start::Earliest,
        Some(after) if after < next => Start::AfterOffset(after),
        Some(after) => {
            tracing::warn!(
                target = %target.name, collector_holds_through = after, log_next_offset = next,
                "the collector holds more of this node than its log has given (a new log?): pushing from now on"
            );
            Start::Live
        }
    };
    let mut subscription = log.subscribe(start).await?;
    target.recorder.state("streaming");
    tracing::info!(target = %target.name, ?start, "pushing");

    let filter = Filter::without_camera_check(&target.filter_request, facts)
        .map_err(|s| Error::Internal(s.message().to_string()))?;
    let window = Semaphore::new(MAX_UNACKED);
    // (offset, capture time) of what was sent and not yet acknowledged, in order.
    let unacked: Mutex<VecDeque<(u64, i64)>> = Mutex::new(VecDeque::new());
    let recorder = &target.recorder;

    let log_ended = std::sync::atomic::AtomicBool::new(false);
    let all_acked = || unacked.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
    let send = async {
        let mut sent_context = SentContext::default();
        loop {
            let record = match subscription.next().await? {
                None => {
                    // The log closed: the node is stopping. What was sent is waited for below.
                    log_ended.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                Some(Entry::Descriptor(descriptor)) => match filter.apply(&descriptor, &mut sent_context) {
                    Some(record) => record,
                    None => continue,
                },
                Some(Entry::Gap(gap)) => gap_notice(gap),
            };
            let offset = record.gap.as_ref().map_or(record.offset, |g| g.last_offset);
            let capture_ns = record.capture_time.map_or(0, timestamp_nanos);
            // Held, not dropped, while the collector owes this many acknowledgements.
            window
                .acquire()
                .await
                .map_err(|_| Error::Internal("push window closed".into()))?
                .forget();
            unacked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((offset, capture_ns));
            let message = pb::PushMessage {
                kind: Some(pb::push_message::Kind::Record(record)),
            };
            if tx.send(message).await.is_err() {
                return Err(Error::Unavailable("the stream to the collector closed".into()));
            }
            recorder.sent.inc();
        }
    };

    // The highest offset the collector acknowledged in this session.
    let acked_through: Mutex<Option<u64>> = Mutex::new(None);
    let acknowledge = async {
        let mut persisted = Instant::now();
        loop {
            if log_ended.load(std::sync::atomic::Ordering::Relaxed) && all_acked() {
                return Ok(());
            }
            let reply = match replies.message().await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err(Error::Unavailable("the collector ended the stream".into())),
                Err(status) => return Err(status_error(&status)),
            };
            let Some(through) = reply.stored_through else { continue };
            let (released, newest_capture) = {
                let mut unacked = unacked.lock().unwrap_or_else(|p| p.into_inner());
                let mut released = 0;
                let mut newest = None;
                while unacked.front().is_some_and(|(offset, _)| *offset <= through) {
                    newest = unacked.pop_front().map(|(_, capture)| capture);
                    released += 1;
                }
                (released, newest)
            };
            window.add_permits(released);
            *acked_through.lock().unwrap_or_else(|p| p.into_inner()) = Some(through);
            recorder.acked_offset.set(through as i64);
            let behind = log.next_offset().saturating_sub(through + 1);
            recorder.lag_records.set(behind as i64);
            let lag_seconds = match newest_capture {
                Some(capture) if behind > 0 && capture > 0 => (now_unix_nanos() - capture) as f64 / 1e9,
                _ => 0.0,
            };
            recorder.lag_seconds.set(lag_seconds.max(0.0));
            if persisted.elapsed() >= PERSIST_INTERVAL {
                cursors.save(&target.name, through)?;
                persisted = Instant::now();
            }
        }
    };

    let mut acknowledge = std::pin::pin!(acknowledge);
    let ended: Result<LogEnd> = tokio::select! {
        sent = send => match sent {
            Ok(()) if all_acked() => Ok(LogEnd::Closed),
            Ok(()) => match tokio::time::timeout(DRAIN, &mut acknowledge).await {
                Ok(acked) => acked.map(|()| LogEnd::Closed),
                Err(_) => {
                    tracing::warn!(target = %target.name, "stopping with records the collector has not acknowledged: they are sent again next time");
                    Ok(LogEnd::Closed)
                }
            },
            Err(err) => Err(err),
        },
        acked = &mut acknowledge => acked.map(|()| LogEnd::Closed),
    };
    // What was acknowledged is kept however the session ended.
    let through = *acked_through.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(through) = through {
        cursors.save(&target.name, through)?;
    }
    ended
}

/// A collector's refusal in an operator's words.
fn status_error(status: &tonic::Status) -> Error {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Error::Access(format!(
            "the collector refused this node ({:?}): {}",
            status.code(),
            status.message()
        )),
        _ => Error::Unavailable(format!("collector: {:?}: {}", status.code(), status.message())),
    }
}
