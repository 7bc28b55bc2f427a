//! Graceful shutdown under load (issue 5, item 4; docs/operations.md "Shutdown"): SIGTERM with
//! joined clients on every shard exits successfully within 5 s after closing each socket with
//! 1012; a push answered `ok` before the shutdown is in Redis; the members of a stopped
//! process leave at once, not after the presence TTL.
//!
//! `tests/limits_test.rs` pins the basics (1012 on SIGTERM and SIGINT, an idle server exits
//! promptly); these tests add open sockets on two shards, pushes in flight and presence.

mod common;

use std::collections::BTreeSet;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{
    http_request, sign_token, ChannelServer, Frame, RedisServer, ServerOptions, TestSocket,
    TEST_JWT_SECRET,
};

/// docs/operations.md: the process exits within 5 s of SIGINT or SIGTERM, in all cases.
const EXIT_BOUND: Duration = Duration::from_secs(5);

fn token(topic: &str, id: &str) -> String {
    sign_token(TEST_JWT_SECRET, topic, id, 600)
}

/// A V2 socket joined to `topic` as `id` (join ref "1"), the ok reply checked exactly.
fn joined(server: &ChannelServer, topic: &str, id: &str) -> TestSocket {
    let mut socket = TestSocket::connect(&server.ws_url("2.0.0"));
    socket.send_json(&json!(["1", "1", topic, "phx_join", {"token": token(topic, id)}]));
    let (reply, _) = socket.recv_json_until(Duration::from_secs(5), |f| f[3] == "phx_reply");
    assert_eq!(
        reply,
        json!(["1", "1", topic, "phx_reply", {"status": "ok", "response": {}}])
    );
    socket
}

/// `channel_connections` per shard, from `/metrics`: `(shard label, open connections)`.
fn connections_per_shard(server: &ChannelServer) -> Vec<(String, f64)> {
    let response = http_request(server.addr(), "GET", "/metrics", &[], b"");
    assert_eq!(response.status, 200, "GET /metrics: {}", response.text());
    response
        .text()
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("channel_connections{")?;
            let (labels, value) = rest.split_once('}')?;
            let shard = labels
                .split(',')
                .find_map(|l| l.strip_prefix("shard="))?
                .trim_matches('"')
                .to_string();
            Some((shard, value.trim().parse().ok()?))
        })
        .collect()
}

/// How a socket's connection ended: the close `(code, reason)` and when it came, or what went
/// wrong instead.
type CloseOutcome = Result<((u16, String), Instant), String>;

/// Reads `socket` on its own thread until a close frame or the end of the connection, so
/// that every socket answers the server's close at once (as a browser would) while the test
/// watches the process. Returns the close `(code, reason)` and when it came.
fn await_close(mut socket: TestSocket) -> JoinHandle<CloseOutcome> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match socket.try_recv_frame(left) {
                Some(Frame::Close(Some(close))) => return Ok((close, Instant::now())),
                Some(Frame::Text(_)) | Some(Frame::Binary(_)) => continue,
                Some(other) => return Err(format!("the connection ended with {other:?}")),
                None => return Err("no close frame within 10 s".to_string()),
            }
        }
    })
}

#[test]
fn sigterm_with_open_sockets_exits_within_5s() {
    let redis = RedisServer::start();
    let mut server = ChannelServer::start(&redis, ServerOptions::default().shards(2));
    // The kernel spreads connections over the two SO_REUSEPORT listeners; open sockets until
    // both shards hold some (at least six sockets in all).
    let mut sockets = Vec::new();
    loop {
        let n = sockets.len();
        sockets.push(joined(
            &server,
            &format!("room:shutdown-{n}"),
            &format!("user-{n}"),
        ));
        let per_shard = connections_per_shard(&server);
        let busy_shards = per_shard.iter().filter(|(_, open)| *open > 0.0).count();
        if sockets.len() >= 6 && busy_shards == 2 {
            break;
        }
        assert!(
            sockets.len() < 64,
            "64 sockets and still not on both shards: {per_shard:?}"
        );
    }
    let count = sockets.len();

    server.send_signal(libc::SIGTERM);
    let signalled = Instant::now();
    let readers: Vec<_> = sockets.into_iter().map(await_close).collect();
    let status = server.wait_for_exit(Duration::from_secs(10));
    let exited_after = signalled.elapsed();

    for (i, reader) in readers.into_iter().enumerate() {
        let outcome = reader.join().expect("a reader thread does not panic");
        let ((code, reason), at) = outcome.unwrap_or_else(|e| panic!("socket {i} of {count}: {e}"));
        assert_eq!(
            (code, reason.as_str()),
            (1012, "server restart"),
            "socket {i} of {count}"
        );
        assert!(
            at.duration_since(signalled) < EXIT_BOUND,
            "socket {i} was closed {:?} after SIGTERM",
            at.duration_since(signalled)
        );
    }
    exited_cleanly_in_time(
        &server,
        status,
        exited_after,
        &format!("{count} open sockets"),
    );
}

/// The server exited (within the 10 s waited), successfully, and within [`EXIT_BOUND`] of the
/// SIGTERM, which it got while holding `with`.
fn exited_cleanly_in_time(
    server: &ChannelServer,
    status: Option<std::process::ExitStatus>,
    exited_after: Duration,
    with: &str,
) {
    let status = status.unwrap_or_else(|| {
        panic!(
            "the server had not exited 10 s after SIGTERM; log:\n{}",
            server.log()
        )
    });
    assert!(status.success(), "exit status {status}");
    assert!(
        exited_after < EXIT_BOUND,
        "the server exited {exited_after:?} after SIGTERM with {with}; log:\n{}",
        server.log()
    );
}

#[test]
fn pushes_accepted_before_sigterm_are_published() {
    const TOPIC: &str = "room:shutdown-pushes";
    const PUSHES: usize = 200;
    const ANSWERED_FIRST: usize = 20;
    let redis = RedisServer::start();
    let mut server = ChannelServer::start(&redis, ServerOptions::default());
    let published = redis.subscribe("from:*");
    let mut socket = joined(&server, TOPIC, "pusher");

    // The first pushes are answered before the signal, so that the test always has `ok`
    // pushes to check (it cannot pass with every push refused). Then the rest of the burst in
    // one TCP write, and SIGTERM at once: those pushes are in the server's hands (some published
    // and answered, some queued for Redis, some not yet read) when the shutdown starts.
    let mut oks = BTreeSet::new();
    let refs: Vec<String> = (0..PUSHES).map(|i| format!("p{i}")).collect();
    let write = |socket: &mut TestSocket, i: usize| {
        let frame = json!(["1", refs[i], TOPIC, "say", {"n": i}]);
        socket
            .inner()
            .write(tungstenite::Message::text(frame.to_string()))
            .expect("buffered WebSocket write");
    };
    for i in 0..ANSWERED_FIRST {
        write(&mut socket, i);
    }
    socket.inner().flush().expect("WebSocket flush");
    while oks.len() < ANSWERED_FIRST {
        let value = socket.recv_json_timeout(Duration::from_secs(10));
        if value[3] == "phx_reply" {
            assert_eq!(value[4]["status"], "ok", "before SIGTERM: {value}");
            let r = value[1].as_str().unwrap_or_default();
            oks.insert(
                refs.iter()
                    .position(|x| x == r)
                    .expect("a ref that was sent"),
            );
        }
    }
    for i in ANSWERED_FIRST..PUSHES {
        write(&mut socket, i);
    }
    socket.inner().flush().expect("WebSocket flush");
    server.send_signal(libc::SIGTERM);
    let signalled = Instant::now();

    // Every reply until the server's close.
    let mut refused = Vec::new();
    let mut close = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while close.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = socket.try_recv_frame(left) else {
            panic!("no close frame within 10 s of SIGTERM");
        };
        match frame {
            Frame::Text(_) => {
                let value = frame.json();
                if value[3] != "phx_reply" {
                    continue; // presence frames
                }
                let r = value[1].as_str().unwrap_or_default().to_string();
                let Some(n) = refs.iter().position(|x| *x == r) else {
                    panic!("a reply to a ref that was not sent: {value}");
                };
                if value == json!(["1", r, TOPIC, "phx_reply", {"status": "ok", "response": {}}]) {
                    assert!(oks.insert(n), "two ok replies to push {r}");
                } else {
                    assert_eq!(value[4]["status"], "error", "push {r} answered {value}");
                    refused.push(value);
                }
            }
            Frame::Close(c) => close = Some(c),
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
    assert_eq!(
        close,
        Some(Some((1012, "server restart".to_string()))),
        "close frame"
    );
    let status = server.wait_for_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the server did not exit successfully within 10 s of SIGTERM ({status:?}, {:?}); log:\n{}",
        signalled.elapsed(),
        server.log()
    );

    // The process is gone: everything it published is in the subscriber by now, or on its
    // way from Redis.
    let mut in_redis = BTreeSet::new();
    let quiet_after = Duration::from_millis(500);
    while let Some(message) = published.try_recv_timeout(quiet_after) {
        assert_eq!(message.channel, format!("from:{TOPIC}:say"));
        let payload: Value = serde_json::from_slice(&message.payload).expect("a JSON payload");
        let n = payload["n"].as_u64().expect("the payload is the push's") as usize;
        assert!(in_redis.insert(n), "push {n} published twice");
    }
    let missing: Vec<_> = oks.difference(&in_redis).collect();
    let unanswered = PUSHES - oks.len() - refused.len();
    assert!(
        missing.is_empty(),
        "{} pushes were answered ok but are not in Redis: {missing:?} \
         ({} ok, {} refused, {unanswered} unanswered, {} in Redis; first refusal {:?}); log:\n{}",
        missing.len(),
        oks.len(),
        refused.len(),
        in_redis.len(),
        refused.first(),
        server.log()
    );
    println!(
        "{PUSHES} pushes then SIGTERM: {} ok, {} refused, {unanswered} unanswered, {} in Redis",
        oks.len(),
        refused.len(),
        in_redis.len()
    );
    // Shutdown waits for the answers of pushes already handed to Redis before closing the
    // sockets: a published push is never left unanswered (the client would resend it).
    let published_unanswered: Vec<_> = in_redis.difference(&oks).collect();
    assert!(
        published_unanswered.is_empty(),
        "{} pushes reached Redis but got no ok: {published_unanswered:?}",
        published_unanswered.len()
    );
    // Whatever was refused was refused because of the shutdown, with that reason.
    for value in &refused {
        assert_eq!(value[4]["response"]["reason"], "shutting down", "{value}");
    }
}

#[test]
fn presences_of_a_stopped_process_leave_at_once() {
    const TOPIC: &str = "room:shutdown-presence";
    // A long TTL: if the leave comes within the bound, it did not come from the TTL sweep.
    let opts = ServerOptions::default().config("[channel]\npresence_ttl_secs = 30\n");
    let redis = RedisServer::start();
    let a = ChannelServer::start(&redis, opts.clone());
    let mut b = ChannelServer::start(&redis, opts);
    let mut alice = joined(&a, TOPIC, "alice");
    let bob = joined(&b, TOPIC, "bob");
    presence_diff_where(&mut alice, Duration::from_secs(5), |diff| {
        diff["joins"].get("bob").is_some()
    });

    b.send_signal(libc::SIGTERM);
    let signalled = Instant::now();
    let bob_closed = await_close(bob);
    let diff = presence_diff_where(&mut alice, EXIT_BOUND, |diff| {
        diff["leaves"].get("bob").is_some()
    });
    let left_after = signalled.elapsed();
    assert_eq!(diff["joins"], json!({}), "{diff}");
    assert!(
        left_after < EXIT_BOUND,
        "bob left {left_after:?} after SIGTERM"
    );
    let ((code, _), _) = bob_closed
        .join()
        .expect("the reader thread does not panic")
        .unwrap_or_else(|e| panic!("bob's socket: {e}"));
    assert_eq!(code, 1012);
    let status = b.wait_for_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "B exited with {status:?}"
    );
    // Alice is still there, on a server that is still up.
    let (state, _) = {
        let mut carol = joined(&a, TOPIC, "carol");
        carol.recv_json_until(Duration::from_secs(5), |f| f[3] == "presence_state")
    };
    assert!(state[4].get("alice").is_some(), "{state}");
    assert!(state[4].get("bob").is_none(), "bob came back: {state}");
}

/// Skips frames until a `presence_diff` whose payload satisfies `pred`; returns the payload.
fn presence_diff_where(
    socket: &mut TestSocket,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let (frame, _) = socket.recv_json_until(timeout, |f| f[3] == "presence_diff" && pred(&f[4]));
    frame[4].clone()
}

#[test]
fn sigterm_with_a_client_that_never_answers_the_close_still_exits_within_5s() {
    // A client that reads nothing never completes the closing handshake: the shard waits for
    // it only so long, and the process still exits within the bound.
    let redis = RedisServer::start();
    let mut server = ChannelServer::start(&redis, ServerOptions::default());
    let mut silent = joined(&server, "room:shutdown-silent", "silent");
    let polite = joined(&server, "room:shutdown-polite", "polite");

    server.send_signal(libc::SIGTERM);
    let signalled = Instant::now();
    let polite_closed = await_close(polite);
    let status = server.wait_for_exit(Duration::from_secs(10));
    let exited_after = signalled.elapsed();
    exited_cleanly_in_time(&server, status, exited_after, "a silent client");
    let ((code, _), _) = polite_closed
        .join()
        .expect("the reader thread does not panic")
        .unwrap_or_else(|e| panic!("the polite socket: {e}"));
    assert_eq!(code, 1012);
    // The silent client finds the 1012 waiting when it finally reads.
    let close = loop {
        match silent.try_recv_frame(Duration::from_secs(1)) {
            Some(Frame::Text(_)) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(&close, Some(Frame::Close(Some((1012, _))))),
        "the silent client's socket: {close:?}"
    );
}

#[test]
fn sigterm_while_redis_stalls_exits_within_5s_without_false_oks() {
    // Pushes queued for a Redis that has stopped answering: the flush cannot finish, and the
    // process must still exit within the bound, with no push answered ok that Redis did not
    // take.
    const TOPIC: &str = "room:shutdown-stall";
    const PUSHES: usize = 20;
    let redis = RedisServer::start_with_args(&["--enable-debug-command", "local"]);
    let mut server = ChannelServer::start(&redis, ServerOptions::default());
    let published = redis.subscribe("from:*");
    let mut socket = joined(&server, TOPIC, "pusher");
    let mut sleeper = redis.connection();
    let stall = std::thread::spawn(move || {
        let slept: redis::RedisResult<()> =
            redis::cmd("DEBUG").arg("SLEEP").arg(6).query(&mut sleeper);
        slept.expect("DEBUG SLEEP 6 (enable-debug-command local)");
    });
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..PUSHES {
        let frame = json!(["1", format!("p{i}"), TOPIC, "say", {"n": i}]);
        socket
            .inner()
            .write(tungstenite::Message::text(frame.to_string()))
            .expect("buffered WebSocket write");
    }
    socket.inner().flush().expect("WebSocket flush");
    std::thread::sleep(Duration::from_millis(100));
    server.send_signal(libc::SIGTERM);
    let signalled = Instant::now();

    let mut oks = BTreeSet::new();
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let close = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match socket.try_recv_frame(left) {
            Some(frame @ Frame::Text(_)) => {
                let value = frame.json();
                if value[3] != "phx_reply" {
                    continue;
                }
                if value[4] == json!({"status": "ok", "response": {}}) {
                    oks.insert(
                        value[1].as_str().unwrap_or_default()[1..]
                            .parse::<u64>()
                            .unwrap_or(u64::MAX),
                    );
                }
                answers.push(value);
            }
            other => break other,
        }
    };
    let status = server.wait_for_exit(Duration::from_secs(10));
    let exited_after = signalled.elapsed();
    assert!(
        matches!(&close, Some(Frame::Close(Some((1012, _))))),
        "close: {close:?}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}; log:\n{}",
        server.log()
    );
    assert!(
        exited_after < EXIT_BOUND,
        "the server exited {exited_after:?} after SIGTERM while Redis stalled; log:\n{}",
        server.log()
    );

    stall.join().expect("the sleeper thread does not panic");
    let mut in_redis = BTreeSet::new();
    while let Some(message) = published.try_recv_timeout(Duration::from_millis(500)) {
        let payload: Value = serde_json::from_slice(&message.payload).expect("a JSON payload");
        in_redis.insert(payload["n"].as_u64().unwrap_or(u64::MAX));
    }
    let missing: Vec<_> = oks.difference(&in_redis).collect();
    assert!(
        missing.is_empty(),
        "pushes answered ok but not in Redis: {missing:?}; answers {answers:?}; in Redis {in_redis:?}"
    );
    println!(
        "{PUSHES} pushes to a stalled Redis then SIGTERM: {} answered ({} ok), {} in Redis after it woke, exit after {exited_after:?}",
        answers.len(),
        oks.len(),
        in_redis.len()
    );
}
