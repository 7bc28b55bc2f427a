//! The burst scenario: `clients` clients that read at normal speed and `non_readers` that stop
//! reading right after their join, all on one topic; every `every` seconds a backend publishes
//! `messages` messages of `message_bytes` bytes back to back (one Redis pipeline), `bursts`
//! times. Reports how many reading clients the server closed (expected 0), loss and order
//! among them, when the non-readers were closed, how long each burst took to reach every
//! reader, and the server's peak RSS (`--server-pid`, sampled every 50 ms).
//!
//! Owns the steps of the scenario; the socket is `conn.rs`'s, the non-readers' join is
//! `slow.rs`'s. Each message's stamp carries its position instead of a time
//! (`burst * 1_000_000 + n`), so that a reader checks order and gaps without parsing JSON.
//! A reading client that is closed is not reconnected: what it misses counts as lost.

use crate::conn::Ws;
use crate::net::{parse_http_url, parse_redis_url};
use crate::resp::{encode_command, read_replies};
use crate::scenario::{BurstParams, Scenario, POSITIONS};
use crate::slow::{self, Ending};
use crate::stamp::{now_us, payload_template, write_stamp, STAMP_POS};
use crate::stats::process_rss_bytes;
use crate::token::TokenClient;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct BurstArgs {
    pub scenario: Scenario,
    pub url: String,
    pub redis: String,
    pub out: PathBuf,
    pub server_pid: Option<u32>,
}

/// What one run found (`summary.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BurstSummary {
    pub scenario: String,
    pub clients: usize,
    pub non_readers: usize,
    pub bursts: usize,
    pub messages_per_burst: usize,
    pub message_bytes: usize,
    pub every_s: f64,
    pub readers_joined: u64,
    pub join_failed: u64,
    /// Reading clients the server closed (close frame or EOF) during the run: expected 0.
    pub reading_clients_closed: u64,
    /// Their close codes (`"eof"` for a socket that ended without a close frame).
    pub reading_close_codes: BTreeMap<String, u64>,
    /// Messages the joined readers should have got, got, and missed.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Messages that came out of order or twice (expected 0).
    pub out_of_order: u64,
    /// Per burst: seconds from the start of its publish until the last reader had all of it
    /// (readers closed meanwhile excluded), as p50 / max over the bursts.
    pub burst_complete_p50_s: Option<f64>,
    pub burst_complete_max_s: Option<f64>,
    /// Increase of the server's `channel_slow_consumer_closes_total` (all shards).
    pub server_slow_consumer_closes: Option<u64>,
    /// Seconds from the first burst until the server had closed every non-reader (by the
    /// metric above, polled every 50 ms); None if it never did during the run.
    pub non_readers_closed_after_s: Option<f64>,
    /// How each non-reader found its socket when it read again after the run.
    pub non_reader_endings: BTreeMap<String, u64>,
    /// Server RSS before the joins, after them, and the highest 50 ms sample during the bursts.
    pub server_rss_before_mib: Option<f64>,
    pub server_rss_joined_mib: Option<f64>,
    pub server_rss_peak_mib: Option<f64>,
    pub first_error: Option<String>,
}

/// What the threads share.
struct Shared {
    addr: SocketAddr,
    host: String,
    sc: Scenario,
    p: BurstParams,
    topic: String,
    joined: AtomicU64,
    join_failed: AtomicU64,
    non_readers_joined: AtomicUsize,
    delivered: AtomicU64,
    out_of_order: AtomicU64,
    /// Per reading client: the bursts it was still open for at the end (closed clients count
    /// only the bursts before their close).
    closed: AtomicU64,
    close_codes: Mutex<BTreeMap<String, u64>>,
    /// Per burst: when its publish started (µs), and the last reader's completion time.
    burst_start: Mutex<Vec<u64>>,
    burst_done: Mutex<Vec<u64>>,
    /// Per burst: readers that had all of it.
    burst_readers_done: Mutex<Vec<u64>>,
    /// Per reading client, the number of messages it was due: set when it ends.
    expected: AtomicU64,
    endings: Mutex<BTreeMap<String, u64>>,
    stop_reading: AtomicBool,
    look_for_close: AtomicBool,
    errors: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, e: String) {
        if let Ok(mut first) = self.errors.lock() {
            first.get_or_insert(e);
        }
    }

    fn bump(map: &Mutex<BTreeMap<String, u64>>, k: String) {
        if let Ok(mut m) = map.lock() {
            *m.entry(k).or_default() += 1;
        }
    }
}

/// One reading client: joins, then reads until told to stop, checking that every burst comes
/// whole and in order.
async fn reader(sh: Arc<Shared>, idx: usize, tokens: Rc<TokenClient>) {
    let joined = async {
        let token = tokens.fetch(&sh.topic, &format!("r{idx}")).await?;
        let conn = Ws::open(sh.addr, &sh.host, &sh.sc.ws_path, idx as u64 + 1, false).await?;
        slow::join_on(
            conn,
            &sh.topic,
            &token,
            Duration::from_secs_f64(sh.sc.join_timeout),
        )
        .await
    }
    .await;
    let mut conn = match joined {
        Ok(conn) => conn,
        Err(e) => {
            sh.join_failed.fetch_add(1, Relaxed);
            sh.note_error(format!("reader {idx} join: {e:#}"));
            return;
        }
    };
    sh.joined.fetch_add(1, Relaxed);
    let messages = sh.p.messages as u64;
    let mut next_burst = 0u64;
    let mut next_n = 0u64;
    let mut stamps = Vec::new();
    let ended = loop {
        if sh.stop_reading.load(Relaxed) {
            break None;
        }
        match tokio::time::timeout(Duration::from_millis(100), conn.read()).await {
            Err(_) => continue,
            Ok(Ok(true)) => {}
            Ok(Ok(false)) | Ok(Err(_)) => break Some("eof".to_string()),
        }
        stamps.clear();
        let input = match conn.process(Some(&mut stamps)).await {
            Ok(input) => input,
            Err(e) => break Some(format!("error: {e:#}")),
        };
        for &stamp in &stamps {
            let (burst, n) = (stamp / POSITIONS, stamp % POSITIONS);
            if (burst, n) != (next_burst, next_n) {
                sh.out_of_order.fetch_add(1, Relaxed);
                // Resynchronise on what arrived, so one gap is one count, not many.
                (next_burst, next_n) = (burst, n);
            }
            sh.delivered.fetch_add(1, Relaxed);
            next_n += 1;
            if next_n == messages {
                if let (Ok(mut done), Ok(mut readers)) =
                    (sh.burst_done.lock(), sh.burst_readers_done.lock())
                {
                    if let (Some(d), Some(r)) = (
                        done.get_mut(burst as usize),
                        readers.get_mut(burst as usize),
                    ) {
                        *d = (*d).max(now_us());
                        *r += 1;
                    }
                }
                next_burst += 1;
                next_n = 0;
            }
        }
        if let Some(code) = input.close {
            break Some(code.to_string());
        }
    };
    // Due: every burst that started before this client ended.
    let started = sh.burst_start.lock().map(|s| s.len() as u64).unwrap_or(0);
    sh.expected.fetch_add(started * messages, Relaxed);
    if let Some(how) = ended {
        sh.closed.fetch_add(1, Relaxed);
        Shared::bump(&sh.close_codes, how);
    }
}

/// One non-reader: joins with a small receive buffer, never reads until the run is over, then
/// reads what is left to see how its socket ended.
async fn non_reader(sh: Arc<Shared>, idx: usize, tokens: Rc<TokenClient>) {
    let joined = async {
        let token = tokens.fetch(&sh.topic, &format!("n{idx}")).await?;
        slow::join(
            sh.addr,
            &sh.host,
            &sh.sc.ws_path,
            &sh.topic,
            &token,
            2_000_000 + idx as u64,
            Duration::from_secs_f64(sh.sc.join_timeout),
        )
        .await
    }
    .await;
    let mut conn = match joined {
        Ok(conn) => conn,
        Err(e) => {
            sh.note_error(format!("non-reader {idx} join: {e:#}"));
            return;
        }
    };
    sh.non_readers_joined.fetch_add(1, Relaxed);
    while !sh.look_for_close.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ending = match slow::ending(&mut conn, Duration::from_secs(3)).await {
        Ok(Ending::Closed(code)) => code.to_string(),
        Ok(Ending::Eof) => "eof".to_string(),
        Ok(Ending::NotClosed) => "not closed".to_string(),
        Err(e) => format!("error: {e:#}"),
    };
    Shared::bump(&sh.endings, ending);
}

fn clients_thread(sh: Arc<Shared>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return sh.note_error(format!("runtime: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let tokens = Rc::new(TokenClient::new(sh.addr, sh.host.clone(), None));
        let mut handles = Vec::new();
        // Joins go `join_in_flight` at a time.
        for chunk in (0..sh.sc.clients)
            .collect::<Vec<_>>()
            .chunks(sh.sc.join_in_flight)
        {
            let before = sh.joined.load(Relaxed) + sh.join_failed.load(Relaxed);
            for &i in chunk {
                handles.push(tokio::task::spawn_local(reader(
                    sh.clone(),
                    i,
                    tokens.clone(),
                )));
            }
            let want = before + chunk.len() as u64;
            while sh.joined.load(Relaxed) + sh.join_failed.load(Relaxed) < want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for i in 0..sh.p.non_readers {
            handles.push(tokio::task::spawn_local(non_reader(
                sh.clone(),
                i,
                tokens.clone(),
            )));
        }
        for h in handles {
            let _ = h.await;
        }
    });
}

/// Publishes the bursts on schedule, each as one pipeline written in one go.
fn publisher(sh: Arc<Shared>, redis: SocketAddr, t0: u64) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&redis, Duration::from_secs(2))
        .with_context(|| format!("connecting to Redis at {redis}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let channel = format!("to:{}:{}", sh.topic, sh.sc.event);
    let mut payload = payload_template(sh.sc.message_bytes);
    let mut pipeline = Vec::new();
    for burst in 0..sh.p.bursts {
        let at = t0 + (burst as f64 * sh.p.every * 1e6) as u64;
        let now = now_us();
        if at > now {
            std::thread::sleep(Duration::from_micros(at - now));
        }
        pipeline.clear();
        for n in 0..sh.p.messages {
            write_stamp(&mut payload, STAMP_POS, burst as u64 * POSITIONS + n as u64);
            encode_command(&mut pipeline, &[b"PUBLISH", channel.as_bytes(), &payload]);
        }
        if let Ok(mut starts) = sh.burst_start.lock() {
            starts.push(now_us());
        }
        s.write_all(&pipeline)?;
        read_replies(
            &mut s,
            sh.p.messages,
            &mut Vec::new(),
            Duration::from_secs(10),
        )?;
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub fn run(args: BurstArgs) -> Result<serde_json::Value> {
    let sc = args.scenario;
    sc.validate()?;
    let p = sc.burst.clone().unwrap_or_default();
    p.validate()?;
    let (addr, host) = parse_http_url(&args.url)?;
    let redis = parse_redis_url(&args.redis)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let rss = || args.server_pid.and_then(process_rss_bytes);
    let total_closes = || slow::server_closes(addr, &host).map(|m| m.values().sum::<u64>());
    let rss_before = rss();
    let closes_before = total_closes();
    let sh = Arc::new(Shared {
        addr,
        host: host.clone(),
        topic: sc.topic_name(0),
        joined: AtomicU64::new(0),
        join_failed: AtomicU64::new(0),
        non_readers_joined: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        close_codes: Mutex::new(BTreeMap::new()),
        burst_start: Mutex::new(Vec::new()),
        burst_done: Mutex::new(vec![0; p.bursts]),
        burst_readers_done: Mutex::new(vec![0; p.bursts]),
        expected: AtomicU64::new(0),
        endings: Mutex::new(BTreeMap::new()),
        stop_reading: AtomicBool::new(false),
        look_for_close: AtomicBool::new(false),
        errors: Mutex::new(None),
        p: p.clone(),
        sc: sc.clone(),
    });
    let clients = {
        let sh = sh.clone();
        std::thread::Builder::new()
            .name("burst-clients".into())
            .spawn(move || clients_thread(sh))?
    };
    wait_for_joins(&sh);
    let rss_joined = rss();

    let t0 = now_us();
    let publisher = {
        let sh = sh.clone();
        std::thread::Builder::new()
            .name("burst-pub".into())
            .spawn(move || publisher(sh, redis, t0))?
    };
    let end = t0 + (((p.bursts - 1) as f64 * p.every + sc.drain.max(1.0)) * 1e6) as u64;
    let mut watch = Watch {
        peak: rss_joined.unwrap_or(0),
        non_readers_closed_at: None,
    };
    while now_us() < end {
        watch.look(&p, &rss, &total_closes, closes_before);
        std::thread::sleep(Duration::from_millis(50));
    }
    match publisher.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => sh.note_error(format!("publisher: {e:#}")),
        Err(_) => sh.note_error("publisher panicked".into()),
    }
    sh.stop_reading.store(true, Relaxed);
    sh.look_for_close.store(true, Relaxed);
    if clients.join().is_err() {
        sh.note_error("clients thread panicked".into());
    }

    let figures = ServerFigures {
        rss_before,
        rss_joined,
        peak: args.server_pid.map(|_| watch.peak),
        closes_before,
        closes_after: total_closes(),
        non_readers_closed_at: watch.non_readers_closed_at,
    };
    let summary = summarize(&sh, &figures);
    let json = serde_json::to_value(&summary)?;
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(json)
}

/// Waits for every join to end (ok or failed; `join_timeout` + 30 s at most), then a second for
/// presence to settle.
fn wait_for_joins(sh: &Shared) {
    let join_deadline = now_us() + ((sh.sc.join_timeout + 30.0) * 1e6) as u64;
    while (sh.joined.load(Relaxed) + sh.join_failed.load(Relaxed)) < sh.sc.clients as u64
        || sh.non_readers_joined.load(Relaxed) < sh.p.non_readers
    {
        if now_us() > join_deadline {
            sh.note_error("joins did not finish in time".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
}

/// What the coordinator sees of the server while the bursts run.
struct Watch {
    /// Highest RSS sampled (bytes).
    peak: u64,
    /// When the server's slow-consumer closes first covered every non-reader.
    non_readers_closed_at: Option<u64>,
}

impl Watch {
    fn look(
        &mut self,
        p: &BurstParams,
        rss: &impl Fn() -> Option<u64>,
        total_closes: &impl Fn() -> Option<u64>,
        closes_before: Option<u64>,
    ) {
        if let Some(b) = rss() {
            self.peak = self.peak.max(b);
        }
        // The metric costs the server an HTTP request: every 50 ms only until it is known.
        if self.non_readers_closed_at.is_none() && p.non_readers > 0 {
            if let (Some(now), Some(before)) = (total_closes(), closes_before) {
                if now.saturating_sub(before) >= p.non_readers as u64 {
                    self.non_readers_closed_at = Some(now_us());
                }
            }
        }
    }
}

/// The server's figures of a run: RSS (bytes) before, once joined, at its peak (`None` without
/// `--server-pid`), and its slow-consumer closes before and after.
struct ServerFigures {
    rss_before: Option<u64>,
    rss_joined: Option<u64>,
    peak: Option<u64>,
    closes_before: Option<u64>,
    closes_after: Option<u64>,
    non_readers_closed_at: Option<u64>,
}

/// The summary of a finished run.
fn summarize(sh: &Shared, figures: &ServerFigures) -> BurstSummary {
    let starts = sh.burst_start.lock().map(|s| s.clone()).unwrap_or_default();
    let done = sh.burst_done.lock().map(|s| s.clone()).unwrap_or_default();
    let readers_done = sh
        .burst_readers_done
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let open_readers = sh.joined.load(Relaxed) - sh.closed.load(Relaxed);
    let mut complete: Vec<f64> = starts
        .iter()
        .zip(&done)
        .zip(&readers_done)
        .filter(|((_, _), r)| **r >= open_readers && open_readers > 0)
        .map(|((s, d), _)| d.saturating_sub(*s) as f64 / 1e6)
        .collect();
    complete.sort_by(f64::total_cmp);
    let expected = sh.expected.load(Relaxed);
    let delivered = sh.delivered.load(Relaxed);
    BurstSummary {
        scenario: sh.sc.name.clone(),
        clients: sh.sc.clients,
        non_readers: sh.p.non_readers,
        bursts: sh.p.bursts,
        messages_per_burst: sh.p.messages,
        message_bytes: sh.sc.message_bytes,
        every_s: sh.p.every,
        readers_joined: sh.joined.load(Relaxed),
        join_failed: sh.join_failed.load(Relaxed),
        reading_clients_closed: sh.closed.load(Relaxed),
        reading_close_codes: sh.close_codes.lock().map(|m| m.clone()).unwrap_or_default(),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        out_of_order: sh.out_of_order.load(Relaxed),
        burst_complete_p50_s: complete.get(complete.len() / 2).copied(),
        burst_complete_max_s: complete.last().copied(),
        server_slow_consumer_closes: figures
            .closes_after
            .zip(figures.closes_before)
            .map(|(after, before)| after.saturating_sub(before)),
        non_readers_closed_after_s: figures
            .non_readers_closed_at
            .zip(starts.first())
            .map(|(at, first)| at.saturating_sub(*first) as f64 / 1e6),
        non_reader_endings: sh.endings.lock().map(|m| m.clone()).unwrap_or_default(),
        server_rss_before_mib: figures.rss_before.map(mib),
        server_rss_joined_mib: figures.rss_joined.map(mib),
        server_rss_peak_mib: figures.peak.map(mib),
        first_error: sh.errors.lock().ok().and_then(|e| e.clone()),
    }
}
