//! Prometheus `/metrics` in the text exposition format, read from the status board at scrape time.
//! Open to a scraper that presents `web.metrics_token` as a bearer token, to a logged-in session,
//! or to anyone with `web.metrics_public = true`; the token opens nothing else.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::{cookie, same_secret, SESSION_COOKIE};
use super::system::{cpu_temperature, disk_space, DiskSpace};
use super::WebState;
use crate::delivery::board::{Status, LATENCY_BUCKETS};

pub async fn metrics(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    if !may_scrape(&state, &headers) {
        let mut response =
            (StatusCode::UNAUTHORIZED, "metrics need the bearer token `web.metrics_token`\n").into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"metrics\""));
        return response;
    }
    let status = state.board.snapshot();
    let disk = disk_space(&state.state_dir);
    let text = render(&status, disk, cpu_temperature());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

fn may_scrape(state: &WebState, headers: &HeaderMap) -> bool {
    if state.metrics_public || state.auth.is_open() {
        return true;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let (Some(presented), Some(token)) = (bearer, state.metrics_token.as_deref()) {
        if same_secret(presented, token.trim()) {
            return true;
        }
    }
    cookie(headers, SESSION_COOKIE).and_then(|token| state.auth.session(token)).is_some()
}

/// A label value with `\`, `"` and newlines escaped as the format asks.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(status: &Status, disk: Option<DiskSpace>, cpu_celsius: Option<f64>) -> String {
    let mut out = String::with_capacity(4096);
    family(&mut out, "edge_agent_build_info", "gauge", "Version of the running agent.");
    let _ = writeln!(
        out,
        "edge_agent_build_info{{version=\"{}\",device=\"{}\"}} 1",
        label(status.version),
        label(&status.device_id)
    );
    family(&mut out, "edge_agent_uptime_seconds", "gauge", "Seconds since the agent started.");
    let _ = writeln!(out, "edge_agent_uptime_seconds {}", status.uptime_seconds);

    let per_camera: [(&str, &str, &str, fn(&crate::delivery::board::CameraStatus) -> f64); 5] = [
        ("edge_agent_frames_captured_total", "counter", "Frames read from the camera.", |c| c.frames_captured as f64),
        ("edge_agent_frames_inferred_total", "counter", "Frames the models ran on.", |c| c.frames_inferred as f64),
        (
            "edge_agent_frames_dropped_total",
            "counter",
            "Frames replaced by a newer one before inference got to them.",
            |c| c.frames_dropped as f64,
        ),
        ("edge_agent_camera_errors_total", "counter", "Errors reading the camera.", |c| c.errors as f64),
        ("edge_agent_camera_fps", "gauge", "Frames judged per second over the last seconds.", |c| c.fps),
    ];
    for (name, kind, help, value) in per_camera {
        family(&mut out, name, kind, help);
        for camera in &status.cameras {
            let _ = writeln!(out, "{name}{{camera=\"{}\"}} {}", label(&camera.id), value(camera));
        }
    }

    let name = "edge_agent_inference_seconds";
    family(&mut out, name, "histogram", "Time one model took on one frame.");
    for (model, histogram) in &status.model_latency {
        let model = label(model);
        for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.bucket_counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"+Inf\"}} {}", histogram.count);
        let _ = writeln!(out, "{name}_sum{{model=\"{model}\"}} {}", histogram.sum_seconds);
        let _ = writeln!(out, "{name}_count{{model=\"{model}\"}} {}", histogram.count);
    }

    family(&mut out, "edge_agent_events_total", "counter", "Events since start, by kind.");
    for (kind, count) in &status.events_by_kind {
        let _ = writeln!(out, "edge_agent_events_total{{kind=\"{}\"}} {count}", label(kind));
    }
    family(&mut out, "edge_agent_outbox_depth", "gauge", "Messages waiting in the outbox for the broker.");
    let _ = writeln!(out, "edge_agent_outbox_depth {}", status.outbox_depth);
    family(&mut out, "edge_agent_mqtt_connected", "gauge", "1 while connected to the MQTT broker.");
    let _ = writeln!(out, "edge_agent_mqtt_connected {}", u8::from(status.mqtt.connected));
    family(&mut out, "edge_agent_mqtt_published_total", "counter", "Messages the broker acknowledged.");
    let _ = writeln!(out, "edge_agent_mqtt_published_total {}", status.mqtt.published);
    family(
        &mut out,
        "edge_agent_mqtt_broker_switches_total",
        "counter",
        "Times the MQTT link moved to another configured broker (failover or back).",
    );
    let _ = writeln!(out, "edge_agent_mqtt_broker_switches_total {}", status.mqtt.broker_switches);
    if let Some(disk) = disk {
        family(&mut out, "edge_agent_disk_free_bytes", "gauge", "Free space on the disk of the state folder.");
        let _ = writeln!(out, "edge_agent_disk_free_bytes {}", disk.free_bytes);
        family(&mut out, "edge_agent_disk_total_bytes", "gauge", "Size of the disk of the state folder.");
        let _ = writeln!(out, "edge_agent_disk_total_bytes {}", disk.total_bytes);
    }
    if let Some(celsius) = cpu_celsius {
        family(&mut out, "edge_agent_cpu_temperature_celsius", "gauge", "Hottest thermal zone.");
        let _ = writeln!(out, "edge_agent_cpu_temperature_celsius {celsius}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::board::StatusBoard;

    #[test]
    fn every_sample_line_belongs_to_a_declared_family() {
        let board = StatusBoard::new("box-\"1\"".into(), Vec::new());
        board.add_camera("gate", Default::default());
        let text = render(&board.snapshot(), Some(DiskSpace { free_bytes: 5, total_bytes: 10 }), Some(48.5));
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
                assert!(declared.iter().any(|d| d == name || d == family), "undeclared sample: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
            }
        }
        assert!(text.contains("edge_agent_frames_captured_total{camera=\"gate\"} 0"));
        assert!(text.contains("device=\"box-\\\"1\\\"\""), "quotes escaped: {text}");
        assert!(text.contains("edge_agent_disk_free_bytes 5"));
        assert!(text.contains("edge_agent_cpu_temperature_celsius 48.5"));
    }
}
