//! A district's fleet on one broker, end to end: 127 boxes' real reporting stacks (outbox, MQTT
//! client with backoff and jitter, status, telemetry) in this process, each making an event with
//! its evidence picture every few seconds, against a real mosquitto that restarts under them.
//! Every event made must arrive, duplicates only as the same message, and every box must come
//! back without a restart of its own. The same harness, run long, gives the README's fleet figures
//! (`cargo bench --bench fleet`); here it is short, and nothing is asserted about speed.

use std::time::Duration;

use edge_agent_tests::fleet::{self, FleetOptions};

#[test]
fn a_district_of_127_boxes_survives_a_broker_restart_without_losing_an_event() {
    let options = FleetOptions {
        boxes: 127,
        event_every: Duration::from_secs(3),
        telemetry_every: Duration::from_secs(5),
        steady: Duration::from_secs(10),
        outage: Duration::from_secs(8),
        after: Duration::from_secs(8),
        reconnect_max: Duration::from_secs(8),
    };
    let work = tempfile::tempdir().unwrap();
    let Some(figures) = fleet::run(&options, work.path()) else {
        return;
    };
    eprintln!("{}", figures.table(&options));
    assert!(figures.events_made > 127, "the stations made too few events to prove anything: {figures:?}");
    assert_eq!(figures.events_lost, 0, "events lost: {figures:?}");
    assert_eq!(figures.duplicates_differing, 0, "a duplicate must be the same message: {figures:?}");
    let reconnected: u64 = figures.reconnects_per_second.iter().sum();
    assert!(reconnected >= 127, "the broker should have seen every box connect again: {figures:?}");
    assert!(figures.client_attempts_during_outage >= 127, "{figures:?}");
    // One connection per box after the restart: none dropped half-made and made again.
    assert_eq!(figures.connected_repeatedly, [], "boxes that connected more than once");
    assert!(figures.steady_messages_per_second > 0.0 && figures.steady_bytes_per_second > 0.0, "{figures:?}");
}
