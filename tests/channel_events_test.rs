//! docs/protocol.md "Joins", "Pushes" and "Tokens" (channel-bound tokens) over V2 text frames: heartbeat, join
//! and every refusal, leave, duplicate join, pushes to Redis and their replies, unmatched
//! topics, reserved events and stale join refs. Each test has its own Redis and server and
//! asserts the exact frames.

mod common;

use std::time::Duration;

use common::phoenix::*;
use common::{sign_token, TestSocket, TEST_JWT_SECRET};

const TOPIC: &str = "room:1";
const REDIS_WAIT: Duration = Duration::from_secs(5);
const NOTHING: Duration = Duration::from_millis(300);

// --- heartbeat ---------------------------------------------------------------------------

#[test]
fn heartbeat_is_answered_and_not_published() {
    let s = Setup::new();
    let published = s.redis.subscribe("*");
    let mut socket = s.v2();
    socket.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#);
    expect_text(
        &mut socket,
        r#"[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
    );
    expect_quiet(&mut socket);
    published.expect_nothing(NOTHING);
}

#[test]
fn heartbeat_is_answered_while_channels_are_joined() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    socket.send_text(r#"[null,"hb-7","phoenix","heartbeat",{}]"#);
    expect_text(
        &mut socket,
        r#"[null,"hb-7","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
    );
}

#[test]
fn other_event_on_phoenix_topic_gets_unmatched_topic() {
    let s = Setup::new();
    let published = s.redis.subscribe("*");
    let mut socket = s.v2();
    send_raw_push(&mut socket, None, "1", "phoenix", "ping", "{}");
    expect_text(
        &mut socket,
        &error_reply(None, "1", "phoenix", "unmatched topic"),
    );
    published.expect_nothing(NOTHING);
}

// --- join --------------------------------------------------------------------------------

#[test]
fn join_with_valid_token_replies_ok_with_empty_response() {
    let s = Setup::new();
    let mut socket = s.v2();
    let token = s.token(TOPIC);
    socket.send_text(&format!(
        r#"["3","3","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(&mut socket, &ok_reply(Some("3"), "3", TOPIC, "{}"));
}

#[test]
fn join_with_token_for_other_channel_is_refused() {
    let s = Setup::new();
    let mut socket = s.v2();
    let token = s.token("room:2");
    socket.send_text(&format!(
        r#"["1","1","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
}

#[test]
fn join_with_token_for_topic_prefix_is_refused() {
    // The channel claim must equal the topic exactly: "room" does not open "room:1".
    let s = Setup::new();
    let mut socket = s.v2();
    let token = s.token("room");
    socket.send_text(&format!(
        r#"["1","1","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
}

#[test]
fn join_with_expired_token_is_refused() {
    let s = Setup::new();
    let mut socket = s.v2();
    let token = sign_token(TEST_JWT_SECRET, TOPIC, "alice", -120);
    socket.send_text(&format!(
        r#"["1","1","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
}

#[test]
fn join_with_token_of_other_secret_is_refused() {
    let s = Setup::new();
    let mut socket = s.v2();
    let token = sign_token("some-other-secret-0123456789abcdef", TOPIC, "alice", 3600);
    socket.send_text(&format!(
        r#"["1","1","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
}

#[test]
fn join_with_token_of_other_algorithm_is_refused() {
    // Same secret, same claims, HS512: only HS256 is accepted.
    let s = Setup::new();
    let mut socket = s.v2();
    let claims =
        serde_json::json!({"id": "alice", "channel": TOPIC, "iat": 0, "exp": 4_000_000_000u64});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes()),
    )
    .expect("HS512 signing works");
    socket.send_text(&format!(
        r#"["1","1","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
}

#[test]
fn join_reply_precedes_messages_of_the_topic() {
    // A backend publishes to the topic without pause while a client joins: the first frame
    // of that join is its reply, and broadcasts follow.
    let s = Setup::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let mut conn = s.redis.connection();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg("to:room:1:flood")
                    .arg("1")
                    .query(&mut conn);
            }
        })
    };
    for _ in 0..5 {
        let mut socket = s.v2();
        join_ok_exact(&mut socket, TOPIC, &s.token(TOPIC));
        expect_text(&mut socket, &broadcast_text(TOPIC, "flood", "1"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.join().expect("the publisher thread ends");
}

#[test]
fn join_with_garbage_token_is_refused() {
    let s = Setup::new();
    let mut socket = s.v2();
    socket.send_text(r#"["1","1","room:1","phx_join",{"token":"not.a.jwt"}]"#);
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
    socket.send_text(r#"["2","2","room:1","phx_join",{"token":42}]"#);
    expect_text(
        &mut socket,
        &error_reply(Some("2"), "2", TOPIC, "unauthorized"),
    );
}

#[test]
fn join_without_any_token_is_refused() {
    let s = Setup::new();
    let mut socket = s.v2();
    socket.send_text(r#"["1","1","room:1","phx_join",{}]"#);
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
}

#[test]
fn refused_join_leaves_the_topic_unjoined() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.v2();
    let token = s.token("room:2");
    socket.send_text(&format!(
        r#"["1","1","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
    send_raw_push(&mut socket, Some("1"), "2", TOPIC, "ev", "{}");
    expect_text(
        &mut socket,
        &error_reply(None, "2", TOPIC, "unmatched topic"),
    );
    s.redis.publish("to:room:1:ev", "{}");
    expect_quiet(&mut socket);
    published.expect_nothing(NOTHING);
}

#[test]
fn join_of_phoenix_topic_is_refused_as_invalid_topic() {
    let s = Setup::new();
    let mut socket = s.v2();
    let token = s.token("phoenix");
    socket.send_text(&format!(
        r#"["1","1","phoenix","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", "phoenix", "invalid topic"),
    );
}

#[test]
fn join_of_topic_longer_than_255_bytes_is_refused_as_invalid_topic() {
    let s = Setup::new();
    let mut socket = s.v2();
    let long = "x".repeat(256);
    let token = s.token(&long);
    socket.send_text(&format!(
        r#"["1","1","{long}","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", &long, "invalid topic"),
    );
    let longest = "y".repeat(255);
    let token = s.token(&longest);
    socket.send_text(&format!(
        r#"["2","2","{longest}","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(&mut socket, &ok_reply(Some("2"), "2", &longest, "{}"));
}

#[test]
fn join_of_topic_with_control_character_is_refused_as_invalid_topic() {
    let s = Setup::new();
    let mut socket = s.v2();
    let topic = "room\n1";
    let token = s.token(topic);
    socket.send_text(&format!(
        r#"["1","1","room\n1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", topic, "invalid topic"),
    );
}

#[test]
fn null_join_ref_join_uses_ref() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.v2();
    let token = s.token(TOPIC);
    socket.send_text(&format!(
        r#"[null,"5","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(&mut socket, &ok_reply(None, "5", TOPIC, "{}"));
    // "5" is now the join reference: a push carrying it is current, not stale.
    send_raw_push(&mut socket, Some("5"), "6", TOPIC, "ev", r#"{"n":1}"#);
    expect_text(&mut socket, &ok_reply(Some("5"), "6", TOPIC, "{}"));
    assert_eq!(published.recv_timeout(REDIS_WAIT).text(), r#"{"n":1}"#);
    // ... and the channel's close carries it.
    send_raw_push(&mut socket, Some("5"), "7", TOPIC, "phx_leave", "{}");
    expect_text(&mut socket, &ok_reply(Some("5"), "7", TOPIC, "{}"));
    expect_text(&mut socket, &close_text(Some("5"), TOPIC));
}

#[test]
fn user_token_is_fallback_for_join() {
    let s = Setup::new();
    let token = s.token(TOPIC);
    let url = format!("{}&userToken={token}", s.server.ws_url("2.0.0"));
    let mut socket = TestSocket::connect(&url);
    socket.send_text(r#"["1","1","room:1","phx_join",{}]"#);
    expect_text(&mut socket, &ok_reply(Some("1"), "1", TOPIC, "{}"));
}

#[test]
fn user_token_does_not_open_other_channels() {
    let s = Setup::new();
    let token = s.token(TOPIC);
    let url = format!("{}&userToken={token}", s.server.ws_url("2.0.0"));
    let mut socket = TestSocket::connect(&url);
    socket.send_text(r#"["1","1","room:2","phx_join",{}]"#);
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", "room:2", "unauthorized"),
    );
}

#[test]
fn payload_token_takes_precedence_over_user_token() {
    let s = Setup::new();
    let user_token = s.token(TOPIC);
    let url = format!("{}&userToken={user_token}", s.server.ws_url("2.0.0"));
    let mut socket = TestSocket::connect(&url);
    // A payload token for another topic is not rescued by a good socket token...
    let foreign = s.token("room:2");
    socket.send_text(&format!(
        r#"["1","1","room:1","phx_join",{{"token":"{foreign}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "1", TOPIC, "unauthorized"),
    );
    // ... and a payload token opens its topic whatever the socket token says.
    socket.send_text(&format!(
        r#"["2","2","room:2","phx_join",{{"token":"{foreign}"}}]"#
    ));
    expect_text(&mut socket, &ok_reply(Some("2"), "2", "room:2", "{}"));
}

#[test]
fn join_with_extra_trailing_elements_is_accepted() {
    let s = Setup::new();
    let mut socket = s.v2();
    let token = s.token(TOPIC);
    socket.send_text(&format!(
        r#"["1","1","room:1","phx_join",{{"token":"{token}"}},"extra",{{"x":1}}]"#
    ));
    expect_text(&mut socket, &ok_reply(Some("1"), "1", TOPIC, "{}"));
}

#[test]
fn refs_are_echoed_exactly() {
    let s = Setup::new();
    let mut socket = s.v2();
    let token = s.token(TOPIC);
    // Refs are opaque strings: quotes, backslashes and non-ASCII come back as they went.
    let join_ref = "j \"q\" \\ é ☃";
    let msg_ref = "r/ü/1";
    socket.send_json(&serde_json::json!([join_ref, join_ref, TOPIC, "phx_join", {"token": token}]));
    let reply = socket.recv_json();
    assert_eq!(
        reply,
        serde_json::json!([join_ref, join_ref, TOPIC, "phx_reply", {"status":"ok","response":{}}])
    );
    socket.send_json(&serde_json::json!([join_ref, msg_ref, TOPIC, "ev", {}]));
    let reply = next_non_presence_json(&mut socket);
    assert_eq!(
        reply,
        serde_json::json!([join_ref, msg_ref, TOPIC, "phx_reply", {"status":"ok","response":{}}])
    );
}

#[test]
fn duplicate_join_replies_ok_then_closes_old_join() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.v2();
    let token = s.token(TOPIC);
    socket.send_text(&format!(
        r#"["1","1","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(&mut socket, &ok_reply(Some("1"), "1", TOPIC, "{}"));
    socket.send_text(&format!(
        r#"["2","2","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(&mut socket, &ok_reply(Some("2"), "2", TOPIC, "{}"));
    expect_text(&mut socket, &close_text(Some("1"), TOPIC));
    // The topic is joined once: one Redis message, one frame.
    s.redis.publish("to:room:1:ev", r#"{"once":true}"#);
    expect_text(
        &mut socket,
        &broadcast_text(TOPIC, "ev", r#"{"once":true}"#),
    );
    expect_quiet(&mut socket);
    // The old join reference is stale now; the new one is current.
    send_raw_push(&mut socket, Some("1"), "3", TOPIC, "ev", r#"{"old":1}"#);
    send_raw_push(&mut socket, Some("2"), "4", TOPIC, "ev", r#"{"new":1}"#);
    expect_text(&mut socket, &ok_reply(Some("2"), "4", TOPIC, "{}"));
    let message = published.recv_timeout(REDIS_WAIT);
    assert_eq!(message.text(), r#"{"new":1}"#);
    published.expect_nothing(NOTHING);
}

// --- leave -------------------------------------------------------------------------------

#[test]
fn leave_replies_ok_then_phx_close() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    send_raw_push(&mut socket, Some("1"), "2", TOPIC, "phx_leave", "{}");
    expect_text(&mut socket, &ok_reply(Some("1"), "2", TOPIC, "{}"));
    expect_text(&mut socket, &close_text(Some("1"), TOPIC));
    expect_quiet(&mut socket);
}

#[test]
fn leave_stops_delivery_and_unjoins_the_topic() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    send_raw_push(&mut socket, Some("1"), "2", TOPIC, "phx_leave", "{}");
    expect_text(&mut socket, &ok_reply(Some("1"), "2", TOPIC, "{}"));
    expect_text(&mut socket, &close_text(Some("1"), TOPIC));
    s.redis.publish("to:room:1:ev", "{}");
    expect_quiet(&mut socket);
    send_raw_push(&mut socket, Some("1"), "3", TOPIC, "ev", "{}");
    expect_text(
        &mut socket,
        &error_reply(None, "3", TOPIC, "unmatched topic"),
    );
    published.expect_nothing(NOTHING);
}

#[test]
fn leave_of_unknown_topic_replies_ok_only() {
    let s = Setup::new();
    let mut socket = s.v2();
    socket.send_text(r#"[null,"1","room:9","phx_leave",{}]"#);
    expect_text(&mut socket, &ok_reply(None, "1", "room:9", "{}"));
    expect_quiet(&mut socket);
    // The connection survived (Tangram's task crashed here).
    socket.send_text(r#"[null,"2","phoenix","heartbeat",{}]"#);
    expect_text(&mut socket, &ok_reply(None, "2", "phoenix", "{}"));
}

#[test]
fn rejoin_after_leave_receives_again() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    send_raw_push(&mut socket, Some("1"), "2", TOPIC, "phx_leave", "{}");
    expect_text(&mut socket, &ok_reply(Some("1"), "2", TOPIC, "{}"));
    expect_text(&mut socket, &close_text(Some("1"), TOPIC));
    join_ok_exact(&mut socket, TOPIC, &s.token(TOPIC));
    s.redis.publish("to:room:1:ev", "[1]");
    expect_text(&mut socket, &broadcast_text(TOPIC, "ev", "[1]"));
}

// --- pushes ------------------------------------------------------------------------------

#[test]
fn push_reaches_redis_with_payload_byte_for_byte() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    // Whitespace, key order, escapes, number forms and the `message`/`token` fields that
    // Tangram re-serialised: all must arrive as sent.
    let payload = r#"{ "z" : 1,"message":"hi","token" :"t","a":[1.50,-0e0,"\u00e9\n"],"é":null }"#;
    send_raw_push(&mut socket, Some("1"), "2", TOPIC, "new_msg", payload);
    expect_text(&mut socket, &ok_reply(Some("1"), "2", TOPIC, "{}"));
    let message = published.recv_timeout(REDIS_WAIT);
    assert_eq!(message.channel, "from:room:1:new_msg");
    assert_eq!(message.payload, payload.as_bytes());
}

#[test]
fn push_with_non_object_payload_is_published_as_is() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    let payloads = [r#""text""#, "42", "null", "[1, 2 ,3]", "true"];
    for (i, payload) in payloads.iter().enumerate() {
        let r = format!("p{i}");
        send_raw_push(&mut socket, Some("1"), &r, TOPIC, "ev", payload);
        expect_text(&mut socket, &ok_reply(Some("1"), &r, TOPIC, "{}"));
        let message = published.recv_timeout(REDIS_WAIT);
        assert_eq!(message.channel, "from:room:1:ev");
        assert_eq!(message.text(), *payload);
    }
}

#[test]
fn push_is_acknowledged_after_redis_accepted_it() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    // Hold every write command in Redis for a while: the ok may only come after it.
    let mut admin = s.redis.connection();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1200)
        .arg("WRITE")
        .query(&mut admin)
        .expect("CLIENT PAUSE is accepted");
    let paused_at = std::time::Instant::now();
    send_raw_push(
        &mut socket,
        Some("1"),
        "2",
        TOPIC,
        "ev",
        r#"{"after":"pause"}"#,
    );
    expect_text(&mut socket, &ok_reply(Some("1"), "2", TOPIC, "{}"));
    let waited = paused_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "the ok came {waited:?} into a 1.2 s Redis pause: before Redis accepted the PUBLISH"
    );
    let message = published.recv_timeout(REDIS_WAIT);
    assert_eq!(message.text(), r#"{"after":"pause"}"#);
}

#[test]
fn pushes_reach_redis_in_the_order_sent() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    const N: usize = 300;
    for i in 0..N {
        send_raw_push(
            &mut socket,
            Some("1"),
            &format!("r{i}"),
            TOPIC,
            "seq",
            &i.to_string(),
        );
    }
    for i in 0..N {
        let message = published.recv_timeout(REDIS_WAIT);
        assert_eq!(message.text(), i.to_string(), "message {i} out of order");
    }
    for i in 0..N {
        expect_text(
            &mut socket,
            &ok_reply(Some("1"), &format!("r{i}"), TOPIC, "{}"),
        );
    }
}

#[test]
fn push_with_null_join_ref_is_accepted() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    send_raw_push(&mut socket, None, "2", TOPIC, "ev", "{}");
    expect_text(&mut socket, &ok_reply(None, "2", TOPIC, "{}"));
    assert_eq!(published.recv_timeout(REDIS_WAIT).channel, "from:room:1:ev");
}

#[test]
fn stale_join_ref_push_is_dropped() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    send_raw_push(
        &mut socket,
        Some("99"),
        "2",
        TOPIC,
        "ev",
        r#"{"stale":true}"#,
    );
    expect_quiet(&mut socket);
    published.expect_nothing(NOTHING);
    // The socket still works, and the next reply is the current push's.
    send_raw_push(
        &mut socket,
        Some("1"),
        "3",
        TOPIC,
        "ev",
        r#"{"stale":false}"#,
    );
    expect_text(&mut socket, &ok_reply(Some("1"), "3", TOPIC, "{}"));
    assert_eq!(
        published.recv_timeout(REDIS_WAIT).text(),
        r#"{"stale":false}"#
    );
}

#[test]
fn stale_join_ref_leave_is_dropped() {
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    send_raw_push(&mut socket, Some("99"), "2", TOPIC, "phx_leave", "{}");
    expect_quiet(&mut socket);
    // Still joined.
    s.redis.publish("to:room:1:ev", "{}");
    expect_text(&mut socket, &broadcast_text(TOPIC, "ev", "{}"));
}

#[test]
fn reserved_event_is_refused() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    for (i, event) in [
        "phx_reply",
        "phx_error",
        "phx_close",
        "presence_state",
        "presence_diff",
    ]
    .iter()
    .enumerate()
    {
        let r = format!("x{i}");
        send_raw_push(&mut socket, Some("1"), &r, TOPIC, event, "{}");
        expect_text(
            &mut socket,
            &error_reply(Some("1"), &r, TOPIC, "reserved event"),
        );
    }
    published.expect_nothing(NOTHING);
}

#[test]
fn reserved_event_on_unjoined_topic_gets_unmatched_topic() {
    let s = Setup::new();
    let mut socket = s.v2();
    send_raw_push(&mut socket, None, "1", TOPIC, "phx_reply", "{}");
    expect_text(
        &mut socket,
        &error_reply(None, "1", TOPIC, "unmatched topic"),
    );
}

#[test]
fn event_on_unjoined_topic_gets_unmatched_topic() {
    let s = Setup::new();
    // Everything a client can make the server publish goes to `from:*` (presence has its own
    // `presence:diff:*` channels, which a join legitimately publishes to).
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    // The reply's join_ref is null whatever the client sent.
    send_raw_push(&mut socket, Some("7"), "2", "room:9", "ev", r#"{"a":1}"#);
    expect_text(
        &mut socket,
        &error_reply(None, "2", "room:9", "unmatched topic"),
    );
    send_raw_push(&mut socket, None, "3", "room:9", "ev", r#"{"a":1}"#);
    expect_text(
        &mut socket,
        &error_reply(None, "3", "room:9", "unmatched topic"),
    );
    published.expect_nothing(NOTHING);
}

#[test]
fn malformed_text_message_closes_with_1007() {
    let s = Setup::new();
    for bad in [
        "not json",
        r#"{"topic":"room:1"}"#,
        r#"["1","1","room:1"]"#,
        r#"[1,"1","room:1","ev",{}]"#,
        r#"["1","1","","ev",{}]"#,
    ] {
        let mut socket = s.v2();
        socket.send_text(bad);
        let reason = expect_close_code(&mut socket, 1007, Duration::from_secs(5));
        assert_eq!(reason, "malformed phoenix message", "for {bad:?}");
    }
}

/// The next JSON frame that is not a presence event (a join is followed by `presence_state`).
fn next_non_presence_json(socket: &mut TestSocket) -> serde_json::Value {
    loop {
        let frame = socket.recv_json();
        let event = frame.get(3).and_then(|e| e.as_str()).unwrap_or("");
        if event != "presence_state" && event != "presence_diff" {
            return frame;
        }
    }
}
