//! The Python client of `scripts/central` (run with the venv of `make deps`) and what it saves,
//! compared with the Rust decoding of the same descriptors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use retina_edge::describe::codec;
use retina_edge::pb;
use retina_edge::wire::event_kind_label;

/// Writes one JSON object per saved vector of a `retina_client.py --save` file, then one with the
/// frames received (numpy has no Rust reader among our dependencies; the venv has numpy).
pub const DUMP_NPZ: &str = r#"
import json, sys
import numpy as np
d = np.load(sys.argv[1])
text = ["camera_id", "source", "kind", "codec", "projection_id"]
ints = ["sequence", "index", "track_id", "class_id", "dimension"]
for i in range(len(d["vectors"])):
    row = {k: str(d[k][i]) for k in text}
    row.update({k: int(d[k][i]) for k in ints})
    row["frame_size"] = [int(v) for v in d["frame_size"][i]]
    row["vector"] = [float(v) for v in d["vectors"][i][: d["dimension"][i]]]
    print(json.dumps(row))
print(json.dumps({"frames": [[str(c), int(s), int(o)] for c, s, o in
                            zip(d["frame_camera_id"], d["frame_sequence"], d["frame_offset"])]}))
"#;

pub fn python() -> PathBuf {
    let python = super::repo().join(".deps/python/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `make deps` (it creates the Python venv of scripts/central)",
        python.display()
    );
    python
}

pub fn run_python(args: &[&str]) -> Command {
    let mut command = Command::new(python());
    command.args(args).current_dir(super::repo());
    command
}

pub fn check_output(what: &str, output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}

/// A vector as the Python client saved it, keyed like `Key`.
#[derive(Debug, serde::Deserialize)]
pub struct Row {
    pub camera_id: String,
    pub sequence: u64,
    pub source: String,
    pub index: usize,
    pub kind: String,
    pub codec: String,
    pub projection_id: String,
    pub track_id: u64,
    pub class_id: u32,
    pub dimension: usize,
    pub frame_size: [u32; 2],
    pub vector: Vec<f32>,
}

/// (camera, sequence, "objects" or "track_events", index in that list).
pub type Key = (String, u64, &'static str, usize);

pub struct RustVector {
    pub kind: &'static str,
    pub track_id: u64,
    pub class_id: u32,
    pub embedding: pb::Embedding,
}

/// Every embedding of the descriptors, where the Python client keys it.
pub fn rust_vectors(descriptors: &[pb::FrameDescriptor]) -> BTreeMap<Key, RustVector> {
    let mut vectors = BTreeMap::new();
    for d in descriptors {
        for (i, o) in d.objects.iter().enumerate() {
            if let Some(e) = &o.embedding {
                let v = RustVector {
                    kind: "detection",
                    track_id: o.track_id,
                    class_id: o.class_id,
                    embedding: e.clone(),
                };
                vectors.insert((d.camera_id.clone(), d.sequence, "objects", i), v);
            }
        }
        for (i, event) in d.track_events.iter().enumerate() {
            if let Some(e) = event.view.as_ref().and_then(|v| v.appearance.as_ref()) {
                let v = RustVector {
                    kind: event_kind_label(event.kind()),
                    track_id: event.track_id,
                    class_id: event.class_id,
                    embedding: e.clone(),
                };
                vectors.insert((d.camera_id.clone(), d.sequence, "track_events", i), v);
            }
        }
    }
    vectors
}

/// The rows of a `retina_client.py --save` file, and its frames: `[camera, sequence, offset]`
/// of every descriptor received.
pub fn saved_vectors(npz: &Path) -> (Vec<Row>, serde_json::Value) {
    let dump = run_python(&["-c", DUMP_NPZ, npz.to_str().unwrap()])
        .output()
        .expect("python runs");
    let dump = check_output("reading the .npz", &dump);
    let mut lines: Vec<&str> = dump.lines().collect();
    let frames: serde_json::Value = serde_json::from_str(lines.pop().expect("the frames line")).unwrap();
    let rows = lines.iter().map(|l| serde_json::from_str(l).expect("a row")).collect();
    (rows, frames["frames"].clone())
}

/// Every vector the Python client saved is the one the Rust decoder makes of the same place in
/// the same descriptor, and it saved every one there was.
pub fn assert_decoded_alike(rows: &[Row], descriptors: &[pb::FrameDescriptor]) {
    let mut expected = rust_vectors(descriptors);
    let width_height = |d: &pb::FrameDescriptor| [d.frame_width, d.frame_height];
    let by_key: BTreeMap<(&str, u64), &pb::FrameDescriptor> = descriptors
        .iter()
        .map(|d| ((d.camera_id.as_str(), d.sequence), d))
        .collect();
    for row in rows {
        let source = if row.source == "objects" {
            "objects"
        } else {
            "track_events"
        };
        let key = (row.camera_id.clone(), row.sequence, source, row.index);
        let rust = expected
            .remove(&key)
            .unwrap_or_else(|| panic!("Python saved a vector the Rust client did not see: {key:?}"));
        let e = &rust.embedding;
        let v = codec::decode(e).unwrap_or_else(|err| panic!("{key:?}: {err}"));
        assert_eq!(
            (row.kind.as_str(), row.track_id, row.class_id),
            (rust.kind, rust.track_id, rust.class_id),
            "{key:?}"
        );
        assert_eq!(
            (row.codec.as_str(), row.dimension, row.projection_id.as_str()),
            (
                codec::codec_name(e.codec),
                e.dimension as usize,
                e.projection_id.as_str()
            ),
            "{key:?}"
        );
        assert_eq!(row.vector.len(), v.len(), "{key:?}");
        let worst = row
            .vector
            .iter()
            .zip(&v)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{key:?}: Python and Rust decodings differ by {worst}");
        // The context in force: carried forward by the client, or in every record.
        let frame = by_key[&(row.camera_id.as_str(), row.sequence)];
        assert_eq!(row.frame_size, width_height(frame), "{key:?}");
    }
    assert!(
        expected.is_empty(),
        "vectors the Python client missed: {:?}",
        expected.keys()
    );
}
