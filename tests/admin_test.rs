//! The `admin` channel (docs/protocol.md, "Presence and the built-in channels", issue 4): admin tokens only, `state` on join, periodic
//! `stats`, `channel.join` / `channel.leave` events, and the `list` and `disconnect` pushes
//! answered in the reply — across processes sharing one Redis.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{
    sign_token, ChannelServer, Frame, RedisServer, ServerOptions, TestSocket, TEST_JWT_SECRET,
};

fn server(redis: &RedisServer) -> ChannelServer {
    ChannelServer::start(
        redis,
        ServerOptions::default()
            .shards(2)
            .config("[channel]\nadmin_stats_interval_secs = 1\n"),
    )
}

fn token(topic: &str, id: &str) -> String {
    sign_token(TEST_JWT_SECRET, topic, id, 600)
}

/// Joins `topic` as `id`; asserts the ok reply and waits for the presence state (so that the
/// join is recorded in Redis before the test goes on).
fn joined(server: &ChannelServer, topic: &str, id: &str) -> TestSocket {
    let mut socket = TestSocket::connect(&server.ws_url("2.0.0"));
    socket.send_json(&json!(["1", "1", topic, "phx_join", {"token": token(topic, id)}]));
    assert_eq!(
        socket.recv_json(),
        json!(["1", "1", topic, "phx_reply", {"status": "ok", "response": {}}])
    );
    if topic != "admin" {
        next_event(&mut socket, "presence_state", Duration::from_secs(5));
    }
    socket
}

/// The next frame on `socket` with `event`, skipping others (presence, stats, events).
fn next_event(socket: &mut TestSocket, event: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {event} within {within:?}");
        let frame = socket.recv_json_timeout(left);
        if frame[3] == json!(event) {
            return frame;
        }
    }
}

/// The next reply to `r`, skipping pushes and broadcasts.
fn reply_to(socket: &mut TestSocket, r: &str) -> Value {
    loop {
        let frame = next_event(socket, "phx_reply", Duration::from_secs(5));
        if frame[1] == json!(r) {
            return frame;
        }
    }
}

#[test]
fn admin_join_with_a_token_for_another_channel_is_refused() {
    let redis = RedisServer::start();
    let server = server(&redis);
    let mut socket = TestSocket::connect(&server.ws_url("2.0.0"));
    socket.send_json(&json!(["1", "1", "admin", "phx_join", {"token": token("room", "eve")}]));
    assert_eq!(
        socket.recv_json(),
        json!(["1", "1", "admin", "phx_reply", {"status": "error", "response": {"reason": "unauthorized"}}])
    );
}

#[test]
fn admin_joiner_gets_the_state_of_the_deployment() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let b = server(&redis);
    let _alice = joined(&a, "room:1", "alice");
    let _bob = joined(&b, "room:1", "bob");
    let _bob2 = joined(&b, "room:1", "bob");
    let mut admin = joined(&a, "admin", "ops");
    let state = next_event(&mut admin, "state", Duration::from_secs(5));
    assert_eq!(
        state[0],
        json!("1"),
        "state is a push with the admin join ref"
    );
    assert_eq!(state[1], Value::Null);
    let state = &state[4];
    assert_eq!(
        state["topics"]["room:1"],
        json!({"members": 2, "metas": 3}),
        "{state}"
    );
    assert_eq!(
        state["connections"]["per_shard"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        state["connections"]["total"],
        json!(2),
        "alice and the admin on process a"
    );
    assert_eq!(state["redis"]["connected"], json!(true));
}

#[test]
fn stats_are_pushed_periodically() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let mut admin = joined(&a, "admin", "ops");
    let stats = next_event(&mut admin, "stats", Duration::from_secs(5));
    assert_eq!(stats[0], Value::Null, "stats is a broadcast");
    let stats = &stats[4];
    for field in [
        "connections",
        "channels",
        "redis",
        "rates",
        "slow_consumer_closes",
    ] {
        assert!(stats.get(field).is_some(), "stats lacks {field}: {stats}");
    }
    for rate in ["messages_out", "bytes_out", "messages_in", "bytes_in"] {
        assert!(stats["rates"][rate].is_number(), "{stats}");
    }
}

#[test]
fn membership_changes_anywhere_are_admin_events() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let b = server(&redis);
    let mut admin = joined(&a, "admin", "ops");
    let mut carol = joined(&b, "room:2", "carol");
    let event = next_event(&mut admin, "channel.join", Duration::from_secs(5));
    // The admin's own join may come first; look for carol's.
    let event = if event[4]["id"] == json!("carol") {
        event
    } else {
        next_event(&mut admin, "channel.join", Duration::from_secs(5))
    };
    assert_eq!(
        event,
        json!([null, null, "admin", "channel.join", {"topic": "room:2", "id": "carol"}])
    );
    carol.send_json(&json!(["1", "2", "room:2", "phx_leave", {}]));
    let event = next_event(&mut admin, "channel.leave", Duration::from_secs(5));
    assert_eq!(
        event,
        json!([null, null, "admin", "channel.leave", {"topic": "room:2", "id": "carol"}])
    );
}

#[test]
fn list_is_answered_in_the_reply_and_not_published() {
    let redis = RedisServer::start();
    let published = redis.subscribe("from:*");
    let a = server(&redis);
    let _dan = joined(&a, "room:3", "dan");
    let mut admin = joined(&a, "admin", "ops");
    admin.send_json(&json!(["1", "7", "admin", "list", {}]));
    let reply = reply_to(&mut admin, "7");
    assert_eq!(reply[4]["status"], json!("ok"), "{reply}");
    assert_eq!(
        reply[4]["response"]["topics"]["room:3"],
        json!({"members": 1, "metas": 1})
    );
    assert_eq!(
        reply[4]["response"]["topics"]["admin"],
        json!({"members": 1, "metas": 1})
    );
    admin.send_json(&json!(["1", "8", "admin", "reboot", {}]));
    let reply = reply_to(&mut admin, "8");
    assert_eq!(
        reply[4],
        json!({"status": "error", "response": {"reason": "unknown admin command"}})
    );
    published.expect_nothing(Duration::from_millis(300));
}

#[test]
fn disconnect_closes_every_socket_of_that_id_in_every_process() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let b = server(&redis);
    let mut on_a = joined(&a, "room:4", "mallory");
    let mut on_b = joined(&b, "room:4", "mallory");
    let mut bystander = joined(&b, "room:4", "trent");
    let mut admin = joined(&a, "admin", "ops");
    admin.send_json(&json!(["1", "9", "admin", "disconnect", {"id": "mallory"}]));
    let reply = reply_to(&mut admin, "9");
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {"id": "mallory", "disconnected": 2, "processes": 2}})
    );
    for socket in [&mut on_a, &mut on_b] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match socket.recv_frame_timeout(left) {
                Frame::Close(Some((code, reason))) => {
                    assert_eq!((code, reason.as_str()), (4001, "disconnected by admin"));
                    break;
                }
                Frame::Text(_) => continue,
                other => panic!("expected close 4001, got {other:?}"),
            }
        }
    }
    // Someone else on the same topic is untouched.
    bystander.send_json(&json!([null, "h", "phoenix", "heartbeat", {}]));
    assert_eq!(reply_to(&mut bystander, "h")[4]["status"], json!("ok"));
    // A disconnect without an id is refused in the reply.
    admin.send_json(&json!(["1", "10", "admin", "disconnect", {}]));
    assert_eq!(reply_to(&mut admin, "10")[4]["status"], json!("error"));
}

#[test]
fn admin_members_see_the_redis_state_change() {
    let mut redis = RedisServer::start();
    let a = server(&redis);
    let mut admin = joined(&a, "admin", "ops");
    next_event(&mut admin, "state", Duration::from_secs(5));
    redis.kill();
    let down = next_event(&mut admin, "redis", Duration::from_secs(10));
    assert_eq!(down[0], Value::Null);
    assert_eq!(down[4]["connected"], json!(false), "{down}");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = next_event(&mut admin, "redis", left);
        if event[4]["connected"] == json!(true) {
            assert!(
                event[4]["reconnects"].as_u64().is_some_and(|n| n >= 1),
                "{event}"
            );
            break;
        }
    }
}

#[test]
fn history_answers_a_topics_newest_messages_with_their_positions() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let mut conn = redis.connection();
    let positions: Vec<String> = (1..=3)
        .map(|n| {
            redis::cmd("FCALL")
                .arg("channel_publish")
                .arg(1)
                .arg("room:h")
                .arg("msg")
                .arg(json!({ "n": n }).to_string())
                .query(&mut conn)
                .expect("FCALL channel_publish")
        })
        .collect();
    let mut admin = joined(&a, "admin", "ops");
    admin.send_json(&json!(["1", "9", "admin", "history", {"topic": "room:h", "limit": 2}]));
    let reply = reply_to(&mut admin, "9");
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {
            "topic": "room:h",
            "position": positions[2],
            "messages": [
                {"position": positions[1], "event": "msg", "payload": {"n": 2}},
                {"position": positions[2], "event": "msg", "payload": {"n": 3}},
            ],
        }})
    );
    admin.send_json(&json!(["1", "10", "admin", "history", {"topic": "room:none"}]));
    let reply = reply_to(&mut admin, "10");
    assert_eq!(
        reply[4]["response"],
        json!({"topic": "room:none", "position": null, "messages": []})
    );
    admin.send_json(&json!(["1", "11", "admin", "history", {"limit": 2}]));
    assert_eq!(reply_to(&mut admin, "11")[4]["status"], "error");
}
