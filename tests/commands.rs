//! Commands from the platform, end to end: the real agent, a real mosquitto, real model files
//! served over real HTTP on loopback, signed with a real Ed25519 key.

use std::path::PathBuf;
use std::time::Duration;

use edge_agent_tests::*;
use serde_json::{json, Value};

const DEVICE: &str = "cmd-box";

/// nanodet.onnx with one more protobuf field (a doc string) appended: the same graph, so it loads
/// and behaves like the original, but a different file with its own sha256 — a real "new model".
fn nanodet_variant() -> Vec<u8> {
    let mut bytes = std::fs::read(repo_root().join("models/nanodet.onnx")).unwrap();
    let note = b"edge-agent test build 2";
    bytes.push((6 << 3) | 2); // ModelProto.doc_string, length-delimited
    bytes.push(note.len() as u8);
    bytes.extend_from_slice(note);
    bytes
}

struct Signer {
    key: ring::signature::Ed25519KeyPair,
}

impl Signer {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Self { key: ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap() }
    }

    fn public_key_hex(&self) -> String {
        use ring::signature::KeyPair;
        hex::encode(self.key.public_key().as_ref())
    }

    fn sign_hex(&self, bytes: &[u8]) -> String {
        hex::encode(self.key.sign(bytes).as_ref())
    }
}

struct Site {
    _dir: tempfile::TempDir,
    platform: PlatformKey,
    root: PathBuf,
    config: PathBuf,
    web_port: u16,
    files: FileServer,
    signer: Signer,
    variant: Vec<u8>,
}

/// A looping camera (events all the time), a served model folder and a signing key the agent
/// trusts.
fn site(broker: &Mosquitto) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    // The truck comes and goes every second, and tracking forgets it at once: each arrival is a
    // new incident with a fresh `start` event, so events keep coming as long as the agent works.
    let frames = frames_folder(&root, "yard", "dog.jpg", 1);
    frames_folder(&root, "yard", "coffee.png", 1);
    let served = root.join("served");
    std::fs::create_dir(&served).unwrap();
    let variant = nanodet_variant();
    std::fs::write(served.join("nanodet-v2.onnx"), &variant).unwrap();
    std::fs::copy(repo_root().join("models/efficientnet_lite0.onnx"), served.join("efficientnet.onnx")).unwrap();
    let signer = Signer::new();
    let cameras = [ReplayCamera { id: "yard", frames: &frames, fps: 2.0, looping: true }];
    let platform = PlatformKey::from_seed(1);
    let extra = format!(
        "[rules.object]\nmin_score = 0.3\nmin_duration_secs = 0.0\n\n\
         [tracking]\nmax_lost_secs = 0.3\nstationary_memory_secs = 0.0\n\n[model_update]\npublic_key = \"{}\"\nprobation_secs = 3\n\n{}",
        signer.public_key_hex(),
        platform.config_section(),
    );
    let mqtt = format!("url = \"{}\"\ntelemetry_interval_secs = 2", broker.url());
    let (config, web_port) = write_agent_config(&root, DEVICE, &mqtt, &cameras, &extra);
    let files = FileServer::start(&served);
    Site { _dir: dir, platform, root, config, web_port, files, signer, variant }
}

/// Sends a command as the platform does (signed, when it is a JSON object) and returns its ack
/// (the next ack on that command's topic with the same correlation id, or with null when the
/// request carries none).
fn command(site: &Site, subscriber: &Subscriber, name: &str, payload: &[u8]) -> Value {
    let sent: Option<Value> = serde_json::from_slice(payload).ok();
    let id = sent.as_ref().and_then(|v| v.get("correlation_id")).and_then(Value::as_str).map(String::from);
    subscriber.publish(&format!("edge/{DEVICE}/cmd/{name}"), site.platform.sign_if_object(DEVICE, name, payload));
    let ack = subscriber.wait_for(&format!("/cmd/{name}/ack"), Duration::from_secs(60), |ack| match &id {
        Some(id) => ack["correlation_id"] == *id,
        None => true,
    });
    ack.unwrap_or_else(|| panic!("no ack for {name} {}", String::from_utf8_lossy(payload)))
}

/// Like [`command`], but also returns every other message that arrived before the ack.
fn command_seeing(site: &Site, subscriber: &Subscriber, name: &str, payload: &[u8]) -> (Value, Vec<Received>) {
    let id = serde_json::from_slice::<Value>(payload).ok().and_then(|v| v["correlation_id"].as_str().map(String::from));
    subscriber.publish(&format!("edge/{DEVICE}/cmd/{name}"), site.platform.sign_if_object(DEVICE, name, payload));
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let Ok(message) = subscriber.messages.recv_timeout(Duration::from_millis(200)) else { continue };
        if message.topic.ends_with(&format!("/cmd/{name}/ack")) {
            let ack: Value = serde_json::from_slice(&message.payload).unwrap();
            if id.as_deref().is_none_or(|id| ack["correlation_id"] == id) {
                return (ack, seen);
            }
        }
        seen.push(message);
    }
    panic!("no ack for {name}");
}

fn status(site: &Site) -> Value {
    agent_status(site.web_port).expect("the agent answers /api/status")
}

#[test]
fn malformed_commands_of_every_kind_get_error_acks_and_change_nothing() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let site = site(&broker);
    let subscriber = Subscriber::connect(broker.port, &format!("edge/{DEVICE}/#"));
    let agent = Agent::start(&site.config, &site.root.join("agent.log"));
    assert!(subscriber.wait_for("/events", Duration::from_secs(30), |_| true).is_some(), "no event at start");
    let config_before = std::fs::read(&site.config).unwrap();
    let sha_before = status(&site)["models"][0]["sha256"].clone();

    let variant_sha = sha256_hex(&site.variant);
    let good_signature = site.signer.sign_hex(&site.variant);
    let efficientnet = std::fs::read(site.root.join("served/efficientnet.onnx")).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("set", "{not json".into(), "malformed_json"),
        ("set", "".into(), "malformed_json"),
        ("set", "[1, 2, 3]".into(), "invalid_request"),
        ("reload", r#"{"values": {}}"#.into(), "invalid_request"),
        ("reload", r#"{"correlation_id": 42}"#.into(), "invalid_request"),
        ("frobnicate", r#"{"correlation_id": "c-unknown"}"#.into(), "unknown_command"),
        ("set", r#"{"correlation_id": "c-range", "values": {"rules.object.min_score": 1.5}}"#.into(), "out_of_range"),
        ("set", r#"{"correlation_id": "c-type", "values": {"rules.object.min_score": "high"}}"#.into(), "invalid_value"),
        // A key outside the table of settable keys, though shaped like one (issue 27: an allowlist).
        ("set", r#"{"correlation_id": "c-key", "values": {"rules.object.colour": "red"}}"#.into(), "not_settable"),
        ("set", r#"{"correlation_id": "c-mqtt", "values": {"mqtt.url": "mqtt://elsewhere"}}"#.into(), "not_settable"),
        ("set", r#"{"correlation_id": "c-cam", "values": {"cameras.dock.enabled": false}}"#.into(), "unknown_target"),
        (
            "set",
            r#"{"correlation_id": "c-mixed", "values": {"cameras.yard.enabled": false, "rules.object.min_score": -1}}"#
                .into(),
            "out_of_range",
        ),
        ("set", r#"{"correlation_id": "c-empty", "values": {}}"#.into(), "invalid_request"),
        ("set", r#"{"correlation_id": "c-extra", "values": {"a.b.c": 1}, "force": true}"#.into(), "invalid_request"),
        ("snapshot", r#"{"correlation_id": "c-snap", "camera": "dock"}"#.into(), "unknown_target"),
        ("model", r#"{"correlation_id": "c-nourl", "name": "nanodet", "sha256": "00"}"#.into(), "invalid_request"),
        (
            "model",
            json!({"correlation_id": "c-badsha", "name": "nanodet", "url": site.files.url("nanodet-v2.onnx"), "sha256": "xyz", "signature": good_signature})
                .to_string(),
            "invalid_request",
        ),
        (
            "model",
            json!({"correlation_id": "c-name", "name": "yolo", "url": site.files.url("nanodet-v2.onnx"), "sha256": variant_sha, "signature": good_signature})
                .to_string(),
            "unknown_target",
        ),
        (
            "model",
            json!({"correlation_id": "c-unsigned", "name": "nanodet", "url": site.files.url("nanodet-v2.onnx"), "sha256": variant_sha})
                .to_string(),
            "signature_required",
        ),
        (
            "model",
            json!({"correlation_id": "c-wrongsha", "name": "nanodet", "url": site.files.url("nanodet-v2.onnx"), "sha256": "ab".repeat(32), "signature": good_signature})
                .to_string(),
            "sha256_mismatch",
        ),
        (
            "model",
            json!({"correlation_id": "c-forged", "name": "nanodet", "url": site.files.url("nanodet-v2.onnx"), "sha256": variant_sha, "signature": site.signer.sign_hex(b"another file")})
                .to_string(),
            "signature_invalid",
        ),
        (
            "model",
            json!({"correlation_id": "c-404", "name": "nanodet", "url": site.files.url("missing.onnx"), "sha256": variant_sha, "signature": good_signature})
                .to_string(),
            "download_failed",
        ),
        (
            "model",
            json!({"correlation_id": "c-wrongmodel", "name": "nanodet", "url": site.files.url("efficientnet.onnx"), "sha256": sha256_hex(&efficientnet), "signature": site.signer.sign_hex(&efficientnet)})
                .to_string(),
            "load_failed",
        ),
    ];
    for (name, payload, expected) in &cases {
        let ack = command(&site, &subscriber, name, payload.as_bytes());
        assert_eq!(ack["ok"], false, "{name} {payload} was accepted: {ack}");
        assert_eq!(ack["error"]["code"], *expected, "{name} {payload}: {ack}");
        let message = ack["error"]["message"].as_str().unwrap_or_default();
        assert!(message.len() > 10, "the error says too little: {ack}");
        assert_eq!(ack["command"], *name);
        if let Some(id) =
            serde_json::from_str::<Value>(payload).ok().and_then(|v| v["correlation_id"].as_str().map(String::from))
        {
            assert_eq!(ack["correlation_id"], id.as_str());
        }
    }
    // A config file broken by hand is refused by `reload`, and the running agent keeps its config.
    std::fs::write(&site.config, "device_id = \"a/b\"\n").unwrap();
    let ack = command(&site, &subscriber, "reload", br#"{"correlation_id": "c-badfile"}"#);
    assert_eq!(ack["error"]["code"], "out_of_range", "{ack}");
    assert!(ack["error"]["message"].as_str().unwrap().contains("device_id"), "{ack}");
    std::fs::write(&site.config, &config_before).unwrap();

    // Nothing changed: the file, the model, the camera, the models folder; events still flow.
    assert_eq!(std::fs::read(&site.config).unwrap(), config_before, "the config file was changed");
    let after = status(&site);
    assert_eq!(after["models"][0]["sha256"], sha_before);
    assert_eq!(after["cameras"][0]["enabled"], true);
    let leftovers: Vec<_> = std::fs::read_dir(site.root.join("state/models"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "refused model files were left behind: {leftovers:?}");
    let ack_time = chrono::Utc::now();
    let fresh = subscriber.wait_for("/events", Duration::from_secs(20), |event| {
        event["time"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).is_some_and(|t| t > ack_time)
    });
    assert!(fresh.is_some(), "events stopped after the malformed commands");
    assert!(log_contains(&agent.log, "command refused"));
    drop(agent);
}

fn event_after(subscriber: &Subscriber, after: chrono::DateTime<chrono::Utc>, timeout: Duration) -> Option<Value> {
    subscriber.wait_for("/events", timeout, |event| {
        event["time"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).is_some_and(|t| t > after)
    })
}

fn ack_time(ack: &Value) -> chrono::DateTime<chrono::Utc> {
    ack["time"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.to_utc()).unwrap()
}

#[test]
fn commands_change_the_running_agent_and_its_config_file() {
    let Some(mut broker) = Mosquitto::start() else {
        return;
    };
    let site = site(&broker);
    let subscriber = Subscriber::connect(broker.port, &format!("edge/{DEVICE}/#"));
    let agent = Agent::start(&site.config, &site.root.join("agent.log"));
    assert!(subscriber.wait_for("/events", Duration::from_secs(30), |_| true).is_some(), "no event at start");

    // set: a threshold no detection reaches; persisted, applied at once.
    let ack =
        command(&site, &subscriber, "set", br#"{"correlation_id": "s1", "values": {"rules.object.min_score": 0.99}}"#);
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["result"]["applied"], json!(["rules.object.min_score"]));
    let text = std::fs::read_to_string(&site.config).unwrap();
    assert!(text.contains("min_score = 0.99"), "{text}");
    // Frames already past the judge may still report; after a second nothing does.
    let quiet_from = ack_time(&ack) + chrono::Duration::seconds(1);
    assert!(event_after(&subscriber, quiet_from, Duration::from_secs(5)).is_none(), "events kept coming at 0.99");

    // reload: a hand edit of the file takes effect.
    std::fs::write(&site.config, text.replace("min_score = 0.99", "min_score = 0.3")).unwrap();
    let ack = command(&site, &subscriber, "reload", br#"{"correlation_id": "r1"}"#);
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["result"]["changed"], json!(["rules.object.min_score"]));
    assert!(event_after(&subscriber, ack_time(&ack), Duration::from_secs(20)).is_some(), "events did not resume");

    // set: disable the camera; frames stop; enable it again; frames resume.
    let ack =
        command(&site, &subscriber, "set", br#"{"correlation_id": "s2", "values": {"cameras.yard.enabled": false}}"#);
    assert_eq!(ack["ok"], true, "{ack}");
    std::thread::sleep(Duration::from_secs(1));
    let captured = status(&site)["cameras"][0]["frames_captured"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let camera = status(&site)["cameras"][0].clone();
    assert_eq!((camera["enabled"].clone(), camera["frames_captured"].as_u64().unwrap()), (json!(false), captured));
    assert!(std::fs::read_to_string(&site.config).unwrap().contains("enabled = false"));
    let ack = command(&site, &subscriber, "snapshot", br#"{"correlation_id": "p0", "camera": "yard"}"#);
    assert_eq!(ack["error"]["code"], "camera_disabled", "{ack}");
    let ack =
        command(&site, &subscriber, "set", br#"{"correlation_id": "s3", "values": {"cameras.yard.enabled": true}}"#);
    assert_eq!(ack["ok"], true, "{ack}");
    let resumed = eventually(Duration::from_secs(10), || {
        (status(&site)["cameras"][0]["frames_captured"].as_u64()? > captured).then_some(())
    });
    assert!(resumed.is_some(), "the camera did not come back");

    // snapshot: a JPEG now.
    // The picture is queued before the ack, so it arrives first.
    let (ack, seen) = command_seeing(&site, &subscriber, "snapshot", br#"{"correlation_id": "p1"}"#);
    assert_eq!(ack["ok"], true, "{ack}");
    let snapshot_id = ack["result"]["snapshots"][0]["snapshot_id"].as_str().unwrap().to_string();
    let jpeg = seen.iter().find(|m| m.topic == format!("edge/{DEVICE}/snapshots/{snapshot_id}"));
    let jpeg = jpeg.expect("the snapshot arrived before its ack");
    assert_eq!(&jpeg.payload[..2], &[0xff, 0xd8]);

    // model: a signed new file; switched, announced in the status, used by events, confirmed.
    let variant_sha = sha256_hex(&site.variant);
    let request = json!({
        "correlation_id": "m1",
        "name": "nanodet",
        "url": site.files.url("nanodet-v2.onnx"),
        "sha256": variant_sha,
        "signature": site.signer.sign_hex(&site.variant),
    });
    // The status is republished at the switch, possibly before the ack leaves the outbox.
    let (ack, seen) = command_seeing(&site, &subscriber, "model", request.to_string().as_bytes());
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["result"]["stage"], "switched");
    assert_eq!(ack["result"]["self_test"]["pictures"], 3, "{ack}");
    let previous = ack["result"]["previous_sha256"].as_str().unwrap().to_string();
    assert_ne!(previous, variant_sha);
    let announces = |s: &Value| s["state"] == "online" && s["models"][0]["sha256"] == variant_sha;
    let announced_early = seen.iter().any(|m| {
        m.topic.ends_with("/status") && serde_json::from_slice::<Value>(&m.payload).is_ok_and(|s| announces(&s))
    });
    let announced = announced_early || subscriber.wait_for("/status", Duration::from_secs(10), announces).is_some();
    assert!(announced, "the status does not announce the new model");
    let used = subscriber.wait_for("/events", Duration::from_secs(20), |e| e["model"]["sha256"] == variant_sha);
    assert!(used.is_some(), "events do not come from the new model");
    let confirmed = subscriber.wait_for("/cmd/model/ack", Duration::from_secs(20), |a| a["correlation_id"] == "m1");
    let confirmed = confirmed.expect("a second ack after the probation");
    assert_eq!((confirmed["ok"].clone(), confirmed["result"]["stage"].clone()), (json!(true), json!("confirmed")));
    let text = std::fs::read_to_string(&site.config).unwrap();
    let manifest = site.root.join(format!("state/models/nanodet-{}.toml", &variant_sha[..12]));
    assert!(text.contains(&manifest.display().to_string()), "the config does not point at the new model:\n{text}");
    assert!(repo_root().join("models/nanodet.onnx").is_file(), "the old model is kept");
    assert_eq!(status(&site)["models"][0]["sha256"], variant_sha);

    // A broker that restarts empty (no persistence): the agent says `online` again and
    // subscribes to its commands again.
    broker.stop();
    broker.restart();
    let online = subscriber.wait_for("/status", Duration::from_secs(30), |s| s["state"] == "online");
    assert!(online.is_some(), "no online status after the broker came back");
    let ack = command(&site, &subscriber, "snapshot", br#"{"correlation_id": "after-restart"}"#);
    assert_eq!(ack["ok"], true, "{ack}");
    drop(agent);
}

#[test]
fn a_model_switch_still_on_probation_when_the_agent_dies_is_rolled_back_at_the_next_start() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let site = site(&broker);
    // A probation long enough to kill the agent in the middle of it.
    let text = std::fs::read_to_string(&site.config).unwrap().replace("probation_secs = 3", "probation_secs = 600");
    std::fs::write(&site.config, text).unwrap();
    let subscriber = Subscriber::connect(broker.port, &format!("edge/{DEVICE}/#"));
    let mut agent = Agent::start(&site.config, &site.root.join("agent.log"));
    assert!(subscriber.wait_for("/events", Duration::from_secs(30), |_| true).is_some(), "no event at start");
    let before = status(&site)["models"][0]["sha256"].as_str().unwrap().to_string();
    let config_before = std::fs::read_to_string(&site.config).unwrap();

    let variant_sha = sha256_hex(&site.variant);
    let request = json!({
        "correlation_id": "crash-1",
        "name": "nanodet",
        "url": site.files.url("nanodet-v2.onnx"),
        "sha256": variant_sha,
        "signature": site.signer.sign_hex(&site.variant),
    });
    let ack = command(&site, &subscriber, "model", request.to_string().as_bytes());
    assert_eq!((ack["ok"].clone(), ack["result"]["stage"].clone()), (json!(true), json!("switched")), "{ack}");
    assert_ne!(std::fs::read_to_string(&site.config).unwrap(), config_before, "the switch is in the config file");

    // SIGKILL in the middle of the probation (a crash, or the watchdog), then the next start.
    agent.kill_hard();
    agent.restart(&site.config);
    let back = eventually(Duration::from_secs(60), || {
        let sha = agent_status(site.web_port)?["models"][0]["sha256"].as_str()?.to_string();
        (sha == before).then_some(())
    });
    assert!(back.is_some(), "the unconfirmed model is still running after the restart:\n{}", agent.log_text());
    assert_eq!(
        std::fs::read_to_string(&site.config).unwrap(),
        config_before,
        "the config points back at the old model"
    );
    assert!(log_contains(&agent.log, "never finished its probation"), "{}", agent.log_text());
    assert!(!site.root.join("state/model-switch-pending.json").exists());
    let fresh = subscriber.wait_for("/events", Duration::from_secs(20), |e| e["model"]["sha256"] == before.as_str());
    assert!(fresh.is_some(), "events do not come from the previous model");
}
