//! What the user writes about remote control: `[commands]` (who may command the box) and
//! `[model_update]` (how models from the platform are checked and tried).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::base::section::{absolutise, Invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelUpdateConfig {
    /// Ed25519 public key (32 bytes, hex or base64) that model files must be signed with.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Refuse updates without a valid signature (default). `false` lets unsigned models in from
    /// any URL the box reaches: logged at every start and shown on the page.
    #[serde(default)]
    pub require_signature: Option<bool>,
    /// Seconds a new model runs on probation: if it fails then, the previous one comes back.
    #[serde(default = "default_probation_secs")]
    pub probation_secs: u64,
    /// Pictures every new model must run on cleanly before it is switched in.
    /// Default: `models/samples` of the data folder.
    #[serde(default)]
    pub self_test_images: Option<PathBuf>,
    /// Largest model file accepted, MiB.
    #[serde(default = "default_max_download_mb")]
    pub max_download_mb: u64,
}

impl Default for ModelUpdateConfig {
    fn default() -> Self {
        Self {
            public_key: None,
            require_signature: None,
            probation_secs: default_probation_secs(),
            self_test_images: None,
            max_download_mb: default_max_download_mb(),
        }
    }
}

fn default_probation_secs() -> u64 {
    300
}

fn default_max_download_mb() -> u64 {
    1024
}

impl ModelUpdateConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = &mut self.self_test_images {
            absolutise(path, base);
        }
    }

    pub fn signature_required(&self) -> bool {
        self.require_signature.unwrap_or(true)
    }

    pub fn self_test_folder(&self) -> PathBuf {
        self.self_test_images.clone().unwrap_or_else(|| crate::base::section::data_dir().join("models/samples"))
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(key) = &self.public_key {
            crate::base::ed25519::decode_key_material(key, 32)
                .map_err(|problem| Invalid::new("model_update.public_key", problem))?;
        }
        if self.max_download_mb == 0 {
            return Err(Invalid::new("model_update.max_download_mb", "is 0; expected at least 1 (MiB)"));
        }
        Ok(())
    }
}

/// `[commands]`: who may command the box over MQTT (see `control::authority`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// The platform's Ed25519 public key (32 bytes, hex or base64); commands must be signed by it.
    pub platform_public_key: Option<String>,
    /// Accept commands without a signed envelope. Only for a broker nobody else can publish on:
    /// logged at every start and shown on the page. Program actions and privacy stay local even then.
    pub accept_unsigned: bool,
    /// How far a command's `issued_at` may be from the box's clock, seconds.
    pub max_age_secs: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self { platform_public_key: None, accept_unsigned: false, max_age_secs: 300 }
    }
}

impl CommandsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(key) = &self.platform_public_key {
            crate::base::ed25519::decode_key_material(key, 32)
                .map_err(|problem| Invalid::new("commands.platform_public_key", problem))?;
        }
        if !(10..=86_400).contains(&self.max_age_secs) {
            return Err(Invalid::new(
                "commands.max_age_secs",
                format!("is {}; expected 10 to 86400 seconds", self.max_age_secs),
            ));
        }
        Ok(())
    }
}
