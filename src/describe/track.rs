//! Per-camera online multi-object tracking, in the manner of ByteTrack (Zhang et al., 2022).
//!
//! Each frame's detections are matched to the tracks of the frames before, so that an object keeps
//! one id while it is in view. One [`Tracker`] serves one camera and is fed its frames in capture
//! order (the describer already restores that order).
//!
//! - **Motion**: a constant-velocity Kalman filter on the box's centre, width and height (SORT's
//!   8-dim state; width rather than aspect ratio, as BoT-SORT, so all four sides share one noise
//!   model). It predicts over the real time between captures, not a frame count: cameras drop
//!   frames and vary their rate.
//! - **Matching**, in two stages. First the confident detections (`high_threshold`) against every
//!   track, by IoU with the track's predicted box, gated by class (a track keeps its class) and, when
//!   both sides have an embedding, by appearance. Then the weak ones (`low_threshold`) against the
//!   confirmed tracks still unmatched, by IoU alone: a weak detection is most often a partly hidden
//!   object the tracker already follows, so it may extend a track but never starts one, and its
//!   embedding (of a partly hidden object) is not trusted.
//! - **Assignment is greedy**, best IoU first (ties to the better appearance), not the Hungarian
//!   method: the gates leave few contested pairs, where greedy and optimal agree; it is simpler,
//!   deterministic, and needs no cost-matrix padding. Where they differ, greedy keeps the pair the
//!   evidence supports most, which is what one wants at a crossing.
//! - **Life cycle**: an unmatched confident detection starts a *tentative* track, confirmed after
//!   `min_hits` consecutive matches and dropped silently at its first miss (so detector flicker never
//!   reaches subscribers). A confirmed track that goes unmatched is *lost*: kept, coasting on its
//!   prediction, for `max_age_seconds`, then *ended*. Only confirmed tracks are reported.
//!
//! **Track ids** are `epoch << 24 | counter`: `epoch` is given by the caller, the node's start time
//! in Unix seconds (`node_run_id / 1e9`); the counter starts at 1 for each tracker. After 2^24 - 1
//! tracks the epoch is advanced by one and the counter restarts, so ids grow strictly within a run.
//! A later run starts from a later second, and no camera starts 2^24 tracks in a second, so a
//! borrowed epoch never reaches the next run's: ids never repeat for a camera across restarts, as
//! long as two runs start at least a second apart (model loading alone takes longer). Ids of
//! different cameras can coincide; the camera id qualifies them, as it does descriptor sequences.
//!
//! **Time and bad input**: a detection with a non-finite score or box, or a box of no area, is
//! skipped and counted ([`TrackUpdate::invalid_detections`]). A frame no later than the last one
//! (a repeated timestamp, jitter) counts as taken at the last one's time: nothing is predicted and
//! matching proceeds. A step back by more than `max_age_seconds` means the camera's clock was reset;
//! every track was measured against the old clock, so all are ended ([`EndReason::ClockStep`]) and
//! tracking starts afresh. A step forward longer than `max_age_seconds` ends every track as lost
//! before the frame is matched, as any gap that long would.
//!
//! **Not done**, deliberately: camera-motion compensation (the cameras are fixed), Mahalanobis
//! gating (IoU with the prediction is ByteTrack's gate), ByteTrack's removal of duplicate tracks,
//! and re-identification of ended tracks, which needs a gallery and belongs with the central side.

use super::codec::{dot, l2_normalize};
pub use crate::config::TrackerConfig;
use crate::infer::Detection;

// Noise of the motion model as fractions of the box side, since a larger (nearer) box moves and
// jitters more in pixels. ByteTrack's per-frame values at its 30 fps, restated per second so that
// they hold at any frame rate: a variance per frame of (s/20)^2 is 30 (s/20)^2 per second.

/// Measurement noise: standard deviation of a detected coordinate, per pixel of box side.
const MEASUREMENT_STD: f64 = 1.0 / 20.0;
/// Process noise of a position, per pixel of side per sqrt(second): `sqrt(30) / 20`.
const POSITION_NOISE: f64 = 0.273_861_3;
/// Process noise of a velocity, in px/s per pixel of side per sqrt(second): `sqrt(30) * 30 / 160`.
const VELOCITY_NOISE: f64 = 1.026_979_8;
/// Initial standard deviation of a new track's position, per pixel of side.
const INITIAL_POSITION_STD: f64 = 2.0 / 20.0;
/// Initial standard deviation of a new track's velocity (it starts at rest), in px/s per pixel of
/// side: ByteTrack's 10/160 per frame at 30 fps. About two box sides a second.
const INITIAL_VELOCITY_STD: f64 = 10.0 * 30.0 / 160.0;
/// Smallest box side, in pixels, the filter keeps or scales its noise by: a size predicted to shrink
/// through zero would turn the box inside out.
const MIN_SIDE_PIXELS: f64 = 1.0;

/// Low bits of a track id that count tracks; the bits above hold the epoch.
const ID_COUNTER_BITS: u32 = 24;
/// The epoch bits that fit above the counter: Unix seconds fit until the year 36812.
const ID_EPOCH_MASK: u64 = (1 << (64 - ID_COUNTER_BITS)) - 1;

/// What one frame did to the tracks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackUpdate {
    /// Confirmed tracks seen in this frame, in the order of their detections.
    pub tracks: Vec<TrackedObject>,
    /// Tracks confirmed or ended by this frame, in the order it happened.
    pub events: Vec<TrackEvent>,
    /// Detections skipped as malformed: a non-finite score or coordinate, or a box of no area.
    pub invalid_detections: usize,
}

/// A confirmed track seen in the current frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedObject {
    pub track_id: u64,
    pub class_id: u32,
    /// The matched detection's score.
    pub score: f32,
    /// The matched detection's box, not the filter's estimate: what was seen in this frame.
    pub bbox: [f32; 4],
    /// Index of the matched detection in the slice given to [`Tracker::update`].
    pub detection: usize,
    /// The matched detection's embedding at unit length, if it was confident and had a usable one
    /// (the tracker normalises it anyway, so its users need not again).
    pub embedding: Option<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrackEvent {
    /// A track has had its `min_hits` and is reported from this frame on. `first_bbox` (pixels)
    /// and `first_seen_ns` are of its first detection, so that where it went while tentative is
    /// not lost to those who follow it (zones and lines).
    Confirmed {
        track_id: u64,
        class_id: u32,
        first_bbox: [f32; 4],
        first_seen_ns: i64,
    },
    /// A confirmed track is gone for good. (Tentative tracks end silently: nobody saw them.)
    Ended(EndedTrack),
}

/// Why a track ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Not seen for longer than `max_age_seconds`.
    Lost,
    /// The capture clock stepped back by more than `max_age_seconds`.
    ClockStep,
    /// [`Tracker::finish`] was called, e.g. because the camera stopped.
    Finished,
    /// The node switched to another model set: boxes and appearance vectors of two sets are not
    /// comparable, so no track goes on across the switch.
    ModelChanged,
}

/// A confirmed track's summary, once it has ended.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedTrack {
    pub track_id: u64,
    pub class_id: u32,
    /// Capture time (ns) of the first detection of the track, the tentative ones included.
    pub first_seen_ns: i64,
    /// Capture time (ns) of the last detection matched; the lost time after it is not counted.
    pub last_seen_ns: i64,
    /// Frames in which a detection matched the track.
    pub hits: u32,
    pub reason: EndReason,
    /// Centres of the matched boxes, simplified: the first and last are always kept, and no dropped
    /// point lay further than `trajectory_tolerance_pixels` from the path (unless the path had to
    /// be thinned to fit `max_trajectory_points`).
    pub trajectory: Vec<TrajectoryPoint>,
    /// The track's appearance (moving average of its embeddings, unit length), if it had any.
    pub appearance: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrajectoryPoint {
    /// Capture time in nanoseconds.
    pub time_ns: i64,
    /// Box centre in frame pixels.
    pub x: f32,
    pub y: f32,
}

/// The tracker of one camera.
pub struct Tracker {
    config: TrackerConfig,
    /// High bits of the ids; advanced when the counter runs out (see the module docs).
    epoch: u64,
    /// Low bits of the next id, 1..2^24.
    next_counter: u64,
    /// Capture time of the latest frame; `None` before the first. Never moves back except on a
    /// clock step, so that ages and predictions are never negative.
    clock_ns: Option<i64>,
    /// Tentative, visible and lost tracks, in order of creation.
    tracks: Vec<Track>,
}

struct Track {
    id: u64,
    class_id: u32,
    motion: Motion,
    confirmed: bool,
    /// Frames matched. While tentative these are consecutive: a miss drops the track.
    hits: u32,
    first_seen_ns: i64,
    /// The first detection's box.
    first_bbox: [f32; 4],
    last_seen_ns: i64,
    /// Moving average of the confident detections' embeddings, unit length.
    appearance: Option<Vec<f32>>,
    trajectory: Vec<TrajectoryPoint>,
}

/// A detection fit to track, in the tracker's terms.
struct Candidate {
    /// Index in the caller's slice.
    index: usize,
    class_id: u32,
    score: f32,
    bbox: [f64; 4],
    /// At least `high_threshold`: matched in the first stage, may start a track.
    high: bool,
    /// Unit length; `None` if absent, empty, or not finite.
    embedding: Option<Vec<f32>>,
}

/// A track-detection pair that passed every gate.
struct Pair {
    track: usize,
    candidate: usize,
    iou: f64,
    /// Cosine similarity, or 0 when either side has no embedding: below any pair that passed the
    /// default gate, so a known good likeness wins a tie over an unknown one.
    similarity: f32,
}

impl Tracker {
    /// `epoch`: the node's start time in Unix seconds (see the module docs on ids).
    pub fn new(config: TrackerConfig, epoch: u64) -> Self {
        Tracker {
            config,
            epoch,
            next_counter: 1,
            clock_ns: None,
            tracks: Vec::new(),
        }
    }

    /// The id the next track will get.
    pub fn upcoming_id(&self) -> u64 {
        if self.next_counter >= 1 << ID_COUNTER_BITS {
            (self.epoch.wrapping_add(1) & ID_EPOCH_MASK) << ID_COUNTER_BITS | 1
        } else {
            (self.epoch & ID_EPOCH_MASK) << ID_COUNTER_BITS | self.next_counter
        }
    }

    /// Makes the next id at least `id`: the camera handed out ids below it in an earlier run
    /// (the log keeps the count), whatever the clock says now.
    pub fn continue_from(&mut self, id: u64) {
        if id > self.upcoming_id() {
            self.epoch = id >> ID_COUNTER_BITS;
            self.next_counter = (id & ((1 << ID_COUNTER_BITS) - 1)).max(1);
        }
    }

    /// Tracks held: tentative, visible and lost.
    pub fn track_count(&self) -> usize {
        self.tracks.len()
    }

    /// Matches one frame's detections, captured at `capture_time_ns`, to the tracks.
    pub fn update(&mut self, capture_time_ns: i64, detections: &[Detection]) -> TrackUpdate {
        let mut out = TrackUpdate::default();
        let (now, dt) = self.advance_clock(capture_time_ns, &mut out.events);
        self.end_lost(now, &mut out.events);
        // Every track left is younger than max_age; a longer prediction would only add error.
        let dt = dt.min(self.config.max_age_seconds);
        for track in &mut self.tracks {
            track.motion.predict(dt);
        }

        let mut candidates = self.candidates(detections, &mut out.invalid_detections);
        let mut track_taken = vec![false; self.tracks.len()];
        let mut candidate_taken = vec![false; candidates.len()];
        let mut matches = Vec::new();
        let predicted: Vec<[f64; 4]> = self.tracks.iter().map(|t| t.motion.bbox()).collect();

        // Stage 1: confident detections against every track, by IoU, gated by class and appearance.
        let mut pairs = Vec::new();
        for (t, track) in self.tracks.iter().enumerate() {
            for (c, candidate) in candidates.iter().enumerate() {
                if !candidate.high || candidate.class_id != track.class_id {
                    continue;
                }
                let iou = iou(&predicted[t], &candidate.bbox);
                // Comparisons are written to hold, so that a NaN threshold refuses rather than accepts.
                let overlaps = iou >= f64::from(self.config.high_min_iou);
                if !overlaps {
                    continue;
                }
                let similarity = match (&track.appearance, &candidate.embedding) {
                    (Some(a), Some(b)) if a.len() == b.len() => {
                        let s = dot(a, b);
                        let alike = s >= self.config.appearance_min_similarity;
                        if !alike {
                            continue;
                        }
                        s
                    }
                    _ => 0.0,
                };
                pairs.push(Pair {
                    track: t,
                    candidate: c,
                    iou,
                    similarity,
                });
            }
        }
        matches.extend(assign(pairs, &mut track_taken, &mut candidate_taken));

        // Stage 2: weak detections against the confirmed tracks left, lost ones included (a person
        // stepping out from behind a van is often detected weakly first), by IoU only.
        let mut pairs = Vec::new();
        for (t, track) in self.tracks.iter().enumerate() {
            if track_taken[t] || !track.confirmed {
                continue;
            }
            for (c, candidate) in candidates.iter().enumerate() {
                if candidate.high || candidate.class_id != track.class_id {
                    continue;
                }
                let iou = iou(&predicted[t], &candidate.bbox);
                if iou >= f64::from(self.config.low_min_iou) {
                    pairs.push(Pair {
                        track: t,
                        candidate: c,
                        iou,
                        similarity: 0.0,
                    });
                }
            }
        }
        matches.extend(assign(pairs, &mut track_taken, &mut candidate_taken));

        for (t, c) in matches {
            let candidate = &mut candidates[c];
            let track = &mut self.tracks[t];
            track.observe(candidate, now, &self.config);
            if !track.confirmed && track.hits >= self.config.min_hits {
                track.confirmed = true;
                out.events.push(track.confirmed_event());
            }
            if track.confirmed {
                out.tracks.push(reported(track, candidate, detections));
            }
        }

        // A tentative track missed: drop it. Confirmed ones stay, lost, until `end_lost`.
        let mut t = 0;
        self.tracks.retain(|track| {
            let keep = track_taken[t] || track.confirmed;
            t += 1;
            keep
        });

        for (c, candidate) in candidates.iter_mut().enumerate() {
            if candidate_taken[c] || !candidate.high {
                continue;
            }
            let id = self.next_id();
            let mut track = Track {
                id,
                class_id: candidate.class_id,
                motion: Motion::new(&candidate.bbox),
                confirmed: false,
                hits: 0,
                first_seen_ns: now,
                first_bbox: detections[candidate.index].bbox,
                last_seen_ns: now,
                appearance: None,
                trajectory: Vec::new(),
            };
            track.observe(candidate, now, &self.config);
            if track.hits >= self.config.min_hits {
                track.confirmed = true;
                out.events.push(track.confirmed_event());
                out.tracks.push(reported(&track, candidate, detections));
            }
            self.tracks.push(track);
        }

        out.tracks.sort_by_key(|o| o.detection);
        out
    }

    /// Ends every confirmed track (and drops tentative ones), e.g. when the camera stops. The
    /// tracker can go on afterwards; its ids keep counting.
    pub fn finish(&mut self) -> Vec<TrackEvent> {
        self.finish_because(EndReason::Finished)
    }

    /// [`finish`](Self::finish), saying why.
    pub fn finish_because(&mut self, reason: EndReason) -> Vec<TrackEvent> {
        let mut events = Vec::new();
        self.end_all(reason, &mut events);
        events
    }

    /// Moves the clock to a frame captured at `t`; returns the time the frame counts as and the
    /// seconds to predict over (see the module docs on time).
    fn advance_clock(&mut self, t: i64, events: &mut Vec<TrackEvent>) -> (i64, f64) {
        match self.clock_ns {
            Some(clock) if t <= clock => {
                if seconds_between(t, clock) > self.config.max_age_seconds {
                    self.end_all(EndReason::ClockStep, events);
                    self.clock_ns = Some(t);
                    (t, 0.0)
                } else {
                    (clock, 0.0)
                }
            }
            Some(clock) => {
                self.clock_ns = Some(t);
                (t, seconds_between(clock, t))
            }
            None => {
                self.clock_ns = Some(t);
                (t, 0.0)
            }
        }
    }

    /// Ends the tracks not seen for longer than `max_age_seconds`.
    fn end_lost(&mut self, now: i64, events: &mut Vec<TrackEvent>) {
        let max_age = self.config.max_age_seconds;
        // Written so that a NaN max_age ends tracks rather than keeping them for ever.
        let (kept, old): (Vec<Track>, Vec<Track>) = std::mem::take(&mut self.tracks)
            .into_iter()
            .partition(|t| seconds_between(t.last_seen_ns, now) <= max_age);
        self.tracks = kept;
        self.end(old, EndReason::Lost, events);
    }

    fn end_all(&mut self, reason: EndReason, events: &mut Vec<TrackEvent>) {
        let tracks = std::mem::take(&mut self.tracks);
        self.end(tracks, reason, events);
    }

    fn end(&self, tracks: Vec<Track>, reason: EndReason, events: &mut Vec<TrackEvent>) {
        for track in tracks.into_iter().filter(|t| t.confirmed) {
            let mut trajectory = track.trajectory;
            simplify(&mut trajectory, self.config.trajectory_tolerance_pixels);
            events.push(TrackEvent::Ended(EndedTrack {
                track_id: track.id,
                class_id: track.class_id,
                first_seen_ns: track.first_seen_ns,
                last_seen_ns: track.last_seen_ns,
                hits: track.hits,
                reason,
                trajectory,
                appearance: track.appearance,
            }));
        }
    }

    /// The detections worth matching: valid, and at least `low_threshold`.
    fn candidates(&self, detections: &[Detection], invalid: &mut usize) -> Vec<Candidate> {
        let mut candidates = Vec::new();
        for (index, d) in detections.iter().enumerate() {
            let bbox = d.bbox.map(f64::from);
            let valid =
                d.score.is_finite() && bbox.iter().all(|v| v.is_finite()) && bbox[2] > bbox[0] && bbox[3] > bbox[1];
            if !valid {
                *invalid += 1;
                continue;
            }
            let strong_enough = d.score >= self.config.low_threshold;
            if !strong_enough {
                continue;
            }
            let high = d.score >= self.config.high_threshold;
            // Only a confident detection's embedding is ever used.
            let embedding = match &d.embedding {
                Some(e) if high && !e.is_empty() && e.iter().all(|v| v.is_finite()) => {
                    let mut e = e.clone();
                    l2_normalize(&mut e);
                    e.iter().any(|&v| v != 0.0).then_some(e)
                }
                _ => None,
            };
            candidates.push(Candidate {
                index,
                class_id: d.class_id,
                score: d.score,
                bbox,
                high,
                embedding,
            });
        }
        candidates
    }

    fn next_id(&mut self) -> u64 {
        if self.next_counter >= 1 << ID_COUNTER_BITS {
            self.epoch = self.epoch.wrapping_add(1);
            self.next_counter = 1;
        }
        let id = (self.epoch & ID_EPOCH_MASK) << ID_COUNTER_BITS | self.next_counter;
        self.next_counter += 1;
        id
    }
}

impl Track {
    fn confirmed_event(&self) -> TrackEvent {
        TrackEvent::Confirmed {
            track_id: self.id,
            class_id: self.class_id,
            first_bbox: self.first_bbox,
            first_seen_ns: self.first_seen_ns,
        }
    }

    /// Takes in a matched detection seen at `now`.
    fn observe(&mut self, candidate: &Candidate, now: i64, config: &TrackerConfig) {
        if self.hits > 0 {
            self.motion.update(&candidate.bbox);
        }
        self.hits = self.hits.saturating_add(1);
        self.last_seen_ns = now;
        if let Some(e) = &candidate.embedding {
            self.appearance = Some(match self.appearance.take() {
                Some(a) if a.len() == e.len() => blend(a, e, config.appearance_momentum),
                // The first embedding, or the embedder changed its output size: start over.
                _ => e.clone(),
            });
        }
        let b = &candidate.bbox;
        self.trajectory.push(TrajectoryPoint {
            time_ns: now,
            x: ((b[0] + b[2]) / 2.0) as f32,
            y: ((b[1] + b[3]) / 2.0) as f32,
        });
        let cap = config.max_trajectory_points.max(2);
        if self.trajectory.len() > cap {
            compact(&mut self.trajectory, config.trajectory_tolerance_pixels, cap);
        }
    }
}

/// Hands the candidate's embedding on: it has been observed, and each candidate matches once.
fn reported(track: &Track, candidate: &mut Candidate, detections: &[Detection]) -> TrackedObject {
    TrackedObject {
        track_id: track.id,
        class_id: track.class_id,
        score: candidate.score,
        bbox: detections[candidate.index].bbox,
        detection: candidate.index,
        embedding: candidate.embedding.take(),
    }
}

/// Greedy assignment, best IoU first, ties to the better likeness, then to the older track and the
/// earlier detection so that the result never depends on sort stability.
fn assign(mut pairs: Vec<Pair>, track_taken: &mut [bool], candidate_taken: &mut [bool]) -> Vec<(usize, usize)> {
    pairs.sort_by(|a, b| {
        b.iou
            .total_cmp(&a.iou)
            .then(b.similarity.total_cmp(&a.similarity))
            .then(a.track.cmp(&b.track))
            .then(a.candidate.cmp(&b.candidate))
    });
    let mut matches = Vec::new();
    for pair in pairs {
        if !track_taken[pair.track] && !candidate_taken[pair.candidate] {
            track_taken[pair.track] = true;
            candidate_taken[pair.candidate] = true;
            matches.push((pair.track, pair.candidate));
        }
    }
    matches
}

/// `momentum * old + (1 - momentum) * new`, renormalised; both inputs unit length.
pub(super) fn blend(mut old: Vec<f32>, new: &[f32], momentum: f32) -> Vec<f32> {
    for (a, b) in old.iter_mut().zip(new) {
        *a = momentum * *a + (1.0 - momentum) * b;
    }
    l2_normalize(&mut old);
    // Opposite vectors cancel, and a bad momentum makes NaN: then the newest look is the best guess.
    if old.iter().all(|v| v.is_finite()) && old.iter().any(|&v| v != 0.0) {
        old
    } else {
        new.to_vec()
    }
}

/// Seconds from `a` to `b`, exact for any pair of `i64` (no overflow).
fn seconds_between(a: i64, b: i64) -> f64 {
    (i128::from(b) - i128::from(a)) as f64 / 1e9
}

/// IoU in f64, the tracker's precision: the detector's f32 version (`decode::iou`) would need two
/// conversions per pair and overflow on boxes that f64 still measures.
fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// The Kalman filter of a box: centre x, centre y, width, height, each with its velocity.
///
/// SORT's 8-state filter has block-diagonal transition, process noise, observation and measurement
/// noise matrices, so its covariance never couples two coordinates: it is exactly these four
/// independent 2-state filters, which are simpler to read and cannot go wrong in an 8x8 inverse.
/// Computed in `f64`: boxes are `f32`, but squared variances of a large box over a long gap are not.
#[derive(Debug, Clone)]
struct Motion {
    axes: [Axis; 4],
}

/// One coordinate and its velocity (pixels, pixels per second) with their covariance.
#[derive(Debug, Clone, Copy)]
struct Axis {
    p: f64,
    v: f64,
    /// The covariance `[[pp, pv], [pv, vv]]`, kept as its three distinct entries.
    pp: f64,
    pv: f64,
    vv: f64,
}

impl Motion {
    fn new(bbox: &[f64; 4]) -> Self {
        let m = xywh(bbox);
        let side = |i: usize| m[2 + i % 2].max(MIN_SIDE_PIXELS);
        Motion {
            axes: std::array::from_fn(|i| Axis {
                p: m[i],
                v: 0.0,
                pp: (INITIAL_POSITION_STD * side(i)).powi(2),
                pv: 0.0,
                vv: (INITIAL_VELOCITY_STD * side(i)).powi(2),
            }),
        }
    }

    fn predict(&mut self, dt: f64) {
        if dt.is_nan() || dt <= 0.0 {
            return;
        }
        // Noise scales with the side along the axis: x and width with the width, y and height with
        // the height.
        let sides: [f64; 4] = std::array::from_fn(|i| self.axes[2 + i % 2].p.max(MIN_SIDE_PIXELS));
        for (a, side) in self.axes.iter_mut().zip(sides) {
            a.p += a.v * dt;
            a.pp += dt * (2.0 * a.pv + dt * a.vv) + (POSITION_NOISE * side).powi(2) * dt;
            a.pv += dt * a.vv;
            a.vv += (VELOCITY_NOISE * side).powi(2) * dt;
        }
        for a in &mut self.axes[2..] {
            if a.p < MIN_SIDE_PIXELS {
                a.p = MIN_SIDE_PIXELS;
                a.v = 0.0;
            }
        }
    }

    fn update(&mut self, bbox: &[f64; 4]) {
        let m = xywh(bbox);
        for (i, a) in self.axes.iter_mut().enumerate() {
            let side = m[2 + i % 2].max(MIN_SIDE_PIXELS);
            let s = a.pp + (MEASUREMENT_STD * side).powi(2);
            let (k0, k1) = (a.pp / s, a.pv / s);
            let innovation = m[i] - a.p;
            a.p += k0 * innovation;
            a.v += k1 * innovation;
            // P := (I - K H) P, the velocity term first since it reads the old `pv`.
            a.vv -= k1 * a.pv;
            a.pv -= k0 * a.pv;
            a.pp -= k0 * a.pp;
        }
        // Only reachable with absurd boxes (near f32::MAX): start again from what was seen.
        if !self
            .axes
            .iter()
            .all(|a| [a.p, a.v, a.pp, a.pv, a.vv].iter().all(|v| v.is_finite()))
        {
            *self = Motion::new(bbox);
        }
    }

    fn bbox(&self) -> [f64; 4] {
        let [x, y, w, h] = self.axes.map(|a| a.p);
        [x - w / 2.0, y - h / 2.0, x + w / 2.0, y + h / 2.0]
    }
}

fn xywh(b: &[f64; 4]) -> [f64; 4] {
    [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0, b[2] - b[0], b[3] - b[1]]
}

/// Brings a growing trajectory well under `cap` points, so that this runs once per `cap / 4` new
/// points rather than on every one: simplify first (losing nothing visible), and if the path is
/// genuinely that intricate, thin it by dropping every other point (halving its time resolution).
fn compact(points: &mut Vec<TrajectoryPoint>, tolerance: f32, cap: usize) {
    simplify(points, tolerance);
    let target = (cap * 3 / 4).max(2);
    while points.len() > target {
        let last = points.len() - 1;
        let mut i = 0;
        points.retain(|_| {
            let keep = i % 2 == 0 || i == last;
            i += 1;
            keep
        });
    }
}

/// Ramer-Douglas-Peucker on the positions: keeps the first and last point, and every point further
/// than `tolerance` from the path through the points kept around it.
fn simplify(points: &mut Vec<TrajectoryPoint>, tolerance: f32) {
    if points.len() < 3 {
        return;
    }
    let last = points.len() - 1;
    let mut keep = vec![false; points.len()];
    keep[0] = true;
    keep[last] = true;
    // An explicit stack: no recursion depth to worry about.
    let mut spans = vec![(0, last)];
    while let Some((a, b)) = spans.pop() {
        let mut farthest = None;
        let mut distance = f64::from(tolerance);
        for (i, p) in points.iter().enumerate().take(b).skip(a + 1) {
            let d = segment_distance(p, &points[a], &points[b]);
            if d > distance {
                farthest = Some(i);
                distance = d;
            }
        }
        if let Some(i) = farthest {
            keep[i] = true;
            spans.push((a, i));
            spans.push((i, b));
        }
    }
    let mut i = 0;
    points.retain(|_| {
        let k = keep[i];
        i += 1;
        k
    });
}

/// Distance in pixels from `p` to the segment from `a` to `b`.
fn segment_distance(p: &TrajectoryPoint, a: &TrajectoryPoint, b: &TrajectoryPoint) -> f64 {
    let (px, py) = (f64::from(p.x), f64::from(p.y));
    let (ax, ay) = (f64::from(a.x), f64::from(a.y));
    let (dx, dy) = (f64::from(b.x) - ax, f64::from(b.y) - ay);
    let length2 = dx * dx + dy * dy;
    let t = if length2 > 0.0 {
        (((px - ax) * dx + (py - ay) * dy) / length2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (px - ax - t * dx).hypot(py - ay - t * dy)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 30 fps.
    const FRAME_NS: i64 = 33_333_333;
    /// Some point in 2026, in ns: capture times are Unix wall-clock times.
    const T0: i64 = 1_780_000_000_000_000_000;
    const EPOCH: u64 = 1_780_000_000;

    fn det(class_id: u32, score: f32, cx: f32, cy: f32, w: f32, h: f32) -> Detection {
        Detection {
            class_id,
            score,
            bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
            embedding: None,
            sharpness: 0.0,
        }
    }

    fn with_embedding(mut d: Detection, e: &[f32]) -> Detection {
        d.embedding = Some(e.to_vec());
        d
    }

    fn at(frame: i64) -> i64 {
        T0 + frame * FRAME_NS
    }

    /// The reported track id of detection `index`, if any.
    fn id_of(update: &TrackUpdate, index: usize) -> Option<u64> {
        update.tracks.iter().find(|o| o.detection == index).map(|o| o.track_id)
    }

    fn ended(update: &TrackUpdate) -> Vec<&EndedTrack> {
        update
            .events
            .iter()
            .filter_map(|e| match e {
                TrackEvent::Ended(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn confirmed(update: &TrackUpdate) -> Vec<u64> {
        update
            .events
            .iter()
            .filter_map(|e| match e {
                TrackEvent::Confirmed { track_id, .. } => Some(*track_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_moving_object_keeps_one_id_and_is_confirmed_after_min_hits() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        let first = tracker.update(at(0), &[det(0, 0.9, 100.0, 200.0, 40.0, 80.0)]);
        assert!(
            first.tracks.is_empty() && first.events.is_empty(),
            "tentative tracks are not reported"
        );
        let mut id = None;
        for f in 1..50 {
            let d = det(0, 0.9, 100.0 + 6.0 * f as f32, 200.0 + 2.0 * f as f32, 40.0, 80.0);
            let u = tracker.update(at(f), std::slice::from_ref(&d));
            assert_eq!(u.tracks.len(), 1, "frame {f}");
            let o = &u.tracks[0];
            assert_eq!((o.bbox, o.detection, o.class_id, o.score), (d.bbox, 0, 0, 0.9));
            if f == 1 {
                assert_eq!(confirmed(&u), vec![o.track_id]);
                id = Some(o.track_id);
            } else {
                assert!(u.events.is_empty(), "frame {f}");
                assert_eq!(Some(o.track_id), id, "frame {f}");
            }
        }
        assert_eq!(id, Some(EPOCH << 24 | 1));
        assert_eq!(tracker.track_count(), 1);
    }

    /// Two people of one class walk towards each other along one line and pass; their boxes
    /// coincide for a few frames. `embeddings` gives each its own appearance.
    fn crossing(embeddings: bool, detections_swapped_every_other_frame: bool) -> Vec<(Option<u64>, Option<u64>)> {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        let (ea, eb) = ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]);
        let mut ids = Vec::new();
        let mut overlapped = false;
        for f in 0..60 {
            let mut a = det(0, 0.9, 100.0 + 7.0 * f as f32, 300.0, 50.0, 120.0);
            let mut b = det(0, 0.9, 503.0 - 7.0 * f as f32, 303.0, 50.0, 120.0);
            overlapped |= iou(&a.bbox.map(f64::from), &b.bbox.map(f64::from)) > 0.8;
            if embeddings {
                a = with_embedding(a, &ea);
                b = with_embedding(b, &eb);
            }
            let swap = detections_swapped_every_other_frame && f % 2 == 1;
            let u = if swap {
                tracker.update(at(f), &[b, a])
            } else {
                tracker.update(at(f), &[a, b])
            };
            let (ia, ib) = if swap { (1, 0) } else { (0, 1) };
            ids.push((id_of(&u, ia), id_of(&u, ib)));
        }
        assert!(overlapped, "the boxes should overlap at the crossing");
        ids
    }

    fn assert_stable(ids: &[(Option<u64>, Option<u64>)]) {
        let (a, b) = ids[1];
        assert!(a.is_some() && b.is_some() && a != b);
        for (f, pair) in ids.iter().enumerate().skip(1) {
            assert_eq!(*pair, (a, b), "frame {f}");
        }
    }

    #[test]
    fn crossing_objects_keep_their_ids_by_motion() {
        assert_stable(&crossing(false, false));
        assert_stable(&crossing(false, true));
    }

    #[test]
    fn crossing_objects_keep_their_ids_by_motion_and_appearance() {
        assert_stable(&crossing(true, true));
    }

    #[test]
    fn appearance_keeps_ids_where_motion_misleads() {
        // Two people meet, stand together, and each turns back the way they came. Motion alone says
        // each walked on through the other; appearance says otherwise.
        let run = |embeddings: bool| {
            let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
            let mut ids = Vec::new();
            for f in 0..50i64 {
                // Meet at x = 300 at frame 20, stand still until frame 25, go back.
                let offset = match f {
                    0..20 => (20 - f) as f32 * 5.0,
                    20..25 => 0.0,
                    _ => (f - 25) as f32 * 5.0,
                };
                let mut a = det(0, 0.9, 300.0 - offset, 300.0, 50.0, 120.0);
                let mut b = det(0, 0.9, 300.0 + offset, 300.0, 50.0, 120.0);
                if embeddings {
                    a = with_embedding(a, &[1.0, 0.1]);
                    b = with_embedding(b, &[0.1, 1.0]);
                }
                let u = tracker.update(at(f), &[a, b]);
                ids.push((id_of(&u, 0), id_of(&u, 1)));
            }
            ids
        };
        assert_stable(&run(true));
        // Not a requirement, but shows what the embeddings are for: without them the ids of two
        // identical-looking objects at one spot cannot be kept apart.
        let without = run(false);
        assert_ne!(without[1], without[49]);
    }

    #[test]
    fn a_short_occlusion_keeps_the_id() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        let position = |f: i64| 100.0 + 4.0 * f as f32;
        let mut id = None;
        for f in 0..30 {
            let u = tracker.update(at(f), &[det(2, 0.8, position(f), 200.0, 60.0, 40.0)]);
            id = id_of(&u, 0).or(id);
        }
        // Hidden for 0.6 s: 18 frames with no detections.
        for f in 30..48 {
            let u = tracker.update(at(f), &[]);
            assert!(u.tracks.is_empty() && u.events.is_empty());
        }
        let u = tracker.update(at(48), &[det(2, 0.8, position(48), 200.0, 60.0, 40.0)]);
        assert!(id.is_some());
        assert_eq!(id_of(&u, 0), id);
        assert!(u.events.is_empty());
    }

    #[test]
    fn a_long_absence_ends_the_track_and_starts_a_new_one() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        let position = |f: i64| 100.0 + 4.0 * f as f32;
        let mut id = None;
        for f in 0..10 {
            let u = tracker.update(at(f), &[det(2, 0.8, position(f), 200.0, 60.0, 40.0)]);
            id = id_of(&u, 0).or(id);
        }
        let id = id.unwrap();
        // Frames keep coming, empty; the track ends once 1.5 s have passed since frame 9.
        let mut ends = Vec::new();
        for f in 10..80 {
            let u = tracker.update(at(f), &[]);
            ends.extend(ended(&u).into_iter().map(|e| (f, e.clone())));
        }
        assert_eq!(ends.len(), 1);
        let (f, end) = &ends[0];
        assert_eq!(*f, 9 + 46, "1.5 s is 45 frames and a bit");
        assert_eq!((end.track_id, end.class_id, end.reason), (id, 2, EndReason::Lost));
        assert_eq!((end.first_seen_ns, end.last_seen_ns, end.hits), (at(0), at(9), 10));
        // A straight path simplifies to its two ends.
        let ends_of_path: Vec<(i64, f32)> = end.trajectory.iter().map(|p| (p.time_ns, p.x)).collect();
        assert_eq!(ends_of_path, vec![(at(0), position(0)), (at(9), position(9))]);
        assert_eq!(tracker.track_count(), 0);

        tracker.update(at(80), &[det(2, 0.8, position(80), 200.0, 60.0, 40.0)]);
        let u = tracker.update(at(81), &[det(2, 0.8, position(81), 200.0, 60.0, 40.0)]);
        let new = id_of(&u, 0).unwrap();
        assert!(new > id);
    }

    #[test]
    fn a_gap_between_frames_longer_than_max_age_ends_the_track() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        for f in 0..5 {
            tracker.update(at(f), &[det(0, 0.9, 100.0, 100.0, 20.0, 20.0)]);
        }
        // The camera was gone for 2 s; the object is where it was, but it is a new track.
        let later = at(4) + 2_000_000_000;
        let u = tracker.update(later, &[det(0, 0.9, 100.0, 100.0, 20.0, 20.0)]);
        let ends = ended(&u);
        assert_eq!(ends.len(), 1);
        assert_eq!((ends[0].first_seen_ns, ends[0].last_seen_ns), (at(0), at(4)));
        assert!(u.tracks.is_empty(), "the new track is tentative");
        assert_eq!(tracker.track_count(), 1);
    }

    #[test]
    fn weak_detections_extend_confirmed_tracks_but_never_start_one() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        let mut id = None;
        for f in 0..5 {
            let u = tracker.update(at(f), &[det(0, 0.9, 100.0 + 3.0 * f as f32, 100.0, 30.0, 60.0)]);
            id = id_of(&u, 0).or(id);
        }
        // Partly hidden: the detector is unsure, but it is the same object.
        for f in 5..20 {
            let d = det(0, 0.2, 100.0 + 3.0 * f as f32, 100.0, 30.0, 60.0);
            let u = tracker.update(at(f), &[d]);
            assert_eq!(id_of(&u, 0), id, "frame {f}");
            assert_eq!(u.tracks[0].score, 0.2);
        }
        // Weak detections elsewhere, however many, start nothing.
        for f in 20..30 {
            let u = tracker.update(at(f), &[det(1, 0.4, 500.0, 500.0, 30.0, 60.0)]);
            assert!(u.tracks.is_empty() && confirmed(&u).is_empty());
        }
        // And below low_threshold a detection is not even a weak one.
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        for f in 0..3 {
            tracker.update(at(f), &[det(0, 0.9, 100.0, 100.0, 30.0, 60.0)]);
        }
        let u = tracker.update(at(3), &[det(0, 0.05, 100.0, 100.0, 30.0, 60.0)]);
        assert!(u.tracks.is_empty());
    }

    #[test]
    fn a_weak_detection_does_not_confirm_a_tentative_track() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        tracker.update(at(0), &[det(0, 0.9, 100.0, 100.0, 30.0, 60.0)]);
        let u = tracker.update(at(1), &[det(0, 0.3, 100.0, 100.0, 30.0, 60.0)]);
        assert!(u.tracks.is_empty() && u.events.is_empty());
        assert_eq!(tracker.track_count(), 0, "the tentative track missed and is dropped");
    }

    #[test]
    fn classes_never_match_each_other() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        // A person on a bicycle: two classes, one box.
        let pair = |f: i64| {
            [
                det(0, 0.9, 200.0, 200.0, 40.0, 80.0),
                det(1, 0.8, 200.0 + f as f32, 200.0, 40.0, 80.0),
            ]
        };
        let mut ids = Vec::new();
        for f in 0..10 {
            let u = tracker.update(at(f), &pair(f));
            ids.push((id_of(&u, 0), id_of(&u, 1)));
            for o in &u.tracks {
                assert_eq!(o.class_id, o.detection as u32);
            }
        }
        assert_stable(&ids);
        // The person leaves; a car appears in their place: a new track, not the person's.
        let person = ids[1].0;
        let u = tracker.update(at(10), &[det(2, 0.9, 200.0, 200.0, 40.0, 80.0)]);
        assert!(u.tracks.is_empty());
        let u = tracker.update(at(11), &[det(2, 0.9, 200.0, 200.0, 40.0, 80.0)]);
        assert!(id_of(&u, 0).is_some() && id_of(&u, 0) != person);
    }

    #[test]
    fn a_different_appearance_does_not_steal_a_track() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        let look = [0.6, 0.8, 0.0];
        let mut id = None;
        for f in 0..5 {
            let u = tracker.update(at(f), &[with_embedding(det(0, 0.9, 100.0, 100.0, 40.0, 80.0), &look)]);
            id = id_of(&u, 0).or(id);
        }
        // Someone else steps into the same box.
        let other = with_embedding(det(0, 0.9, 100.0, 100.0, 40.0, 80.0), &[0.0, -0.6, 0.8]);
        let u = tracker.update(at(5), std::slice::from_ref(&other));
        assert!(u.tracks.is_empty(), "the stranger is a new tentative track");
        let u = tracker.update(at(6), &[other]);
        let stranger = id_of(&u, 0);
        assert!(stranger.is_some() && stranger != id);
        // The first person, a little changed (raw, not normalised), comes back and is recognised.
        let back = with_embedding(det(0, 0.9, 100.0, 100.0, 40.0, 80.0), &[6.0, 7.5, 1.0]);
        let u = tracker.update(at(7), &[back]);
        assert_eq!(id_of(&u, 0), id);
        // A detection without an embedding is matched on IoU alone.
        let u = tracker.update(at(8), &[det(0, 0.9, 100.0, 100.0, 40.0, 80.0)]);
        assert!(id_of(&u, 0).is_some());
    }

    #[test]
    fn the_appearance_is_a_unit_moving_average() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        for f in 0..3 {
            tracker.update(
                at(f),
                &[with_embedding(det(0, 0.9, 100.0, 100.0, 40.0, 80.0), &[3.0, 4.0])],
            );
        }
        tracker.update(
            at(3),
            &[with_embedding(det(0, 0.9, 100.0, 100.0, 40.0, 80.0), &[4.0, 3.0])],
        );
        // Weak detections do not change it.
        tracker.update(
            at(4),
            &[with_embedding(det(0, 0.2, 100.0, 100.0, 40.0, 80.0), &[-1.0, 0.0])],
        );
        let ends = tracker.finish();
        let TrackEvent::Ended(end) = &ends[0] else {
            panic!("expected an end, got {ends:?}");
        };
        assert_eq!((end.reason, end.hits), (EndReason::Finished, 5));
        let a = end.appearance.as_ref().unwrap();
        let norm = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        // 0.9 * (0.6, 0.8) + 0.1 * (0.8, 0.6), renormalised.
        let (x, y) = (0.9 * 0.6 + 0.1 * 0.8, 0.9 * 0.8 + 0.1 * 0.6);
        let n = f32::hypot(x, y);
        assert!((a[0] - x / n).abs() < 1e-5 && (a[1] - y / n).abs() < 1e-5, "{a:?}");
    }

    #[test]
    fn malformed_detections_are_counted_and_skipped() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        let good = det(0, 0.9, 100.0, 100.0, 40.0, 80.0);
        let bad = [
            Detection {
                bbox: [f32::NAN, 0.0, 10.0, 10.0],
                ..good.clone()
            },
            Detection {
                bbox: [0.0, 0.0, f32::INFINITY, 10.0],
                ..good.clone()
            },
            Detection {
                score: f32::NAN,
                ..good.clone()
            },
            Detection {
                score: f32::INFINITY,
                ..good.clone()
            },
            Detection {
                bbox: [5.0, 5.0, 5.0, 20.0],
                ..good.clone()
            },
            Detection {
                bbox: [20.0, 20.0, 10.0, 10.0],
                ..good.clone()
            },
        ];
        for f in 0..5 {
            let mut frame = bad.to_vec();
            frame.push(with_embedding(good.clone(), &[f32::NAN, 1.0]));
            frame.push(with_embedding(det(0, 0.9, 500.0, 100.0, 40.0, 80.0), &[]));
            let u = tracker.update(at(f), &frame);
            assert_eq!(u.invalid_detections, 6);
            if f > 0 {
                assert_eq!(u.tracks.iter().map(|o| o.detection).collect::<Vec<_>>(), vec![6, 7]);
            }
        }
        // Empty frames are fine, as is no frame at all before finishing.
        assert_eq!(tracker.update(at(5), &[]).invalid_detections, 0);
        assert!(Tracker::new(TrackerConfig::default(), 0).finish().is_empty());
        // Extreme but finite boxes and embeddings of changing size do not upset anything.
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        for f in 0..5 {
            let huge = Detection {
                class_id: 0,
                score: 1.0,
                bbox: [-f32::MAX, -f32::MAX, f32::MAX, f32::MAX],
                embedding: Some(vec![1.0; 1 + f as usize]),
                sharpness: 0.0,
            };
            let tiny = Detection {
                class_id: 0,
                score: 1.0,
                bbox: [1.0, 1.0, 1.0 + f32::EPSILON, 1.0 + f32::EPSILON],
                embedding: None,
                sharpness: 0.0,
            };
            let u = tracker.update(at(f), &[huge, tiny]);
            assert_eq!(u.invalid_detections, 0);
        }
    }

    #[test]
    fn time_going_backwards_or_jumping_is_handled() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        let d = || [det(0, 0.9, 100.0, 100.0, 40.0, 80.0)];
        let mut id = None;
        for f in 0..5 {
            id = id_of(&tracker.update(at(f), &d()), 0).or(id);
        }
        // A repeated timestamp and a small step back: counted as the latest time, nothing predicted.
        assert_eq!(id_of(&tracker.update(at(4), &d()), 0), id);
        assert_eq!(id_of(&tracker.update(at(2), &d()), 0), id);
        assert_eq!(id_of(&tracker.update(at(5), &d()), 0), id);
        // The camera's clock is reset a minute back: everything ends, tracking starts again.
        let reset = at(5) - 60_000_000_000;
        let u = tracker.update(reset, &d());
        let ends = ended(&u);
        assert_eq!(ends.len(), 1);
        assert_eq!((ends[0].reason, ends[0].last_seen_ns), (EndReason::ClockStep, at(5)));
        let u = tracker.update(reset + FRAME_NS, &d());
        assert!(id_of(&u, 0).is_some() && id_of(&u, 0) != id);
        // The extremes of i64, either way: each jump ends the track open before it, and the
        // object starts a new, unconfirmed track, with no overflow on the way.
        let mut open = id_of(&u, 0);
        for t in [i64::MAX, i64::MIN, i64::MAX, 0] {
            let u = tracker.update(t, &d());
            let ends: Vec<u64> = ended(&u).iter().map(|e| e.track_id).collect();
            assert_eq!(ends, open.into_iter().collect::<Vec<_>>(), "at {t}");
            assert!(
                u.tracks.is_empty(),
                "a track after a jump is not confirmed yet (at {t})"
            );
            assert_eq!(tracker.track_count(), 1);
            open = None; // the new track was never confirmed, so it ends without a report
        }
        // Tracking goes on normally from there.
        let u = tracker.update(FRAME_NS, &d());
        assert_eq!(u.tracks.len(), 1, "confirmed at its second hit");
        assert!(id_of(&u, 0).is_some() && id_of(&u, 0) != id);
    }

    #[test]
    fn nonsense_config_does_not_panic_or_hoard_tracks() {
        let nonsense = TrackerConfig {
            high_threshold: f32::NAN,
            low_threshold: -1.0,
            high_min_iou: 0.0,
            low_min_iou: f32::NAN,
            appearance_min_similarity: f32::NAN,
            appearance_momentum: f32::NAN,
            min_hits: 0,
            max_age_seconds: f64::NAN,
            max_trajectory_points: 0,
            trajectory_tolerance_pixels: f32::NAN,
        };
        let nonsense_but_tracking = TrackerConfig {
            high_threshold: 0.5,
            max_age_seconds: 1.0,
            ..nonsense.clone()
        };
        // The NaN appearance gate refuses every embedded pair, so each frame starts a track; what
        // matters is that the lost ones still end, NaN or not.
        for (config, most) in [(nonsense, 1), (nonsense_but_tracking, 32)] {
            assert!(config.validate().is_err());
            let mut tracker = Tracker::new(config, EPOCH);
            for f in 0..100 {
                let d = with_embedding(det(0, 0.9, 100.0 + f as f32, 100.0, 40.0, 80.0), &[1.0, f as f32]);
                tracker.update(at(f), &[d, det(0, 0.2, 300.0, 100.0, 40.0, 80.0)]);
                assert!(tracker.track_count() <= most, "frame {f}: {}", tracker.track_count());
            }
            tracker.finish();
        }
    }

    #[test]
    fn ids_continue_from_an_earlier_run_even_when_the_clock_went_back() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        tracker.continue_from((EPOCH + 100) << 24 | 7);
        assert_eq!(tracker.upcoming_id(), (EPOCH + 100) << 24 | 7);
        assert_eq!(tracker.next_id(), (EPOCH + 100) << 24 | 7);
        tracker.continue_from(EPOCH << 24 | 1);
        assert_eq!(
            tracker.next_id(),
            (EPOCH + 100) << 24 | 8,
            "an older count changes nothing"
        );
        tracker.continue_from((EPOCH + 200) << 24);
        assert_eq!(tracker.next_id(), (EPOCH + 200) << 24 | 1, "counter 0 is never an id");
    }

    #[test]
    fn ids_grow_and_borrow_the_next_epoch_when_the_counter_runs_out() {
        let mut tracker = Tracker::new(TrackerConfig::default(), EPOCH);
        assert_eq!(tracker.next_id(), EPOCH << 24 | 1);
        tracker.next_counter = (1 << 24) - 1;
        let last = tracker.next_id();
        let borrowed = tracker.next_id();
        assert_eq!(last, EPOCH << 24 | 0xff_ffff);
        assert_eq!(borrowed, (EPOCH + 1) << 24 | 1);
        assert!(borrowed > last);
        // A later run starts after this one made its 2^24 tracks, so at least a second on.
        assert!(Tracker::new(TrackerConfig::default(), EPOCH + 2).next_id() > borrowed);
    }

    #[test]
    fn a_long_winding_trajectory_stays_within_its_cap_and_keeps_its_ends() {
        let config = TrackerConfig {
            max_trajectory_points: 16,
            ..TrackerConfig::default()
        };
        let cap = config.max_trajectory_points;
        let mut tracker = Tracker::new(config, EPOCH);
        let position = |f: i64| (300.0 + 3.0 * f as f32, 300.0 + 40.0 * (f as f32 / 5.0).sin());
        for f in 0..300 {
            let (x, y) = position(f);
            tracker.update(at(f), &[det(0, 0.9, x, y, 40.0, 80.0)]);
            assert!(tracker.tracks.iter().all(|t| t.trajectory.len() <= cap));
        }
        let ends = tracker.finish();
        let TrackEvent::Ended(end) = &ends[0] else {
            panic!("expected an end, got {ends:?}");
        };
        let t = &end.trajectory;
        assert!(t.len() >= 3 && t.len() <= cap, "{}", t.len());
        assert_eq!(t[0].time_ns, at(0));
        assert_eq!(t[t.len() - 1].time_ns, at(299));
        assert!(t.windows(2).all(|w| w[0].time_ns < w[1].time_ns));
    }

    #[test]
    fn simplify_keeps_corners_and_drops_points_on_straight_runs() {
        let p = |i: i64, x: f32, y: f32| TrajectoryPoint { time_ns: i, x, y };
        let mut points = vec![
            p(0, 0.0, 0.0),
            p(1, 5.0, 0.5),
            p(2, 10.0, 0.0),
            p(3, 10.0, 5.0),
            p(4, 10.0, 10.0),
            p(5, 0.0, 10.0),
        ];
        simplify(&mut points, 1.0);
        let times: Vec<i64> = points.iter().map(|p| p.time_ns).collect();
        assert_eq!(times, vec![0, 2, 4, 5]);
    }

    #[test]
    fn config_has_defaults_and_refuses_unknown_fields() {
        let config: TrackerConfig = toml::from_str("max_age_seconds = 3.0\nmin_hits = 3").unwrap();
        assert_eq!(
            config,
            TrackerConfig {
                max_age_seconds: 3.0,
                min_hits: 3,
                ..TrackerConfig::default()
            }
        );
        assert!(config.validate().is_ok());
        assert!(TrackerConfig::default().validate().is_ok());
        let error = toml::from_str::<TrackerConfig>("max_age = 3.0").unwrap_err();
        assert!(error.to_string().contains("max_age"), "{error}");
        let bad = TrackerConfig {
            low_threshold: 0.6,
            ..TrackerConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("low_threshold"));
    }
}
