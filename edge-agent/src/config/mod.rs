//! The agent's configuration: puts together the sections each stage owns (`<stage>/config.rs`),
//! reads the file and the site calibration file ([`site`]), and turns serde's and the sections'
//! complaints into errors that name the file, line and key. No section imports this loader.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod last_good;
pub mod site;

use crate::base::parse_error::{position_in_toml, without_refused_value, without_values, Position};
use crate::base::redact::redact_text;
pub use crate::base::section::{absolutise, data_dir, is_valid_topic_level, Invalid};
pub use crate::control::config::{CommandsConfig, ModelUpdateConfig};
pub use crate::delivery::config::{ActionsConfig, StatsConfig};
pub use crate::delivery::mqtt::config::{parse_mqtt_url, MqttConfig};
pub use crate::delivery::outbox::config::OutboxConfig;
pub use crate::evidence::config::EvidenceConfig;
pub use crate::infer::config::{BackendKind, InferenceConfig, ModelConfig};
pub use crate::judge::config::{
    BackgroundConfig, JudgeSections, JudgeSettings, ObjectRuleConfig, PrivacyConfig, RulesConfig, SceneConfig,
    SiteConfig, TamperConfig, TaxonomyConfig, TrackingConfig,
};
use crate::judge::zones::Scene;
pub use crate::source::config::{CameraConfig, SourceConfig};
pub use crate::web::config::WebConfig;

/// What went wrong while reading the configuration. Every variant names the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Names the place and what was expected; never quotes the file (a line may hold a secret).
    #[error("config file {path}, {position}: {message}")]
    Parse { path: PathBuf, position: Position, message: String },
    #[error("config file {path}: `{key}` {problem}")]
    Invalid { path: PathBuf, key: String, problem: String },
    /// The site calibration file named by `site.calibration`.
    #[error(transparent)]
    Site(#[from] site::SiteError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identifies this box in MQTT topics and events. Default: the host name.
    #[serde(default = "default_device_id")]
    pub device_id: String,
    /// Where the outbox and evidence live. Default: $STATE_DIRECTORY (systemd), else
    /// $XDG_STATE_HOME/edge-agent, else ~/.local/state/edge-agent.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    /// Cameras; the default is one replay camera looping over the sample images in `models/samples`.
    #[serde(default = "default_cameras")]
    pub cameras: Vec<CameraConfig>,
    /// Models to run on every frame, by manifest. Default: the detector and classifier in `models/`.
    #[serde(default = "default_models")]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub rules: RulesConfig,
    /// The judge stage's sections (`judge::config`): where the box stands, categories, per-camera
    /// zones, tracking, background model, evidence, privacy and daily statistics.
    #[serde(default)]
    pub site: SiteConfig,
    #[serde(default)]
    pub taxonomy: TaxonomyConfig,
    #[serde(default)]
    pub scenes: std::collections::BTreeMap<String, SceneConfig>,
    #[serde(default)]
    pub tracking: TrackingConfig,
    #[serde(default)]
    pub background: BackgroundConfig,
    #[serde(default)]
    pub tamper: TamperConfig,
    #[serde(default)]
    pub evidence: EvidenceConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    #[serde(default)]
    pub stats: StatsConfig,
    #[serde(default)]
    pub actions: ActionsConfig,
    #[serde(default)]
    pub service: ServiceConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub model_update: ModelUpdateConfig,
    #[serde(default)]
    pub commands: CommandsConfig,
    /// `[plates]`: the plate reader's models and settings, and which vehicles' plates the flow reads.
    #[serde(default)]
    pub plates: crate::infer::plates::PlateSettings,
    /// The file this configuration was read from (none for the embedded defaults).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// How the agent runs as a service: `[service]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// A loop silent this long counts as hung: the systemd watchdog pings stop, systemd restarts us.
    #[serde(default = "default_watchdog_stall_secs")]
    pub watchdog_stall_secs: f64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self { watchdog_stall_secs: default_watchdog_stall_secs() }
    }
}

fn default_watchdog_stall_secs() -> f64 {
    60.0
}

fn default_cameras() -> Vec<CameraConfig> {
    crate::source::config::default_cameras(&data_dir())
}

fn default_models() -> Vec<ModelConfig> {
    crate::infer::config::default_models(&data_dir())
}

fn default_device_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edge-agent".into())
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return PathBuf::from(first);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("edge-agent");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/state/edge-agent");
    }
    PathBuf::from("edge-agent-state")
}

/// Ties a section's complaint to the file it was found in. Complaints quote the value they refuse,
/// which may be anything typed into the wrong key: the value goes here, once for every section.
fn in_file(invalid: Invalid, path: &Path) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        key: invalid.key,
        problem: redact_text(&without_refused_value(&invalid.problem)),
    }
}

impl Config {
    /// The embedded defaults: demo camera, default models, no broker.
    pub fn embedded_defaults() -> Self {
        // An empty document is a complete configuration: every key has a default.
        Self::from_toml_str("", Path::new("<embedded defaults>"))
            .unwrap_or_else(|e| unreachable!("embedded defaults must parse: {e}"))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_site(path, None)
    }

    /// Like [`Config::load`], but with the site calibration file read from `site` when given, not
    /// from the file the config names (the config store checks an edited site file this way before
    /// it replaces the real one). `site.calibration` keeps the given path.
    pub fn load_with_site(path: &Path, site: Option<&Path>) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Self::from_toml_str(&text, path)?;
        config.resolve_relative_paths(path.parent().unwrap_or(Path::new(".")));
        if let Some(site) = site {
            config.site.calibration = Some(site.to_owned());
        }
        site::apply(&mut config, path)?;
        config.validate(path)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses without touching the file system, for tests and for the defaults.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| {
            let position = position_in_toml(text, e.span().map_or(0, |span| span.start));
            ConfigError::Parse { path: path.to_owned(), position, message: without_values(e.message()) }
        })
    }

    /// Paths in a config file are relative to the file, so a site folder can be moved as a whole.
    fn resolve_relative_paths(&mut self, base: &Path) {
        for camera in &mut self.cameras {
            camera.resolve_paths(base);
        }
        for model in &mut self.models {
            model.resolve_paths(base);
        }
        absolutise(&mut self.state_dir, base);
        absolutise(&mut self.actions.folder, base);
        self.taxonomy.resolve_paths(base);
        self.rules.resolve_paths(base);
        self.web.resolve_paths(base);
        self.mqtt.resolve_paths(base);
        self.model_update.resolve_paths(base);
        self.inference.resolve_paths(base);
        self.evidence.resolve_paths(base);
    }

    /// Checks what the types cannot: ranges, uniqueness and URL shapes.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check().map_err(|invalid| in_file(invalid, path))
    }

    fn check(&self) -> Result<(), Invalid> {
        if !is_valid_topic_level(&self.device_id) {
            return Err(Invalid::new(
                "device_id",
                format!("is {:?}; expected a non-empty name without '/', '+', '#'", self.device_id),
            ));
        }
        self.web.validate()?;
        self.mqtt.validate()?;
        self.inference.validate()?;
        if self.cameras.is_empty() {
            return Err(Invalid::new("cameras", "is empty; expected at least one camera"));
        }
        let mut ids = HashSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            camera.validate(&format!("cameras[{i}]"))?;
            if !ids.insert(camera.id.as_str()) {
                return Err(Invalid::new(
                    format!("cameras[{i}].id"),
                    format!("{:?} is used twice; camera ids must be unique", camera.id),
                ));
            }
        }
        if self.models.is_empty() {
            return Err(Invalid::new("models", "is empty; expected at least one model"));
        }
        for (i, model) in self.models.iter().enumerate() {
            model.validate(&format!("models[{i}]"))?;
        }
        let stall = self.service.watchdog_stall_secs;
        if !(stall >= 1.0 && stall <= 3600.0) {
            return Err(Invalid::new("service.watchdog_stall_secs", format!("is {stall}; expected 1 to 3600 seconds")));
        }
        self.outbox.validate()?;
        self.model_update.validate()?;
        self.commands.validate()?;
        self.plates.validate()?;
        self.evidence.validate()?;
        self.stats.validate()?;
        self.judge_sections().validate(&ids)
    }

    /// The sections the judge stage reads.
    pub fn judge_sections(&self) -> JudgeSections<'_> {
        JudgeSections {
            site: &self.site,
            taxonomy: &self.taxonomy,
            scenes: &self.scenes,
            tracking: &self.tracking,
            background: &self.background,
            rules: &self.rules,
            tamper: &self.tamper,
            privacy: &self.privacy,
        }
    }

    /// The judge's settings, as it starts and as `set`/`reload` hand them over.
    pub fn judge_settings(&self) -> JudgeSettings {
        JudgeSettings {
            device_id: self.device_id.clone(),
            backend: self.inference.backend,
            site: self.site.clone(),
            taxonomy: self.taxonomy.clone(),
            scenes: self.scenes.clone(),
            tracking: self.tracking.clone(),
            background: self.background.clone(),
            rules: self.rules.clone(),
            tamper: self.tamper.clone(),
            tamper_dir: self.state_dir.join(crate::judge::tamper::reference::TAMPER_DIR),
            privacy: self.privacy.clone(),
            plates: self.plates.clone(),
        }
    }

    /// A camera's scene (zones, privacy, ground), or the default scene of a camera without one.
    pub fn scene_of(&self, camera: &str) -> Scene {
        match self.scenes.get(camera) {
            Some(scene) => Scene::from_config(camera, scene, self.privacy.blur_people),
            None => Scene { blur_people: self.privacy.blur_people, ..Scene::default() },
        }
    }

    pub fn mqtt_client_id(&self) -> String {
        self.mqtt.client_id(&self.device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let config = Config::from_toml_str(text, Path::new("site.toml"))?;
        config.validate(Path::new("site.toml"))?;
        Ok(config)
    }

    #[test]
    fn a_file_with_only_the_broker_url_is_complete() {
        let config = parse("[mqtt]\nurl = \"mqtt://10.0.0.5:1883\"\n").unwrap();
        assert_eq!(config.mqtt.url.as_ref().map(|list| list.urls()), Some(vec!["mqtt://10.0.0.5:1883"]));
        assert_eq!(config.mqtt.topic_prefix, "edge");
        assert_eq!(config.web.listen, "127.0.0.1:8080");
        assert_eq!(config.cameras.len(), 1);
        assert_eq!(config.models.len(), 1, "the detector; the classifier runs on crops only");
    }

    #[test]
    fn embedded_defaults_run_the_demo_without_a_broker() {
        let config = Config::embedded_defaults();
        assert!(config.mqtt.url.is_none());
        assert_eq!(config.cameras[0].id, "demo");
        assert!(config.rules.object.labels.iter().any(|l| l == "truck"));
        assert!(!config.rules.object.labels.iter().any(|l| l == "person"));
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let err = parse("device_id = \"box-1\"\n\n[mqtt]\nurll = \"mqtt://x\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("site.toml"), "{text}");
        assert!(text.contains("line 4"), "{text}");
        assert!(text.contains("urll"), "{text}");
    }

    #[test]
    fn bad_value_type_names_the_line_and_expected_type() {
        let err = parse("[[cameras]]\nid = \"gate\"\nsource = { kind = \"replay\", path = \"x\", fps = \"fast\" }\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("fps"), "{text}");
        assert!(text.contains("f64") || text.contains("float"), "{text}");
    }

    #[test]
    fn out_of_range_value_names_the_key() {
        let err =
            parse("[[cameras]]\nid = \"gate\"\nsource = { kind = \"replay\", path = \"x\", fps = 0.0 }\n").unwrap_err();
        assert!(err.to_string().contains("cameras[0].source.fps"), "{err}");
    }

    #[test]
    fn bad_broker_url_is_refused_with_the_expected_form() {
        let err = parse("[mqtt]\nurl = \"http://broker\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mqtt.url") && text.contains("mqtt://host:port"), "{text}");
        assert_eq!(parse_mqtt_url("mqtt://broker").unwrap(), ("broker".into(), 1883));
        assert_eq!(parse_mqtt_url("mqtt://127.0.0.1:18830").unwrap(), ("127.0.0.1".into(), 18830));
        assert!(parse_mqtt_url("mqtt://broker:99999").is_err());
    }

    #[test]
    fn duplicate_camera_ids_are_refused() {
        let camera = "[[cameras]]\nid = \"gate\"\nsource = { kind = \"replay\", path = \"x\" }\n";
        let err = parse(&format!("{camera}{camera}")).unwrap_err();
        assert!(err.to_string().contains("cameras[1].id"), "{err}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            "state_dir = \"state\"\n[[cameras]]\nid = \"gate\"\nsource = { kind = \"replay\", path = \"frames\" }\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.state_dir, dir.path().join("state"));
        let SourceConfig::Replay { path: frames, .. } = &config.cameras[0].source else {
            panic!("a replay camera: {:?}", config.cameras[0].source)
        };
        assert_eq!(frames, &dir.path().join("frames"));
    }

    #[test]
    fn a_config_line_in_an_error_is_named_not_quoted() {
        let err = parse(
            "[[cameras]]\nid = \"gate\"\nsource = { kind = \"rtsp\", url = \"rtsp://u:s3cret@h/x\", fps = \"x\" }\n",
        )
        .unwrap_err();
        let text = err.to_string();
        // The line is named, never quoted: neither the password nor the rest of the URL shows.
        assert!(text.contains("line 3") && !text.contains("s3cret") && !text.contains("rtsp://u"), "{text}");
    }

    #[test]
    fn a_refused_value_is_not_quoted_even_when_it_holds_a_url_password() {
        // Found by the config fuzzer: any section's complaint quoted the value it refused.
        let err = parse("[stats]\nutc_offset = \"rtsp://u:s3cret@h/x\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("stats.utc_offset") && !text.contains("s3cret") && !text.contains("rtsp://u"), "{text}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = Config::load(Path::new("/nonexistent/edge.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/edge.toml"), "{err}");
    }
}
