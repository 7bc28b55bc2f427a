//! The Redis Cluster test harness itself (tests/common/cluster.rs), against the real six-node
//! cluster it starts: it comes up whole (3 masters each with a replica in sync, every node
//! agreeing on the slot map); the slot of a key is the one Redis computes; `kill -9` of a master
//! promotes its replica (the time it took is printed) and the killed node comes back as a
//! replica; a slot migration moves the slot and its keys; the publish helper follows `MOVED`.
//!
//! The server under test plays no part here: these tests pin the tools the cluster tests of
//! issue 13 stand on, so that a failure there is not blamed on the server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cluster::{key_slot, RedisCluster, MASTERS, NODE_TIMEOUT_MS};

#[test]
fn cluster_comes_up_with_three_masters_each_with_a_replica_in_sync() {
    let cluster = RedisCluster::shared();
    let masters = cluster.masters();
    assert_eq!(masters.len(), MASTERS, "masters {masters:?}");
    for master in &masters {
        let replicas = cluster.replicas_of(*master);
        assert_eq!(replicas.len(), 1, "replicas of {master}: {replicas:?}");
    }
    let seeds = cluster.seed_list();
    assert_eq!(seeds.split(',').count(), 2 * MASTERS, "{seeds}");
    assert_eq!(
        cluster.serve_args(),
        vec!["--redis-cluster".to_string(), seeds]
    );
    // Every live node sees the same six nodes.
    for (port, view) in cluster.views() {
        assert_eq!(view.len(), 2 * MASTERS, "node {port} sees {view:?}");
    }
}

#[test]
fn key_slot_is_the_slot_redis_computes() {
    // The CRC16 (XMODEM) check value of "123456789" is 0x31C3, below 16384: its own slot.
    assert_eq!(key_slot(b"123456789"), 0x31C3, "the CRC16 check value");
    let cluster = RedisCluster::shared();
    let port = cluster.masters()[0];
    let mut conn = cluster.connection(port);
    for key in [
        "foo",
        "room:1",
        "room:lobby",
        "lt:399",
        "{room:1}:history",
        "a{}b",
        "{}",
        "x{y",
    ] {
        let redis_says: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("CLUSTER KEYSLOT answers");
        assert_eq!(key_slot(key.as_bytes()), redis_says, "slot of {key:?}");
    }
    assert_eq!(key_slot(b"{room:1}:history"), key_slot(b"room:1"));
}

#[test]
fn a_key_is_served_by_its_master_and_other_masters_redirect() {
    let cluster = RedisCluster::shared();
    let key = "{room:owner}:k";
    let owner = cluster.master_of(key);
    let mut conn = cluster.connection(owner);
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("v")
        .query(&mut conn)
        .expect("the owner accepts the write");
    let other = cluster.other_master_than(owner);
    let err = redis::cmd("GET")
        .arg(key)
        .query::<Option<String>>(&mut cluster.connection(other))
        .expect_err("another master redirects");
    assert_eq!(err.code(), Some("MOVED"), "{err}");
    let mut get = redis::cmd("GET");
    get.arg(key);
    let value =
        RedisCluster::query_following_redirects(other, &get).expect("the redirect is followed");
    assert_eq!(value, redis::Value::BulkString(b"v".to_vec()));
}

#[test]
fn killing_a_master_promotes_its_replica_and_the_master_comes_back_as_a_replica() {
    let mut cluster = RedisCluster::shared();
    let key = "room:failover";
    let master = cluster.master_of(key);
    let replicas = cluster.replicas_of(master);
    let failover = cluster.kill_master_of(key);
    assert_eq!(failover.killed, master);
    assert_eq!(vec![failover.promoted], replicas, "the replica is promoted");
    let promotion = failover.promoted_at - failover.killed_at;
    let agreement = failover.settled_at - failover.killed_at;
    eprintln!(
        "failover of {master} (cluster-node-timeout {NODE_TIMEOUT_MS} ms): replica {} promoted \
         {promotion:?} after kill -9, whole cluster ok and agreeing {agreement:?} after",
        failover.promoted
    );
    assert_eq!(cluster.master_of(key), failover.promoted);
    assert!(!cluster.live_ports().contains(&master));
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("after")
        .query(&mut cluster.connection(failover.promoted))
        .expect("the promoted replica takes writes for the slot");

    let restart = Instant::now();
    cluster.restart_killed(master);
    eprintln!(
        "node {master} back as a replica of {} in sync after {:?}",
        failover.promoted,
        restart.elapsed()
    );
    assert_eq!(cluster.replicas_of(failover.promoted), vec![master]);
    assert_eq!(cluster.master_of(key), failover.promoted);
}

#[test]
fn migrating_a_slot_moves_it_and_its_keys_to_the_other_master() {
    let mut cluster = RedisCluster::shared();
    let topic = "room:migrate";
    let key = "{room:migrate}:k";
    let from = cluster.master_of(topic);
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("kept")
        .query(&mut cluster.connection(from))
        .expect("the owner accepts the write");
    let to = cluster.other_master_than(from);
    let started = Instant::now();
    let migration = cluster.migrate_slot_of(topic, to);
    eprintln!(
        "slot {} moved from {from} to {to} with {} key(s), every node agreeing after {:?}",
        migration.slot,
        migration.keys_moved,
        started.elapsed()
    );
    assert_eq!((migration.from, migration.to), (from, to));
    assert_eq!(migration.slot, key_slot(topic.as_bytes()));
    assert_eq!(migration.keys_moved, 1);
    assert_eq!(cluster.master_of(topic), to);
    let value: Option<String> = redis::cmd("GET")
        .arg(key)
        .query(&mut cluster.connection(to))
        .expect("the new owner serves the key");
    assert_eq!(value.as_deref(), Some("kept"));
    let err = redis::cmd("GET")
        .arg(key)
        .query::<Option<String>>(&mut cluster.connection(from))
        .expect_err("the old owner redirects");
    assert_eq!(
        err.redirect_node().map(|(_, slot)| slot),
        Some(migration.slot)
    );
}

#[test]
fn fcall_publish_runs_on_the_topics_master_following_moved() {
    let cluster = RedisCluster::shared();
    // A stand-in for the server's library (same library and function name, so that a server's
    // `FUNCTION LOAD REPLACE` would replace it): counts its calls in the topic's key.
    let library = "#!lua name=channel\n\
        redis.register_function('channel_publish', function(keys, args)\n\
          return redis.call('INCR', keys[1])\n\
        end)";
    for master in cluster.masters() {
        let _: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(library)
            .query(&mut cluster.connection(master))
            .expect("FUNCTION LOAD works on Redis 7");
    }
    let topic = "room:fcall";
    let owner = cluster.master_of(topic);
    let other = cluster.other_master_than(owner);
    let first = RedisCluster::fcall_publish_via(other, topic, "msg", b"{}")
        .expect("MOVED is followed to the owner");
    let second = cluster
        .fcall_publish(topic, "msg", b"{}")
        .expect("the owner runs it");
    assert_eq!(
        (first, second),
        (redis::Value::Int(1), redis::Value::Int(2))
    );
    let count: i64 = redis::cmd("GET")
        .arg(topic)
        .query(&mut cluster.connection(owner))
        .expect("the owner holds the topic's key");
    assert_eq!(count, 2);
}

#[test]
fn shard_subscribers_counts_an_ssubscribe_on_the_slots_master() {
    let cluster = RedisCluster::shared();
    let channel = "channel:to:{room:sharded}";
    assert_eq!(cluster.shard_subscribers(channel), 0);
    let owner = cluster.master_of(channel);
    assert_eq!(
        owner,
        cluster.master_of("room:sharded"),
        "the hash tag picks the slot"
    );
    let mut subscriber = TcpStream::connect(("127.0.0.1", owner)).expect("the owner listens");
    subscriber
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout is accepted");
    let command = format!(
        "*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{channel}\r\n",
        channel.len()
    );
    subscriber
        .write_all(command.as_bytes())
        .expect("the command is written");
    let mut confirmation = [0u8; 64];
    let n = subscriber
        .read(&mut confirmation)
        .expect("SSUBSCRIBE is confirmed");
    let text = String::from_utf8_lossy(&confirmation[..n]);
    assert!(text.contains("ssubscribe"), "{text:?}");
    assert_eq!(cluster.shard_subscribers(channel), 1);
    drop(subscriber);
    common::phoenix::wait_until(Duration::from_secs(5), "the subscription to go", || {
        cluster.shard_subscribers(channel) == 0
    });
}

#[test]
fn a_slot_being_migrated_answers_ask_for_moved_keys_and_the_helper_follows_it() {
    let mut cluster = RedisCluster::shared();
    let topic = "room:asking";
    let kept = "{room:asking}:kept";
    let absent = "{room:asking}:absent";
    let from = cluster.master_of(topic);
    let _: () = redis::cmd("SET")
        .arg(kept)
        .arg("v")
        .query(&mut cluster.connection(from))
        .expect("the owner accepts the write");
    let to = cluster.other_master_than(from);
    let pending = cluster.begin_slot_migration(topic, to);
    let mut source = cluster.connection(from);
    let still_there: Option<String> = redis::cmd("GET")
        .arg(kept)
        .query(&mut source)
        .expect("the source serves a key it still has");
    assert_eq!(still_there.as_deref(), Some("v"));
    let err = redis::cmd("GET")
        .arg(absent)
        .query::<Option<String>>(&mut source)
        .expect_err("the source sends a key it does not have to the target");
    assert_eq!(err.code(), Some("ASK"), "{err}");
    let mut get = redis::cmd("GET");
    get.arg(absent);
    assert_eq!(
        RedisCluster::query_following_redirects(from, &get),
        Ok(redis::Value::Nil),
        "ASKING on the target answers for the slot"
    );
    let migration = cluster.finish_slot_migration(pending);
    assert_eq!(
        (migration.from, migration.to, migration.keys_moved),
        (from, to, 1)
    );
    assert_eq!(cluster.master_of(topic), to);
}
