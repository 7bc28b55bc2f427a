//! Slow consumers: sockets that join a topic, read for a while, then stop reading entirely, so
//! that the server's outbound queue for them fills and the server closes them (1013 "slow
//! consumer").
//!
//! Owns the steps of one slow client (join with a small receive buffer, read while told to, find
//! out later how the socket ended), the group of them that a fanout run adds to its measured topic
//! ([`SlowGroup`]), and the reading of the server's `channel_slow_consumer_closes_total`. The soak
//! runs the same steps on a topic of its own. A slow client never counts in delivered, lost or
//! latency figures, and never reads again once stopped until it is told to look for its close.

use crate::conn::Ws;
use crate::scenario::Scenario;
use crate::token::TokenClient;
use crate::ws;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{timeout, timeout_at, Instant};

/// How long a fanout slow client reads, after the run, for what its socket holds.
const ENDING_WAIT: Duration = Duration::from_secs(3);

/// How a slow client's socket ended, as seen when it read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code (1013 from a server that closed a slow consumer).
    Closed(u16),
    /// EOF or an error without a close frame: the server cut the socket, e.g. when the close
    /// frame could not be written within its close grace because nobody was reading.
    Eof,
    /// Still open, and no close frame, when the wait ended.
    NotClosed,
}

/// Opens a socket with a small receive buffer, joins `topic` with `token` and waits up to
/// `join_timeout` for the `ok`.
pub async fn join(
    addr: SocketAddr,
    host: &str,
    ws_path: &str,
    topic: &str,
    token: &str,
    seed: u64,
    join_timeout: Duration,
) -> Result<Ws> {
    let conn = Ws::open(addr, host, ws_path, seed, true).await?;
    join_on(conn, topic, token, join_timeout).await
}

/// Joins `topic` with `token` on an open socket and waits up to `join_timeout` for the `ok`.
pub async fn join_on(mut conn: Ws, topic: &str, token: &str, join_timeout: Duration) -> Result<Ws> {
    let join =
        serde_json::to_string(&serde_json::json!(["1", "1", topic, "phx_join", {"token": token}]))?;
    conn.send(ws::OP_TEXT, join.as_bytes()).await?;
    let deadline = Instant::now() + join_timeout;
    loop {
        match timeout_at(deadline, conn.read()).await {
            Err(_) => bail!("join of {topic} not answered in {join_timeout:?}"),
            Ok(r) => {
                if !r? {
                    bail!("closed before the join reply");
                }
            }
        }
        let input = conn.process(None).await?;
        if let Some((_, ok, reason)) = input.replies.iter().find(|(r, _, _)| r == "1") {
            if *ok {
                return Ok(conn);
            }
            bail!("join of {topic} refused: {reason:?}");
        }
        if let Some(code) = input.close {
            bail!("close {code} before the join reply");
        }
    }
}

/// Reads, and drops, what arrives while `keep_reading()` holds (asked at least every 50 ms).
/// An error when the server closes the socket meanwhile.
pub async fn read_while(conn: &mut Ws, mut keep_reading: impl FnMut() -> bool) -> Result<()> {
    while keep_reading() {
        match timeout(Duration::from_millis(50), conn.read()).await {
            Err(_) => continue,
            Ok(r) => {
                if !r? {
                    bail!("closed before it stopped reading");
                }
            }
        }
        if let Some(code) = conn.process(None).await?.close {
            bail!("close {code} before it stopped reading");
        }
    }
    Ok(())
}

/// Reads what the socket still holds, for up to `within`, and says how it ended; a close frame
/// is answered.
pub async fn ending(conn: &mut Ws, within: Duration) -> Result<Ending> {
    let deadline = Instant::now() + within;
    loop {
        match timeout_at(deadline, conn.read()).await {
            Err(_) => return Ok(Ending::NotClosed),
            Ok(Err(_)) | Ok(Ok(false)) => return Ok(Ending::Eof),
            Ok(Ok(true)) => {}
        }
        if let Some(code) = conn.process(None).await?.close {
            let _ = conn.send(ws::OP_CLOSE, &code.to_be_bytes()).await;
            return Ok(Ending::Closed(code));
        }
    }
}

/// The server's `channel_slow_consumer_closes_total` per shard label, from `GET /metrics`
/// (None when it has no such metric, e.g. Tangram).
pub fn server_closes(addr: SocketAddr, host: &str) -> Option<BTreeMap<String, u64>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body);
    parse_server_closes(&String::from_utf8_lossy(&body))
}

/// The `channel_slow_consumer_closes_total` samples of a Prometheus text, by `shard` label
/// (`""` for a sample without one).
pub fn parse_server_closes(text: &str) -> Option<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("channel_slow_consumer_closes_total") else {
            continue;
        };
        let shard = rest
            .split_once("shard=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map_or("", |(s, _)| s);
        let v = rest.split_whitespace().last()?.parse::<f64>().ok()?;
        *out.entry(shard.to_string()).or_default() += v as u64;
    }
    (!out.is_empty()).then_some(out)
}

/// Per shard, `after - before`.
pub fn closes_since(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .collect()
}

/// What the slow clients of a fanout run did (`summary.json`, `slow`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlowReport {
    /// Slow clients asked for (`slow_clients`).
    pub clients: usize,
    pub joined: u64,
    pub join_failed: u64,
    /// Joined slow clients per server shard: the `x-channel-shard` of their 101 (`"?"`: none).
    pub per_shard: BTreeMap<String, u64>,
    /// Joined clients that read for `slow_read_for` s of the warmup, then stopped reading.
    pub stalled: u64,
    /// Closed by the server while they were still reading (expected 0).
    pub closed_while_reading: u64,
    /// How each stalled client found its socket when it read again, after the drain.
    pub closed_1013: u64,
    pub closed_other: BTreeMap<String, u64>,
    pub eof_without_close: u64,
    pub not_closed: u64,
    /// Increase of the server's `channel_slow_consumer_closes_total` per shard over the run
    /// (None: no such metric). Counts every slow-consumer close, a measured client's too.
    pub server_slow_consumer_closes: Option<BTreeMap<String, u64>>,
    pub first_error: Option<String>,
}

/// What the slow clients' thread and the coordinator share.
#[derive(Default)]
struct GroupState {
    stop_reading: AtomicBool,
    look_for_close: AtomicBool,
    report: Mutex<SlowReport>,
}

impl GroupState {
    fn update(&self, f: impl FnOnce(&mut SlowReport)) {
        if let Ok(mut r) = self.report.lock() {
            f(&mut r);
        }
    }

    fn fail(&self, what: &str, e: anyhow::Error) {
        self.update(|r| {
            r.first_error
                .get_or_insert_with(|| format!("{what}: {e:#}"));
        });
    }
}

/// The slow clients of a fanout run, on the measured topic: they join after the measured
/// clients, read until told to stop (`slow_read_for` s into the warmup), and look for their
/// close frame only when told to (after the drain).
pub struct SlowGroup {
    addr: SocketAddr,
    host: String,
    state: Arc<GroupState>,
    closes_before: Option<BTreeMap<String, u64>>,
    thread: std::thread::JoinHandle<()>,
}

impl SlowGroup {
    /// Starts `sc.slow_clients` slow clients on `topic` (one thread, one current-thread runtime)
    /// and returns once each has joined or failed to.
    pub fn start(sc: &Scenario, addr: SocketAddr, host: String, topic: String) -> Result<Self> {
        let n = sc.slow_clients;
        let state = Arc::new(GroupState::default());
        state.update(|r| r.clients = n);
        let closes_before = server_closes(addr, &host);
        let target = Arc::new(Target {
            addr,
            host: host.clone(),
            ws_path: sc.ws_path.clone(),
            topic,
            join_timeout: Duration::from_secs_f64(sc.join_timeout),
        });
        let join_timeout = target.join_timeout;
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("lt-slow".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return st.fail("runtime", e.into()),
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let tokens = Rc::new(TokenClient::new(addr, target.host.clone(), None));
                    let tasks: Vec<_> = (0..n)
                        .map(|i| {
                            let (st, tokens, target) = (st.clone(), tokens.clone(), target.clone());
                            tokio::task::spawn_local(async move {
                                slow_client(target.join(i, &tokens).await, &st).await;
                            })
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })?;
        let deadline = std::time::Instant::now() + join_timeout + Duration::from_secs(5);
        loop {
            let done = state
                .report
                .lock()
                .map(|r| r.joined + r.join_failed)
                .map_err(|_| anyhow!("slow-client report poisoned"))?;
            if done >= n as u64 || thread.is_finished() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(SlowGroup {
            addr,
            host,
            state,
            closes_before,
            thread,
        })
    }

    /// Joined slow clients per shard, so far.
    pub fn per_shard(&self) -> BTreeMap<String, u64> {
        self.state
            .report
            .lock()
            .map(|r| r.per_shard.clone())
            .unwrap_or_default()
    }

    /// From now on no slow client reads.
    pub fn stop_reading(&self) {
        self.state.stop_reading.store(true, Relaxed);
    }

    /// Lets every slow client read what its socket holds and returns what they found.
    pub fn finish(self) -> SlowReport {
        self.stop_reading();
        self.state.look_for_close.store(true, Relaxed);
        if self.thread.join().is_err() {
            self.state
                .fail("slow clients", anyhow!("the slow-client thread panicked"));
        }
        let mut report = self
            .state
            .report
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        report.server_slow_consumer_closes = self
            .closes_before
            .zip(server_closes(self.addr, &self.host))
            .map(|(b, a)| closes_since(&b, &a));
        report
    }
}

/// Where the slow clients of a group connect, and the topic they join.
struct Target {
    addr: SocketAddr,
    host: String,
    ws_path: String,
    topic: String,
    join_timeout: Duration,
}

impl Target {
    async fn join(&self, i: usize, tokens: &TokenClient) -> Result<Ws> {
        let token = tokens.fetch(&self.topic, &format!("slow{i}")).await?;
        let seed = 2_000_000 + i as u64;
        let (addr, host, path, topic) = (self.addr, &self.host, &self.ws_path, &self.topic);
        join(addr, host, path, topic, &token, seed, self.join_timeout).await
    }
}

/// One fanout slow client, from its join (or failure to join) to how its socket ended.
async fn slow_client(conn: Result<Ws>, st: &GroupState) {
    let mut conn = match conn {
        Ok(c) => {
            let shard = c.shard.clone().unwrap_or_else(|| "?".into());
            st.update(|r| {
                r.joined += 1;
                *r.per_shard.entry(shard).or_default() += 1;
            });
            c
        }
        Err(e) => {
            st.update(|r| r.join_failed += 1);
            return st.fail("slow client join", e);
        }
    };
    if let Err(e) = read_while(&mut conn, || !st.stop_reading.load(Relaxed)).await {
        st.update(|r| r.closed_while_reading += 1);
        return st.fail("slow client", e);
    }
    st.update(|r| r.stalled += 1);
    while !st.look_for_close.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match ending(&mut conn, ENDING_WAIT).await {
        Ok(Ending::Closed(1013)) => st.update(|r| r.closed_1013 += 1),
        Ok(Ending::Closed(code)) => {
            st.update(|r| *r.closed_other.entry(code.to_string()).or_default() += 1)
        }
        Ok(Ending::Eof) => st.update(|r| r.eof_without_close += 1),
        Ok(Ending::NotClosed) => st.update(|r| r.not_closed += 1),
        Err(e) => st.fail("slow client ending", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_slow_consumer_closes_are_read_per_shard() {
        let m = "# HELP x\nchannel_slow_consumer_closes_total{shard=\"0\"} 2\nchannel_slow_consumer_closes_total{shard=\"1\"} 1\nother 5\n";
        let got = parse_server_closes(m).unwrap();
        assert_eq!(got, BTreeMap::from([("0".into(), 2), ("1".into(), 1)]));
        assert_eq!(parse_server_closes("other 5\n"), None);
        assert_eq!(
            parse_server_closes("channel_slow_consumer_closes_total 4\n"),
            Some(BTreeMap::from([(String::new(), 4)]))
        );
        let before = BTreeMap::from([("0".into(), 1)]);
        assert_eq!(
            closes_since(&before, &got),
            BTreeMap::from([("0".into(), 1), ("1".into(), 1)])
        );
    }
}
