//! Joins that wait for their reply (docs/protocol.md, "Positions and recovery"): until Redis has
//! confirmed the topic's sharded subscription for this shard, and, for a join that asks for
//! history (`since` in its payload), until the topic's history has been read. Then the reply,
//! the replay of every message after `since`, and the live messages that arrived meanwhile
//! (those the replay already had are skipped by position), in that order; only then does the
//! connection enter the topic table and get live messages directly.
//!
//! A message the replay (or the reply's position) already covers may still be on its way
//! through the sharded subscriber when the join completes (the history answer and the live
//! messages come by different threads). So a completed join whose floor (the last position it
//! has) is above what the shard has seen live is **draining**: the fan-out skips, for it alone,
//! positioned messages at or below its floor, until the first live message above it, after
//! which every message is new to it. This costs the fan-out one lookup per message only while
//! a join of the topic drains.
//!
//! What it owns: the waiting joins of this shard, the live messages buffered for those reading
//! their history, and the newest position this shard knows of each confirmed topic (kept from
//! the live messages, so that a join with `"since": null` on a busy topic costs no Redis read).
//! What it must never do: await anything, or send a frame of a topic to a connection before
//! that join's reply. Replies, replays and buffers go through the connection's outbound queue
//! ([`Conn::send`]), under the slow-consumer rules.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use super::connection::Conn;
use super::context::ShardContext;
use super::presence_delivery::{self, PresenceSync};
use crate::broker::UpstreamCommand;
use crate::history::{HistoryEntry, HistoryPage, Position};
use crate::inbox::HistoryTicket;
use crate::metrics::ShardStats;
use crate::protocol::{channel_close, reply, Broadcast, Refusal, ReplyStatus};

/// How long a join waits for Redis to confirm its topic's subscription, and then for its
/// history, before it is refused (phoenix.js rejoins with backoff).
pub const JOIN_WAIT_DEADLINE: Duration = Duration::from_secs(5);
/// Live messages buffered for one join while its history is read; past it the join is refused
/// with `backend unavailable` (and rejoins) rather than holding unbounded memory.
const MAX_BUFFERED: usize = 10_000;

/// What the shard knows of the newest position of a topic whose subscription is confirmed.
#[derive(Debug, Clone, Copy)]
enum Latest {
    /// Nothing read or received yet.
    Unknown,
    /// The newest position (`None`: the topic has no history).
    Known(Option<Position>),
}

/// A join waiting for its reply.
#[derive(Debug)]
pub struct WaitingJoin {
    /// Unique within the shard.
    pub id: u64,
    /// The joining connection.
    pub conn: u64,
    /// The topic.
    pub topic: String,
    /// The join's presence reference: tells this join from a later join of the same topic.
    pub phx_ref: String,
    /// The `join_ref` and `ref` the reply echoes.
    pub reply_join_ref: Option<String>,
    /// See `reply_join_ref`.
    pub reply_ref: Option<String>,
    /// `None`: the payload had no `since` (the reply's response is `{}`); `Some(None)`:
    /// `"since": null`; `Some(Some(p))`: recover from `p`.
    pub history: Option<Option<Position>>,
    /// The join of the same topic this one replaces on the socket: its join ref, closed after
    /// the reply.
    pub replaced: Option<Option<String>>,
    /// Live messages of the topic that arrived while the history was read.
    buffered: Vec<Arc<Broadcast>>,
    overflowed: bool,
}

impl WaitingJoin {
    /// A join about to wait (see the fields).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        conn: u64,
        topic: &str,
        phx_ref: String,
        reply_join_ref: Option<String>,
        reply_ref: Option<String>,
        history: Option<Option<Position>>,
        replaced: Option<Option<String>>,
    ) -> WaitingJoin {
        WaitingJoin {
            id,
            conn,
            topic: topic.to_owned(),
            phx_ref,
            reply_join_ref,
            reply_ref,
            history,
            replaced,
            buffered: Vec::new(),
            overflowed: false,
        }
    }
}

/// What the shard knows of a topic Redis confirmed for it.
#[derive(Debug)]
struct Confirmed {
    /// The newest position known (from live messages and history reads).
    latest: Latest,
    /// The newest position received live since the confirmation.
    live: Option<Position>,
    /// Completed joins whose floor is above `live`, by connection: the fan-out skips
    /// positioned messages at or below the floor for them.
    draining: HashMap<u64, Position>,
}

/// This shard's waiting joins and what it knows of its confirmed topics.
#[derive(Default)]
pub struct Recovery {
    next_id: u64,
    /// Topics Redis confirmed for this shard (forgotten when the shard loses the topic).
    confirmed: HashMap<String, Confirmed>,
    /// Joins waiting for their topic's confirmation, by topic.
    awaiting_subscription: HashMap<String, Vec<WaitingJoin>>,
    /// Joins waiting for their history, by id.
    reading: HashMap<u64, WaitingJoin>,
    /// The ids of `reading`, by topic (where live messages are buffered).
    reading_by_topic: HashMap<String, Vec<u64>>,
}

impl Recovery {
    /// A join id unique within the shard.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The shard lost its last hold on `topic`: its confirmation no longer stands.
    pub fn forget(&mut self, topic: &str) {
        self.confirmed.remove(topic);
    }

    /// The floors of the joins of `topic` still draining, if any; see the module comment.
    pub fn draining(&self, topic: &str) -> Option<&HashMap<u64, Position>> {
        if self.confirmed.is_empty() {
            return None;
        }
        self.confirmed
            .get(topic)
            .map(|c| &c.draining)
            .filter(|d| !d.is_empty())
    }

    fn stop_reading(&mut self, id: u64) -> Option<WaitingJoin> {
        let join = self.reading.remove(&id)?;
        if let Some(ids) = self.reading_by_topic.get_mut(&join.topic) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.reading_by_topic.remove(&join.topic);
            }
        }
        Some(join)
    }
}

/// Starts a join that waits. The caller has taken a hold on the topic for it
/// ([`ShardContext::hold`]), which the join gives back when it ends, however it ends.
pub fn begin(ctx: &Rc<ShardContext>, join: WaitingJoin) {
    let confirmed = ctx.recovery.borrow().confirmed.contains_key(&join.topic);
    // With the sharded connection down nothing would confirm: a join that does not ask for
    // history is answered at once, as before the function existed (the classic path serves it).
    let answer_now =
        confirmed || (join.history.is_none() && !ctx.shared.redis.status.is_sharded_up());
    if answer_now {
        return proceed(ctx, join);
    }
    let (topic, id) = (join.topic.clone(), join.id);
    ctx.recovery
        .borrow_mut()
        .awaiting_subscription
        .entry(topic.clone())
        .or_default()
        .push(join);
    arm_deadline(ctx, topic, id);
}

/// The Redis state changed: if the sharded connection is down now, nothing will confirm the
/// joins waiting for a subscription; those that do not ask for history are answered at once
/// (as a join that comes while it is down is: the classic path serves them).
pub fn redis_state_changed(ctx: &Rc<ShardContext>) {
    if ctx.shared.redis.status.is_sharded_up() {
        return;
    }
    let released: Vec<WaitingJoin> = {
        let mut recovery = ctx.recovery.borrow_mut();
        let mut released = Vec::new();
        recovery.awaiting_subscription.retain(|_, joins| {
            let (now, wait): (Vec<_>, Vec<_>) = std::mem::take(joins)
                .into_iter()
                .partition(|j| j.history.is_none());
            released.extend(now);
            *joins = wait;
            !joins.is_empty()
        });
        released
    };
    for join in released {
        proceed(ctx, join);
    }
}

/// Redis confirmed `topic`'s subscription for this shard's holding `generation` of it: answer
/// the joins that waited for it.
pub fn topic_subscribed(ctx: &Rc<ShardContext>, topic: &str, generation: u64) {
    if ctx.holding_generation(topic) != Some(generation) {
        // A confirmation that crossed this shard's last leave (and perhaps its next join: the
        // process may have unsubscribed in between, and the new subscription is not confirmed).
        return;
    }
    let waiting = {
        let mut recovery = ctx.recovery.borrow_mut();
        recovery
            .confirmed
            .entry(topic.to_owned())
            .or_insert_with(|| Confirmed {
                latest: Latest::Unknown,
                live: None,
                draining: HashMap::new(),
            });
        recovery.awaiting_subscription.remove(topic)
    };
    for join in waiting.into_iter().flatten() {
        proceed(ctx, join);
    }
}

/// Takes note of one live message of a topic (after its fan-out): the newest position of the
/// topic, and a copy for every join of the topic reading its history.
pub fn observe(ctx: &ShardContext, broadcast: &Arc<Broadcast>) {
    let mut recovery = ctx.recovery.borrow_mut();
    let Recovery {
        confirmed,
        reading,
        reading_by_topic,
        ..
    } = &mut *recovery;
    if let Some(position) = broadcast.position() {
        if let Some(topic) = confirmed.get_mut(broadcast.topic()) {
            topic.latest = Latest::Known(newest(topic.latest, Some(position)));
            topic.live = Some(topic.live.map_or(position, |live| live.max(position)));
            if !topic.draining.is_empty() {
                // Everything after this message is above every floor it reached.
                topic.draining.retain(|_, floor| *floor > position);
            }
        }
    }
    if reading_by_topic.is_empty() {
        return;
    }
    let Some(ids) = reading_by_topic.get(broadcast.topic()) else {
        return;
    };
    for id in ids {
        if let Some(join) = reading.get_mut(id) {
            if join.buffered.len() >= MAX_BUFFERED {
                join.overflowed = true;
            } else {
                join.buffered.push(Arc::clone(broadcast));
            }
        }
    }
}

/// The history a join asked for (or `None`: Redis could not give it).
pub fn history_answer(ctx: &Rc<ShardContext>, ticket: HistoryTicket, page: Option<HistoryPage>) {
    let Some(join) = ctx.recovery.borrow_mut().stop_reading(ticket.join) else {
        return; // refused at its deadline already
    };
    let Some(page) = page else {
        return fail(ctx, join, Refusal::BackendUnavailable);
    };
    if join.overflowed {
        return fail(ctx, join, Refusal::BackendUnavailable);
    }
    if let Some(topic) = ctx.recovery.borrow_mut().confirmed.get_mut(&join.topic) {
        // Read after the confirmation: everything after it reaches this shard live.
        topic.latest = Latest::Known(newest(topic.latest, page.latest));
    }
    complete(ctx, join, page);
}

/// The later of what the shard knew and `seen`.
fn newest(known: Latest, seen: Option<Position>) -> Option<Position> {
    match known {
        Latest::Known(Some(known)) => Some(seen.map_or(known, |seen| seen.max(known))),
        _ => seen,
    }
}

/// The topic is confirmed: answer at once when nothing has to be read, else read the history.
fn proceed(ctx: &Rc<ShardContext>, join: WaitingJoin) {
    let Some(since) = join.history else {
        return complete(ctx, join, HistoryPage::default());
    };
    let history_size = ctx.shared.config.history_size;
    if history_size == 0 {
        return complete(ctx, join, HistoryPage::default());
    }
    if since.is_none() {
        let known = match ctx.recovery.borrow().confirmed.get(&join.topic) {
            Some(Confirmed {
                latest: Latest::Known(latest),
                ..
            }) => Some(*latest),
            _ => None,
        };
        if let Some(latest) = known {
            let page = HistoryPage {
                latest,
                ..HistoryPage::default()
            };
            return complete(ctx, join, page);
        }
    }
    let ticket = HistoryTicket {
        shard: ctx.id,
        join: join.id,
    };
    let asked = ctx.shared.redis.publish.try_send(UpstreamCommand::History {
        topic: join.topic.clone(),
        since,
        limit: history_size,
        ticket,
    });
    if asked.is_err() {
        return fail(ctx, join, Refusal::BackendUnavailable);
    }
    let (topic, id) = (join.topic.clone(), join.id);
    let mut recovery = ctx.recovery.borrow_mut();
    recovery
        .reading_by_topic
        .entry(topic.clone())
        .or_default()
        .push(id);
    recovery.reading.insert(id, join);
    drop(recovery);
    arm_deadline(ctx, topic, id);
}

/// Refuses a join still waiting at its deadline.
fn arm_deadline(ctx: &Rc<ShardContext>, topic: String, id: u64) {
    let ctx = Rc::clone(ctx);
    glommio::spawn_local(async move {
        glommio::timer::sleep(JOIN_WAIT_DEADLINE).await;
        let (join, reason) = {
            let mut recovery = ctx.recovery.borrow_mut();
            let mut found = None;
            if let Some(waiting) = recovery.awaiting_subscription.get_mut(&topic) {
                if let Some(at) = waiting.iter().position(|j| j.id == id) {
                    found = Some((waiting.swap_remove(at), Refusal::NotSubscribed));
                    if waiting.is_empty() {
                        recovery.awaiting_subscription.remove(&topic);
                    }
                }
            }
            if found.is_none() {
                found = recovery
                    .stop_reading(id)
                    .map(|join| (join, Refusal::BackendUnavailable));
            }
            match found {
                Some(found) => found,
                None => return,
            }
        };
        debug!(shard = ctx.id, topic, %reason, "join refused at its deadline");
        fail(&ctx, join, reason);
    })
    .detach();
}

/// The connection of `join` if that join is still its current join of the topic.
fn current(ctx: &ShardContext, join: &WaitingJoin) -> Option<Rc<Conn>> {
    let conn = ctx.conns.borrow().get(&join.conn).cloned()?;
    let is_current = conn
        .channels
        .borrow()
        .get(&join.topic)
        .is_some_and(|channel| channel.presence.phx_ref == join.phx_ref);
    is_current.then_some(conn)
}

/// Answers `join` ok with `page`: the reply, the close of the join it replaced, the replay,
/// the buffered live messages the replay did not have; then the connection is a subscriber.
fn complete(ctx: &Rc<ShardContext>, join: WaitingJoin, page: HistoryPage) {
    let topic = join.topic.as_str();
    let Some(conn) = current(ctx, &join) else {
        ctx.release(topic);
        return;
    };
    let metrics = ctx.metrics();
    let response = match join.history {
        None => "{}".to_owned(),
        Some(_) => serde_json::json!({
            "position": page.latest.map(|p| p.to_string()),
            "recovered": page.recovered,
        })
        .to_string(),
    };
    conn.send(reply(
        conn.vsn,
        join.reply_join_ref.as_deref(),
        join.reply_ref.as_deref(),
        topic,
        ReplyStatus::Ok,
        &response,
    ));
    metrics.joins.inc();
    if let Some(old) = &join.replaced {
        conn.send(channel_close(conn.vsn, old.as_deref(), topic));
    }
    // What the client has from now on: everything up to `floor` (the replay's last message,
    // its `since`, or the position the reply gave).
    let since = join.history.flatten();
    let mut floor = if page.recovered { since } else { page.latest };
    if since.is_some() {
        if page.recovered {
            metrics.joins_recovered.inc();
        } else {
            metrics.joins_not_recovered.inc();
        }
    }
    if page.recovered {
        replay(&conn, topic, &page.entries, &mut floor);
        metrics.replayed_messages.inc_by(page.entries.len() as u64);
    }
    for broadcast in &join.buffered {
        let seen = match (broadcast.position(), floor) {
            (Some(position), Some(floor)) => position <= floor,
            _ => false,
        };
        if !seen {
            if let Some(frame) = broadcast.frame_for(conn.vsn) {
                conn.send(frame.clone());
            }
        }
    }
    ctx.subscribe(topic, &conn);
    if let Some(floor) = floor {
        let mut recovery = ctx.recovery.borrow_mut();
        if let Some(confirmed) = recovery.confirmed.get_mut(topic) {
            if confirmed.live.is_none_or(|live| live < floor) {
                confirmed.draining.insert(conn.id, floor);
            } else {
                confirmed.draining.remove(&conn.id);
            }
        }
    }
    ctx.release(topic);
    let presence = conn
        .channels
        .borrow()
        .get(topic)
        .map(|channel| channel.presence.clone());
    if let Some(presence) = presence {
        if !presence_delivery::request_join(ctx, &conn, topic, presence) {
            if let Some(channel) = conn.channels.borrow_mut().get_mut(topic) {
                channel.presence_sync = PresenceSync::Unavailable;
            }
        }
    }
}

/// Sends the messages read from history (oldest first), each framed for this connection.
fn replay(conn: &Conn, topic: &str, entries: &[HistoryEntry], floor: &mut Option<Position>) {
    for entry in entries {
        let broadcast =
            Broadcast::positioned(topic, &entry.event, Some(entry.position), &entry.payload);
        if let Some(frame) = broadcast.frame_for(conn.vsn) {
            conn.send(frame.clone());
        }
        *floor = Some(floor.map_or(entry.position, |f| f.max(entry.position)));
    }
}

/// Refuses `join` with `reason`: the channel is forgotten and the client rejoins later.
fn fail(ctx: &ShardContext, join: WaitingJoin, reason: Refusal) {
    if let Some(conn) = current(ctx, &join) {
        conn.channels.borrow_mut().remove(&join.topic);
        ShardStats::sub(&ctx.stats().channels, 1);
        conn.send(reply(
            conn.vsn,
            join.reply_join_ref.as_deref(),
            join.reply_ref.as_deref(),
            &join.topic,
            ReplyStatus::Error,
            &reason.response_json(),
        ));
        ctx.metrics().join_refused(reason);
    }
    ctx.release(&join.topic);
}
