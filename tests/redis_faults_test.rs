//! Redis faults under joined clients (issue 5 item 1): the subscriber connection killed
//! (`CLIENT KILL TYPE pubsub`), Redis unreachable at start-up, Redis stalled (`DEBUG SLEEP`),
//! Redis killed and restarted, and network faults made by a TCP relay between the server and
//! Redis (cut, blackhole, a silently dead subscription).
//!
//! Every case pins the same promises: sockets stay up; every push is answered, `ok` only if
//! Redis accepted it (checked on a subscriber of the real Redis) and otherwise exactly
//! `{"status":"error","response":{"reason":"backend unavailable"}}`, never silence; `/healthz`
//! is 503 while Redis is unusable and 200 after; downstream delivery resumes within 2 s of
//! Redis answering again; and a member joined before the fault is in the `presence_state` of a
//! newcomer after it (with one meta: a resync must not duplicate it).
//!
//! Timings come from `src/redis/`: the reader PINGs after 3 s of silence (its read timeout:
//! no polling tick) and gives the PING 2 s; connects have a 2 s deadline; reconnects back off
//! 50 ms → 1 s; the publisher's pipeline deadline is 3 s.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::phoenix::wait_until;
use common::{
    http_request, sign_token, ChannelServer, Frame, RedisServer, RedisSubscriber, ServerOptions,
    TcpRelay, TestSocket, TEST_JWT_SECRET,
};

const TOPIC: &str = "room:faults";
/// Issue 5: delivery resumes within this of Redis answering again.
const RESUME_BOUND: Duration = Duration::from_secs(2);
/// A push during a fault is answered within this: one pipeline deadline (3 s), one connect
/// attempt (2 s) and a backoff step, with margin.
const REPLY_DEADLINE: Duration = Duration::from_secs(10);
/// How long the server may take to notice a fault it can see at once (EOF, refused connect).
const NOTICE_WAIT: Duration = Duration::from_secs(5);
/// Reader liveness: silence before the PING (3 s, the read timeout itself) + the PING's
/// deadline (2 s): a dead subscription is declared dead at most this long after its last
/// message.
const DEAD_SUBSCRIPTION_DETECTED: Duration = Duration::from_millis(5000);

fn token(topic: &str, id: &str) -> String {
    sign_token(TEST_JWT_SECRET, topic, id, 3600)
}

fn healthz(server: &ChannelServer) -> u16 {
    http_request(server.addr(), "GET", "/healthz", &[], b"").status
}

/// How a push was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    BackendUnavailable,
}

/// A V2 client joined to [`TOPIC`] that sorts what it receives: replies by ref, `probe`
/// broadcasts, presence states. Any close or disconnect fails the test: sockets must stay up.
struct Member {
    socket: TestSocket,
    join_ref: String,
    next_ref: u64,
    replies: HashMap<String, Value>,
    probes: Vec<u64>,
    states: Vec<Value>,
    /// The `presence_state` that followed the join, when it was waited for.
    joined_state: Option<Value>,
}

impl Member {
    /// Connects and joins [`TOPIC`] as `id`; waits for the `presence_state` when
    /// `expect_state` (Redis up), so that the member is known to be registered.
    fn join(server: &ChannelServer, id: &str, expect_state: bool) -> Member {
        let mut member = Member {
            socket: TestSocket::connect(&server.ws_url("2.0.0")),
            join_ref: "j1".to_string(),
            next_ref: 0,
            replies: HashMap::new(),
            probes: Vec::new(),
            states: Vec::new(),
            joined_state: None,
        };
        member
            .socket
            .send_json(&json!(["j1", "j1", TOPIC, "phx_join", {"token": token(TOPIC, id)}]));
        let reply = member.reply("j1", Duration::from_secs(5));
        assert_eq!(
            reply,
            json!(["j1", "j1", TOPIC, "phx_reply", {"status": "ok", "response": {}}]),
            "join of {id}"
        );
        if expect_state {
            member.joined_state = Some(member.presence_state(Duration::from_secs(5)));
        }
        member
    }

    /// Reads one frame (at most `timeout`) and files it; false if nothing came.
    fn pump(&mut self, timeout: Duration) -> bool {
        let Some(frame) = self.socket.try_recv_frame(timeout) else {
            return false;
        };
        let value = match frame {
            Frame::Text(_) => frame.json(),
            other => panic!("the socket must stay up and see only text frames, got {other:?}"),
        };
        match value[3].as_str() {
            Some("phx_reply") => {
                let r = value[1].as_str().unwrap_or_default().to_string();
                assert!(
                    self.replies.insert(r.clone(), value.clone()).is_none(),
                    "two replies to ref {r}: the second is {value}"
                );
            }
            Some("probe") => self.probes.push(value[4]["n"].as_u64().unwrap_or(u64::MAX)),
            Some("presence_state") => self.states.push(value[4].clone()),
            Some("presence_diff") => {}
            _ => panic!("unexpected frame {value}"),
        }
        true
    }

    /// The reply to `r`, reading until it comes; panics on silence.
    fn reply(&mut self, r: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        while !self.replies.contains_key(r) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no reply to ref {r} within {within:?}: silence is never an answer"
            );
            self.pump(left);
        }
        self.replies.remove(r).expect("checked above")
    }

    /// The next `presence_state` (already received or arriving within `within`).
    fn presence_state(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        while self.states.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no presence_state within {within:?}");
            self.pump(left);
        }
        self.states.remove(0)
    }

    /// Pushes `{"tag": tag}` as event `say`; returns the ref.
    fn push(&mut self, tag: &str) -> String {
        self.next_ref += 1;
        let r = format!("p{}", self.next_ref);
        self.socket
            .send_json(&json!([self.join_ref, r, TOPIC, "say", {"tag": tag}]));
        r
    }

    /// The answer to push `r`: `ok {}` or exactly `backend unavailable`; anything else fails.
    fn answer(&mut self, r: &str) -> Answer {
        let reply = self.reply(r, REPLY_DEADLINE);
        let ok = json!([self.join_ref, r, TOPIC, "phx_reply", {"status": "ok", "response": {}}]);
        let unavailable = json!([self.join_ref, r, TOPIC, "phx_reply",
            {"status": "error", "response": {"reason": "backend unavailable"}}]);
        if reply == ok {
            Answer::Ok
        } else if reply == unavailable {
            Answer::BackendUnavailable
        } else {
            panic!("push {r} answered {reply}: neither ok nor backend unavailable")
        }
    }

    /// Pushes `tag` and returns its answer.
    fn push_and_answer(&mut self, tag: &str) -> Answer {
        let r = self.push(tag);
        self.answer(&r)
    }

    /// Skips whatever is pending for `period` (presence traffic after a resync, late probes).
    fn drain(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.pump(left) {
                return;
            }
        }
    }
}
/// After a fault ends at `since`: delivery to `member` resumes within [`RESUME_BOUND`]
/// (`what` names the end of the fault in the failure), then `/healthz` says 200.
fn recovers_within_bound(
    redis: &RedisServer,
    server: &ChannelServer,
    member: &mut Member,
    since: Instant,
    what: &str,
) {
    let took = delivery_resumes(redis, member, since, Duration::from_secs(10));
    assert!(
        took <= RESUME_BOUND,
        "delivery resumed {took:?} after {what} (bound {RESUME_BOUND:?})"
    );
    wait_until(RESUME_BOUND, "/healthz is 200", || healthz(server) == 200);
}

/// Publishes `{"n": k}` to `to:<TOPIC>:probe` on the real Redis every 25 ms until `member`
/// receives one published after `since`; returns how long after `since` that was. Panics
/// after `give_up`. Publishes that fail (Redis still down or asleep) are retried.
fn delivery_resumes(
    redis: &RedisServer,
    member: &mut Member,
    since: Instant,
    give_up: Duration,
) -> Duration {
    let client = redis::Client::open(redis.url()).expect("a redis:// URL we built parses");
    let mut conn: Option<redis::Connection> = None;
    // Probe numbers grow over the whole test: only one published from now on counts.
    static NEXT_PROBE: AtomicU64 = AtomicU64::new(1);
    let first = NEXT_PROBE.load(Ordering::SeqCst);
    member.probes.clear();
    loop {
        if since.elapsed() > give_up {
            panic!("no downstream delivery within {give_up:?} of Redis answering again");
        }
        if conn.is_none() {
            conn = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .ok();
            if let Some(c) = &conn {
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
            }
        }
        if let Some(c) = conn.as_mut() {
            let n = NEXT_PROBE.fetch_add(1, Ordering::SeqCst);
            let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(format!("to:{TOPIC}:probe"))
                .arg(json!({ "n": n }).to_string())
                .query(c);
            if published.is_err() {
                conn = None;
            }
        }
        member.pump(Duration::from_millis(25));
        while member.pump(Duration::ZERO) {}
        if member.probes.iter().any(|&k| k >= first) {
            return since.elapsed();
        }
    }
}

/// A newcomer joins [`TOPIC`] and must see `id` in its `presence_state`, with one meta.
fn newcomer_sees(server: &ChannelServer, newcomer: &str, id: &str) {
    let late = Member::join(server, newcomer, true);
    let state = late.joined_state.expect("join waited for the state");
    let metas = state[id]["metas"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        metas.len(),
        1,
        "{newcomer} must see {id} (joined before the fault) with one meta: {state}"
    );
}

/// Every push answered `ok` reached Redis: its tag is among the `from:<TOPIC>:say` messages.
fn oks_reached_redis(published: &RedisSubscriber, oks: &[String]) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    for tag in oks {
        while !seen.contains(tag) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = published.try_recv_timeout(left) else {
                panic!(
                    "push {tag} was answered ok but never reached Redis (a false ok); saw {seen:?}"
                );
            };
            assert_eq!(message.channel, format!("from:{TOPIC}:say"));
            let payload: Value = serde_json::from_slice(&message.payload).expect("JSON payload");
            seen.push(payload["tag"].as_str().unwrap_or_default().to_string());
        }
    }
}

/// Pushes `count` tagged messages, one every `gap`, and files the answers: returns the tags
/// answered ok and the number answered `backend unavailable`.
fn push_through(
    member: &mut Member,
    label: &str,
    count: usize,
    gap: Duration,
) -> (Vec<String>, usize) {
    let mut oks = Vec::new();
    let mut unavailable = 0;
    let mut pending = Vec::new();
    for i in 0..count {
        let tag = format!("{label}-{i}");
        pending.push((member.push(&tag), tag));
        std::thread::sleep(gap);
    }
    for (r, tag) in pending {
        match member.answer(&r) {
            Answer::Ok => oks.push(tag),
            Answer::BackendUnavailable => unavailable += 1,
        }
    }
    (oks, unavailable)
}

// --- the subscriber connection killed -----------------------------------------------------

#[test]
fn subscriber_killed_by_client_kill_resubscribes_and_delivery_resumes_quickly() {
    let redis = RedisServer::start();
    let server = ChannelServer::start(&redis, ServerOptions::default());
    let mut alice = Member::join(&server, "alice", true);
    delivery_resumes(&redis, &mut alice, Instant::now(), RESUME_BOUND);

    let mut conn = redis.connection();
    let killed_at = Instant::now();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut conn)
        .expect("CLIENT KILL TYPE pubsub works");
    assert!(killed >= 1, "the server's subscriber is a pubsub client");
    // The publisher is not a pubsub client: pushes go on. Ok only if Redis got them.
    let published = redis.subscribe(&format!("from:{TOPIC}:*"));
    let (oks, _) = push_through(&mut alice, "kill", 5, Duration::from_millis(20));
    recovers_within_bound(
        &redis,
        &server,
        &mut alice,
        killed_at,
        "the subscriber was killed",
    );
    oks_reached_redis(&published, &oks);
    alice.drain(Duration::from_millis(200));
    newcomer_sees(&server, "bob", "alice");
}

// --- Redis unreachable at start-up --------------------------------------------------------

#[test]
fn client_joined_while_redis_was_unreachable_at_start_is_served_once_redis_comes_up() {
    // http_surface_test pins 503 at start and delivery to a client joined after Redis came
    // up; this pins the client that joined before, its pushes, and its presence.
    let mut redis = RedisServer::start();
    redis.kill();
    let server = ChannelServer::start_with_redis_url(&redis.url(), ServerOptions::default());
    assert_eq!(healthz(&server), 503);
    let mut alice = Member::join(&server, "alice", false);
    for i in 0..3 {
        assert_eq!(
            alice.push_and_answer(&format!("early-{i}")),
            Answer::BackendUnavailable,
            "a push before Redis ever answered"
        );
    }

    redis.restart();
    let up_at = Instant::now();
    recovers_within_bound(
        &redis,
        &server,
        &mut alice,
        up_at,
        "Redis first answered (member joined before)",
    );
    let published = redis.subscribe(&format!("from:{TOPIC}:*"));
    assert_eq!(alice.push_and_answer("late"), Answer::Ok);
    oks_reached_redis(&published, &["late".to_string()]);
    alice.drain(Duration::from_millis(200));
    newcomer_sees(&server, "bob", "alice");
}

// --- Redis killed and restarted -----------------------------------------------------------

#[test]
fn delivery_resumes_within_2s_of_a_killed_redis_answering_again() {
    // sharding_and_redis_test pins the behaviour around kill -9 and restart; this pins the
    // bound, /healthz after, and presence for a newcomer.
    let mut redis = RedisServer::start();
    let server = ChannelServer::start(&redis, ServerOptions::default());
    let mut alice = Member::join(&server, "alice", true);
    redis.kill();
    wait_until(NOTICE_WAIT, "/healthz is 503", || healthz(&server) == 503);
    let (oks, _) = push_through(&mut alice, "gap", 3, Duration::ZERO);
    assert!(oks.is_empty(), "ok for a push while Redis is dead: {oks:?}");
    // Long enough for the reconnect backoff to reach its 1 s cap.
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    let up_at = Instant::now();
    recovers_within_bound(&redis, &server, &mut alice, up_at, "the restart");
    alice.drain(Duration::from_millis(300));
    newcomer_sees(&server, "bob", "alice");
}

// --- Redis stalled -----------------------------------------------------------------------

#[test]
fn redis_stalled_by_debug_sleep_gets_no_false_ok_and_delivery_resumes() {
    let redis = RedisServer::start_with_args(&["--enable-debug-command", "local"]);
    let server = ChannelServer::start(&redis, ServerOptions::default());
    let mut alice = Member::join(&server, "alice", true);
    let published = redis.subscribe(&format!("from:{TOPIC}:*"));
    delivery_resumes(&redis, &mut alice, Instant::now(), RESUME_BOUND);

    // DEBUG SLEEP blocks the connection that sends it: send it from a thread.
    let mut sleeper = redis.connection();
    let stall = std::thread::spawn(move || {
        let slept: redis::RedisResult<()> =
            redis::cmd("DEBUG").arg("SLEEP").arg(5).query(&mut sleeper);
        slept.expect("DEBUG SLEEP 5 (enable-debug-command local)");
        Instant::now()
    });
    std::thread::sleep(Duration::from_millis(200));
    // Pushes during the stall: the pipeline deadline (3 s) passes before Redis wakes (5 s),
    // so expect `backend unavailable`; an `ok` is acceptable only for what Redis really took.
    let pending: Vec<(String, String)> = (0..5)
        .map(|i| {
            let tag = format!("stall-{i}");
            (alice.push(&tag), tag)
        })
        .collect();
    let mut oks = Vec::new();
    for (r, tag) in &pending {
        if alice.answer(r) == Answer::Ok {
            oks.push(tag.clone());
        }
    }
    let woke_at = stall.join().expect("the sleeper thread does not panic");
    recovers_within_bound(&redis, &server, &mut alice, woke_at, "Redis woke");
    oks_reached_redis(&published, &oks);
    assert_eq!(alice.push_and_answer("after"), Answer::Ok);
    alice.drain(Duration::from_millis(200));
    newcomer_sees(&server, "bob", "alice");
}

#[test]
fn pushes_to_a_stalled_redis_are_answered_within_the_pipeline_deadline() {
    // docs/protocol.md: a push is answered `backend unavailable` when "the pipeline failed or
    // timed out (3 s)". Redis asleep for 8 s: pushes sent together (one pipeline) must all be
    // answered within the deadline plus scheduling margin, and /healthz must say 503 once
    // the publisher has given up on the connection.
    const PIPELINE_DEADLINE: Duration = Duration::from_secs(3);
    let redis = RedisServer::start_with_args(&["--enable-debug-command", "local"]);
    let server = ChannelServer::start(&redis, ServerOptions::default());
    let mut alice = Member::join(&server, "alice", true);
    let mut sleeper = redis.connection();
    let stall = std::thread::spawn(move || {
        let slept: redis::RedisResult<()> =
            redis::cmd("DEBUG").arg("SLEEP").arg(8).query(&mut sleeper);
        slept.expect("DEBUG SLEEP 8 (enable-debug-command local)");
    });
    std::thread::sleep(Duration::from_millis(200));
    // Twenty pushes in one TCP write, so that they reach the publisher together.
    let refs: Vec<String> = (0..20)
        .map(|i| {
            alice.next_ref += 1;
            let r = format!("p{}", alice.next_ref);
            let frame = json!([alice.join_ref, r, TOPIC, "say", {"tag": format!("stall-{i}")}]);
            alice
                .socket
                .inner()
                .write(tungstenite::Message::text(frame.to_string()))
                .expect("buffered WebSocket write");
            r
        })
        .collect();
    alice.socket.inner().flush().expect("WebSocket flush");
    let sent_at = Instant::now();
    let mut saw_503_at = None;
    let mut answered = 0;
    let bound = PIPELINE_DEADLINE + Duration::from_secs(1);
    while answered < refs.len() && sent_at.elapsed() < Duration::from_secs(12) {
        if saw_503_at.is_none() && healthz(&server) == 503 {
            saw_503_at = Some(sent_at.elapsed());
        }
        alice.pump(Duration::from_millis(50));
        answered = refs
            .iter()
            .filter(|r| alice.replies.contains_key(*r))
            .count();
    }
    let took = sent_at.elapsed();
    stall.join().expect("the sleeper thread does not panic");
    assert_eq!(answered, refs.len(), "every push is answered");
    for r in &refs {
        assert_eq!(alice.answer(r), Answer::BackendUnavailable, "push {r}");
    }
    assert!(
        took <= bound,
        "pushes to a stalled Redis were answered {took:?} after they were sent (deadline {PIPELINE_DEADLINE:?})"
    );
    assert!(
        saw_503_at.is_some_and(|at| at <= bound),
        "/healthz must be 503 once the pipeline deadline has passed (first 503 at {saw_503_at:?})"
    );
}

// --- network faults through a relay ------------------------------------------------------

fn behind_relay() -> (RedisServer, TcpRelay, ChannelServer) {
    let redis = RedisServer::start();
    let relay = TcpRelay::to_local_port(redis.port());
    let server = ChannelServer::start_with_redis_url(&relay.url(), ServerOptions::default());
    wait_until(NOTICE_WAIT, "/healthz is 200 through the relay", || {
        healthz(&server) == 200
    });
    (redis, relay, server)
}

#[test]
fn connection_cut_then_restored_resumes_delivery_and_pushes() {
    let (redis, relay, server) = behind_relay();
    let mut alice = Member::join(&server, "alice", true);
    let published = redis.subscribe(&format!("from:{TOPIC}:*"));
    delivery_resumes(&redis, &mut alice, Instant::now(), RESUME_BOUND);

    relay.cut();
    wait_until(NOTICE_WAIT, "/healthz is 503 after the cut", || {
        healthz(&server) == 503
    });
    let (oks, unavailable) = push_through(&mut alice, "cut", 5, Duration::from_millis(50));
    assert!(
        oks.is_empty(),
        "ok for a push while Redis is unreachable: {oks:?}"
    );
    assert_eq!(unavailable, 5);
    assert_eq!(healthz(&server), 503, "still unreachable");

    relay.restore();
    let restored_at = Instant::now();
    recovers_within_bound(&redis, &server, &mut alice, restored_at, "the restore");
    assert_eq!(alice.push_and_answer("after"), Answer::Ok);
    oks_reached_redis(&published, &["after".to_string()]);
    alice.drain(Duration::from_millis(200));
    newcomer_sees(&server, "bob", "alice");
}

#[test]
fn blackholed_redis_is_detected_and_delivery_resumes_after_restore() {
    let (redis, relay, server) = behind_relay();
    let mut alice = Member::join(&server, "alice", true);
    let published = redis.subscribe(&format!("from:{TOPIC}:*"));
    delivery_resumes(&redis, &mut alice, Instant::now(), RESUME_BOUND);

    relay.blackhole();
    let blackholed_at = Instant::now();
    // A push into the void: the pipeline deadline (3 s) answers it.
    let r = alice.push("void");
    assert_eq!(alice.answer(&r), Answer::BackendUnavailable, "no false ok");
    // The reader's probe finds the subscription dead within its own bound.
    wait_until(
        DEAD_SUBSCRIPTION_DETECTED + Duration::from_secs(2),
        "/healthz is 503 while Redis is blackholed",
        || healthz(&server) == 503,
    );
    let detected = blackholed_at.elapsed();
    assert!(
        detected <= DEAD_SUBSCRIPTION_DETECTED + Duration::from_secs(1),
        "a blackholed Redis was noticed after {detected:?}"
    );
    let (oks, _) = push_through(&mut alice, "hole", 3, Duration::ZERO);
    assert!(
        oks.is_empty(),
        "ok for a push while Redis is blackholed: {oks:?}"
    );

    relay.restore();
    let restored_at = Instant::now();
    recovers_within_bound(&redis, &server, &mut alice, restored_at, "the restore");
    assert_eq!(alice.push_and_answer("after"), Answer::Ok);
    // "void" and "hole-*" may reach Redis late (their bytes waited in the relay): an error
    // means "not known to be published", never "not published". "after" must be there.
    let mut seen_after = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen_after {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = published
            .try_recv_timeout(left)
            .expect("the push answered ok after the restore reached Redis");
        seen_after = message.text().contains("\"after\"");
    }
    alice.drain(Duration::from_millis(200));
    newcomer_sees(&server, "bob", "alice");
}

#[test]
fn silently_dead_subscription_is_detected_by_the_probe_and_replaced() {
    // The connections the server holds go silent (a NAT or a middlebox forgot them) while
    // Redis and new connections are fine. Only the reader's PING can notice; it must, and
    // reconnect, with no help from the test.
    let (redis, relay, server) = behind_relay();
    let mut alice = Member::join(&server, "alice", true);
    delivery_resumes(&redis, &mut alice, Instant::now(), RESUME_BOUND);
    relay.blackhole_existing();
    let dead_at = Instant::now();
    // Bound: the last message was just now, so the PING goes out 3 s later (the read times
    // out), fails 2 s after that, the first reconnect waits 50 ms, and connect + subscribe
    // are quick on loopback: 5.05 s, and 1 s of margin for a loaded machine.
    let bound = DEAD_SUBSCRIPTION_DETECTED + Duration::from_millis(50) + Duration::from_secs(1);
    let took = delivery_resumes(&redis, &mut alice, dead_at, Duration::from_secs(15));
    eprintln!("a silently dead subscription was replaced after {took:?} (bound {bound:?})");
    assert!(
        took <= bound,
        "a silently dead subscription was replaced after {took:?} (bound {bound:?})"
    );
    assert!(
        relay.accepted() >= 3,
        "the reader reconnected through the relay ({} connections)",
        relay.accepted()
    );
    wait_until(NOTICE_WAIT, "/healthz is 200", || healthz(&server) == 200);
    newcomer_sees(&server, "bob", "alice");
}

#[test]
fn admin_members_see_redis_go_away_when_the_connection_is_cut() {
    // admin_test pins this for kill -9 (the publisher notices). Here only the subscriber sees
    // the cut at once (EOF); the admin channel must still hear of it without any push.
    let (_redis, relay, server) = behind_relay();
    let mut admin = TestSocket::connect(&server.ws_url("2.0.0"));
    admin.send_json(&json!(["a", "a", "admin", "phx_join", {"token": token("admin", "ops")}]));
    let redis_event = |admin: &mut TestSocket, within: Duration| -> Value {
        let (event, _) = admin.recv_json_until(within, |v| v[3] == "redis");
        event[4].clone()
    };
    relay.cut();
    let down = redis_event(&mut admin, NOTICE_WAIT);
    assert_eq!(down["connected"], json!(false), "{down}");
    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = redis_event(&mut admin, left);
        if event["connected"] == json!(true) {
            break;
        }
    }
}
