//! A small central-side client: subscribes to a node and prints what arrives, for a person
//! (one block per frame) or a program (`--json`, one line per frame), then a summary.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::json;

use crate::describe::codec;
use crate::pb::{self, retina_client::RetinaClient};

#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub addr: String,
    pub request: pb::SubscribeRequest,
    pub json: bool,
    /// Print only the summary.
    pub quiet: bool,
    /// Keep retrying the first connection this long (the node may still be starting).
    pub connect_timeout: Duration,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// A video file whose size the summary compares the descriptor bytes with.
    pub compare_video: Option<PathBuf>,
}

/// What the client saw, for the summary (and for tests).
#[derive(Debug, Default)]
pub struct Summary {
    pub frames: u64,
    pub objects_per_class: BTreeMap<String, u64>,
    pub embeddings: u64,
    pub descriptor_bytes: u64,
    pub embedding_bytes: u64,
    /// Per camera: (first sequence, last sequence, gaps seen).
    pub sequences: BTreeMap<String, (u64, u64, u64)>,
    /// Capture-time span per camera, seconds.
    pub capture_span_seconds: BTreeMap<String, f64>,
}

pub async fn subscribe(options: SubscribeOptions) -> anyhow::Result<Summary> {
    let mut client = connect(&options.addr, options.connect_timeout).await?;
    let mut stream = client.subscribe(options.request.clone()).await?.into_inner();
    let mut summary = Summary::default();
    let mut first_capture: HashMap<String, i64> = HashMap::new();
    let started = Instant::now();
    let stdout = std::io::stdout();
    while let Some(descriptor) = stream.message().await? {
        let mut out = stdout.lock();
        if options.json {
            writeln!(out, "{}", to_json(&descriptor))?;
        } else if !options.quiet {
            write!(out, "{}", to_text(&descriptor))?;
        }
        summary.record(&descriptor, &mut first_capture);
        if options.max_frames.is_some_and(|max| summary.frames >= max) {
            break;
        }
    }
    if !options.json {
        print!(
            "{}",
            summary.render(started.elapsed(), options.compare_video.as_deref())
        );
    }
    Ok(summary)
}

async fn connect(addr: &str, timeout: Duration) -> anyhow::Result<RetinaClient<tonic::transport::Channel>> {
    let deadline = Instant::now() + timeout;
    loop {
        match RetinaClient::connect(addr.to_string()).await {
            Ok(client) => {
                return Ok(client.max_decoding_message_size(64 << 20));
            }
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(%err, "node not reachable yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(anyhow::anyhow!("cannot connect to {addr}: {err}")),
        }
    }
}

impl Summary {
    fn record(&mut self, d: &pb::FrameDescriptor, first_capture: &mut HashMap<String, i64>) {
        self.frames += 1;
        self.descriptor_bytes += d.encoded_len() as u64;
        for o in &d.objects {
            *self.objects_per_class.entry(o.class_name.clone()).or_default() += 1;
            if let Some(e) = &o.embedding {
                self.embeddings += 1;
                self.embedding_bytes += e.data.len() as u64;
            }
        }
        let entry = self
            .sequences
            .entry(d.camera_id.clone())
            .or_insert((d.sequence, d.sequence, 0));
        if d.sequence > entry.1 + 1 {
            entry.2 += d.sequence - entry.1 - 1;
        }
        entry.1 = entry.1.max(d.sequence);
        let t = d
            .capture_time
            .map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
        let first = *first_capture.entry(d.camera_id.clone()).or_insert(t);
        self.capture_span_seconds
            .insert(d.camera_id.clone(), (t - first) as f64 / 1e9);
    }

    pub fn render(&self, elapsed: Duration, compare_video: Option<&std::path::Path>) -> String {
        let mut s = String::new();
        s += "\n── summary ─────────────────────────────────────────────\n";
        s += &format!(
            "frames received      {} in {:.1} s\n",
            self.frames,
            elapsed.as_secs_f64()
        );
        for (camera, (first, last, gaps)) in &self.sequences {
            let span = self.capture_span_seconds.get(camera).copied().unwrap_or(0.0);
            s += &format!(
                "  camera {camera:<12} sequences {first}..={last}, {gaps} missing, {span:.1} s of capture time\n"
            );
        }
        let objects: u64 = self.objects_per_class.values().sum();
        s += &format!("objects              {objects}\n");
        let mut classes: Vec<_> = self.objects_per_class.iter().collect();
        classes.sort_by(|a, b| b.1.cmp(a.1));
        for (class, n) in classes {
            s += &format!("  {class:<18} {n}\n");
        }
        s += &format!(
            "embeddings           {} ({} bytes of vector data)\n",
            self.embeddings, self.embedding_bytes
        );
        s += &format!(
            "descriptor bytes     {} ({:.0} per frame, protobuf as sent)\n",
            self.descriptor_bytes,
            self.descriptor_bytes as f64 / self.frames.max(1) as f64
        );
        if let Some(video) = compare_video {
            match std::fs::metadata(video) {
                Ok(meta) => {
                    s += &format!(
                        "video bytes          {} ({})\ndescriptors / video  {:.1} %\n",
                        meta.len(),
                        video.display(),
                        100.0 * self.descriptor_bytes as f64 / meta.len().max(1) as f64
                    );
                }
                Err(err) => s += &format!("video bytes          unknown ({}: {err})\n", video.display()),
            }
        }
        s
    }
}

fn rfc3339(t: Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let time = std::time::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    humantime::format_rfc3339_millis(time).to_string()
}

fn time_source_name(source: i32) -> &'static str {
    match pb::TimeSource::try_from(source) {
        Ok(pb::TimeSource::FilePosition) => "file position",
        Ok(pb::TimeSource::HostArrival) => "host arrival",
        Ok(pb::TimeSource::CameraNtp) => "camera NTP",
        _ => "unknown clock",
    }
}

pub fn to_text(d: &pb::FrameDescriptor) -> String {
    let mut s = format!(
        "{} #{:<5} {} ({})  {}x{}  {} object{}\n",
        d.camera_id,
        d.sequence,
        rfc3339(d.capture_time),
        time_source_name(d.time_source),
        d.frame_width,
        d.frame_height,
        d.objects.len(),
        if d.objects.len() == 1 { "" } else { "s" }
    );
    for o in &d.objects {
        let b = o.r#box.unwrap_or_default();
        let embedding = match &o.embedding {
            Some(e) => format!("{} x{} ({} B)", codec::codec_name(e.codec), e.dimension, e.data.len()),
            None => "-".into(),
        };
        s += &format!(
            "    {:<12} {:.2}  box x {:.3}-{:.3} y {:.3}-{:.3}  embedding {embedding}\n",
            o.class_name, o.score, b.x_min, b.x_max, b.y_min, b.y_max
        );
    }
    s
}

pub fn to_json(d: &pb::FrameDescriptor) -> serde_json::Value {
    let objects: Vec<_> = d
        .objects
        .iter()
        .map(|o| {
            let b = o.r#box.unwrap_or_default();
            json!({
                "class_id": o.class_id,
                "class_name": o.class_name,
                "score": o.score,
                "box": [b.x_min, b.y_min, b.x_max, b.y_max],
                "embedding": o.embedding.as_ref().map(|e| json!({
                    "codec": codec::codec_name(e.codec),
                    "dimension": e.dimension,
                    "bytes": e.data.len(),
                    "vector": codec::decode(e).ok(),
                })),
            })
        })
        .collect();
    json!({
        "node_id": d.node_id,
        "node_run_id": d.node_run_id,
        "camera_id": d.camera_id,
        "sequence": d.sequence,
        "capture_time": rfc3339(d.capture_time),
        "time_source": time_source_name(d.time_source),
        "frame": [d.frame_width, d.frame_height],
        "detector": d.detector.as_ref().map(|m| format!("{}@{}", m.id, m.version)),
        "embedder": d.embedder.as_ref().map(|m| format!("{}@{}", m.id, m.version)),
        "objects": objects,
    })
}
