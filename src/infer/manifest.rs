//! Model manifests: the TOML file beside each ONNX file that says everything the node must know
//! to feed the model and read its outputs. The code holds decoders; a model's names, shapes and
//! numbers live only here, so a new model is a file plus a manifest, never a recompile.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: ModelSection,
    pub input: InputSpec,
    pub decoder: DecoderSpec,
    /// Embedders: the projection the compact codecs (pca-int8, binary) use.
    #[serde(default)]
    pub projection: Option<ProjectionSpec>,
    /// The manifest file itself, for error messages and relative paths.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Stable name, copied into every descriptor (e.g. "nanodet-g-416").
    pub id: String,
    pub version: String,
    /// The ONNX file, relative to the manifest.
    pub file: PathBuf,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub license: String,
}

/// A projection of the embedding learned offline (see `scripts/learn-projection.sh`), shipped as a
/// safetensors file beside the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionSpec {
    /// Named in every projected embedding (`Embedding.projection_id`): change it whenever the file
    /// changes, since codes of different projections cannot be compared.
    pub id: String,
    /// Relative to the manifest.
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the model's image input.
    pub name: String,
    pub layout: Layout,
    pub width: u32,
    pub height: u32,
    /// Order of the three colour channels the model expects.
    pub channels: ChannelOrder,
    pub resize: ResizeMode,
    /// Each 0..255 pixel value is multiplied by this first (e.g. 1/255 for models trained on 0..1).
    #[serde(default = "one")]
    pub pixel_scale: f32,
    /// Then `(value - mean[c]) / std[c]`, per channel in the order of `channels`.
    #[serde(default)]
    pub mean: [f32; 3],
    #[serde(default = "ones")]
    pub std: [f32; 3],
    /// Most images per run; more than 1 needs a dynamic batch dimension in the model.
    #[serde(default = "one_usize")]
    pub max_batch: usize,
    #[serde(default)]
    pub element_type: ElementType,
}

/// The element type of the image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElementType {
    #[default]
    Float32,
    /// Raw 0..255 pixel values: graphs that normalise (and often resize) inside.
    Uint8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Keep the aspect ratio, image at the top-left, pad the rest (with the normalised zero).
    Letterbox,
    /// Fill the whole input, distorting the aspect ratio.
    Stretch,
}

/// How a model's outputs are read: an object detector's head and what every detector shares, or
/// an embedding. `[decoder]` in the manifest: `kind` picks the head, the other keys are the
/// head's plus the shared ones ([`Selection`]).
#[derive(Debug, Clone)]
pub enum DecoderSpec {
    Detector {
        head: Head,
        selection: SelectionSpec,
    },
    /// One appearance vector per input image: output `[batch, dimension]`.
    Embedding {
        output: String,
        dimension: usize,
    },
}

/// The output layout of a detector.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Head {
    /// NanoDet's generalised-focal-loss head: per stride, class scores (sigmoid applied) and
    /// per-side distance distributions over `reg_max + 1` bins.
    NanodetGfl {
        strides: Vec<u32>,
        reg_max: usize,
        /// Per stride, the output holding class scores `[1, cells, classes]`.
        score_outputs: Vec<String>,
        /// Per stride, the output holding box distributions `[1, cells, 4 * (reg_max + 1)]`.
        box_outputs: Vec<String>,
    },
    /// YOLOv5/v8/YOLOX-style dense candidates: per candidate 4 box values, an optional
    /// objectness, then one score per class. NMS runs in the node.
    Yolo {
        output: String,
        /// `rows`: `[1, candidates, values]`; `columns`: `[1, values, candidates]` (YOLOv8).
        orientation: Orientation,
        /// An objectness value follows the box; a candidate's score is objectness x class score.
        #[serde(default)]
        objectness: bool,
        /// The graph emits logits: the node applies the sigmoid to objectness and class scores.
        #[serde(default)]
        sigmoid: bool,
        #[serde(rename = "box", default = "cxcywh")]
        box_format: BoxOrder,
        #[serde(default)]
        coordinates: Coordinates,
        /// Empty: boxes are decoded in the graph. Otherwise a YOLOX raw head: candidates are the
        /// cells of each stride's grid in turn (row-major), `cx = (raw + x) * stride`,
        /// `w = exp(raw) * stride`.
        #[serde(default)]
        grid_strides: Vec<u32>,
    },
    /// SSD-style: a box tensor and a score tensor, one row per anchor; boxes decoded in the graph,
    /// or offsets against priors shipped beside the manifest. NMS runs in the node.
    BoxesScores {
        /// `[1, anchors, 4]` or `[1, anchors, 1, 4]`.
        boxes: String,
        /// `[1, anchors, columns]`.
        scores: String,
        #[serde(default = "xyxy")]
        box_order: BoxOrder,
        #[serde(default = "normalized")]
        coordinates: Coordinates,
        #[serde(default)]
        activation: Activation,
        /// A column holding the background score: dropped after the activation; the remaining
        /// columns are the classes, in order.
        #[serde(default)]
        background_column: Option<usize>,
        /// A safetensors file beside the manifest with one f32 tensor `priors` `[anchors, 4]` =
        /// (cx, cy, w, h): the box output then holds SSD offsets in `box_order` order.
        #[serde(default)]
        priors: Option<PathBuf>,
        #[serde(default = "default_variances")]
        prior_variances: [f32; 4],
        /// Set by `kind = "blazeface"` only (never by a `boxes-scores` manifest): the boxes are
        /// offsets against anchors generated on a grid, and `boxes` and `scores` name the first
        /// layer's outputs. BlazeFace is an SSD head like this one; it shares the variant because
        /// `model.rs`'s load-time check matches every head by name, and sees the first layer.
        #[serde(skip)]
        anchor_grid: Option<Box<AnchorGrid>>,
    },
    /// NMS already in the graph: either one output of rows (`output` + `columns`), or separate
    /// `boxes` `[1, k, 4]`, `scores` `[1, k]`, optional `classes` `[1, k]` and `count` `[1]`
    /// outputs as in TensorFlow Object Detection exports.
    Detections {
        #[serde(default)]
        output: Option<String>,
        /// What each column of a row is.
        #[serde(default)]
        columns: Option<Vec<Column>>,
        #[serde(default)]
        boxes: Option<String>,
        #[serde(default)]
        scores: Option<String>,
        #[serde(default)]
        classes: Option<String>,
        #[serde(default)]
        count: Option<String>,
        #[serde(default = "xyxy")]
        box_order: BoxOrder,
        #[serde(default)]
        coordinates: Coordinates,
    },
}

impl Head {
    pub fn kind(&self) -> &'static str {
        match self {
            Head::NanodetGfl { .. } => "nanodet-gfl",
            Head::Yolo { .. } => "yolo",
            Head::BoxesScores {
                anchor_grid: Some(_), ..
            } => "blazeface",
            Head::BoxesScores { .. } => "boxes-scores",
            Head::Detections { .. } => "detections",
        }
    }

    /// NMS when the manifest does not say: graphs with NMS inside need none.
    fn default_nms(&self) -> Nms {
        match self {
            Head::Detections { .. } => Nms::None,
            Head::BoxesScores {
                anchor_grid: Some(_), ..
            } => Nms::Weighted,
            _ => Nms::PerClass,
        }
    }
}

/// A BlazeFace-style SSD head (MediaPipe's `SsdAnchorsCalculator` with a fixed anchor size, and
/// its `TensorsToDetectionsCalculator`), `kind = "blazeface"` in a manifest. Per layer, a grid of
/// `ceil(width / stride) x ceil(height / stride)` cells, row-major, each with
/// `anchors_per_cell` anchors centred at `((x + 0.5) / grid_w, (y + 0.5) / grid_h)` (fractions of
/// the input); the layers follow each other. Scores are logits (the node applies the sigmoid),
/// one column per class. A box row starts `dx, dy, w, h` (then keypoints, ignored), in pixels of
/// a `box_scale`-sized input: centre = anchor + (dx, dy) / box_scale, size = (w, h) / box_scale.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorGrid {
    /// Input pixels per grid cell, one per layer.
    pub strides: Vec<u32>,
    /// Anchors per cell, one per layer.
    pub anchors_per_cell: Vec<u32>,
    /// What the regression values are divided by to become fractions of the input.
    pub box_scale: f32,
    /// Score outputs `[1, anchors, classes]`: one per layer, or fewer holding several layers'
    /// anchors in a row (MediaPipe's own exports have one for all); read in order.
    pub score_outputs: Vec<String>,
    /// Box outputs `[1, anchors, values]`, as `score_outputs`.
    pub box_outputs: Vec<String>,
}

/// The most anchors a grid may generate: far more than any detector has (BlazeFace: 896), few
/// enough that a mistyped stride of 1 on a large input is refused rather than allocated.
pub const MAX_ANCHORS: usize = 1 << 20;

impl AnchorGrid {
    /// Anchors per layer, or why the grid is wrong.
    pub fn layer_sizes(&self, width: u32, height: u32) -> std::result::Result<Vec<usize>, String> {
        if self.strides.is_empty() || self.strides.contains(&0) {
            return Err("decoder.strides must be non-empty and positive".into());
        }
        if self.anchors_per_cell.len() != self.strides.len() || self.anchors_per_cell.contains(&0) {
            return Err(format!(
                "decoder.anchors_per_cell needs one positive count per stride ({} strides, {} counts)",
                self.strides.len(),
                self.anchors_per_cell.len()
            ));
        }
        if !(self.box_scale.is_finite() && self.box_scale > 0.0) {
            return Err("decoder.box_scale must be finite and positive".into());
        }
        let mut sizes = Vec::with_capacity(self.strides.len());
        let mut total = 0usize;
        for (&stride, &per_cell) in self.strides.iter().zip(&self.anchors_per_cell) {
            let cells = u64::from(width.div_ceil(stride)) * u64::from(height.div_ceil(stride));
            let anchors = cells.saturating_mul(u64::from(per_cell));
            total = total.saturating_add(usize::try_from(anchors).unwrap_or(usize::MAX));
            if total > MAX_ANCHORS {
                return Err(format!("decoder: the grid gives over {MAX_ANCHORS} anchors"));
            }
            sizes.push(anchors as usize);
        }
        Ok(sizes)
    }
}

/// What every detector shares: its classes, and which candidates become detections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionSpec {
    /// The node's classes: a detection's class id is its position in this list.
    pub class_names: Vec<String>,
    /// The model's own class for each name (its score column, or the value of its class output),
    /// for maps with gaps or offsets such as COCO's 90 ids; absent: the position itself. Model
    /// classes not listed are dropped.
    #[serde(default)]
    pub class_ids: Option<Vec<i64>>,
    pub score_threshold: f32,
    #[serde(default)]
    pub nms: Option<Nms>,
    #[serde(default = "default_nms_iou")]
    pub nms_iou_threshold: f32,
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
}

/// Every `kind` of `[decoder]`.
const DECODER_KINDS: [&str; 6] = [
    "nanodet-gfl",
    "yolo",
    "boxes-scores",
    "detections",
    "blazeface",
    "embedding",
];

/// The keys of `[decoder]` that belong to [`SelectionSpec`] rather than to the head.
const SELECTION_KEYS: [&str; 6] = [
    "class_names",
    "class_ids",
    "score_threshold",
    "nms",
    "nms_iou_threshold",
    "max_detections",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingSpec {
    output: String,
    dimension: usize,
}

impl<'de> Deserialize<'de> for DecoderSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = table.get("kind").and_then(toml::Value::as_str).map(str::to_owned);
        if let Some(kind) = kind.as_deref()
            && !DECODER_KINDS.contains(&kind)
        {
            return Err(D::Error::custom(format!(
                "unknown decoder kind {}: expected one of {}",
                crate::error::quoted(kind),
                DECODER_KINDS.join(", ")
            )));
        }
        if kind.as_deref() == Some("embedding") {
            table.remove("kind");
            let EmbeddingSpec { output, dimension } = table.try_into().map_err(D::Error::custom)?;
            return Ok(DecoderSpec::Embedding { output, dimension });
        }
        let mut shared = toml::Table::new();
        for key in SELECTION_KEYS {
            if let Some(value) = table.remove(key) {
                shared.insert(key.to_string(), value);
            }
        }
        let head: Head = if kind.as_deref() == Some("blazeface") {
            table.remove("kind");
            let grid: AnchorGrid = table.try_into().map_err(D::Error::custom)?;
            let first = |names: &[String]| names.first().cloned().unwrap_or_default();
            Head::BoxesScores {
                boxes: first(&grid.box_outputs),
                scores: first(&grid.score_outputs),
                box_order: BoxOrder::Cxcywh,
                coordinates: Coordinates::Normalized,
                activation: Activation::Sigmoid,
                background_column: None,
                priors: None,
                prior_variances: default_variances(),
                anchor_grid: Some(Box::new(grid)),
            }
        } else {
            table.try_into().map_err(D::Error::custom)?
        };
        let mut selection: SelectionSpec = shared.try_into().map_err(D::Error::custom)?;
        selection.nms.get_or_insert(head.default_nms());
        Ok(DecoderSpec::Detector { head, selection })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nms {
    None,
    /// Overlapping boxes of one class: the best stays.
    PerClass,
    /// Overlapping boxes of any classes: the best stays (models that report one object under
    /// two classes, such as car and truck).
    ClassAgnostic,
    /// Overlapping boxes of one class become one: their score-weighted mean box, with the best
    /// score (MediaPipe's weighted NMS: BlazeFace puts many anchors on one face, and their mean
    /// is a steadier box than any one of them).
    Weighted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Orientation {
    Rows,
    Columns,
}

/// The order of a box's four values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoxOrder {
    Xyxy,
    /// `[ymin, xmin, ymax, xmax]` (TensorFlow).
    Yxyx,
    Cxcywh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Coordinates {
    /// Pixels of the model's input.
    #[default]
    Pixels,
    /// Fractions of the input's width and height.
    #[serde(alias = "normalised")]
    Normalized,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    None,
    Sigmoid,
    /// Over each anchor's columns (background included).
    Softmax,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Column {
    X1,
    Y1,
    X2,
    Y2,
    Score,
    Class,
    Ignore,
}

impl DecoderSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            DecoderSpec::Detector { head, .. } => head.kind(),
            DecoderSpec::Embedding { .. } => "embedding",
        }
    }

    pub fn class_names(&self) -> &[String] {
        match self {
            DecoderSpec::Detector { selection, .. } => &selection.class_names,
            DecoderSpec::Embedding { .. } => &[],
        }
    }
}

fn one() -> f32 {
    1.0
}
fn ones() -> [f32; 3] {
    [1.0; 3]
}
fn one_usize() -> usize {
    1
}
fn default_max_detections() -> usize {
    100
}
fn default_nms_iou() -> f32 {
    0.5
}
fn default_variances() -> [f32; 4] {
    [0.1, 0.1, 0.2, 0.2]
}
fn cxcywh() -> BoxOrder {
    BoxOrder::Cxcywh
}
fn xyxy() -> BoxOrder {
    BoxOrder::Xyxy
}
fn normalized() -> Coordinates {
    Coordinates::Normalized
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading model manifest {}", path.display()), e))?;
        let bad = |message: String| Error::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let mut manifest: Manifest = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        manifest.path = path.to_path_buf();
        manifest.check().map_err(bad)?;
        Ok(manifest)
    }

    /// The ONNX file the manifest describes.
    pub fn model_path(&self) -> PathBuf {
        self.beside(&self.model.file)
    }

    /// The projection the manifest names, with the path of its file.
    pub fn projection(&self) -> Option<(&ProjectionSpec, PathBuf)> {
        self.projection.as_ref().map(|spec| (spec, self.beside(&spec.file)))
    }

    /// A file named by the manifest: relative to the manifest's directory.
    pub fn beside(&self, file: &Path) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(file)
    }

    /// Checks that can be made without opening the model.
    fn check(&self) -> std::result::Result<(), String> {
        let input = &self.input;
        if self.model.id.trim().is_empty() {
            return Err("model.id must not be empty".into());
        }
        if !(1..=8192).contains(&input.width) || !(1..=8192).contains(&input.height) {
            return Err(format!("input size {}x{} is out of range", input.width, input.height));
        }
        if input.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err("input.std must be finite and non-zero".into());
        }
        if input.max_batch == 0 || input.max_batch > 256 {
            return Err(format!("input.max_batch = {} (expected 1..=256)", input.max_batch));
        }
        if input.element_type == ElementType::Uint8
            && (input.pixel_scale != 1.0 || input.mean != [0.0; 3] || input.std != [1.0; 3])
        {
            return Err("a uint8 input takes raw pixel values: leave pixel_scale, mean and std out".into());
        }
        match &self.decoder {
            DecoderSpec::Detector { head, selection } => {
                check_head(head)?;
                if let Head::BoxesScores {
                    anchor_grid: Some(grid),
                    ..
                } = head
                {
                    grid.layer_sizes(input.width, input.height)?;
                }
                check_selection(selection)?;
                if input.max_batch != 1 {
                    return Err("a detector analyses one frame per run: input.max_batch must be 1".into());
                }
            }
            DecoderSpec::Embedding { dimension, .. } => {
                if *dimension == 0 {
                    return Err("decoder.dimension must be positive".into());
                }
                if input.element_type != ElementType::Float32 {
                    return Err("an embedder's input must be float32".into());
                }
            }
        }
        Ok(())
    }
}

fn check_head(head: &Head) -> std::result::Result<(), String> {
    match head {
        Head::NanodetGfl {
            strides,
            reg_max,
            score_outputs,
            box_outputs,
        } => {
            if strides.is_empty() || strides.contains(&0) {
                return Err("decoder.strides must be non-empty and positive".into());
            }
            if score_outputs.len() != strides.len() || box_outputs.len() != strides.len() {
                return Err(format!(
                    "decoder: {} strides but {} score_outputs and {} box_outputs (one each per stride)",
                    strides.len(),
                    score_outputs.len(),
                    box_outputs.len()
                ));
            }
            if *reg_max == 0 || *reg_max > 64 {
                return Err(format!("decoder.reg_max = {reg_max} (expected 1..=64)"));
            }
        }
        Head::Yolo { grid_strides, .. } => {
            if grid_strides.contains(&0) {
                return Err("decoder.grid_strides must be positive".into());
            }
        }
        Head::BoxesScores {
            anchor_grid: Some(grid),
            ..
        } => {
            if grid.score_outputs.is_empty() || grid.score_outputs.len() != grid.box_outputs.len() {
                return Err(format!(
                    "decoder: {} score_outputs and {} box_outputs (as many of each, at least one)",
                    grid.score_outputs.len(),
                    grid.box_outputs.len()
                ));
            }
        }
        Head::BoxesScores { prior_variances, .. } => {
            if prior_variances.iter().any(|v| !v.is_finite()) {
                return Err("decoder.prior_variances must be finite".into());
            }
        }
        Head::Detections {
            output,
            columns,
            boxes,
            scores,
            classes,
            count,
            ..
        } => match (output, boxes, scores) {
            (Some(_), None, None) => {
                if classes.is_some() || count.is_some() {
                    return Err("decoder: classes and count go with boxes and scores, not with output".into());
                }
                let columns = columns.as_deref().unwrap_or(&DEFAULT_COLUMNS);
                for needed in [Column::X1, Column::Y1, Column::X2, Column::Y2, Column::Score] {
                    if columns.iter().filter(|&&c| c == needed).count() != 1 {
                        return Err(format!("decoder.columns must name {needed:?} exactly once").to_lowercase());
                    }
                }
                if columns.iter().filter(|&&c| c == Column::Class).count() > 1 {
                    return Err("decoder.columns names class more than once".into());
                }
            }
            (None, Some(_), Some(_)) => {
                if columns.is_some() {
                    return Err("decoder.columns goes with output, not with boxes and scores".into());
                }
            }
            _ => {
                return Err(
                    "decoder: a detections decoder reads either output (rows) or boxes and scores (separate outputs)"
                        .into(),
                );
            }
        },
    }
    Ok(())
}

/// The columns of a detections row when the manifest does not list them.
pub const DEFAULT_COLUMNS: [Column; 6] = [
    Column::X1,
    Column::Y1,
    Column::X2,
    Column::Y2,
    Column::Score,
    Column::Class,
];

fn check_selection(selection: &SelectionSpec) -> std::result::Result<(), String> {
    if selection.class_names.is_empty() {
        return Err("decoder.class_names must list the model's classes".into());
    }
    if let Some(ids) = &selection.class_ids {
        if ids.len() != selection.class_names.len() {
            return Err(format!(
                "decoder.class_ids has {} entries for {} class_names (one model class per name)",
                ids.len(),
                selection.class_names.len()
            ));
        }
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) || sorted.first().is_some_and(|&id| id < 0) {
            return Err("decoder.class_ids must be distinct and not negative".into());
        }
    }
    let (score, iou) = (selection.score_threshold, selection.nms_iou_threshold);
    if !(0.0..=1.0).contains(&score) || !(0.0..=1.0).contains(&iou) {
        return Err("decoder thresholds must lie in 0..=1".into());
    }
    if selection.max_detections == 0 {
        return Err("decoder.max_detections must be positive".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("m.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const EMBEDDER: &str = r#"
        [model]
        id = "e"
        version = "1"
        file = "e.onnx"
        [input]
        name = "input"
        layout = "nchw"
        width = 224
        height = 224
        channels = "rgb"
        resize = "stretch"
        max_batch = 8
        [decoder]
        kind = "embedding"
        output = "embedding"
        dimension = 1280
    "#;

    #[test]
    fn parses_and_resolves_the_model_file_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = Manifest::load(&write(dir.path(), EMBEDDER)).unwrap();
        assert_eq!(manifest.model_path(), dir.path().join("e.onnx"));
        assert_eq!(manifest.decoder.kind(), "embedding");
        assert_eq!(manifest.input.std, [1.0; 3]);
    }

    #[test]
    fn unknown_decoder_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::load(&write(
            dir.path(),
            &EMBEDDER.replace("\"embedding\"\n", "\"yolo-v9\"\n"),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("yolo-v9") && err.contains("boxes-scores"), "{err}");
        // A known head with a key of another: the key is named.
        let err = Manifest::load(&write(dir.path(), &EMBEDDER.replace("\"embedding\"\n", "\"yolo\"\n")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dimension") || err.contains("orientation"), "{err}");
        let err = Manifest::load(&write(
            dir.path(),
            &EMBEDDER.replace("layout = \"nchw\"", "layout = \"chw\""),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("chw") && err.contains("m.toml"), "{err}");
    }

    #[test]
    fn the_fuzzed_manifests_load_before_they_are_changed() {
        for shipped in [
            include_str!("../../models/nanodet-g-416.toml"),
            include_str!("../../models/mobilenetv2-1280.toml"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("model.toml");
            std::fs::write(&path, shipped).unwrap();
            Manifest::load(&path).unwrap();
        }
    }

    #[test]
    fn blazeface_manifests_name_their_anchor_grid_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = include_str!("../../models/blazeface-back-256.toml");
        let manifest = Manifest::load(&write(dir.path(), shipped)).unwrap();
        assert_eq!(manifest.decoder.kind(), "blazeface");
        let DecoderSpec::Detector { head, selection } = &manifest.decoder else {
            panic!("a detector");
        };
        assert_eq!(selection.nms, Some(Nms::Weighted));
        let Head::BoxesScores {
            boxes,
            scores,
            anchor_grid: Some(grid),
            ..
        } = head
        else {
            panic!("{head:?}");
        };
        // What the load-time check of model.rs sees: the first layer's outputs.
        assert_eq!((boxes.as_str(), scores.as_str()), ("Identity_2:0", "Identity:0"));
        assert_eq!(grid.layer_sizes(256, 256).unwrap(), vec![512, 384]);
        for (from, to, named) in [
            ("box_scale = 256.0", "box_scale = 256.0\nboxes = \"x\"", "boxes"),
            (
                "anchors_per_cell = [2, 6]",
                "anchors_per_cell = [2]",
                "anchors_per_cell",
            ),
            (
                "anchors_per_cell = [2, 6]",
                "anchors_per_cell = [2, 0]",
                "anchors_per_cell",
            ),
            ("strides = [16, 32]", "strides = [0, 32]", "strides"),
            ("box_scale = 256.0", "box_scale = -1.0", "box_scale"),
            ("box_scale = 256.0", "box_scale = nan", "box_scale"),
            (
                "box_outputs = [\"Identity_2:0\", \"Identity_3:0\"]",
                "box_outputs = []",
                "box_outputs",
            ),
            ("kind = \"blazeface\"", "kind = \"blaze\"", "blazeface"),
        ] {
            assert!(shipped.contains(from), "{from}");
            let err = Manifest::load(&write(dir.path(), &shipped.replace(from, to)))
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{to}: {err}");
        }
        // An 8192-pixel input at stride 1 would be 67 M anchors: refused, not allocated.
        let huge = shipped
            .replace("width = 256", "width = 8192")
            .replace("height = 256", "height = 8192");
        assert!(Manifest::load(&write(dir.path(), &huge.replace("[16, 32]", "[1, 32]"))).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// The face detector's manifest too: any value anywhere loads (and makes a decoder) or
        /// is refused clearly.
        #[test]
        fn any_value_in_a_face_manifest_loads_or_is_refused_clearly(
            index in 0usize..60,
            value in crate::fuzz::toml_value(),
        ) {
            let shipped = include_str!("../../models/blazeface-back-256.toml");
            let text = crate::fuzz::with_value_replaced(shipped, index, &value);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("model.toml");
            std::fs::write(&path, text).unwrap();
            match Manifest::load(&path) {
                Ok(manifest) => {
                    if let Err(err) = crate::infer::decode::Decoder::from_manifest(&manifest) {
                        proptest::prop_assert!(!err.to_string().is_empty());
                    }
                }
                Err(err) => proptest::prop_assert!(!err.to_string().is_empty()),
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// An integrator's manifest with any value in any field loads or says what is wrong.
        #[test]
        fn any_value_in_a_manifest_loads_or_is_refused_clearly(
            which: bool,
            index in 0usize..100,
            value in crate::fuzz::toml_value(),
            at in 0usize..3000,
            damage: bool,
        ) {
            let shipped = if which {
                include_str!("../../models/nanodet-g-416.toml")
            } else {
                include_str!("../../models/mobilenetv2-1280.toml")
            };
            let text = crate::fuzz::with_value_replaced(shipped, index, &value);
            let text = if damage { crate::fuzz::damaged(&text, at, at % 2 == 0) } else { text };
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("model.toml");
            std::fs::write(&path, text).unwrap();
            if let Err(err) = Manifest::load(&path) {
                proptest::prop_assert!(!err.to_string().is_empty());
            }
        }
    }
}
