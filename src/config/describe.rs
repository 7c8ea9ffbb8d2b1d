//! The `[describe]` section: how detections become descriptors. The settings of the describe
//! stage are plain data kept here, with the rest of the file, so that the configuration depends
//! on no stage (every stage reads its section; [`crate::describe`] re-exports these where its
//! code uses them).

use std::fmt;

use serde::Deserialize;

use super::check_field;
use crate::pb::EmbeddingCodec;

/// How detections become descriptors: tracking, what is sent when, and how embeddings are coded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DescribeConfig {
    /// Wire encoding of appearance embeddings: "f32", "f16", "int8", "pca-int8" or "binary".
    pub codec: CodecKind,
    /// pca-int8: dimensions kept; binary: bits (default 128 for both). Must be offered by the
    /// embedder's projection. Not used by the other codecs.
    pub codec_dimension: Option<usize>,
    /// Also send every detection of every frame with its embedding (`FrameDescriptor.objects`):
    /// for evaluation and debugging, at many times the bandwidth.
    pub send_detections: bool,
    pub tracker: TrackerConfig,
    pub emission: EmissionConfig,
    pub counting: super::CountingSettings,
}

impl Default for DescribeConfig {
    fn default() -> Self {
        DescribeConfig {
            codec: CodecKind::PcaInt8,
            codec_dimension: None,
            send_detections: false,
            tracker: TrackerConfig::default(),
            emission: EmissionConfig::default(),
            counting: super::CountingSettings::default(),
        }
    }
}

impl DescribeConfig {
    /// `codec_dimension`, or the default of the codec: the sizes chosen from the measurements of
    /// `make eval-descriptors` (README, "Descriptors").
    pub fn effective_codec_dimension(&self) -> Option<usize> {
        if self.codec.is_projected() {
            Some(self.codec_dimension.unwrap_or(128))
        } else {
            self.codec_dimension
        }
    }
}

/// The codec a node is configured to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodecKind {
    F32,
    F16,
    Int8,
    PcaInt8,
    Binary,
}

impl CodecKind {
    pub fn name(self) -> &'static str {
        match self {
            CodecKind::F32 => "f32",
            CodecKind::F16 => "f16",
            CodecKind::Int8 => "int8",
            CodecKind::PcaInt8 => "pca-int8",
            CodecKind::Binary => "binary",
        }
    }

    /// Whether the codec goes through a projection (`describe::projection::Projection`), and so
    /// needs one and a dimension.
    pub fn is_projected(self) -> bool {
        matches!(self, CodecKind::PcaInt8 | CodecKind::Binary)
    }

    pub fn codec(self) -> EmbeddingCodec {
        match self {
            CodecKind::F32 => EmbeddingCodec::F32,
            CodecKind::F16 => EmbeddingCodec::F16,
            CodecKind::Int8 => EmbeddingCodec::Int8,
            CodecKind::PcaInt8 => EmbeddingCodec::PcaInt8,
            CodecKind::Binary => EmbeddingCodec::Binary,
        }
    }
}

impl fmt::Display for CodecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The tracker's settings (`[describe.tracker]`); see `describe::track`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Detections scoring at least this are matched first, by IoU and appearance, and may start
    /// tracks.
    pub high_threshold: f32,
    /// Detections scoring below this are ignored; those between it and `high_threshold` can only
    /// extend confirmed tracks.
    pub low_threshold: f32,
    /// Least IoU between a track's predicted box and a confident detection for them to match.
    pub high_min_iou: f32,
    /// Least IoU for a weak detection, stricter since a weak detection is more often noise.
    pub low_min_iou: f32,
    /// Least cosine similarity between a track's appearance and a confident detection's embedding,
    /// when both have one, for them to match.
    pub appearance_min_similarity: f32,
    /// Weight of a track's appearance so far against a new embedding in its moving average (0..1);
    /// higher forgets more slowly, so a brief occlusion barely changes what the track looks like.
    pub appearance_momentum: f32,
    /// Consecutive matches, the first detection included, before a track is confirmed and reported.
    pub min_hits: u32,
    /// How long a confirmed track that is not seen is kept, predicted, before it is ended.
    pub max_age_seconds: f64,
    /// Most trajectory points kept per track; older stretches are simplified, then thinned, to fit.
    pub max_trajectory_points: usize,
    /// Trajectory points closer than this to the simplified path are dropped (Ramer-Douglas-Peucker).
    pub trajectory_tolerance_pixels: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            high_threshold: 0.5,
            low_threshold: 0.1,
            // ByteTrack's matching thresholds: IoU distance 0.8 and 0.5.
            high_min_iou: 0.2,
            low_min_iou: 0.5,
            appearance_min_similarity: 0.3,
            appearance_momentum: 0.9,
            min_hits: 2,
            max_age_seconds: 1.5,
            max_trajectory_points: 64,
            trajectory_tolerance_pixels: 2.0,
        }
    }
}

impl TrackerConfig {
    /// Checks the values; the message names the field. The tracker does not panic on values that
    /// fail this, but it does not track sensibly with them either.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0 <= self.low_threshold && self.low_threshold <= self.high_threshold && self.high_threshold <= 1.0) {
            return Err("need 0 <= low_threshold <= high_threshold <= 1".into());
        }
        let iou_ok = |iou: f32| iou > 0.0 && iou <= 1.0;
        check_field(
            iou_ok(self.high_min_iou),
            "high_min_iou",
            self.high_min_iou,
            "above 0, at most 1",
        )?;
        check_field(
            iou_ok(self.low_min_iou),
            "low_min_iou",
            self.low_min_iou,
            "above 0, at most 1",
        )?;
        check_field(
            (-1.0..=1.0).contains(&self.appearance_min_similarity),
            "appearance_min_similarity",
            self.appearance_min_similarity,
            "-1..=1",
        )?;
        check_field(
            (0.0..1.0).contains(&self.appearance_momentum),
            "appearance_momentum",
            self.appearance_momentum,
            "0..1",
        )?;
        if self.min_hits == 0 {
            return Err("min_hits must be at least 1".into());
        }
        check_field(
            self.max_age_seconds > 0.0 && self.max_age_seconds <= 3600.0,
            "max_age_seconds",
            self.max_age_seconds,
            "above 0, at most 3600",
        )?;
        if self.max_trajectory_points < 2 {
            return Err("max_trajectory_points must be at least 2".into());
        }
        if !(self.trajectory_tolerance_pixels >= 0.0 && self.trajectory_tolerance_pixels.is_finite()) {
            return Err("trajectory_tolerance_pixels must be finite and not negative".into());
        }
        Ok(())
    }
}

/// The emission policy's settings (`[describe.emission]`); see `describe::emit`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmissionConfig {
    /// A view is clearly better, and described, when its quality is at least this many times that
    /// of every view of the track described before.
    pub better_view_gain: f32,
    /// The appearance changed, and is described again, when the cosine similarity between the
    /// track's recent appearance and its last descriptor falls below this.
    pub appearance_change_similarity: f32,
    /// Least time between two descriptors of one track, after the first.
    pub min_descriptor_interval_seconds: f64,
    /// Most descriptors per track while it lasts, the first included (0: no limit). The summary
    /// at the end is always sent.
    pub max_descriptors_per_track: u32,
}

impl Default for EmissionConfig {
    fn default() -> Self {
        EmissionConfig {
            better_view_gain: 1.5,
            appearance_change_similarity: 0.7,
            min_descriptor_interval_seconds: 2.0,
            max_descriptors_per_track: 4,
        }
    }
}

impl EmissionConfig {
    pub fn validate(&self) -> Result<(), String> {
        check_field(
            self.better_view_gain >= 1.0 && self.better_view_gain.is_finite(),
            "better_view_gain",
            self.better_view_gain,
            "at least 1",
        )?;
        check_field(
            (-1.0..=1.0).contains(&self.appearance_change_similarity),
            "appearance_change_similarity",
            self.appearance_change_similarity,
            "-1..=1",
        )?;
        let interval = self.min_descriptor_interval_seconds;
        check_field(
            interval >= 0.0 && interval.is_finite(),
            "min_descriptor_interval_seconds",
            interval,
            "a finite value >= 0",
        )
    }
}
