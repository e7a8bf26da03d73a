//! The agent as a systemd service: READY and watchdog pings over a real notify socket, pings that
//! stop when a camera loop really hangs, and a clean stop on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use edge_agent_tests::*;

fn write_config(dir: &Path, frames: &Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"device_id = "service-box"
state_dir = "state"

[web]
enabled = false

[[cameras]]
id = "yard"
source = {{ kind = "replay", path = "{frames}", fps = 2.0 }}

[[models]]
manifest = "{models}/nanodet.toml"

{extra}
"#,
            frames = frames.display(),
            models = repo_root().join("models").display(),
        ),
    )
    .unwrap();
    config
}

/// Messages systemd would receive, each with its arrival time.
fn read_notifications(socket: &UnixDatagram, until: Instant) -> Vec<(Instant, String)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match socket.recv(&mut buffer) {
            Ok(n) => received.push((Instant::now(), String::from_utf8_lossy(&buffer[..n]).to_string())),
            Err(_) => break,
        }
    }
    received
}

#[test]
fn ready_then_watchdog_pings_that_stop_when_a_camera_read_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    std::fs::copy(repo_root().join("models/samples/dog.jpg"), frames.join("a.jpg")).unwrap();
    // The second "picture" is a FIFO nobody writes to: opening it blocks forever, like a camera
    // driver stuck in the kernel.
    let fifo = frames.join("b.jpg");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let config = write_config(dir.path(), &frames, "[service]\nwatchdog_stall_secs = 2.0\n");

    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let socket_env = socket_path.display().to_string();
    let agent = Agent::start_with_env(
        &config,
        &dir.path().join("agent.log"),
        &[("NOTIFY_SOCKET", socket_env.as_str()), ("WATCHDOG_USEC", "400000")],
    );

    let notifications = read_notifications(&socket, Instant::now() + Duration::from_secs(25));
    let ready_at = notifications
        .iter()
        .find(|(_, m)| m.lines().any(|l| l == "READY=1"))
        .map(|(at, _)| *at)
        .unwrap_or_else(|| panic!("no READY=1 in {notifications:?}\n{}", agent.log_text()));
    let pings: Vec<Instant> =
        notifications.iter().filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1")).map(|(at, _)| *at).collect();
    assert!(pings.len() >= 2, "expected watchdog pings while frames moved, got {notifications:?}");
    assert!(pings[0] >= ready_at, "pings start after READY");
    let last_ping = *pings.last().unwrap();
    let silence = Instant::now().saturating_duration_since(last_ping);
    assert!(
        silence > Duration::from_secs(8),
        "pings should stop once the camera hangs; last ping {silence:?} ago\n{}",
        agent.log_text()
    );
    assert!(
        log_contains(&agent.log, "pipeline stalled: camera yard"),
        "the log should name the stalled loop:\n{}",
        agent.log_text()
    );
}

#[test]
fn an_idle_pipeline_keeps_pinging_the_watchdog() {
    // A camera that has ended (played once) is idle, not hung: systemd must not restart the box.
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    std::fs::copy(repo_root().join("models/samples/dog.jpg"), frames.join("a.jpg")).unwrap();
    let config = dir.path().join("agent.toml");
    let text = std::fs::read_to_string(write_config(dir.path(), &frames, "[service]\nwatchdog_stall_secs = 1.0\n"))
        .unwrap()
        .replace("fps = 2.0 }", "fps = 2.0, looping = false }");
    std::fs::write(&config, text).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let socket_env = socket_path.display().to_string();
    let agent = Agent::start_with_env(
        &config,
        &dir.path().join("agent.log"),
        &[("NOTIFY_SOCKET", socket_env.as_str()), ("WATCHDOG_USEC", "400000")],
    );
    let notifications = read_notifications(&socket, Instant::now() + Duration::from_secs(8));
    let pings: Vec<Instant> =
        notifications.iter().filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1")).map(|(at, _)| *at).collect();
    let last_ping = pings.last().copied().unwrap_or_else(|| panic!("no pings: {notifications:?}"));
    assert!(
        Instant::now().saturating_duration_since(last_ping) < Duration::from_secs(2),
        "pings stopped though nothing hung\n{}",
        agent.log_text()
    );
}

#[test]
fn sigterm_stops_the_agent_cleanly_with_a_stopped_status() {
    let Some(broker) = Mosquitto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), &repo_root().join("models/samples"), &format!("[mqtt]\nurl = \"{}\"\n", broker.url()));
    let subscriber = Subscriber::connect(broker.port, "edge/service-box/status");
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));
    let online = subscriber.wait_for("/status", Duration::from_secs(30), |s| s["state"] == "online");
    assert!(online.is_some(), "agent never said online\n{}", agent.log_text());

    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(15));
    let status = status.unwrap_or_else(|| panic!("still running 15 s after SIGTERM\n{}", agent.log_text()));
    assert!(status.success(), "exit status {status:?}\n{}", agent.log_text());
    let stopped = subscriber.wait_for("/status", Duration::from_secs(10), |s| s["state"] == "stopped");
    assert!(stopped.is_some(), "no retained `stopped` status\n{}", agent.log_text());
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) =
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().find(|p| Path::new(p).exists())
    else {
        missing_real_part("systemd-analyze", "install Debian's `systemd` package");
        return;
    };
    let unit = std::fs::read_to_string(repo_root().join("systemd/edge-agent.service")).unwrap();
    for required in
        ["Type=notify", "WatchdogSec=", "Restart=on-failure", "SupplementaryGroups=video", "StateDirectory="]
    {
        assert!(unit.contains(required), "the unit lacks {required}");
    }
    // verify wants ExecStart's program to exist: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("edge-agent.service");
    std::fs::write(&local, unit.replace("/usr/bin/edge-agent", &agent_binary().display().to_string())).unwrap();
    let output = std::process::Command::new(analyze).arg("verify").arg(&local).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify failed:\n{stderr}");
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("edge-agent.service")).collect();
    assert!(complaints.is_empty(), "systemd-analyze has complaints about the unit:\n{stderr}");
}
