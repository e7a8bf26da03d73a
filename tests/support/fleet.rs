//! The fleet harness: many boxes' real reporting stacks (durable outbox, MQTT publisher with its
//! backoff and jitter, status board, telemetry) in one process, without models, against a real
//! mosquitto that the harness restarts. Each box makes events at a station's rate (one event
//! record and one evidence picture each); a platform subscriber counts what arrives.
//!
//! It measures what hurts at city scale: the steady load the fleet puts on the broker (messages
//! and bytes per second, the broker's CPU and memory), and a broker restart: time until every box
//! is connected again, connections per second the broker saw, client attempts, events lost (goal
//! 0) and duplicates (allowed only as the same message: same event id and revision).
//! `tests/fleet.rs` runs it short with assertions; `cargo bench --bench fleet` runs it long.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_agent::delivery::board::StatusBoard;
use edge_agent::delivery::mqtt::{MqttSettings, Publisher};
use edge_agent::delivery::outbox::{Outbox, QueuedMessage};
use edge_agent::delivery::telemetry::TelemetrySampler;
use edge_agent::evidence::chain::Chain;
use edge_agent::evidence::signing::DeviceKey;
use edge_agent::wire::RecordContent;

use crate::{repo_root, BrokerOptions, Mosquitto, Subscriber};

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub boxes: usize,
    /// Each box makes one event (with its evidence picture) this often.
    pub event_every: Duration,
    pub telemetry_every: Duration,
    /// Steady load measured over this window, once every box is connected.
    pub steady: Duration,
    /// The broker is down this long.
    pub outage: Duration,
    /// Boxes keep making events this long after the broker is back.
    pub after: Duration,
    /// The boxes' `reconnect_max_secs`.
    pub reconnect_max: Duration,
}

impl FleetOptions {
    /// The Huairou district: 127 stations, an event every 10 s each, telemetry every 60 s.
    pub fn district() -> Self {
        Self {
            boxes: 127,
            event_every: Duration::from_secs(10),
            telemetry_every: Duration::from_secs(60),
            steady: Duration::from_secs(120),
            outage: Duration::from_secs(30),
            after: Duration::from_secs(60),
            reconnect_max: Duration::from_secs(60),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct FleetFigures {
    pub boxes: usize,
    pub picture_bytes: usize,
    pub first_all_connected: Duration,
    pub steady_messages_per_second: f64,
    pub steady_bytes_per_second: f64,
    /// Broker CPU in cores (user + system) over the steady window.
    pub steady_broker_cores: f64,
    pub broker_rss_bytes: u64,
    pub broker_peak_rss_bytes: u64,
    /// From the broker's restart until every box had its CONNACK.
    pub reconnect_all: Duration,
    /// Connections the broker logged per second after its restart (second 0 = restart).
    pub reconnects_per_second: Vec<u64>,
    /// Client ids the broker saw connect more than once after its restart, with the count.
    pub connected_repeatedly: Vec<(String, u64)>,
    /// Connection attempts the boxes made while the broker was down and until all were back.
    pub client_attempts_during_outage: u64,
    pub broker_cores_during_reconnect: f64,
    pub events_made: u64,
    pub events_received: u64,
    pub events_lost: u64,
    pub duplicates: u64,
    /// Duplicates whose bytes differed from the first copy (must be 0).
    pub duplicates_differing: u64,
    pub drained_after_restart: Duration,
}

/// What the platform subscriber saw.
#[derive(Default)]
struct PlatformView {
    messages: u64,
    bytes: u64,
    /// First copy of each (event id, revision).
    events: HashMap<(String, u64), Vec<u8>>,
    duplicates: u64,
    duplicates_differing: u64,
}

struct BoxStack {
    board: Arc<StatusBoard>,
    outbox: Arc<Outbox>,
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name and state.
    let per_second = 100.0; // sysconf(_SC_CLK_TCK) on Linux
    (ticks(11) + ticks(12)) / per_second
}

/// (VmRSS, VmHWM) of a process in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn event_record(device: &str, n: u64, picture_sha: &str) -> Vec<u8> {
    serde_json::json!({
        "schema_version": 1,
        "event_id": format!("{device}-{n:08}"),
        "revision": 0,
        "device": device,
        "camera": "gate",
        "time": chrono::Utc::now(),
        "kind": "wrong_bin",
        "label": "bottle",
        "category": "recyclable",
        "score": 0.81,
        "box": {"x1": 457, "y1": 80, "x2": 686, "y2": 161},
        "frame_width": 1920,
        "frame_height": 1080,
        "snapshot_sha256": picture_sha,
        "model": {"name": "nanodet", "sha256": "2947bae13602996b196ce1d92f3ea337ad028a4b944d6ce30af7b5ea9e454b16"},
    })
    .to_string()
    .into_bytes()
}

/// Runs the fleet against a mosquitto it starts; the figures say what happened.
pub fn run(options: &FleetOptions, work: &Path) -> Option<FleetFigures> {
    let mut broker = Mosquitto::start_with(BrokerOptions { persistence: true, quiet_log: true, ..Default::default() })?;
    let picture_bytes =
        std::fs::metadata(repo_root().join("models/samples/dog.jpg")).map(|m| m.len() as usize).unwrap_or(0);

    // The platform: one persistent subscriber to everything the fleet sends.
    let view = Arc::new(Mutex::new(PlatformView::default()));
    let platform = Subscriber::connect_persistent(broker.port, "edge/#", "fleet-platform");
    let collecting = Arc::new(AtomicBool::new(true));
    let collector = {
        let (view, collecting) = (view.clone(), collecting.clone());
        std::thread::spawn(move || {
            while collecting.load(Ordering::Relaxed) {
                let Ok(message) = platform.messages.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let mut view = view.lock().expect("platform view");
                view.messages += 1;
                view.bytes += (message.payload.len() + message.topic.len()) as u64;
                if !message.topic.ends_with("/events") {
                    continue;
                }
                let Ok(json) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
                    continue;
                };
                let id = json["event_id"].as_str().unwrap_or_default().to_string();
                let revision = json["revision"].as_u64().unwrap_or(0);
                match view.events.get(&(id.clone(), revision)) {
                    Some(first) => {
                        let differs = *first != message.payload;
                        view.duplicates += 1;
                        view.duplicates_differing += u64::from(differs);
                    }
                    None => {
                        view.events.insert((id, revision), message.payload);
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let boxes = Boxes::start(options, work, broker.port, false);
    let (made, producing) = (boxes.made.clone(), boxes.producing.clone());
    let stacks = &boxes.stacks;
    let all_connected = |stacks: &[BoxStack]| stacks.iter().all(|s| s.board.snapshot().mqtt.connected);
    let wait_all_connected = |stacks: &[BoxStack], timeout: Duration| -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if all_connected(stacks) {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    };
    let mut figures = FleetFigures { boxes: options.boxes, picture_bytes, ..Default::default() };
    let connected_at = wait_all_connected(stacks, Duration::from_secs(120)).expect("every box connects at first");
    figures.first_all_connected = connected_at - started;

    // Steady load.
    let pid = broker.pid().expect("broker pid");
    let (messages_before, bytes_before) = {
        let view = view.lock().expect("view");
        (view.messages, view.bytes)
    };
    let cpu_before = cpu_seconds(pid);
    let steady_started = Instant::now();
    std::thread::sleep(options.steady);
    let seconds = steady_started.elapsed().as_secs_f64();
    {
        let view = view.lock().expect("view");
        figures.steady_messages_per_second = (view.messages - messages_before) as f64 / seconds;
        figures.steady_bytes_per_second = (view.bytes - bytes_before) as f64 / seconds;
    }
    figures.steady_broker_cores = (cpu_seconds(pid) - cpu_before) / seconds;
    (figures.broker_rss_bytes, figures.broker_peak_rss_bytes) = memory(pid);

    // The broker restarts; the boxes keep making events into their outboxes meanwhile.
    let attempts =
        |stacks: &[BoxStack]| stacks.iter().map(|s| s.board.snapshot().mqtt.connection_attempts).sum::<u64>();
    let attempts_before = attempts(stacks);
    let log_before = broker.log_text().len();
    broker.stop_gracefully();
    std::thread::sleep(options.outage);
    broker.restart();
    let restarted = Instant::now();
    let restarted_unix = chrono::Utc::now().timestamp();
    let pid = broker.pid().expect("broker pid");
    let cpu_restart = cpu_seconds(pid);
    let back = wait_all_connected(stacks, options.reconnect_max * 3).expect("every box reconnects");
    figures.reconnect_all = back - restarted;
    figures.client_attempts_during_outage = attempts(stacks) - attempts_before;
    figures.broker_cores_during_reconnect =
        (cpu_seconds(pid) - cpu_restart) / restarted.elapsed().as_secs_f64().max(0.001);
    // Connections per second the broker logged ("1764467000: New client connected from ...").
    let log = broker.log_text();
    let mut per_second: Vec<u64> = Vec::new();
    let mut per_client: HashMap<String, u64> = HashMap::new();
    for line in log.get(log_before..).unwrap_or(&log).lines().filter(|l| l.contains("New client connected")) {
        if let Some(client) = line.split(" as ").nth(1).and_then(|rest| rest.split_whitespace().next()) {
            *per_client.entry(client.to_string()).or_default() += 1;
        }
        let Some(unix) = line.split(':').next().and_then(|t| t.trim().parse::<i64>().ok()) else {
            continue;
        };
        let second = (unix - restarted_unix).max(0) as usize;
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
    }
    figures.reconnects_per_second = per_second;
    figures.connected_repeatedly = per_client.into_iter().filter(|(_, n)| *n > 1).collect();
    figures.connected_repeatedly.sort();

    std::thread::sleep(options.after);
    producing.store(false, Ordering::Relaxed);
    // Everything made must drain from the outboxes and arrive.
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    let drained = loop {
        let empty = stacks.iter().all(|s| s.outbox.depth().unwrap_or(u64::MAX) == 0);
        let received = view.lock().expect("view").events.len() as u64;
        if empty && received >= made.load(Ordering::Relaxed) {
            break Instant::now();
        }
        if Instant::now() > drain_deadline {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    figures.drained_after_restart = drained - restarted;
    std::thread::sleep(Duration::from_secs(1));
    boxes.stop();
    collecting.store(false, Ordering::Relaxed);
    let _ = collector.join();

    let view = view.lock().expect("view");
    figures.events_made = made.load(Ordering::Relaxed);
    figures.events_received = view.events.len() as u64;
    figures.events_lost = figures.events_made.saturating_sub(figures.events_received);
    figures.duplicates = view.duplicates;
    figures.duplicates_differing = view.duplicates_differing;
    Some(figures)
}

/// The fleet's boxes reporting into a broker: each box's outbox, MQTT publisher and telemetry in
/// this process, and a station making an event with its picture every `event_every`.
pub struct Boxes {
    runtime: tokio::runtime::Runtime,
    trigger: edge_agent::base::shutdown::ShutdownTrigger,
    stacks: Vec<BoxStack>,
    /// Events made (queued in an outbox) so far.
    pub made: Arc<AtomicU64>,
    /// Cleared: the stations stop making events.
    pub producing: Arc<AtomicBool>,
}

impl Boxes {
    /// Starts `options.boxes` boxes against the broker on `port`. `signed`: each box keeps a real
    /// evidence chain (the agent's chain writer and key file in its folder) and its event messages
    /// carry their records, its other records go out on `chain`, as the agent's do.
    pub fn start(options: &FleetOptions, work: &Path, port: u16, signed: bool) -> Self {
        let picture = std::fs::read(repo_root().join("models/samples/dog.jpg")).expect("models/samples/dog.jpg");
        let picture_sha = crate::sha256_hex(&picture);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
        let (trigger, shutdown) = edge_agent::base::shutdown::channel();
        let made = Arc::new(AtomicU64::new(0));
        let producing = Arc::new(AtomicBool::new(true));
        let mut stacks = Vec::new();
        runtime.block_on(async {
            for i in 0..options.boxes {
                let device = format!("fleet-box-{i:03}");
                let state_dir = work.join(&device);
                let outbox = Arc::new(Outbox::open(&state_dir.join("outbox.redb")).expect("outbox"));
                let settings = MqttSettings {
                    telemetry_interval: Some(options.telemetry_every),
                    reconnect_max: options.reconnect_max,
                    ..MqttSettings::single("127.0.0.1", port, &device)
                };
                let board = Arc::new(StatusBoard::new(device.clone(), settings.broker_names()));
                let wake = Arc::new(tokio::sync::Notify::new());
                let mut chain = signed.then(|| {
                    let key = DeviceKey::load_or_create(&state_dir.join("keys")).expect("device key");
                    board.set_evidence_identity(Some(key.public_hex()), None);
                    Chain::open(&state_dir.join("evidence"), key, &device).expect("evidence chain")
                });
                if let Some(chain) = chain.as_mut() {
                    let records: Vec<QueuedMessage> = chain
                        .take_unpublished()
                        .iter()
                        .map(|r| QueuedMessage {
                            topic_suffix: "chain".into(),
                            payload: serde_json::to_vec(r).expect("a record"),
                        })
                        .collect();
                    outbox.enqueue(&records).expect("queue the genesis record");
                }
                let telemetry = TelemetrySampler::new(board.clone(), outbox.clone(), state_dir.clone());
                let publisher =
                    Publisher::new(settings, outbox.clone(), board.clone(), wake.clone()).with_telemetry(telemetry);
                tokio::spawn(publisher.run(shutdown.clone()));
                // The station: an event with its picture every `event_every`, the first at a random
                // moment so the fleet is not in step.
                let (outbox_for_events, made, producing) = (outbox.clone(), made.clone(), producing.clone());
                let (every, picture, picture_sha) = (options.event_every, picture.clone(), picture_sha.clone());
                let offset = every.mul_f64(f64::from(station_phase(i)));
                let board_for_events = board.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(offset).await;
                    let mut tick = tokio::time::interval(every);
                    let mut n = 0u64;
                    let mut chain = chain;
                    while producing.load(Ordering::Relaxed) {
                        tick.tick().await;
                        if !producing.load(Ordering::Relaxed) {
                            break;
                        }
                        let record = match chain.as_mut() {
                            Some(chain) => {
                                let message = signed_event_message(chain, &device, n, &picture_sha);
                                if let Some(head) = chain.head() {
                                    board_for_events.set_chain_head(head.clone());
                                }
                                message
                            }
                            None => event_record(&device, n, &picture_sha),
                        };
                        let messages = [
                            QueuedMessage { topic_suffix: "events".into(), payload: record },
                            QueuedMessage {
                                topic_suffix: format!("snapshots/{device}-{n:08}"),
                                payload: picture.clone(),
                            },
                        ];
                        let outbox = outbox_for_events.clone();
                        let queued = tokio::task::spawn_blocking(move || outbox.enqueue(&messages)).await;
                        if matches!(queued, Ok(Ok(_))) {
                            made.fetch_add(1, Ordering::Relaxed);
                            n += 1;
                            wake.notify_one();
                        }
                    }
                });
                stacks.push(BoxStack { board, outbox });
            }
        });
        Self { runtime, trigger, stacks, made, producing }
    }

    pub fn all_connected(&self) -> bool {
        self.stacks.iter().all(|s| s.board.snapshot().mqtt.connected)
    }

    /// Whether every outbox is empty (everything made reached the broker).
    pub fn drained(&self) -> bool {
        self.stacks.iter().all(|s| s.outbox.depth().unwrap_or(u64::MAX) == 0)
    }

    /// Stops every box (the publishers end, the runtime with them).
    pub fn stop(self) {
        self.producing.store(false, Ordering::Relaxed);
        self.trigger.trigger();
        self.runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// An event message as the agent sends one: the event (its id names the station and number, its
/// picture's hash), with its record appended to the box's chain in `chain`.
fn signed_event_message(chain: &mut Chain, device: &str, n: u64, picture_sha: &str) -> Vec<u8> {
    let now = chrono::Utc::now();
    let event = serde_json::json!({
        "schema_version": edge_agent::wire::EVENT_SCHEMA_VERSION,
        "event_id": format!("{device}-{n:08}"),
        "revision": 0,
        "state": "start",
        "reason": null,
        "device": device,
        "station_id": device,
        "camera": "gate",
        "time": now,
        "start_time": now,
        "duration_secs": 0.0,
        "kind": "wrong_bin",
        "label": "bottle",
        "category": "recyclable",
        "score": 0.81,
        "box": {"x1": 457, "y1": 80, "x2": 686, "y2": 161},
        "frame_width": 1920,
        "frame_height": 1080,
        "snapshot_sha256": picture_sha,
    });
    let content = RecordContent::Event { event: event.clone(), evidence: vec![] };
    let proof = chain.append(now, content).expect("append the event's record");
    let mut message = event;
    message["chain"] = serde_json::to_value(proof).expect("a record");
    serde_json::to_vec(&message).expect("an event message")
}

/// A fraction in [0, 1) per box, so the stations' first events spread over one period.
fn station_phase(i: usize) -> f32 {
    // Golden-ratio sequence: evenly spread, deterministic, no clustering.
    ((i as f64 * 0.618_033_988_75).fract()) as f32
}

impl FleetFigures {
    /// The figures as a Markdown table.
    pub fn table(&self, options: &FleetOptions) -> String {
        let mb = |b: f64| b / 1_048_576.0;
        let busiest = self.reconnects_per_second.iter().max().copied().unwrap_or(0);
        let seconds_with_reconnects = self.reconnects_per_second.iter().filter(|n| **n > 0).count();
        let rows = [
            ("boxes", format!("{}", self.boxes)),
            (
                "each box",
                format!(
                    "1 event + 1 evidence picture ({} KB) every {} s; telemetry every {} s; reconnect_max {} s",
                    self.picture_bytes / 1024,
                    options.event_every.as_secs_f64(),
                    options.telemetry_every.as_secs_f64(),
                    options.reconnect_max.as_secs_f64()
                ),
            ),
            ("all boxes connected after start", format!("{:.2} s", self.first_all_connected.as_secs_f64())),
            (
                "steady load on the broker (as delivered to one platform subscriber)",
                format!(
                    "{:.1} messages/s, {:.2} MB/s; per box {:.3} messages/s, {:.1} KB/s",
                    self.steady_messages_per_second,
                    mb(self.steady_bytes_per_second),
                    self.steady_messages_per_second / self.boxes as f64,
                    self.steady_bytes_per_second / self.boxes as f64 / 1024.0
                ),
            ),
            ("broker CPU, steady", format!("{:.3} cores", self.steady_broker_cores)),
            (
                "broker memory, steady",
                format!(
                    "RSS {:.1} MB (peak {:.1} MB)",
                    mb(self.broker_rss_bytes as f64),
                    mb(self.broker_peak_rss_bytes as f64)
                ),
            ),
            (
                "broker restart: every box connected again after",
                format!("{:.2} s (outage {} s)", self.reconnect_all.as_secs_f64(), options.outage.as_secs_f64()),
            ),
            (
                "connections the broker saw per second after restart",
                format!(
                    "busiest second {busiest}, spread over {seconds_with_reconnects} s: {:?}",
                    self.reconnects_per_second
                ),
            ),
            (
                "clients the broker saw connect more than once after its restart",
                format!(
                    "{} {:?}",
                    self.connected_repeatedly.len(),
                    &self.connected_repeatedly[..self.connected_repeatedly.len().min(5)]
                ),
            ),
            ("connection attempts by the boxes, outage to all back", format!("{}", self.client_attempts_during_outage)),
            ("broker CPU while the fleet reconnects", format!("{:.3} cores", self.broker_cores_during_reconnect)),
            (
                "events made / received / lost",
                format!("{} / {} / {}", self.events_made, self.events_received, self.events_lost),
            ),
            (
                "duplicates (same id and revision; differing bytes)",
                format!("{} ({})", self.duplicates, self.duplicates_differing),
            ),
            ("all outboxes drained after the restart", format!("{:.1} s", self.drained_after_restart.as_secs_f64())),
        ];
        let mut text = String::from("| measure | figure |\n|---|---|\n");
        for (measure, figure) in rows {
            text.push_str(&format!("| {measure} | {figure} |\n"));
        }
        text
    }
}
