//! Pull mode: for nodes the centre can reach, the collector dials the node and subscribes to its
//! log, resuming after the highest offset JetStream holds for that node, so that a collector
//! restart or a node outage of any length neither loses nor repeats a record. What arrives goes
//! through the same [`Pump`] as a push.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::CollectorMetrics;
use super::pump::{Pump, next_batch};
use super::sink::Sink;
use crate::clock::Backoff;
use crate::config::PushConfig;
use crate::deliver::client::{BearerToken, Credentials};
use crate::error::{Error, Result};
use crate::pb::{self, retina_client::RetinaClient};
use crate::shutdown::Shutdown;

/// Per pulled node, on the collector's `/metrics`.
#[derive(Clone, Default)]
pub struct PullMetrics {
    /// 1 while subscribed to the node, 0 while connecting or waiting to retry.
    pub connected: Family<Vec<(String, String)>, Gauge>,
    pub reconnects: Family<Vec<(String, String)>, Counter>,
}

/// One task per `[[pull]]`; each ends when `stop` is triggered.
pub fn start(
    targets: &[PushConfig],
    resolve: impl Fn(&std::path::Path) -> PathBuf,
    sink: Arc<Sink>,
    metrics: Arc<CollectorMetrics>,
    stop: Shutdown,
) -> Vec<tokio::task::JoinHandle<()>> {
    targets
        .iter()
        .map(|config| {
            let (ca_cert, client_cert) = config.tls_files(&resolve);
            let target = Target {
                name: config.name.clone(),
                address: config.address.clone(),
                credentials: Credentials {
                    ca_cert,
                    client_cert,
                    token: None,
                },
                token_file: config.token_file.as_deref().map(&resolve),
                request: pb::SubscribeRequest {
                    camera_ids: config.camera_ids.clone(),
                    class_names: config.class_names.clone(),
                    min_score: config.min_score,
                    include_empty_frames: config.include_empty_frames,
                    subscriber_name: "retina-collect".into(),
                    ..Default::default()
                },
                backoff: (
                    Duration::from_secs_f64(config.reconnect_initial_seconds),
                    Duration::from_secs_f64(config.reconnect_max_seconds),
                ),
            };
            tokio::spawn(run(target, sink.clone(), metrics.clone(), stop.clone()))
        })
        .collect()
}

struct Target {
    name: String,
    address: String,
    credentials: Credentials,
    token_file: Option<PathBuf>,
    request: pb::SubscribeRequest,
    backoff: (Duration, Duration),
}

async fn run(target: Target, sink: Arc<Sink>, metrics: Arc<CollectorMetrics>, stop: Shutdown) {
    let labels = vec![("target".to_string(), target.name.clone())];
    let connected = metrics.pull.connected.get_or_create(&labels).clone();
    let reconnects = metrics.pull.reconnects.get_or_create(&labels).clone();
    let mut backoff = Backoff::new(target.backoff.0, target.backoff.1, Instant::now);
    loop {
        backoff.start_run();
        let ended = tokio::select! {
            ended = session(&target, &sink, &metrics, &connected) => ended,
            () = stop.wait() => return,
        };
        connected.set(0);
        backoff.end_run();
        let delay = backoff.next_delay();
        reconnects.inc();
        match ended {
            Ok(()) => tracing::info!(target = %target.name, retry_in = ?delay, "the node ended the stream"),
            Err(err) => tracing::warn!(target = %target.name, %err, retry_in = ?delay, "pulled node unavailable"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.wait() => return,
        }
    }
}

/// One subscription to the node, until it breaks.
async fn session(target: &Target, sink: &Arc<Sink>, metrics: &Arc<CollectorMetrics>, connected: &Gauge) -> Result<()> {
    let unavailable = |what: &str, err: &dyn std::fmt::Display| Error::Unavailable(format!("{what}: {err}"));
    let token = match &target.token_file {
        Some(path) => Some(crate::files::read_secret_line(path, "pull token file")?),
        None => None,
    };
    let channel = crate::deliver::client::channel(&target.address, &target.credentials)
        .await
        .map_err(|e| unavailable(&format!("connecting to {}", target.address), &format!("{e:#}")))?;
    let bearer = BearerToken::new(token.as_deref()).map_err(|e| Error::Access(e.to_string()))?;
    let mut client = RetinaClient::with_interceptor(channel, bearer);
    let info = client
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .map_err(|s| unavailable("GetNodeInfo", &s.message()))?
        .into_inner();
    let node = info.node_id.clone();
    sink.write_node_info(&node, &info).await?;
    let held = sink.held_through(&node).await?;
    let mut request = target.request.clone();
    match held {
        Some(after) => {
            request.start = pb::StartPosition::AfterOffset as i32;
            request.after_offset = after;
        }
        None => request.start = pb::StartPosition::Earliest as i32,
    }
    let mut stream = client
        .subscribe(request)
        .await
        .map_err(|s| unavailable("Subscribe", &s.message()))?
        .into_inner();
    connected.set(1);
    tracing::info!(target = %target.name, %node, ?held, "pulling");
    let mut pump = Pump::new(node, sink.clone(), metrics.clone(), held);
    while let Some((batch, ended)) = next_batch(&mut stream).await {
        pump.store(batch).await?;
        if let Some(end) = ended {
            pump.note().await;
            return match end {
                Some(status) => Err(unavailable("Subscribe", &status.message())),
                None => Ok(()),
            };
        }
    }
    pump.note().await;
    Ok(())
}
