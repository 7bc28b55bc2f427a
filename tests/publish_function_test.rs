//! The publish function and subscriptions by interest on a single Redis (issue 13 §2,
//! docs/protocol.md "The publish function"): `FCALL channel_publish 1 <topic> <event>
//! <payload>` reaches joined clients; a process holds `SSUBSCRIBE` only for topics it has
//! subscribers for (a process without one receives nothing: its received counter on
//! `/metrics` does not move); the last leave unsubscribes (`PUBSUB SHARDNUMSUB` says 0); the
//! subscriptions and the function come back after a Redis restart; bad calls get an error.
//!
//! A join's reply waits for Redis to confirm its topic's subscription: a message published with
//! the function right after the join reply reaches the client (no `PUBSUB SHARDNUMSUB` wait).
//! These servers keep no history (`history_size = 0`: positions are empty, as before issue 14);
//! tests/history_test.rs covers positions and recovery.

mod common;

use std::time::Duration;

use serde_json::json;

use common::phoenix::{broadcast_text, expect_binary, expect_text, token_for, wait_until};
use common::{http_request, ChannelServer, RedisServer, ServerOptions, TestSocket, QUIET_PERIOD};

/// Presence off: its diffs would move the received counter of every process. No history:
/// the function returns and publishes an empty position.
fn quiet_server(redis: &RedisServer) -> ChannelServer {
    ChannelServer::start(
        redis,
        ServerOptions::default().config("[channel]\npresence_enabled = false\nhistory_size = 0\n"),
    )
}

fn wait_for_shard_subscribers(redis: &RedisServer, topic: &str, count: i64) {
    wait_until(
        Duration::from_secs(5),
        &format!("{count} sharded subscriber(s) of {topic}"),
        || redis.shard_subscribers(topic) == count,
    );
}

fn fcall(redis: &RedisServer, topic: &str, event: &str, payload: &[u8]) -> redis::Value {
    redis.fcall_publish(topic, event, payload)
}

fn joined(server: &ChannelServer, topic: &str) -> TestSocket {
    let mut socket = TestSocket::connect(&server.ws_url("2.0.0"));
    socket.join_ok(topic, &token_for(topic));
    socket
}

/// `channel_redis_messages_received_total` of `server`.
fn received(server: &ChannelServer) -> f64 {
    let text = http_request(server.addr(), "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix("channel_redis_messages_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no received counter in /metrics:\n{text}"))
}

#[test]
fn a_message_published_with_the_function_reaches_joined_clients() {
    let redis = RedisServer::start();
    let server = quiet_server(&redis);
    // No wait for PUBSUB SHARDNUMSUB: the join reply came after Redis confirmed the topic.
    let mut client = joined(&server, "weather:wind");
    let returned = fcall(&redis, "weather:wind", "speed", br#"{"kmh": 12}"#);
    assert_eq!(
        returned,
        redis::Value::BulkString(Vec::new()),
        "the position is the empty string without history"
    );
    expect_text(
        &mut client,
        &broadcast_text("weather:wind", "speed", r#"{"kmh": 12}"#),
    );
    // Bytes that are not JSON go out as a binary broadcast, as on the classic path.
    fcall(&redis, "weather:wind", "raw", b"\x00\x01not json");
    let mut expected = vec![2u8, 12, 3];
    expected.extend_from_slice(b"weather:windraw\x00\x01not json");
    expect_binary(&mut client, &expected);
}

#[test]
fn the_classic_publish_keeps_working_alongside() {
    let redis = RedisServer::start();
    let server = quiet_server(&redis);
    let mut client = joined(&server, "room:1");
    wait_for_shard_subscribers(&redis, "room:1", 1);
    redis.publish("to:room:1:old", r#"{"via":"PUBLISH"}"#);
    expect_text(
        &mut client,
        &broadcast_text("room:1", "old", r#"{"via":"PUBLISH"}"#),
    );
    fcall(&redis, "room:1", "new", br#"{"via":"FCALL"}"#);
    expect_text(
        &mut client,
        &broadcast_text("room:1", "new", r#"{"via":"FCALL"}"#),
    );
}

#[test]
fn a_process_without_a_subscriber_of_the_topic_does_not_receive_it() {
    let redis = RedisServer::start();
    let serving = quiet_server(&redis);
    let idle = quiet_server(&redis);
    let mut client = joined(&serving, "room:only-a");
    wait_for_shard_subscribers(&redis, "room:only-a", 1);
    let (serving_before, idle_before) = (received(&serving), received(&idle));
    for n in 0..10 {
        fcall(
            &redis,
            "room:only-a",
            "n",
            json!({ "n": n }).to_string().as_bytes(),
        );
    }
    for n in 0..10 {
        expect_text(
            &mut client,
            &broadcast_text("room:only-a", "n", &json!({ "n": n }).to_string()),
        );
    }
    assert_eq!(received(&serving) - serving_before, 10.0);
    assert_eq!(
        received(&idle) - idle_before,
        0.0,
        "a process with no subscriber of the topic must not receive its messages"
    );
}

#[test]
fn the_last_leave_unsubscribes_the_process() {
    let redis = RedisServer::start();
    let server = quiet_server(&redis);
    let mut first = joined(&server, "room:leave");
    let mut second = joined(&server, "room:leave");
    wait_for_shard_subscribers(&redis, "room:leave", 1);
    first.leave("room:leave");
    // One subscriber left in the process: still subscribed.
    fcall(&redis, "room:leave", "still", b"{}");
    expect_text(&mut second, &broadcast_text("room:leave", "still", "{}"));
    assert_eq!(redis.shard_subscribers("room:leave"), 1);
    second.leave("room:leave");
    wait_for_shard_subscribers(&redis, "room:leave", 0);
}

#[test]
fn subscriptions_and_the_function_come_back_after_a_redis_restart() {
    let mut redis = RedisServer::start();
    let server = quiet_server(&redis);
    let mut client = joined(&server, "room:restart");
    wait_for_shard_subscribers(&redis, "room:restart", 1);
    redis.restart();
    // The new Redis has neither the function nor the subscription until the server is back.
    wait_for_shard_subscribers(&redis, "room:restart", 1);
    wait_until(Duration::from_secs(5), "the function is installed", || {
        let mut conn = redis.connection();
        let libraries: redis::RedisResult<redis::Value> = redis::cmd("FUNCTION")
            .arg("LIST")
            .arg("LIBRARYNAME")
            .arg("channel")
            .query(&mut conn);
        matches!(libraries, Ok(redis::Value::Array(l)) if !l.is_empty())
    });
    fcall(&redis, "room:restart", "back", b"{}");
    // The socket saw the presence-less resync traffic only: the next broadcast is ours.
    let (frame, _) = client.recv_json_until(Duration::from_secs(5), |v| v[3] == "back");
    assert_eq!(frame, json!([null, null, "room:restart", "back", {}]));
}

#[test]
fn bad_calls_of_the_function_are_refused_and_publish_nothing() {
    let redis = RedisServer::start();
    let server = quiet_server(&redis);
    let mut client = joined(&server, "room:bad");
    wait_for_shard_subscribers(&redis, "room:bad", 1);
    let mut conn = redis.connection();
    let mut call = |args: &[&str]| -> String {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("channel_publish");
        for a in args {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut conn)
            .expect_err("a bad call is refused")
            .to_string()
    };
    assert!(call(&["1", "room:bad", "a:b", "{}"]).contains("event"));
    assert!(call(&["1", "room:bad", "", "{}"]).contains("event"));
    assert!(call(&["1", "room:bad", "ev"]).contains("2 arguments"));
    assert!(call(&["0", "ev", "{}"]).contains("1 key"));
    // A brace would put the sharded channel in another slot than the key on a cluster.
    assert!(call(&["1", "room:{bad}", "ev", "{}"]).contains("\"{\" or \"}\""));
    client.expect_no_message(QUIET_PERIOD);
}

#[test]
fn a_lost_sharded_connection_subscribes_again_and_delivery_resumes() {
    let redis = RedisServer::start();
    let server = quiet_server(&redis);
    let mut client = joined(&server, "room:lost");
    wait_for_shard_subscribers(&redis, "room:lost", 1);
    let mut conn = redis.connection();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut conn)
        .expect("CLIENT LIST");
    let id = clients
        .lines()
        .find(|l| l.contains("name=channel-sharded-subscriber"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("the sharded subscriber is named in CLIENT LIST:\n{clients}"))
        .to_owned();
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query(&mut conn)
        .expect("CLIENT KILL ID");
    // Back on a new connection (not the killed one) with the topic subscribed again.
    wait_until(Duration::from_secs(5), "a new sharded connection", || {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut conn)
            .unwrap_or_default();
        list.lines().any(|l| {
            l.contains("name=channel-sharded-subscriber") && !l.contains(&format!("id={id} "))
        })
    });
    wait_for_shard_subscribers(&redis, "room:lost", 1);
    fcall(&redis, "room:lost", "back", b"{}");
    expect_text(&mut client, &broadcast_text("room:lost", "back", "{}"));
    wait_until(Duration::from_secs(5), "/healthz is 200", || {
        http_request(server.addr(), "GET", "/healthz", &[], b"").status == 200
    });
}
