//! The real models through the real ONNX Runtime: outputs agree with Python's, the decoder agrees
//! with an independent numpy decode, and models that disagree with their manifests are refused.

mod common;

use retina_edge::infer::decode::NanodetGfl;
use retina_edge::infer::manifest::Manifest;
use retina_edge::infer::{ModelFile, SessionOptions, environment};
use retina_edge::{Error, describe::codec};

const OPTIONS: SessionOptions = SessionOptions {
    intra_op_threads: 1,
    allow_spinning: false,
};

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture(path)).unwrap()).unwrap()
}

#[test]
fn nanodet_decoder_matches_independent_numpy_decode_of_dog_jpg() {
    let manifest = Manifest::load(&common::repo().join("models/nanodet-g-416.toml")).unwrap();
    let mut gfl = NanodetGfl::from_manifest(&manifest).expect("detector manifest has a GFL decoder");
    let expected = json("nanodet_dog/expected.json");
    // The fixture was decoded with its own thresholds; use them.
    gfl.score_threshold = expected["score_threshold"].as_f64().unwrap() as f32;
    gfl.nms_iou_threshold = expected["iou_threshold"].as_f64().unwrap() as f32;
    let tensors = common::nanodet_dog_outputs(&gfl);
    let levels: Vec<(&[f32], &[f32])> = tensors.iter().map(|(s, b)| (s.as_slice(), b.as_slice())).collect();
    let found = gfl.decode(&levels);
    let want = expected["detections"].as_array().unwrap();
    assert_eq!(found.len(), want.len(), "found {found:?}");
    for (got, want) in found.iter().zip(want) {
        assert_eq!(u64::from(got.class_id), want["class_id"].as_u64().unwrap());
        assert!((f64::from(got.score) - want["score"].as_f64().unwrap()).abs() < 1e-5);
        for (g, w) in got.bbox.iter().zip(want["box"].as_array().unwrap()) {
            assert!(
                (f64::from(*g) - w.as_f64().unwrap()).abs() < 1e-3,
                "{:?} vs {}",
                got.bbox,
                want["box"]
            );
        }
    }
    // What a person sees in dog.jpg: a dog and a bicycle, best first.
    let class_names = manifest.decoder.class_names();
    let names: Vec<&str> = found
        .iter()
        .map(|d| class_names[d.class_id as usize].as_str())
        .collect();
    assert_eq!(&names[..2], &["dog", "bicycle"]);
}

#[test]
fn embedder_in_rust_matches_python_onnxruntime() {
    let env = environment(&common::ort_library()).unwrap();
    let manifest = Manifest::load(&common::repo().join("models/mobilenetv2-1280.toml")).unwrap();
    let model = ModelFile::load(manifest, env, OPTIONS).unwrap();
    let mut session = model.open_session(env, OPTIONS).unwrap();
    let expected = json("mobilenetv2_formula/expected.json");

    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let input = ndarray::Array4::from_shape_fn((2, 3, 224, 224), |(n, c, h, w)| {
        let v = ((c * 31 + h * 7 + w * 3 + n * 50) % 256) as f32 / 255.0;
        (v - mean[c]) / std[c]
    });
    let outputs = session
        .run(ort::inputs!["input" => ort::value::TensorRef::from_array_view(&input).unwrap()])
        .unwrap();
    let (_, got) = outputs["embedding"].try_extract_tensor::<f32>().unwrap();
    let rows = expected["embedding"].as_array().expect("expected rows");
    for (n, row) in rows.iter().enumerate() {
        let want: Vec<f32> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = &got[n * 1280..(n + 1) * 1280];
        let max_diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_diff < 1e-3, "row {n}: max |diff| {max_diff}");
        assert!(codec::cosine(got, &want) > 0.99999);
    }
}

fn write_manifest(
    dir: &std::path::Path,
    original: &str,
    replace: &[(&str, &str)],
    model_file: Option<&str>,
) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(common::repo().join(original)).unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "{original} has no {from:?}");
        text = text.replace(from, to);
    }
    let onnx = common::repo().join(original).with_extension("onnx");
    let file = model_file
        .map(str::to_string)
        .unwrap_or_else(|| onnx.display().to_string());
    let text = text.replacen(
        &format!("file = \"{}\"", onnx.file_name().unwrap().to_str().unwrap()),
        &format!("file = \"{file}\""),
        1,
    );
    let path = dir.join("manifest.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn manifest_that_disagrees_with_its_model_is_refused_with_every_difference() {
    let env = environment(&common::ort_library()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_manifest(
        dir.path(),
        "models/nanodet-g-416.toml",
        &[
            ("name = \"input_1:0\"", "name = \"images\""),
            ("\"Identity_5:0\"", "\"boxes_32\""),
            ("width = 416", "width = 320"),
        ],
        None,
    );
    let err = ModelFile::load(Manifest::load(&path).unwrap(), env, OPTIONS)
        .err()
        .expect("mismatch refused");
    assert!(matches!(err, Error::ModelMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("input \"images\" named in the manifest is not in the model"),
        "{message}"
    );
    assert!(message.contains("\"input_1:0\""), "lists the real inputs: {message}");
    assert!(message.contains("output \"boxes_32\""), "{message}");
    // The 320-wide input changes the implied grid sizes of every output.
    assert!(
        message.contains("has shape [1, 2704, 80] but the manifest implies [1, 2080, 80]"),
        "{message}"
    );

    let path = write_manifest(
        dir.path(),
        "models/mobilenetv2-1280.toml",
        &[("dimension = 1280", "dimension = 512")],
        None,
    );
    let message = ModelFile::load(Manifest::load(&path).unwrap(), env, OPTIONS)
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("output \"embedding\" has shape [-1, 1280] but the manifest implies [?, 512]"),
        "{message}"
    );
}

#[test]
fn garbage_bytes_as_a_model_give_a_clear_error() {
    let env = environment(&common::ort_library()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"this is not an ONNX model at all \x00\x01\x02").unwrap();
    let path = write_manifest(
        dir.path(),
        "models/mobilenetv2-1280.toml",
        &[],
        Some(garbage.to_str().unwrap()),
    );
    let err = ModelFile::load(Manifest::load(&path).unwrap(), env, OPTIONS)
        .err()
        .expect("garbage refused");
    assert!(matches!(err, Error::ModelLoad { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("garbage.onnx could not be loaded by ONNX Runtime"),
        "{err}"
    );

    let missing = write_manifest(
        dir.path(),
        "models/mobilenetv2-1280.toml",
        &[],
        Some("/no/such/model.onnx"),
    );
    let err = ModelFile::load(Manifest::load(&missing).unwrap(), env, OPTIONS)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("reading model /no/such/model.onnx"), "{err}");
}
