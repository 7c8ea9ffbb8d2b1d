//! More cameras than inference can keep up with: the node drops the oldest waiting frames
//! (counted), and every camera still gets analysed, fairly. Memory under overload is the soak's
//! (`make soak`, which runs an overloading camera beside its RTSP cameras): a growth bound over
//! seconds says little.

mod common;

use std::time::Duration;

use retina_edge::node::Node;
use retina_edge::pb::{self, retina_client::RetinaClient};

const CAMERAS: usize = 4;

/// Frames analysed and dropped per camera, in camera order.
async fn counts(client: &mut common::Client) -> (Vec<u64>, Vec<u64>) {
    let info = common::node_info(client).await;
    let analysed = info.cameras.iter().map(|c| c.frames_analysed).collect();
    let dropped = info.cameras.iter().map(|c| c.frames_dropped).collect();
    (analysed, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_drops_frames_and_serves_every_camera_fairly() {
    // Each camera asks for every frame of a 25 fps stream: 100 frames/s against an inference
    // capacity of roughly 30 frames/s on two cores.
    let cameras: String = (0..CAMERAS)
        .map(|i| {
            format!(
                "[[cameras]]\nid = \"cam{i}\"\nuri = \"{}\"\nloop_file = true\nanalysis_fps = 0\n",
                common::sample_clip().display()
            )
        })
        .collect();
    let node = Node::start(common::parse_config(&common::config_toml(&cameras, "")))
        .await
        .unwrap();
    let mut client = RetinaClient::connect(format!("http://{}", node.grpc_addr))
        .await
        .unwrap();

    // Every camera under way first, so that start-up order does not count as unfairness.
    common::wait_for(&mut client, Duration::from_secs(60), "every camera analysed", |info| {
        info.cameras.iter().all(|c| c.frames_analysed >= 10)
    })
    .await;
    let (analysed_before, dropped_before) = counts(&mut client).await;
    // A window of 400 analysed frames (about 13 s at full load), however slow the machine is.
    let target: u64 = analysed_before.iter().sum::<u64>() + 400;
    common::wait_for(
        &mut client,
        Duration::from_secs(180),
        "400 more frames analysed",
        |info| info.cameras.iter().map(|c| c.frames_analysed).sum::<u64>() >= target,
    )
    .await;
    let (analysed_after, dropped_after) = counts(&mut client).await;
    let info = common::node_info(&mut client).await;
    node.shutdown();
    tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .unwrap()
        .unwrap();

    let delta = |after: &[u64], before: &[u64]| -> Vec<u64> { after.iter().zip(before).map(|(a, b)| a - b).collect() };
    let analysed = delta(&analysed_after, &analysed_before);
    let dropped = delta(&dropped_after, &dropped_before);
    eprintln!("in the window: analysed {analysed:?}; dropped {dropped:?}");
    assert!(
        info.cameras
            .iter()
            .all(|c| c.state() == pb::CameraState::Streaming && c.restarts == 0),
        "{info:#?}"
    );
    assert!(
        dropped.iter().all(|&d| d > 0),
        "every camera had frames dropped, and counted: {dropped:?}"
    );
    let (min, max) = (*analysed.iter().min().unwrap(), *analysed.iter().max().unwrap());
    assert!(min > 0, "every camera analysed: {analysed:?}");
    assert!(
        max as f64 <= min as f64 * 1.25,
        "fair share between cameras: {analysed:?}"
    );
}
