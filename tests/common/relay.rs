//! A TCP relay between the server under test and its Redis, to make network faults on demand.
//!
//! `127.0.0.1:<relay port>` forwards to Redis. A test points the server at [`TcpRelay::url`]
//! and then:
//! - [`TcpRelay::cut`]: every relayed connection is closed on both sides, and new connections
//!   are accepted and closed at once (Redis looks gone: resets, EOFs);
//! - [`TcpRelay::blackhole`]: every connection, old and new, stays open but nothing is
//!   forwarded in either direction (a silently dead network: the bytes wait in the kernel
//!   buffers, as they would during a partition);
//! - [`TcpRelay::hold_replies_of`]: what Redis sends on one connection (named by the port Redis
//!   sees it from, `CLIENT LIST`'s `addr`) waits in the relay; the other direction and every
//!   other connection flow (to order what the server hears on two connections);
//! - [`TcpRelay::restore`]: forwarding resumes, for connections still open and new ones.
//!
//! Everything runs on plain threads with short read timeouts, so that a mode change takes
//! effect within [`POLL`]. The relay stops on `Drop`. It owns no Redis: the test does.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a blocked relay thread looks at the mode and the stop flag.
const POLL: Duration = Duration::from_millis(10);

const FORWARD: u8 = 0;
const BLACKHOLE: u8 = 1;
const CUT: u8 = 2;

struct RelayState {
    mode: AtomicU8,
    /// Bumped by every `cut()`: a connection from an older epoch closes itself.
    epoch: AtomicU64,
    stop: AtomicBool,
    /// Connections accepted and relayed so far (for assertions and failure messages).
    accepted: AtomicUsize,
    /// Relayed connections currently open.
    open: AtomicUsize,
    /// Serial number of the next relayed connection.
    next_id: AtomicU64,
    /// Connections with a serial number below this are blackholed (0: none).
    frozen_below: AtomicU64,
    /// The connection (by the local port of its upstream socket, as Redis sees it) whose
    /// replies are held (0: none).
    replies_held_port: AtomicU16,
}

/// A relay from a free local port to `target`.
pub struct TcpRelay {
    port: u16,
    state: Arc<RelayState>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpRelay {
    /// Starts relaying `127.0.0.1:<free port>` to `target` (usually the test Redis).
    pub fn start(target: SocketAddr) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 always works");
        listener
            .set_nonblocking(true)
            .expect("a listener can be made non-blocking");
        let port = listener
            .local_addr()
            .expect("a bound listener has an address")
            .port();
        let state = Arc::new(RelayState {
            mode: AtomicU8::new(FORWARD),
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            frozen_below: AtomicU64::new(0),
            replies_held_port: AtomicU16::new(0),
        });
        let thread_state = Arc::clone(&state);
        let acceptor = std::thread::Builder::new()
            .name(format!("relay :{port}"))
            .spawn(move || accept_loop(listener, target, thread_state))
            .expect("spawning a thread works");
        TcpRelay {
            port,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// Relays to the Redis on `127.0.0.1:<redis_port>`.
    pub fn to_local_port(redis_port: u16) -> TcpRelay {
        TcpRelay::start(SocketAddr::from(([127, 0, 0, 1], redis_port)))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<relay port>`, for the server under test.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Closes every relayed connection (both sides) and refuses new ones until `restore()`.
    pub fn cut(&self) {
        self.state.mode.store(CUT, Ordering::SeqCst);
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Keeps every connection open but forwards nothing, in either direction, until
    /// `restore()`. New connections are accepted (and connected to the target) but silent too.
    pub fn blackhole(&self) {
        self.state.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Blackholes the connections open now, and only them: new connections are relayed
    /// normally. This is a silently dead connection (a middlebox forgot it) to a healthy Redis.
    pub fn blackhole_existing(&self) {
        let next = self.state.next_id.load(Ordering::SeqCst);
        self.state.frozen_below.store(next, Ordering::SeqCst);
    }

    /// Holds what Redis sends on the connection Redis sees from `127.0.0.1:<redis_side_port>`
    /// until `restore()`; everything else flows.
    pub fn hold_replies_of(&self, redis_side_port: u16) {
        self.state
            .replies_held_port
            .store(redis_side_port, Ordering::SeqCst);
    }

    /// Forwards again: connections still open resume, new ones are relayed.
    pub fn restore(&self) {
        self.state.replies_held_port.store(0, Ordering::SeqCst);
        self.state.frozen_below.store(0, Ordering::SeqCst);
        self.state.mode.store(FORWARD, Ordering::SeqCst);
    }

    /// Connections accepted and relayed since the start.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Relayed connections open right now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, state: Arc<RelayState>) {
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    while !state.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if state.mode.load(Ordering::SeqCst) == CUT {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                state.accepted.fetch_add(1, Ordering::SeqCst);
                pumps.extend(relay_connection(client, upstream, &state));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
        pumps.retain(|pump| !pump.is_finished());
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Starts the two pumps of one connection; the connection closes (both sides) when either
/// pump ends.
fn relay_connection(
    client: TcpStream,
    upstream: TcpStream,
    state: &Arc<RelayState>,
) -> Vec<JoinHandle<()>> {
    let epoch = state.epoch.load(Ordering::SeqCst);
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let redis_side_port = upstream.local_addr().map_or(0, |a| a.port());
    let closed = Arc::new(AtomicBool::new(false));
    state.open.fetch_add(1, Ordering::SeqCst);
    // The second pump carries Redis's replies: the one `hold_replies_of` names.
    let streams = [
        (client.try_clone(), upstream.try_clone(), 0),
        (upstream.try_clone(), client.try_clone(), redis_side_port),
    ];
    let mut pumps = Vec::new();
    let remaining = Arc::new(AtomicUsize::new(2));
    for (from, to, replies_of) in streams {
        let (Ok(from), Ok(to)) = (from, to) else {
            continue;
        };
        let state = Arc::clone(state);
        let closed = Arc::clone(&closed);
        let remaining = Arc::clone(&remaining);
        let spawned = std::thread::Builder::new()
            .name("relay pump".into())
            .spawn(move || {
                pump(&from, &to, (id, replies_of), epoch, &state, &closed);
                closed.store(true, Ordering::SeqCst);
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                if remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                    state.open.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .expect("spawning a thread works");
        pumps.push(spawned);
    }
    pumps
}

/// Copies `from` → `to` while the mode says so, until either side ends, the connection is
/// cut (a newer epoch), the other pump ended, or the relay stops.
fn pump(
    from: &TcpStream,
    mut to: &TcpStream,
    (id, replies_of): (u64, u16),
    epoch: u64,
    state: &RelayState,
    closed: &AtomicBool,
) {
    if from.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes read while forwarding whose write was overtaken by a blackhole: they wait here,
    // as they would in a kernel buffer, and go out on restore.
    let mut held: Vec<u8> = Vec::new();
    let mut reader = from;
    let forwarding = || {
        state.mode.load(Ordering::SeqCst) == FORWARD
            && id >= state.frozen_below.load(Ordering::SeqCst)
            && (replies_of == 0 || state.replies_held_port.load(Ordering::SeqCst) != replies_of)
    };
    loop {
        if state.stop.load(Ordering::SeqCst)
            || closed.load(Ordering::SeqCst)
            || state.epoch.load(Ordering::SeqCst) != epoch
        {
            return;
        }
        if !forwarding() {
            // Blackhole: read nothing, so the bytes wait in the kernel as on a dead network.
            std::thread::sleep(POLL);
            continue;
        }
        if !held.is_empty() {
            if to.write_all(&held).is_err() {
                return;
            }
            held.clear();
        }
        match reader.read(&mut buf) {
            Ok(0) => return,
            // The mode may have changed during the read: check again before writing.
            Ok(n) if !forwarding() => held.extend_from_slice(&buf[..n]),
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
