//! `edge-platform watch` benchmark (not a test): a district of boxes' real reporting stacks (the
//! fleet harness, each with a real signed evidence chain) against a real mosquitto, with `watch`
//! verifying every record and storing everything, into SQLite and into a PostgreSQL cluster of its
//! own. For each store: the steady district load (watch's CPU, and the PostgreSQL server's), then
//! a backlog made while `watch` is stopped and drained at full speed when it returns (messages
//! verified and stored per second, CPU). Every event made must end in the store once.
//!
//! Run: `cargo build --bins && cargo bench --profile dev --bench platform_watch` (about 12
//! minutes; `--release` for both gives the optimised figures). `-- --smoke` runs a few boxes for a
//! few seconds (scripts/test.sh). Needs mosquitto and PostgreSQL.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_agent_tests::fleet::{cpu_seconds, Boxes, FleetOptions};
use edge_agent_tests::postgres::{server_pids_in, Postgres};
use edge_agent_tests::{platform_binary, BrokerOptions, Mosquitto};

/// CPU seconds of a changing set of processes, sampled often so processes that exit still count.
struct CpuMeter {
    peaks: Arc<Mutex<std::collections::HashMap<u32, f64>>>,
    running: Arc<std::sync::atomic::AtomicBool>,
}

impl CpuMeter {
    fn start(pids: impl Fn() -> Vec<u32> + Send + 'static) -> Self {
        let peaks = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (shared, going) = (peaks.clone(), running.clone());
        std::thread::spawn(move || {
            while going.load(Ordering::Relaxed) {
                for pid in pids() {
                    let seconds = cpu_seconds(pid);
                    let mut peaks = shared.lock().expect("cpu samples");
                    let peak = peaks.entry(pid).or_insert(0.0);
                    *peak = f64::max(*peak, seconds);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { peaks, running }
    }

    fn total(&self) -> f64 {
        self.peaks.lock().expect("cpu samples").values().sum()
    }

    fn stop(self) -> f64 {
        std::thread::sleep(Duration::from_millis(150));
        self.running.store(false, Ordering::Relaxed);
        self.total()
    }
}

fn events_stored(store: &str) -> u64 {
    let Ok(mut store) = edge_platform::store::open(store) else { return 0 };
    store
        .query("SELECT COUNT(*) FROM events", &[])
        .ok()
        .and_then(|rows| rows.first()?.first()?.int())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

fn count(store: &str, sql: &str) -> i64 {
    let Ok(mut store) = edge_platform::store::open(store) else { return -1 };
    store.query(sql, &[]).ok().and_then(|rows| rows.first()?.first()?.int()).unwrap_or(-1)
}

/// What one store measured.
struct Figures {
    store: &'static str,
    steady_seconds: f64,
    steady_events_per_second: f64,
    steady_messages_per_second: f64,
    steady_watch_cores: f64,
    steady_server_cores: f64,
    backlog_messages: u64,
    drain_seconds: f64,
    drain_messages_per_second: f64,
    drain_watch_cores: f64,
    drain_server_cores: f64,
    events_made: u64,
    events_stored: u64,
    rejected: i64,
    gaps: i64,
}

fn watch(broker: &Mosquitto, store: &str, client_id: &str, once: bool) -> std::process::Child {
    let mut command = Command::new(platform_binary());
    command.args(["watch", "--broker", &broker.url(), "--store", store, "--client-id", client_id]);
    if once {
        command.arg("--once");
    }
    command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start edge-platform watch")
}

/// "N messages taken in" from watch's last lines.
fn taken_in(output: &str) -> u64 {
    output.lines().rev().find_map(|l| l.strip_prefix("watch: ")?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// One store's run, on a broker of its own: the boxes of the fleet harness get new keys each run,
/// and a broker kept from an earlier run would hand the new watcher the retained messages of the old
/// boxes under the same names (a key change without a rotation record: rightly kept apart).
fn run_store(
    name: &'static str,
    store: &str,
    server: Option<&Postgres>,
    options: &FleetOptions,
    backlog: Duration,
) -> Figures {
    let broker = Mosquitto::start_with(BrokerOptions { quiet_log: true, ..Default::default() }).expect("mosquitto");
    let broker = &broker;
    let work = tempfile::tempdir().expect("temp dir");
    let client_id = format!("bench-{name}");
    let watch_started = Instant::now();
    let watcher = watch(broker, store, &client_id, false);
    std::thread::sleep(Duration::from_secs(2));
    let boxes = Boxes::start(options, work.path(), broker.port, true);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !boxes.all_connected() {
        assert!(Instant::now() < deadline, "every box connects");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Steady: the district's own pace; let the first events of every box arrive first.
    std::thread::sleep(options.event_every.min(Duration::from_secs(10)));
    let server_pids = || server.map(Postgres::server_pids).unwrap_or_default();
    let (before_events, before_watch, before_server) =
        (events_stored(store), cpu_seconds(watcher.id()), server_pids().iter().map(|p| cpu_seconds(*p)).sum::<f64>());
    let started = Instant::now();
    std::thread::sleep(options.steady);
    let steady_seconds = started.elapsed().as_secs_f64();
    let after_events = events_stored(store);
    let steady_watch = cpu_seconds(watcher.id()) - before_watch;
    let steady_server = server_pids().iter().map(|p| cpu_seconds(*p)).sum::<f64>() - before_server;
    unsafe { libc::kill(watcher.id() as i32, libc::SIGTERM) };
    let out = watcher.wait_with_output().expect("watch exits");
    let steady_taken = taken_in(&String::from_utf8_lossy(&out.stdout));
    let steady_messages_per_second = steady_taken as f64 / watch_started.elapsed().as_secs_f64();

    // A backlog while watch is away: the broker keeps it in the session.
    std::thread::sleep(backlog);
    boxes.producing.store(false, Ordering::Relaxed);
    let drained_by = Instant::now() + Duration::from_secs(120);
    while !boxes.drained() && Instant::now() < drained_by {
        std::thread::sleep(Duration::from_millis(100));
    }
    let made = boxes.made.load(Ordering::Relaxed);
    // Drain at full speed.
    let started = Instant::now();
    let drainer = watch(broker, store, &client_id, true);
    let pid = drainer.id();
    let meter = CpuMeter::start(move || vec![pid]);
    // The server's processes are listed again at every sample: the backend that serves watch's
    // connection starts after watch does.
    let server_meter = server.map(|s| {
        let before: f64 = s.server_pids().iter().map(|p| cpu_seconds(*p)).sum();
        let data = s.data_dir().to_path_buf();
        (before, CpuMeter::start(move || server_pids_in(&data)))
    });
    let out = drainer.wait_with_output().expect("watch --once exits");
    // `--once` waits 2 s of quiet before it stops.
    let drain_seconds = (started.elapsed().as_secs_f64() - 2.0).max(0.001);
    let drain_watch = meter.stop();
    let drain_server = server_meter.map(|(before, m)| m.stop() - before).unwrap_or(0.0);
    let backlog_messages = taken_in(&String::from_utf8_lossy(&out.stdout));
    boxes.stop();
    let stored = events_stored(store);
    Figures {
        store: name,
        steady_seconds,
        steady_events_per_second: (after_events - before_events) as f64 / steady_seconds,
        steady_messages_per_second,
        steady_watch_cores: steady_watch / steady_seconds,
        steady_server_cores: steady_server / steady_seconds,
        backlog_messages,
        drain_seconds,
        drain_messages_per_second: backlog_messages as f64 / drain_seconds,
        drain_watch_cores: drain_watch / drain_seconds,
        drain_server_cores: drain_server / drain_seconds,
        events_made: made,
        events_stored: stored,
        rejected: count(store, "SELECT COUNT(*) FROM rejected"),
        gaps: count(store, "SELECT COUNT(*) FROM gaps"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    if !smoke && !args.iter().any(|a| a == "--bench") {
        println!(
            "platform watch benchmark: run with `cargo bench --profile dev --bench platform_watch` (or -- --smoke)"
        );
        return;
    }
    let mut options = FleetOptions::district();
    let mut backlog = Duration::from_secs(60);
    if smoke {
        options.boxes = 12;
        options.event_every = Duration::from_secs(1);
        options.telemetry_every = Duration::from_secs(5);
        options.steady = Duration::from_secs(6);
        backlog = Duration::from_secs(4);
    }
    let lscpu =
        Command::new("lscpu").output().map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    let field = |name: &str| {
        lscpu.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
    };
    println!(
        "machine: {} ({} logical cores); flags: {}",
        field("Model name").unwrap_or_else(|| "unknown CPU".into()),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        field("Flags").unwrap_or_default()
    );
    println!(
        "{} boxes, an event and its picture every {} s each, telemetry every {} s; steady {} s, backlog {} s",
        options.boxes,
        options.event_every.as_secs_f64(),
        options.telemetry_every.as_secs_f64(),
        options.steady.as_secs(),
        backlog.as_secs()
    );
    if Mosquitto::start_with(BrokerOptions { quiet_log: true, ..Default::default() }).is_none() {
        println!("mosquitto is missing: install it with `apt-get install mosquitto`");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut figures = vec![run_store(
        "SQLite",
        &format!("sqlite://{}", dir.path().join("store.db").display()),
        None,
        &options,
        backlog,
    )];
    match Postgres::start() {
        Some(server) => {
            let url = server.database("bench");
            figures.push(run_store("PostgreSQL", &url, Some(&server), &options, backlog));
        }
        None => println!("PostgreSQL is missing: install it with `apt-get install postgresql`"),
    }
    println!("\n| measure | {} |", figures.iter().map(|f| f.store).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---|".repeat(figures.len()));
    let row = |name: &str, value: &dyn Fn(&Figures) -> String| {
        println!("| {name} | {} |", figures.iter().map(value).collect::<Vec<_>>().join(" | "));
    };
    row("steady: events stored per second", &|f| {
        format!("{:.1} (over {:.0} s)", f.steady_events_per_second, f.steady_seconds)
    });
    row("steady: messages taken in per second over watch's run (events, pictures, chain, telemetry, status)", &|f| {
        format!("{:.1}", f.steady_messages_per_second)
    });
    row("steady: watch CPU", &|f| format!("{:.3} cores", f.steady_watch_cores));
    row("steady: database server CPU", &|f| {
        if f.store == "SQLite" {
            "(in watch)".into()
        } else {
            format!("{:.3} cores", f.steady_server_cores)
        }
    });
    row("backlog drained: messages verified and stored", &|f| {
        format!("{} in {:.1} s", f.backlog_messages, f.drain_seconds)
    });
    row("backlog drained: messages per second", &|f| format!("**{:.0}**", f.drain_messages_per_second));
    row("backlog drained: watch CPU", &|f| format!("{:.2} cores", f.drain_watch_cores));
    row("backlog drained: database server CPU", &|f| {
        if f.store == "SQLite" {
            "(in watch)".into()
        } else {
            format!("{:.2} cores", f.drain_server_cores)
        }
    });
    row("events made / stored (each once)", &|f| format!("{} / {}", f.events_made, f.events_stored));
    row("messages kept apart / gaps", &|f| format!("{} / {}", f.rejected, f.gaps));
    let lost: Vec<&Figures> =
        figures.iter().filter(|f| f.events_stored != f.events_made || f.rejected != 0 || f.gaps != 0).collect();
    if !lost.is_empty() {
        eprintln!("FAILED: a store lost or refused events: {:?}", lost.iter().map(|f| f.store).collect::<Vec<_>>());
        std::process::exit(1);
    }
}
