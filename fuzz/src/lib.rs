//! The checks the fuzz targets run, one public function per target, each taking arbitrary bytes.
//!
//! This file is shared: the libFuzzer targets in `fuzz_targets/` call it (nightly, cargo-fuzz),
//! and `tests/corpus_test.rs` includes it with `#[path]` and replays every file of
//! `fuzz/corpus/<target>/` through it on stable, so the committed corpus is a regression suite
//! of `cargo test`. It must therefore only use crates the `channel` package already depends on.
//!
//! Every function must return normally for every input. A panic is a finding: either the code
//! under test panicked on hostile input (nothing on the input path may), or one of the
//! invariants asserted here was broken. Each invariant is something the server relies on, and
//! its message says which.

use std::borrow::Cow;

use channel::config::{Config, Overrides, Secret};
use channel::http::{
    accept_upgrade, allowed_methods, parse_request_head, route, Route, MAX_HEADERS,
};
use channel::protocol::{
    decode_binary, decode_text, join_token, Inbound, Message, MessageReader, Payload, ReadError,
    Vsn,
};
use serde_json::Value;

/// Frame size limits the WebSocket reader is fuzzed with: small ones make "message too big"
/// reachable, the default one is what production runs.
const READER_LIMITS: [usize; 3] = [64, 1024, 65_536];

/// The longest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

// --- v2_text_decode ---------------------------------------------------------------------------

/// `decode_text` in V2 and V1 on the bytes as one text message, then the same bytes as a raw
/// client byte stream through `MessageReader::process`, cut into chunks in a way chosen by the
/// first byte.
pub fn v2_text_decode(data: &[u8]) {
    check_text_message(data);
    check_message_reader(data);
}

/// Both serializers on one text message, with the invariants of a decoded message.
fn check_text_message(data: &[u8]) {
    let v2 = decode_text(Vsn::V2, data);
    if let Ok(message) = &v2 {
        check_inbound(data, message);
    }
    if let Err(e) = &v2 {
        // The error text is logged and may become a close reason: rendering it must not panic.
        let _ = e.to_string();
    }
    check_v2_against_serde_json(data, &v2);

    match decode_text(Vsn::V1, data) {
        Ok(message) => check_inbound(data, &message),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// What every decoded text message guarantees to the connection.
fn check_inbound(data: &[u8], message: &Inbound<'_>) {
    assert!(
        !message.topic.is_empty(),
        "decoded a message with an empty topic"
    );
    assert!(
        !message.event.is_empty(),
        "decoded a message with an empty event"
    );
    let Payload::Json(payload) = message.payload else {
        panic!("a text message decoded to a binary payload");
    };
    // The payload is published to Redis as it arrived: it must be a slice of the input, not a
    // re-serialisation.
    let start = payload.as_ptr() as usize;
    let input = data.as_ptr() as usize;
    assert!(
        start >= input && start + payload.len() <= input + data.len(),
        "the JSON payload is not a slice of the message"
    );
    assert_eq!(
        payload,
        payload.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r')),
        "the JSON payload keeps surrounding whitespace"
    );
    assert!(!payload.is_empty(), "empty JSON payload");
    // Whatever the payload is, looking for a join token in it must not panic.
    let _ = join_token(&message.payload);
}

/// The V2 decoder agrees with a plain `serde_json::Value` reading of the same text: a message of
/// the right shape is accepted with the same fields, and what the decoder accepts reads the same.
fn check_v2_against_serde_json(
    data: &[u8],
    decoded: &Result<Inbound<'_>, channel::protocol::DecodeError>,
) {
    // `Value` refuses some texts the decoder accepts (numbers out of f64 range, deep nesting);
    // there is then nothing to compare with.
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let ref_ok = |v: &Value| v.is_string() || v.is_null();
    let name_ok = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    let well_formed = items.len() >= 5
        && ref_ok(&items[0])
        && ref_ok(&items[1])
        && name_ok(&items[2])
        && name_ok(&items[3]);
    let message = match decoded {
        Ok(message) => message,
        Err(e) if well_formed => panic!("a well-formed V2 message was refused: {e}"),
        Err(_) => return,
    };
    assert!(
        well_formed,
        "an ill-formed V2 message was accepted: {message:?}"
    );
    assert_eq!(message.join_ref.as_deref(), items[0].as_str(), "join_ref");
    assert_eq!(message.msg_ref.as_deref(), items[1].as_str(), "ref");
    assert_eq!(Some(message.topic.as_ref()), items[2].as_str(), "topic");
    assert_eq!(Some(message.event.as_ref()), items[3].as_str(), "event");
    if let Payload::Json(payload) = message.payload {
        let payload: Value = serde_json::from_str(payload)
            .expect("a payload read from a Value-readable array is Value-readable");
        assert_eq!(payload, items[4], "payload");
    }
}

/// One message as the reader handed it out, owned, so that runs can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// The WebSocket reader on `data[1..]` as a client byte stream; `data[0]` picks the frame size
/// limit and how the stream is cut into reads. Whatever the cut, the reader must hand out the
/// same messages and stop with the same error as when it gets the whole stream in one read.
fn check_message_reader(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let limit = READER_LIMITS[usize::from(control) % READER_LIMITS.len()];
    let whole = read_stream(stream, limit, &[stream.len().max(1)]);
    let chunk = usize::from(control >> 2) % 17 + 1;
    let irregular = [chunk, 1, 2 * chunk + 3, 7];
    for cuts in [&[chunk][..], &irregular[..]] {
        let pieces = read_stream(stream, limit, cuts);
        assert_eq!(
            pieces, whole,
            "the reader's output depends on how the bytes were cut into reads (cuts {cuts:?})"
        );
    }
}

/// Feeds `stream` to a fresh reader in reads of the sizes in `cuts` (cycled); returns the
/// messages handed out and the error that stopped it, if any.
fn read_stream(stream: &[u8], limit: usize, cuts: &[usize]) -> (Vec<Seen>, Option<String>) {
    let mut reader = MessageReader::new(limit);
    let mut seen = Vec::new();
    let mut rest = stream;
    let mut sizes = cuts.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(1).clamp(1, rest.len());
        let (read, tail) = rest.split_at(size);
        rest = tail;
        // The connection hands the reader a scratch buffer it may unmask in place.
        let mut buf = read.to_vec();
        let outcome = reader.process(&mut buf, |message| {
            seen.push(check_message(message, limit));
            Ok::<(), std::convert::Infallible>(())
        });
        if let Err(e) = outcome {
            let error = match e {
                ReadError::Frame(frame) => {
                    let code = frame.close_code();
                    assert!(
                        matches!(code, 1002 | 1007 | 1009),
                        "a frame error closes with {code}, not one of 1002, 1007, 1009"
                    );
                    assert!(
                        frame.reason().len() <= 123,
                        "close reason longer than 123 bytes"
                    );
                    format!("{code} {frame}")
                }
                ReadError::Handler(never) => match never {},
            };
            return (seen, Some(error));
        }
        // Only an unfinished frame (header + at most `limit` bytes, or 125 for control
        // frames) and an unfinished fragmented message (at most `limit`) may be buffered.
        let bound = 4 * (limit.max(MAX_CONTROL_PAYLOAD) + 14);
        assert!(
            reader.buffered_capacity() <= bound,
            "the reader buffers {} bytes with a limit of {limit}",
            reader.buffered_capacity()
        );
    }
    (seen, None)
}

/// The invariants of one message the reader hands to the connection.
fn check_message(message: Message<'_>, limit: usize) -> Seen {
    match message {
        Message::Text(bytes) => {
            assert!(
                std::str::from_utf8(bytes).is_ok(),
                "a text message with invalid UTF-8 was handed out"
            );
            assert!(
                bytes.len() <= limit,
                "a text message over the limit was handed out"
            );
            // What the connection does next with it.
            if let Ok(message) = decode_text(Vsn::V2, bytes) {
                check_inbound(bytes, &message);
            }
            Seen::Text(bytes.to_vec())
        }
        Message::Binary(bytes) => {
            assert!(
                bytes.len() <= limit,
                "a binary message over the limit was handed out"
            );
            let _ = decode_binary(bytes);
            Seen::Binary(bytes.to_vec())
        }
        Message::Ping(bytes) => {
            assert!(
                bytes.len() <= MAX_CONTROL_PAYLOAD,
                "ping longer than 125 bytes"
            );
            Seen::Ping(bytes.to_vec())
        }
        Message::Pong(bytes) => {
            assert!(
                bytes.len() <= MAX_CONTROL_PAYLOAD,
                "pong longer than 125 bytes"
            );
            Seen::Pong(bytes.to_vec())
        }
        Message::Close(close) => {
            if let Some((code, reason)) = close {
                assert!(
                    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                    "a close code clients may not send was handed out: {code}"
                );
                assert!(reason.len() <= 123, "close reason longer than 123 bytes");
            }
            Seen::Close(close.map(|(code, reason)| (code, reason.to_string())))
        }
    }
}

// --- binary_decode ----------------------------------------------------------------------------

/// `decode_binary` on one binary message. A decoded push re-encodes to exactly the input (the
/// format has one encoding per message), and a message of the right shape is never refused.
pub fn binary_decode(data: &[u8]) {
    let decoded = decode_binary(data);
    match &decoded {
        Ok(message) => {
            assert!(
                !message.topic.is_empty(),
                "decoded a binary push with an empty topic"
            );
            assert!(
                !message.event.is_empty(),
                "decoded a binary push with an empty event"
            );
            assert_ne!(
                message.join_ref.as_deref(),
                Some(""),
                "empty join_ref must be null"
            );
            assert_ne!(
                message.msg_ref.as_deref(),
                Some(""),
                "empty ref must be null"
            );
            let Payload::Binary(payload) = message.payload else {
                panic!("a binary push decoded to a JSON payload");
            };
            let fields = [
                message.join_ref.as_deref().unwrap_or(""),
                message.msg_ref.as_deref().unwrap_or(""),
                message.topic.as_ref(),
                message.event.as_ref(),
            ];
            let mut encoded = vec![0u8];
            for field in fields {
                encoded
                    .push(u8::try_from(field.len()).expect("decoded fields are at most 255 bytes"));
            }
            for field in fields {
                encoded.extend_from_slice(field.as_bytes());
            }
            encoded.extend_from_slice(payload);
            assert_eq!(
                encoded, data,
                "a decoded binary push does not re-encode to its input"
            );
            for field in [&message.topic, &message.event] {
                assert!(
                    matches!(field, Cow::Borrowed(_)),
                    "binary fields are borrowed"
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(
                !binary_push_well_formed(data),
                "a well-formed binary push was refused: {e}"
            );
        }
    }
}

/// Kind 0, four lengths that fit, UTF-8 fields, non-empty topic and event.
fn binary_push_well_formed(data: &[u8]) -> bool {
    if data.len() < 5 || data[0] != 0 {
        return false;
    }
    let mut at = 5;
    for (i, &len) in data[1..5].iter().enumerate() {
        let end = at + usize::from(len);
        let Some(field) = data.get(at..end) else {
            return false;
        };
        if std::str::from_utf8(field).is_err() || (i >= 2 && field.is_empty()) {
            return false;
        }
        at = end;
    }
    true
}

// --- http_head --------------------------------------------------------------------------------

/// Head limits the parser is fuzzed with: the default and a small one (431 reachable).
const HEAD_LIMITS: [usize; 2] = [8192, 256];

/// `parse_request_head`, then `route` and, for the WebSocket route, `accept_upgrade`, as the
/// accept loop runs them on the bytes a client sent before the upgrade. Every refusal must be a
/// well-formed 4xx response.
pub fn http_head(data: &[u8]) {
    for max_head in HEAD_LIMITS {
        match parse_request_head(data, max_head) {
            Ok(None) => assert!(
                data.len() < max_head,
                "an incomplete head of {} bytes (limit {max_head}) was not refused",
                data.len()
            ),
            Ok(Some(head)) => {
                assert!(head.head_len <= data.len(), "head_len beyond the buffer");
                assert!(
                    head.head_len <= max_head,
                    "a head over the limit was accepted"
                );
                assert!(
                    head.headers.len() <= MAX_HEADERS,
                    "more than MAX_HEADERS headers"
                );
                for (name, _) in &head.headers {
                    assert_eq!(
                        name,
                        &name.to_ascii_lowercase(),
                        "header names are lower-cased"
                    );
                }
                let route = route(&head);
                let _ = allowed_methods(&head.path);
                if route == Route::MethodNotAllowed {
                    assert!(
                        allowed_methods(&head.path).is_some(),
                        "405 without an Allow value"
                    );
                }
                if route == Route::WebSocket {
                    match accept_upgrade(&head) {
                        Ok(upgrade) => check_101(&upgrade.response_101),
                        Err(response) => {
                            assert!(
                                (400..500).contains(&response.status),
                                "an upgrade refused with {}",
                                response.status
                            );
                            check_response_bytes(&response.to_bytes(), response.status);
                        }
                    }
                }
            }
            Err(e) => {
                let status = e.status();
                assert!(
                    matches!(status, 400 | 431),
                    "a bad head answered with {status}"
                );
                check_response_bytes(&e.response().to_bytes(), status);
            }
        }
    }
}

/// A 101 response: one head, CRLF lines, nothing after the blank line.
fn check_101(bytes: &[u8]) {
    assert!(
        bytes.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"),
        "101 status line"
    );
    let end = find(bytes, b"\r\n\r\n").expect("a 101 response has a blank line");
    assert_eq!(
        end + 4,
        bytes.len(),
        "bytes after the 101 head (header injection?)"
    );
    check_head_lines(&bytes[..end]);
}

/// A complete response with `status`: CRLF-only head lines (nothing from the request can inject a
/// header) and a body of exactly `Content-Length` bytes.
fn check_response_bytes(bytes: &[u8], status: u16) {
    let status_line = format!("HTTP/1.1 {status} ");
    assert!(bytes.starts_with(status_line.as_bytes()), "status line");
    let end = find(bytes, b"\r\n\r\n").expect("a response has a blank line");
    let head = &bytes[..end];
    check_head_lines(head);
    let head = std::str::from_utf8(head).expect("response heads are text");
    let length = head
        .split("\r\n")
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse::<usize>().ok())
        .expect("every response carries Content-Length");
    assert_eq!(
        bytes.len() - end - 4,
        length,
        "Content-Length differs from the body"
    );
}

/// Every line of a response head (without its blank line) is non-empty and free of CR and LF:
/// a value taken from the request cannot end a header early or add one.
fn check_head_lines(head: &[u8]) {
    let mut rest = head;
    loop {
        let (line, tail) = match find(rest, b"\r\n") {
            Some(at) => (&rest[..at], Some(&rest[at + 2..])),
            None => (rest, None),
        };
        assert!(
            !line.is_empty() && !line.contains(&b'\r') && !line.contains(&b'\n'),
            "a response head line that is empty or holds a bare CR or LF: {:?}",
            String::from_utf8_lossy(line)
        );
        match tail {
            Some(tail) => rest = tail,
            None => return,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// --- config_load ------------------------------------------------------------------------------

/// `Config::load_str` on the bytes as a TOML file (UTF-8 only: the binary reads the file into a
/// `String`), with an empty environment and no flags. A loaded configuration must describe
/// itself as valid TOML, and secrets (`jwt_secret`, `admin_key`, the password of `redis_url`)
/// must never show in what it prints, nor in the error that refuses it.
pub fn config_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let no_env = |_: &str| -> Option<String> { None };
    let passwords = redis_url_passwords(text);
    let config = match Config::load_str(text, "fuzz.toml", &no_env, &Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            // The error goes to stderr and the logs: a refused URL must not show its password.
            assert_no_password(&e.to_string(), &passwords, "a configuration error");
            return;
        }
    };
    // What `check-config` prints and the server logs at start-up.
    let described = config.describe();
    let _ = config.listen_addr();
    let _ = config.public_url_or_default();
    let _ = config.redis_url_redacted();
    assert!(
        described.parse::<toml::Table>().is_ok(),
        "describe() is not valid TOML:\n{described}"
    );
    // Secrets must not influence anything printable: swap them and compare.
    let mut swapped = config.clone();
    swapped.jwt_secret = config
        .jwt_secret
        .as_ref()
        .map(|_| Secret::new("a-different-secret"));
    swapped.admin_key = config
        .admin_key
        .as_ref()
        .map(|_| Secret::new("a-different-admin-key"));
    assert_eq!(swapped.describe(), described, "describe() shows a secret");
    assert_eq!(
        format!("{swapped:?}"),
        format!("{config:?}"),
        "Debug shows a secret"
    );
    assert_no_password(&described, &passwords, "describe()");
}

/// The passwords of the `redis_url` strings of a TOML text (`[channel]` and Tangram's `[core]`),
/// as an operator would read them: after `scheme://user:`, up to the last `@`.
fn redis_url_passwords(text: &str) -> Vec<String> {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    ["channel", "core"]
        .iter()
        .filter_map(|section| doc.get(*section)?.get("redis_url")?.as_str())
        .filter_map(|url| {
            let (_, rest) = url.split_once("://")?;
            let (userinfo, _) = rest.rsplit_once('@')?;
            let (_, password) = userinfo.split_once(':')?;
            (!password.is_empty()).then(|| password.to_string())
        })
        .collect()
}

/// `text` shows none of `passwords` as `:<password>@`, whether raw, Debug-escaped (error
/// messages quote values with `{:?}`) or TOML-escaped (`describe()`).
fn assert_no_password(text: &str, passwords: &[String], what: &str) {
    for password in passwords {
        let debug = format!("{password:?}");
        let toml = toml::Value::String(password.clone()).to_string();
        for shown in [
            password.as_str(),
            &debug[1..debug.len() - 1],
            &toml[1..toml.len() - 1],
        ] {
            assert!(
                !text.contains(&format!(":{shown}@")),
                "{what} shows the password of redis_url: {text}"
            );
        }
    }
}
