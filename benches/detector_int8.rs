//! The int8 detector against the f32 one it was quantised from (`make eval-int8`), on real frames
//! of the bundled clips, through the node's own ingest stage, pre-processing and decoder.
//!
//! Frames: each clip is decoded by the node's ingest stage (every frame, not paced, scaled to fit
//! the default 640 px box as a camera's frames are) and split by position in the clip:
//! - **calibration**: every 2nd frame of the first 40 % (`--write-calibration` writes them, as
//!   detector input tensors, for `scripts/quantize-detector.sh`);
//! - a gap of 10 % that neither uses, so that no evaluated frame is a near-copy of a calibration
//!   frame;
//! - **evaluation**: every frame of the last 50 %.
//!
//! Agreement: the f32 model's detections are the reference. Per frame, the int8 detections are
//! taken by descending score and each is matched to the unmatched f32 detection of the same class
//! with the highest IoU, if that IoU is at least 0.5. Precision = matched / int8 detections,
//! recall = matched / f32 detections, per clip and over all evaluated frames.
//!
//! Speed: both models in one process, 1 intra-op thread and spinning off (the node's defaults),
//! in `RETINA_INT8_ROUNDS` rounds (default 5) that alternate which model runs first; a round
//! runs each model once over every evaluated frame. The time of a frame is the node's own
//! detector time (`Timings::detector`, what `retina_inference_seconds` records): letterbox, the
//! session run and the GFL decode; the letterbox and decode are the same code for both models
//! and cost ~1 ms of it.
//!
//! Usage (`cargo bench --bench detector_int8 -- [options]`):
//! - no option: evaluate and write `benches/results/detector-int8.md` (the hand-written
//!   sections after the measured one, from its second `## ` heading on, are kept);
//! - `--write-calibration DIR`: write the calibration inputs (raw little-endian f32, one file a
//!   frame, listed in `DIR/frames.tsv`) and exit.
//!
//! Environment: RETINA_INT8_F32_MANIFEST (default `models/nanodet-g-416.toml`),
//! RETINA_INT8_MANIFEST (default `models/nanodet-g-416-int8.toml`), RETINA_INT8_ROUNDS (5; 0 =
//! agreement only), RETINA_INT8_REPORT (the report's path; `-` = stdout only).

#[path = "support/stats.rs"]
mod stats;

use stats::{median, spread};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use retina_edge::config::Config;
use retina_edge::infer::decode::iou;
use retina_edge::infer::manifest::Manifest;
use retina_edge::infer::preprocess::{Rect, fill_input, item_len};
use retina_edge::infer::{Analyzer, Detection, ModelFile, SessionOptions, environment};
use retina_edge::ingest::{self, CameraSettings, CameraStatus, FrameQueue, SourceUri};

const CLIPS: [&str; 2] = ["bikes.mp4", "carphone_pristine.mp4"];
/// Frames before this fraction of a clip calibrate (every `CALIBRATION_STEP`th of them).
const CALIBRATION_END: f64 = 0.4;
const CALIBRATION_STEP: usize = 2;
/// Frames from this fraction of a clip on are evaluated.
const EVALUATION_START: f64 = 0.5;
const MATCH_IOU: f32 = 0.5;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn env_path(name: &str, default: &str) -> PathBuf {
    let value = std::env::var(name).unwrap_or_else(|_| default.to_string());
    repo().join(value)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Every frame of `clip` as the node's ingest stage hands it to the analysis.
fn decode_clip(clip: &Path) -> Vec<image::RgbImage> {
    let toml = format!(
        r#"
[node]
id = "eval-int8"
[inference]
detector_manifest = "models/nanodet-g-416.toml"
[[cameras]]
id = "clip"
uri = "{}"
analysis_fps = 0
realtime = false
"#,
        clip.display()
    );
    let config = Config::parse(&toml, Path::new("eval-int8.toml"), repo().to_path_buf()).expect("config");
    let camera = &config.cameras[0];
    let source = SourceUri::resolve(&camera.uri, &config.base_dir).expect("clip uri");
    let status = Arc::new(CameraStatus::new(camera.id.clone(), CameraSettings::default()));
    let queue = FrameQueue::new(4);
    let runner = ingest::start_camera(camera, source, status, queue.clone(), ingest::Settled::default(), None)
        .expect("camera starts");
    let closer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            runner.join();
            queue.close();
        })
    };
    let mut frames = Vec::new();
    while let Some((frame, _)) = queue.pop() {
        frames.push(frame.image);
    }
    closer.join().expect("camera thread");
    assert!(
        frames.len() >= 20,
        "{}: only {} frames decoded",
        clip.display(),
        frames.len()
    );
    frames
}

fn calibration_frames(n: usize) -> impl Iterator<Item = usize> {
    (0..(n as f64 * CALIBRATION_END) as usize).step_by(CALIBRATION_STEP)
}

fn evaluation_frames(n: usize) -> std::ops::Range<usize> {
    (n as f64 * EVALUATION_START).ceil() as usize..n
}

fn clip_path(name: &str) -> PathBuf {
    let path = repo().join(".deps/media").join(name);
    assert!(path.is_file(), "{} is missing: run `make deps`", path.display());
    path
}

/// `--write-calibration DIR`: the detector inputs of the calibration frames, pre-processed by
/// the node's own `fill_input` with the f32 manifest's input spec.
fn write_calibration(dir: &Path, manifest: &Manifest) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut index = String::from("clip\tframe\tfile\n");
    let mut tensor = vec![0f32; item_len(&manifest.input)];
    for name in CLIPS {
        let frames = decode_clip(&clip_path(name));
        let mut written = 0;
        for i in calibration_frames(frames.len()) {
            let image = &frames[i];
            fill_input(image, Rect::of_image(image), &manifest.input, &mut tensor);
            let bytes: Vec<u8> = tensor.iter().flat_map(|v| v.to_le_bytes()).collect();
            let file = format!("{}-{i:05}.f32", name.trim_end_matches(".mp4"));
            std::fs::write(dir.join(&file), bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
            writeln!(index, "{name}\t{i}\t{file}").ok();
            written += 1;
        }
        eprintln!(
            "{name}: {} frames ({}x{}), {written} calibration frames from the first {:.0} %",
            frames.len(),
            frames[0].width(),
            frames[0].height(),
            CALIBRATION_END * 100.0
        );
    }
    std::fs::write(dir.join("frames.tsv"), index).expect("frames.tsv");
}

/// Matches of one frame: (int8 detections, f32 detections, matched, IoU sum of the matches), and
/// the scores of the f32 detections left unmatched then of the int8 ones left unmatched.
fn match_frame(reference: &[Detection], candidate: &[Detection]) -> ((usize, usize, usize, f64), Vec<f32>, Vec<f32>) {
    let mut order: Vec<&Detection> = candidate.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut taken = vec![false; reference.len()];
    let (mut matched, mut iou_sum) = (0, 0.0);
    let mut unmatched_int8 = Vec::new();
    for d in order {
        let best = reference
            .iter()
            .enumerate()
            .filter(|(j, r)| !taken[*j] && r.class_id == d.class_id)
            .map(|(j, r)| (j, iou(&r.bbox, &d.bbox)))
            .filter(|&(_, v)| v >= MATCH_IOU)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((j, v)) = best {
            taken[j] = true;
            matched += 1;
            iou_sum += f64::from(v);
        } else {
            unmatched_int8.push(d.score);
        }
    }
    let unmatched_f32 = reference
        .iter()
        .zip(&taken)
        .filter(|(_, t)| !**t)
        .map(|(r, _)| r.score)
        .collect();
    (
        (candidate.len(), reference.len(), matched, iou_sum),
        unmatched_f32,
        unmatched_int8,
    )
}

#[derive(Default, Clone, Copy)]
struct Agreement {
    frames: usize,
    int8: usize,
    f32: usize,
    matched: usize,
    iou_sum: f64,
}

impl Agreement {
    fn add(&mut self, other: &Agreement) {
        self.frames += other.frames;
        self.int8 += other.int8;
        self.f32 += other.f32;
        self.matched += other.matched;
        self.iou_sum += other.iou_sum;
    }
    fn precision(&self) -> f64 {
        self.matched as f64 / self.int8.max(1) as f64
    }
    fn recall(&self) -> f64 {
        self.matched as f64 / self.f32.max(1) as f64
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// The detector time of every frame, in ms.
fn time_frames(analyzer: &mut Analyzer, frames: &[&image::RgbImage]) -> Vec<f64> {
    frames
        .iter()
        .map(|image| {
            let (_, timings) = analyzer.analyze(image).expect("detector runs");
            timings.detector.as_secs_f64() * 1e3
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let f32_manifest_path = env_path("RETINA_INT8_F32_MANIFEST", "models/nanodet-g-416.toml");
    let f32_manifest = Manifest::load(&f32_manifest_path).expect("f32 manifest");
    if let Some(i) = args.iter().position(|a| a == "--write-calibration") {
        let dir = args.get(i + 1).expect("--write-calibration DIR");
        gstreamer::init().expect("GStreamer initialises");
        write_calibration(Path::new(dir), &f32_manifest);
        return;
    }

    let started = Instant::now();
    let int8_manifest_path = env_path("RETINA_INT8_MANIFEST", "models/nanodet-g-416-int8.toml");
    let rounds = env_usize("RETINA_INT8_ROUNDS", 5);
    let options = SessionOptions {
        intra_op_threads: 1,
        allow_spinning: false,
        memory_arena: false,
    };
    let env = environment(&repo().join(".deps/onnxruntime/libonnxruntime.so.1.32.0")).expect("ONNX Runtime");
    // ModelFile::load runs the node's check of the model against its manifest.
    let f32_model = ModelFile::load(f32_manifest, env, options).expect("f32 model");
    let int8_model = ModelFile::load(
        Manifest::load(&int8_manifest_path).expect("int8 manifest"),
        env,
        options,
    )
    .expect("int8 model");
    let analyzer = |model: &ModelFile| {
        let mut a = Analyzer::new(env, model, None, &[], None, 0.0, options).expect("analyzer");
        a.warm_up().expect("warm-up");
        a
    };
    let mut f32_analyzer = analyzer(&f32_model);
    let mut int8_analyzer = analyzer(&int8_model);

    gstreamer::init().expect("GStreamer initialises");
    let mut clips = Vec::new();
    for name in CLIPS {
        let frames = decode_clip(&clip_path(name));
        let total = frames.len();
        let range = evaluation_frames(total);
        let (w, h) = (frames[0].width(), frames[0].height());
        let evaluated: Vec<image::RgbImage> = frames.into_iter().skip(range.start).collect();
        eprintln!(
            "{name}: {total} frames ({w}x{h}), evaluating frames {}..{}",
            range.start, range.end
        );
        clips.push((name, total, range, (w, h), evaluated));
    }

    // Agreement, on every evaluated frame.
    let mut per_clip = Vec::new();
    let mut score_deltas = Vec::new();
    let (mut missed, mut extra) = (Vec::new(), Vec::new());
    for (name, _, _, _, frames) in &clips {
        let mut a = Agreement::default();
        for image in frames {
            let (reference, _) = f32_analyzer.analyze(image).expect("f32 detector");
            let (candidate, _) = int8_analyzer.analyze(image).expect("int8 detector");
            let ((n8, n32, m, s), unmatched_f32, unmatched_int8) = match_frame(&reference, &candidate);
            missed.extend(unmatched_f32);
            extra.extend(unmatched_int8);
            a.add(&Agreement {
                frames: 1,
                int8: n8,
                f32: n32,
                matched: m,
                iou_sum: s,
            });
            // Score shift of each f32 detection's best same-class int8 match, for the report.
            for r in &reference {
                if let Some(c) = candidate
                    .iter()
                    .filter(|c| c.class_id == r.class_id && iou(&c.bbox, &r.bbox) >= MATCH_IOU)
                    .max_by(|x, y| iou(&x.bbox, &r.bbox).total_cmp(&iou(&y.bbox, &r.bbox)))
                {
                    score_deltas.push(f64::from((c.score - r.score).abs()));
                }
            }
        }
        eprintln!(
            "  {name}: {} frames, f32 {} / int8 {} detections, matched {}: precision {:.3}, recall {:.3}",
            a.frames,
            a.f32,
            a.int8,
            a.matched,
            a.precision(),
            a.recall()
        );
        per_clip.push((*name, a));
    }
    let mut overall = Agreement::default();
    for (_, a) in &per_clip {
        overall.add(a);
    }

    // Speed, alternating rounds.
    let all_frames: Vec<&image::RgbImage> = clips.iter().flat_map(|c| c.4.iter()).collect();
    let (mut f32_medians, mut int8_medians, mut ratios, mut loads) = (vec![], vec![], vec![], vec![]);
    let (mut f32_all, mut int8_all) = (vec![], vec![]);
    for round in 0..rounds {
        loads.push(load_average());
        let (mut t32, mut t8) = (vec![], vec![]);
        for f32_turn in [round % 2 == 0, round % 2 == 1] {
            if f32_turn {
                t32 = time_frames(&mut f32_analyzer, &all_frames);
            } else {
                t8 = time_frames(&mut int8_analyzer, &all_frames);
            }
        }
        let (m32, m8) = (median(&t32), median(&t8));
        eprintln!(
            "round {}/{rounds}: f32 {m32:.1} ms, int8 {m8:.1} ms per frame (median), {:.2}x",
            round + 1,
            m32 / m8
        );
        f32_medians.push(m32);
        int8_medians.push(m8);
        ratios.push(m32 / m8);
        f32_all.extend(t32);
        int8_all.extend(t8);
    }

    let seconds = started.elapsed().as_secs_f64();
    let file_facts = |model: &ModelFile| {
        let path = model.manifest.model_path();
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        (
            path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
            size,
            model.card.sha256.clone(),
        )
    };
    let (f32_file, f32_size, f32_sha) = file_facts(&f32_model);
    let (int8_file, int8_size, int8_sha) = file_facts(&int8_model);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = String::new();
    writeln!(
        report,
        "## Int8 detector against f32\n\n`make eval-int8` (`cargo bench --bench detector_int8`; {cores} cores, 1 intra-op \
         thread per session, spinning off; {seconds:.0} s in all). Models: `{f32_file}` ({} v{}, {f32_size} B, sha256 \
         `{f32_sha}`) and `{int8_file}` ({} v{}, {int8_size} B, sha256 `{int8_sha}`).\n",
        f32_model.card.id, f32_model.card.version, int8_model.card.id, int8_model.card.version
    )
    .ok();
    writeln!(
        report,
        "Frames: each clip decoded by the node's ingest stage (every frame, scaled to fit 640x640). The first {:.0} % \
         of each clip calibrated the int8 model (every {CALIBRATION_STEP}nd frame); the next {:.0} % is a gap; only \
         the last {:.0} % is evaluated here. Detections: the node's pre-processing and GFL decoder, the manifest's \
         score threshold and NMS. Agreement: f32 detections are the reference; int8 detections, by descending score, \
         each matched to the unmatched f32 detection of the same class with the highest IoU ≥ {MATCH_IOU}.\n",
        CALIBRATION_END * 100.0,
        (EVALUATION_START - CALIBRATION_END) * 100.0,
        (1.0 - EVALUATION_START) * 100.0
    )
    .ok();
    report.push_str(
        "| clip | size | evaluated frames | f32 detections | int8 detections | matched | precision | recall | mean IoU of matches |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((name, a), clip) in per_clip.iter().zip(&clips) {
        writeln!(
            report,
            "| {name} (frames {}–{} of {}) | {}x{} | {} | {} | {} | {} | {:.1} % | {:.1} % | {:.3} |",
            clip.2.start,
            clip.2.end - 1,
            clip.1,
            clip.3.0,
            clip.3.1,
            a.frames,
            a.f32,
            a.int8,
            a.matched,
            100.0 * a.precision(),
            100.0 * a.recall(),
            a.iou_sum / a.matched.max(1) as f64
        )
        .ok();
    }
    writeln!(
        report,
        "| **all** | | {} | {} | {} | {} | **{:.1} %** | **{:.1} %** | {:.3} |\n",
        overall.frames,
        overall.f32,
        overall.int8,
        overall.matched,
        100.0 * overall.precision(),
        100.0 * overall.recall(),
        overall.iou_sum / overall.matched.max(1) as f64
    )
    .ok();
    writeln!(
        report,
        "Score of an f32 detection against its int8 match (same class, best IoU ≥ {MATCH_IOU}): median |difference| \
         {:.3}, 90th percentile {:.3} ({} pairs).\n",
        median(&score_deltas),
        {
            let mut d = score_deltas.clone();
            d.sort_by(f64::total_cmp);
            d.get((d.len() * 9) / 10).copied().unwrap_or(f64::NAN)
        },
        score_deltas.len()
    )
    .ok();
    let threshold = match &f32_model.manifest.decoder {
        retina_edge::infer::manifest::DecoderSpec::Detector { selection, .. } => selection.score_threshold,
        retina_edge::infer::manifest::DecoderSpec::Embedding { .. } => f32::NAN,
    };
    let near = |scores: &[f32]| scores.iter().filter(|&&s| s < threshold + 0.05).count();
    writeln!(
        report,
        "Unmatched detections by their score (threshold {threshold}): of the {} f32 detections int8 missed, {} \
         scored below {:.2} in f32; of the {} int8 detections without an f32 match, {} scored below {:.2}.\n",
        missed.len(),
        near(&missed),
        threshold + 0.05,
        extra.len(),
        near(&extra),
        threshold + 0.05
    )
    .ok();
    if rounds > 0 {
        writeln!(
            report,
            "Detector time per frame ({} frames a round, {rounds} rounds alternating which model runs first; the node's \
             `Timings::detector`: letterbox + session run + GFL decode), ms:\n\n\
             | model | median of the round medians (min–max) | all frames: median (5th–95th percentile) |\n\
             |---|---|---|\n\
             | f32 | {} | {} |\n\
             | int8 | {} | {} |\n\
             | **speed-up** (per round: f32 / int8) | **{}** | |\n\n\
             Load average (1 min) at the start of each round: {}.\n",
            all_frames.len(),
            spread(&f32_medians, 1),
            percentiles(&f32_all),
            spread(&int8_medians, 1),
            percentiles(&int8_all),
            spread(&ratios, 2),
            loads.join(", ")
        )
        .ok();
    }
    println!("\n{report}");
    let target = std::env::var("RETINA_INT8_REPORT").unwrap_or_else(|_| "benches/results/detector-int8.md".into());
    if target != "-" {
        let path = repo().join(target);
        // The hand-written sections after the measured one (the options compared, the README
        // text) outlive a re-run.
        let kept = std::fs::read_to_string(&path)
            .ok()
            .and_then(|old| old.find("\n## ").map(|at| old[at..].to_string()))
            .unwrap_or_default();
        std::fs::write(&path, format!("{report}{kept}")).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("report: {}", path.display());
    }
}

/// "median (5th–95th percentile)" of `values`, 1 decimal.
fn percentiles(values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    format!("{:.1} ({:.1}–{:.1})", median(&v), at(0.05), at(0.95))
}
