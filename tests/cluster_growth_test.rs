//! A Redis Cluster that gains a master while a process serves it (issue 13 §1: the topology is
//! followed when new nodes appear), on a cluster of its own: the test leaves it with a fourth
//! master that has no replica, which the other cluster tests' shared deployment would not
//! count as whole, so it lives alone in this binary.
//!
//! A node joins with `CLUSTER MEET` (no function copied to it, unlike `redis-cli --cluster
//! add-node`) and a joined topic's slot is migrated to it. Then, without a restart: the
//! process installs the publish function on the new master, moves the topic's subscription
//! there (delivery continues), runs the topic's presence scripts there, and sends its pushes
//! there.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::cluster::{sharded_channel, RedisCluster};
use common::phoenix::{next_event, wait_until};
use common::{sign_token, RedisSubscriber, ServerOptions, TestSocket, TEST_JWT_SECRET};

const RECV: Duration = Duration::from_secs(5);

/// How many `PUBLISH` commands the node on `port` has run (`INFO commandstats`).
fn publish_calls(cluster: &RedisCluster, port: u16) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut cluster.connection(port))
        .expect("INFO commandstats");
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// The libraries `FUNCTION LIST` shows on the node on `port`.
fn function_libraries(cluster: &RedisCluster, port: u16) -> usize {
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .query(&mut cluster.connection(port))
        .expect("FUNCTION LIST");
    libraries.len()
}

#[test]
fn a_new_master_gets_the_function_the_subscription_presence_and_pushes_of_its_slots() {
    let mut cluster = RedisCluster::shared();
    let topic = "room:cluster-grow";
    let server = cluster.serve(ServerOptions::default().shards(1));
    let mut alice = TestSocket::connect(&server.ws_url("2.0.0"));
    alice.join_ok(topic, &sign_token(TEST_JWT_SECRET, topic, "alice", 3600));
    next_event(&mut alice, "presence_state", RECV);
    let position = cluster
        .fcall_publish(topic, "msg", r#"{"n":1}"#)
        .expect("the function on the topic's master");
    assert_eq!(next_event(&mut alice, "msg", RECV)[4], json!({"n": 1}));

    let new = cluster.add_master();
    assert_eq!(
        function_libraries(&cluster, new),
        0,
        "a node introduced by CLUSTER MEET has no function of its own"
    );
    let migration = cluster.migrate_slot_of(&sharded_channel(topic), new);
    assert!(migration.keys_moved >= 3, "{migration:?}");

    // The process sees the new master (a `sunsubscribe` from the old one, its periodic read of
    // the slot map) and installs the function there; a backend's FCALL then works on it.
    let moved_at = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the process installed the function on the new master",
        || function_libraries(&cluster, new) == 1,
    );
    let installed_after = moved_at.elapsed();
    let second = cluster
        .fcall_publish(topic, "msg", r#"{"n":2}"#)
        .expect("the function on the new master");
    assert_ne!(second, position);
    let frame = next_event(&mut alice, "msg", RECV);
    assert_eq!(
        frame[4],
        json!({"n": 2}),
        "delivered through the new master"
    );
    eprintln!(
        "slot {} moved {} -> {} (new); function installed {installed_after:?} after the move",
        migration.slot, migration.from, new
    );

    // Presence scripts run on the new master: bob's join is seen by alice.
    let mut bob = TestSocket::connect(&server.ws_url("2.0.0"));
    bob.join_ok(topic, &sign_token(TEST_JWT_SECRET, topic, "bob", 3600));
    let state = next_event(&mut bob, "presence_state", RECV);
    assert!(
        state[4].get("alice").is_some() && state[4].get("bob").is_some(),
        "{state}"
    );
    let diff = next_event(&mut alice, "presence_diff", RECV);
    assert!(diff[4]["joins"].get("bob").is_some(), "{diff}");

    // A push goes to the topic's master, the new one; a backend on an old node sees it.
    let backend = RedisSubscriber::on_url(
        &RedisCluster::node_url(migration.from),
        &format!("from:{topic}:*"),
    );
    let published_on_new = publish_calls(&cluster, new);
    let r = bob.push(topic, "said", json!({"hello": "new master"}));
    let reply = bob.recv_reply(&r);
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let message = backend
        .try_recv_timeout(RECV)
        .expect("the push reached a backend on another node");
    assert_eq!(message.channel, format!("from:{topic}:said"));
    assert!(
        publish_calls(&cluster, new) > published_on_new,
        "the push was published on the topic's new master"
    );
}
