//! The durable descriptor log as built (issue 9), measured through its real API
//! (`retina_edge::log`) and through the real node binary (`make bench-log`).
//!
//! 1. **Real descriptors.** The node runs once on the sample clip with the default describe
//!    settings (pca-int8 x128, tracks only, 5 analysed frames/s) and a subscriber collects its
//!    whole stream (EARLIEST, empty frames included, full context: exactly the records the log
//!    keeps). One descriptor per analysed frame, empty ones included, is what the node appends; the
//!    clip's last descriptor (the tracks ended when the camera stops, no frame of its own) has its
//!    events moved into the clip's last frame. "One busy camera-day" is that stream replayed for
//!    24 h at 5 frames/s (432,000 records), each pass with capture times shifted by the clip's
//!    length and track ids and sequences advanced, so that every record has the real size and
//!    shape and every track its own id.
//! 2. **Append rate.** One thread appends a camera-day through `Appender::append` as fast as the
//!    log commits it (the hand-over holds at most 15,360 records not yet committed, under the
//!    16,384 of `log.queue_records`, so nothing becomes a not-stored gap; checked), into a new log
//!    with the default config. Records/s until the last record is committed; several rounds.
//! 3. **Space.** The files of that day's log (log.sqlite + -wal), what `log.max_bytes` counts
//!    (the database's pages in use), and what the default retention therefore keeps.
//! 4. **Catch-up.** A `Subscription` from `Start::Earliest` over the day log, while the camera goes
//!    on appending at 5 records/s, until it reaches the live tail.
//! 5. **Queries.** `LogReader::select` over the day: by track, by camera and a 1-minute or 1-hour
//!    capture-time window, page 100, both orders.
//! 6. **The real load.** 16 busy cameras (80 records/s, paced) for a few seconds: commit time
//!    (`retina_log_commit_seconds`), time from `append` until the record is durable and readable
//!    (a subscription `AfterOffset(offset - 1)` per record, which reads it from the store once
//!    committed), bytes the process wrote to storage per record (`/proc/self/io`).
//! 7. **kill -9.** The release binary runs looping realtime file cameras on one log; a gRPC
//!    subscriber (LIVE, empty frames) records every offset it receives; the node is killed with
//!    SIGKILL 3-8 s after the subscriber's first descriptor and restarted on the same log, several
//!    times. Per kill: descriptors received live that the restarted node's log does not hold
//!    (Subscribe EARLIEST), and whether the new run's offsets, sequences and track ids lie past
//!    every earlier one.
//!
//! Output: a report on stdout, also written to `benches/results/log.md`. Needs the release binary
//! (`make bench-log` builds it). Scratch files under `target/bench-log`.
//!
//! Environment: RETINA_LOG_BENCH_ROUNDS (append rounds, default 5), RETINA_LOG_BENCH_READ_ROUNDS
//! (catch-up rounds, 5), RETINA_LOG_BENCH_QUERIES (queries per kind, 200),
//! RETINA_LOG_BENCH_LOAD_SECONDS (real-load phase, 10), RETINA_LOG_BENCH_KILLS (20),
//! RETINA_LOG_BENCH_KILL_CAMERAS (2), RETINA_LOG_BENCH_SEED (random kill times and queries),
//! RETINA_BIN (default target/release/retina-edge).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/stats.rs"]
mod stats;

use stats::{median, min_max, percentile, spread};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use retina_edge::config::LogConfig;
use retina_edge::log::{CameraCounters, Entry, Log, Selection, Start, Store};
use retina_edge::metrics::Metrics;
use retina_edge::pb;

const CAMERA: &str = "bench-cam";
/// What every camera analyses by default (`cameras[].analysis_fps`).
const FPS: f64 = 5.0;
const FRAME_NS: i64 = 200_000_000;
/// One camera-day at 5 analysed frames/s: one record per analysed frame.
const CAMERA_DAY: usize = 432_000;
/// "16 busy cameras".
const BUSY_CAMERAS: usize = 16;
/// Records the append phase lets the writer have outstanding: under `log.queue_records` (16,384)
/// by a margin, so that the hand-over never overflows.
const IN_FLIGHT: u64 = 15_360;
/// A live broadcast buffer as the node's default (`deliver.subscriber_buffer_frames`-like).
const LIVE_BUFFER: usize = 1024;
const GIB: f64 = (1u64 << 30) as f64;

fn repo() -> &'static Path {
    common::repo()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Small statistics and formatting helpers

/// An integer with thousands separators.
fn thousands(value: f64) -> String {
    let n = value.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// "median (min–max)" of integers, with separators.
fn spread_int(values: &[f64]) -> String {
    let (min, max) = min_max(values);
    format!("{} ({}–{})", thousands(median(values)), thousands(min), thousands(max))
}

fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Bytes this process caused to be sent to storage so far (`/proc/self/io` `write_bytes`).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn shift(t: &mut Option<prost_types::Timestamp>, ns: i64) {
    if let Some(ts) = t {
        *ts = common::timestamp(common::nanos(Some(*ts)) + ns);
    }
}

// ---------------------------------------------------------------------------------------------
// The log's own metrics

/// The value of the sample `name` (labels included, exactly as exposed) in a Prometheus page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Records stored, their encoded bytes, and records not stored, so far.
fn log_counts(metrics: &Metrics) -> (u64, u64, u64) {
    let page = metrics.encode().expect("metrics encode");
    let read = |name: &str| metric(&page, name).unwrap_or(0.0) as u64;
    (
        read("retina_log_stored_total"),
        read("retina_log_stored_bytes_total"),
        read("retina_log_unstored_total"),
    )
}

/// `retina_log_commit_seconds`: cumulative buckets (upper bound s, count), sum, count.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    fn read(metrics: &Metrics) -> Histogram {
        let page = metrics.encode().expect("metrics encode");
        let mut buckets = Vec::new();
        for line in page.lines() {
            let Some(rest) = line.strip_prefix("retina_log_commit_seconds_bucket{le=\"") else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            buckets.push((le, count.trim().parse().unwrap_or(0.0)));
        }
        Histogram {
            buckets,
            sum: metric(&page, "retina_log_commit_seconds_sum").unwrap_or(0.0),
            count: metric(&page, "retina_log_commit_seconds_count").unwrap_or(0.0),
        }
    }

    /// As Prometheus' `histogram_quantile`: linear within the bucket the quantile falls in; in
    /// seconds. Also the bucket's bounds.
    fn quantile(&self, q: f64) -> (f64, f64, f64) {
        let target = q * self.count;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= target {
                if le.is_infinite() {
                    return (lower.0, lower.0, le);
                }
                let in_bucket = cumulative - lower.1;
                let fraction = if in_bucket > 0.0 {
                    (target - lower.1) / in_bucket
                } else {
                    1.0
                };
                return (lower.0 + (le - lower.0) * fraction, lower.0, le);
            }
            lower = (le, cumulative);
        }
        (f64::NAN, f64::NAN, f64::NAN)
    }

    fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// "p50 x ms (bucket a–b ms)".
    fn describe(&self, q: f64) -> String {
        let (value, lo, hi) = self.quantile(q);
        format!("{:.1} ms (bucket {}–{} ms)", value * 1e3, lo * 1e3, hi * 1e3)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Real descriptors and the camera-day made of them

/// Every descriptor of one node run on the sample clip, default describe settings.
fn sample_stream(runtime: &tokio::runtime::Runtime) -> Vec<pb::FrameDescriptor> {
    let cameras = format!(
        "[[cameras]]\nid = \"{CAMERA}\"\nuri = \"{}\"\nanalysis_fps = {FPS:?}\nrealtime = false\n",
        common::sample_clip().display()
    );
    let config = common::parse_config(&common::config_toml(&cameras, "exit_when_cameras_end = true"));
    runtime.block_on(async {
        let (node, mut client) = common::start_node(config).await;
        let descriptors = common::collect_until_end(&mut client).await;
        node.wait().await.expect("node stops cleanly");
        descriptors
    })
}

fn track_ids_of(d: &pb::FrameDescriptor) -> impl Iterator<Item = u64> + '_ {
    d.tracks
        .iter()
        .map(|t| t.track_id)
        .chain(d.track_events.iter().map(|e| e.track_id))
        .chain(d.objects.iter().map(|o| o.track_id))
        .filter(|&id| id != 0)
}

/// One pass of the clip as the log would get it from a camera that never stops.
struct Day {
    /// One record per analysed frame of the clip.
    frames: Vec<pb::FrameDescriptor>,
    /// The clip's length: capture times advance this much per pass.
    period_ns: i64,
    /// Track ids advance this much per pass.
    track_span: u64,
    max_track: u64,
    /// Distinct track ids of one pass.
    tracks: Vec<u64>,
    first_capture_ns: i64,
    /// Descriptors the node sent for the clip, and how many were end-of-camera descriptors.
    sent: usize,
    stop_descriptors: usize,
    /// Track events of the end-of-camera descriptors, moved into the last frame's descriptor.
    moved_events: usize,
}

impl Day {
    fn new(stream: &[pb::FrameDescriptor]) -> Day {
        assert!(stream.len() >= 2, "the sample run gave {} descriptors", stream.len());
        let sequences: Vec<u64> = stream.iter().map(|d| d.sequence).collect();
        assert!(
            sequences.iter().copied().eq(0..stream.len() as u64),
            "the sample stream is not numbered 0..{} without gaps",
            stream.len()
        );
        // The descriptor sent when the camera stops repeats the last frame's capture time.
        let mut frames: Vec<pb::FrameDescriptor> = Vec::new();
        let (mut stop_descriptors, mut moved_events) = (0, 0);
        for d in stream {
            match frames.last_mut() {
                Some(last) if last.capture_time == d.capture_time && d.tracks.is_empty() => {
                    stop_descriptors += 1;
                    moved_events += d.track_events.len();
                    // A camera that goes on ends these tracks in a later frame, as lost.
                    for mut event in d.track_events.iter().cloned() {
                        if let Some(summary) = &mut event.summary
                            && summary.end_reason == pb::TrackEndReason::Stopped as i32
                        {
                            summary.end_reason = pb::TrackEndReason::Lost as i32;
                        }
                        last.track_events.push(event);
                    }
                }
                _ => frames.push(d.clone()),
            }
        }
        let times: Vec<i64> = frames.iter().map(|d| common::nanos(d.capture_time)).collect();
        let spacing = (times[times.len() - 1] - times[0]) / (times.len() as i64 - 1);
        assert!(
            (spacing - FRAME_NS).abs() < FRAME_NS / 10,
            "analysed frames {spacing} ns apart, expected {FRAME_NS}"
        );
        let tracks: BTreeSet<u64> = frames.iter().flat_map(track_ids_of).collect();
        let (min_track, max_track) = (
            tracks.first().copied().unwrap_or(1),
            tracks.last().copied().unwrap_or(1),
        );
        Day {
            period_ns: FRAME_NS * frames.len() as i64,
            track_span: max_track - min_track + 1,
            max_track,
            tracks: tracks.into_iter().collect(),
            first_capture_ns: times[0],
            sent: stream.len(),
            stop_descriptors,
            moved_events,
            frames,
        }
    }

    fn passes_per_day(&self) -> usize {
        CAMERA_DAY.div_ceil(self.frames.len())
    }

    /// The `k`th record of the camera's day (`camera`: another camera id), with the camera's
    /// counters after it.
    fn record(&self, k: usize, camera: Option<&str>) -> (pb::FrameDescriptor, CameraCounters) {
        let pass = k / self.frames.len();
        let mut d = self.frames[k % self.frames.len()].clone();
        let dt = pass as i64 * self.period_ns;
        let dtrack = pass as u64 * self.track_span;
        d.sequence = k as u64;
        if let Some(camera) = camera {
            d.camera_id = camera.to_string();
        }
        shift(&mut d.capture_time, dt);
        for t in &mut d.tracks {
            t.track_id += dtrack;
        }
        for o in d.objects.iter_mut().filter(|o| o.track_id != 0) {
            o.track_id += dtrack;
        }
        for e in &mut d.track_events {
            e.track_id += dtrack;
            if let Some(view) = &mut e.view {
                shift(&mut view.capture_time, dt);
            }
            if let Some(summary) = &mut e.summary {
                shift(&mut summary.first_seen, dt);
                shift(&mut summary.last_seen, dt);
            }
        }
        let counters = CameraCounters {
            next_sequence: k as u64 + 1,
            next_track: self.max_track + dtrack + 1,
        };
        (d, counters)
    }

    fn day_end_ns(&self) -> i64 {
        self.first_capture_ns + CAMERA_DAY as i64 * FRAME_NS
    }
}

/// What one pass of the clip is made of.
fn shape(day: &Day) -> String {
    let n = day.frames.len() as f64;
    let sizes: Vec<f64> = day.frames.iter().map(|d| d.encoded_len() as f64).collect();
    let empty: Vec<&pb::FrameDescriptor> = day
        .frames
        .iter()
        .filter(|d| d.tracks.is_empty() && d.track_events.is_empty() && d.objects.is_empty())
        .collect();
    let with_events: Vec<&pb::FrameDescriptor> = day.frames.iter().filter(|d| !d.track_events.is_empty()).collect();
    let mean_len = |ds: &[&pb::FrameDescriptor]| {
        if ds.is_empty() {
            0.0
        } else {
            ds.iter().map(|d| d.encoded_len() as f64).sum::<f64>() / ds.len() as f64
        }
    };
    let tracks: usize = day.frames.iter().map(|d| d.tracks.len()).sum();
    let mut kinds: BTreeMap<i32, usize> = BTreeMap::new();
    for e in day.frames.iter().flat_map(|d| &d.track_events) {
        *kinds.entry(e.kind).or_default() += 1;
    }
    let kind = |k: pb::TrackEventKind| kinds.get(&(k as i32)).copied().unwrap_or(0);
    let context = {
        let d = &day.frames[0];
        let mut bare = d.clone();
        bare.node_id.clear();
        bare.node_run_id = 0;
        bare.frame_width = 0;
        bare.frame_height = 0;
        bare.detector = None;
        bare.embedder = None;
        bare.camera_position = None;
        d.encoded_len() - bare.encoded_len()
    };
    format!(
        "{} analysed frames per pass of the clip ({:.0} s), {} descriptors sent by the node ({} the end-of-camera \
         descriptor, whose {} ENDED events were moved into the last frame's descriptor as LOST); {} distinct tracks. \
         Per record, encoded: mean {:.0} B, median {:.0} B, min {:.0} B, max {:.0} B. Empty frames (no track, no \
         event): {} of {} ({:.0} B each); frames with track events: {} ({:.0} B mean); track records: {:.2} per frame; \
         events per pass: {} confirmed, {} better view, {} appearance changed, {} ended. Every record carries the \
         context fields (node id, run id, frame size, models: {} B), as the log stores them.",
        day.frames.len(),
        day.period_ns as f64 / 1e9,
        day.sent,
        day.stop_descriptors,
        day.moved_events,
        day.tracks.len(),
        sizes.iter().sum::<f64>() / n,
        median(&sizes),
        min_max(&sizes).0,
        min_max(&sizes).1,
        empty.len(),
        day.frames.len(),
        mean_len(&empty),
        with_events.len(),
        mean_len(&with_events),
        tracks as f64 / n,
        kind(pb::TrackEventKind::Confirmed),
        kind(pb::TrackEventKind::BetterView),
        kind(pb::TrackEventKind::AppearanceChanged),
        kind(pb::TrackEventKind::Ended),
        context,
    )
}

// ---------------------------------------------------------------------------------------------
// 2-3. Appending a camera-day, and what it takes on disk

struct AppendRound {
    records: usize,
    seconds: f64,
    /// Time spent inside `append` (the describe thread's cost), per record.
    append_ns: f64,
    bytes: u64,
    unstored: u64,
    commits: Histogram,
    db_open: u64,
    wal_open: u64,
    used_bytes: u64,
    db_closed: u64,
    wal_closed: u64,
    close_seconds: f64,
}

/// `paced`: pause while `IN_FLIGHT` records wait for the writer; otherwise append without ever
/// pausing, as the describer does (what the hand-over cannot take becomes a not-stored gap).
/// `cameras` > 1: the records go round robin to that many cameras, each at another point of the
/// clip (`interleaved`).
fn append_day(dir: &Path, day: &Day, records: usize, paced: bool, cameras: usize) -> AppendRound {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let items: Vec<(pb::FrameDescriptor, CameraCounters)> = if cameras == 1 {
        (0..records).map(|k| day.record(k, None)).collect()
    } else {
        let ids: Vec<String> = (0..cameras).map(|i| format!("busy-{i:02}")).collect();
        (0..records).map(|i| interleaved(day, &ids, i)).collect()
    };
    let path = dir.join("log.sqlite");
    let metrics = Metrics::new(Default::default());
    let (log, mut appender) = Log::open(&path, &LogConfig::default(), LIVE_BUFFER, metrics.clone()).expect("log opens");
    let started = Instant::now();
    let mut in_append = Duration::ZERO;
    let mut appended = 0u64;
    let mut items = items.into_iter();
    loop {
        let t = Instant::now();
        for (d, c) in items.by_ref().take(256) {
            appender.append(d, c);
            appended += 1;
        }
        in_append += t.elapsed();
        if appended == records as u64 {
            break;
        }
        if paced {
            loop {
                let (stored, _, unstored) = log_counts(&metrics);
                if appended - stored - unstored < IN_FLIGHT {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let (bytes, unstored) = loop {
        let (stored, bytes, unstored) = log_counts(&metrics);
        if stored + unstored >= records as u64 {
            break (bytes, unstored);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let seconds = started.elapsed().as_secs_f64();
    let commits = Histogram::read(&metrics);
    let used_bytes = Store::open_reader(&path)
        .and_then(|s| s.used_bytes())
        .expect("used bytes");
    let (db_open, wal_open) = (file_len(&path), file_len(&with_suffix(&path, "-wal")));
    drop(appender);
    let closing = Instant::now();
    log.close();
    let close_seconds = closing.elapsed().as_secs_f64();
    AppendRound {
        records,
        seconds,
        append_ns: in_append.as_nanos() as f64 / records as f64,
        bytes,
        unstored,
        commits,
        db_open,
        wal_open,
        used_bytes,
        db_closed: file_len(&path),
        wal_closed: file_len(&with_suffix(&path, "-wal")),
        close_seconds,
    }
}

// ---------------------------------------------------------------------------------------------
// 4-5. Reading the day back: catch-up and queries

struct CatchUp {
    records: u64,
    bytes: u64,
    gaps: u64,
    seconds: f64,
}

impl CatchUp {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

async fn catch_up(log: &Log) -> CatchUp {
    let reader = log.reader();
    let started = Instant::now();
    let mut subscription = reader.subscribe(Start::Earliest).await.expect("subscribe EARLIEST");
    let (mut records, mut bytes, mut gaps) = (0u64, 0u64, 0u64);
    loop {
        match subscription.next().await.expect("the subscription reads") {
            Some(Entry::Descriptor(d)) => {
                records += 1;
                bytes += d.encoded_len() as u64;
                if d.offset + 1 >= reader.next_offset() {
                    break;
                }
            }
            Some(Entry::Gap(_)) => gaps += 1,
            None => break,
        }
    }
    CatchUp {
        records,
        bytes,
        gaps,
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[derive(Clone, Copy)]
enum QueryKind {
    Track,
    Window(i64),
}

struct QueryStats {
    label: String,
    ms: Vec<f64>,
    rows: Vec<f64>,
}

async fn queries(log: &Log, day: &Day, per_kind: usize, rng: &mut fastrand::Rng) -> Vec<QueryStats> {
    let reader = log.reader();
    let kinds = [
        ("track id", QueryKind::Track),
        ("camera + 1 min window", QueryKind::Window(60)),
        ("camera + 1 h window", QueryKind::Window(3600)),
    ];
    let mut out = Vec::new();
    for (label, kind) in kinds {
        for newest_first in [false, true] {
            let mut stats = QueryStats {
                label: format!(
                    "{label}, {}",
                    if newest_first { "newest first" } else { "oldest first" }
                ),
                ms: Vec::new(),
                rows: Vec::new(),
            };
            for _ in 0..per_kind {
                let selection = match kind {
                    QueryKind::Track => {
                        let pass = rng.usize(..day.passes_per_day()) as u64;
                        let track = day.tracks[rng.usize(..day.tracks.len())] + pass * day.track_span;
                        Selection {
                            track_id: Some(track),
                            newest_first,
                            ..Selection::default()
                        }
                    }
                    QueryKind::Window(seconds) => {
                        let width = seconds * 1_000_000_000;
                        let from = rng.i64(day.first_capture_ns..day.day_end_ns() - width);
                        Selection {
                            camera_id: Some(CAMERA.into()),
                            from_ns: Some(from),
                            to_ns: Some(from + width),
                            newest_first,
                            ..Selection::default()
                        }
                    }
                };
                let started = Instant::now();
                let rows = reader.select(selection, None, 100).await.expect("query");
                stats.ms.push(started.elapsed().as_secs_f64() * 1e3);
                stats.rows.push(rows.len() as f64);
            }
            out.push(stats);
        }
    }
    out
}

struct ReadPhase {
    open_seconds: f64,
    catch_ups: Vec<CatchUp>,
    queries: Vec<QueryStats>,
    appended_meanwhile: usize,
}

/// Opens the day log again (as a restarted node would), the camera appending on at 5 records/s,
/// and reads it: catch-ups from EARLIEST, then queries.
fn read_day(
    runtime: &tokio::runtime::Runtime,
    path: &Path,
    day: Arc<Day>,
    rounds: usize,
    per_kind: usize,
    rng: &mut fastrand::Rng,
) -> ReadPhase {
    let opening = Instant::now();
    let (log, mut appender) = Log::open(
        path,
        &LogConfig::default(),
        LIVE_BUFFER,
        Metrics::new(Default::default()),
    )
    .expect("day log opens");
    let open_seconds = opening.elapsed().as_secs_f64();
    let stop = Arc::new(AtomicBool::new(false));
    let camera = {
        let (stop, day) = (stop.clone(), day.clone());
        std::thread::spawn(move || {
            let mut k = CAMERA_DAY;
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let (d, c) = day.record(k, None);
                appender.append(d, c);
                k += 1;
                let next = started + Duration::from_secs_f64((k - CAMERA_DAY) as f64 / FPS);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            k - CAMERA_DAY
        })
    };
    let (catch_ups, queries) = runtime.block_on(async {
        let mut catch_ups = Vec::new();
        for round in 0..rounds {
            let c = catch_up(&log).await;
            eprintln!(
                "  catch-up {}: {} records in {:.2} s ({:.0}/s)",
                round + 1,
                c.records,
                c.seconds,
                c.rate()
            );
            catch_ups.push(c);
        }
        (catch_ups, queries(&log, &day, per_kind, rng).await)
    });
    stop.store(true, Ordering::SeqCst);
    let appended_meanwhile = camera.join().expect("camera thread");
    log.close();
    ReadPhase {
        open_seconds,
        catch_ups,
        queries,
        appended_meanwhile,
    }
}

// ---------------------------------------------------------------------------------------------
// 6. The real load: 16 busy cameras

struct LoadPhase {
    records: usize,
    seconds: f64,
    commits: Histogram,
    /// append -> durable and readable from the store, ms.
    durable_ms: Vec<f64>,
    written: u64,
    written_at_close: u64,
    bytes: u64,
    unstored: u64,
    /// log.sqlite-wal at the end of the run, before close.
    wal_bytes: u64,
}

/// The `i`th record of cameras taking turns, each at another point of the clip, so that every
/// second mixes empty and busy frames.
fn interleaved(day: &Day, cameras: &[String], i: usize) -> (pb::FrameDescriptor, CameraCounters) {
    let camera = i % cameras.len();
    let k = i / cameras.len() + camera * day.frames.len() / cameras.len();
    day.record(k, Some(&cameras[camera]))
}

fn busy_cameras(runtime: &tokio::runtime::Runtime, dir: &Path, day: &Day, seconds: usize) -> LoadPhase {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("log.sqlite");
    let metrics = Metrics::new(Default::default());
    let (log, mut appender) = Log::open(&path, &LogConfig::default(), LIVE_BUFFER, metrics.clone()).expect("log opens");
    let reader = log.reader();
    let cameras: Vec<String> = (0..BUSY_CAMERAS).map(|i| format!("busy-{i:02}")).collect();
    let rate = FPS * BUSY_CAMERAS as f64;
    let records = (rate * seconds as f64) as usize;
    let written_before = written_bytes();
    let started = Instant::now();
    let mut probes = Vec::with_capacity(records);
    for i in 0..records {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let (d, c) = interleaved(day, &cameras, i);
        let appended = Instant::now();
        let offset = reader.next_offset();
        appender.append(d, c);
        if offset == 0 {
            continue;
        }
        let reader = reader.clone();
        probes.push(runtime.spawn(async move {
            let mut subscription = reader.subscribe(Start::AfterOffset(offset - 1)).await.ok()?;
            match subscription.next().await {
                Ok(Some(Entry::Descriptor(d))) if d.offset == offset => Some(appended.elapsed().as_secs_f64() * 1e3),
                _ => None,
            }
        }));
    }
    let durable_ms: Vec<f64> = runtime
        .block_on(async {
            let mut out = Vec::new();
            for probe in probes {
                out.push(probe.await.expect("probe task"));
            }
            out
        })
        .into_iter()
        .flatten()
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    let (_, bytes, unstored) = log_counts(&metrics);
    let commits = Histogram::read(&metrics);
    let written = written_bytes() - written_before;
    let wal_bytes = file_len(&with_suffix(&path, "-wal"));
    drop(appender);
    log.close();
    LoadPhase {
        wal_bytes,
        records,
        seconds,
        commits,
        durable_ms,
        written,
        written_at_close: written_bytes() - written_before,
        bytes,
        unstored,
    }
}

// ---------------------------------------------------------------------------------------------
// 7. kill -9 of the real node

/// What a subscriber keeps of each descriptor.
#[derive(Debug, Clone)]
struct Seen {
    offset: u64,
    run: u64,
    camera: String,
    sequence: u64,
    /// Lowest and highest track id the descriptor mentions (0: none).
    min_track: u64,
    max_track: u64,
    at: Instant,
}

impl Seen {
    fn of(d: &pb::FrameDescriptor) -> Seen {
        Seen {
            offset: d.offset,
            run: d.node_run_id,
            camera: d.camera_id.clone(),
            sequence: d.sequence,
            min_track: track_ids_of(d).min().unwrap_or(0),
            max_track: track_ids_of(d).max().unwrap_or(0),
            at: Instant::now(),
        }
    }
}

/// One run of the node between two kills.
struct Run {
    run_id: u64,
    live: Vec<Seen>,
    /// Spawn to gRPC up, spawn to the first live descriptor.
    ready_seconds: f64,
    first_seconds: f64,
    killed_at: Option<Instant>,
    killed_after: f64,
    /// Descriptors of earlier runs read back from this run's log (EARLIEST) when it started, and
    /// the first descriptor of this run in that read.
    read_back: Vec<Seen>,
    gap_notices: Vec<(u64, u64, i32)>,
    crash_warning: bool,
}

struct KillPhase {
    cameras: usize,
    runs: Vec<Run>,
}

fn spawn_node(bin: &Path, config: &Path, log_file: &Path) -> common::KillOnDrop {
    let out = std::fs::File::create(log_file).unwrap();
    let err = out.try_clone().unwrap();
    let child = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    common::KillOnDrop::new(child)
}

async fn connect(child: &mut common::KillOnDrop, addr: &str, log_file: &Path) -> common::Client {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the node exited ({status}) before serving: {}",
                std::fs::read_to_string(log_file).unwrap_or_default()
            );
        }
        if let Ok(client) = pb::retina_client::RetinaClient::connect(addr.to_string()).await {
            return client;
        }
        assert!(Instant::now() < deadline, "the node did not serve gRPC within 180 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn request(start: pb::StartPosition, name: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        include_empty_frames: true,
        full_context: true,
        start: start as i32,
        subscriber_name: name.into(),
        ..Default::default()
    }
}

fn kill_runs(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    bin: &Path,
    cameras: usize,
    kills: usize,
    rng: &mut fastrand::Rng,
) -> KillPhase {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let port = common::free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut camera_toml = format!("[log]\npath = \"{}\"\n\n", dir.join("log.sqlite").display());
    for i in 0..cameras {
        camera_toml.push_str(&format!(
            "[[cameras]]\nid = \"kill-cam-{i}\"\nuri = \"{}\"\nanalysis_fps = {FPS:?}\nloop_file = true\n\n",
            common::sample_clip().display()
        ));
    }
    let text = common::config_toml(&camera_toml, "").replace(
        "grpc_listen = \"127.0.0.1:0\"",
        &format!("grpc_listen = \"127.0.0.1:{port}\""),
    );
    assert!(
        text.contains(&format!(":{port}\"")),
        "config_toml's grpc_listen line changed"
    );
    let config = dir.join("node.toml");
    std::fs::write(&config, text).unwrap();
    let mut runs: Vec<Run> = Vec::new();
    runtime.block_on(async {
        for i in 0..=kills {
            let log_file = dir.join(format!("node-{i}.log"));
            let spawned = Instant::now();
            let mut child = spawn_node(bin, &config, &log_file);
            let client = connect(&mut child, &addr, &log_file).await;
            let ready_seconds = spawned.elapsed().as_secs_f64();
            let live: Arc<Mutex<Vec<Seen>>> = Arc::default();
            let subscriber = {
                let (mut client, live) = (client.clone(), live.clone());
                tokio::spawn(async move {
                    let mut stream = client
                        .subscribe(request(pb::StartPosition::Live, "bench-live"))
                        .await
                        .expect("Subscribe LIVE")
                        .into_inner();
                    // Ends with an error when the node is killed, OK when it stops.
                    while let Ok(Some(d)) = stream.message().await {
                        live.lock().unwrap().push(Seen::of(&d));
                    }
                })
            };
            // What the log kept of the earlier runs, up to this run's first descriptor.
            let earlier: HashSet<u64> = runs.iter().map(|r| r.run_id).collect();
            let (mut read_back, mut gap_notices) = (Vec::new(), Vec::new());
            if i > 0 {
                let mut client = client.clone();
                let mut stream = client
                    .subscribe(request(pb::StartPosition::Earliest, "bench-read-back"))
                    .await
                    .expect("Subscribe EARLIEST")
                    .into_inner();
                loop {
                    let d = tokio::time::timeout(Duration::from_secs(60), stream.message())
                        .await
                        .expect("read-back: a descriptor within 60 s")
                        .expect("read-back stream")
                        .expect("read-back stream goes on");
                    if let Some(gap) = &d.gap {
                        gap_notices.push((gap.first_offset, gap.last_offset, gap.reason));
                        continue;
                    }
                    let seen = Seen::of(&d);
                    let new_run = !earlier.contains(&seen.run);
                    read_back.push(seen);
                    if new_run {
                        break;
                    }
                }
            }
            // Wait for the first live descriptor: the subscriber is attached.
            let deadline = Instant::now() + Duration::from_secs(120);
            while live.lock().unwrap().is_empty() {
                assert!(Instant::now() < deadline, "no live descriptor within 120 s of run {i}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let first_seconds = spawned.elapsed().as_secs_f64();
            let (killed_at, killed_after) = if i < kills {
                let wait = 3.0 + 5.0 * rng.f64();
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                let at = Instant::now();
                child.kill().expect("kill -9");
                child.wait().expect("reap");
                (Some(at), wait)
            } else {
                // The last run stops cleanly.
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let status = child.wait().expect("reap");
                assert!(status.success(), "the last run did not stop cleanly: {status}");
                (None, 0.0)
            };
            let _ = tokio::time::timeout(Duration::from_secs(30), subscriber).await;
            let live = std::mem::take(&mut *live.lock().unwrap());
            let node_log = std::fs::read_to_string(&log_file).unwrap_or_default();
            let run = Run {
                run_id: live[0].run,
                live,
                ready_seconds,
                first_seconds,
                killed_at,
                killed_after,
                read_back,
                gap_notices,
                crash_warning: node_log.contains("was not closed by its last run"),
            };
            eprintln!(
                "  run {i}: gRPC after {:.1} s, first live descriptor after {:.1} s, {} received live{}; read back {} earlier, {} gap notices",
                run.ready_seconds,
                run.first_seconds,
                run.live.len(),
                if killed_at.is_some() {
                    format!(", killed after {:.1} s", run.killed_after)
                } else {
                    ", stopped cleanly".into()
                },
                run.read_back.len().saturating_sub(1),
                run.gap_notices.len(),
            );
            runs.push(run);
        }
    });
    KillPhase { cameras, runs }
}

/// The outcome of one kill, from the run killed and the run after it.
struct KillOutcome {
    received: usize,
    stored_of_run: usize,
    lost: Vec<Seen>,
    lost_per_camera_max: usize,
    /// Age of each lost descriptor at the kill (since the subscriber received it), ms.
    lost_age_ms: Vec<f64>,
    /// Age of the last descriptor received before the kill, ms.
    last_age_ms: f64,
    /// Age at the kill of the youngest descriptor received live that the log kept, ms.
    youngest_kept_ms: f64,
    committed_not_received: usize,
    offsets_skip_ahead: bool,
    offset_skip: u64,
    sequences_skip_ahead: bool,
    tracks_skip_ahead: bool,
    gap_notices: usize,
    crash_warning: bool,
    killed_after: f64,
}

fn outcomes(phase: &KillPhase) -> Vec<KillOutcome> {
    let mut out = Vec::new();
    for (i, pair) in phase.runs.windows(2).enumerate() {
        let (killed, next) = (&pair[0], &pair[1]);
        let stored: HashSet<u64> = next
            .read_back
            .iter()
            .filter(|s| s.run == killed.run_id)
            .map(|s| s.offset)
            .collect();
        let received: HashSet<u64> = killed.live.iter().map(|s| s.offset).collect();
        let killed_at = killed.killed_at.expect("a killed run");
        let lost: Vec<Seen> = killed
            .live
            .iter()
            .filter(|s| !stored.contains(&s.offset))
            .cloned()
            .collect();
        let mut per_camera: HashMap<&str, usize> = HashMap::new();
        for s in &lost {
            *per_camera.entry(&s.camera).or_default() += 1;
        }
        let max_received = killed.live.iter().map(|s| s.offset).max().unwrap_or(0);
        // Everything seen of every run up to the killed one, live or from a log.
        let earlier: Vec<&Seen> = phase.runs[..=i]
            .iter()
            .flat_map(|r| r.live.iter())
            .chain(next.read_back.iter().filter(|s| s.run != next.run_id))
            .collect();
        let new_run: Vec<&Seen> = next
            .live
            .iter()
            .chain(next.read_back.iter().filter(|s| s.run == next.run_id))
            .collect();
        let max_earlier = earlier.iter().map(|s| s.offset).max().unwrap_or(0);
        let first_new = new_run.iter().map(|s| s.offset).min().unwrap_or(0);
        let per_camera_max = |seen: &[&Seen], value: fn(&Seen) -> u64| {
            let mut m: HashMap<String, u64> = HashMap::new();
            for s in seen {
                let v = m.entry(s.camera.clone()).or_default();
                *v = (*v).max(value(s));
            }
            m
        };
        let per_camera_min_new = |value: fn(&Seen) -> u64| {
            let mut m: HashMap<String, u64> = HashMap::new();
            for s in &new_run {
                let v = value(s);
                if v == 0 {
                    continue;
                }
                let e = m.entry(s.camera.clone()).or_insert(u64::MAX);
                *e = (*e).min(v);
            }
            m
        };
        let skips = |value: fn(&Seen) -> u64, new_value: fn(&Seen) -> u64| {
            let before = per_camera_max(&earlier, value);
            per_camera_min_new(new_value)
                .iter()
                .all(|(camera, &first)| before.get(camera).is_none_or(|&b| first > b))
        };
        out.push(KillOutcome {
            received: killed.live.len(),
            stored_of_run: stored.len(),
            lost_per_camera_max: per_camera.values().copied().max().unwrap_or(0),
            lost_age_ms: lost
                .iter()
                .map(|s| killed_at.saturating_duration_since(s.at).as_secs_f64() * 1e3)
                .collect(),
            last_age_ms: killed.live.last().map_or(f64::NAN, |s| {
                killed_at.saturating_duration_since(s.at).as_secs_f64() * 1e3
            }),
            youngest_kept_ms: killed
                .live
                .iter()
                .filter(|s| stored.contains(&s.offset))
                .map(|s| killed_at.saturating_duration_since(s.at).as_secs_f64() * 1e3)
                .fold(f64::INFINITY, f64::min),
            lost,
            committed_not_received: stored
                .iter()
                .filter(|&&o| o > max_received && !received.contains(&o))
                .count(),
            offsets_skip_ahead: first_new > max_earlier,
            offset_skip: first_new.saturating_sub(max_earlier + 1),
            sequences_skip_ahead: skips(|s| s.sequence, |s| s.sequence),
            tracks_skip_ahead: skips(|s| s.max_track, |s| s.min_track),
            gap_notices: next.gap_notices.len(),
            crash_warning: next.crash_warning,
            killed_after: killed.killed_after,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; this benchmark has no options of its own.
    let started = Instant::now();
    let rounds = env_usize("RETINA_LOG_BENCH_ROUNDS", 5).max(1);
    let read_rounds = env_usize("RETINA_LOG_BENCH_READ_ROUNDS", 5).max(1);
    let per_kind = env_usize("RETINA_LOG_BENCH_QUERIES", 200).max(1);
    let load_seconds = env_usize("RETINA_LOG_BENCH_LOAD_SECONDS", 10).max(1);
    let kills = env_usize("RETINA_LOG_BENCH_KILLS", 20);
    let kill_cameras = env_usize("RETINA_LOG_BENCH_KILL_CAMERAS", 2).max(1);
    let seed = std::env::var("RETINA_LOG_BENCH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    let mut rng = fastrand::Rng::with_seed(seed);
    let bin = std::env::var_os("RETINA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/retina-edge"));
    assert!(
        bin.is_file() || kills == 0,
        "{} is missing: run `cargo build --release` (make bench-log does)",
        bin.display()
    );
    let work = repo().join("target/bench-log");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let uncommitted: Vec<String> = command_output("git", &["status", "--porcelain"])
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|f| !f.starts_with("benches/results/"))
        .map(String::from)
        .collect();
    let environment = format!(
        "{} UTC; {} cores ({}); {}; {}; commit {}{}; filesystem of the logs: {}; load average at start {}; seed {seed}",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l
                .strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
            .unwrap_or_else(|| "?".into()),
        command_output("uname", &["-sr"]),
        command_output("rustc", &["-V"]),
        commit,
        if uncommitted.is_empty() {
            String::new()
        } else {
            format!(" with uncommitted {}", uncommitted.join(", "))
        },
        command_output("df", &["--output=fstype", work.to_str().unwrap()])
            .lines()
            .last()
            .unwrap_or("?")
            .trim(),
        load_average(),
    );
    eprintln!("{environment}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 1.
    eprintln!("1. the node on the sample clip (default describe settings, 5 frames/s) ...");
    let t = Instant::now();
    let stream = sample_stream(&runtime);
    let day = Arc::new(Day::new(&stream));
    let sample_seconds = t.elapsed().as_secs_f64();
    let shape = shape(&day);
    eprintln!("  {} descriptors ({sample_seconds:.0} s); {shape}", stream.len());
    assert!(
        day.passes_per_day() as u64 * day.track_span < (1 << 24) - day.max_track % (1 << 24),
        "a day of track ids does not fit the tracker's 24-bit counter"
    );

    // 2-3.
    eprintln!("2. appending one camera-day ({CAMERA_DAY} records), {rounds} rounds ...");
    let mut appends = Vec::new();
    for round in 0..rounds {
        let dir = work.join(format!("append-{round}"));
        let r = append_day(&dir, &day, CAMERA_DAY, true, 1);
        eprintln!(
            "  round {}: {:.0} records/s, {:.2} MB/s, {} commits, {} unstored; {} + {} bytes open, used {}",
            round + 1,
            r.records as f64 / r.seconds,
            mb(r.bytes as f64) / r.seconds,
            r.commits.count,
            r.unstored,
            r.db_open,
            r.wal_open,
            r.used_bytes
        );
        assert_eq!(r.unstored, 0, "the append phase overflowed the hand-over");
        if round + 1 < rounds {
            let _ = std::fs::remove_dir_all(&dir);
        }
        appends.push(r);
    }
    let day_log = work.join(format!("append-{}", rounds - 1)).join("log.sqlite");
    eprintln!("   and once without pausing ...");
    let unpaced = append_day(&work.join("unpaced"), &day, CAMERA_DAY, false, 1);
    let _ = std::fs::remove_dir_all(work.join("unpaced"));
    eprintln!("   and {CAMERA_DAY} records of {BUSY_CAMERAS} cameras taking turns ...");
    let sixteen = append_day(&work.join("sixteen"), &day, CAMERA_DAY, true, BUSY_CAMERAS);
    let _ = std::fs::remove_dir_all(work.join("sixteen"));
    eprintln!(
        "  {:.0} records/s, used {} bytes ({:.0} per record)",
        sixteen.records as f64 / sixteen.seconds,
        sixteen.used_bytes,
        sixteen.used_bytes as f64 / CAMERA_DAY as f64
    );
    assert_eq!(sixteen.unstored, 0, "the append phase overflowed the hand-over");
    eprintln!(
        "  {:.0} appends/s, {} stored, {} not stored",
        1e9 / unpaced.append_ns,
        CAMERA_DAY as u64 - unpaced.unstored,
        unpaced.unstored
    );

    // 4-5.
    eprintln!("3. reading the day back: {read_rounds} catch-ups from EARLIEST, {per_kind} queries per kind ...");
    let reads = read_day(&runtime, &day_log, day.clone(), read_rounds, per_kind, &mut rng);

    // 6.
    eprintln!("4. {BUSY_CAMERAS} busy cameras for {load_seconds} s ...");
    let load = busy_cameras(&runtime, &work.join("busy"), &day, load_seconds);
    eprintln!(
        "  {} records, commit p50 {}, durable p50 {:.1} ms",
        load.records,
        load.commits.describe(0.5),
        median(&load.durable_ms)
    );

    // 7.
    let kill_phase = if kills > 0 {
        eprintln!(
            "5. kill -9: {kills} kills of {} with {kill_cameras} looping realtime cameras ...",
            bin.display()
        );
        Some(kill_runs(
            &runtime,
            &work.join("kill"),
            &bin,
            kill_cameras,
            kills,
            &mut rng,
        ))
    } else {
        None
    };
    let total_seconds = started.elapsed().as_secs_f64();

    // -----------------------------------------------------------------------------------------
    // Report
    let day_bytes_mean = appends[0].bytes as f64 / CAMERA_DAY as f64;
    let rates: Vec<f64> = appends.iter().map(|r| r.records as f64 / r.seconds).collect();
    let mbps: Vec<f64> = appends.iter().map(|r| mb(r.bytes as f64) / r.seconds).collect();
    let busy_rate = FPS * BUSY_CAMERAS as f64;
    let ratios: Vec<f64> = rates.iter().map(|r| r / busy_rate).collect();
    let append_ns: Vec<f64> = appends.iter().map(|r| r.append_ns).collect();
    let commit_p50: Vec<f64> = appends.iter().map(|r| r.commits.quantile(0.5).0 * 1e3).collect();
    let commit_p99: Vec<f64> = appends.iter().map(|r| r.commits.quantile(0.99).0 * 1e3).collect();
    let commit_mean: Vec<f64> = appends.iter().map(|r| r.commits.mean() * 1e3).collect();
    let batch: Vec<f64> = appends.iter().map(|r| r.records as f64 / r.commits.count).collect();
    let files_open: Vec<f64> = appends.iter().map(|r| (r.db_open + r.wal_open) as f64).collect();
    let used: Vec<f64> = appends.iter().map(|r| r.used_bytes as f64).collect();
    let closed: Vec<f64> = appends.iter().map(|r| (r.db_closed + r.wal_closed) as f64).collect();
    let used_day = median(&used);
    let used_per_record = used_day / CAMERA_DAY as f64;
    let config = LogConfig::default();
    let max_bytes = config.max_bytes as f64;
    let age_days = config.max_age_hours / 24.0;
    // A log of 16 cameras taking turns writes its (camera, time) index in 16 places, not at its
    // end; measured apart (`sixteen`: a camera-day's worth of records) rather than assumed equal.
    let used_day_16 = sixteen.used_bytes as f64;
    let keeps = |camera_day: f64, cameras: f64| {
        let by_bytes = max_bytes / (camera_day * cameras);
        let by_bytes_low = 0.9 * by_bytes;
        let days = by_bytes.min(age_days);
        (
            by_bytes_low,
            by_bytes,
            days,
            if by_bytes < age_days {
                "max_bytes"
            } else {
                "max_age_hours"
            },
        )
    };
    let (k1_low, k1_high, k1, k1_limit) = keeps(used_day, 1.0);
    let (k16_low, k16_high, k16, k16_limit) = keeps(used_day_16, BUSY_CAMERAS as f64);
    let read_rates: Vec<f64> = reads.catch_ups.iter().map(CatchUp::rate).collect();
    let read_mbps: Vec<f64> = reads.catch_ups.iter().map(|c| mb(c.bytes as f64) / c.seconds).collect();
    let read_seconds: Vec<f64> = reads.catch_ups.iter().map(|c| c.seconds).collect();
    let read_gaps: u64 = reads.catch_ups.iter().map(|c| c.gaps).sum();
    let db_mb = mb(file_len(&day_log) as f64);

    let mut r = String::new();
    r.push_str("# The durable descriptor log, as built (issue 9): `make bench-log`\n\n");
    r.push_str(&format!(
        "`benches/log.rs` (harness = false) with the real `retina_edge::log` API and the real node binary. \
         Environment: {environment}. Total run: {total_seconds:.0} s. Run under `nice -n 19` on the shared 2-core VM \
         while other work was going on: absolute rates are noisy; rounds are given as median (min–max).\n\n"
    ));
    r.push_str(&format!(
        "Rounds used: {rounds} append rounds of one camera-day each, {read_rounds} catch-up rounds, {per_kind} \
         queries per kind (6 kinds), {load_seconds} s of 16 busy cameras, {kills} kills with {kill_cameras} cameras.\n\n"
    ));
    r.push_str("## Summary\n\n| measure | figure |\n|---|---|\n");
    r.push_str(&format!(
        "| Record (real descriptor, pca-int8 x128, tracks only, context included) | {:.0} B encoded, mean over the day |\n",
        day_bytes_mean
    ));
    r.push_str(&format!(
        "| Append, group commit (100 ms), one thread, until committed: records/s | **{}** (x **{}** what 16 busy cameras produce, {busy_rate:.0} records/s) |\n",
        spread_int(&rates),
        spread_int(&ratios),
    ));
    r.push_str(&format!("| same, MB/s of encoded records | {} |\n", spread(&mbps, 1)));
    r.push_str(&format!(
        "| `append` on the describe thread (never waits) | {} ns per record |\n",
        spread(&append_ns, 0)
    ));
    r.push_str(&format!(
        "| The same day appended without ever pausing: appends/s; stored, not stored (gaps) | {} appends/s; {} stored, {} not stored |\n",
        thousands(1e9 / unpaced.append_ns),
        thousands((CAMERA_DAY as u64 - unpaced.unstored) as f64),
        thousands(unpaced.unstored as f64),
    ));
    r.push_str(&format!(
        "| Commit time at saturation (`retina_log_commit_seconds`, ~{:.0} records per commit): p50 / p99 | {} / {} ms |\n",
        median(&batch),
        spread(&commit_p50, 0),
        spread(&commit_p99, 0),
    ));
    r.push_str(&format!(
        "| Commit time at the real load (16 cameras, 80 records/s, ~{:.0} records per commit): p50 / p99 | {} / {} |\n",
        load.records as f64 / load.commits.count,
        load.commits.describe(0.5),
        load.commits.describe(0.99),
    ));
    r.push_str(&format!(
        "| Append to durable and readable, real load: p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |\n",
        median(&load.durable_ms),
        percentile(&load.durable_ms, 0.99),
        min_max(&load.durable_ms).1
    ));
    r.push_str(&format!(
        "| Bytes written to storage per record, real load (x record) | {} B ({:.0}x) |\n",
        thousands(load.written_at_close as f64 / load.records as f64),
        load.written_at_close as f64 / load.bytes.max(1) as f64,
    ));
    r.push_str(&format!(
        "| On disk per camera-day (pages in use, what `max_bytes` counts) | **{:.1} MB**, {:.0} B per record ({:.2}x the record) |\n",
        mb(used_day),
        used_per_record,
        used_per_record / day_bytes_mean
    ));
    r.push_str(&format!(
        "| same, in a log of 16 cameras taking turns (432,000 records of 16 cameras) | {:.1} MB per camera-day, {:.0} B per record ({:.2}x the 1-camera log) |\n",
        mb(used_day_16),
        used_day_16 / CAMERA_DAY as f64,
        used_day_16 / used_day,
    ));
    r.push_str(&format!(
        "| Files after the day: log.sqlite + -wal while open / after close | {:.1} MB / {:.1} MB |\n",
        mb(median(&files_open)),
        mb(median(&closed))
    ));
    r.push_str(&format!(
        "| Default retention (2 GiB, 168 h) keeps, 1 busy camera | {k1:.1} days (bound: {k1_limit}; bytes alone would keep {k1_low:.1}–{k1_high:.1} days) |\n"
    ));
    r.push_str(&format!(
        "| same, 16 busy cameras | **{k16:.2} days** = {:.0} h (bound: {k16_limit}; {:.0}–{:.0} h as eviction goes down to 90 % of max_bytes) |\n",
        k16 * 24.0,
        k16_low * 24.0,
        k16_high * 24.0
    ));
    r.push_str(&format!(
        "| Catch-up from EARLIEST over the day to the live tail: records/s | **{}** ({} MB/s; a camera-day in {} s) |\n",
        spread_int(&read_rates),
        spread(&read_mbps, 0),
        spread(&read_seconds, 2),
    ));
    r.push_str(&format!(
        "| Reopen the day log (`Log::open`, incl. `PRAGMA quick_check`) | {:.0} ms for {db_mb:.0} MB (~{:.1} s per GiB if linear) |\n",
        reads.open_seconds * 1e3,
        reads.open_seconds / (db_mb * 1e6 / GIB)
    ));
    for q in &reads.queries {
        r.push_str(&format!(
            "| Query over the day, {}, page 100: p50 / p99 | {:.2} / {:.2} ms ({:.0} rows mean) |\n",
            q.label,
            median(&q.ms),
            percentile(&q.ms, 0.99),
            q.rows.iter().sum::<f64>() / q.rows.len() as f64
        ));
    }
    let kill_outcomes = kill_phase.as_ref().map(outcomes);
    if let (Some(phase), Some(outs)) = (&kill_phase, &kill_outcomes) {
        let lost: Vec<usize> = outs.iter().map(|o| o.lost.len()).collect();
        let mut histogram: BTreeMap<usize, usize> = BTreeMap::new();
        for &l in &lost {
            *histogram.entry(l).or_default() += 1;
        }
        r.push_str(&format!(
            "| kill -9 ({} kills, {} cameras at 5 fps): descriptors received live but not in the log after restart | {} in all; per kill: {} ; at most {} of one camera in a kill; lost ones reached the subscriber ≤ {:.0} ms before the kill, the youngest kept one {:.0} ms before (documented window: 1 commit interval, 100 ms: ≤ 1 per camera at an even 5 fps) |\n",
            outs.len(),
            phase.cameras,
            lost.iter().sum::<usize>(),
            histogram
                .iter()
                .map(|(l, n)| format!("{l} lost x{n}"))
                .collect::<Vec<_>>()
                .join(", "),
            outs.iter().map(|o| o.lost_per_camera_max).max().unwrap_or(0),
            outs.iter()
                .flat_map(|o| o.lost_age_ms.iter().copied())
                .fold(0.0, f64::max),
            outs.iter().map(|o| o.youngest_kept_ms).fold(f64::INFINITY, f64::min),
        ));
        r.push_str(&format!(
            "| kill -9: each restart's offsets / sequences / track ids past every earlier one | {}/{} / {}/{} / {}/{} |\n",
            outs.iter().filter(|o| o.offsets_skip_ahead).count(),
            outs.len(),
            outs.iter().filter(|o| o.sequences_skip_ahead).count(),
            outs.len(),
            outs.iter().filter(|o| o.tracks_skip_ahead).count(),
            outs.len(),
        ));
    }

    // Details.
    r.push_str("\n## 1. Records\n\n");
    r.push_str(&format!(
        "One node run on `.deps/media/bikes.mp4` (default `[describe]`: pca-int8 x128, tracks only; `analysis_fps = 5`, \
         `realtime = false`; `exit_when_cameras_end`), its stream collected as `tests/common::collect_until_end` does \
         (EARLIEST, include_empty_frames, full_context: the records as the log keeps them). {shape}\n\n\
         The camera-day: that pass replayed {} times (432,000 records = 24 h x 5 analysed frames/s: the node appends \
         one record per analysed frame, empty frames included; end-of-camera descriptors do not occur in a camera that \
         never stops), capture times shifted by {:.0} s per pass, track ids advanced by {} per pass (same high bits, as \
         one node run), sequences 0..431,999, camera counters with every record.\n",
        day.passes_per_day(),
        day.period_ns as f64 / 1e9,
        day.track_span,
    ));

    r.push_str("\n## 2-3. Append rate and space\n\n");
    r.push_str(&format!(
        "Each round: a new log with `LogConfig::default()` (WAL, synchronous=FULL, commit every 100 ms, 16,384 records \
         of hand-over), one thread calling `Appender::append` for the whole camera-day, pausing only while 15,360 \
         records are handed over and not yet committed (so the hand-over never overflows: 0 not-stored in every round), \
         timed until the writer has committed the last record (`retina_log_stored`). Commit times from the log's \
         `retina_log_commit_seconds` histogram (buckets 0.5, 1, 2, 4, ... ms; quantiles interpolated within a bucket \
         as Prometheus does). Space: `log.sqlite` and `log.sqlite-wal` once everything is committed (log open) and \
         after `Log::close` (SQLite checkpoints and removes the WAL); \"used\" is the database's pages in use \
         (`Store::used_bytes`), which `log.max_bytes` is compared with. The WAL of a log written flat out grows by up to \
         one large commit past SQLite's 1,000-page autocheckpoint (at the real load, section 6, it was {:.1} MB).\n\n",
        mb(load.wal_bytes as f64)
    ));
    r.push_str(
        "| round | records/s | x 16 cameras | MB/s | append ns/record | commits | records/commit | commit p50 / p99 / mean ms | log.sqlite + -wal open MB | used MB | after close MB | close ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|\n",
    );
    for (i, a) in appends.iter().enumerate() {
        r.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} / {:.0} | {:.1} + {:.1} | {:.1} | {:.1} | {:.0} |\n",
            i + 1,
            thousands(rates[i]),
            thousands(ratios[i]),
            mbps[i],
            a.append_ns,
            a.commits.count,
            batch[i],
            commit_p50[i],
            commit_p99[i],
            commit_mean[i],
            mb(a.db_open as f64),
            mb(a.wal_open as f64),
            mb(a.used_bytes as f64),
            mb((a.db_closed + a.wal_closed) as f64),
            a.close_seconds * 1e3,
        ));
    }
    r.push_str(&format!(
        "\nWithout pausing (the describer never waits for the log): the whole day handed to `append` in {:.2} s \
         ({} appends/s, {:.0} ns each); the writer took {} records in {:.2} s and {} became not-stored gaps (the \
         hand-over holds 16,384). At a camera's real rate the hand-over never fills (section 6).\n",
        unpaced.append_ns * CAMERA_DAY as f64 / 1e9,
        thousands(1e9 / unpaced.append_ns),
        unpaced.append_ns,
        thousands((CAMERA_DAY as u64 - unpaced.unstored) as f64),
        unpaced.seconds,
        thousands(unpaced.unstored as f64),
    ));
    r.push_str(&format!(
        "\nRetention with the defaults (`max_bytes` = 2 GiB = {:.0} MB, `max_age_hours` = 168 = 7 days; eviction by \
         bytes starts above 2 GiB of used pages and goes down to 90 %; by age it follows the write time): a camera-day \
         uses {:.1} MB, so 2 GiB holds {k1_high:.1} camera-days. One busy camera: {:.1} days kept (the age limit binds; \
         a week is {:.2} GB). In a log of 16 cameras taking turns a camera-day takes {:.1} MB ({:.0} B per record, \
         measured on 432,000 records of 16 interleaved cameras appended the same way, camera ids of 7 characters \
         instead of 9), so 16 busy cameras fill {:.2} GB a day: {k16_low:.2}–{k16_high:.2} \
         days are kept ({:.0}–{:.0} h), bytes bind. The file itself stays near its peak (freed pages are reused, not \
         returned).\n",
        mb(max_bytes),
        mb(used_day),
        k1,
        used_day * age_days / 1e9,
        mb(used_day_16),
        used_day_16 / CAMERA_DAY as f64,
        used_day_16 * BUSY_CAMERAS as f64 / 1e9,
        k16_low * 24.0,
        k16_high * 24.0,
    ));

    r.push_str("\n## 4. Catch-up read\n\n");
    r.push_str(&format!(
        "The last round's day log reopened with `Log::open` ({:.0} ms, including SQLite's `quick_check` of the \
         {db_mb:.0} MB file), the camera appending on at 5 records/s ({} records during the reads). Each round: \
         `LogReader::subscribe(Start::Earliest)`, `Subscription::next()` until the record read is the last one \
         appended (the live tail); records decoded (`Entry::Descriptor`). Page cache warm (the log was just \
         written; no cache drop on a shared machine): a cold read is bounded by the disk. Gap entries: {read_gaps}.\n\n\
         | round | records | s | records/s | MB/s |\n|---:|---:|---:|---:|---:|\n",
        reads.open_seconds * 1e3,
        reads.appended_meanwhile,
    ));
    for (i, c) in reads.catch_ups.iter().enumerate() {
        r.push_str(&format!(
            "| {} | {} | {:.2} | {} | {:.1} |\n",
            i + 1,
            thousands(c.records as f64),
            c.seconds,
            thousands(c.rate()),
            mb(c.bytes as f64) / c.seconds
        ));
    }
    r.push_str(&format!(
        "\nA node-day of 16 busy cameras ({} records) at the median rate: {:.0} s.\n",
        thousands((CAMERA_DAY * BUSY_CAMERAS) as f64),
        (CAMERA_DAY * BUSY_CAMERAS) as f64 / median(&read_rates)
    ));

    r.push_str("\n## 5. Queries\n\n");
    r.push_str(&format!(
        "`LogReader::select(selection, None, 100)` on the day log (one camera, {} records; warm cache), one at a time, \
         {per_kind} per kind: a random track of the day (`Selection.track_id`), or the camera and a random 1-minute \
         (300 records) or 1-hour (18,000 records) capture-time window; the first page of 100, records decoded. Time \
         includes the hand-off to a blocking thread and the read permit.\n\n\
         | query | p50 ms | p99 ms | max ms | rows per page (mean) |\n|---|---:|---:|---:|---:|\n",
        thousands(CAMERA_DAY as f64),
    ));
    for q in &reads.queries {
        r.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            q.label,
            median(&q.ms),
            percentile(&q.ms, 0.99),
            min_max(&q.ms).1,
            q.rows.iter().sum::<f64>() / q.rows.len() as f64
        ));
    }

    r.push_str("\n## 6. The real load: 16 busy cameras\n\n");
    r.push_str(&format!(
        "A new log, default config; {} records appended at 80 records/s (16 cameras x 5, round robin, paced from one \
         thread) for {:.1} s. After each `append`, a subscription `AfterOffset(offset - 1)` waits for that record: it \
         reads it from the store once the writer has committed it, so its latency is append → durable (fsynced) and \
         readable. {} probes answered of {}. Not stored: {}.\n\n\
         - commit time (`retina_log_commit_seconds`, {:.0} commits, {:.1} records each): p50 {}, p99 {}, mean {:.1} ms\n\
         - append → durable and readable: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, min {:.1} ms (the writer \
         waits one commit interval, 100 ms, after the first record of a group, then commits)\n\
         - bytes the process wrote to storage (`/proc/self/io` write_bytes): {:.2} MB during the run, {:.2} MB including \
         the checkpoint at close: {} B per record, {:.0}x the {:.0} B records ({:.1} GB a day at this rate)\n",
        load.records,
        load.seconds,
        load.durable_ms.len(),
        load.records - 1,
        load.unstored,
        load.commits.count,
        load.records as f64 / load.commits.count,
        load.commits.describe(0.5),
        load.commits.describe(0.99),
        load.commits.mean() * 1e3,
        median(&load.durable_ms),
        percentile(&load.durable_ms, 0.99),
        min_max(&load.durable_ms).1,
        min_max(&load.durable_ms).0,
        mb(load.written as f64),
        mb(load.written_at_close as f64),
        thousands(load.written_at_close as f64 / load.records as f64),
        load.written_at_close as f64 / load.bytes.max(1) as f64,
        load.bytes as f64 / load.records as f64,
        load.written_at_close as f64 / load.seconds * 86_400.0 / 1e9,
    ));

    r.push_str("\n## 7. kill -9\n\n");
    match (&kill_phase, &kill_outcomes) {
        (Some(phase), Some(outs)) => {
            r.push_str(&format!(
                "`{}` (release) with {} cameras, each the sample clip looping in real time (`loop_file = true`, \
                 `analysis_fps = 5`, `realtime = true`: {} records/s in all), default `[log]` except its path, gRPC on a \
                 fixed loopback port. A subscriber in this process (Subscribe LIVE, include_empty_frames, full_context) \
                 records every descriptor it receives and when. 3-8 s (uniform) after its first descriptor the node \
                 gets SIGKILL; it is restarted on the same log, and a subscriber reads the log from EARLIEST up to the \
                 new run's first descriptor. Lost = received live, not in the log after the restart. The documented \
                 window: a record is on disk at most `commit_interval_ms` (100 ms) after it was produced; at 5 fps a \
                 camera produces one record per 200 ms, so at most 1 record per camera ({} per kill here) may be lost as long as a camera's records come \
                 evenly (under a CPU backlog the describer can append two frames of one camera within 100 ms).\n\n\
                 | kill | after s | received live | of that run in the log | lost | lost: camera/sequence, age at kill (ms since received) | youngest kept: age at kill, ms | last received, ms before kill | committed, not yet received | offset skip on restart | offsets / sequences / track ids past all earlier | gap notices | crash noticed at open |\n\
                 |---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---|\n",
                bin.strip_prefix(repo()).unwrap_or(&bin).display(),
                phase.cameras,
                phase.cameras as f64 * FPS,
                phase.cameras,
            ));
            for (i, o) in outs.iter().enumerate() {
                r.push_str(&format!(
                    "| {} | {:.1} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} / {} / {} | {} | {} |\n",
                    i + 1,
                    o.killed_after,
                    o.received,
                    o.stored_of_run,
                    o.lost.len(),
                    if o.lost.is_empty() {
                        "–".to_string()
                    } else {
                        o.lost
                            .iter()
                            .zip(&o.lost_age_ms)
                            .map(|(s, a)| format!("{}/{} {a:.0}", s.camera, s.sequence))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    o.youngest_kept_ms,
                    o.last_age_ms,
                    o.committed_not_received,
                    thousands(o.offset_skip as f64),
                    if o.offsets_skip_ahead { "yes" } else { "**no**" },
                    if o.sequences_skip_ahead { "yes" } else { "**no**" },
                    if o.tracks_skip_ahead { "yes" } else { "**no**" },
                    o.gap_notices,
                    if o.crash_warning { "yes" } else { "no" },
                ));
            }
            let ages: Vec<f64> = outs.iter().flat_map(|o| o.lost_age_ms.iter().copied()).collect();
            let kept: Vec<f64> = outs.iter().map(|o| o.youngest_kept_ms).collect();
            let ready: Vec<f64> = phase.runs.iter().map(|r| r.ready_seconds).collect();
            let first: Vec<f64> = phase.runs.iter().map(|r| r.first_seconds).collect();
            let lost_total: usize = outs.iter().map(|o| o.lost.len()).sum();
            r.push_str(&format!(
                "\n{lost_total} descriptors lost in {} kills ({} camera-kills, {} kills lost any): {:.2} per camera-kill. \
                 Every lost descriptor had reached the subscriber at most {:.0} ms before the kill; the youngest one \
                 kept, {:.0} ms before its kill. {} a group is committed 100 ms (plus the commit) \
                 after its first record, not after each record, and ages are taken at the subscriber, after \
                 gRPC delivery (tens of ms on this loaded box), so they understate the time since `append`. A record is \
                 lost only if the kill falls between its receipt and its group's commit: about half of each camera's \
                 200 ms frame interval, and the cameras here run in step, so a kill mostly loses both or neither. \
                 The restarted node was serving gRPC {} s after spawn and sent its first descriptor {} s after spawn \
                 (models load and warm up). \"Offset skip\" is how far the new run's first offset lies past the last \
                 earlier one seen (live or in the log): 2^24 (`CRASH_SKIP`) less what was handed out after the last \
                 commit, plus what the new run appended before its first stored record. Gap notices in the read from \
                 EARLIEST after the restarts: {} in all{}.\n",
                outs.len(),
                outs.len() * phase.cameras,
                outs.iter().filter(|o| !o.lost.is_empty()).count(),
                lost_total as f64 / (outs.len() * phase.cameras) as f64,
                min_max(&ages).1.max(0.0),
                min_max(&kept).0,
                if min_max(&ages).1 >= min_max(&kept).0 {
                    "The two overlap because"
                } else {
                    "The boundary is near 100 ms, not exactly at it:"
                },
                spread(&ready, 1),
                spread(&first, 1),
                outs.iter().map(|o| o.gap_notices).sum::<usize>(),
                if lost_total > 0 && outs.iter().all(|o| o.gap_notices == 0) {
                    " (the lost offsets are not announced as a gap: the restarted log does not know they were handed out)"
                } else {
                    ""
                },
            ));
        }
        _ => r.push_str("Not run (RETINA_LOG_BENCH_KILLS = 0).\n"),
    }
    r.push_str(&format!(
        "\nLoad average at the end: {}. Scratch files: `target/bench-log` (removed at the next run).\n",
        load_average()
    ));

    println!("\n{r}");
    let path = repo().join("benches/results/log.md");
    std::fs::write(&path, &r).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("report: {} ({total_seconds:.0} s)", path.display());
}
