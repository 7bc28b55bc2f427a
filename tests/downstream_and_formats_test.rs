//! docs/protocol.md "Topics and events", "Frames and close codes" and "Downstream": Redis `to:<topic>:<event>` to clients
//! (JSON verbatim in V2 text, anything else as kind-2 binary, Redis order, the last-colon
//! split), the V1 object format, and V2 binary pushes. Exact frames, real Redis.

mod common;

use std::time::Duration;

use common::encode_binary_push;
use common::phoenix::*;
use serde_json::json;

const TOPIC: &str = "room:1";
const REDIS_WAIT: Duration = Duration::from_secs(5);
const NOTHING: Duration = Duration::from_millis(300);

// --- downstream, V2 ----------------------------------------------------------------------

#[test]
fn json_redis_message_arrives_verbatim_as_v2_broadcast() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    let payload = r#"{"b" : 1,  "a":[2, "\u00e9"], "status":"x"}"#;
    assert_eq!(s.redis.publish("to:room:1:new_msg", payload), 1);
    expect_text(&mut socket, &broadcast_text(TOPIC, "new_msg", payload));
}

#[test]
fn json_scalar_redis_message_arrives_as_v2_broadcast() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    for payload in ["42", r#""a string""#, "null", "[]"] {
        s.redis.publish("to:room:1:ev", payload);
        expect_text(&mut socket, &broadcast_text(TOPIC, "ev", payload));
    }
}

#[test]
fn non_json_redis_message_arrives_as_binary_broadcast() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    let data: &[u8] = &[0xff, 0x00, 0x01, b'{', b'x', 0x80];
    s.redis.publish("to:room:1:raw", data);
    let mut expected = vec![2u8, 6, 3];
    expected.extend_from_slice(b"room:1");
    expected.extend_from_slice(b"raw");
    expected.extend_from_slice(data);
    expect_binary(&mut socket, &expected);
}

#[test]
fn plain_text_redis_message_arrives_as_binary_broadcast() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    s.redis.publish("to:room:1:txt", "hello world");
    let mut expected = vec![2u8, 6, 3];
    expected.extend_from_slice(b"room:1txthello world");
    expect_binary(&mut socket, &expected);
}

#[test]
fn json_with_invalid_utf8_arrives_as_binary_broadcast() {
    // A text frame must be UTF-8: a JSON string holding byte 0xff cannot go as text.
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    let data: &[u8] = b"\"\xff\"";
    s.redis.publish("to:room:1:ev", data);
    let mut expected = vec![2u8, 6, 2];
    expected.extend_from_slice(b"room:1ev");
    expected.extend_from_slice(data);
    expect_binary(&mut socket, &expected);
}

#[test]
fn empty_redis_message_arrives_as_binary_broadcast() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    s.redis.publish("to:room:1:ev", b"");
    let mut expected = vec![2u8, 6, 2];
    expected.extend_from_slice(b"room:1ev");
    expect_binary(&mut socket, &expected);
}

#[test]
fn downstream_keeps_redis_order() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    const N: usize = 1000;
    // One pipelined batch, mixing text and binary broadcasts and two events.
    let mut conn = s.redis.connection();
    let mut pipe = redis::pipe();
    for i in 0..N {
        if i % 10 == 9 {
            pipe.cmd("PUBLISH")
                .arg("to:room:1:bin")
                .arg(format!("raw {i}"))
                .ignore();
        } else {
            pipe.cmd("PUBLISH")
                .arg(format!("to:room:1:e{}", i % 2))
                .arg(i.to_string())
                .ignore();
        }
    }
    let _: () = pipe.query(&mut conn).expect("pipelined PUBLISH works");
    for i in 0..N {
        if i % 10 == 9 {
            let mut expected = vec![2u8, 6, 3];
            expected.extend_from_slice(b"room:1bin");
            expected.extend_from_slice(format!("raw {i}").as_bytes());
            expect_binary(&mut socket, &expected);
        } else {
            expect_text(
                &mut socket,
                &broadcast_text(TOPIC, &format!("e{}", i % 2), &i.to_string()),
            );
        }
    }
    expect_quiet(&mut socket);
}

#[test]
fn topic_with_colons_splits_at_last_colon() {
    let s = Setup::new();
    let mut wind = s.joined("weather:wind");
    let mut weather = s.joined("weather");
    s.redis.publish("to:weather:wind:speed", r#"{"kmh":12}"#);
    expect_text(
        &mut wind,
        &broadcast_text("weather:wind", "speed", r#"{"kmh":12}"#),
    );
    // `weather` + event `wind:speed` is not a reading of the name (events have no colon).
    expect_quiet(&mut weather);
    s.redis.publish("to:weather:wind", "1");
    expect_text(&mut weather, &broadcast_text("weather", "wind", "1"));
    expect_quiet(&mut wind);
}

#[test]
fn push_on_topic_with_colons_publishes_from_topic_event() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined("a:b:c");
    send_raw_push(&mut socket, Some("1"), "2", "a:b:c", "ev", "{}");
    expect_text(&mut socket, &ok_reply(Some("1"), "2", "a:b:c", "{}"));
    assert_eq!(published.recv_timeout(REDIS_WAIT).channel, "from:a:b:c:ev");
}

#[test]
fn redis_message_for_other_topic_is_not_delivered() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    s.redis.publish("to:room:2:ev", "{}");
    s.redis.publish("to:room:10:ev", "{}");
    s.redis.publish("from:room:1:ev", "{}");
    s.redis.publish("room:1:ev", "{}");
    expect_quiet(&mut socket);
}

#[test]
fn redis_name_with_empty_topic_or_event_is_not_delivered() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    s.redis.publish("to:room:1:", "{}");
    s.redis.publish("to:room:1", "{}");
    s.redis.publish("to::ev", "{}");
    s.redis.publish("to:room:1:ok", "1");
    // The valid one arrives, and it is the first frame: nothing before it was delivered.
    expect_text(&mut socket, &broadcast_text(TOPIC, "ok", "1"));
    expect_quiet(&mut socket);
}

#[test]
fn broadcast_reaches_every_joined_client_with_identical_bytes() {
    let s = Setup::new();
    let mut sockets: Vec<_> = (0..5).map(|_| s.joined(TOPIC)).collect();
    let mut other = s.joined("room:2");
    s.redis.publish("to:room:1:ev", r#"{"x": [1,2]}"#);
    for socket in &mut sockets {
        expect_text(socket, &broadcast_text(TOPIC, "ev", r#"{"x": [1,2]}"#));
    }
    expect_quiet(&mut other);
}

#[test]
fn one_socket_on_several_topics_gets_each_topics_messages() {
    let s = Setup::new();
    let mut socket = s.v2();
    join_ok_exact(&mut socket, "a", &s.token("a"));
    join_ok_exact(&mut socket, "b", &s.token("b"));
    s.redis.publish("to:a:ev", "1");
    s.redis.publish("to:c:ev", "2");
    s.redis.publish("to:b:ev", "3");
    expect_text(&mut socket, &broadcast_text("a", "ev", "1"));
    expect_text(&mut socket, &broadcast_text("b", "ev", "3"));
    expect_quiet(&mut socket);
}

// --- V1 ----------------------------------------------------------------------------------

fn v1_join(socket: &mut common::TestSocket, topic: &str, token: &str) {
    socket.send_json(&json!({
        "topic": topic, "event": "phx_join", "payload": {"token": token},
        "ref": "1", "join_ref": "1"
    }));
    expect_json(
        socket,
        &json!({"topic": topic, "event": "phx_reply",
                "payload": {"status": "ok", "response": {}}, "ref": "1"}),
    );
}

#[test]
fn v1_socket_gets_objects_without_join_ref() {
    let s = Setup::new();
    let mut socket = s.v1();
    // The reply to a join is an object without `join_ref` (expect_json compares whole values).
    v1_join(&mut socket, TOPIC, &s.token(TOPIC));
    // A refused join too.
    socket.send_json(&json!({
        "topic": "room:2", "event": "phx_join", "payload": {"token": "bad"},
        "ref": "2", "join_ref": "2"
    }));
    expect_json(
        &mut socket,
        &json!({"topic": "room:2", "event": "phx_reply",
                "payload": {"status": "error", "response": {"reason": "unauthorized"}}, "ref": "2"}),
    );
}

#[test]
fn v1_heartbeat_is_answered_with_an_object() {
    let s = Setup::new();
    let mut socket = s.v1();
    socket.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#);
    expect_json(
        &mut socket,
        &json!({"topic": "phoenix", "event": "phx_reply",
                "payload": {"status": "ok", "response": {}}, "ref": "7"}),
    );
}

#[test]
fn v1_downstream_broadcast_is_an_object_with_null_ref() {
    let s = Setup::new();
    let mut socket = s.v1();
    v1_join(&mut socket, TOPIC, &s.token(TOPIC));
    s.redis.publish("to:room:1:ev", r#"{"k":[1,2]}"#);
    expect_json(
        &mut socket,
        &json!({"topic": TOPIC, "event": "ev", "payload": {"k": [1, 2]}, "ref": null}),
    );
}

#[test]
fn v1_push_reaches_redis_byte_for_byte() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.v1();
    v1_join(&mut socket, TOPIC, &s.token(TOPIC));
    let payload = r#"{ "b":2 , "a" : "x" }"#;
    socket.send_text(&format!(
        r#"{{"topic":"room:1","event":"say","payload":{payload},"ref":"2","join_ref":"1"}}"#
    ));
    expect_json(
        &mut socket,
        &json!({"topic": TOPIC, "event": "phx_reply",
                "payload": {"status": "ok", "response": {}}, "ref": "2"}),
    );
    let message = published.recv_timeout(REDIS_WAIT);
    assert_eq!(message.channel, "from:room:1:say");
    assert_eq!(message.text(), payload);
}

#[test]
fn v1_leave_replies_ok_then_phx_close() {
    let s = Setup::new();
    let mut socket = s.v1();
    v1_join(&mut socket, TOPIC, &s.token(TOPIC));
    socket.send_text(
        r#"{"topic":"room:1","event":"phx_leave","payload":{},"ref":"3","join_ref":"1"}"#,
    );
    expect_json(
        &mut socket,
        &json!({"topic": TOPIC, "event": "phx_reply",
                "payload": {"status": "ok", "response": {}}, "ref": "3"}),
    );
    expect_json(
        &mut socket,
        &json!({"topic": TOPIC, "event": "phx_close", "payload": {}, "ref": "1"}),
    );
}

#[test]
fn v1_unmatched_topic_is_an_object_reply() {
    let s = Setup::new();
    let mut socket = s.v1();
    socket.send_text(r#"{"topic":"room:9","event":"ev","payload":{},"ref":"4"}"#);
    expect_json(
        &mut socket,
        &json!({"topic": "room:9", "event": "phx_reply",
                "payload": {"status": "error", "response": {"reason": "unmatched topic"}}, "ref": "4"}),
    );
}

#[test]
fn v1_socket_does_not_receive_non_json_downstream() {
    let s = Setup::new();
    let mut socket = s.v1();
    v1_join(&mut socket, TOPIC, &s.token(TOPIC));
    s.redis.publish("to:room:1:ev", b"\xff raw");
    s.redis.publish("to:room:1:ev", "2");
    expect_json(
        &mut socket,
        &json!({"topic": TOPIC, "event": "ev", "payload": 2, "ref": null}),
    );
    expect_quiet(&mut socket);
}

#[test]
fn v1_binary_frame_closes_with_1003() {
    let s = Setup::new();
    let mut socket = s.v1();
    v1_join(&mut socket, TOPIC, &s.token(TOPIC));
    socket.send_binary(&encode_binary_push("1", "2", TOPIC, "ev", b"x"));
    expect_close_code(&mut socket, 1003, Duration::from_secs(5));
}

// --- V2 binary ---------------------------------------------------------------------------

#[test]
fn binary_push_arrives_in_redis_byte_for_byte() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    let data: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    socket.send_binary(&encode_binary_push("1", "2", TOPIC, "upload", &data));
    // The reply is a text frame (docs/protocol.md: replies are always text).
    expect_text(&mut socket, &ok_reply(Some("1"), "2", TOPIC, "{}"));
    let message = published.recv_timeout(REDIS_WAIT);
    assert_eq!(message.channel, "from:room:1:upload");
    assert_eq!(message.payload, data);
}

#[test]
fn binary_push_with_json_looking_data_is_published_as_is() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    socket.send_binary(&encode_binary_push("1", "2", TOPIC, "ev", br#"{"a" : 1}"#));
    expect_text(&mut socket, &ok_reply(Some("1"), "2", TOPIC, "{}"));
    assert_eq!(published.recv_timeout(REDIS_WAIT).payload, br#"{"a" : 1}"#);
}

#[test]
fn binary_push_with_empty_join_ref_is_a_null_join_ref() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    socket.send_binary(&encode_binary_push("", "2", TOPIC, "ev", b"\x00\x01"));
    expect_text(&mut socket, &ok_reply(None, "2", TOPIC, "{}"));
    assert_eq!(published.recv_timeout(REDIS_WAIT).payload, b"\x00\x01");
}

#[test]
fn binary_push_on_unjoined_topic_gets_unmatched_topic() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.v2();
    socket.send_binary(&encode_binary_push("", "2", TOPIC, "ev", b"data"));
    expect_text(
        &mut socket,
        &error_reply(None, "2", TOPIC, "unmatched topic"),
    );
    published.expect_nothing(NOTHING);
}

#[test]
fn binary_push_with_stale_join_ref_is_dropped() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    socket.send_binary(&encode_binary_push("9", "2", TOPIC, "ev", b"stale"));
    expect_quiet(&mut socket);
    published.expect_nothing(NOTHING);
}

#[test]
fn binary_join_has_no_payload_token_and_is_refused() {
    // phoenix.js never sends a binary join, but the format allows one; its data is not a JSON
    // payload, so it carries no token, and without a socket token the join is refused.
    let s = Setup::new();
    let mut socket = s.v2();
    socket.send_binary(&encode_binary_push("1", "1", TOPIC, "phx_join", b"{}"));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
}

#[test]
fn malformed_binary_frame_closes_with_1007() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    // Kind 0 announcing a 200-byte topic in a 10-byte frame.
    socket.send_binary(&[0, 1, 1, 200, 2, b'1', b'2', b'x', b'y', b'z']);
    let reason = expect_close_code(&mut socket, 1007, Duration::from_secs(5));
    assert_eq!(reason, "malformed phoenix message");
}

#[test]
fn binary_frame_of_unknown_kind_closes_with_1007() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    socket.send_binary(&[7, 0, 0, 1, 1, b't', b'e']);
    expect_close_code(&mut socket, 1007, Duration::from_secs(5));
}

#[test]
fn client_ping_is_answered_with_pong() {
    let s = Setup::new();
    let mut socket = s.v2();
    socket.send(tungstenite::Message::Ping(b"abc".to_vec().into()));
    // try_recv_frame skips pongs, so read the raw socket.
    socket
        .inner()
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout can be set");
    match socket.inner().read() {
        Ok(tungstenite::Message::Pong(payload)) => assert_eq!(&payload[..], b"abc"),
        other => panic!("expected a pong with the ping's payload, got {other:?}"),
    }
}

#[test]
fn v1_and_v2_sockets_on_one_topic_each_get_their_format() {
    let s = Setup::new();
    let mut v2 = s.joined(TOPIC);
    let mut v1 = s.v1();
    v1_join(&mut v1, TOPIC, &s.token(TOPIC));
    s.redis.publish("to:room:1:ev", r#"{"a":1}"#);
    expect_text(&mut v2, &broadcast_text(TOPIC, "ev", r#"{"a":1}"#));
    expect_json(
        &mut v1,
        &json!({"topic": TOPIC, "event": "ev", "payload": {"a": 1}, "ref": null}),
    );
}

#[test]
fn downstream_larger_than_the_inbound_limit_is_delivered() {
    // max_frame_bytes limits what clients send, not what backends publish.
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    let payload = format!("\"{}\"", "y".repeat(200_000));
    s.redis.publish("to:room:1:big", &payload);
    expect_text(&mut socket, &broadcast_text(TOPIC, "big", &payload));
}

// --- WebSocket framing (RFC 6455) ------------------------------------------------------------

/// A masked client frame (mask key 0, so the payload goes as is), for frames tungstenite
/// would not send on its own.
fn raw_frame(first_byte: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mut frame = vec![
        first_byte,
        payload.len() as u8 | if masked { 0x80 } else { 0 },
    ];
    if masked {
        frame.extend_from_slice(&[0, 0, 0, 0]);
    }
    frame.extend_from_slice(payload);
    frame
}

fn write_raw(socket: &mut common::TestSocket, bytes: &[u8]) {
    use std::io::Write;
    let stream = socket.inner().get_mut();
    stream.write_all(bytes).expect("raw write");
    stream.flush().expect("raw flush");
}

#[test]
fn fragmented_message_is_reassembled() {
    let s = Setup::new();
    let mut socket = s.v2();
    let message = br#"[null,"1","phoenix","heartbeat",{}]"#;
    let (a, b) = message.split_at(10);
    let mut bytes = raw_frame(0x01, a, true); // text, not final
    bytes.extend(raw_frame(0x80, b, true)); // continuation, final
    write_raw(&mut socket, &bytes);
    expect_text(&mut socket, &ok_reply(None, "1", "phoenix", "{}"));
}

#[test]
fn unmasked_client_frame_closes_with_1002() {
    let s = Setup::new();
    let mut socket = s.v2();
    write_raw(
        &mut socket,
        &raw_frame(0x81, br#"[null,"1","phoenix","heartbeat",{}]"#, false),
    );
    expect_close_code(&mut socket, 1002, Duration::from_secs(5));
}

#[test]
fn invalid_utf8_text_frame_closes_with_1007() {
    let s = Setup::new();
    let mut socket = s.v2();
    write_raw(&mut socket, &raw_frame(0x81, b"[null,\"\xff\"]", true));
    expect_close_code(&mut socket, 1007, Duration::from_secs(5));
}

#[test]
fn client_close_is_answered_with_1000() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    socket.close(1000, "bye");
    expect_close_code(&mut socket, 1000, Duration::from_secs(5));
}
