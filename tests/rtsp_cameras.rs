//! Real RTSP cameras (gst-rtsp-server in this process, real footage, loopback) that reboot and
//! hang while the node watches them.

mod common;

use std::time::{Duration, Instant};

use common::rtsp::TestCamera;
use common::{camera_info as camera, stop_node as stop, wait_for_camera as wait_for};
use retina_edge::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_camera_is_caught_by_the_stall_timeout_and_recovers() {
    let clip = common::sample_clip();
    let cam = TestCamera::start(&clip);
    // TCP: a hang then keeps the connection open with no error at all, the hardest case.
    let (node, mut client) =
        common::start_camera_node(&common::rtsp_camera("gate", &cam.uri(), "rtsp_transport = \"tcp\"")).await;
    wait_for(&mut client, "gate", Duration::from_secs(20), "streams", |c| {
        c.frames_analysed >= 5
    })
    .await;

    cam.hang();
    let hung = Instant::now();
    wait_for(&mut client, "gate", Duration::from_secs(10), "stall detected", |c| {
        c.restarts >= 1
    })
    .await;
    // The stall clock runs from the last frame, which came up to one frame interval (0.2 s at
    // 5 fps) before the hang began.
    let detected = hung.elapsed();
    assert!(
        detected >= Duration::from_millis(1750),
        "not before the 2 s stall timeout: {detected:?}"
    );
    let info = camera(&mut client, "gate").await;
    assert!(info.last_error.contains("no frame for"), "{info:?}");

    cam.resume();
    wait_for(&mut client, "gate", Duration::from_secs(15), "streams again", |c| {
        c.state() == pb::CameraState::Streaming
    })
    .await;
    let before = camera(&mut client, "gate").await.frames_analysed;
    wait_for(&mut client, "gate", Duration::from_secs(10), "analysed again", |c| {
        c.frames_analysed > before + 3
    })
    .await;
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_the_config_work_and_never_show() {
    let clip = common::sample_clip();
    let cam = TestCamera::start_with_credentials(&clip, "operator", "s3cret-pw");
    let with_config = common::rtsp_camera(
        "config-creds",
        &cam.uri(),
        "username = \"operator\"\npassword = \"s3cret-pw\"",
    );
    let in_uri = common::rtsp_camera("uri-creds", &cam.uri_with("operator", "s3cret-pw"), "");
    let wrong = common::rtsp_camera(
        "wrong-creds",
        &cam.uri(),
        "username = \"operator\"\npassword = \"nope\"",
    );
    let (node, mut client) = common::start_camera_node(&format!("{with_config}{in_uri}{wrong}")).await;
    for id in ["config-creds", "uri-creds"] {
        wait_for(&mut client, id, Duration::from_secs(20), "streams", |c| {
            c.frames_analysed >= 3
        })
        .await;
    }
    wait_for(&mut client, "wrong-creds", Duration::from_secs(10), "is refused", |c| {
        c.last_error.contains("Unauthorized") || c.last_error.contains("unauthorized")
    })
    .await;
    let info = client
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let text = format!("{info:?}");
    assert!(
        !text.contains("s3cret-pw"),
        "the password never appears in the API: {text}"
    );
    let uri = &info.cameras.iter().find(|c| c.camera_id == "uri-creds").unwrap().uri;
    assert!(uri.contains("operator:***@"), "{uri}");
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_capture_times_are_monotonic_and_say_their_clock() {
    let clip = common::sample_clip();
    let cam = TestCamera::start(&clip);
    let (node, mut client) = common::start_camera_node(&common::rtsp_camera("gate", &cam.uri(), "")).await;
    let request = pb::SubscribeRequest {
        include_empty_frames: true,
        start: pb::StartPosition::EarliestBuffered as i32,
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let mut last = None;
    let mut sources = std::collections::BTreeSet::new();
    // RTCP sender reports come every few seconds: watch long enough to see one.
    for _ in 0..60 {
        let d = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let t = d.capture_time.unwrap();
        let nanos = t.seconds as i128 * 1_000_000_000 + t.nanos as i128;
        if let Some(last) = last {
            assert!(nanos > last, "capture times of one camera are monotonic");
        }
        last = Some(nanos);
        sources.insert(d.time_source().as_str_name());
        // Within a second of the host clock: the camera and the node share this machine's clock.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((now - nanos).abs() < 2_000_000_000, "capture time {nanos} vs now {now}");
    }
    eprintln!("time sources seen: {sources:?}");
    assert!(
        sources
            .iter()
            .all(|s| ["TIME_SOURCE_HOST_ARRIVAL", "TIME_SOURCE_CAMERA_NTP"].contains(s)),
        "{sources:?}"
    );
    stop(node).await;
}

/// A camera analysed more rarely than its stall timeout is alive as long as it decodes frames:
/// the stall clock follows decoded frames, not analysed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_analysed_rarely_is_not_taken_for_stalled() {
    let clip = common::sample_clip();
    let cam = TestCamera::start(&clip);
    let camera_toml = format!(
        "[[cameras]]\nid = \"slow\"\nuri = \"{}\"\nanalysis_fps = 0.25\nstall_timeout_seconds = 2.0\n",
        cam.uri()
    );
    let (node, mut client) = common::start_camera_node(&camera_toml).await;
    wait_for(&mut client, "slow", Duration::from_secs(20), "a first frame", |c| {
        c.frames_analysed >= 1
    })
    .await;
    // Analysed frames are 4 s apart, twice the stall timeout.
    wait_for(&mut client, "slow", Duration::from_secs(15), "a second frame", |c| {
        c.frames_analysed >= 2
    })
    .await;
    let info = camera(&mut client, "slow").await;
    assert_eq!(
        (info.state(), info.restarts),
        (pb::CameraState::Streaming, 0),
        "{info:?}"
    );
    stop(node).await;
}

/// A camera that dies ends its tracks while the node runs on: the centre gets the summaries of
/// what it saw last now, not when the camera comes back, perhaps hours later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_dies_ends_its_tracks_without_waiting_for_it() {
    let clip = common::sample_clip();
    let mut cam = TestCamera::start(&clip);
    let (node, mut client) = common::start_camera_node(&common::rtsp_camera("gate", &cam.uri(), "")).await;
    let request = pb::SubscribeRequest {
        include_empty_frames: true,
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .expect("a descriptor within 15 s")
            .unwrap()
            .expect("the stream goes on while the node runs")
    };

    // Run until a confirmed track is in view, then take the camera away.
    let mut open = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = next().await;
        for e in &d.track_events {
            match e.kind() {
                pb::TrackEventKind::Confirmed => open.insert(e.track_id),
                pb::TrackEventKind::Ended => open.remove(&e.track_id),
                _ => false,
            };
        }
        if d.tracks.iter().any(|t| open.contains(&t.track_id)) {
            break;
        }
        assert!(Instant::now() < deadline, "a confirmed track within 60 s");
    }
    cam.stop();
    let died = Instant::now();

    let mut stopped = 0;
    while !open.is_empty() {
        let d = next().await;
        for e in d.track_events.iter().filter(|e| e.kind() == pb::TrackEventKind::Ended) {
            open.remove(&e.track_id);
            let reason = e.summary.as_ref().map(|s| s.end_reason());
            stopped += usize::from(reason == Some(pb::TrackEndReason::Stopped));
        }
    }
    eprintln!("tracks ended {:?} after the camera died", died.elapsed());
    assert!(stopped >= 1, "the tracks in view end as STOPPED");
    let gate = camera(&mut client, "gate").await;
    assert_ne!(gate.state(), pb::CameraState::Streaming, "{gate:?}");
    stop(node).await;
}
