//! `edge-agent check`: what an installer runs before leaving a site. Every part of a configured box
//! (the config, the state folder and its disk, the clock, each camera, each model, the broker) is
//! tried for real and gets one [`Finding`]: pass, warn, fail or skipped, with what was seen and, when
//! it is not a pass, a fix naming the config key or file to change.

pub mod broker;
pub mod camera;
pub mod host;
pub mod model;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::site::SiteError;
use crate::config::{Config, ConfigError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    /// Works, but something is likely to hurt later (a clock not yet synchronised, a small disk).
    Warn,
    Fail,
    /// Not configured, or not checkable because something it needs failed.
    Skipped,
}

impl Outcome {
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
            Outcome::Skipped => "skipped",
        }
    }

    pub fn is_fail(self) -> bool {
        self == Outcome::Fail
    }
}

/// The verdict on one part of the box.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The part, in the installer's words: `config`, `camera gate`, `model nanodet`, `broker`.
    pub check: String,
    #[serde(rename = "result")]
    pub outcome: Outcome,
    /// What was seen: a path, a size, a latency, or the error naming the file, key or topic.
    pub detail: String,
    /// What to change, naming the config key or file (warnings and failures).
    pub fix: Option<String>,
}

impl Finding {
    pub fn pass(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { check: check.into(), outcome: Outcome::Pass, detail: detail.into(), fix: None }
    }

    pub fn warn(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { check: check.into(), outcome: Outcome::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }

    pub fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { check: check.into(), outcome: Outcome::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }

    pub fn skipped(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { check: check.into(), outcome: Outcome::Skipped, detail: detail.into(), fix: None }
    }
}

/// What `check` is told besides the config.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Longest wait for a camera's first frame, and for the broker's acknowledgement.
    pub timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(15) }
    }
}

/// Every finding, in the order the table shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The config file checked, or `embedded defaults`.
    pub config: String,
    pub ok: bool,
    pub checks: Vec<Finding>,
}

impl Report {
    fn new(config: String, checks: Vec<Finding>) -> Self {
        let ok = !checks.iter().any(|f| f.outcome.is_fail());
        Self { config, ok, checks }
    }

    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.checks.iter().filter(|f| f.outcome.is_fail())
    }

    /// One line per check (`check  result  detail — fix: …`), so a failure line names its part and
    /// its fix together; then a summary line.
    pub fn table(&self) -> String {
        let width = self.checks.iter().map(|f| f.check.chars().count()).max().unwrap_or(5).clamp(5, 28);
        let mut out = format!("{:<width$}  {:<7}  DETAIL\n", "CHECK", "RESULT");
        for finding in &self.checks {
            out.push_str(&format!("{:<width$}  {:<7}  {}", finding.check, finding.outcome.word(), finding.detail));
            if let Some(fix) = &finding.fix {
                out.push_str(&format!(" — fix: {fix}"));
            }
            out.push('\n');
        }
        let count = |outcome| self.checks.iter().filter(|f| f.outcome == outcome).count();
        let failed: Vec<&str> = self.failures().map(|f| f.check.as_str()).collect();
        let warnings = match count(Outcome::Warn) {
            0 => String::new(),
            1 => ", 1 warning".to_string(),
            n => format!(", {n} warnings"),
        };
        if failed.is_empty() {
            let passed = match count(Outcome::Pass) {
                1 => "1 check".to_string(),
                n => format!("{n} checks"),
            };
            out.push_str(&format!("\nOK: {passed} passed{warnings}\n"));
        } else {
            out.push_str(&format!(
                "\nFAILED: {} of {} checks failed ({}){warnings}\n",
                failed.len(),
                self.checks.len(),
                failed.join(", ")
            ));
        }
        out
    }
}

/// How fixes name the config: its file, or how to give one when the defaults were checked.
#[derive(Debug, Clone)]
pub struct ConfigName(String);

impl ConfigName {
    pub fn new(path: Option<&Path>) -> Self {
        Self(match path {
            Some(path) => path.display().to_string(),
            None => "the config (none given: the embedded defaults were checked; pass --config FILE)".into(),
        })
    }

    /// "`key` in FILE".
    pub fn key(&self, key: &str) -> String {
        format!("`{key}` in {}", self.0)
    }
}

impl std::fmt::Display for ConfigName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the box `config_path` (or the embedded defaults) describes.
pub async fn check(config_path: Option<&Path>, options: &CheckOptions) -> Report {
    let name = ConfigName::new(config_path);
    let label = config_path.map(|p| p.display().to_string()).unwrap_or_else(|| "embedded defaults".into());
    let loaded = match config_path {
        Some(path) => Config::load(path),
        None => Ok(Config::embedded_defaults()),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            let checks = vec![
                config_failure(&error, &name),
                Finding::skipped("other checks", "not run: the config must load first"),
            ];
            return Report::new(label, checks);
        }
    };
    let mut checks = vec![config_finding(&config, &label)];
    let state = host::check_state_folder(&config.state_dir, &name);
    // Frames go where the installer can find them; a broken state folder must not hide them.
    let frames_dir = if state.outcome.is_fail() {
        std::env::temp_dir().join("edge-agent-check")
    } else {
        config.state_dir.join("check")
    };
    checks.push(state);
    checks.push(host::check_disk(&config, &name));
    checks.push(host::check_clock(chrono::Utc::now(), &crate::delivery::telemetry::clock_state()));
    checks.push(host::check_evidence_key(&config));
    checks.push(host::check_event_clips(&config));

    let (mut cameras, broker) = tokio::join!(
        camera::check_cameras(&config, &name, options.timeout),
        broker::check_broker(&config, &name, options.timeout),
    );
    // The models run on the frames (and find the people to blur) before the frames are saved.
    let mut frames: Vec<camera::GrabbedFrame> = cameras.iter_mut().filter_map(|c| c.frame.take()).collect();
    let (model_config, model_name) = (config.clone(), name.clone());
    let models = tokio::task::spawn_blocking(move || {
        let findings = model::check_models(&model_config, &model_name, &mut frames);
        (findings, frames)
    })
    .await;
    let model_findings = match models {
        Ok((findings, frames)) => {
            for frame in frames {
                let check = format!("camera {}", frame.camera);
                if let Some(outcome) = cameras.iter_mut().find(|c| c.finding.check == check) {
                    outcome.frame = Some(frame);
                }
            }
            findings
        }
        Err(e) => vec![Finding::fail("models", format!("the model check crashed: {e}"), "report this as a bug")],
    };
    for mut outcome in cameras {
        camera::keep_frame(&config, &mut outcome, &frames_dir);
        checks.push(outcome.finding);
    }
    checks.extend(model_findings);
    checks.extend(broker);
    Report::new(label, checks)
}

fn config_finding(config: &Config, label: &str) -> Finding {
    let plural = |n: usize, what: &str| if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") };
    let mut detail = format!(
        "{label}: valid; device {}, {}, {}",
        config.device_id,
        plural(config.cameras.len(), "camera"),
        plural(config.models.len(), "model")
    );
    if let Some(site) = &config.site.calibration {
        detail.push_str(&format!(", site file {}", site.display()));
    }
    // The judge reads the taxonomy's mapping files at start; a missing one stops the agent.
    if let Err(e) = crate::judge::taxonomy::Taxonomy::load(&config.taxonomy) {
        let fix = format!("correct `taxonomy.mappings` in {label}, or put the file there");
        return Finding::fail("config", e.to_string(), fix);
    }
    Finding::pass("config", detail)
}

fn config_failure(error: &ConfigError, name: &ConfigName) -> Finding {
    let fix = match error {
        ConfigError::Read { .. } => "give the path of an existing config file with --config FILE \
                                     (`edge-agent init` writes one to start from)"
            .to_string(),
        ConfigError::Parse { path, position, .. } => format!("correct line {} of {}", position.line, path.display()),
        ConfigError::Invalid { key, .. } => name.key(key),
        ConfigError::Site(site) => match site {
            SiteError::Invalid { path, key, .. } => format!("correct `{key}` in site file {}", path.display()),
            SiteError::Parse { path, .. } => format!("correct site file {}", path.display()),
            SiteError::Read { path, .. } | SiteError::Write { path, .. } => {
                format!("{}: it names site file {}, which cannot be read", name.key("site.calibration"), path.display())
            }
        },
    };
    let fix = match error {
        ConfigError::Invalid { .. } => format!("change {fix}"),
        _ => fix,
    };
    Finding::fail("config", error.to_string().replace('\n', " "), fix)
}

/// Pictures a check may write: the frames grabbed from the cameras.
pub fn frame_path(frames_dir: &Path, camera: &str) -> PathBuf {
    frames_dir.join(format!("{camera}.jpg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<Finding>) -> Report {
        Report::new("site.toml".into(), checks)
    }

    #[test]
    fn a_failure_line_names_the_part_and_its_fix() {
        let report = report(vec![
            Finding::pass("config", "site.toml: valid"),
            Finding::fail("camera gate", "cannot read replay folder /x", "set `cameras[0].source.path`"),
            Finding::warn("clock", "not synchronised", "enable NTP"),
            Finding::skipped("broker", "(no mqtt.url)"),
        ]);
        assert!(!report.ok);
        let table = report.table();
        let line = table.lines().find(|l| l.starts_with("camera gate")).unwrap();
        assert!(line.contains("fail") && line.contains("/x") && line.contains("fix: set `cameras[0].source.path`"));
        assert!(table.contains("FAILED: 1 of 4 checks failed (camera gate), 1 warning"), "{table}");
        let broker = table.lines().find(|l| l.starts_with("broker")).unwrap();
        assert!(broker.contains("skipped") && !broker.contains("fix:"), "{broker}");
    }

    #[test]
    fn warnings_and_skips_do_not_fail_the_check() {
        let report = report(vec![Finding::pass("config", "ok"), Finding::warn("disk", "small", "free some")]);
        assert!(report.ok);
        assert!(report.table().contains("OK: 1 check passed, 1 warning"), "{}", report.table());
    }

    #[test]
    fn a_bad_key_is_named_with_the_file_in_the_fix() {
        let error = ConfigError::Invalid { path: "site.toml".into(), key: "mqtt.url".into(), problem: "bad".into() };
        let finding = config_failure(&error, &ConfigName::new(Some(Path::new("site.toml"))));
        assert_eq!(finding.fix.as_deref(), Some("change `mqtt.url` in site.toml"));
        let position = crate::base::parse_error::Position { line: 3, column: 1, ..Default::default() };
        let parse = ConfigError::Parse { path: "site.toml".into(), position, message: "x".into() };
        let finding = config_failure(&parse, &ConfigName::new(Some(Path::new("site.toml"))));
        assert_eq!(finding.fix.as_deref(), Some("correct line 3 of site.toml"));
        assert!(!finding.detail.contains('\n'), "one line in the table: {}", finding.detail);
    }
}
