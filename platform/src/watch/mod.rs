//! `edge-platform watch`: every box's messages from the broker, each box's chain verified live
//! ([`fleet`]), everything stored ([`crate::store`]) and a table per box ([`table`]).
//!
//! Nothing is lost between broker and store: the session is persistent (the broker keeps what
//! arrives while `watch` is away) and a message is acknowledged to the broker only after the
//! transaction holding it has committed; what comes twice is stored once (keys on event id and
//! revision, box and record number).

pub mod fleet;
pub mod table;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};

use crate::broker::{parse_duration, split_topic, BrokerArgs};
use crate::store::{self, Store};
use fleet::{Fleet, Note, Trust};

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// sqlite://PATH or postgres://USER@HOST[:PORT]/DATABASE
    #[arg(long, default_value = "sqlite://edge-platform.db")]
    pub store: String,
    /// A TOML file of `device = "public key hex"`: only these boxes, with these keys. Without it
    /// each box's key is pinned at first contact.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// The MQTT client id: the broker keeps this session's messages while `watch` is away, so
    /// keep it the same from run to run (and give each store its own).
    #[arg(long, default_value = "edge-platform-watch")]
    pub client_id: String,
    /// Take in what the broker holds until it has been quiet for 2 s, print the table as lines and
    /// exit: 1 when a box has an alarm, a kept-apart message or a gap its retention does not explain.
    #[arg(long)]
    pub once: bool,
    /// Stop after this long (e.g. 10m); runs until interrupted otherwise.
    #[arg(long = "for", value_parser = parse_duration)]
    pub run_for: Option<Duration>,
    /// Do not subscribe to evidence pictures (they are checked against their events otherwise).
    #[arg(long)]
    pub no_snapshots: bool,
}

/// The topics of docs/asyncapi.yaml `watch` reads, under the prefix.
fn filters(args: &WatchArgs) -> Vec<String> {
    let mut rests = vec!["+/status", "+/events", "+/chain", "+/telemetry", "+/cameras/+/health", "+/cmd/+/ack"];
    if !args.no_snapshots {
        rests.push("+/snapshots/+");
    }
    rests.into_iter().map(|r| args.broker.filter(r)).collect()
}

/// Reads the keys file: `device = "hex"` lines (TOML).
pub fn read_keys(path: &std::path::Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--keys {}", path.display()))?;
    let table: BTreeMap<String, String> = toml::from_str(&text)
        .with_context(|| format!("--keys {}: expected lines `device = \"public key hex\"`", path.display()))?;
    for (device, key) in &table {
        edge_agent::base::ed25519::decode_key_material(key, 32)
            .map_err(|e| anyhow::anyhow!("--keys {}: the key of {device} {e}", path.display()))?;
    }
    Ok(table)
}

/// What the live view shares with the ingest thread.
pub struct Shared {
    pub fleet: Mutex<Fleet>,
    pub notes: Mutex<Vec<(String, Note)>>,
    pub stored: std::sync::atomic::AtomicU64,
    pub last_message: Mutex<Instant>,
}

/// One message from the broker, with what acknowledging it needs.
struct Incoming {
    publish: Publish,
}

pub fn run(args: WatchArgs) -> Result<u8> {
    let trust = match &args.keys {
        Some(path) => Trust::Keys(read_keys(path)?),
        None => Trust::FirstUse,
    };
    let mut store = store::open(&args.store)?;
    let rows = store.boxes()?;
    let gaps = unexplained_gaps(store.as_mut())?;
    let (fleet, resumed) = Fleet::resume(trust, rows, &gaps);
    let shared = Arc::new(Shared {
        fleet: Mutex::new(fleet),
        notes: Mutex::new(Vec::new()),
        stored: 0.into(),
        last_message: Mutex::new(Instant::now()),
    });
    let live_table = std::io::stdout().is_terminal() && !args.once;
    for note in resumed.notes {
        say(&shared, note, live_table);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(watch(args, store, shared, live_table))
}

async fn watch(args: WatchArgs, store: Box<dyn Store>, shared: Arc<Shared>, live_table: bool) -> Result<u8> {
    let options = args.broker.options(&args.client_id, true).map(|mut o| {
        // Acknowledged only once stored.
        o.set_manual_acks(true);
        o.set_inflight(100);
        o
    })?;
    let (client, mut events) = AsyncClient::new(options, 1024);
    let (to_ingest, from_broker) = tokio::sync::mpsc::channel::<Incoming>(4096);
    // Messages stored, to acknowledge: from the ingest thread back to this loop, which alone
    // drives the client (an ack waits for the loop to send it).
    let (stored_tx, mut stored_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Publish>>();
    let mut to_ack: std::collections::VecDeque<Publish> = std::collections::VecDeque::new();
    let ingest = {
        let (shared, prefix) = (shared.clone(), args.broker.prefix.clone());
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || ingest(store, from_broker, stored_tx, shared, prefix, live_table))
            .context("cannot start the ingest thread")?
    };
    let started = Instant::now();
    // The store's URL as shown: never with its password.
    let store_name = edge_agent::base::redact::redact_userinfo(&args.store);
    let mut subscribed_at: Option<Instant> = None;
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    let mut stop = std::pin::pin!(stop_signal());
    let mut connection_error_said = false;
    loop {
        ack_stored(&client, &mut to_ack);
        tokio::select! {
            _ = &mut stop => break,
            Some(stored) = stored_rx.recv() => to_ack.extend(stored),
            _ = redraw.tick() => {
                if live_table {
                    table::redraw(&shared, &args.broker.broker, &store_name);
                }
                if args.run_for.is_some_and(|limit| started.elapsed() >= limit) {
                    break;
                }
                let quiet = shared.last_message.lock().map(|t| t.elapsed()).unwrap_or_default();
                if args.once && subscribed_at.is_some_and(|at| at.elapsed() > Duration::from_secs(2)) && quiet > Duration::from_secs(2) {
                    break;
                }
            }
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connection_error_said = false;
                    for filter in filters(&args) {
                        client.subscribe(filter, QoS::AtLeastOnce).await?;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subscribed_at.get_or_insert_with(Instant::now);
                    if let Ok(mut last) = shared.last_message.lock() {
                        *last = Instant::now();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Ok(mut last) = shared.last_message.lock() {
                        *last = Instant::now();
                    }
                    if to_ingest.send(Incoming { publish }).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if !connection_error_said {
                        say(&shared, Note { device: "-".into(), alarm: false, text: format!("broker {}: {e}; reconnecting", args.broker.broker) }, live_table);
                        connection_error_said = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    // Stored and acknowledged up to here; what is still in flight comes again next time.
    drop(to_ingest);
    let flush_until = Instant::now() + Duration::from_secs(10);
    while (!ingest.is_finished() || !to_ack.is_empty() || !stored_rx.is_empty()) && Instant::now() < flush_until {
        while let Ok(stored) = stored_rx.try_recv() {
            to_ack.extend(stored);
        }
        ack_stored(&client, &mut to_ack);
        let _ = tokio::time::timeout(Duration::from_millis(20), events.poll()).await;
    }
    let outcome = ingest.join().map_err(|_| anyhow::anyhow!("the ingest thread panicked"))?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(event) = events.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    outcome?;
    let fleet = shared.fleet.lock().map_err(|_| anyhow::anyhow!("the fleet view is poisoned"))?;
    if live_table {
        table::redraw_locked(&fleet, &shared, &args.broker.broker, &store_name);
    } else {
        print!("{}", table::render(&fleet));
    }
    let taken = shared.stored.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "watch: {taken} messages taken in over {:.1} s from {} boxes",
        started.elapsed().as_secs_f64(),
        fleet.boxes.len()
    );
    let troubled = fleet.boxes.values().any(|b| b.alarms > 0 || b.rejected > 0 || b.unexplained_gaps() > 0)
        || !fleet.unknown.is_empty();
    Ok(u8::from(args.once && troubled))
}

/// Hands the stored messages' acks to the client, as many as its queue takes now; every one must
/// reach the broker (an unanswered message holds one of the broker's few in-flight slots).
fn ack_stored(client: &AsyncClient, to_ack: &mut std::collections::VecDeque<Publish>) {
    while let Some(publish) = to_ack.front() {
        if client.try_ack(publish).is_err() {
            break;
        }
        to_ack.pop_front();
    }
}

async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The ingest thread: verifies and stores in batches (one transaction each), then acknowledges
/// the batch's messages to the broker.
fn ingest(
    mut store: Box<dyn Store>,
    mut from_broker: tokio::sync::mpsc::Receiver<Incoming>,
    stored: tokio::sync::mpsc::UnboundedSender<Vec<Publish>>,
    shared: Arc<Shared>,
    prefix: String,
    live_table: bool,
) -> Result<()> {
    while let Some(first) = from_broker.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match from_broker.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let received_at = crate::time::now_text();
        let mut writes = Vec::new();
        let mut notes = Vec::new();
        {
            let mut fleet = shared.fleet.lock().map_err(|_| anyhow::anyhow!("the fleet view is poisoned"))?;
            for incoming in &batch {
                let Some((device, rest)) = split_topic(&prefix, &incoming.publish.topic) else { continue };
                let decision = fleet.receive(device, rest, &incoming.publish.payload, &received_at);
                writes.extend(decision.writes);
                notes.extend(decision.notes);
            }
            writes.extend(fleet.changed_boxes());
        }
        let mut delay = Duration::from_millis(200);
        loop {
            match store.write(&writes, &received_at) {
                Ok(()) => break,
                // Not acknowledged: the broker keeps the messages; try again until the store is back.
                Err(e) => {
                    say(
                        &shared,
                        Note { device: "-".into(), alarm: true, text: format!("cannot store: {e:#}; retrying") },
                        live_table,
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        shared.stored.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for note in std::mem::take(&mut notes) {
            say(&shared, note, live_table);
        }
        let _ = stored.send(batch.into_iter().map(|i| i.publish).collect());
    }
    Ok(())
}

/// A note: a line on stdout, or under the live table.
fn say(shared: &Shared, note: Note, live_table: bool) {
    let time = crate::time::now_text();
    if !live_table {
        let level = if note.alarm { "ALARM" } else { "note" };
        println!("{} {} {level}: {}", time.get(..19).unwrap_or(&time), note.device, note.text);
    }
    if let Ok(mut notes) = shared.notes.lock() {
        notes.push((time, note));
        let excess = notes.len().saturating_sub(10);
        notes.drain(..excess);
    }
}

/// Gaps no retention record explains, per box, from earlier runs.
fn unexplained_gaps(store: &mut dyn Store) -> Result<BTreeMap<String, u64>> {
    let rows = store.query(
        "SELECT b.device, COUNT(*) FROM gaps g JOIN boxes b ON b.device = g.device AND b.epoch = g.epoch \
         WHERE g.pruned_by_policy IS NULL GROUP BY b.device",
        &[],
    )?;
    Ok(rows.iter().filter_map(|r| Some((r[0].text()?.to_string(), u64::try_from(r[1].int()?).ok()?))).collect())
}
