//! One supervised camera: a thread that builds the pipeline, watches its bus and its frames, and
//! rebuilds it after any failure, with jittered exponential backoff, until the camera is stopped.
//!
//! A failure is an error on the bus, the end of a live stream, or no frame for the stall timeout
//! (an RTSP server that hangs without closing the socket sends no error at all). Every rebuild
//! starts from a new pipeline in NULL state: nothing of a broken run is reused. A failure that
//! retrying cannot mend (`failure.rs`: no video, not media, not found, ...) puts the camera in
//! `FAILED` and is retried only every `failed_retry_seconds`.
//!
//! A still image (a JPEG or PNG, from a file or a camera's snapshot URL) is one frame per run:
//! a snapshot URL, or an image file with `loop_file`, is fetched again once per analysis
//! interval; an image file without `loop_file` is analysed once, like a clip that ends.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::failure::{self, Failure, FailureKind};
use super::pipeline::{self, PipelineSpec, RtspOptions, StreamFrame, StreamTap, Tapped};
use super::{CameraStatus, Frame, FrameQueue, Overflow, PushOutcome, SourceKind, SourceUri};
use crate::clock::{Backoff, CaptureClock, UnixNanos, now_unix_nanos};
use crate::config::CameraConfig;
use crate::error::{Error, Result};
use crate::pb::{CameraState, TimeSource};
use crate::shutdown::Shutdown;
use crate::video::record::{self, RecordSettings, Recorder};
use crate::video::ring::Ring;

const BUS_POLL: Duration = Duration::from_millis(100);
/// The longest a looping file waits at its end for the clock (a bound on a wrong duration).
const MAX_TAIL_WAIT: Duration = Duration::from_secs(10);
/// A live source's permanent-looking failure must happen this many times in a row before the
/// camera is `FAILED`.
const LIVE_PERMANENT_AFTER: u32 = 3;
/// How often a snapshot source is fetched when every frame is to be analysed (`analysis_fps` 0).
const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECONDS: i64 = 2_208_988_800;

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

/// Called once, when a camera has proven it does not endanger the node: its first frame, or the
/// end of its first run (a failure the node survived).
#[derive(Clone, Default)]
pub struct Settled(Arc<Mutex<Option<SettledHook>>>);

type SettledHook = Box<dyn FnOnce() + Send>;

impl Settled {
    pub fn new(hook: impl FnOnce() + Send + 'static) -> Settled {
        Settled(Arc::new(Mutex::new(Some(Box::new(hook)))))
    }

    fn fire(&self) {
        let hook = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(hook) = hook {
            hook();
        }
    }
}

/// `record`: where the camera's video is kept, if it is (the node's `[video]` and the camera's
/// `record`).
pub fn start_camera(
    config: &CameraConfig,
    source: SourceUri,
    status: Arc<CameraStatus>,
    queue: Arc<FrameQueue>,
    settled: Settled,
    record: Option<RecordSettings>,
) -> Result<CameraRunner> {
    let stop = Shutdown::new();
    let record = record.filter(|_| config.record);
    let spec = PipelineSpec {
        reencode: record.as_ref().is_some_and(|r| r.reencode),
        uri: source.uri.clone(),
        analysis_fps: config.analysis_fps,
        max_width: config.max_frame_width_px,
        max_height: config.max_frame_height_px,
        sync: source.kind == SourceKind::File && config.realtime,
        decoder_threads: config.decoder_threads,
        decode: config.decode,
        rtsp: RtspOptions {
            transport: config.rtsp_transport,
            latency_ms: config.rtsp_latency_ms,
            username: config.username.clone(),
            password: config.password.clone(),
            password_file: config.password_file.clone(),
        },
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
        stall_timeout: Duration::from_secs_f64(config.stall_timeout_seconds),
        backoff: Backoff::new(
            Duration::from_secs_f64(config.reconnect_initial_seconds),
            Duration::from_secs_f64(config.reconnect_max_seconds),
            Instant::now,
        ),
        failed_retry: Duration::from_secs_f64(config.failed_retry_seconds),
        snapshot_interval: if config.analysis_fps > 0.0 {
            Duration::from_secs_f64(1.0 / config.analysis_fps)
        } else {
            DEFAULT_SNAPSHOT_INTERVAL
        },
        status: status.clone(),
        queue,
        stop: stop.clone(),
        settled,
        record,
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
    stall_timeout: Duration,
    backoff: Backoff,
    /// Wait before trying a source again that failed permanently.
    failed_retry: Duration,
    /// Wait between two fetches of a still image.
    snapshot_interval: Duration,
    status: Arc<CameraStatus>,
    queue: Arc<FrameQueue>,
    stop: Shutdown,
    settled: Settled,
    record: Option<RecordSettings>,
}

/// The recorder of the current run, shared by the pipeline's tap and the supervisor, which
/// closes it once the pipeline has stopped.
type RecorderSlot = Arc<Mutex<Option<Recorder>>>;

/// After a recording fails (a full disk, a muxer error), the next one starts no sooner than this.
const RECORDING_RETRY: Duration = Duration::from_secs(10);

/// How one pipeline run ended.
enum RunEnd {
    /// Stopped from outside, or a file that does not loop reached its end.
    Finished,
    /// A still image delivered its frame: fetch it again after the snapshot interval.
    Snapshot,
    /// Rebuild after a backoff, or after `failed_retry` for a permanent failure.
    Failed(Failure),
}

impl Supervisor {
    fn run(mut self) {
        let default_source = match self.kind {
            SourceKind::File => TimeSource::FilePosition,
            SourceKind::Live => TimeSource::HostArrival,
        };
        let clock = Arc::new(Mutex::new(CaptureClock::new(default_source)));
        if let Some(settings) = &self.record {
            let ring = Ring::new(&settings.root, &self.status.id);
            record::recover(&self.status.id, &ring, settings.limits, &self.status.ring);
        }
        let mut polling = false;
        // Permanent-looking failures of a live source in a row, with no frame between them.
        let mut permanent_streak = 0u32;
        loop {
            if !polling {
                self.status.set_state(CameraState::Starting, None);
            }
            let started = self.backoff.start_run();
            let end = self
                .run_once(&clock)
                .unwrap_or_else(|err| RunEnd::Failed(Failure::new(FailureKind::StreamError, err.to_string())));
            let failure = match end {
                RunEnd::Finished if self.stop.is_triggered() => break,
                RunEnd::Finished => {
                    self.settled.fire();
                    break;
                }
                _ if self.stop.is_triggered() => break,
                RunEnd::Snapshot => {
                    // A fetched snapshot is a healthy run, however short.
                    self.backoff.reset();
                    permanent_streak = 0;
                    polling = true;
                    if self
                        .stop
                        .sleep(self.snapshot_interval.saturating_sub(started.elapsed()))
                    {
                        break;
                    }
                    continue;
                }
                RunEnd::Failed(failure) => failure,
            };
            // The node survived this source's failure: it may leave probation.
            self.settled.fire();
            polling = false;
            self.backoff.end_run();
            CameraStatus::count(&self.status.restarts);
            self.status.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
            let delivered = self
                .status
                .last_decoded_age()
                .is_some_and(|age| age < started.elapsed());
            if delivered || !failure.kind.is_permanent() {
                permanent_streak = 0;
            }
            // A live source's "permanent" answer may be passing (a relay answers 404 while its
            // camera reconnects to it; a name that does not resolve for a moment): believed only
            // when it repeats, with the backoff between. A file says the same at every read.
            let permanent = failure.kind.is_permanent() && {
                permanent_streak += 1;
                self.kind == SourceKind::File || permanent_streak >= LIVE_PERMANENT_AFTER
            };
            let delay = if permanent {
                self.status.fail(CameraState::Failed, &failure);
                self.failed_retry
            } else {
                let state = match failure.kind {
                    FailureKind::Stalled => CameraState::Stalled,
                    _ => CameraState::Reconnecting,
                };
                self.status.fail(state, &failure);
                if state == CameraState::Stalled {
                    self.status.set_state(CameraState::Reconnecting, None);
                }
                self.backoff.next_delay()
            };
            tracing::debug!(camera = %self.status.id, retry_in = ?delay, "camera will be rebuilt");
            if self.stop.sleep(delay) {
                break;
            }
        }
        self.status.set_state(CameraState::Stopped, None);
    }

    /// Back to the start of a looping file. A flushing seek: segment seeks (which would carry
    /// running time on) are refused by some demuxers (MPEG-TS). Time starts from zero again
    /// after it, and the rate gate carries it on (`RateGate::restart`).
    fn loop_back(&self, pipeline: &gst::Pipeline) -> Result<()> {
        let flags = gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT;
        pipeline
            .seek_simple(flags, gst::ClockTime::ZERO)
            .map_err(|_| Error::Camera {
                camera: self.status.id.clone(),
                message: "cannot seek back to the start of the file".into(),
            })
    }

    /// How long until the end of a file played in real time is due. Frames the rate gate
    /// skips never reach the synchronised sink, so at EOS the clock is only as far as the last
    /// analysed frame: looping at once ran a short clip at 2.4 times real time.
    fn tail_left(&self, pipeline: &gst::Pipeline) -> Duration {
        if !self.spec.sync {
            return Duration::ZERO;
        }
        let end = pipeline
            .query_duration::<gst::ClockTime>()
            .or_else(|| pipeline.query_position::<gst::ClockTime>());
        match (end, pipeline.current_running_time()) {
            (Some(end), Some(now)) => Duration::from_nanos(end.saturating_sub(now).nseconds()).min(MAX_TAIL_WAIT),
            _ => Duration::ZERO,
        }
    }

    fn run_once(&self, clock: &Arc<Mutex<CaptureClock>>) -> Result<RunEnd> {
        clock.lock().unwrap_or_else(|p| p.into_inner()).restart();
        let recorder = RecorderSlot::default();
        let end = self.run_pipeline(clock, &recorder);
        // The pipeline is stopped: nothing pushes any more. The last segment is closed here, not
        // left to a thread the process may not wait for.
        let last = recorder.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(last) = last {
            last.finish_and_wait();
        }
        end
    }

    /// Keeps the run's compressed frames in the camera's video ring, timed by `clock` as the
    /// analysed frames are; or its decoded frames, encoded, when the stream is neither H.264 nor
    /// H.265 and the node is configured to.
    fn ring_tap(&self, clock: Arc<Mutex<CaptureClock>>, slot: RecorderSlot) -> Option<StreamTap> {
        let settings = self.record.clone()?;
        let ring_stats = self.status.ring.clone();
        let camera = self.status.id.clone();
        let mut timing = RingTiming::default();
        let mut retry_after: Option<Instant> = None;
        // Whether this run's compressed stream can be kept as it is; decoded frames are then
        // not needed.
        let mut keeps_compressed = false;
        let mut said_not_kept = false;
        Some(Box::new(move |tapped| {
            let frame = match tapped {
                Tapped::Flushed => {
                    let recorder = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(recorder) = recorder {
                        recorder.finish();
                    }
                    timing.restarted(&clock.lock().unwrap_or_else(|p| p.into_inner()));
                    return;
                }
                Tapped::Compressed(frame) if record::parser_for(frame.caps).is_some() => {
                    keeps_compressed = true;
                    frame
                }
                // Kept, if at all, from its decoded frames (`Tapped::Decoded`, only heard with
                // `reencode`).
                Tapped::Compressed(frame) => {
                    if !settings.reencode && !std::mem::replace(&mut said_not_kept, true) {
                        let kind = frame
                            .caps
                            .structure(0)
                            .map(|s| s.name().to_string())
                            .unwrap_or_default();
                        tracing::warn!(
                            camera,
                            kind,
                            "this camera's video is not kept: only H.264 and H.265 are kept as they come \
                             (video.reencode = true encodes the others)"
                        );
                    }
                    return;
                }
                Tapped::Decoded(_) if keeps_compressed => return,
                Tapped::Decoded(frame) => frame,
            };
            // Out of the slot while GStreamer is called, back in after: no lock is held over it.
            let mut recorder = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if recorder.as_ref().is_some_and(|r| r.failed() || !r.accepts(frame.caps)) {
                if recorder.as_ref().is_some_and(Recorder::failed) {
                    retry_after = Some(Instant::now() + RECORDING_RETRY);
                }
                if let Some(old) = recorder.take() {
                    old.finish();
                }
            }
            if recorder.is_none() && retry_after.is_none_or(|t| Instant::now() >= t) {
                let ring = Ring::new(&settings.root, &camera);
                match Recorder::start(&camera, ring, frame.caps, &settings, ring_stats.clone()) {
                    Ok(started) => recorder = Some(started),
                    Err(err) => {
                        tracing::warn!(camera, %err, "this camera's video is not kept");
                        retry_after = Some(Instant::now() + RECORDING_RETRY);
                    }
                }
            }
            let Some(mut recorder) = recorder else { return };
            let capture_time = timing.capture_time(
                &clock.lock().unwrap_or_else(|p| p.into_inner()),
                frame.running_time,
                frame.ntp_nanos,
                now_unix_nanos(),
            );
            recorder.push(&record::Frame {
                caps: frame.caps,
                buffer: frame.buffer,
                running_time: frame.running_time,
                capture_time,
            });
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(recorder);
        }))
    }

    fn run_pipeline(&self, clock: &Arc<Mutex<CaptureClock>>, recorder: &RecorderSlot) -> Result<RunEnd> {
        let stream_status = self.status.clone();
        let spec = match self.spec.with_password_from_file() {
            Ok(spec) => spec,
            // The camera cannot be reached without it: as a wrong password would be.
            Err(err) => return Ok(RunEnd::Failed(Failure::new(FailureKind::Unauthorized, err.to_string()))),
        };
        let tap = self.ring_tap(clock.clone(), recorder.clone());
        let pipeline = pipeline::build(
            &spec,
            self.frame_handler(clock.clone()),
            move |frame| match frame {
                StreamFrame::Decoded => stream_status.frame_decoded(),
                StreamFrame::NotDecoded => stream_status.frame_not_decoded(),
            },
            tap,
        )?;
        let bus = pipeline
            .pipeline
            .bus()
            .ok_or_else(|| Error::Gstreamer("pipeline without bus".into()))?;
        // Before PLAYING: a still image can be decoded before set_state returns, and "decoded in
        // this run" is judged against this instant.
        let started = Instant::now();
        if pipeline.pipeline.set_state(gst::State::Playing).is_err() {
            // A source that fails on the spot (a file deleted or unreadable) has said why on the bus.
            let said = bus.pop_filtered(&[gst::MessageType::Error]);
            if let Some(gst::MessageView::Error(err)) = said.as_ref().map(|m| m.view()) {
                let details = err.debug();
                let failure = failure::classify(&err.error(), details.as_deref(), &pipeline.facts, self.kind);
                return Ok(RunEnd::Failed(failure));
            }
            return Err(Error::Camera {
                camera: self.status.id.clone(),
                message: format!("cannot start playing {}", self.status.settings().uri_redacted),
            });
        }

        // When a looping file, at its end, goes back to the start.
        let mut loop_due: Option<Instant> = None;
        loop {
            if self.stop.is_triggered() {
                return Ok(RunEnd::Finished);
            }
            if loop_due.is_some_and(|due| Instant::now() >= due) {
                loop_due = None;
                self.loop_back(&pipeline.pipeline)?;
            }
            // Silent since the last decoded frame of this run, or since the run began. Decoded,
            // not analysed: at a low analysis rate, analysed frames may come further apart than
            // the stall timeout from a healthy camera. A file is watched only until its first
            // frame (it may then wait on a busy inference queue), since a start that neither
            // delivers nor fails happens to files too: with many pipelines starting at once, a
            // damaged MP4 or MPEG-TS file left the pipeline in READY (pending PLAYING) with
            // nothing on its bus in about a quarter of the attempts here, and the camera sat in
            // STARTING for ever.
            let run_age = started.elapsed();
            let silent_for = self.status.last_decoded_age().map_or(run_age, |age| age.min(run_age));
            let watched = self.kind == SourceKind::Live || silent_for >= run_age;
            if watched && silent_for > self.stall_timeout {
                let seconds = silent_for.as_secs_f64();
                let message = if silent_for >= run_age {
                    format!("no frame within {seconds:.1} s of starting, and no error")
                } else {
                    format!("no frame for {seconds:.1} s")
                };
                return Ok(RunEnd::Failed(Failure::new(FailureKind::Stalled, message)));
            }
            if let Some(failure) = failure::no_video(&pipeline.facts) {
                return Ok(RunEnd::Failed(failure));
            }
            let timeout = gst::ClockTime::from_nseconds(BUS_POLL.as_nanos() as u64);
            let Some(msg) = bus.timed_pop_filtered(timeout, &[gst::MessageType::Eos, gst::MessageType::Error]) else {
                continue;
            };
            match msg.view() {
                gst::MessageView::Eos(_) if pipeline.facts.is_still_image() => {
                    let decoded = self
                        .status
                        .last_decoded_age()
                        .is_some_and(|age| age < started.elapsed());
                    if !decoded {
                        return Ok(RunEnd::Failed(Failure::new(
                            FailureKind::NotMedia,
                            "the image holds no picture that can be decoded",
                        )));
                    }
                    let once = self.kind == SourceKind::File && !self.loop_file;
                    return Ok(if once { RunEnd::Finished } else { RunEnd::Snapshot });
                }
                gst::MessageView::Eos(_) => match self.kind {
                    SourceKind::File if self.loop_file => {
                        loop_due = Some(Instant::now() + self.tail_left(&pipeline.pipeline));
                    }
                    SourceKind::File => {
                        tracing::info!(camera = %self.status.id, "end of file");
                        return Ok(RunEnd::Finished);
                    }
                    SourceKind::Live => {
                        return Ok(RunEnd::Failed(Failure::new(FailureKind::Ended, "the stream ended")));
                    }
                },
                gst::MessageView::Error(err) => {
                    let details = err.debug();
                    let failure = failure::classify(&err.error(), details.as_deref(), &pipeline.facts, self.kind);
                    let origin = err.src().map(|s| s.name().to_string()).unwrap_or_default();
                    tracing::debug!(camera = %self.status.id, %origin, error = %err.error(), ?details, "pipeline error");
                    return Ok(RunEnd::Failed(failure));
                }
                _ => {}
            }
        }
    }

    /// What each frame goes through on its GStreamer streaming thread: a capture time, the
    /// camera's bookkeeping, and the hand-over to inference.
    fn frame_handler(
        &self,
        clock: Arc<Mutex<CaptureClock>>,
    ) -> impl FnMut(pipeline::RawFrame) -> std::result::Result<(), gst::FlowError> + Send + 'static {
        let (status, queue, overflow) = (self.status.clone(), self.queue.clone(), self.overflow);
        let settled = self.settled.clone();
        let mut last_running_time = None;
        let mut first_frame_of_run = true;
        move |raw| {
            let (capture_time, time_source) = {
                let mut clock = clock.lock().unwrap_or_else(|p| p.into_inner());
                // A looping file starts its running time again at zero: a new anchor.
                if last_running_time.is_some_and(|last| raw.running_time < last) {
                    clock.restart();
                }
                last_running_time = Some(raw.running_time);
                let camera_time = raw
                    .ntp_nanos
                    .map(ntp_to_unix)
                    .filter(|&t| CaptureClock::plausible_sender_time(t, now_unix_nanos()));
                match camera_time {
                    Some(camera_time) => (clock.stamp_exact(camera_time), TimeSource::CameraNtp),
                    None => (clock.stamp(raw.running_time, now_unix_nanos), clock.source()),
                }
            };
            status.frame_arrived(time_source, raw.keyframes_only);
            if first_frame_of_run {
                first_frame_of_run = false;
                status.reconnect_attempts.store(0, Ordering::Relaxed);
                status.set_state(CameraState::Streaming, None);
                settled.fire();
            }
            let frame = Frame {
                camera: status.clone(),
                image: raw.image,
                capture_time,
                time_source,
                keyframes_only: raw.keyframes_only,
            };
            match queue.push(frame, overflow) {
                PushOutcome::Closed => Err(gst::FlowError::Flushing),
                PushOutcome::Queued | PushOutcome::QueuedDroppedOldest => Ok(()),
            }
        }
    }
}

/// Times the frames the video ring keeps as the camera's descriptors are timed: the same
/// anchor, and the same shift of a sender's clock, so that a descriptor's capture time finds its
/// frame in the ring.
#[derive(Debug, Default)]
struct RingTiming {
    /// The ring's frames start their running time again (a file loops) before the analysed
    /// frames do: until the clock re-anchors, a frame cannot be timed. (the clock's generation
    /// then, the latest running time before).
    awaiting_anchor: Option<(u64, Duration)>,
    latest_running_time: Option<Duration>,
}

impl RingTiming {
    /// A flushing seek: the running time starts again.
    fn restarted(&mut self, clock: &CaptureClock) {
        if let Some(before) = self.latest_running_time.take() {
            self.awaiting_anchor = Some((clock.generation(), before));
        }
    }

    /// The capture time of a frame, when the clock can say it yet.
    fn capture_time(
        &mut self,
        clock: &CaptureClock,
        running_time: Duration,
        ntp_nanos: Option<u64>,
        now: UnixNanos,
    ) -> Option<UnixNanos> {
        if self.latest_running_time.is_some_and(|latest| running_time < latest) {
            self.restarted(clock);
        }
        self.latest_running_time = Some(running_time);
        if let Some(sender) = ntp_nanos
            .map(ntp_to_unix)
            .filter(|&t| CaptureClock::plausible_sender_time(t, now))
        {
            return Some(clock.sender_time_of(sender));
        }
        if let Some((generation, before)) = self.awaiting_anchor {
            // The clock re-anchored, or the analysed frames' time never went back (no new
            // anchor will come: the old one still holds).
            if clock.generation() != generation || running_time >= before {
                self.awaiting_anchor = None;
            } else {
                return None;
            }
        }
        clock.capture_time_of(running_time)
    }
}

fn ntp_to_unix(ntp_nanos: u64) -> UnixNanos {
    (ntp_nanos as i64).saturating_sub(NTP_UNIX_OFFSET_SECONDS * 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_epoch_converts_to_unix() {
        // 2026-01-01T00:00:00Z
        let unix = 1_767_225_600i64;
        let ntp = (unix + NTP_UNIX_OFFSET_SECONDS) as u64 * 1_000_000_000 + 5;
        assert_eq!(ntp_to_unix(ntp), unix * 1_000_000_000 + 5);
    }

    const MS: i64 = 1_000_000;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn the_ring_times_a_frame_as_its_descriptor_is_timed_across_loops() {
        let mut clock = CaptureClock::new(TimeSource::HostArrival);
        let mut ring = RingTiming::default();
        let wall = 1_000_000 * MS;
        // Not anchored yet: no time.
        assert_eq!(ring.capture_time(&clock, at(0), None, wall), None);
        let stamped = clock.stamp(at(0), || wall);
        assert_eq!(ring.capture_time(&clock, at(40), None, wall), Some(stamped + 40 * MS));
        // The file loops: the ring hears of it first, and waits for the new anchor.
        ring.restarted(&clock);
        assert_eq!(ring.capture_time(&clock, at(0), None, wall), None);
        clock.restart();
        let again = clock.stamp(at(0), || wall + 500 * MS);
        assert_eq!(ring.capture_time(&clock, at(40), None, wall), Some(again + 40 * MS));
        // A loop the analysed frames never see go back (the clock keeps its anchor): the ring
        // goes on with it once its times pass where they were, instead of waiting for ever.
        ring.restarted(&clock);
        assert_eq!(ring.capture_time(&clock, at(20), None, wall), None);
        assert_eq!(ring.capture_time(&clock, at(80), None, wall), Some(again + 80 * MS));
        // Time going back without a flush is a loop too.
        assert_eq!(ring.capture_time(&clock, at(0), None, wall), None);
    }

    #[test]
    fn a_cameras_clock_shifted_for_its_descriptors_is_shifted_for_the_ring_too() {
        let mut clock = CaptureClock::new(TimeSource::HostArrival);
        let mut ring = RingTiming::default();
        let wall = 1_000_000 * MS;
        let ntp = |unix: i64| (unix + NTP_UNIX_OFFSET_SECONDS * 1_000_000_000) as u64;
        // Stamped by arrival first; then the camera's sender reports say times 300 ms earlier
        // (its jitter buffer): the descriptors' times are shifted to stay increasing.
        let first = clock.stamp(at(0), || wall);
        let described = clock.stamp_exact(first - 300 * MS);
        assert!(described > first);
        let kept = ring.capture_time(&clock, at(40), Some(ntp(first - 300 * MS)), wall);
        assert_eq!(kept, Some(described), "the ring's frame carries the descriptor's time");
        // A later frame, while the shift slews back: the ring hears of it before it is
        // analysed, and gives it the time its descriptor will have.
        let later = first - 100 * MS;
        let kept = ring.capture_time(&clock, at(240), Some(ntp(later)), wall);
        assert_eq!(kept, Some(clock.stamp_exact(later)));
    }
}
