//! The local event history: every event message the box queued, kept on disk (`history.redb`) so
//! the page's events survive restarts and can be searched for the retention period
//! (`evidence.max_age_days`). The page loads the newest [`crate::delivery::board::EVENT_HISTORY`]
//! at start; older ones are pruned by age. A failing history never holds up delivery: the events
//! are in the outbox already, and the failure is logged.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::base::redb_file;
use crate::wire::Event;

/// Key: a sequence that only grows; value: the event message as JSON.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Pruning runs at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The history's share of the state folder: at most this many events (about 1.5 kB each), the
/// oldest go first, whatever the retention period says.
pub const MAX_EVENTS: u64 = 50_000;

#[derive(Debug, thiserror::Error)]
#[error("event history {path}: {message}")]
pub struct HistoryError {
    path: PathBuf,
    message: String,
}

pub struct EventHistory {
    /// None only while it is reopened after an I/O error.
    db: Option<Database>,
    path: PathBuf,
    keep_days: u32,
    last_pruned: Option<Instant>,
}

impl EventHistory {
    /// Opens (or creates) the history; a file redb cannot repair is moved aside and a new one
    /// started (the events are in the outbox and the chain; only the page's list is affected).
    pub fn open(path: &Path, keep_days: u32) -> Result<Self, HistoryError> {
        let error = |message: String| HistoryError { path: path.to_owned(), message };
        let db = match redb_file::create(path) {
            Ok(db) => db,
            Err(e) => {
                let aside = path.with_extension(format!("redb.damaged-{}", Utc::now().format("%Y%m%dT%H%M%S")));
                tracing::error!(path = %path.display(), "event history unreadable ({e}); moved aside to {}", aside.display());
                std::fs::rename(path, &aside).map_err(|e| error(format!("cannot move aside: {e}")))?;
                redb_file::create(path).map_err(|e| error(e.to_string()))?
            }
        };
        let txn = db.begin_write().map_err(|e| error(e.to_string()))?;
        txn.open_table(EVENTS).map_err(|e| error(e.to_string()))?;
        txn.commit().map_err(|e| error(e.to_string()))?;
        Ok(Self { db: Some(db), path: path.to_owned(), keep_days, last_pruned: None })
    }

    fn db(&self) -> Result<&Database, HistoryError> {
        self.db.as_ref().ok_or_else(|| self.error("is closed after a failed reopen"))
    }

    /// After an I/O error (a full disk) redb refuses every later write until the file is reopened.
    pub fn reopen(&mut self) -> Result<(), HistoryError> {
        drop(self.db.take());
        self.db = Some(redb_file::create(&self.path).map_err(|e| self.error(e))?);
        Ok(())
    }

    fn error(&self, e: impl std::fmt::Display) -> HistoryError {
        HistoryError { path: self.path.clone(), message: e.to_string() }
    }

    /// Appends queued events in one durable commit.
    pub fn append(&mut self, events: &[Event]) -> Result<(), HistoryError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut txn = self.db()?.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(EVENTS).map_err(|e| self.error(e))?;
            let mut next = table.last().map_err(|e| self.error(e))?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            for event in events {
                let json = serde_json::to_vec(event).map_err(|e| self.error(e))?;
                table.insert(next, json.as_slice()).map_err(|e| self.error(e))?;
                next += 1;
            }
        }
        txn.commit().map_err(|e| self.error(e))?;
        if self.last_pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            self.last_pruned = Some(Instant::now());
            let before = Utc::now() - chrono::Duration::days(i64::from(self.keep_days));
            let pruned = self.prune_before(before)? + self.prune_to(MAX_EVENTS)?;
            if pruned > 0 {
                tracing::info!(events = pruned, days = self.keep_days, "pruned the event history by age");
            }
        }
        Ok(())
    }

    /// The newest `limit` events, oldest first.
    pub fn newest(&self, limit: usize) -> Result<Vec<Event>, HistoryError> {
        let txn = self.db()?.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.error(e))?;
        let mut events = Vec::with_capacity(limit.min(4096));
        for entry in table.iter().map_err(|e| self.error(e))?.rev().take(limit) {
            let (_, value) = entry.map_err(|e| self.error(e))?;
            match serde_json::from_slice::<Event>(value.value()) {
                Ok(event) => events.push(event),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "a history record is not an event ({e}); skipped")
                }
            }
        }
        events.reverse();
        Ok(events)
    }

    /// Visits events newest first until `visit` says stop.
    pub fn for_each_newest_first(&self, mut visit: impl FnMut(Event) -> bool) -> Result<(), HistoryError> {
        let txn = self.db()?.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.error(e))?;
        for entry in table.iter().map_err(|e| self.error(e))?.rev() {
            let (_, value) = entry.map_err(|e| self.error(e))?;
            if let Ok(event) = serde_json::from_slice::<Event>(value.value()) {
                if !visit(event) {
                    break;
                }
            }
        }
        Ok(())
    }

    pub fn len(&self) -> Result<u64, HistoryError> {
        let txn = self.db()?.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.error(e))?;
        table.len().map_err(|e| self.error(e))
    }

    pub fn is_empty(&self) -> Result<bool, HistoryError> {
        Ok(self.len()? == 0)
    }

    /// Deletes events whose time is before `before`; returns how many went.
    pub fn prune_before(&mut self, before: DateTime<Utc>) -> Result<u64, HistoryError> {
        let txn = self.db()?.begin_write().map_err(|e| self.error(e))?;
        let mut pruned = 0;
        {
            let mut table = txn.open_table(EVENTS).map_err(|e| self.error(e))?;
            let mut old = Vec::new();
            for entry in table.iter().map_err(|e| self.error(e))? {
                let (key, value) = entry.map_err(|e| self.error(e))?;
                let time = serde_json::from_slice::<serde_json::Value>(value.value())
                    .ok()
                    .and_then(|v| v["time"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()));
                match time {
                    Some(time) if time < before => old.push(key.value()),
                    // Keys grow with time: the first young event ends the old ones.
                    Some(_) => break,
                    None => old.push(key.value()),
                }
            }
            for key in old {
                table.remove(key).map_err(|e| self.error(e))?;
                pruned += 1;
            }
        }
        txn.commit().map_err(|e| self.error(e))?;
        Ok(pruned)
    }

    /// Deletes the oldest events beyond `max`; returns how many went.
    pub fn prune_to(&mut self, max: u64) -> Result<u64, HistoryError> {
        let excess = self.len()?.saturating_sub(max);
        if excess == 0 {
            return Ok(0);
        }
        let txn = self.db()?.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(EVENTS).map_err(|e| self.error(e))?;
            for _ in 0..excess {
                if table.pop_first().map_err(|e| self.error(e))?.is_none() {
                    break;
                }
            }
        }
        txn.commit().map_err(|e| self.error(e))?;
        Ok(excess)
    }

    /// Bytes of the history file, for the storage budget.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::{at, test_event};
    use crate::wire::EventKind;
    use crate::wire::LifecycleState;

    #[test]
    fn events_survive_reopening_and_old_ones_are_pruned_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.redb");
        // The fixture's days lie in 2023: a retention long enough that appending prunes none.
        let mut history = EventHistory::open(&path, 100_000).unwrap();
        let events: Vec<Event> =
            (0..5).map(|i| test_event(EventKind::Object, LifecycleState::Start, at(f64::from(i) * 86_400.0))).collect();
        history.append(&events).unwrap();
        drop(history);
        let mut history = EventHistory::open(&path, 100_000).unwrap();
        let newest = history.newest(3).unwrap();
        assert_eq!(
            newest.iter().map(|e| e.time).collect::<Vec<_>>(),
            vec![at(2.0 * 86_400.0), at(3.0 * 86_400.0), at(4.0 * 86_400.0)]
        );
        assert_eq!(history.prune_before(at(2.5 * 86_400.0)).unwrap(), 3);
        assert_eq!(history.len().unwrap(), 2);
        assert_eq!(history.prune_to(1).unwrap(), 1, "the share bounds it too");
        assert_eq!(history.newest(5).unwrap()[0].time, at(4.0 * 86_400.0), "the newest stays");
    }

    #[test]
    fn an_unreadable_history_file_is_moved_aside_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.redb");
        std::fs::write(&path, b"not a database at all, just garbage bytes").unwrap();
        let history = EventHistory::open(&path, 30).unwrap();
        assert!(history.is_empty().unwrap());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("damaged"));
        assert!(aside, "the old file is kept for inspection");
    }
}
