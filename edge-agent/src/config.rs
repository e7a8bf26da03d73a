//! The agent's configuration: what the user writes in TOML, with a documented default for every key,
//! so an empty file (or no file at all) runs the embedded demo. Parsing rejects unknown keys and bad
//! values with the file, line and key; `validate` checks what serde cannot (ranges, cross-references).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What went wrong while reading the configuration. Every variant names the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}, column {column}: {message}\n    {line_text}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        line_text: String,
    },
    #[error("config file {path}: `{key}` {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address of the status page and JSON API. Loopback by default: the LAN is an explicit choice.
    #[serde(default = "default_web_listen")]
    pub listen: String,
    /// Set false to run without the web page.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: default_web_listen(),
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port`. Without it events stay in the local outbox until a broker is configured.
    #[serde(default)]
    pub url: Option<String>,
    /// First level of every topic.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Defaults to `edge-agent-{device_id}`; must be unique per box.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            topic_prefix: default_topic_prefix(),
            client_id: None,
            keep_alive_secs: default_keep_alive_secs(),
        }
    }
}

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
        Self {
            backend: BackendKind::default(),
            intra_op_threads: 0,
        }
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
pub struct CameraConfig {
    pub id: String,
    pub source: SourceConfig,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path of the model's manifest (`*.toml` next to the `.onnx`).
    pub manifest: PathBuf,
    /// Overrides the manifest's score threshold.
    #[serde(default)]
    pub score_threshold: Option<f32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    #[serde(default)]
    pub object: ObjectRuleConfig,
}

/// The plain rule: any detection of these labels at or above `min_score` is an event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRuleConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Labels to report; people are left out on purpose (privacy by default).
    #[serde(default = "default_object_labels")]
    pub labels: Vec<String>,
    #[serde(default = "default_object_min_score")]
    pub min_score: f32,
}

impl Default for ObjectRuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            labels: default_object_labels(),
            min_score: default_object_min_score(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_web_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_topic_prefix() -> String {
    "edge".into()
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_replay_fps() -> f64 {
    2.0
}
fn default_object_labels() -> Vec<String> {
    [
        "truck",
        "car",
        "bus",
        "motorcycle",
        "bicycle",
        "bottle",
        "cup",
    ]
    .map(String::from)
    .to_vec()
}
fn default_object_min_score() -> f32 {
    0.3
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
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
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

fn default_cameras() -> Vec<CameraConfig> {
    vec![CameraConfig {
        id: "demo".into(),
        source: SourceConfig::Replay {
            path: data_dir().join("models/samples"),
            fps: default_replay_fps(),
            looping: true,
        },
    }]
}

fn default_models() -> Vec<ModelConfig> {
    ["models/nanodet.toml", "models/efficientnet_lite0.toml"]
        .iter()
        .map(|m| ModelConfig {
            manifest: data_dir().join(m),
            score_threshold: None,
        })
        .collect()
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

impl Config {
    /// The embedded defaults: demo camera, default models, no broker.
    pub fn embedded_defaults() -> Self {
        // An empty document is a complete configuration: every key has a default.
        Self::from_toml_str("", Path::new("<embedded defaults>"))
            .unwrap_or_else(|e| unreachable!("embedded defaults must parse: {e}"))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml_str(&text, path)?;
        config.resolve_relative_paths(path.parent().unwrap_or(Path::new(".")));
        config.validate(path)?;
        Ok(config)
    }

    /// Parses without touching the file system, for tests and for the defaults.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| {
            let (line, column, line_text) = match e.span() {
                Some(span) => line_and_column(text, span.start),
                None => (0, 0, String::new()),
            };
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_string(),
                line_text,
            }
        })
    }

    /// Paths in a config file are relative to the file, so a site folder can be moved as a whole.
    fn resolve_relative_paths(&mut self, base: &Path) {
        let absolutise = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for camera in &mut self.cameras {
            match &mut camera.source {
                SourceConfig::Replay { path, .. } => absolutise(path),
            }
        }
        for model in &mut self.models {
            absolutise(&mut model.manifest);
        }
        absolutise(&mut self.state_dir);
    }

    /// Checks what the types cannot: ranges, uniqueness and URL shapes.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            problem,
        };
        if !is_valid_topic_level(&self.device_id) {
            return Err(invalid(
                "device_id".into(),
                format!(
                    "is {:?}; expected a non-empty name without '/', '+', '#'",
                    self.device_id
                ),
            ));
        }
        if let Err(e) = self.web.listen.parse::<std::net::SocketAddr>() {
            return Err(invalid(
                "web.listen".into(),
                format!(
                    "is {:?}; expected address:port such as 127.0.0.1:8080 ({e})",
                    self.web.listen
                ),
            ));
        }
        if let Some(url) = &self.mqtt.url {
            if let Err(problem) = parse_mqtt_url(url) {
                return Err(invalid("mqtt.url".into(), problem));
            }
        }
        if self.mqtt.topic_prefix.is_empty()
            || self.mqtt.topic_prefix.contains(['+', '#'])
            || self.mqtt.topic_prefix.ends_with('/')
        {
            return Err(invalid(
                "mqtt.topic_prefix".into(),
                format!(
                    "is {:?}; expected a topic prefix without wildcards or a trailing '/'",
                    self.mqtt.topic_prefix
                ),
            ));
        }
        if self.cameras.is_empty() {
            return Err(invalid(
                "cameras".into(),
                "is empty; expected at least one camera".into(),
            ));
        }
        let mut ids = HashSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            if !is_valid_topic_level(&camera.id) {
                return Err(invalid(
                    format!("cameras[{i}].id"),
                    format!(
                        "is {:?}; expected a non-empty name without '/', '+', '#'",
                        camera.id
                    ),
                ));
            }
            if !ids.insert(camera.id.as_str()) {
                return Err(invalid(
                    format!("cameras[{i}].id"),
                    format!("{:?} is used twice; camera ids must be unique", camera.id),
                ));
            }
            match &camera.source {
                SourceConfig::Replay { fps, .. } => {
                    if !(*fps > 0.0 && *fps <= 120.0) {
                        return Err(invalid(
                            format!("cameras[{i}].source.fps"),
                            format!("is {fps}; expected a rate above 0 and at most 120 frames/s"),
                        ));
                    }
                }
            }
        }
        if self.models.is_empty() {
            return Err(invalid(
                "models".into(),
                "is empty; expected at least one model".into(),
            ));
        }
        for (i, model) in self.models.iter().enumerate() {
            if let Some(t) = model.score_threshold {
                if !(0.0..=1.0).contains(&t) {
                    return Err(invalid(
                        format!("models[{i}].score_threshold"),
                        format!("is {t}; expected a value from 0 to 1"),
                    ));
                }
            }
        }
        let min_score = self.rules.object.min_score;
        if !(0.0..=1.0).contains(&min_score) {
            return Err(invalid(
                "rules.object.min_score".into(),
                format!("is {min_score}; expected a value from 0 to 1"),
            ));
        }
        Ok(())
    }

    pub fn mqtt_client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edge-agent-{}", self.device_id))
    }
}

fn is_valid_topic_level(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '+', '#']) && name.len() <= 64
}

/// Host and port of an `mqtt://host[:port]` URL.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
        format!("is {url:?}; expected mqtt://host:port (mqtts:// is not supported yet)")
    })?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse::<u16>().map_err(|_| {
                format!("is {url:?}; the port {port:?} is not a number from 1 to 65535")
            })?;
            (host, port)
        }
        None => (rest, 1883),
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "is {url:?}; expected mqtt://host:port with a host name"
        ));
    }
    Ok((host.to_string(), port))
}

/// 1-based line and column of a byte offset, and the text of that line.
fn line_and_column(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..]
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    (line, column, line_text)
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
        assert_eq!(config.mqtt.url.as_deref(), Some("mqtt://10.0.0.5:1883"));
        assert_eq!(config.mqtt.topic_prefix, "edge");
        assert_eq!(config.web.listen, "127.0.0.1:8080");
        assert_eq!(config.cameras.len(), 1);
        assert_eq!(config.models.len(), 2);
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
        let err = parse(
            "[[cameras]]\nid = \"gate\"\nsource = { kind = \"replay\", path = \"x\", fps = \"fast\" }\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("fps"), "{text}");
        assert!(text.contains("f64") || text.contains("float"), "{text}");
    }

    #[test]
    fn out_of_range_value_names_the_key() {
        let err = parse(
            "[[cameras]]\nid = \"gate\"\nsource = { kind = \"replay\", path = \"x\", fps = 0.0 }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("cameras[0].source.fps"), "{err}");
    }

    #[test]
    fn bad_broker_url_is_refused_with_the_expected_form() {
        let err = parse("[mqtt]\nurl = \"http://broker\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("mqtt.url") && text.contains("mqtt://host:port"),
            "{text}"
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:18830").unwrap(),
            ("127.0.0.1".into(), 18830)
        );
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
        let SourceConfig::Replay { path: frames, .. } = &config.cameras[0].source;
        assert_eq!(frames, &dir.path().join("frames"));
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = Config::load(Path::new("/nonexistent/edge.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/edge.toml"), "{err}");
    }
}
