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
}

impl Broadcast {
    /// Validates the payload once and builds the V2 frame once, for every receiver.
    pub fn new(topic: &str, event: &str, payload: &[u8]) -> Broadcast {
        let is_json = is_valid_json(payload);
        let (v2, payload) = if is_json {
            let mut frame =
                FrameBuilder::with_capacity(16 + topic.len() + event.len() + payload.len());
            let out = frame.buf();
            out.extend_from_slice(b"[null,null,");
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
        }
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
            48 + self.topic.len() + self.event.len() + self.payload.len(),
        );
        write_message(
            frame.buf(),
            Vsn::V1,
            None,
            None,
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
