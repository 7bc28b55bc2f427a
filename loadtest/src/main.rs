//! `loadtest`: drives any server of the Phoenix Channels + Redis surface (`channel`, Tangram) with
//! the scenarios of `loadtest/scenarios/`, and compares the summaries it writes.

mod burst;
mod ceiling;
mod client;
mod conn;
mod fleet;
mod net;
mod redis;
mod report;
mod resp;
mod rolling;
mod run;
mod scenario;
mod servers;
mod slow;
mod soak;
mod stamp;
mod stats;
mod step_search;
mod timeline;
mod token;
mod topology;
mod ws;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for Phoenix Channels servers bridged to Redis"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// `Run` carries every flag; the enum is built once per process, so its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario file against a server and write summary.json, latency.hgrm and latency.svg.
    Run {
        /// Scenario TOML (see loadtest/scenarios/).
        scenario: PathBuf,
        /// The server's HTTP base URL (POST /token and GET /websocket live under it); for the
        /// cluster kind without --spawn, one URL per process, comma-separated.
        #[arg(long, default_value = "http://127.0.0.1:2347")]
        url: String,
        /// The Redis the server uses.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// A Redis Cluster instead of --redis: seed nodes, HOST:PORT[,HOST:PORT…]. Publishes go
        /// to the master serving each topic's slot; every master's CPU is read.
        #[arg(long, value_name = "HOST:PORT,...")]
        redis_cluster: Option<String>,
        /// Start the server processes here: `<binary> serve --shards S` on free ports (as many
        /// as the scenario's [cluster] processes, else one), on --redis or --redis-cluster;
        /// they are stopped at the end. Replaces --url and --server-pid.
        #[arg(long, value_name = "CHANNEL_BINARY")]
        spawn: Option<PathBuf>,
        /// The tokens' secret given to spawned servers (CHANNEL_JWT_SECRET).
        #[arg(long, default_value = "loadtest-secret")]
        jwt_secret: String,
        /// Cluster kind: `function` (FCALL channel_publish) or `publish` (classic PUBLISH).
        #[arg(long)]
        publish: Option<scenario::PublishPath>,
        /// Output directory.
        #[arg(long, default_value = "loadtest-out")]
        out: PathBuf,
        /// The server's pid, for its CPU time and RSS (/proc/<pid>/stat and status).
        #[arg(long)]
        server_pid: Option<u32>,
        /// Source addresses to spread client sockets over, e.g. 127.0.0.2-127.0.0.9.
        #[arg(long)]
        source_ips: Option<String>,
        #[arg(long)]
        clients: Option<usize>,
        #[arg(long)]
        topics: Option<usize>,
        /// Messages per second (publishes for fanout/topics, pushes for upstream).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        message_bytes: Option<usize>,
        /// Seconds measured (idle: seconds held).
        #[arg(long)]
        duration: Option<f64>,
        #[arg(long)]
        warmup: Option<f64>,
        #[arg(long)]
        join_in_flight: Option<usize>,
        /// Load threads (0 = one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Fanout: N more clients on the topic that stop reading early in the warmup (slow
        /// consumers); not counted in the figures, reported under `slow` in summary.json.
        #[arg(long)]
        slow_clients: Option<usize>,
        /// Ignore the scenario's [step] table and run one window at `rate`.
        #[arg(long)]
        no_step: bool,
        /// Load processes: this one plus N-1 `loadtest worker` children, each with a slice of
        /// the clients and its own source addresses; 0 = as many as the open-file limit needs.
        #[arg(long, default_value_t = 0)]
        procs: usize,
    },
    /// Two `channel` processes restarted in turn under load (issue 14): loss, duplicates and
    /// order with the publish function and recovery, or with plain PUBLISH (`--plain`).
    RollingRestart(rolling::RollingArgs),
    /// Internal: one child process of `run --procs N` (spec and commands on stdin).
    #[command(hide = true)]
    Worker,
    /// Print two summary.json files side by side with B/A ratios.
    Compare { a: PathBuf, b: PathBuf },
    /// Serve the fan-out ceiling: a minimal server (dummy /token, upgrade, ok to every phx_join)
    /// that writes each Redis `to:*` message as a pre-encoded V2 broadcast to the sockets joined
    /// on its topic, one write per socket per batch. Drive it with the fanout/topics scenarios.
    Ceiling {
        #[arg(long, default_value_t = 4200)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Socket-owning worker threads (0 = one per core); Redis is read on one more thread.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Bytes a slow socket may have pending before it is closed.
        #[arg(long, default_value_t = 8 << 20)]
        max_backlog: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::RollingRestart(args) => {
            let summary = rolling::run(args)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Cmd::Run {
            scenario,
            url,
            redis,
            redis_cluster,
            spawn,
            jwt_secret,
            publish,
            out,
            server_pid,
            source_ips,
            clients,
            topics,
            rate,
            message_bytes,
            duration,
            warmup,
            join_in_flight,
            threads,
            slow_clients,
            no_step,
            procs,
        } => {
            let mut sc = scenario::Scenario::load(&scenario)?;
            sc.apply(&scenario::Overrides {
                clients,
                topics,
                rate,
                message_bytes,
                duration,
                warmup,
                join_in_flight,
                threads,
                slow_clients,
                no_step,
                publish,
            });
            if redis_cluster.is_some()
                && matches!(sc.kind, scenario::Kind::Burst | scenario::Kind::Soak)
            {
                anyhow::bail!("--redis-cluster does not apply to burst and soak scenarios");
            }
            if spawn.is_some() && matches!(sc.kind, scenario::Kind::Burst | scenario::Kind::Soak) {
                anyhow::bail!("--spawn does not apply to burst and soak scenarios");
            }
            if sc.kind == scenario::Kind::Burst {
                let summary = burst::run(burst::BurstArgs {
                    scenario: sc,
                    url,
                    redis,
                    out,
                    server_pid,
                })?;
                println!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(());
            }
            if sc.kind == scenario::Kind::Soak {
                // One process, one load thread: a soak is about time, not throughput.
                let summary = soak::run(soak::SoakArgs {
                    scenario: sc,
                    url,
                    redis,
                    out,
                    server_pid,
                })?;
                println!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(());
            }
            let source_ips = match source_ips {
                Some(s) => net::parse_source_ips(&s)?,
                None => Vec::new(),
            };
            sc.validate()?;
            let topology = match &redis_cluster {
                Some(list) => topology::Topology::discover(&topology::parse_seed_list(list)?)?,
                None => topology::Topology::single(net::parse_redis_url(&redis)?),
            };
            if redis_cluster.is_some() {
                eprintln!(
                    "redis cluster: {} master(s) {:?}",
                    topology.masters.len(),
                    topology.masters
                );
            }
            // Kept until the run ends: dropping it stops the servers.
            let spawned = match &spawn {
                Some(binary) => Some(servers::SpawnedServers::start(&servers::SpawnPlan {
                    binary,
                    processes: sc.server_processes(),
                    shards: sc.cluster_params().shards,
                    redis: match &redis_cluster {
                        Some(list) => servers::RedisTarget::Cluster(list),
                        None => servers::RedisTarget::Single(&redis),
                    },
                    jwt_secret: &jwt_secret,
                    log_dir: &out,
                })?),
                None => None,
            };
            let (urls, server_pids) = match &spawned {
                Some(s) => (s.urls.clone(), s.pids()),
                None => (
                    servers::parse_url_list(&url)?,
                    server_pid.into_iter().collect(),
                ),
            };
            let summary = run::run(run::RunArgs {
                scenario: sc,
                urls,
                redis: redis_cluster.unwrap_or(redis),
                topology,
                out,
                server_pids,
                source_ips,
                procs,
            });
            drop(spawned);
            let summary = summary?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Cmd::Worker => fleet::worker_main(),
        Cmd::Ceiling {
            port,
            bind,
            redis,
            threads,
            max_backlog,
        } => ceiling::serve(ceiling::CeilingArgs {
            bind,
            port,
            redis,
            threads,
            max_backlog,
        }),
        Cmd::Compare { a, b } => compare(&a, &b),
    }
}

/// `loadtest compare A B`: two summaries (files, or directories holding summary.json) side by side.
fn compare(a: &Path, b: &Path) -> Result<()> {
    let read = |p: &Path| -> Result<serde_json::Value> {
        let p = if p.is_dir() {
            p.join("summary.json")
        } else {
            p.to_path_buf()
        };
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    };
    let (va, vb) = (read(a)?, read(b)?);
    print!(
        "{}",
        report::compare(&va, &vb, &a.display().to_string(), &b.display().to_string())
    );
    Ok(())
}
