//! One worker's models: the detector finds objects in a frame, the embedder describes the
//! objects of the configured classes, all crops of a frame in as few runs as `max_batch` allows.

use std::time::Instant;

use ndarray::Array2;
use ort::session::Session;
use ort::value::TensorRef;

use super::decode::{Decoder, RawDetection, Tensor};
use super::manifest::{DecoderSpec, ElementType, Layout};
use super::model::{ModelFile, SessionOptions};
use super::preprocess::{Rect, crop_sharpness, fill_input, item_len};
use crate::error::{Error, Result};
use crate::metrics::Timings;

/// An object found in a frame.
#[derive(Debug, Clone)]
pub struct Detection {
    pub class_id: u32,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in frame pixels, inside the frame.
    pub bbox: [f32; 4],
    /// The embedder's raw output for the object's crop (not normalised).
    pub embedding: Option<Vec<f32>>,
    /// How much fine detail the crop has ([`crop_sharpness`]); 0 for crops that were not embedded.
    pub sharpness: f32,
}

pub struct Analyzer {
    detector: Detector,
    embedder: Option<Embedder>,
    embed: EmbedFilter,
}

/// Which detections get an embedding.
struct EmbedFilter {
    /// Per detector class.
    classes: Vec<bool>,
    /// Detections scoring below this are not embedded: nothing downstream would use the vector.
    min_score: f32,
}

impl EmbedFilter {
    fn wants(&self, detection: &Detection) -> bool {
        detection.score >= self.min_score && self.classes.get(detection.class_id as usize).copied().unwrap_or(false)
    }
}

struct Detector {
    session: Session,
    model_id: String,
    input: DetectorInput,
    spec: super::manifest::InputSpec,
    decoder: Decoder,
    /// A non-finite output value is an error (the self-test; a scan too costly for every frame).
    strict: bool,
}

/// The detector's input tensor, reused across frames, in the element type its manifest names.
#[derive(Clone)]
enum DetectorInput {
    Float32(ndarray::Array4<f32>),
    Uint8(ndarray::Array4<u8>),
}

struct Embedder {
    session: Session,
    model_id: String,
    spec: super::manifest::InputSpec,
    output: String,
    dimension: usize,
    /// Reused across frames: `[max_batch, item]`.
    batch: Array2<f32>,
    strict: bool,
}

impl Analyzer {
    pub fn new(
        env: &ort::environment::Environment,
        detector: &ModelFile,
        embedder: Option<&ModelFile>,
        embed_classes: &[String],
        score_threshold: Option<f32>,
        embed_min_score: f32,
        options: SessionOptions,
    ) -> Result<Analyzer> {
        let mut decoder = Decoder::from_manifest(&detector.manifest)?.ok_or_else(|| Error::Manifest {
            path: detector.manifest.path.clone(),
            message: format!(
                "decoder {:?} cannot be used as the detector (detector decoders: nanodet-gfl, yolo, \
                 boxes-scores, detections)",
                detector.manifest.decoder.kind()
            ),
        })?;
        if let Some(threshold) = score_threshold {
            decoder.selection.score_threshold = threshold;
        }
        let class_names = detector.manifest.decoder.class_names();
        let spec = detector.manifest.input.clone();
        let shape = match spec.layout {
            Layout::Nchw => (1, 3, spec.height as usize, spec.width as usize),
            Layout::Nhwc => (1, spec.height as usize, spec.width as usize, 3),
        };
        let input = match spec.element_type {
            ElementType::Float32 => DetectorInput::Float32(ndarray::Array4::zeros(shape)),
            ElementType::Uint8 => DetectorInput::Uint8(ndarray::Array4::zeros(shape)),
        };
        let detector_stage = Detector {
            session: detector.open_session(env, options)?,
            model_id: detector.card.id.clone(),
            input,
            decoder,
            spec,
            strict: false,
        };
        let embed_class = class_names.iter().map(|name| embed_classes.contains(name)).collect();
        let embedder_stage = match embedder {
            None => None,
            Some(model) => {
                let DecoderSpec::Embedding { output, dimension } = &model.manifest.decoder else {
                    return Err(Error::Manifest {
                        path: model.manifest.path.clone(),
                        message: format!(
                            "decoder {:?} cannot be used as the embedder (embedder decoders: embedding)",
                            model.manifest.decoder.kind()
                        ),
                    });
                };
                let spec = model.manifest.input.clone();
                Some(Embedder {
                    session: model.open_session(env, options)?,
                    model_id: model.card.id.clone(),
                    batch: Array2::zeros((spec.max_batch, item_len(&spec))),
                    output: output.clone(),
                    dimension: *dimension,
                    spec,
                    strict: false,
                })
            }
        };
        Ok(Analyzer {
            detector: detector_stage,
            embedder: embedder_stage,
            embed: EmbedFilter {
                classes: embed_class,
                min_score: embed_min_score,
            },
        })
    }

    /// Runs every session once with every batch size it will see. ONNX Runtime sizes its
    /// arenas and memory plans on first use of each shape: doing it now means the node reaches
    /// its steady memory before the first frame, and no frame pays for a first-time shape.
    pub fn warm_up(&mut self) -> Result<()> {
        self.detector.input = match &self.detector.input {
            DetectorInput::Float32(a) => DetectorInput::Float32(ndarray::Array4::zeros(a.raw_dim())),
            DetectorInput::Uint8(a) => DetectorInput::Uint8(ndarray::Array4::zeros(a.raw_dim())),
        };
        self.detector.run()?;
        if let Some(embedder) = &mut self.embedder {
            embedder.batch.fill(0.0);
            let batch = std::mem::take(&mut embedder.batch);
            let result =
                (1..=batch.nrows()).try_for_each(|n| embedder.run(batch.slice(ndarray::s![..n, ..])).map(drop));
            embedder.batch = batch;
            result?;
        }
        Ok(())
    }

    /// From now on, a non-finite value in any model output is an error.
    pub fn set_strict(&mut self, strict: bool) {
        self.detector.strict = strict;
        if let Some(embedder) = &mut self.embedder {
            embedder.strict = strict;
        }
    }

    pub fn analyze(&mut self, image: &image::RgbImage) -> Result<(Vec<Detection>, Timings)> {
        let started = Instant::now();
        let mut detections = self.detector.detect(image)?;
        let mut timings = Timings {
            detector: started.elapsed(),
            ..Timings::default()
        };
        if let Some(embedder) = &mut self.embedder {
            let started = Instant::now();
            let wanted: Vec<usize> = (0..detections.len())
                .filter(|&i| self.embed.wants(&detections[i]))
                .collect();
            let crops: Vec<[f32; 4]> = wanted.iter().map(|&i| detections[i].bbox).collect();
            let vectors = embedder.embed_all(image, &crops)?;
            for (&i, vector) in wanted.iter().zip(vectors) {
                detections[i].embedding = Some(vector);
                // Only embedded crops are ever described, so only they need to be judged.
                detections[i].sharpness = crop_sharpness(image, detections[i].bbox);
            }
            timings.embedder = started.elapsed();
            timings.crops = wanted.len();
        }
        Ok((detections, timings))
    }

    /// The embedder's raw output for each box (`[x1, y1, x2, y2]`, frame pixels) of `image`,
    /// through the same crop, resize and normalisation as [`analyze`](Self::analyze); `None`
    /// without an embedder. For checking the embedder on known crops: `analyze` only embeds
    /// where its own detector finds objects.
    pub fn embed(&mut self, image: &image::RgbImage, boxes: &[[f32; 4]]) -> Result<Option<Vec<Vec<f32>>>> {
        self.embedder
            .as_mut()
            .map(|embedder| embedder.embed_all(image, boxes))
            .transpose()
    }

    /// Runs only the sessions on inputs prepared beforehand: the benchmark's physical limit.
    pub fn infer_prepared(&mut self, prepared: &Prepared) -> Result<()> {
        self.detector.input.clone_from(&prepared.detector_input);
        self.detector.run()?;
        if let Some(embedder) = &mut self.embedder {
            for batch in &prepared.crop_batches {
                embedder.run(batch.view())?;
            }
        }
        Ok(())
    }

    /// Pre-processes a frame exactly as [`analyze`](Self::analyze) would, for
    /// [`infer_prepared`](Self::infer_prepared). Runs the detector once to know the crops.
    pub fn prepare(&mut self, image: &image::RgbImage) -> Result<Prepared> {
        let detections = self.detector.detect(image)?;
        let detector_input = self.detector.input.clone();
        let mut crop_batches = Vec::new();
        if let Some(embedder) = &mut self.embedder {
            let boxes: Vec<[f32; 4]> = detections
                .iter()
                .filter(|d| self.embed.wants(d))
                .map(|d| d.bbox)
                .collect();
            for chunk in boxes.chunks(embedder.spec.max_batch) {
                embedder.fill(image, chunk);
                crop_batches.push(embedder.batch.slice(ndarray::s![..chunk.len(), ..]).to_owned());
            }
        }
        Ok(Prepared {
            detector_input,
            crop_batches,
        })
    }

    pub fn detector_id(&self) -> &str {
        &self.detector.model_id
    }

    pub fn embedder_id(&self) -> Option<&str> {
        self.embedder.as_ref().map(|e| e.model_id.as_str())
    }
}

/// Model inputs of one frame, ready to run.
pub struct Prepared {
    detector_input: DetectorInput,
    crop_batches: Vec<Array2<f32>>,
}

impl Prepared {
    /// Crops the embedder runs on for this frame.
    pub fn crops(&self) -> usize {
        self.crop_batches.iter().map(Array2::nrows).sum()
    }
}

fn inference_error(model: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Inference {
        model: model.to_string(),
        message: e.to_string(),
    }
}

impl Detector {
    fn detect(&mut self, image: &image::RgbImage) -> Result<Vec<Detection>> {
        let not_contiguous = || Error::Inference {
            model: self.model_id.clone(),
            message: "input buffer is not contiguous".into(),
        };
        let whole = Rect::of_image(image);
        let placement = match &mut self.input {
            DetectorInput::Float32(a) => {
                fill_input(image, whole, &self.spec, a.as_slice_mut().ok_or_else(not_contiguous)?)
            }
            DetectorInput::Uint8(a) => {
                fill_input(image, whole, &self.spec, a.as_slice_mut().ok_or_else(not_contiguous)?)
            }
        };
        let raw = self.run()?;
        let (w, h) = (image.width() as f32, image.height() as f32);
        Ok(raw
            .into_iter()
            .filter_map(|d| {
                placement.to_frame_clipped(d.bbox, (w, h)).map(|bbox| Detection {
                    class_id: d.class_id,
                    score: d.score,
                    bbox,
                    embedding: None,
                    sharpness: 0.0,
                })
            })
            .collect())
    }

    fn run(&mut self) -> Result<Vec<RawDetection>> {
        let err = inference_error(&self.model_id);
        let name = self.spec.name.as_str();
        let outputs = match &self.input {
            DetectorInput::Float32(a) => self
                .session
                .run(ort::inputs![name => TensorRef::from_array_view(a).map_err(&err)?]),
            DetectorInput::Uint8(a) => self
                .session
                .run(ort::inputs![name => TensorRef::from_array_view(a).map_err(&err)?]),
        }
        .map_err(&err)?;
        let mut tensors = Vec::with_capacity(self.decoder.outputs().len());
        for name in self.decoder.outputs() {
            let value = outputs.get(name).ok_or_else(|| Error::Inference {
                model: self.model_id.clone(),
                message: format!("output {name:?} missing from the run"),
            })?;
            let tensor = as_f32(value).map_err(&err)?;
            if self.strict {
                check_finite(&self.model_id, name, &tensor.data)?;
            }
            tensors.push(tensor);
        }
        self.decoder.decode(&tensors).map_err(|message| Error::Inference {
            model: self.model_id.clone(),
            message,
        })
    }
}

fn check_finite(model: &str, output: &str, data: &[f32]) -> Result<()> {
    match data.iter().filter(|v| !v.is_finite()).count() {
        0 => Ok(()),
        bad => Err(Error::Inference {
            model: model.to_string(),
            message: format!("output {output:?} holds {bad} non-finite values of {}", data.len()),
        }),
    }
}

/// An output as f32: borrowed when it is f32, converted when it is a small integer output such
/// as the class or count output of a detections model.
fn as_f32(value: &ort::value::DynValue) -> std::result::Result<Tensor<'_>, ort::Error> {
    if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
        return Ok(Tensor::borrowed(shape, data));
    }
    let converted = |shape: &ort::value::Shape, data: Vec<f32>| Tensor {
        dims: shape.to_vec(),
        data: std::borrow::Cow::Owned(data),
    };
    if let Ok((shape, data)) = value.try_extract_tensor::<i64>() {
        return Ok(converted(shape, data.iter().map(|&v| v as f32).collect()));
    }
    let (shape, data) = value.try_extract_tensor::<i32>()?;
    Ok(converted(shape, data.iter().map(|&v| v as f32).collect()))
}

impl Embedder {
    fn fill(&mut self, image: &image::RgbImage, boxes: &[[f32; 4]]) {
        for (b, mut row) in boxes.iter().zip(self.batch.rows_mut()) {
            let roi = Rect {
                x: b[0],
                y: b[1],
                width: b[2] - b[0],
                height: b[3] - b[1],
            };
            if let Some(dst) = row.as_slice_mut() {
                fill_input(image, roi, &self.spec, dst);
            }
        }
    }

    /// All `boxes`, in runs of at most `max_batch` crops.
    fn embed_all(&mut self, image: &image::RgbImage, boxes: &[[f32; 4]]) -> Result<Vec<Vec<f32>>> {
        let mut vectors = Vec::with_capacity(boxes.len());
        for chunk in boxes.chunks(self.spec.max_batch) {
            vectors.extend(self.embed(image, chunk)?);
        }
        Ok(vectors)
    }

    fn embed(&mut self, image: &image::RgbImage, boxes: &[[f32; 4]]) -> Result<Vec<Vec<f32>>> {
        self.fill(image, boxes);
        // Lend the reused buffer out for the run instead of copying it.
        let batch = std::mem::take(&mut self.batch);
        let result = self.run(batch.slice(ndarray::s![..boxes.len(), ..]));
        self.batch = batch;
        result
    }

    /// `batch`: `[n, item]` rows of pre-processed crops.
    fn run(&mut self, batch: ndarray::ArrayView2<f32>) -> Result<Vec<Vec<f32>>> {
        let err = inference_error(&self.model_id);
        let n = batch.nrows();
        let (h, w) = (self.spec.height as usize, self.spec.width as usize);
        let shape = match self.spec.layout {
            Layout::Nchw => [n, 3, h, w],
            Layout::Nhwc => [n, h, w, 3],
        };
        let input = batch.into_shape_with_order(shape).map_err(|e| Error::Inference {
            model: self.model_id.clone(),
            message: e.to_string(),
        })?;
        let tensor = TensorRef::from_array_view(input).map_err(&err)?;
        let outputs = self
            .session
            .run(ort::inputs![self.spec.name.as_str() => tensor])
            .map_err(&err)?;
        let value = outputs.get(self.output.as_str()).ok_or_else(|| Error::Inference {
            model: self.model_id.clone(),
            message: format!("output {:?} missing from the run", self.output),
        })?;
        let (_, data) = value.try_extract_tensor::<f32>().map_err(&err)?;
        if self.strict {
            check_finite(&self.model_id, &self.output, data)?;
        }
        if data.len() != n * self.dimension {
            return Err(Error::Inference {
                model: self.model_id.clone(),
                message: format!("expected {n} x {} values, got {}", self.dimension, data.len()),
            });
        }
        Ok(data.chunks(self.dimension).map(<[f32]>::to_vec).collect())
    }
}
