//! Cameras with two streams, end to end: the built agent detecting on a real GStreamer RTSP
//! server's substream while it keeps the main stream for clips, a real mosquitto as the
//! platform, FFmpeg's ffprobe reading the clip, the agent's own `verify`; and each stream failing
//! alone while the other lives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_agent_tests::rtsp::{RtspServer, Stream};
use edge_agent_tests::*;
use serde_json::Value;

fn dog_jpg() -> PathBuf {
    repo_root().join("models/samples/dog.jpg")
}

/// A config with one camera `gate` whose source is `source`, people not blurred (its clips are
/// kept as the camera sent them), the detector, short clips.
fn write_config(dir: &Path, mqtt_url: &str, source: &str) -> (PathBuf, u16) {
    let web_port = free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"device_id = "streams-box"
state_dir = "state"

[web]
listen = "127.0.0.1:{web_port}"

[mqtt]
url = "{mqtt_url}"

[[cameras]]
id = "gate"
source = {source}

[scenes.gate]
blur_people = false

[[models]]
manifest = "{models}/nanodet.toml"
score_threshold = 0.3

[evidence.clips]
pre_roll_secs = 2
post_roll_secs = 1
max_secs = 6
"#,
            models = repo_root().join("models").display(),
        ),
    )
    .unwrap();
    (config, web_port)
}

fn camera_status(web_port: u16) -> Option<Value> {
    let (code, body) = http_get(&format!("http://127.0.0.1:{web_port}/api/status")).ok()?;
    if code != 200 {
        return None;
    }
    let status: Value = serde_json::from_str(&body).ok()?;
    status["cameras"].as_array()?.iter().find(|c| c["id"] == "gate").cloned()
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

/// Codec name, width and pictures decoded, from ffprobe.
fn ffprobe(path: &Path) -> (String, u64, u64) {
    let output = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=codec_name,width,nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("ffprobe is needed (Debian's ffmpeg; scripts/test.sh installs it): {e}"));
    assert!(output.status.success(), "ffprobe cannot read the clip: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
    (fields.first().unwrap_or(&"").to_string(), number(1), number(2))
}

/// The acceptance shape: `source = { kind = "rtsp", url = "<main>", detect_url = "<substream>" }`.
/// The 384×288 substream is decoded and judged (the truck where the picture has it, halved), its
/// pictures are the evidence; the 768×576 H.265 main stream is kept as it came for the clip and
/// never decoded; evidence and chain as with one stream.
#[test]
fn a_two_stream_camera_detects_on_its_substream_and_clips_its_main_stream() {
    let Some(server) = RtspServer::start(
        Stream::TwoStreams { path: &dog_jpg(), fps: 5, substream: (384, 288), main_h265: true },
        None,
    ) else {
        return;
    };
    let Some(broker) = Mosquitto::start() else { return };
    let expected = truck_in_dog_jpg().map(|v| v / 2.0);
    let dir = tempfile::tempdir().unwrap();
    let source = format!(
        r#"{{ kind = "rtsp", url = "{}", detect_url = "{}", fps = 2.0 }}"#,
        server.url(),
        server.substream_url()
    );
    let (config, web_port) = write_config(dir.path(), &broker.url(), &source);
    let platform = Subscriber::connect(broker.port, "edge/streams-box/#");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));

    let truck = platform.wait_for("/events", Duration::from_secs(90), is_the_pickup);
    let truck = truck.unwrap_or_else(|| panic!("no truck from the substream; log:\n{}", agent.log_text()));
    assert_eq!((truck["frame_width"].as_u64(), truck["frame_height"].as_u64()), (Some(384), Some(288)));
    let b = &truck["box"];
    let found =
        [b["x1"].as_f64().unwrap(), b["y1"].as_f64().unwrap(), b["x2"].as_f64().unwrap(), b["y2"].as_f64().unwrap()];
    assert!(iou(found, expected) >= 0.7, "substream truck {found:?} vs the picture's, halved, {expected:?}");
    let event_id = truck["event_id"].as_str().unwrap().to_string();

    // The evidence picture is the substream's.
    let evidence = dir.path().join("state/evidence");
    let day = walk(&evidence).into_iter().find(|f| f.contains(&event_id) && f.ends_with("-frame.jpg"));
    let picture = day.unwrap_or_else(|| panic!("no evidence picture of {event_id}"));
    let decoded = image::open(&picture).unwrap_or_else(|e| panic!("{picture}: {e}"));
    assert_eq!((decoded.width(), decoded.height()), (384, 288));

    // The clip is the main stream's, as it came.
    let record = platform
        .wait_for("/chain", Duration::from_secs(60), |proof| {
            let record: Value = proof["record"].as_str().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
            let covers = |id: &Value| id.as_str() == Some(event_id.as_str());
            record["record"] == "clip"
                && (covers(&record["event_id"]) || record["also"].as_array().is_some_and(|a| a.iter().any(covers)))
        })
        .and_then(|proof| proof["record"].as_str().and_then(|r| serde_json::from_str::<Value>(r).ok()))
        .unwrap_or_else(|| panic!("no clip record for {event_id}; log:\n{}", agent.log_text()));
    let clip = evidence.join(record["evidence"][0]["file"].as_str().unwrap());
    let (codec, width, pictures) = ffprobe(&clip);
    assert_eq!((codec.as_str(), width), ("hevc", 768), "the main stream's video as it came");
    assert!(pictures >= 10, "{pictures} pictures");

    // One decoder, the substream's; the main stream is kept, not decoded.
    let camera = camera_status(web_port).expect("camera status");
    let decoder = camera["decoder"].as_str().unwrap_or_default();
    assert!(decoder.contains("h264") && !decoder.contains("265"), "{camera}");
    assert_eq!(camera["record_stream"]["state"], "online", "{camera}");
    assert!(camera["record_stream"]["pictures_kept"].as_u64().unwrap_or(0) > 10, "{camera}");
    // The retained camera health, read now: it reports the record stream too.
    let health = Subscriber::connect(broker.port, "edge/streams-box/cameras/gate/health");
    let health = health.wait_for("/health", Duration::from_secs(10), |h| h["record_stream"]["state"] == "online");
    let health = health.unwrap_or_else(|| panic!("the camera health does not report its record stream"));
    matches_its_schema("edge/streams-box/cameras/gate/health", &health, dir.path());
    let log = agent.log_text();
    assert!(!log.contains("avdec_h265"), "the main stream was decoded:\n{log}");

    let verify = std::process::Command::new(agent_binary())
        .args(["verify", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stdout).to_string();
    assert!(verify.status.success() && !said.contains(" 0 clips"), "{said}");
    drop(agent);
}

/// Two servers, one per stream, so that each can die alone: a substream that dies while the main
/// stream lives is reported (the camera's pictures stop, its record stream stays online) and
/// comes back; then the main stream dies while the substream lives (pictures go on, the record
/// stream is offline) and comes back. Both on the page's status and the retained health topic.
#[test]
fn a_substream_or_a_main_stream_that_dies_alone_is_reported_and_recovers() {
    let Some(mut main) = RtspServer::start(Stream::Picture { path: &dog_jpg(), fps: 5 }, None) else { return };
    let Some(mut sub) = RtspServer::start(Stream::PictureAt { path: &dog_jpg(), fps: 5, size: (384, 288) }, None)
    else {
        return;
    };
    let Some(broker) = Mosquitto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let source =
        format!(r#"{{ kind = "rtsp", url = "{}", detect_url = "{}", stall_timeout_secs = 3 }}"#, main.url(), sub.url());
    let (config, web_port) = write_config(dir.path(), &broker.url(), &source);
    let health = Subscriber::connect(broker.port, "edge/streams-box/cameras/gate/health");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));
    let both_up = |c: &Value| c["frames_captured"].as_u64() > Some(2) && c["record_stream"]["state"] == "online";
    let camera = eventually(Duration::from_secs(60), || camera_status(web_port).filter(both_up))
        .unwrap_or_else(|| panic!("the two streams never came up; log:\n{}", agent.log_text()));
    let kept = camera["record_stream"]["pictures_kept"].as_u64().unwrap_or(0);

    // The substream dies: no more pictures, an error naming it; the main stream is still kept.
    sub.kill();
    let down = eventually(Duration::from_secs(30), || {
        camera_status(web_port).filter(|c| c["last_error"].as_str().is_some_and(|e| e.contains(&sub.url())))
    })
    .unwrap_or_else(|| panic!("the substream's death was not reported; log:\n{}", agent.log_text()));
    assert_eq!(down["record_stream"]["state"], "online", "{down}");
    let offline = health.wait_for("/health", Duration::from_secs(10), |h| h["state"] == "offline");
    let offline = offline.unwrap_or_else(|| panic!("no offline camera health; log:\n{}", agent.log_text()));
    assert_eq!(offline["record_stream"]["state"], "online", "{offline}");
    let still_kept = eventually(Duration::from_secs(10), || {
        camera_status(web_port).filter(|c| c["record_stream"]["pictures_kept"].as_u64() > Some(kept + 10))
    });
    assert!(still_kept.is_some(), "the main stream stopped with the substream");
    let captured = down["frames_captured"].as_u64().unwrap_or(0);
    sub.restart();
    let back = eventually(Duration::from_secs(40), || {
        camera_status(web_port).filter(|c| c["frames_captured"].as_u64() > Some(captured) && c["last_error"].is_null())
    });
    assert!(back.is_some(), "the substream never came back; log:\n{}", agent.log_text());

    // The main stream dies: pictures go on, the record stream is offline and says why.
    main.kill();
    let down = eventually(Duration::from_secs(30), || {
        camera_status(web_port).filter(|c| c["record_stream"]["state"] == "offline")
    })
    .unwrap_or_else(|| panic!("the main stream's death was not reported; log:\n{}", agent.log_text()));
    let error = down["record_stream"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains(&main.url()), "{down}");
    let reported = health.wait_for("/health", Duration::from_secs(10), |h| h["record_stream"]["state"] == "offline");
    assert!(
        reported.is_some_and(|h| h["state"] == "online"),
        "the health topic must say the record stream alone is down"
    );
    let captured = down["frames_captured"].as_u64().unwrap_or(0);
    let detecting = eventually(Duration::from_secs(10), || {
        camera_status(web_port).filter(|c| c["frames_captured"].as_u64() > Some(captured + 2))
    });
    assert!(detecting.is_some(), "the substream stopped with the main stream");
    let kept = down["record_stream"]["pictures_kept"].as_u64().unwrap_or(0);
    main.restart();
    let back = eventually(Duration::from_secs(40), || {
        camera_status(web_port).filter(|c| {
            c["record_stream"]["state"] == "online" && c["record_stream"]["pictures_kept"].as_u64() > Some(kept)
        })
    });
    assert!(back.is_some(), "the main stream never came back; log:\n{}", agent.log_text());
    drop(agent);
}

/// Validates a published message against docs/schemas through docs/asyncapi.yaml, as
/// tests/schemas.rs does (skipped where that Python is missing outside CI).
fn matches_its_schema(topic: &str, message: &Value, dir: &Path) {
    let python = std::env::var_os("EDGE_AGENT_SCHEMA_PYTHON").map(PathBuf::from).filter(|p| p.is_file());
    let Some(python) = python else {
        missing_real_part("Python with jsonschema (EDGE_AGENT_SCHEMA_PYTHON)", "run scripts/test.sh");
        return;
    };
    let messages = dir.join("health.jsonl");
    let line = serde_json::json!({ "topic": topic, "json": message, "jpeg": false });
    std::fs::write(&messages, format!("{line}\n")).unwrap();
    let output = std::process::Command::new(python)
        .arg(repo_root().join("scripts/validate_messages.py"))
        .arg(repo_root().join("docs"))
        .arg(&messages)
        .args(["--require", "cameraHealth"])
        .output()
        .expect("run the validator");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the camera health does not match its schema:\n{report}");
}

/// Every file under a folder, as text paths.
fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path.to_string_lossy().to_string());
            }
        }
    }
    files
}
