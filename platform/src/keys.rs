//! The platform's Ed25519 key: made once (`keygen`), kept as a 0600 file of 64 hex digits (the
//! seed, the same format as a box's `device.key`), and used to sign command envelopes and model
//! files exactly as the boxes check them (`control::authority`, `control::model_update`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use edge_agent::base::ed25519::SigningKey;
use edge_agent::control::authority::signed_message;
use serde_json::{json, Value};

/// The file names `keygen` writes in its folder.
pub const SECRET_FILE: &str = "platform.key";
pub const PUBLIC_FILE: &str = "platform.pub";

pub struct PlatformKey {
    key: SigningKey,
}

impl PlatformKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { key: SigningKey::from_seed(seed) }
    }

    /// A new seed from the system's random source.
    fn random_seed() -> Result<[u8; 32]> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow!("no random numbers from the system: {e}"))?;
        Ok(seed)
    }

    /// Reads a key file (64 hex digits); refuses one that others may read, as ssh does.
    pub fn read(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).with_context(|| format!("the key file {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "the key file {} may be read by others (mode {:o}); it must be 0600 (chmod 600 {})",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            );
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("the key file {}", path.display()))?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| anyhow!("the key file {} does not hold 64 hex digits (an Ed25519 seed)", path.display()))?;
        Ok(Self::from_seed(&seed))
    }

    /// A new key from the system's random source, written to `dir` (see [`PlatformKey::write_new`]).
    pub fn create(dir: &Path) -> Result<(Self, PathBuf, PathBuf)> {
        let seed = Self::random_seed()?;
        let (secret, public) = Self::write_new(&seed, dir)?;
        Ok((Self::from_seed(&seed), secret, public))
    }

    /// Writes the key of `seed` as `dir/platform.key` (0600, never over an existing one) and
    /// its public key as `dir/platform.pub`.
    pub fn write_new(seed: &[u8; 32], dir: &Path) -> Result<(PathBuf, PathBuf)> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let secret = dir.join(SECRET_FILE);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .with_context(|| format!("cannot create {} (a key that exists is never replaced)", secret.display()))?;
        file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", secret.display()))?;
        let public = dir.join(PUBLIC_FILE);
        std::fs::write(&public, format!("{}\n", Self::from_seed(seed).public_hex()))
            .with_context(|| format!("cannot write {}", public.display()))?;
        Ok((secret, public))
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.public_key())
    }

    /// What the boxes' config needs to trust this key for commands and, when it signs models too,
    /// for model files.
    pub fn config_lines(&self) -> String {
        let key = self.public_hex();
        format!(
            "[commands]\nplatform_public_key = \"{key}\"\n\n\
             # when this key also signs model files (`edge-platform sign-model`):\n[model_update]\npublic_key = \"{key}\"\n"
        )
    }

    /// `command` (a JSON object) for command `name` on `device`, with `issued_at` and `nonce`
    /// added, in its signed envelope (docs/SECURITY.md).
    pub fn envelope(
        &self,
        device: &str,
        name: &str,
        command: &Value,
        issued_at: chrono::DateTime<chrono::Utc>,
        nonce: &str,
    ) -> Result<Vec<u8>> {
        let Value::Object(mut fields) = command.clone() else { bail!("a command is a JSON object") };
        fields.insert("issued_at".into(), json!(issued_at.to_rfc3339()));
        fields.insert("nonce".into(), json!(nonce));
        let bytes = serde_json::to_vec(&Value::Object(fields))?;
        let signature = self.key.sign(&signed_message(device, name, &bytes));
        let signed = base64::engine::general_purpose::STANDARD.encode(&bytes);
        Ok(serde_json::to_vec(&json!({ "signed": signed, "signature": hex::encode(signature) }))?)
    }

    /// The Ed25519 signature of a model file's bytes, hex, as the `model` command carries it.
    pub fn sign_bytes_hex(&self, bytes: &[u8]) -> String {
        hex::encode(self.key.sign(bytes))
    }
}

/// A nonce no other command of this platform has: a fresh UUID v7 (time and random bits).
pub fn fresh_nonce() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_agent::base::ed25519;

    #[test]
    fn an_envelope_opens_on_the_box_side_check_and_only_for_its_device_and_command() {
        let key = PlatformKey::from_seed(&[3; 32]);
        let command = json!({ "correlation_id": "c-1", "values": { "rules.object.min_score": 0.4 } });
        let envelope = key.envelope("box-1", "set", &command, chrono::Utc::now(), "nonce-0001").unwrap();
        let envelope: Value = serde_json::from_slice(&envelope).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(envelope["signed"].as_str().unwrap()).unwrap();
        let signature = hex::decode(envelope["signature"].as_str().unwrap()).unwrap();
        let public = hex::decode(key.public_hex()).unwrap();
        assert!(ed25519::verify(&public, &signed_message("box-1", "set", &bytes), &signature));
        assert!(!ed25519::verify(&public, &signed_message("box-2", "set", &bytes), &signature));
        assert!(!ed25519::verify(&public, &signed_message("box-1", "reload", &bytes), &signature));
        let sent: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(sent["nonce"], "nonce-0001");
        assert_eq!(sent["values"]["rules.object.min_score"], 0.4);
    }

    #[test]
    fn a_written_key_is_private_reads_back_and_is_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let seed = [9u8; 32];
        let key = PlatformKey::from_seed(&seed);
        let (secret, public) = PlatformKey::write_new(&seed, dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(public).unwrap().trim(), key.public_hex());
        assert_eq!(PlatformKey::read(&secret).unwrap().public_hex(), key.public_hex());
        let again = PlatformKey::write_new(&seed, dir.path()).unwrap_err();
        assert!(format!("{again:#}").contains("never replaced"), "{again:#}");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = PlatformKey::read(&secret).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(open.contains("0600"), "{open}");
    }
}
