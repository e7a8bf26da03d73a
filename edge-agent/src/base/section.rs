//! What every config section shares, so a stage's config types need nothing from the loader in
//! `config/`: the complaint about one key ([`Invalid`]), relative paths, topic level names and the
//! folder that holds the default models.

use std::path::{Path, PathBuf};

/// A section's complaint about one key, before it is tied to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub problem: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { key: key.into(), problem: problem.into() }
    }
}

/// The folder holding `models/` for the embedded defaults: $EDGE_AGENT_DATA, else the current
/// folder when it has `models/`, else the source checkout this binary was built from, else the
/// Debian package's `/usr/share/edge-agent`.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EDGE_AGENT_DATA") {
        return PathBuf::from(dir);
    }
    let has_models = |p: &Path| p.join("models/nanodet.toml").is_file();
    if let Ok(cwd) = std::env::current_dir() {
        if has_models(&cwd) {
            return cwd;
        }
    }
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if has_models(&checkout) {
        return checkout;
    }
    PathBuf::from("/usr/share/edge-agent")
}

/// Makes a relative path relative to `base` (the config file's folder).
pub fn absolutise(path: &mut PathBuf, base: &Path) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// Names used as MQTT topic levels (device, camera) must not break the topic tree.
pub fn is_valid_topic_level(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '+', '#']) && name.len() <= 64
}
