//! The state every piece of a soak shares: the parsed parameters, the ledger and logs the pieces
//! fill, the counters, the error list and the stop flags. It holds data only; it never starts a
//! thread nor opens a socket.

use super::downstream::SessionLog;
use super::ledger::Ledger;
use super::restarts::RestartRec;
use crate::scenario::{Scenario, SoakParams};
use crate::stamp::now_us;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::Mutex;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) sockets_opened: AtomicU64,
    pub(super) connect_failed: AtomicU64,
    pub(super) joins_ok: AtomicU64,
    pub(super) join_failed: AtomicU64,
    pub(super) leaves_ok: AtomicU64,
    pub(super) leave_unanswered: AtomicU64,
    pub(super) unexpected_drops: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) deliveries: AtomicU64,
    pub(super) slow_cycles: AtomicU64,
    pub(super) slow_1013: AtomicU64,
    pub(super) slow_eof: AtomicU64,
    pub(super) slow_not_closed: AtomicU64,
    pub(super) published: AtomicU64,
    pub(super) slow_published: AtomicU64,
    pub(super) publish_unconfirmed: AtomicU64,
    pub(super) subscriber_reconnects: AtomicU64,
}

#[derive(Default)]
pub(super) struct Errors {
    pub(super) count: u64,
    pub(super) first: Vec<String>,
}

pub(super) struct Shared {
    pub(super) addr: SocketAddr,
    pub(super) host: String,
    pub(super) redis: SocketAddr,
    pub(super) sc: Scenario,
    pub(super) p: SoakParams,
    pub(super) run_id: String,
    pub(super) t0: u64,
    pub(super) next_push_id: AtomicU64,
    pub(super) ledger: Mutex<Ledger>,
    pub(super) sessions: Mutex<Vec<SessionLog>>,
    pub(super) published: Mutex<Vec<Vec<u64>>>,
    pub(super) restarts: Mutex<Vec<RestartRec>>,
    pub(super) close_codes: Mutex<BTreeMap<String, u64>>,
    pub(super) slow_other: Mutex<BTreeMap<String, u64>>,
    pub(super) errors: Mutex<Errors>,
    pub(super) c: Counters,
    pub(super) live: AtomicI64,
    pub(super) stop_pushing: AtomicBool,
    pub(super) stop: AtomicBool,
}

impl Shared {
    pub(super) fn note_error(&self, e: String) {
        if let Ok(mut g) = self.errors.lock() {
            g.count += 1;
            if g.first.len() < 30 {
                g.first.push(format!("[{:.1}s] {e}", self.secs(now_us())));
            }
        }
    }

    pub(super) fn secs(&self, t: u64) -> f64 {
        t.saturating_sub(self.t0) as f64 / 1e6
    }

    pub(super) fn bump(map: &Mutex<BTreeMap<String, u64>>, k: String) {
        if let Ok(mut m) = map.lock() {
            *m.entry(k).or_default() += 1;
        }
    }
}
