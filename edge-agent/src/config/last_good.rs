//! The last config that started cleanly, kept beside the config file (`<config>.last-good`, and
//! the site calibration file as `<config>.last-good-site`). When the config file would not start
//! (a hand edit, a file gone), the agent starts on this copy instead of restart-looping under
//! systemd, and says so on the page, in the retained status and in the log.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};
use crate::base::write_file::write_atomically;

fn copy_path(config_path: &Path) -> PathBuf {
    suffixed(config_path, ".last-good")
}

fn site_copy_path(config_path: &Path) -> PathBuf {
    suffixed(config_path, ".last-good-site")
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Keeps the files `config` was read from as the last good ones. `config_text` is the text that
/// was loaded (re-reading the file could catch an edit made since).
pub fn save(config_path: &Path, config_text: &str, config: &Config) -> std::io::Result<()> {
    match config.site.calibration.as_deref().map(std::fs::read) {
        Some(Ok(site)) => write_atomically(&site_copy_path(config_path), &site)?,
        Some(Err(e)) => return Err(e),
        None => match std::fs::remove_file(site_copy_path(config_path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    write_atomically(&copy_path(config_path), config_text.as_bytes())
}

/// The last good config of `config_path`, if one was kept: loaded as if it were the config file
/// (relative paths resolve from the same folder), with its site file from the kept copy.
pub fn load(config_path: &Path) -> Option<Result<Config, ConfigError>> {
    let copy = copy_path(config_path);
    if !copy.is_file() {
        return None;
    }
    let site = site_copy_path(config_path);
    let loaded = Config::load_with_site(&copy, site.is_file().then_some(site.as_path())).map(|mut config| {
        // It stands in for the config file: changes still go to (and are checked against) that file.
        config.source = Some(config_path.to_owned());
        config
    });
    Some(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAMERA: &str = "[[cameras]]\nid = \"gate\"\nsource = { kind = \"replay\", path = \"frames\" }\n";

    #[test]
    fn a_saved_config_is_loaded_back_as_if_it_were_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let text = format!("device_id = \"box-7\"\nstate_dir = \"state\"\n{CAMERA}");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        assert!(load(&path).is_none(), "nothing kept yet");
        save(&path, &text, &config).unwrap();
        std::fs::write(&path, "device_id = \"a/b\"\n").unwrap();
        assert!(Config::load(&path).is_err(), "the file is broken now");
        let fallback = load(&path).unwrap().unwrap();
        assert_eq!(fallback.device_id, "box-7");
        assert_eq!(fallback.state_dir, dir.path().join("state"), "relative paths from the same folder");
        assert_eq!(fallback.source.as_deref(), Some(path.as_path()));
    }

    #[test]
    fn the_site_file_is_kept_with_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let site = dir.path().join("site.toml");
        std::fs::write(
            &site,
            "[[scenes.gate.zones]]\nid = \"road\"\nrole = \"road\"\npolygon = [[0, 0.5], [1, 0.5], [1, 1]]\n",
        )
        .unwrap();
        let text = format!("[site]\ncalibration = \"site.toml\"\n{CAMERA}");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        save(&path, &text, &config).unwrap();
        std::fs::write(&site, "this is not toml [").unwrap();
        let fallback = load(&path).unwrap().unwrap();
        assert_eq!(fallback.scenes["gate"].zones[0].id, "road");
    }
}
