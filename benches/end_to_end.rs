//! End-to-end benchmark (`make bench`): the node analyses every frame of a 1280x720 clip (the
//! bundled sample, looped and scaled with GStreamer), and its analysed frames per second are
//! compared with an inference-only run in the same process: the same detector and embedder, on
//! the same frames and crops, with the same worker and thread settings, and nothing else. That
//! run is the physical limit of this pipeline on this machine; the ratio is what the rest of the
//! node (decoding, conversion, pre-processing, decoding outputs, tracking, gRPC) costs.
//!
//! What each side's figures are made of, kept apart:
//! - **Node.** Frames analysed: the camera's own counter (`CameraInfo.frames_analysed`). Crops
//!   embedded and seconds spent in each model: the node's `/metrics` (`retina_embedder_crops`,
//!   `retina_inference_seconds`), scraped after the clip ended and before the node stops. Time:
//!   from `Node::start` returning (models loaded and warmed up) to the receipt of the last frame's
//!   descriptor by a real gRPC subscriber.
//! - **Inference only.** Its inputs are prepared once, before any timed run, by a separate pass
//!   (the node's ingest stage decodes the clip, a separate analyzer runs the detector once per
//!   frame to find the crops and pre-processes them). That pass is neither timed nor attributed to
//!   the node; its frame and crop counts are reported as the baseline's own, next to the node's.
//!   Time: the timed loop over the prepared inputs, after a warm-up call per worker.
//!
//! The two runs alternate for several rounds in one invocation (the first run of each round
//! alternates too, so drift on a shared machine falls on both), and the ratio is reported as the
//! median of the per-round ratios with its range.
//!
//! Output: a report on stdout, also written to `benches/results/end_to_end.md`.
//!
//! Environment: RETINA_BENCH_ROUNDS (default 5) rounds of node + inference-only;
//! RETINA_BENCH_LOOPS (default 3) times the 10 s sample; RETINA_BENCH_WORKERS and
//! RETINA_BENCH_THREADS (default 1 and 2, the node's defaults) for the inference settings; RETINA_BENCH_DETECTOR, the
//! detector's manifest (default `models/nanodet-g-416.toml`; e.g. `models/nanodet-g-416-int8.toml`),
//! in which case the report goes to `benches/results/end_to_end-<model id>.md` so that the default
//! model's report stays.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/stats.rs"]
mod stats;

use stats::spread;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use retina_edge::config::Config;
use retina_edge::infer::Prepared;
use retina_edge::ingest::{self, CameraSettings, CameraStatus, FrameQueue, SourceUri};
use retina_edge::node::Models;
use retina_edge::pb;

const CAMERA: &str = "bench";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The sample looped `loops` times and scaled to 1280x720 H.264 (4:2:0, as cameras send).
fn make_clip(loops: usize) -> PathBuf {
    let sample = repo().join(".deps/media/bikes.mp4");
    assert!(sample.is_file(), "run `make deps` first");
    let clip = repo().join(format!(".deps/media/bikes_720p_x{loops}.mp4"));
    if clip.is_file() {
        return clip;
    }
    eprintln!("making {} (bikes.mp4 x{loops}, 1280x720, x264)...", clip.display());
    let mut args: Vec<String> = vec!["-q".into(), "concat".into(), "name=c".into(), "!".into()];
    args.extend(
        "videoconvert ! videoscale ! video/x-raw,format=I420,width=1280,height=720,pixel-aspect-ratio=1/1 ! \
         x264enc speed-preset=veryfast bitrate=3000 ! mp4mux ! filesink"
            .split_whitespace()
            .map(String::from),
    );
    args.push(format!("location={}.part", clip.display()));
    for _ in 0..loops {
        args.extend(
            format!(
                "filesrc location={} ! qtdemux ! h264parse ! avdec_h264 ! c.",
                sample.display()
            )
            .split_whitespace()
            .map(String::from),
        );
    }
    let status = std::process::Command::new("gst-launch-1.0")
        .args(&args)
        .status()
        .expect("gst-launch-1.0 runs");
    assert!(status.success(), "encoding the benchmark clip failed");
    std::fs::rename(format!("{}.part", clip.display()), &clip).unwrap();
    clip
}

const DEFAULT_DETECTOR: &str = "models/nanodet-g-416.toml";

fn config(clip: &Path, workers: usize, threads: usize, detector: &str) -> Config {
    // The node does not stop when the clip ends: its metrics are read first, then it is stopped.
    let toml = format!(
        r#"
[node]
id = "bench"
grpc_listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
[inference]
onnxruntime_library = ".deps/onnxruntime/libonnxruntime.so.1.32.0"
detector_manifest = "{detector}"
embedder_manifest = "models/mobilenetv2-1280.toml"
workers = {workers}
intra_op_threads = {threads}
[[cameras]]
id = "{CAMERA}"
uri = "{}"
analysis_fps = 0
realtime = false
"#,
        clip.display()
    );
    Config::parse(&toml, Path::new("bench.toml"), repo().to_path_buf()).unwrap()
}

/// `config` with a log of its own: a subscriber from the earliest record then reads this run's
/// frames only. (One log for every round made round 2's subscriber count round 1's frames too,
/// so it never saw "all delivered" and the bench hung until its 600 s deadline.)
fn with_fresh_log(config: &Config) -> Config {
    let mut config = config.clone();
    config.log.path = Some(common::fresh_log_path());
    config
}

/// One run of the node, every figure from the node itself.
struct NodeRun {
    /// `CameraInfo.frames_analysed`.
    frames: u64,
    frames_dropped: u64,
    /// Frames whose descriptor the subscriber received (distinct capture times).
    frames_received: usize,
    /// Crops the node's embedder ran on (`retina_embedder_crops` sum).
    crops: f64,
    /// Seconds the node's workers spent in each model (`retina_inference_seconds` sums).
    detector_seconds: f64,
    embedder_seconds: f64,
    tracked_objects: usize,
    seconds: f64,
    fps: f64,
    /// CPU seconds the process used over the timed span.
    cpu: f64,
}

/// One inference-only run.
struct LimitRun {
    fps: f64,
    seconds: f64,
    cpu: f64,
}

/// The value of the sample `name` (with its labels, exactly as exposed) in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The node, unchanged, with a real gRPC subscriber reading every descriptor.
async fn run_node(config: Config, detector: &str, embedder: &str, expected_frames: usize) -> NodeRun {
    let (node, mut client) = common::start_node(config).await;
    let ready = Instant::now();
    let cpu_at_ready = cpu_seconds();
    // The subscriber: distinct capture times are frames (the summaries of tracks that end when
    // the camera has fallen silent come in an extra descriptor dated at the last frame).
    let frames_received = Arc::new(AtomicUsize::new(0));
    let subscriber = {
        let mut client = client.clone();
        let frames_received = frames_received.clone();
        tokio::spawn(async move {
            let request = pb::SubscribeRequest {
                include_empty_frames: true,
                start: pb::StartPosition::Earliest as i32,
                ..Default::default()
            };
            let mut stream = client.subscribe(request).await.expect("Subscribe").into_inner();
            let (mut last_capture, mut last_frame_at, mut tracked) = (None, (ready, cpu_at_ready), 0usize);
            while let Some(d) = stream.message().await.expect("the stream ends cleanly") {
                if d.capture_time != last_capture {
                    last_capture = d.capture_time;
                    last_frame_at = (Instant::now(), cpu_seconds());
                    tracked += d.tracks.len();
                    frames_received.fetch_add(1, Ordering::SeqCst);
                }
            }
            (last_frame_at, tracked)
        })
    };
    // Wait until the clip has ended and every analysed frame has reached the subscriber. The
    // camera is STOPPED as soon as its decoder is done, while frames may still be queued for the
    // workers: done is when the count reaches the frames the clip has (`expected_frames`), or, if
    // the node analyses fewer, when it has not moved for 3 s.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_change = (u64::MAX, Instant::now());
    let info = loop {
        let info = common::camera_info(&mut client, CAMERA).await;
        if info.frames_analysed != last_change.0 {
            last_change = (info.frames_analysed, Instant::now());
        }
        let stopped = info.state == pb::CameraState::Stopped as i32;
        let delivered = info.frames_analysed == frames_received.load(Ordering::SeqCst) as u64;
        let settled =
            info.frames_analysed == expected_frames as u64 || last_change.1.elapsed() >= Duration::from_secs(3);
        if stopped && delivered && settled {
            break info;
        }
        assert!(Instant::now() < deadline, "the node did not finish the clip: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let page = common::http_get(node.metrics_addr.expect("metrics endpoint"), "/metrics").await;
    let read = |name: &str| metric(&page, name).unwrap_or_else(|| panic!("{name} not in /metrics:\n{page}"));
    let crops = read("retina_embedder_crops_sum");
    let detector_seconds = read(&format!("retina_inference_seconds_sum{{model=\"{detector}\"}}"));
    let embedder_seconds = read(&format!("retina_inference_seconds_sum{{model=\"{embedder}\"}}"));
    common::stop_node(node).await;
    let ((last_frame_at, cpu_at_last_frame), tracked_objects) = subscriber.await.expect("subscriber task");
    let seconds = last_frame_at.duration_since(ready).as_secs_f64();
    NodeRun {
        frames: info.frames_analysed,
        frames_dropped: info.frames_dropped,
        frames_received: frames_received.load(Ordering::SeqCst),
        crops,
        detector_seconds,
        embedder_seconds,
        tracked_objects,
        seconds,
        fps: info.frames_analysed as f64 / seconds,
        cpu: cpu_at_last_frame - cpu_at_ready,
    }
}

/// The baseline's preparation pass: decodes the clip with the node's own ingest stage and
/// pre-processes every frame once (running a detector of its own to find the crops). Not timed.
fn prepare_inputs(config: &Config, models: &Models) -> Vec<Prepared> {
    let camera = &config.cameras[0];
    let source = SourceUri::resolve(&camera.uri, &config.base_dir).unwrap();
    let status = Arc::new(CameraStatus::new(camera.id.clone(), CameraSettings::default()));
    let queue = FrameQueue::new(4);
    let runner = ingest::start_camera(camera, source, status, queue.clone(), ingest::Settled::default(), None).unwrap();
    let mut analyzer = models.analyzer(config).unwrap();
    let closer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            runner.join();
            queue.close();
        })
    };
    let mut prepared = Vec::new();
    while let Some((frame, _)) = queue.pop() {
        prepared.push(analyzer.prepare(&frame.image).unwrap());
    }
    closer.join().unwrap();
    prepared
}

/// The same sessions, settings and worker count, on the prepared inputs only.
fn inference_only(config: &Config, models: &Models, inputs: &[Prepared]) -> LimitRun {
    let workers = config.inference.workers;
    let mut analyzers: Vec<_> = (0..workers).map(|_| models.analyzer(config).unwrap()).collect();
    // Warm-up, as the node's analyzers are warmed up before it is ready.
    for analyzer in &mut analyzers {
        analyzer.infer_prepared(&inputs[0]).unwrap();
    }
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let cpu_started = cpu_seconds();
    std::thread::scope(|scope| {
        for mut analyzer in analyzers {
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(input) = inputs.get(i) else { break };
                    analyzer.infer_prepared(input).unwrap();
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    LimitRun {
        fps: inputs.len() as f64 / seconds,
        seconds,
        cpu: cpu_seconds() - cpu_started,
    }
}

/// CPU seconds (user + system) this process has used so far: the node runs in it too.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0, "getrusage");
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The 1-minute load average: how busy the shared machine was.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    // `cargo bench` passes `--bench`; this benchmark has no options of its own.
    let started = Instant::now();
    let rounds = env_usize("RETINA_BENCH_ROUNDS", 5).max(1);
    let loops = env_usize("RETINA_BENCH_LOOPS", 3);
    let workers = env_usize("RETINA_BENCH_WORKERS", 1);
    let threads = env_usize("RETINA_BENCH_THREADS", 2);
    let clip = make_clip(loops);
    let detector_manifest = std::env::var("RETINA_BENCH_DETECTOR").unwrap_or_else(|_| DEFAULT_DETECTOR.into());
    let config = config(&clip, workers, threads, &detector_manifest);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let models = Models::load(&config).unwrap();
    let detector = models.detector.card.id.clone();
    let embedder = models
        .embedder
        .as_ref()
        .expect("the bench config names an embedder")
        .card
        .id
        .clone();

    eprintln!("inference-only: preparing its frames and crops (decode + its own detector pass, not timed) ...");
    let preparing = Instant::now();
    // The node initialises GStreamer when it starts; this pass may come first.
    gstreamer::init().expect("GStreamer initialises");
    let inputs = prepare_inputs(&config, &models);
    assert!(!inputs.is_empty(), "the preparation pass decoded no frame");
    let prepare_seconds = preparing.elapsed().as_secs_f64();
    let baseline_crops: usize = inputs.iter().map(Prepared::crops).sum();
    eprintln!(
        "  {} frames, {baseline_crops} crops ({prepare_seconds:.0} s)",
        inputs.len()
    );

    let mut node_runs = Vec::new();
    let mut limits = Vec::new();
    let mut load_averages = Vec::new();
    for round in 0..rounds {
        load_averages.push(load_average());
        // Alternate which run goes first, so that slow drift on a shared machine falls on both.
        for node_first in [round % 2 == 0, round % 2 == 1] {
            if node_first {
                eprintln!("round {}/{rounds}: node on {} ...", round + 1, clip.display());
                let run = runtime.block_on(run_node(with_fresh_log(&config), &detector, &embedder, inputs.len()));
                eprintln!(
                    "  {:.2} frames/s ({} frames, {:.0} crops, {:.1} s, {:.1} CPU s)",
                    run.fps, run.frames, run.crops, run.seconds, run.cpu
                );
                node_runs.push(run);
            } else {
                eprintln!("round {}/{rounds}: inference only ...", round + 1);
                let run = inference_only(&config, &models, &inputs);
                eprintln!("  {:.2} frames/s ({:.1} s, {:.1} CPU s)", run.fps, run.seconds, run.cpu);
                limits.push(run);
            }
        }
    }
    let node_fps: Vec<f64> = node_runs.iter().map(|r| r.fps).collect();
    let limit_fps: Vec<f64> = limits.iter().map(|r| r.fps).collect();
    let ratios: Vec<f64> = node_fps.iter().zip(&limit_fps).map(|(n, l)| n / l).collect();
    let node_cpu_ms: Vec<f64> = node_runs.iter().map(|r| 1e3 * r.cpu / r.frames as f64).collect();
    let limit_cpu_ms: Vec<f64> = limits.iter().map(|r| 1e3 * r.cpu / inputs.len() as f64).collect();
    let cpu_ratios: Vec<f64> = limit_cpu_ms.iter().zip(&node_cpu_ms).map(|(l, n)| l / n).collect();
    let first = &node_runs[0];
    let consistent = node_runs
        .iter()
        .all(|r| r.frames == first.frames && r.crops == first.crops && r.frames_received as u64 == r.frames);
    let total_seconds = started.elapsed().as_secs_f64();

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = String::new();
    report.push_str(&format!(
        "## End-to-end benchmark\n\n`cargo bench --bench end_to_end` ({cores} cores, {workers} workers x {threads} intra-op \
         thread(s), {rounds} rounds, {total_seconds:.0} s in all). Clip: `{}` (bikes.mp4 x{loops}, 1280x720 H.264, \
         analysed at 640x360). Detector: {detector} (`{detector_manifest}`).\n\n",
        clip.file_name().unwrap_or_default().to_string_lossy()
    ));
    report.push_str(&format!(
        "| run ({workers} workers x {threads} thread) | frames | embedded crops | analysed frames/s, median (min–max) of {rounds} \
         | CPU ms per frame, median (min–max) |\n\
         |---|---:|---:|---|---|\n\
         | node: decode 720p → scale → RGB → detect → embed → track, emit, encode → gRPC | {} | {:.0} | {} | {} |\n\
         | inference only: the same sessions on its own prepared frames and crops | {} | {baseline_crops} | {} | {} |\n\
         | **ratio** (per round: node / inference only; CPU: inference only / node) | | | **{}** | {} |\n\n",
        first.frames,
        first.crops,
        spread(&node_fps, 2),
        spread(&node_cpu_ms, 1),
        inputs.len(),
        spread(&limit_fps, 2),
        spread(&limit_cpu_ms, 1),
        spread(&ratios, 3),
        spread(&cpu_ratios, 3),
    ));
    report.push_str(&format!(
        "Node figures are the node's own: frames from `CameraInfo.frames_analysed`, crops from its `/metrics` \
         (`retina_embedder_crops`), time from the node being ready (models loaded and warmed up) to the last frame's \
         descriptor at a gRPC subscriber. Inference-only figures are the baseline's own: frames its ingest pass \
         decoded and crops its own detector pass found, prepared before any timed run (that pass took {prepare_seconds:.0} s \
         and is counted on neither side). Every node run gave the same frames and crops, all delivered: {}.\n\n\
         CPU ms per frame: user + system CPU time of the whole process over the timed span (for the node that includes \
         its gRPC subscriber, in the same process), per frame. The frames/s ratio is the pipeline's share of the limit \
         only on an otherwise idle machine: on a shared one it also measures how the scheduler shares the cores, and \
         the node's process can get more of them than the inference-only loop (cores used: CPU s / wall s, per round \
         below; the node has more threads, and its workers sleep between frames, which the scheduler favours). The \
         CPU ratio does not depend on that share. Load average (1 min) at the start of the rounds: {}.\n\n",
        if consistent { "yes" } else { "**no** (see the rounds below)" },
        load_averages.iter().map(|l| format!("{l:.1}")).collect::<Vec<_>>().join(", "),
    ));
    report.push_str(
        "| round | node frames/s | node: frames (dropped), crops, s in detector / embedder, s wall, CPU s (cores used) \
         | inference only frames/s | inference only: s wall, CPU s (cores used) | ratio | CPU ratio |\n\
         |---:|---:|---|---:|---|---:|---:|\n",
    );
    for (i, (run, limit)) in node_runs.iter().zip(&limits).enumerate() {
        report.push_str(&format!(
            "| {} | {:.2} | {} ({}), {:.0}, {:.1} / {:.1}, {:.1}, {:.1} ({:.2}) | {:.2} | {:.1}, {:.1} ({:.2}) | {:.3} | {:.3} |\n",
            i + 1,
            run.fps,
            run.frames,
            run.frames_dropped,
            run.crops,
            run.detector_seconds,
            run.embedder_seconds,
            run.seconds,
            run.cpu,
            run.cpu / run.seconds,
            limit.fps,
            limit.seconds,
            limit.cpu,
            limit.cpu / limit.seconds,
            run.fps / limit.fps,
            cpu_ratios[i],
        ));
    }
    report.push_str(&format!(
        "\nOdd rounds run the node first, even rounds inference only first. Tracked objects per frame in the node's \
         descriptors: {:.1}. Seconds in a model are summed over the {workers} workers.\n",
        first.tracked_objects as f64 / first.frames.max(1) as f64
    ));
    println!("\n{report}");
    let path = if detector_manifest == DEFAULT_DETECTOR {
        repo().join("benches/results/end_to_end.md")
    } else {
        repo().join(format!("benches/results/end_to_end-{detector}.md"))
    };
    std::fs::write(&path, &report).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("report: {} ({total_seconds:.0} s)", path.display());
}
