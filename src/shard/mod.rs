//! The shards: one glommio executor per core, each with its own `SO_REUSEPORT` listener, its
//! own connections and its own topic table (docs/architecture.md).
//!
//! What it owns: starting the executors ([`start`]) and one shard's life ([`run_shard`]:
//! listen, accept, and on shutdown close every socket with 1012); the connection, session and
//! topic-table modules below. A connection never leaves the shard that accepted it, and nothing
//! here takes a lock on a per-message path.
//!
//! What it must never do: talk to Redis (it hands commands to the broker's queue and gets
//! answers through its inbox), or decide process-wide matters (start-up order, signals,
//! shutdown order: `crate::server`).

pub(crate) mod accept;
pub(crate) mod admin;
mod admin_tail;
pub(crate) mod connection;
pub(crate) mod context;
mod dispatch;
mod fan_out;
mod holds;
pub mod outbound_queue;
pub(crate) mod presence_delivery;
pub(crate) mod recovery;
pub(crate) mod runtime_check;
pub(crate) mod session;
mod sweeper;
pub(crate) mod topic_rates;
pub(crate) mod topic_table;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use tracing::{info, warn};

use crate::protocol::close_code;
use context::{ShardContext, Shared};

/// How long shutdown waits for sockets to close before the process exits anyway.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(4);
/// How long shutdown waits for the answers to pushes already handed to Redis.
pub const ACKS_AT_SHUTDOWN: Duration = Duration::from_millis(1500);

/// Starts one executor per shard, each listening on the configured address, and returns once
/// every one listens (or the first that cannot, with why).
pub fn start(shared: &Arc<Shared>) -> anyhow::Result<Vec<ExecutorJoinHandle<()>>> {
    let shards = shared.shards.count();
    let addr = shared.config.listen_addr();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut executors = Vec::with_capacity(shards);
    for id in 0..shards {
        let shared = Arc::clone(shared);
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
    Ok(executors)
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
    glommio::spawn_local(dispatch::inbox_loop(Rc::clone(&ctx), stop_tx)).detach();
    glommio::spawn_local(sweeper::idle_sweeper(Rc::clone(&ctx))).detach();
    if let Some(period) = ctx.shared.config.admin_stats_interval() {
        glommio::spawn_local(topic_rates::sampler(Rc::clone(&ctx), period)).detach();
        if id == 0 {
            ctx.listen_for_stats_requests();
        }
    }

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
