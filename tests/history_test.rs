//! History, positions and recovery on a single Redis (issue 14, PROTOCOL §12, docs/protocol.md
//! "Positions and recovery"): the function returns the position it broadcasts in the `ref`
//! slot; a join with `since` gets every message after it, in order, exactly once, then the live
//! ones; `recovered: false` (and nothing replayed) when the history was trimmed, expired or
//! deleted; `invalid since` for a malformed one. The two races between the history read and the
//! live messages are made deterministic by holding one Redis connection's replies in a relay.
//!
//! Presence is off: its frames would interleave with the ones asserted here.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::phoenix::{error_reply, token_for, wait_until};
use common::{http_request, ChannelServer, RedisServer, ServerOptions, TcpRelay, TestSocket};

fn server_with(redis_url: &str, extra: &str) -> ChannelServer {
    ChannelServer::start_with_redis_url(
        redis_url,
        ServerOptions::default().config(&format!("[channel]\npresence_enabled = false\n{extra}")),
    )
}

fn server(redis: &RedisServer) -> ChannelServer {
    server_with(&redis.url(), "")
}

/// `FCALL channel_publish 1 <topic> <event> <payload>`; returns the position.
fn publish(redis: &RedisServer, topic: &str, event: &str, payload: &Value) -> String {
    let position = redis.fcall_publish(topic, event, payload.to_string());
    redis::FromRedisValue::from_redis_value(position).expect("the function returns the position")
}

/// Publishes `{"n": n}` as event `msg` for each n; returns the positions.
fn publish_numbers(
    redis: &RedisServer,
    topic: &str,
    numbers: impl IntoIterator<Item = u32>,
) -> Vec<String> {
    numbers
        .into_iter()
        .map(|n| publish(redis, topic, "msg", &json!({ "n": n })))
        .collect()
}

/// Joins with `{"token", "since"}` and returns the reply frame.
fn join_since(socket: &mut TestSocket, topic: &str, since: Value) -> Value {
    socket.join_with_payload(topic, json!({ "token": token_for(topic), "since": since }))
}

/// Joins with `since` and returns the ok reply's response.
fn join_since_ok(socket: &mut TestSocket, topic: &str, since: Value) -> Value {
    let reply = join_since(socket, topic, since);
    assert_eq!(reply[4]["status"], "ok", "join refused: {reply}");
    reply[4]["response"].clone()
}

/// The next frame, asserted to be the broadcast `[null, position, topic, "msg", {"n": n}]`.
fn expect_message(socket: &mut TestSocket, topic: &str, n: u32, position: &str) {
    let frame = socket.recv_json();
    assert_eq!(
        frame,
        json!([null, position, topic, "msg", { "n": n }]),
        "expected message {n} at {position}"
    );
}

fn connect(server: &ChannelServer) -> TestSocket {
    TestSocket::connect(&server.ws_url("2.0.0"))
}

/// A Redis behind a relay, a server connected through it, and a client joined to `topic` that
/// received the `count` messages `{"n": 1..=count}` published with the function: their
/// positions.
fn joined_behind_relay(
    topic: &str,
    count: u32,
) -> (
    RedisServer,
    TcpRelay,
    ChannelServer,
    TestSocket,
    Vec<String>,
) {
    let redis = RedisServer::start();
    let relay = TcpRelay::to_local_port(redis.port());
    let server = server_with(&relay.url(), "");
    let mut socket = connect(&server);
    join_since_ok(&mut socket, topic, Value::Null);
    let positions = publish_numbers(&redis, topic, 1..=count);
    for (n, position) in (1..=count).zip(&positions) {
        expect_message(&mut socket, topic, n, position);
    }
    (redis, relay, server, socket, positions)
}

/// The port Redis sees the connection named `name` from (`CLIENT LIST` `addr`).
fn redis_side_port(redis: &RedisServer, name: &str) -> u16 {
    let mut conn = redis.connection();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut conn)
        .expect("CLIENT LIST");
    clients
        .lines()
        .find(|l| l.contains(&format!(" name={name} ")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("addr=")))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no connection named {name} in CLIENT LIST:\n{clients}"))
}

/// The sum of a `/metrics` series over its labels matching `label`.
fn metric(server: &ChannelServer, name: &str, label: &str) -> f64 {
    let text = http_request(server.addr(), "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `/metrics` series without labels.
fn unlabeled_metric(server: &ChannelServer, name: &str) -> f64 {
    let text = http_request(server.addr(), "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} on /metrics:\n{text}"))
}

/// How many times Redis ran `command` (`INFO commandstats`).
fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.connection())
        .unwrap_or_default();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_function_returns_the_position_it_broadcasts_in_the_ref_slot() {
    let redis = RedisServer::start();
    let server = server(&redis);
    let mut v2 = connect(&server);
    v2.join_ok("room:pos", &token_for("room:pos"));
    let mut v1 = TestSocket::connect(&server.ws_url("1.0.0"));
    let r = v1.next_ref();
    v1.send_json(&json!({"topic": "room:pos", "event": "phx_join", "payload": {"token": token_for("room:pos")}, "ref": r}));
    assert_eq!(v1.recv_json()["payload"]["status"], "ok");

    let first = publish(&redis, "room:pos", "msg", &json!({"n": 1}));
    let second = publish(&redis, "room:pos", "msg", &json!({"n": 2}));
    for position in [&first, &second] {
        assert!(
            position.parse::<f64>().is_err() && position.contains('.') && position.contains('-'),
            "a position is an opaque string, never a decimal number: {position}"
        );
    }
    assert_ne!(first, second);
    expect_message(&mut v2, "room:pos", 1, &first);
    expect_message(&mut v2, "room:pos", 2, &second);
    assert_eq!(
        v1.recv_json(),
        json!({"topic": "room:pos", "event": "msg", "payload": {"n": 1}, "ref": first})
    );
    // The classic path has no position.
    redis.publish("to:room:pos:old", r#"{"n":0}"#);
    assert_eq!(
        v2.recv_json(),
        json!([null, null, "room:pos", "old", {"n": 0}])
    );
}

#[test]
fn a_join_with_since_null_gets_the_latest_position_and_one_without_since_gets_an_empty_response() {
    let redis = RedisServer::start();
    let server = server(&redis);
    let mut fresh = connect(&server);
    assert_eq!(
        join_since_ok(&mut fresh, "room:latest", Value::Null),
        json!({"position": null, "recovered": false}),
        "no history yet"
    );
    let positions = publish_numbers(&redis, "room:latest", 1..=2);
    expect_message(&mut fresh, "room:latest", 1, &positions[0]);
    expect_message(&mut fresh, "room:latest", 2, &positions[1]);
    let mut later = connect(&server);
    assert_eq!(
        join_since_ok(&mut later, "room:latest", Value::Null),
        json!({"position": positions[1], "recovered": false})
    );
    let mut classic = connect(&server);
    assert_eq!(
        classic.join_ok("room:latest", &token_for("room:latest")),
        json!({})
    );
    later.expect_quiet();
    classic.expect_quiet();
}

#[test]
fn a_client_whose_socket_dropped_recovers_every_missed_message_in_order_then_live_ones() {
    let redis = RedisServer::start();
    let server = server(&redis);
    let topic = "room:drop";
    let mut client = connect(&server);
    join_since_ok(&mut client, topic, Value::Null);
    let first = publish_numbers(&redis, topic, [1]);
    expect_message(&mut client, topic, 1, &first[0]);
    drop(client); // the train enters the tunnel

    let missed = publish_numbers(&redis, topic, 2..=4);
    let mut back = connect(&server);
    assert_eq!(
        join_since_ok(&mut back, topic, json!(first[0])),
        json!({"position": missed[2], "recovered": true})
    );
    for (n, position) in (2..=4).zip(&missed) {
        expect_message(&mut back, topic, n, position);
    }
    let live = publish_numbers(&redis, topic, [5]);
    expect_message(&mut back, topic, 5, &live[0]);
    back.expect_quiet();
    assert_eq!(
        metric(
            &server,
            "channel_recovery_joins_total",
            "recovered=\"true\""
        ),
        1.0
    );
    assert_eq!(metric(&server, "channel_replayed_messages_total", ""), 3.0);
}

#[test]
fn a_client_recovers_on_another_process() {
    let redis = RedisServer::start();
    let a = server(&redis);
    let b = server(&redis);
    let topic = "room:across";
    let mut on_a = connect(&a);
    join_since_ok(&mut on_a, topic, Value::Null);
    let first = publish_numbers(&redis, topic, [1]);
    expect_message(&mut on_a, topic, 1, &first[0]);
    drop(on_a);
    let missed = publish_numbers(&redis, topic, 2..=3);
    let mut on_b = connect(&b);
    assert_eq!(
        join_since_ok(&mut on_b, topic, json!(first[0])),
        json!({"position": missed[1], "recovered": true})
    );
    expect_message(&mut on_b, topic, 2, &missed[0]);
    expect_message(&mut on_b, topic, 3, &missed[1]);
    let live = publish_numbers(&redis, topic, [4]);
    expect_message(&mut on_b, topic, 4, &live[0]);
    on_b.expect_quiet();
}

#[test]
fn a_position_trimmed_from_the_history_is_not_recovered_and_nothing_is_replayed() {
    let redis = RedisServer::start();
    let server = server_with(&redis.url(), "history_size = 3\n");
    let topic = "room:trim";
    let positions = publish_numbers(&redis, topic, 1..=3);
    // The oldest kept message is still a valid since: what follows it is all there.
    let mut still = connect(&server);
    assert_eq!(
        join_since_ok(&mut still, topic, json!(positions[0])),
        json!({"position": positions[2], "recovered": true})
    );
    expect_message(&mut still, topic, 2, &positions[1]);
    expect_message(&mut still, topic, 3, &positions[2]);
    let newer = publish_numbers(&redis, topic, [4]);
    expect_message(&mut still, topic, 4, &newer[0]);
    let mut late = connect(&server);
    assert_eq!(
        join_since_ok(&mut late, topic, json!(positions[0])),
        json!({"position": newer[0], "recovered": false})
    );
    late.expect_quiet();
    assert_eq!(
        metric(
            &server,
            "channel_recovery_joins_total",
            "recovered=\"false\""
        ),
        1.0
    );
}

#[test]
fn a_position_of_an_expired_history_is_not_recovered() {
    let redis = RedisServer::start();
    let server = server_with(&redis.url(), "history_ttl_secs = 1\n");
    let topic = "room:ttl";
    let positions = publish_numbers(&redis, topic, 1..=2);
    let mut conn = redis.connection();
    wait_until(Duration::from_secs(5), "the history expired", || {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("channel:history:{{{topic}}}"))
            .arg(format!("channel:epoch:{{{topic}}}"))
            .query(&mut conn)
            .unwrap_or(-1);
        exists == 0
    });
    let mut client = connect(&server);
    assert_eq!(
        join_since_ok(&mut client, topic, json!(positions[0])),
        json!({"position": null, "recovered": false})
    );
    // The next message starts a new epoch.
    let fresh = publish_numbers(&redis, topic, [3]);
    assert_ne!(fresh[0].split('.').next(), positions[0].split('.').next());
    expect_message(&mut client, topic, 3, &fresh[0]);
    client.expect_quiet();
}

#[test]
fn a_position_from_before_the_history_was_deleted_is_of_another_epoch() {
    let redis = RedisServer::start();
    let server = server(&redis);
    let topic = "room:deleted";
    let old = publish_numbers(&redis, topic, 1..=2);
    let mut conn = redis.connection();
    let _: () = redis::cmd("DEL")
        .arg(format!("channel:history:{{{topic}}}"))
        .query(&mut conn)
        .expect("DEL");
    let new = publish_numbers(&redis, topic, [3]);
    // Same stream entry ids could come again; the epoch tells them apart.
    assert_ne!(new[0].split('.').next(), old[0].split('.').next());
    let mut client = connect(&server);
    assert_eq!(
        join_since_ok(&mut client, topic, json!(old[0])),
        json!({"position": new[0], "recovered": false})
    );
    client.expect_quiet();
}

#[test]
fn a_malformed_since_is_refused_with_invalid_since() {
    let redis = RedisServer::start();
    let server = server(&redis);
    let mut client = connect(&server);
    for since in [
        json!("12"),
        json!("x.1-1"),
        json!(""),
        json!(7),
        json!({"a": 1}),
    ] {
        let reply = join_since(&mut client, "room:bad", since.clone());
        let r = reply[1].as_str().expect("the reply has a ref").to_owned();
        let expected: Value =
            serde_json::from_str(&error_reply(Some(&r), &r, "room:bad", "invalid since"))
                .expect("the harness builds JSON");
        assert_eq!(reply, expected, "since {since}");
    }
    // The socket is fine.
    assert_eq!(client.heartbeat()[4]["status"], "ok");
}

#[test]
fn a_message_published_after_the_history_read_is_sent_once_after_the_replay() {
    // The history's answer is held in the relay while a message is published and delivered
    // live: the joiner must get it from the buffer, after the replay, exactly once.
    let topic = "room:race-after";
    let (redis, relay, server, mut watcher, before) = joined_behind_relay(topic, 2);

    let reads_before = command_calls(&redis, "fcall_ro");
    relay.hold_replies_of(redis_side_port(&redis, "channel-publisher"));
    let mut joiner = connect(&server);
    let r = joiner.next_ref();
    joiner.send_json(
        &json!([r, r, topic, "phx_join", {"token": token_for(topic), "since": before[0]}]),
    );
    // The read reached Redis (its answer is held): the message below is after it.
    wait_until(Duration::from_secs(5), "the history read ran", || {
        command_calls(&redis, "fcall_ro") > reads_before
    });
    let after = publish_numbers(&redis, topic, [3]);
    expect_message(&mut watcher, topic, 3, &after[0]); // it reached the shard live
    joiner.expect_quiet(); // nothing before the reply
    relay.restore();
    let reply = joiner.recv_reply(&r);
    assert_eq!(
        reply[4]["response"],
        json!({"position": before[1], "recovered": true})
    );
    expect_message(&mut joiner, topic, 2, &before[1]);
    expect_message(&mut joiner, topic, 3, &after[0]);
    joiner.expect_quiet();
}

#[test]
fn a_replayed_message_that_arrives_live_after_the_replay_is_not_sent_twice() {
    // The sharded subscription's messages are held in the relay while two messages are
    // published: the joiner gets them from the history read, then they arrive live and must
    // be skipped for it (and only for it).
    let topic = "room:race-before";
    let (redis, relay, server, mut watcher, first) = joined_behind_relay(topic, 1);

    relay.hold_replies_of(redis_side_port(&redis, "channel-sharded-subscriber"));
    let held = publish_numbers(&redis, topic, 2..=3);
    let mut joiner = connect(&server);
    assert_eq!(
        join_since_ok(&mut joiner, topic, json!(first[0])),
        json!({"position": held[1], "recovered": true})
    );
    expect_message(&mut joiner, topic, 2, &held[0]);
    expect_message(&mut joiner, topic, 3, &held[1]);
    relay.restore();
    expect_message(&mut watcher, topic, 2, &held[0]);
    expect_message(&mut watcher, topic, 3, &held[1]);
    let live = publish_numbers(&redis, topic, [4]);
    expect_message(&mut watcher, topic, 4, &live[0]);
    expect_message(&mut joiner, topic, 4, &live[0]);
    joiner.expect_quiet();
}

#[test]
fn order_is_kept_and_nothing_is_lost_or_doubled_while_a_burst_runs_through_a_rejoin() {
    let redis = RedisServer::start();
    let server = server(&redis);
    let topic = "room:burst";
    let mut client = connect(&server);
    join_since_ok(&mut client, topic, Value::Null);
    let first = publish_numbers(&redis, topic, [0]);
    expect_message(&mut client, topic, 0, &first[0]);
    drop(client);
    let url = redis.url();
    let publisher = std::thread::spawn(move || {
        let client = redis::Client::open(url).expect("a valid URL");
        let mut conn = client.get_connection().expect("Redis answers");
        (1..=60u32)
            .map(|n| {
                redis::cmd("FCALL")
                    .arg("channel_publish")
                    .arg(1)
                    .arg("room:burst")
                    .arg("msg")
                    .arg(json!({ "n": n }).to_string())
                    .query::<String>(&mut conn)
                    .expect("FCALL")
            })
            .collect::<Vec<_>>()
    });
    let mut back = connect(&server);
    let response = join_since_ok(&mut back, topic, json!(first[0]));
    assert_eq!(response["recovered"], true, "{response}");
    let positions = publisher
        .join()
        .expect("the publisher thread does not panic");
    for (n, position) in (1..=60).zip(&positions) {
        expect_message(&mut back, topic, n, position);
    }
    back.expect_quiet();
}

#[test]
fn a_join_whose_subscription_redis_does_not_confirm_is_refused_with_a_reason() {
    let redis = RedisServer::start();
    let server = server(&redis);
    let mut conn = redis.connection();
    // Every client of Redis waits, the server's SSUBSCRIBE included.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(8000)
        .arg("ALL")
        .query(&mut conn)
        .expect("CLIENT PAUSE");
    let mut client = connect(&server);
    let asked = std::time::Instant::now();
    let r = client.next_ref();
    let token = token_for("room:unconfirmed");
    client
        .send_json(&json!([r, r, "room:unconfirmed", "phx_join", {"token": token, "since": null}]));
    // The deadline is 5 s: wait past it.
    let reply = client.recv_json_timeout(Duration::from_secs(10));
    let expected: Value = serde_json::from_str(&error_reply(
        Some(&r),
        &r,
        "room:unconfirmed",
        "subscription not confirmed by redis",
    ))
    .expect("the harness builds JSON");
    assert_eq!(reply, expected);
    assert!(
        asked.elapsed() >= Duration::from_millis(4500),
        "the join waited for the confirmation: {:?}",
        asked.elapsed()
    );
}

#[test]
fn a_v1_client_gets_the_replay_with_positions_as_refs_and_a_v2_client_gets_binary_messages_replayed_without_one(
) {
    let redis = RedisServer::start();
    let server = server(&redis);
    let topic = "room:formats";
    let first = publish_numbers(&redis, topic, [1]);
    let second = publish_numbers(&redis, topic, [2]);
    let mut conn = redis.connection();
    let raw: String = redis::cmd("FCALL")
        .arg("channel_publish")
        .arg(1)
        .arg(topic)
        .arg("raw")
        .arg(&b"\x00\x01"[..])
        .query(&mut conn)
        .expect("FCALL with a binary payload");

    let mut v1 = TestSocket::connect(&server.ws_url("1.0.0"));
    let r = v1.next_ref();
    v1.send_json(&json!({"topic": topic, "event": "phx_join", "ref": r,
        "payload": {"token": token_for(topic), "since": first[0]}}));
    assert_eq!(
        v1.recv_json(),
        json!({"topic": topic, "event": "phx_reply", "ref": r,
            "payload": {"status": "ok", "response": {"position": raw, "recovered": true}}})
    );
    assert_eq!(
        v1.recv_json(),
        json!({"topic": topic, "event": "msg", "payload": {"n": 2}, "ref": second[0]})
    );
    // V1 has no binary frames: the binary message is not delivered to it.
    v1.expect_quiet();

    let mut v2 = connect(&server);
    assert_eq!(
        join_since_ok(&mut v2, topic, json!(first[0])),
        json!({"position": raw, "recovered": true})
    );
    expect_message(&mut v2, topic, 2, &second[0]);
    let mut expected = vec![2u8, topic.len() as u8, 3];
    expected.extend_from_slice(topic.as_bytes());
    expected.extend_from_slice(b"raw\x00\x01");
    assert_eq!(v2.recv_binary_timeout(Duration::from_secs(5)), expected);
    v2.expect_quiet();
}

#[test]
fn a_client_that_stays_joined_gets_what_was_published_while_the_process_subscription_was_lost() {
    // The process's own connections to Redis are cut (a relay between them) while the client
    // stays joined: it never rejoins, so its own `since` never runs. When the process's
    // sharded subscription comes back, the process reads the gap from the topic's history and
    // delivers it before the live messages: in order, once.
    let topic = "room:gap";
    let (redis, relay, server, mut socket, _first) = joined_behind_relay(topic, 1);

    relay.cut();
    wait_until(
        Duration::from_secs(5),
        "the process's sharded subscription is gone",
        || redis.shard_subscribers(topic) == 0,
    );
    let missed = publish_numbers(&redis, topic, 2..=4);
    relay.restore();
    for (n, position) in (2..=4).zip(&missed) {
        expect_message(&mut socket, topic, n, position);
    }
    let live = publish_numbers(&redis, topic, [5]);
    expect_message(&mut socket, topic, 5, &live[0]);
    socket.expect_quiet();
    assert_eq!(
        unlabeled_metric(&server, "channel_redis_gap_filled_total"),
        3.0
    );
    assert_eq!(
        unlabeled_metric(&server, "channel_redis_gap_lost_total"),
        0.0
    );

    // A history lost meanwhile (deleted, then started again by the next publish: another
    // epoch) cannot say what it held: counted as a lost gap; what the new history holds, all
    // published after the loss, is delivered; then live delivery goes on.
    relay.cut();
    wait_until(
        Duration::from_secs(5),
        "the process's sharded subscription is gone again",
        || redis.shard_subscribers(topic) == 0,
    );
    let _: () = redis::cmd("DEL")
        .arg(format!("channel:history:{{{topic}}}"))
        .arg(format!("channel:epoch:{{{topic}}}"))
        .query(&mut redis.connection())
        .expect("DEL of the history");
    let restarted = publish_numbers(&redis, topic, [6]);
    assert_ne!(
        restarted[0].split('.').next(),
        live[0].split('.').next(),
        "another epoch"
    );
    relay.restore();
    expect_message(&mut socket, topic, 6, &restarted[0]);
    assert_eq!(
        unlabeled_metric(&server, "channel_redis_gap_lost_total"),
        1.0
    );
    let next = publish_numbers(&redis, topic, [7]);
    expect_message(&mut socket, topic, 7, &next[0]);
    socket.expect_quiet();
}

#[test]
fn a_topic_nothing_was_delivered_of_yet_gets_its_gap_filled_and_nothing_older() {
    // Nothing delivered yet, so no last position: the fill starts from where the topic's
    // history stood when the process first subscribed (its floor, read once the subscription
    // is confirmed). `old` had a message before the join, which must not be delivered; `new`
    // had no history at all.
    let redis = RedisServer::start();
    let relay = TcpRelay::to_local_port(redis.port());
    let server = server_with(&relay.url(), "");
    let (old, new) = ("room:quiet-old", "room:quiet-new");
    // Connected (the function installed) before anything is published.
    wait_until(
        Duration::from_secs(5),
        "the server is connected to Redis",
        || common::failover::healthz(&server) == 200,
    );
    publish_numbers(&redis, old, [0]);
    let mut socket = connect(&server);
    join_since_ok(&mut socket, old, Value::Null);
    join_since_ok(&mut socket, new, Value::Null);
    wait_until(Duration::from_secs(5), "both floors were read", || {
        command_calls(&redis, "xrevrange") >= 2
    });

    relay.cut();
    wait_until(
        Duration::from_secs(5),
        "the process's sharded subscriptions are gone",
        || redis.shard_subscribers(old) == 0 && redis.shard_subscribers(new) == 0,
    );
    let missed_old = publish_numbers(&redis, old, 1..=2);
    let missed_new = publish_numbers(&redis, new, 1..=2);
    relay.restore();
    let mut got: Vec<Value> = (0..4).map(|_| socket.recv_json()).collect();
    got.sort_by_key(|frame| {
        (
            frame[2].as_str().map(str::to_owned),
            frame[1].as_str().map(str::to_owned),
        )
    });
    let mut want = Vec::new();
    for (topic, missed) in [(new, &missed_new), (old, &missed_old)] {
        for (n, position) in (1..=2).zip(missed.iter()) {
            want.push(json!([null, position, topic, "msg", { "n": n }]));
        }
    }
    assert_eq!(
        got, want,
        "the gap of both topics, and not the message before the join"
    );
    socket.expect_quiet();
    assert_eq!(
        unlabeled_metric(&server, "channel_redis_gap_filled_total"),
        4.0
    );
}
