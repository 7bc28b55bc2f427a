//! Encoding of server messages. Every function returns a complete WebSocket frame ([`Bytes`],
//! header included, one allocation) that the connection writes as is.
//!
//! Strings (topics, events, refs, reasons) are JSON-escaped here; payloads and responses are JSON
//! text supplied by the caller and inserted verbatim — the caller guarantees they are valid JSON
//! (they come from a client message we decoded, from Redis after [`is_valid_json`], or from our own
//! serialisation).
//!
//! [`Broadcast`] is the downstream message: encoded once, shared by every receiver on every shard.

use std::sync::OnceLock;

use bytes::Bytes;

use super::websocket::{FrameBuilder, OpCode};
use super::Vsn;
use crate::history::Position;

/// The outcome carried by a `phx_reply`, which phoenix.js routes to `receive("ok")` or
/// `receive("error")`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyStatus {
    /// The request succeeded.
    Ok,
    /// The request was refused; the response says why (`{"reason": ...}`).
    Error,
}

impl ReplyStatus {
    fn as_str(self) -> &'static str {
        match self {
            ReplyStatus::Ok => "ok",
            ReplyStatus::Error => "error",
        }
    }
}

/// A field of a binary frame is longer than the 255 bytes its one-byte length allows, so the frame
/// cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {len} bytes; binary frames allow at most 255")]
pub struct FieldTooLong {
    /// Which field (`join_ref`, `ref`, `topic`, `event`).
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
}

/// Whether downstream bytes are valid JSON (and UTF-8, which a text frame requires), which decides
/// between a text and a binary broadcast. One function so that it can be benchmarked and swapped.
pub fn is_valid_json(bytes: &[u8]) -> bool {
    // serde_json skips string contents without checking their UTF-8 when ignoring them, so UTF-8
    // is checked first: a text frame with invalid UTF-8 makes browsers close the socket.
    std::str::from_utf8(bytes).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// The answer to a client message: V2 `[J, R, topic, "phx_reply", {"status":..,"response":..}]`,
/// V1 `{"topic":..,"event":"phx_reply","payload":{..},"ref":R}`. `response_json` is inserted
/// verbatim and must be valid JSON.
pub fn reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    status: ReplyStatus,
    response_json: &str,
) -> Bytes {
    let mut frame = FrameBuilder::with_capacity(
        64 + join_ref.map_or(0, str::len)
            + msg_ref.map_or(0, str::len)
            + topic.len()
            + response_json.len(),
    );
    let out = frame.buf();
    let write_payload = |out: &mut Vec<u8>| {
        out.extend_from_slice(b"{\"status\":\"");
        out.extend_from_slice(status.as_str().as_bytes());
        out.extend_from_slice(b"\",\"response\":");
        out.extend_from_slice(response_json.as_bytes());
        out.push(b'}');
    };
    match vsn {
        Vsn::V2 => {
            write_v2_head(out, join_ref, msg_ref, topic, "phx_reply");
            write_payload(out);
            out.push(b']');
        }
        Vsn::V1 => {
            write_v1_head(out, topic, "phx_reply");
            write_payload(out);
            write_v1_tail(out, msg_ref);
        }
    }
    frame.finish(OpCode::Text)
}

/// A message to one client on one of its joins: V2 `[J, null, topic, event, payload]`, V1
/// `{"topic","event","payload","ref":null}`. `payload_json` is inserted verbatim.
pub fn push(
    vsn: Vsn,
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> Bytes {
    let mut frame = FrameBuilder::with_capacity(
        32 + join_ref.map_or(0, str::len) + topic.len() + event.len() + payload_json.len(),
    );
    write_message(
        frame.buf(),
        vsn,
        join_ref,
        None,
        topic,
        event,
        payload_json.as_bytes(),
    );
    frame.finish(OpCode::Text)
}

/// Tells the client that a join is over (after a leave, or when a new join replaced it):
/// `[J, J, topic, "phx_close", {}]`.
pub fn channel_close(vsn: Vsn, join_ref: Option<&str>, topic: &str) -> Bytes {
    let mut frame =
        FrameBuilder::with_capacity(48 + 2 * join_ref.map_or(0, str::len) + topic.len());
    write_message(
        frame.buf(),
        vsn,
        join_ref,
        join_ref,
        topic,
        "phx_close",
        b"{}",
    );
    frame.finish(OpCode::Text)
}

/// Tells the client that a join failed after it succeeded, so that phoenix.js rejoins:
/// `[J, J, topic, "phx_error", {"reason": reason}]`.
pub fn channel_error(vsn: Vsn, join_ref: Option<&str>, topic: &str, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(16 + reason.len());
    payload.extend_from_slice(b"{\"reason\":");
    write_json_str(&mut payload, reason);
    payload.push(b'}');
    let mut frame = FrameBuilder::with_capacity(
        48 + 2 * join_ref.map_or(0, str::len) + topic.len() + payload.len(),
    );
    write_message(
        frame.buf(),
        vsn,
        join_ref,
        join_ref,
        topic,
        "phx_error",
        &payload,
    );
    frame.finish(OpCode::Text)
}

/// A binary reply (kind 1) to a V2 client: `1, len(J), len(R), len(topic), len(status), J, R,
/// topic, status, data…`, for a reply whose response is bytes rather than JSON.
pub fn binary_reply(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    status: ReplyStatus,
    data: &[u8],
) -> Result<Bytes, FieldTooLong> {
    let fields = [
        field_len("join_ref", join_ref.unwrap_or(""))?,
        field_len("ref", msg_ref.unwrap_or(""))?,
        field_len("topic", topic)?,
        field_len("status", status.as_str())?,
    ];
    Ok(binary_frame(1, &fields, data))
}

/// A binary push (kind 0) to one V2 client: `0, len(J), len(topic), len(event), J, topic, event,
/// data…` (no ref).
pub fn binary_push(
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    data: &[u8],
) -> Result<Bytes, FieldTooLong> {
    let fields = [
        field_len("join_ref", join_ref.unwrap_or(""))?,
        field_len("topic", topic)?,
        field_len("event", event)?,
    ];
    Ok(binary_frame(0, &fields, data))
}

/// A field of a binary frame with its one-byte length, or the reason it does not fit.
fn field_len<'a>(field: &'static str, value: &'a str) -> Result<(u8, &'a [u8]), FieldTooLong> {
    u8::try_from(value.len())
        .map(|len| (len, value.as_bytes()))
        .map_err(|_| FieldTooLong {
            field,
            len: value.len(),
        })
}

/// `kind, lengths…, fields…, data…` in a binary WebSocket frame.
fn binary_frame(kind: u8, fields: &[(u8, &[u8])], data: &[u8]) -> Bytes {
    let fields_len: usize = fields.iter().map(|(_, f)| f.len()).sum();
    let mut frame = FrameBuilder::with_capacity(1 + fields.len() + fields_len + data.len());
    let out = frame.buf();
    out.push(kind);
    out.extend(fields.iter().map(|(len, _)| *len));
    for (_, field) in fields {
        out.extend_from_slice(field);
    }
    out.extend_from_slice(data);
    frame.finish(OpCode::Binary)
}

/// One downstream message (from Redis, or a `presence_diff`), encoded once and shared by every
/// receiver on every shard through `Arc<Broadcast>`.
///
/// The V2 frame is built eagerly: a JSON payload becomes the text frame
/// `[null,null,topic,event,<payload verbatim>]`, anything else the kind-2 binary frame
/// `2, len(topic), len(event), topic, event, data…`. The V1 text frame
/// `{"topic","event","payload","ref":null}` is built at most once, when a V1 receiver first asks.
/// A message with a position (published with the function, PROTOCOL §12) carries it in the
/// `ref` slot: `[null,"<position>",…]`, V1 `"ref":"<position>"`; the binary frame has no
/// `ref` slot, so a binary broadcast carries none (docs/protocol.md).
/// V1 has no binary frames: a non-JSON broadcast is not delivered to V1 clients. A non-JSON
/// broadcast whose topic or event is longer than 255 bytes cannot be framed at all; it is
/// [undeliverable](Broadcast::is_deliverable) and the caller counts and drops it.
#[derive(Debug)]
pub struct Broadcast {
    topic: Box<str>,
    event: Box<str>,
    /// The payload bytes, a slice of `v2` when there is one (no second copy).
    payload: Bytes,
    is_json: bool,
    /// The V2 frame; `None` when undeliverable.
    v2: Option<Bytes>,
    /// The V1 frame, built on first use (JSON payloads only).
    v1: OnceLock<Bytes>,
    /// Where the message sits in its topic's history, if it has one.
    position: Option<Position>,
}

impl Broadcast {
    /// Validates the payload once and builds the V2 frame once, for every receiver.
    pub fn new(topic: &str, event: &str, payload: &[u8]) -> Broadcast {
        Self::positioned(topic, event, None, payload)
    }

    /// A broadcast of a message with (or without) a position in its topic's history.
    pub fn positioned(
        topic: &str,
        event: &str,
        position: Option<Position>,
        payload: &[u8],
    ) -> Broadcast {
        let is_json = is_valid_json(payload);
        let (v2, payload) = if is_json {
            let mut frame =
                FrameBuilder::with_capacity(48 + topic.len() + event.len() + payload.len());
            let out = frame.buf();
            out.extend_from_slice(b"[null,");
            write_json_position(out, position);
            out.push(b',');
            write_json_str(out, topic);
            out.push(b',');
            write_json_str(out, event);
            out.push(b',');
            out.extend_from_slice(payload);
            out.push(b']');
            let frame = frame.finish(OpCode::Text);
            // The payload sits just before the closing bracket at the end of the frame.
            let end = frame.len() - 1;
            let payload = frame.slice(end - payload.len()..end);
            (Some(frame), payload)
        } else {
            match (field_len("topic", topic), field_len("event", event)) {
                (Ok(t), Ok(e)) => {
                    let frame = binary_frame(2, &[t, e], payload);
                    let payload = frame.slice(frame.len() - payload.len()..);
                    (Some(frame), payload)
                }
                _ => (None, Bytes::copy_from_slice(payload)),
            }
        };
        Broadcast {
            topic: topic.into(),
            event: event.into(),
            payload,
            is_json,
            v2,
            v1: OnceLock::new(),
            position,
        }
    }

    /// The message's position in its topic's history, if it has one.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// The frame to write to a receiver speaking `vsn`: the same bytes for every receiver of that
    /// version; `None` when this receiver cannot be sent this message (a V1 client and a non-JSON
    /// payload, or an undeliverable broadcast).
    pub fn frame_for(&self, vsn: Vsn) -> Option<&Bytes> {
        match vsn {
            Vsn::V2 => self.v2.as_ref(),
            Vsn::V1 if self.is_json => Some(self.v1.get_or_init(|| self.encode_v1())),
            Vsn::V1 => None,
        }
    }

    /// Whether any receiver can be sent this message; when not, count it and drop it.
    pub fn is_deliverable(&self) -> bool {
        self.v2.is_some()
    }

    /// The topic the message is for.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The event it carries.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// Whether the payload is JSON (text frames) or not (binary frames, V2 only).
    pub fn is_json(&self) -> bool {
        self.is_json
    }

    /// The payload bytes as they arrived.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn encode_v1(&self) -> Bytes {
        let mut frame = FrameBuilder::with_capacity(
            80 + self.topic.len() + self.event.len() + self.payload.len(),
        );
        let ref_text = self.position.map(|p| p.to_string());
        write_message(
            frame.buf(),
            Vsn::V1,
            None,
            ref_text.as_deref(),
            &self.topic,
            &self.event,
            &self.payload,
        );
        frame.finish(OpCode::Text)
    }
}

/// A whole message in the socket's version; V1 drops `join_ref` (as Phoenix's V1 serializer does).
fn write_message(
    out: &mut Vec<u8>,
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &[u8],
) {
    match vsn {
        Vsn::V2 => {
            write_v2_head(out, join_ref, msg_ref, topic, event);
            out.extend_from_slice(payload_json);
            out.push(b']');
        }
        Vsn::V1 => {
            write_v1_head(out, topic, event);
            out.extend_from_slice(payload_json);
            write_v1_tail(out, msg_ref);
        }
    }
}

/// `[J,R,"topic","event",` — everything of a V2 message before its payload.
fn write_v2_head(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
) {
    out.push(b'[');
    write_json_opt_str(out, join_ref);
    out.push(b',');
    write_json_opt_str(out, msg_ref);
    out.push(b',');
    write_json_str(out, topic);
    out.push(b',');
    write_json_str(out, event);
    out.push(b',');
}

/// `{"topic":..,"event":..,"payload":` — everything of a V1 message before its payload.
fn write_v1_head(out: &mut Vec<u8>, topic: &str, event: &str) {
    out.extend_from_slice(b"{\"topic\":");
    write_json_str(out, topic);
    out.extend_from_slice(b",\"event\":");
    write_json_str(out, event);
    out.extend_from_slice(b",\"payload\":");
}

/// `,"ref":R}` — everything of a V1 message after its payload.
fn write_v1_tail(out: &mut Vec<u8>, msg_ref: Option<&str>) {
    out.extend_from_slice(b",\"ref\":");
    write_json_opt_str(out, msg_ref);
    out.push(b'}');
}

/// A string or `null`.
/// Writes a position as a JSON string (digits, `.` and `-` only: nothing to escape), or `null`,
/// printed straight into the frame.
fn write_json_position(out: &mut Vec<u8>, position: Option<Position>) {
    use std::io::Write as _;
    match position {
        Some(position) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "\"{position}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn write_json_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => write_json_str(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes `value` as a JSON string, escaped exactly as serde_json escapes it (`"`, `\` and control
/// characters; everything else verbatim).
pub(crate) fn write_json_str(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xF)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The payload of an unmasked server frame, after checking its header is well formed.
    fn payload_of(frame: &Bytes, opcode: u8) -> &[u8] {
        let mut cursor = std::io::Cursor::new(&frame[..]);
        let (header, len) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
            .unwrap()
            .unwrap();
        assert!(header.is_final && header.mask.is_none());
        assert_eq!(frame[0] & 0x0F, opcode);
        let start = cursor.position() as usize;
        assert_eq!(frame.len() - start, len as usize);
        &frame[start..]
    }

    fn text(frame: &Bytes) -> &str {
        std::str::from_utf8(payload_of(frame, 1)).unwrap()
    }

    #[test]
    fn v2_reply_has_the_exact_shape() {
        let frame = reply(
            Vsn::V2,
            Some("1"),
            Some("2"),
            "room:lobby",
            ReplyStatus::Ok,
            "{}",
        );
        assert_eq!(
            text(&frame),
            r#"["1","2","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
        );
        let heartbeat = reply(Vsn::V2, None, Some("7"), "phoenix", ReplyStatus::Ok, "{}");
        assert_eq!(
            text(&heartbeat),
            r#"[null,"7","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
    }

    #[test]
    fn v2_error_reply_carries_the_reason() {
        let frame = reply(
            Vsn::V2,
            None,
            Some("3"),
            "t",
            ReplyStatus::Error,
            r#"{"reason":"unmatched topic"}"#,
        );
        assert_eq!(
            text(&frame),
            r#"[null,"3","t","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
    }

    #[test]
    fn v1_reply_has_no_join_ref() {
        let frame = reply(
            Vsn::V1,
            Some("1"),
            Some("2"),
            "t",
            ReplyStatus::Ok,
            r#"{"a":1}"#,
        );
        assert_eq!(
            text(&frame),
            r#"{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{"a":1}},"ref":"2"}"#
        );
    }

    #[test]
    fn push_has_a_null_ref() {
        let payload = r#"{"b" : 1, "a":[2]}"#;
        assert_eq!(
            text(&push(Vsn::V2, Some("4"), "t", "presence_state", payload)),
            r#"["4",null,"t","presence_state",{"b" : 1, "a":[2]}]"#
        );
        assert_eq!(
            text(&push(Vsn::V1, Some("4"), "t", "ev", "1")),
            r#"{"topic":"t","event":"ev","payload":1,"ref":null}"#
        );
    }

    #[test]
    fn channel_close_and_error_repeat_the_join_ref() {
        assert_eq!(
            text(&channel_close(Vsn::V2, Some("5"), "t")),
            r#"["5","5","t","phx_close",{}]"#
        );
        assert_eq!(
            text(&channel_close(Vsn::V1, Some("5"), "t")),
            r#"{"topic":"t","event":"phx_close","payload":{},"ref":"5"}"#
        );
        assert_eq!(
            text(&channel_error(Vsn::V2, Some("5"), "t", "redis \"down\"")),
            r#"["5","5","t","phx_error",{"reason":"redis \"down\""}]"#
        );
        assert_eq!(
            text(&channel_close(Vsn::V2, None, "t")),
            r#"[null,null,"t","phx_close",{}]"#
        );
    }

    #[test]
    fn strings_are_escaped_and_the_result_is_json() {
        let nasty = "a\"b\\c\n\u{1}\u{7f}é/\u{2028}";
        let frame = push(Vsn::V2, Some(nasty), nasty, nasty, "null");
        let value: serde_json::Value = serde_json::from_str(text(&frame)).unwrap();
        assert_eq!(value, serde_json::json!([nasty, null, nasty, nasty, null]));
    }

    #[test]
    fn escaping_matches_serde_json() {
        let mut all_ascii = String::new();
        for c in 0u8..=0x7F {
            all_ascii.push(char::from(c));
        }
        for s in ["", "plain", &all_ascii, "é€😀", "\u{0}end"] {
            let mut ours = Vec::new();
            write_json_str(&mut ours, s);
            assert_eq!(ours, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn escaping_matches_serde_json_for_any_string(s in ".*") {
            let mut ours = Vec::new();
            write_json_str(&mut ours, &s);
            proptest::prop_assert_eq!(ours, serde_json::to_vec(&s).unwrap());
        }
    }

    #[test]
    fn long_messages_get_an_extended_length_header() {
        let payload = format!("\"{}\"", "x".repeat(70_000));
        let frame = push(Vsn::V2, Some("1"), "t", "e", &payload);
        assert_eq!(frame[1], 127);
        assert!(text(&frame).ends_with("\"]"));
        let frame = push(Vsn::V2, Some("1"), "t", "e", &payload[..200]);
        assert_eq!(frame[1], 126);
    }

    #[test]
    fn binary_push_roundtrip() {
        let frame = binary_push(Some("12"), "room:1", "img", &[0, 1, 255]).unwrap();
        let payload = payload_of(&frame, 2);
        assert_eq!(payload, b"\x00\x02\x06\x0312room:1img\x00\x01\xFF");
        // A server push read back with the client-push layout differs only by the ref field, so
        // check field by field instead.
        let (jl, tl, el) = (
            payload[1] as usize,
            payload[2] as usize,
            payload[3] as usize,
        );
        let rest = &payload[4..];
        assert_eq!(&rest[..jl], b"12");
        assert_eq!(&rest[jl..jl + tl], b"room:1");
        assert_eq!(&rest[jl + tl..jl + tl + el], b"img");
        assert_eq!(&rest[jl + tl + el..], &[0, 1, 255]);
    }

    #[test]
    fn binary_reply_has_the_exact_bytes() {
        let frame = binary_reply(None, Some("9"), "t", ReplyStatus::Error, b"why").unwrap();
        assert_eq!(payload_of(&frame, 2), b"\x01\x00\x01\x01\x059terrorwhy");
    }

    #[test]
    fn binary_fields_over_255_bytes_are_refused() {
        let long = "x".repeat(256);
        assert_eq!(
            binary_push(None, &long, "e", b""),
            Err(FieldTooLong {
                field: "topic",
                len: 256
            })
        );
        assert!(binary_reply(Some(&long), None, "t", ReplyStatus::Ok, b"").is_err());
        assert!(binary_push(None, &long[..255], "e", b"").is_ok());
    }

    #[test]
    fn json_broadcast_is_a_v2_text_frame_with_the_payload_verbatim() {
        let b = Broadcast::new("weather:wind", "speed", br#" {"kmh": 12.50, "a":[1]} "#);
        assert!(b.is_json() && b.is_deliverable());
        let frame = b.frame_for(Vsn::V2).unwrap();
        assert_eq!(
            text(frame),
            r#"[null,null,"weather:wind","speed", {"kmh": 12.50, "a":[1]} ]"#
        );
        assert_eq!(b.payload(), br#" {"kmh": 12.50, "a":[1]} "#);
        assert_eq!(b.topic(), "weather:wind");
        assert_eq!(b.event(), "speed");
    }

    #[test]
    fn a_positioned_broadcast_carries_its_position_in_the_ref_slot() {
        let position = Position {
            epoch: 17,
            ms: 1_733_000_000_000,
            seq: 2,
        };
        let b = Broadcast::positioned("room:1", "msg", Some(position), br#"{"n":1}"#);
        assert_eq!(b.position(), Some(position));
        assert_eq!(
            text(b.frame_for(Vsn::V2).unwrap()),
            r#"[null,"17.1733000000000-2","room:1","msg",{"n":1}]"#
        );
        assert_eq!(b.payload(), br#"{"n":1}"#);
        assert_eq!(
            text(b.frame_for(Vsn::V1).unwrap()),
            r#"{"topic":"room:1","event":"msg","payload":{"n":1},"ref":"17.1733000000000-2"}"#
        );
        // Binary frames have no ref slot: the position is not on the wire.
        let raw = Broadcast::positioned("t", "e", Some(position), b"\x00");
        assert_eq!(
            payload_of(raw.frame_for(Vsn::V2).unwrap(), 2),
            b"\x02\x01\x01te\x00"
        );
    }

    #[test]
    fn v1_broadcast_frame_is_built_once() {
        let b = Broadcast::new("t", "e", b"[1,2]");
        let first = b.frame_for(Vsn::V1).unwrap();
        assert_eq!(
            text(first),
            r#"{"topic":"t","event":"e","payload":[1,2],"ref":null}"#
        );
        let second = b.frame_for(Vsn::V1).unwrap();
        assert!(std::ptr::eq(first, second));
        assert_eq!(first.as_ptr(), second.as_ptr());
    }

    #[test]
    fn non_json_broadcast_is_a_kind_2_binary_frame() {
        let b = Broadcast::new("cam:1", "frame", &[0xFF, 0x00, b'{']);
        assert!(!b.is_json());
        assert_eq!(
            payload_of(b.frame_for(Vsn::V2).unwrap(), 2),
            b"\x02\x05\x05cam:1frame\xFF\x00{"
        );
        assert_eq!(b.payload(), &[0xFF, 0x00, b'{']);
        assert_eq!(b.frame_for(Vsn::V1), None);
    }

    #[test]
    fn empty_payload_is_not_json() {
        let b = Broadcast::new("t", "e", b"");
        assert!(!b.is_json());
        assert_eq!(
            payload_of(b.frame_for(Vsn::V2).unwrap(), 2),
            b"\x02\x01\x01te"
        );
    }

    #[test]
    fn non_json_broadcast_with_a_long_topic_is_undeliverable() {
        let long = "t".repeat(300);
        let b = Broadcast::new(&long, "e", b"\x00");
        assert!(!b.is_deliverable());
        assert_eq!(b.frame_for(Vsn::V2), None);
        assert_eq!(b.frame_for(Vsn::V1), None);
        assert_eq!(b.payload(), b"\x00");
        // JSON has no such limit.
        assert!(Broadcast::new(&long, "e", b"{}").is_deliverable());
    }

    #[test]
    fn broadcast_frame_is_the_same_bytes_for_every_receiver() {
        let b = Arc::new(Broadcast::new("t", "e", b"{\"n\":1}"));
        let receivers: Vec<Bytes> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || b.frame_for(Vsn::V2).unwrap().clone())
                    .join()
                    .unwrap()
            })
            .collect();
        let original = b.frame_for(Vsn::V2).unwrap();
        for frame in &receivers {
            assert_eq!(frame.as_ptr(), original.as_ptr(), "shared, not copied");
            assert_eq!(frame, original);
        }
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Broadcast>();
    }

    #[test]
    fn json_validation_requires_utf8_and_one_value() {
        assert!(is_valid_json(b"{\"a\":[1,true,null,\"x\"]}"));
        assert!(is_valid_json(b" 12 "));
        assert!(is_valid_json("\"é\"".as_bytes()));
        assert!(!is_valid_json(b"\"\xFF\"")); // a string with invalid UTF-8
        assert!(!is_valid_json(b"{} {}"));
        assert!(!is_valid_json(b"{"));
        assert!(!is_valid_json(b"hello"));
        assert!(!is_valid_json(b""));
    }
}
