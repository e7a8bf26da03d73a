//! Every kind of message a real agent publishes to a real mosquitto — status (online, stopped,
//! offline), events, evidence, telemetry, command acks (ok and errors), the test message of
//! `edge-agent check` — and the commands the platform sends, validated against docs/schemas/
//! through docs/asyncapi.yaml by Python jsonschema (scripts/validate_messages.py, in the venv
//! scripts/test.sh creates).

use std::io::Write;
use std::time::Duration;

use edge_agent_tests::*;
use serde_json::{json, Value};

const DEVICE: &str = "schema-box";

fn line(topic: &str, payload: &[u8]) -> String {
    let json: Option<Value> = serde_json::from_slice(payload).ok();
    let jpeg = payload.starts_with(&[0xff, 0xd8]);
    json!({ "topic": topic, "json": json, "jpeg": jpeg }).to_string()
}

#[test]
fn published_messages_match_the_json_schemas() {
    let Some(python) = schema_python() else {
        return;
    };
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let frames = frames_folder(dir.path(), "yard", "dog.jpg", 1);
    let cameras = [ReplayCamera { id: "yard", frames: &frames, fps: 2.0, looping: true }];
    let mqtt = format!("url = \"{}\"\ntelemetry_interval_secs = 1\nkeep_alive_secs = 5", broker.url());
    let platform = PlatformKey::from_seed(3);
    let extra = format!("[rules.object]\nmin_score = 0.3\n\n{}", platform.config_section());
    let (config, _) = write_agent_config(dir.path(), DEVICE, &mqtt, &cameras, &extra);
    let subscriber = Subscriber::connect(broker.port, &format!("edge/{DEVICE}/#"));
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));
    let mut lines = Vec::new();
    let take = |messages: Vec<Received>, lines: &mut Vec<String>| {
        for message in messages {
            // QoS 1 for everything from the outbox (events, evidence, acks) and the status.
            let expected_qos = if message.topic.ends_with("/telemetry") { 0 } else { 1 };
            assert_eq!(message.qos, expected_qos, "{} arrived with QoS {}", message.topic, message.qos);
            // Commands are recorded as sent (below): the malformed ones are meant to fail.
            if message.topic.contains("/cmd/") && !message.topic.ends_with("/ack") {
                continue;
            }
            lines.push(line(&message.topic, &message.payload));
        }
    };
    // Everything from the start: the chain's genesis record goes out just before the first event.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !lines.iter().any(|l: &String| l.contains("/events\"")) {
        assert!(std::time::Instant::now() < deadline, "no event");
        take(subscriber.collect_for(Duration::from_millis(300)), &mut lines);
    }
    // The installer's `edge-agent check` publishes its test message to the same broker.
    let checked = std::process::Command::new(agent_binary())
        .args(["check", "--config"])
        .arg(&config)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run edge-agent check");
    assert!(checked.status.success(), "check failed:\n{}", String::from_utf8_lossy(&checked.stdout));

    let well_formed = [
        ("snapshot", json!({"correlation_id": "v1", "camera": "yard"})),
        ("set", json!({"correlation_id": "v2", "values": {"rules.object.min_score": 0.35}})),
        ("reload", json!({"correlation_id": "v3"})),
        (
            "model",
            json!({"correlation_id": "v4", "name": "nanodet", "url": "http://127.0.0.1:9/none.onnx", "sha256": "ab".repeat(32)}),
        ),
    ];
    for (name, body) in &well_formed {
        let topic = format!("edge/{DEVICE}/cmd/{name}");
        let envelope = platform.envelope(DEVICE, name, body);
        subscriber.publish(&topic, envelope.clone());
        lines.push(line(&topic, &envelope));
    }
    for (name, body) in [
        ("set", "{oops"),
        ("set", r#"{"correlation_id": "v5", "values": {"rules.object.min_score": 7}}"#),
        ("nope", r#"{"correlation_id": "v6"}"#),
    ] {
        subscriber
            .publish(&format!("edge/{DEVICE}/cmd/{name}"), platform.sign_if_object(DEVICE, name, body.as_bytes()));
    }
    // Events, evidence, telemetry and the acks of all seven commands.
    let mut acks = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acks < 7 && std::time::Instant::now() < deadline {
        let batch = subscriber.collect_for(Duration::from_millis(500));
        acks += batch.iter().filter(|m| m.topic.ends_with("/ack")).count();
        take(batch, &mut lines);
    }
    assert_eq!(acks, 7, "not every command was acked");
    take(subscriber.collect_for(Duration::from_secs(2)), &mut lines);

    // A clean stop says `stopped`; a killed agent leaves `offline` (the last will).
    assert_eq!(agent.terminate(Duration::from_secs(15)), Some(0), "clean exit");
    let stopped = subscriber.wait_for("/status", Duration::from_secs(10), |s| s["state"] == "stopped");
    let stopped = stopped.expect("a stopped status");
    lines.push(line(&format!("edge/{DEVICE}/status"), stopped.to_string().as_bytes()));
    agent.restart(&config);
    let online = subscriber.wait_for("/status", Duration::from_secs(30), |s| s["state"] == "online");
    lines.push(line(&format!("edge/{DEVICE}/status"), online.expect("online again").to_string().as_bytes()));
    std::thread::sleep(Duration::from_secs(1));
    agent.kill_hard();
    let offline = subscriber.wait_for("/status", Duration::from_secs(30), |s| s["state"] == "offline");
    lines.push(line(&format!("edge/{DEVICE}/status"), offline.expect("the last will").to_string().as_bytes()));

    let messages = dir.path().join("messages.jsonl");
    let mut file = std::fs::File::create(&messages).unwrap();
    for line in &lines {
        writeln!(file, "{line}").unwrap();
    }
    let output = std::process::Command::new(&python)
        .arg(repo_root().join("scripts/validate_messages.py"))
        .arg(repo_root().join("docs"))
        .arg(&messages)
        .args([
            "--require",
            "status,cameraHealth,events,snapshots,telemetry,check,chain,commandAck,commandSet,commandSnapshot,commandReload,commandModel",
        ])
        .output()
        .expect("run the validator");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("{report}");
    assert!(output.status.success(), "messages do not match their schemas:\n{report}");
    assert!(report.contains("checked against"), "{report}");
}
