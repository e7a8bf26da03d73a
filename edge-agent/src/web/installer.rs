//! Installer tools: draw and edit a camera's zones (privacy zones too) on its current frame, edit
//! thresholds and test the models on it, through the same
//! [`LiveSettings`](crate::control::settings::LiveSettings) as the MQTT `set` command.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::error;
use super::auth::{Admin, Session};
use super::config::Role;
use super::events::{path_segment, query_value};
use super::extract::{json_body, ApiPath as Path};
use super::i18n::{Lang, T};
use super::pages::{Nav, Page};
use super::WebState;
use crate::config::Config;
use crate::control::config_store::{Change, ChangeError, ZonesHome};
use crate::control::settable::Actor;
use crate::control::settings::ModelTestError;
use crate::evidence::draw;
use crate::infer::manifest::Manifest;
use crate::judge::config::ZoneRole;

const SCENE_JPEG_QUALITY: u8 = 85;

/// Zone roles in the order the page offers them.
pub const ROLES: [ZoneRole; 6] =
    [ZoneRole::Bin, ZoneRole::DropArea, ZoneRole::Road, ZoneRole::SiteExit, ZoneRole::Ignore, ZoneRole::Privacy];

pub fn role_key(role: ZoneRole) -> &'static str {
    match role {
        ZoneRole::Bin => "bin",
        ZoneRole::DropArea => "drop_area",
        ZoneRole::Road => "road",
        ZoneRole::SiteExit => "site_exit",
        ZoneRole::Ignore => "ignore",
        ZoneRole::Privacy => "privacy",
    }
}

fn role_label(role: ZoneRole) -> T {
    match role {
        ZoneRole::Bin => T::RoleBin,
        ZoneRole::DropArea => T::RoleDropArea,
        ZoneRole::Road => T::RoleRoad,
        ZoneRole::SiteExit => T::RoleSiteExit,
        ZoneRole::Ignore => T::RoleIgnore,
        ZoneRole::Privacy => T::RolePrivacy,
    }
}

/// The colour zones of a role are drawn in on frames, as `#rrggbb`, so the page matches them.
fn role_colour(role: ZoneRole) -> String {
    let [r, g, b] = draw::zone_colour(role).0;
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// A settings change refused: the status says whose fault, the body names the key.
pub fn change_error(e: ChangeError) -> Response {
    let status = match &e {
        ChangeError::NoConfigFile => StatusCode::CONFLICT,
        ChangeError::NotSettable { .. } | ChangeError::UnknownTarget { .. } => StatusCode::BAD_REQUEST,
        ChangeError::LocalOnly { .. } => StatusCode::FORBIDDEN,
        ChangeError::OutOfRange { .. } | ChangeError::InvalidValue(_) | ChangeError::WouldNotStart(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ChangeError::Read { .. } | ChangeError::Write { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let key = match &e {
        ChangeError::NotSettable { key }
        | ChangeError::LocalOnly { key, .. }
        | ChangeError::UnknownTarget { key, .. }
        | ChangeError::OutOfRange { key, .. } => Some(key.clone()),
        _ => None,
    };
    (status, Json(json!({ "code": e.code(), "message": e.to_string(), "key": key }))).into_response()
}

/// The answer for a camera id this box does not have: the ones it has, not the one asked for.
pub fn no_such_camera(state: &WebState) -> Response {
    let cameras = state.board.camera_ids();
    error(StatusCode::NOT_FOUND, "no_such_camera", format!("no such camera; cameras: {}", cameras.join(", ")))
}

fn unknown_camera(state: &WebState, camera: &str) -> Option<Response> {
    (!state.board.camera_ids().iter().any(|c| c == camera)).then(|| no_such_camera(state))
}

/// A camera's zones as the running config has them, where they are saved, and which of them the
/// judge used on the newest frame.
fn camera_zones_json(state: &WebState, config: &Config, camera: &str) -> Value {
    let zones = config.scenes.get(camera).map(|scene| scene.zones.clone()).unwrap_or_default();
    let status = state.board.snapshot();
    let frame = status.cameras.iter().find(|c| c.id == camera).map(|c| (c.frame_width, c.frame_height));
    json!({
        "camera": camera,
        "zones": zones,
        "stored_in": state.settings.zones_home(camera),
        "in_use": state.board.zones_in_use(camera).unwrap_or_default(),
        "frame": frame.map(|(width, height)| json!({ "width": width, "height": height })),
    })
}

/// `GET /api/v1/zones`: every camera's zones.
pub async fn all_zones(State(state): State<Arc<WebState>>) -> Response {
    let config = state.settings.current();
    let mut cameras = serde_json::Map::new();
    let mut stored_in = serde_json::Map::new();
    let mut in_use = serde_json::Map::new();
    for id in state.board.camera_ids() {
        let zones = config.scenes.get(&id).map(|scene| scene.zones.clone()).unwrap_or_default();
        cameras.insert(id.clone(), json!(zones));
        stored_in.insert(id.clone(), json!(state.settings.zones_home(&id)));
        in_use.insert(id.clone(), json!(state.board.zones_in_use(&id).unwrap_or_default()));
    }
    Json(json!({ "cameras": cameras, "stored_in": stored_in, "in_use": in_use })).into_response()
}

/// `GET /api/v1/zones/{camera}`
pub async fn camera_zones(State(state): State<Arc<WebState>>, Path(camera): Path<String>) -> Response {
    if let Some(response) = unknown_camera(&state, &camera) {
        return response;
    }
    Json(camera_zones_json(&state, &state.settings.current(), &camera)).into_response()
}

/// `PUT /api/v1/zones/{camera}` with `{"zones": [...]}`: the camera's whole list of zones, written
/// into the site calibration file when that holds the camera's zones.
pub async fn save_zones(
    State(state): State<Arc<WebState>>,
    Admin(session): Admin,
    Path(camera): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(response) = unknown_camera(&state, &camera) {
        return response;
    }
    let shape = "a JSON object {\"zones\": [...]}";
    let zones = match json_body::<Value>(&body, shape) {
        Ok(Value::Object(mut fields)) if fields.len() == 1 && fields.get("zones").is_some_and(Value::is_array) => {
            fields.remove("zones").unwrap_or_default()
        }
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the body is not accepted; expected {shape}"),
            )
        }
        Err(refused) => return refused,
    };
    let change = Change { key: format!("scenes.{camera}.zones"), value: zones };
    let settings = state.settings.clone();
    let outcome = match tokio::task::spawn_blocking(move || settings.set(Actor::PageAdmin, &[change])).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => return change_error(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the save failed: {e}")),
    };
    tracing::info!(camera = %camera, user = %session.user, written = ?outcome.written, "zones saved from the web page");
    let mut answer = camera_zones_json(&state, &outcome.config, &camera);
    answer["changed"] = json!(outcome.changed);
    answer["applied"] = json!(outcome.applied);
    answer["restart_required"] = json!(outcome.restart_required);
    answer["written"] = json!(outcome.written);
    Json(answer).into_response()
}

/// A rule's score setting, for the thresholds form.
struct RuleScore {
    rule: &'static str,
    field: &'static str,
    value: f32,
    enabled: bool,
}

fn rule_scores(config: &Config) -> Vec<RuleScore> {
    let r = &config.rules;
    let score = |rule, value, enabled| RuleScore { rule, field: "min_score", value, enabled };
    vec![
        score("object", r.object.min_score, r.object.enabled),
        score("wrong_bin", r.wrong_bin.min_score, r.wrong_bin.enabled),
        score("litter", r.litter.min_score, r.litter.enabled),
        RuleScore {
            rule: "overflow",
            field: "min_coverage",
            value: r.overflow.min_coverage,
            enabled: r.overflow.enabled,
        },
        score("road_debris", r.road_debris.min_score, r.road_debris.enabled),
        score("truck_exit", r.truck_exit.min_score, r.truck_exit.enabled),
    ]
}

/// A model's thresholds: the config's (None: the manifest's default) and the site's per class.
struct ModelScore {
    name: String,
    configured: Option<f32>,
    default: Option<f32>,
    class_thresholds: std::collections::BTreeMap<String, f32>,
}

fn model_scores(config: &Config) -> Vec<ModelScore> {
    config
        .models
        .iter()
        .map(|model| {
            let manifest = Manifest::load(&model.manifest).ok();
            ModelScore {
                name: manifest.as_ref().map(|m| m.name.clone()).unwrap_or_else(|| model.manifest.display().to_string()),
                configured: model.score_threshold,
                default: manifest.as_ref().map(Manifest::score_threshold),
                class_thresholds: model.class_thresholds.clone(),
            }
        })
        .collect()
}

fn settings_json(state: &WebState) -> Value {
    let config = state.settings.current();
    let rules: Vec<Value> = rule_scores(&config)
        .iter()
        .map(|r| {
            json!({ "key": format!("rules.{}.{}", r.rule, r.field), "rule": r.rule, "field": r.field,
                    "value": r.value, "enabled": r.enabled })
        })
        .collect();
    let models: Vec<Value> = model_scores(&config)
        .iter()
        .map(|m| {
            json!({ "key": format!("models.{}.score_threshold", m.name), "name": m.name,
                    "score_threshold": m.configured, "default": m.default, "class_thresholds": m.class_thresholds })
        })
        .collect();
    let programs = crate::delivery::actions::list_programs(&config.actions.folder).unwrap_or_default();
    json!({
        "config_file": state.settings.store().path(),
        "site_file": config.site.calibration,
        "rules": rules,
        "models": models,
        "action_programs": programs,
    })
}

/// `GET /api/v1/settings`: the thresholds the page edits.
pub async fn settings(State(state): State<Arc<WebState>>) -> Response {
    Json(settings_json(&state)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsChange {
    values: serde_json::Map<String, Value>,
}

/// `POST /api/v1/settings` with `{"values": {key: value}}`: the keys and rules of the MQTT `set`
/// command, all or nothing.
pub async fn change_settings(State(state): State<Arc<WebState>>, Admin(session): Admin, body: Bytes) -> Response {
    let request: SettingsChange = match json_body(&body, "{\"values\": {key: value}}") {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    if request.values.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body's `values` is empty; expected at least one key",
        );
    }
    let changes: Vec<Change> = request.values.into_iter().map(|(key, value)| Change { key, value }).collect();
    let settings = state.settings.clone();
    let outcome = match tokio::task::spawn_blocking(move || settings.set(Actor::PageAdmin, &changes)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => return change_error(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the save failed: {e}")),
    };
    tracing::info!(user = %session.user, changed = ?outcome.changed, "settings changed from the web page");
    let mut answer = settings_json(&state);
    answer["changed"] = json!(outcome.changed);
    answer["applied"] = json!(outcome.applied);
    answer["restart_required"] = json!(outcome.restart_required);
    answer["written"] = json!(outcome.written);
    Json(answer).into_response()
}

/// `POST /api/v1/cameras/{camera}/test`: the models on the camera's newest frame, and that frame
/// (privacy applied) as a data URL to draw the boxes on.
pub async fn test_models(State(state): State<Arc<WebState>>, Admin(_): Admin, Path(camera): Path<String>) -> Response {
    if let Some(response) = unknown_camera(&state, &camera) {
        return response;
    }
    match state.settings.test_models(&camera).await {
        Ok(test) => {
            let image =
                format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(&test.jpeg));
            let mut answer = json!(test);
            answer["image"] = json!(image);
            Json(answer).into_response()
        }
        Err(e @ ModelTestError::NoFrame(_)) => error(StatusCode::CONFLICT, "no_frame_yet", e.to_string()),
        Err(e @ ModelTestError::WorkerGone) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
    }
}

/// `GET /api/v1/cameras/{camera}/scene.jpg`: the newest judged frame without drawings (privacy
/// applied), to draw zones on.
pub async fn scene(State(state): State<Arc<WebState>>, Path(camera): Path<String>) -> Response {
    if let Some(response) = unknown_camera(&state, &camera) {
        return response;
    }
    let Some(image) = state.board.latest_scene(&camera) else {
        return error(StatusCode::NOT_FOUND, "no_frame_yet", "the camera has no frame yet");
    };
    match tokio::task::spawn_blocking(move || draw::encode_jpeg(&image, SCENE_JPEG_QUALITY)).await {
        Ok(Ok(jpeg)) => {
            ([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("cannot encode the frame: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("cannot encode the frame: {e}")),
    }
}

#[derive(Debug, Deserialize)]
pub struct InstallerQuery {
    camera: Option<String>,
}

/// `GET /installer?camera=ID`: the tools for one camera, seen by everyone logged in, used by admins;
/// the drawing itself is `assets/installer.js`.
pub async fn page(
    State(state): State<Arc<WebState>>,
    session: Session,
    lang: Lang,
    uri: Uri,
    Query(query): Query<InstallerQuery>,
) -> Markup {
    let page = Page { lang, session: &session, state: &state, uri: &uri, nav: Nav::Installer };
    let t = |text: T| text.in_lang(lang);
    let status = state.board.snapshot();
    let config = state.settings.current();
    let camera = query
        .camera
        .filter(|id| status.cameras.iter().any(|c| &c.id == id))
        .or_else(|| status.cameras.first().map(|c| c.id.clone()));
    let Some(camera) = camera else {
        return page.render(t(T::Installer), html! { h1 { (t(T::Installer)) } p.empty { (t(T::NoFrameYet)) } });
    };
    let (width, height) = status
        .cameras
        .iter()
        .find(|c| c.id == camera)
        .filter(|c| c.frame_width > 0 && c.frame_height > 0)
        .map(|c| (c.frame_width, c.frame_height))
        .unwrap_or((640, 480));
    let home = state.settings.zones_home(&camera);
    let admin = session.role == Role::Admin;
    let editable = admin && home != ZonesHome::Nowhere;
    let categories = &config.taxonomy.categories;
    let category_name = |c: &crate::judge::config::CategoryConfig| match lang {
        Lang::En => format!("{} · {}", c.en, c.name),
        Lang::Zh => format!("{} · {}", c.zh, c.name),
    };
    let camera_url = path_segment(&camera);
    let content = html! {
        h1 { (t(T::Installer)) }
        @if status.cameras.len() > 1 {
            nav.range #camera-choice {
                @for c in &status.cameras {
                    a.active[c.id == camera] href={"/installer?camera=" (query_value(&c.id))} { (c.id) }
                }
            }
        }
        @if !admin { p.note.inline #read-only { (t(T::ReadOnlyNote)) } }
        section.card #zones-card {
            h2 { (t(T::Zones)) " · " (camera) }
            p.muted #zones-home {
                @match &home {
                    ZonesHome::ConfigFile(path) => { (t(T::ZonesInConfigFile)) ": " code { (path.display()) } }
                    ZonesHome::SiteFile(path) => { (t(T::ZonesInSiteFile)) ": " code { (path.display()) } }
                    ZonesHome::Nowhere => { (t(T::NothingSavable)) }
                }
            }
            div #zone-editor.zone-editor
                data-camera=(camera) data-width=(width) data-height=(height) data-editable=(editable)
                data-msg-saved=(t(T::SavedTo)) data-msg-needs-corners=(t(T::NeedsThreeCorners))
                data-msg-unsaved=(t(T::UnsavedChanges)) data-msg-not-saved=(t(T::NotSaved))
                data-msg-no-zones=(t(T::NoZones)) data-msg-corners=(t(T::Corners)) {
                div.zone-stage {
                    img #scene-image src={"/api/v1/cameras/" (camera_url) "/scene.jpg"} width=(width) height=(height)
                        alt={(t(T::Camera)) " " (camera)};
                    svg #zone-canvas viewBox={"0 0 " (width) " " (height)} preserveAspectRatio="none"
                        role="img" aria-label=(t(T::Zones)) {}
                }
                @if editable { p.muted.hint { (t(T::DrawHint)) } }
                div.zone-tools {
                    button #new-zone type="button" disabled[!editable] { (t(T::NewZone)) }
                    button.secondary #undo-corner type="button" disabled[!editable] { (t(T::UndoCorner)) }
                    button.secondary #delete-zone type="button" disabled[!editable] { (t(T::DeleteZone)) }
                    button.secondary #new-picture type="button" { (t(T::NewPicture)) }
                }
                div.zone-fields {
                    label { span { (t(T::ZoneId)) } input #zone-id type="text" autocapitalize="none" disabled[!editable]; }
                    label { span { (t(T::Role)) }
                        select #zone-role disabled[!editable] {
                            @for role in ROLES {
                                option value=(role_key(role)) data-colour=(role_colour(role)) { (t(role_label(role))) }
                            }
                        }
                    }
                    label #zone-category-field { span { (t(T::Category)) }
                        select #zone-category disabled[!editable] {
                            @for category in categories { option value=(category.name) { (category_name(category)) } }
                        }
                    }
                }
                ul #zone-list.zone-list {}
                div.save-row {
                    button #save-zones type="button" disabled[!editable] { (t(T::SaveZones)) }
                    span #zones-message.message role="status" {}
                }
            }
        }
        section.card #thresholds-card {
            h2 { (t(T::Thresholds)) }
            form #thresholds-form data-editable=(editable) data-msg-saved=(t(T::SavedTo)) data-msg-not-saved=(t(T::NotSaved)) {
                div.scroll {
                    table {
                        thead { tr { th { (t(T::Rule)) } th { (t(T::Setting)) } th { (t(T::Value)) } } }
                        tbody {
                            @for rule in rule_scores(&config) {
                                @let key = format!("rules.{}.{}", rule.rule, rule.field);
                                tr.muted[!rule.enabled] {
                                    td { (rule.rule) } td { code { (rule.field) } }
                                    td { input.threshold type="number" min="0" max="1" step="0.01" name=(key) data-key=(key)
                                        data-initial=(rule.value) value=(rule.value) disabled[!editable]; }
                                }
                            }
                            @for model in model_scores(&config) {
                                @let key = format!("models.{}.score_threshold", model.name);
                                tr {
                                    td { (t(T::Model)) " " strong { (model.name) } } td { code { "score_threshold" } }
                                    td { input.threshold type="number" min="0" max="1" step="0.01" name=(key) data-key=(key)
                                        data-initial=[model.configured] value=[model.configured]
                                        placeholder={(model.default.map(|d| d.to_string()).unwrap_or_default()) " (" (t(T::ModelDefault)) ")"}
                                        disabled[!editable]; }
                                }
                                @if !model.class_thresholds.is_empty() {
                                    tr.class-thresholds { td colspan="3" {
                                        span.muted { (t(T::ClassThresholds)) ": " }
                                        (model.class_thresholds.iter().map(|(l, v)| format!("{l} {v}")).collect::<Vec<_>>().join(", "))
                                    } }
                                }
                            }
                        }
                    }
                }
                div.save-row {
                    button #save-thresholds type="submit" disabled[!editable] { (t(T::SaveThresholds)) }
                    span #thresholds-message.message role="status" {}
                }
            }
        }
        section.card #model-test-card {
            h2 { (t(T::TestModels)) }
            p.muted { (t(T::TestNote)) }
            div #model-test data-camera=(camera) data-msg-running=(t(T::Running)) data-msg-nothing=(t(T::NoFindings))
                data-msg-found=(t(T::Found)) {
                div.save-row {
                    button #run-test type="button" disabled[!admin] { (t(T::RunTest)) }
                    span #test-message.message role="status" {}
                }
                div.zone-stage #test-stage hidden {
                    img #test-image alt=(t(T::TestModels));
                    svg #test-boxes preserveAspectRatio="none" aria-hidden="true" {}
                }
                div.scroll {
                    table #test-results hidden {
                        thead { tr { th { (t(T::Model)) } th { (t(T::Label)) } th { (t(T::Score)) } th { (t(T::Box)) } } }
                        tbody {}
                    }
                }
            }
        }
        (registered_trucks_card(&config, editable, lang))
        (actions_card(&config, lang))
        (learning_card(admin, lang))
        script src="/assets/installer.js" defer {}
    };
    page.render(t(T::Installer), content)
}

/// The site's registered trucks (`plates.registered`): shown to everyone, edited by an admin one
/// plate a line (`assets/installer.js` sends them as a `plates.registered` change, which the table
/// of settable keys checks: each must be written as a plate).
fn registered_trucks_card(config: &Config, editable: bool, lang: Lang) -> Markup {
    let t = |text: T| text.in_lang(lang);
    html! {
        section.card #registered-trucks-card {
            h2 { (t(T::RegisteredTrucks)) }
            p.muted { (t(T::RegisteredTrucksNote)) }
            form #registered-trucks data-editable=(editable) data-msg-saved=(t(T::SavedTo)) data-msg-not-saved=(t(T::NotSaved)) {
                textarea #registered-plates rows="5" spellcheck="false" disabled[!editable] {
                    (config.plates.registered.join("\n"))
                }
                div.save-row {
                    button #save-registered type="submit" disabled[!editable] { (t(T::SaveRegistered)) }
                    span #registered-message.message role="status" {}
                }
            }
        }
    }
}

/// The programs an on-site action may name (the actions folder's), and which rule runs which: an
/// admin sets `rules.<rule>.action` to one of them; nothing else runs.
fn actions_card(config: &Config, lang: Lang) -> Markup {
    let t = |text: T| text.in_lang(lang);
    let folder = &config.actions.folder;
    let programs = crate::delivery::actions::list_programs(folder);
    let r = &config.rules;
    let used: Vec<(&str, &str)> = [
        ("object", &r.object.action),
        ("wrong_bin", &r.wrong_bin.action),
        ("litter", &r.litter.action),
        ("overflow", &r.overflow.action),
        ("road_debris", &r.road_debris.action),
        ("truck_exit", &r.truck_exit.action),
    ]
    .into_iter()
    .filter_map(|(rule, action)| action.as_ref().map(|a| (rule, a.program.as_str())))
    .collect();
    html! {
        section.card #actions-card {
            h2 { (t(T::Actions)) }
            p.muted { (t(T::ActionsNote)) " " code { (folder.display()) } }
            @match &programs {
                Ok(programs) if programs.is_empty() => p #action-programs { (t(T::NoActionPrograms)) }
                Ok(programs) => ul #action-programs { @for program in programs { li { code { (program) } } } }
                Err(e) => p #action-programs.message { (e.to_string()) }
            }
            @if !used.is_empty() {
                table #actions-used {
                    thead { tr { th { (t(T::Rule)) } th { (t(T::Program)) } } }
                    tbody { @for (rule, program) in &used { tr { td { (rule) } td { code { (program) } } } } }
                }
            }
        }
    }
}

/// "The box learns its site": train a head on the site's samples, read its figures, deploy it
/// into a classifier slot; filled in by `assets/installer.js` from `GET /api/v1/learn`.
fn learning_card(admin: bool, lang: Lang) -> Markup {
    let t = |text: T| text.in_lang(lang);
    html! {
        section.card #learning-card {
            h2 { (t(T::LearnSite)) }
            p.muted { (t(T::LearnNote)) }
            div #learning data-msg-training=(t(T::Training)) data-msg-trained=(t(T::TrainedHead)) {
                p #learning-samples { (t(T::LabelledCrops)) ": " span #learning-counts { "…" } }
                div.zone-fields {
                    label { span { (t(T::Name)) }
                        input #learn-name type="text" value="site_garbage" autocapitalize="none" disabled[!admin]; }
                    label { span { (t(T::OnlyLabels)) }
                        input #learn-labels type="text" autocapitalize="none" placeholder="recyclable, hazardous, kitchen, residual" disabled[!admin]; }
                }
                div.save-row {
                    button #learn-train type="button" disabled[!admin] { (t(T::Train)) }
                    progress #learn-progress hidden max="1" value="0" {}
                    span #learn-message.message role="status" {}
                }
                pre #learn-summary hidden {}
                p #learn-report hidden {
                    (t(T::Report)) ": "
                    a href="/api/v1/learn/report/confusion.svg" target="_blank" { "confusion.svg" } " · "
                    a href="/api/v1/learn/report/scores.svg" target="_blank" { "scores.svg" } " · "
                    a href="/api/v1/learn/report/summary.md" target="_blank" { "summary.md" }
                }
                div.save-row #learn-deploy-row hidden {
                    label { span { (t(T::DeployAs)) }
                        select #learn-slot disabled[!admin] {
                            option value="taxonomy" { "taxonomy.classifier (wrong_bin)" }
                            option value="overflow_state" { "rules.overflow.state_classifier" }
                            option value="truck_cover" { "rules.truck_exit.cover_classifier" }
                        }
                    }
                    button #learn-deploy type="button" disabled[!admin] { (t(T::Deploy)) }
                }
                p #deploy-message.message role="status" {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_offered_under_the_name_the_config_uses() {
        for role in ROLES {
            let parsed: ZoneRole = serde_json::from_value(json!(role_key(role))).unwrap();
            assert_eq!(parsed, role);
        }
        assert_eq!(role_colour(ZoneRole::Bin), "#00c8ff");
    }

    #[test]
    fn a_refused_change_names_its_key_and_says_whose_fault_it_is() {
        let refused = change_error(ChangeError::OutOfRange {
            key: "scenes.yard.zones[0].polygon".into(),
            problem: "crosses itself".into(),
        });
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(change_error(ChangeError::NoConfigFile).status(), StatusCode::CONFLICT);
        assert_eq!(change_error(ChangeError::NotSettable { key: "mqtt.url".into() }).status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_thresholds_form_lists_every_rule_and_the_models() {
        let config = Config::embedded_defaults();
        let rules: Vec<&str> = rule_scores(&config).iter().map(|r| r.rule).collect();
        assert_eq!(rules, ["object", "wrong_bin", "litter", "overflow", "road_debris", "truck_exit"]);
        let models = model_scores(&config);
        assert_eq!(models[0].name, "nanodet");
        assert_eq!(models[0].configured, None);
        assert!(models[0].default.is_some_and(|d| d > 0.0 && d < 1.0));
    }
}
