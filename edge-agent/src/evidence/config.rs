//! `[evidence]`: whether evidence pictures are kept, how good, and how much disk they may take.

use serde::Deserialize;

use crate::base::section::Invalid;

/// Evidence pictures under `state_dir/evidence`, and how much disk they may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvidenceConfig {
    pub enabled: bool,
    /// Evidence pictures together stay below this size; the oldest go first.
    pub max_disk_mb: u64,
    /// Evidence older than this is deleted.
    pub max_age_days: u32,
    /// Evidence is deleted (oldest first), and none written, while the disk has less free space.
    pub min_free_mb: u64,
    pub jpeg_quality: u8,
    /// The folder of the device's signing key, apart from the evidence. Default: `state_dir/keys`.
    pub key_dir: Option<std::path::PathBuf>,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self { enabled: true, max_disk_mb: 2048, max_age_days: 30, min_free_mb: 512, jpeg_quality: 90, key_dir: None }
    }
}

impl EvidenceConfig {
    /// Where the device key lives for state folder `state_dir`.
    pub fn key_dir(&self, state_dir: &std::path::Path) -> std::path::PathBuf {
        self.key_dir.clone().unwrap_or_else(|| state_dir.join("keys"))
    }

    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some(dir) = &mut self.key_dir {
            crate::base::section::absolutise(dir, base);
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(Invalid::new("evidence.jpeg_quality", format!("is {}; expected 1 to 100", self.jpeg_quality)));
        }
        if self.max_disk_mb == 0 {
            return Err(Invalid::new("evidence.max_disk_mb", "is 0; set evidence.enabled = false to keep no evidence"));
        }
        Ok(())
    }
}
