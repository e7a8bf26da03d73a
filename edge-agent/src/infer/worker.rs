//! The infer stage's loop: takes the newest frame of each camera in turn and runs every model on it
//! off the async workers, then hands the [`InferredFrame`] to the judge stage.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::control::WorkerControls;
use super::{infer_frame, InferredFrame, Model};
use crate::shutdown::Shutdown;
use crate::source::CameraFeed;

/// Takes the newest frame of each camera in turn (round robin, so one busy camera cannot starve
/// another), runs every model on it off the async workers, and passes it on.
pub async fn run_inference(
    mut models: Vec<Model>,
    mut feeds: Vec<CameraFeed>,
    new_frame: Arc<Notify>,
    output: mpsc::Sender<InferredFrame>,
    mut shutdown: Shutdown,
    mut controls: WorkerControls,
) {
    let mut next_camera = 0;
    loop {
        if shutdown.is_triggered() {
            return;
        }
        // Model switches and thresholds take effect between two frames, never inside one.
        controls.apply_pending(&mut models);
        let count = feeds.len();
        let taken = (0..count).find_map(|step| {
            let index = (next_camera + step) % count;
            feeds[index].take_new().map(|frame| (index, frame))
        });
        let Some((index, frame)) = taken else {
            tokio::select! {
                _ = new_frame.notified() => continue,
                Some(request) = controls.requests.recv() => {
                    super::control::apply(request, &mut models);
                    continue;
                }
                _ = shutdown.wait() => return,
            }
        };
        next_camera = (index + 1) % count;
        let worked = tokio::task::spawn_blocking(move || {
            let outcome = infer_frame(&mut models, frame);
            (models, outcome)
        })
        .await;
        let (returned_models, (inferred, failures)) = match worked {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("inference task failed: {e}; stopping inference");
                return;
            }
        };
        models = returned_models;
        for result in &inferred.results {
            controls.runs.record(&result.model.name, true);
        }
        for (model, error) in failures {
            controls.runs.record(&model.name, false);
            tracing::error!(model = %model.name, camera = %feeds[index].id, "{error}");
        }
        feeds[index].health.frames_inferred.fetch_add(1, Ordering::Relaxed);
        if output.send(inferred).await.is_err() {
            return;
        }
    }
}
