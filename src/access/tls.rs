//! TLS for a listener, with certificates that can change under it. tonic's own TLS is fixed at
//! start; short-lived certificates (ACME, an internal CA) on a box nobody visits need the next
//! connection to get the new certificate, so the handshake is done here, with whatever
//! configuration is current, and tonic and axum are handed finished TLS streams.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use super::files::{FileStamp, read_owner_only};
use crate::config::TlsConfig;
use crate::error::{Error, Result};

pub const ALPN_GRPC: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A client that opens a connection and never finishes its handshake must not hold a task
/// and a socket for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// One listener's TLS configuration, swapped whole when its files change.
pub struct Tls {
    files: TlsConfig,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<rustls::ServerConfig>>,
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

impl Tls {
    pub fn load(files: TlsConfig, alpn: &[&[u8]]) -> Result<Tls> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let stamps = stamps(&files);
        let config = server_config(&files, &alpn)?;
        Ok(Tls {
            files,
            alpn,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        })
    }

    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }

    /// Loads the files again if any of them changed; `Ok(true)` when the new ones are in force.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = stamps(&self.files);
        let mut last = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return Ok(false);
        }
        // Remembered even if loading fails: a certificate tool writes the key and the
        // certificate one after the other, and the pair is tried again when the second lands.
        *last = now;
        let config = server_config(&self.files, &self.alpn)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(true)
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn stamps(files: &TlsConfig) -> Vec<Option<FileStamp>> {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| FileStamp::of(p))
        .collect()
}

fn server_config(files: &TlsConfig, alpn: &[Vec<u8>]) -> Result<rustls::ServerConfig> {
    let fail = |path: &Path, message: String| Error::Access(format!("TLS {}: {message}", path.display()));
    let cert_pem = std::fs::read(&files.cert).map_err(|e| fail(&files.cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| fail(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(fail(&files.cert, "no certificate in the file".into()));
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
    Ok(config)
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
