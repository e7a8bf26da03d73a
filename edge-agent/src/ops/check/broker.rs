//! The broker: connects as the agent does (URL, TLS files, user name and password file) but under its
//! own client id, so a running agent is not thrown off; publishes one QoS 1 test message on
//! `{prefix}/{device}/check` and waits for its PUBACK; and asks for the agent's command subscription,
//! since a broker that refuses it leaves the box deaf to commands.

use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode,
};
use serde_json::json;

use super::{ConfigName, Finding, Outcome};
use crate::config::Config;
use crate::delivery::mqtt::{describe_connection_error, BrokerUrl, MqttSettings, MqttSetupError};

/// Version of the check message's JSON (docs/schemas/check.schema.json).
pub const CHECK_SCHEMA_VERSION: u32 = 1;

const CHECK: &str = "broker";

/// What the broker did with the test message.
#[derive(Debug)]
struct Delivery {
    acknowledged_after: Duration,
    commands_granted: bool,
}

#[derive(Debug)]
enum Failure {
    Connection(ConnectionError),
    Client(rumqttc::ClientError),
}

/// One finding per configured broker (`broker`, or `broker 2 of 3` with a failover list). With
/// several brokers, one that fails while another passes is a warning: the box still reports.
pub async fn check_broker(config: &Config, name: &ConfigName, timeout: Duration) -> Vec<Finding> {
    let settings = match MqttSettings::from_config(&config.mqtt, &config.device_id) {
        Ok(None) => {
            return vec![Finding::skipped(
                CHECK,
                "(no mqtt.url) events stay in the local outbox until a broker is configured",
            )]
        }
        Ok(Some(settings)) => settings,
        Err(error) => return vec![Finding::fail(CHECK, error.to_string(), setup_fix(&error, name))],
    };
    let checks = settings.brokers.iter().map(|broker| check_one(&settings, broker, name, timeout));
    failover_findings(futures::future::join_all(checks).await)
}

/// Names each broker's finding by its place in the list; with several brokers, one that fails
/// while another answers is a warning, since the box still reports.
fn failover_findings(mut findings: Vec<Finding>) -> Vec<Finding> {
    let count = findings.len();
    if count < 2 {
        return findings;
    }
    let any_answered = findings.iter().any(|f| f.outcome != Outcome::Fail);
    for (i, finding) in findings.iter_mut().enumerate() {
        finding.check = format!("{CHECK} {} of {count}", i + 1);
        if any_answered && finding.outcome == Outcome::Fail {
            finding.outcome = Outcome::Warn;
            finding.detail.push_str(" (the box fails over to the other brokers)");
        }
    }
    findings
}

async fn check_one(settings: &MqttSettings, broker: &BrokerUrl, name: &ConfigName, timeout: Duration) -> Finding {
    let topic = settings.topic("check");
    let broker_url = broker;
    let broker = broker.name();
    let delivery = match tokio::time::timeout(timeout, publish_test_message(settings, broker_url, &topic)).await {
        Err(_) => {
            return Finding::fail(
                CHECK,
                format!(
                    "broker {broker} did not acknowledge a test message on {topic} within {} s",
                    timeout.as_secs_f64()
                ),
                format!(
                    "check {} and that the broker is reachable from this box (network, firewall)",
                    name.key("mqtt.url")
                ),
            )
        }
        Ok(Err(Failure::Connection(error))) => {
            return Finding::fail(
                CHECK,
                describe_connection_error(&error, &broker, settings),
                connection_fix(&error, name),
            )
        }
        Ok(Err(Failure::Client(error))) => {
            return Finding::fail(CHECK, format!("cannot publish to {topic}: {error}"), "report this as a bug")
        }
        Ok(Ok(delivery)) => delivery,
    };
    let mut how = Vec::new();
    if let Some(tls) = &settings.tls {
        match &tls.files.ca_file {
            Some(ca) => how.push(format!("TLS, CA {}", ca.display())),
            None => how.push("TLS, system CAs".to_string()),
        }
        if tls.files.client_cert.is_some() {
            how.push("client certificate".to_string());
        }
    }
    if let Some((user, _)) = &settings.credentials {
        how.push(format!("user {user}"));
    }
    let how = if how.is_empty() { String::new() } else { format!(" ({})", how.join(", ")) };
    let seen = format!(
        "{broker}{how}: test message on {topic} acknowledged (QoS 1) in {} ms",
        delivery.acknowledged_after.as_millis()
    );
    let commands = settings.command_filter();
    if !delivery.commands_granted {
        return Finding::warn(
            CHECK,
            format!("{seen}, but the broker refused the subscription to {commands}: commands will not reach the box"),
            format!("let the box's user ({}) subscribe to {commands} in the broker's ACL", name.key("mqtt.username")),
        );
    }
    Finding::pass(CHECK, format!("{seen}; subscription to {commands} granted"))
}

/// The test message: who sent it and when; the platform may ignore it.
pub fn test_message(settings: &MqttSettings) -> serde_json::Value {
    json!({
        "schema_version": CHECK_SCHEMA_VERSION,
        "device": settings.device_id,
        "time": chrono::Utc::now(),
        "version": env!("CARGO_PKG_VERSION"),
        "message": "test message from `edge-agent check`; nothing to do",
    })
}

async fn publish_test_message(settings: &MqttSettings, broker: &BrokerUrl, topic: &str) -> Result<Delivery, Failure> {
    // Its own id: a broker drops an older connection with the same id, which would be the agent's.
    let mut options = MqttOptions::new(format!("{}-check", settings.client_id), broker.host.clone(), broker.port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(true);
    if let Some((user, password)) = &settings.credentials {
        options.set_credentials(user.clone(), password.expose().to_string());
    }
    if let Some(tls) = &settings.tls {
        options
            .set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.config.clone())));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let started = Instant::now();
    let (mut acknowledged_after, mut commands_granted) = (None, None);
    loop {
        match eventloop.poll().await.map_err(Failure::Connection)? {
            Event::Incoming(Packet::ConnAck(_)) => {
                let payload = test_message(settings).to_string();
                client.try_publish(topic, QoS::AtLeastOnce, false, payload).map_err(Failure::Client)?;
                client.try_subscribe(settings.command_filter(), QoS::AtLeastOnce).map_err(Failure::Client)?;
            }
            Event::Incoming(Packet::PubAck(_)) => acknowledged_after = Some(started.elapsed()),
            Event::Incoming(Packet::SubAck(ack)) => {
                commands_granted = Some(!ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)));
            }
            _ => {}
        }
        if let (Some(acknowledged_after), Some(commands_granted)) = (acknowledged_after, commands_granted) {
            let _ = client.try_disconnect();
            let goodbye = async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
            return Ok(Delivery { acknowledged_after, commands_granted });
        }
    }
}

/// What to change when the broker settings cannot even be built.
pub fn setup_fix(error: &MqttSetupError, name: &ConfigName) -> String {
    match error {
        MqttSetupError::Url(_) => format!("set {} to mqtt://host:port or mqtts://host:port", name.key("mqtt.url")),
        MqttSetupError::Tls(crate::delivery::mqtt::tls::TlsSetupError::File { key, path, .. }) => {
            format!("correct {}: {} must be a readable PEM file", name.key(key), path.display())
        }
        MqttSetupError::Tls(_) => format!(
            "set {} to the PEM certificate of the CA that signed the broker's certificate",
            name.key("mqtt.ca_file")
        ),
        MqttSetupError::PasswordFile { path, .. } => format!(
            "put the password on the first line of {}, or correct {}",
            path.display(),
            name.key("mqtt.password_file")
        ),
    }
}

/// What to change when the broker could not be reached or refused us.
pub fn connection_fix(error: &ConnectionError, name: &ConfigName) -> String {
    match error {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => format!(
            "check {} and `mqtt.password_file` (or `mqtt.password`) against the broker's users",
            name.key("mqtt.username")
        ),
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => {
            format!("set {} to an id the broker accepts", name.key("mqtt.client_id"))
        }
        ConnectionError::ConnectionRefused(_) => {
            format!("check the broker's log and the settings under [mqtt] in {name}")
        }
        ConnectionError::Tls(_) => format!(
            "check {} (the CA that signed the broker's certificate), `mqtt.client_cert` and `mqtt.client_key` \
             for mutual TLS, that the host in `mqtt.url` is a name the broker's certificate holds, and the clock",
            name.key("mqtt.ca_file")
        ),
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("check the host and port in {} and that the broker is running there", name.key("mqtt.url"))
        }
        _ => {
            format!("check {} and that the broker is reachable from this box (network, firewall)", name.key("mqtt.url"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn name() -> ConfigName {
        ConfigName::new(Some(Path::new("site.toml")))
    }

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    #[tokio::test]
    async fn no_broker_url_is_skipped_not_failed() {
        let [finding] = check_broker(&config(""), &name(), Duration::from_secs(1)).await.try_into().unwrap();
        assert_eq!(finding.outcome, Outcome::Skipped);
        assert!(finding.detail.starts_with("(no mqtt.url)"), "{finding:?}");
    }

    #[tokio::test]
    async fn a_closed_port_fails_naming_the_url_key() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = config(&format!("device_id = \"box-1\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n"));
        let [finding] = check_broker(&config, &name(), Duration::from_secs(5)).await.try_into().unwrap();
        assert_eq!(finding.outcome, Outcome::Fail);
        assert!(finding.detail.contains(&format!("mqtt://127.0.0.1:{port}")), "{finding:?}");
        assert!(finding.detail.contains("connection refused"), "{finding:?}");
        assert!(finding.fix.unwrap().contains("`mqtt.url` in site.toml"));
    }

    #[tokio::test]
    async fn a_missing_ca_file_fails_naming_the_key_and_file() {
        let config = config("[mqtt]\nurl = \"mqtts://127.0.0.1:8883\"\nca_file = \"/nonexistent/ca.pem\"\n");
        let [finding] = check_broker(&config, &name(), Duration::from_secs(1)).await.try_into().unwrap();
        assert_eq!(finding.outcome, Outcome::Fail);
        assert!(finding.detail.contains("mqtt.ca_file") && finding.detail.contains("/nonexistent/ca.pem"));
        assert!(finding.fix.unwrap().contains("`mqtt.ca_file` in site.toml"));
    }

    #[tokio::test]
    async fn with_a_failover_list_each_broker_is_checked() {
        let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listening.local_addr().unwrap().port();
        drop(listening);
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = config(&format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{closed}, mqtt://127.0.0.1:{other}\"\n"));
        let findings = check_broker(&config, &name(), Duration::from_secs(5)).await;
        let checks: Vec<&str> = findings.iter().map(|f| f.check.as_str()).collect();
        assert_eq!(checks, ["broker 1 of 2", "broker 2 of 2"]);
        // Both ports are closed here: no broker answers, so both are failures.
        assert!(findings.iter().all(|f| f.outcome == Outcome::Fail), "{findings:?}");
        assert!(findings[1].detail.contains(&format!("127.0.0.1:{other}")), "{findings:?}");
    }

    #[test]
    fn one_broker_down_of_a_failover_list_is_a_warning_all_down_a_failure() {
        let up = || Finding::pass(CHECK, "mqtt://a:1883: acknowledged");
        let down = || Finding::fail(CHECK, "cannot reach broker mqtt://b:1883", "check `mqtt.url`");
        let one_down = failover_findings(vec![up(), down()]);
        assert_eq!(one_down[1].outcome, Outcome::Warn);
        assert!(one_down[1].detail.contains("fails over"), "{one_down:?}");
        let all_down = failover_findings(vec![down(), down()]);
        assert!(all_down.iter().all(|f| f.outcome == Outcome::Fail));
        let single = failover_findings(vec![down()]);
        assert_eq!((single[0].check.as_str(), single[0].outcome), (CHECK, Outcome::Fail));
    }

    #[test]
    fn refused_credentials_point_at_the_user_name_and_password_file() {
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        let fix = connection_fix(&refused, &name());
        assert!(fix.contains("`mqtt.username` in site.toml") && fix.contains("mqtt.password_file"), "{fix}");
    }
}
