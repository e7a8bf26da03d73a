//! Who may see the page: users from `[web] users` with argon2 password hashes, login sessions kept
//! in memory behind an HttpOnly + SameSite=Strict cookie, a CSRF token per session checked on every
//! state-changing request, and a per-address limit on failed logins. With no users on a loopback
//! address (the embedded demo) every visitor gets a session as the local admin.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::config::{Role, WebConfig};
use super::i18n::{Lang, T};
use super::{pages, WebState};

pub const SESSION_COOKIE: &str = "edge_session";
/// Login-form CSRF token (double submit: cookie and form field must match).
pub const LOGIN_COOKIE: &str = "edge_login";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const CSRF_FIELD: &str = "csrf";
/// The user name of the implicit session when no users are configured on loopback.
pub const LOCAL_USER: &str = "local";
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 1000;
/// Largest form body read when looking for its CSRF field.
const MAX_FORM_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read random bytes from the operating system: {0}")]
    Random(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// 32 random bytes, hex: session ids and CSRF tokens.
pub fn random_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// An argon2id PHC string for `[web] users`, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A logged-in visitor.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Must come back with every state-changing request of this session.
    pub csrf: String,
    last_used: Instant,
}

/// Login attempts across all addresses within a minute; more wait (429), so guessing from many
/// addresses cannot keep the box's CPU hashing passwords.
const GLOBAL_ATTEMPTS_PER_MINUTE: u32 = 60;

/// Password hashes (argon2, ~19 MiB each) computed at once; more attempts wait their turn.
const CONCURRENT_HASHES: usize = 2;

/// Why a login attempt may not even be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// This address failed too often; try again after this long.
    LockedOut(Duration),
    /// Too many attempts from everywhere; try again after this long.
    Busy(Duration),
}

/// Failed logins per client address: an address may have at most `attempts` failed or running
/// attempts within `window` (counted from its first failure), so parallel guesses count before
/// their passwords are checked, not after. Plus one limit for all addresses together.
pub struct LoginLimiter {
    attempts: u32,
    window: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    per_address: HashMap<IpAddr, AddressRecord>,
    /// Start of the current global minute, and the attempts in it.
    global: Option<(Instant, u32)>,
}

#[derive(Clone, Copy)]
struct AddressRecord {
    failures: u32,
    running: u32,
    first: Instant,
}

/// One admitted attempt; say how it went. Dropped without a word, it counts as a failure.
pub struct LoginAttempt<'a> {
    limiter: &'a LoginLimiter,
    client: IpAddr,
    settled: bool,
}

impl LoginAttempt<'_> {
    pub fn failed(mut self, now: Instant) {
        self.settled = true;
        self.limiter.settle(self.client, Some(now));
    }

    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter.settle(self.client, None);
    }
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(self.client, Some(Instant::now()));
        }
    }
}

impl LoginLimiter {
    pub fn new(attempts: u32, window: Duration) -> Self {
        Self { attempts, window, state: Mutex::new(LimiterState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits an attempt from `client`, counting it at once (one lock: check and count are one
    /// step), or says why not.
    pub fn begin(&self, client: IpAddr, now: Instant) -> Result<LoginAttempt<'_>, LoginRefusal> {
        let mut state = self.lock();
        let minute = Duration::from_secs(60);
        let (start, count) = match state.global {
            Some((start, count)) if now.duration_since(start) < minute => (start, count),
            _ => (now, 0),
        };
        if count >= GLOBAL_ATTEMPTS_PER_MINUTE {
            return Err(LoginRefusal::Busy(minute.saturating_sub(now.duration_since(start))));
        }
        if state.per_address.len() > 10_000 {
            let window = self.window;
            state.per_address.retain(|_, r| r.running > 0 || now.duration_since(r.first) < window);
        }
        let record = state.per_address.entry(client).or_insert(AddressRecord { failures: 0, running: 0, first: now });
        if record.running == 0 && now.duration_since(record.first) >= self.window {
            *record = AddressRecord { failures: 0, running: 0, first: now };
        }
        if record.failures + record.running >= self.attempts {
            return Err(LoginRefusal::LockedOut(self.window.saturating_sub(now.duration_since(record.first))));
        }
        record.running += 1;
        state.global = Some((start, count + 1));
        Ok(LoginAttempt { limiter: self, client, settled: false })
    }

    /// Ends a running attempt: a failure at `now`, or a success (which clears the address).
    fn settle(&self, client: IpAddr, failed_at: Option<Instant>) {
        let mut state = self.lock();
        match failed_at {
            Some(_) => {
                if let Some(record) = state.per_address.get_mut(&client) {
                    record.running = record.running.saturating_sub(1);
                    record.failures += 1;
                }
            }
            None => {
                state.per_address.remove(&client);
            }
        }
    }
}

pub struct Auth {
    users: HashMap<String, (String, Role)>,
    open_on_loopback: bool,
    secure_cookies: bool,
    idle: Duration,
    sessions: Mutex<HashMap<String, Session>>,
    pub limiter: LoginLimiter,
    /// At most `CONCURRENT_HASHES` argon2 checks at once, on the blocking pool.
    hashing: tokio::sync::Semaphore,
    /// Checked against for unknown user names, so a reply's timing does not tell which names exist.
    decoy_hash: String,
}

impl Auth {
    pub fn new(config: &WebConfig) -> Result<Self, AuthError> {
        Ok(Self {
            users: config.users.iter().map(|u| (u.name.clone(), (u.password_hash.clone(), u.role))).collect(),
            open_on_loopback: config.is_open_on_loopback(),
            secure_cookies: config.https,
            idle: Duration::from_secs(config.session_idle_minutes * 60),
            sessions: Mutex::new(HashMap::new()),
            limiter: LoginLimiter::new(config.login_attempts, Duration::from_secs(config.login_lockout_secs)),
            hashing: tokio::sync::Semaphore::new(CONCURRENT_HASHES),
            decoy_hash: hash_password(&random_token()?)?,
        })
    }

    pub fn is_open(&self) -> bool {
        self.open_on_loopback
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live session behind a cookie value, marked as used now.
    pub fn session(&self, token: &str) -> Option<Session> {
        let mut sessions = self.sessions();
        let now = Instant::now();
        let session = sessions.get_mut(token)?;
        if now.duration_since(session.last_used) > self.idle {
            sessions.remove(token);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    pub fn start_session(&self, user: &str, role: Role) -> Result<(String, Session), AuthError> {
        let token = random_token()?;
        let session = Session { user: user.to_string(), role, csrf: random_token()?, last_used: Instant::now() };
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.last_used) <= self.idle);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(t, _)| t.clone()) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(token.clone(), session.clone());
        Ok((token, session))
    }

    pub fn end_session(&self, token: &str) {
        self.sessions().remove(token);
    }

    pub fn session_cookie(&self, token: &str) -> String {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}")
    }

    fn expired_cookie(&self, name: &str) -> String {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        format!("{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
    }

    /// The role of `name` if `password` is right. Runs argon2 off the async workers.
    pub async fn check_login(&self, name: &str, password: &str) -> Option<Role> {
        let (hash, role) = match self.users.get(name) {
            Some((hash, role)) => (hash.clone(), Some(*role)),
            None => (self.decoy_hash.clone(), None),
        };
        let password = password.to_string();
        // The semaphore is never closed; a refusal would only mean "not verified".
        let Ok(_permit) = self.hashing.acquire().await else { return None };
        let verified = tokio::task::spawn_blocking(move || verify_password(&hash, &password)).await.unwrap_or(false);
        role.filter(|_| verified)
    }
}

/// The value of one cookie in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// Constant-time comparison of secrets (tokens), so timing does not leak how much matched.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client's address, for the login limit; works over plain TCP and over TLS.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<axum::serve::IncomingStream<'_, super::tls::TlsListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, super::tls::TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

fn client_ip(request_extensions: &axum::http::Extensions) -> IpAddr {
    request_extensions
        .get::<ConnectInfo<ClientAddr>>()
        .map(|ConnectInfo(ClientAddr(addr))| addr.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A request from another site (by the browser's own word) must not change anything.
fn is_cross_site(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(|origin| origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin));
    let origin_differs = matches!((origin_host, host), (Some(origin), Some(host)) if origin != host)
        || (origin_host.is_some() && host.is_none());
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    origin_differs || fetch_site == Some("cross-site")
}

/// Everything behind it needs a session; state-changing requests also need the session's CSRF
/// token (header `X-CSRF-Token`, or form field `csrf`). Puts the [`Session`] into the request.
pub async fn require_login(State(state): State<Arc<WebState>>, request: Request, next: Next) -> Response {
    let auth = &state.auth;
    // The API answers its refusals in its own JSON error; pages in text.
    let api = request.uri().path().starts_with("/api/");
    let refuse = |status: StatusCode, code: &'static str, text: &str| {
        if api {
            super::api::error(status, code, text.trim_end())
        } else {
            (status, text.to_string()).into_response()
        }
    };
    let lang = Lang::from_request(request.uri().query(), request.headers());
    let existing = cookie(request.headers(), SESSION_COOKIE).and_then(|token| auth.session(token));
    let (session, new_cookie) = match existing {
        Some(session) => (session, None),
        None if auth.is_open() => match auth.start_session(LOCAL_USER, Role::Admin) {
            Ok((token, session)) => (session, Some(auth.session_cookie(&token))),
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("{e}\n")),
        },
        None => return login_required(&request),
    };
    let mut request = request;
    if is_state_changing(request.method()) {
        if is_cross_site(request.headers()) {
            return refuse(StatusCode::FORBIDDEN, "cross_site", "cross-site request refused\n");
        }
        let (ok, rebuilt) = carries_csrf_token(request, &session.csrf).await;
        let Some(rebuilt) = rebuilt else {
            return refuse(StatusCode::BAD_REQUEST, "invalid_body", "request body too large or unreadable\n");
        };
        if !ok {
            let text = match lang {
                Lang::En => "missing or wrong CSRF token; reload the page and try again\n",
                Lang::Zh => "CSRF 令牌缺失或错误；请刷新页面后重试\n",
            };
            return refuse(StatusCode::FORBIDDEN, "csrf_token", text);
        }
        request = rebuilt;
    }
    request.extensions_mut().insert(session);
    let mut response = next.run(request).await;
    if let Some(cookie) = new_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

fn login_required(request: &Request) -> Response {
    let path = request.uri().path();
    if path.starts_with("/api/") {
        let mut response = super::api::error(StatusCode::UNAUTHORIZED, "login_required", "login required");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Cookie realm=\"edge-agent\""));
        return response;
    }
    let next = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Redirect::to(&format!("/login?next={}", super::events::query_value(next))).into_response()
}

/// Whether the request carries `expected` as its CSRF token; returns the request rebuilt (its
/// body may have been read), or `None` when the body could not be read.
async fn carries_csrf_token(request: Request, expected: &str) -> (bool, Option<Request>) {
    if let Some(token) = request.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return (same_secret(token, expected), Some(request));
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return (false, Some(request));
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return (false, None);
    };
    let found = form_field(&bytes, CSRF_FIELD).is_some_and(|token| same_secret(token, expected));
    (found, Some(Request::from_parts(parts, axum::body::Body::from(bytes))))
}

/// A form field whose value needs no decoding (our tokens are hex).
fn form_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(body).ok()?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or_else(|| super::api::error(StatusCode::UNAUTHORIZED, "login_required", "login required"))
    }
}

/// A session whose user is an admin; anyone else gets 403.
pub struct Admin(pub Session);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state).await?;
        if session.role == Role::Admin {
            return Ok(Admin(session));
        }
        let lang = Lang::from_request(parts.uri.query(), &parts.headers);
        let message = T::Forbidden.in_lang(lang);
        Err(super::api::error(StatusCode::FORBIDDEN, "admin_only", message))
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Only paths on this site: no `//host`, no scheme, nothing odd.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(|c| c.is_control())
                && !path.starts_with("/login") =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

/// `GET /login`: the form, with a fresh login CSRF token in a cookie and a hidden field.
pub async fn login_form(
    State(state): State<Arc<WebState>>,
    lang: Lang,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
) -> Response {
    let next = safe_next(query.next.as_deref());
    let logged_in = cookie(&headers, SESSION_COOKIE).and_then(|t| state.auth.session(t)).is_some();
    if logged_in || state.auth.is_open() {
        return Redirect::to(&next).into_response();
    }
    login_page_response(&state, lang, &next, None, StatusCode::OK)
}

fn login_page_response(
    state: &WebState,
    lang: Lang,
    next: &str,
    message: Option<String>,
    status: StatusCode,
) -> Response {
    let token = match random_token() {
        Ok(token) => token,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let secure = if state.auth.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{LOGIN_COOKIE}={token}; Path=/; Max-Age=3600; HttpOnly; SameSite=Strict{secure}");
    let page = pages::login_page(lang, state.board.device_id(), &token, next, message.as_deref());
    let mut response = (status, page).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /login`: checks the login CSRF token, the rate limit, then the password.
pub async fn login(
    State(state): State<Arc<WebState>>,
    lang: Lang,
    headers: HeaderMap,
    request_parts: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(&form.csrf, expected) || is_cross_site(&headers) {
        let message = T::LoginExpired.in_lang(lang).to_string();
        return login_page_response(&state, lang, &next, Some(message), StatusCode::FORBIDDEN);
    }
    let client = client_ip(&request_parts);
    let attempt = match state.auth.limiter.begin(client, Instant::now()) {
        Ok(attempt) => attempt,
        Err(refusal) => {
            let wait = match refusal {
                LoginRefusal::LockedOut(wait) => {
                    tracing::warn!(%client, "login refused: too many failed attempts from this address");
                    wait
                }
                LoginRefusal::Busy(wait) => {
                    tracing::warn!(%client, "login refused: too many attempts from all addresses this minute");
                    wait
                }
            };
            let message =
                format!("{} {} {}", T::TooManyAttempts.in_lang(lang), wait.as_secs() + 1, T::Seconds.in_lang(lang));
            let mut response = login_page_response(&state, lang, &next, Some(message), StatusCode::TOO_MANY_REQUESTS);
            if let Ok(value) = HeaderValue::from_str(&(wait.as_secs() + 1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    };
    let Some(role) = state.auth.check_login(&form.name, &form.password).await else {
        attempt.failed(Instant::now());
        tracing::warn!(%client, user = %form.name, "login failed");
        let message = T::WrongPassword.in_lang(lang).to_string();
        return login_page_response(&state, lang, &next, Some(message), StatusCode::UNAUTHORIZED);
    };
    attempt.succeeded();
    let (token, _) = match state.auth.start_session(&form.name, role) {
        Ok(started) => started,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    tracing::info!(%client, user = %form.name, ?role, "logged in");
    let mut response = Redirect::to(&next).into_response();
    for cookie in [state.auth.session_cookie(&token), state.auth.expired_cookie(LOGIN_COOKIE)] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// `POST /logout` (behind [`require_login`], so CSRF-checked).
pub async fn logout(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        state.auth.end_session(token);
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&state.auth.expired_cookie(SESSION_COOKIE)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::config::check_password_hash;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(check_password_hash(&hash).is_ok());
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horse "));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salts differ");
    }

    #[test]
    fn an_address_is_locked_out_after_the_allowed_failures_until_the_window_ends() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let client = IpAddr::from([10, 0, 0, 7]);
        let other = IpAddr::from([10, 0, 0, 8]);
        let start = Instant::now();
        for _ in 0..3 {
            limiter.begin(client, start).unwrap().failed(start);
        }
        let refused = limiter.begin(client, start + Duration::from_secs(10)).err().unwrap();
        assert_eq!(refused, LoginRefusal::LockedOut(Duration::from_secs(50)));
        assert!(limiter.begin(other, start).is_ok(), "other addresses are not affected");
        let later = start + Duration::from_secs(61);
        limiter.begin(client, later).unwrap().failed(later);
        assert!(limiter.begin(client, later + Duration::from_secs(1)).is_ok(), "a new window starts afresh");
    }

    #[test]
    fn parallel_attempts_count_before_their_passwords_are_checked() {
        let limiter = LoginLimiter::new(5, Duration::from_secs(60));
        let client = IpAddr::from([10, 0, 0, 9]);
        let now = Instant::now();
        // 40 attempts arrive together: only 5 are admitted while none has finished.
        let admitted: Vec<_> = (0..40).filter_map(|_| limiter.begin(client, now).ok()).collect();
        assert_eq!(admitted.len(), 5);
        drop(admitted);
        assert!(matches!(limiter.begin(client, now), Err(LoginRefusal::LockedOut(_))), "dropped attempts are failures");
    }

    #[test]
    fn all_addresses_together_are_limited_per_minute() {
        let limiter = LoginLimiter::new(5, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..GLOBAL_ATTEMPTS_PER_MINUTE {
            let client = IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]);
            limiter.begin(client, now).unwrap().failed(now);
        }
        let fresh = IpAddr::from([10, 2, 0, 1]);
        assert!(matches!(limiter.begin(fresh, now), Err(LoginRefusal::Busy(_))));
        assert!(limiter.begin(fresh, now + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn a_success_clears_the_failures() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        let client = IpAddr::from([127, 0, 0, 1]);
        let now = Instant::now();
        limiter.begin(client, now).unwrap().failed(now);
        limiter.begin(client, now).unwrap().succeeded();
        limiter.begin(client, now).unwrap().failed(now);
        assert!(limiter.begin(client, now).is_ok());
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("edge_session_old=1; edge_session=abc; lang=zh"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "lang"), Some("zh"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/events?kind=object")), "/events?kind=object");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn other_origins_are_cross_site() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!is_cross_site(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(!is_cross_site(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(is_cross_site(&headers));
    }

    #[test]
    fn sessions_end_and_carry_their_own_csrf_token() {
        let auth = Auth::new(&WebConfig::default()).unwrap();
        let (token, session) = auth.start_session("li", Role::Viewer).unwrap();
        assert_eq!(auth.session(&token).unwrap().csrf, session.csrf);
        assert_ne!(token, session.csrf);
        auth.end_session(&token);
        assert!(auth.session(&token).is_none());
        assert!(auth.session_cookie(&token).contains("HttpOnly; SameSite=Strict"));
    }
}
