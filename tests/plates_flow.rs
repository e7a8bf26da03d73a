//! The plate stage in the flow, end to end: the real agent watches a site exit on a replay camera
//! that sees a truck drive through it (a real picture of the licence-plate set, ../shared/lpr,
//! moving across the frame), then a bus. nanodet finds the vehicles (the truck, in its first frame,
//! as a car, a truck and a bus on one box), the plate models read the truck's plate on its crop,
//! the reads vote over its track, and the one `truck_exit` event, through a real mosquitto, carries
//! the plate; its plate is not among the site's registered trucks, so an `unregistered_truck` event
//! follows it. The bus, a label the site did not ask for, never has its plate read. A corrupt plate
//! model is named in the log, and the agent still reports the truck, without a plate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_agent_tests::*;
use serde_json::Value;

/// The truck (a yellow single-row plate at a toll gate) and the bus of the set.
const TRUCK: (&str, &str) = ("scene_hlprbad2_085.png", "浙EA3262");
const BUS: (&str, &str) = ("scene_hlprbad2_005.png", "沪BE3658");

/// A camera's frames: each vehicle picture moving left to right across an empty grey road in
/// `steps` frames, then `gap` frames of the empty road.
fn drive_through(folder: &Path, vehicles: &[PathBuf], steps: u32, gap: u32) {
    std::fs::create_dir_all(folder).unwrap();
    let road = image::RgbImage::from_pixel(1280, 720, image::Rgb([96, 96, 96]));
    let mut n = 0;
    let mut save = |frame: &image::RgbImage| {
        frame.save(folder.join(format!("{n:04}.png"))).unwrap();
        n += 1;
    };
    for vehicle in vehicles {
        let picture = image::open(vehicle).unwrap().to_rgb8();
        let travel = 1280 - i64::from(picture.width());
        for step in 0..steps {
            let mut frame = road.clone();
            image::imageops::overlay(&mut frame, &picture, travel * i64::from(step) / i64::from(steps - 1), 70);
            save(&frame);
        }
        for _ in 0..gap {
            save(&road);
        }
    }
}

fn site_config(dir: &Path, broker: &Mosquitto, models: &Path, plates: &str) -> PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"device_id = "plate-site"
state_dir = "state"

[web]
enabled = false

[mqtt]
url = "{url}"

[inference]
backend = "tract"

[[cameras]]
id = "gate"
source = {{ kind = "replay", path = "frames", fps = 1.0, looping = false }}

[[models]]
manifest = "{nanodet}/nanodet.toml"

[[scenes.gate.zones]]
id = "exit"
role = "site_exit"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]

[plates]
enabled = true
models = "{models}"
{plates}
"#,
            url = broker.url(),
            nanodet = repo_root().join("models").display(),
            models = models.display(),
        ),
    )
    .unwrap();
    config
}

/// Every event message until the `truck_exit` event has ended and `quiet` passed without one.
fn events_until_the_exit_ends(subscriber: &Subscriber, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut events: Vec<Value> = Vec::new();
    while Instant::now() < deadline {
        let Ok(message) = subscriber.messages.recv_timeout(Duration::from_secs(1)) else { continue };
        if let Ok(event) = serde_json::from_slice::<Value>(&message.payload) {
            let ended = event["kind"] == "truck_exit" && event["state"] == "end";
            events.push(event);
            if ended {
                break;
            }
        }
    }
    events
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[test]
fn a_truck_driving_out_is_one_event_carrying_its_plate_and_a_bus_is_never_read() {
    let Some(lpr) = lpr_dir() else { return };
    let Some(broker) = Mosquitto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = lpr.join("images");
    drive_through(&dir.path().join("frames"), &[images.join(TRUCK.0), images.join(BUS.0)], 12, 8);
    // The site's one registered truck is the bus (its plate must not matter: it is never read).
    let config = site_config(dir.path(), &broker, &lpr.join("models"), &format!("registered = [\"{}\"]", BUS.1));
    let subscriber = Subscriber::connect(broker.port, "edge/plate-site/events");
    let log = dir.path().join("agent.log");
    let agent = Agent::start(&config, &log);
    let events = events_until_the_exit_ends(&subscriber, Duration::from_secs(180));
    // The bus comes after the truck: let it pass too.
    let mut later = events.clone();
    later.extend(
        subscriber.collect_for(Duration::from_secs(25)).iter().filter_map(|m| serde_json::from_slice(&m.payload).ok()),
    );
    drop(agent);
    let text = plain_log(&std::fs::read_to_string(&log).unwrap_or_default());
    assert!(text.contains("plate stage on"), "{text}");

    let exits = of_kind(&events, "truck_exit");
    assert!(exits.iter().any(|e| e["state"] == "end"), "the truck left: {events:#?}\n{text}");
    let ids: std::collections::BTreeSet<&str> = exits.iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one truck, one event: {exits:#?}");
    let end = exits.iter().find(|e| e["state"] == "end").unwrap();
    let plate = &end["plate"];
    assert_eq!(plate["text"], TRUCK.1, "{end:#}");
    assert_eq!((plate["colour"].as_str(), plate["rows"].as_u64()), (Some("yellow"), Some(1)), "{end:#}");
    assert!(plate["reads"].as_u64().unwrap() >= 3 && plate["reads"].as_u64() <= plate["of_reads"].as_u64(), "{end:#}");
    // A start before the reads agreed has none; an update says the plate as soon as they do.
    if exits[0]["plate"].is_null() {
        assert!(
            exits.iter().any(|e| e["reason"] == "plate_read" && e["plate"]["text"] == TRUCK.1),
            "an update with the plate: {exits:#?}"
        );
    }
    // Before the reads agreed a message has no plate; none ever carries another.
    assert!(exits.iter().all(|e| e["plate"].is_null() || e["plate"]["text"] == TRUCK.1), "{exits:#?}");
    // Not a registered truck: an event of its own, from its plate to the truck's end.
    let unregistered = of_kind(&later, "unregistered_truck");
    let states: Vec<&str> = unregistered.iter().filter_map(|e| e["state"].as_str()).collect();
    assert_eq!(states, ["start", "end"], "{unregistered:#?}");
    assert!(
        unregistered.iter().all(|e| e["plate"]["text"] == TRUCK.1 && e["label"] == end["label"]),
        "{unregistered:#?}"
    );
    assert_ne!(unregistered[0]["event_id"], end["event_id"]);
    // The object rule saw one vehicle too, not a car, a truck and a bus (the bus comes later).
    let truck_events: std::collections::BTreeSet<&str> = of_kind(&later, "object")
        .iter()
        .filter(|e| ["car", "truck"].contains(&e["label"].as_str().unwrap_or_default()))
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(truck_events.len(), 1, "{later:#?}");
    // The bus was seen (an object event), its plate never read.
    assert!(later.iter().any(|e| e["label"] == "bus"), "the bus was seen: {later:#?}");
    assert!(later.iter().all(|e| e.get("plate").is_none() || e["plate"]["text"] == TRUCK.1), "{later:#?}");
    assert!(!text.contains(BUS.1) && !serde_json::to_string(&later).unwrap().contains(BUS.1));
    // Each message, the plate's included, is what docs/schemas/event.schema.json says.
    let Some(python) = schema_python() else { return };
    let messages = dir.path().join("messages.jsonl");
    let lines: Vec<String> = later
        .iter()
        .map(|e| serde_json::json!({ "topic": "edge/plate-site/events", "json": e, "jpeg": false }).to_string())
        .collect();
    std::fs::write(&messages, lines.join("\n") + "\n").unwrap();
    let output = std::process::Command::new(python)
        .arg(repo_root().join("scripts/validate_messages.py"))
        .arg(repo_root().join("docs"))
        .arg(&messages)
        .args(["--require", "events"])
        .output()
        .expect("run the validator");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "event messages do not match their schema:\n{report}");
}

#[test]
fn a_corrupt_plate_model_is_named_and_the_truck_is_still_reported_without_a_plate() {
    let Some(lpr) = lpr_dir() else { return };
    let Some(broker) = Mosquitto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("plate-models");
    std::fs::create_dir(&models).unwrap();
    for entry in std::fs::read_dir(lpr.join("models")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "onnx") {
            std::fs::copy(&path, models.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(models.join("ch_PP-OCRv4_rec_infer.onnx"), b"not an ONNX model").unwrap();
    drive_through(&dir.path().join("frames"), &[lpr.join("images").join(TRUCK.0)], 8, 8);
    let config = site_config(dir.path(), &broker, &models, "registered = [\"京A12345\"]");
    let subscriber = Subscriber::connect(broker.port, "edge/plate-site/events");
    let log = dir.path().join("agent.log");
    let agent = Agent::start(&config, &log);
    let events = events_until_the_exit_ends(&subscriber, Duration::from_secs(120));
    drop(agent);
    let text = plain_log(&std::fs::read_to_string(&log).unwrap_or_default());
    assert!(
        text.contains("ch_PP-OCRv4_rec_infer.onnx") && text.contains("plates are not read"),
        "the broken model is named: {text}"
    );
    let exits = of_kind(&events, "truck_exit");
    assert!(exits.iter().any(|e| e["state"] == "end"), "{events:#?}\n{text}");
    assert!(exits.iter().all(|e| e.get("plate").is_none()), "{exits:#?}");
    assert!(of_kind(&events, "unregistered_truck").is_empty(), "no plate, no judgement of it: {events:#?}");
}
