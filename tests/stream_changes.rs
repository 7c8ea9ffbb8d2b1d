//! A stream that changes resolution midway (a camera reconfigured by its owner) is followed
//! without a restart: the frames just change size, and boxes stay normalised to each frame.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Re-encodes 2 s of the sample clip at `width`x`height` as an H.264 byte stream.
fn encode_part(dir: &Path, width: u32, height: u32) -> Vec<u8> {
    let out = dir.join(format!("part_{width}.h264"));
    let pipeline = format!(
        "filesrc location={} ! qtdemux ! h264parse ! avdec_h264 ! videoscale ! \
         video/x-raw,width={width},height={height} ! videoconvert ! video/x-raw,format=I420 ! \
         x264enc speed-preset=ultrafast key-int-max=25 bitrate=500 ! video/x-h264,stream-format=byte-stream ! \
         identity eos-after=50 ! filesink location={}",
        common::sample_clip().display(),
        out.display()
    );
    let status = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .status()
        .unwrap();
    assert!(status.success(), "encoding a test stream failed");
    std::fs::read(out).unwrap()
}

/// Frames in an H.264 byte stream, counted by decoding it with GStreamer, apart from the node.
fn decoded_frames(path: &Path) -> usize {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! h264parse ! avdec_h264 ! fakesink name=sink",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sink = pipeline.by_name("sink").unwrap();
    let counter = frames.clone();
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let message = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("decoding ends");
    assert_eq!(message.type_(), gst::MessageType::Eos, "{message:?}");
    pipeline.set_state(gst::State::Null).unwrap();
    frames.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_change_mid_stream_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    // A byte stream whose second half starts with a new SPS: 640x272, then 320x136.
    let mut stream = encode_part(dir.path(), 640, 272);
    stream.extend(encode_part(dir.path(), 320, 136));
    let path = dir.path().join("resolution_change.h264");
    std::fs::write(&path, stream).unwrap();
    let frames_in_file = decoded_frames(&path);

    let camera = format!(
        // Detections too, so that their boxes can be checked against each frame's size.
        "[[cameras]]\nid = \"cam\"\nuri = \"{}\"\nanalysis_fps = 0\nrealtime = false\n\
         [describe]\nsend_detections = true\n",
        path.display()
    );
    let config = common::config_toml(&camera, "exit_when_cameras_end = true");
    let (node, mut client) = common::start_node(common::parse_config(&config)).await;
    let cameras = node.cameras.clone();
    // Beside the full-context stream, one as a central system asks: context only when it changes.
    let mut central = client.clone();
    let central = common::subscribe_until_end(
        &mut central,
        retina_edge::pb::SubscribeRequest {
            include_empty_frames: true,
            ..Default::default()
        },
    );
    let (descriptors, central) = tokio::join!(common::collect_until_end(&mut client), central);
    let mut sizes = Vec::new();
    let mut objects_after_change = 0;
    for d in &descriptors {
        assert_eq!(
            d.sequence as usize,
            sizes.len(),
            "contiguous sequence across the change"
        );
        for o in &d.objects {
            let b = o.r#box.unwrap();
            assert!(0.0 <= b.x_min && b.x_max <= 1.0 && 0.0 <= b.y_min && b.y_max <= 1.0);
        }
        if d.frame_width == 320 {
            objects_after_change += d.objects.len();
        }
        sizes.push((d.frame_width, d.frame_height));
    }
    tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .unwrap()
        .unwrap();

    let first_small = sizes
        .iter()
        .position(|&s| s == (320, 136))
        .expect("frames at the new size");
    assert!(first_small >= 40, "the first part came first: {first_small}");
    assert!(sizes[..first_small].iter().all(|&s| s == (640, 272)));
    assert!(sizes[first_small..].iter().all(|&s| s == (320, 136)));
    // Every frame of both parts: a file read faster than real time loses none. (A stopping node
    // may add one descriptor that ends the open tracks; it repeats the last frame's time.)
    assert_eq!(
        common::analysed_frames(&descriptors),
        frames_in_file,
        "both parts analysed whole"
    );

    // The context went to the central subscriber twice: first, and when the size changed.
    assert_eq!(central.len(), descriptors.len());
    let with_context: Vec<(usize, u32, u32)> = central
        .iter()
        .enumerate()
        .filter(|(_, d)| d.detector.is_some())
        .map(|(i, d)| (i, d.frame_width, d.frame_height))
        .collect();
    assert_eq!(with_context, [(0, 640, 272), (first_small, 320, 136)]);
    assert!(
        central
            .iter()
            .all(|d| d.detector.is_some() || (d.frame_width, d.node_id.as_str()) == (0, ""))
    );
    assert!(objects_after_change > 0, "objects found at the new size too");
    let restarts = cameras.read().unwrap()[0].restarts.load(Ordering::Relaxed);
    assert_eq!(restarts, 0, "no pipeline rebuild");
}
