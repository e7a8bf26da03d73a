//! Liveness for the systemd watchdog. Each long-lived loop (camera, inference, judge, report) owns a
//! [`Heartbeat`] that it beats while making progress, pauses while idle by design (waiting for a
//! frame that has not come), and retires when it ends. The watchdog pings systemd (`WATCHDOG=1`)
//! only while no heartbeat is stale, so a hung inference or camera loop stops the pings and systemd
//! restarts the agent — while an idle pipeline (no camera frames) is not mistaken for a hang.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::base::shutdown::Shutdown;

const ACTIVE: u8 = 0;
const PAUSED: u8 = 1;
const RETIRED: u8 = 2;

/// One loop's sign of life.
#[derive(Debug)]
pub struct Heartbeat {
    name: String,
    origin: Instant,
    /// Milliseconds since `origin` of the last beat.
    last_beat_ms: AtomicU64,
    state: AtomicU8,
}

impl Heartbeat {
    fn elapsed_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// The loop made progress (or is about to start a piece of work that must not hang).
    pub fn beat(&self) {
        self.last_beat_ms.store(self.elapsed_ms(Instant::now()), Ordering::Relaxed);
        self.state.store(ACTIVE, Ordering::Relaxed);
    }

    /// The loop waits for input that may take any time to come; not a hang. The next `beat` ends it.
    pub fn pause(&self) {
        self.state.store(PAUSED, Ordering::Relaxed);
    }

    /// The loop has ended on purpose (e.g. a file source played once).
    pub fn retire(&self) {
        self.state.store(RETIRED, Ordering::Relaxed);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long an active loop has gone without a beat, as of `now`.
    fn silence(&self, now: Instant) -> Option<Duration> {
        match self.state.load(Ordering::Relaxed) {
            ACTIVE => {
                let last = self.last_beat_ms.load(Ordering::Relaxed);
                Some(Duration::from_millis(self.elapsed_ms(now).saturating_sub(last)))
            }
            _ => None,
        }
    }
}

/// Every heartbeat of the agent.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    beats: Mutex<Vec<Arc<Heartbeat>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self { origin: Instant::now(), beats: Mutex::new(Vec::new()) }
    }
}

impl Liveness {
    /// A new heartbeat, active as of now.
    pub fn register(&self, name: impl Into<String>) -> Arc<Heartbeat> {
        let heartbeat = Arc::new(Heartbeat {
            name: name.into(),
            origin: self.origin,
            last_beat_ms: AtomicU64::new(0),
            state: AtomicU8::new(ACTIVE),
        });
        heartbeat.beat();
        self.beats.lock().unwrap_or_else(|p| p.into_inner()).push(heartbeat.clone());
        heartbeat
    }

    /// Loops silent for longer than `stall_after` as of `now`, with how long.
    pub fn stalled(&self, now: Instant, stall_after: Duration) -> Vec<(String, Duration)> {
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|b| b.silence(now).filter(|s| *s > stall_after).map(|s| (b.name.clone(), s)))
            .collect()
    }
}

/// Tells systemd about readiness and life; does nothing when not started by systemd.
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]) {
        tracing::warn!("cannot tell systemd we are ready: {e}");
    }
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Pings the systemd watchdog every half `WATCHDOG_USEC` while no loop has stalled; returns at once
/// when the watchdog is not enabled for this process.
pub async fn run_watchdog(liveness: Arc<Liveness>, stall_after: Duration, mut shutdown: Shutdown) {
    let Some(timeout) = sd_notify::watchdog_enabled() else { return };
    let period = (timeout / 2).max(Duration::from_millis(100));
    tracing::info!("systemd watchdog every {timeout:?}; a loop silent for {stall_after:?} stops the pings");
    let mut reported = false;
    loop {
        let stalled = liveness.stalled(Instant::now(), stall_after);
        if stalled.is_empty() {
            reported = false;
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!("cannot ping the systemd watchdog: {e}");
            }
        } else if !reported {
            reported = true;
            let names: Vec<String> = stalled.iter().map(|(n, s)| format!("{n} (silent {:.0?})", s)).collect();
            tracing::error!("pipeline stalled: {}; no more watchdog pings, systemd will restart us", names.join(", "));
        }
        if shutdown.sleep(period).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_stalled_and_a_paused_one_is_not() {
        let liveness = Liveness::default();
        let _camera = liveness.register("camera gate");
        let inference = liveness.register("inference");
        let later = Instant::now() + Duration::from_secs(5);
        inference.pause();
        let stalled = liveness.stalled(later, Duration::from_secs(2));
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled[0].0, "camera gate");
        assert!(stalled[0].1 >= Duration::from_secs(4));
        assert!(liveness.stalled(Instant::now(), Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn a_beat_revives_and_a_retired_loop_is_never_stalled() {
        let liveness = Liveness::default();
        let camera = liveness.register("camera gate");
        camera.retire();
        assert!(liveness.stalled(Instant::now() + Duration::from_secs(60), Duration::from_secs(1)).is_empty());
        camera.beat();
        assert_eq!(liveness.stalled(Instant::now() + Duration::from_secs(60), Duration::from_secs(1)).len(), 1);
        assert_eq!(camera.name(), "camera gate");
    }
}
