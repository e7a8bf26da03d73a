//! Reliable reporting under faults, end to end: the real agent binary, a real mosquitto that the
//! test stops, restarts and misconfigures, real frames through the real detector. Each test checks
//! that every event the agent logged as queued (the log line comes after the outbox commit)
//! reaches the broker.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_agent_tests::arrivals::*;
use edge_agent_tests::*;

/// A finite replay camera.
fn camera<'a>(id: &'a str, frames: &'a Path, fps: f64) -> ReplayCamera<'a> {
    ReplayCamera { id, frames, fps, looping: false }
}

/// The agent config of a fault test: every arrival of the truck is an incident of its own, so a
/// camera makes many events; `extra` holds whole sections, e.g. `[outbox]`.
fn write_config(dir: &Path, device: &str, mqtt: &str, cameras: &[ReplayCamera], extra: &str) -> (PathBuf, u16) {
    write_agent_config(dir, device, mqtt, cameras, &format!("{EVERY_ARRIVAL_IS_AN_EVENT}\n{extra}"))
}

fn wait_for_log(agent: &Agent, needle: &str, timeout: Duration) -> bool {
    eventually(timeout, || log_contains(&agent.log, needle).then_some(())).is_some()
}

#[test]
fn broker_down_for_a_minute_loses_nothing() {
    let Some(mut broker) = Mosquitto::start_with(BrokerOptions { persistence: true, ..Default::default() }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let north = coming_and_going_folder(dir.path(), "north", 75);
    let south = coming_and_going_folder(dir.path(), "south", 75);
    let cameras = [camera("north", &north, 2.0), camera("south", &south, 2.0)];
    let (config, _) =
        write_config(dir.path(), "outage-box", &format!("url = \"{}\"", broker.agent_url()), &cameras, "");
    let subscriber = durable_subscriber(&broker, "outage-box");
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));
    let mut arrivals = Arrivals::default();

    assert!(arrivals.wait_for_first_event(&subscriber, Duration::from_secs(30)), "no event before the outage");
    broker.stop_gracefully();
    let outage_started = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    assert!(agent.is_running(), "the agent died during the outage");
    let queued_during_outage = queued_events(&agent.log_text()).len();
    broker.restart();
    eprintln!("broker back after {:.0?}; {queued_during_outage} events queued so far", outage_started.elapsed());

    assert!(wait_for_all_sources_ended(&agent, 2, Duration::from_secs(120)), "the cameras did not finish");
    let queued = settled_queued_events(&agent);
    let missing = arrivals.wait_for_all(&subscriber, &queued, Duration::from_secs(120));
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived, e.g. {:?}",
        missing.len(),
        queued.len(),
        &missing[..missing.len().min(3)]
    );
    arrivals.assert_camera_order(&queued);
    assert!(queued.len() > 100, "too few events to prove anything: {}", queued.len());
    // Evidence pictures travel with their events.
    arrivals.take(subscriber.collect_for(Duration::from_secs(2)));
    let with_evidence = queued.iter().filter(|(_, id)| arrivals.snapshots.contains(id)).count();
    assert_eq!(with_evidence, queued.len(), "every event's evidence arrived");
    eprintln!(
        "{} events from 2 cameras, {} queued during the 60 s outage, {} duplicates (same event id)",
        queued.len(),
        queued_during_outage,
        arrivals.duplicates
    );
    assert_eq!(agent.terminate(Duration::from_secs(10)), Some(0));
}

#[test]
fn agent_killed_during_a_burst_loses_nothing() {
    let Some(mut broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let frames = coming_and_going_folder(dir.path(), "burst", 150);
    let cameras = [camera("gate", &frames, 25.0)];
    let (config, web_port) =
        write_config(dir.path(), "burst-box", &format!("url = \"{}\"", broker.url()), &cameras, "");
    let subscriber = Subscriber::connect(broker.port, "edge/burst-box/#");
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));
    let mut arrivals = Arrivals::default();

    assert!(arrivals.wait_for_first_event(&subscriber, Duration::from_secs(30)), "no first event");
    let logged = eventually(Duration::from_secs(10), || (!queued_events(&agent.log_text()).is_empty()).then_some(()));
    assert!(logged.is_some(), "an event arrived but none was logged as queued; log:\n{}", agent.log_text());
    // The link drops mid-burst, events pile up, and the box loses power (SIGKILL).
    broker.stop();
    // Until events pile up (a loaded machine infers slowly), but while the burst still runs.
    let depth = eventually(Duration::from_secs(10), || {
        agent_status(web_port).and_then(|s| s["outbox_depth"].as_u64()).filter(|depth| *depth > 0)
    })
    .unwrap_or(0);
    agent.kill_hard();
    let queued_before_kill = queued_events(&agent.log_text());
    assert!(depth > 0, "nothing was waiting in the outbox at the kill; the test proves nothing");
    assert!(!queued_before_kill.is_empty());

    broker.restart();
    std::thread::sleep(Duration::from_secs(1)); // the subscriber re-subscribes
    agent.restart(&config);
    let missing = arrivals.wait_for_all(&subscriber, &queued_before_kill, Duration::from_secs(60));
    assert!(
        missing.is_empty(),
        "{} of {} events queued before the kill never arrived",
        missing.len(),
        queued_before_kill.len()
    );
    arrivals.assert_camera_order(&queued_before_kill);
    eprintln!(
        "{} events queued before SIGKILL (outbox depth {depth}), all delivered after restart",
        queued_before_kill.len()
    );
}

#[test]
fn a_full_disk_quota_prunes_oldest_evidence_and_keeps_every_event() {
    // A broker whose port is known but which is down while the quota fills.
    let Some(mut broker) = Mosquitto::start_with(BrokerOptions { persistence: true, ..Default::default() }) else {
        return;
    };
    let subscriber = durable_subscriber(&broker, "quota-box");
    broker.stop_gracefully();
    let dir = tempfile::tempdir().unwrap();
    let frames = coming_and_going_folder(dir.path(), "yard", 20);
    let cameras = [camera("yard", &frames, 5.0)];
    let mqtt = format!("url = \"{}\"\ntelemetry_interval_secs = 1", broker.url());
    // Pictures small enough that one frame's three (truck, bicycle, cup) always fit once older ones
    // are pruned; otherwise the newest frame's last picture is refused, which is right but blurs
    // the "oldest first" check below.
    let extra = "[outbox]\nquota_mb = 1\n\n[evidence]\njpeg_quality = 40\n";
    let (config, web_port) = write_config(dir.path(), "quota-box", &mqtt, &cameras, extra);
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));

    assert!(wait_for_all_sources_ended(&agent, 1, Duration::from_secs(60)), "the camera did not finish");
    assert!(wait_for_log(&agent, "outbox quota reached: pruned", Duration::from_secs(5)), "no quota log line");
    assert!(agent.is_running(), "the agent went down on a full quota");
    let status = agent_status(web_port).expect("status");
    let outbox = &status["outbox"];
    assert_eq!(outbox["quota_reached"], true, "{outbox}");
    assert!(outbox["evidence_pruned_total"].as_u64().unwrap() > 0, "{outbox}");
    assert!(outbox["bytes"].as_u64().unwrap() <= 1024 * 1024, "{outbox}");
    let (_, page) = http_get(&format!("http://127.0.0.1:{web_port}/")).unwrap();
    assert!(page.contains("quota reached") && page.contains("evidence pictures pruned"), "the page does not say so");
    let queued = settled_queued_events(&agent);
    assert!(queued.len() >= 6, "too few events: {}", queued.len());

    broker.restart();
    let mut arrivals = Arrivals::default();
    let missing = arrivals.wait_for_all(&subscriber, &queued, Duration::from_secs(60));
    assert!(missing.is_empty(), "{} of {} events lost to the quota", missing.len(), queued.len());
    let telemetry = subscriber.wait_for("/telemetry", Duration::from_secs(10), |t| {
        t["outbox"]["evidence_pruned_total"].as_u64().unwrap_or(0) > 0
    });
    assert!(telemetry.is_some(), "telemetry does not report the pruning");
    arrivals.take(subscriber.collect_for(Duration::from_secs(2)));
    // The evidence that survived is the newest: the last incidents' pictures, none of the first.
    // An incident's `end` carries a picture too, queued later than its `start`'s; an incident
    // counts as kept when every one of its pictures arrived (its oldest, the start's, included).
    let kept: Vec<bool> = queued
        .iter()
        .map(|(_, id)| {
            let sent = arrivals.snapshots_sent.get(id).copied().unwrap_or(0);
            sent > 0 && arrivals.snapshots_arrived.get(id).copied().unwrap_or(0) >= sent
        })
        .collect();
    let first_kept = kept.iter().position(|k| *k).expect("some evidence was kept");
    assert!(kept[first_kept..].iter().all(|k| *k), "pruning was not oldest first: {kept:?}");
    assert!(first_kept > 0, "nothing was pruned");
    eprintln!(
        "{} events kept, evidence of the oldest {first_kept} pruned, newest {} kept",
        queued.len(),
        queued.len() - first_kept
    );
}

/// A subscriber to `edge/{device}/#` whose session a persistent broker keeps across a graceful
/// restart, so nothing the agent publishes while the subscriber reconnects is missed.
fn durable_subscriber(broker: &Mosquitto, device: &str) -> Subscriber {
    let subscriber = Subscriber::connect_persistent_as_tester(
        broker.port,
        &format!("edge/{device}/#"),
        &format!("fault-test-{device}"),
    );
    // The subscription is active once a probe on the same filter comes back.
    let probe = eventually(Duration::from_secs(10), || {
        subscriber.publish(&format!("edge/{device}/probe"), b"{}".to_vec());
        subscriber.wait_for("/probe", Duration::from_millis(500), |_| true)
    });
    assert!(probe.is_some(), "the test subscriber could not subscribe");
    subscriber
}

/// Fails a test that would print a secret.
fn assert_secret_hidden(secret: &str, agent: &Agent, web_port: u16) {
    assert!(!agent.log_text().contains(secret), "the log shows the password");
    let (_, page) = http_get(&format!("http://127.0.0.1:{web_port}/")).unwrap();
    assert!(!page.contains(secret), "the page shows the password");
    let (_, status) = http_get(&format!("http://127.0.0.1:{web_port}/api/status")).unwrap();
    assert!(!status.contains(secret), "the status API shows the password");
}

#[test]
fn a_wrong_password_is_a_clear_error_retried_until_fixed_and_nothing_is_lost() {
    let users = vec![("box".to_string(), "the-right-one-81x".to_string())];
    let Some(mut broker) = Mosquitto::start_with(BrokerOptions { users, persistence: true, ..Default::default() })
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wrong = "wrong-secret-ZQ7";
    std::fs::write(dir.path().join("mqtt-password"), format!("{wrong}\n")).unwrap();
    let frames = coming_and_going_folder(dir.path(), "gate", 6);
    let cameras = [camera("gate", &frames, 4.0)];
    let mqtt = format!("url = \"{}\"\nusername = \"box\"\npassword_file = \"mqtt-password\"", broker.agent_url());
    let (config, web_port) = write_config(dir.path(), "auth-box", &mqtt, &cameras, "");
    let subscriber = durable_subscriber(&broker, "auth-box");
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));

    assert!(
        wait_for_log(&agent, "refused the connection as not authorised", Duration::from_secs(20))
            || wait_for_log(&agent, "refused the user name or password", Duration::from_secs(1)),
        "no clear error about the credentials"
    );
    assert!(log_contains(&agent.log, "mqtt.password_file"), "the error does not say what to check");
    assert!(wait_for_all_sources_ended(&agent, 1, Duration::from_secs(30)));
    let status = agent_status(web_port).unwrap();
    assert_eq!(status["mqtt"]["connected"], false);
    assert!(status["mqtt"]["last_error"].as_str().unwrap_or("").contains("not authorised"), "{}", status["mqtt"]);
    assert_secret_hidden(wrong, &agent, web_port);
    assert!(agent.is_running());

    // The platform fixes the broker's side; the agent's next retry gets in.
    broker.set_users(&[("box".to_string(), wrong.to_string())]);
    broker.stop_gracefully();
    broker.restart();
    let queued = settled_queued_events(&agent);
    let mut arrivals = Arrivals::default();
    let missing = arrivals.wait_for_all(&subscriber, &queued, Duration::from_secs(90));
    assert!(
        missing.is_empty(),
        "{} of {} events lost; broker log:\n{}",
        missing.len(),
        queued.len(),
        broker.log_text()
    );
    assert!(!queued.is_empty());
}

#[test]
fn a_wrong_ca_is_a_clear_error_retried_until_fixed_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let site_pki = TestPki::generate(&dir.path().join("pki"), "site");
    let other_pki = TestPki::generate(&dir.path().join("pki"), "other");
    let users = vec![("box".to_string(), "tls-pass-5521".to_string())];
    // The broker presents a certificate from a CA the agent does not trust.
    let options =
        BrokerOptions { users, tls: Some(other_pki.broker_tls(true)), persistence: true, ..Default::default() };
    let Some(mut broker) = Mosquitto::start_with(options) else {
        return;
    };
    std::fs::write(dir.path().join("mqtt-password"), "tls-pass-5521\n").unwrap();
    let frames = coming_and_going_folder(dir.path(), "gate", 6);
    let cameras = [camera("gate", &frames, 4.0)];
    let mqtt = format!(
        "url = \"{}\"\nusername = \"box\"\npassword_file = \"mqtt-password\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        broker.agent_url(),
        site_pki.ca_file.display(),
        site_pki.client_cert.display(),
        site_pki.client_key.display()
    );
    assert!(mqtt.contains("mqtts://"));
    let (config, web_port) = write_config(dir.path(), "tls-box", &mqtt, &cameras, "");
    let subscriber = durable_subscriber(&broker, "tls-box");
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));

    assert!(wait_for_log(&agent, "TLS handshake with mqtts://127.0.0.1", Duration::from_secs(20)), "no TLS error");
    assert!(log_contains(&agent.log, "UnknownIssuer"), "the error does not say the issuer is unknown");
    assert!(log_contains(&agent.log, "mqtt.ca_file"), "the error does not say what to check");
    assert!(wait_for_all_sources_ended(&agent, 1, Duration::from_secs(30)));
    assert!(agent.is_running());
    assert_secret_hidden("tls-pass-5521", &agent, web_port);

    // The broker gets the site's certificate (and checks client certificates against the site CA):
    // mutual TLS with user name and password now succeeds.
    broker.set_tls(&site_pki.broker_tls(true));
    broker.stop_gracefully();
    broker.restart();
    let queued = settled_queued_events(&agent);
    let mut arrivals = Arrivals::default();
    let missing = arrivals.wait_for_all(&subscriber, &queued, Duration::from_secs(90));
    assert!(missing.is_empty(), "{} of {} events lost", missing.len(), queued.len());
    assert!(log_contains(&agent.log, "MQTT connected"));
    assert_eq!(agent_status(web_port).unwrap()["mqtt"]["broker"], broker.agent_url());
}

#[test]
fn a_broker_unreachable_at_start_is_retried_and_nothing_is_lost() {
    let Some(mut broker) = Mosquitto::start_with(BrokerOptions { persistence: true, ..Default::default() }) else {
        return;
    };
    let subscriber = durable_subscriber(&broker, "late-box");
    broker.stop_gracefully();
    let dir = tempfile::tempdir().unwrap();
    let frames = coming_and_going_folder(dir.path(), "gate", 6);
    let cameras = [camera("gate", &frames, 4.0)];
    let (config, web_port) = write_config(dir.path(), "late-box", &format!("url = \"{}\"", broker.url()), &cameras, "");
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));

    assert!(wait_for_log(&agent, "cannot reach broker mqtt://127.0.0.1", Duration::from_secs(20)), "no clear error");
    assert!(wait_for_all_sources_ended(&agent, 1, Duration::from_secs(30)));
    assert!(agent.is_running());
    let queued = settled_queued_events(&agent);
    // Each incident's start and end, each with its evidence picture.
    let depth = agent_status(web_port).unwrap()["outbox_depth"].as_u64().unwrap() as usize;
    assert!(depth >= queued.len() * 2, "events and evidence wait: outbox depth {depth}, {} incidents", queued.len());

    broker.restart();
    let mut arrivals = Arrivals::default();
    let missing = arrivals.wait_for_all(&subscriber, &queued, Duration::from_secs(90));
    assert!(missing.is_empty(), "{} of {} events lost", missing.len(), queued.len());
    arrivals.assert_camera_order(&queued);
}

#[test]
fn a_corrupted_outbox_file_is_set_aside_and_reporting_goes_on() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    // What a dying SD card can leave behind: not a database any more.
    std::fs::write(dir.path().join("state/outbox.redb"), vec![0x5a; 64 * 1024]).unwrap();
    let frames = coming_and_going_folder(dir.path(), "gate", 2);
    let cameras = [camera("gate", &frames, 4.0)];
    let (config, _) = write_config(dir.path(), "damaged-box", &format!("url = \"{}\"", broker.url()), &cameras, "");
    let subscriber = Subscriber::connect(broker.port, "edge/damaged-box/#");
    let mut agent = Agent::start(&config, &dir.path().join("agent.log"));

    assert!(wait_for_log(&agent, "outbox file is corrupted beyond repair", Duration::from_secs(20)), "no clear error");
    assert!(subscriber.wait_for("/events", Duration::from_secs(30), |_| true).is_some(), "no event after the repair");
    assert!(agent.is_running());
    let kept = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("outbox.redb.damaged-"));
    assert!(kept, "the damaged file was not kept for inspection");
}
