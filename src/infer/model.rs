//! Loading an ONNX model into an ONNX Runtime session, and refusing it when it does not match
//! its manifest.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, ValueType};
use sha2::{Digest, Sha256};

use super::manifest::{DecoderSpec, ElementType, Head, Layout, Manifest};
use crate::error::{Error, Result};

/// Thread settings shared by every session of the node.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    pub intra_op_threads: usize,
    pub allow_spinning: bool,
    /// ONNX Runtime's CPU memory arena and memory patterns: each session then keeps the peak
    /// activation memory of every input shape it has run (the embedder at batch 8: ~100 MB).
    pub memory_arena: bool,
}

/// ONNX Runtime is loaded once per process; the first library path wins.
static ENVIRONMENT: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();

pub fn environment(library: &Path) -> Result<&'static ort::environment::Environment> {
    if let Some((loaded, env)) = ENVIRONMENT.get() {
        if loaded != library {
            tracing::warn!(loaded = %loaded.display(), requested = %library.display(),
                "ONNX Runtime is already loaded in this process; keeping the first library");
        }
        return Ok(env);
    }
    let fail = |message: String| Error::RuntimeLibrary {
        path: library.to_path_buf(),
        message,
    };
    if !library.is_file() {
        return Err(fail(
            "no such file (run `make deps` to fetch it, or set inference.onnxruntime_library)".into(),
        ));
    }
    let env = ort::init_from(library)
        .map_err(|e| fail(e.to_string()))?
        .with_name("retina-edge")
        .build()
        .map_err(|e| fail(e.to_string()))?;
    Ok(&ENVIRONMENT.get_or_init(|| (library.to_path_buf(), env)).1)
}

/// What the centre and the logs are told about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelCard {
    pub id: String,
    pub version: String,
    pub decoder: String,
    pub sha256: String,
    pub input_shape: Vec<i64>,
    pub class_names: Vec<String>,
}

/// A model file read and verified once; sessions are opened from it per worker.
pub struct ModelFile {
    pub manifest: Manifest,
    pub card: ModelCard,
    /// `None` once released (see `release_bytes`).
    bytes: Option<Vec<u8>>,
}

/// The hex sha256 by which model files (and projections beside them) are reported.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
}

impl ModelFile {
    /// Reads the manifest's ONNX file, opens it once to check it against the manifest.
    pub fn load(manifest: Manifest, env: &ort::environment::Environment, options: SessionOptions) -> Result<ModelFile> {
        let path = manifest.model_path();
        let bytes = std::fs::read(&path).map_err(|e| Error::io(format!("reading model {}", path.display()), e))?;
        let sha256 = sha256_hex(&bytes);
        let input = &manifest.input;
        let (channel_dim, h, w) = (3, i64::from(input.height), i64::from(input.width));
        let input_shape = match input.layout {
            Layout::Nchw => vec![input.max_batch as i64, channel_dim, h, w],
            Layout::Nhwc => vec![input.max_batch as i64, h, w, channel_dim],
        };
        let card = ModelCard {
            id: manifest.model.id.clone(),
            version: manifest.model.version.clone(),
            decoder: manifest.decoder.kind().to_string(),
            sha256,
            input_shape,
            class_names: manifest.decoder.class_names().to_vec(),
        };
        let model = ModelFile {
            manifest,
            card,
            bytes: Some(bytes),
        };
        let session = model.open_session(env, options)?;
        verify(&model.manifest, &path, &session)?;
        Ok(model)
    }

    /// Drops the file's bytes: no session can be opened from it afterwards.
    pub fn release_bytes(&mut self) {
        self.bytes = None;
    }

    pub fn open_session(&self, env: &ort::environment::Environment, options: SessionOptions) -> Result<Session> {
        let path = self.manifest.model_path();
        let fail = |message: String| Error::ModelLoad {
            path: path.clone(),
            message,
        };
        let Some(bytes) = &self.bytes else {
            return Err(fail(
                "the model's bytes were released after start-up; load the model again".into(),
            ));
        };
        let spin = if options.allow_spinning { "1" } else { "0" };
        Session::builder(env)
            .and_then(|b| {
                b.with_optimization_level(GraphOptimizationLevel::All)
                    .map_err(Into::into)
            })
            .and_then(|b| b.with_intra_threads(options.intra_op_threads).map_err(Into::into))
            .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
            .and_then(|b| {
                b.with_config_entry("session.intra_op.allow_spinning", spin)
                    .map_err(Into::into)
            })
            .and_then(|b| {
                b.with_config_entry("session.inter_op.allow_spinning", spin)
                    .map_err(Into::into)
            })
            .and_then(|b| {
                if options.memory_arena {
                    return Ok(b);
                }
                // Without the arena every run allocates its activations from the system allocator
                // and gives them back: nothing is kept per shape between runs.
                b.with_memory_pattern(false)?
                    .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
                    .map_err(Into::into)
            })
            .and_then(|mut b| b.commit_from_memory(bytes))
            .map_err(|e: ort::Error| fail(e.to_string()))
    }
}

/// Compares the session's inputs and outputs with what the manifest promises, and lists every
/// difference, so an integrator fixes them all in one go.
fn verify(manifest: &Manifest, path: &Path, session: &Session) -> Result<()> {
    let mut differences = Vec::new();
    let input = &manifest.input;
    match session.inputs().iter().find(|i| i.name() == input.name) {
        None => differences.push(format!(
            "input {:?} named in the manifest is not in the model (model inputs: {})",
            input.name,
            names(session.inputs().iter().map(|i| i.name()))
        )),
        Some(model_input) => {
            let (h, w) = (i64::from(input.height), i64::from(input.width));
            let expected = match input.layout {
                Layout::Nchw => [None, Some(3), Some(h), Some(w)],
                Layout::Nhwc => [None, Some(h), Some(w), Some(3)],
            };
            let element = match input.element_type {
                ElementType::Float32 => TensorElementType::Float32,
                ElementType::Uint8 => TensorElementType::Uint8,
            };
            check_tensor(
                &mut differences,
                "input",
                &input.name,
                model_input.dtype(),
                &[element],
                Some(&expected),
            );
            if let Some(shape) = model_input.dtype().tensor_shape()
                && shape.len() == 4
                && shape[0] > 0
                && (shape[0] as usize) < input.max_batch
            {
                differences.push(format!(
                    "input {:?} has a fixed batch of {} but the manifest's max_batch is {}",
                    input.name, shape[0], input.max_batch
                ));
            }
        }
    }
    const FLOAT: &[TensorElementType] = &[TensorElementType::Float32];
    const NUMBER: &[TensorElementType] = &[
        TensorElementType::Float32,
        TensorElementType::Int64,
        TensorElementType::Int32,
    ];
    let mut expect_output = |name: &str, types: &[TensorElementType], expected: Option<&[Option<i64>]>| match session
        .outputs()
        .iter()
        .find(|o| o.name() == name)
    {
        None => differences.push(format!(
            "output {name:?} named in the manifest is not in the model (model outputs: {})",
            names(session.outputs().iter().map(|o| o.name()))
        )),
        Some(output) => check_tensor(&mut differences, "output", name, output.dtype(), types, expected),
    };
    // Shapes the manifest implies are checked here; the rest, which depends on the run, when the
    // node warms the model up with one run before it takes frames.
    match &manifest.decoder {
        DecoderSpec::Detector { head, selection } => match head {
            Head::NanodetGfl {
                strides,
                reg_max,
                score_outputs,
                box_outputs,
            } => {
                // With a class map, the model may have more columns than the node names.
                let classes = selection
                    .class_ids
                    .is_none()
                    .then_some(selection.class_names.len() as i64);
                for ((stride, scores), boxes) in strides.iter().zip(score_outputs).zip(box_outputs) {
                    let cells = i64::from(input.width.div_ceil(*stride) * input.height.div_ceil(*stride));
                    expect_output(scores, FLOAT, Some(&[Some(1), Some(cells), classes]));
                    expect_output(
                        boxes,
                        FLOAT,
                        Some(&[Some(1), Some(cells), Some(4 * (*reg_max as i64 + 1))]),
                    );
                }
            }
            Head::Yolo { output, .. } => expect_output(output, FLOAT, Some(&[Some(1), None, None])),
            Head::BoxesScores { boxes, scores, .. } => {
                expect_output(boxes, FLOAT, None);
                expect_output(scores, FLOAT, Some(&[Some(1), None, None]));
            }
            Head::Detections {
                output,
                boxes,
                scores,
                classes,
                count,
                ..
            } => {
                for name in [output, boxes, scores].into_iter().flatten() {
                    expect_output(name, FLOAT, None);
                }
                for name in [classes, count].into_iter().flatten() {
                    expect_output(name, NUMBER, None);
                }
            }
        },
        DecoderSpec::Embedding { output, dimension } => {
            expect_output(output, FLOAT, Some(&[None, Some(*dimension as i64)]));
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::ModelMismatch {
            path: path.to_path_buf(),
            differences,
        })
    }
}

/// `types`: the element types that will do. `expected`: per dimension, the size the manifest
/// implies, `None` = any (and no list: any shape). A dynamic model dimension (-1) matches anything.
fn check_tensor(
    differences: &mut Vec<String>,
    role: &str,
    name: &str,
    dtype: &ValueType,
    types: &[TensorElementType],
    expected: Option<&[Option<i64>]>,
) {
    if !dtype.tensor_type().is_some_and(|t| types.contains(&t)) {
        let wanted: Vec<String> = types.iter().map(|t| format!("{t:?}").to_lowercase()).collect();
        differences.push(format!(
            "{role} {name:?} is {dtype}, not a {} tensor",
            wanted.join(" or ")
        ));
        return;
    }
    let (Some(shape), Some(expected)) = (dtype.tensor_shape(), expected) else {
        return;
    };
    let fits = shape.len() == expected.len()
        && shape
            .iter()
            .zip(expected)
            .all(|(&actual, want)| actual < 0 || want.is_none_or(|w| w == actual));
    if !fits {
        let want: Vec<String> = expected
            .iter()
            .map(|d| d.map_or("?".into(), |d| d.to_string()))
            .collect();
        differences.push(format!(
            "{role} {name:?} has shape {:?} but the manifest implies [{}]",
            &shape[..],
            want.join(", ")
        ));
    }
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}
