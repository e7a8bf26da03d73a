//! Checking what the platform received with nothing but the messages and the device's public key
//! (`edge-agent verify --messages`): each event message and chain record carries its signed chain
//! record, checked by [`ChainVerifier`] with the event equal to what was signed; gaps are named,
//! and said to be pruned by policy when the box recorded that. Pure: the caller reads the files.
//!
//! Input: one message a line, as `mosquitto_sub` prints them: the JSON payload, or `topic payload`
//! (`-v`). Lines that are neither an event message, a chain record nor a status are skipped.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::chain::{ChainHead, ChainProof, RecordBody, RecordContent};
use super::event::without_proof;
use super::verify::{Break, ChainVerifier, Gap, Outcome, SignedRecord};

/// What the messages showed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MessagesReport {
    pub lines: usize,
    pub event_messages: u64,
    pub chain_records: u64,
    /// The same record received twice (MQTT delivers at least once): counted, not a problem.
    pub duplicates: u64,
    /// Records that came after later ones and filled their place (a broker delivers what it
    /// queued after newer messages): counted, not a problem when their links hold.
    pub late: u64,
    pub snapshots_checked: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The chain head the box announced last (retained status or telemetry).
    pub announced_head: Option<ChainHead>,
    pub gaps: Vec<Gap>,
    /// The first forged, altered or re-ordered message, a missing snapshot or a cut tail.
    pub problem: Option<MessageProblem>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageProblem {
    /// 1-based line of the messages file.
    pub line: usize,
    pub seq: Option<u64>,
    /// `forged`, `altered`, `reordered`, `snapshot`, `truncated`.
    pub kind: &'static str,
    pub message: String,
}

impl MessagesReport {
    /// Whether the platform can rely on these messages: nothing forged, changed or re-ordered, no
    /// snapshot wrong, no gap the box did not record as pruned by policy.
    pub fn is_sound(&self) -> bool {
        self.problem.is_none() && self.gaps.iter().all(|g| g.pruned_by_policy.is_some())
    }
}

/// What a received message carries for the chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// An event message: its chain record, and the event as that record must hold it.
    Event { proof: ChainProof, event: Value },
    /// A chain record (the `chain` topic).
    Record(ChainProof),
    /// The chain head a status or telemetry message announces.
    Head(ChainHead),
}

/// What `message` carries for the chain: None when nothing (a snapshot, stats, an event without
/// evidence); Err names what is wrong with a record that does not read.
pub fn received(message: &Value) -> Result<Option<Received>, String> {
    if let Some(head) = announced_head(message) {
        return Ok(Some(Received::Head(head)));
    }
    match (message.get("chain"), message.get("record")) {
        (Some(chain @ Value::Object(_)), _) => {
            let proof = serde_json::from_value::<ChainProof>(chain.clone())
                .map_err(|_| "the event's `chain` is not a chain record".to_string())?;
            let mut event = message.clone();
            without_proof(&mut event);
            Ok(Some(Received::Event { proof, event }))
        }
        (_, Some(Value::String(_))) => serde_json::from_value::<ChainProof>(message.clone())
            .map(|proof| Some(Received::Record(proof)))
            .map_err(|e| format!("not a chain record: {e}")),
        _ => Ok(None),
    }
}

/// Where a message differs from the record it carries.
enum Mismatch {
    /// The proof's `seq` or `prev_sha256`.
    Proof,
    /// The event, at this top-level field.
    Event(String),
}

/// Whether a message is what its signed record says: the proof's copies of `seq` and
/// `prev_sha256`, and an event message's event.
fn matches_record(proof: &ChainProof, event: Option<&Value>, record: &RecordBody) -> Result<(), Mismatch> {
    if record.seq != proof.seq || record.prev_sha256 != proof.prev_sha256 {
        return Err(Mismatch::Proof);
    }
    match (event, &record.content) {
        (None, _) => Ok(()),
        (Some(event), RecordContent::Event { event: signed, .. }) if signed == event => Ok(()),
        (Some(event), RecordContent::Event { event: signed, .. }) => {
            Err(Mismatch::Event(differing_field(signed, event)))
        }
        (Some(event), _) => Err(Mismatch::Event(differing_field(&Value::Null, event))),
    }
}

/// Where a received message differs from the record its proof carries, for a consumer that feeds
/// a [`ChainVerifier`] itself (the platform's live one): None when the proof's `seq` and
/// `prev_sha256` and, for an event message, the event are what was signed.
pub fn differs_from_record(proof: &ChainProof, event: Option<&Value>, record: &RecordBody) -> Option<String> {
    match matches_record(proof, event, record) {
        Ok(()) => None,
        Err(Mismatch::Proof) => Some("`seq` or `prev_sha256` differ from the signed record".to_string()),
        Err(Mismatch::Event(field)) => Some(format!("the event message differs from its signed record (at `{field}`)")),
    }
}

/// Checks `text` (the captured messages) against `public_key` (hex), and each event's snapshot
/// against `snapshot_hashes` (the sha256 of every snapshot received) when given.
pub fn verify_messages(
    text: &str,
    snapshot_hashes: Option<&HashSet<String>>,
    public_key: &str,
) -> Result<MessagesReport, String> {
    let mut report = MessagesReport::default();
    let mut verifier = ChainVerifier::from_anywhere(public_key);
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        report.lines = line_no;
        let Some(message) = payload_of(line) else { continue };
        let (proof, event) = match received(&message) {
            Ok(Some(Received::Head(head))) => {
                report.announced_head = Some(head);
                continue;
            }
            Ok(Some(Received::Event { proof, event })) => (proof, Some(event)),
            Ok(Some(Received::Record(proof))) => (proof, None),
            Ok(None) => continue,
            Err(why) => {
                report.problem = problem(line_no, None, "altered", &why);
                return Ok(report);
            }
        };
        let seq = Some(proof.seq);
        let checked = verifier.push(SignedRecord::from(&proof));
        let Some(record) = checked.record else {
            if let Outcome::Broken(Break::Unreadable(e)) = &checked.outcome {
                return Err(format!("line {line_no}: a signed record that is not a chain record: {e}"));
            }
            report.problem = problem_of(line_no, proof.seq, &checked.outcome);
            return Ok(report);
        };
        match matches_record(&proof, event.as_ref(), &record) {
            Ok(()) => {}
            Err(Mismatch::Proof) => {
                report.problem =
                    problem(line_no, seq, "altered", "`seq` or `prev_sha256` differ from the signed record");
                return Ok(report);
            }
            Err(Mismatch::Event(field)) => {
                let why = format!("the event message differs from its signed record (at `{field}`)");
                report.problem = problem(line_no, seq, "altered", &why);
                return Ok(report);
            }
        }
        // Order: one sequence, each record linked to the one before.
        match checked.outcome {
            Outcome::Linked => {}
            Outcome::AfterGap { first_seq, last_seq } => {
                report.gaps.push(Gap { first_seq, last_seq, pruned_by_policy: None })
            }
            // Out of order on the way, and its links hold: counted, and the gap it was in narrows.
            Outcome::Late { .. } => report.late += 1,
            Outcome::Duplicate => {
                report.duplicates += 1;
                continue;
            }
            Outcome::Broken(_) => {
                report.problem = problem_of(line_no, proof.seq, &checked.outcome);
                return Ok(report);
            }
        }
        if !matches!(checked.outcome, Outcome::Late { .. }) {
            report.first_seq.get_or_insert(proof.seq);
            report.last_seq = Some(proof.seq);
        }
        match &event {
            Some(event) => {
                report.event_messages += 1;
                if let (Some(hashes), Some(expected)) = (snapshot_hashes, event["snapshot_sha256"].as_str()) {
                    if !hashes.contains(expected) {
                        let id = event["event_id"].as_str().unwrap_or("?");
                        report.problem = problem(
                            line_no,
                            seq,
                            "snapshot",
                            &format!(
                                "no snapshot of event {id} (revision {}) has sha256 {expected}: it is missing or was changed",
                                event["revision"]
                            ),
                        );
                        return Ok(report);
                    }
                    report.snapshots_checked += 1;
                }
            }
            None => report.chain_records += 1,
        }
    }
    report.gaps = verifier.gaps();
    if let (Some(head), Some(last_seq)) = (&report.announced_head, report.last_seq) {
        if head.seq > last_seq {
            report.problem = problem(
                report.lines,
                Some(head.seq),
                "truncated",
                &format!(
                    "the box announced chain head {} but the messages end at record {last_seq}: {} records are missing at the end",
                    head.seq,
                    head.seq - last_seq
                ),
            );
        }
    }
    Ok(report)
}

/// Checks one event message on its own (as the page does for the event it shows): its chain
/// record's hash, the signature under `public_key`, and the event equal to what was signed.
/// Returns the record's sequence number; Err says what is wrong, None when it carries no record.
pub fn check_event_message(message: &Value, public_key: &str) -> Option<Result<u64, String>> {
    let chain = message.get("chain").filter(|c| c.is_object())?;
    let outcome = (|| {
        let proof: ChainProof =
            serde_json::from_value(chain.clone()).map_err(|e| format!("not a chain record: {e}"))?;
        let checked = ChainVerifier::from_anywhere(public_key).push(SignedRecord::from(&proof));
        let record = match (checked.record, &checked.outcome) {
            (Some(record), Outcome::Linked) => record,
            (_, Outcome::Broken(Break::Unreadable(e))) => return Err(format!("the record does not read: {e}")),
            (_, Outcome::Broken(broken)) => return Err(described(proof.seq, broken).1),
            // One record on its own neither repeats nor follows a gap.
            _ => return Err("the record is not part of the chain".to_string()),
        };
        let mut event = message.clone();
        without_proof(&mut event);
        match matches_record(&proof, Some(&event), &record) {
            Ok(()) => Ok(proof.seq),
            Err(Mismatch::Proof) => Err("`seq` or `prev_sha256` differ from the signed record".to_string()),
            Err(Mismatch::Event(field)) => Err(format!("the event differs from its signed record (at `{field}`)")),
        }
    })();
    Some(outcome)
}

/// One received line: its payload as JSON, or None when it is not JSON at all.
fn payload_of(line: &str) -> Option<Value> {
    let line = line.trim();
    if line.starts_with('{') {
        return serde_json::from_str(line).ok();
    }
    let (_topic, payload) = line.split_once(' ')?;
    serde_json::from_str(payload.trim()).ok()
}

fn problem(line: usize, seq: Option<u64>, kind: &'static str, message: &str) -> Option<MessageProblem> {
    Some(MessageProblem { line, seq, kind, message: message.to_string() })
}

/// The problem a broken record is to the platform.
fn problem_of(line: usize, seq: u64, outcome: &Outcome) -> Option<MessageProblem> {
    let Outcome::Broken(broken) = outcome else { return None };
    let (kind, why) = described(seq, broken);
    problem(line, Some(seq), kind, &why)
}

/// The kind of a broken record (`altered`, `forged`, `reordered`) and what is wrong with it, as
/// `verify --messages` and the platform's live check name it.
pub fn described(seq: u64, broken: &Break) -> (&'static str, String) {
    match broken {
        Break::Altered { .. } => ("altered", "the record's bytes do not match its sha256".to_string()),
        Break::Unreadable(e) => ("altered", format!("not a chain record: {e}")),
        Break::Forged(why) => ("forged", why.clone()),
        Break::Reordered { after } => ("reordered", format!("record {seq} arrives after record {after}")),
        Break::Unlinked { previous: Some(previous), .. } => {
            ("forged", format!("does not link to record {previous} before it"))
        }
        Break::Unlinked { previous: None, .. } => ("forged", "does not link to the start of the chain".to_string()),
        Break::NotLinkedFrom { next, .. } => ("forged", format!("is not the record {next} after it links to")),
        // Only a whole chain's first record names its key; messages are checked under the enrolled one.
        Break::NoKeyRecord | Break::WrongKey { .. } => ("forged", "the record does not name the enrolled key".into()),
    }
}

/// The chain head a status or telemetry message announces.
fn announced_head(message: &Value) -> Option<ChainHead> {
    let head = message.get("evidence").and_then(|e| e.get("chain_head")).or_else(|| message.get("chain_head"))?;
    serde_json::from_value(head.clone()).ok()
}

/// The first top-level field where two events differ, for the report.
fn differing_field(signed: &Value, received: &Value) -> String {
    let (Value::Object(a), Value::Object(b)) = (signed, received) else { return "(the whole event)".into() };
    let keys: BTreeMap<&String, ()> = a.keys().chain(b.keys()).map(|k| (k, ())).collect();
    keys.into_keys().find(|k| a.get(*k) != b.get(*k)).cloned().unwrap_or_else(|| "(none)".into())
}
