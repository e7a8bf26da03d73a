//! The platform's side of the trust boundary, for tests: an Ed25519 key that signs command
//! envelopes exactly as docs/SECURITY.md describes (the same bytes a real platform signs).

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

/// What a signature covers before the command's bytes (see `control::authority` in the agent).
const DOMAIN: &str = "edge-agent/cmd/v1";

pub struct PlatformKey {
    pair: Ed25519KeyPair,
}

impl PlatformKey {
    /// A key from a fixed seed, so a test can also make "another platform" with another seed.
    pub fn from_seed(seed: u8) -> Self {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("a 32-byte seed");
        Self { pair }
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// A raw Ed25519 signature of `bytes` (a forger re-signing records with this key).
    pub fn sign_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.pair.sign(bytes).as_ref().to_vec()
    }

    /// The `[commands]` section of an agent that trusts this key.
    pub fn config_section(&self) -> String {
        format!("[commands]\nplatform_public_key = \"{}\"\n", self.public_key_hex())
    }

    /// `command` (a JSON object) for `name` on `device`, issued now with a fresh nonce, in its envelope.
    pub fn envelope(&self, device: &str, name: &str, command: &Value) -> Vec<u8> {
        self.envelope_at(device, name, command, chrono::Utc::now(), &fresh_nonce())
    }

    /// Like [`PlatformKey::envelope`], with the issue time and nonce chosen by the test.
    pub fn envelope_at(
        &self,
        device: &str,
        name: &str,
        command: &Value,
        issued_at: chrono::DateTime<chrono::Utc>,
        nonce: &str,
    ) -> Vec<u8> {
        let mut command = command.clone();
        command["issued_at"] = json!(issued_at.to_rfc3339());
        command["nonce"] = json!(nonce);
        let bytes = serde_json::to_vec(&command).expect("a JSON command");
        let mut message = format!("{DOMAIN}\n{device}\n{name}\n").into_bytes();
        message.extend_from_slice(&bytes);
        let signature = self.pair.sign(&message);
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::to_vec(&json!({ "signed": b64.encode(&bytes), "signature": b64.encode(signature.as_ref()) }))
            .expect("an envelope")
    }

    /// `payload` signed when it is a JSON object; anything else (broken JSON, an array) is sent as it is.
    pub fn sign_if_object(&self, device: &str, name: &str, payload: &[u8]) -> Vec<u8> {
        match serde_json::from_slice::<Value>(payload) {
            Ok(command @ Value::Object(_)) => self.envelope(device, name, &command),
            _ => payload.to_vec(),
        }
    }
}

fn fresh_nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{n}", std::process::id(), chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default())
}
