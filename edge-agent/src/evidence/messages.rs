//! Checking what the platform received with nothing but the messages and the device's public key
//! (`edge-agent verify --messages`): every event message and chain record carries its signed chain
//! record, so each can be checked on its own (hash, signature, the event equal to what was signed),
//! and together they must form one unbroken sequence. Gaps are named, and said to be pruned by
//! policy when the box recorded that; a changed, forged or re-ordered message stops the check.
//!
//! Input: one message a line, as `mosquitto_sub` prints them: the JSON payload, or `topic payload`
//! (`-v`). Lines that are neither an event message, a chain record nor a status are skipped.
//! Snapshots (`--snapshots DIR`): the JPEGs received on `snapshots/{event_id}`, under any name;
//! each event's `snapshot_sha256` must be among them.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::chain::{sha256_hex, ChainHead, ChainProof};
use super::signing::verify_hex;

/// What the messages showed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MessagesReport {
    pub lines: usize,
    pub event_messages: u64,
    pub chain_records: u64,
    /// The same record received twice (MQTT delivers at least once): counted, not a problem.
    pub duplicates: u64,
    pub snapshots_checked: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The chain head the box announced last (retained status or telemetry).
    pub announced_head: Option<ChainHead>,
    pub gaps: Vec<Gap>,
    /// The first forged, altered or re-ordered message, a missing snapshot or a cut tail.
    pub problem: Option<MessageProblem>,
}

/// Records the messages do not hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    pub first_seq: u64,
    pub last_seq: u64,
    /// The box's own record that it deleted them by policy (chain retention), if it made one.
    pub pruned_by_policy: Option<String>,
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

/// One received line: its payload as JSON, or None when it is not JSON at all.
fn payload_of(line: &str) -> Option<Value> {
    let line = line.trim();
    if line.starts_with('{') {
        return serde_json::from_str(line).ok();
    }
    let (_topic, payload) = line.split_once(' ')?;
    serde_json::from_str(payload.trim()).ok()
}

/// Checks `text` (the captured messages) against `public_key` (hex), and the snapshots in
/// `snapshots` when given.
pub fn verify_messages(text: &str, snapshots: Option<&Path>, public_key: &str) -> Result<MessagesReport, String> {
    let snapshot_hashes = match snapshots {
        Some(dir) => Some(hash_folder(dir)?),
        None => None,
    };
    let mut report = MessagesReport::default();
    let mut last: Option<(u64, String)> = None;
    // The enrolled key until a `key_rotated` record (signed by it) names the next one.
    let mut current_key = public_key.to_string();
    // Ranges the box recorded as deleted by policy: (first, last, why).
    let mut pruned_ranges: Vec<(u64, u64, String)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        report.lines = line_no;
        let Some(message) = payload_of(line) else { continue };
        if let Some(head) = announced_head(&message) {
            report.announced_head = Some(head);
            continue;
        }
        let (proof, event) = match (message.get("chain"), message.get("record")) {
            (Some(chain @ Value::Object(_)), _) => {
                let Ok(proof) = serde_json::from_value::<ChainProof>(chain.clone()) else {
                    report.problem = problem(line_no, None, "altered", "the event's `chain` is not a chain record");
                    return Ok(report);
                };
                let mut event = message.clone();
                if let Value::Object(fields) = &mut event {
                    fields.remove("chain");
                }
                (proof, Some(event))
            }
            (_, Some(Value::String(_))) => match serde_json::from_value::<ChainProof>(message.clone()) {
                Ok(proof) => (proof, None),
                Err(e) => {
                    report.problem = problem(line_no, None, "altered", &format!("not a chain record: {e}"));
                    return Ok(report);
                }
            },
            _ => continue,
        };
        let seq = Some(proof.seq);
        if sha256_hex(proof.record.as_bytes()) != proof.sha256 {
            report.problem = problem(line_no, seq, "altered", "the record's bytes do not match its sha256");
            return Ok(report);
        }
        if let Err(why) = verify_hex(&current_key, proof.record.as_bytes(), &proof.signature) {
            report.problem = problem(line_no, seq, "forged", &why);
            return Ok(report);
        }
        let body: Value = serde_json::from_str(&proof.record)
            .map_err(|e| format!("line {line_no}: a signed record that is not JSON: {e}"))?;
        if body["seq"] != proof.seq || body["prev_sha256"] != proof.prev_sha256.as_str() {
            report.problem = problem(line_no, seq, "altered", "`seq` or `prev_sha256` differ from the signed record");
            return Ok(report);
        }
        if let Some(event) = &event {
            if body["record"] != "event" || &body["event"] != event {
                let field = differing_field(&body["event"], event);
                report.problem = problem(
                    line_no,
                    seq,
                    "altered",
                    &format!("the event message differs from its signed record (at `{field}`)"),
                );
                return Ok(report);
            }
        }
        if body["record"] == "key_rotated" {
            if let Some(next) = body["public_key"].as_str() {
                current_key = next.to_string();
            }
        }
        if body["record"] == "chain_pruned" {
            if let (Some(first), Some(last_pruned)) = (body["first_seq"].as_u64(), body["last_seq"].as_u64()) {
                let why = body["reason"].as_str().unwrap_or("retention").to_string();
                pruned_ranges.push((first, last_pruned, format!("{why} (record {})", proof.seq)));
            }
        }
        // Order: one sequence, each record linked to the one before.
        match &last {
            Some((last_seq, last_sha)) if proof.seq == *last_seq && proof.sha256 == *last_sha => {
                report.duplicates += 1;
                continue;
            }
            Some((last_seq, _)) if proof.seq <= *last_seq => {
                report.problem = problem(
                    line_no,
                    seq,
                    "reordered",
                    &format!("record {} arrives after record {last_seq}", proof.seq),
                );
                return Ok(report);
            }
            Some((last_seq, last_sha)) if proof.seq == last_seq + 1 && proof.prev_sha256 != *last_sha => {
                report.problem =
                    problem(line_no, seq, "forged", &format!("does not link to record {last_seq} before it"));
                return Ok(report);
            }
            Some((last_seq, _)) if proof.seq > last_seq + 1 => {
                report.gaps.push(Gap { first_seq: last_seq + 1, last_seq: proof.seq - 1, pruned_by_policy: None });
            }
            _ => {}
        }
        report.first_seq.get_or_insert(proof.seq);
        report.last_seq = Some(proof.seq);
        last = Some((proof.seq, proof.sha256.clone()));
        match &event {
            Some(event) => {
                report.event_messages += 1;
                if let (Some(hashes), Some(expected)) = (&snapshot_hashes, event["snapshot_sha256"].as_str()) {
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
    for gap in &mut report.gaps {
        let within: Vec<&(u64, u64, String)> =
            pruned_ranges.iter().filter(|(first, last, _)| *first <= gap.last_seq && gap.first_seq <= *last).collect();
        let ranges: Vec<(u64, u64)> = within.iter().map(|(first, last, _)| (*first, *last)).collect();
        if super::chain::covers(&ranges, gap.first_seq, gap.last_seq) {
            let why: Vec<&str> = within.iter().map(|(_, _, why)| why.as_str()).collect();
            gap.pruned_by_policy = Some(why.join("; "));
        }
    }
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
        if sha256_hex(proof.record.as_bytes()) != proof.sha256 {
            return Err("the record's bytes do not match its sha256".to_string());
        }
        verify_hex(public_key, proof.record.as_bytes(), &proof.signature)?;
        let body: Value = serde_json::from_str(&proof.record).map_err(|e| format!("the record is not JSON: {e}"))?;
        let mut event = message.clone();
        if let Value::Object(fields) = &mut event {
            fields.remove("chain");
        }
        if body["record"] != "event" || body["event"] != event {
            return Err(format!(
                "the event differs from its signed record (at `{}`)",
                differing_field(&body["event"], &event)
            ));
        }
        Ok(proof.seq)
    })();
    Some(outcome)
}

fn problem(line: usize, seq: Option<u64>, kind: &'static str, message: &str) -> Option<MessageProblem> {
    Some(MessageProblem { line, seq, kind, message: message.to_string() })
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

fn hash_folder(dir: &Path) -> Result<HashSet<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read snapshots folder {}: {e}", dir.display()))?;
    let mut hashes = HashSet::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            hashes.insert(sha256_hex(&bytes));
        }
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::chain::{Chain, RecordContent};
    use crate::evidence::signing::DeviceKey;

    /// Three event messages as the evidence stage makes them, and the genesis on `chain`.
    fn messages(dir: &Path) -> (Vec<String>, String) {
        let key = DeviceKey::from_seed([5; 32]);
        let public = key.public_hex();
        let mut chain = Chain::open(dir, key, "box-1").unwrap();
        let mut lines: Vec<String> = chain
            .take_unpublished()
            .iter()
            .map(|p| format!("edge/box-1/chain {}", serde_json::to_string(p).unwrap()))
            .collect();
        for i in 0..3 {
            let mut event = serde_json::json!({ "event_id": format!("e{i}"), "revision": 0, "label": "truck", "snapshot_sha256": null });
            let proof = chain
                .append(chrono::Utc::now(), RecordContent::Event { event: event.clone(), evidence: vec![] })
                .unwrap();
            event["chain"] = serde_json::to_value(proof).unwrap();
            lines.push(format!("edge/box-1/events {event}"));
        }
        (lines, public)
    }

    #[test]
    fn untouched_messages_verify_and_each_kind_of_tampering_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (lines, key) = messages(dir.path());
        let report = verify_messages(&lines.join("\n"), None, &key).unwrap();
        assert!(report.is_sound(), "{report:?}");
        assert_eq!((report.event_messages, report.chain_records, report.last_seq), (3, 1, Some(4)));

        let changed = lines.iter().map(|l| l.replacen("\"truck\"", "\"car\"", 1)).collect::<Vec<_>>().join("\n");
        let problem = verify_messages(&changed, None, &key).unwrap().problem.unwrap();
        assert_eq!((problem.kind, problem.seq), ("altered", Some(2)));
        assert!(problem.message.contains("label"), "{problem:?}");

        let mut swapped = lines.clone();
        swapped.swap(2, 3);
        assert_eq!(verify_messages(&swapped.join("\n"), None, &key).unwrap().problem.unwrap().kind, "reordered");

        let mut dropped = lines.clone();
        dropped.remove(2);
        let report = verify_messages(&dropped.join("\n"), None, &key).unwrap();
        assert_eq!(report.gaps, vec![Gap { first_seq: 3, last_seq: 3, pruned_by_policy: None }]);
        assert!(!report.is_sound());

        let other = DeviceKey::from_seed([6; 32]).public_hex();
        assert_eq!(verify_messages(&lines.join("\n"), None, &other).unwrap().problem.unwrap().kind, "forged");
    }

    #[test]
    fn a_tail_cut_after_the_box_announced_its_head_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (mut lines, key) = messages(dir.path());
        let head = serde_json::json!({ "state": "stopped", "evidence": { "public_key": key, "chain_head": { "seq": 4, "sha256": "x", "time": chrono::Utc::now() } } });
        lines.truncate(3);
        lines.push(format!("edge/box-1/status {head}"));
        let problem = verify_messages(&lines.join("\n"), None, &key).unwrap().problem.unwrap();
        assert_eq!(problem.kind, "truncated");
        assert!(problem.message.contains("chain head 4") && problem.message.contains("record 3"), "{problem:?}");
    }

    #[test]
    fn a_gap_the_box_recorded_as_pruned_by_policy_is_named_so() {
        let dir = tempfile::tempdir().unwrap();
        let (lines, key) = messages(dir.path());
        // The platform missed records 1 to 3 (captured late); a later record says retention deleted them.
        let key_seed = DeviceKey::from_seed([5; 32]);
        let mut chain = Chain::open(dir.path(), key_seed, "box-1").unwrap();
        let pruned = chain
            .append(
                chrono::Utc::now(),
                RecordContent::ChainPruned {
                    segments: vec!["x".into()],
                    first_seq: 1,
                    last_seq: 3,
                    reason: "max_age_days".into(),
                },
            )
            .unwrap();
        let mut late = lines[3..].to_vec();
        late.push(format!("edge/box-1/chain {}", serde_json::to_string(&pruned).unwrap()));
        let report = verify_messages(&late.join("\n"), None, &key).unwrap();
        assert_eq!(report.gaps.len(), 0, "the capture starts at record 4: {report:?}");
        let mut with_gap = lines.clone();
        with_gap.drain(1..3);
        with_gap.push(format!("edge/box-1/chain {}", serde_json::to_string(&pruned).unwrap()));
        let report = verify_messages(&with_gap.join("\n"), None, &key).unwrap();
        assert_eq!(report.gaps.len(), 1, "{report:?}");
        assert!(report.gaps[0].pruned_by_policy.as_deref().is_some_and(|w| w.contains("max_age_days")), "{report:?}");
        assert!(report.is_sound());
    }
}
