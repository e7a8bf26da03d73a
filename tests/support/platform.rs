//! The platform's side of the trust boundary, for tests: the platform tool's own key
//! (`edge_platform::keys`), so the tests sign command envelopes with the very code a real platform
//! runs (docs/SECURITY.md), plus what tests need around it (fixed seeds, non-object payloads).

use edge_platform::keys::{fresh_nonce, PlatformKey as ToolKey};
use serde_json::Value;

pub struct PlatformKey {
    key: ToolKey,
}

impl PlatformKey {
    /// A key from a fixed seed, so a test can also make "another platform" with another seed.
    pub fn from_seed(seed: u8) -> Self {
        Self { key: ToolKey::from_seed(&[seed; 32]) }
    }

    pub fn public_key_hex(&self) -> String {
        self.key.public_hex()
    }

    /// A raw Ed25519 signature of `bytes` (a forger re-signing records with this key).
    pub fn sign_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        hex::decode(self.key.sign_bytes_hex(bytes)).expect("the tool's signatures are hex")
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
        self.key.envelope(device, name, command, issued_at, nonce).expect("a test's command is a JSON object")
    }

    /// `payload` signed when it is a JSON object; anything else (broken JSON, an array) is sent as it is.
    pub fn sign_if_object(&self, device: &str, name: &str, payload: &[u8]) -> Vec<u8> {
        match serde_json::from_slice::<Value>(payload) {
            Ok(command @ Value::Object(_)) => self.envelope(device, name, &command),
            _ => payload.to_vec(),
        }
    }
}
