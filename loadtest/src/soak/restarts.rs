//! Redis restarts: every `restart_every` s, run `restart_command` with `sh -c`, wait for Redis to
//! answer `PING` again, and record when (the downstream tally forgives misses near a restart).

use super::redis_link::redis_answers_ping;
use super::shared::Shared;
use crate::stamp::now_us;
use serde::Serialize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub(super) struct RestartRec {
    pub(super) at_s: f64,
    /// When Redis answered PING again (None: not within 30 s).
    pub(super) ready_s: Option<f64>,
    pub(super) command_ok: bool,
    #[serde(skip)]
    pub(super) from_us: u64,
    #[serde(skip)]
    pub(super) to_us: u64,
}

pub(super) fn restarter(sh: Arc<Shared>) {
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
