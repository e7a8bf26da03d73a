//! The judge stage's loop with live settings: when the `set` or `reload` command changes the rules
//! (thresholds, zones), the judge is rebuilt from the new config between two frames.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::{Judge, Judgement};
use crate::config::Config;
use crate::infer::InferredFrame;

/// Like [`super::run_judge`], but rebuilds the judge with `build` whenever `settings` changes.
pub async fn run_judge_with_settings(
    build: impl Fn(&Config) -> Judge + Send + 'static,
    mut settings: watch::Receiver<Arc<Config>>,
    mut input: mpsc::Receiver<InferredFrame>,
    output: mpsc::Sender<Judgement>,
) {
    let mut judge = build(&settings.borrow_and_update());
    let mut settings_open = true;
    loop {
        tokio::select! {
            inferred = input.recv() => {
                let Some(inferred) = inferred else { return };
                if output.send(judge.judge(inferred)).await.is_err() {
                    return;
                }
            }
            changed = settings.changed(), if settings_open => {
                if changed.is_err() {
                    settings_open = false;
                    continue;
                }
                judge = build(&settings.borrow_and_update());
                tracing::info!("rules changed; judge rebuilt");
            }
        }
    }
}
