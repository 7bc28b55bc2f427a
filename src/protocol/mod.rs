//! The wire: RFC 6455 framing and the Phoenix V1, V2 and binary serializers.
//!
//! This module is the only place that knows the shape of bytes on a socket. The connection state
//! machine (`shard`) sees [`Message`]s coming in, turns them into [`Inbound`]s with
//! [`decode_text`]/[`decode_binary`], and writes the complete frames that [`outbound`] returns.
//!
//! What it must never do:
//! - **allocate per receiver of a broadcast**: a [`Broadcast`] is encoded once, into a finished
//!   WebSocket frame, and every receiver on every shard writes those same bytes (a V1 variant is
//!   built at most once, lazily);
//! - **copy complete inbound frames**: [`MessageReader`] unmasks them in the caller's read buffer
//!   and lends them out; only a trailing incomplete frame or a fragmented message is copied;
//! - **re-serialise a client's payload**: it travels as the raw JSON text that arrived;
//! - **panic on input**: every malformed frame or message is an error value with a close code or a
//!   human-readable message.
//!
//! Nothing here does I/O or knows about glommio; everything is plain functions over bytes so that
//! it can be unit-tested and benchmarked in isolation.

pub mod inbound;
pub mod names;
pub mod outbound;
mod refusal;
pub mod websocket;

pub use inbound::{
    decode_binary, decode_text, join_fields, join_token, DecodeError, Inbound, JoinSince, Payload,
};
pub use outbound::{
    binary_push, binary_reply, channel_close, channel_error, is_valid_json, push, reply, Broadcast,
    FieldTooLong, ReplyStatus,
};
pub use refusal::Refusal;
pub use websocket::{
    close_code, encode_close, encode_frame, write_frame_header, FrameError, Message, MessageReader,
    OpCode, ReadError,
};

/// The Phoenix serializer a socket speaks, chosen once by the `vsn` query parameter of the
/// upgrade. Every encode and decode function takes it, because V1 and V2 differ in shape only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    /// `vsn=1.0.0`: messages are JSON objects `{"topic","event","payload","ref"}`; no binary frames.
    V1,
    /// `vsn=2.0.0` (the default): messages are JSON arrays `[join_ref, ref, topic, event, payload]`,
    /// plus the binary frame kinds 0, 1 and 2.
    V2,
}

impl Vsn {
    /// Interprets the `vsn` query parameter of the upgrade request (`None` when absent), so that
    /// an unsupported version is refused before the upgrade with a message saying why.
    pub fn from_query(value: Option<&str>) -> Result<Vsn, UnsupportedVsn> {
        match value {
            None | Some("2.0.0") => Ok(Vsn::V2),
            Some("1.0.0") => Ok(Vsn::V1),
            Some(other) => Err(UnsupportedVsn(other.chars().take(32).collect())),
        }
    }
}

/// A `vsn` query parameter this server does not speak; its `Display` is the body of the 4xx
/// response, so it names the versions that are supported. The offending value is kept (cut to
/// 32 characters) so that the response says what was received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported vsn {0:?}: this server speaks vsn=2.0.0 (the default) and vsn=1.0.0")]
pub struct UnsupportedVsn(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_vsn_means_v2() {
        assert_eq!(Vsn::from_query(None), Ok(Vsn::V2));
    }

    #[test]
    fn known_vsns_are_accepted() {
        assert_eq!(Vsn::from_query(Some("2.0.0")), Ok(Vsn::V2));
        assert_eq!(Vsn::from_query(Some("1.0.0")), Ok(Vsn::V1));
    }

    #[test]
    fn unknown_vsn_is_refused_with_the_supported_versions() {
        let err = Vsn::from_query(Some("3.0.0")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"3.0.0\""), "{text}");
        assert!(text.contains("2.0.0") && text.contains("1.0.0"), "{text}");
        assert!(Vsn::from_query(Some("")).is_err());
        assert!(Vsn::from_query(Some("2.0")).is_err());
    }
}
