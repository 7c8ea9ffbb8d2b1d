//! Who may reach the node, and how: TLS on every listener with certificates re-read from disk,
//! bearer tokens with scopes, and the refusal to listen where other hosts can reach the node
//! without both. `deliver` (gRPC) and `metrics` (HTTP) serve through it; it names neither.

mod guard;
mod tls;
mod tokens;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use guard::{GrpcGuardLayer, Need, admit, http_caller, http_refusal, required_scope};
pub use tls::{ALPN_GRPC, ALPN_HTTP1, Tls, TlsIncoming};
pub use tokens::{Caller, Denied, Scope, Tokens, add_token, list_tokens, revoke_token};

use crate::config::Config;
use crate::error::{Error, Result};

/// What the listeners of one node enforce, loaded from the config at start.
#[derive(Clone, Default)]
pub struct Access {
    pub tls_files: Option<crate::config::TlsConfig>,
    pub tokens: Option<Arc<Tokens>>,
}

impl Access {
    /// Loads the token file and checks that every listener is either on loopback or protected
    /// by TLS and tokens (or that the config says `insecure = true`).
    pub fn load(config: &Config) -> Result<Access> {
        check_exposure(config)?;
        let tls_files = config.tls.as_ref().map(|tls| crate::config::TlsConfig {
            cert: config.resolve(&tls.cert),
            key: config.resolve(&tls.key),
            client_ca: tls.client_ca.as_ref().map(|ca| config.resolve(ca)),
        });
        let tokens = match &config.auth {
            Some(auth) => Some(Arc::new(Tokens::load(&config.resolve(&auth.tokens_file))?)),
            None => None,
        };
        Ok(Access { tls_files, tokens })
    }

    /// The TLS state for one listener speaking `alpn`; `None` without TLS.
    pub fn tls(&self, alpn: &[&[u8]]) -> Result<Option<Arc<Tls>>> {
        self.tls_files
            .as_ref()
            .map(|files| Tls::load(files.clone(), alpn).map(Arc::new))
            .transpose()
    }
}

/// Refuses a listener that other hosts can reach unless it has TLS and tokens, or the config
/// opts out in so many words.
pub fn check_exposure(config: &Config) -> Result<()> {
    let listeners = [
        Some(("node.grpc_listen", config.node.grpc_listen)),
        config.node.metrics_listen.map(|a| ("node.metrics_listen", a)),
    ];
    let guarded = Guarded {
        tls: config.tls.is_some(),
        auth: config.auth.is_some(),
        insecure: config.node.insecure,
        insecure_field: "node.insecure",
    };
    guarded.check_all(listeners.into_iter().flatten(), &config.origin)
}

/// What protects a listener, for [`Guarded::check`].
pub struct Guarded {
    pub tls: bool,
    pub auth: bool,
    pub insecure: bool,
    /// Where `insecure` is set, for the message.
    pub insecure_field: &'static str,
}

impl Guarded {
    /// [`Guarded::check`] for each `(field, address)`; the error names the config file.
    pub fn check_all<'a>(
        &self,
        listeners: impl IntoIterator<Item = (&'a str, SocketAddr)>,
        origin: &Path,
    ) -> Result<()> {
        for (field, addr) in listeners {
            self.check(field, addr).map_err(|message| Error::Config {
                path: origin.to_path_buf(),
                message,
            })?;
        }
        Ok(())
    }

    /// `Err` with the fix when `addr` is reachable from other hosts without TLS and tokens.
    pub fn check(&self, field: &str, addr: SocketAddr) -> std::result::Result<(), String> {
        if !reachable_by_others(addr) || (self.tls && self.auth) {
            return Ok(());
        }
        if self.insecure {
            tracing::warn!(%addr, field, "listening where other hosts can reach it without TLS and tokens ({} = true)", self.insecure_field);
            return Ok(());
        }
        let missing = match (self.tls, self.auth) {
            (false, false) => "[tls] and [auth]",
            (false, true) => "[tls]",
            _ => "[auth]",
        };
        Err(format!(
            "{field} = {addr} can be reached from other hosts, but the config has no {missing}: \
             configure TLS and tokens (README, \"Deploying on a street network\"), listen on 127.0.0.1, \
             or set {} = true to accept the risk",
            self.insecure_field
        ))
    }
}

fn reachable_by_others(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// How often certificate and token files are looked at for changes. A stat of three files.
const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Re-reads changed certificates and tokens every few seconds and at once on SIGHUP, until
/// `stop`: a renewed certificate or a revoked token takes effect without a restart. `reloaded`
/// is told the listeners' TLS after each look (the node shows their expiry in its metrics).
pub async fn keep_reloading(
    tls: Vec<(&'static str, Arc<Tls>)>,
    tokens: Option<Arc<Tokens>>,
    reloaded: impl Fn(&[(&'static str, Arc<Tls>)]) + Send + 'static,
    stop: crate::shutdown::Shutdown,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(err) => {
            tracing::warn!(%err, "no SIGHUP handler: certificates and tokens are re-read on a timer only");
            None
        }
    };
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hung_up = async {
            match hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.wait() => return,
            _ = tick.tick() => {}
            _ = hung_up => tracing::info!("SIGHUP: re-reading certificates and tokens"),
        }
        let listeners: Vec<Arc<Tls>> = tls.iter().map(|(_, tls)| tls.clone()).collect();
        let tokens = tokens.clone();
        // File reads and key parsing: off the async workers.
        let _ = tokio::task::spawn_blocking(move || reload(&listeners, tokens.as_deref())).await;
        reloaded(&tls);
    }
}

/// Re-reads every changed certificate, key and token file: called every few seconds and on
/// SIGHUP. A file that no longer parses is reported and the previous one stays in force.
pub fn reload(tls: &[Arc<Tls>], tokens: Option<&Tokens>) {
    for tls in tls {
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!(cert = %tls.cert_path().display(), "TLS certificate reloaded"),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(%err, "TLS files changed but could not be loaded; keeping the previous certificate")
            }
        }
    }
    if let Some(tokens) = tokens {
        match tokens.reload_if_changed() {
            Ok(true) => tracing::info!(file = %tokens.path().display(), "token file reloaded"),
            Ok(false) => {}
            Err(err) => tracing::warn!(%err, "token file changed but could not be loaded; keeping the previous tokens"),
        }
    }
}

/// Whether a camera added or changed over the API may read `uri`: a network source with an
/// allowed scheme, or a local file under an allowed directory. The config file itself is the
/// operator's and is not checked. The error names the scheme, never the URI (it may hold a
/// password).
pub fn check_camera_source(
    uri: &str,
    admin: &crate::config::AdminConfig,
    base_dir: &Path,
) -> std::result::Result<(), String> {
    let local = match uri.split_once("://") {
        Some((scheme, _)) if !scheme.eq_ignore_ascii_case("file") => {
            if admin.allowed_schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
                return Ok(());
            }
            return Err(format!(
                "{}:// sources may not be added over the API; allowed: {} (admin.allowed_schemes)",
                crate::error::quoted(scheme),
                admin.allowed_schemes.join(", ")
            ));
        }
        Some((_, path)) => std::path::PathBuf::from(path),
        None => base_dir.join(uri),
    };
    if admin.allowed_file_dirs.is_empty() {
        return Err(
            "local files may be cameras only in the config file: none may be added over the API \
                    unless admin.allowed_file_dirs names their directory"
                .into(),
        );
    }
    let dirs: Vec<std::path::PathBuf> = admin.allowed_file_dirs.iter().map(|d| base_dir.join(d)).collect();
    if is_under(&local, &dirs) {
        Ok(())
    } else {
        Err("that file is not under a directory of admin.allowed_file_dirs".into())
    }
}

/// Whether `path` lies under one of `dirs` once both are made absolute and `..` and links
/// resolved. A file not there yet is judged by its directory, so that the manager can say the
/// file is missing.
pub fn is_under(path: &Path, dirs: &[std::path::PathBuf]) -> bool {
    let resolved = std::fs::canonicalize(path).or_else(|_| {
        let parent = path.parent().ok_or(std::io::ErrorKind::NotFound)?;
        let name = path.file_name().ok_or(std::io::ErrorKind::NotFound)?;
        std::fs::canonicalize(parent).map(|p| p.join(name))
    });
    let Ok(path) = resolved else {
        return false;
    };
    dirs.iter()
        .filter_map(|dir| std::fs::canonicalize(dir).ok())
        .any(|dir| path.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdminConfig;

    #[test]
    fn the_api_may_add_network_sources_of_allowed_schemes_and_files_only_under_allowed_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let clips = dir.path().join("clips");
        std::fs::create_dir(&clips).unwrap();
        std::fs::write(clips.join("a.mp4"), "x").unwrap();
        let mut admin = AdminConfig::default();
        let check = |admin: &AdminConfig, uri: &str| check_camera_source(uri, admin, dir.path());
        assert!(check(&admin, "rtsp://user:secret@10.0.0.7/stream").is_ok());
        assert!(check(&admin, "HTTPS://cam/mjpeg").is_ok());
        let err = check(&admin, "udp://0.0.0.0:5000").unwrap_err();
        assert!(
            err.contains("\"udp\"") && err.contains("rtsp, rtsps, http, https"),
            "{err}"
        );
        for local in ["file:///etc/passwd", "clips/a.mp4", "/etc/passwd"] {
            assert!(
                check(&admin, local).unwrap_err().contains("only in the config file"),
                "{local}"
            );
        }
        admin.allowed_file_dirs = vec!["clips".into()];
        assert!(check(&admin, "clips/a.mp4").is_ok());
        assert!(check(&admin, &format!("file://{}", clips.join("a.mp4").display())).is_ok());
        for outside in ["file:///etc/passwd", "clips/../../etc/passwd", "elsewhere/a.mp4"] {
            assert!(check(&admin, outside).unwrap_err().contains("not under"), "{outside}");
        }
        // A missing file in an allowed directory passes, for the manager to say it is missing.
        assert!(check(&admin, "clips/missing.mp4").is_ok());
        admin.allowed_schemes = vec!["rtsps".into()];
        let err = check(&admin, "rtsp://user:secret@cam/").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }
}
