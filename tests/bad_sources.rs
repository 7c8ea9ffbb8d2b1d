//! One bad camera never takes the node down. Every entry of the bad-media corpus
//! (scripts/make-bad-media.sh), HTTP sources that answer as misconfigured cameras do, and RTSP
//! servers that refuse, close or speak garbage, all run as cameras in one node beside a good
//! camera: the good camera keeps its rate, the node never exits, and each bad camera ends in the
//! state its kind of failure calls for, with a reason an operator can act on.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::rtsp::TestCamera;
use common::sources::{self, HttpServer, Route};
use common::{Client, KillOnDrop, node_info};
use retina_edge::pb::{self, CameraState};

/// What a camera should come to.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Streams and is analysed: unusual, but video.
    Streams,
    /// `FAILED` for good: the failure label, and words the reason must contain.
    Fails(&'static str, &'static str),
    /// Retried with backoff: the failure label.
    Retries(&'static str),
}

struct Case {
    id: String,
    uri: String,
    outcome: Outcome,
}

const GOOD_FPS: f64 = 4.0;

/// The tests of this file run one at a time: two of them measure the good camera's rate, and on a
/// 2-core machine a neighbour decoding as fast as it can (realtime = false) takes the cores that
/// rate needs. CI once saw 2.95 of 4 frames/s that way.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn camera_toml(case: &Case) -> String {
    // The unusual-but-valid sources are analysed slowly, so that inference has room for the
    // good camera whatever the others do: 18 of them at 0.25 frames/s and the good camera's 4
    // fit a 2-core machine that also decodes them all (at 0.5 they did not: the fair share left
    // the good camera 2.7 frames/s). Failures are retried every 2 s so that the test sees
    // several retries fail the same way.
    format!(
        "[[cameras]]\nid = \"{}\"\nuri = \"{}\"\nanalysis_fps = 0.25\nloop_file = true\nfailed_retry_seconds = 2.0\n\
         stall_timeout_seconds = 3.0\nreconnect_initial_seconds = 0.5\nreconnect_max_seconds = 2.0\n\
         rtsp_transport = \"tcp\"\n",
        case.id, case.uri
    )
}

fn good_camera() -> String {
    format!(
        "[[cameras]]\nid = \"good\"\nuri = \"{}\"\nanalysis_fps = {GOOD_FPS}\nloop_file = true\n",
        common::sample_clip().display()
    )
}

fn corpus_cases(corpus: &Path) -> Vec<Case> {
    use Outcome::*;
    let damaged = Fails("not_media", "damaged or truncated");
    let files = [
        ("still-640x480.jpg", Streams),
        ("still-4000x3000.jpg", Streams),
        ("still-24x16.png", Streams),
        ("still-320x240.png", Streams),
        ("still-gray.png", Streams),
        ("still-frame.jpg", Streams),
        ("still.bmp", damaged),
        ("audio-only.mp3", Fails("no_video", "no video stream (only audio")),
        ("audio-only.m4a", Fails("no_video", "no video stream (only audio")),
        ("audio-only.ogg", Fails("no_video", "no video stream (only audio")),
        ("empty.mp4", Fails("not_media", "empty")),
        ("truncated.mp4", damaged),
        ("truncated-tail.mp4", damaged),
        ("truncated-faststart.mp4", Streams),
        ("garbage.mp4", Fails("not_media", "not video that GStreamer recognises")),
        ("garbage.ts", Fails("not_media", "no video that can be played")),
        ("page.html", Fails("not_media", "a web page (text/html)")),
        ("huge-7680x4320.mkv", Streams),
        ("tiny-8x8.mkv", Streams),
        ("gray.mkv", Streams),
        ("yuv444.mkv", Streams),
        ("mjpeg.avi", Streams),
        ("h265.mkv", Streams),
        ("unknown-codec.mkv", Fails("unsupported_codec", "video/x-unknown")),
        ("vfr.mkv", Streams),
        ("caps-change.ts", Streams),
        ("no-timestamps.h264", Streams),
    ];
    files
        .into_iter()
        .map(|(name, outcome)| Case {
            id: format!("file-{}", name.replace('.', "_")),
            uri: corpus.join(name).display().to_string(),
            outcome,
        })
        .collect()
}

fn http_routes(corpus: &Path) -> Vec<Route> {
    let read = |name: &str| std::fs::read(corpus.join(name)).expect("corpus file");
    vec![
        Route {
            path: "/snapshot.jpg",
            status: 200,
            content_type: "image/jpeg",
            body: read("still-frame.jpg"),
        },
        Route {
            path: "/login",
            status: 200,
            content_type: "text/html",
            body: read("page.html"),
        },
        Route {
            path: "/private.jpg",
            status: 401,
            content_type: "text/html",
            body: b"<html>login required</html>".to_vec(),
        },
        Route {
            path: "/forbidden.mjpg",
            status: 403,
            content_type: "text/html",
            body: b"<html>forbidden</html>".to_vec(),
        },
        Route {
            path: "/stream.bin",
            status: 200,
            content_type: "application/octet-stream",
            body: read("garbage.mp4"),
        },
    ]
}

/// Samples the good camera's analysed-frame counter for at least `at_least`, and until every
/// camera has come to its outcome; returns the counter's samples.
async fn watch(client: &mut Client, cases: &[Case], at_least: Duration, within: Duration) -> Vec<(Instant, u64)> {
    let started = Instant::now();
    let deadline = started + within;
    let mut samples = Vec::new();
    loop {
        let info = node_info(client).await;
        let good = info
            .cameras
            .iter()
            .find(|c| c.camera_id == "good")
            .expect("good camera listed");
        samples.push((Instant::now(), good.frames_analysed));
        let pending: Vec<String> = cases
            .iter()
            .filter(|case| {
                let camera = info.cameras.iter().find(|c| c.camera_id == case.id);
                !camera.is_some_and(|c| has_come_to(c, case.outcome))
            })
            .map(|case| {
                let camera = info.cameras.iter().find(|c| c.camera_id == case.id);
                format!("{} ({:?}): {camera:?}", case.id, case.outcome)
            })
            .collect();
        if pending.is_empty() && started.elapsed() >= at_least {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "within {within:?}, not every camera came to its outcome:\n{}",
            pending.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn has_come_to(camera: &pb::CameraInfo, outcome: Outcome) -> bool {
    let state = camera.state();
    match outcome {
        Outcome::Streams => state == CameraState::Streaming && camera.frames_analysed >= 2,
        // FAILED at least twice: the retry after failed_retry_seconds failed the same way.
        Outcome::Fails(label, words) => {
            state == CameraState::Failed
                && camera.failure == label
                && camera.last_error.contains(words)
                && camera.restarts >= 2
                && camera.frames_analysed == 0
        }
        Outcome::Retries(label) => {
            state != CameraState::Streaming
                && state != CameraState::Failed
                && camera.failure == label
                && camera.restarts >= 2
        }
    }
}

/// The good camera was analysed at its rate, with no gap, over the samples.
fn assert_kept_its_rate(samples: &[(Instant, u64)]) {
    let (first, last) = (samples.first().unwrap(), samples.last().unwrap());
    let seconds = last.0.duration_since(first.0).as_secs_f64();
    let rate = (last.1 - first.1) as f64 / seconds;
    assert!(
        rate >= 0.75 * GOOD_FPS,
        "the good camera was analysed at {rate:.2} frames/s over {seconds:.1} s, asked for {GOOD_FPS}"
    );
    let mut last_progress = first.0;
    let mut longest_gap = Duration::ZERO;
    for pair in samples.windows(2) {
        if pair[1].1 > pair[0].1 {
            longest_gap = longest_gap.max(pair[1].0.duration_since(last_progress));
            last_progress = pair[1].0;
        }
    }
    assert!(
        longest_gap < Duration::from_secs(3),
        "the good camera went {longest_gap:?} without an analysed frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_source_fails_alone_while_a_good_camera_keeps_its_rate() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let corpus = sources::bad_media();
    let http = HttpServer::start(http_routes(&corpus));
    let clip = common::sample_clip();
    let locked = TestCamera::start_with_credentials(&clip, "admin", "s3cret");
    let serving = TestCamera::start(&clip);
    let mut closing = TestCamera::start(&clip);
    let garbage_port = sources::garbage_rtsp_server();

    let mut cases = corpus_cases(&corpus);
    let live = [
        ("http-snapshot", http.url("/snapshot.jpg"), Outcome::Streams),
        (
            "http-login-page",
            http.url("/login"),
            Outcome::Fails("not_media", "a web page"),
        ),
        (
            "http-404",
            http.url("/missing.mp4"),
            Outcome::Fails("not_found", "not found"),
        ),
        (
            "http-401",
            http.url("/private.jpg"),
            Outcome::Fails("unauthorized", "user name and password"),
        ),
        (
            "http-403",
            http.url("/forbidden.mjpg"),
            Outcome::Fails("unauthorized", "access denied"),
        ),
        (
            "http-garbage",
            http.url("/stream.bin"),
            Outcome::Fails("not_media", "not video"),
        ),
        (
            "rtsp-401",
            locked.uri_with("admin", "wrong"),
            Outcome::Fails("unauthorized", "user name and password"),
        ),
        (
            "rtsp-404",
            serving.uri().replace("/cam", "/no-such-stream"),
            Outcome::Fails("not_found", "not found"),
        ),
        (
            "rtsp-garbage",
            format!("rtsp://127.0.0.1:{garbage_port}/cam"),
            Outcome::Retries("unreachable"),
        ),
        ("rtsp-closes", closing.uri(), Outcome::Streams),
    ];
    cases.extend(live.into_iter().map(|(id, uri, outcome)| Case {
        id: id.into(),
        uri,
        outcome,
    }));
    let cameras: String = std::iter::once(good_camera())
        .chain(cases.iter().map(camera_toml))
        .collect();
    let config = common::parse_config(&common::config_toml(&cameras, "metrics_listen = \"127.0.0.1:0\""));
    let node_started = Instant::now();
    let (node, mut client) = common::start_node(config).await;

    common::wait_for_camera(&mut client, "good", Duration::from_secs(30), "streams", |c| {
        c.state() == CameraState::Streaming && c.frames_analysed > 0
    })
    .await;
    // Long enough for every failing camera to be retried several times.
    let mut samples = watch(&mut client, &cases, Duration::from_secs(20), Duration::from_secs(90)).await;

    // Failing cameras are retried every 2 s; a pipeline run that leaked a thread or a file would
    // show within another 15 s of that (here: 14 failing cameras, about 100 failed runs).
    let (threads_before, fds_before) = common::threads_and_fds();
    let mut more = watch(&mut client, &cases, Duration::from_secs(15), Duration::from_secs(60)).await;
    samples.append(&mut more);
    let (threads_after, fds_after) = common::threads_and_fds();
    eprintln!("threads {threads_before} -> {threads_after}, fds {fds_before} -> {fds_after}");
    assert!(
        threads_after <= threads_before + 20 && fds_after <= fds_before + 20,
        "threads {threads_before} -> {threads_after}, fds {fds_before} -> {fds_after}"
    );

    // An RTSP server that closes mid-stream and refuses reconnections: retried with backoff,
    // never FAILED (it may come back).
    closing.stop();
    let closed = cases.iter_mut().find(|c| c.id == "rtsp-closes").unwrap();
    closed.outcome = Outcome::Retries("unreachable");
    let mut more = watch(
        &mut client,
        std::slice::from_ref(closed),
        Duration::ZERO,
        Duration::from_secs(30),
    )
    .await;
    samples.append(&mut more);

    let metrics_addr = node.metrics_addr.unwrap();
    let metrics = common::http_get(metrics_addr, "/metrics").await;
    let good_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            (l.contains("camera=\"good\"")
                || l.contains("analysed_total")
                || l.contains("publish_seconds_sum")
                || l.contains("inference_busy")
                || l.contains("retina_infer"))
                && !l.contains("_bucket")
        })
        .collect();
    eprintln!("{}", good_lines.join("\n"));
    assert_kept_its_rate(&samples);
    let good = &samples;
    let seconds = good.last().unwrap().0.duration_since(good[0].0).as_secs_f64();
    eprintln!(
        "good camera: {:.2} frames/s over {seconds:.1} s",
        (good.last().unwrap().1 - good[0].1) as f64 / seconds
    );
    let good = common::camera_info(&mut client, "good").await;
    assert_eq!(good.restarts, 0, "the good camera never restarted: {good:?}");
    // Nor did the others take more than their share. Files of a few seconds, looped, once went
    // unanalysed after their first frame, or ran at 2.4 times real time.
    let ran_for = node_started.elapsed().as_secs_f64();
    for camera in node_info(&mut client).await.cameras {
        let allowed = (camera.analysis_fps * ran_for).ceil() as u64 + 1;
        assert!(
            camera.frames_analysed <= allowed,
            "{} analysed {} frames in {ran_for:.1} s at {} frames/s",
            camera.camera_id,
            camera.frames_analysed,
            camera.analysis_fps
        );
    }

    // A 3 s clip at 25 frames/s, looped, is decoded in real time (it ran at 2.4 times that when
    // a loop began as soon as the last analysed frame was shown).
    let tiny = "retina_camera_frames_decoded_total{camera=\"file-tiny-8x8_mkv\"} ";
    let decoded: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(tiny))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{tiny} in the metrics"));
    assert!(
        decoded <= 25.0 * node_started.elapsed().as_secs_f64() * 1.05,
        "{decoded} frames of a 25 frames/s clip in {:.1} s",
        node_started.elapsed().as_secs_f64()
    );

    // The same reasons, counted by kind, in the metrics; and the state of each camera.
    // The server that went away first ended its stream (EOS), then refused reconnections.
    let ended = "retina_camera_failures_total{camera=\"rtsp-closes\",kind=\"ended\"} ";
    assert!(metrics.lines().any(|l| l.starts_with(ended)), "{ended} in the metrics");
    for case in &cases {
        let (label, state, at_least) = match case.outcome {
            Outcome::Fails(label, _) => (label, "failed", 2.0),
            Outcome::Retries(label) => (label, "reconnecting", 1.0),
            Outcome::Streams => continue,
        };
        let counter = format!(
            "retina_camera_failures_total{{camera=\"{}\",kind=\"{label}\"}}",
            case.id
        );
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&counter))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{counter} in the metrics"));
        assert!(count >= at_least, "{counter} {count}");
        // A failed camera is retried every 2 s, so it is not FAILED at every instant: its gauge
        // must show it within a few retries.
        if state == "failed" {
            let gauge = format!("retina_camera_state{{camera=\"{}\",state=\"failed\"}} 1", case.id);
            let deadline = Instant::now() + Duration::from_secs(15);
            while !common::http_get(metrics_addr, "/metrics").await.contains(&gauge) {
                assert!(Instant::now() < deadline, "{gauge}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        !metrics.contains("retina_camera_failures_total{camera=\"good\""),
        "the good camera has no failures"
    );
    common::stop_node(node).await;
}

/// A still image as a camera used to abort the whole process (videorate's assertion on a buffer
/// without duration), through one AddCamera. Now an image file is analysed once, and a
/// snapshot URL is fetched again at the analysis rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn still_images_added_over_grpc_are_analysed_and_the_node_goes_on() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let corpus = sources::bad_media();
    let http = HttpServer::start(http_routes(&corpus));
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::parse_config(&common::config_toml(&good_camera(), ""));
    config.node.camera_state_file = Some(dir.path().join("cameras.toml"));
    config.admin.allowed_file_dirs = vec![corpus.clone()];
    let (node, mut client) = common::start_node(config).await;
    let mut admin = common::admin(&node).await;
    common::wait_for_camera(&mut client, "good", Duration::from_secs(30), "streams", |c| {
        c.frames_analysed > 0
    })
    .await;
    let before = common::camera_info(&mut client, "good").await.frames_analysed;
    let started = Instant::now();

    let add = |id: &str, uri: String, fps: f64| pb::AddCameraRequest {
        camera: Some(pb::CameraSpec {
            camera_id: id.into(),
            uri,
            analysis_fps: Some(fps),
            ..Default::default()
        }),
    };
    let image = corpus.join("still-frame.jpg").display().to_string();
    admin
        .add_camera(add("picture", image, 2.0))
        .await
        .expect("AddCamera with a JPEG file");
    admin
        .add_camera(add("snapshot", http.url("/snapshot.jpg"), 2.0))
        .await
        .expect("AddCamera with a snapshot URL");

    // The file: one frame, then it ends like a clip. The URL: fetched every half second.
    common::wait_for_camera(&mut client, "picture", Duration::from_secs(20), "analysed once", |c| {
        c.state() == CameraState::Stopped && c.frames_analysed == 1
    })
    .await;
    common::wait_for_camera(&mut client, "snapshot", Duration::from_secs(20), "polled", |c| {
        c.state() == CameraState::Streaming && c.frames_analysed >= 8
    })
    .await;
    let snapshot = common::camera_info(&mut client, "snapshot").await;
    assert_eq!(snapshot.restarts, 0, "polls are not failures: {snapshot:?}");
    let polled_for = started.elapsed().as_secs_f64();
    assert!(
        snapshot.frames_analysed as f64 <= 2.0 * polled_for + 2.0,
        "fetched at most at the analysis rate: {} frames in {polled_for:.1} s",
        snapshot.frames_analysed
    );

    let good = common::camera_info(&mut client, "good").await;
    let rate = (good.frames_analysed - before) as f64 / started.elapsed().as_secs_f64();
    assert!(
        rate >= 0.75 * GOOD_FPS,
        "the good camera kept {rate:.2} frames/s of {GOOD_FPS}"
    );
    common::stop_node(node).await;
}

fn spawn_node(config: &Path) -> KillOnDrop {
    KillOnDrop::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("retina-edge starts"),
    )
}

/// The crash-loop guard: a node killed (-9) while a camera added at run time is still starting
/// comes back with that camera FAILED, not started, and every other camera streaming; updating
/// the camera starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_a_camera_is_on_probation_comes_back_without_it() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let text = common::config_toml(&good_camera(), "").replace("127.0.0.1:0", &addr)
        + &format!(
            "\n[admin]\nallowed_file_dirs = [\"{}\", \"{}\"]\n",
            common::repo().join(".deps").display(),
            dir.path().display()
        );
    let config_path = dir.path().join("node.toml");
    std::fs::write(&config_path, text).unwrap();
    let state_path = dir.path().join("node.cameras.toml");

    let mut node = spawn_node(&config_path);
    let mut client = common::connect(&addr).await;
    common::wait_for_camera(&mut client, "good", Duration::from_secs(30), "streams", |c| {
        c.frames_analysed > 0
    })
    .await;

    // A camera whose server accepts the connection and never answers: it is still starting
    // when the node dies.
    let (_silent, port) = sources::silent_server();
    common::Admin::connect(format!("http://{addr}"))
        .await
        .expect("admin client connects")
        .add_camera(pb::AddCameraRequest {
            camera: Some(pb::CameraSpec {
                camera_id: "hanging".into(),
                uri: format!("rtsp://127.0.0.1:{port}/cam"),
                ..Default::default()
            }),
        })
        .await
        .expect("AddCamera");
    let saved = std::fs::read_to_string(&state_path).unwrap();
    assert!(saved.contains("[probation.hanging]"), "{saved}");
    node.kill().unwrap();
    node.wait().unwrap();

    let mut node = spawn_node(&config_path);
    let mut client = common::connect(&addr).await;
    common::wait_for_camera(&mut client, "good", Duration::from_secs(30), "streams again", |c| {
        c.state() == CameraState::Streaming && c.frames_analysed > 0
    })
    .await;
    let hanging = common::camera_info(&mut client, "hanging").await;
    assert_eq!(hanging.state(), CameraState::Failed, "{hanging:?}");
    assert_eq!(hanging.failure, "crashed_on_probation");
    assert!(
        hanging
            .last_error
            .contains("the node stopped while this camera was starting"),
        "{hanging:?}"
    );
    assert_eq!(
        (hanging.restarts, hanging.frames_analysed),
        (0, 0),
        "never started: {hanging:?}"
    );
    let saved = std::fs::read_to_string(&state_path).unwrap();
    assert!(
        saved.contains("failed = \"the node stopped while this camera was starting"),
        "{saved}"
    );
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"))
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .expect("retina-edge check runs");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        !check.status.success() && said.contains("camera hanging") && said.contains("the node stopped while"),
        "check reports the camera left on probation: {said}"
    );

    // Once changed, it is tried again, and leaves probation with its first frame.
    common::Admin::connect(format!("http://{addr}"))
        .await
        .expect("admin client connects")
        .update_camera(pb::UpdateCameraRequest {
            camera_id: "hanging".into(),
            uri: Some(common::sample_clip().display().to_string()),
            ..Default::default()
        })
        .await
        .expect("UpdateCamera");
    common::wait_for_camera(&mut client, "hanging", Duration::from_secs(30), "streams", |c| {
        c.state() == CameraState::Streaming && c.frames_analysed > 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&state_path).unwrap().contains("probation") {
        assert!(Instant::now() < deadline, "probation never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.kill().unwrap();
    let _ = node.wait();
}

/// GStreamer's own warnings reach the node's log (they used to go nowhere unless GST_DEBUG was
/// set), and a healthy run logs no GLib critical: dropping frames with `PadProbeReturn::Drop`
/// logged one per dropped frame, which the bridge revealed.
#[test]
fn gstreamer_warnings_are_in_the_log_and_a_clean_run_has_no_critical() {
    let _alone = ONE_AT_A_TIME.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let camera = format!(
        "[[cameras]]\nid = \"half\"\nuri = \"{}\"\nanalysis_fps = 5.0\nrealtime = false\n",
        sources::bad_media().join("truncated-faststart.mp4").display()
    );
    let config = dir.path().join("node.toml");
    std::fs::write(&config, common::config_toml(&camera, "exit_when_cameras_end = true")).unwrap();
    let node = KillOnDrop::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env_remove("GST_DEBUG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("retina-edge starts"),
    );
    let out = node.wait_with_output().expect("the node ends with its file");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN gstreamer:") && l.contains("category=\"qtdemux\"")),
        "qtdemux's warning about the cut file is in the log:\n{log}"
    );
    assert!(!log.contains(" glib:"), "no GLib critical or warning:\n{log}");
}
