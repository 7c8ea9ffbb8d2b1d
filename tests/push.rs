//! Push mode and the central collector: a node dials out to `retina-edge collect` (a real
//! process), which writes every record into a real `nats-server -js` started here. Loopback only.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use retina_edge::access::{self, Scope};
use retina_edge::pb;

/// A `nats-server` with JetStream on a free loopback port, its store in `store`.
struct Nats {
    _process: common::KillOnDrop,
    port: u16,
}

impl Nats {
    async fn start(store: &Path) -> Nats {
        let port = common::free_port();
        let process = common::KillOnDrop::new(
            std::process::Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server starts (Debian package nats-server, installed by make deps)"),
        );
        wait_for_port(port, "nats-server").await;
        Nats {
            _process: process,
            port,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

async fn wait_for_port(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} listens on {port} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `retina-edge collect` as a process, for `kill -9`.
fn spawn_collector(config: &Path) -> common::KillOnDrop {
    common::KillOnDrop::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"))
            .args(["collect", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("retina-edge collect starts"),
    )
}

/// A collector config on `port` writing to `nats`, taking tokens from `tokens`.
fn collector_config(dir: &Path, port: u16, nats: &Nats, tokens: &Path) -> PathBuf {
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "[collector]\nlisten = \"127.0.0.1:{port}\"\n\n[nats]\nurl = \"{}\"\n\n[auth]\ntokens_file = \"{}\"\n",
            nats.url(),
            tokens.display()
        ),
    )
    .unwrap();
    path
}

/// Every record in the stream: (subject, record), in stream order.
async fn stored_records(nats: &Nats) -> Vec<(String, pb::FrameDescriptor)> {
    let client = async_nats::connect(nats.url()).await.expect("NATS connects");
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
        let record = pb::FrameDescriptor::decode(message.payload.as_ref()).expect("a FrameDescriptor");
        records.push((message.subject.to_string(), record));
    }
    records
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
    let _collector = spawn_collector(&collector_config(dir.path(), port, &nats, &tokens));
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

    let stored = stored_records(&nats).await;
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
}
