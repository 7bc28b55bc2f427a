//! Fan-out: one broadcast's pre-encoded frame to every local subscriber of its topic.
//!
//! What it must never do: encode, copy or allocate per subscriber. Every subscriber gets the
//! same shared bytes ([`crate::protocol::Broadcast::frame_for`]); the only per-subscriber
//! work is one non-blocking `send` or one queue push. Admins tailing the topic get their own
//! copy ([`super::admin_tail`]), checked with one branch when nobody tails anything.

use crate::inbox::ShardInbox;
use crate::protocol::Broadcast;

use super::context::ShardContext;

/// The last message waiting is written through; earlier ones are queued, so that a backlog
/// reaches each socket in as few writes as possible.
pub(super) fn write_mode(inbox: &ShardInbox) -> Write {
    if inbox.is_empty() {
        Write::Now
    } else {
        Write::Queued
    }
}

/// How [`fan_out`] hands frames to the connections.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// Straight to each socket that has nothing queued ([`super::connection::Conn::send_now`]).
    Now,
    /// Through each connection's queue and writer task, which coalesces consecutive frames.
    Queued,
}

/// Sends one broadcast's pre-encoded frame to every local subscriber of its topic.
pub(crate) fn fan_out(ctx: &ShardContext, broadcast: &Broadcast, write: Write) {
    if !ctx.tails.borrow().is_empty() {
        super::admin_tail::deliver(ctx, broadcast);
    }
    let topics = ctx.topics.borrow();
    let Some(subscribers) = topics.deliver_to(broadcast.topic()) else {
        return;
    };
    let recovery = ctx.recovery.borrow();
    // Joins that just recovered may already have this message (shard/recovery.rs).
    let draining = broadcast
        .position()
        .and_then(|position| Some((position, recovery.draining(broadcast.topic())?)));
    for conn in subscribers.values() {
        if let Some((position, floors)) = draining {
            if floors.get(&conn.id).is_some_and(|floor| position <= *floor) {
                continue;
            }
        }
        if let Some(frame) = broadcast.frame_for(conn.vsn) {
            match write {
                Write::Now => conn.send_now(frame),
                Write::Queued => conn.send(frame.clone()),
            };
        }
    }
}
