//! Downstream by interest: `SSUBSCRIBE` to the sharded channel of every topic this process has
//! a subscriber for, and nothing else (docs/protocol.md, "The publish function").
//!
//! Two threads and one connection of their own (the reader's `PSUBSCRIBE to:*` connection is
//! left as it is, so the classic path keeps working alongside):
//! - the **control** thread owns the process's interest table (fed by the shards, like the
//!   reader's) and the write half of the socket: a topic's first interested shard sends
//!   `SSUBSCRIBE`, its last `SUNSUBSCRIBE` (changes waiting together go as one command); after a
//!   (re)connect every wanted topic is subscribed again, and a server-sent `sunsubscribe` of a
//!   topic still wanted is answered with a new `SSUBSCRIBE`. It PINGs a quiet connection and
//!   shuts it down when the answer does not come. When Redis confirms a topic's subscription
//!   (its `ssubscribe` reply; at once for a shard that gains a topic already confirmed) it tells
//!   the interested shards ([`ShardMessage::TopicSubscribed`]): their joins of the topic wait
//!   for it, so that nothing published with the function after a join reply is missed.
//! - the **read** thread parses what Redis sends with the redis crate's parser (the crate's
//!   sync `PubSub` does not read `smessage` in RESP2, and it cannot wait on the shards and on
//!   Redis at once), opens each envelope once, builds the frame once and hands it to the
//!   interested shards, exactly as the reader does for `to:*`.
//!
//! What it must never do: block on a shard (a full inbox drops the message for that shard and
//! counts it), talk to Redis on the reader's or the publisher's connection, or log a password.
//! In Cluster mode (not served yet) this is the part that would hold one connection per master
//! and route by slot (docs/operations.md).

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::deployment::Connector;
use super::function::{open_envelope, sharded_channel, topic_of_sharded_channel};
use super::interest::InterestTable;
use super::reader::ReaderStats;
use super::status::RedisStatus;
use crate::history::Position;
use crate::inbox::{InterestChange, ShardMessage, Shards};
use crate::protocol::Broadcast;

/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection silent for this long is probed with a PING.
const PROBE_AFTER: Duration = Duration::from_secs(3);
/// A PING not answered within this long means the connection is dead.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// The connection's name in `CLIENT LIST`.
pub const CLIENT_NAME: &str = "channel-sharded-subscriber";
/// Topics per `SSUBSCRIBE` / `SUNSUBSCRIBE` command when many change at once.
const BATCH: usize = 256;

/// Why no connection could be made.
enum ConnectFailure {
    /// The deployment's address kind is not one this build subscribes over.
    Unsupported(&'static str),
    /// Redis or the network failed: try again.
    Redis(redis::RedisError),
}

impl From<redis::RedisError> for ConnectFailure {
    fn from(err: redis::RedisError) -> Self {
        ConnectFailure::Redis(err)
    }
}

/// What the read thread tells the control thread.
enum ReadEvent {
    /// Redis confirmed (`true`) or ended (`false`) the subscription of a topic.
    Subscription { topic: String, subscribed: bool },
    /// The connection failed; why.
    Ended(String),
}

/// Everything the sharded subscriber needs; [`ShardedSubscriber::spawn`] starts it.
pub struct ShardedSubscriber {
    pub(super) connector: Connector,
    pub(super) shards: Shards,
    pub(super) stats: Arc<ReaderStats>,
    /// Where `/healthz` reads whether this connection is up.
    pub(super) status: Arc<RedisStatus>,
    /// Interest changes from the shards (a copy of what the reader gets).
    pub(super) changes: Receiver<InterestChange>,
    /// A tick each time the sentinels switch the master (never in single mode).
    pub(super) master_switched: Receiver<()>,
}

impl ShardedSubscriber {
    /// Starts the control thread (which starts a read thread per connection).
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("redis-sharded".into())
            .spawn(move || self.run())
            .map(|_| ())
    }

    fn run(self) {
        let mut interest = InterestTable::default();
        let mut backoff = Backoff::default();
        loop {
            interest.apply_pending(&self.changes);
            match self.connect() {
                Ok(socket) => {
                    backoff.reset();
                    self.set_up(true);
                    let reason = self.serve_connection(socket, &mut interest);
                    self.set_up(false);
                    warn!(%reason, "redis sharded subscriber lost; reconnecting");
                }
                Err(ConnectFailure::Unsupported(err)) => {
                    // TLS or a unix socket: the function's messages cannot be received by this
                    // build; the classic path works, so this part does not hold /healthz down.
                    warn!(%err, "messages published with the function will not be received");
                    self.set_up(true);
                    // Nothing to wait for: joins are confirmed at once.
                    while let Ok(change) = self.changes.recv() {
                        if change.interested {
                            let topic = change.topic;
                            self.shards
                                .send(change.shard, ShardMessage::TopicSubscribed { topic });
                        }
                    }
                    return;
                }
                Err(ConnectFailure::Redis(err)) => {
                    debug!(%err, "redis sharded subscriber cannot connect yet")
                }
            }
            let until = Instant::now() + backoff.next_wait();
            // Keep the table current while waiting, so that it is right on reconnect.
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                if let Ok(change) = self.changes.recv_timeout(left) {
                    interest.apply(change);
                }
            }
        }
    }

    /// Publishes this connection's state for `/healthz` and tells the shards, whose admin
    /// members follow the Redis state (like the reader and the publisher do).
    fn set_up(&self, up: bool) {
        self.status.set_sharded_up(up);
        self.shards.send_all(|| ShardMessage::RedisStateChanged);
    }

    /// A plain TCP connection to the current master, authenticated as the deployment says.
    fn connect(&self) -> Result<TcpStream, ConnectFailure> {
        let client = self.connector.master_client()?;
        let info = client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err(ConnectFailure::Unsupported(
                "sharded subscriptions need a plain TCP connection (not TLS or a unix socket)",
            ));
        };
        Ok(self.connect_tcp(host, *port, info)?)
    }

    fn connect_tcp(
        &self,
        host: &str,
        port: u16,
        info: &redis::ConnectionInfo,
    ) -> redis::RedisResult<TcpStream> {
        let address = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("the master's address does not resolve"))?;
        let mut socket = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
        socket.set_nodelay(true)?;
        socket.set_write_timeout(Some(PROBE_DEADLINE))?;
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            socket.write_all(&auth.get_packed_command())?;
            socket.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            let reply = redis::Parser::new().parse_value(&mut socket)?;
            if let redis::Value::ServerError(err) = reply {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::AuthenticationFailed,
                    "the master refused AUTH",
                    err.code().to_owned(),
                )));
            }
        }
        // Named for operators (`CLIENT LIST`); the read thread reads the `+OK`.
        socket.write_all(
            &redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(CLIENT_NAME)
                .get_packed_command(),
        )?;
        // The read thread waits without a deadline; liveness is the control thread's PING.
        socket.set_read_timeout(None)?;
        Ok(socket)
    }

    /// Subscribes every wanted topic, then follows interest changes until the connection
    /// fails; returns why.
    fn serve_connection(&self, mut socket: TcpStream, interest: &mut InterestTable) -> String {
        let read_half = match socket.try_clone() {
            Ok(half) => half,
            Err(err) => return format!("cannot split the socket: {err}"),
        };
        let last_heard = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let (routes_tx, routes_rx) = crossbeam_channel::unbounded();
        let reader = ShardedReader {
            routes: interest.clone(),
            route_changes: routes_rx,
            shards: self.shards.clone(),
            stats: Arc::clone(&self.stats),
            events: events_tx,
            last_heard: Arc::clone(&last_heard),
            started,
        };
        if let Err(err) = std::thread::Builder::new()
            .name("redis-sharded-read".into())
            .spawn(move || reader.run(read_half))
        {
            return format!("cannot start the read thread: {err}");
        }
        let shutdown = |socket: &TcpStream| {
            let _ = socket.shutdown(Shutdown::Both);
        };
        let wanted: Vec<String> = interest.topics().map(str::to_owned).collect();
        let mut confirmations = Confirmations::default();
        confirmations.asked(&wanted);
        if let Err(err) = send_batched(&mut socket, "SSUBSCRIBE", &wanted) {
            shutdown(&socket);
            return format!("cannot subscribe: {err}");
        }
        info!(topics = wanted.len(), "redis sharded subscriber connected");
        // Topics we asked Redis to drop whose `sunsubscribe` has not come back yet.
        let mut leaving: HashSet<String> = HashSet::new();
        let mut probe_sent: Option<Instant> = None;
        loop {
            let mut subscribe = Vec::new();
            let mut unsubscribe = Vec::new();
            let wait = match probe_sent {
                Some(at) => PROBE_DEADLINE.saturating_sub(at.elapsed()),
                None => PROBE_AFTER,
            };
            crossbeam_channel::select! {
                recv(self.changes) -> change => {
                    let Ok(change) = change else { return "the shards are gone".into() };
                    let mut next = Some(change);
                    while let Some(change) = next {
                        // The read thread learns the route before Redis can send for it.
                        let _ = routes_tx.send(change.clone());
                        match interest.apply_and_tell(change.clone()) {
                            Some(true) => subscribe.push(change.topic),
                            Some(false) => {
                                confirmations.lost(&change.topic);
                                unsubscribe.push(change.topic);
                            }
                            None if change.interested
                                && confirmations.is_confirmed(&change.topic) =>
                            {
                                // Another shard had it: this one is served from now on.
                                let topic = change.topic;
                                self.shards
                                    .send(change.shard, ShardMessage::TopicSubscribed { topic });
                            }
                            None => {}
                        }
                        next = self.changes.try_recv().ok();
                    }
                }
                recv(events_rx) -> event => match event {
                    Ok(ReadEvent::Subscription { topic, subscribed: false }) => {
                        // Ours, or Redis dropped it (slot moved, node reset): take it back if
                        // it is still wanted.
                        if !leaving.remove(&topic) && interest.shards_for(&topic) != 0 {
                            confirmations.lost(&topic);
                            subscribe.push(topic);
                        }
                    }
                    Ok(ReadEvent::Subscription { topic, subscribed: true }) => {
                        let mask = interest.shards_for(&topic);
                        if confirmations.answered(&topic) && mask != 0 && !leaving.contains(&topic) {
                            confirmations.confirm(&topic);
                            self.shards
                                .send_masked(mask, || ShardMessage::TopicSubscribed { topic: topic.clone() });
                        }
                    }
                    Ok(ReadEvent::Ended(reason)) => return reason,
                    Err(_) => return "the read thread ended".into(),
                },
                recv(self.master_switched) -> _ => {}
                default(wait) => {}
            }
            if self.connector.master_switched() {
                shutdown(&socket);
                return "the sentinels switched the master".into();
            }
            leaving.extend(unsubscribe.iter().cloned());
            confirmations.asked(&subscribe);
            let sent = send_batched(&mut socket, "SUNSUBSCRIBE", &unsubscribe)
                .and_then(|()| send_batched(&mut socket, "SSUBSCRIBE", &subscribe));
            if let Err(err) = sent {
                shutdown(&socket);
                return format!("cannot write to redis: {err}");
            }
            // Liveness: PING a quiet connection; no answer within the deadline ends it.
            let heard = Duration::from_millis(last_heard.load(Ordering::Acquire));
            if let Some(at) = probe_sent {
                if heard >= at.duration_since(started) {
                    probe_sent = None;
                } else if at.elapsed() >= PROBE_DEADLINE {
                    shutdown(&socket);
                    return "liveness probe failed".into();
                }
            } else if started.elapsed().saturating_sub(heard) >= PROBE_AFTER {
                if let Err(err) = socket.write_all(&redis::cmd("PING").get_packed_command()) {
                    shutdown(&socket);
                    return format!("cannot write to redis: {err}");
                }
                probe_sent = Some(Instant::now());
            }
        }
    }
}

/// Which topics Redis has confirmed on this connection, and how many `SSUBSCRIBE`s of each are
/// still unanswered (a topic lost and gained again quickly has two in flight: only the answer
/// to the last one confirms it).
#[derive(Default)]
struct Confirmations {
    unanswered: HashMap<String, u32>,
    confirmed: HashSet<String>,
}

impl Confirmations {
    fn asked(&mut self, topics: &[String]) {
        for topic in topics {
            *self.unanswered.entry(topic.clone()).or_insert(0) += 1;
        }
    }

    /// Takes one `ssubscribe` reply; true when it answers the last request of the topic.
    fn answered(&mut self, topic: &str) -> bool {
        match self.unanswered.get_mut(topic) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.unanswered.remove(topic);
                true
            }
            None => false,
        }
    }

    fn confirm(&mut self, topic: &str) {
        self.confirmed.insert(topic.to_owned());
    }

    fn lost(&mut self, topic: &str) {
        self.confirmed.remove(topic);
    }

    fn is_confirmed(&self, topic: &str) -> bool {
        self.confirmed.contains(topic)
    }
}

/// Sends `command` for `topics`' sharded channels, at most [`BATCH`] channels a command.
fn send_batched(socket: &mut TcpStream, command: &str, topics: &[String]) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    for chunk in topics.chunks(BATCH) {
        let mut cmd = redis::cmd(command);
        for topic in chunk {
            cmd.arg(sharded_channel(topic));
        }
        bytes.extend_from_slice(&cmd.get_packed_command());
    }
    if bytes.is_empty() {
        return Ok(());
    }
    socket.write_all(&bytes)
}

/// The read half: parses, routes and delivers.
struct ShardedReader {
    routes: InterestTable,
    route_changes: Receiver<InterestChange>,
    shards: Shards,
    stats: Arc<ReaderStats>,
    events: Sender<ReadEvent>,
    /// When anything was last read, in ms since `started`.
    last_heard: Arc<AtomicU64>,
    started: Instant,
}

impl ShardedReader {
    fn run(mut self, socket: TcpStream) {
        let mut socket = BufReader::with_capacity(64 * 1024, socket);
        let mut parser = redis::Parser::new();
        loop {
            let value = match parser.parse_value(&mut socket) {
                Ok(value) => value,
                Err(err) => {
                    let _ = self.events.send(ReadEvent::Ended(err.to_string()));
                    return;
                }
            };
            let now = self.started.elapsed().as_millis() as u64;
            self.last_heard.store(now, Ordering::Release);
            self.routes.apply_pending(&self.route_changes);
            self.take(value);
        }
    }

    fn take(&mut self, value: redis::Value) {
        let redis::Value::Array(parts) = value else {
            // PONG, or an error reply to a command: nothing to route.
            if let redis::Value::ServerError(err) = value {
                warn!(
                    code = err.code(),
                    "redis refused a sharded subscription command"
                );
            }
            return;
        };
        let [kind, channel, data] = parts.as_slice() else {
            return;
        };
        let (redis::Value::BulkString(kind), redis::Value::BulkString(channel)) = (kind, channel)
        else {
            return;
        };
        let Some(topic) = topic_of_sharded_channel(channel) else {
            self.stats.malformed_names.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match (kind.as_slice(), data) {
            (b"smessage", redis::Value::BulkString(payload)) => self.deliver(topic, payload),
            (b"ssubscribe", _) | (b"sunsubscribe", _) => {
                let _ = self.events.send(ReadEvent::Subscription {
                    topic: topic.to_owned(),
                    subscribed: kind.as_slice() == b"ssubscribe",
                });
            }
            _ => {}
        }
    }

    fn deliver(&self, topic: &str, bytes: &[u8]) {
        let received_at = Instant::now();
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let Some(envelope) = open_envelope(bytes) else {
            self.stats.malformed_names.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mask = self.routes.shards_for(topic);
        if mask == 0 {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A position that does not parse (a hand-publisher's typo) is delivered without one.
        let position = Position::parse(envelope.position).ok();
        let broadcast = Arc::new(Broadcast::positioned(
            topic,
            envelope.event,
            position,
            envelope.payload,
        ));
        let dropped = self.shards.send_masked(mask, || ShardMessage::Downstream {
            broadcast: Arc::clone(&broadcast),
            received_at,
        });
        if dropped > 0 {
            let before = self.stats.inbox_drops.fetch_add(dropped, Ordering::Relaxed);
            if (before + 1..=before + dropped).any(u64::is_power_of_two) {
                warn!(
                    drops = before + dropped,
                    "shard inbox full: downstream message dropped for a shard"
                );
            }
        }
    }
}
