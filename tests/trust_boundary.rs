//! The trust boundary tried as an attacker would, against the real binary and a real mosquitto:
//! anyone on the broker, a stolen box's credentials, replayed and stale commands, oversized
//! payloads, commands that would run programs or switch off privacy, changes that would stop the
//! next start, a config file broken by hand, and a flood of login guesses. Each attempt is refused
//! with an error naming what was wrong, nothing changes, and the agent stays up. See docs/SECURITY.md.

mod web_support;

use std::path::PathBuf;
use std::time::Duration;

use edge_agent_tests::*;
use serde_json::{json, Value};

const DEVICE: &str = "trust-box";

struct Site {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    web_port: u16,
    platform: PlatformKey,
}

/// A looping camera (events all the time), a broker, and the platform's key in `[commands]`.
fn site(broker: &Mosquitto, extra: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let frames = frames_folder(&root, "yard", "dog.jpg", 1);
    frames_folder(&root, "yard", "coffee.png", 1);
    let platform = PlatformKey::from_seed(11);
    let cameras = [ReplayCamera { id: "yard", frames: &frames, fps: 2.0, looping: true }];
    let extra = format!(
        "[rules.object]\nmin_score = 0.3\nmin_duration_secs = 0.0\n\n\
         [tracking]\nmax_lost_secs = 0.3\nstationary_memory_secs = 0.0\n\n{}\n{extra}",
        platform.config_section()
    );
    let mqtt = format!("url = \"{}\"", broker.url());
    let (config, web_port) = write_agent_config(&root, DEVICE, &mqtt, &cameras, &extra);
    Site { _dir: dir, root, config, web_port, platform }
}

/// Publishes `payload` on `cmd/{name}` and waits for the ack that `matches`.
fn ack_for(subscriber: &Subscriber, name: &str, payload: Vec<u8>, matches: impl Fn(&Value) -> bool) -> Value {
    subscriber.publish(&format!("edge/{DEVICE}/cmd/{name}"), payload);
    subscriber
        .wait_for(&format!("/cmd/{name}/ack"), Duration::from_secs(30), matches)
        .unwrap_or_else(|| panic!("no ack on cmd/{name}"))
}

/// Sends the command signed by the site's platform key and returns its ack.
fn signed(site: &Site, subscriber: &Subscriber, name: &str, command: Value) -> Value {
    let id = command["correlation_id"].clone();
    ack_for(subscriber, name, site.platform.envelope(DEVICE, name, &command), |ack| ack["correlation_id"] == id)
}

fn refused_with(ack: &Value, code: &str) {
    assert_eq!(ack["ok"], false, "accepted: {ack}");
    assert_eq!(ack["error"]["code"], code, "{ack}");
    assert!(ack["error"]["message"].as_str().unwrap_or_default().len() > 10, "the error says too little: {ack}");
}

/// Events still flow after `after`: the agent is up and judging.
fn events_still_flow(subscriber: &Subscriber, after: chrono::DateTime<chrono::Utc>) {
    let fresh = subscriber.wait_for("/events", Duration::from_secs(30), |event| {
        event["time"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).is_some_and(|t| t > after)
    });
    assert!(fresh.is_some(), "events stopped");
}

#[test]
fn nobody_but_the_platform_can_command_the_box_and_nothing_remote_runs_a_program_or_unblurs_people() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let site = site(&broker, "");
    let subscriber = Subscriber::connect(broker.port, &format!("edge/{DEVICE}/#"));
    let agent = Agent::start(&site.config, &site.root.join("agent.log"));
    assert!(subscriber.wait_for("/events", Duration::from_secs(30), |_| true).is_some(), "no event at start");
    let config_before = std::fs::read(&site.config).unwrap();
    let marker = site.root.join("pwned");
    let shell = json!({ "command": ["/bin/sh", "-c", format!("id > {}", marker.display())] });

    // 1. Anyone on the broker: a plain, unsigned `set` that would run a shell at the next event.
    let unsigned = json!({ "correlation_id": "a1", "values": { "rules.object.action": shell } });
    let ack = ack_for(&subscriber, "set", unsigned.to_string().into_bytes(), |a| a["correlation_id"] == "a1");
    refused_with(&ack, "unsigned_refused");
    // Unsigned privacy switch-off too.
    let unsigned = json!({ "correlation_id": "a2", "values": { "privacy.blur_people": false } });
    let ack = ack_for(&subscriber, "set", unsigned.to_string().into_bytes(), |a| a["correlation_id"] == "a2");
    refused_with(&ack, "unsigned_refused");

    // 2. Even the platform's own signature cannot make a remote change run a program or weaken privacy.
    for (id, key, value) in [
        ("p1", "rules.object.action", shell.clone()),
        ("p2", "rules.litter.action.command", json!(["/bin/sh", "-c", "reboot"])),
        ("p3", "privacy.blur_people", json!(false)),
        ("p4", "privacy.person_labels", json!([])),
        ("p5", "scenes.yard.blur_people", json!(false)),
    ] {
        let ack = signed(&site, &subscriber, "set", json!({ "correlation_id": id, "values": { key: value } }));
        refused_with(&ack, "local_only");
        assert!(ack["error"]["message"].as_str().unwrap().contains(key), "{ack}");
    }

    // 3. A stolen box's credentials or another key: signatures that do not hold.
    let other_platform = PlatformKey::from_seed(99);
    let command = json!({ "correlation_id": "k1", "values": { "rules.object.min_score": 0.9 } });
    let ack = ack_for(&subscriber, "set", other_platform.envelope(DEVICE, "set", &command), |a| a["error"].is_object());
    refused_with(&ack, "signature_invalid");
    let for_another_box = site.platform.envelope("other-box", "set", &command);
    let ack = ack_for(&subscriber, "set", for_another_box, |a| a["error"]["code"] == "signature_invalid");
    refused_with(&ack, "signature_invalid");
    let reload_signature_on_set = site.platform.envelope(DEVICE, "reload", &command);
    let ack = ack_for(&subscriber, "set", reload_signature_on_set, |a| a["error"]["code"] == "signature_invalid");
    refused_with(&ack, "signature_invalid");

    // 4. Replay and stale commands.
    let good = json!({ "correlation_id": "r1", "values": { "rules.object.min_score": 0.31 } });
    let envelope = site.platform.envelope(DEVICE, "set", &good);
    let ack = ack_for(&subscriber, "set", envelope.clone(), |a| a["correlation_id"] == "r1");
    assert_eq!(ack["ok"], true, "a signed, fresh set is applied: {ack}");
    let ack = ack_for(&subscriber, "set", envelope, |a| a["correlation_id"] == "r1" && a["ok"] == false);
    refused_with(&ack, "replayed");
    let stale = json!({ "correlation_id": "t1", "values": { "rules.object.min_score": 0.32 } });
    let old = chrono::Utc::now() - chrono::Duration::minutes(10);
    let ack =
        ack_for(&subscriber, "set", site.platform.envelope_at(DEVICE, "set", &stale, old, "stale-nonce-1"), |a| {
            a["correlation_id"] == "t1"
        });
    refused_with(&ack, "expired");

    // 5. Malformed and oversized payloads.
    let huge = vec![b'x'; 3 * 1024 * 1024];
    let ack = ack_for(&subscriber, "set", huge, |a| a["error"]["code"] == "too_large");
    refused_with(&ack, "too_large");
    let ack = ack_for(&subscriber, "set", br#"{"signed": "!!", "signature": "00"}"#.to_vec(), |a| {
        a["error"]["code"] == "malformed_envelope"
    });
    refused_with(&ack, "malformed_envelope");

    // 6. A model from any URL without a signature over the file: refused by default.
    let model = json!({ "correlation_id": "m1", "name": "nanodet", "url": "http://127.0.0.1:9/evil.onnx", "sha256": "ab".repeat(32) });
    let ack = signed(&site, &subscriber, "model", model);
    refused_with(&ack, "signature_required");

    // 7. A change that would stop the next start is refused, not written.
    let ack = signed(
        &site,
        &subscriber,
        "set",
        json!({ "correlation_id": "w1", "values": { "rules.road_debris.model": "no-such-model" } }),
    );
    refused_with(&ack, "would_not_start");
    assert!(ack["error"]["message"].as_str().unwrap().contains("rules.road_debris.model"), "{ack}");

    // Nothing changed but the one signed threshold; no program ran; the agent is up.
    let text = std::fs::read_to_string(&site.config).unwrap();
    let expected = String::from_utf8(config_before).unwrap().replace("min_score = 0.3\n", "min_score = 0.31\n");
    assert_eq!(text, expected, "the config file changed beyond the one signed set");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!marker.exists(), "a remote command ran a program");
    events_still_flow(&subscriber, chrono::Utc::now());
    let status = agent_status(site.web_port).expect("the agent answers");
    assert_eq!(status["control"]["commands"], "signed", "{status}");
    assert!(log_contains(&agent.log, "unsigned_refused") || log_contains(&agent.log, "command refused"));
    drop(agent);

    // 8. The nonce book survives a restart: the replayed envelope stays refused.
    let agent = Agent::start(&site.config, &site.root.join("agent-2.log"));
    let replay = site.platform.envelope_at(DEVICE, "set", &good, chrono::Utc::now(), "fixed-nonce-42");
    let ack = ack_for(&subscriber, "set", replay.clone(), |a| a["correlation_id"] == "r1");
    assert_eq!(ack["ok"], true, "{ack}");
    drop(agent);
    let _agent = Agent::start(&site.config, &site.root.join("agent-3.log"));
    // The killed agent's outbox may deliver its `ok` ack once more (at least once): wait for the refusal.
    let ack = ack_for(&subscriber, "set", replay, |a| a["correlation_id"] == "r1" && a["ok"] == false);
    refused_with(&ack, "replayed");
}

#[test]
fn camera_passwords_never_leave_through_the_config_api_or_the_log() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let camera = "\n[[cameras]]\nid = \"gate\"\nsource = { kind = \"rtsp\", url = \"rtsp://admin:s3cret-pw@127.0.0.1:9/live\" }\n";
    let site = site(&broker, camera);
    let agent = Agent::start(&site.config, &site.root.join("agent.log"));
    assert!(wait_for_port(site.web_port, Duration::from_secs(60)), "no page");
    let (status, body) = http_get(&format!("http://127.0.0.1:{}/api/v1/config", site.web_port)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("admin:***@127.0.0.1"), "the camera is shown without its password: {body}");
    let health = eventually(Duration::from_secs(30), || {
        let status = agent_status(site.web_port)?;
        let gate = status["cameras"].as_array()?.iter().find(|c| c["id"] == "gate")?.clone();
        gate["last_error"].as_str().map(String::from)
    });
    let error = health.expect("the unreachable camera reports an error");
    for text in [body, error, agent.log_text()] {
        assert!(!text.contains("s3cret-pw"), "the password leaked: {text}");
    }
}

#[test]
fn a_config_file_broken_by_hand_starts_on_the_last_good_one_and_says_so() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let site = site(&broker, "");
    let subscriber = Subscriber::connect(broker.port, &format!("edge/{DEVICE}/#"));
    let agent = Agent::start(&site.config, &site.root.join("agent.log"));
    assert!(subscriber.wait_for("/events", Duration::from_secs(30), |_| true).is_some(), "no event at start");
    drop(agent);
    let last_good = PathBuf::from(format!("{}.last-good", site.config.display()));
    assert!(last_good.is_file(), "a clean start keeps its config as the last good one");

    // A hand edit that does not parse, then one that parses but names a model that is not there.
    let good = std::fs::read_to_string(&site.config).unwrap();
    for (broken, problem) in
        [(format!("{good}\n[rules.object\n"), "line"), (good.replace("nanodet.toml", "gone.toml"), "gone.toml")]
    {
        std::fs::write(&site.config, &broken).unwrap();
        let mut agent = Agent::start(&site.config, &site.root.join("agent-broken.log"));
        let online = subscriber.wait_for("/status", Duration::from_secs(60), |s| {
            s["state"] == "online" && s["control"]["config"] == "last_good"
        });
        let online = online.unwrap_or_else(|| panic!("no last_good status; log:\n{}", agent.log_text()));
        assert!(online["control"]["config_problem"].as_str().unwrap().contains(problem), "{online}");
        events_still_flow(&subscriber, chrono::Utc::now());
        let (_, page) = http_get(&format!("http://127.0.0.1:{}/", site.web_port)).unwrap();
        assert!(page.contains("id=\"config-problem\""), "the page does not say so");
        assert!(log_contains(&agent.log, "starting on the last config"));
        assert!(agent.is_running());
        drop(agent);
        assert_eq!(std::fs::read_to_string(&last_good).unwrap(), good, "a fallback start keeps the good copy");
    }
    std::fs::write(&site.config, &good).unwrap();
}

#[test]
fn forty_parallel_login_guesses_get_no_more_checks_than_the_lockout_allows() {
    let web = web_support::WebAgent::start("login_attempts = 5\nlogin_lockout_secs = 300\n");
    let base = web.base.clone();
    let guesses: Vec<_> = (0..40)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || match web_support::HttpSession::login(&base, "ana", &format!("wrong-{i}")) {
                Ok(_) => 200,
                Err(reply) => reply.status,
            })
        })
        .collect();
    let statuses: Vec<u16> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(checked <= 5, "{checked} wrong passwords were checked: {statuses:?}");
    assert_eq!(checked + refused, 40, "{statuses:?}");
    // The right password is locked out too until the window ends, and the agent is up.
    let locked = web_support::HttpSession::login(&base, web_support::ADMIN.0, web_support::ADMIN.1).err();
    assert_eq!(locked.map(|r| r.status), Some(429));
    let health = web_support::anonymous_get(&format!("{base}/healthz"), &[]);
    assert_eq!(health.status, 200);
}
