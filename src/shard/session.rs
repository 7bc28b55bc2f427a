//! The Phoenix protocol for one connection: what each client message means.
//!
//! Heartbeats, joins (token bound to the topic), leaves, pushes (published to Redis and
//! answered once Redis accepted them), `unmatched topic`, reserved events and stale join
//! references — docs/protocol.md, "Joins" and "Pushes". A join also registers the presence (answered later with
//! `presence_state`, see [`super::presence_delivery`]); pushes on `admin` go to [`super::admin`]
//! instead of Redis. Everything here is synchronous and CPU-only: it decides, queues frames on
//! the connection, and hands publishes to the Redis core. It never waits.

use std::rc::Rc;

use bytes::Bytes;
use tracing::debug;

use super::admin;
use super::connection::{Conn, JoinedChannel};
use super::context::ShardContext;
use super::presence_delivery::{self, PresenceSync};
use super::recovery::{self, WaitingJoin};
use crate::broker::naming::upstream_channel;
use crate::broker::{PublishRequest, UpstreamCommand};
use crate::history::Position;
use crate::inbox::{PushAck, PushOutcome};
use crate::metrics::ShardStats;
use crate::presence::{unix_ms, Presence};
use crate::protocol::names::{is_valid_topic, HEARTBEAT_TOPIC, RESERVED_EVENTS};
use crate::protocol::{
    channel_close, close_code, decode_binary, decode_text, encode_frame, join_fields, reply,
    Inbound, JoinSince, Message, OpCode, Payload, Refusal, ReplyStatus, Vsn,
};

/// Why the connection stops reading.
#[derive(Debug)]
pub enum Stop {
    /// The client sent a close frame; ours is queued.
    ClientClosed,
    /// The server decided to close; the close frame is queued.
    Closing,
}

/// Handles one complete client message.
pub fn handle(ctx: &Rc<ShardContext>, conn: &Rc<Conn>, message: Message<'_>) -> Result<(), Stop> {
    if let Message::Text(data) | Message::Binary(data) = &message {
        let stats = ctx.stats();
        ShardStats::add(&stats.messages_in, 1);
        ShardStats::add(&stats.bytes_in, data.len() as u64);
    }
    match message {
        Message::Text(data) => match decode_text(conn.vsn, data) {
            Ok(inbound) => {
                dispatch(ctx, conn, inbound);
                Ok(())
            }
            Err(err) => {
                debug!(conn = conn.id, %err, "undecodable text message");
                conn.close(close_code::INVALID_PAYLOAD, "malformed phoenix message");
                Err(Stop::Closing)
            }
        },
        Message::Binary(data) => {
            if conn.vsn == Vsn::V1 {
                conn.close(close_code::UNSUPPORTED_DATA, "binary frames need vsn=2.0.0");
                return Err(Stop::Closing);
            }
            match decode_binary(data) {
                Ok(inbound) => {
                    dispatch(ctx, conn, inbound);
                    Ok(())
                }
                Err(err) => {
                    debug!(conn = conn.id, %err, "undecodable binary message");
                    conn.close(close_code::INVALID_PAYLOAD, "malformed phoenix message");
                    Err(Stop::Closing)
                }
            }
        }
        Message::Ping(payload) => {
            conn.send(encode_frame(OpCode::Pong, payload));
            Ok(())
        }
        Message::Pong(_) => Ok(()),
        Message::Close(_) => {
            conn.close(close_code::NORMAL, "");
            Err(Stop::ClientClosed)
        }
    }
}

fn dispatch(ctx: &Rc<ShardContext>, conn: &Rc<Conn>, msg: Inbound<'_>) {
    let topic = msg.topic.as_ref();
    let event = msg.event.as_ref();
    if topic == HEARTBEAT_TOPIC && event == "heartbeat" {
        send_reply(conn, &msg, ReplyStatus::Ok, "{}");
        return;
    }
    match event {
        "phx_join" => join(ctx, conn, &msg),
        "phx_leave" => leave(ctx, conn, &msg),
        _ => push(ctx, conn, &msg),
    }
}

fn join(ctx: &Rc<ShardContext>, conn: &Rc<Conn>, msg: &Inbound<'_>) {
    let topic = msg.topic.as_ref();
    if !is_valid_topic(topic) {
        return refuse(ctx, conn, msg, Refusal::InvalidTopic);
    }
    if ctx.shutting_down.get() {
        return refuse(ctx, conn, msg, Refusal::ShuttingDown);
    }
    let (token, since) = join_fields(&msg.payload);
    let token = token.or_else(|| conn.user_token.as_deref().map(Into::into));
    let Some(token) = token else {
        return refuse(ctx, conn, msg, Refusal::Unauthorized);
    };
    let claims = match ctx.shared.authority.verify_for_channel(&token, topic) {
        Ok(claims) => claims,
        Err(err) => {
            debug!(conn = conn.id, topic, %err, "join refused");
            return refuse(ctx, conn, msg, Refusal::Unauthorized);
        }
    };
    // What the join asks of the topic's history (PROTOCOL §12).
    let history = match since {
        JoinSince::Absent => None,
        JoinSince::Null => Some(None),
        JoinSince::Given(text) => match Position::parse(&text) {
            Ok(position) => Some(Some(position)),
            Err(_) => return refuse(ctx, conn, msg, Refusal::InvalidSince),
        },
        JoinSince::Invalid => return refuse(ctx, conn, msg, Refusal::InvalidSince),
    };
    // phoenix.js sends join_ref == ref; a null join_ref falls back to ref.
    let join_ref = msg
        .join_ref
        .as_deref()
        .or(msg.msg_ref.as_deref())
        .map(str::to_owned);
    let presence = Presence {
        key: claims.id,
        phx_ref: ctx.next_phx_ref(conn.id),
        online_at: unix_ms(),
    };
    let joined = JoinedChannel {
        join_ref,
        presence: presence.clone(),
        presence_sync: PresenceSync::Awaiting(Vec::new()),
    };
    let previous = {
        let mut channels = conn.channels.borrow_mut();
        if !channels.contains_key(topic)
            && channels.len() >= ctx.shared.config.limits.max_channels_per_socket
        {
            drop(channels);
            return refuse(ctx, conn, msg, Refusal::TooManyChannels);
        }
        channels.insert(topic.to_owned(), joined)
    };
    if waits_for_redis(topic) {
        // The reply waits for the topic's subscription (and history): shard/recovery.rs. The
        // join holds the topic's interest meanwhile; a replaced join leaves the topic table
        // now, so that nothing of the topic reaches the socket before the new reply.
        ctx.hold(topic);
        match &previous {
            Some(old) => {
                ctx.unsubscribe(topic, conn.id);
                presence_delivery::request_leave(ctx, topic, old.presence.clone());
            }
            None => ShardStats::add(&ctx.stats().channels, 1),
        }
        let id = ctx.recovery.borrow_mut().next_id();
        let waiting = WaitingJoin::new(
            id,
            conn.id,
            topic,
            presence.phx_ref,
            msg.join_ref.as_deref().map(str::to_owned),
            msg.msg_ref.as_deref().map(str::to_owned),
            history,
            previous.map(|old| old.join_ref),
        );
        return recovery::begin(ctx, waiting);
    }
    send_reply(conn, msg, ReplyStatus::Ok, "{}");
    ctx.metrics().joins.inc();
    match previous {
        // A second join of the same topic replaces the first: close the old one.
        Some(old) => {
            conn.send(channel_close(conn.vsn, old.join_ref.as_deref(), topic));
            presence_delivery::request_leave(ctx, topic, old.presence);
        }
        None => {
            ctx.subscribe(topic, conn);
            ShardStats::add(&ctx.stats().channels, 1);
        }
    }
    if !presence_delivery::request_join(ctx, conn, topic, presence) {
        if let Some(channel) = conn.channels.borrow_mut().get_mut(topic) {
            channel.presence_sync = PresenceSync::Unavailable;
        }
    }
    if topic == crate::admin::ADMIN_TOPIC {
        let join_ref = conn
            .channels
            .borrow()
            .get(topic)
            .and_then(|c| c.join_ref.clone());
        admin::on_join(ctx, conn, join_ref.as_deref());
    }
}

/// Whether a join of `topic` waits for Redis before its reply: every topic that backends
/// publish to. The server's own channels (`admin`, `system`) are not published through Redis
/// by backends and are answered at once.
fn waits_for_redis(topic: &str) -> bool {
    topic != crate::admin::ADMIN_TOPIC && topic != crate::system::SYSTEM_TOPIC
}

fn leave(ctx: &Rc<ShardContext>, conn: &Rc<Conn>, msg: &Inbound<'_>) {
    let topic = msg.topic.as_ref();
    if is_stale(conn, msg) {
        return;
    }
    let removed = conn.channels.borrow_mut().remove(topic);
    send_reply(conn, msg, ReplyStatus::Ok, "{}");
    if let Some(old) = removed {
        if topic == crate::admin::ADMIN_TOPIC {
            ctx.set_tail(conn.id, None);
        }
        ctx.unsubscribe(topic, conn.id);
        ShardStats::sub(&ctx.stats().channels, 1);
        presence_delivery::request_leave(ctx, topic, old.presence.clone());
        let join_ref = old.join_ref.as_deref().or(msg.join_ref.as_deref());
        conn.send(channel_close(conn.vsn, join_ref, topic));
    }
}

fn push(ctx: &Rc<ShardContext>, conn: &Rc<Conn>, msg: &Inbound<'_>) {
    let topic = msg.topic.as_ref();
    let event = msg.event.as_ref();
    if !conn.channels.borrow().contains_key(topic) {
        return send_unmatched(conn, msg);
    }
    if is_stale(conn, msg) {
        return;
    }
    if RESERVED_EVENTS.contains(&event) {
        return send_reply(
            conn,
            msg,
            ReplyStatus::Error,
            &Refusal::ReservedEvent.response_json(),
        );
    }
    if topic == crate::admin::ADMIN_TOPIC {
        return admin::handle_push(ctx, conn, msg);
    }
    if ctx.shutting_down.get() {
        // The answers to pushes taken now could not be delivered before the sockets close.
        return send_reply(
            conn,
            msg,
            ReplyStatus::Error,
            &Refusal::ShuttingDown.response_json(),
        );
    }
    let redis = &ctx.shared.redis;
    if !redis.status.can_publish() {
        return send_reply(
            conn,
            msg,
            ReplyStatus::Error,
            &Refusal::BackendUnavailable.response_json(),
        );
    }
    let payload = match &msg.payload {
        Payload::Json(text) => Bytes::copy_from_slice(text.as_bytes()),
        Payload::Binary(data) => Bytes::copy_from_slice(data),
    };
    let request = PublishRequest {
        channel: upstream_channel(topic, event),
        payload,
        origin: Some((
            ctx.id,
            PushAck {
                conn: conn.id,
                join_ref: msg.join_ref.as_deref().map(str::to_owned),
                msg_ref: msg.msg_ref.as_deref().map(str::to_owned),
                topic: topic.to_owned(),
            },
        )),
    };
    if redis
        .publish
        .try_send(UpstreamCommand::Publish(request))
        .is_err()
    {
        send_reply(
            conn,
            msg,
            ReplyStatus::Error,
            &Refusal::BackendUnavailable.response_json(),
        );
    } else {
        ctx.pushes_in_flight.set(ctx.pushes_in_flight.get() + 1);
    }
}

/// Answers a push once the publisher has its outcome.
pub fn push_result(ctx: &ShardContext, ack: PushAck, outcome: PushOutcome) {
    ctx.pushes_in_flight
        .set(ctx.pushes_in_flight.get().saturating_sub(1));
    let Some(conn) = ctx.conns.borrow().get(&ack.conn).cloned() else {
        return;
    };
    let (status, response) = match outcome {
        PushOutcome::Published => (ReplyStatus::Ok, "{}".to_owned()),
        PushOutcome::BackendUnavailable => (
            ReplyStatus::Error,
            Refusal::BackendUnavailable.response_json(),
        ),
    };
    conn.send(reply(
        conn.vsn,
        ack.join_ref.as_deref(),
        ack.msg_ref.as_deref(),
        &ack.topic,
        status,
        &response,
    ));
}

/// Leaves every channel of a connection that is going away.
pub fn leave_all(ctx: &ShardContext, conn: &Conn) {
    ctx.set_tail(conn.id, None);
    let channels = std::mem::take(&mut *conn.channels.borrow_mut());
    ShardStats::sub(&ctx.stats().channels, channels.len() as u64);
    for (topic, channel) in channels {
        ctx.unsubscribe(&topic, conn.id);
        presence_delivery::request_leave(ctx, &topic, channel.presence);
    }
}

/// A message whose join_ref is non-null and not the current join's belongs to an old join.
fn is_stale(conn: &Conn, msg: &Inbound<'_>) -> bool {
    let Some(join_ref) = msg.join_ref.as_deref() else {
        return false;
    };
    match conn.channels.borrow().get(msg.topic.as_ref()) {
        Some(current) => current.join_ref.as_deref() != Some(join_ref),
        None => false,
    }
}

fn refuse(ctx: &ShardContext, conn: &Conn, msg: &Inbound<'_>, reason: Refusal) {
    ctx.metrics().join_refused(reason);
    send_reply(conn, msg, ReplyStatus::Error, &reason.response_json());
}

fn send_unmatched(conn: &Conn, msg: &Inbound<'_>) {
    conn.send(reply(
        conn.vsn,
        None,
        msg.msg_ref.as_deref(),
        msg.topic.as_ref(),
        ReplyStatus::Error,
        &Refusal::UnmatchedTopic.response_json(),
    ));
}

fn send_reply(conn: &Conn, msg: &Inbound<'_>, status: ReplyStatus, response_json: &str) {
    conn.send(reply(
        conn.vsn,
        msg.join_ref.as_deref(),
        msg.msg_ref.as_deref(),
        msg.topic.as_ref(),
        status,
        response_json,
    ));
}
