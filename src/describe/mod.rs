//! Describe: analysis results become compact descriptors. Results of one camera are put back in
//! capture order (workers finish out of order) and numbered; each camera's detections are tracked
//! ([`track`]), and the emission policy ([`emit`]) decides what of the tracks is sent, with
//! embeddings encoded by the configured codec ([`codec`]).

pub mod codec;
pub mod count;
pub mod emit;
pub mod projection;
pub mod track;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, Instant};

use self::codec::Encoder;
use self::count::Counter;
use self::emit::{Emission, Emitter};
use self::track::{EndReason, TrackEvent, Tracker};
use crate::clock::to_timestamp;
use crate::config::DescribeConfig;
use crate::infer::{Analysis, Detection};
use crate::ingest::CameraStatus;
use crate::metrics::Metrics;
use crate::pb;
use crate::wire::normalised;

/// Results further ahead than this of a missing one mean it will never come (a worker died):
/// stop waiting for it rather than stall the camera.
const MAX_REORDER: usize = 64;

/// How often cameras are checked for having gone silent with tracks still open.
const SILENCE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// What every descriptor of the node says about where it comes from.
pub struct Origin {
    pub node_id: String,
    pub node_run_id: u64,
}

/// What descriptors of one model set say about their models, and how its embeddings are
/// encoded (a new embedder brings its own projection).
#[derive(Clone)]
pub struct ModelContext {
    /// [`crate::infer::ModelSetInfo::generation`] of the set.
    pub generation: u64,
    pub detector: pb::ModelRef,
    pub embedder: Option<pb::ModelRef>,
    pub class_names: Vec<String>,
    pub encoder: Encoder,
    /// Why the node switched to this set, for [`pb::ModelChange::reason`]; empty for the set it
    /// started with.
    pub switch_reason: String,
}

/// The contexts of the model sets the node has run, by generation: the node adds a set's before
/// any worker analyses a frame with it.
#[derive(Clone, Default)]
pub struct ModelContexts(Arc<RwLock<BTreeMap<u64, Arc<ModelContext>>>>);

impl ModelContexts {
    pub fn add(&self, context: ModelContext) {
        if let Ok(mut all) = self.0.write() {
            all.insert(context.generation, Arc::new(context));
        }
    }

    /// The context of `from` again, as generation `to`: a set that comes back.
    pub fn renumber(&self, from: u64, to: u64, switch_reason: &str) {
        if let Some(context) = self.get(from) {
            self.add(ModelContext {
                generation: to,
                switch_reason: switch_reason.to_string(),
                ..(*context).clone()
            });
        }
    }

    fn get(&self, generation: u64) -> Option<Arc<ModelContext>> {
        self.0.read().ok()?.get(&generation).cloned()
    }
}

/// What a camera has handed out so far: the log keeps it with every commit, so that numbering
/// goes on after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CameraCounters {
    pub next_sequence: u64,
    pub next_track: u64,
}

/// Where each camera's numbering resumes: from the log for cameras it has seen, from `floor` for
/// the others.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    pub cameras: HashMap<String, CameraCounters>,
    pub floor: CameraCounters,
}

/// Pixels of a camera were asked for (`deliver::pixels`): a record in the camera's stream.
#[derive(Debug, Clone)]
pub struct ExportNotice {
    pub camera_id: String,
    /// When it was asked for: the record's capture time.
    pub at: crate::clock::UnixNanos,
    pub export: pb::PixelExport,
}

pub struct Describer {
    origin: Origin,
    /// Export records to number and publish between frames.
    notices: Option<tokio::sync::mpsc::Receiver<ExportNotice>>,
    contexts: ModelContexts,
    config: DescribeConfig,
    cameras: HashMap<String, CameraState>,
    /// Where each camera's numbering resumes (from the log), for cameras not seen yet this run.
    resume: Resume,
}

struct CameraState {
    /// `CameraStatus::instance` whose tickets these are.
    instance: u64,
    next_ticket: u64,
    next_sequence: u64,
    waiting: BTreeMap<u64, Analysis>,
    /// The model set of the last frame described; `None` before the first.
    models: Option<Arc<ModelContext>>,
    tracker: Tracker,
    emitter: Emitter,
    /// Its zones and lines.
    counter: Counter,
    /// The last frame described, for the descriptor that ends the camera's tracks.
    last_frame: Option<Analysis>,
    /// When the last result of this camera came in.
    last_result_at: Instant,
    /// Its capture-to-publish histogram, resolved once rather than per frame.
    latency: prometheus_client::metrics::histogram::Histogram,
}

impl Describer {
    pub fn new(origin: Origin, contexts: ModelContexts, config: DescribeConfig, resume: Resume) -> Self {
        Describer {
            origin,
            notices: None,
            contexts,
            config,
            cameras: HashMap::new(),
            resume,
        }
    }

    /// Export records sent on `notices` become descriptors of their camera.
    pub fn with_notices(mut self, notices: tokio::sync::mpsc::Receiver<ExportNotice>) -> Self {
        self.notices = Some(notices);
        self
    }

    /// Consumes results until every worker is gone, publishing each descriptor in order; then
    /// ends every camera's tracks.
    pub fn run(
        mut self,
        results: mpsc::Receiver<Analysis>,
        metrics: &Metrics,
        mut publish: impl FnMut(pb::FrameDescriptor, CameraCounters),
    ) {
        let mut last_check = Instant::now();
        loop {
            match results.recv_timeout(SILENCE_CHECK_INTERVAL) {
                Ok(analysis) => self.accept(analysis, metrics, &mut publish),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while let Some(notice) = self.notices.as_mut().and_then(|n| n.try_recv().ok()) {
                self.note_export(notice, &mut publish);
            }
            if last_check.elapsed() >= SILENCE_CHECK_INTERVAL {
                last_check = Instant::now();
                self.end_tracks_of_stopped_cameras(metrics, &mut publish);
            }
        }
        self.finish(metrics, &mut publish);
    }

    /// Ends the tracks of cameras that stopped delivering frames (dead, reconnecting, removed, a
    /// file that ended), so the centre gets their summaries now rather than when the camera comes
    /// back, hours later perhaps. A camera that streams but is analysed rarely is left alone: its
    /// next frame decides, as the tracker's `max_age_seconds` says.
    fn end_tracks_of_stopped_cameras(
        &mut self,
        metrics: &Metrics,
        publish: &mut impl FnMut(pb::FrameDescriptor, CameraCounters),
    ) {
        // Validated as (0, 3600] by the config; anything else must not panic here.
        let max_silence = Duration::try_from_secs_f64(self.config.tracker.max_age_seconds).unwrap_or(Duration::MAX);
        for state in self.cameras.values_mut() {
            let Some(camera) = state.last_frame.as_ref().map(|f| &f.camera) else {
                continue;
            };
            let streaming = matches!(camera.condition().state, pb::CameraState::Streaming);
            if streaming || state.last_result_at.elapsed() <= max_silence {
                continue;
            }
            let ended = state.end_tracks(&self.origin, EndReason::Finished, metrics);
            if let Some(last) = ended.first() {
                tracing::info!(camera = %last.camera_id, tracks = last.track_events.len(),
                    "camera stopped delivering frames: its tracks are ended");
            }
            for descriptor in ended {
                publish(descriptor, state.counters());
            }
        }
    }

    /// The export record as the camera's next descriptor: numbered in its sequence, with the
    /// models it runs, no objects.
    fn note_export(&mut self, notice: ExportNotice, publish: &mut impl FnMut(pb::FrameDescriptor, CameraCounters)) {
        let (sequence, counters, models, position, at) = match self.cameras.get_mut(&notice.camera_id) {
            Some(state) => {
                let sequence = state.next_sequence;
                state.next_sequence += 1;
                let position = state.last_frame.as_ref().and_then(|f| f.camera.position());
                // Never before the camera's last frame: a camera's records stay in time order
                // when its clock runs ahead of the node's.
                let last_capture = state.last_frame.as_ref().map(|f| f.capture_time);
                let at = notice.at.max(last_capture.unwrap_or(notice.at));
                (sequence, state.counters(), state.models.clone(), position, at)
            }
            // A camera without a frame this run: numbered on from where the log left it.
            None => {
                let floor = self.resume.floor;
                let resume = self.resume.cameras.entry(notice.camera_id.clone()).or_insert(floor);
                let sequence = resume.next_sequence;
                resume.next_sequence += 1;
                (sequence, *resume, None, None, notice.at)
            }
        };
        let descriptor = pb::FrameDescriptor {
            node_id: self.origin.node_id.clone(),
            camera_id: notice.camera_id,
            sequence,
            capture_time: Some(to_timestamp(at)),
            node_run_id: self.origin.node_run_id,
            detector: models.as_ref().map(|m| m.detector.clone()),
            embedder: models.as_ref().and_then(|m| m.embedder.clone()),
            camera_position: position,
            pixel_export: Some(notice.export),
            ..Default::default()
        };
        publish(descriptor, counters);
    }

    pub fn accept(
        &mut self,
        analysis: Analysis,
        metrics: &Metrics,
        publish: &mut impl FnMut(pb::FrameDescriptor, CameraCounters),
    ) {
        let instance = analysis.camera.instance;
        // Track ids start from the node's start second (see `track`).
        let epoch = self.origin.node_run_id / 1_000_000_000;
        let state = self.cameras.entry(analysis.camera.id.clone()).or_insert_with(|| {
            let resume = self
                .resume
                .cameras
                .remove(&analysis.camera.id)
                .unwrap_or(self.resume.floor);
            let mut tracker = Tracker::new(self.config.tracker.clone(), epoch);
            tracker.continue_from(resume.next_track);
            CameraState {
                instance,
                next_ticket: 0,
                next_sequence: resume.next_sequence,
                waiting: BTreeMap::new(),
                models: None,
                tracker,
                emitter: Emitter::new(self.config.emission.clone()),
                counter: Counter::new(analysis.camera.counting_places(), self.config.counting.clone()),
                last_frame: None,
                last_result_at: Instant::now(),
                latency: metrics.capture_to_publish(&analysis.camera.id),
            }
        });
        state.last_result_at = Instant::now();
        if instance != state.instance {
            if instance < state.instance {
                return; // a late result of a camera removed since: nobody asks for it any more
            }
            // The camera was removed and added again: its tickets start afresh, its old tracks end;
            // its sequence numbers and track ids go on, so subscribers still see one stream per id.
            for descriptor in state.end_tracks(&self.origin, EndReason::Finished, metrics) {
                publish(descriptor, state.counters());
            }
            state.instance = instance;
            state.next_ticket = 0;
            state.waiting.clear();
        }
        if analysis.ticket < state.next_ticket {
            // Given up on (see MAX_REORDER): publishing it now would take its camera back in time.
            tracing::warn!(camera = %analysis.camera.id, ticket = analysis.ticket, "a result came after it was given up on; dropped");
            return;
        }
        state.waiting.insert(analysis.ticket, analysis);
        if state.waiting.len() > MAX_REORDER
            && let Some(&oldest) = state.waiting.keys().next()
        {
            state.next_ticket = oldest;
        }
        while let Some(analysis) = state.waiting.remove(&state.next_ticket) {
            state.next_ticket += 1;
            if analysis.detections.is_err() {
                // Already logged by the worker; a failed frame has no descriptor and no number.
                metrics.frame_failed();
                continue;
            }
            let generation = analysis.models.generation;
            let current = state.models.as_ref().map_or(generation, |m| m.generation);
            if generation < current {
                // Analysed by the set before a swap after a frame of the new set: describing it
                // would take the camera's tracks back to the old model.
                tracing::debug!(camera = %analysis.camera.id, generation, "a frame of a replaced model set; dropped");
                metrics.frame_failed();
                continue;
            }
            let mut change = None;
            if state.models.is_none() || generation > current {
                let Some(context) = self.contexts.get(generation) else {
                    tracing::error!(generation, "no describe context for a model set; frame dropped");
                    metrics.frame_failed();
                    continue;
                };
                // Appearance vectors of two embedders are not comparable, nor boxes of two
                // detectors: every track of the camera ends where the set changed.
                if generation > current {
                    for descriptor in state.end_tracks(&self.origin, EndReason::ModelChanged, metrics) {
                        publish(descriptor, state.counters());
                    }
                }
                if let Some(before) = state.models.replace(context.clone()) {
                    change = Some(pb::ModelChange {
                        generation,
                        reason: context.switch_reason.clone(),
                        previous_detector: Some(before.detector.clone()),
                        previous_embedder: before.embedder.clone(),
                        class_names: context.class_names.clone(),
                    });
                }
            }
            let captured = analysis.capture_time;
            let mut count_records = Vec::new();
            let mut descriptor = state.describe(analysis, &self.origin, &self.config, metrics, &mut count_records);
            descriptor.model_change = change;
            for record in count_records {
                publish(record, state.counters());
            }
            publish(descriptor, state.counters());
            // A capture time ahead of the node's clock (a camera's own clock) counts as 0.
            let latency = crate::clock::now_unix_nanos().saturating_sub(captured).max(0);
            state.latency.observe(latency as f64 / 1e9);
        }
    }

    /// Ends the tracks of every camera (the node is stopping).
    pub fn finish(&mut self, metrics: &Metrics, publish: &mut impl FnMut(pb::FrameDescriptor, CameraCounters)) {
        for state in self.cameras.values_mut() {
            for descriptor in state.end_tracks(&self.origin, EndReason::Finished, metrics) {
                publish(descriptor, state.counters());
            }
        }
    }
}

/// Encodes for the wire, logging what cannot be (a non-finite embedding: the view goes without).
fn encoder_fn(encoder: &Encoder) -> impl FnMut(&[f32]) -> Option<pb::Embedding> + '_ {
    move |v| match encoder.encode(v) {
        Ok(embedding) => Some(embedding),
        Err(err) => {
            tracing::warn!(%err, "embedding not encoded");
            None
        }
    }
}

impl CameraState {
    /// The camera's numbering after what it has described so far.
    fn counters(&self) -> CameraCounters {
        CameraCounters {
            next_sequence: self.next_sequence,
            next_track: self.tracker.upcoming_id(),
        }
    }

    /// `self.models` must be set. Count records the frame closes go to `count_records`, to be
    /// published before it.
    fn describe(
        &mut self,
        analysis: Analysis,
        origin: &Origin,
        config: &DescribeConfig,
        metrics: &Metrics,
        count_records: &mut Vec<pb::FrameDescriptor>,
    ) -> pb::FrameDescriptor {
        let Some(models) = self.models.clone() else {
            return self.descriptor(&analysis, origin);
        };
        CameraStatus::count(&analysis.camera.frames_analysed);
        let places = analysis.camera.counting_places();
        if !Arc::ptr_eq(self.counter.places(), &places) {
            if **self.counter.places() == *places {
                // The camera was updated, its places were not.
                self.counter.keep_places(places);
            } else {
                let mut events = Vec::new();
                let report = self.counter.finish(&mut events);
                count_records.extend(self.count_record(origin, report, events, metrics));
                self.counter = Counter::new(places, config.counting.clone());
            }
        }
        let report = self.counter.start_frame(analysis.capture_time);
        count_records.extend(self.count_record(origin, report, Vec::new(), metrics));
        let detections = analysis.detections.as_deref().unwrap_or_default();
        let update = self.tracker.update(analysis.capture_time, detections);
        if update.invalid_detections > 0 {
            tracing::debug!(camera = %analysis.camera.id, count = update.invalid_detections,
                "malformed detections skipped by the tracker");
        }
        let frame = (analysis.frame_width, analysis.frame_height);
        let mut encode = encoder_fn(&models.encoder);
        let Emission { tracks, events } =
            self.emitter
                .frame(analysis.capture_time, frame, &update, detections, &mut encode);
        let objects = if config.send_detections {
            let mut track_of = vec![0; detections.len()];
            for tracked in &update.tracks {
                if let Some(slot) = track_of.get_mut(tracked.detection) {
                    *slot = tracked.track_id;
                }
            }
            detections
                .iter()
                .zip(track_of)
                .map(|(d, track_id)| detected_object(d, frame, track_id, &models.class_names, &mut encode))
                .collect()
        } else {
            Vec::new()
        };
        let zone_events = self.count(&analysis, &update, &models.class_names, metrics);
        let mut descriptor = self.descriptor(&analysis, origin);
        descriptor.objects = objects;
        descriptor.tracks = tracks;
        descriptor.track_events = events;
        descriptor.zone_events = zone_events;
        self.last_frame = Some(Analysis {
            detections: Ok(Vec::new()),
            ..analysis
        });
        descriptor
    }

    /// What the frame's tracks did at the camera's zones and lines; counted in `metrics`.
    fn count(
        &mut self,
        analysis: &Analysis,
        update: &track::TrackUpdate,
        class_names: &[String],
        metrics: &Metrics,
    ) -> Vec<pb::ZoneEvent> {
        let mut zone_events = Vec::new();
        // Most cameras count nothing: no work per frame for them.
        if self.counter.places().is_empty() {
            return zone_events;
        }
        let (width, height) = (analysis.frame_width, analysis.frame_height);
        let box_in_frame = |b: [f32; 4]| {
            [
                normalised(b[0], width),
                normalised(b[1], height),
                normalised(b[2], width),
                normalised(b[3], height),
            ]
        };
        let mut first_seen = HashMap::new();
        for event in &update.events {
            match event {
                TrackEvent::Ended(ended) => self.counter.end_track(ended.track_id, &mut zone_events),
                TrackEvent::Confirmed {
                    track_id,
                    first_bbox,
                    first_seen_ns,
                    ..
                } => {
                    first_seen.insert(*track_id, (*first_seen_ns, box_in_frame(*first_bbox)));
                }
            }
        }
        for tracked in &update.tracks {
            let class_name = class_names.get(tracked.class_id as usize).map_or("", String::as_str);
            self.counter.observe(
                tracked.track_id,
                (tracked.class_id, class_name),
                analysis.capture_time,
                box_in_frame(tracked.bbox),
                first_seen.get(&tracked.track_id).copied(),
                &mut zone_events,
            );
        }
        self.count_in_metrics(&analysis.camera.id, &zone_events, metrics);
        zone_events
    }

    fn count_in_metrics(&self, camera: &str, events: &[pb::ZoneEvent], metrics: &Metrics) {
        let class_names = self
            .models
            .as_ref()
            .map(|m| m.class_names.as_slice())
            .unwrap_or_default();
        for event in events {
            let class_name = class_names.get(event.class_id as usize).map_or("", String::as_str);
            metrics.zone_event(camera, event, class_name);
        }
    }

    /// A count record of this camera: `report`, and the zone events of tracks ended with it;
    /// dated at the report's end. `None` without a report.
    fn count_record(
        &mut self,
        origin: &Origin,
        report: Option<pb::CountReport>,
        zone_events: Vec<pb::ZoneEvent>,
        metrics: &Metrics,
    ) -> Option<pb::FrameDescriptor> {
        let report = report?;
        let last = self.last_frame.take()?;
        self.count_in_metrics(&last.camera.id, &zone_events, metrics);
        let mut record = self.descriptor(&last, origin);
        self.last_frame = Some(last);
        record.capture_time = report.to_time;
        record.zone_events = zone_events;
        record.counts = Some(report);
        Some(record)
    }

    /// A descriptor without tracks carrying the summaries of every track of the camera, dated at
    /// its last frame, and a count record of its interval so far if the camera stopped; nothing
    /// if there was neither.
    fn end_tracks(&mut self, origin: &Origin, reason: EndReason, metrics: &Metrics) -> Vec<pb::FrameDescriptor> {
        let ended = self.tracker.finish_because(reason);
        let mut zone_events = Vec::new();
        let report = match reason {
            // The same places go on counting with the new models.
            EndReason::ModelChanged => {
                self.counter.end_tracks(&mut zone_events);
                None
            }
            _ => self.counter.finish(&mut zone_events),
        };
        let mut out = Vec::new();
        let (Some(last), Some(models)) = (self.last_frame.take(), self.models.clone()) else {
            return out;
        };
        let frame = (last.frame_width, last.frame_height);
        let events = self.emitter.finish(&ended, frame, &mut encoder_fn(&models.encoder));
        if !events.is_empty() || !zone_events.is_empty() {
            self.count_in_metrics(&last.camera.id, &zone_events, metrics);
            let mut descriptor = self.descriptor(&last, origin);
            descriptor.track_events = events;
            descriptor.zone_events = zone_events;
            out.push(descriptor);
        }
        // The record needs the last frame's context; the camera has no last frame afterwards.
        self.last_frame = Some(last);
        out.extend(self.count_record(origin, report, Vec::new(), metrics));
        self.last_frame = None;
        out
    }

    /// The next numbered descriptor of this camera, context filled in (the models of the
    /// camera's current set), nothing seen yet.
    fn descriptor(&mut self, analysis: &Analysis, origin: &Origin) -> pb::FrameDescriptor {
        let models = self.models.as_deref();
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        pb::FrameDescriptor {
            node_id: origin.node_id.clone(),
            camera_id: analysis.camera.id.clone(),
            sequence,
            capture_time: Some(to_timestamp(analysis.capture_time)),
            time_source: analysis.time_source as i32,
            frame_width: analysis.frame_width,
            frame_height: analysis.frame_height,
            detector: models.map(|m| m.detector.clone()),
            embedder: models.and_then(|m| m.embedder.clone()),
            objects: Vec::new(),
            node_run_id: origin.node_run_id,
            camera_position: analysis.camera.position(),
            tracks: Vec::new(),
            track_events: Vec::new(),
            offset: 0,
            gap: None,
            sampling: crate::wire::sampling(analysis.keyframes_only) as i32,
            // Set by `accept` on the camera's first frame of a set switched to.
            model_change: None,
            pixel_export: None,
            zone_events: Vec::new(),
            counts: None,
        }
    }
}

fn detected_object(
    detection: &Detection,
    (width, height): (u32, u32),
    track_id: u64,
    class_names: &[String],
    encode: &mut impl FnMut(&[f32]) -> Option<pb::Embedding>,
) -> pb::DetectedObject {
    let bbox = detection.bbox;
    pb::DetectedObject {
        class_id: detection.class_id,
        class_name: class_names
            .get(detection.class_id as usize)
            .cloned()
            .unwrap_or_default(),
        score: detection.score,
        r#box: Some(pb::BoundingBox {
            x_min: normalised(bbox[0], width),
            y_min: normalised(bbox[1], height),
            x_max: normalised(bbox[2], width),
            y_max: normalised(bbox[3], height),
        }),
        embedding: detection.embedding.as_deref().and_then(&mut *encode),
        track_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{CameraSettings, Cameras};
    use std::sync::Arc;

    #[test]
    fn a_camera_added_again_continues_its_sequence_and_ignores_the_old_ones_results() {
        let metrics = Metrics::new(Cameras::default());
        let mut describer = describer(vec![], false);
        let old = Arc::new(CameraStatus::new("c".into(), CameraSettings::default()));
        let new = Arc::new(CameraStatus::new("c".into(), CameraSettings::default()));
        let mut out = Vec::new();
        describer.accept(analysis(&old, 0, true), &metrics, &mut |d, _| out.push(d.sequence));
        describer.accept(analysis(&new, 0, true), &metrics, &mut |d, _| out.push(d.sequence));
        describer.accept(analysis(&old, 1, true), &metrics, &mut |d, _| out.push(d.sequence));
        describer.accept(analysis(&new, 1, true), &metrics, &mut |d, _| out.push(d.sequence));
        assert_eq!(out, vec![0, 1, 2]);
    }

    fn describer(class_names: Vec<String>, send_detections: bool) -> Describer {
        let origin = Origin {
            node_id: "n".into(),
            node_run_id: 1_780_000_000_000_000_000,
        };
        let config = DescribeConfig {
            send_detections,
            ..DescribeConfig::default()
        };
        let contexts = ModelContexts::default();
        for (generation, detector) in [(0, "d"), (1, "d2")] {
            contexts.add(ModelContext {
                generation,
                detector: pb::ModelRef {
                    id: detector.into(),
                    version: "1".into(),
                },
                embedder: None,
                class_names: class_names.clone(),
                encoder: Encoder::new(codec::CodecKind::Int8, None, None).unwrap(),
                switch_reason: "activated".into(),
            });
        }
        Describer::new(origin, contexts, config, Resume::default())
    }

    fn models(generation: u64) -> Arc<crate::infer::ModelSetInfo> {
        let card = crate::infer::ModelCard {
            id: "d".into(),
            version: "1".into(),
            decoder: "yolo".into(),
            sha256: String::new(),
            input_shape: Vec::new(),
            class_names: Vec::new(),
        };
        Arc::new(crate::infer::ModelSetInfo {
            generation,
            detector: card,
            embedder: None,
            health: Default::default(),
        })
    }

    fn analysis(camera: &Arc<CameraStatus>, ticket: u64, ok: bool) -> Analysis {
        analysis_of(camera, ticket, ok, 0)
    }

    fn analysis_of(camera: &Arc<CameraStatus>, ticket: u64, ok: bool, generation: u64) -> Analysis {
        Analysis {
            models: models(generation),
            camera: camera.clone(),
            ticket,
            capture_time: ticket as i64,
            time_source: pb::TimeSource::FilePosition,
            keyframes_only: false,
            frame_width: 100,
            frame_height: 50,
            detections: if ok {
                Ok(vec![Detection {
                    class_id: 2,
                    score: 0.9,
                    bbox: [10.0, 5.0, 60.0, 55.0],
                    embedding: Some(vec![3.0, 4.0]),
                    sharpness: 0.0,
                }])
            } else {
                Err(crate::error::Error::Inference {
                    model: "m".into(),
                    message: "boom".into(),
                })
            },
        }
    }

    #[test]
    fn a_result_that_never_arrives_is_skipped_once_enough_results_wait_behind_it() {
        let camera = Arc::new(CameraStatus::new("c".into(), CameraSettings::default()));
        let metrics = Metrics::new(Cameras::default());
        let mut describer = describer(vec![], false);
        let mut out = Vec::new();
        // Ticket 0 is lost (its worker died): the others wait for it, up to MAX_REORDER of them.
        for ticket in 1..=MAX_REORDER as u64 {
            describer.accept(analysis(&camera, ticket, true), &metrics, &mut |d, _| out.push(d));
        }
        assert!(out.is_empty(), "still waiting for ticket 0");
        describer.accept(
            analysis(&camera, MAX_REORDER as u64 + 1, true),
            &metrics,
            &mut |d, _| out.push(d),
        );
        let published: Vec<(u64, i32)> = out
            .iter()
            .map(|d| (d.sequence, d.capture_time.unwrap().nanos))
            .collect();
        let expected: Vec<(u64, i32)> = (1..=MAX_REORDER as u64 + 1).map(|t| (t - 1, t as i32)).collect();
        assert_eq!(
            published, expected,
            "everything behind it, in order, numbered without a gap"
        );
        // Should ticket 0 come after all, it is too late: the camera's time never goes back.
        describer.accept(analysis(&camera, 0, true), &metrics, &mut |d, _| out.push(d));
        describer.accept(
            analysis(&camera, MAX_REORDER as u64 + 2, true),
            &metrics,
            &mut |d, _| out.push(d),
        );
        assert!(
            describer.cameras["c"].waiting.is_empty(),
            "nothing kept of a result given up on"
        );
        let last = out.last().unwrap();
        assert_eq!(
            (out.len(), last.sequence, last.capture_time.unwrap().nanos),
            (MAX_REORDER + 2, MAX_REORDER as u64 + 1, MAX_REORDER as i32 + 2)
        );
    }

    #[test]
    fn out_of_order_results_come_out_in_order_with_contiguous_sequences() {
        let camera = Arc::new(CameraStatus::new("c".into(), CameraSettings::default()));
        let metrics = Metrics::new(Cameras::default());
        let classes = vec!["person".into(), "bicycle".into(), "car".into()];
        let mut describer = describer(classes, true);
        let mut out = Vec::new();
        for (ticket, ok) in [(1, true), (0, true), (3, true), (2, false)] {
            describer.accept(analysis(&camera, ticket, ok), &metrics, &mut |d, _| out.push(d));
        }
        let seqs: Vec<(u64, i64)> = out
            .iter()
            .map(|d| (d.sequence, d.capture_time.unwrap().nanos as i64))
            .collect();
        assert_eq!(seqs, vec![(0, 0), (1, 1), (2, 3)]);
        let object = &out[0].objects[0];
        assert_eq!(object.class_name, "car");
        let b = object.r#box.unwrap();
        assert_eq!((b.x_min, b.y_min, b.x_max, b.y_max), (0.1, 0.1, 0.6, 1.0));
        let v = codec::decode(object.embedding.as_ref().unwrap()).unwrap();
        assert!((v[0] - 0.6).abs() < 0.01 && (v[1] - 0.8).abs() < 0.01);
    }

    #[test]
    fn an_export_record_is_numbered_in_its_cameras_sequence_and_never_before_its_last_frame() {
        let camera = Arc::new(CameraStatus::new("c".into(), CameraSettings::default()));
        let metrics = Metrics::new(Cameras::default());
        let mut describer = describer(vec![], false);
        let mut out = Vec::new();
        // The camera's clock is ahead of the node's: its frames carry times after the request's.
        let ahead = 5_000_000_000;
        let mut frame = analysis(&camera, 0, true);
        frame.capture_time = ahead;
        describer.accept(frame, &metrics, &mut |d, _| out.push(d));
        let notice = |at| ExportNotice {
            camera_id: "c".into(),
            at,
            export: pb::PixelExport {
                kind: "snapshot".into(),
                ..Default::default()
            },
        };
        describer.note_export(notice(1_000), &mut |d, _| out.push(d));
        // A camera that never sent a frame this run: numbered on from the log, at the request.
        describer.note_export(
            ExportNotice {
                camera_id: "other".into(),
                ..notice(2_000)
            },
            &mut |d, _| out.push(d),
        );
        let seen: Vec<(&str, u64, i64, bool)> = out
            .iter()
            .map(|d| {
                let t = crate::clock::timestamp_nanos(d.capture_time.unwrap());
                (d.camera_id.as_str(), d.sequence, t, d.pixel_export.is_some())
            })
            .collect();
        assert_eq!(
            seen,
            vec![("c", 0, ahead, false), ("c", 1, ahead, true), ("other", 0, 2_000, true)]
        );
    }

    /// Frames of a new model set end every track of the camera (`MODEL_CHANGED`) in a descriptor
    /// that still names the old models; the frames after it name the new ones; a late frame of
    /// the old set, after one of the new, is dropped rather than reviving the old tracks.
    #[test]
    fn a_new_model_set_ends_the_tracks_and_a_late_old_frame_is_dropped() {
        let camera = Arc::new(CameraStatus::new("c".into(), CameraSettings::default()));
        let metrics = Metrics::new(Cameras::default());
        let mut describer = describer(vec!["person".into(), "bicycle".into(), "car".into()], false);
        let mut out = Vec::new();
        // Enough frames of one object for its track to be confirmed.
        for ticket in 0..5 {
            describer.accept(analysis_of(&camera, ticket, true, 0), &metrics, &mut |d, _| out.push(d));
        }
        let confirmed = out.iter().flat_map(|d| &d.track_events).count();
        assert!(confirmed >= 1, "the object's track is confirmed: {out:#?}");
        out.clear();
        // Ticket 6 (new set) arrives before ticket 5 (old set, analysed by a slower worker).
        describer.accept(analysis_of(&camera, 6, true, 1), &metrics, &mut |d, _| out.push(d));
        describer.accept(analysis_of(&camera, 5, true, 0), &metrics, &mut |d, _| out.push(d));
        describer.accept(analysis_of(&camera, 7, true, 0), &metrics, &mut |d, _| out.push(d));
        describer.accept(analysis_of(&camera, 8, true, 1), &metrics, &mut |d, _| out.push(d));
        let summary: Vec<(u64, String, Vec<pb::TrackEndReason>)> = out
            .iter()
            .map(|d| {
                let reasons = d
                    .track_events
                    .iter()
                    .filter_map(|e| e.summary.as_ref().map(|s| s.end_reason()))
                    .collect();
                (d.sequence, d.detector.as_ref().unwrap().id.clone(), reasons)
            })
            .collect();
        let sequences: Vec<u64> = summary.iter().map(|s| s.0).collect();
        assert_eq!(sequences, vec![5, 6, 7, 8], "contiguous: {summary:?}");
        assert_eq!(summary[0].1, "d", "ticket 5 is the old set's last frame");
        assert_eq!(summary[1], (6, "d".into(), vec![pb::TrackEndReason::ModelChanged]));
        assert_eq!(summary[2].1, "d2");
        let change = out[2]
            .model_change
            .as_ref()
            .expect("the first descriptor of the new set marks the change");
        assert_eq!((change.generation, change.reason.as_str()), (1, "activated"));
        assert_eq!(change.previous_detector.as_ref().unwrap().id, "d");
        assert!(
            out.iter().filter(|d| d.model_change.is_some()).count() == 1,
            "one change record per camera and switch: {out:#?}"
        );
        assert!(
            summary[2].2.is_empty() && summary[3].1 == "d2",
            "ticket 7 (old set) dropped: {summary:?}"
        );
        assert_eq!(out[3].capture_time.unwrap().nanos, 8);
    }
}
