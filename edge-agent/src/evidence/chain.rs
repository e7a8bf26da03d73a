//! The tamper-evident evidence chain of a device: `state_dir/evidence/chain/`, one segment file a
//! day (`<first seq>.jsonl`), one record a line; a new segment starts with a `segment_started`
//! record linked to the last record of the one before, and retention deletes whole old segments
//! with a `chain_pruned` record saying which records went. Each record holds the sha256 of the previous record and of its evidence files, and is
//! signed with the device key, so changing, removing or inserting a record or a picture breaks the
//! chain at that point. Retention does not break it: deleting old pictures appends a `pruned`
//! record naming them. [`verify`] feeds the files to [`ChainVerifier`] and checks the pictures.
//!
//! A line is `{"body": {...}, "sha256": hex, "signature": hex}`; the hash and the signature are over
//! the exact bytes of `body` as written (the record formats are `wire::chain`'s).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::write_file::sync_folder;
use crate::evidence::signing::DeviceKey;
use crate::wire::chain::{sha256_hex, NO_PREVIOUS};
use crate::wire::verify::{Break, ChainVerifier, Outcome, SignedRecord};
use crate::wire::{ChainHead, ChainProof, EvidenceFile, RecordBody, RecordContent};

/// The single chain file of older versions; moved into [`SEGMENTS_DIR`] as its first segment.
pub const CHAIN_FILE: &str = "chain.jsonl";
/// The folder of chain segments inside the evidence folder.
pub const SEGMENTS_DIR: &str = "chain";
/// The last record is found in the file's tail; no record is anywhere near this long.
const TAIL_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("evidence chain {path}: {message}")]
    File { path: PathBuf, message: String },
}

#[derive(Serialize)]
struct RecordLine<'a> {
    body: &'a serde_json::value::RawValue,
    sha256: &'a str,
    signature: &'a str,
}

#[derive(Deserialize)]
struct StoredLine<'a> {
    #[serde(borrow)]
    body: &'a serde_json::value::RawValue,
    sha256: String,
    signature: String,
}

/// The sha256 (hex) and length of what `reader` gives, read in pieces: a clip may be tens of
/// megabytes, and is hashed where it is kept and each time its page is shown.
pub fn sha256_of_reader(reader: &mut impl std::io::Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(reader, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// The writing end of a device's chain.
pub struct Chain {
    /// The current segment.
    path: PathBuf,
    segments_dir: PathBuf,
    file: std::fs::File,
    /// The day (UTC) of the current segment's records.
    segment_day: Option<chrono::NaiveDate>,
    key: DeviceKey,
    device: String,
    next_seq: u64,
    last_sha256: String,
    head: Option<ChainHead>,
    /// Records other than event messages (genesis, pruning), not yet handed out for publishing.
    unpublished: Vec<ChainProof>,
    /// The key the last record rotated to, when the last record is a rotation.
    last_rotated_to: Option<String>,
    /// Bytes of all segments.
    bytes: u64,
}

impl Chain {
    /// Opens (or starts, with a genesis record) the chain in `dir`. A last line cut off by a crash
    /// mid-write is removed; anything else is left for `verify` to judge.
    pub fn open(dir: &Path, key: DeviceKey, device: &str) -> Result<Self, ChainError> {
        let segments_dir = dir.join(SEGMENTS_DIR);
        let error = |message: String| ChainError::File { path: segments_dir.clone(), message };
        crate::base::write_file::create_folder_durably(&segments_dir)
            .map_err(|e| error(format!("cannot create folder: {e}")))?;
        let legacy = dir.join(CHAIN_FILE);
        if legacy.is_file() && segment_files(&segments_dir).map_err(|e| error(e.to_string()))?.is_empty() {
            std::fs::rename(&legacy, segments_dir.join(segment_name(1)))
                .map_err(|e| error(format!("cannot move {} into the segments: {e}", legacy.display())))?;
            let _ = sync_folder(&segments_dir.join(segment_name(1)));
        }
        let path = segment_files(&segments_dir)
            .map_err(|e| error(e.to_string()))?
            .pop()
            .unwrap_or_else(|| segments_dir.join(segment_name(1)));
        let mut file = open_segment(&path).map_err(|e| error(format!("cannot open {}: {e}", path.display())))?;
        sync_folder(&path).map_err(|e| error(format!("cannot sync the folder of {}: {e}", path.display())))?;
        let last = last_line(&mut file).map_err(|e| error(format!("cannot read: {e}")))?;
        let mut chain = Self {
            path: path.clone(),
            segments_dir: segments_dir.clone(),
            file,
            segment_day: None,
            key,
            device: device.to_string(),
            next_seq: 1,
            last_sha256: NO_PREVIOUS.into(),
            head: None,
            unpublished: Vec::new(),
            last_rotated_to: None,
            bytes: Self::measure(&segments_dir),
        };
        match last {
            Some(line) => {
                let error = |message: String| ChainError::File { path: path.clone(), message };
                let stored: StoredLine = serde_json::from_str(&line)
                    .map_err(|e| error(format!("last record is not readable ({e}); run `edge-agent verify`")))?;
                let body: RecordBody = serde_json::from_str(stored.body.get())
                    .map_err(|e| error(format!("last record is not readable ({e}); run `edge-agent verify`")))?;
                chain.next_seq = body.seq + 1;
                chain.segment_day = Some(body.time.date_naive());
                chain.head = Some(ChainHead { seq: body.seq, sha256: stored.sha256.clone(), time: body.time });
                chain.last_sha256 = stored.sha256;
                if let RecordContent::KeyRotated { public_key } = body.content {
                    chain.last_rotated_to = Some(public_key);
                }
            }
            None => {
                let public_key = chain.key.public_hex();
                chain.append(Utc::now(), RecordContent::Genesis { public_key })?;
            }
        }
        Ok(chain)
    }

    /// Total size of the segments: the chain counts in the evidence budget.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn measure(segments_dir: &Path) -> u64 {
        segment_files(segments_dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Deletes whole segments whose last record is older than `before` (never the current one),
    /// oldest first. The chain records which records go before the files go, so a crash in between
    /// leaves segments the chain calls pruned, never segments gone without a record. Returns the
    /// deleted segments' names.
    pub fn prune_segments(
        &mut self,
        now: DateTime<Utc>,
        before: DateTime<Utc>,
        reason: &str,
    ) -> Result<Vec<String>, ChainError> {
        let error = |message: String| ChainError::File { path: self.segments_dir.clone(), message };
        let files = segment_files(&self.segments_dir).map_err(|e| error(e.to_string()))?;
        let mut old = Vec::new();
        let mut last_seq = 0;
        for pair in files.windows(2) {
            let (segment, next) = (&pair[0], &pair[1]);
            let mut file = std::fs::File::open(segment).map_err(|e| error(e.to_string()))?;
            let last_time = last_line(&mut file)
                .ok()
                .flatten()
                .and_then(|line| serde_json::from_str::<StoredLine>(&line).ok().map(|s| s.body.get().to_string()))
                .and_then(|body| serde_json::from_str::<RecordBody>(&body).ok())
                .map(|body| body.time);
            if last_time.is_none_or(|time| time >= before) {
                break;
            }
            last_seq = segment_first_seq(next).unwrap_or(1).saturating_sub(1);
            old.push(segment.clone());
        }
        if old.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> =
            old.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()).collect();
        // Retention deletes from the oldest segment on: everything up to `last_seq` is gone, also
        // what earlier prunings deleted (their records may be gone with their segments).
        self.append(
            now,
            RecordContent::ChainPruned { segments: names.clone(), first_seq: 1, last_seq, reason: reason.into() },
        )?;
        for segment in &old {
            if let Err(e) = std::fs::remove_file(segment) {
                tracing::error!(segment = %segment.display(), "cannot delete an old chain segment: {e}");
            }
        }
        let _ = sync_folder(&self.path);
        self.bytes = Self::measure(&self.segments_dir);
        tracing::info!(segments = names.len(), last_seq, reason, "deleted old evidence chain segments");
        Ok(names)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last record written, if any.
    pub fn head(&self) -> Option<&ChainHead> {
        self.head.as_ref()
    }

    /// The device's public key (hex), the one the platform enrols.
    pub fn public_key(&self) -> String {
        self.key.public_hex()
    }

    /// When the last record is a key rotation: the key it rotated to (a crash may have come before
    /// the new key took the old one's place).
    pub fn last_rotated_to(&self) -> Option<&str> {
        self.last_rotated_to.as_deref()
    }

    /// Carries on with `key` (after a rotation the chain recorded).
    pub fn use_key(&mut self, key: DeviceKey) {
        self.key = key;
    }

    /// Rotates the device key: a fresh key is written as `device.key.next` in `key_dir`, a
    /// `key_rotated` record naming it is appended and signed by the old key, then the new key takes
    /// the old one's place. A crash between the steps is finished (or undone) at the next open.
    pub fn rotate_key(&mut self, key_dir: &Path) -> Result<ChainProof, ChainError> {
        let error = |message: String| ChainError::File { path: key_dir.to_owned(), message };
        let next = DeviceKey::create_next(key_dir).map_err(|e| error(e.to_string()))?;
        let proof = self.append(Utc::now(), RecordContent::KeyRotated { public_key: next.public_hex() })?;
        self.key = DeviceKey::promote_next(key_dir).map_err(|e| error(e.to_string()))?;
        Ok(proof)
    }

    fn start_segment(&mut self, time: DateTime<Utc>) -> Result<(), ChainError> {
        let path = self.segments_dir.join(segment_name(self.next_seq));
        let file = open_segment(&path)
            .map_err(|e| ChainError::File { path: path.clone(), message: format!("cannot create: {e}") })?;
        let _ = sync_folder(&path);
        self.path = path;
        self.file = file;
        self.segment_day = Some(time.date_naive());
        let public_key = self.key.public_hex();
        self.append(time, RecordContent::SegmentStarted { public_key })?;
        Ok(())
    }

    /// The records other than event messages written since the last call, oldest first: they go
    /// out on the `chain` topic so the platform sees every sequence number.
    pub fn take_unpublished(&mut self) -> Vec<ChainProof> {
        std::mem::take(&mut self.unpublished)
    }

    /// Appends a signed record and syncs it to disk; returns it as it travels.
    pub fn append(&mut self, time: DateTime<Utc>, content: RecordContent) -> Result<ChainProof, ChainError> {
        // A new day starts a new segment, whose first record names the key that signs it.
        if self.segment_day.is_some_and(|day| day != time.date_naive()) {
            self.start_segment(time)?;
        }
        self.segment_day = Some(time.date_naive());
        let is_event = matches!(content, RecordContent::Event { .. });
        let error = |message: String| ChainError::File { path: self.path.clone(), message };
        let body = RecordBody {
            seq: self.next_seq,
            time,
            device: self.device.clone(),
            prev_sha256: self.last_sha256.clone(),
            content,
        };
        let body_json = serde_json::to_string(&body).map_err(|e| error(format!("cannot encode record: {e}")))?;
        let sha256 = sha256_hex(body_json.as_bytes());
        let signature = self.key.sign_hex(body_json.as_bytes());
        let raw = serde_json::value::RawValue::from_string(body_json)
            .map_err(|e| error(format!("cannot encode record: {e}")))?;
        let mut line = serde_json::to_string(&RecordLine { body: &raw, sha256: &sha256, signature: &signature })
            .map_err(|e| error(format!("cannot encode record: {e}")))?;
        line.push('\n');
        // A failed write (a full disk) must not leave half a line for the next record to follow.
        let length_before = self.file.metadata().map(|m| m.len()).ok();
        let written = self.file.write_all(line.as_bytes()).and_then(|()| self.file.sync_data());
        if written.is_ok() {
            self.bytes += line.len() as u64;
        }
        if let Err(e) = written {
            if let Some(length) = length_before {
                let _ = self.file.set_len(length);
            }
            return Err(error(format!("cannot write: {e}")));
        }
        let proof = ChainProof {
            seq: body.seq,
            prev_sha256: body.prev_sha256,
            sha256: sha256.clone(),
            signature,
            record: raw.get().to_string(),
        };
        self.head = Some(ChainHead { seq: body.seq, sha256: sha256.clone(), time });
        self.last_rotated_to = match &body.content {
            RecordContent::KeyRotated { public_key } => Some(public_key.clone()),
            _ => None,
        };
        self.last_sha256 = sha256;
        self.next_seq += 1;
        if !is_event {
            self.unpublished.push(proof.clone());
        }
        Ok(proof)
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:010}.jsonl")
}

fn segment_first_seq(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

fn open_segment(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).append(true).create(true).open(path)
}

/// The segment files, oldest first.
pub fn segment_files(segments_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(segments_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && segment_first_seq(p).is_some())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// The last complete line; a partial line after it (torn write) is truncated away.
fn last_line(file: &mut std::fs::File) -> std::io::Result<Option<String>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    if tail.last() != Some(&b'\n') {
        let keep = tail.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
        tracing::warn!("evidence chain ends in a partial record (a crash while writing); removing it");
        file.set_len(start + keep as u64)?;
        tail.truncate(keep);
    }
    let text = String::from_utf8_lossy(&tail);
    Ok(text.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string))
}

/// What `edge-agent verify` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub chain: PathBuf,
    pub public_key: Option<String>,
    pub records: u64,
    pub events: u64,
    /// Event clips recorded (each checked like an event's pictures).
    pub clips: u64,
    pub evidence_files_checked: u64,
    pub evidence_files_pruned: u64,
    pub first_broken_link: Option<BrokenLink>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokenLink {
    /// 1-based line of chain.jsonl.
    pub line: usize,
    pub seq: Option<u64>,
    pub problem: String,
}

/// Checks the chain in `evidence_dir` and its evidence files. `expected_key` (hex) is the device's
/// public key as the platform knows it; without it the genesis record's key is trusted.
pub fn verify(evidence_dir: &Path, expected_key: Option<&str>) -> Result<VerifyReport, ChainError> {
    let segments_dir = evidence_dir.join(SEGMENTS_DIR);
    let read_error = |path: &Path, e: std::io::Error| ChainError::File {
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    };
    let mut files = segment_files(&segments_dir).map_err(|e| read_error(&segments_dir, e))?;
    if files.is_empty() && evidence_dir.join(CHAIN_FILE).is_file() {
        files.push(evidence_dir.join(CHAIN_FILE));
    }
    // Every line of every segment, oldest first; `line` in a report counts across the segments.
    let mut text = String::new();
    for file in &files {
        text.push_str(&std::fs::read_to_string(file).map_err(|e| read_error(file, e))?);
    }
    // A last line without its newline was cut by a crash mid-write: the agent removes it at its
    // next start, and nothing refers to it yet.
    if !text.is_empty() && !text.ends_with('\n') {
        let keep = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        text.truncate(keep);
    }
    let mut report = VerifyReport {
        chain: segments_dir,
        public_key: expected_key.map(str::to_string),
        records: 0,
        events: 0,
        clips: 0,
        evidence_files_checked: 0,
        evidence_files_pruned: 0,
        first_broken_link: None,
    };
    let mut verifier = ChainVerifier::whole_chain(expected_key);
    let mut pending: Vec<Pending> = Vec::new();
    let mut broken: Option<Found> = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let stored = match serde_json::from_str::<StoredLine>(line) {
            Ok(stored) => stored,
            Err(e) => {
                broken = broken.or_else(|| Some(Found::at(&report, line_no, None, format!("not a chain record: {e}"))));
                continue;
            }
        };
        let checked = verifier.push(SignedRecord {
            body: stored.body.get(),
            sha256: &stored.sha256,
            signature: &stored.signature,
        });
        // Past the first broken link the records are read only for what retention deleted.
        if broken.is_some() {
            continue;
        }
        let seq = checked.seq;
        let jumped = |from: u64| {
            format!("sequence jumps from {from} to {} (a record was removed or inserted)", seq.unwrap_or_default())
        };
        let record = match (checked.outcome, checked.record) {
            (Outcome::Broken(why), _) => {
                report.public_key = report.public_key.or_else(|| verifier.chain_key().map(str::to_string));
                broken = Some(Found::at(&report, line_no, seq, described(why, seq.unwrap_or_default())));
                continue;
            }
            // A whole chain is never read late (ChainVerifier::whole_chain): a record going back is a jump.
            (Outcome::Duplicate | Outcome::Late { .. }, _) => {
                broken = Some(Found::at(&report, line_no, seq, jumped(seq.unwrap_or_default())));
                continue;
            }
            // The oldest segments were deleted by retention: a record, perhaps a later one, must say so.
            (Outcome::AfterGap { first_seq: 1, last_seq }, Some(record)) if report.records == 0 => {
                let problem = format!(
                    "records 1 to {last_seq} are missing and no chain_pruned record says retention deleted them"
                );
                pending.push(Pending::Start { last_seq, found: Found::at(&report, line_no, seq, problem) });
                record
            }
            (Outcome::AfterGap { first_seq, .. }, _) => {
                broken = Some(Found::at(&report, line_no, seq, jumped(first_seq - 1)));
                continue;
            }
            (Outcome::Linked, Some(record)) => record,
            (Outcome::Linked, None) => continue,
        };
        report.public_key = report.public_key.or_else(|| verifier.chain_key().map(str::to_string));
        let evidence: &[EvidenceFile] = match &record.content {
            RecordContent::Event { evidence, .. } => {
                report.events += 1;
                evidence
            }
            RecordContent::Clip { evidence, .. } => {
                report.clips += 1;
                evidence
            }
            _ => &[],
        };
        for file in evidence {
            match std::fs::read(evidence_dir.join(&file.file)) {
                Ok(bytes) => {
                    report.evidence_files_checked += 1;
                    let actual = sha256_hex(&bytes);
                    if actual != file.sha256 {
                        let problem = format!(
                            "evidence file {} was changed: sha256 {actual}, recorded {}",
                            file.file, file.sha256
                        );
                        broken = Some(Found::at(&report, line_no, seq, problem));
                        break;
                    }
                }
                Err(e) => {
                    let problem =
                        format!("evidence file {} is missing ({e}) and no retention record removed it", file.file);
                    pending.push(Pending::Missing {
                        file: file.file.clone(),
                        found: Found::at(&report, line_no, seq, problem),
                    });
                }
            }
        }
        if broken.is_none() {
            report.records += 1;
        }
    }
    // What retention deleted is known now: the first link it does not explain is the broken one.
    let gaps = verifier.gaps();
    let mut pruned = 0;
    for pending in pending {
        match pending {
            Pending::Start { last_seq, found } => {
                let explained =
                    gaps.iter().any(|g| (g.first_seq, g.last_seq) == (1, last_seq) && g.pruned_by_policy.is_some());
                if !explained {
                    return Ok(found.report(pruned));
                }
            }
            Pending::Missing { file, found } => {
                if !verifier.is_pruned_file(&file) {
                    return Ok(found.report(pruned));
                }
                pruned += 1;
            }
        }
    }
    if let Some(found) = broken {
        return Ok(found.report(pruned));
    }
    report.evidence_files_pruned = pruned;
    if report.records == 0 {
        report.first_broken_link = Some(BrokenLink { line: 1, seq: None, problem: "the chain is empty".into() });
    }
    Ok(report)
}

/// A broken link, with the report as it stood when it was found.
struct Found {
    link: BrokenLink,
    report: VerifyReport,
}

impl Found {
    fn at(report: &VerifyReport, line: usize, seq: Option<u64>, problem: String) -> Self {
        Self { link: BrokenLink { line, seq, problem }, report: report.clone() }
    }

    /// The report ending at this link, with the pictures retention deleted before it.
    fn report(self, pruned: u64) -> VerifyReport {
        VerifyReport { evidence_files_pruned: pruned, first_broken_link: Some(self.link), ..self.report }
    }
}

/// What breaks the chain unless a retention record, perhaps a later one, explains it.
enum Pending {
    /// Records 1 to `last_seq`, before the first one.
    Start { last_seq: u64, found: Found },
    /// A picture missing from the disk.
    Missing { file: String, found: Found },
}

/// What is wrong with a broken record, in the words of `edge-agent verify`.
fn described(broken: Break, seq: u64) -> String {
    match broken {
        Break::Altered { actual, stated } => {
            format!("record was changed: its sha256 is {actual}, the record says {stated}")
        }
        Break::Unreadable(e) => format!("record body is not readable: {e}"),
        Break::NoKeyRecord => {
            "the first record is neither the genesis nor a segment start naming the device key".into()
        }
        Break::WrongKey { named, expected } => {
            format!("chain is signed by key {named}, not by the expected {expected}")
        }
        Break::Forged(why) => why,
        Break::Reordered { after } => {
            format!("sequence jumps from {after} to {seq} (a record was removed or inserted)")
        }
        Break::Unlinked { prev_sha256, expected, .. } => {
            format!("does not link to the previous record: prev_sha256 {prev_sha256} ≠ {expected}")
        }
        Break::NotLinkedFrom { next, linked, actual } => {
            format!("is not the record {next} links to: its sha256 is {actual}, record {next} names {linked}")
        }
    }
}

#[cfg(test)]
mod tests {
    /// The segment the tests' records go into (they are all written today).
    fn first_segment(dir: &Path) -> PathBuf {
        dir.join(SEGMENTS_DIR).join(segment_name(1))
    }

    use super::*;

    /// A clip hashed in pieces has the hash of its bytes, past io::copy's buffer and not a multiple of it.
    #[test]
    fn a_file_hashed_in_pieces_has_the_hash_of_its_bytes() {
        let bytes: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        let (hash, length) = sha256_of_reader(&mut bytes.as_slice()).unwrap();
        assert_eq!((hash, length), (sha256_hex(&bytes), bytes.len() as u64));
    }

    fn event_record(dir: &Path, name: &str, bytes: &[u8]) -> RecordContent {
        std::fs::write(dir.join(name), bytes).unwrap();
        RecordContent::Event {
            event: serde_json::json!({"event_id": name, "kind": "litter"}),
            evidence: vec![EvidenceFile { file: name.into(), sha256: sha256_hex(bytes), bytes: bytes.len() as u64 }],
        }
    }

    fn chain_of_three(dir: &Path) -> String {
        let key = DeviceKey::from_seed([3; 32]);
        let public = key.public_hex();
        let mut chain = Chain::open(dir, key, "box-1").unwrap();
        for (name, bytes) in [("a.jpg", b"first".as_slice()), ("b.jpg", b"second"), ("c.jpg", b"third")] {
            chain.append(Utc::now(), event_record(dir, name, bytes)).unwrap();
        }
        public
    }

    fn rewrite_line(dir: &Path, line: usize, edit: impl Fn(&str) -> String) {
        let path = first_segment(dir);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<String> =
            text.lines().enumerate().map(|(i, l)| if i + 1 == line { edit(l) } else { l.to_string() }).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn a_good_chain_verifies_with_every_picture() {
        let dir = tempfile::tempdir().unwrap();
        let public = chain_of_three(dir.path());
        let report = verify(dir.path(), Some(&public)).unwrap();
        assert_eq!(report.first_broken_link, None);
        assert_eq!((report.records, report.events, report.evidence_files_checked), (4, 3, 3));
    }

    #[test]
    fn reopening_continues_the_same_chain() {
        let dir = tempfile::tempdir().unwrap();
        chain_of_three(dir.path());
        let mut chain = Chain::open(dir.path(), DeviceKey::from_seed([3; 32]), "box-1").unwrap();
        assert_eq!(chain.next_seq(), 5);
        chain.append(Utc::now(), event_record(dir.path(), "d.jpg", b"fourth")).unwrap();
        let report = verify(dir.path(), None).unwrap();
        assert_eq!(report.first_broken_link, None);
        assert_eq!(report.records, 5);
    }

    #[test]
    fn an_edited_record_is_the_first_broken_link() {
        let dir = tempfile::tempdir().unwrap();
        chain_of_three(dir.path());
        rewrite_line(dir.path(), 3, |l| l.replace("litter", "object"));
        let broken = verify(dir.path(), None).unwrap().first_broken_link.unwrap();
        assert_eq!((broken.line, broken.seq), (3, Some(3)));
        assert!(broken.problem.contains("record was changed"), "{}", broken.problem);
    }

    #[test]
    fn a_resigned_record_with_another_key_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let public = chain_of_three(dir.path());
        // A forger rebuilds the whole chain with their own key: the genesis key is not the device's.
        std::fs::remove_file(first_segment(dir.path())).unwrap();
        let mut forged = Chain::open(dir.path(), DeviceKey::from_seed([9; 32]), "box-1").unwrap();
        forged.append(Utc::now(), event_record(dir.path(), "a.jpg", b"forged")).unwrap();
        let broken = verify(dir.path(), Some(&public)).unwrap().first_broken_link.unwrap();
        assert_eq!(broken.line, 1);
        assert!(broken.problem.contains("not by the expected"), "{}", broken.problem);
    }

    #[test]
    fn a_removed_record_breaks_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        chain_of_three(dir.path());
        rewrite_line(dir.path(), 3, |_| String::new());
        let text = std::fs::read_to_string(first_segment(dir.path())).unwrap().replace("\n\n", "\n");
        std::fs::write(first_segment(dir.path()), text).unwrap();
        let broken = verify(dir.path(), None).unwrap().first_broken_link.unwrap();
        assert_eq!((broken.line, broken.seq), (3, Some(4)));
        assert!(broken.problem.contains("sequence jumps from 2 to 4"), "{}", broken.problem);
    }

    #[test]
    fn a_swapped_picture_or_a_deleted_one_is_reported_but_pruned_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        chain_of_three(dir.path());
        std::fs::write(dir.path().join("b.jpg"), b"photoshopped").unwrap();
        let broken = verify(dir.path(), None).unwrap().first_broken_link.unwrap();
        assert_eq!(broken.seq, Some(3));
        assert!(broken.problem.contains("b.jpg was changed"), "{}", broken.problem);

        std::fs::remove_file(dir.path().join("b.jpg")).unwrap();
        let broken = verify(dir.path(), None).unwrap().first_broken_link.unwrap();
        assert!(broken.problem.contains("b.jpg is missing"), "{}", broken.problem);

        let mut chain = Chain::open(dir.path(), DeviceKey::from_seed([3; 32]), "box-1").unwrap();
        chain
            .append(Utc::now(), RecordContent::Pruned { files: vec!["b.jpg".into()], reason: "max_age_days".into() })
            .unwrap();
        let report = verify(dir.path(), None).unwrap();
        assert_eq!(report.first_broken_link, None, "{report:?}");
        assert_eq!((report.evidence_files_checked, report.evidence_files_pruned), (2, 1));
    }

    #[test]
    fn a_record_cut_off_by_a_crash_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        chain_of_three(dir.path());
        let path = first_segment(dir.path());
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"body\": {\"seq\": 5, \"ti");
        std::fs::write(&path, text).unwrap();
        let mut chain = Chain::open(dir.path(), DeviceKey::from_seed([3; 32]), "box-1").unwrap();
        assert_eq!(chain.next_seq(), 5);
        chain.append(Utc::now(), event_record(dir.path(), "e.jpg", b"fifth")).unwrap();
        assert_eq!(verify(dir.path(), None).unwrap().first_broken_link, None);
    }
}
