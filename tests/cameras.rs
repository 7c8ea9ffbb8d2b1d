//! Cameras managed at run time over gRPC, persisted across restarts; cameras that cannot be
//! reached do not hold anything up. Real node, real clip, real gRPC client over loopback.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Client, node_info as info, stop_node as stop, wait_for};
use retina_edge::node::Node;
use retina_edge::pb;
use tonic::Code;

fn looping_camera(id: &str) -> String {
    format!(
        "[[cameras]]\nid = \"{id}\"\nuri = \"{}\"\nloop_file = true\nanalysis_fps = 5.0\n",
        common::sample_clip().display()
    )
}

async fn start(dir: &Path, cameras: &str) -> (Node, Client) {
    start_with(dir, cameras, "").await
}

async fn start_with(dir: &Path, cameras: &str, extra_node: &str) -> (Node, Client) {
    // The tests add files as cameras over gRPC: the sample clip and files of their own.
    let text = format!(
        "{}\n[admin]\nallowed_file_dirs = [\"{}\", \"{}\"]\n",
        common::config_toml(cameras, extra_node),
        common::repo().join(".deps").display(),
        dir.display()
    );
    let origin = dir.join("node.toml");
    std::fs::write(&origin, &text).unwrap();
    // Some of these configs hold camera passwords: a config others can read would be refused.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&origin, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = retina_edge::config::Config::load(&origin).unwrap();
    common::start_node(config).await
}

fn camera<'a>(info: &'a pb::NodeInfo, id: &str) -> Option<&'a pb::CameraInfo> {
    info.cameras.iter().find(|c| c.camera_id == id)
}

fn spec(id: &str, uri: &str) -> pb::CameraSpec {
    pb::CameraSpec {
        camera_id: id.into(),
        uri: uri.into(),
        loop_file: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cameras_are_added_updated_and_removed_live_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clip = common::sample_clip().display().to_string();
    let (node, mut client) = start(dir.path(), &looping_camera("north")).await;
    let mut admin = common::admin(&node).await;
    wait_for(&mut client, Duration::from_secs(20), "north streams", |i| {
        camera(i, "north").is_some_and(|c| c.frames_analysed >= 3)
    })
    .await;
    let north_before = camera(&info(&mut client).await, "north").unwrap().frames_analysed;

    // Add: the new camera streams, and its descriptors reach subscribers.
    let added = admin
        .add_camera(pb::AddCameraRequest {
            camera: Some(spec("south", &clip)),
        })
        .await
        .unwrap();
    assert_eq!(added.into_inner().camera_id, "south");
    let request = pb::SubscribeRequest {
        camera_ids: vec!["south".into()],
        include_empty_frames: true,
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a descriptor within 20 s")
            .unwrap()
            .expect("the stream goes on")
    };
    let first = next().await;
    assert_eq!(first.camera_id, "south");
    // A subscriber that did not ask for full context gets it in its first descriptor of a camera.
    assert!(first.detector.is_some() && first.camera_position.is_none(), "{first:?}");

    // Update: a new rate and position, applied to that camera only.
    let position = pb::CameraPosition {
        latitude: 50.85,
        longitude: 4.35,
        heading_degrees: 270.0,
        description: "south gate".into(),
    };
    let updated = admin
        .update_camera(pb::UpdateCameraRequest {
            camera_id: "south".into(),
            analysis_fps: Some(2.0),
            position: Some(position.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.analysis_fps, updated.position.as_ref()),
        (2.0, Some(&position))
    );
    // The context is sent again, once, when the position changes, and not in between.
    let mut unchanged = 0;
    let changed = loop {
        let d = next().await;
        if d.detector.is_some() {
            break d;
        }
        assert!(d.camera_position.is_none() && d.node_id.is_empty(), "{d:?}");
        unchanged += 1;
        assert!(unchanged < 100, "the new position was never sent");
    };
    assert_eq!(changed.camera_position.as_ref(), Some(&position));
    assert_eq!((changed.frame_width, changed.node_id.as_str()), (640, "test-node"));
    // The new rate is what the camera is then analysed at: 2 frames/s, read from the frames'
    // own capture times (file position), so a busy machine cannot blur it.
    let mut times = vec![changed.capture_time.unwrap()];
    for _ in 0..8 {
        let d = next().await;
        assert!(d.detector.is_none(), "context only when it changes");
        times.push(d.capture_time.unwrap());
    }
    drop(stream);
    let mut steps: Vec<i64> = times
        .windows(2)
        .map(|w| (w[1].seconds - w[0].seconds) * 1_000_000_000 + i64::from(w[1].nanos - w[0].nanos))
        .collect();
    steps.sort_unstable();
    let median = steps[steps.len() / 2];
    assert!(
        (480_000_000..=520_000_000).contains(&median),
        "analysed every 0.5 s after the update, median step {median} ns ({steps:?})"
    );

    // A third camera, added then removed.
    admin
        .add_camera(pb::AddCameraRequest {
            camera: Some(spec("east", &clip)),
        })
        .await
        .unwrap();
    admin
        .remove_camera(pb::RemoveCameraRequest {
            camera_id: "east".into(),
        })
        .await
        .unwrap();

    // Bad requests: proper codes, clear messages, nothing changed.
    let status = admin
        .add_camera(pb::AddCameraRequest {
            camera: Some(spec("south", &clip)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let status = admin
        .add_camera(pb::AddCameraRequest {
            camera: Some(spec("west", "gopher://cam.example/1")),
        })
        .await
        .unwrap_err();
    // A scheme outside admin.allowed_schemes is refused by policy, and named.
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("gopher"), "{}", status.message());
    // A file that is not there, in an allowed directory, is a bad argument; NOT_FOUND would say
    // the camera is unknown.
    let missing = dir.path().join("no-such-clip.mp4").display().to_string();
    let status = admin
        .add_camera(pb::AddCameraRequest {
            camera: Some(spec("west", &missing)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("no-such-clip.mp4"), "{}", status.message());
    let status = admin
        .add_camera(pb::AddCameraRequest {
            camera: Some(spec("bad id!", &clip)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin
        .add_camera(pb::AddCameraRequest { camera: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin
        .update_camera(pb::UpdateCameraRequest {
            camera_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = admin
        .remove_camera(pb::RemoveCameraRequest {
            camera_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = admin
        .update_camera(pb::UpdateCameraRequest {
            camera_id: "south".into(),
            analysis_fps: Some(-1.0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // The first camera kept streaming through all of it. All of the above can take less than
    // one analysis interval, so north is given time for its next frames rather than sampled once.
    wait_for(&mut client, Duration::from_secs(10), "north kept being analysed", |i| {
        camera(i, "north").is_some_and(|c| c.frames_analysed >= north_before + 2)
    })
    .await;
    let now = info(&mut client).await;
    let north = camera(&now, "north").unwrap();
    assert_eq!(north.state(), pb::CameraState::Streaming);
    assert_eq!(north.restarts, 0, "north was never restarted");
    let ids: Vec<&str> = now.cameras.iter().map(|c| c.camera_id.as_str()).collect();
    assert_eq!(ids, ["north", "south"]);
    stop(node).await;

    // Restart from the same config: the changes are still there.
    let state = std::fs::read_to_string(dir.path().join("node.cameras.toml")).expect("camera state file written");
    assert!(state.contains("south") && !state.contains("east"), "{state}");
    let (node, mut client) = start(dir.path(), &looping_camera("north")).await;
    let after = info(&mut client).await;
    let ids: Vec<&str> = after.cameras.iter().map(|c| c.camera_id.as_str()).collect();
    assert_eq!(ids, ["north", "south"]);
    let south = camera(&after, "south").unwrap();
    assert_eq!((south.analysis_fps, south.position.as_ref()), (2.0, Some(&position)));
    stop(node).await;
}

fn refused_for_a_full_disk(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("No space left on device"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_is_refused_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clip = common::sample_clip().display().to_string();
    let (node, mut client) = start(dir.path(), &looping_camera("north")).await;
    let mut admin = common::admin(&node).await;
    // The state file's temporary file leads to /dev/full: every write fails with ENOSPC, as on
    // a full disk.
    let full_disk = || {
        // A failed write removes its temporary file, so the link is made again for every change.
        let _ = std::fs::remove_file(dir.path().join(".node.cameras.toml.tmp"));
        std::os::unix::fs::symlink("/dev/full", dir.path().join(".node.cameras.toml.tmp")).unwrap();
    };
    full_disk();
    let status = admin
        .add_camera(pb::AddCameraRequest {
            camera: Some(spec("south", &clip)),
        })
        .await
        .unwrap_err();
    refused_for_a_full_disk(&status);
    let ids: Vec<String> = info(&mut client)
        .await
        .cameras
        .into_iter()
        .map(|c| c.camera_id)
        .collect();
    assert_eq!(ids, ["north"], "the refused camera was not added");

    // Updating or removing the camera needs the same write, so they are refused the same way,
    // and north goes on as it was: same rate, never restarted, still analysed.
    full_disk();
    let status = admin
        .update_camera(pb::UpdateCameraRequest {
            camera_id: "north".into(),
            analysis_fps: Some(2.0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused_for_a_full_disk(&status);
    full_disk();
    let status = admin
        .remove_camera(pb::RemoveCameraRequest {
            camera_id: "north".into(),
        })
        .await
        .unwrap_err();
    refused_for_a_full_disk(&status);
    let before = camera(&info(&mut client).await, "north").unwrap().frames_analysed;
    wait_for(&mut client, Duration::from_secs(20), "north still analysed", |i| {
        camera(i, "north").is_some_and(|c| c.frames_analysed >= before + 2)
    })
    .await;
    let north = info(&mut client).await.cameras.remove(0);
    assert_eq!(north.camera_id, "north");
    assert_eq!(
        (north.analysis_fps, north.restarts, north.state()),
        (5.0, 0, pb::CameraState::Streaming)
    );
    assert!(!dir.path().join("node.cameras.toml").exists());
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_camera_delays_neither_start_up_nor_the_others() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback port with nothing listening: every connection attempt is refused at once.
    let port = common::free_port();
    let dead = format!(
        "[[cameras]]\nid = \"dead\"\nuri = \"rtsp://user:secret@127.0.0.1:{port}/stream\"\n\
         rtsp_transport = \"tcp\"\nreconnect_initial_seconds = 0.2\nreconnect_max_seconds = 1.0\n"
    );
    // A server that accepts the connection and never answers: a start-up that waited for its
    // cameras would wait here until the stall timeout, or for ever.
    let (_listener, silent_port) = common::sources::silent_server();
    let silent = format!(
        "[[cameras]]\nid = \"silent\"\nuri = \"rtsp://127.0.0.1:{silent_port}/stream\"\n\
         rtsp_transport = \"tcp\"\nstall_timeout_seconds = 3.0\nreconnect_initial_seconds = 0.2\n\
         reconnect_max_seconds = 1.0\n"
    );
    let cameras = format!("{dead}\n{silent}\n{}", looping_camera("north"));
    let (node, mut client) = start(dir.path(), &cameras).await;

    // The node answers while the silent camera is still on its first attempt.
    let first = camera(&info(&mut client).await, "silent").cloned().unwrap();
    assert_eq!(
        (first.state(), first.restarts),
        (pb::CameraState::Starting, 0),
        "start-up finished before the silent camera's first attempt did: {first:?}"
    );

    wait_for(
        &mut client,
        Duration::from_secs(30),
        "north streams while dead and silent retry",
        |i| {
            let north = camera(i, "north").is_some_and(|c| c.frames_analysed >= 5);
            let dead = camera(i, "dead").is_some_and(|c| c.reconnect_attempts >= 2);
            let silent = camera(i, "silent").is_some_and(|c| c.restarts >= 1);
            north && dead && silent
        },
    )
    .await;
    let info = info(&mut client).await;
    let dead = camera(&info, "dead").unwrap();
    assert!(
        matches!(dead.state(), pb::CameraState::Reconnecting | pb::CameraState::Starting),
        "{dead:?}"
    );
    assert_eq!(dead.failure, "unreachable", "{dead:?}");
    assert!(
        !dead.uri.contains("secret") && dead.uri.contains("user:***@"),
        "password redacted: {}",
        dead.uri
    );
    let silent = camera(&info, "silent").unwrap();
    assert!(
        silent.failure == "stalled" && silent.last_error.contains("no frame within"),
        "{silent:?}"
    );
    assert_eq!(camera(&info, "north").unwrap().restarts, 0);
    stop(node).await;
}

/// The counting line of the first hand count (`tests/fixtures/counts/bikes-hand-count.toml`),
/// which a walker crosses once per play of the clip.
fn walker_line() -> pb::CountingLine {
    pb::CountingLine {
        line_id: "crossing".into(),
        from: Some(pb::Point { x: 0.33, y: 0.96 }),
        to: Some(pb::Point { x: 0.232, y: 0.50 }),
        forward_name: "east".into(),
        ..Default::default()
    }
}

/// Zones and lines set over the admin API: the camera goes on streaming without a restart, its
/// tracks start counting at once (events and count records on the stream), bad places are
/// refused by name and change nothing, and the places are kept across a restart of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_and_lines_change_live_without_a_restart_and_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Video kept: the page draws the camera's picture behind the boxes.
    let cameras = format!(
        "{}\n[describe.counting]\ninterval_seconds = 2\n\n[video]\ndir = \"{}\"\nface_model = \"{}/models/blazeface-back-256.toml\"\n",
        looping_camera("north"),
        dir.path().join("video").display(),
        common::repo().display()
    );
    let (node, mut client) = start(dir.path(), &cameras).await;
    let mut admin = common::admin(&node).await;
    wait_for(&mut client, Duration::from_secs(20), "north streams", |i| {
        camera(i, "north").is_some_and(|c| c.frames_analysed >= 3)
    })
    .await;
    let request = pb::SubscribeRequest {
        camera_ids: vec!["north".into()],
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let queue = pb::Zone {
        zone_id: "kerb".into(),
        polygon: [(0.0, 0.6), (1.0, 0.6), (1.0, 1.0), (0.0, 1.0)]
            .map(|(x, y)| pb::Point { x, y })
            .into(),
        class_names: vec!["person".into()],
        ..Default::default()
    };
    let places = pb::CountingPlaces {
        zones: vec![queue.clone()],
        lines: vec![walker_line()],
    };
    let updated = admin
        .update_camera(pb::UpdateCameraRequest {
            camera_id: "north".into(),
            counting: Some(places.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut line, zone) = (walker_line(), updated.zones[0].clone());
    line.backward_name = "backward".into();
    line.anchor = pb::Anchor::BottomCentre as i32;
    assert_eq!(updated.lines, vec![line.clone()], "defaults filled in");
    assert_eq!((zone.zone_id.as_str(), zone.polygon.len()), ("kerb", 4));

    // Within two plays of the clip: the walker crosses the line eastwards, and a count record
    // counts it.
    let (mut crossed, mut counted) = (None, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while crossed.is_none() || counted == 0 {
        let d = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("a crossing and its count within 40 s")
            .unwrap()
            .expect("the stream goes on");
        let crossing = d.zone_events.iter().find(|e| e.kind() == pb::ZoneEventKind::Crossed);
        if let Some(e) = crossing.filter(|_| crossed.is_none()) {
            assert_eq!(
                (e.zone_id.as_str(), e.direction.as_str()),
                ("crossing", "east"),
                "{e:?}"
            );
            crossed = Some(e.track_id);
        }
        if let (Some(report), Some(_)) = (&d.counts, crossed) {
            counted += report
                .counts
                .iter()
                .filter(|c| c.zone_id == "crossing" && c.class_name == "person" && c.direction == "east")
                .map(|c| c.count)
                .sum::<u32>();
        }
    }
    let north = camera(&info(&mut client).await, "north").unwrap().clone();
    assert_eq!((north.restarts, north.state()), (0, pb::CameraState::Streaming));
    let exposition = node.metrics.encode().unwrap();
    assert!(
        exposition.contains(
            "retina_zone_events_total{camera=\"north\",zone=\"crossing\",kind=\"crossed\",direction=\"east\",class=\"person\"}"
        ),
        "{exposition}"
    );

    // Refused with the place named; the camera keeps what it had.
    let mut bad = places.clone();
    bad.lines[0].to = Some(pb::Point { x: 1.5, y: 0.5 });
    let status = admin
        .update_camera(pb::UpdateCameraRequest {
            camera_id: "north".into(),
            counting: Some(bad),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("line \"crossing\""), "{}", status.message());
    assert_eq!(
        camera(&info(&mut client).await, "north").unwrap().lines,
        vec![line.clone()]
    );
    drop(stream);
    stop(node).await;

    let state = std::fs::read_to_string(dir.path().join("node.cameras.toml")).unwrap();
    assert!(
        state.contains("[[cameras.lines]]") && state.contains("[[cameras.zones]]"),
        "{state}"
    );
    let (node, mut client) = start(dir.path(), &cameras).await;
    let north = camera(&info(&mut client).await, "north").unwrap().clone();
    assert_eq!((north.lines, north.zones), (vec![line], vec![zone]));
    stop(node).await;
}

/// The status page in a real headless Chromium against a node looping the real clip: the frame
/// it shows updates, the boxes it draws are those of the descriptor of that moment, and a line
/// drawn on it with the mouse is saved in the node's config and starts counting (the page then
/// shows the count). A screenshot goes to `target/status-page.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_tracks_and_a_line_drawn_on_it_counts() {
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    // Video kept: the page draws the camera's picture behind the boxes.
    let cameras = format!(
        "{}\n[describe.counting]\ninterval_seconds = 2\n\n[video]\ndir = \"{}\"\nface_model = \"{}/models/blazeface-back-256.toml\"\n",
        looping_camera("north"),
        dir.path().join("video").display(),
        common::repo().display()
    );
    let (node, mut client) = start_with(dir.path(), &cameras, "metrics_listen = \"127.0.0.1:0\"").await;
    let url = format!("http://{}/", node.metrics_addr.unwrap());
    // Everything the camera publishes from now on, empty frames too.
    let seen: Arc<Mutex<Vec<pb::FrameDescriptor>>> = Arc::default();
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            include_empty_frames: true,
            full_context: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(d)) = stream.message().await {
                seen.lock().unwrap().push(d);
            }
        })
    };

    // The browser blocks: it runs on a thread of its own while the node runs here.
    let canvas = "document.querySelector('section[data-camera=north] canvas')";
    let (mut browser, shown) = tokio::task::spawn_blocking(move || {
        let mut browser = common::browser::Browser::open(&url, 1000, 760);
        // A frame with tracks, drawn on its picture: what is drawn, the picture's time, and the
        // share of the canvas in the plain background a frame without picture has.
        let with_tracks = format!(
            "(() => {{ const c = {canvas}; if (!c || !c.dataset.pictureTime || JSON.parse(c.dataset.tracks || '[]').length == 0) return null; \
             const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let plain = 0; \
             for (let i = 0; i < px.length; i += 4) if (px[i] == 0x33 && px[i + 1] == 0x33 && px[i + 2] == 0x33) plain++; \
             return [c.dataset.captureTime, JSON.parse(c.dataset.tracks), c.dataset.pictureTime, plain / (px.length / 4)]; }})()"
        );
        // Eight frames in a row: a picture and boxes of different frames would show in some.
        let mut shown: Vec<serde_json::Value> = vec![browser.wait_for(&with_tracks, Duration::from_secs(30))];
        while shown.len() < 8 {
            let next = format!(
                "(() => {{ const v = {with_tracks}; return v && v[0] !== {} ? v : null; }})()",
                shown[shown.len() - 1][0]
            );
            shown.push(browser.wait_for(&next, Duration::from_secs(30)));
        }
        (browser, shown)
    })
    .await
    .unwrap();
    assert_ne!(shown[0][0], shown[1][0], "the frame updates");
    let nanos_of = |time: &serde_json::Value| {
        let time = humantime::parse_rfc3339(time.as_str().unwrap()).unwrap();
        time.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
    };
    for frame in &shown {
        // The picture is the very frame described: the ring and the descriptor time a frame a
        // few milliseconds apart, and frames are 40 ms apart.
        let off = nanos_of(&frame[2]) - nanos_of(&frame[0]);
        assert!(
            off.abs() < 20_000_000,
            "picture {} for the frame of {}",
            frame[2],
            frame[0]
        );
        let plain = frame[3].as_f64().unwrap();
        assert!(plain < 0.05, "the picture fills the canvas ({plain} of it plain)");
        let time = frame[0].as_str().unwrap();
        let seen = seen.lock().unwrap();
        let descriptor = seen
            .iter()
            .find(|d| {
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_nanos(common::nanos(d.capture_time) as u64),
                )
                .to_string()
                    == time
                    && d.counts.is_none()
            })
            .unwrap_or_else(|| panic!("a descriptor captured at {time}"));
        let drawn = frame[1].as_array().unwrap();
        assert_eq!(
            drawn.len(),
            descriptor.tracks.len(),
            "{drawn:?} against {:?}",
            descriptor.tracks
        );
        for (drawn, track) in drawn.iter().zip(&descriptor.tracks) {
            assert_eq!(drawn["track_id"].as_str(), Some(track.track_id.to_string().as_str()));
            let stored = retina_edge::wire::decode_box_q16(track.box_q16);
            for (d, s) in drawn["box"].as_array().unwrap().iter().zip(stored) {
                assert!(
                    (d.as_f64().unwrap() - f64::from(s)).abs() < 1e-4,
                    "{drawn} against {stored:?}"
                );
            }
        }
    }

    // Draw the walker's line (the first hand count's) with the mouse: "Draw line", then its two
    // ends on the frame.
    let (from, to) = ((0.33, 0.96), (0.232, 0.50));
    let mut browser = tokio::task::spawn_blocking(move || {
        let rect = |browser: &mut common::browser::Browser, selector: &str| {
            let r = browser.eval(&format!(
                "(() => {{ const r = document.querySelector(\"{selector}\").getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }})()"
            ));
            let r: Vec<f64> = r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            r
        };
        let button = rect(&mut browser, "section[data-camera=north] [data-draw=line]");
        browser.click(button[0] + button[2] / 2.0, button[1] + button[3] / 2.0);
        let area = rect(&mut browser, "section[data-camera=north] canvas");
        for (x, y) in [from, to] {
            browser.click(area[0] + x * area[2], area[1] + y * area[3]);
        }
        browser
    })
    .await
    .unwrap();
    let state_file = dir.path().join("node.cameras.toml");
    let mut line = None;
    for _ in 0..50 {
        line = camera(&info(&mut client).await, "north").and_then(|c| c.lines.first().cloned());
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = line.expect("the line drawn on the page is the camera's");
    let near = |p: Option<pb::Point>, (x, y): (f64, f64)| {
        p.is_some_and(|p| (f64::from(p.x) - x).abs() < 0.01 && (f64::from(p.y) - y).abs() < 0.01)
    };
    assert!(
        line.line_id == "line-1" && near(line.from, from) && near(line.to, to),
        "{line:?}"
    );
    let saved = std::fs::read_to_string(&state_file).unwrap();
    assert!(
        saved.contains("[[cameras.lines]]") && saved.contains("line-1"),
        "{saved}"
    );

    // It counts: the walker crosses it forwards within two plays of the clip, and the page shows
    // the count.
    let drawn_at = seen.lock().unwrap().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let crossed = seen.lock().unwrap()[drawn_at..]
            .iter()
            .flat_map(|d| &d.zone_events)
            .any(|e| e.zone_id == "line-1" && e.direction == "forward" && e.kind() == pb::ZoneEventKind::Crossed);
        if crossed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no crossing of the drawn line within 40 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let screenshot = tokio::task::spawn_blocking(move || {
        browser.wait_for(
            "document.querySelector('section[data-camera=north] .counts').textContent.includes('line-1crossed forward')",
            Duration::from_secs(15),
        );
        // For the README: a frame with a track on it, as an installer sees the page.
        browser.wait_for(
            &format!("JSON.parse({canvas}.dataset.tracks || '[]').length > 0 || null"),
            Duration::from_secs(30),
        );
        browser.screenshot()
    })
    .await
    .unwrap();
    std::fs::write(common::repo().join("target/status-page.png"), screenshot).unwrap();
    collector.abort();
    stop(node).await;
}
