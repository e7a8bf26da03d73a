//! The device's signed chain as it travels (docs/schemas/chain.schema.json): each record's body
//! (JSON text) is hashed and signed with the device key, holds the previous record's hash, and goes
//! out with its event message (`Event.chain`) or on the `chain` topic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_sha256` of the first record.
pub const NO_PREVIOUS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A chain record as it travels: the exact bytes that were hashed and signed (`record`, the record
/// body as JSON text), their sha256, the device's Ed25519 signature over them, and, for reading
/// without parsing `record`, its sequence number and the previous record's hash. For an event
/// message, `record` holds the event as sent minus this `chain` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainProof {
    pub seq: u64,
    pub prev_sha256: String,
    pub sha256: String,
    /// Hex Ed25519 signature of `record`'s bytes.
    pub signature: String,
    pub record: String,
}

/// A file of evidence and its hash, as the chain records it (part of the event message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceFile {
    /// Path relative to the evidence folder, `/`-separated.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

/// Where the evidence of an event message is kept in the device's chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRef {
    /// Sequence number of the chain record holding this message.
    pub chain_seq: u64,
    pub files: Vec<EvidenceFile>,
}

/// What a record says, tagged by `record`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum RecordContent {
    /// The first record: which key signs this chain.
    Genesis { public_key: String },
    /// An event message (as [`crate::wire::Event::signed_form`]) and its evidence files.
    Event { event: serde_json::Value, evidence: Vec<EvidenceFile> },
    /// An event's video clip, finished after the event's messages (its post-roll): the file, its
    /// hash and the wall-clock times of its first and last pictures.
    Clip {
        event_id: String,
        /// Other events of the camera the clip covers (they started while it was recording);
        /// each finds it under its own name too (`<day>/<event_id>-clip.mp4`, the same file).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<String>,
        camera: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        evidence: Vec<EvidenceFile>,
        /// Why the clip ends before its planned end (the agent stopped, the stream changed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cut_short: Option<String>,
    },
    /// Evidence files deleted by retention (age, disk quota, free space).
    Pruned { files: Vec<String>, reason: String },
    /// The device key changes: this record is signed by the old key, every later one by
    /// `public_key`.
    KeyRotated { public_key: String },
    /// The first record of a new segment (a new day): names the key that signs it, so a chain whose
    /// oldest segments retention deleted can still be read from here.
    SegmentStarted { public_key: String },
    /// Retention deleted whole old segments: the records `first_seq..=last_seq` (from 1: it deletes
    /// from the oldest on) are gone by policy.
    ChainPruned { segments: Vec<String>, first_seq: u64, last_seq: u64, reason: String },
}

/// A record's body: the JSON text that is hashed and signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordBody {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub device: String,
    pub prev_sha256: String,
    #[serde(flatten)]
    pub content: RecordContent,
}

/// How far a chain has reached: published in the retained status and telemetry, so a chain that
/// was cut short or rolled back on the box shows up on the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: u64,
    pub sha256: String,
    pub time: DateTime<Utc>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether the ranges (retention's `chain_pruned` records) together cover `first..=last`.
pub fn covers(ranges: &[(u64, u64)], first: u64, last: u64) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut next = first;
    for (from, to) in sorted {
        if from > next {
            break;
        }
        next = next.max(to.saturating_add(1));
    }
    next > last
}
