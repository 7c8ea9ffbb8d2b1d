//! The node's configuration: one TOML file, documented field by field in the README.
//!
//! Relative paths in the file are resolved against the directory of the file itself, so a config
//! can sit beside its models and media and be started from anywhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, quoted, redact_uri};

mod counting;
mod describe;

pub use counting::{Anchor, CountingPlaces, CountingSettings, LineConfig, ZoneConfig};
pub use describe::{CodecKind, DescribeConfig, EmissionConfig, TrackerConfig};

/// COCO classes a city cares about: people and vehicles.
pub const DEFAULT_EMBED_CLASSES: [&str; 6] = ["person", "bicycle", "car", "motorcycle", "bus", "truck"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub inference: InferenceConfig,
    #[serde(default)]
    pub describe: DescribeConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub deliver: DeliverConfig,
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
    /// TLS on the gRPC and metrics listeners; absent: plain TCP (loopback only, or `insecure`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Bearer tokens; absent: no authentication (loopback only, or `insecure`).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// What `AddCamera` and `UpdateCamera` may point a camera at.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Collectors the node dials out to and streams its log to (push mode).
    #[serde(default)]
    pub push: Vec<PushConfig>,
    /// The recent-video ring and what may be exported from it; absent: no video is kept.
    #[serde(default)]
    pub video: Option<VideoConfig>,
    /// Directory of the config file; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config file itself, for error messages.
    #[serde(skip)]
    pub origin: PathBuf,
    /// Cameras of the state file that were on probation when it was last written (see
    /// [`CameraState::probation`]).
    #[serde(skip)]
    pub camera_probation: BTreeMap<String, Probation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Stable identity of this node in the city brain, copied into every descriptor.
    pub id: String,
    /// Address the gRPC service listens on. Port 0 picks a free port (tests).
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint; absent: no metrics endpoint.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Stop the node once every camera has ended (files that don't loop). For one-pass runs
    /// such as the demo and benchmarks; a deployed node leaves this off.
    #[serde(default)]
    pub exit_when_cameras_end: bool,
    /// Where cameras added, changed or removed over gRPC are kept. When the file exists, its
    /// cameras replace the config file's. Default: `<config name>.cameras.toml` beside the config.
    #[serde(default)]
    pub camera_state_file: Option<PathBuf>,
    /// Listen on an address other hosts can reach without TLS and tokens. Off, such a config
    /// is refused at start: a node on a street network must not be open by mistake.
    #[serde(default)]
    pub insecure: bool,
}

/// Certificate and key in PEM files, re-read when they change (or on SIGHUP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The node's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1); the file must be readable by its owner only.
    pub key: PathBuf,
    /// CA certificates of the clients allowed to connect (mutual TLS); absent: any client.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The token file written by `retina-edge token add` (hashes only, readable by its owner only).
    pub tokens_file: PathBuf,
}

/// A collector this node pushes its log to: for boxes the centre cannot dial (NAT, a carrier's
/// network). README, "Push to central collectors". A collector's `[[pull]]` (a node it dials) has
/// the same fields, naming the node and a token of the node's with the `subscribe` scope.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Names the target in logs, metrics and the file of acknowledged offsets.
    pub name: String,
    /// The collector: `https://host:port` (`http://` only to loopback, or with `node.insecure`).
    pub address: String,
    /// CA certificate(s) the collector's certificate must chain to.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// This node's client certificate and key, for a collector that asks for one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The token (a file only its owner may read, or `credential:NAME`), with the `push` scope.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// What is pushed, as in a subscription: cameras and classes (empty: all), a minimum score,
    /// and whether frames with nothing in them go too.
    #[serde(default)]
    pub camera_ids: Vec<String>,
    #[serde(default)]
    pub class_names: Vec<String>,
    #[serde(default)]
    pub min_score: f32,
    #[serde(default)]
    pub include_empty_frames: bool,
    /// Backoff between attempts, jittered, doubling from the first to the second.
    #[serde(default = "default_push_reconnect_initial_seconds")]
    pub reconnect_initial_seconds: f64,
    #[serde(default = "default_push_reconnect_max_seconds")]
    pub reconnect_max_seconds: f64,
}

impl PushConfig {
    /// The CA certificate, and the client certificate with its key, with `resolve` applied
    /// (`credential:NAME` and relative paths).
    pub fn tls_files(&self, resolve: impl Fn(&Path) -> PathBuf) -> (Option<PathBuf>, Option<(PathBuf, PathBuf)>) {
        let ca_cert = self.ca_cert.as_deref().map(&resolve);
        let client_cert = self
            .cert
            .as_deref()
            .map(&resolve)
            .zip(self.key.as_deref().map(&resolve));
        (ca_cert, client_cert)
    }
}

fn default_push_reconnect_initial_seconds() -> f64 {
    1.0
}

fn default_push_reconnect_max_seconds() -> f64 {
    60.0
}

impl PushConfig {
    /// `kind`: "push" or "pull", as the section is named; `insecure_field` the setting that
    /// allows plain http:// to other hosts.
    fn validate(&self, kind: &str, insecure: bool, insecure_field: &str) -> std::result::Result<(), String> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_name {
            return Err(format!(
                "{kind} name {}: use 1 to 64 letters, digits, '-', '_' or '.'",
                crate::error::quoted(&self.name)
            ));
        }
        let at = format!("{kind} {:?}", self.name);
        let plain = self.address.starts_with("http://");
        if !plain && !self.address.starts_with("https://") {
            return Err(format!(
                "{at}: address {} must start with https:// (or http:// on loopback)",
                crate::error::quoted(&self.address)
            ));
        }
        let host = self
            .address
            .split("://")
            .nth(1)
            .unwrap_or("")
            .split(['/', ':'])
            .next()
            .unwrap_or("");
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if plain && !loopback && !insecure {
            return Err(format!(
                "{at}: http:// to another host would send the token and the descriptors in the clear: use https://, \
                 or set {insecure_field} = true"
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(format!("{at}: cert and key go together"));
        }
        check_field(
            (0.0..=1.0).contains(&self.min_score),
            &format!("{at}: min_score"),
            self.min_score,
            "0..=1",
        )?;
        if !(self.reconnect_initial_seconds >= 0.01 && self.reconnect_initial_seconds <= self.reconnect_max_seconds)
            || self.reconnect_max_seconds > 3600.0
        {
            return Err(format!(
                "{at}: need 0.01 <= reconnect_initial_seconds <= reconnect_max_seconds <= 3600"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// URI schemes a camera added or changed over gRPC may use.
    #[serde(default = "default_allowed_schemes")]
    pub allowed_schemes: Vec<String>,
    /// Directories under which a camera added over gRPC may read local files (`file://` or a
    /// path). Empty: local files only from the config file.
    #[serde(default)]
    pub allowed_file_dirs: Vec<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            allowed_schemes: default_allowed_schemes(),
            allowed_file_dirs: Vec::new(),
        }
    }
}

fn default_allowed_schemes() -> Vec<String> {
    ["rtsp", "rtsps", "http", "https"].map(String::from).to_vec()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// Path of the ONNX Runtime shared library (`libonnxruntime.so.1.*`).
    #[serde(default = "default_onnxruntime_library")]
    pub onnxruntime_library: PathBuf,
    /// Manifest (TOML) of the detector model; the ONNX file is named inside it.
    pub detector_manifest: PathBuf,
    /// Manifest of the appearance-embedding model; absent: no embeddings.
    #[serde(default)]
    pub embedder_manifest: Option<PathBuf>,
    /// Classes (detector class names) that get an appearance embedding.
    #[serde(default = "default_embed_classes")]
    pub embed_classes: Vec<String>,
    /// Overrides the detector manifest's score threshold.
    #[serde(default)]
    pub score_threshold: Option<f32>,
    /// Inference threads, each with its own model sessions (its own copy of every model's
    /// weights), each analysing a whole frame.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// ONNX Runtime intra-op threads per session: one frame's inference is spread over them.
    /// On 2 cores, one worker with 2 threads analyses each frame in about half the time of two
    /// workers with one, with one set of sessions; two workers analyse about 16 % more frames
    /// when inference is the limit (README: "Cameras per box").
    #[serde(default = "default_intra_op_threads")]
    pub intra_op_threads: usize,
    /// ONNX Runtime's CPU memory arena. On, each session keeps the peak memory of every input
    /// shape it ran (~100 MB for the embedder's batches of 8); off, activations are allocated
    /// per run, measured no slower here.
    #[serde(default)]
    pub memory_arena: bool,
    /// Let ONNX Runtime's idle threads spin. Off: an idle pool then does not steal the core
    /// that another session needs (measured: 71 ms vs 32 ms per frame on 2 cores).
    #[serde(default)]
    pub allow_spinning: bool,
    /// Where models installed on the node are kept, by content hash, with the active set. When a
    /// set was activated, it replaces the two manifests above. Default: `<config name>.models`
    /// beside the config.
    #[serde(default)]
    pub model_store: Option<PathBuf>,
    /// The centre's Ed25519 public key (64 hex digits): when set, only models signed by it are
    /// installed or activated (besides the two manifests above).
    #[serde(default)]
    pub model_signing_key: Option<PathBuf>,
    /// Frames waiting for inference, per camera. When full, the oldest waiting frame of that
    /// camera is dropped (live sources) or decoding waits (files that are not paced).
    #[serde(default = "default_queue_frames_per_camera")]
    pub queue_frames_per_camera: usize,
    /// What a new model set must show on this node's own recent frames before it replaces the
    /// running one (README: "Model updates").
    #[serde(default)]
    pub self_test: SelfTestConfig,
    /// How long, and by what, a set that was switched to is watched, with the set before it
    /// kept loaded for an instant rollback (README: "Model updates").
    #[serde(default)]
    pub watch: WatchConfig,
    /// Whether, and for how many frames, a new set runs beside the running one before a switch,
    /// and how far they must agree (README: "Model updates").
    #[serde(default)]
    pub shadow: ShadowConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// Live frames both sets analyse before a switch; 0: no shadow run.
    pub frames: usize,
    /// A shadow run that has not seen `frames` frames by then refuses the set.
    pub timeout_seconds: f64,
    /// Detection agreement is judged only when the two sets found at least this many objects.
    pub min_objects: usize,
    /// Matched objects (same class, IoU 0.5) over all objects found, `2m / (a + b)`.
    pub min_detection_agreement: f64,
    /// Share of matched objects whose nearest other object is the same under both embedders.
    pub min_rank_agreement: f64,
    /// The new set's median time per frame over the running set's.
    pub max_latency_ratio: f64,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            frames: 0,
            timeout_seconds: 60.0,
            min_objects: 4,
            min_detection_agreement: 0.5,
            min_rank_agreement: 0.5,
            max_latency_ratio: 4.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// The watch period; 0: no watch, and the set before is freed at once.
    pub seconds: f64,
    /// Frames the new set must have analysed before it is judged.
    pub min_frames: u64,
    /// Share of failed frames that rolls back.
    pub max_error_ratio: f64,
    /// Median time per frame (detector and embedder) that rolls back.
    pub latency_budget_ms: f64,
    /// Objects per frame, as a share of the rate before the switch, below which it rolls back.
    pub min_detection_ratio: f64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            seconds: 60.0,
            min_frames: 20,
            max_error_ratio: 0.05,
            latency_budget_ms: 500.0,
            min_detection_ratio: 0.25,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfTestConfig {
    /// The new set's median time per frame (detector and embedder) on the recent frames.
    pub latency_budget_ms: f64,
    /// On the recent frames, the new detector must find at least this share of the objects the
    /// running one found there (counting the classes both know) ... A check against a collapse,
    /// not a comparison of quality: a weaker detector may well find half as much.
    pub min_detection_ratio: f64,
    /// ... when the running one found at least this many; fewer say too little to judge by.
    pub min_reference_objects: usize,
}

impl Default for SelfTestConfig {
    fn default() -> Self {
        SelfTestConfig {
            latency_budget_ms: 500.0,
            min_detection_ratio: 0.25,
            min_reference_objects: 4,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverConfig {
    /// Live descriptors a subscriber may fall behind before it reads from the log on disk instead.
    #[serde(default = "default_subscriber_buffer_frames")]
    pub subscriber_buffer_frames: usize,
    /// Subscribe streams open at once; one more is refused with RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_subscribers")]
    pub max_subscribers: usize,
    /// A subscriber that has not taken a descriptor for this long, while one was waiting for it,
    /// is cut off (RESOURCE_EXHAUSTED), so a stuck client holds neither memory nor shutdown.
    #[serde(default = "default_subscriber_idle_seconds")]
    pub subscriber_idle_seconds: f64,
    /// HTTP/2 pings to every client this often; a client that does not answer within
    /// `keepalive_timeout_seconds` is disconnected, so dead peers (a cut uplink) hold nothing.
    #[serde(default = "default_keepalive_seconds")]
    pub keepalive_seconds: f64,
    #[serde(default = "default_keepalive_timeout_seconds")]
    pub keepalive_timeout_seconds: f64,
    /// Calls one connection may have open at once; more wait for one to end.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
}

fn default_keepalive_seconds() -> f64 {
    30.0
}
fn default_keepalive_timeout_seconds() -> f64 {
    10.0
}
fn default_max_streams_per_connection() -> u32 {
    32
}

/// The durable descriptor log (`log` module): where it is kept, how often it is committed, and
/// how much of it is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The log's SQLite file. Default: `<config name>.log.sqlite` beside the config.
    pub path: Option<PathBuf>,
    /// Records are committed together at most this often: one fsync per interval, never one per
    /// record. A power cut can lose the last interval; a crashed process loses nothing committed.
    pub commit_interval_ms: u64,
    /// Oldest records are evicted when the log uses more than this many bytes.
    pub max_bytes: u64,
    /// Records stored longer ago than this are evicted.
    pub max_age_hours: f64,
    /// Records waiting for the writer. When full (the disk stalls), new records are still sent
    /// live, and counted as not stored.
    pub queue_records: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            path: None,
            commit_interval_ms: 100,
            // A week of one busy camera is ~0.85 GB (README, "The descriptor log").
            max_bytes: 2 << 30,
            max_age_hours: 7.0 * 24.0,
            queue_records: 16_384,
        }
    }
}

/// The recent-video ring (`video` module): each camera's own compressed stream, kept on disk in
/// short segments, and the snapshots and clips cut from it on request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VideoConfig {
    /// One directory per camera below this. Default: `<config name>.video` beside the config.
    pub dir: Option<PathBuf>,
    /// A segment is closed at the first keyframe after this long; video becomes exportable when
    /// its segment closes.
    pub segment_seconds: f64,
    /// Per camera: oldest segments are removed first once a camera's ring holds more.
    pub max_bytes_per_camera: u64,
    /// Per camera: segments that ended longer ago than this are removed.
    pub max_age_hours: f64,
    /// The longest interval one clip may cover.
    pub max_clip_seconds: f64,
    /// Exports (snapshots and clips) running at once; more are refused until one ends.
    pub max_concurrent_exports: usize,
    /// The face detector run on every exported frame (a model manifest, relative to the config):
    /// required, since no pixels leave the node without it.
    pub face_model: Option<PathBuf>,
    /// A face's box is grown by this fraction of its size on each side before it is pixelated.
    pub face_margin: f32,
    /// Cameras without an H.264 or H.265 stream (MJPEG, raw video) have their decoded frames
    /// encoded to H.264 for the ring: a cost in CPU the README measures. Off, their video is not
    /// kept.
    pub reencode: bool,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            dir: None,
            segment_seconds: 4.0,
            max_bytes_per_camera: 2 << 30,
            max_age_hours: 24.0,
            max_clip_seconds: 120.0,
            max_concurrent_exports: 2,
            face_model: None,
            face_margin: 0.25,
            reencode: false,
        }
    }
}

impl VideoConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.face_model.is_none() {
            return Err(
                "video.face_model: name a face detector's manifest (e.g. models/blazeface-back-256.toml): \
                 every frame exported has its faces pixelated"
                    .into(),
            );
        }
        check_field(
            (1.0..=60.0).contains(&self.segment_seconds),
            "video.segment_seconds",
            self.segment_seconds,
            "1..=60",
        )?;
        check_field(
            self.max_bytes_per_camera >= 1 << 20,
            "video.max_bytes_per_camera",
            self.max_bytes_per_camera,
            "at least 1048576 (1 MiB)",
        )?;
        check_field(
            self.max_age_hours > 0.0 && self.max_age_hours <= 24.0 * 365.0,
            "video.max_age_hours",
            self.max_age_hours,
            "(0, 8760]",
        )?;
        check_field(
            (1.0..=3600.0).contains(&self.max_clip_seconds),
            "video.max_clip_seconds",
            self.max_clip_seconds,
            "1..=3600",
        )?;
        check_field(
            (1..=64).contains(&self.max_concurrent_exports),
            "video.max_concurrent_exports",
            self.max_concurrent_exports,
            "1..=64",
        )?;
        check_field(
            (0.0..=2.0).contains(&self.face_margin),
            "video.face_margin",
            self.face_margin,
            "0..=2",
        )
    }
}

/// 1 to 64 letters, digits, '-', '_' or '.', not only dots: ids name files and directories
/// ("." or ".." would name one above the camera's own in the video ring).
pub fn is_valid_camera_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.chars().all(|c| c == '.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique id of the camera on this node, copied into every descriptor.
    pub id: String,
    /// Any URI GStreamer can open (`rtsp://`, `file://`, `http(s)://`), or a file path
    /// (relative to the config file).
    pub uri: String,
    /// Frames per second to analyse; frames above this rate are dropped in the pipeline before
    /// conversion. 0: analyse every frame.
    #[serde(default = "default_analysis_fps")]
    pub analysis_fps: f64,
    /// Frames are scaled down in the pipeline to fit this box (aspect kept) before they reach
    /// the analysis; detectors work at ~416 px, so more only costs conversion time.
    #[serde(default = "default_max_frame_width_px")]
    pub max_frame_width_px: u32,
    #[serde(default = "default_max_frame_height_px")]
    pub max_frame_height_px: u32,
    /// Files: start again at the end instead of stopping.
    #[serde(default)]
    pub loop_file: bool,
    /// Files: play at the file's own frame rate, like a camera. Off: as fast as the analysis
    /// goes, with no frame dropped (benchmarks, batch runs).
    #[serde(default = "default_true")]
    pub realtime: bool,
    /// A disabled camera stays in the config but is not started.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<CameraPositionConfig>,
    /// Live sources: rebuild the pipeline when no frame arrived for this long. Files: when the
    /// first frame of a run did not arrive within this long.
    #[serde(default = "default_stall_timeout_seconds")]
    pub stall_timeout_seconds: f64,
    /// Wait before the first retry after a failure; doubles per failed attempt (with +-20%
    /// jitter, so cameras that failed together do not retry together) up to the maximum.
    #[serde(default = "default_reconnect_initial_seconds")]
    pub reconnect_initial_seconds: f64,
    #[serde(default = "default_reconnect_max_seconds")]
    pub reconnect_max_seconds: f64,
    /// A source that can never work as configured (no video in it, not media, a codec nobody
    /// decodes, not found, access denied) is tried again only this often; updating the camera
    /// tries it at once.
    #[serde(default = "default_failed_retry_seconds")]
    pub failed_retry_seconds: f64,
    /// RTSP: "auto" (UDP, falling back to TCP when no data arrives), "tcp" or "udp".
    #[serde(default)]
    pub rtsp_transport: RtspTransport,
    /// RTSP: jitter buffer latency; frames wait this long to be reordered.
    #[serde(default = "default_rtsp_latency_ms")]
    pub rtsp_latency_ms: u32,
    /// Threads of the camera's video decoder; 0 lets the decoder choose (libav: one per core
    /// plus one, in frame threading, which delays every frame by one frame per extra thread and
    /// keeps a picture buffer per thread). One decodes a 720p25 stream in about a tenth of a
    /// core here; raise it only for a stream one core cannot decode (4K and above).
    #[serde(default = "default_decoder_threads")]
    pub decoder_threads: u32,
    /// Which frames of the stream are decoded at all (README: "Decoding only what is analysed").
    #[serde(default)]
    pub decode: DecodeMode,
    /// Credentials, instead of (or overriding) those in the URI. Never logged or reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The password in a file only its owner may read, or `credential:NAME` for a systemd
    /// credential (`LoadCredential=`); read at each connection attempt, so a changed password
    /// needs no restart. Config file only: over gRPC it would let a caller send any file the
    /// node can read to a server of its choosing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Keep this camera's video in the ring, when the node has a `[video]` section.
    #[serde(default = "default_true")]
    pub record: bool,
    /// Zones and counting lines (README: "Zones, lines and counts").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<ZoneConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LineConfig>,
}

/// Which frames of a camera's compressed stream reach the decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// Keyframes only while the stream's keyframes come at least as often as the analysis rate
    /// asks for frames (measured on the stream, over its last few keyframes); every frame
    /// otherwise. The analysis rate is kept either way.
    #[default]
    Auto,
    /// Every frame.
    All,
    /// Keyframes only, whatever their rate: the camera is analysed at most at its keyframe rate.
    Keyframes,
}

impl DecodeMode {
    /// The name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeMode::Auto => "auto",
            DecodeMode::All => "all",
            DecodeMode::Keyframes => "keyframes",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    #[default]
    Auto,
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraPositionConfig {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub heading_degrees: f32,
    #[serde(default)]
    pub description: String,
}

fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_onnxruntime_library() -> PathBuf {
    PathBuf::from("../.deps/onnxruntime/libonnxruntime.so.1.32.0")
}
fn default_embed_classes() -> Vec<String> {
    DEFAULT_EMBED_CLASSES.iter().map(|c| c.to_string()).collect()
}
fn default_workers() -> usize {
    1
}
fn default_intra_op_threads() -> usize {
    2
}
fn default_queue_frames_per_camera() -> usize {
    2
}
fn default_subscriber_buffer_frames() -> usize {
    256
}
fn default_max_subscribers() -> usize {
    256
}
fn default_subscriber_idle_seconds() -> f64 {
    60.0
}
fn default_analysis_fps() -> f64 {
    5.0
}
fn default_max_frame_width_px() -> u32 {
    640
}
fn default_max_frame_height_px() -> u32 {
    640
}
fn default_true() -> bool {
    true
}
fn default_stall_timeout_seconds() -> f64 {
    5.0
}
fn default_reconnect_initial_seconds() -> f64 {
    1.0
}
fn default_reconnect_max_seconds() -> f64 {
    30.0
}
fn default_failed_retry_seconds() -> f64 {
    300.0
}
fn default_rtsp_latency_ms() -> u32 {
    200
}
fn default_decoder_threads() -> u32 {
    1
}

impl CameraConfig {
    /// A camera with every optional field at its default.
    pub fn new(id: impl Into<String>, uri: impl Into<String>) -> Self {
        CameraConfig {
            id: id.into(),
            uri: uri.into(),
            analysis_fps: default_analysis_fps(),
            max_frame_width_px: default_max_frame_width_px(),
            max_frame_height_px: default_max_frame_height_px(),
            loop_file: false,
            realtime: true,
            enabled: true,
            position: None,
            stall_timeout_seconds: default_stall_timeout_seconds(),
            reconnect_initial_seconds: default_reconnect_initial_seconds(),
            reconnect_max_seconds: default_reconnect_max_seconds(),
            failed_retry_seconds: default_failed_retry_seconds(),
            rtsp_transport: RtspTransport::default(),
            rtsp_latency_ms: default_rtsp_latency_ms(),
            decoder_threads: default_decoder_threads(),
            decode: DecodeMode::default(),
            username: None,
            password: None,
            password_file: None,
            record: true,
            zones: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Checks one camera's values; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !is_valid_camera_id(&self.id) {
            return Err(format!(
                "camera id {}: use 1 to 64 letters, digits, '-', '_' or '.', not only dots",
                crate::error::quoted(&self.id)
            ));
        }
        let at = format!("camera {:?}", self.id);
        if !(self.analysis_fps >= 0.0 && self.analysis_fps <= 1000.0) {
            return Err(format!(
                "{at}: analysis_fps = {} (expected 0..=1000)",
                self.analysis_fps
            ));
        }
        if self.max_frame_width_px < 16 || self.max_frame_height_px < 16 {
            return Err(format!(
                "{at}: max_frame_width_px/max_frame_height_px must be at least 16"
            ));
        }
        if self.decoder_threads > 64 {
            return Err(format!(
                "{at}: decoder_threads must lie in 0..=64 (0: the decoder's choice)"
            ));
        }
        if !(self.stall_timeout_seconds >= 0.5 && self.stall_timeout_seconds <= 3600.0) {
            return Err(format!("{at}: stall_timeout_seconds must lie in 0.5..=3600"));
        }
        if !(self.reconnect_initial_seconds >= 0.01 && self.reconnect_initial_seconds <= self.reconnect_max_seconds)
            || self.reconnect_max_seconds > 3600.0
        {
            return Err(format!(
                "{at}: need 0.01 <= reconnect_initial_seconds <= reconnect_max_seconds <= 3600"
            ));
        }
        if !(self.failed_retry_seconds >= 1.0 && self.failed_retry_seconds <= 86_400.0) {
            return Err(format!("{at}: failed_retry_seconds must lie in 1..=86400"));
        }
        if self.password_file.is_some() && (self.password.is_some() || crate::error::uri_has_password(&self.uri)) {
            return Err(format!(
                "{at}: a password in password_file and another in password or the URI: keep one"
            ));
        }
        if let Some(p) = &self.position
            && (!(-90.0..=90.0).contains(&p.latitude) || !(-180.0..=180.0).contains(&p.longitude))
        {
            return Err(format!("{at}: position latitude/longitude out of range"));
        }
        counting::validate_places(&self.zones, &self.lines).map_err(|e| format!("{at}: {e}"))
    }
}

impl Default for DeliverConfig {
    fn default() -> Self {
        DeliverConfig {
            subscriber_buffer_frames: default_subscriber_buffer_frames(),
            max_subscribers: default_max_subscribers(),
            subscriber_idle_seconds: default_subscriber_idle_seconds(),
            keepalive_seconds: default_keepalive_seconds(),
            keepalive_timeout_seconds: default_keepalive_timeout_seconds(),
            max_streams_per_connection: default_max_streams_per_connection(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let reading = || format!("reading config {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(reading(), e))?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let config = Self::parse(&text, path, base_dir)?;
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(path)
                .map_err(|e| Error::io(reading(), e))?
                .permissions()
                .mode()
                & 0o777
        };
        if !crate::files::owner_only(mode) {
            config.refuse_passwords(&format!("is open to other users (mode {mode:03o})"))?;
        }
        Ok(config)
    }

    /// A camera password in a file that others can read is a password others have.
    fn refuse_passwords(&self, because: &str) -> Result<()> {
        let with_password = self
            .cameras
            .iter()
            .find(|c| c.password.is_some() || crate::error::uri_has_password(&c.uri));
        match with_password {
            None => Ok(()),
            Some(camera) => Err(Error::Config {
                path: self.origin.clone(),
                message: format!(
                    "camera {:?} has its password in this file, which {because}: move it to password_file \
                     (a file only the node's user can read, or a systemd credential), or chmod 600 this file",
                    camera.id
                ),
            }),
        }
    }

    /// Parses and validates; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &Path, base_dir: PathBuf) -> Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|e| Error::Config {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        config.base_dir = base_dir;
        config.origin = origin.to_path_buf();
        // Relative to this file, as every path in it; the cameras may be moved to the state file.
        for camera in &mut config.cameras {
            camera.password_file = camera.password_file.as_deref().map(|p| resolve_in(&config.base_dir, p));
        }
        config.validate().map_err(|message| Error::Config {
            path: origin.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.node.id.trim().is_empty() {
            return Err("node.id must not be empty".into());
        }
        let inference = &self.inference;
        let threads_ok = |n: usize| (1..=64).contains(&n);
        check_field(
            threads_ok(inference.workers),
            "inference.workers",
            inference.workers,
            "1..=64",
        )?;
        check_field(
            threads_ok(inference.intra_op_threads),
            "inference.intra_op_threads",
            inference.intra_op_threads,
            "1..=64",
        )?;
        let self_test = &inference.self_test;
        if !(self_test.latency_budget_ms > 0.0 && self_test.latency_budget_ms.is_finite()) {
            return Err("inference.self_test.latency_budget_ms must be a positive number".into());
        }
        if !(0.0..=1.0).contains(&self_test.min_detection_ratio) {
            return Err("inference.self_test.min_detection_ratio must lie in 0..1".into());
        }
        let shadow = &inference.shadow;
        if !(shadow.timeout_seconds > 0.0 && shadow.timeout_seconds.is_finite()) {
            return Err("inference.shadow.timeout_seconds must be a positive number".into());
        }
        if !(0.0..=1.0).contains(&shadow.min_detection_agreement) || !(0.0..=1.0).contains(&shadow.min_rank_agreement) {
            return Err("inference.shadow.min_detection_agreement and min_rank_agreement must lie in 0..1".into());
        }
        if !(shadow.max_latency_ratio > 0.0 && shadow.max_latency_ratio.is_finite()) {
            return Err("inference.shadow.max_latency_ratio must be a positive number".into());
        }
        let watch = &inference.watch;
        if !(watch.seconds >= 0.0 && watch.seconds.is_finite()) {
            return Err("inference.watch.seconds must be 0 or more".into());
        }
        if !(watch.latency_budget_ms > 0.0 && watch.latency_budget_ms.is_finite()) {
            return Err("inference.watch.latency_budget_ms must be a positive number".into());
        }
        if !(0.0..=1.0).contains(&watch.max_error_ratio) || !(0.0..=1.0).contains(&watch.min_detection_ratio) {
            return Err("inference.watch.max_error_ratio and min_detection_ratio must lie in 0..1".into());
        }
        if inference.queue_frames_per_camera == 0 {
            return Err("inference.queue_frames_per_camera must be at least 1".into());
        }
        if let Some(t) = inference.score_threshold {
            check_field((0.0..=1.0).contains(&t), "inference.score_threshold", t, "0..=1")?;
        }
        let describe = &self.describe;
        describe
            .tracker
            .validate()
            .map_err(|e| format!("describe.tracker: {e}"))?;
        describe
            .emission
            .validate()
            .map_err(|e| format!("describe.emission: {e}"))?;
        describe.counting.validate()?;
        let deliver = &self.deliver;
        if deliver.subscriber_buffer_frames == 0 {
            return Err("deliver.subscriber_buffer_frames must be at least 1".into());
        }
        if deliver.max_subscribers == 0 {
            return Err("deliver.max_subscribers must be at least 1".into());
        }
        check_field(
            (0.1..=86_400.0).contains(&deliver.subscriber_idle_seconds),
            "deliver.subscriber_idle_seconds",
            deliver.subscriber_idle_seconds,
            "0.1..=86400",
        )?;
        for (field, value) in [
            ("deliver.keepalive_seconds", deliver.keepalive_seconds),
            ("deliver.keepalive_timeout_seconds", deliver.keepalive_timeout_seconds),
        ] {
            check_field((0.1..=3600.0).contains(&value), field, value, "0.1..=3600")?;
        }
        check_field(
            (1..=1024).contains(&deliver.max_streams_per_connection),
            "deliver.max_streams_per_connection",
            deliver.max_streams_per_connection,
            "1..=1024",
        )?;
        let log = &self.log;
        check_field(
            (1..=10_000).contains(&log.commit_interval_ms),
            "log.commit_interval_ms",
            log.commit_interval_ms,
            "1..=10000",
        )?;
        check_field(
            log.max_bytes >= 1 << 20,
            "log.max_bytes",
            log.max_bytes,
            "at least 1048576 (1 MiB)",
        )?;
        check_field(
            log.max_age_hours > 0.0 && log.max_age_hours <= 24.0 * 3650.0,
            "log.max_age_hours",
            log.max_age_hours,
            "(0, 87600]",
        )?;
        if log.queue_records == 0 {
            return Err("log.queue_records must be at least 1".into());
        }
        let mut push_names = std::collections::HashSet::new();
        for target in &self.push {
            target.validate("push", self.node.insecure, "node.insecure")?;
            if !push_names.insert(target.name.as_str()) {
                return Err(format!("push {:?}: duplicate name", target.name));
            }
        }
        if let Some(video) = &self.video {
            video.validate()?;
        }
        validate_cameras(&self.cameras)
    }

    /// The video ring's directory (see `video.dir`), if the node keeps video.
    pub fn video_dir(&self) -> Option<PathBuf> {
        let video = self.video.as_ref()?;
        Some(match &video.dir {
            Some(path) => self.resolve(path),
            None => self.beside_config("video"),
        })
    }

    /// The camera state file (see `node.camera_state_file`).
    pub fn camera_state_path(&self) -> PathBuf {
        match &self.node.camera_state_file {
            Some(path) => self.resolve(path),
            None => self.beside_config("cameras.toml"),
        }
    }

    /// Replaces the cameras with those of the state file, if there is one; returns its path then.
    pub fn apply_camera_state(&mut self) -> Result<Option<PathBuf>> {
        let path = self.camera_state_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let state: CameraState = toml::from_str(&text).map_err(|e| Error::Config {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                validate_cameras(&state.cameras).map_err(|message| Error::Config {
                    path: path.clone(),
                    message,
                })?;
                self.cameras = state.cameras;
                self.camera_probation = state.probation;
                Ok(Some(path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading camera state {}", path.display()), e)),
        }
    }

    /// The model store's directory (see `inference.model_store`).
    pub fn model_store_path(&self) -> PathBuf {
        match &self.inference.model_store {
            Some(path) => self.resolve(path),
            None => self.beside_config("models"),
        }
    }

    /// The face detector's manifest (see `video.face_model`), if the node keeps video.
    pub fn face_model_path(&self) -> Option<PathBuf> {
        let face_model = self.video.as_ref()?.face_model.as_ref()?;
        Some(self.resolve(face_model))
    }

    /// The descriptor log's file (see `log.path`).
    pub fn log_path(&self) -> PathBuf {
        match &self.log.path {
            Some(path) => self.resolve(path),
            None => self.beside_config("log.sqlite"),
        }
    }

    /// The offsets each push target acknowledged: beside the log (`log.sqlite` →
    /// `log.push.toml`), since they are positions in it.
    pub fn push_state_path(&self) -> PathBuf {
        let log = self.log_path();
        let stem = log.file_stem().map_or("log".into(), |s| s.to_string_lossy());
        log.with_file_name(format!("{stem}.push.toml"))
    }

    /// `<config name>.<suffix>` in the config's directory.
    fn beside_config(&self, suffix: &str) -> PathBuf {
        let stem = self
            .origin
            .file_stem()
            .map_or("retina-edge".into(), |s| s.to_string_lossy());
        self.base_dir.join(format!("{stem}.{suffix}"))
    }

    /// Resolves a path from the config against the config file's directory; a systemd
    /// credential (`credential:NAME`) stays as it is, to be found when it is read.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve_in(&self.base_dir, path)
    }
}

fn resolve_in(base_dir: &Path, path: &Path) -> PathBuf {
    let credential = path
        .to_str()
        .is_some_and(|p| p.starts_with(crate::files::CREDENTIAL_PREFIX));
    if path.is_absolute() || credential {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// The central collector's config (`retina-edge collect --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    pub collector: CollectorSection,
    #[serde(default)]
    pub nats: NatsConfig,
    /// TLS for the collector's listener, as for a node's.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Tokens with the `push` scope, each named after the node that may push with it.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Nodes the collector dials itself and subscribes to, for nodes it can reach.
    #[serde(default)]
    pub pull: Vec<PushConfig>,
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub origin: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSection {
    /// Where nodes push to.
    pub listen: SocketAddr,
    /// Listen where other hosts can reach the collector without TLS and tokens.
    #[serde(default)]
    pub insecure: bool,
    /// The collector's Prometheus `/metrics`; absent: none.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// The JetStream stream the collector writes every record into.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// The stream's name; created (or updated to this config) at start.
    #[serde(default = "default_nats_stream")]
    pub stream: String,
    /// Records go to `<prefix>.<node>.<camera>`, gap notices to `<prefix>.<node>._gap`.
    #[serde(default = "default_nats_subject_prefix")]
    pub subject_prefix: String,
    /// Copies of each record (1, or 3 on a 3-server cluster).
    #[serde(default = "default_nats_replicas")]
    pub replicas: usize,
    /// Records older than this are removed by JetStream.
    #[serde(default = "default_nats_max_age_hours")]
    pub max_age_hours: f64,
    /// The stream's size bound; 0: none.
    #[serde(default)]
    pub max_bytes: u64,
    /// JetStream drops a record whose id (`<node>:<offset>`) it stored this recently: what a
    /// collector that died between storing and acknowledging gets sent again.
    #[serde(default = "default_nats_duplicate_window_seconds")]
    pub duplicate_window_seconds: f64,
    /// The stream that keeps the highest offset held per node (one message per node).
    #[serde(default = "default_nats_offsets_stream")]
    pub offsets_stream: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_nats_stream() -> String {
    "RETINA".into()
}
fn default_nats_subject_prefix() -> String {
    "retina".into()
}
fn default_nats_replicas() -> usize {
    1
}
fn default_nats_max_age_hours() -> f64 {
    24.0 * 7.0
}
fn default_nats_duplicate_window_seconds() -> f64 {
    120.0
}
fn default_nats_offsets_stream() -> String {
    "retina_push_offsets".into()
}

/// The servers of a NATS URL or comma-separated list (`nats://a:4222,nats://b:4222`): the client
/// tries each in turn, so that a collector or a reader starts while any server of a cluster is up
/// (once connected it also learns the cluster's other servers from the one it reached).
pub fn nats_servers(urls: &str) -> std::result::Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse()
                .map_err(|e| format!("{} is not a NATS URL: {e}", quoted(&redact_uri(url))))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .and_then(|servers| {
            if servers.is_empty() {
                Err("no NATS URL given".to_string())
            } else {
                Ok(servers)
            }
        })
}

impl CollectorConfig {
    pub fn load(path: &Path) -> Result<CollectorConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading collector config {}", path.display()), e))?;
        let fail = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut config: CollectorConfig = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.origin = path.to_path_buf();
        let nats = &config.nats;
        let plain_name =
            |name: &str| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if !plain_name(&nats.stream) || !plain_name(&nats.offsets_stream) || !plain_name(&nats.subject_prefix) {
            return Err(fail(
                "nats.stream, nats.offsets_stream and nats.subject_prefix take letters, digits, '-' and '_'".into(),
            ));
        }
        nats_servers(&nats.url).map_err(|e| fail(format!("nats.url: {e}")))?;
        let mut names = std::collections::BTreeSet::new();
        for pull in &config.pull {
            pull.validate("pull", config.collector.insecure, "collector.insecure")
                .map_err(fail)?;
            if !names.insert(&pull.name) {
                return Err(fail(format!("two [[pull]] named {}", quoted(&pull.name))));
            }
        }
        check_field(
            (1..=5).contains(&nats.replicas),
            "nats.replicas",
            nats.replicas,
            "1..=5",
        )
        .map_err(fail)?;
        check_field(
            nats.max_age_hours > 0.0,
            "nats.max_age_hours",
            nats.max_age_hours,
            "> 0",
        )
        .map_err(fail)?;
        check_field(
            (1.0..=86_400.0).contains(&nats.duplicate_window_seconds),
            "nats.duplicate_window_seconds",
            nats.duplicate_window_seconds,
            "1..=86400",
        )
        .map_err(fail)?;
        Ok(config)
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve_in(&self.base_dir, path)
    }
}

/// The camera state file: the cameras as changed at run time.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraState {
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
    /// Cameras added or changed at run time that have not yet streamed or failed cleanly, by id.
    /// A camera still listed here when the node starts, and not marked `stopped_cleanly`, is
    /// one the node died (crashed, was killed) while starting: it is not started again until it
    /// is changed, so that nothing a client configures can keep the node from coming up.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probation: BTreeMap<String, Probation>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Probation {
    /// When the change was made (RFC 3339), for the operator who reads the file.
    pub since: String,
    /// Set once the node has started again without this camera: why it is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// The node stopped cleanly (SIGTERM, a restart) while the camera was on probation: that is
    /// no crash, so it starts again, still on probation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_cleanly: bool,
}

pub fn validate_cameras(cameras: &[CameraConfig]) -> std::result::Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for camera in cameras {
        camera.validate()?;
        if !seen.insert(camera.id.as_str()) {
            return Err(format!("camera {:?}: duplicate camera id", camera.id));
        }
    }
    Ok(())
}

/// Writes `text` to `path` so that a crash or a full disk leaves either the old file or the
/// new one, never a torn one: write a temporary file beside it, flush it to disk, rename it
/// over the old one, flush the directory.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let what = |step: &str| format!("{step} {}", path.display());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().map_or("state".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        // Owner-only from the first byte: a state file holds camera passwords.
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
        }
        .map_err(|e| Error::io(what("creating a temporary file for"), e))?;
        // A temporary file left by a crash keeps its old mode through `open`.
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(what("restricting"), e))?;
        }
        file.write_all(text.as_bytes())
            .map_err(|e| Error::io(what("writing"), e))?;
        file.sync_all().map_err(|e| Error::io(what("flushing"), e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(what("replacing"), e))?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `Ok` when `ok`; otherwise the message every range check gives: the field, its value and what
/// was expected.
pub(crate) fn check_field(
    ok: bool,
    field: &str,
    value: impl std::fmt::Display,
    expected: &str,
) -> std::result::Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{field} = {value} (expected {expected})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_url_list_names_every_server_and_a_bad_one_is_refused_without_its_password() {
        let servers = nats_servers("nats://10.0.0.1:4222, nats://10.0.0.2:4222,nats://10.0.0.3:4222").unwrap();
        assert_eq!(servers.len(), 3);
        assert!(nats_servers(" , ").unwrap_err().contains("no NATS URL"));
        let err = nats_servers("nats://127.0.0.1:4222,nats://user:hunter2@[bad").unwrap_err();
        assert!(err.contains("is not a NATS URL") && !err.contains("hunter2"), "{err}");
    }

    const MINIMAL: &str = r#"
        [node]
        id = "n1"
        [inference]
        detector_manifest = "models/d.toml"
        [[cameras]]
        id = "c1"
        uri = "rtsp://cam/1"
    "#;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("test.toml"), PathBuf::from("/etc/retina"))
    }

    #[test]
    fn defaults_are_documented_values() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.inference.workers, 1);
        assert_eq!(config.inference.intra_op_threads, 2);
        assert!(!config.inference.memory_arena);
        assert_eq!(config.cameras[0].decoder_threads, 1);
        assert_eq!(config.cameras[0].decode, DecodeMode::Auto);
        assert_eq!(config.inference.embed_classes.len(), 6);
        assert_eq!(config.cameras[0].analysis_fps, 5.0);
        assert!(config.cameras[0].realtime && config.cameras[0].enabled);
        assert_eq!(config.describe.codec, CodecKind::PcaInt8);
        assert_eq!(config.describe.tracker, TrackerConfig::default());
        assert_eq!(
            config.resolve(Path::new("models/d.toml")),
            PathBuf::from("/etc/retina/models/d.toml")
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse(&MINIMAL.replace("uri =", "url =")).unwrap_err().to_string();
        assert!(err.contains("test.toml") && err.contains("url"), "{err}");
    }

    #[test]
    fn state_file_replaces_the_configs_cameras_and_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("node.toml");
        let mut config = Config::parse(MINIMAL, &origin, dir.path().to_path_buf()).unwrap();
        assert_eq!(config.camera_state_path(), dir.path().join("node.cameras.toml"));
        config.apply_camera_state().unwrap();
        assert_eq!(config.cameras[0].id, "c1");

        let mut camera = CameraConfig::new("gate-2", "rtsp://10.1.1.2/s");
        camera.analysis_fps = 2.0;
        let state = CameraState {
            cameras: vec![camera.clone()],
            ..Default::default()
        };
        write_atomically(&config.camera_state_path(), &toml::to_string(&state).unwrap()).unwrap();
        config.apply_camera_state().unwrap();
        assert_eq!(config.cameras, vec![camera]);
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 1, "no temporary file left behind: {files:?}");
    }

    #[test]
    fn failed_atomic_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        std::fs::write(&path, "old").unwrap();
        // A directory where the temporary file should go makes the write fail midway.
        std::fs::create_dir(dir.path().join(".state.toml.tmp")).unwrap();
        assert!(write_atomically(&path, "new").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
    }

    #[test]
    fn camera_passwords_stay_out_of_files_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let load = |camera_lines: &str, mode: u32| {
            let text = MINIMAL.replace("uri = \"rtsp://cam/1\"", camera_lines);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            Config::load(&path)
        };
        for inline in [
            "uri = \"rtsp://cam/1\"\npassword = \"pw\"",
            "uri = \"rtsp://viewer:pw@cam/1\"",
        ] {
            let err = load(inline, 0o644).unwrap_err().to_string();
            assert!(
                err.contains("camera \"c1\"") && err.contains("mode 644") && err.contains("password_file"),
                "{err}"
            );
            assert!(
                !err.contains("pw@") && !err.contains("\"pw\""),
                "the password is not quoted: {err}"
            );
            load(inline, 0o600).expect("a file only its owner reads may hold a password");
        }
        let from_file = load(
            "uri = \"rtsp://cam/1\"\nusername = \"viewer\"\npassword_file = \"cam1.password\"",
            0o644,
        )
        .unwrap();
        assert_eq!(
            from_file.cameras[0].password_file,
            Some(dir.path().join("cam1.password"))
        );
        let credential = load("uri = \"rtsp://cam/1\"\npassword_file = \"credential:cam1\"", 0o644).unwrap();
        assert_eq!(
            credential.cameras[0].password_file,
            Some(PathBuf::from("credential:cam1"))
        );
        let err = load("uri = \"rtsp://v:pw@cam/1\"\npassword_file = \"cam1.password\"", 0o600)
            .unwrap_err()
            .to_string();
        assert!(err.contains("keep one"), "{err}");
    }

    #[test]
    fn duplicate_camera_is_refused() {
        let text = format!("{MINIMAL}\n[[cameras]]\nid = \"c1\"\nuri = \"rtsp://cam/2\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("duplicate camera id"), "{err}");
    }

    #[test]
    fn decoding_settings_are_checked() {
        let camera =
            |line: &str| parse(&MINIMAL.replace("uri = \"rtsp://cam/1\"", &format!("uri = \"rtsp://cam/1\"\n{line}")));
        assert_eq!(
            camera("decode = \"keyframes\"").unwrap().cameras[0].decode,
            DecodeMode::Keyframes
        );
        assert_eq!(camera("decode = \"all\"").unwrap().cameras[0].decode, DecodeMode::All);
        let err = camera("decode = \"sometimes\"").unwrap_err().to_string();
        assert!(err.contains("sometimes") && err.contains("keyframes"), "{err}");
        assert_eq!(camera("decoder_threads = 0").unwrap().cameras[0].decoder_threads, 0);
        let err = camera("decoder_threads = 65").unwrap_err().to_string();
        assert!(err.contains("decoder_threads"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let err = parse(&MINIMAL.replace("[inference]", "[inference]\nworkers = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("inference.workers = 0"), "{err}");
    }

    /// A config with every section: the shipped example, plus the sections it leaves out.
    fn full_config() -> String {
        let shipped = include_str!("../config/retina-edge.toml");
        format!(
            "{shipped}\n[log]\ncommit_interval_ms = 100\nmax_bytes = 10000000\n\n[deliver]\nmax_subscribers = 4\n\
             keepalive_seconds = 30.0\n\n[admin]\nallowed_schemes = [\"rtsp\"]\n\n[describe.tracker]\nmin_hits = 2\n"
        )
    }

    const FUZZED_STATE: &str = "[[cameras]]\nid = \"gate\"\nuri = \"rtsp://10.0.0.7/s1\"\nanalysis_fps = 2.0\n\
                                enabled = true\n\n[probation.gate]\nsince = \"2026-12-02T10:00:00Z\"\nstopped_cleanly = false\n";

    #[test]
    fn the_fuzzed_config_and_state_file_are_valid_before_they_are_changed() {
        Config::parse(&full_config(), Path::new("fuzz.toml"), PathBuf::from(".")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("node.toml");
        std::fs::write(&origin, MINIMAL).unwrap();
        std::fs::write(dir.path().join("node.cameras.toml"), FUZZED_STATE).unwrap();
        let mut config = Config::load(&origin).unwrap();
        config.apply_camera_state().unwrap();
        assert_eq!(config.cameras[0].id, "gate");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any value in any field of a config is either taken or a clear error, never a panic.
        #[test]
        fn any_value_in_any_field_is_taken_or_refused_clearly(
            index in 0usize..400,
            value in crate::fuzz::toml_value(),
        ) {
            let text = crate::fuzz::with_value_replaced(&full_config(), index, &value);
            if let Err(err) = Config::parse(&text, Path::new("fuzz.toml"), PathBuf::from(".")) {
                proptest::prop_assert!(!err.to_string().is_empty());
            }
        }

        /// A config cut short or missing a line, as a bad edit or a full disk leaves it.
        #[test]
        fn a_damaged_config_is_refused_clearly(at in 0usize..4000, drop_line: bool) {
            let text = crate::fuzz::damaged(&full_config(), at, drop_line);
            if let Err(err) = Config::parse(&text, Path::new("fuzz.toml"), PathBuf::from(".")) {
                proptest::prop_assert!(!err.to_string().is_empty());
            }
        }

        /// The camera state file is written by the node but read back after crashes and by
        /// hand-edits: any value in it is taken or refused clearly.
        #[test]
        fn any_camera_state_file_is_taken_or_refused_clearly(
            index in 0usize..100,
            value in crate::fuzz::toml_value(),
            at in 0usize..2000,
            damage: bool,
        ) {
            let text = crate::fuzz::with_value_replaced(FUZZED_STATE, index, &value);
            let text = if damage { crate::fuzz::damaged(&text, at, false) } else { text };
            let dir = tempfile::tempdir().unwrap();
            let origin = dir.path().join("node.toml");
            std::fs::write(&origin, MINIMAL).unwrap();
            std::fs::write(dir.path().join("node.cameras.toml"), text).unwrap();
            let mut config = Config::load(&origin).unwrap();
            if let Err(err) = config.apply_camera_state() {
                proptest::prop_assert!(!err.to_string().is_empty());
            }
        }
    }
}
