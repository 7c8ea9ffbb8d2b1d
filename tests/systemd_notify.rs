//! The service contract with systemd (Type=notify), through the real `retina-edge` binary and a
//! real notify socket, as systemd provides one:
//! - `READY=1` is sent once, and only when gRPC answers at once;
//! - the first SIGTERM sends `STOPPING=1` and stops gracefully (exit 0), a second stops at once
//!   (exit 130, as `main.rs` says);
//! - health turns `NOT_SERVING` for `retina.v1.Retina` as soon as stopping starts, while the
//!   node still finishes frames and serves, and a health watcher does not keep it from stopping.
//!
//! No test sleeps for a guessed time: each waits for its event (a datagram, a stream item, the
//! process's exit) and compares durations measured in the same test.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use retina_edge::pb::{self, retina_client::RetinaClient};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response};

/// The tests compare durations measured while a node runs; two nodes at once on a small box
/// would blur them, so the tests of this file take turns.
static ONE_NODE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Generous bounds for events that would otherwise hang the test; never what a test measures.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// Frames each camera's lane holds in the busy node (see [`busy_cameras`]).
const BUSY_LANE_FRAMES: u64 = 32;

/// One real `retina-edge run` with its own notify socket; killed if the test ends first.
struct RunningNode {
    pid: libc::pid_t,
    spawned: Instant,
    grpc: String,
    metrics: std::net::SocketAddr,
    notify: tokio::net::UnixDatagram,
    exit: oneshot::Receiver<(ExitStatus, Instant)>,
    exited: bool,
    _dir: tempfile::TempDir,
}

impl RunningNode {
    /// Starts the node on `cameras`, with `inference` replacing the test config's
    /// `workers = 2` line. gRPC and metrics get fixed free ports so that the test knows where to
    /// call the moment `READY=1` arrives.
    fn start(cameras: &str, inference: &str) -> RunningNode {
        Self::start_with(cameras, inference, &[])
    }

    /// [`start`](Self::start) with more environment, as systemd sets it (`WATCHDOG_USEC`).
    fn start_with(cameras: &str, inference: &str, env: &[(&str, &str)]) -> RunningNode {
        let dir = tempfile::tempdir().unwrap();
        let socket_path: PathBuf = dir.path().join("notify.sock");
        let notify = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
        let grpc_port = common::free_port();
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
        let config = common::config_toml(cameras, &format!("metrics_listen = \"{metrics}\""))
            .replace(
                "grpc_listen = \"127.0.0.1:0\"",
                &format!("grpc_listen = \"127.0.0.1:{grpc_port}\""),
            )
            .replace("workers = 2", inference);
        let config_path = dir.path().join("node.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_retina-edge"))
            .args(["run", "--config", config_path.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let spawned = Instant::now();
        let pid = child.id() as libc::pid_t;
        let (tx, exit) = oneshot::channel();
        std::thread::spawn(move || {
            let status = child.wait().unwrap();
            let _ = tx.send((status, Instant::now()));
        });
        RunningNode {
            pid,
            spawned,
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            metrics,
            notify,
            exit,
            exited: false,
            _dir: dir,
        }
    }

    /// The next notify datagram about the node's state (READY, STOPPING) and when it arrived;
    /// the periodic STATUS= and WATCHDOG=1 are passed over.
    async fn next_notification(&self, waiting_for: &str) -> (Instant, String) {
        loop {
            let (at, message) = self.next_datagram(waiting_for).await;
            if !is_periodic(&message) {
                return (at, message);
            }
        }
    }

    /// The next notify datagram of any kind.
    async fn next_datagram(&self, waiting_for: &str) -> (Instant, String) {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(START_TIMEOUT, self.notify.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no notification within {START_TIMEOUT:?} while waiting for {waiting_for}"))
            .unwrap();
        (Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for `READY=1`; it must be the first thing the node says.
    async fn ready(&self) -> Instant {
        let (at, message) = self.next_notification("READY=1").await;
        assert!(
            is(&message, "READY=1"),
            "the first notification is READY=1, got {message:?}"
        );
        at
    }

    /// Waits for `STOPPING=1` after `READY=1`; nothing else (a second READY=1) in between.
    async fn stopping(&self) -> Instant {
        let (at, message) = self.next_notification("STOPPING=1").await;
        assert!(
            is(&message, "STOPPING=1"),
            "after READY=1 the next notification is STOPPING=1, got {message:?}"
        );
        at
    }

    /// Notifications still queued on the socket (the process has ended, so nothing more comes).
    fn remaining_notifications(&self) -> Vec<String> {
        let mut buf = [0u8; 512];
        let mut left = Vec::new();
        while let Ok(n) = self.notify.try_recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !is_periodic(&message) {
                left.push(message);
            }
        }
        left
    }

    fn sigterm(&self) -> Instant {
        // SAFETY: kill(2) with the pid of our own child, which has not been waited for (reaped)
        // unless `exited`; only signals it.
        assert!(!self.exited && unsafe { libc::kill(self.pid, libc::SIGTERM) } == 0);
        Instant::now()
    }

    /// Waits for the process to end by itself.
    async fn exit(&mut self) -> (ExitStatus, Instant) {
        let ended = tokio::time::timeout(STOP_TIMEOUT, &mut self.exit)
            .await
            .unwrap_or_else(|_| panic!("the node did not exit within {STOP_TIMEOUT:?}"))
            .unwrap();
        self.exited = true;
        ended
    }

    /// One connection attempt, no retry.
    async fn connect(&self) -> Channel {
        Endpoint::from_shared(self.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e:?}", self.grpc))
    }

    /// Frames waiting for inference per camera: handed to the queue, not yet analysed.
    async fn waiting_frames(&self) -> Vec<(String, u64)> {
        let text = common::http_get(self.metrics, "/metrics").await;
        let counter = |name: &str, camera: &str| -> u64 {
            let prefix = format!("{name}_total{{camera=\"{camera}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let cameras: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("retina_camera_frames_queued_total{camera=\""))
            .filter_map(|l| l.split('"').next())
            .map(str::to_owned)
            .collect();
        cameras
            .into_iter()
            .map(|c| {
                let waiting = counter("retina_camera_frames_queued", &c)
                    .saturating_sub(counter("retina_camera_frames_analysed", &c));
                (c, waiting)
            })
            .collect()
    }

    /// Waits until every one of `cameras` cameras has a full lane, so that a graceful stop has
    /// `cameras x BUSY_LANE_FRAMES` frames to finish.
    async fn wait_until_busy(&self, cameras: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let waiting = self.waiting_frames().await;
            if waiting.len() == cameras && waiting.iter().all(|(_, n)| *n >= BUSY_LANE_FRAMES) {
                return;
            }
            assert!(Instant::now() < deadline, "lanes never filled: {waiting:?}");
            // Polling the node's own counters: the event has no push notification.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if !self.exited && matches!(self.exit.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            // SAFETY: kill(2) on our own child that has not been reaped.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// Whether a notify datagram (newline-separated assignments) carries `assignment`.
fn is(message: &str, assignment: &str) -> bool {
    message.lines().any(|l| l == assignment)
}

/// What the node repeats while it runs: its status line and the watchdog's ping.
fn is_periodic(message: &str) -> bool {
    message.starts_with("STATUS=") || is(message, "WATCHDOG=1")
}

fn loop_camera() -> String {
    format!(
        "[[cameras]]\nid = \"loop\"\nuri = \"{}\"\nloop_file = true\n",
        common::sample_clip().display()
    )
}

/// Cameras that keep a graceful stop busy for seconds: the clip read as fast as decoding goes,
/// every frame analysed, by one worker. Decoding outruns inference, so every lane is full, and
/// a graceful stop analyses every accepted frame before it ends.
fn busy_cameras(n: usize) -> String {
    let clip = common::sample_clip();
    (0..n)
        .map(|i| {
            format!(
                "[[cameras]]\nid = \"busy{i}\"\nuri = \"{}\"\nloop_file = true\nrealtime = false\nanalysis_fps = 0.0\n",
                clip.display()
            )
        })
        .collect()
}

const BUSY_CAMERAS: usize = 3;

fn busy_inference() -> String {
    format!("workers = 1\nqueue_frames_per_camera = {BUSY_LANE_FRAMES}")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn with_a_watchdog_the_node_pings_twice_a_period_and_says_what_it_does() {
    let _turn = ONE_NODE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    runtime().block_on(async {
        // systemd's WatchdogSec=2 as the environment it gives the service.
        let mut node = RunningNode::start_with(&loop_camera(), "workers = 2", &[("WATCHDOG_USEC", "2000000")]);
        node.ready().await;
        let mut pings = Vec::new();
        let mut status = None;
        while pings.len() < 4 {
            let (at, message) = node.next_datagram("WATCHDOG=1").await;
            if is(&message, "WATCHDOG=1") {
                pings.push(at);
            } else if let Some(line) = message.strip_prefix("STATUS=") {
                status = Some(line.to_string());
            }
        }
        let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
        // Twice per 2 s period, with a camera streaming and frames analysed in between.
        assert!(
            gaps.iter()
                .all(|g| *g > Duration::from_millis(700) && *g < Duration::from_millis(1300)),
            "{gaps:?}"
        );
        let status = status.expect("a STATUS= line");
        assert!(status.contains("1 of 1 cameras streaming"), "{status}");
        node.sigterm();
        let (exit, _) = node.exit().await;
        assert!(exit.success(), "{exit:?}");
    });
}

#[test]
fn ready_once_when_grpc_answers_then_stopping_then_clean_exit_on_sigterm() {
    let _turn = ONE_NODE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    runtime().block_on(async {
        let mut node = RunningNode::start(&loop_camera(), "workers = 2");
        let ready = node.ready().await;
        let start_up = ready - node.spawned;

        // At once: one connection, one call each, no retry.
        let channel = node.connect().await;
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: "retina.v1.Retina".into(),
            })
            .await
            .expect("health Check answers as soon as READY=1 is sent")
            .into_inner();
        assert_eq!(health.status(), health_check_response::ServingStatus::Serving);
        let info = RetinaClient::new(channel)
            .get_node_info(pb::GetNodeInfoRequest {})
            .await
            .expect("GetNodeInfo answers as soon as READY=1 is sent")
            .into_inner();
        assert_eq!(info.node_id, "test-node");
        let answered = ready.elapsed();
        eprintln!("start-up to READY=1 {start_up:?}; READY=1 to both answers {answered:?}");
        // A node that said READY=1 before its server ran (models still loading) answers only
        // after a time comparable to its whole start-up.
        assert!(
            answered * 4 < start_up,
            "gRPC answered {answered:?} after READY=1, start-up to READY=1 took {start_up:?}"
        );

        node.sigterm();
        node.stopping().await;
        let (status, _) = node.exit().await;
        assert!(status.success(), "a graceful stop exits 0, got {status}");
        let after = node.remaining_notifications();
        assert!(
            !after.iter().any(|m| is(m, "READY=1")),
            "READY=1 is sent once; after STOPPING=1 came {after:?}"
        );
    });
}

/// A busy node stopped by one SIGTERM: (time from SIGTERM to exit, exit status).
async fn graceful_stop_of_a_busy_node() -> (Duration, ExitStatus) {
    let mut node = RunningNode::start(&busy_cameras(BUSY_CAMERAS), &busy_inference());
    node.ready().await;
    node.wait_until_busy(BUSY_CAMERAS).await;
    let signalled = node.sigterm();
    node.stopping().await;
    let (status, exited) = node.exit().await;
    (exited - signalled, status)
}

#[test]
fn a_second_sigterm_stops_at_once_while_the_graceful_stop_is_busy() {
    let _turn = ONE_NODE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    runtime().block_on(async {
        let (graceful, status) = graceful_stop_of_a_busy_node().await;
        assert!(
            status.success(),
            "one SIGTERM stops gracefully with exit 0, got {status}"
        );

        // The same node, the same load: a second SIGTERM once the first is being handled.
        let mut node = RunningNode::start(&busy_cameras(BUSY_CAMERAS), &busy_inference());
        node.ready().await;
        node.wait_until_busy(BUSY_CAMERAS).await;
        let first = node.sigterm();
        node.stopping().await;
        let second = node.sigterm();
        let (status, exited) = node.exit().await;
        let forced = exited - second;
        eprintln!(
            "graceful stop {graceful:?}; forced: {forced:?} after the second SIGTERM, {:?} after the first",
            exited - first
        );
        assert_eq!(
            (status.code(), status.signal()),
            (Some(130), None),
            "a second SIGTERM exits with status 130 (main.rs), got {status}"
        );
        assert!(
            forced * 4 < graceful,
            "after the second SIGTERM the node took {forced:?} to exit ({:?} after the first); \
             a graceful stop of the same busy node took {graceful:?}",
            exited - first
        );
    });
}

#[test]
fn health_turns_not_serving_as_soon_as_stopping_starts() {
    let _turn = ONE_NODE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    runtime().block_on(async {
        let mut node = RunningNode::start(&busy_cameras(BUSY_CAMERAS), &busy_inference());
        node.ready().await;
        node.wait_until_busy(BUSY_CAMERAS).await;
        let channel = node.connect().await;
        let mut watch = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: "retina.v1.Retina".into(),
            })
            .await
            .expect("health Watch")
            .into_inner();
        let first = watch.message().await.unwrap().expect("the current status first");
        assert_eq!(first.status(), health_check_response::ServingStatus::Serving);

        // Every descriptor the node publishes from now on, with when it arrived.
        let mut descriptors = RetinaClient::new(channel.clone())
            .subscribe(pb::SubscribeRequest {
                include_empty_frames: true,
                ..Default::default()
            })
            .await
            .expect("Subscribe")
            .into_inner();
        let received = tokio::spawn(async move {
            let mut arrivals = Vec::new();
            loop {
                match descriptors.message().await {
                    Ok(Some(_)) => arrivals.push(Instant::now()),
                    Ok(None) => return Ok(arrivals),
                    Err(status) => return Err((status, arrivals)),
                }
            }
        });

        let signalled = node.sigterm();
        let not_serving = loop {
            let next = tokio::time::timeout(STOP_TIMEOUT, watch.message())
                .await
                .expect("a health status within the stop")
                .expect("the watch goes on while the node stops")
                .expect("NOT_SERVING before the watch ends");
            if next.status() == health_check_response::ServingStatus::NotServing {
                break Instant::now();
            }
        };
        // The server is still there and answers.
        let info = RetinaClient::new(channel.clone())
            .get_node_info(pb::GetNodeInfoRequest {})
            .await
            .expect("GetNodeInfo answers while the node stops");
        assert_eq!(info.into_inner().node_id, "test-node");

        // The watch stays open: it must not keep the node from stopping.
        let (status, exited) = node.exit().await;
        assert!(status.success(), "a graceful stop exits 0, got {status}");
        let arrivals = received
            .await
            .unwrap()
            .unwrap_or_else(|(status, _)| panic!("the subscriber stream ends with OK, got {status:?}"));
        let after = arrivals.iter().filter(|t| **t > not_serving).count();
        eprintln!(
            "NOT_SERVING {:?} after SIGTERM, exit {:?} after it; {after} of {} descriptors after NOT_SERVING",
            not_serving - signalled,
            exited - signalled,
            arrivals.len()
        );
        // NOT_SERVING when stopping starts, not when it ends: frames accepted before the
        // SIGTERM were still being analysed and sent after it.
        assert!(
            after > 0,
            "NOT_SERVING came {:?} after SIGTERM, the node exited {:?} after it, and no descriptor \
             followed NOT_SERVING ({} received in all)",
            not_serving - signalled,
            exited - signalled,
            arrivals.len()
        );
        assert!(
            (not_serving - signalled) * 4 < exited - signalled,
            "NOT_SERVING {:?} after SIGTERM; the graceful stop took {:?}",
            not_serving - signalled,
            exited - signalled
        );
        // The watcher sees the server go: its stream ends.
        let end = tokio::time::timeout(STOP_TIMEOUT, watch.message())
            .await
            .expect("the watch ends once the node has exited");
        assert!(!matches!(end, Ok(Some(_))), "nothing after NOT_SERVING, got {end:?}");
    });
}
