//! Deliver: descriptors leave the node. A [`Hub`] fans them out without ever blocking the
//! pipeline; the gRPC service streams them to central systems; [`client`] is the central side.

pub mod client;
mod hub;
mod service;

pub use hub::Hub;
pub use service::{NodeFacts, RetinaService, serve};

use crate::pb::FrameDescriptor;

/// Only the context fields of `d` (see `FrameDescriptor` in the proto): what a stream sends once
/// per camera and again when it changes.
pub fn context_of(d: &FrameDescriptor) -> FrameDescriptor {
    FrameDescriptor {
        node_id: d.node_id.clone(),
        node_run_id: d.node_run_id,
        frame_width: d.frame_width,
        frame_height: d.frame_height,
        detector: d.detector.clone(),
        embedder: d.embedder.clone(),
        camera_position: d.camera_position.clone(),
        ..FrameDescriptor::default()
    }
}
