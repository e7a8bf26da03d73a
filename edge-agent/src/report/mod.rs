//! The report stage: judged frames in; events and their evidence pictures into the durable outbox
//! (then MQTT), the latest annotated frame and recent events onto the status board (then the web
//! page). Also here: commands from the platform, telemetry, and the settings (config store and
//! live application) that the commands and the web page change.

pub mod board;
pub mod commands;
pub mod config_store;
pub mod mqtt;
pub mod outbox;
pub mod settings;
pub mod telemetry;
pub mod web;

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::judge::{draw, Judgement};
use crate::liveness::Heartbeat;
use board::StatusBoard;
use outbox::{Outbox, QueuedMessage};

/// Quality of the page's live frame: small and fast; evidence JPEGs are kept at higher quality.
const LIVE_FRAME_JPEG_QUALITY: u8 = 75;

/// Writes each judgement's events to the outbox (one durable commit per frame), then tells the
/// publisher and updates the board. Ends when the judge stage closes its channel.
pub async fn run_reporter(
    mut judgements: mpsc::Receiver<Judgement>,
    outbox: Arc<Outbox>,
    board: Arc<StatusBoard>,
    publisher_wake: Arc<Notify>,
    heartbeat: Arc<Heartbeat>,
) {
    heartbeat.pause();
    while let Some(judgement) = judgements.recv().await {
        heartbeat.beat();
        let Judgement { frame, results, events, snapshots, zones, stats_today, stats_to_publish } = judgement;
        let mut messages: Vec<QueuedMessage> = events
            .iter()
            .filter_map(|event| match serde_json::to_vec(event) {
                Ok(payload) => Some(QueuedMessage { topic_suffix: "events".into(), payload }),
                Err(e) => {
                    tracing::error!(event_id = %event.event_id, "cannot encode event: {e}");
                    None
                }
            })
            .collect();
        // The evidence picture of each event message, and the station's daily statistics.
        messages.extend(snapshots.iter().map(|snapshot| QueuedMessage {
            topic_suffix: format!("snapshots/{}", snapshot.event_id),
            payload: snapshot.jpeg.as_ref().clone(),
        }));
        messages.extend(stats_to_publish.iter().filter_map(|stats| match serde_json::to_vec(stats) {
            Ok(payload) => Some(QueuedMessage { topic_suffix: "stats".into(), payload }),
            Err(e) => {
                tracing::error!("cannot encode statistics: {e}");
                None
            }
        }));
        if let Some(today) = stats_today.or_else(|| stats_to_publish.last().cloned()) {
            board.set_daily_stats(today);
        }
        let messages_empty = messages.is_empty();
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
        let zones_in_use: Vec<String> = zones.iter().map(|z| z.id.clone()).collect();
        let image = frame.image.clone();
        let results_for_drawing = results.clone();
        // Disk commit and JPEG encoding are blocking work: keep them off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            let queued = if messages.is_empty() { Ok(()) } else { outbox_for_write.enqueue(&messages).map(|_| ()) };
            let stats = outbox_for_write.stats();
            // `image` has privacy applied by the judge (people blurred, privacy zones black).
            let mut annotated = draw::annotate(&image, &results_for_drawing, &boxes);
            draw::draw_zones(&mut annotated, &zones);
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
                        revision = event.revision,
                        "event {} {:?} {} {:.2} box ({}, {}) – ({}, {})",
                        event.kind.as_str(), event.state, event.label, event.score, event.bbox.x1, event.bbox.y1, event.bbox.x2, event.bbox.y2
                    );
                }
                board.record_events(&events);
                if !messages_empty {
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
        board.record_scene(&frame.camera, frame.image.clone(), zones_in_use);
        heartbeat.pause();
    }
    heartbeat.retire();
}
