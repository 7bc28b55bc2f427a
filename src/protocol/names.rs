//! Which topic names a client may join and which events only the server sends: the rules the
//! shards apply to joins and pushes and the admin channel applies to what it is asked about.
//!
//! What it must never do: accept a topic whose Redis keys could not all live in one slot of a
//! Redis Cluster, or a name that could not travel in a binary frame.

/// Topic of heartbeats; it cannot be joined.
pub const HEARTBEAT_TOPIC: &str = "phoenix";

/// Events that only the server may send.
pub const RESERVED_EVENTS: [&str; 5] = [
    "phx_reply",
    "phx_error",
    "phx_close",
    "presence_state",
    "presence_diff",
];

/// Longest topic accepted: binary frames carry its length in one byte.
pub const MAX_TOPIC_BYTES: usize = 255;

/// A topic a client may join: not empty, at most [`MAX_TOPIC_BYTES`], not the heartbeat topic,
/// no control character, and not starting with `}`. A topic's Redis keys are tagged
/// `…{<topic>}…` so that they share one cluster slot; a topic starting with `}` makes that tag
/// empty, Redis then hashes each whole key, and its presence keys would land in different
/// slots (CROSSSLOT on a Redis Cluster). The rule holds on every deployment, so a topic that
/// works on one Redis works on a cluster.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic != HEARTBEAT_TOPIC
        && !topic.starts_with('}')
        && !topic.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        assert!(is_valid_topic("weather:wind"));
        assert!(is_valid_topic("a{b}c"));
        assert!(is_valid_topic("x}"));
        assert!(!is_valid_topic(""));
        assert!(!is_valid_topic("phoenix"));
        assert!(!is_valid_topic("a\nb"));
        assert!(!is_valid_topic("}x"));
        assert!(!is_valid_topic(&"x".repeat(256)));
        assert!(is_valid_topic(&"x".repeat(255)));
    }
}
