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
use retina_edge::describe::emit::event_kind_label;
use retina_edge::describe::projection::Projection;
use retina_edge::infer::manifest::Manifest;
use retina_edge::pb::{self, EmbeddingCodec, TrackEventKind};
use serde_json::{Value, json};

/// The clips of the issue, as (name, path in the repository).
const CLIPS: [(&str, &str); 2] = [
    ("bikes", ".deps/media/bikes.mp4"),
    ("carphone", ".deps/media/carphone_pristine.mp4"),
];
/// The projection is learned from bikes detections captured before this offset
/// (`scripts/learn-projection.sh`); later ones are held out.
const TRAIN_SECONDS: f64 = 5.0;
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

const NN_TIE_RULE: &str = "Each descriptor is a query against every other descriptor of its subset. The f32 nearest \
     neighbour is the most similar one, ties (counted in `nn_queries_with_ties`; f32 has none) broken by the \
     lowest index (capture order, then detection order). A codec agrees when that descriptor is among its most similar ones, tied included: binary \
     codes have few distinct Hamming distances and often tie. `nn_agreement_strict` instead breaks the codec's \
     ties by lowest index too, as a deterministic search would.";
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
     filters, full_context = false, include_empty_frames = false, from the earliest buffered descriptor. Bytes: \
     prost encoded_len of each FrameDescriptor received (gRPC's 5-byte message prefix and HTTP/2 framing \
     excluded), over the clip's duration.";

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
         {describe}\n\
         [deliver]\n\
         # Everything the run produces stays replayable, so a subscriber starting from the buffer\n\
         # after the node started misses nothing, and no subscriber buffer ever overflows.\n\
         replay_frames = 100000\nsubscriber_buffer_frames = 100000\n",
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
}

fn nanos(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

fn capture_nanos(d: &pb::FrameDescriptor) -> i128 {
    nanos(d.capture_time.as_ref().expect("every descriptor has a capture time"))
}

/// Runs the node over every frame of `clip` with f32 embeddings and every detection sent.
fn fidelity_run(runtime: &tokio::runtime::Runtime, manifest: &Path, name: &'static str, clip: &Path) -> ClipData {
    let describe = "[describe]\ncodec = \"f32\"\nsend_detections = true\n";
    let config = common::parse_config(&node_config(manifest, name, clip, 0.0, describe));
    let started = Instant::now();
    let descriptors = runtime.block_on(async {
        let (node, mut client) = common::start_node(config).await;
        let descriptors = common::collect_until_end(&mut client).await;
        node.wait().await.expect("node stops cleanly");
        descriptors
    });
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
    }
}

/// What a central subscriber received from one run with the default emission policy.
#[derive(Default)]
struct StreamStats {
    descriptors: usize,
    bytes: usize,
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
    let descriptors = runtime.block_on(async {
        let (node, mut client) = common::start_node(config).await;
        let descriptors = subscribe_until_end(&mut client).await;
        node.wait().await.expect("node stops cleanly");
        descriptors
    });
    let mut stats = StreamStats {
        run_seconds: started.elapsed().as_secs_f64(),
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
    agreement: f64,
    strict: f64,
    /// Queries whose nearest neighbour under the codec is not unique.
    queries_with_ties: usize,
}

fn nn_agreement(reference: &[f32], code: &[f32], n: usize, members: &[usize]) -> NnStats {
    let (mut agree, mut strict, mut tied) = (0usize, 0usize, 0usize);
    for &q in members {
        // `nearest` lists members in ascending order: the first is the lowest-index tie-break.
        let want = nearest(reference, n, members, q)[0];
        let got = nearest(code, n, members, q);
        agree += usize::from(got.contains(&want));
        strict += usize::from(got[0] == want);
        tied += usize::from(got.len() > 1);
    }
    let queries = members.len().max(1) as f64;
    NnStats {
        agreement: agree as f64 / queries,
        strict: strict as f64 / queries,
        queries_with_ties: tied,
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

fn subsets(clips: &[ClipData]) -> Vec<Subset<'_>> {
    let all = |clip: &ClipData| (0..clip.samples.len()).collect::<Vec<_>>();
    let mut out = Vec::new();
    for clip in clips {
        out.push(Subset {
            name: clip.name.to_string(),
            clip,
            members: all(clip),
        });
        if clip.name == "bikes" {
            out.push(Subset {
                name: format!("bikes t>={TRAIN_SECONDS}s"),
                clip,
                members: all(clip)
                    .into_iter()
                    .filter(|&i| clip.samples[i].offset >= TRAIN_SECONDS)
                    .collect(),
            });
        }
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
         | rank-1 / mAP %, untracked as non-matches |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (rank1, map) = identity_cells(&r.identity);
        let (rank1_neg, map_neg) = identity_cells(&r.identity_untracked_negative);
        s.push_str(&format!(
            "| {} | {} | {:.1} ({:.0}) | {} | {:.3} | {rank1} | {map} | {} ({}) | {rank1_neg} / {map_neg} |\n",
            r.subset,
            r.codec,
            r.bytes_per_descriptor,
            r.data_bytes_per_descriptor,
            percent(r.nn.agreement),
            r.spearman,
            r.identity.queries,
            r.identity.tracks,
        ));
    }
    s
}

fn stream_table(clips: &[ClipData], stream: &[(usize, String, StreamStats)]) -> String {
    let mut s = String::from(
        "| clip | codec | descriptors | events C/B/A/E | vectors | vector bytes | stream bytes | bytes/s | % of video |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (c, label, st) in stream {
        let clip = &clips[*c];
        let per_s = st.bytes as f64 / clip.duration;
        let video = clip.file_bytes as f64 / clip.duration;
        let e = |k: &str| st.events.get(k).copied().unwrap_or(0);
        s.push_str(&format!(
            "| {} | {label} | {} | {}/{}/{}/{} | {} | {} | {} | {per_s:.0} | {:.2} |\n",
            clip.name,
            st.descriptors,
            e("confirmed"),
            e("better_view"),
            e("appearance_changed"),
            e("ended"),
            st.appearance_vectors,
            st.embedding_bytes,
            st.bytes,
            100.0 * per_s / video,
        ));
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

/// Per track of a clip: class, detections, first and last offset; and the untracked detections.
fn tracks_json(clip: &ClipData) -> Value {
    let mut tracks: BTreeMap<u64, (String, usize, f64, f64)> = BTreeMap::new();
    for s in clip.samples.iter().filter(|s| s.track_id != 0) {
        let entry = tracks
            .entry(s.track_id)
            .or_insert((s.class_name.clone(), 0, s.offset, s.offset));
        entry.1 += 1;
        entry.3 = s.offset;
    }
    json!({
        "untracked_detections": clip.samples.iter().filter(|s| s.track_id == 0).count(),
        "tracks": tracks.iter().map(|(id, (class, detections, first, last))| json!({
            "track_id": id,
            "class": class,
            "detections": detections,
            "first_seconds": first,
            "last_seconds": last,
        })).collect::<Vec<_>>(),
    })
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
        },
        "rules": {
            "nearest_neighbour": NN_TIE_RULE,
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
            "tracking": tracks_json(c),
            "classes": c.samples.iter().fold(BTreeMap::<&str, usize>::new(), |mut m, s| {
                *m.entry(s.class_name.as_str()).or_default() += 1;
                m
            }),
        })).collect::<Vec<_>>(),
        "fidelity": rows.iter().map(|r| json!({
            "subset": r.subset,
            "codec": r.codec,
            "family": r.family,
            "size": r.size,
            "descriptors": r.descriptors,
            "bytes_per_descriptor": r.bytes_per_descriptor,
            "nn_agreement": r.nn.agreement,
            "nn_agreement_strict": r.nn.strict,
            "nn_queries_with_ties": r.nn.queries_with_ties,
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
                "bytes": st.bytes,
                "bytes_per_second": st.bytes as f64 / clip.duration,
                "percent_of_video": 100.0 * st.bytes as f64 / clip.file_bytes as f64,
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
    let clips: Vec<ClipData> = clip_paths
        .iter()
        .map(|(name, path)| fidelity_run(&runtime, &manifest, name, path))
        .collect();
    eprintln!("encoding and comparing ...");
    let rows = evaluate(&clips, &grid);

    eprintln!("stream runs (default emission policy, {STREAM_ANALYSIS_FPS} analysed frames/s):");
    let mut stream = Vec::new();
    for (c, clip) in clips.iter().enumerate() {
        for codec in &grid {
            let stats = stream_run(&runtime, &manifest, clip, codec);
            eprintln!(
                "  {} {}: {} descriptors, {} bytes ({:.1} s)",
                clip.name,
                codec.label(),
                stats.descriptors,
                stats.bytes,
                stats.run_seconds
            );
            stream.push((c, codec.label(), stats));
        }
    }

    let mut report = String::new();
    report.push_str(&format!(
        "## Descriptor codecs: fidelity and bandwidth\n\n`cargo bench --bench descriptors`. Projection `{}` (sha256 {}…), learned from bikes \
         detections before {TRAIN_SECONDS} s.\n\n",
        projection.id(),
        &projection.sha256()[..12]
    ));
    for clip in &clips {
        report.push_str(&format!(
            "- {}: {} frames, {:.3} s, {} bytes ({:.0} bytes/s); {} embedded detections\n",
            clip.name,
            clip.frames,
            clip.duration,
            clip.file_bytes,
            clip.file_bytes as f64 / clip.duration,
            clip.samples.len()
        ));
    }
    report.push_str(&format!(
        "\n### Fidelity to f32 and identity retrieval (every frame analysed)\n\n{}\n\
         Bytes: the encoded `Embedding` message, in brackets its `data` alone (the rest is codec, dimension, scale \
         and, for pca-int8 and binary, projection_id: `{}` costs {} bytes in every projected vector).\n\nNN ties: {NN_TIE_RULE}\n\nIdentity: {IDENTITY_RULE}\n\n\
         ### Descriptor stream with the default emission policy ({STREAM_ANALYSIS_FPS} analysed frames/s)\n\n{}\n\
         Events: confirmed/better view/appearance changed/ended. {STREAM_RULE}\n",
        fidelity_table(&rows),
        projection.id(),
        prost::Message::encoded_len(&pb::Embedding {
            projection_id: projection.id().to_string(),
            ..Default::default()
        }),
        stream_table(&clips, &stream)
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
