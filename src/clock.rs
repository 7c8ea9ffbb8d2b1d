//! Capture time: how a buffer's pipeline timestamp becomes wall-clock time.
//!
//! Reading the wall clock once per frame would stamp frames with *processing* time, which jitters
//! with load and jumps with NTP steps. Instead each pipeline run takes one wall-clock anchor when
//! its first frame arrives and stamps every later frame with `anchor + (running time - first
//! running time)`: spacing between frames is exactly the pipeline's, and times of one camera
//! never go backwards, even across reconnects and file loops ([`CaptureClock::stamp`] enforces it).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::pb::TimeSource;

/// The monotonic clock read by timing decisions (how long a camera's run lasted), so that tests
/// can set the time instead of sleeping through it. Any `Fn() -> Instant` is one; the node's is
/// `Instant::now`.
pub trait Monotonic {
    fn now(&self) -> Instant;
}

impl<F: Fn() -> Instant> Monotonic for F {
    fn now(&self) -> Instant {
        self()
    }
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub type UnixNanos = i64;

pub fn unix_nanos(t: SystemTime) -> UnixNanos {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

pub fn now_unix_nanos() -> UnixNanos {
    unix_nanos(SystemTime::now())
}

pub fn to_timestamp(nanos: UnixNanos) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

/// How far a sender's (camera NTP) time may be from the host's arrival time and still be used:
/// beyond jitter-buffer latency and ordinary clock error, it is a camera clock that is not set.
const MAX_SENDER_CLOCK_ERROR_NS: u64 = 10_000_000_000;

/// A shifted source is brought back to its own times by 1/SLEW_DIVISOR of each frame interval.
const SLEW_DIVISOR: i64 = 10;

/// Per-camera capture clock. Kept across pipeline runs so times stay monotonic.
#[derive(Debug)]
pub struct CaptureClock {
    source: TimeSource,
    /// (wall clock, running time) of the first frame of the current pipeline run.
    anchor: Option<(UnixNanos, Duration)>,
    /// The last capture time handed out.
    last: Option<UnixNanos>,
    /// The source's own time (before `shift`) of the last frame of this run.
    last_source: Option<UnixNanos>,
    /// How far the source's times are pushed forward to stay after `last`: non-zero after the
    /// source's clock fell behind the times already handed out (a wall-clock step, a camera
    /// whose NTP clock is behind the host's arrival stamps), then slewed back to zero.
    shift: i64,
    /// Counts restarts: times of one generation share one anchor.
    generation: u64,
}

impl CaptureClock {
    pub fn new(source: TimeSource) -> Self {
        CaptureClock {
            source,
            anchor: None,
            last: None,
            last_source: None,
            shift: 0,
            generation: 0,
        }
    }

    pub fn source(&self) -> TimeSource {
        self.source
    }

    /// A new pipeline run (reconnect, file loop) starts its running time afresh: re-anchor on
    /// its first frame.
    pub fn restart(&mut self) {
        self.generation += 1;
        self.anchor = None;
        self.last_source = None;
        // The new run's anchor is the wall clock now; an offset carried over would be added on
        // top of a correct time. `monotonic` shifts again if the new times are behind.
        self.shift = 0;
    }

    /// Capture time of a frame with the given running time; `wall_now` is read only for the
    /// first frame of a run.
    pub fn stamp(&mut self, running_time: Duration, wall_now: impl FnOnce() -> UnixNanos) -> UnixNanos {
        let (anchor_wall, anchor_running) = *self.anchor.get_or_insert_with(|| (wall_now(), running_time));
        let offset = running_time.saturating_sub(anchor_running);
        let t = anchor_wall.saturating_add(i64::try_from(offset.as_nanos()).unwrap_or(i64::MAX));
        self.monotonic(t)
    }

    /// Which anchor the clock is on: one per pipeline run, and per loop of a file.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The capture time `stamp` gives a frame of this running time (before keeping times
    /// monotonic), once the current generation is anchored; for other streams of the same run,
    /// such as the compressed frames the video ring keeps, which must carry the same times.
    pub fn capture_time_of(&self, running_time: Duration) -> Option<UnixNanos> {
        let (anchor_wall, anchor_running) = self.anchor?;
        let offset = i64::try_from(running_time.as_nanos()).ok()? - i64::try_from(anchor_running.as_nanos()).ok()?;
        Some(anchor_wall.saturating_add(offset).saturating_add(self.shift))
    }

    /// The capture time `stamp_exact` gives a sender's time now (shifted as the camera's times
    /// are), without moving the clock on: for the frames the video ring keeps.
    pub fn sender_time_of(&self, t: UnixNanos) -> UnixNanos {
        let slew = self
            .last_source
            .map_or(0, |previous| t.saturating_sub(previous).max(0) / SLEW_DIVISOR);
        t.saturating_add(self.shift.saturating_sub(slew).max(0))
    }

    /// A capture time given by the sender (camera NTP), kept monotonic with the others.
    pub fn stamp_exact(&mut self, t: UnixNanos) -> UnixNanos {
        self.monotonic(t)
    }

    /// Whether a sender's time is believable next to the host's clock when the frame arrived. A
    /// camera whose NTP is unset or wrong would otherwise shift the camera's times for as long as
    /// the error takes to slew away (an hour's error: hours).
    pub fn plausible_sender_time(sender: UnixNanos, arrival: UnixNanos) -> bool {
        sender.abs_diff(arrival) <= MAX_SENDER_CLOCK_ERROR_NS
    }

    /// Keeps times increasing without losing the source's spacing. Clamping each late frame to
    /// `last + 1` would pack every frame 1 ns apart until the source caught up, for as long as
    /// its clock is behind; instead the source is shifted forward once, and the shift is slewed
    /// back by a tenth of each frame interval (as NTP slews rather than steps), so spacing stays
    /// within 10 % and the times converge on the source's own.
    fn monotonic(&mut self, source_time: UnixNanos) -> UnixNanos {
        if let Some(previous) = self.last_source {
            let slew = source_time.saturating_sub(previous).max(0) / SLEW_DIVISOR;
            self.shift = self.shift.saturating_sub(slew).max(0);
        }
        self.last_source = Some(source_time);
        let mut t = source_time.saturating_add(self.shift);
        if let Some(last) = self.last.filter(|&last| t <= last) {
            self.shift = self.shift.saturating_add(last - t + 1);
            t = last + 1;
        }
        self.last = Some(t);
        t
    }
}

/// Unix nanoseconds of a protobuf timestamp (saturating far outside any capture time).
pub fn timestamp_nanos(t: prost_types::Timestamp) -> UnixNanos {
    t.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.nanos))
}

/// A run that lasted this long counts as healthy: the next failure starts the backoff afresh.
pub const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Exponential backoff with +-20% jitter, so that cameras (or push targets) that failed together
/// (a switch rebooted, an uplink came back) do not all retry in the same instant, forever. It starts afresh after a run of
/// [`HEALTHY_RUN`], timed on `clock` (injected, so that tests need not wait 30 s).
pub struct Backoff<C = fn() -> Instant> {
    initial: Duration,
    max: Duration,
    next: Duration,
    clock: C,
    run_started: Option<Instant>,
}

impl<C: Monotonic> Backoff<C> {
    pub fn new(initial: Duration, max: Duration, clock: C) -> Self {
        Backoff {
            initial,
            max,
            next: initial,
            clock,
            run_started: None,
        }
    }

    /// A pipeline run begins now; returns the instant, which the run's other timings start from.
    pub fn start_run(&mut self) -> Instant {
        *self.run_started.insert(self.clock.now())
    }

    /// The run has ended in a failure: after a run that lasted [`HEALTHY_RUN`] the next failure
    /// is met with the initial delay again, not the one reached before that run.
    pub fn end_run(&mut self) {
        let ran_for = self
            .run_started
            .take()
            .map(|started| self.clock.now().saturating_duration_since(started));
        if ran_for.is_some_and(|ran_for| ran_for >= HEALTHY_RUN) {
            self.reset();
        }
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.8 + 0.4 * fastrand::f64()).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8), Instant::now);
        let delays: Vec<f64> = (0..6).map(|_| backoff.next_delay().as_secs_f64()).collect();
        for (delay, base) in delays.iter().zip([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]) {
            assert!(
                *delay >= base * 0.8 - 1e-9 && *delay <= (base * 1.2f64).min(8.0) + 1e-9,
                "{delays:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_secs_f64(1.2));
    }

    #[test]
    fn backoff_starts_afresh_after_a_run_of_30_s_and_not_after_a_shorter_one() {
        let now = std::cell::Cell::new(Instant::now());
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8), || now.get());
        // The delay after a failed run that lasted `ran_for` (the test's clock moves, no sleep).
        let mut failed_run = |ran_for: Duration| {
            backoff.start_run();
            now.set(now.get() + ran_for);
            backoff.end_run();
            backoff.next_delay()
        };
        let short = Duration::from_secs(1);
        // Quick failures climb to the cap: 1, 2, 4, 8 s (+-20%).
        let climbed = (0..4).map(|_| failed_run(short)).last();
        assert!(climbed >= Some(Duration::from_secs_f64(6.4)), "{climbed:?}");
        // A run just short of healthy leaves the backoff at the cap.
        let after_short = failed_run(HEALTHY_RUN - Duration::from_millis(100));
        assert!(after_short >= Duration::from_secs_f64(6.4), "{after_short:?}");
        // A healthy run: the next failure waits the initial delay again, and climbs from there.
        let after_healthy = failed_run(HEALTHY_RUN);
        assert!(after_healthy <= Duration::from_secs_f64(1.2), "{after_healthy:?}");
        let next = failed_run(short);
        assert!(
            next >= Duration::from_secs_f64(1.6) && next <= Duration::from_secs_f64(2.4),
            "{next:?}"
        );
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn frames_keep_pipeline_spacing_from_one_anchor() {
        let mut clock = CaptureClock::new(TimeSource::HostArrival);
        let t0 = clock.stamp(40 * MS, || 1_000_000_000);
        // The wall clock is not read again: a late frame keeps its pipeline time.
        let t1 = clock.stamp(80 * MS, || panic!("wall clock read per frame"));
        assert_eq!(t0, 1_000_000_000);
        assert_eq!(t1 - t0, 40_000_000);
    }

    #[test]
    fn restart_never_goes_back_in_time() {
        let mut clock = CaptureClock::new(TimeSource::FilePosition);
        let t0 = clock.stamp(10_000 * MS, || 5_000_000_000);
        clock.restart();
        // A new run whose wall anchor is behind the last stamp (clock step) still moves forward.
        let t1 = clock.stamp(Duration::ZERO, || 4_000_000_000);
        assert!(t1 > t0);
    }

    #[test]
    fn a_source_clock_behind_keeps_its_spacing_and_is_slewed_back() {
        let mut clock = CaptureClock::new(TimeSource::HostArrival);
        // Host-stamped frames first (no sender report yet), then the camera's NTP times, which
        // lie 2 s behind them.
        let host = clock.stamp(Duration::ZERO, || 10_000_000_000);
        let frame = 40_000_000;
        let ntp_start = host - 2_000_000_000;
        let stamped: Vec<UnixNanos> = (1..=1000).map(|n| clock.stamp_exact(ntp_start + n * frame)).collect();
        assert!(stamped[0] > host);
        for pair in stamped.windows(2) {
            let spacing = pair[1] - pair[0];
            assert!(spacing >= frame * 9 / 10 && spacing <= frame, "spacing {spacing} ns");
        }
        // 2 s absorbed at 4 ms a frame: exact camera times again after about 500 frames.
        assert_eq!(stamped[999], ntp_start + 1000 * frame);
    }

    #[test]
    fn a_restart_drops_the_shift_of_the_previous_run() {
        let mut clock = CaptureClock::new(TimeSource::HostArrival);
        clock.stamp(Duration::ZERO, || 10_000_000_000);
        // A sender time 5 s behind: shifted to just after the last stamp.
        let shifted = clock.stamp_exact(5_000_000_000);
        assert_eq!(shifted, 10_000_000_001);
        clock.restart();
        // A new run anchored on a correct wall clock gets that clock's time, not + 5 s.
        assert_eq!(clock.stamp(Duration::ZERO, || 12_000_000_000), 12_000_000_000);
    }

    #[test]
    fn a_sender_time_far_from_the_host_clock_is_not_believed() {
        let now = 1_700_000_000_000_000_000;
        assert!(CaptureClock::plausible_sender_time(now - 300_000_000, now));
        assert!(!CaptureClock::plausible_sender_time(now - 3_600_000_000_000, now));
        assert!(!CaptureClock::plausible_sender_time(0, now));
    }

    #[test]
    fn timestamp_conversion_handles_negative_times() {
        let ts = to_timestamp(-1);
        assert_eq!((ts.seconds, ts.nanos), (-1, 999_999_999));
    }
}
