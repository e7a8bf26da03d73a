//! What the user writes about inference: `[inference]` (backend, threads) and `[[models]]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{absolutise, Invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    #[serde(default)]
    pub backend: BackendKind,
    /// Threads one model may use for one inference; 0 lets the backend choose.
    #[serde(default)]
    pub intra_op_threads: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self { backend: BackendKind::default(), intra_op_threads: 0 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Tract,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path of the model's manifest (`*.toml` next to the `.onnx`).
    pub manifest: PathBuf,
    /// Overrides the manifest's score threshold.
    #[serde(default)]
    pub score_threshold: Option<f32>,
    /// Score threshold per label, e.g. `{ truck = 0.4 }`, over `score_threshold` for those labels;
    /// a site calibration file's `[thresholds.<model>]` fills it in (`calibrate thresholds`).
    #[serde(default)]
    pub class_thresholds: BTreeMap<String, f32>,
}

/// The detector and classifier shipped in `models/`.
pub fn default_models(data_dir: &Path) -> Vec<ModelConfig> {
    ["models/nanodet.toml", "models/efficientnet_lite0.toml"]
        .iter()
        .map(|m| ModelConfig { manifest: data_dir.join(m), score_threshold: None, class_thresholds: BTreeMap::new() })
        .collect()
}

impl ModelConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        absolutise(&mut self.manifest, base);
    }

    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
        if let Some(t) = self.score_threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(Invalid::new(
                    format!("{key}.score_threshold"),
                    format!("is {t}; expected a value from 0 to 1"),
                ));
            }
        }
        for (label, t) in &self.class_thresholds {
            if !(0.0..=1.0).contains(t) {
                return Err(Invalid::new(
                    format!("{key}.class_thresholds.{label}"),
                    format!("is {t}; expected a value from 0 to 1"),
                ));
            }
        }
        Ok(())
    }
}
