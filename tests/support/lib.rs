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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
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
        let mut broker = Self { program, config, port, child: None, _dir: dir };
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
}

/// A real MQTT client subscribed to a filter; messages arrive on a channel.
pub struct Subscriber {
    pub messages: mpsc::Receiver<Received>,
    client: rumqttc::Client,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Self {
        let client_id = format!("e2e-subscriber-{}", std::process::id());
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        let (client, mut connection) = rumqttc::Client::new(options, 100);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce).expect("subscribe");
        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || {
            for notification in connection.iter() {
                match notification {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let received =
                            Received { topic: p.topic.clone(), payload: p.payload.to_vec(), retain: p.retain };
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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().map_err(|e| format!("GET {url}: {e}"))?;
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
