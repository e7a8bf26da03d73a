//! One shutdown signal that reaches every task: SIGTERM/SIGINT (or a test) triggers it, and each
//! long-lived loop selects on it so the agent can stop sources, flush state and say `stopped`.

use std::time::Duration;

use tokio::sync::watch;

/// Handle held by every task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// The side that triggers shutdown.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    pub fn handle(&self) -> Shutdown {
        Shutdown { receiver: self.sender.subscribe() }
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown is triggered (or its trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.receiver.wait_for(|&stop| stop).await;
    }

    /// Sleeps for `duration`; returns true if shutdown came first.
    pub async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => self.is_triggered(),
            _ = self.wait() => true,
        }
    }
}
