//! Checks the RTSP test camera itself (tests/common/rtsp.rs) with a plain GStreamer client, the
//! same `uridecodebin` the node uses: live frames at the clip's rate, reboot, hang, credentials.

mod common;

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::rtsp::{NEVER, TestCamera};
use gstreamer as gst;
use gstreamer::prelude::*;

/// An RTSP client counting decoded frames.
struct Client {
    pipeline: gst::Pipeline,
    frames: Arc<AtomicU64>,
}

impl Client {
    fn open(uri: &str) -> Client {
        gst::init().expect("GStreamer initialises");
        let pipeline = gst::parse::launch("uridecodebin name=decode ! fakesink name=sink sync=false")
            .expect("client pipeline parses")
            .downcast::<gst::Pipeline>()
            .expect("a pipeline");
        let by_name = |name| pipeline.by_name(name).expect("element named in the launch line");
        by_name("decode").set_property("uri", uri);
        let frames = Arc::new(AtomicU64::new(0));
        let counter = frames.clone();
        by_name("sink")
            .static_pad("sink")
            .expect("fakesink has a sink pad")
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                counter.fetch_add(1, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            });
        pipeline.set_state(gst::State::Playing).expect("client starts");
        Client { pipeline, frames }
    }

    fn frames(&self) -> u64 {
        self.frames.load(Ordering::SeqCst)
    }

    /// Waits until `n` more frames have been decoded; false on timeout.
    fn wait_frames(&self, n: u64, timeout: Duration) -> bool {
        let target = self.frames() + n;
        wait_until(timeout, || self.frames() >= target)
    }

    /// Waits until no frame has come for `quiet`: what was on its way has been delivered. A
    /// loaded machine only makes this take longer.
    fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> bool {
        let mut last = (self.frames(), Instant::now());
        wait_until(timeout, || {
            let frames = self.frames();
            if frames != last.0 {
                last = (frames, Instant::now());
            }
            last.1.elapsed() >= quiet
        })
    }

    /// The first error or EOS on the bus within `timeout`, as text.
    fn ended(&self, timeout: Duration) -> Option<String> {
        let bus = self.pipeline.bus().expect("a pipeline has a bus");
        let message = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
            &[gst::MessageType::Error, gst::MessageType::Eos],
        )?;
        Some(match message.view() {
            gst::MessageView::Error(e) => format!("error: {}", e.error()),
            _ => "EOS".to_owned(),
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Polls `done` until it holds; false after `timeout`.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Frames per second decoded by each client and served by its camera, over one window that
/// ends when every client has decoded `n` more frames (an event, not a sleep), divided by the
/// time the window really lasted.
fn rates(pairs: &[(&Client, &TestCamera)], n: u64) -> Vec<(f64, f64)> {
    let start = Instant::now();
    let before: Vec<(u64, u64)> = pairs.iter().map(|(c, cam)| (c.frames(), cam.frames_served())).collect();
    let all_done = wait_until(NEVER, || {
        pairs.iter().zip(&before).all(|((c, _), (f, _))| c.frames() >= f + n)
    });
    assert!(all_done, "every client decodes {n} more frames");
    let seconds = start.elapsed().as_secs_f64();
    pairs
        .iter()
        .zip(&before)
        .map(|((c, cam), (f, s))| {
            let decoded = (c.frames() - f) as f64 / seconds;
            let served = (cam.frames_served() - s) as f64 / seconds;
            (decoded, served)
        })
        .collect()
}

fn assert_refused(port: u16) {
    let error = TcpStream::connect(("127.0.0.1", port)).expect_err("a stopped camera refuses TCP");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused, "{error}");
}

#[test]
fn serves_the_clip_live_at_its_frame_rate() {
    let camera = TestCamera::start(&common::sample_clip());
    let client = Client::open(&camera.uri());
    assert!(client.wait_frames(1, NEVER), "a first frame");

    // 100 frames: 4 s at the clip's 25 fps.
    let [(fps, served_fps)] = rates(&[(&client, &camera)], 100)[..] else {
        unreachable!("one client, one rate")
    };
    println!("client {fps:.1} fps, camera {served_fps:.1} fps served");
    // Paced, not dumped: an unpaced file source serves hundreds of frames a second, and load
    // can only slow a paced one. The lower bound is for a feeder thread starved of half its
    // turns by a loaded 2-core machine (it skips frames rather than burst).
    assert!(
        (12.0..=35.0).contains(&served_fps),
        "camera serves ~25 fps, got {served_fps:.1}"
    );
    // The client gets what is served, as it is served.
    assert!(
        fps <= 35.0 && fps >= 0.8 * served_fps,
        "client gets the {served_fps:.1} fps served, got {fps:.1}"
    );
    // Live means looped: more frames than the clip has, and neither an end nor an error.
    let more_than_the_clip = camera.clip_frames() + 25;
    assert!(
        client.wait_frames(more_than_the_clip.saturating_sub(client.frames()), NEVER),
        "the clip loops (got {} frames of {})",
        client.frames(),
        camera.clip_frames()
    );
    assert!(
        client.ended(Duration::ZERO).is_none(),
        "a looped live camera never ends"
    );
}

#[test]
fn two_cameras_run_at_once() {
    let clip = common::sample_clip();
    let (a, b) = (TestCamera::start(&clip), TestCamera::start(&clip));
    assert_ne!(a.port(), b.port());
    let (client_a, client_b) = (Client::open(&a.uri()), Client::open(&b.uri()));
    assert!(client_a.wait_frames(25, NEVER), "camera a serves");
    assert!(client_b.wait_frames(25, NEVER), "camera b serves");
    // One window for both, until each client has 75 more frames (3 s at 25 fps).
    let rates = rates(&[(&client_a, &a), (&client_b, &b)], 75);
    println!("two cameras, (decoded, served) fps: {rates:.1?}");
    // Both live at once: in the same window each camera serves at a live rate (as in
    // `serves_the_clip_live_at_its_frame_rate`) and its client gets what it serves.
    for (fps, served_fps) in rates {
        assert!(served_fps >= 12.0, "both serve: {served_fps:.1} fps");
        assert!(
            fps >= 0.8 * served_fps,
            "both clients get it: {fps:.1} of {served_fps:.1} fps"
        );
    }
}

#[test]
fn stopping_right_after_start_returns() {
    // The server thread may not have reached its main loop yet: stop must not wait for it forever.
    let mut camera = TestCamera::start(&common::sample_clip());
    camera.stop();
    assert_refused(camera.port());
    camera.restart();
}

#[test]
fn stop_drops_clients_and_refuses_connections_until_restart() {
    let mut camera = TestCamera::start(&common::sample_clip());
    let port = camera.port();
    let client = Client::open(&camera.uri());
    assert!(client.wait_frames(10, NEVER), "frames before the reboot");

    let stopped = Instant::now();
    camera.stop();
    println!("stop() took {:?}", stopped.elapsed());
    assert_refused(port);
    let ended = client.ended(NEVER);
    println!("client after stop: {ended:?} after {:?}", stopped.elapsed());
    assert!(ended.is_some(), "the client sees an error or EOS after stop");
    let served = camera.frames_served();
    assert!(Client::open(&camera.uri()).ended(NEVER).is_some(), "reconnect refused");
    // Over the whole refused attempt.
    assert_eq!(camera.frames_served(), served, "nothing is served while stopped");

    camera.restart();
    assert_eq!(camera.port(), port, "same address after the reboot");
    let client = Client::open(&camera.uri());
    assert!(client.wait_frames(25, NEVER), "frames after the reboot");
    // And a second reboot cycle works the same.
    camera.restart();
    let client = Client::open(&camera.uri());
    assert!(client.wait_frames(25, NEVER), "frames after a second reboot");
    drop(camera);
    assert_refused(port);
}

#[test]
fn hang_keeps_the_session_but_stops_the_media() {
    let camera = TestCamera::start(&common::sample_clip());
    let client = Client::open(&camera.uri());
    assert!(client.wait_frames(10, NEVER), "frames before the hang");

    camera.hang();
    // Frames already in the encoder, network and jitter buffer drain: then nothing for a second,
    // 40 frame intervals (on loopback the jitter buffer passes frames on as they come in order).
    assert!(
        client.wait_quiet(Duration::from_secs(1), NEVER),
        "the client's frames stop after the hang"
    );
    let (frames, served) = (client.frames(), camera.frames_served());
    assert!(client.ended(Duration::from_secs(3)).is_none(), "a hang is not an error");
    assert_eq!(client.frames(), frames, "no frames reach the client while hung");
    assert_eq!(camera.frames_served(), served, "nothing is served while hung");
    TcpStream::connect(("127.0.0.1", camera.port())).expect("a hung camera still accepts TCP");

    camera.resume();
    assert!(client.wait_frames(25, NEVER), "frames again after resume");
    assert!(client.ended(Duration::ZERO).is_none(), "the session survived the hang");
}

#[test]
fn credentials_are_required() {
    let camera = TestCamera::start_with_credentials(&common::sample_clip(), "admin", "s3cret");

    let anonymous = Client::open(&camera.uri());
    let ended = anonymous.ended(NEVER);
    println!("no credentials: {ended:?}");
    assert!(ended.is_some() && anonymous.frames() == 0, "no credentials, no frames");

    let wrong = Client::open(&camera.uri_with("admin", "guess"));
    let ended = wrong.ended(NEVER);
    println!("wrong password: {ended:?}");
    assert!(ended.is_some() && wrong.frames() == 0, "wrong password, no frames");

    let right = Client::open(&camera.uri_with("admin", "s3cret"));
    assert!(right.wait_frames(25, NEVER), "right password, frames");
}
