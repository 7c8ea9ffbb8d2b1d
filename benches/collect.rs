//! The central collector at scale (issue 12): `retina-edge collect` (the release binary) against
//! N simulated nodes, writing into a real local `nats-server -js` (`make bench-collect`).
//!
//! 1. **Real records.** The node runs once on the sample clip (5 analysed frames/s, default
//!    describe settings) and a subscriber collects its stream. A node pushes by default what has a
//!    track or an event (`include_empty_frames = false`), so those are the records replayed: a
//!    simulated node is 8 such cameras, each replaying the clip's records round-robin (capture
//!    times advanced by the clip's length per pass), offsets numbered 1, 2, ... across its
//!    cameras, with the context fields sent once per camera as a node sends them.
//! 2. **Sustained rate.** N nodes (gRPC clients in this process, one HTTP/2 connection each, with
//!    a token each) push R records each through `retina.v1.Collector/Push` as fast as the
//!    collector acknowledges them, at most 4,096 unacknowledged per node (the node's window).
//!    Records/s and MB/s (records as sent, protobuf) from the first record sent to the last
//!    acknowledged, i.e. stored in JetStream; several rounds, each with new node ids.
//! 3. **Cost.** CPU seconds (user + system, `/proc/<pid>/stat`) of the collector and of
//!    `nats-server` per record over the rounds; bytes JetStream stores per record.
//! 4. **Lag at a city's pace.** The same N nodes paced at the clip's real rate per camera for a
//!    while: the time from a record being sent until it is acknowledged (stored) and until a
//!    JetStream consumer at the centre (an ordered push consumer on `retina.>`) receives it.
//! 5. **10,000 boxes x 8 cameras, on paper**, from those figures.
//!
//! All traffic on loopback; the simulated nodes share the 2 cores with the collector and
//! `nats-server`, so the rates are those of the three together on one small machine (the
//! simulator's own CPU is reported too). Output: a report on stdout, also written to
//! `benches/results/collect.md`. Scratch files under `target/bench-collect`.
//!
//! Environment: RETINA_COLLECT_BENCH_NODES (N, default 100), RETINA_COLLECT_BENCH_RECORDS
//! (records per node and round, 2,000), RETINA_COLLECT_BENCH_ROUNDS (3),
//! RETINA_COLLECT_BENCH_PACED_SECONDS (20), RETINA_BIN (default target/release/retina-edge).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/stats.rs"]
mod stats;

use stats::{median, percentile, spread};

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use retina_edge::access::{self, Scope};
use retina_edge::deliver::client::BearerToken;
use retina_edge::pb;
use retina_edge::pb::collector_client::CollectorClient;
use tokio_stream::StreamExt;

const FPS: f64 = 5.0;
const CAMERAS_PER_NODE: u64 = 8;
/// Records a node has sent and the collector not yet acknowledged, at most (as `deliver::push`).
const WINDOW: u64 = 4096;
const CITY_BOXES: f64 = 10_000.0;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let nodes = env_or("RETINA_COLLECT_BENCH_NODES", 100);
    let records = env_or("RETINA_COLLECT_BENCH_RECORDS", 2_000);
    let rounds = env_or("RETINA_COLLECT_BENCH_ROUNDS", 3);
    let paced_seconds = env_or("RETINA_COLLECT_BENCH_PACED_SECONDS", 20);
    let binary = std::env::var("RETINA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| common::repo().join("target/release/retina-edge"));
    assert!(
        binary.is_file(),
        "{} is missing: `make bench-collect` builds it",
        binary.display()
    );
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    eprintln!("[collect] recording the clip's descriptors");
    let sample = Sample::record(&runtime);
    let scratch = common::repo().join("target/bench-collect");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    // Tokens for every simulated node of every phase, made before the collector starts.
    let tokens_file = scratch.join("tokens.toml");
    let node_ids: Vec<Vec<String>> = (0..=rounds)
        .map(|phase| (0..nodes).map(|i| format!("p{phase}-box-{i:05}")).collect())
        .collect();
    let mut tokens = HashMap::new();
    for id in node_ids.iter().flatten() {
        tokens.insert(id.clone(), access::add_token(&tokens_file, id, &[Scope::Push]).unwrap());
    }
    let tokens = Arc::new(tokens);

    runtime.block_on(async {
        let nats = common::nats::Nats::start(&scratch.join("jetstream")).await;
        let port = common::free_port();
        let config = scratch.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "[collector]\nlisten = \"127.0.0.1:{port}\"\n\n[nats]\nurl = \"{}\"\n\n[auth]\ntokens_file = \"{}\"\n",
                nats.url(),
                tokens_file.display()
            ),
        )
        .unwrap();
        let collector = common::KillOnDrop::new(
            std::process::Command::new(&binary)
                .args(["collect", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(scratch.join("collector.log")).unwrap())
                .spawn()
                .expect("retina-edge collect starts"),
        );
        common::nats::wait_for_port(port, "the collector").await;
        let address = format!("http://127.0.0.1:{port}");
        let processes = Processes {
            collector: collector.id(),
            nats: nats.process.id(),
        };

        let mut sustained = Vec::new();
        for (round, ids) in node_ids[..rounds as usize].iter().enumerate() {
            eprintln!(
                "[collect] round {}: {nodes} nodes x {records} records, unpaced",
                round + 1
            );
            let before = processes.cpu();
            let run = push_all(&address, ids, &tokens, &sample, records, None, None).await;
            let cpu = processes.cpu().since(&before);
            sustained.push(Round { run, cpu });
        }
        let stored = stream_state(&nats.url()).await;
        // Every record acknowledged is in the stream once, beside one `._node` message per node
        // and round.
        let expected = nodes * rounds * (records + 1);
        assert_eq!(stored.0, expected, "messages in JetStream after the sustained rounds");

        eprintln!("[collect] paced: {nodes} nodes at the clip's rate for {paced_seconds} s");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sent_at = Arc::new(Mutex::new(HashMap::new()));
        let reader = tokio::spawn(read_centre(nats.url(), sent_at.clone(), received.clone()));
        // The consumer exists before the first paced record is sent.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let per_node = (sample.records_per_camera_second * CAMERAS_PER_NODE as f64 * paced_seconds as f64) as u64;
        let before = processes.cpu();
        let paced = push_all(
            &address,
            &node_ids[rounds as usize],
            &tokens,
            &sample,
            per_node,
            Some(sample.records_per_camera_second * CAMERAS_PER_NODE as f64),
            Some(sent_at),
        )
        .await;
        let paced_cpu = processes.cpu().since(&before);
        // The last records reach the reader within a moment of their acknowledgement.
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.lock().unwrap().len() < paced.records as usize && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reader.abort();
        let received = received.lock().unwrap().clone();

        let report = Report {
            nodes,
            records,
            rounds,
            paced_seconds,
            sample: &sample,
            sustained: &sustained,
            stored,
            paced: &paced,
            paced_cpu,
            received: &received,
            elapsed: started.elapsed(),
        }
        .render();
        print!("{report}");
        std::fs::write(common::repo().join("benches/results/collect.md"), report).unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// 1. Real records

struct Sample {
    /// What a node pushes of one pass of the clip: records with a track or an event.
    records: Vec<pb::FrameDescriptor>,
    clip_ns: i64,
    records_per_camera_second: f64,
    analysed_frames: usize,
    node_info: pb::NodeInfo,
}

impl Sample {
    fn record(runtime: &tokio::runtime::Runtime) -> Sample {
        let cameras = format!(
            "[[cameras]]\nid = \"clip\"\nuri = \"{}\"\nanalysis_fps = {FPS:?}\nrealtime = false\n",
            common::sample_clip().display()
        );
        let config = common::parse_config(&common::config_toml(&cameras, "exit_when_cameras_end = true"));
        let (stream, node_info) = runtime.block_on(async {
            let (node, mut client) = common::start_node(config).await;
            let info = common::node_info(&mut client).await;
            let stream = common::collect_until_end(&mut client).await;
            node.wait().await.expect("the node stops cleanly");
            (stream, info)
        });
        let analysed_frames = stream.len();
        let first = common::nanos(stream[0].capture_time);
        let last = common::nanos(stream[stream.len() - 1].capture_time);
        let clip_ns = last - first + (1e9 / FPS) as i64;
        let records: Vec<_> = stream
            .into_iter()
            .filter(|d| !d.tracks.is_empty() || !d.track_events.is_empty())
            .collect();
        assert!(records.len() >= 10, "{} records with tracks", records.len());
        let records_per_camera_second = records.len() as f64 / (clip_ns as f64 / 1e9);
        Sample {
            records,
            clip_ns,
            records_per_camera_second,
            analysed_frames,
            node_info,
        }
    }

    /// Record `index` (0-based) of a node: camera `index % 8`, pass and place in the clip by the
    /// camera's own count; context fields only in the camera's first record, as a node sends them.
    fn record_of(&self, node: &str, index: u64) -> pb::FrameDescriptor {
        let camera = index % CAMERAS_PER_NODE;
        let nth = index / CAMERAS_PER_NODE;
        let pass = nth / self.records.len() as u64;
        let mut record = self.records[(nth % self.records.len() as u64) as usize].clone();
        record.node_id = node.to_string();
        record.camera_id = format!("cam-{camera}");
        record.offset = index + 1;
        record.sequence = nth;
        let shifted = common::nanos(record.capture_time) + pass as i64 * self.clip_ns;
        record.capture_time = Some(common::timestamp(shifted));
        if nth > 0 {
            retina_edge::wire::copy_context(&pb::FrameDescriptor::default(), &mut record);
        }
        record
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Pushing

#[derive(Default)]
struct Run {
    records: u64,
    bytes: u64,
    seconds: f64,
    /// Send to acknowledgement, per record (paced runs only).
    ack_lag: Vec<f64>,
}

/// Every node of `ids` pushes `records` records, at `pace` records/s each or as fast as it can.
async fn push_all(
    address: &str,
    ids: &[String],
    tokens: &Arc<HashMap<String, String>>,
    sample: &Sample,
    records: u64,
    pace: Option<f64>,
    sent_at: Option<SentAt>,
) -> Run {
    // Built beforehand: the simulator's encoding is not what is measured.
    let streams: Vec<Vec<pb::FrameDescriptor>> = ids
        .iter()
        .map(|id| (0..records).map(|i| sample.record_of(id, i)).collect())
        .collect();
    let bytes: u64 = streams.iter().flatten().map(|r| r.encoded_len() as u64).sum();
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .zip(streams)
        .map(|(id, stream)| {
            let node = Node {
                address: address.to_string(),
                id: id.clone(),
                token: tokens[id].clone(),
                info: sample.node_info.clone(),
            };
            tokio::spawn(node.push(stream, pace, sent_at.clone()))
        })
        .collect();
    let mut ack_lag = Vec::new();
    for task in tasks {
        ack_lag.extend(task.await.expect("a simulated node"));
    }
    Run {
        records: records * ids.len() as u64,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        ack_lag,
    }
}

type SentAt = Arc<Mutex<HashMap<(String, u64), Instant>>>;

struct Node {
    address: String,
    id: String,
    token: String,
    info: pb::NodeInfo,
}

impl Node {
    /// Pushes `stream` and returns, when paced, each record's time to acknowledgement.
    async fn push(self, stream: Vec<pb::FrameDescriptor>, pace: Option<f64>, sent_at: Option<SentAt>) -> Vec<f64> {
        let channel = tonic::transport::Endpoint::from_shared(self.address)
            .unwrap()
            .connect()
            .await
            .expect("the collector accepts a connection");
        let bearer = BearerToken::new(Some(&self.token)).unwrap();
        let mut client = CollectorClient::with_interceptor(channel, bearer);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let last = stream.len() as u64;
        tx.send(pb::PushMessage {
            kind: Some(pb::push_message::Kind::Hello(pb::PushHello {
                node_id: self.id.clone(),
                log_next_offset: last + 1,
                node: Some(self.info),
            })),
        })
        .await
        .unwrap();
        let mut replies = client
            .push(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("the collector takes the push")
            .into_inner();
        let first = replies.message().await.unwrap().expect("a first reply");
        assert_eq!(first.stored_through, None, "a new node id");
        let acked = Arc::new(tokio::sync::watch::channel(0u64).0);
        let sends: Arc<Mutex<std::collections::VecDeque<(u64, Instant)>>> = Default::default();
        let lags = Arc::new(Mutex::new(Vec::new()));
        let acks = {
            let (acked, sends, lags) = (acked.clone(), sends.clone(), lags.clone());
            tokio::spawn(async move {
                while let Some(reply) = replies.message().await.expect("acknowledgements") {
                    let through = reply.stored_through.unwrap_or(0);
                    let now = Instant::now();
                    if pace.is_some() {
                        let mut sends = sends.lock().unwrap();
                        while sends.front().is_some_and(|(offset, _)| *offset <= through) {
                            let (_, at) = sends.pop_front().unwrap();
                            lags.lock().unwrap().push((now - at).as_secs_f64());
                        }
                    }
                    acked.send_replace(through);
                    if through >= last {
                        break;
                    }
                }
            })
        };
        let mut ticks = pace.map(|rate| {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            interval
        });
        let mut acked_rx = acked.subscribe();
        for record in stream {
            if let Some(ticks) = &mut ticks {
                ticks.tick().await;
            }
            let offset = record.offset;
            acked_rx
                .wait_for(|through| offset <= through + WINDOW)
                .await
                .expect("acknowledgements go on");
            let now = Instant::now();
            if pace.is_some() {
                sends.lock().unwrap().push_back((offset, now));
            }
            if let Some(sent_at) = &sent_at {
                sent_at.lock().unwrap().insert((self.id.clone(), offset), now);
            }
            tx.send(pb::PushMessage {
                kind: Some(pb::push_message::Kind::Record(record)),
            })
            .await
            .expect("the stream stays open");
        }
        acks.await.unwrap();
        drop(tx);
        Arc::try_unwrap(lags).unwrap().into_inner().unwrap()
    }
}

/// A consumer at the centre: every record's time from being sent to being received here.
async fn read_centre(url: String, sent_at: SentAt, received: Arc<Mutex<Vec<f64>>>) {
    use async_nats::jetstream::consumer;
    let client = async_nats::connect(url).await.expect("NATS connects");
    let stream = async_nats::jetstream::new(client.clone())
        .get_stream("RETINA")
        .await
        .expect("the collector made the stream");
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: "retina.>".into(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(Ok(message)) = messages.next().await {
        let now = Instant::now();
        if message.subject.ends_with("._node") {
            continue;
        }
        let Ok(record) = pb::FrameDescriptor::decode(message.payload.as_ref()) else {
            continue;
        };
        let sent = sent_at.lock().unwrap().remove(&(record.node_id, record.offset));
        if let Some(sent) = sent {
            received.lock().unwrap().push((now - sent).as_secs_f64());
        }
    }
}

async fn stream_state(url: &str) -> (u64, u64) {
    let client = async_nats::connect(url).await.expect("NATS connects");
    let mut stream = async_nats::jetstream::new(client).get_stream("RETINA").await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    (state.messages, state.bytes)
}

// ---------------------------------------------------------------------------------------------
// 3. Cost

struct Processes {
    collector: u32,
    nats: u32,
}

#[derive(Clone, Copy, Default)]
struct Cpu {
    collector: f64,
    nats: f64,
    simulator: f64,
}

impl Processes {
    fn cpu(&self) -> Cpu {
        Cpu {
            collector: cpu_seconds(&format!("/proc/{}/stat", self.collector)),
            nats: cpu_seconds(&format!("/proc/{}/stat", self.nats)),
            simulator: cpu_seconds("/proc/self/stat"),
        }
    }
}

impl Cpu {
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            collector: self.collector - before.collector,
            nats: self.nats - before.nats,
            simulator: self.simulator - before.simulator,
        }
    }
}

/// User + system CPU seconds of a process (fields 14 and 15 of `/proc/<pid>/stat`).
fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).expect("the process is running");
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let fields: Vec<&str> = text[text.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

// ---------------------------------------------------------------------------------------------
// 4. The report

struct Round {
    run: Run,
    cpu: Cpu,
}

struct Report<'a> {
    nodes: u64,
    records: u64,
    rounds: u64,
    paced_seconds: u64,
    sample: &'a Sample,
    sustained: &'a [Round],
    stored: (u64, u64),
    paced: &'a Run,
    paced_cpu: Cpu,
    received: &'a [f64],
    elapsed: Duration,
}

impl Report<'_> {
    fn render(&self) -> String {
        let per_round = |f: &dyn Fn(&Round) -> f64| -> Vec<f64> { self.sustained.iter().map(f).collect() };
        let rates = per_round(&|r| r.run.records as f64 / r.run.seconds);
        let mbps = per_round(&|r| r.run.bytes as f64 / r.run.seconds / 1e6);
        let collector_us = per_round(&|r| r.cpu.collector / r.run.records as f64 * 1e6);
        let nats_us = per_round(&|r| r.cpu.nats / r.run.records as f64 * 1e6);
        let simulator_us = per_round(&|r| r.cpu.simulator / r.run.records as f64 * 1e6);
        let bytes_sent = per_round(&|r| r.run.bytes as f64 / r.run.records as f64);
        let (messages, stored_bytes) = self.stored;
        // The stream also holds each node's `._node` message (one per node and round).
        let stored_per_record = stored_bytes as f64 / messages as f64;
        let camera_rate = self.sample.records_per_camera_second;
        let node_rate = camera_rate * CAMERAS_PER_NODE as f64;
        let paced_rate = self.paced.records as f64 / self.paced.seconds;
        let ms = |values: &[f64], q: f64| percentile(values, q) * 1e3;

        // A city: 10,000 boxes x 8 cameras at the clip's rate.
        let city_rate = CITY_BOXES * node_rate;
        let city_mb_s = city_rate * median(&bytes_sent) / 1e6;
        let collector_cores = city_rate * median(&collector_us) / 1e6;
        let nats_cores = city_rate * median(&nats_us) / 1e6;
        // At a node's pace records come one per message, and fixed costs per message and per
        // wake-up are shared by few records: the paced cost per record is the upper bound,
        // the saturated one (large batches) the lower.
        let paced_collector_us = self.paced_cpu.collector / self.paced.records as f64 * 1e6;
        let paced_nats_us = self.paced_cpu.nats / self.paced.records as f64 * 1e6;
        let paced_collector_cores = city_rate * paced_collector_us / 1e6;
        let paced_nats_cores = city_rate * paced_nats_us / 1e6;
        let disk_day_gb = city_rate * 86_400.0 * stored_per_record / 1e9;

        let mut out = String::new();
        let _ = writeln!(
            out,
            "# The central collector at scale (issue 12): `make bench-collect`\n"
        );
        let _ = writeln!(
            out,
            "`benches/collect.rs` (harness = false): the release binary's `retina-edge collect` and a real \
             `nats-server -js` ({}) on loopback, {} simulated nodes in the benchmark's process. {}. Total run: {:.0} s. \
             The simulator, the collector and `nats-server` share the machine's cores: rates are of the three \
             together, rounds given as median (min–max).\n",
            nats_version(),
            self.nodes,
            machine(),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "## Summary\n");
        let _ = writeln!(out, "| measure | figure |\n|---|---|");
        let _ = writeln!(
            out,
            "| Records (the clip at {FPS} analysed frames/s: {} analysed frames, {} with a track or event, as a node pushes by default) | {:.2} records/s per busy camera, {:.1} per 8-camera node; {} B mean as sent |",
            self.sample.analysed_frames,
            self.sample.records.len(),
            camera_rate,
            node_rate,
            median(&bytes_sent).round()
        );
        let _ = writeln!(
            out,
            "| Sustained, {} nodes x {} records, as fast as acknowledged ({} rounds): records/s | **{}** (x **{:.0}** what one 8-camera node sends; x {:.1} the {} simulated nodes at the clip's pace) |",
            self.nodes,
            self.records,
            self.rounds,
            spread(&rates, 0),
            median(&rates) / node_rate,
            median(&rates) / (node_rate * self.nodes as f64),
            self.nodes
        );
        let _ = writeln!(out, "| same, MB/s of records as sent | {} |", spread(&mbps, 2));
        let _ = writeln!(
            out,
            "| CPU per record: collector / nats-server / simulator (user + system) | **{}** / {} / {} µs |",
            spread(&collector_us, 1),
            spread(&nats_us, 1),
            spread(&simulator_us, 1)
        );
        let _ = writeln!(
            out,
            "| JetStream, stored per record (file store, subject and message id included) | {:.0} B ({:.2}x the record as sent; {} messages, {} B) |",
            stored_per_record,
            stored_per_record / median(&bytes_sent),
            messages,
            stored_bytes
        );
        let _ = writeln!(
            out,
            "| Paced: {} nodes x 8 cameras at the clip's rate for {} s ({:.0} records/s) | CPU: collector {:.1} %, nats-server {:.1} % of one core; per record **{:.0}** / {:.0} µs |",
            self.nodes,
            self.paced_seconds,
            paced_rate,
            self.paced_cpu.collector / self.paced.seconds * 100.0,
            self.paced_cpu.nats / self.paced.seconds * 100.0,
            paced_collector_us,
            paced_nats_us
        );
        let _ = writeln!(
            out,
            "| Paced: sent to acknowledged (stored in JetStream): p50 / p99 / max | {:.1} / {:.1} / {:.1} ms ({} records) |",
            ms(&self.paced.ack_lag, 0.5),
            ms(&self.paced.ack_lag, 0.99),
            ms(&self.paced.ack_lag, 1.0),
            self.paced.ack_lag.len()
        );
        let _ = writeln!(
            out,
            "| Paced: sent to received by a JetStream consumer at the centre: p50 / p99 / max | {:.1} / {:.1} / {:.1} ms ({} of {} records received) |",
            ms(self.received, 0.5),
            ms(self.received, 0.99),
            ms(self.received, 1.0),
            self.received.len(),
            self.paced.records
        );
        let _ = writeln!(out, "\n## 10,000 boxes x 8 cameras, on paper\n");
        let _ = writeln!(
            out,
            "From the figures above, every camera as busy as the clip all day (a street at night sends far less: \
             an upper bound):\n"
        );
        let _ = writeln!(out, "| | |\n|---|---|");
        let _ = writeln!(
            out,
            "| records/s into the centre | {:.0} ({:.1} MB/s, {:.1} Mbit/s, as sent) |",
            city_rate,
            city_mb_s,
            city_mb_s * 8.0
        );
        let _ = writeln!(
            out,
            "| collector CPU | {:.1} cores at the paced cost per record (records one by one, as nodes send them), {:.1} at the saturated cost (large batches): collectors of 2 cores kept at half load (1 core each): {:.0} |",
            paced_collector_cores,
            collector_cores,
            paced_collector_cores.ceil()
        );
        let _ = writeln!(
            out,
            "| nats-server CPU, one copy of each record | {:.1} cores paced, {:.1} saturated; with replicas = 3 each record is written on three servers: about {:.0} cores over the cluster, paced (an estimate: replication was not measured here) |",
            paced_nats_cores,
            nats_cores,
            paced_nats_cores * 3.0
        );
        let _ = writeln!(
            out,
            "| JetStream disk per day | {:.0} GB per copy; {:.0} GB with replicas = 3 ({:.0} GB on each of 3 servers); a week (the default max_age_hours = 168): {:.1} TB per server |",
            disk_day_gb,
            disk_day_gb * 3.0,
            disk_day_gb,
            disk_day_gb * 7.0 / 1e3
        );
        out
    }
}

fn nats_version() -> String {
    std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "nats-server".into())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(common::repo())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "Environment: {} cores; commit {commit}; load average at the end {}",
        cores,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}
