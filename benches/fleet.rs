//! Fleet benchmark (not a test): a district of 127 boxes' real reporting stacks against a real
//! mosquitto that restarts under them; prints the figures the README's fleet section quotes.
//!
//! Run: `cargo bench --bench fleet` (about 5 minutes). Needs mosquitto. `FLEET_BOXES`,
//! `FLEET_EVENT_EVERY_SECS`, `FLEET_OUTAGE_SECS` change the shape.

use std::time::Duration;

use edge_agent_tests::fleet::{self, FleetOptions};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then only say how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet benchmark: run with `cargo bench --bench fleet`");
        return;
    }
    let mut options = FleetOptions::district();
    options.boxes = env_number("FLEET_BOXES", options.boxes as u64) as usize;
    options.event_every = Duration::from_secs(env_number("FLEET_EVENT_EVERY_SECS", options.event_every.as_secs()));
    options.outage = Duration::from_secs(env_number("FLEET_OUTAGE_SECS", options.outage.as_secs()));
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpu.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim());
    println!(
        "machine: {} ({} logical cores); mosquitto on loopback with persistence; {} boxes",
        model.unwrap_or("unknown CPU"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        options.boxes
    );
    let work = tempfile::tempdir().expect("temp dir");
    match fleet::run(&options, work.path()) {
        Some(figures) => println!("{}", figures.table(&options)),
        None => println!("mosquitto is missing: install it with `apt-get install mosquitto`"),
    }
}
