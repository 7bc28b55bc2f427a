//! docs/configuration.md "Our keys" and the close codes of docs/protocol.md: channels per socket, inbound frame
//! size, idle timeout, slow consumers, the handshake deadline and graceful shutdown. Limits are
//! made small through a config file where the default would make the test slow.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::phoenix::*;
use common::Frame;

const TOPIC: &str = "room:1";

#[test]
fn too_many_channels_is_refused() {
    // The default limit: 100 topics a socket.
    let s = Setup::new();
    let mut socket = s.v2();
    for i in 0..100 {
        join_ok_exact(&mut socket, &format!("t{i}"), &s.token(&format!("t{i}")));
    }
    let token = s.token("t100");
    socket.send_text(&format!(
        r#"["x","x","t100","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("x"), "x", "t100", "too many channels joined"),
    );
    // The refused topic is not joined.
    send_raw_push(&mut socket, None, "y", "t100", "ev", "{}");
    expect_text(
        &mut socket,
        &error_reply(None, "y", "t100", "unmatched topic"),
    );
}

#[test]
fn leaving_frees_a_channel_slot() {
    let s = Setup::with_channel_keys("max_channels_per_socket = 2");
    let mut socket = s.v2();
    let a = join_ok_exact(&mut socket, "a", &s.token("a"));
    join_ok_exact(&mut socket, "b", &s.token("b"));
    let token_c = s.token("c");
    socket.send_text(&format!(
        r#"["c1","c1","c","phx_join",{{"token":"{token_c}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("c1"), "c1", "c", "too many channels joined"),
    );
    send_raw_push(&mut socket, Some(&a), "l", "a", "phx_leave", "{}");
    expect_text(&mut socket, &ok_reply(Some(&a), "l", "a", "{}"));
    expect_text(&mut socket, &close_text(Some(&a), "a"));
    socket.send_text(&format!(
        r#"["c2","c2","c","phx_join",{{"token":"{token_c}"}}]"#
    ));
    expect_text(&mut socket, &ok_reply(Some("c2"), "c2", "c", "{}"));
}

#[test]
fn rejoin_of_joined_topic_does_not_count_against_channel_limit() {
    let s = Setup::with_channel_keys("max_channels_per_socket = 1");
    let mut socket = s.v2();
    let token = s.token(TOPIC);
    let first = join_ok_exact(&mut socket, TOPIC, &token);
    socket.send_text(&format!(
        r#"["r2","r2","room:1","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(&mut socket, &ok_reply(Some("r2"), "r2", TOPIC, "{}"));
    expect_text(&mut socket, &close_text(Some(&first), TOPIC));
}

#[test]
fn oversized_frame_closes_with_1009() {
    // The default limit: 64 KiB.
    let s = Setup::new();
    let mut socket = s.joined(TOPIC);
    let head = r#"["1","2","room:1","ev",""#;
    let text = format!("{head}{}\"]", "x".repeat(65_536 + 1 - head.len() - 2));
    assert_eq!(text.len(), 65_537);
    socket.send_text(&text);
    expect_close_code(&mut socket, 1009, Duration::from_secs(5));
}

#[test]
fn frame_of_exactly_max_frame_bytes_is_accepted() {
    let s = Setup::new();
    let published = s.redis.subscribe("from:*");
    let mut socket = s.joined(TOPIC);
    let head = r#"["1","2","room:1","ev",""#;
    let text = format!("{head}{}\"]", "x".repeat(65_536 - head.len() - 2));
    assert_eq!(text.len(), 65_536);
    socket.send_text(&text);
    expect_text(&mut socket, &ok_reply(Some("1"), "2", TOPIC, "{}"));
    // The payload is the string: its opening quote ends `head`, its closing quote precedes `]`.
    let payload_len = 65_536 - (head.len() - 1) - 1;
    assert_eq!(
        published.recv_timeout(Duration::from_secs(5)).payload.len(),
        payload_len
    );
}

#[test]
fn oversized_frame_limit_is_configurable() {
    let s = Setup::with_channel_keys("max_frame_bytes = 1024");
    let mut socket = s.joined(TOPIC);
    let payload = format!("\"{}\"", "x".repeat(1100));
    send_raw_push(&mut socket, Some("1"), "2", TOPIC, "ev", &payload);
    expect_close_code(&mut socket, 1009, Duration::from_secs(5));
}

#[test]
fn idle_socket_is_closed_with_non_1000_code() {
    let s = Setup::with_channel_keys("idle_timeout_secs = 1");
    let mut socket = s.joined(TOPIC);
    let started = Instant::now();
    let code = match try_next(&mut socket, Duration::from_secs(5)) {
        Some(Frame::Close(Some((code, _)))) => code,
        other => panic!("expected a close frame after 1 s of silence, got {other:?}"),
    };
    let waited = started.elapsed();
    assert_ne!(
        code, 1000,
        "phoenix.js <= 1.8.15 does not reconnect after 1000"
    );
    assert_eq!(code, 4000, "docs/protocol.md: idle timeout is 4000");
    assert!(
        waited >= Duration::from_millis(800),
        "closed after {waited:?}, before the 1 s idle timeout"
    );
}

#[test]
fn heartbeats_keep_a_socket_open() {
    let s = Setup::with_channel_keys("idle_timeout_secs = 1");
    let mut socket = s.v2();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        n += 1;
        let r = format!("hb{n}");
        socket.send_text(&format!(r#"[null,"{r}","phoenix","heartbeat",{{}}]"#));
        expect_text(&mut socket, &ok_reply(None, &r, "phoenix", "{}"));
        std::thread::sleep(Duration::from_millis(400));
    }
}

#[test]
fn slow_consumer_is_closed_with_1013() {
    let s = Setup::with_channel_keys("outbound_queue_bytes = 65536");
    let mut socket = s.joined(TOPIC);
    // Stop reading and make the kernel buffer small, then have Redis send far more than the
    // socket buffers and the 64 KiB queue can hold.
    let _ = socket2::SockRef::from(socket.inner().get_ref()).set_recv_buffer_size(4096);
    s.flood_topic("room:1");
    // Read what was sent before the overflow; the last frame must be the close.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut delivered = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match socket.try_recv_frame(left) {
            Some(Frame::Text(_)) => delivered += 1,
            Some(Frame::Close(Some((code, reason)))) => {
                assert_eq!(code, 1013, "reason {reason:?}");
                assert_eq!(reason, "slow consumer");
                break;
            }
            other => {
                panic!("expected frames then a 1013 close, got {other:?} after {delivered} frames")
            }
        }
    }
    assert!(
        delivered < 1024,
        "a slow consumer must not receive everything"
    );
}

#[test]
fn stalled_handshake_is_cut_after_handshake_timeout() {
    let s = Setup::with_channel_keys("handshake_timeout_secs = 1");
    let mut stream = TcpStream::connect(s.server.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    // Half a request head, then silence.
    std::io::Write::write_all(&mut stream, b"GET /websocket HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let mut answer = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server did not cut a stalled handshake within 5 s: {e}"),
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "cut after {waited:?} (timeout 1 s); answer {:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn graceful_shutdown_closes_sockets_with_1012() {
    let mut s = Setup::new();
    let mut v2 = s.joined(TOPIC);
    let mut plain = s.v2();
    let status = s.server.terminate(Duration::from_secs(10));
    for socket in [&mut v2, &mut plain] {
        expect_close_code(socket, 1012, Duration::from_secs(5));
    }
    let status = status.expect("the server exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigint_closes_sockets_with_1012() {
    let mut s = Setup::new();
    let mut socket = s.joined(TOPIC);
    let status = s.server.interrupt(Duration::from_secs(10));
    expect_close_code(&mut socket, 1012, Duration::from_secs(5));
    assert!(status.is_some(), "the server exits within 10 s of SIGINT");
}

#[test]
fn idle_server_exits_promptly_on_sigterm() {
    // With no socket to drain and no publish in flight there is nothing to wait for; a slow
    // exit delays every deploy and restart.
    let mut s = Setup::new();
    let started = Instant::now();
    let status = s.server.terminate(Duration::from_secs(10));
    let took = started.elapsed();
    assert!(status.is_some(), "the server exits within 10 s of SIGTERM");
    assert!(
        took < Duration::from_secs(2),
        "an idle server took {took:?} to exit after SIGTERM; log:\n{}",
        s.server.log()
    );
}
