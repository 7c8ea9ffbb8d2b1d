//! Ingest: cameras decoded by GStreamer into RGB frames, stamped with capture time, and handed to
//! the inference stage through a bounded, fair [`FrameQueue`].

mod camera;
mod pipeline;
mod queue;
mod source;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use camera::{CameraRunner, start_camera};
pub use queue::{FrameQueue, Overflow, PushOutcome};
pub use source::{SourceKind, SourceUri, redact_uri};

use crate::clock::UnixNanos;
use crate::pb;

/// One decoded frame on its way to analysis.
pub struct Frame {
    pub camera: std::sync::Arc<CameraStatus>,
    /// RGB, 8 bits per channel, rows packed without padding.
    pub image: image::RgbImage,
    pub capture_time: UnixNanos,
    pub time_source: pb::TimeSource,
}

/// What the rest of the node knows about a camera: identity, and counters updated by the stages
/// its frames pass through. Metrics and `GetNodeInfo` read these; they are never reset.
#[derive(Debug)]
pub struct CameraStatus {
    pub id: String,
    /// Source URI with any password removed: safe for logs and the API.
    pub uri_redacted: String,
    pub analysis_fps: f64,
    pub position: Option<pb::CameraPosition>,
    /// Frames that came out of the decoder (before the analysis-rate filter).
    pub frames_decoded: AtomicU64,
    /// Frames that reached the inference queue.
    pub frames_queued: AtomicU64,
    /// Frames dropped from the inference queue because inference was busy.
    pub frames_dropped: AtomicU64,
    /// Frames whose descriptor was published.
    pub frames_analysed: AtomicU64,
    /// Times the pipeline was torn down and built again after a failure.
    pub restarts: AtomicU64,
    state: Mutex<CameraCondition>,
}

#[derive(Debug, Clone)]
pub struct CameraCondition {
    pub state: pb::CameraState,
    pub last_error: Option<String>,
}

impl CameraStatus {
    pub fn new(
        id: String,
        uri_redacted: String,
        analysis_fps: f64,
        position: Option<pb::CameraPosition>,
    ) -> Self {
        CameraStatus {
            id,
            uri_redacted,
            analysis_fps,
            position,
            frames_decoded: AtomicU64::new(0),
            frames_queued: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            frames_analysed: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            state: Mutex::new(CameraCondition {
                state: pb::CameraState::Starting,
                last_error: None,
            }),
        }
    }

    pub fn condition(&self) -> CameraCondition {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a state change; logs only real transitions, so a steady state never floods logs.
    pub fn set_state(&self, state: pb::CameraState, error: Option<String>) {
        let mut current = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changed = current.state != state;
        current.state = state;
        if error.is_some() {
            current.last_error = error.clone();
        }
        drop(current);
        if changed {
            match error {
                Some(error) => {
                    tracing::warn!(camera = %self.id, state = state.as_str_name(), %error, "camera state")
                }
                None => {
                    tracing::info!(camera = %self.id, state = state.as_str_name(), "camera state")
                }
            }
        }
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The node's cameras, shared with metrics and the gRPC service.
pub type Cameras = std::sync::Arc<std::sync::RwLock<Vec<std::sync::Arc<CameraStatus>>>>;
