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
    /// `[evidence.clips]`: video around each event.
    pub clips: ClipsConfig,
}

/// `[evidence.clips]`: each camera read through GStreamer keeps its last `pre_roll_secs` of
/// encoded video; an event's clip runs from that long before it started to `post_roll_secs` after
/// it ended, at most `max_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipsConfig {
    pub enabled: bool,
    pub pre_roll_secs: f64,
    pub post_roll_secs: f64,
    pub max_secs: f64,
    /// A masked camera's clip is re-encoded with its mask at this width (pixels) …
    pub masked_width: u32,
    /// … and at most this many pictures a second: what a Pi can afford in software.
    pub masked_fps: u32,
}

impl Default for ClipsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            pre_roll_secs: 5.0,
            post_roll_secs: 5.0,
            max_secs: 60.0,
            masked_width: 640,
            masked_fps: 5,
        }
    }
}

impl ClipsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let range = |key: &str, value: f64, low: f64, high: f64| {
            if value.is_finite() && (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(Invalid::new(
                    format!("evidence.clips.{key}"),
                    format!("is {value}; expected {low} to {high} seconds"),
                ))
            }
        };
        range("pre_roll_secs", self.pre_roll_secs, 0.0, 30.0)?;
        range("post_roll_secs", self.post_roll_secs, 0.0, 60.0)?;
        range("max_secs", self.max_secs, 5.0, 600.0)?;
        if !(160..=1920).contains(&self.masked_width) || self.masked_width % 2 != 0 {
            return Err(Invalid::new(
                "evidence.clips.masked_width",
                format!("is {}; expected an even number of pixels from 160 to 1920", self.masked_width),
            ));
        }
        if !(1..=30).contains(&self.masked_fps) {
            return Err(Invalid::new(
                "evidence.clips.masked_fps",
                format!("is {}; expected 1 to 30 pictures a second", self.masked_fps),
            ));
        }
        Ok(())
    }
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_disk_mb: 2048,
            max_age_days: 30,
            min_free_mb: 512,
            jpeg_quality: 90,
            key_dir: None,
            clips: ClipsConfig::default(),
        }
    }
}

impl EvidenceConfig {
    /// Where the device key lives for state folder `state_dir`.
    pub fn key_dir(&self, state_dir: &std::path::Path) -> std::path::PathBuf {
        self.key_dir.clone().unwrap_or_else(|| state_dir.join("keys"))
    }

    /// How much encoded video each camera keeps for clips, when clips are kept.
    pub fn clip_pre_roll(&self) -> Option<std::time::Duration> {
        (self.enabled && self.clips.enabled).then(|| std::time::Duration::from_secs_f64(self.clips.pre_roll_secs))
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
        self.clips.validate()?;
        if self.max_disk_mb == 0 {
            return Err(Invalid::new("evidence.max_disk_mb", "is 0; set evidence.enabled = false to keep no evidence"));
        }
        Ok(())
    }
}
