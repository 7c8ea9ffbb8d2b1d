//! `retina-edge collect`: the central end of push mode. Nodes dial in (`retina.v1.Collector/Push`)
//! with a token named after them; every record they send is written into a NATS JetStream stream,
//! one subject per node and camera, and acknowledged to the node only once JetStream has stored
//! it. A central system then reads thousands of cameras from one stream, with JetStream's
//! consumers, instead of holding a subscription to every box.
//!
//! It reads nodes' logs as a remote reader would, and names nothing of a node's stages.

mod pull;
mod pump;
pub mod read;
mod service;
mod sink;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio_stream::wrappers::TcpListenerStream;

use crate::access::{self, Guarded, Tls, Tokens};
use crate::config::{CollectorConfig, TlsConfig};
use crate::error::{Error, Result};
use crate::pb::collector_server::CollectorServer;
use crate::shutdown::Shutdown;

pub use sink::Sink;

/// A record is at most a few KiB; a node's whole frame with detections stays far below this.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// What the collector counts, on its own `/metrics`.
pub struct CollectorMetrics {
    registry: Registry,
    records: Counter,
    jetstream_waits: Counter,
    pull: pull::PullMetrics,
}

impl CollectorMetrics {
    fn new() -> CollectorMetrics {
        let mut registry = Registry::default();
        let records = Counter::default();
        let jetstream_waits = Counter::default();
        registry.register(
            "retina_collect_records",
            "Records stored in JetStream and acknowledged to their nodes",
            records.clone(),
        );
        registry.register(
            "retina_collect_jetstream_waits",
            "Times a batch waited because JetStream did not store it (the nodes are held meanwhile)",
            jetstream_waits.clone(),
        );
        let pull = pull::PullMetrics::default();
        registry.register(
            "retina_collect_pull_connected",
            "1 while subscribed to a pulled node, 0 while connecting or waiting to retry",
            pull.connected.clone(),
        );
        registry.register(
            "retina_collect_pull_reconnects",
            "Subscriptions to a pulled node that ended or failed, each followed by a retry",
            pull.reconnects.clone(),
        );
        CollectorMetrics {
            registry,
            records,
            jetstream_waits,
            pull,
        }
    }

    fn encode(&self) -> Result<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|_| Error::Internal("metrics encoding failed".into()))?;
        Ok(text)
    }
}

/// A running collector: where it listens, and how to stop it.
pub struct Collector {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: Option<std::net::SocketAddr>,
    stop: Shutdown,
    served: tokio::task::JoinHandle<Result<()>>,
}

impl Collector {
    /// Connects to JetStream (creating the stream and bucket), then listens.
    pub async fn start(config: CollectorConfig) -> Result<Collector> {
        let listeners = [
            Some(("collector.listen", config.collector.listen)),
            config.collector.metrics_listen.map(|a| ("collector.metrics_listen", a)),
        ];
        let guarded = Guarded {
            tls: config.tls.is_some(),
            auth: config.auth.is_some(),
            insecure: config.collector.insecure,
            insecure_field: "collector.insecure",
        };
        guarded.check_all(listeners.into_iter().flatten(), &config.origin)?;
        let tls_files = config.tls.as_ref().map(|tls| TlsConfig {
            cert: config.resolve(&tls.cert),
            key: config.resolve(&tls.key),
            client_ca: tls.client_ca.as_ref().map(|ca| config.resolve(ca)),
        });
        let grpc_tls = tls_files
            .clone()
            .map(|files| Tls::load(files, &[access::ALPN_GRPC]).map(Arc::new))
            .transpose()?;
        let metrics_tls = match (&tls_files, config.collector.metrics_listen) {
            (Some(files), Some(_)) => Some(Arc::new(Tls::load(files.clone(), &[access::ALPN_HTTP1])?)),
            _ => None,
        };
        let tokens = match &config.auth {
            Some(auth) => Some(Arc::new(Tokens::load(&config.resolve(&auth.tokens_file))?)),
            None => None,
        };
        let sink = Arc::new(Sink::connect(&config.nats).await?);
        let metrics = Arc::new(CollectorMetrics::new());

        let listener = tokio::net::TcpListener::bind(config.collector.listen)
            .await
            .map_err(|e| Error::io(format!("binding {}", config.collector.listen), e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("collector address", e))?;
        let stop = Shutdown::new();
        let metrics_addr = match config.collector.metrics_listen {
            Some(metrics_listen) => {
                let listener = crate::metrics::bind(metrics_listen).await?;
                let bound = listener.local_addr().map_err(|e| Error::io("metrics address", e))?;
                let encoder = metrics.clone();
                tokio::spawn(crate::metrics::serve(
                    listener,
                    move || encoder.encode(),
                    axum::Router::new(),
                    metrics_tls.clone(),
                    tokens.clone(),
                    stop.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let reloadable: Vec<(&'static str, Arc<Tls>)> = [("grpc", &grpc_tls), ("metrics", &metrics_tls)]
            .into_iter()
            .filter_map(|(listener, tls)| Some((listener, tls.clone()?)))
            .collect();
        if !reloadable.is_empty() || tokens.is_some() {
            tokio::spawn(access::keep_reloading(reloadable, tokens.clone(), |_| {}, stop.clone()));
        }
        let resolve = |path: &std::path::Path| config.resolve(path);
        pull::start(&config.pull, resolve, sink.clone(), metrics.clone(), stop.clone());
        let service = service::CollectorService {
            sink,
            metrics,
            tokens_required: tokens.is_some(),
        };
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(access::GrpcGuardLayer::new(tokens))
            .add_service(CollectorServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES));
        let stopped = {
            let stop = stop.clone();
            async move { stop.wait().await }
        };
        let served = tokio::spawn(async move {
            match grpc_tls {
                Some(tls) => {
                    let incoming =
                        access::TlsIncoming::new(listener, tls).map_err(|e| Error::io("collector address", e))?;
                    router.serve_with_incoming_shutdown(incoming, stopped).await?;
                }
                None => {
                    router
                        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped)
                        .await?
                }
            }
            Ok(())
        });
        tracing::info!(%addr, "collector listening");
        Ok(Collector {
            addr,
            metrics_addr,
            stop,
            served,
        })
    }

    pub fn stop_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Waits until the collector has stopped (after [`Collector::stop_handle`] is triggered).
    pub async fn wait(self) -> Result<()> {
        self.served
            .await
            .map_err(|e| Error::Internal(format!("collector task: {e}")))?
    }
}
