//! A camera's reference: what its view looked like when it was set up (the grid, how sharp, how
//! noisy), kept per camera in `state_dir/tamper/<camera>.json`, with the picture beside it
//! (`<camera>.jpg`, privacy applied). This file reads and writes them; the judge reads them when it
//! opens, the evidence stage writes the references the judge learns, `edge-agent tamper reference`
//! writes the installer's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::base::write_file::write_atomically;
use crate::judge::tamper::measure::{GRID_HEIGHT, GRID_WIDTH};

/// The folder under `state_dir`.
pub const TAMPER_DIR: &str = "tamper";
/// Bump when a field changes meaning: an older reference is then learnt again.
pub const REFERENCE_VERSION: u32 = 1;

/// The view a camera was set up with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub version: u32,
    pub camera: String,
    /// When it was learnt (frame time of its last frame).
    pub learnt_at: DateTime<Utc>,
    /// `auto` (the first stable minute) or `installer`.
    pub origin: ReferenceOrigin,
    pub frame_width: u32,
    pub frame_height: u32,
    pub brightness: f32,
    pub spread: f32,
    /// The share of fine detail; None when the view had too little structure to tell.
    pub sharpness: Option<f32>,
    /// How much two live frames differ (mean grey levels); 0 when the camera delivered identical
    /// frames, and then a frozen picture cannot be told from a still scene.
    pub noise: f32,
    /// The grid's grey levels, rounded, row by row.
    pub grid: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceOrigin {
    Auto,
    Installer,
}

impl Reference {
    pub fn grid_levels(&self) -> Vec<f32> {
        self.grid.iter().map(|&g| f32::from(g)).collect()
    }

    fn usable(&self) -> bool {
        self.version == REFERENCE_VERSION && self.grid.len() == GRID_WIDTH * GRID_HEIGHT
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("cannot write the tamper reference {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the tamper reference of camera {camera}: {message}")]
    Encode { camera: String, message: String },
}

/// The reference file of a camera.
pub fn reference_path(dir: &Path, camera: &str) -> PathBuf {
    dir.join(format!("{camera}.json"))
}

/// The reference picture of a camera.
pub fn picture_path(dir: &Path, camera: &str) -> PathBuf {
    dir.join(format!("{camera}.jpg"))
}

/// Every usable reference in `dir`, by camera. A missing folder holds none; a file that cannot be
/// read or is of another version is logged and skipped (that camera learns a new one).
pub fn load_all(dir: &Path) -> HashMap<String, Reference> {
    let mut references = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return references };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice::<Reference>(&bytes).map_err(|e| e.to_string()));
        let named = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or_default().to_string();
        match parsed {
            Ok(reference) if reference.usable() && reference.camera == named => {
                references.insert(named, reference);
            }
            Ok(reference) if reference.camera != named => tracing::warn!(
                file = %path.display(),
                "this tamper reference is of camera {}, not {named}; it is not used",
                reference.camera
            ),
            Ok(reference) => tracing::warn!(
                file = %path.display(),
                "tamper reference of camera {} is of another version; a new one will be learnt",
                reference.camera
            ),
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot read a tamper reference, a new one will be learnt: {e}")
            }
        }
    }
    references
}

/// The usable reference of one camera, if it has one.
pub fn load(dir: &Path, camera: &str) -> Option<Reference> {
    let bytes = std::fs::read(reference_path(dir, camera)).ok()?;
    serde_json::from_slice::<Reference>(&bytes).ok().filter(|r| r.usable() && r.camera == camera)
}

/// Writes a camera's reference and its picture (JPEG, privacy already applied), each atomically;
/// the picture first, so a reference file always has its picture.
pub fn save(dir: &Path, reference: &Reference, jpeg: &[u8]) -> Result<(), ReferenceError> {
    std::fs::create_dir_all(dir).map_err(|source| ReferenceError::Write { path: dir.to_owned(), source })?;
    let picture = picture_path(dir, &reference.camera);
    write_atomically(&picture, jpeg).map_err(|source| ReferenceError::Write { path: picture, source })?;
    let json = serde_json::to_vec_pretty(reference)
        .map_err(|e| ReferenceError::Encode { camera: reference.camera.clone(), message: e.to_string() })?;
    let path = reference_path(dir, &reference.camera);
    write_atomically(&path, &json).map_err(|source| ReferenceError::Write { path, source })
}

/// Removes a camera's reference, so the agent learns a new one at its next start; true when there
/// was one.
pub fn forget(dir: &Path, camera: &str) -> Result<bool, ReferenceError> {
    let mut removed = false;
    for path in [reference_path(dir, camera), picture_path(dir, camera)] {
        match std::fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ReferenceError::Write { path, source }),
        }
    }
    Ok(removed)
}
