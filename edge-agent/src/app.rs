//! `edge-agent run`: wires the stages together. Frames flow one way through typed channels:
//! source (watch per camera, newest wins) → infer → judge → evidence → delivery (outbox → MQTT,
//! board → web), with control (commands, live settings) and web beside the flow. Three steps:
//! [`build`] opens what the stages need, [`spawn`] starts their tasks, [`stop`] waits for them in
//! flow order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::base::liveness::{self, Liveness};
use crate::base::shutdown::{Shutdown, ShutdownTrigger};
use crate::config::{last_good, Config};
use crate::control::authority::Authority;
use crate::control::commands::CommandHandler;
use crate::control::config_store::ConfigStore;
use crate::control::model_update;
use crate::control::settings::LiveSettings;
use crate::control::site_heads::SiteHeads;
use crate::control::switch;
use crate::delivery::actions::OnSiteActions;
use crate::delivery::board::{ControlStatus, StatusBoard};
use crate::delivery::history::EventHistory;
use crate::delivery::mqtt::{IncomingCommand, MqttSettings, Publisher};
use crate::delivery::outbox::Outbox;
use crate::delivery::stats::DailyStatsKeeper;
use crate::delivery::telemetry::TelemetrySampler;
use crate::delivery::{self, Delivery};
use crate::evidence::{self, EvidenceStage, EvidencedFrame};
use crate::infer::control::WorkerControls;
use crate::infer::{self, InferredFrame, Model};
use crate::judge::{self, Judge, Judgement};
use crate::source::{self, CameraHealth};
use crate::web;

/// Frames that may wait between two stages; small, so a slow stage drops frames at the source.
const STAGE_QUEUE: usize = 2;

/// Commands waiting to be handled; more are refused (logged) until the handler catches up.
const COMMAND_QUEUE: usize = 64;

/// Runs the agent until `trigger` fires; returns after the stages have stopped. `config_path` is
/// the file `config` came from (None: embedded defaults): commands re-read and change it.
/// `config_problem` says why `config` is the last good copy rather than the file itself. A config
/// file that loads but does not start (a model gone) also falls back to the last good copy.
pub async fn run(
    mut config: Config,
    config_path: Option<PathBuf>,
    mut config_problem: Option<String>,
    trigger: &ShutdownTrigger,
) -> anyhow::Result<()> {
    let shutdown = trigger.handle();
    if let Some(path) = &config_path {
        // A model switch whose probation never ended is undone before the models load.
        match switch::roll_back_unconfirmed_switch(path, &config) {
            Ok(Some(note)) => {
                tracing::warn!("{note}");
                config = Config::load(path)
                    .with_context(|| format!("the config {} after rolling back a model switch", path.display()))?;
            }
            Ok(None) => {}
            Err(problem) => tracing::error!("{problem}"),
        }
        if config_problem.is_none() {
            model_update::prune_unused_models(&config.state_dir, &config);
        }
    }
    let config_text = config_path.as_deref().and_then(|p| std::fs::read_to_string(p).ok());
    let parts = match build(&config).await {
        Ok(parts) => parts,
        Err(e) => {
            let fallback = match (&config_path, &config_problem) {
                (Some(path), None) => last_good::load(path),
                _ => None,
            };
            let Some(fallback) = fallback else { return Err(e) };
            let problem = format!("{e:#}");
            tracing::error!("the config file does not start ({problem}); starting on the last config that did");
            config = fallback.context("the last good config does not load either")?;
            config_problem = Some(problem);
            build(&config).await.context("the last good config does not start either")?
        }
    };
    let control = control_status(&config, config_path.is_some(), config_problem);
    let running = spawn(&config, config_path.clone(), parts, control, &shutdown).await?;
    if let (Some(path), Some(text), None) = (&config_path, &config_text, &running.config_problem) {
        if let Err(e) = last_good::save(path, text, &config) {
            tracing::warn!(path = %path.display(), "cannot keep this config as the last good one: {e}");
        }
    }
    shutdown.clone().wait().await;
    liveness::notify_stopping();
    stop(running).await;
    Ok(())
}

/// What the stages need before any task starts: the outbox, the models, each stage's state.
struct Parts {
    outbox: Arc<Outbox>,
    outbox_path: PathBuf,
    models: Vec<Model>,
    judge: Judge,
    evidence: EvidenceStage,
    stats: DailyStatsKeeper,
    mqtt: Option<MqttSettings>,
    board: Arc<StatusBoard>,
}

/// Opens the state folder, the outbox, the models (blocking: off the async workers), the judge
/// and the evidence store. Any failure here stops the start with a message naming what failed.
async fn build(config: &Config) -> anyhow::Result<Parts> {
    crate::base::write_file::create_folder_durably(&config.state_dir)
        .with_context(|| format!("cannot create state folder {} (config `state_dir`)", config.state_dir.display()))?;
    let outbox_path = config.state_dir.join("outbox.redb");
    let outbox = Arc::new(
        Outbox::open(&outbox_path)?.with_quota(config.outbox.quota_bytes()).with_reserve(config.outbox.reserve_bytes()),
    );

    let model_configs = config.models.clone();
    let inference = config.inference.clone();
    let models: Vec<Model> = tokio::task::spawn_blocking(move || infer::load_models(&model_configs, &inference))
        .await
        .context("model loading task failed")??;
    let mut models = models;
    for model in &mut models {
        model.set_people(config.privacy.people_finder());
    }
    let model_names: Vec<String> = models.iter().map(|m| m.id().name.clone()).collect();
    let judge_settings = config.judge_settings();
    let judge = tokio::task::spawn_blocking(move || Judge::open(&judge_settings, &model_names))
        .await
        .context("judge setup task failed")??;
    let (state_dir, evidence_config, device) =
        (config.state_dir.clone(), config.evidence.clone(), config.device_id.clone());
    let evidence = tokio::task::spawn_blocking(move || EvidenceStage::open(&state_dir, &evidence_config, &device))
        .await
        .context("evidence setup task failed")??;
    let station_id = config.site.station_id.clone().unwrap_or_else(|| config.device_id.clone());
    let stats = DailyStatsKeeper::open(
        &config.state_dir,
        &station_id,
        config.site.grid_cell.as_deref(),
        &config.device_id,
        &config.stats,
    )
    .map_err(anyhow::Error::msg)?;

    let mqtt = MqttSettings::from_config(&config.mqtt, &config.device_id)?;
    let board = Arc::new(StatusBoard::new(
        config.device_id.clone(),
        mqtt.as_ref().map(|s| s.broker_names()).unwrap_or_default(),
    ));
    board.set_models(models.iter().map(Model::info).collect());
    board.set_outbox_stats(outbox.stats()?);
    for model in &models {
        let info = model.info();
        tracing::info!(model = %info.name, backend = info.backend, provider = %info.execution_provider, "model loaded");
    }
    Ok(Parts { outbox, outbox_path, models, judge, evidence, stats, mqtt, board })
}

/// The tasks of a running agent, in flow order, and what is left to log at the end.
struct Running {
    stages: Vec<JoinHandle<()>>,
    outbox: Arc<Outbox>,
    config_problem: Option<String>,
}

/// What the page and the retained status say about the config and remote control.
fn control_status(config: &Config, from_file: bool, config_problem: Option<String>) -> ControlStatus {
    let commands = match (&config.commands.platform_public_key, config.commands.accept_unsigned) {
        (_, true) => "unsigned_accepted",
        (Some(_), false) => "signed",
        (None, false) => "refused",
    };
    let config_source = match (&config_problem, from_file) {
        (Some(_), _) => "last_good",
        (None, true) => "file",
        (None, false) => "embedded",
    };
    ControlStatus {
        config: config_source,
        config_problem,
        commands,
        unsigned_models: !config.model_update.signature_required(),
    }
}

/// Starts the cameras, one task per stage, the web page, the command handler and the publisher;
/// returns once the cameras have had their first try and systemd has been told we are ready.
async fn spawn(
    config: &Config,
    config_path: Option<PathBuf>,
    parts: Parts,
    control: ControlStatus,
    shutdown: &Shutdown,
) -> anyhow::Result<Running> {
    let Parts { outbox, outbox_path, models, judge, evidence, stats, mqtt, board } = parts;
    let config_problem = control.config_problem.clone();
    board.set_control(control);
    let liveness = Arc::new(Liveness::default());
    let (feeds, new_frame) =
        source::start_cameras(&config.cameras, config.evidence.clip_pre_roll(), &liveness, shutdown);
    for feed in &feeds {
        board.add_camera(&feed.id, feed.health.clone());
    }
    let camera_health: Vec<_> = feeds.iter().map(|f| f.health.clone()).collect();
    let history = open_history(config, &board);
    let cameras: HashMap<String, _> = feeds.iter().map(|f| (f.id.to_string(), f.health.clone())).collect();

    let (inferred_tx, inferred_rx) = mpsc::channel::<InferredFrame>(STAGE_QUEUE);
    let (judged_tx, judged_rx) = mpsc::channel::<Judgement>(STAGE_QUEUE);
    let (evidenced_tx, evidenced_rx) = mpsc::channel::<EvidencedFrame>(STAGE_QUEUE);
    let publisher_wake = Arc::new(Notify::new());
    let status_changed = Arc::new(Notify::new());
    match evidence.identity() {
        Some((public_key, head)) => {
            tracing::info!(public_key = %public_key, "evidence chain signed with this device key");
            board.set_evidence_identity(Some(public_key), head);
        }
        None => board.set_evidence_identity(None, None),
    }
    let (worker, model_runs, worker_controls) = WorkerControls::channel();
    // `set`/`reload` hand new rules and zones to the judge between two frames.
    let (judge_settings, judge_settings_rx) = watch::channel(Arc::new(config.judge_settings()));
    let (judge_control, judge_control_rx) = mpsc::channel(4);
    let mut judge = judge;
    judge.count_runs_in(model_runs.clone());
    let mut stages = vec![
        tokio::spawn(infer::worker::run_inference(
            models,
            feeds,
            new_frame,
            inferred_tx,
            liveness.register("inference"),
            shutdown.clone(),
            worker_controls,
            plate_work(&config, judge_settings.subscribe()).await,
        )),
        tokio::spawn(judge::run_judge(
            judge,
            inferred_rx,
            judged_tx,
            judge_settings_rx,
            judge_control_rx,
            liveness.register("judge"),
        )),
        tokio::spawn(evidence::run_evidence(evidence, judged_rx, evidenced_tx, liveness.register("evidence"))),
        tokio::spawn(delivery::run_delivery(
            Delivery {
                outbox: outbox.clone(),
                board: board.clone(),
                publisher_wake: publisher_wake.clone(),
                stats,
                actions: OnSiteActions::new(config.actions.folder.clone()),
                status_changed: status_changed.clone(),
                last_head_announced: None,
                held: delivery::held::Held::new(delivery::HELD_MAX_BYTES),
                history,
            },
            evidenced_rx,
            liveness.register("delivery"),
        )),
    ];

    // One store and one way to apply changes, for MQTT commands and the web page alike.
    let settings = Arc::new(LiveSettings::new(
        ConfigStore::new(config_path, config.clone()),
        board.clone(),
        judge_settings,
        worker,
        judge_control,
        cameras,
    ));
    // A model update and a site head deployment share one pending-switch file: one at a time.
    let switch_busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heads =
        Arc::new(SiteHeads::new(settings.clone(), model_runs.clone(), config.state_dir.clone(), switch_busy.clone()));
    if config.web.enabled {
        web::serve(config, board.clone(), settings.clone(), heads, shutdown.clone()).await?;
    }
    let (command_tx, command_rx) = mpsc::channel::<IncomingCommand>(COMMAND_QUEUE);
    let authority =
        Arc::new(Authority::new(&config.device_id, &config.commands, &config.state_dir).map_err(anyhow::Error::msg)?);
    authority.log_policy();
    if !config.model_update.signature_required() {
        tracing::warn!(
            "`model_update.require_signature = false`: unsigned models from any URL the box reaches are accepted"
        );
    }
    let handler = Arc::new(CommandHandler {
        device_id: config.device_id.clone(),
        authority,
        topic_prefix: config.mqtt.topic_prefix.clone(),
        state_dir: config.state_dir.clone(),
        inference: config.inference.clone(),
        settings,
        board: board.clone(),
        outbox: outbox.clone(),
        publisher_wake: publisher_wake.clone(),
        status_changed: status_changed.clone(),
        model_runs,
        model_update_busy: switch_busy,
        refusals: Default::default(),
    });
    let screen: Arc<dyn crate::delivery::mqtt::CommandScreen> = handler.clone();
    stages.push(tokio::spawn(handler.run(command_rx, shutdown.clone())));
    match mqtt {
        Some(mqtt) => {
            let telemetry = TelemetrySampler::new(board.clone(), outbox.clone(), config.state_dir.clone());
            let mut publisher = Publisher::new(mqtt, outbox.clone(), board.clone(), publisher_wake)
                .with_commands(command_tx, screen)
                .with_status_changed(status_changed);
            if config.mqtt.telemetry_interval_secs > 0 {
                publisher = publisher.with_telemetry(telemetry);
            }
            stages.push(tokio::spawn(publisher.run(shutdown.clone())));
        }
        None => tracing::info!("no `mqtt.url` configured: events are kept in the outbox at {}", outbox_path.display()),
    }

    wait_for_first_camera_attempts(&camera_health, &mut shutdown.clone()).await;
    liveness::notify_ready(&format!("{} cameras, {} models", camera_health.len(), board.snapshot().models.len()));
    tokio::spawn(liveness::run_watchdog(
        liveness.clone(),
        Duration::from_secs_f64(config.service.watchdog_stall_secs),
        shutdown.clone(),
    ));
    Ok(Running { stages, outbox, config_problem })
}

/// The stages get this long to drain and end (the evidence stage cuts the clips it writes at its
/// own, shorter deadline): systemd's `TimeoutStopSec` is 20 s, and the runtime's shutdown may take
/// 5 s more (cmd/run.rs).
const STOP_LIMIT: Duration = Duration::from_secs(13);

/// Waits for the tasks in flow order: inference stops on shutdown, then judge, evidence and
/// delivery drain what is in their queues, then commands and the publisher end; for
/// [`STOP_LIMIT`] at most, so a stage stuck on a device or a pipeline cannot hold the stop.
async fn stop(running: Running) {
    let Running { stages, outbox, .. } = running;
    let drained = tokio::time::timeout(STOP_LIMIT, async {
        for stage in stages {
            let _ = stage.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::error!("the stages did not end within {} s of the stop; stopping without them", STOP_LIMIT.as_secs());
    }
    tracing::info!(outbox_depth = outbox.depth().unwrap_or(0), "stopped");
}

/// The event history on disk, its newest events loaded onto the board; None (logged) when it
/// cannot be opened: the page then lists only this run's events.
fn open_history(config: &Config, board: &StatusBoard) -> Option<Arc<std::sync::Mutex<EventHistory>>> {
    let path = config.state_dir.join("history.redb");
    let history = match EventHistory::open(&path, config.evidence.max_age_days) {
        Ok(history) => history,
        Err(e) => {
            tracing::error!("{e}; the page lists only this run's events");
            return None;
        }
    };
    match history.newest(crate::delivery::board::EVENT_HISTORY) {
        Ok(events) => {
            tracing::info!(events = events.len(), "event history loaded");
            board.load_history(events);
        }
        Err(e) => tracing::error!("{e}; earlier events are not listed"),
    }
    let history = Arc::new(std::sync::Mutex::new(history));
    board.set_history(history.clone());
    Some(history)
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

/// Loads a plate model (`load` reads files and builds sessions: seconds) on a blocking thread; its
/// error, or the thread's, in words.
async fn load_plate_model<T, E>(
    config: &Config,
    load: fn(&infer::plates::PlateSettings, &infer::config::InferenceConfig) -> Result<T, E>,
) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (settings, inference) = (config.plates.clone(), config.inference.clone());
    match tokio::task::spawn_blocking(move || load(&settings, &inference)).await {
        Ok(loaded) => loaded.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The plate stage, when `[plates]` is on or `privacy.blur_plates` asks for it; where it reads follows
/// the zones as `set` and `reload` change them. Plate models that do not load leave the agent
/// running: without plates read (and says why), and with every vehicle blurred whole where plates
/// are to be blurred.
async fn plate_work(
    config: &Config,
    judge_settings: watch::Receiver<Arc<crate::judge::config::JudgeSettings>>,
) -> Option<infer::worker::PlateWork> {
    let (reading, blurring) = (config.plates.enabled, config.privacy.blur_plates);
    if !reading && !blurring {
        return None;
    }
    let reader = if reading {
        load_plate_model(config, infer::plates::PlateReader::load)
            .await
            .inspect_err(|e| tracing::error!("{e}; plates are not read"))
            .ok()
    } else {
        None
    };
    let blurring = if blurring {
        // The reader lends its own detector; without one, the detector alone.
        let finder = match &reader {
            Some(_) => None,
            None => load_plate_model(config, infer::plates::PlateFinder::load)
                .await
                .inspect_err(|e| tracing::error!("{e}; `privacy.blur_plates` blurs every vehicle whole"))
                .ok(),
        };
        Some(infer::plates::stage::PlateBlurring { labels: config.privacy.vehicle_labels.clone(), finder })
    } else {
        None
    };
    let stage = match (reader, blurring) {
        (Some(reader), blurring) => {
            let stage = infer::plates::stage::PlateStage::new(reader, config.plates.labels.clone());
            match blurring {
                Some(blurring) => stage.with_blurring(blurring),
                None => stage,
            }
        }
        (None, Some(blurring)) => infer::plates::stage::PlateStage::blurring_only(blurring),
        (None, None) => return None,
    };
    tracing::info!(
        backend = stage.backend(),
        read_labels = ?config.plates.labels,
        reads = stage.reads(),
        blur_plates = config.privacy.blur_plates,
        "plate stage on"
    );
    let (areas_tx, areas) = watch::channel(Arc::new(crate::judge::plate_areas(&judge_settings.borrow())));
    let mut judge_settings = judge_settings;
    tokio::spawn(async move {
        while judge_settings.changed().await.is_ok() {
            let areas = crate::judge::plate_areas(&judge_settings.borrow_and_update());
            if areas_tx.send(Arc::new(areas)).is_err() {
                return;
            }
        }
    });
    Some(infer::worker::PlateWork { stage, areas })
}
