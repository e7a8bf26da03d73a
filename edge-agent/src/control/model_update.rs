//! The `model` command: replace a configured model with a new file from the platform.
//!
//! Download (HTTP/HTTPS, size-capped) → sha256 must match → Ed25519 signature over the file bytes
//! (when given or required) → manifest copy with the new file and hash → load and check against
//! the manifest → self-test on sample pictures → switch in the inference worker between two frames
//! (the old model is kept in memory and on disk) → config file points at the new manifest →
//! probation: if the new model fails during its first minutes, the old one is switched back and
//! the config restored. Every refusal before the switch leaves the agent exactly as it was.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::commands::{parse_request, CommandError, CommandHandler};
use crate::base::ed25519::decode_key_material;
use crate::base::shutdown::Shutdown;
use crate::base::write_file::write_atomically;
use crate::config::Config;
use crate::config::ModelConfig;
use crate::control::config_store::ConfigStore;
use crate::control::site_heads::slot_manifest;
use crate::delivery::mqtt::IncomingCommand;
use crate::infer::control::{ModelRuns, RunCounts, WorkerControl};
use crate::infer::{Findings, Model, ModelInfo};
use crate::judge::control::ClassifierSlot;

const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Failures that, when they are also the majority of runs, fail a model on probation.
const PROBATION_FAILURES: u64 = 3;
/// Successful runs a model needs before its probation can pass: time alone (a camera that sent
/// nothing) proves nothing.
pub const PROBATION_MIN_RUNS: u64 = 3;
/// A probation without enough runs waits up to this many times `probation_secs`, then fails.
pub const PROBATION_EXTENSION: u32 = 4;
/// One frame running this long means the model hangs.
const PROBATION_HUNG_AFTER: Duration = Duration::from_secs(30);
const PROBATION_CHECK_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRequest {
    #[allow(dead_code)]
    correlation_id: String,
    /// Which configured model to replace (its manifest name).
    pub name: String,
    pub url: String,
    pub sha256: String,
    /// Ed25519 signature of the file bytes, hex or base64.
    #[serde(default)]
    pub signature: Option<String>,
}

/// The verdict on a model after its first runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbationVerdict {
    Healthy,
    Failing,
}

/// Failing once at least [`PROBATION_FAILURES`] runs failed and they are the majority.
pub fn probation_verdict(since_switch: RunCounts) -> ProbationVerdict {
    if since_switch.failed >= PROBATION_FAILURES && since_switch.failed > since_switch.ok {
        ProbationVerdict::Failing
    } else {
        ProbationVerdict::Healthy
    }
}

/// How a watched probation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbationOutcome {
    /// At least [`PROBATION_MIN_RUNS`] successful runs, and not failing.
    Passed(RunCounts),
    Failed(RunCounts),
    /// Too few successful runs even after waiting [`PROBATION_EXTENSION`] times longer.
    TooFewRuns(RunCounts),
    /// One frame has been running this long: the model (or its backend) hangs.
    Hung(Duration),
    Interrupted,
}

/// Watches a model's runs for `duration` (longer while it has run too few times to judge).
pub async fn watch_probation(
    runs: &ModelRuns,
    model: &str,
    duration: Duration,
    hung_after: Duration,
    shutdown: &mut Shutdown,
) -> ProbationOutcome {
    let baseline = runs.get(model);
    let started = Instant::now();
    loop {
        if shutdown.sleep(PROBATION_CHECK_EVERY).await {
            return ProbationOutcome::Interrupted;
        }
        let now = runs.get(model);
        let since =
            RunCounts { ok: now.ok - baseline.ok.min(now.ok), failed: now.failed - baseline.failed.min(now.failed) };
        if probation_verdict(since) == ProbationVerdict::Failing {
            return ProbationOutcome::Failed(since);
        }
        if let Some(busy) = runs.busy_for().filter(|busy| *busy >= hung_after) {
            return ProbationOutcome::Hung(busy);
        }
        let elapsed = started.elapsed();
        if elapsed >= duration && since.ok >= PROBATION_MIN_RUNS {
            return ProbationOutcome::Passed(since);
        }
        if elapsed >= duration * PROBATION_EXTENSION {
            return ProbationOutcome::TooFewRuns(since);
        }
    }
}

/// Runs a freshly loaded model on every picture of `folder`; refuses it on the first error or an
/// output that makes no sense (non-finite or out-of-range scores, boxes outside the frame).
pub fn self_test(model: &mut Model, folder: &Path) -> Result<Value, String> {
    let mut pictures: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(|e| format!("cannot read self-test pictures in {}: {e}", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_lowercase().as_str()))
        })
        .collect();
    pictures.sort();
    if pictures.is_empty() {
        return Err(format!("no .jpg/.png pictures in {} to self-test with", folder.display()));
    }
    let mut findings = 0usize;
    let mut total_ms = 0.0;
    for path in &pictures {
        let image = crate::source::replay::decode_picture("self-test", path).map_err(|e| e.to_string())?;
        let result = model.infer(&image).map_err(|e| format!("{}: {e}", path.display()))?;
        total_ms += result.latency.as_secs_f64() * 1000.0;
        let (width, height) = (image.width() as f32, image.height() as f32);
        let bad = |what: String| Err(format!("{}: {what}", path.display()));
        match &result.findings {
            Findings::Detect { detections } => {
                for d in detections {
                    let b = d.bbox;
                    if !(0.0..=1.0).contains(&d.score) || !d.score.is_finite() {
                        return bad(format!("detection score {} is not in 0..1", d.score));
                    }
                    let inside = [b.x1, b.x2].iter().all(|x| x.is_finite() && *x >= -1.0 && *x <= width + 1.0)
                        && [b.y1, b.y2].iter().all(|y| y.is_finite() && *y >= -1.0 && *y <= height + 1.0);
                    if !inside {
                        return bad(format!("box {b:?} lies outside the {width}×{height} frame"));
                    }
                }
                findings += detections.len();
            }
            Findings::Classify { classes } => {
                if classes.is_empty() {
                    return bad("the classifier returned no classes".into());
                }
                if let Some(c) = classes.iter().find(|c| !(0.0..=1.0).contains(&c.score) || !c.score.is_finite()) {
                    return bad(format!("class score {} is not in 0..1", c.score));
                }
                findings += classes.len();
            }
        }
    }
    Ok(json!({
        "pictures": pictures.len(),
        "findings": findings,
        "mean_inference_ms": (total_ms / pictures.len() as f64 * 100.0).round() / 100.0,
    }))
}

/// Downloads `url` into `target`, hashing as it goes; returns the hex sha256.
fn download(url: &str, target: &Path, max_bytes: u64) -> Result<String, CommandError> {
    let failed = |message: String| CommandError::new("download_failed", message);
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(DOWNLOAD_TIMEOUT)).http_status_as_error(true).build().into();
    let mut response = agent.get(url).call().map_err(|e| failed(format!("GET {url}: {e}")))?;
    let mut reader = response.body_mut().with_config().limit(max_bytes).reader();
    let mut file =
        std::fs::File::create(target).map_err(|e| failed(format!("cannot create {}: {e}", target.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = reader.read(&mut buffer).map_err(|e| failed(format!("GET {url}: {e}")))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        std::io::Write::write_all(&mut file, &buffer[..read])
            .map_err(|e| failed(format!("cannot write {}: {e}", target.display())))?;
    }
    file.sync_all().map_err(|e| failed(format!("cannot sync {}: {e}", target.display())))?;
    Ok(hex::encode(hasher.finalize()))
}

/// A model prepared for switching: loaded, self-tested, with its manifest on disk.
struct Prepared {
    model: Model,
    manifest: PathBuf,
    self_test: Value,
}

impl CommandHandler {
    pub(super) async fn model(&self, command: IncomingCommand, mut shutdown: Shutdown) {
        let (correlation_id, request) = match parse_request::<ModelRequest>(&command.payload) {
            Ok(parsed) => parsed,
            Err((id, error)) => return self.ack("model", id, Err(error)),
        };
        if self.model_update_busy.swap(true, Ordering::SeqCst) {
            let busy =
                CommandError::new("busy", "another model update is in progress; try again when it has been acked");
            return self.ack("model", Some(correlation_id), Err(busy));
        }
        let outcome = self.switch_model(&request).await;
        let switched = match outcome {
            Ok(switched) => switched,
            Err(error) => {
                self.model_update_busy.store(false, Ordering::SeqCst);
                return self.ack("model", Some(correlation_id), Err(error));
            }
        };
        let probation = Duration::from_secs(self.settings.store().current().model_update.probation_secs);
        self.ack(
            "model",
            Some(correlation_id.clone()),
            Ok(json!({
                "stage": "switched",
                "name": request.name,
                "sha256": request.sha256.to_lowercase(),
                "previous_sha256": switched.previous_info.sha256,
                "manifest": switched.new_manifest,
                "self_test": switched.self_test,
                "probation_seconds": probation.as_secs(),
            })),
        );
        match self.probation(switched, &request.name, probation, &mut shutdown).await {
            Probation::Interrupted => {}
            Probation::Confirmed => {
                tracing::info!(model = %request.name, sha256 = %request.sha256, "new model passed its probation");
                let result =
                    json!({ "stage": "confirmed", "name": request.name, "sha256": request.sha256.to_lowercase() });
                self.ack("model", Some(correlation_id), Ok(result));
            }
            Probation::RolledBack(message) => {
                self.ack("model", Some(correlation_id), Err(CommandError::new("rolled_back", message)));
            }
        }
        self.model_update_busy.store(false, Ordering::SeqCst);
    }

    /// Watches the switched-in model for `duration`; rolls back to the previous one unless it
    /// passes. A hung model cannot be swapped out (the worker is stuck in it): the pending switch
    /// stays on disk, the watchdog restarts the agent, and the start rolls it back.
    async fn probation(
        &self,
        switched: Switched,
        name: &str,
        duration: Duration,
        shutdown: &mut Shutdown,
    ) -> Probation {
        let why = match watch_probation(&self.model_runs, name, duration, PROBATION_HUNG_AFTER, shutdown).await {
            ProbationOutcome::Interrupted => return Probation::Interrupted,
            ProbationOutcome::Passed(_) => {
                PendingSwitch::clear(&self.state_dir);
                prune_unused_models(&self.state_dir, &self.settings.store().current());
                return Probation::Confirmed;
            }
            ProbationOutcome::Hung(busy) => {
                let why = format!(
                    "the new model has been running one frame for {} s: it hangs; the watchdog restarts the agent \
                     and the start rolls back to the previous model (sha256 {})",
                    busy.as_secs(),
                    switched.previous_info.sha256
                );
                tracing::error!(model = %name, "{why}");
                return Probation::RolledBack(why);
            }
            ProbationOutcome::Failed(counts) => format!(
                "the new model failed {} of {} runs during its probation; the previous model (sha256 {}) is back",
                counts.failed,
                counts.ok + counts.failed,
                switched.previous_info.sha256
            ),
            ProbationOutcome::TooFewRuns(counts) => format!(
                "the new model ran successfully only {} times in {} s (it needs {PROBATION_MIN_RUNS}); the previous \
                 model (sha256 {}) is back",
                counts.ok,
                (duration * PROBATION_EXTENSION).as_secs(),
                switched.previous_info.sha256
            ),
        };
        tracing::error!(model = %name, "{why}");
        match self.roll_back(switched).await {
            Ok(()) => {
                PendingSwitch::clear(&self.state_dir);
                Probation::RolledBack(why)
            }
            Err(e) => Probation::RolledBack(format!("{why}; but the roll-back failed: {}", e.message)),
        }
    }

    /// Everything up to and including the switch; an error here has changed nothing.
    async fn switch_model(&self, request: &ModelRequest) -> Result<Switched, CommandError> {
        let config = self.settings.store().current();
        let names: Vec<String> = self.board.snapshot().models.iter().map(|m| m.name.clone()).collect();
        let index = names.iter().position(|n| n == &request.name).ok_or_else(|| {
            CommandError::new(
                "unknown_target",
                format!("no model named {:?}; configured: {}", request.name, names.join(", ")),
            )
        })?;
        if self.settings.store().path().is_none() {
            return Err(CommandError::new(
                "no_config_file",
                "the agent runs on its embedded defaults (no --config FILE), so a model switch could not be persisted",
            ));
        }
        let expected = request.sha256.to_lowercase();
        if expected.len() != 64 || !expected.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CommandError::new(
                "invalid_request",
                format!("`sha256` is {:?}; expected 64 hex digits", request.sha256),
            ));
        }
        if !(request.url.starts_with("http://") || request.url.starts_with("https://")) {
            return Err(CommandError::new(
                "invalid_request",
                format!("`url` is {:?}; expected an http:// or https:// URL", request.url),
            ));
        }
        let policy = &config.model_update;
        let signature =
            match &request.signature {
                Some(text) => Some(
                    decode_key_material(text, 64)
                        .map_err(|e| CommandError::new("invalid_request", format!("`signature` {e}")))?,
                ),
                None if policy.signature_required() => return Err(CommandError::new(
                    "signature_required",
                    "this box only accepts signed models (`model_update.public_key`); the request has no `signature`",
                )),
                None => None,
            };
        let public_key = match (&signature, &policy.public_key) {
            (Some(_), None) => {
                return Err(CommandError::new(
                    "signature_unverifiable",
                    "the request is signed but no `model_update.public_key` is configured to check it",
                ))
            }
            (_, Some(key)) => Some(
                decode_key_material(key, 32)
                    .map_err(|e| CommandError::new("config_file_error", format!("`model_update.public_key` {e}")))?,
            ),
            (None, None) => None,
        };
        let current_manifest = config.models.get(index).map(|m| m.manifest.clone()).ok_or_else(|| {
            CommandError::new("unknown_target", format!("model {:?} is not in the config", request.name))
        })?;
        // The new model keeps the site's thresholds of the one it replaces.
        let (score_threshold, class_thresholds) =
            config.models.get(index).map(|m| (m.score_threshold, m.class_thresholds.clone())).unwrap_or_default();
        let folder = self.state_dir.join("models");
        let max_bytes = policy.max_download_mb.saturating_mul(1024 * 1024);
        let self_test_folder = policy.self_test_folder();
        let inference = self.inference.clone();
        let (name, url) = (request.name.clone(), request.url.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            prepare(
                &name,
                &url,
                &expected,
                signature,
                public_key,
                &current_manifest,
                score_threshold,
                class_thresholds,
                &folder,
                max_bytes,
                &self_test_folder,
                &inference,
            )
        })
        .await
        .map_err(|e| CommandError::new("internal", format!("model update task failed: {e}")))??;

        let new_info = prepared.model.info();
        let previous_info = self
            .board
            .snapshot()
            .models
            .into_iter()
            .find(|m| m.name == request.name)
            .ok_or_else(|| CommandError::new("unknown_target", format!("model {:?} is gone", request.name)))?;
        let previous_manifest = config.models[index].manifest.clone();
        // Written before the switch: a crash from here until the probation ends rolls it back.
        let pending = PendingSwitch {
            index,
            name: request.name.clone(),
            previous_manifest: previous_manifest.clone(),
            new_manifest: prepared.manifest.clone(),
            switched_at: chrono::Utc::now(),
            classifier: None,
        };
        pending.save(&self.state_dir).map_err(|e| {
            CommandError::new("state_unwritable", format!("cannot record the pending switch, nothing changed: {e}"))
        })?;
        let old_model = match self.swap_in(prepared.model).await {
            Ok(old) => old,
            Err(e) => {
                PendingSwitch::clear(&self.state_dir);
                return Err(e);
            }
        };
        if let Err(e) = self.settings.store().set_model_manifest(index, &prepared.manifest) {
            // The switch must be durable, or not happen.
            let _ = self.swap_in(*old_model).await;
            PendingSwitch::clear(&self.state_dir);
            return Err(CommandError::new(e.code(), format!("the new model was not kept: {e}")));
        }
        self.replace_model_info(new_info.clone());
        tracing::info!(model = %request.name, sha256 = %new_info.sha256, previous = %previous_info.sha256, "model updated");
        Ok(Switched {
            index,
            old_model,
            previous_info,
            previous_manifest,
            new_manifest: prepared.manifest,
            self_test: prepared.self_test,
        })
    }

    async fn swap_in(&self, model: Model) -> Result<Box<Model>, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.settings
            .worker()
            .send(WorkerControl::SwapModel { model: Box::new(model), reply })
            .await
            .map_err(|_| CommandError::new("internal", "the inference worker has stopped"))?;
        match answer.await {
            Ok(Ok(old)) => Ok(old),
            Ok(Err(_)) => Err(CommandError::new("unknown_target", "the inference worker runs no model of that name")),
            Err(_) => Err(CommandError::new("internal", "the inference worker did not answer")),
        }
    }

    fn replace_model_info(&self, info: ModelInfo) {
        let mut models = self.board.snapshot().models;
        if let Some(slot) = models.iter_mut().find(|m| m.name == info.name) {
            *slot = info;
        }
        self.board.set_models(models);
        self.status_changed.notify_one();
    }

    async fn roll_back(&self, switched: Switched) -> Result<(), CommandError> {
        let Switched { index, old_model, previous_info, previous_manifest, .. } = switched;
        self.swap_in(*old_model).await?;
        self.replace_model_info(previous_info);
        self.settings
            .store()
            .set_model_manifest(index, &previous_manifest)
            .map_err(|e| CommandError::new(e.code(), e.to_string()))?;
        Ok(())
    }
}

/// A model switch its probation has not confirmed yet, kept in `state_dir` so that a crash, a
/// watchdog restart or a stop during the probation rolls it back at the next start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingSwitch {
    /// The `[[models]]` entry switched.
    pub index: usize,
    pub name: String,
    pub previous_manifest: PathBuf,
    pub new_manifest: PathBuf,
    pub switched_at: chrono::DateTime<chrono::Utc>,
    /// A second-stage classifier slot switched (a site head) instead of `[[models]]` `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierSlot>,
}

pub const PENDING_SWITCH_FILE: &str = "model-switch-pending.json";

impl PendingSwitch {
    pub(super) fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(&state_dir.join(PENDING_SWITCH_FILE), &json)
    }

    pub(super) fn clear(state_dir: &Path) {
        let path = state_dir.join(PENDING_SWITCH_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::error!(path = %path.display(), "cannot clear the pending model switch: {e}")
            }
            _ => {}
        }
    }

    fn load(state_dir: &Path) -> Result<Option<Self>, String> {
        let path = state_dir.join(PENDING_SWITCH_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

/// At start, before the models load: a switch (of a model or a site head) whose probation never ended (the agent crashed, was
/// restarted by the watchdog, or stopped) is rolled back in the config file. Returns what was done.
pub fn roll_back_unconfirmed_switch(config_path: &Path, config: &Config) -> Result<Option<String>, String> {
    let Some(pending) = PendingSwitch::load(&config.state_dir)? else { return Ok(None) };
    let points_at_new = match pending.classifier {
        Some(slot) => slot_manifest(config, slot).is_some_and(|m| m == pending.new_manifest),
        None => config.models.get(pending.index).is_some_and(|m| m.manifest == pending.new_manifest),
    };
    if points_at_new {
        let store = ConfigStore::new(Some(config_path.to_owned()), config.clone());
        let restored = match pending.classifier {
            Some(slot) => store.set_classifier_manifest(slot, &pending.previous_manifest),
            None => store.set_model_manifest(pending.index, &pending.previous_manifest),
        };
        restored.map_err(|e| {
            format!(
                "model {:?} switched at {} was not confirmed, and rolling it back failed: {e}",
                pending.name, pending.switched_at
            )
        })?;
    }
    PendingSwitch::clear(&config.state_dir);
    Ok(Some(format!(
        "model {:?} switched at {} to {} never finished its probation (crash, watchdog restart or stop); \
         rolled back to {}",
        pending.name,
        pending.switched_at.to_rfc3339(),
        pending.new_manifest.display(),
        pending.previous_manifest.display()
    )))
}

/// Downloaded models (`state_dir/models`) no configured model uses any more — replaced and
/// confirmed, or rolled back — are deleted: the models folder holds what runs and nothing else.
/// Returns the files deleted. Only files inside that folder are ever touched.
pub fn prune_unused_models(state_dir: &Path, config: &Config) -> Vec<PathBuf> {
    let folder = state_dir.join("models");
    let Ok(entries) = std::fs::read_dir(&folder) else { return Vec::new() };
    let in_use: Vec<PathBuf> = config.models.iter().filter_map(|m| m.manifest.canonicalize().ok()).collect();
    let mut deleted = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        if path.canonicalize().is_ok_and(|p| in_use.contains(&p)) {
            continue;
        }
        let onnx = crate::infer::manifest::Manifest::load(&path).ok().map(|m| m.onnx_path());
        for file in [Some(path.clone()), onnx].into_iter().flatten() {
            if file.parent() == Some(folder.as_path()) && std::fs::remove_file(&file).is_ok() {
                deleted.push(file);
            }
        }
    }
    if !deleted.is_empty() {
        tracing::info!(files = deleted.len(), folder = %folder.display(), "deleted downloaded models no longer in use");
    }
    deleted
}

/// How a new model's first minutes ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probation {
    Confirmed,
    /// With the reason, for the ack.
    RolledBack(String),
    Interrupted,
}

/// What a roll-back needs.
struct Switched {
    index: usize,
    old_model: Box<Model>,
    previous_info: ModelInfo,
    previous_manifest: PathBuf,
    new_manifest: PathBuf,
    self_test: Value,
}

/// Download, verify, write the manifest, load and self-test; blocking. Files of a refused model
/// are removed again.
#[allow(clippy::too_many_arguments)]
fn prepare(
    name: &str,
    url: &str,
    expected_sha256: &str,
    signature: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    current_manifest: &Path,
    score_threshold: Option<f32>,
    class_thresholds: std::collections::BTreeMap<String, f32>,
    folder: &Path,
    max_bytes: u64,
    self_test_folder: &Path,
    inference: &crate::config::InferenceConfig,
) -> Result<Prepared, CommandError> {
    std::fs::create_dir_all(folder)
        .map_err(|e| CommandError::new("internal", format!("cannot create {}: {e}", folder.display())))?;
    let stem = format!("{name}-{}", &expected_sha256[..12]);
    let partial = folder.join(format!(".{stem}.download"));
    let onnx = folder.join(format!("{stem}.onnx"));
    let manifest_path = folder.join(format!("{stem}.toml"));
    let cleanup = |paths: &[&Path]| {
        for path in paths {
            let _ = std::fs::remove_file(path);
        }
    };
    let found = match download(url, &partial, max_bytes) {
        Ok(found) => found,
        Err(e) => {
            cleanup(&[&partial]);
            return Err(e);
        }
    };
    if found != expected_sha256 {
        cleanup(&[&partial]);
        return Err(CommandError::new(
            "sha256_mismatch",
            format!("the file at {url} has sha256 {found}, but the command says {expected_sha256}; nothing changed"),
        ));
    }
    if let Some(signature) = &signature {
        let Some(key) = &public_key else {
            cleanup(&[&partial]);
            return Err(CommandError::new("signature_unverifiable", "no `model_update.public_key` configured"));
        };
        let bytes = std::fs::read(&partial)
            .map_err(|e| CommandError::new("internal", format!("cannot read {}: {e}", partial.display())))?;
        if !crate::base::ed25519::verify(key, &bytes, signature) {
            cleanup(&[&partial]);
            return Err(CommandError::new(
                "signature_invalid",
                format!("the Ed25519 signature does not match the file at {url} and `model_update.public_key`"),
            ));
        }
    }
    if let Err(e) = std::fs::rename(&partial, &onnx) {
        cleanup(&[&partial]);
        return Err(CommandError::new("internal", format!("cannot move the download to {}: {e}", onnx.display())));
    }
    let manifest_text = match new_manifest_text(current_manifest, &onnx, expected_sha256, url) {
        Ok(text) => text,
        Err(e) => {
            cleanup(&[&onnx]);
            return Err(e);
        }
    };
    if let Err(e) = write_atomically(&manifest_path, manifest_text.as_bytes()) {
        cleanup(&[&onnx]);
        return Err(CommandError::new("internal", format!("cannot write {}: {e}", manifest_path.display())));
    }
    let model_config = ModelConfig { manifest: manifest_path.clone(), score_threshold, class_thresholds };
    let mut model = match Model::load_with(&model_config, inference) {
        Ok(model) => model,
        Err(e) => {
            cleanup(&[&onnx, &manifest_path]);
            return Err(CommandError::new("load_failed", format!("the new model does not load: {e}; nothing changed")));
        }
    };
    if model.id().name != name {
        cleanup(&[&onnx, &manifest_path]);
        return Err(CommandError::new("load_failed", format!("the new manifest names model {:?}", model.id().name)));
    }
    let self_test = match self_test(&mut model, self_test_folder) {
        Ok(summary) => summary,
        Err(why) => {
            cleanup(&[&onnx, &manifest_path]);
            return Err(CommandError::new("self_test_failed", format!("{why}; nothing changed")));
        }
    };
    Ok(Prepared { model, manifest: manifest_path, self_test })
}

/// The current manifest with the new file, hash and provenance; labels stay where they were.
fn new_manifest_text(current: &Path, onnx: &Path, sha256: &str, url: &str) -> Result<String, CommandError> {
    let unreadable = |e: String| CommandError::new("internal", format!("manifest {}: {e}", current.display()));
    let text = std::fs::read_to_string(current).map_err(|e| unreadable(e.to_string()))?;
    let mut document: toml_edit::DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| unreadable(e.to_string()))?;
    let folder = current.parent().unwrap_or(Path::new("."));
    let labels = document.get("labels").and_then(|l| l.as_str()).map(|l| folder.join(l));
    document["file"] = toml_edit::value(onnx.display().to_string());
    document["sha256"] = toml_edit::value(sha256);
    if let Some(labels) = labels {
        document["labels"] = toml_edit::value(labels.display().to_string());
    }
    let provenance = document.get("provenance").and_then(|p| p.as_str()).unwrap_or_default().to_string();
    document["provenance"] = toml_edit::value(format!(
        "{provenance}; updated by the `model` command from {url} on {}",
        chrono::Utc::now().format("%Y-%m-%d")
    ));
    Ok(document.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_fails_probation_only_when_failures_are_many_and_the_majority() {
        let verdict = |ok, failed| probation_verdict(RunCounts { ok, failed });
        assert_eq!(verdict(0, 0), ProbationVerdict::Healthy);
        assert_eq!(verdict(0, 2), ProbationVerdict::Healthy, "two failures may be bad frames");
        assert_eq!(verdict(0, 3), ProbationVerdict::Failing);
        assert_eq!(verdict(10, 3), ProbationVerdict::Healthy);
        assert_eq!(verdict(3, 4), ProbationVerdict::Failing);
    }

    const HUNG: Duration = Duration::from_secs(30);

    #[test]
    fn downloaded_models_no_model_uses_are_deleted_and_the_one_in_use_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("models");
        std::fs::create_dir(&folder).unwrap();
        for name in ["nanodet-aaaa", "nanodet-bbbb"] {
            let text =
                std::fs::read_to_string(nanodet_manifest()).unwrap().replace("nanodet.onnx", &format!("{name}.onnx"));
            std::fs::write(folder.join(format!("{name}.toml")), text).unwrap();
            std::fs::write(folder.join(format!("{name}.onnx")), b"weights").unwrap();
        }
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "state_dir = {:?}\n[[models]]\nmanifest = \"models/nanodet-bbbb.toml\"\n[[cameras]]\nid = \"c\"\nsource = {{ kind = \"replay\", path = \"x\" }}\n",
                dir.path().display().to_string()
            ),
        )
        .unwrap();
        let config = crate::config::Config::load(&path).unwrap();
        let deleted = prune_unused_models(dir.path(), &config);
        assert_eq!(deleted.len(), 2, "{deleted:?}");
        assert!(!folder.join("nanodet-aaaa.onnx").exists() && !folder.join("nanodet-aaaa.toml").exists());
        assert!(folder.join("nanodet-bbbb.onnx").exists() && folder.join("nanodet-bbbb.toml").exists());
    }

    #[tokio::test]
    async fn a_frame_that_never_ends_during_probation_is_a_hung_model() {
        let runs = ModelRuns::default();
        let (_trigger, mut shutdown) = crate::base::shutdown::channel();
        runs.record("nanodet", true);
        runs.frame_started();
        let outcome =
            watch_probation(&runs, "nanodet", Duration::from_secs(5), Duration::from_millis(700), &mut shutdown).await;
        let ProbationOutcome::Hung(busy) = outcome else { panic!("not hung: {outcome:?}") };
        assert!(busy >= Duration::from_millis(700));
    }

    #[test]
    fn a_switch_left_pending_is_rolled_back_in_the_config_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let old = nanodet_manifest();
        let new = dir.path().join("nanodet-new.toml");
        std::fs::copy(&old, &new).unwrap();
        for file in ["nanodet.onnx", "coco_labels.txt"] {
            std::os::unix::fs::symlink(old.with_file_name(file), dir.path().join(file)).unwrap();
        }
        let path = dir.path().join("agent.toml");
        let text = |manifest: &Path| {
            format!(
                "state_dir = \"state\"\n[[models]]\nmanifest = {:?}\n[[cameras]]\nid = \"yard\"\nsource = {{ kind = \"replay\", path = \"x\" }}\n",
                manifest.display().to_string()
            )
        };
        std::fs::write(&path, text(&new)).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(roll_back_unconfirmed_switch(&path, &config).unwrap(), None, "nothing pending");
        let pending = PendingSwitch {
            index: 0,
            name: "nanodet".into(),
            previous_manifest: old.clone(),
            new_manifest: new.clone(),
            switched_at: chrono::Utc::now(),
            classifier: None,
        };
        pending.save(&state).unwrap();
        let note = roll_back_unconfirmed_switch(&path, &config).unwrap().expect("rolled back");
        assert!(note.contains("never finished its probation"), "{note}");
        assert_eq!(Config::load(&path).unwrap().models[0].manifest, old);
        assert!(!state.join(PENDING_SWITCH_FILE).exists(), "cleared once done");
    }

    #[tokio::test]
    async fn probation_notices_a_failing_model_and_lets_a_working_one_pass() {
        let runs = ModelRuns::default();
        let (_trigger, mut shutdown) = crate::base::shutdown::channel();
        runs.record("nanodet", false); // before the switch: not counted
        for _ in 0..5 {
            runs.record("nanodet", true);
        }
        // Runs before the switch do not count: without runs of its own, time alone passes nothing.
        let idle = watch_probation(&runs, "nanodet", Duration::from_millis(300), HUNG, &mut shutdown).await;
        assert_eq!(idle, ProbationOutcome::TooFewRuns(RunCounts { ok: 0, failed: 0 }));
        let working = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for _ in 0..3 {
                runs.record("nanodet", true);
            }
        };
        let (verdict, ()) =
            tokio::join!(watch_probation(&runs, "nanodet", Duration::from_millis(600), HUNG, &mut shutdown), working);
        assert_eq!(verdict, ProbationOutcome::Passed(RunCounts { ok: 3, failed: 0 }));
        let failing = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for _ in 0..4 {
                runs.record("nanodet", false);
            }
        };
        let (verdict, ()) =
            tokio::join!(watch_probation(&runs, "nanodet", Duration::from_secs(5), HUNG, &mut shutdown), failing);
        assert_eq!(verdict, ProbationOutcome::Failed(RunCounts { ok: 0, failed: 4 }));
    }

    fn nanodet_manifest() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/nanodet.toml")
    }

    #[test]
    fn the_real_detector_passes_the_self_test_on_the_samples() {
        let config =
            ModelConfig { manifest: nanodet_manifest(), score_threshold: None, class_thresholds: Default::default() };
        let mut model = Model::load(&config, crate::config::BackendKind::Tract).unwrap();
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples");
        let summary = self_test(&mut model, &samples).unwrap();
        assert_eq!(summary["pictures"], 3);
        assert!(summary["findings"].as_u64().unwrap() > 0, "{summary}");
    }

    /// A backend that returns garbage: the double beside the real detector's self-test above.
    struct GarbageBackend;
    impl crate::infer::Backend for GarbageBackend {
        fn name(&self) -> &'static str {
            "garbage"
        }
        fn execution_provider(&self) -> String {
            "cpu".into()
        }
        fn run(
            &mut self,
            _input: &[f32],
            _shape: &[usize],
            outputs: &mut Vec<crate::infer::Output>,
        ) -> Result<(), crate::infer::InferError> {
            *outputs = vec![crate::infer::Output { name: "x".into(), shape: vec![1, 3], data: vec![f32::NAN; 3] }];
            Ok(())
        }
    }

    #[test]
    fn a_model_with_nonsense_output_fails_the_self_test() {
        let verified = crate::infer::manifest::Manifest::load(&nanodet_manifest()).unwrap().verify().unwrap();
        let mut model = Model::with_backend(verified, Box::new(GarbageBackend), None);
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples");
        let err = self_test(&mut model, &samples).unwrap_err();
        assert!(err.contains("coffee.png"), "{err}");
    }

    /// The double for a new model that loads and passes its self-test but fails once running;
    /// beside the real detector above and the real worker, camera and config below.
    struct FailingBackend;
    impl crate::infer::Backend for FailingBackend {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn execution_provider(&self) -> String {
            "cpu".into()
        }
        fn run(
            &mut self,
            _input: &[f32],
            _shape: &[usize],
            _outputs: &mut Vec<crate::infer::Output>,
        ) -> Result<(), crate::infer::InferError> {
            Err(crate::infer::InferError::Run {
                backend: "failing",
                message: "out of memory on the accelerator".into(),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_failing_in_its_first_minutes_is_rolled_back_to_the_previous_one() {
        use crate::config::Config;
        use crate::infer::control::WorkerControls;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples");
        std::fs::write(
            &path,
            format!(
                "[[models]]\nmanifest = \"{}\"\n\n[[cameras]]\nid = \"yard\"\nsource = {{ kind = \"replay\", path = \"{}\", fps = 10.0 }}\n",
                nanodet_manifest().display(),
                samples.display()
            ),
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let (trigger, shutdown) = crate::base::shutdown::channel();
        // The real pipeline front: a replay camera and the inference worker with the real detector.
        let liveness = crate::base::liveness::Liveness::default();
        let (feeds, new_frame) = crate::source::start_cameras(&config.cameras, None, &liveness, &shutdown);
        let models = crate::infer::load_models(&config.models, &config.inference).unwrap();
        let board = Arc::new(crate::delivery::board::StatusBoard::new("box".into(), Vec::new()));
        board.set_models(models.iter().map(Model::info).collect());
        let (worker, model_runs, controls) = WorkerControls::channel();
        let (inferred_tx, mut inferred_rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(crate::infer::worker::run_inference(
            models,
            feeds,
            new_frame,
            inferred_tx,
            liveness.register("inference"),
            shutdown.clone(),
            controls,
        ));
        tokio::spawn(async move { while inferred_rx.recv().await.is_some() {} });
        let settings = crate::control::settings::LiveSettings::new(
            crate::control::config_store::ConfigStore::new(Some(path.clone()), config.clone()),
            board.clone(),
            tokio::sync::watch::channel(Arc::new(config.judge_settings())).0,
            worker,
            tokio::sync::mpsc::channel(1).0,
            Default::default(),
        );
        let handler = CommandHandler {
            device_id: "box".into(),
            authority: crate::control::authority::Authority::new("box", &Default::default(), dir.path()).unwrap(),
            topic_prefix: "edge".into(),
            state_dir: dir.path().join("state"),
            inference: crate::config::InferenceConfig::default(),
            settings: Arc::new(settings),
            board: board.clone(),
            outbox: Arc::new(crate::delivery::outbox::Outbox::open(&dir.path().join("state/outbox.redb")).unwrap()),
            publisher_wake: Default::default(),
            status_changed: Default::default(),
            model_runs: model_runs.clone(),
            model_update_busy: Default::default(),
        };
        let previous_info = board.snapshot().models[0].clone();

        // Switch in the new model as `model` does: worker first, then the config file.
        let verified = crate::infer::manifest::Manifest::load(&nanodet_manifest()).unwrap().verify().unwrap();
        let failing = Model::with_backend(verified, Box::new(FailingBackend), None);
        let old_model = handler.swap_in(failing).await.unwrap();
        let new_manifest = dir.path().join("nanodet-new.toml");
        std::fs::copy(nanodet_manifest(), &new_manifest).unwrap();
        for file in ["nanodet.onnx", "coco_labels.txt"] {
            std::os::unix::fs::symlink(nanodet_manifest().with_file_name(file), dir.path().join(file)).unwrap();
        }
        handler.settings.store().set_model_manifest(0, &new_manifest).unwrap();
        let switched = Switched {
            index: 0,
            old_model,
            previous_info: previous_info.clone(),
            previous_manifest: nanodet_manifest(),
            new_manifest,
            self_test: json!({}),
        };
        let outcome = handler.probation(switched, "nanodet", Duration::from_secs(30), &mut shutdown.clone()).await;
        let Probation::RolledBack(why) = outcome else { panic!("not rolled back: {outcome:?}") };
        assert!(why.contains("failed") && why.contains(&previous_info.sha256), "{why}");

        // The previous model runs again, and the config file points at it again.
        let ok_after_rollback = model_runs.get("nanodet").ok;
        let mut recovered = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if model_runs.get("nanodet").ok > ok_after_rollback {
                recovered = true;
                break;
            }
        }
        assert!(recovered, "the previous model does not run after the roll-back");
        assert_eq!(handler.settings.store().current().models[0].manifest, nanodet_manifest());
        assert!(std::fs::read_to_string(&path).unwrap().contains(&nanodet_manifest().display().to_string()));
        assert_eq!(board.snapshot().models[0].backend, "tract");
        trigger.trigger();
    }

    #[test]
    fn the_new_manifest_points_at_the_new_file_and_keeps_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("nanodet-abc.onnx");
        let text = new_manifest_text(&nanodet_manifest(), &onnx, &"ab".repeat(32), "http://h/m.onnx").unwrap();
        let manifest: toml::Table = text.parse().unwrap();
        assert_eq!(manifest["file"].as_str(), Some(onnx.to_str().unwrap()));
        assert_eq!(manifest["sha256"].as_str(), Some("ab".repeat(32).as_str()));
        assert!(Path::new(manifest["labels"].as_str().unwrap()).is_file());
        assert_eq!(manifest["name"].as_str(), Some("nanodet"));
    }
}
