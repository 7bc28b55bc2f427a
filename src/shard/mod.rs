//! The shards: one glommio executor per core, each with its own `SO_REUSEPORT` listener, its
//! own connections and its own topic table (ARCHITECTURE.md).
//!
//! [`serve`] is the whole server's life: check the runtime, start the Redis core, start the
//! shards, wait for SIGINT/SIGTERM, then shut down gracefully (sockets closed with 1012,
//! publishes in flight flushed, exit within 5 s). A connection never leaves the shard that
//! accepted it, and nothing here takes a lock on a per-message path.

pub mod accept;
pub mod admin;
pub mod connection;
pub mod context;
pub mod inbox;
pub mod outbound_queue;
pub mod presence_delivery;
pub mod runtime_check;
pub mod session;
pub mod stats;
pub mod topic_table;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

use crate::auth::TokenAuthority;
use crate::config::Config;
use crate::protocol::{close_code, Broadcast};
use crate::redis::interest::MAX_SHARDS;
use context::{ShardContext, Shared};
use inbox::{ShardInbox, ShardMessage};

/// How long shutdown waits for sockets to close before the process exits anyway.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(4);
/// How long shutdown waits for the answers to pushes already handed to Redis.
pub const ACKS_AT_SHUTDOWN: Duration = Duration::from_millis(1500);
/// Close code for a socket that sent nothing for `idle_timeout`: not 1000, so that phoenix.js
/// reconnects.
pub const IDLE_CLOSE_CODE: u16 = 4000;

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let shards = config.effective_shards().clamp(1, MAX_SHARDS);
    runtime_check::prepare(shards)?;
    let secret = config
        .jwt_secret
        .clone()
        .context("no jwt_secret: the caller must generate one before serve")?;
    let authority = TokenAuthority::new(secret.expose(), config.jwt_expiration_secs);

    let inboxes: Vec<Arc<ShardInbox>> = (0..shards)
        .map(|_| {
            Arc::new(ShardInbox::new(
                config.shard_inbox_capacity,
                config.shard_inbox_bytes,
            ))
        })
        .collect();
    let node = crate::presence::new_node_id();
    let (redis, core) = crate::redis::start(
        &config.redis_url,
        inboxes.clone(),
        config.publisher_queue_capacity,
        node.clone(),
        config.presence_ttl(),
    )
    .context("invalid redis_url")?;
    let system = crate::system::SystemChannel::start(config.datetime_interval(), inboxes.clone())
        .context("cannot start the system channel ticker")?;

    let shared = Arc::new(Shared {
        config,
        authority,
        redis,
        inboxes,
        node,
        stats: (0..shards).map(|_| stats::ShardStats::default()).collect(),
        system,
        metrics: crate::metrics::Metrics::new(shards),
    });
    let addr = shared.config.listen_addr();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut executors = Vec::with_capacity(shards);
    for id in 0..shards {
        let shared = Arc::clone(&shared);
        let ready = ready_tx.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(id % cores))
            .name(&format!("shard-{id}"))
            .io_memory(runtime_check::IO_MEMORY_PER_SHARD)
            .spawn(move || run_shard(id, shared, ready))
            .map_err(runtime_check::explain_executor_failure)?;
        executors.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => anyhow::bail!("cannot listen on {addr}: {err}"),
            Err(_) => anyhow::bail!(runtime_check::explain_executor_failure(
                "a shard stopped during start-up"
            )),
        }
    }
    info!(%addr, shards, "listening");
    if let Some(interval) = shared.config.admin_stats_interval() {
        admin::spawn_stats_ticker(Arc::clone(&shared), interval)
            .context("cannot start the admin stats ticker")?;
    }

    wait_for_termination_signal()?;
    info!("shutting down: closing sockets with 1012");
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_DEADLINE + Duration::from_millis(800));
        warn!("shutdown took too long; exiting");
        std::process::exit(0);
    });
    for inbox in &shared.inboxes {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !inbox.send(ShardMessage::Shutdown) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for executor in executors {
        if executor.join().is_err() {
            error!("a shard ended with an error during shutdown");
        }
    }
    // The shards take no more pushes: publish what is queued, then stop.
    drop(shared);
    if !core.flush_and_stop() {
        error!("the redis publisher ended with an error during shutdown");
    }
    info!("stopped");
    Ok(())
}

fn wait_for_termination_signal() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    if let Some(signal) = signals.forever().next() {
        info!(signal, "termination signal received");
    }
    Ok(())
}

/// One shard's life: listen, serve, and on shutdown close every socket with 1012.
async fn run_shard(
    id: usize,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let addr = shared.config.listen_addr();
    let listener = match glommio::net::TcpListener::bind(addr.as_str()) {
        Ok(listener) => {
            let _ = ready.send(Ok(()));
            listener
        }
        Err(err) => {
            let _ = ready.send(Err(err.to_string()));
            return;
        }
    };
    drop(ready);
    let ctx = Rc::new(ShardContext::new(id, shared));
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
    glommio::spawn_local(inbox_loop(Rc::clone(&ctx), stop_tx)).detach();
    glommio::spawn_local(idle_sweeper(Rc::clone(&ctx))).detach();

    futures_lite::future::or(accept_loop(Rc::clone(&ctx), &listener), async {
        let _ = stop_rx.await;
    })
    .await;
    drop(listener);

    // Pushes already handed to Redis get their answer before the sockets close (new pushes are
    // refused with "shutting down" from now on).
    let stopping_at = Instant::now();
    let acks_deadline = stopping_at + ACKS_AT_SHUTDOWN;
    while ctx.pushes_in_flight.get() > 0 && Instant::now() < acks_deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let conns: Vec<_> = ctx.conns.borrow().values().cloned().collect();
    for conn in &conns {
        conn.close(close_code::SERVICE_RESTART, "server restart");
    }
    drop(conns);
    let deadline = stopping_at + SHUTDOWN_DEADLINE - Duration::from_millis(500);
    while !ctx.conns.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    info!(shard = id, "shard stopped");
}

async fn accept_loop(ctx: Rc<ShardContext>, listener: &glommio::net::TcpListener) {
    let mut failures: u64 = 0;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(accept::serve(Rc::clone(&ctx), stream)).detach();
            }
            Err(err) => {
                // Typically EMFILE: out of descriptors. Keep going once some are freed.
                failures += 1;
                if failures.is_power_of_two() {
                    warn!(shard = ctx.id, %err, failures, "accept failed");
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Takes everything other threads send to this shard.
async fn inbox_loop(ctx: Rc<ShardContext>, stop: futures::channel::oneshot::Sender<()>) {
    let inbox = Arc::clone(&ctx.shared.inboxes[ctx.id]);
    let mut stop = Some(stop);
    loop {
        inbox.ready().await;
        let mut handled = 0u32;
        while let Some(message) = inbox.try_recv() {
            match message {
                ShardMessage::Broadcast(broadcast) => fan_out(&ctx, &broadcast, write_mode(&inbox)),
                ShardMessage::Downstream {
                    broadcast,
                    received_at,
                } => {
                    fan_out(&ctx, &broadcast, write_mode(&inbox));
                    ctx.metrics().downstream_queued(received_at);
                }
                ShardMessage::PushResult { ack, outcome } => {
                    ctx.metrics().push_outcome(outcome);
                    session::push_result(&ctx, ack, outcome)
                }
                ShardMessage::PresenceDiff { broadcast, version } => {
                    presence_delivery::take_diff(&ctx, broadcast, version)
                }
                ShardMessage::PresenceState { ticket, state } => {
                    presence_delivery::deliver_state(&ctx, ticket, state)
                }
                ShardMessage::AdminAnswer { ticket, answer } => admin::answer(&ctx, ticket, answer),
                ShardMessage::DisconnectClient { id } => admin::disconnect_client(&ctx, &id),
                ShardMessage::PresenceResync => presence_delivery::resync_all(&ctx),
                ShardMessage::RedisStateChanged => admin::announce_redis_state(&ctx),
                ShardMessage::Shutdown => {
                    ctx.shutting_down.set(true);
                    if let Some(stop) = stop.take() {
                        let _ = stop.send(());
                    }
                }
            }
            handled += 1;
            if handled.is_multiple_of(256) {
                glommio::yield_if_needed().await;
            }
        }
    }
}

/// The last message waiting is written through; earlier ones are queued, so that a backlog
/// reaches each socket in as few writes as possible.
fn write_mode(inbox: &ShardInbox) -> Write {
    if inbox.is_empty() {
        Write::Now
    } else {
        Write::Queued
    }
}

/// How [`fan_out`] hands frames to the connections.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// Straight to each socket that has nothing queued ([`Conn::send_now`]).
    Now,
    /// Through each connection's queue and writer task, which coalesces consecutive frames.
    Queued,
}

/// Sends one broadcast's pre-encoded frame to every local subscriber of its topic.
pub(crate) fn fan_out(ctx: &ShardContext, broadcast: &Broadcast, write: Write) {
    let topics = ctx.topics.borrow();
    let Some(subscribers) = topics.subscribers(broadcast.topic()) else {
        return;
    };
    for conn in subscribers.values() {
        if let Some(frame) = broadcast.frame_for(conn.vsn) {
            match write {
                Write::Now => conn.send_now(frame),
                Write::Queued => conn.send(frame.clone()),
            };
        }
    }
}

/// Bytes written since the last trim beyond which the heap is trimmed.
const TRIM_AFTER_BYTES: u64 = 64 * 1024 * 1024;

/// Gives the memory of a burst of writes back to the kernel ([`crate::heap`]). Runs on shard
/// 0's sweeper, only after that much traffic, so an idle or steady server never pays for it.
fn trim_heap_after_bursts(ctx: &ShardContext, bytes_at_last_trim: u64) -> u64 {
    let written = ctx.shared.total_stats().bytes_out;
    if written.saturating_sub(bytes_at_last_trim) < TRIM_AFTER_BYTES {
        return bytes_at_last_trim;
    }
    crate::heap::trim();
    written
}

/// Closes connections that have sent nothing (not even a heartbeat) for `idle_timeout`.
async fn idle_sweeper(ctx: Rc<ShardContext>) {
    let idle = ctx.shared.config.limits.idle_timeout();
    if idle.is_zero() {
        return;
    }
    let period = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut bytes_at_last_trim = 0u64;
    loop {
        glommio::timer::sleep(period).await;
        if ctx.id == 0 {
            bytes_at_last_trim = trim_heap_after_bursts(&ctx, bytes_at_last_trim);
        }
        let now = Instant::now();
        let idle_conns: Vec<_> = ctx
            .conns
            .borrow()
            .values()
            .filter(|conn| {
                now.duration_since(conn.last_seen()) > idle && !conn.out.borrow().is_closing()
            })
            .cloned()
            .collect();
        for conn in idle_conns {
            conn.close(IDLE_CLOSE_CODE, "idle timeout");
        }
    }
}
