//! A synchronous WebSocket client for tests, on `tungstenite` over a blocking `TcpStream`.
//!
//! Every receive has a deadline (tests fail, they never hang). Frames are returned exactly as
//! they arrived: nothing is skipped or reordered unless a test asks for it. The channel helpers
//! (`join`, `push`, `leave`, `heartbeat`) speak the V2 text format and remember each topic's
//! join reference; everything else works for any format through `send_json`/`send_text`/
//! `send_binary`.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::{QUIET_PERIOD, RECV_TIMEOUT};

/// How long the TCP connect and the WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One frame as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: `(code, reason)`, or `None` for a close frame without a body.
    Close(Option<(u16, String)>),
    /// The TCP connection ended (or failed) without a further frame; the text says how.
    Disconnected(String),
}

impl Frame {
    /// The frame as JSON; panics if it is not a text frame holding JSON.
    pub fn json(&self) -> Value {
        match self {
            Frame::Text(text) => serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {text:?}")),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }
}

/// A test's WebSocket connection to the server.
pub struct TestSocket {
    ws: WebSocket<TcpStream>,
    next_ref: u64,
    join_refs: HashMap<String, String>,
}

impl TestSocket {
    /// Connects to `url` (`ws://127.0.0.1:P/websocket?vsn=2.0.0`); panics if the upgrade fails.
    pub fn connect(url: &str) -> TestSocket {
        match Self::try_connect(url) {
            Ok((socket, _response)) => socket,
            Err(e) => panic!("WebSocket connect to {url} failed: {}", describe_error(&e)),
        }
    }

    /// Connects with a `Sec-WebSocket-Protocol` header listing `protocols` (phoenix.js sends
    /// `phoenix, base64url.bearer.phx.<token>` for `authToken`). Returns the handshake response
    /// too, to check the chosen subprotocol.
    pub fn connect_with_protocols(url: &str, protocols: &[&str]) -> (TestSocket, Response) {
        let mut request = url
            .into_client_request()
            .unwrap_or_else(|e| panic!("bad WebSocket URL {url}: {e}"));
        let value = HeaderValue::from_str(&protocols.join(", "))
            .expect("test subprotocols are valid header text");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", value);
        Self::try_connect(request).unwrap_or_else(|e| {
            panic!(
                "WebSocket connect to {url} with protocols {protocols:?} failed: {}",
                describe_error(&e)
            )
        })
    }

    /// Expects the server to refuse the upgrade with an HTTP response; returns its status and
    /// body. Panics if the upgrade succeeds or fails without an HTTP answer.
    pub fn connect_refused(url: &str) -> (u16, String) {
        match Self::try_connect(url) {
            Ok(_) => panic!("expected the upgrade to {url} to be refused, but it succeeded"),
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                (response.status().as_u16(), body)
            }
            Err(e) => panic!(
                "expected an HTTP refusal of the upgrade to {url}, got: {}",
                describe_error(&e)
            ),
        }
    }

    /// Connects with any request tungstenite accepts (a URL string or a built `Request`).
    pub fn try_connect(
        request: impl IntoClientRequest,
    ) -> Result<(TestSocket, Response), tungstenite::Error> {
        let request = request.into_client_request()?;
        let host = request.uri().host().unwrap_or("127.0.0.1").to_string();
        let port = request.uri().port_u16().unwrap_or(80);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
            .next()
            .ok_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address for host"))?;
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        match tungstenite::client::client(request, stream) {
            Ok((ws, response)) => Ok((
                TestSocket {
                    ws,
                    next_ref: 0,
                    join_refs: HashMap::new(),
                },
                response,
            )),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => Err(tungstenite::Error::Io(
                std::io::Error::new(ErrorKind::TimedOut, "WebSocket handshake timed out"),
            )),
        }
    }

    /// A fresh message reference ("1", "2", ...), unique on this socket.
    pub fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    pub fn send_json(&mut self, value: &Value) {
        self.send(Message::text(value.to_string()));
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(Message::text(text));
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.send(Message::binary(bytes.to_vec()));
    }

    /// Sends any WebSocket message (ping, pong, close...).
    pub fn send(&mut self, message: Message) {
        if let Err(e) = self.ws.send(message) {
            panic!("WebSocket send failed: {}", describe_error(&e));
        }
    }

    /// Starts the closing handshake with `code` and `reason`.
    pub fn close(&mut self, code: u16, reason: &str) {
        let frame = tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        let _ = self.ws.close(Some(frame));
        let _ = self.ws.flush();
    }

    /// The next text, binary or close frame (pings and pongs are skipped), or `None` if none
    /// arrives within `timeout`.
    pub fn try_recv_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Err(e) = self.ws.get_ref().set_read_timeout(Some(left)) {
                return Some(Frame::Disconnected(format!("socket unusable: {e}")));
            }
            match self.ws.read() {
                Ok(Message::Text(text)) => return Some(Frame::Text(text.as_str().to_string())),
                Ok(Message::Binary(bytes)) => return Some(Frame::Binary(bytes.to_vec())),
                Ok(Message::Close(close)) => {
                    // Send the queued close reply now, as a browser would, so the server sees
                    // the closing handshake complete.
                    let _ = self.ws.flush();
                    return Some(Frame::Close(
                        close.map(|c| (u16::from(c.code), c.reason.as_str().to_string())),
                    ));
                }
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return None
                }
                Err(e) => return Some(Frame::Disconnected(describe_error(&e))),
            }
        }
    }

    /// The next frame; panics if none arrives within `timeout`.
    pub fn recv_frame_timeout(&mut self, timeout: Duration) -> Frame {
        self.try_recv_frame(timeout)
            .unwrap_or_else(|| panic!("no frame from the server within {timeout:?}"))
    }

    /// The next frame, which must be a JSON text frame; panics otherwise or on timeout.
    pub fn recv_json_timeout(&mut self, timeout: Duration) -> Value {
        self.recv_frame_timeout(timeout).json()
    }

    /// [`TestSocket::recv_json_timeout`] with the default deadline.
    pub fn recv_json(&mut self) -> Value {
        self.recv_json_timeout(RECV_TIMEOUT)
    }

    /// The next frame, which must be binary; panics otherwise or on timeout.
    pub fn recv_binary_timeout(&mut self, timeout: Duration) -> Vec<u8> {
        match self.recv_frame_timeout(timeout) {
            Frame::Binary(bytes) => bytes,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// The next frame must be a close frame; returns its `(code, reason)`.
    pub fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        match self.recv_frame_timeout(timeout) {
            Frame::Close(Some(close)) => close,
            other => panic!("expected a close frame with a code, got {other:?}"),
        }
    }

    /// Skips frames until one satisfies `matches`; returns it and the frames skipped before it.
    /// For tests that deliberately ignore unrelated traffic (say, presence) on the way.
    pub fn recv_json_until(
        &mut self,
        timeout: Duration,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match self.try_recv_frame(left) {
                Some(frame) => frame,
                None => panic!(
                    "no matching frame within {timeout:?}; skipped: {}",
                    Value::Array(skipped)
                ),
            };
            let value = frame.json();
            if matches(&value) {
                return (value, skipped);
            }
            skipped.push(value);
        }
    }

    /// Panics if any frame arrives within `period`.
    pub fn expect_no_message(&mut self, period: Duration) {
        if let Some(frame) = self.try_recv_frame(period) {
            panic!("expected no frame for {period:?}, got {frame:?}");
        }
    }

    /// [`TestSocket::expect_no_message`] for the default quiet period.
    pub fn expect_quiet(&mut self) {
        self.expect_no_message(QUIET_PERIOD);
    }

    // --- V2 channel helpers -------------------------------------------------------------

    /// Sends `[R, R, topic, "phx_join", {"token": token}]` and returns the reply frame, which
    /// must be the next frame and a `phx_reply` to this ref (ok or error). Remembers the join
    /// ref for `push` and `leave`.
    pub fn join(&mut self, topic: &str, token: &str) -> Value {
        self.join_with_payload(topic, json!({ "token": token }))
    }

    /// Like [`TestSocket::join`] with any join payload.
    pub fn join_with_payload(&mut self, topic: &str, payload: Value) -> Value {
        let join_ref = self.next_ref();
        self.send_json(&json!([join_ref, join_ref, topic, "phx_join", payload]));
        let reply = self.recv_reply(&join_ref);
        self.join_refs.insert(topic.to_string(), join_ref);
        reply
    }

    /// Joins and asserts the exact ok reply `[R, R, topic, "phx_reply", {"status":"ok",...}]`;
    /// returns the `response`.
    pub fn join_ok(&mut self, topic: &str, token: &str) -> Value {
        let reply = self.join(topic, token);
        assert_eq!(
            reply[4]["status"], "ok",
            "join of {topic:?} was not accepted: {reply}"
        );
        reply[4]["response"].clone()
    }

    /// The join ref this socket last used for `topic`.
    pub fn join_ref(&self, topic: &str) -> Option<&str> {
        self.join_refs.get(topic).map(String::as_str)
    }

    /// Sends `[J, R, topic, event, payload]` with the topic's join ref (null if never joined);
    /// returns R.
    pub fn push(&mut self, topic: &str, event: &str, payload: Value) -> String {
        let r = self.next_ref();
        let join_ref = self.join_ref(topic).map(str::to_string);
        self.send_json(&json!([join_ref, r, topic, event, payload]));
        r
    }

    /// Sends a V2 binary push (kind 0) with the topic's join ref (empty if never joined);
    /// returns R.
    pub fn push_binary(&mut self, topic: &str, event: &str, data: &[u8]) -> String {
        let r = self.next_ref();
        let join_ref = self.join_ref(topic).unwrap_or("").to_string();
        let frame = encode_binary_push(&join_ref, &r, topic, event, data);
        self.send_binary(&frame);
        r
    }

    /// Sends `phx_leave` for `topic` and returns the reply (the next frame). The `phx_close`
    /// that follows an ok leave is left for the test to assert.
    pub fn leave(&mut self, topic: &str) -> Value {
        let r = self.next_ref();
        let join_ref = self.join_ref(topic).map(str::to_string);
        self.send_json(&json!([join_ref, r, topic, "phx_leave", {}]));
        self.recv_reply(&r)
    }

    /// Sends a heartbeat and returns the reply (the next frame).
    pub fn heartbeat(&mut self) -> Value {
        let r = self.next_ref();
        self.send_json(&json!([null, r, "phoenix", "heartbeat", {}]));
        self.recv_reply(&r)
    }

    /// The next frame, asserted to be a V2 `phx_reply` with ref `r`.
    pub fn recv_reply(&mut self, r: &str) -> Value {
        let frame = self.recv_json();
        assert!(
            frame[1] == r && frame[3] == "phx_reply",
            "expected the phx_reply to ref {r:?} as the next frame, got {frame}"
        );
        frame
    }

    /// The underlying tungstenite socket, for what the helpers do not cover.
    pub fn inner(&mut self) -> &mut WebSocket<TcpStream> {
        &mut self.ws
    }
}

/// A V2 binary client push: `0, len(join_ref), len(ref), len(topic), len(event), join_ref, ref,
/// topic, event, data`.
pub fn encode_binary_push(
    join_ref: &str,
    r: &str,
    topic: &str,
    event: &str,
    data: &[u8],
) -> Vec<u8> {
    let fields = [join_ref, r, topic, event];
    let mut frame = vec![0u8];
    for field in fields {
        frame.push(u8::try_from(field.len()).expect("test binary fields are at most 255 bytes"));
    }
    for field in fields {
        frame.extend_from_slice(field.as_bytes());
    }
    frame.extend_from_slice(data);
    frame
}

/// A V2 binary server broadcast (kind 2) taken apart: `(topic, event, data)`.
pub fn decode_binary_broadcast(frame: &[u8]) -> (String, String, Vec<u8>) {
    assert!(
        frame.len() >= 3 && frame[0] == 2,
        "not a kind-2 binary broadcast: {frame:?}"
    );
    let topic_len = frame[1] as usize;
    let event_len = frame[2] as usize;
    let topic_end = 3 + topic_len;
    let event_end = topic_end + event_len;
    assert!(
        frame.len() >= event_end,
        "truncated binary broadcast: {frame:?}"
    );
    (
        String::from_utf8_lossy(&frame[3..topic_end]).into_owned(),
        String::from_utf8_lossy(&frame[topic_end..event_end]).into_owned(),
        frame[event_end..].to_vec(),
    )
}

fn describe_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => format!(
            "HTTP {} {:?}",
            response.status(),
            response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        ),
        other => other.to_string(),
    }
}
