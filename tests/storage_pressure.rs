//! Storage under pressure, end to end with the real binary and a real mosquitto: the state folder on
//! a small tmpfs (CI runs as root) that something else fills while the broker is away. The agent
//! holds what the disk refuses, stays up, and once space is freed and the broker is back every event
//! it reported arrives, without a restart. Also: a crash loop (SIGKILL at random moments while
//! events and pruning happen) leaves an outbox that opens, a chain that verifies, and nothing lost.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_agent_tests::*;
use serde_json::Value;

const DEVICE: &str = "sd-box";

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            missing_real_part("root (to mount a small tmpfs that fills)", "run as root, as CI does");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sd");
        std::fs::create_dir(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(mounted.success(), "cannot mount a tmpfs at {}", path.display());
        Some(Self { _dir: dir, path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system holding `dir` with a file until the disk refuses more.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    filler
}

fn status(port: u16) -> Value {
    agent_status(port).unwrap_or(Value::Null)
}

/// (event id, revision) of every event message received.
fn received_events(messages: &[Received]) -> BTreeSet<(String, String)> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/events"))
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .map(|e| (e["event_id"].as_str().unwrap_or_default().to_string(), e["revision"].to_string()))
        .collect()
}

/// (event id, revision) of every event the agent logged as queued.
fn queued(log: &str) -> BTreeSet<(String, String)> {
    plain_log(log)
        .lines()
        .filter(|line| line.contains("edge_agent::delivery") && line.contains(" event "))
        .filter_map(|line| {
            let field = |name: &str| {
                let start = line.find(&format!("{name}="))? + name.len() + 1;
                Some(line[start..].split_whitespace().next()?.to_string())
            };
            Some((field("event_id")?, field("revision")?))
        })
        .collect()
}

#[test]
fn a_disk_that_fills_while_the_broker_is_away_loses_no_event_and_needs_no_restart() {
    let Some(sd) = Tmpfs::mount("24m") else {
        return;
    };
    let Some(mut broker) = Mosquitto::start_with(BrokerOptions { persistence: true, ..Default::default() }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let frames = coming_and_going_folder(dir.path(), "gate", 4);
    let cameras = [ReplayCamera { id: "gate", frames: &frames, fps: 4.0, looping: true }];
    let extra = format!(
        "{EVERY_ARRIVAL_IS_AN_EVENT}\n[outbox]\nreserve_mb = 1\n\n[evidence]\nmin_free_mb = 1\nmax_disk_mb = 4\n"
    );
    let mqtt = format!("url = \"{}\"", broker.url());
    let (config, web_port) = write_agent_config(dir.path(), DEVICE, &mqtt, &cameras, &extra);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("state_dir = \"state\"", &format!("state_dir = {:?}", sd.path.display().to_string()));
    std::fs::write(&config, text).unwrap();
    // The platform's subscriber, with a session the broker keeps while it is away.
    let subscriber = Subscriber::connect_persistent(broker.port, &format!("edge/{DEVICE}/events"), "sd-platform");
    std::thread::sleep(Duration::from_millis(500));
    broker.stop_gracefully();

    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));
    let first = eventually(Duration::from_secs(60), || (!queued(&agent.log_text()).is_empty()).then_some(()));
    assert!(first.is_some(), "no event queued at start:\n{}", agent.log_text());

    // Something else fills the SD card.
    let filler = fill(&sd.path);
    // The disk refuses the outbox: it reopens the file and, while writes still fail, holds what it
    // cannot store (retention freeing pictures may let the next try through at once).
    let pressed = eventually(Duration::from_secs(60), || {
        let held_now = status(web_port)["held"]["messages"].as_u64().unwrap_or(0) > 0;
        let log = agent.log_text();
        (held_now || log.contains("messages are held in memory") || log.contains("outbox reopened after an I/O error"))
            .then_some(())
    });
    assert!(pressed.is_some(), "the full disk never refused the outbox:\n{}", agent.log_text());
    std::thread::sleep(Duration::from_secs(5));
    assert!(agent.is_running(), "the agent died on a full disk:\n{}", agent.log_text());

    // Space freed: held messages go in without a restart.
    std::fs::remove_file(&filler).unwrap();
    let drained = eventually(Duration::from_secs(60), || {
        let s = status(web_port);
        (s["held"]["messages"].as_u64()? == 0).then_some(())
    });
    assert!(drained.is_some(), "held messages never went into the outbox:\n{}", agent.log_text());
    assert_eq!(status(web_port)["held"]["events_lost"], 0, "events were let go");

    // The broker back: everything the agent reported arrives.
    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut received = Vec::new();
    let missing = loop {
        received.extend(subscriber.collect_for(Duration::from_millis(500)));
        let expected = queued(&agent.log_text());
        let got = received_events(&received);
        let missing: Vec<_> = expected.difference(&got).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
    };
    assert!(missing.is_empty(), "{} events never arrived, e.g. {:?}", missing.len(), &missing[..missing.len().min(3)]);
    assert!(agent.is_running());
    let log = agent.log_text();
    assert!(
        log.contains("messages are held in memory") || log.contains("outbox reopened after an I/O error"),
        "the log says what happened"
    );
}

#[test]
fn dozens_of_kills_at_random_moments_leave_an_outbox_that_opens_a_chain_that_verifies_and_nothing_lost() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let frames = coming_and_going_folder(dir.path(), "gate", 4);
    let cameras = [ReplayCamera { id: "gate", frames: &frames, fps: 8.0, looping: true }];
    // A tiny evidence quota: pruning runs all the time while the agent is killed.
    let extra = format!("{EVERY_ARRIVAL_IS_AN_EVENT}\n[evidence]\nmax_disk_mb = 1\n");
    let mqtt = format!("url = \"{}\"", broker.url());
    let (config, web_port) = write_agent_config(dir.path(), DEVICE, &mqtt, &cameras, &extra);
    let subscriber = Subscriber::connect(broker.port, &format!("edge/{DEVICE}/events"));
    let log = dir.path().join("agent.log");
    let mut agent = Agent::start(&config, &log);
    let mut received = Vec::new();
    // Pseudo-random kill moments from the clock: 0.3 to 1.9 s after each start.
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    let kills = 30;
    for round in 0..kills {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(300 + (seed >> 33) % 1600);
        received.extend(subscriber.collect_for(wait));
        agent.kill_hard();
        // After each kill the state opens again: the chain verifies on disk.
        let verified = std::process::Command::new(agent_binary())
            .args(["verify", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            verified.status.success(),
            "round {round}: the chain does not verify after a kill:\n{}{}",
            String::from_utf8_lossy(&verified.stdout),
            String::from_utf8_lossy(&verified.stderr)
        );
        agent.restart(&config);
    }
    // Let it run and drain, then compare what was reported with what arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        received.extend(subscriber.collect_for(Duration::from_millis(500)));
        let expected = queued(&std::fs::read_to_string(&log).unwrap_or_default());
        let missing: Vec<_> = expected.difference(&received_events(&received)).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
    };
    assert!(
        missing.is_empty(),
        "{} events logged as queued never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert!(agent.is_running());
    let text = plain_log(&std::fs::read_to_string(&log).unwrap());
    assert!(!text.contains("corrupted beyond repair"), "the outbox was lost to a kill");
    // The history survived the kills: the page finds events of the first rounds.
    let first_rounds: Vec<String> = queued(&text).into_iter().map(|(id, _)| id).take(5).collect();
    let found = eventually(Duration::from_secs(30), || {
        first_rounds.iter().find(|id| {
            http_get(&format!("http://127.0.0.1:{web_port}/api/v1/events/{id}")).is_ok_and(|(status, _)| status == 200)
        })
    });
    assert!(found.is_some(), "the page finds none of the first rounds' events after {kills} kills: {first_rounds:?}");
}

/// Event ids the page lists (`/api/v1/events`).
fn listed_events(web_port: u16) -> BTreeSet<String> {
    let Ok((200, body)) = http_get(&format!("http://127.0.0.1:{web_port}/api/v1/events?limit=200")) else {
        return BTreeSet::new();
    };
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    json["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["event"]["event_id"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[test]
fn the_events_on_the_page_are_still_there_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let frames = coming_and_going_folder(dir.path(), "gate", 2);
    let cameras = [ReplayCamera { id: "gate", frames: &frames, fps: 4.0, looping: true }];
    let (config, web_port) = write_agent_config(dir.path(), DEVICE, "", &cameras, EVERY_ARRIVAL_IS_AN_EVENT);
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));
    let before = eventually(Duration::from_secs(60), || {
        let listed = listed_events(web_port);
        (listed.len() >= 3).then_some(listed)
    })
    .expect("events on the page");
    assert_eq!(agent.terminate(Duration::from_secs(20)), Some(0));
    // The next start, with the camera off: whatever the page lists comes from the history on disk.
    let text =
        std::fs::read_to_string(&config).unwrap().replace("looping = true }\n", "looping = true }\nenabled = false\n");
    std::fs::write(&config, text).unwrap();
    let _agent = Agent::start(&config, &dir.path().join("agent-2.log"));
    let after = eventually(Duration::from_secs(60), || {
        let listed = listed_events(web_port);
        (!listed.is_empty()).then_some(listed)
    })
    .expect("the page lists events after the restart");
    let kept: Vec<_> = before.intersection(&after).collect();
    assert_eq!(kept.len(), before.len(), "events of the first run missing after the restart: {before:?} vs {after:?}");
    let (_, page) = http_get(&format!("http://127.0.0.1:{web_port}/events")).unwrap();
    let first = before.iter().next().unwrap();
    assert!(page.contains(first.as_str()), "the events page lists an event of the first run");
}
