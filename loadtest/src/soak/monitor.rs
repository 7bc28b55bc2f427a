//! The coordinator's watch over a running soak: samples the server's RSS every `rss_every` s and
//! prints a progress line every 5 s while it waits for a phase to end. It reads the shared state
//! and never changes it.

use super::shared::Shared;
use crate::stamp::now_us;
use crate::stats::process_rss_bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

pub(super) struct Monitor {
    server_pid: Option<u32>,
    /// `[seconds since start, MiB]`.
    rss: Vec<(f64, f64)>,
    rss_every: u64,
    next_rss: u64,
    next_line: u64,
}

impl Monitor {
    pub(super) fn new(sh: &Shared, server_pid: Option<u32>) -> Self {
        Monitor {
            server_pid,
            rss: Vec::new(),
            rss_every: (sh.p.rss_every * 1e6) as u64,
            next_rss: sh.t0,
            next_line: sh.t0 + 5_000_000,
        }
    }

    /// One RSS sample of the server, when its pid is known.
    pub(super) fn sample(&mut self, sh: &Shared) {
        if let Some(b) = self.server_pid.and_then(process_rss_bytes) {
            self.rss
                .push((sh.secs(now_us()), b as f64 / (1 << 20) as f64));
        }
    }

    /// Sleeps until `until` (µs), sampling and printing on schedule; `phase` names the line.
    pub(super) fn wait_until(&mut self, sh: &Shared, until: u64, phase: &str) {
        while now_us() < until {
            let now = now_us();
            if now >= self.next_rss {
                self.sample(sh);
                self.next_rss += self.rss_every;
            }
            if now >= self.next_line {
                self.next_line += 5_000_000;
                self.progress_line(sh, now, phase);
            }
            std::thread::sleep(
                Duration::from_millis(50)
                    .min(Duration::from_micros(until.saturating_sub(now_us()))),
            );
        }
    }

    fn progress_line(&self, sh: &Shared, now: u64, phase: &str) {
        let (sent, ok, err) = sh.ledger.lock().map(|l| l.progress()).unwrap_or_default();
        eprintln!(
            "[{:6.1}s] {phase:<6} live={} joins={} drops={} pushes={sent} ok={ok} err={err} published={} deliveries={} slow_1013={} restarts={} rss={}",
            sh.secs(now),
            sh.live.load(Relaxed),
            sh.c.joins_ok.load(Relaxed),
            sh.c.unexpected_drops.load(Relaxed),
            sh.c.published.load(Relaxed),
            sh.c.deliveries.load(Relaxed),
            sh.c.slow_1013.load(Relaxed),
            sh.restarts.lock().map(|r| r.len()).unwrap_or(0),
            self.rss.last().map(|r| format!("{:.1}MiB", r.1)).unwrap_or("-".into()),
        );
    }

    /// The samples taken, `[seconds since start, MiB]`.
    pub(super) fn into_series(self) -> Vec<(f64, f64)> {
        self.rss
    }
}
