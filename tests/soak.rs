//! Soak (`make soak`, not part of `make test`): the real `retina-edge` binary watches several
//! local RTSP cameras (real footage) that are rebooted and hung on a schedule, for
//! `SOAK_MINUTES` (default 20). Prints the node's RSS after warm-up and at the end, reconnects,
//! and analysed fps per camera; fails if memory grew 5 % or more after warm-up, or if any outage
//! was not recovered. `SOAK_OVERLOAD_CAMERAS` (default 1) looping files ask for every frame
//! beside them, so inference is overloaded and frames are dropped the whole time: memory must
//! stay flat under overload too.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rtsp::TestCamera;
use retina_edge::pb::{self, retina_client::RetinaClient};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running soak: make soak"]
async fn soak() {
    let minutes = env_u64("SOAK_MINUTES", 20);
    let camera_count = env_u64("SOAK_CAMERAS", 3) as usize;
    let duration = Duration::from_secs(minutes * 60);
    let event_every = Duration::from_secs(env_u64("SOAK_EVENT_SECONDS", 45));
    let warm_up = Duration::from_secs(120).min(duration / 5);
    let clip = common::sample_clip();
    let mut cameras: Vec<TestCamera> = (0..camera_count).map(|_| TestCamera::start(&clip)).collect();

    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let camera_config: String = cameras
        .iter()
        .enumerate()
        .map(|(i, cam)| {
            format!(
                "[[cameras]]\nid = \"cam{i}\"\nuri = \"{}\"\nanalysis_fps = 5.0\nstall_timeout_seconds = 3.0\n\
                 reconnect_initial_seconds = 0.5\nreconnect_max_seconds = 5.0\n",
                cam.uri()
            )
        })
        .collect();
    let overload_count = env_u64("SOAK_OVERLOAD_CAMERAS", 1) as usize;
    let overload_config: String = (0..overload_count)
        .map(|i| {
            format!(
                "[[cameras]]\nid = \"overload{i}\"\nuri = \"{}\"\nloop_file = true\nanalysis_fps = 0\n",
                clip.display()
            )
        })
        .collect();
    let camera_config = camera_config + &overload_config;
    let config = common::config_toml(&camera_config, "").replace(
        "grpc_listen = \"127.0.0.1:0\"",
        &format!("grpc_listen = \"127.0.0.1:{port}\""),
    );
    let config_path = dir.path().join("soak.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut node = common::KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_retina-edge"))
            .args(["run", "--config", config_path.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = node.id();
    let mut client = loop {
        match RetinaClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };

    eprintln!(
        "soak: {camera_count} RTSP cameras, {overload_count} overloading files, {minutes} min, warm-up {warm_up:?}, node pid {pid}"
    );
    let started = Instant::now();
    let mut outages = vec![0u64; camera_count];
    let mut rss_after_warm_up = None;
    let mut rss_peak_after_warm_up = 0;
    let mut next_event = started + Duration::from_secs(30).min(event_every);
    let mut event = 0usize;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss = common::rss_kib(pid);
        if started.elapsed() >= warm_up {
            rss_after_warm_up.get_or_insert(rss);
            rss_peak_after_warm_up = rss_peak_after_warm_up.max(rss);
        }
        if Instant::now() >= next_event && started.elapsed() + Duration::from_secs(20) < duration {
            // Alternate reboots (server gone for 10 s) and hangs (connected, silent for 8 s),
            // round-robin over the cameras.
            let i = event % camera_count;
            if event.is_multiple_of(2) {
                eprintln!(
                    "[{:>5.0} s] reboot cam{i} (RSS {rss} KiB)",
                    started.elapsed().as_secs_f64()
                );
                cameras[i].stop();
                tokio::time::sleep(Duration::from_secs(10)).await;
                cameras[i].restart();
            } else {
                eprintln!(
                    "[{:>5.0} s] hang cam{i} (RSS {rss} KiB)",
                    started.elapsed().as_secs_f64()
                );
                cameras[i].hang();
                tokio::time::sleep(Duration::from_secs(8)).await;
                cameras[i].resume();
            }
            outages[i] += 1;
            event += 1;
            next_event = Instant::now() + event_every;
        }
    }

    // Every outage must be over: all cameras streaming again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = common::node_info(&mut client).await;
        let all_streaming = info.cameras.iter().all(|c| c.state() == pb::CameraState::Streaming);
        if all_streaming || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let rss_end = common::rss_kib(pid);
    let elapsed = started.elapsed().as_secs_f64();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let exit = node.wait().unwrap();

    let rss_start = rss_after_warm_up.unwrap_or(rss_end);
    let growth = rss_end as f64 / rss_start as f64 - 1.0;
    println!(
        "\nretina-edge soak: {minutes} min, {camera_count} RTSP cameras (real footage), {overload_count} overloading files, node pid {pid}"
    );
    println!(
        "RSS after warm-up {rss_start} KiB, at end {rss_end} KiB ({:+.2} %), peak after warm-up {rss_peak_after_warm_up} KiB",
        growth * 100.0
    );
    println!("camera     state        outages  restarts  analysed  dropped  fps");
    for (i, camera) in info.cameras.iter().enumerate() {
        println!(
            "{:<10} {:<12} {:>7}  {:>8}  {:>8}  {:>7}  {:.2}",
            camera.camera_id,
            camera.state().as_str_name().trim_start_matches("CAMERA_STATE_"),
            outages.get(i).copied().unwrap_or(0),
            camera.restarts,
            camera.frames_analysed,
            camera.frames_dropped,
            camera.frames_analysed as f64 / elapsed
        );
    }
    println!("node exit after SIGTERM: {exit}");

    assert!(exit.success(), "graceful stop");
    assert!(growth < 0.05, "RSS grew {:.2} % after warm-up", growth * 100.0);
    for (i, camera) in info.cameras.iter().enumerate() {
        assert_eq!(
            camera.state(),
            pb::CameraState::Streaming,
            "{} recovered",
            camera.camera_id
        );
        assert!(
            camera.restarts >= outages.get(i).copied().unwrap_or(0),
            "{}: every outage seen and recovered",
            camera.camera_id
        );
    }
}
