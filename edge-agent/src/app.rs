//! `edge-agent run`: wires the stages together. Frames flow one way through typed channels:
//! source (watch per camera, newest wins) → infer → judge → report (outbox → MQTT, board → web).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::Config;
use crate::infer::control::WorkerControls;
use crate::infer::{self, InferredFrame, Model};
use crate::judge::{Judge, Judgement};
use crate::liveness::{self, Liveness};
use crate::report::board::StatusBoard;
use crate::report::commands::{CommandHandler, IncomingCommand};
use crate::report::config_store::ConfigStore;
use crate::report::mqtt::{MqttSettings, Publisher};
use crate::report::outbox::Outbox;
use crate::report::settings::LiveSettings;
use crate::report::telemetry::TelemetrySampler;
use crate::report::{self, web};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::source;
use crate::source::CameraHealth;

/// Frames that may wait between two stages; small, so a slow stage drops frames at the source.
const STAGE_QUEUE: usize = 2;

/// Commands waiting to be handled; more are refused (logged) until the handler catches up.
const COMMAND_QUEUE: usize = 64;

/// Runs the agent until `trigger` fires; returns after the stages have stopped. `config_path` is
/// the file `config` came from (None: embedded defaults): commands re-read and change it.
pub async fn run(config: Config, config_path: Option<PathBuf>, trigger: &ShutdownTrigger) -> anyhow::Result<()> {
    let shutdown = trigger.handle();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state folder {} (config `state_dir`)", config.state_dir.display()))?;
    let outbox_path = config.state_dir.join("outbox.redb");
    let outbox = Arc::new(Outbox::open(&outbox_path)?.with_quota(config.outbox.quota_bytes()));

    let model_configs = config.models.clone();
    let inference = config.inference.clone();
    let models: Vec<Model> = tokio::task::spawn_blocking(move || infer::load_models(&model_configs, &inference))
        .await
        .context("model loading task failed")??;
    let model_names: Vec<String> = models.iter().map(|m| m.id().name.clone()).collect();
    let judge_config = config.clone();
    let judge = tokio::task::spawn_blocking(move || Judge::open(&judge_config, &model_names))
        .await
        .context("judge setup task failed")??;

    let mqtt_settings = MqttSettings::from_config(&config)?;
    let board = Arc::new(StatusBoard::new(config.device_id.clone(), mqtt_settings.as_ref().map(|s| s.broker())));
    board.set_models(models.iter().map(Model::info).collect());
    board.set_outbox_stats(outbox.stats()?);
    for model in &models {
        let info = model.info();
        tracing::info!(model = %info.name, backend = info.backend, provider = %info.execution_provider, "model loaded");
    }

    let liveness = Arc::new(Liveness::default());
    let (feeds, new_frame) = source::start_cameras(&config.cameras, &liveness, &shutdown);
    for feed in &feeds {
        board.add_camera(&feed.id, feed.health.clone());
    }

    let (inferred_tx, inferred_rx) = mpsc::channel::<InferredFrame>(STAGE_QUEUE);
    let (judged_tx, judged_rx) = mpsc::channel::<Judgement>(STAGE_QUEUE);
    let publisher_wake = Arc::new(Notify::new());

    let camera_health: Vec<_> = feeds.iter().map(|f| f.health.clone()).collect();
    let cameras: HashMap<String, _> = feeds.iter().map(|f| (f.id.to_string(), f.health.clone())).collect();
    let (worker, model_runs, worker_controls) = WorkerControls::channel();
    let infer_task = tokio::spawn(infer::worker::run_inference(
        models,
        feeds,
        new_frame,
        inferred_tx,
        liveness.register("inference"),
        shutdown.clone(),
        worker_controls,
    ));
    // `set`/`reload` hand new rules and zones to the judge between two frames.
    let (judge_settings, judge_settings_rx) = watch::channel(Arc::new(config.clone()));
    let judge_task = tokio::spawn(crate::judge::run_judge(
        judge,
        inferred_rx,
        judged_tx,
        judge_settings_rx,
        liveness.register("judge"),
    ));
    let report_task = tokio::spawn(report::run_reporter(
        judged_rx,
        outbox.clone(),
        board.clone(),
        publisher_wake.clone(),
        liveness.register("report"),
    ));
    // One store and one way to apply changes, for MQTT commands and the web page alike.
    let settings = Arc::new(LiveSettings::new(
        ConfigStore::new(config_path, config.clone()),
        board.clone(),
        judge_settings,
        worker,
        cameras,
    ));
    if config.web.enabled {
        web::serve(&config, board.clone(), settings.clone(), shutdown.clone()).await?;
    }
    let status_changed = Arc::new(Notify::new());
    let (command_tx, command_rx) = mpsc::channel::<IncomingCommand>(COMMAND_QUEUE);
    let handler = Arc::new(CommandHandler {
        device_id: config.device_id.clone(),
        topic_prefix: config.mqtt.topic_prefix.clone(),
        state_dir: config.state_dir.clone(),
        inference: config.inference.clone(),
        settings,
        board: board.clone(),
        outbox: outbox.clone(),
        publisher_wake: publisher_wake.clone(),
        status_changed: status_changed.clone(),
        model_runs,
        model_update_busy: Default::default(),
    });
    let command_task = tokio::spawn(handler.run(command_rx, shutdown.clone()));
    let publisher_task = mqtt_settings.map(|settings| {
        let telemetry = TelemetrySampler::new(board.clone(), outbox.clone(), config.state_dir.clone());
        let mut publisher = Publisher::new(settings, outbox.clone(), board.clone(), publisher_wake)
            .with_commands(command_tx)
            .with_status_changed(status_changed);
        if config.mqtt.telemetry_interval_secs > 0 {
            publisher = publisher.with_telemetry(telemetry);
        }
        tokio::spawn(publisher.run(shutdown.clone()))
    });
    if config.mqtt.url.is_none() {
        tracing::info!("no `mqtt.url` configured: events are kept in the outbox at {}", outbox_path.display());
    }

    wait_for_first_camera_attempts(&camera_health, &mut shutdown.clone()).await;
    liveness::notify_ready(&format!("{} cameras, {} models", camera_health.len(), board.snapshot().models.len()));
    tokio::spawn(liveness::run_watchdog(
        liveness.clone(),
        Duration::from_secs_f64(config.service.watchdog_stall_secs),
        shutdown.clone(),
    ));
    shutdown.clone().wait().await;
    liveness::notify_stopping();

    // Stages end in flow order: inference stops on shutdown, then judge and report drain.
    let _ = infer_task.await;
    let _ = judge_task.await;
    let _ = report_task.await;
    let _ = command_task.await;
    if let Some(publisher) = publisher_task {
        let _ = publisher.await;
    }
    tracing::info!(outbox_depth = outbox.depth().unwrap_or(0), "stopped");
    Ok(())
}

/// "Sources are up" for systemd: every camera has delivered a frame or said why it cannot, or
/// enough time has passed that waiting longer would only delay the web page and MQTT status.
async fn wait_for_first_camera_attempts(cameras: &[Arc<CameraHealth>], shutdown: &mut Shutdown) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let all_tried = cameras.iter().all(|c| {
            c.frames_captured.load(std::sync::atomic::Ordering::Relaxed) > 0
                || c.errors.load(std::sync::atomic::Ordering::Relaxed) > 0
        });
        if all_tried || shutdown.sleep(Duration::from_millis(50)).await {
            return;
        }
    }
}
