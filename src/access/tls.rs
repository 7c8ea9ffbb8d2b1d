//! TLS for a listener, with certificates that can change under it. tonic's own TLS is fixed at
//! start; short-lived certificates (ACME, an internal CA) on a box nobody visits need the next
//! connection to get the new certificate, so the handshake is done here, with whatever
//! configuration is current, and tonic and axum are handed finished TLS streams.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;
use crate::error::{Error, Result};
use crate::files::{Reloading, read_owner_only};

pub const ALPN_GRPC: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A client that opens a connection and never finishes its handshake must not hold a task
/// and a socket for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// One listener's TLS configuration, made again when its files change.
pub struct Tls {
    cert_path: PathBuf,
    loaded: Reloading<Loaded>,
}

struct Loaded {
    server: Arc<rustls::ServerConfig>,
    /// When the node's own certificate expires, in seconds since 1970.
    not_after_unix: i64,
}

impl Tls {
    pub fn load(files: TlsConfig, alpn: &[&[u8]]) -> Result<Tls> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let paths = [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let cert_path = files.cert.clone();
        let loaded = Reloading::new(paths, move || {
            let (server, not_after_unix) = server_config(&files, &alpn)?;
            Ok(Loaded {
                server: Arc::new(server),
                not_after_unix,
            })
        })?;
        Ok(Tls { cert_path, loaded })
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// When the certificate in force expires, in seconds since 1970.
    pub fn not_after_unix(&self) -> i64 {
        self.loaded.current().not_after_unix
    }

    /// Loads the files again if any of them changed; `Ok(true)` when the new ones are in force.
    pub fn reload_if_changed(&self) -> Result<bool> {
        self.loaded.reload_if_changed()
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.loaded.current().server.clone())
    }
}

/// The server configuration and when its certificate expires. An expired certificate is loaded
/// all the same, with a warning: refusing it would stop the node that is about to be handed
/// the renewed one, and clients refuse it anyway.
fn server_config(files: &TlsConfig, alpn: &[Vec<u8>]) -> Result<(rustls::ServerConfig, i64)> {
    let fail = |path: &Path, message: String| Error::Access(format!("TLS {}: {message}", path.display()));
    let cert_pem = std::fs::read(&files.cert).map_err(|e| fail(&files.cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| fail(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(fail(&files.cert, "no certificate in the file".into()));
    }
    let not_after_unix = not_after(&chain[0]).map_err(|message| fail(&files.cert, message))?;
    let expired_for = unix_now() - not_after_unix;
    if expired_for > 0 {
        tracing::warn!(
            cert = %files.cert.display(),
            expired_seconds_ago = expired_for,
            "the node's TLS certificate has expired: clients will refuse it until it is renewed"
        );
    }
    let key_pem = read_owner_only(&files.key, "TLS key")?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| fail(&files.key, format!("not a PEM private key: {e}")))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| fail(ca, e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| fail(ca, format!("not a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| fail(ca, format!("not a CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| fail(&files.cert, format!("certificate and key do not go together: {e}")))?;
    config.alpn_protocols = alpn.to_vec();
    Ok((config, not_after_unix))
}

fn not_after(leaf: &CertificateDer<'_>) -> std::result::Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The TLS connections of a listener, each handshaken on its own task with the configuration
/// current when it arrived, so that one slow client never holds up the others.
pub struct TlsIncoming {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsIncoming {
    pub fn new(listener: TcpListener, tls: Arc<Tls>) -> std::io::Result<TlsIncoming> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_BACKLOG);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(connection) => connection,
                        Err(err) => {
                            // Out of file descriptors and the like: wait rather than spin.
                            tracing::warn!(%err, "accepting a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                let acceptor = tls.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsIncoming { accepted, local })
    }
}

/// For tonic's `serve_with_incoming`.
impl tokio_stream::Stream for TlsIncoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted
            .poll_recv(cx)
            .map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}

/// For axum's `serve`.
impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop ends only with this listener; nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate valid until `not_after`, with its key, in `dir`.
    fn files_until(dir: &Path, not_after: (i32, u8, u8)) -> TlsConfig {
        use std::os::unix::fs::PermissionsExt;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = TlsConfig {
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
            client_ca: None,
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        files
    }

    #[test]
    fn the_expiry_is_read_from_the_certificate_and_an_expired_one_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        // 2021-03-04T00:00:00Z and 2031-05-06T00:00:00Z.
        let expired = Tls::load(files_until(dir.path(), (2021, 3, 4)), &[ALPN_GRPC]).expect("loads, with a warning");
        assert_eq!(expired.not_after_unix(), 1_614_816_000);
        let renewed = dir.path().join("renewed");
        std::fs::create_dir(&renewed).unwrap();
        let fresh = files_until(&renewed, (2031, 5, 6));
        std::fs::rename(&fresh.cert, dir.path().join("node.pem")).unwrap();
        std::fs::rename(&fresh.key, dir.path().join("node.key")).unwrap();
        assert!(expired.reload_if_changed().unwrap());
        assert_eq!(expired.not_after_unix(), 1_935_792_000);
    }
}
