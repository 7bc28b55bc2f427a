//! Prometheus metrics, served as text on `GET /metrics` (every series is listed, with its
//! meaning, in docs/operations.md "Metrics").
//!
//! What it owns: the process's [`prometheus::Registry`] (a private one: no global state, so
//! that nothing else in the process can add to or collide with it), the per-shard handles of
//! the counters that only metrics needs ([`ShardMetrics`]), and the rendering, which also reads
//! the counters other parts of the server already keep for themselves (the shards'
//! [`ShardStats`], the inboxes' drop counts, the Redis core's status and reader counters, the
//! `system` channel) at scrape time, from a [`Scrape`] the caller fills in. It owns the shards'
//! plain counters ([`ShardStats`]) too, since they are what most series are made of.
//!
//! It is a leaf: it imports no other module of the server but `protocol` and `inbox`'s
//! message types, so every layer may count through it.
//!
//! What it must never do: take a lock or look anything up by name on a per-message path. Every
//! label combination is resolved once, when the server starts; a shard then holds plain handles
//! (an atomic add each, on a value only that shard writes, so the cache line stays with its
//! core) and the latency histogram's `observe` is lock-free. Only rendering, on a scrape,
//! gathers, sums and formats.
//!
//! The `prometheus` crate (TiKV's) was chosen over `metrics` + `metrics-exporter-prometheus`
//! and `prometheus-client` because its histograms have fixed buckets with atomic counts (the
//! `metrics` exporter stores every sample until the next render or upkeep, unbounded while
//! nobody scrapes, and `prometheus-client` takes a lock in `observe`), because it works on an
//! explicit registry, and because it renders the classic text format (`version=0.0.4`) that
//! [`crate::http::metrics_response`] announces.

mod render;
mod shard_stats;

use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::inbox::PushOutcome;
use crate::protocol::Refusal;

pub use render::{render, Scrape};
pub use shard_stats::{ShardStats, StatsSnapshot};

/// Every series name starts with this.
pub const PREFIX: &str = "channel";

/// Upper bounds (seconds) of the Redis-receive → queued-for-the-socket latency buckets:
/// 10 µs to 1 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The join refusal reasons that get their own series ([`Refusal::JOIN`]); any other reason
/// is counted as `other`.
pub const REFUSAL_REASONS: [Refusal; Refusal::JOIN.len()] = Refusal::JOIN;

/// The process's metrics: the registry and every shard's handles.
pub struct Metrics {
    registry: Registry,
    shards: Vec<ShardMetrics>,
}

/// One shard's handles, resolved once at start. Only that shard writes through them.
#[derive(Clone)]
pub struct ShardMetrics {
    /// WebSocket connections upgraded on this shard.
    pub connections_opened: IntCounter,
    /// WebSocket connections of this shard that ended.
    pub connections_closed: IntCounter,
    /// Joins answered `ok`.
    pub joins: IntCounter,
    /// Join refusals, one handle per reason of [`REFUSAL_REASONS`], then `other`.
    refusals: [IntCounter; REFUSAL_REASONS.len() + 1],
    /// Joins with a `since` whose messages after it were all replayed (PROTOCOL §12).
    pub joins_recovered: IntCounter,
    /// Joins with a `since` too old or of another epoch: `recovered: false`, nothing replayed.
    pub joins_not_recovered: IntCounter,
    /// Messages replayed from history to recovering joins.
    pub replayed_messages: IntCounter,
    /// Client pushes Redis accepted.
    pub pushes_published: IntCounter,
    /// Client pushes answered `backend unavailable` by the publisher.
    pub pushes_failed: IntCounter,
    /// Redis-receive → queued on every local subscriber, per downstream message.
    pub downstream_latency: Histogram,
    /// WebSocket upgrades refused with 403 because of their `Origin` (`allowed_origins`,
    /// `allow_missing_origin`).
    pub origin_refusals: IntCounter,
}

impl Metrics {
    /// Registers every series and resolves the handles of `shards` shards.
    pub fn new(shards: usize) -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let family = IntCounterVec::new(Opts::new(format!("{PREFIX}_{name}"), help), labels)
                .expect("metric names and labels here are valid Prometheus identifiers");
            registry
                .register(Box::new(family.clone()))
                .expect("each series is registered once");
            family
        };
        let opened = counter(
            "connections_opened_total",
            "WebSocket connections opened (upgraded).",
            &["shard"],
        );
        let closed = counter(
            "connections_closed_total",
            "WebSocket connections closed, for any reason.",
            &["shard"],
        );
        let joins = counter("joins_total", "Joins answered ok.", &["shard"]);
        let refusals = counter(
            "join_refusals_total",
            "Joins refused, by the reason sent to the client.",
            &["shard", "reason"],
        );
        let recoveries = counter(
            "recovery_joins_total",
            "Joins with a `since` position, by whether every message after it was replayed \
             (recovered=\"true\") or it was too old or of another epoch (\"false\").",
            &["shard", "recovered"],
        );
        let replayed = counter(
            "replayed_messages_total",
            "Messages replayed from a topic's history to joins that recovered.",
            &["shard"],
        );
        let published = counter(
            "pushes_published_total",
            "Client pushes published to Redis (PUBLISH from:<topic>:<event> accepted).",
            &["shard"],
        );
        let failed = counter(
            "pushes_failed_total",
            "Client pushes the publisher answered `backend unavailable` (Redis down or stalled).",
            &["shard"],
        );
        let origin_refused = counter(
            "origin_refusals_total",
            "WebSocket upgrades refused with 403 because their Origin is not in allowed_origins \
             (or is missing and allow_missing_origin is false).",
            &["shard"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new(
                format!("{PREFIX}_downstream_latency_seconds"),
                "From the Redis reader reading a message to the shard having queued it on every \
                 local subscriber's socket, per message and shard.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["shard"],
        )
        .expect("the histogram definition is valid");
        registry
            .register(Box::new(latency.clone()))
            .expect("each series is registered once");

        let shards = (0..shards)
            .map(|shard| {
                let shard = shard.to_string();
                let label = [shard.as_str()];
                let refusal = |reason: &str| refusals.with_label_values(&[shard.as_str(), reason]);
                ShardMetrics {
                    connections_opened: opened.with_label_values(&label),
                    connections_closed: closed.with_label_values(&label),
                    joins: joins.with_label_values(&label),
                    refusals: std::array::from_fn(|i| {
                        refusal(REFUSAL_REASONS.get(i).map_or("other", |r| r.as_str()))
                    }),
                    joins_recovered: recoveries.with_label_values(&[shard.as_str(), "true"]),
                    joins_not_recovered: recoveries.with_label_values(&[shard.as_str(), "false"]),
                    replayed_messages: replayed.with_label_values(&label),
                    pushes_published: published.with_label_values(&label),
                    pushes_failed: failed.with_label_values(&label),
                    downstream_latency: latency.with_label_values(&label),
                    origin_refusals: origin_refused.with_label_values(&label),
                }
            })
            .collect();
        Metrics { registry, shards }
    }

    /// The handles of shard `id`.
    pub fn shard(&self, id: usize) -> &ShardMetrics {
        &self.shards[id]
    }

    /// Joins answered ok since start, all shards.
    pub fn joins_total(&self) -> u64 {
        self.shards.iter().map(|s| s.joins.get()).sum()
    }

    /// The downstream latency histogram of all shards: the count of each bucket of
    /// [`LATENCY_BUCKETS`] (not cumulative), then the count above the last bound.
    pub fn latency_counts(&self) -> Vec<u64> {
        use prometheus::core::Metric as _;
        let mut cumulative = vec![0u64; LATENCY_BUCKETS.len()];
        let mut total = 0u64;
        for shard in &self.shards {
            let metric = shard.downstream_latency.metric();
            let histogram = metric.get_histogram();
            total += histogram.get_sample_count();
            for (sum, bucket) in cumulative.iter_mut().zip(histogram.get_bucket()) {
                *sum += bucket.cumulative_count();
            }
        }
        let mut counts = Vec::with_capacity(cumulative.len() + 1);
        let mut below = 0;
        for c in cumulative {
            counts.push(c.saturating_sub(below));
            below = c;
        }
        counts.push(total.saturating_sub(below));
        counts
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl ShardMetrics {
    /// Counts a join refused with `reason`.
    pub fn join_refused(&self, reason: Refusal) {
        let index = REFUSAL_REASONS
            .iter()
            .position(|known| *known == reason)
            .unwrap_or(REFUSAL_REASONS.len());
        self.refusals[index].inc();
    }

    /// Counts the publisher's verdict on one client push.
    pub fn push_outcome(&self, outcome: PushOutcome) {
        match outcome {
            PushOutcome::Published => self.pushes_published.inc(),
            PushOutcome::BackendUnavailable => self.pushes_failed.inc(),
        }
    }

    /// Records one downstream message the shard has just queued on its subscribers, read from
    /// Redis at `received_at`.
    pub fn downstream_queued(&self, received_at: Instant) {
        self.downstream_latency
            .observe(received_at.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason_and_non_join_ones_as_other() {
        let metrics = Metrics::new(2);
        let shard = metrics.shard(1);
        shard.join_refused(Refusal::Unauthorized);
        shard.join_refused(Refusal::Unauthorized);
        shard.join_refused(Refusal::InvalidTopic);
        shard.join_refused(Refusal::ReservedEvent);
        assert_eq!(shard.refusals[0].get(), 2);
        assert_eq!(shard.refusals[2].get(), 1);
        assert_eq!(shard.refusals[REFUSAL_REASONS.len()].get(), 1);
        assert_eq!(metrics.shard(0).refusals[0].get(), 0);
    }

    #[test]
    fn latency_counts_are_per_bucket_over_all_shards() {
        let metrics = Metrics::new(2);
        metrics.shard(0).downstream_latency.observe(0.000_005);
        metrics.shard(1).downstream_latency.observe(0.000_005);
        metrics.shard(1).downstream_latency.observe(0.003);
        metrics.shard(1).downstream_latency.observe(7.0);
        let counts = metrics.latency_counts();
        assert_eq!(counts.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(counts[0], 2);
        let bucket_of_3ms = LATENCY_BUCKETS
            .iter()
            .position(|b| *b >= 0.003)
            .expect("a bucket");
        assert_eq!(counts[bucket_of_3ms], 1);
        assert_eq!(counts[LATENCY_BUCKETS.len()], 1);
        assert_eq!(counts.iter().sum::<u64>(), 4);
    }
}
