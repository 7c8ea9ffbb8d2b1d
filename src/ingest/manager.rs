//! The node's cameras as a set that changes at run time: add, update and remove one camera
//! without touching the others, and keep the set on disk so a restart keeps the changes.
//!
//! Every change is written to the camera state file *before* it takes effect: if the write
//! fails (full disk, read-only file system), the change is refused and nothing is lost or
//! half-applied.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{CameraRunner, CameraSettings, CameraStatus, Cameras, FrameQueue, SourceUri, start_camera};
use crate::config::{CameraConfig, CameraPositionConfig, CameraState, write_atomically};
use crate::error::{Error, Result};
use crate::pb;

/// A change to one camera; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct CameraChange {
    pub uri: Option<String>,
    pub analysis_fps: Option<f64>,
    pub enabled: Option<bool>,
    pub position: Option<CameraPositionConfig>,
}

pub struct CameraManager {
    entries: Mutex<Entries>,
    /// Shared with metrics and the gRPC service, kept in step with `entries`.
    registry: Cameras,
    queue: Arc<FrameQueue>,
    base_dir: PathBuf,
    state_path: PathBuf,
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
}

struct Entry {
    config: CameraConfig,
    status: Arc<CameraStatus>,
    /// `None` while disabled.
    runner: Option<CameraRunner>,
}

impl CameraManager {
    pub fn new(queue: Arc<FrameQueue>, base_dir: PathBuf, state_path: PathBuf, registry: Cameras) -> CameraManager {
        CameraManager {
            entries: Mutex::new(Entries::default()),
            registry,
            queue,
            base_dir,
            state_path,
        }
    }

    /// Starts the configured cameras (URIs resolved by the caller); nothing is persisted.
    pub fn start_configured(&self, cameras: Vec<(CameraConfig, SourceUri)>) -> Result<()> {
        let mut entries = self.lock_for_change()?;
        for (config, source) in cameras {
            let entry = self.launch(config, source, None)?;
            entries.list.push(entry);
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

    /// Starts the camera if enabled; `status` continues an existing camera's counters.
    fn launch(&self, config: CameraConfig, source: SourceUri, status: Option<Arc<CameraStatus>>) -> Result<Entry> {
        let settings = CameraSettings {
            uri_redacted: source.redacted.clone(),
            analysis_fps: config.analysis_fps,
            position: config.position.as_ref().map(position_message),
            enabled: config.enabled,
        };
        let status = match status {
            Some(status) => {
                status.set_settings(settings);
                status
            }
            None => Arc::new(CameraStatus::new(config.id.clone(), settings)),
        };
        let runner = if config.enabled {
            Some(start_camera(&config, source, status.clone(), self.queue.clone())?)
        } else {
            status.set_state(pb::CameraState::Stopped, None);
            None
        };
        Ok(Entry { config, status, runner })
    }

    fn publish(&self, entries: &[Entry]) {
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = entries.iter().map(|e| e.status.clone()).collect();
    }

    fn persist(&self, configs: impl Iterator<Item = CameraConfig>) -> Result<()> {
        let state = CameraState {
            cameras: configs.collect(),
        };
        let text = toml::to_string(&state).map_err(|e| Error::Internal(format!("encoding camera state: {e}")))?;
        let header = "# Cameras as changed at run time over gRPC; replaces the config file's [[cameras]].\n";
        write_atomically(&self.state_path, &format!("{header}{text}"))
    }

    pub fn add(&self, config: CameraConfig) -> Result<Arc<CameraStatus>> {
        config.validate().map_err(invalid)?;
        let source = SourceUri::resolve(&config.uri, &self.base_dir)?;
        let mut entries = self.lock_for_change()?;
        if entries.list.iter().any(|e| e.config.id == config.id) {
            return Err(Error::CameraExists(config.id));
        }
        self.persist(entries.list.iter().map(|e| e.config.clone()).chain([config.clone()]))?;
        let entry = self.launch(config, source, None)?;
        let status = entry.status.clone();
        entries.list.push(entry);
        self.publish(&entries.list);
        tracing::info!(camera = %status.id, "camera added");
        Ok(status)
    }

    pub fn update(&self, id: &str, change: CameraChange) -> Result<Arc<CameraStatus>> {
        let mut entries = self.lock_for_change()?;
        let index = entries.index_of(id)?;
        let entries = &mut entries.list;
        let mut config = entries[index].config.clone();
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
        config.validate().map_err(invalid)?;
        let source = SourceUri::resolve(&config.uri, &self.base_dir)?;
        let others = entries
            .iter()
            .enumerate()
            .map(|(i, e)| if i == index { config.clone() } else { e.config.clone() });
        self.persist(others)?;

        let old = entries.remove(index);
        if let Some(runner) = old.runner {
            runner.stop();
            runner.join();
        }
        let entry = self.launch(config, source, Some(old.status))?;
        let status = entry.status.clone();
        entries.insert(index, entry);
        self.publish(entries);
        tracing::info!(camera = %status.id, "camera updated");
        Ok(status)
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        let mut entries = self.lock_for_change()?;
        let index = entries.index_of(id)?;
        let entries = &mut entries.list;
        self.persist(entries.iter().filter(|e| e.config.id != id).map(|e| e.config.clone()))?;
        let old = entries.remove(index);
        if let Some(runner) = old.runner {
            runner.stop();
            runner.join();
        }
        // Frames it left waiting would otherwise be analysed for a camera that is gone.
        self.queue.remove_lane(id);
        old.status.set_state(pb::CameraState::Stopped, None);
        self.publish(entries);
        tracing::info!(camera = %id, "camera removed");
        Ok(())
    }

    /// True when no camera runs any more (files ended, all disabled).
    pub fn all_ended(&self) -> bool {
        self.lock()
            .list
            .iter()
            .all(|e| e.runner.as_ref().is_none_or(CameraRunner::is_finished))
    }

    /// Stops every camera and waits for their threads.
    pub fn stop_all(&self) {
        let mut entries = self.lock();
        entries.stopped = true;
        let runners: Vec<CameraRunner> = entries.list.iter_mut().filter_map(|e| e.runner.take()).collect();
        for runner in &runners {
            runner.stop();
        }
        for runner in runners {
            runner.join();
        }
    }
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
        let manager = CameraManager::new(
            FrameQueue::new(2),
            dir.path().into(),
            state_path.clone(),
            Cameras::default(),
        );
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
}
