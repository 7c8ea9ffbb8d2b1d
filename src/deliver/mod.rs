//! Deliver: descriptors leave the node. The gRPC service streams them from the log to central
//! systems (subscriptions that resume, queries of the recent past) and takes camera changes;
//! [`client`] is the central side. Everything here reads the log, nothing reaches back into the
//! stages before it.

pub mod client;
mod service;

pub use service::{AdminService, Limits, NodeFacts, RetinaService, serve};

use crate::pb::FrameDescriptor;

/// Only the context fields of `d` (see `FrameDescriptor` in the proto): what a stream sends once
/// per camera and again when it changes.
pub fn context_of(d: &FrameDescriptor) -> FrameDescriptor {
    let mut context = FrameDescriptor::default();
    copy_context(d, &mut context);
    context
}

/// Sets the context fields of `to` to those of `from`: the one list of them, with
/// [`same_context`].
pub fn copy_context(from: &FrameDescriptor, to: &mut FrameDescriptor) {
    to.node_id.clone_from(&from.node_id);
    to.node_run_id = from.node_run_id;
    to.frame_width = from.frame_width;
    to.frame_height = from.frame_height;
    to.detector.clone_from(&from.detector);
    to.embedder.clone_from(&from.embedder);
    to.camera_position.clone_from(&from.camera_position);
}

/// Whether `a` and `b` have the same context fields.
pub fn same_context(a: &FrameDescriptor, b: &FrameDescriptor) -> bool {
    a.node_id == b.node_id
        && a.node_run_id == b.node_run_id
        && a.frame_width == b.frame_width
        && a.frame_height == b.frame_height
        && a.detector == b.detector
        && a.embedder == b.embedder
        && a.camera_position == b.camera_position
}
