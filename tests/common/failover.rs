//! What the failover tests of every Redis deployment share (tests/sentinel_test.rs,
//! tests/cluster_test.rs): a joined client that files replies and probes and must never be
//! closed, pushes through a gap with their answers, a watcher of what Redis really published
//! upstream (to catch a false `ok`), and "how long until delivery resumes".

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{http_request, sign_token, ChannelServer, Frame, TestSocket, TEST_JWT_SECRET};

/// A push is answered within this whatever happens (pipeline deadline 3 s, connect 2 s).
const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// `/healthz`'s status code.
pub fn healthz(server: &ChannelServer) -> u16 {
    http_request(server.addr(), "GET", "/healthz", &[], b"").status
}

/// A V2 client joined to one topic: files replies by ref and `probe` broadcasts; any close
/// fails the test (sockets must stay up through a failover).
pub struct Member {
    pub topic: String,
    pub socket: TestSocket,
    next_ref: u64,
    replies: HashMap<String, Value>,
    /// The `n` of every `probe` broadcast received (cleared by [`delivery_resumes`]).
    pub probes: Vec<u64>,
}

impl Member {
    /// Joins `topic` on `server` as `alice`.
    pub fn join(server: &ChannelServer, topic: &str) -> Member {
        let mut socket = TestSocket::connect(&server.ws_url("2.0.0"));
        let token = sign_token(TEST_JWT_SECRET, topic, "alice", 3600);
        socket.send_json(&json!(["j1", "j1", topic, "phx_join", {"token": token}]));
        let mut member = Member {
            topic: topic.to_owned(),
            socket,
            next_ref: 0,
            replies: HashMap::new(),
            probes: Vec::new(),
        };
        let reply = member.reply("j1");
        assert_eq!(
            reply,
            json!(["j1", "j1", topic, "phx_reply", {"status": "ok", "response": {}}])
        );
        member
    }

    /// Reads one frame (if one comes within `timeout`) and files it; false if none came.
    pub fn pump(&mut self, timeout: Duration) -> bool {
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

    /// The reply to ref `r` (waits for it; a missing reply fails the test).
    pub fn reply(&mut self, r: &str) -> Value {
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
    pub fn push(&mut self, tag: &str) -> String {
        self.next_ref += 1;
        let r = format!("p{}", self.next_ref);
        let topic = self.topic.clone();
        self.socket
            .send_json(&json!(["j1", r, topic, "say", {"tag": tag}]));
        r
    }

    /// True for `ok`, false for exactly `backend unavailable`; anything else fails.
    pub fn answered_ok(&mut self, r: &str) -> bool {
        let reply = self.reply(r);
        let topic = self.topic.as_str();
        let ok = json!(["j1", r, topic, "phx_reply", {"status": "ok", "response": {}}]);
        let unavailable = json!(["j1", r, topic, "phx_reply",
            {"status": "error", "response": {"reason": "backend unavailable"}}]);
        assert!(
            reply == ok || reply == unavailable,
            "push {r} answered {reply}: neither ok nor backend unavailable"
        );
        reply == ok
    }
}

/// Calls `publish(n)` (which publishes `{"n": n}` as event `probe` to the member's topic and
/// says whether Redis took it) every 25 ms with a fresh `n` until `member` receives one
/// published from now on; returns how long after `since` that was. Panics after `give_up`,
/// with `logs()`.
pub fn delivery_resumes(
    member: &mut Member,
    since: Instant,
    give_up: Duration,
    mut publish: impl FnMut(u64) -> bool,
    logs: impl Fn() -> String,
) -> Duration {
    static NEXT_PROBE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let first = NEXT_PROBE.load(Ordering::SeqCst);
    loop {
        assert!(
            since.elapsed() <= give_up,
            "no downstream delivery within {give_up:?}\n{}",
            logs()
        );
        let n = NEXT_PROBE.fetch_add(1, Ordering::SeqCst);
        let _ = publish(n);
        member.pump(Duration::from_millis(25));
        while member.pump(Duration::ZERO) {}
        if member.probes.iter().any(|&k| k >= first) {
            member.probes.clear();
            return since.elapsed();
        }
    }
}

/// Watches `from:<topic>:*` on every data node and collects the tags of the pushes Redis took,
/// whichever node was master when it did (on a cluster: every node, since a cluster propagates
/// a `PUBLISH` to all of them and any may be killed). The sentinels kill every pub/sub client of a node
/// whose role they change (`CLIENT KILL TYPE pubsub` at promotion and at demotion), so each
/// node's watcher subscribes again at once (within 20 ms): the server's publisher cannot take
/// a push on the promoted node before the sentinels announce it, ask it `ROLE` and load its
/// scripts, which is far longer.
pub struct UpstreamWatcher {
    seen: std::sync::mpsc::Receiver<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl UpstreamWatcher {
    /// Watches `topic`'s upstream on every node of `urls`.
    pub fn start(urls: Vec<String>, topic: &str) -> UpstreamWatcher {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut ready = Vec::new();
        for url in urls {
            let (tx, stop) = (tx.clone(), stop.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            ready.push(ready_rx);
            let pattern = format!("from:{topic}:*");
            std::thread::spawn(move || watch(&url, &pattern, &tx, &stop, ready_tx));
        }
        for r in ready {
            r.recv_timeout(Duration::from_secs(5))
                .expect("a watcher subscribes on every data node");
        }
        UpstreamWatcher { seen: rx, stop }
    }

    /// Every tag answered `ok` was seen on some node (no false ok).
    pub fn saw_every(&self, oks: &[String], seen: &mut HashSet<String>) {
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
    pattern: &str,
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
        if pubsub.psubscribe(pattern).is_err()
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
pub fn push_through_gap(
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

/// The answers to `pending`: the tags answered `ok`, and how many were `backend unavailable`.
pub fn answers(member: &mut Member, pending: Vec<(String, String)>) -> (Vec<String>, usize) {
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

/// `channel_redis_messages_received_total` of `server`.
pub fn received(server: &ChannelServer) -> f64 {
    let text = http_request(server.addr(), "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix("channel_redis_messages_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no received counter in /metrics:\n{text}"))
}

/// Pushes `count` tagged messages (50 ms apart); their answers: the tags answered `ok`, and how
/// many were `backend unavailable`.
pub fn push_times(
    server: &ChannelServer,
    member: &mut Member,
    label: &str,
    count: usize,
) -> (Vec<String>, usize) {
    let mut sent = 0;
    let (pending, _) = push_through_gap(server, member, label, || {
        sent += 1;
        sent > count
    });
    answers(member, pending)
}

/// Issue 13 §4's bar: delivery resumed within `bound` of `event` (a switch, a promotion);
/// printed either way, with the server's log when it did not.
pub fn resumed_within(took: Duration, bound: Duration, event: &str, server: &ChannelServer) {
    eprintln!("delivery resumed {took:?} after {event}");
    assert!(
        took <= bound,
        "delivery resumed {took:?} after {event} (bound {bound:?})\n{}",
        server.log()
    );
}

/// What every failover test asserts once delivery has resumed: every push of the gap answered,
/// some refused (while nothing could take them) and none falsely ok, `/healthz` seen 503 during
/// the gap and 200 again within `bound`, and pushes ok again after; every `ok` of the gap and
/// after was published by some node (`watcher`).
pub fn the_gap_and_after_hold(
    server: &ChannelServer,
    member: &mut Member,
    watcher: &UpstreamWatcher,
    gap: Vec<(String, String)>,
    degraded_seen: bool,
    bound: Duration,
) {
    let (gap_oks, unavailable) = answers(member, gap);
    assert!(
        unavailable > 0,
        "pushes while nothing could take them must be refused (oks {gap_oks:?})"
    );
    assert!(degraded_seen, "/healthz must say 503 during the gap");
    super::phoenix::wait_until(bound, "/healthz is 200 after the failover", || {
        healthz(server) == 200
    });
    let (after_oks, _) = push_times(server, member, "after", 3);
    assert_eq!(after_oks.len(), 3, "pushes after the failover are ok");
    watcher.saw_every(&[gap_oks, after_oks].concat(), &mut HashSet::new());
}
