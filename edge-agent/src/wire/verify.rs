//! The one check of a device's chain, record by record: each record's hash, its signature under the
//! device key (following key rotations), its link to the record before, and which missing records
//! retention says it deleted. Fed whole by the chain files (`evidence::chain::verify`) or the
//! captured messages ([`super::messages`]), or one record at a time by a live consumer.
//!
//! Messages may come out of order: a broker delivers what it queued for a returning subscriber
//! after newer messages (Debian's mosquitto 2.0 does). So records captured from anywhere may fill
//! a gap late, when their hash, signature and links to both neighbours hold; a chain's files may not.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::chain::{covers, sha256_hex, ChainProof, RecordBody, RecordContent, NO_PREVIOUS};
use crate::base::ed25519;

/// A record as it arrives: the exact bytes that were hashed and signed (the body as JSON text), with
/// the sha256 and the hex signature it travels with.
#[derive(Debug, Clone, Copy)]
pub struct SignedRecord<'a> {
    pub body: &'a str,
    pub sha256: &'a str,
    pub signature: &'a str,
}

impl<'a> From<&'a ChainProof> for SignedRecord<'a> {
    fn from(proof: &'a ChainProof) -> Self {
        Self { body: &proof.record, sha256: &proof.sha256, signature: &proof.signature }
    }
}

/// What one record is to the chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It links to the record before (or starts the sequence).
    Linked,
    /// It links on after records `first_seq..=last_seq` the sequence does not hold (for a whole
    /// chain, also the records before its first); [`ChainVerifier::gaps`] says which retention
    /// deleted.
    AfterGap { first_seq: u64, last_seq: u64 },
    /// It arrived late and fills a place in the gap `first_seq..=last_seq` (as it was before this
    /// record): its hash and signature hold, and it links to the records on both sides that are
    /// here. [`split_gap`] says what is still missing.
    Late { first_seq: u64, last_seq: u64 },
    /// The last record again, or a late one again (MQTT delivers at least once).
    Duplicate,
    /// It is not part of the chain; the verifier goes on from the last record that was.
    Broken(Break),
}

/// Why a record is not part of the chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Break {
    /// The body's sha256 is not the one it travels with.
    Altered { actual: String, stated: String },
    /// The body is not a chain record.
    Unreadable(String),
    /// The first record of a whole chain is neither its genesis nor a segment start.
    NoKeyRecord,
    /// The first record of a whole chain names another key than the expected one.
    WrongKey { named: String, expected: String },
    /// The signature does not hold under the key that signs this record.
    Forged(String),
    /// The sequence goes back to or before record `after`.
    Reordered { after: u64 },
    /// Its `prev_sha256` is not the hash of the record before (`previous`; None: the chain's start).
    Unlinked { previous: Option<u64>, prev_sha256: String, expected: String },
    /// A late record that is not the one the record after it (`next`) links to.
    NotLinkedFrom { next: u64, linked: String, actual: String },
}

/// A record checked.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Its sequence number, when its body reads (also when it is broken).
    pub seq: Option<u64>,
    /// The record, when its hash and signature hold and it reads: also when it is out of order.
    pub record: Option<RecordBody>,
    pub outcome: Outcome,
}

/// Records the sequence does not hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    pub first_seq: u64,
    pub last_seq: u64,
    /// The box's own record that it deleted them by policy (chain retention), if it made one.
    pub pruned_by_policy: Option<String>,
}

/// Late records remembered to tell one sent again (a duplicate) from a different one.
const LATE_REMEMBERED: usize = 4096;

/// Records missing so far, with what their neighbours say about them: a late record must link
/// to both.
#[derive(Debug, Clone)]
struct OpenGap {
    first_seq: u64,
    last_seq: u64,
    /// The hash of record `first_seq - 1`; None at the start of what was captured.
    before_sha256: Option<String>,
    /// The `prev_sha256` of record `last_seq + 1`: the hash record `last_seq` must have.
    after_links_to: String,
    /// The key that signed record `last_seq + 1`, which signed the records missing too (a key
    /// rotation among them would have made that record fail).
    key: String,
}

/// What is still missing of the gap `first_seq..=last_seq` once record `seq` in it has arrived.
pub fn split_gap(first_seq: u64, last_seq: u64, seq: u64) -> Vec<(u64, u64)> {
    let mut pieces = Vec::new();
    if seq > first_seq {
        pieces.push((first_seq, seq - 1));
    }
    if seq < last_seq {
        pieces.push((seq + 1, last_seq));
    }
    pieces
}

/// Where the records start.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    /// A whole chain (the files on the box): the first record names the key, and records before it
    /// must have been deleted by retention.
    Chain,
    /// Anywhere (messages captured from some point on), under a key known beforehand.
    Anywhere,
}

/// The state of one device's chain as its records arrive, oldest first.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    start: Start,
    /// The key the chain starts with: expected, or named by its first record.
    chain_key: Option<String>,
    /// The key a rotation handed over to, which signs the records after it.
    rotated_to: Option<String>,
    /// The last record taken into the chain: its sequence number and hash.
    last: Option<(u64, String)>,
    first_seq: Option<u64>,
    gaps: Vec<OpenGap>,
    /// Late records taken in (seq → sha256), to tell one sent again from a different one.
    late: HashMap<u64, String>,
    /// Retention's `chain_pruned` records: (first, last, why).
    pruned_ranges: Vec<(u64, u64, String)>,
    /// Evidence files retention's `pruned` records name.
    pruned_files: HashSet<String>,
}

impl ChainVerifier {
    /// A whole chain from its first record, which must be the genesis or a segment start naming
    /// `expected_key` (hex) when given; without it, the key the first record names is trusted.
    pub fn whole_chain(expected_key: Option<&str>) -> Self {
        Self::new(Start::Chain, expected_key.map(str::to_string))
    }

    /// Records from any point on (messages captured late), signed by `public_key` (hex) as the
    /// platform enrolled it, until a `key_rotated` record signed by it names the next.
    pub fn from_anywhere(public_key: &str) -> Self {
        Self::new(Start::Anywhere, Some(public_key.to_string()))
    }

    fn new(start: Start, chain_key: Option<String>) -> Self {
        Self {
            start,
            chain_key,
            rotated_to: None,
            last: None,
            first_seq: None,
            gaps: Vec::new(),
            late: HashMap::new(),
            pruned_ranges: Vec::new(),
            pruned_files: HashSet::new(),
        }
    }

    /// Checks the next record: its hash, then (the first record of a whole chain naming the key)
    /// its signature, then its place in the sequence. A record that holds is taken into the chain:
    /// its key rotation or retention record applies from then on.
    pub fn push(&mut self, record: SignedRecord<'_>) -> Checked {
        let parsed = serde_json::from_str::<RecordBody>(record.body).map_err(|e| e.to_string());
        let seq = parsed.as_ref().ok().map(|body| body.seq);
        let broken = |why: Break| Checked { seq, record: None, outcome: Outcome::Broken(why) };
        let actual = sha256_hex(record.body.as_bytes());
        if actual != record.sha256 {
            return broken(Break::Altered { actual, stated: record.sha256.to_string() });
        }
        if self.start == Start::Chain && self.last.is_none() {
            // Before its signature: the first record says which key signs the chain.
            let body = match &parsed {
                Ok(body) => body,
                Err(e) => return broken(Break::Unreadable(e.clone())),
            };
            let (RecordContent::Genesis { public_key } | RecordContent::SegmentStarted { public_key }) = &body.content
            else {
                return broken(Break::NoKeyRecord);
            };
            match &self.chain_key {
                Some(expected) if expected.trim() != public_key => {
                    return broken(Break::WrongKey { named: public_key.clone(), expected: expected.trim().to_string() })
                }
                Some(_) => {}
                None => self.chain_key = Some(public_key.clone()),
            }
        }
        // A late record was signed by the key that signed the record after its gap.
        let late_gap = match seq {
            Some(seq) if self.start == Start::Anywhere => {
                self.gaps.iter().position(|g| (g.first_seq..=g.last_seq).contains(&seq))
            }
            _ => None,
        };
        let current_key = self.rotated_to.as_deref().or(self.chain_key.as_deref()).unwrap_or_default().to_string();
        let key = late_gap.map(|at| self.gaps[at].key.clone()).unwrap_or_else(|| current_key.clone());
        if let Err(why) = verify_hex(&key, record.body.as_bytes(), record.signature) {
            return broken(Break::Forged(why));
        }
        let body = match parsed {
            Ok(body) => body,
            Err(e) => return broken(Break::Unreadable(e)),
        };
        let outcome = match late_gap {
            Some(at) => self.fill(at, &body, actual),
            None => self.link(&body, actual, &current_key),
        };
        match outcome {
            Outcome::Linked | Outcome::AfterGap { .. } => self.take_in(&body),
            // Only what retention deleted: a key rotation among missing records cannot be (see OpenGap::key).
            Outcome::Late { .. } if !matches!(body.content, RecordContent::KeyRotated { .. }) => self.take_in(&body),
            _ => {}
        }
        Checked { seq, record: Some(body), outcome }
    }

    /// A late record in the gap at `at`: taken in when it links to its neighbours that are here.
    fn fill(&mut self, at: usize, body: &RecordBody, sha256: String) -> Outcome {
        let gap = self.gaps[at].clone();
        if body.seq == gap.first_seq {
            if let Some(before) = gap.before_sha256.as_ref().filter(|before| **before != body.prev_sha256) {
                return Outcome::Broken(Break::Unlinked {
                    previous: Some(body.seq - 1),
                    prev_sha256: body.prev_sha256.clone(),
                    expected: before.clone(),
                });
            }
        }
        if body.seq == gap.last_seq && sha256 != gap.after_links_to {
            return Outcome::Broken(Break::NotLinkedFrom {
                next: body.seq + 1,
                linked: gap.after_links_to.clone(),
                actual: sha256,
            });
        }
        let mut pieces = Vec::new();
        if body.seq > gap.first_seq {
            pieces.push(OpenGap { last_seq: body.seq - 1, after_links_to: body.prev_sha256.clone(), ..gap.clone() });
        }
        if body.seq < gap.last_seq {
            pieces.push(OpenGap { first_seq: body.seq + 1, before_sha256: Some(sha256.clone()), ..gap.clone() });
        }
        self.gaps.splice(at..=at, pieces);
        self.late.insert(body.seq, sha256);
        if self.late.len() > LATE_REMEMBERED {
            let oldest_kept =
                self.late.keys().copied().max().unwrap_or_default().saturating_sub(LATE_REMEMBERED as u64);
            self.late.retain(|seq, _| *seq >= oldest_kept);
        }
        Outcome::Late { first_seq: gap.first_seq, last_seq: gap.last_seq }
    }

    /// The record's place after the last one; moves the chain on when it holds.
    fn link(&mut self, body: &RecordBody, sha256: String, key: &str) -> Outcome {
        let outcome = match &self.last {
            None if body.seq <= 1 && body.prev_sha256 != NO_PREVIOUS => {
                return Outcome::Broken(Break::Unlinked {
                    previous: None,
                    prev_sha256: body.prev_sha256.clone(),
                    expected: NO_PREVIOUS.into(),
                })
            }
            None if body.seq > 1 && self.start == Start::Chain => {
                Outcome::AfterGap { first_seq: 1, last_seq: body.seq - 1 }
            }
            // Captured from some point on: the first record's link is to one not captured.
            None => Outcome::Linked,
            Some((last_seq, last_sha)) if body.seq == *last_seq && sha256 == *last_sha => return Outcome::Duplicate,
            Some(_) if self.late.get(&body.seq) == Some(&sha256) => return Outcome::Duplicate,
            Some((last_seq, _)) if body.seq <= *last_seq => {
                return Outcome::Broken(Break::Reordered { after: *last_seq })
            }
            Some((last_seq, last_sha)) if body.seq == last_seq + 1 => {
                if body.prev_sha256 != *last_sha {
                    return Outcome::Broken(Break::Unlinked {
                        previous: Some(*last_seq),
                        prev_sha256: body.prev_sha256.clone(),
                        expected: last_sha.clone(),
                    });
                }
                Outcome::Linked
            }
            // Records are missing: this one links to a record not here.
            Some((last_seq, _)) => Outcome::AfterGap { first_seq: last_seq + 1, last_seq: body.seq - 1 },
        };
        if let Outcome::AfterGap { first_seq, last_seq } = outcome {
            let before_sha256 = self.last.as_ref().map(|(_, sha)| sha.clone());
            self.gaps.push(OpenGap {
                first_seq,
                last_seq,
                before_sha256,
                after_links_to: body.prev_sha256.clone(),
                key: key.to_string(),
            });
        }
        self.last = Some((body.seq, sha256));
        self.first_seq.get_or_insert(body.seq);
        outcome
    }

    /// What a record taken into the chain changes: the signing key, what retention deleted.
    fn take_in(&mut self, body: &RecordBody) {
        match &body.content {
            // Signed by the old key: every later record is the new key's.
            RecordContent::KeyRotated { public_key } => self.rotated_to = Some(public_key.clone()),
            RecordContent::ChainPruned { first_seq, last_seq, reason, .. } => {
                self.pruned_ranges.push((*first_seq, *last_seq, format!("{reason} (record {})", body.seq)))
            }
            RecordContent::Pruned { files, .. } => self.pruned_files.extend(files.iter().cloned()),
            _ => {}
        }
    }

    /// The key the chain starts with: the expected one, or the one its first record named.
    pub fn chain_key(&self) -> Option<&str> {
        self.chain_key.as_deref()
    }

    /// The first and last sequence numbers taken into the chain.
    pub fn first_seq(&self) -> Option<u64> {
        self.first_seq
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.last.as_ref().map(|(seq, _)| *seq)
    }

    /// Whether a retention record so far names this evidence file as deleted.
    pub fn is_pruned_file(&self, file: &str) -> bool {
        self.pruned_files.contains(file)
    }

    /// The gaps so far, each with the retention records that explain it, when they cover it all.
    pub fn gaps(&self) -> Vec<Gap> {
        self.gaps
            .iter()
            .map(|&OpenGap { first_seq, last_seq, .. }| {
                let within: Vec<&(u64, u64, String)> = self
                    .pruned_ranges
                    .iter()
                    .filter(|(first, last, _)| *first <= last_seq && first_seq <= *last)
                    .collect();
                let ranges: Vec<(u64, u64)> = within.iter().map(|(first, last, _)| (*first, *last)).collect();
                let pruned_by_policy = covers(&ranges, first_seq, last_seq)
                    .then(|| within.iter().map(|(_, _, why)| why.as_str()).collect::<Vec<_>>().join("; "));
                Gap { first_seq, last_seq, pruned_by_policy }
            })
            .collect()
    }
}

/// Checks a hex signature of `message` against a hex public key.
pub fn verify_hex(public_hex: &str, message: &[u8], signature_hex: &str) -> Result<(), String> {
    let public: [u8; 32] = hex::decode(public_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("public key {public_hex:?} is not 64 hex digits"))?;
    let signature: [u8; 64] = hex::decode(signature_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "signature is not 128 hex digits".to_string())?;
    if ed25519::verify(&public, message, &signature) {
        Ok(())
    } else {
        Err("signature does not match the record and the device's public key".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::ed25519::SigningKey;
    use chrono::Utc;

    /// A device writing its chain as the evidence stage does: each body signed and linked.
    struct Device {
        key: SigningKey,
        next_seq: u64,
        last_sha256: String,
    }

    impl Device {
        fn new(seed: u8) -> Self {
            Self { key: SigningKey::from_seed(&[seed; 32]), next_seq: 1, last_sha256: NO_PREVIOUS.into() }
        }

        fn public(&self) -> String {
            hex::encode(self.key.public_key())
        }

        fn append(&mut self, content: RecordContent) -> ChainProof {
            let body = RecordBody {
                seq: self.next_seq,
                time: Utc::now(),
                device: "box-1".into(),
                prev_sha256: self.last_sha256.clone(),
                content,
            };
            let record = serde_json::to_string(&body).unwrap();
            let sha256 = sha256_hex(record.as_bytes());
            let signature = hex::encode(self.key.sign(record.as_bytes()));
            self.next_seq += 1;
            self.last_sha256 = sha256.clone();
            ChainProof { seq: body.seq, prev_sha256: body.prev_sha256, sha256, signature, record }
        }

        fn event(&mut self, id: &str) -> ChainProof {
            self.append(RecordContent::Event { event: serde_json::json!({ "event_id": id }), evidence: vec![] })
        }
    }

    fn outcome(verifier: &mut ChainVerifier, proof: &ChainProof) -> Outcome {
        verifier.push(SignedRecord::from(proof)).outcome
    }

    #[test]
    fn records_pushed_one_at_a_time_name_a_gap_until_a_retention_record_explains_it() {
        let mut device = Device::new(1);
        let genesis = device.append(RecordContent::Genesis { public_key: device.public() });
        let records: Vec<ChainProof> = (0..4).map(|i| device.event(&format!("e{i}"))).collect();
        let mut live = ChainVerifier::from_anywhere(&device.public());
        assert_eq!(outcome(&mut live, &genesis), Outcome::Linked);
        assert_eq!(outcome(&mut live, &records[0]), Outcome::Linked);
        assert_eq!(outcome(&mut live, &records[0]), Outcome::Duplicate, "MQTT delivers at least once");
        // Records 3 and 4 are missing when 5 comes; 4 comes late, after 5; 3 never.
        assert_eq!(outcome(&mut live, &records[3]), Outcome::AfterGap { first_seq: 3, last_seq: 4 });
        assert_eq!(outcome(&mut live, &records[2]), Outcome::Late { first_seq: 3, last_seq: 4 });
        assert_eq!(outcome(&mut live, &records[2]), Outcome::Duplicate, "a late record again");
        assert_eq!(outcome(&mut live, &records[0]), Outcome::Broken(Break::Reordered { after: 5 }));
        assert_eq!(live.gaps(), vec![Gap { first_seq: 3, last_seq: 3, pruned_by_policy: None }]);
        let pruned = device.append(RecordContent::ChainPruned {
            segments: vec!["0000000001.jsonl".into()],
            first_seq: 1,
            last_seq: 5,
            reason: "max_age_days".into(),
        });
        assert_eq!(outcome(&mut live, &pruned), Outcome::Linked);
        assert_eq!(live.gaps()[0].pruned_by_policy.as_deref(), Some("max_age_days (record 6)"));
        assert_eq!((live.first_seq(), live.last_seq()), (Some(1), Some(6)));
    }

    #[test]
    fn late_records_fill_their_gap_only_when_signed_and_linked_to_both_sides() {
        let mut device = Device::new(5);
        let records: Vec<ChainProof> = (1..=8).map(|i| device.event(&format!("e{i}"))).collect();
        let mut live = ChainVerifier::from_anywhere(&device.public());
        assert_eq!(outcome(&mut live, &records[0]), Outcome::Linked);
        // The broker hands 7 over first, then what it had queued: 2 to 6.
        assert_eq!(outcome(&mut live, &records[6]), Outcome::AfterGap { first_seq: 2, last_seq: 6 });
        // A record 4 made by someone else: signed by another key, or signed right but not the one 5 links to.
        let mut stranger =
            Device { key: SigningKey::from_seed(&[6; 32]), next_seq: 4, last_sha256: records[2].sha256.clone() };
        assert!(matches!(outcome(&mut live, &stranger.event("e4")), Outcome::Broken(Break::Forged(_))));
        assert_eq!(outcome(&mut live, &records[3]), Outcome::Late { first_seq: 2, last_seq: 6 });
        let mut twin =
            Device { key: SigningKey::from_seed(&[5; 32]), next_seq: 2, last_sha256: records[0].sha256.clone() };
        let _two = twin.event("other 2");
        let other_three = twin.event("other 3");
        assert!(
            matches!(outcome(&mut live, &other_three), Outcome::Broken(Break::NotLinkedFrom { next: 4, .. })),
            "signed by the box's key, but record 4 links to another 3"
        );
        let wrong_five = Device { next_seq: 5, last_sha256: "0".repeat(64), ..twin }.event("e5");
        assert!(matches!(outcome(&mut live, &wrong_five), Outcome::Broken(Break::Unlinked { previous: Some(4), .. })));
        for (record, gap) in [(4, (5, 6)), (1, (2, 3)), (2, (3, 3)), (5, (6, 6))] {
            assert_eq!(
                outcome(&mut live, &records[record]),
                Outcome::Late { first_seq: gap.0, last_seq: gap.1 },
                "record {}",
                record + 1
            );
        }
        assert!(live.gaps().is_empty(), "{:?}", live.gaps());
        assert_eq!(outcome(&mut live, &records[7]), Outcome::Linked, "the chain goes on from 7");
        assert_eq!(split_gap(2, 6, 4), vec![(2, 3), (5, 6)]);
        assert_eq!(split_gap(6, 6, 6), vec![]);
        // A whole chain's files are never read late: going back is out of order there.
        let mut files = ChainVerifier::whole_chain(None);
        let mut chain = Device::new(7);
        let genesis = chain.append(RecordContent::Genesis { public_key: chain.public() });
        let (one, two) = (chain.event("a"), chain.event("b"));
        assert_eq!(outcome(&mut files, &genesis), Outcome::Linked);
        assert_eq!(outcome(&mut files, &two), Outcome::AfterGap { first_seq: 2, last_seq: 2 });
        assert_eq!(outcome(&mut files, &one), Outcome::Broken(Break::Reordered { after: 3 }));
    }

    #[test]
    fn a_rotated_key_signs_what_follows_and_a_record_signed_by_another_is_forged() {
        let mut device = Device::new(1);
        let first_key = device.public();
        let genesis = device.append(RecordContent::Genesis { public_key: first_key.clone() });
        let next = SigningKey::from_seed(&[2; 32]);
        let rotation = device.append(RecordContent::KeyRotated { public_key: hex::encode(next.public_key()) });
        device.key = next;
        let after = device.event("e1");
        let mut verifier = ChainVerifier::whole_chain(Some(&first_key));
        for proof in [&genesis, &rotation, &after] {
            assert_eq!(outcome(&mut verifier, proof), Outcome::Linked, "record {}", proof.seq);
        }
        // The old key can no longer sign: a record it signs is forged.
        let mut thief = Device { key: SigningKey::from_seed(&[1; 32]), ..device };
        let forged = thief.event("e2");
        assert!(matches!(outcome(&mut verifier, &forged), Outcome::Broken(Break::Forged(_))));
        let mut altered = thief.event("e3");
        altered.record = altered.record.replace("e3", "e4");
        assert!(matches!(outcome(&mut verifier, &altered), Outcome::Broken(Break::Altered { .. })));
    }

    #[test]
    fn a_whole_chain_names_its_key_first_and_records_before_it_must_have_been_pruned() {
        let mut device = Device::new(3);
        let public = device.public();
        let genesis = device.append(RecordContent::Genesis { public_key: public.clone() });
        let stranger = hex::encode(SigningKey::from_seed(&[4; 32]).public_key());
        let mut wrong = ChainVerifier::whole_chain(Some(&stranger));
        assert_eq!(
            outcome(&mut wrong, &genesis),
            Outcome::Broken(Break::WrongKey { named: public.clone(), expected: stranger })
        );
        let event = device.event("e1");
        let mut headless = ChainVerifier::whole_chain(None);
        assert_eq!(outcome(&mut headless, &event), Outcome::Broken(Break::NoKeyRecord));
        // Retention deleted records 1 and 2: the chain goes on from a segment start.
        let segment = device.append(RecordContent::SegmentStarted { public_key: public.clone() });
        let pruned = device.append(RecordContent::ChainPruned {
            segments: vec!["0000000001.jsonl".into()],
            first_seq: 1,
            last_seq: 2,
            reason: "max_age_days".into(),
        });
        let mut verifier = ChainVerifier::whole_chain(None);
        assert_eq!(outcome(&mut verifier, &segment), Outcome::AfterGap { first_seq: 1, last_seq: 2 });
        assert_eq!(verifier.chain_key(), Some(public.as_str()), "the first record's key is trusted");
        assert_eq!(verifier.gaps()[0].pruned_by_policy, None);
        assert_eq!(outcome(&mut verifier, &pruned), Outcome::Linked);
        assert!(verifier.gaps()[0].pruned_by_policy.is_some());
    }
}
