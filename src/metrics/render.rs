//! Rendering `/metrics`: the registry's own series plus the counters that other parts of the
//! server keep for themselves, read (never reset) at scrape time.
//!
//! Runs on the shard that serves the scrape. It reads atomics that other threads write, sums
//! nothing that a shard holds in a `RefCell`, and never blocks a shard.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder as _, TextEncoder};

use super::PREFIX;
use super::{Metrics, StatsSnapshot};

/// The figures other parts of the server keep for themselves, read at scrape time by the
/// caller (which knows where they live).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Every shard's counters, by shard index.
    pub shards: Vec<StatsSnapshot>,
    /// Messages each shard's inbox dropped, by shard index.
    pub inbox_drops: Vec<u64>,
    /// Times the Redis core reconnected.
    pub redis_reconnects: u64,
    /// Whether the Redis core is connected now.
    pub redis_connected: bool,
    /// Messages the Redis reader received on its subscriptions.
    pub redis_received: u64,
    /// Downstream messages no shard wanted.
    pub redis_unrouted: u64,
    /// Messages read back from history to fill a sharded subscription's gap.
    pub redis_gap_filled: u64,
    /// Sharded subscriptions that came back without their gap filled.
    pub redis_gap_lost: u64,
    /// `datetime` ticks built for the `system` channel.
    pub system_ticks: u64,
    /// Shards with a subscriber of `system`.
    pub system_listening_shards: u32,
}

/// The whole exposition, in the Prometheus text format (version 0.0.4).
pub fn render(metrics: &Metrics, scrape: &Scrape) -> String {
    let mut families = metrics.registry().gather();
    families.extend(read_at_scrape(scrape));
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut text = Vec::new();
    match TextEncoder::new().encode(&families, &mut text) {
        Ok(()) => String::from_utf8_lossy(&text).into_owned(),
        // The encoder only fails on families it cannot express; ours are all well-formed.
        Err(err) => format!("# metrics could not be encoded: {err}\n"),
    }
}

/// Families built from counters the server keeps anyway.
fn read_at_scrape(scrape: &Scrape) -> Vec<MetricFamily> {
    let stats = &scrape.shards;
    let per_shard = |pick: fn(&StatsSnapshot) -> u64| -> Vec<(String, f64)> {
        stats
            .iter()
            .enumerate()
            .map(|(shard, s)| (shard.to_string(), pick(s) as f64))
            .collect()
    };
    let inbox_drops: Vec<(String, f64)> = scrape
        .inbox_drops
        .iter()
        .enumerate()
        .map(|(shard, dropped)| (shard.to_string(), *dropped as f64))
        .collect();
    vec![
        sharded(
            MetricType::GAUGE,
            "connections",
            "Open WebSocket connections.",
            per_shard(|s| s.connections),
        ),
        sharded(
            MetricType::GAUGE,
            "joined_channels",
            "Channels joined on open connections (one per connection and topic).",
            per_shard(|s| s.channels),
        ),
        sharded(
            MetricType::COUNTER,
            "messages_received_total",
            "Client WebSocket messages received (text and binary; heartbeats included).",
            per_shard(|s| s.messages_in),
        ),
        sharded(
            MetricType::COUNTER,
            "received_bytes_total",
            "Payload bytes of those client messages.",
            per_shard(|s| s.bytes_in),
        ),
        sharded(
            MetricType::COUNTER,
            "frames_sent_total",
            "WebSocket frames written to clients (broadcasts, pushes, replies).",
            per_shard(|s| s.frames_out),
        ),
        sharded(
            MetricType::COUNTER,
            "sent_bytes_total",
            "Bytes of those frames on the wire (WebSocket headers included).",
            per_shard(|s| s.bytes_out),
        ),
        sharded(
            MetricType::COUNTER,
            "slow_consumer_closes_total",
            "Connections closed with 1013 as slow consumers (a frame waited slow_consumer_lag_ms, or outbound_queue_bytes was passed).",
            per_shard(|s| s.slow_consumer_closes),
        ),
        sharded(
            MetricType::COUNTER,
            "shard_inbox_drops_total",
            "Messages for a shard dropped because its inbox was full.",
            inbox_drops,
        ),
        single(
            MetricType::COUNTER,
            "redis_reconnects_total",
            "Redis connections (subscriber or publisher) re-established after being lost.",
            scrape.redis_reconnects as f64,
        ),
        single(
            MetricType::GAUGE,
            "redis_connected",
            "1 while both Redis connections are up, else 0.",
            if scrape.redis_connected { 1.0 } else { 0.0 },
        ),
        single(
            MetricType::COUNTER,
            "redis_messages_received_total",
            "Messages the Redis reader received on its subscriptions.",
            scrape.redis_received as f64,
        ),
        single(
            MetricType::COUNTER,
            "redis_messages_unrouted_total",
            "Messages from Redis for topics no shard of this process subscribes to.",
            scrape.redis_unrouted as f64,
        ),
        single(
            MetricType::COUNTER,
            "redis_gap_filled_total",
            "Messages read back from a topic's history when its sharded subscription came back after a loss (a failover, a slot migration, a lost connection) and delivered to its subscribers.",
            scrape.redis_gap_filled as f64,
        ),
        single(
            MetricType::COUNTER,
            "redis_gap_lost_total",
            "Sharded subscriptions that came back after a loss whose gap could not be told whole (the topic's history was lost meanwhile, or could not be read).",
            scrape.redis_gap_lost as f64,
        ),
        single(
            MetricType::COUNTER,
            "system_ticks_total",
            "`datetime` ticks built for the `system` channel.",
            scrape.system_ticks as f64,
        ),
        single(
            MetricType::GAUGE,
            "system_listening_shards",
            "Shards with at least one subscriber of the `system` channel.",
            f64::from(scrape.system_listening_shards),
        ),
    ]
}

/// A family with one sample per shard, labelled `shard`.
fn sharded(kind: MetricType, name: &str, help: &str, samples: Vec<(String, f64)>) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|(shard, value)| {
            let mut label = LabelPair::default();
            label.set_name("shard".to_owned());
            label.set_value(shard);
            let mut metric = Metric::from_label(vec![label]);
            set_value(&mut metric, kind, value);
            metric
        })
        .collect();
    family(kind, name, help, metrics)
}

/// A family with one unlabelled sample.
fn single(kind: MetricType, name: &str, help: &str, value: f64) -> MetricFamily {
    let mut metric = Metric::default();
    set_value(&mut metric, kind, value);
    family(kind, name, help, vec![metric])
}

fn set_value(metric: &mut Metric, kind: MetricType, value: f64) {
    if kind == MetricType::COUNTER {
        let mut counter = Counter::default();
        counter.set_value(value);
        metric.set_counter(counter);
    } else {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        metric.set_gauge(gauge);
    }
}

fn family(kind: MetricType, name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(format!("{PREFIX}_{name}"));
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}
