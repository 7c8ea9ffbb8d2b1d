//! Infer: ONNX Runtime sessions described by model manifests. Worker threads take frames from
//! the ingest queue, run the detector and the embedder, and pass [`Analysis`] results on.
//! Output decoders live here too: which one applies is part of a model's manifest.

mod analyzer;
pub mod decode;
pub mod manifest;
mod model;
pub(crate) use model::sha256_hex;
pub mod preprocess;
pub mod registry;
pub mod signing;

use std::sync::Arc;
use std::sync::mpsc;

pub use analyzer::{Analyzer, Detection, Prepared};
pub use model::{ModelCard, ModelFile, SessionOptions, environment};

use crate::clock::UnixNanos;
use crate::error::{Error, Result};
use crate::ingest::{CameraStatus, FrameQueue};
use crate::metrics::Metrics;
use crate::pb;

/// Returns the heap's free pages to the system (glibc keeps what was freed for reuse, so a peak
/// of allocations at start-up would otherwise stay in the resident size for good).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The result of analysing one frame.
pub struct Analysis {
    pub camera: Arc<CameraStatus>,
    /// Order of the frame within its camera's stream of analysed frames (see `FrameQueue`).
    pub ticket: u64,
    pub capture_time: UnixNanos,
    pub time_source: pb::TimeSource,
    /// The frame was chosen among its stream's keyframes only.
    pub keyframes_only: bool,
    pub frame_width: u32,
    pub frame_height: u32,
    pub detections: Result<Vec<Detection>>,
}

/// Starts `analyzers.len()` inference threads. They stop when the queue is closed and drained,
/// or when the receiver of `results` is gone. If one cannot start, the queue is closed and those
/// already started are joined before the error returns: none is left running unowned.
pub fn spawn_workers(
    analyzers: Vec<Analyzer>,
    queue: Arc<FrameQueue>,
    results: mpsc::SyncSender<Analysis>,
    metrics: Arc<Metrics>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut workers = Vec::with_capacity(analyzers.len());
    for (i, analyzer) in analyzers.into_iter().enumerate() {
        let (own_queue, results, metrics) = (queue.clone(), results.clone(), metrics.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("infer-{i}"))
            .spawn(move || work(analyzer, &own_queue, &results, &metrics));
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(e) => {
                queue.close();
                for worker in workers {
                    let _ = worker.join();
                }
                return Err(Error::io("starting inference thread", e));
            }
        }
    }
    Ok(workers)
}

fn work(mut analyzer: Analyzer, queue: &FrameQueue, results: &mpsc::SyncSender<Analysis>, metrics: &Metrics) {
    let recorder = metrics.inference_recorder(analyzer.detector_id(), analyzer.embedder_id());
    while let Some((frame, ticket)) = queue.pop() {
        let detections = match analyzer.analyze(&frame.image) {
            Ok((detections, timings)) => {
                recorder.observe(&timings);
                Ok(detections)
            }
            Err(err) => {
                tracing::warn!(camera = %frame.camera.id, %err, "frame analysis failed");
                Err(err)
            }
        };
        let analysis = Analysis {
            camera: frame.camera,
            ticket,
            capture_time: frame.capture_time,
            time_source: frame.time_source,
            keyframes_only: frame.keyframes_only,
            frame_width: frame.image.width(),
            frame_height: frame.image.height(),
            detections,
        };
        crate::ingest::pool::give(frame.image.into_raw());
        if results.send(analysis).is_err() {
            break;
        }
    }
}
