//! The load side of a run seen as one: this process's load threads plus any `loadtest worker`
//! child processes (`--procs N`), each holding a slice of the clients with its own source
//! addresses, so that a scenario can hold more sockets than one process's file limit allows.
//!
//! The coordinator (`run.rs`) only talks to a [`Fleet`]: counters are summed, histograms merged
//! exactly (children send them HdrHistogram-V2-serialised, base64), windows and push rates are
//! applied everywhere before they start.
//!
//! Protocol with a child, one JSON line per message: the parent writes a [`WorkerSpec`] and then
//! [`ToWorker`] commands on the child's stdin; the child writes [`FromWorker`] lines on its stdout:
//! a `Status` every [`STATUS_EVERY`] (progress, joins, drain), and an `Ack` or `Report` answering
//! each command by its sequence number. Stdin closing means stop. Children print nothing else on
//! stdout; their stderr is the parent's.

use crate::client::{run_thread, ClientSpec, RunShared, ServerAddr, ThreadPlan};
use crate::redis::WindowClock;
use crate::scenario::{Kind, Scenario};
use crate::stats::{
    merged_join_latency, merged_latency, own_cpu_us, process_cpu_us, totals, ThreadStats, Totals,
};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a child sends its counters.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// How long a child may take to answer a command.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// What a child process is asked to run: its share of the clients is every client `i` with
/// `i % procs == proc_index`.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub scenario: Scenario,
    /// The server processes' URLs (one but for the cluster kind).
    pub urls: Vec<String>,
    pub proc_index: usize,
    pub procs: usize,
    pub source_ips: Vec<IpAddr>,
}

/// Parent → child.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Clear the window counters and measure stamps in `[start_us, end_us)`.
    Window {
        seq: u64,
        start_us: u64,
        end_us: u64,
    },
    /// Total push rate ×1000 (upstream), spread over all clients of the run.
    PushRate { seq: u64, milli: u64 },
    /// Send counters and histograms now.
    Report { seq: u64 },
}

/// Child → parent.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    Status {
        totals: Totals,
        live: Vec<i64>,
    },
    Ack {
        seq: u64,
    },
    Report {
        seq: u64,
        totals: Totals,
        live: Vec<i64>,
        /// Window latency, V2-serialised, base64.
        latency: String,
        join_latency: String,
        first_error: Option<String>,
    },
}

/// The clients' view of the run, shared by this process's load threads.
pub fn run_shared(sc: &Scenario, servers: Vec<ServerAddr>, source_ips: Vec<IpAddr>) -> RunShared {
    RunShared {
        servers,
        ws_path: sc.ws_path.clone(),
        join_since: sc.join_since.as_ref().map(|s| match s.as_str() {
            "null" => serde_json::Value::Null,
            position => serde_json::Value::String(position.to_owned()),
        }),
        event: sc.event.clone(),
        message_bytes: sc.message_bytes,
        join_timeout: Duration::from_secs_f64(sc.join_timeout),
        heartbeat: Duration::from_secs_f64(sc.heartbeat),
        source_ips,
        push_rate_milli: AtomicU64::new(0),
        // Pushers count every client of the run (all processes) so that each client's share of
        // the total rate is the same whichever process it lives in.
        pushers: if sc.kind == Kind::Upstream {
            sc.clients
        } else {
            0
        },
        window: Arc::new(WindowClock::default()),
        live_per_topic: (0..sc.topics).map(|_| AtomicI64::new(0)).collect(),
    }
}

/// Load threads of this process.
pub struct LocalLoad {
    pub stats: Vec<Arc<ThreadStats>>,
    pub shared: Arc<RunShared>,
    control: tokio::sync::watch::Sender<u64>,
    stop: tokio::sync::watch::Sender<bool>,
    handles: Vec<JoinHandle<Result<()>>>,
}

impl LocalLoad {
    /// Starts the load threads for the clients `mine` (global indices); they begin joining at once.
    pub fn start(sc: &Scenario, mine: Vec<usize>, shared: Arc<RunShared>) -> Result<LocalLoad> {
        let threads = if sc.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            sc.threads
        };
        let threads = threads.min(mine.len()).max(1);
        let (control, control_rx) = tokio::sync::watch::channel(0u64);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let stats: Vec<Arc<ThreadStats>> = (0..threads)
            .map(|_| Arc::new(ThreadStats::default()))
            .collect();
        let mut per_thread: Vec<Vec<ClientSpec>> = (0..threads).map(|_| Vec::new()).collect();
        for (n, i) in mine.into_iter().enumerate() {
            let t = sc.topic_of(i);
            per_thread[n % threads].push(ClientSpec {
                index: i,
                topic_index: t,
                topic: sc.topic_name(t),
                server: sc.server_of_topic(t),
            });
        }
        let in_flight = sc.join_in_flight.div_ceil(threads).max(1);
        let mut handles = Vec::new();
        for (i, clients) in per_thread.into_iter().enumerate() {
            let plan = ThreadPlan {
                thread: i,
                clients,
                join_in_flight: in_flight,
                stats: stats[i].clone(),
                shared: shared.clone(),
                control: control_rx.clone(),
                stop: stop_rx.clone(),
            };
            handles.push(
                std::thread::Builder::new()
                    .name(format!("lt-load-{i}"))
                    .spawn(move || run_thread(plan))?,
            );
        }
        Ok(LocalLoad {
            stats,
            shared,
            control,
            stop,
            handles,
        })
    }

    fn begin_window(&self, start_us: u64, end_us: u64) {
        for s in &self.stats {
            s.reset_window();
        }
        let w = &self.shared.window;
        // Never expose a window with the new start and the old end.
        w.end_us.store(u64::MAX, Relaxed);
        w.start_us.store(start_us, Relaxed);
        w.end_us.store(end_us, Relaxed);
    }

    fn set_push_rate(&self, milli: u64) {
        self.shared.push_rate_milli.store(milli, Relaxed);
        self.control.send_modify(|g| *g += 1);
    }

    fn live(&self) -> Vec<i64> {
        self.shared
            .live_per_topic
            .iter()
            .map(|a| a.load(Relaxed))
            .collect()
    }

    fn first_error(&self) -> Option<String> {
        self.stats
            .iter()
            .find_map(|s| s.first_error.lock().ok().and_then(|g| g.clone()))
    }

    /// Stops the threads (dropping their runtimes closes every socket) and waits for them.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("load thread failed: {e:#}"),
                Err(_) => eprintln!("load thread panicked"),
            }
        }
    }
}

/// `http://host:port` URLs → the clients' connect addresses and Host headers.
pub fn server_addrs(urls: &[String]) -> Result<Vec<ServerAddr>> {
    urls.iter()
        .map(|u| {
            let (addr, host) = crate::net::parse_http_url(u)?;
            Ok(ServerAddr { addr, host })
        })
        .collect()
}

fn encode_hist(h: &Histogram<u64>) -> Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow!("serialising a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

fn decode_hist(s: &str) -> Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow!("reading a worker's histogram: {e:?}"))
}

/// What the parent last heard from one child.
#[derive(Default)]
struct RemoteState {
    totals: Totals,
    live: Vec<i64>,
    latency: Option<Histogram<u64>>,
    join_latency: Option<Histogram<u64>>,
    first_error: Option<String>,
    /// Set when the child's stdout ended (it exited or crashed).
    gone: bool,
}

enum Reply {
    Ack(u64),
    Report(u64),
}

/// One `loadtest worker` child.
struct Remote {
    index: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    state: Arc<Mutex<RemoteState>>,
    replies: Receiver<Reply>,
    reader: Option<JoinHandle<()>>,
}

impl Remote {
    fn spawn(spec: &WorkerSpec) -> Result<Remote> {
        let exe = std::env::current_exe().context("finding the loadtest executable")?;
        let mut child = Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning a loadtest worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        writeln!(stdin, "{}", serde_json::to_string(spec)?)?;
        stdin.flush()?;
        let state = Arc::new(Mutex::new(RemoteState::default()));
        let (tx, replies) = mpsc::channel();
        let st = state.clone();
        let index = spec.proc_index;
        let reader = std::thread::Builder::new()
            .name(format!("lt-worker-{index}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg: FromWorker = match serde_json::from_str(&line) {
                        Ok(m) => m,
                        Err(e) => {
                            eprintln!("worker {index}: unreadable line ({e}): {line:.200}");
                            continue;
                        }
                    };
                    let Ok(mut s) = st.lock() else { break };
                    match msg {
                        FromWorker::Status { totals, live } => {
                            s.totals = totals;
                            s.live = live;
                        }
                        FromWorker::Ack { seq } => {
                            let _ = tx.send(Reply::Ack(seq));
                        }
                        FromWorker::Report {
                            seq,
                            totals,
                            live,
                            latency,
                            join_latency,
                            first_error,
                        } => {
                            s.totals = totals;
                            s.live = live;
                            match (decode_hist(&latency), decode_hist(&join_latency)) {
                                (Ok(l), Ok(j)) => {
                                    s.latency = Some(l);
                                    s.join_latency = Some(j);
                                }
                                (Err(e), _) | (_, Err(e)) => eprintln!("worker {index}: {e:#}"),
                            }
                            s.first_error = first_error;
                            let _ = tx.send(Reply::Report(seq));
                        }
                    }
                }
                if let Ok(mut s) = st.lock() {
                    s.gone = true;
                }
            })?;
        Ok(Remote {
            index,
            child,
            stdin: Some(stdin),
            state,
            replies,
            reader: Some(reader),
        })
    }

    fn send(&mut self, cmd: &ToWorker) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("worker {} already stopped", self.index))?;
        writeln!(stdin, "{}", serde_json::to_string(cmd)?)
            .and_then(|()| stdin.flush())
            .with_context(|| format!("worker {} is gone", self.index))
    }

    /// Waits for the answer to command `seq`.
    fn wait(&self, seq: u64) -> Result<()> {
        loop {
            match self.replies.recv_timeout(REPLY_TIMEOUT) {
                Ok(Reply::Ack(s)) | Ok(Reply::Report(s)) if s == seq => return Ok(()),
                Ok(_) => continue,
                Err(_) => bail!(
                    "worker {} did not answer within {REPLY_TIMEOUT:?} (exited?)",
                    self.index
                ),
            }
        }
    }

    fn stop(mut self) {
        // Closing stdin is the stop signal.
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("worker {} exited with {status}", self.index);
                    }
                    break;
                }
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("worker {} did not stop; killing it", self.index);
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// This process's load threads and its worker processes.
pub struct Fleet {
    pub local: LocalLoad,
    remotes: Vec<Remote>,
    seq: u64,
}

impl Fleet {
    /// Starts the local threads for `mine` and one child per entry of `children`.
    pub fn start(
        sc: &Scenario,
        mine: Vec<usize>,
        shared: Arc<RunShared>,
        children: &[WorkerSpec],
    ) -> Result<Fleet> {
        let mut remotes = Vec::new();
        for spec in children {
            remotes.push(Remote::spawn(spec)?);
        }
        let local = LocalLoad::start(sc, mine, shared)?;
        Ok(Fleet {
            local,
            remotes,
            seq: 0,
        })
    }

    /// Counters of every process (children's as of their last status, at most 100 ms old, or as
    /// of the last [`Fleet::refresh`]).
    pub fn totals(&self) -> Totals {
        let mut t = totals(&self.local.stats);
        for r in &self.remotes {
            if let Ok(s) = r.state.lock() {
                t.add(&s.totals);
            }
        }
        t
    }

    /// Joined and connected clients per topic index, over every process.
    pub fn live_per_topic(&self) -> Vec<i64> {
        let mut live = self.local.live();
        for r in &self.remotes {
            if let Ok(s) = r.state.lock() {
                for (a, b) in live.iter_mut().zip(&s.live) {
                    *a += b;
                }
            }
        }
        live
    }

    /// True when some worker process has exited.
    pub fn lost_worker(&self) -> Option<usize> {
        self.remotes
            .iter()
            .find(|r| r.state.lock().map_or(true, |s| s.gone))
            .map(|r| r.index)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Sends `cmd(seq)` to every child, then waits for every answer.
    fn broadcast(&mut self, cmd: impl Fn(u64) -> ToWorker) -> Result<()> {
        let seq = self.next_seq();
        for r in &mut self.remotes {
            r.send(&cmd(seq))?;
        }
        for r in &self.remotes {
            r.wait(seq)?;
        }
        Ok(())
    }

    /// Clears the window counters everywhere and sets the window, before returning.
    pub fn begin_window(&mut self, start_us: u64, end_us: u64) -> Result<()> {
        self.local.begin_window(start_us, end_us);
        self.broadcast(|seq| ToWorker::Window {
            seq,
            start_us,
            end_us,
        })
    }

    pub fn set_push_rate(&mut self, milli: u64) -> Result<()> {
        self.local.set_push_rate(milli);
        self.broadcast(|seq| ToWorker::PushRate { seq, milli })
    }

    /// Fetches exact counters and histograms from every child.
    pub fn refresh(&mut self) -> Result<()> {
        self.broadcast(|seq| ToWorker::Report { seq })
    }

    /// The window latency of every process, merged (call [`Fleet::refresh`] first).
    pub fn latency(&self) -> Histogram<u64> {
        let mut h = merged_latency(&self.local.stats);
        for r in &self.remotes {
            if let Ok(s) = r.state.lock() {
                if let Some(l) = &s.latency {
                    let _ = h.add(l);
                }
            }
        }
        h
    }

    /// The join latency of every process, merged (call [`Fleet::refresh`] first).
    pub fn join_latency(&self) -> Histogram<u64> {
        let mut h = merged_join_latency(&self.local.stats);
        for r in &self.remotes {
            if let Ok(s) = r.state.lock() {
                if let Some(l) = &s.join_latency {
                    let _ = h.add(l);
                }
            }
        }
        h
    }

    /// CPU time of the whole load side in µs: this process (getrusage) and its children
    /// (`/proc/<pid>/stat`, 10 ms resolution).
    pub fn cpu_us(&self) -> u64 {
        own_cpu_us()
            + self
                .remotes
                .iter()
                .filter_map(|r| process_cpu_us(r.child.id()))
                .sum::<u64>()
    }

    pub fn first_error(&self) -> Option<String> {
        self.local.first_error().or_else(|| {
            self.remotes
                .iter()
                .find_map(|r| r.state.lock().ok().and_then(|s| s.first_error.clone()))
        })
    }

    /// Stops every child and every local thread.
    pub fn stop(self) {
        for r in self.remotes {
            r.stop();
        }
        self.local.stop();
    }
}

/// `loadtest worker`: the child side. Reads its [`WorkerSpec`] and then commands from stdin,
/// runs its clients, and answers on stdout until stdin closes.
pub fn worker_main() -> Result<()> {
    crate::net::raise_fd_limit();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let first = lines.next().context("no worker spec on stdin")??;
    let spec: WorkerSpec = serde_json::from_str(&first).context("parsing the worker spec")?;
    let sc = spec.scenario;
    let servers = server_addrs(&spec.urls)?;
    let shared = Arc::new(run_shared(&sc, servers, spec.source_ips));
    let mine: Vec<usize> = (0..sc.clients)
        .filter(|i| i % spec.procs == spec.proc_index)
        .collect();
    let local = Arc::new(LocalLoad::start(&sc, mine, shared)?);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = {
        let out = out.clone();
        move |m: &FromWorker| -> Result<()> {
            let line = serde_json::to_string(m)?;
            let mut o = out.lock().map_err(|_| anyhow!("stdout lock poisoned"))?;
            writeln!(o, "{line}")?;
            o.flush()?;
            Ok(())
        }
    };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let status = {
        let (local, say, done) = (local.clone(), say.clone(), done.clone());
        std::thread::Builder::new()
            .name("lt-status".into())
            .spawn(move || {
                while !done.load(Relaxed) {
                    let m = FromWorker::Status {
                        totals: totals(&local.stats),
                        live: local.live(),
                    };
                    if say(&m).is_err() {
                        break;
                    }
                    std::thread::sleep(STATUS_EVERY);
                }
            })?
    };
    let result = (|| -> Result<()> {
        for line in lines {
            let line = line?;
            match serde_json::from_str::<ToWorker>(&line).context("parsing a command")? {
                ToWorker::Window {
                    seq,
                    start_us,
                    end_us,
                } => {
                    local.begin_window(start_us, end_us);
                    say(&FromWorker::Ack { seq })?;
                }
                ToWorker::PushRate { seq, milli } => {
                    local.set_push_rate(milli);
                    say(&FromWorker::Ack { seq })?;
                }
                ToWorker::Report { seq } => {
                    say(&FromWorker::Report {
                        seq,
                        totals: totals(&local.stats),
                        live: local.live(),
                        latency: encode_hist(&merged_latency(&local.stats))?,
                        join_latency: encode_hist(&merged_join_latency(&local.stats))?,
                        first_error: local.first_error(),
                    })?;
                }
            }
        }
        Ok(())
    })();
    done.store(true, Relaxed);
    let _ = status.join();
    match Arc::try_unwrap(local) {
        Ok(l) => l.stop(),
        Err(_) => eprintln!("worker: load threads still referenced; exiting without joining"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    #[test]
    fn histograms_survive_the_trip_to_the_parent_exactly() {
        let mut h = stats::new_histogram();
        for v in [1u64, 250, 999, 12_345, 3_000_000] {
            h.record(v).unwrap();
        }
        let back = decode_hist(&encode_hist(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        let mut merged = stats::new_histogram();
        merged.add(&back).unwrap();
        merged.add(&h).unwrap();
        assert_eq!(merged.len(), 10);
        assert_eq!(merged.max(), h.max());
    }

    #[test]
    fn messages_round_trip_as_json_lines() {
        let m = FromWorker::Status {
            totals: Totals {
                joined: 3,
                ..Default::default()
            },
            live: vec![1, 2],
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(!line.contains('\n'));
        match serde_json::from_str(&line).unwrap() {
            FromWorker::Status { totals, live } => {
                assert_eq!(totals.joined, 3);
                assert_eq!(live, vec![1, 2]);
            }
            _ => panic!("wrong variant"),
        }
        let spec = WorkerSpec {
            scenario: Scenario::parse("kind = \"fanout\"\nclients = 7\n", "f").unwrap(),
            urls: vec!["http://127.0.0.1:1".into()],
            proc_index: 1,
            procs: 2,
            source_ips: vec!["127.0.0.2".parse().unwrap()],
        };
        let back: WorkerSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back.scenario, spec.scenario);
    }
}
