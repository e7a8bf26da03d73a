//! Browser helpers for the end-to-end tests: a chromium session through chromedriver, waiting for
//! the page, screenshots, logging in.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::ChromeDriver;

pub const WAIT: Duration = Duration::from_secs(60);

/// A fresh browser profile per session, so no cookie or cache survives between tests. `languages`
/// is what the browser asks for (Accept-Language), e.g. "en-US,en".
pub async fn open_browser(
    driver: &ChromeDriver,
    chromium: &Path,
    profile: &Path,
    phone: bool,
    languages: &str,
) -> Client {
    let mut options = json!({
        "binary": chromium,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1280,1000",
            format!("--lang={}", languages.split(',').next().unwrap_or("en-US")),
            "--hide-scrollbars",
        ],
        "prefs": { "intl.accept_languages": languages },
    });
    if phone {
        options["mobileEmulation"] = json!({
            "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 2.0, "touch": true, "mobile": true },
            "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Mobile Safari/537.36",
        });
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a chromium session through chromedriver")
}

/// Polls a JavaScript expression until it is truthy; returns its value.
pub async fn wait_until(client: &Client, expression: &str, what: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = client.execute(&format!("return ({expression});"), vec![]).await.unwrap_or(Value::Null);
        let truthy = match &value {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return value;
        }
        if Instant::now() > deadline {
            let source = client.source().await.unwrap_or_default();
            panic!("waited {WAIT:?} for {what} ({expression}); page:\n{}", &source[..source.len().min(4000)]);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn text(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap_or_default()
}

pub async fn screenshot(client: &Client, dir: &Path, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("screenshot");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    path
}

pub async fn log_in(client: &Client, base: &str, user: &str, password: &str) {
    client.goto(&format!("{base}/")).await.expect("open the page");
    let url = client.current_url().await.expect("url");
    assert_eq!(url.path(), "/login", "not logged in yet, so the page asks for a login");
    client.find(Locator::Css("#name")).await.expect("name field").send_keys(user).await.expect("type the name");
    client.find(Locator::Css("#password")).await.expect("password field").send_keys(password).await.expect("type");
    client.find(Locator::Css("#log-in")).await.expect("login button").click().await.expect("click log in");
}

/// The page fits the screen: nothing sticks out sideways (tables scroll inside their card).
pub async fn assert_fits_width(client: &Client, page: &str) {
    let widths = client
        .execute("return [document.documentElement.scrollWidth, window.innerWidth];", vec![])
        .await
        .expect("widths");
    let (scroll, inner) = (widths[0].as_f64().unwrap_or(0.0), widths[1].as_f64().unwrap_or(0.0));
    assert!(scroll <= inner + 1.0, "{page} is wider ({scroll}px) than the screen ({inner}px)");
}
