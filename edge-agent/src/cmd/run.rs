//! `edge-agent run`: the agent itself, until SIGTERM or Ctrl-C.

use std::path::Path;
use std::sync::Arc;

pub fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let (config, config_problem) = match super::load_config(config_path) {
        Ok(config) => (config, None),
        // A config file that does not load falls back to the last one that started cleanly.
        Err(e) => match config_path.and_then(edge_agent::config::last_good::load) {
            Some(Ok(last_good)) => {
                let problem = format!("{e:#}");
                tracing::error!("the config file does not load ({problem}); starting on the last config that started");
                (last_good, Some(problem))
            }
            Some(Err(kept)) => return Err(e.context(format!("and the last good config does not load either: {kept}"))),
            None => return Err(e),
        },
    };
    edge_agent::infer::allocator::keep_frame_memory_returnable();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = runtime.block_on(async move {
        let (trigger, _) = edge_agent::base::shutdown::channel();
        let trigger = Arc::new(trigger);
        let signal_trigger = trigger.clone();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal received; shutting down");
            signal_trigger.trigger();
        });
        tracing::info!(device = %config.device_id, state_dir = %config.state_dir.display(), "edge-agent {} starting", env!("CARGO_PKG_VERSION"));
        edge_agent::app::run(config, config_path.map(Path::to_path_buf), config_problem, &trigger).await
    });
    // A camera read stuck in the kernel must not keep a stopping agent alive past systemd's timeout.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    outcome
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
