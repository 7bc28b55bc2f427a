//! Per-shard counters, readable from any thread without locks.
//!
//! Each shard writes only its own [`ShardStats`] (relaxed atomics on a cache line nobody else
//! writes), so counting costs an uncontended add on the hot path. Readers (the admin `stats`
//! ticker, `/metrics`) sum the shards when they need a figure.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

/// One shard's counters. Gauges go up and down; totals only up.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardStats {
    /// Open WebSocket connections (gauge).
    pub connections: AtomicU64,
    /// Joined channel instances (gauge).
    pub channels: AtomicU64,
    /// Frames queued to clients (total).
    pub frames_out: AtomicU64,
    /// Bytes of those frames (total).
    pub bytes_out: AtomicU64,
    /// Client messages received (total).
    pub messages_in: AtomicU64,
    /// Bytes of those messages (total).
    pub bytes_in: AtomicU64,
    /// Connections closed as slow consumers (1013) (total).
    pub slow_consumer_closes: AtomicU64,
}

impl ShardStats {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from gauge `counter`.
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// The counters as plain numbers.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: get(&self.connections),
            channels: get(&self.channels),
            frames_out: get(&self.frames_out),
            bytes_out: get(&self.bytes_out),
            messages_in: get(&self.messages_in),
            bytes_in: get(&self.bytes_in),
            slow_consumer_closes: get(&self.slow_consumer_closes),
        }
    }
}

/// A copy of one shard's counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`ShardStats::connections`].
    pub connections: u64,
    /// See [`ShardStats::channels`].
    pub channels: u64,
    /// See [`ShardStats::frames_out`].
    pub frames_out: u64,
    /// See [`ShardStats::bytes_out`].
    pub bytes_out: u64,
    /// See [`ShardStats::messages_in`].
    pub messages_in: u64,
    /// See [`ShardStats::bytes_in`].
    pub bytes_in: u64,
    /// See [`ShardStats::slow_consumer_closes`].
    pub slow_consumer_closes: u64,
}

impl StatsSnapshot {
    /// The sum of several shards.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a StatsSnapshot>) -> StatsSnapshot {
        all.into_iter()
            .fold(StatsSnapshot::default(), |a, b| StatsSnapshot {
                connections: a.connections + b.connections,
                channels: a.channels + b.channels,
                frames_out: a.frames_out + b.frames_out,
                bytes_out: a.bytes_out + b.bytes_out,
                messages_in: a.messages_in + b.messages_in,
                bytes_in: a.bytes_in + b.bytes_in,
                slow_consumer_closes: a.slow_consumer_closes + b.slow_consumer_closes,
            })
    }

    /// Per-second rates of the totals between `earlier` and `self`, `seconds` apart.
    pub fn rates_since(&self, earlier: &StatsSnapshot, seconds: f64) -> Value {
        let rate = |now: u64, then: u64| {
            if seconds > 0.0 {
                ((now.saturating_sub(then)) as f64 / seconds * 10.0).round() / 10.0
            } else {
                0.0
            }
        };
        json!({
            "messages_out": rate(self.frames_out, earlier.frames_out),
            "bytes_out": rate(self.bytes_out, earlier.bytes_out),
            "messages_in": rate(self.messages_in, earlier.messages_in),
            "bytes_in": rate(self.bytes_in, earlier.bytes_in),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_sum_and_rates_are_per_second() {
        let a = ShardStats::default();
        ShardStats::add(&a.frames_out, 10);
        ShardStats::add(&a.connections, 2);
        let b = ShardStats::default();
        ShardStats::add(&b.frames_out, 30);
        let total = StatsSnapshot::sum([&a.snapshot(), &b.snapshot()]);
        assert_eq!(total.frames_out, 40);
        assert_eq!(total.connections, 2);
        let rates = total.rates_since(&StatsSnapshot::default(), 2.0);
        assert_eq!(rates["messages_out"], 20.0);
    }
}
