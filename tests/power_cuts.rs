//! Power cuts, end to end: the real agent with its config folder and state folder on the
//! crash-simulating filesystem (tests/support/crashfs), which forgets at each cut what was not made
//! durable. Rounds of SIGKILL + power cut at random moments while two cameras report (one of them
//! with clips), the broker comes and goes, signed `set` and `model` commands change the config and
//! the device key rotates. After each cut: the chain verifies, the config, nonce store, key and
//! pending switch are whole, what was acknowledged before the cut is still so, the agent starts by
//! itself, and every event the outbox had committed before the cut reaches the broker.
//! `POWER_CUTS=1000` runs the long form (default 50 rounds, CI's form); `POWER_CUTS_SEED` replays a run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_agent_tests::crashfs::{self, CrashFs};
use edge_agent_tests::*;
use serde_json::{json, Value};

const DEVICE: &str = "cut-box";

/// The commit window (README, "What a power cut does"): the frames whose events may be decided and
/// not yet committed at a cut, all cameras together.
const COMMIT_WINDOW_FRAMES: usize = 6;

/// The two thresholds `set` alternates between; both let the truck through.
const MIN_SCORES: [f64; 2] = [0.3, 0.35];

/// Log lines that say the agent threw state away or fell back to an older copy: none may appear.
const REPAIRS: [&str; 6] = [
    "corrupted beyond repair",
    "moved aside",
    "event history unreadable",
    "cannot read the command nonces",
    "starting on the last config that did",
    "removed a rotation key the chain never recorded",
];

/// A small deterministic generator, so that a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }
}

/// The figures of a run, printed at its end.
#[derive(Debug, Default)]
struct Figures {
    cuts: u64,
    torn_cuts: u64,
    cuts_while_starting: u64,
    cuts_right_after_an_ack: u64,
    restarts: u64,
    restarts_ready: u64,
    broker_restarts: u64,
    sets_sent: u64,
    replays_refused: u64,
    switches_sent: u64,
    switches_rolled_back_at_start: u64,
    switches_kept_at_start: u64,
    rotations_finished: u64,
    rotations_cut: u64,
    /// The most events decided (in the chain) but not committed (in the outbox) at one cut.
    window_max: u64,
    /// The most frames those events came from, at one cut.
    window_frames_max: u64,
    /// Time spent checking the durable state after the cuts: `edge-agent verify`, and the rest.
    verify_time: Duration,
    other_checks_time: Duration,
    /// Time from a start to its status page answering, over the starts seen ready.
    start_time: Duration,
}

/// What the platform's subscriber saw, across every round (it stays connected).
#[derive(Default)]
struct Platform {
    /// (event id, revision) → times received.
    events: BTreeMap<(String, u64), u64>,
    /// (event id, revision) → (chain seq, record sha256) as the message carried it.
    proofs: BTreeMap<(String, u64), (u64, String)>,
    /// Command acks by correlation id, in arrival order.
    acks: BTreeMap<String, Vec<Value>>,
}

impl Platform {
    /// Takes messages for `duration`, or until `done` holds.
    fn take_until(&mut self, subscriber: &Subscriber, duration: Duration, done: impl Fn(&Platform) -> bool) {
        let deadline = Instant::now() + duration;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if done(self) {
                return;
            }
            let Ok(message) = subscriber.messages.recv_timeout(left.min(Duration::from_millis(50))) else { continue };
            let Ok(json) = serde_json::from_slice::<Value>(&message.payload) else { continue };
            if message.topic.ends_with("/events") {
                let id = json["event_id"].as_str().unwrap_or_default().to_string();
                let key = (id, json["revision"].as_u64().unwrap_or(0));
                if let (Some(seq), Some(sha)) = (json["chain"]["seq"].as_u64(), json["chain"]["sha256"].as_str()) {
                    self.proofs.insert(key.clone(), (seq, sha.to_string()));
                }
                *self.events.entry(key).or_default() += 1;
            } else if message.topic.ends_with("/ack") {
                if let Some(id) = json["correlation_id"].as_str() {
                    self.acks.entry(id.to_string()).or_default().push(json);
                }
            }
        }
    }

    fn take(&mut self, subscriber: &Subscriber, duration: Duration) {
        self.take_until(subscriber, duration, |_| false);
    }

    fn ack(&self, id: &str, accept: impl Fn(&Value) -> bool) -> Option<&Value> {
        self.acks.get(id)?.iter().find(|a| accept(a))
    }
}

/// What the agent's log (outside the filesystem that is cut) has said so far, read on from where
/// the last look stopped: the long form's log grows to tens of megabytes, and reading it whole at
/// every cut made each round slower than the one before.
struct LogSoFar {
    path: PathBuf,
    /// Bytes taken in: up to the end of the last whole line.
    read: u64,
    /// (event id, revision) of every event the agent logged as queued: the line comes after the
    /// outbox's durable commit.
    committed: BTreeSet<(String, u64)>,
    /// The model the agent confirmed last (`None`: the one of its first start), and a switch on
    /// probation: (previous, new).
    confirmed_model: Option<String>,
    probation: Option<(String, String)>,
}

impl LogSoFar {
    fn new(path: &Path) -> Self {
        Self { path: path.to_owned(), read: 0, committed: BTreeSet::new(), confirmed_model: None, probation: None }
    }

    /// Takes in the whole lines the log gained since the last look.
    fn catch_up(&mut self) {
        let text = log_since(&self.path, self.read);
        let Some(end) = text.rfind('\n') else { return };
        self.read += end as u64 + 1;
        for line in plain_log(&text[..=end]).lines() {
            self.take_in(line);
        }
    }

    fn take_in(&mut self, line: &str) {
        if line.contains("edge_agent::delivery") && line.contains(" event ") {
            if let (Some(id), Some(revision)) = (field(line, "event_id"), field(line, "revision")) {
                if let Ok(revision) = revision.parse() {
                    self.committed.insert((id, revision));
                }
            }
        } else if line.contains("model updated") {
            if let (Some(new), Some(previous)) = (field(line, "sha256"), field(line, "previous")) {
                self.probation = Some((previous, new));
            }
        } else if line.contains("new model passed its probation") {
            self.confirmed_model = Some(field(line, "sha256").unwrap_or_default());
            self.probation = None;
        } else if line.contains("never finished its probation") || line.contains(") is back") {
            if let Some((previous, _)) = self.probation.take() {
                self.confirmed_model = Some(previous);
            }
        }
    }

    /// The model the agent must run at its next start, from what it logged up to a cut: the one it
    /// confirmed, or while a switch was on probation, the previous one (rolled back at the start)
    /// or the new one (confirmed in the instant before its log line).
    fn model_after_cut(&self, original: &str) -> ModelAfterCut {
        match &self.probation {
            Some((previous, new)) => ModelAfterCut::Either { previous: previous.clone(), new: new.clone() },
            None => ModelAfterCut::Exactly(self.confirmed_model.clone().unwrap_or_else(|| original.to_string())),
        }
    }
}

/// The log from byte `offset` on (lossy where a line is cut mid-character).
fn log_since(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Where in the agent's log an event was committed: which start of the agent (counted from 1), and
/// what the log says around it.
fn where_committed(log: &str, key: &(String, u64)) -> String {
    let log = plain_log(log);
    let lines: Vec<&str> = log.lines().collect();
    let mut start = 0;
    for (n, line) in lines.iter().enumerate() {
        start += usize::from(line.contains("edge-agent ") && line.contains(" starting"));
        let queued = line.contains("edge_agent::delivery") && line.contains(" event ");
        if queued
            && field(line, "event_id").as_deref() == Some(&key.0)
            && field(line, "revision") == Some(key.1.to_string())
        {
            let after: Vec<&str> = lines[n + 1..].iter().take(6).copied().collect();
            return format!("line {} (start {start}); the lines after it:\n  {}", n + 1, after.join("\n  "));
        }
    }
    "not in the log".into()
}

/// With `POWER_CUTS_KEEP=DIR`, the agent's log, the broker's log and the backing folder (state and
/// config as they are on "disk") are copied there for a look after a failure.
fn keep_for_inspection(run: &Run) {
    let Ok(dir) = std::env::var("POWER_CUTS_KEEP") else { return };
    let dir = PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::copy(&run.site.log, dir.join("agent.log"));
    let _ = std::fs::write(dir.join("mosquitto.log"), run.broker.log_text());
    let _ = Command::new("cp").arg("-a").arg(run.site._backing.path()).arg(dir.join("backing")).status();
    eprintln!("power cuts: logs and the backing folder kept in {}", dir.display());
}

/// A `name=value` field of a log line.
fn field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).map(str::to_string)
}

/// The model the agent must run at its next start (see [`LogSoFar::model_after_cut`]).
#[derive(Debug, Clone, PartialEq)]
enum ModelAfterCut {
    Exactly(String),
    Either { previous: String, new: String },
}

/// One event record of the chain on disk.
struct ChainEvent {
    seq: u64,
    sha256: String,
    /// The frame it was decided on: camera and capture time.
    frame: (String, String),
}

/// The event records of the chain segments on disk, (event id, revision) → record, read again
/// only where a segment's length changed: segments are only ever appended to (or lose a torn last
/// line at a start), and parsing every segment at every cut made the long form's rounds slow.
#[derive(Default)]
struct ChainOnDisk {
    /// Segment file name → its length when read and its event records.
    segments: BTreeMap<std::ffi::OsString, (u64, BTreeMap<(String, u64), ChainEvent>)>,
}

impl ChainOnDisk {
    fn refresh(&mut self, state: &Path) {
        let Ok(entries) = std::fs::read_dir(state.join("evidence/chain")) else {
            self.segments.clear();
            return;
        };
        let mut present = BTreeSet::new();
        for entry in entries.flatten() {
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            present.insert(entry.file_name());
            if self.segments.get(&entry.file_name()).is_some_and(|(read, _)| *read == len) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            self.segments.insert(entry.file_name(), (text.len() as u64, segment_events(&text)));
        }
        self.segments.retain(|name, _| present.contains(name));
    }

    fn iter(&self) -> impl Iterator<Item = (&(String, u64), &ChainEvent)> {
        self.segments.values().flat_map(|(_, events)| events.iter())
    }

    fn get(&self, key: &(String, u64)) -> Option<&ChainEvent> {
        self.segments.values().find_map(|(_, events)| events.get(key))
    }

    fn len(&self) -> usize {
        self.segments.values().map(|(_, events)| events.len()).sum()
    }
}

/// The event records of one chain segment's text.
fn segment_events(text: &str) -> BTreeMap<(String, u64), ChainEvent> {
    let mut events = BTreeMap::new();
    for line in text.lines() {
        let Ok(stored) = serde_json::from_str::<Value>(line) else { continue };
        let body = &stored["body"];
        if body["record"] != "event" {
            continue;
        }
        let id = body["event"]["event_id"].as_str().unwrap_or_default().to_string();
        let sha256 = stored["sha256"].as_str().unwrap_or_default().to_string();
        let event = &body["event"];
        let frame = (event["camera"].to_string(), event["time"].to_string());
        let record = ChainEvent { seq: body["seq"].as_u64().unwrap_or(0), sha256, frame };
        events.insert((id, body["event"]["revision"].as_u64().unwrap_or(0)), record);
    }
    events
}

/// Every file and folder under `dir` with its size, for a failure's message.
fn listing(dir: &Path) -> String {
    let mut lines = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            lines.push(format!("  {} (missing)", folder.display()));
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
            match entry.metadata() {
                Ok(m) if m.is_dir() => {
                    lines.push(format!("  {name}/"));
                    pending.push(path);
                }
                Ok(m) => lines.push(format!("  {name} {} bytes", m.len())),
                Err(e) => lines.push(format!("  {name} ({e})")),
            }
        }
    }
    lines.sort();
    lines.join("\n")
}

/// nanodet.onnx with a doc string appended: the same graph, another file (a "new model" `n`).
fn nanodet_variant(n: u64) -> Vec<u8> {
    let mut bytes = std::fs::read(repo_root().join("models/nanodet.onnx")).unwrap();
    let note = format!("edge-agent power cut build {n}");
    bytes.push((6 << 3) | 2); // ModelProto.doc_string, length-delimited
    bytes.push(note.len() as u8);
    bytes.extend_from_slice(note.as_bytes());
    bytes
}

/// The key that signs model files (`model_update.public_key`).
struct ModelSigner(ring::signature::Ed25519KeyPair);

impl ModelSigner {
    fn new() -> Self {
        Self(ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap())
    }

    fn public_key_hex(&self) -> String {
        use ring::signature::KeyPair;
        hex::encode(self.0.public_key().as_ref())
    }

    fn sign_hex(&self, bytes: &[u8]) -> String {
        hex::encode(self.0.sign(bytes).as_ref())
    }
}

struct Site {
    _work: tempfile::TempDir,
    _backing: tempfile::TempDir,
    fs: CrashFs,
    config: PathBuf,
    state: PathBuf,
    web_port: u16,
    log: PathBuf,
    served: PathBuf,
    files: FileServer,
    platform: PlatformKey,
    models: ModelSigner,
}

/// The box as installed: its config folder written to the backing folder before the mount (durable
/// from the start), the state folder left for the agent to make; the cameras' pictures, the served
/// models and the agent's log elsewhere.
fn site(broker: &Mosquitto) -> Option<Site> {
    let work = tempfile::tempdir().unwrap();
    let backing = tempfile::tempdir().unwrap();
    let frames = coming_and_going_folder(work.path(), "gate", 4);
    let cameras = [ReplayCamera { id: "gate", frames: &frames, fps: 4.0, looping: true }];
    let served = work.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let platform = PlatformKey::from_seed(7);
    let models = ModelSigner::new();
    // A second camera reads a video through GStreamer: its events get clips in the evidence folder.
    // The evidence has the quota of a small card, so retention deletes pictures between the cuts
    // (and the state, which the checks read after every cut, stops growing but for the chain).
    let extra = format!(
        "{every_arrival}\n[evidence]\nmax_disk_mb = 160\n\n[[cameras]]\nid = \"video\"\nsource = {{ kind = \"file\", path = \"{video}\", fps = 2.0, \
         looping = true }}\n\n[scenes.video]\nblur_people = false\n\n[evidence.clips]\npre_roll_secs = 1\n\
         post_roll_secs = 1\nmax_secs = 5\n\n[model_update]\npublic_key = \"{model_key}\"\nprobation_secs = 3\n\n\
         {commands}",
        every_arrival = EVERY_ARRIVAL_IS_AN_EVENT.replace("[rules.object]\n", "[rules.object]\nmin_score = 0.3\n"),
        video = repo_root().join("tests/data/samples.mp4").display(),
        model_key = models.public_key_hex(),
        commands = platform.config_section(),
    );
    let config_dir = backing.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    let mqtt = format!("url = \"{}\"", broker.url());
    let (config, web_port) = write_agent_config(&config_dir, DEVICE, &mqtt, &cameras, &extra);
    let text = std::fs::read_to_string(&config).unwrap().replace("state_dir = \"state\"", "state_dir = \"../state\"");
    std::fs::write(&config, text).unwrap();
    let fs = crashfs::mount_or_skip(backing.path())?;
    let config = fs.mount_point().join("config/agent.toml");
    let state = fs.mount_point().join("state");
    let files = FileServer::start(&served);
    let log = work.path().join("agent.log");
    Some(Site { _work: work, _backing: backing, fs, config, state, web_port, log, served, files, platform, models })
}

/// A `set` sent: its correlation id, the threshold it sets, its envelope and when it went.
struct SentSet {
    id: String,
    value: f64,
    envelope: Vec<u8>,
    sent: Instant,
    /// Whether a cut came since it was sent.
    cut: bool,
}

/// One run of rounds: the site, the broker, the platform's subscriber and the agent.
struct Run {
    // The agent first: dropped (and its log printed on a failure) before the site's folders go.
    agent: Agent,
    site: Site,
    broker: Mosquitto,
    subscriber: Subscriber,
    rng: Rng,
    platform: Platform,
    figures: Figures,
    /// Chain events that were not committed at some cut: decided in the commit window.
    window: BTreeSet<(String, u64)>,
    /// The model of the first start.
    original_model: String,
    last_set: Option<SentSet>,
    /// The model command sent to this run of the agent (a cut ends it): its correlation id.
    switch: Option<String>,
    /// Where this run of the agent starts in the log.
    log_offset: u64,
    /// What the log said so far, and the chain's event records on disk.
    log: LogSoFar,
    chain: ChainOnDisk,
}

impl Run {
    fn whole_log(&self) -> String {
        std::fs::read_to_string(&self.site.log).unwrap_or_default()
    }

    fn command(&mut self, name: &str, command: &Value) -> Vec<u8> {
        let envelope = self.site.platform.envelope(DEVICE, name, command);
        self.subscriber.publish(&format!("edge/{DEVICE}/cmd/{name}"), envelope.clone());
        envelope
    }

    /// Waits until this run of the agent answers its status page (two minutes at most), and checks
    /// it started with nothing repaired; returns its status.
    fn wait_ready(&mut self, round: u64) -> Value {
        let began = Instant::now();
        let deadline = began + Duration::from_secs(120);
        let status = loop {
            assert!(self.agent.is_running(), "round {round}: the agent exited by itself after a power cut");
            if let Some(status) = agent_status(self.site.web_port) {
                break status;
            }
            assert!(Instant::now() < deadline, "round {round}: the agent did not start within two minutes");
            std::thread::sleep(Duration::from_millis(100));
        };
        let this_run = plain_log(&log_since(&self.site.log, self.log_offset));
        for repair in REPAIRS {
            assert!(!this_run.contains(repair), "round {round}: the agent repaired its state at the start: {repair:?}");
        }
        self.figures.restarts_ready += 1;
        self.figures.start_time += began.elapsed();
        status
    }

    /// The commands of a round, while the agent runs: a replay of the last `set` now and then
    /// (refused: its nonce survived the cuts), a new `set`, less often a model.
    fn send_commands(&mut self, round: u64) {
        if !self.broker.is_running() {
            return;
        }
        let replay = self.last_set.as_ref().filter(|set| {
            set.sent.elapsed() < Duration::from_secs(120) && self.platform.ack(&set.id, |a| a["ok"] == true).is_some()
        });
        if let Some(set) = replay.filter(|_| self.rng.chance(4)) {
            let (id, envelope) = (set.id.clone(), set.envelope.clone());
            self.subscriber.publish(&format!("edge/{DEVICE}/cmd/set"), envelope);
            let refused = |p: &Platform| p.ack(&id, |a| a["ok"] == false).is_some();
            self.platform.take_until(&self.subscriber, Duration::from_secs(30), refused);
            let ack = self.platform.ack(&id, |a| a["ok"] == false);
            let ack = ack.unwrap_or_else(|| panic!("round {round}: {id} sent a second time was not refused"));
            assert_eq!(ack["error"]["code"], "replayed", "round {round}: {ack}");
            self.figures.replays_refused += 1;
        }
        if self.rng.chance(3) {
            self.figures.sets_sent += 1;
            let id = format!("set-{}", self.figures.sets_sent);
            let value = MIN_SCORES[(self.figures.sets_sent % 2) as usize];
            let envelope =
                self.command("set", &json!({ "correlation_id": id, "values": { "rules.object.min_score": value } }));
            self.last_set = Some(SentSet { id, value, envelope, sent: Instant::now(), cut: false });
        }
        if self.rng.chance(3) {
            self.figures.switches_sent += 1;
            let n = self.figures.switches_sent;
            let bytes = nanodet_variant(n);
            let name = format!("nanodet-{n}.onnx");
            std::fs::write(self.site.served.join(&name), &bytes).unwrap();
            let id = format!("model-{n}");
            let command = json!({
                "correlation_id": id,
                "name": "nanodet",
                "url": self.site.files.url(&name),
                "sha256": sha256_hex(&bytes),
                "signature": self.site.models.sign_hex(&bytes),
            });
            self.command("model", &command);
            self.switch = Some(id);
        }
    }

    /// Lets the agent run until the moment of the cut: random, sometimes long enough for a
    /// probation to end, sometimes the instant an acknowledgement arrives.
    fn run_until_the_cut(&mut self) {
        let pending_set = self.last_set.as_ref().filter(|s| !s.cut).map(|s| s.id.clone());
        let pending_switch = self.switch.clone();
        let target = match (pending_set, pending_switch) {
            (_, Some(id)) if self.rng.chance(2) => {
                // The switch itself, or the end of its probation.
                let stage = if self.rng.chance(2) { "switched" } else { "confirmed" };
                Some((id, stage))
            }
            (Some(id), _) if self.rng.chance(2) => Some((id, "")),
            _ => None,
        };
        if let Some((id, stage)) = target {
            let acked = |p: &Platform| {
                p.ack(&id, |a| a["ok"] == false || stage.is_empty() || a["result"]["stage"] == stage).is_some()
            };
            self.platform.take_until(&self.subscriber, Duration::from_secs(30), acked);
            if acked(&self.platform) {
                self.figures.cuts_right_after_an_ack += 1;
            }
            return;
        }
        let wait = if self.rng.chance(4) { self.rng.millis(3000, 9000) } else { self.rng.millis(100, 3000) };
        self.platform.take(&self.subscriber, wait);
    }

    /// SIGKILL, then the power cut (a third of them torn), then the checks on what is durable.
    /// Returns what the next start must run.
    fn kill_and_cut(&mut self, round: u64) -> ModelAfterCut {
        assert!(self.agent.is_running(), "round {round}: the agent exited by itself");
        self.agent.kill_hard();
        self.switch = None;
        if let Some(set) = &mut self.last_set {
            set.cut = true;
        }
        // What was acknowledged before the cut must hold after it.
        let min_score = self
            .last_set
            .as_ref()
            .filter(|set| self.platform.ack(&set.id, |a| a["ok"] == true).is_some())
            .map(|set| set.value);
        self.log.catch_up();
        let model = self.log.model_after_cut(&self.original_model);
        if self.rng.chance(3) {
            self.figures.torn_cuts += 1;
            let seed = self.rng.next();
            self.site.fs.power_cut_torn(seed);
        } else {
            self.site.fs.power_cut();
        }
        self.figures.cuts += 1;
        self.check_after_cut(round, min_score);
        model
    }

    /// The checks on the durable state alone (the agent is dead): the chain verifies, the config
    /// is whole and holds an acknowledged `set`, the small state files are whole.
    ///
    /// The chain is verified in the backing folder: after a cut it is exactly what the mount shows
    /// (checked here for the chain's own folder), and reading the growing evidence through the
    /// test's FUSE server at every cut made the long form's rounds slower and slower.
    fn check_after_cut(&mut self, round: u64, acknowledged_min_score: Option<f64>) {
        let began = Instant::now();
        self.log.catch_up();
        let site = &self.site;
        let durable_state = site.fs.backing().join("state");
        let chain_folder = |state: &Path| listing(&state.join("evidence/chain"));
        assert_eq!(
            chain_folder(&site.state),
            chain_folder(&durable_state),
            "round {round}: after a cut the mount shows another chain folder than the backing folder holds"
        );
        let verifying = Instant::now();
        let output = Command::new(agent_binary()).args(["verify", "--state-dir"]).arg(&durable_state).output().unwrap();
        let verify_time = verifying.elapsed();
        self.figures.verify_time += verify_time;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        // An empty chain is a box that never got as far as its first record.
        let committed = &self.log.committed;
        let never_started = text.contains("the chain is empty") && committed.is_empty();
        assert!(
            output.status.success() || never_started,
            "round {round}: the chain does not verify after a power cut:\n{text}\nthe state folder after the cut:\n{}",
            listing(&site.state)
        );
        let min_score = check_config(&site.config, round);
        if let Some(acknowledged) = acknowledged_min_score {
            assert!(
                (min_score - acknowledged).abs() < 1e-6,
                "round {round}: a `set` of min_score {acknowledged} was acknowledged, the config after the cut has {min_score}"
            );
        }
        check_state_files(&site.state, round);
        // What the chain holds that the outbox never committed: decided in the commit window.
        self.chain.refresh(&durable_state);
        let window: Vec<_> = self.chain.iter().filter(|(k, _)| !committed.contains(*k)).collect();
        let new: Vec<_> = window.iter().filter(|(k, _)| !self.window.contains(*k)).collect();
        let frames: BTreeSet<_> = new.iter().map(|(_, record)| &record.frame).collect();
        assert!(
            frames.len() <= COMMIT_WINDOW_FRAMES,
            "round {round}: events of {} frames were decided and not committed at this cut; the commit window is \
             {COMMIT_WINDOW_FRAMES} frames: {:?}",
            frames.len(),
            new.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        self.figures.window_max = self.figures.window_max.max(new.len() as u64);
        self.figures.window_frames_max = self.figures.window_frames_max.max(frames.len() as u64);
        let window: Vec<(String, u64)> = window.into_iter().map(|(k, _)| k.clone()).collect();
        self.window.extend(window);
        self.figures.other_checks_time += began.elapsed().saturating_sub(verify_time);
    }

    /// `edge-agent key rotate` while the agent is stopped; half the time the power goes in the
    /// middle of it.
    fn rotate_key(&mut self, round: u64) {
        let mut rotate = Command::new(agent_binary())
            .args(["key", "rotate", "--config"])
            .arg(&self.site.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if self.rng.chance(2) {
            std::thread::sleep(self.rng.millis(1, 60));
            let _ = rotate.kill();
            let _ = rotate.wait();
            self.site.fs.power_cut();
            self.figures.cuts += 1;
            self.figures.rotations_cut += 1;
            self.check_after_cut(round, None);
        } else {
            let output = rotate.wait_with_output().unwrap();
            let why = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "round {round}: `edge-agent key rotate` failed: {why}");
            self.figures.rotations_finished += 1;
        }
    }

    fn restart(&mut self) {
        self.log_offset = std::fs::metadata(&self.site.log).map(|m| m.len()).unwrap_or(0);
        self.agent.restart(&self.site.config);
        self.figures.restarts += 1;
    }

    /// The first start after a cut runs the model it must (see [`ModelAfterCut`]).
    fn check_model(&mut self, status: &Value, expected: &ModelAfterCut, round: u64) {
        let running = status["models"][0]["sha256"].as_str().unwrap_or_default();
        match expected {
            ModelAfterCut::Exactly(sha) => assert_eq!(
                running, sha,
                "round {round}: the agent runs another model than the one it had confirmed before the cut"
            ),
            ModelAfterCut::Either { previous, new } => {
                assert!(
                    running == previous || running == new,
                    "round {round}: the agent runs model {running}, neither the previous {previous} nor the new {new}"
                );
                if running == previous {
                    self.figures.switches_rolled_back_at_start += 1;
                } else {
                    self.figures.switches_kept_at_start += 1;
                }
            }
        }
    }
}

/// The durable config is whole: it loads, names the device, both cameras and the platform key (its
/// first and last sections), with a threshold one `set` wrote and a model file that is there.
/// Returns the threshold.
fn check_config(config: &Path, round: u64) -> f64 {
    let loaded = edge_agent::config::Config::load(config)
        .unwrap_or_else(|e| panic!("round {round}: the config after the cut does not load: {e:#}"));
    assert_eq!(loaded.device_id, DEVICE, "round {round}: the config lost its device id");
    assert_eq!(loaded.cameras.len(), 2, "round {round}: the config lost a camera");
    assert!(loaded.commands.platform_public_key.is_some(), "round {round}: the config lost its last section");
    let min_score = f64::from(loaded.rules.object.min_score);
    assert!(
        MIN_SCORES.iter().any(|s| (s - min_score).abs() < 1e-6),
        "round {round}: rules.object.min_score is {min_score}, neither value `set` wrote"
    );
    let manifest = &loaded.models[0].manifest;
    assert!(manifest.is_file(), "round {round}: the config names model {} which is not there", manifest.display());
    min_score
}

/// The small state files are whole where they exist: the nonce store, a pending switch and today's
/// statistics are JSON, the key is 64 hex digits and the public key is whole.
fn check_state_files(state: &Path, round: u64) {
    for name in ["command-nonces.json", "model-switch-pending.json", "stats-today.json"] {
        if let Ok(bytes) = std::fs::read(state.join(name)) {
            let parsed = serde_json::from_slice::<Value>(&bytes);
            assert!(parsed.is_ok(), "round {round}: {name} is half-written after the cut ({} bytes)", bytes.len());
        }
    }
    let hex64 = |text: &str| text.trim().len() == 64 && text.trim().bytes().all(|b| b.is_ascii_hexdigit());
    if let Ok(key) = std::fs::read_to_string(state.join("keys/device.key")) {
        assert!(hex64(&key), "round {round}: device.key is not 64 hex digits after the cut ({} bytes)", key.len());
        let public = std::fs::read_to_string(state.join("keys/device.pub")).unwrap_or_default();
        assert!(hex64(&public), "round {round}: device.pub is not whole after the cut ({} bytes)", public.len());
    }
}

#[test]
fn power_cuts_at_random_moments_lose_no_committed_event_and_the_agent_starts_by_itself() {
    let rounds: u64 = std::env::var("POWER_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed: u64 = std::env::var("POWER_CUTS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64
    });
    eprintln!("power cuts: {rounds} rounds, POWER_CUTS_SEED={seed}");
    let (began, progress_every) = (Instant::now(), (rounds / 10).clamp(10, 100));
    let Some(broker) = Mosquitto::start_with(BrokerOptions { persistence: true, ..Default::default() }) else {
        return;
    };
    let Some(site) = site(&broker) else { return };
    let subscriber = Subscriber::connect_persistent(broker.port, &format!("edge/{DEVICE}/#"), "cut-platform");
    std::thread::sleep(Duration::from_millis(300));
    let agent = Agent::start(&site.config, &site.log);
    let log_path = site.log.clone();
    let mut run = Run {
        site,
        broker,
        subscriber,
        agent,
        rng: Rng(seed),
        platform: Platform::default(),
        figures: Figures { restarts: 1, ..Default::default() },
        window: BTreeSet::new(),
        original_model: String::new(),
        last_set: None,
        switch: None,
        log_offset: 0,
        log: LogSoFar::new(&log_path),
        chain: ChainOnDisk::default(),
    };
    let status = run.wait_ready(0);
    run.original_model = status["models"][0]["sha256"].as_str().unwrap_or_default().to_string();
    // Each start after a cut is seen through to ready, but for cuts while it starts (never twice in
    // a row, so the state every cut leaves is seen to start).
    let (mut seen_ready, mut cut_while_starting) = (true, false);
    let mut expected_model = ModelAfterCut::Exactly(run.original_model.clone());
    for round in 0..rounds {
        if !seen_ready && !cut_while_starting && run.rng.chance(5) {
            let wait = run.rng.millis(0, 2500);
            run.platform.take(&run.subscriber, wait);
            run.figures.cuts_while_starting += 1;
            cut_while_starting = true;
        } else {
            if !seen_ready {
                let status = run.wait_ready(round);
                run.check_model(&status, &expected_model, round);
            }
            cut_while_starting = false;
            run.send_commands(round);
            run.run_until_the_cut();
        }
        expected_model = run.kill_and_cut(round);
        if run.rng.chance(8) {
            run.rotate_key(round);
        }
        // The broker comes and goes (away for two rounds on average).
        if run.broker.is_running() && run.rng.chance(8) {
            run.broker.stop_gracefully();
        } else if !run.broker.is_running() && run.rng.chance(2) {
            run.broker.restart();
            run.figures.broker_restarts += 1;
        }
        run.restart();
        seen_ready = false;
        if (round + 1) % progress_every == 0 {
            let f = &run.figures;
            eprintln!(
                "power cuts: {} rounds, {} cuts, {} starts seen ready, {:.0} s so far; checks {:.1} s ({:.1} s verify), \
                 starts {:.1} s",
                round + 1,
                f.cuts,
                f.restarts_ready,
                began.elapsed().as_secs_f64(),
                (f.verify_time + f.other_checks_time).as_secs_f64(),
                f.verify_time.as_secs_f64(),
                f.start_time.as_secs_f64()
            );
        }
    }
    if !run.broker.is_running() {
        run.broker.restart();
        run.figures.broker_restarts += 1;
    }
    let status = run.wait_ready(rounds);
    run.check_model(&status, &expected_model, rounds);

    // Drain: every event committed before any cut arrives. The agent goes on deciding events
    // meanwhile, so what is checked is what the log held before the last messages were taken (an
    // event committed after that is not yet due: counting it lost was a race of this test).
    let deadline = Instant::now() + Duration::from_secs(120);
    let committed = loop {
        run.log.catch_up();
        let committed = run.log.committed.clone();
        run.platform.take(&run.subscriber, Duration::from_millis(500));
        if committed.iter().all(|k| run.platform.events.contains_key(k)) || Instant::now() > deadline {
            break committed;
        }
    };
    let platform = &run.platform;
    let delivered: BTreeSet<(String, u64)> = platform.events.keys().cloned().collect();
    let lost: Vec<&(String, u64)> = committed.difference(&delivered).collect();
    let duplicates: u64 = platform.events.values().map(|n| n - 1).sum();
    run.chain.refresh(&run.site.state);
    let chain = &run.chain;
    let never_committed = run.window.iter().filter(|k| !delivered.contains(*k)).count();
    let acked = |prefix: &str, n: u64, accept: &dyn Fn(&Value) -> bool| {
        (1..=n).filter(|i| platform.ack(&format!("{prefix}-{i}"), accept).is_some()).count()
    };
    let sets_acked = acked("set", run.figures.sets_sent, &|a| a["ok"] == true);
    let confirmed = acked("model", run.figures.switches_sent, &|a| a["result"]["stage"] == "confirmed");
    // What became of the model commands, as their acks say.
    let mut model_acks: BTreeMap<String, u64> = BTreeMap::new();
    for (id, acks) in platform.acks.iter().filter(|(id, _)| id.starts_with("model-")) {
        let _ = id;
        for ack in acks {
            let what = ack["result"]["stage"].as_str().or(ack["error"]["code"].as_str()).unwrap_or("?");
            *model_acks.entry(what.to_string()).or_default() += 1;
        }
    }
    let (f, totals) = (&run.figures, run.site.fs.totals());
    eprintln!(
        "power cuts: {} ({} torn, {} while starting, {} right after an ack, {} in a key rotation); \
         restarts {}, {} seen ready, none repaired\n\
         events: {} decided (chain), {} committed (logged as queued), {} delivered, {} lost, {} duplicates; \
         {} decided and never committed (at most {} of {} frames at one cut)\n\
         commands: {} set sent, {} acked, {} replays refused; {} model switches sent, {} confirmed, \
         {} rolled back at a start, {} kept at a start (acks: {:?}); key rotations {} finished, {} cut; \
         broker restarts {}\n\
         crashfs: {} file syncs, {} folder syncs; the cuts dropped {} writes ({} KiB), {} truncations, \
         {} folder entries, tore {} files",
        f.cuts,
        f.torn_cuts,
        f.cuts_while_starting,
        f.cuts_right_after_an_ack,
        f.rotations_cut,
        f.restarts,
        f.restarts_ready,
        chain.len(),
        committed.len(),
        delivered.len(),
        lost.len(),
        duplicates,
        never_committed,
        f.window_max,
        f.window_frames_max,
        f.sets_sent,
        sets_acked,
        f.replays_refused,
        f.switches_sent,
        confirmed,
        f.switches_rolled_back_at_start,
        f.switches_kept_at_start,
        model_acks,
        f.rotations_finished,
        f.rotations_cut,
        f.broker_restarts,
        totals.file_syncs,
        totals.dir_syncs,
        totals.dropped.writes_dropped,
        totals.dropped.bytes_dropped / 1024,
        totals.dropped.truncations_dropped,
        totals.dropped.entries_dropped,
        totals.dropped.torn_files,
    );
    if !lost.is_empty() {
        let outbox = agent_status(run.site.web_port).map(|s| s["outbox"].clone()).unwrap_or_default();
        eprintln!("power cuts: the outbox at the end: {outbox}");
        for key in &lost {
            eprintln!("power cuts: lost {key:?}: {}", where_committed(&run.whole_log(), key));
        }
        keep_for_inspection(&run);
    }
    assert!(lost.is_empty(), "{} committed events never arrived, e.g. {:?}", lost.len(), &lost[..lost.len().min(3)]);
    // Every event that arrived is in the chain on disk, at the sequence number it carried.
    for (key, (seq, sha256)) in &platform.proofs {
        let record = chain.get(key).unwrap_or_else(|| panic!("event {key:?} arrived but its chain record is gone"));
        assert_eq!((record.seq, &record.sha256), (*seq, sha256), "event {key:?}: the chain record on disk differs");
    }
    assert!(!committed.is_empty(), "no event was committed");
    assert_eq!(f.cuts_while_starting + f.restarts_ready, f.restarts, "every start was seen ready or cut");
}
