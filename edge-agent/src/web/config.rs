//! What the user writes about the web page: `[web]` — where it listens, who may log in (argon2
//! password hashes from `edge-agent passwd`), who may scrape `/metrics`, and optional HTTPS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use argon2::password_hash::PasswordHash;
use serde::{Deserialize, Serialize};

use crate::base::section::{absolutise, Invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address of the status page and JSON API. Loopback by default: the LAN is an explicit choice.
    #[serde(default = "default_web_listen")]
    pub listen: String,
    /// Set false to run without the web page.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may log in. Empty (the default) is allowed only on a loopback address, where the page
    /// is then open to the machine's own users without a login.
    #[serde(default)]
    pub users: Vec<WebUser>,
    /// Bearer token that Prometheus presents to `/metrics` (and nothing else).
    #[serde(default)]
    pub metrics_token: Option<String>,
    /// Serve `/metrics` to anyone who can reach the port.
    #[serde(default)]
    pub metrics_public: bool,
    /// Serve HTTPS instead of HTTP (rustls). Without `tls_cert`/`tls_key`, a self-signed certificate
    /// is made on first start and kept in `state_dir/web-tls/`.
    #[serde(default)]
    pub https: bool,
    /// PEM certificate chain for HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// A login lasts this long without use.
    #[serde(default = "default_session_idle_minutes")]
    pub session_idle_minutes: u64,
    /// Failed logins allowed per client address within `login_lockout_secs` before it is locked out
    /// for the rest of that window.
    #[serde(default = "default_login_attempts")]
    pub login_attempts: u32,
    #[serde(default = "default_login_lockout_secs")]
    pub login_lockout_secs: u64,
}

/// One person who may log in: `{ name = "li", password_hash = "$argon2id$...", role = "admin" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebUser {
    pub name: String,
    pub password_hash: String,
    pub role: Role,
}

/// Viewers look; admins also change things (acknowledge events, see the configuration, and the
/// installer tools once they exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Admin,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: default_web_listen(),
            enabled: true,
            users: Vec::new(),
            metrics_token: None,
            metrics_public: false,
            https: false,
            tls_cert: None,
            tls_key: None,
            session_idle_minutes: default_session_idle_minutes(),
            login_attempts: default_login_attempts(),
            login_lockout_secs: default_login_lockout_secs(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_web_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_session_idle_minutes() -> u64 {
    12 * 60
}

fn default_login_attempts() -> u32 {
    5
}

fn default_login_lockout_secs() -> u64 {
    300
}

/// Shortest bearer token accepted for `/metrics`: guessing it must be hopeless.
const MIN_METRICS_TOKEN_LEN: usize = 16;

impl WebConfig {
    pub fn listen_address(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// No users on a loopback address: the page is open to this machine (the embedded demo).
    pub fn is_open_on_loopback(&self) -> bool {
        self.users.is_empty() && self.listen_address().is_some_and(|a| a.ip().is_loopback())
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.tls_cert, &mut self.tls_key].into_iter().flatten() {
            absolutise(path, base);
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let listen = match self.listen.parse::<SocketAddr>() {
            Ok(listen) => listen,
            Err(e) => {
                return Err(Invalid::new(
                    "web.listen",
                    format!("is {:?}; expected address:port such as 127.0.0.1:8080 ({e})", self.listen),
                ))
            }
        };
        if self.enabled && self.users.is_empty() && !listen.ip().is_loopback() {
            return Err(Invalid::new(
                "web.users",
                format!(
                    "is empty while `web.listen` {} serves the network; add a user \
                     (`edge-agent passwd` prints a password hash) or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let key = format!("web.users[{i}]");
            if user.name.is_empty()
                || user.name.len() > 64
                || !user.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
            {
                return Err(Invalid::new(
                    format!("{key}.name"),
                    format!("is {:?}; expected 1 to 64 letters, digits or . _ - @", user.name),
                ));
            }
            if !names.insert(user.name.as_str()) {
                return Err(Invalid::new(format!("{key}.name"), format!("{:?} is used twice", user.name)));
            }
            if let Err(problem) = check_password_hash(&user.password_hash) {
                return Err(Invalid::new(
                    format!("{key}.password_hash"),
                    format!("{problem}; expected an argon2 hash as printed by `edge-agent passwd`"),
                ));
            }
        }
        if let Some(token) = &self.metrics_token {
            if token.trim().len() < MIN_METRICS_TOKEN_LEN {
                return Err(Invalid::new(
                    "web.metrics_token",
                    format!("is too short; expected at least {MIN_METRICS_TOKEN_LEN} characters"),
                ));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(Invalid::new("web.tls_key", "is missing; `web.tls_cert` needs its key")),
            (None, Some(_)) => {
                return Err(Invalid::new("web.tls_cert", "is missing; `web.tls_key` needs its certificate"))
            }
            (Some(_), Some(_)) if !self.https => {
                return Err(Invalid::new("web.https", "is false while `web.tls_cert` is set; set `https = true`"))
            }
            _ => {}
        }
        if !(1..=7 * 24 * 60).contains(&self.session_idle_minutes) {
            return Err(Invalid::new(
                "web.session_idle_minutes",
                format!("is {}; expected 1 to 10080 (a week)", self.session_idle_minutes),
            ));
        }
        if !(1..=100).contains(&self.login_attempts) {
            return Err(Invalid::new("web.login_attempts", format!("is {}; expected 1 to 100", self.login_attempts)));
        }
        if !(1..=86_400).contains(&self.login_lockout_secs) {
            return Err(Invalid::new(
                "web.login_lockout_secs",
                format!("is {}; expected 1 to 86400 seconds", self.login_lockout_secs),
            ));
        }
        Ok(())
    }
}

/// Whether a config value is an argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("is not a password hash ({e})"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!("uses {}, not argon2", parsed.algorithm));
    }
    if parsed.hash.is_none() {
        return Err("has no hash part".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, Invalid> {
        let config: WebConfig = toml::from_str(text).map_err(|e| Invalid::new("toml", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn no_users_on_loopback_is_the_open_demo() {
        let config = parse("").unwrap();
        assert!(config.is_open_on_loopback());
    }

    #[test]
    fn the_lan_without_users_is_refused_naming_the_key() {
        let err = parse("listen = \"0.0.0.0:8080\"\n").unwrap_err();
        assert_eq!(err.key, "web.users");
        assert!(err.problem.contains("edge-agent passwd"), "{}", err.problem);
    }

    #[test]
    fn a_user_with_a_plain_password_is_refused() {
        let err = parse("users = [{ name = \"li\", password_hash = \"secret\", role = \"admin\" }]\n").unwrap_err();
        assert_eq!(err.key, "web.users[0].password_hash");
    }

    #[test]
    fn an_unknown_role_is_refused() {
        let err = parse("users = [{ name = \"li\", password_hash = \"x\", role = \"root\" }]\n").unwrap_err();
        assert!(err.problem.contains("viewer") && err.problem.contains("admin"), "{}", err.problem);
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let err = parse("https = true\ntls_cert = \"cert.pem\"\n").unwrap_err();
        assert_eq!(err.key, "web.tls_key");
    }

    #[test]
    fn plain_text_and_other_algorithms_are_not_password_hashes() {
        assert!(check_password_hash("hunter2").is_err());
        let err = check_password_hash("$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA").unwrap_err();
        assert!(err.contains("pbkdf2"), "{err}");
    }

    #[test]
    fn a_short_metrics_token_is_refused() {
        assert_eq!(parse("metrics_token = \"abc\"\n").unwrap_err().key, "web.metrics_token");
    }
}
