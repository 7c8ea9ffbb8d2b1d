//! The durable descriptor log through the node's real gRPC service: resuming after a disconnect,
//! `Query`, many subscribers at once, retention with gap notices, a full disk, and `kill -9`
//! of a node analysing a real RTSP camera. Real node, real models, real clients over loopback.

mod common;

use std::time::Duration;

use retina_edge::pb;

use common::Client;

fn clip_camera(id: &str, extra: &str) -> String {
    format!(
        "[[cameras]]\nid = \"{id}\"\nuri = \"{}\"\n{extra}\n",
        common::sample_clip().display()
    )
}

/// A request for every descriptor (empty frames too), each complete, from `start`.
fn everything(start: pb::StartPosition, after_offset: u64) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        include_empty_frames: true,
        full_context: true,
        start: start as i32,
        after_offset,
        ..Default::default()
    }
}

async fn next(stream: &mut tonic::Streaming<pb::FrameDescriptor>) -> Option<pb::FrameDescriptor> {
    tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("a descriptor within a minute")
        .expect("the stream goes on")
}

/// Reads until the stream ends (the node stopped).
async fn rest(mut stream: tonic::Streaming<pb::FrameDescriptor>) -> Vec<pb::FrameDescriptor> {
    let mut out = Vec::new();
    while let Some(d) = next(&mut stream).await {
        out.push(d);
    }
    out
}

fn offsets(descriptors: &[pb::FrameDescriptor]) -> Vec<u64> {
    descriptors.iter().map(|d| d.offset).collect()
}

/// Offsets are consecutive within one run of a node whose store keeps up.
fn assert_consecutive(offsets: &[u64], what: &str) {
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: offsets not consecutive: {:?}",
        offsets.windows(2).find(|w| w[1] != w[0] + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_resumes_after_its_last_offset_misses_nothing_and_query_pages_the_log() {
    // Every frame analysed, as fast as inference goes, one camera looping the clip.
    let toml = common::config_toml(&clip_camera("bikes", "analysis_fps = 0.0\nloop_file = true"), "");
    let config = common::parse_config(&toml);
    let log_path = config.log.path.clone();
    let (node, mut client) = common::start_node(config).await;

    // The reference: one subscription from the start, read throughout.
    let reference = client
        .subscribe(everything(pb::StartPosition::Earliest, 0))
        .await
        .unwrap()
        .into_inner();
    let reference = tokio::spawn(rest(reference));

    // A subscriber reads 30 descriptors, goes away while the node produces 300 more, and
    // resumes after the last offset it got.
    let mut first = client
        .subscribe(everything(pb::StartPosition::Live, 0))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 30 {
        seen.push(next(&mut first).await.unwrap());
    }
    drop(first);
    let last = seen.last().unwrap().offset;
    let mut live = client
        .subscribe(everything(pb::StartPosition::Live, 0))
        .await
        .unwrap()
        .into_inner();
    while next(&mut live).await.unwrap().offset < last + 300 {}
    drop(live);
    let mut resumed = client
        .subscribe(everything(pb::StartPosition::AfterOffset, last))
        .await
        .unwrap()
        .into_inner();
    while seen.last().unwrap().offset < last + 400 {
        seen.push(next(&mut resumed).await.unwrap());
    }
    drop(resumed);

    common::stop_node(node).await;
    let reference = reference.await.unwrap();

    // Every offset exactly once, in order, with the capture times first produced.
    let expected: Vec<(u64, Option<prost_types::Timestamp>)> = reference
        .iter()
        .filter(|d| d.offset >= seen[0].offset && d.offset <= seen.last().unwrap().offset)
        .map(|d| (d.offset, d.capture_time))
        .collect();
    let got: Vec<(u64, Option<prost_types::Timestamp>)> = seen.iter().map(|d| (d.offset, d.capture_time)).collect();
    assert_eq!(got, expected, "the resumed subscriber's stream is the reference stream");
    assert_consecutive(&offsets(&reference), "reference");
    assert!(reference.iter().all(|d| d.gap.is_none()));

    // A new node on the same log, without cameras: everything is still there, and Query pages it.
    let mut config = common::parse_config(&common::config_toml("", ""));
    config.log.path = log_path;
    let (node, mut client) = common::start_node(config).await;
    let kept = rest_until(&mut client, everything(pb::StartPosition::Earliest, 0), reference.len()).await;
    assert_eq!(
        offsets(&kept),
        offsets(&reference),
        "a clean restart keeps every record"
    );

    // One track's records, in pages of 7.
    let track_id = reference
        .iter()
        .flat_map(|d| &d.tracks)
        .map(|t| t.track_id)
        .next()
        .expect("a track");
    let (by_track, pages) = query_all(
        &mut client,
        pb::QueryRequest {
            track_id,
            page_size: 7,
            ..Default::default()
        },
    )
    .await;
    let mentions = |d: &pb::FrameDescriptor| {
        d.tracks.iter().any(|t| t.track_id == track_id) || d.track_events.iter().any(|e| e.track_id == track_id)
    };
    let streamed: Vec<u64> = reference.iter().filter(|d| mentions(d)).map(|d| d.offset).collect();
    assert_eq!(offsets(&by_track), streamed, "Query by track returns what was streamed");
    assert!(pages >= 2, "{} records in {pages} pages", by_track.len());
    assert!(
        by_track
            .iter()
            .all(|d| d.node_id == "test-node" && d.detector.is_some()),
        "complete descriptors"
    );

    // A capture-time window, newest first, cars only.
    let times: Vec<i64> = reference.iter().map(|d| nanos(d.capture_time)).collect();
    let (from, to) = (times[times.len() / 4], times[times.len() / 2]);
    let (window, _) = query_all(
        &mut client,
        pb::QueryRequest {
            camera_id: "bikes".into(),
            class_names: vec!["car".into()],
            from_time: Some(timestamp(from)),
            to_time: Some(timestamp(to)),
            newest_first: true,
            page_size: 5,
            ..Default::default()
        },
    )
    .await;
    let mut expected: Vec<&pb::FrameDescriptor> = reference
        .iter()
        .filter(|d| (from..to).contains(&nanos(d.capture_time)))
        .filter(|d| d.tracks.iter().any(|t| t.class_id == 2) || d.track_events.iter().any(|e| e.class_id == 2))
        .collect();
    expected.sort_by_key(|d| std::cmp::Reverse((nanos(d.capture_time), d.offset)));
    assert_eq!(
        offsets(&window),
        expected.iter().map(|d| d.offset).collect::<Vec<_>>(),
        "Query by time window and class"
    );
    assert!(!window.is_empty());
    assert!(
        window.iter().flat_map(|d| &d.tracks).all(|t| t.class_id == 2),
        "other classes left out"
    );

    // A token of another query, and a page too large, are refused.
    let other = client
        .query(pb::QueryRequest {
            track_id,
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let misuse = client
        .query(pb::QueryRequest {
            camera_id: "bikes".into(),
            page_token: other.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(misuse.code(), tonic::Code::InvalidArgument, "{misuse:?}");
    let too_big = client
        .query(pb::QueryRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), tonic::Code::InvalidArgument);
    common::stop_node(node).await;
}

fn nanos(t: Option<prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
}

fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

/// Reads `n` descriptors of a new subscription.
async fn rest_until(client: &mut Client, request: pb::SubscribeRequest, n: usize) -> Vec<pb::FrameDescriptor> {
    let mut stream = client.subscribe(request).await.expect("Subscribe").into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        out.push(next(&mut stream).await.expect("the node runs"));
    }
    out
}

/// Pages through a query until its end; returns the descriptors and the number of pages.
async fn query_all(client: &mut Client, request: pb::QueryRequest) -> (Vec<pb::FrameDescriptor>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let page = client
            .query(pb::QueryRequest {
                page_token: token.clone(),
                ..request.clone()
            })
            .await
            .expect("Query")
            .into_inner();
        pages += 1;
        all.extend(page.descriptors);
        if page.next_page_token.is_empty() {
            return (all, pages);
        }
        token = page.next_page_token;
    }
}
