//! Output decoders: raw model outputs to detections. Which decoder runs, and with which numbers,
//! is the manifest's choice; nothing here knows a particular model. Every head turns its outputs
//! into candidates above the score threshold; what follows (class map, NMS, the cap) is shared.

use std::borrow::Cow;
use std::collections::HashMap;

use super::manifest::{
    Activation, AnchorGrid, BoxOrder, Column, Coordinates, DEFAULT_COLUMNS, DecoderSpec, Head, Manifest, Nms,
    Orientation,
};
use crate::error::{Error, Result};

/// A detection in model-input pixels, before mapping back to the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawDetection {
    /// The node's class: a position in the manifest's `class_names`.
    pub class_id: u32,
    pub score: f32,
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
}

/// One output of a run: its dimensions as ONNX Runtime reports them, and its values as f32
/// (integer class and count outputs are converted).
#[derive(Debug, Clone)]
pub struct Tensor<'a> {
    pub dims: Vec<i64>,
    pub data: Cow<'a, [f32]>,
}

impl<'a> Tensor<'a> {
    pub fn borrowed(dims: &[i64], data: &'a [f32]) -> Tensor<'a> {
        Tensor {
            dims: dims.to_vec(),
            data: Cow::Borrowed(data),
        }
    }

    /// `[1, a, b]` (or `[a, b]`) as `(a, b)`, checked against the data's length.
    fn matrix(&self, what: &str) -> std::result::Result<(usize, usize), String> {
        let dims = match self.dims.as_slice() {
            [1, a, b] | [a, b] => (*a, *b),
            [1, a, 1, b] => (*a, *b),
            other => return Err(format!("{what} has shape {other:?}; expected [1, n, m]")),
        };
        let (a, b) = (usize::try_from(dims.0), usize::try_from(dims.1));
        match (a, b) {
            (Ok(a), Ok(b)) if a.checked_mul(b) == Some(self.data.len()) => Ok((a, b)),
            _ => Err(format!(
                "{what} has shape {:?} but {} values",
                self.dims,
                self.data.len()
            )),
        }
    }
}

/// A detector's decoder, made from its manifest.
#[derive(Debug, Clone)]
pub struct Decoder {
    head: HeadDecoder,
    pub selection: Selection,
    /// The outputs `decode` takes, in order.
    outputs: Vec<String>,
}

#[derive(Debug, Clone)]
enum HeadDecoder {
    NanodetGfl(NanodetGfl),
    Yolo(Yolo),
    BoxesScores(BoxesScores),
    Blazeface(Blazeface),
    Detections(Detections),
}

/// Which candidates become detections, after every head.
#[derive(Debug, Clone)]
pub struct Selection {
    pub classes: ClassMap,
    pub score_threshold: f32,
    pub nms: Nms,
    pub nms_iou_threshold: f32,
    pub max_detections: usize,
}

/// The model's classes to the node's: a dense model column or class value to a position in
/// `class_names`.
#[derive(Debug, Clone)]
pub struct ClassMap {
    /// `(model class, node class)`, in the order of `class_names`.
    pairs: Vec<(usize, u32)>,
    by_model: HashMap<i64, u32>,
}

impl ClassMap {
    pub fn new(names: usize, model_ids: Option<&[i64]>) -> ClassMap {
        let pairs: Vec<(usize, u32)> = match model_ids {
            Some(ids) => ids
                .iter()
                .zip(0u32..)
                .filter_map(|(&id, node)| usize::try_from(id).ok().map(|id| (id, node)))
                .collect(),
            None => (0..names).zip(0u32..).collect(),
        };
        let by_model = pairs.iter().map(|&(model, node)| (model as i64, node)).collect();
        ClassMap { pairs, by_model }
    }

    /// The node's class of a class value a model wrote into an output.
    fn of_value(&self, value: f32) -> Option<u32> {
        value
            .is_finite()
            .then(|| self.by_model.get(&(value.round() as i64)).copied())
            .flatten()
    }

    /// The highest model column any name maps to, plus one: score tensors need at least this
    /// many columns.
    pub fn columns_needed(&self) -> usize {
        self.pairs.iter().map(|&(model, _)| model + 1).max().unwrap_or(0)
    }

    /// The best of the mapped columns of one row of scores: `(node class, raw score)`.
    fn best(&self, row: impl Fn(usize) -> f32) -> Option<(u32, f32)> {
        let mut best: Option<(u32, f32)> = None;
        for &(column, class) in &self.pairs {
            let score = row(column);
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((class, score));
            }
        }
        best
    }
}

impl Decoder {
    /// The decoder a manifest describes; `None` for an embedder's manifest.
    pub fn from_manifest(manifest: &Manifest) -> Result<Option<Decoder>> {
        let DecoderSpec::Detector { head, selection } = &manifest.decoder else {
            return Ok(None);
        };
        let bad = |message: String| Error::Manifest {
            path: manifest.path.clone(),
            message,
        };
        let (width, height) = (manifest.input.width, manifest.input.height);
        let size = [width as f32, height as f32];
        let (head, outputs) = match head {
            Head::NanodetGfl {
                strides,
                reg_max,
                score_outputs,
                box_outputs,
            } => (
                HeadDecoder::NanodetGfl(NanodetGfl {
                    strides: strides.clone(),
                    reg_max: *reg_max,
                    input_width: width,
                    input_height: height,
                }),
                score_outputs
                    .iter()
                    .zip(box_outputs)
                    .flat_map(|(s, b)| [s.clone(), b.clone()])
                    .collect(),
            ),
            Head::Yolo {
                output,
                orientation,
                objectness,
                sigmoid,
                box_format,
                coordinates,
                grid_strides,
            } => {
                let grid = grid_strides
                    .iter()
                    .flat_map(|&stride| {
                        let (gw, gh) = (width.div_ceil(stride), height.div_ceil(stride));
                        (0..gh).flat_map(move |y| (0..gw).map(move |x| [x as f32, y as f32, stride as f32]))
                    })
                    .collect();
                (
                    HeadDecoder::Yolo(Yolo {
                        orientation: *orientation,
                        objectness: *objectness,
                        sigmoid: *sigmoid,
                        box_format: *box_format,
                        scale: scale(*coordinates, size),
                        grid,
                    }),
                    vec![output.clone()],
                )
            }
            Head::BoxesScores {
                anchor_grid: Some(grid),
                ..
            } => (
                HeadDecoder::Blazeface(Blazeface::new(grid, width, height).map_err(bad)?),
                grid.score_outputs.iter().chain(&grid.box_outputs).cloned().collect(),
            ),
            Head::BoxesScores {
                boxes,
                scores,
                box_order,
                coordinates,
                activation,
                background_column,
                priors,
                prior_variances,
                anchor_grid: None,
            } => {
                let priors = match priors {
                    None => None,
                    Some(file) => Some(load_priors(&manifest.beside(file)).map_err(bad)?),
                };
                (
                    HeadDecoder::BoxesScores(BoxesScores {
                        box_order: *box_order,
                        scale: scale(*coordinates, size),
                        activation: *activation,
                        background_column: *background_column,
                        priors,
                        variances: *prior_variances,
                    }),
                    vec![boxes.clone(), scores.clone()],
                )
            }
            Head::Detections {
                output,
                columns,
                boxes,
                scores,
                classes,
                count,
                box_order,
                coordinates,
            } => {
                let scale = scale(*coordinates, size);
                match (output, boxes, scores) {
                    (Some(output), _, _) => {
                        let columns = columns.as_deref().unwrap_or(&DEFAULT_COLUMNS);
                        let at = |c: Column| columns.iter().position(|&k| k == c);
                        let needed = [Column::X1, Column::Y1, Column::X2, Column::Y2, Column::Score];
                        let [x1, y1, x2, y2, score] = needed.map(|c| at(c).unwrap_or(0));
                        (
                            HeadDecoder::Detections(Detections::Rows {
                                at: [x1, y1, x2, y2],
                                score,
                                class: at(Column::Class),
                                width: columns.len(),
                                scale,
                            }),
                            vec![output.clone()],
                        )
                    }
                    (None, Some(boxes), Some(scores)) => {
                        let mut outputs = vec![boxes.clone(), scores.clone()];
                        outputs.extend(classes.iter().cloned());
                        outputs.extend(count.iter().cloned());
                        (
                            HeadDecoder::Detections(Detections::Separate {
                                box_order: *box_order,
                                scale,
                                classes: classes.is_some(),
                                count: count.is_some(),
                            }),
                            outputs,
                        )
                    }
                    _ => return Err(bad("a detections decoder needs output, or boxes and scores".into())),
                }
            }
        };
        Ok(Some(Decoder {
            head,
            selection: Selection {
                classes: ClassMap::new(selection.class_names.len(), selection.class_ids.as_deref()),
                score_threshold: selection.score_threshold,
                nms: selection.nms.unwrap_or(Nms::PerClass),
                nms_iou_threshold: selection.nms_iou_threshold,
                max_detections: selection.max_detections,
            },
            outputs,
        }))
    }

    /// The outputs [`decode`](Self::decode) takes, in this order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Detections sorted by score, highest first. `tensors` are the [`outputs`](Self::outputs),
    /// in order; an output of the wrong shape is an error, never a panic.
    pub fn decode(&self, tensors: &[Tensor<'_>]) -> std::result::Result<Vec<RawDetection>, String> {
        if tensors.len() != self.outputs.len() {
            return Err(format!(
                "{} outputs given, {} expected",
                tensors.len(),
                self.outputs.len()
            ));
        }
        let selection = &self.selection;
        let candidates = match &self.head {
            HeadDecoder::NanodetGfl(gfl) => gfl.candidates(tensors, selection)?,
            HeadDecoder::Yolo(yolo) => yolo.candidates(&tensors[0], selection)?,
            HeadDecoder::BoxesScores(ssd) => ssd.candidates(&tensors[0], &tensors[1], selection)?,
            HeadDecoder::Blazeface(head) => head.candidates(tensors, selection)?,
            HeadDecoder::Detections(head) => head.candidates(tensors, selection)?,
        };
        Ok(selection.finish(candidates))
    }
}

fn scale(coordinates: Coordinates, size: [f32; 2]) -> [f32; 2] {
    match coordinates {
        Coordinates::Pixels => [1.0, 1.0],
        Coordinates::Normalized => size,
    }
}

impl Selection {
    /// A candidate's score clears the threshold (NaN does not).
    fn admits(&self, score: f32) -> bool {
        score >= self.score_threshold
    }

    fn finish(&self, candidates: Vec<RawDetection>) -> Vec<RawDetection> {
        let candidates = candidates
            .into_iter()
            .filter(|d| self.admits(d.score) && d.bbox.iter().all(|v| v.is_finite()))
            .collect();
        match self.nms {
            Nms::None => {
                let mut kept: Vec<RawDetection> = candidates;
                kept.sort_by(|a, b| b.score.total_cmp(&a.score));
                kept.truncate(self.max_detections);
                kept
            }
            Nms::PerClass => nms(candidates, self.nms_iou_threshold, self.max_detections, true),
            Nms::ClassAgnostic => nms(candidates, self.nms_iou_threshold, self.max_detections, false),
            Nms::Weighted => weighted_nms(candidates, self.nms_iou_threshold, self.max_detections),
        }
    }

    /// The manifest's NMS over detections gathered from several runs (tiles of one frame, in
    /// frame pixels); `Nms::None` keeps them all, best first, up to the cap.
    pub fn merge(&self, candidates: Vec<RawDetection>) -> Vec<RawDetection> {
        self.finish(candidates)
    }
}

/// `[x1, y1, x2, y2]` from four values in `order`, scaled to input pixels.
fn to_xyxy(order: BoxOrder, v: [f32; 4], scale: [f32; 2]) -> [f32; 4] {
    let [sx, sy] = scale;
    let b = match order {
        BoxOrder::Xyxy => v,
        BoxOrder::Yxyx => [v[1], v[0], v[3], v[2]],
        BoxOrder::Cxcywh => [
            v[0] - v[2] / 2.0,
            v[1] - v[3] / 2.0,
            v[0] + v[2] / 2.0,
            v[1] + v[3] / 2.0,
        ],
    };
    [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// NanoDet's GFL head. Per level (stride s, grid `ceil(w/s) x ceil(h/s)`, cell `y * grid_w + x`):
/// class scores with sigmoid already applied, and for each side (left, top, right, bottom, in
/// that order, side-major) a distribution over `reg_max + 1` distance bins whose expectation,
/// times s, is the distance from the cell centre to that side.
#[derive(Debug, Clone)]
struct NanodetGfl {
    strides: Vec<u32>,
    reg_max: usize,
    input_width: u32,
    input_height: u32,
}

impl NanodetGfl {
    /// `tensors`: per level, its scores then its box distributions.
    fn candidates(
        &self,
        tensors: &[Tensor<'_>],
        selection: &Selection,
    ) -> std::result::Result<Vec<RawDetection>, String> {
        let bins = self.reg_max + 1;
        let mut candidates = Vec::new();
        for (&stride, level) in self.strides.iter().zip(tensors.chunks_exact(2)) {
            let (scores, boxes) = (&level[0], &level[1]);
            let grid_w = self.input_width.div_ceil(stride) as usize;
            let cells = grid_w * self.input_height.div_ceil(stride) as usize;
            let (score_cells, classes) = scores.matrix("a score output")?;
            let (box_cells, values) = boxes.matrix("a box output")?;
            if score_cells != cells || box_cells != cells || values != 4 * bins {
                return Err(format!(
                    "stride {stride}: outputs of {score_cells} and {box_cells} cells x {values} values; \
                     expected {cells} cells x {}",
                    4 * bins
                ));
            }
            if classes < selection.classes.columns_needed() {
                return Err(format!(
                    "{classes} score columns; the class map needs {}",
                    selection.classes.columns_needed()
                ));
            }
            for cell in 0..cells {
                let row = &scores.data[cell * classes..][..classes];
                let Some((class_id, score)) = selection.classes.best(|c| row[c]) else {
                    continue;
                };
                // Most cells are background: skip the softmax for them.
                if !selection.admits(score) {
                    continue;
                }
                let s = stride as f32;
                let cx = ((cell % grid_w) as f32 + 0.5) * s;
                let cy = ((cell / grid_w) as f32 + 0.5) * s;
                let dist = &boxes.data[cell * 4 * bins..][..4 * bins];
                let side = |k: usize| expected_bin(&dist[k * bins..][..bins]) * s;
                candidates.push(RawDetection {
                    class_id,
                    score,
                    bbox: [cx - side(0), cy - side(1), cx + side(2), cy + side(3)],
                });
            }
        }
        Ok(candidates)
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

#[derive(Debug, Clone)]
struct Yolo {
    orientation: Orientation,
    objectness: bool,
    sigmoid: bool,
    box_format: BoxOrder,
    scale: [f32; 2],
    /// Per candidate of a raw head: (x, y, stride).
    grid: Vec<[f32; 3]>,
}

impl Yolo {
    fn candidates(&self, output: &Tensor<'_>, selection: &Selection) -> std::result::Result<Vec<RawDetection>, String> {
        let (a, b) = output.matrix("the yolo output")?;
        let (n, values) = match self.orientation {
            Orientation::Rows => (a, b),
            Orientation::Columns => (b, a),
        };
        let first_class = 4 + usize::from(self.objectness);
        let classes = values.saturating_sub(first_class);
        if classes < selection.classes.columns_needed().max(1) {
            return Err(format!(
                "the yolo output has {values} values per candidate: too few for 4 box values{} and {} classes",
                if self.objectness { ", objectness" } else { "" },
                selection.classes.columns_needed()
            ));
        }
        if !self.grid.is_empty() && self.grid.len() != n {
            return Err(format!(
                "{n} candidates but the grid strides give {} cells",
                self.grid.len()
            ));
        }
        let data = &output.data;
        let at = |i: usize, j: usize| match self.orientation {
            Orientation::Rows => data[i * values + j],
            Orientation::Columns => data[j * n + i],
        };
        let activate = |x: f32| if self.sigmoid { sigmoid(x) } else { x };
        let mut candidates = Vec::new();
        for i in 0..n {
            let objectness = if self.objectness { activate(at(i, 4)) } else { 1.0 };
            // A class score is at most 1: a weak objectness rules the candidate out.
            if !selection.admits(objectness) {
                continue;
            }
            // The sigmoid keeps the order: the best raw score is the best score.
            let Some((class_id, raw)) = selection.classes.best(|c| at(i, first_class + c)) else {
                continue;
            };
            let score = objectness * activate(raw);
            if !selection.admits(score) {
                continue;
            }
            let mut v = [at(i, 0), at(i, 1), at(i, 2), at(i, 3)];
            if let Some(&[x, y, stride]) = self.grid.get(i) {
                v = [
                    (v[0] + x) * stride,
                    (v[1] + y) * stride,
                    v[2].exp() * stride,
                    v[3].exp() * stride,
                ];
            }
            candidates.push(RawDetection {
                class_id,
                score,
                bbox: to_xyxy(self.box_format, v, self.scale),
            });
        }
        Ok(candidates)
    }
}

#[derive(Debug, Clone)]
struct BoxesScores {
    box_order: BoxOrder,
    scale: [f32; 2],
    activation: Activation,
    background_column: Option<usize>,
    /// Per anchor: (cx, cy, w, h).
    priors: Option<Vec<[f32; 4]>>,
    variances: [f32; 4],
}

impl BoxesScores {
    fn candidates(
        &self,
        boxes: &Tensor<'_>,
        scores: &Tensor<'_>,
        selection: &Selection,
    ) -> std::result::Result<Vec<RawDetection>, String> {
        let (n, four) = boxes.matrix("the box output")?;
        let (anchors, columns) = scores.matrix("the score output")?;
        if four != 4 || anchors != n {
            return Err(format!("{n} boxes of {four} values for {anchors} rows of scores"));
        }
        if let Some(priors) = &self.priors
            && priors.len() != n
        {
            return Err(format!("{n} boxes but {} priors", priors.len()));
        }
        let skip = usize::from(self.background_column.is_some_and(|bg| bg < columns));
        if columns < selection.classes.columns_needed() + skip {
            return Err(format!(
                "{columns} score columns; the class map needs {}",
                selection.classes.columns_needed() + skip
            ));
        }
        // The model column of class column c, past the background.
        let column = |c: usize| match self.background_column {
            Some(bg) if c >= bg => c + 1,
            _ => c,
        };
        let mut candidates = Vec::new();
        for i in 0..n {
            let row = &scores.data[i * columns..][..columns];
            let Some((class_id, raw)) = selection.classes.best(|c| row[column(c)]) else {
                continue;
            };
            let score = match self.activation {
                Activation::None => raw,
                Activation::Sigmoid => sigmoid(raw),
                Activation::Softmax => {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
                    (raw - max).exp() / sum
                }
            };
            if !selection.admits(score) {
                continue;
            }
            let b = &boxes.data[i * 4..][..4];
            let bbox = match &self.priors {
                None => to_xyxy(self.box_order, [b[0], b[1], b[2], b[3]], self.scale),
                Some(priors) => {
                    let [pcx, pcy, pw, ph] = priors[i];
                    let [dx, dy, dw, dh] = match self.box_order {
                        BoxOrder::Yxyx => [b[1], b[0], b[3], b[2]],
                        BoxOrder::Xyxy | BoxOrder::Cxcywh => [b[0], b[1], b[2], b[3]],
                    };
                    let v = self.variances;
                    let decoded = [
                        pcx + dx * v[0] * pw,
                        pcy + dy * v[1] * ph,
                        pw * (dw * v[2]).exp(),
                        ph * (dh * v[3]).exp(),
                    ];
                    to_xyxy(BoxOrder::Cxcywh, decoded, self.scale)
                }
            };
            candidates.push(RawDetection { class_id, score, bbox });
        }
        Ok(candidates)
    }
}

/// BlazeFace's head ([`AnchorGrid`]): anchors generated once from the manifest's grid.
#[derive(Debug, Clone)]
struct Blazeface {
    /// Per anchor, in output order: its centre in fractions of the input.
    anchors: Vec<[f32; 2]>,
    box_scale: f32,
    /// The input's width and height in pixels: decoded boxes are fractions of it.
    size: [f32; 2],
    /// How many of the tensors `decode` takes are score outputs (the box outputs follow).
    score_outputs: usize,
}

impl Blazeface {
    fn new(grid: &AnchorGrid, width: u32, height: u32) -> std::result::Result<Blazeface, String> {
        let sizes = grid.layer_sizes(width, height)?;
        let mut anchors = Vec::with_capacity(sizes.iter().sum());
        for (&stride, &per_cell) in grid.strides.iter().zip(&grid.anchors_per_cell) {
            let (grid_w, grid_h) = (width.div_ceil(stride), height.div_ceil(stride));
            for y in 0..grid_h {
                for x in 0..grid_w {
                    let centre = [(x as f32 + 0.5) / grid_w as f32, (y as f32 + 0.5) / grid_h as f32];
                    anchors.extend(std::iter::repeat_n(centre, per_cell as usize));
                }
            }
        }
        Ok(Blazeface {
            anchors,
            box_scale: grid.box_scale,
            size: [width as f32, height as f32],
            score_outputs: grid.score_outputs.len(),
        })
    }

    /// The rows of several `[1, n, m]` outputs read one after the other, with how many there are;
    /// every row at least `min_width` values.
    fn rows<'t>(
        tensors: &'t [Tensor<'_>],
        what: &str,
        min_width: usize,
    ) -> std::result::Result<(usize, Vec<&'t [f32]>), String> {
        let mut rows = Vec::new();
        for tensor in tensors {
            let (n, width) = tensor.matrix(what)?;
            if width < min_width {
                return Err(format!(
                    "{what} has {width} values per anchor; at least {min_width} needed"
                ));
            }
            rows.extend(tensor.data.chunks_exact(width).take(n));
        }
        Ok((rows.len(), rows))
    }

    fn candidates(
        &self,
        tensors: &[Tensor<'_>],
        selection: &Selection,
    ) -> std::result::Result<Vec<RawDetection>, String> {
        let (score_tensors, box_tensors) = tensors.split_at(self.score_outputs.min(tensors.len()));
        let classes = selection.classes.columns_needed().max(1);
        let (n_scores, scores) = Self::rows(score_tensors, "a score output", classes)?;
        let (n_boxes, boxes) = Self::rows(box_tensors, "a box output", 4)?;
        if n_scores != self.anchors.len() || n_boxes != self.anchors.len() {
            return Err(format!(
                "{n_scores} score rows and {n_boxes} box rows; the anchor grid has {} anchors",
                self.anchors.len()
            ));
        }
        let s = self.box_scale;
        let mut candidates = Vec::new();
        for ((row, b), &[ax, ay]) in scores.iter().zip(&boxes).zip(&self.anchors) {
            // The sigmoid keeps the order: the best logit is the best score.
            let Some((class_id, logit)) = selection.classes.best(|c| row[c]) else {
                continue;
            };
            let score = sigmoid(logit);
            if !selection.admits(score) {
                continue;
            }
            let centred = [ax + b[0] / s, ay + b[1] / s, b[2] / s, b[3] / s];
            candidates.push(RawDetection {
                class_id,
                score,
                bbox: to_xyxy(BoxOrder::Cxcywh, centred, self.size),
            });
        }
        Ok(candidates)
    }
}

fn load_priors(path: &std::path::Path) -> std::result::Result<Vec<[f32; 4]>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading priors {}: {e}", path.display()))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("priors {}: not a safetensors file: {e}", path.display()))?;
    let priors = tensors
        .tensor("priors")
        .map_err(|e| format!("priors {}: no tensor \"priors\": {e}", path.display()))?;
    if priors.dtype() != safetensors::Dtype::F32 || priors.shape().len() != 2 || priors.shape()[1] != 4 {
        return Err(format!(
            "priors {}: expected f32 [anchors, 4], found {:?} {:?}",
            path.display(),
            priors.dtype(),
            priors.shape()
        ));
    }
    // safetensors stores little-endian whatever the host.
    let values: Vec<f32> = priors
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(values.chunks_exact(4).map(|p| [p[0], p[1], p[2], p[3]]).collect())
}

#[derive(Debug, Clone)]
enum Detections {
    Rows {
        /// Columns of x1, y1, x2, y2.
        at: [usize; 4],
        score: usize,
        class: Option<usize>,
        /// Columns the manifest names; rows may have more.
        width: usize,
        scale: [f32; 2],
    },
    Separate {
        box_order: BoxOrder,
        scale: [f32; 2],
        classes: bool,
        count: bool,
    },
}

impl Detections {
    fn candidates(
        &self,
        tensors: &[Tensor<'_>],
        selection: &Selection,
    ) -> std::result::Result<Vec<RawDetection>, String> {
        let class_of = |value: Option<f32>| match value {
            Some(value) => selection.classes.of_value(value),
            // No class output: the model knows one class, the first name.
            None => Some(0),
        };
        let mut candidates = Vec::new();
        match self {
            Detections::Rows {
                at,
                score,
                class,
                width,
                scale,
            } => {
                let (_, values) = tensors[0].matrix("the detections output")?;
                if values < *width {
                    return Err(format!("rows of {values} values; the manifest names {width} columns"));
                }
                for row in tensors[0].data.chunks_exact(values) {
                    let Some(class_id) = class_of(class.map(|c| row[c])) else {
                        continue;
                    };
                    let v = at.map(|c| row[c]);
                    candidates.push(RawDetection {
                        class_id,
                        score: row[*score],
                        bbox: to_xyxy(BoxOrder::Xyxy, v, *scale),
                    });
                }
            }
            Detections::Separate {
                box_order,
                scale,
                classes,
                count,
            } => {
                let (n, four) = tensors[0].matrix("the boxes output")?;
                let scores = &tensors[1].data;
                if four != 4 || scores.len() != n {
                    return Err(format!("{n} boxes of {four} values and {} scores", scores.len()));
                }
                let class_values = classes.then(|| &tensors[2].data);
                if class_values.is_some_and(|c| c.len() != n) {
                    return Err(format!("{n} boxes but {} classes", class_values.map_or(0, |c| c.len())));
                }
                let valid = match count.then(|| tensors.last().and_then(|t| t.data.first().copied())) {
                    Some(Some(count)) if count.is_finite() => (count.max(0.0) as usize).min(n),
                    Some(_) => return Err("the count output holds no number".into()),
                    None => n,
                };
                for i in 0..valid {
                    let Some(class_id) = class_of(class_values.map(|c| c[i])) else {
                        continue;
                    };
                    let b = &tensors[0].data[i * 4..][..4];
                    candidates.push(RawDetection {
                        class_id,
                        score: scores[i],
                        bbox: to_xyxy(*box_order, [b[0], b[1], b[2], b[3]], *scale),
                    });
                }
            }
        }
        Ok(candidates)
    }
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Greedy non-maximum suppression, within each class or across classes; stable, so equal scores
/// keep input order.
pub fn nms(
    mut candidates: Vec<RawDetection>,
    iou_threshold: f32,
    max_detections: usize,
    per_class: bool,
) -> Vec<RawDetection> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<RawDetection> = Vec::new();
    for candidate in candidates {
        if kept.len() >= max_detections {
            break;
        }
        let suppressed = kept
            .iter()
            .any(|k| (!per_class || k.class_id == candidate.class_id) && iou(&k.bbox, &candidate.bbox) > iou_threshold);
        if !suppressed {
            kept.push(candidate);
        }
    }
    kept
}

/// MediaPipe's weighted NMS, within each class: the best remaining box and every box of its
/// class overlapping it by more than `iou_threshold` become one detection, with the best score
/// and their score-weighted mean box.
pub fn weighted_nms(mut candidates: Vec<RawDetection>, iou_threshold: f32, max_detections: usize) -> Vec<RawDetection> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<RawDetection> = Vec::new();
    let mut merged = vec![false; candidates.len()];
    for i in 0..candidates.len() {
        if kept.len() >= max_detections {
            break;
        }
        if merged[i] {
            continue;
        }
        let best = candidates[i];
        let (mut sum, mut weight, mut members) = ([0f32; 4], 0f32, 0usize);
        for (j, other) in candidates.iter().enumerate().skip(i) {
            if merged[j] || other.class_id != best.class_id || (j != i && iou(&best.bbox, &other.bbox) <= iou_threshold)
            {
                continue;
            }
            merged[j] = true;
            for (s, v) in sum.iter_mut().zip(other.bbox) {
                *s += other.score * v;
            }
            weight += other.score;
            members += 1;
        }
        // A box alone keeps its own values (the mean of one would round them).
        let bbox = if members > 1 && weight > 0.0 {
            sum.map(|s| s / weight)
        } else {
            best.bbox
        };
        kept.push(RawDetection { bbox, ..best });
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(class_id: u32, score: f32, bbox: [f32; 4]) -> RawDetection {
        RawDetection { class_id, score, bbox }
    }

    /// A decoder from the `[decoder]` table of a manifest with an 8x8 float input.
    fn decoder(table: &str) -> Decoder {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        let text = format!(
            "[model]\nid = \"t\"\nversion = \"1\"\nfile = \"t.onnx\"\n\
             [input]\nname = \"in\"\nlayout = \"nchw\"\nwidth = 8\nheight = 8\nchannels = \"rgb\"\n\
             resize = \"stretch\"\n[decoder]\n{table}"
        );
        std::fs::write(&path, text).unwrap();
        let manifest = Manifest::load(&path).unwrap();
        Decoder::from_manifest(&manifest).unwrap().unwrap()
    }

    fn tensor(dims: &[i64], data: Vec<f32>) -> Tensor<'static> {
        Tensor {
            dims: dims.to_vec(),
            data: Cow::Owned(data),
        }
    }

    #[test]
    fn nms_suppresses_overlaps_within_a_class_or_across_classes() {
        let candidates = vec![
            detection(0, 0.6, [0.0, 0.0, 10.0, 10.0]),
            detection(0, 0.9, [1.0, 1.0, 11.0, 11.0]),
            detection(1, 0.5, [0.0, 0.0, 10.0, 10.0]),
            detection(0, 0.4, [50.0, 50.0, 60.0, 60.0]),
        ];
        let scores = |kept: Vec<RawDetection>| kept.iter().map(|d| d.score).collect::<Vec<f32>>();
        assert_eq!(scores(nms(candidates.clone(), 0.5, 100, true)), vec![0.9, 0.5, 0.4]);
        assert_eq!(scores(nms(candidates, 0.5, 100, false)), vec![0.9, 0.4]);
    }

    #[test]
    fn gfl_decodes_a_hand_built_cell() {
        // One 8x8 input, stride 4: a 2x2 grid, 2 classes, reg_max 2 (3 bins).
        let gfl = decoder(
            "kind = \"nanodet-gfl\"\nstrides = [4]\nreg_max = 2\nscore_outputs = [\"s\"]\n\
             box_outputs = [\"b\"]\nscore_threshold = 0.5\nclass_names = [\"a\", \"b\"]\n",
        );
        assert_eq!(gfl.outputs(), ["s", "b"]);
        let mut scores = vec![0.0f32; 4 * 2];
        scores[3 * 2 + 1] = 0.8; // cell (1,1), class 1
        let mut boxes = vec![0.0f32; 4 * 4 * 3];
        // Cell 3: left bin 1 certain, top bin 0, right bin 2, bottom uniform (expectation 1).
        let cell = &mut boxes[3 * 12..4 * 12];
        cell[..3].copy_from_slice(&[-100.0, 100.0, -100.0]);
        cell[3..6].copy_from_slice(&[100.0, -100.0, -100.0]);
        cell[6..9].copy_from_slice(&[-100.0, -100.0, 100.0]);
        let found = gfl
            .decode(&[tensor(&[1, 4, 2], scores), tensor(&[1, 4, 12], boxes)])
            .unwrap();
        assert_eq!(found.len(), 1);
        let d = found[0];
        assert_eq!((d.class_id, d.score), (1, 0.8));
        // centre (6, 6); l = 1*4, t = 0, r = 2*4, b = 1*4
        let expected = [2.0, 6.0, 14.0, 10.0];
        for (got, want) in d.bbox.iter().zip(expected) {
            assert!((got - want).abs() < 1e-4, "{:?}", d.bbox);
        }
    }

    const YOLO: &str = "kind = \"yolo\"\noutput = \"o\"\norientation = \"rows\"\nobjectness = true\n\
                        score_threshold = 0.4\nclass_names = [\"a\", \"b\"]\n";

    /// Two candidates of (cx, cy, w, h, objectness, a, b).
    fn yolo_rows() -> Vec<f32> {
        vec![
            4.0, 4.0, 2.0, 4.0, 0.9, 0.1, 0.8, //
            1.0, 1.0, 2.0, 2.0, 0.3, 0.9, 0.1, // objectness too weak
        ]
    }

    #[test]
    fn yolo_rows_and_columns_are_one_layout_transposed() {
        let rows = yolo_rows();
        let columns: Vec<f32> = (0..7)
            .flat_map(|j| (0..2).map(move |i| (i, j)))
            .map(|(i, j)| rows[i * 7 + j])
            .collect();
        let by_rows = decoder(YOLO).decode(&[tensor(&[1, 2, 7], rows)]).unwrap();
        let by_columns = decoder(&YOLO.replace("\"rows\"", "\"columns\""))
            .decode(&[tensor(&[1, 7, 2], columns)])
            .unwrap();
        assert_eq!(by_rows, by_columns);
        assert_eq!(by_rows.len(), 1);
        assert_eq!(by_rows[0].class_id, 1);
        assert!((by_rows[0].score - 0.72).abs() < 1e-6);
        assert_eq!(by_rows[0].bbox, [3.0, 2.0, 5.0, 6.0]);
    }

    #[test]
    fn class_ids_map_model_classes_with_gaps_to_the_names() {
        // Model columns 0..4; the names are columns 3 and 1.
        let ssd = decoder(
            "kind = \"boxes-scores\"\nboxes = \"b\"\nscores = \"s\"\nscore_threshold = 0.5\n\
             class_names = [\"x\", \"y\"]\nclass_ids = [3, 1]\n",
        );
        let boxes = vec![0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.0, 0.5, 0.5, 1.0];
        let scores = vec![
            0.0, 0.1, 0.0, 0.9, // column 3: "x"
            0.0, 0.7, 0.0, 0.0, // column 1: "y"
            0.0, 0.0, 0.99, 0.0, // column 2: no name, dropped
        ];
        let found = ssd
            .decode(&[tensor(&[1, 3, 4], boxes), tensor(&[1, 3, 4], scores)])
            .unwrap();
        let classes: Vec<(u32, f32)> = found.iter().map(|d| (d.class_id, d.score)).collect();
        assert_eq!(classes, vec![(0, 0.9), (1, 0.7)]);
        // Normalised by default: the 8x8 input's pixels.
        assert_eq!(found[0].bbox, [0.0, 0.0, 4.0, 4.0]);
    }

    #[test]
    fn separate_detection_outputs_stop_at_the_count_and_swap_yx() {
        let tf = decoder(
            "kind = \"detections\"\nboxes = \"b\"\nscores = \"s\"\nclasses = \"c\"\ncount = \"n\"\n\
             box_order = \"yxyx\"\ncoordinates = \"normalized\"\nscore_threshold = 0.3\n\
             class_names = [\"person\"]\nclass_ids = [1]\n",
        );
        let boxes = vec![0.0, 0.25, 0.5, 0.75, 0.1, 0.1, 0.2, 0.2, 0.0, 0.0, 1.0, 1.0];
        let found = tf
            .decode(&[
                tensor(&[1, 3, 4], boxes),
                tensor(&[1, 3], vec![0.9, 0.8, 0.99]),
                tensor(&[1, 3], vec![1.0, 2.0, 1.0]),
                tensor(&[1], vec![2.0]),
            ])
            .unwrap();
        // Row 1 is class 2 (not named), row 2 is past the count.
        assert_eq!(found, vec![detection(0, 0.9, [2.0, 0.0, 6.0, 4.0])]);
    }

    #[test]
    fn nan_outputs_give_no_detections() {
        let found = decoder(YOLO).decode(&[tensor(&[1, 2, 7], vec![f32::NAN; 14])]).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn outputs_of_the_wrong_shape_are_errors() {
        let yolo = decoder(YOLO);
        for (dims, len) in [
            (vec![1, 2, 7], 13),
            (vec![1, 2, 5], 10),
            (vec![2, 2, 7], 28),
            (vec![1, 2, 7, 1], 14),
        ] {
            let err = yolo.decode(&[tensor(&dims, vec![0.5; len])]).unwrap_err();
            assert!(!err.is_empty());
        }
        assert!(yolo.decode(&[]).is_err());
    }

    /// An 8x8 input; layer 1: stride 4, a 2x2 grid, 1 anchor per cell (anchors 0-3); layer 2:
    /// stride 8, one cell, 2 anchors (4-5). Box rows of 6 values (4 + one keypoint).
    const BLAZEFACE: &str = "kind = \"blazeface\"\nstrides = [4, 8]\nanchors_per_cell = [1, 2]\nbox_scale = 8.0\n\
                             score_outputs = [\"s1\", \"s2\"]\nbox_outputs = [\"b1\", \"b2\"]\n\
                             score_threshold = 0.5\nclass_names = [\"face\"]\n";

    /// Scores (logits) and box rows of the six anchors: anchor 3 (cell (1, 1) of layer 1, centre
    /// (0.75, 0.75)) holds a face; anchor 4 (layer 2, centre (0.5, 0.5)) a weak one.
    fn blazeface_outputs() -> (Vec<f32>, Vec<f32>) {
        let mut scores = vec![-10.0f32; 6];
        let mut boxes = vec![0.0f32; 6 * 6];
        scores[3] = 2.0;
        boxes[3 * 6..4 * 6].copy_from_slice(&[1.0, -2.0, 4.0, 2.0, 99.0, 99.0]);
        scores[4] = -3.0;
        boxes[4 * 6..5 * 6].copy_from_slice(&[0.0, 0.0, 8.0, 8.0, 0.0, 0.0]);
        (scores, boxes)
    }

    #[test]
    fn blazeface_decodes_a_known_anchor_and_regression_to_the_known_box() {
        let head = decoder(BLAZEFACE);
        assert_eq!(head.outputs(), ["s1", "s2", "b1", "b2"]);
        assert_eq!(head.selection.nms, Nms::Weighted, "weighted by default");
        let (scores, boxes) = blazeface_outputs();
        let tensors = [
            tensor(&[1, 4, 1], scores[..4].to_vec()),
            tensor(&[1, 2, 1], scores[4..].to_vec()),
            tensor(&[1, 4, 6], boxes[..24].to_vec()),
            tensor(&[1, 2, 6], boxes[24..].to_vec()),
        ];
        let found = head.decode(&tensors).unwrap();
        // Centre (0.75 + 1/8, 0.75 - 2/8) = (0.875, 0.5), size (4/8, 2/8), of 8 pixels:
        // centre (7, 4), 4 x 2.
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].class_id, found[0].score), (0, sigmoid(2.0)));
        for (got, want) in found[0].bbox.iter().zip([5.0, 3.0, 9.0, 5.0]) {
            assert!((got - want).abs() < 1e-5, "{:?}", found[0].bbox);
        }
        // The weak face at anchor 4 (the whole input) comes in under a lower threshold.
        let mut low = head.clone();
        low.selection.score_threshold = 0.01;
        let found = low.decode(&tensors).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].bbox, [0.0, 0.0, 8.0, 8.0]);
        // The same anchors in one output per kind (MediaPipe's own exports): the same faces.
        let one = decoder(
            &BLAZEFACE
                .replace("[\"s1\", \"s2\"]", "[\"s\"]")
                .replace("[\"b1\", \"b2\"]", "[\"b\"]"),
        );
        assert_eq!(
            one.decode(&[tensor(&[1, 6, 1], scores), tensor(&[1, 6, 6], boxes)])
                .unwrap(),
            head.decode(&tensors).unwrap()
        );
    }

    #[test]
    fn blazeface_outputs_that_do_not_fit_the_grid_are_errors() {
        let head = decoder(BLAZEFACE);
        let (scores, boxes) = blazeface_outputs();
        let case = |s1: (&[i64], usize), b2: (&[i64], usize)| {
            head.decode(&[
                tensor(s1.0, scores[..s1.1].to_vec()),
                tensor(&[1, 2, 1], scores[4..].to_vec()),
                tensor(&[1, 4, 6], boxes[..24].to_vec()),
                tensor(b2.0, vec![0.0; b2.1]),
            ])
        };
        let err = case((&[1, 3, 1], 3), (&[1, 2, 6], 12)).unwrap_err();
        assert!(err.contains("5 score rows") && err.contains("6 anchors"), "{err}");
        let err = case((&[1, 4, 1], 4), (&[1, 2, 3], 6)).unwrap_err();
        assert!(err.contains("3 values per anchor"), "{err}");
        assert!(
            case((&[1, 4, 1], 4), (&[1, 2, 6], 11)).is_err(),
            "a shape its data does not fill"
        );
        assert!(head.decode(&[tensor(&[1, 4, 1], scores[..4].to_vec())]).is_err());
    }

    #[test]
    fn weighted_nms_merges_overlaps_into_their_score_weighted_mean() {
        let candidates = vec![
            detection(0, 0.6, [2.0, 0.0, 12.0, 10.0]),
            detection(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            detection(1, 0.8, [0.0, 0.0, 10.0, 10.0]),
            detection(0, 0.3, [50.0, 50.0, 60.0, 60.0]),
        ];
        let kept = weighted_nms(candidates, 0.3, 100);
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert_eq!((kept[0].class_id, kept[0].score), (0, 0.9));
        // x: (0.9 * 0 + 0.6 * 2) / 1.5 = 0.8, and 10.8 on the right.
        for (got, want) in kept[0].bbox.iter().zip([0.8, 0.0, 10.8, 10.0]) {
            assert!((got - want).abs() < 1e-5, "{:?}", kept[0].bbox);
        }
        assert_eq!(
            kept[1],
            detection(1, 0.8, [0.0, 0.0, 10.0, 10.0]),
            "another class stays"
        );
        assert_eq!(kept[2].bbox, [50.0, 50.0, 60.0, 60.0]);
        assert_eq!(weighted_nms(vec![detection(0, 0.5, [0.0; 4]); 3], 0.3, 1).len(), 1);
    }

    proptest::proptest! {
        /// Whatever a model emits, every decoder returns detections or an error, never panics.
        #[test]
        fn any_output_decodes_or_is_refused(
            kind in 0usize..5,
            dims in proptest::collection::vec(-1i64..12, 0..5),
            values in proptest::collection::vec(proptest::num::f32::ANY, 0..200),
        ) {
            let table = [
                YOLO.to_string(),
                YOLO.replace("objectness = true", "grid_strides = [4, 8]\nsigmoid = true"),
                "kind = \"boxes-scores\"\nboxes = \"b\"\nscores = \"s\"\nactivation = \"softmax\"\n\
                 background_column = 0\nscore_threshold = 0.0\nclass_names = [\"a\"]\n".into(),
                "kind = \"detections\"\noutput = \"o\"\nscore_threshold = 0.0\nnms = \"class-agnostic\"\n\
                 class_names = [\"a\", \"b\"]\n".into(),
                BLAZEFACE.replace("score_threshold = 0.5", "score_threshold = 0.0"),
            ];
            let decoder = decoder(&table[kind]);
            let tensors: Vec<Tensor> = decoder.outputs().iter().map(|_| tensor(&dims, values.clone())).collect();
            if let Ok(found) = decoder.decode(&tensors) {
                proptest::prop_assert!(found.iter().all(|d| d.score >= 0.0 && (d.class_id as usize) < 2));
            }
        }
    }
}
