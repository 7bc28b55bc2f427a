//! Repeated failed console logins are refused for a while: at most [`MAX_FAILURES`] wrong keys
//! per client address per [`WINDOW`], so that the `admin_key` cannot be guessed at network
//! speed. Shared by every shard (one lock, taken only by `POST /console/login`).
//!
//! What it must never do: grow without bound (at most [`MAX_TRACKED`] addresses; when that many
//! addresses are failing at once, every login is refused until the oldest window ends: a
//! lock-out under attack rather than a way around the limit).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins allowed per address within [`WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// How long failures are remembered, from the first one.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at once.
const MAX_TRACKED: usize = 4096;

/// One address's failures in its current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    first_at: Instant,
    count: u32,
}

/// The failed logins of the last [`WINDOW`], by client address.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl LoginLimiter {
    /// `Err(seconds to wait)` when `ip` may not try now.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut failures = self.lock();
        failures.retain(|_, f| now.duration_since(f.first_at) < WINDOW);
        let blocked_until = match failures.get(&ip) {
            Some(f) if f.count >= MAX_FAILURES => Some(f.first_at + WINDOW),
            Some(_) => None,
            None if failures.len() >= MAX_TRACKED => failures.values().map(|f| f.first_at).min(),
            None => None,
        };
        match blocked_until {
            Some(until) => Err(until.saturating_duration_since(now).as_secs().max(1)),
            None => Ok(()),
        }
    }

    /// Counts one wrong key from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.lock();
        let entry = failures.entry(ip).or_insert(Failures {
            first_at: now,
            count: 0,
        });
        entry.count = entry.count.saturating_add(1);
    }

    /// Forgets `ip`'s failures after a good key.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_max_failures_until_its_window_ends() {
        let limiter = LoginLimiter::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let start = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert_eq!(limiter.check(ip, start), Ok(()));
            limiter.failed(ip, start);
        }
        let wait = limiter
            .check(ip, start)
            .expect_err("blocked after the failures");
        assert_eq!(wait, WINDOW.as_secs());
        assert_eq!(
            limiter.check(other, start),
            Ok(()),
            "other addresses may try"
        );
        assert_eq!(
            limiter.check(ip, start + WINDOW),
            Ok(()),
            "the window ended"
        );
    }

    #[test]
    fn a_good_key_forgets_the_failures() {
        let limiter = LoginLimiter::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let now = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            limiter.failed(ip, now);
        }
        limiter.succeeded(ip);
        limiter.failed(ip, now);
        assert_eq!(limiter.check(ip, now), Ok(()));
    }

    #[test]
    fn too_many_failing_addresses_lock_everyone_out_instead_of_growing() {
        let limiter = LoginLimiter::default();
        let now = Instant::now();
        for n in 0..MAX_TRACKED as u32 {
            limiter.failed(IpAddr::from(n.to_be_bytes()), now);
        }
        assert!(limiter.check([192, 168, 0, 1].into(), now).is_err());
        assert_eq!(limiter.check([192, 168, 0, 1].into(), now + WINDOW), Ok(()));
    }
}
