//! No gap when the process's own subscription moves: what it delivered of each topic published
//! with the function, and the messages it must read back from the topic's history when a
//! topic's `SSUBSCRIBE` comes back after it was lost while still wanted (a lost connection, a
//! failover, a slot migration, a Sentinel switch). Clients that stay joined through such a move
//! never rejoin, so their own recovery (`since`) never runs: the process closes the gap for
//! them (docs/protocol.md, "Positions and recovery").
//!
//! The control thread marks a topic whose subscription was lost while wanted, with the last
//! position delivered — or, for a topic nothing was delivered of yet, its *floor*: the newest
//! position of its history when it was first subscribed, read by the read thread soon after
//! that confirmation (batched, when its connection has nothing else to read), so that a quiet
//! topic's first messages are not lost in a gap either. The read thread that receives the new
//! subscription's `ssubscribe` reply takes the mark and, *before it takes any message that
//! connection sends after the reply*, reads every history entry after it on its master (the
//! gaps of topics confirmed together in one round trip) and delivers them before the live
//! messages that follow.
//! Every positioned message, filled or live, passes [`Continuity::admit`]: one at or before the
//! last delivered position of its topic is a copy (the fill already delivered it) and is not
//! delivered again.
//!
//! What it owns: the last delivered position and the floor of each wanted topic, the marks, and
//! reading a gap or floors.
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
    /// Where the history stood when the topic was first subscribed (the fill's start when
    /// nothing was delivered before a loss).
    floors: HashMap<String, FillFrom>,
    /// Topics whose subscription was lost while wanted: fill from here.
    to_fill: HashMap<String, FillFrom>,
}

/// Where a fill starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillFrom {
    /// After this position (excluded).
    After(Position),
    /// At the beginning of whatever history the topic has: it had none when it was first
    /// subscribed, so all of it came later.
    Beginning,
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
    /// confirmation of it fills from the last delivered position, or from the topic's floor
    /// when nothing was delivered (nothing when neither is known).
    pub fn lost_while_wanted(&self, topic: &str) {
        let mut state = self.state();
        let from = match state.delivered.get(topic) {
            Some(last) => Some(FillFrom::After(*last)),
            None => state.floors.get(topic).copied(),
        };
        if let Some(from) = from {
            state.to_fill.entry(topic.to_owned()).or_insert(from);
        }
    }

    /// `topic` is no longer wanted, or wanted anew: nothing of its past is filled.
    pub fn forget(&self, topic: &str) {
        let mut state = self.state();
        state.delivered.remove(topic);
        state.floors.remove(topic);
        state.to_fill.remove(topic);
    }

    /// A read thread received `topic`'s `ssubscribe` reply: where to fill from, if the topic
    /// waits for a fill (taken: one fill per loss).
    pub fn take_fill(&self, topic: &str) -> Option<FillFrom> {
        self.state().to_fill.remove(topic)
    }

    /// Whether `topic` has neither a delivered position nor a floor yet (its floor should be
    /// read).
    pub fn needs_floor(&self, topic: &str) -> bool {
        let state = self.state();
        !state.delivered.contains_key(topic) && !state.floors.contains_key(topic)
    }

    /// Records where `topic`'s history stood just after its first subscription (kept only
    /// while the topic is wanted: [`Self::forget`] drops it).
    pub fn set_floor(&self, topic: &str, floor: FillFrom) {
        self.state().floors.entry(topic.to_owned()).or_insert(floor);
    }

    /// How many topics wait for a fill.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state().to_fill.len()
    }
}

/// One `XRANGE` entry: its id and its fields and values in order.
type StreamEntry = (String, Vec<Vec<u8>>);

/// What a topic's history holds after a fill's start.
#[derive(Debug, PartialEq, Eq)]
pub enum Gap {
    /// Every entry after the start still in the history, oldest first (possibly none).
    Entries(Vec<HistoryEntry>),
    /// The history the start belongs to was lost (deleted, expired, Redis lost its data): what
    /// it received after the start cannot be told. Holds the entries of the newer history that
    /// replaced it (another epoch, all published after the start), oldest first.
    Lost(Vec<HistoryEntry>),
}

/// Reads, for each `(topic, from)` of `fills` (topics of one master, read on `conn`), the
/// entries of the topic's history after `from`: its epoch and `XRANGE (<since> +` (or `- +`
/// from the beginning), all topics in one round trip (one more for each history replaced by a
/// newer one). Entries after a position are all kept even when the entry at it is not (a
/// failover that lost the last writes before the promotion keeps every later entry, and
/// trimming only ever drops the oldest).
pub fn read_gaps(
    conn: &mut redis::Connection,
    fills: &[(String, FillFrom)],
) -> redis::RedisResult<Vec<Gap>> {
    let mut pipe = redis::pipe();
    for (topic, from) in fills {
        let (stream, epoch_key) = history_keys(topic);
        let start = match from {
            FillFrom::After(since) => format!("({}", since.entry_id()),
            FillFrom::Beginning => "-".to_owned(),
        };
        pipe.cmd("GET").arg(epoch_key);
        pipe.cmd("XRANGE")
            .arg(stream)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(MAX_FILL);
    }
    let replies: Vec<redis::Value> = pipe.query(conn)?;
    let mut gaps = Vec::with_capacity(fills.len());
    for ((topic, from), pair) in fills.iter().zip(replies.chunks(2)) {
        let epoch: Option<String> = redis::from_redis_value(pair[0].clone())?;
        let entries: Vec<StreamEntry> = redis::from_redis_value(pair[1].clone())?;
        let epoch = epoch.and_then(|e| e.parse::<u64>().ok());
        gaps.push(match (*from, epoch) {
            (FillFrom::Beginning, None) => Gap::Entries(Vec::new()),
            (FillFrom::Beginning, Some(epoch)) => Gap::Entries(entries_of(epoch, entries)?),
            (FillFrom::After(since), Some(epoch)) if epoch == since.epoch => {
                Gap::Entries(entries_of(epoch, entries)?)
            }
            (FillFrom::After(since), Some(epoch)) if epoch > since.epoch => {
                let all: Vec<StreamEntry> = redis::cmd("XRANGE")
                    .arg(history_keys(topic).0)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(MAX_FILL)
                    .query(conn)?;
                Gap::Lost(entries_of(epoch, all)?)
            }
            (FillFrom::After(_), _) => Gap::Lost(Vec::new()),
        });
    }
    Ok(gaps)
}

/// The history entries `entries` of `epoch` (the function writes `e <event> p <payload>`).
fn entries_of(epoch: u64, entries: Vec<StreamEntry>) -> redis::RedisResult<Vec<HistoryEntry>> {
    let parse = |what: &'static str| redis::RedisError::from((redis::ErrorKind::Parse, what));
    let mut out = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let [_, event, _, payload] = <[Vec<u8>; 4]>::try_from(fields)
            .map_err(|_| parse("a history entry of another shape"))?;
        out.push(HistoryEntry {
            position: Position::of_entry(epoch, &id).map_err(|_| parse("a history entry id"))?,
            event: String::from_utf8(event).map_err(|_| parse("a history entry's event"))?,
            payload,
        });
    }
    Ok(out)
}

/// Where each of `topics`' history stands now (its newest position, or
/// [`FillFrom::Beginning`] when it has none), in one round trip on `conn` (their master).
pub fn read_floors(
    conn: &mut redis::Connection,
    topics: &[String],
) -> redis::RedisResult<Vec<FillFrom>> {
    let mut pipe = redis::pipe();
    for topic in topics {
        let (stream, epoch_key) = history_keys(topic);
        pipe.cmd("GET").arg(epoch_key);
        pipe.cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
    let replies: Vec<redis::Value> = pipe.query(conn)?;
    let mut floors = Vec::with_capacity(topics.len());
    for pair in replies.chunks(2) {
        let epoch: Option<String> = redis::from_redis_value(pair[0].clone())?;
        let newest: Vec<StreamEntry> = redis::from_redis_value(pair[1].clone())?;
        let floor = match (epoch.and_then(|e| e.parse::<u64>().ok()), newest.first()) {
            (Some(epoch), Some((id, _))) => Position::of_entry(epoch, id)
                .map(FillFrom::After)
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::Parse, "a history entry id"))
                })?,
            _ => FillFrom::Beginning,
        };
        floors.push(floor);
    }
    Ok(floors)
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
        assert_eq!(
            c.take_fill("t"),
            Some(FillFrom::After(at(5))),
            "the first loss's position"
        );
        assert_eq!(c.take_fill("t"), None, "one fill per loss");
    }

    #[test]
    fn a_topic_nothing_was_delivered_of_fills_from_its_floor() {
        let c = Continuity::default();
        assert!(c.needs_floor("t"));
        c.set_floor("t", FillFrom::Beginning);
        assert!(!c.needs_floor("t"));
        c.lost_while_wanted("t");
        assert_eq!(c.take_fill("t"), Some(FillFrom::Beginning));
        c.set_floor("u", FillFrom::After(at(4)));
        c.admit("u", at(6));
        c.lost_while_wanted("u");
        assert_eq!(
            c.take_fill("u"),
            Some(FillFrom::After(at(6))),
            "a delivered position goes before the floor"
        );
    }

    #[test]
    fn a_forgotten_topic_fills_nothing_and_admits_anything() {
        let c = Continuity::default();
        c.admit("t", at(5));
        c.set_floor("t", FillFrom::Beginning);
        c.lost_while_wanted("t");
        c.forget("t");
        assert_eq!(c.take_fill("t"), None);
        assert!(c.needs_floor("t"));
        assert!(c.admit("t", at(1)));
    }
}
