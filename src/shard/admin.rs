//! The `admin` channel (PROTOCOL.md §7): monitoring and control for operators.
//!
//! Only tokens minted for `admin` can join it (the channel-bound token rule; `/token` mints
//! them only with the admin key). A joiner gets a `state` push (this process's connections per
//! shard, Redis status, and the deployment's topics with member counts from presence); every
//! `admin_stats_interval_secs` a `stats` broadcast; `channel.join` / `channel.leave` events for
//! every presence change in the deployment (made by the Redis reader from presence diffs).
//! Pushes `list` and `disconnect {"id": …}` are answered in the reply. Admin pushes are never
//! published to Redis.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::info;

use super::connection::Conn;
use super::context::{ShardContext, Shared};
use super::inbox::{AdminTicket, ShardMessage};
use super::stats::StatsSnapshot;
use crate::protocol::{push, reply, Broadcast, Inbound, ReplyStatus};
use crate::redis::admin_queries::AdminQuery;
use crate::redis::publisher::UpstreamCommand;

/// The admin topic.
pub const ADMIN_TOPIC: &str = "admin";
/// Close code for a socket closed by an admin's `disconnect` (not 1000: the client may
/// reconnect, with a token it still holds).
pub const DISCONNECTED_BY_ADMIN: u16 = 4001;

/// After a successful join of `admin`: ask for the deployment's topics, to push `state`.
pub fn on_join(ctx: &ShardContext, conn: &Conn, join_ref: Option<&str>) {
    let ticket = AdminTicket {
        shard: ctx.id,
        conn: conn.id,
        join_ref: join_ref.map(str::to_owned),
        reply_to: None,
    };
    if !ask(ctx, AdminQuery::Topics, ticket.clone()) {
        answer(ctx, ticket, Err("backend unavailable".into()));
    }
}

/// A push on `admin`: `list` or `disconnect {"id": …}`.
pub fn handle_push(ctx: &ShardContext, conn: &Rc<Conn>, msg: &Inbound<'_>) {
    let ticket = AdminTicket {
        shard: ctx.id,
        conn: conn.id,
        join_ref: msg.join_ref.as_deref().map(str::to_owned),
        reply_to: Some(msg.msg_ref.as_deref().map(str::to_owned)),
    };
    let query = match msg.event.as_ref() {
        "list" => AdminQuery::Topics,
        "disconnect" => match disconnect_id(msg) {
            Some(id) => AdminQuery::Disconnect(id),
            None => {
                return answer(
                    ctx,
                    ticket,
                    Err("disconnect needs {\"id\": \"<client id>\"}".into()),
                )
            }
        },
        _ => return answer(ctx, ticket, Err("unknown admin command".into())),
    };
    if !ask(ctx, query, ticket.clone()) {
        answer(ctx, ticket, Err("backend unavailable".into()));
    }
}

fn disconnect_id(msg: &Inbound<'_>) -> Option<String> {
    let crate::protocol::Payload::Json(text) = &msg.payload else {
        return None;
    };
    let value: Value = serde_json::from_str(text).ok()?;
    let id = value.get("id")?.as_str()?;
    (!id.is_empty()).then(|| id.to_owned())
}

fn ask(ctx: &ShardContext, query: AdminQuery, ticket: AdminTicket) -> bool {
    let redis = &ctx.shared.redis;
    redis.status.can_publish()
        && redis
            .publish
            .try_send(UpstreamCommand::Admin { query, ticket })
            .is_ok()
}

/// Delivers an answer: the join's `state` push, or the reply to a push.
pub fn answer(ctx: &ShardContext, ticket: AdminTicket, answer: Result<Value, String>) {
    let Some(conn) = ctx.conns.borrow().get(&ticket.conn).cloned() else {
        return;
    };
    match ticket.reply_to {
        None => {
            let mut state = process_state(&ctx.shared);
            match answer {
                Ok(Value::Object(found)) => {
                    for (key, value) in found {
                        state[key] = value;
                    }
                }
                Ok(_) => {}
                Err(reason) => state["topics_error"] = json!(reason),
            }
            conn.send(push(
                conn.vsn,
                ticket.join_ref.as_deref(),
                ADMIN_TOPIC,
                "state",
                &state.to_string(),
            ));
        }
        Some(msg_ref) => {
            let (status, response) = match answer {
                Ok(value) => (ReplyStatus::Ok, value),
                Err(reason) => (ReplyStatus::Error, json!({ "reason": reason })),
            };
            conn.send(reply(
                conn.vsn,
                ticket.join_ref.as_deref(),
                msg_ref.as_deref(),
                ADMIN_TOPIC,
                status,
                &response.to_string(),
            ));
        }
    }
}

/// Closes every local socket of client `id` (its socket token's id or any joined channel's
/// presence key).
pub fn disconnect_client(ctx: &ShardContext, id: &str) {
    let matching: Vec<Rc<Conn>> = ctx
        .conns
        .borrow()
        .values()
        .filter(|conn| {
            conn.user_id.as_deref() == Some(id)
                || conn
                    .channels
                    .borrow()
                    .values()
                    .any(|c| c.presence.key == id)
        })
        .cloned()
        .collect();
    if !matching.is_empty() {
        info!(
            shard = ctx.id,
            id,
            sockets = matching.len(),
            "disconnecting client by admin request"
        );
    }
    for conn in matching {
        conn.close(DISCONNECTED_BY_ADMIN, "disconnected by admin");
    }
}

/// This process's side of the state: connections per shard, channels, Redis.
pub fn process_state(shared: &Shared) -> Value {
    let per_shard = shared.shard_stats();
    let total = StatsSnapshot::sum(&per_shard);
    json!({
        "node": shared.node,
        "connections": {
            "total": total.connections,
            "per_shard": per_shard.iter().map(|s| s.connections).collect::<Vec<_>>(),
        },
        "channels": total.channels,
        "redis": {
            "connected": shared.redis.status.is_connected(),
            "reconnects": shared.redis.status.reconnects(),
        },
        "slow_consumer_closes": total.slow_consumer_closes,
        "inbox_drops": shared.inboxes.iter().map(|i| i.dropped()).sum::<u64>()
            + shared.redis.reader_stats.inbox_drops.load(Ordering::Relaxed),
    })
}

/// Pushes `stats` to every admin member of this process every `interval`, from a thread of
/// its own: one wake-up and one small JSON per interval, built even when no shard has admin
/// members (the shards then drop it, as for any topic without subscribers).
pub fn spawn_stats_ticker(shared: Arc<Shared>, interval: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("admin-stats".into())
        .spawn(move || {
            let mut previous = shared.total_stats();
            let mut previous_at = Instant::now();
            loop {
                std::thread::sleep(interval);
                let now = Instant::now();
                let current = shared.total_stats();
                let mut stats = process_state(&shared);
                stats["rates"] =
                    current.rates_since(&previous, now.duration_since(previous_at).as_secs_f64());
                previous = current;
                previous_at = now;
                let payload = stats.to_string();
                let broadcast = Arc::new(Broadcast::new(ADMIN_TOPIC, "stats", payload.as_bytes()));
                for inbox in &shared.inboxes {
                    inbox.send(ShardMessage::Broadcast(Arc::clone(&broadcast)));
                }
            }
        })
        .map(|_| ())
}

/// Tells this shard's admin members the Redis connection state (event `redis`).
pub fn announce_redis_state(ctx: &ShardContext) {
    if ctx.topics.borrow().subscribers(ADMIN_TOPIC).is_none() {
        return;
    }
    let status = &ctx.shared.redis.status;
    let payload = json!({
        "connected": status.is_connected(),
        "reconnects": status.reconnects(),
    })
    .to_string();
    super::fan_out(
        ctx,
        &Broadcast::new(ADMIN_TOPIC, "redis", payload.as_bytes()),
        super::Write::Queued,
    );
}
