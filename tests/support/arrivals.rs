//! What arrives at the platform: every event message by id and revision, in which order, with how
//! many duplicates, and the evidence pictures beside them; and when the agent has queued all it will.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::{eventually, plain_log, queued_events, Agent, Received, Subscriber};

/// Event messages by (event id, revision); the incidents (event ids) whose `start` arrived, and
/// the order in which each camera's incidents started.
#[derive(Default)]
pub struct Arrivals {
    pub messages: HashMap<(String, u64), Vec<u8>>,
    pub started: HashSet<String>,
    pub first_order: HashMap<String, Vec<String>>,
    pub duplicates: usize,
    /// Event ids on `snapshots/{event_id}` topics that arrived.
    pub snapshots: HashSet<String>,
    /// Per incident, the evidence pictures that arrived on its `snapshots/{event_id}` topic.
    pub snapshots_arrived: HashMap<String, usize>,
    /// Per incident, its messages that carry a picture (`snapshot_sha256` set).
    pub snapshots_sent: HashMap<String, usize>,
}

impl Arrivals {
    pub fn take(&mut self, messages: Vec<Received>) {
        for message in messages {
            if message.topic.ends_with("/events") {
                let json: serde_json::Value = serde_json::from_slice(&message.payload).expect("event JSON");
                let id = json["event_id"].as_str().expect("event_id").to_string();
                let revision = json["revision"].as_u64().expect("revision");
                let camera = json["camera"].as_str().expect("camera").to_string();
                match self.messages.get(&(id.clone(), revision)) {
                    Some(first) => {
                        assert_eq!(first, &message.payload, "a duplicate of {id}/{revision} must be the same message");
                        self.duplicates += 1;
                    }
                    None => {
                        self.messages.insert((id.clone(), revision), message.payload.clone());
                        if json["snapshot_sha256"].is_string() {
                            *self.snapshots_sent.entry(id.clone()).or_default() += 1;
                        }
                        if revision == 0 {
                            self.started.insert(id.clone());
                            self.first_order.entry(camera).or_default().push(id);
                        }
                    }
                }
            } else if let Some((_, id)) = message.topic.split_once("/snapshots/") {
                assert_eq!(&message.payload[..2], &[0xff, 0xd8], "evidence is a JPEG");
                self.snapshots.insert(id.to_string());
                *self.snapshots_arrived.entry(id.to_string()).or_default() += 1;
            }
        }
    }

    /// Collects until the first event arrives; true if one did.
    pub fn wait_for_first_event(&mut self, subscriber: &Subscriber, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.started.is_empty() && Instant::now() < deadline {
            self.take(subscriber.collect_for(Duration::from_millis(200)));
        }
        !self.started.is_empty()
    }

    /// Collects until every queued event arrived (or the time is up); returns what is missing.
    pub fn wait_for_all(
        &mut self,
        subscriber: &Subscriber,
        queued: &[(String, String)],
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing: Vec<String> =
                queued.iter().filter(|(_, id)| !self.started.contains(id)).map(|(_, id)| id.clone()).collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            self.take(subscriber.collect_for(Duration::from_millis(500)));
        }
    }

    /// Per camera, events first arrived in the order the agent queued them.
    pub fn assert_camera_order(&self, queued: &[(String, String)]) {
        let mut expected: HashMap<&str, Vec<&str>> = HashMap::new();
        for (camera, id) in queued {
            expected.entry(camera).or_default().push(id);
        }
        for (camera, ids) in expected {
            let arrived: Vec<&str> = self
                .first_order
                .get(camera)
                .map(|v| v.iter().map(String::as_str).filter(|id| ids.contains(id)).collect())
                .unwrap_or_default();
            assert_eq!(arrived, ids, "camera {camera}: events arrived out of order");
        }
    }
}

/// The queued events once the pipeline has drained: the count has not moved for two seconds
/// (frames still in inference when the source ended are judged and queued after its log line).
pub fn settled_queued_events(agent: &Agent) -> Vec<(String, String)> {
    let mut last = queued_events(&agent.log_text());
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(250));
        let now = queued_events(&agent.log_text());
        if now.len() != last.len() {
            still_since = Instant::now();
        }
        last = now;
    }
    last
}

pub fn wait_for_all_sources_ended(agent: &Agent, cameras: usize, timeout: Duration) -> bool {
    eventually(timeout, || (count_in_log(agent, "source ended") >= cameras).then_some(())).is_some()
}

pub fn count_in_log(agent: &Agent, needle: &str) -> usize {
    plain_log(&agent.log_text()).matches(needle).count()
}
