//! What a shard owns, and what all shards share.
//!
//! [`Shared`] is built once per process and read by every shard (configuration, the token
//! authority, the Redis handle); nothing in it is written on a per-message path.
//! [`ShardContext`] is one executor's private state: its connections, its topic table and its
//! scratch buffers. It is only touched from that executor's thread, so `RefCell`, not locks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::auth::TokenAuthority;
use crate::broker::BrokerHandle;
use crate::config::Config;
use crate::inbox::{InterestChange, Shards};
use crate::metrics::{Scrape, ShardStats, StatsSnapshot};

use super::admin_tail::Tails;
use super::connection::Conn;
use super::holds::Holds;
use super::presence_delivery::PendingDiffs;
use super::recovery::Recovery;
use super::topic_table::TopicTable;

/// Size of the per-shard read buffer every connection reads into.
pub const READ_SCRATCH_BYTES: usize = 64 * 1024;
/// A coalesced write gathers frames up to about this many bytes.
pub const COALESCE_BYTES: usize = 64 * 1024;

/// Process-wide, read-only after start.
pub struct Shared {
    /// The effective configuration.
    pub config: Config,
    /// Verifies (and mints) channel tokens.
    pub authority: TokenAuthority,
    /// The Redis core: status, upstream queue, interest changes.
    pub redis: BrokerHandle,
    /// Every shard's inbox, by shard index.
    pub shards: Shards,
    /// This process's presence identity.
    pub node: String,
    /// Every shard's counters, by shard index.
    pub stats: Vec<ShardStats>,
    /// The `system` channel: its ticker and which shards listen.
    pub system: Arc<crate::system::SystemChannel>,
    /// Prometheus metrics: per-shard handles and the `/metrics` rendering.
    pub metrics: crate::metrics::Metrics,
    /// Failed `POST /console/login` attempts, by client address (all shards share them).
    pub console_logins: crate::console::LoginLimiter,
    /// When the process started (the admin channel's `uptime_secs`).
    pub started_at: std::time::Instant,
    /// Every shard's busiest topics with their messages per second over the last stats
    /// interval, by shard index ([`super::topic_rates`]).
    pub topic_rates: Vec<std::sync::Mutex<Vec<(String, f64)>>>,
    /// The shards that have `admin` members, one bit per shard (the stats ticker asks the
    /// deployment for stats while it is not 0).
    pub admin_shards: std::sync::atomic::AtomicU64,
    /// Until when (milliseconds since `started_at`) some admin of the deployment wants this
    /// process's stats in Redis ([`crate::admin::STATS_WANTED_TOPIC`]).
    pub stats_wanted_until_ms: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Every shard's counters as they are now, by shard index.
    pub fn shard_stats(&self) -> Vec<StatsSnapshot> {
        self.stats.iter().map(ShardStats::snapshot).collect()
    }

    /// The counters of the whole process (the sum of the shards).
    pub fn total_stats(&self) -> StatsSnapshot {
        StatsSnapshot::sum(&self.shard_stats())
    }

    /// What `/metrics` reads besides its own registry, as it is now.
    pub fn scrape(&self) -> Scrape {
        let reader = &self.redis.reader_stats;
        Scrape {
            shards: self.shard_stats(),
            inbox_drops: self.shards.inboxes().map(|inbox| inbox.dropped()).collect(),
            redis_reconnects: self.redis.status.reconnects(),
            redis_connected: self.redis.status.is_connected(),
            redis_received: reader.received.load(Ordering::Relaxed),
            redis_unrouted: reader.unrouted.load(Ordering::Relaxed),
            redis_gap_filled: reader.gap_filled.load(Ordering::Relaxed),
            redis_gap_lost: reader.gap_lost.load(Ordering::Relaxed),
            system_ticks: self.system.ticks(),
            system_listening_shards: self.system.listening_shards(),
        }
    }

    /// Milliseconds since the process started.
    pub fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started_at.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Some admin asked for stats now: keep publishing them to Redis for a while.
    pub fn stats_wanted_now(&self) {
        let Some(interval) = self.config.admin_stats_interval() else {
            return;
        };
        let lease = interval.as_millis() as u64 * u64::from(crate::admin::STATS_WANTED_FOR);
        self.stats_wanted_until_ms
            .store(self.uptime_ms().saturating_add(lease), Ordering::Relaxed);
    }

    /// This process's figures for the `admin` channel's `state` and `stats`.
    pub fn process_figures(&self) -> crate::admin::ProcessFigures {
        crate::admin::ProcessFigures {
            node: self.node.clone(),
            per_shard: self.shard_stats(),
            redis_connected: self.redis.status.is_connected(),
            redis_reconnects: self.redis.status.reconnects(),
            inbox_drops: self.shards.dropped()
                + self.redis.reader_stats.inbox_drops.load(Ordering::Relaxed),
            uptime_secs: self.started_at.elapsed().as_secs(),
            redis_mode: self.config.redis_deployment().mode(),
            joins: self.metrics.joins_total(),
            latency_counts: self.metrics.latency_counts(),
            topic_rates: super::topic_rates::busiest(self.topic_rates.iter().flat_map(|rates| {
                rates
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            })),
        }
    }
}

/// One shard's private state.
pub struct ShardContext {
    /// The shard's index (0-based), also its bit in the Redis core's interest masks.
    pub id: usize,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Local topic → subscribers.
    pub topics: RefCell<TopicTable>,
    /// Every open WebSocket connection of this shard, by id.
    pub conns: RefCell<HashMap<u64, Rc<Conn>>>,
    next_conn_id: Cell<u64>,
    next_phx_ref: Cell<u64>,
    /// Connections read into this one buffer; only leftovers of partial frames are copied out.
    pub read_scratch: RefCell<Vec<u8>>,
    write_buffers: RefCell<Vec<Vec<u8>>>,
    /// Set when the shard is shutting down: no new connections, no new joins.
    pub shutting_down: Cell<bool>,
    /// Pushes handed to the publisher and not answered yet; shutdown waits for them.
    pub pushes_in_flight: Cell<u64>,
    /// Presence diffs waiting for their topic's batching window to end.
    pub pending_diffs: RefCell<HashMap<String, PendingDiffs>>,
    /// Admin connections tailing a topic (`tail`).
    pub tails: RefCell<Tails>,
    /// Holds on each topic's interest: one per subscriber in the topic table, one per join
    /// still waiting for its reply. The Redis core is told when a topic's count leaves or
    /// reaches 0.
    holds: RefCell<Holds>,
    /// Joins waiting for their reply, and what the shard knows of its confirmed topics.
    pub recovery: RefCell<Recovery>,
}

impl ShardContext {
    /// A fresh shard.
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        Self {
            id,
            shared,
            topics: RefCell::new(TopicTable::default()),
            conns: RefCell::new(HashMap::new()),
            next_conn_id: Cell::new(1),
            next_phx_ref: Cell::new(1),
            read_scratch: RefCell::new(vec![0; READ_SCRATCH_BYTES]),
            write_buffers: RefCell::new(Vec::new()),
            shutting_down: Cell::new(false),
            pushes_in_flight: Cell::new(0),
            pending_diffs: RefCell::new(HashMap::new()),
            tails: RefCell::new(Tails::default()),
            holds: RefCell::new(Holds::default()),
            recovery: RefCell::new(Recovery::default()),
        }
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }

    /// This shard's metrics handles.
    pub fn metrics(&self) -> &crate::metrics::ShardMetrics {
        self.shared.metrics.shard(self.id)
    }

    /// A connection id unique within this shard.
    pub fn next_conn_id(&self) -> u64 {
        let id = self.next_conn_id.get();
        self.next_conn_id.set(id + 1);
        id
    }

    /// A presence reference unique across the deployment: `<node>.<shard>.<conn>.<n>`, so that
    /// the socket a presence belongs to can be told from it (admin `disconnect` counts them).
    pub fn next_phx_ref(&self, conn: u64) -> String {
        let n = self.next_phx_ref.get();
        self.next_phx_ref.set(n + 1);
        format!("{}.{}.{conn}.{n}", self.shared.node, self.id)
    }

    /// Adds `conn` to `topic`, holding the topic's interest for it.
    pub fn subscribe(&self, topic: &str, conn: &Rc<Conn>) {
        if self.topics.borrow_mut().subscribe(topic, conn) {
            self.hold(topic);
        }
    }

    /// Removes `conn_id` from `topic`, giving its hold back.
    pub fn unsubscribe(&self, topic: &str, conn_id: u64) {
        if self.topics.borrow_mut().unsubscribe(topic, conn_id) {
            self.release(topic);
        }
    }

    /// Makes admin connection `conn_id` tail `topic` (or nothing). A tailed topic is held like
    /// a subscriber's: the shard keeps its Redis interest (and its confirmation) while tailed.
    pub fn set_tail(&self, conn_id: u64, topic: Option<String>) {
        let change = self.tails.borrow_mut().set(conn_id, topic);
        if let Some(stopped) = change.stopped {
            self.release(&stopped);
        }
        if let Some(started) = change.started {
            self.hold(&started);
        }
    }

    /// Takes one hold on `topic`'s interest (the first tells the Redis core).
    pub fn hold(&self, topic: &str) {
        let started = self.holds.borrow_mut().take(topic);
        if let Some(generation) = started {
            self.tell_interest(topic, true, generation);
        }
    }

    /// Gives one hold back (the last tells the Redis core, and the topic's confirmation is
    /// forgotten).
    pub fn release(&self, topic: &str) {
        let ended = self.holds.borrow_mut().give_back(topic);
        if let Some(generation) = ended {
            self.recovery.borrow_mut().forget(topic);
            self.tell_interest(topic, false, generation);
        }
    }

    /// The generation of the shard's current holding of `topic`, if it holds it.
    pub fn holding_generation(&self, topic: &str) -> Option<u64> {
        self.holds.borrow().generation(topic)
    }

    fn tell_interest(&self, topic: &str, interested: bool, generation: u64) {
        self.shared
            .system
            .shard_interest(self.id, topic, interested);
        if topic == crate::admin::ADMIN_TOPIC {
            let bit = 1u64 << self.id;
            match interested {
                true => self.shared.admin_shards.fetch_or(bit, Ordering::Relaxed),
                false => self.shared.admin_shards.fetch_and(!bit, Ordering::Relaxed),
            };
        }
        if topic == crate::admin::STATS_WANTED_TOPIC && self.id == 0 {
            // Shard 0 listens to it for the life of the process ([`Self::listen_for_stats_requests`]).
            return;
        }
        // The reader owns the receiving end for the life of the process.
        let _ = self.shared.redis.interest.send(InterestChange {
            shard: self.id,
            topic: topic.to_owned(),
            interested,
            generation,
        });
    }

    /// Shard 0 of every process listens to [`crate::admin::STATS_WANTED_TOPIC`] for the life
    /// of the process, whoever joins or leaves it, so that an admin anywhere can ask for stats.
    pub fn listen_for_stats_requests(&self) {
        let _ = self.shared.redis.interest.send(InterestChange {
            shard: self.id,
            topic: crate::admin::STATS_WANTED_TOPIC.to_owned(),
            interested: true,
            // Not a holding: no join waits for its confirmation.
            generation: 0,
        });
    }

    /// A buffer for coalescing frames into one write; give it back with [`Self::return_write_buffer`].
    pub fn take_write_buffer(&self) -> Vec<u8> {
        self.write_buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(COALESCE_BYTES))
    }

    /// Returns a coalescing buffer to the shard's pool (oversized ones are freed).
    pub fn return_write_buffer(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() <= 2 * COALESCE_BYTES {
            buffer.clear();
            let mut pool = self.write_buffers.borrow_mut();
            if pool.len() < 8 {
                pool.push(buffer);
            }
        }
    }
}
