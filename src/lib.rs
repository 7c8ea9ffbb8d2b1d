//! retina-edge: a "digital retina" for a city brain. Camera streams are decoded at the edge,
//! objects found and described there, and only compact descriptors leave the node.
//!
//! The modules follow the data's one-way path:
//!
//! - [`ingest`]: GStreamer pipelines per camera, capture time, the bounded hand-over queue;
//! - [`infer`]: model manifests, ONNX Runtime sessions, pre-processing, output decoders, workers;
//! - [`describe`]: ordering, numbering, normalising and encoding results as descriptors;
//! - [`log`]: the durable descriptor log (being built: issue #9), the seam readers will read from;
//! - [`deliver`]: fan-out to subscribers, the gRPC service, and a central-side client.
//!
//! Beside them, small and shared: [`config`], [`error`], [`clock`], [`shutdown`], [`metrics`],
//! and [`node`], which wires the stages together.

pub mod clock;
pub mod config;
pub mod deliver;
pub mod describe;
pub mod error;
pub mod infer;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod node;
pub mod shutdown;

/// Generated from `proto/retina/v1/retina.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("retina.v1");
}

pub use error::{Error, Result};
