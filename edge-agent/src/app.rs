//! `edge-agent run`: wires the stages together. Frames flow one way through typed channels:
//! source (watch per camera, newest wins) → infer → judge → report (outbox → MQTT, board → web).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, Notify};

use crate::config::{parse_mqtt_url, Config};
use crate::infer::{self, InferredFrame, Model};
use crate::judge::{Judge, Judgement};
use crate::report::board::StatusBoard;
use crate::report::mqtt::{MqttSettings, Publisher};
use crate::report::outbox::Outbox;
use crate::report::{self, web};
use crate::shutdown::ShutdownTrigger;
use crate::source;

/// Frames that may wait between two stages; small, so a slow stage drops frames at the source.
const STAGE_QUEUE: usize = 2;

/// Runs the agent until `trigger` fires; returns after the stages have stopped.
pub async fn run(config: Config, trigger: &ShutdownTrigger) -> anyhow::Result<()> {
    let shutdown = trigger.handle();
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state folder {} (config `state_dir`)", config.state_dir.display()))?;
    let outbox_path = config.state_dir.join("outbox.redb");
    let outbox = Arc::new(Outbox::open(&outbox_path)?);

    let model_configs = config.models.clone();
    let inference = config.inference.clone();
    let models: Vec<Model> = tokio::task::spawn_blocking(move || infer::load_models(&model_configs, &inference))
        .await
        .context("model loading task failed")??;

    let mqtt_settings = match &config.mqtt.url {
        Some(url) => {
            let (host, port) = parse_mqtt_url(url).map_err(|problem| anyhow::anyhow!("`mqtt.url` {problem}"))?;
            Some(MqttSettings {
                host,
                port,
                client_id: config.mqtt_client_id(),
                topic_prefix: config.mqtt.topic_prefix.clone(),
                device_id: config.device_id.clone(),
                keep_alive: Duration::from_secs(config.mqtt.keep_alive_secs.max(5)),
            })
        }
        None => None,
    };
    let board = Arc::new(StatusBoard::new(config.device_id.clone(), mqtt_settings.as_ref().map(|s| s.broker())));
    board.set_models(models.iter().map(Model::info).collect());
    board.set_outbox_depth(outbox.depth()?);
    for model in &models {
        let info = model.info();
        tracing::info!(model = %info.name, backend = info.backend, provider = %info.execution_provider, "model loaded");
    }

    if config.web.enabled {
        web::serve(&config.web.listen, board.clone(), shutdown.clone()).await?;
    }

    let (feeds, new_frame) = source::start_cameras(&config.cameras, &shutdown);
    for feed in &feeds {
        board.add_camera(&feed.id, feed.health.clone());
    }

    let (inferred_tx, inferred_rx) = mpsc::channel::<InferredFrame>(STAGE_QUEUE);
    let (judged_tx, judged_rx) = mpsc::channel::<Judgement>(STAGE_QUEUE);
    let publisher_wake = Arc::new(Notify::new());

    let infer_task =
        tokio::spawn(infer::worker::run_inference(models, feeds, new_frame, inferred_tx, shutdown.clone()));
    let judge = Judge::new(config.device_id.clone(), config.rules.object.clone());
    let judge_task = tokio::spawn(crate::judge::run_judge(judge, inferred_rx, judged_tx));
    let report_task =
        tokio::spawn(report::run_reporter(judged_rx, outbox.clone(), board.clone(), publisher_wake.clone()));
    let publisher_task = mqtt_settings.map(|settings| {
        let publisher = Publisher { settings, outbox: outbox.clone(), board: board.clone(), wake: publisher_wake };
        tokio::spawn(publisher.run(shutdown.clone()))
    });
    if config.mqtt.url.is_none() {
        tracing::info!("no `mqtt.url` configured: events are kept in the outbox at {}", outbox_path.display());
    }

    // Stages end in flow order: inference stops on shutdown, then judge and report drain.
    let _ = infer_task.await;
    let _ = judge_task.await;
    let _ = report_task.await;
    if let Some(publisher) = publisher_task {
        let _ = publisher.await;
    }
    tracing::info!(outbox_depth = outbox.depth().unwrap_or(0), "stopped");
    Ok(())
}
