//! What the user writes about the outbox: `[outbox]` (its disk quota). Evidence pictures are made by
//! the judge (`[evidence]`); the outbox only queues them.

use serde::Deserialize;

use crate::base::section::Invalid;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most the queued messages may take on disk, in MiB. When it is reached, evidence pictures are
    /// pruned oldest first; event records are never pruned.
    #[serde(default = "default_quota_mb")]
    pub quota_mb: u64,
    /// Disk space (MiB) kept free for event records: when the disk has less, pictures are pruned
    /// or not queued, whatever the quota says. Events still go in while the disk takes them.
    #[serde(default = "default_reserve_mb")]
    pub reserve_mb: u64,
}

fn default_reserve_mb() -> u64 {
    32
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { quota_mb: default_quota_mb(), reserve_mb: default_reserve_mb() }
    }
}

fn default_quota_mb() -> u64 {
    1024
}

impl OutboxConfig {
    pub fn quota_bytes(&self) -> u64 {
        self.quota_mb.saturating_mul(1024 * 1024)
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_mb.saturating_mul(1024 * 1024)
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.quota_mb == 0 {
            return Err(Invalid::new("outbox.quota_mb", "is 0; expected at least 1 (MiB)"));
        }
        Ok(())
    }
}
