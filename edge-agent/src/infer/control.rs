//! The inference worker's control channel: switch a model atomically between two frames (the
//! `model` command and its roll-back), change a model's score threshold (the `set` command), or
//! run the models once on a camera's newest frame for the installer (the web page's "test the
//! models"), and per-model run counts, so a new model's first minutes can be judged.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use super::{InferredFrame, Model};

/// Requests the worker handles between two frames.
pub enum WorkerControl {
    /// Replace the model with the same name; the reply carries the replaced model back (kept for a
    /// roll-back), or the offered one when no model has that name.
    SwapModel { model: Box<Model>, reply: oneshot::Sender<Result<Box<Model>, Box<Model>>> },
    /// None returns to the manifest's threshold.
    SetScoreThreshold { model: String, threshold: Option<f32> },
    /// Run every model on the newest frame of a camera and answer with what they found; nothing
    /// goes on to the judge, so no event comes of it.
    TestModels(ModelTestRequest),
}

/// The installer's "test the models on the current frame": the worker owns the models, so it runs
/// them between two frames rather than a second copy being loaded into memory.
pub struct ModelTestRequest {
    pub camera: String,
    pub reply: oneshot::Sender<Result<ModelTestRun, String>>,
}

/// What the models found on the frame, and the models that failed on it (name, error).
pub struct ModelTestRun {
    pub inferred: InferredFrame,
    pub failures: Vec<(String, String)>,
}

/// Successful and failed inferences per model name since start, and since when the worker has
/// been busy with its current frame (a model that hangs shows as a frame that never ends).
#[derive(Debug, Default)]
pub struct ModelRuns {
    counts: Mutex<HashMap<String, RunCounts>>,
    busy_since: Mutex<Option<std::time::Instant>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunCounts {
    pub ok: u64,
    pub failed: u64,
}

impl ModelRuns {
    pub fn record(&self, model: &str, ok: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts.entry(model.to_string()).or_default();
        if ok {
            entry.ok += 1;
        } else {
            entry.failed += 1;
        }
    }

    /// The worker starts running the models on a frame.
    pub fn frame_started(&self) {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }

    /// The worker is done with the frame (whatever the outcome).
    pub fn frame_ended(&self) {
        *self.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// How long the frame in progress has been running, if one is.
    pub fn busy_for(&self) -> Option<std::time::Duration> {
        self.busy_since.lock().unwrap_or_else(|p| p.into_inner()).map(|since| since.elapsed())
    }

    pub fn get(&self, model: &str) -> RunCounts {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(model).copied().unwrap_or_default()
    }
}

/// The worker's end of the control channel.
pub struct WorkerControls {
    pub requests: mpsc::Receiver<WorkerControl>,
    pub runs: std::sync::Arc<ModelRuns>,
}

impl WorkerControls {
    /// A channel pair: the sender for commands, the receiving end for the worker.
    pub fn channel() -> (mpsc::Sender<WorkerControl>, std::sync::Arc<ModelRuns>, Self) {
        let (sender, requests) = mpsc::channel(8);
        let runs = std::sync::Arc::new(ModelRuns::default());
        (sender, runs.clone(), Self { requests, runs })
    }

    /// Handles every waiting request; called by the worker between frames. Model tests need a
    /// frame and the blocking pool, so they come back for the worker to run.
    pub fn apply_pending(&mut self, models: &mut [Model]) -> Vec<ModelTestRequest> {
        let mut tests = Vec::new();
        while let Ok(request) = self.requests.try_recv() {
            tests.extend(apply(request, models));
        }
        tests
    }
}

/// Applies a switch or a threshold at once; returns a model test for the worker to run.
pub fn apply(request: WorkerControl, models: &mut [Model]) -> Option<ModelTestRequest> {
    match request {
        WorkerControl::SwapModel { model, reply } => {
            let name = model.id().name.clone();
            let outcome = match models.iter_mut().find(|m| m.id().name == name) {
                Some(slot) => {
                    // The slot's people finder stays: privacy is the config file's, not the model's.
                    let mut model = model;
                    model.set_people(slot.people().clone());
                    let old = std::mem::replace(slot, *model);
                    tracing::info!(model = %name, sha256 = %slot.id().sha256, "model switched");
                    Ok(Box::new(old))
                }
                None => Err(model),
            };
            let _ = reply.send(outcome);
        }
        WorkerControl::SetScoreThreshold { model, threshold } => {
            if let Some(slot) = models.iter_mut().find(|m| m.id().name == model) {
                slot.set_score_threshold(threshold);
            }
        }
        WorkerControl::TestModels(test) => return Some(test),
    }
    None
}
