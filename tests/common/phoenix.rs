//! Helpers for the protocol tests (`tests/*_test.rs`): one private Redis plus one server per
//! test ([`Setup`]), locally signed tokens for it, and exact-frame assertions.
//!
//! Presence (`presence_state`, `presence_diff`) is pinned by its own tests; the receive helpers
//! here skip presence frames so that a test pins only the behaviour it is named after and
//! does not break when presence is added. Nothing else is ever skipped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    http_request, sign_token, ChannelServer, Frame, RedisServer, ServerOptions, TestSocket,
    QUIET_PERIOD, RECV_TIMEOUT, TEST_JWT_SECRET,
};

/// A private Redis and a server bridged to it, both stopped on drop.
pub struct Setup {
    // Field order: the server stops before its Redis.
    pub server: ChannelServer,
    pub redis: RedisServer,
}

impl Setup {
    /// One shard, the test secret, default limits.
    pub fn new() -> Setup {
        Setup::with(ServerOptions::default())
    }

    /// With any server options; `config` is a `[channel]` TOML table body when given.
    ///
    /// Returns once `/healthz` says 200: the server answers HTTP before its Redis connections
    /// are up, and a test that publishes (or asks `/healthz`) at once would otherwise race
    /// them (seen on a loaded machine: a PUBLISH with no subscriber yet, a 503).
    pub fn with(opts: ServerOptions) -> Setup {
        let redis = RedisServer::start();
        let server = ChannelServer::start(&redis, opts);
        let setup = Setup { server, redis };
        setup.wait_until_healthy();
        setup
    }

    /// Waits (polling `/healthz`, 10 s at most) until the server reports Redis connected.
    pub fn wait_until_healthy(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.healthz() != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not report Redis connected within 10 s; log:\n{}",
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One shard with `[channel]` keys `toml` (for example `"idle_timeout_secs = 1"`).
    pub fn with_channel_keys(toml: &str) -> Setup {
        Setup::with(ServerOptions::default().config(&format!("[channel]\n{toml}\n")))
    }

    /// A valid token for `topic` with identity `id`, signed with the server's secret.
    pub fn token(&self, topic: &str) -> String {
        token_for(topic)
    }

    /// A raw V2 client with a 4 KiB receive buffer (and a `mss`-byte MSS when given), upgraded
    /// and joined to `topics` (join refs "1", "2", …), that reads nothing more by itself: the
    /// server's writes to it stall as soon as the kernel buffers are full (slow-consumer and
    /// burst tests). The join frames are sent, their replies left unread.
    pub fn raw_client_that_does_not_read(&self, mss: Option<u32>, topics: &[&str]) -> TcpStream {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        if let Some(mss) = mss {
            socket.set_mss(mss).expect("TCP_MAXSEG");
        }
        socket
            .connect_timeout(&self.server.addr().into(), Duration::from_secs(5))
            .expect("connect to the server");
        let mut stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let request = format!(
            "GET /websocket?vsn=2.0.0 HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            self.server.addr()
        );
        stream
            .write_all(request.as_bytes())
            .expect("upgrade request");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("the 101 response");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "upgrade refused: {}",
            String::from_utf8_lossy(&head)
        );
        for (i, topic) in topics.iter().enumerate() {
            let r = (i + 1).to_string();
            let join = json!([r, r, topic, "phx_join", {"token": token_for(topic)}]).to_string();
            stream
                .write_all(&masked_text_frame(join.as_bytes()))
                .expect("join frame");
        }
        stream
    }

    /// A V2 socket (`vsn=2.0.0`).
    pub fn v2(&self) -> TestSocket {
        TestSocket::connect(&self.server.ws_url("2.0.0"))
    }

    /// A V1 socket (`vsn=1.0.0`).
    pub fn v1(&self) -> TestSocket {
        TestSocket::connect(&self.server.ws_url("1.0.0"))
    }

    /// A V2 socket that has joined `topic` (asserting the exact ok reply); returns it.
    pub fn joined(&self, topic: &str) -> TestSocket {
        let mut socket = self.v2();
        join_ok_exact(&mut socket, topic, &self.token(topic));
        socket
    }

    /// `GET /healthz` status.
    pub fn healthz(&self) -> u16 {
        http_request(self.server.addr(), "GET", "/healthz", &[], b"").status
    }

    /// On a 2-shard server: opens V2 sockets until one is on shard 0 and one on shard 1 (the
    /// 101 response names the shard in `x-channel-shard`); the others are dropped.
    pub fn one_socket_per_shard(&self) -> [TestSocket; 2] {
        let url = self.server.ws_url("2.0.0");
        let mut found: [Option<TestSocket>; 2] = [None, None];
        for _ in 0..200 {
            let (socket, response) = TestSocket::try_connect(url.as_str())
                .unwrap_or_else(|e| panic!("WebSocket connect failed: {e}"));
            let shard: usize = response
                .headers()
                .get("x-channel-shard")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("101 without a numeric x-channel-shard: {response:?}"));
            assert!(shard < 2, "shard {shard} of a 2-shard server");
            if found[shard].is_none() {
                found[shard] = Some(socket);
            }
            if found.iter().all(Option::is_some) {
                let [a, b] = found;
                return [a.expect("checked"), b.expect("checked")];
            }
        }
        panic!("200 connections all landed on one shard: SO_REUSEPORT spreading is not working");
    }

    /// Overflows the outbound queue of a client of `topic` that reads nothing: 1,024 messages
    /// of 8 KiB on `to:<topic>:fill`, pipelined, far more than a 64 KiB queue plus small
    /// socket buffers hold.
    pub fn flood_topic(&self, topic: &str) {
        let chunk = format!("\"{}\"", "x".repeat(8 * 1024));
        let mut conn = self.redis.connection();
        for _ in 0..4 {
            let mut pipe = redis::pipe();
            for _ in 0..256 {
                pipe.cmd("PUBLISH")
                    .arg(format!("to:{topic}:fill"))
                    .arg(&chunk)
                    .ignore();
            }
            let _: () = pipe.query(&mut conn).expect("pipelined PUBLISH works");
        }
    }
}

impl Drop for Setup {
    /// SIGKILL, not SIGTERM: teardown must be quick, and graceful shutdown has its own test.
    fn drop(&mut self) {
        if std::thread::panicking() {
            // ChannelServer's own drop prints the log; let it see the process as it was.
            return;
        }
        self.server.kill();
    }
}

/// A valid token for `topic`, signed with [`TEST_JWT_SECRET`], valid for an hour.
pub fn token_for(topic: &str) -> String {
    sign_token(TEST_JWT_SECRET, topic, &format!("user-of-{topic}"), 3600)
}

/// Joins `topic` with `token` through the harness helper and asserts the reply is exactly
/// `[R, R, topic, "phx_reply", {"status":"ok","response":{}}]`; returns the join ref (R),
/// for [`send_raw_push`]. The harness's own `push`/`leave` do not know this join.
pub fn join_ok_exact(socket: &mut TestSocket, topic: &str, token: &str) -> String {
    let join_ref = socket.next_ref();
    socket.send_json(&json!([join_ref, join_ref, topic, "phx_join", {"token": token}]));
    expect_text(socket, &ok_reply(Some(&join_ref), &join_ref, topic, "{}"));
    join_ref
}

/// The exact V2 text of a reply.
pub fn reply_text(
    join_ref: Option<&str>,
    r: &str,
    topic: &str,
    status: &str,
    response: &str,
) -> String {
    format!(
        "[{},{},{},\"phx_reply\",{{\"status\":\"{status}\",\"response\":{response}}}]",
        json_opt(join_ref),
        json_str(r),
        json_str(topic)
    )
}

/// The exact V2 text of an ok reply with `response`.
pub fn ok_reply(join_ref: Option<&str>, r: &str, topic: &str, response: &str) -> String {
    reply_text(join_ref, r, topic, "ok", response)
}

/// The exact V2 text of an error reply with `{"reason": reason}`.
pub fn error_reply(join_ref: Option<&str>, r: &str, topic: &str, reason: &str) -> String {
    reply_text(
        join_ref,
        r,
        topic,
        "error",
        &json!({ "reason": reason }).to_string(),
    )
}

/// The exact V2 text of `[J, J, topic, "phx_close", {}]`.
pub fn close_text(join_ref: Option<&str>, topic: &str) -> String {
    format!(
        "[{j},{j},{},\"phx_close\",{{}}]",
        json_str(topic),
        j = json_opt(join_ref)
    )
}

/// The exact V2 text of a broadcast `[null, null, topic, event, payload]`, payload verbatim.
pub fn broadcast_text(topic: &str, event: &str, payload: &str) -> String {
    format!(
        "[null,null,{},{},{payload}]",
        json_str(topic),
        json_str(event)
    )
}

pub fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_str)
}

/// Sends `[J, R, topic, event, payload]` (J and R as given, payload as raw JSON text);
/// returns nothing: the caller knows R.
pub fn send_raw_push(
    socket: &mut TestSocket,
    join_ref: Option<&str>,
    r: &str,
    topic: &str,
    event: &str,
    payload_json: &str,
) {
    socket.send_text(&format!(
        "[{},{},{},{},{payload_json}]",
        json_opt(join_ref),
        json_str(r),
        json_str(topic),
        json_str(event)
    ));
}

fn is_presence(frame: &Frame) -> bool {
    let Frame::Text(text) = frame else {
        return false;
    };
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let event = if value.is_array() {
        value[3].clone()
    } else {
        value["event"].clone()
    };
    event == "presence_state" || event == "presence_diff"
}

/// The next frame that is not a presence frame, or `None` within `timeout`.
pub fn try_next(socket: &mut TestSocket, timeout: Duration) -> Option<Frame> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = socket.try_recv_frame(left)?;
        if !is_presence(&frame) {
            return Some(frame);
        }
    }
}

/// The next non-presence frame; panics on timeout.
pub fn next(socket: &mut TestSocket) -> Frame {
    try_next(socket, RECV_TIMEOUT)
        .unwrap_or_else(|| panic!("no frame from the server within {RECV_TIMEOUT:?}"))
}

/// The next non-presence frame must be a text frame with exactly `expected`.
pub fn expect_text(socket: &mut TestSocket, expected: &str) {
    match next(socket) {
        Frame::Text(text) => assert_eq!(text, expected, "unexpected text frame"),
        other => panic!("expected the text frame {expected}, got {other:?}"),
    }
}

/// The next non-presence frame must be a text frame whose JSON equals `expected` (for V1
/// objects, whose key order carries no meaning).
pub fn expect_json(socket: &mut TestSocket, expected: &Value) {
    match next(socket) {
        Frame::Text(text) => {
            let got: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {text:?}"));
            assert_eq!(&got, expected, "unexpected frame {text}");
        }
        other => panic!("expected the frame {expected}, got {other:?}"),
    }
}

/// The next non-presence frame must be a binary frame with exactly `expected`.
pub fn expect_binary(socket: &mut TestSocket, expected: &[u8]) {
    match next(socket) {
        Frame::Binary(bytes) => assert_eq!(bytes, expected, "unexpected binary frame"),
        other => panic!("expected a binary frame {expected:?}, got {other:?}"),
    }
}

/// The next non-presence frame must be a close frame with `code`; returns its reason.
pub fn expect_close_code(socket: &mut TestSocket, code: u16, timeout: Duration) -> String {
    match try_next(socket, timeout) {
        Some(Frame::Close(Some((got, reason)))) => {
            assert_eq!(got, code, "close code (reason {reason:?})");
            reason
        }
        other => {
            panic!("expected a close frame with code {code} within {timeout:?}, got {other:?}")
        }
    }
}

/// No non-presence frame arrives for the quiet period.
pub fn expect_quiet(socket: &mut TestSocket) {
    if let Some(frame) = try_next(socket, QUIET_PERIOD) {
        panic!("expected no frame for {QUIET_PERIOD:?}, got {frame:?}");
    }
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client text frame (FIN, opcode 1), masked with a fixed key, for raw-socket tests.
pub fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let key = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81u8];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// The next frame on `socket` with `event`, skipping others (presence, stats, events, replies
/// of other events); fails the test after `within`.
pub fn next_event(socket: &mut TestSocket, event: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {event} within {within:?}");
        let frame = socket.recv_json_timeout(left);
        if frame[3] == json!(event) {
            return frame;
        }
    }
}
