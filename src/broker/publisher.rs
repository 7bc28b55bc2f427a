//! The upstream half of the Redis core: pipelined `PUBLISH from:<topic>:<event>` and the
//! presence scripts.
//!
//! Runs on its own thread, fed by one bounded queue that every shard writes to. It takes
//! whatever is waiting (up to [`MAX_BATCH`]), sends it as one pipeline, and tells each
//! originating shard the outcome so that the client gets `ok` only once Redis accepted the
//! message. One thread and one FIFO queue keep a client's pushes in the order it sent them.
//! While Redis is down every queued push is answered `backend unavailable` at once: a client
//! never waits on a dead Redis and never gets a false `ok`.
//!
//! It also keeps this process's presence liveness entry fresh and reaps dead processes'
//! presences (see [`crate::presence`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{debug, info, warn};

use super::admin_queries::{self, AdminQuery};
use super::backoff::Backoff;
use super::deployment::is_failover_reply;
use super::reader::send_states;
use super::status::RedisStatus;
use crate::inbox::{AdminTicket, PushAck, PushOutcome, ShardMessage, Shards};
use crate::presence::replica::{PresenceReplica, Wanted};
use crate::presence::PresenceTicket;
use crate::presence::{self, scripts, shapes, Presence};
use crate::protocol::Refusal;

/// How long a pipeline may take, from sending it to its last reply, before the connection is
/// declared dead. Enforced over the whole pipeline: each reply is read with the time that is
/// left (redis-rs's own pipeline query would give every reply the full socket timeout, so a
/// stalled Redis would hold a batch of N for N times the deadline).
const IO_DEADLINE: Duration = Duration::from_secs(3);
/// The most commands sent in one pipeline.
pub const MAX_BATCH: usize = 512;

/// One message to publish, and who to tell when it is done.
#[derive(Debug)]
pub struct PublishRequest {
    /// The Redis channel, `from:<topic>:<event>`.
    pub channel: String,
    /// The payload exactly as the client sent it.
    pub payload: Bytes,
    /// Which shard and connection wait for the outcome; `None` for fire-and-forget.
    pub origin: Option<(usize, PushAck)>,
}

/// What the shards ask of Redis.
#[derive(Debug)]
pub enum UpstreamCommand {
    /// A client's push.
    Publish(PublishRequest),
    /// A presence joined `topic`; the shard wants the resulting state.
    PresenceJoin {
        /// The joined topic.
        topic: String,
        /// Who joined.
        presence: Presence,
        /// Where the state goes.
        ticket: PresenceTicket,
    },
    /// Read a topic's members to seed this process's copy (made by the publisher itself when
    /// the copy asks for a snapshot; its waiting joins are served from it).
    PresenceSnapshot {
        /// The topic.
        topic: String,
    },
    /// A presence left `topic` (leave, rejoin or disconnect).
    PresenceLeave {
        /// The topic left.
        topic: String,
        /// Who left.
        presence: Presence,
    },
    /// Look at the stop flag and the probe request now (sent by the reader and at shutdown, so
    /// that an idle publisher can sleep until it has work).
    Wake,
    /// A question from the admin channel (not pipelined: it may scan).
    Admin {
        /// What is asked.
        query: AdminQuery,
        /// Who asked.
        ticket: AdminTicket,
    },
}

/// Everything the publisher thread needs.
pub struct RedisPublisher {
    /// Hands out a connection to the current master (asks the sentinels in Sentinel mode).
    pub(super) connector: super::deployment::Connector,
    pub(super) status: Arc<RedisStatus>,
    pub(super) shards: Shards,
    pub(super) queue: Receiver<UpstreamCommand>,
    /// Set at shutdown: publish what is queued, then stop.
    pub(super) stop: Arc<AtomicBool>,
    /// This process's presence identity.
    pub(super) node: String,
    /// How long this process's presences survive without a liveness refresh.
    pub(super) presence_ttl: Duration,
    /// Presence leaves Redis did not take (it was away): replayed on the next connection, or
    /// the members would stay listed while this process lives.
    pub(super) failed_leaves: RefCell<VecDeque<UpstreamCommand>>,
    /// This process's copy of the presence of its topics (shared with the reader).
    pub(super) replica: Arc<Mutex<PresenceReplica>>,
}

/// The most failed leaves kept for replay; beyond, the oldest are dropped (their members then
/// stay listed until this process stops or dies).
const MAX_FAILED_LEAVES: usize = 100_000;

/// The scripts as loaded on the current connection.
struct LoadedScripts {
    join: String,
    leave: String,
    reap: String,
    snapshot: String,
}

impl RedisPublisher {
    /// Runs until the stop flag is set (or every sender is gone) and the queue is drained.
    pub fn run(self) {
        let mut backoff = Backoff::default();
        let mut ever_connected = false;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            match self.connect() {
                Ok((mut conn, loaded)) => {
                    backoff.reset();
                    let reconnected = ever_connected;
                    if reconnected {
                        self.status.count_reconnect();
                    }
                    ever_connected = true;
                    self.status.set_publisher_up(true);
                    info!(deployment = %self.connector.describe(), "redis publisher connected");
                    self.shards.send_all(|| ShardMessage::RedisStateChanged);
                    // Redis may have lost our presences, or never had them (members who joined
                    // while it was unreachable): register them (again). At start-up there are
                    // none and this costs nothing.
                    self.shards.send_all(|| ShardMessage::PresenceResync);
                    match self
                        .replay_failed_leaves(&mut conn, &loaded, &mut batch)
                        .and_then(|()| self.serve_until_failure(&mut conn, &loaded, &mut batch))
                    {
                        Ok(()) => {
                            self.leave_node(&mut conn);
                            info!("redis publisher drained and stopped");
                            return;
                        }
                        Err(err) => {
                            self.status.set_publisher_up(false);
                            self.shards.send_all(|| ShardMessage::RedisStateChanged);
                            warn!(%err, "redis publisher lost; reconnecting");
                        }
                    }
                }
                Err(err) => debug!(%err, "redis publisher cannot connect yet"),
            }
            // While disconnected, answer everything that arrives at once, then try again.
            let wait = backoff.next_wait();
            if self.stop.load(Ordering::Acquire) {
                while let Ok(next) = self.queue.try_recv() {
                    self.fail(next);
                }
                return;
            }
            match self.queue.recv_timeout(wait) {
                Ok(first) => {
                    self.fail(first);
                    while let Ok(next) = self.queue.try_recv() {
                        self.fail(next);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<(redis::Connection, LoadedScripts)> {
        let (mut conn, address) = self.connector.connect()?;
        debug!(%address, "redis publisher connecting");
        conn.set_read_timeout(Some(IO_DEADLINE))?;
        conn.set_write_timeout(Some(IO_DEADLINE))?;
        let mut load = |source: &str| -> redis::RedisResult<String> {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(source)
                .query(&mut conn)
        };
        let loaded = LoadedScripts {
            join: load(scripts::JOIN)?,
            leave: load(scripts::LEAVE)?,
            reap: load(scripts::REAP_DEAD_NODES)?,
            snapshot: load(scripts::SNAPSHOT)?,
        };
        super::function::install(&mut conn)?;
        Ok((conn, loaded))
    }

    /// Runs batches and presence upkeep until stopped (Ok) or Redis fails (Err).
    fn serve_until_failure(
        &self,
        conn: &mut redis::Connection,
        scripts: &LoadedScripts,
        batch: &mut Vec<UpstreamCommand>,
    ) -> redis::RedisResult<()> {
        let upkeep_period = (self.presence_ttl / 3).max(Duration::from_millis(100));
        let mut next_upkeep = Instant::now();
        loop {
            if Instant::now() >= next_upkeep {
                self.presence_upkeep(conn, scripts)?;
                next_upkeep = Instant::now() + upkeep_period;
            }
            if self.connector.master_switched() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                    "the sentinels switched the master",
                )));
            }
            if self.status.take_publisher_probe() {
                // The subscriber saw Redis go or come back: is our connection still good?
                redis::cmd("PING").query::<()>(conn)?;
            }
            let snapshots = lock(&self.replica).take_snapshot_requests();
            if !snapshots.is_empty() {
                batch.extend(
                    snapshots
                        .into_iter()
                        .map(|topic| UpstreamCommand::PresenceSnapshot { topic }),
                );
                self.run_pipeline(conn, scripts, batch)?;
            }
            if self.stop.load(Ordering::Acquire) && self.queue.is_empty() {
                return Ok(());
            }
            // Asleep until there is work, a wake-up, or the next upkeep: idle costs nothing.
            let until_upkeep = next_upkeep.saturating_duration_since(Instant::now());
            let first = match self.queue.recv_timeout(until_upkeep) {
                Ok(UpstreamCommand::Wake) | Err(RecvTimeoutError::Timeout) => continue,
                Ok(first) => first,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            // An admin question ends the batch: it runs after the commands queued before it
            // (so that it sees their effect), one by one, outside the pipeline (it may scan).
            let mut admin = None;
            if matches!(first, UpstreamCommand::Admin { .. }) {
                admin = Some(first);
            } else {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match self.queue.try_recv() {
                        Ok(next @ UpstreamCommand::Admin { .. }) => {
                            admin = Some(next);
                            break;
                        }
                        Ok(UpstreamCommand::Wake) => continue,
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
            }
            if !batch.is_empty() {
                self.run_pipeline(conn, scripts, batch)?;
            }
            if let Some(command) = admin {
                self.answer_admin(conn, command)?;
            }
        }
    }

    /// Sends the leaves that failed while Redis was away, before anything else (once each: a
    /// leave Redis refuses again waits for the next connection).
    fn replay_failed_leaves(
        &self,
        conn: &mut redis::Connection,
        scripts: &LoadedScripts,
        batch: &mut Vec<UpstreamCommand>,
    ) -> redis::RedisResult<()> {
        let mut remaining = self.failed_leaves.borrow().len();
        while remaining > 0 {
            {
                let mut failed = self.failed_leaves.borrow_mut();
                let n = remaining.min(MAX_BATCH).min(failed.len());
                batch.extend(failed.drain(..n));
                remaining = remaining.saturating_sub(n.max(1));
            }
            if !batch.is_empty() {
                self.run_pipeline(conn, scripts, batch)?;
            }
        }
        Ok(())
    }

    /// Sends `batch` as one pipeline and answers every command in it.
    fn run_pipeline(
        &self,
        conn: &mut redis::Connection,
        scripts: &LoadedScripts,
        batch: &mut Vec<UpstreamCommand>,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        // Which joins ask Redis for the members: those of topics the replica has no copy of.
        let mut seeds = Vec::with_capacity(batch.len());
        {
            let mut replica = lock(&self.replica);
            let now = Instant::now();
            for command in batch.iter() {
                let seed = match command {
                    UpstreamCommand::PresenceJoin { topic, .. } => replica.prepare_join(topic, now),
                    UpstreamCommand::PresenceSnapshot { .. } => true,
                    _ => false,
                };
                seeds.push(seed);
                self.add_to_pipeline(&mut pipe, command, scripts, seed);
            }
        }
        match read_replies_within_deadline(conn, &pipe, batch.len()) {
            Ok(replies) => {
                // READONLY and the like: this node is no longer the master (a failover); the
                // refused commands fail and the connection is replaced (docs/operations.md).
                let failover = replies.iter().any(is_failover_reply);
                for ((command, reply), seed) in batch.drain(..).zip(replies).zip(seeds) {
                    // A command Redis refused (OOM, NOSCRIPT, …) is not a success.
                    let reply = match reply {
                        redis::Value::ServerError(_) => None,
                        other => Some(other),
                    };
                    self.answer(command, reply, seed);
                }
                if failover {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                        "the node is no longer the master",
                    )));
                }
                Ok(())
            }
            Err(err) => {
                for (command, seed) in batch.drain(..).zip(seeds) {
                    self.answer(command, None, seed);
                }
                Err(err)
            }
        }
    }

    fn add_to_pipeline(
        &self,
        pipe: &mut redis::Pipeline,
        command: &UpstreamCommand,
        s: &LoadedScripts,
        want_members: bool,
    ) {
        match command {
            UpstreamCommand::Publish(request) => {
                pipe.cmd("PUBLISH")
                    .arg(&request.channel)
                    .arg(request.payload.as_ref());
            }
            UpstreamCommand::PresenceJoin {
                topic, presence, ..
            } => {
                pipe.cmd("EVALSHA")
                    .arg(&s.join)
                    .arg(3)
                    .arg(presence::members_key(topic))
                    .arg(presence::version_key(topic))
                    .arg(presence::node_topics_key(&self.node))
                    .arg(presence.field(&self.node))
                    .arg(shapes::stored_entry(presence))
                    .arg(topic)
                    .arg(presence::diff_channel(topic))
                    .arg(shapes::join_diff(presence))
                    .arg(if want_members { "1" } else { "0" });
            }
            UpstreamCommand::PresenceSnapshot { topic } => {
                pipe.cmd("EVALSHA")
                    .arg(&s.snapshot)
                    .arg(2)
                    .arg(presence::members_key(topic))
                    .arg(presence::version_key(topic));
            }
            UpstreamCommand::Admin { .. } | UpstreamCommand::Wake => {}
            UpstreamCommand::PresenceLeave { topic, presence } => {
                pipe.cmd("EVALSHA")
                    .arg(&s.leave)
                    .arg(2)
                    .arg(presence::members_key(topic))
                    .arg(presence::version_key(topic))
                    .arg(presence.field(&self.node))
                    .arg(presence::diff_channel(topic))
                    .arg(shapes::leave_diff(presence));
            }
        }
    }

    /// Refreshes this process's liveness and removes the presences of dead processes.
    fn presence_upkeep(
        &self,
        conn: &mut redis::Connection,
        s: &LoadedScripts,
    ) -> redis::RedisResult<()> {
        let now = presence::unix_ms();
        let expires = now + self.presence_ttl.as_millis() as u64;
        let reaped: i64 = redis::pipe()
            .cmd("ZADD")
            .arg(presence::NODES_KEY)
            .arg(expires)
            .arg(&self.node)
            .ignore()
            .cmd("EVALSHA")
            .arg(&s.reap)
            .arg(0)
            .arg(now)
            .query::<(i64,)>(conn)?
            .0;
        if reaped > 0 {
            info!(reaped, "removed the presences of stopped channel processes");
        }
        Ok(())
    }

    /// At a clean stop, this process's presences leave at once instead of after the TTL.
    fn leave_node(&self, conn: &mut redis::Connection) {
        let result: redis::RedisResult<()> = redis::cmd("ZADD")
            .arg(presence::NODES_KEY)
            .arg(0)
            .arg(&self.node)
            .query(conn);
        let reaped: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(scripts::REAP_DEAD_NODES)
            .arg(0)
            .arg(presence::unix_ms())
            .query(conn);
        if let Err(err) = result.and(reaped.map(|_| ())) {
            debug!(%err, "could not remove this process's presences at stop");
        }
    }

    fn fail(&self, command: UpstreamCommand) {
        let seed = matches!(command, UpstreamCommand::PresenceSnapshot { .. });
        self.answer(command, None, seed);
    }

    /// Tells the originating shard the outcome; `reply` is `None` when Redis failed. `seed`:
    /// the command was asked for the topic's members, to seed the replica.
    fn answer(&self, command: UpstreamCommand, reply: Option<redis::Value>, seed: bool) {
        match command {
            UpstreamCommand::Publish(request) => {
                let Some((shard, ack)) = request.origin else {
                    return;
                };
                let outcome = match reply {
                    Some(_) => PushOutcome::Published,
                    None => PushOutcome::BackendUnavailable,
                };
                self.send(shard, ShardMessage::PushResult { ack, outcome });
            }
            UpstreamCommand::PresenceJoin { topic, ticket, .. } => {
                self.answer_join(&topic, ticket, reply.and_then(parse_presence_reply), seed);
            }
            UpstreamCommand::PresenceSnapshot { topic } => {
                self.answer_join_state(&topic, None, reply.and_then(parse_presence_reply));
            }
            leave @ UpstreamCommand::PresenceLeave { .. } => {
                if reply.is_none() {
                    let mut failed = self.failed_leaves.borrow_mut();
                    if failed.len() >= MAX_FAILED_LEAVES {
                        failed.pop_front();
                    }
                    failed.push_back(leave);
                }
            }
            UpstreamCommand::Wake => {}
            UpstreamCommand::Admin { ticket, .. } => {
                let shard = ticket.shard;
                let answer = Err(Refusal::BackendUnavailable.to_string());
                self.send(shard, ShardMessage::AdminAnswer { ticket, answer });
            }
        }
    }

    /// A join's outcome: `reply` is its version and, if it asked, the members to seed the copy
    /// with. The joiner's state comes from the copy, now or once it reaches that version.
    fn answer_join(
        &self,
        topic: &str,
        ticket: PresenceTicket,
        reply: Option<(u64, Option<Vec<Vec<u8>>>)>,
        seed: bool,
    ) {
        match reply {
            Some(reply) => self.answer_join_state(topic, Some(ticket), Some(reply)),
            None => {
                // No version, so no state for this joiner; a seed it carried is lost too.
                if seed {
                    self.answer_join_state(topic, None, None);
                }
                self.send_no_state(ticket);
            }
        }
    }

    /// Tells a joiner's shard that Redis could not give its state (the channel then runs
    /// without one until the next resync).
    fn send_no_state(&self, ticket: PresenceTicket) {
        let shard = ticket.shard;
        let state = None;
        self.send(shard, ShardMessage::PresenceState { ticket, state });
    }

    /// Seeds the copy of `topic` (members in `reply`), registers `joiner` at its version, and
    /// sends every state that is ready. `reply` `None`: the seed failed, its waiters get none.
    fn answer_join_state(
        &self,
        topic: &str,
        joiner: Option<PresenceTicket>,
        reply: Option<(u64, Option<Vec<Vec<u8>>>)>,
    ) {
        let now = Instant::now();
        let mut replica = lock(&self.replica);
        let Some((version, members)) = reply else {
            let waiters = replica.seed_failed(topic);
            drop(replica);
            for ticket in waiters {
                self.send_no_state(ticket);
            }
            return;
        };
        let mut served = match members {
            Some(members) => replica.seed(topic, version, members.iter().map(Vec::as_slice), now),
            None => Vec::new(),
        };
        if let Some(ticket) = joiner {
            if let Wanted::Ready(state) = replica.want(topic, version, ticket.clone(), now) {
                served.push((ticket, state));
            }
        }
        drop(replica);
        send_states(&self.shards, served);
    }

    /// Runs one admin query; a Redis failure fails the connection like a pipeline would.
    fn answer_admin(
        &self,
        conn: &mut redis::Connection,
        command: UpstreamCommand,
    ) -> redis::RedisResult<()> {
        let UpstreamCommand::Admin { query, ticket } = command else {
            return Ok(());
        };
        let result = match &query {
            AdminQuery::Topics => admin_queries::topics(conn),
            AdminQuery::Disconnect(id) => admin_queries::disconnect(conn, id),
        };
        let shard = ticket.shard;
        match result {
            Ok(value) => {
                self.send(
                    shard,
                    ShardMessage::AdminAnswer {
                        ticket,
                        answer: Ok(value),
                    },
                );
                Ok(())
            }
            Err(err) => {
                let answer = Err(Refusal::BackendUnavailable.to_string());
                self.send(shard, ShardMessage::AdminAnswer { ticket, answer });
                Err(err)
            }
        }
    }

    fn send(&self, shard: usize, message: ShardMessage) {
        // An answer that does not fit leaves the client without a reply only when its shard
        // is hopelessly behind; the shard inbox counts it.
        self.shards.send(shard, message);
    }
}

/// `{version}` or `{version, [entry, …]}` → the version and the entries, if any.
fn parse_presence_reply(reply: redis::Value) -> Option<(u64, Option<Vec<Vec<u8>>>)> {
    let redis::Value::Array(mut parts) = reply else {
        return None;
    };
    let entries = match parts.len() {
        1 => None,
        2 => match parts.pop()? {
            redis::Value::Array(entries) => Some(
                entries
                    .into_iter()
                    .filter_map(|value| match value {
                        redis::Value::BulkString(bytes) => Some(bytes),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => return None,
        },
        _ => return None,
    };
    let version = match parts.pop()? {
        redis::Value::Int(v) => u64::try_from(v).ok()?,
        _ => return None,
    };
    Some((version, entries))
}

/// The replica's lock; a panic while holding it leaves it usable (every operation on it
/// leaves it consistent).
pub(super) fn lock(replica: &Mutex<PresenceReplica>) -> std::sync::MutexGuard<'_, PresenceReplica> {
    replica
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends `pipe` and reads its `count` replies, all within [`IO_DEADLINE`] from now.
fn read_replies_within_deadline(
    conn: &mut redis::Connection,
    pipe: &redis::Pipeline,
    count: usize,
) -> redis::RedisResult<Vec<redis::Value>> {
    let deadline = Instant::now() + IO_DEADLINE;
    conn.send_packed_command(&pipe.get_packed_pipeline())?;
    let mut replies = Vec::with_capacity(count);
    for _ in 0..count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "redis pipeline deadline passed",
            )
            .into());
        }
        conn.set_read_timeout(Some(left))?;
        replies.push(conn.recv_response()?);
    }
    conn.set_read_timeout(Some(IO_DEADLINE))?;
    Ok(replies)
}
