//! What the user writes about cameras: `[[cameras]]` with an id and a source.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{absolutise, is_valid_topic_level, Invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub id: String,
    pub source: SourceConfig,
    /// A disabled camera is not opened; the `set` command switches it at run time.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Loops over the images of a folder (JPEG/PNG, sorted by name), like a camera would send them.
    Replay {
        path: PathBuf,
        #[serde(default = "default_replay_fps")]
        fps: f64,
        #[serde(default = "default_true")]
        looping: bool,
    },
}

fn default_true() -> bool {
    true
}

fn default_replay_fps() -> f64 {
    2.0
}

/// The demo camera: a replay of the sample images shipped with the models.
pub fn default_cameras(data_dir: &Path) -> Vec<CameraConfig> {
    vec![CameraConfig {
        id: "demo".into(),
        source: SourceConfig::Replay {
            path: data_dir.join("models/samples"),
            fps: default_replay_fps(),
            looping: true,
        },
        enabled: true,
    }]
}

impl CameraConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        match &mut self.source {
            SourceConfig::Replay { path, .. } => absolutise(path, base),
        }
    }

    /// `key` is where this camera sits in the file, e.g. `cameras[0]`.
    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
        if !is_valid_topic_level(&self.id) {
            return Err(Invalid::new(
                format!("{key}.id"),
                format!("is {:?}; expected a non-empty name without '/', '+', '#'", self.id),
            ));
        }
        match &self.source {
            SourceConfig::Replay { fps, .. } => {
                if !(*fps > 0.0 && *fps <= 120.0) {
                    return Err(Invalid::new(
                        format!("{key}.source.fps"),
                        format!("is {fps}; expected a rate above 0 and at most 120 frames/s"),
                    ));
                }
            }
        }
        Ok(())
    }
}
