//! The HTML pages: overview, cameras, events (list and detail), statistics, login. Rendered on the
//! server with maud (every value escaped by construction) in the visitor's language; the small
//! script in `assets/app.js` only swaps in newer frames and re-reads marked sections.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Local, Utc};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::auth::{Admin, Session, CSRF_FIELD, LOCAL_USER};
use super::charts::{bar_chart, Layout, Series};
use super::config::Role;
use super::events::{self, path_segment, query_value, EventFilter, EventView};
use super::i18n::{Lang, T};
use super::stats::{self, NO_CATEGORY};
use super::system::{cpu_temperature, disk_space, human_bytes};
use super::WebState;
use crate::delivery::board::Status;
use crate::evidence::chain::sha256_of_reader;

/// Events on the overview.
const OVERVIEW_EVENTS: usize = 6;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Cameras,
    Events,
    Statistics,
    Installer,
    None,
}

/// What every page needs to draw its frame.
pub struct Page<'a> {
    pub lang: Lang,
    pub session: &'a Session,
    pub state: &'a WebState,
    pub uri: &'a Uri,
    pub nav: Nav,
}

impl Page<'_> {
    fn t(&self, text: T) -> &'static str {
        text.in_lang(self.lang)
    }

    /// This page's address with the language switched.
    fn with_lang(&self, code: &str) -> String {
        let kept: Vec<&str> = self
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("lang="))
            .collect();
        let mut query = kept.join("&");
        if !query.is_empty() {
            query.push('&');
        }
        format!("{}?{query}lang={code}", self.uri.path())
    }

    pub fn render(&self, title: &str, content: Markup) -> Markup {
        let device = self.state.board.device_id();
        let nav_item = |target: Nav, href: &str, label: T| {
            html! { a.active[self.nav == target] href=(href) { (self.t(label)) } }
        };
        html! {
            (DOCTYPE)
            html lang=(self.lang.code()) {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="csrf-token" content=(self.session.csrf);
                    title { (title) " · " (device) }
                    link rel="icon" href="/assets/favicon.svg" type="image/svg+xml";
                    link rel="stylesheet" href="/assets/app.css";
                    script src="/assets/app.js" defer {}
                }
                body {
                    header.top {
                        a.brand href="/" {
                            img src="/assets/favicon.svg" width="28" height="28" alt="";
                            span { (self.t(T::AppName)) } " "
                            strong #device-name { (device) }
                        }
                        nav.main {
                            (nav_item(Nav::Overview, "/", T::Overview))
                            (nav_item(Nav::Cameras, "/cameras", T::Cameras))
                            (nav_item(Nav::Events, "/events", T::Events))
                            (nav_item(Nav::Statistics, "/stats", T::Statistics))
                            (nav_item(Nav::Installer, "/installer", T::Installer))
                        }
                        div.account {
                            span.langs aria-label=(self.t(T::Language)) {
                                a.active[self.lang == Lang::En] href=(self.with_lang("en")) lang="en" { "EN" }
                                a.active[self.lang == Lang::Zh] href=(self.with_lang("zh")) lang="zh-CN" { "中文" }
                            }
                            span.user { (self.session.user) " · " (role_name(self.session.role)) }
                            @if self.session.user != LOCAL_USER {
                                form.logout method="post" action="/logout" {
                                    input type="hidden" name=(CSRF_FIELD) value=(self.session.csrf);
                                    button type="submit" { (self.t(T::LogOut)) }
                                }
                            }
                        }
                    }
                    @if self.state.auth.is_open() {
                        p.note.open-access { (self.t(T::OpenAccessNote)) }
                    }
                    main #main { (content) }
                    footer { "edge-agent " (env!("CARGO_PKG_VERSION")) }
                }
            }
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Admin => "admin",
    }
}

pub fn local_time(time: DateTime<Utc>) -> String {
    time.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `3 d 4 h`, `5 h 12 min`, `42 s` (or `3天4小时`...).
pub fn duration_text(seconds: f64, lang: Lang) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (d, h, m, s) = (total / 86_400, total % 86_400 / 3600, total % 3600 / 60, total % 60);
    let [day, hour, min, sec] = match lang {
        Lang::En => [" d", " h", " min", " s"],
        Lang::Zh => ["天", "小时", "分", "秒"],
    };
    let gap = if lang == Lang::En { " " } else { "" };
    if d > 0 {
        format!("{d}{day}{gap}{h}{hour}")
    } else if h > 0 {
        format!("{h}{hour}{gap}{m}{min}")
    } else if m > 0 {
        format!("{m}{min}{gap}{s}{sec}")
    } else {
        format!("{s}{sec}")
    }
}

/// `station` / `site` when the status carries them (the judge stage's config adds them).
fn station_of(status: &Status) -> Option<String> {
    let json = serde_json::to_value(status).ok()?;
    let pick = |key: &str| json.get(key).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_string);
    match (pick("station"), pick("site")) {
        (Some(station), Some(site)) => Some(format!("{station} / {site}")),
        (one, other) => one.or(other),
    }
}

fn mqtt_text(status: &Status, lang: Lang) -> (bool, String) {
    let mut broker = status.mqtt.broker.clone().unwrap_or_default();
    // With a failover list, which of the brokers this is (1 = the preferred one).
    let brokers = &status.mqtt.brokers;
    if let Some(place) = brokers.iter().position(|b| *b == broker).filter(|_| brokers.len() > 1) {
        broker = format!("{broker} [{}/{}]", place + 1, brokers.len());
    }
    if !status.mqtt.configured {
        (false, T::MqttNotConfigured.in_lang(lang).to_string())
    } else if status.mqtt.connected {
        (true, format!("{} {broker}", T::MqttConnected.in_lang(lang)))
    } else {
        let reason = status.mqtt.last_error.as_deref().unwrap_or("…");
        (false, format!("{} {broker} ({reason})", T::MqttDisconnected.in_lang(lang)))
    }
}

fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn camera_frame_url(camera: &str) -> String {
    format!("/api/v1/cameras/{}/frame.jpg", path_segment(camera))
}

fn event_card(view: &EventView, lang: Lang) -> Markup {
    html! {
        li.event-card data-event-id=(view.id()) {
            a href={"/events/" (view.id())} {
                @if view.has_picture() {
                    img.thumb src=(view.evidence_url()) width="160" height="120" loading="lazy" alt=(view.label());
                } @else {
                    span.thumb.empty { (T::NoPictureKept.in_lang(lang)) }
                }
                span.what {
                    strong.label { (view.label()) }
                    " "
                    span.badge.kind { (view.kind()) }
                    @if let Some(category) = view.category() { " " span.badge.category { (category) } }
                    @if let Some(state) = view.state() { " " span.badge.state { (state) } }
                    @if view.acknowledged().is_some() { " " span.badge.ack title=(T::AcknowledgedBy.in_lang(lang)) { "✓" } }
                }
                span.meta {
                    (view.camera()) " · " time datetime=(view.time().to_rfc3339()) { (local_time(view.time())) }
                    " · " (format!("{:.2}", view.score()))
                }
            }
        }
    }
}

/// `GET /`: what the box is, whether it is healthy, and what it saw last.
pub async fn overview(State(state): State<Arc<WebState>>, session: Session, lang: Lang, uri: Uri) -> Markup {
    let page = Page { lang, session: &session, state: &state, uri: &uri, nav: Nav::Overview };
    let status = state.board.snapshot();
    let disk = disk_space(&state.state_dir);
    let temperature = cpu_temperature();
    let latest: Vec<EventView> =
        events::latest_per_event(state.board.event_history()).into_iter().take(OVERVIEW_EVENTS).collect();
    let (mqtt_ok, mqtt) = mqtt_text(&status, lang);
    let t = |text: T| text.in_lang(lang);
    let content = html! {
        h1 { (t(T::Overview)) }
        @if let Some(problem) = &status.control.config_problem {
            p.warning #config-problem { (t(T::RunningOnLastGoodConfig)) " " (problem) }
        }
        @if status.control.commands == "unsigned_accepted" {
            p.warning #unsigned-commands { (t(T::UnsignedCommandsAccepted)) }
        }
        @if status.held.messages > 0 || status.held.events_lost > 0 {
            p.warning #held-messages {
                (t(T::HeldMessages)) ": " (status.held.messages) " (" (status.held.events) " " (t(T::Events)) ")"
                @if let Some(error) = &status.held.last_error { " — " (error) }
                @if status.held.events_lost > 0 { " — " (t(T::EventsLost)) ": " (status.held.events_lost) }
            }
        }
        @if status.control.unsigned_models {
            p.warning #unsigned-models { (t(T::UnsignedModelsAccepted)) }
        }
        section.card #device-facts data-refresh="periodic" {
            h2 { (t(T::Device)) }
            dl.facts {
                div { dt { (t(T::DeviceId)) } dd #device-id { (status.device_id) } }
                div { dt { (t(T::Station)) } dd { (station_of(&status).unwrap_or_else(|| t(T::NotConfigured).to_string())) } }
                div { dt { (t(T::Version)) } dd { (status.version) } }
                div { dt { (t(T::Uptime)) } dd #uptime { (duration_text(status.uptime_seconds as f64, lang)) } }
                div { dt { (t(T::Mqtt)) } dd #mqtt { span.dot.ok[mqtt_ok].bad[!mqtt_ok && status.mqtt.configured] {} (mqtt) } }
                div { dt { (t(T::Outbox)) } dd #outbox {
                    (status.outbox_depth) " " (t(T::Waiting)) ", "
                    (human_bytes(status.outbox.bytes)) " / " (human_bytes(status.outbox.quota_bytes))
                    @if status.outbox.evidence_pruned_total > 0 {
                        // The installer must see that evidence was dropped to stay in the disk quota.
                        br;
                        strong #outbox-quota {
                            (if status.outbox.quota_reached { t(T::QuotaReached) } else { t(T::QuotaWasReached) })
                            ": " (status.outbox.evidence_pruned_total) " " (t(T::EvidencePicturesPruned))
                            @if let Some(at) = status.outbox.last_pruned_at {
                                " (" (at.format("%Y-%m-%d %H:%M:%S UTC")) ")"
                            }
                        }
                    }
                } }
                div { dt { (t(T::DiskFree)) } dd #disk {
                    @match disk {
                        Some(disk) => { (human_bytes(disk.free_bytes)) " / " (human_bytes(disk.total_bytes)) }
                        None => { (t(T::NotAvailable)) }
                    }
                } }
                div { dt { (t(T::CpuTemperature)) } dd #cpu-temperature {
                    @match temperature {
                        Some(celsius) => { (format!("{celsius:.1} °C")) }
                        None => { (t(T::NotAvailable)) }
                    }
                } }
                div { dt { (t(T::EventsSinceStart)) } dd #events-total { (status.events_total) } }
                div { dt { (t(T::EvidenceKey)) } dd #evidence-key {
                    @match &status.evidence.public_key {
                        Some(key) => { code.hash { (key) } }
                        None => { span.muted { (t(T::NotSigned)) } }
                    }
                } }
                @if let Some(head) = &status.evidence.chain_head {
                    div { dt { (t(T::ChainHead)) } dd #chain-head { (head.seq) " · " code.hash { (&head.sha256[..16.min(head.sha256.len())]) } } }
                }
            }
        }
        section.card #storage data-refresh="periodic" {
            h2 { (t(T::Storage)) }
            @let storage = crate::delivery::telemetry::storage_report(&state.state_dir, &status);
            div.scroll {
                table {
                    thead { tr { th { (t(T::Part)) } th { (t(T::Size)) } th { (t(T::Quota)) } th { (t(T::Pruned)) } } }
                    tbody {
                        @for part in &storage.parts {
                            tr {
                                td { (part.name) }
                                td { (human_bytes(part.bytes)) }
                                td { @match part.quota_bytes { Some(q) => { (human_bytes(q)) } None => { "—" } } }
                                td {
                                    @match (part.pruned, part.last_pruned_at) {
                                        (Some(n), Some(at)) => { (n) " (" (at.format("%Y-%m-%d %H:%M UTC")) ")" }
                                        (Some(n), None) => { (n) }
                                        _ => { "—" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.card #models data-refresh="periodic" {
            h2 { (t(T::Models)) }
            div.scroll {
                table {
                    thead { tr {
                        th { (t(T::Name)) } th { (t(T::Task)) } th { (t(T::Backend)) }
                        th { (t(T::ExecutionProvider)) } th { (t(T::Latency)) " (" (t(T::LatencyLastMean)) ")" } th { "sha256" }
                    } }
                    tbody {
                        @for model in &status.models {
                            @let latency = status.model_latency.get(&model.name);
                            tr.model {
                                td { strong { (model.name) } }
                                td { (format!("{:?}", model.task).to_lowercase()) }
                                td { (model.backend) }
                                td { (model.execution_provider) }
                                td.num {
                                    @match latency {
                                        Some(l) if l.count > 0 => {
                                            (format!("{:.0} / {:.0} ms", l.last_ms, l.mean_ms().unwrap_or(0.0)))
                                        }
                                        _ => { "–" }
                                    }
                                }
                                td { code title=(model.sha256) { (short_hash(&model.sha256)) "…" } }
                            }
                        }
                    }
                }
            }
        }
        (site_classifiers_card(&state, lang))
        section.card #camera-summary data-refresh="periodic" {
            h2 { a href="/cameras" { (t(T::Cameras)) } }
            div.scroll {
                table {
                    thead { tr {
                        th { (t(T::Camera)) } th { (t(T::Fps)) } th { (t(T::FramesCaptured)) }
                        th { (t(T::FramesDropped)) } th { (t(T::InferenceTime)) } th { (t(T::Errors)) }
                    } }
                    tbody {
                        @for camera in &status.cameras {
                            tr {
                                td { a href="/cameras" { (camera.id) } }
                                td.num { (format!("{:.1}", camera.fps)) }
                                td.num { (camera.frames_captured) }
                                td.num { (camera.frames_dropped) }
                                td.num { (format!("{:.0} ms", camera.inference_ms)) }
                                td.num { (camera.errors) @if let Some(e) = &camera.last_error { " " span.error title=(e) { "⚠" } } }
                            }
                        }
                    }
                }
            }
        }
        section.card #latest-events data-refresh="periodic" {
            h2 { (t(T::LatestEvents)) " " a.more href="/events" { (t(T::AllEvents)) " →" } }
            @if latest.is_empty() {
                p.empty { (t(T::NoEvents)) }
            } @else {
                ul.event-list { @for view in &latest { (event_card(view, lang)) } }
            }
        }
    };
    page.render(t(T::Overview), content)
}

/// `GET /cameras`: each camera's latest annotated frame, refreshed, with its rates.
pub async fn cameras(State(state): State<Arc<WebState>>, session: Session, lang: Lang, uri: Uri) -> Markup {
    let page = Page { lang, session: &session, state: &state, uri: &uri, nav: Nav::Cameras };
    let status = state.board.snapshot();
    let t = |text: T| text.in_lang(lang);
    let content = html! {
        h1 { (t(T::Cameras)) }
        div.cameras {
            @for (i, camera) in status.cameras.iter().enumerate() {
                section.card.camera #{"camera-" (i)} data-camera=(camera.id) {
                    h2 { (camera.id) }
                    div.frame {
                        img data-live-frame=(camera_frame_url(&camera.id)) src=(camera_frame_url(&camera.id))
                            width=(if camera.frame_width > 0 { camera.frame_width } else { 640 })
                            height=(if camera.frame_height > 0 { camera.frame_height } else { 360 })
                            alt={(t(T::Camera)) " " (camera.id)};
                    }
                    p.stats #{"camera-stats-" (i)} data-refresh="periodic" {
                        span { b { (format!("{:.1}", camera.fps)) } " " (t(T::Fps)) }
                        span { b { (camera.frames_captured) } " " (t(T::FramesCaptured)) }
                        span { b { (camera.frames_dropped) } " " (t(T::FramesDropped)) }
                        span { (t(T::InferenceTime)) " " b { (format!("{:.0} ms", camera.inference_ms)) } }
                        span { b { (camera.errors) } " " (t(T::Errors)) }
                        @if camera.last_frame_at.is_none() { span.muted { (t(T::NoFrameYet)) } }
                        @if let Some(error) = &camera.last_error { span.error { (error) } }
                    }
                    p.stats.streams #{"camera-streams-" (i)} data-refresh="periodic" {
                        @if let Some(decoder) = &camera.decoder { span { (t(T::Decoder)) " " b { (decoder) } } }
                        span { (t(T::InferenceLooksAt)) " " b { (camera.inference_plan) }
                            " (" (camera.frames_by_region) " / " (camera.frames_inferred) ")" }
                        @if let Some(record) = &camera.record_stream {
                            span { (t(T::MainStreamKept)) " " b { (record.state) } " (" (record.pictures_kept) ")" }
                            @if let Some(error) = &record.last_error { span.error { (error) } }
                        }
                    }
                }
            }
        }
    };
    page.render(t(T::Cameras), content)
}

fn select(name: &str, label: &str, all: &str, options: &[String], chosen: Option<&str>) -> Markup {
    html! {
        label {
            span { (label) }
            select name=(name) {
                option value="" selected[chosen.is_none()] { (all) }
                @for option in options {
                    option value=(option) selected[chosen == Some(option.as_str())] { (option) }
                }
            }
        }
    }
}

fn message_page(page: &Page, status: StatusCode, title: &str, message: &str) -> Response {
    let content = html! {
        h1 { (title) }
        p.error { (message) }
        p { a href="/events" { (page.t(T::Back)) } }
    };
    (status, page.render(title, content)).into_response()
}

/// `GET /events`: filters, the list with thumbnails, paging; new events come in over SSE.
pub async fn events_list(
    State(state): State<Arc<WebState>>,
    session: Session,
    lang: Lang,
    uri: Uri,
    Query(filter): Query<EventFilter>,
) -> Response {
    let page = Page { lang, session: &session, state: &state, uri: &uri, nav: Nav::Events };
    let t = |text: T| text.in_lang(lang);
    let all = events::latest_per_event(state.board.event_history());
    let mut kinds: Vec<String> = all.iter().map(|e| e.kind().to_string()).collect();
    let mut categories: Vec<String> = all.iter().filter_map(|e| e.category().map(str::to_string)).collect();
    for list in [&mut kinds, &mut categories] {
        list.sort();
        list.dedup();
    }
    let cameras = state.board.camera_ids();
    let result = match events::query(all, &filter) {
        Ok(result) => result,
        Err(bad) => return message_page(&page, StatusCode::BAD_REQUEST, t(T::Events), &bad.to_string()),
    };
    let first_page = filter.before().is_none();
    let query = filter.query_without_paging();
    let content = html! {
        h1 { (t(T::Events)) " " span #live-indicator.live title=(t(T::LiveUpdates)) { (t(T::LiveUpdates)) } }
        form.filters method="get" action="/events" {
            (select("kind", t(T::Kind), t(T::All), &kinds, filter.kind()))
            (select("camera", t(T::Camera), t(T::All), &cameras, filter.camera()))
            (select("category", t(T::Category), t(T::All), &categories, filter.category()))
            label { span { (t(T::From)) } input type="datetime-local" name="since" value=[filter.since()]; }
            label { span { (t(T::Until)) } input type="datetime-local" name="until" value=[filter.until()]; }
            div.buttons {
                button type="submit" { (t(T::Filter)) }
                a.button.secondary href="/events" { (t(T::Reset)) }
            }
        }
        section #event-results data-refresh=[first_page.then_some("events")] {
            p.count { (result.matching) " " (t(T::EventsShown)) }
            @if result.events.is_empty() {
                p.empty { (t(T::NoEvents)) }
            } @else {
                ul.event-list #event-list { @for view in &result.events { (event_card(view, lang)) } }
            }
            nav.paging {
                @if !first_page { a href={"/events?" (query)} { (t(T::Newer)) } }
                @if let Some(next) = result.next_before {
                    a href={"/events?" (query) @if !query.is_empty() { "&" } "before=" (next)} { (t(T::Older)) }
                }
            }
        }
    };
    page.render(t(T::Events), content).into_response()
}

/// The event a path names, or the response that says why there is none.
fn find_event(page: &Page, event_id: &str) -> Result<EventView, Response> {
    let t = |text: T| page.t(text);
    let Ok(id) = Uuid::parse_str(event_id) else {
        let message = format!("{event_id:?}: not an event id");
        return Err(message_page(page, StatusCode::BAD_REQUEST, t(T::NotFound), &message));
    };
    match page.state.board.event_record(id) {
        Some(record) => Ok(EventView::new(record)),
        None => Err(message_page(page, StatusCode::NOT_FOUND, t(T::NotFound), &id.to_string())),
    }
}

/// `GET /events/{event_id}`: the evidence picture, its hash and signature, lifecycle, details.
pub async fn event_detail(
    State(state): State<Arc<WebState>>,
    session: Session,
    lang: Lang,
    uri: Uri,
    Path(event_id): Path<String>,
) -> Response {
    let page = Page { lang, session: &session, state: &state, uri: &uri, nav: Nav::Events };
    let t = |text: T| text.in_lang(lang);
    let view = match find_event(&page, &event_id) {
        Ok(view) => view,
        Err(response) => return response,
    };
    let image = events::evidence_image(&state.state_dir, &view).await;
    let evidence_dir = state.state_dir.join("evidence");
    let plate_picture = events::plate_picture_path(&evidence_dir, &state.board, view.record.event.event_id, None);
    // The clip's hash as kept now, to compare with its `clip` record in the chain: computed from
    // the file at each view (never remembered: a file changed behind the page must show), in pieces.
    let clip_hash = match events::clip_path(&state.state_dir.join("evidence"), &view) {
        Some(path) => tokio::task::spawn_blocking(move || {
            let hashed = std::fs::File::open(path).and_then(|mut file| sha256_of_reader(&mut file));
            hashed.ok().map(|(hash, _)| hash)
        })
        .await
        .ok()
        .flatten(),
        None => None,
    };
    let image_hash = image.as_ref().map(|bytes| hex::encode(Sha256::digest(bytes.as_slice())));
    let event = &view.record.event;
    let status = state.board.snapshot();
    let content = html! {
        p.back { a href="/events" { "← " (t(T::Events)) } }
        h1 { (view.label()) " " span.badge.kind { (view.kind()) } }
        div.detail {
            figure.evidence {
                @if image.is_some() {
                    a.evidence-frame href=(view.evidence_url()) {
                        img #evidence-image src=(view.evidence_url()) width=(event.frame_width) height=(event.frame_height) alt={(t(T::Evidence)) ": " (view.label())};
                        // The kept frame shows every event of that frame: ring this one.
                        @if event.frame_width > 0 && event.frame_height > 0 {
                            svg.overlay #event-box viewBox={"0 0 " (event.frame_width) " " (event.frame_height)} preserveAspectRatio="none" aria-hidden="true" {
                                rect x=(event.bbox.x1 - 6) y=(event.bbox.y1 - 6) width=((event.bbox.x2 - event.bbox.x1 + 12).max(1)) height=((event.bbox.y2 - event.bbox.y1 + 12).max(1))
                                    rx="6" fill="none" stroke="#22d3ee" stroke-width=((event.frame_width / 160).max(3)) stroke-dasharray="14 8" {}
                            }
                        }
                    }
                    figcaption { a href=(view.evidence_url()) { (t(T::OpenImage)) } }
                    @if let Some(hash) = &clip_hash {
                        h2 { (t(T::Clip)) }
                        video #event-clip controls preload="metadata" muted playsinline width=(event.frame_width) src={"/api/v1/events/" (view.id()) "/clip.mp4"} {}
                        p.note { (t(T::ClipNote)) " sha256 " code.hash #clip-hash { (hash) } }
                    }
                } @else {
                    p.note { (t(T::LiveViewInstead)) }
                    img data-live-frame=(camera_frame_url(view.camera())) src=(camera_frame_url(view.camera())) alt=(view.camera());
                }
            }
            div.facts-column {
                section.card {
                    dl.facts.single {
                        div { dt { (t(T::Time)) } dd { (local_time(view.time())) } }
                        div { dt { (t(T::Camera)) } dd { (view.camera()) } }
                        div { dt { (t(T::Kind)) } dd { (view.kind()) } }
                        div { dt { (t(T::Label)) } dd { (view.label()) } }
                        @if let Some(category) = view.category() { div { dt { (t(T::Category)) } dd { (category) } } }
                        @if let Some(zone) = view.zone() { div { dt { (t(T::Zone)) } dd { (zone) } } }
                        @if let Some(track) = view.track_id() { div { dt { (t(T::Track)) } dd { (track) } } }
                        @if let Some(plate) = &event.plate {
                            div { dt { (t(T::Plate)) } dd #event-plate { (plate.text) " · " (plate.colour) " · " (plate.reads) "/" (plate.of_reads) } }
                            @if plate_picture.is_some() {
                                div.plate-picture { dt { (t(T::PlatePicture)) } dd {
                                    img #event-plate-picture src={"/api/v1/events/" (view.id()) "/plate.jpg"} alt={(t(T::Plate)) ": " (plate.text)};
                                } }
                            }
                        }
                        div { dt { (t(T::Score)) } dd { (format!("{:.2}", view.score())) } }
                        div { dt { (t(T::Box)) } dd { (format!("{}, {} – {}, {}", event.bbox.x1, event.bbox.y1, event.bbox.x2, event.bbox.y2)) } }
                        @if let Some(model) = &event.model {
                            div { dt { (t(T::Model)) } dd { (model.name) " " code title=(model.sha256) { (short_hash(&model.sha256)) "…" } } }
                        }
                        div { dt { (t(T::EventId)) } dd { code #event-id { (view.id()) } } }
                    }
                }
                section.card #evidence-facts {
                    h2 { (t(T::Evidence)) }
                    dl.facts.single {
                        div { dt { (t(T::EvidenceHash)) } dd {
                            @match (view.evidence_sha256(), &image_hash) {
                                (Some(claimed), Some(actual)) => {
                                    code.hash #evidence-hash { (claimed) } br;
                                    @if claimed.eq_ignore_ascii_case(actual) { span.ok { "✓ " (t(T::HashMatches)) } }
                                    @else { span.bad { "✗ " (t(T::HashMismatch)) } }
                                }
                                (Some(claimed), None) => { code.hash #evidence-hash { (claimed) } }
                                (None, Some(actual)) => { code.hash #evidence-hash { (actual) } br; span.muted { (t(T::HashOfKeptFrame)) } }
                                (None, None) => { (t(T::NotAvailable)) }
                            }
                        } }
                        @if let Some(hash) = view.record_hash() { div { dt { "hash" } dd { code.hash { (hash) } } } }
                        div { dt { (t(T::Signature)) } dd #signature {
                            @match view.signature_check(status.evidence.public_key.as_deref()) {
                                Some(Ok(seq)) => { span.ok { "✓ " (t(T::Signed)) " " (seq) } }
                                Some(Err(why)) => { span.bad { "✗ " (t(T::SignatureBroken)) ": " (why) } }
                                None => { span.muted { (t(T::NotSigned)) } }
                            }
                        } }
                    }
                }
                section.card #lifecycle {
                    h2 { (t(T::Lifecycle)) }
                    dl.facts.single {
                        @if let Some(state) = view.state() { div { dt { (t(T::State)) } dd { (state) } } }
                        div { dt { (t(T::Started)) } dd { (local_time(view.start_time().unwrap_or(view.time()))) } }
                        @if let Some(end) = view.end_time() { div { dt { (t(T::Ended)) } dd { (local_time(end)) } } }
                        div { dt { (t(T::TimeToClear)) } dd #time-to-clear {
                            @match view.time_to_clear_secs() {
                                Some(seconds) => { (duration_text(seconds, lang)) }
                                None => { span.muted { (t(T::StillOpen)) } }
                            }
                        } }
                    }
                }
                section.card #acknowledgement {
                    @match view.acknowledged() {
                        Some(ack) => { p.ok { "✓ " (t(T::AcknowledgedBy)) " " (ack.by) " · " (local_time(ack.at)) } }
                        None if session.role == Role::Admin => {
                            form method="post" action={"/events/" (view.id()) "/acknowledge"} {
                                input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                                button #acknowledge type="submit" { (t(T::Acknowledge)) }
                            }
                        }
                        None => { p.muted { (t(T::NotAcknowledged)) } }
                    }
                }
                (labelling_card(&state, &session, &view, lang))
            }
        }
    };
    page.render(view.label(), content).into_response()
}

/// The heads trained on this site (`edge-agent learn`) that the config uses: their held-out
/// figures, the date of their samples and how many labels came in since; nothing when there are none.
fn site_classifiers_card(state: &WebState, lang: Lang) -> Markup {
    site_classifiers_markup(&crate::ops::learn::site_classifiers(&state.settings.current()), lang)
}

fn site_classifiers_markup(heads: &[crate::ops::learn::SiteClassifier], lang: Lang) -> Markup {
    let t = |text: T| text.in_lang(lang);
    html! {
        @if !heads.is_empty() {
            section.card #site-classifiers {
                h2 { (t(T::SiteClassifiers)) }
                div.scroll {
                    table {
                        thead { tr {
                            th { (t(T::Name)) } th { "config" } th { (t(T::Crops)) } th { (t(T::HeldOutAccuracy)) }
                            th { "precision / recall" } th { (t(T::NewestSample)) } th { (t(T::NewSinceTraining)) }
                            th { "sha256" }
                        } }
                        tbody {
                            @for head in heads {
                                tr.site-classifier {
                                    td { strong { (head.name) } }
                                    td { code { (head.role) } }
                                    td.num { (head.learned.counts.values().sum::<usize>()) }
                                    td.num { (format!("{:.2}", head.learned.held_out_accuracy)) }
                                    td {
                                        @for (label, f) in &head.learned.held_out {
                                            (format!("{label} {:.2} / {:.2} ({}) ", f.precision, f.recall, f.crops))
                                        }
                                    }
                                    td { (head.learned.newest_sample) }
                                    td.num.new-since-training {
                                        @match head.new_since_training { Some(n) => { (n) }, None => { "–" } }
                                    }
                                    td { code title=(head.sha256) { (short_hash(&head.sha256)) "…" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The event's label for the site's sample set: how it was labelled, and the form (admins).
fn labelling_card(state: &WebState, session: &Session, view: &EventView, lang: Lang) -> Markup {
    let t = |text: T| text.in_lang(lang);
    let config = state.settings.current();
    let event = &view.record.event;
    let given = state.board.label(view.id());
    let labels = super::labels::model_labels(&config, event.model.as_ref().map(|m| m.name.as_str()));
    let chosen_category = given.as_ref().and_then(|g| g.category.clone()).or_else(|| event.category.clone());
    let category_name = |c: &crate::judge::config::CategoryConfig| match lang {
        Lang::En => format!("{} · {}", c.en, c.name),
        Lang::Zh => format!("{} · {}", c.zh, c.name),
    };
    html! {
        section.card #labelling {
            h2 { (t(T::LabelForSamples)) }
            @if let Some(label) = &given {
                p.ok #label-done {
                    "✓ " (t(T::LabelledAs)) ": " strong { (if label.right { t(T::Right) } else { t(T::Wrong) }) }
                    " · " (label.label)
                    @if let Some(category) = &label.category { " · " (category) }
                    " · " (label.by) " · " (local_time(label.at))
                }
                p.muted { (t(T::SamplesIn)) ": " code { (label.labels_file) } }
            }
            @if session.role == Role::Admin {
                p.muted { (t(T::LabelIntro)) }
                form #label-form.label-form method="post" action={"/events/" (view.id()) "/label"} {
                    input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                    div.verdict {
                        label { input #verdict-right type="radio" name="verdict" value="right" checked[given.as_ref().is_none_or(|g| g.right)]; " " (t(T::Right)) }
                        label { input #verdict-wrong type="radio" name="verdict" value="wrong" checked[given.as_ref().is_some_and(|g| !g.right)]; " " (t(T::Wrong)) }
                    }
                    label { span { (t(T::ReallyIs)) }
                        input #label-label type="text" name="label" list="model-labels" autocapitalize="none"
                            value=(given.as_ref().map(|g| g.label.as_str()).unwrap_or(view.label()));
                    }
                    datalist #model-labels {
                        option value="none" {}
                        @for label in &labels { option value=(label) {} }
                    }
                    label { span { (t(T::Category)) }
                        select #label-category name="category" {
                            option value="" selected[chosen_category.is_none()] { "–" }
                            @for category in &config.taxonomy.categories {
                                option value=(category.name) selected[chosen_category.as_deref() == Some(category.name.as_str())] { (category_name(category)) }
                            }
                            option value="unknown" selected[chosen_category.as_deref() == Some("unknown")] { "unknown" }
                        }
                    }
                    button #save-label type="submit" { (t(T::SaveLabel)) }
                }
            } @else {
                p.muted { (t(T::OnlyAdminsLabel)) }
            }
        }
    }
}

/// `POST /events/{event_id}/acknowledge` from the detail page's button (admins only).
pub async fn acknowledge_from_page(
    State(state): State<Arc<WebState>>,
    Admin(session): Admin,
    lang: Lang,
    uri: Uri,
    Path(event_id): Path<String>,
) -> Response {
    let page = Page { lang, session: &session, state: &state, uri: &uri, nav: Nav::Events };
    let view = match find_event(&page, &event_id) {
        Ok(view) => view,
        Err(response) => return response,
    };
    state.board.acknowledge_event(view.id(), &session.user);
    tracing::info!(event_id = %view.id(), user = %session.user, "event acknowledged");
    Redirect::to(&format!("/events/{}", view.id())).into_response()
}

#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    days: Option<u32>,
}

/// `GET /stats`: daily charts drawn by the server.
pub async fn statistics(
    State(state): State<Arc<WebState>>,
    session: Session,
    lang: Lang,
    uri: Uri,
    Query(query): Query<StatsQuery>,
) -> Markup {
    let page = Page { lang, session: &session, state: &state, uri: &uri, nav: Nav::Statistics };
    let t = |text: T| text.in_lang(lang);
    let days_wanted = query.days.unwrap_or(14).clamp(1, 366);
    // Every kept revision: a lifecycle counts at its start, its time to clear comes with its end.
    let views: Vec<events::EventView> = state.board.event_history().into_iter().map(events::EventView::new).collect();
    let days = stats::daily(&views, days_wanted, Local::now().date_naive());
    let labels: Vec<String> = days.iter().map(|d| d.date.format("%m-%d").to_string()).collect();
    let series_of = |names: Vec<String>, pick: &dyn Fn(&stats::DayStats, &str) -> u64| -> Vec<Series> {
        names
            .into_iter()
            .map(|name| Series {
                values: days.iter().map(|d| pick(d, &name) as f64).collect(),
                name: if name == NO_CATEGORY { t(T::Uncategorised).to_string() } else { name },
            })
            .collect()
    };
    let by_kind = series_of(stats::series_names(&days, |d| &d.by_kind), &|d, n| d.by_kind.get(n).copied().unwrap_or(0));
    let by_category =
        series_of(stats::series_names(&days, |d| &d.by_category), &|d, n| d.by_category.get(n).copied().unwrap_or(0));
    let any_cleared = days.iter().any(|d| d.cleared > 0);
    let clear_series = vec![
        Series {
            name: t(T::Mean).to_string(),
            values: days.iter().map(|d| d.mean_time_to_clear_secs.unwrap_or(0.0) / 60.0).collect(),
        },
        Series {
            name: t(T::Max).to_string(),
            values: days.iter().map(|d| d.max_time_to_clear_secs.unwrap_or(0.0) / 60.0).collect(),
        },
    ];
    let content = html! {
        h1 { (t(T::Statistics)) }
        nav.range {
            @for n in [7u32, 14, 30] {
                a.active[n == days_wanted] href={"/stats?days=" (n)} { (n) " " (t(T::Days)) }
            }
        }
        p.muted { (t(T::StatsNote)) }
        div.charts {
            section.card #chart-kind { (bar_chart(t(T::DailyByKind), &labels, &by_kind, Layout::Stacked)) }
            section.card #chart-category { (bar_chart(t(T::DailyByCategory), &labels, &by_category, Layout::Stacked)) }
            section.card #chart-clear {
                @if any_cleared {
                    (bar_chart(t(T::DailyTimeToClear), &labels, &clear_series, Layout::Grouped))
                } @else {
                    h2 { (t(T::DailyTimeToClear)) }
                    p.empty { (t(T::NoClearedEvents)) }
                }
            }
        }
        details.card {
            summary { (t(T::Date)) " · " (t(T::Count)) }
            div.scroll {
                table #stats-table {
                    thead { tr { th { (t(T::Date)) } th { (t(T::Count)) } th { (t(T::Kind)) } th { (t(T::TimeToClear)) " (" (t(T::Mean)) " / " (t(T::Max)) ")" } th { (t(T::TrucksByPlate)) } } }
                    tbody {
                        @for day in days.iter().rev() {
                            tr {
                                td { (day.date) }
                                td.num { (day.total) }
                                td { (day.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")) }
                                td {
                                    @match (day.mean_time_to_clear_secs, day.max_time_to_clear_secs) {
                                        (Some(mean), Some(max)) => { (duration_text(mean, lang)) " / " (duration_text(max, lang)) }
                                        _ => { "–" }
                                    }
                                }
                                td.plates { (day.trucks_by_plate.iter().map(|(p, n)| format!("{p} ×{n}")).collect::<Vec<_>>().join(", ")) }
                            }
                        }
                    }
                }
            }
        }
    };
    page.render(t(T::Statistics), content)
}

/// The login page (no session yet, so no navigation).
pub fn login_page(lang: Lang, device: &str, csrf: &str, next: &str, message: Option<&str>) -> Markup {
    let t = |text: T| text.in_lang(lang);
    let switch = |code: &str| format!("/login?next={}&lang={code}", query_value(next));
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (t(T::LogIn)) " · " (device) }
                link rel="icon" href="/assets/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/assets/app.css";
            }
            body.login {
                main.login-box {
                    p.langs {
                        a.active[lang == Lang::En] href=(switch("en")) lang="en" { "EN" }
                        a.active[lang == Lang::Zh] href=(switch("zh")) lang="zh-CN" { "中文" }
                    }
                    h1 { img src="/assets/favicon.svg" width="36" height="36" alt=""; " " (t(T::AppName)) }
                    p.device { (device) }
                    @if let Some(message) = message { p.error #login-error role="alert" { (message) } }
                    form #login-form method="post" action="/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="next" value=(next);
                        label { span { (t(T::UserName)) } input #name type="text" name="name" autocomplete="username" autocapitalize="none" required autofocus; }
                        label { span { (t(T::Password)) } input #password type="password" name="password" autocomplete="current-password" required; }
                        button #log-in type="submit" { (t(T::LogIn)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_classifiers_card_shows_figures_dates_and_new_labels() {
        let learned = crate::infer::manifest::LearnedSpec {
            samples: "samples".into(),
            labels_file: "labels.csv".into(),
            newest_sample: "2026-11-02T08:00:00Z".into(),
            trained_at: "2026-11-03T08:00:00Z".into(),
            backbone: "efficientnet_lite0".into(),
            backbone_sha256: "0".repeat(64),
            held_out_share: 0.25,
            held_out_accuracy: 0.875,
            counts: [("kitchen".to_string(), 20), ("residual".to_string(), 12)].into(),
            held_out: [(
                "kitchen".to_string(),
                crate::infer::manifest::HeldOutFigures { crops: 5, precision: 1.0, recall: 0.8 },
            )]
            .into(),
        };
        let head = crate::ops::learn::SiteClassifier {
            role: "taxonomy.classifier",
            name: "site_garbage".into(),
            sha256: "ab".repeat(32),
            learned,
            new_since_training: Some(3),
        };
        let html = site_classifiers_markup(&[head], Lang::Zh).into_string();
        assert!(html.contains("站点分类器") && html.contains("site_garbage") && html.contains("0.88"), "{html}");
        assert!(html.contains("kitchen 1.00 / 0.80 (5)") && html.contains("2026-11-02T08:00:00Z"), "{html}");
        assert!(html.contains(r#"new-since-training">3<"#) && html.contains(">32<"), "{html}");
        assert!(site_classifiers_markup(&[], Lang::En).into_string().is_empty(), "no card without heads");
    }

    #[test]
    fn durations_read_naturally_in_both_languages() {
        assert_eq!(duration_text(42.0, Lang::En), "42 s");
        assert_eq!(duration_text(125.0, Lang::En), "2 min 5 s");
        assert_eq!(duration_text(3.0 * 86_400.0 + 4.0 * 3600.0, Lang::En), "3 d 4 h");
        assert_eq!(duration_text(5.0 * 3600.0 + 12.0 * 60.0, Lang::Zh), "5小时12分");
    }

    #[test]
    fn the_login_page_escapes_what_it_echoes() {
        let page = login_page(Lang::Zh, "box<1>", "abc", "/events?x=\"><script>", Some("<b>")).into_string();
        assert!(page.contains("box&lt;1&gt;"));
        assert!(!page.contains("<script>"));
        assert!(page.contains("登录"));
        assert!(page.contains("&lt;b&gt;"));
    }
}
