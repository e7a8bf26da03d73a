//! What the user writes about the outbox: `[outbox]` (disk quota, evidence pictures).

use serde::Deserialize;

use crate::config::Invalid;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most the queued messages may take on disk, in MiB. When it is reached, evidence pictures are
    /// pruned oldest first; event records are never pruned.
    #[serde(default = "default_quota_mb")]
    pub quota_mb: u64,
    /// Queue an evidence JPEG (the frame with boxes drawn) on `snapshots/{event_id}` with each event.
    #[serde(default = "default_true")]
    pub evidence: bool,
    /// JPEG quality of evidence pictures, 1 to 100.
    #[serde(default = "default_evidence_quality")]
    pub evidence_jpeg_quality: u8,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { quota_mb: default_quota_mb(), evidence: true, evidence_jpeg_quality: default_evidence_quality() }
    }
}

fn default_quota_mb() -> u64 {
    1024
}

fn default_true() -> bool {
    true
}

fn default_evidence_quality() -> u8 {
    85
}

impl OutboxConfig {
    pub fn quota_bytes(&self) -> u64 {
        self.quota_mb.saturating_mul(1024 * 1024)
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.quota_mb == 0 {
            return Err(Invalid::new("outbox.quota_mb", "is 0; expected at least 1 (MiB)"));
        }
        if !(1..=100).contains(&self.evidence_jpeg_quality) {
            return Err(Invalid::new(
                "outbox.evidence_jpeg_quality",
                format!("is {}; expected a JPEG quality from 1 to 100", self.evidence_jpeg_quality),
            ));
        }
        Ok(())
    }
}
