//! The infer stage's loop: takes the newest frame of each camera in turn and runs every model on it
//! off the async workers (and the plate stage, where a site reads plates), then hands the
//! [`InferredFrame`] to the judge stage.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Notify};

use super::control::{ModelTestRequest, ModelTestRun, WorkerControls};
use super::plates::stage::{PlateAreas, PlateStage};
use super::regions::CameraRegions;
use super::{infer_frame, infer_frame_where, InferredFrame, Model};
use crate::base::blocking::off_the_workers;
use crate::base::liveness::Heartbeat;
use crate::base::shutdown::Shutdown;
use crate::source::CameraFeed;

/// The plate stage and where it reads, per camera; the areas follow the zones as `set` and `reload`
/// change them.
pub struct PlateWork {
    pub stage: PlateStage,
    pub areas: watch::Receiver<Arc<PlateAreas>>,
}

/// Takes the newest frame of each camera in turn (round robin, so one busy camera cannot starve
/// another), runs every model on it off the async workers (on a camera with motion, where
/// something moved: [`super::regions`]), and passes it on.
pub async fn run_inference(
    mut models: Vec<Model>,
    mut feeds: Vec<CameraFeed>,
    new_frame: Arc<Notify>,
    output: mpsc::Sender<InferredFrame>,
    heartbeat: Arc<Heartbeat>,
    mut shutdown: Shutdown,
    mut controls: WorkerControls,
    plates: Option<PlateWork>,
) {
    let (mut plate_stage, plate_areas) = match plates {
        Some(PlateWork { stage, areas }) => (Some(stage), Some(areas)),
        None => (None, None),
    };
    let mut next_camera = 0;
    let mut regions: Vec<CameraRegions> = feeds.iter().map(|_| CameraRegions::default()).collect();
    loop {
        if shutdown.is_triggered() {
            return;
        }
        // Model switches and thresholds take effect between two frames, never inside one.
        for test in controls.apply_pending(&mut models) {
            match run_test(models, &feeds, test).await {
                Some(returned) => models = returned,
                None => return,
            }
        }
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
                    if let Some(test) = super::control::apply(request, &mut models) {
                        match run_test(models, &feeds, test).await {
                            Some(returned) => models = returned,
                            None => return,
                        }
                    }
                    continue;
                }
                _ = shutdown.wait() => return,
            }
        };
        heartbeat.beat();
        next_camera = (index + 1) % count;
        controls.runs.frame_started();
        let wanted = regions[index].wanted(&frame);
        let area = plate_areas.as_ref().and_then(|areas| areas.borrow().get(&*frame.camera).cloned());
        let worked = off_the_workers((models, plate_stage), move |(models, plate_stage)| {
            let (mut inferred, failures, by_region) = infer_frame_where(models, frame, wanted.as_deref());
            let plate_failures = match plate_stage {
                Some(stage) => {
                    let found = stage.run(&inferred.frame.image, &inferred.results, area.as_ref());
                    inferred.plates = found.read;
                    inferred.plates_to_blur = found.to_blur;
                    found.errors
                }
                None => Vec::new(),
            };
            (inferred, failures, by_region, plate_failures)
        })
        .await;
        controls.runs.frame_ended();
        let ((returned_models, returned_plates), (inferred, failures, by_region, plate_failures)) = match worked {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("inference task failed: {e}; stopping inference");
                return;
            }
        };
        models = returned_models;
        plate_stage = returned_plates;
        for error in plate_failures {
            tracing::warn!(camera = %feeds[index].id, "plate not read or looked for: {error}");
        }
        for result in &inferred.results {
            controls.runs.record(&result.model.name, true);
        }
        for (model, error) in failures {
            controls.runs.record(&model.name, false);
            tracing::error!(model = %model.name, camera = %feeds[index].id, "{error}");
        }
        feeds[index].health.frames_inferred.fetch_add(1, Ordering::Relaxed);
        if by_region {
            feeds[index].health.frames_by_region.fetch_add(1, Ordering::Relaxed);
        }
        regions[index].found(&inferred.frame, &inferred.results, !by_region);
        if output.send(inferred).await.is_err() {
            return;
        }
    }
}

/// Runs every model on the newest frame of the camera a test names and answers it; the frame is
/// not taken from the camera (inference still gets it) and nothing goes to the judge. Returns the
/// models, or None when the blocking task failed (and took them with it).
async fn run_test(models: Vec<Model>, feeds: &[CameraFeed], test: ModelTestRequest) -> Option<Vec<Model>> {
    let ModelTestRequest { camera, reply } = test;
    let frame = match feeds.iter().find(|feed| *feed.id == *camera) {
        Some(feed) => feed.newest(),
        None => {
            let known: Vec<&str> = feeds.iter().map(|f| &*f.id).collect();
            let _ = reply.send(Err(format!("no camera {camera:?}; cameras: {}", known.join(", "))));
            return Some(models);
        }
    };
    let Some(frame) = frame else {
        let _ = reply.send(Err(format!("camera {camera:?} has no frame yet")));
        return Some(models);
    };
    let worked = off_the_workers(models, move |models| infer_frame(models, frame)).await;
    match worked {
        Ok((models, (inferred, failures))) => {
            let failures = failures.into_iter().map(|(model, error)| (model.name, error.to_string())).collect();
            tracing::info!(camera = %camera, "models tested on the newest frame for the web page");
            let _ = reply.send(Ok(ModelTestRun { inferred, failures }));
            Some(models)
        }
        Err(e) => {
            tracing::error!("inference task failed during a model test: {e}; stopping inference");
            None
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
    use crate::infer::config::ModelConfig;
    use crate::source::{CameraHealth, Frame};

    /// Two cameras that always have a new frame waiting (both faster than the model): inference
    /// must alternate between them rather than serve one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_busy_cameras_take_turns_on_a_slow_model() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/efficientnet_lite0.toml");
        let models = crate::infer::load_models(
            &[ModelConfig { manifest, score_threshold: None, class_thresholds: Default::default() }],
            &Default::default(),
        )
        .unwrap();
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
                    let frame = Frame {
                        camera: id.into(),
                        sequence,
                        captured_at: Utc::now(),
                        image: image.clone(),
                        video: None,
                        motion: None,
                    };
                    sender.send_replace(Some(frame));
                    new_frame.notify_one();
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                }
            });
        }
        let (trigger, shutdown) = crate::base::shutdown::channel();
        let (output, mut inferred) = mpsc::channel(2);
        let heartbeat = crate::base::liveness::Liveness::default().register("inference");
        let worker = tokio::spawn(run_inference(
            models,
            feeds,
            new_frame,
            output,
            heartbeat,
            shutdown,
            crate::infer::control::WorkerControls::channel().2,
            None,
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

    /// The installer's model test: the worker runs its models on the camera's newest frame and
    /// answers; the judge gets nothing more than the frames the camera itself delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_test_answers_with_findings_and_sends_nothing_on() {
        use crate::infer::control::{ModelTestRequest, WorkerControl};
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/nanodet.toml");
        let models = crate::infer::load_models(
            &[ModelConfig { manifest, score_threshold: None, class_thresholds: Default::default() }],
            &Default::default(),
        )
        .unwrap();
        let dog =
            image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples/dog.jpg")).unwrap().to_rgb8();
        let (sender, receiver) = watch::channel(None);
        let health = Arc::new(CameraHealth::default());
        let feeds = vec![CameraFeed { id: "yard".into(), frames: receiver, health, last_taken: 0 }];
        let new_frame = Arc::new(Notify::new());
        let (trigger, shutdown) = crate::base::shutdown::channel();
        let (output, mut inferred) = mpsc::channel(2);
        let (control, _runs, controls) = crate::infer::control::WorkerControls::channel();
        let heartbeat = crate::base::liveness::Liveness::default().register("inference");
        let worker =
            tokio::spawn(run_inference(models, feeds, new_frame.clone(), output, heartbeat, shutdown, controls, None));

        let ask = |camera: &str| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let request = WorkerControl::TestModels(ModelTestRequest { camera: camera.into(), reply });
            (request, answer)
        };
        let (request, answer) = ask("yard");
        control.send(request).await.unwrap();
        let refused = answer.await.unwrap().err().expect("no frame yet");
        assert!(refused.contains("no frame"), "{refused}");

        sender.send_replace(Some(Frame {
            camera: "yard".into(),
            sequence: 1,
            captured_at: Utc::now(),
            image: Arc::new(dog),
            video: None,
            motion: None,
        }));
        new_frame.notify_one();
        assert!(inferred.recv().await.is_some(), "the camera's own frame goes on");
        let (request, answer) = ask("yard");
        control.send(request).await.unwrap();
        let run = answer.await.unwrap().unwrap();
        let crate::infer::Findings::Detect { detections } = &run.inferred.results[0].findings else {
            panic!("classes")
        };
        assert!(detections.iter().any(|d| d.label == "truck"), "{detections:?}");
        let (request, answer) = ask("gate");
        control.send(request).await.unwrap();
        assert!(answer.await.unwrap().err().is_some_and(|e| e.contains("yard")), "names the cameras there are");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(inferred.try_recv().is_err(), "a test sends nothing to the judge");
        trigger.trigger();
        let _ = worker.await;
    }
}
