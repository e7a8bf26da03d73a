//! Commands from the platform: `{prefix}/{device}/cmd/{name}` with a JSON body carrying a
//! `correlation_id`, answered on `.../cmd/{name}/ack` with `ok` and a result, or a clear error.
//!
//! - `reload`: re-read the config file; live settings apply at once, the rest is named as
//!   needing a restart.
//! - `snapshot`: send the latest frame of one camera (or all) on `snapshots/{snapshot_id}` now.
//! - `set`: change thresholds, zones, or enable/disable a camera; validated, written to the
//!   config file atomically, applied live.
//! - `model`: download, verify (sha256, optional Ed25519 signature), load, self-test, switch, and
//!   roll back if the new model fails during its probation (see [`model_update`]).
//!
//! A malformed request changes nothing: it is refused before any state is touched. Acks go through
//! the outbox, so they are QoS 1 and survive a broker outage or a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};

use super::authority::Authority;
use super::config_store::Change;
use super::settable::Actor;
use super::settings::{LiveSettings, Outcome};
use crate::base::parse_error::describe_json_error;
use crate::base::redact::redact_text;
use crate::base::shutdown::Shutdown;
use crate::delivery::board::StatusBoard;
use crate::delivery::mqtt::{CommandScreen, IncomingCommand};
use crate::delivery::outbox::{Outbox, QueuedMessage};
use crate::infer::control::ModelRuns;

/// Version of the ack JSON; bump when a field changes meaning or goes away.
pub const ACK_SCHEMA_VERSION: u32 = 1;
pub const COMMANDS: [&str; 4] = ["reload", "snapshot", "set", "model"];
const CORRELATION_ID_MAX: usize = 128;

/// Why a command was refused or failed; `code` is stable for machines, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandError {
    pub code: &'static str,
    pub message: String,
}

impl CommandError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// The answer on `cmd/{name}/ack`.
#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    pub schema_version: u32,
    /// The request's id; null only when the request was not JSON or had none.
    pub correlation_id: Option<String>,
    pub command: String,
    pub device: String,
    pub time: DateTime<Utc>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadRequest {
    #[allow(dead_code)]
    correlation_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    #[allow(dead_code)]
    correlation_id: String,
    /// One camera; all cameras when absent.
    #[serde(default)]
    camera: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRequest {
    #[allow(dead_code)]
    correlation_id: String,
    /// Key → new value, e.g. `{"rules.object.min_score": 0.5, "cameras.gate.enabled": false}`.
    values: Map<String, Value>,
}

/// Reads the common envelope: JSON object with a `correlation_id`, then the command's own fields.
/// The correlation id is returned even when the rest is refused, so the error ack can carry it.
pub fn parse_request<T: DeserializeOwned>(payload: &[u8]) -> Result<(String, T), (Option<String>, CommandError)> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        let problem = describe_json_error(&e);
        (None, CommandError::new("malformed_json", format!("the payload is not valid JSON: {problem}")))
    })?;
    let Value::Object(fields) = &value else {
        return Err((None, CommandError::new("invalid_request", "expected a JSON object with a `correlation_id`")));
    };
    let correlation_id = match fields.get("correlation_id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= CORRELATION_ID_MAX => id.clone(),
        Some(_) => {
            return Err((
                None,
                CommandError::new(
                    "invalid_request",
                    format!("`correlation_id` is not a string of 1 to {CORRELATION_ID_MAX} characters"),
                ),
            ))
        }
        None => {
            return Err((
                None,
                CommandError::new("invalid_request", "`correlation_id` is missing; every command needs one"),
            ))
        }
    };
    match serde_json::from_value::<T>(value) {
        Ok(request) => Ok((correlation_id, request)),
        Err(e) => Err((Some(correlation_id), CommandError::new("invalid_request", describe_json_error(&e)))),
    }
}

/// The correlation id of any payload, if it has one (for acks of unknown commands).
fn correlation_id_of(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    value
        .get("correlation_id")?
        .as_str()
        .filter(|id| !id.is_empty() && id.len() <= CORRELATION_ID_MAX)
        .map(String::from)
}

/// What the commands may touch in the running agent.
pub struct CommandHandler {
    pub device_id: String,
    /// Checks that each command comes from the platform (signed envelope, clock window, nonce).
    pub authority: Arc<Authority>,
    pub topic_prefix: String,
    pub state_dir: PathBuf,
    /// Backend, ONNX Runtime library and threads for models the `model` command loads.
    pub inference: crate::config::InferenceConfig,
    /// The config store and the running stages a change reaches; the web page shares it.
    pub settings: Arc<LiveSettings>,
    pub board: Arc<StatusBoard>,
    pub outbox: Arc<Outbox>,
    pub publisher_wake: Arc<Notify>,
    /// Republish the retained status (models changed).
    pub status_changed: Arc<Notify>,
    pub model_runs: Arc<ModelRuns>,
    /// One switch (a model, or a site head from the page) and its pending file at a time.
    pub model_update_busy: Arc<AtomicBool>,
    /// How many refusals were answered and logged lately (see [`Refusals`]).
    pub refusals: std::sync::Mutex<Refusals>,
}

impl CommandScreen for CommandHandler {
    /// Size, envelope and signature before the queue; nonce and clock after it, in order.
    fn admits(&self, name: &str, payload: &[u8]) -> bool {
        match self.authority.screen(name, payload) {
            Ok(()) => true,
            Err((correlation_id, error)) => {
                self.refused_before_queueing(name, correlation_id, error);
                false
            }
        }
    }
}

/// Refusal acks allowed at once, and how fast the allowance comes back: a platform that sends a
/// few bad commands hears about each, a flood gets a handful of answers.
const REFUSAL_ACK_BURST: f64 = 20.0;
const REFUSAL_ACKS_PER_SEC: f64 = 1.0 / 3.0;
/// One log line per refusal reason in this time; the others are counted in it.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The allowance of refusal acks (a token bucket) and when each reason was last logged.
pub struct Refusals {
    acks: f64,
    refilled_at: std::time::Instant,
    logged: std::collections::HashMap<&'static str, (std::time::Instant, u64)>,
}

impl Default for Refusals {
    fn default() -> Self {
        Self { acks: REFUSAL_ACK_BURST, refilled_at: std::time::Instant::now(), logged: Default::default() }
    }
}

impl Refusals {
    fn may_ack(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.acks = (self.acks + elapsed * REFUSAL_ACKS_PER_SEC).min(REFUSAL_ACK_BURST);
        self.refilled_at = now;
        if self.acks >= 1.0 {
            self.acks -= 1.0;
            true
        } else {
            false
        }
    }

    /// Some(refusals of this reason not logged since the last line) when this one is to be logged.
    fn may_log(&mut self, code: &'static str, now: std::time::Instant) -> Option<u64> {
        match self.logged.get_mut(code) {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < REFUSAL_LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let earlier = std::mem::take(suppressed);
                *last = now;
                Some(earlier)
            }
            None => {
                self.logged.insert(code, (now, 0));
                Some(0)
            }
        }
    }
}

impl CommandHandler {
    /// Handles commands one at a time until the channel closes or shutdown; a model update runs
    /// in its own task, so a long download does not hold up `set` or `snapshot`.
    pub async fn run(self: Arc<Self>, mut commands: mpsc::Receiver<IncomingCommand>, mut shutdown: Shutdown) {
        loop {
            let command = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => command,
                    None => return,
                },
                _ = shutdown.wait() => return,
            };
            tracing::info!(command = %command.name, bytes = command.payload.len(), "command received");
            let handler = self.clone();
            // The nonce book, config edits and JPEG copies are blocking work.
            let authorised = tokio::task::spawn_blocking(move || {
                let authorised = handler.authorise(command);
                (handler, authorised)
            })
            .await;
            let Ok((handler, Some(command))) = authorised else { continue };
            if command.name == "model" {
                let shutdown = shutdown.clone();
                tokio::spawn(async move { handler.model(command, shutdown).await });
                continue;
            }
            let answered = tokio::task::spawn_blocking(move || handler.handle(&command)).await;
            if let Err(e) = answered {
                tracing::error!("command task failed: {e}");
            }
        }
    }

    /// The command as the platform sent it, out of its envelope; None (acked with the reason) when
    /// it is not the platform's, is too old, or was seen before.
    pub fn authorise(&self, command: IncomingCommand) -> Option<IncomingCommand> {
        // Unknown names too: only the platform learns which commands exist (`handle` lists them).
        match self.authority.open(&command.name, &command.payload, Utc::now()) {
            Ok(authorised) => {
                if !authorised.signed {
                    tracing::warn!(command = %command.name, "unsigned command accepted (`commands.accept_unsigned`)");
                }
                Some(IncomingCommand { name: command.name, payload: authorised.payload })
            }
            Err((id, error)) => {
                self.ack(&command.name, id, Err(error));
                None
            }
        }
    }

    /// Handles one command that is not `model`, and acks it.
    pub fn handle(&self, command: &IncomingCommand) {
        let outcome = match command.name.as_str() {
            "reload" => parse_request::<ReloadRequest>(&command.payload).map(|(id, _)| (id, self.reload())),
            "snapshot" => parse_request::<SnapshotRequest>(&command.payload)
                .map(|(id, request)| (id, self.snapshot(request.camera.as_deref()))),
            "set" => parse_request::<SetRequest>(&command.payload).map(|(id, request)| (id, self.set(request.values))),
            other => Err((
                correlation_id_of(&command.payload),
                CommandError::new(
                    "unknown_command",
                    format!("there is no command {other:?}; known commands: {}", COMMANDS.join(", ")),
                ),
            )),
        };
        match outcome {
            Ok((id, Ok(result))) => self.ack(&command.name, Some(id), Ok(result)),
            Ok((id, Err(error))) => self.ack(&command.name, Some(id), Err(error)),
            Err((id, error)) => self.ack(&command.name, id, Err(error)),
        }
    }

    /// Queues the ack in the outbox (QoS 1, survives outages) and logs the outcome.
    pub fn ack(&self, command: &str, correlation_id: Option<String>, outcome: Result<Value, CommandError>) {
        match &outcome {
            Ok(_) => tracing::info!(command, correlation_id = ?correlation_id, "command done"),
            Err(e) => tracing::warn!(
                command,
                correlation_id = ?correlation_id,
                code = e.code,
                "command refused: {}",
                redact_text(&e.message)
            ),
        }
        self.queue_ack(command, correlation_id, outcome);
    }

    /// A command the screen refused: counted by reason, answered and logged only within the limits of
    /// [`Refusals`], so a flood costs the box little and fills neither the outbox nor the log.
    fn refused_before_queueing(&self, command: &str, correlation_id: Option<String>, error: CommandError) {
        self.board.count_refused_command(error.code);
        let (ack, log) = {
            let mut refusals = self.refusals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = std::time::Instant::now();
            (refusals.may_ack(now), refusals.may_log(error.code, now))
        };
        if let Some(suppressed) = log {
            tracing::warn!(
                command,
                code = error.code,
                suppressed,
                "command refused before queueing: {} (refusals of this kind are logged once a minute)",
                redact_text(&error.message)
            );
        }
        if ack {
            // Off the MQTT loop: the outbox's durable commit must not slow the reading of a flood.
            let (outbox, wake, device) = (self.outbox.clone(), self.publisher_wake.clone(), self.device_id.clone());
            let command = command.to_string();
            let queue = move || queue_ack(&outbox, &wake, &device, &command, correlation_id, Err(error));
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(queue)),
                Err(_) => queue(),
            }
        }
    }

    fn queue_ack(&self, command: &str, correlation_id: Option<String>, outcome: Result<Value, CommandError>) {
        queue_ack(&self.outbox, &self.publisher_wake, &self.device_id, command, correlation_id, outcome);
    }

    fn reload(&self) -> Result<Value, CommandError> {
        let outcome = self.settings.reload().map_err(|e| CommandError::new(e.code(), e.to_string()))?;
        Ok(outcome_json(&outcome))
    }

    fn set(&self, values: Map<String, Value>) -> Result<Value, CommandError> {
        if values.is_empty() {
            return Err(CommandError::new("invalid_request", "`values` is empty; expected at least one key"));
        }
        let changes: Vec<Change> = values.into_iter().map(|(key, value)| Change { key, value }).collect();
        let outcome =
            self.settings.set(Actor::Platform, &changes).map_err(|e| CommandError::new(e.code(), e.to_string()))?;
        Ok(outcome_json(&outcome))
    }

    fn snapshot(&self, camera: Option<&str>) -> Result<Value, CommandError> {
        let health = self.settings.cameras();
        let cameras: Vec<String> = match camera {
            Some(id) if health.contains_key(id) => vec![id.to_string()],
            Some(_) => {
                let mut known: Vec<&String> = health.keys().collect();
                known.sort();
                return Err(CommandError::new(
                    "unknown_target",
                    format!("`camera` names no camera here; cameras: {known:?}"),
                ));
            }
            None => {
                let mut all: Vec<String> = health.keys().cloned().collect();
                all.sort();
                all
            }
        };
        let status = self.board.snapshot();
        let mut messages = Vec::new();
        let mut sent = Vec::new();
        for id in &cameras {
            if health.get(id).is_some_and(|h| h.disabled.load(Ordering::Relaxed)) {
                return Err(CommandError::new("camera_disabled", format!("camera {id:?} is disabled")));
            }
            let Some(jpeg) = self.board.latest_jpeg(id) else {
                return Err(CommandError::new("no_frame", format!("camera {id:?} has no frame yet")));
            };
            let snapshot_id = uuid::Uuid::now_v7();
            let topic_suffix = format!("snapshots/{snapshot_id}");
            let captured_at = status.cameras.iter().find(|c| &c.id == id).and_then(|c| c.last_frame_at);
            sent.push(json!({
                "camera": id,
                "snapshot_id": snapshot_id,
                "topic": format!("{}/{}/{}", self.topic_prefix, self.device_id, topic_suffix),
                "captured_at": captured_at,
                "bytes": jpeg.len(),
            }));
            messages.push(QueuedMessage { topic_suffix, payload: jpeg.as_ref().clone() });
        }
        let enqueued = self.outbox.enqueue(&messages).map_err(|e| CommandError::new("outbox_error", e.to_string()))?;
        if enqueued.refused_evidence > 0 {
            return Err(CommandError::new(
                "outbox_full",
                "the outbox quota is taken by event records; the snapshot was not queued",
            ));
        }
        self.publisher_wake.notify_one();
        Ok(json!({ "snapshots": sent }))
    }
}

/// Queues an ack in the outbox (QoS 1, survives outages) and wakes the publisher.
fn queue_ack(
    outbox: &Outbox,
    wake: &Notify,
    device: &str,
    command: &str,
    correlation_id: Option<String>,
    outcome: Result<Value, CommandError>,
) {
    let (ok, result, error) = match outcome {
        Ok(result) => (true, Some(result), None),
        // Messages may quote a URL or a config line: no password leaves through an ack.
        Err(error) => (false, None, Some(CommandError { message: redact_text(&error.message), ..error })),
    };
    let ack = Ack {
        schema_version: ACK_SCHEMA_VERSION,
        correlation_id,
        command: command.to_string(),
        device: device.to_string(),
        time: Utc::now(),
        ok,
        result,
        error,
    };
    let payload = match serde_json::to_vec(&ack) {
        Ok(payload) => payload,
        Err(e) => {
            tracing::error!("cannot encode ack: {e}");
            return;
        }
    };
    let message = QueuedMessage { topic_suffix: format!("cmd/{command}/ack"), payload };
    match outbox.enqueue(&[message]) {
        Ok(_) => wake.notify_one(),
        Err(e) => tracing::error!("{e}; the ack of {command} is lost"),
    }
}

/// The ack's result of `set` and `reload`.
fn outcome_json(outcome: &Outcome) -> Value {
    json!({ "changed": outcome.changed, "applied": outcome.applied, "restart_required": outcome.restart_required })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_gets_a_handful_of_acks_and_one_log_line_a_minute() {
        let mut refusals = Refusals::default();
        let start = std::time::Instant::now();
        let acked = (0..3000).filter(|_| refusals.may_ack(start)).count();
        assert_eq!(acked, REFUSAL_ACK_BURST as usize);
        assert!(refusals.may_ack(start + std::time::Duration::from_secs(3)), "the allowance comes back");
        let logged: Vec<Option<u64>> = (0..3000).map(|_| refusals.may_log("unsigned_refused", start)).collect();
        assert_eq!(logged.iter().filter(|l| l.is_some()).count(), 1);
        assert_eq!(refusals.may_log("signature_invalid", start), Some(0), "each reason has its own line");
        let later = start + REFUSAL_LOG_INTERVAL;
        assert_eq!(refusals.may_log("unsigned_refused", later), Some(2999), "the next line says how many it skipped");
    }

    #[test]
    fn a_request_needs_json_an_object_and_a_correlation_id() {
        let parse = |text: &str| parse_request::<SetRequest>(text.as_bytes());
        let (id, e) = parse("{not json").unwrap_err();
        assert_eq!((id, e.code), (None, "malformed_json"));
        assert_eq!(parse("[1, 2]").unwrap_err().1.code, "invalid_request");
        let e = parse(r#"{"values": {}}"#).unwrap_err().1;
        assert!(e.message.contains("correlation_id"), "{e:?}");
        let e = parse(r#"{"correlation_id": 7, "values": {}}"#).unwrap_err().1;
        assert!(e.message.contains("correlation_id"), "{e:?}");
        let long = "x".repeat(200);
        assert!(parse(&format!(r#"{{"correlation_id": "{long}", "values": {{}}}}"#)).is_err());
    }

    #[test]
    fn unknown_fields_are_refused_but_the_correlation_id_is_kept() {
        let (id, e) =
            parse_request::<SetRequest>(br#"{"correlation_id": "c-1", "values": {}, "valeus": 1}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("c-1"));
        assert!(e.message.contains("valeus"), "{e:?}");
        let (id, request) = parse_request::<SetRequest>(br#"{"correlation_id": "c-2", "values": {"a": 1}}"#).unwrap();
        assert_eq!((id.as_str(), request.values.len()), ("c-2", 1));
    }
}
