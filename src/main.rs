//! The `retina-edge` command: run a node, check a config, or subscribe to a node.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use retina_edge::collect::read;
use retina_edge::config::Config;
use retina_edge::deliver::client::{self, Output, SubscribeOptions};
use retina_edge::node::{self, Node};
use retina_edge::pb;

#[derive(Parser)]
#[command(
    name = "retina-edge",
    version,
    about = "Edge video analytics: cameras in, compact descriptors out over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the node until SIGINT/SIGTERM (or until every camera ends, if configured).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and its models; say exactly what is wrong.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a central collector until SIGINT/SIGTERM: nodes push their logs to it, and it writes
    /// every record into NATS JetStream (README, "Push to central collectors").
    Collect {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Replace a damaged descriptor log: move it aside (kept for analysis) and start an empty one
    /// whose offsets, sequences and track ids start above any the old one handed out. Run it
    /// only when the node refuses to start because its log is damaged.
    ResetLog {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Manage the models installed on the node: install (copied into the node's model store by
    /// content hash), list, activate, roll back. An activation is checked first (ONNX Runtime
    /// opens each model and runs it once) and takes effect at the node's next start.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Manage the tokens a node accepts (`[auth] tokens_file`); a running node picks up changes
    /// within seconds.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Save a JPEG of a camera at a time, or of a track's best view, faces pixelated
    /// (pixels scope).
    Snapshot {
        #[command(flatten)]
        pixels: PixelArgs,
        /// Crop to the track's box grown by this fraction of its size on each side.
        #[arg(long, default_value_t = 0.0)]
        crop_margin: f32,
        /// Draw the track's box.
        #[arg(long)]
        draw_box: bool,
    },
    /// Save an MP4 of a camera from --from to --to, or of a track's life, faces pixelated
    /// (pixels scope).
    Clip {
        #[command(flatten)]
        pixels: PixelArgs,
        /// Seconds added before and after a track.
        #[arg(long, default_value_t = 2.0)]
        margin: f32,
    },
    /// Subscribe to a node and print what it streams: one line per track event by default. With
    /// --nats, read what collectors stored in JetStream instead, decoded the same way.
    Subscribe {
        #[command(flatten)]
        node: NodeArgs,
        /// Print every descriptor: its tracks, events and any detections.
        #[arg(long, conflicts_with_all = ["json", "quiet"])]
        frames: bool,
        /// One JSON object per descriptor on stdout (embeddings decoded to vectors).
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
        /// Print only the summary at the end.
        #[arg(long)]
        quiet: bool,
        /// Only these cameras (repeatable).
        #[arg(long = "camera")]
        cameras: Vec<String>,
        /// Only these classes, e.g. --class car --class person.
        #[arg(long = "class")]
        classes: Vec<String>,
        #[arg(long, default_value_t = 0.0)]
        min_score: f32,
        /// Also receive frames with no matching track or event.
        #[arg(long)]
        include_empty: bool,
        /// Ask for the context fields in every descriptor (see the proto).
        #[arg(long)]
        full_context: bool,
        /// Start with the oldest descriptor the node's log keeps instead of live.
        #[arg(long, conflicts_with_all = ["after_offset", "from_time"])]
        from_earliest: bool,
        /// Resume after this offset (the last one received), missing nothing the log kept.
        #[arg(long, conflicts_with = "from_time")]
        after_offset: Option<u64>,
        /// Start with the first descriptor captured at or after this time (RFC 3339, e.g.
        /// 2026-12-02T08:00:00Z).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        from_time: Option<std::time::SystemTime>,
        /// Stop after this many descriptors.
        #[arg(long)]
        max_frames: Option<u64>,
        /// Keep retrying the connection this many seconds while the node starts.
        #[arg(long, default_value_t = 30)]
        connect_timeout_seconds: u64,
        /// Compare the descriptor bytes with this video file's size in the summary.
        #[arg(long)]
        compare_video: Option<PathBuf>,
        /// How this subscriber is named in the node's logs and metrics (a node with tokens
        /// names it by its token instead).
        #[arg(long, default_value = "retina-edge-cli")]
        name: String,
        #[command(flatten)]
        central: CentralArgs,
    },
}

/// Which pixels: a camera at a time (or from it to --to), or a track.
#[derive(clap::Args)]
struct PixelArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The camera (with --time, or --from and --to; with --track, the track's camera, since
    /// track ids are unique per camera).
    #[arg(long)]
    camera: Option<String>,
    /// RFC 3339, e.g. 2026-12-02T08:00:00.5Z.
    #[arg(long, alias = "time", value_parser = humantime::parse_rfc3339_weak)]
    from: Option<std::time::SystemTime>,
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    to: Option<std::time::SystemTime>,
    /// A track id, as `subscribe` prints it.
    #[arg(long, required_unless_present = "camera")]
    track: Option<u64>,
    /// No face blurring (the token needs the pixels-raw scope; the node records who asked).
    #[arg(long)]
    raw: bool,
    /// Write the picture or the clip here.
    #[arg(long, short)]
    out: PathBuf,
}

impl PixelArgs {
    fn target(&self, margin_seconds: f32) -> anyhow::Result<client::PixelTarget> {
        Ok(match (&self.camera, self.track) {
            (camera, Some(track_id)) => client::PixelTarget::Track {
                track_id,
                camera_id: camera.clone().unwrap_or_default(),
                margin_seconds,
            },
            (Some(camera_id), None) => {
                let from = self
                    .from
                    .ok_or_else(|| anyhow::anyhow!("--camera needs --time (or --from)"))?;
                client::PixelTarget::Camera {
                    camera_id: camera_id.clone(),
                    from,
                    to: self.to.unwrap_or(from),
                }
            }
            (None, None) => anyhow::bail!("name a --camera or a --track"),
        })
    }
}

/// Reading at the centre instead: the records collectors wrote into NATS JetStream.
#[derive(clap::Args)]
struct CentralArgs {
    /// Read from this NATS server's JetStream (e.g. nats://127.0.0.1:4222) instead of a node.
    #[arg(long, conflicts_with_all = ["cameras", "classes", "min_score", "include_empty", "full_context",
        "after_offset", "compare_video", "ca_cert", "cert", "token_file"])]
    nats: Option<String>,
    /// The collectors' stream.
    #[arg(long, default_value = "RETINA", requires = "nats")]
    stream: String,
    /// Which records: `retina.>` all, `retina.NODE.>` one node, `retina.*.CAMERA` one camera id
    /// on every node.
    #[arg(long, default_value = "retina.>", requires = "nats")]
    subject: String,
    /// Keep this reader's place on the server under this name: it resumes where it stopped, and
    /// readers sharing the name share the records.
    #[arg(long, requires = "nats")]
    durable: Option<String>,
    /// Stop once every record there was has been read, instead of waiting for more.
    #[arg(long, requires = "nats")]
    until_caught_up: bool,
}

#[derive(Subcommand)]
enum ModelAction {
    /// Copy a model (a manifest, or a directory holding one) with its files into the store.
    Install {
        #[arg(long, short)]
        config: PathBuf,
        path: PathBuf,
        /// Also make it the active detector or embedder (by its role).
        #[arg(long)]
        activate: bool,
    },
    /// Every stored model: hash, role, id@version, decoder; the active ones marked.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make stored models (by hash, or its first 8 or more digits) the active set.
    Activate {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        detector: Option<String>,
        #[arg(long, conflicts_with = "no_embedder")]
        embedder: Option<String>,
        /// Run without an embedder (no appearance vectors).
        #[arg(long)]
        no_embedder: bool,
    },
    /// Make the set active before the current one active again.
    Rollback {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send a model (a manifest and the files it names, with `<manifest>.sig` if there is one)
    /// to a running node's store over gRPC (admin scope).
    Upload {
        #[command(flatten)]
        node: NodeArgs,
        manifest: PathBuf,
        /// Then switch the node to it, between two frames (no restart).
        #[arg(long)]
        activate: bool,
    },
    /// For the centre: make an Ed25519 key pair to sign models with (the private key is written
    /// owner-only; give nodes the public key as `inference.model_signing_key`).
    Keygen {
        #[arg(long)]
        private: PathBuf,
        #[arg(long)]
        public: PathBuf,
    },
    /// For the centre: sign a model (its manifest and every file it names) with a private key;
    /// writes `<manifest>.sig` beside the manifest.
    Sign {
        #[arg(long)]
        key: PathBuf,
        manifest: PathBuf,
    },
}

/// How a client reaches a node.
#[derive(clap::Args)]
struct NodeArgs {
    /// The node's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// CA certificate (PEM) the node's certificate must chain to: TLS to an https:// node.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// This client's certificate (PEM), for a node that asks for client certificates.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// A file holding the token (or set RETINA_TOKEN): never on the command line, where other
    /// users of the box can read it.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl NodeArgs {
    fn credentials(self) -> anyhow::Result<client::Credentials> {
        Ok(client::Credentials {
            ca_cert: self.ca_cert,
            client_cert: self.cert.zip(self.key),
            token: read_token(self.token_file)?,
        })
    }
}

/// The token from its file, or else from RETINA_TOKEN: never from the command line, where other
/// users of the box can read it.
fn read_token(token_file: Option<PathBuf>) -> anyhow::Result<Option<String>> {
    Ok(match token_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("RETINA_TOKEN").ok(),
    })
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a token, store its hash, and print the token: it is shown this once only.
    Add {
        /// Names the holder in the node's logs and metrics: 1-64 letters, digits, '-', '_', '.'.
        name: String,
        /// What it allows: subscribe (Subscribe, Query, GetNodeInfo), admin (camera changes),
        /// metrics (/metrics). Repeatable.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<retina_edge::access::Scope>,
        #[command(flatten)]
        file: TokenFileArg,
    },
    /// Remove a token: the node refuses it from its next look at the file (2 s, or SIGHUP).
    Revoke {
        name: String,
        #[command(flatten)]
        file: TokenFileArg,
    },
    /// List token names and scopes (the tokens themselves are not stored).
    List {
        #[command(flatten)]
        file: TokenFileArg,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct TokenFileArg {
    /// The token file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// A node config whose `[auth] tokens_file` names the token file.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl TokenFileArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(file) = &self.file {
            return Ok(file.clone());
        }
        let path = self.config.as_ref().context("--file or --config")?;
        let config = Config::load(path)?;
        let auth = config
            .auth
            .as_ref()
            .with_context(|| format!("{} has no [auth] tokens_file", path.display()))?;
        Ok(config.resolve(&auth.tokens_file))
    }
}

fn parse_scope(text: &str) -> Result<retina_edge::access::Scope, String> {
    use retina_edge::access::Scope;
    Scope::parse(text).ok_or_else(|| {
        let names: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        format!("one of {}", names.join(", "))
    })
}

fn model(action: ModelAction) -> anyhow::Result<()> {
    use retina_edge::infer::registry::{ModelStore, Role};
    let load = |path: &PathBuf| Config::load(path).with_context(|| format!("loading {}", path.display()));
    let show = |set: &retina_edge::infer::registry::ModelSet| {
        let embedder = if set.embedder.is_empty() {
            "none"
        } else {
            &set.embedder[..12]
        };
        eprintln!(
            "active: detector {}, embedder {embedder}; the node runs them from its next start",
            &set.detector[..12]
        );
    };
    match action {
        ModelAction::Install { config, path, activate } => {
            let config = load(&config)?;
            let model = node::install_model(&config, &path)?;
            println!(
                "{}	{}	{}@{}	{}",
                model.hash,
                model.role.as_str(),
                model.id,
                model.version,
                model.decoder
            );
            if activate {
                let set = match model.role {
                    Role::Detector => node::activate_models(&config, Some(&model.hash), None)?,
                    Role::Embedder => node::activate_models(&config, None, Some(&model.hash))?,
                };
                show(&set);
            }
        }
        ModelAction::List { config } => {
            let config = load(&config)?;
            let store = ModelStore::new(config.model_store_path());
            let active = store.active()?.unwrap_or_default();
            for entry in store.list()? {
                match entry {
                    Ok(m) => {
                        let mark = if m.hash == active.detector || m.hash == active.embedder {
                            "*"
                        } else {
                            ""
                        };
                        println!(
                            "{}{mark}	{}	{}@{}	{}",
                            m.hash,
                            m.role.as_str(),
                            m.id,
                            m.version,
                            m.decoder
                        );
                    }
                    Err(e) => eprintln!("unreadable: {e}"),
                }
            }
        }
        ModelAction::Activate {
            config,
            detector,
            embedder,
            no_embedder,
        } => {
            let config = load(&config)?;
            let embedder = if no_embedder { Some(String::new()) } else { embedder };
            anyhow::ensure!(
                detector.is_some() || embedder.is_some(),
                "name a --detector, an --embedder or --no-embedder"
            );
            show(&node::activate_models(
                &config,
                detector.as_deref(),
                embedder.as_deref(),
            )?);
        }
        ModelAction::Rollback { config } => show(&node::roll_back_models(&load(&config)?)?),
        ModelAction::Upload {
            node,
            manifest,
            activate,
        } => {
            let addr = node.addr.clone();
            let credentials = node.credentials()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stored, activated) =
                runtime.block_on(client::upload_model(&addr, &credentials, &manifest, activate))?;
            println!(
                "{}\t{}\t{}@{}\t{}",
                stored.hash, stored.role, stored.id, stored.version, stored.decoder
            );
            if let Some(set) = activated {
                if let Some(report) = &set.self_test {
                    eprintln!("self-test: {}", retina_edge::deliver::self_test_report(report));
                }
                if let Some(report) = &set.shadow {
                    eprintln!("{}", retina_edge::deliver::shadow_report(report));
                }
                eprintln!(
                    "running: detector {}, embedder {} (model generation {})",
                    &set.detector[..12.min(set.detector.len())],
                    if set.embedder.is_empty() {
                        "none"
                    } else {
                        &set.embedder[..12.min(set.embedder.len())]
                    },
                    set.model_generation
                );
            }
        }
        ModelAction::Keygen { private, public } => {
            retina_edge::infer::signing::SigningKey::generate(&private, &public)?;
            eprintln!("private key {}, public key {}", private.display(), public.display());
        }
        ModelAction::Sign { key, manifest } => {
            let package = retina_edge::infer::registry::Package::read(&manifest)?;
            let signature = retina_edge::infer::signing::SigningKey::load(&key)?.sign(&package.hash);
            let at = retina_edge::infer::registry::signature_path(&manifest);
            std::fs::write(&at, signature).with_context(|| format!("writing {}", at.display()))?;
            println!("{}\t{}", package.hash, at.display());
        }
    }
    Ok(())
}

fn token(action: TokenAction) -> anyhow::Result<()> {
    use retina_edge::access;
    match action {
        TokenAction::Add { name, scopes, file } => {
            let path = file.path()?;
            let token = access::add_token(&path, &name, &scopes)?;
            eprintln!(
                "token {name:?} added to {}; it is not stored and is shown only now:",
                path.display()
            );
            println!("{token}");
        }
        TokenAction::Revoke { name, file } => {
            let path = file.path()?;
            access::revoke_token(&path, &name)?;
            eprintln!("token {name:?} revoked in {}", path.display());
        }
        TokenAction::List { file } => {
            for (name, scopes) in access::list_tokens(&file.path()?)? {
                let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
                println!("{name}\t{}", scopes.join(","));
            }
        }
    }
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // ONNX Runtime's INFO logs are chatty: only its warnings by default.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// Caps glibc's malloc arenas. Every rebuilt camera pipeline brings new GStreamer and decoder
/// threads, and glibc gives new threads new arenas that keep freed memory: measured here, a node
/// whose cameras reconnect every minute grew ~5 MB per reconnect; with two arenas it stays flat.
/// Must run before any thread exists.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    cap_malloc_arenas();
    init_tracing();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run { config } => runtime.block_on(run(config)),
        Command::Check { config } => check(config),
        Command::Collect { config } => runtime.block_on(collect(config)),
        Command::ResetLog { config } => reset_log(config),
        Command::Token { action } => token(action),
        Command::Model { action } => model(action),
        Command::Snapshot {
            pixels,
            crop_margin,
            draw_box,
        } => runtime.block_on(save_snapshot(pixels, crop_margin, draw_box)),
        Command::Clip { pixels, margin } => runtime.block_on(save_clip(pixels, margin)),
        Command::Subscribe {
            node,
            frames,
            json,
            quiet,
            cameras,
            classes,
            min_score,
            include_empty,
            full_context,
            from_earliest,
            after_offset,
            from_time,
            max_frames,
            connect_timeout_seconds,
            compare_video,
            name,
            central,
        } => runtime.block_on(async move {
            let output = match (frames, json, quiet) {
                (true, _, _) => Output::Frames,
                (_, true, _) => Output::Json,
                (_, _, true) => Output::Quiet,
                _ => Output::Events,
            };
            if let Some(url) = central.nats {
                let start = match (from_earliest, from_time) {
                    (true, _) => read::Start::Earliest,
                    (_, Some(at)) => read::Start::Time(at),
                    _ => read::Start::New,
                };
                let options = read::ReadOptions {
                    url,
                    stream: central.stream,
                    subject: central.subject,
                    durable: central.durable,
                    start,
                    output,
                    max_frames,
                    until_caught_up: central.until_caught_up,
                };
                return read::read(options).await.map(|_| ());
            }
            let addr = node.addr.clone();
            let credentials = node.credentials()?;
            let start = match (from_earliest, after_offset, from_time) {
                (true, _, _) => pb::StartPosition::Earliest,
                (_, Some(_), _) => pb::StartPosition::AfterOffset,
                (_, _, Some(_)) => pb::StartPosition::FromTime,
                _ => pb::StartPosition::Live,
            };
            let options = SubscribeOptions {
                addr,
                request: pb::SubscribeRequest {
                    camera_ids: cameras,
                    class_names: classes,
                    min_score,
                    include_empty_frames: include_empty,
                    start: start as i32,
                    subscriber_name: name,
                    full_context,
                    after_offset: after_offset.unwrap_or_default(),
                    from_time: from_time.map(prost_types::Timestamp::from),
                },
                output,
                connect_timeout: Duration::from_secs(connect_timeout_seconds),
                max_frames,
                compare_video,
                credentials,
            };
            client::subscribe(options).await.map(|_| ())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    match node::check(&config) {
        Ok(facts) => {
            for fact in facts {
                println!("ok  {fact}");
            }
            println!("{} is valid", path.display());
            Ok(())
        }
        Err(problems) => {
            for problem in &problems {
                println!("bad {problem}");
            }
            anyhow::bail!("{} has {} problem(s)", path.display(), problems.len())
        }
    }
}

async fn save_snapshot(args: PixelArgs, crop_margin: f32, draw_box: bool) -> anyhow::Result<()> {
    let target = args.target(0.0)?;
    let options = pb::SnapshotOptions {
        crop_margin,
        draw_box,
        raw: args.raw,
        quality: 0,
    };
    let (addr, out) = (args.node.addr.clone(), args.out);
    let snapshot = client::snapshot(&addr, &args.node.credentials()?, target, options).await?;
    std::fs::write(&out, &snapshot.jpeg).with_context(|| format!("writing {}", out.display()))?;
    let time = snapshot.capture_time.map(format_timestamp).unwrap_or_default();
    println!(
        "{}: camera {} at {time}, frame {}x{}, {}",
        out.display(),
        snapshot.camera_id,
        snapshot.frame_width,
        snapshot.frame_height,
        if snapshot.raw {
            "not blurred".to_string()
        } else {
            format!("{} faces pixelated", snapshot.faces_blurred)
        }
    );
    Ok(())
}

async fn save_clip(args: PixelArgs, margin: f32) -> anyhow::Result<()> {
    let target = args.target(margin)?;
    let (addr, out) = (args.node.addr.clone(), args.out);
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?);
    let (info, summary) = client::clip(&addr, &args.node.credentials()?, target, args.raw, &mut file).await?;
    file.flush()?;
    let time = |t: Option<prost_types::Timestamp>| t.map(format_timestamp).unwrap_or_default();
    println!(
        "{}: camera {}, {} frames {}x{} from {} to {}, {} bytes, {}",
        out.display(),
        info.camera_id,
        summary.frames,
        info.frame_width,
        info.frame_height,
        time(summary.first_frame),
        time(summary.last_frame),
        summary.bytes,
        if info.raw {
            "not blurred".to_string()
        } else {
            format!("{} faces pixelated", summary.faces_blurred)
        }
    );
    for gap in &info.gaps {
        println!("no video from {} to {}", time(gap.from_time), time(gap.to_time));
    }
    Ok(())
}

fn format_timestamp(t: prost_types::Timestamp) -> String {
    let nanos = retina_edge::clock::timestamp_nanos(t);
    let time = std::time::UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

async fn collect(path: PathBuf) -> anyhow::Result<()> {
    let config = retina_edge::config::CollectorConfig::load(&path)?;
    let collector = retina_edge::collect::Collector::start(config)
        .await
        .context("starting the collector")?;
    let mut signals = StopSignals::install();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let stop = collector.stop_handle();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("signal received: stopping");
        stop.trigger();
    });
    collector.wait().await?;
    Ok(())
}

fn reset_log(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let log = config.log_path();
    if let Ok((store, _)) = retina_edge::log::Store::open(&log) {
        store.close()?;
        anyhow::bail!("{} is not damaged: nothing to do", log.display());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let (aside, first) = retina_edge::log::Store::replace_damaged(&log, now)?;
    println!(
        "moved the damaged log to {} and started {} at offset {first}",
        aside.display(),
        log.display()
    );
    Ok(())
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let node = Node::start(config).await.context("starting the node")?;
    // Handlers before READY=1: systemd may send SIGTERM the moment it hears READY, and without a
    // handler that signal would kill the node instead of stopping it gracefully.
    let mut signals = StopSignals::install();
    // Tell systemd (Type=notify) we are serving; a no-op when not started by systemd.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tokio::spawn(tell_systemd(node.liveness(), sd_notify::watchdog_enabled()));

    let stop = node.stop_handle();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("signal received: stopping gracefully (again to stop at once)");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        stop.trigger();
        signals.recv().await;
        tracing::warn!("second signal: exiting now");
        // 130: stopped by the operator, not finished; systemd logs it as a failure, which a stop
        // that skipped the frames in flight is.
        std::process::exit(130);
    });
    node.wait().await?;
    Ok(())
}

/// How often `STATUS=` is updated when no watchdog sets the pace.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Keeps systemd informed: `STATUS=` with cameras and frames, and with `WatchdogSec=`,
/// `WATCHDOG=1` twice per period, but only while the analysis path moves. Frames that waited for
/// inference half a period with none taken mean a wedged worker, describer or log writer:
/// the pings stop, and systemd restarts the node when the period runs out.
async fn tell_systemd(liveness: node::Liveness, watchdog: Option<Duration>) {
    let period = watchdog.map_or(STATUS_INTERVAL, |w| w / 2);
    let mut tick = tokio::time::interval(period);
    let mut stalled_before = false;
    loop {
        tick.tick().await;
        let status = liveness.status_line();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
        let Some(watchdog) = watchdog else {
            continue;
        };
        match liveness.analysis_stalled().filter(|&waited| waited >= watchdog / 2) {
            None => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                stalled_before = false;
            }
            Some(waited) if !stalled_before => {
                tracing::error!(
                    ?waited,
                    "frames wait for inference and none is taken: not telling the watchdog \
                    that the node is alive; systemd will restart it"
                );
                stalled_before = true;
            }
            Some(_) => {}
        }
    }
}

/// SIGTERM and SIGINT, listened to for the whole run. The same streams serve the first and the
/// second signal: streams made anew after the first would miss a second that came in between.
struct StopSignals {
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => Some((term, int)),
            (Err(err), _) | (_, Err(err)) => {
                // The node can still be stopped by killing it.
                tracing::warn!(%err, "cannot listen for SIGTERM/SIGINT; only SIGKILL will stop the node");
                None
            }
        };
        StopSignals { streams }
    }

    async fn recv(&mut self) {
        let Some((term, int)) = &mut self.streams else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
