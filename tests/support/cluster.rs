//! A real clustered broker for the fleet tests: a three-node `nats-server` cluster (Debian's
//! package) with JetStream and MQTT on loopback ports the test owns, so a test can kill the node a
//! box uses and start it again. MQTT sessions, retained messages and QoS 1 messages live in
//! JetStream, replicated across the nodes, so any node can carry a box's persistent session.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{find_program, free_port, missing_real_part, wait_for_port};

pub struct NatsCluster {
    program: PathBuf,
    nodes: Vec<NatsNode>,
    dir: tempfile::TempDir,
}

struct NatsNode {
    config: PathBuf,
    mqtt_port: u16,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until each takes MQTT connections (JetStream elected its
    /// leaders); `None` when nats-server is missing outside CI.
    pub fn start(size: usize) -> Option<Self> {
        let Some(program) = find_program("nats-server", &["/usr/sbin", "/usr/local/bin"]) else {
            missing_real_part("nats-server", "install it with `apt-get install nats-server` (scripts/test.sh does)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
        let mut nodes = Vec::new();
        for (i, cluster_port) in cluster_ports.iter().enumerate() {
            let mqtt_port = free_port();
            let config = dir.path().join(format!("node{i}.conf"));
            let text = format!(
                "server_name: node{i}\nlisten: \"127.0.0.1:{client}\"\nmax_payload: 8MB\n\
                 jetstream {{ store_dir: \"{store}\" }}\n\
                 mqtt {{ listen: \"127.0.0.1:{mqtt_port}\" }}\n\
                 cluster {{ name: edge-test, listen: \"127.0.0.1:{cluster_port}\", routes: [{routes}] }}\n",
                client = free_port(),
                store = dir.path().join(format!("js{i}")).display(),
                routes = routes.join(", "),
            );
            std::fs::write(&config, text).expect("write nats config");
            nodes.push(NatsNode { config, mqtt_port, child: None });
        }
        let mut cluster = Self { program, nodes, dir };
        for i in 0..size {
            cluster.start_node(i);
        }
        for i in 0..size {
            assert!(cluster.wait_until_serving(i, Duration::from_secs(60)), "nats node {i} never took MQTT clients");
        }
        Some(cluster)
    }

    pub fn mqtt_port(&self, node: usize) -> u16 {
        self.nodes[node].mqtt_port
    }

    pub fn mqtt_url(&self, node: usize) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port(node))
    }

    pub fn mqtt_urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.mqtt_url(i)).collect()
    }

    /// SIGKILL: the node gets no chance to hand anything over.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again (same ports, same JetStream folder) and waits until it serves.
    pub fn restart(&mut self, node: usize) {
        self.kill(node);
        self.start_node(node);
        assert!(self.wait_until_serving(node, Duration::from_secs(60)), "nats node {node} did not come back");
    }

    /// The nodes' logs, for a failed test.
    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| std::fs::read_to_string(self.log_path(i)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_path(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("node{node}.log"))
    }

    fn start_node(&mut self, node: usize) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(node)).expect("open nats log");
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(&self.nodes[node].config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.nodes[node].child = Some(child);
    }

    /// The MQTT port listens before JetStream is ready; a session that gets its CONNACK proves it.
    fn wait_until_serving(&self, node: usize, timeout: Duration) -> bool {
        let port = self.mqtt_port(node);
        if !wait_for_port(port, timeout) {
            return false;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if mqtt_session_accepted(port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Whether a persistent MQTT session is accepted on `port` within a few seconds.
fn mqtt_session_accepted(port: u16) -> bool {
    let mut options = rumqttc::MqttOptions::new(format!("readiness-probe-{port}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(false);
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut accepted = false;
    while Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => {
                accepted = ack.code == rumqttc::ConnectReturnCode::Success;
                break;
            }
            Ok(Err(_)) => break,
            _ => {}
        }
    }
    let _ = client.disconnect();
    let _ = connection.recv_timeout(Duration::from_millis(200));
    accepted
}
