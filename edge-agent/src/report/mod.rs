//! The report stage: judged frames in; events and their evidence pictures into the durable outbox
//! (then MQTT), the latest annotated frame and recent events onto the status board (then the web
//! page). Also here: commands from the platform, telemetry, and the config store they change.

pub mod board;
pub mod commands;
pub mod config_store;
pub mod mqtt;
pub mod outbox;
pub mod telemetry;
pub mod web;

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::judge::{draw, Judgement};
use board::StatusBoard;
use outbox::{Outbox, QueuedMessage};

/// Quality of the page's live frame: small and fast; evidence JPEGs are kept at higher quality.
const LIVE_FRAME_JPEG_QUALITY: u8 = 75;

/// Whether events get an evidence JPEG (`snapshots/{event_id}`), and its quality.
#[derive(Debug, Clone, Copy)]
pub struct EvidenceSettings {
    pub enabled: bool,
    pub jpeg_quality: u8,
}

impl Default for EvidenceSettings {
    fn default() -> Self {
        Self { enabled: true, jpeg_quality: 85 }
    }
}

/// Writes each judgement's events, each followed by its evidence picture, to the outbox (one
/// durable commit per frame), then tells the publisher and updates the board. Ends when the judge
/// stage closes its channel.
pub async fn run_reporter(
    mut judgements: mpsc::Receiver<Judgement>,
    outbox: Arc<Outbox>,
    board: Arc<StatusBoard>,
    publisher_wake: Arc<Notify>,
    evidence: EvidenceSettings,
) {
    while let Some(judgement) = judgements.recv().await {
        let Judgement { frame, results, events } = judgement;
        let encoded: Vec<(uuid::Uuid, QueuedMessage)> = events
            .iter()
            .filter_map(|event| match serde_json::to_vec(event) {
                Ok(payload) => Some((event.event_id, QueuedMessage { topic_suffix: "events".into(), payload })),
                Err(e) => {
                    tracing::error!(event_id = %event.event_id, "cannot encode event: {e}");
                    None
                }
            })
            .collect();
        let outbox_for_write = outbox.clone();
        let boxes: Vec<_> = events
            .iter()
            .map(|e| crate::infer::BoundingBox {
                x1: e.bbox.x1 as f32,
                y1: e.bbox.y1 as f32,
                x2: e.bbox.x2 as f32,
                y2: e.bbox.y2 as f32,
            })
            .collect();
        let image = frame.image.clone();
        let results_for_drawing = results.clone();
        // Disk commit and JPEG encoding are blocking work: keep them off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            let annotated = draw::annotate(&image, &results_for_drawing, &boxes);
            let evidence_jpeg = match (evidence.enabled && !encoded.is_empty())
                .then(|| draw::encode_jpeg(&annotated, evidence.jpeg_quality))
            {
                Some(Ok(jpeg)) => Some(jpeg),
                Some(Err(e)) => {
                    tracing::warn!("cannot encode the evidence picture: {e}");
                    None
                }
                None => None,
            };
            // Each event is followed by its evidence, so the platform can pair them by event id.
            let mut messages = Vec::with_capacity(encoded.len() * 2);
            for (event_id, message) in encoded {
                messages.push(message);
                if let Some(jpeg) = &evidence_jpeg {
                    messages
                        .push(QueuedMessage { topic_suffix: format!("snapshots/{event_id}"), payload: jpeg.clone() });
                }
            }
            let queued = if messages.is_empty() { Ok(()) } else { outbox_for_write.enqueue(&messages).map(|_| ()) };
            let stats = outbox_for_write.stats();
            let jpeg = draw::encode_jpeg(&annotated, LIVE_FRAME_JPEG_QUALITY);
            (queued, stats, jpeg)
        })
        .await;
        let (queued, stats, jpeg) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("report task failed: {e}");
                continue;
            }
        };
        match queued {
            Ok(()) => {
                for event in &events {
                    tracing::info!(
                        camera = %event.camera,
                        event_id = %event.event_id,
                        "event {:?} {} {:.2} box ({}, {}) – ({}, {})",
                        event.kind, event.label, event.score, event.bbox.x1, event.bbox.y1, event.bbox.x2, event.bbox.y2
                    );
                }
                board.record_events(&events);
                if !events.is_empty() {
                    publisher_wake.notify_one();
                }
            }
            Err(e) => tracing::error!("{e}; {} events of camera {} not queued", events.len(), frame.camera),
        }
        if let Ok(stats) = stats {
            board.set_outbox_stats(stats);
        }
        let jpeg = jpeg.map_err(|e| tracing::warn!("cannot encode the live frame: {e}")).ok();
        board.record_frame(&frame.camera, frame.captured_at, frame.image.dimensions(), results, jpeg);
    }
}
