//! Output decoders: raw model outputs to detections. Which decoder runs, and with which numbers,
//! is the manifest's choice; nothing here knows a particular model.

use super::manifest::{DecoderSpec, Manifest};

/// A detection in model-input pixels, before mapping back to the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawDetection {
    pub class_id: u32,
    pub score: f32,
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
}

/// NanoDet's GFL head. Per level (stride s, grid `ceil(w/s) x ceil(h/s)`, cell `y * grid_w + x`):
/// class scores with sigmoid already applied, and for each side (left, top, right, bottom, in
/// that order, side-major) a distribution over `reg_max + 1` distance bins whose expectation,
/// times s, is the distance from the cell centre to that side.
#[derive(Debug, Clone)]
pub struct NanodetGfl {
    /// Per level, the names of its (scores, box distributions) outputs.
    pub outputs: Vec<(String, String)>,
    pub strides: Vec<u32>,
    pub reg_max: usize,
    pub num_classes: usize,
    pub input_width: u32,
    pub input_height: u32,
    pub score_threshold: f32,
    pub nms_iou_threshold: f32,
    pub max_detections: usize,
}

impl NanodetGfl {
    /// The decoder a manifest describes; `None` if its decoder is another kind.
    pub fn from_manifest(manifest: &Manifest) -> Option<NanodetGfl> {
        let DecoderSpec::NanodetGfl {
            strides,
            reg_max,
            score_outputs,
            box_outputs,
            score_threshold,
            nms_iou_threshold,
            max_detections,
            class_names,
        } = &manifest.decoder
        else {
            return None;
        };
        Some(NanodetGfl {
            outputs: score_outputs.iter().cloned().zip(box_outputs.iter().cloned()).collect(),
            strides: strides.clone(),
            reg_max: *reg_max,
            num_classes: class_names.len(),
            input_width: manifest.input.width,
            input_height: manifest.input.height,
            score_threshold: *score_threshold,
            nms_iou_threshold: *nms_iou_threshold,
            max_detections: *max_detections,
        })
    }

    /// `levels[i]` = (scores, box distributions) of stride `strides[i]`, flattened row-major.
    /// Returns detections sorted by score, highest first.
    pub fn decode(&self, levels: &[(&[f32], &[f32])]) -> Vec<RawDetection> {
        let bins = self.reg_max + 1;
        let mut candidates = Vec::new();
        for (&stride, &(scores, boxes)) in self.strides.iter().zip(levels) {
            let grid_w = self.input_width.div_ceil(stride) as usize;
            let cells = grid_w * self.input_height.div_ceil(stride) as usize;
            // A malformed output is cut to what both tensors hold rather than indexed past.
            let cells = cells.min(scores.len() / self.num_classes).min(boxes.len() / (4 * bins));
            for cell in 0..cells {
                let class_scores = &scores[cell * self.num_classes..][..self.num_classes];
                let (class_id, score) =
                    class_scores
                        .iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |best, (i, &s)| {
                                if s > best.1 { (i, s) } else { best }
                            },
                        );
                // Most cells are background: skip the softmax for them (NaN scores too).
                if score.is_nan() || score < self.score_threshold {
                    continue;
                }
                let s = stride as f32;
                let cx = ((cell % grid_w) as f32 + 0.5) * s;
                let cy = ((cell / grid_w) as f32 + 0.5) * s;
                let dist = &boxes[cell * 4 * bins..][..4 * bins];
                let side = |k: usize| expected_bin(&dist[k * bins..][..bins]) * s;
                candidates.push(RawDetection {
                    class_id: class_id as u32,
                    score,
                    bbox: [cx - side(0), cy - side(1), cx + side(2), cy + side(3)],
                });
            }
        }
        nms_per_class(candidates, self.nms_iou_threshold, self.max_detections)
    }
}

/// Expectation of the bin index under the softmax of `logits`.
fn expected_bin(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut weighted) = (0.0f32, 0.0f32);
    for (i, &l) in logits.iter().enumerate() {
        let e = (l - max).exp();
        sum += e;
        weighted += e * i as f32;
    }
    if sum > 0.0 { weighted / sum } else { 0.0 }
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Greedy non-maximum suppression within each class; stable, so equal scores keep input order.
pub fn nms_per_class(
    mut candidates: Vec<RawDetection>,
    iou_threshold: f32,
    max_detections: usize,
) -> Vec<RawDetection> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<RawDetection> = Vec::new();
    for candidate in candidates {
        if kept.len() >= max_detections {
            break;
        }
        let suppressed = kept
            .iter()
            .any(|k| k.class_id == candidate.class_id && iou(&k.bbox, &candidate.bbox) > iou_threshold);
        if !suppressed {
            kept.push(candidate);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(class_id: u32, score: f32, bbox: [f32; 4]) -> RawDetection {
        RawDetection { class_id, score, bbox }
    }

    #[test]
    fn nms_suppresses_overlaps_within_a_class_only() {
        let kept = nms_per_class(
            vec![
                detection(0, 0.6, [0.0, 0.0, 10.0, 10.0]),
                detection(0, 0.9, [1.0, 1.0, 11.0, 11.0]),
                detection(1, 0.5, [0.0, 0.0, 10.0, 10.0]),
                detection(0, 0.4, [50.0, 50.0, 60.0, 60.0]),
            ],
            0.5,
            100,
        );
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.5, 0.4]);
    }

    #[test]
    fn gfl_decodes_a_hand_built_cell() {
        // One 8x8 input, stride 4: a 2x2 grid, 2 classes, reg_max 2 (3 bins).
        let gfl = NanodetGfl {
            outputs: Vec::new(),
            strides: vec![4],
            reg_max: 2,
            num_classes: 2,
            input_width: 8,
            input_height: 8,
            score_threshold: 0.5,
            nms_iou_threshold: 0.5,
            max_detections: 10,
        };
        let mut scores = vec![0.0f32; 4 * 2];
        scores[3 * 2 + 1] = 0.8; // cell (1,1), class 1
        let mut boxes = vec![0.0f32; 4 * 4 * 3];
        // Cell 3: left bin 1 certain, top bin 0, right bin 2, bottom uniform (expectation 1).
        let cell = &mut boxes[3 * 12..4 * 12];
        cell[..3].copy_from_slice(&[-100.0, 100.0, -100.0]);
        cell[3..6].copy_from_slice(&[100.0, -100.0, -100.0]);
        cell[6..9].copy_from_slice(&[-100.0, -100.0, 100.0]);
        let found = gfl.decode(&[(&scores, &boxes)]);
        assert_eq!(found.len(), 1);
        let d = found[0];
        assert_eq!((d.class_id, d.score), (1, 0.8));
        // centre (6, 6); l = 1*4, t = 0, r = 2*4, b = 1*4
        let expected = [2.0, 6.0, 14.0, 10.0];
        for (got, want) in d.bbox.iter().zip(expected) {
            assert!((got - want).abs() < 1e-4, "{:?}", d.bbox);
        }
    }

    #[test]
    fn short_outputs_do_not_panic() {
        let gfl = NanodetGfl {
            outputs: Vec::new(),
            strides: vec![8],
            reg_max: 10,
            num_classes: 80,
            input_width: 416,
            input_height: 416,
            score_threshold: 0.0,
            nms_iou_threshold: 0.5,
            max_detections: 10,
        };
        assert!(gfl.decode(&[(&[0.5; 80], &[0.0; 3])]).is_empty());
    }
}
