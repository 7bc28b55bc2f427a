//! Sentinel mode against a real deployment (issue 13 §1 and §4): a master, a replica and three
//! sentinels from `redis-server` processes (tests/common/sentinel.rs), shared by the tests of
//! this binary, which take it one at a time.
//!
//! Each failover pins the same promises as a lost single Redis (tests/redis_faults_test.rs):
//! the joined client's socket stays up; every push is answered, `ok` only if Redis took it
//! (checked on subscribers of both data nodes) and otherwise exactly `backend unavailable`;
//! downstream delivery resumes within 3 s of the switch (the moment the first sentinel names
//! the new master, polled with `SENTINEL get-master-addr-by-name`); `/healthz` is green after.
//! After a `kill -9` of the master, `/healthz` is also seen degraded during the gap.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use common::failover::{
    self, healthz, push_through_gap, push_times, received, resumed_within, the_gap_and_after_hold,
    Member, UpstreamWatcher,
};
use common::phoenix::wait_until;
use common::sentinel::SentinelDeployment;
use common::{sign_token, ChannelServer, ServerOptions, TestSocket, TEST_JWT_SECRET};

const TOPIC: &str = "room:sentinel";
/// Issue 13 §4: delivery resumes within this of the switch.
const RESUME_BOUND: Duration = Duration::from_secs(3);

fn start_server(deployment: &SentinelDeployment) -> ChannelServer {
    let args = deployment.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ChannelServer::start_with_redis_args(&args, ServerOptions::default())
}

/// Publishes probes to [`TOPIC`] on the master the sentinels name (classic `PUBLISH` or the
/// function) until `member` receives one; how long after `since` that was.
fn delivery_resumes_by(
    deployment: &SentinelDeployment,
    member: &mut Member,
    since: Instant,
    give_up: Duration,
    path: Path,
) -> Duration {
    let client = redis::Client::open(deployment.master_url()).expect("a URL we built");
    let mut conn: Option<redis::Connection> = None;
    let publish = |n: u64| {
        if conn.is_none() {
            conn = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .ok();
        }
        let Some(c) = conn.as_mut() else {
            return false;
        };
        let payload = json!({ "n": n }).to_string();
        let published: redis::RedisResult<redis::Value> = match path {
            Path::Classic => redis::cmd("PUBLISH")
                .arg(format!("to:{TOPIC}:probe"))
                .arg(payload)
                .query(c),
            Path::Function => redis::cmd("FCALL")
                .arg("channel_publish")
                .arg(1)
                .arg(TOPIC)
                .arg("probe")
                .arg(payload)
                .query(c),
        };
        if published.is_err() {
            conn = None;
        }
        published.is_ok()
    };
    failover::delivery_resumes(member, since, give_up, publish, || deployment.logs())
}

fn delivery_resumes(
    deployment: &SentinelDeployment,
    member: &mut Member,
    since: Instant,
    give_up: Duration,
) -> Duration {
    delivery_resumes_by(deployment, member, since, give_up, Path::Classic)
}

/// How a probe is published.
#[derive(Clone, Copy)]
enum Path {
    /// `PUBLISH to:<topic>:probe`.
    Classic,
    /// `FCALL channel_publish 1 <topic> probe …`.
    Function,
}

#[test]
fn delivery_follows_a_sentinel_failover_within_3s_of_the_switch() {
    let mut deployment = SentinelDeployment::shared();
    let server = start_server(&deployment);
    let mut alice = Member::join(&server, TOPIC);
    delivery_resumes(&deployment, &mut alice, Instant::now(), RESUME_BOUND);
    let watcher = UpstreamWatcher::start(deployment.data_urls(), TOPIC);

    let (before_oks, _) = push_times(&server, &mut alice, "before", 3);
    assert_eq!(before_oks.len(), 3, "pushes before the failover are ok");

    let (switch, new_master) = deployment.failover();
    let took = delivery_resumes(&deployment, &mut alice, switch, Duration::from_secs(15));
    let event = format!("SENTINEL FAILOVER's switch to {new_master}");
    resumed_within(took, RESUME_BOUND, &event, &server);
    let (after_oks, _) = push_times(&server, &mut alice, "after", 3);
    watcher.saw_every(
        &[before_oks, after_oks.clone()].concat(),
        &mut HashSet::new(),
    );
    wait_until(RESUME_BOUND, "/healthz is 200 after the failover", || {
        healthz(&server) == 200
    });
    // The publisher follows too: pushes go to the new master.
    assert_eq!(after_oks.len(), 3, "pushes after the failover are ok");
    deployment.settle();
}

#[test]
fn delivery_follows_a_killed_master_within_3s_of_the_switch() {
    let mut deployment = SentinelDeployment::shared();
    let server = start_server(&deployment);
    let mut alice = Member::join(&server, TOPIC);
    delivery_resumes(&deployment, &mut alice, Instant::now(), RESUME_BOUND);
    let watcher = UpstreamWatcher::start(deployment.data_urls(), TOPIC);

    let old = deployment.kill_master();
    // Push through the gap until the sentinels name a new master.
    let (pending, degraded) =
        push_through_gap(&server, &mut alice, "gap", || !deployment.is_master(old));
    let (switch, new_master) = deployment.wait_for_switch_from(old);
    let took = delivery_resumes(&deployment, &mut alice, switch, Duration::from_secs(15));
    let event = format!("the switch to {new_master} after a kill -9 of the master");
    resumed_within(took, RESUME_BOUND, &event, &server);
    the_gap_and_after_hold(
        &server,
        &mut alice,
        &watcher,
        pending,
        degraded,
        RESUME_BOUND,
    );
    deployment.restart_killed(old);
}

#[test]
fn the_function_publishes_under_sentinel_and_follows_a_failover_within_3s() {
    let mut deployment = SentinelDeployment::shared();
    let server = start_server(&deployment);
    let mut alice = Member::join(&server, TOPIC);
    // The join reply waited for its SSUBSCRIBE, so the first probe should arrive; the helper
    // repeats probes until one does all the same.
    delivery_resumes_by(
        &deployment,
        &mut alice,
        Instant::now(),
        RESUME_BOUND,
        Path::Function,
    );
    let (switch, new_master) = deployment.failover();
    let took = delivery_resumes_by(
        &deployment,
        &mut alice,
        switch,
        Duration::from_secs(15),
        Path::Function,
    );
    let event = format!("SENTINEL FAILOVER's switch to {new_master} (function path)");
    resumed_within(took, RESUME_BOUND, &event, &server);
    deployment.settle();
}

/// Connections holding `SSUBSCRIBE` to `topic`'s sharded channel on the current master.
fn shard_subscribers(deployment: &SentinelDeployment, topic: &str) -> i64 {
    let client = redis::Client::open(deployment.master_url()).expect("a URL we built");
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("the master answers");
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(format!("channel:to:{{{topic}}}"))
        .query(&mut conn)
        .expect("PUBSUB SHARDNUMSUB");
    count
}

#[test]
fn under_sentinel_only_the_process_with_a_subscriber_receives_and_the_last_leave_unsubscribes() {
    let deployment = SentinelDeployment::shared();
    let quiet = || {
        let args = deployment.serve_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Presence off: its diffs would move every process's received counter.
        ChannelServer::start_with_redis_args(
            &args,
            ServerOptions::default().config("[channel]\npresence_enabled = false\n"),
        )
    };
    let (serving, idle) = (quiet(), quiet());
    let topic = "room:sentinel-interest";
    let mut client = TestSocket::connect(&serving.ws_url("2.0.0"));
    client.join_ok(topic, &sign_token(TEST_JWT_SECRET, topic, "bob", 3600));
    wait_until(Duration::from_secs(5), "the process subscribed", || {
        shard_subscribers(&deployment, topic) == 1
    });
    let (serving_before, idle_before) = (received(&serving), received(&idle));
    let client_of_master = redis::Client::open(deployment.master_url()).expect("a URL we built");
    let mut conn = client_of_master
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("the master answers");
    let positions: Vec<String> = (0..5)
        .map(|n| {
            redis::cmd("FCALL")
                .arg("channel_publish")
                .arg(1)
                .arg(topic)
                .arg("n")
                .arg(json!({ "n": n }).to_string())
                .query(&mut conn)
                .expect("FCALL on the master")
        })
        .collect();
    for (n, position) in positions.iter().enumerate() {
        // The position the function returned rides in the ref slot.
        assert_eq!(
            client.recv_json(),
            json!([null, position, topic, "n", { "n": n }])
        );
    }
    assert_eq!(received(&serving) - serving_before, 5.0);
    assert_eq!(
        received(&idle) - idle_before,
        0.0,
        "the idle process got them"
    );
    client.leave(topic);
    wait_until(Duration::from_secs(5), "the process unsubscribed", || {
        shard_subscribers(&deployment, topic) == 0
    });
}
