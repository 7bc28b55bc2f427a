//! This process's presence liveness in Redis, and when it looks for dead processes.
//!
//! Owns the schedule of the [`scripts::UPKEEP`] script, which refreshes this process's score in
//! `presence:nodes` and removes the members of every process whose score has passed. It runs
//! every `presence_ttl / 3`, and also right after the moment another process's score passes
//! (the script says when that is): a process killed just after its refresh is reaped
//! `presence_ttl` later, not up to a refresh period after that. A live process never causes
//! that extra run (it refreshes two periods before its score passes), so an idle deployment
//! pays one script per process per refresh period and nothing else. It never blocks longer
//! than the connection's deadlines and never touches the shards: the publisher acts on what
//! [`Liveness::upkeep`] reports.

use std::time::{Duration, Instant};

use crate::presence::scripts;

/// Waking this long after another process's score passes, rather than at the very
/// millisecond, keeps a wake-up that comes a hair early (the local and Redis clocks tick
/// alike, but not in lockstep) from finding it alive and waking again at once.
const AFTER_EXPIRY: Duration = Duration::from_millis(5);

/// What one upkeep found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpkeepReport {
    /// This process was not listed: its members were reaped while it lived (it could not
    /// refresh for longer than the TTL) and must be registered again.
    pub was_reaped: bool,
    /// How many dead processes this run removed.
    pub reaped: i64,
}

/// The refresh-and-reap schedule of one process.
#[derive(Debug)]
pub struct Liveness {
    node: String,
    ttl: Duration,
    next_at: Instant,
    /// The upkeep since the last (re)connection has run: a missing entry is news only then
    /// (on connecting, the shards register every member anyway).
    refreshed_on_this_connection: bool,
}

impl Liveness {
    /// A schedule for `node` whose presences outlive its last refresh by `ttl`.
    pub fn new(node: String, ttl: Duration) -> Liveness {
        Liveness {
            node,
            ttl,
            next_at: Instant::now(),
            refreshed_on_this_connection: false,
        }
    }

    /// How often this process refreshes its score: a third of the TTL, so that two refreshes
    /// may be late (a pipeline in progress takes at most its 3 s deadline) before a live
    /// process could be taken for dead.
    pub fn refresh_period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// A new connection: refresh at once.
    pub fn connected(&mut self) {
        self.next_at = Instant::now();
        self.refreshed_on_this_connection = false;
    }

    /// When the next upkeep is due.
    pub fn next_at(&self) -> Instant {
        self.next_at
    }

    /// Runs the upkeep script (`sha`, loaded on `conn`) and schedules the next one.
    pub fn upkeep(
        &mut self,
        conn: &mut redis::Connection,
        sha: &str,
    ) -> redis::RedisResult<UpkeepReport> {
        let (added, reaped, next_expiry_ms): (i64, i64, i64) = redis::cmd("EVALSHA")
            .arg(sha)
            .arg(0)
            .arg(&self.node)
            .arg(self.ttl.as_millis() as u64)
            .query(conn)?;
        let now = Instant::now();
        let mut next_at = now + self.refresh_period();
        if let Ok(ms) = u64::try_from(next_expiry_ms) {
            next_at = next_at.min(now + Duration::from_millis(ms) + AFTER_EXPIRY);
        }
        self.next_at = next_at;
        let was_reaped = added == 1 && self.refreshed_on_this_connection;
        self.refreshed_on_this_connection = true;
        Ok(UpkeepReport { was_reaped, reaped })
    }

    /// At a clean stop: this process's presences leave at once (its score becomes 0 and the
    /// same script reaps it), instead of a TTL later.
    pub fn stop(&self, conn: &mut redis::Connection) -> redis::RedisResult<()> {
        redis::cmd("EVAL")
            .arg(scripts::UPKEEP)
            .arg(0)
            .arg(&self.node)
            .arg("stop")
            .query::<redis::Value>(conn)
            .map(|_| ())
    }
}
