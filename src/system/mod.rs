//! The `system` channel (docs/protocol.md, "Presence and the built-in channels"): the server's own `datetime` tick.
//!
//! `system` is joinable like any topic (a token bound to `system`); on top of whatever backends
//! publish to it through Redis, every `datetime_interval_ms` the process itself sends
//! `[null,null,"system","datetime",{"status":"ok","response":{"datetime":"<RFC 3339 UTC, ms>","counter":<n>}}]`
//! to its own subscribers, with no Redis round trip.
//!
//! What it owns: one ticker thread per process that builds each tick once (one
//! [`Broadcast`], shared by every shard through `Arc`) and hands it to the inbox of every shard
//! that has a local subscriber of `system`, and the lock-free mask of those shards, which the
//! shards update when they gain or lose the topic ([`SystemChannel::shard_interest`]).
//! `counter` is process-wide and increases by one per tick built.
//!
//! What it must never do: wake up while nobody listens (idle is free: with no subscriber
//! anywhere in the process the thread is parked, no timer runs and no tick is built; the shard
//! that gains the first subscriber unparks it), or block a shard (a full inbox drops that tick
//! for that shard, and the inbox counts the drop).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime};

use crate::inbox::{ShardMessage, Shards, MAX_SHARDS};
use crate::protocol::Broadcast;

/// The topic of the server's own ticks.
pub const SYSTEM_TOPIC: &str = "system";
/// The event of the tick.
pub const DATETIME_EVENT: &str = "datetime";

/// The process's `system` channel: who listens, and the ticker.
#[derive(Debug, Default)]
pub struct SystemChannel {
    /// Bit `i` is set while shard `i` has at least one local subscriber of `system`.
    listening_shards: AtomicU64,
    /// Ticks built so far; the last tick's `counter`.
    ticks: AtomicU64,
    /// The ticker thread, to unpark when the first subscriber arrives; unset when disabled.
    ticker: OnceLock<Thread>,
}

impl SystemChannel {
    /// The channel, with its ticker thread running when `interval` is set (`None`: disabled).
    /// The thread lives as long as the process and sleeps while nobody is joined.
    pub fn start(
        interval: Option<Duration>,
        shards: Shards,
    ) -> std::io::Result<Arc<SystemChannel>> {
        let channel = Arc::new(SystemChannel::default());
        if let Some(interval) = interval {
            let ticking = Arc::clone(&channel);
            let handle = std::thread::Builder::new()
                .name("system-ticker".into())
                .spawn(move || ticking.run_ticker(interval, &shards))?;
            // Set before any shard runs, so that no unpark can be missed.
            let _ = channel.ticker.set(handle.thread().clone());
        }
        Ok(channel)
    }

    /// Called by a shard when it gains its first or loses its last local subscriber of
    /// `topic`; anything but `system` is ignored. Lock-free, on the join/leave path only.
    pub fn shard_interest(&self, shard: usize, topic: &str, interested: bool) {
        if topic != SYSTEM_TOPIC || shard >= MAX_SHARDS {
            return;
        }
        let bit = 1u64 << shard;
        if interested {
            let before = self.listening_shards.fetch_or(bit, Ordering::AcqRel);
            if before == 0 {
                if let Some(ticker) = self.ticker.get() {
                    ticker.unpark();
                }
            }
        } else {
            self.listening_shards.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// How many shards have a local subscriber of `system` right now.
    pub fn listening_shards(&self) -> u32 {
        self.listening_shards.load(Ordering::Relaxed).count_ones()
    }

    /// Ticks built since start (the `counter` of the latest one).
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// The ticker thread's life: parked while nobody listens, otherwise one tick per
    /// `interval` on a fixed cadence (a late tick is not made up for with a burst).
    fn run_ticker(&self, interval: Duration, shards: &Shards) {
        loop {
            while self.listening_shards.load(Ordering::Acquire) == 0 {
                std::thread::park();
            }
            let mut next = Instant::now() + interval;
            loop {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                let listening = self.listening_shards.load(Ordering::Acquire);
                if listening == 0 {
                    break;
                }
                self.tick(listening, shards);
                next += interval;
                let now = Instant::now();
                if next < now {
                    next = now + interval;
                }
            }
        }
    }

    /// Builds one tick and hands it to every listening shard.
    fn tick(&self, listening: u64, shards: &Shards) {
        let counter = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = datetime_payload(SystemTime::now(), counter);
        let broadcast = Arc::new(Broadcast::new(
            SYSTEM_TOPIC,
            DATETIME_EVENT,
            payload.as_bytes(),
        ));
        // A full inbox drops this tick for that shard and counts it.
        shards.send_masked(listening, || {
            ShardMessage::Broadcast(Arc::clone(&broadcast))
        });
    }
}

/// The payload of one `datetime` tick:
/// `{"status":"ok","response":{"datetime":"2026-11-27T08:30:00.123Z","counter":7}}`.
pub fn datetime_payload(now: SystemTime, counter: u64) -> String {
    let datetime = humantime::format_rfc3339_millis(now);
    format!(r#"{{"status":"ok","response":{{"datetime":"{datetime}","counter":{counter}}}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_payload_is_rfc3339_utc_with_milliseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_768_200_123);
        assert_eq!(
            datetime_payload(at, 7),
            r#"{"status":"ok","response":{"datetime":"2026-11-27T08:30:00.123Z","counter":7}}"#
        );
    }

    #[test]
    fn only_the_system_topic_changes_the_listening_shards() {
        let channel = SystemChannel::default();
        channel.shard_interest(1, "room:1", true);
        assert_eq!(channel.listening_shards(), 0);
        channel.shard_interest(1, SYSTEM_TOPIC, true);
        channel.shard_interest(3, SYSTEM_TOPIC, true);
        assert_eq!(channel.listening_shards(), 2);
        channel.shard_interest(1, SYSTEM_TOPIC, false);
        assert_eq!(channel.listening_shards(), 1);
        channel.shard_interest(3, SYSTEM_TOPIC, false);
        assert_eq!(channel.listening_shards(), 0);
    }

    #[test]
    fn a_tick_reaches_only_listening_shards_with_an_increasing_counter() {
        let shards = Shards::new(3, 8, 1 << 20);
        let channel = SystemChannel::default();
        channel.tick(0b101, &shards);
        channel.tick(0b001, &shards);
        let counters = |inbox: &crate::inbox::ShardInbox| {
            std::iter::from_fn(|| inbox.try_recv())
                .map(|message| match message {
                    ShardMessage::Broadcast(b) => {
                        assert_eq!(b.topic(), SYSTEM_TOPIC);
                        assert_eq!(b.event(), DATETIME_EVENT);
                        let v: serde_json::Value =
                            serde_json::from_slice(b.payload()).expect("tick payload is JSON");
                        v["response"]["counter"]
                            .as_u64()
                            .expect("counter is a number")
                    }
                    other => panic!("unexpected {other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(counters(shards.inbox(0)), vec![1, 2]);
        assert_eq!(counters(shards.inbox(1)), Vec::<u64>::new());
        assert_eq!(counters(shards.inbox(2)), vec![1]);
        assert_eq!(channel.ticks(), 2);
    }
}
