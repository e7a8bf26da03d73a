//! Evidence the platform checks by itself: the real agent reports through a real mosquitto, the
//! test captures what a platform would (messages one a line as `mosquitto_sub -v` prints them, the
//! snapshot JPEGs as files), and `edge-agent verify --messages` checks the capture with nothing but
//! the device's public key. An untouched capture verifies, and so do two messages swapped on the
//! way (late, not a problem); a byte changed in a message or in a snapshot, a message dropped, one
//! from before the capture's start, the tail cut, and a chain re-signed with another key are each
//! caught and named.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use edge_agent_tests::*;
use serde_json::Value;

const DEVICE: &str = "proof-box";

struct Capture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// `topic payload` lines of the JSON messages, in arrival order.
    lines: Vec<String>,
    snapshots: PathBuf,
    public_key: String,
}

/// Runs the agent until it has reported at least `events` event messages, stops it cleanly (the
/// retained `stopped` status carries the final chain head) and keeps what the broker delivered.
fn capture(events: usize) -> Option<Capture> {
    let broker = Mosquitto::start()?;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let frames = coming_and_going_folder(&root, "gate", 4);
    let cameras = [ReplayCamera { id: "gate", frames: &frames, fps: 4.0, looping: true }];
    let mqtt = format!("url = \"{}\"\ntelemetry_interval_secs = 1", broker.url());
    let (config, _) = write_agent_config(&root, DEVICE, &mqtt, &cameras, EVERY_ARRIVAL_IS_AN_EVENT);
    let subscriber = Subscriber::connect(broker.port, &format!("edge/{DEVICE}/#"));
    let mut agent = Agent::start(&config, &root.join("agent.log"));
    let mut received = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while received.iter().filter(|m: &&Received| m.topic.ends_with("/events")).count() < events {
        assert!(std::time::Instant::now() < deadline, "too few events; log:\n{}", agent.log_text());
        received.extend(subscriber.collect_for(Duration::from_millis(300)));
    }
    assert_eq!(agent.terminate(Duration::from_secs(20)), Some(0), "clean stop");
    received.extend(subscriber.collect_for(Duration::from_secs(2)));
    let snapshots = root.join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    let mut lines = Vec::new();
    for (i, message) in received.iter().enumerate() {
        if message.topic.contains("/snapshots/") {
            std::fs::write(snapshots.join(format!("{i:05}.jpg")), &message.payload).unwrap();
        } else if serde_json::from_slice::<Value>(&message.payload).is_ok() {
            lines.push(format!("{} {}", message.topic, String::from_utf8_lossy(&message.payload)));
        }
    }
    // The platform enrols the key the box shows (status, page, `check`); here from its key file.
    let public_key = std::fs::read_to_string(root.join("state/keys/device.pub"))
        .or_else(|_| std::fs::read_to_string(root.join("state/device.pub")))
        .expect("the device's public key file")
        .trim()
        .to_string();
    Some(Capture { _dir: dir, root, lines, snapshots, public_key })
}

fn verify(capture: &Capture, lines: &[String], snapshots: Option<&Path>, key: &str) -> Output {
    let file = capture.root.join(format!("messages-{}.txt", lines.len()));
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut command = std::process::Command::new(agent_binary());
    command.args(["verify", "--messages"]).arg(&file).args(["--public-key", key]);
    if let Some(dir) = snapshots {
        command.arg("--snapshots").arg(dir);
    }
    command.output().expect("run edge-agent verify")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn refused(output: &Output, expected: &[&str]) {
    let said = text(output);
    assert!(!output.status.success(), "accepted:\n{said}");
    for word in expected {
        assert!(said.contains(word), "expected {word:?} in:\n{said}");
    }
}

/// Index of the n-th line on `topic_end`.
fn nth(lines: &[String], topic_end: &str, n: usize) -> usize {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.split(' ').next().is_some_and(|t| t.ends_with(topic_end)))
        .nth(n)
        .unwrap()
        .0
}

fn seq_of(line: &str) -> u64 {
    let (_, payload) = line.split_once(' ').unwrap();
    let value: Value = serde_json::from_str(payload).unwrap();
    value.get("chain").unwrap_or(&value)["seq"].as_u64().unwrap()
}

#[test]
fn the_platform_verifies_captured_messages_and_names_every_kind_of_tampering() {
    let Some(capture) = capture(6) else {
        return;
    };
    let lines = &capture.lines;
    let key = &capture.public_key;
    let status = lines.iter().rev().find(|l| l.contains("/status ")).expect("a status");
    assert!(status.contains(key.as_str()), "the retained status names the device key: {status}");
    assert!(lines.iter().any(|l| l.contains("/chain ")), "non-event records (the genesis) go out on `chain`");

    // Untouched: verifies, snapshots included.
    let output = verify(&capture, lines, Some(&capture.snapshots), key);
    assert!(output.status.success(), "an untouched capture fails:\n{}", text(&output));
    assert!(text(&output).contains("OK"), "{}", text(&output));

    // A byte changed in a message: the label of the second event.
    let mut changed = lines.clone();
    let second = nth(lines, "/events", 1);
    changed[second] = changed[second].replacen("\"label\":\"", "\"label\":\"X", 1);
    refused(
        &verify(&capture, &changed, None, key),
        &["altered", &format!("record {}", seq_of(&lines[second])), "label"],
    );

    // A byte changed in a snapshot.
    // One whose bytes no other has: a replayed frame gives the same picture at each arrival.
    let pictures: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&capture.snapshots)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .map(|path| (path.clone(), std::fs::read(&path).unwrap()))
        .collect();
    let first_snapshot = pictures
        .iter()
        .find(|(_, bytes)| pictures.iter().filter(|(_, other)| other == bytes).count() == 1)
        .map(|(path, _)| path.clone())
        .expect("a picture sent once");
    let original = std::fs::read(&first_snapshot).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    std::fs::write(&first_snapshot, &damaged).unwrap();
    refused(&verify(&capture, lines, Some(&capture.snapshots), key), &["snapshot", "missing or was changed"]);
    std::fs::write(&first_snapshot, &original).unwrap();

    // A message dropped: the gap is named, and it was not pruned by the box.
    let mut dropped = lines.clone();
    let third = nth(lines, "/events", 2);
    let lost = seq_of(&lines[third]);
    dropped.remove(third);
    refused(&verify(&capture, &dropped, None, key), &[&format!("records {lost} to {lost}"), "NOT recorded as pruned"]);

    // Two swapped on the way (what a broker's queue does after a reconnect): each fills its place late.
    let mut swapped = lines.clone();
    swapped.swap(nth(lines, "/events", 1), nth(lines, "/events", 3));
    let output = verify(&capture, &swapped, None, key);
    assert!(output.status.success(), "two swapped records fail:\n{}", text(&output));
    assert!(text(&output).contains("2 late"), "{}", text(&output));

    // The chain's first record moved after the others: before where the capture starts, no place for it.
    let mut reordered = lines.clone();
    let genesis = reordered.remove(nth(lines, "/chain", 0));
    reordered.push(genesis);
    refused(&verify(&capture, &reordered, None, key), &["reordered", "record 1 arrives after"]);

    // The tail cut: the last two event messages gone, the final `stopped` status kept.
    let mut cut = lines.clone();
    for _ in 0..2 {
        let last = cut.iter().rposition(|l| l.contains("/events ")).unwrap();
        cut.remove(last);
    }
    refused(&verify(&capture, &cut, None, key), &["truncated", "missing at the end"]);

    // The whole chain re-signed with another key, consistently: the enrolled key catches it.
    let thief = PlatformKey::from_seed(77);
    let resigned: Vec<String> = lines.iter().map(|l| resign(l, &thief)).collect();
    refused(&verify(&capture, &resigned, None, key), &["forged"]);
}

/// The line with its chain record's signature replaced by `key`'s signature of the same bytes.
fn resign(line: &str, key: &PlatformKey) -> String {
    let Some((topic, payload)) = line.split_once(' ') else { return line.to_string() };
    let Ok(mut value) = serde_json::from_str::<Value>(payload) else { return line.to_string() };
    let proof = if value.get("chain").is_some_and(Value::is_object) { &mut value["chain"] } else { &mut value };
    let Some(record) = proof.get("record").and_then(Value::as_str).map(String::from) else {
        return line.to_string();
    };
    let signature = key.sign_bytes(record.as_bytes());
    proof["signature"] = Value::from(hex::encode(signature));
    format!("{topic} {value}")
}
