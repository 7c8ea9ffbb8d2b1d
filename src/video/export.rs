//! Pixels out of the ring: segments decoded to frames with their capture times, and frames
//! encoded again as an MP4 or a JPEG.
//!
//! Every exported frame is decoded (faces are blurred in pixels, see `deliver::pixels`), so a clip
//! starts at the first frame at or after the time asked for, not at the keyframe before it, and
//! its timestamps are the frames' capture times less the first one's: an outage inside a clip is
//! a frame held for as long as it lasted, never a corrupt stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::ring::Segment;
use crate::clock::UnixNanos;
use crate::error::{Error, Result};

/// A segment reader that gives no frame for this long is given up on.
const SEGMENT_SILENCE: Duration = Duration::from_secs(10);

/// Compressed frames an export's encoder may hold before `Mp4Writer::push` waits for it.
const ENCODER_QUEUE_BYTES: u64 = 16 << 20;

/// A decoded frame of the ring at the camera's own resolution.
pub struct TimedFrame {
    pub capture_time: UnixNanos,
    pub image: image::RgbImage,
}

/// What to do after a frame: go on decoding, or stop here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    More,
    Stop,
}

/// Decodes `segments` in order and hands each frame captured in `from..=to` to `each`.
pub fn decode(
    segments: &[Segment],
    from: UnixNanos,
    to: UnixNanos,
    mut each: impl FnMut(TimedFrame) -> Result<Next>,
) -> Result<()> {
    for segment in segments {
        if segment.end < from || segment.start > to {
            continue;
        }
        if decode_segment(segment, from, to, &mut each)? == Next::Stop {
            break;
        }
    }
    Ok(())
}

fn decode_segment(
    segment: &Segment,
    from: UnixNanos,
    to: UnixNanos,
    each: &mut impl FnMut(TimedFrame) -> Result<Next>,
) -> Result<Next> {
    // Pruned since it was listed: the interval's video is gone.
    let Some(path) = segment.current_path() else {
        return Ok(Next::More);
    };
    let (pipeline, _stop, sink, first) = frame_reader("filesrc name=source", segment.start, from)?;
    let file = pipeline
        .by_name("source")
        .ok_or_else(|| Error::Gstreamer("segment reader without filesrc".into()))?;
    file.set_property("location", path.to_string_lossy().as_ref());
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| Error::Gstreamer(format!("cannot read video segment {}", path.display())))?;
    read_frames(&pipeline, &sink, segment.start, &first, to, each).map(|read| {
        if let Some(error) = read.error {
            // A segment cut short by a crash ends early; one that says nothing is skipped.
            tracing::debug!(segment = %segment.path.display(), %error, "segment read ended on an error");
        }
        read.next
    })
}

/// Decodes compressed frames of `caps` held in memory, a keyframe first, captured from `start`
/// on (timed as a ring segment's frames are), and hands each captured from `from` on to `each`
/// until it says stop.
pub fn decode_buffers(
    caps: &gst::Caps,
    frames: Vec<gst::Buffer>,
    start: UnixNanos,
    from: UnixNanos,
    each: impl FnMut(TimedFrame) -> Result<Next>,
) -> Result<()> {
    let (pipeline, _stop, sink, first) = frame_reader("appsrc name=source", start, from)?;
    let source = pipeline
        .by_name("source")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| Error::Gstreamer("frame reader without appsrc".into()))?;
    source.set_caps(Some(caps));
    source.set_format(gst::Format::Time);
    source.set_max_bytes(0);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| Error::Gstreamer("cannot decode the newest frames".into()))?;
    for frame in frames {
        source
            .push_buffer(frame)
            .map_err(|e| Error::Gstreamer(format!("decoding the newest frames: {e:?}")))?;
    }
    let _ = source.end_of_stream();
    let read = read_frames(&pipeline, &sink, start, &first, UnixNanos::MAX, each)?;
    match read.error {
        Some(error) => Err(Error::Gstreamer(format!("decoding the newest frames: {error}"))),
        None => Ok(()),
    }
}

/// The presentation time of a reader's first decoded frame, from which its frames are timed.
type FirstPts = Arc<OnceLock<gst::ClockTime>>;

/// `source` ─▶ decodebin ─▶ RGB frames at an appsink, stopped when the guard drops. Frames
/// captured before `from` (timed from `start`) are dropped before their colour conversion: a
/// segment or a group is decoded from its keyframe, and most of its frames are not wanted.
fn frame_reader(
    source: &str,
    start: UnixNanos,
    from: UnixNanos,
) -> Result<(gst::Pipeline, StopOnDrop, gst_app::AppSink, FirstPts)> {
    let pipeline = gst::parse::launch(&format!(
        "{source} ! decodebin ! videoconvert name=convert ! video/x-raw,format=RGB ! appsink name=frames sync=false max-buffers=4"
    ))
    .map_err(|e| Error::Gstreamer(format!("frame reader: {e}")))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| Error::Gstreamer("frame reader is not a pipeline".into()))?;
    let stop = StopOnDrop(pipeline.clone());
    let sink = pipeline
        .by_name("frames")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| Error::Gstreamer("frame reader without appsink".into()))?;
    let convert = pipeline
        .by_name("convert")
        .and_then(|e| e.static_pad("sink"))
        .ok_or_else(|| Error::Gstreamer("frame reader without videoconvert".into()))?;
    let first = FirstPts::default();
    let seen = first.clone();
    convert.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let first = *seen.get_or_init(|| pts);
        match capture_time(start, first, pts) < from {
            true => gst::PadProbeReturn::Drop,
            false => gst::PadProbeReturn::Ok,
        }
    });
    Ok((pipeline, stop, sink, first))
}

/// A decoded frame's capture time: the first frame's, `start`, and its distance from it.
fn capture_time(start: UnixNanos, first: gst::ClockTime, pts: gst::ClockTime) -> UnixNanos {
    start.saturating_add(pts.nseconds().saturating_sub(first.nseconds()) as i64)
}

/// How a read of frames ended.
struct Read {
    next: Next,
    /// The decoder's error, if one ended it early.
    error: Option<String>,
}

/// Pulls a reader's frames (those its probe let through), timed from `start` by their distance
/// from the first, and hands them to `each` until it says stop, one is captured after `to`, or
/// the stream ends.
fn read_frames(
    pipeline: &gst::Pipeline,
    sink: &gst_app::AppSink,
    start: UnixNanos,
    first: &FirstPts,
    to: UnixNanos,
    mut each: impl FnMut(TimedFrame) -> Result<Next>,
) -> Result<Read> {
    let mut silent_since = std::time::Instant::now();
    loop {
        // Never a blocking pull: a stream no decoder can read (empty, zeroed, a codec not
        // installed) may neither deliver a frame nor end, and an export must not wait on it.
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) else {
            let error = pipeline_error(pipeline);
            if sink.is_eos() || error.is_some() || silent_since.elapsed() > SEGMENT_SILENCE {
                return Ok(Read {
                    next: Next::More,
                    error,
                });
            }
            continue;
        };
        silent_since = std::time::Instant::now();
        let Some(pts) = sample.buffer().and_then(|b| b.pts()) else {
            continue;
        };
        let capture_time = capture_time(start, *first.get_or_init(|| pts), pts);
        if capture_time > to {
            return Ok(Read {
                next: Next::Stop,
                error: None,
            });
        }
        let image = rgb_image(&sample, Vec::with_capacity)?;
        if each(TimedFrame { capture_time, image })? == Next::Stop {
            return Ok(Read {
                next: Next::Stop,
                error: None,
            });
        }
    }
}

fn pipeline_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    let message = bus.pop_filtered(&[gst::MessageType::Error])?;
    match message.view() {
        gst::MessageView::Error(err) => Some(err.error().to_string()),
        _ => None,
    }
}

/// Sets a pipeline to NULL however the function that ran it ends.
struct StopOnDrop(gst::Pipeline);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// An RGB frame out of a sample, rows packed (GStreamer pads rows to its stride); `buffer`
/// gives the vector the pixels are copied into, empty, with room for the number it is passed
/// (the camera pipeline reuses its frames' buffers).
pub fn rgb_image(sample: &gst::Sample, buffer: impl FnOnce(usize) -> Vec<u8>) -> Result<image::RgbImage> {
    let caps = sample
        .caps()
        .ok_or_else(|| Error::Gstreamer("sample without caps".into()))?;
    let info = gst_video::VideoInfo::from_caps(caps)?;
    let data = sample
        .buffer()
        .ok_or_else(|| Error::Gstreamer("sample without buffer".into()))?;
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(data, &info)
        .map_err(|_| Error::Gstreamer("cannot map video buffer".into()))?;
    let stride = usize::try_from(frame.plane_stride()[0]).map_err(|_| Error::Gstreamer("negative stride".into()))?;
    let (width, height) = (info.width(), info.height());
    let row_bytes = width as usize * 3;
    let mut pixels = buffer(row_bytes * height as usize);
    for row in frame.plane_data(0)?.chunks(stride).take(height as usize) {
        pixels.extend_from_slice(
            row.get(..row_bytes)
                .ok_or_else(|| Error::Gstreamer("short video row".into()))?,
        );
    }
    image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| Error::Gstreamer("frame smaller than its caps".into()))
}

/// A JPEG of `image` at `quality` (1-100).
pub fn jpeg(image: &image::RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(image)
        .map_err(|e| Error::Internal(format!("JPEG encoding: {e}")))?;
    Ok(bytes)
}

/// Encodes frames into a fragmented MP4 (H.264), handing its bytes out as they are written.
///
/// ```text
/// appsrc (RGB, capture-time stamps) ─▶ videoconvert ─▶ x264enc ─▶ h264parse ─▶ mp4mux (fragmented) ─▶ appsink
/// ```
pub struct Mp4Writer {
    pipeline: gst::Pipeline,
    source: gst_app::AppSrc,
    /// `on_bytes` failed: nobody takes the file any more.
    client_gone: Arc<AtomicBool>,
    size: Option<(u32, u32)>,
    first: Option<UnixNanos>,
    last: Option<UnixNanos>,
    errors: mpsc::Receiver<String>,
}

/// Fragments of about this long: a client gets the first bytes after a second of video.
const FRAGMENT_MS: u32 = 1000;

impl Mp4Writer {
    /// `on_bytes` runs on the encoder's thread for each piece of the file, in order; an error from
    /// it (the client went away) stops the encoding.
    pub fn new(mut on_bytes: impl FnMut(Vec<u8>) -> std::result::Result<(), ()> + Send + 'static) -> Result<Mp4Writer> {
        let description = format!(
            "appsrc name=frames format=time max-bytes={} ! videoconvert ! \
             x264enc speed-preset=veryfast pass=qual quantizer=23 key-int-max=50 bframes=0 ! video/x-h264,profile=high ! h264parse ! \
             mp4mux fragment-duration={FRAGMENT_MS} streamable=true ! appsink name=bytes sync=false",
            ENCODER_QUEUE_BYTES
        );
        let pipeline = gst::parse::launch(&description)
            .map_err(|e| Error::Gstreamer(format!("clip encoder: {e}")))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| Error::Gstreamer("clip encoder is not a pipeline".into()))?;
        let source = pipeline
            .by_name("frames")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| Error::Gstreamer("clip encoder without appsrc".into()))?;
        let sink = pipeline
            .by_name("bytes")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| Error::Gstreamer("clip encoder without appsink".into()))?;
        let client_gone = Arc::new(AtomicBool::new(false));
        let gone = client_gone.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                    let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                    if on_bytes(map.as_slice().to_vec()).is_err() {
                        client_gone.store(true, std::sync::atomic::Ordering::Release);
                        return Err(gst::FlowError::Flushing);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let (errors_tx, errors) = mpsc::channel();
        let bus = pipeline
            .bus()
            .ok_or_else(|| Error::Gstreamer("clip encoder without bus".into()))?;
        bus.set_sync_handler(move |_, message| {
            if let gst::MessageView::Error(err) = message.view() {
                let _ = errors_tx.send(err.error().to_string());
            }
            gst::BusSyncReply::Pass
        });
        Ok(Mp4Writer {
            pipeline,
            source,
            client_gone: gone,
            size: None,
            first: None,
            last: None,
            errors,
        })
    }

    /// Adds a frame; every frame must have the first one's size.
    pub fn push(&mut self, frame: &TimedFrame) -> Result<()> {
        self.wait_for_room()?;
        let size = frame.image.dimensions();
        match self.size {
            None => {
                let caps = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, size.0, size.1)
                    .fps(gst::Fraction::new(0, 1))
                    .build()?
                    .to_caps()?;
                self.source.set_caps(Some(&caps));
                self.pipeline
                    .set_state(gst::State::Playing)
                    .map_err(|_| Error::Gstreamer("the clip encoder does not start".into()))?;
                self.size = Some(size);
            }
            Some(first) if first != size => {
                return Err(Error::Gstreamer(format!(
                    "the camera's frame size changed from {}x{} to {}x{} inside the clip",
                    first.0, first.1, size.0, size.1
                )));
            }
            Some(_) => {}
        }
        let first = *self.first.get_or_insert(frame.capture_time);
        // The previous frame lasts until this one: an outage is a frame held, not a hole.
        self.last = Some(frame.capture_time);
        let pts = gst::ClockTime::from_nseconds(frame.capture_time.saturating_sub(first).max(0) as u64);
        let mut buffer = gst::Buffer::from_slice(frame.image.as_raw().clone());
        if let Some(buffer) = buffer.get_mut() {
            buffer.set_pts(pts);
        }
        self.source
            .push_buffer(buffer)
            .map_err(|flow| Error::Gstreamer(format!("clip encoder refused a frame ({flow:?})")))?;
        Ok(())
    }

    /// Waits while the encoder holds a full queue (a client reading slowly), and stops when the
    /// client is gone or the encoder failed: a stalled encoder never blocks its export for good.
    fn wait_for_room(&self) -> Result<()> {
        loop {
            if self.client_gone.load(Ordering::Acquire) {
                return Err(Error::Gstreamer("the client stopped reading the clip".into()));
            }
            if let Ok(error) = self.errors.try_recv() {
                return Err(Error::Gstreamer(format!("clip encoder: {error}")));
            }
            if self.source.current_level_bytes() < ENCODER_QUEUE_BYTES {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ends the file and waits until its last bytes are out; `frame_time` is how long the last
    /// frame is shown.
    pub fn finish(self, timeout: Duration) -> Result<()> {
        if self.size.is_none() {
            return Err(Error::Gstreamer("no frame to encode".into()));
        }
        let _stop = StopOnDrop(self.pipeline.clone());
        let _ = self.source.end_of_stream();
        let bus = self
            .pipeline
            .bus()
            .ok_or_else(|| Error::Gstreamer("clip encoder without bus".into()))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(error) = self.errors.try_recv() {
                return Err(Error::Gstreamer(format!("clip encoder: {error}")));
            }
            if self.client_gone.load(Ordering::Acquire) {
                return Err(Error::Gstreamer("the client stopped reading the clip".into()));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Gstreamer("the clip encoder did not finish in time".into()));
            }
            let wait = gst::ClockTime::from_nseconds(left.min(Duration::from_millis(100)).as_nanos() as u64);
            if bus.timed_pop_filtered(wait, &[gst::MessageType::Eos]).is_some() {
                return Ok(());
            }
        }
    }
}

impl Drop for Mp4Writer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
