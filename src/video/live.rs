//! Each camera's newest frames, in memory until the ring has them on disk.
//!
//! The ring's muxer holds a whole group of pictures (keyframe to keyframe, seconds of video)
//! before it writes any of it, so the frame just described is not in the ring yet. The recorder
//! therefore also keeps here the compressed frames of the latest two groups, which is all a
//! decoder needs for any of them: a snapshot of the last seconds (the status page's picture of
//! the latest descriptor) is decoded from here. Streams the recorder encodes itself (Motion JPEG
//! cameras) have no compressed frames before the ring's encoder, and none are kept here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;

use super::export::{self, Next, TimedFrame};
use crate::clock::UnixNanos;
use crate::error::Result;

/// A group longer than this (a camera sending keyframes rarely) stops being kept until the
/// next keyframe: memory stays bounded whatever the camera does.
const MOST_BYTES_KEPT: usize = 8 << 20;
const GROUPS_KEPT: usize = 2;
/// How far before a group's keyframe a time asked for may be and still be that keyframe's.
const SLACK_NS: UnixNanos = 20_000_000;

/// The newest frames of every camera that records, by camera id.
#[derive(Default)]
pub struct LiveFrames {
    cameras: Mutex<HashMap<String, Arc<Mutex<Group>>>>,
}

/// A camera's newest frames: its latest two groups of pictures (a frame just described is
/// often in the group before the latest keyframe, which the ring has not written either).
pub struct Group {
    caps: gst::Caps,
    /// Oldest first.
    groups: VecDeque<Pictures>,
}

/// The frames from a keyframe on, in decoding order.
struct Pictures {
    /// The keyframe's recording time.
    keyframe: Duration,
    /// Capture time of the keyframe, once known (a run's first frames may come before the
    /// camera's clock is): the frames are timed from it as the ring times a segment's.
    start: Option<UnixNanos>,
    frames: Vec<gst::Buffer>,
    bytes: usize,
}

impl std::fmt::Debug for LiveFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFrames").finish_non_exhaustive()
    }
}

impl LiveFrames {
    /// Where a recording of `camera` keeps its newest frames (what an earlier one kept goes).
    pub fn start(&self, camera: &str, caps: &gst::Caps) -> Arc<Mutex<Group>> {
        let group = Arc::new(Mutex::new(Group {
            caps: caps.clone(),
            groups: VecDeque::new(),
        }));
        self.lock().insert(camera.to_string(), group.clone());
        group
    }

    /// Forgets `camera`'s frames, if `group` (its recording's) is still the one kept.
    pub fn stop(&self, camera: &str, group: &Arc<Mutex<Group>>) {
        let mut cameras = self.lock();
        if cameras.get(camera).is_some_and(|kept| Arc::ptr_eq(kept, group)) {
            cameras.remove(camera);
        }
    }

    /// The frame of `camera` captured nearest to `time`, within `reach` of it, if `time` is in
    /// the frames kept here (or after them: the ring has nothing newer); decoded, on the calling
    /// thread. A time before them is the ring's, which has that very frame.
    pub fn nearest(&self, camera: &str, time: UnixNanos, reach: UnixNanos) -> Result<Option<TimedFrame>> {
        let Some(group) = self.lock().get(camera).cloned() else {
            return Ok(None);
        };
        let (caps, start, frames) = {
            let group = group.lock().unwrap_or_else(|p| p.into_inner());
            // The latest group that starts at or before the time (a frame's width of slack: the
            // times asked are the descriptors', a few milliseconds from the ring's).
            let Some((start, pictures)) = group
                .groups
                .iter()
                .rev()
                .filter_map(|p| Some((p.start?, p)))
                .find(|(start, _)| start.saturating_sub(SLACK_NS.min(reach)) <= time)
            else {
                return Ok(None);
            };
            (group.caps.clone(), start, pictures.frames.clone())
        };
        let mut nearest: Option<TimedFrame> = None;
        export::decode_buffers(&caps, frames, start, time.saturating_sub(reach), |frame| {
            let past = frame.capture_time >= time;
            if nearest
                .as_ref()
                .is_none_or(|n| frame.capture_time.abs_diff(time) < n.capture_time.abs_diff(time))
            {
                nearest = Some(frame);
            }
            Ok(if past { Next::Stop } else { Next::More })
        })?;
        Ok(nearest.filter(|n| n.capture_time.abs_diff(time) <= reach.unsigned_abs()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<Group>>>> {
        self.cameras.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Group {
    /// Keeps a compressed frame; a keyframe (`keyframe`, its recording time) starts a new group.
    /// `capture_of` times a recording time, once the camera's clock is known.
    pub fn keep(
        &mut self,
        buffer: &gst::BufferRef,
        keyframe: Option<Duration>,
        capture_of: impl Fn(Duration) -> Option<UnixNanos>,
    ) {
        if let Some(keyframe) = keyframe {
            if self.groups.len() == GROUPS_KEPT {
                self.groups.pop_front();
            }
            self.groups.push_back(Pictures {
                keyframe,
                start: None,
                frames: Vec::new(),
                bytes: 0,
            });
        }
        for pictures in self.groups.iter_mut().filter(|p| p.start.is_none()) {
            pictures.start = capture_of(pictures.keyframe);
        }
        let Some(latest) = self.groups.back_mut() else {
            return;
        };
        latest.bytes += buffer.size();
        if latest.bytes > MOST_BYTES_KEPT {
            // Kept again from the next keyframe on.
            self.groups.clear();
            return;
        }
        latest.frames.push(buffer.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use gstreamer::prelude::*;
    use gstreamer_app as gst_app;

    use super::*;

    const BASE: UnixNanos = 1_800_000_000_000_000_000;

    /// 30 frames of H.264 at 10 fps, a keyframe every 10, with their presentation times.
    fn encoded() -> (gst::Caps, Vec<gst::Buffer>) {
        gst::init().unwrap();
        let pipeline = gst::parse::launch(
            "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,format=I420,width=160,height=120,framerate=10/1 ! \
             x264enc key-int-max=10 bframes=0 ! h264parse ! appsink name=out sync=false",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let sink = pipeline.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let (mut caps, mut buffers) = (None, Vec::new());
        while let Ok(sample) = sink.pull_sample() {
            caps = sample.caps().map(|c| c.to_owned());
            buffers.push(sample.buffer_owned().unwrap());
        }
        pipeline.set_state(gst::State::Null).unwrap();
        (caps.unwrap(), buffers)
    }

    fn at(frame: i64) -> UnixNanos {
        BASE + frame * 100_000_000
    }

    #[test]
    fn the_latest_two_groups_of_pictures_give_their_very_frames() {
        let (caps, buffers) = encoded();
        assert_eq!(buffers.len(), 30);
        let live = LiveFrames::default();
        let group = live.start("door", &caps);
        // x264enc shifts its times by an hour.
        let first = buffers[0].pts().unwrap();
        for buffer in &buffers {
            let pts = Duration::from_nanos((buffer.pts().unwrap() - first).nseconds());
            let keyframe = (!buffer.flags().contains(gst::BufferFlags::DELTA_UNIT)).then_some(pts);
            // The camera's clock is known from the second group on: the first is never kept.
            let known = |t: Duration| (t >= Duration::from_secs(1)).then(|| BASE + t.as_nanos() as i64);
            group.lock().unwrap().keep(buffer, keyframe, known);
        }
        // Every frame as a decoder reading the whole stream from its start sees it.
        let mut whole = Vec::new();
        export::decode_buffers(&caps, buffers.clone(), at(0), at(0), |frame| {
            whole.push(frame.image);
            Ok(Next::More)
        })
        .unwrap();
        assert_eq!(whole.len(), 30);
        let reach = 20_000_000;
        for frame in [10, 15, 19, 20, 27, 29] {
            let found = live.nearest("door", at(frame), reach).unwrap().unwrap();
            assert_eq!(found.capture_time, at(frame), "frame {frame}");
            // The very frame, not one beside it: the ball moves from frame to frame.
            assert!(found.image == whole[frame as usize], "the pixels of frame {frame}");
            assert!(
                found.image != whole[frame as usize - 1],
                "frames {frame} and before differ"
            );
        }
        // Beyond the newest frame, before the two groups, or of another camera: not here.
        for (camera, time) in [("door", at(31)), ("door", at(5)), ("gate", at(20))] {
            assert!(live.nearest(camera, time, reach).unwrap().is_none(), "{camera} {time}");
        }
        // A snapshot's reach is a second: a time before the groups is still the ring's, which
        // has its very frame, not the first frame kept here.
        assert!(live.nearest("door", at(5), 1_000_000_000).unwrap().is_none());
        assert_eq!(
            live.nearest("door", at(31), 1_000_000_000)
                .unwrap()
                .map(|f| f.capture_time),
            Some(at(29)),
            "after the newest frame, the newest within reach"
        );
        // A recording that stops takes its frames with it.
        live.stop("door", &group);
        assert!(live.nearest("door", at(20), reach).unwrap().is_none());
    }
}
