//! The platform's tool against real boxes: the `edge-platform` binary, three real agents reporting
//! through a real mosquitto, a real PostgreSQL cluster and SQLite. Commands the tool signs are
//! acked, forged and replayed ones refused, an offline box gets its command when it returns;
//! `watch` stores every event once across a broker restart and a box restart, both stores give
//! the same report, and a message changed, dropped or re-ordered on the way is named with its box
//! and record.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edge_agent_tests::mqtt_proxy::{MqttProxy, Tamper};
use edge_agent_tests::postgres::Postgres;
use edge_agent_tests::*;
use serde_json::Value;

fn tool(args: &[&str]) -> Output {
    Command::new(platform_binary()).args(args).output().expect("run edge-platform")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `keygen` into `dir`; the private key file and the public key.
fn keygen(dir: &Path) -> (PathBuf, String) {
    let out = tool(&["keygen", "--out", &dir.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let public = std::fs::read_to_string(dir.join("platform.pub")).unwrap().trim().to_string();
    assert!(text(&out).contains(&format!("platform_public_key = \"{public}\"")), "{}", text(&out));
    (dir.join("platform.key"), public)
}

/// A box: a replay camera on which a truck comes and goes (an event every arrival), evidence on.
struct TestBox {
    device: String,
    config: PathBuf,
    root: PathBuf,
    agent: Option<Agent>,
}

impl TestBox {
    fn new(parent: &Path, device: &str, broker_url: &str, platform_key: Option<&str>) -> Self {
        let root = parent.join(device);
        std::fs::create_dir_all(&root).unwrap();
        let frames = coming_and_going_folder(&root, "gate", 3);
        let cameras = [ReplayCamera { id: "gate", frames: &frames, fps: 2.0, looping: true }];
        let mqtt = format!("url = \"{broker_url}\"\ntelemetry_interval_secs = 2");
        let mut extra = EVERY_ARRIVAL_IS_AN_EVENT.to_string();
        if let Some(key) = platform_key {
            extra.push_str(&format!(
                "\n[commands]\nplatform_public_key = \"{key}\"\n\n[model_update]\npublic_key = \"{key}\"\nprobation_secs = 3\n"
            ));
        }
        let (config, _) = write_agent_config(&root, device, &mqtt, &cameras, &extra);
        Self { device: device.to_string(), config, root, agent: None }
    }

    fn start(&mut self) {
        self.agent = Some(Agent::start(&self.config, &self.root.join("agent.log")));
    }

    fn stop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            assert_eq!(agent.terminate(Duration::from_secs(30)), Some(0), "{} stops cleanly", self.device);
        }
    }
}

/// Waits until the retained status of every box says `state`.
fn wait_states(port: u16, devices: &[&str], state: &str) {
    let subscriber = Subscriber::connect(port, "edge/+/status");
    let mut seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while devices.iter().any(|d| seen.get(*d).map(String::as_str) != Some(state)) {
        assert!(Instant::now() < deadline, "statuses {seen:?}, wanted {state} for {devices:?}");
        for message in subscriber.collect_for(Duration::from_millis(300)) {
            let value: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
            if let (Some(device), Some(s)) = (value["device"].as_str(), value["state"].as_str()) {
                seen.insert(device.to_string(), s.to_string());
            }
        }
    }
}

#[test]
fn commands_signed_by_the_tool_are_acked_and_forged_replayed_or_late_ones_are_handled() {
    let Some(broker) = Mosquitto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&dir.path().join("keys"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let again = tool(&["keygen", "--out", &dir.path().join("keys").display().to_string()]);
    assert!(!again.status.success(), "keygen never overwrites a key: {}", text(&again));

    let devices = ["pt-1", "pt-2", "pt-3"];
    let mut boxes: Vec<TestBox> =
        devices.iter().map(|d| TestBox::new(dir.path(), d, &broker.url(), Some(&public))).collect();
    let spy = Subscriber::connect(broker.port, "edge/+/cmd/#");
    boxes.iter_mut().for_each(TestBox::start);
    wait_states(broker.port, &devices, "online");
    let url = broker.url();
    let key_arg = key.display().to_string();
    let base = ["command", "--broker", url.as_str(), "--key", key_arg.as_str()];

    // One command to three named boxes: three acks, a table of three ok rows.
    let mut args = base.to_vec();
    args.extend(["--device", "pt-1", "--device", "pt-2", "--device", "pt-3", "set", "rules.object.min_score=0.45"]);
    let out = tool(&args);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for device in devices {
        assert!(table.lines().any(|l| l.starts_with(device) && l.contains(" ok")), "{device} in\n{table}");
    }
    // Every box the broker holds a status for.
    let mut args = base.to_vec();
    args.extend(["--all", "reload"]);
    let out = tool(&args);
    assert!(out.status.success(), "{}", text(&out));
    // The table's rows (box, result, ...), not the acks printed as they came.
    let ok_rows =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.split_whitespace().nth(1) == Some("ok")).count();
    assert_eq!(ok_rows, 3, "{}", text(&out));

    // The envelope the tool sent pt-2, sent again by someone on the broker: refused as a replay.
    let sent = spy
        .collect_for(Duration::from_secs(1))
        .into_iter()
        .find(|m| m.topic == "edge/pt-2/cmd/set")
        .expect("the tool's set command to pt-2 was on the broker");
    let acks = Subscriber::connect(broker.port, "edge/pt-2/cmd/set/ack");
    std::thread::sleep(Duration::from_millis(300));
    acks.publish("edge/pt-2/cmd/set", sent.payload.clone());
    let ack = acks.wait_for("/cmd/set/ack", Duration::from_secs(30), |_| true).expect("an ack of the replay");
    assert_eq!(ack["error"]["code"], "replayed", "{ack}");

    // Signed by another key: refused, and the tool says so with a non-zero exit.
    let (forger, _) = keygen(&dir.path().join("forger"));
    let out =
        tool(&["command", "--broker", &url, "--key", &forger.display().to_string(), "--device", "pt-1", "reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("signature_invalid"), "{}", text(&out));

    // A box that is away gets the command, signed afresh, when it comes back before the deadline.
    boxes[2].stop();
    wait_states(broker.port, &["pt-3"], "stopped");
    let mut args = base.to_vec();
    args.extend(["--device", "pt-3", "--deadline", "120s", "snapshot", "--camera", "gate"]);
    let mut waiting =
        Command::new(platform_binary()).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(waiting.try_wait().unwrap().is_none(), "the tool waits for the box");
    boxes[2].start();
    let out = wait_output(waiting, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("pt-3") && l.contains(" ok")),
        "{}",
        text(&out)
    );

    // A model: the tool signs the file with the same key, and follows it to its confirmation.
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let mut variant = std::fs::read(repo_root().join("models/nanodet.onnx")).unwrap();
    let note = b"edge-platform test build";
    variant.extend([(6 << 3) | 2, note.len() as u8]);
    variant.extend_from_slice(note);
    std::fs::write(served.join("nanodet-v2.onnx"), &variant).unwrap();
    let files = FileServer::start(&served);
    let model_url = files.url("nanodet-v2.onnx");
    let file = served.join("nanodet-v2.onnx").display().to_string();
    let signed = tool(&["sign-model", &file, "--key", &key_arg, "--name", "nanodet", "--url", &model_url]);
    assert!(signed.status.success(), "{}", text(&signed));
    assert!(text(&signed).contains(&sha256_hex(&variant)), "{}", text(&signed));
    let mut args = base.to_vec();
    args.extend(["--device", "pt-1", "model", "--name", "nanodet", "--url", &model_url, "--file", &file]);
    let out = tool(&args);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("pt-1: model ok (switched)") && said.contains("pt-1: model ok (confirmed)"), "{said}");
    boxes.iter_mut().for_each(TestBox::stop);
}

fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("edge-platform did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait_with_output().unwrap()
}

/// `watch` as a platform runs it, its lines in a file.
struct Watch {
    child: Child,
    log: PathBuf,
}

impl Watch {
    fn start(broker_url: &str, store: &str, client_id: &str, log: PathBuf, extra: &[&str]) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(platform_binary())
            .args(["watch", "--broker", broker_url, "--store", store, "--client-id", client_id])
            .args(extra)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start edge-platform watch");
        Self { child, log }
    }

    /// SIGTERM: it stores and acknowledges what it holds, prints its table and exits.
    fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "watch did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// Every (event id, revision) a store holds, with how often.
fn stored_events(store: &str) -> Vec<(String, i64)> {
    let mut store = edge_platform::store::open(store).unwrap();
    store
        .query("SELECT event_id, revision FROM events ORDER BY event_id, revision", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r[0].text().unwrap().to_string(), r[1].int().unwrap()))
        .collect()
}

fn count(store: &str, sql: &str) -> i64 {
    let mut store = edge_platform::store::open(store).unwrap();
    store.query(sql, &[]).unwrap()[0][0].int().unwrap()
}

#[test]
fn watch_stores_every_event_once_across_broker_and_box_restarts_and_both_stores_report_alike() {
    let Some(mut broker) = Mosquitto::start_with(BrokerOptions { persistence: true, ..Default::default() }) else {
        return;
    };
    let Some(postgres) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("store.db").display());
    let pg = postgres.database("district");
    // What the broker delivered, for the comparison: a persistent session too.
    let truth = Subscriber::connect_persistent(broker.port, "edge/+/events", "truth");
    let watch_sqlite = Watch::start(&broker.url(), &sqlite, "watch-sqlite", dir.path().join("sqlite.log"), &[]);
    let watch_pg = Watch::start(&broker.url(), &pg, "watch-pg", dir.path().join("pg.log"), &[]);
    let devices = ["wb-1", "wb-2", "wb-3"];
    let mut boxes: Vec<TestBox> = devices.iter().map(|d| TestBox::new(dir.path(), d, &broker.url(), None)).collect();
    boxes.iter_mut().for_each(TestBox::start);
    let mut delivered: Vec<Received> = truth.collect_for(Duration::from_secs(12));
    assert!(delivered.len() >= 6, "too few events before the broker restart: {}", delivered.len());

    broker.stop_gracefully();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    delivered.extend(truth.collect_for(Duration::from_secs(10)));

    boxes[1].stop();
    boxes[1].start();
    delivered.extend(truth.collect_for(Duration::from_secs(10)));
    boxes.iter_mut().for_each(TestBox::stop);
    // Until the broker has nothing more for anyone.
    loop {
        let more = truth.collect_for(Duration::from_secs(3));
        if more.is_empty() {
            break;
        }
        delivered.extend(more);
    }
    std::thread::sleep(Duration::from_secs(2));
    let sqlite_lines = watch_sqlite.stop();
    let pg_lines = watch_pg.stop();

    let sent: BTreeSet<(String, i64)> = delivered
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            (v["event_id"].as_str().unwrap().to_string(), v["revision"].as_i64().unwrap())
        })
        .collect();
    for (store, lines) in [(&sqlite, &sqlite_lines), (&pg, &pg_lines)] {
        let stored = stored_events(store);
        let unique: BTreeSet<(String, i64)> = stored.iter().cloned().collect();
        assert_eq!(stored.len(), unique.len(), "each event once in {store}");
        assert_eq!(unique, sent, "the events of {store} are the events sent; watch said:\n{lines}");
        assert_eq!(count(store, "SELECT COUNT(*) FROM rejected"), 0, "nothing kept apart in {store}:\n{lines}");
        assert_eq!(count(store, "SELECT COUNT(*) FROM alarms"), 0, "no alarm in {store}:\n{lines}");
        assert_eq!(count(store, "SELECT COUNT(*) FROM gaps"), 0, "no gap in {store}:\n{lines}");
        // Every box's chain, whole: one record for each number from the first received to the last.
        let mut opened = edge_platform::store::open(store).unwrap();
        for row in
            opened.query("SELECT device, MIN(seq), MAX(seq), COUNT(*) FROM chain_records GROUP BY device", &[]).unwrap()
        {
            let (first, last, n) = (row[1].int().unwrap(), row[2].int().unwrap(), row[3].int().unwrap());
            assert_eq!(n, last - first + 1, "{:?}: records {first}..={last} in {store}", row[0]);
        }
    }
    let report = |store: &str| {
        let out = tool(&["report", "--store", store, "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (from_sqlite, from_pg) = (report(&sqlite), report(&pg));
    // The presence each watcher saw: box statuses as they arrived (a last will is dated on arrival).
    let presence = |store: &str| -> Vec<(String, String)> {
        let mut opened = edge_platform::store::open(store).unwrap();
        let rows = opened.query("SELECT device, state FROM presence ORDER BY device, time, state", &[]).unwrap();
        rows.iter().map(|r| (r[0].text().unwrap().to_string(), r[1].text().unwrap().to_string())).collect()
    };
    // Offline time is what each watcher saw, and two watchers need not see the same: at a
    // broker's shutdown the boxes' last wills reach a watcher still connected and not one already
    // cut off. So the reports are compared without it, and it is checked on its own: a few seconds
    // at most (the broker was away 3 s), and the restarted box's stop and return seen by both.
    let without_offline = |report: &str, store: &str| {
        let mut parsed: Value = serde_json::from_str(report).unwrap();
        for b in parsed["boxes"].as_array_mut().unwrap() {
            let offline = b["offline_secs"].as_u64().unwrap();
            assert!(offline <= 20, "{}: offline {offline} s in {store}: {:?}", b["device"], presence(store));
            b["offline_secs"] = Value::Null;
        }
        parsed
    };
    assert_eq!(
        without_offline(&from_sqlite, &sqlite),
        without_offline(&from_pg, &pg),
        "SQLite and PostgreSQL give the same report (but for offline time):\n{from_sqlite}\n{from_pg}"
    );
    for store in [&sqlite, &pg] {
        let states: Vec<String> = presence(store).into_iter().filter(|(d, _)| d == "wb-2").map(|(_, s)| s).collect();
        let stop_then_back = states.windows(2).any(|w| w[0] == "stopped" && w[1] == "online");
        assert!(stop_then_back, "the restarted box was seen to stop and come back in {store}: {states:?}");
    }
    let parsed: Value = serde_json::from_str(&from_sqlite).unwrap();
    let messages: u64 = parsed["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["cameras"].as_array().unwrap().iter())
        .flat_map(|c| c["events"].as_object().unwrap().values())
        .map(|k| k["messages"].as_u64().unwrap())
        .sum();
    assert_eq!(messages, sent.len() as u64, "{from_sqlite}");
}

#[test]
fn a_message_changed_dropped_or_reordered_on_the_way_or_forged_is_named_with_its_box_and_record() {
    let Some(broker) = Mosquitto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let proxies = [
        (
            "mm-alter",
            MqttProxy::start(
                broker.port,
                "/events",
                Tamper::Alter { nth: 3, from: "\"camera\":\"gate\"".into(), to: "\"camera\":\"gape\"".into() },
            ),
        ),
        ("mm-drop", MqttProxy::start(broker.port, "/events", Tamper::Drop { nth: 3 })),
        ("mm-swap", MqttProxy::start(broker.port, "/events", Tamper::Swap { nth: 3 })),
    ];
    let watch = Watch::start(&broker.url(), &store, "watch-mm", dir.path().join("watch.log"), &[]);
    let mut boxes: Vec<TestBox> =
        proxies.iter().map(|(device, proxy)| TestBox::new(dir.path(), device, &proxy.url(), None)).collect();
    let spy = Subscriber::connect(broker.port, "edge/mm-alter/events");
    boxes.iter_mut().for_each(TestBox::start);
    // Five event messages from each box, and the touched ones long past.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    while seen.len() < 6 {
        assert!(Instant::now() < deadline, "too few events from mm-alter");
        seen.extend(spy.collect_for(Duration::from_millis(500)));
    }
    // A forger on the broker: a copy of a real event with another label, its record re-hashed
    // and signed with a key that is not the box's.
    let mut forged: Value = serde_json::from_slice(&seen[5].payload).unwrap();
    let mut record: Value = serde_json::from_str(forged["chain"]["record"].as_str().unwrap()).unwrap();
    record["event"]["label"] = "nothing".into();
    forged["label"] = "nothing".into();
    let body = record.to_string();
    let forger = PlatformKey::from_seed(99);
    forged["chain"]["record"] = body.clone().into();
    forged["chain"]["sha256"] = sha256_hex(body.as_bytes()).into();
    forged["chain"]["signature"] = hex::encode(forger.sign_bytes(body.as_bytes())).into();
    let forged_seq = forged["chain"]["seq"].as_u64().unwrap();
    spy.publish("edge/mm-alter/events", forged.to_string());
    std::thread::sleep(Duration::from_secs(4));
    boxes.iter_mut().for_each(TestBox::stop);
    std::thread::sleep(Duration::from_secs(2));
    let lines = watch.stop();

    let touched =
        |i: usize| -> u64 { *proxies[i].1.touched.lock().unwrap().first().expect("the proxy touched a message") };
    let (altered, dropped, swapped) = (touched(0), touched(1), touched(2));
    let named = |device: &str, needle: &str| {
        assert!(
            lines.lines().any(|l| l.contains(device) && l.contains("ALARM") && l.contains(needle)),
            "{device} {needle:?} in:\n{lines}"
        );
    };
    named("mm-alter", &format!("record {altered} on events altered"));
    named("mm-alter", "(at `camera`)");
    named("mm-alter", &format!("record {forged_seq} on events forged"));
    named("mm-drop", &format!("records {dropped}..={dropped} have not arrived"));
    named("mm-swap", &format!("records {swapped}..={swapped} have not arrived"));
    // The swapped one comes after all: its signature and links hold, so it fills its place.
    assert!(
        lines.lines().any(|l| l.contains("mm-swap")
            && !l.contains("ALARM")
            && l.contains(&format!("record {swapped} arrived late, after record {}", swapped + 1))),
        "mm-swap: record {swapped} arrived late, in:\n{lines}"
    );

    // The store keeps them apart, names them, and the report counts them; nothing else is amiss.
    let mut opened = edge_platform::store::open(&store).unwrap();
    let rejected: Vec<(String, i64, String)> = opened
        .query("SELECT device, seq, problem FROM rejected ORDER BY device, seq, problem", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r[0].text().unwrap().to_string(), r[1].int().unwrap(), r[2].text().unwrap().to_string()))
        .collect();
    let mut expected = vec![
        ("mm-alter".to_string(), altered as i64, "altered".to_string()),
        ("mm-alter".to_string(), forged_seq as i64, "forged".to_string()),
    ];
    expected.sort();
    assert_eq!(rejected, expected, "{lines}");
    let gaps: Vec<(String, i64)> = opened
        .query("SELECT device, first_seq FROM gaps WHERE pruned_by_policy IS NULL ORDER BY device", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r[0].text().unwrap().to_string(), r[1].int().unwrap()))
        .collect();
    assert_eq!(gaps, [("mm-drop".to_string(), dropped as i64)], "the swapped record closed its gap");
    // The altered message's event never reached the events table; the real one did not come.
    let altered_events =
        count(&store, &format!("SELECT COUNT(*) FROM events WHERE device = 'mm-alter' AND chain_seq = {altered}"));
    assert_eq!(altered_events, 0);
    // `watch --once` over the same store exits 1 while the alarms stand.
    let once = tool(&["watch", "--broker", &broker.url(), "--store", &store, "--client-id", "watch-mm", "--once"]);
    assert_eq!(once.status.code(), Some(1), "{}", text(&once));
    let report = tool(&["report", "--store", &store]);
    assert!(report.status.success(), "{}", text(&report));
    assert!(
        text(&report).lines().any(|l| l.starts_with("mm-drop") && l.contains("1 unexplained")),
        "{}",
        text(&report)
    );
}
