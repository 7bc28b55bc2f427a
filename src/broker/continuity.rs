//! No gap when the process's own subscription moves: what it delivered of each topic published
//! with the function, and the messages it must read back from the topic's history when a
//! topic's `SSUBSCRIBE` comes back after it was lost while still wanted (a lost connection, a
//! failover, a slot migration, a Sentinel switch). Clients that stay joined through such a move
//! never rejoin, so their own recovery (`since`) never runs: the process closes the gap for
//! them (docs/protocol.md, "Positions and recovery").
//!
//! The control thread marks a topic whose subscription was lost while wanted, with the last
//! position delivered; the read thread that receives the new subscription's `ssubscribe` reply
//! takes the mark *before it reads anything else from that connection*, reads every history
//! entry after the mark on its master, and delivers them before the live messages that follow.
//! Every positioned message, filled or live, passes [`Continuity::admit`]: one at or before the
//! last delivered position of its topic is a copy (the fill already delivered it) and is not
//! delivered again.
//!
//! What it owns: the last delivered position per wanted topic, the marks, and reading a gap.
//! What it must never do: fill a topic that was not wanted all along (a new joiner would get
//! messages from before anyone in this process asked), or deliver a message twice.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::history::{HistoryEntry, Position};

/// Most messages one fill reads (a history holds `history_size`, 100 by default).
pub const MAX_FILL: usize = 10_000;

/// The last delivered position of each topic, and the topics waiting for a fill.
#[derive(Default)]
pub struct Continuity {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    delivered: HashMap<String, Position>,
    /// Topics whose subscription was lost while wanted: fill after this position.
    to_fill: HashMap<String, Position>,
}

impl Continuity {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing here can panic while holding the lock; a poisoned lock holds valid maps.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A positioned message of `topic` about to be delivered: false when it is at or before
    /// the last one delivered (a copy of one a fill delivered), else it becomes the last.
    pub fn admit(&self, topic: &str, position: Position) -> bool {
        let mut state = self.state();
        match state.delivered.get_mut(topic) {
            Some(last) if position <= *last => false,
            Some(last) => {
                *last = position;
                true
            }
            None => {
                state.delivered.insert(topic.to_owned(), position);
                true
            }
        }
    }

    /// The control thread lost `topic`'s subscription while it is still wanted: the next
    /// confirmation of it fills from the last delivered position (nothing when none was).
    pub fn lost_while_wanted(&self, topic: &str) {
        let mut state = self.state();
        if let Some(last) = state.delivered.get(topic).copied() {
            state.to_fill.entry(topic.to_owned()).or_insert(last);
        }
    }

    /// `topic` is no longer wanted, or wanted anew: nothing of its past is filled.
    pub fn forget(&self, topic: &str) {
        let mut state = self.state();
        state.delivered.remove(topic);
        state.to_fill.remove(topic);
    }

    /// A read thread received `topic`'s `ssubscribe` reply: the position to fill after, if
    /// the topic waits for a fill (taken: one fill per loss).
    pub fn take_fill(&self, topic: &str) -> Option<Position> {
        self.state().to_fill.remove(topic)
    }

    /// How many topics wait for a fill.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state().to_fill.len()
    }
}

/// One `XRANGE` entry: its id and its fields and values in order.
type StreamEntry = (String, Vec<Vec<u8>>);

/// What a topic's history holds after a position.
#[derive(Debug, PartialEq, Eq)]
pub enum Gap {
    /// Every entry after the position still in the history, oldest first (possibly none).
    Entries(Vec<HistoryEntry>),
    /// The history was lost and started again (another epoch), or expired: what was published
    /// in the gap cannot be told.
    Lost,
}

/// Reads the entries of `topic`'s history after `since` on `conn` (the topic's master): its
/// epoch and `XRANGE (<since> +`, in one round trip. Entries after `since` are all kept even
/// when `since` itself is not (a failover that lost the last writes before the promotion keeps
/// every later entry, and trimming only ever drops the oldest).
pub fn read_gap(
    conn: &mut redis::Connection,
    topic: &str,
    since: Position,
) -> redis::RedisResult<Gap> {
    let (stream, epoch_key) = history_keys(topic);
    let (epoch, entries): (Option<String>, Vec<StreamEntry>) = redis::pipe()
        .cmd("GET")
        .arg(&epoch_key)
        .cmd("XRANGE")
        .arg(&stream)
        .arg(format!("({}", since.entry_id()))
        .arg("+")
        .arg("COUNT")
        .arg(MAX_FILL)
        .query(conn)?;
    if epoch.and_then(|e| e.parse::<u64>().ok()) != Some(since.epoch) {
        return Ok(Gap::Lost);
    }
    let mut out = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        // The function writes `e <event> p <payload>`.
        let [_, event, _, payload] = <[Vec<u8>; 4]>::try_from(fields).map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Parse, "a history entry of another shape"))
        })?;
        let position = Position::of_entry(since.epoch, &id).map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Parse, "a history entry id"))
        })?;
        let event = String::from_utf8(event).map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Parse, "a history entry's event"))
        })?;
        out.push(HistoryEntry {
            position,
            event,
            payload,
        });
    }
    Ok(Gap::Entries(out))
}

/// The stream and the epoch key of `topic`'s history (the function's `history_keys`).
fn history_keys(topic: &str) -> (String, String) {
    (
        format!("channel:history:{{{topic}}}"),
        format!("channel:epoch:{{{topic}}}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Position {
        Position {
            epoch: 7,
            ms,
            seq: 0,
        }
    }

    #[test]
    fn a_copy_of_a_delivered_message_is_not_admitted_again() {
        let c = Continuity::default();
        assert!(c.admit("t", at(1)));
        assert!(c.admit("t", at(3)));
        assert!(!c.admit("t", at(3)));
        assert!(!c.admit("t", at(2)));
        assert!(c.admit("u", at(2)), "topics are apart");
    }

    #[test]
    fn only_a_topic_lost_while_wanted_and_delivered_before_waits_for_a_fill() {
        let c = Continuity::default();
        c.lost_while_wanted("never-delivered");
        assert_eq!(c.waiting(), 0);
        c.admit("t", at(5));
        c.lost_while_wanted("t");
        c.admit("t", at(6));
        c.lost_while_wanted("t");
        assert_eq!(c.take_fill("t"), Some(at(5)), "the first loss's position");
        assert_eq!(c.take_fill("t"), None, "one fill per loss");
    }

    #[test]
    fn a_forgotten_topic_fills_nothing_and_admits_anything() {
        let c = Continuity::default();
        c.admit("t", at(5));
        c.lost_while_wanted("t");
        c.forget("t");
        assert_eq!(c.take_fill("t"), None);
        assert!(c.admit("t", at(1)));
    }
}
