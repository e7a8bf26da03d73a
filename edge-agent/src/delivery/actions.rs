//! On-site actions (宣教): a rule may run a configured command when one of its events starts, e.g.
//! play a voice prompt with `aplay`. At most one run per rule and camera within the action's
//! `min_interval_secs`, so a busy station does not hear the prompt on a loop. Deciding is pure;
//! running spawns the program without waiting for it (a reaper thread collects its exit status).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::judge::config::ActionConfig;
use crate::judge::tracker::seconds_between;
use crate::wire::{Event, EventKind};

#[derive(Default)]
pub struct ActionLimiter {
    last_run: HashMap<(EventKind, String), DateTime<Utc>>,
}

impl ActionLimiter {
    /// The command to run for a starting event, placeholders filled in, or None when the rate
    /// limit holds it back.
    pub fn command_for(&mut self, action: &ActionConfig, event: &Event, now: DateTime<Utc>) -> Option<Vec<String>> {
        let key = (event.kind, event.camera.clone());
        if let Some(last) = self.last_run.get(&key) {
            if seconds_between(*last, now) < action.min_interval_secs {
                return None;
            }
        }
        self.last_run.insert(key, now);
        Some(action.command.iter().map(|arg| fill_placeholders(arg, event)).collect())
    }
}

fn fill_placeholders(arg: &str, event: &Event) -> String {
    arg.replace("{kind}", event.kind.as_str())
        .replace("{camera}", &event.camera)
        .replace("{zone}", event.zone.as_deref().unwrap_or(""))
        .replace("{label}", &event.label)
        .replace("{category}", event.category.as_deref().unwrap_or(""))
        .replace("{event_id}", &event.event_id.to_string())
}

/// Starts the program; a failure to start is logged, never fatal.
pub fn run(command: &[String], event: &Event) {
    let Some((program, args)) = command.split_first() else { return };
    match std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            let program = program.clone();
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
        Err(e) => tracing::error!(event_id = %event.event_id, "cannot run on-site action {program}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::fixtures::{at, test_event};
    use crate::wire::LifecycleState;

    fn action(interval: f64) -> ActionConfig {
        ActionConfig { command: vec!["aplay".into(), "/prompts/{kind}-{zone}.wav".into()], min_interval_secs: interval }
    }

    #[test]
    fn the_command_gets_the_events_details_and_is_rate_limited_per_camera() {
        let mut limiter = ActionLimiter::default();
        let mut event = test_event(EventKind::WrongBin, LifecycleState::Start, at(0.0));
        event.zone = Some("bin-kitchen".into());
        let first = limiter.command_for(&action(60.0), &event, at(0.0));
        assert_eq!(first, Some(vec!["aplay".to_string(), "/prompts/wrong_bin-bin-kitchen.wav".to_string()]));
        assert_eq!(limiter.command_for(&action(60.0), &event, at(30.0)), None, "within a minute");
        let mut other_camera = event.clone();
        other_camera.camera = "east".into();
        assert!(limiter.command_for(&action(60.0), &other_camera, at(30.0)).is_some());
        assert!(limiter.command_for(&action(60.0), &event, at(61.0)).is_some());
    }

    #[test]
    fn the_real_program_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("played");
        let event = test_event(EventKind::Litter, LifecycleState::Start, at(0.0));
        let command = vec!["sh".into(), "-c".into(), format!("echo {} > {}", event.kind.as_str(), marker.display())];
        run(&command, &event);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !marker.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The file may exist before the shell has written into it; wait for the line.
        while std::fs::read_to_string(&marker).unwrap_or_default().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "litter");
    }
}
