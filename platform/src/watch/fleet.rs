//! What `watch` knows about every box, and the decision for each message: one [`ChainVerifier`]
//! a box (the agent's own), fed record by record as the messages arrive, with the key pinned at
//! first contact or read from the keys file. A message in, the rows to write and the lines to
//! say out; no sockets and no database here.

use std::collections::{BTreeMap, HashMap, VecDeque};

use edge_agent::wire::chain::{sha256_hex, ChainHead, ChainProof, RecordContent};
use edge_agent::wire::messages::{described, differs_from_record, received, Received};
use edge_agent::wire::verify::{split_gap, verify_hex, Break, Outcome, SignedRecord};
use edge_agent::wire::ChainVerifier;
use serde_json::Value;

use crate::store::{BoxRow, Write};
use crate::time;

/// Records remembered per box to tell a resent record (MQTT delivers at least once; a box resends
/// what the broker had not acknowledged) from a different one under the same number.
const RECENT_RECORDS: usize = 4096;
/// Event ids per box whose evidence pictures are still expected.
const EXPECTED_SNAPSHOTS: usize = 1024;
/// Messages held per box while no key is known for it yet.
const PENDING_MAX: usize = 10_000;

/// Whose keys to trust.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Pin each box's key at first contact (its retained status, or its chain's first record).
    FirstUse,
    /// Only these boxes, with these keys (hex); anything else is kept apart.
    Keys(BTreeMap<String, String>),
}

/// A line worth saying: an alarm (something a person must look at) or a notice.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub device: String,
    pub alarm: bool,
    pub text: String,
}

/// What one message asks of the store and the operator.
#[derive(Debug, Default)]
pub struct Decision {
    pub writes: Vec<Write>,
    pub notes: Vec<Note>,
}

/// One box as the platform sees it.
#[derive(Debug)]
pub struct BoxState {
    pub row: BoxRow,
    verifier: Option<ChainVerifier>,
    /// The key that signs the box's next record.
    current_key: Option<String>,
    /// Recent records taken in: seq → sha256.
    recent: HashMap<u64, String>,
    recent_order: VecDeque<u64>,
    /// Messages that came before any key was known, oldest first.
    pending: Vec<(String, Vec<u8>)>,
    /// Event id → sha256 of the pictures its messages named and that have not arrived.
    expected_snapshots: HashMap<String, Vec<String>>,
    expected_order: VecDeque<String>,
    /// Pictures no event message named when they came: event id → (sha256, whether a message
    /// named another picture then). A late message may still name one; one that contradicts its
    /// messages is judged once no record is missing.
    unconfirmed_snapshots: HashMap<String, Vec<(String, bool)>>,
    unconfirmed_order: VecDeque<String>,
    /// A key the box announces that its chain has not rotated to.
    announced_key: Option<String>,
    pub online: Option<bool>,
    /// The time of the last presence change written (this run of watch).
    last_presence: Option<String>,
    /// The latest `connected_at` of the box's statuses (this run of watch).
    latest_connection: Option<String>,
    pub last_event: Option<String>,
    pub announced_head: Option<ChainHead>,
    pub events: u64,
    pub unsigned_events: u64,
    pub records: u64,
    pub gaps: Vec<(u64, u64, Option<String>)>,
    /// Gaps found before this run that no retention record explains (from the store).
    pub earlier_unexplained_gaps: u64,
    pub rejected: u64,
    pub alarms: u64,
    pub last_problem: Option<String>,
    pub snapshots_checked: u64,
    /// Camera → state.
    pub cameras: BTreeMap<String, String>,
    dirty: bool,
}

impl BoxState {
    fn new(row: BoxRow) -> Self {
        Self {
            row,
            verifier: None,
            current_key: None,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            pending: Vec::new(),
            expected_snapshots: HashMap::new(),
            expected_order: VecDeque::new(),
            unconfirmed_snapshots: HashMap::new(),
            unconfirmed_order: VecDeque::new(),
            announced_key: None,
            online: None,
            last_presence: None,
            latest_connection: None,
            last_event: None,
            announced_head: None,
            events: 0,
            unsigned_events: 0,
            records: 0,
            gaps: Vec::new(),
            earlier_unexplained_gaps: 0,
            rejected: 0,
            alarms: 0,
            last_problem: None,
            snapshots_checked: 0,
            cameras: BTreeMap::new(),
            dirty: true,
        }
    }

    /// Gaps no retention record of the box explains.
    pub fn unexplained_gaps(&self) -> u64 {
        self.earlier_unexplained_gaps + self.gaps.iter().filter(|g| g.2.is_none()).count() as u64
    }

    fn remember(&mut self, seq: u64, sha256: &str) {
        if self.recent.insert(seq, sha256.to_string()).is_none() {
            self.recent_order.push_back(seq);
        }
        while self.recent_order.len() > RECENT_RECORDS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    fn expect_snapshot(&mut self, event_id: &str, sha256: &str) {
        let hashes = self.expected_snapshots.entry(event_id.to_string()).or_default();
        if hashes.is_empty() {
            self.expected_order.push_back(event_id.to_string());
        }
        hashes.push(sha256.to_string());
        while self.expected_order.len() > EXPECTED_SNAPSHOTS {
            if let Some(old) = self.expected_order.pop_front() {
                self.expected_snapshots.remove(&old);
            }
        }
    }

    fn unconfirmed_snapshot(&mut self, event_id: &str, sha256: &str, contradicts: bool) {
        let pictures = self.unconfirmed_snapshots.entry(event_id.to_string()).or_default();
        if pictures.is_empty() {
            self.unconfirmed_order.push_back(event_id.to_string());
        }
        pictures.push((sha256.to_string(), contradicts));
        while self.unconfirmed_order.len() > EXPECTED_SNAPSHOTS {
            if let Some(old) = self.unconfirmed_order.pop_front() {
                self.unconfirmed_snapshots.remove(&old);
            }
        }
    }

    /// Records missing that no retention record explains (this run): messages may still bring them.
    fn records_missing(&self) -> bool {
        self.gaps.iter().any(|g| g.2.is_none())
    }

    /// Starts the verifier under `key`, from nothing.
    fn trust(&mut self, key: &str, source: &str, now: &str) {
        self.verifier = Some(ChainVerifier::from_anywhere(key));
        self.current_key = Some(key.to_string());
        self.row.public_key = Some(key.to_string());
        self.row.key_source = source.to_string();
        self.row.pinned_at = now.to_string();
        self.dirty = true;
    }
}

/// Every box `watch` has heard of.
pub struct Fleet {
    trust: Trust,
    pub boxes: BTreeMap<String, BoxState>,
    /// Boxes outside the keys file that have sent something.
    pub unknown: std::collections::BTreeSet<String>,
}

/// Why a message is kept apart.
struct Refusal {
    seq: Option<u64>,
    problem: &'static str,
    detail: String,
    alarm: bool,
}

impl Fleet {
    /// The fleet as the store left it: each box's key, epoch and last verified record, from which
    /// its verifier starts again. With a keys file, a box whose key there differs from the one
    /// pinned starts a new epoch under it.
    pub fn resume(trust: Trust, rows: Vec<BoxRow>, unexplained_gaps: &BTreeMap<String, u64>) -> (Self, Decision) {
        let mut fleet = Self { trust, boxes: BTreeMap::new(), unknown: Default::default() };
        let mut decision = Decision::default();
        let now = time::now_text();
        for row in rows {
            let device = row.device.clone();
            let mut state = BoxState::new(row);
            state.dirty = false;
            state.earlier_unexplained_gaps = unexplained_gaps.get(&device).copied().unwrap_or(0);
            state.online = state.row.state.as_deref().map(|s| s == "online");
            let file_key = match &fleet.trust {
                Trust::Keys(keys) => keys.get(&device).cloned(),
                Trust::FirstUse => None,
            };
            match (&file_key, &state.row.public_key) {
                (Some(file), Some(pinned)) if file.trim() != pinned => {
                    state.row.epoch += 1;
                    state.row.resume_record = None;
                    state.row.resume_key = None;
                    state.row.last_seq = None;
                    state.trust(file.trim(), "keys file", &now);
                    decision.notes.push(Note {
                        device: device.clone(),
                        alarm: false,
                        text: format!(
                            "the keys file names another key: its chain starts again as epoch {}",
                            state.row.epoch
                        ),
                    });
                }
                (_, Some(pinned)) => {
                    let pinned = pinned.clone();
                    let resume = state.row.resume_record.clone().zip(state.row.resume_key.clone());
                    match resume
                        .and_then(|(record, key)| serde_json::from_str::<ChainProof>(&record).ok().map(|p| (p, key)))
                    {
                        Some((proof, key)) => {
                            let mut verifier = ChainVerifier::from_anywhere(&key);
                            let checked = verifier.push(SignedRecord::from(&proof));
                            if matches!(checked.outcome, Outcome::Linked) {
                                state.remember(proof.seq, &proof.sha256);
                                state.verifier = Some(verifier);
                                state.current_key = Some(pinned);
                            } else {
                                state.verifier = Some(ChainVerifier::from_anywhere(&pinned));
                                state.current_key = Some(pinned);
                            }
                        }
                        None => {
                            state.verifier = Some(ChainVerifier::from_anywhere(&pinned));
                            state.current_key = Some(pinned);
                        }
                    }
                }
                (Some(file), None) => state.trust(file.trim(), "keys file", &now),
                (None, None) => {}
            }
            fleet.boxes.insert(device, state);
        }
        (fleet, decision)
    }

    pub fn new(trust: Trust) -> Self {
        Self { trust, boxes: BTreeMap::new(), unknown: Default::default() }
    }

    /// The box's state, made at first contact (with its key when the keys file has it).
    fn state(&mut self, device: &str, now: &str) -> Option<&mut BoxState> {
        if !self.boxes.contains_key(device) {
            let file_key = match &self.trust {
                Trust::Keys(keys) => Some(keys.get(device).cloned()?),
                Trust::FirstUse => None,
            };
            let row = BoxRow {
                device: device.to_string(),
                public_key: None,
                key_source: String::new(),
                pinned_at: now.to_string(),
                epoch: 0,
                resume_record: None,
                resume_key: None,
                last_seq: None,
                first_seen: now.to_string(),
                last_seen: now.to_string(),
                state: None,
                status: None,
            };
            let mut state = BoxState::new(row);
            if let Some(key) = file_key {
                state.trust(key.trim(), "keys file", now);
            }
            self.boxes.insert(device.to_string(), state);
        }
        self.boxes.get_mut(device)
    }

    /// The box rows changed since the last call, to write with the batch.
    pub fn changed_boxes(&mut self) -> Vec<Write> {
        self.boxes
            .values_mut()
            .filter_map(|b| std::mem::take(&mut b.dirty).then(|| Write::Box(b.row.clone())))
            .collect()
    }

    /// What a message on `{prefix}/{device}/{rest}` means; `now` is when it was received.
    pub fn receive(&mut self, device: &str, rest: &str, payload: &[u8], now: &str) -> Decision {
        let mut decision = Decision::default();
        let topic = rest.to_string();
        let Some(state) = self.state(device, now) else {
            // A box outside the keys file: kept apart, said once.
            let first = self.unknown.insert(device.to_string());
            decision.writes.push(rejected(
                device,
                &topic,
                payload,
                None,
                "unknown_box",
                "the box is not in the keys file",
            ));
            if first {
                decision.notes.push(Note {
                    device: device.to_string(),
                    alarm: true,
                    text: "not in the keys file: its messages are kept apart".into(),
                });
            }
            return decision;
        };
        state.row.last_seen = now.to_string();
        state.dirty = true;
        if let Some(id) = rest.strip_prefix("snapshots/") {
            snapshot(state, device, id, payload, &mut decision);
            return decision;
        }
        let Ok(message) = serde_json::from_slice::<Value>(payload) else {
            if matches!(rest, "events" | "chain") {
                keep_apart(
                    state,
                    device,
                    &topic,
                    payload,
                    Refusal { seq: None, problem: "unreadable", detail: "not JSON".into(), alarm: true },
                    now,
                    &mut decision,
                );
            }
            return decision;
        };
        match rest {
            "status" => self.status(device, &message, now, &mut decision),
            "telemetry" => {
                if let Some(state) = self.boxes.get_mut(device) {
                    let time = message["time"].as_str().and_then(time::normalized).unwrap_or_else(|| now.to_string());
                    decision.writes.push(Write::Telemetry {
                        device: device.into(),
                        time,
                        message: message.to_string(),
                    });
                    if let Some(head) = head_of(&message) {
                        announced(state, device, head, &mut decision);
                    }
                }
            }
            "events" | "chain" => self.chained(device, &topic, payload, &message, now, &mut decision),
            _ => {
                let Some(state) = self.boxes.get_mut(device) else { return decision };
                if let Some(camera) = rest.strip_prefix("cameras/").and_then(|r| r.strip_suffix("/health")) {
                    let health = message["state"].as_str().unwrap_or("unknown").to_string();
                    state.cameras.insert(camera.to_string(), health.clone());
                    let time = message["time"].as_str().and_then(time::normalized).unwrap_or_else(|| now.to_string());
                    decision.writes.push(Write::Health {
                        device: device.into(),
                        camera: camera.into(),
                        time,
                        state: health,
                        message: message.to_string(),
                    });
                } else if let Some(command) = rest.strip_prefix("cmd/").and_then(|r| r.strip_suffix("/ack")) {
                    let time = message["time"].as_str().and_then(time::normalized).unwrap_or_else(|| now.to_string());
                    decision.writes.push(Write::Ack {
                        device: device.into(),
                        command: command.into(),
                        correlation_id: message["correlation_id"].as_str().unwrap_or_default().into(),
                        time,
                        ok: message["ok"] == true,
                        message: message.to_string(),
                    });
                }
            }
        }
        decision
    }

    fn status(&mut self, device: &str, message: &Value, now: &str, decision: &mut Decision) {
        let Some(state) = self.boxes.get_mut(device) else { return };
        let status_state = message["state"].as_str().unwrap_or("unknown").to_string();
        // A will of a connection older than one the box has spoken on since says nothing about now
        // (the broker may hand it over after the box's next `online`).
        let connected_at = message["connected_at"].as_str().and_then(time::normalized);
        if let Some(connected_at) = &connected_at {
            let latest = state.latest_connection.as_ref();
            if status_state == "offline" && latest.is_some_and(|latest| connected_at < latest) {
                return;
            }
            if latest.is_none_or(|latest| connected_at > latest) {
                state.latest_connection = Some(connected_at.clone());
            }
        }
        // The last will carries the time the box connected; the platform dates it on arrival.
        let time = match status_state.as_str() {
            "offline" => now.to_string(),
            _ => message["time"].as_str().and_then(time::normalized).unwrap_or_else(|| now.to_string()),
        };
        // Presence keeps the order of arrival: a will dated on arrival can come after the box's
        // next `online` was written with the box's own (earlier) time — a broker restart hands a
        // returning watcher the will and the new `online` together — and must not end up after it.
        let time = match state.last_presence.as_deref() {
            Some(last) if time.as_str() <= last => time::just_after(last).unwrap_or(time),
            _ => time,
        };
        state.last_presence = Some(time.clone());
        decision.writes.push(Write::Presence { device: device.into(), time, state: status_state.clone() });
        state.online = Some(status_state == "online");
        state.row.state = Some(status_state);
        state.row.status = Some(message.to_string());
        if let Some(head) = head_of(message) {
            announced(state, device, head, decision);
        }
        let Some(key) = message["evidence"]["public_key"].as_str().map(str::to_string) else { return };
        match state.current_key.clone() {
            None => {
                state.trust(&key, "first status (trust on first use)", now);
                decision.notes.push(Note {
                    device: device.into(),
                    alarm: false,
                    text: format!("key pinned at first contact: {key}"),
                });
                self.replay_pending(device, now, decision);
            }
            Some(current) if current != key && state.announced_key.as_deref() != Some(key.as_str()) => {
                state.announced_key = Some(key.clone());
                decision.notes.push(Note {
                    device: device.into(),
                    alarm: false,
                    text: format!("announces key {key}, which its chain has not rotated to (yet)"),
                });
            }
            Some(_) => {}
        }
    }

    /// Messages that waited for a key, through the verifier now that there is one.
    fn replay_pending(&mut self, device: &str, now: &str, decision: &mut Decision) {
        let pending = match self.boxes.get_mut(device) {
            Some(state) => std::mem::take(&mut state.pending),
            None => return,
        };
        for (topic, payload) in pending {
            let more = self.receive(device, &topic, &payload, now);
            decision.writes.extend(more.writes);
            decision.notes.extend(more.notes);
        }
    }

    /// An event message or a chain record: verified, then stored or kept apart.
    fn chained(
        &mut self,
        device: &str,
        topic: &str,
        payload: &[u8],
        message: &Value,
        now: &str,
        decision: &mut Decision,
    ) {
        let Some(state) = self.boxes.get_mut(device) else { return };
        let (proof, event) = match received(message) {
            Ok(Some(Received::Event { proof, event })) => (proof, Some(event)),
            Ok(Some(Received::Record(proof))) => (proof, None),
            Ok(Some(Received::Head(_))) | Ok(None) => {
                if topic == "events" {
                    unsigned_event(state, device, message, decision);
                }
                return;
            }
            Err(why) => {
                let refusal = Refusal { seq: None, problem: "altered", detail: why, alarm: true };
                return keep_apart(state, device, topic, payload, refusal, now, decision);
            }
        };
        if state.verifier.is_none() {
            // No key yet: the chain's first record may name it; otherwise wait for the status.
            if let Ok(body) = serde_json::from_str::<edge_agent::wire::RecordBody>(&proof.record) {
                if let RecordContent::Genesis { public_key } = &body.content {
                    if verify_hex(public_key, proof.record.as_bytes(), &proof.signature).is_ok() {
                        let key = public_key.clone();
                        state.trust(&key, "first record (trust on first use)", now);
                        decision.notes.push(Note {
                            device: device.into(),
                            alarm: false,
                            text: format!("key pinned at first contact: {key}"),
                        });
                    }
                }
            }
            if state.verifier.is_none() {
                if state.pending.len() < PENDING_MAX {
                    state.pending.push((topic.to_string(), payload.to_vec()));
                } else {
                    let refusal = Refusal {
                        seq: Some(proof.seq),
                        problem: "no_key",
                        detail: "no key known for this box yet".into(),
                        alarm: false,
                    };
                    keep_apart(state, device, topic, payload, refusal, now, decision);
                }
                return;
            }
        }
        let actual = sha256_hex(proof.record.as_bytes());
        // A record taken in before, again: the event it carries must still be what was signed.
        if actual == proof.sha256 && state.recent.get(&proof.seq) == Some(&actual) {
            let body = match serde_json::from_str(&proof.record) {
                Ok(body) => body,
                Err(e) => {
                    let refusal = Refusal {
                        seq: Some(proof.seq),
                        problem: "altered",
                        detail: format!("not a chain record: {e}"),
                        alarm: true,
                    };
                    return keep_apart(state, device, topic, payload, refusal, now, decision);
                }
            };
            if let Some(why) = differs_from_record(&proof, event.as_ref(), &body) {
                let refusal = Refusal { seq: Some(proof.seq), problem: "altered", detail: why, alarm: true };
                return keep_apart(state, device, topic, payload, refusal, now, decision);
            }
            if let Some(event) = &event {
                store_event(state, device, event, Some(proof.seq), decision);
            }
            return;
        }
        let signing_key = state.current_key.clone().unwrap_or_default();
        let Some(verifier) = state.verifier.as_mut() else { return };
        let checked = verifier.push(SignedRecord::from(&proof));
        let Some(record) = checked.record else {
            let Outcome::Broken(broken) = &checked.outcome else { return };
            let (problem, mut detail) = described(proof.seq, broken);
            let mut problem = problem;
            if matches!(broken, Break::Forged(_)) {
                // Signed, but by another key: the box's key changed without a rotation record?
                let other = state.announced_key.clone().or_else(|| named_key(&proof));
                if let Some(other) = other.filter(|k| verify_hex(k, proof.record.as_bytes(), &proof.signature).is_ok())
                {
                    problem = "key_changed";
                    detail = format!(
                        "signed by {other}, not by {signing_key}, with no key_rotated record between: the box's key changed \
                         (a new SD card, a wiped state folder?); put its new key in the keys file once you know why"
                    );
                }
            }
            let refusal = Refusal { seq: Some(proof.seq), problem, detail, alarm: true };
            return keep_apart(state, device, topic, payload, refusal, now, decision);
        };
        if let Outcome::Broken(broken) = &checked.outcome {
            let (problem, detail) = described(proof.seq, broken);
            let refusal = Refusal { seq: Some(proof.seq), problem, detail, alarm: true };
            return keep_apart(state, device, topic, payload, refusal, now, decision);
        }
        // Hash and signature hold and the record is in order, or fills its place late: take it in,
        // whatever its message says.
        let epoch = state.row.epoch;
        let late = matches!(checked.outcome, Outcome::Late { .. });
        match checked.outcome {
            Outcome::AfterGap { first_seq, last_seq } => {
                state.gaps.push((first_seq, last_seq, None));
                decision.writes.push(Write::Gap { device: device.into(), epoch, first_seq, last_seq });
                decision.notes.push(Note {
                    device: device.into(),
                    alarm: true,
                    text: format!(
                        "records {first_seq}..={last_seq} have not arrived (gap before record {})",
                        record.seq
                    ),
                });
            }
            Outcome::Late { first_seq, last_seq } => {
                if let Some(at) = state.gaps.iter().position(|g| g.0 == first_seq && g.1 == last_seq) {
                    let why = state.gaps[at].2.clone();
                    let pieces =
                        split_gap(first_seq, last_seq, record.seq).into_iter().map(|(f, l)| (f, l, why.clone()));
                    state.gaps.splice(at..=at, pieces);
                }
                decision.writes.push(Write::GapFilled {
                    device: device.into(),
                    epoch,
                    first_seq,
                    last_seq,
                    seq: record.seq,
                });
                let head = state.row.last_seq.unwrap_or_default();
                let still = if state.records_missing() { "" } else { "; no record is missing now" };
                decision.notes.push(Note {
                    device: device.into(),
                    alarm: false,
                    text: format!(
                        "record {} arrived late, after record {head} (out of order on the way); it links to its neighbours: taken in{still}",
                        record.seq
                    ),
                });
            }
            _ => {}
        }
        decision.writes.push(Write::Record {
            device: device.into(),
            epoch,
            seq: record.seq,
            sha256: actual.clone(),
            prev_sha256: record.prev_sha256.clone(),
            record_kind: record_kind(&record.content).into(),
            time: time::text(record.time),
            signature: proof.signature.clone(),
            body: proof.record.clone(),
        });
        state.records += 1;
        state.remember(record.seq, &actual);
        if !late {
            state.row.last_seq = Some(record.seq);
            state.row.resume_record = serde_json::to_string(&proof).ok();
            state.row.resume_key = Some(signing_key);
        }
        match &record.content {
            RecordContent::KeyRotated { public_key } => {
                state.current_key = Some(public_key.clone());
                state.row.public_key = Some(public_key.clone());
                state.row.key_source = format!("key_rotated record {}", record.seq);
                if state.announced_key.as_deref() == Some(public_key.as_str()) {
                    state.announced_key = None;
                }
                decision.notes.push(Note {
                    device: device.into(),
                    alarm: false,
                    text: format!("key rotated to {public_key} (record {})", record.seq),
                });
            }
            RecordContent::ChainPruned { first_seq, last_seq, reason, .. } => {
                let why = format!("{reason} (record {})", record.seq);
                for gap in state.gaps.iter_mut().filter(|g| g.0 >= *first_seq && g.1 <= *last_seq) {
                    gap.2 = Some(why.clone());
                }
                decision.writes.push(Write::PrunedByPolicy {
                    device: device.into(),
                    epoch,
                    first_seq: *first_seq,
                    last_seq: *last_seq,
                    why,
                });
            }
            _ => {}
        }
        if let Some(why) = differs_from_record(&proof, event.as_ref(), &record) {
            let refusal = Refusal { seq: Some(proof.seq), problem: "altered", detail: why, alarm: true };
            return keep_apart(state, device, topic, payload, refusal, now, decision);
        }
        if let Some(event) = &event {
            store_event(state, device, event, Some(record.seq), decision);
        }
        if late && !state.records_missing() {
            judge_held_snapshots(state, device, decision);
        }
    }
}

fn store_event(state: &mut BoxState, device: &str, event: &Value, chain_seq: Option<u64>, decision: &mut Decision) {
    let text = |field: &str| event[field].as_str().unwrap_or_default().to_string();
    let time = event["time"].as_str().and_then(time::normalized).unwrap_or_default();
    if let (Some(id), Some(sha)) = (event["event_id"].as_str(), event["snapshot_sha256"].as_str()) {
        let came_before = state.unconfirmed_snapshots.get_mut(id).and_then(|pictures| {
            let at = pictures.iter().position(|(picture, _)| picture == sha)?;
            Some(pictures.remove(at))
        });
        if came_before.is_some() {
            state.snapshots_checked += 1;
            decision.writes.push(Write::SnapshotConfirmed { device: device.into(), id: id.into(), sha256: sha.into() });
        }
        state.expect_snapshot(id, sha);
    }
    state.events += 1;
    state.last_event = Some(format!("{} {} {}", time.get(..19).unwrap_or(&time), text("kind"), text("camera")));
    // The message as received, with its proof: evidence that can be checked again later.
    decision.writes.push(Write::Event {
        device: device.into(),
        event_id: text("event_id"),
        revision: event["revision"].as_i64().unwrap_or(0),
        state: text("state"),
        kind: text("kind"),
        camera: text("camera"),
        time,
        epoch: state.row.epoch,
        chain_seq,
        message: event.to_string(),
    });
}

/// An event message without a chain record (the box has evidence off): stored, marked unsigned.
fn unsigned_event(state: &mut BoxState, device: &str, message: &Value, decision: &mut Decision) {
    state.unsigned_events += 1;
    store_event(state, device, message, None, decision);
}

fn snapshot(state: &mut BoxState, device: &str, id: &str, payload: &[u8], decision: &mut Decision) {
    let sha = sha256_hex(payload);
    let checked = match state.expected_snapshots.get(id) {
        // Kept after a match: a box sends at least once, and a picture resent after a restart
        // is the same picture (the store keeps it once).
        Some(hashes) if hashes.contains(&sha) => {
            state.snapshots_checked += 1;
            MATCHES_ITS_EVENT
        }
        Some(hashes) if !state.records_missing() => {
            let named = hashes.join(", ");
            return altered_snapshot(state, device, id, &sha, &named, decision);
        }
        // Messages are missing that may name it (a broker delivers what it queued after newer
        // messages): judged when they have come.
        Some(_) => {
            state.unconfirmed_snapshot(id, &sha, true);
            "not named by the messages so far; records are missing"
        }
        // A command's picture, or one whose event message has not come.
        None => {
            state.unconfirmed_snapshot(id, &sha, false);
            "no event message names it"
        }
    };
    decision.writes.push(Write::Snapshot {
        device: device.into(),
        id: id.into(),
        sha256: sha,
        bytes: payload.len() as u64,
        checked: checked.into(),
    });
}

const MATCHES_ITS_EVENT: &str = "matches its event";

/// A picture whose event's messages name others: kept apart, an alarm.
fn altered_snapshot(state: &mut BoxState, device: &str, id: &str, sha: &str, named: &str, decision: &mut Decision) {
    let detail = format!("the picture of event {id} has sha256 {sha}; its event message names {named}");
    state.rejected += 1;
    state.alarms += 1;
    state.last_problem = Some(format!("snapshot of {id}: altered"));
    decision.notes.push(Note { device: device.into(), alarm: true, text: format!("snapshot altered: {detail}") });
    decision.writes.push(Write::Rejected {
        device: device.into(),
        topic: format!("snapshots/{id}"),
        seq: None,
        problem: "snapshot".into(),
        detail,
        payload_sha256: sha.into(),
        payload: String::new(),
    });
}

/// The pictures held while records were missing, now that none is: one its messages still do not
/// name is altered, and leaves the snapshots table for the rejected one.
fn judge_held_snapshots(state: &mut BoxState, device: &str, decision: &mut Decision) {
    let mut contradicting = Vec::new();
    for (id, pictures) in state.unconfirmed_snapshots.iter_mut() {
        pictures.retain(|(sha, contradicts)| {
            if *contradicts {
                contradicting.push((id.clone(), sha.clone()));
            }
            !*contradicts
        });
    }
    for (id, sha) in contradicting {
        let named = state.expected_snapshots.get(&id).map(|hashes| hashes.join(", ")).unwrap_or_default();
        decision.writes.push(Write::SnapshotWithdrawn { device: device.into(), id: id.clone(), sha256: sha.clone() });
        altered_snapshot(state, device, &id, &sha, &named, decision);
    }
}

/// A chain head the box announces; one that contradicts a record received is an alarm.
fn announced(state: &mut BoxState, device: &str, head: ChainHead, decision: &mut Decision) {
    if let Some(ours) = state.recent.get(&head.seq) {
        if *ours != head.sha256 {
            state.alarms += 1;
            let text = format!(
                "announces record {} with sha256 {}, but the record {} received has {ours}: its chain was rolled back or forked",
                head.seq, head.sha256, head.seq
            );
            state.last_problem = Some(format!("head {} contradicts", head.seq));
            decision.writes.push(Write::Alarm {
                device: device.into(),
                time: time::now_text(),
                kind: "head".into(),
                seq: Some(head.seq),
                detail: text.clone(),
            });
            decision.notes.push(Note { device: device.into(), alarm: true, text });
        }
    }
    state.announced_head = Some(head);
}

fn keep_apart(
    state: &mut BoxState,
    device: &str,
    topic: &str,
    payload: &[u8],
    refusal: Refusal,
    now: &str,
    decision: &mut Decision,
) {
    let Refusal { seq, problem, detail, alarm } = refusal;
    state.rejected += 1;
    let record = seq.map(|s| format!("record {s}")).unwrap_or_else(|| "a message".into());
    if alarm {
        state.alarms += 1;
        state.last_problem = Some(format!("{record}: {problem}"));
        decision.writes.push(Write::Alarm {
            device: device.into(),
            time: now.into(),
            kind: problem.into(),
            seq,
            detail: detail.clone(),
        });
        decision.notes.push(Note {
            device: device.into(),
            alarm: true,
            text: format!("{record} on {topic} {problem}: {detail}; kept apart"),
        });
    }
    decision.writes.push(rejected(device, topic, payload, seq, problem, &detail));
}

fn rejected(device: &str, topic: &str, payload: &[u8], seq: Option<u64>, problem: &str, detail: &str) -> Write {
    Write::Rejected {
        device: device.into(),
        topic: topic.into(),
        seq,
        problem: problem.into(),
        detail: detail.into(),
        payload_sha256: sha256_hex(payload),
        payload: String::from_utf8_lossy(payload).into_owned(),
    }
}

/// The key a genesis or segment record names (a chain started afresh under a new key).
fn named_key(proof: &ChainProof) -> Option<String> {
    let body: edge_agent::wire::RecordBody = serde_json::from_str(&proof.record).ok()?;
    match body.content {
        RecordContent::Genesis { public_key } | RecordContent::SegmentStarted { public_key } => Some(public_key),
        _ => None,
    }
}

fn head_of(message: &Value) -> Option<ChainHead> {
    let head = message.get("evidence").and_then(|e| e.get("chain_head")).or_else(|| message.get("chain_head"))?;
    serde_json::from_value(head.clone()).ok()
}

fn record_kind(content: &RecordContent) -> &'static str {
    match content {
        RecordContent::Genesis { .. } => "genesis",
        RecordContent::Event { .. } => "event",
        RecordContent::Clip { .. } => "clip",
        RecordContent::Pruned { .. } => "pruned",
        RecordContent::KeyRotated { .. } => "key_rotated",
        RecordContent::SegmentStarted { .. } => "segment_started",
        RecordContent::ChainPruned { .. } => "chain_pruned",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_agent::evidence::chain::Chain;
    use edge_agent::evidence::signing::DeviceKey;
    use serde_json::json;

    /// A box's chain as its evidence stage writes it (the agent's own chain writer, a real key file).
    struct TestBox {
        dir: tempfile::TempDir,
        chain: Chain,
        public: String,
        events: u64,
    }

    impl TestBox {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let key = DeviceKey::load_or_create(&dir.path().join("keys")).unwrap();
            let public = key.public_hex();
            let chain = Chain::open(&dir.path().join("evidence"), key, "box-1").unwrap();
            Self { dir, chain, public, events: 0 }
        }

        /// The genesis (or any record but events) as the `chain` topic carries it.
        fn chain_messages(&mut self) -> Vec<Vec<u8>> {
            self.chain.take_unpublished().iter().map(|p| serde_json::to_vec(p).unwrap()).collect()
        }

        /// An event message with its record, as delivery sends it; `snapshot`: its picture's bytes.
        fn event(&mut self, snapshot: Option<&[u8]>) -> Vec<u8> {
            self.events += 1;
            self.revision(self.events, 0, snapshot)
        }

        /// A revision of event number `n` (its id `0190-000n`), with another picture perhaps.
        fn revision(&mut self, n: u64, revision: i64, snapshot: Option<&[u8]>) -> Vec<u8> {
            let event = json!({
                "schema_version": 2,
                "event_id": format!("0190-{n:04}"),
                "revision": revision,
                "state": "start",
                "device": "box-1",
                "camera": "gate",
                "time": "2026-12-06T08:00:00Z",
                "kind": "litter",
                "label": "bottle",
                "snapshot_sha256": snapshot.map(sha256_hex),
            });
            let proof = self
                .chain
                .append(chrono::Utc::now(), RecordContent::Event { event: event.clone(), evidence: vec![] })
                .unwrap();
            let mut message = event;
            message["chain"] = serde_json::to_value(proof).unwrap();
            serde_json::to_vec(&message).unwrap()
        }

        /// The box comes online: its status, then the chain records it has not published yet.
        fn introduce(&mut self, fleet: &mut Fleet) {
            feed(fleet, "status", &self.status());
            for message in self.chain_messages() {
                feed(fleet, "chain", &message);
            }
        }

        fn status(&self) -> Vec<u8> {
            let head = self.chain.head().map(|h| serde_json::to_value(h).unwrap());
            serde_json::to_vec(&json!({ "state": "online", "time": "2026-12-06T07:59:00Z",
                "evidence": { "public_key": self.public, "chain_head": head } }))
            .unwrap()
        }
    }

    fn feed(fleet: &mut Fleet, rest: &str, payload: &[u8]) -> Decision {
        fleet.receive("box-1", rest, payload, "2026-12-06T08:00:01.000000Z")
    }

    fn alarms(decision: &Decision) -> Vec<String> {
        decision.notes.iter().filter(|n| n.alarm).map(|n| n.text.clone()).collect()
    }

    fn events_written(decision: &Decision) -> usize {
        decision.writes.iter().filter(|w| matches!(w, Write::Event { .. })).count()
    }

    #[test]
    fn the_key_is_pinned_at_first_status_and_a_resent_record_is_taken_once() {
        let mut device = TestBox::new();
        let mut fleet = Fleet::new(Trust::FirstUse);
        let genesis = device.chain_messages();
        let first = feed(&mut fleet, "status", &device.status());
        assert_eq!(fleet.boxes["box-1"].row.public_key.as_deref(), Some(device.public.as_str()));
        assert!(first.notes.iter().any(|n| n.text.contains("pinned")));
        let decision = feed(&mut fleet, "chain", &genesis[0]);
        assert!(alarms(&decision).is_empty(), "{:?}", decision.notes);
        let events: Vec<Vec<u8>> = (0..3).map(|_| device.event(None)).collect();
        for event in &events {
            let decision = feed(&mut fleet, "events", event);
            assert!(alarms(&decision).is_empty(), "{:?}", decision.notes);
            assert_eq!(events_written(&decision), 1);
        }
        // The box resends what the broker had not acknowledged: the same messages, no alarm, no new record.
        let again = feed(&mut fleet, "events", &events[1]);
        assert!(alarms(&again).is_empty(), "{:?}", again.notes);
        assert!(!again.writes.iter().any(|w| matches!(w, Write::Record { .. })));
        let state = &fleet.boxes["box-1"];
        assert_eq!((state.records, state.row.last_seq, state.rejected), (4, Some(4), 0));
    }

    #[test]
    fn a_changed_event_a_missing_record_and_a_late_one_are_each_named() {
        let mut device = TestBox::new();
        let mut fleet = Fleet::new(Trust::FirstUse);
        device.introduce(&mut fleet);
        let events: Vec<Vec<u8>> = (0..5).map(|_| device.event(None)).collect();
        feed(&mut fleet, "events", &events[0]);
        // The label changed on the way, the record untouched.
        let changed = String::from_utf8(events[1].clone()).unwrap().replacen("\"bottle\"", "\"nothing\"", 1);
        let decision = feed(&mut fleet, "events", changed.as_bytes());
        assert!(
            alarms(&decision).iter().any(|a| a.contains("record 3") && a.contains("(at `label`)")),
            "{:?}",
            decision.notes
        );
        assert_eq!(events_written(&decision), 0, "a changed event is kept apart");
        // The real one comes after all: stored, as it was signed.
        assert_eq!(events_written(&feed(&mut fleet, "events", &events[1])), 1);
        // Records 4 and 5 are missing when 6 comes; then 4 comes, late, and is taken in.
        let gap = feed(&mut fleet, "events", &events[4]);
        assert!(alarms(&gap).iter().any(|a| a.contains("records 4..=5 have not arrived")), "{:?}", gap.notes);
        let late = feed(&mut fleet, "events", &events[2]);
        assert!(alarms(&late).is_empty(), "{:?}", late.notes);
        assert!(
            late.notes.iter().any(|n| n.text.contains("record 4 arrived late, after record 6")),
            "{:?}",
            late.notes
        );
        assert_eq!(events_written(&late), 1);
        assert!(late.writes.contains(&Write::GapFilled {
            device: "box-1".into(),
            epoch: 0,
            first_seq: 4,
            last_seq: 5,
            seq: 4
        }));
        let state = &fleet.boxes["box-1"];
        assert_eq!(state.gaps, vec![(5, 5, None)]);
        assert_eq!((state.rejected, state.row.last_seq), (1, Some(6)), "the head stays at 6");
        // An older record than any gap, again but changed, is out of order.
        let replayed = String::from_utf8(events[0].clone()).unwrap().replacen("\"bottle\"", "\"nothing\"", 1);
        let decision = feed(&mut fleet, "events", replayed.as_bytes());
        assert_eq!(alarms(&decision).len(), 1, "{:?}", decision.notes);
        // A byte changed inside the signed record itself.
        let forged = String::from_utf8(events[3].clone()).unwrap().replacen("bottle\\\"", "bottlE\\\"", 1);
        assert_ne!(forged.as_bytes(), &events[3][..]);
        let decision = feed(&mut fleet, "events", forged.as_bytes());
        assert!(
            alarms(&decision).iter().any(|a| a.contains("record 5") && a.contains("altered")),
            "{:?}",
            decision.notes
        );
    }

    #[test]
    fn a_rotation_the_chain_records_is_followed_and_a_new_key_without_one_is_an_alarm() {
        let mut device = TestBox::new();
        let mut fleet = Fleet::new(Trust::FirstUse);
        device.introduce(&mut fleet);
        feed(&mut fleet, "events", &device.event(None));
        let rotated = device.chain.rotate_key(&device.dir.path().join("keys")).unwrap();
        let decision = feed(&mut fleet, "chain", &serde_json::to_vec(&rotated).unwrap());
        assert!(alarms(&decision).is_empty(), "{:?}", decision.notes);
        let _ = device.chain.take_unpublished();
        let decision = feed(&mut fleet, "events", &device.event(None));
        assert!(alarms(&decision).is_empty(), "signed by the new key: {:?}", decision.notes);
        assert_eq!(events_written(&decision), 1);
        // The box's state folder wiped: a new key and a new chain, with no rotation record.
        let mut wiped = TestBox::new();
        feed(&mut fleet, "status", &wiped.status());
        let genesis = wiped.chain_messages();
        let decision = feed(&mut fleet, "chain", &genesis[0]);
        assert!(
            alarms(&decision).iter().any(|a| a.contains("key_changed") && a.contains(&wiped.public)),
            "{:?}",
            decision.notes
        );
        let decision = feed(&mut fleet, "events", &wiped.event(None));
        assert_eq!(events_written(&decision), 0, "kept apart until the keys file says otherwise");
    }

    #[test]
    fn watch_goes_on_from_the_stored_record_after_a_restart() {
        let mut device = TestBox::new();
        let mut fleet = Fleet::new(Trust::FirstUse);
        device.introduce(&mut fleet);
        feed(&mut fleet, "events", &device.event(None));
        let rows: Vec<BoxRow> = fleet
            .changed_boxes()
            .into_iter()
            .filter_map(|w| match w {
                Write::Box(row) => Some(row),
                _ => None,
            })
            .collect();
        let (mut resumed, _) = Fleet::resume(Trust::FirstUse, rows.clone(), &BTreeMap::new());
        let next = device.event(None);
        let decision = resumed.receive("box-1", "events", &next, "t");
        assert!(alarms(&decision).is_empty(), "{:?}", decision.notes);
        assert!(resumed.boxes["box-1"].gaps.is_empty());
        // A record that does not link to the stored one is caught across the restart too.
        let (mut resumed, _) = Fleet::resume(Trust::FirstUse, rows, &BTreeMap::new());
        let mut other = TestBox::new();
        let _ = other.chain_messages();
        let decision = resumed.receive("box-1", "events", &other.event(None), "t");
        assert!(!alarms(&decision).is_empty(), "a record of another chain: {:?}", decision.notes);
        // With a keys file naming another key, the chain starts again as a new epoch.
        let mut keys = BTreeMap::new();
        keys.insert("box-1".to_string(), other.public.clone());
        let rows = vec![fleet.boxes["box-1"].row.clone()];
        let (resumed, said) = Fleet::resume(Trust::Keys(keys), rows, &BTreeMap::new());
        assert_eq!(resumed.boxes["box-1"].row.epoch, 1);
        assert!(said.notes.iter().any(|n| n.text.contains("epoch 1")));
    }

    #[test]
    fn presence_keeps_the_order_of_arrival_and_a_late_will_of_an_earlier_connection_changes_nothing() {
        let device = TestBox::new();
        let mut fleet = Fleet::new(Trust::FirstUse);
        let presence = |decision: &Decision| -> Vec<(String, String)> {
            decision
                .writes
                .iter()
                .filter_map(|w| match w {
                    Write::Presence { time, state, .. } => Some((time.clone(), state.clone())),
                    _ => None,
                })
                .collect()
        };
        // The box said online at 07:59:00 (its clock); after a broker restart the watcher gets the
        // old connection's will at 08:00:05 and then the box's new online, written at 08:00:02.
        let first = presence(&fleet.receive("box-1", "status", &device.status(), "2026-12-06T07:59:00.100000Z"));
        let will = serde_json::to_vec(&json!({ "state": "offline", "time": "2026-12-06T07:59:00Z" })).unwrap();
        let offline = presence(&fleet.receive("box-1", "status", &will, "2026-12-06T08:00:05.000000Z"));
        let back = serde_json::to_vec(&json!({ "state": "online", "time": "2026-12-06T08:00:02Z" })).unwrap();
        let online = presence(&fleet.receive("box-1", "status", &back, "2026-12-06T08:00:05.100000Z"));
        assert_eq!(first, vec![("2026-12-06T07:59:00.000000Z".to_string(), "online".to_string())]);
        assert_eq!(offline, vec![("2026-12-06T08:00:05.000000Z".to_string(), "offline".to_string())]);
        assert_eq!(online, vec![("2026-12-06T08:00:05.000001Z".to_string(), "online".to_string())]);
        // With `connected_at` (boxes from this version on): the will of an earlier connection that
        // arrives after the box spoke on a later one is stale, and changes nothing.
        let status = |state: &str, connected_at: &str| {
            serde_json::to_vec(&json!({ "state": state, "time": "2026-12-06T08:01:00Z", "connected_at": connected_at }))
                .unwrap()
        };
        fleet.receive("box-1", "status", &status("online", "2026-12-06T08:00:59Z"), "2026-12-06T08:01:00.000000Z");
        let late_will =
            fleet.receive("box-1", "status", &status("offline", "2026-12-06T08:00:01Z"), "2026-12-06T08:01:01.000000Z");
        assert!(presence(&late_will).is_empty(), "{:?}", late_will.writes);
        assert_eq!(fleet.boxes["box-1"].online, Some(true));
        // The will of the connection in use is the box going away.
        let will =
            fleet.receive("box-1", "status", &status("offline", "2026-12-06T08:00:59Z"), "2026-12-06T08:01:02.000000Z");
        assert_eq!(presence(&will), vec![("2026-12-06T08:01:02.000000Z".to_string(), "offline".to_string())]);
        assert_eq!(fleet.boxes["box-1"].online, Some(false));
    }

    #[test]
    fn a_picture_before_its_late_message_waits_for_it_and_one_no_message_names_is_altered_once_none_is_missing() {
        let mut device = TestBox::new();
        let mut fleet = Fleet::new(Trust::FirstUse);
        device.introduce(&mut fleet);
        let (first, better, other, altered) =
            (b"\xff\xd8 1".to_vec(), b"\xff\xd8 2".to_vec(), b"\xff\xd8 3".to_vec(), b"\xff\xd8 4".to_vec());
        feed(&mut fleet, "events", &device.event(Some(&first)));
        // The event's second revision names a better picture; the broker hands over the next
        // event, then the better picture, and only then the revision it had queued.
        let revision = device.revision(1, 1, Some(&better));
        feed(&mut fleet, "events", &device.event(Some(&other)));
        let early = feed(&mut fleet, "snapshots/0190-0001", &better);
        assert!(alarms(&early).is_empty(), "records are missing: the picture waits, {:?}", early.notes);
        let late = feed(&mut fleet, "events", &revision);
        assert!(alarms(&late).is_empty(), "{:?}", late.notes);
        assert!(late.writes.iter().any(|w| matches!(w, Write::SnapshotConfirmed { id, .. } if id == "0190-0001")));
        assert_eq!(fleet.boxes["box-1"].snapshots_checked, 1);
        // A picture its messages never name: judged when no record is missing any more.
        let missing = device.event(None);
        feed(&mut fleet, "events", &device.event(None));
        let held = feed(&mut fleet, "snapshots/0190-0002", &altered);
        assert!(alarms(&held).is_empty(), "{:?}", held.notes);
        let judged = feed(&mut fleet, "events", &missing);
        assert!(
            alarms(&judged).iter().any(|a| a.contains("snapshot altered") && a.contains("0190-0002")),
            "{:?}",
            judged.notes
        );
        assert!(judged.writes.iter().any(|w| matches!(w, Write::SnapshotWithdrawn { id, .. } if id == "0190-0002")));
        assert!(judged.writes.iter().any(|w| matches!(w, Write::Rejected { problem, .. } if problem == "snapshot")));
        assert!(fleet.boxes["box-1"].gaps.is_empty());
    }

    #[test]
    fn a_picture_is_checked_against_its_event_and_a_box_outside_the_keys_file_is_kept_apart() {
        let mut device = TestBox::new();
        let mut fleet = Fleet::new(Trust::FirstUse);
        device.introduce(&mut fleet);
        let picture = b"\xff\xd8 a picture".to_vec();
        feed(&mut fleet, "events", &device.event(Some(&picture)));
        let decision = feed(&mut fleet, "snapshots/0190-0001", &picture);
        assert!(decision
            .writes
            .iter()
            .any(|w| matches!(w, Write::Snapshot { checked, .. } if checked == "matches its event")));
        // Sent again (the box restarted before the broker's acknowledgement): the same picture, no alarm.
        let again = feed(&mut fleet, "snapshots/0190-0001", &picture);
        assert!(alarms(&again).is_empty(), "{:?}", again.notes);
        feed(&mut fleet, "events", &device.event(Some(&picture)));
        let decision = feed(&mut fleet, "snapshots/0190-0002", b"\xff\xd8 another picture");
        assert!(alarms(&decision).iter().any(|a| a.contains("0190-0002")), "{:?}", decision.notes);

        let mut keys = BTreeMap::new();
        keys.insert("box-2".to_string(), device.public.clone());
        let mut strict = Fleet::new(Trust::Keys(keys));
        let first = strict.receive("box-1", "status", &device.status(), "t");
        let second = strict.receive("box-1", "events", &device.event(None), "t");
        assert_eq!(alarms(&first).len() + alarms(&second).len(), 1, "said once");
        assert!(second.writes.iter().all(|w| matches!(w, Write::Rejected { .. })));
    }
}
