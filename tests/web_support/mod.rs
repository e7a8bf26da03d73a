//! Helpers for the web page's end-to-end tests: an agent with users (their hashes made by the real
//! `edge-agent passwd`), a logged-in HTTP session that keeps its cookies and CSRF token, and
//! chromedriver driving Debian's chromium.
#![allow(dead_code)]

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edge_agent_tests::*;

pub const ADMIN: (&str, &str) = ("ana", "admin-password-1");
pub const VIEWER: (&str, &str) = ("vic", "viewer-password-1");
pub const METRICS_TOKEN: &str = "scraper-token-0123456789";

/// An argon2 hash of `password`, made by `edge-agent passwd` reading it from a pipe.
pub fn password_hash(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(agent_binary())
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edge-agent passwd");
    child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("write the password");
    let output = child.wait_with_output().expect("edge-agent passwd output");
    assert!(output.status.success(), "edge-agent passwd failed: {}", String::from_utf8_lossy(&output.stderr));
    let hash = String::from_utf8(output.stdout).expect("utf-8").trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "not an argon2id hash: {hash}");
    hash
}

/// The agent with an admin and a viewer, the dog.jpg replay camera `yard` and the detector.
pub struct WebAgent {
    pub agent: Agent,
    pub base: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl WebAgent {
    /// `web_extra` is appended to the `[web]` section (e.g. `login_attempts = 3`).
    pub fn start(web_extra: &str) -> Self {
        Self::start_with(web_extra, true)
    }

    pub fn start_with(web_extra: &str, with_users: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let frames = dir.path().join("frames");
        std::fs::create_dir(&frames).expect("frames folder");
        std::fs::copy(repo_root().join("models/samples/dog.jpg"), frames.join("a-dog.jpg")).expect("copy dog.jpg");
        // A frame without reportable objects in between: the truck leaves and comes back, so the
        // tracker starts a new event every loop and the page has live events to show.
        std::fs::copy(repo_root().join("models/samples/person.jpg"), frames.join("b-person.jpg"))
            .expect("copy person.jpg");
        let port = free_port();
        let users = if with_users {
            format!(
                "users = [\n  {{ name = \"{}\", password_hash = \"{}\", role = \"admin\" }},\n  \
                 {{ name = \"{}\", password_hash = \"{}\", role = \"viewer\" }},\n]\n",
                ADMIN.0,
                password_hash(ADMIN.1),
                VIEWER.0,
                password_hash(VIEWER.1)
            )
        } else {
            String::new()
        };
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"device_id = "web-box"
state_dir = "state"

[web]
listen = "127.0.0.1:{port}"
metrics_token = "{METRICS_TOKEN}"
{users}{web_extra}

[[cameras]]
id = "yard"
source = {{ kind = "replay", path = "frames", fps = 1.0 }}

[[models]]
manifest = "{models}/nanodet.toml"
score_threshold = 0.3

[tracking]
max_lost_secs = 0.5
stationary_memory_secs = 0.0

[rules.object]
min_duration_secs = 0.0
"#,
                models = repo_root().join("models").display(),
            ),
        )
        .expect("write config");
        let agent = Agent::start(&config, &dir.path().join("agent.log"));
        assert!(
            wait_for_port(port, Duration::from_secs(60)),
            "the web page never listened on {port}; log:\n{}",
            agent.log_text()
        );
        let scheme = if web_extra.contains("https = true") { "https" } else { "http" };
        Self { agent, base: format!("{scheme}://127.0.0.1:{port}"), port, dir }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

fn plain_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn reply(mut response: ureq::http::Response<ureq::Body>, read_body: bool) -> Reply {
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = response.status().as_u16();
    let content_type = header("content-type").unwrap_or_default();
    let location = header("location");
    let set_cookies =
        response.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    let body = if read_body { response.body_mut().read_to_string().unwrap_or_default() } else { String::new() };
    Reply { status, content_type, location, set_cookies, body }
}

/// `name=value` of a Set-Cookie header named `name`.
pub fn cookie_pair(set_cookies: &[String], name: &str) -> Option<String> {
    set_cookies
        .iter()
        .filter_map(|c| c.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// The `value` of `<input ... name="NAME" value="...">` or `<meta name="NAME" content="...">`.
pub fn html_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag = &html[tag_start..tag_start + html[tag_start..].find('>')?];
    let value_at = tag.find("value=\"").map(|i| i + 7).or_else(|| tag.find("content=\"").map(|i| i + 9))?;
    Some(tag[value_at..].split('"').next()?.to_string())
}

/// An HTTP client holding a login session.
pub struct HttpSession {
    pub base: String,
    pub cookie: String,
    pub csrf: String,
    agent: ureq::Agent,
}

impl HttpSession {
    /// Logs in through the login form, as a browser would; `Err` holds the refusal.
    pub fn login(base: &str, user: &str, password: &str) -> Result<Self, Reply> {
        let agent = plain_agent();
        let form = reply(agent.get(format!("{base}/login")).call().expect("GET /login"), true);
        assert_eq!(form.status, 200, "login form: {}", form.body);
        let login_cookie = cookie_pair(&form.set_cookies, "edge_login").expect("login form sets its CSRF cookie");
        let login_csrf = html_value(&form.body, "csrf").expect("login form has a csrf field");
        let answer = reply(
            agent
                .post(format!("{base}/login"))
                .header("Cookie", &login_cookie)
                .send_form([("name", user), ("password", password), ("csrf", &login_csrf), ("next", "/")])
                .expect("POST /login"),
            true,
        );
        if answer.status != 303 {
            return Err(answer);
        }
        let session = cookie_pair(&answer.set_cookies, "edge_session").expect("a session cookie after login");
        let cookie_header =
            answer.set_cookies.iter().find(|c| c.starts_with("edge_session=")).cloned().unwrap_or_default();
        assert!(cookie_header.contains("HttpOnly") && cookie_header.contains("SameSite=Strict"), "{cookie_header}");
        let mut logged_in = Self { base: base.to_string(), cookie: session, csrf: String::new(), agent };
        let page = logged_in.get("/");
        assert_eq!(page.status, 200, "overview after login: {}", page.body);
        logged_in.csrf = html_value(&page.body, "csrf-token").expect("the page carries its CSRF token");
        Ok(logged_in)
    }

    /// The session a page open on loopback (no `[web] users`) gives every visitor: admin.
    pub fn open_on_loopback(base: &str) -> Self {
        let agent = plain_agent();
        let page = reply(agent.get(format!("{base}/")).call().expect("GET /"), true);
        assert_eq!(page.status, 200, "overview: {}", page.body);
        let cookie = cookie_pair(&page.set_cookies, "edge_session").expect("a session cookie for the local user");
        let csrf = html_value(&page.body, "csrf-token").expect("the page carries its CSRF token");
        Self { base: base.to_string(), cookie, csrf, agent }
    }

    pub fn get(&self, path: &str) -> Reply {
        let response = self.agent.get(format!("{}{path}", self.base)).header("Cookie", &self.cookie).call();
        reply(response.unwrap_or_else(|e| panic!("GET {path}: {e}")), true)
    }

    /// GET of a binary answer (a picture): status and bytes.
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let response = self.agent.get(format!("{}{path}", self.base)).header("Cookie", &self.cookie).call();
        let mut response = response.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let bytes = response.body_mut().read_to_vec().unwrap_or_default();
        (status, bytes)
    }

    /// GET that reads only the head (for endless streams).
    pub fn get_head_only(&self, path: &str) -> Reply {
        let response = self.agent.get(format!("{}{path}", self.base)).header("Cookie", &self.cookie).call();
        reply(response.unwrap_or_else(|e| panic!("GET {path}: {e}")), false)
    }

    /// POST with an empty body and, when given, a CSRF token header.
    pub fn post(&self, path: &str, csrf: Option<&str>) -> Reply {
        let mut request = self.agent.post(format!("{}{path}", self.base)).header("Cookie", &self.cookie);
        if let Some(token) = csrf {
            request = request.header("X-CSRF-Token", token);
        }
        reply(request.send_empty().unwrap_or_else(|e| panic!("POST {path}: {e}")), true)
    }
}

impl HttpSession {
    /// A request with a JSON body (`method` as in the OpenAPI document: post, put).
    pub fn send_json(&self, method: &str, path: &str, body: &serde_json::Value, csrf: Option<&str>) -> Reply {
        self.send_raw(method, path, &body.to_string(), csrf)
    }
}

impl HttpSession {
    /// A request with `body` as it is, sent as JSON (for bodies that are not).
    pub fn send_raw(&self, method: &str, path: &str, body: &str, csrf: Option<&str>) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "put" => self.agent.put(url),
            _ => self.agent.post(url),
        }
        .header("Cookie", &self.cookie)
        .header("Content-Type", "application/json");
        if let Some(token) = csrf {
            request = request.header("X-CSRF-Token", token);
        }
        reply(request.send(body.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: {e}")), true)
    }
}

/// GET without any session.
pub fn anonymous_get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = plain_agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    reply(request.call().unwrap_or_else(|e| panic!("GET {url}: {e}")), true)
}

/// Waits until the agent has reported an event and returns its id.
pub fn first_event_id(session: &HttpSession) -> String {
    let found = eventually(Duration::from_secs(60), || {
        let reply = session.get("/api/v1/events?limit=1");
        let json: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
        json["events"][0]["event"]["event_id"].as_str().map(str::to_string)
    });
    found.expect("no event within 60 s")
}

/// chromedriver on a free port; killed when dropped.
pub struct ChromeDriver {
    child: Child,
    pub url: String,
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/lib/chromium"].iter().map(PathBuf::from))
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|p| p.is_file())
}

impl ChromeDriver {
    /// `None` (skip) when chromium or chromedriver is missing outside CI; fails in CI.
    pub fn start() -> Option<(Self, PathBuf)> {
        let how = "install Debian's `chromium` and `chromium-driver` (scripts/test.sh does)";
        let Some(browser) = find_program(&["chromium", "chromium-browser"]) else {
            missing_real_part("chromium", how);
            return None;
        };
        let Some(driver) = find_program(&["chromedriver"]) else {
            missing_real_part("chromedriver", how);
            return None;
        };
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        assert!(wait_for_port(port, Duration::from_secs(20)), "chromedriver did not listen on {port}");
        Some((Self { child, url: format!("http://127.0.0.1:{port}") }, browser))
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go: `<target dir>/web-screenshots/<test>/`, printed so a person can look.
pub fn screenshot_dir(test: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    // target/<profile>/deps/<test> → target/web-screenshots
    let target = exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let dir = target.join("web-screenshots").join(test);
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    eprintln!("screenshots of {test}: {}", dir.display());
    dir
}
