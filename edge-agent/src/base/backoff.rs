//! Reconnect backoff for every link that can drop (cameras, the broker): capped, doubling, with
//! jitter so a fleet of boxes restarted together does not reconnect in step.

use std::time::Duration;

/// Capped exponential backoff with jitter, so a fleet of boxes does not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap, current: first }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.cap);
        // Up to +25 % jitter from the clock's low bits; no RNG crate needed for this.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        let floors = [1, 2, 4, 5, 5];
        for (delay, floor) in delays.iter().zip(floors) {
            let floor = Duration::from_secs(floor);
            assert!(*delay >= floor && *delay <= floor.mul_f64(1.25), "{delay:?} vs {floor:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(1250));
    }
}
