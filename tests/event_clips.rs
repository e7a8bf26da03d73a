//! Event clips end to end: the built agent reading a real GStreamer RTSP server, a real mosquitto as
//! the platform, FFmpeg's ffprobe as a reader other than the GStreamer that wrote the clip, the
//! agent's own `verify`, and headless Chromium playing the clip on the event's page.

mod web_support;

use std::path::Path;
use std::time::Duration;

use edge_agent_tests::rtsp::{RtspServer, Stream};
use edge_agent_tests::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use web_support::browser::*;
use web_support::ChromeDriver;

/// Two RTSP cameras on the same stream: `road` may be filmed as it is (`blur_people = false`, no
/// privacy zones), `station` keeps the default people-blurring (its clips are re-encoded masked,
/// at 320 pixels here). Short clips: 2 s before the event, at most 6 s in all.
fn write_config(dir: &Path, mqtt_url: &str, rtsp_url: &str) -> (std::path::PathBuf, u16) {
    write_config_with(dir, mqtt_url, rtsp_url, 6)
}

/// [`write_config`] with clips of at most `max_secs`.
fn write_config_with(dir: &Path, mqtt_url: &str, rtsp_url: &str, max_secs: u32) -> (std::path::PathBuf, u16) {
    let web_port = free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"device_id = "clip-box"
state_dir = "state"

[web]
listen = "127.0.0.1:{web_port}"

[mqtt]
url = "{mqtt_url}"

[[cameras]]
id = "road"
source = {{ kind = "rtsp", url = "{rtsp_url}", fps = 2.0, decoder = "gstreamer" }}

[[cameras]]
id = "station"
source = {{ kind = "rtsp", url = "{rtsp_url}", fps = 2.0, decoder = "gstreamer" }}

[scenes.road]
blur_people = false

[[models]]
manifest = "{models}/nanodet.toml"
score_threshold = 0.3

[evidence.clips]
pre_roll_secs = 2
post_roll_secs = 1
max_secs = {max_secs}
masked_width = 320
"#,
            models = repo_root().join("models").display(),
        ),
    )
    .unwrap();
    (config, web_port)
}

/// The first chain record of kind `clip` for `event_id` published on the chain topic.
fn clip_record(platform: &Subscriber, event_id: &str) -> Option<Value> {
    platform
        .wait_for("/chain", Duration::from_secs(60), |proof| {
            let record: Value = proof["record"].as_str().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
            let covers = |id: &Value| id.as_str() == Some(event_id);
            record["record"] == "clip"
                && (covers(&record["event_id"]) || record["also"].as_array().is_some_and(|a| a.iter().any(covers)))
        })
        .and_then(|proof| proof["record"].as_str().and_then(|r| serde_json::from_str(r).ok()))
}

/// Codec name, width and pictures decoded, from ffprobe.
fn ffprobe(path: &Path) -> (String, u64, u64) {
    let output = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=codec_name,width,nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => panic!("ffprobe is needed (Debian's ffmpeg; scripts/test.sh installs it): {e}"),
    };
    assert!(output.status.success(), "ffprobe cannot read the clip: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
    (fields.first().unwrap_or(&"").to_string(), number(1), number(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truck_on_a_road_camera_gets_a_clip_that_verifies_and_plays_on_its_page() {
    let dog = repo_root().join("models/samples/dog.jpg");
    let Some(server) = RtspServer::start(Stream::Picture { path: &dog, fps: 5 }, None) else { return };
    let Some(broker) = Mosquitto::start() else { return };
    let Some((driver, chromium)) = ChromeDriver::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (config, web_port) = write_config(dir.path(), &broker.url(), &server.url());
    // Two listeners, as waiting for one camera's messages passes over the other's.
    let platform = Subscriber::connect(broker.port, "edge/clip-box/#");
    let station_platform = Subscriber::connect(broker.port, "edge/clip-box/#");
    let agent = Agent::start(&config, &dir.path().join("agent.log"));

    let truck = platform.wait_for("/events", Duration::from_secs(90), |e| is_the_pickup(e) && e["camera"] == "road");
    let truck = truck.unwrap_or_else(|| panic!("no truck on the road camera; log:\n{}", agent.log_text()));
    let event_id = truck["event_id"].as_str().unwrap().to_string();

    // The clip is finished within its 6 s and recorded in the chain, published for the platform.
    let record = clip_record(&platform, &event_id)
        .unwrap_or_else(|| panic!("no clip record for {event_id}; log:\n{}", agent.log_text()));
    assert_eq!(record["camera"], "road");
    let file = &record["evidence"][0];
    let road_sha256 = file["sha256"].as_str().unwrap().to_string();
    let path = dir.path().join("state/evidence").join(file["file"].as_str().unwrap());
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        file["sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(&bytes)),
        "the clip is what the chain says"
    );
    assert_eq!(file["bytes"].as_u64(), Some(bytes.len() as u64));
    let from = chrono::DateTime::parse_from_rfc3339(record["from"].as_str().unwrap()).unwrap();
    let to = chrono::DateTime::parse_from_rfc3339(record["to"].as_str().unwrap()).unwrap();
    let seconds = (to - from).num_milliseconds() as f64 / 1000.0;
    // 6 s at most, plus up to one group of pictures (2 s) to start at a key frame.
    assert!((2.0..=8.5).contains(&seconds), "a clip of {seconds} s");
    let started = chrono::DateTime::parse_from_rfc3339(truck["time"].as_str().unwrap()).unwrap();
    assert!(from <= started, "the clip starts before the event: {from} vs {started}");

    // Another reader than the writer: FFmpeg decodes every picture of it.
    let (codec, width, pictures) = ffprobe(&path);
    assert_eq!((codec.as_str(), width), ("h264", 768), "the road camera's video as it came");
    assert!(pictures as f64 >= seconds * 5.0 * 0.8, "{pictures} pictures in {seconds} s at 5 frames/s");

    // The masked station camera's clip is re-encoded with its mask, smaller; no raw video stays.
    let station = station_platform
        .wait_for("/events", Duration::from_secs(60), |e| e["camera"] == "station" && e["state"] == "start");
    let station_id = station.expect("an event on the station camera")["event_id"].as_str().unwrap().to_string();
    let record = clip_record(&station_platform, &station_id)
        .unwrap_or_else(|| panic!("no masked clip for {station_id}; log:\n{}", agent.log_text()));
    let masked = dir.path().join("state/evidence").join(record["evidence"][0]["file"].as_str().unwrap());
    let (codec, width, masked_pictures) = ffprobe(&masked);
    assert_eq!((codec.as_str(), width), ("h264", 320), "re-encoded at masked_width");
    assert!(masked_pictures > 0);
    let raw_left = walk(&dir.path().join("state/clips-raw"));
    assert!(raw_left.is_empty(), "raw video of a masked camera stayed: {raw_left:?}");

    // The box's own check of its chain covers the clip.
    let verify = std::process::Command::new(agent_binary())
        .args(["verify", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stdout).to_string();
    assert!(verify.status.success(), "{said}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(!said.contains(" 0 clips"), "{said}");

    // The event's page plays it.
    let profile = tempfile::tempdir().unwrap();
    let browser = open_browser(&driver, &chromium, profile.path(), false, "en-US,en").await;
    browser.goto(&format!("http://127.0.0.1:{web_port}/events/{event_id}")).await.unwrap();
    wait_until(&browser, "document.getElementById('event-clip')", "the clip on the event's page").await;
    assert_eq!(text(&browser, "#clip-hash").await, road_sha256, "the page shows the clip's hash as the chain has it");
    browser
        .execute("const v = document.getElementById('event-clip'); v.muted = true; v.play().catch(e => window.playError = String(e));", vec![])
        .await
        .unwrap();
    let played = wait_until(
        &browser,
        "window.playError || (() => { const v = document.getElementById('event-clip'); \
         return v.currentTime > 0.5 && v.videoWidth === 768 && !v.error && 'playing ' + v.videoWidth + 'x' + v.videoHeight; })()",
        "the clip playing in the page",
    )
    .await;
    assert!(played.as_str().is_some_and(|s| s.starts_with("playing")), "{played}");
    eprintln!("clip of {event_id}: {seconds} s, {pictures} pictures ({codec}), {} bytes; page: {played}", bytes.len());
    let _ = browser.close().await;
    drop(agent);
}

/// The clip records of a stopped agent's chain, from its files.
fn chain_clip_records(state: &Path) -> Vec<Value> {
    let mut records = Vec::new();
    for file in walk(&state.join("evidence/chain")) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines() {
            let record: Value = serde_json::from_str(line).unwrap_or_default();
            if record["body"]["record"] == "clip" {
                records.push(record["body"].clone());
            }
        }
    }
    records
}

/// A camera whose encoder sends a key frame every 25 s with B-frames (x265's defaults, as the
/// "smart" H.265+ modes of IP cameras): its clips are recorded on the chain while the agent
/// runs, each within its `max_secs`, the masked one re-encoded too; and a stop while both
/// cameras' clips are being written ends within systemd's stop timeout (TimeoutStopSec = 20 s),
/// the clips cut short, recorded so, and playable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_gop_h265_camera_gets_clips_while_running_and_a_stop_cuts_them_short_in_time() {
    let dog = repo_root().join("models/samples/dog.jpg");
    let Some(server) = RtspServer::start(Stream::LongGopH265 { path: &dog, fps: 10 }, None) else { return };
    let Some(broker) = Mosquitto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config_with(dir.path(), &broker.url(), &server.url(), 6);
    let platform = Subscriber::connect(broker.port, "edge/clip-box/#");
    let station_platform = Subscriber::connect(broker.port, "edge/clip-box/#");
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));

    let truck = platform.wait_for("/events", Duration::from_secs(90), |e| is_the_pickup(e) && e["camera"] == "road");
    let truck = truck.unwrap_or_else(|| panic!("no truck on the road camera; log:\n{}", agent.log_text()));
    let seen_at = std::time::Instant::now();
    let event_id = truck["event_id"].as_str().unwrap().to_string();
    // The truck stays in view: its clip ends at max_secs (6 s), not when the agent stops.
    let record = clip_record(&platform, &event_id)
        .unwrap_or_else(|| panic!("no clip while the agent runs for {event_id}; log:\n{}", agent.log_text()));
    let waited = seen_at.elapsed();
    assert!(waited < Duration::from_secs(6 + 20), "the clip came {waited:?} after the event");
    assert!(record["cut_short"].is_null(), "{record}");
    let path = dir.path().join("state/evidence").join(record["evidence"][0]["file"].as_str().unwrap());
    let (codec, width, pictures) = ffprobe(&path);
    assert_eq!((codec.as_str(), width), ("hevc", 768), "the road camera's video as it came");
    assert!(pictures >= 10, "{pictures} pictures");
    let station =
        station_platform.wait_for("/events", Duration::from_secs(60), |e| e["camera"] == "station" && is_the_pickup(e));
    let station_id = station.expect("an event on the station camera")["event_id"].as_str().unwrap().to_string();
    let record = clip_record(&station_platform, &station_id)
        .unwrap_or_else(|| panic!("no masked clip for {station_id}; log:\n{}", agent.log_text()));
    let masked = dir.path().join("state/evidence").join(record["evidence"][0]["file"].as_str().unwrap());
    let (codec, width, masked_pictures) = ffprobe(&masked);
    assert_eq!((codec.as_str(), width), ("h264", 320), "re-encoded at masked_width");
    assert!(masked_pictures >= 5, "{masked_pictures} masked pictures");
    // Joined between two key frames, the camera's first pictures are not grey guesses.
    let log = agent.log_text();
    assert!(!log.contains("event tamper"), "a picture decoded without its key frame looked covered:\n{log}");
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(20)).is_some(), "no stop; log:\n{}", agent.log_text());
    let before = chain_clip_records(&dir.path().join("state")).len();

    // Again with clips of up to a minute: the stop comes while both are being written.
    let (config, _) = write_config_with(dir.path(), &broker.url(), &server.url(), 60);
    // One listener per camera: waiting for one camera's messages passes over the other's.
    let listeners = [
        ("road", Subscriber::connect(broker.port, "edge/clip-box/#")),
        ("station", Subscriber::connect(broker.port, "edge/clip-box/#")),
    ];
    let mut agent = Agent::start(&config, &dir.path().join("agent-2.log"));
    for (camera, platform) in &listeners {
        let started = platform.wait_for("/events", Duration::from_secs(90), |e| e["camera"] == *camera);
        assert!(started.is_some(), "no event on {camera}; log:\n{}", agent.log_text());
    }
    std::thread::sleep(Duration::from_secs(8));
    let raw = walk(&dir.path().join("state/clips-raw"));
    assert_eq!(raw.len(), 1, "the station camera's raw clip is being written: {raw:?}");
    let stop_at = std::time::Instant::now();
    agent.signal("TERM");
    let exited = agent.wait_exit(Duration::from_secs(20));
    assert!(exited.is_some(), "the agent did not stop within 20 s; log:\n{}", agent.log_text());
    let took = stop_at.elapsed();
    let records = chain_clip_records(&dir.path().join("state"));
    let cut: Vec<&Value> = records[before..].iter().collect();
    assert_eq!(cut.len(), 2, "both clips are recorded at the stop: {cut:?}\nlog:\n{}", agent.log_text());
    for record in &cut {
        let why = record["cut_short"].as_str().unwrap_or_default();
        assert!(why.contains("stopped"), "{record}");
        let file = dir.path().join("state/evidence").join(record["evidence"][0]["file"].as_str().unwrap());
        let (_, _, pictures) = ffprobe(&file);
        assert!(pictures > 0, "{record}: the cut clip plays");
    }
    assert!(walk(&dir.path().join("state/clips-raw")).is_empty(), "no raw video stays");
    let verify = std::process::Command::new(agent_binary())
        .args(["verify", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    eprintln!("long-GOP clip after {waited:?}; stop with two clips being written took {took:?}");
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
