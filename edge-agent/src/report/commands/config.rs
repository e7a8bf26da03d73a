//! What the user writes about model updates from the platform: `[model_update]`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{absolutise, Invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelUpdateConfig {
    /// Ed25519 public key (32 bytes, hex or base64) that model files must be signed with.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Refuse updates without a valid signature. Default: true when `public_key` is set.
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
        self.require_signature.unwrap_or(self.public_key.is_some())
    }

    pub fn self_test_folder(&self) -> PathBuf {
        self.self_test_images.clone().unwrap_or_else(|| crate::config::data_dir().join("models/samples"))
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(key) = &self.public_key {
            super::model_update::decode_key_material(key, 32)
                .map_err(|problem| Invalid::new("model_update.public_key", problem))?;
        }
        if self.require_signature == Some(true) && self.public_key.is_none() {
            return Err(Invalid::new(
                "model_update.require_signature",
                "is true but no `model_update.public_key` is set to check signatures with",
            ));
        }
        if self.max_download_mb == 0 {
            return Err(Invalid::new("model_update.max_download_mb", "is 0; expected at least 1 (MiB)"));
        }
        Ok(())
    }
}
