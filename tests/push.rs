//! Push mode and the central collector: a node dials out to `retina-edge collect` (a real
//! process), which writes every record into a real `nats-server -js` started here. Loopback only.

mod common;

use common::nats::{Nats, start_nats_at, wait_for_port};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use retina_edge::access::{self, Scope};
use retina_edge::pb;

/// A collector config on `port` (and its metrics on `metrics_port`) writing to `nats_url`, with
/// further `sections` (`[auth]`, `[[pull]]`).
fn collector_config(dir: &Path, port: u16, metrics_port: Option<u16>, nats_url: &str, sections: &str) -> PathBuf {
    let metrics = metrics_port.map_or(String::new(), |p| format!("metrics_listen = \"127.0.0.1:{p}\"\n"));
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!("[collector]\nlisten = \"127.0.0.1:{port}\"\n{metrics}\n[nats]\nurl = \"{nats_url}\"\n\n{sections}"),
    )
    .unwrap();
    path
}

/// The `[auth]` section of a collector taking its tokens from `tokens`.
fn auth_section(tokens: &Path) -> String {
    format!("[auth]\ntokens_file = \"{}\"\n", tokens.display())
}

/// Every record in the stream (not the nodes' `_node` messages): (subject, record), in stream
/// order.
async fn stored_records(url: &str) -> Vec<(String, pb::FrameDescriptor)> {
    let client = async_nats::connect(url).await.expect("NATS connects");
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream
        .get_stream("RETINA")
        .await
        .expect("the collector made the stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut records = Vec::new();
    if state.messages == 0 {
        return records;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await.expect("a stored message");
        if message.subject.ends_with("._node") {
            continue;
        }
        let record = pb::FrameDescriptor::decode(message.payload.as_ref()).expect("a FrameDescriptor");
        records.push((message.subject.to_string(), record));
    }
    records
}

/// A node that listens on `addr` and keeps its cameras in `dir`, as a node restarted by a test
/// must (the same port, the same camera state).
fn node_config(dir: &Path, cameras: &str, addr: &str) -> PathBuf {
    let path = dir.join("node.toml");
    let state = format!("camera_state_file = \"{}\"", dir.join("cameras.toml").display());
    std::fs::write(&path, common::config_toml(cameras, &state).replace("127.0.0.1:0", addr)).unwrap();
    path
}

fn offset_of(record: &pb::FrameDescriptor) -> u64 {
    record.gap.as_ref().map_or(record.offset, |gap| gap.last_offset)
}

fn secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// One pass of the sample clip, pushed to the collector; a second target whose token names
/// another node is refused and keeps retrying without holding up the first, or the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushing_node_lands_every_offset_in_jetstream_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("jetstream")).await;
    let tokens = dir.path().join("collector-tokens.toml");
    let good = access::add_token(&tokens, "test-node", &[Scope::Push]).unwrap();
    let impostor = access::add_token(&tokens, "another-node", &[Scope::Push]).unwrap();
    secret(&dir.path().join("good.token"), &good);
    secret(&dir.path().join("impostor.token"), &impostor);
    let port = common::free_port();
    let _collector = common::spawn_retina(
        "collect",
        &collector_config(dir.path(), port, None, &nats.url(), &auth_section(&tokens)),
    );
    wait_for_port(port, "the collector").await;

    let clip = common::sample_clip();
    let push = |name: &str, token: &str| {
        format!(
            "[[push]]\nname = \"{name}\"\naddress = \"http://127.0.0.1:{port}\"\ntoken_file = \"{}\"\ninclude_empty_frames = true\nreconnect_initial_seconds = 0.2\nreconnect_max_seconds = 1.0\n",
            dir.path().join(token).display()
        )
    };
    let cameras = format!(
        "[[cameras]]\nid = \"clip\"\nuri = \"{}\"\nanalysis_fps = 2.0\nrealtime = false\n\n{}\n{}",
        clip.display(),
        push("centre", "good.token"),
        push("impostor", "impostor.token"),
    );
    let config = common::parse_config(&common::config_toml(&cameras, "exit_when_cameras_end = true"));
    let push_state = config.push_state_path();
    let (node, mut client) = common::start_node(config).await;
    let metrics = node.metrics.clone();
    // Everything the node produces, from its own stream, until it stops.
    let produced = tokio::spawn(async move { common::collect_until_end(&mut client).await });
    // The camera's one pass ends the node (exit_when_cameras_end), which first sends the push
    // target the last records and waits for their acknowledgement.
    tokio::time::timeout(Duration::from_secs(300), node.wait())
        .await
        .expect("the node ends with its camera")
        .expect("clean stop");
    let produced = produced.await.unwrap();
    assert!(produced.len() > 10, "{} descriptors", produced.len());

    let stored = stored_records(&nats.url()).await;
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, record) in &stored {
        *seen.entry(offset_of(record)).or_default() += 1;
    }
    let produced_offsets: Vec<u64> = produced.iter().map(offset_of).collect();
    let stored_offsets: Vec<u64> = seen.keys().copied().collect();
    assert_eq!(
        stored_offsets, produced_offsets,
        "every offset the node produced, and no other"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");

    // One subject per node and camera; every record stands alone (context restored), and is
    // the node's record.
    for ((subject, record), mine) in stored.iter().zip(&produced) {
        assert_eq!(subject, "retina.test-node.clip");
        assert_eq!(record.node_id, "test-node");
        assert!(record.detector.is_some(), "offset {}: context restored", record.offset);
        assert_eq!(record.tracks, mine.tracks);
        assert_eq!(record.track_events, mine.track_events);
        assert_eq!(record.capture_time, mine.capture_time);
    }

    // What the node is and runs, beside its records, for readers who cannot ask it.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let stream = async_nats::jetstream::new(client).get_stream("RETINA").await.unwrap();
    let info = stream
        .get_last_raw_message_by_subject("retina.test-node._node")
        .await
        .expect("the node's info");
    let info = pb::NodeInfo::decode(info.payload.as_ref()).unwrap();
    let detector = info.models.iter().find(|m| m.role == "detector").expect("the detector");
    assert!(detector.class_names.iter().any(|c| c == "car"), "{detector:?}");
    assert_eq!(Some(&detector.id), produced[0].detector.as_ref().map(|d| &d.id));

    // The node kept what the collector acknowledged.
    let cursors = std::fs::read_to_string(&push_state).expect("the push state file");
    let last = produced_offsets.last().copied().unwrap();
    assert!(cursors.contains(&format!("centre = {last}")), "{cursors}");
    assert!(!cursors.contains("impostor"), "{cursors}");

    // The impostor was refused and kept trying, and said so.
    let values = common::metric_values(&metrics.encode().unwrap());
    let state = |target: &str, state: &str| {
        values
            .get(&format!("retina_push_state{{target=\"{target}\",state=\"{state}\"}}"))
            .copied()
    };
    assert_eq!(state("impostor", "streaming"), Some(0.0), "{values:?}");
    assert!(
        values
            .get("retina_push_reconnects_total{target=\"impostor\"}")
            .is_some_and(|n| *n >= 1.0),
        "{values:?}"
    );
    assert_eq!(
        values.get("retina_push_acked_offset{target=\"centre\"}").copied(),
        Some(last as f64)
    );
    assert!(
        values
            .get("retina_push_lag_records{target=\"impostor\"}")
            .is_some_and(|n| *n > 0.0),
        "a target that is away falls behind, and says so: {values:?}"
    );

    reading_from_jetstream_gives_what_the_node_streamed(&nats.url(), &produced, dir.path()).await;
}

/// `retina-edge subscribe --nats ...` as a process: its JSON lines (descriptors; gap notices are
/// `{"gap": ...}`).
async fn subscribe_from_jetstream(url: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"));
    command
        .args(["subscribe", "--nats", url, "--json"])
        .args(args)
        .env("RUST_LOG", "warn");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("the reader ends within 120 s")
    .unwrap()
    .expect("retina-edge subscribe runs");
    let stdout = common::python::check_output("retina-edge subscribe --nats", &output);
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn offsets(lines: &[serde_json::Value]) -> Vec<u64> {
    lines.iter().filter_map(|l| l["offset"].as_u64()).collect()
}

/// Readers at the centre get from JetStream what the node streamed, decoded alike: the Rust CLI,
/// a durable consumer that stops and resumes, and the Python client.
async fn reading_from_jetstream_gives_what_the_node_streamed(url: &str, produced: &[pb::FrameDescriptor], dir: &Path) {
    let produced_offsets: Vec<u64> = produced.iter().map(offset_of).collect();
    let all = subscribe_from_jetstream(url, &["--from-earliest", "--until-caught-up"]).await;
    assert_eq!(offsets(&all), produced_offsets, "every record, once, in order");
    assert!(
        all.iter()
            .all(|l| l["node_id"] == "test-node" && l["camera_id"] == "clip")
    );
    // Class names come from the node's `._node` message.
    assert!(
        all.iter()
            .flat_map(|l| l["tracks"].as_array().into_iter().flatten())
            .any(|t| t["class_name"] == "car"),
        "tracks named by class"
    );

    // A start time is when the collector stored a record: all of them after one in the past,
    // none after one to come.
    let since_2000 = subscribe_from_jetstream(url, &["--from-time", "2000-01-01T00:00:00Z", "--until-caught-up"]).await;
    assert_eq!(offsets(&since_2000), produced_offsets);
    let tomorrow = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(86_400)).to_string();
    let from_tomorrow = subscribe_from_jetstream(url, &["--from-time", &tomorrow, "--until-caught-up"]).await;
    assert!(from_tomorrow.is_empty(), "{from_tomorrow:?}");

    // A durable reader that stops after 5 records resumes with the sixth.
    let durable = ["--durable", "central-test", "--from-earliest"];
    let first = subscribe_from_jetstream(url, &[&durable[..], &["--max-frames", "5"]].concat()).await;
    let rest = subscribe_from_jetstream(url, &[&durable[..], &["--until-caught-up"]].concat()).await;
    assert_eq!(offsets(&first), produced_offsets[..5]);
    assert_eq!(offsets(&rest), produced_offsets[5..], "resumed where it stopped");
    // And acknowledged every record it printed: none is waiting to be delivered again.
    let client = async_nats::connect(url).await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = async_nats::jetstream::new(client)
        .get_stream("RETINA")
        .await
        .unwrap()
        .get_consumer("central-test")
        .await
        .expect("the durable consumer stays on the server");
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");

    // The Python client: the same vectors as the Rust decoding of the node's own stream.
    let npz = dir.join("jetstream.npz");
    let python = common::python::run_python(&[
        "scripts/central/retina_client.py",
        "jetstream",
        "--nats",
        url,
        "--from-earliest",
        "--until-caught-up",
        "--save",
        npz.to_str().unwrap(),
    ])
    .output()
    .expect("the Python client runs");
    let stdout = common::python::check_output("retina_client.py jetstream", &python);
    let stderr = String::from_utf8_lossy(&python.stderr);
    assert!(!stderr.contains("warning:") && !stderr.contains("error:"), "{stderr}");
    assert!(stdout.contains(" confirmed"), "track events printed:\n{stdout}");
    let (rows, frames) = common::python::saved_vectors(&npz);
    let python_offsets: Vec<u64> = frames
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f[2].as_u64().unwrap())
        .collect();
    assert_eq!(python_offsets, produced_offsets);
    assert!(!rows.is_empty(), "vectors to compare");
    common::python::assert_decoded_alike(&rows, produced);
}

/// Records in the stream now (0 while JetStream cannot say).
async fn stored_count(url: &str) -> u64 {
    let Ok(client) = async_nats::connect(url).await else {
        return 0;
    };
    let jetstream = async_nats::jetstream::new(client);
    let Ok(mut stream) = jetstream.get_stream("RETINA").await else {
        return 0;
    };
    stream.info().await.map_or(0, |info| info.state.messages)
}

/// Waits until JetStream holds `more` records beyond what it held when called.
async fn until_more_stored(url: &str, more: u64, what: &str) {
    let from = stored_count(url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let now = stored_count(url).await;
        if now >= from + more {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {now} stored, wanted {}",
            from + more
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One value of the collector's `/metrics` (plain HTTP on loopback, with the metrics token).
async fn collector_metric(port: u16, token: &str, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    common::metric_values(&response).get(name).copied()
}

/// The collector, then nats-server, then the node die mid-stream and come back: JetStream ends
/// with every offset the node committed exactly once, and the node's acknowledged offset is the
/// last one stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_of_the_collector_nats_and_the_node_lose_nothing_and_store_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("jetstream");
    let nats_port = common::free_port();
    let mut nats = start_nats_at(&store, nats_port);
    wait_for_port(nats_port, "nats-server").await;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let tokens = dir.path().join("collector-tokens.toml");
    let token = access::add_token(&tokens, "test-node", &[Scope::Push]).unwrap();
    secret(&dir.path().join("push.token"), &token);
    let port = common::free_port();
    let metrics_port = common::free_port();
    let collector_toml = collector_config(dir.path(), port, Some(metrics_port), &nats_url, &auth_section(&tokens));
    let metrics_token = access::add_token(&tokens, "prometheus", &[Scope::Metrics]).unwrap();
    let mut collector = common::spawn_retina("collect", &collector_toml);
    wait_for_port(port, "the collector").await;

    // A camera that never ends: the clip looped, in real time.
    let clip = common::sample_clip();
    let log = dir.path().join("node.log.sqlite");
    let cameras = format!(
        "[[cameras]]\nid = \"loop\"\nuri = \"{}\"\nanalysis_fps = 5.0\nloop_file = true\n\n\
         [log]\npath = \"{}\"\n\n\
         [[push]]\nname = \"centre\"\naddress = \"http://127.0.0.1:{port}\"\ntoken_file = \"{}\"\n\
         include_empty_frames = true\nreconnect_initial_seconds = 0.2\nreconnect_max_seconds = 1.0\n",
        clip.display(),
        log.display(),
        dir.path().join("push.token").display(),
    );
    let node_addr = format!("127.0.0.1:{}", common::free_port());
    let node_toml = node_config(dir.path(), &cameras, &node_addr);
    let mut node = common::spawn_retina("run", &node_toml);
    until_more_stored(&nats_url, 10, "first records").await;

    collector.kill().unwrap();
    collector.wait().unwrap();
    let mut collector = common::spawn_retina("collect", &collector_toml);
    until_more_stored(&nats_url, 10, "after the collector's kill -9").await;

    nats.kill().unwrap();
    nats.wait().unwrap();
    // JetStream stays away until the collector has had to hold a batch, and says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waits = collector_metric(metrics_port, &metrics_token, "retina_collect_jetstream_waits_total").await;
        if waits.is_some_and(|w| w > 0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collector reports waiting for JetStream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _nats = start_nats_at(&store, nats_port);
    wait_for_port(nats_port, "nats-server again").await;
    until_more_stored(&nats_url, 10, "after nats-server's kill -9").await;

    node.kill().unwrap();
    node.wait().unwrap();
    let mut node = common::spawn_retina("run", &node_toml);
    until_more_stored(&nats_url, 10, "after the node's kill -9").await;

    // A graceful stop: the node sends the rest and waits for the acknowledgement.
    let pid = node.id() as libc::pid_t;
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || node.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    collector.kill().unwrap();

    // What the node committed, from its log.
    let store_file = retina_edge::log::Store::open_reader(&log).expect("the node's log");
    let committed: Vec<u64> = store_file
        .read_from(0, 1_000_000)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert!(committed.len() >= 40, "{} committed", committed.len());
    let stored = stored_records(&nats_url).await;
    let mut records: BTreeMap<u64, usize> = BTreeMap::new();
    let mut newest = 0;
    for (_, record) in &stored {
        newest = newest.max(offset_of(record));
        if record.gap.is_none() {
            *records.entry(record.offset).or_default() += 1;
        }
    }
    let twice: Vec<_> = records.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<_> = committed.iter().filter(|o| !records.contains_key(o)).collect();
    assert!(missing.is_empty(), "committed but not in JetStream: {missing:?}");
    let cursors = std::fs::read_to_string(dir.path().join("node.log.push.toml")).expect("the push state file");
    assert!(
        cursors.contains(&format!("centre = {newest}")),
        "acknowledged = last stored {newest}: {cursors}"
    );
}

/// A record sent twice is stored once: within a session (offsets at or below what the collector
/// holds are not written again) and when the collector's own note of what it holds was lost (a
/// kill between storing and noting): then JetStream's duplicate window drops it by its id. The
/// node is played by a real gRPC client here, to send exactly the records the case needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_sent_twice_is_stored_once() {
    use pb::collector_client::CollectorClient;
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("jetstream")).await;
    let tokens = dir.path().join("collector-tokens.toml");
    let token = access::add_token(&tokens, "test-node", &[Scope::Push]).unwrap();
    let port = common::free_port();
    let _collector = common::spawn_retina(
        "collect",
        &collector_config(dir.path(), port, None, &nats.url(), &auth_section(&tokens)),
    );
    wait_for_port(port, "the collector").await;

    let record = |offset: u64| pb::FrameDescriptor {
        node_id: "test-node".into(),
        camera_id: "gate".into(),
        offset,
        sequence: offset,
        detector: Some(pb::ModelRef {
            id: "detector".into(),
            version: "1".into(),
        }),
        ..Default::default()
    };
    // A session of the node: the hello sent, the collector's first reply read.
    let session = || {
        let token = token.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let bearer = retina_edge::deliver::client::BearerToken::new(Some(&token)).unwrap();
            let mut client = CollectorClient::with_interceptor(channel, bearer);
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            tx.send(pb::PushMessage {
                kind: Some(pb::push_message::Kind::Hello(pb::PushHello {
                    node_id: "test-node".into(),
                    log_next_offset: 1000,
                    node: None,
                })),
            })
            .await
            .unwrap();
            let mut replies = client
                .push(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("the collector takes the push")
                .into_inner();
            let first = replies.message().await.unwrap().unwrap().stored_through;
            (tx, replies, first)
        }
    };
    // Sends `offsets` on a session; returns the collector's last reply once it covers them.
    let send = |tx: tokio::sync::mpsc::Sender<pb::PushMessage>,
                mut replies: tonic::Streaming<pb::PushReply>,
                offsets: std::ops::RangeInclusive<u64>| async move {
        let last = *offsets.end();
        for o in offsets {
            let message = pb::PushMessage {
                kind: Some(pb::push_message::Kind::Record(record(o))),
            };
            tx.send(message).await.unwrap();
        }
        let mut through = None;
        while through < Some(last) {
            through = replies
                .message()
                .await
                .unwrap()
                .expect("acknowledgements")
                .stored_through;
        }
        through
    };
    // Sends `offsets` after a hello; returns the collector's first reply and its last.
    let push = |offsets: std::ops::RangeInclusive<u64>| async {
        let (tx, replies, first) = session().await;
        (first, send(tx, replies, offsets).await)
    };
    let offsets = || async {
        let mut offsets: Vec<u64> = stored_records(&nats.url())
            .await
            .iter()
            .map(|(_, r)| r.offset)
            .collect();
        offsets.sort();
        offsets
    };

    // A token pushes only as the node it is named after.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = retina_edge::deliver::client::BearerToken::new(Some(&token)).unwrap();
    let hello = pb::PushMessage {
        kind: Some(pb::push_message::Kind::Hello(pb::PushHello {
            node_id: "someone-else".into(),
            log_next_offset: 0,
            node: None,
        })),
    };
    let refused = CollectorClient::with_interceptor(channel, bearer)
        .push(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // A collector where other hosts reach it needs TLS and tokens.
    let open = dir.path().join("open.toml");
    std::fs::write(&open, "[collector]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"))
        .args(["collect", "--config"])
        .arg(&open)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("no [tls] and [auth]") && said.contains("collector.insecure"),
        "{said}"
    );

    assert_eq!(push(0..=9).await, (None, Some(9)));
    // Sent again from 5 (a node that lost the acknowledgement): told 9 is held, 5..=9 not stored again.
    assert_eq!(push(5..=14).await, (Some(9), Some(14)));
    assert_eq!(offsets().await, (0..=14).collect::<Vec<_>>());

    // The collector's note of what it holds is lost (it is made at most twice a second, so a
    // kill can lose its last one): the records in the stream still say 14 is held.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let notes = jetstream.get_stream("retina_push_offsets").await.unwrap();
    notes.purge().await.unwrap();
    assert_eq!(push(10..=19).await, (Some(14), Some(19)));
    assert_eq!(offsets().await, (0..=19).collect::<Vec<_>>());

    // Two sessions of the node at once (it reconnected while its old stream lingers at the
    // collector), both told 19 is held: the old one sends 20..=29 after the new one stored them,
    // and JetStream drops them by id.
    let (old_tx, old_replies, old_first) = session().await;
    assert_eq!(old_first, Some(19));
    assert_eq!(push(20..=29).await, (Some(19), Some(29)));
    assert_eq!(send(old_tx, old_replies, 20..=29).await, Some(29));
    assert_eq!(offsets().await, (0..=29).collect::<Vec<_>>());
}

/// Pull mode: the collector dials a node it can reach and subscribes to its log. The node is not
/// up yet when the collector starts; then the collector is killed (-9) and restarted, then the
/// node: each time the collector resumes after what JetStream holds, so that it ends with every
/// offset the node's log holds exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_pulls_a_node_it_can_reach_through_kills_of_both() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("jetstream")).await;
    let node_addr = format!("127.0.0.1:{}", common::free_port());
    let port = common::free_port();
    let metrics_port = common::free_port();
    let pull = format!(
        "[[pull]]\nname = \"box\"\naddress = \"http://{node_addr}\"\ninclude_empty_frames = true\n\
         reconnect_initial_seconds = 0.2\nreconnect_max_seconds = 1.0\n"
    );
    let collector_toml = collector_config(dir.path(), port, Some(metrics_port), &nats.url(), &pull);
    let mut collector = common::spawn_retina("collect", &collector_toml);
    wait_for_port(port, "the collector").await;

    let log = dir.path().join("node.log.sqlite");
    let cameras = format!(
        "[[cameras]]\nid = \"loop\"\nuri = \"{}\"\nanalysis_fps = 5.0\nloop_file = true\n\n[log]\npath = \"{}\"\n",
        common::sample_clip().display(),
        log.display(),
    );
    let node_toml = node_config(dir.path(), &cameras, &node_addr);
    let mut node = common::spawn_retina("run", &node_toml);
    until_more_stored(&nats.url(), 10, "first records pulled").await;
    let connected = collector_metric(metrics_port, "", "retina_collect_pull_connected{target=\"box\"}").await;
    assert_eq!(connected, Some(1.0));

    collector.kill().unwrap();
    collector.wait().unwrap();
    let _collector = common::spawn_retina("collect", &collector_toml);
    until_more_stored(&nats.url(), 10, "after the collector's kill -9").await;

    node.kill().unwrap();
    node.wait().unwrap();
    let _node = common::spawn_retina("run", &node_toml);
    until_more_stored(&nats.url(), 10, "after the node's kill -9").await;

    // What the node's log holds by now must all arrive, once each.
    let committed: Vec<u64> = retina_edge::log::Store::open_reader(&log)
        .expect("the node's log")
        .read_from(0, 1_000_000)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert!(committed.len() >= 20, "{} committed", committed.len());
    let last = *committed.last().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let stored = loop {
        let stored = stored_records(&nats.url()).await;
        if stored.iter().any(|(_, r)| offset_of(r) >= last) {
            break stored;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "offset {last} pulled within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut records: BTreeMap<u64, usize> = BTreeMap::new();
    for (subject, record) in &stored {
        if record.gap.is_none() {
            assert_eq!(subject, "retina.test-node.loop");
            assert!(record.detector.is_some(), "offset {}: context restored", record.offset);
            *records.entry(record.offset).or_default() += 1;
        }
    }
    let twice: Vec<_> = records.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<_> = committed.iter().filter(|o| !records.contains_key(o)).collect();
    assert!(
        missing.is_empty(),
        "in the node's log but not in JetStream: {missing:?}"
    );
    let reconnects = collector_metric(metrics_port, "", "retina_collect_pull_reconnects_total{target=\"box\"}").await;
    assert!(
        reconnects.is_some_and(|n| n >= 1.0),
        "the node's kill counted: {reconnects:?}"
    );
}
