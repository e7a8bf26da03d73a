//! The judge stage: decides which findings are events worth reporting, and draws what it saw.
//! It is pure logic on typed messages (no sockets, no files), so every rule is testable on real
//! model output without a camera or a broker.

pub mod config;
pub mod draw;
pub mod live;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::ObjectRuleConfig;
use crate::infer::{BoundingBox, Findings, InferredFrame, ModelId, ModelResult};
use crate::source::Frame;

/// Version of the event JSON; bump when a field changes meaning or goes away.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// A reportable event: the message from judge to report, and the JSON the platform receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema_version: u32,
    /// UUID v7: unique, and sorts by creation time.
    pub event_id: Uuid,
    pub device: String,
    pub camera: String,
    /// RFC 3339 capture time of the frame the event was seen in.
    pub time: DateTime<Utc>,
    pub kind: EventKind,
    pub label: String,
    pub score: f32,
    /// In frame pixels.
    #[serde(rename = "box")]
    pub bbox: EventBox,
    pub frame_width: u32,
    pub frame_height: u32,
    pub model: ModelId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The plain rule: a detection of a configured label.
    Object,
}

/// A box rounded to whole pixels for the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBox {
    pub x1: i32,
    pub y1: i32,
    pub x2: i32,
    pub y2: i32,
}

impl From<BoundingBox> for EventBox {
    fn from(b: BoundingBox) -> Self {
        Self { x1: b.x1.round() as i32, y1: b.y1.round() as i32, x2: b.x2.round() as i32, y2: b.y2.round() as i32 }
    }
}

/// A judged frame: the message from judge to report.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub frame: Frame,
    pub results: Vec<ModelResult>,
    pub events: Vec<Event>,
}

pub struct Judge {
    device: String,
    object_rule: ObjectRuleConfig,
}

impl Judge {
    pub fn new(device: String, object_rule: ObjectRuleConfig) -> Self {
        Self { device, object_rule }
    }

    pub fn judge(&mut self, inferred: InferredFrame) -> Judgement {
        let mut events = Vec::new();
        if self.object_rule.enabled {
            for result in &inferred.results {
                let Findings::Detect { detections } = &result.findings else {
                    continue;
                };
                for detection in detections {
                    if detection.score < self.object_rule.min_score
                        || !self.object_rule.labels.iter().any(|l| l == &detection.label)
                    {
                        continue;
                    }
                    events.push(Event {
                        schema_version: EVENT_SCHEMA_VERSION,
                        event_id: Uuid::now_v7(),
                        device: self.device.clone(),
                        camera: inferred.frame.camera.to_string(),
                        time: inferred.frame.captured_at,
                        kind: EventKind::Object,
                        label: detection.label.clone(),
                        score: detection.score,
                        bbox: detection.bbox.into(),
                        frame_width: inferred.frame.image.width(),
                        frame_height: inferred.frame.image.height(),
                        model: result.model.clone(),
                    });
                }
            }
        }
        Judgement { frame: inferred.frame, results: inferred.results, events }
    }
}

/// The judge stage's loop: judges each inferred frame and passes the judgement to report.
pub async fn run_judge(
    mut judge: Judge,
    mut input: tokio::sync::mpsc::Receiver<InferredFrame>,
    output: tokio::sync::mpsc::Sender<Judgement>,
) {
    while let Some(inferred) = input.recv().await {
        let judgement = judge.judge(inferred);
        if output.send(judgement).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::Detection;
    use std::sync::Arc;
    use std::time::Duration;

    fn inferred(detections: Vec<Detection>) -> InferredFrame {
        InferredFrame {
            frame: Frame {
                camera: "gate".into(),
                sequence: 1,
                captured_at: Utc::now(),
                image: Arc::new(image::RgbImage::new(768, 576)),
            },
            results: vec![ModelResult {
                model: ModelId { name: "nanodet".into(), sha256: "ab".repeat(32) },
                findings: Findings::Detect { detections },
                latency: Duration::from_millis(1),
            }],
        }
    }

    fn detection(label: &str, score: f32) -> Detection {
        Detection {
            class_id: 7,
            label: label.into(),
            score,
            bbox: BoundingBox { x1: 457.2, y1: 79.6, x2: 685.0, y2: 159.0 },
        }
    }

    #[test]
    fn a_configured_label_above_the_score_is_an_event() {
        let mut judge = Judge::new("box-1".into(), ObjectRuleConfig::default());
        let judgement = judge.judge(inferred(vec![detection("truck", 0.37)]));
        assert_eq!(judgement.events.len(), 1);
        let event = &judgement.events[0];
        assert_eq!((event.label.as_str(), event.camera.as_str(), event.device.as_str()), ("truck", "gate", "box-1"));
        assert_eq!(event.bbox, EventBox { x1: 457, y1: 80, x2: 685, y2: 159 });
        assert_eq!(event.event_id.get_version_num(), 7);
    }

    #[test]
    fn people_and_weak_detections_are_not_events() {
        let mut judge = Judge::new("box-1".into(), ObjectRuleConfig::default());
        let judgement = judge.judge(inferred(vec![detection("person", 0.9), detection("truck", 0.29)]));
        assert!(judgement.events.is_empty(), "{:?}", judgement.events);
    }

    #[test]
    fn event_json_has_the_documented_fields() {
        let mut judge = Judge::new("box-1".into(), ObjectRuleConfig::default());
        let event = judge.judge(inferred(vec![detection("truck", 0.37)])).events.remove(0);
        let json = serde_json::to_value(&event).unwrap();
        for field in
            ["schema_version", "event_id", "device", "camera", "time", "kind", "label", "score", "box", "model"]
        {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert_eq!(json["box"]["x2"], 685);
        assert_eq!(json["model"]["name"], "nanodet");
        let time = json["time"].as_str().unwrap();
        assert!(DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
