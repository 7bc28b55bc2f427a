//! Decoding of client messages: V2 text (`[join_ref, ref, topic, event, payload]`), V1 text
//! (`{"topic","event","payload","ref","join_ref"?}`) and V2 binary pushes (kind 0).
//!
//! Everything borrows from the message's bytes: strings without escapes are not copied, and the
//! payload is the raw JSON text exactly as it arrived, so that what we publish to Redis is what the
//! client sent (no field dropped, no re-ordering, no re-serialisation). Only the first JSON pass
//! lives in [`split_v2`] and [`split_v1`]; swapping serde_json for simd-json means replacing
//! those two functions.
//!
//! Decisions the protocol leaves open (recorded in `docs/protocol.md`):
//! - `join_ref` and `ref` must be JSON strings or `null`. Numbers are refused with an error,
//!   because echoing them back as strings would break phoenix.js's `===` matching silently.
//! - A ref is echoed by value: `"\u0031"` arrives as `1` and goes back as `"1"`, equal under `===`.
//! - V1: a missing `ref` or `join_ref` means `null`; a missing `topic`, `event` or `payload` is an
//!   error; unknown keys are ignored; a duplicate key is an error.
//! - Binary: an empty join_ref or ref means `null` (the format has no other way to say it).

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Vsn;

/// One decoded client message, borrowing from the frame it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound<'a> {
    /// The join this message belongs to (`None` for heartbeats and for null), echoed in replies.
    pub join_ref: Option<Cow<'a, str>>,
    /// The message's own reference, echoed in its reply so that phoenix.js can match it.
    pub msg_ref: Option<Cow<'a, str>>,
    /// The topic, non-empty.
    pub topic: Cow<'a, str>,
    /// The event, non-empty.
    pub event: Cow<'a, str>,
    /// What the client sent, untouched.
    pub payload: Payload<'a>,
}

/// A client payload as it arrived, ready to be published without re-encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The payload's raw JSON text exactly as it arrived (any JSON value; surrounding whitespace
    /// excluded).
    Json(&'a str),
    /// The data of a binary push.
    Binary(&'a [u8]),
}

/// Why a client message could not be decoded. The text is meant for humans: it is logged, and it
/// may be sent back to the client.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong overall shape.
    #[error("invalid message: {0}")]
    Json(#[from] serde_json::Error),
    /// A V2 array with fewer than five elements.
    #[error(
        "a message must be [join_ref, ref, topic, event, payload]; got {0} element(s) instead of 5"
    )]
    TooFewElements(usize),
    /// A V1 message that is not a JSON object.
    #[error(r#"a V1 message must be a JSON object {{"topic","event","payload","ref"}}"#)]
    NotAnObject,
    /// `join_ref` or `ref` is neither a string nor null.
    #[error("{0} must be a string or null")]
    BadRef(&'static str),
    /// `topic` or `event` is not a non-empty string.
    #[error("{0} must be a non-empty string")]
    BadName(&'static str),
    /// A binary message shorter than its header says.
    #[error("binary message is truncated")]
    Truncated,
    /// A binary message of a kind clients may not send.
    #[error("binary message kind {0} cannot be sent by a client (only 0, push)")]
    UnsupportedKind(u8),
    /// A field of a binary message that must be text is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
}

/// Decodes a text message (already checked to be UTF-8 by the WebSocket layer, but checked again
/// here because the type does not say so) in the socket's serializer version.
pub fn decode_text(vsn: Vsn, data: &[u8]) -> Result<Inbound<'_>, DecodeError> {
    let text = std::str::from_utf8(data).map_err(|_| DecodeError::InvalidUtf8("message"))?;
    let fields = match vsn {
        Vsn::V2 => split_v2(text)?,
        Vsn::V1 => split_v1(text)?,
    };
    Ok(Inbound {
        join_ref: ref_field(fields.join_ref, "join_ref")?,
        msg_ref: ref_field(fields.msg_ref, "ref")?,
        topic: name_field(fields.topic, "topic")?,
        event: name_field(fields.event, "event")?,
        payload: Payload::Json(fields.payload.get()),
    })
}

/// Decodes a V2 binary client push: `0, len(join_ref), len(ref), len(topic), len(event),
/// join_ref, ref, topic, event, data…`.
pub fn decode_binary(data: &[u8]) -> Result<Inbound<'_>, DecodeError> {
    let [kind, join_ref_len, ref_len, topic_len, event_len, rest @ ..] = data else {
        return Err(DecodeError::Truncated);
    };
    if *kind != 0 {
        return Err(DecodeError::UnsupportedKind(*kind));
    }
    let mut rest = rest;
    let mut take = |len: u8, name: &'static str| -> Result<&str, DecodeError> {
        let len = usize::from(len);
        if rest.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (field, tail) = rest.split_at(len);
        rest = tail;
        std::str::from_utf8(field).map_err(|_| DecodeError::InvalidUtf8(name))
    };
    let join_ref = take(*join_ref_len, "join_ref")?;
    let msg_ref = take(*ref_len, "ref")?;
    let topic = take(*topic_len, "topic")?;
    let event = take(*event_len, "event")?;
    if topic.is_empty() {
        return Err(DecodeError::BadName("topic"));
    }
    if event.is_empty() {
        return Err(DecodeError::BadName("event"));
    }
    Ok(Inbound {
        join_ref: (!join_ref.is_empty()).then_some(Cow::Borrowed(join_ref)),
        msg_ref: (!msg_ref.is_empty()).then_some(Cow::Borrowed(msg_ref)),
        topic: Cow::Borrowed(topic),
        event: Cow::Borrowed(event),
        payload: Payload::Binary(rest),
    })
}

/// The `token` string of a join payload (`{"token": "...", ...}`), if there is one. Any other
/// shape (not an object, no token, a token that is not a string, a binary payload) is simply "no
/// token": the caller then falls back to the socket's token.
pub fn join_token<'a>(payload: &Payload<'a>) -> Option<Cow<'a, str>> {
    join_fields(payload).0
}

/// What a join's payload says about history (PROTOCOL §12): its `since` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinSince<'a> {
    /// No `since` key: a join as before history (its reply's response is `{}`).
    Absent,
    /// `"since": null`: no position yet; the reply carries the latest one.
    Null,
    /// `"since": "<position>"` (not checked here).
    Given(Cow<'a, str>),
    /// `since` is neither a string nor null.
    Invalid,
}

/// The token and the `since` of a join's payload, read in one pass: `token` as in
/// [`join_token`]; `since` as [`JoinSince`] says.
pub fn join_fields<'a>(payload: &Payload<'a>) -> (Option<Cow<'a, str>>, JoinSince<'a>) {
    #[derive(Deserialize)]
    struct JoinOnly<'a> {
        #[serde(borrow, default)]
        token: Option<&'a RawValue>,
        #[serde(borrow, default)]
        since: Option<&'a RawValue>,
    }
    let Payload::Json(json) = payload else {
        return (None, JoinSince::Absent);
    };
    // A derived struct would also accept an array (`["tok"]`); only objects carry a token.
    if !json.trim_start().starts_with('{') {
        return (None, JoinSince::Absent);
    }
    let Ok(found) = serde_json::from_str::<JoinOnly<'a>>(json) else {
        return (None, JoinSince::Absent);
    };
    let token = found.token.and_then(json_string_value);
    // serde maps `"since": null` to `None` for an `Option<&RawValue>`: tell null from absent
    // by the raw text instead.
    let since = match found.since {
        None if has_null_since(json) => JoinSince::Null,
        None => JoinSince::Absent,
        Some(raw) if raw.get() == "null" => JoinSince::Null,
        Some(raw) => json_string_value(raw).map_or(JoinSince::Invalid, JoinSince::Given),
    };
    (token, since)
}

/// Whether an object's `since` key is present with the value `null` (serde reads both absent
/// and null as `None`).
fn has_null_since(json: &str) -> bool {
    #[derive(Deserialize)]
    struct SinceKey {
        #[serde(default, deserialize_with = "present")]
        since: bool,
    }
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| true)
    }
    json.contains("\"since\"") && serde_json::from_str::<SinceKey>(json).is_ok_and(|k| k.since)
}

/// The five fields of a message, each still raw JSON.
struct RawFields<'a> {
    join_ref: Option<&'a RawValue>,
    msg_ref: Option<&'a RawValue>,
    topic: &'a RawValue,
    event: &'a RawValue,
    payload: &'a RawValue,
}

/// First pass over a V2 array: the first five elements as raw JSON, the rest skipped.
fn split_v2(text: &str) -> Result<RawFields<'_>, DecodeError> {
    let elements: FirstFive<'_> = serde_json::from_str(text)?;
    match elements.items {
        [Some(join_ref), Some(msg_ref), Some(topic), Some(event), Some(payload)] => Ok(RawFields {
            join_ref: Some(join_ref),
            msg_ref: Some(msg_ref),
            topic,
            event,
            payload,
        }),
        _ => Err(DecodeError::TooFewElements(elements.count)),
    }
}

/// First pass over a V1 object.
fn split_v1(text: &str) -> Result<RawFields<'_>, DecodeError> {
    #[derive(Deserialize)]
    struct V1Object<'a> {
        #[serde(borrow)]
        topic: &'a RawValue,
        #[serde(borrow)]
        event: &'a RawValue,
        #[serde(borrow)]
        payload: &'a RawValue,
        #[serde(borrow, default, rename = "ref")]
        msg_ref: Option<&'a RawValue>,
        #[serde(borrow, default)]
        join_ref: Option<&'a RawValue>,
    }
    // A derived struct would also accept an array; V1 messages are objects.
    if !text.trim_start().starts_with('{') {
        return Err(DecodeError::NotAnObject);
    }
    let object: V1Object<'_> = serde_json::from_str(text)?;
    Ok(RawFields {
        join_ref: object.join_ref,
        msg_ref: object.msg_ref,
        topic: object.topic,
        event: object.event,
        payload: object.payload,
    })
}

/// The first five elements of a JSON array (as raw JSON) and how many elements it has in all.
struct FirstFive<'a> {
    items: [Option<&'a RawValue>; 5],
    count: usize,
}

impl<'de> Deserialize<'de> for FirstFive<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstFiveVisitor;
        impl<'de> Visitor<'de> for FirstFiveVisitor {
            type Value = FirstFive<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON array [join_ref, ref, topic, event, payload]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = [None; 5];
                let mut count = 0;
                for item in &mut items {
                    match seq.next_element::<&'de RawValue>()? {
                        Some(raw) => {
                            *item = Some(raw);
                            count += 1;
                        }
                        None => return Ok(FirstFive { items, count }),
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(FirstFive { items, count })
            }
        }
        deserializer.deserialize_seq(FirstFiveVisitor)
    }
}

/// A JSON string's value, borrowed when it has no escapes; `None` if `raw` is not a string.
fn json_string_value(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        // RawValue is valid JSON, so a string without escapes is its content verbatim.
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// A `join_ref` or `ref`: a string, or null (also when absent).
fn ref_field<'a>(
    raw: Option<&'a RawValue>,
    name: &'static str,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => json_string_value(raw)
            .map(Some)
            .ok_or(DecodeError::BadRef(name)),
    }
}

/// A `topic` or `event`: a non-empty string.
fn name_field<'a>(raw: &'a RawValue, name: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    match json_string_value(raw) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(DecodeError::BadName(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(text: &str) -> Result<Inbound<'_>, DecodeError> {
        decode_text(Vsn::V2, text.as_bytes())
    }

    fn v1(text: &str) -> Result<Inbound<'_>, DecodeError> {
        decode_text(Vsn::V1, text.as_bytes())
    }

    #[test]
    fn v2_message_decodes_into_its_five_fields() {
        let m = v2(r#"["1","2","room:lobby","new_msg",{"body":"hi"}]"#).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.msg_ref.as_deref(), Some("2"));
        assert_eq!(m.topic, "room:lobby");
        assert_eq!(m.event, "new_msg");
        assert_eq!(m.payload, Payload::Json(r#"{"body":"hi"}"#));
    }

    #[test]
    fn v2_payload_is_kept_byte_for_byte() {
        let payload = r#"{ "z":1,  "a" : [1.50, "\u00e9", {"token":"t","message":"m"}], "z":2 }"#;
        let text = format!(r#"["1", "2", "t", "e", {payload} ]"#);
        let m = v2(&text).unwrap();
        assert_eq!(m.payload, Payload::Json(payload));
    }

    #[test]
    fn v2_fields_without_escapes_are_borrowed() {
        let m = v2(r#"["1","2","room:lobby","new_msg",{}]"#).unwrap();
        assert!(matches!(m.topic, Cow::Borrowed(_)));
        assert!(matches!(m.join_ref, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let m = v2(r#"["\u0031","a\"b","room\/x","e\\v",null]"#).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.msg_ref.as_deref(), Some("a\"b"));
        assert_eq!(m.topic, "room/x");
        assert_eq!(m.event, "e\\v");
        assert_eq!(m.payload, Payload::Json("null"));
    }

    #[test]
    fn null_join_ref_decodes_as_none() {
        let m = v2(r#"[null,"5","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.msg_ref.as_deref(), Some("5"));
        assert_eq!(m.payload, Payload::Json("{}"));
        let spaced = v2("[ null ,\n null , \"phoenix\" , \"heartbeat\" , { } ]").unwrap();
        assert_eq!((spaced.join_ref, spaced.msg_ref), (None, None));
        assert_eq!(spaced.payload, Payload::Json("{ }"));
    }

    #[test]
    fn v2_extra_trailing_elements_are_ignored() {
        let m = v2(r#"["1","2","t","e",[1,2],{"x":[3]},7]"#).unwrap();
        assert_eq!(m.payload, Payload::Json("[1,2]"));
    }

    #[test]
    fn v2_with_fewer_than_five_elements_is_refused() {
        let err = v2(r#"["1","2","t","e"]"#).unwrap_err();
        assert!(matches!(err, DecodeError::TooFewElements(4)), "{err}");
        assert!(matches!(
            v2("[]").unwrap_err(),
            DecodeError::TooFewElements(0)
        ));
    }

    #[test]
    fn numeric_refs_are_refused() {
        let err = v2(r#"[1,"2","t","e",{}]"#).unwrap_err();
        assert_eq!(err.to_string(), "join_ref must be a string or null");
        let err = v2(r#"["1",2,"t","e",{}]"#).unwrap_err();
        assert_eq!(err.to_string(), "ref must be a string or null");
    }

    #[test]
    fn empty_or_non_string_topic_and_event_are_refused() {
        assert_eq!(
            v2(r#"["1","2","","e",{}]"#).unwrap_err().to_string(),
            "topic must be a non-empty string"
        );
        assert_eq!(
            v2(r#"["1","2",null,"e",{}]"#).unwrap_err().to_string(),
            "topic must be a non-empty string"
        );
        assert_eq!(
            v2(r#"["1","2","t",3,{}]"#).unwrap_err().to_string(),
            "event must be a non-empty string"
        );
    }

    #[test]
    fn non_array_or_broken_json_is_a_readable_error() {
        let err = v2(r#"{"topic":"t"}"#).unwrap_err();
        assert!(err.to_string().contains("expected a JSON array"), "{err}");
        assert!(v2(r#"["1","2","t","e",{]"#).is_err());
        assert!(v2(r#"["1","2","t","e",{}] x"#).is_err());
        assert!(v2("").is_err());
    }

    #[test]
    fn v1_message_decodes_and_ignores_unknown_keys() {
        let text = r#"{"extra":[1],"payload":{"b":2, "a":1},"event":"ev","ref":"9","topic":"t:1"}"#;
        let m = v1(text).unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.msg_ref.as_deref(), Some("9"));
        assert_eq!(m.topic, "t:1");
        assert_eq!(m.event, "ev");
        assert_eq!(m.payload, Payload::Json(r#"{"b":2, "a":1}"#));
    }

    #[test]
    fn v1_join_ref_is_read_when_present() {
        let m =
            v1(r#"{"topic":"t","event":"e","payload":null,"ref":null,"join_ref":"3"}"#).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("3"));
        assert_eq!(m.msg_ref, None);
        assert_eq!(m.payload, Payload::Json("null"));
    }

    #[test]
    fn v1_missing_payload_is_refused_and_missing_ref_is_null() {
        let err = v1(r#"{"topic":"t","event":"e","ref":"1"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `payload`"), "{err}");
        let m = v1(r#"{"topic":"t","event":"e","payload":{}}"#).unwrap();
        assert_eq!(m.msg_ref, None);
    }

    #[test]
    fn v1_array_is_refused() {
        let err = v1(r#"["1","2","t","e",{}]"#).unwrap_err();
        assert!(
            err.to_string().contains("V1 message must be a JSON object"),
            "{err}"
        );
    }

    fn binary(join_ref: &str, msg_ref: &str, topic: &str, event: &str, data: &[u8]) -> Vec<u8> {
        let mut out = vec![
            0,
            join_ref.len() as u8,
            msg_ref.len() as u8,
            topic.len() as u8,
            event.len() as u8,
        ];
        for field in [join_ref, msg_ref, topic, event] {
            out.extend_from_slice(field.as_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn binary_push_decodes() {
        let bytes = binary("12", "13", "room:1", "upload", &[0, 255, 1]);
        let m = decode_binary(&bytes).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("12"));
        assert_eq!(m.msg_ref.as_deref(), Some("13"));
        assert_eq!(m.topic, "room:1");
        assert_eq!(m.event, "upload");
        assert_eq!(m.payload, Payload::Binary(&[0, 255, 1]));
    }

    #[test]
    fn binary_empty_join_ref_decodes_as_none() {
        let bytes = binary("", "4", "t", "e", b"");
        let m = decode_binary(&bytes).unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.payload, Payload::Binary(b""));
    }

    #[test]
    fn truncated_or_foreign_binary_is_refused() {
        assert!(matches!(
            decode_binary(&[0, 1, 1]),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            decode_binary(&[0, 5, 0, 1, 1, b'a']),
            Err(DecodeError::Truncated)
        ));
        let mut reply = binary("1", "2", "t", "e", b"");
        reply[0] = 1;
        assert!(matches!(
            decode_binary(&reply),
            Err(DecodeError::UnsupportedKind(1))
        ));
        let mut bad = binary("1", "2", "t", "e", b"");
        bad[7] = 0xFF; // the topic byte
        assert!(matches!(
            decode_binary(&bad),
            Err(DecodeError::InvalidUtf8("topic"))
        ));
        assert!(matches!(
            decode_binary(&binary("1", "2", "", "e", b"")),
            Err(DecodeError::BadName("topic"))
        ));
    }

    #[test]
    fn join_token_is_read_from_an_object_payload() {
        let m = v2(r#"["1","1","t","phx_join",{"a":[{"token":"no"}],"token":"abc.def"}]"#).unwrap();
        assert_eq!(join_token(&m.payload).as_deref(), Some("abc.def"));
    }

    #[test]
    fn join_token_is_none_for_other_shapes() {
        for payload in [
            r#"{}"#,
            r#"{"token":5}"#,
            r#"{"token":null}"#,
            r#"["abc"]"#,
            r#""abc""#,
            r#"null"#,
        ] {
            assert_eq!(join_token(&Payload::Json(payload)), None, "{payload}");
        }
        assert_eq!(join_token(&Payload::Binary(b"{\"token\":\"x\"}")), None);
    }

    #[test]
    fn join_since_is_told_apart_absent_null_given_and_invalid() {
        let since = |json| join_fields(&Payload::Json(json)).1;
        assert_eq!(since(r#"{"token":"t"}"#), JoinSince::Absent);
        assert_eq!(since(r#"{"token":"t","since":null}"#), JoinSince::Null);
        assert_eq!(
            since(r#"{"since":"1.2-3","token":"t"}"#),
            JoinSince::Given(Cow::Borrowed("1.2-3"))
        );
        assert_eq!(since(r#"{"since":5}"#), JoinSince::Invalid);
        assert_eq!(since(r#"{"since":{"a":1}}"#), JoinSince::Invalid);
        assert_eq!(since(r#"{"a":{"since":null}}"#), JoinSince::Absent);
        assert_eq!(since(r#"["since"]"#), JoinSince::Absent);
        assert_eq!(
            join_fields(&Payload::Json(r#"{"since":null,"token":"abc"}"#))
                .0
                .as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn escaped_join_token_is_unescaped() {
        assert_eq!(
            join_token(&Payload::Json(r#"{"token":"a\/b"}"#)).as_deref(),
            Some("a/b")
        );
    }
}
