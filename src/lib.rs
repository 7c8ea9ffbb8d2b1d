//! retina-edge: a "digital retina" for a city brain. Camera streams are decoded at the edge,
//! objects found and described there, and only compact descriptors leave the node.
//!
//! The modules follow the data's one-way path:
//!
//! - [`ingest`]: GStreamer pipelines per camera, capture time, the bounded hand-over queue;
//! - [`infer`]: model manifests, ONNX Runtime sessions, pre-processing, output decoders, workers;
//! - [`describe`]: ordering, numbering, normalising and encoding results as descriptors;
//! - [`log`]: the durable descriptor log, the seam every reader reads from;
//! - [`deliver`]: fan-out to subscribers, the gRPC service, and a central-side client.
//!
//! Beside them, small and shared: [`config`], [`error`], [`files`], [`clock`], [`shutdown`],
//! [`wire`], [`metrics`], [`access`] (TLS and tokens for every listener), and [`node`], which
//! wires the stages together.
//!
//! **Layering.** Dependencies go one way, with no cycle (`tests/architecture.rs` checks it):
//!
//! 1. `pb`, [`error`], [`files`] (secrets and files re-read when they change), [`clock`],
//!    [`shutdown`], [`wire`] (the proto's compact fields, encoded and decoded) and [`config`]
//!    (every section of the file as plain data, `[describe]` included) name nothing above them;
//! 2. [`video`] (the recent-video ring: written from `ingest`, read by `deliver`), then [`ingest`];
//! 3. [`metrics`], which reads the cameras' counters from `ingest` and which every later stage
//!    records into;
//! 4. [`infer`] → [`describe`] → [`log`] → [`deliver`], each naming only what comes before it;
//! 5. [`node`], which wires everything; nothing names it.

pub mod access;
pub mod clock;
pub mod collect;
pub mod config;
pub mod deliver;
pub mod describe;
pub mod error;
pub mod files;
#[cfg(test)]
mod fuzz;
pub mod infer;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod node;
pub mod shutdown;
pub mod video;
pub mod wire;

/// Generated from `proto/retina/v1/retina.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("retina.v1");
}

pub use error::{Error, Result};
