//! `edge-agent check` end to end, through the real binary: on a good setup (a replay camera over the
//! sample pictures, the real detector, a real mosquitto with TLS and a password) every part passes,
//! the camera's frame is saved (people blurred) and the test message reaches the broker; on a broken
//! setup (missing replay folder and MP4 file, an RTSP camera on a closed port, a broker on the wrong
//! port, a model file with flipped bytes, a state folder that cannot exist) each broken part has its
//! own failure line naming it and its fix, and the exit code is 1.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use edge_agent_tests::*;

fn check(config: &Path, home: &Path, extra: &[&str]) -> Output {
    Command::new(agent_binary())
        .args(["check", "--config"])
        .arg(config)
        .args(extra)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .env("HOME", home)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agent_binary().display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// The table line of one check (lines start with the check's name).
fn line<'a>(stdout: &'a str, check: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{check} ")))
        .unwrap_or_else(|| panic!("no line for {check:?} in:\n{stdout}"))
}

fn result_of(line: &str) -> &str {
    ["pass", "warn", "fail", "skipped"]
        .into_iter()
        .find(|word| line.split_whitespace().any(|w| w == *word))
        .unwrap_or_else(|| panic!("no result in {line:?}"))
}

#[test]
fn check_passes_on_a_good_setup_with_tls_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(&dir.path().join("pki"), "check");
    let users = vec![("station-box".to_string(), "box-secret-pass".to_string())];
    let options = BrokerOptions { users, tls: Some(pki.broker_tls(true)), ..Default::default() };
    let Some(broker) = Mosquitto::start_with(options) else {
        return;
    };
    std::fs::write(dir.path().join("mqtt-password"), "box-secret-pass\n").unwrap();
    let samples = repo_root().join("models/samples");
    let cameras = [ReplayCamera { id: "gate", frames: &samples, fps: 2.0, looping: true }];
    let mqtt = format!(
        "url = \"{}\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\nusername = \"station-box\"\n\
         password_file = \"mqtt-password\"",
        broker.agent_url(),
        pki.ca_file.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let (config, _) = write_agent_config(dir.path(), "check-box", &mqtt, &cameras, "");
    let subscriber =
        Subscriber::connect_persistent_as_tester(broker.port, "edge/check-box/check", "check-cli-subscriber");
    std::thread::sleep(Duration::from_millis(500));

    let output = check(&config, dir.path(), &[]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for part in ["config", "state folder", "disk", "camera gate", "model nanodet", "broker"] {
        assert_eq!(result_of(line(&stdout, part)), "pass", "{part}:\n{stdout}");
    }
    // The box's clock may not be synchronised here: a warning, never a failure.
    assert_ne!(result_of(line(&stdout, "clock")), "fail", "{stdout}");
    assert!(stdout.contains("\nOK: "), "{stdout}");

    let frame = dir.path().join("state/check/gate.jpg");
    assert!(line(&stdout, "camera gate").contains(&frame.display().to_string()), "{stdout}");
    let picture = std::fs::read(&frame).unwrap();
    assert!(picture.starts_with(&[0xFF, 0xD8, 0xFF]), "a JPEG");
    let model = line(&stdout, "model nanodet");
    assert!(model.contains("self-test on 3 pictures") && model.contains("camera gate:"), "{model}");
    let broker_line = line(&stdout, "broker");
    assert!(broker_line.starts_with("broker ") && broker_line.contains(&broker.agent_url()), "{broker_line}");
    assert!(broker_line.contains("mqtts://") && broker_line.contains("TLS, CA"), "{broker_line}");
    assert!(broker_line.contains("user station-box") && broker_line.contains("client certificate"), "{broker_line}");
    assert!(broker_line.contains("edge/check-box/check") && !broker_line.contains("box-secret-pass"), "{broker_line}");

    let message = subscriber.wait_for("/check", Duration::from_secs(10), |_| true).expect("the test message");
    assert_eq!(message["device"], "check-box");
    assert_eq!(message["schema_version"], 1);
}

#[test]
fn check_names_each_broken_part_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    // A model file with flipped bytes next to a copy of its manifest, which pins the real sha256.
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let mut onnx = std::fs::read(repo_root().join("models/nanodet.onnx")).unwrap();
    for byte in onnx.iter_mut().skip(4096).step_by(997).take(64) {
        *byte ^= 0x5a;
    }
    std::fs::write(models.join("nanodet.onnx"), onnx).unwrap();
    for file in ["nanodet.toml", "coco_labels.txt"] {
        std::fs::copy(repo_root().join("models").join(file), models.join(file)).unwrap();
    }
    // A state folder under a regular file cannot be created, even by root.
    std::fs::write(dir.path().join("occupied"), "a file, not a folder\n").unwrap();
    let (rtsp_port, broker_port) = (free_port(), free_port());
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"broken-box\"\nstate_dir = \"occupied/state\"\n\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\n\n\
             [[models]]\nmanifest = \"models/nanodet.toml\"\n\n\
             [[cameras]]\nid = \"yard\"\nsource = {{ kind = \"replay\", path = \"no-such-folder\" }}\n\n\
             [[cameras]]\nid = \"clip\"\nsource = {{ kind = \"file\", path = \"missing.mp4\" }}\n\n\
             [[cameras]]\nid = \"door\"\nsource = {{ kind = \"rtsp\", url = \"rtsp://admin:cam-secret@127.0.0.1:{rtsp_port}/stream1\" }}\n"
        ),
    )
    .unwrap();

    let started = std::time::Instant::now();
    let output = check(&config, dir.path(), &["--timeout", "10"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert!(!stdout.contains("cam-secret") && !stderr.contains("cam-secret"), "{stdout}{stderr}");

    let config_file = config.display().to_string();
    let expectations: [(&str, &[&str]); 6] = [
        ("state folder", &["occupied/state", "`state_dir`"]),
        ("camera yard", &["no-such-folder", "`cameras[0].source.path`"]),
        ("camera clip", &["missing.mp4", "`cameras[1].source.path`"]),
        ("camera door", &["rtsp://admin:***@127.0.0.1", "`cameras[2].source.url`"]),
        ("model nanodet", &["sha256", "nanodet.onnx", "copy"]),
        ("broker", &[&format!("mqtt://127.0.0.1:{broker_port}"), "`mqtt.url`"]),
    ];
    for (part, words) in expectations {
        let line = line(&stdout, part);
        assert_eq!(result_of(line), "fail", "{line}");
        let (detail, fix) = line.split_once(" — fix: ").unwrap_or_else(|| panic!("no fix in {line:?}"));
        assert!(detail.starts_with(part), "{line}");
        for word in words {
            assert!(line.contains(word), "{part}: {word:?} missing in {line:?}");
        }
        if part != "model nanodet" {
            assert!(fix.contains(&config_file), "{part}: the fix names the config file: {fix}");
        }
    }
    assert!(stdout.contains("FAILED: 6 of"), "{stdout}");
    assert!(stderr.contains("check failed: state folder, camera yard, camera clip, camera door"), "{stderr}");
}

#[test]
fn check_without_a_broker_skips_it_blurs_people_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let frames = frames_folder(dir.path(), "bins", "person.jpg", 1);
    let cameras = [ReplayCamera { id: "bins", frames: &frames, fps: 2.0, looping: false }];
    let video = repo_root().join("tests/data/samples.mp4");
    let extra =
        format!("[[cameras]]\nid = \"video\"\nsource = {{ kind = \"file\", path = \"{}\" }}\n", video.display());
    let (config, _) = write_agent_config(dir.path(), "quiet-box", "", &cameras, &extra);
    let output = check(&config, dir.path(), &["--json"]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    let broker = checks.iter().find(|c| c["check"] == "broker").unwrap();
    assert_eq!(broker["result"], "skipped");
    assert!(broker["detail"].as_str().unwrap().starts_with("(no mqtt.url)"), "{broker}");
    let camera = checks.iter().find(|c| c["check"] == "camera bins").unwrap();
    assert_eq!(camera["result"], "pass", "{camera}");
    // Saved like every stored picture: the person the detector found is blurred.
    let detail = camera["detail"].as_str().unwrap();
    assert!(detail.contains("state/check/bins.jpg") && detail.contains("blurred)"), "{detail}");
    assert!(dir.path().join("state/check/bins.jpg").is_file());
    // A video camera: the decoder that made its picture (hardware or software, by name), and what
    // inference looks at.
    let video = checks.iter().find(|c| c["check"] == "camera video").unwrap();
    let detail = video["detail"].as_str().unwrap();
    assert_eq!(video["result"], "pass", "{video}");
    assert!(detail.contains("decoded by ") && (detail.contains("software") || detail.contains("hardware")), "{detail}");
    assert!(detail.contains("inference: every frame, whole"), "{detail}");
}
