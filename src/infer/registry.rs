//! The node's model store: every model installed on the node, kept by content hash under the
//! state directory with its manifest and the files the manifest names, several versions side by
//! side so that going back is a matter of naming an older one. The active set (which detector and
//! which embedder the node runs) is a small file of its own, so it survives restarts, and keeps
//! the sets before it for rollback.
//!
//! ```text
//! <store>/<sha256>/manifest.toml   the manifest, naming files beside it by their own names
//! <store>/<sha256>/<model>.onnx    (and the projection or priors the manifest names)
//! <store>/active.toml              detector and embedder hashes, then the previous sets
//! ```
//!
//! The hash is over the manifest as stored and every file it names (sorted by name), so the same
//! ONNX file with other thresholds is another model.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::{DecoderSpec, Manifest};
use super::signing::VerifyingKey;
use crate::error::{Error, Result};

/// Sets kept for rollback beyond the active one.
const HISTORY: usize = 8;
const ACTIVE_FILE: &str = "active.toml";
const MANIFEST_FILE: &str = "manifest.toml";
const SIGNATURE_FILE: &str = "signature";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Detector,
    Embedder,
}

impl Role {
    pub fn of(manifest: &Manifest) -> Role {
        match manifest.decoder {
            DecoderSpec::Detector { .. } => Role::Detector,
            DecoderSpec::Embedding { .. } => Role::Embedder,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Detector => "detector",
            Role::Embedder => "embedder",
        }
    }
}

/// A model in the store.
#[derive(Debug, Clone)]
pub struct StoredModel {
    /// Lower-case hex sha256 of the package (manifest and files); its directory's name.
    pub hash: String,
    pub id: String,
    pub version: String,
    pub decoder: String,
    pub role: Role,
    pub manifest_path: PathBuf,
}

/// Which models the node runs: hashes of stored models.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSet {
    pub detector: String,
    /// Empty: no embedder.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub embedder: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActiveFile {
    #[serde(flatten)]
    active: ModelSet,
    /// The sets active before, newest first.
    #[serde(default)]
    previous: Vec<ModelSet>,
}

#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    /// The store in `dir`; created on the first install.
    pub fn new(dir: PathBuf) -> ModelStore {
        ModelStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn error(&self, message: String) -> Error {
        Error::ModelStore {
            path: self.dir.clone(),
            message,
        }
    }

    /// Copies the model a manifest describes into the store; returns it (the one already there
    /// if it was installed before). The manifest is checked first, as the node checks it; the
    /// model file is not opened here (activation does that, with ONNX Runtime). With a `key`,
    /// the package must carry a signature by it (`<manifest>.sig`), which is stored with it.
    pub fn install(&self, manifest_path: &Path, key: Option<&VerifyingKey>) -> Result<StoredModel> {
        self.install_package(Package::read(manifest_path)?, manifest_path, key)
    }

    /// [`install`](Self::install) for a package received from afar: the manifest may name only
    /// files beside it, so that it cannot pull other files of the node into the store.
    pub fn install_received(&self, manifest_path: &Path, key: Option<&VerifyingKey>) -> Result<StoredModel> {
        let package = Package::read(manifest_path)?;
        let beside = manifest_path.parent();
        if let Some(outside) = package.sources.iter().find(|source| source.parent() != beside) {
            return Err(Error::Manifest {
                path: manifest_path.to_path_buf(),
                message: format!(
                    "names {}, which is not one of the files sent with it",
                    crate::error::quoted(&outside.display().to_string())
                ),
            });
        }
        self.install_package(package, manifest_path, key)
    }

    fn install_package(
        &self,
        package: Package,
        manifest_path: &Path,
        key: Option<&VerifyingKey>,
    ) -> Result<StoredModel> {
        let signature = match key {
            None => None,
            Some(key) => {
                let at = signature_path(manifest_path);
                let signature = std::fs::read(&at).map_err(|e| {
                    Error::Access(format!(
                        "models must be signed on this node, and {} cannot be read: {e}",
                        at.display()
                    ))
                })?;
                key.verify(&package.hash, &signature, &at)?;
                Some(signature)
            }
        };
        let dir = self.dir.join(&package.hash);
        if !dir.join(MANIFEST_FILE).is_file() {
            self.write_package(&package)?;
        }
        if let Some(signature) = signature {
            std::fs::write(dir.join(SIGNATURE_FILE), signature)
                .map_err(|e| Error::io(format!("storing the signature in {}", dir.display()), e))?;
        }
        self.get(&package.hash)
    }

    /// Checks the signature stored with a model.
    pub fn verify_stored(&self, hash: &str, key: &VerifyingKey) -> Result<()> {
        let at = self.dir.join(hash).join(SIGNATURE_FILE);
        let signature = std::fs::read(&at).map_err(|e| {
            Error::Access(format!(
                "model {} carries no signature ({e})",
                &hash[..12.min(hash.len())]
            ))
        })?;
        key.verify(hash, &signature, &at)
    }

    /// Writes the package into a temporary directory, then renames it into place: a crash leaves
    /// either nothing or the whole model.
    fn write_package(&self, package: &Package) -> Result<()> {
        let (hash, manifest, files) = (&package.hash, &package.manifest, &package.files);
        let io = |what: String| move |e| Error::io(what, e);
        std::fs::create_dir_all(&self.dir).map_err(io(format!("creating {}", self.dir.display())))?;
        let tmp = self.dir.join(format!(".{hash}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(format!("removing {}", tmp.display())))?;
        }
        std::fs::create_dir(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let write = |name: &str, bytes: &[u8]| -> Result<()> {
            use std::io::Write;
            let path = tmp.join(name);
            let mut file = std::fs::File::create(&path).map_err(io(format!("creating {}", path.display())))?;
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(io(format!("writing {}", path.display())))
        };
        for (name, bytes) in files {
            write(name, bytes)?;
        }
        write(MANIFEST_FILE, manifest.as_bytes())?;
        let target = self.dir.join(hash);
        std::fs::rename(&tmp, &target).map_err(io(format!("moving {} into place", target.display())))?;
        // The rename is durable once the directory is; a failure here loses nothing written.
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// The stored model with this hash (or the one hash that starts with it, at least 8 digits).
    pub fn get(&self, hash: &str) -> Result<StoredModel> {
        let hash = self.resolve(hash)?;
        let manifest_path = self.dir.join(&hash).join(MANIFEST_FILE);
        let manifest = Manifest::load(&manifest_path)?;
        Ok(StoredModel {
            id: manifest.model.id.clone(),
            version: manifest.model.version.clone(),
            decoder: manifest.decoder.kind().to_string(),
            role: Role::of(&manifest),
            manifest_path,
            hash,
        })
    }

    pub fn resolve(&self, prefix: &str) -> Result<String> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < 8 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error(format!(
                "{} is not a model hash (at least 8 hex digits)",
                crate::error::quoted(&prefix)
            )));
        }
        let matches: Vec<String> = self.hashes()?.into_iter().filter(|h| h.starts_with(&prefix)).collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(self.error(format!("no model {prefix} in the store"))),
            _ => Err(self.error(format!("{prefix} names {} models; give more digits", matches.len()))),
        }
    }

    fn hashes(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", self.dir.display()), e)),
        };
        let mut hashes: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        hashes.sort();
        Ok(hashes)
    }

    /// Every stored model that loads, and for each one that does not, why.
    pub fn list(&self) -> Result<Vec<std::result::Result<StoredModel, Error>>> {
        Ok(self.hashes()?.iter().map(|h| self.get(h)).collect())
    }

    /// The active set, if one was ever activated.
    pub fn active(&self) -> Result<Option<ModelSet>> {
        Ok(self.read_active()?.map(|f| f.active))
    }

    fn read_active(&self) -> Result<Option<ActiveFile>> {
        let path = self.dir.join(ACTIVE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map(Some).map_err(|e| Error::Config {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Makes `set` the active set, the one before it first in the history. Both models must be
    /// in the store, in their roles.
    pub fn activate(&self, set: &ModelSet, current: &ModelSet) -> Result<ModelSet> {
        let set = &self.resolve_set(set)?;
        self.check_set(set)?;
        let mut file = self.read_active()?.unwrap_or_default();
        if file.active.detector.is_empty() {
            file.active = current.clone();
        }
        if file.active != *set {
            let before = std::mem::replace(&mut file.active, set.clone());
            if !before.detector.is_empty() {
                file.previous.insert(0, before);
            }
            file.previous.truncate(HISTORY);
        }
        self.write_active(&file)?;
        Ok(set.clone())
    }

    /// Makes the set before the active one active again; returns it.
    pub fn roll_back(&self) -> Result<ModelSet> {
        let back = self.previous()?;
        let mut file = self.read_active()?.unwrap_or_default();
        file.previous.retain(|set| *set != back);
        self.check_set(&back)?;
        file.active = back.clone();
        self.write_active(&file)?;
        Ok(back)
    }

    fn check_set(&self, set: &ModelSet) -> Result<()> {
        let want = |hash: &str, role: Role| -> Result<()> {
            let model = self.get(hash)?;
            if model.role != role {
                return Err(self.error(format!(
                    "{} ({}@{}) is a {}, not the {}",
                    &model.hash[..12],
                    model.id,
                    model.version,
                    model.role.as_str(),
                    role.as_str()
                )));
            }
            Ok(())
        };
        want(&set.detector, Role::Detector)?;
        if !set.embedder.is_empty() {
            want(&set.embedder, Role::Embedder)?;
        }
        Ok(())
    }

    fn write_active(&self, file: &ActiveFile) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let text = toml::to_string(file).map_err(|e| self.error(e.to_string()))?;
        crate::config::write_atomically(&self.dir.join(ACTIVE_FILE), &text)
    }

    /// The manifests of a set: (detector, embedder).
    pub fn manifests(&self, set: &ModelSet) -> Result<(PathBuf, Option<PathBuf>)> {
        let detector = self.get(&set.detector)?.manifest_path;
        let embedder = match set.embedder.as_str() {
            "" => None,
            hash => Some(self.get(hash)?.manifest_path),
        };
        Ok((detector, embedder))
    }

    /// A set with every hash prefix made whole.
    pub fn resolve_set(&self, set: &ModelSet) -> Result<ModelSet> {
        Ok(ModelSet {
            detector: self.resolve(&set.detector)?,
            embedder: match set.embedder.as_str() {
                "" => String::new(),
                prefix => self.resolve(prefix)?,
            },
        })
    }

    /// The set [`roll_back`](Self::roll_back) would make active.
    pub fn previous(&self) -> Result<ModelSet> {
        let file = self
            .read_active()?
            .ok_or_else(|| self.error("no model set was ever activated: nothing to roll back to".into()))?;
        file.previous
            .first()
            .cloned()
            .ok_or_else(|| self.error("no earlier model set to roll back to".into()))
    }
}

/// A set a live switch made active, and its generation (`NodeInfo.model_generation`).
#[derive(Debug, Clone)]
pub struct RunningSet {
    pub set: ModelSet,
    pub generation: u64,
    /// How the set did on the node's recent frames before it was switched to.
    pub self_test: super::self_test::SelfTestReport,
    /// Its shadow run beside the set before, when one was asked for.
    pub shadow: Option<super::shadow::ShadowReport>,
}

/// A model as the store keeps it: the manifest naming its files by their own names, the files,
/// and the hash over both.
pub struct Package {
    pub hash: String,
    manifest: String,
    files: Vec<(String, Vec<u8>)>,
    /// Where the files were read from.
    sources: Vec<PathBuf>,
}

impl Package {
    /// Reads the manifest (checked as the node checks it) and every file it names.
    pub fn read(manifest_path: &Path) -> Result<Package> {
        let manifest = Manifest::load(manifest_path)?;
        let text = std::fs::read_to_string(manifest_path)
            .map_err(|e| Error::io(format!("reading model manifest {}", manifest_path.display()), e))?;
        let bad = |message: String| Error::Manifest {
            path: manifest_path.to_path_buf(),
            message,
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut sources = Vec::new();
        for (section, key) in [("model", "file"), ("projection", "file"), ("decoder", "priors")] {
            let Some(value) = table.get_mut(section).and_then(|s| s.get_mut(key)) else {
                continue;
            };
            let Some(named) = value.as_str().map(PathBuf::from) else {
                continue;
            };
            let source = manifest.beside(&named);
            let name = stored_name(&named)
                .ok_or_else(|| bad(format!("{section}.{key}: {} has no usable file name", named.display())))?;
            if [MANIFEST_FILE, SIGNATURE_FILE].contains(&name.as_str()) || files.iter().any(|(n, _)| *n == name) {
                return Err(bad(format!("{section}.{key}: two files would be stored as {name:?}")));
            }
            let bytes = std::fs::read(&source).map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
            *value = toml::Value::String(name.clone());
            files.push((name, bytes));
            sources.push(source);
        }
        let manifest = toml::to_string(&table).map_err(|e| bad(e.to_string()))?;
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Package {
            hash: package_hash(&manifest, &files),
            manifest,
            files,
            sources,
        })
    }
}

impl Package {
    /// The files as the store will hold them, the manifest (as [`MANIFEST_FILE`]) first; what a
    /// client sends to a node.
    pub fn into_stored_files(self) -> Vec<(String, Vec<u8>)> {
        std::iter::once((MANIFEST_FILE.to_string(), self.manifest.into_bytes()))
            .chain(self.files)
            .collect()
    }
}

/// Where the signature of a manifest's package is: `<manifest file name>.sig` beside it.
pub fn signature_path(manifest_path: &Path) -> PathBuf {
    let mut name = manifest_path.file_name().unwrap_or_default().to_os_string();
    name.push(".sig");
    manifest_path.with_file_name(name)
}

/// The name a file named by a manifest is stored under: its own file name.
fn stored_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    (!name.starts_with('.')).then(|| name.to_string())
}

/// sha256 over the stored manifest and every (name, bytes) it names, each length-prefixed so that
/// no two packages share a byte stream.
fn package_hash(manifest: &str, files: &[(String, Vec<u8>)]) -> String {
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(manifest.as_bytes());
    for (name, bytes) in files {
        part(name.as_bytes());
        part(bytes);
    }
    data_encoding::HEXLOWER.encode(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of a bundled manifest and its files in a directory of its own.
    fn bundled(dir: &Path, name: &str) -> PathBuf {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let text = std::fs::read_to_string(models.join(format!("{name}.toml"))).unwrap();
        let manifest = Manifest::load(&models.join(format!("{name}.toml"))).unwrap();
        let own = dir.join(name);
        std::fs::create_dir_all(&own).unwrap();
        std::fs::copy(manifest.model_path(), own.join(&manifest.model.file)).unwrap();
        if let Some((spec, path)) = manifest.projection() {
            std::fs::copy(path, own.join(&spec.file)).unwrap();
        }
        std::fs::write(own.join("model.toml"), text).unwrap();
        own.join("model.toml")
    }

    #[test]
    fn installs_by_content_activates_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().join("store"));
        let nanodet = store.install(&bundled(dir.path(), "nanodet-g-416"), None).unwrap();
        let again = store.install(&bundled(dir.path(), "nanodet-g-416"), None).unwrap();
        assert_eq!(nanodet.hash, again.hash, "installing twice stores once");
        let embedder = store.install(&bundled(dir.path(), "mobilenetv2-1280"), None).unwrap();
        assert_eq!((nanodet.role, embedder.role), (Role::Detector, Role::Embedder));
        // The projection came along and the stored manifest loads from the store alone.
        let stored = Manifest::load(&embedder.manifest_path).unwrap();
        assert!(stored.projection().unwrap().1.is_file());

        // Other thresholds, same ONNX file: another model.
        let edited = bundled(dir.path(), "nanodet-g-416");
        let text = std::fs::read_to_string(&edited).unwrap();
        std::fs::write(&edited, text.replace("score_threshold = 0.4", "score_threshold = 0.5")).unwrap();
        let stricter = store.install(&edited, None).unwrap();
        assert_ne!(stricter.hash, nanodet.hash);
        assert_eq!(store.list().unwrap().len(), 3);

        let first = ModelSet {
            detector: nanodet.hash.clone(),
            embedder: embedder.hash.clone(),
        };
        let second = ModelSet {
            detector: stricter.hash.clone(),
            embedder: embedder.hash.clone(),
        };
        assert_eq!(store.active().unwrap(), None);
        assert_eq!(store.activate(&second, &first).unwrap(), second);
        assert_eq!(store.active().unwrap(), Some(second.clone()));
        assert_eq!(store.roll_back().unwrap(), first);
        assert_eq!(store.active().unwrap(), Some(first));
        assert!(store.roll_back().unwrap_err().to_string().contains("no earlier"));

        // A detector in the embedder's place, or a hash not in the store, is refused.
        let crossed = ModelSet {
            detector: embedder.hash.clone(),
            embedder: String::new(),
        };
        assert!(
            store
                .activate(&crossed, &second)
                .unwrap_err()
                .to_string()
                .contains("not the detector")
        );
        assert!(store.get("0123abcd").is_err());
        assert!(store.get("xyz").unwrap_err().to_string().contains("not a model hash"));
        assert_eq!(store.get(&nanodet.hash[..10]).unwrap().hash, nanodet.hash);
    }

    #[test]
    fn a_half_written_package_is_not_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().to_path_buf());
        std::fs::create_dir(dir.path().join(format!(".{}.tmp", "a".repeat(64)))).unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn with_a_key_only_packages_signed_by_it_are_installed() {
        use super::super::signing::SigningKey;
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().join("store"));
        let (private, public) = (dir.path().join("centre.key"), dir.path().join("centre.pub"));
        SigningKey::generate(&private, &public).unwrap();
        let key = VerifyingKey::load(&public).unwrap();
        let manifest = bundled(dir.path(), "nanodet-g-416");

        let err = store.install(&manifest, Some(&key)).unwrap_err().to_string();
        assert!(
            err.contains("must be signed") && err.contains("model.toml.sig"),
            "{err}"
        );
        let hash = Package::read(&manifest).unwrap().hash;
        std::fs::write(
            signature_path(&manifest),
            SigningKey::load(&private).unwrap().sign(&hash),
        )
        .unwrap();
        let model = store.install(&manifest, Some(&key)).unwrap();
        store.verify_stored(&model.hash, &key).unwrap();

        // One byte of the model changed after signing: another package, refused.
        let onnx = manifest.with_file_name("nanodet-g-416.onnx");
        let mut bytes = std::fs::read(&onnx).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&onnx, bytes).unwrap();
        let err = store.install(&manifest, Some(&key)).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
