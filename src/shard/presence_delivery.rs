//! The shard's side of presence: asking the Redis core to record joins and leaves, sending a
//! joiner its `presence_state`, and delivering `presence_diff` broadcasts without duplicates.
//!
//! Each joined channel tracks how far it is synchronised: until its state arrives, diffs for it
//! are held back (they may predate the state); once the state for version V is sent, held and
//! later diffs are sent only when their version is above V. So a joiner sees its join reply,
//! then `presence_state`, then only the diffs that state does not already contain.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::connection::Conn;
use super::context::ShardContext;
use crate::broker::UpstreamCommand;
use crate::presence::PresenceTicket;
use crate::presence::{shapes, Presence};
use crate::protocol::{push, Broadcast};

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
pub fn deliver_state(
    ctx: &ShardContext,
    ticket: PresenceTicket,
    state: Option<crate::presence::replica::State>,
) {
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

/// Diffs of one topic waiting for the end of the batching window.
#[derive(Default)]
pub struct PendingDiffs {
    diffs: Vec<(u64, Arc<Broadcast>)>,
}

/// Takes one presence diff for the shard's subscribers of its topic. With a batching window
/// (`presence_batch_ms`, like Phoenix.Tracker's broadcast period) the diffs of a topic that
/// arrive within it go out merged as one `presence_diff`: during a join storm into a topic of
/// N members this turns N frames per member into a handful.
pub fn take_diff(ctx: &Rc<ShardContext>, broadcast: Arc<Broadcast>, version: u64) {
    let window = ctx.shared.config.presence_batch();
    let Some(window) = window else {
        let topic = broadcast.topic().to_owned();
        return deliver(ctx, &topic, vec![(version, broadcast)]);
    };
    let topic = broadcast.topic().to_owned();
    let mut pending = ctx.pending_diffs.borrow_mut();
    let first = !pending.contains_key(&topic);
    pending
        .entry(topic.clone())
        .or_default()
        .diffs
        .push((version, broadcast));
    drop(pending);
    if first {
        let ctx = Rc::clone(ctx);
        glommio::spawn_local(async move {
            glommio::timer::sleep(window).await;
            let diffs = ctx.pending_diffs.borrow_mut().remove(&topic);
            if let Some(pending) = diffs {
                deliver(&ctx, &topic, pending.diffs);
            }
        })
        .detach();
    }
}

/// Sends `diffs` (in version order) to the subscribers of `topic`: one merged frame, built
/// once, for every channel that has seen none of them; the held or filtered subset for a
/// channel that is still waiting for, or has just received, its state.
fn deliver(ctx: &ShardContext, topic: &str, diffs: Vec<(u64, Arc<Broadcast>)>) {
    let Some(newest) = diffs.iter().map(|(v, _)| *v).max() else {
        return;
    };
    let oldest = diffs.iter().map(|(v, _)| *v).min().unwrap_or(newest);
    let merged = merge(topic, diffs.iter().map(|(_, b)| b.as_ref()));
    let mut tails: std::collections::HashMap<u64, Broadcast> = Default::default();
    let topics = ctx.topics.borrow();
    let Some(subscribers) = topics.subscribers(topic) else {
        return;
    };
    for conn in subscribers.values() {
        let mut channels = conn.channels.borrow_mut();
        let Some(channel) = channels.get_mut(topic) else {
            continue;
        };
        let send = match &mut channel.presence_sync {
            PresenceSync::Awaiting(held) => {
                for (version, broadcast) in &diffs {
                    if let Some(frame) = broadcast.frame_for(conn.vsn) {
                        if held.len() >= MAX_HELD_DIFFS {
                            held.remove(0);
                        }
                        held.push((*version, frame.clone()));
                    }
                }
                None
            }
            PresenceSync::Synced(seen) if *seen >= newest => None,
            PresenceSync::Synced(seen) if *seen >= oldest => {
                // The state already has some of these: send only the newer ones (the same
                // tail for every channel synced at the same point: merged once).
                let floor = *seen;
                *seen = newest;
                tails
                    .entry(floor)
                    .or_insert_with(|| {
                        let newer = diffs.iter().filter(|(v, _)| *v > floor);
                        merge(topic, newer.map(|(_, b)| b.as_ref()))
                    })
                    .frame_for(conn.vsn)
                    .cloned()
            }
            PresenceSync::Synced(seen) => {
                *seen = newest;
                merged.frame_for(conn.vsn).cloned()
            }
            PresenceSync::Unavailable => merged.frame_for(conn.vsn).cloned(),
        };
        drop(channels);
        if let Some(frame) = send {
            conn.send(frame);
        }
    }
}

/// One `presence_diff` broadcast with the joins and the leaves of `diffs`, in order (see
/// [`shapes::merge_diffs`]); a single diff goes out as it came.
fn merge<'a>(topic: &str, diffs: impl IntoIterator<Item = &'a Broadcast>) -> Broadcast {
    let mut diffs = diffs.into_iter().peekable();
    let Some(first) = diffs.next() else {
        return Broadcast::new(topic, "presence_diff", br#"{"joins":{},"leaves":{}}"#);
    };
    if diffs.peek().is_none() {
        return Broadcast::new(topic, "presence_diff", first.payload());
    }
    let payload = shapes::merge_diffs(std::iter::once(first).chain(diffs).map(|d| d.payload()));
    Broadcast::new(topic, "presence_diff", payload.as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(json: &str) -> Broadcast {
        Broadcast::new("t", "presence_diff", json.as_bytes())
    }

    #[test]
    fn merged_diff_keeps_every_join_and_leave() {
        let a = diff(r#"{"joins":{"u1":{"metas":[{"phx_ref":"a"}]}},"leaves":{}}"#);
        let b = diff(r#"{"joins":{"u1":{"metas":[{"phx_ref":"b"}]}},"leaves":{}}"#);
        let c = diff(r#"{"joins":{},"leaves":{"u1":{"metas":[{"phx_ref":"a"}]}}}"#);
        let merged = merge("t", [&a, &b, &c]);
        let value: serde_json::Value = serde_json::from_slice(merged.payload()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "joins": {"u1": {"metas": [{"phx_ref": "a"}, {"phx_ref": "b"}]}},
                "leaves": {"u1": {"metas": [{"phx_ref": "a"}]}}
            })
        );
    }

    #[test]
    fn a_single_diff_is_sent_as_it_came() {
        let a = diff(r#"{"joins":{},"leaves":{}}"#);
        assert_eq!(merge("t", [&a]).payload(), a.payload());
    }
}
