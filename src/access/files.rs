//! Files that hold secrets, and noticing when a file changed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Reads a secret (a TLS key, the token file) only if no one but its owner may read or write
/// it: a key that other users can read is a key that may already be elsewhere.
pub fn read_owner_only(path: &Path, what: &str) -> Result<Vec<u8>> {
    let reading = || format!("reading {what} {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| Error::io(reading(), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Access(format!(
            "{what} {} is open to other users (mode {mode:03o}): `chmod 600` it, or pass it with systemd's LoadCredential=",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|e| Error::io(reading(), e))
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
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            inode: meta.ino(),
            modified_nanos: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            len: meta.len(),
        })
    }
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
}
