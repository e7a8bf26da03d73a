//! Reaching the boxes' broker as the platform: the URL, credentials and TLS files of the command
//! line turned into an MQTT client (the agent's own URL parser and rustls setup), and the topics
//! of docs/asyncapi.yaml split into box and rest.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use edge_agent::delivery::mqtt::config::parse_broker_url;
use edge_agent::delivery::mqtt::tls::{TlsClient, TlsFiles};
use rumqttc::{MqttOptions, Transport};

/// How to reach the broker; the same flags for `command` and `watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// mqtt://host[:port] or mqtts://host[:port]
    #[arg(long)]
    pub broker: String,
    /// The platform's broker user (the ACL of docs/SECURITY.md lets it read edge/# and write commands).
    #[arg(long)]
    pub username: Option<String>,
    /// A file whose first line is the password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// The CA that signed the broker's certificate (mqtts://); the system's CAs otherwise.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key for mutual TLS.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The boxes' `mqtt.topic_prefix`.
    #[arg(long, default_value = "edge")]
    pub prefix: String,
}

impl BrokerArgs {
    /// Options for one client of the platform. `persistent`: a session the broker keeps while the
    /// client is away (what `watch` needs to miss nothing), else a clean one.
    pub fn options(&self, client_id: &str, persistent: bool) -> Result<MqttOptions> {
        let url = parse_broker_url(&self.broker).map_err(|e| anyhow::anyhow!("--broker {e}"))?;
        let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(!persistent);
        // Evidence pictures are up to a few hundred KB; the boxes read at most 16 MiB too.
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        if let Some(user) = &self.username {
            let password = match &self.password_file {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(path).with_context(|| format!("--password-file {}", path.display()))?;
                    text.lines().next().unwrap_or_default().trim_end_matches('\r').to_string()
                }
                None => String::new(),
            };
            options.set_credentials(user.clone(), password);
        } else if self.password_file.is_some() {
            bail!("--password-file needs --username");
        }
        if url.tls {
            let tls = TlsClient::build(TlsFiles {
                ca_file: self.ca_file.clone(),
                client_cert: self.client_cert.clone(),
                client_key: self.client_key.clone(),
            })
            .map_err(|e| anyhow::anyhow!("TLS for --broker: {e}"))?;
            options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.config)));
        } else if self.ca_file.is_some() || self.client_cert.is_some() {
            bail!("--ca-file and --client-cert need an mqtts:// broker");
        }
        Ok(options)
    }

    /// A topic filter under the prefix: `{prefix}/{rest}`.
    pub fn filter(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    /// The topic of `suffix` on one box.
    pub fn topic(&self, device: &str, suffix: &str) -> String {
        format!("{}/{device}/{suffix}", self.prefix)
    }

    /// (device, the rest) of a topic under the prefix.
    pub fn split<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        split_topic(&self.prefix, topic)
    }
}

/// (device, the rest) of `{prefix}/{device}/{rest}`.
pub fn split_topic<'t>(prefix: &str, topic: &'t str) -> Option<(&'t str, &'t str)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (device, rest) = rest.split_once('/')?;
    (!device.is_empty()).then_some((device, rest))
}

/// A client id of this tool: its role and a fresh suffix, so two runs never take each other's session.
pub fn fresh_client_id(role: &str) -> String {
    format!("edge-platform-{role}-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// "90", "90s", "5m", "2h", "500ms": a duration on the command line.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 5m or 2h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?} has unit {unit:?}; expected ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_split_into_box_and_rest_under_the_prefix_only() {
        assert_eq!(split_topic("edge", "edge/box-1/events"), Some(("box-1", "events")));
        assert_eq!(split_topic("edge", "edge/box-1/cameras/gate/health"), Some(("box-1", "cameras/gate/health")));
        assert_eq!(split_topic("city/edge", "city/edge/b/status"), Some(("b", "status")));
        assert_eq!(split_topic("edge", "edgy/box-1/events"), None);
        assert_eq!(split_topic("edge", "edge//events"), None);
        assert_eq!(split_topic("edge", "edge/box-1"), None);
    }

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("m").is_err());
    }
}
