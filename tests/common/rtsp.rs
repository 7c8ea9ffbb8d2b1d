//! In-process RTSP test cameras: a real gst-rtsp-server on loopback serving real footage, with
//! the failures camera supervision must survive on demand: reboot (`stop` / `restart`), a hung
//! encoder (`hang` / `resume`) and credentials.
//!
//! The clip is decoded once per process and re-encoded live by every camera, so a camera behaves
//! like a real one: H.264 over RTP, timestamps that follow the clock, a keyframe every second,
//! and no end. Replaying the file itself would run ahead of real time and end after 10 s.
//!
//! A camera's clock can be set ahead of the host's (`start_with_clock_ahead`), as a camera whose
//! NTP is off would be: its RTCP sender reports then carry that clock's time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp_server;
use gstreamer_video as gst_video;

use gst::prelude::*;
use rtsp_server::prelude::*;
use rtsp_server::{gio, glib, gst_rtsp};

/// Where every test camera serves its stream.
const MOUNT: &str = "/cam";

/// The role a client gets from valid credentials; the factory lets only it in.
const ROLE: &str = "viewer";

/// How long a test waits for something that should happen before it gives up: it only stops a
/// test that would otherwise hang, on a machine however loaded. Claims about how fast something
/// happens are checked apart, against what the same run measured.
pub const NEVER: Duration = Duration::from_secs(90);

/// The longest reconnect delay of a camera made by `common::rtsp_camera`: its
/// `reconnect_max_seconds` (2 s) plus the backoff's 20 % jitter.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(2400);

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: Duration = Duration::from_secs(2_208_988_800);

/// Raw frames in, RTP out. `x264enc` is tuned as a camera's encoder would be: no B-frames or
/// lookahead (zerolatency), a keyframe every 25 frames so a client joining or recovering from a
/// hang decodes within a second, and SPS/PPS repeated with every keyframe (config-interval).
const LAUNCH: &str = "( appsrc name=src is-live=true format=time \
    ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=800 \
    ! video/x-h264,profile=baseline \
    ! rtph264pay name=pay0 pt=96 config-interval=1 )";

/// As [`LAUNCH`], for a camera that sends Motion JPEG (RFC 2435), as many older and cheaper IP
/// cameras still do.
const MJPEG_LAUNCH: &str = "( appsrc name=src is-live=true format=time \
    ! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26 )";

/// A live RTSP camera on 127.0.0.1 serving a clip looped forever.
pub struct TestCamera {
    /// Decoded once per process and shared, so many cameras cost one decode.
    clip: Arc<Clip>,
    /// Fixed at the first start so a restart comes back at the same address, as a rebooted
    /// camera does.
    port: u16,
    /// Kept so `restart` brings back the same access rules.
    credentials: Option<(String, String)>,
    /// How far the camera's clock (the NTP time of its sender reports) is ahead of the host's;
    /// `None`: rtpbin's default, the host's wall clock.
    clock_ahead: Option<Duration>,
    /// The media factory's launch line: how the camera encodes.
    launch: &'static str,
    /// Outlives server restarts, so `frames_served` counts over the camera's whole life.
    feed: Arc<Feed>,
    /// `None` while the camera is "off" (between `stop` and `restart`).
    serving: Option<Serving>,
}

impl TestCamera {
    /// Starts serving `clip` looped at rtsp://127.0.0.1:PORT/cam on a free loopback port.
    pub fn start(clip: &Path) -> TestCamera {
        Self::launch(clip, 0, None, None, LAUNCH)
    }

    /// Same, on a given port (to bring a camera back "at the same address" in another object).
    pub fn start_on(clip: &Path, port: u16) -> TestCamera {
        Self::launch(clip, port, None, None, LAUNCH)
    }

    /// Same as `start`, but clients must authenticate with digest auth, as most cameras ask.
    pub fn start_with_credentials(clip: &Path, user: &str, pass: &str) -> TestCamera {
        Self::launch(clip, 0, Some((user.to_owned(), pass.to_owned())), None, LAUNCH)
    }

    /// Same as `start`, but the camera's clock runs `ahead` of the host's: the NTP time in its
    /// RTCP sender reports is the host's wall clock plus `ahead`.
    pub fn start_with_clock_ahead(clip: &Path, ahead: Duration) -> TestCamera {
        Self::launch(clip, 0, None, Some(ahead), LAUNCH)
    }

    /// Same as `start`, but the camera sends Motion JPEG instead of H.264.
    pub fn start_mjpeg(clip: &Path) -> TestCamera {
        Self::launch(clip, 0, None, None, MJPEG_LAUNCH)
    }

    fn launch(
        clip: &Path,
        port: u16,
        credentials: Option<(String, String)>,
        clock_ahead: Option<Duration>,
        launch: &'static str,
    ) -> TestCamera {
        gst::init().expect("GStreamer initialises");
        let mut camera = TestCamera {
            clip: decoded(clip),
            port,
            credentials,
            clock_ahead,
            launch,
            feed: Arc::default(),
            serving: None,
        };
        camera.restart();
        camera
    }

    /// rtsp://127.0.0.1:PORT/cam
    pub fn uri(&self) -> String {
        format!("rtsp://127.0.0.1:{}{MOUNT}", self.port)
    }

    /// The URI with credentials in it, as cameras are usually configured.
    pub fn uri_with(&self, user: &str, pass: &str) -> String {
        format!("rtsp://{user}:{pass}@127.0.0.1:{}{MOUNT}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Frames in one pass of the clip: a client that decoded more has seen it loop.
    pub fn clip_frames(&self) -> u64 {
        self.clip.frames.len() as u64
    }

    /// Camera reboot: closes every client session and stops listening, so clients see errors /
    /// EOS and reconnects are refused until `restart`. Does nothing if already stopped.
    pub fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.power_off();
        }
    }

    /// Listens again on the same port, serving the same clip. On a running camera this is a
    /// reboot (stop, then start).
    pub fn restart(&mut self) {
        self.stop();
        let serving = Serving::power_on(
            self.port,
            &self.clip,
            &self.feed,
            self.credentials.as_ref(),
            self.clock_ahead,
            self.launch,
        );
        self.port = serving.port;
        self.serving = Some(serving);
    }

    /// Hung camera: sessions stay connected (RTSP, RTCP) but no more media is sent until
    /// `resume`.
    pub fn hang(&self) {
        self.feed.hung.store(true, Ordering::SeqCst);
    }

    /// Media flows again, timestamped from the clock, so the stream is live again rather than
    /// replaying what the hang held back.
    pub fn resume(&self) {
        self.feed.hung.store(false, Ordering::SeqCst);
    }

    /// Frames pushed into the encoder so far, over all sessions and restarts (to check a client
    /// is really being served, and that a hang really stops the media).
    pub fn frames_served(&self) -> u64 {
        self.feed.frames_served.load(Ordering::SeqCst)
    }

    /// The RTCP sender reports the camera has sent so far, over all sessions and restarts.
    pub fn sender_reports(&self) -> Vec<SenderReport> {
        self.feed.sender_reports.lock().expect("sender report lock").clone()
    }
}

impl Drop for TestCamera {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the camera handle shares with the feeder threads.
#[derive(Default)]
struct Feed {
    /// Set by `hang`: feeders keep their media alive but push nothing.
    hung: AtomicBool,
    /// Frames pushed, for `frames_served`.
    frames_served: AtomicU64,
    /// For `sender_reports`.
    sender_reports: Mutex<Vec<SenderReport>>,
}

/// An RTCP sender report as it left the camera.
#[derive(Debug, Clone, Copy)]
pub struct SenderReport {
    /// The host's wall clock when it was sent.
    pub sent: SystemTime,
    /// The camera's NTP time written in it, moved to the Unix epoch.
    pub camera_time: SystemTime,
}

impl SenderReport {
    /// How far the camera's clock is ahead of the host's, as this report shows it (negative:
    /// behind), in seconds.
    pub fn camera_ahead_seconds(&self) -> f64 {
        match self.camera_time.duration_since(self.sent) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(behind) => -behind.duration().as_secs_f64(),
        }
    }

    /// Reads the sender report that starts an outgoing RTCP compound packet (RFC 3550 6.4.1:
    /// packet type 200 in byte 1, the NTP timestamp in bytes 8-15); `None` for a receiver report.
    fn parse(rtcp: &[u8], sent: SystemTime) -> Option<SenderReport> {
        const SR: u8 = 200;
        if rtcp.get(1) != Some(&SR) {
            return None;
        }
        let word = |at: usize| Some(u32::from_be_bytes(rtcp.get(at..at + 4)?.try_into().ok()?));
        let (seconds, fraction) = (word(8)?, word(12)?);
        let since_1900 =
            Duration::from_secs(seconds.into()) + Duration::from_nanos((u64::from(fraction) * 1_000_000_000) >> 32);
        let camera_time = UNIX_EPOCH + since_1900.checked_sub(NTP_UNIX_OFFSET)?;
        Some(SenderReport { sent, camera_time })
    }
}

/// One power-on of the camera: the server, its listening socket and the threads it runs.
struct Serving {
    /// The port actually bound (the one asked for, or the one picked for port 0).
    port: u16,
    server: rtsp_server::RTSPServer,
    /// The watch on the listening socket; destroying it closes the socket, which
    /// `RTSPServer::attach` would not let us do on a context other than the default one.
    listener: glib::Source,
    /// The server's own loop and context, so cameras are independent of each other and of
    /// whatever the test does with the default context.
    main_loop: glib::MainLoop,
    thread: JoinHandle<()>,
    /// Cleared at power-off so feeders end even if their media is slow to go away.
    powered: Arc<AtomicBool>,
    /// One per media: with a shared factory that is one at a time, but a new one is built when
    /// a client comes after the last one left.
    feeders: Arc<Mutex<Vec<Feeder>>>,
}

/// The thread pushing frames into one media's `appsrc`.
struct Feeder {
    /// Weak, so a media the server has finished with is freed, not kept for power-off.
    media: glib::WeakRef<rtsp_server::RTSPMedia>,
    thread: JoinHandle<()>,
}

impl Serving {
    fn power_on(
        port: u16,
        clip: &Arc<Clip>,
        feed: &Arc<Feed>,
        credentials: Option<&(String, String)>,
        clock_ahead: Option<Duration>,
        launch: &str,
    ) -> Serving {
        let server = rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());

        let powered = Arc::new(AtomicBool::new(true));
        let feeders: Arc<Mutex<Vec<Feeder>>> = Arc::default();
        let factory = rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(launch);
        // One encoder per camera, however many clients: a camera has one sensor.
        factory.set_shared(true);
        if let Some(ahead) = clock_ahead {
            factory.set_clock(Some(&camera_clock(ahead)));
        }
        factory.connect_media_configure({
            let (clip, feed, powered) = (clip.clone(), feed.clone(), powered.clone());
            let feeders = feeders.clone();
            move |_, media| {
                watch_rtp(media, feed.clone(), clock_ahead.is_some());
                let feeder = Feeder::start(media, clip.clone(), feed.clone(), powered.clone());
                let mut feeders = feeders.lock().expect("feeder list lock");
                feeders.retain(|f| !f.thread.is_finished());
                feeders.push(feeder);
            }
        });
        if let Some((user, pass)) = credentials {
            require_credentials(&server, &factory, user, pass);
        }
        server
            .mount_points()
            .expect("an RTSP server has mount points")
            .add_factory(MOUNT, factory);

        let listener = server
            .create_source(None::<&gio::Cancellable>)
            .unwrap_or_else(|e| panic!("test camera cannot listen on 127.0.0.1:{port}: {e}"));
        let port = u16::try_from(server.bound_port())
            .unwrap_or_else(|_| panic!("test camera has no bound port (asked for {port})"));
        let context = glib::MainContext::new();
        listener.attach(Some(&context));
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let thread = thread::Builder::new()
            .name(format!("test-camera-{port}"))
            .spawn({
                let main_loop = main_loop.clone();
                move || {
                    context
                        .with_thread_default(|| main_loop.run())
                        .expect("test camera owns its main context")
                }
            })
            .expect("spawn the test camera thread");
        Serving {
            port,
            server,
            listener,
            main_loop,
            thread,
            powered,
            feeders,
        }
    }

    fn power_off(self) {
        // Close the listening socket first, so nothing reconnects while the rest goes down.
        self.listener.destroy();
        self.server
            .client_filter(Some(&mut |_, _| rtsp_server::RTSPFilterResult::Remove));
        // Closing a client's connection keeps its UDP sessions (RTSP allows a session to outlive
        // its TCP connection), and those would keep streaming: remove them too.
        if let Some(sessions) = self.server.session_pool() {
            sessions.filter(Some(&mut |_, _| rtsp_server::RTSPFilterResult::Remove));
        }
        self.powered.store(false, Ordering::SeqCst);
        let feeders = std::mem::take(&mut *self.feeders.lock().expect("feeder list lock"));
        for feeder in feeders {
            if let Some(media) = feeder.media.upgrade() {
                // Already unprepared when its last session went: nothing to report then.
                let _ = media.unprepare();
            }
            feeder.thread.join().expect("test camera feeder thread panicked");
        }
        // Quit from inside the loop: a plain `quit` before the thread reached `run` (a camera
        // stopped right after starting) would be lost, and the join below would never return.
        let main_loop = self.main_loop.clone();
        glib::idle_source_new(None, glib::Priority::DEFAULT, move || {
            main_loop.quit();
            glib::ControlFlow::Break
        })
        .attach(Some(&self.main_loop.context()));
        self.thread.join().expect("test camera server thread panicked");
    }
}

/// A wall clock running `ahead` of the host's, on the NTP epoch: with rtpbin's `ntp-time-source`
/// at `clock-time`, rtpsession puts this clock's time as it is into its sender reports
/// (gstrtpsession.c, `get_current_times`). The media's running time, and so the stream's
/// timestamps, are differences of this clock's times, which the offset leaves unchanged.
fn camera_clock(ahead: Duration) -> gst::Clock {
    let clock = glib::Object::builder::<gst::SystemClock>()
        .property("clock-type", gst::ClockType::Realtime)
        .build()
        .upcast::<gst::Clock>();
    let internal = clock.internal_time();
    let offset = gst::ClockTime::from_nseconds((NTP_UNIX_OFFSET + ahead).as_nanos() as u64);
    clock.set_calibration(internal, internal + offset, 1, 1);
    clock
}

/// Hooks a media's RTP session as the server builds it: records the sender reports it sends, and
/// with `camera_clock` makes its sender reports take their NTP time from the pipeline's clock
/// (by default rtpbin reads the host's wall clock, whatever clock the pipeline runs on).
fn watch_rtp(media: &rtsp_server::RTSPMedia, feed: Arc<Feed>, camera_clock: bool) {
    // The media's pipeline exists at media-configure; rtpbin and its sessions are added when the
    // media is prepared, before any stream joins it.
    let Some(pipeline) = media.element().parent().and_then(|p| p.downcast::<gst::Bin>().ok()) else {
        panic!("the test camera's media has no pipeline at media-configure");
    };
    pipeline.connect_deep_element_added(move |_, _, element| {
        match element.factory().map(|f| f.name()).as_deref() {
            Some("rtpbin") if camera_clock => element.set_property_from_str("ntp-time-source", "clock-time"),
            Some("rtpsession") => {
                let session = element.property::<glib::Object>("internal-session");
                let feed = feed.clone();
                session.connect("on-sending-rtcp", false, move |args| {
                    let sent = SystemTime::now();
                    let buffer = args.get(1).and_then(|v| v.get::<gst::Buffer>().ok());
                    let report = buffer
                        .as_ref()
                        .and_then(|b| b.map_readable().ok())
                        .and_then(|data| SenderReport::parse(&data, sent));
                    if let Some(report) = report {
                        feed.sender_reports.lock().expect("sender report lock").push(report);
                    }
                    // Not modified: the packet goes out as rtpsession built it.
                    Some(false.to_value())
                });
            }
            _ => {}
        }
    });
}

/// Lets in only clients presenting `user`/`pass`, with digest auth: what cameras usually default
/// to, and the harder of the two for a client to get right.
fn require_credentials(
    server: &rtsp_server::RTSPServer,
    factory: &rtsp_server::RTSPMediaFactory,
    user: &str,
    pass: &str,
) {
    let auth = rtsp_server::RTSPAuth::new();
    let token = rtsp_server::RTSPToken::builder()
        .field(rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
        .build();
    auth.add_digest(user, pass, &token);
    auth.set_supported_methods(gst_rtsp::RTSPAuthMethod::Digest);
    server.set_auth(Some(&auth));
    factory.add_role_from_structure(
        &gst::Structure::builder(ROLE)
            .field(rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
            .field(rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
            .build(),
    );
}

impl Feeder {
    /// Called from `media-configure`, before the media is prepared: the feeder starts at once,
    /// because a live media only finishes preparing when its first frame has gone through.
    fn start(media: &rtsp_server::RTSPMedia, clip: Arc<Clip>, feed: Arc<Feed>, powered: Arc<AtomicBool>) -> Feeder {
        let appsrc = media
            .element()
            .downcast::<gst::Bin>()
            .ok()
            .and_then(|bin| bin.by_name("src"))
            .and_then(|src| src.downcast::<gst_app::AppSrc>().ok())
            .expect("the test camera's launch line has an appsrc named src");
        appsrc.set_caps(Some(&clip.caps));
        let unprepared = Arc::new(AtomicBool::new(false));
        media.connect_unprepared({
            let unprepared = unprepared.clone();
            move |_| unprepared.store(true, Ordering::SeqCst)
        });
        let live = move || powered.load(Ordering::SeqCst) && !unprepared.load(Ordering::SeqCst);
        let thread = thread::Builder::new()
            .name("test-camera-feed".into())
            .spawn(move || feed_frames(&appsrc, &clip, &feed, live))
            .expect("spawn a test camera feeder thread");
        Feeder {
            media: media.downgrade(),
            thread,
        }
    }
}

/// Pushes the clip's frames at its frame rate, looping, while `live()`; timestamps are the
/// pipeline's running time at push, which is what a live source must produce.
fn feed_frames(appsrc: &gst_app::AppSrc, clip: &Clip, feed: &Feed, live: impl Fn() -> bool) {
    let period = Duration::from_nanos(clip.frame_duration.nseconds());
    let mut next = Instant::now();
    let mut index = 0;
    while live() {
        next += period;
        match next.checked_duration_since(Instant::now()) {
            Some(wait) => thread::sleep(wait),
            // Fell behind (a loaded machine): skip ahead rather than burst to catch up.
            None => next = Instant::now(),
        }
        if feed.hung.load(Ordering::SeqCst) {
            continue;
        }
        // None until the media is playing; frames before that would have no place in time.
        let Some(pts) = appsrc.current_running_time() else {
            continue;
        };
        // A shallow copy: new timestamps, the same pixels.
        let mut frame = clip.frames[index % clip.frames.len()].copy();
        {
            let frame = frame.get_mut().expect("a fresh copy is writable");
            frame.set_pts(pts);
            frame.set_dts(gst::ClockTime::NONE);
            frame.set_duration(clip.frame_duration);
        }
        // Fails only while the media is changing state; the next tick tries again.
        if appsrc.push_buffer(frame).is_ok() {
            index += 1;
            feed.frames_served.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A clip decoded to raw I420 (what `x264enc` needs to make ordinary 4:2:0 8-bit H.264).
struct Clip {
    caps: gst::Caps,
    frames: Vec<gst::Buffer>,
    frame_duration: gst::ClockTime,
}

/// The decoded clip at `path`, decoding it on first use in the process.
fn decoded(path: &Path) -> Arc<Clip> {
    static CLIPS: OnceLock<Mutex<HashMap<PathBuf, Arc<Clip>>>> = OnceLock::new();
    // Held while decoding, so cameras starting together wait for one decode instead of racing.
    let mut clips = CLIPS.get_or_init(Default::default).lock().expect("clip cache lock");
    clips
        .entry(path.to_owned())
        .or_insert_with(|| Arc::new(decode(path)))
        .clone()
}

fn decode(path: &Path) -> Clip {
    let what = path.display();
    let pipeline = gst::parse::launch(
        "filesrc name=file ! decodebin ! videoconvert ! video/x-raw,format=I420 \
         ! appsink name=sink sync=false",
    )
    .expect("the clip decoding pipeline parses")
    .downcast::<gst::Pipeline>()
    .expect("a launch line with several elements makes a pipeline");
    let by_name = |name| pipeline.by_name(name).expect("element named in the launch line");
    by_name("file").set_property("location", path);
    let sink = by_name("sink")
        .downcast::<gst_app::AppSink>()
        .expect("sink is an appsink");
    pipeline
        .set_state(gst::State::Playing)
        .unwrap_or_else(|e| panic!("cannot decode {what}: {e}"));

    let mut caps = None;
    let mut frames = Vec::new();
    // Bounded: after a decode error the appsink would wait for EOS forever.
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
        caps.get_or_insert_with(|| sample.caps().expect("decoded samples have caps").to_owned());
        let buffer = sample.buffer().expect("decoded samples have a buffer");
        // A deep copy gives the decoder's buffers back to its pool instead of holding them all.
        frames.push(buffer.copy_deep().expect("a decoded frame can be copied"));
    }
    if !sink.is_eos() {
        let error = pipeline
            .bus()
            .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]))
            .map_or("timed out".to_owned(), |m| format!("{m:?}"));
        panic!("cannot decode {what}: {error}");
    }
    pipeline.set_state(gst::State::Null).expect("a finished pipeline stops");

    let caps = caps.unwrap_or_else(|| panic!("{what} has no video frames"));
    let info = gst_video::VideoInfo::from_caps(&caps).expect("decoded caps are raw video");
    let fps = info.fps();
    assert!(fps.numer() > 0, "{what} has no frame rate");
    let frame_duration = gst::ClockTime::SECOND
        .mul_div_floor(fps.denom() as u64, fps.numer() as u64)
        .expect("a frame lasts less than forever");
    Clip {
        caps,
        frames,
        frame_duration,
    }
}
