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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::phoenix::wait_until;
use common::sentinel::SentinelDeployment;
use common::{
    http_request, sign_token, ChannelServer, Frame, ServerOptions, TestSocket, TEST_JWT_SECRET,
};

const TOPIC: &str = "room:sentinel";
/// Issue 13 §4: delivery resumes within this of the switch.
const RESUME_BOUND: Duration = Duration::from_secs(3);
/// A push is answered within this whatever happens (pipeline deadline 3 s, connect 2 s).
const REPLY_DEADLINE: Duration = Duration::from_secs(10);

fn healthz(server: &ChannelServer) -> u16 {
    http_request(server.addr(), "GET", "/healthz", &[], b"").status
}

fn start_server(deployment: &SentinelDeployment) -> ChannelServer {
    let args = deployment.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ChannelServer::start_with_redis_args(&args, ServerOptions::default())
}

/// A V2 client joined to [`TOPIC`]: files replies by ref and `probe` broadcasts; any close
/// fails the test (sockets must stay up through a failover).
struct Member {
    socket: TestSocket,
    next_ref: u64,
    replies: HashMap<String, Value>,
    probes: Vec<u64>,
}

impl Member {
    fn join(server: &ChannelServer) -> Member {
        let mut socket = TestSocket::connect(&server.ws_url("2.0.0"));
        let token = sign_token(TEST_JWT_SECRET, TOPIC, "alice", 3600);
        socket.send_json(&json!(["j1", "j1", TOPIC, "phx_join", {"token": token}]));
        let mut member = Member {
            socket,
            next_ref: 0,
            replies: HashMap::new(),
            probes: Vec::new(),
        };
        let reply = member.reply("j1");
        assert_eq!(
            reply,
            json!(["j1", "j1", TOPIC, "phx_reply", {"status": "ok", "response": {}}])
        );
        member
    }

    fn pump(&mut self, timeout: Duration) -> bool {
        let Some(frame) = self.socket.try_recv_frame(timeout) else {
            return false;
        };
        let value = match frame {
            Frame::Text(_) => frame.json(),
            other => panic!("the socket must stay up through a failover, got {other:?}"),
        };
        match value[3].as_str() {
            Some("phx_reply") => {
                let r = value[1].as_str().unwrap_or_default().to_string();
                assert!(self.replies.insert(r, value.clone()).is_none(), "{value}");
            }
            Some("probe") => self.probes.push(value[4]["n"].as_u64().unwrap_or(u64::MAX)),
            Some("presence_state") | Some("presence_diff") => {}
            _ => panic!("unexpected frame {value}"),
        }
        true
    }

    fn reply(&mut self, r: &str) -> Value {
        let deadline = Instant::now() + REPLY_DEADLINE;
        while !self.replies.contains_key(r) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no reply to {r}: silence is never an answer"
            );
            self.pump(left);
        }
        self.replies.remove(r).expect("checked above")
    }

    /// Pushes `{"tag": tag}` as event `say`; returns the ref.
    fn push(&mut self, tag: &str) -> String {
        self.next_ref += 1;
        let r = format!("p{}", self.next_ref);
        self.socket
            .send_json(&json!(["j1", r, TOPIC, "say", {"tag": tag}]));
        r
    }

    /// True for `ok`, false for exactly `backend unavailable`; anything else fails.
    fn answered_ok(&mut self, r: &str) -> bool {
        let reply = self.reply(r);
        let ok = json!(["j1", r, TOPIC, "phx_reply", {"status": "ok", "response": {}}]);
        let unavailable = json!(["j1", r, TOPIC, "phx_reply",
            {"status": "error", "response": {"reason": "backend unavailable"}}]);
        assert!(
            reply == ok || reply == unavailable,
            "push {r} answered {reply}: neither ok nor backend unavailable"
        );
        reply == ok
    }
}

/// Publishes `{"n": k}` to `to:<TOPIC>:probe` on the master the sentinels name, every 25 ms,
/// until `member` receives one published from now on; returns how long after `since` that
/// was. Panics after `give_up`.
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

fn delivery_resumes_by(
    deployment: &SentinelDeployment,
    member: &mut Member,
    since: Instant,
    give_up: Duration,
    path: Path,
) -> Duration {
    static NEXT_PROBE: AtomicU64 = AtomicU64::new(1);
    let first = NEXT_PROBE.load(Ordering::SeqCst);
    let client = redis::Client::open(deployment.master_url()).expect("a URL we built");
    let mut conn: Option<redis::Connection> = None;
    loop {
        assert!(
            since.elapsed() <= give_up,
            "no downstream delivery within {give_up:?}\n{}",
            deployment.logs()
        );
        if conn.is_none() {
            conn = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .ok();
        }
        if let Some(c) = conn.as_mut() {
            let n = NEXT_PROBE.fetch_add(1, Ordering::SeqCst);
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
        }
        member.pump(Duration::from_millis(25));
        while member.pump(Duration::ZERO) {}
        if member.probes.iter().any(|&k| k >= first) {
            member.probes.clear();
            return since.elapsed();
        }
    }
}

/// Watches `from:<TOPIC>:*` on every data node and collects the tags of the pushes Redis took,
/// whichever node was master when it did. The sentinels kill every pub/sub client of a node
/// whose role they change (`CLIENT KILL TYPE pubsub` at promotion and at demotion), so each
/// node's watcher subscribes again at once (within 20 ms): the server's publisher cannot take
/// a push on the promoted node before the sentinels announce it, ask it `ROLE` and load its
/// scripts, which is far longer.
struct UpstreamWatcher {
    seen: std::sync::mpsc::Receiver<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl UpstreamWatcher {
    fn start(deployment: &SentinelDeployment) -> UpstreamWatcher {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut ready = Vec::new();
        for url in deployment.data_urls() {
            let (tx, stop) = (tx.clone(), stop.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            ready.push(ready_rx);
            std::thread::spawn(move || watch(&url, &tx, &stop, ready_tx));
        }
        for r in ready {
            r.recv_timeout(Duration::from_secs(5))
                .expect("a watcher subscribes on every data node");
        }
        UpstreamWatcher { seen: rx, stop }
    }

    /// Every tag answered `ok` was seen on some node (no false ok).
    fn saw_every(&self, oks: &[String], seen: &mut HashSet<String>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for tag in oks {
            while !seen.contains(tag) {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(next) = self.seen.recv_timeout(left) else {
                    panic!("push {tag} was answered ok but no node published it (a false ok)");
                };
                seen.insert(next);
            }
        }
    }
}

impl Drop for UpstreamWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn watch(
    url: &str,
    seen: &std::sync::mpsc::Sender<String>,
    stop: &std::sync::atomic::AtomicBool,
    ready: std::sync::mpsc::Sender<()>,
) {
    let client = redis::Client::open(url).expect("a URL we built");
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            // The node is down (killed): try again shortly.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let mut pubsub = conn.as_pubsub();
        if pubsub.psubscribe(format!("from:{TOPIC}:*")).is_err()
            || pubsub
                .set_read_timeout(Some(Duration::from_millis(100)))
                .is_err()
        {
            continue;
        }
        let _ = ready.send(());
        while !stop.load(Ordering::Relaxed) {
            match pubsub.get_message() {
                Ok(msg) => {
                    let payload: Value =
                        serde_json::from_slice(msg.get_payload_bytes()).unwrap_or_default();
                    let tag = payload["tag"].as_str().unwrap_or_default().to_string();
                    if seen.send(tag).is_err() {
                        return;
                    }
                }
                Err(err) if err.is_timeout() => {}
                // Killed by the sentinels or the node died: subscribe again.
                Err(_) => break,
            }
        }
    }
}

/// Pushes one tagged message every 50 ms while `until` says the gap lasts, watching /healthz;
/// returns the refs with their tags and whether /healthz was seen degraded.
fn push_through_gap(
    server: &ChannelServer,
    member: &mut Member,
    label: &str,
    mut until: impl FnMut() -> bool,
) -> (Vec<(String, String)>, bool) {
    let mut pending = Vec::new();
    let mut degraded = false;
    let mut i = 0;
    while !until() {
        let tag = format!("{label}-{i}");
        i += 1;
        pending.push((member.push(&tag), tag));
        degraded |= healthz(server) == 503;
        // Pacing of the pushes, not a wait for an event.
        member.pump(Duration::from_millis(50));
    }
    (pending, degraded)
}

fn answers(member: &mut Member, pending: Vec<(String, String)>) -> (Vec<String>, usize) {
    let mut oks = Vec::new();
    let mut unavailable = 0;
    for (r, tag) in pending {
        if member.answered_ok(&r) {
            oks.push(tag);
        } else {
            unavailable += 1;
        }
    }
    (oks, unavailable)
}

#[test]
fn delivery_follows_a_sentinel_failover_within_3s_of_the_switch() {
    let mut deployment = SentinelDeployment::shared();
    let server = start_server(&deployment);
    let mut alice = Member::join(&server);
    delivery_resumes(&deployment, &mut alice, Instant::now(), RESUME_BOUND);
    let watcher = UpstreamWatcher::start(&deployment);
    let mut seen = HashSet::new();

    let (before_oks, _) = {
        let (pending, _) = push_through_gap(&server, &mut alice, "before", {
            let mut n = 0;
            move || {
                n += 1;
                n > 3
            }
        });
        answers(&mut alice, pending)
    };
    assert_eq!(before_oks.len(), 3, "pushes before the failover are ok");

    let (switch, new_master) = deployment.failover();
    let took = delivery_resumes(&deployment, &mut alice, switch, Duration::from_secs(15));
    eprintln!("SENTINEL FAILOVER: delivery resumed {took:?} after the switch");
    assert!(
        took <= RESUME_BOUND,
        "delivery resumed {took:?} after the switch to {new_master} (bound {RESUME_BOUND:?})\n{}",
        server.log()
    );
    let (pending, _) = push_through_gap(&server, &mut alice, "after", {
        let mut n = 0;
        move || {
            n += 1;
            n > 3
        }
    });
    let (after_oks, _) = answers(&mut alice, pending);
    watcher.saw_every(&[before_oks, after_oks.clone()].concat(), &mut seen);
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
    let mut alice = Member::join(&server);
    delivery_resumes(&deployment, &mut alice, Instant::now(), RESUME_BOUND);
    let watcher = UpstreamWatcher::start(&deployment);
    let mut seen = HashSet::new();

    let old = deployment.kill_master();
    // Push through the gap until the sentinels name a new master.
    let (pending, degraded) =
        push_through_gap(&server, &mut alice, "gap", || !deployment.is_master(old));
    let (switch, new_master) = deployment.wait_for_switch_from(old);
    let took = delivery_resumes(&deployment, &mut alice, switch, Duration::from_secs(15));
    eprintln!("kill -9 of the master: delivery resumed {took:?} after the switch");
    assert!(
        took <= RESUME_BOUND,
        "delivery resumed {took:?} after the switch to {new_master} (bound {RESUME_BOUND:?})\n{}",
        server.log()
    );
    let (gap_oks, unavailable) = answers(&mut alice, pending);
    assert!(
        unavailable > 0,
        "pushes while no master answered must be refused (oks {gap_oks:?})"
    );
    assert!(degraded, "/healthz must say 503 while the master is gone");
    wait_until(RESUME_BOUND, "/healthz is 200 after the failover", || {
        healthz(&server) == 200
    });
    let (pending, _) = push_through_gap(&server, &mut alice, "after", {
        let mut n = 0;
        move || {
            n += 1;
            n > 3
        }
    });
    let (after_oks, _) = answers(&mut alice, pending);
    assert_eq!(after_oks.len(), 3, "pushes after the failover are ok");
    watcher.saw_every(&[gap_oks, after_oks].concat(), &mut seen);
    deployment.restart_killed(old);
}

#[test]
fn the_function_publishes_under_sentinel_and_follows_a_failover_within_3s() {
    let mut deployment = SentinelDeployment::shared();
    let server = start_server(&deployment);
    let mut alice = Member::join(&server);
    // The join's SSUBSCRIBE is not waited for by the join reply yet: probes are repeated
    // until one arrives.
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
    eprintln!("SENTINEL FAILOVER, function path: delivery resumed {took:?} after the switch");
    assert!(
        took <= RESUME_BOUND,
        "FCALL delivery resumed {took:?} after the switch to {new_master} (bound {RESUME_BOUND:?})\n{}",
        server.log()
    );
    deployment.settle();
}

/// `channel_redis_messages_received_total` of `server`.
fn received(server: &ChannelServer) -> f64 {
    let text = http_request(server.addr(), "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix("channel_redis_messages_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no received counter in /metrics:\n{text}"))
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
