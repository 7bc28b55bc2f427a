//! Redis Cluster mode against a real 6-node cluster (issue 13 §2–§4): 3 masters and 3 replicas
//! from `redis-server` processes (tests/common/cluster.rs), shared by the tests of this binary,
//! which take it one at a time.
//!
//! - Downstream through the publish function reaches clients whatever master owns the topic,
//!   and only the process that has a subscriber of the topic receives it (its received counter
//!   on `/metrics` moves, the other's does not); classic `PUBLISH` sent to any node still
//!   reaches every process; the last leave unsubscribes on the topic's master.
//! - `kill -9` of the master that owns a topic's slot: the replica is promoted, delivery resumes
//!   within 3 s of the promotion, the joined client is never disconnected, every push is
//!   answered (`ok` only if some node published it), `/healthz` says which part is degraded
//!   meanwhile and is green after.
//! - A slot migration of a topic with a subscriber: delivery continues, nothing twice, nothing
//!   lost (what was published while the slot was between two masters is filled from history).
//! - Presence across processes, with the reaper's keys of one slot per call (no CROSSSLOT): a
//!   killed process's member leaves.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::cluster::{key_slot, sharded_channel, RedisCluster};
use common::failover::{
    delivery_resumes, healthz, push_through_gap, push_times, received, resumed_within,
    the_gap_and_after_hold, Member, UpstreamWatcher,
};
use common::phoenix::{next_event, wait_until};
use common::{sign_token, ChannelServer, ServerOptions, TestSocket, TEST_JWT_SECRET};

/// Issue 13 §4: delivery resumes within this of the promotion.
const RESUME_BOUND: Duration = Duration::from_secs(3);

/// How long a test waits for one expected frame.
const RECV: Duration = Duration::from_secs(5);

fn start_server(cluster: &RedisCluster, opts: ServerOptions) -> ChannelServer {
    cluster.serve(opts)
}

/// Presence off: its diffs would move every process's received counter.
fn quiet_server(cluster: &RedisCluster) -> ChannelServer {
    start_server(
        cluster,
        ServerOptions::default()
            .shards(1)
            .config("[channel]\npresence_enabled = false\n"),
    )
}

/// Connections holding `SSUBSCRIBE` to `topic`'s sharded channel on the node on `port`.
fn shard_subscribers_on(cluster: &RedisCluster, port: u16, topic: &str) -> i64 {
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(sharded_channel(topic))
        .query(&mut cluster.connection(port))
        .expect("PUBSUB SHARDNUMSUB on a cluster node");
    count
}

fn wait_for_shard_subscribers(cluster: &RedisCluster, topic: &str, count: i64) {
    let master = cluster.master_of(&sharded_channel(topic));
    wait_until(
        Duration::from_secs(5),
        &format!("{count} sharded subscriber(s) of {topic} on its master {master}"),
        || shard_subscribers_on(cluster, master, topic) == count,
    );
}

/// One topic name per master (each owned by a different master), made from `prefix`.
fn one_topic_per_master(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let mut by_master = std::collections::BTreeMap::new();
    for i in 0.. {
        let topic = format!("{prefix}:{i}");
        by_master
            .entry(cluster.master_of(&sharded_channel(&topic)))
            .or_insert(topic);
        if by_master.len() == cluster.masters().len() {
            break;
        }
    }
    by_master.into_values().collect()
}

/// A broadcast of a message published with the function: `[null, "<position>", topic, event,
/// payload]` (the position is the history's, issue 14).
fn assert_positioned(frame: Value, topic: &str, event: &str, payload: Value) {
    assert!(frame[1].is_string(), "a position in the ref slot: {frame}");
    assert_eq!(
        json!([frame[0], frame[2], frame[3], frame[4]]),
        json!([null, topic, event, payload]),
        "{frame}"
    );
}

fn fcall_probe(cluster: &RedisCluster, topic: &str, n: u64) -> bool {
    cluster
        .fcall_publish(topic, "probe", json!({ "n": n }).to_string())
        .is_ok()
}

#[test]
fn function_messages_reach_clients_on_every_master_and_only_the_serving_process() {
    let cluster = RedisCluster::shared();
    let (serving, idle) = (quiet_server(&cluster), quiet_server(&cluster));
    let topics = one_topic_per_master(&cluster, "room:cluster-interest");
    let mut client = TestSocket::connect(&serving.ws_url("2.0.0"));
    for topic in &topics {
        client.join_ok(topic, &sign_token(TEST_JWT_SECRET, topic, "bob", 3600));
    }
    for topic in &topics {
        wait_for_shard_subscribers(&cluster, topic, 1);
    }
    let (serving_before, idle_before) = (received(&serving), received(&idle));
    for (n, topic) in topics.iter().enumerate() {
        let position = cluster
            .fcall_publish(topic, "n", json!({ "n": n }).to_string())
            .unwrap_or_else(|e| panic!("FCALL on the master of {topic}: {e}"));
        assert!(
            matches!(position, redis::Value::BulkString(_)),
            "{position:?}"
        );
    }
    // Each master's messages come on their own connection: in any order across topics.
    let mut frames: Vec<Value> = topics.iter().map(|_| client.recv_json()).collect();
    frames.sort_by_key(|frame| frame[4]["n"].as_u64());
    for ((n, topic), frame) in topics.iter().enumerate().zip(frames) {
        assert_positioned(frame, topic, "n", json!({ "n": n }));
    }
    assert_eq!(received(&serving) - serving_before, topics.len() as f64);
    assert_eq!(
        received(&idle) - idle_before,
        0.0,
        "a process without a subscriber of these topics received them"
    );

    // Classic PUBLISH on any node still reaches the client (and every process receives it).
    let any_node = cluster.live_ports()[0];
    let (serving_before, idle_before) = (received(&serving), received(&idle));
    cluster.publish_on(any_node, &format!("to:{}:classic", topics[0]), r#"{"c":1}"#);
    assert_eq!(
        client.recv_json(),
        json!([null, null, topics[0], "classic", { "c": 1 }])
    );
    wait_until(Duration::from_secs(5), "both processes received it", || {
        received(&serving) - serving_before == 1.0 && received(&idle) - idle_before == 1.0
    });

    // The last leave unsubscribes on each topic's master.
    for topic in &topics {
        assert_eq!(client.leave(topic)[4]["status"], "ok");
        assert_eq!(client.recv_json()[3], "phx_close");
    }
    for topic in &topics {
        wait_for_shard_subscribers(&cluster, topic, 0);
    }
}

#[test]
fn many_topics_joined_at_once_are_each_subscribed_on_their_slot_master() {
    // One SSUBSCRIBE names channels of one slot only on a cluster (else CROSSSLOT): topics
    // gained together are grouped by slot.
    let cluster = RedisCluster::shared();
    let server = quiet_server(&cluster);
    let topics: Vec<String> = (0..40).map(|i| format!("room:cluster-many:{i}")).collect();
    let mut client = TestSocket::connect(&server.ws_url("2.0.0"));
    for (i, topic) in topics.iter().enumerate() {
        let token = sign_token(TEST_JWT_SECRET, topic, "bob", 3600);
        client
            .send_json(&json!([i.to_string(), i.to_string(), topic, "phx_join", {"token": token}]));
    }
    for _ in &topics {
        assert_eq!(client.recv_json()[4]["status"], "ok");
    }
    for topic in &topics {
        wait_for_shard_subscribers(&cluster, topic, 1);
    }
    for (n, topic) in topics.iter().enumerate() {
        cluster
            .fcall_publish(topic, "n", json!({ "n": n }).to_string())
            .unwrap_or_else(|e| panic!("FCALL on the master of {topic}: {e}"));
        assert_positioned(client.recv_json(), topic, "n", json!({ "n": n }));
    }
}

#[test]
fn the_function_is_installed_on_every_master() {
    let cluster = RedisCluster::shared();
    // The cluster is shared: an earlier test's process installed the library already. Flush
    // it first, so that only this process can have put it back.
    for master in cluster.masters() {
        let _: () = redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query(&mut cluster.connection(master))
            .expect("FUNCTION FLUSH");
    }
    let _server = quiet_server(&cluster);
    for master in cluster.masters() {
        wait_until(
            Duration::from_secs(5),
            &format!("library `channel` on master {master}"),
            || {
                let libraries: Value = redis::cmd("FUNCTION")
                    .arg("LIST")
                    .arg("LIBRARYNAME")
                    .arg("channel")
                    .query::<redis::Value>(&mut cluster.connection(master))
                    .map(|v| json!(format!("{v:?}")))
                    .unwrap_or(Value::Null);
                libraries.to_string().contains("channel_publish")
            },
        );
    }
}

#[test]
fn a_killed_master_fails_over_and_delivery_resumes_within_3s_of_the_promotion() {
    let mut cluster = RedisCluster::shared();
    let topic = "room:cluster-failover";
    let server = start_server(&cluster, ServerOptions::default());
    let mut alice = Member::join(&server, topic);
    {
        let cluster = &cluster;
        delivery_resumes(
            &mut alice,
            Instant::now(),
            RESUME_BOUND,
            |n| fcall_probe(cluster, topic, n),
            || cluster.logs(),
        );
    }
    let watcher = UpstreamWatcher::start(
        cluster
            .ports()
            .into_iter()
            .map(RedisCluster::node_url)
            .collect(),
        topic,
    );

    // Push through the gap while the harness kills the topic's master and waits for the
    // promotion (on its own thread: it blocks until the cluster agrees). The pushes start once
    // the master is gone: one Redis took just before its kill -9 may never reach a subscriber
    // (Redis had answered, the process died before writing it on), which is Redis's loss, not
    // a false ok.
    let doomed = cluster.master_of(&sharded_channel(topic));
    let (failover, pending, degraded) = std::thread::scope(|scope| {
        let harness: &mut RedisCluster = &mut cluster;
        let killer = scope.spawn(move || harness.kill_master_of(&sharded_channel(topic)));
        wait_until(Duration::from_secs(5), "the master is gone", || {
            redis::Client::open(RedisCluster::node_url(doomed))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .is_err()
        });
        let (pending, degraded) =
            push_through_gap(&server, &mut alice, "gap", || killer.is_finished());
        let failover = killer.join().expect("the kill and promotion went through");
        (failover, pending, degraded)
    });
    let took = delivery_resumes(
        &mut alice,
        failover.promoted_at,
        Duration::from_secs(15),
        |n| fcall_probe(&cluster, topic, n),
        || format!("{}\n{}", cluster.logs(), server.log()),
    );
    let event = format!(
        "the promotion of {} ({:?} after the kill -9 of master {}, slot {})",
        failover.promoted,
        failover.promoted_at - failover.killed_at,
        failover.killed,
        failover.slot
    );
    resumed_within(took, RESUME_BOUND, &event, &server);
    the_gap_and_after_hold(
        &server,
        &mut alice,
        &watcher,
        pending,
        degraded,
        RESUME_BOUND,
    );
}

#[test]
fn a_slot_migration_keeps_delivering_and_delivers_nothing_twice() {
    let mut cluster = RedisCluster::shared();
    let topic = "room:cluster-migrate";
    let server = quiet_server(&cluster);
    let mut client = TestSocket::connect(&server.ws_url("2.0.0"));
    client.join_ok(topic, &sign_token(TEST_JWT_SECRET, topic, "bob", 3600));
    wait_for_shard_subscribers(&cluster, topic, 1);
    let from = cluster.master_of(&sharded_channel(topic));
    let to = cluster.other_master_than(from);

    // Publish a numbered message every 10 ms through the migration and after it, until the
    // client has one published after the slot moved.
    let mut received_ns: Vec<u64> = Vec::new();
    let mut published = 0u64;
    let migration = std::thread::scope(|scope| {
        let harness: &mut RedisCluster = &mut cluster;
        let migrating = scope.spawn(move || harness.migrate_slot_of(&sharded_channel(topic), to));
        let mut first_after = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "delivery did not continue after the migration"
            );
            if migrating.is_finished() && first_after.is_none() {
                first_after = Some(published);
            }
            // Sent to the old owner, following MOVED/ASK as a cluster client does; during the
            // move a publish may fail for a moment (then it is not counted).
            let payload = json!({ "n": published }).to_string();
            if RedisCluster::fcall_publish_via(from, topic, "n", payload).is_ok() {
                published += 1;
            }
            while let Some(frame) =
                common::phoenix::try_next(&mut client, Duration::from_millis(10))
            {
                let value = frame.json();
                assert_eq!(value[3], "n", "{value}");
                received_ns.push(value[4]["n"].as_u64().expect("n"));
            }
            if let Some(first) = first_after {
                if received_ns.iter().any(|&n| n >= first) {
                    break;
                }
            }
        }
        migrating.join().expect("the migration went through")
    });
    // One more, then every message the cluster accepted must have arrived: those published
    // while the slot was between the two masters too (the process fills them from history).
    let last = published;
    RedisCluster::fcall_publish_via(from, topic, "n", json!({ "n": last }).to_string())
        .expect("a publish after the migration");
    published += 1;
    while !received_ns.contains(&last) {
        let frame = client.recv_json_timeout(RECV);
        assert_eq!(frame[3], "n", "{frame}");
        received_ns.push(frame[4]["n"].as_u64().expect("n"));
    }
    eprintln!(
        "slot {} moved {} -> {}; {} published, {} received",
        migration.slot,
        migration.from,
        migration.to,
        published,
        received_ns.len()
    );
    let unique: HashSet<u64> = received_ns.iter().copied().collect();
    assert_eq!(
        unique.len(),
        received_ns.len(),
        "a message was delivered twice: {received_ns:?}"
    );
    let mut sorted = received_ns.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, received_ns, "order kept");
    assert_eq!(
        received_ns,
        (0..published).collect::<Vec<u64>>(),
        "every accepted message delivered"
    );
    // Subscribed on the new owner, no longer on the old one.
    wait_until(
        Duration::from_secs(5),
        "subscribed on the new owner only",
        || {
            shard_subscribers_on(&cluster, to, topic) == 1
                && shard_subscribers_on(&cluster, from, topic) == 0
        },
    );
    assert_eq!(key_slot(sharded_channel(topic).as_bytes()), migration.slot);
}

#[test]
fn while_a_slot_migrates_joins_presence_and_recovery_follow_ask_to_the_target() {
    // Between `SETSLOT MIGRATING` and `SETSLOT NODE`, a topic's keys that already moved are
    // answered `ASK` by the old owner: the server must send `ASKING` and the command to the
    // target (the slot map still names the old owner, so re-reading it does not help).
    let mut cluster = RedisCluster::shared();
    let topic = "room:cluster-ask";
    let server = start_server(&cluster, ServerOptions::default().shards(1));
    let mut alice = joined_with_presence(&server, topic, "alice");
    let first = publish_number(&cluster, topic, 1);
    let second = publish_number(&cluster, topic, 2);
    assert_eq!(next_event(&mut alice, "msg", RECV)[4]["n"], 1);
    assert_eq!(next_event(&mut alice, "msg", RECV)[4]["n"], 2);

    let from = cluster.master_of(&sharded_channel(topic));
    let to = cluster.other_master_than(from);
    let pending = cluster.begin_slot_migration(&sharded_channel(topic), to);
    let moved = cluster.move_slot_keys(&pending);
    assert!(
        moved >= 3,
        "members, history and epoch keys moved, not {moved}"
    );
    let ask: redis::RedisResult<i64> = redis::cmd("EXISTS")
        .arg(format!("channel:history:{{{topic}}}"))
        .query(&mut cluster.connection(from));
    assert_eq!(
        ask.expect_err("the old owner redirects").code(),
        Some("ASK"),
        "the history key is on the target now"
    );

    // A join with presence (the join script writes the members key) and recovery (the
    // function reads the history) while every key of the topic is on the target.
    let mut bob = TestSocket::connect(&server.ws_url("2.0.0"));
    let token = sign_token(TEST_JWT_SECRET, topic, "bob", 3600);
    let reply = bob.join_with_payload(topic, json!({ "token": token, "since": first }));
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {"position": second, "recovered": true}}),
        "{reply}"
    );
    let mut replayed = None;
    let mut state = None;
    let deadline = Instant::now() + RECV;
    while replayed.is_none() || state.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "replay {replayed:?}, presence_state {state:?}"
        );
        let frame = bob.recv_json_timeout(left);
        match frame[3].as_str() {
            Some("msg") => replayed = Some(frame),
            Some("presence_state") => state = Some(frame[4].clone()),
            _ => {}
        }
    }
    assert_eq!(
        replayed.expect("seen"),
        json!([null, second, topic, "msg", { "n": 2 }])
    );
    let state = state.expect("seen");
    assert!(
        state.get("alice").is_some() && state.get("bob").is_some(),
        "presence read from the target: {state}"
    );
    diff_where(&mut alice, RECV, |d| d["joins"].get("bob").is_some());

    // Published now, the message goes to the target (`ASK`), whose `SPUBLISH` reaches only
    // its own shard, where this process is not subscribed yet. When the migration ends the
    // subscription moves there and the process fills the gap from the topic's history: both
    // clients get it, then the next message, in order.
    let in_window = publish_number(&cluster, topic, 10);
    let migration = cluster.finish_slot_migration(pending);
    assert_eq!((migration.from, migration.to), (from, to));
    let third = publish_number(&cluster, topic, 3);
    for socket in [&mut alice, &mut bob] {
        assert_eq!(
            next_event(socket, "msg", RECV),
            json!([null, in_window, topic, "msg", { "n": 10 }])
        );
        assert_eq!(
            next_event(socket, "msg", RECV),
            json!([null, third, topic, "msg", { "n": 3 }])
        );
    }
}

#[test]
fn a_topic_whose_keys_would_span_slots_is_refused_and_a_brace_elsewhere_is_served() {
    // A leading `}` empties the `{<topic>}` tag of every key of the topic: refused, with the
    // connection kept. A `}` further on keeps one tag, so the presence scripts run in one slot.
    let cluster = RedisCluster::shared();
    let server = start_server(&cluster, ServerOptions::default().shards(1));
    let mut socket = TestSocket::connect(&server.ws_url("2.0.0"));
    let refused = socket.join("}room", &sign_token(TEST_JWT_SECRET, "}room", "ada", 3600));
    assert_eq!(
        refused[4],
        json!({"status": "error", "response": {"reason": "invalid topic"}}),
        "{refused}"
    );
    let topic = "room}1";
    socket.join_ok(topic, &sign_token(TEST_JWT_SECRET, topic, "ada", 3600));
    let state = next_event(&mut socket, "presence_state", RECV);
    assert!(state[4].get("ada").is_some(), "{state}");
}

/// The next `presence_diff` payload on `socket` that satisfies `pred`.
fn diff_where(socket: &mut TestSocket, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no matching presence_diff within {timeout:?}; frames: {seen:?}"
        );
        let Some(frame) = socket.try_recv_frame(left) else {
            continue;
        };
        let value = frame.json();
        seen.push(value.clone());
        if value[3] == "presence_diff" && pred(&value[4]) {
            return value[4].clone();
        }
    }
}

#[test]
fn presence_spans_processes_and_a_killed_process_members_leave() {
    let cluster = RedisCluster::shared();
    let topic = "room:cluster-presence";
    let a = start_server(&cluster, ServerOptions::default());
    let mut b = start_server(&cluster, ServerOptions::default());
    let mut alice = TestSocket::connect(&a.ws_url("2.0.0"));
    alice.join_ok(topic, &sign_token(TEST_JWT_SECRET, topic, "alice", 3600));
    let mut bob = TestSocket::connect(&b.ws_url("2.0.0"));
    bob.join_ok(topic, &sign_token(TEST_JWT_SECRET, topic, "bob", 3600));
    diff_where(&mut alice, Duration::from_secs(5), |d| {
        d["joins"].get("bob").is_some()
    });
    let killed_at = Instant::now();
    b.kill();
    // The reaper's calls each touch one slot: the process keys' ({_processes}) and then the
    // topic's. TTL 6 s by default; the leave must come within 10 s.
    diff_where(&mut alice, Duration::from_secs(10), |d| {
        d["leaves"].get("bob").is_some()
    });
    eprintln!(
        "a killed process's member left {:?} after the kill",
        killed_at.elapsed()
    );
}

/// Joins `topic` as `id` and waits for its presence state (the join is in Redis then).
fn joined_with_presence(server: &ChannelServer, topic: &str, id: &str) -> TestSocket {
    let mut socket = TestSocket::connect(&server.ws_url("2.0.0"));
    socket.join_ok(topic, &sign_token(TEST_JWT_SECRET, topic, id, 3600));
    if topic != "admin" {
        next_event(&mut socket, "presence_state", Duration::from_secs(5));
    }
    socket
}

#[test]
fn admin_list_and_disconnect_cover_every_master_and_process() {
    let cluster = RedisCluster::shared();
    let a = start_server(&cluster, ServerOptions::default());
    let b = start_server(&cluster, ServerOptions::default());
    let topics = one_topic_per_master(&cluster, "room:cluster-admin");
    let mut sockets = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        sockets.push(joined_with_presence(server, topic, "mallory"));
    }
    let mut admin = joined_with_presence(&a, "admin", "ops");
    admin.send_json(&json!(["1", "7", "admin", "list", {}]));
    let reply = next_event(&mut admin, "phx_reply", Duration::from_secs(5));
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    for topic in &topics {
        assert_eq!(
            reply[4]["response"]["topics"][topic],
            json!({"members": 1, "metas": 1}),
            "{topic} (on its own master) is listed: {reply}"
        );
    }
    admin.send_json(&json!(["1", "8", "admin", "disconnect", {"id": "mallory"}]));
    let reply = next_event(&mut admin, "phx_reply", Duration::from_secs(5));
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {
            "id": "mallory", "disconnected": topics.len(), "processes": 2
        }})
    );
    for socket in &mut sockets {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match socket.recv_frame_timeout(left) {
                common::Frame::Close(Some((code, _))) => {
                    assert_eq!(code, 4001);
                    break;
                }
                common::Frame::Text(_) => continue,
                other => panic!("expected close 4001, got {other:?}"),
            }
        }
    }
}

#[test]
fn losing_the_whole_cluster_is_losing_redis_and_everything_comes_back() {
    let mut cluster = RedisCluster::shared();
    let topic = "room:cluster-lost";
    let server = start_server(&cluster, ServerOptions::default());
    let mut alice = Member::join(&server, topic);
    delivery_resumes(
        &mut alice,
        Instant::now(),
        RESUME_BOUND,
        |n| fcall_probe(&cluster, topic, n),
        || cluster.logs(),
    );
    cluster.kill_every_node();
    // As with a lost single Redis: pushes are refused (never a false ok), /healthz says so, the
    // client stays connected.
    let (oks, unavailable) = push_times(&server, &mut alice, "lost", 20);
    assert!(
        oks.is_empty(),
        "pushes answered ok with no Redis at all: {oks:?}"
    );
    assert_eq!(unavailable, 20);
    assert_eq!(
        healthz(&server),
        503,
        "/healthz must say 503 while the cluster is gone"
    );
    let back = Instant::now();
    cluster.make_whole();
    // The nodes kept no data: the function is installed again by the publisher's reconnect.
    let took = delivery_resumes(
        &mut alice,
        back,
        Duration::from_secs(30),
        |n| fcall_probe(&cluster, topic, n),
        || format!("{}\n{}", cluster.logs(), server.log()),
    );
    eprintln!("the whole cluster back: delivery resumed {took:?} after the restart began");
    wait_until(Duration::from_secs(10), "/healthz is 200 again", || {
        healthz(&server) == 200
    });
    let (after_oks, _) = push_times(&server, &mut alice, "after", 3);
    assert_eq!(after_oks.len(), 3, "pushes are ok again");
}

/// `FCALL channel_publish` of `{"n": n}` as event `msg` on the topic's master; the position.
fn publish_number(cluster: &RedisCluster, topic: &str, n: u32) -> String {
    let reply = cluster
        .fcall_publish(topic, "msg", json!({ "n": n }).to_string())
        .unwrap_or_else(|e| panic!("FCALL on the master of {topic}: {e}"));
    redis::FromRedisValue::from_redis_value(reply).expect("the function returns the position")
}

/// Joins with `{"token", "since"}` and returns the ok reply's response.
fn join_since_ok(socket: &mut TestSocket, topic: &str, since: Value) -> Value {
    let token = sign_token(TEST_JWT_SECRET, topic, "carol", 3600);
    let reply = socket.join_with_payload(topic, json!({ "token": token, "since": since }));
    assert_eq!(reply[4]["status"], "ok", "join refused: {reply}");
    reply[4]["response"].clone()
}

fn expect_message(socket: &mut TestSocket, topic: &str, n: u32, position: &str) {
    assert_eq!(
        socket.recv_json(),
        json!([null, position, topic, "msg", { "n": n }]),
        "expected message {n} at {position}"
    );
}

#[test]
fn a_client_recovers_on_another_process_of_a_cluster_and_a_deleted_history_is_another_epoch() {
    // Issue 14 on the cluster: the history lives in the topic's slot, read on its master.
    let cluster = RedisCluster::shared();
    let (a, b) = (quiet_server(&cluster), quiet_server(&cluster));
    let topic = "room:cluster-recover";
    let mut on_a = TestSocket::connect(&a.ws_url("2.0.0"));
    join_since_ok(&mut on_a, topic, Value::Null);
    let first = publish_number(&cluster, topic, 1);
    expect_message(&mut on_a, topic, 1, &first);
    drop(on_a);
    let missed: Vec<String> = (2..=3)
        .map(|n| publish_number(&cluster, topic, n))
        .collect();
    let mut on_b = TestSocket::connect(&b.ws_url("2.0.0"));
    assert_eq!(
        join_since_ok(&mut on_b, topic, json!(first)),
        json!({"position": missed[1], "recovered": true})
    );
    expect_message(&mut on_b, topic, 2, &missed[0]);
    expect_message(&mut on_b, topic, 3, &missed[1]);
    let live = publish_number(&cluster, topic, 4);
    expect_message(&mut on_b, topic, 4, &live);

    // The history deleted on its master: a new epoch, and the old position is not recovered.
    let master = cluster.master_of(&sharded_channel(topic));
    let _: () = redis::cmd("DEL")
        .arg(format!("channel:history:{{{topic}}}"))
        .query(&mut cluster.connection(master))
        .expect("DEL on the topic's master");
    let new = publish_number(&cluster, topic, 5);
    expect_message(&mut on_b, topic, 5, &new);
    assert_ne!(new.split('.').next(), live.split('.').next());
    let mut late = TestSocket::connect(&a.ws_url("2.0.0"));
    assert_eq!(
        join_since_ok(&mut late, topic, json!(live)),
        json!({"position": new, "recovered": false})
    );
}

#[test]
fn on_a_cluster_a_trimmed_or_expired_history_is_not_recovered() {
    let cluster = RedisCluster::shared();
    let server = start_server(
        &cluster,
        ServerOptions::default().shards(1).config(
            "[channel]\npresence_enabled = false\nhistory_size = 3\nhistory_ttl_secs = 1\n",
        ),
    );
    let topic = "room:cluster-trim";
    let positions: Vec<String> = (1..=4)
        .map(|n| publish_number(&cluster, topic, n))
        .collect();
    // Trimmed: only 2..=4 are kept, so a client at 1 cannot be given what followed it.
    let mut late = TestSocket::connect(&server.ws_url("2.0.0"));
    assert_eq!(
        join_since_ok(&mut late, topic, json!(positions[0])),
        json!({"position": positions[3], "recovered": false})
    );
    // The oldest kept one still recovers.
    let mut kept = TestSocket::connect(&server.ws_url("2.0.0"));
    assert_eq!(
        join_since_ok(&mut kept, topic, json!(positions[1])),
        json!({"position": positions[3], "recovered": true})
    );
    expect_message(&mut kept, topic, 3, &positions[2]);
    expect_message(&mut kept, topic, 4, &positions[3]);
    // Expired (history_ttl_secs = 1 after the last publish): the stream is gone from its master.
    let master = cluster.master_of(&sharded_channel(topic));
    wait_until(Duration::from_secs(5), "the history expired", || {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("channel:history:{{{topic}}}"))
            .query(&mut cluster.connection(master))
            .expect("EXISTS on the topic's master");
        exists == 0
    });
    let mut after = TestSocket::connect(&server.ws_url("2.0.0"));
    let response = join_since_ok(&mut after, topic, json!(positions[3]));
    assert_eq!(response["recovered"], json!(false), "{response}");
}
