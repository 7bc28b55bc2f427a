//! The `admin` channel (docs/protocol.md, "Predefined channels"): monitoring and control for
//! operators, as a feature of its own.
//!
//! Only tokens minted for `admin` can join it (the channel-bound token rule; `/token` mints them
//! only with the admin key). A joiner gets a `state` push (this process's connections per
//! shard, Redis status, and the deployment's topics with member counts from presence); every
//! `admin_stats_interval_secs` a `stats` broadcast ([`spawn_stats_ticker`]); `channel.join` /
//! `channel.leave` events for every presence change in the deployment (made by the Redis reader
//! from presence diffs). Pushes `list` and `disconnect {"id": …}` are answered in the reply.
//! Admin pushes are never published to Redis.
//!
//! What it owns: the commands ([`parse_command`]), the JSON it answers with
//! ([`process_state`], [`join_state`], [`reply_response`]) and the stats ticker. Pure
//! functions over figures the caller gathers; the shard's side (which connection asked, where
//! the answer goes) is `shard::admin`, the Redis side (what only Redis knows) is the broker's
//! `admin_queries`.
//!
//! What it must never do: hold a connection or a shard's state, or talk to Redis itself.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::broker::admin_queries::AdminQuery;
use crate::inbox::{ShardMessage, Shards};
use crate::metrics::StatsSnapshot;
use crate::protocol::{Broadcast, Payload};

/// The admin topic: the channel that only admin tokens join.
pub use crate::auth::ADMIN_CHANNEL as ADMIN_TOPIC;

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
}

/// What an admin push asks, or why it cannot be asked.
pub fn parse_command(event: &str, payload: &Payload<'_>) -> Result<AdminQuery, &'static str> {
    match event {
        "list" => Ok(AdminQuery::Topics),
        "disconnect" => disconnect_id(payload)
            .map(AdminQuery::Disconnect)
            .ok_or("disconnect needs {\"id\": \"<client id>\"}"),
        "history" => history_request(payload)
            .ok_or("history needs {\"topic\": \"<topic>\", \"limit\": <1..=1000, default 10>}"),
        _ => Err("unknown admin command"),
    }
}

/// The most messages one `history` command returns.
pub const MAX_HISTORY_LIMIT: u64 = 1000;

fn history_request(payload: &Payload<'_>) -> Option<AdminQuery> {
    let Payload::Json(text) = payload else {
        return None;
    };
    let value: Value = serde_json::from_str(text).ok()?;
    let topic = value.get("topic")?.as_str()?;
    let limit = match value.get("limit") {
        None => 10,
        Some(limit) => limit
            .as_u64()
            .filter(|l| (1..=MAX_HISTORY_LIMIT).contains(l))?,
    };
    (!topic.is_empty()).then(|| AdminQuery::History {
        topic: topic.to_owned(),
        limit,
    })
}

fn disconnect_id(payload: &Payload<'_>) -> Option<String> {
    let Payload::Json(text) = payload else {
        return None;
    };
    let value: Value = serde_json::from_str(text).ok()?;
    let id = value.get("id")?.as_str()?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// This process's side of the state: connections per shard, channels, Redis.
pub fn process_state(figures: &ProcessFigures) -> Value {
    let total = StatsSnapshot::sum(&figures.per_shard);
    json!({
        "node": figures.node,
        "connections": {
            "total": total.connections,
            "per_shard": figures.per_shard.iter().map(|s| s.connections).collect::<Vec<_>>(),
        },
        "channels": total.channels,
        "redis": {
            "connected": figures.redis_connected,
            "reconnects": figures.redis_reconnects,
        },
        "slow_consumer_closes": total.slow_consumer_closes,
        "inbox_drops": figures.inbox_drops,
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

/// Pushes `stats` to every admin member of this process every `interval`, from a thread of
/// its own: one wake-up and one small JSON per interval, built even when no shard has admin
/// members (the shards then drop it, as for any topic without subscribers).
pub fn spawn_stats_ticker(
    interval: Duration,
    shards: Shards,
    figures: impl Fn() -> ProcessFigures + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("admin-stats".into())
        .spawn(move || {
            let mut previous = StatsSnapshot::sum(&figures().per_shard);
            let mut previous_at = Instant::now();
            loop {
                std::thread::sleep(interval);
                let now = Instant::now();
                let current_figures = figures();
                let current = StatsSnapshot::sum(&current_figures.per_shard);
                let mut stats = process_state(&current_figures);
                stats["rates"] =
                    current.rates_since(&previous, now.duration_since(previous_at).as_secs_f64());
                previous = current;
                previous_at = now;
                let payload = stats.to_string();
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
    fn commands_are_parsed_with_a_reason_when_malformed() {
        assert_eq!(
            parse_command("list", &Payload::Json("{}")),
            Ok(AdminQuery::Topics)
        );
        assert_eq!(
            parse_command("disconnect", &Payload::Json(r#"{"id":"ada"}"#)),
            Ok(AdminQuery::Disconnect("ada".into()))
        );
        assert!(parse_command("disconnect", &Payload::Json(r#"{"id":""}"#)).is_err());
        assert_eq!(
            parse_command("reboot", &Payload::Json("{}")),
            Err("unknown admin command")
        );
        assert_eq!(
            parse_command("history", &Payload::Json(r#"{"topic":"room:1","limit":3}"#)),
            Ok(AdminQuery::History {
                topic: "room:1".into(),
                limit: 3
            })
        );
        assert_eq!(
            parse_command("history", &Payload::Json(r#"{"topic":"room:1"}"#)),
            Ok(AdminQuery::History {
                topic: "room:1".into(),
                limit: 10
            })
        );
        for bad in [
            r#"{"topic":""}"#,
            r#"{"limit":3}"#,
            r#"{"topic":"t","limit":0}"#,
            r#"{"topic":"t","limit":1001}"#,
        ] {
            assert!(
                parse_command("history", &Payload::Json(bad)).is_err(),
                "{bad}"
            );
        }
    }

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
}
