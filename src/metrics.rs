//! Prometheus metrics, served on `/metrics`.
//!
//! Camera counters are not duplicated into metric objects: they live once, in each camera's
//! [`CameraStatus`], and are read at scrape time by a collector. Everything else (latency
//! histograms, subscriber counts) is a prometheus-client metric updated where it happens.
//! Names follow `retina_<what>_<unit>`; labels are a small fixed set (camera, model, reason).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};
use crate::ingest::{CameraStatus, Cameras};
use crate::pb;
use crate::shutdown::Shutdown;
use crate::wire::{appearances, event_kind_label};

type ModelLabels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    inference_seconds: Family<ModelLabels, Histogram>,
    embedder_batch_crops: Histogram,
    descriptors_published: Counter,
    descriptor_bytes: Counter,
    frames_failed: Counter,
    track_events: Family<TrackEventLabels, Counter>,
    /// `track_events` by `TrackEventKind` value, resolved once rather than per event.
    track_event_counters: [Counter; TRACK_EVENT_KINDS.len()],
    appearance_bytes: Counter,
    pub subscribers: Gauge,
    subscriber_sent: Family<SubscriberLabels, Counter>,
    subscriber_fallbacks: Family<SubscriberLabels, Counter>,
    subscribers_refused: Counter,
    capture_to_publish: Family<CameraLabels, Histogram>,
    zone_events: Family<ZoneEventLabels, Counter>,
    zone_occupancy: Family<ZoneLabels, Gauge>,
    pixel_exports: Family<ExportLabels, Counter>,
    pixel_export_frames: Family<ExportFrameLabels, Counter>,
    log: LogMetrics,
    tls_not_after: Family<ListenerLabels, Gauge>,
    push: PushMetrics,
}

/// Push targets (`[[push]]`), labelled by the target's name.
#[derive(Default)]
struct PushMetrics {
    state: Family<PushStateLabels, Gauge>,
    acked_offset: Family<TargetLabels, Gauge>,
    lag_records: Family<TargetLabels, Gauge>,
    lag_seconds: Family<TargetLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    reconnects: Family<TargetLabels, Counter>,
    sent: Family<TargetLabels, Counter>,
}

type TargetLabels = [(&'static str, String); 1];
type PushStateLabels = [(&'static str, String); 2];

/// The states a push target's `retina_push_state` series can be in.
pub const PUSH_STATES: [&str; 3] = ["connecting", "streaming", "retrying"];

type ListenerLabels = [(&'static str, &'static str); 1];

type CameraLabels = [(&'static str, String); 1];
type ZoneEventLabels = [(&'static str, String); 5];
type ZoneLabels = [(&'static str, String); 3];
type ExportLabels = [(&'static str, String); 3];
type ExportFrameLabels = [(&'static str, String); 2];

/// The descriptor log's writer.
struct LogMetrics {
    stored: Counter,
    stored_bytes: Counter,
    unstored: Counter,
    evicted: Counter,
    commit_seconds: Histogram,
    bytes: Gauge,
    healthy: Gauge,
}

type SubscriberLabels = [(&'static str, String); 1];

/// Descriptors sent to one subscriber, and how often it fell behind the live tail and read from
/// the log instead.
pub struct SubscriberCounters {
    pub sent: Counter,
    pub fallbacks: Counter,
}
type TrackEventLabels = [(&'static str, &'static str); 1];

/// Every `TrackEventKind`, in the order of its values.
const TRACK_EVENT_KINDS: [pb::TrackEventKind; 5] = [
    pb::TrackEventKind::Unspecified,
    pb::TrackEventKind::Confirmed,
    pb::TrackEventKind::BetterView,
    pb::TrackEventKind::AppearanceChanged,
    pb::TrackEventKind::Ended,
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(cameras: Cameras) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let inference_seconds = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.002, 2.0, 12))
        });
        registry.register(
            "retina_inference_seconds",
            "Time one frame spent in a model (embedder: all crops of the frame)",
            inference_seconds.clone(),
        );
        let embedder_batch_crops = Histogram::new([0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        registry.register(
            "retina_embedder_crops",
            "Objects embedded per analysed frame",
            embedder_batch_crops.clone(),
        );
        // From 5 ms to 10 s: a frame's inference is ~50 ms here, a backlog shows as seconds.
        let capture_to_publish = Family::<CameraLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
            ])
        });
        registry.register(
            "retina_camera_capture_to_publish_seconds",
            "From a frame's capture time to its descriptor's publication (live subscribers get it next)",
            capture_to_publish.clone(),
        );
        let track_events = Family::<TrackEventLabels, Counter>::default();
        let track_event_counters =
            TRACK_EVENT_KINDS.map(|kind| track_events.get_or_create(&[("kind", event_kind_label(kind))]).clone());
        let metrics = Metrics {
            inference_seconds,
            embedder_batch_crops,
            descriptors_published: Counter::default(),
            descriptor_bytes: Counter::default(),
            frames_failed: Counter::default(),
            track_events,
            track_event_counters,
            appearance_bytes: Counter::default(),
            subscribers: Gauge::default(),
            subscriber_sent: Family::default(),
            subscriber_fallbacks: Family::default(),
            subscribers_refused: Counter::default(),
            tls_not_after: Family::default(),
            push: PushMetrics::default(),
            capture_to_publish,
            zone_events: Family::default(),
            zone_occupancy: Family::default(),
            pixel_exports: Family::default(),
            pixel_export_frames: Family::default(),
            log: LogMetrics {
                stored: Counter::default(),
                stored_bytes: Counter::default(),
                unstored: Counter::default(),
                evicted: Counter::default(),
                commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
                bytes: Gauge::default(),
                healthy: Gauge::default(),
            },
            registry,
        };
        let mut metrics = metrics;
        let r = &mut metrics.registry;
        r.register(
            "retina_descriptors_published",
            "Frame descriptors published",
            metrics.descriptors_published.clone(),
        );
        r.register(
            "retina_descriptor_bytes",
            "Encoded size of published descriptors",
            metrics.descriptor_bytes.clone(),
        );
        r.register(
            "retina_track_events",
            "Track events published, by kind (confirmed, better_view, appearance_changed, ended)",
            metrics.track_events.clone(),
        );
        r.register(
            "retina_appearance_bytes",
            "Encoded size of the appearance vectors in published descriptors",
            metrics.appearance_bytes.clone(),
        );
        r.register(
            "retina_frames_failed",
            "Frames whose analysis failed",
            metrics.frames_failed.clone(),
        );
        r.register(
            "retina_subscribers",
            "Subscribe streams open now",
            metrics.subscribers.clone(),
        );
        r.register(
            "retina_subscriber_sent",
            "Descriptors sent to subscribers",
            metrics.subscriber_sent.clone(),
        );
        r.register(
            "retina_subscriber_fallbacks",
            "Times a subscriber fell behind the live tail and read from the log instead (nothing is lost)",
            metrics.subscriber_fallbacks.clone(),
        );
        let push = &metrics.push;
        r.register(
            "retina_push_state",
            "1 for each push target's current state (connecting, streaming, retrying)",
            push.state.clone(),
        );
        r.register(
            "retina_push_acked_offset",
            "The highest offset each push target has made durable",
            push.acked_offset.clone(),
        );
        r.register(
            "retina_push_lag_records",
            "Offsets the log has given that a push target has not acknowledged",
            push.lag_records.clone(),
        );
        r.register(
            "retina_push_lag_seconds",
            "While a push target is behind: the age of the newest capture it acknowledged",
            push.lag_seconds.clone(),
        );
        r.register(
            "retina_push_reconnects",
            "Push sessions that ended and were tried again",
            push.reconnects.clone(),
        );
        r.register(
            "retina_push_sent",
            "Records sent to each push target",
            push.sent.clone(),
        );
        r.register(
            "retina_tls_certificate_not_after_timestamp_seconds",
            "When the certificate each TLS listener serves expires (seconds since 1970); alert well before",
            metrics.tls_not_after.clone(),
        );
        r.register(
            "retina_subscribers_refused",
            "Subscribe calls refused because deliver.max_subscribers streams were open",
            metrics.subscribers_refused.clone(),
        );
        r.register(
            "retina_zone_events",
            "Zone entries and exits and line crossings, by camera, zone or line, kind, direction and class",
            metrics.zone_events.clone(),
        );
        r.register(
            "retina_zone_occupancy",
            "Tracks inside each zone now, by camera, zone and class",
            metrics.zone_occupancy.clone(),
        );
        r.register(
            "retina_pixel_exports",
            "Pixel exports recorded, by camera, kind (snapshot, track snapshot, clip, track clip, live view) \
             and outcome (sent, refused); a live view is one record a minute per caller",
            metrics.pixel_exports.clone(),
        );
        r.register(
            "retina_pixel_export_frames",
            "Frames sent by pixel exports, by camera and kind",
            metrics.pixel_export_frames.clone(),
        );
        let log = &metrics.log;
        r.register(
            "retina_log_stored",
            "Descriptors committed to the log",
            log.stored.clone(),
        );
        r.register(
            "retina_log_stored_bytes",
            "Encoded bytes of the descriptors committed to the log",
            log.stored_bytes.clone(),
        );
        r.register(
            "retina_log_unstored",
            "Descriptors sent live but never stored (disk full or failing, writer too far behind)",
            log.unstored.clone(),
        );
        r.register(
            "retina_log_evicted",
            "Descriptors removed from the log by retention",
            log.evicted.clone(),
        );
        r.register(
            "retina_log_commit_seconds",
            "Time to commit one group of descriptors (one fsync)",
            log.commit_seconds.clone(),
        );
        r.register("retina_log_bytes", "Bytes the log's pages hold", log.bytes.clone());
        r.register(
            "retina_log_healthy",
            "1 while the log stores what it is given, 0 while commits fail",
            log.healthy.clone(),
        );
        log.healthy.set(1);
        r.register_collector(Box::new(CameraCollector { cameras }));
        Arc::new(metrics)
    }

    /// The histograms one worker records into, looked up once so that recording a frame
    /// allocates nothing.
    pub fn inference_recorder(&self, detector: &str, embedder: Option<&str>) -> InferenceRecorder {
        let histogram = |model: &str| {
            self.inference_seconds
                .get_or_create(&vec![("model", model.to_string())])
                .clone()
        };
        InferenceRecorder {
            detector: histogram(detector),
            embedder: embedder.map(histogram),
            crops: self.embedder_batch_crops.clone(),
        }
    }

    pub fn published(&self, descriptor: &pb::FrameDescriptor) {
        self.descriptors_published.inc();
        self.descriptor_bytes
            .inc_by(prost::Message::encoded_len(descriptor) as u64);
        for event in &descriptor.track_events {
            // An unknown value counts as unspecified.
            self.track_event_counters[event.kind() as usize].inc();
        }
        self.appearance_bytes.inc_by(
            appearances(descriptor)
                .map(|a| prost::Message::encoded_len(a) as u64)
                .sum(),
        );
        if let Some(export) = &descriptor.pixel_export {
            let outcome = if export.refused.is_empty() { "sent" } else { "refused" };
            let camera = || ("camera", descriptor.camera_id.clone());
            self.pixel_exports
                .get_or_create(&[camera(), ("kind", export.kind.clone()), ("outcome", outcome.into())])
                .inc();
            self.pixel_export_frames
                .get_or_create(&[camera(), ("kind", export.kind.clone())])
                .inc_by(u64::from(export.frames));
        }
    }

    /// A zone event of `camera`, whose track is of class `class_name`.
    pub fn zone_event(&self, camera: &str, event: &pb::ZoneEvent, class_name: &str) {
        let kind = event.kind();
        self.zone_events
            .get_or_create(&[
                ("camera", camera.to_string()),
                ("zone", event.zone_id.clone()),
                ("kind", crate::wire::zone_event_kind_label(kind).to_string()),
                ("direction", event.direction.clone()),
                ("class", class_name.to_string()),
            ])
            .inc();
        let occupancy = || {
            self.zone_occupancy.get_or_create(&[
                ("camera", camera.to_string()),
                ("zone", event.zone_id.clone()),
                ("class", class_name.to_string()),
            ])
        };
        match kind {
            pb::ZoneEventKind::Entered => {
                occupancy().inc();
            }
            pb::ZoneEventKind::Left => {
                occupancy().dec();
            }
            _ => {}
        }
    }

    /// The histogram of how long after their capture a camera's analysed frames are published,
    /// resolved once per camera by the describer (a label lookup per frame is not needed).
    pub fn capture_to_publish(&self, camera: &str) -> Histogram {
        self.capture_to_publish
            .get_or_create(&[("camera", camera.to_string())])
            .clone()
    }

    /// One subscriber's counters, resolved once per stream rather than per descriptor.
    pub fn subscriber_counters(&self, subscriber: &str) -> SubscriberCounters {
        let labels = [("subscriber", subscriber.to_string())];
        SubscriberCounters {
            sent: self.subscriber_sent.get_or_create(&labels).clone(),
            fallbacks: self.subscriber_fallbacks.get_or_create(&labels).clone(),
        }
    }

    /// The certificate `listener` (grpc, metrics) serves now expires at `not_after_unix`.
    pub fn tls_certificate(&self, listener: &'static str, not_after_unix: i64) {
        self.tls_not_after
            .get_or_create(&[("listener", listener)])
            .set(not_after_unix);
    }

    pub fn subscriber_refused(&self) {
        self.subscribers_refused.inc();
    }

    pub fn log_committed(&self, records: u64, bytes: u64, took: Duration) {
        self.log.stored.inc_by(records);
        self.log.stored_bytes.inc_by(bytes);
        self.log.commit_seconds.observe(took.as_secs_f64());
    }

    pub fn log_unstored(&self, records: u64) {
        self.log.unstored.inc_by(records);
    }

    pub fn log_evicted(&self, records: u64) {
        self.log.evicted.inc_by(records);
    }

    pub fn log_bytes(&self, bytes: u64) {
        self.log.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn log_healthy(&self, healthy: bool) {
        self.log.healthy.set(i64::from(healthy));
    }

    /// Descriptors that reached the log but not its disk, so far.
    pub fn log_unstored_total(&self) -> u64 {
        self.log.unstored.get()
    }

    pub fn frame_failed(&self) {
        self.frames_failed.inc();
    }

    /// The series one push target records into, looked up once.
    pub fn push_recorder(&self, target: &str) -> PushRecorder {
        let label = || [("target", target.to_string())];
        let push = &self.push;
        PushRecorder {
            states: PUSH_STATES.map(|state| {
                push.state
                    .get_or_create(&[("target", target.to_string()), ("state", state.to_string())])
                    .clone()
            }),
            acked_offset: push.acked_offset.get_or_create(&label()).clone(),
            lag_records: push.lag_records.get_or_create(&label()).clone(),
            lag_seconds: push.lag_seconds.get_or_create(&label()).clone(),
            reconnects: push.reconnects.get_or_create(&label()).clone(),
            sent: push.sent.get_or_create(&label()).clone(),
        }
    }

    pub fn encode(&self) -> Result<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|_| Error::Internal("metrics encoding failed".into()))?;
        Ok(text)
    }
}

/// One push target's series.
pub struct PushRecorder {
    states: [Gauge; PUSH_STATES.len()],
    pub acked_offset: Gauge,
    pub lag_records: Gauge,
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub reconnects: Counter,
    pub sent: Counter,
}

impl PushRecorder {
    /// Sets `state` (one of [`PUSH_STATES`]) to 1 and the others to 0.
    pub fn state(&self, state: &str) {
        for (name, gauge) in PUSH_STATES.iter().zip(&self.states) {
            gauge.set(i64::from(*name == state));
        }
    }
}

/// Where one frame's analysis spent its time: what a worker measures and its
/// [`InferenceRecorder`] records. It lives here, beside the recorder, so that the metrics need
/// nothing from the stages that report to them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub detector: Duration,
    pub embedder: Duration,
    pub crops: usize,
}

impl Timings {
    /// A model set's time for the frame: what the self-test, the shadow run and the watch
    /// compare between two sets.
    pub fn models(&self) -> Duration {
        self.detector + self.embedder
    }
}

pub struct InferenceRecorder {
    detector: Histogram,
    embedder: Option<Histogram>,
    crops: Histogram,
}

impl InferenceRecorder {
    pub fn observe(&self, timings: &Timings) {
        self.detector.observe(timings.detector.as_secs_f64());
        if let Some(embedder) = &self.embedder {
            embedder.observe(timings.embedder.as_secs_f64());
            self.crops.observe(timings.crops as f64);
        }
    }
}

#[derive(Debug)]
struct CameraCollector {
    cameras: Cameras,
}

impl Collector for CameraCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let cameras = self.cameras.read().unwrap_or_else(|p| p.into_inner()).clone();
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        type Read = fn(&CameraStatus) -> u64;
        let counters: [(&str, &str, Read); 4] = [
            (
                "retina_camera_frames_decoded",
                "Frames decoded, before the analysis-rate filter",
                |c| c.frames_decoded.load(Ordering::Relaxed),
            ),
            (
                "retina_camera_frames_queued",
                "Frames handed to the inference queue",
                |c| c.frames_queued.load(Ordering::Relaxed),
            ),
            ("retina_camera_frames_analysed", "Frames analysed and published", |c| {
                c.frames_analysed.load(Ordering::Relaxed)
            }),
            ("retina_camera_restarts", "Pipeline rebuilds after a failure", |c| {
                c.restarts.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
            for camera in &cameras {
                ConstCounter::new(read(camera)).encode(family.encode_family(&[("camera", camera.id.as_str())])?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "retina_camera_frames_dropped",
            "Frames not analysed: analysis_rate = decoded, then skipped by design to keep to \
             analysis_fps; not_decoded = kept from the decoder, only keyframes were decoded; \
             inference_busy = dropped from a full inference queue",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for camera in &cameras {
            let queued = load(&camera.frames_queued);
            let by_rate = load(&camera.frames_decoded).saturating_sub(queued);
            for (reason, n) in [
                ("analysis_rate", by_rate),
                ("not_decoded", load(&camera.frames_not_decoded)),
                ("inference_busy", load(&camera.frames_dropped)),
            ] {
                let labels = [("camera", camera.id.as_str()), ("reason", reason)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "retina_camera_state",
            "1 for the camera's current state",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for camera in &cameras {
            let current = camera.condition().state;
            for state in CAMERA_STATES {
                let name = crate::wire::camera_state_label(state);
                let labels = [("camera", camera.id.as_str()), ("state", name.as_str())];
                ConstGauge::new(i64::from(current == state)).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "retina_camera_failures",
            "Pipeline failures by kind (CameraInfo.failure); only kinds that happened are listed",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for camera in &cameras {
            for (kind, n) in camera.failure_counts().filter(|&(_, n)| n > 0) {
                let labels = [("camera", camera.id.as_str()), ("kind", kind.label())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "retina_camera_reconnect_attempts",
            "Failed attempts since the camera last delivered a frame",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for camera in &cameras {
            let attempts = i64::from(camera.reconnect_attempts.load(Ordering::Relaxed));
            ConstGauge::new(attempts).encode(family.encode_family(&[("camera", camera.id.as_str())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "retina_camera_last_frame_age_seconds",
            "Seconds since the camera's last frame (absent before the first)",
            None,
            ConstGauge::new(0f64).metric_type(),
        )?;
        for camera in &cameras {
            if let Some(age) = camera.last_frame_age() {
                ConstGauge::new(age.as_secs_f64()).encode(family.encode_family(&[("camera", camera.id.as_str())])?)?;
            }
        }

        // The video ring of each camera whose video is kept, as of its latest closed segment.
        let rings: Vec<_> = cameras.iter().filter(|c| c.ring.known()).collect();
        let mut family = encoder.encode_descriptor(
            "retina_video_ring_bytes",
            "Bytes of the camera's closed video segments",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for camera in &rings {
            let bytes = i64::try_from(camera.ring.bytes()).unwrap_or(i64::MAX);
            ConstGauge::new(bytes).encode(family.encode_family(&[("camera", camera.id.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "retina_video_ring_seconds",
            "Capture time the camera's video ring spans, from its oldest segment's start to its newest's end",
            None,
            ConstGauge::new(0f64).metric_type(),
        )?;
        for camera in &rings {
            ConstGauge::new(camera.ring.span_seconds())
                .encode(family.encode_family(&[("camera", camera.id.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "retina_video_segments_pruned",
            "Video segments removed to keep the ring within video.max_bytes_per_camera and max_age_hours",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for camera in &rings {
            ConstCounter::new(camera.ring.pruned()).encode(family.encode_family(&[("camera", camera.id.as_str())])?)?;
        }
        Ok(())
    }
}

const CAMERA_STATES: [pb::CameraState; 6] = [
    pb::CameraState::Starting,
    pb::CameraState::Streaming,
    pb::CameraState::Stalled,
    pb::CameraState::Reconnecting,
    pb::CameraState::Stopped,
    pb::CameraState::Failed,
];

/// Serves `GET /metrics` with what `encode` renders (the node's metrics, or the collector's),
/// and `pages` beside it, until shutdown: over TLS if `tls`, to holders of a `metrics` token if
/// `tokens` (Prometheus sends one with `authorization` in its scrape config).
pub async fn serve(
    listener: tokio::net::TcpListener,
    encode: impl Fn() -> Result<String> + Clone + Send + Sync + 'static,
    pages: axum::Router,
    tls: Option<Arc<crate::access::Tls>>,
    tokens: Option<Arc<crate::access::Tokens>>,
    shutdown: Shutdown,
) -> Result<()> {
    use axum::http::{StatusCode, header};
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let encode = encode.clone();
            let tokens = tokens.clone();
            async move {
                let scope = crate::access::Scope::Metrics;
                if let Some((code, message)) = crate::access::http_refusal(tokens.as_deref(), scope, &headers) {
                    return (
                        code,
                        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        format!("{message}\n"),
                    );
                }
                match encode() {
                    Ok(text) => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        text,
                    ),
                    Err(_) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        "metrics encoding failed".to_string(),
                    ),
                }
            }
        }),
    );
    let app = app.merge(pages);
    let stopped = async move { shutdown.wait().await };
    match tls {
        Some(tls) => {
            let incoming =
                crate::access::TlsIncoming::new(listener, tls).map_err(|e| Error::io("metrics endpoint address", e))?;
            axum::serve(incoming, app).with_graceful_shutdown(stopped).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(stopped).await,
    }
    .map_err(|e| Error::io("serving metrics", e))
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding metrics endpoint {addr}"), e))
}
