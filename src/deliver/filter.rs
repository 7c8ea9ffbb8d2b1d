//! What a reader of the node's log is sent: its filters (cameras, classes, scores, empty frames),
//! context fields only where they changed, and gap notices. Shared by subscribers and push targets.

use std::collections::{HashMap, HashSet};

use tonic::Status;

use super::service::NodeFacts;
use crate::log::{Gap, GapReason};
use crate::pb;
use crate::wire::{context_of, copy_context, same_context, score_q8};

/// A subscriber's filters, validated.
pub(super) struct Filter {
    cameras: HashSet<String>,
    class_ids: HashSet<u32>,
    min_score: f32,
    /// `min_score` as tracks carry scores.
    min_score_q8: u32,
    include_empty_frames: bool,
    full_context: bool,
}

impl Filter {
    pub(super) fn from_request(request: &pb::SubscribeRequest, facts: &NodeFacts) -> Result<Filter, Status> {
        let filter = Filter::without_camera_check(request, facts)?;
        let known: HashSet<String> = facts
            .cameras
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| c.id.clone())
            .collect();
        if let Some(unknown) = request.camera_ids.iter().find(|c| !known.contains(*c)) {
            let mut known: Vec<String> = known.into_iter().collect();
            known.sort();
            return Err(Status::not_found(format!(
                "no camera {} on this node; cameras: {}",
                crate::error::quoted(unknown),
                known.join(", ")
            )));
        }
        Ok(filter)
    }

    /// The filter of a push target: its cameras may come and go while it runs.
    pub(super) fn without_camera_check(request: &pb::SubscribeRequest, facts: &NodeFacts) -> Result<Filter, Status> {
        if !(0.0..=1.0).contains(&request.min_score) {
            return Err(Status::invalid_argument(format!(
                "min_score must lie in 0..=1, got {}",
                request.min_score
            )));
        }
        let class_ids = class_ids(&request.class_names, facts)?;
        Ok(Filter {
            cameras: request.camera_ids.iter().cloned().collect(),
            class_ids,
            min_score: request.min_score,
            min_score_q8: score_q8(request.min_score),
            include_empty_frames: request.include_empty_frames,
            full_context: request.full_context,
        })
    }

    /// A query's filter: classes only (cameras, tracks and times are selected by the log), and
    /// every descriptor complete.
    pub(super) fn for_query(class_names: &[String], facts: &NodeFacts) -> Result<Filter, Status> {
        let class_ids = class_ids(class_names, facts)?;
        Ok(Filter {
            cameras: HashSet::new(),
            include_empty_frames: class_ids.is_empty(),
            class_ids,
            min_score: 0.0,
            min_score_q8: 0,
            full_context: true,
        })
    }

    /// The descriptor as this subscriber should see it, or `None` to skip it. Scores filter what
    /// is seen in the frame (objects, tracks); classes filter that and the track events. The
    /// context fields are copied only when `sent` says the subscriber needs them.
    pub(super) fn apply(
        &self,
        descriptor: &pb::FrameDescriptor,
        sent: &mut SentContext,
    ) -> Option<pb::FrameDescriptor> {
        if !self.cameras.is_empty() && !self.cameras.contains(&descriptor.camera_id) {
            return None;
        }
        let min_score_q8 = self.min_score_q8;
        let keep_class = |class_id: u32| self.class_ids.is_empty() || self.class_ids.contains(&class_id);
        let keep_object = |o: &pb::DetectedObject| o.score >= self.min_score && keep_class(o.class_id);
        let keep_track = |t: &pb::TrackedObject| t.score_q8 >= min_score_q8 && keep_class(t.class_id);
        let keep_event = |e: &pb::TrackEvent| keep_class(e.class_id);
        // Only what is kept is copied: with filters, most of a descriptor may be left behind.
        let objects: Vec<_> = descriptor.objects.iter().filter(|o| keep_object(o)).cloned().collect();
        let tracks: Vec<_> = descriptor.tracks.iter().filter(|t| keep_track(t)).cloned().collect();
        let track_events: Vec<_> = descriptor
            .track_events
            .iter()
            .filter(|e| keep_event(e))
            .cloned()
            .collect();
        let zone_events: Vec<_> = descriptor
            .zone_events
            .iter()
            .filter(|e| keep_class(e.class_id))
            .cloned()
            .collect();
        // A model change is where a consumer's descriptors change meaning, an export record who
        // looked at the camera's pixels, a count record what happened in an interval (zero
        // counts too): never filtered out.
        let change =
            descriptor.model_change.is_some() || descriptor.pixel_export.is_some() || descriptor.counts.is_some();
        let nothing = objects.is_empty() && tracks.is_empty() && track_events.is_empty() && zone_events.is_empty();
        if nothing && !self.include_empty_frames && !change {
            return None;
        }
        let d = descriptor;
        let mut message = pb::FrameDescriptor {
            camera_id: d.camera_id.clone(),
            sequence: d.sequence,
            offset: d.offset,
            capture_time: d.capture_time,
            time_source: d.time_source,
            sampling: d.sampling,
            objects,
            tracks,
            track_events,
            zone_events,
            model_change: d.model_change.clone(),
            pixel_export: d.pixel_export.clone(),
            counts: d.counts.clone(),
            ..Default::default()
        };
        let context_changed = !self.full_context && sent.changed(d);
        if self.full_context || context_changed || change {
            copy_context(d, &mut message);
        }
        Some(message)
    }
}

/// Detector class ids of `names`; an unknown name is an error listing the known ones.
fn class_ids(names: &[String], facts: &NodeFacts) -> Result<HashSet<u32>, Status> {
    let mut ids = HashSet::new();
    let running = facts.models();
    for class in names {
        let Some(id) = running.class_names.iter().position(|c| c == class) else {
            return Err(Status::invalid_argument(format!(
                "unknown class {}; the detector's classes are: {}",
                crate::error::quoted(class),
                running.class_names.join(", ")
            )));
        };
        ids.insert(id as u32);
    }
    Ok(ids)
}

/// The context fields of the descriptors a subscriber was last sent, per camera, so that they are
/// sent only when they change (see `FrameDescriptor` in the proto).
#[derive(Default)]
pub(super) struct SentContext {
    per_camera: HashMap<String, pb::FrameDescriptor>,
}

impl SentContext {
    /// Whether the context of `descriptor` differs from what this subscriber was last sent for its
    /// camera; if so, it counts as sent from now on.
    fn changed(&mut self, descriptor: &pb::FrameDescriptor) -> bool {
        let unchanged = self
            .per_camera
            .get(&descriptor.camera_id)
            .is_some_and(|sent| same_context(sent, descriptor));
        if !unchanged {
            self.per_camera
                .insert(descriptor.camera_id.clone(), context_of(descriptor));
        }
        !unchanged
    }
}

pub(super) fn gap_notice(gap: Gap) -> pb::FrameDescriptor {
    let reason = match gap.reason {
        GapReason::Evicted => pb::LogGapReason::Evicted,
        GapReason::NotStored => pb::LogGapReason::NotStored,
        GapReason::LostInCrash => pb::LogGapReason::LostInCrash,
    };
    pb::FrameDescriptor {
        gap: Some(pb::LogGap {
            first_offset: gap.first,
            last_offset: gap.last,
            reason: reason as i32,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(camera: &str, detector: &str) -> pb::FrameDescriptor {
        pb::FrameDescriptor {
            camera_id: camera.into(),
            node_id: "n".into(),
            detector: Some(pb::ModelRef {
                id: detector.into(),
                version: "1".into(),
            }),
            ..Default::default()
        }
    }

    /// A subscriber that asked for cars only, without empty frames, still gets the record where
    /// the models change, with the new models named; not the empty frames around it, nor other
    /// cameras' records.
    #[test]
    fn a_model_change_passes_every_filter_but_the_camera_one() {
        let filter = Filter {
            cameras: ["a".to_string()].into(),
            class_ids: [2].into(),
            min_score: 0.5,
            min_score_q8: score_q8(0.5),
            include_empty_frames: false,
            full_context: false,
        };
        let mut sent = SentContext::default();
        let mut change = descriptor("a", "new");
        change.model_change = Some(pb::ModelChange {
            generation: 1,
            reason: "activated".into(),
            previous_detector: Some(pb::ModelRef {
                id: "old".into(),
                version: "1".into(),
            }),
            previous_embedder: None,
            class_names: vec!["car".into()],
        });
        assert!(
            filter.apply(&descriptor("a", "old"), &mut sent).is_none(),
            "an empty frame"
        );
        let delivered = filter.apply(&change, &mut sent).expect("the change record");
        assert_eq!(delivered.model_change, change.model_change);
        assert_eq!(delivered.detector.unwrap().id, "new");
        // Sent once: the next change record repeats the context although it did not change.
        let again = filter.apply(&change, &mut sent).unwrap();
        assert_eq!(again.detector.unwrap().id, "new");
        let mut elsewhere = change.clone();
        elsewhere.camera_id = "b".into();
        assert!(filter.apply(&elsewhere, &mut sent).is_none(), "another camera");
    }
}
