//! Load threads: each runs a tokio current-thread runtime driving many WebSocket clients.
//!
//! Owns the life of a client: token → connect → upgrade → join → receive (and push, heartbeat) until
//! the run stops. The receive path is the hot path of the whole tool: it reads into the connection's
//! buffer, walks frame headers in place, finds the stamp with one substring search and records it.
//! No JSON parse, no allocation, no copy per message; frames too big to matter (presence_state of a
//! large topic) are skipped without being buffered.

use crate::redis::WindowClock;
use crate::stamp::{find_stamp, now_us, payload_template, write_stamp, STAMP_POS};
use crate::stats::ThreadStats;
use crate::token::{connect, TokenClient};
use crate::ws;
use anyhow::{anyhow, bail, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

/// Frames larger than this are classified from their first bytes and skipped, never buffered.
const MAX_BUFFERED_FRAME: u64 = 16 * 1024;
/// Free space kept in a connection's read buffer before each read.
const READ_RESERVE: usize = 4096;

/// What every client of a run shares (read-only after start, or atomics).
pub struct RunShared {
    /// The server processes; a client connects to `servers[spec.server]` (one for every kind
    /// but `cluster`).
    pub servers: Vec<ServerAddr>,
    pub ws_path: String,
    /// The `since` of every join's payload (`None`: no `since` key).
    pub join_since: Option<serde_json::Value>,
    pub event: String,
    pub message_bytes: usize,
    pub join_timeout: Duration,
    pub heartbeat: Duration,
    pub source_ips: Vec<IpAddr>,
    /// Total push rate ×1000 (upstream); 0 = not pushing. Clients re-read it on each control change.
    pub push_rate_milli: AtomicU64,
    /// Clients expected to push (the rate is spread over them); 0 when the scenario has no pushes,
    /// which also spares every client a wake-up registration on the control channel.
    pub pushers: usize,
    pub window: Arc<WindowClock>,
    /// Joined and still connected clients per topic index.
    pub live_per_topic: Vec<AtomicI64>,
}

/// One server process: where to connect, and the `Host` header to send.
#[derive(Debug, Clone)]
pub struct ServerAddr {
    pub addr: SocketAddr,
    pub host: String,
}

/// One client to run: its index in the run, topic index and topic name, and the server process
/// it joins through (an index into [`RunShared::servers`]).
pub struct ClientSpec {
    pub index: usize,
    pub topic_index: usize,
    pub topic: String,
    pub server: usize,
}

/// Everything one load thread needs.
pub struct ThreadPlan {
    pub thread: usize,
    pub clients: Vec<ClientSpec>,
    pub join_in_flight: usize,
    pub stats: Arc<ThreadStats>,
    pub shared: Arc<RunShared>,
    /// Bumped by the coordinator when push settings change.
    pub control: watch::Receiver<u64>,
    /// Set to true to end the thread (dropping the runtime closes every socket).
    pub stop: watch::Receiver<bool>,
}

/// Runs one load thread to completion.
pub fn run_thread(plan: ThreadPlan) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let ThreadPlan {
        thread,
        clients,
        join_in_flight,
        stats,
        shared,
        control,
        mut stop,
    } = plan;
    local.block_on(&rt, async move {
        let sem = Rc::new(Semaphore::new(join_in_flight));
        let source = shared
            .source_ips
            .get(thread % shared.source_ips.len().max(1))
            .copied();
        // One keep-alive token client per server process: a token comes from the process the
        // client joins.
        let tokens: Vec<Rc<TokenClient>> = shared
            .servers
            .iter()
            .map(|s| Rc::new(TokenClient::new(s.addr, s.host.clone(), source)))
            .collect();
        for spec in clients {
            let ctx = ClientCtx {
                stats: stats.clone(),
                shared: shared.clone(),
                tokens: tokens[spec.server % tokens.len()].clone(),
                sem: sem.clone(),
                control: control.clone(),
            };
            tokio::task::spawn_local(client_main(ctx, spec));
        }
        let _ = stop.wait_for(|s| *s).await;
    });
    drop(local);
    drop(rt);
    Ok(())
}

struct ClientCtx {
    stats: Arc<ThreadStats>,
    shared: Arc<RunShared>,
    tokens: Rc<TokenClient>,
    sem: Rc<Semaphore>,
    control: watch::Receiver<u64>,
}

async fn client_main(ctx: ClientCtx, spec: ClientSpec) {
    let Ok(permit) = ctx.sem.acquire().await else {
        return;
    };
    let t0 = now_us();
    let joined = tokio::time::timeout(ctx.shared.join_timeout, establish(&ctx, &spec)).await;
    drop(permit);
    let mut conn = match joined {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            ctx.stats.join_failed.fetch_add(1, Relaxed);
            ctx.stats
                .note_error(format!("client {}: {e:#}", spec.index));
            return;
        }
        Err(_) => {
            ctx.stats.join_failed.fetch_add(1, Relaxed);
            ctx.stats.note_error(format!(
                "client {}: join timed out after {:?}",
                spec.index, ctx.shared.join_timeout
            ));
            return;
        }
    };
    if let Ok(mut h) = ctx.stats.join_latency.lock() {
        h.saturating_record(now_us().saturating_sub(t0).max(1));
    }
    ctx.stats.joined.fetch_add(1, Relaxed);
    ctx.shared.live_per_topic[spec.topic_index].fetch_add(1, Relaxed);
    let r = conn.serve(&ctx, &spec).await;
    ctx.shared.live_per_topic[spec.topic_index].fetch_sub(1, Relaxed);
    ctx.stats.dropped.fetch_add(1, Relaxed);
    if let Err(e) = r {
        ctx.stats
            .note_error(format!("client {} dropped: {e:#}", spec.index));
    }
}

async fn establish(ctx: &ClientCtx, spec: &ClientSpec) -> Result<Conn> {
    let sh = &ctx.shared;
    let id = format!("lt{}", spec.index);
    let token = ctx.tokens.fetch(&spec.topic, &id).await?;
    let source = if sh.source_ips.is_empty() {
        None
    } else {
        Some(sh.source_ips[spec.index % sh.source_ips.len()])
    };
    let server = &sh.servers[spec.server % sh.servers.len()];
    let mut stream = connect(server.addr, source).await?;
    let req = ws::upgrade_request(&server.host, &sh.ws_path, spec.index as u64 ^ now_us());
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(READ_RESERVE);
    let head_len = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during the upgrade");
        }
        if let Some(n) = ws::parse_upgrade_response(&buf)? {
            break n;
        }
    };
    buf.drain(..head_len);
    let mut conn = Conn {
        stream,
        buf,
        skip: 0,
        joined: false,
        mask: spec.index as u32,
        out: Vec::with_capacity(256),
        next_ref: 2,
    };
    let mut payload = serde_json::json!({ "token": token });
    if let Some(since) = &sh.join_since {
        payload["since"] = since.clone();
    }
    let join = serde_json::to_string(&serde_json::json!([
        "1", "1", spec.topic, "phx_join", payload
    ]))?;
    conn.send_text(join.as_bytes()).await?;
    while !conn.joined {
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            bail!("connection closed before the join reply");
        }
        match conn.process(&ctx.stats, &ctx.shared.window)? {
            Signal::None => {}
            Signal::Closed => bail!("server closed the socket before the join reply"),
            Signal::JoinRefused(why) => bail!("join refused: {why}"),
        }
        conn.flush_out().await?;
    }
    Ok(conn)
}

enum Signal {
    None,
    Closed,
    JoinRefused(String),
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of an oversized frame still to be skipped.
    skip: u64,
    joined: bool,
    mask: u32,
    /// Frames to send (pongs) produced while processing input.
    out: Vec<u8>,
    next_ref: u64,
}

impl Conn {
    fn next_mask(&mut self) -> [u8; 4] {
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        self.mask.to_le_bytes()
    }

    async fn send_text(&mut self, text: &[u8]) -> Result<()> {
        let mask = self.next_mask();
        ws::encode_client_frame(&mut self.out, ws::OP_TEXT, text, mask);
        self.flush_out().await
    }

    async fn flush_out(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Consumes every complete frame in `buf`.
    fn process(&mut self, stats: &ThreadStats, window: &WindowClock) -> Result<Signal> {
        let mut pos = 0;
        let mut signal = Signal::None;
        let mut now = 0;
        while pos < self.buf.len() {
            if self.skip > 0 {
                let n = self.skip.min((self.buf.len() - pos) as u64);
                self.skip -= n;
                pos += n as usize;
                continue;
            }
            let avail = &self.buf[pos..];
            let Some(h) = ws::parse_header(avail)? else {
                break;
            };
            let total = h.total_len();
            let payload = if avail.len() as u64 >= total {
                pos += total as usize;
                &avail[h.header_len..total as usize]
            } else if h.payload_len > MAX_BUFFERED_FRAME && avail.len() > h.header_len {
                // Too big to be a measured message: look at what we have, skip the rest.
                self.skip = total - avail.len() as u64;
                pos = self.buf.len();
                &avail[h.header_len..]
            } else {
                break;
            };
            match h.opcode {
                ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONTINUATION => {
                    if let Some(t) = find_stamp(payload) {
                        if now == 0 {
                            now = now_us();
                        }
                        stats.record_delivery(window.contains(t), t, now);
                    } else {
                        stats.other_frames.fetch_add(1, Relaxed);
                        if !self.joined {
                            if let Some(s) = join_reply_status(payload) {
                                match s {
                                    Ok(()) => self.joined = true,
                                    Err(why) => signal = Signal::JoinRefused(why),
                                }
                            }
                        }
                    }
                }
                ws::OP_PING => {
                    let p = payload.to_vec();
                    let mask = self.next_mask();
                    ws::encode_client_frame(&mut self.out, ws::OP_PONG, &p, mask);
                }
                ws::OP_CLOSE => {
                    signal = Signal::Closed;
                    break;
                }
                _ => {}
            }
        }
        self.buf.drain(..pos);
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_RESERVE {
            self.buf = Vec::with_capacity(READ_RESERVE);
        }
        Ok(signal)
    }

    /// After the join: receive until the server closes or the runtime is dropped; heartbeat, and
    /// push at the rate the coordinator sets (upstream).
    async fn serve(&mut self, ctx: &ClientCtx, spec: &ClientSpec) -> Result<()> {
        let sh = ctx.shared.clone();
        let mut control = ctx.control.clone();
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + sh.heartbeat, sh.heartbeat);
        let mut push_timer = push_interval(&sh, spec.index);
        let mut template = Vec::new();
        let mut hb_ref: u64 = 0;
        loop {
            if self.buf.capacity() - self.buf.len() < READ_RESERVE / 4 {
                self.buf.reserve(READ_RESERVE);
            }
            tokio::select! {
                r = self.stream.read_buf(&mut self.buf) => {
                    if r? == 0 {
                        bail!("server closed the connection");
                    }
                    match self.process(&ctx.stats, &sh.window)? {
                        Signal::Closed => bail!("server sent a close frame"),
                        Signal::JoinRefused(_) | Signal::None => {}
                    }
                    self.flush_out().await?;
                }
                _ = heartbeat.tick() => {
                    hb_ref += 1;
                    let hb = format!("[null,\"h{hb_ref}\",\"phoenix\",\"heartbeat\",{{}}]");
                    self.send_text(hb.as_bytes()).await?;
                }
                at = tick(&mut push_timer) => {
                    // Stamp with the scheduled time so that a late load thread shows as latency.
                    let late = tokio::time::Instant::now().saturating_duration_since(at);
                    let t = now_us().saturating_sub(late.as_micros() as u64);
                    self.push(&sh, spec, &mut template, t, &ctx.stats).await?;
                }
                r = control.changed(), if sh.pushers > 0 => {
                    r.map_err(|_| anyhow!("coordinator gone"))?;
                    push_timer = push_interval(&sh, spec.index);
                }
            }
        }
    }

    async fn push(
        &mut self,
        sh: &RunShared,
        spec: &ClientSpec,
        template: &mut Vec<u8>,
        t: u64,
        stats: &ThreadStats,
    ) -> Result<()> {
        if template.is_empty() {
            *template = payload_template(sh.message_bytes);
        }
        write_stamp(template, STAMP_POS, t);
        let r = self.next_ref;
        self.next_ref += 1;
        let mut text = Vec::with_capacity(template.len() + spec.topic.len() + sh.event.len() + 32);
        text.extend_from_slice(b"[\"1\",\"");
        text.extend_from_slice(r.to_string().as_bytes());
        text.extend_from_slice(b"\",\"");
        text.extend_from_slice(spec.topic.as_bytes());
        text.extend_from_slice(b"\",\"");
        text.extend_from_slice(sh.event.as_bytes());
        text.extend_from_slice(b"\",");
        text.extend_from_slice(template);
        text.push(b']');
        stats.pushes_total.fetch_add(1, Relaxed);
        if sh.window.contains(t) {
            stats.pushes_sent.fetch_add(1, Relaxed);
        }
        self.send_text(&text).await.context("push")
    }
}

/// Waits for the next tick of an optional interval (forever when there is none).
async fn tick(timer: &mut Option<tokio::time::Interval>) -> tokio::time::Instant {
    match timer {
        Some(t) => t.tick().await,
        None => std::future::pending().await,
    }
}

/// This client's share of the total push rate, phased so that clients do not push in lockstep.
fn push_interval(sh: &RunShared, index: usize) -> Option<tokio::time::Interval> {
    let rate = sh.push_rate_milli.load(Relaxed) as f64 / 1000.0;
    if rate <= 0.0 || sh.pushers == 0 {
        return None;
    }
    let period = Duration::from_secs_f64(sh.pushers as f64 / rate);
    let phase = period.mul_f64((index % sh.pushers) as f64 / sh.pushers as f64);
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    Some(t)
}

/// `Some(Ok)` for an ok `phx_reply` to our join (join_ref "1", ref "1"), `Some(Err(reason))` for an
/// error reply to it, `None` for anything else.
pub fn join_reply_status(frame: &[u8]) -> Option<Result<(), String>> {
    let finder = memchr::memmem::find;
    finder(frame, b"phx_reply")?;
    // Our join is the only message with ref "1"; accept both compact and spaced serialisations.
    let compact = frame.starts_with(b"[\"1\",\"1\",") || frame.starts_with(b"[\"1\", \"1\",");
    if !compact {
        return None;
    }
    let status_at = finder(frame, b"\"status\"")?;
    let rest = &frame[status_at + 8..];
    let rest = rest.iter().position(|&b| b == b'"').map(|i| &rest[i..])?;
    if rest.starts_with(b"\"ok\"") {
        Some(Ok(()))
    } else {
        Some(Err(
            String::from_utf8_lossy(&frame[..frame.len().min(300)]).into_owned()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_reply_ok_and_error_are_recognised() {
        assert_eq!(
            join_reply_status(br#"["1","1","lt:0","phx_reply",{"status":"ok","response":{}}]"#),
            Some(Ok(()))
        );
        assert_eq!(
            join_reply_status(
                br#"["1", "1", "lt:0", "phx_reply", {"response": {}, "status": "ok"}]"#
            ),
            Some(Ok(()))
        );
        assert!(matches!(
            join_reply_status(br#"["1","1","lt:0","phx_reply",{"status":"error","response":{"reason":"unauthorized"}}]"#),
            Some(Err(s)) if s.contains("unauthorized")
        ));
        // a heartbeat reply or a reply to another ref is not the join's
        assert_eq!(
            join_reply_status(
                br#"[null,"h1","phoenix","phx_reply",{"status":"ok","response":{}}]"#
            ),
            None
        );
        assert_eq!(
            join_reply_status(br#"[null,null,"lt:0","presence_diff",{"joins":{},"leaves":{}}]"#),
            None
        );
    }

    fn server_frame(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x81];
        if payload.len() < 126 {
            v.push(payload.len() as u8);
        } else if payload.len() < 65536 {
            v.push(126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    /// A Conn needs a TcpStream; build one over a loopback pair.
    async fn conn() -> (Conn, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (
            Conn {
                stream: a,
                buf: Vec::new(),
                skip: 0,
                joined: true,
                mask: 1,
                out: Vec::new(),
                next_ref: 2,
            },
            b,
        )
    }

    #[test]
    fn frames_split_anywhere_are_counted_once_and_huge_frames_are_skipped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut c, _peer) = conn().await;
            let stats = ThreadStats::default();
            let window = WindowClock::default();
            window.start_us.store(0, Relaxed);
            let mut p = payload_template(200);
            write_stamp(&mut p, STAMP_POS, now_us());
            let mut msg = br#"[null,null,"lt:0","msg","#.to_vec();
            msg.extend_from_slice(&p);
            msg.push(b']');
            let mut wire = Vec::new();
            wire.extend(server_frame(&msg));
            let mut huge = br#"[null,"2","lt:0","presence_state","#.to_vec();
            huge.resize(100_000, b' ');
            huge.extend_from_slice(b"{}]");
            wire.extend(server_frame(&huge));
            wire.extend(server_frame(&msg));
            wire.extend(server_frame(
                br#"[null,null,"lt:0","presence_diff",{"joins":{},"leaves":{}}]"#,
            ));
            for chunk in wire.chunks(777) {
                c.buf.extend_from_slice(chunk);
                c.process(&stats, &window).unwrap();
                assert!(
                    c.buf.len() <= MAX_BUFFERED_FRAME as usize + 777,
                    "buffer grew to {}",
                    c.buf.len()
                );
            }
            assert!(c.buf.is_empty());
            assert_eq!(stats.delivered.load(Relaxed), 2);
            assert_eq!(stats.other_frames.load(Relaxed), 2);
        });
    }
}
