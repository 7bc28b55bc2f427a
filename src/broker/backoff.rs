//! Reconnect pacing for the Redis core: quick first retries, then a capped exponential wait,
//! so that a Redis restart is noticed within a second or two without hammering a dead host.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(50);
const CAP: Duration = Duration::from_secs(1);

/// The waits between reconnect attempts: 50 ms, 100 ms, 200 ms, … capped at 1 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Backoff {
    /// The wait before the next attempt; each call doubles the following one up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(CAP);
        wait
    }

    /// Back to quick retries after a successful connection.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next_wait(), Duration::from_millis(50));
        assert_eq!(b.next_wait(), Duration::from_millis(100));
        for _ in 0..10 {
            b.next_wait();
        }
        assert_eq!(b.next_wait(), CAP);
        b.reset();
        assert_eq!(b.next_wait(), FIRST);
    }
}
