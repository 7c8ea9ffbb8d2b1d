//! Deliver: descriptors leave the node. The gRPC service streams them from the log to central
//! systems (subscriptions that resume, queries of the recent past) and takes camera changes;
//! [`pixels`] hands out snapshots and clips from the video ring, faces blurred;
//! [`client`] is the central side. Everything here reads the log, nothing reaches back into the
//! stages before it; model changes go through [`ModelControl`], which the node provides.

pub mod client;
mod filter;
pub(crate) mod models;
pub mod page;
pub mod pixels;
pub mod push;
mod service;

pub use models::{ModelControl, self_test_report, shadow_report};
pub use service::{AdminService, Guarded, Limits, NodeFacts, RetinaService, RunningModels, SourcePolicy, serve};
