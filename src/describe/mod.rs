//! Describe: analysis results become compact descriptors. Results of one camera are put back in
//! capture order (workers finish out of order), numbered, normalised to the frame, and their
//! embeddings encoded with the configured codec.

pub mod codec;
pub mod track;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc;

use crate::clock::to_timestamp;
use crate::infer::{Analysis, Detection};
use crate::ingest::CameraStatus;
use crate::metrics::Metrics;
use crate::pb;

/// Results further ahead than this of a missing one mean it will never come (a worker died):
/// stop waiting for it rather than stall the camera.
const MAX_REORDER: usize = 64;

pub struct Describer {
    pub node_id: String,
    pub node_run_id: u64,
    pub detector: pb::ModelRef,
    pub embedder: Option<pb::ModelRef>,
    pub class_names: Vec<String>,
    pub codec: pb::EmbeddingCodec,
    cameras: HashMap<String, CameraOrder>,
}

#[derive(Default)]
struct CameraOrder {
    /// `CameraStatus::instance` whose tickets these are.
    instance: u64,
    next_ticket: u64,
    next_sequence: u64,
    waiting: BTreeMap<u64, Analysis>,
}

impl Describer {
    pub fn new(
        node_id: String,
        node_run_id: u64,
        detector: pb::ModelRef,
        embedder: Option<pb::ModelRef>,
        class_names: Vec<String>,
        codec: pb::EmbeddingCodec,
    ) -> Self {
        Describer {
            node_id,
            node_run_id,
            detector,
            embedder,
            class_names,
            codec,
            cameras: HashMap::new(),
        }
    }

    /// Consumes results until every worker is gone, publishing each descriptor in order.
    pub fn run(
        mut self,
        results: mpsc::Receiver<Analysis>,
        metrics: &Metrics,
        mut publish: impl FnMut(pb::FrameDescriptor),
    ) {
        for analysis in results {
            self.accept(analysis, metrics, &mut publish);
        }
    }

    pub fn accept(&mut self, analysis: Analysis, metrics: &Metrics, publish: &mut impl FnMut(pb::FrameDescriptor)) {
        let instance = analysis.camera.instance;
        let order = self
            .cameras
            .entry(analysis.camera.id.clone())
            .or_insert_with(|| CameraOrder {
                instance,
                ..CameraOrder::default()
            });
        if instance != order.instance {
            if instance < order.instance {
                return; // a late result of a camera removed since: nobody asks for it any more
            }
            // The camera was removed and added again: its tickets start afresh; its sequence
            // numbers go on, so subscribers still see one gap-free stream per camera id.
            order.instance = instance;
            order.next_ticket = 0;
            order.waiting.clear();
        }
        order.waiting.insert(analysis.ticket, analysis);
        if order.waiting.len() > MAX_REORDER
            && let Some(&oldest) = order.waiting.keys().next()
        {
            order.next_ticket = oldest;
        }
        let mut ready = Vec::new();
        while let Some(analysis) = order.waiting.remove(&order.next_ticket) {
            order.next_ticket += 1;
            match analysis.detections {
                Ok(_) => {
                    ready.push((order.next_sequence, analysis));
                    order.next_sequence += 1;
                }
                // Already logged by the worker; a failed frame has no descriptor and no number.
                Err(_) => metrics.frame_failed(),
            }
        }
        for (sequence, analysis) in ready {
            let descriptor = self.describe(sequence, analysis);
            metrics.published(prost::Message::encoded_len(&descriptor));
            publish(descriptor);
        }
    }

    fn describe(&self, sequence: u64, analysis: Analysis) -> pb::FrameDescriptor {
        let camera: &Arc<CameraStatus> = &analysis.camera;
        CameraStatus::count(&camera.frames_analysed);
        let (w, h) = (analysis.frame_width.max(1) as f32, analysis.frame_height.max(1) as f32);
        let detections = analysis.detections.unwrap_or_default();
        let objects = detections
            .into_iter()
            .map(
                |Detection {
                     class_id,
                     score,
                     bbox,
                     embedding,
                 }| pb::DetectedObject {
                    class_id,
                    class_name: self.class_names.get(class_id as usize).cloned().unwrap_or_default(),
                    score,
                    r#box: Some(pb::BoundingBox {
                        x_min: (bbox[0] / w).clamp(0.0, 1.0),
                        y_min: (bbox[1] / h).clamp(0.0, 1.0),
                        x_max: (bbox[2] / w).clamp(0.0, 1.0),
                        y_max: (bbox[3] / h).clamp(0.0, 1.0),
                    }),
                    embedding: embedding.map(|mut v| {
                        codec::l2_normalize(&mut v);
                        codec::encode(&v, self.codec)
                    }),
                },
            )
            .collect();
        pb::FrameDescriptor {
            node_id: self.node_id.clone(),
            camera_id: camera.id.clone(),
            sequence,
            capture_time: Some(to_timestamp(analysis.capture_time)),
            time_source: analysis.time_source as i32,
            frame_width: analysis.frame_width,
            frame_height: analysis.frame_height,
            detector: Some(self.detector.clone()),
            embedder: self.embedder.clone(),
            objects,
            node_run_id: self.node_run_id,
            camera_position: camera.position(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{CameraSettings, Cameras};

    #[test]
    fn a_camera_added_again_continues_its_sequence_and_ignores_the_old_ones_results() {
        let metrics = Metrics::new(Cameras::default());
        let model = pb::ModelRef::default();
        let mut describer = Describer::new("n".into(), 1, model, None, vec![], pb::EmbeddingCodec::Int8);
        let old = Arc::new(CameraStatus::new("c".into(), CameraSettings::default()));
        let new = Arc::new(CameraStatus::new("c".into(), CameraSettings::default()));
        let mut out = Vec::new();
        describer.accept(analysis(&old, 0, true), &metrics, &mut |d| out.push(d.sequence));
        describer.accept(analysis(&new, 0, true), &metrics, &mut |d| out.push(d.sequence));
        describer.accept(analysis(&old, 1, true), &metrics, &mut |d| out.push(d.sequence));
        describer.accept(analysis(&new, 1, true), &metrics, &mut |d| out.push(d.sequence));
        assert_eq!(out, vec![0, 1, 2]);
    }

    fn analysis(camera: &Arc<CameraStatus>, ticket: u64, ok: bool) -> Analysis {
        Analysis {
            camera: camera.clone(),
            ticket,
            capture_time: ticket as i64,
            time_source: pb::TimeSource::FilePosition,
            frame_width: 100,
            frame_height: 50,
            detections: if ok {
                Ok(vec![Detection {
                    class_id: 2,
                    score: 0.9,
                    bbox: [10.0, 5.0, 60.0, 55.0],
                    embedding: Some(vec![3.0, 4.0]),
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
    fn out_of_order_results_come_out_in_order_with_contiguous_sequences() {
        let camera = Arc::new(CameraStatus::new("c".into(), CameraSettings::default()));
        let metrics = Metrics::new(Cameras::default());
        let classes = vec!["person".into(), "bicycle".into(), "car".into()];
        let model = pb::ModelRef {
            id: "d".into(),
            version: "1".into(),
        };
        let mut describer = Describer::new("n".into(), 1, model, None, classes, pb::EmbeddingCodec::Int8);
        let mut out = Vec::new();
        for (ticket, ok) in [(1, true), (0, true), (3, true), (2, false)] {
            describer.accept(analysis(&camera, ticket, ok), &metrics, &mut |d| out.push(d));
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
}
