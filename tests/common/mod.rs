//! Shared set-up for integration tests: paths of the real models, the real clip and the ONNX
//! Runtime library that `make test` (scripts/setup-deps.sh) installs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn ort_library() -> PathBuf {
    let path = repo().join(".deps/onnxruntime/libonnxruntime.so.1.32.0");
    assert!(
        path.is_file(),
        "{} is missing: run `make deps` (or `make test`)",
        path.display()
    );
    path
}

pub fn sample_clip() -> PathBuf {
    let path = repo().join(".deps/media/bikes.mp4");
    assert!(
        path.is_file(),
        "{} is missing: run `make deps` (or `make test`)",
        path.display()
    );
    path
}

pub fn fixture(path: &str) -> PathBuf {
    repo().join("tests/fixtures").join(path)
}

/// A node config (TOML) for the real models and the given cameras section; gRPC on a free port.
pub fn config_toml(cameras: &str, extra_node: &str) -> String {
    let repo = repo().display();
    let ort = ort_library();
    format!(
        r#"
[node]
id = "test-node"
grpc_listen = "127.0.0.1:0"
{extra_node}

[inference]
onnxruntime_library = "{ort}"
detector_manifest = "{repo}/models/nanodet-g-416.toml"
embedder_manifest = "{repo}/models/mobilenetv2-1280.toml"
workers = 2
intra_op_threads = 1

{cameras}
"#,
        ort = ort.display()
    )
}

pub fn parse_config(text: &str) -> retina_edge::config::Config {
    retina_edge::config::Config::parse(text, Path::new("test.toml"), repo().to_path_buf()).expect("test config parses")
}

/// The real NanoDet outputs on dog.jpg (tests/fixtures/nanodet_dog), per level of `gfl`:
/// files are named after the outputs with ':' -> '_' ("Identity:0" -> "Identity_0.bin").
pub fn nanodet_dog_outputs(gfl: &retina_edge::infer::decode::NanodetGfl) -> Vec<(Vec<f32>, Vec<f32>)> {
    let load = |name: &str| -> Vec<f32> {
        let file = fixture(&format!("nanodet_dog/{}.bin", name.replace(':', "_")));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    gfl.outputs
        .iter()
        .map(|(scores, boxes)| (load(scores), load(boxes)))
        .collect()
}
pub mod rtsp;
