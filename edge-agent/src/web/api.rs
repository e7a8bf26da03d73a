//! The JSON API under `/api/v1`. The router is built only from [`routes`], and a test checks that
//! list against the OpenAPI document (`assets/openapi.json`) both ways, so no route goes
//! undocumented and no documented path is missing.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::auth::{Admin, Session};
use super::events::{self, ApiEvent, EventFilter, EventView};
use super::extract::{ApiPath as Path, ApiQuery as Query};
use super::stats;
use super::system::{cpu_temperature, disk_space, DiskSpace};
use super::WebState;
use crate::delivery::board::Status;

pub const OPENAPI_JSON: &str = include_str!("assets/openapi.json");

/// One route of the API: method and path as the OpenAPI document spells them (axum and OpenAPI
/// both write parameters as `{name}`).
pub struct ApiRoute {
    pub method: Method,
    pub path: &'static str,
    pub handler: MethodRouter<Arc<WebState>>,
}

/// Every route of the API.
pub fn routes() -> Vec<ApiRoute> {
    use super::{installer, labels};
    let route = |method: Method, path: &'static str, handler| ApiRoute { method, path, handler };
    vec![
        route(Method::GET, "/api/v1/status", get(status)),
        route(Method::GET, "/api/v1/cameras", get(cameras)),
        route(Method::GET, "/api/v1/cameras/{camera}/frame.jpg", get(latest_frame)),
        route(Method::GET, "/api/v1/cameras/{camera}/scene.jpg", get(installer::scene)),
        route(Method::POST, "/api/v1/cameras/{camera}/test", post(installer::test_models)),
        route(Method::GET, "/api/v1/events", get(list_events)),
        route(Method::GET, "/api/v1/events/stream", get(super::sse::event_stream)),
        route(Method::GET, "/api/v1/events/{event_id}", get(event)),
        route(Method::GET, "/api/v1/events/{event_id}/evidence.jpg", get(evidence)),
        route(Method::GET, "/api/v1/events/{event_id}/plate.jpg", get(plate_picture)),
        route(Method::GET, "/api/v1/events/{event_id}/clip.mp4", get(clip)),
        route(Method::POST, "/api/v1/events/{event_id}/acknowledge", post(acknowledge)),
        route(Method::GET, "/api/v1/events/{event_id}/label", get(labels::get_label)),
        route(Method::POST, "/api/v1/events/{event_id}/label", post(labels::post_label)),
        route(Method::GET, "/api/v1/stats", get(statistics)),
        route(Method::GET, "/api/v1/zones", get(installer::all_zones)),
        route(Method::GET, "/api/v1/zones/{camera}", get(installer::camera_zones)),
        route(Method::PUT, "/api/v1/zones/{camera}", put(installer::save_zones)),
        route(Method::GET, "/api/v1/settings", get(installer::settings)),
        route(Method::POST, "/api/v1/settings", post(installer::change_settings)),
        route(Method::GET, "/api/v1/learn", get(super::learning::status)),
        route(Method::POST, "/api/v1/learn", post(super::learning::train)),
        route(Method::POST, "/api/v1/learn/deploy", post(super::learning::deploy)),
        route(Method::GET, "/api/v1/learn/report/{file}", get(super::learning::report)),
        route(Method::GET, "/api/v1/config", get(config)),
        route(Method::GET, "/api/v1/openapi.json", get(openapi)),
    ]
}

pub fn router() -> Router<Arc<WebState>> {
    // axum merges two methods of one path into one route.
    let router = routes().into_iter().fold(Router::new(), |router, route| router.route(route.path, route.handler));
    // After the routes: it applies to those present. axum still adds the Allow header.
    router.method_not_allowed_fallback(method_not_allowed)
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take this method; see the Allow header",
    )
}

/// Paths under `/api/` that no route has: the API's JSON error; elsewhere a plain 404.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        error(StatusCode::NOT_FOUND, "no_such_route", "no such API path; the paths are in /api/v1/openapi.json")
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// `{"code": "...", "message": "..."}` with a status code: what every API failure looks like. The
/// code is stable (clients branch on it); the message names what was wrong, never quoting input.
pub fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    (status, Json(json!({ "code": code, "message": message.into() }))).into_response()
}

/// An event id as the API takes it: a UUID in its hyphenated form, nothing else near a lookup.
pub fn parse_event_id(event_id: &str) -> Result<Uuid, Response> {
    Uuid::try_parse(event_id).ok().filter(|_| event_id.len() == 36).ok_or_else(|| {
        error(StatusCode::BAD_REQUEST, "invalid_path", "the path's `event_id` is not accepted; expected a UUID")
    })
}

/// The answer for an event id the box does not keep.
pub fn no_such_event(id: Uuid) -> Response {
    error(StatusCode::NOT_FOUND, "no_such_event", format!("no event {id} among those this box keeps"))
}

#[derive(Serialize)]
struct StatusView {
    #[serde(flatten)]
    status: Status,
    disk: Option<DiskSpace>,
    cpu_temperature_celsius: Option<f64>,
    /// The page is open without login (no users configured, loopback only).
    open_access: bool,
}

async fn status(State(state): State<Arc<WebState>>) -> Response {
    Json(StatusView {
        status: state.board.snapshot(),
        disk: disk_space(&state.state_dir),
        cpu_temperature_celsius: cpu_temperature(),
        open_access: state.auth.is_open(),
    })
    .into_response()
}

async fn cameras(State(state): State<Arc<WebState>>) -> Response {
    let cameras: Vec<_> = state
        .board
        .snapshot()
        .cameras
        .into_iter()
        .map(|camera| {
            let frame_url = format!("/api/v1/cameras/{}/frame.jpg", events::path_segment(&camera.id));
            json!({ "camera": camera, "frame_url": frame_url })
        })
        .collect();
    Json(json!({ "cameras": cameras })).into_response()
}

async fn latest_frame(State(state): State<Arc<WebState>>, Path(camera): Path<String>) -> Response {
    // The frame is encoded when someone asks (at most once per frame): blocking work.
    let board = state.board.clone();
    let wanted = camera.clone();
    let jpeg = tokio::task::spawn_blocking(move || board.latest_jpeg(&wanted)).await.ok().flatten();
    match jpeg {
        Some(jpeg) => {
            ([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg.as_ref().clone())
                .into_response()
        }
        None if state.board.camera_ids().contains(&camera) => {
            error(StatusCode::NOT_FOUND, "no_frame_yet", "the camera has no frame yet")
        }
        None => super::installer::no_such_camera(&state),
    }
}

#[derive(Serialize)]
struct EventList {
    events: Vec<ApiEvent>,
    /// Events matching the filter among those the box keeps in memory.
    matching: usize,
    /// Pass as `before` for the next (older) page; absent on the last page.
    next_before: Option<Uuid>,
}

/// The API takes times in RFC 3339 only, as its document says (the page's form also sends a
/// browser's local time, which the page's own list accepts), a limit in range and a real cursor.
fn strict_filter(filter: &EventFilter) -> Result<(), Response> {
    let refused = |field: &str, expected: &str| {
        let message = format!("the query string's `{field}` is not accepted; expected {expected}");
        error(StatusCode::BAD_REQUEST, "invalid_query", message)
    };
    for (field, value) in [("since", &filter.since), ("until", &filter.until)] {
        let rfc3339 = |text: &str| {
            text.as_bytes().get(10).is_some_and(|c| matches!(c, b'T' | b't'))
                && chrono::DateTime::parse_from_rfc3339(text).is_ok()
        };
        if value.as_deref().is_some_and(|text| !rfc3339(text)) {
            return Err(refused(field, "an RFC 3339 time such as 2024-05-01T08:30:00+08:00"));
        }
    }
    // The page's list clamps a limit; the API holds to the documented range.
    if filter.limit.is_some_and(|limit| !(1..=events::MAX_LIMIT).contains(&limit)) {
        return Err(refused("limit", "1 to 200 events per page"));
    }
    if filter.before.as_deref().is_some_and(|id| parse_event_id(id).is_err()) {
        return Err(refused("before", "an event id (a UUID), the previous page's next_before"));
    }
    Ok(())
}

async fn list_events(State(state): State<Arc<WebState>>, Query(filter): Query<EventFilter>) -> Response {
    if let Err(refused) = strict_filter(&filter) {
        return refused;
    }
    let all = events::latest_per_event(state.board.event_history());
    match events::query(all, &filter) {
        Ok(page) => Json(EventList {
            events: page.events.iter().map(EventView::to_api).collect(),
            matching: page.matching,
            next_before: page.next_before,
        })
        .into_response(),
        Err(bad) => error(StatusCode::BAD_REQUEST, "invalid_query", bad.to_string()),
    }
}

/// The event a path names; ids are UUIDs, nothing else gets near a lookup.
fn find(state: &WebState, event_id: &str) -> Result<EventView, Response> {
    let id = parse_event_id(event_id)?;
    state.board.event_record(id).map(EventView::new).ok_or_else(|| no_such_event(id))
}

async fn event(State(state): State<Arc<WebState>>, Path(event_id): Path<String>) -> Response {
    match find(&state, &event_id) {
        Ok(view) => Json(view.to_api()).into_response(),
        Err(response) => response,
    }
}

#[derive(serde::Deserialize)]
struct RevisionQuery {
    revision: Option<u32>,
}

async fn evidence(
    State(state): State<Arc<WebState>>,
    Path(event_id): Path<String>,
    Query(query): Query<RevisionQuery>,
) -> Response {
    let view = match find(&state, &event_id) {
        Ok(view) => view,
        Err(response) => return response,
    };
    let view = match query.revision {
        Some(revision) => match state.board.event_revision(view.record.event.event_id, Some(revision)) {
            Some(record) => EventView::new(record),
            None => {
                let id = view.id();
                return error(
                    StatusCode::NOT_FOUND,
                    "no_such_revision",
                    format!("event {id} has no kept revision {revision}"),
                );
            }
        },
        None => view,
    };
    match events::evidence_image(&state.state_dir, &view).await {
        Some(jpeg) => kept_jpeg(jpeg.as_ref().clone()),
        None => {
            error(StatusCode::NOT_FOUND, "no_evidence", format!("no evidence image is kept for event {}", view.id()))
        }
    }
}

/// The picture of the event's plate, kept as evidence: of the revision asked for, else the newest
/// one kept.
async fn plate_picture(
    State(state): State<Arc<WebState>>,
    Path(event_id): Path<String>,
    Query(query): Query<RevisionQuery>,
) -> Response {
    let view = match find(&state, &event_id) {
        Ok(view) => view,
        Err(response) => return response,
    };
    let evidence_dir = state.state_dir.join("evidence");
    let id = view.record.event.event_id;
    let read = match events::plate_picture_path(&evidence_dir, &state.board, id, query.revision) {
        Some(path) => tokio::fs::read(path).await.ok(),
        None => None,
    };
    match read {
        Some(jpeg) => kept_jpeg(jpeg),
        None => error(StatusCode::NOT_FOUND, "no_plate_picture", format!("no plate picture is kept for event {id}")),
    }
}

/// A kept evidence picture: it never changes, so the browser may keep it for an hour.
fn kept_jpeg(jpeg: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "private, max-age=3600")], jpeg).into_response()
}

/// The event's video clip (fragmented MP4), streamed from the evidence folder; a clip still being
/// recorded is served as far as it is written.
async fn clip(State(state): State<Arc<WebState>>, Path(event_id): Path<String>) -> Response {
    use tokio::io::AsyncReadExt;
    let view = match find(&state, &event_id) {
        Ok(view) => view,
        Err(response) => return response,
    };
    let Some(path) = events::clip_path(&state.state_dir.join("evidence"), &view) else {
        return error(StatusCode::NOT_FOUND, "no_clip", format!("no video clip is kept for event {}", view.id()));
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) => {
            let id = view.id();
            return error(
                StatusCode::NOT_FOUND,
                "no_clip",
                format!("the clip of event {id} cannot be read: {}", e.kind()),
            );
        }
    };
    // In pieces: a clip may be tens of megabytes.
    let pieces = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut piece = vec![0u8; 64 * 1024];
        match file.read(&mut piece).await {
            Ok(0) => None,
            Ok(read) => {
                piece.truncate(read);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(piece)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    (
        [(header::CONTENT_TYPE, "video/mp4"), (header::CACHE_CONTROL, "private, no-cache")],
        axum::body::Body::from_stream(pieces),
    )
        .into_response()
}

async fn acknowledge(
    State(state): State<Arc<WebState>>,
    Admin(session): Admin,
    Path(event_id): Path<String>,
) -> Response {
    let view = match find(&state, &event_id) {
        Ok(view) => view,
        Err(response) => return response,
    };
    match state.board.acknowledge_event(view.id(), &session.user) {
        Some(ack) => {
            tracing::info!(event_id = %view.id(), user = %session.user, "event acknowledged");
            Json(json!({ "event_id": view.id(), "acknowledged": ack })).into_response()
        }
        None => no_such_event(view.id()),
    }
}

#[derive(Deserialize)]
struct StatsQuery {
    days: Option<u32>,
}

async fn statistics(State(state): State<Arc<WebState>>, Query(query): Query<StatsQuery>) -> Response {
    let days = query.days.unwrap_or(14);
    if !(1..=366).contains(&days) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "the query string's `days` is out of range; expected 1 to 366",
        );
    }
    // Every kept revision, as the page does: a lifecycle counts at its start, its time to clear
    // comes with its end (the newest revision alone would lose the start of an ended incident).
    let views: Vec<EventView> = state.board.event_history().into_iter().map(EventView::new).collect();
    let daily = stats::daily(&views, days, chrono::Local::now().date_naive());
    Json(json!({ "days": daily })).into_response()
}

/// The configuration file as it is now (zones saved from the page included), secrets redacted
/// (admins only).
async fn config(State(state): State<Arc<WebState>>, Admin(_): Admin) -> Response {
    Json(super::config_view(state.settings.store().path())).into_response()
}

async fn openapi(_: Session) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (method, path) pairs the OpenAPI document declares.
    fn documented() -> Vec<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                if method == "parameters" {
                    continue;
                }
                assert!(operation["responses"].is_object(), "{method} {path} documents its responses");
                found.push((method.to_uppercase(), path.clone()));
            }
        }
        found.sort();
        found
    }

    #[test]
    fn every_api_route_is_documented_and_every_documented_route_exists() {
        let mut served: Vec<(String, String)> =
            routes().iter().map(|r| (r.method.as_str().to_string(), r.path.to_string())).collect();
        served.sort();
        assert_eq!(served, documented());
    }

    #[test]
    fn the_documents_event_is_the_mqtt_events_schema() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let schemas = &doc["components"]["schemas"];
        let text = include_str!("../../../docs/schemas/event.schema.json")
            .replace("#/definitions/model", "#/components/schemas/EventModel")
            .replace("#/definitions/nullableNumber", "#/components/schemas/NullableNumber");
        let mqtt: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(schemas["Event"]["properties"], mqtt["properties"], "Event's fields as docs/schemas has them");
        assert_eq!(schemas["Event"]["required"], mqtt["required"]);
        assert_eq!(schemas["EventModel"], mqtt["definitions"]["model"]);
        assert_eq!(schemas["NullableNumber"], mqtt["definitions"]["nullableNumber"]);
        for field in ["category", "zone"] {
            assert_eq!(schemas["Event"]["properties"][field]["type"], serde_json::json!(["string", "null"]), "{field}");
        }
    }

    #[test]
    fn every_refusal_is_documented_as_the_json_error() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                let takes_input = operation["parameters"].is_array() || operation["requestBody"].is_object();
                assert!(
                    !takes_input || responses.contains_key("400"),
                    "{method} {path}: a refused input is not documented"
                );
                for (status, response) in responses.iter().filter(|(status, _)| status.as_str() >= "400") {
                    let schema = response["content"]["application/json"]["schema"]["$ref"].as_str();
                    assert!(
                        matches!(schema, Some("#/components/schemas/Error" | "#/components/schemas/ChangeError")),
                        "{method} {path} {status}: {schema:?}"
                    );
                }
            }
        }
        let error = &doc["components"]["schemas"]["Error"];
        assert_eq!(error["required"], serde_json::json!(["code", "message"]));
    }

    #[test]
    fn path_parameters_are_declared() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_start_matches('{').split('}').next().unwrap();
                let declared = item.as_object().unwrap().values().any(|op| {
                    op["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"))
                });
                assert!(declared, "{path}: parameter {name} is not declared");
            }
        }
    }
}
