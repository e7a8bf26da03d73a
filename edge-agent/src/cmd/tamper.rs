//! `edge-agent tamper reference --camera ID`: the installer saves what a camera sees now as its
//! tamper reference (or `--forget`s it, so the agent learns one from its first stable minute).
//! The work is in the library (`edge_agent::ops::tamper`).

use std::path::PathBuf;
use std::time::Duration;

use edge_agent::judge::tamper::reference;
use edge_agent::ops::tamper::{set_reference, tamper_dir};

#[derive(clap::Args)]
pub struct TamperArgs {
    #[command(subcommand)]
    action: TamperAction,
    /// The config the service runs (e.g. /etc/edge-agent/edge-agent.toml); default: the embedded
    /// defaults, as `run` without --config.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum TamperAction {
    /// Save the camera's current view as its reference: aim, focus and uncover it first. The
    /// running agent uses it from its next start.
    Reference {
        /// The camera's `id`.
        #[arg(long)]
        camera: String,
        /// The view must hold still, uncovered, this long.
        #[arg(long, default_value_t = 10.0, value_parser = learning_seconds)]
        secs: f64,
        /// Remove the saved reference instead; the agent then learns one from the first stable
        /// minute after its next start.
        #[arg(long)]
        forget: bool,
    },
}

fn learning_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (1.0..=600.0).contains(&secs) => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds from 1 to 600")),
    }
}

/// How long past `--secs` the view may take to settle.
const PATIENCE: Duration = Duration::from_secs(30);

pub fn tamper(args: TamperArgs) -> anyhow::Result<()> {
    let config = super::load_config(args.config.as_deref())?;
    match args.action {
        TamperAction::Reference { camera, forget: true, .. } => {
            let dir = tamper_dir(&config);
            if reference::forget(&dir, &camera)? {
                println!("forgot the tamper reference of camera {camera} in {}", dir.display());
                println!("The agent learns a new one from the first stable minute after its next start.");
            } else {
                println!("camera {camera} has no saved tamper reference in {}", dir.display());
            }
        }
        TamperAction::Reference { camera, secs, forget: false } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let outcome = runtime.block_on(set_reference(&config, &camera, secs, PATIENCE));
            // An RTSP camera that stopped answering must not keep the command alive.
            runtime.shutdown_timeout(Duration::from_secs(2));
            let saved = outcome?;
            let r = &saved.reference;
            println!("saved the tamper reference of camera {camera}");
            println!("  reference {}", saved.file.display());
            println!("  picture   {} ({} people blurred)", saved.picture.display(), saved.people_blurred);
            println!(
                "  view      {}×{}, brightness {:.0}, sharpness {}, noise {:.2}",
                r.frame_width,
                r.frame_height,
                r.brightness,
                r.sharpness.map(|s| format!("{s:.3}")).unwrap_or_else(|| "too plain to tell".into()),
                r.noise
            );
            if r.noise <= 0.0 {
                println!("  note      its frames were identical: a frozen picture cannot be told on this camera");
            }
            println!("Restart the agent (systemctl restart edge-agent) for it to use the new reference.");
        }
    }
    Ok(())
}
