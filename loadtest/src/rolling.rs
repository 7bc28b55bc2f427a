//! The `rolling-restart` scenario (issue 14): N phoenix-protocol clients over T topics on two
//! `channel` processes that this scenario starts itself, a publisher at R msgs/s round-robin over
//! the topics, and each process restarted in turn with SIGTERM while its clients reconnect (to the
//! same port once it is back, or to the other process meanwhile). Each message carries its
//! topic's sequence number; at the end every client's received sequence is checked: lost (a
//! number after the first it saw, up to the last published, never received), duplicated, out of
//! order.
//!
//! Two modes: `function` (the default) publishes with `FCALL channel_publish` and clients rejoin
//! with `since` (the last position they saw, as the README's phoenix.js code does); `plain`
//! publishes with `PUBLISH to:<topic>:msg` and clients rejoin without `since`: the same run
//! without history, to show what a restart loses otherwise.
//!
//! Recovery time: from a client seeing its socket close to the first message it receives after
//! its rejoin's `ok` that was published after the close (a live one, not a replayed one).
//!
//! Owns its processes: the two servers are killed when the run ends, however it ends.

use crate::net::{parse_http_url, parse_redis_url};
use crate::resp::{encode_command, parse_resp, Resp};
use crate::stamp::now_us;
use crate::token::{connect, TokenClient};
use crate::ws;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What to run.
#[derive(Debug, clap::Args)]
pub struct RollingArgs {
    #[arg(long)]
    pub channel_bin: PathBuf,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    #[arg(long, default_value = "loadtest-out")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub topics: usize,
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    #[arg(long)]
    pub plain: bool,
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Seconds of publishing before the first restart, between restarts, and after the last.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
}

const SECRET: &str = "rolling-restart-secret-0123456789abcdef";

/// The run's figures.
#[derive(Debug, Default, Serialize)]
pub struct RollingSummary {
    pub mode: String,
    pub clients: usize,
    pub topics: usize,
    pub rate: f64,
    pub published: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub clients_with_loss: usize,
    pub reconnects: u64,
    pub rejoins_recovered: u64,
    pub rejoins_not_recovered: u64,
    pub join_errors: u64,
    pub restarts: Vec<RestartRecord>,
    /// Close → first live message after the rejoin, ms.
    pub recovery_ms_p50: Option<f64>,
    pub recovery_ms_p99: Option<f64>,
    pub recovery_ms_max: Option<f64>,
    pub recovery_samples: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartRecord {
    pub process: usize,
    pub at_s: f64,
    pub stopped_after_s: f64,
    pub healthy_after_s: f64,
}

/// One client's account, filled by its task.
#[derive(Default)]
struct ClientLog {
    /// Sequence numbers received, in order.
    seqs: Vec<u64>,
    reconnects: u64,
    recovered: u64,
    not_recovered: u64,
    join_errors: u64,
    recovery_us: Vec<u64>,
}

struct Shared {
    stop: AtomicBool,
    joined: AtomicUsize,
    /// Per topic: the last sequence number Redis accepted, and when each was published.
    published_at: Vec<Mutex<Vec<u64>>>,
    published: AtomicU64,
}

fn spawn_server(args: &RollingArgs, port: u16, index: usize, generation: usize) -> Result<Child> {
    let log = std::fs::File::create(args.out.join(format!("server-{index}-{generation}.log")))?;
    Command::new(&args.channel_bin)
        .arg("serve")
        .arg("--port")
        .arg(port.to_string())
        .arg("--redis-url")
        .arg(&args.redis)
        .arg("--jwt-secret")
        .arg(SECRET)
        .arg("--shards")
        .arg(args.shards.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", args.channel_bin.display()))
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n > 12 && &buf[9..12] == b"200")
}

fn wait_healthy(port: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while !healthy(port) {
        if Instant::now() > deadline {
            bail!("the server on port {port} is not healthy within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Kills the servers when the run ends, however it ends.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: RollingArgs) -> Result<RollingSummary> {
    std::fs::create_dir_all(&args.out)?;
    let redis = parse_redis_url(&args.redis)?;
    let ports = [free_port()?, free_port()?];
    let mut servers = Servers(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        servers.0.push(spawn_server(&args, *port, i, 0)?);
    }
    for port in ports {
        wait_healthy(port, Duration::from_secs(10))?;
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        joined: AtomicUsize::new(0),
        published_at: (0..args.topics).map(|_| Mutex::new(Vec::new())).collect(),
        published: AtomicU64::new(0),
    });
    let logs: Vec<Arc<Mutex<ClientLog>>> = (0..args.clients)
        .map(|_| Arc::new(Mutex::new(ClientLog::default())))
        .collect();

    // The clients, on one current-thread runtime of their own.
    let clients = {
        let shared = Arc::clone(&shared);
        let logs = logs.clone();
        let (topics, plain) = (args.topics, args.plain);
        std::thread::Builder::new()
            .name("rolling-clients".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let local = tokio::task::LocalSet::new();
                    local
                        .run_until(async move {
                            let (addr, host) =
                                parse_http_url(&format!("http://127.0.0.1:{}", ports[0]))?;
                            let tokens = Rc::new(TokenClient::new(addr, host, None));
                            let mut tasks = Vec::new();
                            for (i, log) in logs.into_iter().enumerate() {
                                let topic = format!("rr:{}", i % topics);
                                let token = tokens.fetch(&topic, &format!("c{i}")).await?;
                                let home = i % 2;
                                let shared = Arc::clone(&shared);
                                tasks.push(tokio::task::spawn_local(client(
                                    i, topic, token, ports, home, plain, shared, log,
                                )));
                            }
                            for t in tasks {
                                let _ = t.await;
                            }
                            Ok::<(), anyhow::Error>(())
                        })
                        .await
                })
            })?
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.joined.load(Relaxed) < args.clients {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} clients joined within 60 s",
                shared.joined.load(Relaxed),
                args.clients
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("rolling-restart: {} clients joined", args.clients);

    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let shared = Arc::clone(&shared);
        let publishing = Arc::clone(&publishing);
        let (rate, topics, plain) = (args.rate, args.topics, args.plain);
        std::thread::Builder::new()
            .name("rolling-publisher".into())
            .spawn(move || publish(redis, rate, topics, plain, &shared, &publishing))?
    };

    let started = Instant::now();
    let settle = Duration::from_secs_f64(args.settle);
    let mut restarts = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        std::thread::sleep(settle);
        let at = started.elapsed();
        let child = &mut servers.0[index];
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = child.wait();
        let stopped = started.elapsed();
        eprintln!(
            "rolling-restart: process {index} stopped after {:?}",
            stopped - at
        );
        servers.0[index] = spawn_server(&args, *port, index, 1)?;
        wait_healthy(*port, Duration::from_secs(10))?;
        let healthy_at = started.elapsed();
        restarts.push(RestartRecord {
            process: index,
            at_s: at.as_secs_f64(),
            stopped_after_s: (stopped - at).as_secs_f64(),
            healthy_after_s: (healthy_at - at).as_secs_f64(),
        });
    }
    std::thread::sleep(settle);
    publishing.store(false, Relaxed);
    let _ = publisher.join();
    // Let what is in flight arrive.
    std::thread::sleep(Duration::from_secs(2));
    shared.stop.store(true, Relaxed);
    let _ = clients.join();

    let mut summary = tally(&args, &shared, &logs);
    summary.restarts = restarts;
    let json = serde_json::to_string_pretty(&summary)?;
    std::fs::write(args.out.join("summary.json"), &json)?;
    Ok(summary)
}

fn tally(args: &RollingArgs, shared: &Shared, logs: &[Arc<Mutex<ClientLog>>]) -> RollingSummary {
    let mut s = RollingSummary {
        mode: if args.plain { "plain" } else { "function" }.into(),
        clients: args.clients,
        topics: args.topics,
        rate: args.rate,
        published: shared.published.load(Relaxed),
        ..RollingSummary::default()
    };
    let mut recovery = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let Ok(log) = log.lock() else { continue };
        let topic = i % args.topics;
        let last = shared.published_at[topic]
            .lock()
            .map(|p| p.len() as u64)
            .unwrap_or(0);
        s.reconnects += log.reconnects;
        s.rejoins_recovered += log.recovered;
        s.rejoins_not_recovered += log.not_recovered;
        s.join_errors += log.join_errors;
        recovery.extend(log.recovery_us.iter().copied());
        let Some(&first) = log.seqs.first() else {
            s.expected_deliveries += last;
            s.lost += last;
            s.clients_with_loss += 1;
            continue;
        };
        let mut seen = vec![0u32; (last + 1) as usize];
        let mut previous = 0;
        for &seq in &log.seqs {
            if let Some(slot) = seen.get_mut(seq as usize) {
                *slot += 1;
            }
            if seq <= previous {
                s.out_of_order += 1;
            }
            previous = seq;
        }
        s.delivered += log.seqs.len() as u64;
        let expected = last.saturating_sub(first) + 1;
        s.expected_deliveries += expected;
        let lost = (first..=last).filter(|&q| seen[q as usize] == 0).count() as u64;
        s.lost += lost;
        if lost > 0 {
            s.clients_with_loss += 1;
        }
        s.duplicated += seen
            .iter()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum::<u64>();
    }
    recovery.sort_unstable();
    let pick = |q: f64| -> Option<f64> {
        let n = recovery.len();
        (n > 0).then(|| recovery[((n - 1) as f64 * q).round() as usize] as f64 / 1000.0)
    };
    s.recovery_ms_p50 = pick(0.5);
    s.recovery_ms_p99 = pick(0.99);
    s.recovery_ms_max = pick(1.0);
    s.recovery_samples = recovery.len();
    s
}

/// Publishes `{"s": <seq>}` as event `msg` round-robin over the topics at `rate`/s.
fn publish(
    redis: SocketAddr,
    rate: f64,
    topics: usize,
    plain: bool,
    shared: &Shared,
    publishing: &AtomicBool,
) {
    let Ok(mut conn) = TcpStream::connect(redis) else {
        eprintln!("rolling-restart: cannot connect the publisher to Redis");
        return;
    };
    let _ = conn.set_nodelay(true);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut n: u64 = 0;
    while publishing.load(Relaxed) {
        let topic = (n % topics as u64) as usize;
        n += 1;
        let seq = shared.published_at[topic]
            .lock()
            .map(|p| p.len() as u64 + 1)
            .unwrap_or(0);
        let name = format!("rr:{topic}");
        let payload = format!("{{\"s\":{seq}}}");
        let mut cmd = Vec::new();
        if plain {
            let channel = format!("to:{name}:msg");
            encode_command(
                &mut cmd,
                &[b"PUBLISH", channel.as_bytes(), payload.as_bytes()],
            );
        } else {
            encode_command(
                &mut cmd,
                &[
                    b"FCALL",
                    b"channel_publish",
                    b"1",
                    name.as_bytes(),
                    b"msg",
                    payload.as_bytes(),
                ],
            );
        }
        if conn.write_all(&cmd).is_err() {
            return;
        }
        // One reply.
        let ok = loop {
            match parse_resp(&buf) {
                Ok(Some((value, used))) => {
                    let ok = !matches!(value, Resp::Error(_));
                    buf.drain(..used);
                    break ok;
                }
                Ok(None) => match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                },
                Err(_) => return,
            }
        };
        if ok {
            if let Ok(mut p) = shared.published_at[topic].lock() {
                p.push(now_us());
            }
            shared.published.fetch_add(1, Relaxed);
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// One client: join (with `since` after the first time, unless plain), read, and on a close
/// reconnect to its home process, or to the other one while its home is away.
#[allow(clippy::too_many_arguments)]
async fn client(
    id: usize,
    topic: String,
    token: String,
    ports: [u16; 2],
    home: usize,
    plain: bool,
    shared: Arc<Shared>,
    log: Arc<Mutex<ClientLog>>,
) {
    let since: RefCell<Option<String>> = RefCell::new(None);
    let mut first = true;
    let mut closed_at: Option<u64> = None;
    let mut attempt = 0usize;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    'connect: while !shared.stop.load(Relaxed) {
        let port = ports[(home + attempt) % 2];
        attempt += 1;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let Ok(mut stream) = connect(addr, None).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let req = ws::upgrade_request("127.0.0.1", "/websocket?vsn=2.0.0", (id as u64) ^ now_us());
        if stream.write_all(req.as_bytes()).await.is_err() {
            continue;
        }
        buf.clear();
        let head = loop {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => continue 'connect,
                Ok(_) => {}
            }
            match ws::parse_upgrade_response(&buf) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'connect;
                }
            }
        };
        buf.drain(..head);
        let payload = match (plain, since.borrow().as_deref()) {
            (true, _) => serde_json::json!({ "token": token }),
            (false, s) => serde_json::json!({ "token": token, "since": s }),
        };
        let join = serde_json::json!(["1", "1", topic, "phx_join", payload]).to_string();
        let mut out = Vec::new();
        ws::encode_client_frame(&mut out, ws::OP_TEXT, join.as_bytes(), [1, 2, 3, 4]);
        if stream.write_all(&out).await.is_err() {
            continue;
        }
        let mut joined = false;
        let mut awaiting_live = closed_at;
        loop {
            if shared.stop.load(Relaxed) {
                return;
            }
            let read =
                tokio::time::timeout(Duration::from_millis(200), stream.read_buf(&mut buf)).await;
            match read {
                Err(_) => continue, // look at the stop flag
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
            }
            let mut pos = 0;
            let mut close = false;
            while let Ok(Some(h)) = ws::parse_header(&buf[pos..]) {
                let total = h.total_len() as usize;
                if buf.len() - pos < total {
                    break;
                }
                let frame = &buf[pos + h.header_len..pos + total];
                pos += total;
                if h.opcode == ws::OP_CLOSE {
                    close = true;
                    break;
                }
                if h.opcode != ws::OP_TEXT {
                    continue;
                }
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(frame) else {
                    continue;
                };
                match value.get(3).and_then(|e| e.as_str()) {
                    Some("phx_reply") if value[1] == "1" => {
                        let Ok(mut l) = log.lock() else { return };
                        if value[4]["status"] == "ok" {
                            joined = true;
                            if first {
                                first = false;
                                shared.joined.fetch_add(1, Relaxed);
                                if let Some(p) = value[4]["response"]["position"].as_str() {
                                    *since.borrow_mut() = Some(p.to_owned());
                                }
                            } else {
                                l.reconnects += 1;
                                match value[4]["response"]["recovered"].as_bool() {
                                    Some(true) => l.recovered += 1,
                                    Some(false) => l.not_recovered += 1,
                                    None => {}
                                }
                            }
                        } else {
                            l.join_errors += 1;
                            close = true;
                            break;
                        }
                    }
                    Some("msg") => {
                        let Some(seq) = value[4]["s"].as_u64() else {
                            continue;
                        };
                        if let Some(p) = value[1].as_str() {
                            *since.borrow_mut() = Some(p.to_owned());
                        }
                        let Ok(mut l) = log.lock() else { return };
                        l.seqs.push(seq);
                        if let (Some(closed), true) = (awaiting_live, joined) {
                            // The first message published after the close: live again.
                            let published = shared.published_at[topic_index(&topic)]
                                .lock()
                                .ok()
                                .and_then(|p| p.get((seq as usize).checked_sub(1)?).copied());
                            if published.is_some_and(|at| at >= closed) {
                                l.recovery_us.push(now_us().saturating_sub(closed));
                                awaiting_live = None;
                            }
                        }
                    }
                    _ => {}
                }
            }
            buf.drain(..pos);
            if close {
                break;
            }
        }
        closed_at = Some(now_us());
        attempt = 0;
        // The home process restarts on its port: try it first, the other one next.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn topic_index(topic: &str) -> usize {
    topic
        .rsplit(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_losses_duplicates_and_disorder_per_client() {
        let args = RollingArgs {
            channel_bin: PathBuf::new(),
            redis: String::new(),
            out: PathBuf::new(),
            clients: 3,
            topics: 1,
            rate: 1.0,
            plain: false,
            shards: 1,
            settle: 1.0,
        };
        let shared = Shared {
            stop: AtomicBool::new(false),
            joined: AtomicUsize::new(0),
            published_at: vec![Mutex::new(vec![10, 20, 30, 40, 50])],
            published: AtomicU64::new(5),
        };
        let log = |seqs: Vec<u64>| {
            Arc::new(Mutex::new(ClientLog {
                seqs,
                recovery_us: vec![2_000],
                ..ClientLog::default()
            }))
        };
        let logs = vec![log(vec![2, 3, 3, 5, 4]), log(vec![]), log(vec![1, 2, 4, 5])];
        let s = tally(&args, &shared, &logs);
        assert_eq!(s.published, 5);
        // Client 0 from 2 to 5: nothing lost; client 1: all 5; client 2: 3 lost.
        assert_eq!(s.expected_deliveries, 4 + 5 + 5);
        assert_eq!(s.lost, 5 + 1);
        assert_eq!(s.clients_with_loss, 2);
        assert_eq!(s.duplicated, 1);
        assert_eq!(s.out_of_order, 2, "the second 3, and 4 after 5");
        assert_eq!(s.delivered, 9);
        assert_eq!(s.recovery_ms_p50, Some(2.0));
    }
}
