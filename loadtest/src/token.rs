//! `POST /token` over HTTP/1.1 keep-alive, and the TCP connect used by every client socket.
//!
//! Owns a small per-thread pool of idle keep-alive connections so that thousands of joins do not
//! burn thousands of ephemeral ports in TIME_WAIT. Used on the join path only, never per message.

use anyhow::{anyhow, bail, Context, Result};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a TCP connection to `addr`, from `source` when given (127.0.0.x spreading), with Nagle off.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        bind_no_port(&socket);
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding source address {ip}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Lets the kernel pick the source port at connect time, per destination, so that one source address
/// is not limited to one connection per ephemeral port across all destinations.
fn bind_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own with a pointer to a live c_int of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Mints tokens with `POST /token`, reusing idle connections of this thread.
pub struct TokenClient {
    addr: SocketAddr,
    host: String,
    source: Option<IpAddr>,
    idle: RefCell<Vec<TcpStream>>,
}

impl TokenClient {
    pub fn new(addr: SocketAddr, host: String, source: Option<IpAddr>) -> TokenClient {
        TokenClient {
            addr,
            host,
            source,
            idle: RefCell::new(Vec::new()),
        }
    }

    /// A token for `channel` with client id `id`. Retries once on a fresh connection when a pooled
    /// one turns out to have been closed by the server.
    pub async fn fetch(&self, channel: &str, id: &str) -> Result<String> {
        let pooled = self.idle.borrow_mut().pop();
        if let Some(conn) = pooled {
            if let Ok(t) = self.request(conn, channel, id).await {
                return Ok(t);
            }
        }
        let conn = connect(self.addr, self.source).await?;
        self.request(conn, channel, id).await
    }

    async fn request(&self, mut conn: TcpStream, channel: &str, id: &str) -> Result<String> {
        let body = serde_json::json!({ "channel": channel, "id": id }).to_string();
        let req = format!(
            "POST /token HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            self.host,
            body.len(),
            body
        );
        conn.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let ResponseHead {
            status,
            head_len,
            content_length,
            close,
        } = loop {
            if conn.read_buf(&mut buf).await? == 0 {
                bail!("token: connection closed before the response head");
            }
            if let Some(h) = parse_response_head(&buf)? {
                break h;
            }
        };
        let body_len =
            content_length.ok_or_else(|| anyhow!("token: response without content-length"))?;
        while buf.len() < head_len + body_len {
            if conn.read_buf(&mut buf).await? == 0 {
                bail!("token: connection closed in the body");
            }
        }
        let body = &buf[head_len..head_len + body_len];
        if status != 200 {
            bail!("token: HTTP {status}: {}", String::from_utf8_lossy(body));
        }
        let token = extract_token(body)?;
        if !close {
            self.idle.borrow_mut().push(conn);
        }
        Ok(token)
    }
}

/// The parts of an HTTP response head the token client needs.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head, up to and including the blank line.
    pub head_len: usize,
    pub content_length: Option<usize>,
    /// `Connection: close`: the connection must not be reused.
    pub close: bool,
}

/// Parses the response head once it is complete (`Ok(None)` before).
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf).context("token: malformed HTTP response")? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(n) => {
            let mut len = None;
            let mut close = false;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok());
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                }
            }
            Ok(Some(ResponseHead {
                status: resp.code.unwrap_or(0),
                head_len: n,
                content_length: len,
                close,
            }))
        }
    }
}

/// The `token` field of a `/token` answer.
pub fn extract_token(body: &[u8]) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: String,
    }
    let a: Answer = serde_json::from_slice(body)
        .with_context(|| format!("token: unexpected body {}", String::from_utf8_lossy(body)))?;
    Ok(a.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_head_gives_status_length_and_keep_alive() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"token\":1}";
        let h = parse_response_head(r).unwrap().unwrap();
        assert_eq!(
            (h.status, h.content_length, h.close),
            (200, Some(12), false)
        );
        assert_eq!(&r[h.head_len..h.head_len + 3], b"{\"t");
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\ncont")
            .unwrap()
            .is_none());
        let h = parse_response_head(b"HTTP/1.1 400 Bad\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
    }

    #[test]
    fn token_is_extracted_from_tangram_and_channel_answers() {
        assert_eq!(
            extract_token(br#"{"channel":"lt:0","id":"c1","token":"abc.def.ghi"}"#).unwrap(),
            "abc.def.ghi"
        );
        assert!(extract_token(br#"{"error":"bad"}"#).is_err());
    }
}
