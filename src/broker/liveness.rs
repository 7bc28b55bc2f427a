//! This process's presence liveness in Redis, and when it looks for dead processes.
//!
//! Owns the schedule of the [`crate::presence::scripts::UPKEEP`] script, which refreshes this
//! process's score in `presence:{_processes}:expiry` and finds every process whose score has
//! passed, and the removal of those processes' members that follows it (topic by topic: on a
//! Redis Cluster each topic's keys live in its own slot). It runs every `presence_ttl / 3`, and
//! also right after the moment another process's score passes (the script says when that is):
//! a process killed just after its refresh is reaped
//! `presence_ttl` later, not up to a refresh period after that. A live process never causes
//! that extra run (it refreshes two periods before its score passes), so an idle deployment
//! pays one script per process per refresh period and nothing else. It never blocks longer
//! than the connection's deadlines and never touches the shards: the publisher acts on what
//! [`Liveness::upkeep`] reports.

use std::time::{Duration, Instant};

use super::master_links::{MasterLinks, Route};
use super::script_set::LoadedScripts;
use crate::presence;

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

    /// Refreshes this process's liveness, finds dead processes, and removes the members of
    /// every process being reaped (one [`crate::presence::scripts::REAP_TOPIC`] per topic,
    /// each on its topic's master, then [`crate::presence::scripts::REAPED`]); schedules the
    /// next run. A topic whose master is unreachable leaves its process in the reaping set for
    /// the next upkeep (of any process).
    pub fn upkeep(
        &mut self,
        links: &mut MasterLinks,
        shas: &LoadedScripts,
    ) -> redis::RedisResult<UpkeepReport> {
        let ttl = self.ttl.as_millis().to_string();
        let (added, dead, next_expiry_ms, reaping) = run_upkeep(links, shas, &self.node, &ttl)?;
        let now = Instant::now();
        let mut next_at = now + self.refresh_period();
        if let Ok(ms) = u64::try_from(next_expiry_ms) {
            next_at = next_at.min(now + Duration::from_millis(ms) + AFTER_EXPIRY);
        }
        self.next_at = next_at;
        let reaped = reap(links, shas, reaping)?;
        // Listed anew on a connection that already refreshed: it was found dead meanwhile.
        let was_reaped = added == 1 && self.refreshed_on_this_connection;
        self.refreshed_on_this_connection = true;
        Ok(UpkeepReport {
            was_reaped,
            reaped: dead.max(reaped),
        })
    }

    /// Schedules the next upkeep `after` from now (one that failed on a cluster master).
    pub fn retry_after(&mut self, after: Duration) {
        self.next_at = Instant::now() + after;
    }

    /// Marks this process dead at once and removes its members (at a clean stop): the other
    /// processes' clients see them leave now rather than a TTL later.
    pub fn stop(&self, links: &mut MasterLinks, shas: &LoadedScripts) -> redis::RedisResult<()> {
        let (_, _, _, reaping) = run_upkeep(links, shas, &self.node, "stop")?;
        reap(links, shas, reaping).map(|_| ())
    }
}

/// A dead process and the topics it had members in.
type Reaping = Vec<(String, Vec<String>)>;

/// Runs [`crate::presence::scripts::UPKEEP`]: `(added, dead, next expiry ms, reaping)`.
fn run_upkeep(
    links: &mut MasterLinks,
    shas: &LoadedScripts,
    node: &str,
    ttl_or_stop: &str,
) -> redis::RedisResult<(i64, i64, i64, Reaping)> {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(&shas.upkeep)
        .arg(2)
        .arg(presence::PROCESSES_KEY)
        .arg(presence::REAPING_KEY)
        .arg(node)
        .arg(ttl_or_stop);
    let reply = links.query(Route::key(presence::PROCESSES_KEY), cmd)?;
    let parsed: (i64, i64, i64, Reaping) = redis::FromRedisValue::from_redis_value(reply)?;
    Ok(parsed)
}

/// Removes the members of every process in `reaping`, topic by topic; forgets each process
/// whose topics are all done. Returns how many were forgotten.
fn reap(
    links: &mut MasterLinks,
    shas: &LoadedScripts,
    reaping: Reaping,
) -> redis::RedisResult<i64> {
    let mut forgotten = 0;
    for (node, topics) in reaping {
        let prefix = format!("{node}:");
        let commands: Vec<(Route, redis::Cmd)> = topics
            .iter()
            .map(|topic| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(&shas.reap_topic)
                    .arg(2)
                    .arg(presence::members_key(topic))
                    .arg(presence::version_key(topic))
                    .arg(&prefix)
                    .arg(presence::diff_channel(topic));
                (Route::key(&presence::members_key(topic)), cmd)
            })
            .collect();
        let replies = links.pipeline(&commands)?;
        let all_done = replies.iter().all(
            |reply| matches!(reply, Some(value) if !matches!(value, redis::Value::ServerError(_))),
        );
        if !all_done {
            continue;
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&shas.reaped)
            .arg(1)
            .arg(presence::REAPING_KEY)
            .arg(&node);
        links.query(Route::key(presence::REAPING_KEY), cmd)?;
        forgotten += 1;
    }
    Ok(forgotten)
}
