//! The durable descriptor log through the node's real gRPC service: resuming after a disconnect,
//! `Query`, many subscribers at once, retention with gap notices, a full disk, and `kill -9`
//! of a node analysing a real RTSP camera. Real node, real models, real clients over loopback.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use retina_edge::node::Node;
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

    // The longest track's records, in pages of a third of them.
    let mut lengths: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    for t in reference.iter().flat_map(|d| &d.tracks) {
        *lengths.entry(t.track_id).or_default() += 1;
    }
    let (&track_id, &length) = lengths.iter().max_by_key(|(_, n)| **n).expect("a track");
    assert!(length >= 3, "the longest track has {length} records");
    let (by_track, pages) = query_all(
        &mut client,
        pb::QueryRequest {
            track_id,
            page_size: length / 3,
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
    let times: Vec<i64> = reference.iter().map(|d| common::nanos(d.capture_time)).collect();
    let (from, to) = (times[times.len() / 4], times[times.len() / 2]);
    let (window, _) = query_all(
        &mut client,
        pb::QueryRequest {
            camera_id: "bikes".into(),
            class_names: vec!["car".into()],
            from_time: Some(common::timestamp(from)),
            to_time: Some(common::timestamp(to)),
            newest_first: true,
            page_size: 5,
            ..Default::default()
        },
    )
    .await;
    let mut expected: Vec<&pb::FrameDescriptor> = reference
        .iter()
        .filter(|d| (from..to).contains(&common::nanos(d.capture_time)))
        .filter(|d| d.tracks.iter().any(|t| t.class_id == 2) || d.track_events.iter().any(|e| e.class_id == 2))
        .collect();
    expected.sort_by_key(|d| std::cmp::Reverse((common::nanos(d.capture_time), d.offset)));
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

/// One metric of an in-process node (0 if it has not been set).
fn metric(node: &retina_edge::node::Node, name: &str) -> f64 {
    let values = common::metric_values(&node.metrics.encode().expect("metrics encode"));
    values.get(name).copied().unwrap_or(0.0)
}

/// Waits, with a deadline, until `check` holds.
async fn until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Big descriptors (every detection with an f32 embedding), every frame: a log fills quickly.
fn heavy_config(log_extra: &str) -> String {
    let cameras = format!(
        "[describe]\ncodec = \"f32\"\nsend_detections = true\n\n[log]\n{log_extra}\n\n{}",
        clip_camera("bikes", "analysis_fps = 0.0\nloop_file = true")
    );
    common::config_toml(&cameras, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_evicts_the_oldest_and_a_reader_behind_it_gets_a_gap_notice_then_the_rest() {
    let mut config = common::parse_config(&heavy_config("max_bytes = 1048576"));
    config.log.path = Some(common::fresh_log_path());
    let (node, mut client) = common::start_node(config).await;
    until(Duration::from_secs(60), "eviction", || {
        metric(&node, "retina_log_evicted_total") > 0.0
    })
    .await;

    let mut stream = client
        .subscribe(everything(pb::StartPosition::AfterOffset, 0))
        .await
        .unwrap()
        .into_inner();
    let notice = next(&mut stream).await.unwrap();
    let gap = notice.gap.expect("a gap notice first");
    assert_eq!(gap.reason(), pb::LogGapReason::Evicted);
    assert_eq!(gap.first_offset, 1, "from the offset after the cursor");
    assert!(gap.last_offset >= 1);
    assert!(
        notice.camera_id.is_empty() && notice.tracks.is_empty(),
        "a notice carries nothing else"
    );
    let mut rest = Vec::new();
    while rest.len() < 20 {
        rest.push(next(&mut stream).await.unwrap());
    }
    assert_eq!(rest[0].offset, gap.last_offset + 1, "then the oldest record kept");
    assert_consecutive(&offsets(&rest), "after the notice");
    // EARLIEST starts at the oldest kept, without a notice.
    let mut earliest = client
        .subscribe(everything(pb::StartPosition::Earliest, 0))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut earliest).await.unwrap();
    assert!(first.gap.is_none() && first.offset > gap.last_offset, "{:?}", first.gap);
    let used = metric(&node, "retina_log_bytes");
    assert!(
        used < 4.0 * 1048576.0,
        "the log holds {used} bytes for a max_bytes of 1 MiB"
    );
    common::stop_node(node).await;
}

/// A small tmpfs, mounted for the test (the tests run as root, as `make test` does), unmounted
/// when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "retina-test"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs needs root (make test runs as root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills what is left of the filesystem at `dir` with one file; returns it.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_storing_not_streaming_and_storing_resumes_when_space_returns() {
    let disk = SmallDisk::mount("16m");
    let mut config = common::parse_config(&heavy_config("max_bytes = 1073741824"));
    config.log.path = Some(disk.path().join("log.sqlite"));
    let (node, mut client) = common::start_node(config).await;
    until(Duration::from_secs(60), "records stored", || {
        metric(&node, "retina_log_stored_total") >= 20.0
    })
    .await;
    // Something else fills the disk.
    let filler = fill(disk.path());
    until(Duration::from_secs(60), "a commit to fail", || {
        metric(&node, "retina_log_unstored_total") > 0.0 && metric(&node, "retina_log_healthy") == 0.0
    })
    .await;
    // Live subscribers still get every descriptor: the camera is still analysed.
    let during = rest_until(&mut client, everything(pb::StartPosition::Live, 0), 20).await;
    assert_consecutive(&offsets(&during), "live while the disk is full");

    std::fs::remove_file(filler).unwrap();
    let stored_before = metric(&node, "retina_log_stored_total");
    until(Duration::from_secs(30), "storing again", || {
        metric(&node, "retina_log_healthy") == 1.0 && metric(&node, "retina_log_stored_total") > stored_before + 10.0
    })
    .await;
    let upto = rest_until(&mut client, everything(pb::StartPosition::Live, 0), 1).await[0].offset;

    // Reading the log from the start: every offset is a record or inside a not-stored gap, and
    // the gaps add up to what the node counted as not stored.
    let mut stream = client
        .subscribe(everything(pb::StartPosition::Earliest, 0))
        .await
        .unwrap()
        .into_inner();
    let mut covered = Vec::new();
    let mut unstored = 0;
    while covered.last().is_none_or(|&o| o < upto) {
        let d = next(&mut stream).await.unwrap();
        match d.gap {
            Some(gap) => {
                assert_eq!(gap.reason(), pb::LogGapReason::NotStored);
                unstored += gap.last_offset - gap.first_offset + 1;
                covered.extend(gap.first_offset..=gap.last_offset);
            }
            None => covered.push(d.offset),
        }
    }
    assert_eq!(
        covered,
        (0..=*covered.last().unwrap()).collect::<Vec<_>>(),
        "nothing silently missing"
    );
    let counted = metric(&node, "retina_log_unstored_total");
    assert!(unstored > 0);
    assert_eq!(
        unstored as f64, counted,
        "the gaps are what the node counted as not stored"
    );
    common::stop_node(node).await;
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_the_last_commit_and_numbering_goes_on_past_it() {
    let camera = common::rtsp::TestCamera::start(&common::sample_clip());
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let toml = common::config_toml(&common::rtsp_camera("street", &camera.uri(), ""), "").replace("127.0.0.1:0", &addr);
    let config = dir.path().join("node.toml");
    std::fs::write(&config, toml).unwrap();

    let mut node = common::spawn_retina("run", &config);
    let mut client = common::connect(&addr).await;
    let mut live = client
        .subscribe(everything(pb::StartPosition::Live, 0))
        .await
        .unwrap()
        .into_inner();
    let mut before = Vec::new();
    // (offset, when it arrived)
    let mut before_kill = Vec::new();
    while before.len() < 40 {
        let d = next(&mut live).await.unwrap();
        before_kill.push((d.offset, tokio::time::Instant::now()));
        before.push(d);
    }
    // Killed while it analyses, with the subscriber reading live.
    let killed_at = tokio::time::Instant::now();
    node.kill().unwrap();
    node.wait().unwrap();
    while let Ok(Some(d)) = live.message().await {
        before_kill.push((d.offset, killed_at));
        before.push(d);
    }
    let last_seen = before.last().unwrap().offset;

    let node = common::spawn_retina("run", &config);
    let mut client = common::connect(&addr).await;
    let mut resumed = client
        .subscribe(everything(pb::StartPosition::AfterOffset, last_seen))
        .await
        .unwrap()
        .into_inner();
    let mut after = Vec::new();
    while after.len() < 11 {
        after.push(next(&mut resumed).await.unwrap());
    }
    let stored = rest_until_offset(&mut client, last_seen).await;
    drop(node);

    // What was committed before the kill is what the log holds; what the subscriber saw live and
    // the log does not hold is what the kill lost.
    let stored: BTreeSet<u64> = stored.iter().map(|d| d.offset).collect();
    let lost: Vec<u64> = before
        .iter()
        .map(|d| d.offset)
        .filter(|o| !stored.contains(o))
        .collect();
    eprintln!(
        "kill -9: {} records seen live, {} of them not committed: {lost:?}",
        before.len(),
        lost.len()
    );
    // Nothing committed is lost: what is missing is what came after the last record kept, and it
    // reached the subscriber shortly before the kill (one commit interval, 100 ms, on an idle
    // machine; the bound allows for a loaded one, where the writer waits for a core).
    let last_kept = stored.last().copied().unwrap_or(0);
    assert!(
        lost.iter().all(|&o| o > last_kept),
        "lost {lost:?} before the last kept {last_kept}"
    );
    assert!(
        before_kill
            .iter()
            .all(|(o, at)| !lost.contains(o) || killed_at.duration_since(*at) < Duration::from_secs(1)),
        "lost {lost:?} were received more than 1 s before the kill"
    );

    // The resumed stream: first a notice of the offsets skipped at the restart (the lost ones
    // among them), then offsets past every old one, sequences and track ids too.
    let notice = after.remove(0).gap.expect("a notice of the crash");
    assert_eq!(notice.reason(), pb::LogGapReason::LostInCrash);
    assert_eq!(notice.first_offset, last_seen + 1, "from the resumed cursor");
    assert!(
        lost.iter().all(|o| *o >= stored.last().map_or(0, |l| l + 1)),
        "lost: {lost:?}"
    );
    assert!(after.iter().all(|d| d.gap.is_none()));
    assert_eq!(
        after[0].offset,
        notice.last_offset + 1,
        "then the new run's first offset"
    );
    let old_sequence = before.iter().map(|d| d.sequence).max().unwrap();
    assert!(
        after[0].sequence > old_sequence,
        "sequences go on: {} after {old_sequence}",
        after[0].sequence
    );
    let old_tracks: BTreeSet<u64> = before.iter().flat_map(|d| &d.tracks).map(|t| t.track_id).collect();
    let new_tracks: BTreeSet<u64> = after.iter().flat_map(|d| &d.tracks).map(|t| t.track_id).collect();
    assert!(
        new_tracks.iter().all(|t| old_tracks.iter().all(|o| t > o)),
        "track ids are not reused: {new_tracks:?} after {old_tracks:?}"
    );
}

/// Every record the log holds up to `last`, from the oldest.
async fn rest_until_offset(client: &mut Client, last: u64) -> Vec<pb::FrameDescriptor> {
    let mut stream = client
        .subscribe(everything(pb::StartPosition::Earliest, 0))
        .await
        .unwrap()
        .into_inner();
    let mut out: Vec<pb::FrameDescriptor> = Vec::new();
    loop {
        let d = next(&mut stream).await.unwrap();
        if let Some(gap) = d.gap {
            // The offsets skipped after a crash hold nothing kept.
            if gap.first_offset > last {
                return out;
            }
            continue;
        }
        if d.offset > last {
            return out;
        }
        out.push(d);
    }
}

/// Waits until the node at `addr` reports `value` for metric `name`, at most 30 s.
async fn until_scraped(addr: std::net::SocketAddr, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = common::metric_values(&common::http_get(addr, "/metrics").await)
            .get(name)
            .copied();
        if now == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} = {value} within 30 s (is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_subscribers_fast_slow_and_from_the_start_stall_nothing_and_limits_hold() {
    let cameras = format!(
        "[deliver]\nsubscriber_buffer_frames = 8\nmax_subscribers = 101\nsubscriber_idle_seconds = 5.0\n\n{}",
        clip_camera("bikes", "analysis_fps = 10.0\nloop_file = true\nrealtime = true")
    );
    // The node in its own process, so that its memory is its own (other tests of this binary run
    // nodes at the same time).
    let dir = tempfile::tempdir().unwrap();
    let (grpc, metrics_port) = (common::free_port(), common::free_port());
    let toml = common::config_toml(&cameras, &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""))
        .replace("127.0.0.1:0", &format!("127.0.0.1:{grpc}"));
    let config = dir.path().join("node.toml");
    std::fs::write(&config, toml).unwrap();
    let node = common::spawn_retina("run", &config);
    let mut client = common::connect(&format!("127.0.0.1:{grpc}")).await;
    let addr = format!("http://127.0.0.1:{grpc}");
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let scrape = || async move { common::metric_values(&common::http_get(metrics_addr, "/metrics").await) };
    // The pipeline's pace alone, before anyone subscribes.
    let mut pace = client
        .subscribe(everything(pb::StartPosition::Live, 0))
        .await
        .unwrap()
        .into_inner();
    // The pipeline's rate alone, as the reference for its rate with 100 subscribers (the machine
    // may be busy with other tests: compare within the run).
    let alone_from = next(&mut pace).await.unwrap().offset;
    let alone_started = tokio::time::Instant::now();
    let mut first = next(&mut pace).await.unwrap();
    while first.offset < alone_from + 30 {
        first = next(&mut pace).await.unwrap();
    }
    let alone = (first.offset - alone_from) as f64 / alone_started.elapsed().as_secs_f64();
    // The node's own warm-up (recycled frame buffers, allocator arenas, caches) grows it by tens
    // of megabytes in its first seconds of streaming, more on a loaded machine: measured from
    // then, it was counted as the subscribers' (42 to 113 MB here). The baseline is taken once
    // the node's memory has held within 2 MB for 3 s, still reading the pipeline's pace.
    let mut settled_for = 0;
    let mut last_rss = rss_bytes(node.id());
    let settle_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while settled_for < 3 && tokio::time::Instant::now() < settle_deadline {
        let second = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Some(descriptor)) = tokio::time::timeout_at(second, next(&mut pace)).await {
            first = descriptor;
        }
        let rss = rss_bytes(node.id());
        settled_for = if rss.abs_diff(last_rss) < 2_000_000 {
            settled_for + 1
        } else {
            0
        };
        last_rss = rss;
    }
    let started = tokio::time::Instant::now();
    let start = first.offset;
    let rss_before = rss_bytes(node.id());

    // One client that never reads, with a 1 KiB HTTP/2 window so that it is full at once: cut
    // off after 5 s of not reading, never holding the node.
    let channel = tonic::transport::Endpoint::from_shared(addr.clone())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut stuck = pb::retina_client::RetinaClient::new(channel)
        .subscribe(everything(pb::StartPosition::Live, 0))
        .await
        .unwrap()
        .into_inner();

    // 99 more: 60 live, 19 slow (a descriptor every 150 ms: slower than the camera), 20 from the
    // start of the log. Each reads until offset `start + 150`.
    let target = start + 150;
    let mut readers = Vec::new();
    for i in 0..99 {
        let addr = addr.clone();
        let (start_at, delay) = match i {
            0..60 => (pb::StartPosition::Live, None),
            60..79 => (pb::StartPosition::Live, Some(Duration::from_millis(150))),
            _ => (pb::StartPosition::Earliest, None),
        };
        readers.push(tokio::spawn(async move {
            // A slow reader's HTTP/2 window is small, so that the node sees it fall behind at
            // once rather than after megabytes buffered in the connection.
            let window = delay.map(|_| 1024);
            let channel = tonic::transport::Endpoint::from_shared(addr)
                .unwrap()
                .initial_stream_window_size(window)
                .connect()
                .await
                .unwrap();
            let mut client = pb::retina_client::RetinaClient::new(channel);
            let mut stream = client.subscribe(everything(start_at, 0)).await.unwrap().into_inner();
            let mut got = Vec::new();
            loop {
                let d = next(&mut stream).await.expect("the node runs");
                let offset = d.offset;
                got.push(offset);
                if offset >= target {
                    return (got, tokio::time::Instant::now());
                }
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
            }
        }));
    }
    // The 102nd stream is one too many.
    until_scraped(metrics_addr, "retina_subscribers", 101.0).await;
    let refused = client
        .subscribe(everything(pb::StartPosition::Live, 0))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");

    // The pipeline goes on at its own pace.
    let mut paced = vec![first.offset];
    while *paced.last().unwrap() < target {
        paced.push(next(&mut pace).await.unwrap().offset);
    }
    let pipeline_done = tokio::time::Instant::now();
    let mut results = Vec::new();
    for reader in readers {
        results.push(reader.await.unwrap());
    }
    for (i, (got, _)) in results.iter().enumerate() {
        let from = if i >= 79 { 0 } else { got[0] };
        assert_consecutive(got, &format!("reader {i}"));
        assert_eq!((got[0] >= from, *got.last().unwrap()), (true, target), "reader {i}");
    }
    for (i, (got, _)) in results[79..].iter().enumerate() {
        assert_eq!(got[0], 0, "reader {} from the start", 79 + i);
    }
    // Fast readers kept up with the pipeline while slow ones lagged.
    let fast_done = results[..60].iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        fast_done.duration_since(pipeline_done) < Duration::from_secs(2),
        "the live readers finished {:?} after the pipeline",
        fast_done.duration_since(pipeline_done)
    );
    let produced = (target - start) as f64 / pipeline_done.duration_since(started).as_secs_f64();
    assert!(
        produced > 0.8 * alone,
        "the camera went on at {produced:.1} descriptors/s with 100 subscribers, {alone:.1} alone"
    );
    let fallbacks = scrape().await["retina_subscriber_fallbacks_total{subscriber=\"anonymous\"}"];
    assert!(fallbacks >= 19.0, "the slow readers fell back to the log: {fallbacks}");
    let grown = rss_bytes(node.id()).saturating_sub(rss_before) as f64 / 1e6;
    eprintln!(
        "100 subscribers: pipeline {produced:.1} descriptors/s ({alone:.1} alone), the node's RSS grew {grown:.1} MB"
    );
    assert!(
        grown < 100.0,
        "the node's memory grew {grown:.1} MB with 100 subscribers"
    );

    // The stuck client was cut off with a clear status after what it had buffered.
    drop(pace);
    until_scraped(metrics_addr, "retina_subscribers", 0.0).await;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(60), stuck.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("read nothing"), "{}", status.message());
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_stops_the_start_by_name_and_reset_log_numbers_the_new_one_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("node.toml");
    std::fs::write(&config_path, common::config_toml("", "")).unwrap();
    let log = dir.path().join("node.log.sqlite");
    // A log cut short: the first 3 pages of a real one.
    let (store, _) = retina_edge::log::Store::open(&log).unwrap();
    store.close().unwrap();
    std::fs::write(&log, vec![0x5a; 4096]).unwrap();

    let config = retina_edge::config::Config::load(&config_path).unwrap();
    let err = Node::start(config).await.err().expect("refused").to_string();
    assert!(
        err.contains(&log.display().to_string()) && err.contains("damaged") && err.contains("reset-log"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        vec![0x5a; 4096],
        "the file is left as it was"
    );

    let reset = std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"))
        .args(["reset-log", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&reset.stdout);
    assert!(
        reset.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&reset.stderr)
    );
    let config = retina_edge::config::Config::load(&config_path).unwrap();
    let (node, mut client) = common::start_node(config).await;
    let mut stream = client
        .subscribe(everything(pb::StartPosition::AfterOffset, 0))
        .await
        .unwrap()
        .into_inner();
    let notice = next(&mut stream).await.unwrap().gap.expect("old offsets are gone");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        notice.last_offset + 1 >= (now - 60) << 24,
        "the new log starts above the old: {notice:?}"
    );
    assert!(
        said.contains(&format!("at offset {}", notice.last_offset + 1)),
        "{said}"
    );
    drop(stream);
    common::stop_node(node).await;
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("node.log.sqlite.damaged-"))
        .collect();
    assert!(!kept.is_empty(), "the damaged file is kept beside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_after_opening_the_log_closes_it_so_the_next_start_can_open_it() {
    // A codec size the embedder's projection does not offer is found once the models are loaded,
    // after the log has been opened and its writer started.
    let text = format!(
        "{}\n[describe]\ncodec = \"pca-int8\"\ncodec_dimension = 100000\n",
        common::config_toml(&clip_camera("c1", ""), "")
    );
    let config = common::parse_config(&text);
    let log = config.log_path();
    let err = Node::start(config).await.err().expect("refused").to_string();
    assert!(err.contains("codec_dimension"), "{err}");
    // Joined before the error returned, not merely told to end.
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    assert!(!threads.iter().any(|t| t == "log-writer"), "{threads:?}");
    // The writer was joined and marked the log closed: not locked, not taken for a crash.
    let (store, last_run) = retina_edge::log::Store::open(&log).expect("the log is free");
    assert_eq!(last_run, retina_edge::log::LastRun::Closed);
    store.close().unwrap();
}
