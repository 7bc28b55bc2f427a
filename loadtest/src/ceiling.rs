//! `loadtest ceiling`: the fastest downstream fan-out this machine can do through the same
//! sockets, to tell how close a real server comes to it.
//!
//! It speaks just enough of the public surface for the load tool to drive it with the same
//! `fanout` and `topics` scenarios: `POST /token` answers a dummy token, `GET /websocket` upgrades,
//! a `phx_join` gets an `ok` reply (a heartbeat too), and every Redis `pmessage` on `to:*` is
//! written to the sockets joined on its topic as the V2 broadcast `[null,null,topic,event,payload]`.
//! Nothing else: no token check, no JSON validation of payloads, no presence, no pushes to Redis.
//!
//! How it is fast, and what a real server could at best match:
//! - one thread reads Redis (blocking `read` of everything available), builds each frame once and
//!   groups one read's frames by topic into one contiguous buffer per topic (a *batch*);
//! - one tokio current-thread runtime per core, each with its own `SO_REUSEPORT` listener, owns
//!   its sockets and a topic → sockets table; the Redis thread hands every worker the same
//!   `Arc<Batch>` and wakes it once (tokio `Notify`, an eventfd write);
//! - a worker writes a topic's whole buffer (all pending batches merged) to each socket of the
//!   topic with **one `write` per socket**, straight from the fan-out loop (no task wake-up per
//!   socket); only a socket whose kernel buffer is full gets a backlog and a flusher task, and a
//!   backlog past `--max-backlog` closes the socket (memory stays bounded).
//!
//! What it must never do: parse a payload, copy a frame per receiver, or block a worker.

use crate::net::parse_redis_url;
use crate::resp::{encode_command, parse_resp, Resp};
use anyhow::{anyhow, bail, Context, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Where and how to serve.
pub struct CeilingArgs {
    pub bind: IpAddr,
    pub port: u16,
    pub redis: String,
    /// Socket-owning worker threads; 0 = one per available core.
    pub threads: usize,
    /// Bytes a socket may have waiting for its kernel buffer before it is closed.
    pub max_backlog: usize,
}

/// Frames of one Redis read, grouped by topic: `(topic, concatenated frames in Redis order)`.
struct Batch {
    topics: Vec<(Box<str>, Vec<u8>)>,
}

/// What the Redis thread hands one worker.
#[derive(Default)]
struct Inbox {
    pending: Mutex<Vec<Arc<Batch>>>,
    notify: Notify,
}

/// Serves until the Redis connection ends (or the process is killed).
pub fn serve(args: CeilingArgs) -> Result<()> {
    let redis_addr = parse_redis_url(&args.redis)?;
    crate::net::raise_fd_limit();
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let addr = SocketAddr::new(args.bind, args.port);
    let mut inboxes = Vec::new();
    for i in 0..threads {
        let listener = reuseport_listener(addr).with_context(|| format!("listening on {addr}"))?;
        let inbox = Arc::new(Inbox::default());
        inboxes.push(inbox.clone());
        let max_backlog = args.max_backlog;
        std::thread::Builder::new()
            .name(format!("ceiling-{i}"))
            .spawn(move || {
                if let Err(e) = worker(listener, inbox, max_backlog) {
                    eprintln!("ceiling worker {i}: {e:#}");
                    std::process::exit(1);
                }
            })?;
    }
    eprintln!(
        "ceiling: http://{addr} ({threads} worker thread(s)), fan-out of Redis to:* from {redis_addr}"
    );
    redis_reader(redis_addr, &inboxes)
}

fn reuseport_listener(addr: SocketAddr) -> Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Appends the unmasked server frame (FIN set) of `opcode` carrying `payload` to `out`.
fn push_frame_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    push_frame_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends the text frame `[null,null,"topic","event",payload]` (payload verbatim) to `out`.
fn push_broadcast(out: &mut Vec<u8>, topic: &str, event: &str, payload: &[u8]) {
    let mut prefix = Vec::with_capacity(16 + topic.len() + event.len());
    prefix.extend_from_slice(b"[null,null,");
    // serde_json escapes exactly what JSON requires; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut prefix, topic);
    prefix.push(b',');
    let _ = serde_json::to_writer(&mut prefix, event);
    prefix.push(b',');
    push_frame_header(out, 0x1, prefix.len() + payload.len() + 1);
    out.extend_from_slice(&prefix);
    out.extend_from_slice(payload);
    out.push(b']');
}

/// `to:<topic>:<event>` → (topic, event), split at the last `:`.
fn split_channel(channel: &[u8]) -> Option<(&str, &str)> {
    let rest = std::str::from_utf8(channel.strip_prefix(b"to:")?).ok()?;
    let (topic, event) = rest.rsplit_once(':')?;
    (!topic.is_empty() && !event.is_empty()).then_some((topic, event))
}

/// Reads `PSUBSCRIBE to:*` forever; every read's messages become one batch for every worker.
fn redis_reader(addr: SocketAddr, inboxes: &[Arc<Inbox>]) -> Result<()> {
    let mut s = std::net::TcpStream::connect(addr)
        .with_context(|| format!("connecting to Redis {addr}"))?;
    s.set_nodelay(true)?;
    let mut cmd = Vec::new();
    encode_command(&mut cmd, &[b"PSUBSCRIBE", b"to:*"]);
    s.write_all(&cmd)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        let len = buf.len();
        buf.resize(len + (256 << 10), 0);
        let n = s.read(&mut buf[len..]).context("reading from Redis")?;
        buf.truncate(len + n);
        if n == 0 {
            bail!("Redis closed the connection");
        }
        let mut topics: Vec<(Box<str>, Vec<u8>)> = Vec::new();
        let mut index: HashMap<Box<str>, usize> = HashMap::new();
        let mut pos = 0;
        while let Some((value, used)) = parse_resp(&buf[pos..])? {
            pos += used;
            let Resp::Array(items) = value else { continue };
            let [Resp::Bulk(Some(kind)), _, Resp::Bulk(Some(channel)), Resp::Bulk(Some(payload))] =
                items.as_slice()
            else {
                continue;
            };
            if *kind != b"pmessage" {
                continue;
            }
            let Some((topic, event)) = split_channel(channel) else {
                continue;
            };
            let slot = match index.get(topic) {
                Some(&i) => i,
                None => {
                    index.insert(topic.into(), topics.len());
                    topics.push((topic.into(), Vec::with_capacity(payload.len() + 64)));
                    topics.len() - 1
                }
            };
            push_broadcast(&mut topics[slot].1, topic, event, payload);
        }
        buf.drain(..pos);
        if topics.is_empty() {
            continue;
        }
        let batch = Arc::new(Batch { topics });
        for inbox in inboxes {
            inbox
                .pending
                .lock()
                .map_err(|_| anyhow!("a worker panicked"))?
                .push(batch.clone());
            inbox.notify.notify_one();
        }
    }
}

/// One accepted socket, shared by its reader task and the worker's fan-out loop.
struct Conn {
    stream: TcpStream,
    /// Bytes the kernel did not take yet; non-empty exactly while a flusher task runs.
    backlog: RefCell<Vec<u8>>,
    closed: Cell<bool>,
    max_backlog: usize,
}

impl Conn {
    /// Writes `bytes` now if the socket takes them, else queues them behind the backlog.
    fn send(self: &Rc<Self>, bytes: &[u8]) {
        if self.closed.get() {
            return;
        }
        let mut backlog = self.backlog.borrow_mut();
        if !backlog.is_empty() {
            if backlog.len() + bytes.len() > self.max_backlog {
                drop(backlog);
                self.close();
            } else {
                backlog.extend_from_slice(bytes);
            }
            return;
        }
        let rest = match self.stream.try_write(bytes) {
            Ok(n) if n == bytes.len() => return,
            Ok(n) => &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => bytes,
            Err(_) => {
                drop(backlog);
                self.close();
                return;
            }
        };
        backlog.extend_from_slice(rest);
        tokio::task::spawn_local(self.clone().flush());
    }

    async fn flush(self: Rc<Self>) {
        loop {
            if self.closed.get() || self.stream.writable().await.is_err() {
                self.close();
                return;
            }
            let mut backlog = self.backlog.borrow_mut();
            match self.stream.try_write(&backlog) {
                Ok(n) => {
                    backlog.drain(..n);
                    if backlog.is_empty() {
                        *backlog = Vec::new();
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    drop(backlog);
                    self.close();
                    return;
                }
            }
        }
    }

    /// Stops writing; the reader task sees the shutdown and ends the connection.
    fn close(&self) {
        if !self.closed.replace(true) {
            let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Both);
            *self.backlog.borrow_mut() = Vec::new();
        }
    }
}

type Table = Rc<RefCell<HashMap<Box<str>, Vec<Rc<Conn>>>>>;

fn worker(listener: std::net::TcpListener, inbox: Arc<Inbox>, max_backlog: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let table: Table = Rc::default();
        tokio::task::spawn_local(fan_out(inbox, table.clone()));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(a) => a,
                // Out of descriptors or a connection reset before accept: keep serving the others.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn = Rc::new(Conn {
                stream,
                backlog: RefCell::new(Vec::new()),
                closed: Cell::new(false),
                max_backlog,
            });
            let table = table.clone();
            tokio::task::spawn_local(async move {
                let _ = connection(&conn, &table).await;
                conn.close();
            });
        }
    })
}

/// Writes every pending batch to the sockets of its topics, one write per socket and topic.
async fn fan_out(inbox: Arc<Inbox>, table: Table) {
    loop {
        inbox.notify.notified().await;
        let batches = match inbox.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return,
        };
        let merged;
        let topics: &[(Box<str>, Vec<u8>)] = if batches.len() == 1 {
            &batches[0].topics
        } else {
            merged = merge(&batches);
            &merged
        };
        let mut table = table.borrow_mut();
        for (topic, bytes) in topics {
            if let Some(conns) = table.get_mut(topic) {
                conns.retain(|c| !c.closed.get());
                for c in conns.iter() {
                    c.send(bytes);
                }
            }
        }
    }
}

/// Several batches waiting: concatenate each topic's frames so that a socket still gets one write.
fn merge(batches: &[Arc<Batch>]) -> Vec<(Box<str>, Vec<u8>)> {
    let mut out: Vec<(Box<str>, Vec<u8>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for b in batches {
        for (topic, bytes) in &b.topics {
            match index.get(&**topic) {
                Some(&i) => out[i].1.extend_from_slice(bytes),
                None => {
                    index.insert(topic, out.len());
                    out.push((topic.clone(), bytes.clone()));
                }
            }
        }
    }
    out
}

/// Reads more bytes into `buf`; false at end of stream.
async fn read_more(conn: &Conn, buf: &mut Vec<u8>) -> Result<bool> {
    loop {
        conn.stream.readable().await?;
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match conn.stream.try_read_buf(buf) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// HTTP until the upgrade (answering any number of `POST /token`), then WebSocket frames.
async fn connection(conn: &Rc<Conn>, table: &Table) -> Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&buf)? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => {
                if buf.len() > 16 * 1024 || !read_more(conn, &mut buf).await? {
                    return Ok(());
                }
                continue;
            }
        };
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let path = req.path.unwrap_or("");
        if req.method == Some("POST") && path.starts_with("/token") {
            let body_len: usize = header("content-length")
                .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_len + body_len {
                if !read_more(conn, &mut buf).await? {
                    return Ok(());
                }
            }
            let body: serde_json::Value =
                serde_json::from_slice(&buf[head_len..head_len + body_len]).unwrap_or_default();
            let answer = serde_json::json!({
                "channel": body.get("channel").cloned().unwrap_or_default(),
                "id": body.get("id").cloned().unwrap_or_default(),
                "token": "ceiling",
            })
            .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            conn.send(resp.as_bytes());
            buf.drain(..head_len + body_len);
            continue;
        }
        let key = header("sec-websocket-key");
        if req.method == Some("GET") && path.starts_with("/websocket") && key.is_some() {
            let accept = accept_key(key.unwrap_or_default());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                 sec-websocket-accept: {accept}\r\n\r\n"
            );
            conn.send(resp.as_bytes());
            buf.drain(..head_len);
            break;
        }
        conn.send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return Ok(());
    }
    websocket(conn, table, buf).await
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One masked client frame at the start of `buf`: (opcode, payload range, total length).
fn client_frame(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 == 0 {
        bail!("unmasked client frame");
    }
    let (len, at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (
                usize::try_from(u64::from_be_bytes(b)).context("frame too long")?,
                10,
            )
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if len > 1 << 20 {
        bail!("client frame over 1 MiB");
    }
    let start = at + 4;
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some((buf[0] & 0x0F, start..start + len, start + len)))
}

async fn websocket(conn: &Rc<Conn>, table: &Table, mut buf: Vec<u8>) -> Result<()> {
    loop {
        let mut pos = 0;
        while let Some((opcode, range, total)) = client_frame(&buf[pos..])? {
            let frame = &mut buf[pos..pos + total];
            let mask = [
                frame[range.start - 4],
                frame[range.start - 3],
                frame[range.start - 2],
                frame[range.start - 1],
            ];
            let payload = &mut frame[range];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            match opcode {
                0x1 => message(conn, table, payload),
                0x8 => {
                    let mut out = Vec::new();
                    push_frame(&mut out, 0x8, &payload[..payload.len().min(2)]);
                    conn.send(&out);
                    return Ok(());
                }
                0x9 => {
                    let mut out = Vec::new();
                    push_frame(&mut out, 0xA, payload);
                    conn.send(&out);
                }
                _ => {}
            }
            pos += total;
        }
        buf.drain(..pos);
        if !read_more(conn, &mut buf).await? {
            return Ok(());
        }
    }
}

/// Answers joins and heartbeats; ignores everything else.
fn message(conn: &Rc<Conn>, table: &Table, text: &[u8]) {
    let find = memchr::memmem::find;
    let is_join = find(text, b"\"phx_join\"").is_some();
    if !is_join && find(text, b"\"heartbeat\"").is_none() {
        return;
    }
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(text) else {
        return;
    };
    let (Some(join_ref), Some(msg_ref), Some(serde_json::Value::String(topic))) =
        (items.first(), items.get(1), items.get(2))
    else {
        return;
    };
    let reply = serde_json::json!([
        join_ref,
        msg_ref,
        topic,
        "phx_reply",
        {"status": "ok", "response": {}}
    ])
    .to_string();
    let mut out = Vec::with_capacity(reply.len() + 4);
    push_frame(&mut out, 0x1, reply.as_bytes());
    conn.send(&out);
    if is_join {
        table
            .borrow_mut()
            .entry(topic.as_str().into())
            .or_default()
            .push(conn.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_frame_is_the_v2_array_with_the_payload_verbatim() {
        let mut out = Vec::new();
        push_broadcast(&mut out, "room:\"1\"", "msg", br#"{"t": 1}"#);
        let text = br#"[null,null,"room:\"1\"","msg",{"t": 1}]"#;
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1] as usize, text.len());
        assert_eq!(&out[2..], text);
    }

    #[test]
    fn channel_splits_at_the_last_colon() {
        assert_eq!(split_channel(b"to:lt:0:msg"), Some(("lt:0", "msg")));
        assert_eq!(split_channel(b"to:lt:"), None);
        assert_eq!(split_channel(b"from:lt:0:msg"), None);
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_client_frames_are_parsed_and_partial_ones_wait() {
        let mut f = Vec::new();
        crate::ws::encode_client_frame(&mut f, crate::ws::OP_TEXT, b"hello", [1, 2, 3, 4]);
        let (op, range, total) = client_frame(&f).unwrap().unwrap();
        assert_eq!((op, range, total), (1, 6..11, 11));
        assert!(client_frame(&f[..8]).unwrap().is_none());
        assert!(client_frame(b"\x81\x05hello").is_err());
    }

    #[test]
    fn merged_batches_keep_order_per_topic() {
        let a = Arc::new(Batch {
            topics: vec![("t1".into(), b"a".to_vec()), ("t2".into(), b"b".to_vec())],
        });
        let b = Arc::new(Batch {
            topics: vec![("t1".into(), b"c".to_vec())],
        });
        let m = merge(&[a, b]);
        assert_eq!(m[0], ("t1".into(), b"ac".to_vec()));
        assert_eq!(m[1], ("t2".into(), b"b".to_vec()));
    }
}
