//! Deliver: descriptors leave the node. A [`Hub`] fans them out without ever blocking the
//! pipeline; the gRPC service streams them to central systems; [`client`] is the central side.

pub mod client;
mod hub;
mod service;

pub use hub::Hub;
pub use service::{NodeFacts, RetinaService, serve};
