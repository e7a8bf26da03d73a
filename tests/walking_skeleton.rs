//! The walking skeleton end to end: a real frame (dog.jpg) through the real detector in the real
//! binary, to a real mosquitto and the real web page.

use std::time::Duration;

use edge_agent_tests::*;

/// The truck in dog.jpg as ONNX Runtime sees it: x 457–685, y 79–159 of the 768×576 image.
const TRUCK: [f64; 4] = [457.0, 79.0, 685.0, 159.0];

#[test]
fn truck_in_dog_jpg_reaches_the_broker_and_the_page() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    std::fs::copy(repo_root().join("models/samples/dog.jpg"), frames.join("dog.jpg")).unwrap();
    let web_port = free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"device_id = "e2e-box"
state_dir = "state"

[web]
listen = "127.0.0.1:{web_port}"

[mqtt]
url = "{url}"

[[cameras]]
id = "yard"
source = {{ kind = "replay", path = "frames", fps = 2.0 }}

[[models]]
manifest = "{models}/nanodet.toml"
score_threshold = 0.3
"#,
            url = broker.url(),
            models = repo_root().join("models").display(),
        ),
    )
    .unwrap();

    let subscriber = Subscriber::connect(broker.port, "edge/e2e-box/#");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));

    let truck = subscriber.wait_for("/events", Duration::from_secs(30), |event| event["label"] == "truck");
    let truck = truck.unwrap_or_else(|| panic!("no truck event within 30 s; agent log:\n{}", agent.log_text()));
    let b = &truck["box"];
    let found =
        [b["x1"].as_f64().unwrap(), b["y1"].as_f64().unwrap(), b["x2"].as_f64().unwrap(), b["y2"].as_f64().unwrap()];
    assert!(iou(found, TRUCK) >= 0.5, "truck box {found:?} does not overlap {TRUCK:?}");
    assert_eq!(truck["camera"], "yard");
    assert_eq!(truck["device"], "e2e-box");
    assert_eq!(truck["schema_version"], 2);
    assert_eq!(truck["model"]["name"], "nanodet");
    assert_eq!(truck["model"]["sha256"], "2947bae13602996b196ce1d92f3ea337ad028a4b944d6ce30af7b5ea9e454b16");
    let score = truck["score"].as_f64().unwrap();
    assert!((0.3..0.5).contains(&score), "score {score}");
    let event_id = truck["event_id"].as_str().unwrap().to_string();
    assert_eq!(event_id.chars().nth(14), Some('7'), "UUID v7: {event_id}");

    // The retained status says online.
    let status = Subscriber::connect(broker.port, "edge/e2e-box/status");
    let online = status.wait_for("/status", Duration::from_secs(10), |s| s["state"] == "online");
    assert!(online.is_some(), "no retained online status");

    let (code, body) = http_get(&format!("http://127.0.0.1:{web_port}/healthz")).unwrap();
    assert_eq!(code, 200, "{body}");
    // No users configured on loopback: the page is open to this machine without a login.
    let page = eventually(Duration::from_secs(10), || {
        let (code, page) = http_get(&format!("http://127.0.0.1:{web_port}/events/{event_id}")).ok()?;
        (code == 200 && page.contains(&event_id)).then_some(page)
    });
    let page = page.unwrap_or_else(|| panic!("the page never showed event {event_id}"));
    assert!(page.contains("yard") && page.contains("truck"));
    let (code, overview) = http_get(&format!("http://127.0.0.1:{web_port}/")).unwrap();
    assert!(code == 200 && overview.contains("e2e-box") && overview.contains("nanodet"), "{overview}");
    let (code, status_json) = http_get(&format!("http://127.0.0.1:{web_port}/api/status")).unwrap();
    assert_eq!(code, 200);
    let status_json: serde_json::Value = serde_json::from_str(&status_json).unwrap();
    assert_eq!(status_json["mqtt"]["connected"], true);
    assert_eq!(status_json["cameras"][0]["id"], "yard");
    drop(agent);
}

#[test]
fn a_bad_config_is_refused_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "device_id = \"x\"\n[mqtt]\nurl = 5\n").unwrap();
    let output = std::process::Command::new(agent_binary()).args(["run", "--config"]).arg(&config).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("line 3") && stderr.contains("url"), "{stderr}");
}
