//! The shadow run: before a new model set replaces the running one, both analyse the same live
//! frames for a while, and the node measures how far they agree. The running set goes on
//! analysing every frame as before; the frames it analysed are passed to the new set (on the
//! switching thread, as fast as it keeps up), with what the running set found in them. Detections
//! agree when they name the same class and overlap (IoU 0.5); appearance vectors agree when each
//! object's nearest other object is the same one under both embedders (what re-identification
//! at the centre relies on); and the new set's time per frame is compared with the running one's.

use std::time::{Duration, Instant};

use super::analyzer::{Analyzer, Detection};
use super::self_test::{Found, RecentFrames, median};
use crate::config::ShadowConfig;
use crate::error::{Error, Result};

/// Two detections of the same class are the same object when they overlap at least this much.
const MATCH_IOU: f32 = 0.5;
/// Fewer matched objects with appearance vectors than this say nothing about ranks.
const MIN_RANK_OBJECTS: usize = 3;
/// Ranks are compared over at most this many objects (quadratic in their number).
const MAX_RANK_OBJECTS: usize = 300;

/// What the shadow run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShadowReport {
    pub frames: usize,
    pub cameras: usize,
    pub objects_running: usize,
    pub objects_new: usize,
    /// Objects both found: same class name, IoU at least 0.5, each matched once.
    pub matched: usize,
    /// `2 * matched / (objects_running + objects_new)`; 1 when neither found anything.
    pub detection_agreement: f64,
    /// Matched objects with an appearance vector from both sets.
    pub rank_objects: usize,
    /// Share of those whose nearest other object is the same under both embedders; `None` with
    /// fewer than 3.
    pub rank_agreement: Option<f64>,
    pub median_latency_running: Duration,
    pub median_latency_new: Duration,
}

impl ShadowReport {
    /// The new set's median time per frame over the running set's.
    pub fn latency_ratio(&self) -> f64 {
        self.median_latency_new.as_secs_f64() / self.median_latency_running.as_secs_f64().max(1e-6)
    }
}

impl std::fmt::Display for ShadowReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shadow run on {} live frames of {} cameras: detections agree {:.2} ({} matched of {} and {}), ",
            self.frames, self.cameras, self.detection_agreement, self.matched, self.objects_running, self.objects_new
        )?;
        match self.rank_agreement {
            Some(agreement) => write!(
                f,
                "appearance ranks agree {agreement:.2} over {} objects",
                self.rank_objects
            )?,
            None => write!(f, "appearance ranks not compared ({} objects)", self.rank_objects)?,
        }
        write!(
            f,
            ", {:.2}x the running set's time per frame ({:.1} ms against {:.1} ms)",
            self.latency_ratio(),
            self.median_latency_new.as_secs_f64() * 1e3,
            self.median_latency_running.as_secs_f64() * 1e3
        )
    }
}

/// Stops passing frames on however the run ends.
struct Untap<'a>(&'a RecentFrames);

impl Drop for Untap<'_> {
    fn drop(&mut self) {
        self.0.untap();
    }
}

/// Runs `analyzer` (the new set) on the next `limits.frames` frames the workers analyse, and
/// refuses the set, with the figures, when it agrees less than `limits` ask, is slower than it
/// allows, fails on a frame, or when that many frames do not come within `limits.timeout_seconds`.
pub fn shadow_run(
    analyzer: &mut Analyzer,
    new_class_names: &[String],
    recent: &RecentFrames,
    limits: &ShadowConfig,
) -> Result<ShadowReport> {
    let refuse = |message: String| Error::SelfTest(message);
    let feed = recent.tap();
    let _untap = Untap(recent);
    let deadline = Instant::now() + Duration::from_secs_f64(limits.timeout_seconds);
    let mut report = ShadowReport::default();
    let (mut latencies_running, mut latencies_new) = (Vec::new(), Vec::new());
    let mut cameras = Vec::new();
    let mut pairs = Vec::new();
    analyzer.set_strict(true);
    while report.frames < limits.frames {
        let Ok(sample) = feed.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            return Err(refuse(format!(
                "the shadow run saw {} of {} frames in {} s: too few cameras deliver frames",
                report.frames, limits.frames, limits.timeout_seconds
            )));
        };
        let (detections, timings) = analyzer.analyze(&sample.image).map_err(|e| {
            refuse(format!(
                "in the shadow run, on a frame of camera {}: {e}",
                sample.camera
            ))
        })?;
        latencies_new.push(timings.models());
        latencies_running.push(sample.latency);
        if !cameras.contains(&sample.camera) {
            cameras.push(sample.camera.clone());
        }
        report.frames += 1;
        report.objects_running += sample.found.len();
        report.objects_new += detections.len();
        let matches = match_objects(&sample.found, &detections, new_class_names);
        report.matched += matches.len();
        for (running, new) in matches {
            if let (Some(a), Some(b)) = (&sample.found[running].embedding, &detections[new].embedding)
                && pairs.len() < MAX_RANK_OBJECTS
            {
                pairs.push((a.clone(), b.clone()));
            }
        }
    }
    analyzer.set_strict(false);
    report.cameras = cameras.len();
    let objects = report.objects_running + report.objects_new;
    report.detection_agreement = if objects == 0 {
        1.0
    } else {
        2.0 * report.matched as f64 / objects as f64
    };
    report.rank_objects = pairs.len();
    report.rank_agreement = rank_agreement(&pairs);
    report.median_latency_running = median(&mut latencies_running);
    report.median_latency_new = median(&mut latencies_new);
    if objects >= limits.min_objects && report.detection_agreement < limits.min_detection_agreement {
        return Err(refuse(format!(
            "{report}: detections agree less than {}",
            limits.min_detection_agreement
        )));
    }
    if let Some(agreement) = report.rank_agreement
        && agreement < limits.min_rank_agreement
    {
        return Err(refuse(format!(
            "{report}: appearance ranks agree less than {}",
            limits.min_rank_agreement
        )));
    }
    if report.latency_ratio() > limits.max_latency_ratio {
        return Err(refuse(format!(
            "{report}: slower than {}x the running set",
            limits.max_latency_ratio
        )));
    }
    Ok(report)
}

/// Pairs of (running, new) indices of the same objects: same class name, IoU at least
/// [`MATCH_IOU`], the best overlaps first, each object in one pair at most.
fn match_objects(running: &[Found], new: &[Detection], new_class_names: &[String]) -> Vec<(usize, usize)> {
    let mut candidates = Vec::new();
    for (i, a) in running.iter().enumerate() {
        for (j, b) in new.iter().enumerate() {
            let same_class = new_class_names.get(b.class_id as usize) == Some(&a.class_name);
            let overlap = iou(a.bbox, b.bbox);
            if same_class && overlap >= MATCH_IOU {
                candidates.push((overlap, i, j));
            }
        }
    }
    candidates.sort_by(|x, y| y.0.total_cmp(&x.0));
    let (mut taken_running, mut taken_new) = (vec![false; running.len()], vec![false; new.len()]);
    let mut pairs = Vec::new();
    for (_, i, j) in candidates {
        if !taken_running[i] && !taken_new[j] {
            taken_running[i] = true;
            taken_new[j] = true;
            pairs.push((i, j));
        }
    }
    pairs
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let inter = area([a[0].max(b[0]), a[1].max(b[1]), a[2].min(b[2]), a[3].min(b[3])]);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Share of objects whose nearest other object (cosine) is the same under both embedders.
fn rank_agreement(pairs: &[(Vec<f32>, Vec<f32>)]) -> Option<f64> {
    if pairs.len() < MIN_RANK_OBJECTS {
        return None;
    }
    let unit = |v: &Vec<f32>| {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        v.iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let running: Vec<Vec<f32>> = pairs.iter().map(|(a, _)| unit(a)).collect();
    let new: Vec<Vec<f32>> = pairs.iter().map(|(_, b)| unit(b)).collect();
    let nearest = |vectors: &[Vec<f32>], i: usize| {
        (0..vectors.len())
            .filter(|&j| j != i)
            .map(|j| {
                let dot: f32 = vectors[i].iter().zip(&vectors[j]).map(|(x, y)| x * y).sum();
                (dot, j)
            })
            .max_by(|x, y| x.0.total_cmp(&y.0))
            .map(|(_, j)| j)
    };
    let same = (0..pairs.len())
        .filter(|&i| nearest(&running, i) == nearest(&new, i))
        .count();
    Some(same as f64 / pairs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(class_name: &str, bbox: [f32; 4]) -> Found {
        Found {
            class_name: class_name.into(),
            bbox,
            embedding: None,
        }
    }

    fn detection(class_id: u32, bbox: [f32; 4]) -> Detection {
        Detection {
            class_id,
            score: 0.9,
            bbox,
            embedding: None,
            sharpness: 0.0,
        }
    }

    /// Objects match by class name (ids differ between detectors) and overlap, each once, the
    /// best overlap first.
    #[test]
    fn objects_match_by_class_name_and_overlap() {
        let new_names = ["background".to_string(), "person".into(), "car".into()];
        let running = [
            found("car", [0.0, 0.0, 10.0, 10.0]),
            found("person", [20.0, 0.0, 30.0, 10.0]),
            found("car", [1.0, 0.0, 11.0, 10.0]),
        ];
        let new = [
            detection(2, [1.0, 0.0, 11.0, 10.0]),    // the third, exactly
            detection(1, [0.0, 0.0, 10.0, 10.0]),    // a person where the running set saw a car
            detection(1, [22.0, 0.0, 32.0, 10.0]),   // the person, IoU 8/12
            detection(2, [100.0, 0.0, 110.0, 10.0]), // nothing there before
        ];
        let mut pairs = match_objects(&running, &new, &new_names);
        pairs.sort_unstable();
        assert_eq!(pairs, vec![(1, 2), (2, 0)]);
    }

    /// The same neighbourhoods under a rotated embedding agree fully; a scrambled one does not.
    #[test]
    fn ranks_agree_when_each_object_keeps_its_nearest_neighbour() {
        let running = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]];
        let rotate = |v: &[f32; 2]| vec![-v[1], v[0]];
        let same: Vec<_> = running.iter().map(|v| (v.to_vec(), rotate(v))).collect();
        assert_eq!(rank_agreement(&same), Some(1.0));
        let scrambled: Vec<_> = running
            .iter()
            .zip([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
            .map(|(a, b)| (a.to_vec(), b.to_vec()))
            .collect();
        assert_eq!(rank_agreement(&scrambled), Some(0.0));
        assert_eq!(rank_agreement(&same[..2]), None, "too few to rank");
    }
}
