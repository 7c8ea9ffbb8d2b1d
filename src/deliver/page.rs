//! The status page, for whoever mounts the box on the pole: every camera's state, rates, drops
//! and last error, its latest analysed frame's tracks with the camera's zones and lines drawn on
//! it, its latest counts, and zones and lines that can be drawn on the frame and saved.
//!
//! Served on the node's HTTP listener (beside `/metrics`, behind the same TLS). The page itself
//! is one static file with a little plain JavaScript and holds no data; what it shows comes from
//! `GET /api/status` (the `subscribe` scope, as `GetNodeInfo`), and a change is
//! `PUT /api/cameras/{id}/counting` (the `admin` scope, as `UpdateCamera`). When the node has
//! tokens, the page asks for one and sends it as `authorization: Bearer`.
//!
//! What a frame holds comes from the log, as for every reader: a live subscription keeps each
//! camera's latest frame descriptor and latest count record. Its picture, on a node that keeps
//! video, comes from the video stage as a snapshot does (`deliver::pixels`):
//! `GET /api/cameras/{id}/frame.jpg?time=` (the `pixels` scope, faces pixelated) gives the frame
//! captured at a descriptor's time, so that the boxes drawn on it are those of the very frame. The page asks for the next picture when the last has
//! come, so a slow link or a busy node slows its pictures, never the node.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::client::{Decoder, rfc3339, to_json};
use super::pixels::PixelsService;
use super::service::{NodeFacts, camera_info};
use crate::access::{Caller, Scope, Tokens, http_caller};
use crate::config::{CountingPlaces, LineConfig, ZoneConfig};
use crate::error::quoted;
use crate::ingest::{CameraChange, CameraManager};
use crate::log::{Entry, LogReader, Start};
use crate::pb;

const PAGE: &str = include_str!("page.html");

/// Each camera's latest frame descriptor and count record, as the log has them.
#[derive(Default)]
struct Latest {
    frames: HashMap<String, Arc<pb::FrameDescriptor>>,
    counts: HashMap<String, Arc<pb::FrameDescriptor>>,
}

#[derive(Clone)]
pub struct Page {
    facts: Arc<NodeFacts>,
    manager: Arc<CameraManager>,
    tokens: Option<Arc<Tokens>>,
    pixels: PixelsService,
    latest: Arc<RwLock<Latest>>,
}

impl Page {
    /// The page's state, and the task that follows the log for it (it ends with the log).
    pub fn new(
        facts: Arc<NodeFacts>,
        manager: Arc<CameraManager>,
        tokens: Option<Arc<Tokens>>,
        pixels: PixelsService,
        log: LogReader,
    ) -> Self {
        let latest = Arc::new(RwLock::new(Latest::default()));
        tokio::spawn(follow(log, latest.clone()));
        Page {
            facts,
            manager,
            tokens,
            pixels,
            latest,
        }
    }

    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/", axum::routing::get(page))
            .route("/api/status", axum::routing::get(status))
            .route("/api/cameras/{id}/counting", axum::routing::put(set_counting))
            .route("/api/cameras/{id}/frame.jpg", axum::routing::get(picture))
            .with_state(self)
    }

    /// The caller, if it may call with `scope` (on a node without tokens, anyone may); otherwise
    /// the status and message refusing it.
    fn caller(&self, scope: Scope, headers: &HeaderMap) -> Result<Option<Arc<Caller>>, (StatusCode, String)> {
        http_caller(self.tokens.as_deref(), scope, headers)
    }
}

/// Keeps the latest frame and count record of every camera, from the live end of the log.
async fn follow(log: LogReader, latest: Arc<RwLock<Latest>>) {
    let mut subscription = match log.subscribe(Start::Live).await {
        Ok(subscription) => subscription,
        Err(err) => {
            tracing::warn!(%err, "the status page cannot follow the log: it shows no frames");
            return;
        }
    };
    loop {
        match subscription.next().await {
            Ok(Some(Entry::Descriptor(d))) => {
                let mut latest = latest.write().unwrap_or_else(|p| p.into_inner());
                if d.counts.is_some() {
                    latest.counts.insert(d.camera_id.clone(), d);
                } else if d.frame_width > 0 && d.pixel_export.is_none() {
                    latest.frames.insert(d.camera_id.clone(), d);
                }
            }
            Ok(Some(Entry::Gap(_))) => {}
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(%err, "the status page stopped following the log");
                return;
            }
        }
    }
}

fn error(code: StatusCode, message: &str) -> Response {
    let body = json!({ "error": message }).to_string();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page's script is its own; nothing else may run in it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

async fn status(State(page): State<Page>, headers: HeaderMap) -> Response {
    if let Err((code, message)) = page.caller(Scope::Subscribe, &headers) {
        return error(code, &message);
    }
    let decoder = Decoder::new(page.facts.models().class_names.clone());
    let cameras: Vec<_> = page
        .facts
        .cameras
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let latest = page.latest.read().unwrap_or_else(|p| p.into_inner());
    let cameras: Vec<serde_json::Value> = cameras
        .iter()
        .map(|camera| {
            let info = camera_info(camera);
            let places = camera.counting_places();
            json!({
                "id": info.camera_id,
                "state": crate::wire::camera_state_label(info.state()),
                "uri": info.uri,
                "analysis_fps": info.analysis_fps,
                "frames_analysed": info.frames_analysed,
                "frames_dropped": info.frames_dropped,
                "restarts": info.restarts,
                "last_error": info.last_error,
                "failure": info.failure,
                "last_frame_age_seconds": info.last_frame_age_seconds,
                // Known from the camera's ring, not asked of the disk at every refresh.
                "video": camera.ring.known(),
                "zones": places.zones,
                "lines": places.lines,
                "frame": latest.frames.get(&camera.id).map(|d| frame_json(d, &decoder)),
                "counts": latest.counts.get(&camera.id).map(|d| to_json(d, &decoder)["counts"].clone()),
            })
        })
        .collect();
    let body = json!({
        "node_id": page.facts.node_id,
        "class_names": page.facts.models().class_names,
        "cameras": cameras,
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A frame descriptor as `subscribe --json` renders it, but track ids as strings: they use all
/// 64 bits, and JavaScript's numbers keep 53.
fn frame_json(d: &pb::FrameDescriptor, decoder: &Decoder) -> serde_json::Value {
    let mut frame = to_json(d, decoder);
    if let Some(tracks) = frame["tracks"].as_array_mut() {
        for track in tracks {
            track["track_id"] = json!(track["track_id"].as_u64().unwrap_or_default().to_string());
        }
    }
    frame
}

/// What `PUT /api/cameras/{id}/counting` takes: the camera's zones and lines, as in its config.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Places {
    #[serde(default)]
    zones: Vec<ZoneConfig>,
    #[serde(default)]
    lines: Vec<LineConfig>,
}

async fn set_counting(State(page): State<Page>, Path(id): Path<String>, headers: HeaderMap, body: String) -> Response {
    if let Err((code, message)) = page.caller(Scope::Admin, &headers) {
        return error(code, &message);
    }
    let places: Places = match serde_json::from_str(&body) {
        Ok(places) => places,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("not zones and lines: {err}")),
    };
    let change = CameraChange {
        counting: Some(CountingPlaces {
            zones: places.zones,
            lines: places.lines,
        }),
        ..CameraChange::default()
    };
    let manager = page.manager.clone();
    match super::service::blocking(move || manager.update(&id, change)).await {
        Ok(camera) => {
            let places = camera.counting_places();
            let body = json!({ "zones": places.zones, "lines": places.lines });
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err(status) => refusal(&status),
    }
}

#[derive(serde::Deserialize)]
struct PictureAt {
    /// RFC 3339, as a frame's `capture_time` in `/api/status`.
    time: String,
}

async fn picture(
    State(page): State<Page>,
    Path(id): Path<String>,
    Query(at): Query<PictureAt>,
    headers: HeaderMap,
) -> Response {
    let caller = match page.caller(Scope::Pixels, &headers) {
        Ok(caller) => caller,
        Err((code, message)) => return error(code, &message),
    };
    let time = match humantime::parse_rfc3339(&at.time) {
        Ok(time) => crate::clock::unix_nanos(time),
        Err(_) => {
            let message = format!("time {} is not RFC 3339", quoted(&at.time));
            return error(StatusCode::BAD_REQUEST, &message);
        }
    };
    match page.pixels.live_picture(caller, &id, time).await {
        Ok(picture) => (
            [
                (header::CONTENT_TYPE, "image/jpeg".to_string()),
                (header::CACHE_CONTROL, "no-store".to_string()),
                (
                    header::HeaderName::from_static("x-capture-time"),
                    rfc3339(picture.capture_time),
                ),
                (
                    header::HeaderName::from_static("x-faces-blurred"),
                    picture.faces_blurred.to_string(),
                ),
            ],
            picture.jpeg,
        )
            .into_response(),
        Err(status) => refusal(&status),
    }
}

/// A refusal of the node's services as an HTTP answer.
fn refusal(status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::NotFound | tonic::Code::FailedPrecondition => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, status.message())
}
