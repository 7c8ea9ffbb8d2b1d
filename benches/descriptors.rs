//! Descriptor codec evaluation (`make eval-descriptors`, issue 4): how much of the f32 embedding's
//! information each wire codec keeps, and what the descriptor stream costs next to the video.
//!
//! Everything comes from the real node (real models, GStreamer decode, gRPC over loopback) on real
//! footage:
//!
//! 1. **Fidelity and identity.** Per clip, one run analysing every frame with `codec = "f32"` and
//!    `send_detections = true` gives every embedded detection with its exact vector, capture time,
//!    class and track. Each vector is then encoded in-process with every codec of the grid (the
//!    node's own `Encoder`, with the projection the embedder's manifest names) and compared with
//!    the f32 reference: nearest-neighbour agreement, Spearman rank correlation of all pairwise
//!    similarities, and same-track retrieval (rank-1, mAP).
//! 2. **Stream bandwidth.** Per clip and codec, one run with the default tracker and emission
//!    policy at the default 5 analysed frames/s, read by a subscriber with the default filters,
//!    as a central system would; the protobuf bytes received are set against the video's bitrate.
//!
//! Output: markdown tables on stdout (also `benches/results/descriptors.md`), every number in
//! `target/eval/descriptors.json`, and the plot `benches/results/descriptor-fidelity.png` drawn
//! by `scripts/plot_descriptors.py`.
//!
//! Environment: RETINA_EVAL_EMBEDDER_MANIFEST evaluates another embedder manifest (and so another
//! projection) than `models/mobilenetv2-1280.toml`, e.g. a candidate projection before shipping
//! it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use retina_edge::describe::codec::{self, CodecKind, Encoder};
use retina_edge::describe::projection::Projection;
use retina_edge::infer::manifest::Manifest;
use retina_edge::pb::{self, EmbeddingCodec, TrackEventKind};
use retina_edge::wire::event_kind_label;
use serde_json::{Value, json};

/// The clips of the issue, as (name, path in the repository).
const CLIPS: [(&str, &str); 2] = [
    ("bikes", ".deps/media/bikes.mp4"),
    ("carphone", ".deps/media/carphone_pristine.mp4"),
];
/// The projection is learned from bikes detections captured before this offset
/// (`scripts/learn-projection.sh`); held out are objects first seen after it (`HELD_OUT_RULE`).
const TRAIN_SECONDS: f64 = 5.0;
/// The clip the projection was learned from.
const TRAINING_CLIP: &str = "bikes";
/// The node runs the projection was learned from (`scripts/learn-projection.sh`): frame width and
/// detector threshold.
const TRAIN_RUNS: [(u32, f32); 3] = [(640, 0.25), (480, 0.25), (320, 0.25)];
/// The tracker's default `max_age_seconds`: how far back an object may have been seen before its
/// track starts (and how long its first boxes are compared with the training detections).
const TRACK_MAX_AGE_SECONDS: f64 = 1.5;
/// pca-int8 sizes evaluated, where the projection offers them.
const PCA_SIZES: [usize; 4] = [16, 32, 64, 128];
/// Identity: a query's own track counts as a positive only this far from the query in time, so
/// that retrieval is of the object at another moment, not of a near-copy of the same crop.
const MIN_IDENTITY_GAP_SECONDS: f64 = 1.0;
/// Fewer identity queries than this give no meaningful rank-1 or mAP.
const MIN_IDENTITY_QUERIES: usize = 10;
/// What a deployment analyses (`cameras[].analysis_fps` default).
const STREAM_ANALYSIS_FPS: f64 = 5.0;
const DEFAULT_EMBEDDER_MANIFEST: &str = "models/mobilenetv2-1280.toml";

const NN_RULE: &str = "Each descriptor is a query against every other descriptor of its subset. The f32 nearest \
     neighbour is the most similar one (f32 ties, counted in `nn_reference_ties`, broken by the lowest index; there \
     were none). A codec agrees when its most similar descriptor is that one and no other descriptor is as similar: \
     a tie with the true neighbour is not agreement (`nn_agreement`, the figure reported). Secondary, in the JSON \
     and the full table: `nn_agreement_tie_inclusive` counts a tie that includes the true neighbour as agreement \
     (inflates binary codes, which have few distinct Hamming distances), and `nn_agreement_random_tie_break` is \
     the expected agreement of a search that breaks ties at random (1/k for a k-way tie with the true neighbour).";
/// Held-out objects: a bikes track is held out only if it first appears after the training
/// window and no detection of the training runs comes near it (see `HELD_OUT_RULE`).
const HELD_OUT_RULE: &str = "Held out = objects (tracks) whose crops cannot be in the projection's training data. \
     The projection was learned from every detection of the first 5 s of bikes, in three node runs (frame width \
     640, 480 and 320, detector threshold 0.25: scripts/learn-projection.sh); the bench repeats those three runs \
     to know where those detections were. A confirmed track of the evaluation run (640 px, the manifest's threshold) \
     is held out when (1) its first detection is at or after 5 s, and (2) no detection of the training runs between \
     1.5 s (the tracker's max age) before that first detection and the end of the window overlaps (IoU > 0, any \
     class) any of its boxes of its first 1.5 s: the same object detected weakly or untracked just before the \
     window ended would be in the training data. The held-out subset is the detections of those tracks only \
     (untracked detections are left out: their object is unknown). `bikes (all)` includes the training objects. \
     carphone is another scene: wholly held out.";
const IDENTITY_RULE: &str = "Query: a detection in a confirmed track whose track has another detection at least \
     1.0 s away (within the subset). Gallery: every other detection of the subset in a confirmed track, except \
     same-track ones closer than 1.0 s to the query. Untracked detections (track_id 0) are left out of the gallery: \
     their identity is unknown, and many are the searched object itself (frames before its track was confirmed, or \
     that the tracker missed); `identity_untracked_negative` counts them as non-matches instead (a lower bound). \
     A query needs at least one match and one non-match in its gallery. Positives: the query's track. Ranked by \
     similarity; among equal similarities non-matches rank first (pessimistic, only matters for binary). rank-1: \
     the top item is a positive; mAP: mean over queries of average precision. Not reported with fewer than 10 \
     queries or a single track.";
const STREAM_RULE: &str = "Default tracker and emission policy, analysis_fps = 5, realtime = false. Subscriber: default \
     filters, full_context = false, include_empty_frames = false, from the earliest buffered descriptor, over \
     plaintext HTTP/2 on loopback through a counting TCP proxy. Wire bytes (the figure reported): every byte the \
     node wrote to the subscriber's TCP connection, from its first SETTINGS frame to the end of the stream: HTTP/2 \
     frame headers, HEADERS (response headers and trailers), SETTINGS, PING and WINDOW_UPDATE frames, and DATA \
     frames holding each message with gRPC's 5-byte prefix; no compression. Left out: TCP/IP headers (about 52 \
     bytes per segment with IPv4 and TCP timestamps, more with link framing), TLS (not used here; about 22-29 bytes \
     per record and a handshake), and what the subscriber sends the node (counted apart: `up_bytes`). Protobuf \
     bytes (secondary): prost encoded_len of each FrameDescriptor received. % of video: over the clip file's \
     size (container included) for the same duration.";

fn repo() -> &'static Path {
    common::repo()
}

// ---------------------------------------------------------------------------------------------
// Codecs

/// One codec setting of the grid, with the encoder the node would use for it.
struct Codec {
    kind: CodecKind,
    /// pca-int8: dimensions; binary: bits; float codecs: none.
    size: Option<usize>,
    encoder: Encoder,
}

impl Codec {
    fn new(kind: CodecKind, size: Option<usize>, projection: &Arc<Projection>) -> Codec {
        let encoder = Encoder::new(kind, size, Some(projection.clone()))
            .unwrap_or_else(|e| panic!("codec {kind} {size:?} with projection {}: {e}", projection.id()));
        Codec { kind, size, encoder }
    }

    fn label(&self) -> String {
        match (self.kind, self.size) {
            (CodecKind::PcaInt8, Some(d)) => format!("pca-int8 x{d}"),
            (CodecKind::Binary, Some(d)) => format!("binary {d} bits"),
            (kind, _) => kind.name().to_string(),
        }
    }

    /// The codec family, as the proto defines comparability (float: f32, f16, int8).
    fn family(&self) -> &'static str {
        match self.kind {
            CodecKind::PcaInt8 => "pca-int8",
            CodecKind::Binary => "binary",
            _ => "float",
        }
    }

    /// The `[describe]` table that makes the node send this codec.
    fn describe_toml(&self) -> String {
        let mut toml = format!("[describe]\ncodec = \"{}\"\n", self.kind.name());
        if let Some(d) = self.size {
            toml.push_str(&format!("codec_dimension = {d}\n"));
        }
        toml
    }
}

/// f32, f16, int8; pca-int8 at each size of `PCA_SIZES` the projection offers; binary at every
/// size it has a rotation for.
fn codec_grid(projection: &Arc<Projection>) -> Vec<Codec> {
    let mut grid: Vec<Codec> = [CodecKind::F32, CodecKind::F16, CodecKind::Int8]
        .into_iter()
        .map(|kind| Codec::new(kind, None, projection))
        .collect();
    grid.extend(
        PCA_SIZES
            .into_iter()
            .filter(|&d| d <= projection.max_dimension())
            .map(|d| Codec::new(CodecKind::PcaInt8, Some(d), projection)),
    );
    grid.extend(
        projection
            .binary_sizes()
            .into_iter()
            .map(|d| Codec::new(CodecKind::Binary, Some(d), projection)),
    );
    grid
}

/// The embedder manifest to evaluate, and the projection it names (the one the node will load).
fn load_projection() -> (PathBuf, Arc<Projection>) {
    let manifest_path = std::env::var_os("RETINA_EVAL_EMBEDDER_MANIFEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(DEFAULT_EMBEDDER_MANIFEST));
    let manifest =
        Manifest::load(&manifest_path).unwrap_or_else(|e| panic!("embedder manifest {}: {e}", manifest_path.display()));
    let Some((spec, path)) = manifest.projection() else {
        panic!(
            "{} has no [projection] section: the pca-int8 and binary codecs cannot be evaluated. Learn one with \
             scripts/learn-projection.sh and name it in the manifest (`[projection] id = \"...\" file = \"...\"`).",
            manifest_path.display()
        );
    };
    if !path.is_file() {
        panic!(
            "{} names projection file {}, which does not exist: run scripts/learn-projection.sh",
            manifest_path.display(),
            path.display()
        );
    }
    let projection = Projection::load(&path, spec.id.clone())
        .unwrap_or_else(|e| panic!("projection of {}: {e}", manifest_path.display()));
    (manifest_path, Arc::new(projection))
}

// ---------------------------------------------------------------------------------------------
// Node runs

/// A node config for one camera playing `clip` once, as fast as inference goes.
fn node_config(embedder_manifest: &Path, camera: &str, clip: &Path, analysis_fps: f64, describe: &str) -> String {
    let cameras = format!(
        "[[cameras]]\nid = \"{camera}\"\nuri = \"{}\"\nanalysis_fps = {analysis_fps:?}\nrealtime = false\n\n\
         {describe}\n",
        clip.display()
    );
    let text = common::config_toml(&cameras, "exit_when_cameras_end = true");
    // `config_toml` always names the repository's embedder; evaluate the chosen one instead.
    let default = repo().join(DEFAULT_EMBEDDER_MANIFEST).display().to_string();
    assert!(text.contains(&default), "config_toml no longer names {default}");
    text.replace(&default, &embedder_manifest.display().to_string())
}

/// One embedded detection of a clip, as the node sent it under the f32 codec.
struct Sample {
    /// Seconds since the camera's first frame.
    offset: f64,
    class_name: String,
    /// 0 if the detection was not in a confirmed track.
    track_id: u64,
    /// Normalised [x_min, y_min, x_max, y_max].
    bbox: [f32; 4],
    /// The unit-norm f32 embedding.
    vector: Vec<f32>,
}

/// What the fidelity run of one clip gives.
struct ClipData {
    name: &'static str,
    path: PathBuf,
    file_bytes: u64,
    frames: usize,
    /// Frame interval times frames, from the capture times of the analysed stream.
    duration: f64,
    samples: Vec<Sample>,
    /// The clip trained the projection: where the training runs' detections of the window were.
    training: Option<Vec<TrainingDetection>>,
}

/// Where one confirmed track of a clip stands with respect to the projection's training data.
struct TrackProvenance {
    track_id: u64,
    class_name: String,
    detections: usize,
    first: f64,
    last: f64,
    /// Highest IoU of one of its first boxes with a training detection near its start (0: none).
    training_contact_iou: f32,
    held_out: bool,
}

/// Every confirmed track of `clip`, in order of first appearance, and whether it is held out
/// (`HELD_OUT_RULE`). A clip that did not train the projection holds out everything.
fn provenance(clip: &ClipData) -> Vec<TrackProvenance> {
    let mut tracks: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
    for s in clip.samples.iter().filter(|s| s.track_id != 0) {
        tracks.entry(s.track_id).or_default().push(s);
    }
    let mut out: Vec<TrackProvenance> = tracks
        .into_iter()
        .map(|(track_id, samples)| {
            let first = samples.iter().map(|s| s.offset).fold(f64::INFINITY, f64::min);
            let last = samples.iter().map(|s| s.offset).fold(f64::NEG_INFINITY, f64::max);
            let (contact, held_out) = match &clip.training {
                None => (0.0, true),
                Some(training) => {
                    let early = samples.iter().filter(|s| s.offset < first + TRACK_MAX_AGE_SECONDS);
                    let near = training.iter().filter(|t| t.offset >= first - TRACK_MAX_AGE_SECONDS);
                    let contact = early
                        .flat_map(|s| near.clone().map(move |t| iou(&s.bbox, &t.bbox)))
                        .fold(0f32, f32::max);
                    (contact, first >= TRAIN_SECONDS && contact == 0.0)
                }
            };
            TrackProvenance {
                track_id,
                class_name: samples[0].class_name.clone(),
                detections: samples.len(),
                first,
                last,
                training_contact_iou: contact,
                held_out,
            }
        })
        .collect();
    out.sort_by(|a, b| a.first.total_cmp(&b.first).then(a.track_id.cmp(&b.track_id)));
    out
}

fn bbox(object: &pb::DetectedObject) -> [f32; 4] {
    let b = object.r#box.as_ref().expect("every detection has a box");
    [b.x_min, b.y_min, b.x_max, b.y_max]
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

fn nanos(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

fn capture_nanos(d: &pb::FrameDescriptor) -> i128 {
    nanos(d.capture_time.as_ref().expect("every descriptor has a capture time"))
}

/// A detection of the projection's training runs: seconds since frame 0, normalised box.
struct TrainingDetection {
    offset: f64,
    bbox: [f32; 4],
}

/// Repeats the node runs the projection was learned from (`TRAIN_RUNS`: every frame of `clip`,
/// every detection at the training threshold) and returns where their detections of the training
/// window were: only boxes and times are used, to tell which objects of the evaluation are held out.
fn training_window_detections(
    runtime: &tokio::runtime::Runtime,
    manifest: &Path,
    name: &'static str,
    clip: &Path,
) -> Vec<TrainingDetection> {
    let mut out = Vec::new();
    for (width, threshold) in TRAIN_RUNS {
        let describe = format!("max_frame_width_px = {width}\n\n[describe]\ncodec = \"f32\"\nsend_detections = true\n");
        let text = node_config(manifest, name, clip, 0.0, &describe);
        assert_eq!(
            text.matches("[inference]\n").count(),
            1,
            "config_toml has one [inference] table"
        );
        let text = text.replace(
            "[inference]\n",
            &format!("[inference]\nscore_threshold = {threshold:?}\n"),
        );
        let config = common::parse_config(&text);
        assert_eq!(config.cameras[0].max_frame_width_px, width);
        let started = Instant::now();
        let descriptors = run_until_end(runtime, config);
        let t0 = descriptors
            .first()
            .map(capture_nanos)
            .expect("the clip gave descriptors");
        let before = out.len();
        for d in &descriptors {
            let offset = (capture_nanos(d) - t0) as f64 / 1e9;
            if offset < TRAIN_SECONDS {
                out.extend(d.objects.iter().map(|o| TrainingDetection { offset, bbox: bbox(o) }));
            }
        }
        eprintln!(
            "  {name} training run w{width} t{threshold}: {} detections before {TRAIN_SECONDS} s ({:.1} s)",
            out.len() - before,
            started.elapsed().as_secs_f64()
        );
    }
    out
}

/// Every descriptor of one node run, until the node stops by itself (its clip ended).
fn run_until_end(runtime: &tokio::runtime::Runtime, config: retina_edge::config::Config) -> Vec<pb::FrameDescriptor> {
    runtime.block_on(async {
        let (node, mut client) = common::start_node(config).await;
        let descriptors = common::collect_until_end(&mut client).await;
        node.wait().await.expect("node stops cleanly");
        descriptors
    })
}

/// Runs the node over every frame of `clip` with f32 embeddings and every detection sent.
fn fidelity_run(runtime: &tokio::runtime::Runtime, manifest: &Path, name: &'static str, clip: &Path) -> ClipData {
    let describe = "[describe]\ncodec = \"f32\"\nsend_detections = true\n";
    let config = common::parse_config(&node_config(manifest, name, clip, 0.0, describe));
    let started = Instant::now();
    let descriptors = run_until_end(runtime, config);
    let sequences: Vec<u64> = descriptors.iter().map(|d| d.sequence).collect();
    assert!(
        sequences.iter().copied().eq(0..sequences.len() as u64),
        "{name}: descriptors are not numbered 0..{} without gaps; some were missed",
        sequences.len()
    );
    let t0 = descriptors
        .first()
        .map(capture_nanos)
        .expect("the clip gave descriptors");
    // The track summaries sent when the camera stops come in an extra descriptor dated at the last
    // frame: distinct capture times are the frames.
    let mut times: Vec<i128> = descriptors.iter().map(capture_nanos).collect();
    times.dedup();
    let frames = times.len();
    assert!(frames >= 2, "{name}: only {frames} frame(s) analysed");
    // Frames are evenly spaced (file position clock), so the clip lasts frames x interval.
    let interval = (times[frames - 1] - times[0]) as f64 / (frames - 1) as f64 / 1e9;
    let duration = interval * frames as f64;

    let mut samples = Vec::new();
    for d in &descriptors {
        let offset = (capture_nanos(d) - t0) as f64 / 1e9;
        for object in &d.objects {
            let Some(embedding) = &object.embedding else { continue };
            assert_eq!(
                embedding.codec,
                EmbeddingCodec::F32 as i32,
                "{name}: the node was asked for f32 embeddings"
            );
            let vector = codec::decode(embedding).unwrap_or_else(|e| panic!("{name}: f32 embedding: {e}"));
            samples.push(Sample {
                offset,
                class_name: object.class_name.clone(),
                track_id: object.track_id,
                bbox: bbox(object),
                vector,
            });
        }
    }
    eprintln!(
        "  {name}: {frames} frames, {duration:.3} s, {} embedded detections ({:.1} s)",
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    ClipData {
        name,
        path: clip.to_path_buf(),
        file_bytes: std::fs::metadata(clip)
            .unwrap_or_else(|e| panic!("{}: {e}", clip.display()))
            .len(),
        frames,
        duration,
        samples,
        training: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Bytes on the wire

/// Every byte of one TCP connection, both ways, as a counting proxy between the gRPC client and
/// the node forwarded them.
struct WireCapture {
    /// Node to subscriber.
    down: Vec<u8>,
    /// Subscriber to node.
    up: Vec<u8>,
}

/// A TCP proxy on loopback for one connection to `target`: connect the client to the address it
/// returns; the thread returns what went through once both sides have closed.
fn counting_proxy(target: std::net::SocketAddr) -> (std::net::SocketAddr, std::thread::JoinHandle<WireCapture>) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port for the proxy");
    let addr = listener.local_addr().expect("the proxy's address");
    let pump = |mut from: TcpStream, mut to: TcpStream| -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    seen.extend_from_slice(&buf[..k]);
                    if to.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
        seen
    };
    let handle = std::thread::spawn(move || {
        let (client, _) = listener.accept().expect("the gRPC client connects to the proxy");
        let node = TcpStream::connect(target).expect("the proxy connects to the node");
        for s in [&client, &node] {
            s.set_nodelay(true).expect("TCP_NODELAY");
        }
        let (client2, node2) = (client.try_clone().unwrap(), node.try_clone().unwrap());
        let up = std::thread::spawn(move || pump(client2, node2));
        let down = pump(node, client);
        let up = up.join().expect("the proxy's upstream pump");
        WireCapture { down, up }
    });
    (addr, handle)
}

/// HTTP/2 frames of one direction of a connection, by type, and the gRPC messages their DATA
/// frames carry.
#[derive(Default)]
struct H2Stats {
    bytes: usize,
    /// The client's 24-byte connection preface (upstream only).
    preface: usize,
    /// (frames, bytes including their 9-byte headers) per frame type.
    frames: BTreeMap<&'static str, (usize, usize)>,
    frame_header_bytes: usize,
    /// gRPC messages in the DATA frames, and their protobuf bytes (without the 5-byte prefix).
    grpc_messages: usize,
    grpc_message_bytes: usize,
}

fn h2_frame_type(t: u8) -> &'static str {
    match t {
        0 => "DATA",
        1 => "HEADERS",
        2 => "PRIORITY",
        3 => "RST_STREAM",
        4 => "SETTINGS",
        5 => "PUSH_PROMISE",
        6 => "PING",
        7 => "GOAWAY",
        8 => "WINDOW_UPDATE",
        9 => "CONTINUATION",
        _ => "unknown",
    }
}

/// Parses a captured direction of an HTTP/2 connection (RFC 9113 section 4.1) and the gRPC
/// length-prefixed messages of each stream's DATA payload.
fn parse_h2(bytes: &[u8]) -> H2Stats {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut stats = H2Stats {
        bytes: bytes.len(),
        ..Default::default()
    };
    let mut at = 0;
    if bytes.starts_with(PREFACE) {
        stats.preface = PREFACE.len();
        at = PREFACE.len();
    }
    let mut data: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while at < bytes.len() {
        assert!(at + 9 <= bytes.len(), "a truncated HTTP/2 frame header at byte {at}");
        let h = &bytes[at..at + 9];
        let length = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        assert!(at + 9 + length <= bytes.len(), "a truncated HTTP/2 frame at byte {at}");
        let payload = &bytes[at + 9..at + 9 + length];
        let entry = stats.frames.entry(h2_frame_type(kind)).or_default();
        entry.0 += 1;
        entry.1 += 9 + length;
        stats.frame_header_bytes += 9;
        if kind == 0 {
            // PADDED: a pad-length byte first and that much padding at the end.
            let payload = if flags & 0x8 != 0 {
                let pad = usize::from(payload[0]);
                &payload[1..payload.len() - pad]
            } else {
                payload
            };
            data.entry(stream).or_default().extend_from_slice(payload);
        }
        at += 9 + length;
    }
    for (stream, body) in data {
        let mut i = 0;
        while i < body.len() {
            assert!(i + 5 <= body.len(), "stream {stream}: a truncated gRPC message prefix");
            assert_eq!(body[i], 0, "stream {stream}: a compressed gRPC message");
            let len = u32::from_be_bytes([body[i + 1], body[i + 2], body[i + 3], body[i + 4]]) as usize;
            assert!(i + 5 + len <= body.len(), "stream {stream}: a truncated gRPC message");
            stats.grpc_messages += 1;
            stats.grpc_message_bytes += len;
            i += 5 + len;
        }
    }
    stats
}

fn h2_json(h: &H2Stats) -> Value {
    json!({
        "bytes": h.bytes,
        "preface": h.preface,
        "frame_header_bytes": h.frame_header_bytes,
        "frames": h.frames.iter().map(|(k, (n, b))| (k.to_string(), json!({"frames": n, "bytes": b})))
            .collect::<serde_json::Map<_, _>>(),
        "grpc_messages": h.grpc_messages,
        "grpc_message_bytes": h.grpc_message_bytes,
    })
}

/// What a central subscriber received from one run with the default emission policy.
#[derive(Default)]
struct StreamStats {
    descriptors: usize,
    /// Protobuf: the sum of the descriptors' encoded lengths.
    bytes: usize,
    /// Node to subscriber on the TCP connection (HTTP/2 as sent).
    down: H2Stats,
    /// Subscriber to node.
    up: H2Stats,
    /// Encoded `Embedding` messages inside the views.
    embedding_bytes: usize,
    appearance_vectors: usize,
    track_records: usize,
    events: BTreeMap<&'static str, usize>,
    run_seconds: f64,
}

fn event_name(kind: i32) -> &'static str {
    event_kind_label(TrackEventKind::try_from(kind).unwrap_or_default())
}

/// Subscribes like a central system: default filters, context only when it changes, no empty
/// frames; from the earliest buffered descriptor so that nothing produced before the call is lost.
async fn subscribe_until_end(client: &mut common::Client) -> Vec<pb::FrameDescriptor> {
    let request = pb::SubscribeRequest {
        subscriber_name: "eval-descriptors".into(),
        ..Default::default()
    };
    common::subscribe_until_end(client, request).await
}

fn stream_run(runtime: &tokio::runtime::Runtime, manifest: &Path, clip: &ClipData, codec: &Codec) -> StreamStats {
    let config = node_config(
        manifest,
        clip.name,
        &clip.path,
        STREAM_ANALYSIS_FPS,
        &codec.describe_toml(),
    );
    let config = common::parse_config(&config);
    let started = Instant::now();
    let (descriptors, proxy) = runtime.block_on(async {
        let node = retina_edge::node::Node::start(config).await.expect("node starts");
        let (proxy_addr, proxy) = counting_proxy(node.grpc_addr);
        let mut client = pb::retina_client::RetinaClient::connect(format!("http://{proxy_addr}"))
            .await
            .expect("client connects through the proxy");
        let descriptors = subscribe_until_end(&mut client).await;
        node.wait().await.expect("node stops cleanly");
        // Closing the client's connection ends the proxy's.
        drop(client);
        (descriptors, proxy)
    });
    let wire = proxy.join().expect("the counting proxy");
    let mut stats = StreamStats {
        run_seconds: started.elapsed().as_secs_f64(),
        down: parse_h2(&wire.down),
        up: parse_h2(&wire.up),
        ..Default::default()
    };
    for d in &descriptors {
        stats.descriptors += 1;
        stats.bytes += prost::Message::encoded_len(d);
        stats.track_records += d.tracks.len();
        for event in &d.track_events {
            *stats.events.entry(event_name(event.kind)).or_default() += 1;
            if let Some(appearance) = event.view.as_ref().and_then(|v| v.appearance.as_ref()) {
                check_codec(appearance, codec);
                stats.appearance_vectors += 1;
                stats.embedding_bytes += prost::Message::encoded_len(appearance);
            }
        }
    }
    // The proxy saw exactly this stream: the same messages, the same protobuf bytes.
    assert_eq!(
        (stats.down.grpc_messages, stats.down.grpc_message_bytes),
        (stats.descriptors, stats.bytes),
        "{} {}: gRPC messages on the wire vs descriptors received",
        clip.name,
        codec.label()
    );
    stats
}

/// The node sent what it was configured to (a config mistake would silently measure another codec).
fn check_codec(e: &pb::Embedding, codec: &Codec) {
    let want_dimension = codec.size.map(|d| d as u32);
    assert!(
        e.codec == codec.kind.codec() as i32 && want_dimension.is_none_or(|d| e.dimension == d),
        "asked the node for {}, got codec {} x{}",
        codec.label(),
        e.codec,
        e.dimension
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// All pairwise similarities of `codes` (row-major, n x n; the diagonal is unused), as
/// `codec::similarity` computes them: binary codes by Hamming distance through it, which is exact
/// so that ties are real ties; other codes (n^2 comparisons) decoded and re-normalised once, then
/// dot products, i.e. the cosine `codec::similarity` takes (quantised vectors are only nearly unit).
fn similarity_matrix(codes: &[pb::Embedding]) -> Vec<f32> {
    let n = codes.len();
    let mut m = vec![0f32; n * n];
    let binary = codes.first().is_some_and(|c| c.codec == EmbeddingCodec::Binary as i32);
    let decoded: Vec<Vec<f32>> = if binary {
        Vec::new()
    } else {
        codes
            .iter()
            .map(|c| {
                let mut v = codec::decode(c).expect("codes of our own encoder decode");
                codec::l2_normalize(&mut v);
                v
            })
            .collect()
    };
    let dot = |i: usize, j: usize| -> f32 { decoded[i].iter().zip(&decoded[j]).map(|(a, b)| a * b).sum() };
    // The dot products below must be the library's comparison; check a few.
    for (i, j) in (1..n.min(8)).map(|j| (0, j)).filter(|_| !binary) {
        let want = codec::similarity(&codes[i], &codes[j]).expect("codes of one encoder are comparable");
        assert!(
            (dot(i, j) - want).abs() < 1e-4,
            "similarity {} vs codec::similarity {want}",
            dot(i, j)
        );
    }
    for i in 0..n {
        for j in i + 1..n {
            let s = if binary {
                codec::similarity(&codes[i], &codes[j]).expect("codes of one encoder are comparable")
            } else {
                dot(i, j)
            };
            m[i * n + j] = s;
            m[j * n + i] = s;
        }
    }
    m
}

/// A subset of a clip's samples (indices into `ClipData::samples`, ascending).
struct Subset<'a> {
    name: String,
    /// No object of the subset is in the projection's training data.
    held_out: bool,
    clip: &'a ClipData,
    members: Vec<usize>,
}

/// The most similar other members of `q`: the best similarity and every member reaching it.
fn nearest(sim: &[f32], n: usize, members: &[usize], q: usize) -> Vec<usize> {
    let row = &sim[q * n..(q + 1) * n];
    let best = members
        .iter()
        .filter(|&&j| j != q)
        .map(|&j| row[j])
        .fold(f32::NEG_INFINITY, f32::max);
    members.iter().copied().filter(|&j| j != q && row[j] == best).collect()
}

struct NnStats {
    /// The codec's nearest neighbour is the f32 one, alone: the figure reported.
    agreement: f64,
    /// A tie that includes the f32 neighbour counts as agreement.
    tie_inclusive: f64,
    /// Expected agreement when ties are broken at random: 1/k for a k-way tie with the f32 one.
    random_tie_break: f64,
    /// Queries whose nearest neighbour under the codec is not unique.
    queries_with_ties: usize,
    /// Queries whose f32 nearest neighbour is not unique (broken by the lowest index).
    reference_ties: usize,
}

fn nn_agreement(reference: &[f32], code: &[f32], n: usize, members: &[usize]) -> NnStats {
    let (mut strict, mut inclusive, mut random, mut tied, mut reference_ties) = (0usize, 0usize, 0f64, 0usize, 0usize);
    for &q in members {
        // `nearest` lists members in ascending order: the first is the lowest-index tie-break.
        let wanted = nearest(reference, n, members, q);
        reference_ties += usize::from(wanted.len() > 1);
        let want = wanted[0];
        let got = nearest(code, n, members, q);
        let found = got.contains(&want);
        strict += usize::from(got.len() == 1 && found);
        inclusive += usize::from(found);
        if found {
            random += 1.0 / got.len() as f64;
        }
        tied += usize::from(got.len() > 1);
    }
    let queries = members.len().max(1) as f64;
    NnStats {
        agreement: strict as f64 / queries,
        tie_inclusive: inclusive as f64 / queries,
        random_tie_break: random / queries,
        queries_with_ties: tied,
        reference_ties,
    }
}

/// Ranks (1-based) of `values`, ties sharing their average rank.
fn average_ranks(values: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0f64; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0; // mean of start+1 ..= end
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    cov / (va * vb).sqrt()
}

/// Spearman's rank correlation between the reference and the codec over every pair of members.
fn spearman(reference: &[f32], code: &[f32], n: usize, members: &[usize]) -> f64 {
    let pairs = || {
        members
            .iter()
            .enumerate()
            .flat_map(move |(a, &i)| members[a + 1..].iter().map(move |&j| i * n + j))
    };
    let r: Vec<f32> = pairs().map(|k| reference[k]).collect();
    let c: Vec<f32> = pairs().map(|k| code[k]).collect();
    pearson(&average_ranks(&r), &average_ranks(&c))
}

struct Identity {
    queries: usize,
    /// Tracks with at least one query.
    tracks: usize,
    /// Confirmed tracks with a detection in the subset.
    subset_tracks: usize,
    rank1: f64,
    map: f64,
}

impl Identity {
    /// Whether rank-1 and mAP mean anything: enough queries, and more than one track to tell apart.
    fn reportable(&self) -> bool {
        self.queries >= MIN_IDENTITY_QUERIES && self.subset_tracks >= 2
    }
}

/// How detections outside any confirmed track (`track_id` 0) enter identity retrieval.
#[derive(Clone, Copy, PartialEq)]
enum Untracked {
    /// Left out of the gallery: their identity is unknown, and many are the very object being
    /// searched for (its frames before the track was confirmed, or frames the tracker missed).
    Excluded,
    /// In the gallery as non-matches: the literal rule, a lower bound.
    AsNegatives,
}

/// Same-track retrieval across time (see `IDENTITY_RULE`).
fn identity(sim: &[f32], n: usize, subset: &Subset<'_>, untracked: Untracked) -> Identity {
    let samples = &subset.clip.samples;
    let far = |a: usize, b: usize| (samples[a].offset - samples[b].offset).abs() >= MIN_IDENTITY_GAP_SECONDS;
    let same_track = |a: usize, b: usize| samples[a].track_id != 0 && samples[a].track_id == samples[b].track_id;
    let in_gallery = |q: usize, j: usize| {
        j != q && (!same_track(q, j) || far(q, j)) && (untracked == Untracked::AsNegatives || samples[j].track_id != 0)
    };
    let (mut queries, mut hits, mut ap_sum) = (0usize, 0usize, 0f64);
    let mut tracks = std::collections::BTreeSet::new();
    for &q in &subset.members {
        let gallery: Vec<usize> = subset.members.iter().copied().filter(|&j| in_gallery(q, j)).collect();
        // A query needs another view of its object far enough away, and something to confuse it with.
        let positives = gallery.iter().filter(|&&j| same_track(q, j)).count();
        if positives == 0 || positives == gallery.len() {
            continue;
        }
        let row = &sim[q * n..(q + 1) * n];
        let mut ranked: Vec<(f32, bool, usize)> = gallery.iter().map(|&j| (row[j], same_track(q, j), j)).collect();
        // Most similar first; among equals non-matches first (false < true), then by index.
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let (mut found, mut precision_sum) = (0usize, 0f64);
        for (rank, &(_, positive, _)) in ranked.iter().enumerate() {
            if positive {
                found += 1;
                precision_sum += found as f64 / (rank + 1) as f64;
            }
        }
        queries += 1;
        hits += usize::from(ranked[0].1);
        ap_sum += precision_sum / found as f64;
        tracks.insert(samples[q].track_id);
    }
    let per_query = |x: f64| if queries == 0 { f64::NAN } else { x / queries as f64 };
    let subset_tracks = subset
        .members
        .iter()
        .map(|&i| samples[i].track_id)
        .filter(|&t| t != 0)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Identity {
        queries,
        tracks: tracks.len(),
        subset_tracks,
        rank1: per_query(hits as f64),
        map: per_query(ap_sum),
    }
}

/// Every metric of one codec on one subset.
struct FidelityRow {
    subset: String,
    held_out: bool,
    codec: String,
    family: &'static str,
    size: Option<usize>,
    descriptors: usize,
    bytes_per_descriptor: f64,
    /// Of which the vector itself (`Embedding.data`).
    data_bytes_per_descriptor: f64,
    nn: NnStats,
    spearman: f64,
    /// Untracked detections left out of the gallery.
    identity: Identity,
    /// Untracked detections counted as non-matches.
    identity_untracked_negative: Identity,
}

/// Per clip: all its detections; for a clip that trained the projection also its held-out
/// objects alone (`HELD_OUT_RULE`).
fn subsets(clips: &[ClipData]) -> Vec<Subset<'_>> {
    let mut out = Vec::new();
    for clip in clips {
        let all: Vec<usize> = (0..clip.samples.len()).collect();
        if clip.training.is_none() {
            out.push(Subset {
                name: clip.name.to_string(),
                held_out: true,
                clip,
                members: all,
            });
            continue;
        }
        let held_out: std::collections::BTreeSet<u64> = provenance(clip)
            .into_iter()
            .filter(|t| t.held_out)
            .map(|t| t.track_id)
            .collect();
        out.push(Subset {
            name: format!("{} (all)", clip.name),
            held_out: false,
            clip,
            members: all.clone(),
        });
        out.push(Subset {
            name: format!("{} held-out objects", clip.name),
            held_out: true,
            clip,
            members: all
                .into_iter()
                .filter(|&i| held_out.contains(&clip.samples[i].track_id))
                .collect(),
        });
    }
    out
}

fn evaluate(clips: &[ClipData], grid: &[Codec]) -> Vec<FidelityRow> {
    let subsets = subsets(clips);
    let mut rows = Vec::new();
    for clip in clips {
        let n = clip.samples.len();
        let encode_all = |codec: &Codec| -> Vec<pb::Embedding> {
            clip.samples
                .iter()
                .map(|s| {
                    codec
                        .encoder
                        .encode(&s.vector)
                        .unwrap_or_else(|e| panic!("{}: encoding with {}: {e}", clip.name, codec.label()))
                })
                .collect()
        };
        // The reference is the f32 codec itself, re-encoded like the others (so its row reads 1).
        let f32_codec = grid
            .iter()
            .find(|c| c.kind == CodecKind::F32)
            .expect("f32 is in the grid");
        let reference = similarity_matrix(&encode_all(f32_codec));
        for codec in grid {
            let codes = encode_all(codec);
            let sim = similarity_matrix(&codes);
            for subset in subsets.iter().filter(|s| std::ptr::eq(s.clip, clip)) {
                let members = &subset.members;
                let bytes: usize = members.iter().map(|&i| prost::Message::encoded_len(&codes[i])).sum();
                let data_bytes: usize = members.iter().map(|&i| codes[i].data.len()).sum();
                let per_descriptor = |b: usize| b as f64 / members.len().max(1) as f64;
                rows.push(FidelityRow {
                    subset: subset.name.clone(),
                    held_out: subset.held_out,
                    codec: codec.label(),
                    family: codec.family(),
                    size: codec.size,
                    descriptors: members.len(),
                    bytes_per_descriptor: per_descriptor(bytes),
                    data_bytes_per_descriptor: per_descriptor(data_bytes),
                    nn: nn_agreement(&reference, &sim, n, members),
                    spearman: spearman(&reference, &sim, n, members),
                    identity: identity(&sim, n, subset, Untracked::Excluded),
                    identity_untracked_negative: identity(&sim, n, subset, Untracked::AsNegatives),
                });
            }
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// Report

fn percent(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}", 100.0 * x)
    } else {
        "n/a".into()
    }
}

/// rank-1 and mAP cells, or why there are none.
fn identity_cells(id: &Identity) -> (String, String) {
    if id.reportable() {
        return (percent(id.rank1), percent(id.map));
    }
    let why = if id.subset_tracks < 2 {
        format!(
            "— ({} track{})",
            id.subset_tracks,
            if id.subset_tracks == 1 { "" } else { "s" }
        )
    } else {
        format!("— ({} queries)", id.queries)
    };
    (why, "—".into())
}

fn fidelity_table(rows: &[FidelityRow]) -> String {
    let mut s = String::from(
        "| subset | codec | bytes/descriptor (vector) | NN agreement % | Spearman ρ | rank-1 % | mAP % | queries (tracks) \
         | NN incl. ties / random tie-break % (queries with ties) | rank-1 / mAP %, untracked as non-matches |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (rank1, map) = identity_cells(&r.identity);
        let (rank1_neg, map_neg) = identity_cells(&r.identity_untracked_negative);
        s.push_str(&format!(
            "| {} | {} | {:.1} ({:.0}) | {} | {:.3} | {rank1} | {map} | {} ({}) | {} / {} ({}) | {rank1_neg} / {map_neg} |\n",
            r.subset,
            r.codec,
            r.bytes_per_descriptor,
            r.data_bytes_per_descriptor,
            percent(r.nn.agreement),
            r.spearman,
            r.identity.queries,
            r.identity.tracks,
            percent(r.nn.tie_inclusive),
            percent(r.nn.random_tie_break),
            r.nn.queries_with_ties,
        ));
    }
    s
}

/// Wire bytes per second of video bytes, in percent.
fn percent_of_video(bytes: usize, clip: &ClipData) -> f64 {
    100.0 * bytes as f64 / clip.file_bytes as f64
}

fn stream_table(clips: &[ClipData], stream: &[(usize, String, StreamStats)]) -> String {
    let mut s = String::from(
        "| clip | codec | descriptors | events C/B/A/E | vectors | vector bytes | protobuf bytes | wire bytes (DATA frames) \
         | wire bytes/s | **% of video, wire** | % of video, protobuf | subscriber → node bytes |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (c, label, st) in stream {
        let clip = &clips[*c];
        let e = |k: &str| st.events.get(k).copied().unwrap_or(0);
        s.push_str(&format!(
            "| {} | {label} | {} | {}/{}/{}/{} | {} | {} | {} | {} ({}) | {:.0} | **{:.2}** | {:.2} | {} |\n",
            clip.name,
            st.descriptors,
            e("confirmed"),
            e("better_view"),
            e("appearance_changed"),
            e("ended"),
            st.appearance_vectors,
            st.embedding_bytes,
            st.bytes,
            st.down.bytes,
            st.down.frames.get("DATA").map_or(0, |f| f.0),
            st.down.bytes as f64 / clip.duration,
            percent_of_video(st.down.bytes, clip),
            percent_of_video(st.bytes, clip),
            st.up.bytes,
        ));
    }
    s
}

/// Where the wire bytes of one stream went: the framing around the protobuf messages.
fn wire_breakdown(clips: &[ClipData], stream: &[(usize, String, StreamStats)], label: &str) -> String {
    let mut s = String::new();
    for (c, l, st) in stream.iter().filter(|(_, l, _)| l == label) {
        let d = &st.down;
        let frames = d
            .frames
            .iter()
            .map(|(k, (n, b))| format!("{k} {n} frames {b} B"))
            .collect::<Vec<_>>()
            .join(", ");
        s.push_str(&format!(
            "- {} {l}: {} wire bytes = {} protobuf + {} gRPC prefixes (5 B × {}) + {} frame headers (9 B × {}) + {} in \
             non-DATA frame payloads. Frames: {frames}.\n",
            clips[*c].name,
            d.bytes,
            d.grpc_message_bytes,
            5 * d.grpc_messages,
            d.grpc_messages,
            d.frame_header_bytes,
            d.frame_header_bytes / 9,
            d.bytes - d.grpc_message_bytes - 5 * d.grpc_messages - d.frame_header_bytes,
        ));
        let frames: usize = d.frames.values().map(|f| f.0).sum();
        s.push_str(&format!(
            "  Not counted: TCP/IP headers. At {TCP_IP_HEADER_BYTES} B per segment (IPv4 + TCP with timestamps) and one \
             segment per HTTP/2 frame ({frames} frames; at 5 analysed frames/s in real time each descriptor goes alone), \
             they would add about {} B, {:.2} points of the video's share; the video's own transport headers are not \
             counted either.\n",
            frames * TCP_IP_HEADER_BYTES,
            percent_of_video(frames * TCP_IP_HEADER_BYTES, &clips[*c]),
        ));
    }
    s
}

/// IPv4 (20) + TCP with the timestamp option (32): the headers of one segment, link framing aside.
const TCP_IP_HEADER_BYTES: usize = 52;

/// The README's table: the default codec, the float codecs and the neighbours of the default,
/// strict figures only.
fn summary_table(
    clips: &[ClipData],
    rows: &[FidelityRow],
    stream: &[(usize, String, StreamStats)],
    grid: &[Codec],
    default_label: &str,
) -> String {
    let subsets: Vec<&str> = rows.iter().map(|r| r.subset.as_str()).fold(Vec::new(), |mut v, s| {
        if !v.contains(&s) {
            v.push(s);
        }
        v
    });
    let identity_subsets: Vec<&str> = subsets
        .iter()
        .copied()
        .filter(|s| rows.iter().any(|r| r.subset == *s && r.identity.reportable()))
        .collect();
    let row = |subset: &str, codec: &str| rows.iter().find(|r| r.subset == subset && r.codec == codec);
    let f32_rank1: Vec<String> = identity_subsets
        .iter()
        .map(|s| row(s, "f32").map_or("—".into(), |r| identity_cells(&r.identity).0))
        .collect();
    let mut s = format!(
        "| codec | B / vector | NN agreement, {} | ρ {} | rank-1, {} (f32: {}) | stream, % of video on the wire: {} (protobuf only) |\n\
         |---|---:|---|---|---|---|\n",
        subsets.join(" / "),
        subsets.join(" / "),
        identity_subsets.join(" / "),
        f32_rank1.join(" / "),
        clips.iter().map(|c| c.name).collect::<Vec<_>>().join(" / "),
    );
    let wanted = ["f32", "f16", "int8", "pca-int8 x64", default_label, "binary 128 bits"];
    for codec in grid.iter().map(Codec::label).filter(|l| wanted.contains(&l.as_str())) {
        let per_subset = |f: &dyn Fn(&FidelityRow) -> String, subsets: &[&str]| {
            subsets
                .iter()
                .map(|s| row(s, &codec).map_or("—".into(), f))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let bytes = row(subsets[0], &codec).map_or(0.0, |r| r.bytes_per_descriptor);
        let wire = |f: &dyn Fn(&StreamStats, &ClipData) -> f64| {
            clips
                .iter()
                .enumerate()
                .map(|(c, clip)| {
                    stream
                        .iter()
                        .find(|(sc, l, _)| *sc == c && *l == codec)
                        .map_or("—".into(), |(_, _, st)| format!("{:.2}", f(st, clip)))
                })
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let cells = [
            if codec == default_label {
                format!("{codec} (default)")
            } else {
                codec.clone()
            },
            format!("{bytes:.0}"),
            format!("{} %", per_subset(&|r| percent(r.nn.agreement), &subsets)),
            per_subset(&|r| format!("{:.3}", r.spearman), &subsets),
            format!(
                "{} %",
                per_subset(&|r| identity_cells(&r.identity).0, &identity_subsets)
            ),
            format!(
                "{} % ({} %)",
                wire(&|st, clip| percent_of_video(st.down.bytes, clip)),
                wire(&|st, clip| percent_of_video(st.bytes, clip))
            ),
        ];
        let cells: Vec<String> = if codec == default_label {
            cells.iter().map(|c| format!("**{c}**")).collect()
        } else {
            cells.to_vec()
        };
        s.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    s
}

fn finite_or_null(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

fn identity_json(id: &Identity) -> Value {
    json!({
        "queries": id.queries,
        "tracks": id.tracks,
        "subset_tracks": id.subset_tracks,
        "reportable": id.reportable(),
        "rank1": finite_or_null(id.rank1),
        "map": finite_or_null(id.map),
    })
}

/// Per track of a clip: class, detections, first and last offset, held out or not; and the
/// untracked detections.
fn tracks_json(clip: &ClipData) -> Value {
    json!({
        "untracked_detections": clip.samples.iter().filter(|s| s.track_id == 0).count(),
        "training_window_detections": clip.training.as_ref().map(Vec::len),
        "tracks": provenance(clip).iter().map(|t| json!({
            "track_id": t.track_id,
            "class": t.class_name,
            "detections": t.detections,
            "first_seconds": t.first,
            "last_seconds": t.last,
            "training_contact_iou": t.training_contact_iou,
            "held_out": t.held_out,
        })).collect::<Vec<_>>(),
    })
}

/// One line per track of a clip that trained the projection: why it is or is not held out.
fn provenance_table(clip: &ClipData) -> String {
    let mut s = String::from(
        "| track (low 24 bits) | class | embedded detections | first – last seen, s | IoU with a training detection near its start | held out |\n\
         |---|---|---:|---|---:|---|\n",
    );
    for t in provenance(clip) {
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} – {:.2} | {:.2} | {} |\n",
            t.track_id & 0xff_ffff,
            t.class_name,
            t.detections,
            t.first,
            t.last,
            t.training_contact_iou,
            if t.held_out { "yes" } else { "no" }
        ));
    }
    s
}

fn to_json(
    manifest: &Path,
    projection: &Projection,
    clips: &[ClipData],
    rows: &[FidelityRow],
    stream: &[(usize, String, StreamStats)],
    grid: &[Codec],
) -> Value {
    let family_of: HashMap<String, (&str, Option<usize>)> =
        grid.iter().map(|c| (c.label(), (c.family(), c.size))).collect();
    json!({
        "generated_by": "cargo bench --bench descriptors",
        "embedder_manifest": manifest.display().to_string(),
        "projection": {
            "id": projection.id(),
            "sha256": projection.sha256(),
            "path": projection.path().display().to_string(),
            "max_dimension": projection.max_dimension(),
            "binary_sizes": projection.binary_sizes(),
            "train_seconds": TRAIN_SECONDS,
            "train_runs": TRAIN_RUNS.iter().map(|(w, t)| json!({"max_frame_width_px": w, "score_threshold": t}))
                .collect::<Vec<_>>(),
        },
        "rules": {
            "nearest_neighbour": NN_RULE,
            "held_out": HELD_OUT_RULE,
            "identity": IDENTITY_RULE,
            "identity_min_queries": MIN_IDENTITY_QUERIES,
            "identity_min_gap_seconds": MIN_IDENTITY_GAP_SECONDS,
            "bytes_per_descriptor": "prost encoded_len of the Embedding message (codec, dimension, scale, data, \
                projection_id), mean over the subset; data_bytes_per_descriptor: the data field alone",
            "stream": STREAM_RULE,
        },
        "clips": clips.iter().map(|c| json!({
            "name": c.name,
            "path": c.path.display().to_string(),
            "file_bytes": c.file_bytes,
            "frames": c.frames,
            "duration_seconds": c.duration,
            "video_bytes_per_second": c.file_bytes as f64 / c.duration,
            "embedded_detections": c.samples.len(),
            "trained_the_projection": c.training.is_some(),
            "tracking": tracks_json(c),
            "classes": c.samples.iter().fold(BTreeMap::<&str, usize>::new(), |mut m, s| {
                *m.entry(s.class_name.as_str()).or_default() += 1;
                m
            }),
        })).collect::<Vec<_>>(),
        "fidelity": rows.iter().map(|r| json!({
            "subset": r.subset,
            "held_out": r.held_out,
            "codec": r.codec,
            "family": r.family,
            "size": r.size,
            "descriptors": r.descriptors,
            "bytes_per_descriptor": r.bytes_per_descriptor,
            "nn_agreement": r.nn.agreement,
            "nn_agreement_tie_inclusive": r.nn.tie_inclusive,
            "nn_agreement_random_tie_break": r.nn.random_tie_break,
            "nn_queries_with_ties": r.nn.queries_with_ties,
            "nn_reference_ties": r.nn.reference_ties,
            "spearman": finite_or_null(r.spearman),
            "data_bytes_per_descriptor": r.data_bytes_per_descriptor,
            "identity": identity_json(&r.identity),
            "identity_untracked_negative": identity_json(&r.identity_untracked_negative),
        })).collect::<Vec<_>>(),
        "stream": stream.iter().map(|(c, label, st)| {
            let clip = &clips[*c];
            let (family, size) = family_of.get(label).copied().unwrap_or(("?", None));
            json!({
                "clip": clip.name,
                "codec": label,
                "family": family,
                "size": size,
                "analysis_fps": STREAM_ANALYSIS_FPS,
                "descriptors": st.descriptors,
                "wire_bytes": st.down.bytes,
                "wire_bytes_per_second": st.down.bytes as f64 / clip.duration,
                "percent_of_video": percent_of_video(st.down.bytes, clip),
                "protobuf_bytes": st.bytes,
                "protobuf_bytes_per_second": st.bytes as f64 / clip.duration,
                "protobuf_percent_of_video": percent_of_video(st.bytes, clip),
                "wire_node_to_subscriber": h2_json(&st.down),
                "wire_subscriber_to_node": h2_json(&st.up),
                "up_bytes": st.up.bytes,
                "appearance_vectors": st.appearance_vectors,
                "embedding_bytes": st.embedding_bytes,
                "track_records": st.track_records,
                "events": st.events,
                "run_seconds": st.run_seconds,
            })
        }).collect::<Vec<_>>(),
    })
}

/// Draws the plot with the project's Python, or says how to once it exists.
fn plot(json_path: &Path, png_path: &Path) {
    let python = repo().join(".deps/python/bin/python");
    let script = repo().join("scripts/plot_descriptors.py");
    let command = format!(
        "{} {} {} {}",
        python.display(),
        script.display(),
        json_path.display(),
        png_path.display()
    );
    let has_matplotlib = python.is_file()
        && std::process::Command::new(&python)
            .args(["-c", "import matplotlib, numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_matplotlib {
        eprintln!(
            "plot not drawn: {} with matplotlib is missing (scripts/setup-deps.sh installs it). Then run:\n  {command}",
            python.display()
        );
        return;
    }
    let status = std::process::Command::new(&python)
        .arg(&script)
        .arg(json_path)
        .arg(png_path)
        .status()
        .unwrap_or_else(|e| panic!("running {command}: {e}"));
    assert!(status.success(), "{command} failed ({status})");
    eprintln!("plot: {}", png_path.display());
}

fn main() {
    // `cargo bench` passes `--bench`; this benchmark has no options of its own.
    let started = Instant::now();
    let (manifest, projection) = load_projection();
    let grid = codec_grid(&projection);
    let default_describe = retina_edge::config::DescribeConfig::default();
    let default_label = Codec::new(
        default_describe.codec,
        default_describe.effective_codec_dimension(),
        &projection,
    )
    .label();
    eprintln!(
        "eval-descriptors: embedder {}, projection {} (K = {}, binary {:?}); {} codecs",
        manifest.display(),
        projection.id(),
        projection.max_dimension(),
        projection.binary_sizes(),
        grid.len()
    );
    let clip_paths: Vec<(&'static str, PathBuf)> = CLIPS
        .iter()
        .map(|&(name, path)| {
            let path = repo().join(path);
            assert!(path.is_file(), "{} is missing: run `make deps`", path.display());
            (name, path)
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    eprintln!("fidelity runs (every frame, f32, every detection):");
    let mut clips: Vec<ClipData> = clip_paths
        .iter()
        .map(|(name, path)| fidelity_run(&runtime, &manifest, name, path))
        .collect();
    eprintln!("the projection's training runs (where its training detections were):");
    for clip in clips.iter_mut().filter(|c| c.name == TRAINING_CLIP) {
        clip.training = Some(training_window_detections(&runtime, &manifest, clip.name, &clip.path));
        let tracks = provenance(clip);
        eprintln!(
            "  {}: {} of {} tracks held out",
            clip.name,
            tracks.iter().filter(|t| t.held_out).count(),
            tracks.len()
        );
    }
    eprintln!("encoding and comparing ...");
    let rows = evaluate(&clips, &grid);

    eprintln!("stream runs (default emission policy, {STREAM_ANALYSIS_FPS} analysed frames/s, counted on the wire):");
    let mut stream = Vec::new();
    for (c, clip) in clips.iter().enumerate() {
        for codec in &grid {
            let stats = stream_run(&runtime, &manifest, clip, codec);
            eprintln!(
                "  {} {}: {} descriptors, {} bytes on the wire, {} protobuf ({:.1} s)",
                clip.name,
                codec.label(),
                stats.descriptors,
                stats.down.bytes,
                stats.bytes,
                stats.run_seconds
            );
            stream.push((c, codec.label(), stats));
        }
    }

    let mut report = String::new();
    report.push_str(&format!(
        "## Descriptor codecs: fidelity and bandwidth\n\n`cargo bench --bench descriptors`. Projection `{}` (sha256 {}…), learned from \
         every detection of the first {TRAIN_SECONDS} s of {TRAINING_CLIP}.\n\n",
        projection.id(),
        &projection.sha256()[..12]
    ));
    for clip in &clips {
        let tracks = provenance(clip);
        let held: Vec<&TrackProvenance> = tracks.iter().filter(|t| t.held_out).collect();
        report.push_str(&format!(
            "- {}: {} frames, {:.3} s, {} bytes ({:.0} bytes/s); {} embedded detections, {} in {} confirmed tracks; \
             held out: {} tracks, {} detections{}\n",
            clip.name,
            clip.frames,
            clip.duration,
            clip.file_bytes,
            clip.file_bytes as f64 / clip.duration,
            clip.samples.len(),
            tracks.iter().map(|t| t.detections).sum::<usize>(),
            tracks.len(),
            held.len(),
            held.iter().map(|t| t.detections).sum::<usize>(),
            if clip.training.is_some() {
                ""
            } else {
                " (another scene: all of it)"
            },
        ));
    }
    report.push_str(&format!(
        "\n### Summary (the README's table)\n\n{}\n\
         NN agreement is strict (a tie with the true neighbour is not agreement). rank-1 is reported only where there are \
         at least {MIN_IDENTITY_QUERIES} queries and 2 tracks. Stream: HTTP/2 bytes the node wrote to the subscriber's \
         connection (gRPC prefixes, frame headers, response headers and trailers, control frames), as a share of the \
         video file's bytes over the same time; in brackets the protobuf messages alone. TCP/IP headers and TLS are not counted.\n",
        summary_table(&clips, &rows, &stream, &grid, &default_label),
    ));
    for clip in clips.iter().filter(|c| c.training.is_some()) {
        report.push_str(&format!(
            "\n### Held-out objects of {}\n\n{HELD_OUT_RULE}\n\n{}",
            clip.name,
            provenance_table(clip)
        ));
    }
    report.push_str(&format!(
        "\n### Fidelity to f32 and identity retrieval (every frame analysed)\n\n{}\n\
         Bytes: the encoded `Embedding` message, in brackets its `data` alone (the rest is codec, dimension, scale \
         and, for pca-int8 and binary, projection_id: `{}` costs {} bytes in every projected vector).\n\nNearest neighbour: {NN_RULE}\n\nIdentity: {IDENTITY_RULE}\n\n\
         ### Descriptor stream with the default emission policy ({STREAM_ANALYSIS_FPS} analysed frames/s)\n\n{}\n\
         Events: confirmed/better view/appearance changed/ended. {STREAM_RULE}\n\nWhere the wire bytes of the default codec go:\n\n{}",
        fidelity_table(&rows),
        projection.id(),
        prost::Message::encoded_len(&pb::Embedding {
            projection_id: projection.id().to_string(),
            ..Default::default()
        }),
        stream_table(&clips, &stream),
        wire_breakdown(&clips, &stream, &default_label),
    ));
    println!("{report}");

    let eval_dir = repo().join("target/eval");
    let results_dir = repo().join("benches/results");
    for dir in [&eval_dir, &results_dir] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let json_path = eval_dir.join("descriptors.json");
    let json = to_json(&manifest, &projection, &clips, &rows, &stream, &grid);
    let text = serde_json::to_string_pretty(&json).expect("the report serialises");
    std::fs::write(&json_path, text).unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
    let md_path = results_dir.join("descriptors.md");
    std::fs::write(&md_path, &report).unwrap_or_else(|e| panic!("{}: {e}", md_path.display()));
    eprintln!("json: {}\ntables: {}", json_path.display(), md_path.display());
    plot(&json_path, &results_dir.join("descriptor-fidelity.png"));
    eprintln!("eval-descriptors: {:.0} s", started.elapsed().as_secs_f64());
}
