//! Files that hold secrets, and values loaded from files that may change under a running node.
//!
//! A secret (a TLS key, the token file, a camera password) is read from a file only its owner
//! may read, or from a systemd credential: `credential:NAME` names `$CREDENTIALS_DIRECTORY/NAME`,
//! which systemd fills from `LoadCredential=` (owner-only, on a memory file system, gone when the
//! service stops).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, Result};

/// How a path in the config names a systemd credential.
pub const CREDENTIAL_PREFIX: &str = "credential:";

/// Where a secret named in the config is: `credential:NAME` in the service's credentials
/// directory, any other path as it is.
pub fn secret_path(path: &Path) -> Result<PathBuf> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    secret_path_in(path, credentials.as_deref())
}

fn secret_path_in(path: &Path, credentials: Option<&Path>) -> Result<PathBuf> {
    let Some(name) = path.to_str().and_then(|p| p.strip_prefix(CREDENTIAL_PREFIX)) else {
        return Ok(path.to_path_buf());
    };
    // A name, not a path: `credential:../../etc/shadow` must not leave the directory.
    let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    if !plain {
        return Err(Error::Access(format!(
            "{CREDENTIAL_PREFIX}{}: a credential is named by a plain file name",
            crate::error::quoted(name)
        )));
    }
    match credentials {
        Some(dir) => Ok(dir.join(name)),
        None => Err(Error::Access(format!(
            "{CREDENTIAL_PREFIX}{name} is a systemd credential, but CREDENTIALS_DIRECTORY is not set: \
             run the node as a service with LoadCredential={name}:/path/to/file, or give a path to a 0600 file"
        ))),
    }
}

/// Reads a secret (see [`secret_path`]) only if no one but its owner may read or write it: a
/// key that other users can read is a key that may already be elsewhere.
pub fn read_owner_only(path: &Path, what: &str) -> Result<Vec<u8>> {
    let path = &secret_path(path)?;
    let reading = || format!("reading {what} {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| Error::io(reading(), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if !owner_only(mode) {
        return Err(Error::Access(format!(
            "{what} {} is open to other users (mode {mode:03o}): `chmod 600` it, or pass it with systemd's LoadCredential=",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|e| Error::io(reading(), e))
}

/// A one-line secret such as a password: the file's text without its final line break.
pub fn read_secret_line(path: &Path, what: &str) -> Result<String> {
    let bytes = read_owner_only(path, what)?;
    let text =
        String::from_utf8(bytes).map_err(|_| Error::Access(format!("{what} {}: not UTF-8 text", path.display())))?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() || line.contains('\n') {
        return Err(Error::Access(format!(
            "{what} {}: expected one non-empty line",
            path.display()
        )));
    }
    Ok(line.to_string())
}

/// Whether a file's permission bits keep it to its owner.
pub fn owner_only(mode: u32) -> bool {
    mode & 0o077 == 0
}

/// What identifies a version of a file without reading it: a replaced file (a rename over it,
/// as certificate tools do) has a new inode, an edited one a new time or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    inode: u64,
    modified_nanos: i128,
    len: u64,
}

impl FileStamp {
    /// `None` when the file cannot be seen: that is a change too, and loading it will say why.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(secret_path(path).ok()?).ok()?;
        Some(FileStamp {
            inode: meta.ino(),
            modified_nanos: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            len: meta.len(),
        })
    }
}

type Loader<T> = Box<dyn Fn() -> Result<T> + Send + Sync>;

/// A value made from files (a TLS configuration, the tokens) and made again when one of them
/// changes, so that a running node takes new certificates and tokens without a restart. Readers
/// get the current value whole; a file that no longer loads leaves the previous value in force.
pub struct Reloading<T> {
    paths: Vec<PathBuf>,
    load: Loader<T>,
    current: RwLock<Arc<T>>,
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

impl<T> Reloading<T> {
    /// Loads the value once; `load` reads `paths` (and nothing else that may change).
    pub fn new(paths: Vec<PathBuf>, load: impl Fn() -> Result<T> + Send + Sync + 'static) -> Result<Reloading<T>> {
        let stamps = stamps(&paths);
        let current = load()?;
        Ok(Reloading {
            paths,
            load: Box::new(load),
            current: RwLock::new(Arc::new(current)),
            stamps: Mutex::new(stamps),
        })
    }

    pub fn current(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads the value again if any file changed; `Ok(true)` when the new value is in force.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = stamps(&self.paths);
        let mut last = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return Ok(false);
        }
        // Remembered even if loading fails: a bad file is reported once, not at every look, and
        // a pair written one after the other (a key, then its certificate) is tried again when
        // the second lands.
        *last = now;
        let value = (self.load)()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
        Ok(true)
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<FileStamp>> {
    paths.iter().map(|p| FileStamp::of(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_open_to_others_are_refused_and_private_ones_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "secret").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_owner_only(&path, "TLS key").unwrap_err().to_string();
            assert!(
                err.contains(&format!("mode {mode:03o}")) && err.contains("chmod 600"),
                "{err}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_owner_only(&path, "TLS key").unwrap(), b"secret");
        }
    }

    #[test]
    fn a_replaced_or_edited_file_has_a_new_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        assert_eq!(FileStamp::of(&path), None);
        std::fs::write(&path, "one").unwrap();
        let first = FileStamp::of(&path);
        assert_eq!(FileStamp::of(&path), first);
        let other = dir.path().join("new.pem");
        std::fs::write(&other, "two").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_ne!(FileStamp::of(&path), first);
    }

    #[test]
    fn a_reloading_value_follows_its_file_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("number");
        std::fs::write(&path, "1").unwrap();
        let read = path.clone();
        let value = Reloading::new(vec![path.clone()], move || {
            let text = std::fs::read_to_string(&read).map_err(|e| Error::io("reading", e))?;
            text.trim().parse::<u32>().map_err(|e| Error::Access(e.to_string()))
        })
        .unwrap();
        assert_eq!(*value.current(), 1);
        assert!(!value.reload_if_changed().unwrap(), "nothing changed");
        std::fs::write(&path, "22").unwrap();
        assert!(value.reload_if_changed().unwrap());
        assert_eq!(*value.current(), 22);
        std::fs::write(&path, "not a number").unwrap();
        assert!(value.reload_if_changed().is_err());
        assert_eq!(*value.current(), 22, "a bad file leaves the last good value");
        assert!(!value.reload_if_changed().unwrap(), "and is reported once");
    }

    #[test]
    fn credentials_are_plain_names_in_the_credentials_directory() {
        let dir = Path::new("/run/credentials/retina-edge.service");
        let named = |p: &str| secret_path_in(Path::new(p), Some(dir));
        assert_eq!(named("credential:tls.key").unwrap(), dir.join("tls.key"));
        assert_eq!(
            named("/etc/retina-edge/node.key").unwrap(),
            Path::new("/etc/retina-edge/node.key")
        );
        for bad in ["credential:", "credential:../shadow", "credential:a/b", "credential:.."] {
            let err = named(bad).unwrap_err().to_string();
            assert!(err.contains("plain file name"), "{bad}: {err}");
        }
        let err = secret_path_in(Path::new("credential:cam"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CREDENTIALS_DIRECTORY") && err.contains("LoadCredential=cam"),
            "{err}"
        );
    }

    #[test]
    fn a_password_file_holds_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        let write = |text: &str| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        for (text, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("with space\r\n", "with space"),
        ] {
            write(text);
            assert_eq!(read_secret_line(&path, "camera password file").unwrap(), want);
        }
        for bad in ["", "\n", "two\nlines\n"] {
            write(bad);
            let err = read_secret_line(&path, "camera password file").unwrap_err().to_string();
            assert!(err.contains("one non-empty line"), "{bad:?}: {err}");
        }
    }
}
