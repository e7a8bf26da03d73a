//! On-site actions (宣教): a rule may run a program of the actions folder (root-owned, default
//! `/etc/edge-agent/actions`) when one of its events starts, e.g. a script that plays a voice prompt.
//! The config names the program, never a command line; the event's details reach it as environment
//! variables. At most one run per rule and camera within `min_interval_secs`; running does not wait.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::judge::config::{is_program_name, ActionConfig};
use crate::judge::tracker::seconds_between;
use crate::wire::{Event, EventKind};

/// Where the programs live unless `[actions] folder` says otherwise.
pub const DEFAULT_FOLDER: &str = "/etc/edge-agent/actions";

/// The actions folder and when each rule's action last ran per camera.
pub struct OnSiteActions {
    folder: PathBuf,
    last_run: HashMap<(EventKind, String), DateTime<Utc>>,
}

impl OnSiteActions {
    pub fn new(folder: PathBuf) -> Self {
        Self { folder, last_run: HashMap::new() }
    }

    /// Runs the action of a starting event unless the rate limit holds it back.
    pub fn run_if_due(&mut self, action: &ActionConfig, event: &Event, now: DateTime<Utc>) {
        if self.due(action, event, now) {
            tracing::info!(event_id = %event.event_id, program = %action.program, "on-site action");
            run(&self.folder, action, event);
        }
    }

    fn due(&mut self, action: &ActionConfig, event: &Event, now: DateTime<Utc>) -> bool {
        let key = (event.kind, event.camera.clone());
        if let Some(last) = self.last_run.get(&key) {
            if seconds_between(*last, now) < action.min_interval_secs {
                return false;
            }
        }
        self.last_run.insert(key, now);
        true
    }
}

/// Why a program of the actions folder may not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("the actions folder {0} cannot be read")]
    Unreadable(PathBuf),
    #[error("{0} may be changed by others than root and the agent's user (owner or mode); nothing in it runs")]
    NotProtected(PathBuf),
    #[error("the actions folder {folder} has no program of that name")]
    NoSuchProgram { folder: PathBuf },
}

/// A file or folder only root (or the agent's own user) may change: owned by one of them, and
/// writable by neither its group nor others.
fn protected(metadata: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    let agent_user = unsafe { libc::geteuid() };
    let owner_ok = metadata.uid() == 0 || metadata.uid() == agent_user;
    owner_ok && metadata.permissions().mode() & 0o022 == 0
}

/// The programs an action may name: executable regular files of a protected folder, each protected
/// itself, sorted. The page lists them; `set` accepts only these.
pub fn list_programs(folder: &Path) -> Result<Vec<String>, ActionError> {
    let folder_meta = std::fs::metadata(folder).map_err(|_| ActionError::Unreadable(folder.to_path_buf()))?;
    if !folder_meta.is_dir() {
        return Err(ActionError::Unreadable(folder.to_path_buf()));
    }
    if !protected(&folder_meta) {
        return Err(ActionError::NotProtected(folder.to_path_buf()));
    }
    let entries = std::fs::read_dir(folder).map_err(|_| ActionError::Unreadable(folder.to_path_buf()))?;
    let mut programs: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            // No symbolic links: the file itself must be the protected one.
            let metadata = std::fs::symlink_metadata(entry.path()).ok()?;
            let runnable = metadata.is_file() && metadata.permissions().mode() & 0o111 != 0 && protected(&metadata);
            (is_program_name(&name) && runnable).then_some(name)
        })
        .collect();
    programs.sort();
    Ok(programs)
}

/// The path of a program that may run now (checked at each run: a file changed since the config
/// was written must not run).
pub fn program_path(folder: &Path, program: &str) -> Result<PathBuf, ActionError> {
    if !is_program_name(program) {
        return Err(ActionError::NoSuchProgram { folder: folder.to_path_buf() });
    }
    if list_programs(folder)?.iter().any(|p| p == program) {
        Ok(folder.join(program))
    } else {
        Err(ActionError::NoSuchProgram { folder: folder.to_path_buf() })
    }
}

/// Starts the program with the event's details in its environment; a failure is logged, never
/// fatal. The program gets no arguments and no input.
pub fn run(folder: &Path, action: &ActionConfig, event: &Event) {
    let path = match program_path(folder, &action.program) {
        Ok(path) => path,
        Err(e) => {
            tracing::error!(event_id = %event.event_id, program = %action.program, "on-site action not run: {e}");
            return;
        }
    };
    let spawned = std::process::Command::new(&path)
        .env("EDGE_EVENT_KIND", event.kind.as_str())
        .env("EDGE_EVENT_CAMERA", &event.camera)
        .env("EDGE_EVENT_ZONE", event.zone.as_deref().unwrap_or(""))
        .env("EDGE_EVENT_LABEL", &event.label)
        .env("EDGE_EVENT_CATEGORY", event.category.as_deref().unwrap_or(""))
        .env("EDGE_EVENT_ID", event.event_id.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            let program = action.program.clone();
            let event_id = event.event_id;
            // Collect the exit status so no zombie is left behind.
            std::thread::spawn(move || match child.wait() {
                Ok(status) if !status.success() => {
                    tracing::warn!(%event_id, "on-site action {program} exited with {status}")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%event_id, "on-site action {program}: {e}"),
            });
        }
        Err(e) => {
            tracing::error!(event_id = %event.event_id, program = %action.program, "cannot run on-site action: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::{at, test_event};
    use crate::wire::LifecycleState;

    fn action(program: &str, interval: f64) -> ActionConfig {
        ActionConfig { program: program.into(), min_interval_secs: interval }
    }

    /// A protected actions folder with one script that writes the event's kind and zone to `marker`.
    fn folder_with_prompt(marker: &Path) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.path().join("prompt");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$EDGE_EVENT_KIND $EDGE_EVENT_ZONE\" > {}\n", marker.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn an_action_is_rate_limited_per_rule_and_camera() {
        let mut limiter = OnSiteActions::new(PathBuf::from(DEFAULT_FOLDER));
        let event = test_event(EventKind::WrongBin, LifecycleState::Start, at(0.0));
        assert!(limiter.due(&action("prompt", 60.0), &event, at(0.0)));
        assert!(!limiter.due(&action("prompt", 60.0), &event, at(30.0)), "within a minute");
        let mut other_camera = event.clone();
        other_camera.camera = "east".into();
        assert!(limiter.due(&action("prompt", 60.0), &other_camera, at(30.0)));
        assert!(limiter.due(&action("prompt", 60.0), &event, at(61.0)));
    }

    #[test]
    fn the_program_of_the_folder_runs_with_the_events_details() {
        let out = tempfile::tempdir().unwrap();
        let marker = out.path().join("played");
        let folder = folder_with_prompt(&marker);
        let mut event = test_event(EventKind::Litter, LifecycleState::Start, at(0.0));
        event.zone = Some("drop".into());
        run(folder.path(), &action("prompt", 60.0), &event);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&marker).unwrap_or_default().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "litter drop");
    }

    #[test]
    fn only_plain_protected_programs_of_the_folder_may_run() {
        let out = tempfile::tempdir().unwrap();
        let folder = folder_with_prompt(&out.path().join("played"));
        assert_eq!(list_programs(folder.path()).unwrap(), vec!["prompt".to_string()]);
        for name in ["../prompt", "/bin/sh", "sh -c id", ".hidden", "", "missing"] {
            assert!(program_path(folder.path(), name).is_err(), "{name}");
        }
        // A program anyone may change does not run, nor one that is a link to elsewhere.
        let writable = folder.path().join("writable");
        std::fs::write(&writable, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink("/bin/sh", folder.path().join("shell")).unwrap();
        assert_eq!(list_programs(folder.path()).unwrap(), vec!["prompt".to_string()]);
        // A folder others may write into runs nothing at all.
        std::fs::set_permissions(folder.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(list_programs(folder.path()), Err(ActionError::NotProtected(folder.path().to_path_buf())));
        assert!(list_programs(Path::new("/no/such/folder")).is_err());
    }
}
