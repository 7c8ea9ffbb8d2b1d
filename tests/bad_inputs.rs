//! Bad input gets a clear error, through the real `retina-edge` command, as an operator sees it.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs the CLI to its end. A command that should refuse at once but runs on instead (a node that
/// accepted a bad config) fails the test rather than hanging it.
fn retina_edge(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_retina-edge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("retina-edge starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("retina-edge runs"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("retina-edge {args:?} did not end within 120 s");
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn camera(uri: &str) -> String {
    format!("[[cameras]]\nid = \"cam\"\nuri = \"{uri}\"\n")
}

/// Combined stdout + stderr, and whether the command failed.
fn check(config: &str) -> (bool, String) {
    let out = retina_edge(&["check", "--config", config]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (!out.status.success(), text)
}

#[test]
fn the_shipped_configs_are_valid() {
    for config in ["config/retina-edge.toml", "config/demo.toml"] {
        let path = common::repo().join(config);
        common::sample_clip();
        let (failed, text) = check(path.to_str().unwrap());
        assert!(!failed, "{config}: {text}");
        assert!(
            text.contains("model nanodet-g-416@1.0.0")
                && text.contains("embedding codec: pca-int8")
                && text.contains("projection mnv2-1280-pca-v1")
                && text.contains("is valid"),
            "{text}"
        );
    }
}

#[test]
fn a_node_without_an_embedder_needs_no_projection() {
    // Boxes and tracks only: the default codec (pca-int8) has nothing to encode.
    let dir = tempfile::tempdir().unwrap();
    let clip = common::sample_clip();
    let text = common::config_toml(&camera(clip.to_str().unwrap()), "");
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("embedder_manifest"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, text, "the test config names an embedder");
    let (failed, out) = check(&write(dir.path(), "boxes-only.toml", &without));
    assert!(!failed && out.contains("is valid"), "{out}");
}

#[test]
fn missing_video_file_and_unsupported_uri_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "a.toml",
        &common::config_toml(&camera("/no/such/clip.mp4"), ""),
    );
    let (failed, text) = check(&config);
    assert!(
        failed && text.contains("camera cam") && text.contains("/no/such/clip.mp4"),
        "{text}"
    );
    assert!(text.contains("No such file"), "{text}");

    let config = write(
        dir.path(),
        "b.toml",
        &common::config_toml(&camera("gopher://cam.example/1"), ""),
    );
    let (failed, text) = check(&config);
    assert!(
        failed && text.contains("no GStreamer source handles gopher://"),
        "{text}"
    );

    // The camera state file (cameras changed over gRPC) replaces the config's cameras, for
    // `check` as for `run`: a good config with a bad saved camera is reported.
    let clip = common::sample_clip();
    let good = write(
        dir.path(),
        "c.toml",
        &common::config_toml(&camera(clip.to_str().unwrap()), ""),
    );
    assert!(!check(&good).0);
    write(
        dir.path(),
        "c.cameras.toml",
        "[[cameras]]\nid = \"saved\"\nuri = \"/no/such/saved.mp4\"\n",
    );
    let (failed, text) = check(&good);
    assert!(
        failed
            && text.contains("c.cameras.toml")
            && text.contains("camera saved")
            && text.contains("/no/such/saved.mp4"),
        "{text}"
    );
    // `run` starts all the same: nothing saved over gRPC may keep the node from coming up. The
    // saved camera is FAILED, with its reason in the log (and the node, whose only camera
    // cannot run, ends at once here).
    let ending = write(
        dir.path(),
        "d.toml",
        &common::config_toml(&camera(clip.to_str().unwrap()), "exit_when_cameras_end = true"),
    );
    std::fs::copy(dir.path().join("c.cameras.toml"), dir.path().join("d.cameras.toml")).unwrap();
    let out = retina_edge(&["run", "--config", &ending]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stderr.contains("camera=saved state=\"FAILED\" kind=\"not_found\"")
            && stderr.contains("/no/such/saved.mp4"),
        "{stderr}"
    );

    // `run` refuses too, at once, instead of running without the camera.
    let out = retina_edge(&["run", "--config", &config]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gopher://"));
}

#[test]
fn malformed_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let clip = common::sample_clip();
    let good = common::config_toml(&camera(clip.to_str().unwrap()), "");

    let config = write(dir.path(), "syntax.toml", &good.replace("[inference]", "[inference"));
    let (failed, text) = check(&config);
    assert!(
        failed && text.contains("syntax.toml") && text.contains("line"),
        "{text}"
    );

    let config = write(
        dir.path(),
        "field.toml",
        &good.replace("workers = 2", "worker_count = 2"),
    );
    let (failed, text) = check(&config);
    assert!(failed && text.contains("unknown field `worker_count`"), "{text}");

    let config = write(
        dir.path(),
        "value.toml",
        &good.replace("workers = 2", "workers = \"two\""),
    );
    let (failed, text) = check(&config);
    assert!(failed && text.contains("workers"), "{text}");

    let (failed, text) = check(&dir.path().join("absent.toml").display().to_string());
    assert!(failed && text.contains("absent.toml"), "{text}");
}

/// Checks a config whose embedder manifest is the bundled one with `edits` applied.
fn check_with_edited_embedder(dir: &Path, name: &str, edits: &[(&str, &str)]) -> (bool, String) {
    check_with_edited_embedder_and(dir, name, edits, "")
}

/// The same, with more TOML (e.g. a `[describe]` table) after the cameras.
fn check_with_edited_embedder_and(dir: &Path, name: &str, edits: &[(&str, &str)], more: &str) -> (bool, String) {
    let repo = common::repo().display().to_string();
    let bundled = format!("{repo}/models/mobilenetv2-1280.toml");
    let mut manifest = std::fs::read_to_string(&bundled).unwrap();
    for (from, to) in edits {
        assert!(manifest.contains(from), "bundled manifest has no {from:?}");
        manifest = manifest.replace(from, to);
    }
    let manifest = write(dir, &format!("{name}.toml"), &manifest);
    let clip = common::sample_clip();
    let cameras = format!("{}\n{more}", camera(clip.to_str().unwrap()));
    let config = common::config_toml(&cameras, "").replace(&bundled, &manifest);
    check(&write(dir, &format!("{name}-config.toml"), &config))
}

#[test]
fn models_that_are_wrong_or_garbage_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = common::repo()
        .join("models/mobilenetv2-1280.onnx")
        .display()
        .to_string();
    let absolute_model = format!("file = \"{onnx}\"");
    let bundled_file = "file = \"mobilenetv2-1280.onnx\"";

    // A manifest whose input name is not the model's.
    let (failed, text) = check_with_edited_embedder(
        dir.path(),
        "wrong",
        &[
            ("name = \"input\"", "name = \"pixels\""),
            (bundled_file, &absolute_model),
        ],
    );
    assert!(failed && text.contains("does not match its manifest"), "{text}");
    assert!(
        text.contains("input \"pixels\" named in the manifest is not in the model"),
        "{text}"
    );

    // Random bytes where the ONNX file should be.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(dir.path().join("noise.onnx"), noise).unwrap();
    let (failed, text) = check_with_edited_embedder(dir.path(), "noise", &[(bundled_file, "file = \"noise.onnx\"")]);
    assert!(
        failed && text.contains("noise.onnx could not be loaded by ONNX Runtime"),
        "{text}"
    );

    // A decoder the node does not have.
    let (failed, text) =
        check_with_edited_embedder(dir.path(), "decoder", &[("kind = \"embedding\"", "kind = \"yolo-v8\"")]);
    assert!(
        failed && text.contains("decoder.toml") && text.contains("yolo-v8"),
        "{text}"
    );

    // A detector manifest that loads and matches the model's names, but maps a class to a score
    // column the model does not have: only a run shows it, and check makes one.
    let repo = common::repo().display().to_string();
    let detector = edited_manifest(
        dir.path(),
        "ssdlite-mobilenetv2-coco",
        &[("  0, 1, 2, 3, 4, 5, 6,", "  0, 1, 2, 3, 4, 5, 96,")],
    );
    let clip = common::sample_clip();
    let config = common::config_toml(&camera(clip.to_str().unwrap()), "")
        .replace(&format!("{repo}/models/nanodet-g-416.toml"), &detector);
    let (failed, text) = check(&write(dir.path(), "columns.toml", &config));
    assert!(
        failed && text.contains("90 score columns; the class map needs 97") && text.contains("ssdlite"),
        "{text}"
    );
}

#[test]
fn codecs_and_projections_that_cannot_work_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let models = common::repo().join("models").display().to_string();
    let bundled_model = "file = \"mobilenetv2-1280.onnx\"";
    let absolute_model = format!("file = \"{models}/mobilenetv2-1280.onnx\"");
    let bundled_projection = "file = \"mobilenetv2-1280.projection.safetensors\"";
    let absolute_projection = format!("file = \"{models}/mobilenetv2-1280.projection.safetensors\"");
    let moved = [
        (bundled_model, absolute_model.as_str()),
        (bundled_projection, absolute_projection.as_str()),
    ];

    // A code size the projection has no rotation for: the sizes it has are listed.
    let (failed, text) = check_with_edited_embedder_and(
        dir.path(),
        "bits",
        &moved,
        "[describe]\ncodec = \"binary\"\ncodec_dimension = 48\n",
    );
    assert!(
        failed && text.contains("cannot produce dimension 48") && text.contains("32, 64, 128"),
        "{text}"
    );

    // A projected codec with an embedder that has no projection.
    let (failed, text) = check_with_edited_embedder_and(
        dir.path(),
        "none",
        &[
            (bundled_model, &absolute_model),
            (
                "[projection]\nid = \"mnv2-1280-pca-v1\"\nfile = \"mobilenetv2-1280.projection.safetensors\"\n",
                "",
            ),
        ],
        "",
    );
    assert!(failed && text.contains("needs a projection"), "{text}");

    // Garbage where the projection should be: the file is named.
    std::fs::write(dir.path().join("noise.safetensors"), b"not tensors at all").unwrap();
    let (failed, text) = check_with_edited_embedder_and(
        dir.path(),
        "noise",
        &[
            (bundled_model, &absolute_model),
            (bundled_projection, "file = \"noise.safetensors\""),
        ],
        "",
    );
    assert!(failed && text.contains("noise.safetensors"), "{text}");

    // The float codecs need no projection and take no dimension.
    let (failed, text) = check_with_edited_embedder_and(dir.path(), "int8", &moved, "[describe]\ncodec = \"int8\"\n");
    assert!(!failed && text.contains("embedding codec: int8"), "{text}");
    let (failed, text) = check_with_edited_embedder_and(
        dir.path(),
        "int8dim",
        &moved,
        "[describe]\ncodec = \"int8\"\ncodec_dimension = 64\n",
    );
    assert!(failed && text.contains("codec_dimension"), "{text}");
}

#[test]
fn missing_onnx_runtime_library_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let clip = common::sample_clip();
    let config = common::config_toml(&camera(clip.to_str().unwrap()), "").replace(
        common::ort_library().to_str().unwrap(),
        "/opt/nowhere/libonnxruntime.so.1.32.0",
    );
    let (failed, text) = check(&write(dir.path(), "c.toml", &config));
    assert!(
        failed && text.contains("/opt/nowhere/libonnxruntime.so.1.32.0") && text.contains("make deps"),
        "{text}"
    );
}

#[test]
fn subscribing_to_a_node_that_is_not_there_fails_clearly() {
    // Bind and drop a listener to get a loopback port nobody listens on.
    let port = common::free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let out = retina_edge(&["subscribe", "--addr", &addr, "--connect-timeout-seconds", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot connect to {addr}")), "{stderr}");
}

#[test]
fn a_taken_grpc_port_fails_the_start_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clip = common::sample_clip();
    let config = common::config_toml(&camera(clip.to_str().unwrap()), "")
        .replace("grpc_listen = \"127.0.0.1:0\"", &format!("grpc_listen = \"{addr}\""));
    let out = retina_edge(&["run", "--config", &write(dir.path(), "c.toml", &config)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("binding gRPC endpoint {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

/// Copies a bundled manifest into `dir` with `edits`, the files it names (model, projection)
/// named by absolute path so that the copy still finds them.
fn edited_manifest(dir: &Path, bundled: &str, edits: &[(&str, &str)]) -> String {
    let models = common::repo().join("models");
    let mut manifest = std::fs::read_to_string(models.join(format!("{bundled}.toml"))).unwrap();
    for file in [format!("{bundled}.onnx"), format!("{bundled}.projection.safetensors")] {
        let absolute = format!("file = \"{}/{file}\"", models.display());
        manifest = manifest.replace(&format!("file = \"{file}\""), &absolute);
    }
    for (from, to) in edits {
        assert!(manifest.contains(from), "bundled {bundled} manifest has no {from:?}");
        manifest = manifest.replace(from, to);
    }
    write(dir, &format!("{bundled}-edited.toml"), &manifest)
}

/// The `bad ...` lines of a check's output: one per problem.
fn problem_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("bad ")).collect()
}

#[test]
fn check_lists_every_problem_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let repo = common::repo().display().to_string();
    let bundled_detector = format!("{repo}/models/nanodet-g-416.toml");
    let bundled_embedder = format!("{repo}/models/mobilenetv2-1280.toml");
    let cameras = "[[cameras]]\nid = \"gone\"\nuri = \"/no/such/gone.mp4\"\n\n\
                   [[cameras]]\nid = \"gopher\"\nuri = \"gopher://cam.example/1\"\n";

    // Five independent problems, none of which hides another: two cameras, no ONNX Runtime, a
    // detector manifest with a decoder the node does not have, no embedder manifest at all.
    let detector = edited_manifest(
        dir.path(),
        "nanodet-g-416",
        &[("kind = \"nanodet-gfl\"", "kind = \"yolo-v8\"")],
    );
    let config = common::config_toml(cameras, "")
        .replace(
            common::ort_library().to_str().unwrap(),
            "/opt/nowhere/libonnxruntime.so.1.32.0",
        )
        .replace(&bundled_detector, &detector)
        .replace(&bundled_embedder, "/no/such/embedder.toml");
    let (failed, text) = check(&write(dir.path(), "five.toml", &config));
    let problems = problem_lines(&text);
    assert!(failed, "{text}");
    for (what, said) in [
        ("the missing camera file", "/no/such/gone.mp4"),
        ("the unsupported URI", "gopher://"),
        ("the missing ONNX Runtime", "/opt/nowhere/libonnxruntime.so.1.32.0"),
        (
            "the detector manifest with an unknown decoder",
            "nanodet-g-416-edited.toml",
        ),
        ("the missing embedder manifest", "/no/such/embedder.toml"),
    ] {
        assert!(
            problems.iter().filter(|l| l.contains(said)).count() == 1,
            "{what} ({said}) is listed once among the problems:\n{text}"
        );
    }
    assert!(
        problems.len() == 5 && text.contains("has 5 problem(s)") && text.contains("yolo-v8"),
        "{text}"
    );

    // With ONNX Runtime there, both models are verified: each disagrees with its manifest.
    let detector = edited_manifest(
        dir.path(),
        "nanodet-g-416",
        &[("name = \"input_1:0\"", "name = \"pixels\"")],
    );
    let embedder = edited_manifest(
        dir.path(),
        "mobilenetv2-1280",
        &[("name = \"input\"", "name = \"pixels\"")],
    );
    let config = common::config_toml(cameras, "")
        .replace(&bundled_detector, &detector)
        .replace(&bundled_embedder, &embedder);
    let (failed, text) = check(&write(dir.path(), "four.toml", &config));
    let problems = problem_lines(&text);
    assert!(failed, "{text}");
    for (what, said) in [
        ("the missing camera file", "/no/such/gone.mp4"),
        ("the unsupported URI", "gopher://"),
        (
            "the detector that disagrees",
            "nanodet-g-416.onnx does not match its manifest",
        ),
        (
            "the embedder that disagrees",
            "mobilenetv2-1280.onnx does not match its manifest",
        ),
    ] {
        assert!(
            problems.iter().filter(|l| l.contains(said)).count() == 1,
            "{what} ({said}) is listed once among the problems:\n{text}"
        );
    }
    assert!(
        problems.len() == 4
            && text.contains("has 4 problem(s)")
            && text
                .matches("input \"pixels\" named in the manifest is not in the model")
                .count()
                == 2,
        "{text}"
    );
}
