//! The gRPC service `retina.v1.Retina`, with the standard health service and server reflection
//! beside it so that `grpcurl` and load balancers work without the .proto.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

use sha2::Digest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::filter::{Filter, SentContext, gap_notice};
use super::models::ModelControl;
use crate::clock::{UnixNanos, timestamp_nanos, to_timestamp};
use crate::config::{CameraConfig, CameraPositionConfig, CountingPlaces, DeliverConfig};
use crate::describe::projection::Projection;
use crate::error::Result;
use crate::infer::ModelCard;
use crate::ingest::{CameraChange, CameraManager, CameraStatus, Cameras};
use crate::log::{Entry, LogReader, QueryKey, Selection, Start, Subscription};
use crate::metrics::{Metrics, SubscriberCounters};
use crate::pb::{
    self, admin_server::Admin, admin_server::AdminServer, retina_server::Retina, retina_server::RetinaServer,
};
use crate::shutdown::Shutdown;
use crate::wire::sampling;

/// Encoded descriptor set of `proto/`, written by build.rs, served by reflection.
const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/retina_descriptor.bin"));

/// Descriptors that may wait between a subscriber's reader task and its HTTP/2 stream. A reader
/// that falls further behind reads from the log; this only smooths the hand-over.
const STREAM_BUFFER: usize = 16;

/// Query pages: the default size and the most a page may ask for.
const QUERY_PAGE_DEFAULT: usize = 100;
const QUERY_PAGE_MAX: usize = 1000;
/// Records one Query call reads at most, so that a filter that matches little cannot make a call
/// scan the whole log; the page then comes back short, with a token to go on.
const QUERY_SCAN_BUDGET: usize = 20_000;

/// The largest request a client may send: a camera spec or a subscription's filters are far
/// smaller. Larger ones are refused by tonic with OUT_OF_RANGE before they are decoded.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The most metadata (HTTP/2 headers) a call may carry: a token and a few fields need well
/// under 1 KiB. Larger header lists are refused by the HTTP/2 layer before any handler runs.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// What one client may hold of the node.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_subscribers: usize,
    pub subscriber_idle: Duration,
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
    pub max_streams_per_connection: u32,
}

impl From<&DeliverConfig> for Limits {
    fn from(config: &DeliverConfig) -> Self {
        Limits {
            max_subscribers: config.max_subscribers,
            subscriber_idle: Duration::from_secs_f64(config.subscriber_idle_seconds),
            keepalive: Duration::from_secs_f64(config.keepalive_seconds),
            keepalive_timeout: Duration::from_secs_f64(config.keepalive_timeout_seconds),
            max_streams_per_connection: config.max_streams_per_connection,
        }
    }
}

/// What `GetNodeInfo` reports; fixed at start except the cameras' live state and the model set,
/// which a live switch replaces.
pub struct NodeFacts {
    pub node_id: String,
    pub run_id: u64,
    pub started_at: UnixNanos,
    pub cameras: Cameras,
    models: std::sync::RwLock<Arc<RunningModels>>,
}

/// The model set the workers run.
#[derive(Clone)]
pub struct RunningModels {
    /// 0 for the set the node started with, one more for every live switch.
    pub generation: u64,
    /// (role, model, its projection)
    pub models: Vec<(String, ModelCard, Option<Arc<Projection>>)>,
    /// Detector class names, to validate subscription filters.
    pub class_names: Vec<String>,
}

impl NodeFacts {
    pub fn new(node_id: String, run_id: u64, started_at: UnixNanos, cameras: Cameras, models: RunningModels) -> Self {
        NodeFacts {
            node_id,
            run_id,
            started_at,
            cameras,
            models: std::sync::RwLock::new(Arc::new(models)),
        }
    }

    pub fn models(&self) -> Arc<RunningModels> {
        self.models.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_models(&self, models: RunningModels) {
        *self.models.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(models);
    }
}

pub struct RetinaService {
    log: LogReader,
    facts: Arc<NodeFacts>,
    metrics: Arc<Metrics>,
    limits: Limits,
    subscriber_slots: Arc<Semaphore>,
}

/// Camera administration (`retina.v1.Admin`).
pub struct AdminService {
    manager: Arc<CameraManager>,
    sources: Arc<SourcePolicy>,
    models: Arc<dyn ModelControl>,
    /// One upload at a time: each may hold hundreds of MB on disk until it is stored.
    upload_slot: Arc<Semaphore>,
}

/// What the gRPC listener enforces: TLS, tokens, and where cameras added over it may point.
pub struct Guarded {
    pub tls: Option<Arc<crate::access::Tls>>,
    pub tokens: Option<Arc<crate::access::Tokens>>,
    pub sources: SourcePolicy,
}

/// Where `AddCamera` and `UpdateCamera` may point a camera (`[admin]` in the config).
pub struct SourcePolicy {
    pub admin: crate::config::AdminConfig,
    /// Relative paths are resolved against the config file's directory, as the manager does.
    pub base_dir: std::path::PathBuf,
}

impl SourcePolicy {
    fn check(&self, uri: &str) -> Result<(), Status> {
        crate::access::check_camera_source(uri, &self.admin, &self.base_dir).map_err(Status::permission_denied)
    }
}

#[tonic::async_trait]
impl Retina for RetinaService {
    type SubscribeStream = SubscriberStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Behind tokens, the token's name labels this reader: a client cannot pick its own label
        // (nor make up a new metric series per connection).
        let caller = caller_name(&request);
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let request = request.into_inner();
        let filter = Filter::from_request(&request, &self.facts)?;
        let name = match (caller, request.subscriber_name.as_str()) {
            (Some(caller), _) => caller,
            (None, "") => "anonymous".to_string(),
            (None, name)
                if name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                name.to_string()
            }
            (None, name) => {
                return Err(Status::invalid_argument(format!(
                    "subscriber_name {}: use up to 64 letters, digits, '-', '_' or '.'",
                    crate::error::quoted(name)
                )));
            }
        };
        let start = match request.start() {
            pb::StartPosition::Unspecified | pb::StartPosition::Live => Start::Live,
            pb::StartPosition::Earliest => Start::Earliest,
            pb::StartPosition::AfterOffset => Start::AfterOffset(request.after_offset),
            pb::StartPosition::FromTime => Start::FromTime(
                request
                    .from_time
                    .map(timestamp_nanos)
                    .ok_or_else(|| Status::invalid_argument("START_POSITION_FROM_TIME needs from_time"))?,
            ),
        };
        let Ok(slot) = self.subscriber_slots.clone().try_acquire_owned() else {
            self.metrics.subscriber_refused();
            return Err(Status::resource_exhausted(format!(
                "{} subscribers are connected, the most this node serves (deliver.max_subscribers)",
                self.limits.max_subscribers
            )));
        };
        let subscription = self.log.subscribe(start).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (end_tx, end_rx) = oneshot::channel();
        let metrics = self.metrics.clone();
        let idle = self.limits.subscriber_idle;
        tracing::info!(subscriber = %name, %peer, cameras = ?request.camera_ids, classes = ?request.class_names,
            ?start, "subscriber joined");
        tokio::spawn(async move {
            let _slot: OwnedSemaphorePermit = slot;
            metrics.subscribers.inc();
            let counters = metrics.subscriber_counters(&name);
            let end = forward(subscription, filter, &tx, &counters, idle).await;
            metrics.subscribers.dec();
            match end {
                Ok(()) => tracing::info!(subscriber = %name, %peer, "subscriber left"),
                Err(status) => {
                    tracing::warn!(subscriber = %name, %peer, status = %status.message(), "subscriber cut off");
                    let _ = end_tx.send(status);
                }
            }
        });
        Ok(Response::new(SubscriberStream {
            descriptors: rx,
            end: Some(end_rx),
        }))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        let request = request.into_inner();
        let page_size = match request.page_size as usize {
            0 => QUERY_PAGE_DEFAULT,
            n if n <= QUERY_PAGE_MAX => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "page_size {n} is above the most a page holds ({QUERY_PAGE_MAX})"
                )));
            }
        };
        let filter = Filter::for_query(&request.class_names, &self.facts)?;
        let selection = Selection {
            camera_id: Some(request.camera_id.clone()).filter(|c| !c.is_empty()),
            track_id: Some(request.track_id).filter(|&t| t != 0),
            from_ns: request.from_time.map(timestamp_nanos),
            to_ns: request.to_time.map(timestamp_nanos),
            newest_first: request.newest_first,
        };
        let query_id = query_id(&selection, &request.class_names);
        let mut after = match request.page_token.as_str() {
            "" => None,
            token => Some(parse_page_token(token, &query_id)?),
        };
        let mut page = Vec::new();
        let mut scanned = 0;
        let mut more = true;
        while page.len() < page_size && scanned < QUERY_SCAN_BUDGET {
            let asked = page_size.max(64);
            let chunk = self.log.select(selection.clone(), after, asked).await?;
            let exhausted = chunk.len() < asked;
            for (key, descriptor) in chunk {
                after = Some(key);
                scanned += 1;
                if let Some(message) = filter.apply(&descriptor, &mut SentContext::default()) {
                    page.push(message);
                    if page.len() == page_size {
                        break;
                    }
                }
            }
            if exhausted && page.len() < page_size {
                more = false;
                break;
            }
        }
        let next_page_token = match after {
            Some(key) if more => format!("{query_id}.{}.{}", key.capture_ns, key.offset),
            _ => String::new(),
        };
        Ok(Response::new(pb::QueryResponse {
            descriptors: page,
            next_page_token,
        }))
    }

    async fn get_node_info(&self, _: Request<pb::GetNodeInfoRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        Ok(Response::new(node_info(&self.facts)))
    }
}

/// What the node is and runs now: `GetNodeInfo`, and the hello of a push.
pub(super) fn node_info(facts: &NodeFacts) -> pb::NodeInfo {
    let cameras = facts
        .cameras
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|camera| camera_info(camera))
        .collect();
    let running = facts.models();
    let models = running
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
    pb::NodeInfo {
        node_id: facts.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        node_run_id: facts.run_id,
        started_at: Some(to_timestamp(facts.started_at)),
        cameras,
        models,
        model_generation: running.generation,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn add_camera(&self, request: Request<pb::AddCameraRequest>) -> Result<Response<pb::CameraInfo>, Status> {
        let spec = request
            .into_inner()
            .camera
            .ok_or_else(|| Status::invalid_argument("camera is required"))?;
        self.sources.check(&spec.uri)?;
        let mut config = CameraConfig::new(spec.camera_id, spec.uri);
        config.analysis_fps = spec.analysis_fps.unwrap_or(config.analysis_fps);
        config.enabled = spec.enabled.unwrap_or(true);
        config.loop_file = spec.loop_file;
        config.position = spec.position.map(position_config);
        let places = CountingPlaces::from_message(pb::CountingPlaces {
            zones: spec.zones,
            lines: spec.lines,
        })
        .map_err(Status::invalid_argument)?;
        config.zones = places.zones;
        config.lines = places.lines;
        let manager = self.manager.clone();
        let status = blocking(move || manager.add(config)).await?;
        Ok(Response::new(camera_info(&status)))
    }

    async fn update_camera(
        &self,
        request: Request<pb::UpdateCameraRequest>,
    ) -> Result<Response<pb::CameraInfo>, Status> {
        let request = request.into_inner();
        if let Some(uri) = &request.uri {
            self.sources.check(uri)?;
        }
        let change = CameraChange {
            uri: request.uri,
            analysis_fps: request.analysis_fps,
            enabled: request.enabled,
            position: request.position.map(position_config),
            counting: request
                .counting
                .map(CountingPlaces::from_message)
                .transpose()
                .map_err(Status::invalid_argument)?,
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

    async fn upload_model(
        &self,
        request: Request<tonic::Streaming<pb::UploadModelRequest>>,
    ) -> Result<Response<pb::StoredModelInfo>, Status> {
        let _slot = self
            .upload_slot
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("another model upload is in progress; try again after it"))?;
        let who = caller_name(&request);
        let stored = super::models::receive(self.models.clone(), request.into_inner()).await?;
        tracing::info!(hash = %stored.hash, id = %stored.id, version = %stored.version, caller = ?who,
            "model package received and stored");
        Ok(Response::new(stored))
    }

    async fn list_models(&self, _: Request<pb::ListModelsRequest>) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self.models.clone();
        let (stored, active) = blocking(move || models.stored()).await?;
        let active = active.unwrap_or_default();
        Ok(Response::new(pb::ListModelsResponse {
            models: stored.iter().map(super::models::stored_info).collect(),
            active_detector: active.detector,
            active_embedder: active.embedder,
        }))
    }

    async fn activate_models(
        &self,
        request: Request<pb::ActivateModelsRequest>,
    ) -> Result<Response<pb::ActivateModelsResponse>, Status> {
        let who = caller_name(&request);
        let request = request.into_inner();
        let wanted = |hash: String| (!hash.is_empty()).then_some(hash);
        let (detector, embedder) = (wanted(request.detector), wanted(request.embedder));
        let models = self.models.clone();
        let running = blocking(move || models.switch(detector.as_deref(), embedder.as_deref())).await?;
        tracing::info!(generation = running.generation, caller = ?who, "model set activated over gRPC");
        Ok(Response::new(super::models::activated(running)))
    }

    async fn rollback_models(
        &self,
        request: Request<pb::RollbackModelsRequest>,
    ) -> Result<Response<pb::ActivateModelsResponse>, Status> {
        let who = caller_name(&request);
        let models = self.models.clone();
        let running = blocking(move || models.roll_back()).await?;
        tracing::info!(generation = running.generation, caller = ?who, "model set rolled back over gRPC");
        Ok(Response::new(super::models::activated(running)))
    }
}

/// The name of the token the call came with, if the node checks tokens.
/// Who made the call, on a node with tokens (the guard layer put it there).
pub(super) fn caller<T>(request: &Request<T>) -> Option<Arc<crate::access::Caller>> {
    request.extensions().get::<Arc<crate::access::Caller>>().cloned()
}

fn caller_name<T>(request: &Request<T>) -> Option<String> {
    caller(request).map(|caller| caller.name.clone())
}

/// Camera and model changes start and stop pipelines, load models and write files: never on an
/// async worker.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("admin task: {e}")))?
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

pub(super) fn camera_info(camera: &CameraStatus) -> pb::CameraInfo {
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
        sampling: sampling(camera.keyframes_only()) as i32,
        frames_not_decoded: camera.frames_not_decoded.load(Ordering::Relaxed),
        decode: settings.decode.as_str().to_string(),
        zones: settings.counting.zones.iter().map(|z| z.message()).collect(),
        lines: settings.counting.lines.iter().map(|l| l.message()).collect(),
    }
}

/// Copies one subscription to its stream until either side ends. `Err` when the subscriber is
/// cut off: it took nothing for `idle` while a descriptor waited for it, or the log failed.
async fn forward(
    mut subscription: Subscription,
    filter: Filter,
    tx: &mpsc::Sender<pb::FrameDescriptor>,
    counters: &SubscriberCounters,
    idle: Duration,
) -> Result<(), Status> {
    let mut sent = SentContext::default();
    let mut fallbacks = 0;
    loop {
        let entry = tokio::select! {
            entry = subscription.next() => entry,
            // The client went away while nothing was coming.
            () = tx.closed() => return Ok(()),
        };
        if subscription.fallbacks() > fallbacks {
            counters.fallbacks.inc_by(subscription.fallbacks() - fallbacks);
            fallbacks = subscription.fallbacks();
        }
        let message = match entry.map_err(Status::from)? {
            None => return Ok(()),
            Some(Entry::Descriptor(descriptor)) => match filter.apply(&descriptor, &mut sent) {
                Some(message) => message,
                None => continue,
            },
            Some(Entry::Gap(gap)) => gap_notice(gap),
        };
        match tokio::time::timeout(idle, tx.send(message)).await {
            Ok(Ok(())) => {
                counters.sent.inc();
            }
            Ok(Err(_)) => return Ok(()),
            Err(_) => {
                return Err(Status::resource_exhausted(format!(
                    "this subscriber read nothing for {:.1} s (deliver.subscriber_idle_seconds); resume after the \
                     last offset received",
                    idle.as_secs_f64()
                )));
            }
        }
    }
}

/// A subscriber's descriptors, then the status it was cut off with, if it was.
pub struct SubscriberStream {
    descriptors: mpsc::Receiver<pb::FrameDescriptor>,
    end: Option<oneshot::Receiver<Status>>,
}

impl Stream for SubscriberStream {
    type Item = Result<pb::FrameDescriptor, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.descriptors.poll_recv(cx) {
            Poll::Ready(Some(descriptor)) => return Poll::Ready(Some(Ok(descriptor))),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {}
        }
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(None);
        };
        let status = std::task::ready!(Pin::new(end).poll(cx));
        self.end = None;
        Poll::Ready(status.ok().map(Err))
    }
}

/// Names a query (its selection and classes) in its page tokens, so that a token is not used with
/// another query by mistake.
fn query_id(selection: &Selection, class_names: &[String]) -> String {
    let digest = sha2::Sha256::digest(format!("{selection:?}{class_names:?}"));
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_page_token(token: &str, query_id: &str) -> Result<QueryKey, Status> {
    let invalid = || {
        Status::invalid_argument(format!(
            "page_token {} is not a next_page_token of this query",
            crate::error::quoted(token)
        ))
    };
    let mut parts = token.split('.');
    let (Some(id), Some(capture), Some(offset), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if id != query_id {
        return Err(invalid());
    }
    Ok(QueryKey {
        capture_ns: capture.parse().map_err(|_| invalid())?,
        offset: offset.parse().map_err(|_| invalid())?,
    })
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
/// (the log is closed by then, health watches end) and returns. Health reports
/// `retina.v1.Retina` `NOT_SERVING` from `stopping` on: the node stops taking new work long
/// before its server goes, and a load balancer must hear it then.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: tokio::net::TcpListener,
    log: LogReader,
    limits: Limits,
    facts: Arc<NodeFacts>,
    metrics: Arc<Metrics>,
    manager: Arc<CameraManager>,
    models: Arc<dyn ModelControl>,
    pixels: super::pixels::PixelsService,
    guarded: Guarded,
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
        log,
        facts,
        metrics,
        limits,
        subscriber_slots: Arc::new(Semaphore::new(limits.max_subscribers)),
    };
    let admin = AdminService {
        manager,
        sources: Arc::new(guarded.sources),
        models,
        upload_slot: Arc::new(Semaphore::new(1)),
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .layer(crate::access::GrpcGuardLayer::new(guarded.tokens))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(RetinaServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(AdminServer::new(admin).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(crate::pb::pixels_server::PixelsServer::new(pixels).max_decoding_message_size(MAX_REQUEST_BYTES));
    let stopped = async move { shutdown.wait().await };
    match guarded.tls {
        Some(tls) => {
            let incoming = crate::access::TlsIncoming::new(listener, tls)
                .map_err(|e| crate::error::Error::io("gRPC endpoint address", e))?;
            router.serve_with_incoming_shutdown(incoming, stopped).await?
        }
        None => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped)
                .await?
        }
    }
    Ok(())
}
