//! Churn clients: each loops socket → 1–3 × (join a random topic, push at its share of
//! `push_rate`, hold, wait for its push replies, `phx_leave`) → close, logging every push in the
//! ledger and every join in the session log. They never talk to Redis.

use super::downstream::SessionLog;
use super::shared::Shared;
use crate::conn::Ws;
use crate::stamp::{now_us, payload_template};
use crate::token::TokenClient;
use crate::ws;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

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

enum SessionEnd {
    Left,
    Stopped,
}

pub(super) async fn churn_client(sh: Arc<Shared>, idx: usize, tokens: Rc<TokenClient>) {
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
