//! The hand-over from decoding (GStreamer threads) to inference (worker threads).
//!
//! Each camera has its own small lane, so memory is bounded by `cameras x capacity` frames no
//! matter how far inference falls behind. Workers take frames round-robin across lanes, so one
//! busy camera cannot starve the others. A frame taken from a lane gets the lane's next *ticket*:
//! tickets let the describe stage put results back in capture order when several workers finish
//! out of order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{CameraStatus, Frame};

/// What a producer wants when its lane is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Live sources: drop the oldest waiting frame; the newest view of the scene matters most.
    DropOldest,
    /// Files read faster than real time: wait for room, so that no frame is skipped.
    Wait,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// Queued after dropping the oldest waiting frame of the same camera.
    QueuedDroppedOldest,
    /// The queue is closed (node stopping); the frame was discarded.
    Closed,
}

pub struct FrameQueue {
    state: Mutex<State>,
    frame_ready: Condvar,
    room_ready: Condvar,
    capacity_per_camera: usize,
}

struct State {
    lanes: BTreeMap<String, Lane>,
    /// Frames in all lanes: counted, so that a push need not look at every lane.
    waiting: usize,
    /// The lane served last; the next pop starts after it.
    last_served: Option<String>,
    closed: bool,
    /// Producers blocked waiting for room (files read faster than real time).
    producers_waiting: usize,
    /// The last pop, or the moment a frame arrived in an empty queue if that was later: how long
    /// frames have waited with nobody taking one.
    last_progress: Instant,
}

struct Lane {
    frames: VecDeque<Frame>,
    next_ticket: u64,
}

impl FrameQueue {
    pub fn new(capacity_per_camera: usize) -> Arc<Self> {
        Arc::new(FrameQueue {
            state: Mutex::new(State {
                lanes: BTreeMap::new(),
                waiting: 0,
                last_served: None,
                closed: false,
                producers_waiting: 0,
                last_progress: Instant::now(),
            }),
            frame_ready: Condvar::new(),
            room_ready: Condvar::new(),
            capacity_per_camera: capacity_per_camera.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, frame: Frame, overflow: Overflow) -> PushOutcome {
        let mut state = self.lock();
        let camera: Arc<CameraStatus> = frame.camera.clone();
        loop {
            if state.closed {
                return PushOutcome::Closed;
            }
            // The id is cloned only for a camera's first frame, not for every frame.
            if !state.lanes.contains_key(&camera.id) {
                state.lanes.insert(
                    camera.id.clone(),
                    Lane {
                        frames: VecDeque::with_capacity(self.capacity_per_camera),
                        next_ticket: 0,
                    },
                );
            }
            // Waiting starts now if nothing waited before: an idle worker is not a stalled one.
            if state.waiting == 0 {
                state.last_progress = Instant::now();
            }
            let Some(lane) = state.lanes.get_mut(&camera.id) else {
                return PushOutcome::Closed; // unreachable: the lane was inserted just above
            };
            if lane.frames.len() < self.capacity_per_camera {
                lane.frames.push_back(frame);
                state.waiting += 1;
                CameraStatus::count(&camera.frames_queued);
                self.frame_ready.notify_one();
                return PushOutcome::Queued;
            }
            match overflow {
                Overflow::DropOldest => {
                    if let Some(dropped) = lane.frames.pop_front() {
                        super::pool::give(dropped.image.into_raw());
                    }
                    lane.frames.push_back(frame);
                    CameraStatus::count(&camera.frames_queued);
                    CameraStatus::count(&camera.frames_dropped);
                    self.frame_ready.notify_one();
                    return PushOutcome::QueuedDroppedOldest;
                }
                Overflow::Wait => {
                    state.producers_waiting += 1;
                    state = self.room_ready.wait(state).unwrap_or_else(|p| p.into_inner());
                    state.producers_waiting -= 1;
                }
            }
        }
    }

    /// Blocks until a frame is available; `None` once the queue is closed *and* drained, so
    /// frames already accepted are still analysed during a graceful stop.
    pub fn pop(&self) -> Option<(Frame, u64)> {
        let mut state = self.lock();
        loop {
            if let Some(taken) = Self::take_next(&mut state) {
                state.last_progress = Instant::now();
                self.room_ready.notify_all();
                return Some(taken);
            }
            if state.closed {
                return None;
            }
            state = self.frame_ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// How long frames have been waiting at `now` without inference taking any; `None` when
    /// nothing waits. A watchdog's measure of a wedged analysis path: a stuck worker, or a
    /// describer or log writer that stopped taking results, all end with frames left here.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let state = self.lock();
        (state.waiting > 0).then(|| now.saturating_duration_since(state.last_progress))
    }

    fn take_next(state: &mut State) -> Option<(Frame, u64)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let after = state.last_served.clone();
        let candidates = match &after {
            Some(last) => state
                .lanes
                .range::<String, _>((Excluded(last), Unbounded))
                .chain(state.lanes.range::<String, _>(..=last.clone()))
                .find(|(_, lane)| !lane.frames.is_empty())
                .map(|(id, _)| id.clone()),
            None => state
                .lanes
                .iter()
                .find(|(_, lane)| !lane.frames.is_empty())
                .map(|(id, _)| id.clone()),
        };
        let id = candidates?;
        let lane = state.lanes.get_mut(&id)?;
        let frame = lane.frames.pop_front()?;
        state.waiting -= 1;
        let ticket = lane.next_ticket;
        lane.next_ticket += 1;
        state.last_served = Some(id);
        Some((frame, ticket))
    }

    /// Forgets a removed camera's lane and the frames waiting in it.
    pub fn remove_lane(&self, camera_id: &str) {
        let mut state = self.lock();
        if let Some(lane) = state.lanes.remove(camera_id) {
            state.waiting -= lane.frames.len();
        }
        drop(state);
        self.room_ready.notify_all();
    }

    /// Stops accepting frames and wakes everyone; waiting frames can still be popped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.frame_ready.notify_all();
        self.room_ready.notify_all();
    }

    /// Frames waiting now, over all cameras.
    pub fn len(&self) -> usize {
        self.lock().waiting
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Producers blocked until a lane has room.
    pub fn producers_waiting(&self) -> usize {
        self.lock().producers_waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::TimeSource;
    use std::sync::atomic::Ordering;

    fn camera(id: &str) -> Arc<CameraStatus> {
        Arc::new(CameraStatus::new(id.into(), super::super::CameraSettings::default()))
    }

    fn frame(camera: &Arc<CameraStatus>, t: i64) -> Frame {
        Frame {
            camera: camera.clone(),
            image: image::RgbImage::new(2, 2),
            capture_time: t,
            time_source: TimeSource::HostArrival,
            keyframes_only: false,
        }
    }

    #[test]
    fn the_count_of_waiting_frames_follows_pushes_drops_pops_and_removals() {
        let queue = FrameQueue::new(2);
        let (a, b) = (camera("a"), camera("b"));
        for t in 0..3 {
            queue.push(frame(&a, t), Overflow::DropOldest);
        }
        queue.push(frame(&b, 0), Overflow::DropOldest);
        assert_eq!(queue.len(), 3, "a's oldest was dropped: 2 of a, 1 of b");
        assert!(queue.stalled(Instant::now()).is_some());
        queue.pop().unwrap();
        assert_eq!(queue.len(), 2);
        queue.remove_lane("a");
        assert_eq!(queue.len(), 1, "a's waiting frame went with its lane");
        queue.pop().unwrap();
        assert!(queue.is_empty());
        assert_eq!(queue.stalled(Instant::now() + Duration::from_secs(60)), None);
    }

    #[test]
    fn full_lane_drops_its_oldest_frame_and_counts_it() {
        let queue = FrameQueue::new(2);
        let a = camera("a");
        for t in 0..5 {
            queue.push(frame(&a, t), Overflow::DropOldest);
        }
        assert_eq!(queue.len(), 2);
        assert_eq!(a.frames_dropped.load(Ordering::Relaxed), 3);
        let (f, ticket) = queue.pop().unwrap();
        assert_eq!((f.capture_time, ticket), (3, 0));
        let (f, ticket) = queue.pop().unwrap();
        assert_eq!((f.capture_time, ticket), (4, 1));
    }

    #[test]
    fn frames_left_waiting_show_as_a_stall_and_an_idle_queue_does_not() {
        let queue = FrameQueue::new(2);
        let a = camera("a");
        let later = |s| Instant::now() + Duration::from_secs(s);
        assert_eq!(queue.stalled(later(60)), None, "an empty queue is idle, however long");
        queue.push(frame(&a, 0), Overflow::DropOldest);
        assert!(queue.stalled(later(20)).is_some_and(|d| d >= Duration::from_secs(19)));
        queue.pop().unwrap();
        assert_eq!(queue.stalled(later(20)), None);
        // A queue that became busy after a long idle time starts counting then, not at the last pop.
        queue.push(frame(&a, 1), Overflow::DropOldest);
        assert!(
            queue
                .stalled(Instant::now())
                .is_some_and(|d| d < Duration::from_secs(1))
        );
    }

    #[test]
    fn busy_camera_cannot_starve_others() {
        let queue = FrameQueue::new(8);
        let (busy, quiet) = (camera("busy"), camera("quiet"));
        for t in 0..8 {
            queue.push(frame(&busy, t), Overflow::DropOldest);
        }
        queue.push(frame(&quiet, 100), Overflow::DropOldest);
        let first_two: Vec<String> = (0..2).map(|_| queue.pop().unwrap().0.camera.id.clone()).collect();
        assert!(first_two.contains(&"quiet".to_string()), "{first_two:?}");
    }

    /// Spins until a producer is blocked in `push`: the tests below must not pass merely because
    /// the producer thread had not pushed yet.
    fn until_a_producer_waits(queue: &FrameQueue) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while queue.producers_waiting() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the producer never waited for room"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn close_drains_then_ends_and_releases_waiting_producers() {
        let queue = FrameQueue::new(1);
        let a = camera("a");
        queue.push(frame(&a, 0), Overflow::Wait);
        let producer = std::thread::spawn({
            let queue = queue.clone();
            let a = a.clone();
            move || queue.push(frame(&a, 1), Overflow::Wait)
        });
        until_a_producer_waits(&queue);
        queue.close();
        assert_eq!(producer.join().unwrap(), PushOutcome::Closed);
        assert_eq!(queue.producers_waiting(), 0);
        assert_eq!(
            queue.pop().unwrap().0.capture_time,
            0,
            "what was accepted is still analysed"
        );
        assert!(queue.pop().is_none());
    }

    #[test]
    fn waiting_producer_resumes_when_a_worker_takes_a_frame() {
        let queue = FrameQueue::new(1);
        let a = camera("a");
        queue.push(frame(&a, 0), Overflow::Wait);
        let producer = std::thread::spawn({
            let queue = queue.clone();
            let a = a.clone();
            move || queue.push(frame(&a, 1), Overflow::Wait)
        });
        until_a_producer_waits(&queue);
        // While it waits, nothing was dropped to make room.
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop().unwrap().0.capture_time, 0);
        assert_eq!(producer.join().unwrap(), PushOutcome::Queued);
        assert_eq!(queue.pop().unwrap().0.capture_time, 1);
        assert_eq!(a.frames_dropped.load(Ordering::Relaxed), 0);
    }
}
