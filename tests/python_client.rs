//! Central systems in other languages, on real nodes over loopback.
//!
//! - `scripts/central/retina_client.py` (Python, stubs made from the proto at run time) subscribes
//!   to a real node on the sample clip while a Rust client does the same. Every vector the Python
//!   side decodes must be the one the Rust side decodes, for the same camera, sequence and place in
//!   the descriptor, every descriptor with its offset, and the script must exit 0.
//! - The same client with `--resume-file` follows a node (the real binary) through a graceful
//!   restart and a `kill -9`, and receives exactly what the node's log holds, once each.
//! - grpcurl resumes a subscription after an offset.

mod common;

use common::python::{assert_decoded_alike, check_output, run_python, rust_vectors, saved_vectors};

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use retina_edge::pb;

fn count_events(descriptors: &[pb::FrameDescriptor], kind: pb::TrackEventKind) -> usize {
    descriptors
        .iter()
        .flat_map(|d| &d.track_events)
        .filter(|e| e.kind() == kind)
        .count()
}

/// Runs the node on the clip with `describe` as its `[describe]` section, the Python client and a
/// Rust client side by side, and compares what they decoded.
/// The three codec tests run one at a time: each plays the clip in real time with its own node
/// and Python client, and three at once on two cores could make a node drop frames.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn python_decodes_what_rust_decodes(describe: &str, codec_name: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    // Real time: the clip lasts 10 s, ample for the Python client to start and subscribe; both
    // clients start from the earliest descriptor in the node's log (a new log: the node's only
    // run), so neither misses one.
    let cameras = format!(
        "[describe]\n{describe}\nsend_detections = true\n\n[[cameras]]\nid = \"bikes\"\nuri = \"{}\"\n\
         analysis_fps = 5.0\nrealtime = true\n",
        common::sample_clip().display()
    );
    let toml = common::config_toml(&cameras, "exit_when_cameras_end = true");
    let (node, mut client) = common::start_node(common::parse_config(&toml)).await;
    let addr = node.grpc_addr.to_string();

    let dir = tempfile::tempdir().expect("a temporary directory");
    let npz = dir.path().join(format!("{codec_name}.npz"));
    let script = run_python(&[
        "scripts/central/retina_client.py",
        "--addr",
        &addr,
        "--from-earliest",
        "--include-empty",
        "--name",
        "python-client-test",
        "--timeout",
        "60",
        "--save",
        npz.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .map(common::KillOnDrop::new)
    .expect("the Python client starts");

    // The Rust side asks for the full context in every descriptor; the Python side does not, and
    // so has to carry the context forward itself.
    let descriptors = common::collect_until_end(&mut client).await;
    tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .expect("node stops")
        .expect("clean stop");
    let output = tokio::task::spawn_blocking(move || script.wait_with_output())
        .await
        .unwrap()
        .expect("the Python client ends");
    let stdout = check_output("retina_client.py", &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("warning:") || l.starts_with("error:")),
        "the Python client complained:\n{stderr}"
    );

    let (rows, frames) = saved_vectors(&npz);

    // The same descriptors reached both clients.
    let rust_frames: Vec<serde_json::Value> = descriptors
        .iter()
        .map(|d| serde_json::json!([d.camera_id, d.sequence, d.offset]))
        .collect();
    assert!(descriptors.len() >= 40, "{} descriptors", descriptors.len());
    assert_eq!(frames.as_array().unwrap(), &rust_frames, "frames received");

    // The same vectors, decoded alike.
    let expected = rust_vectors(&descriptors);
    assert!(
        expected.keys().any(|k| k.2 == "objects") && expected.keys().any(|k| k.2 == "track_events"),
        "vectors both in objects and in track events"
    );
    assert_decoded_alike(&rows, &descriptors);
    assert!(
        rows.iter().all(|row| row.codec == codec_name),
        "every vector in {codec_name}"
    );

    // One line per track event.
    let confirmed = count_events(&descriptors, pb::TrackEventKind::Confirmed);
    let ended = count_events(&descriptors, pb::TrackEventKind::Ended);
    assert!(
        confirmed > 0 && ended > 0,
        "{confirmed} tracks confirmed, {ended} ended"
    );
    // Event lines start with the capture time; the summary's do not.
    let lines_with = |word: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(word))
            .count()
    };
    assert_eq!(lines_with(" confirmed"), confirmed, "confirmed lines:\n{stdout}");
    assert_eq!(lines_with(" ended ("), ended, "ended lines:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_decodes_f16() {
    python_decodes_what_rust_decodes("codec = \"f16\"", "f16").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_decodes_pca_int8() {
    python_decodes_what_rust_decodes("codec = \"pca-int8\"\ncodec_dimension = 64", "pca-int8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_decodes_binary() {
    python_decodes_what_rust_decodes("codec = \"binary\"\ncodec_dimension = 64", "binary").await;
}

// ── Resuming across restarts of the node ─────────────────────────────────────────────────────

/// The offsets of a `retina_client.py --save` file, in the order received, each with the run of
/// the node that made it and its capture time: `[[offset, node_run_id, capture_ns], ...]`.
const DUMP_FRAME_OFFSETS: &str = r#"
import json, sys
import numpy as np
d = np.load(sys.argv[1])
print(json.dumps([[int(o), int(r), int(t)] for o, r, t in
                  zip(d["frame_offset"], d["frame_node_run_id"], d["frame_capture_time_ns"])]))
"#;

/// The real node binary on `config`; its stderr is appended to `log` (a pipe nobody reads could
/// fill and stall it).
fn spawn_node(config: &Path, log: &Path) -> common::KillOnDrop {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the node's log file");
    Command::new(env!("CARGO_BIN_EXE_retina-edge"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,ort=warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(common::KillOnDrop::new)
        .expect("retina-edge starts")
}

/// Sends `signal` to a process and waits for it to exit.
async fn signal_and_wait(child: &mut common::KillOnDrop, signal: i32, what: &str) -> ExitStatus {
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own child, which has not been waited for, so the pid is still its.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal} to {what}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still runs 30 s after signal {signal}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The offset of the next descriptor the node produces: the first of a live subscription.
async fn live_offset(client: &mut common::Client) -> u64 {
    let request = pb::SubscribeRequest {
        include_empty_frames: true,
        start: pb::StartPosition::Live as i32,
        subscriber_name: "probe".into(),
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.expect("Subscribe").into_inner();
    loop {
        let d = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a live descriptor within 30 s")
            .expect("the stream goes on")
            .expect("the stream goes on");
        if d.gap.is_none() {
            return d.offset;
        }
    }
}

/// The offset in the client's resume file, if it has written one.
fn resume_offset(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let saved: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text:?}", path.display()));
    Some(saved["offset"].as_u64().expect("an offset in the resume file"))
}

/// The Python client's stderr, line by line as it comes.
struct ClientStderr {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl ClientStderr {
    fn new(stderr: std::process::ChildStderr) -> Self {
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ClientStderr {
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line that contains `needle`.
    async fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "the client ended before saying {needle:?}; stderr:\n{}",
                    self.seen.join("\n")
                ),
                Err(_) => panic!(
                    "the client did not say {needle:?} within {within:?}; stderr:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Whatever else it says, until it closes stderr (it exited).
    async fn rest(&mut self) -> &[String] {
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(10), self.lines.recv()).await {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// The number after `word` in `line`.
fn number_after(line: &str, word: &str) -> u64 {
    let rest = &line[line.find(word).unwrap_or_else(|| panic!("{word:?} in {line:?}")) + word.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number after {word:?} in {line:?}"))
}

/// Waits until the client's resume file holds `offset` or a later one: the client received it
/// (the file is replaced within 200 ms of each descriptor).
async fn wait_for_resume_file(path: &Path, offset: u64, stderr: &ClientStderr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if resume_offset(path).is_some_and(|o| o >= offset) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the client's resume file holds {:?}, not yet {offset}, after 60 s; stderr so far:\n{}",
            resume_offset(path),
            stderr.seen.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the client may have received live in the second run but the log never got, because the
/// node was killed before its writer committed it: the records of the last second before the kill
/// (the node commits every 100 ms, `log.commit_interval_ms`; the rest is slack for a loaded
/// machine's fsync).
const UNCOMMITTED_AT_KILL: Duration = Duration::from_secs(1);

/// The Python client with `--resume-file` follows a node (the real binary, on the same config and
/// log file) through a graceful stop (SIGTERM: the stream ends with OK) and a crash (kill -9: the
/// connection breaks), resubscribing after its last offset each time. It must receive every record
/// the log holds, once each, in offset order, with the offsets of each run above all of the run
/// before (a crashed node's numbers skip ahead, so even records received but never stored are not
/// numbered again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_resumes_from_its_last_offset_across_node_restarts() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let addr = format!("127.0.0.1:{}", common::free_port());
    // A looping clip in real time, 5 analysed frames a second, each a descriptor (the client takes
    // empty frames too). No log path: the log is node.log.sqlite beside the config, the same file
    // for every run.
    let camera = format!(
        "[[cameras]]\nid = \"bikes\"\nuri = \"{}\"\nanalysis_fps = 5.0\nrealtime = true\nloop_file = true\n",
        common::sample_clip().display()
    );
    let config = dir.path().join("node.toml");
    std::fs::write(&config, common::config_toml(&camera, "").replace("127.0.0.1:0", &addr)).unwrap();
    let node_log = dir.path().join("node.stderr");
    let resume = dir.path().join("resume.json");
    let npz = dir.path().join("client.npz");
    let client_out = dir.path().join("client.out");

    // Run 1.
    let mut node = spawn_node(&config, &node_log);
    let mut rust = common::connect(&addr).await;
    let mut python = run_python(&[
        "scripts/central/retina_client.py",
        "--addr",
        &addr,
        "--resume-file",
        resume.to_str().unwrap(),
        // A new log: earliest is where this node's life starts.
        "--from-earliest",
        "--include-empty",
        "--name",
        "python-resume-test",
        "--timeout",
        "300",
        "--save",
        npz.to_str().unwrap(),
    ])
    .stdout(std::fs::File::create(&client_out).unwrap())
    .stderr(Stdio::piped())
    .spawn()
    .map(common::KillOnDrop::new)
    .expect("the Python client starts");
    let mut stderr = ClientStderr::new(python.stderr.take().unwrap());
    let p1 = live_offset(&mut rust).await;
    wait_for_resume_file(&resume, p1 + 10, &stderr, "run 1").await;

    // A graceful stop: the node ends the stream; the client resubscribes after its last offset.
    let status = signal_and_wait(&mut node, libc::SIGTERM, "node run 1").await;
    assert!(status.success(), "node run 1 after SIGTERM: {status}");
    let line = stderr.wait_for("resubscribing", Duration::from_secs(30)).await;
    assert!(line.contains("(the node ended it)"), "{line}");
    let l1 = number_after(&line, "after offset ");
    assert_eq!(resume_offset(&resume), Some(l1), "resume file once the stream ended");

    // Run 2: the same config, the same log.
    let mut node = spawn_node(&config, &node_log);
    let mut rust = common::connect(&addr).await;
    let line = stderr.wait_for("resumed: first offset", Duration::from_secs(60)).await;
    assert!(number_after(&line, "first offset ") > l1, "{line} (after {l1})");
    let p2 = live_offset(&mut rust).await;
    wait_for_resume_file(&resume, p2 + 10, &stderr, "run 2").await;

    // A crash: the connection breaks; records sent live but not yet committed are lost to the log.
    let status = signal_and_wait(&mut node, libc::SIGKILL, "node run 2").await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "node run 2: {status}");
    let line = stderr.wait_for("resubscribing", Duration::from_secs(30)).await;
    let l2 = number_after(&line, "after offset ");
    assert!(l2 > l1, "{line}");
    assert_eq!(resume_offset(&resume), Some(l2), "resume file once the stream broke");

    // Run 3.
    let mut node = spawn_node(&config, &node_log);
    let mut rust = common::connect(&addr).await;
    let line = stderr.wait_for("resumed: first offset", Duration::from_secs(60)).await;
    assert!(number_after(&line, "first offset ") > l2, "{line} (after {l2})");
    let p3 = live_offset(&mut rust).await;
    wait_for_resume_file(&resume, p3 + 10, &stderr, "run 3").await;

    // The client stops on SIGTERM like on Ctrl-C: summary, --save, resume file; status 0.
    let status = signal_and_wait(&mut python, libc::SIGTERM, "the Python client").await;
    let stderr_lines = stderr.rest().await.join("\n");
    let stdout = std::fs::read_to_string(&client_out).unwrap();
    assert!(
        status.success(),
        "the Python client after SIGTERM: {status}\n--- stdout\n{stdout}\n--- stderr\n{stderr_lines}"
    );
    assert!(
        !stderr_lines
            .lines()
            .any(|l| l.starts_with("warning:") || l.starts_with("error:")),
        "the Python client complained:\n{stderr_lines}"
    );
    assert!(stdout.contains("resubscribed         2 times"), "{stdout}");
    // One notice: the offsets skipped at the restart after the kill.
    assert!(stdout.contains("gap notices          1"), "{stdout}");
    let dump = run_python(&["-c", DUMP_FRAME_OFFSETS, npz.to_str().unwrap()])
        .output()
        .expect("python runs");
    let received: Vec<(u64, u64, i64)> = serde_json::from_str(&check_output("reading the .npz", &dump)).unwrap();
    let last = received.last().expect("descriptors received").0;
    assert_eq!(resume_offset(&resume), Some(last), "resume file at the client's exit");

    // What the log holds, up to the client's last offset, read by a Rust client from run 3.
    let request = pb::SubscribeRequest {
        include_empty_frames: true,
        full_context: true,
        start: pb::StartPosition::Earliest as i32,
        ..Default::default()
    };
    let mut stream = rust.subscribe(request).await.expect("Subscribe").into_inner();
    let mut logged: Vec<(u64, u64, i64)> = Vec::new();
    let mut crash_gaps = 0;
    while logged.last().is_none_or(|d| d.0 < last) {
        let d = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the log read within 30 s")
            .expect("the stream goes on")
            .expect("the stream goes on");
        if let Some(gap) = d.gap {
            assert_eq!(gap.reason(), pb::LogGapReason::LostInCrash, "the only gap: the kill's");
            crash_gaps += 1;
            continue;
        }
        logged.push((d.offset, d.node_run_id, common::nanos(d.capture_time)));
    }
    drop(stream);
    assert_eq!(crash_gaps, 1, "one notice for the kill -9, none for the clean stop");
    let status = signal_and_wait(&mut node, libc::SIGTERM, "node run 3").await;
    assert!(status.success(), "node run 3 after SIGTERM: {status}");

    // Once each, in offset order.
    let offsets = |v: &[(u64, u64, i64)]| v.iter().map(|d| d.0).collect::<Vec<u64>>();
    let got = offsets(&received);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "offsets received not strictly increasing: {:?}",
        got.windows(2).find(|w| w[0] >= w[1])
    );
    // Three runs, one after the other, each numbered above the one before.
    let mut runs: Vec<u64> = received.iter().map(|d| d.1).collect();
    runs.dedup();
    assert_eq!(runs.len(), 3, "node runs seen by the client, in order: {runs:?}");
    let of_run = |run: u64| received.iter().filter(move |d| d.1 == run).map(|d| d.0);
    for pair in runs.windows(2) {
        let (before, after) = (of_run(pair[0]).max().unwrap(), of_run(pair[1]).min().unwrap());
        assert!(
            after > before,
            "run {} starts at offset {after}, run {} reached {before}",
            pair[1],
            pair[0]
        );
    }
    for &run in &runs {
        assert!(
            of_run(run).count() >= 3,
            "run {run}: {:?}",
            of_run(run).collect::<Vec<_>>()
        );
    }
    let mut log_runs: Vec<u64> = logged.iter().map(|d| d.1).collect();
    log_runs.dedup();
    assert_eq!(log_runs, runs, "node runs in the log");

    // Up to the graceful stop (and what the resubscription after it read): exactly the log.
    let span = |v: &[(u64, u64, i64)], from: u64, to: u64| -> Vec<u64> {
        v.iter().map(|d| d.0).filter(|o| (from..=to).contains(o)).collect()
    };
    assert_eq!(span(&received, 0, l1), span(&logged, 0, l1), "offsets up to {l1}");
    // Between the resubscription after the graceful stop and the kill: everything the log kept, and
    // possibly a few more, received live but never committed: the last records before the kill.
    let (got_2, logged_2) = (span(&received, l1 + 1, l2), span(&logged, l1 + 1, l2));
    let missing: Vec<u64> = logged_2.iter().filter(|o| !got_2.contains(o)).copied().collect();
    assert!(
        missing.is_empty(),
        "offsets in the log the client never received: {missing:?}"
    );
    let unstored: Vec<u64> = got_2.iter().filter(|o| !logged_2.contains(o)).copied().collect();
    if let Some(&first_unstored) = unstored.first() {
        assert!(
            logged_2.iter().all(|&o| o < first_unstored),
            "records lost at the kill are the last ones received before it: {unstored:?}, log {logged_2:?}"
        );
        let capture = |o: u64| received.iter().find(|d| d.0 == o).unwrap().2;
        let lost_span = Duration::from_nanos((capture(l2) - capture(first_unstored)) as u64);
        assert!(
            lost_span < UNCOMMITTED_AT_KILL,
            "the log lost {} records, {lost_span:?} of capture time before the kill: {unstored:?}",
            unstored.len()
        );
    }
    println!(
        "offsets received: {} in run 1 (to {l1}), {} in run 2 (to {l2}), {} in run 3 (to {last}); \
         {} received live but not in the log after the kill: {unstored:?}",
        of_run(runs[0]).count(),
        of_run(runs[1]).count(),
        of_run(runs[2]).count(),
        unstored.len()
    );
    // After the resubscription that followed the crash: exactly the log.
    assert_eq!(
        span(&received, l2 + 1, last),
        span(&logged, l2 + 1, last),
        "offsets after {l2}"
    );
}

// ── grpcurl ──────────────────────────────────────────────────────────────────────────────────

/// grpcurl, a client that knows nothing of ours, resumes a subscription after an offset: the
/// request in JSON with the enum by name and the uint64 as a string (proto3 JSON), and the first
/// descriptor it prints is the one after that offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_resumes_a_subscription_after_an_offset() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let camera = format!(
        "[[cameras]]\nid = \"bikes\"\nuri = \"{}\"\nanalysis_fps = 5.0\nrealtime = true\n",
        common::sample_clip().display()
    );
    let (node, mut client) = common::start_node(common::parse_config(&common::config_toml(&camera, ""))).await;

    // The first descriptors of the node's (new) log.
    let request = pb::SubscribeRequest {
        include_empty_frames: true,
        start: pb::StartPosition::Earliest as i32,
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.expect("Subscribe").into_inner();
    let mut offsets = Vec::new();
    while offsets.len() < 4 {
        let d = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("a descriptor within a minute")
            .expect("the stream goes on")
            .expect("the stream goes on");
        offsets.push(d.offset);
    }
    drop(stream);
    let after = offsets[1];
    assert_eq!(
        offsets[2],
        after + 1,
        "one run of one camera numbers its records one by one: {offsets:?}"
    );

    let grpcurl = common::repo().join(".deps/bin/grpcurl");
    let data =
        format!(r#"{{"start":"START_POSITION_AFTER_OFFSET","after_offset":"{after}","include_empty_frames":true}}"#);
    let mut run = Command::new(&grpcurl)
        .args(["-plaintext", "-max-time", "60", "-d", &data])
        .args([&node.grpc_addr.to_string(), "retina.v1.Retina/Subscribe"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(common::KillOnDrop::new)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make deps`)", grpcurl.display()));
    // Its output up to the first descriptor's offset (a top-level "offset": "N" line).
    let stdout = run.stdout.take().unwrap();
    let (first, printed) = tokio::task::spawn_blocking(move || {
        let mut printed = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            printed.push_str(&line);
            printed.push('\n');
            if let Some(value) = line.trim().strip_prefix("\"offset\": ") {
                return (Some(value.trim_end_matches(',').to_string()), printed);
            }
        }
        (None, printed)
    })
    .await
    .unwrap();
    let Some(first) = first else {
        let output = run.wait_with_output().unwrap();
        panic!(
            "grpcurl printed no offset ({}):\n{printed}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    };
    assert_eq!(first, format!("\"{}\"", after + 1), "the first descriptor:\n{printed}");
    drop(run);
    common::stop_node(node).await;
}
