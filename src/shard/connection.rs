//! One WebSocket connection after the upgrade: its state, its read loop and its write loop.
//!
//! A connection never leaves the shard that accepted it. The read loop reads into the shard's
//! scratch buffer, reassembles client messages and hands each to [`super::session`]; the
//! write loop drains the [`OutboundQueue`] and writes every pending frame in one `write`
//! (coalescing). Closing is always: queue a close frame, let the writer send it, and if the
//! peer does not cooperate within [`CLOSE_GRACE`], shut the socket down under both loops.
//!
//! Slow consumers: the queue closes a connection whose pending bytes pass the hard cap; the
//! write loop closes one whose socket has taken nothing of a write for long enough that the
//! oldest unwritten frame is `slow_consumer_lag_ms` old. A reading client behind a burst is
//! never closed for being behind for an instant.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt, Future};
use glommio::net::TcpStream;
use tracing::debug;

use super::context::{ShardContext, Shared, COALESCE_BYTES};
use super::outbound_queue::{CloseRequest, Enqueued, OutboundQueue};
use super::presence_delivery::PresenceSync;
use super::session;
use crate::metrics::ShardStats;
use crate::presence::Presence;
use crate::protocol::websocket::{encode_close, MessageReader, ReadError};
use crate::protocol::{close_code, Vsn};

/// How long a closing connection may take to flush its close frame before the socket is cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a connection found lagging may still finish the write it is stuck in (then the
/// 1013 close frame follows) before the socket is cut. It has already taken nothing for
/// `slow_consumer_lag_ms`, so this is short: a client that stopped reading is gone within
/// the lag plus this.
pub const SLOW_CLOSE_GRACE: Duration = Duration::from_millis(250);

/// A channel joined on this connection.
#[derive(Debug, Clone)]
pub struct JoinedChannel {
    /// The join reference of the current join; pushes with another non-null one are stale.
    pub join_ref: Option<String>,
    /// This join's presence (its key is the token's `id` claim).
    pub presence: Presence,
    /// How far this channel's presence view is synchronised.
    pub presence_sync: PresenceSync,
}

/// One WebSocket connection's state, shared by its two loops and the shard's topic table.
pub struct Conn {
    /// Unique within the shard.
    pub id: u64,
    /// The serializer version chosen at the upgrade.
    pub vsn: Vsn,
    /// Socket-level token (`userToken` or the phoenix subprotocol token), the fallback for joins.
    pub user_token: Option<String>,
    /// The `id` claim of the socket-level token, if any.
    pub user_id: Option<String>,
    /// Frames waiting to be written.
    pub out: RefCell<OutboundQueue>,
    /// Topics joined on this connection.
    pub channels: RefCell<HashMap<String, JoinedChannel>>,
    last_seen: Cell<Instant>,
    socket: SocketCutter,
    shared: Arc<Shared>,
    shard: usize,
}

impl Conn {
    /// Sends one pre-encoded frame. A slow consumer is closed with 1013 as a side effect.
    pub fn send(&self, frame: Bytes) -> Enqueued {
        let outcome = self.out.borrow_mut().push(frame);
        if outcome == Enqueued::Overflow {
            debug!(conn = self.id, "slow consumer: closing with 1013");
            ShardStats::add(&self.stats().slow_consumer_closes, 1);
            self.socket.cut_after(CLOSE_GRACE);
        }
        outcome
    }

    /// Sends one frame, writing it to the socket at once when nothing is queued before it: a
    /// connection that keeps up then costs one `send` and no wake-up of its writer task (the
    /// fan-out's per-receiver cost). Whatever the socket does not take right away (a full
    /// kernel buffer, an error) goes through the queue and the writer as with [`Conn::send`].
    /// The frame is borrowed: a write that takes it whole costs no reference to it.
    pub fn send_now(&self, frame: &Bytes) -> Enqueued {
        if !self.out.borrow().is_idle() {
            return self.send(frame.clone());
        }
        let written = self.socket.try_send(frame);
        if written > 0 {
            let stats = self.stats();
            ShardStats::add(&stats.bytes_out, written as u64);
            if written == frame.len() {
                ShardStats::add(&stats.frames_out, 1);
                return Enqueued::Queued;
            }
        }
        self.send(frame.slice(written..))
    }

    /// Closes a connection whose oldest unwritten frame waited past `slow_consumer_lag_ms`:
    /// its queue is dropped, the close frame (1013) follows the write in progress if the
    /// socket takes it within [`SLOW_CLOSE_GRACE`], else the socket is cut.
    fn close_lagging(&self) {
        if self.out.borrow().is_closing() {
            return;
        }
        debug!(conn = self.id, "slow consumer (lag): closing with 1013");
        self.out.borrow_mut().close_slow();
        ShardStats::add(&self.stats().slow_consumer_closes, 1);
        self.socket.cut_after(SLOW_CLOSE_GRACE);
    }

    /// Starts closing the connection with `code` and `reason`.
    pub fn close(&self, code: u16, reason: &'static str) {
        self.out.borrow_mut().close(CloseRequest { code, reason });
        self.socket.cut_after(CLOSE_GRACE);
    }

    /// When the client was last heard from.
    pub fn last_seen(&self) -> Instant {
        self.last_seen.get()
    }

    /// The counters of this connection's shard.
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.shard]
    }
}

/// Shuts a socket down under both loops: a pending read returns end-of-file and a pending
/// write fails, so both loops finish.
#[derive(Clone)]
struct SocketCutter {
    fd: RawFd,
    /// Cleared before the stream (and so the descriptor) is dropped, so that a late timer
    /// never touches a descriptor number the kernel has given to someone else.
    open: Rc<Cell<bool>>,
}

impl SocketCutter {
    fn cut(&self) {
        if self.open.get() {
            // SAFETY: the descriptor is still owned by this connection's stream (see `open`),
            // so `shutdown` acts on our socket and no other; it takes no pointers.
            unsafe {
                libc::shutdown(self.fd, libc::SHUT_RDWR);
            }
        }
    }

    /// Writes what the socket takes of `bytes` without waiting; 0 when it takes nothing (a
    /// full buffer, an error: the writer, which owns error handling, then sees it).
    fn try_send(&self, bytes: &[u8]) -> usize {
        if !self.open.get() {
            return 0;
        }
        // SAFETY: the descriptor is still owned by this connection's stream (see `open`), and
        // the pointer and length come from one live slice that outlives the call. The flags
        // make the call non-blocking and turn a closed peer into an error instead of SIGPIPE.
        let sent = unsafe {
            libc::send(
                self.fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(sent).unwrap_or(0)
    }

    fn cut_after(&self, grace: Duration) {
        let cutter = self.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(grace).await;
            cutter.cut();
        })
        .detach();
    }
}

/// The stream shared by the read and write loops of one connection. Each poll borrows it for
/// the duration of that poll only, which is safe on a single-threaded executor.
#[derive(Clone)]
struct SharedStream(Rc<RefCell<TcpStream>>);

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Why the read loop ended.
enum ReadEnd {
    /// The peer closed the TCP connection, or the socket was cut.
    Eof,
    /// A read failed.
    Io(io::Error),
    /// The client sent a close frame (already answered).
    ClientClosed,
    /// We are closing (bad frame, protocol violation); the close frame is queued.
    Closing,
}

/// Runs one upgraded connection to its end. `leftover` holds bytes the client sent right
/// after its upgrade request.
pub async fn run(
    ctx: Rc<ShardContext>,
    stream: TcpStream,
    vsn: Vsn,
    user_token: Option<String>,
    user_id: Option<String>,
    leftover: Vec<u8>,
) {
    let config = &ctx.shared.config;
    let open = Rc::new(Cell::new(true));
    let conn = Rc::new(Conn {
        id: ctx.next_conn_id(),
        vsn,
        user_token,
        user_id,
        out: RefCell::new(OutboundQueue::new(config.limits.outbound_queue_bytes)),
        channels: RefCell::new(HashMap::new()),
        last_seen: Cell::new(Instant::now()),
        socket: SocketCutter {
            fd: stream.as_raw_fd(),
            open: Rc::clone(&open),
        },
        shared: Arc::clone(&ctx.shared),
        shard: ctx.id,
    });
    ShardStats::add(&ctx.stats().connections, 1);
    let conn_id = conn.id;
    let shard = ctx.id;
    ctx.conns.borrow_mut().insert(conn_id, Rc::clone(&conn));
    debug!(shard, conn = conn_id, ?vsn, "connection open");

    let stream = SharedStream(Rc::new(RefCell::new(stream)));
    let writer = glommio::spawn_local(write_loop(
        Rc::clone(&ctx),
        Rc::clone(&conn),
        stream.clone(),
    ))
    .detach();

    let end = read_loop(&ctx, &conn, &stream, leftover).await;
    let reason = match &end {
        ReadEnd::Eof => "peer closed".to_string(),
        ReadEnd::Io(err) => format!("read error: {err}"),
        ReadEnd::ClientClosed => "client close frame".to_string(),
        ReadEnd::Closing => "closed by server".to_string(),
    };

    // Leave every channel, then let the writer finish (it sends our close frame if any).
    session::leave_all(&ctx, &conn);
    ctx.conns.borrow_mut().remove(&conn_id);
    if !conn.out.borrow().is_closing() {
        conn.out.borrow_mut().close(CloseRequest {
            code: close_code::NORMAL,
            reason: "",
        });
    }
    conn.socket.cut_after(CLOSE_GRACE);
    let _ = writer.await;
    open.set(false);
    ShardStats::sub(&ctx.stats().connections, 1);
    debug!(shard, conn = conn_id, %reason, "connection closed");
}

async fn read_loop(
    ctx: &Rc<ShardContext>,
    conn: &Rc<Conn>,
    stream: &SharedStream,
    mut leftover: Vec<u8>,
) -> ReadEnd {
    let mut reader = MessageReader::new(ctx.shared.config.limits.max_frame_bytes);
    if !leftover.is_empty() {
        if let Some(end) = process(ctx, conn, &mut reader, &mut leftover) {
            return end;
        }
    }
    drop(leftover);
    loop {
        let read = futures::future::poll_fn(|cx| {
            let mut scratch = ctx.read_scratch.borrow_mut();
            Pin::new(&mut *stream.0.borrow_mut()).poll_read(cx, &mut scratch[..])
        })
        .await;
        let n = match read {
            Ok(0) => return ReadEnd::Eof,
            Ok(n) => n,
            Err(err) => return ReadEnd::Io(err),
        };
        conn.last_seen.set(Instant::now());
        // No await between the read above and this borrow: the scratch still holds our bytes.
        let mut scratch = ctx.read_scratch.borrow_mut();
        if let Some(end) = process(ctx, conn, &mut reader, &mut scratch[..n]) {
            return end;
        }
    }
}

/// Feeds bytes to the message reader and each complete message to the session.
fn process(
    ctx: &Rc<ShardContext>,
    conn: &Rc<Conn>,
    reader: &mut MessageReader,
    data: &mut [u8],
) -> Option<ReadEnd> {
    let result = reader.process(data, |message| session::handle(ctx, conn, message));
    match result {
        Ok(()) => None,
        Err(ReadError::Frame(err)) => {
            debug!(conn = conn.id, %err, "bad frame from client");
            conn.close(err.close_code(), err.reason());
            Some(ReadEnd::Closing)
        }
        Err(ReadError::Handler(session::Stop::ClientClosed)) => Some(ReadEnd::ClientClosed),
        Err(ReadError::Handler(session::Stop::Closing)) => Some(ReadEnd::Closing),
    }
}

async fn write_loop(ctx: Rc<ShardContext>, conn: Rc<Conn>, mut stream: SharedStream) {
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    loop {
        let close = futures::future::poll_fn(|cx| {
            let mut out = conn.out.borrow_mut();
            let close = out.take(&mut batch);
            if !batch.is_empty() {
                return Poll::Ready(None);
            }
            if close.is_some() {
                return Poll::Ready(close);
            }
            out.register_writer(cx.waker());
            Poll::Pending
        })
        .await;
        if let Some(close) = close {
            let frame = encode_close(close.code, close.reason);
            let _ = stream.write_all(&frame).await;
            // Half-close: the client answers our close frame and then closes its side.
            let _ = stream.close().await;
            return;
        }
        let frames = batch.len() as u64;
        let written = within_lag(&conn, write_batch(&ctx, &mut stream, &mut batch)).await;
        match written {
            Ok(bytes) => {
                conn.out.borrow_mut().written(bytes);
                let stats = ctx.stats();
                ShardStats::add(&stats.frames_out, frames);
                ShardStats::add(&stats.bytes_out, bytes as u64);
            }
            Err(err) => {
                debug!(conn = conn.id, %err, "write failed");
                batch.clear();
                conn.socket.cut();
                return;
            }
        }
    }
}

/// Runs `write` (the writer's current batch) and closes the connection as a slow consumer if
/// the oldest frame not yet written gets older than `slow_consumer_lag_ms` meanwhile. The
/// clock is read and a timer armed only once the socket has refused bytes (the write is
/// pending), so a write the socket takes at once costs nothing extra. After the close the
/// write is still awaited: it ends when the socket takes the rest or is cut.
async fn within_lag<F: Future<Output = io::Result<usize>>>(
    conn: &Conn,
    write: F,
) -> io::Result<usize> {
    let lag = conn.shared.config.limits.slow_consumer_lag();
    let mut write = std::pin::pin!(write);
    let mut deadline: Option<glommio::timer::Timer> = None;
    let mut judged = false;
    futures::future::poll_fn(|cx| {
        if let Poll::Ready(result) = write.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        if judged {
            return Poll::Pending;
        }
        let timer = deadline.get_or_insert_with(|| {
            let since = conn.out.borrow().oldest_unwritten_since();
            let waited = since.map_or(Duration::ZERO, |since| since.elapsed());
            glommio::timer::Timer::new(lag.saturating_sub(waited))
        });
        if Pin::new(timer).poll(cx).is_ready() {
            judged = true;
            conn.close_lagging();
        }
        Poll::Pending
    })
    .await
}

/// Writes every frame of `batch`, coalescing consecutive frames into writes of about
/// [`COALESCE_BYTES`]. A lone frame is written straight from its shared bytes.
async fn write_batch(
    ctx: &ShardContext,
    stream: &mut SharedStream,
    batch: &mut VecDeque<Bytes>,
) -> io::Result<usize> {
    let mut total = 0;
    if batch.len() == 1 {
        if let Some(frame) = batch.pop_front() {
            stream.write_all(&frame).await?;
            total += frame.len();
        }
        return Ok(total);
    }
    let mut buffer = ctx.take_write_buffer();
    let result = async {
        while !batch.is_empty() {
            buffer.clear();
            while let Some(frame) = batch.front() {
                if !buffer.is_empty() && buffer.len() + frame.len() > COALESCE_BYTES {
                    break;
                }
                buffer.extend_from_slice(frame);
                batch.pop_front();
            }
            stream.write_all(&buffer).await?;
            total += buffer.len();
        }
        Ok(total)
    }
    .await;
    ctx.return_write_buffer(buffer);
    result
}
