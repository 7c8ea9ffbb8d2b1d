//! A running node: wires the stages together and stops them in order.
//!
//! ```text
//! cameras ─▶ FrameQueue ─▶ inference workers ─▶ Describer ─▶ Log ─▶ gRPC subscribers, queries
//! (ingest)                  (infer)               (describe)   (log)  (deliver)
//! ```
//!
//! Stopping runs the same path backwards: cameras stop producing, the queue is closed and
//! drained by the workers, the describer appends the last results, the log commits them and
//! closes (subscriber streams end once they have read everything), and only then do the servers
//! stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, mpsc};
use std::time::Duration;

use gstreamer as gst;

use crate::clock::now_unix_nanos;
use crate::config::{Config, Probation};
use crate::deliver::pixels::{PixelsService, VideoExports};
use crate::deliver::{Limits, NodeFacts, RunningModels};
use crate::describe::codec::{CodecKind, Encoder};
use crate::describe::projection::Projection;
use crate::describe::{Describer, ModelContext, ModelContexts, Origin};
use crate::error::{Error, Result};
use crate::infer::registry::{ModelSet, ModelStore, Package, RunningSet, StoredModel};
use crate::infer::self_test::SelfTestReport;
use crate::infer::shadow::ShadowReport;
use crate::infer::signing::VerifyingKey;
use crate::infer::{self, Analyzer, ModelFile, ModelSetInfo, ModelSwap, SessionOptions, manifest::Manifest};
use crate::ingest::{CameraManager, Cameras, FrameQueue, SourceUri, StartingCamera};
use crate::log::Log;
use crate::metrics::{self, Metrics};
use crate::pb;
use crate::shutdown::Shutdown;
use crate::video::live::LiveFrames;
use crate::video::record::RecordSettings;

/// Models loaded and verified against their manifests.
pub struct Models {
    pub env: &'static ort::environment::Environment,
    pub detector: ModelFile,
    pub embedder: Option<ModelFile>,
    /// The embedder's projection for the compact codecs, if its manifest names one.
    pub projection: Option<Arc<Projection>>,
    pub options: SessionOptions,
}

fn session_options(inference: &crate::config::InferenceConfig) -> SessionOptions {
    SessionOptions {
        intra_op_threads: inference.intra_op_threads,
        allow_spinning: inference.allow_spinning,
        memory_arena: inference.memory_arena,
    }
}

impl Models {
    pub fn load(config: &Config) -> Result<Models> {
        let inference = &config.inference;
        let env = infer::environment(&config.resolve(&inference.onnxruntime_library))?;
        let options = session_options(inference);
        let detector = ModelFile::load(
            Manifest::load(&config.resolve(&inference.detector_manifest))?,
            env,
            options,
        )?;
        let embedder = match &inference.embedder_manifest {
            Some(path) => Some(ModelFile::load(Manifest::load(&config.resolve(path))?, env, options)?),
            None => None,
        };
        check_embed_classes(config, &detector.manifest)?;
        let projection = match &embedder {
            Some(embedder) => load_projection(&embedder.manifest)?,
            None => None,
        };
        Ok(Models {
            env,
            detector,
            embedder,
            projection,
            options,
        })
    }

    /// Registers this set's describe context under `generation` and returns what each analysis
    /// of the set carries.
    /// Registers the set's describe context under `generation`, with why the node switched to
    /// it (empty for the set it starts with).
    fn set_info(
        &self,
        config: &Config,
        generation: u64,
        switch_reason: &str,
        contexts: &ModelContexts,
    ) -> Result<Arc<ModelSetInfo>> {
        let model_ref = |m: &ModelFile| pb::ModelRef {
            id: m.card.id.clone(),
            version: m.card.version.clone(),
        };
        contexts.add(ModelContext {
            generation,
            detector: model_ref(&self.detector),
            embedder: self.embedder.as_ref().map(model_ref),
            class_names: self.detector.card.class_names.clone(),
            encoder: self.encoder(config)?,
            switch_reason: switch_reason.to_string(),
        });
        Ok(Arc::new(ModelSetInfo {
            generation,
            detector: self.detector.card.clone(),
            embedder: self.embedder.as_ref().map(|m| m.card.clone()),
            health: Default::default(),
        }))
    }

    /// The set as `GetNodeInfo` reports it.
    fn running(&self, generation: u64) -> RunningModels {
        let mut models = vec![("detector".to_string(), self.detector.card.clone(), None)];
        if let Some(embedder) = &self.embedder {
            models.push(("embedder".to_string(), embedder.card.clone(), self.projection.clone()));
        }
        RunningModels {
            generation,
            models,
            class_names: self.detector.card.class_names.clone(),
        }
    }

    /// The embedding encoder the config asks for, checked against the models.
    pub fn encoder(&self, config: &Config) -> Result<Encoder> {
        let describe = &config.describe;
        if self.embedder.is_none() {
            // Boxes and tracks only: no vector is ever encoded, so the codec (by default one that
            // needs the embedder's projection) does not apply.
            return Encoder::new(CodecKind::F32, None, None).map_err(|e| Error::Internal(e.to_string()));
        }
        if describe.codec.is_projected() && self.projection.is_none() {
            let embedder = self.embedder.as_ref().map_or("none".into(), |e| e.card.id.clone());
            return Err(Error::Config {
                path: config.origin.clone(),
                message: format!(
                    "describe.codec = {:?} needs a projection, and the embedder ({embedder}) has none in its manifest",
                    describe.codec.name()
                ),
            });
        }
        let dimension = describe.effective_codec_dimension();
        Encoder::new(describe.codec, dimension, self.projection.clone()).map_err(|e| Error::Config {
            path: config.origin.clone(),
            message: format!(
                "describe.codec = {:?} with codec_dimension = {dimension:?}: {e}",
                describe.codec.name()
            ),
        })
    }

    pub fn analyzer(&self, config: &Config) -> Result<Analyzer> {
        Analyzer::new(
            self.env,
            &self.detector,
            self.embedder.as_ref(),
            &config.inference.embed_classes,
            config.inference.score_threshold,
            embed_min_score(config),
            self.options,
        )
    }

    /// Lets go of the model files' bytes once every session is open (a copy of the weights each
    /// session has already taken: 24 MB of the resident size for the default models).
    pub fn release_file_bytes(&mut self) {
        self.detector.release_bytes();
        if let Some(embedder) = &mut self.embedder {
            embedder.release_bytes();
        }
    }
}

/// Every class named in `inference.embed_classes` is one the detector knows.
fn check_embed_classes(config: &Config, detector: &Manifest) -> Result<()> {
    let classes = detector.decoder.class_names();
    match config.inference.embed_classes.iter().find(|c| !classes.contains(c)) {
        Some(unknown) => Err(Error::Config {
            path: config.origin.clone(),
            message: format!(
                "inference.embed_classes names {unknown:?}, which detector {} does not know",
                detector.model.id
            ),
        }),
        None => Ok(()),
    }
}

/// Only confident detections' embeddings are used by the tracker and the emission policy; every
/// detection's is sent when the node sends detections.
fn embed_min_score(config: &Config) -> f32 {
    if config.describe.send_detections {
        0.0
    } else {
        config.describe.tracker.high_threshold
    }
}

fn load_projection(manifest: &Manifest) -> Result<Option<Arc<Projection>>> {
    let Some((spec, path)) = manifest.projection() else {
        return Ok(None);
    };
    let projection = Projection::load(&path, spec.id.clone())?;
    let dimension = match &manifest.decoder {
        crate::infer::manifest::DecoderSpec::Embedding { dimension, .. } => *dimension,
        other => {
            return Err(Error::Manifest {
                path: manifest.path.clone(),
                message: format!("a projection needs an embedding decoder, not {}", other.kind()),
            });
        }
    };
    if projection.input_dimension() != dimension {
        return Err(Error::Manifest {
            path: manifest.path.clone(),
            message: format!(
                "projection {} expects {}-d embeddings, the model outputs {dimension}",
                path.display(),
                projection.input_dimension()
            ),
        });
    }
    Ok(Some(Arc::new(projection)))
}

/// The cameras a node starts with, each with its source or the reason it has none.
struct StartingCameras {
    /// The camera state file, when its cameras (changed over gRPC) replaced the config's.
    from_state_file: Option<PathBuf>,
    resolved: Vec<StartingCamera>,
}

impl StartingCameras {
    /// The cameras that cannot start, each named with the state file when it came from there:
    /// an operator who never edited the config would otherwise look for it in the wrong file.
    fn problems(&self) -> Vec<Error> {
        let saved_in = self
            .from_state_file
            .as_ref()
            .map(|path| format!(" (saved in {})", path.display()))
            .unwrap_or_default();
        self.resolved
            .iter()
            .filter_map(|c| {
                let err = c.source.as_ref().err()?;
                Some(Error::Camera {
                    camera: format!("{}{saved_in}", c.config.id),
                    message: err.to_string(),
                })
            })
            .collect()
    }
}

/// Applies the camera state file to `config` and resolves every camera's URI.
fn starting_cameras(config: &mut Config) -> Result<StartingCameras> {
    let from_state_file = config.apply_camera_state()?;
    let resolved = config
        .cameras
        .iter()
        .map(|c| StartingCamera {
            config: c.clone(),
            source: SourceUri::resolve(&c.uri, &config.base_dir),
        })
        .collect();
    Ok(StartingCameras {
        from_state_file,
        resolved,
    })
}

/// Replaces the config's model manifests with those of the model store's active set, if a set
/// was ever activated: an activation outlives restarts.
fn apply_active_models(config: &mut Config) -> Result<Option<ModelSet>> {
    let store = ModelStore::new(config.model_store_path());
    let Some(set) = store.active()? else {
        return Ok(None);
    };
    let (detector, embedder) = store.manifests(&set)?;
    config.inference.detector_manifest = detector;
    config.inference.embedder_manifest = embedder;
    Ok(Some(set))
}

/// Copies a model (its manifest, or a directory holding one manifest) into the node's store.
pub fn install_model(config: &Config, path: &std::path::Path) -> Result<StoredModel> {
    let manifest = if path.is_dir() {
        let manifests: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(format!("listing {}", path.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        match manifests.as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(Error::ModelStore {
                    path: path.to_path_buf(),
                    message: format!(
                        "expected one manifest (*.toml) in the directory, found {}",
                        manifests.len()
                    ),
                });
            }
        }
    } else {
        path.to_path_buf()
    };
    ModelStore::new(config.model_store_path()).install(&manifest, signing_key(config)?.as_ref())
}

fn signing_key(config: &Config) -> Result<Option<VerifyingKey>> {
    config
        .inference
        .model_signing_key
        .as_ref()
        .map(|path| VerifyingKey::load(&config.resolve(path)))
        .transpose()
}

/// Makes a set of stored models the one the node runs from its next start, after checking it as
/// `check` does (ONNX Runtime opens each model and runs it once). `embedder`: `None` keeps the
/// current one, `Some("")` runs without. The first activation also stores the config's own
/// models, so that rollback can return to them.
pub fn activate_models(config: &Config, detector: Option<&str>, embedder: Option<&str>) -> Result<ModelSet> {
    let (store, current, wanted) = chosen_set(config, detector, embedder)?;
    check_set(config, &store, &wanted)?;
    store.activate(&wanted, &current)
}

/// The store, its active set (the config's own models on the first activation) and the set
/// `detector` and `embedder` choose, its signatures checked.
fn chosen_set(
    config: &Config,
    detector: Option<&str>,
    embedder: Option<&str>,
) -> Result<(ModelStore, ModelSet, ModelSet)> {
    let store = ModelStore::new(config.model_store_path());
    // The config's own models are the operator's: they need no signature.
    let own = |path: &std::path::Path| store.install(&config.resolve(path), None).map(|m| m.hash);
    let current = match store.active()? {
        Some(set) => set,
        None => ModelSet {
            detector: own(&config.inference.detector_manifest)?,
            embedder: config
                .inference
                .embedder_manifest
                .as_deref()
                .map(own)
                .transpose()?
                .unwrap_or_default(),
        },
    };
    let wanted = store.resolve_set(&ModelSet {
        detector: detector.map_or_else(|| current.detector.clone(), str::to_string),
        embedder: embedder.map_or_else(|| current.embedder.clone(), str::to_string),
    })?;
    verify_signatures(config, &store, &wanted)?;
    Ok((store, current, wanted))
}

/// Returns the node to the set active before the current one (checked as on activation).
pub fn roll_back_models(config: &Config) -> Result<ModelSet> {
    let store = ModelStore::new(config.model_store_path());
    let back = store.previous()?;
    verify_signatures(config, &store, &back)?;
    check_set(config, &store, &back)?;
    store.roll_back()
}

/// On a node with the centre's key, every model of `set` but the config's own must carry its
/// signature.
fn verify_signatures(config: &Config, store: &ModelStore, set: &ModelSet) -> Result<()> {
    if let Some(key) = signing_key(config)? {
        let own: Vec<String> = std::iter::once(&config.inference.detector_manifest)
            .chain(&config.inference.embedder_manifest)
            .map(|path| Package::read(&config.resolve(path)).map(|p| p.hash))
            .collect::<Result<_>>()?;
        for hash in [&set.detector, &set.embedder] {
            if !hash.is_empty() && !own.contains(hash) {
                store.verify_stored(hash, &key)?;
            }
        }
    }
    Ok(())
}

/// Checks `set` as `retina-edge check` checks models: ONNX Runtime opens each one, compares it
/// with its manifest and runs it once. (A live switch needs no such check: it loads the set
/// for its workers, which checks the same, and runs it on real frames.)
fn check_set(config: &Config, store: &ModelStore, set: &ModelSet) -> Result<()> {
    let mut trial = config.clone();
    let (detector, embedder) = store.manifests(set)?;
    trial.inference.detector_manifest = detector;
    trial.inference.embedder_manifest = embedder;
    let mut facts = Vec::new();
    let mut problems = Vec::new();
    check_models(&trial, &mut facts, &mut problems);
    match problems.into_iter().next() {
        None => Ok(()),
        Some(problem) => Err(problem),
    }
}

/// When the node's certificate expires, or a problem if it has.
fn certificate_expiry(
    cert: &std::path::Path,
    not_after_unix: i64,
    now: std::time::SystemTime,
) -> std::result::Result<String, Error> {
    let not_after = std::time::UNIX_EPOCH + Duration::from_secs(not_after_unix.max(0) as u64);
    let when = humantime::format_rfc3339_seconds(not_after);
    match not_after.duration_since(now) {
        Ok(left) => Ok(format!(
            "TLS certificate {} valid until {when} ({} days left)",
            cert.display(),
            left.as_secs() / 86_400
        )),
        Err(_) => Err(Error::Access(format!(
            "TLS certificate {} expired at {when}: clients refuse it; renew it (the node takes the new one without a restart)",
            cert.display()
        ))),
    }
}

/// Everything `retina-edge check` verifies, all of it, so that one run lists every problem.
pub fn check(config: &Config) -> std::result::Result<Vec<String>, Vec<Error>> {
    let mut facts = Vec::new();
    let mut problems = Vec::new();
    if let Err(e) = gst::init() {
        problems.push(Error::from(e));
        return Err(problems);
    }
    match crate::access::Access::load(config).and_then(|access| {
        let tls = access.tls(&[crate::access::ALPN_GRPC])?;
        Ok((tls, access.tokens.is_some()))
    }) {
        Ok((tls, tokens)) => {
            facts.push(format!(
                "listeners: gRPC {}{}, TLS {}, tokens {}",
                config.node.grpc_listen,
                config
                    .node
                    .metrics_listen
                    .map(|a| format!(", metrics {a}"))
                    .unwrap_or_default(),
                if tls.is_some() { "on" } else { "off" },
                if tokens { "required" } else { "off" },
            ));
            if let Some(tls) = tls {
                match certificate_expiry(tls.cert_path(), tls.not_after_unix(), std::time::SystemTime::now()) {
                    Ok(fact) => facts.push(fact),
                    Err(problem) => problems.push(problem),
                }
            }
        }
        Err(e) => problems.push(e),
    }
    let mut config = config.clone();
    match apply_active_models(&mut config) {
        Ok(Some(set)) => facts.push(format!(
            "models: the set activated in {} (detector {}{}), not the config's",
            config.model_store_path().display(),
            &set.detector[..12],
            if set.embedder.is_empty() {
                String::new()
            } else {
                format!(", embedder {}", &set.embedder[..12])
            }
        )),
        Ok(None) => {}
        Err(e) => problems.push(e),
    }
    match starting_cameras(&mut config) {
        Ok(cameras) => {
            if let Some(path) = &cameras.from_state_file {
                facts.push(format!(
                    "cameras from {}: changed at run time, they replace the config's [[cameras]]",
                    path.display()
                ));
            }
            problems.extend(cameras.problems());
            for camera in &cameras.resolved {
                if let Ok(source) = &camera.source {
                    facts.push(format!(
                        "camera {}: {} ({:?})",
                        camera.config.id, source.redacted, source.kind
                    ));
                }
                if let Some(path) = &camera.config.password_file {
                    let password = crate::files::read_secret_line(path, "camera password file");
                    if let Err(err) = password {
                        problems.push(Error::Camera {
                            camera: camera.config.id.clone(),
                            message: err.to_string(),
                        });
                    }
                }
                let probation = config.camera_probation.get(&camera.config.id);
                // A camera whose probation a clean stop interrupted simply starts again.
                if let Some(probation) = probation.filter(|p| !p.stopped_cleanly || p.failed.is_some()) {
                    problems.push(Error::Camera {
                        camera: camera.config.id.clone(),
                        message: probation.failed.clone().unwrap_or_else(|| {
                            format!(
                                "on probation since {}: the node stopped while it was starting, so it will \
                                 not be started",
                                probation.since
                            )
                        }),
                    });
                }
            }
        }
        Err(e) => problems.push(e),
    }
    check_models(&config, &mut facts, &mut problems);
    if problems.is_empty() { Ok(facts) } else { Err(problems) }
}

/// The value, or `None` with the error added to `problems`.
fn ok_or_note<T>(result: Result<T>, problems: &mut Vec<Error>) -> Option<T> {
    result.map_err(|e| problems.push(e)).ok()
}

/// The model part of [`check`]. Unlike [`Models::load`], which stops at the first error (a node
/// cannot start anyway), each check here runs unless it needs what already failed: a missing
/// ONNX Runtime library must not hide a manifest that does not parse, nor a bad detector the
/// embedder's problems, or the operator fixes one problem per run.
fn check_models(config: &Config, facts: &mut Vec<String>, problems: &mut Vec<Error>) {
    let inference = &config.inference;
    let env = ok_or_note(
        infer::environment(&config.resolve(&inference.onnxruntime_library)),
        problems,
    );
    let options = session_options(inference);
    let detector = ok_or_note(Manifest::load(&config.resolve(&inference.detector_manifest)), problems);
    if let Some(detector) = &detector {
        ok_or_note(check_embed_classes(config, detector), problems);
    }
    // Outer `None`: no embedder configured; inner `None`: its manifest is bad.
    let embedder = inference
        .embedder_manifest
        .as_ref()
        .map(|path| ok_or_note(Manifest::load(&config.resolve(path)), problems));
    // The projection is a file beside the manifest: it needs no ONNX Runtime.
    let projection = match &embedder {
        Some(Some(manifest)) => ok_or_note(load_projection(manifest), problems),
        _ => Some(None),
    };
    if let Some(Some(p)) = &projection {
        facts.push(format!(
            "projection {}: {} -> up to {} dimensions, binary codes of {:?} bits, sha256 {}",
            p.id(),
            p.input_dimension(),
            p.max_dimension(),
            p.binary_sizes(),
            p.sha256()
        ));
    }
    let Some(env) = env else { return };
    let mut load = |manifest: Manifest| {
        let model = ok_or_note(ModelFile::load(manifest, env, options), problems)?;
        let card = &model.card;
        facts.push(format!(
            "model {}@{}: decoder {}, input {:?}, sha256 {}",
            card.id, card.version, card.decoder, card.input_shape, card.sha256
        ));
        Some(model)
    };
    let detector = detector.and_then(&mut load);
    let embedder = embedder.map(|manifest| manifest.and_then(&mut load));
    // The codec depends on the models and the projection: checked only when all are sound.
    let embedder = match embedder {
        None => Some(None), // none configured
        Some(loaded) => loaded.map(Some),
    };
    let (Some(detector), Some(embedder), Some(projection)) = (detector, embedder, projection) else {
        return;
    };
    let models = Models {
        env,
        detector,
        embedder,
        projection,
        options,
    };
    match models.encoder(config) {
        Ok(encoder) => facts.push(format!("embedding codec: {encoder}")),
        Err(e) => problems.push(e),
    }
    // One run of each model on a blank input, as a worker does before its first frame: outputs
    // whose shapes only show at run time are checked by the decoders here.
    match models.analyzer(config).and_then(|mut analyzer| analyzer.warm_up()) {
        Ok(()) => facts.push("models: one run on a blank frame decoded".into()),
        Err(e) => problems.push(e),
    }
}

pub struct Node {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub cameras: Cameras,
    /// What `/metrics` serves; it outlives the endpoint, so a caller can read the final counts.
    pub metrics: Arc<Metrics>,
    queue: Arc<FrameQueue>,
    /// Switches the model set of the running node.
    pub models: Arc<LiveModels>,
    stop: Shutdown,
    finished: tokio::task::JoinHandle<Result<()>>,
}

/// The running node's model set, and the way to replace it between frames.
pub struct LiveModels {
    /// For the watch thread, which must not keep the node's models alive.
    me: std::sync::Weak<LiveModels>,
    config: Arc<Config>,
    swap: ModelSwap,
    contexts: ModelContexts,
    /// Where `GetNodeInfo` learns of the switch.
    facts: Arc<NodeFacts>,
    /// Held while a switch is prepared, so two never race.
    state: std::sync::Mutex<SwitchState>,
}

struct SwitchState {
    generation: u64,
    running: Arc<ModelSetInfo>,
    watching: Option<Watching>,
}

/// A set switched to, in its watch period: the set before it is still loaded in the workers.
struct Watching {
    before: ModelSet,
    before_info: Arc<ModelSetInfo>,
    before_facts: Arc<RunningModels>,
    /// How the store goes back: a rollback undoes an activation; after a rollback, the set
    /// before is activated again.
    came_by_rollback: bool,
    until: std::time::Instant,
}

/// How often the watch looks at the new set's health.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

impl crate::deliver::ModelControl for LiveModels {
    /// Switches the running node to a set of stored models (see [`activate_models`] for the
    /// arguments): its signatures checked, loaded for every worker (which checks each model
    /// against its manifest) and run once, tried on the node's recent frames
    /// ([`infer::self_test`]) and, with `inference.shadow.frames`, beside the running set on live
    /// frames ([`infer::shadow`]), handed to every worker to take between two frames (no camera
    /// restarts; every track ends with `MODEL_CHANGED`), then made the active set, so it also
    /// survives restarts. Then watched for `inference.watch.seconds`, with the set before kept
    /// loaded, and rolled back at once if it fails, is slow or stops finding objects
    /// ([`infer::watch::judge`]). Blocking for as long as loading takes (seconds): call it from
    /// a blocking task.
    fn switch(&self, detector: Option<&str>, embedder: Option<&str>) -> Result<RunningSet> {
        let mut state = self.lock()?;
        let (store, current, wanted) = chosen_set(&self.config, detector, embedder)?;
        let handed = self.hand_over(&mut state, &wanted, current.clone(), false);
        // What loading and trying the set took (or the refused set's sessions) goes back.
        infer::release_free_memory();
        let (self_test, shadow) = handed?;
        let set = store.activate(&wanted, &current)?;
        Ok(RunningSet {
            set,
            generation: state.generation,
            self_test,
            shadow,
        })
    }

    /// Switches back to the set active before the last activation, as a switch does.
    fn roll_back(&self) -> Result<RunningSet> {
        let mut state = self.lock()?;
        let store = ModelStore::new(self.config.model_store_path());
        let back = store.previous()?;
        verify_signatures(&self.config, &store, &back)?;
        let current = store.active()?.unwrap_or_default();
        let handed = self.hand_over(&mut state, &back, current, true);
        infer::release_free_memory();
        let (self_test, shadow) = handed?;
        let set = store.roll_back()?;
        Ok(RunningSet {
            set,
            generation: state.generation,
            self_test,
            shadow,
        })
    }

    /// Stores a package received over the network (see [`install_model`]); nothing runs it
    /// until a switch.
    fn install_received(&self, manifest: &std::path::Path) -> Result<StoredModel> {
        ModelStore::new(self.config.model_store_path()).install_received(manifest, signing_key(&self.config)?.as_ref())
    }

    /// The store's packages that load, and its active set.
    fn stored(&self) -> Result<(Vec<StoredModel>, Option<ModelSet>)> {
        let store = ModelStore::new(self.config.model_store_path());
        let models = store.list()?.into_iter().filter_map(Result::ok).collect();
        Ok((models, store.active()?))
    }

    /// Inside the store, so that storing an upload is a rename on the same file system.
    fn staging_dir(&self) -> PathBuf {
        self.config.model_store_path()
    }
}

impl LiveModels {
    /// The switch state, held while a switch is prepared, so two never race.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, SwitchState>> {
        self.state
            .lock()
            .map_err(|_| Error::Internal("a model switch panicked".into()))
    }

    /// Loads `set` for every worker, tries it on the recent frames and in a shadow run, hands it
    /// over and starts its watch.
    fn hand_over(
        &self,
        state: &mut SwitchState,
        set: &ModelSet,
        before: ModelSet,
        came_by_rollback: bool,
    ) -> Result<(SelfTestReport, Option<ShadowReport>)> {
        let store = ModelStore::new(self.config.model_store_path());
        let mut trial = (*self.config).clone();
        let (detector, embedder) = store.manifests(set)?;
        trial.inference.detector_manifest = detector;
        trial.inference.embedder_manifest = embedder;
        let mut models = Models::load(&trial)?;
        let mut analyzers = (0..self.swap.workers())
            .map(|_| {
                let mut analyzer = models.analyzer(&trial)?;
                analyzer.warm_up()?;
                Ok(analyzer)
            })
            .collect::<Result<Vec<_>>>()?;
        let recent = self.swap.recent_frames().snapshot();
        let report = match analyzers.first_mut() {
            Some(analyzer) => infer::self_test::self_test(
                analyzer,
                &models.detector.card.class_names,
                &recent,
                &self.config.inference.self_test,
            )?,
            None => SelfTestReport::default(),
        };
        tracing::info!(%report, "model set passed its self-test");
        let limits = &self.config.inference.shadow;
        let shadow = match analyzers.first_mut() {
            Some(analyzer) if limits.frames > 0 => {
                let names = &models.detector.card.class_names;
                let shadow = infer::shadow::shadow_run(analyzer, names, self.swap.recent_frames(), limits)?;
                tracing::info!(%shadow, "model set passed its shadow run");
                Some(shadow)
            }
            _ => None,
        };
        models.release_file_bytes();
        let next = state.generation + 1;
        let reason = if came_by_rollback { "rolled back" } else { "activated" };
        let info = models.set_info(&trial, next, reason, &self.contexts)?;
        let watch_seconds = self.config.inference.watch.seconds;
        self.swap.hand_over(analyzers, info.clone(), watch_seconds > 0.0)?;
        self.swap.recent_frames().clear();
        let before_facts = self.facts.models();
        self.facts.set_models(models.running(next));
        let before_info = std::mem::replace(&mut state.running, info);
        state.generation = next;
        state.watching = (watch_seconds > 0.0).then(|| Watching {
            before,
            before_info,
            before_facts,
            came_by_rollback,
            until: std::time::Instant::now() + Duration::from_secs_f64(watch_seconds),
        });
        tracing::info!(generation = next, detector = %set.detector, embedder = %set.embedder,
            "model set handed to the workers");
        if watch_seconds > 0.0 {
            let live = self.me.clone();
            let spawned = std::thread::Builder::new()
                .name("model-watch".into())
                .spawn(move || watch(live, next));
            if let Err(e) = spawned {
                tracing::warn!(%e, "the new model set is not watched: no thread for it");
            }
        }
        Ok((report, shadow))
    }

    /// One look at the set of `generation` in its watch period; false once the watch is over
    /// (ended, rolled back, or overtaken by another switch).
    fn watch_once(&self, generation: u64) -> Result<bool> {
        let mut state = self.lock()?;
        if state.generation != generation {
            return Ok(false);
        }
        let Some(watching) = &state.watching else {
            return Ok(false);
        };
        let limits = &self.config.inference.watch;
        let verdict = infer::watch::judge(
            limits,
            &state.running.health.snapshot(),
            &watching.before_info.health.snapshot(),
        );
        match verdict {
            None if std::time::Instant::now() < watching.until => Ok(true),
            None => {
                self.swap.release_kept();
                state.watching = None;
                tracing::info!(generation, "model set watched without fault; the set before is freed");
                Ok(false)
            }
            Some(reason) => {
                self.roll_back_to_kept(&mut state, &reason)?;
                Ok(false)
            }
        }
    }

    /// The automatic rollback: the workers go back to the sessions they kept, under a new
    /// generation (so tracks end with `MODEL_CHANGED` again), and the store goes back too.
    fn roll_back_to_kept(&self, state: &mut SwitchState, reason: &str) -> Result<()> {
        let Some(watching) = state.watching.take() else {
            return Ok(());
        };
        let next = state.generation + 1;
        let old = &watching.before_info;
        let info = Arc::new(ModelSetInfo {
            generation: next,
            detector: old.detector.clone(),
            embedder: old.embedder.clone(),
            health: Default::default(),
        });
        self.contexts
            .renumber(old.generation, next, &format!("rolled back automatically: {reason}"));
        self.swap.roll_back_to_kept(info.clone())?;
        self.swap.recent_frames().clear();
        self.facts.set_models(RunningModels {
            generation: next,
            ..(*watching.before_facts).clone()
        });
        state.running = info;
        state.generation = next;
        tracing::warn!(
            generation = next,
            reason,
            "model set rolled back automatically in its watch period"
        );
        let store = ModelStore::new(self.config.model_store_path());
        let current = store.active()?.unwrap_or_default();
        if watching.came_by_rollback {
            store.activate(&watching.before, &current)?;
        } else {
            store.roll_back()?;
        }
        Ok(())
    }
}

/// The watch of one switch, on its own thread; ends with the watch period, or when the node is
/// gone.
fn watch(live: std::sync::Weak<LiveModels>, generation: u64) {
    loop {
        std::thread::sleep(WATCH_INTERVAL);
        let Some(live) = live.upgrade() else {
            return;
        };
        match live.watch_once(generation) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(%e, "model watch ended");
                return;
            }
        }
    }
}

impl Node {
    /// Starts everything; returns once the gRPC endpoint accepts connections. Must run inside a
    /// multi-threaded tokio runtime.
    pub async fn start(mut config: Config) -> Result<Node> {
        gst::init()?;
        crate::ingest::gst_log::install();
        let starting = starting_cameras(&mut config)?;
        apply_active_models(&mut config)?;
        // The config file is the operator's: a camera there that cannot start refuses the start,
        // at once. Cameras saved over gRPC must never keep the node from coming up: they start
        // as FAILED, with the reason.
        if starting.from_state_file.is_none()
            && let Some(problem) = starting.problems().into_iter().next()
        {
            return Err(problem);
        }
        let probation = std::mem::take(&mut config.camera_probation);
        // Certificates, keys and tokens are checked before anything binds or starts.
        let access = crate::access::Access::load(&config)?;
        let guards = Guards {
            grpc_tls: access.tls(&[crate::access::ALPN_GRPC])?,
            metrics_tls: match config.node.metrics_listen {
                Some(_) => access.tls(&[crate::access::ALPN_HTTP1])?,
                None => None,
            },
            tokens: access.tokens,
        };

        // Bind before any thread starts: a taken port then fails the start with nothing to undo.
        let listener = tokio::net::TcpListener::bind(config.node.grpc_listen)
            .await
            .map_err(|e| Error::io(format!("binding gRPC endpoint {}", config.node.grpc_listen), e))?;
        let grpc_addr = listener
            .local_addr()
            .map_err(|e| Error::io("gRPC endpoint address", e))?;
        let metrics_listener = match config.node.metrics_listen {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };

        let config = Arc::new(config);
        let loader = config.clone();
        let (models, analyzers) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut models = Models::load(&loader)?;
            let analyzers = (0..loader.inference.workers)
                .map(|_| {
                    let mut analyzer = models.analyzer(&loader)?;
                    analyzer.warm_up()?;
                    Ok(analyzer)
                })
                .collect::<Result<Vec<_>>>()?;
            models.release_file_bytes();
            // Loading verified each model in a session of its own, then dropped it, and warming
            // up allocated and freed every batch shape: hand those pages back to the system.
            crate::infer::release_free_memory();
            Ok((models, analyzers))
        })
        .await
        .map_err(|e| Error::Internal(format!("model loading task: {e}")))??;

        let cameras: Cameras = Arc::new(RwLock::new(Vec::new()));
        let metrics = Metrics::new(cameras.clone());
        let stop = Shutdown::new();
        // From here on, threads and tasks start: a failure stops and joins what already runs, so
        // that a failed start leaves no writer holding the log, no worker, no server behind it.
        let mut parts = Parts::new();
        let started = Self::start_parts(
            config.clone(),
            starting,
            probation,
            listener,
            metrics_listener,
            guards,
            models,
            analyzers,
            &cameras,
            &metrics,
            &stop,
            &mut parts,
        )
        .await;
        match started {
            Ok((metrics_addr, manager, queue, live)) => {
                tracing::info!(node = %config.node.id, %grpc_addr, metrics = ?metrics_addr,
                    cameras = config.cameras.len(), workers = config.inference.workers, "node started");
                let finished = tokio::spawn(run_until_stopped(Stopping {
                    stop: stop.clone(),
                    exit_when_cameras_end: config.node.exit_when_cameras_end,
                    manager,
                    parts,
                }));
                Ok(Node {
                    grpc_addr,
                    metrics_addr,
                    cameras,
                    metrics,
                    queue,
                    models: live,
                    stop,
                    finished,
                })
            }
            Err(err) => {
                tracing::info!("the start failed: stopping what had started");
                stop.trigger();
                if let Err(stopping) = parts.stop().await {
                    tracing::warn!(err = %stopping, "stopping after a failed start");
                }
                Err(err)
            }
        }
    }

    /// Snapshots and clips, if the node keeps video: its face detector is loaded here, so that a
    /// node that could not blur faces does not start.
    fn pixels_service(
        config: &Config,
        live: Arc<LiveFrames>,
        log: crate::log::LogReader,
        notices: tokio::sync::mpsc::Sender<crate::describe::ExportNotice>,
    ) -> Result<PixelsService> {
        let exports = match (&config.video, config.video_dir(), config.face_model_path()) {
            (Some(video), Some(dir), Some(face_model)) => {
                let environment = infer::environment(&config.resolve(&config.inference.onnxruntime_library))?;
                Some(Arc::new(VideoExports::new(dir, live, video, face_model, environment)?))
            }
            _ => None,
        };
        let slots = config.video.as_ref().map_or(1, |v| v.max_concurrent_exports);
        Ok(PixelsService::new(exports, slots, log, notices))
    }

    /// The part of [`start`](Self::start) that sets threads and tasks running, each recorded in
    /// `parts` as soon as it runs. Returns the metrics endpoint's address and the camera manager.
    #[allow(clippy::too_many_arguments)]
    async fn start_parts(
        config: Arc<Config>,
        starting: StartingCameras,
        probation: BTreeMap<String, Probation>,
        listener: tokio::net::TcpListener,
        metrics_listener: Option<tokio::net::TcpListener>,
        guards: Guards,
        models: Models,
        analyzers: Vec<Analyzer>,
        cameras: &Cameras,
        metrics: &Arc<Metrics>,
        stop: &Shutdown,
        parts: &mut Parts,
    ) -> Result<(Option<SocketAddr>, Arc<CameraManager>, Arc<FrameQueue>, Arc<LiveModels>)> {
        let log_path = config.log_path();
        let (log, mut appender) = {
            let (config, metrics) = (config.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || {
                Log::open(&log_path, &config.log, config.deliver.subscriber_buffer_frames, metrics)
            })
            .await
            .map_err(|e| Error::Internal(format!("log opening task: {e}")))??
        };
        let reader = log.reader();
        parts.log = Some(log);
        let queue = FrameQueue::new(config.inference.queue_frames_per_camera);
        parts.queue = Some(queue.clone());
        let run_id = now_unix_nanos() as u64;

        let contexts = ModelContexts::default();
        let first_set = models.set_info(&config, 0, "", &contexts)?;
        let describer = Describer::new(
            Origin {
                node_id: config.node.id.clone(),
                node_run_id: run_id,
            },
            contexts.clone(),
            config.describe.clone(),
            appender.take_resume_counters(),
        );
        let (notices_tx, notices_rx) = tokio::sync::mpsc::channel(EXPORT_NOTICES_QUEUED);
        let describer = describer.with_notices(notices_rx);
        // The frames each recording keeps until its ring has them, read by snapshots.
        let live_frames = Arc::new(LiveFrames::default());
        let pixels = Self::pixels_service(&config, live_frames.clone(), reader.clone(), notices_tx)?;
        let (results_tx, results_rx) = mpsc::sync_channel(config.inference.workers * 2);
        let (workers, swap) =
            infer::spawn_workers(analyzers, first_set.clone(), queue.clone(), results_tx, metrics.clone())?;
        parts.workers = workers;
        let facts = Arc::new(NodeFacts::new(
            config.node.id.clone(),
            run_id,
            now_unix_nanos(),
            cameras.clone(),
            models.running(0),
        ));
        let live = Arc::new_cyclic(|me| LiveModels {
            me: me.clone(),
            config: config.clone(),
            swap,
            contexts,
            facts: facts.clone(),
            state: std::sync::Mutex::new(SwitchState {
                generation: 0,
                running: first_set,
                watching: None,
            }),
        });
        // The appender moves into the describe thread; if that thread cannot start, it is dropped
        // with the closure, which lets the log's writer end.
        parts.describer_thread = Some({
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("describe".into())
                .spawn(move || describer.run(results_rx, &metrics, |d, counters| appender.append(d, counters)))
                .map_err(|e| Error::io("starting describe thread", e))?
        });

        let record = config
            .video
            .as_ref()
            .zip(config.video_dir())
            .map(|(video, dir)| RecordSettings::from_config(dir, video, live_frames));
        let manager = Arc::new(
            CameraManager::new(
                queue.clone(),
                config.base_dir.clone(),
                config.camera_state_path(),
                cameras.clone(),
            )
            .with_recording(record),
        );
        parts.manager = Some(manager.clone());
        // Servers first, so the node is reachable before the first descriptor exists.
        let reloadable: Vec<_> = [("grpc", &guards.grpc_tls), ("metrics", &guards.metrics_tls)]
            .into_iter()
            .filter_map(|(listener, tls)| Some((listener, tls.clone()?)))
            .collect();
        show_certificates(metrics, &reloadable);
        if !reloadable.is_empty() || guards.tokens.is_some() {
            let shown = metrics.clone();
            tokio::spawn(crate::access::keep_reloading(
                reloadable,
                guards.tokens.clone(),
                move |tls| show_certificates(&shown, tls),
                parts.servers_stop.clone(),
            ));
        }
        let guarded = crate::deliver::Guarded {
            tls: guards.grpc_tls,
            tokens: guards.tokens.clone(),
            sources: crate::deliver::SourcePolicy {
                admin: config.admin.clone(),
                base_dir: config.base_dir.clone(),
            },
        };
        if !config.push.is_empty() {
            let cursors = Arc::new(crate::deliver::push::PushCursors::load(config.push_state_path())?);
            // Push targets read to the end of the log, then stop with the servers.
            parts.push = crate::deliver::push::start(
                &config.push,
                |path| config.resolve(path),
                reader.clone(),
                facts.clone(),
                cursors,
                metrics,
                parts.push_stop.clone(),
            )?;
        }
        // The status page, on the HTTP listener beside /metrics.
        let page = metrics_listener.as_ref().map(|_| {
            crate::deliver::page::Page::new(
                facts.clone(),
                manager.clone(),
                guards.tokens.clone(),
                pixels.clone(),
                reader.clone(),
            )
        });
        parts.grpc = Some(tokio::spawn(crate::deliver::serve(
            listener,
            reader,
            Limits::from(&config.deliver),
            facts,
            metrics.clone(),
            manager.clone(),
            live.clone(),
            pixels,
            guarded,
            stop.clone(),
            parts.servers_stop.clone(),
        )));
        let metrics_addr = match metrics_listener {
            Some(listener) => {
                let bound = listener
                    .local_addr()
                    .map_err(|e| Error::io("metrics endpoint address", e))?;
                let node_metrics = metrics.clone();
                parts.metrics_server = Some(tokio::spawn(metrics::serve(
                    listener,
                    move || node_metrics.encode(),
                    page.map(|p| p.router()).unwrap_or_default(),
                    guards.metrics_tls,
                    guards.tokens,
                    parts.servers_stop.clone(),
                )));
                Some(bound)
            }
            None => None,
        };

        manager.start_configured(starting.resolved, probation)?;
        Ok((metrics_addr, manager, queue, live))
    }

    /// What a watchdog looks at, usable while [`wait`](Self::wait) holds the node.
    pub fn liveness(&self) -> Liveness {
        Liveness {
            queue: self.queue.clone(),
            cameras: self.cameras.clone(),
        }
    }

    /// Asks the node to stop; [`wait`](Self::wait) returns when it has.
    pub fn shutdown(&self) {
        self.stop.trigger();
    }

    pub fn stop_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    pub async fn wait(self) -> Result<()> {
        self.finished
            .await
            .map_err(|e| Error::Internal(format!("node task: {e}")))?
    }
}

/// Whether a running node's analysis path moves, and what it is doing, for systemd.
#[derive(Clone)]
pub struct Liveness {
    queue: Arc<FrameQueue>,
    cameras: Cameras,
}

impl Liveness {
    /// How long frames have waited for inference with none taken: `None` while the analysis
    /// path keeps up or has nothing to do (no camera, or cameras between frames).
    pub fn analysis_stalled(&self) -> Option<Duration> {
        self.queue.stalled(std::time::Instant::now())
    }

    /// One line for systemd's `STATUS=`: cameras streaming, frames analysed.
    pub fn status_line(&self) -> String {
        let cameras = self.cameras.read().unwrap_or_else(|p| p.into_inner());
        let streaming = cameras
            .iter()
            .filter(|c| c.condition().state == pb::CameraState::Streaming)
            .count();
        let analysed: u64 = cameras
            .iter()
            .map(|c| c.frames_analysed.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        format!(
            "{streaming} of {} cameras streaming, {analysed} frames analysed",
            cameras.len()
        )
    }
}

/// TLS and tokens of the listeners, loaded before anything starts.
struct Guards {
    grpc_tls: Option<Arc<crate::access::Tls>>,
    metrics_tls: Option<Arc<crate::access::Tls>>,
    tokens: Option<Arc<crate::access::Tokens>>,
}

fn show_certificates(metrics: &Metrics, tls: &[(&'static str, Arc<crate::access::Tls>)]) {
    for (listener, tls) in tls {
        metrics.tls_certificate(listener, tls.not_after_unix());
    }
}

/// Export records waiting for the describe stage; more are said in the node's log, not stored.
const EXPORT_NOTICES_QUEUED: usize = 256;

/// How long push targets may take to send the last records and get them acknowledged.
const PUSH_DRAIN: Duration = Duration::from_secs(8);

/// Waits for every task (their results are their own business: each logs what went wrong).
async fn join_tasks(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// How long the gRPC server may take to finish its open streams once the log is closed.
const SERVER_DRAIN: Duration = Duration::from_secs(10);

struct Stopping {
    stop: Shutdown,
    exit_when_cameras_end: bool,
    manager: Arc<CameraManager>,
    parts: Parts,
}

/// Everything a node sets running, recorded as it starts, so that the same ordered stop serves
/// both a node that ran and a start that failed half-way (whoever starts a thread or task owns
/// its end). `None` (or empty) is a part that never started.
struct Parts {
    manager: Option<Arc<CameraManager>>,
    queue: Option<Arc<FrameQueue>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Holds the log's appender; the log's writer ends once it has been joined.
    describer_thread: Option<std::thread::JoinHandle<()>>,
    log: Option<Log>,
    /// Ends the servers, once the log is closed.
    servers_stop: Shutdown,
    grpc: Option<tokio::task::JoinHandle<Result<()>>>,
    metrics_server: Option<tokio::task::JoinHandle<Result<()>>>,
    /// One task per push target; each ends by itself once the log is closed and what it sent
    /// is acknowledged, or at `push_stop`.
    push: Vec<tokio::task::JoinHandle<()>>,
    push_stop: Shutdown,
}

impl Parts {
    fn new() -> Parts {
        Parts {
            manager: None,
            queue: None,
            workers: Vec::new(),
            describer_thread: None,
            log: None,
            servers_stop: Shutdown::new(),
            grpc: None,
            metrics_server: None,
            push: Vec::new(),
            push_stop: Shutdown::new(),
        }
    }

    /// Stops what started, in order: cameras, then the queue and inference, then the describer
    /// (and with it the appender), then the log; then the servers, with a bounded drain.
    async fn stop(self) -> Result<()> {
        let Parts {
            manager,
            queue,
            workers,
            describer_thread,
            log,
            servers_stop,
            grpc,
            metrics_server,
            push,
            push_stop,
        } = self;
        tokio::task::spawn_blocking(move || {
            if let Some(manager) = manager {
                manager.stop_all();
            }
            if let Some(queue) = queue {
                queue.close();
            }
            for worker in workers {
                let _ = worker.join();
            }
            // The describer's appender goes with it: live readers end once they have read the rest.
            if let Some(describer_thread) = describer_thread {
                let _ = describer_thread.join();
            }
            if let Some(log) = log {
                log.close();
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("stopping threads: {e}")))?;
        // Push targets send the log's last records and wait for their acknowledgements (bounded
        // in each); one that cannot connect is stopped after this.
        let pushed = join_tasks(push);
        if tokio::time::timeout(PUSH_DRAIN, pushed).await.is_err() {
            tracing::warn!("push targets still busy at stop: the rest is sent at the next start");
        }
        push_stop.trigger();
        servers_stop.trigger();
        // Subscribers that still read get a moment to finish; one that stopped reading must not hold
        // the node (tonic's graceful stop would wait for its stream for ever).
        let served = match grpc {
            None => Ok(()),
            Some(mut grpc) => match tokio::time::timeout(SERVER_DRAIN, &mut grpc).await {
                Ok(served) => served.map_err(|e| Error::Internal(format!("gRPC task: {e}")))?,
                Err(_) => {
                    tracing::warn!(
                        seconds = SERVER_DRAIN.as_secs(),
                        "gRPC streams still open after the drain time: closed"
                    );
                    grpc.abort();
                    Ok(())
                }
            },
        };
        if let Some(server) = metrics_server {
            server
                .await
                .map_err(|e| Error::Internal(format!("metrics task: {e}")))??;
        }
        served
    }
}

async fn run_until_stopped(s: Stopping) -> Result<()> {
    loop {
        tokio::select! {
            () = s.stop.wait() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if s.exit_when_cameras_end && s.manager.all_ended() {
                    tracing::info!("every camera has ended");
                    break;
                }
            }
        }
    }
    // Stopping starts here whatever started it (a signal, or every camera ended): `stop` is
    // what turns health NOT_SERVING.
    s.stop.trigger();
    tracing::info!("stopping: cameras, then inference, then subscribers");
    let served = s.parts.stop().await;
    tracing::info!("stopped");
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_counts_the_days_a_certificate_has_left_and_refuses_an_expired_one() {
        let cert = std::path::Path::new("/etc/retina-edge/tls/node.pem");
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let fact = certificate_expiry(cert, 1_700_000_000 + 30 * 86_400 + 5, now).unwrap();
        assert!(
            fact.contains("valid until 2023-12-14T22:13:25Z (30 days left)"),
            "{fact}"
        );
        let problem = certificate_expiry(cert, 1_700_000_000 - 1, now)
            .unwrap_err()
            .to_string();
        assert!(
            problem.contains("node.pem expired at 2023-11-14T22:13:19Z") && problem.contains("renew"),
            "{problem}"
        );
    }
}
