//! The delivery stage: evidenced frames in; events, their snapshots and the daily statistics into
//! the durable outbox ([`outbox`], then MQTT through [`mqtt`], with [`telemetry`] beside), on-site
//! actions run ([`actions`]), and the latest frame and recent events onto the status board
//! ([`board`], which the web page reads). Imports the message types of the stages before it,
//! never control, web or ops.

pub mod actions;
pub mod board;
pub mod config;
pub mod mqtt;
pub mod outbox;
pub mod stats;
pub mod telemetry;

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::base::liveness::Heartbeat;
use crate::evidence::{draw, EvidencedFrame};
use crate::infer::BoundingBox;
use crate::judge::Event;
use actions::ActionLimiter;
use board::StatusBoard;
use outbox::{Outbox, QueuedMessage};
use stats::{DailyStatsKeeper, StatsUpdate};

/// Quality of the page's live frame: small and fast; evidence JPEGs are kept at higher quality.
const LIVE_FRAME_JPEG_QUALITY: u8 = 75;

/// What the delivery stage holds between frames.
pub struct Delivery {
    pub outbox: Arc<Outbox>,
    pub board: Arc<StatusBoard>,
    /// Woken after each commit so the publisher sends without polling.
    pub publisher_wake: Arc<Notify>,
    pub stats: DailyStatsKeeper,
    pub actions: ActionLimiter,
}

impl Delivery {
    /// Queues one frame's messages (one durable commit), then runs the actions of the events that
    /// started and updates the board.
    async fn deliver(&mut self, evidenced: EvidencedFrame) {
        let EvidencedFrame { frame, results, events, snapshots, zones, actions } = evidenced;
        let StatsUpdate { today, to_publish } = self.stats.record(&events, frame.captured_at);
        let mut messages = event_messages(&events);
        // The evidence picture of each event message, and the station's daily statistics.
        messages.extend(snapshots.iter().map(|snapshot| QueuedMessage {
            topic_suffix: format!("snapshots/{}", snapshot.event_id),
            payload: snapshot.jpeg.as_ref().clone(),
        }));
        messages.extend(to_publish.iter().filter_map(|stats| match serde_json::to_vec(stats) {
            Ok(payload) => Some(QueuedMessage { topic_suffix: "stats".into(), payload }),
            Err(e) => {
                tracing::error!("cannot encode statistics: {e}");
                None
            }
        }));
        if let Some(today) = today.or_else(|| to_publish.last().cloned()) {
            self.board.set_daily_stats(today);
        }
        let messages_empty = messages.is_empty();
        let outbox = self.outbox.clone();
        let boxes: Vec<BoundingBox> = events.iter().map(|e| BoundingBox::from(e.bbox)).collect();
        let zones_in_use: Vec<String> = zones.iter().map(|z| z.id.clone()).collect();
        let image = frame.image.clone();
        let results_for_drawing = results.clone();
        // Disk commit and JPEG encoding are blocking work: keep them off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            let queued = if messages.is_empty() { Ok(()) } else { outbox.enqueue(&messages).map(|_| ()) };
            let stats = outbox.stats();
            // `image` is private already (people blurred, privacy zones black).
            let mut annotated = draw::annotate(&image, &results_for_drawing, &boxes);
            draw::draw_zones(&mut annotated, &zones);
            let jpeg = draw::encode_jpeg(&annotated, LIVE_FRAME_JPEG_QUALITY);
            (queued, stats, jpeg)
        })
        .await;
        let (queued, stats, jpeg) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("delivery task failed: {e}");
                return;
            }
        };
        match queued {
            Ok(()) => {
                for event in &events {
                    log_queued(event);
                }
                self.board.record_events(&events);
                if !messages_empty {
                    self.publisher_wake.notify_one();
                }
            }
            Err(e) => tracing::error!("{e}; {} events of camera {} not queued", events.len(), frame.camera),
        }
        self.run_actions(&events, &actions, frame.captured_at);
        if let Ok(stats) = stats {
            self.board.set_outbox_stats(stats);
        }
        let jpeg = jpeg.map_err(|e| tracing::warn!("cannot encode the live frame: {e}")).ok();
        self.board.record_frame(&frame.camera, frame.captured_at, frame.image.dimensions(), results, jpeg);
        self.board.record_scene(&frame.camera, frame.image.clone(), zones_in_use);
    }

    fn run_actions(
        &mut self,
        events: &[Event],
        actions: &[(uuid::Uuid, crate::judge::config::ActionConfig)],
        now: chrono::DateTime<chrono::Utc>,
    ) {
        for (event_id, action) in actions {
            let Some(event) = events.iter().find(|e| e.event_id == *event_id) else { continue };
            if let Some(command) = self.actions.command_for(action, event, now) {
                tracing::info!(event_id = %event.event_id, "on-site action: {}", command.join(" "));
                actions::run(&command, event);
            }
        }
    }
}

/// The `events` messages of a frame; an event that cannot be encoded is logged.
fn event_messages(events: &[Event]) -> Vec<QueuedMessage> {
    events
        .iter()
        .filter_map(|event| match serde_json::to_vec(event) {
            Ok(payload) => Some(QueuedMessage { topic_suffix: "events".into(), payload }),
            Err(e) => {
                tracing::error!(event_id = %event.event_id, "cannot encode event: {e}");
                None
            }
        })
        .collect()
}

fn log_queued(event: &Event) {
    tracing::info!(
        camera = %event.camera,
        event_id = %event.event_id,
        revision = event.revision,
        "event {} {:?} {} {:.2} box ({}, {}) – ({}, {})",
        event.kind.as_str(), event.state, event.label, event.score, event.bbox.x1, event.bbox.y1, event.bbox.x2, event.bbox.y2
    );
}

/// The delivery stage's loop: delivers each evidenced frame. Ends when the evidence stage closes
/// its channel.
pub async fn run_delivery(
    mut delivery: Delivery,
    mut input: mpsc::Receiver<EvidencedFrame>,
    heartbeat: Arc<Heartbeat>,
) {
    heartbeat.pause();
    while let Some(evidenced) = input.recv().await {
        heartbeat.beat();
        delivery.deliver(evidenced).await;
        heartbeat.pause();
    }
    heartbeat.retire();
}
