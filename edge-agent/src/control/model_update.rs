//! The `model` command: replace a configured model with a new file from the platform.
//!
//! Download (HTTP/HTTPS, size-capped) → sha256 must match → Ed25519 signature over the file bytes
//! (when given or required) → manifest copy with the new file and hash → load and check against
//! the manifest → the switch (`switch.rs`: self-test, swap in the inference worker between two
//! frames, config, probation, roll-back). Every refusal before the switch leaves the agent exactly
//! as it was.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::commands::{parse_request, CommandError, CommandHandler};
use super::settings::LiveSettings;
use super::switch::{
    self_test, watch_probation, PendingSwitch, ProbationOutcome, Stage, SwitchTarget, Switched, PROBATION_EXTENSION,
    PROBATION_MIN_RUNS,
};
use crate::base::ed25519::decode_key_material;
use crate::base::shutdown::Shutdown;
use crate::base::write_file::write_atomically;
use crate::config::{Config, InferenceConfig, ModelConfig};
use crate::delivery::mqtt::IncomingCommand;
use crate::infer::control::WorkerControl;
use crate::infer::{Model, ModelInfo};

const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// One frame running this long means the model hangs.
const PROBATION_HUNG_AFTER: Duration = Duration::from_secs(30);

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

/// The inference worker, as the stage a model switch swaps a model in.
struct Worker<'a>(&'a LiveSettings);

impl Stage for Worker<'_> {
    type Part = Box<Model>;

    async fn swap_in(&self, model: Box<Model>) -> Result<Box<Model>, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .worker()
            .send(WorkerControl::SwapModel { model, reply })
            .await
            .map_err(|_| CommandError::new("internal", "the inference worker has stopped"))?;
        match answer.await {
            Ok(Ok(old)) => Ok(old),
            Ok(Err(_)) => Err(CommandError::new("unknown_target", "the inference worker runs no model of that name")),
            Err(_) => Err(CommandError::new("internal", "the inference worker did not answer")),
        }
    }
}

/// A model the `model` command is to fetch, checked against the request and the config; prepared
/// (blocking) into a loaded, self-tested model.
struct NewModel {
    name: String,
    url: String,
    /// Lowercase hex.
    sha256: String,
    signature: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    /// The entry it replaces: the new manifest copies its manifest, the new model keeps its
    /// thresholds (the site's calibration).
    current: ModelConfig,
    /// `state_dir/models`.
    folder: PathBuf,
    max_bytes: u64,
    self_test_folder: PathBuf,
    inference: InferenceConfig,
}

/// A model prepared for switching: loaded, self-tested, with its manifest on disk.
struct Prepared {
    model: Model,
    manifest: PathBuf,
    self_test: Value,
}

/// A model switched in, on probation.
struct ModelSwitch {
    switched: Switched<Box<Model>>,
    previous_info: ModelInfo,
    self_test: Value,
}

/// How a new model's first minutes ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probation {
    Confirmed,
    /// With the reason, for the ack.
    RolledBack(String),
    Interrupted,
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
        let switch = match outcome {
            Ok(switch) => switch,
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
                "previous_sha256": switch.previous_info.sha256,
                "manifest": switch.switched.pending.new_manifest,
                "self_test": switch.self_test,
                "probation_seconds": probation.as_secs(),
            })),
        );
        match self.probation(switch, &request.name, probation, &mut shutdown).await {
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
        switch: ModelSwitch,
        name: &str,
        duration: Duration,
        shutdown: &mut Shutdown,
    ) -> Probation {
        let ModelSwitch { switched, previous_info, .. } = switch;
        let baseline = self.model_runs.get(name);
        let outcome = watch_probation(&self.model_runs, name, baseline, duration, PROBATION_HUNG_AFTER, shutdown).await;
        let why = match outcome {
            ProbationOutcome::Interrupted => return Probation::Interrupted,
            ProbationOutcome::Passed(_) => {
                switched.confirm(&self.state_dir);
                prune_unused_models(&self.state_dir, &self.settings.store().current());
                return Probation::Confirmed;
            }
            ProbationOutcome::Hung(busy) => {
                let why = format!(
                    "the new model has been running one frame for {} s: it hangs; the watchdog restarts the agent \
                     and the start rolls back to the previous model (sha256 {})",
                    busy.as_secs(),
                    previous_info.sha256
                );
                tracing::error!(model = %name, "{why}");
                return Probation::RolledBack(why);
            }
            ProbationOutcome::Failed(counts) => format!(
                "the new model failed {} of {} runs during its probation; the previous model (sha256 {}) is back",
                counts.failed,
                counts.ok + counts.failed,
                previous_info.sha256
            ),
            ProbationOutcome::TooFewRuns(counts) => format!(
                "the new model ran successfully only {} times in {} s (it needs {PROBATION_MIN_RUNS}); the previous \
                 model (sha256 {}) is back",
                counts.ok,
                (duration * PROBATION_EXTENSION).as_secs(),
                previous_info.sha256
            ),
        };
        tracing::error!(model = %name, "{why}");
        let swapped_back = || self.replace_model_info(previous_info);
        match switched.roll_back(&Worker(&self.settings), self.settings.store(), &self.state_dir, swapped_back).await {
            Ok(()) => Probation::RolledBack(why),
            Err(e) => Probation::RolledBack(format!("{why}; but the roll-back failed: {e}")),
        }
    }

    /// Everything up to and including the switch; an error here has changed nothing.
    async fn switch_model(&self, request: &ModelRequest) -> Result<ModelSwitch, CommandError> {
        let config = self.settings.store().current();
        let (index, new_model) = self.check_request(request, &config)?;
        let previous_manifest = new_model.current.manifest.clone();
        let prepared = tokio::task::spawn_blocking(move || new_model.prepare())
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
        let pending = PendingSwitch {
            target: SwitchTarget::Model(index),
            name: request.name.clone(),
            previous_manifest,
            new_manifest: prepared.manifest,
            switched_at: chrono::Utc::now(),
        };
        let worker = Worker(&self.settings);
        let new = Box::new(prepared.model);
        let switched = pending.switch_in(&worker, new, self.settings.store(), &self.state_dir).await?;
        self.replace_model_info(new_info.clone());
        tracing::info!(model = %request.name, sha256 = %new_info.sha256, previous = %previous_info.sha256, "model updated");
        Ok(ModelSwitch { switched, previous_info, self_test: prepared.self_test })
    }

    /// The request checked against the config and this box's signature policy: which `[[models]]`
    /// entry it replaces, and what to fetch.
    fn check_request(&self, request: &ModelRequest, config: &Config) -> Result<(usize, NewModel), CommandError> {
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
        let sha256 = request.sha256.to_lowercase();
        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CommandError::new("invalid_request", "`sha256` is not 64 hex digits"));
        }
        if !(request.url.starts_with("http://") || request.url.starts_with("https://")) {
            return Err(CommandError::new("invalid_request", "`url` is not an http:// or https:// URL"));
        }
        let policy = &config.model_update;
        let (signature, public_key) = signature_and_key(request, config)?;
        let current = config.models.get(index).cloned().ok_or_else(|| {
            CommandError::new("unknown_target", format!("model {:?} is not in the config", request.name))
        })?;
        let new_model = NewModel {
            name: request.name.clone(),
            url: request.url.clone(),
            sha256,
            signature,
            public_key,
            current,
            folder: self.state_dir.join("models"),
            max_bytes: policy.max_download_mb.saturating_mul(1024 * 1024),
            self_test_folder: policy.self_test_folder(),
            inference: self.inference.clone(),
        };
        Ok((index, new_model))
    }

    fn replace_model_info(&self, info: ModelInfo) {
        let mut models = self.board.snapshot().models;
        if let Some(slot) = models.iter_mut().find(|m| m.name == info.name) {
            *slot = info;
        }
        self.board.set_models(models);
        self.status_changed.notify_one();
    }
}

/// The request's signature and the key to check it with, as this box's policy wants them.
#[allow(clippy::type_complexity)]
fn signature_and_key(
    request: &ModelRequest,
    config: &Config,
) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), CommandError> {
    let policy = &config.model_update;
    let signature = match &request.signature {
        Some(text) => Some(
            decode_key_material(text, 64)
                .map_err(|e| CommandError::new("invalid_request", format!("`signature` {e}")))?,
        ),
        None if policy.signature_required() => {
            return Err(CommandError::new(
                "signature_required",
                "this box only accepts signed models (`model_update.public_key`); the request has no `signature`",
            ))
        }
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
    Ok((signature, public_key))
}

impl NewModel {
    /// Download, verify, write the manifest, load and self-test; blocking. Files of a refused model
    /// are removed again.
    fn prepare(self) -> Result<Prepared, CommandError> {
        crate::base::write_file::create_folder_durably(&self.folder)
            .map_err(|e| CommandError::new("internal", format!("cannot create {}: {e}", self.folder.display())))?;
        let stem = format!("{}-{}", self.name, &self.sha256[..12]);
        let onnx = self.folder.join(format!("{stem}.onnx"));
        let manifest = self.folder.join(format!("{stem}.toml"));
        self.fetch(&self.folder.join(format!(".{stem}.download")), &onnx)?;
        let written = new_manifest_text(&self.current.manifest, &onnx, &self.sha256, &self.url).and_then(|text| {
            write_atomically(&manifest, text.as_bytes())
                .map_err(|e| CommandError::new("internal", format!("cannot write {}: {e}", manifest.display())))
        });
        if let Err(e) = written {
            remove(&[&onnx]);
            return Err(e);
        }
        self.load(&manifest).inspect_err(|_| remove(&[&onnx, &manifest]))
    }

    /// Downloads the file to `partial`, checks its hash and signature and moves it to `onnx`;
    /// `partial` is removed on any refusal.
    fn fetch(&self, partial: &Path, onnx: &Path) -> Result<(), CommandError> {
        let fetched = self.download_checked(partial).and_then(|()| {
            std::fs::rename(partial, onnx).map_err(|e| {
                CommandError::new("internal", format!("cannot move the download to {}: {e}", onnx.display()))
            })
        });
        if fetched.is_err() {
            remove(&[partial]);
        }
        fetched
    }

    fn download_checked(&self, partial: &Path) -> Result<(), CommandError> {
        let (url, expected) = (&self.url, &self.sha256);
        let found = download(url, partial, self.max_bytes)?;
        if &found != expected {
            return Err(CommandError::new(
                "sha256_mismatch",
                format!("the file at {url} has sha256 {found}, but the command says {expected}; nothing changed"),
            ));
        }
        let Some(signature) = &self.signature else { return Ok(()) };
        let Some(key) = &self.public_key else {
            return Err(CommandError::new("signature_unverifiable", "no `model_update.public_key` configured"));
        };
        let bytes = std::fs::read(partial)
            .map_err(|e| CommandError::new("internal", format!("cannot read {}: {e}", partial.display())))?;
        if !crate::base::ed25519::verify(key, &bytes, signature) {
            return Err(CommandError::new(
                "signature_invalid",
                format!("the Ed25519 signature does not match the file at {url} and `model_update.public_key`"),
            ));
        }
        Ok(())
    }

    /// Loads the model of `manifest` with the thresholds of the one it replaces and self-tests it.
    fn load(&self, manifest: &Path) -> Result<Prepared, CommandError> {
        let config = ModelConfig { manifest: manifest.to_owned(), ..self.current.clone() };
        let mut model = Model::load_with(&config, &self.inference).map_err(|e| {
            CommandError::new("load_failed", format!("the new model does not load: {e}; nothing changed"))
        })?;
        if model.id().name != self.name {
            return Err(CommandError::new(
                "load_failed",
                format!("the new manifest names model {:?}", model.id().name),
            ));
        }
        let self_test = self_test(&mut model, &self.self_test_folder)
            .map_err(|why| CommandError::new("self_test_failed", format!("{why}; nothing changed")))?;
        Ok(Prepared { model, manifest: manifest.to_owned(), self_test })
    }
}

fn remove(paths: &[&Path]) {
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::switch::PENDING_SWITCH_FILE;

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

    fn nanodet_manifest() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/nanodet.toml")
    }

    /// The double for a new model that loads and passes its self-test but fails once running;
    /// beside the real detector, worker, camera and config below.
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
            None,
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
            authority: Arc::new(
                crate::control::authority::Authority::new("box", &Default::default(), dir.path()).unwrap(),
            ),
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
            refusals: Default::default(),
        };
        let previous_info = board.snapshot().models[0].clone();

        // Switch in the new model as `model` does: pending file, worker, then the config file.
        let verified = crate::infer::manifest::Manifest::load(&nanodet_manifest()).unwrap().verify().unwrap();
        let failing = Model::with_backend(verified, Box::new(FailingBackend), None);
        let new_manifest = dir.path().join("nanodet-new.toml");
        std::fs::copy(nanodet_manifest(), &new_manifest).unwrap();
        for file in ["nanodet.onnx", "coco_labels.txt"] {
            std::os::unix::fs::symlink(nanodet_manifest().with_file_name(file), dir.path().join(file)).unwrap();
        }
        let pending = PendingSwitch {
            target: SwitchTarget::Model(0),
            name: "nanodet".into(),
            previous_manifest: nanodet_manifest(),
            new_manifest,
            switched_at: chrono::Utc::now(),
        };
        let worker = Worker(&handler.settings);
        let store = handler.settings.store();
        let switched = pending.switch_in(&worker, Box::new(failing), store, &handler.state_dir).await.unwrap();
        assert!(handler.state_dir.join(PENDING_SWITCH_FILE).exists());
        let switch = ModelSwitch { switched, previous_info: previous_info.clone(), self_test: json!({}) };
        let outcome = handler.probation(switch, "nanodet", Duration::from_secs(30), &mut shutdown.clone()).await;
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
        assert!(!handler.state_dir.join(PENDING_SWITCH_FILE).exists(), "cleared once rolled back");
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
