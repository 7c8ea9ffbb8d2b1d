//! Bearer tokens with scopes. A token is 256 random bits; the node keeps only its SHA-256, so
//! the token file gives nothing away if it leaks. (A slow password hash such as Argon2 guards
//! guessable secrets; a random 256-bit token cannot be guessed, and hashing it fast keeps the
//! check per request cheap.) The file is written by `retina-edge token add/revoke` and re-read
//! by a running node when it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::files::{Reloading, read_owner_only};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read descriptors: `Subscribe`, `Query`, `GetNodeInfo`.
    Subscribe,
    /// Change the node: camera management.
    Admin,
    /// Scrape `/metrics`.
    Metrics,
    /// Push a node's log to a collector (`retina-edge collect`), as the node the token is named
    /// after.
    Push,
    /// Snapshots and clips (`Pixels`), faces pixelated.
    Pixels,
    /// Pixels without face blurring, with `pixels`.
    #[serde(rename = "pixels-raw")]
    PixelsRaw,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Subscribe,
        Scope::Admin,
        Scope::Metrics,
        Scope::Push,
        Scope::Pixels,
        Scope::PixelsRaw,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Subscribe => "subscribe",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
            Scope::Push => "push",
            Scope::Pixels => "pixels",
            Scope::PixelsRaw => "pixels-raw",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Whoever presented a known token: its name labels that reader's logs and metrics.
#[derive(Debug)]
pub struct Caller {
    pub name: String,
    scopes: Vec<Scope>,
}

impl Caller {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Why a request was turned away.
#[derive(Debug)]
pub enum Denied {
    /// No `authorization: Bearer …` at all, or not in that form.
    NoToken,
    /// A token the node does not know (never issued, or revoked).
    UnknownToken,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    scopes: Vec<Scope>,
    /// Hex SHA-256 of the token.
    sha256: String,
    /// Seconds since 1970 when it was made.
    #[serde(default)]
    created_unix: u64,
}

type Known = HashMap<[u8; 32], Arc<Caller>>;

/// The tokens a running node accepts, swapped whole when the file changes.
pub struct Tokens {
    path: PathBuf,
    known: Reloading<Known>,
}

const PREFIX: &str = "rtk_";

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens> {
        let file = path.to_path_buf();
        let known = Reloading::new(vec![file.clone()], move || read_known(&file))?;
        Ok(Tokens {
            path: path.to_path_buf(),
            known,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who sent `authorization` (the header's value), if the node knows the token.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> std::result::Result<Arc<Caller>, Denied> {
        let token = authorization
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(Denied::NoToken)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.known.current().get(&hash).cloned().ok_or(Denied::UnknownToken)
    }

    /// Re-reads the file if it changed since the last read; `Ok(true)` when it did.
    pub fn reload_if_changed(&self) -> Result<bool> {
        self.known.reload_if_changed()
    }
}

fn read_known(path: &Path) -> Result<Known> {
    let file = read_file(path)?;
    let mut known = Known::new();
    for entry in file.token {
        let hash = parse_hash(&entry.sha256)
            .ok_or_else(|| invalid(path, format!("token {:?}: sha256 is not 64 hex digits", entry.name)))?;
        known.insert(
            hash,
            Arc::new(Caller {
                name: entry.name,
                scopes: entry.scopes,
            }),
        );
    }
    Ok(known)
}

fn read_file(path: &Path) -> Result<TokenFile> {
    let bytes = read_owner_only(path, "token file")?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid(path, "not UTF-8".into()))?;
    toml::from_str(text).map_err(|e| invalid(path, e.message().to_string()))
}

fn invalid(path: &Path, message: String) -> Error {
    Error::Access(format!("token file {}: {message}", path.display()))
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let bytes = HEXLOWER_PERMISSIVE.decode(hex.as_bytes()).ok()?;
    bytes.try_into().ok()
}

/// Token names label metrics and logs: short, and safe in both.
fn check_name(name: &str) -> Result<()> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Access(format!(
            "token name {}: use 1 to 64 letters, digits, '-', '_' or '.'",
            crate::error::quoted(name)
        )))
    }
}

/// Makes a token named `name` with `scopes`, stores its hash in `path` (created owner-only if
/// missing) and returns the token: the only time it is ever seen.
pub fn add_token(path: &Path, name: &str, scopes: &[Scope]) -> Result<String> {
    check_name(name)?;
    if scopes.is_empty() {
        return Err(Error::Access("a token needs at least one scope".into()));
    }
    let mut file = if path.exists() {
        read_file(path)?
    } else {
        TokenFile::default()
    };
    if file.token.iter().any(|t| t.name == name) {
        return Err(Error::Access(format!(
            "a token named {name:?} exists already: revoke it first, or choose another name"
        )));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| Error::Internal(format!("the system's random generator: {e}")))?;
    let token = format!("{PREFIX}{}", HEXLOWER.encode(&secret));
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    file.token.push(TokenEntry {
        name: name.to_string(),
        scopes,
        sha256: HEXLOWER.encode(&Sha256::digest(token.as_bytes())),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    write_file(path, &file)?;
    Ok(token)
}

/// Removes the token named `name`; a running node refuses it within seconds.
pub fn revoke_token(path: &Path, name: &str) -> Result<()> {
    let mut file = read_file(path)?;
    let before = file.token.len();
    file.token.retain(|t| t.name != name);
    if file.token.len() == before {
        return Err(Error::Access(format!(
            "no token named {} in {}",
            crate::error::quoted(name),
            path.display()
        )));
    }
    write_file(path, &file)
}

/// Names and scopes of the tokens in `path`.
pub fn list_tokens(path: &Path) -> Result<Vec<(String, Vec<Scope>)>> {
    Ok(read_file(path)?.token.into_iter().map(|t| (t.name, t.scopes)).collect())
}

fn write_file(path: &Path, file: &TokenFile) -> Result<()> {
    let text = toml::to_string(file).map_err(|e| Error::Internal(format!("token file: {e}")))?;
    let header = "# retina-edge tokens: hashes only. Edit with `retina-edge token add|revoke|list`.\n";
    crate::config::write_atomically(path, &format!("{header}{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn a_token_is_shown_once_stored_as_a_hash_and_checked_by_scope() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let centre = add_token(&path, "centre", &[Scope::Subscribe]).unwrap();
        let ops = add_token(&path, "ops", &[Scope::Admin, Scope::Metrics, Scope::Admin]).unwrap();
        assert!(centre.starts_with(PREFIX) && centre.len() == PREFIX.len() + 64);
        assert_ne!(centre, ops);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&centre[PREFIX.len()..]) && !text.contains(&ops[PREFIX.len()..]),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let tokens = Tokens::load(&path).unwrap();
        let caller = tokens.authenticate(Some(&bearer(&centre))).unwrap();
        assert_eq!(caller.name, "centre");
        assert!(caller.may(Scope::Subscribe) && !caller.may(Scope::Admin));
        let caller = tokens
            .authenticate(Some(format!("bearer   {ops} ").as_bytes()))
            .unwrap();
        assert!(caller.may(Scope::Admin) && caller.may(Scope::Metrics) && !caller.may(Scope::Subscribe));
        assert_eq!(
            list_tokens(&path).unwrap()[1],
            ("ops".to_string(), vec![Scope::Admin, Scope::Metrics])
        );

        assert!(matches!(tokens.authenticate(None), Err(Denied::NoToken)));
        assert!(matches!(
            tokens.authenticate(Some(centre.as_bytes())),
            Err(Denied::NoToken)
        ));
        assert!(matches!(tokens.authenticate(Some(b"Basic abc")), Err(Denied::NoToken)));
        assert!(matches!(
            tokens.authenticate(Some(&bearer("rtk_0000"))),
            Err(Denied::UnknownToken)
        ));
    }

    #[test]
    fn revoking_and_adding_reach_a_running_node_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let centre = add_token(&path, "centre", &[Scope::Subscribe]).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert!(!tokens.reload_if_changed().unwrap(), "nothing changed");
        revoke_token(&path, "centre").unwrap();
        let later = add_token(&path, "later", &[Scope::Subscribe]).unwrap();
        assert!(tokens.reload_if_changed().unwrap());
        assert!(matches!(
            tokens.authenticate(Some(&bearer(&centre))),
            Err(Denied::UnknownToken)
        ));
        assert_eq!(tokens.authenticate(Some(&bearer(&later))).unwrap().name, "later");
        // A broken file keeps the tokens in force and says why.
        std::fs::write(&path, "token = 3").unwrap();
        assert!(tokens.reload_if_changed().is_err());
        assert_eq!(tokens.authenticate(Some(&bearer(&later))).unwrap().name, "later");
    }

    #[test]
    fn bad_names_duplicates_and_missing_tokens_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let long = "x".repeat(5000);
        let err = add_token(&path, &long, &[Scope::Subscribe]).unwrap_err().to_string();
        assert!(err.len() < 200, "the name is quoted in full: {} bytes", err.len());
        assert!(add_token(&path, "a b", &[Scope::Subscribe]).is_err());
        assert!(add_token(&path, "ok", &[]).is_err());
        add_token(&path, "ok", &[Scope::Metrics]).unwrap();
        assert!(
            add_token(&path, "ok", &[Scope::Metrics])
                .unwrap_err()
                .to_string()
                .contains("exists already")
        );
        assert!(
            revoke_token(&path, "nobody")
                .unwrap_err()
                .to_string()
                .contains("no token named")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// A token file with any value anywhere, or cut short, loads or is refused clearly; and
        /// any `authorization` header is an answer, never a panic.
        #[test]
        fn any_token_file_and_any_header_are_handled(
            index in 0usize..20,
            value in crate::fuzz::toml_value(),
            at in 0usize..400,
            damage: bool,
            header in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tokens.toml");
            add_token(&path, "centre", &[Scope::Subscribe]).unwrap();
            let text = crate::fuzz::with_value_replaced(&std::fs::read_to_string(&path).unwrap(), index, &value);
            let text = if damage { crate::fuzz::damaged(&text, at, false) } else { text };
            std::fs::write(&path, text).unwrap();
            match Tokens::load(&path) {
                Ok(tokens) => {
                    // Nothing random is a known token.
                    proptest::prop_assert!(tokens.authenticate(Some(&header)).is_err());
                }
                Err(err) => proptest::prop_assert!(!err.to_string().is_empty()),
            }
        }
    }
}
