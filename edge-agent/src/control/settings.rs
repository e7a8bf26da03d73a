//! The settings that may change while the agent runs, shared by the MQTT `set`/`reload` commands
//! and the web page's installer tools: one [`ConfigStore`] (the files, validated as a whole config
//! and written atomically) and the running stages a change reaches — the judge's rules and zones
//! (between two frames), the inference worker's thresholds, cameras switched on or off. Also the
//! installer's "test the models on the current frame", which goes to the same inference worker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::config_store::{Applied, Change, ChangeError, ConfigStore, ZonesHome};
use super::settable::{self, Actor};
use crate::config::Config;
use crate::delivery::board::StatusBoard;
use crate::evidence::{draw, privacy};
use crate::infer::control::{ModelTestRequest, WorkerControl};
use crate::infer::ModelResult;
use crate::judge::config::JudgeSettings;
use crate::judge::control::JudgeControl;
use crate::judge::PrivacyMask;
use crate::source::CameraHealth;

/// The config sections `Judge::reconfigure` takes between two frames.
const JUDGE_SECTIONS: [&str; 7] = ["rules", "scenes", "tracking", "privacy", "background", "taxonomy", "tamper"];

/// The longest a model test may wait for the worker (it runs between two frames).
const MODEL_TEST_TIMEOUT: Duration = Duration::from_secs(60);
const MODEL_TEST_JPEG_QUALITY: u8 = 85;

/// What a change did: the keys that changed, which of them apply now and which after a restart,
/// and the files written.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub changed: Vec<String>,
    pub applied: Vec<String>,
    pub restart_required: Vec<String>,
    pub written: Vec<PathBuf>,
    #[serde(skip)]
    pub config: Arc<Config>,
}

/// Why a model test gave nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelTestError {
    #[error("{0}")]
    NoFrame(String),
    #[error("the inference worker is busy or has stopped; try again")]
    WorkerGone,
}

/// The models' findings on a camera's newest frame, with that frame (privacy applied: people
/// blurred, privacy zones black) for drawing them on.
#[derive(Debug, Clone, Serialize)]
pub struct ModelTest {
    pub camera: String,
    pub captured_at: DateTime<Utc>,
    pub width: u32,
    pub height: u32,
    pub results: Vec<ModelResult>,
    /// Models that failed on the frame: name and error.
    pub failures: Vec<(String, String)>,
    #[serde(skip)]
    pub jpeg: Vec<u8>,
}

pub struct LiveSettings {
    store: ConfigStore,
    board: Arc<StatusBoard>,
    /// The config the judge builds its rules and zones from.
    judge: watch::Sender<Arc<JudgeSettings>>,
    worker: mpsc::Sender<WorkerControl>,
    /// The judge's classifier switches (site heads deployed and rolled back).
    judge_control: mpsc::Sender<JudgeControl>,
    cameras: HashMap<String, Arc<CameraHealth>>,
}

impl LiveSettings {
    pub fn new(
        store: ConfigStore,
        board: Arc<StatusBoard>,
        judge: watch::Sender<Arc<JudgeSettings>>,
        worker: mpsc::Sender<WorkerControl>,
        judge_control: mpsc::Sender<JudgeControl>,
        cameras: HashMap<String, Arc<CameraHealth>>,
    ) -> Self {
        Self { store, board, judge, worker, judge_control, cameras }
    }

    pub fn store(&self) -> &ConfigStore {
        &self.store
    }

    pub fn current(&self) -> Arc<Config> {
        self.store.current()
    }

    pub fn zones_home(&self, camera: &str) -> ZonesHome {
        self.store.zones_home(camera)
    }

    /// The inference worker, for model switches.
    pub fn worker(&self) -> &mpsc::Sender<WorkerControl> {
        &self.worker
    }

    /// The judge, for switching its second-stage classifiers.
    pub fn judge_control(&self) -> &mpsc::Sender<JudgeControl> {
        &self.judge_control
    }

    pub fn cameras(&self) -> &HashMap<String, Arc<CameraHealth>> {
        &self.cameras
    }

    /// The running models' names, in config order.
    pub fn model_names(&self) -> Vec<String> {
        self.board.snapshot().models.into_iter().map(|m| m.name).collect()
    }

    /// Checks `changes` against the table of settable keys for `actor`, then validates, writes and
    /// applies them, all or nothing. Blocking (file I/O and fsync).
    pub fn set(&self, actor: Actor, changes: &[Change]) -> Result<Outcome, ChangeError> {
        let applied = set_checked(&self.store, actor, changes, &self.model_names())?;
        Ok(self.apply(applied))
    }

    /// Re-reads the files and applies what changed. Blocking.
    pub fn reload(&self) -> Result<Outcome, ChangeError> {
        let applied = self.store.reload()?;
        let outcome = self.apply(applied);
        if !outcome.restart_required.is_empty() {
            tracing::warn!(keys = ?outcome.restart_required, "reloaded config: these keys take effect after a restart");
        }
        Ok(outcome)
    }

    /// Applies a change that something else wrote through the store (the `model` command).
    pub fn apply(&self, applied: Applied) -> Outcome {
        let (applied_keys, restart_required) = self.apply_live(&applied);
        Outcome {
            changed: applied.changed,
            applied: applied_keys,
            restart_required,
            written: applied.written,
            config: applied.config,
        }
    }

    /// Applies what can change while running; returns (applied keys, keys needing a restart).
    fn apply_live(&self, applied: &Applied) -> (Vec<String>, Vec<String>) {
        let mut live = Vec::new();
        let mut restart = Vec::new();
        let mut rules_changed = false;
        let model_names = self.model_names();
        for key in &applied.changed {
            // What `Judge::reconfigure` takes between two frames; a section new to the file is
            // named whole (`scenes`).
            let section = key.split(['.', '[']).next().unwrap_or_default();
            let judge_key = JUDGE_SECTIONS.contains(&section);
            if judge_key {
                rules_changed = true;
                live.push(key.clone());
            } else if let Some(index) = indexed(key, "cameras", "enabled") {
                let Some(camera) = applied.config.cameras.get(index) else {
                    restart.push(key.clone());
                    continue;
                };
                match self.cameras.get(&camera.id) {
                    Some(health) => {
                        health.disabled.store(!camera.enabled, Ordering::Relaxed);
                        tracing::info!(camera = %camera.id, enabled = camera.enabled, "camera switched");
                        live.push(key.clone());
                    }
                    None => restart.push(key.clone()),
                }
            } else if let Some(index) = indexed(key, "models", "score_threshold") {
                let (Some(model), Some(name)) = (applied.config.models.get(index), model_names.get(index)) else {
                    restart.push(key.clone());
                    continue;
                };
                let request =
                    WorkerControl::SetScoreThreshold { model: name.clone(), threshold: model.score_threshold };
                match self.worker.try_send(request) {
                    Ok(()) => live.push(key.clone()),
                    Err(_) => restart.push(key.clone()),
                }
            } else {
                restart.push(key.clone());
            }
        }
        if rules_changed {
            self.judge.send_replace(Arc::new(applied.config.judge_settings()));
        }
        (live, restart)
    }

    /// Runs the loaded models on the newest frame of `camera` (in the inference worker, between
    /// two frames) and returns what they found, without any event coming of it. The frame comes
    /// back with privacy applied as the camera's pictures always are.
    pub async fn test_models(&self, camera: &str) -> Result<ModelTest, ModelTestError> {
        let (reply, answer) = oneshot::channel();
        let request = WorkerControl::TestModels(ModelTestRequest { camera: camera.to_string(), reply });
        self.worker.try_send(request).map_err(|_| ModelTestError::WorkerGone)?;
        let run = match tokio::time::timeout(MODEL_TEST_TIMEOUT, answer).await {
            Ok(Ok(Ok(run))) => run,
            Ok(Ok(Err(message))) => return Err(ModelTestError::NoFrame(message)),
            Ok(Err(_)) | Err(_) => return Err(ModelTestError::WorkerGone),
        };
        let config = self.current();
        let camera = camera.to_string();
        let tested = tokio::task::spawn_blocking(move || {
            let frame = &run.inferred.frame;
            let mut image = (*frame.image).clone();
            mask_private(&mut image, &run.inferred.results, &config, &camera);
            let jpeg = draw::encode_jpeg(&image, MODEL_TEST_JPEG_QUALITY).unwrap_or_default();
            ModelTest {
                captured_at: frame.captured_at,
                width: image.width(),
                height: image.height(),
                results: run.inferred.results,
                failures: run.failures,
                jpeg,
                camera,
            }
        })
        .await
        .map_err(|_| ModelTestError::WorkerGone)?;
        Ok(tested)
    }
}

/// The one way a page admin's or the platform's change reaches the config: every key checked
/// against the table of settable keys for `actor` (nothing is written when one is refused), then
/// validated and written as a whole config.
pub fn set_checked(
    store: &ConfigStore,
    actor: Actor,
    changes: &[Change],
    model_names: &[String],
) -> Result<Applied, ChangeError> {
    let current = store.current();
    for change in changes {
        settable::check(actor, &change.key, &change.value, &current, model_names)?;
    }
    store.set(changes, model_names)
}

/// Blurs the people the models found (unless the camera may show them) and blacks out the
/// camera's privacy zones, as the evidence stage does for every picture it lets out.
pub fn mask_private(image: &mut image::RgbImage, results: &[ModelResult], config: &Config, camera: &str) {
    let mask = PrivacyMask::from_results(&config.scene_of(camera), results);
    privacy::apply(image, &mask);
}

/// The index of `{array}[i].{field}`.
fn indexed(key: &str, array: &str, field: &str) -> Option<usize> {
    let rest = key.strip_prefix(array)?.strip_prefix('[')?;
    let (index, rest) = rest.split_once(']')?;
    (rest == format!(".{field}")).then(|| index.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings over a config file with one camera, and the judge's and worker's ends.
    fn settings(
        text: &str,
    ) -> (tempfile::TempDir, LiveSettings, watch::Receiver<Arc<JudgeSettings>>, mpsc::Receiver<WorkerControl>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let board = Arc::new(StatusBoard::new("box".into(), Vec::new()));
        let (judge, judge_rx) = watch::channel(Arc::new(config.judge_settings()));
        let (worker, worker_rx) = mpsc::channel(8);
        let (judge_control, _) = mpsc::channel(1);
        let health = Arc::new(CameraHealth::default());
        let cameras = HashMap::from([("gate".to_string(), health)]);
        let settings =
            LiveSettings::new(ConfigStore::new(Some(path), config), board, judge, worker, judge_control, cameras);
        (dir, settings, judge_rx, worker_rx)
    }

    const GATE: &str = "[[cameras]]\nid = \"gate\"\nsource = { kind = \"replay\", path = \"frames\" }\n";

    #[test]
    fn the_first_zones_of_a_file_reach_the_judge_at_once() {
        let (_dir, settings, mut judge, _worker) = settings(GATE);
        judge.mark_unchanged();
        let zones =
            serde_json::json!([{ "id": "road", "role": "road", "polygon": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]] }]);
        let outcome =
            settings.set(Actor::PageAdmin, &[Change { key: "scenes.gate.zones".into(), value: zones }]).unwrap();
        assert_eq!(outcome.changed, ["scenes"], "a section new to the file is named whole");
        assert_eq!(
            (outcome.applied.as_slice(), outcome.restart_required.len()),
            (["scenes".to_string()].as_slice(), 0)
        );
        assert!(judge.has_changed().unwrap());
        assert_eq!(judge.borrow_and_update().scenes["gate"].zones[0].id, "road");
    }

    #[test]
    fn cameras_switch_and_other_keys_wait_for_a_restart() {
        let (dir, settings, mut judge, _worker) = settings(GATE);
        judge.mark_unchanged();
        let outcome = settings
            .set(Actor::Platform, &[Change { key: "cameras.gate.enabled".into(), value: false.into() }])
            .unwrap();
        assert_eq!(outcome.applied, ["cameras[0].enabled"]);
        assert!(settings.cameras()["gate"].disabled.load(Ordering::Relaxed));
        assert!(!judge.has_changed().unwrap(), "the judge has nothing new");
        std::fs::write(dir.path().join("agent.toml"), format!("device_id = \"other\"\n{GATE}")).unwrap();
        let outcome = settings.reload().unwrap();
        assert!(outcome.restart_required.contains(&"device_id".to_string()), "{outcome:?}");
        assert!(!settings.cameras()["gate"].disabled.load(Ordering::Relaxed), "enabled again by the reload");
    }

    #[test]
    fn indexed_keys_are_read() {
        assert_eq!(indexed("cameras[2].enabled", "cameras", "enabled"), Some(2));
        assert_eq!(indexed("cameras[2].source", "cameras", "enabled"), None);
        assert_eq!(indexed("models[0].score_threshold", "models", "score_threshold"), Some(0));
    }
}
