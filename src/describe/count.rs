//! Zones and counting lines: what a camera's confirmed tracks do at its places, as events
//! ([`pb::ZoneEvent`]) and as counts per interval ([`pb::CountReport`]).
//!
//! A track is followed by one point of its box, the place's anchor (bottom centre by default:
//! where a vehicle touches the road, so a line painted on the road is where it counts).
//!
//! - **Lines** are directed segments. Crossing one means the anchor went from one side to the
//!   other *through the segment*: between the last frame on the old side and the first on the
//!   new, the anchor's path meets the segment. An object that goes around an end is not counted,
//!   and a line can end at the frame's edge like any other.
//! - **Zones** are polygons; the anchor inside (even-odd rule) is the track inside.
//! - **Hold**: a change of side (of a line, or of a zone's edge) is taken once the anchor has
//!   been on its new side in `hold_frames` analysed frames in a row spanning `hold_seconds`; a
//!   frame back on the old side cancels it. Jitter of a box on a line never counts twice (the
//!   flicker supervision's LineZone counts). It is dated at the first frame on the new side.
//! - **Frames without the track** (occluded, missed by the detector) neither add to nor break a
//!   hold: a track lost and found again is judged by where it was last seen and where it is now.
//! - **A track that ends** (lost for good, its camera stopped) is judged where it was last seen: a
//!   change waiting for its hold is taken (an object that crosses a line at the frame's edge and
//!   leaves the view before the hold is over still counts), and it leaves every zone it is in.
//! - **One count per direction**: a track counts a line's direction once, and again only after
//!   it has crossed back. A track that starts tentative is placed by its first detection, so an
//!   object is counted from where it entered the view, not from where it was confirmed.
//!
//! Counts are kept per interval, aligned to multiples of `interval_seconds` of capture time, and
//! reported when the camera's first frame past the interval arrives, or when it stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::clock::{UnixNanos, to_timestamp};
use crate::config::{CountingPlaces, CountingSettings, LineConfig, ZoneConfig};
use crate::pb;

/// The side of a line a point is on, walking from its `from` to its `to` on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// Which side of the line through `a` and `b` point `p` is on; `None` on the line itself.
fn side(a: [f32; 2], b: [f32; 2], p: [f32; 2]) -> Option<Side> {
    let cross = cross(a, b, p);
    // With y pointing down, a positive cross product is on the right-hand side.
    if cross > 0.0 {
        Some(Side::Right)
    } else if cross < 0.0 {
        Some(Side::Left)
    } else {
        None
    }
}

fn cross(a: [f32; 2], b: [f32; 2], p: [f32; 2]) -> f32 {
    (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
}

/// Whether the path from `p` to `q`, which are on opposite sides of the line through `a` and
/// `b`, meets the segment from `a` to `b` (its ends included).
fn passes_through(p: [f32; 2], q: [f32; 2], a: [f32; 2], b: [f32; 2]) -> bool {
    let (at_a, at_b) = (cross(p, q, a), cross(p, q, b));
    at_a * at_b <= 0.0
}

/// Even-odd rule: whether `p` is inside the polygon.
fn inside(polygon: &[[f32; 2]], p: [f32; 2]) -> bool {
    let mut inside = false;
    let mut j = polygon.len().saturating_sub(1);
    for (i, &a) in polygon.iter().enumerate() {
        let b = polygon[j];
        if (a[1] > p[1]) != (b[1] > p[1]) {
            let x = a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
            if p[0] < x {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

fn applies(classes: &[String], class_name: &str) -> bool {
    classes.is_empty() || classes.iter().any(|c| c == class_name)
}

/// A change of side waiting for its hold.
#[derive(Debug, Clone, Copy)]
struct Hold {
    since: UnixNanos,
    frames: u32,
}

impl Hold {
    /// One more frame on the new side; whether the hold is now over.
    fn extend(hold: &mut Option<Hold>, at: UnixNanos, settings: &CountingSettings) -> bool {
        let hold = hold.get_or_insert(Hold { since: at, frames: 0 });
        hold.frames += 1;
        let held_ns = (settings.hold_seconds * 1e9) as i64;
        hold.frames >= settings.hold_frames && at.saturating_sub(hold.since) >= held_ns
    }
}

#[derive(Debug, Default)]
struct AtLine {
    /// The side taken; `None` before the track was seen off the line.
    side: Option<Side>,
    /// The last anchor seen on the side taken.
    last: [f32; 2],
    pending: Option<Hold>,
    /// Directions (forward, backward) this track has counted and not crossed back from since.
    counted: [bool; 2],
}

#[derive(Debug, Default)]
struct AtZone {
    inside: bool,
    entered_at: UnixNanos,
    pending: Option<Hold>,
}

struct TrackAtPlaces {
    class_id: u32,
    class_name: String,
    first_seen: UnixNanos,
    last_seen: UnixNanos,
    lines: Vec<AtLine>,
    zones: Vec<AtZone>,
}

/// Counts of one interval.
struct Interval {
    from: UnixNanos,
    end: UnixNanos,
    /// By (place id, kind, direction, class): how many, and the dwell they add up to.
    tallies: BTreeMap<(String, i32, String, String), (u32, f64)>,
    /// Most tracks inside at once, by (zone index, class).
    max_inside: BTreeMap<(usize, String), u32>,
}

/// One camera's zones and lines, and where its tracks are with respect to them.
pub struct Counter {
    places: Arc<CountingPlaces>,
    settings: CountingSettings,
    tracks: HashMap<u64, TrackAtPlaces>,
    /// Tracks inside each zone now, by (zone index, class).
    inside: BTreeMap<(usize, String), u32>,
    interval: Option<Interval>,
    last_frame: Option<UnixNanos>,
}

impl Counter {
    pub fn new(places: Arc<CountingPlaces>, settings: CountingSettings) -> Self {
        Counter {
            places,
            settings,
            tracks: HashMap::new(),
            inside: BTreeMap::new(),
            interval: None,
            last_frame: None,
        }
    }

    /// The places counted, as given: a camera whose places are another `Arc` has changed them.
    pub fn places(&self) -> &Arc<CountingPlaces> {
        &self.places
    }

    /// Counts on with `places`, equal to those it has (the camera was updated, its places were
    /// not).
    pub fn keep_places(&mut self, places: Arc<CountingPlaces>) {
        self.places = places;
    }

    /// Starts a frame captured at `time`: the report of the interval it closes, if it closes one.
    pub fn start_frame(&mut self, time: UnixNanos) -> Option<pb::CountReport> {
        if self.places.is_empty() {
            return None;
        }
        let length = self.interval_ns();
        let end_of = |t: UnixNanos| t.div_euclid(length).saturating_add(1).saturating_mul(length);
        let last_frame = self.last_frame.replace(time);
        let Some((from, end)) = self.interval.as_ref().map(|i| (i.from, i.end)) else {
            self.open(time, end_of(time));
            return None;
        };
        if (from..end).contains(&time) {
            return None;
        }
        let (report, next_from) = if time < from {
            // The camera's clock went back: what was counted is reported as it stands.
            (self.close(last_frame.unwrap_or(from)), time)
        } else {
            // The next interval follows on unless whole intervals went by without a frame.
            let next_from = if time < end.saturating_add(length) { end } else { time };
            (self.close(end), next_from)
        };
        self.open(next_from, end_of(time));
        report
    }

    /// A confirmed track seen in the current frame, its box normalised to the frame; events it
    /// caused go to `events`. `first` is where a newly confirmed track was first seen, and when.
    pub fn observe(
        &mut self,
        track_id: u64,
        class: (u32, &str),
        time: UnixNanos,
        bbox: [f32; 4],
        first: Option<(UnixNanos, [f32; 4])>,
        events: &mut Vec<pb::ZoneEvent>,
    ) {
        if self.places.is_empty() {
            return;
        }
        let places = self.places.clone();
        let start = events.len();
        let track = self.tracks.entry(track_id).or_insert_with(|| TrackAtPlaces {
            class_id: class.0,
            class_name: class.1.to_string(),
            first_seen: first.map_or(time, |(at, _)| at),
            last_seen: time,
            lines: places.lines.iter().map(|_| AtLine::default()).collect(),
            zones: places.zones.iter().map(|_| AtZone::default()).collect(),
        });
        let seen = first.into_iter().chain([(time, bbox)]);
        for (at, bbox) in seen {
            track.last_seen = at;
            for (line, state) in places.lines.iter().zip(&mut track.lines) {
                if applies(&line.classes, &track.class_name) {
                    let anchor = line.anchor.of(bbox);
                    if let Some(crossed) = state.observe(line, anchor, at, &self.settings) {
                        events.push(crossing(track_id, track.class_id, line, crossed));
                    }
                }
            }
            for (zone, state) in places.zones.iter().zip(&mut track.zones) {
                if applies(&zone.classes, &track.class_name) {
                    let now_inside = inside(&zone.polygon, zone.anchor.of(bbox));
                    if let Some(event) = state.observe(zone, now_inside, at, &self.settings, track_id, track.class_id) {
                        events.push(event);
                    }
                }
            }
        }
        let class_name = track.class_name.clone();
        self.tally(&events[start..], &class_name);
    }

    /// A track has ended: changes waiting for their hold are taken where it was last seen, and it
    /// leaves the zones it is in.
    pub fn end_track(&mut self, track_id: u64, events: &mut Vec<pb::ZoneEvent>) {
        let Some(track) = self.tracks.remove(&track_id) else {
            return;
        };
        let from = events.len();
        for (line, state) in self.places.lines.iter().zip(track.lines) {
            if let (Some(hold), Some(side)) = (state.pending, state.side) {
                let direction = opposite(side);
                if !state.counted[direction_index(direction)] {
                    events.push(crossing(track_id, track.class_id, line, (direction, hold.since)));
                }
            }
        }
        for (zone, state) in self.places.zones.iter().zip(track.zones) {
            let (entered_at, left_at) = match (state.inside, state.pending) {
                (true, Some(hold)) => (state.entered_at, hold.since),
                (true, None) => (state.entered_at, track.last_seen),
                (false, Some(hold)) => {
                    events.push(zone_event(
                        zone,
                        pb::ZoneEventKind::Entered,
                        track_id,
                        track.class_id,
                        hold.since,
                    ));
                    (hold.since, track.last_seen)
                }
                (false, None) => continue,
            };
            events.push(left(zone, track_id, track.class_id, entered_at, left_at));
        }
        let class_name = track.class_name;
        self.tally(&events[from..], &class_name);
    }

    /// Ends every track and reports the interval so far, up to the last frame: the camera
    /// stopped, or its places are about to change.
    pub fn finish(&mut self, events: &mut Vec<pb::ZoneEvent>) -> Option<pb::CountReport> {
        self.end_tracks(events);
        let report = self.last_frame.and_then(|last| self.close(last));
        self.last_frame = None;
        report
    }

    /// Ends every track ([`end_track`](Self::end_track)), in the order they were first seen.
    pub fn end_tracks(&mut self, events: &mut Vec<pb::ZoneEvent>) {
        let mut ids: Vec<(UnixNanos, u64)> = self.tracks.iter().map(|(id, t)| (t.first_seen, *id)).collect();
        ids.sort_unstable();
        for (_, id) in ids {
            self.end_track(id, events);
        }
    }

    fn interval_ns(&self) -> i64 {
        ((self.settings.interval_seconds * 1e9) as i64).max(1)
    }

    fn open(&mut self, from: UnixNanos, end: UnixNanos) {
        self.interval = Some(Interval {
            from,
            end,
            tallies: BTreeMap::new(),
            max_inside: self.inside.clone(),
        });
    }

    fn close(&mut self, to: UnixNanos) -> Option<pb::CountReport> {
        let interval = self.interval.take()?;
        let counts = interval
            .tallies
            .into_iter()
            .map(
                |((zone_id, kind, direction, class_name), (count, dwell))| pb::ZoneCount {
                    zone_id,
                    kind,
                    direction,
                    class_name,
                    count,
                    dwell_seconds_sum: dwell,
                },
            )
            .collect();
        let mut occupancy: BTreeMap<(usize, String), (u32, u32)> = BTreeMap::new();
        for (key, &max) in &interval.max_inside {
            occupancy.entry(key.clone()).or_default().1 = max;
        }
        for (key, &now) in &self.inside {
            occupancy.entry(key.clone()).or_default().0 = now;
        }
        let occupancy = occupancy
            .into_iter()
            .filter(|(_, (now, max))| *now > 0 || *max > 0)
            .filter_map(|((zone, class_name), (now, max))| {
                Some(pb::ZoneOccupancy {
                    zone_id: self.places.zones.get(zone)?.id.clone(),
                    class_name,
                    now,
                    max: max.max(now),
                })
            })
            .collect();
        Some(pb::CountReport {
            from_time: Some(to_timestamp(interval.from)),
            to_time: Some(to_timestamp(to.max(interval.from))),
            counts,
            occupancy,
        })
    }

    /// Adds a track's events to the interval and to the zones' occupancy.
    fn tally(&mut self, events: &[pb::ZoneEvent], class_name: &str) {
        for event in events {
            let kind = event.kind();
            if let Some(interval) = &mut self.interval {
                let key = (
                    event.zone_id.clone(),
                    event.kind,
                    event.direction.clone(),
                    class_name.to_string(),
                );
                let tally = interval.tallies.entry(key).or_default();
                tally.0 += 1;
                tally.1 += event.dwell_seconds;
            }
            let Some(zone) = self.places.zones.iter().position(|z| z.id == event.zone_id) else {
                continue;
            };
            let key = (zone, class_name.to_string());
            let now = self.inside.entry(key.clone()).or_default();
            match kind {
                pb::ZoneEventKind::Entered => *now += 1,
                pb::ZoneEventKind::Left => *now = now.saturating_sub(1),
                _ => {}
            }
            let now = *now;
            if let Some(interval) = &mut self.interval {
                let max = interval.max_inside.entry(key).or_default();
                *max = (*max).max(now);
            }
        }
    }
}

fn opposite(side: Side) -> Side {
    match side {
        Side::Left => Side::Right,
        Side::Right => Side::Left,
    }
}

/// Forward is from the left-hand side to the right-hand side: 0; backward: 1.
fn direction_index(to: Side) -> usize {
    match to {
        Side::Right => 0,
        Side::Left => 1,
    }
}

impl AtLine {
    /// The anchor seen at `at`: the direction it crossed the line in and when, once the hold of a
    /// crossing is over and the direction is armed.
    fn observe(
        &mut self,
        line: &LineConfig,
        anchor: [f32; 2],
        at: UnixNanos,
        settings: &CountingSettings,
    ) -> Option<(Side, UnixNanos)> {
        let now = side(line.from, line.to, anchor);
        let Some(taken) = self.side else {
            // On the line itself is no side: wait for the first frame off it.
            self.side = now;
            self.last = anchor;
            return None;
        };
        match now {
            Some(now) if now != taken => {}
            // Back on its side (or on the line): a change waiting for its hold was jitter.
            _ => {
                self.pending = None;
                if now == Some(taken) {
                    self.last = anchor;
                }
                return None;
            }
        }
        if self.pending.is_none() && !passes_through(self.last, anchor, line.from, line.to) {
            // Around an end of the segment: on the other side without crossing it.
            self.side = Some(opposite(taken));
            self.last = anchor;
            return None;
        }
        if !Hold::extend(&mut self.pending, at, settings) {
            return None;
        }
        let since = self.pending.take().map_or(at, |h| h.since);
        let to = opposite(taken);
        self.side = Some(to);
        self.last = anchor;
        let index = direction_index(to);
        // Crossing back re-arms the other direction.
        self.counted[1 - index] = false;
        if std::mem::replace(&mut self.counted[index], true) {
            return None;
        }
        Some((to, since))
    }
}

impl AtZone {
    fn observe(
        &mut self,
        zone: &ZoneConfig,
        now_inside: bool,
        at: UnixNanos,
        settings: &CountingSettings,
        track_id: u64,
        class_id: u32,
    ) -> Option<pb::ZoneEvent> {
        if now_inside == self.inside {
            self.pending = None;
            return None;
        }
        if !Hold::extend(&mut self.pending, at, settings) {
            return None;
        }
        let since = self.pending.take().map_or(at, |h| h.since);
        self.inside = now_inside;
        if now_inside {
            self.entered_at = since;
            Some(zone_event(zone, pb::ZoneEventKind::Entered, track_id, class_id, since))
        } else {
            Some(left(zone, track_id, class_id, self.entered_at, since))
        }
    }
}

fn crossing(track_id: u64, class_id: u32, line: &LineConfig, (to, at): (Side, UnixNanos)) -> pb::ZoneEvent {
    let direction = match to {
        Side::Right => &line.forward,
        Side::Left => &line.backward,
    };
    pb::ZoneEvent {
        track_id,
        class_id,
        kind: pb::ZoneEventKind::Crossed as i32,
        zone_id: line.id.clone(),
        direction: direction.clone(),
        time: Some(to_timestamp(at)),
        dwell_seconds: 0.0,
    }
}

fn zone_event(
    zone: &ZoneConfig,
    kind: pb::ZoneEventKind,
    track_id: u64,
    class_id: u32,
    at: UnixNanos,
) -> pb::ZoneEvent {
    pb::ZoneEvent {
        track_id,
        class_id,
        kind: kind as i32,
        zone_id: zone.id.clone(),
        direction: String::new(),
        time: Some(to_timestamp(at)),
        dwell_seconds: 0.0,
    }
}

fn left(zone: &ZoneConfig, track_id: u64, class_id: u32, entered_at: UnixNanos, at: UnixNanos) -> pb::ZoneEvent {
    pb::ZoneEvent {
        dwell_seconds: at.saturating_sub(entered_at).max(0) as f64 / 1e9,
        ..zone_event(zone, pb::ZoneEventKind::Left, track_id, class_id, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Anchor;

    const S: i64 = 1_000_000_000;
    /// 5 frames a second.
    const FRAME: i64 = S / 5;

    fn line(id: &str, from: [f32; 2], to: [f32; 2]) -> LineConfig {
        LineConfig {
            id: id.into(),
            from,
            to,
            forward: "south".into(),
            backward: "north".into(),
            classes: vec![],
            anchor: Anchor::BottomCentre,
        }
    }

    fn zone(id: &str, polygon: Vec<[f32; 2]>, classes: &[&str]) -> ZoneConfig {
        ZoneConfig {
            id: id.into(),
            polygon,
            classes: classes.iter().map(|c| c.to_string()).collect(),
            anchor: Anchor::BottomCentre,
        }
    }

    fn counter(zones: Vec<ZoneConfig>, lines: Vec<LineConfig>, hold_frames: u32) -> Counter {
        let settings = CountingSettings {
            hold_frames,
            ..CountingSettings::default()
        };
        Counter::new(Arc::new(CountingPlaces { zones, lines }), settings)
    }

    /// A box whose bottom centre is at `(x, y)`.
    fn standing_at(x: f32, y: f32) -> [f32; 4] {
        [x - 0.05, y - 0.1, x + 0.05, y]
    }

    /// Feeds one track's anchors, a frame apart from `t0` (`None`: not seen in that frame), and
    /// returns (kind, place, direction, time in frames) of every event.
    fn walk(
        counter: &mut Counter,
        track: u64,
        t0: i64,
        path: &[Option<(f32, f32)>],
    ) -> Vec<(String, String, String, i64)> {
        let mut events = Vec::new();
        for (i, at) in path.iter().enumerate() {
            let t = t0 + i as i64 * FRAME;
            counter.start_frame(t);
            if let Some((x, y)) = at {
                counter.observe(track, (2, "car"), t, standing_at(*x, *y), None, &mut events);
            }
        }
        described(&events, t0)
    }

    fn described(events: &[pb::ZoneEvent], t0: i64) -> Vec<(String, String, String, i64)> {
        events
            .iter()
            .map(|e| {
                let kind = crate::wire::zone_event_kind_label(e.kind()).to_string();
                let t = crate::clock::timestamp_nanos(e.time.unwrap());
                (kind, e.zone_id.clone(), e.direction.clone(), (t - t0) / FRAME)
            })
            .collect()
    }

    fn crossed(direction: &str, frame: i64) -> (String, String, String, i64) {
        ("crossed".into(), "l".into(), direction.into(), frame)
    }

    #[test]
    fn a_track_crossing_a_line_counts_once_in_its_direction_dated_at_its_first_frame_across() {
        let mut counter = counter(vec![], vec![line("l", [0.1, 0.5], [0.9, 0.5])], 2);
        let down: Vec<_> = [0.3, 0.4, 0.45, 0.55, 0.6, 0.7, 0.8].map(|y| Some((0.5, y))).into();
        assert_eq!(walk(&mut counter, 1, 0, &down), vec![crossed("south", 3)]);
        let up: Vec<_> = [0.8, 0.6, 0.4, 0.3].map(|y| Some((0.5, y))).into();
        assert_eq!(walk(&mut counter, 2, 0, &up), vec![crossed("north", 2)]);
    }

    #[test]
    fn jitter_on_the_line_does_not_count_until_the_anchor_holds_its_new_side() {
        let jitter: Vec<_> = [0.49, 0.51, 0.49, 0.51, 0.49, 0.51, 0.49]
            .map(|y| Some((0.5, y)))
            .into();
        let line = || line("l", [0.1, 0.5], [0.9, 0.5]);
        assert_eq!(walk(&mut counter(vec![], vec![line()], 2), 1, 0, &jitter), vec![]);
        // Without the hold, every flicker across counts once per direction it has not yet
        // counted: what the hold is for.
        let held_once = walk(&mut counter(vec![], vec![line()], 1), 1, 0, &jitter);
        assert_eq!(held_once.len(), 6, "{held_once:?}");
        // Jitter then a real crossing: one count, dated where the anchor stayed across.
        let then_across: Vec<_> = [0.49, 0.51, 0.49, 0.52, 0.6, 0.7].map(|y| Some((0.5, y))).into();
        assert_eq!(
            walk(&mut counter(vec![], vec![line()], 2), 1, 0, &then_across),
            vec![crossed("south", 3)]
        );
        // hold_seconds as well: three frames across span 0.4 s, not the 0.5 s asked for.
        let mut slow = counter(vec![], vec![line()], 2);
        slow.settings.hold_seconds = 0.5;
        let down: Vec<_> = [0.4, 0.6, 0.6, 0.6, 0.4, 0.6, 0.6, 0.6, 0.6]
            .map(|y| Some((0.5, y)))
            .into();
        assert_eq!(walk(&mut slow, 1, 0, &down), vec![crossed("south", 5)]);
    }

    #[test]
    fn only_a_path_through_the_segment_counts_not_one_beside_its_ends() {
        let mut counter = counter(vec![], vec![line("l", [0.3, 0.5], [0.7, 0.5])], 2);
        // Down beside the right end, back up beside it, then down through the middle.
        let path: Vec<_> = [
            (0.8, 0.4),
            (0.8, 0.6),
            (0.8, 0.7),
            (0.8, 0.4),
            (0.5, 0.4),
            (0.5, 0.6),
            (0.5, 0.7),
        ]
        .map(Some)
        .into();
        assert_eq!(walk(&mut counter, 1, 0, &path), vec![crossed("south", 5)]);
        // A diagonal step that passes beside the end although both points lie within x of it.
        let mut counter2 = self::counter(vec![], vec![line("l", [0.3, 0.5], [0.7, 0.5])], 1);
        let beside: Vec<_> = [(0.75, 0.45), (0.85, 0.55)].map(Some).into();
        assert_eq!(walk(&mut counter2, 1, 0, &beside), vec![]);
    }

    #[test]
    fn a_line_at_the_frames_edge_counts_tracks_that_leave_the_view_before_the_hold() {
        // A vertical line 2 % from the right edge, ending on the edges: cars leave the view right
        // after crossing it, seen across it in one frame only.
        let mut counter = counter(vec![], vec![line("l", [0.98, 0.0], [0.98, 1.0])], 3);
        let mut events = Vec::new();
        for (i, x) in [0.9, 0.94, 0.97, 0.995].into_iter().enumerate() {
            let t = i as i64 * FRAME;
            counter.start_frame(t);
            counter.observe(1, (2, "car"), t, standing_at(x, 0.8), None, &mut events);
        }
        assert!(events.is_empty(), "still held: {events:?}");
        counter.end_track(1, &mut events);
        // Right of a line drawn downwards is the frame's left: moving right is backward ("north").
        assert_eq!(described(&events, 0), vec![crossed("north", 3)]);
        // A line touching the left edge: the anchor of a box cut by the edge still crosses it.
        let mut counter = self::counter(vec![], vec![line("l", [0.0, 0.5], [0.2, 0.5])], 2);
        let path: Vec<_> = [(0.03, 0.4), (0.03, 0.55), (0.04, 0.7)].map(Some).into();
        assert_eq!(walk(&mut counter, 1, 0, &path), vec![crossed("south", 1)]);
    }

    #[test]
    fn a_track_lost_and_found_again_across_the_line_counts_once() {
        let mut counter = counter(vec![], vec![line("l", [0.1, 0.5], [0.9, 0.5])], 2);
        // Seen above the line, then occluded for five frames, found below it.
        let path = [
            Some((0.5, 0.3)),
            Some((0.5, 0.4)),
            None,
            None,
            None,
            None,
            None,
            Some((0.5, 0.7)),
            None,
            Some((0.5, 0.8)),
        ];
        assert_eq!(walk(&mut counter, 1, 0, &path), vec![crossed("south", 7)]);
        // Missed frames do not break a hold, nor does the track count again when found again.
        let path = [Some((0.5, 0.85)), None, Some((0.5, 0.9))];
        assert_eq!(walk(&mut counter, 1, 10 * FRAME, &path), vec![]);
    }

    #[test]
    fn a_direction_counts_again_only_after_the_track_crossed_back() {
        let mut counter = counter(vec![], vec![line("l", [0.3, 0.5], [0.7, 0.5])], 1);
        // Down through, up around the end, down through again: once. Then up through and down
        // through: both count.
        let path: Vec<_> = [
            (0.5, 0.4),
            (0.5, 0.6),
            (0.8, 0.6),
            (0.8, 0.4),
            (0.5, 0.4),
            (0.5, 0.6),
            (0.5, 0.4),
            (0.5, 0.6),
        ]
        .map(Some)
        .into();
        assert_eq!(
            walk(&mut counter, 1, 0, &path),
            vec![crossed("south", 1), crossed("north", 6), crossed("south", 7)]
        );
    }

    #[test]
    fn a_track_is_placed_by_its_first_detection_not_where_it_was_confirmed() {
        let mut counter = counter(vec![], vec![line("l", [0.1, 0.5], [0.9, 0.5])], 2);
        let mut events = Vec::new();
        counter.start_frame(2 * FRAME);
        let first = Some((0, standing_at(0.5, 0.4)));
        counter.observe(1, (0, "person"), 2 * FRAME, standing_at(0.5, 0.6), first, &mut events);
        counter.start_frame(3 * FRAME);
        counter.observe(1, (0, "person"), 3 * FRAME, standing_at(0.5, 0.62), None, &mut events);
        assert_eq!(described(&events, 0), vec![crossed("south", 2)]);
    }

    #[test]
    fn zones_report_entries_exits_with_dwell_and_occupancy_per_interval_for_their_classes() {
        let square = vec![[0.2, 0.2], [0.6, 0.2], [0.6, 0.6], [0.2, 0.6]];
        let mut counter = counter(vec![zone("queue", square, &["car"])], vec![], 2);
        let t0 = 120 * S;
        let mut events = Vec::new();
        // Car 1 drives in at frame 1 and stays; car 2 enters at frame 2 and leaves at frame 6;
        // a person walks through without counting (not a class of the zone).
        let cars: [(u64, [Option<f32>; 9]); 2] = [
            (
                1,
                [
                    Some(0.1),
                    Some(0.3),
                    Some(0.4),
                    Some(0.4),
                    Some(0.4),
                    Some(0.4),
                    Some(0.4),
                    Some(0.4),
                    Some(0.4),
                ],
            ),
            (
                2,
                [
                    None,
                    None,
                    Some(0.3),
                    Some(0.4),
                    Some(0.5),
                    Some(0.55),
                    Some(0.7),
                    Some(0.8),
                    None,
                ],
            ),
        ];
        for frame in 0..9 {
            let t = t0 + frame * FRAME;
            assert!(counter.start_frame(t).is_none());
            for (id, ys) in &cars {
                if let Some(y) = ys[frame as usize] {
                    counter.observe(*id, (2, "car"), t, standing_at(0.4, y), None, &mut events);
                }
            }
            counter.observe(9, (0, "person"), t, standing_at(0.4, 0.3), None, &mut events);
        }
        let seen: Vec<_> = described(&events, t0).into_iter().map(|e| (e.0, e.3)).collect();
        assert_eq!(
            seen,
            vec![("entered".into(), 1), ("entered".into(), 2), ("left".into(), 6)]
        );
        assert!((events[2].dwell_seconds - 0.8).abs() < 1e-9, "{:?}", events[2]);
        // The next interval's first frame reports this one, aligned to the minute.
        let report = counter.start_frame(180 * S).expect("the minute is over");
        let time = |t: Option<prost_types::Timestamp>| crate::clock::timestamp_nanos(t.unwrap());
        assert_eq!((time(report.from_time), time(report.to_time)), (t0, 180 * S));
        let counts: Vec<_> = report
            .counts
            .iter()
            .map(|c| (c.kind(), c.class_name.as_str(), c.count))
            .collect();
        assert_eq!(
            counts,
            vec![
                (pb::ZoneEventKind::Entered, "car", 2),
                (pb::ZoneEventKind::Left, "car", 1)
            ]
        );
        assert!((report.counts[1].dwell_seconds_sum - 0.8).abs() < 1e-9);
        let occupancy: Vec<_> = report
            .occupancy
            .iter()
            .map(|o| (o.zone_id.as_str(), o.now, o.max))
            .collect();
        assert_eq!(occupancy, vec![("queue", 1, 2)]);
        // A quiet minute is still reported, with the car still inside; then the camera stops
        // and the car leaves with it, dated at its last frame.
        let quiet = counter.start_frame(240 * S).expect("a quiet minute");
        assert!(quiet.counts.is_empty());
        assert_eq!(quiet.occupancy[0].now, 1);
        let mut events = Vec::new();
        let last = counter.finish(&mut events).expect("the part of the minute it ran");
        assert_eq!((time(last.from_time), time(last.to_time)), (240 * S, 240 * S));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind(), pb::ZoneEventKind::Left);
        assert!(
            (events[0].dwell_seconds - (121.6 - 120.2)).abs() < 1e-6,
            "{:?}",
            events[0]
        );
        assert_eq!(
            last.occupancy.iter().map(|o| (o.now, o.max)).collect::<Vec<_>>(),
            vec![(0, 1)]
        );
    }

    #[test]
    fn intervals_follow_on_skip_what_the_camera_missed_and_survive_its_clock_going_back() {
        let mut counter = counter(vec![], vec![line("l", [0.1, 0.5], [0.9, 0.5])], 2);
        let time = |t: Option<prost_types::Timestamp>| crate::clock::timestamp_nanos(t.unwrap()) / S;
        let span = |r: pb::CountReport| (time(r.from_time), time(r.to_time));
        assert!(counter.start_frame(70 * S).is_none());
        assert_eq!(counter.start_frame(125 * S).map(span), Some((70, 120)));
        // Nothing from 125 s to 400 s: the interval with a frame is reported, none in between.
        assert_eq!(counter.start_frame(400 * S).map(span), Some((120, 180)));
        assert_eq!(counter.start_frame(410 * S), None);
        // The clock goes back: the interval so far is reported up to the last frame.
        assert_eq!(counter.start_frame(100 * S).map(span), Some((400, 410)));
        // A camera without zones or lines reports nothing.
        let mut none = self::counter(vec![], vec![], 2);
        assert!(none.start_frame(0).is_none() && none.start_frame(1000 * S).is_none());
        assert!(none.finish(&mut Vec::new()).is_none());
    }

    #[test]
    fn geometry_on_the_edges() {
        let square = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];
        assert!(inside(&square, [0.5, 0.5]));
        assert!(!inside(&square, [1.5, 0.5]));
        // A concave zone: the notch is outside.
        let u = [
            [0.0, 0.0],
            [0.3, 0.0],
            [0.3, 0.7],
            [0.6, 0.7],
            [0.6, 0.0],
            [0.9, 0.0],
            [0.9, 1.0],
            [0.0, 1.0],
        ];
        assert!(!inside(&u, [0.45, 0.3]) && inside(&u, [0.45, 0.9]) && inside(&u, [0.1, 0.3]));
        assert_eq!(side([0.0, 0.5], [1.0, 0.5], [0.5, 0.7]), Some(Side::Right));
        assert_eq!(side([0.0, 0.5], [1.0, 0.5], [0.5, 0.5]), None);
        // Through an end point counts as through the segment.
        assert!(passes_through([0.3, 0.4], [0.3, 0.6], [0.3, 0.5], [0.7, 0.5]));
        assert!(!passes_through([0.2, 0.4], [0.2, 0.6], [0.3, 0.5], [0.7, 0.5]));
    }
}
