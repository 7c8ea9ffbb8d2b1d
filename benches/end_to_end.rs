//! End-to-end benchmark (`make bench`): the node analyses every frame of a 1280x720 clip (the
//! bundled sample, looped and scaled with GStreamer), and its analysed frames per second are
//! compared with an inference-only run in the same process: the same detector and embedder, on
//! the same frames and crops, with the same worker and thread settings, and nothing else. That
//! run is the physical limit of this pipeline on this machine; the ratio is what the rest of the
//! node (decoding, conversion, pre-processing, decoding outputs, gRPC) costs.
//!
//! Environment: RETINA_BENCH_LOOPS (default 3) times the 10 s sample; RETINA_BENCH_WORKERS and
//! RETINA_BENCH_THREADS (default 2 and 1) for the inference settings.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use retina_edge::config::Config;
use retina_edge::infer::Prepared;
use retina_edge::ingest::{self, CameraSettings, CameraStatus, FrameQueue, SourceUri};
use retina_edge::node::Models;

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

fn config(clip: &Path, workers: usize, threads: usize) -> Config {
    let toml = format!(
        r#"
[node]
id = "bench"
grpc_listen = "127.0.0.1:0"
exit_when_cameras_end = true
[inference]
onnxruntime_library = ".deps/onnxruntime/libonnxruntime.so.1.32.0"
detector_manifest = "models/nanodet-g-416.toml"
embedder_manifest = "models/mobilenetv2-1280.toml"
workers = {workers}
intra_op_threads = {threads}
[deliver]
replay_frames = 100000
[[cameras]]
id = "bench"
uri = "{}"
analysis_fps = 0
realtime = false
"#,
        clip.display()
    );
    Config::parse(&toml, Path::new("bench.toml"), repo().to_path_buf()).unwrap()
}

struct NodeRun {
    frames: usize,
    fps: f64,
    objects: usize,
}

/// The node, unchanged, with a real gRPC subscriber; fps over the span of capture-to-delivery.
async fn run_node(config: Config) -> NodeRun {
    let started = Instant::now();
    let (node, mut client) = common::start_node(config).await;
    let ready = started.elapsed();
    let descriptors = common::collect_until_end(&mut client).await;
    // The last descriptor only ends the tracks still open when the node stops: not a frame.
    let frames = descriptors.len().saturating_sub(1);
    let objects = descriptors.iter().map(|d| d.tracks.len()).sum();
    node.wait().await.unwrap();
    // From the moment the node was ready (models loaded) to the last descriptor received.
    let busy = started.elapsed() - ready;
    NodeRun {
        frames,
        fps: frames as f64 / busy.as_secs_f64(),
        objects,
    }
}

/// Decodes the clip with the node's own ingest stage and pre-processes every frame once.
fn prepare_inputs(config: &Config, models: &Models) -> Vec<Prepared> {
    let camera = &config.cameras[0];
    let source = SourceUri::resolve(&camera.uri, &config.base_dir).unwrap();
    let status = Arc::new(CameraStatus::new(camera.id.clone(), CameraSettings::default()));
    let queue = FrameQueue::new(4);
    let runner = ingest::start_camera(camera, source, status, queue.clone(), ingest::Settled::default()).unwrap();
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
fn inference_only(config: &Config, models: &Models, inputs: &[Prepared]) -> f64 {
    let workers = config.inference.workers;
    let mut analyzers: Vec<_> = (0..workers).map(|_| models.analyzer(config).unwrap()).collect();
    // Warm-up, as the node's first frames also are.
    for analyzer in &mut analyzers {
        analyzer.infer_prepared(&inputs[0]).unwrap();
    }
    let next = AtomicUsize::new(0);
    let started = Instant::now();
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
    inputs.len() as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; this benchmark has no options of its own.
    let loops = env_usize("RETINA_BENCH_LOOPS", 3);
    let workers = env_usize("RETINA_BENCH_WORKERS", 2);
    let threads = env_usize("RETINA_BENCH_THREADS", 1);
    let clip = make_clip(loops);
    let config = config(&clip, workers, threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    eprintln!("end-to-end: node on {} ...", clip.display());
    let node = runtime.block_on(run_node(config.clone()));
    eprintln!("inference-only: preparing the same frames and crops ...");
    let models = Models::load(&config).unwrap();
    let inputs = prepare_inputs(&config, &models);
    let crops: usize = inputs.iter().map(Prepared::crops).sum();
    eprintln!("inference-only: running ...");
    let limit = inference_only(&config, &models, &inputs);

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("retina-edge end-to-end benchmark ({cores} cores, {workers} workers x {threads} intra-op thread(s))");
    println!(
        "clip                 {} (bikes.mp4 x{loops}, 1280x720 H.264, analysed at 640x360)",
        clip.display()
    );
    println!(
        "frames analysed      {} by the node, {} prepared for inference-only",
        node.frames,
        inputs.len()
    );
    println!(
        "tracked objects      {} ({:.1} per frame), {} embedded crops",
        node.objects,
        node.objects as f64 / node.frames.max(1) as f64,
        crops
    );
    println!("node                 {:.2} analysed frames/s", node.fps);
    println!(
        "inference-only       {:.2} frames/s (same models, frames, crops and threads)",
        limit
    );
    println!(
        "ratio                {:.3} of the inference-only limit",
        node.fps / limit
    );
}
