//! The device's Ed25519 key, created on first start, that signs every record of the evidence chain.
//! It lives apart from the evidence, in its own folder (`evidence.key_dir`, default
//! `state_dir/keys`, mode 0700; or a path the config names, e.g. a secure element's mount): the
//! secret seed in `device.key` (0600), the public key in `device.pub` for the platform to enrol.
//! A rotation writes the new key as `device.key.next` first; the chain records it, signed by the old
//! key; then the new key takes the old one's place (see `Chain::rotate_key`).

use std::path::{Path, PathBuf};

use crate::base::ed25519::SigningKey;

pub const KEY_FILE: &str = "device.key";
pub const PUBLIC_KEY_FILE: &str = "device.pub";
/// A rotation's new key until the chain has recorded it.
pub const NEXT_KEY_FILE: &str = "device.key.next";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("device key {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot create a device key: the system random source failed: {0}")]
    Random(String),
}

pub struct DeviceKey {
    key: SigningKey,
}

impl DeviceKey {
    /// The key folder, made private (0700) when the agent creates it. A key left by an older
    /// version in `legacy_dir` (the state folder, beside the evidence) is moved in first.
    pub fn prepare_dir(dir: &Path, legacy_dir: &Path) -> Result<(), KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let error = |message: String| KeyError::File { path: dir.to_owned(), message };
        crate::base::write_file::create_folder_durably_with_mode(dir, 0o700)
            .map_err(|e| error(format!("cannot create the key folder: {e}")))?;
        let mode = std::fs::metadata(dir).map_err(|e| error(e.to_string()))?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), "the key folder is readable by others (mode {:o}); expected 0700", mode & 0o777);
        }
        let legacy = legacy_dir.join(KEY_FILE);
        if legacy != dir.join(KEY_FILE) && legacy.is_file() && !dir.join(KEY_FILE).exists() {
            for name in [KEY_FILE, PUBLIC_KEY_FILE] {
                let from = legacy_dir.join(name);
                if from.is_file() {
                    std::fs::rename(&from, dir.join(name))
                        .map_err(|e| error(format!("cannot move {} into the key folder: {e}", from.display())))?;
                }
            }
            let _ = crate::base::write_file::sync_folder(&dir.join(KEY_FILE));
            tracing::info!(from = %legacy_dir.display(), to = %dir.display(), "moved the device key apart from the evidence");
        }
        Ok(())
    }

    /// Reads `dir/device.key`, or creates it (and `device.pub`) when there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let error = |message: String| KeyError::File { path: path.clone(), message };
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let seed = hex::decode(text.trim())
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| error("expected 64 hex digits (an Ed25519 seed)".into()))?;
                SigningKey::from_seed(&seed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
                crate::base::write_file::create_folder_durably_with_mode(dir, 0o700)
                    .map_err(|e| error(format!("cannot create folder: {e}")))?;
                // Whole or not there after a crash, and durable before a chain record it signs.
                crate::base::write_file::write_atomically_with_mode(&path, hex::encode(seed).as_bytes(), 0o600)
                    .map_err(|e| error(format!("cannot write: {e}")))?;
                tracing::info!(path = %path.display(), "created the device's evidence signing key");
                SigningKey::from_seed(&seed)
            }
            Err(e) => return Err(error(format!("cannot read: {e}"))),
        };
        let device_key = Self { key };
        let public_path = dir.join(PUBLIC_KEY_FILE);
        let public = format!("{}\n", device_key.public_hex());
        if std::fs::read_to_string(&public_path).ok().as_deref() != Some(public.as_str()) {
            crate::base::write_file::write_atomically(&public_path, public.as_bytes())
                .map_err(|e| KeyError::File { path: public_path.clone(), message: format!("cannot write: {e}") })?;
        }
        Ok(device_key)
    }

    #[cfg(test)]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { key: SigningKey::from_seed(&seed) }
    }

    /// Reads a key file (64 hex digits of seed).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let error = |message: String| KeyError::File { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        let seed = hex::decode(text.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| error("expected 64 hex digits (an Ed25519 seed)".into()))?;
        Ok(Self { key: SigningKey::from_seed(&seed) })
    }

    /// A fresh key written to `dir/device.key.next` (0600): the first step of a rotation.
    pub fn create_next(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(NEXT_KEY_FILE);
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        crate::base::write_file::write_atomically_with_mode(&path, hex::encode(seed).as_bytes(), 0o600)
            .map_err(|e| KeyError::File { path: path.clone(), message: format!("cannot write: {e}") })?;
        Ok(Self { key: SigningKey::from_seed(&seed) })
    }

    /// The last step of a rotation the chain has recorded: `device.key.next` becomes `device.key`
    /// and `device.pub` names it; the old secret is gone.
    pub fn promote_next(dir: &Path) -> Result<Self, KeyError> {
        let next = dir.join(NEXT_KEY_FILE);
        let key = Self::read(&next)?;
        let error = |message: String| KeyError::File { path: next.clone(), message };
        std::fs::rename(&next, dir.join(KEY_FILE))
            .map_err(|e| error(format!("cannot take the old key's place: {e}")))?;
        crate::base::write_file::write_atomically(
            &dir.join(PUBLIC_KEY_FILE),
            format!("{}\n", key.public_hex()).as_bytes(),
        )
        .map_err(|e| error(format!("cannot write {PUBLIC_KEY_FILE}: {e}")))?;
        Ok(key)
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.public_key())
    }

    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::verify::verify_hex;

    #[test]
    fn a_key_is_created_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DeviceKey::load_or_create(dir.path()).unwrap();
        let second = DeviceKey::load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_hex(), second.public_hex());
        let public = std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(public.trim(), first.public_hex());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn signatures_verify_and_a_changed_message_does_not() {
        let key = DeviceKey::from_seed([7; 32]);
        let signature = key.sign_hex(b"record 1");
        assert!(verify_hex(&key.public_hex(), b"record 1", &signature).is_ok());
        assert!(verify_hex(&key.public_hex(), b"record 2", &signature).is_err());
        let other = DeviceKey::from_seed([8; 32]);
        assert!(verify_hex(&other.public_hex(), b"record 1", &signature).is_err());
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not hex").unwrap();
        let err = DeviceKey::load_or_create(dir.path()).err().unwrap().to_string();
        assert!(err.contains("device.key") && err.contains("64 hex digits"), "{err}");
    }
}
