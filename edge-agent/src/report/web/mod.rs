//! The local web page and JSON API, served by axum from the status board: `/` (cameras, latest
//! annotated frames, last events), `/healthz`, `/api/status`, `/api/cameras/{id}/frame.jpg`.

pub mod config;

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::board::StatusBoard;
use crate::shutdown::Shutdown;

pub fn router(board: Arc<StatusBoard>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/api/status", get(status))
        .route("/api/cameras/{camera}/frame.jpg", get(latest_frame))
        .with_state(board)
}

/// Binds first (so a taken port is an error at start, naming the address), then serves until
/// shutdown.
pub async fn serve(listen: &str, board: Arc<StatusBoard>, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("web page: cannot listen on {listen} (config `web.listen`): {e}"))?;
    tracing::info!("web page on http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let served =
            axum::serve(listener, router(board)).with_graceful_shutdown(async move { shutdown.wait().await }).await;
        if let Err(e) = served {
            tracing::error!("web page stopped: {e}");
        }
    });
    Ok(())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn status(State(board): State<Arc<StatusBoard>>) -> Response {
    Json(board.snapshot()).into_response()
}

async fn latest_frame(State(board): State<Arc<StatusBoard>>, Path(camera): Path<String>) -> Response {
    match board.latest_jpeg(&camera) {
        Some(jpeg) => {
            ([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg.as_ref().clone())
                .into_response()
        }
        None if board.camera_ids().contains(&camera) => {
            (StatusCode::NOT_FOUND, format!("camera {camera:?} has no frame yet\n")).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no camera {camera:?}\n")).into_response(),
    }
}

async fn index(State(board): State<Arc<StatusBoard>>) -> Html<String> {
    Html(render_index(&board.snapshot()))
}

/// Escapes text for HTML element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn render_index(status: &super::board::Status) -> String {
    let mut page = String::new();
    let device = escape(&status.device_id);
    let mqtt = if !status.mqtt.configured {
        "not configured (events stay in the local outbox)".to_string()
    } else if status.mqtt.connected {
        format!("connected to {}", escape(status.mqtt.broker.as_deref().unwrap_or("")))
    } else {
        format!(
            "disconnected from {} ({})",
            escape(status.mqtt.broker.as_deref().unwrap_or("")),
            escape(status.mqtt.last_error.as_deref().unwrap_or("connecting"))
        )
    };
    let _ = write!(
        page,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="3">
<title>edge-agent {device}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: .25rem .5rem; text-align: left; }}
img {{ max-width: 100%; height: auto; border: 1px solid #ccc; }}
.camera {{ display: inline-block; vertical-align: top; margin: 0 1rem 1rem 0; max-width: 640px; }}
</style></head><body>
<h1>edge-agent <small>{device}</small></h1>
<p>Version {version} · up {uptime} s · MQTT: {mqtt} · outbox: {depth} waiting · events: {total}</p>
<h2>Cameras</h2>
"#,
        version = escape(status.version),
        uptime = status.uptime_seconds,
        depth = status.outbox_depth,
        total = status.events_total,
    );
    for camera in &status.cameras {
        let id = escape(&camera.id);
        let _ = write!(
            page,
            r#"<div class="camera" id="camera-{id}"><h3>{id}</h3>
<img src="/api/cameras/{id}/frame.jpg" alt="latest frame of camera {id}" width="{w}" height="{h}">
<p>{captured} frames captured, {inferred} inferred, {dropped} dropped, {still} still (motion gate) · inference {ms:.0} ms{error}</p></div>
"#,
            w = camera.frame_width.max(1),
            h = camera.frame_height.max(1),
            captured = camera.frames_captured,
            inferred = camera.frames_inferred,
            dropped = camera.frames_dropped,
            still = camera.frames_still,
            ms = camera.inference_ms,
            error =
                camera.last_error.as_deref().map(|e| format!(" · <strong>{}</strong>", escape(e))).unwrap_or_default(),
        );
    }
    page.push_str("<h2>Models</h2><table><tr><th>name</th><th>task</th><th>backend</th><th>sha256</th></tr>\n");
    for model in &status.models {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{:?}</td><td>{} ({})</td><td><code>{}</code></td></tr>",
            escape(&model.name),
            model.task,
            model.backend,
            escape(&model.execution_provider),
            escape(&model.sha256[..model.sha256.len().min(16)])
        );
    }
    page.push_str("</table>\n<h2>Last events</h2>\n<table id=\"events\"><tr><th>time</th><th>camera</th><th>kind</th><th>label</th><th>score</th><th>box</th><th>event id</th></tr>\n");
    for event in &status.recent_events {
        let _ = writeln!(
            page,
            "<tr class=\"event\"><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{:.2}</td><td>{},{} – {},{}</td><td><code>{}</code></td></tr>",
            event.time.format("%Y-%m-%d %H:%M:%S"),
            escape(&event.camera),
            event.kind,
            escape(&event.label),
            event.score,
            event.bbox.x1,
            event.bbox.y1,
            event.bbox.x2,
            event.bbox.y2,
            event.event_id
        );
    }
    if status.recent_events.is_empty() {
        page.push_str("<tr><td colspan=\"7\">No events yet.</td></tr>\n");
    }
    page.push_str("</table>\n</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn the_page_lists_cameras_and_says_when_there_is_no_broker() {
        let board = StatusBoard::new("box<1>".into(), None);
        board.add_camera("gate", Default::default());
        let page = render_index(&board.snapshot());
        assert!(page.contains("box&lt;1&gt;"));
        assert!(page.contains("/api/cameras/gate/frame.jpg"));
        assert!(page.contains("not configured"));
        assert!(page.contains("No events yet."));
    }
}
