//! `edge-agent check [--config FILE]`: the installer's check before leaving a site. Prints one line
//! per part of the box (pass, warn, fail or skipped, with a fix for each problem) and exits 1 when
//! anything failed. The checks themselves live in the library (`edge_agent::ops::check`).

use std::path::PathBuf;
use std::time::Duration;

use edge_agent::ops::check::{self, CheckOptions};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The config to check (the one the service runs, e.g. /etc/edge-agent/edge-agent.toml);
    /// default: the embedded defaults, as `run` without --config.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Seconds to wait for each camera's first frame and for the broker's acknowledgement.
    #[arg(long, default_value_t = 15.0, value_parser = positive_seconds)]
    timeout: f64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 3600.0 => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds from above 0 to 3600")),
    }
}

pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let options = CheckOptions { timeout: Duration::from_secs_f64(args.timeout) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(check::check(args.config.as_deref(), &options));
    // An RTSP camera that never answered must not keep the command alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("edge-agent check: {}\n", report.config);
        print!("{}", report.table());
    }
    let failed: Vec<&str> = report.failures().map(|f| f.check.as_str()).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("check failed: {}", failed.join(", "))
    }
}
