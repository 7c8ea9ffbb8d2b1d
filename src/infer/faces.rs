//! Faces: finding faces in pixels that are about to leave the node (snapshots, clips), and
//! pixelating them. The detector is a model like any other (an ONNX file and a manifest, e.g.
//! `models/blazeface-back-256.toml`), read through the same manifest, session, pre-processing and
//! decoders as the object detectors; what is particular to faces is here: small faces in large
//! frames (tiling) and the irreversible mosaic.
//!
//! Tiling. One letterboxed pass shrinks a 1920-pixel frame to the model's 256 pixels, and a face
//! under ~10 input pixels is lost (BlazeFace's back model finds sharp faces from ~10 to over 160
//! input pixels). So when a frame is larger than a tile, overlapping tiles of
//! [`TILE_SCALE`] times the input size are run as well, and everything is merged by the
//! manifest's NMS. Measured on the labelled frames (`tests/fixtures/faces/labels.toml`, the
//! figures in models/README.md): tiles of 1.5 x 256 = 384 frame pixels found every labelled face
//! (13 of 13, and 12 of 12 on a 1920 x 1088 frame) with the fewest false positives (1 and 2);
//! 256-pixel tiles (the model's own scale) found fewer faces with 5-10 times the false
//! positives, 512-pixel tiles missed 2 of the 12 on the 1920 x 1088 frame.

use std::path::Path;

use ort::session::Session;
use ort::value::TensorRef;

use super::decode::{Decoder, RawDetection, Tensor};
use super::manifest::{ElementType, InputSpec, Layout, Manifest};
use super::model::{ModelFile, SessionOptions};
use super::preprocess::{Rect, fill_input};
use crate::error::{Error, Result};

/// A face found in an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    /// `[x1, y1, x2, y2]` in the image's pixels, inside the image.
    pub bbox: [f32; 4],
    pub score: f32,
}

/// A tile's side, in frame pixels, as a multiple of the model's input side: faces in tiles are
/// seen at 1 / 1.5 of their size (see the module's documentation for the measurement).
pub const TILE_SCALE: f32 = 1.5;

/// Neighbouring tiles overlap by this fraction of a tile (96 pixels for BlazeFace's 384-pixel
/// tiles): more than the largest face the whole-frame pass can miss on a 1920-pixel frame
/// (~75 pixels), so each such face lies whole inside some tile. 0.5 cost 1.2-1.6 times the runs
/// and found no more faces on the labelled frames (one more false positive on each set).
pub const TILE_OVERLAP: f32 = 0.25;

/// The grown face region is pixelated into at most this many blocks along its longer side, so a
/// face (two thirds of a region grown by a 0.25 margin) is ~5 blocks across: too coarse for its
/// features to survive, and each block is an average, so nothing of the original can be undone.
pub const BLOCKS_ACROSS: f32 = 8.0;

/// Sessions of a face detector: one intra-op thread, no spinning (exports are occasional and must
/// not take CPU from the inference workers), and no arena kept between runs.
const OPTIONS: SessionOptions = SessionOptions {
    intra_op_threads: 1,
    allow_spinning: false,
    memory_arena: false,
};

/// A face detector built from a model manifest. `Send`: it can be moved to the thread that
/// exports; it is used by one caller at a time (`detect` takes `&mut self`).
pub struct FaceDetector {
    /// The manifest's model id, written into the audit record of every export it checked.
    name: String,
    session: Session,
    spec: InputSpec,
    decoder: Decoder,
    /// The input tensor, reused for every pass.
    input: ndarray::Array4<f32>,
}

impl FaceDetector {
    /// Loads the model its manifest names, checks it against the manifest (every output the
    /// decoder reads included), and runs it once so that a model whose outputs do not fit the
    /// decoder is refused here rather than at the first export.
    pub fn load(manifest_path: &Path, env: &ort::environment::Environment) -> Result<FaceDetector> {
        let manifest = Manifest::load(manifest_path)?;
        let bad = |message: String| Error::Manifest {
            path: manifest_path.to_path_buf(),
            message,
        };
        let decoder = Decoder::from_manifest(&manifest)?
            .ok_or_else(|| bad("an embedding manifest cannot detect faces: a detector's decoder is needed".into()))?;
        let spec = manifest.input.clone();
        if spec.element_type != ElementType::Float32 {
            return Err(bad("a face detector's input must be float32".into()));
        }
        let model = ModelFile::load(manifest, env, OPTIONS)?;
        let session = model.open_session(env, OPTIONS)?;
        let missing: Vec<String> = decoder
            .outputs()
            .iter()
            .filter(|name| !session.outputs().iter().any(|o| o.name() == name.as_str()))
            .map(|name| format!("output {name:?} named in the manifest is not in the model"))
            .collect();
        if !missing.is_empty() {
            return Err(Error::ModelMismatch {
                path: model.manifest.model_path(),
                differences: missing,
            });
        }
        let shape = match spec.layout {
            Layout::Nchw => (1, 3, spec.height as usize, spec.width as usize),
            Layout::Nhwc => (1, spec.height as usize, spec.width as usize, 3),
        };
        let mut detector = FaceDetector {
            name: model.card.id.clone(),
            session,
            spec,
            decoder,
            input: ndarray::Array4::zeros(shape),
        };
        detector.run()?;
        Ok(detector)
    }

    /// The manifest's model id, for audit records.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every face in `image`, best first: one pass over the whole image, plus tiles when the
    /// image is larger than a tile (see the module's documentation), merged by the manifest's
    /// NMS and capped at its `max_detections`.
    pub fn detect(&mut self, image: &image::RgbImage) -> Result<Vec<Face>> {
        if image.width() == 0 || image.height() == 0 {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for region in regions(image.width(), image.height(), &self.spec) {
            found.extend(self.detect_in(image, region)?);
        }
        Ok(self
            .decoder
            .selection
            .merge(found)
            .into_iter()
            .map(|d| Face {
                bbox: d.bbox,
                score: d.score,
            })
            .collect())
    }

    /// Detections in `region` of `image`, in image pixels, clipped to the image.
    fn detect_in(&mut self, image: &image::RgbImage, region: Rect) -> Result<Vec<RawDetection>> {
        let input = self.input.as_slice_mut().ok_or_else(|| Error::Inference {
            model: self.name.clone(),
            message: "input buffer is not contiguous".into(),
        })?;
        let placement = fill_input(image, region, &self.spec, input);
        let (w, h) = (image.width() as f32, image.height() as f32);
        Ok(self
            .run()?
            .into_iter()
            .filter_map(|d| {
                placement
                    .to_frame_clipped(d.bbox, (w, h))
                    .map(|bbox| RawDetection { bbox, ..d })
            })
            .collect())
    }

    /// One run on the current input: detections in input pixels.
    fn run(&mut self) -> Result<Vec<RawDetection>> {
        let model = self.name.as_str();
        let err = |e: ort::Error| Error::Inference {
            model: model.to_string(),
            message: e.to_string(),
        };
        let input = TensorRef::from_array_view(&self.input).map_err(err)?;
        let outputs = self
            .session
            .run(ort::inputs![self.spec.name.as_str() => input])
            .map_err(err)?;
        let mut tensors = Vec::with_capacity(self.decoder.outputs().len());
        for name in self.decoder.outputs() {
            let value = outputs.get(name).ok_or_else(|| Error::Inference {
                model: model.to_string(),
                message: format!("output {name:?} missing from the run"),
            })?;
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(err)?;
            tensors.push(Tensor::borrowed(shape, data));
        }
        self.decoder.decode(&tensors).map_err(|message| Error::Inference {
            model: model.to_string(),
            message,
        })
    }
}

/// The regions of a `width x height` image the detector runs on: the whole image, then, if it
/// is larger than a tile, overlapping tiles of [`TILE_SCALE`] times the input size that cover it.
pub fn regions(width: u32, height: u32, spec: &InputSpec) -> Vec<Rect> {
    let whole = Rect {
        x: 0.0,
        y: 0.0,
        width: width as f32,
        height: height as f32,
    };
    let tile_w = (spec.width as f32 * TILE_SCALE).round();
    let tile_h = (spec.height as f32 * TILE_SCALE).round();
    if whole.width <= tile_w && whole.height <= tile_h {
        return vec![whole];
    }
    let mut regions = vec![whole];
    for y in tile_starts(whole.height, tile_h) {
        for x in tile_starts(whole.width, tile_w) {
            regions.push(Rect {
                x,
                y,
                width: tile_w.min(whole.width),
                height: tile_h.min(whole.height),
            });
        }
    }
    regions
}

/// Where tiles of `tile` start along a side of `len`: every `tile x (1 - overlap)`, the last
/// flush with the end; one tile from 0 when the side is no longer than a tile.
fn tile_starts(len: f32, tile: f32) -> Vec<f32> {
    if len <= tile || tile < 1.0 {
        return vec![0.0];
    }
    let step = (tile * (1.0 - TILE_OVERLAP)).max(1.0);
    let last = len - tile;
    let mut starts: Vec<f32> = (0..).map(|i| i as f32 * step).take_while(|&s| s < last).collect();
    starts.push(last);
    starts
}

/// Pixelates each face's box, grown on every side by `margin` times its width (left and right)
/// and height (top and bottom), in place: the region becomes blocks of their own mean colour, at
/// most [`BLOCKS_ACROSS`] along its longer side. Boxes that are not finite, are empty, or lie
/// outside the image change nothing; a negative or non-finite margin counts as 0.
pub fn pixelate_faces(image: &mut image::RgbImage, faces: &[Face], margin: f32) {
    let margin = if margin.is_finite() { margin.max(0.0) } else { 0.0 };
    let (iw, ih) = image.dimensions();
    for face in faces {
        let [x1, y1, x2, y2] = face.bbox;
        if !face.bbox.iter().all(|v| v.is_finite()) || x2 <= x1 || y2 <= y1 {
            continue;
        }
        let (grow_x, grow_y) = ((x2 - x1) * margin, (y2 - y1) * margin);
        // `as u32` saturates: negative coordinates become 0.
        let clamp = |v: f32, max: u32| (v.max(0.0) as u32).min(max);
        let (left, top) = (clamp((x1 - grow_x).floor(), iw), clamp((y1 - grow_y).floor(), ih));
        let (right, bottom) = (clamp((x2 + grow_x).ceil(), iw), clamp((y2 + grow_y).ceil(), ih));
        if right <= left || bottom <= top {
            continue;
        }
        let longer = (right - left).max(bottom - top) as f32;
        let block = ((longer / BLOCKS_ACROSS).ceil() as u32).max(1);
        for by in (top..bottom).step_by(block as usize) {
            for bx in (left..right).step_by(block as usize) {
                let (ex, ey) = ((bx + block).min(right), (by + block).min(bottom));
                let mut sum = [0u64; 3];
                for y in by..ey {
                    for x in bx..ex {
                        let p = image.get_pixel(x, y).0;
                        for (s, v) in sum.iter_mut().zip(p) {
                            *s += u64::from(v);
                        }
                    }
                }
                let n = u64::from(ex - bx) * u64::from(ey - by);
                let mean = image::Rgb(sum.map(|s| ((s + n / 2) / n) as u8));
                for y in by..ey {
                    for x in bx..ex {
                        image.put_pixel(x, y, mean);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::manifest::{ChannelOrder, ResizeMode};
    use crate::infer::preprocess::crop_sharpness;

    fn spec(side: u32) -> InputSpec {
        InputSpec {
            name: "input".into(),
            layout: Layout::Nhwc,
            width: side,
            height: side,
            channels: ChannelOrder::Rgb,
            resize: ResizeMode::Letterbox,
            pixel_scale: 1.0 / 127.5,
            mean: [1.0; 3],
            std: [1.0; 3],
            max_batch: 1,
            element_type: ElementType::Float32,
        }
    }

    #[test]
    fn the_detector_can_move_to_an_export_thread() {
        fn send<T: Send>() {}
        send::<FaceDetector>();
    }

    #[test]
    fn small_images_get_one_pass_and_large_ones_tiles_that_cover_them_with_overlap() {
        let s = spec(256);
        assert_eq!(
            regions(640, 384, &s).len(),
            2 + 1,
            "two 384-pixel tiles across, one down"
        );
        assert_eq!(
            regions(384, 200, &s),
            vec![Rect::of_image(&image::RgbImage::new(384, 200))]
        );
        for (w, h) in [(640, 272), (1280, 720), (1920, 1080), (385, 5000)] {
            let all = regions(w, h, &s);
            assert_eq!(
                (all[0].width, all[0].height),
                (w as f32, h as f32),
                "the whole frame first"
            );
            let tiles = &all[1..];
            for t in tiles {
                assert!(t.x >= 0.0 && t.y >= 0.0 && t.x + t.width <= w as f32 && t.y + t.height <= h as f32);
                assert!(t.width <= 384.0 && t.height <= 384.0);
            }
            // A 96-pixel face anywhere lies whole inside some tile.
            for (px, py) in [
                (0.0, 0.0),
                (w as f32, h as f32),
                (w as f32 / 2.0, h as f32 / 3.0),
                (300.0, 290.0),
            ] {
                let (fx, fy) = (
                    (px - 48.0).clamp(0.0, w as f32 - 96.0),
                    (py - 48.0).clamp(0.0, h as f32 - 96.0),
                );
                let fits =
                    |t: &Rect| t.x <= fx && t.y <= fy && fx + 96.0 <= t.x + t.width && fy + 96.0 <= t.y + t.height;
                assert!(
                    tiles.iter().any(fits),
                    "{w}x{h}: a face at ({fx}, {fy}) is cut by every tile"
                );
            }
        }
        // 1920 x 1080 at 384-pixel tiles overlapping by 96: 7 x 4 tiles.
        assert_eq!(regions(1920, 1080, &s).len(), 1 + 7 * 4);
    }

    /// A face-sized patch of fine detail (a 2-pixel checkerboard with a ramp) on a flat image.
    fn detailed() -> (image::RgbImage, Face) {
        let image = image::RgbImage::from_fn(200, 160, |x, y| {
            if (60..140).contains(&x) && (40..120).contains(&y) {
                let v = if (x / 2 + y / 2) % 2 == 0 { 40 } else { 220 };
                image::Rgb([v, (x * 2) as u8, (y * 2) as u8])
            } else {
                image::Rgb([90, 120, 150])
            }
        });
        let face = Face {
            bbox: [70.0, 50.0, 130.0, 110.0],
            score: 0.9,
        };
        (image, face)
    }

    #[test]
    fn pixelation_removes_the_detail_of_the_grown_box_and_nothing_outside_it() {
        let (original, face) = detailed();
        let mut image = original.clone();
        pixelate_faces(&mut image, &[face], 0.25);
        let grown = [55.0, 35.0, 145.0, 125.0];
        let before = crop_sharpness(&original, face.bbox);
        let after = crop_sharpness(&image, face.bbox);
        assert!(before > 1000.0 && after < before / 20.0, "{before} -> {after}");
        // Blocks: ceil(90 / 8) = 12 pixels, each one colour.
        for y in (35..125).step_by(12) {
            for x in (55..145).step_by(12) {
                let p = image.get_pixel(x, y);
                for (dx, dy) in [(0, 0), (11, 0), (0, 11), (11, 11)] {
                    let (qx, qy) = ((x + dx).min(144), (y + dy).min(124));
                    assert_eq!(image.get_pixel(qx, qy), p, "block at ({x}, {y})");
                }
            }
        }
        for (x, y, p) in original.enumerate_pixels() {
            let inside =
                (x as f32) >= grown[0] && (x as f32) < grown[2] && (y as f32) >= grown[1] && (y as f32) < grown[3];
            if !inside {
                assert_eq!(image.get_pixel(x, y), p, "({x}, {y}) is outside the grown box");
            }
        }
    }

    #[test]
    fn odd_boxes_and_margins_change_nothing_or_stay_inside_the_image() {
        let (original, face) = detailed();
        let mut image = original.clone();
        let odd = [
            [f32::NAN, 0.0, 10.0, 10.0],
            [50.0, 50.0, 40.0, 60.0],
            [500.0, 500.0, 600.0, 600.0],
            [-50.0, -50.0, -10.0, -10.0],
        ];
        let faces: Vec<Face> = odd.iter().map(|&bbox| Face { bbox, score: 1.0 }).collect();
        pixelate_faces(&mut image, &faces, 0.25);
        assert_eq!(image, original);
        pixelate_faces(&mut image, &[face], f32::NAN);
        pixelate_faces(&mut image, &[face], -3.0);
        assert_eq!(
            image.get_pixel(65, 45),
            original.get_pixel(65, 45),
            "no margin: outside the box"
        );
        // A box past the edges, with a huge margin: the whole image, without a panic.
        let mut image = original.clone();
        pixelate_faces(
            &mut image,
            &[Face {
                bbox: [-10.0, 100.0, 250.0, 1e9],
                score: 1.0,
            }],
            1e6,
        );
        assert!(crop_sharpness(&image, [0.0, 0.0, 200.0, 160.0]) < crop_sharpness(&original, [0.0, 0.0, 200.0, 160.0]));
        let mut empty = image::RgbImage::new(0, 0);
        pixelate_faces(&mut empty, &[face], 0.25);
    }
}
