//! The whole server's life, and the one place that wires its parts together: check the
//! runtime, make the shards' inboxes, start the Redis core (the broker), the `system` and
//! `admin` tickers and the shards, wait for SIGINT/SIGTERM, then shut down in order (sockets
//! closed with 1012, publishes in flight flushed, exit within 5 s).
//!
//! What it must never do: handle a connection or a Redis reply itself. Each part below is
//! started here and knows nothing of the others but the mailbox between them
//! ([`crate::inbox`]) and the handle it is given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::{error, info, warn};

use crate::auth::TokenAuthority;
use crate::config::Config;
use crate::inbox::{ShardMessage, Shards, MAX_SHARDS};
use crate::shard::context::Shared;
use crate::shard::{runtime_check, SHUTDOWN_DEADLINE};

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let shard_count = config.effective_shards().clamp(1, MAX_SHARDS);
    runtime_check::prepare(shard_count)?;
    let secret = config
        .jwt_secret
        .clone()
        .context("no jwt_secret: the caller must generate one before serve")?;
    let authority = TokenAuthority::new(secret.expose(), config.jwt_expiration_secs);

    let shards = Shards::new(
        shard_count,
        config.shard_inbox_capacity,
        config.shard_inbox_bytes,
    );
    let node = crate::presence::new_node_id();
    let (redis, core) = crate::broker::start(
        &config.redis_deployment(),
        shards.clone(),
        config.publisher_queue_capacity,
        node.clone(),
        config.presence_ttl(),
        crate::broker::function::HistorySettings {
            size: config.history_size,
            ttl_secs: config.history_ttl_secs,
        },
    )
    .context("cannot use the configured Redis deployment")?;
    let system = crate::system::SystemChannel::start(config.datetime_interval(), shards.clone())
        .context("cannot start the system channel ticker")?;

    let shared = Arc::new(Shared {
        config,
        authority,
        redis,
        shards,
        node,
        stats: (0..shard_count)
            .map(|_| crate::metrics::ShardStats::default())
            .collect(),
        system,
        metrics: crate::metrics::Metrics::new(shard_count),
        console_logins: crate::console::LoginLimiter::default(),
        started_at: Instant::now(),
        topic_rates: (0..shard_count)
            .map(|_| std::sync::Mutex::new(Vec::new()))
            .collect(),
        admin_shards: std::sync::atomic::AtomicU64::new(0),
        stats_wanted_until_ms: std::sync::atomic::AtomicU64::new(0),
    });
    let executors = crate::shard::start(&shared)?;
    info!(addr = %shared.config.listen_addr(), shards = shard_count, "listening");
    if let Some(interval) = shared.config.admin_stats_interval() {
        let figures = Arc::clone(&shared);
        crate::admin::spawn_stats_ticker(
            interval,
            shared.shards.clone(),
            move || figures.process_figures(),
            StatsOutlet(Arc::clone(&shared)),
        )
        .context("cannot start the admin stats ticker")?;
    }

    wait_for_termination_signal()?;
    info!("shutting down: closing sockets with 1012");
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_DEADLINE + Duration::from_millis(800));
        warn!("shutdown took too long; exiting");
        std::process::exit(0);
    });
    for inbox in shared.shards.inboxes() {
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

/// Where the admin stats ticker looks and publishes: this process's admin shards, the
/// deployment's requests for stats, and the Redis publisher's queue.
struct StatsOutlet(Arc<Shared>);

impl crate::admin::StatsOutlet for StatsOutlet {
    fn has_local_admins(&self) -> bool {
        self.0
            .admin_shards
            .load(std::sync::atomic::Ordering::Relaxed)
            != 0
    }

    fn stats_wanted(&self) -> bool {
        let until = self
            .0
            .stats_wanted_until_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        self.0.uptime_ms() < until
    }

    fn publish(&self, topic: &str, event: &str, payload: String) -> bool {
        let redis = &self.0.redis;
        redis.status.can_publish()
            && redis
                .publish
                .try_send(crate::broker::UpstreamCommand::Publish(
                    crate::broker::PublishRequest {
                        channel: format!("to:{topic}:{event}"),
                        payload: payload.into(),
                        origin: None,
                    },
                ))
                .is_ok()
    }
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
