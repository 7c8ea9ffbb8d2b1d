//! A central system in another language: `scripts/central/retina_client.py` (Python, stubs made
//! from the proto at run time) subscribes to a real node on the sample clip while a Rust client
//! does the same. Every vector the Python side decodes must be the one the Rust side decodes, for
//! the same camera, sequence and place in the descriptor, and the script must exit 0.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use retina_edge::describe::codec;
use retina_edge::describe::emit::event_kind_label;
use retina_edge::pb;

/// Writes one JSON object per saved vector of a `retina_client.py --save` file, then one with the
/// frames received (numpy has no Rust reader among our dependencies; the venv has numpy).
const DUMP_NPZ: &str = r#"
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
print(json.dumps({"frames": [[str(c), int(s)] for c, s in zip(d["frame_camera_id"], d["frame_sequence"])]}))
"#;

fn python() -> PathBuf {
    let python = common::repo().join(".deps/python/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `make deps` (it creates the Python venv of scripts/central)",
        python.display()
    );
    python
}

fn run_python(args: &[&str]) -> Command {
    let mut command = Command::new(python());
    command.args(args).current_dir(common::repo());
    command
}

fn check_output(what: &str, output: &Output) -> String {
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
struct Row {
    camera_id: String,
    sequence: u64,
    source: String,
    index: usize,
    kind: String,
    codec: String,
    projection_id: String,
    track_id: u64,
    class_id: u32,
    dimension: usize,
    frame_size: [u32; 2],
    vector: Vec<f32>,
}

/// (camera, sequence, "objects" or "track_events", index in that list).
type Key = (String, u64, &'static str, usize);

struct RustVector {
    kind: &'static str,
    track_id: u64,
    class_id: u32,
    embedding: pb::Embedding,
}

/// Every embedding of the descriptors, where the Python client keys it.
fn rust_vectors(descriptors: &[pb::FrameDescriptor]) -> BTreeMap<Key, RustVector> {
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

fn count_events(descriptors: &[pb::FrameDescriptor], kind: pb::TrackEventKind) -> usize {
    descriptors
        .iter()
        .flat_map(|d| &d.track_events)
        .filter(|e| e.kind() == kind)
        .count()
}

/// Runs the node on the clip with `describe` as its `[describe]` section, the Python client and a
/// Rust client side by side, and compares what they decoded.
/// The three codec tests run one at a time: each plays the clip in real time with its own node
/// and Python client, and three at once on two cores could make a node drop frames.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn python_decodes_what_rust_decodes(describe: &str, codec_name: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    // Real time: the clip lasts 10 s, ample for the Python client to start and subscribe; both
    // clients start from the earliest buffered descriptor, so neither misses one.
    let cameras = format!(
        "[describe]\n{describe}\nsend_detections = true\n\n[[cameras]]\nid = \"bikes\"\nuri = \"{}\"\n\
         analysis_fps = 5.0\nrealtime = true\n",
        common::sample_clip().display()
    );
    let toml = common::config_toml(&cameras, "exit_when_cameras_end = true");
    let (node, mut client) = common::start_node(common::parse_config(&toml)).await;
    let addr = node.grpc_addr.to_string();

    let dir = tempfile::tempdir().expect("a temporary directory");
    let npz = dir.path().join(format!("{codec_name}.npz"));
    let script = run_python(&[
        "scripts/central/retina_client.py",
        "--addr",
        &addr,
        "--from-buffer",
        "--include-empty",
        "--name",
        "python-client-test",
        "--timeout",
        "60",
        "--save",
        npz.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .map(common::KillOnDrop::new)
    .expect("the Python client starts");

    // The Rust side asks for the full context in every descriptor; the Python side does not, and
    // so has to carry the context forward itself.
    let descriptors = common::collect_until_end(&mut client).await;
    tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .expect("node stops")
        .expect("clean stop");
    let output = tokio::task::spawn_blocking(move || script.wait_with_output())
        .await
        .unwrap()
        .expect("the Python client ends");
    let stdout = check_output("retina_client.py", &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("warning:") || l.starts_with("error:")),
        "the Python client complained:\n{stderr}"
    );

    let dump = run_python(&["-c", DUMP_NPZ, npz.to_str().unwrap()])
        .output()
        .expect("python runs");
    let dump = check_output("reading the .npz", &dump);
    let mut lines: Vec<&str> = dump.lines().collect();
    let frames: serde_json::Value = serde_json::from_str(lines.pop().expect("the frames line")).unwrap();
    let rows: Vec<Row> = lines.iter().map(|l| serde_json::from_str(l).expect("a row")).collect();

    // The same descriptors reached both clients.
    let rust_frames: Vec<serde_json::Value> = descriptors
        .iter()
        .map(|d| serde_json::json!([d.camera_id, d.sequence]))
        .collect();
    assert!(descriptors.len() >= 40, "{} descriptors", descriptors.len());
    assert_eq!(frames["frames"].as_array().unwrap(), &rust_frames, "frames received");

    // The same vectors, decoded alike.
    let mut expected = rust_vectors(&descriptors);
    let width_height = |d: &pb::FrameDescriptor| [d.frame_width, d.frame_height];
    let by_sequence: BTreeMap<u64, &pb::FrameDescriptor> = descriptors.iter().map(|d| (d.sequence, d)).collect();
    assert!(
        expected.keys().any(|k| k.2 == "objects") && expected.keys().any(|k| k.2 == "track_events"),
        "vectors both in objects and in track events"
    );
    for row in &rows {
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
        assert_eq!(row.codec, codec_name, "{key:?}");
        assert_eq!(row.vector.len(), v.len(), "{key:?}");
        let worst = row
            .vector
            .iter()
            .zip(&v)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{key:?}: Python and Rust decodings differ by {worst}");
        // Context carried forward by the Python client from the first descriptor.
        assert_eq!(row.frame_size, width_height(by_sequence[&row.sequence]), "{key:?}");
    }
    assert!(
        expected.is_empty(),
        "vectors the Python client missed: {:?}",
        expected.keys()
    );

    // One line per track event.
    let confirmed = count_events(&descriptors, pb::TrackEventKind::Confirmed);
    let ended = count_events(&descriptors, pb::TrackEventKind::Ended);
    assert!(
        confirmed > 0 && ended > 0,
        "{confirmed} tracks confirmed, {ended} ended"
    );
    // Event lines start with the capture time; the summary's do not.
    let lines_with = |word: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains(word))
            .count()
    };
    assert_eq!(lines_with(" confirmed"), confirmed, "confirmed lines:\n{stdout}");
    assert_eq!(lines_with(" ended ("), ended, "ended lines:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_decodes_f16() {
    python_decodes_what_rust_decodes("codec = \"f16\"", "f16").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_decodes_pca_int8() {
    python_decodes_what_rust_decodes("codec = \"pca-int8\"\ncodec_dimension = 64", "pca-int8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_decodes_binary() {
    python_decodes_what_rust_decodes("codec = \"binary\"\ncodec_dimension = 64", "binary").await;
}
