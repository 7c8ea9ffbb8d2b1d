//! Writes a camera's compressed stream into its ring, as it arrives and without decoding:
//!
//! ```text
//! appsrc ─▶ h264parse/h265parse (SPS/PPS at every keyframe) ─▶ splitmuxsink (mpegtsmux, one file per segment)
//! ```
//!
//! The camera's pipeline hands every compressed frame ahead of its decoder to [`Recorder::push`]
//! (a reference, not a copy). The recorder is a pipeline of its own: a slow disk or a muxer error
//! stops the recording, never the analysis, and its queue drops the oldest frames rather than
//! wait. MPEG-TS, not MP4, because a segment cut short by a crash is still readable up to where it
//! stopped; `splitmuxsink` starts every segment at a keyframe, so each one decodes on its own.
//!
//! A stream that is neither H.264 nor H.265 (MJPEG, raw video) can be kept only by encoding it:
//! when the node is configured to, the camera hands over its decoded frames instead, and
//! `videoconvert ! x264enc ! h264parse` comes before the same muxer.
//!
//! Segments are written as `open-…`, renamed `<start>-open.ts` (readable) as soon as their first
//! frame's capture time is known, and `<start>-<end>.ts` when they close (`ring.rs`); the times
//! are those the camera stamps on its descriptors, so a descriptor's capture time finds its frame
//! in the ring.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::live::{Group, LiveFrames};
use super::ring::{OPEN_PREFIX, Ring, RingLimits, RingStats};
use crate::clock::{UnixNanos, now_unix_nanos};
use crate::error::{Error, Result};

/// Buffer times are moved this far forward in the recording so that a decoding time before its
/// segment's start (B-frames) is never negative.
const TIME_BASE: Duration = Duration::from_secs(10);
/// Compressed video the recorder may hold before it drops the oldest: seconds of any camera.
const QUEUE_BYTES: u64 = 32 << 20;
/// Keyframes remembered to time the segment each one opens.
const KEYFRAMES_KEPT: usize = 64;
/// Frames remembered when the recording encodes: any of them may become a keyframe, and the
/// encoder and its queue may hold a few seconds of them.
const ENCODED_FRAMES_KEPT: usize = 1024;
/// How long a finishing recorder may take to close its last segment.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how a camera's video is kept.
#[derive(Debug, Clone)]
pub struct RecordSettings {
    /// The ring of each camera is a directory below this.
    pub root: std::path::PathBuf,
    pub segment: Duration,
    pub limits: RingLimits,
    /// Whether a stream that cannot be kept as it is is kept by encoding its decoded frames.
    pub reencode: bool,
    /// Where each recording also keeps its newest frames, until the ring has them.
    pub live: Arc<LiveFrames>,
}

impl RecordSettings {
    pub fn from_config(
        root: std::path::PathBuf,
        video: &crate::config::VideoConfig,
        live: Arc<LiveFrames>,
    ) -> RecordSettings {
        RecordSettings {
            root,
            segment: Duration::from_secs_f64(video.segment_seconds),
            limits: RingLimits {
                max_bytes: video.max_bytes_per_camera,
                max_age_ns: (video.max_age_hours * 3600e9) as i64,
            },
            reencode: video.reencode,
            live,
        }
    }
}

/// One frame of a camera, compressed or decoded, as the camera's pipeline hands it over.
pub struct Frame<'a> {
    pub caps: &'a gst::CapsRef,
    pub buffer: &'a gst::BufferRef,
    /// The buffer's running time in the camera's pipeline.
    pub running_time: Duration,
    /// Its capture time as the camera stamps it, when the camera knows it yet.
    pub capture_time: Option<UnixNanos>,
}

/// Closes or removes the segments of `camera` that a process before this one left open, and
/// prunes its ring to its limits: once per camera and process, before its first recording (a recorder of this process may still be
/// finishing its last segment when the next one starts).
pub fn recover(camera: &str, ring: &Ring, limits: RingLimits, stats: &RingStats) {
    match ring.recover_orphans() {
        Ok((0, 0)) => {}
        Ok((kept, removed)) => tracing::info!(
            camera,
            kept,
            removed,
            "video segments a previous run left open were closed or removed"
        ),
        Err(err) => tracing::warn!(camera, %err, "cannot close the video segments a previous run left open"),
    }
    // Limits lowered since, or a node stopped for longer than the ring keeps: pruned now, and
    // what the ring holds is known before its first segment closes.
    prune(camera, ring, limits, stats);
}

/// Keeps `ring` within `limits`, and says what it holds in `stats`.
fn prune(camera: &str, ring: &Ring, limits: RingLimits, stats: &RingStats) {
    match ring.prune(limits, now_unix_nanos()) {
        Ok(pruned) => {
            stats.record(pruned);
            if pruned.removed > 0 {
                tracing::debug!(
                    camera,
                    removed = pruned.removed,
                    bytes = pruned.bytes,
                    "video ring pruned"
                );
            }
        }
        Err(err) => tracing::warn!(camera, %err, "cannot prune the video ring"),
    }
}

/// Whether a camera's stream can be kept without re-encoding.
pub fn parser_for(caps: &gst::CapsRef) -> Option<&'static str> {
    match caps.structure(0)?.name().as_str() {
        "video/x-h264" => Some("h264parse"),
        "video/x-h265" => Some("h265parse"),
        _ => None,
    }
}

/// Whether frames of `caps` are decoded pictures, which a recording encodes.
pub fn is_raw_video(caps: &gst::CapsRef) -> bool {
    caps.structure(0).is_some_and(|s| s.name() == "video/x-raw")
}

/// The elements between the recording's source and its muxer, for a stream of `caps`, and
/// whether they encode.
fn recording_chain(caps: &gst::CapsRef, segment: Duration) -> Result<(Vec<gst::Element>, bool)> {
    if let Some(parser_name) = parser_for(caps) {
        let parser = make(parser_name)?;
        // Parameter sets before every keyframe: each segment decodes on its own.
        parser.set_property("config-interval", -1i32);
        return Ok((vec![parser], false));
    }
    if !is_raw_video(caps) {
        let kind = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
        return Err(Error::Gstreamer(format!(
            "{kind} cannot be kept without re-encoding (H.264 and H.265 can; video.reencode keeps the others)"
        )));
    }
    let convert = make("videoconvert")?;
    // 4:2:0, which every H.264 decoder plays: 4:2:2 Motion JPEG would otherwise become High
    // 4:2:2 H.264.
    let planar = make("capsfilter")?;
    planar.set_property(
        "caps",
        gst::Caps::builder("video/x-raw").field("format", "I420").build(),
    );
    let encoder = make("x264enc")?;
    // The cheapest preset, at constant quality (CRF 23, as clips are): a street scene at the
    // default 2 Mbit/s either starves or wastes bits. No B-frames or look-ahead (zerolatency):
    // nothing is held back, and each frame costs the same. One thread: the camera's analysis
    // shares the cores. splitmuxsink asks for a keyframe where each segment is due; x264's own
    // interval is only a backstop, at twice the segment, so that the two never fall a frame
    // apart.
    encoder.set_property_from_str("speed-preset", "ultrafast");
    encoder.set_property_from_str("tune", "zerolatency");
    encoder.set_property_from_str("pass", "qual");
    encoder.set_property("quantizer", 23u32);
    encoder.set_property("threads", 1u32);
    let frame_rate = caps
        .structure(0)
        .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map_or(25.0, |f| f.numer() as f64 / f.denom() as f64);
    let key_interval = (2.0 * segment.as_secs_f64() * frame_rate).ceil().clamp(1.0, 3000.0) as u32;
    encoder.set_property("key-int-max", key_interval);
    let parser = make("h264parse")?;
    parser.set_property("config-interval", -1i32);
    Ok((vec![convert, planar, encoder, parser], true))
}

fn make(factory: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        Error::Gstreamer(format!(
            "element {factory} is missing: is its GStreamer plugin installed?"
        ))
    })
}

/// A segment being written: readable under its start time as soon as that is known.
struct OpenSegment {
    /// Recording time of its first frame.
    started: Duration,
    /// Where it is now: renamed to `<start>-open.ts` once its start's capture time is known.
    path: std::path::PathBuf,
    start: Option<UnixNanos>,
}

/// Times of the frames pushed so far, to name the segments.
#[derive(Default)]
struct Timing {
    /// (recording time, capture time if known) of the latest keyframes.
    keyframes: VecDeque<(Duration, Option<UnixNanos>)>,
    /// capture time − recording time, from the latest frame whose capture time was known.
    offset: Option<i128>,
    /// The segments being written, by the name splitmuxsink gave them.
    opened: HashMap<String, OpenSegment>,
    /// Where the frames pushed so far end: the latest presentation time plus one frame.
    pushed_until: Duration,
    /// The latest presentation time pushed, for the frame interval.
    latest: Option<Duration>,
}

impl Timing {
    fn capture_of(&self, recording_time: Duration) -> Option<UnixNanos> {
        let t = self.offset? + recording_time.as_nanos() as i128;
        UnixNanos::try_from(t).ok()
    }

    /// The capture time of the keyframe a segment opened at `recording_time` starts with.
    fn segment_start(&self, recording_time: Duration) -> Option<UnixNanos> {
        let nearest = self.keyframes.iter().min_by_key(|(t, _)| t.abs_diff(recording_time))?;
        nearest.1.or_else(|| self.capture_of(nearest.0))
    }
}

pub struct Recorder {
    camera: String,
    source: gst_app::AppSrc,
    caps: gst::Caps,
    /// Decoded frames are encoded: each is copied first, so that the recording never holds
    /// buffers of the decoder's pool, which a slow encoder would otherwise empty.
    encodes: bool,
    /// Added to the camera's running times; the first frame's sets it.
    shift: Option<i128>,
    timing: Arc<Mutex<Timing>>,
    failed: Arc<AtomicBool>,
    ending: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
    /// The frames since the latest keyframe, kept in memory (streams kept as they come only).
    newest: Option<(Arc<LiveFrames>, Arc<Mutex<Group>>)>,
}

impl Recorder {
    /// Starts recording a stream of `caps` (H.264 or H.265 as it is, raw video by encoding it)
    /// into `ring`; what the ring holds goes to `stats` each time a segment closes.
    pub fn start(
        camera: &str,
        ring: Ring,
        caps: &gst::CapsRef,
        settings: &RecordSettings,
        stats: Arc<RingStats>,
    ) -> Result<Recorder> {
        let (segment, limits) = (settings.segment, settings.limits);
        let (chain, encodes) = recording_chain(caps, segment)?;
        ring.create()?;
        let pipeline = gst::Pipeline::new();
        // No clock: the recording runs as fast as frames come, never waiting to render them.
        pipeline.use_clock(None::<&gst::Clock>);
        let caps = caps.to_owned();
        let source = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .max_bytes(QUEUE_BYTES)
            .build();
        source.set_property_from_str("leaky-type", "downstream");
        let sink = make("splitmuxsink")?;
        sink.set_property("muxer-factory", "mpegtsmux");
        // Every frame on disk as soon as the muxer lets it go (one write per frame), not 64 KiB
        // later: a snapshot of a time just before the frames kept in memory (`video::live`)
        // finds it in the ring, even from a low-bitrate camera, which fills 64 KiB in seconds.
        let file = make("filesink")?;
        file.set_property_from_str("buffer-mode", "unbuffered");
        sink.set_property("sink", &file);
        sink.set_property("max-size-time", segment.as_nanos() as u64);
        // The encoder is asked for a keyframe where a segment is due, instead of cutting late.
        sink.set_property("send-keyframe-requests", encodes);
        let started = now_unix_nanos();
        let location = ring.dir().join(format!("{OPEN_PREFIX}{started}-%05d.ts"));
        sink.set_property("location", location.to_string_lossy().as_ref());
        let elements: Vec<&gst::Element> = std::iter::once(source.upcast_ref())
            .chain(&chain)
            .chain([&sink])
            .collect();
        pipeline.add_many(elements.iter().copied())?;
        gst::Element::link_many(elements.iter().copied())?;

        let timing = Arc::new(Mutex::new(Timing::default()));
        let failed = Arc::new(AtomicBool::new(false));
        let ending = Arc::new(AtomicBool::new(false));
        let bus = pipeline
            .bus()
            .ok_or_else(|| Error::Gstreamer("recording pipeline without bus".into()))?;
        let watcher = {
            let watch = Watch {
                camera: camera.to_string(),
                ring,
                limits,
                timing: timing.clone(),
                failed: failed.clone(),
                ending: ending.clone(),
                stats,
            };
            let pipeline = pipeline.clone();
            std::thread::Builder::new()
                .name(format!("record-{camera}"))
                .spawn(move || watch.run(&bus, &pipeline))
                .map_err(|e| Error::io("starting a recording thread", e))?
        };
        if pipeline.set_state(gst::State::Playing).is_err() {
            failed.store(true, Ordering::Release);
            return Err(Error::Gstreamer(format!(
                "camera {camera}: the recording pipeline does not start"
            )));
        }
        let newest = (!encodes).then(|| (settings.live.clone(), settings.live.start(camera, &caps)));
        Ok(Recorder {
            camera: camera.to_string(),
            source,
            caps,
            encodes,
            shift: None,
            timing,
            failed,
            ending,
            watcher: Some(watcher),
            newest,
        })
    }

    /// Whether the recording stopped on an error (said in the log once).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Whether frames of `caps` can go on into this recording.
    pub fn accepts(&self, caps: &gst::CapsRef) -> bool {
        self.caps.as_ref() == caps
    }

    /// Hands one frame to the recording. Never blocks.
    pub fn push(&mut self, frame: &Frame<'_>) {
        if self.failed() {
            return;
        }
        let buffer = frame.buffer;
        let Some(pts) = buffer.pts().or(buffer.dts()) else {
            return;
        };
        // Camera running time → recording time, the same shift for decoding times.
        let shift = *self.shift.get_or_insert(
            frame.running_time.as_nanos() as i128 - pts.nseconds() as i128 + TIME_BASE.as_nanos() as i128,
        );
        let move_time = |t: gst::ClockTime| {
            u64::try_from(t.nseconds() as i128 + shift)
                .ok()
                .map(gst::ClockTime::from_nseconds)
        };
        let Some(recording_pts) = move_time(pts) else {
            return;
        };
        let recording_time = Duration::from_nanos(recording_pts.nseconds());
        {
            let mut timing = self.timing.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(capture) = frame.capture_time {
                timing.offset = Some(capture as i128 - recording_time.as_nanos() as i128);
            }
            // A buffer's duration when it has one, else the step from the frame before.
            let step = buffer
                .duration()
                .map(|d| Duration::from_nanos(d.nseconds()))
                .or_else(|| timing.latest.map(|l| recording_time.saturating_sub(l)))
                .unwrap_or_default();
            timing.latest = Some(recording_time);
            timing.pushed_until = timing.pushed_until.max(recording_time + step);
            // Decoded frames carry no DELTA_UNIT flag: each is a keyframe the encoder may make.
            let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
            if let Some((_, group)) = &self.newest {
                // Timed as the ring times the segment a keyframe may start.
                group
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keep(buffer, keyframe.then_some(recording_time), |t| timing.capture_of(t));
            }
            if keyframe {
                let kept = if self.encodes {
                    ENCODED_FRAMES_KEPT
                } else {
                    KEYFRAMES_KEPT
                };
                if timing.keyframes.len() >= kept {
                    timing.keyframes.pop_front();
                }
                timing.keyframes.push_back((recording_time, frame.capture_time));
            }
        }
        let mut owned = match self.encodes {
            true => match buffer.copy_deep() {
                Ok(copy) => copy,
                Err(_) => return,
            },
            false => buffer.to_owned(),
        };
        {
            let owned = owned.make_mut();
            owned.set_pts(buffer.pts().and_then(move_time));
            owned.set_dts(buffer.dts().and_then(move_time));
        }
        if self.source.push_buffer(owned).is_err() {
            self.failed.store(true, Ordering::Release);
        }
    }

    /// Closes the last segment and stops, without waiting for it: from a streaming thread.
    pub fn finish(mut self) {
        self.end();
        // The watcher sets the pipeline to NULL once the last segment is closed.
        drop(self.watcher.take());
    }

    /// Closes the last segment and waits until it is in the ring (at most a few seconds).
    pub fn finish_and_wait(mut self) {
        self.end();
        if let Some(watcher) = self.watcher.take()
            && watcher.join().is_err()
        {
            tracing::warn!(camera = %self.camera, "the recording thread panicked");
        }
    }
}

impl Recorder {
    fn end(&self) {
        if let Some((live, group)) = &self.newest {
            live.stop(&self.camera, group);
        }
        self.ending.store(true, Ordering::Release);
        let _ = self.source.end_of_stream();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.watcher.is_some() {
            self.end();
        }
    }
}

/// Gives each open segment whose start time has become known its readable name, so that video
/// can be exported while its segment is still being written (the ENDED event of a track often
/// comes before the segment holding its best view closes). splitmuxsink goes on writing through
/// its open file whatever the file is called.
fn name_open_segments(camera: &str, ring: &Ring, timing: &Mutex<Timing>) {
    let mut held = timing.lock().unwrap_or_else(|p| p.into_inner());
    let starts: Vec<(String, UnixNanos)> = held
        .opened
        .iter()
        .filter(|(_, open)| open.start.is_none())
        .filter_map(|(name, open)| Some((name.clone(), held.segment_start(open.started)?)))
        .collect();
    for (name, start) in starts {
        let Some(open) = held.opened.get_mut(&name) else {
            continue;
        };
        let readable = ring.open_segment_path(start);
        match std::fs::rename(&open.path, &readable) {
            Ok(()) => {
                open.path = readable;
                open.start = Some(start);
            }
            // Nothing written yet: the next look renames it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(camera, %err, "cannot name an open video segment");
                open.start = Some(start);
            }
        }
    }
}

/// Renames a closed segment to the capture times it covers. Times the camera never gave (no
/// frame of it was stamped yet) are taken from the wall clock now, less the segment's length.
fn close_segment(
    camera: &str,
    ring: &Ring,
    from: &std::path::Path,
    start: Option<UnixNanos>,
    end: Option<UnixNanos>,
    length: Duration,
) {
    let (start, end) = match (start, end) {
        (Some(start), Some(end)) if start <= end => (start, end),
        _ => {
            let end = now_unix_nanos();
            tracing::debug!(camera, segment = %from.display(), "segment timed by the wall clock");
            (end - length.as_nanos() as i64, end)
        }
    };
    let to = ring.segment_path(start, end);
    match std::fs::metadata(from) {
        Ok(meta) if meta.len() > 0 => {
            if let Err(err) = std::fs::rename(from, &to) {
                tracing::warn!(camera, %err, segment = %from.display(), "cannot name a closed video segment");
            }
        }
        // Nothing was written (the recording ended at once): nothing to keep.
        _ => {
            let _ = std::fs::remove_file(from);
        }
    }
}

/// The recording's bus: names each segment by its capture times when it closes, keeps the ring
/// within its limits, and ends the recording on end-of-stream or an error.
struct Watch {
    camera: String,
    ring: Ring,
    limits: RingLimits,
    timing: Arc<Mutex<Timing>>,
    failed: Arc<AtomicBool>,
    ending: Arc<AtomicBool>,
    stats: Arc<RingStats>,
}

impl Watch {
    fn run(self, bus: &gst::Bus, pipeline: &gst::Pipeline) {
        let Watch {
            camera,
            ring,
            limits,
            timing,
            failed,
            ending,
            stats,
        } = self;
        let camera = camera.as_str();
        let mut ending_since: Option<std::time::Instant> = None;
        loop {
            let message = bus.timed_pop(gst::ClockTime::from_mseconds(200));
            // The recorder is gone (finish or drop sent end-of-stream): wait for it, within bounds.
            if ending.load(Ordering::Acquire) {
                let since = *ending_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > FINISH_TIMEOUT {
                    tracing::warn!(camera, "the recording did not close its last segment in time");
                    break;
                }
            }
            let Some(message) = message else {
                name_open_segments(camera, &ring, &timing);
                continue;
            };
            match message.view() {
                gst::MessageView::Element(element) => {
                    let Some(s) = element.structure() else { continue };
                    let location = s.get::<String>("location").ok();
                    let running_time = s.get::<gst::ClockTime>("running-time").ok();
                    let (Some(location), Some(running_time)) = (location, running_time) else {
                        continue;
                    };
                    let recording_time = Duration::from_nanos(running_time.nseconds());
                    let mut held = timing.lock().unwrap_or_else(|p| p.into_inner());
                    match s.name().as_str() {
                        "splitmuxsink-fragment-opened" => {
                            let segment = OpenSegment {
                                started: recording_time,
                                path: location.clone().into(),
                                start: None,
                            };
                            held.opened.insert(location, segment);
                            drop(held);
                            name_open_segments(camera, &ring, &timing);
                        }
                        "splitmuxsink-fragment-closed" => {
                            let Some(open) = held.opened.remove(&location) else {
                                continue;
                            };
                            let start = open.start.or_else(|| held.segment_start(open.started));
                            // The last segment closes when the recording ends, which after an
                            // outage is the stall timeout after the last frame: it ends where its
                            // frames do.
                            let end = held.capture_of(recording_time.min(held.pushed_until));
                            drop(held);
                            let length = recording_time.saturating_sub(open.started);
                            close_segment(camera, &ring, &open.path, start, end, length);
                            prune(camera, &ring, limits, &stats);
                        }
                        _ => {}
                    }
                }
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(err) => {
                    failed.store(true, Ordering::Release);
                    tracing::warn!(camera, error = %err.error(), details = ?err.debug(), "video recording stopped");
                    break;
                }
                _ => {}
            }
        }
        let _ = pipeline.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_segment_starts_at_the_capture_time_of_the_keyframe_it_opened_at() {
        let mut timing = Timing::default();
        // Keyframes at 1 s and 2 s of recording time; the first before the camera's clock was
        // anchored (no capture time yet), the second with one.
        timing.keyframes.push_back((Duration::from_secs(1), None));
        timing
            .keyframes
            .push_back((Duration::from_secs(2), Some(5_000 * MS as i64)));
        timing.offset = Some(5_000 * MS as i128 - 2_000 * MS as i128);
        // splitmuxsink reports a running time near, not at, the keyframe.
        assert_eq!(
            timing.segment_start(Duration::from_millis(2_010)),
            Some(5_000 * MS as i64)
        );
        // The unanchored keyframe is timed by the offset learnt later: the same clock, linear.
        assert_eq!(
            timing.segment_start(Duration::from_millis(990)),
            Some(4_000 * MS as i64)
        );
        assert_eq!(timing.capture_of(Duration::from_millis(2_500)), Some(5_500 * MS as i64));
        assert_eq!(Timing::default().segment_start(Duration::from_secs(1)), None);
    }

    #[test]
    fn streams_are_kept_as_they_come_or_encoded_and_others_refused_by_name() {
        gst::init().unwrap();
        let second = Duration::from_secs(1);
        let h265 = gst::Caps::builder("video/x-h265").build();
        let (chain, encodes) = recording_chain(&h265, second).unwrap();
        assert!(!encodes);
        assert_eq!(chain.len(), 1, "a parser alone");
        let raw = gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("framerate", gst::Fraction::new(30, 1))
            .build();
        let (chain, encodes) = recording_chain(&raw, Duration::from_secs(2)).unwrap();
        assert!(encodes);
        // A keyframe at least every other segment, when none is asked for: 4 s at 30 fps.
        assert_eq!(chain[2].property::<u32>("key-int-max"), 120);
        let jpeg = gst::Caps::builder("image/jpeg").build();
        let refused = recording_chain(&jpeg, second).err().unwrap().to_string();
        assert!(
            refused.contains("image/jpeg") && refused.contains("video.reencode"),
            "{refused}"
        );
    }
}
