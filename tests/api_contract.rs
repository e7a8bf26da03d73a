//! The JSON API against its own OpenAPI document, by someone else's reading of it: Schemathesis
//! (all checks, examples, coverage, fuzzing and stateful phases) as the page's admin with the
//! session's CSRF token, on a real agent with live events; and the event stream's messages against
//! the document's `StreamMessage`, by Python jsonschema.

mod web_support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use edge_agent_tests::*;
use web_support::*;

/// The `schemathesis` program from $EDGE_AGENT_SCHEMATHESIS (set by scripts/test.sh).
fn schemathesis() -> Option<PathBuf> {
    let program = std::env::var_os("EDGE_AGENT_SCHEMATHESIS").map(PathBuf::from).filter(|p| p.is_file());
    if program.is_none() {
        missing_real_part(
            "schemathesis (EDGE_AGENT_SCHEMATHESIS)",
            "run scripts/test.sh, which installs it in a venv and sets EDGE_AGENT_SCHEMATHESIS",
        );
    }
    program
}

/// The value of the session cookie (`edge_session=VALUE`).
fn cookie_value(pair: &str) -> String {
    pair.split_once('=').map(|(_, value)| value.to_string()).expect("name=value")
}

#[test]
fn the_api_answers_as_its_document_says_under_schemathesis() {
    let Some(program) = schemathesis() else {
        return;
    };
    let web = WebAgent::start("");
    let admin = HttpSession::login(&web.base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    // Live events, so the event routes answer with real ones and not only 404.
    first_event_id(&admin);
    let served = admin.get("/api/v1/openapi.json");
    assert_eq!(served.status, 200, "{}", served.body);
    let work = tempfile::tempdir().expect("temp dir");
    let document = work.path().join("openapi.json");
    std::fs::write(&document, &served.body).expect("write the served document");
    // A fixed seed and a bounded run by default (CI); set these to search longer.
    let seed = std::env::var("EDGE_AGENT_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".to_string());
    let examples = std::env::var("EDGE_AGENT_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".to_string());
    let started = Instant::now();
    let output = Command::new(&program)
        .arg("--config-file")
        .arg(repo_root().join("tests/fixtures/schemathesis.toml"))
        .arg("run")
        .arg(&document)
        .args(["--url", &web.base, "--checks", "all", "--max-examples", &examples, "--seed", &seed])
        // The stream never ends; the test below reads it.
        .args(["--exclude-path", "/api/v1/events/stream"])
        .args(["--workers", "1", "--request-timeout", "20", "--no-color"])
        .env("EDGE_SESSION", cookie_value(&admin.cookie))
        .env("EDGE_CSRF", &admin.csrf)
        .current_dir(work.path())
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "schemathesis (seed {seed}, {examples} examples) took {:.0} s:\n{report}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis found the API answering other than documented:\n{report}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        web.agent.log_text()
    );
    assert!(report.contains("passed"), "schemathesis ran no test case:\n{report}");
    // The run changed nothing it should not have: the agent is still up and logged in.
    assert_eq!(admin.get("/api/v1/status").status, 200);
}

/// The messages of the event stream, parsed: `{"event", "id"?, "data"}` with `data` read as JSON.
fn stream_messages(base: &str, cookie: &str, wanted: usize) -> Vec<serde_json::Value> {
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    write!(
        stream,
        "GET /api/v1/events/stream HTTP/1.1\r\nHost: {address}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut messages = Vec::new();
    while messages.len() < wanted && Instant::now() < deadline {
        let read = stream.read(&mut buffer).expect("read the stream");
        assert!(read > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buffer[..read]));
        // Only whole messages (up to the last blank line); with chunked transfer each message is
        // one chunk, and the chunk-size lines between them have no field name, so they are skipped.
        let whole = text.rfind("\n\n").map_or("", |end| &text[..end]);
        messages = whole
            .split("\n\n")
            .filter_map(|block| {
                let mut message = serde_json::Map::new();
                for line in block.lines() {
                    let Some((field, value)) = line.split_once(':') else { continue };
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" | "id" => {
                            message.insert(field.into(), value.into());
                        }
                        "data" => {
                            let data = serde_json::from_str(value).unwrap_or_else(|_| value.into());
                            message.insert(field.into(), data);
                        }
                        _ => {}
                    }
                }
                message.contains_key("event").then_some(serde_json::Value::Object(message))
            })
            .collect();
    }
    messages
}

#[test]
fn the_event_streams_messages_match_their_schema() {
    let python = std::env::var_os("EDGE_AGENT_SCHEMA_PYTHON").map(PathBuf::from).filter(|p| p.is_file());
    let Some(python) = python else {
        missing_real_part(
            "Python with jsonschema (EDGE_AGENT_SCHEMA_PYTHON)",
            "run scripts/test.sh, which creates the venv and sets EDGE_AGENT_SCHEMA_PYTHON",
        );
        return;
    };
    let web = WebAgent::start("");
    let admin = HttpSession::login(&web.base, ADMIN.0, ADMIN.1).unwrap_or_else(|r| panic!("login: {}", r.body));
    let messages = stream_messages(&web.base, &admin.cookie, 2);
    assert!(messages.len() >= 2, "fewer than 2 messages in 90 s: {messages:?}");
    assert!(messages.iter().all(|m| m["event"] == "event"), "{messages:?}");
    let served = admin.get("/api/v1/openapi.json");
    let work = tempfile::tempdir().expect("temp dir");
    std::fs::write(work.path().join("openapi.json"), &served.body).expect("write the document");
    std::fs::write(work.path().join("messages.json"), serde_json::to_string(&messages).unwrap()).expect("write");
    // The document's components are JSON Schema 2020-12 (OpenAPI 3.1): validate against them directly.
    let script = r##"
import json, sys, jsonschema
doc = json.load(open("openapi.json"))
schema = {"$ref": "#/components/schemas/StreamMessage", "components": doc["components"]}
validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
bad = [f"{i}: {e.json_path}: {e.message[:200]}" for i, m in enumerate(json.load(open("messages.json"))) for e in validator.iter_errors(m)]
print("\n".join(bad) or "ok")
sys.exit(1 if bad else 0)
"##;
    let output = Command::new(python).args(["-c", script]).current_dir(work.path()).output().expect("run python");
    assert!(
        output.status.success(),
        "stream messages do not match StreamMessage:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
