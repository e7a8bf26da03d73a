//! MQTT link to the platform: drains the outbox to the broker with QoS 1 and removes a message only
//! after its PUBACK; says `online` (retained status) on every connect, `stopped` on a clean exit,
//! and leaves `offline` as last will; sends telemetry every N seconds; receives commands on
//! `cmd/+` and hands them to the command task.
//!
//! The bookkeeping (which packet id carries which outbox message) lives in [`InflightTracker`],
//! apart from the socket loop, so it is tested without a broker. Each connection gets a fresh
//! rumqttc event loop: after a drop, whatever was unacknowledged is simply read again from the
//! outbox, oldest first, so the outbox is the only source of truth. The MQTT session itself is
//! persistent (clean session off), so commands sent while the box was away are delivered on return.
//!
//! With several brokers in `mqtt.url` the link fails over: a connection that fails or drops moves
//! to the next broker in the list (after the same backoff), and while on a later broker a TCP probe
//! every `failback_check_secs` looks whether the first one is back; then the agent says `moved` on
//! the broker it leaves and reconnects to the first. Which broker to try is [`BrokerRotation`]'s
//! job, apart from the socket loop. Nothing is lost in a move: what was not acknowledged is read
//! again from the outbox (the platform may see a message twice, with the same id and revision).

pub mod config;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;
use tokio::sync::{mpsc, Notify};

use super::board::StatusBoard;
use super::camera_health::CameraHealthReport;
use super::outbox::Outbox;
use super::telemetry::TelemetrySampler;
use crate::base::backoff::Backoff;
use crate::base::shutdown::Shutdown;
use config::MqttConfig;
pub use config::{BrokerUrl, Secret};
use tls::{TlsClient, TlsFiles, TlsSetupError};

/// Outbox messages published but not yet acknowledged, at most; below rumqttc's in-flight limit.
const WINDOW: usize = 256;
/// rumqttc's limit of unacknowledged outgoing packets: the window plus status, acks, subscribe.
const CLIENT_INFLIGHT: u16 = 320;
/// Acknowledged ids are removed from the outbox in batches: one fsync per batch, not per message.
const ACK_BATCH: usize = 512;
const ACK_FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Version of the status JSON; bump when a field changes meaning or goes away.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    #[error("`mqtt.url` {0}")]
    Url(String),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("`mqtt.password_file` {path}: {problem}")]
    PasswordFile { path: std::path::PathBuf, problem: String },
}

/// Everything the publisher needs to reach the broker. `Debug` never shows the password or keys.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Most preferred first; all of one scheme (TLS or not).
    pub brokers: Vec<BrokerUrl>,
    pub client_id: String,
    pub topic_prefix: String,
    pub device_id: String,
    pub keep_alive: Duration,
    pub tls: Option<TlsClient>,
    pub credentials: Option<(String, Secret)>,
    /// None: no telemetry.
    pub telemetry_interval: Option<Duration>,
    /// Cap of the reconnect backoff.
    pub reconnect_max: Duration,
    /// While on a later broker, how often to look whether the first one is back; None: never.
    pub failback_check: Option<Duration>,
}

/// A command as it came from the broker (`cmd/{name}`), before anyone has looked at it: the
/// control room parses, authorises and answers it.
#[derive(Debug, Clone)]
pub struct IncomingCommand {
    pub name: String,
    pub payload: Vec<u8>,
}

impl MqttSettings {
    /// The broker settings of a config, with TLS files and password file read; None without
    /// `mqtt.url`.
    pub fn from_config(mqtt: &MqttConfig, device_id: &str) -> Result<Option<Self>, MqttSetupError> {
        let Some(list) = &mqtt.url else {
            return Ok(None);
        };
        let brokers = list.parse().map_err(MqttSetupError::Url)?;
        let tls = if brokers.iter().any(|b| b.tls) {
            Some(TlsClient::build(TlsFiles {
                ca_file: mqtt.ca_file.clone(),
                client_cert: mqtt.client_cert.clone(),
                client_key: mqtt.client_key.clone(),
            })?)
        } else {
            None
        };
        let password = match (&mqtt.password, &mqtt.password_file) {
            (Some(password), _) => Some(password.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| MqttSetupError::PasswordFile {
                    path: path.clone(),
                    problem: format!("cannot read: {e}"),
                })?;
                let line = text.lines().next().unwrap_or_default().trim_end_matches('\r').to_string();
                if line.is_empty() {
                    return Err(MqttSetupError::PasswordFile {
                        path: path.clone(),
                        problem: "is empty; expected the password on its first line".into(),
                    });
                }
                Some(Secret::new(line))
            }
            (None, None) => None,
        };
        let credentials =
            mqtt.username.clone().map(|user| (user, password.unwrap_or_else(|| Secret::new(String::new()))));
        Ok(Some(Self {
            brokers,
            client_id: mqtt.client_id(device_id),
            topic_prefix: mqtt.topic_prefix.clone(),
            device_id: device_id.to_string(),
            keep_alive: Duration::from_secs(mqtt.keep_alive_secs.max(5)),
            tls,
            credentials,
            telemetry_interval: (mqtt.telemetry_interval_secs > 0)
                .then(|| Duration::from_secs(mqtt.telemetry_interval_secs)),
            reconnect_max: Duration::from_secs(mqtt.reconnect_max_secs),
            failback_check: (mqtt.failback_check_secs > 0).then(|| Duration::from_secs(mqtt.failback_check_secs)),
        }))
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}/{}/{}", self.topic_prefix, self.device_id, suffix)
    }

    /// Settings for one broker at `host:port` (tests, benchmarks, the fleet harness).
    pub fn single(host: &str, port: u16, device_id: &str) -> Self {
        Self {
            brokers: vec![BrokerUrl { tls: false, host: host.to_string(), port }],
            client_id: format!("edge-agent-{device_id}"),
            topic_prefix: "edge".into(),
            device_id: device_id.to_string(),
            keep_alive: Duration::from_secs(30),
            tls: None,
            credentials: None,
            telemetry_interval: None,
            reconnect_max: Duration::from_secs(60),
            failback_check: None,
        }
    }

    /// What the page and logs call the configured brokers: scheme, host and port of each, never
    /// credentials.
    pub fn broker(&self) -> String {
        self.broker_names().join(", ")
    }

    pub fn broker_names(&self) -> Vec<String> {
        self.brokers.iter().map(BrokerUrl::name).collect()
    }

    /// The filter the agent subscribes to for commands.
    pub fn command_filter(&self) -> String {
        self.topic("cmd/+")
    }

    /// The command name of a topic `{prefix}/{device}/cmd/{name}`.
    pub fn command_name<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic.strip_prefix(&self.topic_prefix)?.strip_prefix('/')?;
        let rest = rest.strip_prefix(&self.device_id)?.strip_prefix("/cmd/")?;
        (!rest.is_empty() && !rest.contains('/')).then_some(rest)
    }
}

/// What a published packet carries, so its PUBACK can be matched to an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishTag {
    Outbox(u64),
    Status,
    Telemetry,
}

/// Matches publish requests to packet ids (rumqttc reports `Outgoing::Publish(pkid)` in request
/// order) and PUBACKs back to what they acknowledge.
#[derive(Debug, Default)]
pub struct InflightTracker {
    awaiting_pkid: VecDeque<PublishTag>,
    by_pkid: HashMap<u16, PublishTag>,
    /// Highest outbox id handed to the client on this connection.
    pub cursor: u64,
}

impl InflightTracker {
    pub fn submitted(&mut self, tag: PublishTag) {
        if let PublishTag::Outbox(id) = tag {
            self.cursor = self.cursor.max(id);
        }
        self.awaiting_pkid.push_back(tag);
    }

    pub fn sent(&mut self, pkid: u16) {
        if let Some(tag) = self.awaiting_pkid.pop_front() {
            // pkid 0 is QoS 0: nothing will acknowledge it.
            if pkid != 0 {
                self.by_pkid.insert(pkid, tag);
            }
        }
    }

    pub fn acknowledged(&mut self, pkid: u16) -> Option<PublishTag> {
        self.by_pkid.remove(&pkid)
    }

    pub fn outbox_in_flight(&self) -> usize {
        self.awaiting_pkid.iter().chain(self.by_pkid.values()).filter(|t| matches!(t, PublishTag::Outbox(_))).count()
    }
}

/// Turns rumqttc's connection errors with `broker` into words that say what to check.
pub fn describe_connection_error(error: &ConnectionError, broker: &str, settings: &MqttSettings) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => format!(
                "broker {broker} refused the user name or password (check `mqtt.username` and `mqtt.password_file`)"
            ),
            ConnectReturnCode::NotAuthorized => format!(
                "broker {broker} refused the connection as not authorised (check `mqtt.username`, \
                 `mqtt.password_file` and the client certificate)"
            ),
            ConnectReturnCode::BadClientId => {
                format!("broker {broker} refused client id {:?} (check `mqtt.client_id`)", settings.client_id)
            }
            other => format!("broker {broker} refused the connection: {other:?}"),
        },
        ConnectionError::Tls(e) => {
            format!(
                "TLS handshake with {broker} failed: {e} (check `mqtt.ca_file`, `mqtt.client_cert`, `mqtt.client_key`)"
            )
        }
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("cannot reach broker {broker}: connection refused (is it running? check `mqtt.url`)")
        }
        ConnectionError::Io(e) => format!("connection to broker {broker} failed: {e}"),
        ConnectionError::NetworkTimeout => format!("broker {broker} did not answer in time"),
        other => format!("connection to broker {broker} failed: {other}"),
    }
}

enum ConnectionEnd {
    Shutdown,
    Lost(String),
    /// The preferred broker answers again; this connection was closed cleanly to go back to it.
    BackToPreferred,
}

/// Which broker the link tries next: the first (most preferred) at start, the next one in the
/// list after each failure, wrapping around, and the first again when it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRotation {
    count: usize,
    current: usize,
}

impl BrokerRotation {
    pub fn new(count: usize) -> Self {
        Self { count: count.max(1), current: 0 }
    }

    /// Index of the broker to use now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The current broker failed (refused, unreachable or dropped): move on.
    pub fn failed(&mut self) {
        self.current = (self.current + 1) % self.count;
    }

    pub fn back_to_preferred(&mut self) {
        self.current = 0;
    }

    /// Whether the link should look for the preferred broker's return.
    pub fn away_from_preferred(&self) -> bool {
        self.current != 0
    }
}

/// How often the cameras' health is compared with what was last published.
const CAMERA_HEALTH_CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long a failback probe may take to open a TCP connection to the preferred broker.
const FAILBACK_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a TCP connection to `broker` opens: enough to try it; its MQTT answer is the real test.
async fn broker_answers(broker: BrokerUrl) -> bool {
    let connect = tokio::net::TcpStream::connect((broker.host.as_str(), broker.port));
    matches!(tokio::time::timeout(FAILBACK_PROBE_TIMEOUT, connect).await, Ok(Ok(_)))
}

/// Looks at each command before it is queued, so that a flood of commands that are not the
/// platform's cannot crowd out one that is: control implements it (size, envelope, signature) and
/// answers what it refuses; only admitted commands take a place in the queue.
pub trait CommandScreen: Send + Sync {
    fn admits(&self, name: &str, payload: &[u8]) -> bool;
}

pub struct Publisher {
    settings: MqttSettings,
    outbox: Arc<Outbox>,
    board: Arc<StatusBoard>,
    /// Fired after each enqueue (events, acks, stats).
    wake: Arc<Notify>,
    /// Fired when what the status says has changed (models switched): republish it.
    status_changed: Arc<Notify>,
    commands: Option<(mpsc::Sender<IncomingCommand>, Arc<dyn CommandScreen>)>,
    telemetry: Option<TelemetrySampler>,
    /// Index into `settings.brokers` of the broker in use or being tried.
    broker: usize,
    /// When the connection in use (or being tried) began: its last will and every status sent on
    /// it carry this as `connected_at`, so the platform tells a late will of an earlier
    /// connection from the end of this one.
    connection_started: chrono::DateTime<chrono::Utc>,
}

impl Publisher {
    pub fn new(settings: MqttSettings, outbox: Arc<Outbox>, board: Arc<StatusBoard>, wake: Arc<Notify>) -> Self {
        Self {
            settings,
            outbox,
            board,
            wake,
            status_changed: Arc::new(Notify::new()),
            commands: None,
            telemetry: None,
            broker: 0,
            connection_started: chrono::Utc::now(),
        }
    }

    fn broker_name(&self) -> String {
        self.settings.brokers.get(self.broker).map(BrokerUrl::name).unwrap_or_default()
    }

    /// Commands received on `cmd/+` that `screen` admits go to this channel.
    pub fn with_commands(mut self, commands: mpsc::Sender<IncomingCommand>, screen: Arc<dyn CommandScreen>) -> Self {
        self.commands = Some((commands, screen));
        self
    }

    pub fn with_telemetry(mut self, sampler: TelemetrySampler) -> Self {
        self.telemetry = Some(sampler);
        self
    }

    pub fn with_status_changed(mut self, status_changed: Arc<Notify>) -> Self {
        self.status_changed = status_changed;
        self
    }

    fn options(&self) -> MqttOptions {
        let s = &self.settings;
        let (host, port) = match s.brokers.get(self.broker) {
            Some(broker) => (broker.host.clone(), broker.port),
            None => (String::new(), 0),
        };
        let mut options = MqttOptions::new(s.client_id.clone(), host, port);
        options.set_keep_alive(s.keep_alive);
        // A persistent session: subscriptions and commands queued while away survive a drop.
        options.set_clean_session(false);
        options.set_inflight(CLIENT_INFLIGHT);
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        options.set_last_will(LastWill::new(s.topic("status"), self.status_payload("offline"), QoS::AtLeastOnce, true));
        if let Some((user, password)) = &s.credentials {
            options.set_credentials(user.clone(), password.expose().to_string());
        }
        if let Some(tls) = &s.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                tls.config.clone(),
            )));
        }
        options
    }

    fn status_payload(&self, state: &str) -> Vec<u8> {
        let status = self.board.snapshot();
        let cameras: Vec<&str> = status.cameras.iter().map(|c| c.id.as_str()).collect();
        json!({
            "schema_version": STATUS_SCHEMA_VERSION,
            "state": state,
            "online": state == "online",
            "device": self.settings.device_id,
            "broker": self.broker_name(),
            "version": status.version,
            "time": chrono::Utc::now(),
            "started_at": status.started_at,
            "connected_at": self.connection_started,
            "models": status.models,
            "cameras": cameras,
            "control": status.control,
            "evidence": status.evidence,
        })
        .to_string()
        .into_bytes()
    }

    /// Connects, publishes, reconnects with capped backoff and jitter, fails over between the
    /// configured brokers; until shutdown.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let first = Duration::from_secs(1).min(self.settings.reconnect_max);
        let mut backoff = Backoff::new(first, self.settings.reconnect_max);
        let mut rotation = BrokerRotation::new(self.settings.brokers.len());
        let mut failures_in_a_row = 0u32;
        let mut last_connected: Option<usize> = None;
        loop {
            self.broker = rotation.current();
            self.board.set_mqtt_broker(&self.broker_name());
            match self.connection(&mut shutdown, &mut backoff, &mut last_connected).await {
                ConnectionEnd::Shutdown => return,
                ConnectionEnd::BackToPreferred => {
                    rotation.back_to_preferred();
                    failures_in_a_row = 0;
                    self.board.set_mqtt_connected(false, None);
                }
                ConnectionEnd::Lost(reason) => {
                    if self.board.snapshot().mqtt.connected {
                        failures_in_a_row = 0;
                    }
                    self.board.set_mqtt_connected(false, Some(reason.clone()));
                    failures_in_a_row += 1;
                    rotation.failed();
                    let delay = backoff.next_delay();
                    let next = self.settings.brokers.get(rotation.current()).map(BrokerUrl::name).unwrap_or_default();
                    // The first failure is news; repeating it every retry is noise.
                    if failures_in_a_row == 1 || failures_in_a_row % 20 == 0 {
                        let then =
                            if self.settings.brokers.len() > 1 { format!("trying {next}") } else { "retrying".into() };
                        tracing::warn!(
                            attempt = failures_in_a_row,
                            "MQTT: {reason}; {then} in {delay:.1?} (events stay in the outbox)"
                        );
                    }
                    if shutdown.sleep(delay).await {
                        return;
                    }
                }
            }
        }
    }

    async fn connection(
        &mut self,
        shutdown: &mut Shutdown,
        backoff: &mut Backoff,
        last_connected: &mut Option<usize>,
    ) -> ConnectionEnd {
        self.connection_started = chrono::Utc::now();
        let (client, mut eventloop) = AsyncClient::new(self.options(), WINDOW * 2);
        let mut tracker = InflightTracker::default();
        let mut acked: Vec<u64> = Vec::new();
        let mut connected = false;
        let mut flush_tick = tokio::time::interval(ACK_FLUSH_EVERY);
        let telemetry_every = self.settings.telemetry_interval.unwrap_or(Duration::from_secs(3600));
        let mut telemetry_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + telemetry_every, telemetry_every);
        // Away from the preferred broker: look now and then whether it is back.
        let failback = self.settings.failback_check.filter(|_| self.broker != 0);
        let failback_every = failback.unwrap_or(Duration::from_secs(3600));
        let mut failback_tick = tokio::time::interval_at(tokio::time::Instant::now() + failback_every, failback_every);
        let mut probes = tokio::task::JoinSet::new();
        let mut health_tick = tokio::time::interval(CAMERA_HEALTH_CHECK_EVERY);
        // Cameras' health as last published on this connection: all of it again on each connect.
        let mut health_published: HashMap<String, CameraHealthReport> = HashMap::new();
        loop {
            tokio::select! {
                polled = eventloop.poll() => match polled {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        connected = true;
                        backoff.reset();
                        if last_connected.is_some_and(|previous| previous != self.broker) {
                            self.board.count_broker_switch();
                        }
                        *last_connected = Some(self.broker);
                        self.board.set_mqtt_connected(true, None);
                        tracing::info!(broker = %self.broker_name(), session_present = ack.session_present, "MQTT connected");
                        // Subscribe again on every connect: the broker may have lost the session.
                        if let Err(e) = client.try_subscribe(self.settings.command_filter(), QoS::AtLeastOnce) {
                            tracing::warn!("MQTT: cannot subscribe to commands: {e}");
                        }
                        self.publish_status(&client, &mut tracker);
                        self.publish_telemetry(&client, &mut tracker);
                        self.publish_camera_health(&client, &mut tracker, &mut health_published, true);
                        self.fill_window(&client, &mut tracker);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => tracker.sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(PublishTag::Outbox(id)) = tracker.acknowledged(ack.pkid) {
                            acked.push(id);
                            self.board.count_published(1);
                        }
                        if acked.len() >= ACK_BATCH {
                            self.remove_acknowledged(&mut acked).await;
                        }
                        // Refill in chunks, not one read per acknowledgement.
                        if tracker.outbox_in_flight() <= WINDOW / 2 {
                            self.fill_window(&client, &mut tracker);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => self.receive_command(&publish.topic, &publish.payload),
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            tracing::warn!("MQTT: the broker refused the command subscription {}", self.settings.command_filter());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.remove_acknowledged(&mut acked).await;
                        return ConnectionEnd::Lost(describe_connection_error(&e, &self.broker_name(), &self.settings));
                    }
                },
                _ = failback_tick.tick(), if connected && failback.is_some() && probes.is_empty() => {
                    if let Some(preferred) = self.settings.brokers.first() {
                        probes.spawn(broker_answers(preferred.clone()));
                    }
                }
                Some(Ok(true)) = probes.join_next(), if !probes.is_empty() => {
                    let preferred = self.settings.brokers.first().map(BrokerUrl::name).unwrap_or_default();
                    tracing::info!(from = %self.broker_name(), to = %preferred, "MQTT: the preferred broker answers again; moving back to it");
                    self.remove_acknowledged(&mut acked).await;
                    self.say_goodbye("moved", &client, &mut eventloop, &mut tracker, &mut acked).await;
                    return ConnectionEnd::BackToPreferred;
                }
                _ = self.wake.notified(), if connected => self.fill_window(&client, &mut tracker),
                _ = self.status_changed.notified(), if connected => self.publish_status(&client, &mut tracker),
                _ = telemetry_tick.tick(), if connected && self.telemetry.is_some() => {
                    self.publish_telemetry(&client, &mut tracker);
                    self.publish_camera_health(&client, &mut tracker, &mut health_published, true);
                }
                _ = health_tick.tick(), if connected => {
                    self.publish_camera_health(&client, &mut tracker, &mut health_published, false);
                }
                // Only once connected: a branch that fires while rumqttc is still waiting for the
                // CONNACK drops that half-made connection (the fleet harness saw a quarter of the
                // boxes connect twice after a broker restart).
                _ = flush_tick.tick(), if connected => {
                    self.remove_acknowledged(&mut acked).await;
                    self.fill_window(&client, &mut tracker);
                }
                _ = shutdown.wait() => {
                    self.remove_acknowledged(&mut acked).await;
                    if connected {
                        self.say_goodbye("stopped", &client, &mut eventloop, &mut tracker, &mut acked).await;
                    }
                    return ConnectionEnd::Shutdown;
                }
            }
        }
    }

    fn publish_status(&self, client: &AsyncClient, tracker: &mut InflightTracker) {
        if client
            .try_publish(self.settings.topic("status"), QoS::AtLeastOnce, true, self.status_payload("online"))
            .is_ok()
        {
            tracker.submitted(PublishTag::Status);
        }
    }

    /// Telemetry goes straight to the broker at QoS 0: it is stale by the next sample, so it is
    /// neither queued in the outbox nor sent while offline.
    fn publish_telemetry(&mut self, client: &AsyncClient, tracker: &mut InflightTracker) {
        let Some(sampler) = self.telemetry.as_mut() else {
            return;
        };
        let telemetry = sampler.sample();
        self.board.set_outbox_stats(telemetry.outbox.clone());
        let payload = match serde_json::to_vec(&telemetry) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!("cannot encode telemetry: {e}");
                return;
            }
        };
        if client.try_publish(self.settings.topic("telemetry"), QoS::AtMostOnce, false, payload).is_ok() {
            tracker.submitted(PublishTag::Telemetry);
        }
    }

    /// Publishes each camera's retained health that changed since it was last published (all of
    /// it with `everything`).
    fn publish_camera_health(
        &self,
        client: &AsyncClient,
        tracker: &mut InflightTracker,
        published: &mut HashMap<String, CameraHealthReport>,
        everything: bool,
    ) {
        for camera in self.board.snapshot().cameras {
            let report = CameraHealthReport::from_status(&self.settings.device_id, &camera);
            let due = everything || published.get(&camera.id).is_none_or(|before| report.changed_from(before));
            if !due {
                continue;
            }
            let Ok(payload) = serde_json::to_vec(&report) else {
                continue;
            };
            let topic = self.settings.topic(&report.topic_suffix());
            if client.try_publish(topic, QoS::AtLeastOnce, true, payload).is_ok() {
                tracker.submitted(PublishTag::Status);
                published.insert(camera.id.clone(), report);
            }
        }
    }

    fn receive_command(&self, topic: &str, payload: &[u8]) {
        let Some(name) = self.settings.command_name(topic) else {
            tracing::debug!(topic, "MQTT message outside the command topics ignored");
            return;
        };
        let Some((commands, screen)) = &self.commands else {
            return;
        };
        // Refused here, a flood never reaches the queue the platform's commands wait in.
        if !screen.admits(name, payload) {
            return;
        }
        let command = IncomingCommand { name: name.to_string(), payload: payload.to_vec() };
        if let Err(e) = commands.try_send(command) {
            tracing::warn!(command = name, "command dropped: the command queue is full or closed ({e})");
        }
    }

    /// Hands the next outbox messages to the client until the window is full.
    fn fill_window(&self, client: &AsyncClient, tracker: &mut InflightTracker) {
        let room = WINDOW.saturating_sub(tracker.outbox_in_flight());
        if room == 0 {
            return;
        }
        let messages = match self.outbox.read_after(tracker.cursor, room) {
            Ok(messages) => messages,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        for (id, message) in messages {
            let topic = self.settings.topic(&message.topic_suffix);
            if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, message.payload) {
                tracing::debug!("MQTT request queue full, will retry: {e}");
                return;
            }
            tracker.submitted(PublishTag::Outbox(id));
        }
    }

    async fn remove_acknowledged(&self, acked: &mut Vec<u64>) {
        if acked.is_empty() {
            return;
        }
        let ids = std::mem::take(acked);
        let outbox = self.outbox.clone();
        let removed = tokio::task::spawn_blocking(move || outbox.remove(&ids).and_then(|_| outbox.stats())).await;
        match removed {
            Ok(Ok(stats)) => self.board.set_outbox_stats(stats),
            Ok(Err(e)) => tracing::error!("{e}; acknowledged messages will be sent again"),
            Err(e) => tracing::error!("outbox task failed: {e}"),
        }
    }

    /// Waits briefly for in-flight acknowledgements, publishes the retained status `state`
    /// (`stopped` at exit, `moved` when leaving for the preferred broker), then a clean DISCONNECT
    /// (which suppresses the last will).
    async fn say_goodbye(
        &self,
        state: &str,
        client: &AsyncClient,
        eventloop: &mut rumqttc::EventLoop,
        tracker: &mut InflightTracker,
        acked: &mut Vec<u64>,
    ) {
        if client
            .try_publish(self.settings.topic("status"), QoS::AtLeastOnce, true, self.status_payload(state))
            .is_err()
        {
            return;
        }
        tracker.submitted(PublishTag::Status);
        let mut disconnect_sent = false;
        let deadline = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                polled = eventloop.poll() => match polled {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => tracker.sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        match tracker.acknowledged(ack.pkid) {
                            Some(PublishTag::Outbox(id)) => acked.push(id),
                            Some(PublishTag::Status) if !disconnect_sent => {
                                // Messages acknowledged up to here leave the outbox before we go.
                                self.remove_acknowledged(acked).await;
                                let _ = client.try_disconnect();
                                disconnect_sent = true;
                            }
                            _ => {}
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = &mut deadline => break,
            }
        }
        self.remove_acknowledged(acked).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MqttSettings {
        MqttSettings {
            client_id: "c".into(),
            topic_prefix: "city/edge".into(),
            credentials: Some(("box".into(), Secret::new("s3cret-pass"))),
            ..MqttSettings::single("127.0.0.1", 1883, "box-7")
        }
    }

    #[test]
    fn pubacks_are_matched_to_outbox_messages_through_packet_ids() {
        let mut tracker = InflightTracker::default();
        tracker.submitted(PublishTag::Status);
        tracker.submitted(PublishTag::Outbox(7));
        tracker.submitted(PublishTag::Telemetry);
        tracker.submitted(PublishTag::Outbox(8));
        assert_eq!(tracker.cursor, 8);
        assert_eq!(tracker.outbox_in_flight(), 2);
        tracker.sent(1);
        tracker.sent(2);
        tracker.sent(0);
        tracker.sent(3);
        assert_eq!(tracker.acknowledged(3), Some(PublishTag::Outbox(8)), "acks may come out of order");
        assert_eq!(tracker.acknowledged(1), Some(PublishTag::Status));
        assert_eq!(tracker.acknowledged(2), Some(PublishTag::Outbox(7)));
        assert_eq!(tracker.acknowledged(2), None, "an ack is used once");
        assert_eq!(tracker.outbox_in_flight(), 0);
    }

    #[test]
    fn failover_goes_down_the_list_and_wraps_around() {
        let mut rotation = BrokerRotation::new(3);
        assert_eq!(rotation.current(), 0);
        assert!(!rotation.away_from_preferred());
        rotation.failed();
        assert_eq!(rotation.current(), 1);
        assert!(rotation.away_from_preferred());
        rotation.failed();
        rotation.failed();
        assert_eq!(rotation.current(), 0, "after the last broker comes the first again");
        rotation.failed();
        rotation.back_to_preferred();
        assert_eq!(rotation.current(), 0);
        let mut alone = BrokerRotation::new(1);
        alone.failed();
        assert_eq!(alone.current(), 0, "one broker: always that one");
    }

    #[tokio::test]
    async fn the_failback_probe_sees_a_listening_broker_and_not_a_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let broker = |port| BrokerUrl { tls: false, host: "127.0.0.1".into(), port };
        assert!(broker_answers(broker(open)).await);
        assert!(!broker_answers(broker(closed)).await);
    }

    #[test]
    fn settings_name_every_broker_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            "device_id = \"b\"\n[mqtt]\nurl = \"mqtt://n1:1883, mqtt://n2:1884\"\nfailback_check_secs = 0\n",
        )
        .unwrap();
        let config = crate::config::Config::load(&path).unwrap();
        let settings = MqttSettings::from_config(&config.mqtt, &config.device_id).unwrap().unwrap();
        assert_eq!(settings.broker_names(), ["mqtt://n1:1883", "mqtt://n2:1884"]);
        assert_eq!(settings.failback_check, None);
    }

    #[test]
    fn topics_carry_prefix_and_device() {
        let settings = settings();
        assert_eq!(settings.topic("events"), "city/edge/box-7/events");
        assert_eq!(settings.command_filter(), "city/edge/box-7/cmd/+");
        assert_eq!(settings.command_name("city/edge/box-7/cmd/set"), Some("set"));
        assert_eq!(settings.command_name("city/edge/box-7/cmd/set/ack"), None);
        assert_eq!(settings.command_name("city/edge/box-8/cmd/set"), None);
    }

    #[test]
    fn settings_debug_hides_the_password() {
        let text = format!("{:?}", settings());
        assert!(!text.contains("s3cret-pass"), "{text}");
    }

    #[test]
    fn refusals_say_what_to_check() {
        let bad_password = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        let text = describe_connection_error(&bad_password, "mqtt://127.0.0.1:1883", &settings());
        assert!(text.contains("mqtt.username") && text.contains("mqtt://127.0.0.1:1883"), "{text}");
        assert!(!text.contains("s3cret-pass"));
    }

    #[test]
    fn settings_come_from_the_config_with_the_password_file_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "from-file\n").unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            "device_id = \"b\"\n[mqtt]\nurl = \"mqtt://h:1884\"\nusername = \"u\"\npassword_file = \"pw\"\n",
        )
        .unwrap();
        let config = crate::config::Config::load(&path).unwrap();
        let settings = MqttSettings::from_config(&config.mqtt, &config.device_id).unwrap().unwrap();
        assert_eq!(settings.credentials.as_ref().map(|(u, p)| (u.as_str(), p.expose())), Some(("u", "from-file")));
        assert_eq!(settings.broker(), "mqtt://h:1884");
        std::fs::write(dir.path().join("pw"), "").unwrap();
        let err = MqttSettings::from_config(&config.mqtt, &config.device_id).unwrap_err().to_string();
        assert!(err.contains("mqtt.password_file") && err.contains("empty"), "{err}");
    }
}
