//! The shard's side of the `admin` channel ([`crate::admin`]): which connection asked, where
//! each answer goes, and the local effects of admin commands (closing a client's sockets,
//! tails, publishing, renewing the admin's token, telling local admin members the Redis
//! state).
//!
//! What it must never do: decide what an admin command means or what an answer looks like
//! (that is [`crate::admin`]), or wait for Redis: questions go to the publisher's queue and
//! come back through the inbox as [`crate::inbox::ShardMessage::AdminAnswer`].

use std::rc::Rc;

use tracing::info;

use super::connection::Conn;
use super::context::ShardContext;
use crate::admin::{self, Command, ADMIN_TOPIC};
use crate::broker::admin_queries::AdminQuery;
use crate::broker::{PublishRequest, UpstreamCommand};
use crate::inbox::{AdminAnswerAs, AdminTicket};
use crate::protocol::close_code::DISCONNECTED_BY_ADMIN;
use crate::protocol::{push, reply, Broadcast, Inbound, Refusal, ReplyStatus};

/// After a successful join of `admin`: ask for the deployment's topics, to push `state`.
pub fn on_join(ctx: &ShardContext, conn: &Conn, join_ref: Option<&str>) {
    let ticket = AdminTicket {
        shard: ctx.id,
        conn: conn.id,
        join_ref: join_ref.map(str::to_owned),
        answer_as: AdminAnswerAs::JoinState,
    };
    ask(ctx, AdminQuery::Topics, ticket);
}

/// A push on `admin`: one of [`Command`].
pub fn handle_push(ctx: &ShardContext, conn: &Rc<Conn>, msg: &Inbound<'_>) {
    let ticket = AdminTicket {
        shard: ctx.id,
        conn: conn.id,
        join_ref: msg.join_ref.as_deref().map(str::to_owned),
        answer_as: AdminAnswerAs::Reply {
            msg_ref: msg.msg_ref.as_deref().map(str::to_owned),
        },
    };
    match admin::parse_command(msg.event.as_ref(), &msg.payload) {
        Ok(Command::Ask(query)) => ask(ctx, query, ticket),
        Ok(Command::Tail(topic)) => {
            let answer_json = serde_json::json!({ "topic": topic });
            ctx.set_tail(conn.id, topic);
            answer(ctx, ticket, Ok(answer_json));
        }
        Ok(Command::Publish {
            topic,
            event,
            payload,
        }) => {
            let result = publish(ctx, &topic, &event, payload);
            answer(ctx, ticket, result);
        }
        Ok(Command::RenewToken) => {
            let result = renew_token(ctx, conn);
            answer(ctx, ticket, result);
        }
        Err(reason) => answer(ctx, ticket, Err(reason.into())),
    }
}

/// Hands a downstream message to Redis (`to:<topic>:<event>`), as a backend would publish it:
/// every process delivers it to the topic's subscribers. Answered once queued.
fn publish(
    ctx: &ShardContext,
    topic: &str,
    event: &str,
    payload: String,
) -> Result<serde_json::Value, String> {
    let redis = &ctx.shared.redis;
    let request = PublishRequest {
        channel: format!("to:{topic}:{event}"),
        payload: payload.into(),
        origin: None,
    };
    let queued = redis.status.can_publish()
        && redis
            .publish
            .try_send(UpstreamCommand::Publish(request))
            .is_ok();
    if !queued {
        return Err(Refusal::BackendUnavailable.to_string());
    }
    info!(shard = ctx.id, topic, event, "admin published a message");
    Ok(serde_json::json!({ "topic": topic, "event": event, "queued": true }))
}

/// A fresh console-lifetime admin token for the admin's own id: it already holds the channel,
/// so this gives it nothing new; it lets a page reconnect after its first token expired.
fn renew_token(ctx: &ShardContext, conn: &Conn) -> Result<serde_json::Value, String> {
    let id = conn
        .channels
        .borrow()
        .get(ADMIN_TOPIC)
        .map(|c| c.presence.key.clone())
        .ok_or("not joined to admin")?;
    let lifetime = crate::console::CONSOLE_TOKEN_SECS;
    let token = ctx
        .shared
        .authority
        .mint_for(ADMIN_TOPIC, &id, lifetime)
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({ "token": token, "id": id, "expires_in": lifetime }))
}

/// Hands `query` to the Redis core, or answers `backend unavailable` at once.
fn ask(ctx: &ShardContext, query: AdminQuery, ticket: AdminTicket) {
    let redis = &ctx.shared.redis;
    let queued = redis.status.can_publish()
        && redis
            .publish
            .try_send(UpstreamCommand::Admin {
                query,
                ticket: ticket.clone(),
            })
            .is_ok();
    if !queued {
        answer(ctx, ticket, Err(Refusal::BackendUnavailable.to_string()));
    }
}

/// Delivers an answer: the join's `state` push, or the reply to a push.
pub fn answer(ctx: &ShardContext, ticket: AdminTicket, answer: Result<serde_json::Value, String>) {
    let Some(conn) = ctx.conns.borrow().get(&ticket.conn).cloned() else {
        return;
    };
    match ticket.answer_as {
        AdminAnswerAs::JoinState => {
            let state = admin::join_state(&ctx.shared.process_figures(), answer);
            conn.send(push(
                conn.vsn,
                ticket.join_ref.as_deref(),
                ADMIN_TOPIC,
                "state",
                &state.to_string(),
            ));
        }
        AdminAnswerAs::Reply { msg_ref } => {
            let (ok, response) = admin::reply_response(answer);
            let status = if ok {
                ReplyStatus::Ok
            } else {
                ReplyStatus::Error
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

/// Tells this shard's admin members the Redis connection state (event `redis`).
pub fn announce_redis_state(ctx: &ShardContext) {
    if ctx.topics.borrow().subscribers(ADMIN_TOPIC).is_none() {
        return;
    }
    let status = &ctx.shared.redis.status;
    let payload = admin::redis_state(status.is_connected(), status.reconnects());
    super::fan_out::fan_out(
        ctx,
        &Broadcast::new(ADMIN_TOPIC, "redis", payload.as_bytes()),
        super::fan_out::Write::Queued,
    );
}
