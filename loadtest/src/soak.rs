//! The soak scenario: for `duration` seconds, mixes churning clients (join, push, leave, rejoin,
//! reconnect), fan-out publishes from Redis, a few slow clients that stop reading, and Redis
//! restarts; then reports what an `ok` reply promised and whether it was kept.
//!
//! Pieces (each on its own thread, the WebSocket clients on one tokio current-thread runtime):
//! - churn clients: each loops socket → 1–3 × (join a random topic, push at its share of
//!   `push_rate`, hold `hold_min..hold_max` s, wait for its push replies, `phx_leave`) → close;
//!   every push carries a unique id (`{"soak":"<run>-<id>"}`) and its own ref `p<id>`;
//! - slow clients (the steps of `slow.rs`): 4 KiB receive buffer, join `<prefix>:slow`, read for
//!   `slow_read_for` s, stop reading for `slow_stall` s while the publisher sends large messages to
//!   that topic, then read what is left and look for the close code (1013 expected);
//! - the publisher: `PUBLISH to:<topic>:<event>` at `rate`/s round-robin over the topics, each
//!   stamped; a publish counts as published only once Redis answered it (it reconnects after a
//!   restart);
//! - the subscriber: `PSUBSCRIBE from:*`, reconnecting and resubscribing after a restart, and
//!   recording the intervals during which it was known to be subscribed;
//! - the restarter: runs `restart_command` with `sh -c` every `restart_every` s and waits for
//!   Redis to answer `PING` again;
//! - the coordinator (this thread): samples the server's RSS every `rss_every` s.
//!
//! Lost acknowledged pushes are counted only over pushes the subscriber could have seen: sent
//! after its `psubscribe` confirmation and acknowledged at least `ack_guard` s before it noticed
//! its connection go. Other `ok` pushes are reported apart (`ok_unverifiable`, and how many of them
//! were seen anyway). See loadtest/README.md, "Soak".

use crate::conn::Ws;
use crate::redis::{encode_command, parse_redis_url, parse_resp, Resp};
use crate::run::parse_http_url;
use crate::scenario::Scenario;
use crate::slow::{self, Ending};
use crate::stamp::{now_us, payload_template, write_stamp, STAMP_POS};
use crate::stats::process_rss_bytes;
use crate::token::TokenClient;
use crate::ws;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `[soak]` table of a `kind = "soak"` scenario. The scenario's own fields are used too:
/// `clients` (churning clients), `topics`, `rate` (fan-out publishes/s over the topics),
/// `message_bytes`, `duration`, `drain`, `join_timeout`, `heartbeat`, `event`, `topic_prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoakParams {
    /// Pushes per second over all joined churn clients.
    #[serde(default = "d_push_rate")]
    pub push_rate: f64,
    /// Seconds a churn client stays joined: uniform in [hold_min, hold_max].
    #[serde(default = "d_hold_min")]
    pub hold_min: f64,
    #[serde(default = "d_hold_max")]
    pub hold_max: f64,
    /// Clients that stop reading (on their own topic `<prefix>:slow`).
    #[serde(default = "d_slow_clients")]
    pub slow_clients: usize,
    /// Publishes per second to the slow topic, and their size.
    #[serde(default = "d_slow_rate")]
    pub slow_rate: f64,
    #[serde(default = "d_slow_bytes")]
    pub slow_message_bytes: usize,
    /// Seconds a slow client reads before it stops, and seconds it stops for.
    #[serde(default = "d_slow_read_for")]
    pub slow_read_for: f64,
    #[serde(default = "d_slow_stall")]
    pub slow_stall: f64,
    /// Seconds between Redis restarts (0: never).
    #[serde(default)]
    pub restart_every: f64,
    /// Run with `sh -c` to restart Redis; must return once the restart is under way.
    #[serde(default)]
    pub restart_command: String,
    /// Seconds after Redis answers again during which downstream loss counts as "near a restart".
    #[serde(default = "d_restart_grace")]
    pub restart_grace: f64,
    /// Seconds between RSS samples.
    #[serde(default = "d_rss_every")]
    pub rss_every: f64,
    /// Seconds at each end of a join not counted in downstream expectations (join/leave races).
    #[serde(default = "d_edge_margin")]
    pub edge_margin: f64,
    /// An `ok` push is verifiable only if the subscriber stayed up this long after the reply.
    #[serde(default = "d_ack_guard")]
    pub ack_guard: f64,
}

fn d_push_rate() -> f64 {
    50.0
}
fn d_hold_min() -> f64 {
    2.0
}
fn d_hold_max() -> f64 {
    10.0
}
fn d_slow_clients() -> usize {
    3
}
fn d_slow_rate() -> f64 {
    40.0
}
fn d_slow_bytes() -> usize {
    16_000
}
fn d_slow_read_for() -> f64 {
    1.0
}
fn d_slow_stall() -> f64 {
    20.0
}
fn d_restart_grace() -> f64 {
    5.0
}
fn d_rss_every() -> f64 {
    3.0
}
fn d_edge_margin() -> f64 {
    0.3
}
fn d_ack_guard() -> f64 {
    1.0
}

impl Default for SoakParams {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl SoakParams {
    pub fn validate(&self) -> Result<()> {
        for (n, v) in [
            ("push_rate", self.push_rate),
            ("slow_rate", self.slow_rate),
            ("restart_every", self.restart_every),
            ("restart_grace", self.restart_grace),
            ("edge_margin", self.edge_margin),
            ("ack_guard", self.ack_guard),
        ] {
            if v.is_nan() || v < 0.0 {
                bail!("[soak] {n} must be >= 0");
            }
        }
        if !(self.hold_min > 0.0 && self.hold_max >= self.hold_min) {
            bail!("[soak] needs 0 < hold_min <= hold_max");
        }
        if self.rss_every <= 0.0 || self.slow_stall <= 0.0 || self.slow_read_for < 0.0 {
            bail!("[soak] rss_every and slow_stall must be positive");
        }
        if self.restart_every > 0.0 && self.restart_command.trim().is_empty() {
            bail!("[soak] restart_every needs a restart_command");
        }
        if self.slow_message_bytes < crate::stamp::min_payload_bytes() {
            bail!("[soak] slow_message_bytes too small");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Accounting (pure, unit-tested)

/// One push: when it was sent, and its reply `(ok, at)` if any.
#[derive(Debug, Clone, Copy)]
struct PushRec {
    sent_us: u64,
    reply: Option<(bool, u64)>,
}

/// Every push of the run, what the subscriber saw, and when the subscriber was subscribed.
#[derive(Debug, Default)]
pub struct Ledger {
    pushes: HashMap<u64, PushRec>,
    seen: HashMap<u64, u32>,
    /// Intervals `[up, down)` during which the subscriber was known subscribed (down: when it
    /// noticed the connection go; `None`: still up).
    sub_up: Vec<(u64, Option<u64>)>,
    /// Reasons of `error` replies.
    error_reasons: BTreeMap<String, u64>,
}

/// The push figures of a run.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct PushTally {
    pub sent: u64,
    pub ok: u64,
    pub error: u64,
    pub unanswered: u64,
    /// `ok` pushes the subscriber was subscribed for, from before the send to `ack_guard` after the reply.
    pub ok_verifiable: u64,
    /// The headline: verifiable `ok` pushes never seen on `from:*`. Must be 0.
    pub lost_acked: u64,
    pub lost_acked_ids: Vec<u64>,
    /// `ok` pushes sent or answered while the subscriber was (re)connecting.
    pub ok_unverifiable: u64,
    pub ok_unverifiable_seen: u64,
    /// For unverifiable `ok` pushes never seen (first 50): ms from the reply to the moment the
    /// subscriber noticed its connection go (negative: the reply came after; None: no outage after).
    pub ok_unverifiable_unseen_ack_to_down_ms: Vec<Option<f64>>,
    /// `error` pushes seen on Redis anyway (allowed: an error means "not known to be published").
    pub error_seen: u64,
    pub unanswered_seen: u64,
    /// Ids seen more than once.
    pub duplicates: u64,
    /// Ids of this run seen but never sent (must be 0).
    pub seen_unknown: u64,
    pub error_reasons: BTreeMap<String, u64>,
}

impl Ledger {
    pub fn sent(&mut self, id: u64, t: u64) {
        self.pushes.insert(
            id,
            PushRec {
                sent_us: t,
                reply: None,
            },
        );
    }

    pub fn replied(&mut self, id: u64, ok: bool, t: u64, reason: Option<&str>) {
        if let Some(p) = self.pushes.get_mut(&id) {
            if p.reply.is_none() {
                p.reply = Some((ok, t));
            }
        }
        if !ok {
            *self
                .error_reasons
                .entry(reason.unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }

    pub fn seen(&mut self, id: u64) {
        *self.seen.entry(id).or_default() += 1;
    }

    pub fn subscriber_up(&mut self, t: u64) {
        self.sub_up.push((t, None));
    }

    pub fn subscriber_down(&mut self, t: u64) {
        if let Some(last) = self.sub_up.last_mut() {
            if last.1.is_none() {
                last.1 = Some(t);
            }
        }
    }

    /// Whether the subscriber was subscribed from before `sent` until `acked + guard`.
    pub fn verifiable(&self, sent: u64, acked: u64, guard: u64) -> bool {
        self.sub_up
            .iter()
            .any(|&(up, down)| up <= sent && down.is_none_or(|d| d >= acked + guard))
    }

    /// Intervals during which the subscriber was not subscribed, relative to `t0` (seconds).
    pub fn outages(&self, t0: u64) -> Vec<(f64, f64)> {
        let s = |t: u64| t.saturating_sub(t0) as f64 / 1e6;
        self.sub_up
            .windows(2)
            .filter_map(|w| w[0].1.map(|d| (s(d), s(w[1].0))))
            .collect()
    }

    pub fn tally(&self, guard_us: u64) -> PushTally {
        let mut t = PushTally {
            sent: self.pushes.len() as u64,
            error_reasons: self.error_reasons.clone(),
            ..Default::default()
        };
        let mut ids: Vec<u64> = self.pushes.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let p = self.pushes[&id];
            let seen = self.seen.contains_key(&id);
            match p.reply {
                Some((true, at)) => {
                    t.ok += 1;
                    if self.verifiable(p.sent_us, at, guard_us) {
                        t.ok_verifiable += 1;
                        if !seen {
                            t.lost_acked += 1;
                            if t.lost_acked_ids.len() < 20 {
                                t.lost_acked_ids.push(id);
                            }
                        }
                    } else {
                        t.ok_unverifiable += 1;
                        t.ok_unverifiable_seen += u64::from(seen);
                        if !seen && t.ok_unverifiable_unseen_ack_to_down_ms.len() < 50 {
                            let down = self
                                .sub_up
                                .iter()
                                .filter_map(|&(_, d)| d)
                                .find(|&d| d + 5_000_000 >= at);
                            t.ok_unverifiable_unseen_ack_to_down_ms
                                .push(down.map(|d| (d as f64 - at as f64) / 1000.0));
                        }
                    }
                }
                Some((false, _)) => {
                    t.error += 1;
                    t.error_seen += u64::from(seen);
                }
                None => {
                    t.unanswered += 1;
                    t.unanswered_seen += u64::from(seen);
                }
            }
        }
        for (id, n) in &self.seen {
            if *n > 1 {
                t.duplicates += 1;
            }
            if !self.pushes.contains_key(id) {
                t.seen_unknown += 1;
            }
        }
        t
    }
}

/// One join of one churn client: its topic, the span it was joined, the stamps it received.
#[derive(Debug, Clone, Default)]
pub struct SessionLog {
    pub topic: usize,
    pub from_us: u64,
    pub to_us: u64,
    pub stamps: Vec<u64>,
}

/// Downstream figures: per join, the publishes Redis accepted for its topic inside the join
/// (minus `edge_margin` at each end) against the ones it received.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct DownTally {
    /// Publishes Redis answered (all topics, slow topic excluded).
    pub published: u64,
    /// PUBLISH commands sent but not answered (Redis went away): not expected anywhere.
    pub publish_unconfirmed: u64,
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    /// Missing messages published within [restart − 0.5 s, Redis answering + restart_grace].
    pub missing_near_restart: u64,
    /// Missing elsewhere: at-most-once allows it only around restarts, so this should be 0.
    pub missing_elsewhere: u64,
    /// For each of the first 20 missing elsewhere: ms from its publish to the end of the join
    /// that missed it (small values point at delivery late past a leave, not at a loss).
    pub missing_elsewhere_before_leave_ms: Vec<f64>,
    /// Received stamps that are not among the confirmed publishes (reply lost in a restart).
    pub delivered_unconfirmed: u64,
    pub duplicates: u64,
    pub delivered_ratio: f64,
}

/// Computes [`DownTally`]. `published[topic]` must be sorted; `restarts` are `[from, to]` µs.
pub fn downstream_tally(
    published: &[Vec<u64>],
    sessions: &[SessionLog],
    restarts: &[(u64, u64)],
    margin_us: u64,
) -> DownTally {
    let mut t = DownTally {
        published: published.iter().map(|v| v.len() as u64).sum(),
        ..Default::default()
    };
    let near = |s: u64| restarts.iter().any(|&(a, b)| s >= a && s <= b);
    for s in sessions {
        let Some(pubs) = published.get(s.topic) else {
            continue;
        };
        let (lo, hi) = (s.from_us + margin_us, s.to_us.saturating_sub(margin_us));
        if hi <= lo {
            continue;
        }
        let mut got = s.stamps.clone();
        got.sort_unstable();
        let before = got.len();
        got.dedup();
        t.duplicates += (before - got.len()) as u64;
        let a = pubs.partition_point(|&p| p < lo);
        let b = pubs.partition_point(|&p| p < hi);
        for &p in &pubs[a..b] {
            t.expected += 1;
            if got.binary_search(&p).is_ok() {
                t.delivered += 1;
            } else {
                t.missing += 1;
                if near(p) {
                    t.missing_near_restart += 1;
                } else {
                    t.missing_elsewhere += 1;
                    if t.missing_elsewhere_before_leave_ms.len() < 20 {
                        let ms = s.to_us.saturating_sub(p) as f64 / 1e3;
                        t.missing_elsewhere_before_leave_ms.push(ms);
                    }
                }
            }
        }
        t.delivered_unconfirmed += got
            .iter()
            .filter(|&&g| g >= lo && g < hi && pubs.binary_search(&g).is_err())
            .count() as u64;
    }
    t.delivered_ratio = if t.expected > 0 {
        t.delivered as f64 / t.expected as f64
    } else {
        1.0
    };
    t
}

/// The push id in a `from:*` payload of this run (`"soak":"<run>-<id>"`).
pub fn parse_push_id(payload: &[u8], run: &str) -> Option<u64> {
    let at = memchr::memmem::find(payload, b"\"soak\":\"")? + 8;
    let rest = payload.get(at..)?;
    let rest = rest.strip_prefix(run.as_bytes())?.strip_prefix(b"-")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Shared run state

#[derive(Default)]
struct Counters {
    sockets_opened: AtomicU64,
    connect_failed: AtomicU64,
    joins_ok: AtomicU64,
    join_failed: AtomicU64,
    leaves_ok: AtomicU64,
    leave_unanswered: AtomicU64,
    unexpected_drops: AtomicU64,
    reconnects: AtomicU64,
    deliveries: AtomicU64,
    slow_cycles: AtomicU64,
    slow_1013: AtomicU64,
    slow_eof: AtomicU64,
    slow_not_closed: AtomicU64,
    published: AtomicU64,
    slow_published: AtomicU64,
    publish_unconfirmed: AtomicU64,
    subscriber_reconnects: AtomicU64,
}

#[derive(Default)]
struct Errors {
    count: u64,
    first: Vec<String>,
}

struct Shared {
    addr: SocketAddr,
    host: String,
    redis: SocketAddr,
    sc: Scenario,
    p: SoakParams,
    run_id: String,
    t0: u64,
    next_push_id: AtomicU64,
    ledger: Mutex<Ledger>,
    sessions: Mutex<Vec<SessionLog>>,
    published: Mutex<Vec<Vec<u64>>>,
    restarts: Mutex<Vec<RestartRec>>,
    close_codes: Mutex<BTreeMap<String, u64>>,
    slow_other: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<Errors>,
    c: Counters,
    live: AtomicI64,
    stop_pushing: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn note_error(&self, e: String) {
        if let Ok(mut g) = self.errors.lock() {
            g.count += 1;
            if g.first.len() < 30 {
                g.first.push(format!("[{:.1}s] {e}", self.secs(now_us())));
            }
        }
    }

    fn secs(&self, t: u64) -> f64 {
        t.saturating_sub(self.t0) as f64 / 1e6
    }

    fn bump(map: &Mutex<BTreeMap<String, u64>>, k: String) {
        if let Ok(mut m) = map.lock() {
            *m.entry(k).or_default() += 1;
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct RestartRec {
    at_s: f64,
    /// When Redis answered PING again (None: not within 30 s).
    ready_s: Option<f64>,
    command_ok: bool,
    #[serde(skip)]
    from_us: u64,
    #[serde(skip)]
    to_us: u64,
}

/// A small xorshift generator (per task; quality does not matter).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Churn clients

enum SessionEnd {
    Left,
    Stopped,
}

async fn churn_client(sh: Arc<Shared>, idx: usize, tokens: Rc<TokenClient>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (idx as u64 + 1).wrapping_mul(0x2545_F491));
    let mut join_seq: u64 = 0;
    let mut dropped = false;
    // Spread the first connects over a second.
    tokio::time::sleep(Duration::from_millis(rng.next() % 1000)).await;
    while !sh.stop.load(Relaxed) {
        let mut conn = match Ws::open(sh.addr, &sh.host, &sh.sc.ws_path, idx as u64, false).await {
            Ok(c) => c,
            Err(e) => {
                sh.c.connect_failed.fetch_add(1, Relaxed);
                sh.note_error(format!("churn {idx}: connect: {e:#}"));
                tokio::time::sleep(Duration::from_millis(500 + rng.next() % 500)).await;
                continue;
            }
        };
        sh.c.sockets_opened.fetch_add(1, Relaxed);
        if dropped {
            sh.c.reconnects.fetch_add(1, Relaxed);
            dropped = false;
        }
        let cycles = 1 + rng.next() % 3;
        let mut stopped = false;
        for _ in 0..cycles {
            join_seq += 1;
            match session(&sh, &mut conn, idx, join_seq, &tokens, &mut rng).await {
                Ok(SessionEnd::Left) => {}
                Ok(SessionEnd::Stopped) => {
                    stopped = true;
                    break;
                }
                Err(e) => {
                    sh.c.unexpected_drops.fetch_add(1, Relaxed);
                    sh.note_error(format!("churn {idx}: {e:#}"));
                    dropped = true;
                    break;
                }
            }
            if sh.stop.load(Relaxed) {
                stopped = true;
                break;
            }
        }
        if !dropped {
            let _ = conn.send(ws::OP_CLOSE, &1000u16.to_be_bytes()).await;
            conn.shutdown().await;
        } else {
            tokio::time::sleep(Duration::from_millis(200 + rng.next() % 300)).await;
        }
        if stopped {
            return;
        }
    }
}

/// One join: join, push while held, wait for the replies, leave.
async fn session(
    sh: &Shared,
    conn: &mut Ws,
    idx: usize,
    seq: u64,
    tokens: &TokenClient,
    rng: &mut Rng,
) -> Result<SessionEnd> {
    let topic_i = (rng.next() % sh.sc.topics as u64) as usize;
    let topic = sh.sc.topic_name(topic_i);
    let jr = seq.to_string();
    let token = tokens.fetch(&topic, &format!("soak{idx}")).await?;
    let join =
        serde_json::to_string(&serde_json::json!([jr, jr, topic, "phx_join", {"token": token}]))?;
    conn.send(ws::OP_TEXT, join.as_bytes()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(sh.sc.join_timeout);
    let mut joined = false;
    while !joined {
        match tokio::time::timeout_at(deadline, conn.read()).await {
            Err(_) => {
                sh.c.join_failed.fetch_add(1, Relaxed);
                bail!("join of {topic} not answered in {} s", sh.sc.join_timeout);
            }
            Ok(r) => {
                if !r? {
                    bail!("server closed the connection before the join reply");
                }
            }
        }
        let input = conn.process(None).await?;
        sh.c.deliveries.fetch_add(input.deliveries, Relaxed);
        for (r, ok, reason) in input.replies {
            if r == jr {
                if ok {
                    joined = true;
                } else {
                    sh.c.join_failed.fetch_add(1, Relaxed);
                    bail!("join of {topic} refused: {reason:?}");
                }
            }
        }
        if let Some(code) = input.close {
            Shared::bump(&sh.close_codes, code.to_string());
            bail!("close {code} before the join reply");
        }
    }
    sh.c.joins_ok.fetch_add(1, Relaxed);
    sh.live.fetch_add(1, Relaxed);
    let mut log = SessionLog {
        topic: topic_i,
        from_us: now_us(),
        ..Default::default()
    };
    let r = joined_phase(sh, conn, &topic, &jr, rng, &mut log).await;
    sh.live.fetch_sub(1, Relaxed);
    if log.to_us == 0 {
        log.to_us = now_us();
    }
    if let Ok(mut s) = sh.sessions.lock() {
        s.push(log);
    }
    r
}

async fn joined_phase(
    sh: &Shared,
    conn: &mut Ws,
    topic: &str,
    jr: &str,
    rng: &mut Rng,
    log: &mut SessionLog,
) -> Result<SessionEnd> {
    let p = &sh.p;
    let hold = p.hold_min + (p.hold_max - p.hold_min) * rng.unit();
    let hold_until = tokio::time::Instant::now() + Duration::from_secs_f64(hold);
    let mut pending: HashMap<u64, ()> = HashMap::new();
    let mut push_timer = (p.push_rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(sh.sc.clients as f64 / p.push_rate);
        let mut t = tokio::time::interval_at(
            tokio::time::Instant::now() + period.mul_f64(rng.unit()),
            period,
        );
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs_f64(sh.sc.heartbeat),
        Duration::from_secs_f64(sh.sc.heartbeat),
    );
    let mut stop_check = tokio::time::interval(Duration::from_millis(100));
    let pad = payload_template(sh.sc.message_bytes).len();
    let mut leaving_since: Option<tokio::time::Instant> = None;
    let mut end = SessionEnd::Left;
    let mut leave_sent = false;
    let leave_ref = format!("l{jr}");
    loop {
        tokio::select! {
            r = conn.read() => {
                if !r? {
                    bail!("server closed the connection");
                }
                let input = conn.process(Some(&mut log.stamps)).await?;
                sh.c.deliveries.fetch_add(input.deliveries, Relaxed);
                let now = now_us();
                for (r, ok, reason) in input.replies {
                    if let Some(id) = r.strip_prefix('p').and_then(|s| s.parse::<u64>().ok()) {
                        pending.remove(&id);
                        if let Ok(mut l) = sh.ledger.lock() {
                            l.replied(id, ok, now, reason.as_deref());
                        }
                    } else if r == leave_ref {
                        if ok {
                            sh.c.leaves_ok.fetch_add(1, Relaxed);
                        }
                        return Ok(end);
                    }
                }
                if let Some(code) = input.close {
                    Shared::bump(&sh.close_codes, code.to_string());
                    bail!("server sent close {code}");
                }
            }
            _ = tick(&mut push_timer), if leaving_since.is_none() && !sh.stop_pushing.load(Relaxed) => {
                let id = sh.next_push_id.fetch_add(1, Relaxed);
                let body = format!("{{\"soak\":\"{}-{id}\",\"pad\":\"", sh.run_id);
                let mut text = format!("[\"{jr}\",\"p{id}\",\"{topic}\",\"{}\",{body}", sh.sc.event);
                let fill = pad.saturating_sub(body.len() + 2);
                text.extend(std::iter::repeat_n('x', fill));
                text.push_str("\"}]");
                if let Ok(mut l) = sh.ledger.lock() {
                    l.sent(id, now_us());
                }
                pending.insert(id, ());
                conn.send(ws::OP_TEXT, text.as_bytes()).await?;
            }
            _ = heartbeat.tick() => {
                conn.send(ws::OP_TEXT, b"[null,\"hb\",\"phoenix\",\"heartbeat\",{}]").await?;
            }
            _ = stop_check.tick() => {
                let now = tokio::time::Instant::now();
                if leaving_since.is_none() && (now >= hold_until || sh.stop.load(Relaxed)) {
                    if sh.stop.load(Relaxed) {
                        end = SessionEnd::Stopped;
                    }
                    log.to_us = now_us();
                    leaving_since = Some(now);
                }
                if let Some(since) = leaving_since {
                    // Wait for the replies of our pushes (the server answers within 3 s), then leave.
                    let waited = now.duration_since(since);
                    if !leave_sent && (pending.is_empty() || waited > Duration::from_secs(5)) {
                        let leave = format!("[\"{jr}\",\"{leave_ref}\",\"{topic}\",\"phx_leave\",{{}}]");
                        conn.send(ws::OP_TEXT, leave.as_bytes()).await?;
                        leave_sent = true;
                    }
                    if waited > Duration::from_secs(10) {
                        sh.c.leave_unanswered.fetch_add(1, Relaxed);
                        return Ok(end);
                    }
                }
            }
        }
    }
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// Slow clients

async fn slow_client(sh: Arc<Shared>, idx: usize, tokens: Rc<TokenClient>) {
    let topic = format!("{}:slow", sh.sc.topic_prefix);
    while !sh.stop.load(Relaxed) {
        if let Err(e) = slow_cycle(&sh, idx, &topic, &tokens).await {
            sh.note_error(format!("slow {idx}: {e:#}"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn sleep_unless_stopped(sh: &Shared, d: Duration) -> bool {
    let until = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < until {
        if sh.stop.load(Relaxed) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100).min(d)).await;
    }
    true
}

async fn slow_cycle(sh: &Shared, idx: usize, topic: &str, tokens: &TokenClient) -> Result<()> {
    let token = tokens.fetch(topic, &format!("slow{idx}")).await?;
    let (seed, join_timeout) = (
        1_000_000 + idx as u64,
        Duration::from_secs_f64(sh.sc.join_timeout),
    );
    let mut conn = slow::join(
        sh.addr,
        &sh.host,
        &sh.sc.ws_path,
        topic,
        &token,
        seed,
        join_timeout,
    )
    .await?;
    let read_until = tokio::time::Instant::now() + Duration::from_secs_f64(sh.p.slow_read_for);
    slow::read_while(&mut conn, || tokio::time::Instant::now() < read_until).await?;
    // Stop reading.
    sh.c.slow_cycles.fetch_add(1, Relaxed);
    if !sleep_unless_stopped(sh, Duration::from_secs_f64(sh.p.slow_stall)).await {
        return Ok(());
    }
    // Read what is left and look for the close frame.
    match slow::ending(&mut conn, Duration::from_secs(10)).await? {
        Ending::Closed(1013) => {
            sh.c.slow_1013.fetch_add(1, Relaxed);
        }
        Ending::Closed(code) => Shared::bump(&sh.slow_other, code.to_string()),
        Ending::Eof => {
            sh.c.slow_eof.fetch_add(1, Relaxed);
        }
        Ending::NotClosed => {
            sh.c.slow_not_closed.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}

fn clients_thread(sh: Arc<Shared>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let tokens = Rc::new(TokenClient::new(sh.addr, sh.host.clone(), None));
        let mut handles = Vec::new();
        for i in 0..sh.sc.clients {
            handles.push(tokio::task::spawn_local(churn_client(
                sh.clone(),
                i,
                tokens.clone(),
            )));
        }
        for i in 0..sh.p.slow_clients {
            handles.push(tokio::task::spawn_local(slow_client(
                sh.clone(),
                i,
                tokens.clone(),
            )));
        }
        for h in handles {
            let _ = h.await;
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Redis side: publisher, subscriber, restarter

fn redis_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(s)
}

/// Reads `n` RESP replies (the answers to a pipeline); `Err` if the connection fails first.
fn read_replies(s: &mut TcpStream, n: usize, buf: &mut Vec<u8>) -> Result<usize> {
    let mut got = 0;
    let mut errors = 0;
    let deadline = now_us() + 2_000_000;
    let mut chunk = [0u8; 8192];
    loop {
        let mut pos = 0;
        while got < n {
            match parse_resp(&buf[pos..])? {
                Some((v, used)) => {
                    pos += used;
                    got += 1;
                    if matches!(v, Resp::Error(_)) {
                        errors += 1;
                    }
                }
                None => break,
            }
        }
        buf.drain(..pos);
        if got == n {
            return Ok(errors);
        }
        if now_us() > deadline {
            bail!("replies not received in 2 s");
        }
        match s.read(&mut chunk) {
            Ok(0) => bail!("Redis closed the connection"),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn publisher(sh: Arc<Shared>) {
    let topics = sh.sc.topics;
    let event = &sh.sc.event;
    let tmpl = payload_template(sh.sc.message_bytes);
    let slow_tmpl = payload_template(sh.p.slow_message_bytes);
    let mk = |chan: String, t: &[u8]| {
        let mut c = Vec::new();
        encode_command(&mut c, &[b"PUBLISH", chan.as_bytes(), t]);
        let pos = c.len() - 2 - t.len() + STAMP_POS;
        (c, pos)
    };
    let mut cmds: Vec<(Vec<u8>, usize)> = (0..topics)
        .map(|i| mk(format!("to:{}:{event}", sh.sc.topic_name(i)), &tmpl))
        .collect();
    let mut slow_cmd = mk(
        format!("to:{}:slow:{event}", sh.sc.topic_prefix),
        &slow_tmpl,
    );
    let period = if sh.sc.rate > 0.0 {
        1e6 / sh.sc.rate
    } else {
        f64::INFINITY
    };
    let slow_period = if sh.p.slow_rate > 0.0 && sh.p.slow_clients > 0 {
        1e6 / sh.p.slow_rate
    } else {
        f64::INFINITY
    };
    let (mut next, mut next_slow) = (now_us() as f64, now_us() as f64);
    let mut i: u64 = 0;
    let mut conn: Option<TcpStream> = None;
    let mut rbuf = Vec::new();
    let mut out = Vec::new();
    while !sh.stop_pushing.load(Relaxed) {
        let now = now_us();
        if conn.is_none() {
            match redis_connect(sh.redis) {
                Ok(s) => {
                    conn = Some(s);
                    rbuf.clear();
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    // Publishes due while Redis is away are skipped, not burst later.
                    next = next.max(now_us() as f64);
                    next_slow = next_slow.max(now_us() as f64);
                    continue;
                }
            }
        }
        out.clear();
        let mut batch: Vec<(usize, u64)> = Vec::new();
        let mut slow_n = 0;
        while next <= now as f64 && batch.len() < 1000 {
            let topic = (i % topics as u64) as usize;
            let t = next as u64;
            let (c, pos) = &mut cmds[topic];
            write_stamp(c, *pos, t);
            out.extend_from_slice(c);
            batch.push((topic, t));
            i += 1;
            next += period;
        }
        while next_slow <= now as f64 && slow_n < 100 {
            write_stamp(&mut slow_cmd.0, slow_cmd.1, next_slow as u64);
            out.extend_from_slice(&slow_cmd.0);
            slow_n += 1;
            next_slow += slow_period;
        }
        if !out.is_empty() {
            let s = conn.as_mut().expect("connected");
            let n = batch.len() + slow_n;
            let r = s
                .write_all(&out)
                .map_err(anyhow::Error::from)
                .and_then(|_| read_replies(s, n, &mut rbuf));
            match r {
                Ok(0) => {
                    sh.c.published.fetch_add(batch.len() as u64, Relaxed);
                    sh.c.slow_published.fetch_add(slow_n as u64, Relaxed);
                    if let Ok(mut p) = sh.published.lock() {
                        for (topic, t) in batch {
                            p[topic].push(t);
                        }
                    }
                }
                Ok(_) | Err(_) => {
                    sh.c.publish_unconfirmed
                        .fetch_add(batch.len() as u64, Relaxed);
                    conn = None;
                    continue;
                }
            }
        }
        let wake = next.min(next_slow).min(now_us() as f64 + 50_000.0);
        let now = now_us() as f64;
        if wake > now {
            std::thread::sleep(Duration::from_micros((wake - now) as u64));
        }
    }
}

fn subscriber(sh: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut first = true;
    while !stop.load(Relaxed) {
        let mut s = match redis_connect(sh.redis) {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if !first {
            sh.c.subscriber_reconnects.fetch_add(1, Relaxed);
        }
        first = false;
        let mut cmd = Vec::new();
        encode_command(&mut cmd, &[b"PSUBSCRIBE", b"from:*"]);
        if s.write_all(&cmd).is_err() {
            continue;
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut up = false;
        'conn: while !stop.load(Relaxed) {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            }
            let mut pos = 0;
            loop {
                match parse_resp(&buf[pos..]) {
                    Ok(Some((Resp::Array(items), used))) => {
                        pos += used;
                        match items.first() {
                            Some(Resp::Bulk(Some(b"pmessage"))) => {
                                if let Some(Resp::Bulk(Some(p))) = items.get(3) {
                                    if let Some(id) = parse_push_id(p, &sh.run_id) {
                                        if let Ok(mut l) = sh.ledger.lock() {
                                            l.seen(id);
                                        }
                                    }
                                }
                            }
                            Some(Resp::Bulk(Some(b"psubscribe"))) => {
                                if let Ok(mut l) = sh.ledger.lock() {
                                    l.subscriber_up(now_us());
                                }
                                up = true;
                            }
                            _ => {}
                        }
                    }
                    Ok(Some((_, used))) => pos += used,
                    Ok(None) => break,
                    Err(e) => {
                        sh.note_error(format!("subscriber: {e}"));
                        break 'conn;
                    }
                }
            }
            buf.drain(..pos);
        }
        if up {
            if let Ok(mut l) = sh.ledger.lock() {
                l.subscriber_down(now_us());
            }
        }
    }
}

fn redis_answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = redis_connect(addr) else {
        return false;
    };
    let mut cmd = Vec::new();
    encode_command(&mut cmd, &[b"PING"]);
    if s.write_all(&cmd).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n >= 5 && &buf[..5] == b"+PONG")
}

fn restarter(sh: Arc<Shared>) {
    let every = Duration::from_secs_f64(sh.p.restart_every);
    let mut next = now_us() + every.as_micros() as u64;
    loop {
        while now_us() < next {
            if sh.stop_pushing.load(Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let from = now_us();
        eprintln!("[{:6.1}s] restarting Redis", sh.secs(from));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&sh.p.restart_command)
            .stdin(std::process::Stdio::null())
            .output();
        let command_ok = match &out {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                sh.note_error(format!(
                    "restart_command exited {}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                false
            }
            Err(e) => {
                sh.note_error(format!("restart_command: {e}"));
                false
            }
        };
        let mut ready = None;
        while now_us() < from + 30_000_000 {
            if redis_answers_ping(sh.redis) {
                ready = Some(now_us());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if ready.is_none() {
            sh.note_error("Redis did not answer PING within 30 s of a restart".into());
        }
        if let Ok(mut r) = sh.restarts.lock() {
            r.push(RestartRec {
                at_s: sh.secs(from),
                ready_s: ready.map(|t| sh.secs(t)),
                command_ok,
                from_us: from,
                to_us: ready.unwrap_or(from + 30_000_000),
            });
        }
        next = from + every.as_micros() as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Where and how to run a soak.
pub struct SoakArgs {
    pub scenario: Scenario,
    pub url: String,
    pub redis: String,
    pub out: PathBuf,
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Rss {
    /// `[seconds since start, MiB]`.
    series: Vec<(f64, f64)>,
    min_mib: Option<f64>,
    max_mib: Option<f64>,
    first_mib: Option<f64>,
    last_mib: Option<f64>,
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
    let sub_stop = Arc::new(AtomicBool::new(false));
    let sub = {
        let (sh, stop) = (sh.clone(), sub_stop.clone());
        std::thread::Builder::new()
            .name("soak-sub".into())
            .spawn(move || subscriber(sh, stop))?
    };
    let wait_sub = now_us() + 5_000_000;
    while sh
        .ledger
        .lock()
        .map(|l| l.sub_up.is_empty())
        .unwrap_or(true)
    {
        if now_us() > wait_sub {
            sub_stop.store(true, Relaxed);
            bail!("the subscriber could not PSUBSCRIBE from:* on {redis} within 5 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut threads = Vec::new();
    {
        let s = sh.clone();
        threads.push(
            std::thread::Builder::new()
                .name("soak-pub".into())
                .spawn(move || publisher(s))?,
        );
    }
    if sh.p.restart_every > 0.0 {
        let s = sh.clone();
        threads.push(
            std::thread::Builder::new()
                .name("soak-restart".into())
                .spawn(move || restarter(s))?,
        );
    }
    let clients = {
        let s = sh.clone();
        std::thread::Builder::new()
            .name("soak-clients".into())
            .spawn(move || clients_thread(s))?
    };

    let mut rss: Vec<(f64, f64)> = Vec::new();
    let sample = |rss: &mut Vec<(f64, f64)>| {
        if let Some(b) = args.server_pid.and_then(process_rss_bytes) {
            rss.push((sh.secs(now_us()), b as f64 / (1 << 20) as f64));
        }
    };
    let end = t0 + (sh.sc.duration * 1e6) as u64;
    let rss_every = (sh.p.rss_every * 1e6) as u64;
    let mut next_rss = t0;
    let mut next_line = t0 + 5_000_000;
    let mut wait = |until: u64, rss: &mut Vec<(f64, f64)>, phase: &str| {
        while now_us() < until {
            let now = now_us();
            if now >= next_rss {
                sample(rss);
                next_rss += rss_every;
            }
            if now >= next_line {
                next_line += 5_000_000;
                let (sent, ok, err) = sh
                    .ledger
                    .lock()
                    .map(|l| {
                        let ok = l
                            .pushes
                            .values()
                            .filter(|p| matches!(p.reply, Some((true, _))))
                            .count();
                        let err = l
                            .pushes
                            .values()
                            .filter(|p| matches!(p.reply, Some((false, _))))
                            .count();
                        (l.pushes.len(), ok, err)
                    })
                    .unwrap_or_default();
                eprintln!(
                    "[{:6.1}s] {phase:<6} live={} joins={} drops={} pushes={sent} ok={ok} err={err} published={} deliveries={} slow_1013={} restarts={} rss={}",
                    sh.secs(now),
                    sh.live.load(Relaxed),
                    sh.c.joins_ok.load(Relaxed),
                    sh.c.unexpected_drops.load(Relaxed),
                    sh.c.published.load(Relaxed),
                    sh.c.deliveries.load(Relaxed),
                    sh.c.slow_1013.load(Relaxed),
                    sh.restarts.lock().map(|r| r.len()).unwrap_or(0),
                    rss.last().map(|r| format!("{:.1}MiB", r.1)).unwrap_or("-".into()),
                );
            }
            std::thread::sleep(
                Duration::from_millis(50)
                    .min(Duration::from_micros(until.saturating_sub(now_us()))),
            );
        }
    };
    wait(end, &mut rss, "soak");
    sh.stop_pushing.store(true, Relaxed);
    let drain_end = now_us() + (sh.sc.drain.max(4.0) * 1e6) as u64;
    wait(drain_end, &mut rss, "drain");
    sh.stop.store(true, Relaxed);
    let close_deadline = now_us() + 15_000_000;
    while !clients.is_finished() && now_us() < close_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if clients.is_finished() {
        if let Ok(Err(e)) = clients.join() {
            sh.note_error(format!("client thread: {e:#}"));
        }
    } else {
        sh.note_error("client tasks did not finish within 15 s of the stop".into());
    }
    sample(&mut rss);
    sub_stop.store(true, Relaxed);
    let _ = sub.join();
    for t in threads {
        let _ = t.join();
    }

    // Tally.
    let restarts = sh.restarts.lock().map(|r| r.clone()).unwrap_or_default();
    let grace = (sh.p.restart_grace * 1e6) as u64;
    let windows: Vec<(u64, u64)> = restarts
        .iter()
        .map(|r| (r.from_us.saturating_sub(500_000), r.to_us + grace))
        .collect();
    let (pushes, outages) = {
        let l = sh.ledger.lock().map_err(|_| anyhow!("ledger poisoned"))?;
        (l.tally((sh.p.ack_guard * 1e6) as u64), l.outages(t0))
    };
    let mut down = {
        let mut published = sh
            .published
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .clone();
        for v in &mut published {
            v.sort_unstable();
        }
        let sessions = sh.sessions.lock().map_err(|_| anyhow!("poisoned"))?;
        downstream_tally(
            &published,
            &sessions,
            &windows,
            (sh.p.edge_margin * 1e6) as u64,
        )
    };
    down.publish_unconfirmed = sh.c.publish_unconfirmed.load(Relaxed);
    let mm = |f: fn(f64, f64) -> f64| rss.iter().map(|r| r.1).reduce(f);
    let rss_s = Rss {
        min_mib: mm(f64::min),
        max_mib: mm(f64::max),
        first_mib: rss.first().map(|r| r.1),
        last_mib: rss.last().map(|r| r.1),
        series: rss
            .iter()
            .map(|&(t, m)| ((t * 10.0).round() / 10.0, (m * 100.0).round() / 100.0))
            .collect(),
    };
    let c = &sh.c;
    let errors = sh
        .errors
        .lock()
        .map(|e| (e.count, e.first.clone()))
        .unwrap_or_default();
    let summary = serde_json::json!({
        "scenario": sh.sc.name,
        "kind": "soak",
        "params": sh.sc,
        "duration_s": sh.sc.duration,
        "pushes": pushes,
        "downstream": down,
        "churn": {
            "clients": sh.sc.clients,
            "sockets_opened": c.sockets_opened.load(Relaxed),
            "connect_failed": c.connect_failed.load(Relaxed),
            "joins_ok": c.joins_ok.load(Relaxed),
            "join_failed": c.join_failed.load(Relaxed),
            "leaves_ok": c.leaves_ok.load(Relaxed),
            "leave_unanswered": c.leave_unanswered.load(Relaxed),
            "unexpected_drops": c.unexpected_drops.load(Relaxed),
            "reconnects": c.reconnects.load(Relaxed),
            "close_codes": *sh.close_codes.lock().map_err(|_| anyhow!("poisoned"))?,
        },
        "slow": {
            "clients": sh.p.slow_clients,
            "published": c.slow_published.load(Relaxed),
            "stalls": c.slow_cycles.load(Relaxed),
            "closed_1013": c.slow_1013.load(Relaxed),
            "closed_other": *sh.slow_other.lock().map_err(|_| anyhow!("poisoned"))?,
            "eof_without_close": c.slow_eof.load(Relaxed),
            "not_closed": c.slow_not_closed.load(Relaxed),
            "server_slow_consumer_closes": slow_closes_before
                .zip(slow::server_closes(sh.addr, &sh.host))
                .map(|(a, b)| slow::closes_since(&a, &b).values().sum::<u64>()),
        },
        "redis": {
            "restarts": restarts,
            "subscriber_reconnects": c.subscriber_reconnects.load(Relaxed),
            "subscriber_outages_s": outages,
        },
        "rss": rss_s,
        "errors": {"count": errors.0, "first": errors.1},
    });
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    if !rss.is_empty() {
        let title = format!("server RSS during the soak ({} s)", sh.sc.duration);
        std::fs::write(
            args.out.join("rss.svg"),
            crate::timeline::svg(&title, "RSS (MiB)", &rss),
        )?;
        std::fs::write(
            args.out.join("rss.csv"),
            crate::timeline::csv("rss_mib", &rss),
        )?;
    }
    if pushes.lost_acked > 0 {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        bail!(
            "{} acknowledged pushes were lost (ids {:?})",
            pushes.lost_acked,
            pushes.lost_acked_ids
        );
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_push_never_seen_while_subscriber_up_is_lost() {
        let mut l = Ledger::default();
        l.subscriber_up(100);
        l.sent(1, 200);
        l.replied(1, true, 300, None);
        l.sent(2, 210);
        l.replied(2, true, 310, None);
        l.seen(2);
        let t = l.tally(50);
        assert_eq!((t.sent, t.ok, t.ok_verifiable, t.lost_acked), (2, 2, 2, 1));
        assert_eq!(t.lost_acked_ids, vec![1]);
    }

    #[test]
    fn ok_push_during_subscriber_outage_is_unverifiable_not_lost() {
        let mut l = Ledger::default();
        l.subscriber_up(100);
        l.subscriber_down(1000);
        l.subscriber_up(2000);
        // sent before the outage, acked too close to it (guard 100)
        l.sent(1, 800);
        l.replied(1, true, 950, None);
        // sent during the outage, acked after the resubscription
        l.sent(2, 1500);
        l.replied(2, true, 2100, None);
        l.seen(2);
        // fully inside the second interval
        l.sent(3, 2200);
        l.replied(3, true, 2300, None);
        l.seen(3);
        // acked well before the outage
        l.sent(4, 200);
        l.replied(4, true, 300, None);
        l.seen(4);
        let t = l.tally(100);
        assert_eq!(t.lost_acked, 0);
        assert_eq!(t.ok_verifiable, 2);
        assert_eq!(t.ok_unverifiable, 2);
        assert_eq!(t.ok_unverifiable_seen, 1);
        assert_eq!(t.ok_unverifiable_unseen_ack_to_down_ms, vec![Some(0.05)]);
        assert_eq!(l.outages(0), vec![(0.001, 0.002)]);
    }

    #[test]
    fn errors_unanswered_duplicates_and_unknown_are_counted() {
        let mut l = Ledger::default();
        l.subscriber_up(0);
        l.sent(1, 10);
        l.replied(1, false, 20, Some("backend unavailable"));
        l.seen(1);
        l.sent(2, 10);
        l.sent(3, 10);
        l.replied(3, true, 30, None);
        l.replied(3, false, 40, Some("x")); // a second reply does not change the first
        l.seen(3);
        l.seen(3);
        l.seen(99);
        let t = l.tally(0);
        assert_eq!((t.ok, t.error, t.unanswered), (1, 1, 1));
        assert_eq!(
            (t.error_seen, t.duplicates, t.seen_unknown, t.lost_acked),
            (1, 1, 1, 0)
        );
        assert_eq!(t.error_reasons.get("backend unavailable"), Some(&1));
    }

    #[test]
    fn downstream_counts_only_inside_sessions_and_classifies_misses() {
        let published = vec![vec![100, 200, 300, 400, 500, 600], vec![150]];
        let sessions = vec![
            SessionLog {
                topic: 0,
                from_us: 140,
                to_us: 560,
                stamps: vec![200, 300, 300, 999],
            },
            SessionLog {
                topic: 1,
                from_us: 0,
                to_us: 1000,
                stamps: vec![],
            },
        ];
        // margin 10: session 0 counts [150, 550): 200, 300, 400, 500
        let t = downstream_tally(&published, &sessions, &[(390, 450)], 10);
        assert_eq!(t.published, 7);
        assert_eq!(t.expected, 5);
        assert_eq!(t.delivered, 2);
        assert_eq!(t.missing, 3);
        assert_eq!(t.missing_near_restart, 1); // 400
        assert_eq!(t.missing_elsewhere, 2); // 500 and topic 1's 150
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.delivered_unconfirmed, 0); // 999 is outside the window
    }

    #[test]
    fn push_ids_are_parsed() {
        assert_eq!(
            parse_push_id(br#"{"soak":"ab12-42","pad":"x"}"#, "ab12"),
            Some(42)
        );
        assert_eq!(
            parse_push_id(br#"{"soak":"zz-42","pad":"x"}"#, "ab12"),
            None
        );
        assert_eq!(parse_push_id(br#"{"t":1}"#, "ab12"), None);
    }

    #[test]
    fn shipped_soak_scenario_has_valid_params() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/soak.toml");
        let sc = Scenario::load(&p).unwrap();
        sc.validate().unwrap();
        let sp = sc.soak.unwrap();
        sp.validate().unwrap();
        assert!(sp.restart_every > 0.0);
        assert!(SoakParams::default().validate().is_ok());
    }
}
