//! Hostile input against the real server (issue 5, item 3): malformed, oversized and
//! non-UTF-8 frames, RFC 6455 violations, handshakes that never finish, header floods, garbage
//! before and right after the upgrade, and a connection flood past the descriptor limit.
//!
//! Every case ends the same way: the server is still running, a normal client can connect, join
//! and receive a Redis publish ([`assert_still_serves`]), and the server holds no more file
//! descriptors than before the case ([`assert_no_fd_leak`]). Expected answers are the close
//! codes and statuses of docs/protocol.md and docs/reliability.md ("Hostile input").
//! Everything is bounded: at most a few hundred connections, all to 127.0.0.1.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::phoenix::*;
use common::{Frame, ServerOptions, TestSocket};

/// The topic of the probe client that checks the server still serves after each case.
const PROBE_TOPIC: &str = "probe:room";

/// The upgrade request of a plain WebSocket client (the key of RFC 6455 §1.3).
const UPGRADE: &str = "GET /websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
    Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

// --- what every case asserts at the end ---------------------------------------------------

/// A fresh client connects, joins, and receives a publish made on Redis: the listener, the
/// shard, the topic table and the Redis reader all still work.
fn assert_still_serves(s: &mut Setup) {
    assert!(
        s.server.is_running(),
        "the server exited; log:\n{}",
        s.server.log()
    );
    let mut socket = s.v2();
    join_ok_exact(&mut socket, PROBE_TOPIC, &s.token(PROBE_TOPIC));
    let receivers = s.redis.publish("to:probe:room:ping", r#"{"alive":true}"#);
    assert_eq!(receivers, 1, "the server's Redis subscription is gone");
    expect_text(
        &mut socket,
        &broadcast_text(PROBE_TOPIC, "ping", r#"{"alive":true}"#),
    );
    socket.close(1000, "");
    let _ = try_next(&mut socket, Duration::from_secs(2));
}

/// Open descriptors of the server process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
}

/// A server started for a hostile case, probed once so that everything created lazily (the
/// probe topic, Redis connections) exists before the descriptor baseline is taken.
struct Target {
    s: Setup,
    baseline_fds: usize,
}

impl Target {
    fn start(opts: ServerOptions) -> Target {
        let mut s = Setup::with(opts);
        assert_still_serves(&mut s);
        let pid = s.server.pid();
        // Let the probe's socket finish closing before counting.
        std::thread::sleep(Duration::from_millis(300));
        let baseline_fds = fd_count(pid);
        Target { s, baseline_fds }
    }

    fn with_channel_keys(toml: &str) -> Target {
        Target::start(ServerOptions::default().config(&format!("[channel]\n{toml}\n")))
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.s.server.addr()
    }

    /// The end of every case: still serving, and back to the descriptors it had before.
    fn assert_survived(&mut self, case: &str) {
        assert_still_serves(&mut self.s);
        assert_no_fd_leak(&self.s, self.baseline_fds, case);
    }
}

/// Waits until the server holds no more descriptors than `baseline` (+1 for a socket still being
/// torn down); fails naming the case that leaked.
fn assert_no_fd_leak(s: &Setup, baseline: usize, case: &str) {
    let pid = s.server.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = fd_count(pid);
        if now <= baseline + 1 {
            return;
        }
        if Instant::now() >= deadline {
            panic!("after {case}: the server holds {now} descriptors, {baseline} before");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- hand-made client frames --------------------------------------------------------------

/// A client frame with every header field chosen by the caller: `first` is the FIN/RSV/opcode
/// byte, `announced` the length written in the header (which may lie), `masked` whether a mask
/// key is sent (the payload is masked with it).
fn raw_frame(first: u8, payload: &[u8], announced: u64, masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut frame = vec![first];
    if announced < 126 {
        frame.push(mask_bit | announced as u8);
    } else if announced <= u64::from(u16::MAX) {
        frame.push(mask_bit | 126);
        frame.extend_from_slice(&(announced as u16).to_be_bytes());
    } else {
        frame.push(mask_bit | 127);
        frame.extend_from_slice(&announced.to_be_bytes());
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const FIN: u8 = 0x80;

/// A well-formed masked frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(first, payload, payload.len() as u64, true)
}

/// Writes `bytes` as they are under an upgraded test socket.
fn send_raw(socket: &mut TestSocket, bytes: &[u8]) {
    let stream = socket.inner().get_mut();
    if let Err(e) = stream.write_all(bytes).and_then(|()| stream.flush()) {
        // The server may already have closed after the first bad byte; the close frame it sent
        // is still readable.
        assert!(
            matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "writing raw bytes failed: {e}"
        );
    }
}

/// The next non-presence frame must be a close with `code`; then the server must end the TCP
/// connection (not keep a half-dead socket).
fn expect_close_and_disconnect(socket: &mut TestSocket, code: u16, case: &str) {
    match try_next(socket, Duration::from_secs(5)) {
        Some(Frame::Close(Some((got, reason)))) => {
            assert_eq!(got, code, "{case}: close code (reason {reason:?})")
        }
        other => panic!("{case}: expected a close frame with code {code}, got {other:?}"),
    }
    match try_next(socket, Duration::from_secs(5)) {
        Some(Frame::Disconnected(_)) => {}
        other => panic!("{case}: expected the server to end the connection, got {other:?}"),
    }
}

/// Sends each case's bytes on a fresh socket and expects the close code; then the probe.
fn run_frame_cases(t: &mut Target, cases: &[(&str, Vec<u8>, u16)]) {
    for (case, bytes, code) in cases {
        let mut socket = t.s.v2();
        send_raw(&mut socket, bytes);
        expect_close_and_disconnect(&mut socket, *code, case);
        t.assert_survived(case);
    }
}

// --- frames after the upgrade ---------------------------------------------------------------

#[test]
fn malformed_phoenix_messages_close_with_1007() {
    let mut t = Target::start(ServerOptions::default());
    let texts: &[(&str, &str)] = &[
        ("not JSON", "hello"),
        ("truncated array", r#"["1","1","room:1","ev""#),
        (
            "an object on V2",
            r#"{"topic":"t","event":"e","payload":{},"ref":"1"}"#,
        ),
        ("four elements", r#"["1","1","t","e"]"#),
        ("numeric refs", r#"[1,2,"t","e",{}]"#),
        ("empty topic", r#"["1","1","","e",{}]"#),
        ("topic not a string", r#"["1","1",7,"e",{}]"#),
        ("JSON null", "null"),
        ("empty text", ""),
    ];
    let cases: Vec<(&str, Vec<u8>, u16)> = texts
        .iter()
        .map(|(case, text)| (*case, frame(FIN | TEXT, text.as_bytes()), 1007))
        .collect();
    run_frame_cases(&mut t, &cases);
}

#[test]
fn deeply_nested_payload_is_valid_json_and_answered() {
    // 32,000 levels of nesting fill a 64 KiB frame. It is valid JSON: the decoder must take it
    // without recursing (a stack overflow would abort the whole process) and answer as usual.
    let mut t = Target::start(ServerOptions::default());
    let mut socket = t.s.v2();
    let depth = 32_000;
    let text = format!(
        r#"[null,"deep","t","e",{}{}]"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert!(text.len() <= 65_536);
    socket.send_text(&text);
    expect_text(
        &mut socket,
        &error_reply(None, "deep", "t", "unmatched topic"),
    );
    t.assert_survived("a payload nested 32,000 levels deep");
}

#[test]
fn malformed_binary_pushes_close_with_1007() {
    let mut t = Target::start(ServerOptions::default());
    let cases: Vec<(&str, Vec<u8>, u16)> = [
        ("empty binary", &b""[..]),
        ("header only", b"\x00\x01\x01"),
        ("lengths beyond the data", b"\x00\x05\x05\x05\x05ab"),
        ("server reply kind", b"\x01\x01\x01\x01\x01jrts"),
        ("broadcast kind", b"\x02\x01\x01te"),
        ("topic not UTF-8", b"\x00\x00\x01\x01\x01r\xffe"),
        ("empty event", b"\x00\x00\x01\x01\x00rt"),
    ]
    .into_iter()
    .map(|(case, data)| (case, frame(FIN | BINARY, data), 1007))
    .collect();
    run_frame_cases(&mut t, &cases);
}

#[test]
fn rfc6455_violations_close_with_1002() {
    let mut t = Target::start(ServerOptions::default());
    let heartbeat = br#"[null,"1","phoenix","heartbeat",{}]"#;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked frame",
            raw_frame(FIN | TEXT, heartbeat, heartbeat.len() as u64, false),
            1002,
        ),
        (
            "RSV1 without an extension",
            frame(FIN | 0x40 | TEXT, heartbeat),
            1002,
        ),
        ("reserved data opcode 3", frame(FIN | 0x3, b"x"), 1002),
        ("reserved control opcode 0xB", frame(FIN | 0xB, b""), 1002),
        ("continuation without a start", frame(FIN, b"x"), 1002),
        ("fragmented ping", frame(PING, b"x"), 1002),
        (
            "ping longer than 125 bytes",
            frame(FIN | PING, &[b'p'; 126]),
            1002,
        ),
        (
            "a new message inside a fragmented one",
            [frame(TEXT, b"[null,"), frame(FIN | TEXT, heartbeat)].concat(),
            1002,
        ),
        (
            "64-bit length with the high bit set",
            raw_frame(FIN | BINARY, b"", 1 << 63, true),
            1002,
        ),
        (
            "close code 1005 (never sent)",
            frame(FIN | CLOSE, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 999",
            frame(FIN | CLOSE, &999u16.to_be_bytes()),
            1002,
        ),
        ("one-byte close body", frame(FIN | CLOSE, b"\x03"), 1002),
        // Bytes of an HTTP request where a frame should be: 'G' is FIN=0, RSV=0b100.
        (
            "HTTP after the upgrade",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            1002,
        ),
    ];
    run_frame_cases(&mut t, &cases);
}

#[test]
fn oversized_messages_close_with_1009_before_the_payload_arrives() {
    // max_frame_bytes at its minimum (1 KiB) so that the cases stay small.
    let mut t = Target::with_channel_keys("max_frame_bytes = 1024");
    let over = vec![b'x'; 1025];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "one text frame of 1025 bytes",
            frame(FIN | TEXT, &over),
            1009,
        ),
        (
            "one binary frame of 1025 bytes",
            frame(FIN | BINARY, &over),
            1009,
        ),
        // Only the header: the server must refuse from the length alone, not wait for (or
        // buffer) a gigabyte.
        (
            "a header announcing 1 GiB",
            raw_frame(FIN | BINARY, b"", 1 << 30, true),
            1009,
        ),
        (
            "a header announcing 2^62 bytes",
            raw_frame(FIN | TEXT, b"", 1 << 62, true),
            1009,
        ),
        (
            "fragments adding up to 1025 bytes",
            [
                frame(TEXT, &over[..600]),
                frame(0x0, &over[..300]),
                frame(FIN, &over[..125]),
            ]
            .concat(),
            1009,
        ),
    ];
    run_frame_cases(&mut t, &cases);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let mut t = Target::start(ServerOptions::default());
    let wrap = |bad: &[u8]| -> Vec<u8> {
        let mut text = br#"[null,"1","phoenix","heartbeat",{"x":""#.to_vec();
        text.extend_from_slice(bad);
        text.extend_from_slice(br#""}]"#);
        text
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("byte 0xFF", frame(FIN | TEXT, &wrap(b"\xff")), 1007),
        ("overlong '/'", frame(FIN | TEXT, &wrap(b"\xc0\xaf")), 1007),
        (
            "UTF-16 surrogate",
            frame(FIN | TEXT, &wrap(b"\xed\xa0\x80")),
            1007,
        ),
        (
            "above U+10FFFF",
            frame(FIN | TEXT, &wrap(b"\xf4\x90\x80\x80")),
            1007,
        ),
        (
            "truncated sequence at the end",
            frame(
                FIN | TEXT,
                b"[null,\"1\",\"phoenix\",\"heartbeat\",{}]\xe2\x82",
            ),
            1007,
        ),
        (
            "invalid byte in the last fragment",
            [
                frame(TEXT, &wrap(b"")[..10]),
                frame(FIN, &wrap(b"\xff")[10..]),
            ]
            .concat(),
            1007,
        ),
        (
            "close reason not UTF-8",
            frame(FIN | CLOSE, b"\x03\xe8\xff\xfe"),
            1007,
        ),
    ];
    run_frame_cases(&mut t, &cases);
}

#[test]
fn utf8_character_split_across_fragments_is_accepted() {
    // The control case of the UTF-8 matrix: validity is a property of the message, not of
    // each fragment.
    let mut t = Target::start(ServerOptions::default());
    let mut socket = t.s.v2();
    let text = "[null,\"hb\",\"phoenix\",\"heartbeat\",{\"x\":\"\u{20ac}\"}]".as_bytes();
    let euro = text
        .iter()
        .position(|&b| b == 0xe2)
        .expect("the euro sign is in the text");
    send_raw(
        &mut socket,
        &[
            frame(TEXT, &text[..euro + 1]),
            frame(FIN, &text[euro + 1..]),
        ]
        .concat(),
    );
    expect_text(&mut socket, &ok_reply(None, "hb", "phoenix", "{}"));
    t.assert_survived("a UTF-8 character split across fragments");
}

// --- before the upgrade ---------------------------------------------------------------------

/// Writes `request` on a new connection (tolerating a server that closes before reading it all)
/// and returns what the server answered before closing, within `timeout`.
fn exchange(addr: std::net::SocketAddr, request: &[u8], timeout: Duration) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(addr).expect("connect to the server");
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(timeout))
        .expect("write timeout");
    let started = Instant::now();
    // A server that refuses early may reset the connection while we still write.
    let _ = stream.write_all(request);
    read_to_close(&mut stream, started, timeout)
}

/// Reads until the server closes (EOF or reset); panics if it is still open after `timeout`.
fn read_to_close(
    stream: &mut TcpStream,
    started: Instant,
    timeout: Duration,
) -> (Vec<u8>, Duration) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "the server kept the connection open for {timeout:?}; answer so far {:?}",
                String::from_utf8_lossy(&answer)
            ),
            Err(_) => break, // reset after the answer
        }
    }
    (answer, started.elapsed())
}

fn status_of(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Asserts a complete HTTP response with `status` and a short human-readable body.
fn assert_http_status(answer: &[u8], status: u16, case: &str) {
    let text = String::from_utf8_lossy(answer);
    assert_eq!(status_of(answer), Some(status), "{case}: answer {text:?}");
    let (_, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{case}: no head end in {text:?}"));
    assert!(
        !body.is_empty() && body.len() < 512,
        "{case}: expected a short explanation, got {body:?}"
    );
}

#[test]
fn slowloris_heads_are_cut_at_the_handshake_deadline_with_408() {
    let mut t = Target::with_channel_keys("handshake_timeout_secs = 1");
    let addr = t.addr();
    // Twenty clients drip a request head one byte every 150 ms and never finish it: each
    // read resets no timer, the deadline counts from the accept.
    let drip = b"GET /websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaa";
    let clients: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_millis(150)))
                    .expect("timeout");
                let started = Instant::now();
                let mut answer = Vec::new();
                let mut buf = [0u8; 1024];
                for &byte in drip.iter() {
                    if stream.write_all(&[byte]).is_err() {
                        break;
                    }
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                    if started.elapsed() > Duration::from_secs(6) {
                        break;
                    }
                }
                // Drain whatever is left of the answer.
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let _ = stream.read_to_end(&mut answer);
                (answer, started.elapsed())
            })
        })
        .collect();
    // Meanwhile a normal client is served.
    std::thread::sleep(Duration::from_millis(300));
    assert_still_serves(&mut t.s);
    for client in clients {
        let (answer, took) = client
            .join()
            .expect("a slowloris client thread does not panic");
        assert_eq!(
            status_of(&answer),
            Some(408),
            "answer {:?} after {took:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(4),
            "cut after {took:?}; the handshake deadline is 1 s"
        );
    }
    t.assert_survived("twenty slowloris heads");
}

#[test]
fn silent_connection_is_cut_at_the_handshake_deadline() {
    // A few bytes, then silence; and a connection that sends nothing at all.
    let mut t = Target::with_channel_keys("handshake_timeout_secs = 1");
    for (case, bytes) in [("a few bytes", &b"GET /web"[..]), ("nothing", b"")] {
        let (answer, took) = exchange(t.addr(), bytes, Duration::from_secs(5));
        assert_eq!(
            status_of(&answer),
            Some(408),
            "{case}: {:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(4),
            "{case}: cut after {took:?}; the handshake deadline is 1 s"
        );
        t.assert_survived(case);
    }
}

#[test]
fn header_floods_are_refused_with_431() {
    let mut t = Target::start(ServerOptions::default());
    let many = |n: usize| {
        let mut head = String::from("GET /websocket HTTP/1.1\r\nHost: x\r\n");
        for i in 0..n {
            head.push_str(&format!("X-Flood-{i}: {i}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    };
    let huge_value = format!(
        "GET /websocket HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let huge_target = format!(
        "GET /websocket?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "q".repeat(9000)
    );
    // 64 KiB of header lines that never end: refused once 8 KiB are buffered, not read forever.
    let endless: Vec<u8> = b"GET / HTTP/1.1\r\n"
        .iter()
        .copied()
        .chain((0..4096).flat_map(|i| format!("X-{i:05}: yyyyyyy\r\n").into_bytes()))
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("65 headers", many(65)),
        ("1000 headers", many(1000)),
        ("one 9000-byte header", huge_value.into_bytes()),
        ("a 9000-byte request target", huge_target.into_bytes()),
        ("64 KiB of headers without an end", endless),
    ];
    for (case, request) in cases {
        let (answer, _) = exchange(t.addr(), &request, Duration::from_secs(5));
        assert_http_status(&answer, 431, case);
        t.assert_survived(case);
    }
}

#[test]
fn garbage_before_the_upgrade_is_refused_with_400() {
    let mut t = Target::start(ServerOptions::default());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec()),
        ("NUL bytes", vec![0u8; 64]),
        ("random binary", (0..200u32).map(|i| (i * 37 % 251) as u8).collect()),
        ("a bare request line", b"GET /websocket\r\n\r\n".to_vec()),
        ("a space in the method", b"G ET /websocket HTTP/1.1\r\n\r\n".to_vec()),
        ("a header without a colon", b"GET /websocket HTTP/1.1\r\nUpgrade websocket\r\n\r\n".to_vec()),
        ("a header value that is not UTF-8", b"GET /websocket HTTP/1.1\r\nX: \xff\xfe\r\n\r\n".to_vec()),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("chunked token request", b"POST /token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        (
            "upgrade without a key",
            b"GET /websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
        ),
        (
            "upgrade with a bad vsn escape",
            UPGRADE.replace("vsn=2.0.0", "vsn=%zz").into_bytes(),
        ),
    ];
    for (case, request) in cases {
        let (answer, _) = exchange(t.addr(), &request, Duration::from_secs(5));
        let status = status_of(&answer);
        // "PRI *" parses as a request for an unknown path: 404 is as good an answer.
        if case == "HTTP/2 preface" {
            assert!(
                matches!(status, Some(400 | 404)),
                "{case}: {:?}",
                String::from_utf8_lossy(&answer)
            );
        } else {
            assert_http_status(&answer, 400, case);
        }
        t.assert_survived(case);
    }
}

/// Reads one unmasked server frame from `buf`: `(opcode, payload, bytes used)`.
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let (len, at) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some((first & 0x0f, payload, at + len))
}

#[test]
fn frames_pipelined_behind_the_upgrade_request_are_not_lost() {
    // A client that writes its first frame in the same packet as the upgrade request: the
    // bytes after the head are the start of the WebSocket stream.
    let mut t = Target::start(ServerOptions::default());
    let mut stream = TcpStream::connect(t.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut request = UPGRADE.as_bytes().to_vec();
    request.extend(frame(
        FIN | TEXT,
        br#"[null,"early","phoenix","heartbeat",{}]"#,
    ));
    stream.write_all(&request).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(
                got.starts_with(b"HTTP/1.1 101 "),
                "{:?}",
                String::from_utf8_lossy(&got)
            );
            if let Some((opcode, payload, _)) = parse_server_frame(&got[end + 4..]) {
                break (opcode, payload);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no reply to the pipelined heartbeat: {:?}",
            String::from_utf8_lossy(&got)
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "closed before replying: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no reply to the pipelined heartbeat ({e}): {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    };
    assert_eq!(reply.0, TEXT);
    assert_eq!(
        String::from_utf8_lossy(&reply.1),
        ok_reply(None, "early", "phoenix", "{}")
    );
    drop(stream);
    t.assert_survived("a frame pipelined behind the upgrade request");
}

// --- a connection flood past the descriptor limit ----------------------------------------

/// Lowers the open-file limit (soft and hard) of the running process `pid`.
fn set_nofile_limit(pid: u32, limit: u64) {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit(2) on our own child's pid with a valid rlimit and no old-limit output.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlimit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn connection_flood_past_the_descriptor_limit_does_not_stop_the_server() {
    const LIMIT: u64 = 256;
    const FLOOD: usize = 400;
    let mut t = Target::start(ServerOptions::default());
    let pid = t.s.server.pid();
    set_nofile_limit(pid, LIMIT);
    assert!(
        (t.baseline_fds as u64) < LIMIT / 2,
        "the server already holds {} descriptors",
        t.baseline_fds
    );

    // Connections the kernel completes whether or not the server can accept them; each one the
    // server accepts holds a descriptor until its handshake deadline (10 s) or until we close.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        match TcpStream::connect_timeout(&t.addr(), Duration::from_secs(1)) {
            Ok(stream) => flood.push(stream),
            // The listen backlog is full: that is the flood doing its job.
            Err(_) => break,
        }
    }
    assert!(
        flood.len() as u64 > LIMIT,
        "only {} connections could be opened; the flood did not pass the limit",
        flood.len()
    );
    let max_fds = LIMIT as usize;
    wait_until(
        Duration::from_secs(5),
        "the server runs out of descriptors",
        || fd_count(pid) >= max_fds - 1,
    );

    // Out of descriptors: still running, and not spinning on EMFILE.
    let ticks_before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(pid) - ticks_before;
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    assert!(
        ticks < per_sec,
        "the server used {ticks} ticks of CPU ({per_sec}/s) in 2 s while out of descriptors"
    );
    assert!(
        t.s.server.is_running(),
        "the server died out of descriptors; log:\n{}",
        t.s.server.log()
    );

    // Descriptors free up: the server accepts and serves again.
    drop(flood);
    t.assert_survived("a flood of 400 connections with a limit of 256 descriptors");
}
