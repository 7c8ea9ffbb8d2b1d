//! Infer: ONNX Runtime sessions described by model manifests. Worker threads take frames from
//! the ingest queue, run the detector and the embedder, and pass [`Analysis`] results on.
//! Output decoders live here too: which one applies is part of a model's manifest.

mod analyzer;
pub mod decode;
pub mod faces;
pub mod manifest;
mod model;
pub(crate) use model::sha256_hex;
pub mod preprocess;
pub mod registry;
pub mod self_test;
pub mod shadow;
pub mod signing;
pub mod watch;

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

/// The models that analysed a frame. The node swaps whole sets, between frames, and numbers
/// them: a higher generation is a later set.
#[derive(Debug)]
pub struct ModelSetInfo {
    pub generation: u64,
    pub detector: ModelCard,
    pub embedder: Option<ModelCard>,
    /// What the workers saw while they ran this set.
    pub health: watch::SetHealth,
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
    pub models: Arc<ModelSetInfo>,
    pub detections: Result<Vec<Detection>>,
}

/// What a worker is handed between two frames.
enum Handover {
    /// A whole new set: its own sessions.
    Set(Box<Analyzer>, Arc<ModelSetInfo>),
    /// Keep the sessions, under another generation: a rollback reaching a worker that had not
    /// yet taken the set rolled back from.
    Renumber(Arc<ModelSetInfo>),
}

/// One worker's mailbox: what it is to use from its next frame on, and the set it ran before its
/// last switch while that is kept loaded (the watch period), so that going back needs no load.
#[derive(Default)]
struct WorkerSlot(std::sync::Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    next: Option<Handover>,
    keep_previous: bool,
    previous: Option<(Analyzer, Arc<ModelSetInfo>)>,
}

/// Hands a new model set to every worker. Each worker takes its analyzer (its own sessions of
/// the whole set) between two frames, so no frame is analysed by a mix of two sets, and no
/// camera, queue or track is touched: frames waiting in the queue are analysed by whichever set
/// the worker holds when it takes them, and each result says which.
pub struct ModelSwap {
    slots: Vec<Arc<WorkerSlot>>,
    recent: Arc<self_test::RecentFrames>,
}

impl ModelSwap {
    /// Frames the workers analysed lately, for the next set's self-test.
    pub fn recent_frames(&self) -> &self_test::RecentFrames {
        &self.recent
    }

    /// How many analyzers [`hand_over`](Self::hand_over) takes: one per worker.
    pub fn workers(&self) -> usize {
        self.slots.len()
    }

    fn lock(slot: &WorkerSlot) -> Result<std::sync::MutexGuard<'_, SlotState>> {
        slot.0.lock().map_err(|_| Error::Internal("a worker panicked".into()))
    }

    /// Hands `analyzers` over, one per worker. With `keep_previous`, each worker keeps the set
    /// it leaves loaded, for [`roll_back_to_kept`](Self::roll_back_to_kept), until
    /// [`release_kept`](Self::release_kept).
    pub fn hand_over(&self, analyzers: Vec<Analyzer>, models: Arc<ModelSetInfo>, keep_previous: bool) -> Result<()> {
        if analyzers.len() != self.slots.len() {
            return Err(Error::Internal(format!(
                "{} analyzers for {} workers",
                analyzers.len(),
                self.slots.len()
            )));
        }
        for (slot, analyzer) in self.slots.iter().zip(analyzers) {
            // A set handed over before a worker took the previous one replaces it: only the
            // newest matters, and the older one's sessions are freed here.
            let mut state = Self::lock(slot)?;
            let replaced = (state.previous.take(), state.next.take());
            state.keep_previous = keep_previous;
            state.next = Some(Handover::Set(Box::new(analyzer), models.clone()));
            // Freed without the lock the worker takes every frame.
            drop(state);
            drop(replaced);
        }
        Ok(())
    }

    /// Every worker goes back to the set it ran before the last hand-over, without loading it:
    /// the kept sessions, or, for a worker that has not taken the new set yet, its own.
    pub fn roll_back_to_kept(&self, models: Arc<ModelSetInfo>) -> Result<()> {
        for slot in &self.slots {
            let state = Self::lock(slot)?;
            if state.next.is_none() && state.previous.is_none() {
                return Err(Error::Internal("the set to go back to is no longer loaded".into()));
            }
        }
        for slot in &self.slots {
            let mut state = Self::lock(slot)?;
            state.keep_previous = false;
            state.next = Some(match state.previous.take() {
                Some((analyzer, _)) => Handover::Set(Box::new(analyzer), models.clone()),
                None => Handover::Renumber(models.clone()),
            });
        }
        Ok(())
    }

    /// The watch period is over: the sets kept for a rollback are freed.
    pub fn release_kept(&self) {
        for slot in &self.slots {
            let kept = slot.0.lock().ok().and_then(|mut state| {
                state.keep_previous = false;
                state.previous.take()
            });
            drop(kept);
        }
        release_free_memory();
    }
}

/// Starts `analyzers.len()` inference threads. They stop when the queue is closed and drained,
/// or when the receiver of `results` is gone. If one cannot start, the queue is closed and those
/// already started are joined before the error returns: none is left running unowned.
pub fn spawn_workers(
    analyzers: Vec<Analyzer>,
    models: Arc<ModelSetInfo>,
    queue: Arc<FrameQueue>,
    results: mpsc::SyncSender<Analysis>,
    metrics: Arc<Metrics>,
) -> Result<(Vec<std::thread::JoinHandle<()>>, ModelSwap)> {
    let mut workers = Vec::with_capacity(analyzers.len());
    let mut swap = ModelSwap {
        slots: Vec::new(),
        recent: Arc::default(),
    };
    for (i, analyzer) in analyzers.into_iter().enumerate() {
        let (own_queue, results, metrics) = (queue.clone(), results.clone(), metrics.clone());
        let next = Arc::new(WorkerSlot::default());
        swap.slots.push(next.clone());
        let (models, recent) = (models.clone(), swap.recent.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("infer-{i}"))
            .spawn(move || work(analyzer, models, &next, &own_queue, &results, &metrics, &recent));
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
    Ok((workers, swap))
}

fn work(
    mut analyzer: Analyzer,
    mut models: Arc<ModelSetInfo>,
    next: &WorkerSlot,
    queue: &FrameQueue,
    results: &mpsc::SyncSender<Analysis>,
    metrics: &Metrics,
    recent: &self_test::RecentFrames,
) {
    let mut recorder = metrics.inference_recorder(analyzer.detector_id(), analyzer.embedder_id());
    while let Some((frame, ticket)) = queue.pop() {
        // Uncontended but for the moment of a swap: one lock per frame costs nothing.
        if let Ok(mut state) = next.0.lock()
            && let Some(handed) = state.next.take()
        {
            let mut unused = None;
            let new_models = match handed {
                Handover::Set(new_analyzer, new_models) => {
                    let old = std::mem::replace(&mut analyzer, *new_analyzer);
                    if state.keep_previous {
                        state.previous = Some((old, models.clone()));
                    } else {
                        unused = Some(old);
                    }
                    new_models
                }
                Handover::Renumber(new_models) => new_models,
            };
            drop(state);
            // The old sessions are freed by the worker that used them, between frames, and their
            // pages given back: a node switching models for months must not keep every set.
            if unused.take().is_some() {
                release_free_memory();
            }
            models = new_models;
            recorder = metrics.inference_recorder(analyzer.detector_id(), analyzer.embedder_id());
            tracing::info!(
                generation = models.generation,
                detector = analyzer.detector_id(),
                "worker switched model set"
            );
        }
        let detections = match analyzer.analyze(&frame.image) {
            Ok((detections, timings)) => {
                recorder.observe(&timings);
                recent.offer(
                    &frame.camera.id,
                    &frame.image,
                    &detections,
                    &models.detector.class_names,
                    timings.models(),
                    std::time::Instant::now(),
                );
                models.health.record_frame(detections.len(), timings.models());
                Ok(detections)
            }
            Err(err) => {
                tracing::warn!(camera = %frame.camera.id, %err, "frame analysis failed");
                models.health.record_failure();
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
            models: models.clone(),
            detections,
        };
        crate::ingest::pool::give(frame.image.into_raw());
        if results.send(analysis).is_err() {
            break;
        }
    }
}
