//! The web page in a real browser: Debian's chromium (headless) driven through chromedriver with
//! fantoccini, against the real agent running a replay camera. Screenshots of the main pages, at a
//! desktop and a phone width, go to `<target dir>/web-screenshots/` (the path is printed).

mod web_support;

use fantoccini::Locator;
use serde_json::json;
use web_support::browser::*;
use web_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_logs_in_and_follows_live_events_to_their_evidence() {
    let Some((driver, chromium)) = ChromeDriver::start() else {
        return;
    };
    let web = WebAgent::start("");
    let shots = screenshot_dir("supervisor");
    let profile = tempfile::tempdir().unwrap();
    let browser = open_browser(&driver, &chromium, profile.path(), false, "en-US,en").await;
    let base = web.base.clone();

    log_in(&browser, &base, ADMIN.0, ADMIN.1).await;
    wait_until(&browser, "document.getElementById('device-id')", "the overview after login").await;
    assert_eq!(text(&browser, "#device-id").await, "web-box");
    let models = text(&browser, "#models").await;
    assert!(models.contains("nanodet") && models.contains("tract") && models.contains("2947bae13602"), "{models}");
    // Wait for an inference so the latency column has numbers, then for the section to refresh.
    wait_until(&browser, "/\\d+ \\/ \\d+ ms/.test(document.getElementById('models').textContent)", "model latency")
        .await;
    wait_until(&browser, "document.querySelector('#latest-events .event-card')", "an event on the overview").await;
    screenshot(&browser, &shots, "desktop-overview").await;

    browser.goto(&format!("{base}/cameras")).await.unwrap();
    wait_until(&browser, "document.querySelector('img[data-live-frame]').naturalWidth > 0", "the live frame").await;
    let first_src = wait_until(&browser, "document.querySelector('img[data-live-frame]').src.includes('?t=') && document.querySelector('img[data-live-frame]').src", "a refreshed frame").await;
    assert!(first_src.as_str().is_some_and(|s| s.contains("/api/v1/cameras/yard/frame.jpg")), "{first_src}");
    screenshot(&browser, &shots, "desktop-cameras").await;

    // Events arrive over Server-Sent Events: the list changes while the page stays loaded.
    browser.goto(&format!("{base}/events")).await.unwrap();
    wait_until(&browser, "document.getElementById('live-indicator').classList.contains('on')", "the live stream").await;
    let before = browser
        .execute("window.stayedOnThisPage = true; const c = document.querySelector('.event-card'); return c ? c.dataset.eventId : '';", vec![])
        .await
        .unwrap();
    wait_until(
        &browser,
        &format!("window.stayedOnThisPage && document.querySelector('.event-card') && document.querySelector('.event-card').dataset.eventId !== {before}"),
        "a new event to appear without reloading",
    )
    .await;
    let list = text(&browser, "#event-list").await;
    assert!(list.contains("truck") && list.contains("yard"), "{list}");
    screenshot(&browser, &shots, "desktop-events").await;

    // Filters: only trucks.
    browser.goto(&format!("{base}/events?kind=object&camera=yard")).await.unwrap();
    let labels = browser
        .execute("return Array.from(document.querySelectorAll('.event-card .label'), e => e.textContent);", vec![])
        .await
        .unwrap();
    assert!(labels.as_array().is_some_and(|l| !l.is_empty()), "{labels}");

    // The truck event's detail: evidence picture, its hash, lifecycle, acknowledgement.
    browser.goto(&format!("{base}/events")).await.unwrap();
    let truck = wait_until(
        &browser,
        "Array.from(document.querySelectorAll('.event-card')).filter(c => c.querySelector('.label').textContent === 'truck').map(c => c.querySelector('a').href)[0]",
        "a truck event",
    )
    .await;
    browser.goto(truck.as_str().unwrap()).await.unwrap();
    wait_until(
        &browser,
        "document.getElementById('evidence-image') && document.getElementById('evidence-image').naturalWidth > 0",
        "the evidence picture",
    )
    .await;
    assert!(browser.find(Locator::Css("#event-box rect")).await.is_ok(), "this event's box is ringed on its frame");
    let shown_hash = text(&browser, "#evidence-hash").await;
    assert_eq!(shown_hash.len(), 64, "{shown_hash}");
    let actual_hash = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.getElementById('evidence-image').src).then(r => r.arrayBuffer())
               .then(b => crypto.subtle.digest('SHA-256', b))
               .then(h => done(Array.from(new Uint8Array(h), x => x.toString(16).padStart(2, '0')).join('')))
               .catch(e => done('error ' + e));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(actual_hash.as_str(), Some(shown_hash.as_str()), "the page shows the hash of the picture it serves");
    // The box checked the event's signed chain record with its own key.
    let signature = text(&browser, "#signature").await;
    assert!(signature.contains("signature verified with the device key"), "{signature}");
    // The truck leaves the replayed scene every loop, so its event may already have ended: then the
    // page gives the time it took to clear, else it says it is not cleared yet.
    let time_to_clear = text(&browser, "#time-to-clear").await;
    assert!(
        time_to_clear.contains("not cleared") || time_to_clear.chars().any(|c| c.is_ascii_digit()),
        "time to clear: {time_to_clear:?}"
    );
    screenshot(&browser, &shots, "desktop-event-detail").await;
    browser.find(Locator::Css("#acknowledge")).await.expect("an admin may acknowledge").click().await.unwrap();
    wait_until(
        &browser,
        "document.getElementById('acknowledgement').textContent.includes('Acknowledged by ana')",
        "the acknowledgement",
    )
    .await;

    browser.goto(&format!("{base}/stats")).await.unwrap();
    wait_until(&browser, "document.querySelectorAll('#chart-kind rect.bar').length >= 1", "a bar in the chart").await;
    assert!(text(&browser, "#chart-kind").await.contains("object"));
    screenshot(&browser, &shots, "desktop-stats").await;

    // 中文: the switch, remembered for the next pages.
    browser.find(Locator::Css("a[lang='zh-CN']")).await.unwrap().click().await.unwrap();
    wait_until(&browser, "document.documentElement.lang === 'zh-CN'", "the Chinese page").await;
    browser.goto(&format!("{base}/")).await.unwrap();
    let nav = text(&browser, "nav.main").await;
    assert!(nav.contains("概览") && nav.contains("事件") && nav.contains("统计"), "{nav}");
    screenshot(&browser, &shots, "desktop-overview-zh").await;
    browser.close().await.unwrap();

    // The same pages on a phone.
    let phone_profile = tempfile::tempdir().unwrap();
    let phone = open_browser(&driver, &chromium, phone_profile.path(), true, "en-US,en").await;
    log_in(&phone, &base, ADMIN.0, ADMIN.1).await;
    wait_until(&phone, "document.getElementById('device-id')", "the overview on a phone").await;
    assert_eq!(phone.execute("return window.innerWidth;", vec![]).await.unwrap(), json!(390));
    for (path, name, ready) in [
        ("/", "phone-overview", "document.querySelector('#latest-events .event-card')"),
        ("/cameras", "phone-cameras", "document.querySelector('img[data-live-frame]').naturalWidth > 0"),
        (
            "/events",
            "phone-events",
            "document.querySelector('.event-card img') && document.querySelector('.event-card img').complete",
        ),
        (
            truck.as_str().unwrap_or("/"),
            "phone-event-detail",
            "document.getElementById('evidence-image').naturalWidth > 0",
        ),
        ("/stats", "phone-stats", "document.querySelector('#chart-kind svg')"),
    ] {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{base}{path}") };
        phone.goto(&url).await.unwrap();
        wait_until(&phone, ready, name).await;
        assert_fits_width(&phone, name).await;
        screenshot(&phone, &shots, name).await;
    }
    phone.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_everything_but_cannot_change_anything() {
    let Some((driver, chromium)) = ChromeDriver::start() else {
        return;
    };
    let web = WebAgent::start("");
    let profile = tempfile::tempdir().unwrap();
    // A browser that prefers Chinese gets the Chinese page without touching the switch.
    let browser = open_browser(&driver, &chromium, profile.path(), false, "zh-CN,zh,en").await;
    let base = web.base.clone();
    browser.goto(&format!("{base}/login")).await.unwrap();
    assert_eq!(text(&browser, "#log-in").await, "登录");
    log_in(&browser, &base, VIEWER.0, VIEWER.1).await;
    wait_until(&browser, "document.getElementById('device-id')", "the overview").await;
    assert!(text(&browser, ".user").await.contains("viewer"));
    browser.goto(&format!("{base}/events")).await.unwrap();
    let event = wait_until(
        &browser,
        "document.querySelector('.event-card') && document.querySelector('.event-card a').href",
        "an event",
    )
    .await;
    browser.goto(event.as_str().unwrap()).await.unwrap();
    wait_until(&browser, "document.getElementById('acknowledgement')", "the detail page").await;
    assert!(browser.find(Locator::Css("#acknowledge")).await.is_err(), "no acknowledge button for a viewer");
    assert!(text(&browser, "#acknowledgement").await.contains("未确认"), "not acknowledged, in Chinese");
    wait_until(&browser, "document.getElementById('evidence-image').naturalWidth > 0", "the evidence picture").await;
    screenshot(&browser, &screenshot_dir("viewer"), "desktop-event-detail-zh").await;

    // Even with the page's own CSRF token, the server refuses a viewer's state change and the config.
    let statuses = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const token = document.querySelector('meta[name=csrf-token]').content;
             const id = document.getElementById('event-id').textContent;
             Promise.all([
               fetch('/api/v1/events/' + id + '/acknowledge', { method: 'POST', headers: { 'X-CSRF-Token': token } }).then(r => r.status),
               fetch('/api/v1/config').then(r => r.status),
               fetch('/api/v1/status').then(r => r.status),
             ]).then(done).catch(e => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(statuses, json!([403, 403, 200]), "acknowledge, config, status as a viewer");

    // Logging out ends the session.
    browser.find(Locator::Css("form.logout button")).await.unwrap().click().await.unwrap();
    wait_until(&browser, "location.pathname === '/login'", "the login page after logout").await;
    browser.goto(&format!("{base}/events")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/login");
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_repeated_failures_lock_the_login() {
    let Some((driver, chromium)) = ChromeDriver::start() else {
        return;
    };
    let web = WebAgent::start("login_attempts = 3\nlogin_lockout_secs = 600");
    let shots = screenshot_dir("login");
    let profile = tempfile::tempdir().unwrap();
    let browser = open_browser(&driver, &chromium, profile.path(), false, "en-US,en").await;
    let base = web.base.clone();

    browser.goto(&format!("{base}/login")).await.unwrap();
    screenshot(&browser, &shots, "login").await;
    for attempt in 1..=3 {
        log_in(&browser, &base, ADMIN.0, "not-the-password").await;
        let error = wait_until(
            &browser,
            "document.getElementById('login-error') && document.getElementById('login-error').textContent",
            "the refusal",
        )
        .await;
        assert_eq!(error, json!("Wrong user name or password."), "attempt {attempt}");
        assert_eq!(browser.current_url().await.unwrap().path(), "/login");
    }
    screenshot(&browser, &shots, "login-refused").await;

    // Locked out: even the right password is refused now.
    log_in(&browser, &base, ADMIN.0, ADMIN.1).await;
    let error = wait_until(
        &browser,
        "document.getElementById('login-error') && document.getElementById('login-error').textContent",
        "the lockout",
    )
    .await;
    assert!(error.as_str().is_some_and(|e| e.starts_with("Too many failed logins")), "{error}");
    assert!(browser.find(Locator::Css("#device-id")).await.is_err(), "not logged in");
    screenshot(&browser, &shots, "login-locked").await;
    assert!(edge_agent_tests::log_contains(&web.agent.log, "login refused: too many failed attempts"));
    browser.close().await.unwrap();
}
