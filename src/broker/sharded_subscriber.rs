//! Downstream by interest: `SSUBSCRIBE` to the sharded channel of every topic this process has
//! a subscriber for, and nothing else (docs/protocol.md, "The publish function"), on the master
//! that owns the channel's slot (docs/operations.md, "Redis Cluster").
//!
//! One control thread, and per master one connection of its own with a read thread, held
//! whether or not a topic of its slots is wanted (the reader's `PSUBSCRIBE to:*` connection is
//! left as it is, so the classic path keeps working alongside). On a single Redis or under
//! Sentinel there is one master, which owns every slot.
//! - the **control** thread owns the process's interest table (fed by the shards, like the
//!   reader's), the slot map ([`ClusterTopology`]), where each wanted topic is subscribed
//!   (`placed`) and the write half of every connection. A topic's first interested shard sends
//!   `SSUBSCRIBE` to its slot's master, its last `SUNSUBSCRIBE` (changes waiting together go
//!   as one command per master). When a connection fails, a master sends `sunsubscribe` for a
//!   topic still wanted (its slot moved), or a command is answered `MOVED`, the slot map is
//!   read again and every wanted topic is subscribed where it belongs now (and dropped where it
//!   does not); after a Sentinel switch every connection is replaced. It PINGs a quiet
//!   connection and shuts it down when the answer does not come. When Redis confirms a topic's
//!   subscription (its `ssubscribe` reply on the connection where the topic is placed; at once
//!   for a shard that gains a topic already confirmed) it tells the interested shards
//!   ([`ShardMessage::TopicSubscribed`]): their joins of the topic wait for it, so that nothing
//!   published with the function after a join reply is missed.
//! - each **read** thread parses what its master sends with the redis crate's parser (the
//!   crate's sync `PubSub` does not read `smessage` in RESP2, and it cannot wait on the shards
//!   and on Redis at once), opens each envelope once, builds the frame once and hands it to the
//!   interested shards, exactly as the reader does for `to:*`.
//!
//! A message is published on one master only (its slot's), so a topic subscribed on two
//! masters for a moment (during a slot migration) is still delivered once. A topic whose
//! subscription is lost while still wanted has its gap filled from history when it is confirmed
//! again, by the read thread that receives the confirmation (`continuity.rs`).
//!
//! What it must never do: block on a shard (a full inbox drops the message for that shard and
//! counts it), talk to Redis on the reader's or the publisher's connection, or log a password.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::cluster_topology::{slot_of, ClusterTopology, NodeAddress};
use super::continuity::{self, Continuity, FillFrom, Gap};
use super::deployment::Connector;
use super::function::{open_envelope, sharded_channel, topic_of_sharded_channel};
use super::interest::InterestTable;
use super::reader::ReaderStats;
use super::status::RedisStatus;
use crate::history::{HistoryEntry, Position};
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
/// The name of each master's connection for history reads (`continuity.rs`).
pub const HISTORY_CLIENT_NAME: &str = "channel-history-reader";
/// Topics per `SSUBSCRIBE` / `SUNSUBSCRIBE` command when many change at once.
const BATCH: usize = 256;
/// The slot map is read at most this often while it keeps moving (a failover in progress).
const REREAD_PAUSE: Duration = Duration::from_millis(100);
/// New topics' floors (`continuity.rs`) are read in one round trip once this many wait...
const FLOOR_BATCH: usize = 256;
/// ... or once the oldest has waited this long (checked as replies arrive: at the latest with
/// the answer to the next liveness PING), so that a storm of joins of new topics costs a few
/// round trips, not one per topic.
const FLOOR_DELAY: Duration = Duration::from_millis(100);

/// What a read thread tells the control thread.
enum ReadEvent {
    /// Redis confirmed (`true`) or ended (`false`) the subscription of a topic.
    Subscription {
        node: NodeAddress,
        link: u64,
        topic: String,
        subscribed: bool,
    },
    /// A command was answered `MOVED`/`ASK` (or `CLUSTERDOWN`): the slot map changed.
    Redirected { node: NodeAddress, link: u64 },
    /// The connection failed; why.
    Ended {
        node: NodeAddress,
        link: u64,
        reason: String,
    },
}

/// Everything the sharded subscriber needs; [`ShardedSubscriber::spawn`] starts it.
pub struct ShardedSubscriber {
    pub(super) connector: Connector,
    pub(super) shards: Shards,
    pub(super) stats: Arc<ReaderStats>,
    /// Where `/healthz` reads whether every wanted topic is subscribed.
    pub(super) status: Arc<RedisStatus>,
    /// Interest changes from the shards (a copy of what the reader gets).
    pub(super) changes: Receiver<InterestChange>,
    /// A tick each time the sentinels switch the master (never in single mode).
    pub(super) master_switched: Receiver<()>,
}

/// One master's connection, as the control thread holds it.
struct Link {
    /// The write half.
    socket: TcpStream,
    /// Interest changes for the read thread's routing table.
    routes: Sender<InterestChange>,
    /// Which connection this is (events of a replaced one are ignored).
    id: u64,
    /// How many replies the read thread has read.
    heard: Arc<AtomicU64>,
    /// `heard` as last seen by the control thread, and when it last moved.
    seen: (u64, Instant),
    probe_sent: Option<Instant>,
    /// Topics we asked this master to drop whose `sunsubscribe` has not come back yet.
    leaving: HashSet<String>,
    /// Which topics this master confirmed.
    confirmations: Confirmations,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Ends the read thread too.
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// The control thread's state.
struct Control {
    sub: ShardedSubscriber,
    interest: InterestTable,
    topology: Option<ClusterTopology>,
    /// Read the slot map again before placing topics.
    stale: bool,
    last_read: Option<Instant>,
    /// Where each wanted topic was subscribed (asked; confirmed by Redis soon after).
    placed: HashMap<String, NodeAddress>,
    links: HashMap<NodeAddress, Link>,
    /// Masters whose connection attempt failed, and why (for `/healthz`).
    unreachable: HashMap<NodeAddress, String>,
    events_tx: Sender<ReadEvent>,
    events: Receiver<ReadEvent>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    /// What `/healthz` was last told.
    was_up: Option<bool>,
    /// The id of the last connection made.
    next_link_id: u64,
    /// What was delivered of each topic, and the topics whose gap a read thread fills.
    continuity: Arc<Continuity>,
    /// Each interested shard's current holding of each wanted topic (its generation, which a
    /// confirmation carries back).
    holdings: HashMap<String, Vec<(usize, u64)>>,
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
        let (events_tx, events) = crossbeam_channel::unbounded();
        let mut control = Control {
            sub: self,
            interest: InterestTable::default(),
            topology: None,
            stale: true,
            last_read: None,
            placed: HashMap::new(),
            links: HashMap::new(),
            unreachable: HashMap::new(),
            events_tx,
            events,
            backoff: Backoff::default(),
            retry_at: None,
            was_up: None,
            next_link_id: 0,
            continuity: Arc::default(),
            holdings: HashMap::new(),
        };
        control.run();
    }
}

impl Control {
    fn run(&mut self) {
        loop {
            let retry_due = self.retry_at.is_none_or(|at| Instant::now() >= at);
            if (self.stale || self.sub.connector.master_switched()) && retry_due {
                self.retry_at = None;
                if !self.read_topology() {
                    return;
                }
            }
            self.publish_health();
            let wait = self.next_wake().saturating_duration_since(Instant::now());
            let mut touched = Vec::new();
            crossbeam_channel::select! {
                recv(self.sub.changes) -> change => {
                    let Ok(change) = change else { return };
                    let mut next = Some(change);
                    while let Some(change) = next {
                        let topic = change.topic.clone();
                        if self.apply_change(change).is_some() {
                            touched.push(topic);
                        }
                        next = self.sub.changes.try_recv().ok();
                    }
                }
                recv(self.events) -> event => {
                    let Ok(event) = event else { return };
                    let mut next = Some(event);
                    while let Some(event) = next {
                        self.take_event(event, &mut touched);
                        next = self.events.try_recv().ok();
                    }
                }
                recv(self.sub.master_switched) -> _ => {}
                default(wait) => {}
            }
            if self.sub.connector.master_switched() {
                // Under Sentinel: the old master keeps its clients a while; leave it now.
                info!("the sentinels switched the master: subscribing on the new one");
                self.drop_all_links();
                self.stale = true;
                self.retry_at = None;
                continue;
            }
            if self.retry_at.is_some_and(|at| Instant::now() >= at) {
                self.stale = true;
                continue;
            }
            if !self.stale {
                self.place(touched);
            }
            self.probe_links();
        }
    }

    /// Reads the slot map (or asks the sentinels for the master) and places every wanted
    /// topic where it belongs now. False when the shards are gone.
    fn read_topology(&mut self) -> bool {
        // Whatever made the map stale (a lost connection) shows on /healthz and to the joins
        // now, not after the pause below.
        self.publish_health();
        if let Some(at) = self.last_read {
            let pause = REREAD_PAUSE.saturating_sub(at.elapsed());
            if !pause.is_zero() {
                // Keep the table current while waiting, so that it is right when placed.
                let until = Instant::now() + pause;
                while let Some(left) = until.checked_duration_since(Instant::now()) {
                    match self.sub.changes.recv_timeout(left) {
                        Ok(change) => {
                            self.apply_change(change);
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => break,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return false,
                    }
                }
            }
        }
        self.last_read = Some(Instant::now());
        match self.sub.connector.topology() {
            Ok(topology) => {
                let switched_single = match (&self.topology, topology.is_cluster()) {
                    (Some(old), false) => old.masters() != topology.masters(),
                    _ => false,
                };
                if switched_single {
                    self.drop_all_links();
                }
                // A master that left the slot map (failed over, removed) is no longer wanted.
                self.unreachable
                    .retain(|node, _| topology.masters().contains(node));
                self.links
                    .retain(|node, _| topology.masters().contains(node));
                let gone: Vec<NodeAddress> = self
                    .placed
                    .values()
                    .filter(|node| !topology.masters().contains(node))
                    .cloned()
                    .collect();
                for node in gone {
                    self.unplace_node(&node);
                }
                self.topology = Some(topology);
                self.stale = false;
                let all: Vec<String> = self
                    .interest
                    .topics()
                    .map(str::to_owned)
                    .chain(self.placed.keys().cloned())
                    .collect();
                self.connect_every_master();
                self.place(all);
            }
            Err(err) if err.kind() == redis::ErrorKind::InvalidClientConfig => {
                // TLS or a unix socket: the function's messages cannot be received by this
                // build; the classic path works, so this part does not hold /healthz down.
                warn!(%err, "messages published with the function will not be received");
                self.sub.status.set_sharded_up(true);
                // Nothing to wait for: joins are confirmed at once.
                while let Ok(change) = self.sub.changes.recv() {
                    if change.interested {
                        let (topic, generation) = (change.topic, change.generation);
                        self.sub.shards.send(
                            change.shard,
                            ShardMessage::TopicSubscribed { topic, generation },
                        );
                    }
                }
                return false;
            }
            Err(err) => {
                debug!(%err, "redis sharded subscriber cannot read the topology yet");
                self.schedule_retry();
            }
        }
        true
    }

    /// Applies one interest change; `Some` when the process gained (`true`) or lost the topic.
    fn apply_change(&mut self, change: InterestChange) -> Option<bool> {
        // Every read thread learns the route before Redis can send for it.
        for link in self.links.values() {
            let _ = link.routes.send(change.clone());
        }
        let holdings = self.holdings.entry(change.topic.clone()).or_default();
        holdings.retain(|&(shard, _)| shard != change.shard);
        if change.interested {
            holdings.push((change.shard, change.generation));
        } else if holdings.is_empty() {
            self.holdings.remove(&change.topic);
        }
        let told = self.interest.apply_and_tell(change.clone());
        if told.is_some() {
            // Wanted anew or no longer: nothing of the topic's past is filled.
            self.continuity.forget(&change.topic);
        }
        self.confirm_if_subscribed(&change);
        told
    }

    /// `topic`'s subscription is gone from where it was placed: if it is still wanted, the
    /// read thread that receives its next confirmation fills the gap (`continuity.rs`).
    fn lost_placement(&self, topic: &str) {
        if self.interest.shards_for(topic) != 0 {
            self.continuity.lost_while_wanted(topic);
        }
    }

    /// Forgets every topic placed on `node` (its connection is gone).
    fn unplace_node(&mut self, node: &NodeAddress) {
        let lost: Vec<String> = self
            .placed
            .iter()
            .filter(|(_, at)| *at == node)
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in lost {
            self.placed.remove(&topic);
            self.lost_placement(&topic);
        }
    }

    /// A shard gained a topic: if Redis already confirmed it where it is placed, the shard's
    /// joins need not wait (otherwise the coming confirmation reaches it with the others). This
    /// covers a topic another shard had, and a topic this process lost and regained within one
    /// batch of changes (it stays placed: no new `SSUBSCRIBE`, so no new answer, would come).
    fn confirm_if_subscribed(&self, change: &InterestChange) {
        if !change.interested {
            return;
        }
        let confirmed = self
            .placed
            .get(&change.topic)
            .and_then(|node| self.links.get(node))
            .is_some_and(|link| link.confirmations.is_confirmed(&change.topic));
        if confirmed {
            let (topic, generation) = (change.topic.clone(), change.generation);
            self.sub.shards.send(
                change.shard,
                ShardMessage::TopicSubscribed { topic, generation },
            );
        }
    }

    fn schedule_retry(&mut self) {
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff.next_wait());
        }
    }

    fn take_event(&mut self, event: ReadEvent, touched: &mut Vec<String>) {
        if let ReadEvent::Subscription {
            topic, subscribed, ..
        } = &event
        {
            debug!(%topic, subscribed, "redis answered a sharded subscription");
        }
        let (ReadEvent::Subscription { node, link, .. }
        | ReadEvent::Redirected { node, link }
        | ReadEvent::Ended { node, link, .. }) = &event;
        if self.links.get(node).map(|current| current.id) != Some(*link) {
            // From a connection already replaced: what it says is about the past.
            return;
        }
        match event {
            ReadEvent::Subscription {
                node,
                topic,
                subscribed: false,
                ..
            } => {
                let ours = self.links.get_mut(&node).is_some_and(|link| {
                    link.confirmations.lost(&topic);
                    link.leaving.remove(&topic)
                });
                if !ours && self.placed.get(&topic) == Some(&node) {
                    // Redis dropped it (its slot moved, the node was reset): read the slot
                    // map and subscribe where it is now.
                    self.placed.remove(&topic);
                    self.lost_placement(&topic);
                    self.stale = true;
                    touched.push(topic);
                }
            }
            ReadEvent::Subscription {
                node,
                topic,
                subscribed: true,
                ..
            } => {
                let mask = self.interest.shards_for(&topic);
                let holdings = self.holdings.get(&topic);
                let Some(link) = self.links.get_mut(&node) else {
                    return;
                };
                // Only the answer to the last SSUBSCRIBE of a topic still placed here counts.
                if link.confirmations.answered(&topic)
                    && mask != 0
                    && !link.leaving.contains(&topic)
                    && self.placed.get(&topic) == Some(&node)
                {
                    link.confirmations.confirm(&topic);
                    for &(shard, generation) in holdings.into_iter().flatten() {
                        let topic = topic.clone();
                        self.sub
                            .shards
                            .send(shard, ShardMessage::TopicSubscribed { topic, generation });
                    }
                }
            }
            ReadEvent::Redirected { node, .. } => {
                // Whatever we believe placed on that node may not be, and the refused commands
                // will never be confirmed: a fresh connection, and everything placed anew.
                self.lose(
                    &node,
                    "a subscription was redirected (MOVED, ASK or CLUSTERDOWN)".into(),
                );
            }
            ReadEvent::Ended { node, reason, .. } => {
                if self.links.remove(&node).is_some() {
                    warn!(master = %node, %reason, "redis sharded subscriber connection lost");
                    self.unplace_node(&node);
                    self.stale = true;
                }
            }
        }
    }

    /// Subscribes or unsubscribes `topics` so that each wanted one is subscribed on its
    /// slot's master and nowhere else.
    fn place(&mut self, topics: Vec<String>) {
        let Some(topology) = self.topology.clone() else {
            return;
        };
        let mut subscribe: HashMap<NodeAddress, Vec<String>> = HashMap::new();
        let mut unsubscribe: HashMap<NodeAddress, Vec<String>> = HashMap::new();
        let mut seen = HashSet::new();
        for topic in topics {
            if !seen.insert(topic.clone()) {
                continue;
            }
            let wanted = self.interest.shards_for(&topic) != 0;
            let owner = topology.master_of_key(sharded_channel(&topic).as_bytes());
            let current = self.placed.get(&topic);
            if wanted && current.is_some() && current == owner {
                continue;
            }
            if let Some(current) = self.placed.remove(&topic) {
                if wanted {
                    // Moving to another master: the gap between the two is filled there.
                    self.continuity.lost_while_wanted(&topic);
                }
                unsubscribe.entry(current).or_default().push(topic.clone());
            }
            match owner {
                Some(owner) if wanted => {
                    subscribe.entry(owner.clone()).or_default().push(topic);
                }
                None if wanted => {
                    // No master owns the slot now (a failover in progress): look again.
                    self.retry_at.get_or_insert(Instant::now() + REREAD_PAUSE);
                }
                _ => {}
            }
        }
        for (node, topics) in unsubscribe {
            let Some(link) = self.links.get_mut(&node) else {
                continue;
            };
            link.leaving.extend(topics.iter().cloned());
            for topic in &topics {
                link.confirmations.lost(topic);
            }
            let by_slot = topology.is_cluster();
            if let Err(err) = send_batched(&mut link.socket, "SUNSUBSCRIBE", &topics, by_slot) {
                self.lose(&node, format!("cannot write to redis: {err}"));
            }
        }
        for (node, topics) in subscribe {
            if !self.links.contains_key(&node) {
                if let Err(err) = self.connect(&topology, &node) {
                    self.unreachable_now(&topology, &node, &err);
                    continue;
                }
            }
            self.unreachable.remove(&node);
            let link = self.links.get_mut(&node).expect("connected just above");
            // A topic asked to leave and wanted again stays in `leaving`: the `sunsubscribe`
            // still to come is the answer to ours (Redis answers in order, so it comes before
            // this `ssubscribe`'s answer, which then confirms the topic).
            link.confirmations.asked(&topics);
            match send_batched(
                &mut link.socket,
                "SSUBSCRIBE",
                &topics,
                topology.is_cluster(),
            ) {
                Ok(()) => {
                    for topic in topics {
                        self.placed.insert(topic, node.clone());
                    }
                }
                Err(err) => self.lose(&node, format!("cannot write to redis: {err}")),
            }
        }
        if self.unreachable.is_empty() && self.retry_at.is_none() {
            self.backoff.reset();
        }
    }

    /// Holds a connection to every master, wanted topics or not: `/healthz` and the joins
    /// (which are answered at once while this part is down) then see a master that cannot be
    /// reached before a topic needs it, as with the reader's and the publisher's connections.
    fn connect_every_master(&mut self) {
        let Some(topology) = self.topology.clone() else {
            return;
        };
        for master in topology.masters() {
            if self.links.contains_key(master) {
                continue;
            }
            match self.connect(&topology, master) {
                Ok(()) => {
                    self.unreachable.remove(master);
                }
                Err(err) => self.unreachable_now(&topology, master, &err),
            }
        }
    }

    /// A connection attempt to `node` failed: `/healthz` says so, and the slot map is read
    /// again soon.
    fn unreachable_now(
        &mut self,
        topology: &ClusterTopology,
        node: &NodeAddress,
        err: &redis::RedisError,
    ) {
        debug!(master = %node, %err, "redis sharded subscriber cannot connect");
        self.unreachable.insert(node.clone(), err.to_string());
        self.stale = true;
        if topology.is_cluster() {
            // The rest of the cluster answers: a failover is under way, and its end is seen
            // within one short pause, not a growing backoff.
            self.retry_at.get_or_insert(Instant::now() + REREAD_PAUSE);
        } else {
            self.schedule_retry();
        }
    }

    fn lose(&mut self, node: &NodeAddress, reason: String) {
        warn!(master = %node, %reason, "redis sharded subscriber connection lost");
        self.links.remove(node);
        self.unplace_node(node);
        self.stale = true;
    }

    fn drop_all_links(&mut self) {
        self.links.clear();
        for (topic, _) in std::mem::take(&mut self.placed) {
            self.lost_placement(&topic);
        }
    }

    /// When the loop must wake up even if nothing comes: the next probe or retry.
    fn next_wake(&self) -> Instant {
        let mut at = Instant::now() + PROBE_AFTER;
        if let Some(retry) = self.retry_at {
            at = at.min(retry);
        }
        for link in self.links.values() {
            let due = match link.probe_sent {
                Some(sent) => sent + PROBE_DEADLINE,
                None => link.seen.1 + PROBE_AFTER,
            };
            at = at.min(due);
        }
        at
    }

    /// Liveness: PING a quiet connection; no answer within the deadline ends it.
    fn probe_links(&mut self) {
        let mut dead = Vec::new();
        for (node, link) in self.links.iter_mut() {
            let heard = link.heard.load(Ordering::Acquire);
            if heard != link.seen.0 {
                link.seen = (heard, Instant::now());
                link.probe_sent = None;
            }
            if let Some(at) = link.probe_sent {
                if at.elapsed() >= PROBE_DEADLINE {
                    dead.push((node.clone(), "liveness probe failed".to_owned()));
                }
            } else if link.seen.1.elapsed() >= PROBE_AFTER {
                match link
                    .socket
                    .write_all(&redis::cmd("PING").get_packed_command())
                {
                    Ok(()) => link.probe_sent = Some(Instant::now()),
                    Err(err) => dead.push((node.clone(), format!("cannot write to redis: {err}"))),
                }
            }
        }
        for (node, reason) in dead {
            self.lose(&node, reason);
        }
    }

    /// Publishes this part's state for `/healthz` and tells the shards when it changes (their
    /// admin members follow the Redis state, like the reader's and the publisher's).
    fn publish_health(&mut self) {
        let waiting = self
            .interest
            .topics()
            .filter(|topic| !self.placed.contains_key(*topic))
            .count();
        let every_master_linked = self
            .topology
            .as_ref()
            .is_some_and(|t| t.masters().iter().all(|m| self.links.contains_key(m)));
        let up = every_master_linked && waiting == 0 && self.unreachable.is_empty();
        let mut sentences: Vec<String> = self
            .unreachable
            .iter()
            .map(|(node, err)| format!("sharded subscriber: master {node} unreachable ({err})"))
            .collect();
        if waiting > 0 {
            sentences.push(format!(
                "sharded subscriber: {waiting} topic(s) waiting for a subscription"
            ));
        }
        sentences.sort();
        self.sub.status.set_sharded_degraded(sentences);
        if self.was_up != Some(up) {
            self.was_up = Some(up);
            self.sub.status.set_sharded_up(up);
            self.sub.shards.send_all(|| ShardMessage::RedisStateChanged);
        }
    }

    /// A plain TCP connection to `node`, authenticated as the deployment says, with its read
    /// thread started.
    fn connect(
        &mut self,
        topology: &ClusterTopology,
        node: &NodeAddress,
    ) -> redis::RedisResult<()> {
        let client = topology.client_for(node)?;
        let socket = connect_tcp(&node.host, node.port, client.get_connection_info())?;
        let read_half = socket.try_clone()?;
        let heard = Arc::new(AtomicU64::new(0));
        self.next_link_id += 1;
        let id = self.next_link_id;
        let (routes_tx, routes_rx) = crossbeam_channel::unbounded();
        let reader = ShardedReader {
            node: node.clone(),
            routes: self.interest.clone(),
            route_changes: routes_rx,
            shards: self.sub.shards.clone(),
            stats: Arc::clone(&self.sub.stats),
            events: self.events_tx.clone(),
            link: id,
            heard: Arc::clone(&heard),
            continuity: Arc::clone(&self.continuity),
            history_client: client.clone(),
            history_conn: None,
            floors_to_read: Vec::new(),
            floors_waiting_since: None,
            fills_due: Vec::new(),
        };
        std::thread::Builder::new()
            .name("redis-sharded-read".into())
            .spawn(move || reader.run(read_half))?;
        info!(master = %node, "redis sharded subscriber connected");
        self.links.insert(
            node.clone(),
            Link {
                socket,
                routes: routes_tx,
                id,
                heard,
                seen: (0, Instant::now()),
                probe_sent: None,
                leaving: HashSet::new(),
                confirmations: Confirmations::default(),
            },
        );
        Ok(())
    }
}

fn connect_tcp(
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

/// Which topics one connection's master confirmed, and how many `SSUBSCRIBE`s of each are still
/// unanswered (a topic lost and gained again quickly has two in flight: only the answer to the
/// last one confirms it).
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

/// True for an `ssubscribe` reply (`[ssubscribe, channel, count]`): a confirmation, not a
/// message, so the gaps waiting to be filled may wait for the next one too.
fn is_ssubscribe_reply(value: &redis::Value) -> bool {
    matches!(value, redis::Value::Array(parts)
        if matches!(parts.first(), Some(redis::Value::BulkString(kind)) if kind == b"ssubscribe"))
}

/// Sends `command` for `topics`' sharded channels, at most [`BATCH`] channels a command. On a
/// cluster one command names channels of one slot only (Redis refuses the others with
/// `CROSSSLOT`), so the topics are grouped by slot first.
fn send_batched(
    socket: &mut TcpStream,
    command: &str,
    topics: &[String],
    one_slot_per_command: bool,
) -> std::io::Result<()> {
    let mut channels: Vec<(u16, String)> = topics
        .iter()
        .map(|topic| {
            let channel = sharded_channel(topic);
            let slot = if one_slot_per_command {
                slot_of(channel.as_bytes())
            } else {
                0
            };
            (slot, channel)
        })
        .collect();
    channels.sort_unstable();
    let mut bytes = Vec::new();
    for same_slot in channels.chunk_by(|a, b| a.0 == b.0) {
        for chunk in same_slot.chunks(BATCH) {
            let mut cmd = redis::cmd(command);
            for (_, channel) in chunk {
                cmd.arg(channel);
            }
            bytes.extend_from_slice(&cmd.get_packed_command());
        }
    }
    if bytes.is_empty() {
        return Ok(());
    }
    socket.write_all(&bytes)
}

/// The read half of one master's connection: parses, routes and delivers.
struct ShardedReader {
    node: NodeAddress,
    routes: InterestTable,
    route_changes: Receiver<InterestChange>,
    shards: Shards,
    stats: Arc<ReaderStats>,
    events: Sender<ReadEvent>,
    /// Which connection this is.
    link: u64,
    /// How many replies were read.
    heard: Arc<AtomicU64>,
    /// What was delivered of each topic, and which topics wait for a fill.
    continuity: Arc<Continuity>,
    /// The master, for reading a gap from a topic's history (a connection of its own, opened
    /// at the first fill).
    history_client: redis::Client,
    history_conn: Option<redis::Connection>,
    /// Topics first subscribed on this connection whose floor is still to be read
    /// (`continuity.rs`), and since when the oldest of them waits: read together
    /// ([`FLOOR_BATCH`], [`FLOOR_DELAY`]) when the connection has nothing else to read.
    floors_to_read: Vec<String>,
    floors_waiting_since: Option<Instant>,
    /// Topics confirmed again on this connection whose gap is to be filled: read together
    /// before anything else this connection sends is taken (or when it has nothing else).
    fills_due: Vec<(String, FillFrom)>,
}

impl ShardedReader {
    fn run(mut self, socket: TcpStream) {
        // Opened now rather than at the first fill, so that a process holds the same
        // connections from its start (retried at the next read if this fails).
        match self.history_conn() {
            Ok(conn) => self.history_conn = Some(conn),
            Err(err) => debug!(master = %self.node, %err, "history reader cannot connect yet"),
        }
        let mut socket = BufReader::with_capacity(64 * 1024, socket);
        let mut parser = redis::Parser::new();
        loop {
            let value = match parser.parse_value(&mut socket) {
                Ok(value) => value,
                Err(err) => {
                    let _ = self.events.send(ReadEvent::Ended {
                        node: self.node.clone(),
                        link: self.link,
                        reason: err.to_string(),
                    });
                    return;
                }
            };
            self.heard.fetch_add(1, Ordering::Release);
            self.routes.apply_pending(&self.route_changes);
            if !self.fills_due.is_empty() && !is_ssubscribe_reply(&value) {
                // Whatever comes next may be a live message of a topic waiting for its gap.
                self.fill_due_gaps();
            }
            self.take(value);
            if !self.fills_due.is_empty() && socket.buffer().is_empty() {
                self.fill_due_gaps();
            }
            let floors_due = self.floors_to_read.len() >= FLOOR_BATCH
                || self
                    .floors_waiting_since
                    .is_some_and(|since| since.elapsed() >= FLOOR_DELAY);
            if floors_due && socket.buffer().is_empty() {
                self.floors_waiting_since = None;
                self.read_floors();
            }
        }
    }

    fn take(&mut self, value: redis::Value) {
        let redis::Value::Array(parts) = value else {
            // PONG, or an error reply to a command: nothing to route.
            if let redis::Value::ServerError(err) = value {
                if matches!(err.code(), "MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN") {
                    let node = self.node.clone();
                    let link = self.link;
                    let _ = self.events.send(ReadEvent::Redirected { node, link });
                } else {
                    warn!(
                        code = err.code(),
                        "redis refused a sharded subscription command"
                    );
                }
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
                if kind.as_slice() == b"ssubscribe" {
                    // Before anything else is read from this connection: the gap goes out
                    // before the live messages that follow the confirmation.
                    if let Some(from) = self.continuity.take_fill(topic) {
                        self.fills_due.push((topic.to_owned(), from));
                    } else if self.continuity.needs_floor(topic) {
                        self.floors_to_read.push(topic.to_owned());
                        self.floors_waiting_since.get_or_insert_with(Instant::now);
                    }
                }
                let _ = self.events.send(ReadEvent::Subscription {
                    node: self.node.clone(),
                    link: self.link,
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
        if let Some(position) = position {
            if !self.continuity.admit(topic, position) {
                // Already delivered by a gap fill.
                return;
            }
        }
        let broadcast = Arc::new(Broadcast::positioned(
            topic,
            envelope.event,
            position,
            envelope.payload,
        ));
        self.hand_out(mask, broadcast, received_at);
    }

    /// The connection for history reads on this master (gap fills and floors), named
    /// [`HISTORY_CLIENT_NAME`]; taken out while in use.
    fn history_conn(&mut self) -> redis::RedisResult<redis::Connection> {
        match self.history_conn.take() {
            Some(conn) => Ok(conn),
            None => {
                let mut conn = self
                    .history_client
                    .get_connection_with_timeout(CONNECT_TIMEOUT)?;
                conn.set_read_timeout(Some(PROBE_DEADLINE))?;
                conn.set_write_timeout(Some(PROBE_DEADLINE))?;
                redis::cmd("CLIENT")
                    .arg("SETNAME")
                    .arg(HISTORY_CLIENT_NAME)
                    .query::<()>(&mut conn)?;
                Ok(conn)
            }
        }
    }

    /// Runs `read` on the history connection; the connection is kept for the next read unless
    /// it failed (a fresh one is opened then).
    fn read_history<T>(
        &mut self,
        read: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let mut conn = self.history_conn()?;
        let value = read(&mut conn)?;
        self.history_conn = Some(conn);
        Ok(value)
    }

    /// Reads what the history of each topic in `fills_due` holds after its start, on this
    /// master and in one round trip, and delivers it, in order, skipping what was delivered
    /// meanwhile (from another master during a move).
    fn fill_due_gaps(&mut self) {
        let fills: Vec<(String, FillFrom)> = std::mem::take(&mut self.fills_due)
            .into_iter()
            .filter(|(topic, _)| self.routes.shards_for(topic) != 0)
            .collect();
        if fills.is_empty() {
            return;
        }
        let read = self.read_history(|conn| continuity::read_gaps(conn, &fills));
        let gaps = match read {
            Ok(gaps) => gaps,
            Err(err) => {
                let lost = fills.len() as u64;
                self.stats.gap_lost.fetch_add(lost, Ordering::Relaxed);
                warn!(topics = lost, %err, "redis sharded subscriptions back, but their gaps could not be read");
                return;
            }
        };
        for ((topic, _), gap) in fills.iter().zip(gaps) {
            let entries = match gap {
                Gap::Entries(entries) => entries,
                Gap::Lost(newer) => {
                    self.stats.gap_lost.fetch_add(1, Ordering::Relaxed);
                    warn!(%topic, newer = newer.len(), "redis sharded subscription back, but the topic's history was lost meanwhile: a gap may remain (the newer history's messages are delivered)");
                    newer
                }
            };
            self.deliver_filled(topic, entries);
        }
    }

    /// Delivers a topic's entries read back from its history, skipping what was delivered.
    fn deliver_filled(&self, topic: &str, entries: Vec<HistoryEntry>) {
        let mask = self.routes.shards_for(topic);
        let mut filled = 0;
        for HistoryEntry {
            position,
            event,
            payload,
        } in entries
        {
            if !self.continuity.admit(topic, position) {
                continue;
            }
            let broadcast = Arc::new(Broadcast::positioned(
                topic,
                &event,
                Some(position),
                &payload,
            ));
            self.hand_out(mask, broadcast, Instant::now());
            filled += 1;
        }
        self.stats.gap_filled.fetch_add(filled, Ordering::Relaxed);
        if filled > 0 {
            info!(%topic, filled, "redis sharded subscription back: gap filled from history");
        }
    }

    /// Reads where the history of each topic first subscribed on this connection stands (one
    /// round trip for all of them), for a fill after a later loss of a topic nothing was
    /// delivered of yet. A failed read leaves them without a floor (a later gap of theirs is
    /// then not filled unless a message was delivered first).
    fn read_floors(&mut self) {
        let topics: Vec<String> = std::mem::take(&mut self.floors_to_read)
            .into_iter()
            .filter(|topic| {
                self.routes.shards_for(topic) != 0 && self.continuity.needs_floor(topic)
            })
            .collect();
        if topics.is_empty() {
            return;
        }
        let read = self.read_history(|conn| continuity::read_floors(conn, &topics));
        match read {
            Ok(floors) => {
                for (topic, floor) in topics.iter().zip(floors) {
                    self.continuity.set_floor(topic, floor);
                }
            }
            Err(err) => {
                debug!(%err, topics = topics.len(), "could not read where new topics' histories stand");
            }
        }
    }

    /// Hands `broadcast` to the shards of `mask`.
    fn hand_out(&self, mask: u64, broadcast: Arc<Broadcast>, received_at: Instant) {
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
