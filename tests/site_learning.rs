//! The box learns its site from the installer page's API, against the real agent: an admin trains
//! a site head on the site's labelled crops (stand-ins cut from real photos, see
//! `stand_in_site`), reads its held-out figures and report, and deploys it as the taxonomy
//! classifier. The head is self-tested, switched in while the camera runs, passes its probation on
//! the cups the camera sees in a bin zone, and the wrong_bin events then name it by its sha256. A
//! viewer may not train; a slot whose labels the head lacks is refused and changes nothing.

mod web_support;

use std::time::Duration;

use edge_agent_tests::*;
use serde_json::{json, Value};
use web_support::*;

/// An agent whose camera sees a cup in a kitchen bin, then nothing, twice a second (each cup is a
/// new item to classify), with the stand-in sample set as its site's samples.
fn start_agent(dir: &std::path::Path) -> (Agent, String) {
    stand_in_site(dir, |_| true);
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::copy(repo_root().join("calibration/example-site/samples/coffee.png"), frames.join("a-cup.png")).unwrap();
    image::RgbImage::from_pixel(600, 400, image::Rgb([128, 128, 128])).save(frames.join("b-nothing.png")).unwrap();
    let port = free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"device_id = "learning-box"
state_dir = "state"

[site]
calibration = "site.toml"

[web]
listen = "127.0.0.1:{port}"
users = [
  {{ name = "{admin}", password_hash = "{admin_hash}", role = "admin" }},
  {{ name = "{viewer}", password_hash = "{viewer_hash}", role = "viewer" }},
]

[model_update]
probation_secs = 3

[[cameras]]
id = "station"
source = {{ kind = "replay", path = "frames", fps = 2.0 }}

[[models]]
manifest = "{models}/nanodet.toml"
score_threshold = 0.3

[tracking]
max_lost_secs = 0.3
stationary_memory_secs = 0.0

[rules.wrong_bin]
min_duration_secs = 0.0

[[scenes.station.zones]]
id = "kitchen-bin"
role = "bin"
category = "kitchen"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
"#,
            admin = ADMIN.0,
            admin_hash = password_hash(ADMIN.1),
            viewer = VIEWER.0,
            viewer_hash = password_hash(VIEWER.1),
            models = repo_root().join("models").display(),
        ),
    )
    .unwrap();
    let agent = Agent::start(&config, &dir.join("agent.log"));
    assert!(wait_for_port(port, Duration::from_secs(60)), "no web page on {port}; log:\n{}", agent.log_text());
    (agent, format!("http://127.0.0.1:{port}"))
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {} {}", reply.status, reply.body))
}

#[test]
fn an_admin_trains_a_site_head_on_the_page_and_deploys_it_through_probation() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, base) = start_agent(dir.path());
    let admin = HttpSession::login(&base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let viewer = HttpSession::login(&base, VIEWER.0, VIEWER.1).unwrap_or_else(|r| panic!("login: {}", r.body));

    let before = json_of(&admin.get("/api/v1/learn"));
    assert_eq!(before["samples"]["counts"], json!({ "kitchen": 24, "recyclable": 24, "residual": 12 }), "{before}");
    assert!(before["running"].is_null() && before["last"].is_null() && before["deployment"].is_null(), "{before}");

    let refused = viewer.send_json("post", "/api/v1/learn", &json!({}), Some(&viewer.csrf));
    assert_eq!(refused.status, 403, "a viewer may not train: {}", refused.body);
    let bad_name = admin.send_json("post", "/api/v1/learn", &json!({ "name": "../x" }), Some(&admin.csrf));
    assert_eq!(bad_name.status, 400, "{}", bad_name.body);
    assert!(bad_name.body.contains("`name`"), "{}", bad_name.body);
    let one_class = admin.send_json("post", "/api/v1/learn", &json!({ "labels": ["kitchen"] }), Some(&admin.csrf));
    assert_eq!(one_class.status, 422, "one class is refused before anything runs: {}", one_class.body);

    let started = admin.send_json("post", "/api/v1/learn", &json!({ "name": "site_garbage" }), Some(&admin.csrf));
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(json_of(&started)["crops"], 60);
    let again = admin.send_json("post", "/api/v1/learn", &json!({}), Some(&admin.csrf));
    assert_eq!(again.status, 409, "one training at a time: {}", again.body);

    let mut progress_seen = false;
    let trained = eventually(Duration::from_secs(240), || {
        let status = json_of(&admin.get("/api/v1/learn"));
        if status["running"]["done"].as_u64().is_some_and(|done| done > 0) {
            progress_seen = true;
        }
        status["last"].is_object().then(|| status["last"].clone())
    })
    .unwrap_or_else(|| panic!("no training finished in 240 s; log:\n{}", agent.log_text()));
    assert!(trained["error"].is_null(), "{trained}");
    assert!(progress_seen, "the page saw the training's progress");
    let accuracy = trained["learned"]["held_out_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}: {trained}");
    assert!(trained["summary"].as_str().unwrap().contains("precision"), "{trained}");
    let sha256 = trained["sha256"].as_str().unwrap().to_string();
    let manifest = trained["manifest"].as_str().unwrap().to_string();
    assert!(manifest.contains("/state/learned/site_garbage-"), "{manifest}");
    let picture = admin.get("/api/v1/learn/report/confusion.svg");
    assert_eq!((picture.status, picture.content_type.as_str()), (200, "image/svg+xml"));
    assert!(picture.body.contains("<svg"), "{}", picture.body);
    assert_eq!(admin.get("/api/v1/learn/report/..%2Fsite_garbage.onnx").status, 404, "only the report's files");

    // Its labels are categories, not the overflow rule's: refused there, and nothing changed.
    let config_file = dir.path().join("agent.toml");
    let config_before = std::fs::read_to_string(&config_file).unwrap();
    let wrong_slot =
        admin.send_json("post", "/api/v1/learn/deploy", &json!({ "slot": "overflow_state" }), Some(&admin.csrf));
    assert_eq!(wrong_slot.status, 422, "{}", wrong_slot.body);
    assert!(wrong_slot.body.contains("state_classifier"), "{}", wrong_slot.body);
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), config_before, "a refusal changes nothing");

    let deployed = admin.send_json("post", "/api/v1/learn/deploy", &json!({ "slot": "taxonomy" }), Some(&admin.csrf));
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    let deployment = json_of(&deployed);
    assert_eq!(
        (deployment["stage"].as_str(), deployment["sha256"].as_str()),
        (Some("probation"), Some(sha256.as_str()))
    );
    assert!(deployment["self_test"]["pictures"].as_u64().unwrap_or(0) > 0, "{deployment}");
    let written = std::fs::read_to_string(&config_file).unwrap();
    assert!(written.contains(&format!("classifier = \"{manifest}\"")), "the config file names the head:\n{written}");
    assert!(dir.path().join("state/model-switch-pending.json").exists(), "a crash now would roll it back");

    let confirmed = eventually(Duration::from_secs(60), || {
        let status = json_of(&admin.get("/api/v1/learn"));
        let stage = status["deployment"]["stage"].as_str()?.to_string();
        (stage != "probation").then_some(status["deployment"].clone())
    })
    .unwrap_or_else(|| panic!("the probation never ended; log:\n{}", agent.log_text()));
    assert_eq!(confirmed["stage"], "confirmed", "{confirmed}\nlog:\n{}", agent.log_text());
    assert!(!dir.path().join("state/model-switch-pending.json").exists());

    // The cups in the kitchen bin are now named by the head: its name and sha256 in the events.
    let named = eventually(Duration::from_secs(60), || {
        let events = json_of(&admin.get("/api/v1/events?limit=20"));
        events["events"]
            .as_array()?
            .iter()
            .map(|e| e["event"].clone())
            .find(|e| e["classifier"]["sha256"] == sha256.as_str())
    })
    .unwrap_or_else(|| panic!("no event named the head; log:\n{}", agent.log_text()));
    assert_eq!(
        (named["kind"].as_str(), named["classifier"]["name"].as_str()),
        (Some("wrong_bin"), Some("site_garbage"))
    );
    assert_eq!(named["category"], "residual", "the head calls the coffee cup residual: {named}");
}

/// The same through the page, in a real browser: the admin presses Train, watches it finish with
/// its figures, picks the slot and presses Deploy; the probation ends confirmed on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_installer_page_an_admin_trains_and_deploys_with_two_buttons() {
    use fantoccini::Locator;
    use web_support::browser::*;

    let Some((driver, chromium)) = ChromeDriver::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (agent, base) = start_agent(dir.path());
    let profile = tempfile::tempdir().unwrap();
    let browser = open_browser(&driver, &chromium, profile.path(), false, "en-US,en").await;
    let shots = screenshot_dir("learning");
    log_in(&browser, &base, ADMIN.0, ADMIN.1).await;
    browser.goto(&format!("{base}/installer")).await.unwrap();
    let counts = wait_until(
        &browser,
        "document.getElementById('learning-counts').textContent.includes('kitchen 24') && document.getElementById('learning-counts').textContent",
        "the sample counts",
    )
    .await;
    assert!(counts.as_str().unwrap().contains("residual 12"), "{counts}");

    browser.find(Locator::Css("#learn-train")).await.unwrap().click().await.unwrap();
    let trained = wait_until(
        &browser,
        "!document.getElementById('learn-deploy-row').hidden && document.getElementById('learn-message').textContent",
        "the training to finish",
    )
    .await;
    assert!(trained.as_str().unwrap().starts_with("Trained site_garbage · held-out accuracy"), "{trained}");
    assert!(text(&browser, "#learn-summary").await.contains("precision"));
    screenshot(&browser, &shots, "trained").await;

    browser.find(Locator::Css("#learn-slot")).await.unwrap().select_by_value("taxonomy").await.unwrap();
    browser.find(Locator::Css("#learn-deploy")).await.unwrap().click().await.unwrap();
    let confirmed = wait_until(
        &browser,
        "document.getElementById('deploy-message').textContent.includes(': confirmed') && document.getElementById('deploy-message').textContent",
        "the probation to end confirmed",
    )
    .await;
    assert!(confirmed.as_str().unwrap().starts_with("site_garbage → taxonomy.classifier: confirmed"), "{confirmed}");
    screenshot(&browser, &shots, "deployed").await;
    let written = std::fs::read_to_string(dir.path().join("agent.toml")).unwrap();
    assert!(written.contains("/state/learned/site_garbage-"), "{written}");
    drop(agent);
}
