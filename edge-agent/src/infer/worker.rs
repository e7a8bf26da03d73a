//! The infer stage's loop: takes the newest frame of each camera in turn and runs every model on it
//! off the async workers, then hands the [`InferredFrame`] to the judge stage.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::control::WorkerControls;
use super::{infer_frame, InferredFrame, Model};
use crate::liveness::Heartbeat;
use crate::shutdown::Shutdown;
use crate::source::CameraFeed;

/// Takes the newest frame of each camera in turn (round robin, so one busy camera cannot starve
/// another), runs every model on it off the async workers, and passes it on.
pub async fn run_inference(
    mut models: Vec<Model>,
    mut feeds: Vec<CameraFeed>,
    new_frame: Arc<Notify>,
    output: mpsc::Sender<InferredFrame>,
    heartbeat: Arc<Heartbeat>,
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
            // Waiting for a camera is idle, not hung; a hung camera has its own heartbeat.
            heartbeat.pause();
            tokio::select! {
                _ = new_frame.notified() => continue,
                Some(request) = controls.requests.recv() => {
                    super::control::apply(request, &mut models);
                    continue;
                }
                _ = shutdown.wait() => return,
            }
        };
        heartbeat.beat();
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    use chrono::Utc;
    use image::RgbImage;
    use tokio::sync::watch;

    use super::*;
    use crate::config::ModelConfig;
    use crate::source::{CameraHealth, Frame};

    /// Two cameras that always have a new frame waiting (both faster than the model): inference
    /// must alternate between them rather than serve one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_busy_cameras_take_turns_on_a_slow_model() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/efficientnet_lite0.toml");
        let models =
            crate::infer::load_models(&[ModelConfig { manifest, score_threshold: None, class_thresholds: Default::default() }], &Default::default()).unwrap();
        let new_frame = Arc::new(Notify::new());
        let running = Arc::new(AtomicBool::new(true));
        let mut feeds = Vec::new();
        for id in ["busy", "busier"] {
            let (sender, receiver) = watch::channel(None);
            let health = Arc::new(CameraHealth::default());
            feeds.push(CameraFeed { id: id.into(), frames: receiver, health, last_taken: 0 });
            let (running, new_frame) = (running.clone(), new_frame.clone());
            let image = Arc::new(RgbImage::new(320, 240));
            // "busier" sends five times as often as "busy"; both outpace the model.
            let pause = if id == "busy" { 10 } else { 2 };
            std::thread::spawn(move || {
                let mut sequence = 0;
                while running.load(Ordering::Relaxed) {
                    sequence += 1;
                    let frame = Frame { camera: id.into(), sequence, captured_at: Utc::now(), image: image.clone() };
                    sender.send_replace(Some(frame));
                    new_frame.notify_one();
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                }
            });
        }
        let (trigger, shutdown) = crate::shutdown::channel();
        let (output, mut inferred) = mpsc::channel(2);
        let heartbeat = crate::liveness::Liveness::default().register("inference");
        let worker = tokio::spawn(run_inference(
            models,
            feeds,
            new_frame,
            output,
            heartbeat,
            shutdown,
            crate::infer::control::WorkerControls::channel().2,
        ));
        let mut order = Vec::new();
        while order.len() < 12 {
            let Some(frame) = inferred.recv().await else { break };
            order.push(frame.frame.camera.to_string());
        }
        trigger.trigger();
        running.store(false, Ordering::Relaxed);
        let _ = worker.await;
        assert_eq!(order.len(), 12);
        assert!(order.windows(2).all(|pair| pair[0] != pair[1]), "cameras must alternate: {order:?}");
    }
}
