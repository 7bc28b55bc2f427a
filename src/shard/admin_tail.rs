//! Admin tails: an admin connection that sent `tail {"topic"}` gets that topic's downstream
//! messages as `message` events on `admin` ([`crate::admin::tail_message`]), at most
//! [`MAX_PER_SECOND`] a second (the rest are counted in the next one's `skipped`).
//!
//! What this module owns: which of this shard's admin connections tail which topic. The shard
//! keeps its Redis interest in a tailed topic while it is tailed, even without subscribers
//! ([`super::context::ShardContext::set_tail`]). What it must never do: send a tailed topic's
//! frames as they are (the admin never joined the topic; its client would not expect them), or
//! let a busy topic flood an admin's socket.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::context::ShardContext;
use crate::admin::{tail_message, ADMIN_TOPIC};
use crate::protocol::{push, Broadcast};

/// Messages a tail sends per second at most.
pub const MAX_PER_SECOND: u32 = 50;

/// One admin connection's tail.
struct Tail {
    topic: String,
    window_start: Instant,
    sent: u32,
    skipped: u64,
}

/// This shard's tails: by connection, and the connections by topic.
#[derive(Default)]
pub struct Tails {
    by_conn: HashMap<u64, Tail>,
    by_topic: HashMap<String, Vec<u64>>,
}

/// What [`Tails::set`] changed: a topic nobody tails any more, a topic newly tailed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TailChange {
    /// No connection of this shard tails it any more.
    pub stopped: Option<String>,
    /// Its first tail on this shard.
    pub started: Option<String>,
}

impl Tails {
    /// Whether any connection tails anything (fan-out looks no further when not).
    pub fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }

    /// Makes `conn` tail `topic` (or nothing), replacing its previous tail.
    pub fn set(&mut self, conn: u64, topic: Option<String>) -> TailChange {
        let mut change = TailChange::default();
        if let Some(old) = self.by_conn.remove(&conn) {
            if let Some(conns) = self.by_topic.get_mut(&old.topic) {
                conns.retain(|c| *c != conn);
                if conns.is_empty() {
                    self.by_topic.remove(&old.topic);
                    change.stopped = Some(old.topic);
                }
            }
        }
        if let Some(topic) = topic {
            let conns = self.by_topic.entry(topic.clone()).or_default();
            if conns.is_empty() {
                change.started = Some(topic.clone());
            }
            conns.push(conn);
            self.by_conn.insert(
                conn,
                Tail {
                    topic,
                    window_start: Instant::now(),
                    sent: 0,
                    skipped: 0,
                },
            );
        }
        // Tailing the topic one already tailed changes nothing.
        if change.started.is_some() && change.started == change.stopped {
            change = TailChange::default();
        }
        change
    }

    /// The connections to send `topic`'s message to now, with what each skipped before it.
    fn due(&mut self, topic: &str, now: Instant) -> Vec<(u64, u64)> {
        let Some(conns) = self.by_topic.get(topic) else {
            return Vec::new();
        };
        let mut due = Vec::with_capacity(conns.len());
        for conn in conns {
            let Some(tail) = self.by_conn.get_mut(conn) else {
                continue;
            };
            if now.duration_since(tail.window_start) >= Duration::from_secs(1) {
                tail.window_start = now;
                tail.sent = 0;
            }
            if tail.sent >= MAX_PER_SECOND {
                tail.skipped += 1;
                continue;
            }
            tail.sent += 1;
            due.push((*conn, std::mem::take(&mut tail.skipped)));
        }
        due
    }
}

/// Sends `broadcast` to the admins tailing its topic on this shard.
pub fn deliver(ctx: &ShardContext, broadcast: &Broadcast) {
    let due = ctx
        .tails
        .borrow_mut()
        .due(broadcast.topic(), Instant::now());
    for (conn_id, skipped) in due {
        let Some(conn) = ctx.conns.borrow().get(&conn_id).cloned() else {
            continue;
        };
        let join_ref = conn
            .channels
            .borrow()
            .get(ADMIN_TOPIC)
            .and_then(|c| c.join_ref.clone());
        conn.send(push(
            conn.vsn,
            join_ref.as_deref(),
            ADMIN_TOPIC,
            "message",
            &tail_message(broadcast, skipped),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_and_last_tail_of_a_topic_are_reported() {
        let mut tails = Tails::default();
        let started = tails.set(1, Some("a".into()));
        assert_eq!(started.started.as_deref(), Some("a"));
        assert_eq!(tails.set(2, Some("a".into())), TailChange::default());
        assert_eq!(tails.set(1, Some("a".into())), TailChange::default());
        assert_eq!(tails.set(1, None), TailChange::default(), "2 still tails a");
        let moved = tails.set(2, Some("b".into()));
        assert_eq!(moved.stopped.as_deref(), Some("a"));
        assert_eq!(moved.started.as_deref(), Some("b"));
        assert_eq!(tails.set(2, None).stopped.as_deref(), Some("b"));
        assert!(tails.is_empty());
    }

    #[test]
    fn a_tail_sends_at_most_its_rate_and_counts_the_rest() {
        let mut tails = Tails::default();
        tails.set(1, Some("a".into()));
        let now = Instant::now();
        for _ in 0..MAX_PER_SECOND {
            assert_eq!(tails.due("a", now), vec![(1, 0)]);
        }
        assert!(tails.due("a", now).is_empty());
        assert!(tails.due("a", now).is_empty());
        assert_eq!(tails.due("a", now + Duration::from_secs(1)), vec![(1, 2)]);
        assert!(tails.due("b", now).is_empty());
    }
}
