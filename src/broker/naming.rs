//! How Redis channel names map to Phoenix topics and events.
//!
//! Downstream a backend publishes to `to:<topic>:<event>`; upstream a client's push becomes
//! `from:<topic>:<event>`. Topics may contain `:`, events may not, so a name is split at its
//! **last** `:`. This module owns that rule and nothing else.

/// The pattern the reader subscribes to: one pattern for the whole deployment, because every
/// pattern taxes every `PUBLISH` in Redis.
pub const DOWNSTREAM_PATTERN: &str = "to:*";

const DOWNSTREAM_PREFIX: &[u8] = b"to:";

/// Splits a downstream channel name `to:<topic>:<event>` into `(topic, event)`.
///
/// Returns `None` when the name does not start with `to:`, has no `:` after the topic, or
/// when the topic or the event would be empty or not UTF-8: such a message has no receiver.
pub fn split_downstream(channel: &[u8]) -> Option<(&str, &str)> {
    let rest = channel.strip_prefix(DOWNSTREAM_PREFIX)?;
    let colon = rest.iter().rposition(|&b| b == b':')?;
    let (topic, event) = (&rest[..colon], &rest[colon + 1..]);
    if topic.is_empty() || event.is_empty() {
        return None;
    }
    Some((
        std::str::from_utf8(topic).ok()?,
        std::str::from_utf8(event).ok()?,
    ))
}

/// The Redis channel an upstream push on `topic` with `event` is published to.
pub fn upstream_channel(topic: &str, event: &str) -> String {
    let mut name = String::with_capacity(6 + topic.len() + event.len());
    name.push_str("from:");
    name.push_str(topic);
    name.push(':');
    name.push_str(event);
    name
}

/// The topic and event of an upstream channel name `from:<topic>:<event>` (split at the last
/// `:`, like [`upstream_channel`] built it); `None` for any other name.
pub fn split_upstream(channel: &str) -> Option<(&str, &str)> {
    channel.strip_prefix("from:")?.rsplit_once(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_name_splits_at_last_colon() {
        assert_eq!(
            split_downstream(b"to:weather:wind:speed"),
            Some(("weather:wind", "speed"))
        );
        assert_eq!(split_downstream(b"to:a:b"), Some(("a", "b")));
    }

    #[test]
    fn downstream_name_without_event_or_topic_has_no_receiver() {
        assert_eq!(split_downstream(b"to:weather"), None);
        assert_eq!(split_downstream(b"to::speed"), None);
        assert_eq!(split_downstream(b"to:weather:"), None);
        assert_eq!(split_downstream(b"from:weather:speed"), None);
        assert_eq!(split_downstream(b"to:\xff:speed"), None);
    }

    #[test]
    fn upstream_name_is_from_topic_event() {
        assert_eq!(
            upstream_channel("weather:wind", "speed"),
            "from:weather:wind:speed"
        );
        assert_eq!(
            split_upstream(&upstream_channel("weather:wind", "speed")),
            Some(("weather:wind", "speed"))
        );
        assert_eq!(split_upstream("to:weather:speed"), None);
    }
}
