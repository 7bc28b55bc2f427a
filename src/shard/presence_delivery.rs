//! The shard's side of presence: asking the Redis core to record joins and leaves, sending a
//! joiner its `presence_state`, and delivering `presence_diff` broadcasts without duplicates.
//!
//! Each joined channel tracks how far it is synchronised: until its state arrives, diffs for it
//! are held back (they may predate the state); once the state for version V is sent, held and
//! later diffs are sent only when their version is above V. So a joiner sees its join reply,
//! then `presence_state`, then only the diffs that state does not already contain.

use bytes::Bytes;

use super::connection::Conn;
use super::context::ShardContext;
use super::inbox::PresenceTicket;
use crate::presence::Presence;
use crate::protocol::{push, Broadcast};
use crate::redis::publisher::UpstreamCommand;

/// Diffs held for one channel while its state is on its way; beyond this the oldest are
/// dropped (the state will contain them).
const MAX_HELD_DIFFS: usize = 1024;

/// How far one joined channel's presence view is synchronised.
#[derive(Debug, Clone)]
pub enum PresenceSync {
    /// The state was asked for; diffs that arrive meanwhile are held with their versions.
    Awaiting(Vec<(u64, Bytes)>),
    /// The state for this version was sent; only newer diffs go out.
    Synced(u64),
    /// Redis could not record the join: diffs go out as they come.
    Unavailable,
}

/// Asks the Redis core to record `presence` in `topic`. False when the request could not be
/// queued (Redis down or the queue full): the channel then runs without a presence state.
pub fn request_join(ctx: &ShardContext, conn: &Conn, topic: &str, presence: Presence) -> bool {
    let redis = &ctx.shared.redis;
    if !ctx.shared.config.presence_enabled || !redis.status.can_publish() {
        return false;
    }
    let ticket = PresenceTicket {
        shard: ctx.id,
        conn: conn.id,
        topic: topic.to_owned(),
        phx_ref: presence.phx_ref.clone(),
    };
    redis
        .publish
        .try_send(UpstreamCommand::PresenceJoin {
            topic: topic.to_owned(),
            presence,
            ticket,
        })
        .is_ok()
}

/// Asks the Redis core to remove `presence` from `topic` (fire and forget).
pub fn request_leave(ctx: &ShardContext, topic: &str, presence: Presence) {
    if !ctx.shared.config.presence_enabled {
        return;
    }
    let _ = ctx
        .shared
        .redis
        .publish
        .try_send(UpstreamCommand::PresenceLeave {
            topic: topic.to_owned(),
            presence,
        });
}

/// Sends the joiner its state (or gives up on it), then whatever diffs were held.
pub fn deliver_state(ctx: &ShardContext, ticket: PresenceTicket, state: Option<(u64, String)>) {
    let Some(conn) = ctx.conns.borrow().get(&ticket.conn).cloned() else {
        return;
    };
    let mut channels = conn.channels.borrow_mut();
    let Some(channel) = channels.get_mut(&ticket.topic) else {
        return;
    };
    if channel.presence.phx_ref != ticket.phx_ref {
        return; // an older join of the same topic
    }
    let held = match std::mem::replace(&mut channel.presence_sync, PresenceSync::Unavailable) {
        PresenceSync::Awaiting(held) => held,
        other => {
            channel.presence_sync = other;
            return;
        }
    };
    let floor = match state {
        Some((version, json)) => {
            conn.send(push(
                conn.vsn,
                channel.join_ref.as_deref(),
                &ticket.topic,
                "presence_state",
                &json,
            ));
            channel.presence_sync = PresenceSync::Synced(version);
            version
        }
        None => 0,
    };
    for (version, frame) in held {
        if version > floor {
            conn.send(frame);
            if let PresenceSync::Synced(v) = &mut channel.presence_sync {
                *v = (*v).max(version);
            }
        }
    }
}

/// Delivers one presence diff to the shard's subscribers of its topic.
pub fn fan_out_diff(ctx: &ShardContext, broadcast: &Broadcast, version: u64) {
    let topics = ctx.topics.borrow();
    let Some(subscribers) = topics.subscribers(broadcast.topic()) else {
        return;
    };
    for conn in subscribers.values() {
        let Some(frame) = broadcast.frame_for(conn.vsn) else {
            continue;
        };
        let mut channels = conn.channels.borrow_mut();
        let Some(channel) = channels.get_mut(broadcast.topic()) else {
            continue;
        };
        match &mut channel.presence_sync {
            PresenceSync::Awaiting(held) => {
                if held.len() >= MAX_HELD_DIFFS {
                    held.remove(0);
                }
                held.push((version, frame.clone()));
            }
            PresenceSync::Synced(seen) => {
                if version > *seen {
                    *seen = version;
                    drop(channels);
                    conn.send(frame.clone());
                }
            }
            PresenceSync::Unavailable => {
                drop(channels);
                conn.send(frame.clone());
            }
        }
    }
}

/// Registers every presence of this shard again and asks for fresh states (after Redis came
/// back). Channels whose request cannot be queued run without presence until the next resync.
pub fn resync_all(ctx: &ShardContext) {
    let conns: Vec<_> = ctx.conns.borrow().values().cloned().collect();
    for conn in conns {
        let topics: Vec<(String, Presence)> = conn
            .channels
            .borrow()
            .iter()
            .map(|(topic, channel)| (topic.clone(), channel.presence.clone()))
            .collect();
        for (topic, presence) in topics {
            let requested = request_join(ctx, &conn, &topic, presence);
            if let Some(channel) = conn.channels.borrow_mut().get_mut(&topic) {
                channel.presence_sync = if requested {
                    match std::mem::replace(&mut channel.presence_sync, PresenceSync::Unavailable) {
                        PresenceSync::Awaiting(held) => PresenceSync::Awaiting(held),
                        _ => PresenceSync::Awaiting(Vec::new()),
                    }
                } else {
                    PresenceSync::Unavailable
                };
            }
        }
    }
}
