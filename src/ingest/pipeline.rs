//! One camera's GStreamer pipeline:
//!
//! ```text
//! uridecodebin ─▶ [rate gate] videoscale ─▶ videoconvert ─▶ caps RGB ≤ max size ─▶ appsink
//!  └ [keyframe gate] ahead of the decoder inside it
//! ```
//!
//! The keyframe gate, a probe on the decoder's sink pad, keeps compressed frames that nothing
//! would analyse from being decoded at all ([`KeyframeGate`]): decoding is the largest cost of a
//! camera after inference (a 720p25 stream: about a tenth of a core here).
//!
//! Frames above the analysis rate are dropped by the rate gate, a probe on `videoscale`'s sink
//! pad, before they cost a scale or a colour conversion; scaling happens before conversion
//! because converting fewer pixels is cheaper.
//!
//! No element here asserts on what a source sends. `videorate` did: a still image (a JPEG or
//! PNG, one buffer without a duration) made it abort the whole process
//! (`GST_BUFFER_DURATION_IS_VALID (outbuf)`). The gate needs nothing but timestamps, and falls
//! back to arrival time for buffers without one.
//!
//! While it runs, the pipeline records what it learns about its source ([`SourceFacts`]: the
//! type GStreamer found, the streams it exposed), so that a failure can be explained in an
//! operator's words (see `failure.rs`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::config::{DecodeMode, RtspTransport};
use crate::error::{Error, Result};

/// What the pipeline is asked to deliver.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub uri: String,
    /// 0: every frame.
    pub analysis_fps: f64,
    pub max_width: u32,
    pub max_height: u32,
    /// Pace buffers against the clock (a file played like a camera).
    pub sync: bool,
    /// The video decoder's `max-threads`, where it has one (libav's do); 0: its own choice.
    pub decoder_threads: u32,
    pub decode: DecodeMode,
    pub rtsp: RtspOptions,
    /// The video ring encodes a stream it cannot keep as it comes (not H.264 or H.265): every
    /// frame of such a stream is decoded, whatever `decode` says, and heard by the tap.
    pub reencode: bool,
}

#[derive(Clone, Default)]
pub struct RtspOptions {
    pub transport: RtspTransport,
    pub latency_ms: u32,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Where `password` is read from before each connection attempt.
    pub password_file: Option<PathBuf>,
}

impl PipelineSpec {
    /// This spec with the password read from its file, if it has one: read at each attempt, so
    /// a changed password or a repaired file mode is taken without a restart.
    pub fn with_password_from_file(&self) -> Result<std::borrow::Cow<'_, PipelineSpec>> {
        let Some(path) = &self.rtsp.password_file else {
            return Ok(std::borrow::Cow::Borrowed(self));
        };
        let mut spec = self.clone();
        spec.rtsp.password = Some(crate::files::read_secret_line(path, "camera password file")?);
        Ok(std::borrow::Cow::Owned(spec))
    }
}

impl std::fmt::Debug for RtspOptions {
    // Credentials never reach a log line, not even through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtspOptions")
            .field("transport", &self.transport)
            .field("latency_ms", &self.latency_ms)
            .field("credentials", &self.username.is_some())
            .finish()
    }
}

/// A decoded, converted frame as it leaves the pipeline.
pub struct RawFrame {
    pub image: image::RgbImage,
    /// Running time of the buffer: monotonic within one pipeline run.
    pub running_time: Duration,
    /// The sender's capture time (NTP, nanoseconds since 1900), when RTCP told us.
    pub ntp_nanos: Option<u64>,
    /// The decoder was given only keyframes when this frame came through.
    pub keyframes_only: bool,
}

/// What became of one compressed frame of the stream, before any analysis-rate decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrame {
    Decoded,
    /// Kept from the decoder by the keyframe gate.
    NotDecoded,
}

/// One frame of the analysed video stream, as the video ring hears of it.
pub struct TappedFrame<'a> {
    pub caps: &'a gst::CapsRef,
    pub buffer: &'a gst::BufferRef,
    pub running_time: Duration,
    /// As [`RawFrame::ntp_nanos`].
    pub ntp_nanos: Option<u64>,
}

/// What the video ring hears of the analysed stream.
pub enum Tapped<'a> {
    /// Ahead of the decoder, as the camera sent it: every frame, decoded or not.
    Compressed(TappedFrame<'a>),
    /// Out of the decoder, before the analysis rate leaves any out: for a stream that cannot be
    /// kept as it came.
    Decoded(TappedFrame<'a>),
    /// A flushing seek (a file that loops): running time starts again.
    Flushed,
}

/// Hears every frame of the analysed video stream, compressed and decoded, on its streaming
/// threads.
pub type StreamTap = Box<dyn FnMut(Tapped<'_>) + Send>;

pub struct Pipeline {
    pub pipeline: gst::Pipeline,
    pub facts: Arc<SourceFacts>,
}

/// What a run of the pipeline found out about its source.
#[derive(Debug, Default)]
pub struct SourceFacts {
    /// The source's type as GStreamer's typefinder named it (`video/quicktime`, `image/jpeg`,
    /// `text/html`): unset for sources whose type is known without looking (RTSP).
    container: Mutex<Option<String>>,
    /// Media types of the decoded streams that were not video (`audio/x-raw`, ...).
    other_streams: Mutex<Vec<String>>,
    /// Streams no installed decoder handles (`video/x-h265`, ...).
    undecodable: Mutex<Vec<String>>,
    video_linked: AtomicBool,
    /// The source has exposed all its streams: if none was video, none will be.
    all_streams_known: AtomicBool,
}

impl SourceFacts {
    pub fn container(&self) -> Option<String> {
        self.container.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A single picture (JPEG, PNG, ...), not a stream of them: it ends after one frame.
    pub fn is_still_image(&self) -> bool {
        self.container().is_some_and(|c| c.starts_with("image/"))
    }

    pub fn has_video(&self) -> bool {
        self.video_linked.load(Ordering::Acquire)
    }

    /// A video stream that no installed decoder handles, if there was one.
    pub fn undecodable_video(&self) -> Option<String> {
        let undecodable = self.undecodable.lock().unwrap_or_else(|p| p.into_inner());
        undecodable.iter().find(|t| t.starts_with("video/")).cloned()
    }

    /// Media types of the streams that were not video, so far.
    pub fn other_streams(&self) -> Vec<String> {
        self.other_streams.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The non-video streams, when the source has exposed all of its streams and none was video.
    pub fn only_other_streams(&self) -> Option<Vec<String>> {
        // Acquire pairs with the streaming threads' Release: "all known" then implies every link
        // made before no-more-pads is seen.
        let done = self.all_streams_known.load(Ordering::Acquire) && !self.has_video();
        done.then(|| self.other_streams())
    }

    fn set_container(&self, caps: &gst::CapsRef) {
        let mut container = self.container.lock().unwrap_or_else(|p| p.into_inner());
        // The first typefinder looks at the source itself; later ones at streams inside it.
        if container.is_none() {
            *container = caps.structure(0).map(|s| s.name().to_string());
        }
    }
}

/// Keeps at most one frame per slot of `1 / analysis_fps` seconds of stream time, slots counted
/// from the first frame (what `videorate drop-only` did): a source slightly faster than the
/// analysis rate loses one frame in many, not every other one. Time going backwards (a file
/// that loops, a camera whose timestamps restart) starts the slots again.
///
/// Slots begin a tenth of an interval early: frames that come exactly one interval apart (a
/// camera's keyframes, when only those are decoded) then each open a slot of their own even when
/// network jitter stamps one a little early, instead of falling into the slot before.
#[derive(Debug)]
pub struct RateGate {
    interval: Option<Duration>,
    /// First frame's time and the slot of the last frame kept.
    anchor: Option<(Duration, u64)>,
    last_kept: Duration,
    /// Added to every time after a loop, so that time goes on where the last loop ended.
    offset: Duration,
    /// The end of the latest frame seen (offset included).
    seen_until: Duration,
}

impl RateGate {
    /// `analysis_fps` 0 keeps every frame.
    pub fn new(analysis_fps: f64) -> RateGate {
        let interval = (analysis_fps > 0.0).then(|| Duration::from_secs_f64(1.0 / analysis_fps));
        RateGate {
            interval,
            anchor: None,
            last_kept: Duration::ZERO,
            offset: Duration::ZERO,
            seen_until: Duration::ZERO,
        }
    }

    /// After a flushing seek (a file that loops) times start again from zero: they are carried
    /// on from the end of the last frame seen. Otherwise a clip no longer than one interval
    /// replays the times of the slot already used and is never analysed again, and restarting
    /// the slots instead would analyse a clip of a few frames once per loop, far above the rate.
    pub fn restart(&mut self) {
        self.offset = self.seen_until;
    }

    /// `duration`: the frame's, or zero if unknown.
    pub fn admit(&mut self, time: Duration, duration: Duration) -> bool {
        let time = time + self.offset;
        self.seen_until = self.seen_until.max(time + duration);
        let Some(interval) = self.interval else {
            return true;
        };
        let slot_of = |anchor: Duration| {
            ((time - anchor + interval / SLOT_LEAD_DIVISOR).as_nanos() / interval.as_nanos().max(1)) as u64
        };
        let keep = match self.anchor {
            Some((anchor, last_slot)) if time >= self.last_kept && time >= anchor => {
                let slot = slot_of(anchor);
                (slot > last_slot).then_some((anchor, slot))
            }
            _ => Some((time, 0)),
        };
        match keep {
            Some(anchor) => {
                self.anchor = Some(anchor);
                self.last_kept = time;
                true
            }
            None => false,
        }
    }
}

/// Slots of the rate gate begin `interval / SLOT_LEAD_DIVISOR` early.
const SLOT_LEAD_DIVISOR: u32 = 10;

/// How many keyframe intervals `DecodeMode::Auto` looks back on: one short group of pictures
/// among long ones must not switch decoding to keyframes only.
const KEYFRAME_HISTORY: usize = 4;
/// Keyframe intervals up to this much longer than the analysis interval still count as keeping
/// the rate: cameras at 29.97 fps put keyframes 0.1 % further apart than a whole-number rate.
const KEYFRAME_TOLERANCE: f64 = 1.01;

/// Decides, ahead of the decoder, whether a compressed frame is decoded. A delta frame needs
/// every frame before it back to its keyframe, so the decision is made at each keyframe for the
/// whole group of pictures it starts: either all of it is decoded, or only the keyframe.
///
/// A keyframe decodes to exactly the picture it would be in a full decode, so skipping deltas
/// changes which frames are analysed (those at keyframes), never what a frame looks like.
#[derive(Debug)]
pub struct KeyframeGate {
    mode: DecodeMode,
    /// Time between analysed frames; `None`: every frame is analysed, all must be decoded.
    analysis_interval: Option<Duration>,
    last_keyframe: Option<Duration>,
    /// The latest keyframe intervals, newest last.
    recent: std::collections::VecDeque<Duration>,
    /// `Auto` keeps decoding everything for good once this is set (see [`KeyframeGate::new`]).
    auto_ruled_out: bool,
    keyframes_only: bool,
}

impl KeyframeGate {
    /// `paced_by_sink`: a file played in real time, paced by the frames that reach the sink.
    /// `Auto` then decodes everything: with only keyframes, a file that loops in less than two
    /// analysis intervals would have no frame left to wait for, and spin.
    pub fn new(mode: DecodeMode, analysis_fps: f64, paced_by_sink: bool) -> KeyframeGate {
        KeyframeGate {
            mode,
            analysis_interval: (analysis_fps > 0.0).then(|| Duration::from_secs_f64(1.0 / analysis_fps)),
            last_keyframe: None,
            recent: std::collections::VecDeque::with_capacity(KEYFRAME_HISTORY),
            auto_ruled_out: paced_by_sink,
            keyframes_only: mode == DecodeMode::Keyframes,
        }
    }

    /// Whether the decoder gets this frame. `time`: its timestamp, if it has one. `reordered`:
    /// its decoding and presentation times differ (B-frames). `Auto` then decodes everything
    /// from then on: a decoder that reorders holds each picture until later ones arrive, which
    /// with keyframes alone would delay every analysed frame by a keyframe interval or more.
    pub fn admit(&mut self, keyframe: bool, time: Option<Duration>, reordered: bool) -> bool {
        self.auto_ruled_out |= reordered;
        if !keyframe {
            return !self.keyframes_only;
        }
        if let Some(time) = time {
            match self.last_keyframe {
                Some(last) if time > last => {
                    if self.recent.len() == KEYFRAME_HISTORY {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(time - last);
                }
                // A file that loops, a camera whose timestamps restart: measure afresh.
                Some(last) if time < last => self.recent.clear(),
                _ => {}
            }
            self.last_keyframe = Some(time);
        }
        self.keyframes_only = match self.mode {
            DecodeMode::All => false,
            DecodeMode::Keyframes => true,
            DecodeMode::Auto if self.auto_ruled_out => false,
            DecodeMode::Auto => self.analysis_interval.is_some_and(|analysis| {
                let longest = self.recent.iter().max();
                self.recent.len() >= 2
                    && longest.is_some_and(|&k| k.as_secs_f64() <= analysis.as_secs_f64() * KEYFRAME_TOLERANCE)
            }),
        };
        true
    }

    /// Whether only keyframes are being decoded now.
    pub fn keyframes_only(&self) -> bool {
        self.keyframes_only
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Always back to NULL so that GStreamer releases threads, sockets and file handles.
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn make(factory: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        Error::Gstreamer(format!(
            "element {factory} is missing: is its GStreamer plugin installed?"
        ))
    })
}

/// Builds the pipeline (in NULL state). `on_frame` runs on a GStreamer streaming thread for each
/// frame; `on_stream_frame` for each compressed frame, decoded or not, before rate filtering;
/// `tap` for each frame as it reaches the decoder and as it leaves it.
pub fn build(
    spec: &PipelineSpec,
    mut on_frame: impl FnMut(RawFrame) -> std::result::Result<(), gst::FlowError> + Send + 'static,
    on_stream_frame: impl Fn(StreamFrame) + Send + Sync + 'static,
    tap: Option<StreamTap>,
) -> Result<Pipeline> {
    let tap = tap.map(|tap| Arc::new(Mutex::new(tap)));
    let decoder_tapped = Arc::new(AtomicBool::new(false));
    let on_stream_frame = Arc::new(on_stream_frame);
    let keyframes_only = Arc::new(AtomicBool::new(false));
    let pipeline = gst::Pipeline::new();
    let decode = make("uridecodebin")?;
    decode.set_property("uri", &spec.uri);
    let rtsp = spec.rtsp.clone();
    decode.connect("source-setup", false, move |args| {
        if let Some(source) = args.get(1).and_then(|v| v.get::<gst::Element>().ok()) {
            configure_source(&source, &rtsp);
        }
        None
    });

    let facts = Arc::new(SourceFacts::default());
    let typefind_facts = facts.clone();
    let decoder_threads = spec.decoder_threads;
    let (decode_mode, analysis_fps, paced_by_sink) = (spec.decode, spec.analysis_fps, spec.sync);
    let reencode = spec.reencode;
    let keyframes_flag = keyframes_only.clone();
    let skipped = on_stream_frame.clone();
    // Only the first video stream is analysed (see pad-added): a second one's decoder must not
    // count frames or switch the flag of the first.
    let gated = AtomicBool::new(false);
    let decoder_tap = tap.clone();
    let tapping_decoder = decoder_tapped.clone();
    decode.connect("deep-element-added", false, move |args| {
        let element = args.get(2).and_then(|v| v.get::<gst::Element>().ok())?;
        if is_video_decoder(&element) {
            configure_decoder(&element, decoder_threads);
            if !gated.swap(true, Ordering::AcqRel) {
                // Before the gate: the ring keeps every frame, decoded or not.
                if let Some(tap) = &decoder_tap {
                    tap_decoder(&element, tap.clone());
                    tapping_decoder.store(true, Ordering::Release);
                }
                let gate = KeyframeGate::new(decode_mode, analysis_fps, paced_by_sink);
                gate_decoder(&element, gate, reencode, keyframes_flag.clone(), skipped.clone());
            }
        }
        if element.factory().is_some_and(|f| f.name() == "typefind") {
            let facts = typefind_facts.clone();
            element.connect("have-type", false, move |args| {
                if let Some(caps) = args.get(2).and_then(|v| v.get::<gst::Caps>().ok()) {
                    facts.set_container(&caps);
                }
                None
            });
        }
        None
    });

    let scale = make("videoscale")?;
    let convert = make("videoconvert")?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", gst::IntRange::new(16, spec.max_width as i32))
        .field("height", gst::IntRange::new(16, spec.max_height as i32))
        // Square pixels make videoscale keep the picture's shape instead of changing the PAR.
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    let sink = gst_app::AppSink::builder()
        .caps(&caps.build())
        .sync(spec.sync)
        .max_buffers(1)
        .drop(false)
        .build();

    pipeline.add_many([&decode, &scale, &convert, sink.upcast_ref()])?;
    gst::Element::link_many([&scale, &convert, sink.upcast_ref()])?;

    let scale_sink = scale
        .static_pad("sink")
        .ok_or_else(|| Error::Gstreamer("videoscale has no sink pad".into()))?;
    // Before the rate gate's probe: the ring hears of every decoded frame.
    if let Some(tap) = tap.filter(|_| spec.reencode) {
        tap_decoded(&scale_sink, tap, decoder_tapped);
    }
    let gate = Mutex::new(RateGate::new(spec.analysis_fps));
    scale_sink.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_FLUSH,
        move |pad, info| {
            if let Some(gst::PadProbeData::Event(event)) = &info.data {
                if event.type_() == gst::EventType::FlushStop {
                    gate.lock().unwrap_or_else(|p| p.into_inner()).restart();
                }
                return gst::PadProbeReturn::Ok;
            }
            on_stream_frame(StreamFrame::Decoded);
            let Some(buffer) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            match stream_time(pad, buffer) {
                // `Handled`, not `Drop`: gstreamer-rs takes the buffer out of the probe info, so on
                // `Drop` GStreamer 1.22 unrefs a NULL pointer, a GLib critical per dropped frame (seen
                // through the log bridge). `Handled` says the probe consumed it; Rust unrefs it.
                Some(time) => {
                    let duration = buffer
                        .duration()
                        .map_or(Duration::ZERO, |d| Duration::from_nanos(d.nseconds()));
                    let admitted = gate.lock().unwrap_or_else(|p| p.into_inner()).admit(time, duration);
                    if admitted {
                        gst::PadProbeReturn::Ok
                    } else {
                        gst::PadProbeReturn::Handled
                    }
                }
                _ => gst::PadProbeReturn::Ok,
            }
        },
    );
    let scale_weak = scale.downgrade();
    let pad_facts = facts.clone();
    decode.connect_pad_added(move |_, pad| {
        // Audio and data streams stay unlinked: the demuxer carries on with the video.
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let media_type = caps.structure(0).map(|s| s.name().to_string()).unwrap_or_default();
        if !media_type.starts_with("video/") {
            pad_facts
                .other_streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(media_type);
            return;
        }
        let Some(sink_pad) = scale_weak.upgrade().and_then(|scale| scale.static_pad("sink")) else {
            return;
        };
        if sink_pad.is_linked() {
            return; // a second video stream: the first one is the camera's main view
        }
        match pad.link(&sink_pad) {
            Ok(_) => pad_facts.video_linked.store(true, Ordering::Release),
            Err(err) => tracing::warn!(?err, "could not link decoded video pad"),
        }
    });
    let unknown_facts = facts.clone();
    decode.connect("unknown-type", false, move |args| {
        let caps = args.get(2).and_then(|v| v.get::<gst::Caps>().ok())?;
        let media_type = caps.structure(0).map(|s| s.name().to_string())?;
        unknown_facts
            .undecodable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(media_type);
        None
    });
    let pads_facts = facts.clone();
    decode.connect_no_more_pads(move |_| pads_facts.all_streams_known.store(true, Ordering::Release));

    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let arrival = sink.current_running_time().map(|t| Duration::from_nanos(t.nseconds()));
                let mut raw = raw_frame(&sample, arrival).map_err(|err| {
                    tracing::warn!(%err, "unreadable frame");
                    gst::FlowError::Error
                })?;
                raw.keyframes_only = keyframes_only.load(Ordering::Relaxed);
                on_frame(raw)?;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(Pipeline { pipeline, facts })
}

fn is_video_decoder(element: &gst::Element) -> bool {
    element.factory().is_some_and(|f| {
        let klass = f.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or_default();
        klass.contains("Decoder") && klass.contains("Video")
    })
}

/// Decoders without a `max-threads` property (hardware ones, most non-libav ones) keep theirs.
fn configure_decoder(decoder: &gst::Element, threads: u32) {
    // set_property panics on a type mismatch: only libav's int property is set.
    let is_int = |p: &gstreamer::glib::ParamSpec| p.value_type() == gstreamer::glib::Type::I32;
    if decoder.find_property("max-threads").is_some_and(|p| is_int(&p)) {
        decoder.set_property("max-threads", threads as i32);
    }
}

/// Puts `gate` on the decoder's input; `keyframes_only` follows its decision for the frames
/// that come out, and `skipped` hears of every frame kept from the decoder.
fn gate_decoder(
    decoder: &gst::Element,
    gate: KeyframeGate,
    reencode: bool,
    keyframes_only: Arc<AtomicBool>,
    skipped: Arc<impl Fn(StreamFrame) + Send + Sync + 'static>,
) {
    let Some(pad) = decoder.static_pad("sink") else {
        return;
    };
    let gate = Mutex::new(gate);
    // Whether the ring encodes this stream from its decoded frames (then all of them are
    // decoded), decided once per caps event rather than per buffer.
    let encoded_for_the_ring = AtomicBool::new(false);
    let probes = gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM;
    pad.add_probe(probes, move |_, info| {
        if let Some(gst::PadProbeData::Event(event)) = &info.data {
            if let gst::EventView::Caps(caps) = event.view() {
                let encoded = reencode && crate::video::record::parser_for(caps.caps()).is_none();
                encoded_for_the_ring.store(encoded, Ordering::Relaxed);
            }
            return gst::PadProbeReturn::Ok;
        }
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        if encoded_for_the_ring.load(Ordering::Relaxed) {
            return gst::PadProbeReturn::Ok;
        }
        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let time = buffer
            .pts()
            .or(buffer.dts())
            .map(|t| Duration::from_nanos(t.nseconds()));
        let reordered = matches!((buffer.pts(), buffer.dts()), (Some(pts), Some(dts)) if pts != dts);
        let mut gate = gate.lock().unwrap_or_else(|p| p.into_inner());
        let admitted = gate.admit(keyframe, time, reordered);
        keyframes_only.store(gate.keyframes_only(), Ordering::Relaxed);
        drop(gate);
        if admitted {
            gst::PadProbeReturn::Ok
        } else {
            skipped(StreamFrame::NotDecoded);
            // `Handled`, not `Drop`: see the rate gate in `build`.
            gst::PadProbeReturn::Handled
        }
    });
}

/// Hands every buffer reaching the decoder to `tap`, untouched. Probes run in the order they
/// were added, so this one, added before the keyframe gate's, sees the frames the gate keeps from
/// the decoder too.
fn tap_decoder(decoder: &gst::Element, tap: Arc<Mutex<StreamTap>>) {
    let Some(pad) = decoder.static_pad("sink") else {
        return;
    };
    add_tap(&pad, tap, false, || true);
}

/// Hands every decoded frame to `tap`. Flushes are said by the decoder's tap when there is one
/// (a raw source has none), so that each is heard once.
fn tap_decoded(pad: &gst::Pad, tap: Arc<Mutex<StreamTap>>, decoder_tapped: Arc<AtomicBool>) {
    add_tap(pad, tap, true, move || !decoder_tapped.load(Ordering::Acquire));
}

fn add_tap(
    pad: &gst::Pad,
    tap: Arc<Mutex<StreamTap>>,
    decoded: bool,
    says_flushes: impl Fn() -> bool + Send + Sync + 'static,
) {
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_FLUSH,
        move |pad, info| {
            if let Some(gst::PadProbeData::Event(event)) = &info.data {
                if event.type_() == gst::EventType::FlushStop && says_flushes() {
                    (tap.lock().unwrap_or_else(|p| p.into_inner()))(Tapped::Flushed);
                }
                return gst::PadProbeReturn::Ok;
            }
            let (Some(buffer), Some(caps)) = (info.buffer(), pad.current_caps()) else {
                return gst::PadProbeReturn::Ok;
            };
            if let Some(running_time) = stream_time(pad, buffer) {
                let frame = TappedFrame {
                    caps: &caps,
                    buffer,
                    running_time,
                    ntp_nanos: ntp_reference(buffer),
                };
                let tapped = match decoded {
                    true => Tapped::Decoded(frame),
                    false => Tapped::Compressed(frame),
                };
                (tap.lock().unwrap_or_else(|p| p.into_inner()))(tapped);
            }
            gst::PadProbeReturn::Ok
        },
    );
}

/// The buffer's running time, or the time it arrived for a buffer without a timestamp (raw
/// elementary streams, some HTTP sources).
fn stream_time(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<Duration> {
    let from_pts = buffer.pts().and_then(|pts| {
        pad.sticky_event::<gst::event::Segment>(0).and_then(|event| {
            event
                .segment()
                .downcast_ref::<gst::format::Time>()?
                .to_running_time(pts)
        })
    });
    from_pts
        .or_else(|| pad.parent_element()?.current_running_time())
        .map(|t| Duration::from_nanos(t.nseconds()))
}

/// Source-specific settings, applied when uridecodebin has created its source element.
fn configure_source(source: &gst::Element, rtsp: &RtspOptions) {
    let is_rtsp = source.factory().is_some_and(|f| f.name() == "rtspsrc");
    if !is_rtsp {
        return;
    }
    let protocols = match rtsp.transport {
        RtspTransport::Auto => "udp+udp-mcast+tcp",
        RtspTransport::Tcp => "tcp",
        RtspTransport::Udp => "udp+udp-mcast",
    };
    source.set_property_from_str("protocols", protocols);
    source.set_property("latency", rtsp.latency_ms);
    // Sender reports carry the camera's NTP time; the jitter buffer then attaches it to
    // each buffer as a reference timestamp.
    source.set_property("add-reference-timestamp-meta", true);
    if let Some(user) = &rtsp.username {
        source.set_property("user-id", user);
    }
    if let Some(password) = &rtsp.password {
        source.set_property("user-pw", password);
    }
}

/// The NTP capture time attached by the RTP jitter buffer, in nanoseconds since 1900.
fn ntp_reference(buffer: &gst::BufferRef) -> Option<u64> {
    buffer.iter_meta::<gst::ReferenceTimestampMeta>().find_map(|meta| {
        let is_ntp = meta
            .reference()
            .structure(0)
            .is_some_and(|s| s.name() == "timestamp/x-ntp");
        is_ntp.then(|| meta.timestamp().nseconds())
    })
}

/// Copies the frame out of GStreamer's buffer, honouring the row stride.
fn raw_frame(sample: &gst::Sample, arrival: Option<Duration>) -> Result<RawFrame> {
    let buffer = sample
        .buffer()
        .ok_or_else(|| Error::Gstreamer("sample without buffer".into()))?;
    let image = crate::video::export::rgb_image(sample, super::pool::take)?;

    let running_time = sample
        .segment()
        .and_then(|segment| segment.downcast_ref::<gst::format::Time>())
        .and_then(|segment| segment.to_running_time(buffer.pts()))
        .map(|t| Duration::from_nanos(t.nseconds()))
        .or(arrival)
        .unwrap_or_default();
    Ok(RawFrame {
        image,
        running_time,
        ntp_nanos: ntp_reference(buffer),
        keyframes_only: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(gate: &mut RateGate, times_ms: impl IntoIterator<Item = u64>) -> Vec<u64> {
        times_ms
            .into_iter()
            .filter(|&t| gate.admit(Duration::from_millis(t), Duration::ZERO))
            .collect()
    }

    #[test]
    fn the_gate_keeps_one_frame_per_slot_of_the_analysis_interval() {
        // 25 fps analysed at 2 fps: the first frame of every half second, slots starting 50 ms
        // early (a tenth of the interval).
        let mut gate = RateGate::new(2.0);
        let frames = (0..100).map(|i| i * 40);
        assert_eq!(
            kept(&mut gate, frames),
            [0, 480, 960, 1480, 1960, 2480, 2960, 3480, 3960]
        );
    }

    /// Frames kept of a clip of `frames` frames of `frame` each, looped `loops` times.
    fn kept_over_loops(analysis_fps: f64, frames: u32, frame: Duration, loops: usize) -> usize {
        let mut gate = RateGate::new(analysis_fps);
        let mut kept = 0;
        for _ in 0..loops {
            kept += (0..frames).filter(|&i| gate.admit(i * frame, frame)).count();
            gate.restart();
        }
        kept
    }

    #[test]
    fn a_looping_clip_keeps_the_rate_however_short_it_is() {
        // 4 frames at 1 fps analysed at 0.25 fps: every loop replays times 0..3 s. Without
        // carrying time on at each seek, only the very first frame was ever analysed.
        let one_per_interval = kept_over_loops(0.25, 4, Duration::from_secs(1), 10);
        assert_eq!(one_per_interval, 10, "one frame per 4 s over 40 s");
        // 2 frames at 25 fps, looped for 10 s at 0.25 fps: restarting the slots at each loop
        // would keep one frame per 80 ms loop.
        let short = kept_over_loops(0.25, 2, Duration::from_millis(40), 125);
        assert_eq!(short, 3, "at 0, 3.6 and 7.6 s of 10 s");
    }

    #[test]
    fn a_source_barely_faster_than_the_analysis_rate_loses_few_frames() {
        // 2.1 fps analysed at 2 fps: keeping a frame only once a full interval has passed since
        // the last one would halve the rate; slots lose one frame in about twenty.
        let mut gate = RateGate::new(2.0);
        let frames: Vec<u64> = (0..210).map(|i| i * 10_000 / 21).collect();
        let kept = kept(&mut gate, frames.iter().copied()).len();
        assert!((190..=201).contains(&kept), "{kept} of {}", frames.len());
    }

    #[test]
    fn time_going_back_starts_the_slots_again_and_zero_keeps_everything() {
        let mut gate = RateGate::new(1.0);
        assert_eq!(kept(&mut gate, [0, 400, 1000, 1400, 0, 400, 1000]), [0, 1000, 0, 1000]);
        let mut every = RateGate::new(0.0);
        assert_eq!(kept(&mut every, [5, 5, 0, 7]), [5, 5, 0, 7]);
    }

    /// Feeds a stream of `frames` frames at `fps` with a keyframe every `gop` frames; returns the
    /// indices of the frames that reach the decoder.
    fn decoded(gate: &mut KeyframeGate, frames: u64, fps: f64, gop: u64) -> Vec<u64> {
        (0..frames)
            .filter(|&i| gate.admit(i % gop == 0, Some(Duration::from_secs_f64(i as f64 / fps)), false))
            .collect()
    }

    #[test]
    fn keyframes_only_when_asked_or_when_they_keep_the_analysis_rate() {
        // 25 fps with a keyframe every 5 frames: keyframes come at 5/s.
        let all: Vec<u64> = (0..50).collect();
        let keyframes: Vec<u64> = (0..50).step_by(5).collect();
        assert_eq!(
            decoded(&mut KeyframeGate::new(DecodeMode::All, 5.0, false), 50, 25.0, 5),
            all
        );
        assert_eq!(
            decoded(&mut KeyframeGate::new(DecodeMode::Keyframes, 1.0, false), 50, 25.0, 5),
            keyframes
        );
        // Auto at 5/s: keyframes keep the rate once two intervals are known (from the 3rd on).
        let mut auto = KeyframeGate::new(DecodeMode::Auto, 5.0, false);
        let expected: Vec<u64> = (0..10).chain((10..50).step_by(5)).collect();
        assert_eq!(decoded(&mut auto, 50, 25.0, 5), expected);
        assert!(auto.keyframes_only());
        // Auto at 6/s: keyframes at 5/s would not keep it, every frame is decoded.
        let mut auto = KeyframeGate::new(DecodeMode::Auto, 6.0, false);
        assert_eq!(decoded(&mut auto, 50, 25.0, 5), all);
        assert!(!auto.keyframes_only());
        // Every frame analysed: nothing may be skipped.
        assert_eq!(
            decoded(&mut KeyframeGate::new(DecodeMode::Auto, 0.0, false), 50, 25.0, 5),
            all
        );
    }

    #[test]
    fn auto_tolerates_fractional_rates_and_goes_back_to_every_frame_for_a_long_group() {
        // 29.97 fps, a keyframe every 6 frames (0.2002 s) against 5/s: within the tolerance.
        let mut auto = KeyframeGate::new(DecodeMode::Auto, 5.0, false);
        decoded(&mut auto, 60, 30_000.0 / 1001.0, 6);
        assert!(auto.keyframes_only());
        // One long group of pictures (a keyframe 2 s late) among short ones: the group after it is
        // decoded entirely, as are the next ones until the long interval is out of the history.
        let mut auto = KeyframeGate::new(DecodeMode::Auto, 5.0, false);
        let key = |gate: &mut KeyframeGate, t: f64| gate.admit(true, Some(Duration::from_secs_f64(t)), false);
        let delta = |gate: &mut KeyframeGate, t: f64| gate.admit(false, Some(Duration::from_secs_f64(t)), false);
        for t in [0.0, 0.2, 0.4] {
            key(&mut auto, t);
        }
        assert!(!delta(&mut auto, 0.44), "keyframes only after 0.4");
        key(&mut auto, 2.4);
        assert!(delta(&mut auto, 2.44), "a 2 s group: decoded entirely");
        for (i, t) in [2.6, 2.8, 3.0].into_iter().enumerate() {
            key(&mut auto, t);
            assert!(
                delta(&mut auto, t + 0.04),
                "the 2 s interval is still among the last four ({i})"
            );
        }
        key(&mut auto, 3.2);
        assert!(
            !delta(&mut auto, 3.24),
            "four short intervals since: keyframes only again"
        );
        // Time going back (a file that loops) measures afresh.
        key(&mut auto, 0.0);
        assert!(delta(&mut auto, 0.04));
    }

    #[test]
    fn frames_without_timestamps_are_all_decoded_in_auto() {
        let mut auto = KeyframeGate::new(DecodeMode::Auto, 5.0, false);
        assert!((0..50).all(|i| auto.admit(i % 5 == 0, None, false)));
    }

    #[test]
    fn auto_decodes_everything_of_reordered_streams_and_files_paced_by_the_sink() {
        let every: Vec<u64> = (0..50).collect();
        // B-frames: a decoder fed keyframes alone would hold each one back.
        let mut auto = KeyframeGate::new(DecodeMode::Auto, 5.0, false);
        let admitted: Vec<u64> = (0..50)
            .filter(|&i| auto.admit(i % 5 == 0, Some(Duration::from_millis(i * 40)), i == 3))
            .collect();
        assert_eq!(admitted, every);
        let mut paced = KeyframeGate::new(DecodeMode::Auto, 5.0, true);
        assert_eq!(decoded(&mut paced, 50, 25.0, 5), every);
        // Asked for explicitly, keyframes only from the very first frame.
        let mut keyframes = KeyframeGate::new(DecodeMode::Keyframes, 5.0, true);
        assert!(
            !keyframes.admit(false, Some(Duration::ZERO), false),
            "a delta before any keyframe"
        );
    }

    #[test]
    fn keyframes_stamped_a_little_early_still_each_open_a_slot() {
        // Keyframes every 0.5 s analysed at 2/s, each stamped up to 20 ms early or late.
        let mut gate = RateGate::new(2.0);
        let jitter = [0, -20, 15, -5, -20, 20, -10, 0, -15, 5];
        let kept = jitter
            .iter()
            .enumerate()
            .filter(|&(i, &j)| {
                gate.admit(
                    Duration::from_millis((1000 + i as i64 * 500 + j) as u64),
                    Duration::ZERO,
                )
            })
            .count();
        assert_eq!(kept, jitter.len());
    }
}
