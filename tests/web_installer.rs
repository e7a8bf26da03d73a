//! The installer tools and labelling in a real browser (Debian's chromium through chromedriver),
//! against the real agent running the dog.jpg / person.jpg replay camera: an admin draws a zone by
//! clicking its corners on the frame, saves it into the config file and the running agent uses it;
//! edits a threshold; tests the models on the current frame; labels an event for the site's
//! sample set, which `edge-agent calibrate thresholds` then reads. A viewer sees the tools but
//! cannot save. Screenshots go to `<target dir>/web-screenshots/installer/`.

mod web_support;

use std::process::Command;
use std::time::Duration;

use edge_agent_tests::*;
use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};
use web_support::browser::*;
use web_support::*;

/// Clicks the element at a point given as shares of its size from its centre (-0.5..0.5), as a
/// person would with a mouse; the element is scrolled to the middle of the window first.
async fn click_at(client: &Client, css: &str, x: f64, y: f64) {
    let point = client
        .execute(
            &format!(
                "const e = document.querySelector('{css}'); e.scrollIntoView({{ block: 'center' }});
                 const r = e.getBoundingClientRect();
                 return [r.left + r.width * (0.5 + {x}), r.top + r.height * (0.5 + {y})];"
            ),
            vec![],
        )
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    let (px, py) = (point[0].as_f64().unwrap().round(), point[1].as_f64().unwrap().round());
    let mouse = MouseActions::new("mouse".into())
        .then(PointerAction::MoveTo { duration: None, x: px, y: py })
        .then(PointerAction::Down { button: MOUSE_BUTTON_LEFT })
        .then(PointerAction::Up { button: MOUSE_BUTTON_LEFT });
    client.perform_actions(mouse).await.expect("click on the frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installer_draws_a_zone_tests_the_models_and_labels_an_event() {
    let Some((driver, chromium)) = ChromeDriver::start() else {
        return;
    };
    let web = WebAgent::start("");
    let shots = screenshot_dir("installer");
    let profile = tempfile::tempdir().unwrap();
    let browser = open_browser(&driver, &chromium, profile.path(), false, "en-US,en").await;
    let base = web.base.clone();
    let config_file = web.dir.path().join("agent.toml");

    log_in(&browser, &base, ADMIN.0, ADMIN.1).await;
    wait_until(&browser, "document.getElementById('device-id')", "the overview after login").await;
    browser
        .find(Locator::Css("nav.main a[href='/installer']"))
        .await
        .expect("the installer in the menu")
        .click()
        .await
        .unwrap();
    wait_until(
        &browser,
        "document.getElementById('scene-image').complete && document.getElementById('scene-image').naturalWidth > 0",
        "the camera's frame to draw on",
    )
    .await;
    wait_until(&browser, "document.querySelector('#zone-list li')", "the zone list").await;
    assert!(text(&browser, "#zones-home").await.contains("agent.toml"), "zones are saved in the config file");

    // A kitchen bin: New zone, its id, role and category, then its four corners on the frame.
    browser.find(Locator::Css("#new-zone")).await.unwrap().click().await.unwrap();
    let id = browser.find(Locator::Css("#zone-id")).await.unwrap();
    id.clear().await.unwrap();
    id.send_keys("bin-kitchen").await.unwrap();
    browser.find(Locator::Css("#zone-role")).await.unwrap().select_by_value("bin").await.unwrap();
    browser.find(Locator::Css("#zone-category")).await.unwrap().select_by_value("kitchen").await.unwrap();
    // Corners at a quarter and three quarters of the frame's width, a third above and below its middle.
    let corners = [(-0.25, -1.0 / 6.0), (0.25, -1.0 / 6.0), (0.25, 1.0 / 6.0), (-0.25, 1.0 / 6.0)];
    for (x, y) in corners {
        click_at(&browser, "#zone-canvas", x, y).await;
    }
    let listed = text(&browser, "#zone-list").await;
    assert!(listed.contains("bin-kitchen") && listed.contains("4 corners") && listed.contains("kitchen"), "{listed}");
    assert_eq!(
        browser.execute("return document.querySelectorAll('#zone-canvas polygon.zone').length;", vec![]).await.unwrap(),
        json!(1)
    );
    assert!(text(&browser, "#zones-message").await.contains("Unsaved"));
    screenshot(&browser, &shots, "desktop-zone-drawn").await;

    browser.find(Locator::Css("#save-zones")).await.unwrap().click().await.unwrap();
    let saved = wait_until(
        &browser,
        "document.getElementById('zones-message').classList.contains('ok') && document.getElementById('zones-message').textContent",
        "the zones saved",
    )
    .await;
    assert!(saved.as_str().is_some_and(|s| s.starts_with("Saved and applied") && s.contains("agent.toml")), "{saved}");

    // In the config file, atomically written, comments and all, as a table a person can read.
    let written = std::fs::read_to_string(&config_file).unwrap();
    assert!(
        written.contains(
            "[[scenes.yard.zones]]\nid = \"bin-kitchen\"\nrole = \"bin\"\ncategory = \"kitchen\"\npolygon = "
        ),
        "{written}"
    );
    let admin = HttpSession::login(&base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let config: Value = serde_json::from_str(&admin.get("/api/v1/config").body).unwrap();
    let polygon = config["config"]["scenes"]["yard"]["zones"][0]["polygon"].as_array().unwrap().clone();
    assert_eq!(polygon.len(), 4);
    for (corner, (x, y)) in polygon.iter().zip(corners) {
        let (cx, cy) = (corner[0].as_f64().unwrap(), corner[1].as_f64().unwrap());
        assert!((cx - (0.5 + x)).abs() < 0.02 && (cy - (0.5 + y)).abs() < 0.02, "{corner} for {x}, {y}");
    }
    // The running agent applies it: the judge draws the zone on the next frame.
    let used = eventually(Duration::from_secs(30), || {
        let zones: Value = serde_json::from_str(&admin.get("/api/v1/zones").body).ok()?;
        (zones["in_use"]["yard"] == json!(["bin-kitchen"])).then_some(zones)
    });
    let zones = used.expect("the judge uses the saved zone");
    assert_eq!(zones["cameras"]["yard"][0]["category"], "kitchen");
    assert!(log_contains(&web.agent.log, "rules or zones changed; judge reconfigured"));

    // After a reload the page draws what the server has.
    browser.refresh().await.unwrap();
    wait_until(&browser, "document.querySelectorAll('#zone-canvas polygon.zone').length === 1", "the saved zone drawn")
        .await;
    wait_until(&browser, "document.getElementById('scene-image').naturalWidth > 0", "the frame").await;
    screenshot(&browser, &shots, "desktop-zone-saved").await;

    // A polygon that crosses itself is refused naming the field, and nothing is written.
    browser.find(Locator::Css("#new-zone")).await.unwrap().click().await.unwrap();
    for (x, y) in [(-0.4, -0.4), (0.4, 0.4), (0.4, -0.4), (-0.4, 0.4)] {
        click_at(&browser, "#zone-canvas", x, y).await;
    }
    browser.find(Locator::Css("#save-zones")).await.unwrap().click().await.unwrap();
    let refused = wait_until(
        &browser,
        "document.getElementById('zones-message').classList.contains('error') && document.getElementById('zones-message').textContent",
        "the refusal",
    )
    .await;
    assert!(refused.as_str().is_some_and(|s| s.contains("scenes.yard.zones[1].polygon")), "{refused}");
    screenshot(&browser, &shots, "desktop-zone-refused").await;
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), written, "a refused save changes nothing");

    // Thresholds through the same path.
    let field = browser.find(Locator::Css("input[data-key='rules.object.min_score']")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys("0.33").await.unwrap();
    browser.find(Locator::Css("#save-thresholds")).await.unwrap().click().await.unwrap();
    wait_until(
        &browser,
        "document.getElementById('thresholds-message').classList.contains('ok')",
        "the thresholds saved",
    )
    .await;
    assert!(std::fs::read_to_string(&config_file).unwrap().contains("min_score = 0.33"));

    // Registered trucks, one plate a line: a line that is not a plate is refused by its index,
    // without being quoted; then the list is saved and the running agent has it.
    let set_plates = |text: &'static str| {
        browser.execute("document.getElementById('registered-plates').value = arguments[0];", vec![json!(text)])
    };
    set_plates("浙EA3262\nnot a plate").await.unwrap();
    browser.find(Locator::Css("#save-registered")).await.unwrap().click().await.unwrap();
    let refused = wait_until(
        &browser,
        "document.getElementById('registered-message').classList.contains('error') && document.getElementById('registered-message').textContent",
        "the plates refused",
    )
    .await;
    assert!(
        refused.as_str().is_some_and(|s| s.contains("plates.registered") && !s.contains("not a plate")),
        "{refused}"
    );
    assert!(!std::fs::read_to_string(&config_file).unwrap().contains("浙EA3262"), "a refused list is not written");
    set_plates("  浙EA3262\n\n京A·12345 ").await.unwrap();
    browser.find(Locator::Css("#save-registered")).await.unwrap().click().await.unwrap();
    wait_until(&browser, "document.getElementById('registered-message').classList.contains('ok')", "the plates saved")
        .await;
    let written = std::fs::read_to_string(&config_file).unwrap();
    assert!(written.contains("[plates]") && written.contains("京A·12345"), "{written}");
    let config: Value = serde_json::from_str(&admin.get("/api/v1/config").body).unwrap();
    assert_eq!(config["config"]["plates"]["registered"], json!(["浙EA3262", "京A·12345"]));

    // The models on the current frame: boxes drawn, findings listed, no event made of them.
    browser.find(Locator::Css("#run-test")).await.unwrap().click().await.unwrap();
    wait_until(&browser, "document.querySelectorAll('#test-results tr.finding').length > 0", "the test's findings")
        .await;
    wait_until(&browser, "document.getElementById('test-image').naturalWidth > 0", "the tested frame").await;
    let findings = text(&browser, "#test-results").await;
    assert!(findings.contains("nanodet") && (findings.contains("truck") || findings.contains("person")), "{findings}");
    assert!(browser.find(Locator::Css("#test-boxes rect.finding-box")).await.is_ok(), "boxes drawn over the frame");
    browser.execute("document.getElementById('model-test-card').scrollIntoView();", vec![]).await.unwrap();
    screenshot(&browser, &shots, "desktop-model-test").await;

    // Labelling: a truck event is right; its crop and row go into the sample set.
    let truck = eventually(Duration::from_secs(60), || {
        let events: Value = serde_json::from_str(&admin.get("/api/v1/events?kind=object&limit=50").body).ok()?;
        let found = events["events"].as_array()?.iter().find(|e| e["event"]["label"] == "truck")?;
        found["event"]["event_id"].as_str().map(str::to_string)
    })
    .expect("a truck event");
    browser.goto(&format!("{base}/events/{truck}")).await.unwrap();
    wait_until(&browser, "document.getElementById('label-form')", "the labelling form").await;
    assert_eq!(
        browser.execute("return document.getElementById('label-label').value;", vec![]).await.unwrap(),
        json!("truck")
    );
    browser.find(Locator::Css("#verdict-right")).await.unwrap().click().await.unwrap();
    browser.find(Locator::Css("#save-label")).await.unwrap().click().await.unwrap();
    wait_until(&browser, "document.getElementById('label-done')", "the label shown").await;
    browser.execute("document.getElementById('labelling').scrollIntoView();", vec![]).await.unwrap();
    screenshot(&browser, &shots, "desktop-event-labelled").await;
    let samples = web.state_dir().join("samples");
    let labels = std::fs::read_to_string(samples.join("labels.csv")).unwrap();
    let row = labels.lines().find(|l| l.starts_with(&format!("{truck}.jpg,"))).unwrap_or_else(|| panic!("{labels}"));
    assert!(
        row.starts_with(&format!("{truck}.jpg,truck,")) && row.contains("right") && row.contains("by ana"),
        "{row}"
    );
    let crop = std::fs::read(samples.join(format!("{truck}.jpg"))).unwrap();
    assert!(crop.starts_with(&[0xFF, 0xD8, 0xFF]), "the crop is a JPEG");

    // The sample set is what `calibrate thresholds` reads: the truck is found in its crop.
    let report = web.dir.path().join("report");
    let output = Command::new(agent_binary())
        .args(["calibrate", "thresholds", "--config"])
        .arg(&config_file)
        .arg("--samples")
        .arg(&samples)
        .arg("--labels")
        .arg(samples.join("labels.csv"))
        .arg("--report")
        .arg(&report)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("| truck | 1 |"), "{stdout}");

    // Changing one's mind replaces the row: wrong, nothing there.
    browser.find(Locator::Css("#verdict-wrong")).await.unwrap().click().await.unwrap();
    let label = browser.find(Locator::Css("#label-label")).await.unwrap();
    label.clear().await.unwrap();
    label.send_keys("none").await.unwrap();
    browser.find(Locator::Css("#save-label")).await.unwrap().click().await.unwrap();
    wait_until(
        &browser,
        "document.getElementById('label-done') && document.getElementById('label-done').textContent.includes('Wrong')",
        "the new label",
    )
    .await;
    let labels = std::fs::read_to_string(samples.join("labels.csv")).unwrap();
    assert_eq!(labels.matches(&format!("{truck}.jpg")).count(), 1, "{labels}");
    assert!(labels.contains(&format!("{truck}.jpg,none # ")), "{labels}");
    browser.close().await.unwrap();

    // The installer page on a phone: it fits, and the frame can be drawn on.
    let phone_profile = tempfile::tempdir().unwrap();
    let phone = open_browser(&driver, &chromium, phone_profile.path(), true, "zh-CN,zh").await;
    log_in(&phone, &base, ADMIN.0, ADMIN.1).await;
    wait_until(&phone, "document.getElementById('device-id')", "the overview on a phone").await;
    phone.goto(&format!("{base}/installer")).await.unwrap();
    wait_until(&phone, "document.querySelectorAll('#zone-canvas polygon.zone').length === 1", "the zone on a phone")
        .await;
    wait_until(&phone, "document.getElementById('scene-image').naturalWidth > 0", "the frame on a phone").await;
    assert!(text(&phone, "h1").await.contains("安装工具"));
    assert_fits_width(&phone, "phone-installer").await;
    screenshot(&phone, &shots, "phone-installer-zh").await;
    phone.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_the_installer_tools_but_cannot_save() {
    let Some((driver, chromium)) = ChromeDriver::start() else {
        return;
    };
    let web = WebAgent::start("");
    let config_file = web.dir.path().join("agent.toml");
    let before = std::fs::read_to_string(&config_file).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let browser = open_browser(&driver, &chromium, profile.path(), false, "en-US,en").await;
    let base = web.base.clone();
    log_in(&browser, &base, VIEWER.0, VIEWER.1).await;
    wait_until(&browser, "document.getElementById('device-id')", "the overview").await;
    browser.goto(&format!("{base}/installer")).await.unwrap();
    wait_until(&browser, "document.getElementById('scene-image').naturalWidth > 0", "the frame").await;
    assert!(text(&browser, "#read-only").await.contains("Only an admin"));
    for button in ["#save-zones", "#new-zone", "#save-thresholds", "#run-test"] {
        let disabled = browser.find(Locator::Css(button)).await.unwrap().attr("disabled").await.unwrap();
        assert!(disabled.is_some(), "{button} is disabled for a viewer");
    }
    // Clicking the frame draws nothing.
    click_at(&browser, "#zone-canvas", 0.0, 0.0).await;
    assert_eq!(
        browser.execute("return document.querySelectorAll('#zone-canvas .zone').length;", vec![]).await.unwrap(),
        json!(0)
    );
    screenshot(&browser, &screenshot_dir("installer"), "desktop-viewer").await;

    // Even with the page's own CSRF token the server refuses a viewer.
    let statuses = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const headers = { 'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content, 'Content-Type': 'application/json' };
             const zones = { zones: [{ id: 'road', role: 'road', polygon: [[0, 0], [1, 0], [1, 1]] }] };
             Promise.all([
               fetch('/api/v1/zones/yard', { method: 'PUT', headers: headers, body: JSON.stringify(zones) }).then(r => r.status),
               fetch('/api/v1/settings', { method: 'POST', headers: headers, body: JSON.stringify({ values: { 'rules.object.min_score': 0.9 } }) }).then(r => r.status),
               fetch('/api/v1/cameras/yard/test', { method: 'POST', headers: headers }).then(r => r.status),
               fetch('/api/v1/zones/yard').then(r => r.status),
             ]).then(done).catch(e => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(statuses, json!([403, 403, 403, 200]), "save zones, save settings, test models, read zones");
    // Nor may a viewer label events.
    browser.goto(&format!("{base}/events")).await.unwrap();
    let event = wait_until(
        &browser,
        "document.querySelector('.event-card') && document.querySelector('.event-card a').href",
        "an event",
    )
    .await;
    browser.goto(event.as_str().unwrap()).await.unwrap();
    wait_until(&browser, "document.getElementById('labelling')", "the labelling card").await;
    assert!(browser.find(Locator::Css("#label-form")).await.is_err(), "no labelling form for a viewer");
    assert!(text(&browser, "#labelling").await.contains("Only an admin may label"));
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), before, "nothing was written");
    assert!(!web.state_dir().join("samples").exists());
    browser.close().await.unwrap();
}
