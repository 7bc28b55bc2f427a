//! One WebSocket connection for the scenarios that act on what the server answers (the soak's
//! churn clients, slow clients): push and join replies, close codes, the shard that took it.
//!
//! Owns the socket, its read buffer and the parsing of the frames in it (with `ws.rs`). Not the
//! fleet's hot path (`client.rs` is): it parses every reply as JSON and copies pings. It never
//! sleeps or retries; callers decide what a closed socket means.

use crate::stamp::{find_stamp, now_us};
use crate::token::connect;
use crate::ws;
use anyhow::{bail, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Receive buffer of a socket opened with `small_rcvbuf`: the kernel then holds little for a
/// client that stops reading, so the server's own queue for it fills.
const SMALL_RCVBUF: u32 = 4096;
/// MSS such a socket announces (Ethernet's). On loopback the MSS is ~64 KiB, and Linux sizes the
/// server's send buffer from it: ~3.9 MB that a stalled client would have to fill before the
/// server's own queue starts to count; with this MSS it is tens of KB, as over a real network.
const SMALL_MSS: u32 = 1460;

/// What a batch of input frames contained that the caller must act on.
#[derive(Default)]
pub struct Input {
    /// `(ref, ok, reason)` of every `phx_reply`.
    pub replies: Vec<(String, bool, Option<String>)>,
    /// The code of a close frame; frames after it are not looked at.
    pub close: Option<u16>,
    /// Stamped messages seen.
    pub deliveries: u64,
}

/// An upgraded WebSocket connection.
pub struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
    mask: u32,
    /// The server's `x-channel-shard` answer to the upgrade (None: the header was absent).
    pub shard: Option<String>,
}

impl Ws {
    /// Connects to `addr` and upgrades on `ws_path`; with `small_rcvbuf`, the socket's receive
    /// buffer is [`SMALL_RCVBUF`] and its MSS [`SMALL_MSS`].
    pub async fn open(
        addr: SocketAddr,
        host: &str,
        ws_path: &str,
        seed: u64,
        small_rcvbuf: bool,
    ) -> Result<Ws> {
        let mut stream = if small_rcvbuf {
            let s = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            s.set_recv_buffer_size(SMALL_RCVBUF)?;
            socket2::SockRef::from(&s).set_mss(SMALL_MSS)?;
            let st = s.connect(addr).await?;
            st.set_nodelay(true)?;
            st
        } else {
            connect(addr, None).await?
        };
        let req = ws::upgrade_request(host, ws_path, seed ^ now_us());
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(4096);
        let head = loop {
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("connection closed during the upgrade");
            }
            if let Some(n) = ws::parse_upgrade_response(&buf)? {
                break n;
            }
        };
        let shard = ws::header_value(&buf[..head], "x-channel-shard").map(str::to_string);
        buf.drain(..head);
        Ok(Ws {
            stream,
            buf,
            out: Vec::new(),
            mask: seed as u32 | 1,
            shard,
        })
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        ws::encode_client_frame(&mut self.out, opcode, payload, self.mask.to_le_bytes());
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads once; `Ok(false)` on EOF.
    pub async fn read(&mut self) -> Result<bool> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(16 * 1024);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Consumes the complete frames in the buffer: stamps go to `stamps`, replies and the close
    /// code to the result; pings are answered.
    pub async fn process(&mut self, stamps: Option<&mut Vec<u64>>) -> Result<Input> {
        let mut input = Input::default();
        let mut pos = 0;
        let mut pongs = Vec::new();
        let mut stamps = stamps;
        while let Some(h) = ws::parse_header(&self.buf[pos..])? {
            let total = h.total_len() as usize;
            if self.buf.len() - pos < total {
                break;
            }
            let payload = &self.buf[pos + h.header_len..pos + total];
            pos += total;
            match h.opcode {
                ws::OP_TEXT | ws::OP_BINARY => {
                    if let Some(r) = parse_reply(payload) {
                        input.replies.push(r);
                    } else if let Some(t) = find_stamp(payload) {
                        input.deliveries += 1;
                        if let Some(s) = stamps.as_deref_mut() {
                            s.push(t);
                        }
                    }
                }
                ws::OP_PING => pongs.push(payload.to_vec()),
                ws::OP_CLOSE => {
                    input.close = Some(close_code(payload));
                    break;
                }
                _ => {}
            }
        }
        self.buf.drain(..pos);
        for p in pongs {
            self.send(ws::OP_PONG, &p).await?;
        }
        Ok(input)
    }

    /// Shuts the write side down (after our close frame).
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// The code of a close frame's payload (1005 when it has none).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

/// A reply to one of our refs: `(ref, ok, reason)`.
pub fn parse_reply(frame: &[u8]) -> Option<(String, bool, Option<String>)> {
    memchr::memmem::find(frame, b"phx_reply")?;
    let v: serde_json::Value = serde_json::from_slice(frame).ok()?;
    let a = v.as_array()?;
    if a.get(3)?.as_str()? != "phx_reply" {
        return None;
    }
    let r = a.get(1)?.as_str()?.to_string();
    let p = a.get(4)?;
    let ok = p.get("status")?.as_str()? == "ok";
    let reason = p
        .get("response")
        .and_then(|r| r.get("reason"))
        .and_then(|r| r.as_str())
        .map(str::to_string);
    Some((r, ok, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_close_codes_are_parsed() {
        assert_eq!(
            parse_reply(br#"["3","p17","lt:0","phx_reply",{"status":"error","response":{"reason":"backend unavailable"}}]"#),
            Some(("p17".into(), false, Some("backend unavailable".into())))
        );
        assert_eq!(
            parse_reply(br#"["3","3","lt:0","phx_reply",{"status":"ok","response":{}}]"#),
            Some(("3".into(), true, None))
        );
        assert_eq!(parse_reply(br#"[null,null,"lt:0","msg",{"t":1}]"#), None);
        assert_eq!(close_code(&[0x03, 0xF5, b's']), 1013);
        assert_eq!(close_code(&[]), 1005);
    }
}
