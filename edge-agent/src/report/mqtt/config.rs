//! What the user writes about the broker: `[mqtt]`.

use serde::Deserialize;

use crate::config::Invalid;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port`. Without it events stay in the local outbox until a broker is configured.
    #[serde(default)]
    pub url: Option<String>,
    /// First level of every topic.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Defaults to `edge-agent-{device_id}`; must be unique per box.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            topic_prefix: default_topic_prefix(),
            client_id: None,
            keep_alive_secs: default_keep_alive_secs(),
        }
    }
}

fn default_topic_prefix() -> String {
    "edge".into()
}

fn default_keep_alive_secs() -> u64 {
    30
}

impl MqttConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(url) = &self.url {
            parse_mqtt_url(url).map_err(|problem| Invalid::new("mqtt.url", problem))?;
        }
        if self.topic_prefix.is_empty() || self.topic_prefix.contains(['+', '#']) || self.topic_prefix.ends_with('/') {
            return Err(Invalid::new(
                "mqtt.topic_prefix",
                format!("is {:?}; expected a topic prefix without wildcards or a trailing '/'", self.topic_prefix),
            ));
        }
        Ok(())
    }
}

/// Host and port of an `mqtt://host[:port]` URL.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("is {url:?}; expected mqtt://host:port (mqtts:// is not supported yet)"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("is {url:?}; the port {port:?} is not a number from 1 to 65535"))?;
            (host, port)
        }
        None => (rest, 1883),
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("is {url:?}; expected mqtt://host:port with a host name"));
    }
    Ok((host.to_string(), port))
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
    }
}
