//! One supervised camera: a thread that builds the pipeline, watches its bus, and rebuilds it
//! after a failure, with backoff, until the camera is stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::pipeline::{self, PipelineSpec};
use super::{CameraStatus, Frame, FrameQueue, Overflow, PushOutcome, SourceKind, SourceUri};
use crate::clock::{CaptureClock, now_unix_nanos};
use crate::config::CameraConfig;
use crate::error::{Error, Result};
use crate::pb::{CameraState, TimeSource};
use crate::shutdown::Shutdown;

const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run that streamed this long counts as healthy: the next failure starts the backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// Live sources that deliver nothing for this long are rebuilt.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
const BUS_POLL: Duration = Duration::from_millis(100);

/// A running camera. Dropping it does not stop it: call [`CameraRunner::stop`].
pub struct CameraRunner {
    pub status: Arc<CameraStatus>,
    stop: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CameraRunner {
    pub fn stop(&self) {
        self.stop.trigger();
    }

    /// Waits for the camera's thread to finish (after [`stop`](Self::stop) or the end of a file).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

pub fn start_camera(
    config: &CameraConfig,
    source: SourceUri,
    status: Arc<CameraStatus>,
    queue: Arc<FrameQueue>,
) -> Result<CameraRunner> {
    let stop = Shutdown::new();
    let spec = PipelineSpec {
        uri: source.uri.clone(),
        analysis_fps: config.analysis_fps,
        max_width: config.max_frame_width_px,
        max_height: config.max_frame_height_px,
        sync: source.kind == SourceKind::File && config.realtime,
    };
    let supervisor = Supervisor {
        spec,
        kind: source.kind,
        loop_file: config.loop_file,
        overflow: if source.kind == SourceKind::File && !config.realtime {
            Overflow::Wait
        } else {
            Overflow::DropOldest
        },
        status: status.clone(),
        queue,
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("camera-{}", config.id))
        .spawn(move || supervisor.run())
        .map_err(|e| Error::io("starting camera thread", e))?;
    Ok(CameraRunner {
        status,
        stop,
        thread: Some(thread),
    })
}

struct Supervisor {
    spec: PipelineSpec,
    kind: SourceKind,
    loop_file: bool,
    overflow: Overflow,
    status: Arc<CameraStatus>,
    queue: Arc<FrameQueue>,
    stop: Shutdown,
}

/// How one pipeline run ended.
enum RunEnd {
    /// Stopped from outside, or a file that does not loop reached its end.
    Finished,
    /// Anything else: rebuild after a backoff.
    Failed(String),
}

impl Supervisor {
    fn run(self) {
        let time_source = match self.kind {
            SourceKind::File => TimeSource::FilePosition,
            SourceKind::Live => TimeSource::HostArrival,
        };
        let clock = Arc::new(std::sync::Mutex::new(CaptureClock::new(time_source)));
        let mut backoff = BACKOFF_INITIAL;
        loop {
            self.status.set_state(CameraState::Starting, None);
            let started = Instant::now();
            let end = match self.run_once(&clock) {
                Ok(end) => end,
                Err(err) => RunEnd::Failed(err.to_string()),
            };
            match end {
                RunEnd::Finished => break,
                RunEnd::Failed(error) => {
                    if self.stop.is_triggered() {
                        break;
                    }
                    if started.elapsed() >= HEALTHY_RUN {
                        backoff = BACKOFF_INITIAL;
                    }
                    self.status.set_state(CameraState::Failed, Some(error));
                    CameraStatus::count(&self.status.restarts);
                    tracing::info!(camera = %self.status.id, retry_in = ?backoff, "camera will be rebuilt");
                    if self.stop.sleep(backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.status.set_state(CameraState::Stopped, None);
    }

    fn run_once(&self, clock: &Arc<std::sync::Mutex<CaptureClock>>) -> Result<RunEnd> {
        clock.lock().unwrap_or_else(|p| p.into_inner()).restart();
        let status = self.status.clone();
        let queue = self.queue.clone();
        let overflow = self.overflow;
        let frame_clock = clock.clone();
        let mut last_running_time = None;
        let mut announced_streaming = false;
        let decoded_status = self.status.clone();
        let pipeline = pipeline::build(
            &self.spec,
            move |raw| {
                let (capture_time, time_source) = {
                    let mut clock = frame_clock.lock().unwrap_or_else(|p| p.into_inner());
                    // A looping file starts its running time again at zero: a new anchor.
                    if last_running_time.is_some_and(|last| raw.running_time < last) {
                        clock.restart();
                    }
                    last_running_time = Some(raw.running_time);
                    (
                        clock.stamp(raw.running_time, now_unix_nanos),
                        clock.source(),
                    )
                };
                if !announced_streaming {
                    status.set_state(CameraState::Streaming, None);
                    announced_streaming = true;
                }
                let frame = Frame {
                    camera: status.clone(),
                    image: raw.image,
                    capture_time,
                    time_source,
                };
                match queue.push(frame, overflow) {
                    PushOutcome::Closed => Err(gst::FlowError::Flushing),
                    PushOutcome::Queued | PushOutcome::QueuedDroppedOldest => Ok(()),
                }
            },
            move || CameraStatus::count(&decoded_status.frames_decoded),
        )?;
        let bus = pipeline
            .pipeline
            .bus()
            .ok_or_else(|| Error::Gstreamer("pipeline without bus".into()))?;
        pipeline
            .pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| Error::Camera {
                camera: self.status.id.clone(),
                message: format!("cannot start playing {}", self.status.uri_redacted),
            })?;

        let started = Instant::now();
        loop {
            if self.stop.is_triggered() {
                return Ok(RunEnd::Finished);
            }
            if self.kind == SourceKind::Live {
                let silent_for = pipeline
                    .liveness
                    .since_last_frame()
                    .unwrap_or_else(|| started.elapsed());
                if silent_for > STALL_TIMEOUT {
                    return Ok(RunEnd::Failed(format!(
                        "no frame for {:.1} s",
                        silent_for.as_secs_f64()
                    )));
                }
            }
            let Some(msg) = bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(BUS_POLL.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            ) else {
                continue;
            };
            match msg.view() {
                gst::MessageView::Eos(_) => match self.kind {
                    SourceKind::File if self.loop_file => {
                        pipeline
                            .pipeline
                            .seek_simple(
                                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                                gst::ClockTime::ZERO,
                            )
                            .map_err(|_| Error::Camera {
                                camera: self.status.id.clone(),
                                message: "cannot seek back to the start of the file".into(),
                            })?;
                    }
                    SourceKind::File => {
                        tracing::info!(camera = %self.status.id, "end of file");
                        return Ok(RunEnd::Finished);
                    }
                    SourceKind::Live => return Ok(RunEnd::Failed("stream ended".into())),
                },
                gst::MessageView::Error(err) => {
                    let origin = err
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    return Ok(RunEnd::Failed(format!("{} ({origin})", err.error())));
                }
                _ => {}
            }
        }
    }
}
