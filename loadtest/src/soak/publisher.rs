//! The soak's publisher: `PUBLISH to:<topic>:<event>` at `rate`/s round-robin over the topics
//! (and the slow topic at `slow_rate`), each stamped; a publish counts as published only once
//! Redis answered it. It reconnects after a restart and skips, never bursts, what fell due while
//! Redis was away.

use super::redis_link::redis_connect;
use super::shared::Shared;
use crate::resp::{encode_command, read_replies};
use crate::stamp::{now_us, payload_template, write_stamp, STAMP_POS};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn publisher(sh: Arc<Shared>) {
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
    let period = period_us(sh.sc.rate);
    let slow_period = if sh.p.slow_clients > 0 {
        period_us(sh.p.slow_rate)
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
                .and_then(|_| read_replies(s, n, &mut rbuf, Duration::from_secs(2)));
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

/// µs between two publishes at `rate`/s; never for a rate of 0.
fn period_us(rate: f64) -> f64 {
    if rate > 0.0 {
        1e6 / rate
    } else {
        f64::INFINITY
    }
}
