//! The emission policy: what of a camera's tracks goes on the wire.
//!
//! Every analysed frame gets a light record per visible confirmed track (id, class, quantised score
//! and box: about 20 bytes). An appearance descriptor, the expensive part, is sent only when it
//! tells the centre something new about a track:
//!
//! - **confirmed**: the first view, so the centre can search for the object at once;
//! - **better view**: a view whose quality beats every view described so far by
//!   `better_view_gain`. Quality is `score × √area × √sharpness`: a larger, more confidently
//!   detected, less blurred crop gives a better embedding;
//! - **appearance changed**: the track's recent appearance (a moving average, so one odd crop
//!   does not count) has drifted below `appearance_change_similarity` of the last descriptor;
//! - **ended**: a summary with the best view of the whole track, its first and last sighting and
//!   its simplified trajectory, which is what a search index keeps.
//!
//! Better views and changes are rate-limited per track (`min_descriptor_interval_seconds`) and
//! capped (`max_descriptors_per_track`), so a car waiting at a red light costs its records only.

use std::collections::HashMap;

use super::codec::dot;
use super::track::{EndReason, EndedTrack, TrackEvent, TrackUpdate, blend};
use crate::clock::to_timestamp;
pub use crate::config::EmissionConfig;
use crate::infer::Detection;
use crate::pb;
use crate::wire::{box_q16, point_q16, score_q8};

/// Weight of a track's recent appearance against each new embedding when measuring drift.
const RECENT_APPEARANCE_MOMENTUM: f32 = 0.7;

/// Encodes a unit-length embedding for the wire; `None` when it cannot (logged by the caller).
pub type Encode<'a> = dyn FnMut(&[f32]) -> Option<pb::Embedding> + 'a;

/// The emission state of one camera's tracks.
#[derive(Default)]
pub struct Emitter {
    config: EmissionConfig,
    tracks: HashMap<u64, TrackState>,
}

#[derive(Default)]
struct TrackState {
    described: u32,
    last_described_ns: i64,
    best_described_quality: f32,
    /// Unit length.
    last_described: Option<Vec<f32>>,
    /// Moving average of the embeddings, restarted at each descriptor, unit length.
    recent: Option<Vec<f32>>,
    best_view: Option<View>,
}

#[derive(Clone, Default)]
struct View {
    time_ns: i64,
    score: f32,
    bbox: [f32; 4],
    quality: f32,
    /// Unit length.
    embedding: Option<Vec<f32>>,
}

/// What one frame contributes to the descriptor stream.
#[derive(Debug, Default)]
pub struct Emission {
    pub tracks: Vec<pb::TrackedObject>,
    pub events: Vec<pb::TrackEvent>,
}

impl Emitter {
    pub fn new(config: EmissionConfig) -> Self {
        Emitter {
            config,
            tracks: HashMap::new(),
        }
    }

    /// Turns one frame's tracking result into track records and events. `frame` is the frame's
    /// size in pixels, to normalise boxes.
    pub fn frame(
        &mut self,
        capture_time_ns: i64,
        frame: (u32, u32),
        update: &TrackUpdate,
        detections: &[Detection],
        encode: &mut Encode,
    ) -> Emission {
        let mut out = Emission::default();
        let mut confirmed_now = Vec::new();
        for event in &update.events {
            match event {
                TrackEvent::Confirmed { track_id, .. } => confirmed_now.push(*track_id),
                TrackEvent::Ended(ended) => out.events.push(self.ended(ended, frame, encode)),
            }
        }
        for tracked in &update.tracks {
            out.tracks.push(pb::TrackedObject {
                track_id: tracked.track_id,
                class_id: tracked.class_id,
                score_q8: score_q8(tracked.score),
                box_q16: box_q16(tracked.bbox, frame),
            });
            let sharpness = detections.get(tracked.detection).map_or(0.0, |d| d.sharpness);
            let quality = view_quality(tracked.score, tracked.bbox, sharpness);
            let embedding = tracked.embedding.as_deref();
            let state = self.tracks.entry(tracked.track_id).or_default();
            if let Some(embedding) = embedding {
                state.fold_recent(embedding);
            }
            let kind = if confirmed_now.contains(&tracked.track_id) {
                Some(pb::TrackEventKind::Confirmed)
            } else {
                state.worth_describing(capture_time_ns, quality, embedding.is_some(), &self.config)
            };
            if let Some(kind) = kind {
                let appearance = embedding.and_then(&mut *encode);
                out.events.push(pb::TrackEvent {
                    track_id: tracked.track_id,
                    class_id: tracked.class_id,
                    kind: kind as i32,
                    view: Some(track_view(
                        capture_time_ns,
                        tracked.score,
                        tracked.bbox,
                        frame,
                        appearance,
                    )),
                    summary: None,
                });
                state.described(capture_time_ns, quality, embedding);
            }
            let best_so_far = state.best_view.as_ref().is_none_or(|best| {
                // A view with an appearance beats any without: the summary should carry one.
                (embedding.is_some(), quality) > (best.embedding.is_some(), best.quality)
            });
            if best_so_far {
                // In place: an approaching object is the best view nearly every frame, and its
                // embedding buffer is reused rather than allocated again each time.
                let best = state.best_view.get_or_insert_with(View::default);
                best.time_ns = capture_time_ns;
                best.score = tracked.score;
                best.bbox = tracked.bbox;
                best.quality = quality;
                best.embedding.clone_from(&tracked.embedding);
            }
        }
        out
    }

    /// Summaries of tracks ended outside a frame (the camera or the node stopped).
    pub fn finish(&mut self, events: &[TrackEvent], frame: (u32, u32), encode: &mut Encode) -> Vec<pb::TrackEvent> {
        let summaries = events
            .iter()
            .filter_map(|event| match event {
                TrackEvent::Ended(ended) => Some(self.ended(ended, frame, encode)),
                TrackEvent::Confirmed { .. } => None,
            })
            .collect();
        self.tracks.clear();
        summaries
    }

    fn ended(&mut self, ended: &EndedTrack, frame: (u32, u32), encode: &mut Encode) -> pb::TrackEvent {
        let best = self.tracks.remove(&ended.track_id).and_then(|state| state.best_view);
        let view = best.map(|view| {
            let appearance = view.embedding.as_deref().and_then(&mut *encode);
            view.to_pb(frame, appearance)
        });
        let first = ended.first_seen_ns;
        pb::TrackEvent {
            track_id: ended.track_id,
            class_id: ended.class_id,
            kind: pb::TrackEventKind::Ended as i32,
            view,
            summary: Some(pb::TrackSummary {
                first_seen: Some(to_timestamp(first)),
                last_seen: Some(to_timestamp(ended.last_seen_ns)),
                frames_seen: ended.hits,
                end_reason: match ended.reason {
                    EndReason::Lost => pb::TrackEndReason::Lost,
                    EndReason::ClockStep => pb::TrackEndReason::ClockStep,
                    EndReason::Finished => pb::TrackEndReason::Stopped,
                    EndReason::ModelChanged => pb::TrackEndReason::ModelChanged,
                } as i32,
                trajectory_offsets_ms: ended
                    .trajectory
                    .iter()
                    .map(|p| ((p.time_ns.saturating_sub(first)) / 1_000_000).clamp(0, i64::from(u32::MAX)) as u32)
                    .collect(),
                trajectory_points: ended.trajectory.iter().map(|p| point_q16(p.x, p.y, frame)).collect(),
            }),
        }
    }
}

impl TrackState {
    fn worth_describing(
        &self,
        time_ns: i64,
        quality: f32,
        has_embedding: bool,
        config: &EmissionConfig,
    ) -> Option<pb::TrackEventKind> {
        if !has_embedding {
            return None;
        }
        let (Some(last), Some(recent)) = (&self.last_described, &self.recent) else {
            // Confirmed without an appearance (rare): the first view that has one is news.
            return Some(pb::TrackEventKind::BetterView);
        };
        let budget_left = config.max_descriptors_per_track == 0 || self.described < config.max_descriptors_per_track;
        let seconds_since = (time_ns.saturating_sub(self.last_described_ns)) as f64 / 1e9;
        if !budget_left || seconds_since < config.min_descriptor_interval_seconds {
            return None;
        }
        if quality >= config.better_view_gain * self.best_described_quality && quality > 0.0 {
            return Some(pb::TrackEventKind::BetterView);
        }
        (dot(recent, last) < config.appearance_change_similarity).then_some(pb::TrackEventKind::AppearanceChanged)
    }

    /// Folds a unit-length embedding into the recent appearance, as the tracker does its own.
    fn fold_recent(&mut self, embedding: &[f32]) {
        self.recent = Some(match self.recent.take() {
            Some(recent) if recent.len() == embedding.len() => blend(recent, embedding, RECENT_APPEARANCE_MOMENTUM),
            _ => embedding.to_vec(),
        });
    }

    fn described(&mut self, time_ns: i64, quality: f32, embedding: Option<&[f32]>) {
        self.described += 1;
        self.last_described_ns = time_ns;
        self.best_described_quality = self.best_described_quality.max(quality);
        if let Some(embedding) = embedding {
            // Drift is measured from what the centre now has.
            copy_into(&mut self.last_described, embedding);
            copy_into(&mut self.recent, embedding);
        }
    }
}

impl View {
    fn to_pb(&self, frame: (u32, u32), appearance: Option<pb::Embedding>) -> pb::TrackView {
        track_view(self.time_ns, self.score, self.bbox, frame, appearance)
    }
}

fn track_view(
    time_ns: i64,
    score: f32,
    bbox: [f32; 4],
    frame: (u32, u32),
    appearance: Option<pb::Embedding>,
) -> pb::TrackView {
    pb::TrackView {
        capture_time: Some(to_timestamp(time_ns)),
        score_q8: score_q8(score),
        box_q16: box_q16(bbox, frame),
        appearance,
    }
}

/// `v` into `slot`, reusing its buffer.
fn copy_into(slot: &mut Option<Vec<f32>>, v: &[f32]) {
    match slot {
        Some(buffer) => {
            buffer.clear();
            buffer.extend_from_slice(v);
        }
        None => *slot = Some(v.to_vec()),
    }
}

/// `score × √area × √sharpness`; sharpness below 1 (unmeasured) counts as 1.
fn view_quality(score: f32, bbox: [f32; 4], sharpness: f32) -> f32 {
    let area = ((bbox[2] - bbox[0]).max(0.0) * (bbox[3] - bbox[1]).max(0.0)).sqrt();
    let quality = score * area * sharpness.max(1.0).sqrt();
    if quality.is_finite() { quality } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::track::{Tracker, TrackerConfig};

    const FRAME: (u32, u32) = (640, 480);
    /// 5 fps, from some point in 2026.
    const T0: i64 = 1_780_000_000_000_000_000;
    const STEP: i64 = 200_000_000;

    fn det(x: f32, size: f32, score: f32, sharpness: f32, embedding: &[f32]) -> Detection {
        Detection {
            class_id: 2,
            score,
            bbox: [x, 100.0, x + size, 100.0 + size],
            embedding: Some(embedding.to_vec()),
            sharpness,
        }
    }

    /// Feeds frames of one detection each (or none) through a real tracker and the emitter.
    struct Run {
        tracker: Tracker,
        emitter: Emitter,
        frame: i64,
        encoded: usize,
    }

    impl Run {
        fn new(config: EmissionConfig) -> Run {
            Run {
                tracker: Tracker::new(TrackerConfig::default(), 1_780_000_000),
                emitter: Emitter::new(config),
                frame: 0,
                encoded: 0,
            }
        }

        fn step(&mut self, detections: &[Detection]) -> Emission {
            let t = T0 + self.frame * STEP;
            self.frame += 1;
            let update = self.tracker.update(t, detections);
            let encoded = &mut self.encoded;
            let mut encode = |v: &[f32]| {
                *encoded += 1;
                Some(pb::Embedding {
                    dimension: v.len() as u32,
                    ..pb::Embedding::default()
                })
            };
            self.emitter.frame(t, FRAME, &update, detections, &mut encode)
        }

        fn kinds(emission: &Emission) -> Vec<pb::TrackEventKind> {
            emission.events.iter().map(|e| e.kind()).collect()
        }
    }

    #[test]
    fn a_steady_object_is_described_once_then_only_recorded_until_its_summary() {
        let mut run = Run::new(EmissionConfig::default());
        let look = [1.0, 0.0, 0.0];
        let first = run.step(&[det(10.0, 50.0, 0.9, 100.0, &look)]);
        assert!(
            first.tracks.is_empty() && first.events.is_empty(),
            "tentative tracks are not reported"
        );
        let confirmed = run.step(&[det(12.0, 50.0, 0.9, 100.0, &look)]);
        assert_eq!(Run::kinds(&confirmed), vec![pb::TrackEventKind::Confirmed]);
        assert!(confirmed.events[0].view.as_ref().unwrap().appearance.is_some());
        for i in 0..30 {
            let e = run.step(&[det(14.0 + i as f32, 50.0, 0.9, 100.0, &look)]);
            assert_eq!(e.tracks.len(), 1);
            assert!(e.events.is_empty(), "frame {i}: nothing new to say");
        }
        // Gone for longer than max_age: the summary comes with the next frame.
        let mut ended = Emission::default();
        for _ in 0..10 {
            ended = run.step(&[]);
            if !ended.events.is_empty() {
                break;
            }
        }
        assert_eq!(Run::kinds(&ended), vec![pb::TrackEventKind::Ended]);
        let summary = ended.events[0].summary.as_ref().unwrap();
        assert_eq!(summary.frames_seen, 32);
        assert_eq!(summary.end_reason(), pb::TrackEndReason::Lost);
        assert_eq!(summary.trajectory_offsets_ms.len(), summary.trajectory_points.len());
        assert_eq!(summary.trajectory_offsets_ms[0], 0);
        let best = ended.events[0].view.as_ref().unwrap();
        assert!(best.appearance.is_some());
        assert_eq!(run.encoded, 2, "one descriptor on confirmation, one in the summary");
    }

    #[test]
    fn a_clearly_better_view_and_a_changed_appearance_are_described_rate_limited_and_capped() {
        let config = EmissionConfig {
            max_descriptors_per_track: 3,
            ..EmissionConfig::default()
        };
        let mut run = Run::new(config);
        let front = [1.0, 0.0, 0.0];
        let side = [0.6, 0.8, 0.0];
        run.step(&[det(10.0, 40.0, 0.6, 50.0, &front)]);
        run.step(&[det(10.0, 40.0, 0.6, 50.0, &front)]);
        // Twice the size at once: clearly better, but within the interval of the confirmation.
        let bigger = |run: &mut Run| run.step(&[det(10.0, 80.0, 0.9, 50.0, &front)]);
        assert!(bigger(&mut run).events.is_empty(), "rate-limited");
        let mut kinds = Vec::new();
        for _ in 0..10 {
            kinds.extend(Run::kinds(&bigger(&mut run)));
        }
        assert_eq!(kinds, vec![pb::TrackEventKind::BetterView], "once, after the interval");
        // It turns: the moving average drifts below the threshold after a few frames.
        let mut kinds = Vec::new();
        for _ in 0..12 {
            kinds.extend(Run::kinds(&run.step(&[det(10.0, 80.0, 0.9, 50.0, &side)])));
        }
        assert_eq!(kinds, vec![pb::TrackEventKind::AppearanceChanged]);
        // The cap (3, confirmation included) is reached: no more, whatever happens.
        let mut kinds = Vec::new();
        for i in 0..20 {
            let look = if i % 4 < 2 { front } else { side };
            kinds.extend(Run::kinds(&run.step(&[det(
                10.0,
                80.0 + 5.0 * i as f32,
                0.95,
                500.0,
                &look,
            )])));
        }
        assert!(kinds.is_empty(), "{kinds:?}");
    }

    #[test]
    fn finishing_summarises_every_confirmed_track_once() {
        let mut run = Run::new(EmissionConfig::default());
        let two = [
            det(10.0, 50.0, 0.9, 100.0, &[1.0, 0.0]),
            det(300.0, 50.0, 0.9, 100.0, &[0.0, 1.0]),
        ];
        run.step(&two);
        run.step(&two);
        let ended = run.tracker.finish();
        let mut encode = |_: &[f32]| None;
        let events = run.emitter.finish(&ended, FRAME, &mut encode);
        assert_eq!(events.len(), 2);
        assert!(
            events
                .iter()
                .all(|e| e.summary.as_ref().unwrap().end_reason() == pb::TrackEndReason::Stopped)
        );
        assert!(run.emitter.tracks.is_empty());
    }

    #[test]
    fn bad_values_are_refused_by_validation() {
        assert!(EmissionConfig::default().validate().is_ok());
        for bad in [
            EmissionConfig {
                better_view_gain: 0.5,
                ..EmissionConfig::default()
            },
            EmissionConfig {
                appearance_change_similarity: f32::NAN,
                ..EmissionConfig::default()
            },
            EmissionConfig {
                min_descriptor_interval_seconds: -1.0,
                ..EmissionConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
