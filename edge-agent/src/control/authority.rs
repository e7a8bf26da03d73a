//! Who may command the box from afar. Publishing on `edge/{device}/cmd/*` proves nothing: every
//! box's credentials are on the shared broker, and a stolen box's too. A command counts only when
//! it comes in an envelope signed with the platform's Ed25519 key (`commands.platform_public_key`),
//! for this device and this command, issued within `commands.max_age_secs` of the box's clock, with
//! a nonce the box has not seen before (kept across restarts). Unsigned commands are refused unless
//! `commands.accept_unsigned` opens them, which the agent logs at every start.
//!
//! The envelope, on `cmd/{name}`:
//!
//! ```json
//! { "signed": "<base64 of the command's JSON bytes>", "signature": "<base64 or hex Ed25519>" }
//! ```
//!
//! The signature covers `edge-agent/cmd/v1\n{device}\n{name}\n` followed by the exact bytes that
//! `signed` decodes to: a command signed for one box or one command is worthless on another. The
//! command JSON carries `issued_at` (RFC 3339) and `nonce` (8 to 128 characters) beside its own
//! fields; both are taken out before the command is read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::commands::CommandError;
use super::config::CommandsConfig;
use crate::base::ed25519;
use crate::base::parse_error::describe_json_error;
use crate::base::write_file::write_atomically;

/// Larger command payloads are refused before they are parsed; real commands are a few hundred bytes.
pub const COMMAND_MAX_BYTES: usize = 64 * 1024;

/// What the signature covers before the command's bytes.
const DOMAIN: &str = "edge-agent/cmd/v1";

/// The replay book keeps at most this many nonces; more within one window are refused.
const MAX_NONCES: usize = 10_000;

/// Where the nonces of accepted commands are kept, so a restart does not reopen the window.
pub const NONCE_FILE: &str = "command-nonces.json";

/// An envelope whose signature holds (its command's fields), or an unsigned payload let in.
enum Verified {
    Signed(Map<String, Value>),
    Unsigned(Vec<u8>),
}

/// A command that passed the authority check: its JSON object without the envelope fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Authorised {
    pub payload: Vec<u8>,
    /// False when it came unsigned and `commands.accept_unsigned` let it in.
    pub signed: bool,
}

/// Checks command envelopes against the platform's key, the clock and the nonces seen.
pub struct Authority {
    device_id: String,
    platform_key: Option<Vec<u8>>,
    accept_unsigned: bool,
    max_age: chrono::Duration,
    nonces: Mutex<NonceBook>,
}

impl Authority {
    /// The authority of `config`; the nonces of earlier runs are read from `state_dir`.
    pub fn new(device_id: &str, config: &CommandsConfig, state_dir: &Path) -> Result<Self, String> {
        let platform_key = match &config.platform_public_key {
            Some(text) => Some(
                ed25519::decode_key_material(text, 32).map_err(|e| format!("`commands.platform_public_key` {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            device_id: device_id.to_string(),
            platform_key,
            accept_unsigned: config.accept_unsigned,
            max_age: chrono::Duration::seconds(i64::try_from(config.max_age_secs).unwrap_or(i64::MAX / 1000)),
            nonces: Mutex::new(NonceBook::open(state_dir.join(NONCE_FILE))),
        })
    }

    /// Says at start what the box accepts, loudly when it accepts unsigned commands.
    pub fn log_policy(&self) {
        match (&self.platform_key, self.accept_unsigned) {
            (_, true) => tracing::warn!(
                "`commands.accept_unsigned` is on: ANYONE who can publish on this box's cmd/* topics can change it; \
                 program actions and privacy stay local-only"
            ),
            (Some(_), false) => tracing::info!("commands are accepted only when signed with the platform's key"),
            (None, false) => tracing::info!(
                "no `commands.platform_public_key`: remote commands are refused; change the box on its page"
            ),
        }
    }

    pub fn accepts_unsigned(&self) -> bool {
        self.accept_unsigned
    }

    /// The checks that need no state, done before a command is queued: size, JSON, envelope and
    /// signature (or the unsigned policy). Cheap enough for every message a flood brings.
    pub fn screen(&self, name: &str, payload: &[u8]) -> Result<(), (Option<String>, CommandError)> {
        self.verify(name, payload).map(|_| ())
    }

    /// Opens the envelope of command `name` received at `now`: the authorised command, or why it was
    /// refused (with the correlation id when one could be read, for the error ack).
    pub fn open(
        &self,
        name: &str,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Authorised, (Option<String>, CommandError)> {
        let mut fields = match self.verify(name, payload)? {
            Verified::Unsigned(payload) => return Ok(Authorised { payload, signed: false }),
            Verified::Signed(fields) => fields,
        };
        let correlation_id = fields.get("correlation_id").and_then(Value::as_str).map(String::from);
        let with_id = |error: CommandError| (correlation_id.clone(), error);
        let issued_at = take_issued_at(&mut fields).map_err(with_id)?;
        let nonce = take_nonce(&mut fields).map_err(with_id)?;
        let age = now - issued_at;
        if age > self.max_age || -age > self.max_age {
            return Err(with_id(CommandError::new(
                "expired",
                format!(
                    "`issued_at` is {} s from the box's clock ({}); commands are accepted within {} s",
                    age.num_seconds(),
                    now.to_rfc3339(),
                    self.max_age.num_seconds()
                ),
            )));
        }
        let mut nonces = self.nonces.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        nonces.forget_before(now - self.max_age - self.max_age);
        nonces.remember(&nonce, issued_at).map_err(with_id)?;
        let payload = serde_json::to_vec(&Value::Object(fields))
            .map_err(|e| with_id(CommandError::new("internal", format!("cannot re-encode the command: {e}"))))?;
        Ok(Authorised { payload, signed: true })
    }

    /// Size, JSON, envelope and signature: the signed command's fields, or an unsigned payload the
    /// policy lets in. Errors name what was wrong, never what was sent.
    fn verify(&self, name: &str, payload: &[u8]) -> Result<Verified, (Option<String>, CommandError)> {
        if payload.len() > COMMAND_MAX_BYTES {
            return Err((
                None,
                CommandError::new(
                    "too_large",
                    format!("the payload has {} bytes; commands are at most {COMMAND_MAX_BYTES}", payload.len()),
                ),
            ));
        }
        let value: Value = serde_json::from_slice(payload).map_err(|e| {
            (
                None,
                CommandError::new(
                    "malformed_json",
                    format!("the payload is not valid JSON: {}", describe_json_error(&e)),
                ),
            )
        })?;
        let Value::Object(outer) = value else {
            return Err((None, CommandError::new("invalid_request", "expected a JSON object")));
        };
        if !outer.contains_key("signed") && !outer.contains_key("signature") {
            return self.unsigned(payload, &outer).map(|a| Verified::Unsigned(a.payload));
        }
        let refuse = |code: &'static str, message: String| Err((None, CommandError::new(code, message)));
        if outer.len() != 2 {
            return refuse(
                "malformed_envelope",
                format!("the envelope has {} keys; expected exactly `signed` and `signature`", outer.len()),
            );
        }
        let (Some(Value::String(signed)), Some(Value::String(signature))) =
            (outer.get("signed"), outer.get("signature"))
        else {
            return refuse("malformed_envelope", "`signed` and `signature` must be strings".into());
        };
        let command = base64::engine::general_purpose::STANDARD
            .decode(signed)
            .map_err(|_| (None, CommandError::new("malformed_envelope", "`signed` is not standard base64")))?;
        let signature = ed25519::decode_key_material(signature, 64).map_err(|_| {
            (None, CommandError::new("malformed_envelope", "`signature` is not 64 bytes in base64 or hex"))
        })?;
        let Some(key) = &self.platform_key else {
            return refuse(
                "signature_unverifiable",
                "the command is signed but no `commands.platform_public_key` is configured to check it".into(),
            );
        };
        if !ed25519::verify(key, &signed_message(&self.device_id, name, &command), &signature) {
            return refuse(
                "signature_invalid",
                format!(
                    "the signature does not match the command, this device ({}) and cmd/{name} under the platform's key",
                    self.device_id
                ),
            );
        }
        let value: Value = serde_json::from_slice(&command).map_err(|e| {
            let problem = describe_json_error(&e);
            (None, CommandError::new("malformed_json", format!("the signed command is not valid JSON: {problem}")))
        })?;
        let Value::Object(fields) = value else {
            return refuse("invalid_request", "the signed command is not a JSON object".into());
        };
        Ok(Verified::Signed(fields))
    }

    fn unsigned(
        &self,
        payload: &[u8],
        fields: &Map<String, Value>,
    ) -> Result<Authorised, (Option<String>, CommandError)> {
        let correlation_id = fields.get("correlation_id").and_then(Value::as_str).map(String::from);
        if !self.accept_unsigned {
            return Err((
                correlation_id,
                CommandError::new(
                    "unsigned_refused",
                    "this box accepts only commands signed by the platform (an envelope with `signed` and \
                     `signature`); see docs/SECURITY.md",
                ),
            ));
        }
        Ok(Authorised { payload: payload.to_vec(), signed: false })
    }
}

/// The bytes the platform signs for command `name` to `device`.
pub fn signed_message(device: &str, name: &str, command: &[u8]) -> Vec<u8> {
    let mut message = format!("{DOMAIN}\n{device}\n{name}\n").into_bytes();
    message.extend_from_slice(command);
    message
}

fn take_issued_at(fields: &mut Map<String, Value>) -> Result<DateTime<Utc>, CommandError> {
    match fields.remove("issued_at") {
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| CommandError::new("invalid_request", "`issued_at` is not an RFC 3339 time")),
        Some(_) => Err(CommandError::new("invalid_request", "`issued_at` is not a string; expected an RFC 3339 time")),
        None => Err(CommandError::new("invalid_request", "`issued_at` is missing; a signed command needs one")),
    }
}

fn take_nonce(fields: &mut Map<String, Value>) -> Result<String, CommandError> {
    match fields.remove("nonce") {
        Some(Value::String(nonce)) if (8..=128).contains(&nonce.len()) => Ok(nonce),
        Some(_) => Err(CommandError::new("invalid_request", "`nonce` is not a string of 8 to 128 characters")),
        None => Err(CommandError::new("invalid_request", "`nonce` is missing; a signed command needs one")),
    }
}

/// The nonces of accepted commands with their `issued_at`, saved after each change.
struct NonceBook {
    path: PathBuf,
    seen: HashMap<String, DateTime<Utc>>,
}

impl NonceBook {
    /// Reads the book; a missing or damaged file starts empty (logged): the clock window still
    /// bounds what could be replayed.
    fn open(path: PathBuf) -> Self {
        let seen = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "cannot read the command nonces ({e}); starting afresh");
                HashMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read the command nonces ({e}); starting afresh");
                HashMap::new()
            }
        };
        Self { path, seen }
    }

    fn forget_before(&mut self, oldest: DateTime<Utc>) {
        self.seen.retain(|_, issued| *issued >= oldest);
    }

    fn remember(&mut self, nonce: &str, issued_at: DateTime<Utc>) -> Result<(), CommandError> {
        if self.seen.contains_key(nonce) {
            return Err(CommandError::new("replayed", format!("nonce {nonce:?} was used before; a command runs once")));
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(CommandError::new(
                "rate_limited",
                "too many commands within the clock window; try again later",
            ));
        }
        self.seen.insert(nonce.to_string(), issued_at);
        // Saved before the command runs: a crash right after cannot reopen it to a replay.
        let saved = serde_json::to_vec(&self.seen)
            .map_err(|e| e.to_string())
            .and_then(|json| write_atomically(&self.path, &json).map_err(|e| e.to_string()));
        if let Err(e) = saved {
            self.seen.remove(nonce);
            return Err(CommandError::new(
                "state_unwritable",
                format!(
                    "cannot record the command's nonce in {}: {e}; refused so it cannot be replayed",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLATFORM_SEED: [u8; 32] = [42; 32];

    fn authority(dir: &Path, accept_unsigned: bool) -> Authority {
        let key = ed25519::SigningKey::from_seed(&PLATFORM_SEED);
        let config = CommandsConfig {
            platform_public_key: Some(hex::encode(key.public_key())),
            accept_unsigned,
            max_age_secs: 300,
        };
        Authority::new("box-1", &config, dir).unwrap()
    }

    /// What the platform sends: the command with `issued_at` and `nonce`, signed for `device`.
    fn envelope(device: &str, name: &str, mut command: Value, issued_at: DateTime<Utc>, nonce: &str) -> Vec<u8> {
        command["issued_at"] = json!(issued_at.to_rfc3339());
        command["nonce"] = json!(nonce);
        let bytes = serde_json::to_vec(&command).unwrap();
        let signature = ed25519::SigningKey::from_seed(&PLATFORM_SEED).sign(&signed_message(device, name, &bytes));
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::to_vec(&json!({ "signed": b64.encode(&bytes), "signature": b64.encode(signature) })).unwrap()
    }

    fn code(outcome: Result<Authorised, (Option<String>, CommandError)>) -> &'static str {
        outcome.expect_err("refused").1.code
    }

    #[test]
    fn a_signed_command_is_let_in_once_without_its_envelope_fields() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let payload = envelope("box-1", "set", json!({ "correlation_id": "c1", "values": {} }), now, "nonce-0001");
        let authorised = authority(dir.path(), false).open("set", &payload, now).unwrap();
        assert!(authorised.signed);
        let fields: Value = serde_json::from_slice(&authorised.payload).unwrap();
        assert_eq!(fields, json!({ "correlation_id": "c1", "values": {} }));
        // The same bytes again, even after a restart (a new Authority reads the saved nonces).
        let again = authority(dir.path(), false).open("set", &payload, now);
        assert_eq!(code(again), "replayed");
    }

    #[test]
    fn unsigned_commands_are_refused_unless_the_config_opens_them() {
        let dir = tempfile::tempdir().unwrap();
        let payload = br#"{"correlation_id":"c2","values":{"rules.object.min_score":0.5}}"#;
        let refused = authority(dir.path(), false).open("set", payload, Utc::now()).unwrap_err();
        assert_eq!((refused.0.as_deref(), refused.1.code), (Some("c2"), "unsigned_refused"));
        let open = authority(dir.path(), true).open("set", payload, Utc::now()).unwrap();
        assert!(!open.signed);
        assert_eq!(open.payload, payload.to_vec());
    }

    #[test]
    fn a_command_signed_for_another_box_or_command_or_by_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let authority = authority(dir.path(), false);
        let for_other_box = envelope("box-2", "set", json!({ "correlation_id": "c" }), now, "nonce-0002");
        assert_eq!(code(authority.open("set", &for_other_box, now)), "signature_invalid");
        let for_reload = envelope("box-1", "reload", json!({ "correlation_id": "c" }), now, "nonce-0003");
        assert_eq!(code(authority.open("set", &for_reload, now)), "signature_invalid");
        // One byte of the command changed after signing.
        let mut outer: Value =
            serde_json::from_slice(&envelope("box-1", "set", json!({ "correlation_id": "c" }), now, "nonce-0004"))
                .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut bytes = b64.decode(outer["signed"].as_str().unwrap()).unwrap();
        bytes[2] ^= 1;
        outer["signed"] = json!(b64.encode(&bytes));
        assert_eq!(code(authority.open("set", &serde_json::to_vec(&outer).unwrap(), now)), "signature_invalid");
    }

    #[test]
    fn commands_outside_the_clock_window_are_refused_naming_both_times() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let old = envelope(
            "box-1",
            "set",
            json!({ "correlation_id": "c" }),
            now - chrono::Duration::seconds(301),
            "nonce-0005",
        );
        let (id, error) = authority(dir.path(), false).open("set", &old, now).unwrap_err();
        assert_eq!((id.as_deref(), error.code), (Some("c"), "expired"));
        assert!(error.message.contains("300 s"), "{}", error.message);
        let future = envelope(
            "box-1",
            "set",
            json!({ "correlation_id": "c" }),
            now + chrono::Duration::seconds(400),
            "nonce-0006",
        );
        assert_eq!(code(authority(dir.path(), false).open("set", &future, now)), "expired");
    }

    #[test]
    fn hostile_envelopes_get_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let authority = authority(dir.path(), false);
        let now = Utc::now();
        let huge = vec![b' '; COMMAND_MAX_BYTES + 1];
        assert_eq!(code(authority.open("set", &huge, now)), "too_large");
        assert_eq!(code(authority.open("set", b"\xff\xfe", now)), "malformed_json");
        assert_eq!(code(authority.open("set", b"[1,2]", now)), "invalid_request");
        assert_eq!(
            code(authority.open("set", br#"{"signed":"AA==","signature":"x","extra":1}"#, now)),
            "malformed_envelope"
        );
        assert_eq!(code(authority.open("set", br#"{"signed":"***","signature":"00"}"#, now)), "malformed_envelope");
        assert_eq!(code(authority.open("set", br#"{"signed":"AA==","signature":"00"}"#, now)), "malformed_envelope");
        let no_nonce = {
            let bytes = serde_json::to_vec(&json!({ "correlation_id": "c", "issued_at": now.to_rfc3339() })).unwrap();
            let signature =
                ed25519::SigningKey::from_seed(&PLATFORM_SEED).sign(&signed_message("box-1", "set", &bytes));
            let b64 = base64::engine::general_purpose::STANDARD;
            serde_json::to_vec(&json!({ "signed": b64.encode(&bytes), "signature": hex::encode(signature) })).unwrap()
        };
        let (id, error) = authority.open("set", &no_nonce, now).unwrap_err();
        assert_eq!((id.as_deref(), error.code), (Some("c"), "invalid_request"));
        assert!(error.message.contains("nonce"), "{}", error.message);
    }

    #[test]
    fn a_signed_command_without_a_configured_platform_key_cannot_be_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = CommandsConfig { platform_public_key: None, accept_unsigned: false, max_age_secs: 300 };
        let authority = Authority::new("box-1", &config, dir.path()).unwrap();
        let now = Utc::now();
        let payload = envelope("box-1", "set", json!({ "correlation_id": "c" }), now, "nonce-0007");
        assert_eq!(code(authority.open("set", &payload, now)), "signature_unverifiable");
    }
}
