//! Helpers for the end-to-end tests: they run the real `edge-agent` binary against a real
//! `mosquitto` that each test starts on a free port (so it can stop and restart it), and talk to
//! it over real sockets. In CI (`CI=true`) a missing real part fails the test; on a developer's
//! machine it is skipped with a message saying what to install.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod arrivals;
pub mod cluster;
pub mod crashfs;
pub mod fleet;
pub mod mqtt_proxy;
pub mod platform;
pub mod postgres;
pub use platform::PlatformKey;
pub mod rtsp;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A real part is missing: fail in CI, skip elsewhere. Returns normally only when skipping.
pub fn missing_real_part(what: &str, how: &str) {
    if in_ci() {
        panic!("{what} is required in CI but was not found; {how}");
    }
    eprintln!("SKIPPED: {what} not found; {how}");
}

/// The agent binary built next to this test (`target/<profile>/edge-agent`), or $EDGE_AGENT_BIN.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EDGE_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/edge-agent
    let candidate = exe.parent().and_then(Path::parent).map(|p| p.join("edge-agent"));
    match candidate {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "the edge-agent binary is not built next to {}; run `cargo build -p edge-agent` first \
             (scripts/test.sh does) or set EDGE_AGENT_BIN",
            exe.display()
        ),
    }
}

/// The platform tool built next to this test (`target/<profile>/edge-platform`), or $EDGE_PLATFORM_BIN.
pub fn platform_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EDGE_PLATFORM_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    let candidate = exe.parent().and_then(Path::parent).map(|p| p.join("edge-platform"));
    match candidate {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "the edge-platform binary is not built next to {}; run `cargo build --workspace --bins` first \
             (scripts/test.sh does) or set EDGE_PLATFORM_BIN",
            exe.display()
        ),
    }
}

/// A port nothing listens on now, and never handed out before in this test process: the tests of
/// one file run in parallel, and a broker one test stops and restarts must find its port again, not
/// another test's broker on it (seen in tests/broker_cluster.rs: the box "returned" to a stranger).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
        if HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

pub(crate) fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A mosquitto broker on loopback that the test owns.
pub struct Mosquitto {
    program: PathBuf,
    config: PathBuf,
    pub port: u16,
    /// The listener the agent uses: `port` unless [`BrokerOptions`] asked for TLS or passwords.
    pub agent_port: u16,
    agent_tls: bool,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker on a free port; `None` when mosquitto is missing outside CI.
    pub fn start() -> Option<Self> {
        let Some(program) = find_program("mosquitto", &["/usr/sbin", "/usr/local/sbin"]) else {
            missing_real_part("mosquitto", "install it with `apt-get install mosquitto` (scripts/test.sh does)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"),
        )
        .expect("write mosquitto.conf");
        let mut broker = Self { program, config, port, agent_port: port, agent_tls: false, child: None, _dir: dir };
        broker.restart();
        Some(broker)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the broker on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
        assert!(wait_for_port(self.port, Duration::from_secs(10)), "mosquitto did not listen on port {}", self.port);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The agent binary running with a config file; killed when dropped. Its log goes to a file that
/// is printed when a test fails.
pub struct Agent {
    child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(config: &Path, log: &Path) -> Self {
        Self::start_with_env(config, log, &[])
    }

    /// Starts with extra environment variables (e.g. systemd's NOTIFY_SOCKET and WATCHDOG_USEC).
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        let log_file = std::fs::File::create(log).expect("create agent log");
        let child = Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start edge-agent");
        Self { child, log: log.to_owned() }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, KILL, ...) with the system's `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} {} failed", self.pid());
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the agent process, from /proc.
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- edge-agent log ({}) ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// One message received by [`Subscriber`].
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// QoS of the delivery: the publisher's, as the test subscribes at QoS 1.
    pub qos: u8,
}

/// A real MQTT client subscribed to a filter; messages arrive on a channel.
pub struct Subscriber {
    pub messages: mpsc::Receiver<Received>,
    client: rumqttc::Client,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Self {
        Self::connect_with(port, filter, None)
    }

    /// A subscriber with a persistent session (clean session off) under `client_id`: messages
    /// published while it is away (broker restart) wait for it, if the broker keeps sessions.
    pub fn connect_persistent(port: u16, filter: &str, client_id: &str) -> Self {
        Self::connect_with(port, filter, Some(client_id))
    }

    /// A persistent subscriber that logs in as [`TEST_USER`] (brokers with passwords).
    pub fn connect_persistent_as_tester(port: u16, filter: &str, client_id: &str) -> Self {
        Self::connect_full(port, filter, Some(client_id), Some(TEST_USER))
    }

    fn connect_with(port: u16, filter: &str, persistent_id: Option<&str>) -> Self {
        Self::connect_full(port, filter, persistent_id, None)
    }

    fn connect_full(port: u16, filter: &str, persistent_id: Option<&str>, login: Option<(&str, &str)>) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let client_id = match persistent_id {
            Some(id) => id.to_string(),
            None => format!(
                "e2e-subscriber-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        };
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
        options.set_clean_session(persistent_id.is_none());
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut connection) = rumqttc::Client::new(options, 1000);
        let resubscriber = client.clone();
        let filter = filter.to_string();
        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || {
            for notification in connection.iter() {
                match notification {
                    // Subscribe on every connect: a restarted broker may have forgotten us.
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = resubscriber.try_subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let received = Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            qos: p.qos as u8,
                        };
                        if sender.send(received).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        Self { messages, client }
    }

    /// Publishes a command (or anything) at QoS 1.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into()).expect("publish");
    }

    /// Every message that arrives within `duration`.
    pub fn collect_for(&self, duration: Duration) -> Vec<Received> {
        let deadline = Instant::now() + duration;
        let mut all = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.messages.recv_timeout(left) {
                Ok(message) => all.push(message),
                Err(_) => break,
            }
        }
        all
    }

    /// Waits for the first message on a topic ending in `suffix` that `accept` takes.
    pub fn wait_for(
        &self,
        suffix: &str,
        timeout: Duration,
        mut accept: impl FnMut(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(message) = self.messages.recv_timeout(left) else {
                return None;
            };
            if !message.topic.ends_with(suffix) {
                continue;
            }
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&message.payload) {
                if accept(&json) {
                    return Some(json);
                }
            }
        }
        None
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// GET over plain HTTP; returns status and body.
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let (status, body) = http_get_bytes(url)?;
    let body = String::from_utf8(body).map_err(|_| format!("GET {url}: the body is not UTF-8"))?;
    Ok((status, body))
}

/// GET over plain HTTP; returns status and the body's bytes (a picture).
pub fn http_get_bytes(url: &str) -> Result<(u16, Vec<u8>), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body =
        response.body_mut().with_config().limit(64 << 20).read_to_vec().map_err(|e| format!("GET {url}: {e}"))?;
    Ok((status, body))
}

/// Polls `check` until it returns Some or the time is up.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads a line-oriented log until `needle` shows up; for tests that wait on the agent's own words.
pub fn log_contains(path: &Path, needle: &str) -> bool {
    std::fs::File::open(path)
        .map(|f| BufReader::new(f).lines().map_while(Result::ok).any(|l| l.contains(needle)))
        .unwrap_or(false)
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes.
pub fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// What a test broker needs beyond an anonymous plain listener: a second listener for the agent
/// with passwords and/or TLS, and persistence (sessions survive a graceful restart).
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// (user, password) pairs for the agent's listener; empty: anonymous.
    pub users: Vec<(String, String)>,
    pub tls: Option<BrokerTls>,
    /// Keep sessions and queued messages across [`Mosquitto::stop_gracefully`] + restart.
    pub persistence: bool,
    /// Lines added at the end of mosquitto.conf, e.g. a bridge to another broker.
    pub extra_config: String,
    /// Log connections and errors only, not every packet (benchmarks measure the broker's CPU).
    pub quiet_log: bool,
}

#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub require_client_certificate: bool,
}

impl Mosquitto {
    /// A broker with an anonymous plain listener on `port` (for the test's own subscriber) and,
    /// when options ask for it, a second listener on `agent_port` with passwords and/or TLS.
    pub fn start_with(options: BrokerOptions) -> Option<Self> {
        let Some(program) = find_program("mosquitto", &["/usr/sbin", "/usr/local/sbin"]) else {
            missing_real_part("mosquitto", "install it with `apt-get install mosquitto` (scripts/test.sh does)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        // Started as root, mosquitto drops to its own user before it writes its log and sessions.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod broker folder");
        let port = free_port();
        let agent_port = if options.tls.is_some() { free_port() } else { port };
        // One security setting for the whole broker (no per_listener_settings): a session
        // restored from persistence then keeps receiving before its client reconnects.
        let mut text = format!(
            "max_queued_messages 100000\nlog_dest file {}\nlog_type {}\n",
            dir.path().join("mosquitto.log").display(),
            if options.quiet_log { "notice\nlog_type error\nlog_type warning" } else { "all" }
        );
        if options.persistence {
            text.push_str(&format!("persistence true\npersistence_location {}/\n", dir.path().display()));
        } else {
            text.push_str("persistence false\n");
        }
        if options.users.is_empty() {
            text.push_str("allow_anonymous true\n");
        } else {
            let passwords = dir.path().join("passwords");
            write_password_file(&passwords, &options.users);
            text.push_str(&format!("allow_anonymous false\npassword_file {}\n", passwords.display()));
        }
        text.push_str(&format!("listener {port} 127.0.0.1\n"));
        if let Some(tls) = &options.tls {
            text.push_str(&format!(
                "listener {agent_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                tls.ca_file.display(),
                tls.cert_file.display(),
                tls.key_file.display(),
                tls.require_client_certificate
            ));
        }
        text.push_str(&options.extra_config);
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(&config, text).expect("write mosquitto.conf");
        let mut broker =
            Self { program, config, port, agent_port, agent_tls: options.tls.is_some(), child: None, _dir: dir };
        broker.restart();
        assert!(wait_for_port(agent_port, Duration::from_secs(10)), "mosquitto did not listen on port {agent_port}");
        Some(broker)
    }

    /// The URL the agent should use (`mqtts://` on the TLS listener).
    pub fn agent_url(&self) -> String {
        let scheme = if self.agent_tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.agent_port)
    }

    /// Rewrites the agent listener's users; takes effect at the next restart.
    pub fn set_users(&mut self, users: &[(String, String)]) {
        write_password_file(&self._dir.path().join("passwords"), users);
    }

    /// Replaces the TLS files of the agent listener; takes effect at the next restart.
    pub fn set_tls(&mut self, tls: &BrokerTls) {
        let text = std::fs::read_to_string(&self.config).expect("read mosquitto.conf");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !["cafile ", "certfile ", "keyfile ", "require_certificate "].iter().any(|k| l.starts_with(k)))
            .collect();
        let mut text = kept.join("\n");
        text.push_str(&format!(
            "\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
            tls.ca_file.display(),
            tls.cert_file.display(),
            tls.key_file.display(),
            tls.require_client_certificate
        ));
        std::fs::write(&self.config, text).expect("write mosquitto.conf");
    }

    /// SIGTERM and wait: mosquitto saves its sessions (with `persistence`) before it exits.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            let _ = child.wait();
        }
        let persistent = std::fs::read_to_string(&self.config).unwrap_or_default().contains("persistence true");
        if persistent {
            let saved = self._dir.path().join("mosquitto.db");
            assert!(saved.is_file(), "mosquitto did not save its sessions to {}", saved.display());
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The broker's process id while it runs (CPU and memory figures from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's own log (brokers from [`Mosquitto::start_with`] only).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

/// The test's own subscriber on brokers with passwords.
pub const TEST_USER: (&str, &str) = ("e2e-tester", "e2e-tester-pass");

fn write_password_file(path: &Path, users: &[(String, String)]) {
    let _ = std::fs::remove_file(path);
    let mut users = users.to_vec();
    users.push((TEST_USER.0.to_string(), TEST_USER.1.to_string()));
    let program =
        find_program("mosquitto_passwd", &["/usr/bin", "/usr/sbin"]).expect("mosquitto_passwd (package mosquitto)");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut command = Command::new(&program);
        command.arg("-b");
        if i == 0 {
            command.arg("-c");
        }
        let status =
            command.arg(path).arg(user).arg(password).stdout(Stdio::null()).status().expect("run mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd failed for {user}");
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a child process id we own; no memory is shared.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

impl Agent {
    /// SIGKILL: the agent gets no chance to flush or say goodbye.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts the binary again on the same config, appending to the same log.
    pub fn restart(&mut self, config: &Path) {
        self.kill_hard();
        let log_file = std::fs::OpenOptions::new().append(true).open(&self.log).expect("open agent log");
        self.child = Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start edge-agent");
    }
}

/// The log without terminal colour codes.
pub fn plain_log(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// (camera, event id) of every incident whose `start` the agent logged as queued (the line comes
/// after the outbox commit), in log order. Later messages of an incident share its event id.
pub fn queued_events(log: &str) -> Vec<(String, String)> {
    let field = |line: &str, name: &str| {
        line.split_whitespace().find_map(|word| word.strip_prefix(&format!("{name}="))).map(String::from)
    };
    plain_log(log)
        .lines()
        .filter(|line| line.contains(" event ") && field(line, "revision").as_deref() == Some("0"))
        .filter_map(|line| Some((field(line, "camera")?, field(line, "event_id")?)))
        .collect()
}

/// Judge settings under which every arrival of an object is a new incident: no minimum duration,
/// a track is lost as soon as a frame misses it, and a reappearance in the same place is not
/// remembered. With [`coming_and_going_folder`] each arrival gives a `start` and an `end`.
pub const EVERY_ARRIVAL_IS_AN_EVENT: &str =
    "[rules.object]\nmin_duration_secs = 0.0\n\n[tracking]\nmax_lost_secs = 0.0\nstationary_memory_secs = 0.0\n";

/// A folder where the truck picture (dog.jpg) and a picture without it (coffee.png) take turns,
/// `arrivals` times: a replay camera that sees a truck come and go.
pub fn coming_and_going_folder(parent: &Path, name: &str, arrivals: usize) -> PathBuf {
    let folder = parent.join(name);
    std::fs::create_dir_all(&folder).expect("create frames folder");
    let samples = repo_root().join("models/samples");
    for i in 0..arrivals {
        std::fs::copy(samples.join("dog.jpg"), folder.join(format!("{:05}-dog.jpg", 2 * i))).expect("copy sample");
        std::fs::copy(samples.join("coffee.png"), folder.join(format!("{:05}-coffee.png", 2 * i + 1)))
            .expect("copy sample");
    }
    folder
}

/// A folder with `copies` copies of one sample picture: a replay camera's finite burst.
pub fn frames_folder(parent: &Path, name: &str, sample: &str, copies: usize) -> PathBuf {
    let folder = parent.join(name);
    std::fs::create_dir_all(&folder).expect("create frames folder");
    let source = repo_root().join("models/samples").join(sample);
    for i in 0..copies {
        std::fs::copy(&source, folder.join(format!("{i:05}-{sample}"))).expect("copy sample picture");
    }
    folder
}

/// The agent's `/api/status` as JSON.
pub fn agent_status(web_port: u16) -> Option<serde_json::Value> {
    let (code, body) = http_get(&format!("http://127.0.0.1:{web_port}/api/status")).ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// A CA and certificates signed by it, as PEM files, for TLS tests.
pub struct TestPki {
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// A new CA named `name` in `dir`, a server certificate for 127.0.0.1/localhost and a client
    /// certificate, all ECDSA P-256.
    pub fn generate(dir: &Path, name: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir).expect("pki folder");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose, cn: &str| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![purpose];
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) =
            leaf(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth, "broker");
        let (client_pem, client_key_pem) = leaf(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, "edge-box");
        let pki = Self {
            ca_file: dir.join(format!("{name}-ca.pem")),
            server_cert: dir.join(format!("{name}-server.pem")),
            server_key: dir.join(format!("{name}-server.key")),
            client_cert: dir.join(format!("{name}-client.pem")),
            client_key: dir.join(format!("{name}-client.key")),
        };
        for (path, text) in [
            (&pki.ca_file, ca_cert.pem()),
            (&pki.server_cert, server_pem),
            (&pki.server_key, server_key_pem),
            (&pki.client_cert, client_pem),
            (&pki.client_key, client_key_pem),
        ] {
            std::fs::write(path, text).expect("write PEM");
        }
        pki
    }

    pub fn broker_tls(&self, require_client_certificate: bool) -> BrokerTls {
        BrokerTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.server_cert.clone(),
            key_file: self.server_key.clone(),
            require_client_certificate,
        }
    }
}

/// A tiny real HTTP/1.1 file server on loopback (one thread, GET only), for model downloads.
pub struct FileServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FileServer {
    /// Serves the files of `root` by name: `GET /name` → 200 with the bytes, else 404.
    pub fn start(root: &Path) -> Self {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind file server");
        let port = listener.local_addr().expect("file server address").port();
        listener.set_nonblocking(true).expect("non-blocking listener");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let root = root.to_owned();
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request);
                let path = head.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                let file =
                    (!path.contains("..") && !path.is_empty()).then(|| std::fs::read(root.join(&path)).ok()).flatten();
                let _ = match file {
                    Some(bytes) => stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                bytes.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|_| stream.write_all(&bytes)),
                    None => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"),
                };
            }
        });
        Self { port, stop }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One replay camera of a test site.
pub struct ReplayCamera<'a> {
    pub id: &'a str,
    pub frames: &'a Path,
    pub fps: f64,
    /// false: the camera ends after the last picture (a finite burst of events).
    pub looping: bool,
}

/// Writes `agent.toml` in `dir`: nanodet only (fast), state in `dir/state`, web page on a free
/// port, reconnect backoff capped at 4 s, the given `[mqtt]` lines, cameras and extra sections.
/// Returns the config path and the web port.
pub fn write_agent_config(
    dir: &Path,
    device: &str,
    mqtt: &str,
    cameras: &[ReplayCamera],
    extra: &str,
) -> (PathBuf, u16) {
    let web_port = free_port();
    let mut text = format!(
        "device_id = \"{device}\"\nstate_dir = \"state\"\n\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n\n\
         [mqtt]\nreconnect_max_secs = 4\n{mqtt}\n\n[[models]]\nmanifest = \"{models}/nanodet.toml\"\n",
        models = repo_root().join("models").display(),
    );
    for camera in cameras {
        text.push_str(&format!(
            "\n[[cameras]]\nid = \"{}\"\nsource = {{ kind = \"replay\", path = \"{}\", fps = {}, looping = {} }}\n",
            camera.id,
            camera.frames.display(),
            camera.fps,
            camera.looping
        ));
    }
    text.push('\n');
    text.push_str(extra);
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).expect("write agent.toml");
    (path, web_port)
}

/// No waste photos ship with the project, so the site's classes are stand-ins made of the real
/// photos in calibration/example-site/samples: "residual" the coffee cup, "recyclable" metal (the
/// motorcycle, the rocket), "kitchen" animals standing in for organic waste (the cat, the dog of
/// dog.jpg). Each picture gives six crops of its region (whole, four corners and the centre at
/// 80 %), and a mirrored, darker copy six more: 60 crops. Held-out crops are other crops of the
/// same photos. Returns the site file.
pub fn stand_in_site(dir: &Path, keep: impl Fn(&str) -> bool) -> std::path::PathBuf {
    let samples = repo_root().join("calibration/example-site/samples");
    let folder = dir.join("samples");
    std::fs::create_dir_all(&folder).unwrap();
    let sources: [(&str, &str, Option<[u32; 4]>); 5] = [
        ("coffee.png", "residual", None),
        ("motorcycle_left.png", "recyclable", None),
        ("rocket.jpg", "recyclable", None),
        ("chelsea.png", "kitchen", None),
        ("dog.jpg", "kitchen", Some([110, 190, 330, 550])),
    ];
    let mut rows = String::from("file,label,x1,y1,x2,y2\n");
    for (file, label, region) in sources.into_iter().filter(|(f, _, _)| keep(f)) {
        let picture = image::open(samples.join(file)).unwrap().to_rgb8();
        let mut mirrored = image::imageops::flip_horizontal(&picture);
        for pixel in mirrored.pixels_mut() {
            pixel.0 = pixel.0.map(|v| (f32::from(v) * 0.8) as u8);
        }
        let (w, h) = picture.dimensions();
        let [x1, y1, x2, y2] = region.unwrap_or([0, 0, w, h]);
        let copy = format!("mirrored-{}", file.replace(".jpg", ".png"));
        std::fs::copy(samples.join(file), folder.join(file)).unwrap();
        mirrored.save(folder.join(&copy)).unwrap();
        for (name, [x1, x2]) in [(file.to_string(), [x1, x2]), (copy, [w - x2, w - x1])] {
            let (cw, ch) = ((x2 - x1) * 4 / 5, (y2 - y1) * 4 / 5);
            let corners = [
                (x1, y1),
                (x2 - cw, y1),
                (x1, y2 - ch),
                (x2 - cw, y2 - ch),
                (x1 + (x2 - x1 - cw) / 2, y1 + (y2 - y1 - ch) / 2),
            ];
            rows.push_str(&format!("{name},{label},{x1},{y1},{x2},{y2}\n"));
            for (cx, cy) in corners {
                rows.push_str(&format!("{name},{label},{cx},{cy},{},{}\n", cx + cw, cy + ch));
            }
        }
    }
    std::fs::write(dir.join("labels.csv"), rows).unwrap();
    let site = dir.join("site.toml");
    std::fs::write(&site, "site = \"station-7\"\n[samples]\nfolder = \"samples\"\nlabels = \"labels.csv\"\n").unwrap();
    site
}

/// The labels nanodet gives dog.jpg's pickup: a truck (0.36) and a car (0.35) on one box. One
/// vehicle is one track and one event (`tracking.vehicle_labels`), labelled with whichever scores
/// more over its sightings: a still picture says truck, a video's compression can tip it to car.
pub const PICKUP_LABELS: [&str; 2] = ["truck", "car"];

/// Whether an event is dog.jpg's pickup (see [`PICKUP_LABELS`]).
pub fn is_the_pickup(event: &serde_json::Value) -> bool {
    PICKUP_LABELS.iter().any(|label| event["label"] == *label)
}

/// The licence-plate set beside the checkout (`../shared/lpr`, or $EDGE_AGENT_LPR): its pictures,
/// labels and plate models. Required in CI.
pub fn lpr_dir() -> Option<PathBuf> {
    let dir =
        std::env::var_os("EDGE_AGENT_LPR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared/lpr"));
    if dir.join("labels.csv").is_file() {
        return Some(dir);
    }
    missing_real_part("the licence-plate set (../shared/lpr)", "set EDGE_AGENT_LPR to its folder");
    None
}

/// The Python that has jsonschema, from $EDGE_AGENT_SCHEMA_PYTHON (set by scripts/test.sh).
pub fn schema_python() -> Option<PathBuf> {
    let python = std::env::var_os("EDGE_AGENT_SCHEMA_PYTHON").map(PathBuf::from).filter(|p| p.is_file());
    if python.is_none() {
        missing_real_part(
            "Python with jsonschema (EDGE_AGENT_SCHEMA_PYTHON)",
            "run scripts/test.sh, which creates the venv and sets EDGE_AGENT_SCHEMA_PYTHON",
        );
    }
    python
}
