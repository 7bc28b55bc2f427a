//! The upstream half of the Redis core: one thread that sends what the shards queue
//! ([`super::commands`]) as pipelines: `PUBLISH from:<topic>:<event>` and the presence scripts.
//!
//! Runs on its own thread, fed by one bounded queue that every shard writes to. It takes
//! whatever is waiting (up to [`MAX_BATCH`]), sends it as one pipeline, and tells each
//! originating shard the outcome so that the client gets `ok` only once Redis accepted the
//! message. One thread and one FIFO queue keep a client's pushes in the order it sent them.
//! While Redis is down every queued push is answered `backend unavailable` at once: a client
//! never waits on a dead Redis and never gets a false `ok`.
//!
//! The same thread does the presence work ([`super::presence_store`]: liveness, reaping, the
//! copy's care, answering joins) and the admin queries ([`super::admin_queries`]). Idle, it
//! sleeps until the next of those is due.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::commands::UpstreamCommand;
use super::deployment::is_failover_reply;
use super::liveness::Liveness;
use super::presence_store::{lock, parse_presence_reply, MAX_FAILED_LEAVES};
use super::status::RedisStatus;
use crate::bounded_queue::{QueueReceiver, RecvTimeoutError};
use crate::inbox::{PushOutcome, ShardMessage, Shards};
use crate::presence::replica::PresenceReplica;
use crate::presence::{self, scripts, shapes};
use crate::protocol::Refusal;

/// How long a pipeline may take, from sending it to its last reply, before the connection is
/// declared dead. Enforced over the whole pipeline: each reply is read with the time that is
/// left (redis-rs's own pipeline query would give every reply the full socket timeout, so a
/// stalled Redis would hold a batch of N for N times the deadline).
const IO_DEADLINE: Duration = Duration::from_secs(3);
/// The publisher connection's name in `CLIENT LIST`.
pub const CLIENT_NAME: &str = "channel-publisher";
/// The most commands sent in one pipeline.
pub const MAX_BATCH: usize = 512;

/// Everything the publisher thread needs.
pub struct RedisPublisher {
    /// Hands out a connection to the current master (asks the sentinels in Sentinel mode).
    pub(super) connector: super::deployment::Connector,
    pub(super) status: Arc<RedisStatus>,
    pub(super) shards: Shards,
    pub(super) queue: QueueReceiver<UpstreamCommand>,
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
    /// Members of presence copies dropped since the heap was last trimmed.
    pub(super) dropped_since_trim: Cell<usize>,
    /// What the publish function keeps per topic (baked in at `FUNCTION LOAD`).
    pub(super) history: super::function::HistorySettings,
}

/// The scripts as loaded on the current connection.
pub(super) struct LoadedScripts {
    pub(super) join: String,
    pub(super) leave: String,
    pub(super) upkeep: String,
    pub(super) snapshot: String,
}

impl RedisPublisher {
    /// Runs until the stop flag is set (or every sender is gone) and the queue is drained.
    pub fn run(self) {
        let mut backoff = Backoff::default();
        let mut ever_connected = false;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut liveness = Liveness::new(self.node.clone(), self.presence_ttl);
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
                    liveness.connected();
                    match self
                        .replay_failed_leaves(&mut conn, &loaded, &mut batch)
                        .and_then(|()| {
                            self.serve_until_failure(&mut conn, &loaded, &mut batch, &mut liveness)
                        }) {
                        Ok(()) => {
                            if let Err(err) = liveness.stop(&mut conn) {
                                debug!(%err, "could not remove this process's presences at stop");
                            }
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
            self.care_for_copies(Instant::now());
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
        // Named for operators (`CLIENT LIST`), and for the tests that hold its replies.
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(CLIENT_NAME)
            .query::<()>(&mut conn)?;
        let mut load = |source: &str| -> redis::RedisResult<String> {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(source)
                .query(&mut conn)
        };
        let loaded = LoadedScripts {
            join: load(scripts::JOIN)?,
            leave: load(scripts::LEAVE)?,
            upkeep: load(scripts::UPKEEP)?,
            snapshot: load(scripts::SNAPSHOT)?,
        };
        super::function::install(&mut conn, self.history)?;
        Ok((conn, loaded))
    }

    /// Runs batches and presence upkeep until stopped (Ok) or Redis fails (Err).
    fn serve_until_failure(
        &self,
        conn: &mut redis::Connection,
        scripts: &LoadedScripts,
        batch: &mut Vec<UpstreamCommand>,
        liveness: &mut Liveness,
    ) -> redis::RedisResult<()> {
        loop {
            if Instant::now() >= liveness.next_at() {
                self.presence_upkeep(conn, scripts, liveness)?;
            }
            if self.connector.master_switched() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                    "the sentinels switched the master",
                )));
            }
            self.care_for_copies(Instant::now());
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
            // Asleep until there is work, a wake-up, the next upkeep or the next care of the
            // presence copy (none while it holds nothing): idle costs one upkeep a period.
            let wake_at = match lock(&self.replica).next_care() {
                Some(care_at) => care_at.min(liveness.next_at()),
                None => liveness.next_at(),
            };
            let first = match self
                .queue
                .recv_timeout(wake_at.saturating_duration_since(Instant::now()))
            {
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

    /// Sends `batch` as one pipeline and answers every command in it.
    pub(super) fn run_pipeline(
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
            UpstreamCommand::History {
                topic,
                since,
                limit,
                ..
            } => {
                let (epoch, id) = match since {
                    Some(since) => (since.epoch.to_string(), since.entry_id()),
                    None => (String::new(), String::new()),
                };
                pipe.cmd("FCALL_RO")
                    .arg(super::function::HISTORY_FUNCTION)
                    .arg(1)
                    .arg(topic)
                    .arg(epoch)
                    .arg(id)
                    .arg(*limit);
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
            UpstreamCommand::History { ticket, .. } => {
                let page = reply.and_then(super::function::read_history_reply);
                self.send(ticket.shard, ShardMessage::HistoryAnswer { ticket, page });
            }
            UpstreamCommand::Wake => {}
            UpstreamCommand::Admin { ticket, .. } => {
                let shard = ticket.shard;
                let answer = Err(Refusal::BackendUnavailable.to_string());
                self.send(shard, ShardMessage::AdminAnswer { ticket, answer });
            }
        }
    }

    pub(super) fn send(&self, shard: usize, message: ShardMessage) {
        // An answer that does not fit leaves the client without a reply only when its shard
        // is hopelessly behind; the shard inbox counts it.
        self.shards.send(shard, message);
    }
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
