//! Bursts (issue 11 §1): a backend that publishes 2,000 messages of ~1 KB back to back (one
//! Redis pipeline) must not get a client that reads closed as a slow consumer, while a client
//! that has stopped reading is still closed within `slow_consumer_lag_ms` + 1 s, with or
//! without further traffic, and its shard mates are unaffected.
//!
//! The reading clients are Phoenix-protocol clients (V2 text frames, each decoded as JSON as
//! phoenix.js does) that read as fast as they can, each in its own thread. The non-reader
//! upgrades and joins over a raw socket with a 4 KiB receive buffer and a 1460-byte MSS, so
//! the kernel holds only a little of what is sent to it (on loopback the MSS is ~64 KiB and
//! the server's send buffer would grow to megabytes first) and then never reads.

mod common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::phoenix::*;
use common::{http_request, Frame, TestSocket};

const TOPIC: &str = "room:burst";
/// Clients that read at normal speed.
const READERS: usize = 100;
/// Messages in one burst.
const BURST: usize = 2_000;
/// Bytes of padding in each message: with the envelope, about 1 KB a frame.
const PADDING: usize = 960;
/// phoenix.js's heartbeat period is 30 s; the server closes a socket silent for 60 s.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
/// How long one burst may take to reach every reader before the test fails.
const ROUND_DEADLINE: Duration = Duration::from_secs(60);

/// The sum over shards of the `/metrics` sample `name` (a counter or gauge).
fn metric(s: &Setup, name: &str) -> f64 {
    let text = http_request(s.server.addr(), "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            let metric = line.split(['{', ' ']).next().unwrap_or("");
            metric == name
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Publishes one burst of [`BURST`] messages `{"round": r, "n": i, "pad": ...}` in one Redis
/// pipeline, as a backend sending a snapshot or a replay would.
fn publish_burst(s: &Setup, round: usize) {
    let pad = "p".repeat(PADDING);
    let mut pipe = redis::pipe();
    for n in 0..BURST {
        pipe.cmd("PUBLISH")
            .arg(format!("to:{TOPIC}:tick"))
            .arg(format!(r#"{{"round":{round},"n":{n},"pad":"{pad}"}}"#))
            .ignore();
    }
    let mut conn = s.redis.connection();
    let _: () = pipe
        .query(&mut conn)
        .expect("pipelined PUBLISH to the test Redis");
}

/// `(round, n)` from `<round>,"n":<n>,…`, the tail of a `tick` frame after `{"round":`.
fn parse_position(tail: &str) -> Option<(usize, usize)> {
    let (round, rest) = tail.split_once(',')?;
    let rest = rest.strip_prefix("\"n\":")?;
    let (n, rest) = rest.split_once(',')?;
    rest.starts_with("\"pad\":\"").then_some(())?;
    Some((round.parse().ok()?, n.parse().ok()?))
}

/// What a reading client tells the test: a round completed, or how it failed.
type Report = Result<usize, String>;

/// A reading client in its own thread: for each of `rounds` rounds it must receive the
/// burst's [`BURST`] `tick` messages whole, in order and once, then reports the round.
/// Anything else (a close, a gap, a stall) is reported as an error and ends the thread.
fn spawn_reader(
    mut socket: TestSocket,
    id: usize,
    rounds: usize,
    reports: mpsc::Sender<(usize, Report)>,
) -> JoinHandle<TestSocket> {
    std::thread::spawn(move || {
        let tick_prefix = format!("[null,null,\"{TOPIC}\",\"tick\",{{\"round\":");
        let mut last_heartbeat = Instant::now();
        for round in 0..rounds {
            if last_heartbeat.elapsed() > HEARTBEAT_EVERY {
                // As phoenix.js does every 30 s; the reply is skipped below like presence.
                let r = socket.next_ref();
                socket.send_json(&json!([null, r, "phoenix", "heartbeat", {}]));
                last_heartbeat = Instant::now();
            }
            let mut next = 0usize;
            let deadline = Instant::now() + ROUND_DEADLINE;
            while next < BURST {
                let left = deadline.saturating_duration_since(Instant::now());
                let text = match socket.try_recv_frame(left) {
                    Some(Frame::Text(text)) => text,
                    other => {
                        let why = format!(
                            "reader {id} got {other:?} after {next} of {BURST} in round {round}"
                        );
                        let _ = reports.send((id, Err(why)));
                        return socket;
                    }
                };
                if !text.starts_with(&tick_prefix) {
                    continue; // presence, heartbeat replies
                }
                // The rest is `<round>,"n":<n>,"pad":"ppp…"}]`: read the two numbers without a
                // full JSON parse, so that 100 reader threads of a debug build keep up.
                let got = parse_position(&text[tick_prefix.len()..]);
                if got != Some((round, next)) {
                    let why = format!(
                        "reader {id} expected message {next} of round {round}, got {got:?}"
                    );
                    let _ = reports.send((id, Err(why)));
                    return socket;
                }
                next += 1;
            }
            if reports.send((id, Ok(round))).is_err() {
                return socket;
            }
        }
        socket
    })
}

/// Reads what the server left for the non-reader until the socket ends; panics if it is
/// still open (the server must have ended it by now).
fn drain_until_closed(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the non-reader's socket never ended"
        );
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server kept the non-reader's socket open: {e}"),
        }
    }
}

/// Waits until the server has `open` connections; returns how long that took from `since`.
fn wait_for_connections(s: &Setup, open: usize, since: Instant, timeout: Duration) -> Duration {
    let deadline = since + timeout;
    loop {
        if metric(s, "channel_connections") as usize == open {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the server still has {} connections, expected {open}, {timeout:?} after the burst",
            metric(s, "channel_connections")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `rounds` bursts against [`READERS`] reading clients and one non-reader on a 2-shard
/// server with `[channel]` keys `keys`, `lag` being its `slow_consumer_lag_ms`. Asserts that
/// no reader is closed and every reader gets every burst whole and in order, and that the
/// non-reader is gone within `lag` + 1 s of the first burst.
fn bursts_with_one_non_reader(keys: &str, lag: Duration, rounds: usize) {
    let s = Setup::with(
        common::ServerOptions::default()
            .shards(2)
            .config(&format!("[channel]\n{keys}\n")),
    );
    let (tx, reports) = mpsc::channel();
    let readers: Vec<_> = (0..READERS)
        .map(|id| spawn_reader(s.joined(TOPIC), id, rounds, tx.clone()))
        .collect();
    drop(tx);
    let stalled = s.raw_client_that_does_not_read(Some(1460), &[TOPIC]);
    wait_until(Duration::from_secs(5), "every client is joined", || {
        metric(&s, "channel_joined_channels") as usize == READERS + 1
    });

    let first_burst = Instant::now();
    for round in 0..rounds {
        publish_burst(&s, round);
        for _ in 0..READERS {
            match reports.recv_timeout(ROUND_DEADLINE + Duration::from_secs(5)) {
                Ok((_, Ok(r))) => assert_eq!(r, round, "a reader is a round ahead"),
                Ok((_, Err(why))) => panic!("round {round}: {why}"),
                Err(e) => panic!("round {round}: a reader went silent ({e})"),
            }
        }
        if round == 0 {
            // The readers have the whole first burst; the non-reader has next to none of it and
            // must be gone within the lag + 1 s of it, whatever the later bursts do.
            let gone_after =
                wait_for_connections(&s, READERS, first_burst, lag + Duration::from_secs(1));
            println!("the non-reader was closed {gone_after:?} after the first burst");
        }
    }
    // The readers hand their sockets back, still open, so that the server's count is theirs.
    let _sockets: Vec<TestSocket> = readers
        .into_iter()
        .map(|reader| reader.join().expect("a reader thread panicked"))
        .collect();
    assert_eq!(
        metric(&s, "channel_slow_consumer_closes_total"),
        1.0,
        "only the non-reader is a slow consumer"
    );
    assert_eq!(
        metric(&s, "channel_connections") as usize,
        READERS,
        "every reader is still connected after {rounds} bursts"
    );
    drain_until_closed(stalled);
}

#[test]
fn twenty_bursts_close_no_reading_client_and_the_non_reader_within_the_default_lag() {
    // The defaults: a 5 s lag and the default hard cap.
    bursts_with_one_non_reader("", Duration::from_secs(5), 20);
}

#[test]
fn a_non_reader_is_closed_within_the_lag_even_when_nothing_more_is_sent() {
    // One burst, then silence: no later frame arrives to notice the lag on.
    let s = Setup::with(
        common::ServerOptions::default()
            .shards(1)
            .config("[channel]\nslow_consumer_lag_ms = 1000\n"),
    );
    let mut watcher = s.joined(TOPIC);
    let stalled = s.raw_client_that_does_not_read(Some(1460), &[TOPIC]);
    wait_until(Duration::from_secs(5), "both clients are joined", || {
        metric(&s, "channel_joined_channels") as usize == 2
    });
    let burst = Instant::now();
    publish_burst(&s, 0);
    let gone_after = wait_for_connections(&s, 1, burst, Duration::from_secs(2));
    println!("the non-reader was closed {gone_after:?} after the burst");
    let mut got = 0;
    while got < BURST {
        match watcher.try_recv_frame(Duration::from_secs(10)) {
            Some(Frame::Text(text)) if text.contains("\"tick\"") => got += 1,
            Some(Frame::Text(_)) => {}
            other => panic!("the reading client got {other:?} after {got} messages"),
        }
    }
    assert_eq!(metric(&s, "channel_slow_consumer_closes_total"), 1.0);
    drain_until_closed(stalled);
}

#[test]
fn a_client_that_resumes_reading_within_the_lag_keeps_its_connection() {
    // The non-reader of the tests above, but it starts reading 300 ms after the burst, well
    // within a 2 s lag: it is behind, not slow, and must get the whole burst in order.
    let s = Setup::with(
        common::ServerOptions::default()
            .shards(1)
            .config("[channel]\nslow_consumer_lag_ms = 2000\n"),
    );
    let mut paused = s.raw_client_that_does_not_read(Some(1460), &[TOPIC]);
    wait_until(Duration::from_secs(5), "the client is joined", || {
        metric(&s, "channel_joined_channels") as usize == 1
    });
    publish_burst(&s, 0);
    std::thread::sleep(Duration::from_millis(300)); // the pause under test, not a wait
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut next = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while next < BURST as u64 {
        assert!(Instant::now() < deadline, "only {next} of {BURST} arrived");
        let n = match paused.read(&mut buf) {
            Ok(0) => panic!("the server closed the paused client after {next} messages"),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("reading: {e}"),
        };
        bytes.extend_from_slice(&buf[..n]);
        let mut at = 0;
        // Server frames are unmasked; a ~1 KB text frame has a 4-byte header.
        while at + 2 <= bytes.len() {
            let opcode = bytes[at] & 0x0F;
            let (len, header) = match bytes[at + 1] & 0x7F {
                126 if at + 4 <= bytes.len() => (
                    u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                    4,
                ),
                126 => break,
                127 => panic!("no frame here is larger than 64 KiB"),
                len => (len as usize, 2),
            };
            if at + header + len > bytes.len() {
                break;
            }
            assert_eq!(opcode, 1, "a close or binary frame: the client was closed");
            let message: Value = serde_json::from_slice(&bytes[at + header..at + header + len])
                .expect("whole JSON frames");
            if message[3] == "tick" {
                assert_eq!(message[4]["n"], json!(next), "in order, once");
                next += 1;
            }
            at += header + len;
        }
        bytes.drain(..at);
    }
    assert_eq!(metric(&s, "channel_slow_consumer_closes_total"), 0.0);
    assert_eq!(metric(&s, "channel_connections"), 1.0);
}
