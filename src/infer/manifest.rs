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

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DecoderSpec {
    /// NanoDet's generalised-focal-loss head: per stride, class scores (sigmoid applied) and
    /// per-side distance distributions over `reg_max + 1` bins.
    NanodetGfl {
        strides: Vec<u32>,
        reg_max: usize,
        /// Per stride, the output holding class scores `[1, cells, classes]`.
        score_outputs: Vec<String>,
        /// Per stride, the output holding box distributions `[1, cells, 4 * (reg_max + 1)]`.
        box_outputs: Vec<String>,
        score_threshold: f32,
        nms_iou_threshold: f32,
        #[serde(default = "default_max_detections")]
        max_detections: usize,
        class_names: Vec<String>,
    },
    /// One appearance vector per input image: output `[batch, dimension]`.
    Embedding { output: String, dimension: usize },
}

impl DecoderSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            DecoderSpec::NanodetGfl { .. } => "nanodet-gfl",
            DecoderSpec::Embedding { .. } => "embedding",
        }
    }

    pub fn class_names(&self) -> &[String] {
        match self {
            DecoderSpec::NanodetGfl { class_names, .. } => class_names,
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
    fn beside(&self, file: &Path) -> PathBuf {
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
        match &self.decoder {
            DecoderSpec::NanodetGfl {
                strides,
                reg_max,
                score_outputs,
                box_outputs,
                score_threshold,
                nms_iou_threshold,
                class_names,
                ..
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
                if class_names.is_empty() {
                    return Err("decoder.class_names must list the model's classes".into());
                }
                if !(0.0..=1.0).contains(score_threshold) || !(0.0..=1.0).contains(nms_iou_threshold) {
                    return Err("decoder thresholds must lie in 0..=1".into());
                }
                if input.max_batch != 1 {
                    return Err("a detector analyses one frame per run: input.max_batch must be 1".into());
                }
            }
            DecoderSpec::Embedding { dimension, .. } => {
                if *dimension == 0 {
                    return Err("decoder.dimension must be positive".into());
                }
            }
        }
        Ok(())
    }
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
        let err = Manifest::load(&write(dir.path(), &EMBEDDER.replace("\"embedding\"\n", "\"yolo\"\n")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("yolo"), "{err}");
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
