//! Why the server says `error` to a client: the `reason` of an error reply, as phoenix.js hands
//! it to `.receive("error", ({reason}) => …)`. One enum, so that the shard that refuses, the
//! Redis core that reports a failed push or admin query, and the metrics that count refusals
//! all name the same reasons, and a typo cannot invent a new one.

use std::fmt;

/// A reason sent in `{"status":"error","response":{"reason":"<reason>"}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Bad, expired or foreign token, or none at all.
    Unauthorized,
    /// The socket already has as many channels as `max_channels_per_socket`.
    TooManyChannels,
    /// The topic is empty, too long, has control characters, or is `phoenix`.
    InvalidTopic,
    /// A push (or other event) on a topic this socket has not joined.
    UnmatchedTopic,
    /// A client tried to send an event only the server may send.
    ReservedEvent,
    /// Redis is down, stalled, or the publisher queue is full.
    BackendUnavailable,
    /// The server is shutting down and takes no new joins or pushes.
    ShuttingDown,
    /// A join's `since` is not a position (PROTOCOL §12).
    InvalidSince,
    /// Redis did not confirm the topic's subscription in time, so messages after the join
    /// reply could be missed.
    NotSubscribed,
}

impl Refusal {
    /// The reasons a join can be refused with, in the order metrics label them.
    pub const JOIN: [Refusal; 7] = [
        Refusal::Unauthorized,
        Refusal::TooManyChannels,
        Refusal::InvalidTopic,
        Refusal::ShuttingDown,
        Refusal::InvalidSince,
        Refusal::NotSubscribed,
        Refusal::BackendUnavailable,
    ];

    /// The reason as the client reads it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::TooManyChannels => "too many channels joined",
            Refusal::InvalidTopic => "invalid topic",
            Refusal::UnmatchedTopic => "unmatched topic",
            Refusal::ReservedEvent => "reserved event",
            Refusal::BackendUnavailable => "backend unavailable",
            Refusal::ShuttingDown => "shutting down",
            Refusal::InvalidSince => "invalid since",
            Refusal::NotSubscribed => "subscription not confirmed by redis",
        }
    }

    /// `{"reason":"<reason>"}`, the response of an error reply.
    pub fn response_json(self) -> String {
        format!(r#"{{"reason":"{}"}}"#, self.as_str())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_is_the_json_phoenix_js_reads() {
        let value: serde_json::Value =
            serde_json::from_str(&Refusal::TooManyChannels.response_json()).expect("JSON");
        assert_eq!(value["reason"], "too many channels joined");
    }
}
