//! The video stream on request (README, "Video on request"): a real RTSP camera (the test
//! server, real footage) recorded into the node's ring; clips and snapshots asked for over real
//! gRPC and checked by decoding them with GStreamer and running the real detectors on them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::rtsp::{NEVER, TestCamera};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use retina_edge::access::{self, Scope};
use retina_edge::deliver::client::{self, Credentials, PixelTarget};
use retina_edge::infer::faces::FaceDetector;
use retina_edge::infer::{Analyzer, SessionOptions, environment};
use retina_edge::pb;
use retina_edge::video::ring::Ring;

const OPTIONS: SessionOptions = SessionOptions {
    memory_arena: false,
    intra_op_threads: 1,
    allow_spinning: false,
};

/// The test camera's frame interval (25 fps).
const FRAME_NS: i64 = 40_000_000;
const S: i64 = 1_000_000_000;

fn video_section(dir: &Path, max_bytes: u64) -> String {
    format!(
        "[video]\ndir = \"{}\"\nsegment_seconds = 1.0\nmax_bytes_per_camera = {max_bytes}\n\
         face_model = \"{}/models/blazeface-back-256.toml\"\n",
        dir.display(),
        common::repo().display()
    )
}

/// The ring's closed segments of `camera`, as the node's directory holds them now.
fn segments(dir: &Path, camera: &str) -> Vec<retina_edge::video::ring::Segment> {
    Ring::new(dir, camera).segments().expect("the ring lists")
}

/// Waits until the ring holds `seconds` of video (closed segments) after `after`.
async fn wait_for_video(dir: &Path, camera: &str, after: i64, seconds: f64) -> Vec<retina_edge::video::ring::Segment> {
    let deadline = Instant::now() + NEVER;
    loop {
        let held: Vec<_> = segments(dir, camera).into_iter().filter(|s| s.start >= after).collect();
        let span = held.last().map_or(0, |l| l.end) - held.first().map_or(0, |f| f.start);
        if span as f64 >= seconds * 1e9 {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "{seconds} s of video of {camera} in the ring"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An MP4 decoded by GStreamer: the frames' presentation times and the frame size.
struct Decoded {
    pts_ns: Vec<i64>,
    size: (u32, u32),
    frames: Vec<image::RgbImage>,
}

fn decode_mp4(bytes: &[u8], keep_frames: bool) -> Decoded {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(
        "appsrc name=src ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    src.push_buffer(gst::Buffer::from_slice(bytes.to_vec())).unwrap();
    src.end_of_stream().unwrap();
    let mut decoded = Decoded {
        pts_ns: Vec::new(),
        size: (0, 0),
        frames: Vec::new(),
    };
    while let Ok(sample) = sink.pull_sample() {
        let buffer = sample.buffer().unwrap();
        decoded.pts_ns.push(buffer.pts().unwrap().nseconds() as i64);
        let s = sample.caps().unwrap().structure(0).unwrap();
        let (w, h) = (
            s.get::<i32>("width").unwrap() as u32,
            s.get::<i32>("height").unwrap() as u32,
        );
        decoded.size = (w, h);
        if keep_frames {
            let map = buffer.map_readable().unwrap();
            let stride = map.len() / h as usize;
            let mut pixels = Vec::with_capacity((w * h * 3) as usize);
            for row in map.chunks(stride) {
                pixels.extend_from_slice(&row[..(w * 3) as usize]);
            }
            decoded.frames.push(image::RgbImage::from_raw(w, h, pixels).unwrap());
        }
    }
    let error = pipeline.bus().unwrap().pop_filtered(&[gst::MessageType::Error]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(error.is_none(), "the MP4 decodes without error: {error:?}");
    decoded
}

fn credentials(token: Option<&str>) -> Credentials {
    Credentials {
        ca_cert: None,
        client_cert: None,
        token: token.map(String::from),
    }
}

async fn get_clip(
    addr: &str,
    token: Option<&str>,
    target: PixelTarget,
    raw: bool,
) -> (pb::ClipInfo, pb::ClipSummary, Vec<u8>) {
    let mut bytes = Vec::new();
    let (info, summary) = client::clip(addr, &credentials(token), target, raw, &mut bytes)
        .await
        .expect("the node sends the clip");
    assert_eq!(summary.bytes, bytes.len() as u64, "every byte the node sent arrived");
    (info, summary, bytes)
}

fn camera_interval(camera: &str, from: i64, to: i64) -> PixelTarget {
    let at = |ns: i64| std::time::UNIX_EPOCH + Duration::from_nanos(ns as u64);
    PixelTarget::Camera {
        camera_id: camera.into(),
        from: at(from),
        to: at(to),
    }
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

/// The export records of `camera` in the node's log, once there are `count` (a record reaches
/// the log between two frames of the camera, then its next commit).
async fn export_records<T>(
    client: &mut pb::retina_client::RetinaClient<T>,
    camera: &str,
    count: usize,
) -> Vec<pb::PixelExport>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let deadline = Instant::now() + NEVER;
    loop {
        let answer = client
            .query(pb::QueryRequest {
                camera_id: camera.into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("Query")
            .into_inner();
        let records: Vec<_> = answer.descriptors.into_iter().filter_map(|d| d.pixel_export).collect();
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A track's snapshot is the frame it was described from: the detector finds the object where
/// the descriptor put it. Returns the track (the first confirmed one of a sizeable object) and
/// its stored box.
async fn track_snapshot_is_its_frame<T>(
    client: &mut pb::retina_client::RetinaClient<T>,
    addr: &str,
    video_dir: &Path,
    camera: &str,
) -> (u64, pb::TrackView)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            start: pb::StartPosition::Earliest as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (track, view, class_id) = loop {
        let d = tokio::time::timeout(NEVER, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let confirmed = d.track_events.iter().find(|e| {
            e.kind == pb::TrackEventKind::Confirmed as i32
                && e.view.as_ref().is_some_and(|v| {
                    let b = retina_edge::wire::decode_box_q16(v.box_q16);
                    (b[2] - b[0]) * (b[3] - b[1]) > 0.02
                })
        });
        if let Some(event) = confirmed {
            break (event.track_id, event.view.clone().unwrap(), event.class_id);
        }
    };
    drop(stream);
    // The frame must be in a closed segment first.
    wait_for_video(video_dir, camera, common::nanos(view.capture_time) - S, 1.5).await;
    let whole = client::snapshot(
        addr,
        &credentials(None),
        track_of(track, "", 0.0),
        pb::SnapshotOptions {
            // The detector is checked on the frame as the node analysed it: faces pixelated hide
            // what it looks for in a person.
            raw: true,
            ..Default::default()
        },
    )
    .await
    .expect("a track snapshot");
    // The ring times a frame by its segment's first frame and its place in the stream; the
    // descriptor by the camera's sender clock (RTCP) once it has one: they agree to a few
    // milliseconds, and frames are 40 ms apart.
    let off = common::nanos(whole.capture_time) - common::nanos(view.capture_time);
    assert!(off.abs() < FRAME_NS / 2, "the very frame described ({off} ns away)");
    let picture = image::load_from_memory(&whole.jpeg).unwrap().to_rgb8();
    assert_eq!(picture.dimensions(), (640, 272));
    let env = environment(&common::ort_library()).unwrap();
    let detector = retina_edge::infer::ModelFile::load(
        retina_edge::infer::manifest::Manifest::load(&common::repo().join("models/nanodet-g-416.toml")).unwrap(),
        env,
        OPTIONS,
    )
    .unwrap();
    let mut analyzer = Analyzer::new(env, &detector, None, &[], None, 0.0, OPTIONS).unwrap();
    let (found, _) = analyzer.analyze(&picture).unwrap();
    let stored = retina_edge::wire::decode_box_q16(view.box_q16);
    let best = found
        .iter()
        .filter(|d| d.class_id == class_id)
        .map(|d| {
            let b = d.bbox;
            iou([b[0] / 640.0, b[1] / 272.0, b[2] / 640.0, b[3] / 272.0], stored)
        })
        .fold(0.0f32, f32::max);
    assert!(
        best >= 0.7,
        "the object is where its descriptor says (IoU {best:.2}): {found:?}"
    );
    (track, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_cameras_ring_serves_clips_and_track_snapshots_states_outages_and_keeps_its_bound() {
    let mut camera = TestCamera::start(&common::sample_clip());
    let dir = tempfile::tempdir().unwrap();
    let video_dir = dir.path().join("video");
    // The test camera sends about 100 kB/s: a 1 MiB ring holds about ten seconds.
    let max_bytes: u64 = 1 << 20;
    let cameras = format!(
        "{}\n{}max_concurrent_exports = 1\n",
        common::rtsp_camera("door", &camera.uri(), ""),
        video_section(&video_dir, max_bytes)
    );
    let (node, mut client) = common::start_camera_node(&cameras).await;
    let addr = format!("http://{}", node.grpc_addr);
    let started = retina_edge::clock::now_unix_nanos();

    // The ring's size, sampled all along: closed segments (the bound leaves out the one being
    // written).
    let (largest_total, largest_segment, sampling) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(true)),
    );
    let sampler = {
        let (total, segment, sampling, video_dir) = (
            largest_total.clone(),
            largest_segment.clone(),
            sampling.clone(),
            video_dir.clone(),
        );
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let held: Vec<_> = segments(&video_dir, "door").into_iter().filter(|s| !s.open).collect();
                total.fetch_max(held.iter().map(|s| s.bytes).sum(), Ordering::Relaxed);
                segment.fetch_max(held.iter().map(|s| s.bytes).max().unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // A clip of the past: three seconds, from the second second of video on.
    let held = wait_for_video(&video_dir, "door", started, 5.0).await;
    let from = held[0].start + S;
    let to = from + 3 * S;
    let (info, summary, mp4) = get_clip(&addr, None, camera_interval("door", from, to), false).await;
    assert_eq!(
        (info.frame_width, info.frame_height),
        (640, 272),
        "the camera's own frame size"
    );
    assert!(info.gaps.is_empty(), "no gap in continuous video: {:?}", info.gaps);
    let first = common::nanos(summary.first_frame);
    assert!(
        (from..from + FRAME_NS).contains(&first),
        "the clip starts at the first frame from `from`"
    );
    let decoded = decode_mp4(&mp4, false);
    assert_eq!(decoded.size, (640, 272));
    assert_eq!(decoded.pts_ns.len() as u32, summary.frames);
    // 3 s at 25 fps: 75 frames, one either way for where the interval's ends fall.
    assert!(
        (74..=76).contains(&decoded.pts_ns.len()),
        "{} frames in 3 s",
        decoded.pts_ns.len()
    );
    let last = *decoded.pts_ns.last().unwrap();
    // The MP4's time scale rounds times to well under a millisecond.
    let in_capture_time = common::nanos(summary.last_frame) - first;
    assert!(
        (last - in_capture_time).abs() < 1_000_000,
        "MP4 time {last} is capture time less the first frame's ({in_capture_time})"
    );
    assert!(
        (3 * S - 2 * FRAME_NS..3 * S).contains(&last),
        "the last frame at {last} ns"
    );

    let (track, view) = track_snapshot_is_its_frame(&mut client, &addr, &video_dir, "door").await;
    let stored = retina_edge::wire::decode_box_q16(view.box_q16);
    let cropped = client::snapshot(
        &addr,
        &credentials(None),
        track_of(track, "", 0.0),
        pb::SnapshotOptions {
            crop_margin: 0.1,
            draw_box: true,
            ..Default::default()
        },
    )
    .await
    .expect("a cropped track snapshot");
    let crop = image::load_from_memory(&cropped.jpeg).unwrap().to_rgb8();
    let want = (
        ((stored[2] - stored[0]) * 1.2 * 640.0).min(640.0),
        ((stored[3] - stored[1]) * 1.2 * 272.0).min(272.0),
    );
    assert!(
        (crop.width() as f32 - want.0).abs() <= 3.0 + want.0 * 0.2 && crop.width() as f32 <= want.0 + 3.0,
        "crop {:?} against the box grown by 10 % each side {want:?}",
        crop.dimensions()
    );

    let refused_track = |track_id: u64, camera: &'static str| {
        let addr = addr.clone();
        async move {
            let target = track_of(track_id, camera, 0.0);
            client::snapshot(&addr, &credentials(None), target, pb::SnapshotOptions::default())
                .await
                .expect_err("no such track")
                .to_string()
        }
    };
    // Track ids are unique per camera: asked of another camera, there is no such track.
    let elsewhere = refused_track(track, "elsewhere").await;
    assert!(elsewhere.contains("of camera elsewhere"), "{elsewhere}");
    // A track this camera never had: refused, and the refusal recorded (below).
    let unknown = refused_track(7, "door").await;
    assert!(unknown.contains("track 7"), "{unknown}");

    // The track's clip: its life, from the log, with a second either side.
    let described = common::nanos(view.capture_time);
    let track_clip = track_of(track, "door", 1.0);
    wait_for_video(&video_dir, "door", described - S, 3.0).await;
    let (_, summary, mp4) = get_clip(&addr, None, track_clip, false).await;
    let (first, last) = (common::nanos(summary.first_frame), common::nanos(summary.last_frame));
    assert!(
        first <= described - S + FRAME_NS && last >= described + S - FRAME_NS,
        "the clip spans the track's view with its margins: {first}..{last} around {described}"
    );
    assert_eq!(decode_mp4(&mp4, false).pts_ns.len() as u32, summary.frames);

    // An outage: the camera goes away for a few seconds and comes back.
    let before_outage = segments(&video_dir, "door").last().unwrap().end;
    camera.stop();
    common::wait_for_camera(&mut client, "door", NEVER, "loses its camera", |c| {
        c.state != pb::CameraState::Streaming as i32
    })
    .await;
    // The outage itself has to last: three seconds without video.
    tokio::time::sleep(Duration::from_secs(3)).await;
    camera.restart();
    let after = wait_for_video(&video_dir, "door", before_outage + S, 2.0).await;
    let (from, to) = (before_outage - 2 * S, after[0].start + 2 * S);
    let (info, summary, mp4) = get_clip(&addr, None, camera_interval("door", from, to), false).await;
    assert_eq!(info.gaps.len(), 1, "one gap: {:?}", info.gaps);
    let gap = &info.gaps[0];
    let (gap_from, gap_to) = (common::nanos(gap.from_time), common::nanos(gap.to_time));
    assert!(gap_to - gap_from >= 3 * S, "the gap covers the outage: {gap:?}");
    assert!(gap_from >= before_outage - FRAME_NS && gap_to <= after[0].start + FRAME_NS);
    let decoded = decode_mp4(&mp4, false);
    assert_eq!(decoded.pts_ns.len() as u32, summary.frames);
    let video_ns = (to - from) - (gap_to - gap_from);
    let expected = video_ns / FRAME_NS;
    assert!(
        (decoded.pts_ns.len() as i64 - expected).abs() <= 3,
        "{} frames where {expected} were kept",
        decoded.pts_ns.len()
    );
    // The frame before the gap is held across it: time in the MP4 jumps by the gap.
    let jump = decoded.pts_ns.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(jump >= 3 * S, "the MP4 keeps the outage's length ({jump} ns)");

    // The bound: by now the camera has sent more than the ring holds.
    let deadline = Instant::now() + NEVER;
    while segments(&video_dir, "door")[0].start <= started + S {
        assert!(Instant::now() < deadline, "the oldest segments are removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let (total, segment) = (
        largest_total.load(Ordering::Relaxed),
        largest_segment.load(Ordering::Relaxed),
    );
    assert!(
        total <= max_bytes + segment,
        "the ring held {total} bytes at most, against {max_bytes} and a segment of {segment}"
    );

    // A client that goes away mid-clip: the export stops, says what it sent in its record, and
    // gives its slot back (this node runs one export at once: every export below needs it).
    struct GoneAfterFirstWrite;
    impl std::io::Write for GoneAfterFirstWrite {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("the client is gone"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let held = wait_for_video(&video_dir, "door", retina_edge::clock::now_unix_nanos() - 6 * S, 5.0).await;
    let whole = camera_interval("door", held[0].start, held.last().unwrap().end);
    client::clip(&addr, &credentials(None), whole, false, &mut GoneAfterFirstWrite)
        .await
        .expect_err("the client stops reading");
    let deadline = Instant::now() + NEVER;
    let cut_short = loop {
        let records = export_records(&mut client, "door", 7).await;
        if let Some(cut) = records.into_iter().find(|r| r.kind == "clip" && !r.refused.is_empty()) {
            break cut;
        }
        assert!(Instant::now() < deadline, "the clip's record");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let whole_frames = (held.last().unwrap().end - held[0].start) / FRAME_NS;
    assert!(
        cut_short.frames > 0 && i64::from(cut_short.frames) < whole_frames,
        "{} of {whole_frames} frames encoded before the client was found gone: {cut_short:?}",
        cut_short.frames
    );

    // Who looked at what: every export is a record in the camera's stream.
    let records = export_records(&mut client, "door", 7).await;
    let kinds: Vec<(&str, bool)> = records
        .iter()
        .map(|r| (r.kind.as_str(), r.refused.is_empty() && r.frames > 0))
        .collect();
    assert_eq!(
        kinds,
        [
            ("clip", true),
            ("track snapshot", true),
            ("track snapshot", true),
            ("track snapshot", false),
            ("track clip", true),
            ("clip", true),
            ("clip", false)
        ],
        "{records:?}"
    );
    assert!(records[3].refused.contains("track 7"), "{:?}", records[3]);
    let raw: Vec<bool> = records.iter().map(|r| r.raw).collect();
    assert_eq!(raw, [false, true, false, false, false, false, false]);
    assert_eq!(records[4].track_id, track);
    assert_eq!(records[1].track_id, track);
    // A camera whose video is not kept (here: none of that name) gets no stream of records.
    let elsewhere = client
        .query(pb::QueryRequest {
            camera_id: "elsewhere".into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .expect("Query")
        .into_inner();
    assert!(elsewhere.descriptors.is_empty(), "{:?}", elsewhere.descriptors);

    // The same, in the metrics: the ring's size and span, what pruning removed, and the exports
    // by kind and outcome with the frames they sent.
    let values = common::metric_values(&node.metrics.encode().unwrap());
    let value = |name: &str| {
        values
            .get(name)
            .copied()
            .unwrap_or_else(|| panic!("{name} in {values:?}"))
    };
    let ring_bytes = value("retina_video_ring_bytes{camera=\"door\"}");
    assert!(
        ring_bytes > 0.0 && ring_bytes <= (max_bytes + segment) as f64,
        "{ring_bytes} bytes against {max_bytes}"
    );
    let kept: Vec<_> = segments(&video_dir, "door").into_iter().filter(|s| !s.open).collect();
    let span = (kept.last().unwrap().end - kept[0].start) as f64 / 1e9;
    let ring_seconds = value("retina_video_ring_seconds{camera=\"door\"}");
    assert!(
        (ring_seconds - span).abs() < 2.5,
        "{ring_seconds} s kept, the ring spans {span} s"
    );
    assert!(value("retina_video_segments_pruned_total{camera=\"door\"}") >= 1.0);
    let exports = |kind: &str, outcome: &str| {
        values
            .get(&format!(
                "retina_pixel_exports_total{{camera=\"door\",kind=\"{kind}\",outcome=\"{outcome}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    let counted: Vec<f64> = [
        ("clip", "sent"),
        ("clip", "refused"),
        ("track snapshot", "sent"),
        ("track snapshot", "refused"),
        ("track clip", "sent"),
    ]
    .iter()
    .map(|(kind, outcome)| exports(kind, outcome))
    .collect();
    assert_eq!(counted, [2.0, 1.0, 2.0, 1.0, 1.0], "as the records say");
    let frames: u32 = records.iter().filter(|r| r.kind == "clip").map(|r| r.frames).sum();
    assert_eq!(
        value("retina_pixel_export_frames_total{camera=\"door\",kind=\"clip\"}"),
        f64::from(frames)
    );
    common::stop_node(node).await;
}

/// Detail in a box: the variance of a Laplacian of the grey image, high where there are edges.
fn detail(image: &image::RgbImage, b: [f32; 4]) -> f64 {
    let grey = image::imageops::grayscale(image);
    let (x0, y0) = (b[0].max(1.0) as u32, b[1].max(1.0) as u32);
    let (x1, y1) = (
        (b[2] as u32).min(grey.width() - 2),
        (b[3] as u32).min(grey.height() - 2),
    );
    let mut values = Vec::new();
    for y in y0..=y1 {
        for x in x0..=x1 {
            let p = |dx: i32, dy: i32| f64::from(grey.get_pixel((x as i32 + dx) as u32, (y as i32 + dy) as u32)[0]);
            values.push(4.0 * p(0, 0) - p(-1, 0) - p(1, 0) - p(0, -1) - p(0, 1));
        }
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64
}

fn carphone() -> PathBuf {
    let path = common::repo().join(".deps/media/carphone_pristine.mp4");
    assert!(path.is_file(), "{} is missing: run `make deps`", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faces_leave_the_node_pixelated_and_unblurred_pixels_need_their_own_scope() {
    let camera = TestCamera::start(&carphone());
    let dir = tempfile::tempdir().unwrap();
    let video_dir = dir.path().join("video");
    let tokens = dir.path().join("tokens.toml");
    let viewer = access::add_token(&tokens, "viewer", &[Scope::Pixels]).unwrap();
    let investigator = access::add_token(&tokens, "investigator", &[Scope::Pixels, Scope::PixelsRaw]).unwrap();
    let centre = access::add_token(&tokens, "centre", &[Scope::Subscribe]).unwrap();
    let cameras = format!(
        "{}\n{}\n[auth]\ntokens_file = \"{}\"\n",
        common::rtsp_camera("car", &camera.uri(), ""),
        video_section(&video_dir, 64 << 20),
        tokens.display()
    );
    let node = retina_edge::node::Node::start(common::parse_config(&common::config_toml(&cameras, "")))
        .await
        .expect("node starts");
    let addr = format!("http://{}", node.grpc_addr);
    let started = retina_edge::clock::now_unix_nanos();
    let held = wait_for_video(&video_dir, "car", started, 3.0).await;
    let time = held[0].start + S;
    let at = camera_interval("car", time, time);

    let raw = client::snapshot(
        &addr,
        &credentials(Some(&investigator)),
        at.clone(),
        pb::SnapshotOptions {
            raw: true,
            ..Default::default()
        },
    )
    .await
    .expect("the raw scope gets raw pixels");
    assert!(raw.raw && raw.faces_blurred == 0);
    let blurred = client::snapshot(
        &addr,
        &credentials(Some(&viewer)),
        at.clone(),
        pb::SnapshotOptions::default(),
    )
    .await
    .expect("the pixels scope gets blurred pixels");
    assert!(!blurred.raw);
    assert_eq!(blurred.faces_blurred, 1, "the driver's face");
    assert_eq!(blurred.capture_time, raw.capture_time, "the same frame");

    let env = environment(&common::ort_library()).unwrap();
    let mut faces = FaceDetector::load(&common::repo().join("models/blazeface-back-256.toml"), env).unwrap();
    let raw_picture = image::load_from_memory(&raw.jpeg).unwrap().to_rgb8();
    let blurred_picture = image::load_from_memory(&blurred.jpeg).unwrap().to_rgb8();
    let found = faces.detect(&raw_picture).unwrap();
    assert_eq!(found.len(), 1, "the face in the raw frame: {found:?}");
    let face = found[0].bbox;
    let after = faces.detect(&blurred_picture).unwrap();
    assert!(
        after.iter().all(|f| iou(f.bbox, face) < 0.3),
        "no face where the face was: {after:?}"
    );
    let (sharp, mosaic) = (detail(&raw_picture, face), detail(&blurred_picture, face));
    assert!(
        mosaic * 3.0 < sharp,
        "detail in the face's box: {sharp:.0} raw, {mosaic:.0} pixelated"
    );

    let refused = client::snapshot(
        &addr,
        &credentials(Some(&viewer)),
        at.clone(),
        pb::SnapshotOptions {
            raw: true,
            ..Default::default()
        },
    )
    .await
    .expect_err("raw pixels need pixels-raw");
    assert!(refused.to_string().contains("pixels-raw"), "{refused}");
    let not_pixels = client::snapshot(
        &addr,
        &credentials(Some(&centre)),
        at.clone(),
        pb::SnapshotOptions::default(),
    )
    .await
    .expect_err("the subscribe scope gets no pixels");
    assert!(not_pixels.to_string().contains("\"pixels\""), "{not_pixels}");

    // A clip: every decoded frame is checked for faces the detector would still find.
    let (_, summary, mp4) = get_clip(&addr, Some(&viewer), camera_interval("car", time, time + 2 * S), false).await;
    let decoded = decode_mp4(&mp4, true);
    assert!(summary.faces_blurred >= summary.frames * 9 / 10, "{summary:?}");
    let still_found = decoded
        .frames
        .iter()
        .filter(|frame| !faces.detect(frame).unwrap().is_empty())
        .count();
    assert!(
        still_found * 20 <= decoded.frames.len(),
        "a face is still found in {still_found} of {} frames",
        decoded.frames.len()
    );

    // The CLI, as an operator runs it.
    let token_file = dir.path().join("viewer.token");
    std::fs::write(&token_file, &viewer).unwrap();
    let picture = dir.path().join("car.jpg");
    let stamp = humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + Duration::from_nanos(time as u64)).to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"))
        .args(["snapshot", "--addr", &addr, "--camera", "car", "--time", &stamp, "-o"])
        .arg(&picture)
        .arg("--token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 faces pixelated"), "{said}");
    assert_eq!(image::open(&picture).unwrap().to_rgb8().dimensions(), (176, 144));

    // Who looked: the records name the tokens, what they got, and what was refused.
    let channel = tonic::transport::Channel::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = client::BearerToken::new(Some(&centre)).unwrap();
    let mut reader = pb::retina_client::RetinaClient::with_interceptor(channel, bearer);
    let records = export_records(&mut reader, "car", 5).await;
    let seen: Vec<(&str, &str, bool, bool)> = records
        .iter()
        .map(|r| (r.kind.as_str(), r.caller.as_str(), r.raw, r.refused.is_empty()))
        .collect();
    assert_eq!(
        seen,
        [
            ("snapshot", "investigator", true, true),
            ("snapshot", "viewer", false, true),
            ("snapshot", "viewer", true, false),
            ("clip", "viewer", false, true),
            ("snapshot", "viewer", false, true),
        ],
        "{records:?}"
    );
    assert_eq!(records[1].faces_blurred, 1);
    node.shutdown();
    tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_without_h264_is_kept_by_encoding_its_frames_when_configured() {
    let camera = TestCamera::start_mjpeg(&common::sample_clip());
    let dir = tempfile::tempdir().unwrap();
    let video_dir = dir.path().join("video");
    let cameras = format!(
        "{}\n{}reencode = true\n",
        // Over TCP: a lost UDP packet loses a whole JPEG, and the frame count below is exact.
        common::rtsp_camera("mjpeg", &camera.uri(), "rtsp_transport = \"tcp\""),
        video_section(&video_dir, 64 << 20)
    );
    let (node, mut client) = common::start_camera_node(&cameras).await;
    let addr = format!("http://{}", node.grpc_addr);
    let started = retina_edge::clock::now_unix_nanos();

    let held = wait_for_video(&video_dir, "mjpeg", started, 4.0).await;
    // A keyframe is asked for where each segment is due: x264's own interval (twice the
    // segment, a backstop) would make them 2 s.
    for segment in &held {
        let seconds = (segment.end - segment.start) as f64 / 1e9;
        assert!(seconds <= 1.5, "a segment of {seconds:.2} s, configured 1 s");
    }
    let from = held[0].start + S;
    let (info, summary, mp4) = get_clip(&addr, None, camera_interval("mjpeg", from, from + 2 * S), false).await;
    assert!(info.gaps.is_empty(), "no gap in continuous video: {:?}", info.gaps);
    let decoded = decode_mp4(&mp4, false);
    assert_eq!(decoded.size, (640, 272), "the camera's own frame size");
    assert_eq!(decoded.pts_ns.len() as u32, summary.frames);
    // Every frame the camera sent (25 fps), not only the analysed ones (5 fps).
    assert!(
        (49..=51).contains(&decoded.pts_ns.len()),
        "{} frames in 2 s",
        decoded.pts_ns.len()
    );
    // Timed as the camera's descriptors are: a track's snapshot is the frame it was described
    // from.
    track_snapshot_is_its_frame(&mut client, &addr, &video_dir, "mjpeg").await;
}

/// A track's pixels; an empty camera: the node's only camera.
fn track_of(track_id: u64, camera: &str, margin_seconds: f32) -> PixelTarget {
    PixelTarget::Track {
        track_id,
        camera_id: camera.into(),
        margin_seconds,
    }
}
