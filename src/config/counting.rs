//! Zones and counting lines of a camera (`[[cameras.zones]]`, `[[cameras.lines]]`) and how the
//! describe stage counts with them (`[describe.counting]`). Plain data and its checks; the
//! counting itself is [`crate::describe::count`].

use serde::{Deserialize, Serialize};

use super::{check_field, is_valid_camera_id};
use crate::error::quoted;
use crate::pb;

/// Most corners a zone may have: a lane or a crossing needs a handful.
pub const MAX_ZONE_CORNERS: usize = 64;
/// Most zones and lines together on one camera: each costs a little per track and frame.
pub const MAX_PLACES_PER_CAMERA: usize = 32;

/// How the describe stage turns zones and lines into events and counts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountingSettings {
    /// Length of the intervals counts are reported for, aligned to multiples of it in Unix time.
    pub interval_seconds: f64,
    /// Analysed frames a track's anchor must be seen on its new side of a line (or of a zone's
    /// edge) before the change is taken: 1 takes it at once.
    pub hold_frames: u32,
    /// And the time from the first of those frames to the last, at least.
    pub hold_seconds: f64,
}

impl Default for CountingSettings {
    fn default() -> Self {
        CountingSettings {
            interval_seconds: 60.0,
            hold_frames: 2,
            hold_seconds: 0.0,
        }
    }
}

impl CountingSettings {
    pub fn validate(&self) -> Result<(), String> {
        check_field(
            self.interval_seconds >= 1.0 && self.interval_seconds <= 86_400.0,
            "describe.counting.interval_seconds",
            self.interval_seconds,
            "1..=86400",
        )?;
        check_field(
            (1..=100).contains(&self.hold_frames),
            "describe.counting.hold_frames",
            self.hold_frames,
            "1..=100",
        )?;
        check_field(
            self.hold_seconds >= 0.0 && self.hold_seconds <= 60.0,
            "describe.counting.hold_seconds",
            self.hold_seconds,
            "0..=60",
        )
    }
}

/// A camera's zones and lines, as its configuration has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountingPlaces {
    pub zones: Vec<ZoneConfig>,
    pub lines: Vec<LineConfig>,
}

impl CountingPlaces {
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty() && self.lines.is_empty()
    }
}

/// The point of a track's box that zones and lines follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Anchor {
    /// Where a vehicle or a person touches the road.
    #[default]
    BottomCentre,
    Centre,
    TopCentre,
}

impl Anchor {
    /// The anchor of a box `[x_min, y_min, x_max, y_max]`.
    pub fn of(self, bbox: [f32; 4]) -> [f32; 2] {
        let x = (bbox[0] + bbox[2]) / 2.0;
        let y = match self {
            Anchor::BottomCentre => bbox[3],
            Anchor::Centre => (bbox[1] + bbox[3]) / 2.0,
            Anchor::TopCentre => bbox[1],
        };
        [x, y]
    }
}

/// A polygon in normalised frame coordinates (x right, y down, 0..1).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub id: String,
    /// Corners in order, `[[x, y], ...]`.
    pub polygon: Vec<[f32; 2]>,
    /// Only tracks of these classes (detector class names); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(default)]
    pub anchor: Anchor,
}

/// A directed segment: crossing it from its left-hand side to its right-hand side, as seen on
/// screen walking from `from` to `to`, is `forward`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub id: String,
    pub from: [f32; 2],
    pub to: [f32; 2],
    /// Name of the forward direction in events and counts (e.g. "northbound").
    #[serde(default = "default_forward")]
    pub forward: String,
    #[serde(default = "default_backward")]
    pub backward: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(default)]
    pub anchor: Anchor,
}

fn default_forward() -> String {
    "forward".into()
}

fn default_backward() -> String {
    "backward".into()
}

/// Checks a camera's zones and lines; the message names the place and what is wrong with it.
pub fn validate_places(zones: &[ZoneConfig], lines: &[LineConfig]) -> Result<(), String> {
    if zones.len() + lines.len() > MAX_PLACES_PER_CAMERA {
        return Err(format!(
            "{} zones and lines (at most {MAX_PLACES_PER_CAMERA} together)",
            zones.len() + lines.len()
        ));
    }
    let mut ids = std::collections::HashSet::new();
    let ids_of_zones = zones.iter().map(|z| (&z.id, &z.classes, "zone"));
    let ids_of_lines = lines.iter().map(|l| (&l.id, &l.classes, "line"));
    for (id, classes, kind) in ids_of_zones.chain(ids_of_lines) {
        if !is_valid_camera_id(id) {
            return Err(format!(
                "{kind} id {}: use 1 to 64 letters, digits, '-', '_' or '.'",
                quoted(id)
            ));
        }
        if !ids.insert(id.as_str()) {
            return Err(format!(
                "{kind} id {}: used twice (zones and lines share ids)",
                quoted(id)
            ));
        }
        if let Some(bad) = classes.iter().find(|c| c.is_empty() || c.len() > 64) {
            return Err(format!(
                "{kind} {}: class name {} is empty or too long",
                quoted(id),
                quoted(bad)
            ));
        }
    }
    for zone in zones {
        let at = format!("zone {}", quoted(&zone.id));
        if !(3..=MAX_ZONE_CORNERS).contains(&zone.polygon.len()) {
            return Err(format!(
                "{at}: {} corners (expected 3..={MAX_ZONE_CORNERS})",
                zone.polygon.len()
            ));
        }
        check_points(&at, &zone.polygon)?;
        if polygon_area(&zone.polygon).abs() < 1e-6 {
            return Err(format!("{at}: the polygon encloses no area"));
        }
    }
    for line in lines {
        let at = format!("line {}", quoted(&line.id));
        check_points(&at, &[line.from, line.to])?;
        let length = (line.to[0] - line.from[0]).hypot(line.to[1] - line.from[1]);
        if length < 1e-3 {
            return Err(format!("{at}: from and to are the same point"));
        }
        for name in [&line.forward, &line.backward] {
            if !is_valid_camera_id(name) {
                return Err(format!(
                    "{at}: direction name {}: use 1 to 64 letters, digits, '-', '_' or '.'",
                    quoted(name)
                ));
            }
        }
        if line.forward == line.backward {
            return Err(format!("{at}: forward and backward have the same name"));
        }
    }
    Ok(())
}

fn check_points(at: &str, points: &[[f32; 2]]) -> Result<(), String> {
    match points.iter().find(|p| !p.iter().all(|c| (0.0..=1.0).contains(c))) {
        Some(p) => Err(format!(
            "{at}: point [{}, {}] is outside the frame (coordinates are 0..=1)",
            p[0], p[1]
        )),
        None => Ok(()),
    }
}

/// Signed area (shoelace); its sign is the winding, which nothing here depends on.
fn polygon_area(points: &[[f32; 2]]) -> f32 {
    let n = points.len();
    (0..n)
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum::<f32>()
        / 2.0
}

// The same places over the admin API: unset fields take the config file's defaults, and the
// result is checked as the config file's are (`CameraConfig::validate`).

impl Anchor {
    fn from_message(anchor: pb::Anchor) -> Anchor {
        match anchor {
            pb::Anchor::Unspecified | pb::Anchor::BottomCentre => Anchor::BottomCentre,
            pb::Anchor::Centre => Anchor::Centre,
            pb::Anchor::TopCentre => Anchor::TopCentre,
        }
    }

    fn message(self) -> pb::Anchor {
        match self {
            Anchor::BottomCentre => pb::Anchor::BottomCentre,
            Anchor::Centre => pb::Anchor::Centre,
            Anchor::TopCentre => pb::Anchor::TopCentre,
        }
    }
}

fn point(p: [f32; 2]) -> pb::Point {
    pb::Point { x: p[0], y: p[1] }
}

impl ZoneConfig {
    pub fn from_message(zone: pb::Zone) -> ZoneConfig {
        ZoneConfig {
            anchor: Anchor::from_message(zone.anchor()),
            id: zone.zone_id,
            polygon: zone.polygon.iter().map(|p| [p.x, p.y]).collect(),
            classes: zone.class_names,
        }
    }

    pub fn message(&self) -> pb::Zone {
        pb::Zone {
            zone_id: self.id.clone(),
            polygon: self.polygon.iter().copied().map(point).collect(),
            class_names: self.classes.clone(),
            anchor: self.anchor.message() as i32,
        }
    }
}

impl LineConfig {
    /// Refused when an end is missing.
    pub fn from_message(line: pb::CountingLine) -> Result<LineConfig, String> {
        let end = |p: Option<pb::Point>, which: &str| {
            p.map(|p| [p.x, p.y])
                .ok_or_else(|| format!("line {}: {which} is missing", quoted(&line.line_id)))
        };
        let (from, to) = (end(line.from, "from")?, end(line.to, "to")?);
        let name = |name: &str, default: fn() -> String| {
            if name.is_empty() { default() } else { name.to_string() }
        };
        Ok(LineConfig {
            anchor: Anchor::from_message(line.anchor()),
            forward: name(&line.forward_name, default_forward),
            backward: name(&line.backward_name, default_backward),
            id: line.line_id,
            from,
            to,
            classes: line.class_names,
        })
    }

    pub fn message(&self) -> pb::CountingLine {
        pb::CountingLine {
            line_id: self.id.clone(),
            from: Some(point(self.from)),
            to: Some(point(self.to)),
            forward_name: self.forward.clone(),
            backward_name: self.backward.clone(),
            class_names: self.classes.clone(),
            anchor: self.anchor.message() as i32,
        }
    }
}

impl CountingPlaces {
    pub fn from_message(places: pb::CountingPlaces) -> Result<CountingPlaces, String> {
        Ok(CountingPlaces {
            zones: places.zones.into_iter().map(ZoneConfig::from_message).collect(),
            lines: places
                .lines
                .into_iter()
                .map(LineConfig::from_message)
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(id: &str, polygon: Vec<[f32; 2]>) -> ZoneConfig {
        ZoneConfig {
            id: id.into(),
            polygon,
            classes: vec![],
            anchor: Anchor::default(),
        }
    }

    fn line(id: &str, from: [f32; 2], to: [f32; 2]) -> LineConfig {
        LineConfig {
            id: id.into(),
            from,
            to,
            forward: default_forward(),
            backward: default_backward(),
            classes: vec![],
            anchor: Anchor::default(),
        }
    }

    #[test]
    fn places_are_refused_with_the_reason_and_the_place_named() {
        let square = vec![[0.1, 0.1], [0.5, 0.1], [0.5, 0.5], [0.1, 0.5]];
        let ok_line = line("l", [0.0, 0.5], [1.0, 0.5]);
        assert_eq!(
            validate_places(&[zone("z", square.clone())], std::slice::from_ref(&ok_line)),
            Ok(())
        );
        let cases: Vec<(Vec<ZoneConfig>, Vec<LineConfig>, &str)> = vec![
            (vec![zone("z", square[..2].to_vec())], vec![], "2 corners"),
            (
                vec![zone("z", vec![[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])],
                vec![],
                "no area",
            ),
            (
                vec![zone("z", vec![[0.1, 0.1], [1.2, 0.2], [0.3, 0.5]])],
                vec![],
                "outside the frame",
            ),
            (
                vec![zone("x", square.clone())],
                vec![line("x", [0.0, 0.5], [1.0, 0.5])],
                "used twice",
            ),
            (vec![], vec![line("l", [0.5, 0.5], [0.5, 0.5])], "same point"),
            (
                vec![],
                vec![line("bad id", [0.0, 0.5], [1.0, 0.5])],
                "line id \"bad id\"",
            ),
            (
                vec![],
                vec![LineConfig {
                    backward: "forward".into(),
                    ..ok_line.clone()
                }],
                "same name",
            ),
            (
                vec![],
                vec![LineConfig {
                    from: [f32::NAN, 0.0],
                    ..ok_line.clone()
                }],
                "outside the frame",
            ),
            (vec![], vec![ok_line.clone(); MAX_PLACES_PER_CAMERA + 1], "at most"),
        ];
        for (zones, lines, expected) in cases {
            let err = validate_places(&zones, &lines).unwrap_err();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
    }

    #[test]
    fn the_anchor_is_where_the_box_touches_the_ground_unless_configured() {
        let bbox = [0.2, 0.4, 0.4, 0.8];
        assert_eq!(Anchor::default().of(bbox), [0.3, 0.8]);
        assert_eq!(Anchor::Centre.of(bbox), [0.3, 0.6]);
        assert_eq!(Anchor::TopCentre.of(bbox), [0.3, 0.4]);
    }

    #[test]
    fn places_come_back_as_they_went_over_the_api() {
        let places = CountingPlaces {
            zones: vec![ZoneConfig {
                anchor: Anchor::Centre,
                classes: vec!["car".into()],
                ..zone("z", vec![[0.1, 0.1], [0.5, 0.1], [0.3, 0.4]])
            }],
            lines: vec![LineConfig {
                forward: "north".into(),
                ..line("l", [0.0, 0.5], [1.0, 0.5])
            }],
        };
        let message = pb::CountingPlaces {
            zones: places.zones.iter().map(ZoneConfig::message).collect(),
            lines: places.lines.iter().map(LineConfig::message).collect(),
        };
        assert_eq!(CountingPlaces::from_message(message.clone()), Ok(places));
        let mut no_end = message;
        no_end.lines[0].to = None;
        let err = CountingPlaces::from_message(no_end).unwrap_err();
        assert!(err.contains("\"l\": to is missing"), "{err}");
    }

    #[test]
    fn settings_outside_their_range_are_refused() {
        assert!(CountingSettings::default().validate().is_ok());
        for settings in [
            CountingSettings {
                interval_seconds: 0.5,
                ..Default::default()
            },
            CountingSettings {
                hold_frames: 0,
                ..Default::default()
            },
            CountingSettings {
                hold_seconds: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(settings.validate().is_err(), "{settings:?}");
        }
    }
}
