//! Presence across the whole deployment (docs/presence.md), kept in Redis.
//!
//! Every joined channel adds one meta `{"phx_ref","online_at"}` under the client's `id`. The
//! members of a topic live in one Redis hash that every `channel` process shares; each change
//! bumps the topic's version and publishes a versioned diff on `presence:diff:<topic>`, which
//! every process receives on its subscriber connection and broadcasts as `presence_diff`.
//! A joiner's `presence_state` is the hash as it was right after its own join, together with
//! the version it corresponds to; diffs at or below that version are already in the state and
//! are not sent to that joiner again. Processes keep a liveness entry alive; a process that
//! stops refreshing it has its members removed (with a leave diff) by any surviving process.
//! The layout is documented in `docs/presence.md` for backends that want to read it.
//!
//! This module owns the names, the Lua scripts and the JSON shapes; the Redis core runs the
//! scripts and the shards deliver the results.

pub(crate) mod replica;
pub mod scripts;
pub(crate) mod shapes;
mod ticket;

pub use ticket::PresenceTicket;

use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of the channels diffs are published on: `presence:diff:<topic>`.
pub const DIFF_CHANNEL_PREFIX: &str = "presence:diff:";
/// Pattern the Redis reader subscribes to for diffs.
pub const DIFF_PATTERN: &str = "presence:diff:*";

/// The hash of a topic's members: field `<node>:<phx_ref>`, value `{"key","meta"}` JSON.
pub fn members_key(topic: &str) -> String {
    format!("presence:{{{topic}}}:members")
}

/// The counter bumped by every change of a topic's members.
pub fn version_key(topic: &str) -> String {
    format!("presence:{{{topic}}}:version")
}

/// The hash tag of the process-wide presence keys: they share one slot (on a Redis Cluster,
/// the upkeep script touches only keys of that slot; docs/presence.md).
pub const PROCESSES_TAG: &str = "{_processes}";

/// The sorted set of live processes, scored by when their liveness expires (Redis ms).
pub const PROCESSES_KEY: &str = "presence:{_processes}:expiry";

/// The set of processes found dead whose members are being removed.
pub const REAPING_KEY: &str = "presence:{_processes}:reaping";

/// The set of topics in which process `node` has members (for clean-up when it dies).
pub fn node_topics_key(node: &str) -> String {
    format!("presence:{PROCESSES_TAG}:topics:{node}")
}

/// The channel a topic's diffs are published on.
pub fn diff_channel(topic: &str) -> String {
    format!("{DIFF_CHANNEL_PREFIX}{topic}")
}

/// The topic of a diff channel name, if it is one.
pub fn topic_of_diff_channel(channel: &[u8]) -> Option<&str> {
    let topic = channel.strip_prefix(DIFF_CHANNEL_PREFIX.as_bytes())?;
    if topic.is_empty() {
        return None;
    }
    std::str::from_utf8(topic).ok()
}

/// Splits a published diff `"<version> <json>"` into its parts.
pub fn parse_versioned_diff(payload: &[u8]) -> Option<(u64, &[u8])> {
    let space = payload.iter().position(|&b| b == b' ')?;
    let version = std::str::from_utf8(&payload[..space]).ok()?.parse().ok()?;
    Some((version, &payload[space + 1..]))
}

/// A fresh identity for this process: presences are owned by it, and a restarted process
/// never takes over (and so never resurrects) the presences of its previous life.
pub fn new_node_id() -> String {
    crate::auth::random_id(12)
}

/// Milliseconds since the unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The socket part of a `phx_ref` (`<node>.<shard>.<conn>.<n>` → `<node>.<shard>.<conn>`):
/// several joins of one socket share it.
pub fn socket_of_phx_ref(phx_ref: &str) -> &str {
    phx_ref
        .rsplit_once('.')
        .map_or(phx_ref, |(socket, _)| socket)
}

/// One member's entry: who (`key`, the token's `id`) and this join's meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The client identity (token `id` claim): the presence key.
    pub key: String,
    /// Unique per join; phoenix.js matches metas by it.
    pub phx_ref: String,
    /// When the join happened, unix ms.
    pub online_at: u64,
}

impl Presence {
    /// The hash field: `<node>:<phx_ref>`, so that a dead node's fields can be found.
    pub fn field(&self, node: &str) -> String {
        format!("{node}:{}", self.phx_ref)
    }

    /// A presence with a fixed `online_at`, for tests of the shapes built from it.
    #[cfg(test)]
    pub(crate) fn for_test(key: &str, phx_ref: &str) -> Presence {
        Presence {
            key: key.into(),
            phx_ref: phx_ref.into(),
            online_at: 1_700_000_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_channel_round_trips_topics_with_colons() {
        let channel = diff_channel("weather:wind");
        assert_eq!(
            topic_of_diff_channel(channel.as_bytes()),
            Some("weather:wind")
        );
        assert_eq!(topic_of_diff_channel(b"presence:diff:"), None);
        assert_eq!(topic_of_diff_channel(b"to:a:b"), None);
    }

    #[test]
    fn versioned_diff_is_split_at_first_space() {
        assert_eq!(
            parse_versioned_diff(b"42 {\"joins\":{}}"),
            Some((42, &b"{\"joins\":{}}"[..]))
        );
        assert_eq!(parse_versioned_diff(b"x {}"), None);
        assert_eq!(parse_versioned_diff(b"{}"), None);
    }
}
