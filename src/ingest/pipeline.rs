//! One camera's GStreamer pipeline:
//!
//! ```text
//! uridecodebin ─▶ videorate (drop only) ─▶ videoscale ─▶ videoconvert ─▶ caps RGB ≤ max size ─▶ appsink
//! ```
//!
//! Frames above the analysis rate are dropped by `videorate` before they cost a scale or a colour
//! conversion; scaling happens before conversion because converting fewer pixels is cheaper.

use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use crate::config::RtspTransport;
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
    pub rtsp: RtspOptions,
}

#[derive(Clone, Default)]
pub struct RtspOptions {
    pub transport: RtspTransport,
    pub latency_ms: u32,
    pub username: Option<String>,
    pub password: Option<String>,
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
}

pub struct Pipeline {
    pub pipeline: gst::Pipeline,
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
    let rtsp = spec.rtsp.clone();
    decode.connect("source-setup", false, move |args| {
        if let Some(source) = args.get(1).and_then(|v| v.get::<gst::Element>().ok()) {
            configure_source(&source, &rtsp);
        }
        None
    });

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
        let max_rate = gst::Fraction::approximate_f64(spec.analysis_fps)
            .ok_or_else(|| Error::Gstreamer(format!("analysis_fps {} is not a usable rate", spec.analysis_fps)))?;
        // A range, not a fixed rate: a source slower than the analysis rate passes unchanged.
        caps = caps.field("framerate", gst::FractionRange::new(gst::Fraction::new(0, 1), max_rate));
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

    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let raw = raw_frame(&sample).map_err(|err| {
                    tracing::warn!(%err, "unreadable frame");
                    gst::FlowError::Error
                })?;
                on_frame(raw)?;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(Pipeline { pipeline })
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
    let stride = usize::try_from(frame.plane_stride()[0]).map_err(|_| Error::Gstreamer("negative stride".into()))?;
    let data = frame.plane_data(0)?;
    let row_bytes = width as usize * 3;
    let mut pixels = super::pool::take(row_bytes * height as usize);
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
        ntp_nanos: ntp_reference(buffer),
    })
}
