//! The coordinator of a run: starts the load threads and the Redis side, walks the phases
//! (join → warmup → window → drain, per step), samples CPU and memory, prints progress, and builds
//! the summary. It owns time; the load threads own sockets.

use crate::fleet::{run_shared, server_addrs, Fleet, WorkerSpec};
use crate::net::{raise_fd_limit, split_source_ips, FD_MARGIN};
use crate::redis::{publish_open_loop, redis_cpu_us, subscribe_and_measure};
use crate::redis::{PublishPlan, WindowClock};
use crate::report::{write_outputs, Latency, MasterCpu, ProcessReceived, Summary, Window};
use crate::scenario::{Kind, PublishPath, Scenario};
use crate::servers::received_count;
use crate::slow::SlowGroup;
use crate::stamp::now_us;
use crate::stats::{self, process_cpu_us, process_rss_bytes, ThreadStats};
use crate::step_search::{StepSearch, Verdict};
use crate::topology::Topology;
use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Where and how to run a scenario.
pub struct RunArgs {
    pub scenario: Scenario,
    /// The server processes' HTTP base URLs: one, or `[cluster] processes` for the cluster kind.
    pub urls: Vec<String>,
    /// The Redis as given (`redis://…` or the cluster's seeds), for the report.
    pub redis: String,
    /// The Redis masters and which topic goes to which.
    pub topology: Topology,
    pub out: PathBuf,
    /// The server processes' pids, for their CPU time and RSS (summed); may be empty.
    pub server_pids: Vec<u32>,
    pub source_ips: Vec<IpAddr>,
    /// Load processes (this one and `procs - 1` `loadtest worker` children); 0 = as many as the
    /// open-file limit requires.
    pub procs: usize,
}

struct Probe {
    t_us: u64,
    server_cpu: Option<u64>,
    load_cpu: u64,
    /// Summed over the masters.
    redis_cpu: Option<u64>,
    /// Cluster kind: per master.
    redis_cpu_per_master: Vec<Option<u64>>,
}

struct Coordinator {
    sc: Scenario,
    url: String,
    server_pids: Vec<u32>,
    topology: Topology,
    /// Cluster kind: the server processes whose `/metrics` are read at each probe.
    metrics_servers: Vec<(String, SocketAddr)>,
    /// Every load thread of every load process.
    fleet: Fleet,
    t_start: u64,
    /// Progress counters of the current window.
    published: Arc<AtomicU64>,
    /// Upstream: what the subscriber saw.
    sub_stats: Arc<ThreadStats>,
    last_line: (u64, u64),
    /// Fanout with `slow_clients`: the slow consumers, told to stop reading during the first warmup.
    slow: Option<SlowGroup>,
    /// The server's highest RSS seen by the progress lines.
    rss_max: Option<u64>,
}

impl Coordinator {
    fn probe(&self) -> Probe {
        let cluster = self.sc.kind == Kind::Cluster;
        let per_master: Vec<Option<u64>> = self
            .topology
            .masters
            .iter()
            .map(|m| redis_cpu_us(*m))
            .collect();
        Probe {
            t_us: now_us(),
            server_cpu: sum_over(&self.server_pids, process_cpu_us),
            load_cpu: self.fleet.cpu_us(),
            redis_cpu: per_master.iter().copied().sum(),
            redis_cpu_per_master: if cluster { per_master } else { Vec::new() },
        }
    }

    /// Cluster kind: each server process's received counter (empty for other kinds).
    fn received_counts(&self) -> Vec<Option<u64>> {
        self.metrics_servers
            .iter()
            .map(|(_, a)| received_count(*a))
            .collect()
    }

    fn delivered_now(&self) -> u64 {
        if self.sc.kind == Kind::Upstream {
            self.sub_stats.delivered.load(Relaxed) + self.sub_stats.delivered_outside.load(Relaxed)
        } else {
            let t = self.fleet.totals();
            t.delivered + t.delivered_outside
        }
    }

    /// One progress line on stderr.
    fn progress(&mut self, phase: &str) {
        let now = now_us();
        let t = self.fleet.totals();
        let delivered = self.delivered_now();
        let (last_t, last_d) = self.last_line;
        let rate = if now > last_t && last_t > 0 {
            (delivered.saturating_sub(last_d)) as f64 * 1e6 / (now - last_t) as f64
        } else {
            0.0
        };
        self.last_line = (now, delivered);
        let sent = if self.sc.kind == Kind::Upstream {
            t.pushes_total
        } else {
            self.published.load(Relaxed)
        };
        let max_lat = if self.sc.kind == Kind::Upstream {
            self.sub_stats.max_latency_us.load(Relaxed)
        } else {
            t.max_latency_us
        };
        let rss = sum_over(&self.server_pids, process_rss_bytes);
        self.rss_max = self.rss_max.max(rss);
        let cpu = sum_over(&self.server_pids, process_cpu_us)
            .map(|c| format!(" srv_cpu_s={:.1}", c as f64 / 1e6))
            .unwrap_or_default();
        eprintln!(
            "[{:6.1}s] {phase:<10} joined={}/{} failed={} dropped={} sent={} delivered={} ({:.0}/s) max_lat={:.1}ms{cpu}",
            (now - self.t_start) as f64 / 1e6,
            t.joined,
            self.sc.clients,
            t.join_failed,
            t.dropped,
            sent,
            delivered,
            rate,
            max_lat as f64 / 1000.0,
        );
    }

    /// Sleeps until `until_us`, printing progress once a second.
    fn wait_until(&mut self, until_us: u64, phase: &str) {
        loop {
            let now = now_us();
            if now >= until_us {
                return;
            }
            let next_line = self.last_line.0 + 1_000_000;
            let wake = until_us.min(next_line.max(now + 1000));
            std::thread::sleep(Duration::from_micros(wake - now));
            if now_us() >= next_line {
                self.progress(phase);
            }
        }
    }

    /// Waits (with progress) while `busy` holds, at most until `deadline_us`.
    fn wait_while(&mut self, deadline_us: u64, phase: &str, mut busy: impl FnMut(&Self) -> bool) {
        while busy(self) && now_us() < deadline_us {
            let next = (now_us() + 20_000).min(deadline_us);
            self.wait_until(next, phase);
        }
    }

    fn joins(&mut self) -> (f64, Probe, Probe) {
        let before = self.probe();
        let clients = self.sc.clients as u64;
        let mut last_progress = (now_us(), 0u64);
        loop {
            let t = self.fleet.totals();
            let done = t.joined + t.join_failed;
            if done >= clients {
                break;
            }
            if done != last_progress.1 {
                last_progress = (now_us(), done);
            } else if now_us() - last_progress.0 > (self.sc.join_timeout * 1e6) as u64 + 5_000_000 {
                eprintln!("joins stalled at {done}/{clients}; going on");
                break;
            }
            if let Some(w) = self.fleet.lost_worker() {
                eprintln!("load worker process {w} exited during the joins; going on without it");
                break;
            }
            let next = now_us() + 20_000;
            self.wait_until(next, "joining");
        }
        let after = self.probe();
        let secs = (after.t_us - before.t_us) as f64 / 1e6;
        (secs, before, after)
    }

    /// One measured window at `rate`: warmup, window, drain. Returns the window's figures and histogram.
    fn window(&mut self, rate: f64, duration: f64) -> Result<(Window, Histogram<u64>)> {
        self.sub_stats.reset_window();
        let warm = (self.sc.warmup * 1e6) as u64;
        let start = now_us() + warm.max(20_000);
        let end = start + (duration * 1e6) as u64;
        self.fleet.begin_window(start, end)?;
        let dropped_before = self.fleet.totals().dropped;
        // Read before the publisher starts and after the drain, so that a process that falls
        // behind and catches up later is counted for what it received of this step, no more.
        let received_before = self.received_counts();
        let mut loaded = if self.sc.kind.is_downstream() {
            self.publish_through(rate, warm, start, end)?
        } else {
            self.push_through(rate, start, end)?
        };
        let expected: u64 = loaded
            .published
            .in_window
            .iter()
            .zip(&loaded.live)
            .map(|(n, l)| n * (*l).max(0) as u64)
            .sum();
        let sent: u64 = loaded.published.in_window.iter().sum();
        let (delivered, hist) = self.drain(expected)?;
        loaded.received = received_before
            .into_iter()
            .zip(self.received_counts())
            .map(|(a, b)| Some(b?.saturating_sub(a?)))
            .collect();
        let dropped = self.fleet.totals().dropped.saturating_sub(dropped_before);
        let win = self.figures(rate, &loaded, (sent, expected, delivered, dropped), &hist);
        print_window(&win);
        Ok((win, hist))
    }

    /// Downstream: publishes at `rate` from `start - warm` until `end` (the slow clients, if any,
    /// stop reading inside the warmup), probing at the window's edges.
    fn publish_through(&mut self, rate: f64, warm: u64, start: u64, end: u64) -> Result<Loaded> {
        let topics: Vec<String> = (0..self.sc.topics).map(|t| self.sc.topic_name(t)).collect();
        let plan = PublishPlan {
            targets: self.topology.masters.clone(),
            topic_target: topics.iter().map(|t| self.topology.master_of(t)).collect(),
            topics,
            path: if self.sc.kind == Kind::Cluster {
                self.sc.cluster_params().publish
            } else {
                PublishPath::Publish
            },
            event: self.sc.event.clone(),
            rate,
            message_bytes: self.sc.message_bytes,
            stop_at_us: end,
        };
        let window = self.fleet.local.shared.window.clone();
        let counter = self.published.clone();
        counter.store(0, Relaxed);
        let publisher = std::thread::Builder::new()
            .name("lt-publisher".into())
            .spawn(move || publish_open_loop(&plan, &window, &counter))?;
        if self.slow.is_some() {
            let read_for = (self.sc.slow_read_for * 1e6) as u64;
            self.wait_until((start - warm + read_for).min(start), "warmup");
            if let Some(slow) = &self.slow {
                slow.stop_reading();
            }
        }
        self.wait_until(start, "warmup");
        let live = self.fleet.live_per_topic();
        let p0 = self.probe();
        self.wait_until(end, "measure");
        let p1 = self.probe();
        let published = publisher
            .join()
            .map_err(|_| anyhow!("publisher thread panicked"))??;
        if published.errors > 0 {
            eprintln!(
                "Redis answered {} publishes with an error, the first: {}",
                published.errors,
                published.first_error.as_deref().unwrap_or("?")
            );
        }
        Ok(Loaded {
            published,
            p0,
            p1,
            live,
            received: Vec::new(),
        })
    }

    /// Upstream: the clients push at `rate` until `end`, probing at the window's edges.
    fn push_through(&mut self, rate: f64, start: u64, end: u64) -> Result<Loaded> {
        self.fleet.set_push_rate((rate * 1000.0) as u64)?;
        self.wait_until(start, "warmup");
        let p0 = self.probe();
        self.wait_until(end, "measure");
        let p1 = self.probe();
        self.fleet.set_push_rate(0)?;
        // A tick due before the end may fire (late) after it: give the load threads time to
        // send it before counting what was sent inside the window.
        let grace = now_us() + 200_000;
        self.wait_until(grace, "stop");
        self.fleet.refresh()?;
        Ok(Loaded {
            published: crate::redis::Published {
                in_window: vec![self.fleet.totals().pushes_sent],
                ..Default::default()
            },
            p0,
            p1,
            live: vec![1],
            received: Vec::new(),
        })
    }

    /// Waits up to `drain` s for `expected` deliveries; returns those made and their latency.
    fn drain(&mut self, expected: u64) -> Result<(u64, Histogram<u64>)> {
        let drain_deadline = now_us() + (self.sc.drain * 1e6) as u64;
        let upstream = self.sc.kind == Kind::Upstream;
        self.wait_while(drain_deadline, "drain", |c| {
            let d = if upstream {
                c.sub_stats.delivered.load(Relaxed)
            } else {
                c.fleet.totals().delivered
            };
            d < expected
        });
        Ok(if upstream {
            (
                self.sub_stats.delivered.load(Relaxed),
                stats::merged_latency(std::slice::from_ref(&self.sub_stats)),
            )
        } else {
            self.fleet.refresh()?;
            (self.fleet.totals().delivered, self.fleet.latency())
        })
    }

    /// The figures of a window; `counts` = (sent, expected, delivered, dropped).
    fn figures(
        &self,
        rate: f64,
        loaded: &Loaded,
        counts: (u64, u64, u64, u64),
        hist: &Histogram<u64>,
    ) -> Window {
        let (sent, expected, delivered, dropped) = counts;
        let (p0, p1) = (&loaded.p0, &loaded.p1);
        let secs = (p1.t_us - p0.t_us) as f64 / 1e6;
        let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if delivered > 0 => {
                Some(b.saturating_sub(a) as f64 / delivered as f64)
            }
            _ => None,
        };
        let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if secs > 0.0 => Some(b.saturating_sub(a) as f64 / 1e4 / secs),
            _ => None,
        };
        let lost = expected.saturating_sub(delivered);
        let loss_ratio = if expected > 0 {
            lost as f64 / expected as f64
        } else {
            0.0
        };
        let latency = Latency::of(hist);
        let sustainable = match &self.sc.step {
            Some(st) => {
                loss_ratio <= st.max_loss_ratio && latency.p99_ms <= st.max_p99_ms && delivered > 0
            }
            None => lost == 0 && delivered > 0,
        };
        Window {
            rate,
            window_s: secs,
            sent,
            expected,
            delivered,
            lost,
            loss_ratio,
            deliveries_per_s: if secs > 0.0 {
                delivered as f64 / secs
            } else {
                0.0
            },
            latency,
            dropped,
            server_cpu_percent: pct(p0.server_cpu, p1.server_cpu),
            server_cpu_us_per_delivery: per(p0.server_cpu, p1.server_cpu),
            load_cpu_percent: pct(Some(p0.load_cpu), Some(p1.load_cpu)).unwrap_or(0.0),
            load_cpu_us_per_delivery: per(Some(p0.load_cpu), Some(p1.load_cpu)),
            redis_cpu_percent: pct(p0.redis_cpu, p1.redis_cpu),
            redis_cpu_us_per_delivery: per(p0.redis_cpu, p1.redis_cpu),
            sustainable,
            attempt: 1,
            per_process: (self.sc.kind == Kind::Cluster).then(|| self.per_process(loaded)),
            per_master: (self.sc.kind == Kind::Cluster)
                .then(|| self.per_master(&loaded.published.in_window, secs, p0, p1)),
        }
    }

    /// Cluster kind: what each server process received from Redis over the step (warmup,
    /// window and drain) against the messages published to its topics.
    fn per_process(&self, loaded: &Loaded) -> Vec<ProcessReceived> {
        let per_topic = &loaded.published.per_topic;
        let sent: u64 = per_topic.iter().sum();
        self.metrics_servers
            .iter()
            .enumerate()
            .map(|(k, (url, _))| {
                let mine = |t: &usize| self.sc.server_of_topic(*t) == k;
                let own_published: u64 = (0..per_topic.len())
                    .filter(mine)
                    .map(|t| per_topic[t])
                    .sum();
                let received = loaded.received.get(k).copied().flatten();
                let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
                ProcessReceived {
                    url: url.clone(),
                    topics: (0..per_topic.len()).filter(mine).count(),
                    published: sent,
                    own_published,
                    received,
                    ratio_to_own_share: received.and_then(|r| ratio(r, own_published)),
                    share_of_all: received.and_then(|r| ratio(r, sent)),
                }
            })
            .collect()
    }

    /// Cluster kind: each master's CPU over the window, and per message sent to it.
    fn per_master(&self, in_window: &[u64], secs: f64, p0: &Probe, p1: &Probe) -> Vec<MasterCpu> {
        self.topology
            .masters
            .iter()
            .enumerate()
            .map(|(m, addr)| {
                let topics: Vec<usize> = (0..in_window.len())
                    .filter(|t| self.topology.master_of(&self.sc.topic_name(*t)) == m)
                    .collect();
                let published: u64 = topics.iter().map(|t| in_window[*t]).sum();
                let cpu = match (p0.redis_cpu_per_master[m], p1.redis_cpu_per_master[m]) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                    _ => None,
                };
                MasterCpu {
                    addr: addr.to_string(),
                    topics: topics.len(),
                    published,
                    cpu_percent: cpu.filter(|_| secs > 0.0).map(|c| c as f64 / 1e4 / secs),
                    cpu_us_per_message: cpu
                        .filter(|_| published > 0)
                        .map(|c| c as f64 / published as f64),
                }
            })
            .collect()
    }
}

/// The sum of `f` over every pid; None when there is none or one is missing.
fn sum_over(pids: &[u32], f: impl Fn(u32) -> Option<u64>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| f(*p)).sum()
}

/// What a window's load produced: the messages stamped inside it, the probes at its edges, and
/// the clients live on each topic as it began (upstream: one Redis receipt per push).
struct Loaded {
    published: crate::redis::Published,
    p0: Probe,
    p1: Probe,
    live: Vec<i64>,
    /// Cluster kind: per server process, the increase of its received counter from before the
    /// publisher started to after the drain.
    received: Vec<Option<u64>>,
}

fn print_window(win: &Window) {
    eprintln!(
        "window rate={}/s: sent={} expected={} delivered={} lost={} ({:.0} deliveries/s) p50={:.2}ms p99={:.2}ms max={:.2}ms srv_cpu/deliv={} load_cpu/deliv={} {}",
        win.rate,
        win.sent,
        win.expected,
        win.delivered,
        win.lost,
        win.deliveries_per_s,
        win.latency.p50_ms,
        win.latency.p99_ms,
        win.latency.max_ms,
        fmt_us(win.server_cpu_us_per_delivery),
        fmt_us(win.load_cpu_us_per_delivery),
        if win.sustainable { "ok" } else { "NOT SUSTAINED" }
    );
    for p in win.per_process.iter().flatten() {
        eprintln!(
            "  process {}: {} topics, received {} (of {} published, {} to its topics: {}x its share, {} of all)",
            p.url,
            p.topics,
            p.received.map_or("-".into(), |r| r.to_string()),
            p.published,
            p.own_published,
            p.ratio_to_own_share.map_or("-".into(), |r| format!("{r:.2}")),
            p.share_of_all.map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
        );
    }
    for m in win.per_master.iter().flatten() {
        eprintln!(
            "  redis master {}: {} topics, {} messages, cpu {} ({} per message)",
            m.addr,
            m.topics,
            m.published,
            m.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
            fmt_us(m.cpu_us_per_message),
        );
    }
}

fn fmt_us(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}µs")).unwrap_or_else(|| "-".into())
}

/// How the clients are spread: load processes, threads per process, source addresses of each.
struct Layout {
    procs: usize,
    threads: usize,
    ips_per_proc: Vec<Vec<IpAddr>>,
}

impl Layout {
    /// Raises the open-file limit and picks the processes (`--procs 0`: as many as it needs),
    /// refusing a spread the limit or the ephemeral ports cannot carry.
    fn of(sc: &Scenario, procs: usize, source_ips: &[IpAddr], server: IpAddr) -> Result<Layout> {
        let limit = raise_fd_limit();
        // Besides its clients, a process holds up to its share of join_in_flight keep-alive token
        // connections (the token pool) and a few more (Redis, probes, files).
        let per_proc_max = limit
            .saturating_sub(FD_MARGIN + sc.join_in_flight as u64)
            .max(1) as usize;
        let procs = if procs == 0 {
            sc.clients.div_ceil(per_proc_max).max(1)
        } else {
            procs
        };
        if sc.clients.div_ceil(procs) > per_proc_max {
            bail!(
                "{} clients over {procs} process(es) need more than the {limit} open files one process \
                 may hold; use --procs {} (or leave --procs out to pick it)",
                sc.clients,
                sc.clients.div_ceil(per_proc_max)
            );
        }
        let ips_per_proc = split_source_ips(source_ips, procs, server)?;
        let distinct: std::collections::HashSet<&IpAddr> = ips_per_proc.iter().flatten().collect();
        if sc.clients > 25_000 && distinct.len() < 2 {
            bail!("{} clients from one source address may exhaust the ephemeral port range: give --source-ips 127.0.0.2-127.0.0.9", sc.clients);
        }
        let threads = if sc.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            sc.threads
        };
        let threads = threads.min(sc.clients.div_ceil(procs)).max(1);
        Ok(Layout {
            procs,
            threads,
            ips_per_proc,
        })
    }
}

/// The Redis subscriber of an upstream run, its figures and its stop flag.
struct Subscriber {
    stats: Arc<ThreadStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Upstream: subscribes (5 s at most) before any client can push. Otherwise an idle stand-in
    /// whose figures stay empty.
    fn start(sc: &Scenario, redis_addr: SocketAddr, window: Arc<WindowClock>) -> Result<Self> {
        let mut sub = Subscriber {
            stats: Arc::new(ThreadStats::default()),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        if sc.kind == Kind::Upstream {
            let (tx, rx) = std::sync::mpsc::channel();
            let pattern = format!("from:{}:*", sc.topic_prefix);
            let (w, s, st) = (window, sub.stats.clone(), sub.stop.clone());
            sub.thread = Some(
                std::thread::Builder::new()
                    .name("lt-subscriber".into())
                    .spawn(move || subscribe_and_measure(redis_addr, &pattern, w, s, st, tx))?,
            );
            rx.recv_timeout(Duration::from_secs(5))
                .map_err(|_| anyhow!("Redis subscription timed out"))??;
        }
        Ok(sub)
    }
}

/// Runs a scenario and writes its outputs; returns the summary.
pub fn run(args: RunArgs) -> Result<Summary> {
    let sc = &args.scenario;
    sc.validate()?;
    let servers = server_addrs(&args.urls)?;
    if servers.len() != sc.server_processes() {
        bail!(
            "{} server URL(s) for a scenario of {} process(es)",
            servers.len(),
            sc.server_processes()
        );
    }
    let redis_addr = *args
        .topology
        .masters
        .first()
        .ok_or_else(|| anyhow!("no Redis master"))?;
    let url = args.urls.join(",");
    let layout = Layout::of(sc, args.procs, &args.source_ips, servers[0].addr.ip())?;
    let procs = layout.procs;
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    eprintln!(
        "loadtest {} ({:?}): {} clients on {} topic(s), {procs} process(es) x {} thread(s), server {} , redis {}",
        sc.name, sc.kind, sc.clients, sc.topics, layout.threads, url, args.redis
    );
    if sc.kind == Kind::Cluster {
        eprintln!(
            "cluster: {} server process(es), {} Redis master(s) {:?}, publishing with {:?}",
            servers.len(),
            args.topology.masters.len(),
            args.topology.masters,
            sc.cluster_params().publish
        );
    }

    let rss_before = sum_over(&args.server_pids, process_rss_bytes);
    let mut ips_per_proc = layout.ips_per_proc.into_iter();
    let shared = Arc::new(run_shared(
        sc,
        servers.clone(),
        ips_per_proc.next().unwrap_or_default(),
    ));
    let subscriber = Subscriber::start(sc, redis_addr, shared.window.clone())?;

    // Each process runs its share of the joins in flight, so the total stays what was asked.
    let mut proc_sc = sc.clone();
    proc_sc.join_in_flight = sc.join_in_flight.div_ceil(procs).max(1);
    let children: Vec<WorkerSpec> = ips_per_proc
        .enumerate()
        .map(|(k, source_ips)| WorkerSpec {
            scenario: proc_sc.clone(),
            urls: args.urls.clone(),
            proc_index: k + 1,
            procs,
            source_ips,
        })
        .collect();
    let mine: Vec<usize> = (0..sc.clients).filter(|i| i % procs == 0).collect();
    let fleet = Fleet::start(&proc_sc, mine, shared, &children)?;

    let t_start = now_us();
    let metrics_servers = if sc.kind == Kind::Cluster {
        args.urls
            .iter()
            .cloned()
            .zip(servers.iter().map(|s| s.addr))
            .collect()
    } else {
        Vec::new()
    };
    let mut co = Coordinator {
        sc: sc.clone(),
        url: url.clone(),
        server_pids: args.server_pids.clone(),
        topology: args.topology.clone(),
        metrics_servers,
        fleet,
        t_start,
        published: Arc::new(AtomicU64::new(0)),
        sub_stats: subscriber.stats.clone(),
        last_line: (t_start, 0),
        slow: None,
        rss_max: rss_before,
    };
    let joins = join_phase(&mut co, &args, started_unix_s, rss_before);
    if sc.slow_clients > 0 && joins.joined > 0 {
        co.slow = Some(SlowGroup::start(
            sc,
            servers[0].addr,
            servers[0].host.clone(),
            sc.topic_name(0),
        )?);
        let per_shard = co.slow.as_ref().map(|g| g.per_shard()).unwrap_or_default();
        eprintln!(
            "slow clients: {} joined, per shard (x-channel-shard) {per_shard:?}; they stop reading {} s into the warmup",
            per_shard.values().sum::<u64>(),
            sc.slow_read_for.min(sc.warmup)
        );
    }

    let mut report = Report {
        summary: joins.summary,
        main_hist: joins.latency.clone(),
        plot: Vec::new(),
    };
    let result = joins.refreshed.and_then(|()| {
        if joins.joined == 0 {
            bail!("no client joined");
        }
        measure(&mut co, &args, &mut report, &joins.latency, rss_before)
    });
    finish(co, &mut report.summary, subscriber, &result);
    let plot_refs: Vec<(String, &Histogram<u64>)> =
        report.plot.iter().map(|(n, h)| (n.clone(), h)).collect();
    write_outputs(&args.out, &report.summary, &report.main_hist, &plot_refs)?;
    eprintln!(
        "wrote {}/summary.json, latency.hgrm, latency.svg",
        args.out.display()
    );
    result.map(|()| report.summary)
}

/// What the outputs are made of: the summary, the histogram of `latency.hgrm` (the join latency
/// until a window replaces it) and the lines of `latency.svg`.
struct Report {
    summary: Summary,
    main_hist: Histogram<u64>,
    plot: Vec<(String, Histogram<u64>)>,
}

/// The join phase's outcome: the summary started with the join figures, the join latency, how
/// many joined, and whether the fleet's counters could be read after it.
struct Joins {
    summary: Summary,
    latency: Histogram<u64>,
    joined: u64,
    refreshed: Result<()>,
}

/// Waits for the joins and starts the summary with their figures.
fn join_phase(
    co: &mut Coordinator,
    args: &RunArgs,
    started_unix_s: u64,
    rss_before: Option<u64>,
) -> Joins {
    let sc = &args.scenario;
    let (join_secs, jb, ja) = co.joins();
    let refreshed = co.fleet.refresh();
    let t = co.fleet.totals();
    let join_hist = co.fleet.join_latency();
    eprintln!(
        "joins: {} ok, {} failed in {:.2}s ({:.0}/s), join p50={:.1}ms p99={:.1}ms",
        t.joined,
        t.join_failed,
        join_secs,
        t.joined as f64 / join_secs.max(1e-9),
        join_hist.value_at_quantile(0.5) as f64 / 1000.0,
        join_hist.value_at_quantile(0.99) as f64 / 1000.0
    );
    let per_join = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if t.joined > 0 => Some(b.saturating_sub(a) as f64 / t.joined as f64),
        _ => None,
    };
    let mut summary = Summary {
        scenario: sc.name.clone(),
        kind: format!("{:?}", sc.kind).to_lowercase(),
        url: co.url.clone(),
        server_pid: args.server_pids.first().copied(),
        started_unix_s,
        params: Some(sc.clone()),
        clients: sc.clients,
        joined: t.joined,
        join_failures: t.join_failed,
        joins_per_s: t.joined as f64 / join_secs.max(1e-9),
        join_latency: Latency::of(&join_hist),
        server_cpu_us_per_join: per_join(jb.server_cpu, ja.server_cpu),
        load_cpu_us_per_join: per_join(Some(jb.load_cpu), Some(ja.load_cpu)),
        server_rss_before_bytes: rss_before,
        ..Default::default()
    };
    if sc.kind == Kind::JoinStorm {
        summary.kind = "join-storm".into();
    }
    Joins {
        summary,
        latency: join_hist,
        joined: t.joined,
        refreshed,
    }
}

/// The measured part of the run, by kind.
fn measure(
    co: &mut Coordinator,
    args: &RunArgs,
    report: &mut Report,
    join_hist: &Histogram<u64>,
    rss_before: Option<u64>,
) -> Result<()> {
    match args.scenario.kind {
        Kind::JoinStorm => {
            report.plot.push(("join latency".into(), join_hist.clone()));
        }
        Kind::Soak => bail!("soak scenarios are run by soak::run"),
        Kind::Burst => bail!("burst scenarios are run by burst::run"),
        Kind::Idle => {
            measure_idle(co, args, &mut report.summary, rss_before);
            report.plot.push(("join latency".into(), join_hist.clone()));
        }
        Kind::Fanout | Kind::Topics | Kind::Upstream | Kind::Cluster => {
            measure_steps(co, &args.scenario, report)?
        }
    }
    Ok(())
}

/// Idle: settle, then hold the connections `duration` s; RSS per connection and idle CPU.
fn measure_idle(
    co: &mut Coordinator,
    args: &RunArgs,
    summary: &mut Summary,
    rss_before: Option<u64>,
) {
    let sc = &args.scenario;
    let settle_until = now_us() + (sc.settle * 1e6) as u64;
    co.wait_until(settle_until, "settle");
    let p0 = co.probe();
    let rss_joined = sum_over(&args.server_pids, process_rss_bytes);
    let hold_until = now_us() + (sc.duration * 1e6) as u64;
    co.wait_until(hold_until, "hold");
    let p1 = co.probe();
    let rss_end = sum_over(&args.server_pids, process_rss_bytes);
    let rss = rss_joined.max(rss_end);
    summary.server_rss_joined_bytes = rss;
    let joined = co.fleet.totals().joined;
    let per_connection = |after: Option<u64>| {
        let (before, after) = (rss_before?, after?);
        Some(after.saturating_sub(before) as f64 / joined.max(1) as f64)
    };
    summary.rss_per_connection_bytes = per_connection(rss);
    summary.rss_per_connection_end_bytes = per_connection(rss_end);
    let secs = (p1.t_us - p0.t_us) as f64 / 1e6;
    if let (Some(a), Some(b)) = (p0.server_cpu, p1.server_cpu) {
        summary.server_cpu_percent_idle = Some(b.saturating_sub(a) as f64 / 1e4 / secs.max(1e-9));
    }
}

/// Message scenarios: one window per step of the search (one window without `[step]`, never
/// retried); the reported window is the highest sustained step's, else the first.
fn measure_steps(co: &mut Coordinator, sc: &Scenario, report: &mut Report) -> Result<()> {
    let (mut search, dur) = match &sc.step {
        Some(st) => (
            StepSearch::new(st.rate_list(), st.stop_on_failure),
            st.duration,
        ),
        None => (StepSearch::new(vec![sc.rate], false), sc.duration),
    };
    let summary = &mut report.summary;
    let mut best: Option<(usize, Histogram<u64>)> = None;
    let mut first_hist = None;
    while let Some((rate, attempt)) = search.next() {
        let (mut w, h) = co.window(rate, dur)?;
        w.attempt = attempt;
        let ok = w.sustainable;
        if first_hist.is_none() {
            first_hist = Some(h.clone());
        }
        report.plot.push((
            format!(
                "{rate}/s{}{}",
                if attempt > 1 { " retry" } else { "" },
                if ok { "" } else { " (not sustained)" }
            ),
            h.clone(),
        ));
        summary.steps.push(w);
        if ok {
            best = Some((summary.steps.len() - 1, h));
        }
        if !keep_stepping(&mut search, rate, attempt, ok) {
            break;
        }
        let t = co.fleet.totals();
        if t.joined == t.dropped {
            eprintln!("every client was dropped; stopping");
            break;
        }
    }
    match best {
        Some((i, h)) => {
            summary.window = Some(summary.steps[i].clone());
            summary.highest_sustainable_rate = Some(summary.steps[i].rate);
            report.main_hist = h;
        }
        None => {
            summary.window = summary.steps.first().cloned();
            report.main_hist = first_hist.unwrap_or_else(stats::new_histogram);
        }
    }
    if sc.step.is_none() {
        summary.steps.clear();
    } else {
        eprintln!(
            "step search: highest sustainable rate {}; {}",
            summary
                .highest_sustainable_rate
                .map_or("none".into(), |r| format!("{r}/s")),
            search.describe_retries()
        );
        summary.step_retries = search.retries().to_vec();
    }
    Ok(())
}

/// Records a step's verdict and says it on stderr; false when the search stops here.
fn keep_stepping(search: &mut StepSearch, rate: f64, attempt: u32, ok: bool) -> bool {
    match search.record(ok) {
        Verdict::Retry => {
            eprintln!("step {rate}/s not sustained: measuring it once more before stopping")
        }
        Verdict::Sustained if attempt > 1 => {
            eprintln!("step {rate}/s sustained on retry: going on")
        }
        Verdict::Stop => {
            eprintln!("step {rate}/s not sustained twice: stopping");
            return false;
        }
        Verdict::Sustained | Verdict::NotSustained => {}
    }
    true
}

/// After the measured part, whatever its outcome: the last RSS figures, the slow clients' report,
/// the first error; stops the fleet and the subscriber.
fn finish(mut co: Coordinator, summary: &mut Summary, subscriber: Subscriber, result: &Result<()>) {
    summary.server_rss_after_bytes = sum_over(&co.server_pids, process_rss_bytes);
    summary.server_rss_max_bytes = co.rss_max.max(summary.server_rss_after_bytes);
    if let Some(slow) = co.slow.take() {
        let r = slow.finish();
        eprintln!(
            "slow clients: {} stalled; read after the run: {} close 1013, {:?} other closes, {} EOF without a close frame, {} still open; server slow-consumer closes {:?}",
            r.stalled, r.closed_1013, r.closed_other, r.eof_without_close, r.not_closed, r.server_slow_consumer_closes
        );
        summary.slow = Some(r);
    }
    // Children's first errors travel with their reports.
    let _ = co.fleet.refresh();
    summary.first_error = co.fleet.first_error().or_else(|| {
        subscriber
            .stats
            .first_error
            .lock()
            .ok()
            .and_then(|g| g.clone())
    });
    subscriber.stop.store(true, Relaxed);
    co.fleet.stop();
    if let Some(s) = subscriber.thread {
        let _ = s.join();
    }
    if let Err(e) = result {
        summary.first_error.get_or_insert_with(|| format!("{e:#}"));
    }
}
