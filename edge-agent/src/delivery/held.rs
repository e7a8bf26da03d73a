//! Messages the outbox could not take (a full disk, an I/O error): held in memory in order and
//! offered again first, on every frame and every few seconds, so an event is never dropped
//! silently. The memory is bounded: pictures give way first (oldest first); only when events alone
//! fill the bound is the oldest event let go, and that is counted, logged and shown.

use std::collections::VecDeque;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::outbox::QueuedMessage;
use crate::wire::Event;

/// What is held, for the page and telemetry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeldReport {
    /// Messages waiting in memory for the outbox.
    pub messages: u64,
    pub events: u64,
    pub bytes: u64,
    /// Since when the outbox has refused them.
    pub since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Pictures let go to keep the memory bound, since start.
    pub pictures_dropped: u64,
    /// Events let go because events alone filled the bound, since start (the goal is 0).
    pub events_lost: u64,
}

pub struct Held {
    /// Each message, and the event it carries (to log and show once it is queued).
    messages: VecDeque<(QueuedMessage, Option<Event>)>,
    bytes: u64,
    max_bytes: u64,
    report: HeldReport,
    last_logged: Option<Instant>,
}

impl Held {
    pub fn new(max_bytes: u64) -> Self {
        Self { messages: VecDeque::new(), bytes: 0, max_bytes, report: HeldReport::default(), last_logged: None }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Everything held, oldest first, to offer the outbox (with the new messages after it).
    pub fn take(&mut self) -> Vec<(QueuedMessage, Option<Event>)> {
        self.bytes = 0;
        self.messages.drain(..).collect()
    }

    /// The outbox refused `batch` (held ones first, then new ones): keep it all, in order, within
    /// the bound.
    pub fn hold(&mut self, batch: Vec<(QueuedMessage, Option<Event>)>, error: &str) {
        self.bytes += batch.iter().map(|(m, _)| m.payload.len() as u64).sum::<u64>();
        self.messages.extend(batch);
        self.report.since.get_or_insert_with(Utc::now);
        self.report.last_error = Some(error.to_string());
        while self.bytes > self.max_bytes {
            let victim = match self.messages.iter().position(|(m, _)| m.is_evidence()) {
                Some(picture) => picture,
                None => 0,
            };
            let Some((message, event)) = self.messages.remove(victim) else { break };
            self.bytes = self.bytes.saturating_sub(message.payload.len() as u64);
            if message.is_evidence() {
                self.report.pictures_dropped += 1;
            } else if event.is_some() {
                self.report.events_lost += 1;
                tracing::error!(
                    event = ?event.as_ref().map(|e| e.event_id),
                    "an event was let go: the outbox has refused writes since {:?} and held events fill the memory bound",
                    self.report.since
                );
            }
        }
        self.refresh();
        if self.last_logged.is_none_or(|at| at.elapsed().as_secs() >= 60) {
            tracing::error!(
                held = self.messages.len(),
                events = self.report.events,
                "the outbox refuses writes ({error}); messages are held in memory and retried"
            );
            self.last_logged = Some(Instant::now());
        }
    }

    /// The outbox took everything: say so once.
    pub fn cleared(&mut self) {
        if let Some(since) = self.report.since.take() {
            tracing::info!(%since, "the outbox takes writes again; held messages are queued");
        }
        self.report.last_error = None;
        self.refresh();
    }

    fn refresh(&mut self) {
        self.report.messages = self.messages.len() as u64;
        self.report.events = self.messages.iter().filter(|(_, e)| e.is_some()).count() as u64;
        self.report.bytes = self.bytes;
    }

    pub fn report(&self) -> HeldReport {
        self.report.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::{at, test_event};
    use crate::wire::EventKind;
    use crate::wire::LifecycleState;

    fn picture(bytes: usize) -> (QueuedMessage, Option<Event>) {
        (QueuedMessage { topic_suffix: "snapshots/x".into(), payload: vec![0; bytes] }, None)
    }

    fn event(bytes: usize) -> (QueuedMessage, Option<Event>) {
        (
            QueuedMessage { topic_suffix: "events".into(), payload: vec![1; bytes] },
            Some(test_event(EventKind::Object, LifecycleState::Start, at(0.0))),
        )
    }

    #[test]
    fn pictures_give_way_first_and_events_stay_in_order() {
        let mut held = Held::new(1000);
        held.hold(vec![event(100), picture(600), event(100)], "disk full");
        held.hold(vec![picture(600), event(100)], "disk full");
        let report = held.report();
        assert_eq!((report.events, report.pictures_dropped, report.events_lost), (3, 1, 0));
        let kept = held.take();
        assert_eq!(kept.iter().filter(|(m, _)| m.is_evidence()).count(), 1, "the newest picture is kept");
        assert!(held.is_empty());
    }

    #[test]
    fn only_events_over_the_bound_are_let_go_and_counted() {
        let mut held = Held::new(250);
        held.hold(vec![event(100), event(100), event(100)], "disk full");
        let report = held.report();
        assert_eq!((report.events, report.events_lost), (2, 1));
        held.take();
        held.cleared();
        assert_eq!(held.report().since, None);
    }
}
