//! The platform's check of captured messages on this machine (`edge-agent verify --messages`):
//! reads the snapshots received (`--snapshots DIR`: the JPEGs of `snapshots/{event_id}`, under any
//! name) and hands them with the messages to `wire::messages`, which checks both.

use std::collections::HashSet;
use std::path::Path;

use crate::wire::chain::sha256_hex;
use crate::wire::messages::MessagesReport;

/// Checks `text` (the captured messages) against `public_key` (hex), and the snapshots in
/// `snapshots` when given: each event's `snapshot_sha256` must be among them.
pub fn verify_messages(text: &str, snapshots: Option<&Path>, public_key: &str) -> Result<MessagesReport, String> {
    let snapshot_hashes = match snapshots {
        Some(dir) => Some(hash_folder(dir)?),
        None => None,
    };
    crate::wire::messages::verify_messages(text, snapshot_hashes.as_ref(), public_key)
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
    use crate::evidence::chain::Chain;
    use crate::evidence::signing::DeviceKey;
    use crate::wire::verify::Gap;
    use crate::wire::RecordContent;

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

        // Two swapped on the way (a broker's queue after a reconnect): the late one fills its place.
        let mut swapped = lines.clone();
        swapped.swap(2, 3);
        let report = verify_messages(&swapped.join("\n"), None, &key).unwrap();
        assert!(report.is_sound(), "{report:?}");
        assert_eq!((report.late, report.event_messages, report.last_seq), (1, 3, Some(4)));
        // One from before where the capture starts cannot be placed.
        let mut rotated = lines.clone();
        rotated.rotate_left(1);
        assert_eq!(verify_messages(&rotated.join("\n"), None, &key).unwrap().problem.unwrap().kind, "reordered");

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
