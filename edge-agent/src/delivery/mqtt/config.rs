//! What the user writes about the broker: `[mqtt]` (URL, identity, TLS files, credentials,
//! telemetry period). Secrets are held in [`Secret`], whose `Debug` never shows them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::base::section::{absolutise, Invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS); several brokers (the nodes of a cluster,
    /// or a primary and its standby) as a list or comma-separated, most preferred first. Without it
    /// events stay in the local outbox until a broker is configured.
    #[serde(default)]
    pub url: Option<BrokerList>,
    /// First level of every topic.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Defaults to `edge-agent-{device_id}`; must be unique per box.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// PEM file of the CA certificate(s) that signed the broker's certificate (mqtts://).
    /// Default: the system's trusted CAs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    /// Prefer `password_file`, so the secret is not in the config file.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File whose first line is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Seconds between two `telemetry` messages; 0 turns telemetry off.
    #[serde(default = "default_telemetry_interval_secs")]
    pub telemetry_interval_secs: u64,
    /// Longest wait between two connection attempts; waits double from 1 s up to this, plus jitter.
    #[serde(default = "default_reconnect_max_secs")]
    pub reconnect_max_secs: u64,
    /// With several brokers: seconds between two checks, while on a later one, whether the first
    /// broker is back (then the agent moves back to it); 0: stay where it is until that link drops.
    #[serde(default = "default_failback_check_secs")]
    pub failback_check_secs: u64,
}

/// The value of `mqtt.url`: one URL, a comma-separated list, or a TOML array of URLs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum BrokerList {
    One(String),
    Several(Vec<String>),
}

impl BrokerList {
    /// Each URL, trimmed, in order of preference.
    pub fn urls(&self) -> Vec<&str> {
        match self {
            Self::One(text) => text.split(',').map(str::trim).collect(),
            Self::Several(urls) => urls.iter().map(|u| u.trim()).collect(),
        }
    }

    /// Every URL parsed; errors say which one and never show a password.
    pub fn parse(&self) -> Result<Vec<BrokerUrl>, String> {
        let urls = self.urls();
        if urls.is_empty() || urls.iter().all(|u| u.is_empty()) {
            return Err("is empty; expected mqtt://host:port (or several, comma-separated)".into());
        }
        if urls.len() > MAX_BROKERS {
            return Err(format!("lists {} brokers; at most {MAX_BROKERS} are supported", urls.len()));
        }
        let mut brokers: Vec<BrokerUrl> = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let broker = parse_broker_url(url).map_err(|problem| {
                if urls.len() == 1 {
                    problem
                } else {
                    format!("entry {} {problem}", i + 1)
                }
            })?;
            if brokers.contains(&broker) {
                return Err(format!("lists {} twice", broker.name()));
            }
            if brokers.first().is_some_and(|first| first.tls != broker.tls) {
                // A standby reached in plain text would let whoever blocks the TLS broker read events.
                return Err(
                    "mixes mqtt:// and mqtts://; every broker of a failover list must use the same scheme".into()
                );
            }
            brokers.push(broker);
        }
        Ok(brokers)
    }
}

impl std::fmt::Debug for BrokerList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.urls().into_iter().map(crate::base::redact::redact_userinfo).collect();
        f.debug_list().entries(shown).finish()
    }
}

/// More brokers than a cluster has nodes is a mistake, not a deployment.
pub const MAX_BROKERS: usize = 16;

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            topic_prefix: default_topic_prefix(),
            client_id: None,
            keep_alive_secs: default_keep_alive_secs(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            username: None,
            password: None,
            password_file: None,
            telemetry_interval_secs: default_telemetry_interval_secs(),
            reconnect_max_secs: default_reconnect_max_secs(),
            failback_check_secs: default_failback_check_secs(),
        }
    }
}

fn default_topic_prefix() -> String {
    "edge".into()
}

fn default_keep_alive_secs() -> u64 {
    30
}

fn default_telemetry_interval_secs() -> u64 {
    60
}

fn default_reconnect_max_secs() -> u64 {
    60
}

fn default_failback_check_secs() -> u64 {
    60
}

/// A password or similar: readable by the code that needs it, never by `Debug` (logs, panics).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Where the broker is and whether the link is TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl MqttConfig {
    /// `client_id`, or `edge-agent-{device_id}`.
    pub fn client_id(&self, device_id: &str) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("edge-agent-{device_id}"))
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.ca_file, &mut self.client_cert, &mut self.client_key, &mut self.password_file]
            .into_iter()
            .flatten()
        {
            absolutise(path, base);
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let brokers = match &self.url {
            Some(list) => list.parse().map_err(|problem| Invalid::new("mqtt.url", problem))?,
            None => Vec::new(),
        };
        if self.topic_prefix.is_empty() || self.topic_prefix.contains(['+', '#']) || self.topic_prefix.ends_with('/') {
            return Err(Invalid::new(
                "mqtt.topic_prefix",
                format!("is {:?}; expected a topic prefix without wildcards or a trailing '/'", self.topic_prefix),
            ));
        }
        let tls = brokers.first().is_some_and(|b| b.tls);
        for (key, set) in [
            ("mqtt.ca_file", self.ca_file.is_some()),
            ("mqtt.client_cert", self.client_cert.is_some()),
            ("mqtt.client_key", self.client_key.is_some()),
        ] {
            if set && !tls {
                return Err(Invalid::new(key, "is set but `mqtt.url` is not mqtts://; TLS files need an mqtts:// URL"));
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(Invalid::new(
                if self.client_cert.is_some() { "mqtt.client_key" } else { "mqtt.client_cert" },
                "is missing; mutual TLS needs both `client_cert` and `client_key`",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(Invalid::new("mqtt.password_file", "is set together with `mqtt.password`; use one of them"));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return Err(Invalid::new("mqtt.username", "is missing; a password needs a user name"));
        }
        if !(1..=3600).contains(&self.reconnect_max_secs) {
            return Err(Invalid::new(
                "mqtt.reconnect_max_secs",
                format!("is {}; expected 1 to 3600 seconds", self.reconnect_max_secs),
            ));
        }
        if self.failback_check_secs > 86_400 {
            return Err(Invalid::new(
                "mqtt.failback_check_secs",
                format!("is {}; expected 0 (never) to 86400 seconds", self.failback_check_secs),
            ));
        }
        if let Some(client_id) = &self.client_id {
            if client_id.is_empty() || client_id.len() > 128 {
                return Err(Invalid::new("mqtt.client_id", "must be 1 to 128 characters"));
            }
        }
        Ok(())
    }
}

impl BrokerUrl {
    /// Scheme, host and port: what the page, status and logs call this broker.
    pub fn name(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

/// Scheme, host and port of an `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]`
/// (default 8883) URL.
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    // Error messages quote the URL: never with a password in it.
    let shown = crate::base::redact::redact_userinfo(url);
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!("is {shown:?}; expected mqtt://host:port or mqtts://host:port"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                if url.contains('@') {
                    format!("is {shown:?}; expected mqtt://host:port, credentials go in `username` and `password`")
                } else {
                    format!("is {shown:?}; the port {port:?} is not a number from 1 to 65535")
                }
            })?;
            (host, port)
        }
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains(['/', '@']) {
        return Err(format!("is {shown:?}; expected mqtt://host:port with a host name (credentials go in `username`)"));
    }
    Ok(BrokerUrl { tls, host: host.to_string(), port })
}

/// Host and port of an `mqtt://` or `mqtts://` URL.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    parse_broker_url(url).map(|b| (b.host, b.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(parse_mqtt_url("mqtt://broker").unwrap(), ("broker".into(), 1883));
        assert_eq!(parse_mqtt_url("mqtt://127.0.0.1:18830").unwrap(), ("127.0.0.1".into(), 18830));
        assert!(parse_mqtt_url("mqtt://broker:99999").is_err());
        assert!(parse_mqtt_url("http://broker").is_err());
        assert_eq!(
            parse_broker_url("mqtts://broker").unwrap(),
            BrokerUrl { tls: true, host: "broker".into(), port: 8883 }
        );
        assert!(parse_broker_url("mqtts://user:pw@broker").is_err());
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let config: MqttConfig =
            toml::from_str("url = \"mqtts://b\"\nusername = \"box\"\npassword = \"hunter2-very-secret\"\n").unwrap();
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert_eq!(config.password.unwrap().expose(), "hunter2-very-secret");
    }

    #[test]
    fn tls_files_need_an_mqtts_url_and_come_in_pairs() {
        let parse = |text: &str| toml::from_str::<MqttConfig>(text).unwrap().validate();
        let err = parse("url = \"mqtt://b\"\nca_file = \"ca.pem\"\n").unwrap_err();
        assert_eq!(err.key, "mqtt.ca_file");
        let err = parse("url = \"mqtts://b\"\nclient_cert = \"c.pem\"\n").unwrap_err();
        assert_eq!(err.key, "mqtt.client_key");
        let err = parse("url = \"mqtts://b\"\npassword = \"x\"\n").unwrap_err();
        assert_eq!(err.key, "mqtt.username");
        assert!(parse("url = \"mqtts://b\"\nca_file = \"ca.pem\"\nclient_cert = \"c\"\nclient_key = \"k\"\n").is_ok());
    }

    #[test]
    fn several_brokers_come_as_a_list_or_comma_separated() {
        let parse = |text: &str| toml::from_str::<MqttConfig>(text).unwrap();
        let listed = parse("url = [\"mqtt://a:1\", \"mqtt://b\"]\n");
        let commas = parse("url = \"mqtt://a:1, mqtt://b\"\n");
        for config in [listed, commas] {
            config.validate().unwrap();
            let names: Vec<String> = config.url.unwrap().parse().unwrap().iter().map(BrokerUrl::name).collect();
            assert_eq!(names, ["mqtt://a:1", "mqtt://b:1883"]);
        }
        let one = parse("url = \"mqtts://c\"\n").url.unwrap().parse().unwrap();
        assert_eq!(one, [BrokerUrl { tls: true, host: "c".into(), port: 8883 }]);
    }

    #[test]
    fn a_broken_broker_list_names_the_entry_and_the_problem() {
        let invalid = |text: &str| toml::from_str::<MqttConfig>(text).unwrap().validate().unwrap_err();
        let err = invalid("url = \"mqtt://a, http://b\"\n");
        assert_eq!(err.key, "mqtt.url");
        assert!(err.problem.contains("entry 2") && err.problem.contains("http://b"), "{err:?}");
        let err = invalid("url = [\"mqtts://a\", \"mqtt://b\"]\n");
        assert!(err.problem.contains("mixes mqtt:// and mqtts://"), "{err:?}");
        let err = invalid("url = \"mqtt://a, mqtt://a:1883\"\n");
        assert!(err.problem.contains("twice"), "{err:?}");
        let err = invalid("url = []\n");
        assert!(err.problem.contains("empty"), "{err:?}");
        let err = invalid("url = \"mqtt://a, mqtt://u:s3cret@b\"\n");
        assert!(!err.problem.contains("s3cret") && err.problem.contains("entry 2"), "{err:?}");
        assert!(toml::from_str::<MqttConfig>("url = 7\n").is_err());
    }

    #[test]
    fn a_broker_url_with_a_password_is_refused_without_showing_it() {
        for url in ["mqtt://user:s3cret@broker:1883", "mqtt://user:s3cret@broker"] {
            let err = super::parse_broker_url(url).err().unwrap();
            assert!(!err.contains("s3cret") && err.contains("username"), "{err}");
        }
    }
}
