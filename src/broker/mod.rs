//! The Redis core: the only part of the server that talks to Redis.
//!
//! Two threads, outside the shards' executors so that Redis latency never stalls a shard:
//! the [`reader::RedisReader`] (`PSUBSCRIBE to:*`, decode once, hand to interested shards) and
//! the [`publisher::RedisPublisher`] (pipelined upstream `PUBLISH`). Both reconnect with
//! backoff and publish their state in [`status::RedisStatus`]. They share the process's
//! presence copy ([`crate::presence::replica`]): the publisher seeds it (and gives it its
//! timed care), the reader keeps it current from the diffs, and whichever brings a join's
//! version serves its state. The publisher also keeps this process's presence liveness
//! ([`liveness`]).

pub(crate) mod admin_queries;
pub(crate) mod backoff;
pub mod cluster_topology;
mod commands;
pub(crate) mod continuity;
pub(crate) mod deployment;
pub(crate) mod function;
pub(crate) mod interest;
pub(crate) mod liveness;
pub(crate) mod master_links;
pub mod naming;
mod presence_store;
pub(crate) mod publisher;
pub(crate) mod reader;
pub(crate) mod script_set;
pub(crate) mod sentinel;
pub(crate) mod sharded_subscriber;
pub(crate) mod status;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::bounded_queue::{self, QueueSender};
use crate::config::RedisDeployment;
use crate::inbox::{InterestChange, Shards};
use crate::presence::replica::PresenceReplica;
pub(crate) use commands::{PublishRequest, UpstreamCommand};
use deployment::{Connector, DeploymentError};
use publisher::RedisPublisher;
use reader::{ReaderStats, RedisReader};
use sentinel::MasterSwitches;
use status::RedisStatus;

/// What the shards hold to reach the Redis core.
#[derive(Clone)]
pub struct BrokerHandle {
    /// Connection state, read lock-free.
    pub status: Arc<RedisStatus>,
    /// Reader counters.
    pub reader_stats: Arc<ReaderStats>,
    /// The bounded upstream queue (pushes and presence changes).
    pub publish: QueueSender<UpstreamCommand>,
    /// Interest changes for the reader's and the sharded subscriber's routing tables.
    pub interest: InterestSenders,
}

/// Where a shard's interest changes go: the reader (classic `to:*` routing) and the sharded
/// subscriber (`SSUBSCRIBE` by interest), each with its own table.
#[derive(Clone)]
pub struct InterestSenders(Vec<Sender<InterestChange>>);

impl InterestSenders {
    /// Sends `change` to every table; false if one of them is gone (only at shutdown).
    pub fn send(&self, change: InterestChange) -> bool {
        // Every table gets it, even when an earlier one is gone (no short circuit).
        let delivered = self.0.iter().filter(|tx| tx.send(change.clone()).is_ok());
        delivered.count() == self.0.len()
    }
}

/// The running Redis core threads.
pub struct BrokerCore {
    publisher: JoinHandle<()>,
    stop_publisher: Arc<AtomicBool>,
    wake_publisher: QueueSender<UpstreamCommand>,
}

impl BrokerCore {
    /// Publishes what is still queued, then stops the publisher. Call once the shards have
    /// stopped taking pushes. Returns false if the publisher thread panicked.
    pub fn flush_and_stop(self) -> bool {
        self.stop_publisher.store(true, Ordering::Release);
        // The queue may be full (then the publisher is busy and sees the flag on its own).
        let _ = self.wake_publisher.try_send(UpstreamCommand::Wake);
        self.publisher.join().is_ok()
    }
}

/// Starts the reader and the publisher threads.
///
/// At shutdown, [`BrokerCore::flush_and_stop`] publishes what is queued and stops the publisher;
/// the reader thread ends with the process.
pub fn start(
    deployment: &RedisDeployment,
    shards: Shards,
    publish_capacity: usize,
    node: String,
    presence_ttl: std::time::Duration,
    history: function::HistorySettings,
) -> Result<(BrokerHandle, BrokerCore), DeploymentError> {
    // One connector each: under Sentinel each thread asks the sentinels on its own reconnect.
    let switches = Arc::new(MasterSwitches::default());
    let reader_connector = Connector::new(deployment, Arc::clone(&switches))?;
    let sharded_connector = Connector::new(deployment, Arc::clone(&switches))?;
    let publisher_connector = Connector::new(deployment, Arc::clone(&switches))?;
    let status = Arc::new(RedisStatus::default());
    let reader_stats = Arc::new(ReaderStats::default());
    // Bounded in messages; its memory grows with use (an idle queue holds none).
    let (publish_tx, publish_rx) = bounded_queue::bounded(publish_capacity);
    let wake = publish_tx.clone();
    let (interest_tx, interest_rx): (Sender<InterestChange>, Receiver<InterestChange>) =
        crossbeam_channel::unbounded();
    let (sharded_tx, sharded_rx) = crossbeam_channel::unbounded();
    let replica = Arc::new(std::sync::Mutex::new(PresenceReplica::default()));

    // No switch ever comes in single mode (a dropped sender would wake a select forever).
    let mut switched_rx = crossbeam_channel::never();
    if let RedisDeployment::Sentinel { sentinels, master } = deployment {
        let (switched_tx, rx) = crossbeam_channel::bounded(1);
        switched_rx = rx;
        let wake = publish_tx.clone();
        // The master's credentials are the first sentinel's (docs/configuration.md).
        let credentials = sentinels
            .first()
            .map(|s| redis::IntoConnectionInfo::into_connection_info(s.as_str()))
            .transpose()?
            .map(|info| info.redis_settings().clone())
            .unwrap_or_default();
        let watch = (sentinels.clone(), master.clone(), credentials);
        sentinel::spawn_switch_watcher(watch.0, watch.1, watch.2, switches, move || {
            // The publisher and the sharded subscriber may sleep until their next tick: they
            // look at the switch now (the reader is woken by a note on the old master).
            let _ = wake.try_send(UpstreamCommand::Wake);
            let _ = switched_tx.try_send(());
        })
        .map_err(io_error)?;
    }
    sharded_subscriber::ShardedSubscriber {
        connector: sharded_connector,
        shards: shards.clone(),
        stats: Arc::clone(&reader_stats),
        status: Arc::clone(&status),
        changes: sharded_rx,
        master_switched: switched_rx,
    }
    .spawn()
    .map_err(io_error)?;
    let reader = RedisReader {
        connector: reader_connector,
        status: Arc::clone(&status),
        stats: Arc::clone(&reader_stats),
        shards: shards.clone(),
        interest_changes: interest_rx,
        publisher_wake: publish_tx.clone(),
        replica: Arc::clone(&replica),
    };
    std::thread::Builder::new()
        .name("redis-reader".into())
        .spawn(move || reader.run())
        .map_err(io_error)?;

    let stop_publisher = Arc::new(AtomicBool::new(false));
    let publisher = RedisPublisher {
        connector: publisher_connector,
        status: Arc::clone(&status),
        shards,
        queue: publish_rx,
        stop: Arc::clone(&stop_publisher),
        node,
        presence_ttl,
        failed_leaves: Default::default(),
        replica,
        dropped_since_trim: Default::default(),
        topics_to_register: Default::default(),
        registered_topics: Default::default(),
        history,
    };
    let publisher = std::thread::Builder::new()
        .name("redis-publisher".into())
        .spawn(move || publisher.run())
        .map_err(io_error)?;

    Ok((
        BrokerHandle {
            status,
            reader_stats,
            publish: publish_tx,
            interest: InterestSenders(vec![interest_tx, sharded_tx]),
        },
        BrokerCore {
            publisher,
            stop_publisher,
            wake_publisher: wake,
        },
    ))
}

fn io_error(err: std::io::Error) -> DeploymentError {
    DeploymentError::Address(redis::RedisError::from(err))
}
