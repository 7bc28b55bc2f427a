//! The `admin` channel (docs/protocol.md, "Predefined channels"): monitoring and control for
//! operators, as a feature of its own.
//!
//! Only tokens minted for `admin` can join it (the channel-bound token rule; `/token` and
//! `/console/login` mint them only with the admin key). A joiner gets a `state` push (this
//! process's figures, and the deployment's topics with member counts from presence); every
//! `admin_stats_interval_secs` every process's `stats` ([`spawn_stats_ticker`], published
//! through Redis so that an admin anywhere sees every process); `channel.join` /
//! `channel.leave` events for every presence change in the deployment (made by the Redis reader
//! from presence diffs). The pushes of [`Command`] are answered in the reply; `tail` adds
//! `message` events. Admin pushes are never published to Redis as pushes.
//!
//! What it owns: the commands ([`parse_command`]), the JSON it answers with
//! ([`process_state`], [`join_state`], [`reply_response`], [`tail_message`]) and the stats
//! ticker. Pure functions over figures the caller gathers; the shard's side (which connection
//! asked, where the answer goes) is `shard::admin`, the Redis side (what only Redis knows) is
//! the broker's `admin_queries`.
//!
//! What it must never do: hold a connection or a shard's state, or talk to Redis itself.

mod command;

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::inbox::{ShardMessage, Shards};
use crate::metrics::StatsSnapshot;
use crate::protocol::Broadcast;

pub use command::{parse_command, Command};

/// The admin topic: the channel that only admin tokens join.
pub use crate::auth::ADMIN_CHANNEL as ADMIN_TOPIC;

/// The topic on which a process with admin members asks every process for its stats
/// (`PUBLISH to:channel:admin-stats:want`, every stats interval while it has admins). Shard 0
/// of every process listens to it for the life of the process; a process publishes its `stats`
/// to Redis only within [`STATS_WANTED_FOR`] stats intervals of the last request, so that a
/// deployment without admins publishes nothing.
pub const STATS_WANTED_TOPIC: &str = "channel:admin-stats";
/// The event of the request on [`STATS_WANTED_TOPIC`].
pub const STATS_WANTED_EVENT: &str = "want";
/// Stats intervals a request keeps a process publishing.
pub const STATS_WANTED_FOR: u32 = 3;

/// This process's figures, gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct ProcessFigures {
    /// The process's presence identity.
    pub node: String,
    /// Every shard's counters, by shard index.
    pub per_shard: Vec<StatsSnapshot>,
    /// Whether the Redis core is connected.
    pub redis_connected: bool,
    /// Times the Redis core reconnected.
    pub redis_reconnects: u64,
    /// Messages the shard inboxes dropped, with the reader's count of the same.
    pub inbox_drops: u64,
    /// Seconds since the process started.
    pub uptime_secs: u64,
    /// How the process reaches Redis: `single`, `sentinel` or `cluster`.
    pub redis_mode: &'static str,
    /// Joins answered ok since start, all shards.
    pub joins: u64,
    /// The Redis-receive → queued-on-every-socket histogram, all shards: the count of each
    /// bucket of [`crate::metrics::LATENCY_BUCKETS`] (not cumulative), then the overflow.
    pub latency_counts: Vec<u64>,
    /// The busiest topics' messages per second over the last stats interval (a topic's rate
    /// is the largest of its shards': each of them gets every message).
    pub topic_rates: Vec<(String, f64)>,
}

/// This process's side of the state: connections per shard, channels, Redis.
pub fn process_state(figures: &ProcessFigures) -> Value {
    let total = StatsSnapshot::sum(&figures.per_shard);
    json!({
        "node": figures.node,
        "uptime_secs": figures.uptime_secs,
        "shards": figures.per_shard.len(),
        "connections": {
            "total": total.connections,
            "per_shard": figures.per_shard.iter().map(|s| s.connections).collect::<Vec<_>>(),
        },
        "channels": total.channels,
        "redis": {
            "connected": figures.redis_connected,
            "reconnects": figures.redis_reconnects,
            "mode": figures.redis_mode,
        },
        "slow_consumer_closes": total.slow_consumer_closes,
        "inbox_drops": figures.inbox_drops,
        "totals": {
            "joins": figures.joins,
            "messages_out": total.frames_out,
            "bytes_out": total.bytes_out,
            "messages_in": total.messages_in,
            "bytes_in": total.bytes_in,
        },
        "latency": {
            "bounds_secs": crate::metrics::LATENCY_BUCKETS,
            "counts": figures.latency_counts,
        },
        "topic_rates": figures
            .topic_rates
            .iter()
            .map(|(topic, rate)| (topic.clone(), json!(rate)))
            .collect::<serde_json::Map<String, Value>>(),
    })
}

/// The join's `state` push: this process's state, with the deployment's topics from Redis (or
/// why they are missing) merged in.
pub fn join_state(figures: &ProcessFigures, answer: Result<Value, String>) -> Value {
    let mut state = process_state(figures);
    match answer {
        Ok(Value::Object(found)) => {
            for (key, value) in found {
                state[key] = value;
            }
        }
        Ok(_) => {}
        Err(reason) => state["topics_error"] = json!(reason),
    }
    state
}

/// The response of the reply to an admin push: the answer, or `{"reason": …}`.
pub fn reply_response(answer: Result<Value, String>) -> (bool, Value) {
    match answer {
        Ok(value) => (true, value),
        Err(reason) => (false, json!({ "reason": reason })),
    }
}

/// The payload of the Redis-state event pushed to admin members.
pub fn redis_state(connected: bool, reconnects: u64) -> String {
    json!({ "connected": connected, "reconnects": reconnects }).to_string()
}

/// The `message` event of a `tail`: `{"topic", "event", "payload"}` with the payload as JSON,
/// or as base64 with `"binary": true`, and `"position"` when the message has one; `skipped` counts the messages left out before this one
/// (a tail sends at most a few per second).
pub fn tail_message(broadcast: &Broadcast, skipped: u64) -> String {
    let payload = if broadcast.is_json() {
        serde_json::from_slice::<Value>(broadcast.payload()).unwrap_or(Value::Null)
    } else {
        json!(base64::engine::general_purpose::STANDARD.encode(broadcast.payload()))
    };
    let mut message = json!({
        "topic": broadcast.topic(),
        "event": broadcast.event(),
        "payload": payload,
        "binary": !broadcast.is_json(),
        "skipped": skipped,
    });
    // Messages published with the function have a position in the topic's history.
    if let Some(position) = broadcast.position() {
        message["position"] = json!(position.to_string());
    }
    message.to_string()
}

/// What the stats ticker needs from the process besides its figures.
pub trait StatsOutlet: Send + 'static {
    /// Whether this process has admin members now.
    fn has_local_admins(&self) -> bool;
    /// Whether some admin of the deployment asked for stats within the last
    /// [`STATS_WANTED_FOR`] intervals.
    fn stats_wanted(&self) -> bool;
    /// Hands a downstream message (`to:<topic>:<event>`) to Redis; false when Redis cannot
    /// take it now.
    fn publish(&self, topic: &str, event: &str, payload: String) -> bool;
}

/// Sends every admin of the deployment this process's `stats` every `interval`, from a thread
/// of its own: one wake-up and one small JSON per interval. While this process has admin
/// members it asks every process for stats ([`STATS_WANTED_TOPIC`]); while stats are wanted it
/// publishes its own to Redis (`to:admin:stats`, so admins connected anywhere get them), else
/// it sends them to its own admins only (the shards drop them when there are none).
pub fn spawn_stats_ticker(
    interval: Duration,
    shards: Shards,
    figures: impl Fn() -> ProcessFigures + Send + 'static,
    outlet: impl StatsOutlet,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("admin-stats".into())
        .spawn(move || {
            let first = figures();
            let mut previous = StatsSnapshot::sum(&first.per_shard);
            let mut previous_joins = first.joins;
            let mut previous_at = Instant::now();
            loop {
                std::thread::sleep(interval);
                if outlet.has_local_admins() {
                    outlet.publish(STATS_WANTED_TOPIC, STATS_WANTED_EVENT, "{}".to_owned());
                }
                let now = Instant::now();
                let current_figures = figures();
                let current = StatsSnapshot::sum(&current_figures.per_shard);
                let mut stats = process_state(&current_figures);
                let elapsed = now.duration_since(previous_at).as_secs_f64();
                stats["rates"] = current.rates_since(&previous, elapsed);
                let joins = current_figures.joins.saturating_sub(previous_joins);
                stats["rates"]["joins"] =
                    json!((joins as f64 / elapsed.max(f64::EPSILON) * 10.0).round() / 10.0);
                previous = current;
                previous_joins = current_figures.joins;
                previous_at = now;
                let payload = stats.to_string();
                if outlet.stats_wanted() && outlet.publish(ADMIN_TOPIC, "stats", payload.clone()) {
                    continue;
                }
                let broadcast =
                    std::sync::Arc::new(Broadcast::new(ADMIN_TOPIC, "stats", payload.as_bytes()));
                shards.send_all(|| ShardMessage::Broadcast(std::sync::Arc::clone(&broadcast)));
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_state_merges_the_deployments_topics_or_says_why_not() {
        let figures = ProcessFigures {
            node: "n1".into(),
            per_shard: vec![StatsSnapshot::default(); 2],
            ..ProcessFigures::default()
        };
        let state = join_state(&figures, Ok(json!({"topics": {"a": {"members": 1}}})));
        assert_eq!(state["node"], "n1");
        assert_eq!(state["topics"]["a"]["members"], 1);
        assert_eq!(state["connections"]["per_shard"], json!([0, 0]));
        let state = join_state(&figures, Err("backend unavailable".into()));
        assert_eq!(state["topics_error"], "backend unavailable");
    }

    #[test]
    fn a_tail_message_carries_json_as_json_and_bytes_as_base64() {
        let json_message = Broadcast::new("room:1", "news", br#"{"n":1}"#);
        let value: Value =
            serde_json::from_str(&tail_message(&json_message, 0)).expect("the message is JSON");
        assert_eq!(
            value,
            json!({"topic": "room:1", "event": "news", "payload": {"n": 1}, "binary": false, "skipped": 0})
        );
        let binary = Broadcast::new("room:1", "blob", &[0xff, 0x00, 0x01]);
        let value: Value =
            serde_json::from_str(&tail_message(&binary, 3)).expect("the message is JSON");
        assert_eq!(value["payload"], json!("/wAB"));
        assert_eq!(value["binary"], json!(true));
        assert_eq!(value["skipped"], json!(3));
        assert!(value.get("position").is_none(), "no position: {value}");
        let position = crate::history::Position::parse("1765000000000000.1765000000000-0")
            .expect("a position parses");
        let positioned = Broadcast::positioned("room:1", "news", Some(position), b"{}");
        let value: Value =
            serde_json::from_str(&tail_message(&positioned, 0)).expect("the message is JSON");
        assert_eq!(value["position"], json!("1765000000000000.1765000000000-0"));
    }
}
