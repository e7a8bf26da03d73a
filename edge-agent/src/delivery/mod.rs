//! The delivery stage: evidenced frames in; events, their snapshots and the daily statistics into
//! the durable outbox ([`outbox`], then MQTT through [`mqtt`], with [`telemetry`] beside), on-site
//! actions run ([`actions`]), and the latest frame and recent events onto the status board
//! ([`board`], which the web page reads). Imports the message types of the stages before it,
//! never control, web or ops.

pub mod actions;
pub mod board;
pub mod camera_health;
pub mod config;
pub mod held;
pub mod history;
pub mod mqtt;
pub mod outbox;
pub mod stats;
pub mod telemetry;

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::base::liveness::Heartbeat;
use crate::evidence::EvidencedFrame;
use crate::infer::BoundingBox;
use crate::wire::Event;
use actions::OnSiteActions;
use board::{LiveFrame, StatusBoard};
use held::Held;
use history::EventHistory;
use outbox::{Outbox, QueuedMessage};
use stats::{DailyStatsKeeper, StatsUpdate};

/// What the delivery stage holds between frames.
pub struct Delivery {
    pub outbox: Arc<Outbox>,
    pub board: Arc<StatusBoard>,
    /// Woken after each commit so the publisher sends without polling.
    pub publisher_wake: Arc<Notify>,
    pub stats: DailyStatsKeeper,
    pub actions: OnSiteActions,
    /// Republishes the retained status (the chain head moved), at most every `STATUS_HEAD_EVERY`.
    pub status_changed: Arc<Notify>,
    pub last_head_announced: Option<std::time::Instant>,
    /// What the outbox refused (a full disk): held in memory and offered again first.
    pub held: Held,
    /// The page's events on disk, across restarts (None when it could not be opened).
    pub history: Option<Arc<std::sync::Mutex<EventHistory>>>,
}

/// Memory for messages the outbox refused; pictures give way first.
pub const HELD_MAX_BYTES: u64 = 32 * 1024 * 1024;

/// Held messages are offered to the outbox again this often even when no frame comes.
const HELD_RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The retained status carries the chain head; it is republished for a new head at most this often
/// (telemetry carries it at every sample).
const STATUS_HEAD_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Delivery {
    /// Queues one frame's messages (one durable commit), then runs the actions of the events that
    /// started and updates the board.
    async fn deliver(&mut self, evidenced: EvidencedFrame) {
        // Clips reach the page through the evidence folder; their chain records are among the others.
        let EvidencedFrame { frame, results, events, snapshots, zones, actions, chain_records, chain_head, usage } =
            evidenced;
        if let Some(usage) = usage {
            self.board.set_evidence_usage(usage);
        }
        let StatsUpdate { today, to_publish } = self.stats.record(&events, frame.captured_at);
        // Events and other chain records in chain order, so the platform sees one rising sequence;
        // each event message goes with its event, for the log, the board and the history.
        let mut chained = event_messages(&events);
        chained.extend(chain_records.iter().filter_map(|record| match serde_json::to_vec(record) {
            Ok(payload) => Some((record.seq, QueuedMessage { topic_suffix: "chain".into(), payload }, None)),
            Err(e) => {
                tracing::error!(seq = record.seq, "cannot encode chain record: {e}");
                None
            }
        }));
        chained.sort_by_key(|(seq, _, _)| *seq);
        let mut messages: Vec<(QueuedMessage, Option<Event>)> =
            chained.into_iter().map(|(_, message, event)| (message, event)).collect();
        // The evidence picture of each event message, and the station's daily statistics.
        messages.extend(snapshots.iter().map(|snapshot| {
            let topic_suffix = format!("snapshots/{}", snapshot.event_id);
            (QueuedMessage { topic_suffix, payload: snapshot.jpeg.as_ref().clone() }, None)
        }));

        messages.extend(to_publish.iter().filter_map(|stats| match serde_json::to_vec(stats) {
            Ok(payload) => Some((QueuedMessage { topic_suffix: "stats".into(), payload }, None)),
            Err(e) => {
                tracing::error!("cannot encode statistics: {e}");
                None
            }
        }));
        if let Some(today) = today.or_else(|| to_publish.last().cloned()) {
            self.board.set_daily_stats(today);
        }
        // What the outbox refused before goes first, so the order stays the order of the judge.
        let mut batch = self.held.take();
        batch.extend(messages);
        let outbox = self.outbox.clone();
        let boxes: Vec<BoundingBox> = events.iter().map(|e| BoundingBox::from(e.bbox)).collect();
        let zones_in_use: Vec<String> = zones.iter().map(|z| z.id.clone()).collect();
        // `frame.picture` is private (people blurred, privacy zones black) when looked at.
        let live = LiveFrame::new(frame.picture.clone(), results, boxes, zones);
        // An event's picture on the page is its evidence file; the frame is encoded for the page
        // only for events that have none (evidence off, or a message without new pictures).
        let needs_page_picture = events.iter().any(|event| !board::has_evidence_picture(event));
        // The disk commit, and that JPEG, are blocking work.
        let done = tokio::task::spawn_blocking(move || {
            let queued = enqueue_batch(&outbox, batch);
            let stats = outbox.stats();
            if needs_page_picture {
                live.jpeg();
            }
            (queued, stats, live)
        })
        .await;
        let (queued, stats, live) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("delivery task failed: {e}");
                return;
            }
        };
        self.after_enqueue(queued);
        self.run_actions(&events, &actions, frame.captured_at);
        if let Some(head) = chain_head {
            self.board.set_chain_head(head);
            if self.last_head_announced.is_none_or(|at| at.elapsed() >= STATUS_HEAD_EVERY) {
                self.last_head_announced = Some(std::time::Instant::now());
                self.status_changed.notify_one();
            }
        }
        if let Ok(stats) = stats {
            self.board.set_outbox_stats(stats);
        }
        // Events were put on the board above; their frame's picture (encoded above) goes with them.
        self.board.record_frame(&frame.camera, frame.captured_at, live, needs_page_picture);
        self.board.record_scene(&frame.camera, frame.picture.clone(), zones_in_use);
    }

    /// Offers the held messages to the outbox again (no frame came to carry them).
    async fn retry_held(&mut self) {
        let batch = self.held.take();
        let outbox = self.outbox.clone();
        let queued = tokio::task::spawn_blocking(move || enqueue_batch(&outbox, batch)).await;
        match queued {
            Ok(queued) => self.after_enqueue(queued),
            Err(e) => tracing::error!("delivery task failed: {e}"),
        }
        if let Ok(stats) = self.outbox.stats() {
            self.board.set_outbox_stats(stats);
        }
    }

    /// Logs and shows what went in; holds what did not.
    fn after_enqueue(&mut self, queued: Result<Vec<Event>, (Vec<(QueuedMessage, Option<Event>)>, String)>) {
        match queued {
            Ok(events) => {
                if !self.held.report().since.is_none() {
                    self.held.cleared();
                }
                for event in &events {
                    log_queued(event);
                }
                self.keep_in_history(&events);
                self.board.record_events(&events);
                self.publisher_wake.notify_one();
            }
            Err((batch, error)) => self.held.hold(batch, &error),
        }
        self.board.set_held(self.held.report());
    }

    /// Adds queued events to the history on disk; a failure is logged, never holds up delivery.
    fn keep_in_history(&self, events: &[Event]) {
        let Some(history) = &self.history else { return };
        if events.is_empty() {
            return;
        }
        let mut history = history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A failed write (a full disk) is retried once on a reopened file, as the outbox does.
        let appended = history.append(events).or_else(|_| history.reopen().and_then(|()| history.append(events)));
        if let Err(e) = appended {
            tracing::warn!("{e}; the page's list misses these events (they are in the outbox)");
        }
    }

    fn run_actions(
        &mut self,
        events: &[Event],
        actions: &[(uuid::Uuid, crate::judge::config::ActionConfig)],
        now: chrono::DateTime<chrono::Utc>,
    ) {
        for (event_id, action) in actions {
            let Some(event) = events.iter().find(|e| e.event_id == *event_id) else { continue };
            self.actions.run_if_due(action, event, now);
        }
    }
}

/// One durable commit of `batch`: the events in it when it went in, or the whole batch back with
/// the error (nothing of it was stored).
#[allow(clippy::type_complexity)]
fn enqueue_batch(
    outbox: &Outbox,
    batch: Vec<(QueuedMessage, Option<Event>)>,
) -> Result<Vec<Event>, (Vec<(QueuedMessage, Option<Event>)>, String)> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let messages: Vec<QueuedMessage> = batch.iter().map(|(m, _)| m.clone()).collect();
    match outbox.enqueue(&messages) {
        Ok(_) => Ok(batch.into_iter().filter_map(|(_, event)| event).collect()),
        Err(e) => Err((batch, e.to_string())),
    }
}

/// The `events` messages of a frame with their chain sequence numbers (0 without evidence) and
/// their events; an event that cannot be encoded is logged.
fn event_messages(events: &[Event]) -> Vec<(u64, QueuedMessage, Option<Event>)> {
    events
        .iter()
        .filter_map(|event| match serde_json::to_vec(event) {
            Ok(payload) => Some((
                event.chain.as_ref().map_or(0, |c| c.seq),
                QueuedMessage { topic_suffix: "events".into(), payload },
                Some(event.clone()),
            )),
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
    let mut retry = tokio::time::interval(HELD_RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            evidenced = input.recv() => {
                let Some(evidenced) = evidenced else { break };
                heartbeat.beat();
                delivery.deliver(evidenced).await;
                heartbeat.pause();
            }
            _ = retry.tick(), if !delivery.held.is_empty() => {
                heartbeat.beat();
                delivery.retry_held().await;
                heartbeat.pause();
            }
        }
    }
    if !delivery.held.is_empty() {
        // Stopping: one last try, then say plainly what is lost with the process.
        delivery.retry_held().await;
        let report = delivery.held.report();
        if report.messages > 0 {
            tracing::error!(
                messages = report.messages,
                events = report.events,
                "stopping with messages the outbox never took"
            );
        }
    }
    heartbeat.retire();
}
