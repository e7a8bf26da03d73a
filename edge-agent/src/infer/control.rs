//! The inference worker's control channel: switch a model atomically between two frames (the
//! `model` command and its roll-back) or change a model's score threshold (the `set` command),
//! and per-model run counts, so a new model's first minutes can be judged.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use super::Model;

/// Requests the worker handles between two frames.
pub enum WorkerControl {
    /// Replace the model with the same name; the reply carries the replaced model back (kept for a
    /// roll-back), or the offered one when no model has that name.
    SwapModel { model: Box<Model>, reply: oneshot::Sender<Result<Box<Model>, Box<Model>>> },
    /// None returns to the manifest's threshold.
    SetScoreThreshold { model: String, threshold: Option<f32> },
}

/// Successful and failed inferences per model name since start.
#[derive(Debug, Default)]
pub struct ModelRuns {
    counts: Mutex<HashMap<String, RunCounts>>,
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

    /// Handles every waiting request; called by the worker between frames.
    pub fn apply_pending(&mut self, models: &mut [Model]) {
        while let Ok(request) = self.requests.try_recv() {
            apply(request, models);
        }
    }
}

pub fn apply(request: WorkerControl, models: &mut [Model]) {
    match request {
        WorkerControl::SwapModel { model, reply } => {
            let name = model.id().name.clone();
            let outcome = match models.iter_mut().find(|m| m.id().name == name) {
                Some(slot) => {
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
    }
}
