//! The local web page and JSON API for supervisors and installers, served by axum from the status
//! board: pages, `/api/v1` (documented in `assets/openapi.json`), installer tools, labelling, live
//! events, `/metrics`, login and optional HTTPS; everything it sends is embedded in the binary.

pub mod api;
pub mod assets;
pub mod auth;
pub mod charts;
pub mod config;
pub mod events;
pub mod extract;
pub mod i18n;
pub mod installer;
pub mod labels;
pub mod learning;
pub mod metrics;
pub mod pages;
pub mod sse;
pub mod stats;
pub mod system;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use crate::base::shutdown::Shutdown;
use crate::config::Config;
use crate::control::settings::LiveSettings;
use crate::control::site_heads::SiteHeads;
use crate::delivery::board::StatusBoard;
use auth::{Auth, ClientAddr};

/// What every handler can reach.
pub struct WebState {
    pub board: Arc<StatusBoard>,
    pub auth: Auth,
    pub state_dir: PathBuf,
    pub metrics_token: Option<String>,
    pub metrics_public: bool,
    pub shutdown: Shutdown,
    /// The config store and the running stages, shared with the MQTT commands.
    pub settings: Arc<LiveSettings>,
    /// One labelling at a time: each rewrites the labels file.
    pub labelling: tokio::sync::Mutex<()>,
    /// Site heads trained from the page, and their deployment.
    pub learning: learning::Learning,
    pub heads: Arc<SiteHeads>,
}

impl WebState {
    pub fn new(
        config: &Config,
        board: Arc<StatusBoard>,
        settings: Arc<LiveSettings>,
        heads: Arc<SiteHeads>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            settings,
            heads,
            learning: learning::Learning::default(),
            labelling: tokio::sync::Mutex::new(()),
            board,
            auth: Auth::new(&config.web)?,
            state_dir: config.state_dir.clone(),
            metrics_token: config.web.metrics_token.clone(),
            metrics_public: config.web.metrics_public,
            shutdown,
        })
    }
}

/// `{ "source": file, "config": {...} }` from the file the agent was started with.
pub fn config_view(source: Option<&std::path::Path>) -> Value {
    let Some(path) = source else {
        return serde_json::json!({ "source": "embedded defaults", "config": {} });
    };
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str::<toml::Value>(&text).map_err(|e| e.to_string()))
        .and_then(|toml| serde_json::to_value(toml).map_err(|e| e.to_string()));
    match parsed {
        Ok(mut config) => {
            crate::base::redact::redact_json(&mut config);
            serde_json::json!({ "source": path.display().to_string(), "config": config })
        }
        Err(e) => serde_json::json!({ "source": path.display().to_string(), "config": {}, "error": e }),
    }
}

pub fn router(state: Arc<WebState>, loopback: bool) -> Router {
    let needs_login = Router::new()
        .route("/", get(pages::overview))
        .route("/cameras", get(pages::cameras))
        .route("/events", get(pages::events_list))
        .route("/events/{event_id}", get(pages::event_detail))
        .route("/events/{event_id}/acknowledge", post(pages::acknowledge_from_page))
        .route("/events/{event_id}/label", post(labels::label_from_page))
        .route("/installer", get(installer::page))
        .route("/stats", get(pages::statistics))
        .route("/logout", post(auth::logout))
        .route("/api/status", get(|| async { Redirect::permanent("/api/v1/status") }))
        .route("/api/cameras/{camera}/frame.jpg", get(legacy_frame))
        .merge(api::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_login));
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/assets/{name}", get(assets::asset))
        .route("/metrics", get(metrics::metrics))
        .merge(needs_login)
        .fallback(api::not_found)
        .layer(middleware::from_fn(i18n::remember_language))
        .layer(middleware::from_fn(security_headers));
    let router = if loopback { router.layer(middleware::from_fn(loopback_hosts_only)) } else { router };
    router.with_state(state)
}

/// Prepares everything (certificate included), then binds, so a listening port means a page that
/// answers; a taken port is an error at start, naming the address. Serves until shutdown, over
/// HTTPS when `web.https` is set.
pub async fn serve(
    config: &Config,
    board: Arc<StatusBoard>,
    settings: Arc<LiveSettings>,
    heads: Arc<SiteHeads>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let web = &config.web;
    let state = Arc::new(WebState::new(config, board, settings, heads, shutdown.clone())?);
    let tls = if web.https { Some(tls::server_config(web, &config.state_dir, &config.device_id)?) } else { None };
    let listener = tokio::net::TcpListener::bind(&web.listen)
        .await
        .map_err(|e| anyhow::anyhow!("web page: cannot listen on {} (config `web.listen`): {e}", web.listen))?;
    let local = listener.local_addr()?;
    if state.auth.is_open() {
        tracing::warn!(
            "no `web.users` configured: the web page is open without login, to this machine only ({local}); \
             add users (`edge-agent passwd` makes a password hash) before serving the network"
        );
    }
    let app = router(state, local.ip().is_loopback()).into_make_service_with_connect_info::<ClientAddr>();
    let stopped = async move { shutdown.wait().await };
    if let Some(tls) = tls {
        let listener = tls::TlsListener::new(listener, tls).context("web page HTTPS listener")?;
        tracing::info!("web page on https://{local}");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                tracing::error!("web page stopped: {e}");
            }
        });
    } else {
        tracing::info!("web page on http://{local}");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                tracing::error!("web page stopped: {e}");
            }
        });
    }
    Ok(())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// The walking skeleton's frame address, kept working for existing bookmarks and scripts.
async fn legacy_frame(Path(camera): Path<String>) -> Redirect {
    Redirect::permanent(&format!("/api/v1/cameras/{}/frame.jpg", events::path_segment(&camera)))
}

/// No scripts or styles from elsewhere, no framing, no sniffing; pages are not cached.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The host part of a Host header (`127.0.0.1:8080` → `127.0.0.1`, `[::1]:8080` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':').map(|(name, _)| name).unwrap_or(host)
}

/// On a loopback address, answer only to loopback names: a web site that points its own DNS name
/// at 127.0.0.1 (DNS rebinding) must not get to read the page from a browser on this machine.
async fn loopback_hosts_only(request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(host_name);
    let allowed = match host {
        None => true,
        Some(name) => {
            name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
    };
    if allowed {
        next.run(request).await
    } else {
        (StatusCode::MISDIRECTED_REQUEST, "this page listens on loopback and answers to localhost / 127.0.0.1 only\n")
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("evil.example:8080"), "evil.example");
    }
}
