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
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::commands::UpstreamCommand;
use super::deployment::is_failover_reply;
use super::liveness::Liveness;
use super::master_links::{MasterLinks, Route};
use super::presence_store::{lock, parse_presence_reply, MAX_FAILED_LEAVES};
pub(super) use super::script_set::LoadedScripts;
use super::status::RedisStatus;
use crate::bounded_queue::{QueueReceiver, RecvTimeoutError};
use crate::inbox::{PushOutcome, ShardMessage, Shards};
use crate::presence::replica::PresenceReplica;
use crate::presence::{self, shapes};
use crate::protocol::Refusal;

/// On a cluster, how soon presence upkeep that failed on one master is tried again.
const CLUSTER_RETRY: Duration = Duration::from_millis(250);
/// The publisher connections' name in `CLIENT LIST` (one per master on a cluster).
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
    /// Topics in which this process has members, to add to its topic list in Redis (the
    /// list the reapers read if it dies): sent with the next pipeline.
    pub(super) topics_to_register: RefCell<HashSet<String>>,
    /// Topics already in that list on this connection.
    pub(super) registered_topics: RefCell<HashSet<String>>,
    /// What the publish function keeps per topic (baked in at `FUNCTION LOAD`).
    pub(super) history: super::function::HistorySettings,
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
                Ok((mut links, loaded)) => {
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
                        .replay_failed_leaves(&mut links, &loaded, &mut batch)
                        .and_then(|()| {
                            self.serve_until_failure(&mut links, &loaded, &mut batch, &mut liveness)
                        }) {
                        Ok(()) => {
                            if let Err(err) = liveness.stop(&mut links, &loaded) {
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

    /// Connections to the master(s), each named, with the scripts loaded and the publish
    /// function installed.
    fn connect(&self) -> redis::RedisResult<(MasterLinks, LoadedScripts)> {
        let topology = self.connector.topology()?;
        debug!(masters = ?topology.masters(), "redis publisher connecting");
        let history = self.history;
        let set_up = move |conn: &mut redis::Connection| {
            // Named for operators (`CLIENT LIST`), and for the tests that hold its replies.
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(CLIENT_NAME)
                .query::<()>(conn)?;
            super::script_set::set_up_connection(conn, history)
        };
        let links = MasterLinks::open(topology, Box::new(set_up))?;
        // A new connection: Redis may have lost the topic list (or this is the first).
        self.registered_topics.borrow_mut().clear();
        Ok((links, LoadedScripts::hashes()))
    }

    /// Runs batches and presence upkeep until stopped (Ok) or Redis fails (Err).
    fn serve_until_failure(
        &self,
        conn: &mut MasterLinks,
        scripts: &LoadedScripts,
        batch: &mut Vec<UpstreamCommand>,
        liveness: &mut Liveness,
    ) -> redis::RedisResult<()> {
        loop {
            if Instant::now() >= liveness.next_at() {
                if let Err(err) = self.presence_upkeep(conn, scripts, liveness) {
                    // On a cluster, one master's failover fails only its own slot's work: the
                    // upkeep is tried again shortly, the rest goes on.
                    if !conn.is_cluster() {
                        return Err(err);
                    }
                    warn!(%err, "presence upkeep failed on a cluster master; retrying");
                    liveness.retry_after(CLUSTER_RETRY);
                }
                // With each upkeep (every 2 s) the slot map is read again, so that a master
                // added to a cluster gets the function even if nothing failed.
                conn.mark_stale();
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
                conn.query(Route::AnyMaster, redis::cmd("PING"))?;
            }
            // On a cluster: a master that failed is looked up again, new masters connected.
            conn.follow_topology()?;
            self.status
                .set_unreachable_masters(conn.unreachable_masters());
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
                if let Err(err) = self.answer_admin(conn, command) {
                    // Answered `backend unavailable` already; a cluster goes on with the
                    // masters that work.
                    if !conn.is_cluster() {
                        return Err(err);
                    }
                }
            }
        }
    }

    /// Sends `batch` as one pipeline (one per master on a cluster) and answers every command
    /// in it.
    pub(super) fn run_pipeline(
        &self,
        conn: &mut MasterLinks,
        scripts: &LoadedScripts,
        batch: &mut Vec<UpstreamCommand>,
    ) -> redis::RedisResult<()> {
        let mut commands = Vec::with_capacity(batch.len() + 1);
        // Which joins ask Redis for the members: those of topics the replica has no copy of.
        let mut seeds = Vec::with_capacity(batch.len());
        {
            let mut replica = lock(&self.replica);
            let now = Instant::now();
            for command in batch.iter() {
                let seed = match command {
                    UpstreamCommand::PresenceJoin { topic, .. } => {
                        if !self.registered_topics.borrow().contains(topic) {
                            self.topics_to_register.borrow_mut().insert(topic.clone());
                        }
                        replica.prepare_join(topic, now)
                    }
                    UpstreamCommand::PresenceSnapshot { .. } => true,
                    _ => false,
                };
                seeds.push(seed);
                commands.push(self.command_for(command, scripts, seed));
            }
        }
        // The process's topic list, for the reapers if it dies (its own slot on a cluster).
        let registering: Vec<String> = self.topics_to_register.borrow_mut().drain().collect();
        if !registering.is_empty() {
            let key = presence::node_topics_key(&self.node);
            let mut sadd = redis::cmd("SADD");
            sadd.arg(&key).arg(&registering);
            commands.push((Route::key(&key), sadd));
        }
        let outcome = conn.pipeline(&commands);
        let mut replies = match outcome {
            Ok(replies) => replies,
            Err(err) => {
                self.topics_to_register.borrow_mut().extend(registering);
                for (command, seed) in batch.drain(..).zip(seeds) {
                    self.answer(command, None, seed);
                }
                return Err(err);
            }
        };
        if !registering.is_empty() {
            match replies.pop().flatten() {
                Some(value) if !matches!(value, redis::Value::ServerError(_)) => {
                    self.registered_topics.borrow_mut().extend(registering);
                }
                // Tried again with the next pipeline.
                _ => self.topics_to_register.borrow_mut().extend(registering),
            }
        }
        // READONLY and the like: this node is no longer the master (a failover); the refused
        // commands fail and the connection is replaced (docs/operations.md).
        let failover = replies.iter().flatten().any(is_failover_reply);
        for ((command, reply), seed) in batch.drain(..).zip(replies).zip(seeds) {
            // A command Redis refused (OOM, NOSCRIPT, …) or a master that failed is not a
            // success.
            let reply = match reply {
                Some(redis::Value::ServerError(err)) => {
                    debug!(code = err.code(), detail = ?err.details(), "redis refused a command");
                    None
                }
                None => None,
                Some(other) => Some(other),
            };
            self.answer(command, reply, seed);
        }
        if failover {
            if conn.is_cluster() {
                conn.mark_stale();
                return Ok(());
            }
            return Err(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the node is no longer the master",
            )));
        }
        Ok(())
    }

    /// The Redis command for `command`, and where it goes.
    fn command_for(
        &self,
        command: &UpstreamCommand,
        s: &LoadedScripts,
        want_members: bool,
    ) -> (Route, redis::Cmd) {
        let mut cmd;
        let route = match command {
            UpstreamCommand::Publish(request) => {
                cmd = redis::cmd("PUBLISH");
                cmd.arg(&request.channel).arg(request.payload.as_ref());
                // A cluster propagates a PUBLISH to every node, so any master would do; the
                // topic's own master is used, so that a topic's pushes fail exactly while its
                // slot has no master (and spread over the masters as topics do).
                match super::naming::split_upstream(&request.channel) {
                    // The topic's slot, computed without building a key per push.
                    Some((topic, _event)) => Route::topic(topic),
                    None => Route::key(&request.channel),
                }
            }
            UpstreamCommand::PresenceJoin {
                topic, presence, ..
            } => {
                cmd = redis::cmd("EVALSHA");
                cmd.arg(&s.join)
                    .arg(2)
                    .arg(presence::members_key(topic))
                    .arg(presence::version_key(topic))
                    .arg(presence.field(&self.node))
                    .arg(shapes::stored_entry(presence))
                    .arg(presence::diff_channel(topic))
                    .arg(shapes::join_diff(presence))
                    .arg(if want_members { "1" } else { "0" });
                Route::topic(topic)
            }
            UpstreamCommand::PresenceSnapshot { topic } => {
                cmd = redis::cmd("EVALSHA");
                cmd.arg(&s.snapshot)
                    .arg(2)
                    .arg(presence::members_key(topic))
                    .arg(presence::version_key(topic));
                Route::topic(topic)
            }
            UpstreamCommand::Admin { .. } | UpstreamCommand::Wake => {
                // Never in a batch (answered on their own): a harmless placeholder.
                cmd = redis::cmd("PING");
                Route::AnyMaster
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
                cmd = redis::cmd("FCALL_RO");
                cmd.arg(super::function::HISTORY_FUNCTION)
                    .arg(1)
                    .arg(topic)
                    .arg(epoch)
                    .arg(id)
                    .arg(*limit);
                // The function's key is the topic: its slot is the history's.
                Route::key(topic)
            }
            UpstreamCommand::PresenceLeave { topic, presence } => {
                cmd = redis::cmd("EVALSHA");
                cmd.arg(&s.leave)
                    .arg(2)
                    .arg(presence::members_key(topic))
                    .arg(presence::version_key(topic))
                    .arg(presence.field(&self.node))
                    .arg(presence::diff_channel(topic))
                    .arg(shapes::leave_diff(presence));
                Route::topic(topic)
            }
        };
        (route, cmd)
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
