//! The durable outbox: every message for the platform is committed to disk (redb, fsync on commit)
//! before it is published, and removed only after the broker's PUBACK. An agent killed at any
//! instant keeps everything it reported as queued; at worst a message acknowledged just before the
//! kill is sent again, with the same event id.
//!
//! Why redb: a pure-Rust, crash-safe (copy-on-write B-tree with checksummed commits) embedded store,
//! so we neither write our own log format nor link C (SQLite) into a cross-compiled binary.
//!
//! Keys are a sequence that only grows, so reading in key order replays oldest first.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Counters that must survive an empty queue, e.g. the next id (ids never go back, so a reader's
/// cursor stays valid after the queue drains).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";
/// Encoding of a stored message; bump when the layout changes.
const RECORD_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {message}")]
    Store { path: PathBuf, message: String },
}

/// One message waiting for the broker: the topic below `{prefix}/{device}/`, and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub topic_suffix: String,
    pub payload: Vec<u8>,
}

impl QueuedMessage {
    fn encode(&self) -> Vec<u8> {
        let topic = self.topic_suffix.as_bytes();
        let mut bytes = Vec::with_capacity(3 + topic.len() + self.payload.len());
        bytes.push(RECORD_FORMAT);
        bytes.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        bytes.extend_from_slice(topic);
        bytes.extend_from_slice(&self.payload);
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&format, rest) = bytes.split_first()?;
        if format != RECORD_FORMAT || rest.len() < 2 {
            return None;
        }
        let topic_len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let topic = rest.get(2..2 + topic_len)?;
        Some(Self { topic_suffix: String::from_utf8(topic.to_vec()).ok()?, payload: rest[2 + topic_len..].to_vec() })
    }
}

pub struct Outbox {
    db: Database,
    path: PathBuf,
}

impl Outbox {
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let error = |message: String| OutboxError::Store { path: path.to_owned(), message };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| error(format!("cannot create folder: {e}")))?;
        }
        let db = Database::create(path).map_err(|e| error(e.to_string()))?;
        let outbox = Self { db, path: path.to_owned() };
        // Create the table up front so readers never see "no such table".
        let txn = outbox.db.begin_write().map_err(|e| outbox.error(e))?;
        txn.open_table(MESSAGES).map_err(|e| outbox.error(e))?;
        txn.open_table(META).map_err(|e| outbox.error(e))?;
        txn.commit().map_err(|e| outbox.error(e))?;
        Ok(outbox)
    }

    fn error(&self, e: impl std::fmt::Display) -> OutboxError {
        OutboxError::Store { path: self.path.clone(), message: e.to_string() }
    }

    /// Appends messages in one durable commit; returns their ids in order.
    pub fn enqueue(&self, messages: &[QueuedMessage]) -> Result<Vec<u64>, OutboxError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| self.error(e))?;
        let mut ids = Vec::with_capacity(messages.len());
        {
            let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
            let mut next = meta.get(NEXT_ID).map_err(|e| self.error(e))?.map(|v| v.value()).unwrap_or(1);
            let mut table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
            for message in messages {
                table.insert(next, message.encode().as_slice()).map_err(|e| self.error(e))?;
                ids.push(next);
                next += 1;
            }
            meta.insert(NEXT_ID, next).map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))?;
        Ok(ids)
    }

    /// Up to `limit` messages with ids above `after`, oldest first. A record that cannot be decoded
    /// is logged and skipped (it stays on disk for inspection until acknowledged away).
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, QueuedMessage)>, OutboxError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
        let mut found = Vec::with_capacity(limit.min(1024));
        for entry in table.range(after.saturating_add(1)..).map_err(|e| self.error(e))? {
            if found.len() == limit {
                break;
            }
            let (key, value) = entry.map_err(|e| self.error(e))?;
            match QueuedMessage::decode(value.value()) {
                Some(message) => found.push((key.value(), message)),
                None => tracing::error!(
                    outbox = %self.path.display(),
                    id = key.value(),
                    "unreadable outbox record skipped (unknown format or torn)"
                ),
            }
        }
        Ok(found)
    }

    /// Removes acknowledged messages in one durable commit.
    pub fn remove(&self, ids: &[u64]) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
            for id in ids {
                table.remove(id).map_err(|e| self.error(e))?;
            }
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// Messages waiting for the broker.
    pub fn depth(&self) -> Result<u64, OutboxError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
        table.len().map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> QueuedMessage {
        QueuedMessage { topic_suffix: "events".into(), payload: format!("{{\"n\":{n}}}").into_bytes() }
    }

    #[test]
    fn messages_come_back_oldest_first_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
        let ids = outbox.enqueue(&[message(1), message(2), message(3)]).unwrap();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(outbox.depth().unwrap(), 3);
        let first_two = outbox.read_after(0, 2).unwrap();
        assert_eq!(first_two.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(first_two[1].1, message(2));
        outbox.remove(&[1, 2]).unwrap();
        let rest = outbox.read_after(0, 10).unwrap();
        assert_eq!(rest, vec![(3, message(3))]);
    }

    #[test]
    fn queued_messages_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/outbox.redb");
        {
            let outbox = Outbox::open(&path).unwrap();
            outbox.enqueue(&[message(1), message(2)]).unwrap();
            outbox.remove(&[1]).unwrap();
        }
        let outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.read_after(0, 10).unwrap(), vec![(2, message(2))]);
        assert_eq!(outbox.enqueue(&[message(3)]).unwrap(), vec![3], "ids keep growing");
    }

    #[test]
    fn ids_never_go_back_after_the_queue_drains() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
        outbox.enqueue(&[message(1), message(2)]).unwrap();
        outbox.remove(&[1, 2]).unwrap();
        assert_eq!(outbox.depth().unwrap(), 0);
        assert_eq!(outbox.enqueue(&[message(3)]).unwrap(), vec![3]);
        assert_eq!(outbox.read_after(2, 10).unwrap(), vec![(3, message(3))]);
    }

    #[test]
    fn binary_payloads_and_topics_round_trip() {
        let jpeg = QueuedMessage { topic_suffix: "snapshots/0192".into(), payload: vec![0xff, 0xd8, 0, 1, 2] };
        assert_eq!(QueuedMessage::decode(&jpeg.encode()), Some(jpeg));
        assert_eq!(QueuedMessage::decode(&[9, 0, 0]), None, "unknown format");
        assert_eq!(QueuedMessage::decode(&[RECORD_FORMAT, 50, 0, b'a']), None, "torn topic");
    }

    #[test]
    fn a_file_that_is_not_an_outbox_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        std::fs::write(&path, b"not a database at all, just some bytes").unwrap();
        let err = Outbox::open(&path).err().expect("refused");
        assert!(err.to_string().contains("outbox.redb"), "{err}");
    }
}
