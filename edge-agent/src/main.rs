//! The `edge-agent` command line: `run` (the default), `infer` on images.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_agent::config::{BackendKind, Config, ModelConfig};
use edge_agent::infer::{self, Findings};

#[derive(Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "Edge AI inference appliance: cameras → ONNX models → rules → events over MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default). Without --config it runs the embedded demo: a replay camera over
    /// the sample images, the default models, the web page on 127.0.0.1:8080, no broker.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the models on image files and print what they find.
    Infer {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Only this model (manifest name); default: every configured model.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One JSON object per image instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::embedded_defaults()),
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Run { config } => run(config),
        Command::Infer {
            images,
            model,
            config,
            json,
        } => infer_images(&images, model.as_deref(), config.as_ref(), json),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(config_path.as_ref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (trigger, _) = edge_agent::shutdown::channel();
        let trigger = std::sync::Arc::new(trigger);
        let signal_trigger = trigger.clone();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal received; shutting down");
            signal_trigger.trigger();
        });
        tracing::info!(device = %config.device_id, state_dir = %config.state_dir.display(), "edge-agent {} starting", env!("CARGO_PKG_VERSION"));
        edge_agent::app::run(config, &trigger).await
    })
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn infer_images(
    images: &[PathBuf],
    only: Option<&str>,
    config_path: Option<&PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let mut chosen: Vec<&ModelConfig> = config.models.iter().collect();
    let mut models = Vec::new();
    for model_config in chosen.drain(..) {
        let model = infer::Model::load(model_config, BackendKind::Tract)?;
        if only.is_none_or(|name| model.id().name == name) {
            models.push(model);
        }
    }
    if models.is_empty() {
        anyhow::bail!(
            "no configured model is named {:?}",
            only.unwrap_or_default()
        );
    }
    for path in images {
        let image = edge_agent::source::replay::decode_picture("infer", path)?;
        let mut results = Vec::new();
        for model in &mut models {
            results.push(
                model
                    .infer(&image)
                    .with_context(|| format!("model {} on {}", model.id().name, path.display()))?,
            );
        }
        if json {
            println!(
                "{}",
                serde_json::json!({ "image": path, "width": image.width(), "height": image.height(), "results": results })
            );
            continue;
        }
        println!("{} ({}×{})", path.display(), image.width(), image.height());
        for result in &results {
            match &result.findings {
                Findings::Detect { detections } => {
                    for d in detections {
                        println!(
                            "  {:<18} {:<14} {:.3}  box {:.0},{:.0} – {:.0},{:.0}",
                            result.model.name,
                            d.label,
                            d.score,
                            d.bbox.x1,
                            d.bbox.y1,
                            d.bbox.x2,
                            d.bbox.y2
                        );
                    }
                }
                Findings::Classify { classes } => {
                    for c in classes {
                        println!("  {:<18} {:<14} {:.3}", result.model.name, c.label, c.score);
                    }
                }
            }
        }
    }
    Ok(())
}
