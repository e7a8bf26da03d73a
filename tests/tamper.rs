//! Camera tamper end to end: the built agent watching a real GStreamer RTSP camera and reporting
//! through a real mosquitto. The installer saves the camera's view with `edge-agent tamper
//! reference`; the camera is then covered (a near-black picture), put out of focus and turned
//! away, and each time fixed: each condition starts one `tamper` event, with the frame and the
//! reference picture as evidence, and ends it once the view is back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_agent_tests::rtsp::{RtspServer, Stream};
use edge_agent_tests::*;
use image::RgbImage;
use serde_json::Value;

/// How long a condition must hold, and be gone, in this test (the defaults are 10 s and 5 s).
const AFTER_SECS: f64 = 4.0;
const CLEAR_SECS: f64 = 3.0;

fn dog_jpg() -> PathBuf {
    repo_root().join("models/samples/dog.jpg")
}

fn dog() -> RgbImage {
    image::open(dog_jpg()).expect("models/samples/dog.jpg").to_rgb8()
}

fn save(dir: &Path, name: &str, picture: &RgbImage) -> PathBuf {
    let path = dir.join(name);
    picture.save(&path).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// The lens covered: the scene at 3 % of its light.
fn covered(picture: &RgbImage) -> RgbImage {
    let mut out = picture.clone();
    for pixel in out.pixels_mut() {
        for c in pixel.0.iter_mut() {
            *c = (f32::from(*c) * 0.03).round() as u8;
        }
    }
    out
}

/// The camera turned sideways by a sixth of the frame.
fn turned(picture: &RgbImage) -> RgbImage {
    let (width, height) = picture.dimensions();
    RgbImage::from_fn(width, height, |x, y| *picture.get_pixel((x + width / 6) % width, y))
}

/// The agent's config; `learn_secs` for the first stable view (the default is a minute); `frozen`
/// on only where the camera is live (the other tests' server loops one still picture: frozen by
/// definition).
fn write_config(dir: &Path, mqtt_url: &str, rtsp_url: &str, learn_secs: f64, frozen: bool) -> (PathBuf, u16) {
    let web_port = free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"e2e-box\"\nstate_dir = \"state\"\n\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n\n\
             [mqtt]\nurl = \"{mqtt_url}\"\n\n\
             [[cameras]]\nid = \"gate\"\nsource = {{ kind = \"rtsp\", url = \"{rtsp_url}\", fps = 2.0 }}\n\n\
             [[models]]\nmanifest = \"{models}/nanodet.toml\"\nscore_threshold = 0.3\n\n\
             # Only tamper events matter here.\n[rules.object]\nenabled = false\n\n\
             [tamper]\nlearn_secs = {learn_secs}\nclear_secs = {CLEAR_SECS}\n[tamper.covered]\nafter_secs = {AFTER_SECS}\n\
             [tamper.defocused]\nafter_secs = {AFTER_SECS}\n[tamper.turned_away]\nafter_secs = {AFTER_SECS}\n\
             [tamper.frozen]\nenabled = {frozen}\nafter_secs = {AFTER_SECS}\n",
            models = repo_root().join("models").display(),
        ),
    )
    .unwrap();
    (config, web_port)
}

/// The installer saves camera `gate`'s current view as its reference (`edge-agent tamper
/// reference`, 3 s); returns what the command printed.
fn save_installer_reference(config: &Path) -> String {
    let output = std::process::Command::new(agent_binary())
        .args(["tamper", "reference", "--camera", "gate", "--secs", "3", "--config"])
        .arg(config)
        .output()
        .expect("run edge-agent tamper reference");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{printed}");
    printed
}

fn frames_captured(web_port: u16) -> u64 {
    let Ok((200, body)) = http_get(&format!("http://127.0.0.1:{web_port}/api/status")) else { return 0 };
    let status: Value = serde_json::from_str(&body).unwrap_or_default();
    status["cameras"]
        .as_array()
        .and_then(|cameras| cameras.iter().find(|c| c["id"] == "gate"))
        .and_then(|camera| camera["frames_captured"].as_u64())
        .unwrap_or(0)
}

/// The evidence files of an event message.
fn evidence_files(event: &Value) -> Vec<String> {
    let files = event["evidence"]["files"].as_array().map(Vec::as_slice).unwrap_or_default();
    files.iter().filter_map(|f| f["file"].as_str().map(String::from)).collect()
}

/// Every tamper event message that arrives, kept in order.
struct TamperEvents<'a> {
    subscriber: &'a Subscriber,
    seen: Vec<Value>,
}

impl TamperEvents<'_> {
    /// Waits for a tamper message that `accept` takes; every tamper message on the way is kept.
    fn wait_for(&mut self, timeout: Duration, accept: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(message) = self.subscriber.messages.recv_timeout(left) else { return None };
            let Ok(event) = serde_json::from_slice::<Value>(&message.payload) else { continue };
            if event["kind"] != "tamper" {
                continue;
            }
            self.seen.push(event.clone());
            if accept(&event) {
                return Some(event);
            }
        }
        None
    }

    /// (state, condition) of every tamper message so far.
    fn said(&self) -> Vec<(String, String)> {
        self.seen
            .iter()
            .map(|e| (e["state"].as_str().unwrap_or("?").to_string(), e["label"].as_str().unwrap_or("?").to_string()))
            .collect()
    }
}

#[test]
fn a_camera_covered_defocused_and_turned_away_starts_one_tamper_event_each_that_ends_once_fixed() {
    let Some(broker) = Mosquitto::start() else { return };
    let Some(mut server) = RtspServer::start(Stream::Picture { path: &dog_jpg(), fps: 5 }, None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (config, web_port) = write_config(dir.path(), &broker.url(), &server.url(), 60.0, false);

    // The installer saves the view as the camera's reference.
    let printed = save_installer_reference(&config);
    assert!(printed.contains("saved the tamper reference of camera gate"), "{printed}");
    let reference_file = dir.path().join("state/tamper/gate.json");
    let reference: Value =
        serde_json::from_slice(&std::fs::read(&reference_file).expect("the reference file")).unwrap();
    assert_eq!(reference["origin"], "installer");
    assert_eq!((reference["frame_width"].as_u64(), reference["frame_height"].as_u64()), (Some(768), Some(576)));
    let reference_picture = std::fs::read(dir.path().join("state/tamper/gate.jpg")).expect("the reference picture");

    let subscriber = Subscriber::connect(broker.port, "edge/e2e-box/events");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    let mut events = TamperEvents { subscriber: &subscriber, seen: Vec::new() };
    assert!(
        eventually(Duration::from_secs(60), || (frames_captured(web_port) >= 4).then_some(())).is_some(),
        "no frames from the RTSP camera; log:\n{}",
        agent.log_text()
    );
    // The view the installer saved is no tamper.
    assert!(events.wait_for(Duration::from_secs(8), |_| true).is_none(), "{:?}", events.said());

    let blurred = image::imageops::blur(&dog(), 5.0);
    let views = [
        ("covered", save(dir.path(), "covered.jpg", &covered(&dog()))),
        ("defocused", save(dir.path(), "defocused.jpg", &blurred)),
        ("turned_away", save(dir.path(), "turned.jpg", &turned(&dog()))),
    ];
    let mut incidents = Vec::new();
    for (condition, picture) in &views {
        server.switch_to(Stream::Picture { path: picture, fps: 5 });
        let start = events.wait_for(Duration::from_secs(90), |e| e["state"] == "start");
        let start = start.unwrap_or_else(|| {
            panic!("no tamper start for {condition}: {:?}; log:\n{}", events.said(), agent.log_text())
        });
        assert_eq!(start["label"], *condition, "{:?}", events.said());
        assert_eq!(start["camera"], "gate");
        assert_eq!(start["box"], serde_json::json!({"x1": 0, "y1": 0, "x2": 768, "y2": 576}), "the whole frame");
        let files = evidence_files(&start);
        assert!(
            files.len() == 2 && files[0].ends_with("-frame.jpg") && files[1].ends_with("-reference.jpg"),
            "the frame and the reference picture: {files:?}"
        );
        let kept = std::fs::read(dir.path().join("state/evidence").join(&files[1])).expect("the kept reference");
        assert_eq!(kept, reference_picture, "the evidence holds the installer's reference picture");

        server.switch_to(Stream::Picture { path: &dog_jpg(), fps: 5 });
        let event_id = start["event_id"].clone();
        let end = events.wait_for(Duration::from_secs(90), |e| e["state"] == "end");
        let end = end.unwrap_or_else(|| {
            panic!("{condition} did not end once fixed: {:?}; log:\n{}", events.said(), agent.log_text())
        });
        assert_eq!(end["event_id"], event_id, "{:?}", events.said());
        assert_eq!(end["label"], *condition);
        assert!(end["duration_secs"].as_f64().unwrap_or(0.0) >= AFTER_SECS, "{end}");
        incidents.push(event_id);
    }
    // Nothing more once the view is back.
    assert!(events.wait_for(Duration::from_secs(8), |_| true).is_none(), "{:?}", events.said());
    let expected: Vec<(String, String)> = views
        .iter()
        .flat_map(|(condition, _)| {
            [("start".to_string(), condition.to_string()), ("end".into(), condition.to_string())]
        })
        .collect();
    assert_eq!(events.said(), expected, "one start and one end per condition");
    incidents.dedup();
    assert_eq!(incidents.len(), views.len(), "one incident per condition");
    assert_eq!(
        std::fs::read(&reference_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|r| r["origin"].clone()),
        Some(Value::from("installer")),
        "the agent keeps the installer's reference"
    );
    drop(agent);
}

#[test]
fn a_camera_without_a_reference_learns_its_first_stable_view_and_then_reports_a_cover() {
    let Some(broker) = Mosquitto::start() else { return };
    let Some(mut server) = RtspServer::start(Stream::Picture { path: &dog_jpg(), fps: 5 }, None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path(), &broker.url(), &server.url(), 5.0, false);
    let subscriber = Subscriber::connect(broker.port, "edge/e2e-box/events");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    let mut events = TamperEvents { subscriber: &subscriber, seen: Vec::new() };

    let reference_file = dir.path().join("state/tamper/gate.json");
    let learnt = eventually(Duration::from_secs(90), || {
        std::fs::read(&reference_file).ok().and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
    });
    let learnt = learnt.unwrap_or_else(|| panic!("no reference learnt; log:\n{}", agent.log_text()));
    assert_eq!(learnt["origin"], "auto");
    let reference_picture = std::fs::read(dir.path().join("state/tamper/gate.jpg")).expect("its picture");
    assert!(image::load_from_memory(&reference_picture).is_ok_and(|p| p.width() == 768), "a JPEG of the view");

    let covered_picture = save(dir.path(), "covered.jpg", &covered(&dog()));
    server.switch_to(Stream::Picture { path: &covered_picture, fps: 5 });
    let start = events.wait_for(Duration::from_secs(90), |e| e["state"] == "start");
    let start = start.unwrap_or_else(|| panic!("no tamper start: {:?}; log:\n{}", events.said(), agent.log_text()));
    assert_eq!(start["label"], "covered");
    let files = evidence_files(&start);
    assert_eq!(files.len(), 2, "{files:?}");
    let kept = std::fs::read(dir.path().join("state/evidence").join(&files[1])).expect("the kept reference");
    assert_eq!(kept, reference_picture, "the evidence holds the learnt reference picture");
    server.switch_to(Stream::Picture { path: &dog_jpg(), fps: 5 });
    let end = events.wait_for(Duration::from_secs(90), |e| e["state"] == "end");
    let end = end.unwrap_or_else(|| panic!("no tamper end: {:?}; log:\n{}", events.said(), agent.log_text()));
    assert_eq!(end["event_id"], start["event_id"]);
    assert_eq!(events.said(), [("start".to_string(), "covered".to_string()), ("end".into(), "covered".into())]);
    drop(agent);
}

/// A live camera (fresh noise in every frame over a still scene) whose picture freezes: the same
/// frame again and again while the stream goes on, as when a camera's encoder hangs or someone
/// replays a recording. One `frozen` event, ended once the camera is live again.
#[test]
fn a_live_camera_whose_picture_freezes_starts_one_frozen_event_that_ends_when_it_is_live_again() {
    let Some(broker) = Mosquitto::start() else { return };
    let live = Stream::NoisyPicture { path: &dog_jpg(), fps: 5, size: (768, 576) };
    let Some(mut server) = RtspServer::start(live, None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (config, web_port) = write_config(dir.path(), &broker.url(), &server.url(), 60.0, true);
    save_installer_reference(&config);
    let reference: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/tamper/gate.json")).expect("the reference"))
            .unwrap();
    assert!(reference["noise"].as_f64().is_some_and(|n| n > 0.0), "the live camera's noise is learnt: {reference}");

    let subscriber = Subscriber::connect(broker.port, "edge/e2e-box/events");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    let mut events = TamperEvents { subscriber: &subscriber, seen: Vec::new() };
    assert!(
        eventually(Duration::from_secs(60), || (frames_captured(web_port) >= 4).then_some(())).is_some(),
        "no frames from the RTSP camera; log:\n{}",
        agent.log_text()
    );
    assert!(events.wait_for(Duration::from_secs(8), |_| true).is_none(), "a live camera: {:?}", events.said());

    // The same picture without its noise: every frame identical.
    server.switch_to(Stream::Picture { path: &dog_jpg(), fps: 5 });
    let start = events.wait_for(Duration::from_secs(90), |e| e["state"] == "start");
    let start = start.unwrap_or_else(|| panic!("no tamper start: {:?}; log:\n{}", events.said(), agent.log_text()));
    assert_eq!(start["label"], "frozen", "{:?}", events.said());
    let files = evidence_files(&start);
    assert!(files.len() == 2 && files[1].ends_with("-reference.jpg"), "{files:?}");

    server.switch_to(Stream::NoisyPicture { path: &dog_jpg(), fps: 5, size: (768, 576) });
    let end = events.wait_for(Duration::from_secs(90), |e| e["state"] == "end");
    let end = end.unwrap_or_else(|| panic!("frozen did not end: {:?}; log:\n{}", events.said(), agent.log_text()));
    assert_eq!(end["event_id"], start["event_id"]);
    assert!(events.wait_for(Duration::from_secs(6), |_| true).is_none(), "{:?}", events.said());
    assert_eq!(events.said(), [("start".to_string(), "frozen".to_string()), ("end".into(), "frozen".into())]);
    drop(agent);
}
