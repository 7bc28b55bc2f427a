//! Counters shared between the load threads and the coordinator, and CPU / memory probes.
//!
//! Each load thread owns one [`ThreadStats`]; only that thread writes it on the per-message path
//! (relaxed atomics and an uncontended mutex), the coordinator reads it once a second and at the ends
//! of a window. Nothing here blocks for long.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Latencies are recorded in µs, up to one hour, with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// What one load thread (or the Redis subscriber) has seen.
pub struct ThreadStats {
    /// Clients whose join was answered `ok`.
    pub joined: AtomicU64,
    /// Clients whose connect, token, upgrade or join failed or timed out.
    pub join_failed: AtomicU64,
    /// Joined clients whose connection closed before the end.
    pub dropped: AtomicU64,
    /// Measured messages received with a stamp inside the window.
    pub delivered: AtomicU64,
    /// Measured messages received with a stamp outside the window (warmup, previous step).
    pub delivered_outside: AtomicU64,
    /// Pushes sent with a stamp inside the window (upstream).
    pub pushes_sent: AtomicU64,
    /// Pushes sent in total.
    pub pushes_total: AtomicU64,
    /// Frames that were not measured messages (replies, presence, …).
    pub other_frames: AtomicU64,
    /// Largest latency seen so far in the window, µs (for the progress line).
    pub max_latency_us: AtomicU64,
    /// Latency of messages in the window, µs.
    pub latency: Mutex<Histogram<u64>>,
    /// Connect + token + upgrade + join, µs.
    pub join_latency: Mutex<Histogram<u64>>,
    /// The first failure's reason, to tell the user why.
    pub first_error: Mutex<Option<String>>,
}

impl Default for ThreadStats {
    fn default() -> Self {
        ThreadStats {
            joined: AtomicU64::new(0),
            join_failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_outside: AtomicU64::new(0),
            pushes_sent: AtomicU64::new(0),
            pushes_total: AtomicU64::new(0),
            other_frames: AtomicU64::new(0),
            max_latency_us: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
            join_latency: Mutex::new(new_histogram()),
            first_error: Mutex::new(None),
        }
    }
}

impl ThreadStats {
    /// Records one measured message received at `now_us` that was stamped `t_us`.
    pub fn record_delivery(&self, in_window: bool, t_us: u64, now_us: u64) {
        if !in_window {
            self.delivered_outside.fetch_add(1, Relaxed);
            return;
        }
        let lat = now_us.saturating_sub(t_us).max(1);
        self.delivered.fetch_add(1, Relaxed);
        if lat > self.max_latency_us.load(Relaxed) {
            self.max_latency_us.store(lat, Relaxed);
        }
        if let Ok(mut h) = self.latency.lock() {
            h.saturating_record(lat);
        }
    }

    /// Keeps the first error message.
    pub fn note_error(&self, e: String) {
        if let Ok(mut g) = self.first_error.lock() {
            if g.is_none() {
                *g = Some(e);
            }
        }
    }

    /// Clears the window counters and histogram (between steps).
    pub fn reset_window(&self) {
        self.delivered.store(0, Relaxed);
        self.delivered_outside.store(0, Relaxed);
        self.pushes_sent.store(0, Relaxed);
        self.max_latency_us.store(0, Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            h.reset();
        }
    }
}

/// Sums of all threads' counters at one instant.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub joined: u64,
    pub join_failed: u64,
    pub dropped: u64,
    pub delivered: u64,
    pub delivered_outside: u64,
    pub pushes_sent: u64,
    pub pushes_total: u64,
    pub other_frames: u64,
    pub max_latency_us: u64,
}

impl Totals {
    /// Adds another process's counters (sums; the maximum latency is a maximum).
    pub fn add(&mut self, o: &Totals) {
        self.joined += o.joined;
        self.join_failed += o.join_failed;
        self.dropped += o.dropped;
        self.delivered += o.delivered;
        self.delivered_outside += o.delivered_outside;
        self.pushes_sent += o.pushes_sent;
        self.pushes_total += o.pushes_total;
        self.other_frames += o.other_frames;
        self.max_latency_us = self.max_latency_us.max(o.max_latency_us);
    }
}

/// Adds up the counters of `stats`.
pub fn totals(stats: &[std::sync::Arc<ThreadStats>]) -> Totals {
    let mut t = Totals::default();
    for s in stats {
        t.joined += s.joined.load(Relaxed);
        t.join_failed += s.join_failed.load(Relaxed);
        t.dropped += s.dropped.load(Relaxed);
        t.delivered += s.delivered.load(Relaxed);
        t.delivered_outside += s.delivered_outside.load(Relaxed);
        t.pushes_sent += s.pushes_sent.load(Relaxed);
        t.pushes_total += s.pushes_total.load(Relaxed);
        t.other_frames += s.other_frames.load(Relaxed);
        t.max_latency_us = t.max_latency_us.max(s.max_latency_us.load(Relaxed));
    }
    t
}

/// Merges the window latency histograms of `stats`.
pub fn merged_latency(stats: &[std::sync::Arc<ThreadStats>]) -> Histogram<u64> {
    let mut h = new_histogram();
    for s in stats {
        if let Ok(g) = s.latency.lock() {
            let _ = h.add(&*g);
        }
    }
    h
}

/// Merges the join latency histograms of `stats`.
pub fn merged_join_latency(stats: &[std::sync::Arc<ThreadStats>]) -> Histogram<u64> {
    let mut h = new_histogram();
    for s in stats {
        if let Ok(g) = s.join_latency.lock() {
            let _ = h.add(&*g);
        }
    }
    h
}

/// CPU time (user + system) of process `pid` in µs, from `/proc/<pid>/stat` (10 ms resolution).
pub fn process_cpu_us(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&text).map(|ticks| ticks * 1_000_000 / clock_ticks_per_sec())
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 → index 11, stime index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time of this process (all threads) in µs, from getrusage (µs resolution).
pub fn own_cpu_us() -> u64 {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resident set size of process `pid` in bytes, from `/proc/<pid>/status`.
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&text)
}

/// The `VmRSS:` line of a `/proc/<pid>/status`, in bytes.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name_is_parsed() {
        let line = "1234 (tokio runtime) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 99 1000 200";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
    }

    #[test]
    fn own_stat_is_readable() {
        assert!(process_cpu_us(std::process::id()).is_some());
        assert!(process_rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn vmrss_is_read_in_bytes() {
        assert_eq!(
            parse_vmrss("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
    }

    #[test]
    fn deliveries_outside_the_window_are_not_in_the_histogram() {
        let s = ThreadStats::default();
        s.record_delivery(true, 100, 350);
        s.record_delivery(false, 100, 9000);
        assert_eq!(s.delivered.load(Relaxed), 1);
        assert_eq!(s.delivered_outside.load(Relaxed), 1);
        assert_eq!(s.latency.lock().unwrap().len(), 1);
        assert_eq!(s.max_latency_us.load(Relaxed), 250);
        s.reset_window();
        assert_eq!(s.latency.lock().unwrap().len(), 0);
    }
}
