//! Labelling from the page: on an event's detail page an admin says whether the event was right,
//! what the subject really is (a model label, or `none`) and its category; the event's evidence
//! crop goes into the site's sample set (see [`crate::ops::calibrate::labelling`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::api::{error, no_such_event, parse_event_id};
use super::auth::Admin;
use super::events::evidence_file_path;
use super::extract::{json_body, ApiPath};
use super::i18n::{Lang, T};
use super::pages::{Nav, Page};
use super::WebState;
use crate::config::Config;
use crate::delivery::board::{EventRecord, SampleLabel};
use crate::evidence::EVIDENCE_CROP_MARGIN;
use crate::infer::manifest::{read_labels, Manifest};
use crate::infer::BoundingBox;
use crate::judge::config::UNKNOWN_CATEGORY;
use crate::judge::rules::crop_rect;
use crate::ops::calibrate::labelling::{add_sample, is_plain_label, LabelRow, SampleSetPaths};
use crate::wire::Event;

/// Labels of the model an event came from, for the page's suggestions and the check.
pub fn model_labels(config: &Config, model: Option<&str>) -> Vec<String> {
    let Some(model) = model else { return Vec::new() };
    config
        .models
        .iter()
        .filter_map(|m| Manifest::load(&m.manifest).ok())
        .find(|manifest| manifest.name == model)
        .and_then(|manifest| read_labels(&manifest.labels_path()).ok())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Right,
    Wrong,
}

/// What the page or the API sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    pub verdict: Verdict,
    /// What the subject really is; default: the event's label. `none`: nothing of interest.
    #[serde(default)]
    pub label: Option<String>,
    /// The right category (garbage events); empty means none given.
    #[serde(default)]
    pub category: Option<String>,
}

/// The form on the event page: the same fields plus the CSRF token.
#[derive(Debug, Deserialize)]
pub struct LabelForm {
    verdict: Verdict,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[allow(dead_code)]
    #[serde(default)]
    csrf: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    /// Stable, for the API's error answer.
    pub code: &'static str,
    pub message: String,
}

fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refused {
    Refused { status, code, message: message.into() }
}

/// The newest kept revision with an evidence crop, the crop's file name in the evidence store. The
/// crop, not the evidence frame: it has no boxes or captions drawn in to teach the models.
fn revision_with_crop(revisions: &[EventRecord]) -> Option<(&Event, String)> {
    revisions.iter().find_map(|record| {
        let files = &record.event.evidence.as_ref()?.files;
        let crop = files.iter().find(|f| f.file.ends_with("-crop.jpg"))?;
        Some((&record.event, crop.file.clone()))
    })
}

/// The event's box in the crop's pixels, when the crop is the one the judge cut for that box (the
/// row carries it, so the detector's find must overlap it).
pub fn box_in_crop(event: &Event, crop_size: (u32, u32)) -> Option<[u32; 4]> {
    let b = BoundingBox::from(event.bbox);
    let (x1, y1, x2, y2) = crop_rect(event.frame_width, event.frame_height, &b, EVIDENCE_CROP_MARGIN)?;
    if (x2 - x1, y2 - y1) != crop_size {
        return None;
    }
    let inside = |v: f32, origin: u32, size: u32| (v - origin as f32).round().clamp(0.0, size as f32) as u32;
    let bx = [
        inside(b.x1, x1, crop_size.0),
        inside(b.y1, y1, crop_size.1),
        inside(b.x2, x1, crop_size.0),
        inside(b.y2, y1, crop_size.1),
    ];
    (bx[2] > bx[0] && bx[3] > bx[1]).then_some(bx)
}

/// Checks the request against the event and the config: the label (one of the event's model's, or
/// `none`) and the category (the taxonomy's, or `unknown`).
fn check(config: &Config, event: &Event, request: &LabelRequest) -> Result<(String, Option<String>), Refused> {
    let label = request.label.as_deref().map(str::trim).filter(|l| !l.is_empty()).unwrap_or(&event.label).to_string();
    if !is_plain_label(&label) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "invalid_label",
            "`label` is not accepted; expected a label without , or #".to_string(),
        ));
    }
    let known = model_labels(config, event.model.as_ref().map(|m| m.name.as_str()));
    if label != "none" && label != event.label && !known.is_empty() && !known.contains(&label) {
        let model = event.model.as_ref().map(|m| m.name.as_str()).unwrap_or("the model");
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "invalid_label",
            format!("`label` is not one {model} can give; expected one of its labels, or none"),
        ));
    }
    let category = request.category.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(str::to_string);
    if let Some(category) = &category {
        let known = config.taxonomy.category_names().any(|c| c == category) || category == UNKNOWN_CATEGORY;
        if !known {
            let names: Vec<&str> = config.taxonomy.category_names().collect();
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "invalid_category",
                format!("`category` is not accepted; expected one of: {}, {UNKNOWN_CATEGORY}", names.join(", ")),
            ));
        }
    }
    Ok((label, category))
}

/// Labels an event: its crop into the sample folder, its row into the labels file, and the label
/// onto the board for the page.
pub async fn label_event(
    state: &WebState,
    user: &str,
    event_id: &str,
    request: LabelRequest,
) -> Result<SampleLabel, Refused> {
    let id = Uuid::try_parse(event_id).ok().filter(|_| event_id.len() == 36).ok_or_else(|| {
        refused(StatusCode::BAD_REQUEST, "invalid_path", "the path's `event_id` is not accepted; expected a UUID")
    })?;
    let revisions = state.board.event_revisions(id);
    let newest = revisions.first().map(|r| r.event.clone()).ok_or_else(|| {
        refused(StatusCode::NOT_FOUND, "no_such_event", format!("no event {id} among those this box keeps"))
    })?;
    let config = state.settings.current();
    let (label, category) = check(&config, &newest, &request)?;
    let (event, crop_file) = revision_with_crop(&revisions).map(|(e, f)| (e.clone(), f)).ok_or_else(|| {
        refused(
            StatusCode::CONFLICT,
            "no_crop",
            format!("no crop of event {id} is kept (evidence is off, or the picture was pruned): nothing to label"),
        )
    })?;
    let crop_path = evidence_file_path(&state.state_dir.join("evidence"), &crop_file).ok_or_else(|| {
        refused(
            StatusCode::CONFLICT,
            "no_crop",
            format!("the crop {crop_file} of event {id} is no longer in the evidence store"),
        )
    })?;
    let paths = SampleSetPaths::of(&config).map_err(|e| {
        refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("cannot find the sample set: {e}"))
    })?;
    let right = request.verdict == Verdict::Right;
    let picture = format!("{id}.jpg");
    let comment = format!(
        "event {id} r{} {} camera {}: {}, found {} {:.2}{}; by {user} {}",
        event.revision,
        event.kind.as_str(),
        event.camera,
        if right { "right" } else { "wrong" },
        newest.label,
        newest.score,
        category.as_deref().map(|c| format!(", category {c}")).unwrap_or_default(),
        Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
    );
    let _one_at_a_time = state.labelling.lock().await;
    let written = {
        let (paths, picture, label, event) = (paths.clone(), picture.clone(), label.clone(), event.clone());
        tokio::task::spawn_blocking(move || {
            let jpeg = std::fs::read(&crop_path).map_err(|e| format!("cannot read {}: {e}", crop_path.display()))?;
            let size = image::ImageReader::new(std::io::Cursor::new(&jpeg))
                .with_guessed_format()
                .ok()
                .and_then(|reader| reader.into_dimensions().ok());
            let bbox = if label == "none" { None } else { size.and_then(|size| box_in_crop(&event, size)) };
            let row = LabelRow { label, bbox, comment };
            add_sample(&paths, &picture, &jpeg, &[row]).map_err(|e| e.to_string())
        })
        .await
    };
    match written {
        Ok(Ok(())) => {}
        Ok(Err(message)) => return Err(refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)),
        Err(e) => return Err(refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("labelling failed: {e}"))),
    }
    let sample = SampleLabel {
        right,
        label,
        category,
        by: user.to_string(),
        at: Utc::now(),
        picture: paths.folder.join(&picture).display().to_string(),
        labels_file: paths.labels.display().to_string(),
    };
    tracing::info!(event_id = %id, user, right, label = %sample.label, labels = %sample.labels_file, "event labelled for the sample set");
    state.board.set_label(id, sample.clone());
    Ok(sample)
}

/// `GET /api/v1/events/{event_id}/label`: how the event was labelled (null: not yet), and where
/// labels go.
pub async fn get_label(State(state): State<Arc<WebState>>, ApiPath(event_id): ApiPath<String>) -> Response {
    let id = match parse_event_id(&event_id) {
        Ok(id) => id,
        Err(refused) => return refused,
    };
    if state.board.event_record(id).is_none() {
        return no_such_event(id);
    }
    let samples = SampleSetPaths::of(&state.settings.current())
        .map(|p| json!({ "folder": p.folder, "labels": p.labels }))
        .unwrap_or(serde_json::Value::Null);
    Json(json!({ "event_id": id, "label": state.board.label(id), "samples": samples })).into_response()
}

/// `POST /api/v1/events/{event_id}/label` with `{"verdict": "right"|"wrong", "label"?, "category"?}`.
pub async fn post_label(
    State(state): State<Arc<WebState>>,
    Admin(session): Admin,
    ApiPath(event_id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let shape = "{\"verdict\": \"right\"|\"wrong\", \"label\"?, \"category\"?}";
    let request: LabelRequest = match json_body(&body, shape) {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    match label_event(&state, &session.user, &event_id, request).await {
        Ok(label) => Json(json!({ "event_id": event_id, "label": label })).into_response(),
        Err(Refused { status, code, message }) => error(status, code, message),
    }
}

/// `POST /events/{event_id}/label` from the detail page's form (admins only).
pub async fn label_from_page(
    State(state): State<Arc<WebState>>,
    Admin(session): Admin,
    lang: Lang,
    uri: Uri,
    Path(event_id): Path<String>,
    Form(form): Form<LabelForm>,
) -> Response {
    let request = LabelRequest { verdict: form.verdict, label: form.label, category: form.category };
    match label_event(&state, &session.user, &event_id, request).await {
        Ok(_) => Redirect::to(&format!("/events/{event_id}#labelling")).into_response(),
        Err(Refused { status, message, .. }) => {
            let page = Page { lang, session: &session, state: &state, uri: &uri, nav: Nav::Events };
            let title = T::LabelForSamples.in_lang(lang);
            let content = maud::html! {
                h1 { (title) }
                p.error #label-error { (message) }
                p { a href={"/events/" (event_id)} { (T::Back.in_lang(lang)) } }
            };
            (status, page.render(title, content)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::ModelId;
    use crate::wire::{EventBox, EventKind};

    fn event(label: &str, bbox: EventBox) -> Event {
        Event {
            event_id: Uuid::now_v7(),
            device: "box".into(),
            station_id: "station".into(),
            camera: "yard".into(),
            label: label.into(),
            score: 0.37,
            bbox,
            frame_width: 768,
            frame_height: 576,
            model: Some(ModelId { name: "nanodet".into(), sha256: "ab".into() }),
            ..crate::judge::fixtures::test_event(EventKind::Object, crate::wire::LifecycleState::Start, Utc::now())
        }
    }

    #[test]
    fn the_events_box_is_found_again_inside_its_crop() {
        // dog.jpg's truck: the judge crops it with 15 % margin on each side.
        let truck = event("truck", EventBox { x1: 462, y1: 80, x2: 682, y2: 167 });
        let (x1, y1, x2, y2) = crop_rect(768, 576, &BoundingBox::from(truck.bbox), EVIDENCE_CROP_MARGIN).unwrap();
        let inside = box_in_crop(&truck, (x2 - x1, y2 - y1)).unwrap();
        assert_eq!(inside, [462 - x1, 80 - y1, 682 - x1, 167 - y1]);
        assert!(inside[0] > 0 && inside[2] < x2 - x1, "{inside:?}");
        // A crop of another size is not the one cut for this box: no box rather than a wrong one.
        assert_eq!(box_in_crop(&truck, (10, 10)), None);
    }

    #[test]
    fn labels_must_be_the_models_and_categories_the_taxonomys() {
        let config = Config::embedded_defaults();
        let truck = event("truck", EventBox { x1: 1, y1: 1, x2: 50, y2: 50 });
        let ask = |label: Option<&str>, category: Option<&str>| {
            let request = LabelRequest {
                verdict: Verdict::Wrong,
                label: label.map(String::from),
                category: category.map(String::from),
            };
            check(&config, &truck, &request)
        };
        assert_eq!(ask(None, None).unwrap(), ("truck".into(), None));
        assert_eq!(ask(Some(" car "), Some("recyclable")).unwrap(), ("car".into(), Some("recyclable".into())));
        assert_eq!(ask(Some("none"), Some("")).unwrap(), ("none".into(), None));
        assert!(ask(Some("spaceship"), None).unwrap_err().message.contains("nanodet"));
        assert!(ask(Some("car,1"), None).is_err());
        assert!(ask(None, Some("glass")).unwrap_err().message.contains("kitchen"));
        assert!(ask(None, Some("unknown")).is_ok());
    }
}
