//! The downstream half of the Redis core: one connection, one `PSUBSCRIBE to:*`.
//!
//! Runs on its own thread. Each `pmessage` is decoded once: the channel name is split into
//! topic and event, the payload is validated and the final frame bytes are built once
//! ([`Broadcast`]), and a reference-counted handle goes to every interested shard's inbox.
//! It reconnects with backoff when Redis goes away, and pings when the subscription has been
//! quiet for a while so that a connection that is open but dead is noticed and replaced.
//! It never blocks on a shard: a full shard inbox drops that message for that shard and
//! counts it. It never wakes on a timer of its own beyond that probe: an idle subscription
//! costs one PING every [`PROBE_AFTER`] (the presence copy's timed care is the publisher's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tracing::{debug, info, warn};

use super::admin_queries::{CONTROL_CHANNEL, DISCONNECT_PREFIX};
use super::backoff::Backoff;
use super::commands::UpstreamCommand;
use super::interest::InterestTable;
use super::naming::{split_downstream, DOWNSTREAM_PATTERN};
use super::presence_store::lock;
use super::status::RedisStatus;
use crate::inbox::InterestChange;
use crate::inbox::{ShardMessage, Shards};
use crate::presence;
use crate::presence::replica::{PresenceReplica, Served};
use crate::protocol::Broadcast;

/// A subscription silent for this long is probed with a PING. It is the read timeout itself:
/// every read starts right after the previous message was handled, so a read that times out
/// has seen exactly this much silence, and nothing else wakes the reader (a shorter polling
/// tick would only add wake-ups to an idle process and its length to the detection bound).
pub const PROBE_AFTER: Duration = Duration::from_secs(3);
/// A PING not answered within this long means the connection is dead. A dead subscription
/// is therefore replaced at most `PROBE_AFTER + PROBE_DEADLINE` after its last message.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// How long the unsubscribe of a connection being given up may wait for its answer (the
/// smallest read timeout there is: it is not waited for).
const GIVE_UP_WAIT: Duration = Duration::from_millis(1);

/// Counters the reader keeps for metrics and the admin channel.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// Messages received from Redis on `to:*`.
    pub received: AtomicU64,
    /// Messages whose channel name had no topic/event shape.
    pub malformed_names: AtomicU64,
    /// Messages for topics no shard subscribes to.
    pub unrouted: AtomicU64,
    /// Deliveries to a shard dropped because its inbox was full.
    pub inbox_drops: AtomicU64,
    /// Messages read back from a topic's history to fill the gap of a sharded subscription
    /// that came back (`continuity.rs`).
    pub gap_filled: AtomicU64,
    /// Sharded subscriptions that came back whose gap could not be told whole (the history
    /// was lost meanwhile, or could not be read).
    pub gap_lost: AtomicU64,
}

/// Everything the reader thread needs.
pub struct RedisReader {
    /// Hands out a connection to the current master (asks the sentinels in Sentinel mode).
    pub(super) connector: super::deployment::Connector,
    pub(super) status: Arc<RedisStatus>,
    pub(super) stats: Arc<ReaderStats>,
    pub(super) shards: Shards,
    pub(super) interest_changes: Receiver<InterestChange>,
    /// Wakes the publisher when it should probe its own connection or fetch a snapshot.
    pub(super) publisher_wake: crate::bounded_queue::QueueSender<UpstreamCommand>,
    /// This process's copy of the presence of its topics: follows the diffs.
    pub(super) replica: Arc<Mutex<PresenceReplica>>,
}

impl RedisReader {
    /// Runs forever: connect, subscribe, dispatch, and start over when the connection fails.
    pub fn run(self) {
        let mut interest = InterestTable::default();
        let mut backoff = Backoff::default();
        let mut ever_connected = false;
        loop {
            interest.apply_pending(&self.interest_changes);
            match self.connect() {
                Ok(mut conn) => {
                    match self.dispatch_until_failure(&mut conn, &mut interest, &mut ever_connected)
                    {
                        Ok(reason) => {
                            self.status.set_subscriber_up(false);
                            self.status.ask_publisher_to_probe();
                            let _ = self.publisher_wake.try_send(UpstreamCommand::Wake);
                            self.shards.send_all(|| ShardMessage::RedisStateChanged);
                            backoff.reset();
                            warn!(%reason, "redis subscriber lost; reconnecting");
                        }
                        Err(err) => debug!(%err, "redis subscriber cannot subscribe yet"),
                    }
                }
                Err(err) => debug!(%err, "redis subscriber cannot connect yet"),
            }
            let wait = backoff.next_wait();
            let until = Instant::now() + wait;
            // Keep the interest table current while waiting, so that it is right on reconnect.
            while Instant::now() < until {
                if let Ok(change) = self.interest_changes.recv_timeout(until - Instant::now()) {
                    interest.apply(change);
                }
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let (conn, address) = self.connector.connect()?;
        debug!(%address, "redis subscriber connecting");
        conn.set_write_timeout(Some(PROBE_DEADLINE))?;
        Ok(conn)
    }

    /// Subscribes, then reads and dispatches until the connection fails; returns why.
    ///
    /// One `PubSub` lives for the whole subscription: dropping it unsubscribes.
    fn dispatch_until_failure(
        &self,
        conn: &mut redis::Connection,
        interest: &mut InterestTable,
        ever_connected: &mut bool,
    ) -> Result<String, redis::RedisError> {
        let mut pubsub = conn.as_pubsub();
        let outcome = self.subscribe_and_dispatch(&mut pubsub, interest, ever_connected);
        // The connection is given up. Dropping `pubsub` sends UNSUBSCRIBE and reads until it
        // is answered, with the read timeout in force: on a dead connection that is a full
        // PROBE_AFTER of waiting added to every replacement (what made a longer read timeout
        // look as if it slowed the detection down). Nothing it could answer matters now.
        let _ = pubsub.set_read_timeout(Some(GIVE_UP_WAIT));
        outcome
    }

    fn subscribe_and_dispatch(
        &self,
        pubsub: &mut redis::PubSub<'_>,
        interest: &mut InterestTable,
        ever_connected: &mut bool,
    ) -> Result<String, redis::RedisError> {
        pubsub.set_read_timeout(Some(PROBE_DEADLINE))?;
        pubsub.psubscribe(&[DOWNSTREAM_PATTERN, presence::DIFF_PATTERN])?;
        pubsub.subscribe(CONTROL_CHANNEL)?;
        pubsub.set_read_timeout(Some(PROBE_AFTER))?;
        let reconnected = *ever_connected;
        if reconnected {
            self.status.count_reconnect();
        }
        *ever_connected = true;
        self.status.set_subscriber_up(true);
        self.status.ask_publisher_to_probe();
        let _ = self.publisher_wake.try_send(UpstreamCommand::Wake);
        self.shards.send_all(|| ShardMessage::RedisStateChanged);
        // Diffs published while we were not subscribed are lost: the copies cannot be trusted.
        lock(&self.replica).clear(Instant::now());
        self.wake_publisher_for_snapshots();
        if reconnected {
            // Fresh states for everyone.
            self.shards.send_all(|| ShardMessage::PresenceResync);
        }
        info!(
            pattern = DOWNSTREAM_PATTERN,
            deployment = %self.connector.describe(),
            "redis subscriber connected"
        );
        loop {
            match pubsub.get_message() {
                Ok(msg) => {
                    if self.connector.master_switched() {
                        // Woken by the switch watcher's note on the old master (or any message).
                        return Ok("the sentinels switched the master".to_owned());
                    }
                    interest.apply_pending(&self.interest_changes);
                    self.dispatch(
                        msg.get_channel_name().as_bytes(),
                        msg.get_payload_bytes(),
                        interest,
                    );
                }
                Err(err) if err.is_timeout() => {
                    if self.connector.master_switched() {
                        return Ok("the sentinels switched the master".to_owned());
                    }
                    // PROBE_AFTER of silence (the read timeout): is the connection still there?
                    interest.apply_pending(&self.interest_changes);
                    if let Err(err) = probe(pubsub) {
                        return Ok(format!("liveness probe failed: {err}"));
                    }
                }
                Err(err) => return Ok(err.to_string()),
            }
        }
    }

    fn dispatch(&self, channel: &[u8], payload: &[u8], interest: &InterestTable) {
        let received_at = Instant::now();
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if let Some(topic) = presence::topic_of_diff_channel(channel) {
            return self.dispatch_presence_diff(topic, payload, interest);
        }
        if channel == CONTROL_CHANNEL.as_bytes() {
            return self.dispatch_control(payload);
        }
        let Some((topic, event)) = split_downstream(channel) else {
            self.stats.malformed_names.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mask = interest.shards_for(topic);
        if mask == 0 {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let broadcast = Arc::new(Broadcast::new(topic, event, payload));
        let dropped = self.shards.send_masked(mask, || ShardMessage::Downstream {
            broadcast: Arc::clone(&broadcast),
            received_at,
        });
        if dropped > 0 {
            let before = self.stats.inbox_drops.fetch_add(dropped, Ordering::Relaxed);
            let drops = before + dropped;
            if (before + 1..=drops).any(u64::is_power_of_two) {
                warn!(
                    drops,
                    "shard inbox full: downstream message dropped for a shard"
                );
            }
        }
    }
}

impl RedisReader {
    /// A control message from an admin of any process: `disconnect <id>` goes to every shard.
    fn dispatch_control(&self, payload: &[u8]) {
        let Some(id) = payload
            .strip_prefix(DISCONNECT_PREFIX.as_bytes())
            .and_then(|id| std::str::from_utf8(id).ok())
        else {
            return;
        };
        self.shards
            .send_all(|| ShardMessage::DisconnectClient { id: id.to_owned() });
    }

    /// Turns a presence diff into the admin channel's `channel.join` / `channel.leave` events.
    fn dispatch_admin_events(&self, topic: &str, diff: &[u8], interest: &InterestTable) {
        let mask = interest.shards_for(crate::auth::ADMIN_CHANNEL);
        if mask == 0 {
            return;
        }
        let Ok(diff) = serde_json::from_slice::<serde_json::Value>(diff) else {
            return;
        };
        for (side, event) in [("joins", "channel.join"), ("leaves", "channel.leave")] {
            let Some(ids) = diff.get(side).and_then(|v| v.as_object()) else {
                continue;
            };
            for id in ids.keys() {
                let payload = serde_json::json!({ "topic": topic, "id": id }).to_string();
                let broadcast = Arc::new(Broadcast::new(
                    crate::auth::ADMIN_CHANNEL,
                    event,
                    payload.as_bytes(),
                ));
                self.shards
                    .send_masked(mask, || ShardMessage::Broadcast(Arc::clone(&broadcast)));
            }
        }
    }

    /// Hands a versioned presence diff to the shards that have the topic.
    fn dispatch_presence_diff(&self, topic: &str, payload: &[u8], interest: &InterestTable) {
        let Some((version, diff)) = presence::parse_versioned_diff(payload) else {
            self.stats.malformed_names.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.dispatch_admin_events(topic, diff, interest);
        let mask = interest.shards_for(topic);
        if mask != 0 {
            self.broadcast_presence_diff(topic, version, diff, mask);
        }
        // After the diff: a joiner's state then never predates a diff it was sent.
        let (served, wants_snapshots) = {
            let mut replica = lock(&self.replica);
            let served = replica.apply_diff(topic, version, diff, Instant::now());
            (served, replica.wants_snapshots())
        };
        send_states(&self.shards, served);
        if wants_snapshots {
            let _ = self.publisher_wake.try_send(UpstreamCommand::Wake);
        }
    }

    /// Wakes the publisher if the replica asks for snapshots.
    fn wake_publisher_for_snapshots(&self) {
        if lock(&self.replica).wants_snapshots() {
            let _ = self.publisher_wake.try_send(UpstreamCommand::Wake);
        }
    }

    fn broadcast_presence_diff(&self, topic: &str, version: u64, diff: &[u8], mask: u64) {
        let broadcast = Arc::new(Broadcast::new(topic, "presence_diff", diff));
        let dropped = self
            .shards
            .send_masked(mask, || ShardMessage::PresenceDiff {
                broadcast: Arc::clone(&broadcast),
                version,
            });
        self.stats.inbox_drops.fetch_add(dropped, Ordering::Relaxed);
    }
}

/// Sends a PING on the subscribed connection and waits for its answer.
fn probe(pubsub: &mut redis::PubSub<'_>) -> redis::RedisResult<()> {
    pubsub.set_read_timeout(Some(PROBE_DEADLINE))?;
    let answer = pubsub.ping::<redis::Value>();
    pubsub.set_read_timeout(Some(PROBE_AFTER))?;
    answer.map(|_| ())
}

/// Sends each joiner its presence state.
pub(super) fn send_states(shards: &Shards, served: Served) {
    for (ticket, state) in served {
        shards.send(
            ticket.shard,
            ShardMessage::PresenceState {
                ticket,
                state: Some(state),
            },
        );
    }
}
