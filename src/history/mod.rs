//! Positions and history pages (PROTOCOL §12, docs/protocol.md "Positions and recovery"): the
//! values that travel between the publish function, the publisher that reads a topic's history,
//! and the shard that replays it to a joiner.
//!
//! A **position** is `<epoch>.<ms>-<seq>`: the topic's epoch (the Redis `TIME` in microseconds
//! when the topic's history was started, kept in `channel:epoch:{<topic>}`) and the message's
//! stream entry id in `channel:history:{<topic>}`. Clients treat it as an opaque string; it is
//! never a decimal number (phoenix.js compares a broadcast's `ref` with its pending heartbeat
//! ref, which is one). The server orders positions by (epoch, ms, seq): within an epoch that is
//! the stream's order, and a later epoch was started later.
//!
//! What it owns: parsing, printing and ordering positions; the shape of a history read's
//! answer. What it must never do: talk to Redis or to a connection (no I/O here).

use std::fmt;

/// Longest position accepted from a client (`since`); anything longer is malformed.
pub const MAX_POSITION_BYTES: usize = 64;

/// Where a message sits in its topic's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The epoch of the topic's history: changes when the history is lost.
    pub epoch: u64,
    /// The stream entry id's milliseconds.
    pub ms: u64,
    /// The stream entry id's sequence number.
    pub seq: u64,
}

/// A `since` that is not a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid since")]
pub struct InvalidPosition;

impl Position {
    /// Reads `<epoch>.<ms>-<seq>` (decimal digits only, no sign, no spaces).
    pub fn parse(text: &str) -> Result<Position, InvalidPosition> {
        if text.len() > MAX_POSITION_BYTES {
            return Err(InvalidPosition);
        }
        let (epoch, id) = text.split_once('.').ok_or(InvalidPosition)?;
        let (ms, seq) = id.split_once('-').ok_or(InvalidPosition)?;
        Ok(Position {
            epoch: digits(epoch)?,
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }

    /// The position of stream entry `id` (`<ms>-<seq>`, as Redis prints it) in `epoch`.
    pub fn of_entry(epoch: u64, id: &str) -> Result<Position, InvalidPosition> {
        let (ms, seq) = id.split_once('-').ok_or(InvalidPosition)?;
        Ok(Position {
            epoch,
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }

    /// The stream entry id, `<ms>-<seq>`.
    pub fn entry_id(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

fn digits(text: &str) -> Result<u64, InvalidPosition> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidPosition);
    }
    text.parse().map_err(|_| InvalidPosition)
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}-{}", self.epoch, self.ms, self.seq)
    }
}

/// One message read back from a topic's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its position.
    pub position: Position,
    /// The Phoenix event.
    pub event: String,
    /// The payload bytes as the backend gave them.
    pub payload: Vec<u8>,
}

/// The answer to one history read (`FCALL_RO channel_history`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// The newest position in the history; `None` when the topic has none.
    pub latest: Option<Position>,
    /// Whether every message after `since` is still in the history (false without `since`).
    pub recovered: bool,
    /// With `since` and `recovered`: every message after `since`, oldest first. Without
    /// `since`: the newest `limit` messages, oldest first.
    pub entries: Vec<HistoryEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_prints_and_parses_back() {
        let p = Position {
            epoch: 1_733_526_000_123_456,
            ms: 1_733_526_000_500,
            seq: 3,
        };
        let text = p.to_string();
        assert_eq!(text, "1733526000123456.1733526000500-3");
        assert_eq!(Position::parse(&text), Ok(p));
        assert_eq!(Position::of_entry(p.epoch, "1733526000500-3"), Ok(p));
        assert_eq!(p.entry_id(), "1733526000500-3");
    }

    #[test]
    fn a_position_is_never_a_decimal_number() {
        let text = Position {
            epoch: 1,
            ms: 2,
            seq: 3,
        }
        .to_string();
        assert!(text.parse::<f64>().is_err(), "{text}");
        assert!(serde_json::from_str::<f64>(&text).is_err(), "{text}");
    }

    #[test]
    fn malformed_positions_are_refused() {
        for bad in [
            "", "1", "1.2", "1.2-", ".2-3", "1.-3", "a.2-3", "1.2-3x", "+1.2-3", "1.2-3.4",
            "1 .2-3", "-1.2-3", "1.2--3",
        ] {
            assert_eq!(Position::parse(bad), Err(InvalidPosition), "{bad:?}");
        }
        let long = format!("{}.1-1", "9".repeat(70));
        assert_eq!(Position::parse(&long), Err(InvalidPosition));
        assert_eq!(
            Position::parse("99999999999999999999999.1-1"),
            Err(InvalidPosition)
        );
    }

    #[test]
    fn positions_order_by_epoch_then_entry() {
        let p = |e, m, s| Position {
            epoch: e,
            ms: m,
            seq: s,
        };
        assert!(p(1, 5, 0) < p(1, 5, 1));
        assert!(p(1, 5, 9) < p(1, 10, 0), "numeric, not lexicographic");
        assert!(p(1, 99, 0) < p(2, 1, 0), "a later epoch is later");
    }
}
