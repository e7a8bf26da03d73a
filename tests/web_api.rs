//! The web page's HTTP surface against the real binary: who may see what, the JSON API against its
//! OpenAPI document, Prometheus metrics, CSRF, and HTTPS with the self-signed certificate.

mod web_support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use edge_agent_tests::*;
use web_support::*;

#[test]
fn everything_but_healthz_needs_a_login() {
    let web = WebAgent::start("");
    let base = &web.base;
    let health = anonymous_get(&format!("{base}/healthz"), &[]);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    for page in ["/", "/cameras", "/events", "/stats", "/events/01890a5d-ac96-774b-bcce-b302099a8057"] {
        let reply = anonymous_get(&format!("{base}{page}"), &[]);
        assert_eq!(reply.status, 303, "{page} without login");
        assert!(
            reply.location.as_deref().is_some_and(|l| l.starts_with("/login?next=")),
            "{page}: {:?}",
            reply.location
        );
    }
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../edge-agent/src/web/assets/openapi.json")).unwrap();
    for path in doc["paths"].as_object().unwrap().keys() {
        let path = path.replace("{camera}", "yard").replace("{event_id}", "01890a5d-ac96-774b-bcce-b302099a8057");
        let reply = anonymous_get(&format!("{base}{path}"), &[]);
        assert_eq!(reply.status, 401, "{path} without login: {}", reply.body);
    }
    let metrics = anonymous_get(&format!("{base}/metrics"), &[]);
    assert_eq!(metrics.status, 401, "metrics without the token");
}

#[test]
fn every_documented_api_path_answers_as_documented() {
    let web = WebAgent::start("");
    let admin = HttpSession::login(&web.base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let event_id = first_event_id(&admin);
    let served = admin.get("/api/v1/openapi.json");
    assert_eq!(served.status, 200);
    let doc: serde_json::Value = serde_json::from_str(&served.body).expect("the served document is JSON");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let url =
                path.replace("{camera}", "yard").replace("{event_id}", &event_id).replace("{file}", "confusion.svg");
            // A request that takes a body sends the example the document gives.
            let example = &operation["requestBody"]["content"]["application/json"]["example"];
            let reply = match method.as_str() {
                "get" if path.ends_with("/stream") => admin.get_head_only(&url),
                "get" => admin.get(&url),
                "post" | "put" if !example.is_null() => admin.send_json(method, &url, example, Some(&admin.csrf)),
                "post" => admin.post(&url, Some(&admin.csrf)),
                other => panic!("{other} {path}: a method this test does not know"),
            };
            let documented = &operation["responses"][reply.status.to_string()];
            assert!(
                documented.is_object(),
                "{method} {url} answered {} which is not documented: {}",
                reply.status,
                reply.body
            );
            // This agent has nothing to learn from: the documented refusals. tests/site_learning.rs
            // trains and deploys for real.
            let refusal = match (method.as_str(), path.as_str()) {
                // This agent's camera is a picture folder, which keeps no video. tests/event_clips.rs
                // plays a real clip.
                (_, p) if p.ends_with("/clip.mp4") => Some(404),
                // Nor does it read plates. tests/plates_flow.rs fetches a real plate's picture.
                (_, p) if p.ends_with("/plate.jpg") => Some(404),
                ("post", "/api/v1/learn") => Some(422),
                ("post", "/api/v1/learn/deploy") => Some(409),
                ("get", "/api/v1/learn/report/{file}") => Some(404),
                _ => None,
            };
            if let Some(status) = refusal {
                assert_eq!(reply.status, status, "{method} {url}: {}", reply.body);
            } else {
                assert!((200..300).contains(&reply.status), "{method} {url}: {} {}", reply.status, reply.body);
            }
            let types: Vec<&String> = documented["content"].as_object().map(|c| c.keys().collect()).unwrap_or_default();
            assert!(
                types.iter().any(|t| reply.content_type.starts_with(t.as_str())),
                "{method} {url}: content type {} is not one of {types:?}",
                reply.content_type
            );
            if reply.content_type.starts_with("application/json") {
                serde_json::from_str::<serde_json::Value>(&reply.body)
                    .unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {}", reply.body));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 26, "every route of the API was called");

    // The answers say what the box is doing, not just that it answers.
    let status: serde_json::Value = serde_json::from_str(&admin.get("/api/v1/status").body).unwrap();
    assert_eq!(status["device_id"], "web-box");
    assert_eq!(status["cameras"][0]["id"], "yard");
    assert!(status["disk"]["free_bytes"].as_u64().is_some_and(|b| b > 0), "{status}");
    let event: serde_json::Value =
        serde_json::from_str(&admin.get(&format!("/api/v1/events/{event_id}")).body).unwrap();
    assert_eq!(event["event"]["camera"], "yard");
    assert_eq!(event["acknowledged"]["by"], ADMIN.0, "acknowledged by the POST above: {event}");
    let evidence = admin.get(&format!("/api/v1/events/{event_id}/evidence.jpg"));
    assert_eq!(evidence.content_type, "image/jpeg");
    let stats: serde_json::Value = serde_json::from_str(&admin.get("/api/v1/stats?days=3").body).unwrap();
    let today = stats["days"].as_array().unwrap().last().unwrap().clone();
    assert!(today["by_kind"]["object"].as_u64().is_some_and(|n| n >= 1), "{stats}");
    // The documented example zones were saved into the config file and the judge uses them.
    let text = std::fs::read_to_string(web.dir.path().join("agent.toml")).unwrap();
    assert!(text.contains("[[scenes.yard.zones]]") && text.contains("id = \"bin-recyclable\""), "{text}");
    assert!(text.contains("min_score = 0.35"), "the documented settings example: {text}");
    let in_use = eventually(Duration::from_secs(30), || {
        let zones: serde_json::Value = serde_json::from_str(&admin.get("/api/v1/zones").body).ok()?;
        let ids = zones["in_use"]["yard"].as_array()?.clone();
        (ids.len() == 2).then_some(zones)
    });
    let zones = in_use.unwrap_or_else(|| {
        panic!(
            "the judge does not take the saved zones: {}\nlog:\n{}",
            admin.get("/api/v1/zones").body,
            web.agent.log_text()
        )
    });
    assert_eq!(zones["cameras"]["yard"][0]["id"], "bin-recyclable");
    assert_eq!(zones["stored_in"]["yard"]["kind"], "config_file");
    // The documented label example put the event's crop and its row into the sample set.
    let labels = std::fs::read_to_string(web.state_dir().join("samples/labels.csv")).unwrap();
    assert!(labels.contains(&format!("{event_id}.jpg,")), "{labels}");
}

#[test]
fn bad_ids_and_paths_are_refused_without_touching_the_disk() {
    let web = WebAgent::start("");
    let admin = HttpSession::login(&web.base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    for (path, status) in [
        ("/api/v1/events/..%2F..%2Fagent.toml/evidence.jpg", 400),
        ("/api/v1/events/not-a-uuid", 400),
        ("/api/v1/events/01890a5d-ac96-774b-bcce-b302099a8057", 404),
        ("/api/v1/cameras/..%2F..%2Fetc/frame.jpg", 404),
        ("/api/v1/events?before=../../etc", 400),
        ("/api/v1/events?since=yesterday", 400),
        ("/api/v1/stats?days=0", 400),
        ("/assets/..%2F..%2F..%2Fagent.toml", 404),
    ] {
        let reply = admin.get(path);
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert!(!reply.body.contains("metrics_token"), "{path} leaked the config");
    }
}

#[test]
fn every_refusal_is_json_with_a_stable_code_and_quotes_nothing_it_was_sent() {
    let web = WebAgent::start("");
    let admin = HttpSession::login(&web.base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let viewer = HttpSession::login(&web.base, VIEWER.0, VIEWER.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let event_id = first_event_id(&admin);
    let sent = "Q7xSENT";
    let check = |what: &str, reply: Reply, status: u16, code: &str| {
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert!(reply.content_type.starts_with("application/json"), "{what}: {} {}", reply.content_type, reply.body);
        let answer: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(answer["code"], code, "{what}: {answer}");
        assert!(
            answer["message"].as_str().is_some_and(|m| m.len() > 10),
            "{what}: the message says too little: {answer}"
        );
        assert!(!reply.body.contains(sent), "{what}: the answer quotes the request: {answer}");
    };
    // axum's own rejections were text/plain ("Failed to deserialize query string") and quoted.
    for (path, status, code) in [
        (format!("/api/v1/events?limit={sent}"), 400, "invalid_query"),
        ("/api/v1/events?limit=500".to_string(), 400, "invalid_query"),
        (format!("/api/v1/events?since={sent}"), 400, "invalid_query"),
        (format!("/api/v1/stats?days={sent}"), 400, "invalid_query"),
        (format!("/api/v1/events/{event_id}/evidence.jpg?revision={sent}"), 400, "invalid_query"),
        (format!("/api/v1/events/{sent}"), 400, "invalid_path"),
        (format!("/api/v1/events/{sent}/clip.mp4"), 400, "invalid_path"),
        (format!("/api/v1/events/{sent}/label"), 400, "invalid_path"),
        ("/api/v1/cameras/%FF%FE/frame.jpg".to_string(), 400, "invalid_path"),
        (format!("/api/v1/cameras/{sent}/frame.jpg"), 404, "no_such_camera"),
        (format!("/api/v1/zones/{sent}"), 404, "no_such_camera"),
        ("/api/v1/events/01890a5d-ac96-774b-bcce-b302099a8057".to_string(), 404, "no_such_event"),
        (format!("/api/v1/learn/report/{sent}"), 404, "no_such_file"),
    ] {
        check(&path, admin.get(&path), status, code);
    }
    let label = format!("/api/v1/events/{event_id}/label");
    for (method, path, body, status, code) in [
        ("post", "/api/v1/settings", r#"{"values": {}}"#.to_string(), 400, "invalid_body"),
        ("post", "/api/v1/settings", format!(r#"{{"values": "{sent}"}}"#), 400, "invalid_body"),
        ("post", "/api/v1/settings", format!(r#"{{"values": {{}}, "{sent}": 1}}"#), 400, "invalid_body"),
        ("post", "/api/v1/settings", format!("{{\"values\": {sent}"), 400, "invalid_body"),
        ("post", &label, format!(r#"{{"verdict": "{sent}"}}"#), 400, "invalid_body"),
        ("post", &label, format!(r#"{{"verdict": "wrong", "category": "{sent}"}}"#), 400, "invalid_category"),
        ("post", "/api/v1/learn", format!(r#"{{"name": "{sent}!"}}"#), 400, "invalid_body"),
        ("post", "/api/v1/learn/deploy", format!(r#"{{"slot": "{sent}"}}"#), 400, "invalid_body"),
        ("put", "/api/v1/zones/yard", format!(r#"{{"zones": "{sent}"}}"#), 400, "invalid_body"),
    ] {
        check(&format!("{method} {path} {body}"), admin.send_raw(method, path, &body, Some(&admin.csrf)), status, code);
    }
    check("a path no route has", admin.get(&format!("/api/v1/{sent}")), 404, "no_such_route");
    let put_status = admin.send_raw("put", "/api/v1/status", "{}", Some(&admin.csrf));
    check("PUT on a GET route", put_status, 405, "method_not_allowed");
    let acknowledge = format!("/api/v1/events/{event_id}/acknowledge");
    check("no CSRF token", admin.post(&acknowledge, None), 403, "csrf_token");
    check("a viewer", viewer.post(&acknowledge, Some(&viewer.csrf)), 403, "admin_only");
    check("no login", anonymous_get(&format!("{}/api/v1/status", web.base), &[]), 401, "login_required");
}

#[test]
fn state_changes_need_the_sessions_csrf_token_and_an_admin() {
    let web = WebAgent::start("");
    let admin = HttpSession::login(&web.base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let viewer = HttpSession::login(&web.base, VIEWER.0, VIEWER.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let event_id = first_event_id(&admin);
    let acknowledge = format!("/api/v1/events/{event_id}/acknowledge");
    assert_eq!(admin.post(&acknowledge, None).status, 403, "no token");
    assert_eq!(admin.post(&acknowledge, Some(&viewer.csrf)).status, 403, "another session's token");
    assert_eq!(viewer.post(&acknowledge, Some(&viewer.csrf)).status, 403, "a viewer may not");
    assert_eq!(viewer.get("/api/v1/config").status, 403, "a viewer may not see the config");
    let still_open: serde_json::Value =
        serde_json::from_str(&admin.get(&format!("/api/v1/events/{event_id}")).body).unwrap();
    assert!(still_open["acknowledged"].is_null(), "nothing changed: {still_open}");
    let done = admin.post(&acknowledge, Some(&admin.csrf));
    assert_eq!(done.status, 200, "{}", done.body);

    // Installer tools and labelling: a viewer may look, not change; an admin needs the token too.
    let zones = serde_json::json!({ "zones": [{ "id": "road", "role": "road", "polygon": [[0, 0], [1, 0], [1, 1]] }] });
    let threshold = serde_json::json!({ "values": { "rules.object.min_score": 0.5 } });
    let verdict = serde_json::json!({ "verdict": "wrong" });
    let label = format!("/api/v1/events/{event_id}/label");
    assert_eq!(viewer.send_json("put", "/api/v1/zones/yard", &zones, Some(&viewer.csrf)).status, 403);
    assert_eq!(viewer.send_json("post", "/api/v1/settings", &threshold, Some(&viewer.csrf)).status, 403);
    assert_eq!(viewer.send_json("post", &label, &verdict, Some(&viewer.csrf)).status, 403);
    assert_eq!(viewer.post("/api/v1/cameras/yard/test", Some(&viewer.csrf)).status, 403);
    assert_eq!(admin.send_json("put", "/api/v1/zones/yard", &zones, None).status, 403, "no token");
    assert_eq!(viewer.get("/api/v1/zones/yard").status, 200, "a viewer sees the zones");
    let text = std::fs::read_to_string(web.dir.path().join("agent.toml")).unwrap();
    assert!(!text.contains("scenes") && !text.contains("min_score = 0.5"), "nothing was written: {text}");
    assert!(!web.state_dir().join("samples").exists(), "nothing was labelled");

    let config: serde_json::Value = serde_json::from_str(&admin.get("/api/v1/config").body).unwrap();
    let text = config.to_string();
    assert!(text.contains(ADMIN.0) && text.contains("web-box"), "{text}");
    assert!(!text.contains("$argon2id$") && !text.contains(METRICS_TOKEN), "secrets leaked: {text}");
}

#[test]
fn metrics_open_to_the_bearer_token_which_opens_nothing_else() {
    let web = WebAgent::start("");
    let admin = HttpSession::login(&web.base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    first_event_id(&admin);
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let wrong = anonymous_get(&format!("{}/metrics", web.base), &[("Authorization", "Bearer wrong-token-0000000000")]);
    assert_eq!(wrong.status, 401);
    let metrics = anonymous_get(&format!("{}/metrics", web.base), &[("Authorization", &bearer)]);
    assert_eq!(metrics.status, 200);
    assert!(metrics.content_type.starts_with("text/plain; version=0.0.4"), "{}", metrics.content_type);
    for needle in [
        "edge_agent_frames_captured_total{camera=\"yard\"}",
        "edge_agent_frames_dropped_total{camera=\"yard\"}",
        "edge_agent_camera_fps{camera=\"yard\"}",
        "edge_agent_inference_seconds_bucket{model=\"nanodet\",le=\"+Inf\"}",
        "edge_agent_inference_seconds_count{model=\"nanodet\"}",
        "edge_agent_events_total{kind=\"object\"}",
        "edge_agent_outbox_depth ",
        "edge_agent_mqtt_connected 0",
        "edge_agent_disk_free_bytes ",
    ] {
        assert!(metrics.body.contains(needle), "{needle} missing from:\n{}", metrics.body);
    }
    let count: f64 = metrics
        .body
        .lines()
        .find(|l| l.starts_with("edge_agent_inference_seconds_count{model=\"nanodet\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(count >= 1.0, "the detector ran at least once");
    for path in ["/api/v1/status", "/", "/api/v1/config"] {
        let reply = anonymous_get(&format!("{}{path}", web.base), &[("Authorization", &bearer)]);
        assert!(matches!(reply.status, 401 | 303), "{path} with the metrics token: {}", reply.status);
    }
}

#[test]
fn a_web_site_pointing_its_name_at_loopback_gets_nothing() {
    let web = WebAgent::start("");
    let reply = anonymous_get(&format!("{}/login", web.base), &[("Host", &format!("attacker.example:{}", web.port))]);
    assert_eq!(reply.status, 421, "{}", reply.body);
}

#[test]
fn the_demo_without_users_is_open_on_loopback_only() {
    let web = WebAgent::start_with("", false);
    let status = anonymous_get(&format!("{}/api/v1/status", web.base), &[]);
    assert_eq!(status.status, 200, "{}", status.body);
    let status: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(status["open_access"], true);
    assert!(log_contains(&web.agent.log, "no `web.users` configured"), "{}", web.agent.log_text());

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lan.toml");
    std::fs::write(&config, "[web]\nlisten = \"0.0.0.0:18080\"\n").unwrap();
    let output = std::process::Command::new(agent_binary()).args(["run", "--config"]).arg(&config).output().unwrap();
    assert!(!output.status.success(), "serving the LAN without users must be refused");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("web.users") && stderr.contains("edge-agent passwd"), "{stderr}");
}

/// Trusts exactly the agent's self-signed certificate, checks it names 127.0.0.1, then GETs.
fn https_get(port: u16, certificate_pem: &std::path::Path, path: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certificate_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    write!(tls, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    answer
}

#[test]
fn https_serves_a_self_signed_certificate_made_once_and_kept() {
    let web = WebAgent::start("https = true");
    let certificate = web.state_dir().join("web-tls/cert.pem");
    let answer = https_get(web.port, &certificate, "/healthz");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");
    let login = https_get(web.port, &certificate, "/login");
    assert!(login.to_ascii_lowercase().contains("set-cookie: edge_login="), "{login}");
    assert!(login.contains("; Secure"), "cookies are Secure over HTTPS: {login}");
    let first = std::fs::read(&certificate).unwrap();

    // The same certificate after a restart.
    let WebAgent { agent, dir, port, .. } = web;
    drop(agent);
    let config = dir.path().join("agent.toml");
    let again = Agent::start(&config, &dir.path().join("agent-2.log"));
    assert!(wait_for_port(port, Duration::from_secs(60)), "{}", again.log_text());
    assert_eq!(std::fs::read(&certificate).unwrap(), first);
    let answer = https_get(port, &certificate, "/healthz");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn an_admin_sets_the_registered_trucks_and_a_text_that_is_not_a_plate_is_refused_naming_the_key() {
    let web = WebAgent::start("");
    let admin = HttpSession::login(&web.base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let viewer = HttpSession::login(&web.base, VIEWER.0, VIEWER.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let set = |session: &HttpSession, values: serde_json::Value| {
        session.send_json("post", "/api/v1/settings", &serde_json::json!({ "values": values }), Some(&session.csrf))
    };
    let hostile = "<script>alert(1)</script>";
    let refused = set(&admin, serde_json::json!({ "plates.registered": ["浙EA3262", hostile] }));
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("plates.registered") && !refused.body.contains("script"), "{}", refused.body);
    // Which plates are read stays the config file's.
    let reading = set(&admin, serde_json::json!({ "plates.labels": ["car"] }));
    assert_eq!(reading.status, 403, "{}", reading.body);
    assert!(reading.body.contains("local_only") && reading.body.contains("plates.labels"), "{}", reading.body);
    assert_eq!(set(&viewer, serde_json::json!({ "plates.registered": ["浙EA3262"] })).status, 403);
    let text = std::fs::read_to_string(web.dir.path().join("agent.toml")).unwrap();
    assert!(!text.contains("plates"), "nothing was written: {text}");

    let saved = set(&admin, serde_json::json!({ "plates.registered": ["浙EA3262", "京A·12345"] }));
    assert_eq!(saved.status, 200, "{}", saved.body);
    let text = std::fs::read_to_string(web.dir.path().join("agent.toml")).unwrap();
    assert!(text.contains("浙EA3262") && text.contains("京A·12345"), "{text}");
    // The installer page lists them; a viewer sees them without a way to change them.
    let page = admin.get("/installer?camera=yard").body;
    assert!(page.contains("id=\"registered-plates\"") && page.contains("浙EA3262\n京A·12345"), "{page}");
    let seen = viewer.get("/installer?camera=yard").body;
    assert!(seen.contains("浙EA3262") && seen.contains("id=\"save-registered\" type=\"submit\" disabled"), "{seen}");
}
