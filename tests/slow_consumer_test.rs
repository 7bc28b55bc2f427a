//! Slow consumers (issue 5 item 2): a client that stops reading is closed with 1013 once its
//! outbound queue passes the hard cap `outbound_queue_bytes` while the other clients of its
//! topic on the same shard keep receiving every message in order; and the server's memory
//! stays bounded while slow clients are being filled, with a small cap and with the default.
//! The other rule, a lag of `slow_consumer_lag_ms`, and bursts that must not close a reading
//! client, are pinned by `tests/burst_test.rs`.
//!
//! Whether those other clients also keep their latency is a timing question, answered with
//! loadtest (docs/reliability.md, "Latency of the other clients"); the runs here still record
//! each message's `received - published` time, without judging it.

mod common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use common::phoenix::*;
use common::{http_request, Frame, TestSocket};

const TOPIC: &str = "room:slow";
/// Messages per latency run.
const MESSAGES: usize = 500;
/// Bytes of padding in each latency message: 128 of them fit in the 64 KiB queue, so a fast
/// client has over 100 ms of slack at the publish rate.
const PADDING: usize = 512;
/// Every this many latency messages, one message of [`FLOOD_BYTES`] goes to [`FLOOD_TOPIC`],
/// which only the slow client joins: it fills that client's kernel buffers (up to 4 MiB on
/// this kernel, tcp_wmem) and then its queue within the run, without weighing on the fast
/// clients. It is published in both runs, so the Redis side of the load is the same.
const FLOOD_EVERY: usize = 2;
/// Half the queue: one flood message alone never overflows it; a backlog does.
const FLOOD_BYTES: usize = 32 * 1024;
const FLOOD_TOPIC: &str = "room:slow:flood";
/// Pause between two publishes of a run (a steady 1000 messages/s, not a burst).
const PUBLISH_GAP: Duration = Duration::from_millis(1);
/// Fast clients on the topic.
const FAST_CLIENTS: usize = 3;

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_micros() as u64
}

/// Resident memory of process `pid`, in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Sum of the server's `slow_consumer_closes_total` over its shards (`/metrics`).
fn slow_consumer_closes(s: &Setup) -> u64 {
    let text = http_request(s.server.addr(), "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|line| !line.starts_with('#') && line.contains("slow_consumer_closes_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Publishes `count` messages `{"n": i, "t": <unix µs>, "pad": "..."}` to the topic, one every
/// `gap`, on one Redis connection.
fn publish_run(s: &Setup, run: &str, count: usize, padding: usize, gap: Duration) {
    publish_run_with_flood(s, run, count, padding, gap, 0)
}

/// [`publish_run`], plus one [`FLOOD_BYTES`] message to [`FLOOD_TOPIC`] every `flood_every`
/// messages (never when 0).
fn publish_run_with_flood(
    s: &Setup,
    run: &str,
    count: usize,
    padding: usize,
    gap: Duration,
    flood_every: usize,
) {
    let mut conn = s.redis.connection();
    let pad = "x".repeat(padding);
    let flood = format!("\"{}\"", "f".repeat(FLOOD_BYTES));
    for i in 0..count {
        if flood_every > 0 && i % flood_every == 0 {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(format!("to:{FLOOD_TOPIC}:flood"))
                .arg(&flood)
                .query(&mut conn)
                .expect("PUBLISH to the test Redis");
        }
        let payload = json!({"run": run, "n": i, "t": unix_micros(), "pad": pad}).to_string();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("to:{TOPIC}:tick"))
            .arg(payload)
            .query(&mut conn)
            .expect("PUBLISH to the test Redis");
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
}

/// Reads `count` `tick` broadcasts of `run` on `socket` (skipping presence), returns the
/// latencies in µs and the socket. Panics on a gap, a close, or a 20 s deadline.
fn read_run(mut socket: TestSocket, run: String, count: usize) -> (TestSocket, Vec<u64>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match socket.try_recv_frame(left) {
            Some(Frame::Text(text)) => text,
            other => panic!(
                "a fast client got {other:?} after {} of {count} messages of run {run}",
                latencies.len()
            ),
        };
        let received = unix_micros();
        let value: Value = serde_json::from_str(&frame).expect("JSON frame");
        if value[3] != "tick" {
            continue;
        }
        assert_eq!(value[4]["run"], json!(run), "messages of another run");
        assert_eq!(
            value[4]["n"],
            json!(latencies.len()),
            "a fast client missed or reordered a message"
        );
        let sent = value[4]["t"].as_u64().expect("t is a number");
        latencies.push(received.saturating_sub(sent));
    }
    (socket, latencies)
}

/// One run: publish while every fast client reads in its own thread; returns the sockets and
/// all latencies (µs), sorted.
fn latency_run(s: &Setup, fast: Vec<TestSocket>, run: &str) -> (Vec<TestSocket>, Vec<u64>) {
    let readers: Vec<_> = fast
        .into_iter()
        .map(|socket| {
            let run = run.to_string();
            std::thread::spawn(move || read_run(socket, run, MESSAGES))
        })
        .collect();
    publish_run_with_flood(s, run, MESSAGES, PADDING, PUBLISH_GAP, FLOOD_EVERY);
    let mut sockets = Vec::new();
    let mut all = Vec::new();
    for reader in readers {
        let (socket, latencies) = reader.join().expect("a fast reader panicked");
        sockets.push(socket);
        all.extend(latencies);
    }
    all.sort_unstable();
    (sockets, all)
}

/// Reads everything the server still has for a stalled client; returns the close frame's
/// `(code, reason)` if one came (after the queued data), and the number of text frames.
fn drain_stalled(mut stream: TcpStream) -> (Option<(u16, String)>, usize) {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the server never ended the stalled client's socket"
        );
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server kept the stalled client's socket open: {e}")
            }
            Err(e) => panic!("reading the stalled client: {e}"),
        }
    }
    let mut texts = 0;
    let mut close = None;
    for (opcode, payload) in server_frames(&bytes).0 {
        match opcode {
            1 => texts += 1,
            8 if payload.len() >= 2 => {
                close = Some((
                    u16::from_be_bytes([payload[0], payload[1]]),
                    String::from_utf8_lossy(&payload[2..]).into_owned(),
                ))
            }
            _ => {}
        }
    }
    (close, texts)
}

/// The complete frames at the start of `bytes` as `(opcode, payload)`, and how many bytes they
/// take; server frames are unmasked. A frame cut at the end is left out.
fn server_frames(bytes: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0F;
        let mut len = (bytes[at + 1] & 0x7F) as usize;
        let mut header = 2;
        if len == 126 && at + 4 <= bytes.len() {
            len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
            header = 4;
        } else if len == 127 && at + 10 <= bytes.len() {
            let mut be = [0u8; 8];
            be.copy_from_slice(&bytes[at + 2..at + 10]);
            len = u64::from_be_bytes(be) as usize;
            header = 10;
        }
        let start = at + header;
        if start + len > bytes.len() {
            break; // cut in the middle of a frame
        }
        frames.push((opcode, &bytes[start..start + len]));
        at = start + len;
    }
    (frames, at)
}

/// Runs `rounds` A/B rounds on a one-shard server with a 64 KiB queue: each round is a run
/// with only the fast clients (A), then a run with a stalled client added (B), which must end
/// with a 1013 close while every fast client gets every message in order. Returns the
/// latencies (µs) of each A run and each B run.
fn slow_consumer_rounds(rounds: usize) -> (Vec<Vec<u64>>, Vec<Vec<u64>>) {
    let s = Setup::with(
        common::ServerOptions::default()
            .shards(1)
            .config("[channel]\noutbound_queue_bytes = 65536\n"),
    );
    let mut fast: Vec<TestSocket> = (0..FAST_CLIENTS).map(|_| s.joined(TOPIC)).collect();
    // Warm-up, so that neither side of the comparison pays for first allocations.
    (fast, _) = latency_run(&s, fast, "warm-up");
    // A, B, A, B, A, B: interleaved, so that a change of machine load during the test (other
    // processes on a 2-core machine) weighs on both sides alike.
    let mut without = Vec::new();
    let mut with = Vec::new();
    for round in 0..rounds {
        let latencies;
        (fast, latencies) = latency_run(&s, fast, &format!("without-{round}"));
        without.push(latencies);

        let stalled = s.raw_client_that_does_not_read(None, &[TOPIC, FLOOD_TOPIC]);
        std::thread::sleep(Duration::from_millis(200));
        let closes_before = slow_consumer_closes(&s);
        let latencies;
        (fast, latencies) = latency_run(&s, fast, &format!("with-{round}"));
        with.push(latencies);
        let (close, texts) = drain_stalled(stalled);
        assert_eq!(
            close,
            Some((1013, "slow consumer".to_string())),
            "the stalled client's socket must end with a 1013 close (after {texts} frames)"
        );
        assert!(
            texts >= 2,
            "the stalled client got its join replies before the close, got {texts} frames"
        );
        assert!(
            texts < MESSAGES + MESSAGES / FLOOD_EVERY,
            "a stalled client cannot have received everything"
        );
        assert_eq!(slow_consumer_closes(&s), closes_before + 1);
    }
    (without, with)
}

#[test]
fn client_that_stops_reading_is_closed_with_1013_while_its_shard_mates_keep_receiving() {
    slow_consumer_rounds(1);
}

#[test]
fn a_client_that_pauses_reading_gets_every_message_whole_and_in_order() {
    // Frames go straight to a socket while nothing is queued for it, and through its queue
    // once the socket stops taking them (here: a 4 KiB receive buffer, a client that does not
    // read for a while, 16 KiB messages one every millisecond, so that the kernel's buffers
    // fill mid-frame). Frames must never overtake the rest of a frame the socket took only
    // part of: the client reads again while publishing goes on and must get every message,
    // whole and in order. The queue is large enough that nobody is a slow consumer here.
    const COUNT: usize = 800;
    let s = Setup::with(
        common::ServerOptions::default()
            .shards(1)
            .config("[channel]\noutbound_queue_bytes = 67108864\n"),
    );
    let mut paused = s.raw_client_that_does_not_read(None, &[TOPIC, FLOOD_TOPIC]);
    std::thread::sleep(Duration::from_millis(200));
    let publisher = {
        let redis = s.redis.url();
        std::thread::spawn(move || {
            let mut conn = redis::Client::open(redis)
                .and_then(|c| c.get_connection())
                .expect("a connection to the test Redis");
            let pad = "p".repeat(16 * 1024);
            for i in 0..COUNT {
                let payload = json!({"n": i, "pad": pad}).to_string();
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(format!("to:{TOPIC}:tick"))
                    .arg(payload)
                    .query(&mut conn)
                    .expect("PUBLISH to the test Redis");
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // Not reading while about half is published: the buffers fill and stay full.
    std::thread::sleep(Duration::from_millis(500));
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < COUNT {
        assert!(
            Instant::now() < deadline,
            "only {} of {COUNT} messages arrived",
            seen.len()
        );
        let n = match paused.read(&mut buf) {
            Ok(0) => panic!("the server closed the socket after {} messages", seen.len()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("reading: {e}"),
        };
        bytes.extend_from_slice(&buf[..n]);
        let (frames, used) = server_frames(&bytes);
        for (opcode, payload) in &frames {
            assert_eq!(*opcode, 1, "only text frames are expected");
            let message: Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
                panic!(
                    "a frame is not JSON after {} messages ({e}): the stream is corrupt",
                    seen.len()
                )
            });
            if message[2] == TOPIC && message[3] == "tick" {
                assert_eq!(message[4]["pad"].as_str().map(str::len), Some(16 * 1024));
                seen.push(message[4]["n"].as_u64().expect("n"));
            }
        }
        bytes.drain(..used);
    }
    publisher.join().expect("the publisher does not panic");
    let expected: Vec<u64> = (0..COUNT as u64).collect();
    assert!(seen == expected, "messages out of order or repeated");
    assert_eq!(slow_consumer_closes(&s), 0);
}

// Whether the shard mates of a slow consumer keep their latency is a timing question: it is
// answered with loadtest's fanout `slow_clients` A/B (docs/reliability.md, "Latency of the other
// clients"), not with a timed test.

/// Ten clients that never read and one that reads, `messages` messages of 16 KiB published to
/// their topic as fast as Redis takes them, on a one-shard server with `[channel]` keys `keys`.
/// Returns how much the server's RSS grew at its peak (MiB) and checks that every stalled
/// client was closed as a slow consumer and the reading one got everything.
fn memory_while_ten_stalled_clients_are_filled(keys: &str, messages: usize) -> f64 {
    let s = Setup::with(
        common::ServerOptions::default()
            .shards(1)
            .config(&format!("[channel]\n{keys}\n")),
    );
    let pid = s.server.pid();
    let mut watcher = s.joined(TOPIC);
    let stalled: Vec<TcpStream> = (0..10)
        .map(|_| s.raw_client_that_does_not_read(None, &[TOPIC, FLOOD_TOPIC]))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let baseline = rss_kib(pid);
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    // The watcher reads everything in its own thread (it is not slow).
    let reader = std::thread::spawn(move || {
        let mut n = 0usize;
        let deadline = Instant::now() + Duration::from_secs(30);
        while n < messages && Instant::now() < deadline {
            match watcher.try_recv_frame(Duration::from_secs(5)) {
                Some(Frame::Text(text)) if text.contains("\"tick\"") => n += 1,
                Some(Frame::Text(_)) => {}
                other => panic!("the reading client got {other:?} after {n} messages"),
            }
        }
        n
    });
    publish_run(&s, "fill", messages, 16 * 1024, Duration::ZERO);
    let peak = sampler.join().expect("the sampler does not panic");
    let delivered = reader.join().expect("the reading client does not panic");
    assert_eq!(delivered, messages, "the client that reads got everything");
    let grew_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    println!(
        "server RSS {baseline} KiB before, peak {peak} KiB while filling (+{grew_mib:.1} MiB)"
    );
    for stream in stalled {
        let (close, _) = drain_stalled(stream);
        assert!(
            close.is_none() || close == Some((1013, "slow consumer".to_string())),
            "a stalled client was closed with {close:?}"
        );
    }
    assert_eq!(
        slow_consumer_closes(&s),
        10,
        "every stalled client was closed as slow"
    );
    grew_mib
}

#[test]
fn server_memory_stays_bounded_by_a_small_hard_cap_while_slow_consumers_are_filled() {
    // A 1 MiB cap, 48 MiB published: without the bound the server would hold all of it (the
    // frames are shared, so 48 MiB, not 480). With it, at most 1 MiB per client is queued
    // before each is closed.
    let grew_mib =
        memory_while_ten_stalled_clients_are_filled("outbound_queue_bytes = 1048576", 3072);
    assert!(
        grew_mib < 24.0,
        "server RSS grew by {grew_mib:.1} MiB while 48 MiB went to ten stalled clients"
    );
}

#[test]
fn server_memory_stays_bounded_by_the_default_cap_while_slow_consumers_are_filled() {
    // The default 16 MiB cap, 96 MiB published: the ten stalled clients are behind the same
    // frames, so together they hold one copy of at most 16 MiB, not ten (160 MiB), and not
    // the 96 MiB published (docs/reliability.md, "How memory is bounded").
    let grew_mib = memory_while_ten_stalled_clients_are_filled("", 6144);
    assert!(
        grew_mib < 48.0,
        "server RSS grew by {grew_mib:.1} MiB while 96 MiB went to ten stalled clients"
    );
}
