//! The publisher's presence work: answering joins from the process's presence copy, keeping
//! this process's liveness fresh and reaping dead processes' members, replaying leaves Redis
//! did not take, and caring for the copy (snapshots of stuck topics, dropping idle ones).
//!
//! The scripts themselves are `crate::presence::scripts`; which commands go into a pipeline is
//! the publisher's (`publisher.rs`). This file is the presence half of the same thread, so it
//! shares the publisher's state and never blocks a shard: answers go back through the inbox.

use std::sync::Mutex;
use std::time::Instant;

use tracing::{info, warn};

use super::commands::UpstreamCommand;
use super::liveness::Liveness;
use super::master_links::MasterLinks;
use super::publisher::{LoadedScripts, RedisPublisher, MAX_BATCH};
use super::reader::send_states;
use crate::inbox::ShardMessage;
use crate::presence::replica::{PresenceReplica, Wanted};
use crate::presence::PresenceTicket;

/// Presence copies holding this many members in all, dropped, are worth a heap trim.
const TRIM_AFTER_DROPPED_MEMBERS: usize = 1_000;

/// The most failed leaves kept for replay; beyond, the oldest are dropped (their members then
/// stay listed until this process stops or dies).
pub(super) const MAX_FAILED_LEAVES: usize = 100_000;

impl RedisPublisher {
    /// Sends the leaves that failed while Redis was away, before anything else (once each: a
    /// leave Redis refuses again waits for the next connection).
    pub(super) fn replay_failed_leaves(
        &self,
        conn: &mut MasterLinks,
        scripts: &LoadedScripts,
        batch: &mut Vec<UpstreamCommand>,
    ) -> redis::RedisResult<()> {
        let mut remaining = self.failed_leaves.borrow().len();
        while remaining > 0 {
            {
                let mut failed = self.failed_leaves.borrow_mut();
                let n = remaining.min(MAX_BATCH).min(failed.len());
                batch.extend(failed.drain(..n));
                remaining = remaining.saturating_sub(n.max(1));
            }
            if !batch.is_empty() {
                self.run_pipeline(conn, scripts, batch)?;
            }
        }
        Ok(())
    }

    /// Refreshes this process's liveness and removes the presences of dead processes.
    pub(super) fn presence_upkeep(
        &self,
        conn: &mut MasterLinks,
        s: &LoadedScripts,
        liveness: &mut Liveness,
    ) -> redis::RedisResult<()> {
        let report = liveness.upkeep(conn, s)?;
        if report.reaped > 0 {
            info!(
                reaped = report.reaped,
                "removed the presences of stopped channel processes"
            );
        }
        if report.was_reaped {
            // Another process took this one for dead (it could not refresh for a TTL) and
            // removed its members: register them again, as after a reconnect.
            warn!("this process's presences were reaped while it lived; registering them again");
            // Its topic list went with them.
            self.registered_topics.borrow_mut().clear();
            self.shards.send_all(|| ShardMessage::PresenceResync);
        }
        Ok(())
    }

    /// The presence copy's timed care, when it is due: stuck joins and seeds ask for a
    /// snapshot, idle copies go (and, once a wave of them is gone, their memory).
    pub(super) fn care_for_copies(&self, now: Instant) {
        let mut replica = lock(&self.replica);
        if replica.next_care().is_none_or(|at| at > now) {
            return;
        }
        let dropped = replica.expire(now);
        let empty = replica.topics() == 0;
        drop(replica);
        let since_trim = self.dropped_since_trim.get() + dropped;
        // The wave is over when a care run drops nothing more or nothing is left to drop.
        if since_trim >= TRIM_AFTER_DROPPED_MEMBERS && (dropped == 0 || empty) {
            crate::heap::trim();
            self.dropped_since_trim.set(0);
        } else {
            self.dropped_since_trim.set(since_trim);
        }
    }

    /// A join's outcome: `reply` is its version and, if it asked, the members to seed the copy
    /// with. The joiner's state comes from the copy, now or once it reaches that version.
    pub(super) fn answer_join(
        &self,
        topic: &str,
        ticket: PresenceTicket,
        reply: Option<(u64, Option<Vec<Vec<u8>>>)>,
        seed: bool,
    ) {
        match reply {
            Some(reply) => self.answer_join_state(topic, Some(ticket), Some(reply)),
            None => {
                // No version, so no state for this joiner; a seed it carried is lost too.
                if seed {
                    self.answer_join_state(topic, None, None);
                }
                self.send_no_state(ticket);
            }
        }
    }

    /// Tells a joiner's shard that Redis could not give its state (the channel then runs
    /// without one until the next resync).
    pub(super) fn send_no_state(&self, ticket: PresenceTicket) {
        let shard = ticket.shard;
        let state = None;
        self.send(shard, ShardMessage::PresenceState { ticket, state });
    }

    /// Seeds the copy of `topic` (members in `reply`), registers `joiner` at its version, and
    /// sends every state that is ready. `reply` `None`: the seed failed, its waiters get none.
    pub(super) fn answer_join_state(
        &self,
        topic: &str,
        joiner: Option<PresenceTicket>,
        reply: Option<(u64, Option<Vec<Vec<u8>>>)>,
    ) {
        let now = Instant::now();
        let mut replica = lock(&self.replica);
        let Some((version, members)) = reply else {
            let waiters = replica.seed_failed(topic);
            drop(replica);
            for ticket in waiters {
                self.send_no_state(ticket);
            }
            return;
        };
        let mut served = match members {
            Some(members) => replica.seed(topic, version, members.iter().map(Vec::as_slice), now),
            None => Vec::new(),
        };
        if let Some(ticket) = joiner {
            if let Wanted::Ready(state) = replica.want(topic, version, ticket.clone(), now) {
                served.push((ticket, state));
            }
        }
        drop(replica);
        send_states(&self.shards, served);
    }
}

/// `{version}` or `{version, [entry, …]}` → the version and the entries, if any.
pub(super) fn parse_presence_reply(reply: redis::Value) -> Option<(u64, Option<Vec<Vec<u8>>>)> {
    let redis::Value::Array(mut parts) = reply else {
        return None;
    };
    let entries = match parts.len() {
        1 => None,
        2 => match parts.pop()? {
            redis::Value::Array(entries) => Some(
                entries
                    .into_iter()
                    .filter_map(|value| match value {
                        redis::Value::BulkString(bytes) => Some(bytes),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => return None,
        },
        _ => return None,
    };
    let version = match parts.pop()? {
        redis::Value::Int(v) => u64::try_from(v).ok()?,
        _ => return None,
    };
    Some((version, entries))
}

/// The replica's lock; a panic while holding it leaves it usable (every operation on it
/// leaves it consistent).
pub(super) fn lock(replica: &Mutex<PresenceReplica>) -> std::sync::MutexGuard<'_, PresenceReplica> {
    replica
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
