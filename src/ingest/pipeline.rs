//! One camera's GStreamer pipeline:
//!
//! ```text
//! uridecodebin ─▶ videorate (drop only) ─▶ videoscale ─▶ videoconvert ─▶ caps RGB ≤ max size ─▶ appsink
//! ```
//!
//! Frames above the analysis rate are dropped by `videorate` before they cost a scale or a colour
//! conversion; scaling happens before conversion because converting fewer pixels is cheaper.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

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
}

/// A decoded, converted frame as it leaves the pipeline.
pub struct RawFrame {
    pub image: image::RgbImage,
    /// Running time of the buffer: monotonic within one pipeline run.
    pub running_time: Duration,
}

/// Shared between the streaming threads and the supervisor, which watches for stalls.
#[derive(Default)]
pub struct Liveness {
    /// Milliseconds since `epoch` of the last frame delivered; 0 = none yet.
    last_frame_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl Liveness {
    fn touch(&self) {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let ms = epoch.elapsed().as_millis() as u64 + 1;
        self.last_frame_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last frame, or `None` if no frame came yet.
    pub fn since_last_frame(&self) -> Option<Duration> {
        let ms = self.last_frame_ms.load(Ordering::Relaxed);
        let epoch = self.epoch.get()?;
        (ms > 0).then(|| {
            epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(ms - 1))
        })
    }
}

pub struct Pipeline {
    pub pipeline: gst::Pipeline,
    pub liveness: Arc<Liveness>,
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
/// frame; `on_decoded` for each decoded frame before rate filtering.
pub fn build(
    spec: &PipelineSpec,
    mut on_frame: impl FnMut(RawFrame) -> std::result::Result<(), gst::FlowError> + Send + 'static,
    on_decoded: impl Fn() + Send + Sync + 'static,
) -> Result<Pipeline> {
    let pipeline = gst::Pipeline::new();
    let decode = make("uridecodebin")?;
    decode.set_property("uri", &spec.uri);

    let rate = make("videorate")?;
    rate.set_property("drop-only", true);
    let scale = make("videoscale")?;
    let convert = make("videoconvert")?;
    let mut caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", gst::IntRange::new(16, spec.max_width as i32))
        .field("height", gst::IntRange::new(16, spec.max_height as i32))
        // Square pixels make videoscale keep the picture's shape instead of changing the PAR.
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    if spec.analysis_fps > 0.0 {
        let max_rate = gst::Fraction::approximate_f64(spec.analysis_fps).ok_or_else(|| {
            Error::Gstreamer(format!(
                "analysis_fps {} is not a usable rate",
                spec.analysis_fps
            ))
        })?;
        // A range, not a fixed rate: a source slower than the analysis rate passes unchanged.
        caps = caps.field(
            "framerate",
            gst::FractionRange::new(gst::Fraction::new(0, 1), max_rate),
        );
    }
    let sink = gst_app::AppSink::builder()
        .caps(&caps.build())
        .sync(spec.sync)
        .max_buffers(1)
        .drop(false)
        .build();

    pipeline.add_many([&decode, &rate, &scale, &convert, sink.upcast_ref()])?;
    gst::Element::link_many([&rate, &scale, &convert, sink.upcast_ref()])?;

    let rate_sink = rate
        .static_pad("sink")
        .ok_or_else(|| Error::Gstreamer("videorate has no sink pad".into()))?;
    rate_sink.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        on_decoded();
        gst::PadProbeReturn::Ok
    });
    let rate_weak = rate.downgrade();
    decode.connect_pad_added(move |_, pad| {
        // Audio and data streams stay unlinked: the demuxer carries on with the video.
        let is_video = pad
            .current_caps()
            .and_then(|caps| caps.structure(0).map(|s| s.name().starts_with("video/")))
            .unwrap_or(false);
        if !is_video {
            return;
        }
        let Some(rate) = rate_weak.upgrade() else {
            return;
        };
        let Some(sink_pad) = rate.static_pad("sink") else {
            return;
        };
        if sink_pad.is_linked() {
            return; // a second video stream: the first one is the camera's main view
        }
        if let Err(err) = pad.link(&sink_pad) {
            tracing::warn!(?err, "could not link decoded video pad");
        }
    });

    let liveness = Arc::new(Liveness::default());
    let frame_liveness = liveness.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let raw = raw_frame(&sample).map_err(|err| {
                    tracing::warn!(%err, "unreadable frame");
                    gst::FlowError::Error
                })?;
                frame_liveness.touch();
                on_frame(raw)?;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(Pipeline { pipeline, liveness })
}

/// Copies the frame out of GStreamer's buffer, honouring the row stride.
fn raw_frame(sample: &gst::Sample) -> Result<RawFrame> {
    let buffer = sample
        .buffer()
        .ok_or_else(|| Error::Gstreamer("sample without buffer".into()))?;
    let caps = sample
        .caps()
        .ok_or_else(|| Error::Gstreamer("sample without caps".into()))?;
    let info = gst_video::VideoInfo::from_caps(caps)?;
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|_| Error::Gstreamer("cannot map video buffer".into()))?;
    let (width, height) = (info.width(), info.height());
    let stride = usize::try_from(frame.plane_stride()[0])
        .map_err(|_| Error::Gstreamer("negative stride".into()))?;
    let data = frame.plane_data(0)?;
    let row_bytes = width as usize * 3;
    let mut pixels = Vec::with_capacity(row_bytes * height as usize);
    for row in data.chunks(stride).take(height as usize) {
        pixels.extend_from_slice(
            row.get(..row_bytes)
                .ok_or_else(|| Error::Gstreamer("short video row".into()))?,
        );
    }
    let image = image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| Error::Gstreamer("frame smaller than its caps".into()))?;

    let running_time = sample
        .segment()
        .and_then(|segment| segment.downcast_ref::<gst::format::Time>())
        .and_then(|segment| segment.to_running_time(buffer.pts()))
        .map(|t| Duration::from_nanos(t.nseconds()))
        .unwrap_or_default();
    Ok(RawFrame {
        image,
        running_time,
    })
}
