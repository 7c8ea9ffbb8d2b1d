//! What the proto's compact fields mean, encoded and decoded: quantised scores (`score_q8`),
//! boxes and points packed 16 bits per coordinate (`box_q16`, `point_q16`), the names of track
//! event kinds, where a descriptor carries appearance vectors, and which of its fields are
//! context (sent once per camera and again when they change). The one place for them: the
//! describer encodes with these; the service, the central-side client and the metrics read
//! with them. It depends on nothing but the generated types.

use crate::pb::{self, FrameDescriptor};

/// The name of an event kind, as metrics label it and the CLI prints it.
pub fn event_kind_label(kind: pb::TrackEventKind) -> &'static str {
    match kind {
        pb::TrackEventKind::Confirmed => "confirmed",
        pb::TrackEventKind::BetterView => "better_view",
        pb::TrackEventKind::AppearanceChanged => "appearance_changed",
        pb::TrackEventKind::Ended => "ended",
        pb::TrackEventKind::Unspecified => "unspecified",
    }
}

/// The label of a camera state in metrics and on the status page: "streaming", "failed", ...
pub fn camera_state_label(state: pb::CameraState) -> String {
    state
        .as_str_name()
        .trim_start_matches("CAMERA_STATE_")
        .to_ascii_lowercase()
}

/// The label of a zone event's kind in metrics, JSON and the page: "entered", "left", "crossed".
pub fn zone_event_kind_label(kind: pb::ZoneEventKind) -> &'static str {
    match kind {
        pb::ZoneEventKind::Entered => "entered",
        pb::ZoneEventKind::Left => "left",
        pb::ZoneEventKind::Crossed => "crossed",
        pb::ZoneEventKind::Unspecified => "unspecified",
    }
}

/// Every appearance vector a descriptor carries: in track events' views and, when detections
/// are sent, in the detections.
pub fn appearances(d: &FrameDescriptor) -> impl Iterator<Item = &pb::Embedding> {
    d.track_events
        .iter()
        .filter_map(|e| e.view.as_ref()?.appearance.as_ref())
        .chain(d.objects.iter().filter_map(|o| o.embedding.as_ref()))
}

/// `round(score × 255)`, the wire form of a score.
pub fn score_q8(score: f32) -> u32 {
    (score.clamp(0.0, 1.0) * 255.0).round() as u32
}

/// A pixel coordinate as a fraction of the frame's `size`, in 0..=1; a malformed (NaN)
/// coordinate becomes the frame's edge, 0.
pub fn normalised(v: f32, size: u32) -> f32 {
    let fraction = (v / size.max(1) as f32).clamp(0.0, 1.0);
    if fraction.is_nan() { 0.0 } else { fraction }
}

fn q16(v: f32, size: u32) -> u64 {
    (normalised(v, size) * 65535.0).round() as u64
}

/// A box in frame pixels, normalised and packed 16 bits per coordinate (see `TrackedObject`).
pub fn box_q16(bbox: [f32; 4], (width, height): (u32, u32)) -> u64 {
    q16(bbox[0], width) | q16(bbox[1], height) << 16 | q16(bbox[2], width) << 32 | q16(bbox[3], height) << 48
}

/// `[x_min, y_min, x_max, y_max]`, normalised to the frame.
pub fn decode_box_q16(packed: u64) -> [f32; 4] {
    std::array::from_fn(|i| ((packed >> (16 * i)) & 0xFFFF) as f32 / 65535.0)
}

/// A point in frame pixels, normalised and packed: x in bits 0-15, y in 16-31.
pub fn point_q16(x: f32, y: f32, (width, height): (u32, u32)) -> u32 {
    (q16(x, width) | q16(y, height) << 16) as u32
}

pub fn decode_point_q16(packed: u32) -> [f32; 2] {
    [(packed & 0xFFFF) as f32 / 65535.0, (packed >> 16) as f32 / 65535.0]
}

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

/// How a frame was chosen from its camera's stream, as the wire says it.
pub fn sampling(keyframes_only: bool) -> pb::Sampling {
    if keyframes_only {
        pb::Sampling::Keyframes
    } else {
        pb::Sampling::Unspecified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantised_boxes_points_and_scores_decode_to_within_half_a_step() {
        let b = box_q16([64.0, 48.0, 640.0, 240.0], (640, 480));
        assert_eq!(
            decode_box_q16(b),
            [0.1, 0.1, 1.0, 0.5].map(|v: f32| (v * 65535.0).round() / 65535.0)
        );
        assert_eq!(b & 0xFFFF, 6554);
        assert_eq!(b >> 32 & 0xFFFF, 65535);
        // Outside the frame, NaN and a zero-sized frame are clamped, not a panic.
        assert_eq!(
            decode_box_q16(box_q16([-5.0, f32::NAN, 1e9, 10.0], (0, 0))),
            [0.0, 0.0, 1.0, 1.0]
        );
        let p = decode_point_q16(point_q16(320.0, 120.0, (640, 480)));
        assert!((p[0] - 0.5).abs() < 1.0 / 65535.0 && (p[1] - 0.25).abs() < 1.0 / 65535.0);
        assert_eq!(
            (score_q8(0.0), score_q8(1.0), score_q8(0.5), score_q8(f32::NAN)),
            (0, 255, 128, 0)
        );
    }
}
