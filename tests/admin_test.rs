//! The `admin` channel (docs/protocol.md, "Presence and the built-in channels", issue 4): admin tokens only, `state` on join, periodic
//! `stats`, `channel.join` / `channel.leave` events, and the `list` and `disconnect` pushes
//! answered in the reply — across processes sharing one Redis.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::phoenix::next_event;
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
fn stats_of_every_process_reach_an_admin_anywhere() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let _b = server(&redis);
    let mut admin = joined(&a, "admin", "ops");
    let mut nodes = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let stats = next_event(&mut admin, "stats", left);
        let stats = &stats[4];
        assert_eq!(stats["shards"], json!(2), "{stats}");
        assert_eq!(stats["redis"]["mode"], json!("single"), "{stats}");
        assert!(stats["uptime_secs"].is_u64(), "{stats}");
        assert!(stats["rates"]["joins"].is_number(), "{stats}");
        assert!(stats["totals"]["joins"].is_u64(), "{stats}");
        assert!(stats["topic_rates"].is_object(), "{stats}");
        let bounds = stats["latency"]["bounds_secs"].as_array().map(Vec::len);
        let counts = stats["latency"]["counts"].as_array().map(Vec::len);
        assert_eq!(counts, bounds.map(|n| n + 1), "{stats}");
        nodes.insert(stats["node"].as_str().expect("a node").to_owned());
    }
}

#[test]
fn presence_and_client_say_who_is_where() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let b = server(&redis);
    let _on_a = joined(&a, "room:5", "alice");
    let _on_b = joined(&b, "room:5", "alice");
    let _also = joined(&b, "room:6", "alice");
    let mut admin = joined(&a, "admin", "ops");
    admin.send_json(&json!(["1", "11", "admin", "presence", {"topic": "room:5"}]));
    let reply = reply_to(&mut admin, "11");
    let response = &reply[4]["response"];
    assert_eq!(reply[4]["status"], json!("ok"), "{reply}");
    assert_eq!(response["topic"], json!("room:5"));
    assert_eq!(response["metas"], json!(2));
    assert_eq!(response["truncated"], json!(false));
    let members = response["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{response}");
    assert_eq!(members[0]["id"], json!("alice"));
    let nodes: std::collections::BTreeSet<&str> = members[0]["metas"]
        .as_array()
        .expect("metas")
        .iter()
        .filter_map(|m| m["node"].as_str())
        .collect();
    assert_eq!(nodes.len(), 2, "one join per process: {response}");

    admin.send_json(&json!(["1", "12", "admin", "client", {"id": "alice"}]));
    let reply = reply_to(&mut admin, "12");
    let sockets = reply[4]["response"]["sockets"].as_array().expect("sockets");
    assert_eq!(sockets.len(), 3, "three sockets: {reply}");
    let mut topics: Vec<&str> = sockets
        .iter()
        .flat_map(|s| s["topics"].as_array().expect("topics"))
        .filter_map(Value::as_str)
        .collect();
    topics.sort_unstable();
    assert_eq!(topics, ["room:5", "room:5", "room:6"]);
    admin.send_json(&json!(["1", "13", "admin", "presence", {}]));
    assert_eq!(reply_to(&mut admin, "13")[4]["status"], json!("error"));
}

#[test]
fn publish_reaches_subscribers_in_every_process_like_a_backend_message() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let b = server(&redis);
    let mut listener = joined(&b, "room:7", "lena");
    let mut admin = joined(&a, "admin", "ops");
    admin.send_json(&json!(["1", "14", "admin", "publish",
        {"topic": "room:7", "event": "news", "payload": {"n": 1}}]));
    assert_eq!(
        reply_to(&mut admin, "14")[4],
        json!({"status": "ok", "response": {"topic": "room:7", "event": "news", "queued": true}})
    );
    assert_eq!(
        next_event(&mut listener, "news", Duration::from_secs(5)),
        json!([null, null, "room:7", "news", {"n": 1}])
    );
    for event in ["phx_reply", "a:b", ""] {
        admin.send_json(&json!(["1", "15", "admin", "publish",
            {"topic": "room:7", "event": event, "payload": {}}]));
        assert_eq!(
            reply_to(&mut admin, "15")[4]["status"],
            json!("error"),
            "{event:?}"
        );
    }
}

#[test]
fn tail_sends_a_topics_messages_to_the_admin_until_it_tails_another() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let mut admin = joined(&a, "admin", "ops");
    next_event(&mut admin, "state", Duration::from_secs(5));
    // Nobody is subscribed to room:8 anywhere: the tail alone makes the process listen.
    admin.send_json(&json!(["1", "16", "admin", "tail", {"topic": "room:8"}]));
    assert_eq!(
        reply_to(&mut admin, "16")[4],
        json!({"status": "ok", "response": {"topic": "room:8"}})
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let message = loop {
        // The reader may take a moment to hear of the interest: publish until heard.
        redis.publish("to:room:8:ev", r#"{"x":1}"#);
        assert!(Instant::now() < deadline, "no tail message");
        match admin.try_recv_frame(Duration::from_millis(200)) {
            Some(Frame::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON frames");
                if frame[3] == json!("message") {
                    break frame;
                }
            }
            Some(other) => panic!("unexpected frame {other:?}"),
            None => continue,
        }
    };
    assert_eq!(
        message,
        json!(["1", null, "admin", "message",
            {"topic": "room:8", "event": "ev", "payload": {"x": 1}, "binary": false, "skipped": 0}])
    );
    // Tailing room:9 stops room:8: a room:8 message published before a room:9 one is not seen.
    admin.send_json(&json!(["1", "17", "admin", "tail", {"topic": "room:9"}]));
    reply_to(&mut admin, "17");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        redis.publish("to:room:8:ev", r#"{"x":2}"#);
        redis.publish("to:room:9:ev", r#"{"y":1}"#);
        let frame = next_event(&mut admin, "message", Duration::from_secs(1));
        if frame[4]["topic"] == json!("room:9") {
            break;
        }
        assert_eq!(
            frame[4]["payload"],
            json!({"x": 1}),
            "only room:8 messages published before the switch: {frame}"
        );
        assert!(Instant::now() < deadline, "no room:9 message");
    }
}

#[test]
fn token_renews_an_admin_token_for_the_same_id() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let mut admin = joined(&a, "admin", "ops");
    admin.send_json(&json!(["1", "18", "admin", "token", {}]));
    let reply = reply_to(&mut admin, "18");
    let response = &reply[4]["response"];
    assert_eq!(response["id"], json!("ops"), "{reply}");
    assert_eq!(response["expires_in"], json!(300));
    let token = response["token"].as_str().expect("a token");
    let mut again = TestSocket::connect(&a.ws_url("2.0.0"));
    again.send_json(&json!(["1", "1", "admin", "phx_join", {"token": token}]));
    assert_eq!(
        again.recv_json(),
        json!(["1", "1", "admin", "phx_reply", {"status": "ok", "response": {}}])
    );
}

#[test]
fn console_login_trades_the_admin_key_for_an_admin_token_and_limits_wrong_keys() {
    let redis = RedisServer::start();
    let key = "console-admin-key-0123456789";
    let a = ChannelServer::start(
        &redis,
        ServerOptions::default().config(&format!("[channel]\nadmin_key = \"{key}\"\n")),
    );
    let login = |body: Value| {
        common::http_request(
            a.addr(),
            "POST",
            "/console/login",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    let page = common::http_request(a.addr(), "GET", "/console", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .is_some_and(|csp| csp.contains("script-src 'self'")));
    let good = login(json!({"key": key}));
    assert_eq!(good.status, 200, "{}", good.text());
    let token = good.json()["token"].as_str().expect("a token").to_owned();
    let mut admin = TestSocket::connect(&a.ws_url("2.0.0"));
    admin.send_json(&json!(["1", "1", "admin", "phx_join", {"token": token}]));
    assert_eq!(admin.recv_json()[4]["status"], json!("ok"));
    for _ in 0..5 {
        let wrong = login(json!({"key": "guess"}));
        assert_eq!(wrong.status, 401);
        assert!(wrong.json()["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("wrong key")));
    }
    let limited = login(json!({"key": key}));
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert!(limited.header("retry-after").is_some());
}

#[test]
fn stats_carry_the_message_rate_of_busy_topics() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let _listener = joined(&a, "room:10", "rita");
    let mut admin = joined(&a, "admin", "ops");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for _ in 0..20 {
            redis.publish("to:room:10:tick", "{}");
        }
        let stats = next_event(&mut admin, "stats", Duration::from_secs(5));
        let rate = stats[4]["topic_rates"]["room:10"].as_f64();
        if rate.is_some_and(|r| r > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no rate for room:10: {stats}");
    }
}

#[test]
fn stats_go_to_redis_only_while_an_admin_listens_somewhere() {
    let redis = RedisServer::start();
    let published = redis.subscribe("to:*");
    let a = server(&redis);
    let _b = server(&redis);
    // Stats every second, and nobody asks: nothing is published.
    published.expect_nothing(Duration::from_millis(2500));
    let mut admin = joined(&a, "admin", "ops");
    let want = published.recv_timeout(Duration::from_secs(5));
    assert_eq!(want.channel, "to:channel:admin-stats:want");
    // Both processes answer, the one without admins included.
    let mut nodes = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = published.recv_timeout(left);
        if message.channel == "to:admin:stats" {
            let stats: Value = serde_json::from_slice(&message.payload).expect("JSON stats");
            nodes.insert(stats["node"].as_str().expect("a node").to_owned());
        }
    }
    admin.close(1000, "");
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
