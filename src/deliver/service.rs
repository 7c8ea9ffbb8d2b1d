//! The gRPC service `retina.v1.Retina`, with the standard health service and server reflection
//! beside it so that `grpcurl` and load balancers work without the .proto.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::hub::Hub;
use crate::clock::{UnixNanos, to_timestamp};
use crate::config::{CameraConfig, CameraPositionConfig};
use crate::describe::emit::score_q8;
use crate::describe::projection::Projection;
use crate::error::Result;
use crate::infer::ModelCard;
use crate::ingest::{CameraChange, CameraManager, CameraStatus, Cameras};
use crate::metrics::Metrics;
use crate::pb::{self, retina_server::Retina, retina_server::RetinaServer};
use crate::shutdown::Shutdown;

/// Encoded descriptor set of `proto/`, written by build.rs, served by reflection.
const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/retina_descriptor.bin"));

/// Descriptors that may wait between a subscriber's reader task and its HTTP/2 stream. Most of
/// a subscriber's buffer is the hub's ring; this only smooths the hand-over.
const STREAM_BUFFER: usize = 16;

/// What `GetNodeInfo` reports; fixed at start except the cameras' live state.
pub struct NodeFacts {
    pub node_id: String,
    pub run_id: u64,
    pub started_at: UnixNanos,
    pub cameras: Cameras,
    /// (role, model, its projection)
    pub models: Vec<(String, ModelCard, Option<Arc<Projection>>)>,
    /// Detector class names, to validate subscription filters.
    pub class_names: Vec<String>,
}

pub struct RetinaService {
    hub: Arc<Hub>,
    facts: Arc<NodeFacts>,
    metrics: Arc<Metrics>,
    manager: Arc<CameraManager>,
}

/// A subscriber's filters, validated.
struct Filter {
    cameras: HashSet<String>,
    class_ids: HashSet<u32>,
    min_score: f32,
    /// `min_score` as tracks carry scores.
    min_score_q8: u32,
    include_empty_frames: bool,
    full_context: bool,
}

impl Filter {
    fn from_request(request: &pb::SubscribeRequest, facts: &NodeFacts) -> Result<Filter, Status> {
        if !(0.0..=1.0).contains(&request.min_score) {
            return Err(Status::invalid_argument(format!(
                "min_score must lie in 0..=1, got {}",
                request.min_score
            )));
        }
        let mut class_ids = HashSet::new();
        for class in &request.class_names {
            let Some(id) = facts.class_names.iter().position(|c| c == class) else {
                return Err(Status::invalid_argument(format!(
                    "unknown class {class:?}; the detector's classes are: {}",
                    facts.class_names.join(", ")
                )));
            };
            class_ids.insert(id as u32);
        }
        let known: HashSet<String> = facts
            .cameras
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| c.id.clone())
            .collect();
        if let Some(unknown) = request.camera_ids.iter().find(|c| !known.contains(*c)) {
            let mut known: Vec<String> = known.into_iter().collect();
            known.sort();
            return Err(Status::not_found(format!(
                "no camera {unknown:?} on this node; cameras: {}",
                known.join(", ")
            )));
        }
        Ok(Filter {
            cameras: request.camera_ids.iter().cloned().collect(),
            class_ids,
            min_score: request.min_score,
            min_score_q8: score_q8(request.min_score),
            include_empty_frames: request.include_empty_frames,
            full_context: request.full_context,
        })
    }

    /// The descriptor as this subscriber should see it, or `None` to skip it. Scores filter what
    /// is seen in the frame (objects, tracks); classes filter that and the track events. The
    /// context fields are copied only when `sent` says the subscriber needs them.
    fn apply(&self, descriptor: &pb::FrameDescriptor, sent: &mut SentContext) -> Option<pb::FrameDescriptor> {
        if !self.cameras.is_empty() && !self.cameras.contains(&descriptor.camera_id) {
            return None;
        }
        let min_score_q8 = self.min_score_q8;
        let keep_class = |class_id: u32| self.class_ids.is_empty() || self.class_ids.contains(&class_id);
        let keep_object = |o: &pb::DetectedObject| o.score >= self.min_score && keep_class(o.class_id);
        let keep_track = |t: &pb::TrackedObject| t.score_q8 >= min_score_q8 && keep_class(t.class_id);
        let keep_event = |e: &pb::TrackEvent| keep_class(e.class_id);
        // Only what is kept is copied: with filters, most of a descriptor may be left behind.
        let objects: Vec<_> = descriptor.objects.iter().filter(|o| keep_object(o)).cloned().collect();
        let tracks: Vec<_> = descriptor.tracks.iter().filter(|t| keep_track(t)).cloned().collect();
        let track_events: Vec<_> = descriptor
            .track_events
            .iter()
            .filter(|e| keep_event(e))
            .cloned()
            .collect();
        if objects.is_empty() && tracks.is_empty() && track_events.is_empty() && !self.include_empty_frames {
            return None;
        }
        let d = descriptor;
        let mut message = pb::FrameDescriptor {
            camera_id: d.camera_id.clone(),
            sequence: d.sequence,
            capture_time: d.capture_time,
            time_source: d.time_source,
            objects,
            tracks,
            track_events,
            ..Default::default()
        };
        if self.full_context || sent.changed(d) {
            super::copy_context(d, &mut message);
        }
        Some(message)
    }
}

/// The context fields of the descriptors a subscriber was last sent, per camera, so that they are
/// sent only when they change (see `FrameDescriptor` in the proto).
#[derive(Default)]
struct SentContext {
    per_camera: HashMap<String, pb::FrameDescriptor>,
}

impl SentContext {
    /// Whether the context of `descriptor` differs from what this subscriber was last sent for its
    /// camera; if so, it counts as sent from now on.
    fn changed(&mut self, descriptor: &pb::FrameDescriptor) -> bool {
        let unchanged = self
            .per_camera
            .get(&descriptor.camera_id)
            .is_some_and(|sent| super::same_context(sent, descriptor));
        if !unchanged {
            self.per_camera
                .insert(descriptor.camera_id.clone(), super::context_of(descriptor));
        }
        !unchanged
    }
}

#[tonic::async_trait]
impl Retina for RetinaService {
    type SubscribeStream = ReceiverStream<Result<pb::FrameDescriptor, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let request = request.into_inner();
        let filter = Filter::from_request(&request, &self.facts)?;
        let name = match request.subscriber_name.as_str() {
            "" => "anonymous".to_string(),
            name if name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
                name.to_string()
            }
            name => {
                return Err(Status::invalid_argument(format!(
                    "subscriber_name {name:?}: use up to 64 letters, digits, '-', '_' or '.'"
                )));
            }
        };
        let with_replay = request.start() == pb::StartPosition::EarliestBuffered;
        let (replay, live) = self.hub.subscribe(with_replay);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let metrics = self.metrics.clone();
        tracing::info!(subscriber = %name, %peer, cameras = ?request.camera_ids, classes = ?request.class_names,
            "subscriber joined");
        tokio::spawn(async move {
            metrics.subscribers.inc();
            forward(&name, filter, replay, live, &tx, &metrics).await;
            metrics.subscribers.dec();
            tracing::info!(subscriber = %name, %peer, "subscriber left");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_node_info(&self, _: Request<pb::GetNodeInfoRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        let facts = &self.facts;
        let cameras = facts
            .cameras
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|camera| camera_info(camera))
            .collect();
        let models = facts
            .models
            .iter()
            .map(|(role, card, projection)| pb::ModelInfo {
                role: role.clone(),
                id: card.id.clone(),
                version: card.version.clone(),
                decoder: card.decoder.clone(),
                sha256: card.sha256.clone(),
                input_shape: card.input_shape.clone(),
                class_names: card.class_names.clone(),
                projection_id: projection.as_ref().map(|p| p.id().to_string()).unwrap_or_default(),
                projection_sha256: projection.as_ref().map(|p| p.sha256().to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::NodeInfo {
            node_id: facts.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_run_id: facts.run_id,
            started_at: Some(to_timestamp(facts.started_at)),
            cameras,
            models,
        }))
    }

    async fn add_camera(&self, request: Request<pb::AddCameraRequest>) -> Result<Response<pb::CameraInfo>, Status> {
        let spec = request
            .into_inner()
            .camera
            .ok_or_else(|| Status::invalid_argument("camera is required"))?;
        let mut config = CameraConfig::new(spec.camera_id, spec.uri);
        config.analysis_fps = spec.analysis_fps.unwrap_or(config.analysis_fps);
        config.enabled = spec.enabled.unwrap_or(true);
        config.loop_file = spec.loop_file;
        config.position = spec.position.map(position_config);
        let manager = self.manager.clone();
        let status = blocking(move || manager.add(config)).await?;
        Ok(Response::new(camera_info(&status)))
    }

    async fn update_camera(
        &self,
        request: Request<pb::UpdateCameraRequest>,
    ) -> Result<Response<pb::CameraInfo>, Status> {
        let request = request.into_inner();
        let change = CameraChange {
            uri: request.uri,
            analysis_fps: request.analysis_fps,
            enabled: request.enabled,
            position: request.position.map(position_config),
        };
        let manager = self.manager.clone();
        let status = blocking(move || manager.update(&request.camera_id, change)).await?;
        Ok(Response::new(camera_info(&status)))
    }

    async fn remove_camera(
        &self,
        request: Request<pb::RemoveCameraRequest>,
    ) -> Result<Response<pb::RemoveCameraResponse>, Status> {
        let id = request.into_inner().camera_id;
        let manager = self.manager.clone();
        blocking(move || manager.remove(&id)).await?;
        Ok(Response::new(pb::RemoveCameraResponse {}))
    }
}

/// Camera changes start and stop pipelines and write files: never on an async worker.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> crate::Result<T> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("camera change task: {e}")))?
        .map_err(Status::from)
}

fn position_config(p: pb::CameraPosition) -> CameraPositionConfig {
    CameraPositionConfig {
        latitude: p.latitude,
        longitude: p.longitude,
        heading_degrees: p.heading_degrees,
        description: p.description,
    }
}

fn camera_info(camera: &CameraStatus) -> pb::CameraInfo {
    let condition = camera.condition();
    let settings = camera.settings();
    pb::CameraInfo {
        camera_id: camera.id.clone(),
        uri: settings.uri_redacted,
        state: condition.state as i32,
        frames_analysed: camera.frames_analysed.load(Ordering::Relaxed),
        frames_dropped: camera.frames_dropped.load(Ordering::Relaxed),
        last_error: condition.last_error.unwrap_or_default(),
        failure: condition.failure.map(|f| f.label().to_string()).unwrap_or_default(),
        position: settings.position,
        analysis_fps: settings.analysis_fps,
        reconnect_attempts: camera.reconnect_attempts.load(Ordering::Relaxed),
        restarts: camera.restarts.load(Ordering::Relaxed),
        last_frame_age_seconds: camera.last_frame_age().map(|age| age.as_secs_f64()),
        time_source: camera.time_source() as i32,
        enabled: settings.enabled,
    }
}

/// Copies one subscriber's descriptors from the hub to its stream until either side ends.
async fn forward(
    name: &str,
    filter: Filter,
    replay: Vec<Arc<pb::FrameDescriptor>>,
    live: Option<broadcast::Receiver<Arc<pb::FrameDescriptor>>>,
    tx: &mpsc::Sender<Result<pb::FrameDescriptor, Status>>,
    metrics: &Metrics,
) {
    let mut sent = SentContext::default();
    let mut prepare = |descriptor: &pb::FrameDescriptor| filter.apply(descriptor, &mut sent);
    let counters = metrics.subscriber_counters(name);
    for descriptor in replay {
        if let Some(message) = prepare(&descriptor) {
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
            counters.sent.inc();
        }
    }
    let Some(mut live) = live else { return };
    loop {
        let received = tokio::select! {
            received = live.recv() => received,
            // The client went away while nothing was being published.
            () = tx.closed() => return,
        };
        match received {
            Ok(descriptor) => {
                if let Some(message) = prepare(&descriptor) {
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                    counters.sent.inc();
                }
            }
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                counters.dropped.inc_by(lost);
                tracing::warn!(subscriber = %name, lost, "slow subscriber lost its oldest descriptors");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The standard health service, whose Watch streams end when the server stops. tonic's graceful
/// stop waits for every open stream, and a health watch never ends by itself: one load balancer
/// watching the node kept the node from ever exiting.
struct StoppingHealth {
    inner: tonic_health::server::HealthService,
    server_stopping: Shutdown,
}

#[tonic::async_trait]
impl Health for StoppingHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = UntilStopped<tonic_health::server::WatchStream>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        let stopping = self.server_stopping.clone();
        Ok(Response::new(UntilStopped {
            inner: statuses,
            stopped: Box::pin(async move { stopping.wait().await }),
        }))
    }
}

/// `inner` until the server stops; what `inner` has ready (the last status) still goes first.
struct UntilStopped<S> {
    inner: S,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<S: Stream + Unpin> Stream for UntilStopped<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        self.stopped.as_mut().poll(cx).map(|()| None)
    }
}

/// Serves gRPC on `listener` until `shutdown`; then stops accepting, lets open streams end
/// (the hub is closed by then, health watches end) and returns. Health reports
/// `retina.v1.Retina` `NOT_SERVING` from `stopping` on: the node stops taking new work long
/// before its server goes, and a load balancer must hear it then.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    facts: Arc<NodeFacts>,
    metrics: Arc<Metrics>,
    manager: Arc<CameraManager>,
    stopping: Shutdown,
    shutdown: Shutdown,
) -> Result<()> {
    let health_reporter = tonic_health::server::HealthReporter::new();
    health_reporter.set_serving::<RetinaServer<RetinaService>>().await;
    let health_service = HealthServer::new(StoppingHealth {
        inner: tonic_health::server::HealthService::from_health_reporter(health_reporter.clone()),
        server_stopping: shutdown.clone(),
    });
    let reporter = health_reporter.clone();
    let server_stopped = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stopping.wait() => reporter.set_not_serving::<RetinaServer<RetinaService>>().await,
            () = server_stopped.wait() => {}
        }
    });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| crate::error::Error::Internal(format!("reflection: {e}")))?;
    // grpcurl 1.8 still asks the v1alpha service.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| crate::error::Error::Internal(format!("reflection: {e}")))?;
    let service = RetinaService {
        hub,
        facts,
        metrics,
        manager,
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(RetinaServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.wait().await;
        })
        .await?;
    Ok(())
}
