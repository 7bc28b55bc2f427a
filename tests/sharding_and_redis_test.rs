//! Two shards in one process sharing topics (docs/architecture.md), and Redis going away under
//! joined clients (issue 2 §6): `backend unavailable` during the gap, never a false ok, `/healthz`
//! 503, then reconnection, resubscription and delivery again.

mod common;

use std::time::Duration;

use common::phoenix::*;
use common::ServerOptions;

const TOPIC: &str = "room:1";
const REDIS_WAIT: Duration = Duration::from_secs(5);
const NOTHING: Duration = Duration::from_millis(300);
/// How long the server may take to notice Redis is gone, or back.
const RECONNECT_WAIT: Duration = Duration::from_secs(15);

fn two_shards() -> Setup {
    Setup::with(ServerOptions::default().shards(2))
}

#[test]
fn two_shards_both_receive_the_same_redis_message() {
    let s = two_shards();
    let [mut on0, mut on1] = s.one_socket_per_shard();
    let token = s.token(TOPIC);
    join_ok_exact(&mut on0, TOPIC, &token);
    join_ok_exact(&mut on1, TOPIC, &token);
    // One PSUBSCRIBE for the whole process, whatever the number of shards.
    assert_eq!(s.redis.publish("to:room:1:ev", r#"{"n": 1}"#), 1);
    let expected = broadcast_text(TOPIC, "ev", r#"{"n": 1}"#);
    expect_text(&mut on0, &expected);
    expect_text(&mut on1, &expected);
    // Binary broadcasts cross shards too.
    s.redis.publish("to:room:1:raw", b"\x00raw");
    let mut binary = vec![2u8, 6, 3];
    binary.extend_from_slice(b"room:1raw\x00raw");
    expect_binary(&mut on0, &binary);
    expect_binary(&mut on1, &binary);
}

#[test]
fn clients_on_shard_0_and_shard_1_share_one_topic() {
    let s = two_shards();
    let published = s.redis.subscribe("from:*");
    let [mut on0, mut on1] = s.one_socket_per_shard();
    let token = s.token(TOPIC);
    let j0 = join_ok_exact(&mut on0, TOPIC, &token);
    let j1 = join_ok_exact(&mut on1, TOPIC, &token);
    // Each one's push reaches Redis and is acknowledged on its own socket only.
    send_raw_push(&mut on1, Some(&j1), "p1", TOPIC, "say", r#"{"from":1}"#);
    expect_text(&mut on1, &ok_reply(Some(&j1), "p1", TOPIC, "{}"));
    let message = published.recv_timeout(REDIS_WAIT);
    assert_eq!(
        (message.channel.as_str(), message.text()),
        ("from:room:1:say", r#"{"from":1}"#.into())
    );
    send_raw_push(&mut on0, Some(&j0), "p0", TOPIC, "say", r#"{"from":0}"#);
    expect_text(&mut on0, &ok_reply(Some(&j0), "p0", TOPIC, "{}"));
    assert_eq!(published.recv_timeout(REDIS_WAIT).text(), r#"{"from":0}"#);
    // A backend's answer reaches both, in Redis order.
    for i in 0..50 {
        s.redis.publish("to:room:1:seq", i.to_string());
    }
    for i in 0..50 {
        let expected = broadcast_text(TOPIC, "seq", &i.to_string());
        expect_text(&mut on0, &expected);
        expect_text(&mut on1, &expected);
    }
}

#[test]
fn leaving_on_one_shard_keeps_delivery_on_the_other() {
    let s = two_shards();
    let [mut on0, mut on1] = s.one_socket_per_shard();
    let token = s.token(TOPIC);
    join_ok_exact(&mut on0, TOPIC, &token);
    let j1 = join_ok_exact(&mut on1, TOPIC, &token);
    send_raw_push(&mut on1, Some(&j1), "l", TOPIC, "phx_leave", "{}");
    expect_text(&mut on1, &ok_reply(Some(&j1), "l", TOPIC, "{}"));
    expect_text(&mut on1, &close_text(Some(&j1), TOPIC));
    s.redis.publish("to:room:1:ev", "1");
    expect_text(&mut on0, &broadcast_text(TOPIC, "ev", "1"));
    expect_quiet(&mut on1);
    // Shard 1 regains interest on a new join.
    join_ok_exact(&mut on1, TOPIC, &token);
    s.redis.publish("to:room:1:ev", "2");
    expect_text(&mut on0, &broadcast_text(TOPIC, "ev", "2"));
    expect_text(&mut on1, &broadcast_text(TOPIC, "ev", "2"));
}

#[test]
fn disconnect_on_one_shard_keeps_delivery_on_the_other() {
    let s = two_shards();
    let [mut on0, mut on1] = s.one_socket_per_shard();
    let token = s.token(TOPIC);
    join_ok_exact(&mut on0, TOPIC, &token);
    join_ok_exact(&mut on1, TOPIC, &token);
    drop(on0);
    std::thread::sleep(Duration::from_millis(200));
    s.redis.publish("to:room:1:ev", "1");
    expect_text(&mut on1, &broadcast_text(TOPIC, "ev", "1"));
}

// --- Redis down and back ------------------------------------------------------------------

#[test]
fn push_while_redis_is_down_gets_backend_unavailable() {
    let mut s = Setup::new();
    let published_before = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    s.redis.kill();
    drop(published_before);
    wait_until(RECONNECT_WAIT, "/healthz is 503", || s.healthz() == 503);
    send_raw_push(&mut socket, Some("1"), "2", TOPIC, "ev", "{}");
    expect_text(
        &mut socket,
        &error_reply(Some("1"), "2", TOPIC, "backend unavailable"),
    );
    // Heartbeats, joins and leaves do not need Redis.
    socket.send_text(r#"[null,"3","phoenix","heartbeat",{}]"#);
    expect_text(&mut socket, &ok_reply(None, "3", "phoenix", "{}"));
    join_ok_exact(&mut socket, "room:2", &s.token("room:2"));
}

#[test]
fn push_right_after_redis_died_never_gets_a_false_ok() {
    // No waiting for the server to notice: whatever it knows, it must not claim success.
    let mut s = Setup::new();
    let mut socket = s.joined(TOPIC);
    s.redis.kill();
    for i in 0..20 {
        send_raw_push(&mut socket, Some("1"), &format!("p{i}"), TOPIC, "ev", "{}");
    }
    // Replies may come out of order (some pushes were already with the publisher when the
    // server noticed); phoenix.js matches them by ref. Each ref gets exactly one error.
    let mut replies: Vec<String> = (0..20)
        .map(|_| match next(&mut socket) {
            common::Frame::Text(text) => text,
            other => panic!("expected a reply, got {other:?}"),
        })
        .collect();
    replies.sort();
    let mut expected: Vec<String> = (0..20)
        .map(|i| error_reply(Some("1"), &format!("p{i}"), TOPIC, "backend unavailable"))
        .collect();
    expected.sort();
    assert_eq!(replies, expected);
    expect_quiet(&mut socket);
}

#[test]
fn redis_restarted_under_a_joined_client_resumes_delivery() {
    let mut s = Setup::new();
    let mut socket = s.joined(TOPIC);
    s.redis.publish("to:room:1:ev", "\"before\"");
    expect_text(&mut socket, &broadcast_text(TOPIC, "ev", "\"before\""));

    s.redis.kill();
    wait_until(RECONNECT_WAIT, "/healthz is 503 during the gap", || {
        s.healthz() == 503
    });
    // Pushes during the gap: backend unavailable, never a false ok.
    for i in 0..5 {
        let r = format!("gap{i}");
        send_raw_push(&mut socket, Some("1"), &r, TOPIC, "ev", "{}");
        expect_text(
            &mut socket,
            &error_reply(Some("1"), &r, TOPIC, "backend unavailable"),
        );
    }

    s.redis.restart();
    wait_until(RECONNECT_WAIT, "/healthz is 200 again", || {
        s.healthz() == 200
    });
    // The server resubscribed: its PSUBSCRIBE counts as a receiver.
    wait_until(REDIS_WAIT, "the server resubscribed to:*", || {
        s.redis.publish("to:nobody:probe", "0") > 0
    });
    s.redis.publish("to:room:1:ev", "\"after\"");
    expect_text(&mut socket, &broadcast_text(TOPIC, "ev", "\"after\""));

    // Pushes reach the new Redis.
    let published = s.redis.subscribe("from:*");
    send_raw_push(
        &mut socket,
        Some("1"),
        "back",
        TOPIC,
        "ev",
        r#"{"back":true}"#,
    );
    expect_text(&mut socket, &ok_reply(Some("1"), "back", TOPIC, "{}"));
    let message = published.recv_timeout(REDIS_WAIT);
    assert_eq!(message.channel, "from:room:1:ev");
    assert_eq!(message.text(), r#"{"back":true}"#);
    published.expect_nothing(NOTHING);
}

#[test]
fn redis_restart_resumes_delivery_on_both_shards() {
    let mut s = two_shards();
    let [mut on0, mut on1] = s.one_socket_per_shard();
    let token = s.token(TOPIC);
    join_ok_exact(&mut on0, TOPIC, &token);
    join_ok_exact(&mut on1, TOPIC, &token);
    s.redis.restart();
    wait_until(RECONNECT_WAIT, "the server resubscribed to:*", || {
        s.redis.publish("to:nobody:probe", "0") > 0
    });
    s.redis.publish("to:room:1:ev", "1");
    expect_text(&mut on0, &broadcast_text(TOPIC, "ev", "1"));
    expect_text(&mut on1, &broadcast_text(TOPIC, "ev", "1"));
    // The publisher reconnects on its own (it notices the restart when probed): /healthz
    // needs both connections.
    wait_until(RECONNECT_WAIT, "/healthz is 200 again", || {
        s.healthz() == 200
    });
}

#[test]
fn redis_restart_replays_nothing_and_duplicates_nothing() {
    // Redis pub/sub is at-most-once: the client sees nothing from the gap, and no duplicate
    // of what came before.
    let mut s = Setup::new();
    let mut socket = s.joined(TOPIC);
    s.redis.publish("to:room:1:ev", "1");
    expect_text(&mut socket, &broadcast_text(TOPIC, "ev", "1"));
    s.redis.restart();
    wait_until(RECONNECT_WAIT, "the server resubscribed to:*", || {
        s.redis.publish("to:nobody:probe", "0") > 0
    });
    expect_quiet(&mut socket);
    s.redis.publish("to:room:1:ev", "2");
    expect_text(&mut socket, &broadcast_text(TOPIC, "ev", "2"));
}
