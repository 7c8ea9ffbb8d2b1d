//! How a model set does while it runs, and the judgement of the watch period after a switch:
//! the workers record every frame into the health of the set that analysed it, and the node
//! compares the new set's record with the old one's until the watch period ends, rolling back
//! when the new set fails, is slow, or stops finding what the old one found.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::WatchConfig;

/// Latencies kept per set, the newest, for a median.
const LATENCIES_KEPT: usize = 256;

/// What one model set did, frame by frame, since it started running.
#[derive(Debug, Default)]
pub struct SetHealth {
    frames: AtomicU64,
    errors: AtomicU64,
    objects: AtomicU64,
    latencies: Mutex<VecDeque<Duration>>,
}

/// A moment's copy of a [`SetHealth`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthSnapshot {
    pub frames: u64,
    pub errors: u64,
    pub objects: u64,
    pub median_latency: Duration,
}

impl SetHealth {
    /// A frame analysed: `objects` found in it, in `latency` ([`crate::metrics::Timings::models`]).
    pub fn record_frame(&self, objects: usize, latency: Duration) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.objects.fetch_add(objects as u64, Ordering::Relaxed);
        if let Ok(mut latencies) = self.latencies.lock() {
            if latencies.len() == LATENCIES_KEPT {
                latencies.pop_front();
            }
            latencies.push_back(latency);
        }
    }

    /// A frame whose analysis failed.
    pub fn record_failure(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let median_latency = self
            .latencies
            .lock()
            .map(|latencies| {
                let mut sorted = Vec::from(latencies.clone());
                sorted.sort_unstable();
                sorted.get(sorted.len() / 2).copied().unwrap_or_default()
            })
            .unwrap_or_default();
        HealthSnapshot {
            frames: self.frames.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            objects: self.objects.load(Ordering::Relaxed),
            median_latency,
        }
    }
}

/// Why the new set must go, if it must: judged once it has analysed `min_frames`, against the
/// old set's record before the switch.
pub fn judge(limits: &WatchConfig, new: &HealthSnapshot, old: &HealthSnapshot) -> Option<String> {
    if new.frames < limits.min_frames {
        return None;
    }
    let share = |part: u64, whole: u64| part as f64 / whole.max(1) as f64;
    if share(new.errors, new.frames) > limits.max_error_ratio {
        return Some(format!(
            "{} of {} frames failed (more than {})",
            new.errors, new.frames, limits.max_error_ratio
        ));
    }
    let budget_ms = limits.latency_budget_ms;
    if new.median_latency.as_secs_f64() * 1e3 > budget_ms {
        return Some(format!(
            "median {:.1} ms per frame over {} frames, over the budget of {budget_ms} ms",
            new.median_latency.as_secs_f64() * 1e3,
            new.frames
        ));
    }
    // Saturating: a snapshot reads its counters one by one while workers add to them.
    let old_rate = share(old.objects, old.frames.saturating_sub(old.errors));
    let new_rate = share(new.objects, new.frames.saturating_sub(new.errors));
    if old.frames >= limits.min_frames && old_rate > 0.0 && new_rate < limits.min_detection_ratio * old_rate {
        return Some(format!(
            "{new_rate:.2} objects per frame where the set before found {old_rate:.2} (less than {})",
            limits.min_detection_ratio
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(frames: u64, errors: u64, objects: u64, ms: u64) -> HealthSnapshot {
        HealthSnapshot {
            frames,
            errors,
            objects,
            median_latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_new_set_is_judged_on_errors_latency_and_detection_rate_once_it_has_run_enough() {
        let limits = WatchConfig {
            seconds: 60.0,
            min_frames: 10,
            max_error_ratio: 0.1,
            latency_budget_ms: 100.0,
            min_detection_ratio: 0.25,
        };
        let old = snapshot(100, 0, 300, 50);
        assert_eq!(judge(&limits, &snapshot(9, 9, 0, 500), &old), None, "too early to tell");
        assert_eq!(judge(&limits, &snapshot(20, 1, 50, 60), &old), None, "healthy");
        assert!(
            judge(&limits, &snapshot(20, 3, 50, 60), &old)
                .unwrap()
                .contains("3 of 20 frames failed")
        );
        assert!(
            judge(&limits, &snapshot(20, 0, 50, 150), &old)
                .unwrap()
                .contains("over the budget")
        );
        assert!(
            judge(&limits, &snapshot(20, 0, 10, 60), &old)
                .unwrap()
                .contains("0.50 objects per frame")
        );
        // An empty scene before the switch is no reference.
        assert_eq!(judge(&limits, &snapshot(20, 0, 0, 60), &snapshot(100, 0, 0, 50)), None);
    }

    #[test]
    fn the_health_record_counts_frames_errors_objects_and_the_median_latency() {
        let health = SetHealth::default();
        for ms in [30, 10, 20] {
            health.record_frame(2, Duration::from_millis(ms));
        }
        health.record_failure();
        assert_eq!(health.snapshot(), snapshot(4, 1, 6, 20));
    }
}
