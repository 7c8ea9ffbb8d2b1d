//! How many cameras one box serves (`make bench-cameras`): the release node, unchanged, runs N
//! camera-like 720p25 H.264 streams (`scripts/bench-clip.sh`: files looped and paced like cameras)
//! at `analysis_fps` each, for N = 1, 2, 4, 8, 12, 16, one node run per N. After a warm-up, over a
//! measuring window, it reports per N:
//! - analysed frames/s per camera (the camera's `retina_camera_frames_analysed`), median and range
//!   over the cameras, and frames dropped because inference was busy (`inference_busy`);
//! - frames decoded per camera per second (`retina_camera_frames_decoded`);
//! - the node process's CPU (user + system, from `/proc/<pid>/stat`) in cores;
//! - its resident memory (`VmRSS`) at the end of the window and the highest seen in it;
//! - capture to subscriber latency: a real gRPC subscriber reads every descriptor live, and each
//!   frame's delay is its receipt time minus its capture time (both on this machine's clock).
//!
//! Then the latency of a live camera: a real RTSP camera on loopback (gst-rtsp-server, as in the
//! tests) serving the sample clip at 10 frames/s with its capture times in RTCP sender reports
//! (the host's clock), every frame analysed, one subscriber; each frame's delay from its capture
//! to its receipt, against the node's own inference time per frame in the same window.
//!
//! Output: a report on stdout, `benches/results/cameras.md`, and a plot
//! `benches/results/cameras.png` (scripts/plot_cameras.py).
//!
//! Environment: RETINA_BENCH_CAMERAS (default "1 2 4 8 12 16"), RETINA_BENCH_FPS (default 2),
//! RETINA_BENCH_WARMUP and RETINA_BENCH_WINDOW (seconds, default 15 and 30),
//! RETINA_BENCH_DETECTOR (a detector manifest, default models/nanodet-g-416.toml),
//! RETINA_BENCH_INFERENCE (TOML lines added to `[inference]`, e.g. `workers = 2`), and
//! RETINA_BENCH_CAMERA_EXTRA (TOML lines added to every camera, e.g. `decoder_threads = 0`), and
//! RETINA_BENCH_LATENCY_WINDOW (seconds of the RTSP latency run, default 30; 0 skips it), and
//! RETINA_BENCH_REPORT (where the report goes instead of `benches/results/cameras.md`, with no
//! plot: a soak, say, without overwriting the scaling curve).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/stats.rs"]
mod stats;

use stats::{min_max, percentile, spread};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use retina_edge::pb;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bench_clip() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(common::repo().join("scripts/bench-clip.sh"))
        .output()
        .expect("bash scripts/bench-clip.sh");
    assert!(out.status.success(), "scripts/bench-clip.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `[[cameras]]` sections for `cameras` file cameras looping `clip` at `fps` analysed frames/s.
fn file_cameras(clip: &Path, cameras: usize, fps: f64) -> String {
    let extra = env_or("RETINA_BENCH_CAMERA_EXTRA", "");
    (0..cameras)
        .map(|i| {
            format!(
                "[[cameras]]\nid = \"cam{i:02}\"\nuri = \"{}\"\nanalysis_fps = {fps}\nloop_file = true\nrealtime = true\n{extra}\n\n",
                clip.display()
            )
        })
        .collect()
}

fn config(dir: &Path, cameras: &str, grpc: u16, metrics: u16) -> PathBuf {
    let repo = common::repo();
    let detector = env_or("RETINA_BENCH_DETECTOR", "models/nanodet-g-416.toml");
    let text = format!(
        "[node]\nid = \"bench\"\ngrpc_listen = \"127.0.0.1:{grpc}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\n\
         [inference]\nonnxruntime_library = \"{ort}\"\ndetector_manifest = \"{repo}/{detector}\"\n\
         embedder_manifest = \"{repo}/models/mobilenetv2-1280.toml\"\n\
         embed_classes = [\"person\", \"bicycle\", \"car\", \"motorcycle\", \"bus\", \"truck\"]\n\n\
         {inference}\n\n[log]\npath = \"{log}\"\n\n",
        ort = common::ort_library().display(),
        repo = repo.display(),
        log = dir.join("log.sqlite").display(),
        inference = env_or("RETINA_BENCH_INFERENCE", ""),
    );
    let text = text + cameras;
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("writing the bench config");
    path
}

/// Per-camera counters from a metrics page: `name{camera="cam00"...}` -> value, summed over the
/// other labels that match `filter`.
fn per_camera(page: &HashMap<String, f64>, name: &str, filter: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (key, value) in page {
        let Some(labels) = key.strip_prefix(name).and_then(|k| k.strip_prefix('{')) else {
            continue;
        };
        if !labels.contains(filter) {
            continue;
        }
        if let Some(camera) = labels.split("camera=\"").nth(1).and_then(|rest| rest.split('"').next()) {
            *out.entry(camera.to_string()).or_default() += value;
        }
    }
    out
}

struct Point {
    cameras: usize,
    analysed_fps: Vec<f64>,
    busy_drops: Vec<f64>,
    decoded_fps: Vec<f64>,
    cpu_cores: f64,
    /// At the window's start: with the end, the growth over the window (a soak, when long).
    rss_start_mb: f64,
    rss_end_mb: f64,
    rss_peak_mb: f64,
    latencies_ms: Vec<f64>,
    /// Of those, frames whose capture time was the camera's own (RTCP sender reports).
    camera_clock_frames: usize,
    /// The node's mean inference time per analysed frame (detector and embedder) in the window.
    inference_ms: f64,
    load: String,
}

async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    common::metric_values(&common::http_get(addr, "/metrics").await)
}

fn measure(camera_sections: &str, cameras: usize, warmup: Duration, window: Duration) -> Point {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (grpc, metrics_port) = (common::free_port(), common::free_port());
    let config = config(dir.path(), camera_sections, grpc, metrics_port);
    let log_file = dir.path().join("node.log");
    let bin = common::repo().join("target/release/retina-edge");
    let out = std::fs::File::create(&log_file).expect("node log file");
    let child = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(out.try_clone().expect("log file handle"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run `make build` first)", bin.display()));
    let mut child = common::KillOnDrop::new(child);
    let pid = child.id();
    let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");

    // Started: every camera has had a frame analysed.
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the node exited ({status}): {}",
                std::fs::read_to_string(&log_file).unwrap_or_default()
            );
        }
        let ready = std::net::TcpStream::connect(metrics_addr).is_ok()
            && per_camera(
                &runtime.block_on(scrape(metrics_addr)),
                "retina_camera_frames_analysed_total",
                "",
            )
            .values()
            .filter(|&&n| n > 0.0)
            .count()
                == cameras;
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "cameras did not start within 180 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(warmup);

    // A live subscriber for the window: capture to receipt of every analysed frame.
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let camera_clock_frames = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let subscriber = {
        let latencies = latencies.clone();
        let camera_clock_frames = camera_clock_frames.clone();
        runtime.spawn(async move {
            let mut client = common::connect(&format!("127.0.0.1:{grpc}")).await;
            let request = pb::SubscribeRequest {
                include_empty_frames: true,
                subscriber_name: "bench".into(),
                ..Default::default()
            };
            let Ok(response) = client.subscribe(request).await else {
                return;
            };
            let mut stream = response.into_inner();
            while let Ok(Some(descriptor)) = stream.message().await {
                let received = retina_edge::clock::now_unix_nanos();
                if descriptor.gap.is_none()
                    && descriptor
                        .track_events
                        .iter()
                        .all(|e| e.kind() != pb::TrackEventKind::Ended)
                {
                    let delay = (received - common::nanos(descriptor.capture_time)) as f64 / 1e6;
                    latencies.lock().unwrap_or_else(|p| p.into_inner()).push(delay);
                    if descriptor.time_source == pb::TimeSource::CameraNtp as i32 {
                        camera_clock_frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let before = runtime.block_on(scrape(metrics_addr));
    let (cpu_before, t_before) = (cpu_seconds(pid), Instant::now());
    let load = load_average();
    let rss_start = common::rss_kib(pid);
    let mut rss_peak = 0u64;
    while t_before.elapsed() < window {
        rss_peak = rss_peak.max(common::rss_kib(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = runtime.block_on(scrape(metrics_addr));
    let (cpu_after, seconds) = (cpu_seconds(pid), t_before.elapsed().as_secs_f64());
    let rss_end = common::rss_kib(pid);
    subscriber.abort();
    let latencies_ms = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));

    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();

    let rate = |name: &str, filter: &str| -> Vec<f64> {
        let (a, b) = (per_camera(&before, name, filter), per_camera(&after, name, filter));
        let mut rates: Vec<f64> = b
            .iter()
            .map(|(c, v)| (v - a.get(c).copied().unwrap_or(0.0)) / seconds)
            .collect();
        rates.sort_by(f64::total_cmp);
        rates
    };
    let delta = |name: &str| after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
    let detector = env_or("RETINA_BENCH_DETECTOR", "models/nanodet-g-416.toml");
    let detector_id = Path::new(&detector)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let inference_seconds = delta(&format!("retina_inference_seconds_sum{{model=\"{detector_id}\"}}"))
        + delta("retina_inference_seconds_sum{model=\"mobilenetv2-1280\"}");
    let frames = delta(&format!("retina_inference_seconds_count{{model=\"{detector_id}\"}}"));
    Point {
        cameras,
        camera_clock_frames: camera_clock_frames.load(std::sync::atomic::Ordering::Relaxed),
        inference_ms: inference_seconds * 1000.0 / frames.max(1.0),
        analysed_fps: rate("retina_camera_frames_analysed_total", ""),
        busy_drops: rate("retina_camera_frames_dropped_total", "reason=\"inference_busy\""),
        decoded_fps: rate("retina_camera_frames_decoded_total", ""),
        cpu_cores: (cpu_after - cpu_before) / seconds,
        rss_start_mb: rss_start as f64 / 1024.0,
        rss_end_mb: rss_end as f64 / 1024.0,
        rss_peak_mb: rss_peak.max(rss_end) as f64 / 1024.0,
        latencies_ms,
        load,
    }
}

/// The sample clip at 10 frames/s (a camera's common low rate), cached beside it.
fn ten_fps_clip() -> PathBuf {
    let sample = common::sample_clip();
    let clip = sample.with_file_name("bikes-10fps.mp4");
    if !clip.is_file() {
        let tmp = clip.with_extension("tmp.mp4");
        let pipeline = format!(
            "filesrc location={} ! qtdemux ! h264parse ! avdec_h264 ! videorate ! video/x-raw,framerate=10/1 ! \
             videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=faster bitrate=1500 ! h264parse ! mp4mux ! \
             filesink location={}",
            sample.display(),
            tmp.display()
        );
        let status = std::process::Command::new("gst-launch-1.0")
            .arg("-q")
            .args(pipeline.split_whitespace())
            .status()
            .expect("gst-launch-1.0");
        assert!(status.success(), "making the 10 fps clip failed");
        std::fs::rename(&tmp, &clip).expect("renaming the 10 fps clip");
    }
    clip
}

/// One live RTSP camera at 10 frames/s, every frame analysed.
fn rtsp_latency(warmup: Duration, window: Duration) -> Point {
    let camera = common::rtsp::TestCamera::start_with_clock_ahead(&ten_fps_clip(), Duration::ZERO);
    let section = format!(
        "[[cameras]]\nid = \"rtsp\"\nuri = \"{}\"\nanalysis_fps = 0\n\n",
        camera.uri()
    );
    measure(&section, 1, warmup, window)
}

fn main() {
    // `cargo bench` passes --bench; nothing else is expected.
    let counts: Vec<usize> = env_or("RETINA_BENCH_CAMERAS", "1 2 4 8 12 16")
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let fps = env_f64("RETINA_BENCH_FPS", 2.0);
    let warmup = Duration::from_secs_f64(env_f64("RETINA_BENCH_WARMUP", 15.0));
    let window = Duration::from_secs_f64(env_f64("RETINA_BENCH_WINDOW", 30.0));
    let clip = bench_clip();
    let extra = env_or("RETINA_BENCH_CAMERA_EXTRA", "");
    let detector = env_or("RETINA_BENCH_DETECTOR", "models/nanodet-g-416.toml");

    let mut points = Vec::new();
    for &n in &counts {
        eprintln!("{n} camera(s): warm-up {warmup:?}, window {window:?}...");
        let point = measure(&file_cameras(&clip, n, fps), n, warmup, window);
        eprintln!(
            "  analysed {} /s per camera, busy drops {} /s, CPU {:.2} cores, RSS {:.0} MB, latency p50 {:.0} ms p99 {:.0} ms",
            spread(&point.analysed_fps, 2),
            spread(&point.busy_drops, 2),
            point.cpu_cores,
            point.rss_end_mb,
            percentile(&point.latencies_ms, 0.5),
            percentile(&point.latencies_ms, 0.99),
        );
        points.push(point);
    }

    let mut report = format!(
        "# Cameras per box (`make bench-cameras`)\n\n\
         N cameras, each `{}` (1280x720 H.264 at 25 fps, 2 s GOP, looped and paced like a camera), \
         `analysis_fps = {fps}`; the release node with its default settings{}; detector `{detector}`. \
         One node run per N: {:.0} s warm-up, then a {:.0} s window. Machine: {} cores, load average \
         at each window's start in the last column.\n\n\
         | cameras | analysed frames/s per camera, median (min–max) | `inference_busy` drops/s per camera | decoded frames/s per camera | CPU, cores | RSS, MB at the window's start → end (peak) | capture → subscriber, ms p50 / p99 (frames) | load |\n\
         |---:|---:|---:|---:|---:|---:|---:|---|\n",
        clip.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
        if extra.is_empty() {
            String::new()
        } else {
            format!(" plus `{}` per camera", extra.replace('\n', "; "))
        },
        warmup.as_secs_f64(),
        window.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for p in &points {
        report += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.0} → {:.0} ({:.0}) | {:.0} / {:.0} ({}) | {} |\n",
            p.cameras,
            spread(&p.analysed_fps, 2),
            spread(&p.busy_drops, 2),
            spread(&p.decoded_fps, 1),
            p.cpu_cores,
            p.rss_start_mb,
            p.rss_end_mb,
            p.rss_peak_mb,
            percentile(&p.latencies_ms, 0.5),
            percentile(&p.latencies_ms, 0.99),
            p.latencies_ms.len(),
            p.load,
        );
    }
    let latency_window = Duration::from_secs_f64(env_f64("RETINA_BENCH_LATENCY_WINDOW", 30.0));
    if !latency_window.is_zero() {
        eprintln!("RTSP camera at 10 fps: warm-up {warmup:?}, window {latency_window:?}...");
        let live = rtsp_latency(warmup, latency_window);
        let (p50, p99) = (
            percentile(&live.latencies_ms, 0.5),
            percentile(&live.latencies_ms, 0.99),
        );
        report += &format!(
            "\n## Latency of a live camera\n\n\
             One RTSP camera on loopback (gst-rtsp-server, `x264enc tune=zerolatency`, the sample clip at 10 \
             frames/s), capture times from its RTCP sender reports, every frame analysed, one live subscriber; \
             {:.0} s window after {:.0} s of warm-up, load {}.\n\n\
             | frames received | with the camera's capture time | capture → subscriber p50 | p99 | max | \
             the node's inference per frame (mean) | p99 − inference |\n\
             |---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {p50:.0} ms | {p99:.0} ms | {:.0} ms | {:.1} ms | {:.0} ms |\n",
            latency_window.as_secs_f64(),
            warmup.as_secs_f64(),
            live.load,
            live.latencies_ms.len(),
            live.camera_clock_frames,
            min_max(&live.latencies_ms).1,
            live.inference_ms,
            p99 - live.inference_ms,
        );
        eprintln!(
            "  p50 {p50:.0} ms, p99 {p99:.0} ms, inference {:.1} ms",
            live.inference_ms
        );
    }
    println!("{report}");
    let results = common::repo().join("benches/results");
    if let Ok(path) = std::env::var("RETINA_BENCH_REPORT") {
        std::fs::write(common::repo().join(&path), &report).expect("writing the report");
        return;
    }
    std::fs::write(results.join("cameras.md"), &report).expect("writing benches/results/cameras.md");

    let json: Vec<serde_json::Value> = points
        .iter()
        .map(|p| {
            serde_json::json!({
                "cameras": p.cameras,
                "analysed_fps": p.analysed_fps,
                "cpu_cores": p.cpu_cores,
                "rss_mb": p.rss_end_mb,
                "latency_p50_ms": percentile(&p.latencies_ms, 0.5),
                "latency_p99_ms": percentile(&p.latencies_ms, 0.99),
                "fps": fps,
            })
        })
        .collect();
    let data = common::repo().join("target/bench-cameras.json");
    std::fs::write(&data, serde_json::to_string_pretty(&json).unwrap_or_default()).expect("writing the plot data");
    let python = common::repo().join(".deps/python/bin/python");
    let plotted = std::process::Command::new(&python)
        .arg(common::repo().join("scripts/plot_cameras.py"))
        .arg(&data)
        .arg(results.join("cameras.png"))
        .status();
    if !plotted.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("plotting failed: {plotted:?}");
    }
}
