//! The node's cameras as a set that changes at run time: add, update and remove one camera
//! without touching the others, and keep the set on disk so a restart keeps the changes.
//!
//! Every change is written to the camera state file *before* it takes effect: if the write
//! fails (full disk, read-only file system), the change is refused and nothing is lost or
//! half-applied.
//!
//! **Probation.** A camera added or changed at run time is written to the state file on
//! probation, and taken off once it has streamed a frame or failed cleanly (the node survived
//! it). If the node dies while a camera is on probation, the next start does not start that
//! camera: it is `FAILED` ("the node stopped while this camera was starting") until it is
//! changed or removed, and everything else starts. Without this, a source that crashed the
//! node would crash it again at every restart: under systemd's `Restart=`, a loop that only
//! editing the state file by hand could end.
//!
//! **Locks.** `entries` is never held while a camera's thread is joined: a change marks the
//! camera busy, lets go of the lock, stops and joins the old pipeline, then takes the lock
//! again and checks what changed meanwhile (gst-plugins-rs' rule). A camera thread takes the
//! lock itself, once, to leave probation. Cameras are launched under the lock, which is safe
//! because launching only spawns the camera's thread: its pipeline is built, run and torn down
//! on that thread, so no GStreamer call is made with the lock held. The node's stop loop polls
//! the lock (`all_ended`) from an async task, which therefore never waits behind a join.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::{
    CameraRunner, CameraSettings, CameraStatus, Cameras, Failure, FailureKind, FrameQueue, Settled, SourceUri,
    start_camera,
};
use crate::config::{CameraConfig, CameraPositionConfig, CameraState, Probation, write_atomically};
use crate::error::{Error, Result};
use crate::pb;
use crate::video::record::RecordSettings;

/// A change to one camera; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct CameraChange {
    pub uri: Option<String>,
    pub analysis_fps: Option<f64>,
    pub enabled: Option<bool>,
    pub position: Option<CameraPositionConfig>,
    /// Zones and lines, replacing the camera's; changing only these restarts nothing.
    pub counting: Option<crate::config::CountingPlaces>,
}

impl CameraChange {
    /// Whether the change leaves the camera's pipeline as it is.
    fn only_counting(&self) -> bool {
        self.uri.is_none() && self.analysis_fps.is_none() && self.enabled.is_none() && self.position.is_none()
    }
}

/// A camera the node starts with: its source, or why it has none.
pub struct StartingCamera {
    pub config: CameraConfig,
    pub source: Result<SourceUri>,
}

pub struct CameraManager {
    entries: Mutex<Entries>,
    /// Shared with metrics and the gRPC service, kept in step with `entries`.
    registry: Cameras,
    queue: Arc<FrameQueue>,
    base_dir: PathBuf,
    state_path: PathBuf,
    /// Tells one probation from the next of the same camera, so that a late "settled" of a
    /// replaced pipeline cannot end the probation of its successor.
    probations: AtomicU64,
    /// Where cameras keep their video, if the node keeps video.
    record: Option<RecordSettings>,
}

#[derive(Default)]
struct Entries {
    list: Vec<Entry>,
    /// Set by [`CameraManager::stop_all`] under the same lock: a change that arrives during
    /// shutdown would otherwise start a camera nobody joins.
    stopped: bool,
}

impl Entries {
    fn index_of(&self, id: &str) -> Result<usize> {
        self.list
            .iter()
            .position(|e| e.config.id == id)
            .ok_or_else(|| Error::NoSuchCamera(id.to_string()))
    }

    /// The camera, unless another request is changing it.
    fn idle_index_of(&self, id: &str) -> Result<usize> {
        let index = self.index_of(id)?;
        if self.list[index].busy {
            return Err(Error::CameraBusy(id.to_string()));
        }
        Ok(index)
    }

    /// The cameras to save, `changed` in place of the camera of its id.
    fn configs_with(&self, changed: &CameraConfig) -> Vec<CameraConfig> {
        self.saved()
            .map(|e| {
                if e.config.id == changed.id {
                    changed.clone()
                } else {
                    e.config.clone()
                }
            })
            .collect()
    }

    fn probation(&self) -> BTreeMap<String, Probation> {
        self.saved()
            .filter_map(|e| Some((e.config.id.clone(), e.probation.record()?)))
            .collect()
    }

    /// The probation records to save once camera `id` has `probation`.
    fn probation_with(&self, id: &str, probation: &ProbationState) -> BTreeMap<String, Probation> {
        let mut records = self.probation();
        records.remove(id);
        records.extend(probation.record().map(|r| (id.to_string(), r)));
        records
    }

    /// The cameras the state file lists: all but those being removed.
    fn saved(&self) -> impl Iterator<Item = &Entry> {
        self.list.iter().filter(|e| !e.removing)
    }

    fn saved_configs(&self) -> Vec<CameraConfig> {
        self.saved().map(|e| e.config.clone()).collect()
    }
}

struct Entry {
    config: CameraConfig,
    status: Arc<CameraStatus>,
    /// `None` while disabled or failed for good.
    runner: Option<CameraRunner>,
    probation: ProbationState,
    /// A request is stopping this camera's pipeline, with the lock released.
    busy: bool,
    /// Removed from the state file; listed until its pipeline has stopped.
    removing: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum ProbationState {
    Clear,
    Starting {
        probation: u64,
        since: String,
        /// The node is stopping cleanly: not a crash, start it again next time.
        stopped_cleanly: bool,
    },
    /// The node stopped while it was starting; not started until changed.
    Failed {
        since: String,
        reason: String,
    },
}

impl ProbationState {
    fn record(&self) -> Option<Probation> {
        match self {
            ProbationState::Clear => None,
            ProbationState::Starting {
                since, stopped_cleanly, ..
            } => Some(Probation {
                since: since.clone(),
                failed: None,
                stopped_cleanly: *stopped_cleanly,
            }),
            ProbationState::Failed { since, reason } => Some(Probation {
                since: since.clone(),
                failed: Some(reason.clone()),
                stopped_cleanly: false,
            }),
        }
    }
}

impl CameraManager {
    pub fn new(queue: Arc<FrameQueue>, base_dir: PathBuf, state_path: PathBuf, registry: Cameras) -> CameraManager {
        CameraManager {
            entries: Mutex::new(Entries::default()),
            registry,
            queue,
            base_dir,
            state_path,
            probations: AtomicU64::new(0),
            record: None,
        }
    }

    /// Cameras started from here on keep their video as `record` says.
    pub fn with_recording(mut self, record: Option<RecordSettings>) -> CameraManager {
        self.record = record;
        self
    }

    /// Starts the cameras the node was configured with. A camera left on probation by the
    /// previous run, or whose source cannot be resolved any more, is listed as `FAILED`, and
    /// the rest start. If a camera cannot be launched (its thread cannot start), the cameras this
    /// call launched before it are stopped and joined, and none of them is listed: a failed start
    /// leaves nothing running.
    pub fn start_configured(
        self: &Arc<Self>,
        cameras: Vec<StartingCamera>,
        mut probation: BTreeMap<String, Probation>,
    ) -> Result<()> {
        let mut entries = self.lock_for_change()?;
        let first = entries.list.len();
        // Whether probation records changed, so that the file says the same as the node.
        let mut changed = false;
        for StartingCamera { config, source } in cameras {
            let status = Arc::new(CameraStatus::new(config.id.clone(), settings(&config, &source)));
            let mut entry = Entry {
                config,
                status,
                runner: None,
                probation: ProbationState::Clear,
                busy: false,
                removing: false,
            };
            match probation.remove(&entry.config.id) {
                Some(record) if record.stopped_cleanly && record.failed.is_none() => {
                    // Interrupted by a clean stop, not a crash: try again, still on probation.
                    entry.probation = ProbationState::Starting {
                        probation: self.probations.fetch_add(1, Ordering::Relaxed),
                        since: record.since,
                        stopped_cleanly: false,
                    };
                    changed = true;
                }
                Some(record) => {
                    let reason = record.failed.unwrap_or_else(|| {
                        changed = true;
                        format!(
                            "the node stopped while this camera was starting (changed at {}); it is not \
                             started until it is updated or removed",
                            record.since
                        )
                    });
                    tracing::error!(camera = %entry.config.id, %reason, "camera not started: it was on probation");
                    entry.status.fail(
                        pb::CameraState::Failed,
                        &Failure::new(FailureKind::CrashedOnProbation, reason.clone()),
                    );
                    entry.probation = ProbationState::Failed {
                        since: record.since,
                        reason,
                    };
                    entries.list.push(entry);
                    continue;
                }
                None => {}
            }
            match source {
                Ok(source) => {
                    if let Err(err) = self.launch(&mut entry, source) {
                        let launched: Vec<CameraRunner> = entries
                            .list
                            .drain(first..)
                            .filter_map(|mut e| e.runner.take())
                            .collect();
                        self.publish(&entries.list);
                        // Without the lock: a camera thread may take it on its way out.
                        drop(entries);
                        stop_and_join(launched);
                        return Err(err);
                    }
                }
                Err(err) => {
                    let kind = match &err {
                        Error::UnsupportedUri { reason, .. } if reason.contains("No such file") => {
                            FailureKind::NotFound
                        }
                        _ => FailureKind::NotMedia,
                    };
                    let message = format!("{err}; update the camera to try again");
                    entry.status.fail(pb::CameraState::Failed, &Failure::new(kind, message));
                }
            }
            entries.list.push(entry);
        }
        if changed {
            // A reason is kept, so that the next start says the same and does not start it.
            if let Err(err) = self.persist(entries.saved_configs(), entries.probation()) {
                tracing::warn!(%err, "could not save which cameras failed on probation");
            }
        }
        self.publish(&entries.list);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cameras, for a change; refused once the node is stopping.
    fn lock_for_change(&self) -> Result<MutexGuard<'_, Entries>> {
        let entries = self.lock();
        if entries.stopped {
            return Err(Error::ShuttingDown);
        }
        Ok(entries)
    }

    /// A fresh probation for a camera that is about to start after a change (none if disabled).
    fn new_probation(&self, config: &CameraConfig) -> ProbationState {
        if !config.enabled {
            return ProbationState::Clear;
        }
        ProbationState::Starting {
            probation: self.probations.fetch_add(1, Ordering::Relaxed),
            since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            stopped_cleanly: false,
        }
    }

    /// Starts the camera if enabled; ends its probation when it has settled. Called with `entries`
    /// held: `start_camera` only spawns the camera's thread, so nothing here waits on GStreamer.
    fn launch(self: &Arc<Self>, entry: &mut Entry, source: SourceUri) -> Result<()> {
        entry.status.set_settings(settings(&entry.config, &Ok(source.clone())));
        if !entry.config.enabled {
            entry.status.set_state(pb::CameraState::Stopped, None);
            return Ok(());
        }
        let settled = match &entry.probation {
            ProbationState::Starting { probation, .. } => {
                let (manager, id, probation) = (Arc::downgrade(self), entry.config.id.clone(), *probation);
                Settled::new(move || settle(&manager, &id, probation))
            }
            _ => Settled::default(),
        };
        entry.runner = Some(start_camera(
            &entry.config,
            source,
            entry.status.clone(),
            self.queue.clone(),
            settled,
            self.record.clone(),
        )?);
        Ok(())
    }

    fn publish(&self, entries: &[Entry]) {
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = entries.iter().map(|e| e.status.clone()).collect();
    }

    fn persist(&self, cameras: Vec<CameraConfig>, probation: BTreeMap<String, Probation>) -> Result<()> {
        let state = CameraState { cameras, probation };
        let text = toml::to_string(&state).map_err(|e| Error::Internal(format!("encoding camera state: {e}")))?;
        let header = "# Cameras as changed at run time over gRPC; replaces the config file's [[cameras]].\n";
        write_atomically(&self.state_path, &format!("{header}{text}"))
    }

    pub fn add(self: &Arc<Self>, config: CameraConfig) -> Result<Arc<CameraStatus>> {
        config.validate().map_err(invalid)?;
        let source = SourceUri::resolve(&config.uri, &self.base_dir)?;
        let mut entries = self.lock_for_change()?;
        match entries.list.iter().find(|e| e.config.id == config.id) {
            Some(old) if old.removing => return Err(Error::CameraBusy(config.id)),
            Some(_) => return Err(Error::CameraExists(config.id)),
            None => {}
        }
        let probation = self.new_probation(&config);
        let records = entries.probation_with(&config.id, &probation);
        let mut configs = entries.saved_configs();
        configs.push(config.clone());
        self.persist(configs, records)?;
        let status = Arc::new(CameraStatus::new(
            config.id.clone(),
            settings(&config, &Ok(source.clone())),
        ));
        let mut entry = Entry {
            config,
            status: status.clone(),
            runner: None,
            probation,
            busy: false,
            removing: false,
        };
        let launched = self.launch(&mut entry, source);
        entries.list.push(entry);
        self.publish(&entries.list);
        launched?;
        tracing::info!(camera = %status.id, "camera added");
        Ok(status)
    }

    pub fn update(self: &Arc<Self>, id: &str, change: CameraChange) -> Result<Arc<CameraStatus>> {
        let mut entries = self.lock_for_change()?;
        let index = entries.idle_index_of(id)?;
        let mut config = entries.list[index].config.clone();
        let only_counting = change.only_counting();
        if let Some(uri) = change.uri {
            config.uri = uri;
        }
        if let Some(fps) = change.analysis_fps {
            config.analysis_fps = fps;
        }
        if let Some(enabled) = change.enabled {
            config.enabled = enabled;
        }
        if let Some(position) = change.position {
            config.position = Some(position);
        }
        if let Some(places) = change.counting {
            config.zones = places.zones;
            config.lines = places.lines;
        }
        config.validate().map_err(invalid)?;
        if only_counting {
            self.persist(entries.configs_with(&config), entries.probation())?;
            let entry = &mut entries.list[index];
            let mut settings = entry.status.settings();
            settings.counting = counting_places(&config);
            entry.status.set_settings(settings);
            entry.config = config;
            tracing::info!(camera = %id, zones = entry.config.zones.len(), lines = entry.config.lines.len(),
                "camera's zones and lines changed");
            return Ok(entry.status.clone());
        }
        let source = SourceUri::resolve(&config.uri, &self.base_dir)?;
        let probation = self.new_probation(&config);
        let records = entries.probation_with(id, &probation);
        self.persist(entries.configs_with(&config), records)?;

        let entry = &mut entries.list[index];
        entry.config = config;
        entry.probation = probation;
        stop_unlocked(entries, index);

        let mut entries = self.lock();
        let index = entries.index_of(id)?;
        let stopped = entries.stopped;
        let entry = &mut entries.list[index];
        entry.busy = false;
        if stopped {
            return Err(Error::ShuttingDown);
        }
        self.launch(entry, source)?;
        let status = entry.status.clone();
        self.publish(&entries.list);
        tracing::info!(camera = %status.id, "camera updated");
        Ok(status)
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        let mut entries = self.lock_for_change()?;
        let index = entries.idle_index_of(id)?;
        let configs = entries
            .saved()
            .filter(|e| e.config.id != id)
            .map(|e| e.config.clone())
            .collect();
        let mut records = entries.probation();
        records.remove(id);
        self.persist(configs, records)?;
        // The entry stays, busy, until its pipeline has stopped: a camera added under the same id
        // meanwhile would otherwise share its queue lane with the old one's last frames.
        entries.list[index].removing = true;
        stop_unlocked(entries, index);
        // Frames it left waiting would otherwise be analysed for a camera that is gone.
        self.queue.remove_lane(id);
        let mut entries = self.lock();
        let index = entries.index_of(id)?;
        let old = entries.list.remove(index);
        old.status.set_state(pb::CameraState::Stopped, None);
        self.publish(&entries.list);
        tracing::info!(camera = %id, "camera removed");
        Ok(())
    }

    /// True when no camera runs any more (files ended, all disabled).
    pub fn all_ended(&self) -> bool {
        self.lock()
            .list
            .iter()
            .all(|e| !e.busy && e.runner.as_ref().is_none_or(CameraRunner::is_finished))
    }

    /// Stops every camera and waits for their threads.
    pub fn stop_all(&self) {
        let mut entries = self.lock();
        entries.stopped = true;
        let runners: Vec<CameraRunner> = entries.list.iter_mut().filter_map(|e| e.runner.take()).collect();
        drop(entries);
        stop_and_join(runners);
        // A clean stop is not a crash: cameras still on probation start again next time.
        let mut entries = self.lock();
        let mut interrupted = false;
        for entry in &mut entries.list {
            if let ProbationState::Starting { stopped_cleanly, .. } = &mut entry.probation {
                *stopped_cleanly = true;
                interrupted = true;
            }
        }
        if interrupted && let Err(err) = self.persist(entries.saved_configs(), entries.probation()) {
            tracing::warn!(%err, "could not save that the node stopped cleanly; cameras on probation will not start");
        }
    }
}

/// Stops every runner, then waits for each: they wind down together rather than one after
/// another. Called without the lock (see "Locks" above).
fn stop_and_join(runners: Vec<CameraRunner>) {
    for runner in &runners {
        runner.stop();
    }
    for runner in runners {
        runner.join();
    }
}

/// Marks the camera busy, lets go of the lock, and stops and joins its pipeline: a camera
/// thread may need the lock on its way out (to leave probation).
fn stop_unlocked(mut entries: MutexGuard<'_, Entries>, index: usize) {
    let entry = &mut entries.list[index];
    entry.busy = true;
    let old = entry.runner.take();
    drop(entries);
    if let Some(old) = old {
        old.stop();
        old.join();
    }
}

/// Ends a camera's probation: it streamed or failed cleanly. Runs on the camera's thread.
fn settle(manager: &Weak<CameraManager>, id: &str, probation: u64) {
    let Some(manager) = manager.upgrade() else {
        return;
    };
    let mut entries = manager.lock();
    // A camera being changed or removed is not settled by its old pipeline's end.
    let Some(entry) = entries.list.iter_mut().find(|e| e.config.id == id && !e.busy) else {
        return;
    };
    if !matches!(entry.probation, ProbationState::Starting { probation: p, .. } if p == probation) {
        return;
    }
    entry.probation = ProbationState::Clear;
    let configs = entries.saved_configs();
    // A failed write leaves the camera on probation on disk: after a crash it would not be
    // started, which is the safe side.
    match manager.persist(configs, entries.probation()) {
        Ok(()) => tracing::debug!(camera = %id, "camera off probation"),
        Err(err) => tracing::warn!(camera = %id, %err, "could not save that the camera left probation"),
    }
}

fn settings(config: &CameraConfig, source: &Result<SourceUri>) -> CameraSettings {
    CameraSettings {
        uri_redacted: match source {
            Ok(source) => source.redacted.clone(),
            Err(_) => super::redact_uri(&config.uri),
        },
        analysis_fps: config.analysis_fps,
        decode: config.decode,
        position: config.position.as_ref().map(position_message),
        enabled: config.enabled,
        counting: counting_places(config),
    }
}

fn counting_places(config: &CameraConfig) -> Arc<crate::config::CountingPlaces> {
    Arc::new(crate::config::CountingPlaces {
        zones: config.zones.clone(),
        lines: config.lines.clone(),
    })
}

fn invalid(message: String) -> Error {
    Error::InvalidCamera(message)
}

pub fn position_message(p: &CameraPositionConfig) -> pb::CameraPosition {
    pb::CameraPosition {
        latitude: p.latitude,
        longitude: p.longitude,
        heading_degrees: p.heading_degrees,
        description: p.description.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_change_is_taken_once_the_cameras_are_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("clip.mp4");
        std::fs::write(&clip, b"not started: the camera is disabled").unwrap();
        let state_path = dir.path().join("cameras.toml");
        let manager = Arc::new(CameraManager::new(
            FrameQueue::new(2),
            dir.path().into(),
            state_path.clone(),
            Cameras::default(),
        ));
        let mut camera = CameraConfig::new("north", clip.display().to_string());
        camera.enabled = false;
        manager.add(camera.clone()).unwrap();
        let saved = std::fs::read_to_string(&state_path).unwrap();

        manager.stop_all();
        camera.id = "south".into();
        assert!(matches!(manager.add(camera), Err(Error::ShuttingDown)));
        let change = CameraChange {
            enabled: Some(true),
            ..Default::default()
        };
        assert!(matches!(manager.update("north", change), Err(Error::ShuttingDown)));
        assert!(matches!(manager.remove("north"), Err(Error::ShuttingDown)));
        assert_eq!(
            std::fs::read_to_string(&state_path).unwrap(),
            saved,
            "nothing persisted"
        );
    }

    fn manager_in(dir: &std::path::Path) -> Arc<CameraManager> {
        Arc::new(CameraManager::new(
            FrameQueue::new(2),
            dir.into(),
            dir.join("cameras.toml"),
            Cameras::default(),
        ))
    }

    #[test]
    fn a_camera_being_changed_refuses_other_changes_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("clip.mp4");
        std::fs::write(&clip, b"not started: the camera is disabled").unwrap();
        let manager = manager_in(dir.path());
        let mut camera = CameraConfig::new("north", clip.display().to_string());
        camera.enabled = false;
        manager.add(camera).unwrap();
        manager.lock().list[0].busy = true;
        let change = CameraChange {
            analysis_fps: Some(1.0),
            ..Default::default()
        };
        assert!(matches!(
            manager.update("north", change.clone()),
            Err(Error::CameraBusy(_))
        ));
        assert!(matches!(manager.remove("north"), Err(Error::CameraBusy(_))));
        manager.lock().list[0].busy = false;
        manager.update("north", change).unwrap();
        manager.remove("north").unwrap();
    }

    #[test]
    fn a_camera_leaves_probation_once_it_has_failed_cleanly() {
        gstreamer::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.mp4");
        std::fs::write(&garbage, vec![0x5a_u8; 64 * 1024]).unwrap();
        let manager = manager_in(dir.path());
        let state_path = dir.path().join("cameras.toml");
        manager
            .add(CameraConfig::new("odd", garbage.display().to_string()))
            .unwrap();
        let saved = std::fs::read_to_string(&state_path).unwrap();
        assert!(saved.contains("[probation.odd]"), "{saved}");

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // The camera leaves probation (and says so on disk) before it records its failure.
        while std::fs::read_to_string(&state_path).unwrap().contains("probation")
            || manager.lock().list[0].status.condition().failure.is_none()
        {
            assert!(std::time::Instant::now() < deadline, "still on probation");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let condition = manager.lock().list[0].status.condition();
        assert_eq!(condition.failure, Some(FailureKind::NotMedia), "{condition:?}");
        manager.stop_all();
        let saved = std::fs::read_to_string(&state_path).unwrap();
        assert!(
            saved.contains("id = \"odd\"") && !saved.contains("probation"),
            "{saved}"
        );
    }

    #[test]
    fn a_clean_stop_is_no_crash_for_a_camera_on_probation() {
        gstreamer::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Accepts the connection and never answers: the camera stays on probation.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("rtsp://127.0.0.1:{}/cam", silent.local_addr().unwrap().port());
        let camera = CameraConfig::new("slow", uri);
        let manager = manager_in(dir.path());
        manager.add(camera.clone()).unwrap();
        manager.stop_all();
        let text = std::fs::read_to_string(dir.path().join("cameras.toml")).unwrap();
        let state: CameraState = toml::from_str(&text).unwrap();
        assert!(state.probation["slow"].stopped_cleanly, "{text}");

        // The next start starts it, still on probation; a crash now would quarantine it.
        let manager = manager_in(dir.path());
        let source = SourceUri::resolve(&camera.uri, dir.path());
        manager
            .start_configured(vec![StartingCamera { config: camera, source }], state.probation)
            .unwrap();
        let entries = manager.lock();
        assert!(entries.list[0].runner.is_some(), "started again");
        assert!(
            matches!(
                entries.list[0].probation,
                ProbationState::Starting {
                    stopped_cleanly: false,
                    ..
                }
            ),
            "{:?}",
            entries.list[0].probation
        );
        drop(entries);
        let text = std::fs::read_to_string(dir.path().join("cameras.toml")).unwrap();
        assert!(
            text.contains("[probation.slow]") && !text.contains("stopped_cleanly"),
            "{text}"
        );
        manager.stop_all();
    }
}
