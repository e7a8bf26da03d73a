//! MQTT publisher: drains the outbox to the broker with QoS 1 and removes a message only after its
//! PUBACK. The retained `status` topic says `online` on every connect and `stopped` on a clean exit;
//! the broker says `offline` (last will) when the link dies.
//!
//! The bookkeeping (which packet id carries which outbox message) lives in [`InflightTracker`],
//! apart from the socket loop, so it is tested without a broker. Each connection gets a fresh
//! rumqttc event loop: after a drop, whatever was unacknowledged is simply read again from the
//! outbox, oldest first, so the outbox is the only source of truth.

pub mod config;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;
use tokio::sync::Notify;

use super::board::StatusBoard;
use super::outbox::Outbox;
use crate::shutdown::Shutdown;
use crate::source::Backoff;

/// Messages published but not yet acknowledged, at most; below rumqttc's in-flight limit.
const WINDOW: usize = 64;
/// Acknowledged ids are removed from the outbox in batches: one fsync per batch, not per message.
const ACK_BATCH: usize = 256;
const ACK_FLUSH_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topic_prefix: String,
    pub device_id: String,
    pub keep_alive: Duration,
}

impl MqttSettings {
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}/{}/{}", self.topic_prefix, self.device_id, suffix)
    }

    pub fn broker(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// What a published packet carries, so its PUBACK can be matched to an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishTag {
    Outbox(u64),
    Status,
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

enum ConnectionEnd {
    Shutdown,
    Lost(String),
}

pub struct Publisher {
    pub settings: MqttSettings,
    pub outbox: Arc<Outbox>,
    pub board: Arc<StatusBoard>,
    /// Fired by the report stage after each enqueue.
    pub wake: Arc<Notify>,
}

impl Publisher {
    fn options(&self) -> MqttOptions {
        let s = &self.settings;
        let mut options = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        options.set_keep_alive(s.keep_alive);
        options.set_clean_session(false);
        options.set_inflight(100);
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        options.set_last_will(LastWill::new(s.topic("status"), self.status_payload("offline"), QoS::AtLeastOnce, true));
        options
    }

    fn status_payload(&self, state: &str) -> Vec<u8> {
        let status = self.board.snapshot();
        let cameras: Vec<&str> = status.cameras.iter().map(|c| c.id.as_str()).collect();
        json!({
            "state": state,
            "online": state == "online",
            "device": self.settings.device_id,
            "version": status.version,
            "time": chrono::Utc::now(),
            "models": status.models,
            "cameras": cameras,
        })
        .to_string()
        .into_bytes()
    }

    /// Connects, publishes, reconnects with capped backoff and jitter; until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut failures_in_a_row = 0u32;
        loop {
            match self.connection(&mut shutdown, &mut backoff).await {
                ConnectionEnd::Shutdown => return,
                ConnectionEnd::Lost(reason) => {
                    self.board.set_mqtt_connected(false, Some(reason.clone()));
                    failures_in_a_row += 1;
                    let delay = backoff.next_delay();
                    // The first failure is news; repeating it every retry is noise.
                    if failures_in_a_row == 1 || failures_in_a_row % 20 == 0 {
                        tracing::warn!(broker = %self.settings.broker(), "MQTT connection lost or refused: {reason}; retrying in {delay:.1?} (events stay in the outbox)");
                    }
                    if shutdown.sleep(delay).await {
                        return;
                    }
                }
            }
            if self.board.snapshot().mqtt.connected {
                failures_in_a_row = 0;
            }
        }
    }

    async fn connection(&self, shutdown: &mut Shutdown, backoff: &mut Backoff) -> ConnectionEnd {
        let (client, mut eventloop) = AsyncClient::new(self.options(), WINDOW * 2);
        let mut tracker = InflightTracker::default();
        let mut acked: Vec<u64> = Vec::new();
        let mut connected = false;
        let mut flush_tick = tokio::time::interval(ACK_FLUSH_EVERY);
        loop {
            tokio::select! {
                polled = eventloop.poll() => match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff.reset();
                        self.board.set_mqtt_connected(true, None);
                        tracing::info!(broker = %self.settings.broker(), "MQTT connected");
                        if client.try_publish(self.settings.topic("status"), QoS::AtLeastOnce, true, self.status_payload("online")).is_ok() {
                            tracker.submitted(PublishTag::Status);
                        }
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
                        self.fill_window(&client, &mut tracker);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.remove_acknowledged(&mut acked).await;
                        return ConnectionEnd::Lost(e.to_string());
                    }
                },
                _ = self.wake.notified(), if connected => self.fill_window(&client, &mut tracker),
                _ = flush_tick.tick() => {
                    self.remove_acknowledged(&mut acked).await;
                    if connected {
                        self.fill_window(&client, &mut tracker);
                    }
                }
                _ = shutdown.wait() => {
                    self.remove_acknowledged(&mut acked).await;
                    if connected {
                        self.say_stopped(&client, &mut eventloop).await;
                    }
                    return ConnectionEnd::Shutdown;
                }
            }
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
        let removed = tokio::task::spawn_blocking(move || outbox.remove(&ids).and_then(|_| outbox.depth())).await;
        match removed {
            Ok(Ok(depth)) => self.board.set_outbox_depth(depth),
            Ok(Err(e)) => tracing::error!("{e}; acknowledged messages will be sent again"),
            Err(e) => tracing::error!("outbox task failed: {e}"),
        }
    }

    /// Retained `stopped` status, then a clean DISCONNECT (which suppresses the last will).
    async fn say_stopped(&self, client: &AsyncClient, eventloop: &mut rumqttc::EventLoop) {
        let sent =
            client.try_publish(self.settings.topic("status"), QoS::AtLeastOnce, true, self.status_payload("stopped"));
        if sent.is_err() {
            return;
        }
        let _ = client.try_disconnect();
        let deadline = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                polled = eventloop.poll() => match polled {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = &mut deadline => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubacks_are_matched_to_outbox_messages_through_packet_ids() {
        let mut tracker = InflightTracker::default();
        tracker.submitted(PublishTag::Status);
        tracker.submitted(PublishTag::Outbox(7));
        tracker.submitted(PublishTag::Outbox(8));
        assert_eq!(tracker.cursor, 8);
        assert_eq!(tracker.outbox_in_flight(), 2);
        tracker.sent(1);
        tracker.sent(2);
        tracker.sent(3);
        assert_eq!(tracker.acknowledged(3), Some(PublishTag::Outbox(8)), "acks may come out of order");
        assert_eq!(tracker.acknowledged(1), Some(PublishTag::Status));
        assert_eq!(tracker.acknowledged(2), Some(PublishTag::Outbox(7)));
        assert_eq!(tracker.acknowledged(2), None, "an ack is used once");
        assert_eq!(tracker.outbox_in_flight(), 0);
    }

    #[test]
    fn topics_carry_prefix_and_device() {
        let settings = MqttSettings {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "c".into(),
            topic_prefix: "city/edge".into(),
            device_id: "box-7".into(),
            keep_alive: Duration::from_secs(30),
        };
        assert_eq!(settings.topic("events"), "city/edge/box-7/events");
    }
}
