//! A real RTSP camera (gst-rtsp-server in this process, real footage, loopback) reboots while
//! the node watches it and another camera. Alone in its test binary, because it counts the
//! threads and file descriptors of the whole process.

mod common;

use std::time::{Duration, Instant};

use common::rtsp::{NEVER, RECONNECT_MAX_DELAY, TestCamera};
use common::{Client, camera_info as camera, stop_node as stop, wait_for_camera as wait_for};
use retina_edge::pb;

/// Analysed frames per second of a camera, over the time it takes to analyse `frames` more: a
/// window that an event ends, divided by how long it really lasted.
async fn rate(client: &mut Client, id: &str, frames: u64) -> f64 {
    let before = camera(client, id).await.frames_analysed;
    let start = Instant::now();
    wait_for(client, id, NEVER, "analyses frames", |c| {
        c.frames_analysed >= before + frames
    })
    .await;
    let after = camera(client, id).await.frames_analysed;
    (after - before) as f64 / start.elapsed().as_secs_f64()
}

/// Threads and file descriptors once they are back within `margin` of `before`: what a run
/// leaves behind is released when its pipeline is dropped, but GStreamer and GLib end some of
/// their threads on their own time. A leak never comes back; the last counts are returned then.
async fn settled_counts(before: (usize, usize), margin: (usize, usize)) -> (usize, usize) {
    let deadline = Instant::now() + NEVER;
    loop {
        let (threads, fds) = common::threads_and_fds();
        if (threads <= before.0 + margin.0 && fds <= before.1 + margin.1) || Instant::now() > deadline {
            return (threads, fds);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooting_camera_recovers_alone_without_leaks() {
    let clip = common::sample_clip();
    let mut north = TestCamera::start(&clip);
    let south = TestCamera::start(&clip);
    let cameras = format!(
        "{}{}",
        common::rtsp_camera("north", &north.uri(), ""),
        common::rtsp_camera("south", &south.uri(), "")
    );
    let (node, mut client) = common::start_camera_node(&cameras).await;
    // How long a first connection takes on this machine now: the yardstick for the recovery.
    let connecting = Instant::now();
    wait_for(&mut client, "north", NEVER, "streams", |c| {
        c.state() == pb::CameraState::Streaming
    })
    .await;
    let first_connection = connecting.elapsed();
    for id in ["north", "south"] {
        wait_for(&mut client, id, NEVER, "streams", |c| c.frames_analysed >= 5).await;
    }
    // Steady state: threads and file descriptors of the whole process (node and servers), with
    // both cameras analysing.
    let (threads_before, fds_before) = common::threads_and_fds();
    // 15 frames: 3 s at 5 fps.
    let south_rate_before = rate(&mut client, "south", 15).await;

    // Reboot: the server goes away entirely, then comes back at the same address.
    north.stop();
    wait_for(&mut client, "north", NEVER, "notices the outage", |c| {
        c.state() == pb::CameraState::Reconnecting && c.reconnect_attempts >= 1
    })
    .await;
    let south_rate_during = rate(&mut client, "south", 15).await;
    let outage = camera(&mut client, "north").await;
    assert!(!outage.last_error.is_empty(), "the error is reported: {outage:?}");
    assert_ne!(outage.state(), pb::CameraState::Streaming, "north was down all along");

    north.restart();
    let restarted = Instant::now();
    wait_for(&mut client, "north", NEVER, "streams again", |c| {
        c.state() == pb::CameraState::Streaming && c.reconnect_attempts == 0
    })
    .await;
    // At worst the attempt before the restart was refused just as the camera came back: then the
    // longest backoff delay, and a connection like the first one. The slack covers the 100 ms
    // polls of the supervisor and of this test.
    let recovered = restarted.elapsed();
    let bound = RECONNECT_MAX_DELAY + first_connection + Duration::from_millis(500);
    eprintln!("north: first connection {first_connection:?}, recovered in {recovered:?} (bound {bound:?})");
    assert!(recovered <= bound, "recovered in {recovered:?}, more than {bound:?}");
    let before = camera(&mut client, "north").await.frames_analysed;
    wait_for(&mut client, "north", NEVER, "analysed again", |c| {
        c.frames_analysed > before + 3
    })
    .await;

    eprintln!("south: {south_rate_before:.1} fps before, {south_rate_during:.1} fps during north's outage");
    // A camera held up by the other's outage would fall to nothing; the margin is for a loaded
    // 2-core machine, where 15 frames at 5 fps take only 3 s.
    assert!(
        south_rate_during >= south_rate_before * 0.6,
        "the other camera kept its rate"
    );
    assert_eq!(camera(&mut client, "south").await.restarts, 0);

    // North streams again: its failed runs are gone, and so must be what they held.
    let (threads_after, fds_after) = settled_counts((threads_before, fds_before), (2, 4)).await;
    eprintln!("threads {threads_before} -> {threads_after}, fds {fds_before} -> {fds_after}");
    assert!(
        threads_after <= threads_before + 2,
        "threads {threads_before} -> {threads_after}"
    );
    assert!(fds_after <= fds_before + 4, "fds {fds_before} -> {fds_after}");
    stop(node).await;
}
