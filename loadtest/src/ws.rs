//! The client side of RFC 6455, reduced to what a load generator needs.
//!
//! Owns: the upgrade request, the check of the `101` answer and the lookup of its headers, the
//! parsing of server frame headers in place (no copy, no allocation, no UTF-8 validation) and the
//! encoding of masked client frames.
//! It never reads a socket itself: callers hand it bytes, so it can be tested without a network.

use std::fmt;

/// Opcodes the client cares about.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Why a byte stream is not a valid sequence of server frames.
#[derive(Debug, PartialEq, Eq)]
pub enum WsError {
    /// Servers must not mask their frames (RFC 6455 §5.1).
    MaskedServerFrame,
    /// A 64-bit length with the top bit set, or a control frame longer than 125 bytes.
    BadLength,
    /// The upgrade was answered with something else than `101`.
    UpgradeRefused(String),
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::MaskedServerFrame => write!(f, "server sent a masked frame"),
            WsError::BadLength => write!(f, "invalid frame length"),
            WsError::UpgradeRefused(s) => write!(f, "upgrade refused: {s}"),
        }
    }
}

impl std::error::Error for WsError {}

/// A parsed frame header: where the payload starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    /// Bytes of header (2, 4 or 10 for unmasked server frames).
    pub header_len: usize,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Header plus payload, the bytes this frame occupies on the wire.
    pub fn total_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

/// Parses the header of the server frame at the start of `buf`.
/// `Ok(None)` means more bytes are needed to know.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b1 & 0x80 != 0 {
        return Err(WsError::MaskedServerFrame);
    }
    let opcode = b0 & 0x0F;
    let (header_len, payload_len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as u64)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(WsError::BadLength);
            }
            (10, n)
        }
        n => (2, n as u64),
    };
    if opcode >= 0x8 && payload_len > 125 {
        return Err(WsError::BadLength);
    }
    Ok(Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        opcode,
        header_len,
        payload_len,
    }))
}

/// Appends one masked client frame (FIN set) carrying `payload` to `out`.
///
/// The mask key comes from the caller (a cheap per-connection counter is fine: the mask only exists
/// to defeat proxy cache poisoning, which does not apply on loopback).
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | (opcode & 0x0F));
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The HTTP/1.1 upgrade request for `path` (which carries the query, e.g. `/websocket?vsn=2.0.0`).
pub fn upgrade_request(host: &str, path: &str, key_seed: u64) -> String {
    use base64::Engine;
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&key_seed.to_le_bytes());
    key[8..].copy_from_slice(&key_seed.rotate_left(29).to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Checks the server's answer to the upgrade. `Ok(Some(n))`: the head is `n` bytes long and was a
/// `101`; bytes after it are already WebSocket frames. `Ok(None)`: the head is not complete yet.
///
/// `Sec-WebSocket-Accept` is not verified: the peer is a server under test on loopback, and
/// checking it would cost a SHA-1 per connection for no information.
pub fn parse_upgrade_response(buf: &[u8]) -> Result<Option<usize>, WsError> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Err(WsError::UpgradeRefused("response head over 16 KiB".into()));
        }
        return Ok(None);
    };
    let head = &buf[..end];
    let status_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line).trim().to_string();
    let mut parts = status_line.split_whitespace();
    let _version = parts.next();
    if parts.next() != Some("101") {
        return Err(WsError::UpgradeRefused(status_line));
    }
    Ok(Some(end + 4))
}

/// The value of header `name` (case-insensitive) in a response head such as the one
/// [`parse_upgrade_response`] accepted; `None` when absent.
pub fn header_value<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            v.push(n as u8);
        } else if n <= 65535 {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn short_medium_and_long_headers_are_parsed() {
        for n in [0usize, 5, 125, 126, 300, 65535, 65536, 70000] {
            let f = server_frame(OP_TEXT, &vec![b'a'; n]);
            let h = parse_header(&f).unwrap().unwrap();
            assert_eq!(h.payload_len, n as u64);
            assert_eq!(h.total_len(), f.len() as u64);
            assert_eq!(h.opcode, OP_TEXT);
            assert!(h.fin);
        }
    }

    #[test]
    fn incomplete_header_asks_for_more() {
        let f = server_frame(OP_TEXT, &[b'x'; 300]);
        assert_eq!(parse_header(&f[..1]), Ok(None));
        assert_eq!(parse_header(&f[..3]), Ok(None));
        assert!(parse_header(&f[..4]).unwrap().is_some());
    }

    #[test]
    fn masked_server_frame_is_an_error() {
        assert_eq!(
            parse_header(&[0x81, 0x85, 0, 0, 0, 0]),
            Err(WsError::MaskedServerFrame)
        );
    }

    #[test]
    fn oversized_control_frame_is_an_error() {
        assert_eq!(parse_header(&[0x89, 126, 0, 200]), Err(WsError::BadLength));
    }

    #[test]
    fn client_frame_is_masked_and_round_trips() {
        let payload = br#"[null,"1","phoenix","heartbeat",{}]"#;
        let mask = [1, 2, 3, 4];
        let mut out = Vec::new();
        encode_client_frame(&mut out, OP_TEXT, payload, mask);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | payload.len() as u8);
        assert_eq!(&out[2..6], &mask);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(unmasked, payload);

        let big = vec![b'z'; 1000];
        let mut out = Vec::new();
        encode_client_frame(&mut out, OP_BINARY, &big, mask);
        assert_eq!(out[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1000);
        assert_eq!(out.len(), 4 + 4 + 1000);
    }

    #[test]
    fn upgrade_answer_101_is_accepted_and_frames_after_it_are_kept() {
        let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let head_len = resp.len();
        resp.extend_from_slice(&server_frame(OP_TEXT, b"[]"));
        assert_eq!(parse_upgrade_response(&resp), Ok(Some(head_len)));
        assert_eq!(parse_upgrade_response(&resp[..10]), Ok(None));
    }

    #[test]
    fn upgrade_answer_other_than_101_is_refused() {
        let resp = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n";
        assert!(
            matches!(parse_upgrade_response(resp), Err(WsError::UpgradeRefused(s)) if s.contains("403"))
        );
    }

    #[test]
    fn upgrade_request_has_the_required_headers() {
        let r = upgrade_request("127.0.0.1:4000", "/websocket?vsn=2.0.0", 42);
        assert!(r.starts_with("GET /websocket?vsn=2.0.0 HTTP/1.1\r\n"));
        assert!(r.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(r.contains("Sec-WebSocket-Key: "));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn upgrade_answer_headers_are_found_by_name() {
        let resp =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-Channel-Shard: 1\r\n\r\n";
        let head = parse_upgrade_response(resp).unwrap().unwrap();
        assert_eq!(header_value(&resp[..head], "x-channel-shard"), Some("1"));
        assert_eq!(header_value(&resp[..head], "upgrade"), Some("websocket"));
        assert_eq!(header_value(&resp[..head], "x-other"), None);
    }
}
