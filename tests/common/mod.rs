//! Shared set-up for integration tests: paths of the real models, the real clip and the ONNX
//! Runtime library that `make test` (scripts/setup-deps.sh) installs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn ort_library() -> PathBuf {
    let path = repo().join(".deps/onnxruntime/libonnxruntime.so.1.32.0");
    assert!(
        path.is_file(),
        "{} is missing: run `make deps` (or `make test`)",
        path.display()
    );
    path
}

pub fn sample_clip() -> PathBuf {
    let path = repo().join(".deps/media/bikes.mp4");
    assert!(
        path.is_file(),
        "{} is missing: run `make deps` (or `make test`)",
        path.display()
    );
    path
}

pub fn fixture(path: &str) -> PathBuf {
    repo().join("tests/fixtures").join(path)
}

/// A node config (TOML) for the real models and the given cameras section; gRPC on a free port.
pub fn config_toml(cameras: &str, extra_node: &str) -> String {
    let repo = repo().display();
    let ort = ort_library();
    format!(
        r#"
[node]
id = "test-node"
grpc_listen = "127.0.0.1:0"
{extra_node}

[inference]
onnxruntime_library = "{ort}"
detector_manifest = "{repo}/models/nanodet-g-416.toml"
embedder_manifest = "{repo}/models/mobilenetv2-1280.toml"
workers = 2
intra_op_threads = 1

{cameras}
"#,
        ort = ort.display()
    )
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

/// A `[[cameras]]` entry for an RTSP test camera, with short stall and backoff times so that
/// tests see failures and recoveries within seconds.
pub fn rtsp_camera(id: &str, uri: &str, extra: &str) -> String {
    format!(
        "[[cameras]]\nid = \"{id}\"\nuri = \"{uri}\"\nanalysis_fps = 5.0\nstall_timeout_seconds = 2.0\n\
         reconnect_initial_seconds = 0.5\nreconnect_max_seconds = 2.0\n{extra}\n"
    )
}

/// A node with these cameras and the test defaults for everything else.
pub async fn start_camera_node(cameras: &str) -> (retina_edge::node::Node, Client) {
    start_node(parse_config(&config_toml(cameras, ""))).await
}

/// Parses a test config. Unless it names its own, each config gets a descriptor log and a camera
/// state file of its own: tests run at once, and a log file has one writer.
pub fn parse_config(text: &str) -> retina_edge::config::Config {
    let mut config = retina_edge::config::Config::parse(text, Path::new("test.toml"), repo().to_path_buf())
        .expect("test config parses");
    if config.log.path.is_none() {
        config.log.path = Some(fresh_log_path());
    }
    // Nor may a test's camera changes land beside `test.toml` in the repository, where every
    // later test's node would pick them up.
    if config.node.camera_state_file.is_none() {
        config.node.camera_state_file = Some(fresh_log_path().with_extension("cameras.toml"));
    }
    config
}

/// A log file no other test uses, under `target/test-logs` (`make clean` removes them).
pub fn fresh_log_path() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = repo().join("target/test-logs");
    std::fs::create_dir_all(&dir).expect("target/test-logs");
    let path = dir.join(format!("{}-{n}.sqlite", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// The real NanoDet outputs on dog.jpg (tests/fixtures/nanodet_dog), in the order `decoder`
/// takes them (per level: 80 class scores, then 4 x 11 box bins per cell); files are named after
/// the outputs with ':' -> '_' ("Identity:0" -> "Identity_0.bin").
pub fn nanodet_dog_outputs(
    decoder: &retina_edge::infer::decode::Decoder,
) -> Vec<retina_edge::infer::decode::Tensor<'static>> {
    let load = |name: &str| -> Vec<f32> {
        let file = fixture(&format!("nanodet_dog/{}.bin", name.replace(':', "_")));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    decoder
        .outputs()
        .iter()
        .zip([80usize, 44].iter().cycle())
        .map(|(name, &columns)| {
            let data = load(name);
            retina_edge::infer::decode::Tensor {
                dims: vec![1, (data.len() / columns) as i64, columns as i64],
                data: std::borrow::Cow::Owned(data),
            }
        })
        .collect()
}
pub mod browser;
pub mod nats;
pub mod python;
pub mod rtsp;
pub mod sources;

// Node helpers shared by the integration tests and the benchmarks.

use std::time::{Duration, Instant};

use retina_edge::node::Node;
use retina_edge::pb::{self, admin_client::AdminClient, retina_client::RetinaClient};

pub type Client = RetinaClient<tonic::transport::Channel>;
pub type Admin = AdminClient<tonic::transport::Channel>;

/// A camera administration client of a running node.
pub async fn admin(node: &Node) -> Admin {
    AdminClient::connect(format!("http://{}", node.grpc_addr))
        .await
        .expect("admin client connects")
}

/// Starts a node and connects a real gRPC client to it over loopback.
pub async fn start_node(config: retina_edge::config::Config) -> (Node, Client) {
    let node = Node::start(config).await.expect("node starts");
    let client = RetinaClient::connect(format!("http://{}", node.grpc_addr))
        .await
        .expect("client connects");
    (node, client)
}

/// Stops a node and checks that it stops cleanly, in time.
pub async fn stop_node(node: Node) {
    node.shutdown();
    tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .expect("node stops")
        .expect("clean stop");
}

pub async fn node_info(client: &mut Client) -> pb::NodeInfo {
    client
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .expect("GetNodeInfo")
        .into_inner()
}

pub async fn camera_info(client: &mut Client, id: &str) -> pb::CameraInfo {
    let info = node_info(client).await;
    info.cameras
        .into_iter()
        .find(|c| c.camera_id == id)
        .unwrap_or_else(|| panic!("camera {id} listed"))
}

/// Waits until `check` holds for the node's info, or fails after `within` saying `what`.
pub async fn wait_for(client: &mut Client, within: Duration, what: &str, check: impl Fn(&pb::NodeInfo) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let info = node_info(client).await;
        if check(&info) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}; node info: {info:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `wait_for` on one camera.
pub async fn wait_for_camera(
    client: &mut Client,
    id: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&pb::CameraInfo) -> bool,
) {
    let what = format!("{id}: {what}");
    wait_for(client, within, &what, |info| {
        info.cameras.iter().any(|c| c.camera_id == id && check(c))
    })
    .await;
}

/// Every descriptor the node produces until it stops (frames analysed before the call are
/// read from the node's log, so none is missed), each with its full context.
pub async fn collect_until_end(client: &mut Client) -> Vec<pb::FrameDescriptor> {
    let request = pb::SubscribeRequest {
        include_empty_frames: true,
        full_context: true,
        ..Default::default()
    };
    subscribe_until_end(client, request).await
}

/// What `request` streams from the earliest descriptor in the log until the node stops.
pub async fn subscribe_until_end(client: &mut Client, request: pb::SubscribeRequest) -> Vec<pb::FrameDescriptor> {
    let request = pb::SubscribeRequest {
        start: pb::StartPosition::Earliest as i32,
        ..request
    };
    let mut stream = client.subscribe(request).await.expect("Subscribe").into_inner();
    let mut descriptors = Vec::new();
    // The stream ends with OK when the node stops.
    while let Some(d) = tokio::time::timeout(Duration::from_secs(120), stream.message())
        .await
        .expect("a descriptor within 2 minutes")
        .expect("stream ends cleanly")
    {
        descriptors.push(d);
    }
    descriptors
}

/// Analysed frames among `stream`'s descriptors: the descriptor a stopping node sends to end the
/// tracks still open repeats the last frame's capture time and has no frame of its own.
pub fn analysed_frames(stream: &[pb::FrameDescriptor]) -> usize {
    let mut times: Vec<_> = stream.iter().map(|d| d.capture_time).collect();
    times.dedup();
    times.len()
}

/// Threads and open file descriptors of this process: what a leak per pipeline run shows in.
pub fn threads_and_fds() -> (usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
    (count("/proc/self/task"), count("/proc/self/fd"))
}

/// Resident memory of a process, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A child process that is killed if the test fails before it ended, so that a failed test
/// leaves no node or client running, holding ports and cores, under the tests after it.
/// `retina-edge <subcommand> --config <config>` as a process (for `kill -9`), its output
/// discarded.
pub fn spawn_retina(subcommand: &str, config: &Path) -> KillOnDrop {
    KillOnDrop::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_retina-edge"))
            .args([subcommand, "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("retina-edge starts"),
    )
}

pub struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    pub fn new(child: std::process::Child) -> Self {
        KillOnDrop(Some(child))
    }

    /// Waits for the process to end by itself, collecting its piped output.
    pub fn wait_with_output(mut self) -> std::io::Result<std::process::Output> {
        let child = self.0.take().expect("the child is there until waited for");
        child.wait_with_output()
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("the child is there until waited for")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("the child is there until waited for")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The body of a plain HTTP GET (metrics), which must answer 200.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response:.200}"
    );
    response
}

/// Prometheus text as `name{labels}` -> value.
pub fn metric_values(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A client of the node at `addr` (host:port), once it answers: a node started as a process may
/// still be loading its models.
pub async fn connect(addr: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = RetinaClient::connect(format!("http://{addr}")).await {
            return client;
        }
        assert!(Instant::now() < deadline, "the node at {addr} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Unix nanoseconds of a protobuf timestamp (0 if unset).
pub fn nanos(t: Option<prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
}

/// A protobuf timestamp of Unix nanoseconds.
pub fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}
