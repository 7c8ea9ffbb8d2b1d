//! The `Pixels` service: snapshots and clips from the video ring, and the rules for pixels that
//! leave the node. Every frame sent has its faces pixelated unless the request is `raw` and the
//! caller holds the `pixels-raw` scope; every export, sent or refused, becomes a record in the
//! camera's descriptor stream (`PixelExport`), which `Query` and subscribers read like any other.
//!
//! Decoding, face detection and encoding run on blocking threads, at most
//! `video.max_concurrent_exports` at once; a clip streams out as it is encoded, so a slow client
//! slows its own encoder, never the node's cameras.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{OwnedPermit, Sender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::access::{Caller, Scope};
use crate::clock::{UnixNanos, now_unix_nanos, timestamp_nanos, to_timestamp};
use crate::config::{VideoConfig, is_valid_camera_id};
use crate::describe::ExportNotice;
use crate::error::quoted;
use crate::infer::faces::{Face, FaceDetector, pixelate_faces};
use crate::log::LogReader;
use crate::log::store::Selection;
use crate::pb;
use crate::pb::pixels_server::Pixels;
use crate::video::export::{self, Mp4Writer, Next, TimedFrame};
use crate::video::live::LiveFrames;
use crate::video::ring::{Coverage, Pinned, Ring};

/// The nearest frame must be this close to the time asked for a snapshot.
const SNAPSHOT_REACH_NS: UnixNanos = 1_000_000_000;
/// Clip bytes per message: well under gRPC's usual 4 MiB limit on what a client takes.
const CHUNK_BYTES: usize = 256 << 10;
/// A track clip's margin when the request gives none.
const DEFAULT_TRACK_MARGIN: Duration = Duration::from_secs(2);
/// How long the encoder may take to finish a clip once its last frame is in.
const ENCODER_FINISH: Duration = Duration::from_secs(30);
const DEFAULT_JPEG_QUALITY: u32 = 90;
/// A live picture is the very frame a descriptor was made from (the ring and the descriptor time
/// a frame a few milliseconds apart), or none.
const LIVE_PICTURE_REACH_NS: UnixNanos = 20_000_000;
/// Live pictures are looked at, not kept: a smaller JPEG is sent sooner.
const LIVE_PICTURE_QUALITY: u32 = 75;
/// Live pictures are scaled down to the page's drawing (640 pixels across) before faces are
/// searched: the face detector's tiles make it the picture's largest cost, four times less at
/// this width than at 1280.
const LIVE_PICTURE_WIDTH: u32 = 640;
/// How long one record of a live view runs: a viewer at a few pictures a second writes one record
/// per camera a minute, not one per picture.
const LIVE_VIEW_RECORD: Duration = Duration::from_secs(60);

/// Everything an export needs, shared by the calls.
pub struct VideoExports {
    root: PathBuf,
    /// The frames the ring has not written yet.
    live: Arc<LiveFrames>,
    max_clip_ns: UnixNanos,
    face_margin: f32,
    /// Face detectors not in use; one is loaded when all are busy (at most one per export slot).
    faces: Mutex<Vec<FaceDetector>>,
    face_model: PathBuf,
    environment: &'static ort::environment::Environment,
}

impl VideoExports {
    /// Loads the face detector once, so that a node whose face model is missing or broken does not
    /// start (it could not export anything).
    pub fn new(
        root: PathBuf,
        live: Arc<LiveFrames>,
        config: &VideoConfig,
        face_model: PathBuf,
        environment: &'static ort::environment::Environment,
    ) -> crate::Result<VideoExports> {
        let first = FaceDetector::load(&face_model, environment)?;
        Ok(VideoExports {
            root,
            live,
            max_clip_ns: (config.max_clip_seconds * 1e9) as i64,
            face_margin: config.face_margin,
            faces: Mutex::new(vec![first]),
            face_model,
            environment,
        })
    }

    fn take_detector(&self) -> Result<FaceDetector, Status> {
        let idle = self.faces.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(detector) => Ok(detector),
            None => FaceDetector::load(&self.face_model, self.environment)
                .map_err(|e| Status::internal(format!("the face detector does not load: {e}"))),
        }
    }

    fn give_back(&self, detector: FaceDetector) {
        self.faces.lock().unwrap_or_else(|p| p.into_inner()).push(detector);
    }

    /// Whether video of `camera` is kept here (it has recorded): only such a camera's stream
    /// gets export records, so that a caller cannot open streams for cameras that do not exist.
    fn keeps(&self, camera: &str) -> bool {
        is_valid_camera_id(camera) && Ring::new(&self.root, camera).dir().is_dir()
    }

    fn ring(&self, camera: &str) -> Result<Ring, Status> {
        if !is_valid_camera_id(camera) {
            return Err(Status::invalid_argument(format!(
                "camera id {} is not valid",
                quoted(camera)
            )));
        }
        Ok(Ring::new(&self.root, camera))
    }
}

/// The faces in `frame`; none without a detector (`raw`).
fn faces_in(detector: &mut Option<FaceDetector>, frame: &image::RgbImage) -> Result<Vec<Face>, Status> {
    let Some(detector) = detector else {
        return Ok(Vec::new());
    };
    detector
        .detect(frame)
        .map_err(|e| Status::internal(format!("face detection failed, nothing is sent: {e}")))
}

/// Frames either side of a clip's frame whose faces are pixelated in it too.
const FACE_REACH_FRAMES: usize = 3;

/// Holds a clip's frames back by [`FACE_REACH_FRAMES`] so that each is pixelated with the faces
/// found in the frames around it as well as its own: a detector that misses a face in one frame
/// (motion blur, a head turning) finds it in its neighbours, and the face does not flash through.
#[derive(Default)]
struct FaceWindow {
    /// Frames not sent yet, with their own faces, oldest first.
    waiting: VecDeque<(TimedFrame, Vec<Face>)>,
    /// Faces of the frames sent last, newest last.
    behind: VecDeque<Vec<Face>>,
}

impl FaceWindow {
    /// Takes a frame; gives back the one that now has all its neighbours, pixelated.
    fn push(&mut self, frame: TimedFrame, faces: Vec<Face>, margin: f32) -> Option<TimedFrame> {
        self.waiting.push_back((frame, faces));
        (self.waiting.len() > FACE_REACH_FRAMES)
            .then(|| self.release(margin))
            .flatten()
    }

    /// The frames still held, at the end of the clip.
    fn drain(&mut self, margin: f32) -> Vec<TimedFrame> {
        std::iter::from_fn(|| self.release(margin)).collect()
    }

    fn release(&mut self, margin: f32) -> Option<TimedFrame> {
        let (mut frame, own) = self.waiting.pop_front()?;
        let around: Vec<Face> = self
            .behind
            .iter()
            .flatten()
            .chain(&own)
            .chain(self.waiting.iter().take(FACE_REACH_FRAMES).flat_map(|(_, f)| f))
            .copied()
            .collect();
        pixelate_faces(&mut frame.image, &around, margin);
        if self.behind.len() == FACE_REACH_FRAMES {
            self.behind.pop_front();
        }
        self.behind.push_back(own);
        Some(frame)
    }
}

/// Cheap to clone: the gRPC service and the status page share one.
#[derive(Clone)]
pub struct PixelsService {
    exports: Option<Arc<VideoExports>>,
    log: LogReader,
    notices: Sender<ExportNotice>,
    slots: Arc<Semaphore>,
    live_views: Arc<LiveViews>,
}

/// An export's record, from before its first pixel until it is written. Its place in the describe
/// stage's queue is taken first: an export whose record could not be queued is refused, never
/// made. A camera whose video is not kept (no such camera: nothing of it can be exported) gets
/// its records in the node's log instead, so that a caller cannot open streams in the log for
/// cameras that do not exist. Dropped unwritten (a task that failed), it is written as cut short.
struct AuditPlace {
    permit: Option<OwnedPermit<ExportNotice>>,
    /// The camera's video is kept here.
    kept: bool,
    camera: String,
    asked_at: UnixNanos,
    record: pb::PixelExport,
    written: bool,
}

impl AuditPlace {
    fn take(notices: &Sender<ExportNotice>, kept: bool, camera: &str, record: pb::PixelExport) -> AuditPlace {
        AuditPlace {
            permit: kept.then(|| notices.clone().try_reserve_owned().ok()).flatten(),
            kept,
            camera: camera.to_string(),
            asked_at: now_unix_nanos(),
            record,
            written: false,
        }
    }

    /// Whether the export may go on: its record has a place.
    fn admit(&self) -> Result<(), Status> {
        if self.kept && self.permit.is_none() {
            return Err(Status::unavailable(
                "export records cannot be written now (the describe stage is behind): try again shortly",
            ));
        }
        Ok(())
    }

    fn finish(mut self, outcome: Result<(), &Status>) {
        if let Err(status) = outcome {
            self.record.refused = status.message().chars().take(200).collect();
        }
        self.write();
    }

    fn write(&mut self) {
        self.written = true;
        let record = std::mem::take(&mut self.record);
        match self.permit.take() {
            Some(permit) => {
                permit.send(ExportNotice {
                    camera_id: std::mem::take(&mut self.camera),
                    at: self.asked_at,
                    export: record,
                });
            }
            None if self.kept => {
                tracing::warn!(
                    camera = self.camera,
                    caller = record.caller,
                    kind = record.kind,
                    refused = record.refused,
                    "an export record could not be queued for the log"
                );
            }
            None => {
                tracing::info!(camera = %quoted(&self.camera), caller = record.caller, kind = record.kind,
                    refused = record.refused, "pixels asked of a camera whose video is not kept");
            }
        }
    }
}

impl Drop for AuditPlace {
    fn drop(&mut self) {
        if !self.written {
            self.record.refused = "the export stopped before its end (a failure of the node)".into();
            self.write();
        }
    }
}

/// The live views going on: the status page's pictures, one open record per caller and camera.
///
/// A record opens with the first picture asked for (its place in the describe stage's queue
/// taken before any pixel is decoded, as for every export) and is written [`LIVE_VIEW_RECORD`]
/// later with the pictures sent and refused in between, their first and last capture times and
/// the faces pixelated. Records still open when the services end are written then, if the
/// describe stage still takes them; a node killed loses them, as it loses a clip's record
/// mid-clip.
#[derive(Default)]
struct LiveViews {
    open: Mutex<HashMap<(String, String), LiveView>>,
}

struct LiveView {
    place: AuditPlace,
    refusals: u32,
    latest_refusal: String,
}

/// Written when it ends, whether its minute is up or the node stops.
impl Drop for LiveView {
    fn drop(&mut self) {
        let record = &mut self.place.record;
        record.refusals = self.refusals;
        if record.frames == 0 {
            record.refused = std::mem::take(&mut self.latest_refusal);
        }
        self.place.write();
    }
}

impl LiveView {
    fn count(&mut self, picture: Result<&pb::Snapshot, &Status>) {
        match picture {
            Ok(picture) => {
                let record = &mut self.place.record;
                if record.frames == 0 {
                    record.from_time = picture.capture_time;
                }
                record.to_time = picture.capture_time;
                record.frames += 1;
                record.faces_blurred += picture.faces_blurred;
            }
            Err(status) => {
                self.refusals += 1;
                self.latest_refusal = status.message().chars().take(200).collect();
            }
        }
    }
}

impl LiveViews {
    /// Counts a picture into `viewer`'s (caller, camera) open record, or into one opened now
    /// (written [`LIVE_VIEW_RECORD`] later) when none is. A record that cannot be queued
    /// refuses the picture.
    fn record(
        self: &Arc<Self>,
        viewer: &(String, String),
        take: impl FnOnce() -> AuditPlace,
        picture: Option<Result<&pb::Snapshot, &Status>>,
    ) -> Result<(), Status> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(view) = open.get_mut(viewer) {
            if let Some(picture) = picture {
                view.count(picture);
            }
            return Ok(());
        }
        let place = take();
        if let Err(status) = place.admit() {
            drop(open);
            place.finish(Err(&status));
            return Err(status);
        }
        let mut view = LiveView {
            place,
            refusals: 0,
            latest_refusal: String::new(),
        };
        if let Some(picture) = picture {
            view.count(picture);
        }
        open.insert(viewer.clone(), view);
        // Weak: the records still open are written when the services holding them drop.
        let (views, viewer) = (Arc::downgrade(self), viewer.clone());
        tokio::spawn(async move {
            tokio::time::sleep(LIVE_VIEW_RECORD).await;
            if let Some(views) = views.upgrade() {
                let ended = views.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&viewer);
                drop(ended);
            }
        });
        Ok(())
    }
}

impl PixelsService {
    pub fn new(
        exports: Option<Arc<VideoExports>>,
        max_concurrent: usize,
        log: LogReader,
        notices: Sender<ExportNotice>,
    ) -> PixelsService {
        PixelsService {
            exports,
            log,
            notices,
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            live_views: Arc::default(),
        }
    }

    /// Whether pixels of `camera` can be asked for here.
    pub fn keeps_video(&self, camera: &str) -> bool {
        self.exports.as_ref().is_some_and(|e| e.keeps(camera))
    }

    /// The status page's picture of `camera`: the frame captured at `time` (a descriptor's),
    /// faces pixelated, and recorded with the caller's other live pictures of the camera that
    /// minute (see [`LiveViews`]).
    pub async fn live_picture(
        &self,
        caller: Option<Arc<Caller>>,
        camera: &str,
        time: UnixNanos,
    ) -> Result<pb::Snapshot, Status> {
        let record = || pb::PixelExport {
            from_time: Some(to_timestamp(time)),
            to_time: Some(to_timestamp(time)),
            ..export_record("live view", caller.as_deref(), 0, false)
        };
        if !self.keeps_video(camera) {
            let status = Status::not_found(format!("no video of camera {} is kept here", quoted(camera)));
            return self.refused(camera, record(), status);
        }
        let viewer = (
            caller.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
            camera.to_string(),
        );
        // The record's place is taken before any pixel is decoded.
        self.live_views.record(&viewer, || self.audit(camera, record()), None)?;
        let options = pb::SnapshotOptions {
            quality: LIVE_PICTURE_QUALITY,
            ..Default::default()
        };
        let wanted = Wanted {
            time,
            reach: LIVE_PICTURE_REACH_NS,
            max_width: Some(LIVE_PICTURE_WIDTH),
        };
        let picture = self
            .snapshot_pixels(caller.as_deref(), camera, wanted, None, &options)
            .await;
        // Its minute may have ended meanwhile: the picture then opens the next record.
        self.live_views
            .record(&viewer, || self.audit(camera, record()), Some(picture.as_ref()))?;
        picture
    }

    /// The record of an export of `camera`, its place taken (see [`AuditPlace`]).
    fn audit(&self, camera: &str, record: pb::PixelExport) -> AuditPlace {
        let kept = self.exports.as_ref().is_some_and(|e| e.keeps(camera));
        AuditPlace::take(&self.notices, kept, camera, record)
    }

    /// Records an export refused before it began, and returns the refusal.
    fn refused<T>(&self, camera: &str, record: pb::PixelExport, status: Status) -> Result<T, Status> {
        self.audit(camera, record).finish(Err(&status));
        Err(status)
    }

    /// What every export checks first: video is kept, a slot is free, `raw` is allowed.
    fn admit(&self, caller: Option<&Caller>, raw: bool) -> Result<(Arc<VideoExports>, OwnedSemaphorePermit), Status> {
        let exports = self.exports.clone().ok_or_else(|| {
            Status::failed_precondition("this node keeps no video (no [video] section in its config)")
        })?;
        // A node without tokens listens on loopback only: whoever reaches it may.
        if raw && caller.is_some_and(|c| !c.may(Scope::PixelsRaw)) {
            return Err(Status::permission_denied(format!(
                "unblurred pixels need the {:?} scope as well",
                Scope::PixelsRaw.as_str()
            )));
        }
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted("the most exports this node runs at once are running: try again shortly")
        })?;
        Ok((exports, slot))
    }

    /// The camera of a track: the one asked for, or that of the track's newest record.
    async fn track_camera(&self, track_id: u64, camera: &str) -> Result<String, Status> {
        if track_id == 0 {
            return Err(Status::invalid_argument("track_id must be set"));
        }
        if !camera.is_empty() {
            return match is_valid_camera_id(camera) {
                true => Ok(camera.to_string()),
                false => Err(Status::invalid_argument(format!(
                    "camera id {} is not valid",
                    quoted(camera)
                ))),
            };
        }
        let selection = Selection {
            track_id: Some(track_id),
            newest_first: true,
            ..Default::default()
        };
        let newest = self.log.select(selection, None, 1).await?;
        newest
            .first()
            .map(|(_, d)| d.camera_id.clone())
            .ok_or_else(|| Status::not_found(format!("the log holds no record of track {track_id}")))
    }

    /// The view of a track its snapshot shows: its ENDED event's best view, or the latest view
    /// of a track still going.
    async fn track_view(&self, track_id: u64, camera: &str) -> Result<pb::TrackView, Status> {
        let selection = Selection {
            camera_id: Some(camera.to_string()),
            track_id: Some(track_id),
            newest_first: true,
            ..Default::default()
        };
        let newest = self.log.select(selection, None, 256).await?;
        let mut latest_view = None;
        for (_, descriptor) in &newest {
            for event in descriptor.track_events.iter().filter(|e| e.track_id == track_id) {
                let Some(view) = &event.view else { continue };
                if event.kind == pb::TrackEventKind::Ended as i32 {
                    return Ok(view.clone());
                }
                latest_view.get_or_insert_with(|| view.clone());
            }
        }
        latest_view
            .ok_or_else(|| Status::not_found(format!("the log holds no view of track {track_id} of camera {camera}")))
    }

    /// The capture times of a track's first and last sighting.
    async fn track_span(&self, track_id: u64, camera: &str) -> Result<(UnixNanos, UnixNanos), Status> {
        let ends = |newest_first| Selection {
            camera_id: Some(camera.to_string()),
            track_id: Some(track_id),
            newest_first,
            ..Default::default()
        };
        let first = self.log.select(ends(false), None, 1).await?;
        let last = self.log.select(ends(true), None, 1).await?;
        let (Some((_, first)), Some((_, last))) = (first.first(), last.first()) else {
            return Err(Status::not_found(format!(
                "the log holds no record of track {track_id} of camera {camera}"
            )));
        };
        let time = |d: &pb::FrameDescriptor| d.capture_time.map(timestamp_nanos).unwrap_or_default();
        // An ended track's summary knows its first sighting, from before it was confirmed.
        let summary = last
            .track_events
            .iter()
            .find(|e| e.track_id == track_id)
            .and_then(|e| e.summary.as_ref());
        let from = summary
            .and_then(|s| s.first_seen)
            .map(timestamp_nanos)
            .unwrap_or_else(|| time(first));
        let to = summary
            .and_then(|s| s.last_seen)
            .map(timestamp_nanos)
            .unwrap_or_else(|| time(last));
        Ok((from, to.max(from)))
    }

    async fn snapshot(&self, caller: Option<Arc<Caller>>, ask: SnapshotAsk) -> Result<Response<pb::Snapshot>, Status> {
        let SnapshotAsk {
            kind,
            camera,
            time,
            track_id,
            bbox,
            options,
        } = ask;
        let record = pb::PixelExport {
            from_time: Some(to_timestamp(time)),
            to_time: Some(to_timestamp(time)),
            ..export_record(kind, caller.as_deref(), track_id, options.raw)
        };
        let mut place = self.audit(&camera, record);
        let result = match place.admit() {
            Ok(()) => {
                let wanted = Wanted {
                    time,
                    reach: SNAPSHOT_REACH_NS,
                    max_width: None,
                };
                self.snapshot_pixels(caller.as_deref(), &camera, wanted, bbox, &options)
                    .await
            }
            Err(status) => Err(status),
        };
        if let Ok(snapshot) = &result {
            place.record.frames = 1;
            place.record.faces_blurred = snapshot.faces_blurred;
        }
        place.finish(result.as_ref().map(|_| ()));
        result.map(Response::new)
    }

    async fn snapshot_pixels(
        &self,
        caller: Option<&Caller>,
        camera: &str,
        Wanted { time, reach, max_width }: Wanted,
        bbox: Option<[f32; 4]>,
        options: &pb::SnapshotOptions,
    ) -> Result<pb::Snapshot, Status> {
        let (exports, slot) = self.admit(caller, options.raw)?;
        let ring = exports.ring(camera)?;
        let quality = match options.quality {
            0 => DEFAULT_JPEG_QUALITY,
            q @ 1..=100 => q,
            q => return Err(Status::invalid_argument(format!("quality {q} is not in 1..=100"))),
        };
        if !(0.0..=10.0).contains(&options.crop_margin) {
            return Err(Status::invalid_argument("crop_margin must lie in 0..=10"));
        }
        let (camera, options) = (camera.to_string(), *options);
        let (earliest, latest) = (time.saturating_sub(reach), time.saturating_add(reach));
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            // The last seconds are in memory before they are in the ring.
            let mut nearest = exports
                .live
                .nearest(&camera, time, reach)
                .map_err(|e| Status::internal(format!("reading the newest video: {e}")))?;
            if nearest.is_none() {
                let coverage = ring
                    .cover(earliest, latest)
                    .map_err(|e| Status::internal(e.to_string()))?;
                let pinned = ring.pin(coverage);
                export::decode(&pinned.coverage.segments, earliest, latest, |frame| {
                    let after = frame.capture_time >= time;
                    let closer = nearest
                        .as_ref()
                        .is_none_or(|n| frame.capture_time.abs_diff(time) < n.capture_time.abs_diff(time));
                    if closer {
                        nearest = Some(frame);
                    }
                    Ok(if after { Next::Stop } else { Next::More })
                })
                .map_err(|e| Status::internal(format!("reading the video: {e}")))?;
            }
            let Some(TimedFrame {
                capture_time,
                mut image,
            }) = nearest
            else {
                return Err(Status::not_found(format!(
                    "no video of camera {camera} within {} ms of that time",
                    reach / 1_000_000
                )));
            };
            if let Some(width) = max_width.filter(|w| *w < image.width()) {
                let height = (u64::from(image.height()) * u64::from(width) / u64::from(image.width())).max(1) as u32;
                image = image::imageops::resize(&image, width, height, image::imageops::FilterType::Triangle);
            }
            let mut detector = (!options.raw).then(|| exports.take_detector()).transpose()?;
            let faces = faces_in(&mut detector, &image);
            if let Some(detector) = detector {
                exports.give_back(detector);
            }
            let faces = faces?;
            pixelate_faces(&mut image, &faces, exports.face_margin);
            let faces_blurred = faces.len() as u32;
            let (width, height) = image.dimensions();
            let picture = match bbox {
                Some(b) => mark(image, b, options.draw_box, options.crop_margin),
                None => image,
            };
            let jpeg = export::jpeg(&picture, quality as u8).map_err(|e| Status::internal(e.to_string()))?;
            Ok(pb::Snapshot {
                jpeg,
                camera_id: camera,
                capture_time: Some(to_timestamp(capture_time)),
                frame_width: width,
                frame_height: height,
                faces_blurred,
                raw: options.raw,
                r#box: bbox.map(|b| pb::BoundingBox {
                    x_min: b[0],
                    y_min: b[1],
                    x_max: b[2],
                    y_max: b[3],
                }),
            })
        })
        .await
        .map_err(|e| Status::internal(format!("snapshot task: {e}")))?
    }

    fn clip(&self, caller: Option<Arc<Caller>>, ask: ClipAsk) -> Result<Response<ClipStream>, Status> {
        let ClipAsk {
            kind,
            camera,
            from,
            to,
            track_id,
            raw,
        } = ask;
        let record = pb::PixelExport {
            from_time: Some(to_timestamp(from)),
            to_time: Some(to_timestamp(to)),
            ..export_record(kind, caller.as_deref(), track_id, raw)
        };
        let place = self.audit(&camera, record);
        let started = place
            .admit()
            .and_then(|()| self.start_clip(caller.as_deref(), &camera, from, to, raw));
        let (exports, slot, pinned) = match started {
            Ok(started) => started,
            Err(status) => {
                place.finish(Err(&status));
                return Err(status);
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut place = place;
            let mut summary = pb::ClipSummary::default();
            let outcome = encode_clip(&exports, &camera, &pinned.coverage, (from, to), raw, &tx, &mut summary);
            // What went out, however the clip ended.
            place.record.frames = summary.frames;
            place.record.faces_blurred = summary.faces_blurred;
            match outcome {
                Ok(()) => {
                    place.finish(Ok(()));
                    let _ = tx.blocking_send(Ok(pb::ClipChunk {
                        part: Some(pb::clip_chunk::Part::Summary(summary)),
                    }));
                }
                Err(status) => {
                    place.finish(Err(&status));
                    let _ = tx.blocking_send(Err(status));
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    fn start_clip(
        &self,
        caller: Option<&Caller>,
        camera: &str,
        from: UnixNanos,
        to: UnixNanos,
        raw: bool,
    ) -> Result<(Arc<VideoExports>, OwnedSemaphorePermit, Pinned), Status> {
        if to <= from {
            return Err(Status::invalid_argument("to_time must come after from_time"));
        }
        let (exports, slot) = self.admit(caller, raw)?;
        // Saturating: times from a request can be anything a Timestamp holds.
        if to.saturating_sub(from) > exports.max_clip_ns {
            return Err(Status::out_of_range(format!(
                "a clip covers at most {} s (video.max_clip_seconds)",
                exports.max_clip_ns / 1_000_000_000
            )));
        }
        let ring = exports.ring(camera)?;
        let coverage = ring.cover(from, to).map_err(|e| Status::internal(e.to_string()))?;
        if coverage.segments.is_empty() {
            return Err(Status::not_found(format!(
                "no video of camera {camera} in that interval"
            )));
        }
        Ok((exports, slot, ring.pin(coverage)))
    }
}

type ClipStream = ReceiverStream<Result<pb::ClipChunk, Status>>;

/// A snapshot asked for, by time or by track.
struct SnapshotAsk {
    kind: &'static str,
    camera: String,
    time: UnixNanos,
    track_id: u64,
    bbox: Option<[f32; 4]>,
    options: pb::SnapshotOptions,
}

/// A clip asked for, by interval or by track.
struct ClipAsk {
    kind: &'static str,
    camera: String,
    from: UnixNanos,
    to: UnixNanos,
    track_id: u64,
    raw: bool,
}

/// Decodes, blurs and encodes the clip, sending its info, then its bytes as they come.
fn encode_clip(
    exports: &VideoExports,
    camera: &str,
    coverage: &Coverage,
    (from, to): (UnixNanos, UnixNanos),
    raw: bool,
    tx: &tokio::sync::mpsc::Sender<Result<pb::ClipChunk, Status>>,
    summary: &mut pb::ClipSummary,
) -> Result<(), Status> {
    let bytes_tx = tx.clone();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = sent.clone();
    let mut writer = Mp4Writer::new(move |bytes| {
        counted.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for piece in bytes.chunks(CHUNK_BYTES) {
            let chunk = pb::ClipChunk {
                part: Some(pb::clip_chunk::Part::Data(piece.to_vec())),
            };
            bytes_tx.blocking_send(Ok(chunk)).map_err(|_| ())?;
        }
        Ok(())
    })
    .map_err(|e| Status::internal(e.to_string()))?;
    let mut detector = (!raw).then(|| exports.take_detector()).transpose()?;
    let mut first_last: Option<(UnixNanos, UnixNanos)> = None;
    let mut window = FaceWindow::default();
    let result = export::decode(&coverage.segments, from, to, |frame| {
        let faces =
            faces_in(&mut detector, &frame.image).map_err(|s| crate::Error::Internal(s.message().to_string()))?;
        if first_last.is_none() {
            let (width, height) = frame.image.dimensions();
            let info = pb::ClipInfo {
                camera_id: camera.to_string(),
                from_time: Some(to_timestamp(from)),
                to_time: Some(to_timestamp(to)),
                gaps: coverage
                    .gaps
                    .iter()
                    .map(|&(a, b)| pb::TimeRange {
                        from_time: Some(to_timestamp(a)),
                        to_time: Some(to_timestamp(b)),
                    })
                    .collect(),
                frame_width: width,
                frame_height: height,
                raw,
            };
            let chunk = pb::ClipChunk {
                part: Some(pb::clip_chunk::Part::Info(info)),
            };
            if tx.blocking_send(Ok(chunk)).is_err() {
                return Ok(Next::Stop);
            }
        }
        let first = first_last.map_or(frame.capture_time, |(first, _)| first);
        first_last = Some((first, frame.capture_time));
        summary.frames += 1;
        summary.faces_blurred += faces.len() as u32;
        if let Some(ready) = window.push(frame, faces, exports.face_margin) {
            writer.push(&ready)?;
        }
        Ok(Next::More)
    });
    if let Some(detector) = detector {
        exports.give_back(detector);
    }
    result.map_err(|e| Status::internal(format!("clip: {e}")))?;
    for ready in window.drain(exports.face_margin) {
        writer
            .push(&ready)
            .map_err(|e| Status::internal(format!("clip: {e}")))?;
    }
    let Some((first, last)) = first_last else {
        return Err(Status::not_found(format!(
            "no frame of camera {camera} in that interval"
        )));
    };
    writer
        .finish(ENCODER_FINISH)
        .map_err(|e| Status::internal(format!("clip: {e}")))?;
    summary.first_frame = Some(to_timestamp(first));
    summary.last_frame = Some(to_timestamp(last));
    summary.bytes = sent.load(std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Crops `image` to `bbox` (normalised) grown by `margin` of its size, or keeps the whole frame
/// when `margin` is 0; draws the box if asked.
fn mark(mut image: image::RgbImage, bbox: [f32; 4], draw: bool, margin: f32) -> image::RgbImage {
    let (width, height) = image.dimensions();
    let to_px = |b: [f32; 4]| {
        [
            (b[0].clamp(0.0, 1.0) * width as f32) as u32,
            (b[1].clamp(0.0, 1.0) * height as f32) as u32,
            (b[2].clamp(0.0, 1.0) * width as f32) as u32,
            (b[3].clamp(0.0, 1.0) * height as f32) as u32,
        ]
    };
    let [x0, y0, x1, y1] = to_px(bbox);
    if draw {
        draw_rectangle(&mut image, [x0, y0, x1, y1], image::Rgb([255, 32, 32]));
    }
    if margin <= 0.0 {
        return image;
    }
    let (bw, bh) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let grown = [
        bbox[0] - bw * margin,
        bbox[1] - bh * margin,
        bbox[2] + bw * margin,
        bbox[3] + bh * margin,
    ];
    let [cx0, cy0, cx1, cy1] = to_px(grown);
    let (w, h) = (cx1.saturating_sub(cx0).max(1), cy1.saturating_sub(cy0).max(1));
    image::imageops::crop_imm(&image, cx0.min(width - 1), cy0.min(height - 1), w, h).to_image()
}

/// A rectangle outline, two pixels wide, clipped to the image.
fn draw_rectangle(image: &mut image::RgbImage, [x0, y0, x1, y1]: [u32; 4], colour: image::Rgb<u8>) {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return;
    }
    let (x1, y1) = (x1.min(width - 1), y1.min(height - 1));
    for t in 0..2 {
        for x in x0..=x1 {
            for y in [y0.saturating_add(t).min(y1), y1.saturating_sub(t).max(y0)] {
                image.put_pixel(x, y, colour);
            }
        }
        for y in y0..=y1 {
            for x in [x0.saturating_add(t).min(x1), x1.saturating_sub(t).max(x0)] {
                image.put_pixel(x, y, colour);
            }
        }
    }
}

fn bbox_of(b: pb::BoundingBox) -> Result<[f32; 4], Status> {
    let bbox = [b.x_min, b.y_min, b.x_max, b.y_max];
    let ordered = b.x_min <= b.x_max && b.y_min <= b.y_max;
    if !ordered || !bbox.iter().all(|v| (0.0..=1.0).contains(v)) {
        return Err(Status::invalid_argument("box: need 0 <= min <= max <= 1"));
    }
    Ok(bbox)
}

fn time_of(t: Option<prost_types::Timestamp>, name: &str) -> Result<UnixNanos, Status> {
    t.map(timestamp_nanos)
        .ok_or_else(|| Status::invalid_argument(format!("{name} must be set")))
}

#[tonic::async_trait]
impl Pixels for PixelsService {
    async fn get_snapshot(&self, request: Request<pb::SnapshotRequest>) -> Result<Response<pb::Snapshot>, Status> {
        let caller = super::service::caller(&request);
        let request = request.into_inner();
        let options = request.options.unwrap_or_default();
        let record = || export_record("snapshot", caller.as_deref(), 0, options.raw);
        let time = match time_of(request.time, "time") {
            Ok(time) => time,
            Err(status) => return self.refused(&request.camera_id, record(), status),
        };
        let bbox = match request.r#box.map(bbox_of).transpose() {
            Ok(bbox) => bbox,
            Err(status) => return self.refused(&request.camera_id, record(), status),
        };
        let ask = SnapshotAsk {
            kind: "snapshot",
            camera: request.camera_id,
            time,
            track_id: 0,
            bbox,
            options,
        };
        self.snapshot(caller, ask).await
    }

    async fn get_track_snapshot(
        &self,
        request: Request<pb::TrackSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let caller = super::service::caller(&request);
        let request = request.into_inner();
        let options = request.options.unwrap_or_default();
        let record = || export_record("track snapshot", caller.as_deref(), request.track_id, options.raw);
        let camera = match self.track_camera(request.track_id, &request.camera_id).await {
            Ok(camera) => camera,
            Err(status) => return self.refused(&request.camera_id, record(), status),
        };
        let view = match self.track_view(request.track_id, &camera).await {
            Ok(view) => view,
            Err(status) => return self.refused(&camera, record(), status),
        };
        let time = view.capture_time.map(timestamp_nanos).unwrap_or_default();
        let bbox = crate::wire::decode_box_q16(view.box_q16);
        let ask = SnapshotAsk {
            kind: "track snapshot",
            camera,
            time,
            track_id: request.track_id,
            bbox: Some(bbox),
            options,
        };
        self.snapshot(caller, ask).await
    }

    type GetClipStream = ClipStream;

    async fn get_clip(&self, request: Request<pb::ClipRequest>) -> Result<Response<ClipStream>, Status> {
        let caller = super::service::caller(&request);
        let request = request.into_inner();
        let record = || export_record("clip", caller.as_deref(), 0, request.raw);
        let interval =
            time_of(request.from_time, "from_time").and_then(|from| Ok((from, time_of(request.to_time, "to_time")?)));
        let (from, to) = match interval {
            Ok(interval) => interval,
            Err(status) => return self.refused(&request.camera_id, record(), status),
        };
        let ask = ClipAsk {
            kind: "clip",
            camera: request.camera_id,
            from,
            to,
            track_id: 0,
            raw: request.raw,
        };
        self.clip(caller, ask)
    }

    type GetTrackClipStream = ClipStream;

    async fn get_track_clip(&self, request: Request<pb::TrackClipRequest>) -> Result<Response<ClipStream>, Status> {
        let caller = super::service::caller(&request);
        let request = request.into_inner();
        let record = || export_record("track clip", caller.as_deref(), request.track_id, request.raw);
        let margin = match request.margin_seconds {
            0.0 => DEFAULT_TRACK_MARGIN,
            m if (0.0..=60.0).contains(&m) => Duration::from_secs_f32(m),
            _ => {
                let status = Status::invalid_argument("margin_seconds must lie in 0..=60");
                return self.refused(&request.camera_id, record(), status);
            }
        };
        let camera = match self.track_camera(request.track_id, &request.camera_id).await {
            Ok(camera) => camera,
            Err(status) => return self.refused(&request.camera_id, record(), status),
        };
        let (first, last) = match self.track_span(request.track_id, &camera).await {
            Ok(span) => span,
            Err(status) => return self.refused(&camera, record(), status),
        };
        let margin = margin.as_nanos() as i64;
        let ask = ClipAsk {
            kind: "track clip",
            camera,
            from: first.saturating_sub(margin),
            to: last.saturating_add(margin),
            track_id: request.track_id,
            raw: request.raw,
        };
        self.clip(caller, ask)
    }
}

/// The frame a snapshot is of, and how it is sent.
struct Wanted {
    time: UnixNanos,
    /// The frame nearest `time` must be this close to it.
    reach: UnixNanos,
    /// Scaled down to at most this width, before faces are searched (they are searched in what
    /// is sent).
    max_width: Option<u32>,
}

/// An export's record before its outcome is known.
fn export_record(kind: &str, caller: Option<&Caller>, track_id: u64, raw: bool) -> pb::PixelExport {
    pb::PixelExport {
        kind: kind.into(),
        caller: caller.map(|c| c.name.clone()).unwrap_or_default(),
        track_id,
        raw,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of fine stripes: pixelation turns the face's box grey-ish and flat.
    fn striped(capture_time: UnixNanos) -> TimedFrame {
        let image = image::RgbImage::from_fn(64, 64, |x, _| {
            if x % 2 == 0 {
                image::Rgb([255; 3])
            } else {
                image::Rgb([0; 3])
            }
        });
        TimedFrame { capture_time, image }
    }

    fn pixelated(frame: &TimedFrame) -> bool {
        let p = |x| frame.image.get_pixel(x, 20)[0];
        // Neighbouring stripes differ unless the box was averaged into blocks.
        p(20) == p(21)
    }

    #[test]
    fn a_face_found_in_one_frame_is_pixelated_in_its_neighbours_too() {
        let face = Face {
            bbox: [16.0, 16.0, 32.0, 32.0],
            score: 0.9,
        };
        let mut window = FaceWindow::default();
        let mut sent = Vec::new();
        for i in 0..10 {
            let faces = if i == 4 { vec![face] } else { Vec::new() };
            sent.extend(window.push(striped(i), faces, 0.0));
        }
        sent.extend(window.drain(0.0));
        let times: Vec<UnixNanos> = sent.iter().map(|f| f.capture_time).collect();
        assert_eq!(times, (0..10).collect::<Vec<_>>(), "every frame, in order");
        let hidden: Vec<UnixNanos> = sent.iter().filter(|f| pixelated(f)).map(|f| f.capture_time).collect();
        // Frame 4's face, FACE_REACH_FRAMES (3) either side.
        assert_eq!(hidden, [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_crop_is_the_box_grown_by_its_margin_and_stays_in_the_frame() {
        let image = image::RgbImage::new(200, 100);
        let crop = mark(image.clone(), [0.25, 0.25, 0.75, 0.75], false, 0.1);
        assert_eq!(crop.dimensions(), (120, 60));
        let edge = mark(image, [0.9, 0.0, 1.0, 1.0], true, 0.5);
        assert_eq!(edge.dimensions(), (30, 100), "clipped at the frame's edge");
    }

    #[test]
    fn an_export_whose_record_cannot_be_queued_is_refused_and_one_cut_short_is_recorded_so() {
        let (notices, mut describe_side) = tokio::sync::mpsc::channel(1);
        let record = || pb::PixelExport {
            kind: "clip".into(),
            ..Default::default()
        };
        // The describe stage is behind: its queue is full.
        let held = notices.try_reserve().unwrap();
        let refused = AuditPlace::take(&notices, true, "door", record()).admit().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
        drop(held);
        // A camera whose video is not kept needs no place in the queue (its records go to the
        // node's log): nothing of it can be exported anyway.
        AuditPlace::take(&notices, false, "nowhere", record()).admit().unwrap();
        assert!(describe_side.try_recv().is_err(), "no record queued for it");
        // With room, the export goes on; a task that fails without an outcome still leaves its
        // record.
        let place = AuditPlace::take(&notices, true, "door", record());
        place.admit().unwrap();
        drop(place);
        let notice = describe_side.try_recv().unwrap();
        assert_eq!(notice.camera_id, "door");
        assert!(
            notice.export.refused.contains("stopped before its end"),
            "{:?}",
            notice.export
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_view_is_one_record_a_minute_with_its_pictures_and_refusals() {
        let (notices, mut describe_side) = tokio::sync::mpsc::channel(4);
        let views = Arc::new(LiveViews::default());
        let viewer = ("installer".to_string(), "door".to_string());
        let take = || {
            let record = export_record("live view", None, 0, false);
            AuditPlace::take(&notices, true, "door", record)
        };
        let picture = |second: i64, faces| pb::Snapshot {
            capture_time: Some(to_timestamp(second * 1_000_000_000)),
            faces_blurred: faces,
            ..Default::default()
        };
        // Its place is taken before the first picture is made.
        views.record(&viewer, take, None).unwrap();
        views.record(&viewer, take, Some(Ok(&picture(10, 1)))).unwrap();
        views.record(&viewer, take, Some(Ok(&picture(11, 0)))).unwrap();
        let missed = Status::not_found("no video of camera door within 20 ms of that time");
        views.record(&viewer, take, Some(Err(&missed))).unwrap();
        views.record(&viewer, take, Some(Ok(&picture(12, 2)))).unwrap();
        tokio::time::sleep(LIVE_VIEW_RECORD - Duration::from_secs(1)).await;
        assert!(describe_side.try_recv().is_err(), "nothing written within the minute");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let written = describe_side.try_recv().unwrap().export;
        assert_eq!(
            (
                written.kind.as_str(),
                written.frames,
                written.faces_blurred,
                written.refusals
            ),
            ("live view", 3, 3, 1)
        );
        assert_eq!(written.from_time, picture(10, 0).capture_time);
        assert_eq!(written.to_time, picture(12, 0).capture_time);
        assert!(written.refused.is_empty(), "pictures were sent: {written:?}");
        assert!(describe_side.try_recv().is_err(), "one record");

        // A minute with nothing sent says why; the next picture opens a new record.
        views.record(&viewer, take, Some(Err(&missed))).unwrap();
        tokio::time::sleep(LIVE_VIEW_RECORD + Duration::from_secs(1)).await;
        let written = describe_side.try_recv().unwrap().export;
        assert_eq!((written.frames, written.refusals), (0, 1));
        assert!(written.refused.contains("within 20 ms"), "{written:?}");

        // The describe stage is behind: the picture is refused, not sent unrecorded.
        let held: Vec<_> = (0..4).map(|_| notices.try_reserve().unwrap()).collect();
        let refused = views.record(&viewer, take, None).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        drop(held);
        // When the services end, the record open is written.
        views.record(&viewer, take, Some(Ok(&picture(20, 0)))).unwrap();
        drop(views);
        tokio::task::yield_now().await;
        let mut written = Vec::new();
        while let Ok(notice) = describe_side.try_recv() {
            written.push(notice.export);
        }
        assert!(written.iter().any(|e| e.frames == 1), "{written:?}");
    }
}
