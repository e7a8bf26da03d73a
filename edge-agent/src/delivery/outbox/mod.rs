//! The durable outbox: every message for the platform (events, evidence pictures, stats, command
//! acks) is committed to disk before it is published, and removed only after the broker's PUBACK.
//! An agent killed at any instant keeps everything it reported as queued; at worst a message
//! acknowledged just before the kill is sent again, with the same event id.
//!
//! Why redb: a pure-Rust, crash-safe embedded store (copy-on-write B-tree, checksummed commits,
//! repaired to the last good commit after a power cut), so we link no C (SQLite) into a
//! cross-compiled binary. Each record also carries its own CRC-32, so a damaged record is found,
//! logged and moved aside instead of being published or crashing the agent.
//!
//! Keys are a sequence that only grows, so reading in key order replays oldest first, and per
//! camera order is the order of the judge. The queue is bounded by a byte quota: evidence pictures
//! (`snapshots/...`) are pruned oldest first to make room; event records are never pruned.

pub mod config;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;

use crate::base::redb_file;

pub use config::OutboxConfig;

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Ids (and record sizes) of queued evidence pictures: what the quota may prune, oldest first.
const EVIDENCE: TableDefinition<u64, u64> = TableDefinition::new("evidence");
/// Records whose CRC did not match, kept for inspection, never published.
const DAMAGED: TableDefinition<u64, &[u8]> = TableDefinition::new("damaged");
/// Counters that must survive restarts and an empty queue, e.g. the next id (ids never go back,
/// so a reader's cursor stays valid after the queue drains).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";
const STORED_BYTES: &str = "stored_bytes";
const EVIDENCE_PRUNED: &str = "evidence_pruned";
/// First layout: format byte, topic length, topic, payload (no checksum); still read.
const RECORD_FORMAT_V1: u8 = 1;
/// Format byte, CRC-32 of everything after it, topic length, topic, payload.
const RECORD_FORMAT: u8 = 2;
/// Topic prefix of evidence pictures, the only messages the quota may prune.
pub const EVIDENCE_TOPIC_PREFIX: &str = "snapshots/";
/// The quota log line is repeated at most this often while pruning goes on.
const PRUNE_LOG_EVERY: Duration = Duration::from_secs(60);

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

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordDamage {
    UnknownFormat(u8),
    Truncated,
    ChecksumMismatch { stored: u32, computed: u32 },
    TopicNotUtf8,
}

impl std::fmt::Display for RecordDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordDamage::UnknownFormat(format) => write!(f, "unknown record format {format}"),
            RecordDamage::Truncated => write!(f, "record is shorter than its header says (torn write)"),
            RecordDamage::ChecksumMismatch { stored, computed } => {
                write!(f, "CRC mismatch: stored {stored:08x}, computed {computed:08x} (torn or corrupted write)")
            }
            RecordDamage::TopicNotUtf8 => write!(f, "topic is not UTF-8"),
        }
    }
}

impl QueuedMessage {
    pub fn is_evidence(&self) -> bool {
        self.topic_suffix.starts_with(EVIDENCE_TOPIC_PREFIX)
    }

    pub fn encode(&self) -> Vec<u8> {
        let topic = self.topic_suffix.as_bytes();
        let mut bytes = Vec::with_capacity(7 + topic.len() + self.payload.len());
        bytes.push(RECORD_FORMAT);
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&(topic.len().min(u16::MAX as usize) as u16).to_le_bytes());
        bytes.extend_from_slice(topic);
        bytes.extend_from_slice(&self.payload);
        let crc = crc32fast::hash(&bytes[5..]);
        bytes[1..5].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordDamage> {
        let (&format, rest) = bytes.split_first().ok_or(RecordDamage::Truncated)?;
        let body = match format {
            RECORD_FORMAT => {
                let (crc, body) = rest.split_at_checked(4).ok_or(RecordDamage::Truncated)?;
                let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
                let computed = crc32fast::hash(body);
                if stored != computed {
                    return Err(RecordDamage::ChecksumMismatch { stored, computed });
                }
                body
            }
            RECORD_FORMAT_V1 => rest,
            other => return Err(RecordDamage::UnknownFormat(other)),
        };
        let (length, rest) = body.split_at_checked(2).ok_or(RecordDamage::Truncated)?;
        let topic_len = u16::from_le_bytes([length[0], length[1]]) as usize;
        let (topic, payload) = rest.split_at_checked(topic_len).ok_or(RecordDamage::Truncated)?;
        let topic_suffix = String::from_utf8(topic.to_vec()).map_err(|_| RecordDamage::TopicNotUtf8)?;
        Ok(Self { topic_suffix, payload: payload.to_vec() })
    }
}

/// What one enqueue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Ids of the stored messages, in order (evidence refused for lack of room has none).
    pub ids: Vec<u64>,
    /// Older evidence pictures removed to make room.
    pub pruned_evidence: u64,
    /// New evidence pictures not stored because only event records were left to prune.
    pub refused_evidence: u64,
}

/// The outbox's fill level, for the page, telemetry and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Messages waiting for the broker.
    pub depth: u64,
    /// Bytes of the waiting messages (the file itself is larger by redb's page overhead).
    pub bytes: u64,
    pub quota_bytes: u64,
    /// Evidence pictures pruned for the quota since the outbox was created.
    pub evidence_pruned_total: u64,
    /// When the quota last forced a prune.
    pub last_pruned_at: Option<DateTime<Utc>>,
    /// True while the quota is reached (the last enqueue had to prune or refuse).
    pub quota_reached: bool,
    /// Damaged records moved aside since start.
    pub damaged_records: u64,
}

#[derive(Debug, Default)]
struct QuotaState {
    last_pruned_at: Option<DateTime<Utc>>,
    quota_reached: bool,
    last_logged: Option<Instant>,
    pruned_since_log: u64,
    refused_since_log: u64,
    damaged_records: u64,
}

pub struct Outbox {
    /// None only while it is being reopened after an I/O error.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    quota_bytes: u64,
    /// Disk space kept free for event records (pictures give way).
    reserve_bytes: u64,
    quota: Mutex<QuotaState>,
    reopened: Mutex<ReopenState>,
}

/// After an I/O error (a full disk) redb refuses every later write until the file is reopened:
/// the outbox reopens it and tries once more, and counts that for the page and telemetry.
#[derive(Debug, Default)]
struct ReopenState {
    reopens: u64,
    last_logged: Option<Instant>,
}

impl Outbox {
    /// Opens (or creates) the outbox with no quota. A file that redb finds corrupted beyond repair
    /// is moved aside (`outbox.redb.damaged-<time>`, kept for inspection) and a fresh outbox is
    /// started, so one bad file does not keep the box from reporting new events.
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let error = |message: String| OutboxError::Store { path: path.to_owned(), message };
        if let Some(parent) = path.parent() {
            crate::base::write_file::create_folder_durably(parent)
                .map_err(|e| error(format!("cannot create folder: {e}")))?;
        }
        let db = match redb_file::create(path) {
            Ok(db) => db,
            Err(e) if is_damaged_file(&e) => {
                let why = e.to_string();
                let aside = path.with_extension(format!("redb.damaged-{}", Utc::now().format("%Y%m%dT%H%M%S")));
                std::fs::rename(path, &aside)
                    .map_err(|e| error(format!("is corrupted ({why}) and cannot be moved aside: {e}")))?;
                tracing::error!(
                    outbox = %path.display(),
                    moved_to = %aside.display(),
                    "outbox file is corrupted beyond repair ({why}); moved aside, starting a fresh outbox"
                );
                redb_file::create(path).map_err(|e| error(e.to_string()))?
            }
            Err(e) => return Err(error(e.to_string())),
        };
        let outbox = Self {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            quota_bytes: u64::MAX,
            reserve_bytes: 0,
            quota: Mutex::default(),
            reopened: Mutex::new(ReopenState::default()),
        };
        outbox.prepare()?;
        Ok(outbox)
    }

    /// Keeps this much of the disk free for event records: pictures are not queued into it.
    pub fn with_reserve(mut self, reserve_bytes: u64) -> Self {
        self.reserve_bytes = reserve_bytes;
        self
    }

    /// What the queued messages may take given the disk: what they take now plus the free space
    /// above the reserve (unbounded where free space cannot be read).
    fn disk_room(&self, stored: u64) -> u64 {
        let folder = self.path.parent().unwrap_or(Path::new("."));
        match crate::base::disk::disk_space(folder) {
            Some(disk) => stored.saturating_add(disk.free_bytes.saturating_sub(self.reserve_bytes)),
            None => u64::MAX,
        }
    }

    /// Bounds the bytes of queued messages; see the module notes for what is pruned.
    pub fn with_quota(mut self, quota_bytes: u64) -> Self {
        self.quota_bytes = quota_bytes.max(1);
        self
    }

    /// Creates the tables up front (so readers never see "no such table") and counts the stored
    /// bytes of an outbox written before byte accounting existed.
    fn prepare(&self) -> Result<(), OutboxError> {
        let db = self.handle()?;
        let txn = db.begin_write().map_err(|e| self.error(e))?;
        {
            txn.open_table(EVIDENCE).map_err(|e| self.error(e))?;
            txn.open_table(DAMAGED).map_err(|e| self.error(e))?;
            let messages = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
            if meta.get(STORED_BYTES).map_err(|e| self.error(e))?.is_none() {
                let mut bytes = 0u64;
                for entry in messages.iter().map_err(|e| self.error(e))? {
                    let (_, value) = entry.map_err(|e| self.error(e))?;
                    bytes += value.value().len() as u64;
                }
                meta.insert(STORED_BYTES, bytes).map_err(|e| self.error(e))?;
            }
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// The open database (an error while it is being reopened).
    fn handle(&self) -> Result<DbGuard<'_>, OutboxError> {
        let guard = self.db.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.is_none() {
            return Err(self.error("is being reopened after an I/O error"));
        }
        Ok(DbGuard(guard))
    }

    /// Runs `op`; after a failure (redb refuses all writes after one I/O error, e.g. a full disk)
    /// reopens the file, which repairs it to its last good commit, and runs `op` once more.
    fn retrying<T>(&self, op: impl Fn() -> Result<T, OutboxError>) -> Result<T, OutboxError> {
        match op() {
            Ok(value) => Ok(value),
            Err(first) => {
                self.reopen().map_err(|e| self.error(format!("{first}; reopening failed too: {e}")))?;
                op()
            }
        }
    }

    /// Closes and reopens the file: the only way out of redb's "previous I/O error" state.
    fn reopen(&self) -> Result<(), OutboxError> {
        {
            let mut guard = self.db.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            drop(guard.take());
            let db = redb_file::create(&self.path).map_err(|e| self.error(e))?;
            *guard = Some(db);
        }
        self.prepare()?;
        let mut state = self.reopened.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.reopens += 1;
        if state.last_logged.is_none_or(|at| at.elapsed() >= PRUNE_LOG_EVERY) {
            tracing::warn!(outbox = %self.path.display(), reopens = state.reopens, "outbox reopened after an I/O error");
            state.last_logged = Some(Instant::now());
        }
        Ok(())
    }

    /// Times the file was reopened after an I/O error since start.
    pub fn reopens(&self) -> u64 {
        self.reopened.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).reopens
    }

    fn error(&self, e: impl std::fmt::Display) -> OutboxError {
        OutboxError::Store { path: self.path.clone(), message: e.to_string() }
    }

    fn lock_quota(&self) -> std::sync::MutexGuard<'_, QuotaState> {
        self.quota.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends messages in one durable commit (fsync before it returns), pruning the oldest
    /// evidence pictures first when the quota would be exceeded.
    pub fn enqueue(&self, messages: &[QueuedMessage]) -> Result<Enqueued, OutboxError> {
        self.retrying(|| self.enqueue_once(messages))
    }

    fn enqueue_once(&self, messages: &[QueuedMessage]) -> Result<Enqueued, OutboxError> {
        let db = self.handle()?;
        let mut txn = db.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| self.error(e))?;
        let mut enqueued = Enqueued::default();
        {
            let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
            let mut table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
            let mut evidence = txn.open_table(EVIDENCE).map_err(|e| self.error(e))?;
            let mut next = meta.get(NEXT_ID).map_err(|e| self.error(e))?.map(|v| v.value()).unwrap_or(1);
            let mut stored = meta.get(STORED_BYTES).map_err(|e| self.error(e))?.map(|v| v.value()).unwrap_or(0);
            let records: Vec<(bool, Vec<u8>)> = messages.iter().map(|m| (m.is_evidence(), m.encode())).collect();
            let incoming: u64 = records.iter().map(|(_, r)| r.len() as u64).sum();
            // The quota, but never more than the disk really has left above the reserve kept for
            // event records: pictures give way to what the disk can take.
            let disk_room = self.disk_room(stored);
            let quota = self.quota_bytes.min(disk_room);
            // Make room by pruning the oldest evidence already queued.
            while stored + incoming > quota {
                let Some((id, size)) =
                    evidence.pop_first().map_err(|e| self.error(e))?.map(|(k, v)| (k.value(), v.value()))
                else {
                    break;
                };
                table.remove(id).map_err(|e| self.error(e))?;
                stored = stored.saturating_sub(size);
                enqueued.pruned_evidence += 1;
            }
            let mut room = quota.saturating_sub(stored);
            for (is_evidence, record) in records {
                let size = record.len() as u64;
                if is_evidence {
                    // Evidence that still does not fit is dropped; events always go in.
                    if size > room {
                        enqueued.refused_evidence += 1;
                        continue;
                    }
                    evidence.insert(next, size).map_err(|e| self.error(e))?;
                }
                room = room.saturating_sub(size);
                table.insert(next, record.as_slice()).map_err(|e| self.error(e))?;
                stored += size;
                enqueued.ids.push(next);
                next += 1;
            }
            meta.insert(NEXT_ID, next).map_err(|e| self.error(e))?;
            meta.insert(STORED_BYTES, stored).map_err(|e| self.error(e))?;
            if enqueued.pruned_evidence > 0 || enqueued.refused_evidence > 0 {
                let total = meta.get(EVIDENCE_PRUNED).map_err(|e| self.error(e))?.map(|v| v.value()).unwrap_or(0);
                let added = enqueued.pruned_evidence + enqueued.refused_evidence;
                meta.insert(EVIDENCE_PRUNED, total + added).map_err(|e| self.error(e))?;
            }
        }
        txn.commit().map_err(|e| self.error(e))?;
        self.note_quota(&enqueued);
        Ok(enqueued)
    }

    /// Keeps the quota state for the page and telemetry, and says so in the log (once, then at
    /// most once a minute while pruning goes on).
    fn note_quota(&self, enqueued: &Enqueued) {
        let pressed = enqueued.pruned_evidence > 0 || enqueued.refused_evidence > 0;
        let mut quota = self.lock_quota();
        if !pressed {
            if quota.quota_reached && !enqueued.ids.is_empty() {
                quota.quota_reached = false;
            }
            return;
        }
        let first = !quota.quota_reached;
        quota.quota_reached = true;
        quota.last_pruned_at = Some(Utc::now());
        quota.pruned_since_log += enqueued.pruned_evidence;
        quota.refused_since_log += enqueued.refused_evidence;
        let due = quota.last_logged.is_none_or(|at| at.elapsed() >= PRUNE_LOG_EVERY);
        if first || due {
            tracing::warn!(
                outbox = %self.path.display(),
                quota_mb = self.quota_bytes / (1024 * 1024),
                pruned = quota.pruned_since_log,
                refused = quota.refused_since_log,
                "outbox quota reached: pruned {} evidence pictures, oldest first ({} new ones not stored); \
                 event records are kept",
                quota.pruned_since_log,
                quota.refused_since_log
            );
            quota.last_logged = Some(Instant::now());
            quota.pruned_since_log = 0;
            quota.refused_since_log = 0;
        }
    }

    /// Up to `limit` messages with ids above `after`, oldest first. A record that fails its check
    /// is logged, moved to the `damaged` table and skipped: never published, never a crash.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, QueuedMessage)>, OutboxError> {
        self.retrying(|| self.read_after_once(after, limit))
    }

    fn read_after_once(&self, after: u64, limit: usize) -> Result<Vec<(u64, QueuedMessage)>, OutboxError> {
        let mut found = Vec::with_capacity(limit.min(1024));
        let mut damaged = Vec::new();
        {
            let db = self.handle()?;
            let txn = db.begin_read().map_err(|e| self.error(e))?;
            let table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
            for entry in table.range(after.saturating_add(1)..).map_err(|e| self.error(e))? {
                if found.len() == limit {
                    break;
                }
                let (key, value) = entry.map_err(|e| self.error(e))?;
                match QueuedMessage::decode(value.value()) {
                    Ok(message) => found.push((key.value(), message)),
                    Err(damage) => damaged.push((key.value(), damage)),
                }
            }
        }
        if !damaged.is_empty() {
            self.move_aside(&damaged)?;
        }
        Ok(found)
    }

    fn move_aside(&self, damaged: &[(u64, RecordDamage)]) -> Result<(), OutboxError> {
        let db = self.handle()?;
        let mut txn = db.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
            let mut aside = txn.open_table(DAMAGED).map_err(|e| self.error(e))?;
            let mut evidence = txn.open_table(EVIDENCE).map_err(|e| self.error(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
            let mut stored = meta.get(STORED_BYTES).map_err(|e| self.error(e))?.map(|v| v.value()).unwrap_or(0);
            for (id, damage) in damaged {
                let removed = table.remove(id).map_err(|e| self.error(e))?.map(|v| v.value().to_vec());
                if let Some(bytes) = removed {
                    stored = stored.saturating_sub(bytes.len() as u64);
                    aside.insert(id, bytes.as_slice()).map_err(|e| self.error(e))?;
                }
                evidence.remove(id).map_err(|e| self.error(e))?;
                tracing::error!(
                    outbox = %self.path.display(),
                    id,
                    "damaged outbox record skipped: {damage}; moved to table `damaged` for inspection"
                );
            }
            meta.insert(STORED_BYTES, stored).map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))?;
        self.lock_quota().damaged_records += damaged.len() as u64;
        Ok(())
    }

    /// Removes acknowledged messages in one durable commit. Ids already gone (pruned evidence) are
    /// fine.
    pub fn remove(&self, ids: &[u64]) -> Result<(), OutboxError> {
        self.retrying(|| self.remove_once(ids))
    }

    fn remove_once(&self, ids: &[u64]) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let db = self.handle()?;
        let mut txn = db.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
            let mut evidence = txn.open_table(EVIDENCE).map_err(|e| self.error(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
            let mut stored = meta.get(STORED_BYTES).map_err(|e| self.error(e))?.map(|v| v.value()).unwrap_or(0);
            for id in ids {
                if let Some(value) = table.remove(id).map_err(|e| self.error(e))? {
                    stored = stored.saturating_sub(value.value().len() as u64);
                }
                evidence.remove(id).map_err(|e| self.error(e))?;
            }
            meta.insert(STORED_BYTES, stored).map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// Messages waiting for the broker.
    pub fn depth(&self) -> Result<u64, OutboxError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
        table.len().map_err(|e| self.error(e))
    }

    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let db = self.handle()?;
        let txn = db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
        let meta = txn.open_table(META).map_err(|e| self.error(e))?;
        let read = |key: &str| -> Result<u64, OutboxError> {
            Ok(meta.get(key).map_err(|e| self.error(e))?.map(|v| v.value()).unwrap_or(0))
        };
        let quota = self.lock_quota();
        Ok(OutboxStats {
            depth: table.len().map_err(|e| self.error(e))?,
            bytes: read(STORED_BYTES)?,
            quota_bytes: self.quota_bytes,
            evidence_pruned_total: read(EVIDENCE_PRUNED)?,
            last_pruned_at: quota.last_pruned_at,
            quota_reached: quota.quota_reached,
            damaged_records: quota.damaged_records,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a raw record as if a write had gone wrong; for tests of the damage path only.
    #[cfg(test)]
    fn insert_raw_for_test(&self, bytes: &[u8]) -> Result<u64, OutboxError> {
        let db = self.handle()?;
        let txn = db.begin_write().map_err(|e| self.error(e))?;
        let id;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
            let mut table = txn.open_table(MESSAGES).map_err(|e| self.error(e))?;
            id = meta.get(NEXT_ID).map_err(|e| self.error(e))?.map(|v| v.value()).unwrap_or(1);
            table.insert(id, bytes).map_err(|e| self.error(e))?;
            meta.insert(NEXT_ID, id + 1).map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))?;
        Ok(id)
    }
}

/// A file redb cannot read as a database (as opposed to one that is busy or unreadable).
/// A read guard that derefs to the open database.
struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        // `handle` only hands out a guard over an open database.
        self.0.as_ref().unwrap_or_else(|| unreachable!("checked by Outbox::handle"))
    }
}

fn is_damaged_file(error: &redb::DatabaseError) -> bool {
    match error {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        // redb says "not a redb database" as an InvalidData I/O error.
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) => e.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> QueuedMessage {
        QueuedMessage { topic_suffix: "events".into(), payload: format!("{{\"n\":{n}}}").into_bytes() }
    }

    fn evidence(n: usize, size: usize) -> QueuedMessage {
        QueuedMessage { topic_suffix: format!("snapshots/{n}"), payload: vec![n as u8; size] }
    }

    #[test]
    fn messages_come_back_oldest_first_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
        let ids = outbox.enqueue(&[message(1), message(2), message(3)]).unwrap().ids;
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
        assert_eq!(outbox.enqueue(&[message(3)]).unwrap().ids, vec![3], "ids keep growing");
        assert_eq!(outbox.stats().unwrap().bytes, (message(2).encode().len() + message(3).encode().len()) as u64);
    }

    #[test]
    fn ids_never_go_back_after_the_queue_drains() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
        outbox.enqueue(&[message(1), message(2)]).unwrap();
        outbox.remove(&[1, 2]).unwrap();
        assert_eq!(outbox.depth().unwrap(), 0);
        assert_eq!(outbox.stats().unwrap().bytes, 0);
        assert_eq!(outbox.enqueue(&[message(3)]).unwrap().ids, vec![3]);
        assert_eq!(outbox.read_after(2, 10).unwrap(), vec![(3, message(3))]);
    }

    #[test]
    fn binary_payloads_and_topics_round_trip() {
        let jpeg = QueuedMessage { topic_suffix: "snapshots/0192".into(), payload: vec![0xff, 0xd8, 0, 1, 2] };
        assert_eq!(QueuedMessage::decode(&jpeg.encode()), Ok(jpeg));
        assert_eq!(QueuedMessage::decode(&[9, 0, 0]), Err(RecordDamage::UnknownFormat(9)));
        assert_eq!(QueuedMessage::decode(&[RECORD_FORMAT_V1, 50, 0, b'a']), Err(RecordDamage::Truncated));
        let old = [RECORD_FORMAT_V1, 6, 0, b'e', b'v', b'e', b'n', b't', b's', b'{', b'}'];
        assert_eq!(
            QueuedMessage::decode(&old),
            Ok(QueuedMessage { topic_suffix: "events".into(), payload: b"{}".to_vec() })
        );
    }

    #[test]
    fn a_flipped_bit_or_a_torn_tail_fails_the_checksum() {
        let record = message(7).encode();
        let mut flipped = record.clone();
        *flipped.last_mut().unwrap() ^= 0x10;
        assert!(matches!(QueuedMessage::decode(&flipped), Err(RecordDamage::ChecksumMismatch { .. })));
        let torn = &record[..record.len() - 3];
        assert!(matches!(QueuedMessage::decode(torn), Err(RecordDamage::ChecksumMismatch { .. })));
        assert_eq!(QueuedMessage::decode(&record[..3]), Err(RecordDamage::Truncated));
    }

    #[test]
    fn a_damaged_record_is_skipped_and_moved_aside_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
        outbox.enqueue(&[message(1)]).unwrap();
        let mut torn = message(2).encode();
        torn.truncate(torn.len() - 2);
        let torn_id = outbox.insert_raw_for_test(&torn).unwrap();
        outbox.enqueue(&[message(3)]).unwrap();
        let read = outbox.read_after(0, 10).unwrap();
        assert_eq!(read.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(), vec![message(1), message(3)]);
        assert!(read.iter().all(|(id, _)| *id != torn_id));
        assert_eq!(outbox.depth().unwrap(), 2, "the damaged record left the queue");
        assert_eq!(outbox.stats().unwrap().damaged_records, 1);
        assert_eq!(outbox.read_after(0, 10).unwrap().len(), 2, "and is not met again");
    }

    #[test]
    fn a_full_quota_prunes_the_oldest_evidence_and_keeps_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let picture = evidence(0, 1000).encode().len() as u64;
        // Room for three pictures and a few events.
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap().with_quota(3 * picture + 100);
        for n in 1..=3 {
            let enqueued = outbox.enqueue(&[message(n), evidence(n, 1000)]).unwrap();
            assert_eq!(enqueued.pruned_evidence, 0);
        }
        let enqueued = outbox.enqueue(&[message(4), evidence(4, 1000)]).unwrap();
        assert_eq!(enqueued.pruned_evidence, 1);
        let stats = outbox.stats().unwrap();
        assert!(stats.quota_reached && stats.evidence_pruned_total == 1 && stats.last_pruned_at.is_some());
        assert!(stats.bytes <= stats.quota_bytes, "{stats:?}");
        let topics: Vec<String> = outbox.read_after(0, 100).unwrap().into_iter().map(|(_, m)| m.topic_suffix).collect();
        assert_eq!(
            topics,
            ["events", "events", "snapshots/2", "events", "snapshots/3", "events", "snapshots/4"],
            "the oldest picture went first; every event stayed"
        );
    }

    #[test]
    fn when_only_events_are_left_new_evidence_is_refused_and_events_still_go_in() {
        let dir = tempfile::tempdir().unwrap();
        let event_size = message(1).encode().len() as u64;
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap().with_quota(2 * event_size);
        outbox.enqueue(&[message(1), message(2)]).unwrap();
        let enqueued = outbox.enqueue(&[message(3), evidence(3, 500)]).unwrap();
        assert_eq!((enqueued.ids.len(), enqueued.refused_evidence), (1, 1));
        let topics: Vec<String> = outbox.read_after(0, 100).unwrap().into_iter().map(|(_, m)| m.topic_suffix).collect();
        assert_eq!(topics, ["events", "events", "events"]);
        assert_eq!(outbox.stats().unwrap().evidence_pruned_total, 1);
    }

    #[test]
    fn acknowledging_a_pruned_message_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let picture = evidence(0, 1000).encode().len() as u64;
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap().with_quota(picture);
        let first = outbox.enqueue(&[evidence(1, 1000)]).unwrap().ids;
        outbox.enqueue(&[evidence(2, 1000)]).unwrap();
        outbox.remove(&first).unwrap();
        let stats = outbox.stats().unwrap();
        assert_eq!((stats.depth, stats.bytes), (1, picture));
    }

    #[test]
    fn a_corrupted_file_is_moved_aside_and_a_fresh_outbox_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        std::fs::write(&path, b"not a database at all, just some bytes").unwrap();
        let outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.depth().unwrap(), 0);
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("outbox.redb.damaged-"))
            .collect();
        assert_eq!(kept.len(), 1, "the damaged file is kept for inspection");
    }

    #[test]
    fn an_outbox_in_use_by_another_agent_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        let _first = Outbox::open(&path).unwrap();
        let err = Outbox::open(&path).err().expect("refused");
        assert!(err.to_string().contains("outbox.redb"), "{err}");
    }
}
