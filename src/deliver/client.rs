//! A small central-side client: subscribes to a node, decodes what arrives (every codec back to
//! vectors, quantised boxes back to coordinates, elided context carried forward) and prints it:
//! for a person one line per track event (or one block per frame with `--frames`), for a program
//! one JSON object per descriptor (`--json`); then a summary.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::json;

use crate::describe::codec;
use crate::pb::{self, retina_client::RetinaClient};
use crate::wire::{appearances, context_of, copy_context, decode_box_q16, decode_point_q16, event_kind_label};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// One line per track event.
    Events,
    /// One block per descriptor: tracks, events and any detections.
    Frames,
    /// One JSON object per descriptor.
    Json,
    /// Only the summary.
    Quiet,
}

#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub addr: String,
    pub request: pb::SubscribeRequest,
    pub output: Output,
    /// Keep retrying the first connection this long (the node may still be starting).
    pub connect_timeout: Duration,
    /// Stop after this many descriptors.
    pub max_frames: Option<u64>,
    /// A video file whose size the summary compares the descriptor bytes with.
    pub compare_video: Option<PathBuf>,
    /// TLS and the token, for a node that asks for them.
    pub credentials: Credentials,
}

/// What a client shows a node behind TLS and tokens.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// CA certificate(s) the node's certificate must chain to (PEM); set for `https://` nodes.
    pub ca_cert: Option<PathBuf>,
    /// This client's certificate and key (PEM), for a node that wants client certificates.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Sent as `authorization: Bearer <token>` with every call.
    pub token: Option<String>,
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> anyhow::Result<BearerToken> {
        let value = token
            .map(|t| format!("Bearer {}", t.trim()).parse())
            .transpose()
            .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot carry"))?;
        Ok(BearerToken(value))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type AuthorisedChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>;

/// What the client saw, for the summary (and for tests).
#[derive(Debug, Default)]
pub struct Summary {
    pub descriptors: u64,
    pub descriptor_bytes: u64,
    /// Track events by kind name ("confirmed", "better view", ...).
    pub events: BTreeMap<&'static str, u64>,
    /// Confirmed tracks by class name.
    pub tracks_per_class: BTreeMap<String, u64>,
    /// Track records (one per visible track per frame).
    pub track_records: u64,
    /// Detections (only sent by nodes configured to send them).
    pub objects: u64,
    /// Appearance vectors received and decoded, and their encoded bytes.
    pub appearances: u64,
    pub appearance_bytes: u64,
    /// Vectors that could not be decoded (an unknown codec or a malformed message).
    pub undecodable: u64,
    /// Per camera: (first sequence, last sequence, gaps seen).
    pub sequences: BTreeMap<String, (u64, u64, u64)>,
    /// Capture-time span per camera, seconds.
    pub capture_span_seconds: BTreeMap<String, f64>,
    /// The last offset received: resume after it (`--after-offset`).
    pub last_offset: Option<u64>,
    /// Gap notices: offsets the node's log could not deliver.
    pub gaps: Vec<pb::LogGap>,
}

/// Carries each camera's context fields forward and names classes.
#[derive(Default)]
pub struct Decoder {
    /// Class names of the detector running when the reader started.
    class_names: Vec<String>,
    /// Class names of the detectors switched to since, from model-change records: a class id
    /// means what the descriptor's own detector says. A few entries: one per switch seen.
    switched_to: Vec<(pb::ModelRef, Vec<String>)>,
    context: HashMap<String, pb::FrameDescriptor>,
}

impl Decoder {
    pub fn new(class_names: Vec<String>) -> Self {
        Decoder {
            class_names,
            switched_to: Vec::new(),
            context: HashMap::new(),
        }
    }

    /// A decoder naming the classes of the node's detector.
    pub fn for_node(info: &pb::NodeInfo) -> Self {
        let class_names = info
            .models
            .iter()
            .find(|m| m.role == "detector")
            .map(|m| m.class_names.clone())
            .unwrap_or_default();
        Decoder::new(class_names)
    }

    /// Fills in the context fields the node left out because they had not changed, and learns
    /// the class names of a detector switched to.
    pub fn restore_context(&mut self, d: &mut pb::FrameDescriptor) {
        if d.detector.is_some() {
            let context = context_of(d);
            self.context.insert(d.camera_id.clone(), context);
        } else if let Some(c) = self.context.get(&d.camera_id) {
            copy_context(c, d);
        }
        if let (Some(change), Some(detector)) = (&d.model_change, &d.detector) {
            self.switched_to.retain(|(known, _)| known != detector);
            self.switched_to.push((detector.clone(), change.class_names.clone()));
        }
    }

    /// The name of `class_id` in `d` (whose context is restored).
    pub fn class_name(&self, d: &pb::FrameDescriptor, class_id: u32) -> String {
        let names = d
            .detector
            .as_ref()
            .and_then(|detector| self.switched_to.iter().find(|(known, _)| known == detector))
            .map_or(&self.class_names, |(_, names)| names);
        names
            .get(class_id as usize)
            .cloned()
            .unwrap_or_else(|| format!("class {class_id}"))
    }
}

fn model_name(model: &pb::ModelRef) -> String {
    format!("{}@{}", model.id, model.version)
}

pub async fn subscribe(options: SubscribeOptions) -> anyhow::Result<Summary> {
    let mut client = connect(&options.addr, &options.credentials, options.connect_timeout).await?;
    let info = client.get_node_info(pb::GetNodeInfoRequest {}).await?.into_inner();
    let mut decoder = Decoder::for_node(&info);
    let mut stream = client.subscribe(options.request.clone()).await?.into_inner();
    let mut printer = Printer::new(options.output, options.max_frames, false);
    while let Some(descriptor) = stream.message().await? {
        if !printer.print(descriptor, &mut decoder)? {
            break;
        }
    }
    Ok(printer.finish(options.compare_video.as_deref()))
}

/// Prints and counts what a reader receives, from a node or from the centre's JetStream.
pub struct Printer {
    output: Output,
    max_frames: Option<u64>,
    /// Cameras are named `node/camera` in the summary: records of many nodes arrive.
    name_nodes: bool,
    summary: Summary,
    first_capture: HashMap<String, i64>,
    started: Instant,
}

impl Printer {
    pub fn new(output: Output, max_frames: Option<u64>, name_nodes: bool) -> Printer {
        Printer {
            output,
            max_frames,
            name_nodes,
            summary: Summary::default(),
            first_capture: HashMap::new(),
            started: Instant::now(),
        }
    }

    /// Prints one message (a descriptor or a gap notice); false once `max_frames` are reached.
    pub fn print(&mut self, mut descriptor: pb::FrameDescriptor, decoder: &mut Decoder) -> anyhow::Result<bool> {
        let stdout = std::io::stdout();
        if let Some(gap) = descriptor.gap {
            let line = gap_line(&gap);
            match self.output {
                Output::Json => writeln!(stdout.lock(), "{}", gap_json(&descriptor.node_id, &gap, &line))?,
                Output::Quiet => {}
                Output::Events | Output::Frames => writeln!(stdout.lock(), "{line}")?,
            }
            self.summary.gaps.push(gap);
            return Ok(true);
        }
        // Records from JetStream carry their whole context, node id included.
        let camera = if self.name_nodes {
            format!("{}/{}", descriptor.node_id, descriptor.camera_id)
        } else {
            descriptor.camera_id.clone()
        };
        // Counted as sent, before the context is filled in.
        let sent_bytes = descriptor.encoded_len();
        decoder.restore_context(&mut descriptor);
        self.summary
            .record(&descriptor, sent_bytes, camera, decoder, &mut self.first_capture);
        let mut out = stdout.lock();
        match self.output {
            Output::Events => {
                for event in &descriptor.track_events {
                    writeln!(out, "{}", event_line(&descriptor, event, decoder))?;
                }
                if let Some(change) = &descriptor.model_change {
                    writeln!(out, "{}", model_change_line(&descriptor, change))?;
                }
                if let Some(export) = &descriptor.pixel_export {
                    writeln!(out, "{}", export_line(&descriptor, export))?;
                }
                for event in &descriptor.zone_events {
                    writeln!(out, "{}", zone_event_line(&descriptor, event, decoder))?;
                }
                if let Some(counts) = &descriptor.counts {
                    writeln!(out, "{}", counts_line(&descriptor, counts))?;
                }
            }
            Output::Frames => write!(out, "{}", to_text(&descriptor, decoder))?,
            Output::Json => writeln!(out, "{}", to_json(&descriptor, decoder))?,
            Output::Quiet => {}
        }
        Ok(self.max_frames.is_none_or(|max| self.summary.descriptors < max))
    }

    /// Descriptors printed so far (gap notices not counted).
    pub fn descriptors(&self) -> u64 {
        self.summary.descriptors
    }

    /// Prints the summary (but not after JSON, which is for programs) and returns it.
    pub fn finish(self, compare_video: Option<&std::path::Path>) -> Summary {
        if self.output != Output::Json {
            print!("{}", self.summary.render(self.started.elapsed(), compare_video));
        }
        self.summary
    }
}

/// A channel to the node at `addr` (`http://` or `https://`), with TLS if `credentials` name a
/// CA or the address is `https://`.
pub async fn channel(addr: &str, credentials: &Credentials) -> anyhow::Result<tonic::transport::Channel> {
    use anyhow::Context;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut endpoint = Endpoint::from_shared(addr.to_string()).with_context(|| format!("bad address {addr:?}"))?;
    if credentials.ca_cert.is_some() || credentials.client_cert.is_some() || addr.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &credentials.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading CA certificate {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &credentials.client_cert {
            let cert = std::fs::read(cert).with_context(|| format!("reading certificate {}", cert.display()))?;
            let key = crate::files::read_owner_only(key, "client key")?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    // A peer behind a cut uplink answers nothing: found out by pings, not by TCP's own timeouts.
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect().await?)
}

/// Sends a model package (its manifest, the files it names and `<manifest>.sig` if there is one)
/// to a node's store, in chunks; returns what the node stored. With `activate`, the node then
/// switches to it, between two frames.
pub async fn upload_model(
    addr: &str,
    credentials: &Credentials,
    manifest: &std::path::Path,
    activate: bool,
) -> anyhow::Result<(pb::StoredModelInfo, Option<pb::ActivateModelsResponse>)> {
    use anyhow::Context;
    use pb::upload_model_request::Part;
    use sha2::Digest;
    let package = crate::infer::registry::Package::read(manifest)?;
    let signature_at = crate::infer::registry::signature_path(manifest);
    let signature = match std::fs::read(&signature_at) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", signature_at.display())),
    };
    let files = package.into_stored_files();
    let header = pb::ModelUploadHeader {
        manifest: files[0].0.clone(),
        files: files
            .iter()
            .map(|(name, bytes)| pb::ModelUploadFile {
                name: name.clone(),
                size: bytes.len() as u64,
                sha256: data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(bytes)),
            })
            .collect(),
        signature,
    };
    // Chunks are cut as the stream is sent, so a package is in memory once.
    let chunks = files.into_iter().flat_map(|(name, bytes)| {
        let len = bytes.len();
        (0..len)
            .step_by(crate::deliver::models::MAX_CHUNK_BYTES)
            .map(move |start| {
                let end = (start + crate::deliver::models::MAX_CHUNK_BYTES).min(len);
                Part::Chunk(pb::ModelFileChunk {
                    name: name.clone(),
                    data: bytes[start..end].to_vec(),
                })
            })
    });
    let messages = std::iter::once(Part::Header(header))
        .chain(chunks)
        .map(|part| pb::UploadModelRequest { part: Some(part) });
    let mut admin = pb::admin_client::AdminClient::with_interceptor(
        channel(addr, credentials).await?,
        BearerToken::new(credentials.token.as_deref())?,
    );
    let stored = admin
        .upload_model(tokio_stream::iter(messages))
        .await
        .map_err(|status| anyhow::anyhow!("the node refused the model: {}", status.message()))?
        .into_inner();
    if !activate {
        return Ok((stored, None));
    }
    let request = match stored.role.as_str() {
        "embedder" => pb::ActivateModelsRequest {
            embedder: stored.hash.clone(),
            ..Default::default()
        },
        _ => pb::ActivateModelsRequest {
            detector: stored.hash.clone(),
            ..Default::default()
        },
    };
    let activated = admin
        .activate_models(request)
        .await
        .map_err(|status| anyhow::anyhow!("the node stored the model but refused to run it: {}", status.message()))?
        .into_inner();
    Ok((stored, Some(activated)))
}

async fn connect(
    addr: &str,
    credentials: &Credentials,
    timeout: Duration,
) -> anyhow::Result<RetinaClient<AuthorisedChannel>> {
    let deadline = Instant::now() + timeout;
    let bearer = BearerToken::new(credentials.token.as_deref())?;
    loop {
        match channel(addr, credentials).await {
            Ok(channel) => {
                return Ok(RetinaClient::with_interceptor(channel, bearer).max_decoding_message_size(64 << 20));
            }
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(%err, "node not reachable yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(anyhow::anyhow!("cannot connect to {addr}: {err}")),
        }
    }
}

/// Where a camera's descriptors start coming from another model set.
fn model_change_line(d: &pb::FrameDescriptor, change: &pb::ModelChange) -> String {
    let name = |m: &Option<pb::ModelRef>| m.as_ref().map_or("none".into(), model_name);
    format!(
        "{} {} models changed: detector {} (was {}), embedder {} (was {}); generation {}, {}",
        d.camera_id,
        rfc3339(d.capture_time),
        name(&d.detector),
        name(&change.previous_detector),
        name(&d.embedder),
        name(&change.previous_embedder),
        change.generation,
        change.reason
    )
}

fn zone_event_kind_name(kind: i32) -> &'static str {
    crate::wire::zone_event_kind_label(pb::ZoneEventKind::try_from(kind).unwrap_or_default())
}

/// A track at a zone or line: "... track 12 car crossed lane-2 southbound at <time>".
fn zone_event_line(d: &pb::FrameDescriptor, e: &pb::ZoneEvent, decoder: &Decoder) -> String {
    let mut s = format!(
        "{} {} track {:<5} {:<10} {} {}",
        d.camera_id,
        rfc3339(e.time),
        short_track_id(e.track_id),
        decoder.class_name(d, e.class_id),
        zone_event_kind_name(e.kind),
        e.zone_id,
    );
    if !e.direction.is_empty() {
        s += &format!(" {}", e.direction);
    }
    if e.kind == pb::ZoneEventKind::Left as i32 {
        s += &format!(" after {:.1} s", e.dwell_seconds);
    }
    s
}

/// A count record: its interval, then each count and each zone's occupancy.
fn counts_line(d: &pb::FrameDescriptor, r: &pb::CountReport) -> String {
    let counts: Vec<String> = r
        .counts
        .iter()
        .map(|c| {
            let direction = if c.direction.is_empty() {
                String::new()
            } else {
                format!(" {}", c.direction)
            };
            format!(
                "{} {}{direction} {} {}",
                c.zone_id,
                zone_event_kind_name(c.kind),
                c.class_name,
                c.count
            )
        })
        .collect();
    let occupancy: Vec<String> = r
        .occupancy
        .iter()
        .map(|o| format!("{} {} {} now, {} at most", o.zone_id, o.class_name, o.now, o.max))
        .collect();
    let counts = if counts.is_empty() {
        "nothing counted".to_string()
    } else {
        counts.join(", ")
    };
    let mut s = format!(
        "{} counts {} to {}: {counts}",
        d.camera_id,
        rfc3339(r.from_time),
        rfc3339(r.to_time)
    );
    if !occupancy.is_empty() {
        s += &format!("; inside: {}", occupancy.join(", "));
    }
    s
}

/// Pixels of a camera were asked for: by whom, what, and what they got.
fn export_line(d: &pb::FrameDescriptor, e: &pb::PixelExport) -> String {
    let who = if e.caller.is_empty() {
        "a caller without token"
    } else {
        &e.caller
    };
    let what = match e.track_id {
        0 => format!("{} to {}", rfc3339(e.from_time), rfc3339(e.to_time)),
        track => format!("track {track}"),
    };
    let mut outcome = if !e.refused.is_empty() {
        format!("refused: {}", e.refused)
    } else if e.raw {
        format!("{} frames, not blurred", e.frames)
    } else {
        format!("{} frames, {} faces pixelated", e.frames, e.faces_blurred)
    };
    if e.refusals > 0 {
        outcome.push_str(&format!(" ({} refused)", e.refusals));
    }
    format!(
        "{} {} {} asked by {who}: {what}; {outcome}",
        d.camera_id,
        rfc3339(d.capture_time),
        e.kind
    )
}

fn gap_line(gap: &pb::LogGap) -> String {
    let why = match pb::LogGapReason::try_from(gap.reason) {
        Ok(pb::LogGapReason::Evicted) => "evicted by retention",
        Ok(pb::LogGapReason::NotStored) => "never stored",
        Ok(pb::LogGapReason::LostInCrash) => "skipped at a restart after a crash; the first may have been sent live",
        _ => "unknown reason",
    };
    format!(
        "gap: offsets {}..={} will not arrive ({why})",
        gap.first_offset, gap.last_offset
    )
}

/// A gap notice as one JSON object; `node_id` is empty in a node's own stream.
fn gap_json(node_id: &str, gap: &pb::LogGap, text: &str) -> serde_json::Value {
    let reason = match pb::LogGapReason::try_from(gap.reason) {
        Ok(pb::LogGapReason::Evicted) => "evicted",
        Ok(pb::LogGapReason::NotStored) => "not_stored",
        Ok(pb::LogGapReason::LostInCrash) => "lost_in_crash",
        _ => "unknown",
    };
    json!({
        "gap": {
            "node_id": node_id,
            "first_offset": gap.first_offset,
            "last_offset": gap.last_offset,
            "reason": reason,
            "text": text,
        }
    })
}

/// An unknown kind prints as "unspecified".
fn event_kind_name(kind: i32) -> &'static str {
    event_kind_label(pb::TrackEventKind::try_from(kind).unwrap_or_default())
}

fn end_reason_name(reason: i32) -> &'static str {
    match pb::TrackEndReason::try_from(reason) {
        Ok(pb::TrackEndReason::Lost) => "lost",
        Ok(pb::TrackEndReason::ClockStep) => "clock step",
        Ok(pb::TrackEndReason::Stopped) => "stopped",
        Ok(pb::TrackEndReason::ModelChanged) => "model changed",
        _ => "unknown",
    }
}

impl Summary {
    fn record(
        &mut self,
        d: &pb::FrameDescriptor,
        sent_bytes: usize,
        camera: String,
        decoder: &Decoder,
        first_capture: &mut HashMap<String, i64>,
    ) {
        self.descriptors += 1;
        self.last_offset = Some(d.offset);
        self.descriptor_bytes += sent_bytes as u64;
        self.track_records += d.tracks.len() as u64;
        self.objects += d.objects.len() as u64;
        for e in appearances(d) {
            self.appearances += 1;
            self.appearance_bytes += e.encoded_len() as u64;
            if codec::decode(e).is_err() {
                self.undecodable += 1;
            }
        }
        for event in &d.track_events {
            *self.events.entry(event_kind_name(event.kind)).or_default() += 1;
            if event.kind == pb::TrackEventKind::Confirmed as i32 {
                *self
                    .tracks_per_class
                    .entry(decoder.class_name(d, event.class_id))
                    .or_default() += 1;
            }
        }
        let entry = self
            .sequences
            .entry(camera.clone())
            .or_insert((d.sequence, d.sequence, 0));
        if d.sequence > entry.1 + 1 {
            entry.2 += d.sequence - entry.1 - 1;
        }
        entry.1 = entry.1.max(d.sequence);
        let t = nanos(d.capture_time);
        let first = *first_capture.entry(camera.clone()).or_insert(t);
        let span = self.capture_span_seconds.entry(camera).or_default();
        *span = span.max((t - first) as f64 / 1e9);
    }

    pub fn render(&self, elapsed: Duration, compare_video: Option<&std::path::Path>) -> String {
        let mut s = String::new();
        s += "\n── summary ─────────────────────────────────────────────\n";
        s += &format!(
            "descriptors received {} in {:.1} s\n",
            self.descriptors,
            elapsed.as_secs_f64()
        );
        for (camera, (first, last, gaps)) in &self.sequences {
            let span = self.capture_span_seconds.get(camera).copied().unwrap_or(0.0);
            s += &format!(
                "  camera {camera:<12} sequences {first}..={last}, {gaps} not received (filtered out), {span:.1} s of capture time\n"
            );
        }
        if let Some(offset) = self.last_offset {
            s += &format!("last offset          {offset} (resume with --after-offset {offset})\n");
        }
        for gap in &self.gaps {
            s += &format!("{}\n", gap_line(gap));
        }
        let tracks: u64 = self.tracks_per_class.values().sum();
        s += &format!("tracks confirmed     {tracks}\n");
        let mut classes: Vec<_> = self.tracks_per_class.iter().collect();
        classes.sort_by(|a, b| b.1.cmp(a.1));
        for (class, n) in classes {
            s += &format!("  {class:<18} {n}\n");
        }
        let events: Vec<String> = self.events.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
        s += &format!("track events         {}\n", events.join(", "));
        s += &format!(
            "track records        {} (one per visible track per frame)\n",
            self.track_records
        );
        if self.objects > 0 {
            s += &format!("detections           {}\n", self.objects);
        }
        s += &format!(
            "appearance vectors   {} ({} bytes encoded, {} undecodable)\n",
            self.appearances, self.appearance_bytes, self.undecodable
        );
        let seconds: f64 = self.capture_span_seconds.values().sum();
        s += &format!(
            "descriptor bytes     {} (protobuf as sent; {:.0} bytes per camera-second)\n",
            self.descriptor_bytes,
            self.descriptor_bytes as f64 / seconds.max(f64::EPSILON)
        );
        if let Some(video) = compare_video {
            match std::fs::metadata(video) {
                Ok(meta) => {
                    s += &format!(
                        "video bytes          {} ({})\ndescriptors / video  {:.2} %\n",
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

fn nanos(t: Option<prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
}

pub fn rfc3339(t: Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let time = std::time::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    humantime::format_rfc3339_millis(time).to_string()
}

fn sampling_name(sampling: i32) -> &'static str {
    match pb::Sampling::try_from(sampling) {
        Ok(pb::Sampling::Keyframes) => "keyframes",
        Ok(pb::Sampling::Unspecified) => "every_frame",
        Err(_) => "unknown",
    }
}

/// The time source, and how the frame was chosen when that was not from every frame.
fn sampled(d: &pb::FrameDescriptor) -> String {
    match pb::Sampling::try_from(d.sampling) {
        Ok(pb::Sampling::Unspecified) => time_source_name(d.time_source).to_string(),
        _ => format!("{}, {}", time_source_name(d.time_source), sampling_name(d.sampling)),
    }
}

fn time_source_name(source: i32) -> &'static str {
    match pb::TimeSource::try_from(source) {
        Ok(pb::TimeSource::FilePosition) => "file position",
        Ok(pb::TimeSource::HostArrival) => "host arrival",
        Ok(pb::TimeSource::CameraNtp) => "camera NTP",
        _ => "unknown clock",
    }
}

/// A track id for people: the camera's track number, without the node-epoch bits.
fn short_track_id(track_id: u64) -> u64 {
    track_id & 0xFF_FFFF
}

fn box_text(b: [f32; 4]) -> String {
    format!("x {:.3}-{:.3} y {:.3}-{:.3}", b[0], b[2], b[1], b[3])
}

fn embedding_text(e: Option<&pb::Embedding>) -> String {
    match e {
        Some(e) => format!("{} x{} ({} B)", codec::codec_name(e.codec), e.dimension, e.data.len()),
        None => "-".into(),
    }
}

/// One line per track event.
pub fn event_line(d: &pb::FrameDescriptor, e: &pb::TrackEvent, decoder: &Decoder) -> String {
    let mut s = format!(
        "{} {} track {:<5} {:<10} {:<18}",
        d.camera_id,
        rfc3339(d.capture_time),
        short_track_id(e.track_id),
        decoder.class_name(d, e.class_id),
        event_kind_name(e.kind),
    );
    if let Some(summary) = &e.summary {
        let seconds = (nanos(summary.last_seen) - nanos(summary.first_seen)) as f64 / 1e9;
        s += &format!(
            " {seconds:.1} s, {} frames, {} trajectory points, {};",
            summary.frames_seen,
            summary.trajectory_points.len(),
            end_reason_name(summary.end_reason)
        );
    }
    if let Some(view) = &e.view {
        let best = if e.summary.is_some() { "best view " } else { "" };
        s += &format!(
            " {best}score {:.2} box {} appearance {}",
            view.score_q8 as f32 / 255.0,
            box_text(decode_box_q16(view.box_q16)),
            embedding_text(view.appearance.as_ref())
        );
    }
    s
}

pub fn to_text(d: &pb::FrameDescriptor, decoder: &Decoder) -> String {
    let mut s = format!(
        "{} #{:<5} {} ({})  {}x{}  {} track{}, {} event{}\n",
        d.camera_id,
        d.sequence,
        rfc3339(d.capture_time),
        sampled(d),
        d.frame_width,
        d.frame_height,
        d.tracks.len(),
        if d.tracks.len() == 1 { "" } else { "s" },
        d.track_events.len(),
        if d.track_events.len() == 1 { "" } else { "s" },
    );
    for t in &d.tracks {
        s += &format!(
            "    track {:<5} {:<12} {:.2}  box {}\n",
            short_track_id(t.track_id),
            decoder.class_name(d, t.class_id),
            t.score_q8 as f32 / 255.0,
            box_text(decode_box_q16(t.box_q16))
        );
    }
    for e in &d.track_events {
        s += &format!("    event {}\n", event_line(d, e, decoder));
    }
    if let Some(change) = &d.model_change {
        s += &format!("    {}\n", model_change_line(d, change));
    }
    if let Some(export) = &d.pixel_export {
        s += &format!("    {}\n", export_line(d, export));
    }
    for e in &d.zone_events {
        s += &format!("    {}\n", zone_event_line(d, e, decoder));
    }
    if let Some(counts) = &d.counts {
        s += &format!("    {}\n", counts_line(d, counts));
    }
    for o in &d.objects {
        let b = o.r#box.unwrap_or_default();
        s += &format!(
            "    detection {:<12} {:.2}  box {}  track {}  embedding {}\n",
            o.class_name,
            o.score,
            box_text([b.x_min, b.y_min, b.x_max, b.y_max]),
            short_track_id(o.track_id),
            embedding_text(o.embedding.as_ref())
        );
    }
    s
}

fn embedding_json(e: &pb::Embedding) -> serde_json::Value {
    json!({
        "codec": codec::codec_name(e.codec),
        "dimension": e.dimension,
        "projection_id": e.projection_id,
        "bytes": e.data.len(),
        "vector": codec::decode(e).ok(),
    })
}

pub fn to_json(d: &pb::FrameDescriptor, decoder: &Decoder) -> serde_json::Value {
    let view_json = |v: &pb::TrackView| {
        json!({
            "capture_time": rfc3339(v.capture_time),
            "score": v.score_q8 as f32 / 255.0,
            "box": decode_box_q16(v.box_q16),
            "appearance": v.appearance.as_ref().map(embedding_json),
        })
    };
    let tracks: Vec<_> = d
        .tracks
        .iter()
        .map(|t| {
            json!({
                "track_id": t.track_id,
                "class_name": decoder.class_name(d, t.class_id),
                "score": t.score_q8 as f32 / 255.0,
                "box": decode_box_q16(t.box_q16),
            })
        })
        .collect();
    let events: Vec<_> = d
        .track_events
        .iter()
        .map(|e| {
            json!({
                "track_id": e.track_id,
                "class_name": decoder.class_name(d, e.class_id),
                "kind": event_kind_name(e.kind),
                "view": e.view.as_ref().map(view_json),
                "summary": e.summary.as_ref().map(|s| json!({
                    "first_seen": rfc3339(s.first_seen),
                    "last_seen": rfc3339(s.last_seen),
                    "frames_seen": s.frames_seen,
                    "end_reason": end_reason_name(s.end_reason),
                    "trajectory": s.trajectory_offsets_ms.iter().zip(&s.trajectory_points)
                        .map(|(ms, p)| json!({"offset_ms": ms, "point": decode_point_q16(*p)}))
                        .collect::<Vec<_>>(),
                })),
            })
        })
        .collect();
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
                "track_id": o.track_id,
                "embedding": o.embedding.as_ref().map(embedding_json),
            })
        })
        .collect();
    json!({
        "node_id": d.node_id,
        "node_run_id": d.node_run_id,
        "camera_id": d.camera_id,
        "sequence": d.sequence,
        "offset": d.offset,
        "capture_time": rfc3339(d.capture_time),
        "time_source": time_source_name(d.time_source),
        "sampling": sampling_name(d.sampling),
        "frame": [d.frame_width, d.frame_height],
        "camera_position": d.camera_position.as_ref().map(|p| json!({
            "latitude": p.latitude,
            "longitude": p.longitude,
            "heading_degrees": p.heading_degrees,
            "description": p.description,
        })),
        "detector": d.detector.as_ref().map(|m| format!("{}@{}", m.id, m.version)),
        "embedder": d.embedder.as_ref().map(|m| format!("{}@{}", m.id, m.version)),
        "tracks": tracks,
        "track_events": events,
        "objects": objects,
        "model_change": d.model_change.as_ref().map(|c| json!({
            "generation": c.generation,
            "reason": c.reason,
            "previous_detector": c.previous_detector.as_ref().map(model_name),
            "previous_embedder": c.previous_embedder.as_ref().map(model_name),
            "class_names": c.class_names,
        })),
        "pixel_export": d.pixel_export.as_ref().map(|e| json!({
            "kind": e.kind,
            "caller": e.caller,
            "from_time": rfc3339(e.from_time),
            "to_time": rfc3339(e.to_time),
            "track_id": e.track_id,
            "raw": e.raw,
            "refused": e.refused,
            "frames": e.frames,
            "faces_blurred": e.faces_blurred,
            "refusals": e.refusals,
        })),
        "zone_events": d.zone_events.iter().map(|e| json!({
            "track_id": e.track_id,
            "class_name": decoder.class_name(d, e.class_id),
            "kind": zone_event_kind_name(e.kind),
            "zone_id": e.zone_id,
            "direction": e.direction,
            "time": rfc3339(e.time),
            "dwell_seconds": e.dwell_seconds,
        })).collect::<Vec<_>>(),
        "counts": d.counts.as_ref().map(|r| json!({
            "from_time": rfc3339(r.from_time),
            "to_time": rfc3339(r.to_time),
            "counts": r.counts.iter().map(|c| json!({
                "zone_id": c.zone_id,
                "kind": zone_event_kind_name(c.kind),
                "direction": c.direction,
                "class_name": c.class_name,
                "count": c.count,
                "dwell_seconds_sum": c.dwell_seconds_sum,
            })).collect::<Vec<_>>(),
            "occupancy": r.occupancy.iter().map(|o| json!({
                "zone_id": o.zone_id,
                "class_name": o.class_name,
                "now": o.now,
                "max": o.max,
            })).collect::<Vec<_>>(),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{box_q16, score_q8};

    /// The JSON rendering the README documents, field by field.
    #[test]
    fn a_descriptor_renders_as_the_documented_json() {
        let frame = (1000, 500);
        let vector = [0.6f32, 0.8];
        let embedding = pb::Embedding {
            codec: pb::EmbeddingCodec::F32 as i32,
            dimension: 2,
            data: vector.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        };
        let descriptor = pb::FrameDescriptor {
            node_id: "box-0417".into(),
            camera_id: "gate-north".into(),
            offset: 42,
            capture_time: Some(prost_types::Timestamp {
                seconds: 1_764_000_000,
                nanos: 250_000_000,
            }),
            time_source: pb::TimeSource::CameraNtp as i32,
            frame_width: frame.0,
            frame_height: frame.1,
            camera_position: Some(pb::CameraPosition {
                latitude: 48.1,
                longitude: 11.5,
                heading_degrees: 270.0,
                description: "pole 3".into(),
            }),
            detector: Some(pb::ModelRef {
                id: "nanodet-g-416".into(),
                version: "1".into(),
            }),
            tracks: vec![pb::TrackedObject {
                track_id: 7,
                class_id: 1,
                score_q8: score_q8(0.8),
                box_q16: box_q16([100.0, 50.0, 600.0, 450.0], frame),
            }],
            track_events: vec![pb::TrackEvent {
                track_id: 7,
                class_id: 1,
                kind: pb::TrackEventKind::Confirmed as i32,
                view: Some(pb::TrackView {
                    appearance: Some(embedding),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json(&descriptor, &Decoder::new(vec!["person".into(), "car".into()]));
        assert_eq!(json["node_id"], "box-0417");
        assert_eq!(json["camera_id"], "gate-north");
        assert_eq!(json["offset"], 42);
        assert_eq!(json["capture_time"], "2025-11-24T16:00:00.250Z");
        assert_eq!(json["time_source"], "camera NTP");
        assert_eq!(json["frame"], json!([1000, 500]));
        assert_eq!(json["camera_position"]["heading_degrees"], 270.0);
        assert_eq!(json["camera_position"]["description"], "pole 3");
        assert_eq!(json["detector"], "nanodet-g-416@1");
        let track = &json["tracks"][0];
        assert_eq!(
            (track["track_id"].as_u64(), track["class_name"].as_str()),
            (Some(7), Some("car"))
        );
        let corners: Vec<f64> = track["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (got, want) in corners.iter().zip([0.1, 0.1, 0.6, 0.9]) {
            assert!((got - want).abs() < 1e-4, "{corners:?}");
        }
        let event = &json["track_events"][0];
        assert_eq!(event["kind"], "confirmed");
        let record = pb::FrameDescriptor {
            camera_id: "gate-north".into(),
            zone_events: vec![pb::ZoneEvent {
                track_id: 7,
                class_id: 1,
                kind: pb::ZoneEventKind::Crossed as i32,
                zone_id: "lane-2".into(),
                direction: "northbound".into(),
                time: descriptor.capture_time,
                dwell_seconds: 0.0,
            }],
            counts: Some(pb::CountReport {
                from_time: descriptor.capture_time,
                to_time: descriptor.capture_time,
                counts: vec![pb::ZoneCount {
                    zone_id: "lane-2".into(),
                    kind: pb::ZoneEventKind::Crossed as i32,
                    direction: "northbound".into(),
                    class_name: "car".into(),
                    count: 42,
                    dwell_seconds_sum: 0.0,
                }],
                occupancy: vec![],
            }),
            ..Default::default()
        };
        let decoder = Decoder::new(vec!["person".into(), "car".into()]);
        let json = to_json(&record, &decoder);
        let zone = &json["zone_events"][0];
        assert_eq!(
            (&zone["kind"], &zone["zone_id"], &zone["direction"], &zone["class_name"]),
            (&json!("crossed"), &json!("lane-2"), &json!("northbound"), &json!("car"))
        );
        assert_eq!(json["counts"]["counts"][0]["count"], 42);
        assert!(
            counts_line(&record, record.counts.as_ref().unwrap()).ends_with("lane-2 crossed northbound car 42"),
            "{}",
            counts_line(&record, record.counts.as_ref().unwrap())
        );
        assert!(
            zone_event_line(&record, &record.zone_events[0], &decoder).contains("car        crossed lane-2 northbound")
        );
        assert_eq!(event["view"]["appearance"]["codec"], "f32");
        assert_eq!(event["view"]["appearance"]["vector"], json!([0.6f32, 0.8f32]));

        let gap = pb::LogGap {
            first_offset: 3,
            last_offset: 9,
            reason: pb::LogGapReason::Evicted as i32,
        };
        let json = gap_json("box-0417", &gap, &gap_line(&gap));
        assert_eq!(json["gap"]["reason"], "evicted");
        assert_eq!(
            (
                json["gap"]["first_offset"].as_u64(),
                json["gap"]["last_offset"].as_u64()
            ),
            (Some(3), Some(9))
        );
    }
    /// A reader names classes by each descriptor's own detector: after a camera's change record,
    /// by the class names it brings; the other cameras' descriptors, still from the set before,
    /// by those the reader started with.
    #[test]
    fn classes_are_named_by_the_detector_of_each_descriptor_across_a_model_change() {
        let model = |id: &str| {
            Some(pb::ModelRef {
                id: id.into(),
                version: "1".into(),
            })
        };
        let mut decoder = Decoder::new(vec!["person".into(), "bicycle".into(), "car".into()]);
        let mut before = pb::FrameDescriptor {
            camera_id: "a".into(),
            detector: model("nanodet"),
            ..Default::default()
        };
        decoder.restore_context(&mut before);
        let mut change = pb::FrameDescriptor {
            camera_id: "a".into(),
            detector: model("ssd"),
            model_change: Some(pb::ModelChange {
                generation: 1,
                reason: "activated".into(),
                previous_detector: model("nanodet"),
                previous_embedder: None,
                class_names: vec!["background".into(), "person".into(), "bicycle".into(), "car".into()],
            }),
            ..Default::default()
        };
        decoder.restore_context(&mut change);
        // The next descriptor of camera a leaves its unchanged context out.
        let mut after = pb::FrameDescriptor {
            camera_id: "a".into(),
            ..Default::default()
        };
        decoder.restore_context(&mut after);
        let mut other_camera = pb::FrameDescriptor {
            camera_id: "b".into(),
            detector: model("nanodet"),
            ..Default::default()
        };
        decoder.restore_context(&mut other_camera);
        assert_eq!(decoder.class_name(&after, 3), "car");
        assert_eq!(decoder.class_name(&other_camera, 2), "car");
        assert_eq!(decoder.class_name(&other_camera, 3), "class 3");
        let json = to_json(&change, &decoder);
        assert_eq!(json["model_change"]["previous_detector"], "nanodet@1");
        assert_eq!(json["model_change"]["reason"], "activated");
        assert_eq!(json["model_change"]["class_names"][3], "car");
        assert!(
            model_change_line(&change, change.model_change.as_ref().unwrap())
                .contains("detector ssd@1 (was nanodet@1)")
        );
    }
}

/// Which pixels to ask a node for: a camera at a time (or over an interval), or a track.
#[derive(Debug, Clone)]
pub enum PixelTarget {
    /// A snapshot is of `from`.
    Camera {
        camera_id: String,
        from: std::time::SystemTime,
        to: std::time::SystemTime,
    },
    /// `camera_id` empty: the camera of the track's newest record (track ids are unique per
    /// camera).
    Track {
        track_id: u64,
        camera_id: String,
        margin_seconds: f32,
    },
}

fn timestamp_of(t: std::time::SystemTime) -> prost_types::Timestamp {
    crate::clock::to_timestamp(crate::clock::unix_nanos(t))
}

/// `GetSnapshot` (a camera at `from`) or `GetTrackSnapshot`.
pub async fn snapshot(
    addr: &str,
    credentials: &Credentials,
    target: PixelTarget,
    options: pb::SnapshotOptions,
) -> anyhow::Result<pb::Snapshot> {
    let mut pixels = pb::pixels_client::PixelsClient::with_interceptor(
        channel(addr, credentials).await?,
        BearerToken::new(credentials.token.as_deref())?,
    );
    let answer = match target {
        PixelTarget::Camera { camera_id, from, .. } => {
            let request = pb::SnapshotRequest {
                camera_id,
                time: Some(timestamp_of(from)),
                options: Some(options),
                r#box: None,
            };
            pixels.get_snapshot(request).await
        }
        PixelTarget::Track {
            track_id, camera_id, ..
        } => {
            let request = pb::TrackSnapshotRequest {
                track_id,
                options: Some(options),
                camera_id,
            };
            pixels.get_track_snapshot(request).await
        }
    };
    answer
        .map(tonic::Response::into_inner)
        .map_err(|status| anyhow::anyhow!("the node sent no snapshot: {}", status.message()))
}

/// `GetClip` or `GetTrackClip`, the MP4 written to `out` as it arrives.
pub async fn clip(
    addr: &str,
    credentials: &Credentials,
    target: PixelTarget,
    raw: bool,
    out: &mut impl std::io::Write,
) -> anyhow::Result<(pb::ClipInfo, pb::ClipSummary)> {
    use pb::clip_chunk::Part;
    let mut pixels = pb::pixels_client::PixelsClient::with_interceptor(
        channel(addr, credentials).await?,
        BearerToken::new(credentials.token.as_deref())?,
    );
    let answer = match target {
        PixelTarget::Camera { camera_id, from, to } => {
            let request = pb::ClipRequest {
                camera_id,
                from_time: Some(timestamp_of(from)),
                to_time: Some(timestamp_of(to)),
                raw,
            };
            pixels.get_clip(request).await
        }
        PixelTarget::Track {
            track_id,
            camera_id,
            margin_seconds,
        } => {
            let request = pb::TrackClipRequest {
                track_id,
                margin_seconds,
                raw,
                camera_id,
            };
            pixels.get_track_clip(request).await
        }
    };
    let refused = |status: tonic::Status| anyhow::anyhow!("the node sent no clip: {}", status.message());
    let mut stream = answer.map_err(refused)?.into_inner();
    let (mut info, mut summary) = (None, None);
    while let Some(chunk) = stream.message().await.map_err(refused)? {
        match chunk.part {
            Some(Part::Info(i)) => info = Some(i),
            Some(Part::Data(bytes)) => out.write_all(&bytes)?,
            Some(Part::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    match (info, summary) {
        (Some(info), Some(summary)) => Ok((info, summary)),
        _ => anyhow::bail!("the clip ended before the node said it was complete"),
    }
}
