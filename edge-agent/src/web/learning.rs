//! The installer page's "the box learns its site": an admin trains a site head on the site's
//! labelled samples (the same `learn` as the command line, in the background with its progress),
//! reads its held-out figures and report pictures, and deploys it into a classifier slot through
//! [`SiteHeads`] (self-test, switch, probation, roll-back). One training at a time; each writes a
//! new folder under `state_dir/learned/`, and folders no slot uses are deleted after the next one.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::error;
use super::auth::Admin;
use super::extract::{json_body, ApiPath};
use super::WebState;
use crate::config::Config;
use crate::control::commands::CommandError;
use crate::control::switch::{slot_manifest, PENDING_SWITCH_FILE};
use crate::infer::manifest::{LearnedSpec, Manifest};
use crate::judge::control::ClassifierSlot;
use crate::ops::calibrate::labelling::SampleSetPaths;
use crate::ops::calibrate::samples::SampleSet;
use crate::ops::learn::labelled_crops;
use crate::ops::learn::run::{learn_site, Request};
use crate::ops::learn::train::{check_counts, TrainOptions};

/// The report files the page may fetch of the last training.
const REPORT_FILES: [&str; 5] =
    ["summary.md", "summary.json", "scores.svg", "confusion.svg", "confusion-imagenet-mapping.svg"];
const DEFAULT_HELD_OUT: f64 = 0.25;
const DEFAULT_SEED: u64 = 1;

/// A training in progress.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub done: usize,
    pub total: usize,
    pub file: String,
}

/// How the last training ended.
#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    pub name: String,
    pub finished_at: DateTime<Utc>,
    /// The written model's manifest (None when it failed).
    pub manifest: Option<PathBuf>,
    pub sha256: Option<String>,
    pub learned: Option<LearnedSpec>,
    /// The report's summary (Markdown).
    pub summary: Option<String>,
    pub error: Option<String>,
    #[serde(skip)]
    pub report_dir: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct Learning {
    running: Mutex<Option<Progress>>,
    last: Mutex<Option<Trained>>,
}

impl Learning {
    fn running(&self) -> Option<Progress> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn last(&self) -> Option<Trained> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Ends the training in progress when dropped.
struct ClearWhenDone<'a>(&'a Learning);

impl Drop for ClearWhenDone<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// The new model's name (letters, digits, `_`, `-`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Learn only rows with these labels (e.g. the four categories); empty: every label.
    #[serde(default)]
    pub labels: Vec<String>,
}

fn default_name() -> String {
    "site_garbage".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// `taxonomy`, `overflow_state` or `truck_cover`.
    pub slot: String,
}

/// `GET /api/v1/learn`: the sample set's counts, a training in progress, the last one's figures,
/// each slot's classifier and the last deployment.
pub async fn status(State(state): State<Arc<WebState>>) -> Response {
    let config = state.settings.current();
    let samples = tokio::task::spawn_blocking({
        let config = config.clone();
        move || sample_counts(&config)
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let slots: Vec<_> = ClassifierSlot::ALL
        .into_iter()
        .map(
            |slot| json!({ "slot": slot.name(), "key": slot.manifest_key(), "manifest": slot_manifest(&config, slot) }),
        )
        .collect();
    Json(json!({
        "samples": match samples {
            Ok((folder, counts)) => json!({ "folder": folder, "counts": counts }),
            Err(e) => json!({ "error": e }),
        },
        "running": state.learning.running(),
        "last": state.learning.last(),
        "slots": slots,
        "deployment": state.heads.last(),
    }))
    .into_response()
}

/// `POST /api/v1/learn` (admins): starts training on the site's samples; 202 at once, progress on
/// `GET /api/v1/learn`. Too few crops or one class are refused here, before anything runs.
pub async fn train(State(state): State<Arc<WebState>>, Admin(session): Admin, body: Bytes) -> Response {
    let shape = "{\"name\": \"site_garbage\", \"labels\": [..]}";
    let request: TrainRequest = match json_body(if body.is_empty() { b"{}" } else { &body }, shape) {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    if request.name.is_empty()
        || request.name.len() > 64
        || !request.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body's `name` is not accepted; expected 1 to 64 letters, digits, '_' or '-' (it names the model's files)",
        );
    }
    let config = state.settings.current();
    let set = match tokio::task::spawn_blocking({
        let config = config.clone();
        let labels = request.labels.clone();
        move || open_samples(&config, &labels)
    })
    .await
    {
        Ok(Ok(set)) => set,
        Ok(Err(why)) => return error(StatusCode::UNPROCESSABLE_ENTITY, "samples_unusable", why),
        Err(e) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("reading the samples failed: {e}"))
        }
    };
    let labels: Vec<String> = labelled_crops(&set).into_iter().map(|c| c.label).collect();
    if let Err(refused) = check_counts(&labels) {
        let file = set.labels_file.display();
        return error(StatusCode::UNPROCESSABLE_ENTITY, "samples_unusable", format!("{file}: {refused}"));
    }
    let started_at = Utc::now();
    {
        let mut running = state.learning.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return error(StatusCode::CONFLICT, "busy", "a training is already running; wait for it to finish");
        }
        *running = Some(Progress {
            name: request.name.clone(),
            started_at,
            done: 0,
            total: labels.len(),
            file: String::new(),
        });
    }
    let out = state.state_dir.join("learned").join(format!("{}-{}", request.name, started_at.format("%Y%m%dT%H%M%SZ")));
    tracing::info!(user = %session.user, name = %request.name, crops = labels.len(), out = %out.display(), "training a site head");
    let (learning, name) = (state.clone(), request.name.clone());
    tokio::task::spawn_blocking(move || {
        // Whatever happens (a panic in training too), the next training may start.
        let _running = ClearWhenDone(&learning.learning);
        let outcome = train_blocking(&learning, &config, &set, &name, &out);
        let trained = match outcome {
            Ok(trained) => trained,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&out);
                tracing::error!(name = %name, "site head training failed: {e}");
                Trained {
                    name: name.clone(),
                    finished_at: Utc::now(),
                    manifest: None,
                    sha256: None,
                    learned: None,
                    summary: None,
                    error: Some(e),
                    report_dir: None,
                }
            }
        };
        if trained.error.is_none() {
            prune_learned(&learning.state_dir.join("learned"), &out, &learning.settings.current());
        }
        *learning.learning.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(trained);
    });
    (StatusCode::ACCEPTED, Json(json!({ "started": true, "name": request.name, "crops": labels.len() })))
        .into_response()
}

fn train_blocking(
    state: &WebState,
    config: &Config,
    set: &SampleSet,
    name: &str,
    out: &FsPath,
) -> Result<Trained, String> {
    let backbone = backbone_of(&config.taxonomy.classifier);
    let request = Request {
        set,
        backbone: &backbone,
        inference: &config.inference,
        taxonomy: &config.taxonomy,
        out,
        name,
        held_out_share: DEFAULT_HELD_OUT,
        seed: DEFAULT_SEED,
        options: TrainOptions::default(),
    };
    let learnt = learn_site(&request, |crop| {
        if let Some(progress) = state.learning.running.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            progress.done += 1;
            progress.file = crop.file.clone();
        }
    })
    .map_err(|e| e.to_string())?;
    let manifest = Manifest::load(&learnt.written.manifest).map_err(|e| e.to_string())?;
    Ok(Trained {
        name: name.to_string(),
        finished_at: Utc::now(),
        manifest: Some(learnt.written.manifest.clone()),
        sha256: Some(learnt.written.sha256.clone()),
        learned: manifest.learned,
        summary: Some(learnt.summary),
        error: None,
        report_dir: Some(learnt.report_dir),
    })
}

/// The backbone to learn from: the taxonomy classifier, or when that is itself a site head the
/// shipped backbone it was trained on (`models/<backbone>.toml`), so heads are never stacked.
fn backbone_of(classifier: &FsPath) -> PathBuf {
    match Manifest::load(classifier).ok().and_then(|m| m.learned) {
        Some(learned) => crate::base::section::data_dir().join("models").join(format!("{}.toml", learned.backbone)),
        None => classifier.to_owned(),
    }
}

/// The site's sample set, only rows whose label is in `labels` when any are given.
fn open_samples(config: &Config, labels: &[String]) -> Result<SampleSet, String> {
    let paths = SampleSetPaths::of(config).map_err(|e| e.to_string())?;
    let mut set = SampleSet::open(&paths.folder, &paths.labels).map_err(|e| e.to_string())?;
    if !labels.is_empty() {
        for truths in set.truth.values_mut() {
            truths.retain(|t| labels.contains(&t.label));
        }
        set.truth.retain(|_, truths| !truths.is_empty());
    }
    Ok(set)
}

/// The sample folder and its crops per label.
fn sample_counts(config: &Config) -> Result<(PathBuf, BTreeMap<String, usize>), String> {
    let paths = SampleSetPaths::of(config).map_err(|e| e.to_string())?;
    if !paths.labels.exists() {
        return Ok((paths.folder, BTreeMap::new()));
    }
    let set = SampleSet::open(&paths.folder, &paths.labels).map_err(|e| e.to_string())?;
    let mut counts = BTreeMap::new();
    for crop in labelled_crops(&set) {
        *counts.entry(crop.label).or_default() += 1;
    }
    Ok((set.folder, counts))
}

/// Deletes training folders under `learned` that are neither `keep` nor used by a slot of `config`.
/// Nothing while a switch is on probation: its roll-back may need the head it replaced.
fn prune_learned(learned: &FsPath, keep: &FsPath, config: &Config) {
    if config.state_dir.join(PENDING_SWITCH_FILE).exists() {
        return;
    }
    let in_use: Vec<PathBuf> = ClassifierSlot::ALL
        .into_iter()
        .filter_map(|slot| slot_manifest(config, slot))
        .filter_map(|manifest| manifest.parent().and_then(|p| p.canonicalize().ok()))
        .collect();
    let keep = keep.canonicalize().ok();
    let Ok(entries) = std::fs::read_dir(learned) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(canonical) = path.canonicalize() else { continue };
        if Some(&canonical) == keep.as_ref() || in_use.contains(&canonical) || !path.is_dir() {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(folder = %path.display(), "deleted a site head no slot uses"),
            Err(e) => tracing::warn!(folder = %path.display(), "cannot delete an unused site head: {e}"),
        }
    }
}

/// `POST /api/v1/learn/deploy` (admins): deploys the last trained head into `slot`; answers once
/// it is switched in (probation then runs: `GET /api/v1/learn`).
pub async fn deploy(State(state): State<Arc<WebState>>, Admin(session): Admin, body: Bytes) -> Response {
    let request: DeployRequest = match json_body(&body, "{\"slot\": \"taxonomy\"}") {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    let Some(slot) = ClassifierSlot::from_name(&request.slot) else {
        let names: Vec<&str> = ClassifierSlot::ALL.iter().map(|s| s.name()).collect();
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body's `slot` is not accepted; expected one of {}", names.join(", ")),
        );
    };
    let Some(manifest) = state.learning.last().and_then(|t| t.manifest) else {
        let message = "no site head has been trained since the agent started; train one first";
        return error(StatusCode::CONFLICT, "not_trained", message);
    };
    tracing::info!(user = %session.user, slot = slot.manifest_key(), manifest = %manifest.display(), "deploying a site head");
    match state.heads.deploy(slot, &manifest, state.shutdown.clone()).await {
        Ok(deployment) => Json(json!(deployment)).into_response(),
        Err(e) => deploy_error(e),
    }
}

fn deploy_error(e: CommandError) -> Response {
    let status = match e.code {
        "busy" | "no_config_file" => StatusCode::CONFLICT,
        "internal" | "state_unwritable" | "config_file_error" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, Json(json!({ "code": e.code, "message": e.message }))).into_response()
}

/// `GET /api/v1/learn/report/{file}`: a file of the last training's report folder.
pub async fn report(State(state): State<Arc<WebState>>, ApiPath(file): ApiPath<String>) -> Response {
    if !REPORT_FILES.contains(&file.as_str()) {
        let message = format!("no such report file; expected one of {}", REPORT_FILES.join(", "));
        return error(StatusCode::NOT_FOUND, "no_such_file", message);
    }
    let Some(folder) = state.learning.last().and_then(|t| t.report_dir) else {
        return error(StatusCode::NOT_FOUND, "not_trained", "no site head has been trained since the agent started");
    };
    let content_type = match file.rsplit('.').next() {
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "text/markdown; charset=utf-8",
    };
    match tokio::fs::read(folder.join(&file)).await {
        Ok(bytes) => {
            ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-store")], bytes).into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, "no_such_file", format!("the last training wrote no {file}"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("cannot read {file}: {}", e.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_trainings_are_deleted_unless_a_slot_uses_them_or_a_switch_is_on_probation() {
        let dir = tempfile::tempdir().unwrap();
        let learned = dir.path().join("learned");
        for run in ["a-1", "b-2", "c-3"] {
            std::fs::create_dir_all(learned.join(run)).unwrap();
            std::fs::write(learned.join(run).join("head.toml"), "x").unwrap();
        }
        let mut config = Config::embedded_defaults();
        config.state_dir = dir.path().to_owned();
        config.taxonomy.classifier = learned.join("b-2/head.toml");

        // A switch on probation may roll back to any of them: nothing goes.
        std::fs::write(dir.path().join(PENDING_SWITCH_FILE), "{}").unwrap();
        prune_learned(&learned, &learned.join("c-3"), &config);
        assert!(learned.join("a-1").exists() && learned.join("b-2").exists());

        std::fs::remove_file(dir.path().join(PENDING_SWITCH_FILE)).unwrap();
        prune_learned(&learned, &learned.join("c-3"), &config);
        assert!(!learned.join("a-1").exists(), "used by nothing");
        assert!(learned.join("b-2").exists(), "the taxonomy classifier");
        assert!(learned.join("c-3").exists(), "the newest training");
    }
}
