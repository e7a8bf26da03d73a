//! Real camera sources end to end: the built agent reading a real GStreamer RTSP server on loopback
//! (outage, freeze, corrupt stream), an H.264 MP4 file, two cameras sharing one slow box, and a USB
//! camera that is not there. Detections are compared with what the same models find in the picture.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_agent_tests::rtsp::{RtspServer, Stream};
use edge_agent_tests::*;
use serde_json::Value;

fn dog_jpg() -> PathBuf {
    repo_root().join("models/samples/dog.jpg")
}

/// The truck box the detector finds in dog.jpg itself, from `edge-agent infer --json`.
fn truck_in_dog_jpg() -> [f64; 4] {
    let output = std::process::Command::new(agent_binary())
        .args(["infer", "--json", "--model", "nanodet"])
        .arg(dog_jpg())
        .output()
        .expect("run edge-agent infer");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).expect("infer --json output");
    let detections = json["results"][0]["findings"]["detections"].as_array().expect("detections");
    let truck = detections.iter().find(|d| d["label"] == "truck").expect("a truck in dog.jpg");
    let b = &truck["bbox"];
    [b["x1"].as_f64().unwrap(), b["y1"].as_f64().unwrap(), b["x2"].as_f64().unwrap(), b["y2"].as_f64().unwrap()]
}

fn event_box(event: &Value) -> [f64; 4] {
    let b = &event["box"];
    [b["x1"].as_f64().unwrap(), b["y1"].as_f64().unwrap(), b["x2"].as_f64().unwrap(), b["y2"].as_f64().unwrap()]
}

/// A config with the given `[[cameras]]` blocks, the detector only, the web page on a free port.
fn write_config(dir: &Path, mqtt_url: Option<&str>, cameras: &str) -> (PathBuf, u16) {
    let web_port = free_port();
    let mqtt = mqtt_url.map(|url| format!("[mqtt]\nurl = \"{url}\"\n")).unwrap_or_default();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"e2e-box\"\nstate_dir = \"state\"\n\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n\n{mqtt}\n\
             {cameras}\n[[models]]\nmanifest = \"{models}/nanodet.toml\"\nscore_threshold = 0.3\n",
            models = repo_root().join("models").display(),
        ),
    )
    .unwrap();
    (config, web_port)
}

fn camera_status(web_port: u16, camera: &str) -> Option<Value> {
    let (code, body) = http_get(&format!("http://127.0.0.1:{web_port}/api/status")).ok()?;
    if code != 200 {
        return None;
    }
    let status: Value = serde_json::from_str(&body).ok()?;
    status["cameras"].as_array()?.iter().find(|c| c["id"] == camera).cloned()
}

fn counter(camera: &Value, name: &str) -> u64 {
    camera[name].as_u64().unwrap_or(0)
}

/// Waits until the camera's counter `name` exceeds `above`; returns the camera's status.
fn wait_for_counter(web_port: u16, camera: &str, name: &str, above: u64, timeout: Duration) -> Option<Value> {
    eventually(timeout, || camera_status(web_port, camera).filter(|c| counter(c, name) > above))
}

/// An agent with one RTSP camera `gate` (`source_keys` added to its source) and a broker; waits for
/// the truck of dog.jpg and checks it is where the picture has it, at the picture's size.
/// None when mosquitto is missing outside CI.
fn truck_from_rtsp_camera(
    url: &str,
    source_keys: &str,
    what: &str,
) -> Option<(Agent, u16, tempfile::TempDir, Mosquitto)> {
    let broker = Mosquitto::start()?;
    let expected = truck_in_dog_jpg();
    let dir = tempfile::tempdir().unwrap();
    let (config, web_port) = write_config(
        dir.path(),
        Some(&broker.url()),
        &format!(
            "[[cameras]]\nid = \"gate\"\nsource = {{ kind = \"rtsp\", url = \"{url}\", fps = 2.0{source_keys} }}\n"
        ),
    );
    let subscriber = Subscriber::connect(broker.port, "edge/e2e-box/events");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    let truck = subscriber.wait_for("/events", Duration::from_secs(60), is_the_pickup);
    let truck = truck.unwrap_or_else(|| panic!("no truck from the {what} camera; log:\n{}", agent.log_text()));
    assert_eq!(truck["camera"], "gate");
    assert_eq!((truck["frame_width"].as_u64(), truck["frame_height"].as_u64()), (Some(768), Some(576)));
    let found = event_box(&truck);
    assert!(iou(found, expected) >= 0.85, "{what} truck {found:?} vs picture truck {expected:?}");
    Some((agent, web_port, dir, broker))
}

#[test]
fn rtsp_camera_gives_the_same_detections_as_the_picture_and_hides_its_password() {
    let Some(server) = RtspServer::start(Stream::Picture { path: &dog_jpg(), fps: 5 }, Some(("viewer", "s3cret-pw")))
    else {
        return;
    };
    let Some((agent, web_port, _dir, _broker)) =
        truck_from_rtsp_camera(&server.url_with("viewer", "s3cret-pw"), "", "RTSP")
    else {
        return;
    };

    // The password reaches the camera (it answers 401 without it) but no log line, page or API.
    let (_, status) = http_get(&format!("http://127.0.0.1:{web_port}/api/status")).unwrap();
    let (_, page) = http_get(&format!("http://127.0.0.1:{web_port}/")).unwrap();
    for (what, text) in [("log", agent.log_text()), ("status", status), ("page", page)] {
        assert!(!text.contains("s3cret-pw"), "the password shows in the {what}:\n{text}");
    }
    drop(agent);
}

/// Many city cameras stream H.265: through GStreamer it gives the same detections as the picture
/// it was made from, and the camera's status names the decoder.
#[test]
fn an_h265_camera_gives_the_same_detections_as_the_picture() {
    let Some(server) = RtspServer::start(Stream::PictureH265 { path: &dog_jpg(), fps: 5 }, None) else { return };
    let Some((agent, web_port, _dir, _broker)) =
        truck_from_rtsp_camera(&server.url(), ", decoder = \"gstreamer\"", "H.265")
    else {
        return;
    };
    let camera = camera_status(web_port, "gate").expect("camera status");
    let decoder = camera["decoder"].as_str().unwrap_or_default();
    assert!(decoder.contains("265") && decoder.contains("GStreamer"), "{camera}");
    drop(agent);
}

#[test]
fn rtsp_server_killed_and_restarted_is_recovered_within_the_watchdog_time() {
    let Some(broker) = Mosquitto::start() else { return };
    let Some(mut server) = RtspServer::start(Stream::Picture { path: &dog_jpg(), fps: 5 }, None) else { return };
    let stall_timeout = 3.0;
    let dir = tempfile::tempdir().unwrap();
    // The supervisors' view: the camera's retained health topic.
    let health = Subscriber::connect(broker.port, "edge/e2e-box/cameras/gate/health");
    let (config, web_port) = write_config(
        dir.path(),
        Some(&broker.url()),
        &format!(
            "[[cameras]]\nid = \"gate\"\nsource = {{ kind = \"rtsp\", url = \"{}\", stall_timeout_secs = {stall_timeout} }}\n",
            server.url()
        ),
    );
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    let camera = wait_for_counter(web_port, "gate", "frames_captured", 2, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no frames from the RTSP camera; log:\n{}", agent.log_text()));
    let errors_before = counter(&camera, "errors");

    server.kill();
    let down = wait_for_counter(web_port, "gate", "errors", errors_before, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the outage was not reported; log:\n{}", agent.log_text()));
    let error = down["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("gate") && error.contains(&server.url()), "{error}");
    let offline = health.wait_for("/health", Duration::from_secs(10), |h| h["state"] == "offline");
    let offline = offline.unwrap_or_else(|| panic!("no offline camera health; log:\n{}", agent.log_text()));
    assert!(offline["last_error"].as_str().is_some_and(|e| e.contains(&server.url())), "{offline}");
    // Down a while: the backoff grows to its cap (the stall timeout) meanwhile.
    std::thread::sleep(Duration::from_secs_f64(stall_timeout * 2.0));

    let captured = counter(&camera_status(web_port, "gate").unwrap(), "frames_captured");
    server.restart();
    let back_at = Instant::now();
    // Next reconnect attempt within one backoff cap (+25 % jitter), then connect, wait for a
    // keyframe (2 s apart here) and decode, on a box busy with the other tests.
    let limit = Duration::from_secs_f64(stall_timeout * 1.25 + 8.0);
    let back = wait_for_counter(web_port, "gate", "frames_captured", captured, limit + Duration::from_secs(30));
    assert!(back.is_some(), "frames never came back; log:\n{}", agent.log_text());
    let took = back_at.elapsed();
    assert!(took <= limit, "frames came back after {took:?}, more than {limit:?}");
    let online = health.wait_for("/health", Duration::from_secs(10), |h| h["state"] == "online");
    let online = online.unwrap_or_else(|| panic!("the camera's health never said online again"));
    assert!(online["decoder"].is_string() && online["last_error"].is_null(), "{online}");
    // A supervisor who looks later still finds it (retained).
    let late = Subscriber::connect(broker.port, "edge/e2e-box/cameras/gate/health");
    let retained = late.collect_for(Duration::from_secs(2));
    assert!(retained.iter().any(|m| m.retain), "the camera health is not retained: {retained:?}");
    drop(agent);
}

#[test]
fn a_frozen_rtsp_server_trips_the_stall_watchdog_and_is_reconnected() {
    let Some(server) = RtspServer::start(Stream::Picture { path: &dog_jpg(), fps: 5 }, None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (config, web_port) = write_config(
        dir.path(),
        None,
        &format!(
            "[[cameras]]\nid = \"gate\"\nsource = {{ kind = \"rtsp\", url = \"{}\", stall_timeout_secs = 2 }}\n",
            server.url()
        ),
    );
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    wait_for_counter(web_port, "gate", "frames_captured", 2, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no frames from the RTSP camera; log:\n{}", agent.log_text()));

    // The TCP connection stays open but nothing arrives: only the watchdog can notice.
    server.freeze();
    let stalled = eventually(Duration::from_secs(30), || {
        camera_status(web_port, "gate")
            .and_then(|c| c["last_error"].as_str().map(str::to_string))
            .filter(|e| e.contains("stalled") && e.contains("no picture"))
    });
    assert!(stalled.is_some(), "the stall was not reported; log:\n{}", agent.log_text());
    let captured = counter(&camera_status(web_port, "gate").unwrap(), "frames_captured");
    server.thaw();
    let back = wait_for_counter(web_port, "gate", "frames_captured", captured, Duration::from_secs(30));
    assert!(back.is_some(), "no frames after the server thawed; log:\n{}", agent.log_text());
    drop(agent);
}

/// The sample clip with its media data scribbled over in the middle, headers intact.
fn damaged_clip(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(repo_root().join("tests/data/samples.mp4")).unwrap();
    let start = bytes.len() / 3;
    for (i, byte) in bytes[start..start + 30_000].iter_mut().enumerate() {
        *byte = (i.wrapping_mul(2654435761) >> 7) as u8;
    }
    let path = dir.join("damaged.mp4");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The built-in path (retina + OpenH264) counts each picture it cannot decode.
#[test]
fn a_corrupt_rtsp_stream_is_counted_not_a_crash() {
    corrupt_rtsp_stream_then_a_good_one("openh264", true);
}

/// Through GStreamer, FFmpeg's decoder conceals most damage; what it cannot is counted. Either
/// way the agent stays up and the camera recovers.
#[test]
fn a_corrupt_rtsp_stream_through_gstreamer_is_concealed_or_counted_not_a_crash() {
    corrupt_rtsp_stream_then_a_good_one("gstreamer", false);
}

fn corrupt_rtsp_stream_then_a_good_one(decoder: &str, decode_errors_expected: bool) {
    let dir = tempfile::tempdir().unwrap();
    let clip = damaged_clip(dir.path());
    let Some(mut server) = RtspServer::start(Stream::File(&clip), None) else { return };
    let (config, web_port) = write_config(
        dir.path(),
        None,
        &format!(
            "[[cameras]]\nid = \"gate\"\nsource = {{ kind = \"rtsp\", url = \"{}\", stall_timeout_secs = 2, \
             decoder = \"{decoder}\" }}\n",
            server.url()
        ),
    );
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));
    let camera = eventually(Duration::from_secs(60), || {
        camera_status(web_port, "gate").filter(|c| {
            c["last_error"].as_str().is_some_and(|e| e.contains("cannot decode")) || counter(c, "errors") >= 3
        })
    });
    let camera = camera.unwrap_or_else(|| panic!("the corrupt stream was not counted; log:\n{}", agent.log_text()));
    assert!(counter(&camera, "errors") > 0, "{camera}");
    assert!(agent.is_running(), "the agent died on a corrupt stream; log:\n{}", agent.log_text());
    if decode_errors_expected {
        assert!(log_contains(&agent.log, "cannot decode"), "no decode error logged:\n{}", agent.log_text());
    } else {
        assert!(counter(&camera, "frames_captured") > 0, "no picture from the damaged stream: {camera}");
    }
    // The decoder is named while a stream is open; between a stall and the reconnect it is not.
    let decoder_in_use = eventually(Duration::from_secs(30), || {
        camera_status(web_port, "gate").and_then(|c| c["decoder"].as_str().map(str::to_string))
    })
    .unwrap_or_default();
    assert!(
        decoder_in_use.contains(if decoder == "gstreamer" { "GStreamer" } else { "openh264" }),
        "decoder {decoder_in_use:?}; {camera}"
    );

    // The same camera serving a good stream again: pictures flow.
    let captured = counter(&camera_status(web_port, "gate").unwrap(), "frames_captured");
    server.switch_to(Stream::Picture { path: &dog_jpg(), fps: 5 });
    let back = wait_for_counter(web_port, "gate", "frames_captured", captured + 2, Duration::from_secs(60));
    assert!(back.is_some(), "no pictures from the repaired stream; log:\n{}", agent.log_text());
    assert!(agent.is_running());
    drop(agent);
}

#[test]
fn video_file_camera_gives_the_same_detections_as_the_picture() {
    let Some(broker) = Mosquitto::start() else { return };
    let expected = truck_in_dog_jpg();
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(
        dir.path(),
        Some(&broker.url()),
        &format!(
            "[[cameras]]\nid = \"clip\"\nsource = {{ kind = \"file\", path = \"{}\" }}\n",
            repo_root().join("tests/data/samples.mp4").display()
        ),
    );
    let subscriber = Subscriber::connect(broker.port, "edge/e2e-box/events");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    // The second half of the clip is coffee.png: its cup shows up too.
    let mut first = first_events_of(&subscriber, &["truck", "cup"], Duration::from_secs(60));
    let (truck, cup) = (first.remove("truck"), first.remove("cup"));
    let truck = truck.unwrap_or_else(|| panic!("no truck from the MP4 camera; log:\n{}", agent.log_text()));
    assert_eq!(truck["camera"], "clip");
    let found = event_box(&truck);
    assert!(iou(found, expected) >= 0.85, "MP4 truck {found:?} vs picture truck {expected:?}");
    assert!(cup.is_some(), "no cup from the MP4 camera; log:\n{}", agent.log_text());
    drop(agent);
}

/// The first event of each of `labels`, waiting until all came or the time is up. Each object
/// starts one incident, in an order that depends on the machine's speed.
fn first_events_of(
    subscriber: &Subscriber,
    labels: &[&str],
    timeout: Duration,
) -> std::collections::HashMap<String, serde_json::Value> {
    let mut first = std::collections::HashMap::new();
    subscriber.wait_for("/events", timeout, |e| {
        // The pickup is one event, a truck or a car: named "truck" here.
        let label = if is_the_pickup(e) { Some("truck") } else { e["label"].as_str() };
        if let Some(label) = label.filter(|l| labels.contains(l)) {
            first.entry(label.to_string()).or_insert_with(|| e.clone());
        }
        first.len() == labels.len()
    });
    first
}

#[test]
fn motion_gating_skips_inference_on_unchanged_frames_but_not_on_a_new_scene() {
    let Some(broker) = Mosquitto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The clip: 5 frames of dog.jpg, then 5 of coffee.png, looping; at 10 fps the scene changes
    // every half second and stands still in between.
    let (config, web_port) = write_config(
        dir.path(),
        Some(&broker.url()),
        &format!(
            "[[cameras]]\nid = \"clip\"\nsource = {{ kind = \"file\", path = \"{}\", fps = 10.0 }}\n\
             motion = {{ max_still_secs = 600 }}\n",
            repo_root().join("tests/data/samples.mp4").display()
        ),
    );
    let subscriber = Subscriber::connect(broker.port, "edge/e2e-box/events");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    let camera = wait_for_counter(web_port, "clip", "frames_captured", 40, Duration::from_secs(90))
        .unwrap_or_else(|| panic!("the clip camera stalled; log:\n{}", agent.log_text()));
    let (captured, still) = (counter(&camera, "frames_captured"), counter(&camera, "frames_still"));
    // 8 of every 10 frames repeat the one before (H.264 re-encoding noise stays under the threshold).
    assert!(still * 10 >= captured * 6, "only {still} of {captured} frames were still");
    assert!(counter(&camera, "frames_inferred") + still <= captured, "{camera}");
    let first = first_events_of(&subscriber, &["truck", "cup"], Duration::from_secs(60));
    assert!(
        first.len() == 2,
        "events through the motion gate: {:?}, expected a truck and a cup; log:\n{}",
        first.keys().collect::<Vec<_>>(),
        agent.log_text()
    );
    drop(agent);
}

#[test]
fn two_cameras_at_different_rates_share_a_slow_box_fairly_with_flat_memory() {
    let Some(broker) = Mosquitto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // "fast" sends far more frames than the detector can take; "slow" sends 2 a second.
    let (config, web_port) = write_config(
        dir.path(),
        Some(&broker.url()),
        &format!(
            "[[cameras]]\nid = \"fast\"\nsource = {{ kind = \"file\", path = \"{samples}\", fps = 25.0 }}\n\n\
             [[cameras]]\nid = \"slow\"\nsource = {{ kind = \"file\", path = \"{clip}\", fps = 2.0 }}\n",
            samples = repo_root().join("models/samples").display(),
            clip = repo_root().join("tests/data/samples.mp4").display(),
        ),
    );
    let subscriber = Subscriber::connect(broker.port, "edge/e2e-box/events");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    let mut events_seen = std::collections::BTreeMap::<String, u64>::new();
    let mut count_events = |until: Duration| {
        let deadline = Instant::now() + until;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Ok(message) = subscriber.messages.recv_timeout(left) {
                if let Ok(event) = serde_json::from_slice::<Value>(&message.payload) {
                    *events_seen.entry(event["camera"].as_str().unwrap_or("?").to_string()).or_default() += 1;
                }
            }
        }
    };

    // Warm up: both cameras running, frames being dropped on the fast one, and the allocator's
    // per-thread arenas and the models' scratch buffers at their working size.
    let warm = wait_for_counter(web_port, "fast", "frames_dropped", 20, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the fast camera never dropped frames; log:\n{}", agent.log_text()));
    let mut memory = vec![agent.resident_bytes().expect("agent RSS")];
    let mut fast = warm;
    for _ in 0..2 {
        let captured = counter(&fast, "frames_captured");
        fast = wait_for_counter(web_port, "fast", "frames_captured", captured + 150, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("the fast camera stalled; log:\n{}", agent.log_text()));
        memory.push(agent.resident_bytes().expect("agent RSS"));
    }
    eprintln!(
        "agent RSS at warm-up and after each 150 more frames: {:?} MB",
        memory.iter().map(|m| m >> 20).collect::<Vec<_>>()
    );
    count_events(Duration::from_secs(1));
    let slow = camera_status(web_port, "slow").unwrap();
    let memory_before = agent.resident_bytes().expect("agent RSS");

    // Then 150 more fast frames (≈ 200 MB of pictures if they were queued instead of dropped).
    let captured = counter(&fast, "frames_captured");
    let fast_after = wait_for_counter(web_port, "fast", "frames_captured", captured + 150, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the fast camera stalled; log:\n{}", agent.log_text()));
    count_events(Duration::from_secs(3));
    let slow_after = camera_status(web_port, "slow").unwrap();
    let memory_after = agent.resident_bytes().expect("agent RSS");
    eprintln!("agent RSS over the measured 150 frames: {} → {} MB", memory_before >> 20, memory_after >> 20);

    let delta = |after: &Value, before: &Value, name: &str| counter(after, name) - counter(before, name);
    assert!(delta(&fast_after, &fast, "frames_dropped") > 50, "fast drops: {fast} → {fast_after}");
    let (fast_inferred, slow_inferred) =
        (delta(&fast_after, &fast, "frames_inferred"), delta(&slow_after, &slow, "frames_inferred"));
    let slow_captured = delta(&slow_after, &slow, "frames_captured");
    assert!(fast_inferred > 0 && slow_inferred > 0, "both cameras inferred: {fast_inferred}, {slow_inferred}");
    // Round robin: the slow camera gets every frame it sends, up to an equal share.
    let fair_share = slow_captured.min(fast_inferred);
    assert!(
        slow_inferred * 10 + 20 >= fair_share * 8,
        "slow camera starved: inferred {slow_inferred} of {slow_captured} sent while fast got {fast_inferred}"
    );
    let growth = memory_after.saturating_sub(memory_before);
    assert!(growth < 32 << 20, "memory grew {} MB over 150 frames", growth >> 20);
    for camera in ["fast", "slow"] {
        assert!(events_seen.get(camera).copied().unwrap_or(0) >= 2, "events per camera: {events_seen:?}");
    }
    drop(agent);
}

#[test]
fn a_missing_usb_camera_is_reported_by_device_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (config, web_port) = write_config(
        dir.path(),
        None,
        "[[cameras]]\nid = \"bin\"\nsource = { kind = \"v4l2\", device = \"/dev/video7\", pixel_format = \"yuyv\" }\n",
    );
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));
    let camera = wait_for_counter(web_port, "bin", "errors", 0, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no camera error reported; log:\n{}", agent.log_text()));
    let error = camera["last_error"].as_str().unwrap_or_default().to_string();
    if error.contains("built without V4L2 support") {
        missing_real_part("an agent built with V4L2 support", "build with `--features edge-agent/v4l2`");
        return;
    }
    assert!(error.contains("bin") && error.contains("/dev/video7") && error.contains("does not exist"), "{error}");
    // Still retrying: the error count keeps rising while the agent stays up.
    let errors = counter(&camera, "errors");
    let retried = wait_for_counter(web_port, "bin", "errors", errors + 1, Duration::from_secs(30));
    assert!(retried.is_some(), "the camera task stopped retrying; log:\n{}", agent.log_text());
    assert!(agent.is_running());
    let (_, page) = http_get(&format!("http://127.0.0.1:{web_port}/")).unwrap();
    assert!(page.contains("/dev/video7"), "the page shows the camera error");
    drop(agent);
}
