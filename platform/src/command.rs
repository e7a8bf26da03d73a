//! `edge-platform command`: one command for one box or a fleet, built and signed here, published
//! on `cmd/{name}`, and followed to its ack(s). A box that is offline (its retained status says
//! so) gets the command when it comes back, signed afresh (a queued one would be stale by then),
//! until the deadline. The decisions (when to send, which ack counts) are in [`Fleet`], apart from
//! the socket loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::broker::{fresh_client_id, parse_duration, BrokerArgs};
use crate::keys::{fresh_nonce, PlatformKey};

#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The platform's private key file (`keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// A box to command (repeat for several).
    #[arg(long = "device", required_unless_present = "all")]
    pub devices: Vec<String>,
    /// Every box that has a retained `status` on the broker.
    #[arg(long, conflicts_with = "devices")]
    pub all: bool,
    /// Give up on boxes that have not answered by then (offline ones are retried until it).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Print each ack as the JSON the box sent, one a line, instead of a summary line.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Change settings: KEY=VALUE, VALUE as JSON (0.5, false, null, [..], {..}) or else a string.
    Set {
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Re-read the config file.
    Reload,
    /// The latest picture of one camera (or every camera) on `snapshots/{id}`.
    Snapshot {
        #[arg(long)]
        camera: Option<String>,
    },
    /// Replace the configured model NAME with the file served at URL (FILE: the same bytes here,
    /// for its sha256 and signature).
    Model {
        #[arg(long)]
        name: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        file: PathBuf,
        /// The key that signs model files when it is not --key.
        #[arg(long)]
        model_key: Option<PathBuf>,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Set { .. } => "set",
            Action::Reload => "reload",
            Action::Snapshot { .. } => "snapshot",
            Action::Model { .. } => "model",
        }
    }

    /// The command's own fields (without `correlation_id`, `issued_at`, `nonce`).
    pub fn fields(&self, key: &PlatformKey) -> Result<Map<String, Value>> {
        let mut fields = Map::new();
        match self {
            Action::Set { values } => {
                let mut set = Map::new();
                for pair in values {
                    let (name, value) = pair.split_once('=').with_context(|| format!("{pair:?} is not KEY=VALUE"))?;
                    if name.trim().is_empty() {
                        bail!("{pair:?} has no key before `=`");
                    }
                    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
                    set.insert(name.trim().to_string(), value);
                }
                fields.insert("values".into(), Value::Object(set));
            }
            Action::Reload => {}
            Action::Snapshot { camera } => {
                if let Some(camera) = camera {
                    fields.insert("camera".into(), json!(camera));
                }
            }
            Action::Model { name, url, file, model_key } => {
                let separate;
                let signer = match model_key {
                    Some(path) => {
                        separate = PlatformKey::read(path)?;
                        &separate
                    }
                    None => key,
                };
                let signed = sign_model_file(signer, file)?;
                fields.insert("name".into(), json!(name));
                fields.insert("url".into(), json!(url));
                fields.insert("sha256".into(), json!(signed.sha256));
                fields.insert("signature".into(), json!(signed.signature));
            }
        }
        Ok(fields)
    }
}

/// A model file's hash and the platform's signature over its bytes.
pub struct SignedModel {
    pub sha256: String,
    pub signature: String,
    pub bytes: u64,
}

pub fn sign_model_file(key: &PlatformKey, file: &std::path::Path) -> Result<SignedModel> {
    let bytes = std::fs::read(file).with_context(|| format!("the model file {}", file.display()))?;
    Ok(SignedModel {
        sha256: hex::encode(Sha256::digest(&bytes)),
        signature: key.sign_bytes_hex(&bytes),
        bytes: bytes.len() as u64,
    })
}

/// Where one box stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Not sent yet: offline, or not heard of.
    Waiting,
    /// Sent; the correlation ids of every attempt, newest last.
    Sent,
    /// A model switched in and on probation: waiting for `confirmed` until then.
    OnProbation {
        until: Instant,
    },
    Done(Outcome),
}

/// How it ended for one box.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok {
        result: Value,
    },
    Refused {
        code: String,
        message: String,
    },
    /// Never online before the deadline (or never seen on this broker).
    Offline,
    /// Sent while online, but no ack came.
    NoAnswer,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub device: String,
    pub online: Option<bool>,
    /// How often the box came back online (away, then `online`) while we watched.
    returns: u64,
    pub attempts: Vec<String>,
    /// `returns` when we last sent: a return since means the command may have missed it.
    sent_at_return: u64,
    /// After a `no_frame` refusal (a box just back, its camera not yet running): not before then.
    retry_at: Option<Instant>,
    pub progress: Progress,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    pub device: String,
    pub correlation_id: String,
}

/// Every target box and what it said: the decisions of `command`, without sockets.
#[derive(Debug, Default)]
pub struct Fleet {
    pub command: String,
    pub targets: BTreeMap<String, Target>,
}

impl Fleet {
    pub fn new(command: &str, devices: impl IntoIterator<Item = String>) -> Self {
        let targets = devices
            .into_iter()
            .map(|device| {
                let target = Target {
                    device: device.clone(),
                    online: None,
                    returns: 0,
                    attempts: Vec::new(),
                    sent_at_return: 0,
                    retry_at: None,
                    progress: Progress::Waiting,
                };
                (device, target)
            })
            .collect();
        Self { command: command.to_string(), targets }
    }

    /// A retained or live `status` of a box.
    pub fn status(&mut self, device: &str, status: &Value) {
        let Some(target) = self.targets.get_mut(device) else { return };
        let online = status["state"] == "online";
        // A box republishes `online` while it stays (a new chain head): only away-then-back counts.
        if online && target.online == Some(false) {
            target.returns += 1;
        }
        target.online = Some(online);
    }

    /// The boxes to send to now: online (or never heard of, in case status is not retained on
    /// this broker) and not sent yet, or back online since the last attempt.
    pub fn due(&mut self) -> Vec<Send> {
        let mut sends = Vec::new();
        for target in self.targets.values_mut() {
            let due = match target.progress {
                Progress::Waiting => {
                    target.online != Some(false) && target.retry_at.is_none_or(|at| Instant::now() >= at)
                }
                // It went away with our command and came back: the queued one is stale by now.
                Progress::Sent => target.online == Some(true) && target.returns != target.sent_at_return,
                Progress::OnProbation { .. } | Progress::Done(_) => false,
            };
            if due {
                let correlation_id = format!("edge-platform-{}", fresh_nonce());
                target.attempts.push(correlation_id.clone());
                target.sent_at_return = target.returns;
                target.progress = Progress::Sent;
                sends.push(Send { device: target.device.clone(), correlation_id });
            }
        }
        sends
    }

    /// An ack from a box; true when it counted (it answers one of our attempts).
    pub fn ack(&mut self, device: &str, ack: &Value, now: Instant) -> bool {
        let Some(target) = self.targets.get_mut(device) else { return false };
        let code = ack["error"]["code"].as_str().unwrap_or_default();
        // A box refuses a bad signature before it reads the command, so that ack has no
        // correlation id: while we wait on this box it is taken as the answer to our newest attempt.
        let unsigned_refusal = ack["correlation_id"].is_null()
            && matches!(code, "signature_invalid" | "signature_unverifiable")
            && !target.attempts.is_empty();
        let attempt = if unsigned_refusal {
            target.attempts.len() - 1
        } else {
            let Some(id) = ack["correlation_id"].as_str() else { return false };
            let Some(attempt) = target.attempts.iter().position(|a| a == id) else { return false };
            attempt
        };
        if matches!(target.progress, Progress::Done(_)) {
            return false;
        }
        let newest = attempt + 1 == target.attempts.len();
        let code = ack["error"]["code"].as_str().unwrap_or_default().to_string();
        // An older attempt that waited on the broker while the box was away: stale by now.
        if !newest && ack["ok"] != true && matches!(code.as_str(), "expired" | "replayed") {
            return false;
        }
        // Two attempts both arrived: the later one finds the earlier one at work.
        if target.attempts.len() > 1 && code == "busy" {
            return false;
        }
        target.progress = if ack["ok"] == true {
            let result = ack.get("result").cloned().unwrap_or(Value::Null);
            if result["stage"] == "switched" {
                let probation = result["probation_seconds"].as_u64().unwrap_or(60);
                Progress::OnProbation { until: now + Duration::from_secs(probation * 3 + 60) }
            } else {
                Progress::Done(Outcome::Ok { result })
            }
        } else {
            let message = ack["error"]["message"].as_str().unwrap_or_default().to_string();
            // A camera with no frame yet (the box has just started): asked again in a second.
            if code == "no_frame" {
                target.retry_at = Some(now + Duration::from_secs(1));
                target.progress = Progress::Waiting;
                return true;
            }
            Progress::Done(Outcome::Refused { code, message })
        };
        true
    }

    /// At the deadline: every box still waiting ends offline or unanswered. Models on probation
    /// have their own deadline.
    pub fn expire(&mut self, now: Instant, deadline_passed: bool) {
        for target in self.targets.values_mut() {
            target.progress = match &target.progress {
                Progress::Waiting if deadline_passed => Progress::Done(Outcome::Offline),
                Progress::Sent if deadline_passed => Progress::Done(Outcome::NoAnswer),
                Progress::OnProbation { until } if now >= *until => Progress::Done(Outcome::NoAnswer),
                other => other.clone(),
            };
        }
    }

    pub fn finished(&self) -> bool {
        self.targets.values().all(|t| matches!(t.progress, Progress::Done(_)))
    }

    pub fn done_count(&self) -> u64 {
        self.targets.values().filter(|t| matches!(t.progress, Progress::Done(_))).count() as u64
    }

    /// 0: every box acked ok; 1: a box refused; 2: a box was not reached or did not answer.
    pub fn exit_code(&self) -> u8 {
        let outcomes = self.targets.values().map(|t| &t.progress);
        let mut code = 0;
        for outcome in outcomes {
            match outcome {
                Progress::Done(Outcome::Ok { .. }) => {}
                Progress::Done(Outcome::Refused { .. }) => return 1,
                _ => code = 2,
            }
        }
        code
    }

    /// The table of results, one row a box.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 4]> = self
            .targets
            .values()
            .map(|t| {
                let (result, code, detail) = match &t.progress {
                    Progress::Done(Outcome::Ok { result }) => ("ok".into(), String::new(), summary(result)),
                    Progress::Done(Outcome::Refused { code, message }) => {
                        ("refused".into(), code.clone(), message.clone())
                    }
                    Progress::Done(Outcome::Offline) => {
                        let why = match t.online {
                            None => "never seen on this broker",
                            _ => "offline until the deadline",
                        };
                        ("offline".into(), String::new(), why.to_string())
                    }
                    Progress::Done(Outcome::NoAnswer) => {
                        ("no answer".into(), String::new(), format!("{} attempt(s), no ack", t.attempts.len()))
                    }
                    other => (format!("{other:?}"), String::new(), String::new()),
                };
                [t.device.clone(), result, code, detail]
            })
            .collect();
        render_table(&["box", "result", "code", "detail"], &rows)
    }
}

/// A short line for an ok ack's result.
fn summary(result: &Value) -> String {
    let text = result.to_string();
    if text.chars().count() > 100 {
        format!("{}…", text.chars().take(100).collect::<String>())
    } else {
        text
    }
}

/// Columns padded to their widest cell.
pub fn render_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut text = line(header.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

/// Runs `command`; returns the exit code.
pub fn run(args: CommandArgs) -> Result<u8> {
    let key = PlatformKey::read(&args.key)?;
    let fields = args.action.fields(&key)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(command(args, key, fields))
}

async fn command(args: CommandArgs, key: PlatformKey, fields: Map<String, Value>) -> Result<u8> {
    let name = args.action.name();
    let options = args.broker.options(&fresh_client_id("cmd"), false)?;
    let (client, mut events) = AsyncClient::new(options, 64);
    let status_filter = args.broker.filter("+/status");
    let ack_filter = args.broker.filter(&format!("+/cmd/{name}/ack"));
    client.subscribe(&ack_filter, QoS::AtLeastOnce).await?;
    client.subscribe(&status_filter, QoS::AtLeastOnce).await?;

    // Retained statuses come right after the subscription: who exists, who is online.
    let mut statuses: BTreeMap<String, Value> = BTreeMap::new();
    let mut subscribed = 0;
    let connect_by = Instant::now() + Duration::from_secs(15);
    let mut quiet_until = None;
    loop {
        let wait = match quiet_until {
            Some(until) => until,
            None => connect_by,
        };
        match tokio::time::timeout_at(wait.into(), events.poll()).await {
            Err(_) if quiet_until.is_none() => bail!("no answer from the broker {} within 15 s", args.broker.broker),
            Err(_) => break,
            Ok(Err(e)) => bail!("the broker {}: {e}", args.broker.broker),
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                subscribed += 1;
                if subscribed == 2 {
                    quiet_until = Some(Instant::now() + Duration::from_millis(700));
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                let Some((device, rest)) = args.broker.split(&publish.topic) else { continue };
                let Ok(value) = serde_json::from_slice::<Value>(&publish.payload) else { continue };
                if rest == "status" {
                    statuses.insert(device.to_string(), value);
                    if subscribed == 2 {
                        quiet_until = Some(Instant::now() + Duration::from_millis(300));
                    }
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    let devices: BTreeSet<String> =
        if args.all { statuses.keys().cloned().collect() } else { args.devices.iter().cloned().collect() };
    if devices.is_empty() {
        bail!("no box has a retained status on {} under {}/+/status", args.broker.broker, args.broker.prefix);
    }
    let mut fleet = Fleet::new(name, devices);
    for (device, status) in &statuses {
        fleet.status(device, status);
    }
    let bar = indicatif::ProgressBar::new(fleet.targets.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} boxes answered  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + args.deadline;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let now = Instant::now();
        fleet.expire(now, now >= deadline);
        for send in fleet.due() {
            let mut command = fields.clone();
            command.insert("correlation_id".into(), json!(send.correlation_id));
            let envelope =
                key.envelope(&send.device, name, &Value::Object(command), chrono::Utc::now(), &fresh_nonce())?;
            client
                .publish(args.broker.topic(&send.device, &format!("cmd/{name}")), QoS::AtLeastOnce, false, envelope)
                .await?;
        }
        bar.set_position(fleet.done_count());
        let waiting = fleet.targets.values().filter(|t| t.progress == Progress::Waiting).count();
        bar.set_message(if waiting > 0 {
            format!("{waiting} offline, retried until the deadline")
        } else {
            String::new()
        });
        if fleet.finished() {
            break;
        }
        let event = tokio::select! {
            _ = tick.tick() => continue,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Some((device, rest)) = args.broker.split(&publish.topic) else { continue };
                let Ok(value) = serde_json::from_slice::<Value>(&publish.payload) else { continue };
                if rest == "status" {
                    fleet.status(device, &value);
                } else if fleet.ack(device, &value, Instant::now()) {
                    bar.suspend(|| print_ack(device, name, &value, args.json));
                }
            }
            Ok(_) => {}
            Err(e) => {
                bar.suspend(|| eprintln!("edge-platform: the broker {}: {e}; reconnecting", args.broker.broker));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    bar.finish_and_clear();
    let _ = client.disconnect().await;
    if !args.json {
        print!("{}", fleet.table());
    }
    Ok(fleet.exit_code())
}

fn print_ack(device: &str, name: &str, ack: &Value, json: bool) {
    if json {
        println!("{ack}");
        return;
    }
    if ack["ok"] == true {
        let stage = ack["result"]["stage"].as_str().map(|s| format!(" ({s})")).unwrap_or_default();
        println!("{device}: {name} ok{stage}");
    } else {
        println!(
            "{device}: {name} refused: {} — {}",
            ack["error"]["code"].as_str().unwrap_or("?"),
            ack["error"]["message"].as_str().unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(time: &str) -> Value {
        json!({ "state": "online", "time": time })
    }

    #[test]
    fn an_offline_box_is_sent_its_command_when_it_comes_back_and_a_stale_ack_does_not_count() {
        let mut fleet = Fleet::new("set", ["a".to_string(), "b".to_string()]);
        fleet.status("a", &online("t1"));
        fleet.status("b", &json!({ "state": "offline", "time": "t0" }));
        let first = fleet.due();
        assert_eq!(first.iter().map(|s| s.device.as_str()).collect::<Vec<_>>(), ["a"]);
        assert!(fleet.due().is_empty(), "sent once while nothing changes");
        fleet.status("a", &online("t1.5"));
        assert!(fleet.due().is_empty(), "a box that stays online and says so again is not sent it twice");
        // a drops and comes back before answering: its queued command is stale, send it afresh.
        fleet.status("a", &json!({ "state": "offline", "time": "t1" }));
        assert!(fleet.due().is_empty());
        fleet.status("a", &online("t2"));
        let again = fleet.due();
        assert_eq!(again.len(), 1);
        let now = Instant::now();
        let stale = json!({ "correlation_id": first[0].correlation_id, "ok": false, "error": { "code": "expired" } });
        assert!(!fleet.ack("a", &stale, now), "the first attempt's expiry does not count");
        let ok = json!({ "correlation_id": again[0].correlation_id, "ok": true, "result": { "applied": [] } });
        assert!(fleet.ack("a", &ok, now));
        // b comes online: sent now.
        fleet.status("b", &online("t3"));
        let b = fleet.due();
        assert_eq!(b[0].device, "b");
        let refused = json!({ "correlation_id": b[0].correlation_id, "ok": false, "error": { "code": "local_only", "message": "m" } });
        assert!(fleet.ack("b", &refused, now));
        assert!(fleet.finished());
        assert_eq!(fleet.exit_code(), 1);
        assert!(fleet.table().contains("local_only"));
    }

    #[test]
    fn a_model_waits_for_its_confirmation_and_a_box_never_seen_ends_offline_at_the_deadline() {
        let mut fleet = Fleet::new("model", ["a".to_string(), "ghost".to_string()]);
        fleet.status("a", &online("t1"));
        fleet.status("ghost", &json!({ "state": "stopped", "time": "t0" }));
        let sent = fleet.due();
        let now = Instant::now();
        let switched = json!({ "correlation_id": sent[0].correlation_id, "ok": true, "result": { "stage": "switched", "probation_seconds": 3 } });
        assert!(fleet.ack("a", &switched, now));
        assert!(matches!(fleet.targets["a"].progress, Progress::OnProbation { .. }));
        fleet.expire(now, true);
        assert!(matches!(fleet.targets["a"].progress, Progress::OnProbation { .. }), "probation has its own deadline");
        assert_eq!(fleet.targets["ghost"].progress, Progress::Done(Outcome::Offline));
        let confirmed =
            json!({ "correlation_id": sent[0].correlation_id, "ok": true, "result": { "stage": "confirmed" } });
        assert!(fleet.ack("a", &confirmed, now));
        assert!(fleet.finished());
        assert_eq!(fleet.exit_code(), 2, "a box not reached is not success");
    }

    #[test]
    fn set_values_read_as_json_or_else_as_strings() {
        let key = PlatformKey::from_seed(&[1; 32]);
        let action = Action::Set {
            values: vec![
                "rules.object.min_score=0.4".into(),
                "cameras.gate.enabled=false".into(),
                "x.label=cup".into(),
            ],
        };
        let fields = action.fields(&key).unwrap();
        assert_eq!(
            fields["values"],
            json!({ "rules.object.min_score": 0.4, "cameras.gate.enabled": false, "x.label": "cup" })
        );
        assert!(Action::Set { values: vec!["no-equals".into()] }.fields(&key).is_err());
    }
}
