//! The Redis connection state as every shard and the HTTP routes see it.
//!
//! Written only by the Redis core threads, read lock-free by everyone else (`/healthz`, the
//! push path that must answer `backend unavailable` instead of a false `ok`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Whether the subscriber, the publisher and the sharded subscriber connections are up, and
/// how often they came back.
#[derive(Debug, Default)]
pub struct RedisStatus {
    subscriber_up: AtomicBool,
    publisher_up: AtomicBool,
    /// The `SSUBSCRIBE` connection (messages published with the function).
    sharded_up: AtomicBool,
    reconnects: AtomicU64,
    /// Set by the reader when its connection changed state: the publisher, which only notices
    /// a dead connection when it next uses it, then checks its own at once.
    publisher_should_probe: AtomicBool,
    /// Cluster masters the publisher cannot reach now (their slots' pushes and presence fail).
    unreachable_masters: Mutex<Vec<String>>,
    /// What the sharded subscriber cannot do now (masters it cannot reach, topics waiting for
    /// a subscription), one sentence each.
    sharded_degraded: Mutex<Vec<String>>,
}

impl RedisStatus {
    /// True when every connection is up: only then is the server fully serving.
    pub fn is_connected(&self) -> bool {
        self.subscriber_up.load(Ordering::Acquire)
            && self.publisher_up.load(Ordering::Acquire)
            && self.sharded_up.load(Ordering::Acquire)
    }

    /// What is degraded now, one sentence each (empty when every part works): `/healthz`
    /// says it. A part that is down altogether is said too.
    pub fn degraded(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.subscriber_up.load(Ordering::Acquire) {
            out.push("subscriber: disconnected (PSUBSCRIBE to:*)".to_owned());
        }
        if !self.publisher_up.load(Ordering::Acquire) {
            out.push("publisher: disconnected (pushes are refused)".to_owned());
        }
        if !self.sharded_up.load(Ordering::Acquire) {
            out.push("sharded subscriber: disconnected (SSUBSCRIBE)".to_owned());
        }
        for master in lock(&self.unreachable_masters).iter() {
            out.push(format!("publisher: cluster master {master} unreachable"));
        }
        out.extend(lock(&self.sharded_degraded).iter().cloned());
        out
    }

    pub(crate) fn set_unreachable_masters(&self, masters: Vec<String>) {
        let mut current = lock(&self.unreachable_masters);
        if *current != masters {
            *current = masters;
        }
    }

    pub(crate) fn set_sharded_degraded(&self, sentences: Vec<String>) {
        let mut current = lock(&self.sharded_degraded);
        if *current != sentences {
            *current = sentences;
        }
    }

    /// True when pushes can be published right now.
    pub fn can_publish(&self) -> bool {
        self.publisher_up.load(Ordering::Acquire)
    }

    /// True when the sharded subscriber's connection is up (joins then wait for their topic's
    /// subscription to be confirmed).
    pub fn is_sharded_up(&self) -> bool {
        self.sharded_up.load(Ordering::Acquire)
    }

    /// Number of times a connection was re-established after being lost.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn set_subscriber_up(&self, up: bool) {
        self.subscriber_up.store(up, Ordering::Release);
    }

    pub(crate) fn set_sharded_up(&self, up: bool) {
        self.sharded_up.store(up, Ordering::Release);
    }

    pub(crate) fn set_publisher_up(&self, up: bool) {
        self.publisher_up.store(up, Ordering::Release);
    }

    pub(crate) fn ask_publisher_to_probe(&self) {
        self.publisher_should_probe.store(true, Ordering::Release);
    }

    pub(crate) fn take_publisher_probe(&self) -> bool {
        self.publisher_should_probe.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
