//! The soak scenario: for `duration` seconds, mixes churning clients (join, push, leave, rejoin,
//! reconnect), fan-out publishes from Redis, a few slow clients that stop reading, and Redis
//! restarts; then reports what an `ok` reply promised and whether it was kept.
//!
//! Pieces (each on its own thread, the WebSocket clients on one tokio current-thread runtime that
//! `clients.rs` runs):
//! - churn clients (`churn.rs`): each loops socket → 1–3 × (join a random topic, push at its
//!   share of `push_rate`, hold `hold_min..hold_max` s, wait for its push replies, `phx_leave`)
//!   → close; every push carries a unique id (`{"soak":"<run>-<id>"}`) and its own ref `p<id>`;
//! - slow clients (`slow_clients.rs`, the steps of `slow.rs`): 4 KiB receive buffer, join
//!   `<prefix>:slow`, read for `slow_read_for` s, stop reading for `slow_stall` s while the
//!   publisher sends large messages to that topic, then read what is left and look for the close
//!   code (1013 expected);
//! - the publisher (`publisher.rs`): `PUBLISH to:<topic>:<event>` at `rate`/s round-robin over
//!   the topics, each stamped; a publish counts as published only once Redis answered it (it
//!   reconnects after a restart);
//! - the subscriber (`subscriber.rs`): `PSUBSCRIBE from:*`, reconnecting and resubscribing after
//!   a restart, and recording the intervals during which it was known to be subscribed;
//! - the restarter (`restarts.rs`): runs `restart_command` with `sh -c` every `restart_every` s
//!   and waits for Redis to answer `PING` again;
//! - the coordinator (this thread, `monitor.rs`): samples the server's RSS every `rss_every` s;
//!   `summary.rs` tallies and writes the report once everything stopped.
//!
//! Lost acknowledged pushes are counted only over pushes the subscriber could have seen: sent
//! after its `psubscribe` confirmation and acknowledged at least `ack_guard` s before it noticed
//! its connection go. Other `ok` pushes are reported apart (`ok_unverifiable`, and how many of them
//! were seen anyway); `ledger.rs` keeps that account, `downstream.rs` the fan-out's. See
//! loadtest/README.md, "Soak".

mod churn;
mod clients;
mod downstream;
mod ledger;
mod monitor;
mod publisher;
mod redis_link;
mod restarts;
mod shared;
mod slow_clients;
mod subscriber;
mod summary;

use crate::net::{parse_http_url, parse_redis_url};
use crate::scenario::Scenario;
use crate::slow;
use crate::stamp::now_us;
use anyhow::{bail, Context, Result};
use ledger::Ledger;
use monitor::Monitor;
use shared::{Counters, Errors, Shared};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where and how to run a soak.
pub struct SoakArgs {
    pub scenario: Scenario,
    pub url: String,
    pub redis: String,
    pub out: PathBuf,
    pub server_pid: Option<u32>,
}

/// The threads of a running soak, in the order they are stopped.
struct Pieces {
    clients: JoinHandle<Result<()>>,
    sub_stop: Arc<AtomicBool>,
    sub: JoinHandle<()>,
    /// The publisher and, when restarts are on, the restarter.
    others: Vec<JoinHandle<()>>,
}

/// Runs a soak scenario and writes `summary.json` in `out`. Fails (after writing it) when an
/// acknowledged push was lost.
pub fn run(args: SoakArgs) -> Result<serde_json::Value> {
    let sc = args.scenario;
    sc.validate()?;
    let p = sc.soak.clone().unwrap_or_default();
    p.validate()?;
    let (addr, host) = parse_http_url(&args.url)?;
    let redis = parse_redis_url(&args.redis)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let slow_closes_before = slow::server_closes(addr, &host);
    let t0 = now_us();
    let sh = Arc::new(Shared {
        addr,
        host,
        redis,
        run_id: format!("{t0:x}"),
        t0,
        next_push_id: AtomicU64::new(1),
        ledger: Mutex::new(Ledger::default()),
        sessions: Mutex::new(Vec::new()),
        published: Mutex::new(vec![Vec::new(); sc.topics]),
        restarts: Mutex::new(Vec::new()),
        close_codes: Mutex::new(BTreeMap::new()),
        slow_other: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(Errors::default()),
        c: Counters::default(),
        live: AtomicI64::new(0),
        stop_pushing: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        p,
        sc,
    });
    let pieces = start(&sh)?;
    let mut monitor = Monitor::new(&sh, args.server_pid);
    monitor.wait_until(&sh, t0 + (sh.sc.duration * 1e6) as u64, "soak");
    sh.stop_pushing.store(true, Relaxed);
    let drain_end = now_us() + (sh.sc.drain.max(4.0) * 1e6) as u64;
    monitor.wait_until(&sh, drain_end, "drain");
    stop(&sh, pieces, &mut monitor);
    let rss = monitor.into_series();
    let summary = summary::summarize(&sh, &rss, slow_closes_before)?;
    summary::write(&args.out, &sh, &summary.json, &rss)?;
    if summary.pushes.lost_acked > 0 {
        println!("{}", serde_json::to_string_pretty(&summary.json)?);
        bail!(
            "{} acknowledged pushes were lost (ids {:?})",
            summary.pushes.lost_acked,
            summary.pushes.lost_acked_ids
        );
    }
    Ok(summary.json)
}

/// Starts the subscriber and waits (5 s at most) for its `psubscribe` confirmation, then the
/// publisher, the restarter (when restarts are on) and the clients.
fn start(sh: &Arc<Shared>) -> Result<Pieces> {
    let sub_stop = Arc::new(AtomicBool::new(false));
    let sub = {
        let (sh, stop) = (sh.clone(), sub_stop.clone());
        std::thread::Builder::new()
            .name("soak-sub".into())
            .spawn(move || subscriber::subscriber(sh, stop))?
    };
    let wait_sub = now_us() + 5_000_000;
    while !sh
        .ledger
        .lock()
        .map(|l| l.ever_subscribed())
        .unwrap_or(false)
    {
        if now_us() > wait_sub {
            sub_stop.store(true, Relaxed);
            bail!(
                "the subscriber could not PSUBSCRIBE from:* on {} within 5 s",
                sh.redis
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut others = Vec::new();
    {
        let s = sh.clone();
        others.push(
            std::thread::Builder::new()
                .name("soak-pub".into())
                .spawn(move || publisher::publisher(s))?,
        );
    }
    if sh.p.restart_every > 0.0 {
        let s = sh.clone();
        others.push(
            std::thread::Builder::new()
                .name("soak-restart".into())
                .spawn(move || restarts::restarter(s))?,
        );
    }
    let clients = {
        let s = sh.clone();
        std::thread::Builder::new()
            .name("soak-clients".into())
            .spawn(move || clients::clients_thread(s))?
    };
    Ok(Pieces {
        clients,
        sub_stop,
        sub,
        others,
    })
}

/// Stops the clients (15 s at most for their tasks to finish), takes the last RSS sample, then
/// stops the subscriber and joins the other threads.
fn stop(sh: &Shared, pieces: Pieces, monitor: &mut Monitor) {
    sh.stop.store(true, Relaxed);
    let close_deadline = now_us() + 15_000_000;
    while !pieces.clients.is_finished() && now_us() < close_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if pieces.clients.is_finished() {
        if let Ok(Err(e)) = pieces.clients.join() {
            sh.note_error(format!("client thread: {e:#}"));
        }
    } else {
        sh.note_error("client tasks did not finish within 15 s of the stop".into());
    }
    monitor.sample(sh);
    pieces.sub_stop.store(true, Relaxed);
    let _ = pieces.sub.join();
    for t in pieces.others {
        let _ = t.join();
    }
}
