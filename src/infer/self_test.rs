//! A new model set is tried on this node's own recent frames before it may replace the running
//! one: the workers keep a few frames they analysed (with what the running set found there and
//! how long it took), and the new set must analyse the same frames without an error or a
//! non-finite output, within the latency budget, and find a fair share of the objects the
//! running set found. Real frames catch what a blank frame cannot: a manifest with the wrong
//! normalisation or channel order runs, but finds nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::analyzer::{Analyzer, Detection};
use crate::config::SelfTestConfig;
use crate::error::{Error, Result};

/// Frames kept for the next self-test, across all cameras.
const KEPT_FRAMES: usize = 12;
/// Of one camera, at most this many, so that one busy camera does not crowd out the rest.
const KEPT_PER_CAMERA: usize = 3;
/// A camera's frames are kept at most this often, so that they span some seconds of scene.
const KEEP_INTERVAL: Duration = Duration::from_secs(2);

/// A frame the running set analysed.
#[derive(Clone)]
pub struct Sample {
    pub camera: String,
    pub image: Arc<image::RgbImage>,
    /// What the running set found in it.
    pub found: Vec<Found>,
    /// How long the running set took for it (detector and embedder).
    pub latency: Duration,
    taken: Instant,
}

/// An object the running set found.
#[derive(Clone, Debug)]
pub struct Found {
    pub class_name: String,
    /// As [`Detection::bbox`].
    pub bbox: [f32; 4],
    pub embedding: Option<Vec<f32>>,
}

/// The frames kept for self-tests; the workers offer, a model switch reads. During a shadow run
/// ([`super::shadow`]) every frame offered is also passed on, while the reader keeps up.
#[derive(Default)]
pub struct RecentFrames {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    samples: VecDeque<Sample>,
    tap: Option<mpsc::SyncSender<Sample>>,
}

impl RecentFrames {
    /// From now on, every frame offered while the receiver has room (one frame) is sent to it:
    /// frames the reader cannot keep up with are not. Until [`untap`](Self::untap).
    pub fn tap(&self) -> mpsc::Receiver<Sample> {
        let (sender, receiver) = mpsc::sync_channel(1);
        if let Ok(mut kept) = self.kept.lock() {
            kept.tap = Some(sender);
        }
        receiver
    }

    pub fn untap(&self) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.tap = None;
        }
    }

    /// Keeps a copy of the frame if its camera has none from the last [`KEEP_INTERVAL`], and
    /// passes one to a tap with room; cheap otherwise (one uncontended lock).
    pub fn offer(
        &self,
        camera: &str,
        image: &image::RgbImage,
        found: &[Detection],
        class_names: &[String],
        latency: Duration,
        now: Instant,
    ) {
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        let keep = kept.wants(camera, now);
        if !keep && kept.tap.is_none() {
            return;
        }
        let found = found
            .iter()
            .map(|d| Found {
                class_name: class_names.get(d.class_id as usize).cloned().unwrap_or_default(),
                bbox: d.bbox,
                embedding: d.embedding.clone(),
            })
            .collect();
        let sample = Sample {
            camera: camera.to_string(),
            image: Arc::new(image.clone()),
            found,
            latency,
            taken: now,
        };
        if let Some(tap) = &kept.tap
            && let Err(mpsc::TrySendError::Disconnected(_)) = tap.try_send(sample.clone())
        {
            kept.tap = None;
        }
        if keep {
            kept.samples.push_back(sample);
        }
    }

    /// The frames kept now (the images are shared, not copied).
    pub fn snapshot(&self) -> Vec<Sample> {
        self.kept
            .lock()
            .map(|kept| kept.samples.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// After a switch: what the old set found is no reference for the next one.
    pub fn clear(&self) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.samples.clear();
        }
    }
}

impl Kept {
    /// Whether a frame of `camera` at `now` is to be kept; if so, room is made for it.
    fn wants(&mut self, camera: &str, now: Instant) -> bool {
        let mut kept_of_camera = 0;
        for sample in self.samples.iter().filter(|s| s.camera == camera) {
            if now.saturating_duration_since(sample.taken) < KEEP_INTERVAL {
                return false;
            }
            kept_of_camera += 1;
        }
        if kept_of_camera >= KEPT_PER_CAMERA
            && let Some(oldest) = self.samples.iter().position(|s| s.camera == camera)
        {
            self.samples.remove(oldest);
        }
        if self.samples.len() >= KEPT_FRAMES {
            self.samples.pop_front();
        }
        true
    }
}

/// What the self-test measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelfTestReport {
    pub frames: usize,
    pub cameras: usize,
    /// Objects of the classes both detectors know: found by the running set, and by the new one.
    pub objects_running: usize,
    pub objects_new: usize,
    pub median_latency_running: Duration,
    pub median_latency_new: Duration,
}

impl std::fmt::Display for SelfTestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} recent frames of {} cameras: {} objects found where the running set found {}; median {:.1} ms per \
             frame against {:.1} ms",
            self.frames,
            self.cameras,
            self.objects_new,
            self.objects_running,
            self.median_latency_new.as_secs_f64() * 1e3,
            self.median_latency_running.as_secs_f64() * 1e3
        )
    }
}

/// Runs `analyzer` (the new set) on the `samples`; refuses the set, with the figures, when it
/// fails one of the checks of `limits`. Without samples (no camera has delivered a frame yet)
/// there is nothing to judge by and the report says 0 frames.
pub fn self_test(
    analyzer: &mut Analyzer,
    new_class_names: &[String],
    samples: &[Sample],
    limits: &SelfTestConfig,
) -> Result<SelfTestReport> {
    let refuse = |message: String| Error::SelfTest(message);
    let mut latencies_new = Vec::with_capacity(samples.len());
    let mut report = SelfTestReport {
        frames: samples.len(),
        ..SelfTestReport::default()
    };
    let mut cameras: Vec<&str> = samples.iter().map(|s| s.camera.as_str()).collect();
    cameras.sort_unstable();
    cameras.dedup();
    report.cameras = cameras.len();
    analyzer.set_strict(true);
    for sample in samples {
        let (detections, timings) = analyzer
            .analyze(&sample.image)
            .map_err(|e| refuse(format!("on a recent frame of camera {}: {e}", sample.camera)))?;
        latencies_new.push(timings.models());
        let known = |name: &String| new_class_names.contains(name);
        report.objects_running += sample.found.iter().filter(|f| known(&f.class_name)).count();
        report.objects_new += detections.len();
    }
    analyzer.set_strict(false);
    report.median_latency_new = median(&mut latencies_new);
    report.median_latency_running = median(&mut samples.iter().map(|s| s.latency).collect::<Vec<_>>());
    if report.median_latency_new.as_secs_f64() * 1e3 > limits.latency_budget_ms {
        return Err(refuse(format!(
            "{report}: over the latency budget of {} ms",
            limits.latency_budget_ms
        )));
    }
    if report.objects_running >= limits.min_reference_objects
        && (report.objects_new as f64) < limits.min_detection_ratio * report.objects_running as f64
    {
        return Err(refuse(format!(
            "{report}: fewer than {} of them",
            limits.min_detection_ratio
        )));
    }
    Ok(report)
}

pub(super) fn median(values: &mut [Duration]) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(class_id: u32) -> Detection {
        Detection {
            class_id,
            score: 0.9,
            bbox: [0.0, 0.0, 1.0, 1.0],
            embedding: None,
            sharpness: 0.0,
        }
    }

    #[test]
    fn frames_are_kept_spread_over_time_and_cameras() {
        let recent = RecentFrames::default();
        let image = image::RgbImage::new(4, 4);
        let names = ["person".to_string(), "car".to_string()];
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let ms = Duration::from_millis(50);
        recent.offer("a", &image, &[detection(1), detection(0)], &names, ms, at(0));
        // Within the interval: not kept.
        recent.offer("a", &image, &[], &names, ms, at(1));
        assert_eq!(recent.snapshot().len(), 1);
        let names: Vec<_> = recent.snapshot()[0]
            .found
            .iter()
            .map(|f| f.class_name.clone())
            .collect();
        assert_eq!(names, ["car", "person"]);
        for s in 1..10 {
            recent.offer("a", &image, &[], &names, ms, at(2 * s));
        }
        let kept = recent.snapshot();
        assert_eq!(kept.len(), KEPT_PER_CAMERA, "one camera keeps its newest few");
        for s in 0..20 {
            recent.offer(&format!("cam{s}"), &image, &[], &names, ms, at(100));
        }
        assert_eq!(recent.snapshot().len(), KEPT_FRAMES);
        recent.clear();
        assert!(recent.snapshot().is_empty());
    }
}
