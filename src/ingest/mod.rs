//! Ingest: cameras decoded by GStreamer into RGB frames, stamped with capture time, and handed to
//! the inference stage through a bounded, fair [`FrameQueue`].

mod camera;
mod failure;
pub mod gst_log;
mod manager;
mod pipeline;
pub mod pool;
mod queue;
mod source;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

pub use crate::error::redact_uri;
pub use camera::{CameraRunner, Settled, start_camera};
pub use failure::{Failure, FailureKind};
pub use manager::{CameraChange, CameraManager, StartingCamera};
pub use queue::{FrameQueue, Overflow, PushOutcome};
pub use source::{SourceKind, SourceUri};

use crate::clock::UnixNanos;
use crate::pb;

/// One decoded frame on its way to analysis.
pub struct Frame {
    pub camera: std::sync::Arc<CameraStatus>,
    /// RGB, 8 bits per channel, rows packed without padding.
    pub image: image::RgbImage,
    pub capture_time: UnixNanos,
    pub time_source: pb::TimeSource,
    /// Chosen among the stream's keyframes only (`DecodeMode`): said in its descriptor.
    pub keyframes_only: bool,
}

/// What the rest of the node knows about a camera: identity, current settings, and counters
/// updated by the stages its frames pass through. Metrics and `GetNodeInfo` read these;
/// counters are never reset, so they survive reconnects and updates of the camera.
#[derive(Debug)]
pub struct CameraStatus {
    pub id: String,
    /// Distinguishes a camera re-added under the same id from the one removed before it, so
    /// that late results of the old one are not mixed into the new one's order.
    pub instance: u64,
    settings: RwLock<CameraSettings>,
    /// Frames that came out of the decoder (before the analysis-rate filter).
    pub frames_decoded: AtomicU64,
    /// Frames of the stream kept from the decoder: only keyframes were being decoded.
    pub frames_not_decoded: AtomicU64,
    /// Whether the last frame was chosen among keyframes only.
    keyframes_only: AtomicBool,
    /// Frames that reached the inference queue.
    pub frames_queued: AtomicU64,
    /// Frames dropped from the inference queue because inference was busy.
    pub frames_dropped: AtomicU64,
    /// Frames whose descriptor was published.
    pub frames_analysed: AtomicU64,
    /// Times the pipeline was torn down and built again after a failure.
    pub restarts: AtomicU64,
    /// Failed attempts since the camera last delivered a frame.
    pub reconnect_attempts: AtomicU32,
    /// When the last frame arrived (nanoseconds on the process's monotonic clock, 0 = never).
    last_frame_nanos: AtomicU64,
    /// When the decoder last produced a frame, analysed or not: what says a source is alive, even
    /// one analysed only every few seconds (same clock, 0 = never).
    last_decoded_nanos: AtomicU64,
    /// `pb::TimeSource` of the last frame's capture time.
    time_source: AtomicI32,
    /// Failures by kind ([`FailureKind::index`]) since the node started.
    failures: [AtomicU64; FailureKind::ALL.len()],
    /// What the camera's video ring holds, on a node that keeps video.
    pub ring: Arc<crate::video::ring::RingStats>,
    state: Mutex<CameraCondition>,
}

/// The parts of a camera's configuration that others report; replaced when it is updated.
#[derive(Debug, Clone, Default)]
pub struct CameraSettings {
    /// Source URI with any password removed: safe for logs and the API.
    pub uri_redacted: String,
    pub analysis_fps: f64,
    pub decode: crate::config::DecodeMode,
    pub position: Option<pb::CameraPosition>,
    pub enabled: bool,
    /// Zones and counting lines; a change is a new `Arc` (the describer compares pointers first).
    pub counting: Arc<crate::config::CountingPlaces>,
}

#[derive(Debug, Clone)]
pub struct CameraCondition {
    pub state: pb::CameraState,
    pub last_error: Option<String>,
    /// What kind of failure `last_error` describes.
    pub failure: Option<FailureKind>,
}

fn monotonic_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // +1 so that 0 can mean "never".
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

impl CameraStatus {
    pub fn new(id: String, settings: CameraSettings) -> Self {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        CameraStatus {
            id,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            settings: RwLock::new(settings),
            frames_decoded: AtomicU64::new(0),
            frames_not_decoded: AtomicU64::new(0),
            keyframes_only: AtomicBool::new(false),
            frames_queued: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            frames_analysed: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            reconnect_attempts: AtomicU32::new(0),
            last_frame_nanos: AtomicU64::new(0),
            last_decoded_nanos: AtomicU64::new(0),
            time_source: AtomicI32::new(pb::TimeSource::Unspecified as i32),
            failures: Default::default(),
            ring: Arc::default(),
            state: Mutex::new(CameraCondition {
                state: pb::CameraState::Starting,
                last_error: None,
                failure: None,
            }),
        }
    }

    pub fn settings(&self) -> CameraSettings {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn position(&self) -> Option<pb::CameraPosition> {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).position.clone()
    }

    pub fn counting_places(&self) -> Arc<crate::config::CountingPlaces> {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).counting.clone()
    }

    pub fn set_settings(&self, settings: CameraSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    pub fn condition(&self) -> CameraCondition {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a state change; logs only real transitions, so a steady state never floods logs.
    pub fn set_state(&self, state: pb::CameraState, error: Option<String>) {
        self.change_state(state, error, None);
    }

    /// Records a failure: counted by kind, and the camera's state with its reason.
    pub fn fail(&self, state: pb::CameraState, failure: &Failure) {
        Self::count(&self.failures[failure.kind.index()]);
        self.change_state(state, Some(failure.message.clone()), Some(failure.kind));
    }

    /// Failures of each kind since the node started.
    pub fn failure_counts(&self) -> impl Iterator<Item = (FailureKind, u64)> + '_ {
        FailureKind::ALL
            .into_iter()
            .map(|kind| (kind, self.failures[kind.index()].load(Ordering::Relaxed)))
    }

    fn change_state(&self, state: pb::CameraState, error: Option<String>, failure: Option<FailureKind>) {
        let mut current = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changed = current.state != state;
        current.state = state;
        if error.is_some() {
            current.last_error = error.clone();
            current.failure = failure;
        }
        drop(current);
        if changed {
            let failed = state == pb::CameraState::Failed;
            let state = state.as_str_name().trim_start_matches("CAMERA_STATE_");
            let attempt = self.reconnect_attempts.load(Ordering::Relaxed);
            match error {
                Some(error) if failed => {
                    let kind = failure.map_or("", FailureKind::label);
                    tracing::error!(camera = %self.id, state, kind, %error, "camera state")
                }
                Some(error) => tracing::warn!(camera = %self.id, state, attempt, %error, "camera state"),
                None => tracing::info!(camera = %self.id, state, "camera state"),
            }
        }
    }

    /// A frame arrived, stamped from `source`, chosen among keyframes only or not.
    pub fn frame_arrived(&self, source: pb::TimeSource, keyframes_only: bool) {
        self.last_frame_nanos.store(monotonic_nanos(), Ordering::Relaxed);
        self.time_source.store(source as i32, Ordering::Relaxed);
        self.keyframes_only.store(keyframes_only, Ordering::Relaxed);
    }

    /// A frame of the stream was kept from the decoder. It still shows the source is alive: a
    /// camera analysed at its keyframes only decodes a frame every second or two.
    pub fn frame_not_decoded(&self) {
        Self::count(&self.frames_not_decoded);
        self.last_decoded_nanos.store(monotonic_nanos(), Ordering::Relaxed);
    }

    /// Whether the camera's frames are chosen among its keyframes only, as of the last frame.
    pub fn keyframes_only(&self) -> bool {
        self.keyframes_only.load(Ordering::Relaxed)
    }

    /// The decoder produced a frame (before the analysis-rate filter).
    pub fn frame_decoded(&self) {
        Self::count(&self.frames_decoded);
        self.last_decoded_nanos.store(monotonic_nanos(), Ordering::Relaxed);
    }

    /// Time since the last frame, if one ever arrived.
    pub fn last_frame_age(&self) -> Option<Duration> {
        age(&self.last_frame_nanos)
    }

    /// Time since the decoder last produced a frame, if it ever did.
    pub fn last_decoded_age(&self) -> Option<Duration> {
        age(&self.last_decoded_nanos)
    }

    pub fn time_source(&self) -> pb::TimeSource {
        pb::TimeSource::try_from(self.time_source.load(Ordering::Relaxed)).unwrap_or_default()
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn age(at_nanos: &AtomicU64) -> Option<Duration> {
    let at = at_nanos.load(Ordering::Relaxed);
    (at > 0).then(|| Duration::from_nanos(monotonic_nanos().saturating_sub(at)))
}

/// The node's cameras, shared with metrics and the gRPC service.
pub type Cameras = std::sync::Arc<std::sync::RwLock<Vec<std::sync::Arc<CameraStatus>>>>;
