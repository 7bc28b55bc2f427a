//! This process's copy of the presence of the topics it has joiners in, so that a joiner's
//! `presence_state` is built here instead of reading (and parsing) the whole members hash from
//! Redis on every join.
//!
//! A topic's copy is seeded once from Redis (the join script returns the hash when asked to,
//! or the snapshot script does) and then follows the versioned diffs that every process
//! receives on its subscriber connection, in version order. A join learns the version its own
//! change produced; it is served as soon as the copy has reached that version, so its state
//! contains its own join and everything before it, exactly as if read from Redis right after
//! it. Anything that breaks the sequence (a missing version, a diff that does not parse, a lost
//! subscription, a join left waiting too long) turns the copy back into "seeding" and asks the
//! publisher for a snapshot; waiting joins are served from it. A copy no join used for
//! [`IDLE_LIMIT`] is dropped, so memory follows the topics joined recently.
//!
//! Shared by the Redis reader (diffs) and publisher (seeds, and the timed care of
//! [`PresenceReplica::expire`]) behind one mutex; each holds it for one operation. The callers
//! send the served states to the shards. It never asks for a wake-up while it holds no copy:
//! [`PresenceReplica::next_care`] is `None` then, so an idle process does not poll it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexmap::{IndexMap, IndexSet};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::shapes::{to_json_string, DiffRef};
use super::PresenceTicket;

/// A join waiting longer than this for the copy to reach its version gets a snapshot instead.
pub const WAIT_LIMIT: Duration = Duration::from_secs(2);
/// A seed asked for longer ago than this is asked for again.
const SEED_LIMIT: Duration = Duration::from_secs(5);
/// A copy no join used for this long is dropped. A copy saves reading and parsing the
/// topic's hash once per join, which matters only while joins come in quick succession (a
/// storm, a reconnect wave); a topic joined less often than this re-seeds its copy at its
/// next join (one `HVALS`, as every join cost before copies existed) instead of holding about
/// 170 B a member between joins (docs/benchmarks.md, "Memory per connection, session 4").
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);
/// A copy's state JSON no join used for this long is let go (it is rebuilt on the next join);
/// a topic's state is as large as its members' text and would otherwise stay as long as the copy.
const STATE_KEEP: Duration = Duration::from_secs(1);
/// Diffs kept for a topic while its seed is on its way; past this the oldest go (the seed's
/// version check then asks for another seed if it needed them).
const MAX_BUFFERED: usize = 4096;

/// A joiner's state: the version it corresponds to and the `presence_state` JSON.
pub type State = (u64, Arc<str>);
/// States ready to be sent, with the joins they answer.
pub type Served = Vec<(PresenceTicket, State)>;

/// The copies, by topic, and the snapshots the publisher should fetch.
#[derive(Default)]
pub struct PresenceReplica {
    topics: HashMap<String, TopicCopy>,
    /// Topics to re-seed, each once however often it is asked for (a Redis outage keeps
    /// asking every few seconds while nothing can be fetched).
    snapshot_requests: IndexSet<String>,
    /// When [`Self::expire`] next has something to do, at the latest; `None`: nothing to do
    /// until the next change. Exact after `expire`; changes in between only move it earlier.
    care_at: Option<Instant>,
}

/// What became of a join's request for its state.
#[derive(Debug)]
pub enum Wanted {
    /// The copy is there: send this.
    Ready(State),
    /// It is served later (by a diff or a seed).
    Waiting,
    /// There was no copy: it is now seeding, and a snapshot is requested
    /// (see [`PresenceReplica::take_snapshot_requests`]).
    NeedsSnapshot,
}

struct TopicCopy {
    copy: CopyState,
    waiters: Vec<Waiter>,
    last_used: Instant,
}

/// How far one topic's copy is: waiting for its seed, or current.
enum CopyState {
    /// A seed was asked for at `since`; diffs arriving meanwhile are kept.
    Seeding {
        since: Instant,
        buffered: Vec<(u64, Vec<u8>)>,
    },
    /// Current up to `version`.
    Live {
        version: u64,
        members: Members,
        /// The state JSON at `version`, built on first use.
        state: Option<Arc<str>>,
    },
}

struct Waiter {
    version: u64,
    ticket: PresenceTicket,
    since: Instant,
}

/// The members of a topic, by key (the client id), in the `presence_state` shape, kept as
/// the JSON text each member contributes to a state: per key, the key escaped once as a JSON
/// string and the metas of its joins as one comma-separated text. Two allocations a member
/// (about 170 B with the map's slot), so a copy costs little next to a connection; the metas of
/// a key are parsed only when a key on several sockets joins again or a meta leaves.
#[derive(Default)]
struct Members {
    /// Key as a JSON string ([`to_json_string`]) → its metas, `{..},{..}` verbatim.
    by_key: IndexMap<Box<str>, Box<str>>,
    /// How many metas in all.
    metas: usize,
}

/// A stored entry of the members hash (see [`super::shapes::stored_entry`]).
#[derive(Deserialize)]
struct StoredEntry<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    meta: &'a RawValue,
}

#[derive(Deserialize)]
struct MetaRef<'a> {
    #[serde(borrow)]
    phx_ref: std::borrow::Cow<'a, str>,
}

fn phx_ref_of(meta: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    serde_json::from_str::<MetaRef<'_>>(meta.get())
        .ok()
        .map(|m| m.phx_ref)
}

/// The metas of one key, parsed back from their stored text (it was checked when stored).
fn parse_metas(metas: &str) -> Vec<&RawValue> {
    let mut out = Vec::new();
    let mut rest = metas;
    while !rest.is_empty() {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
        let Some(Ok(meta)) = stream.next() else {
            break;
        };
        out.push(meta);
        rest = rest[stream.byte_offset()..].trim_start_matches(',');
    }
    out
}

impl Members {
    fn add(&mut self, key: &str, phx_ref: &str, meta: &str) {
        let key_json = to_json_string(key);
        let Some(metas) = self.by_key.get_mut(key_json.as_str()) else {
            self.by_key.insert(key_json.into(), meta.into());
            self.metas += 1;
            return;
        };
        if parse_metas(metas)
            .iter()
            .any(|m| phx_ref_of(m).as_deref() == Some(phx_ref))
        {
            return;
        }
        *metas = format!("{metas},{meta}").into();
        self.metas += 1;
    }

    fn remove(&mut self, key: &str, phx_ref: &str) {
        let key_json = to_json_string(key);
        let Some(metas) = self.by_key.get_mut(key_json.as_str()) else {
            return;
        };
        let all = parse_metas(metas);
        let kept: Vec<&str> = all
            .iter()
            .filter(|m| phx_ref_of(m).as_deref() != Some(phx_ref))
            .map(|m| m.get())
            .collect();
        if kept.len() == all.len() {
            return;
        }
        self.metas -= all.len() - kept.len();
        if kept.is_empty() {
            self.by_key.swap_remove(key_json.as_str());
        } else {
            *metas = kept.join(",").into();
        }
    }

    /// Applies one diff (joins, then leaves, as phoenix.js does). False if it does not parse.
    fn apply(&mut self, diff: &[u8]) -> bool {
        let Ok(diff) = serde_json::from_slice::<DiffRef<'_>>(diff) else {
            return false;
        };
        for (key, metas) in &diff.joins.0 {
            for meta in metas {
                let Some(phx_ref) = phx_ref_of(meta) else {
                    return false;
                };
                self.add(key, &phx_ref, meta.get());
            }
        }
        for (key, metas) in &diff.leaves.0 {
            for meta in metas {
                let Some(phx_ref) = phx_ref_of(meta) else {
                    return false;
                };
                self.remove(key, &phx_ref);
            }
        }
        true
    }

    /// From the values of the members hash; entries that do not parse are skipped.
    fn from_entries<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Members {
        let mut members = Members::default();
        for raw in entries {
            let Ok(entry) = serde_json::from_slice::<StoredEntry<'_>>(raw) else {
                continue;
            };
            if let Some(phx_ref) = phx_ref_of(entry.meta) {
                members.add(&entry.key, &phx_ref, entry.meta.get());
            }
        }
        members
    }

    /// `presence_state`: `{<key>: {"metas": [...]}}`, by concatenation.
    fn state_json(&self) -> Arc<str> {
        let bytes: usize = self
            .by_key
            .iter()
            .map(|(key, metas)| key.len() + metas.len() + 13)
            .sum();
        let mut out = String::with_capacity(bytes + 2);
        out.push('{');
        for (i, (key, metas)) in self.by_key.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str(":{\"metas\":[");
            out.push_str(metas);
            out.push_str("]}");
        }
        out.push('}');
        Arc::from(out)
    }
}

impl TopicCopy {
    fn seeding(now: Instant) -> TopicCopy {
        TopicCopy {
            copy: CopyState::Seeding {
                since: now,
                buffered: Vec::new(),
            },
            waiters: Vec::new(),
            last_used: now,
        }
    }

    /// The state at the copy's version, if it is live.
    fn state(&mut self) -> Option<State> {
        let CopyState::Live {
            version,
            members,
            state,
        } = &mut self.copy
        else {
            return None;
        };
        let json = state.get_or_insert_with(|| members.state_json());
        Some((*version, Arc::clone(json)))
    }

    /// Serves every waiter the live copy has reached.
    fn serve_reached(&mut self, served: &mut Served) {
        let CopyState::Live { version, .. } = self.copy else {
            return;
        };
        if !self.waiters.iter().any(|w| w.version <= version) {
            return;
        }
        let Some(state) = self.state() else {
            return;
        };
        let (reached, waiting): (Vec<_>, Vec<_>) =
            self.waiters.drain(..).partition(|w| w.version <= version);
        self.waiters = waiting;
        served.extend(reached.into_iter().map(|w| (w.ticket, state.clone())));
    }

    /// Applies diff `version`; false when it breaks the sequence (the copy must be re-seeded).
    fn apply(&mut self, version: u64, diff: &[u8]) -> bool {
        match &mut self.copy {
            CopyState::Seeding { buffered, .. } => {
                if buffered.len() >= MAX_BUFFERED {
                    buffered.remove(0);
                }
                buffered.push((version, diff.to_vec()));
                true
            }
            CopyState::Live {
                version: current,
                members,
                state,
            } => {
                if version <= *current {
                    return true; // already in the copy (it was seeded after this diff)
                }
                if version != *current + 1 || !members.apply(diff) {
                    return false;
                }
                *current = version;
                *state = None;
                true
            }
        }
    }

    /// How many members (metas) the copy holds.
    fn members(&self) -> usize {
        match &self.copy {
            CopyState::Live { members, .. } => members.metas,
            CopyState::Seeding { .. } => 0,
        }
    }

    fn reseed(&mut self, now: Instant) {
        self.copy = CopyState::Seeding {
            since: now,
            buffered: Vec::new(),
        };
    }
}

impl PresenceReplica {
    /// Before a join of `topic` is sent to Redis: true when there is no copy, in which case
    /// one is now seeding and the join must ask Redis for the members (and then [`Self::seed`]).
    pub fn prepare_join(&mut self, topic: &str, now: Instant) -> bool {
        self.care_by(now);
        if let Some(copy) = self.topics.get_mut(topic) {
            copy.last_used = now;
            return false;
        }
        self.topics
            .insert(topic.to_owned(), TopicCopy::seeding(now));
        true
    }

    /// A join's change is at `version`: its state, now or later.
    pub fn want(
        &mut self,
        topic: &str,
        version: u64,
        ticket: PresenceTicket,
        now: Instant,
    ) -> Wanted {
        self.care_by(now);
        let copy = match self.topics.get_mut(topic) {
            Some(copy) => copy,
            None => {
                let mut copy = TopicCopy::seeding(now);
                copy.waiters.push(Waiter {
                    version,
                    ticket,
                    since: now,
                });
                self.topics.insert(topic.to_owned(), copy);
                self.snapshot_requests.insert(topic.to_owned());
                return Wanted::NeedsSnapshot;
            }
        };
        copy.last_used = now;
        if let CopyState::Live { version: at, .. } = copy.copy {
            if at >= version {
                if let Some(state) = copy.state() {
                    return Wanted::Ready(state);
                }
            }
        }
        copy.waiters.push(Waiter {
            version,
            ticket,
            since: now,
        });
        Wanted::Waiting
    }

    /// The members of `topic` as Redis had them at `version`: the copy starts (or restarts)
    /// from them, catches up on the diffs that arrived meanwhile, and serves who it can.
    pub fn seed<'a>(
        &mut self,
        topic: &str,
        version: u64,
        entries: impl IntoIterator<Item = &'a [u8]>,
        now: Instant,
    ) -> Served {
        self.care_by(now);
        let copy = self
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| TopicCopy::seeding(now));
        let mut served = Vec::new();
        let buffered = match &mut copy.copy {
            CopyState::Live { version: at, .. } if *at >= version => {
                // Already further along (a second seed crossed the first): keep it.
                copy.serve_reached(&mut served);
                return served;
            }
            CopyState::Live { .. } => Vec::new(),
            CopyState::Seeding { buffered, .. } => std::mem::take(buffered),
        };
        copy.copy = CopyState::Live {
            version,
            members: Members::from_entries(entries),
            state: None,
        };
        let mut buffered = buffered;
        buffered.sort_by_key(|(v, _)| *v);
        for (v, diff) in buffered {
            if !copy.apply(v, &diff) {
                copy.reseed(now);
                self.snapshot_requests.insert(topic.to_owned());
                return served;
            }
        }
        copy.serve_reached(&mut served);
        served
    }

    /// Redis could not give the seed: the copy goes, and its waiters are returned (they get
    /// no state; the shards re-register everything when Redis is back).
    pub fn seed_failed(&mut self, topic: &str) -> Vec<PresenceTicket> {
        let Some(copy) = self.topics.get(topic) else {
            return Vec::new();
        };
        if matches!(copy.copy, CopyState::Live { .. }) {
            return Vec::new(); // another seed made it: the waiters are served from that
        }
        self.topics
            .remove(topic)
            .map(|copy| copy.waiters.into_iter().map(|w| w.ticket).collect())
            .unwrap_or_default()
    }

    /// Diff `version` of `topic` arrived: the copy follows it and serves who it can. A diff
    /// that breaks the sequence re-seeds the copy (see [`Self::take_snapshot_requests`]).
    pub fn apply_diff(&mut self, topic: &str, version: u64, diff: &[u8], now: Instant) -> Served {
        let mut served = Vec::new();
        let Some(copy) = self.topics.get_mut(topic) else {
            return served;
        };
        if copy.apply(version, diff) {
            copy.serve_reached(&mut served);
        } else {
            copy.reseed(now);
            self.snapshot_requests.insert(topic.to_owned());
        }
        // A served waiter built a state (let go after STATE_KEEP), or the copy re-seeds.
        self.care_by(now);
        served
    }

    /// Timed care: joins waiting too long and seeds asked too long ago get a fresh snapshot;
    /// copies idle for [`IDLE_LIMIT`] go, and states unused for [`STATE_KEEP`]. Returns how
    /// many members the dropped copies held. Call it at [`Self::next_care`].
    pub fn expire(&mut self, now: Instant) -> usize {
        let requests = &mut self.snapshot_requests;
        let mut dropped = 0;
        let mut next: Option<Instant> = None;
        let mut due = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        self.topics.retain(|topic, copy| {
            let stuck = match &copy.copy {
                CopyState::Seeding { since, .. } => now.duration_since(*since) >= SEED_LIMIT,
                CopyState::Live { .. } => copy
                    .waiters
                    .iter()
                    .any(|w| now.duration_since(w.since) >= WAIT_LIMIT),
            };
            if stuck {
                copy.reseed(now);
                requests.insert(topic.clone());
                due(now + SEED_LIMIT);
                return true;
            }
            let unused = now.duration_since(copy.last_used);
            let keep = !copy.waiters.is_empty() || unused < IDLE_LIMIT;
            if !keep {
                dropped += copy.members();
                return false;
            }
            if unused >= STATE_KEEP {
                if let CopyState::Live { state, .. } = &mut copy.copy {
                    *state = None;
                }
            }
            match &copy.copy {
                CopyState::Seeding { since, .. } => due(*since + SEED_LIMIT),
                CopyState::Live { state, .. } => {
                    if let Some(oldest) = copy.waiters.iter().map(|w| w.since).min() {
                        due(oldest + WAIT_LIMIT);
                    }
                    if state.is_some() {
                        due(copy.last_used + STATE_KEEP);
                    }
                }
            }
            if copy.waiters.is_empty() {
                due(copy.last_used + IDLE_LIMIT);
            }
            true
        });
        self.care_at = next;
        dropped
    }

    /// When [`Self::expire`] has something to do next (it may find nothing yet: the time is
    /// never later than needed); `None` while there is nothing to care for.
    pub fn next_care(&self) -> Option<Instant> {
        self.care_at
    }

    /// A change at `now` may have set a deadline: every one is at least [`STATE_KEEP`] (the
    /// shortest limit) away, so care comes no later than that and recomputes the exact time.
    fn care_by(&mut self, now: Instant) {
        let at = now + STATE_KEEP;
        self.care_at = Some(self.care_at.map_or(at, |current| current.min(at)));
    }

    /// The subscription was lost (diffs may be missing): every copy goes; topics with
    /// waiting joins are re-seeded.
    pub fn clear(&mut self, now: Instant) {
        self.care_by(now);
        let requests = &mut self.snapshot_requests;
        self.topics.retain(|topic, copy| {
            if copy.waiters.is_empty() {
                return false;
            }
            copy.reseed(now);
            requests.insert(topic.clone());
            true
        });
    }

    /// Whether the publisher has snapshots to fetch (then it should be woken).
    pub fn wants_snapshots(&self) -> bool {
        !self.snapshot_requests.is_empty()
    }

    /// Topics whose copy waits for a snapshot the publisher has not been asked for yet.
    pub fn take_snapshot_requests(&mut self) -> Vec<String> {
        std::mem::take(&mut self.snapshot_requests)
            .into_iter()
            .collect()
    }

    /// How many topics have a copy.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::shapes;
    use crate::presence::Presence;

    fn p(key: &str, r: &str) -> Presence {
        Presence::for_test(key, r)
    }

    fn ticket(phx_ref: &str) -> PresenceTicket {
        PresenceTicket {
            shard: 0,
            conn: 1,
            topic: "t".into(),
            phx_ref: phx_ref.into(),
        }
    }

    fn state_of(json: &str) -> serde_json::Value {
        serde_json::from_str(json).unwrap()
    }

    fn refs(state: &serde_json::Value, key: &str) -> Vec<String> {
        state[key]["metas"]
            .as_array()
            .map(|metas| {
                metas
                    .iter()
                    .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn entries(presences: &[Presence]) -> Vec<String> {
        presences.iter().map(shapes::stored_entry).collect()
    }

    /// A copy seeded at `version` with `presences`.
    fn seeded(version: u64, presences: &[Presence], now: Instant) -> PresenceReplica {
        let mut replica = PresenceReplica::default();
        assert!(replica.prepare_join("t", now));
        let stored = entries(presences);
        let served = replica.seed("t", version, stored.iter().map(|e| e.as_bytes()), now);
        assert!(served.is_empty());
        replica
    }

    fn ready(wanted: Wanted) -> State {
        match wanted {
            Wanted::Ready(state) => state,
            other => panic!("expected a ready state, got {other:?}"),
        }
    }

    #[test]
    fn a_repeated_join_is_one_meta_and_unknown_leaves_change_nothing() {
        let mut members = Members::default();
        let meta = |r: &str| format!(r#"{{"phx_ref":"{r}","online_at":1,"x":[1,{{"y":","}}]}}"#);
        members.add("u,1", "r1", &meta("r1"));
        members.add("u,1", "r2", &meta("r2"));
        members.add("u,1", "r1", &meta("r1"));
        members.add("u2", "r3", &meta("r3"));
        assert_eq!(members.metas, 3);
        members.remove("u,1", "nope");
        members.remove("nobody", "r1");
        assert_eq!(members.metas, 3);
        let state = state_of(&members.state_json());
        assert_eq!(refs(&state, "u,1"), ["r1", "r2"]);
        assert_eq!(state["u,1"]["metas"][1]["x"][1]["y"], ",");
        members.remove("u,1", "r1");
        assert_eq!(refs(&state_of(&members.state_json()), "u,1"), ["r2"]);
        members.remove("u,1", "r2");
        members.remove("u2", "r3");
        assert_eq!(members.metas, 0);
        assert_eq!(&*members.state_json(), "{}");
    }

    #[test]
    fn one_key_on_two_sockets_is_one_key_with_two_metas_and_junk_is_skipped() {
        let now = Instant::now();
        let mut replica = PresenceReplica::default();
        replica.prepare_join("t", now);
        let mut stored = entries(&[p("u1", "r1"), p("u1", "r2"), p("u2", "r3")]);
        stored.push("junk".into());
        replica.seed("t", 3, stored.iter().map(|e| e.as_bytes()), now);
        let (version, json) = ready(replica.want("t", 3, ticket("r3"), now));
        assert_eq!(version, 3);
        let state = state_of(&json);
        assert_eq!(refs(&state, "u1"), ["r1", "r2"]);
        assert_eq!(refs(&state, "u2"), ["r3"]);
    }

    #[test]
    fn state_escapes_keys_and_keeps_metas_verbatim() {
        let now = Instant::now();
        let mut replica = seeded(1, &[p("a\"b\\c", "r1")], now);
        let (_, json) = ready(replica.want("t", 1, ticket("r1"), now));
        assert_eq!(
            &*json,
            r#"{"a\"b\\c":{"metas":[{"online_at":1700000000000,"phx_ref":"r1"}]}}"#
        );
        let mut empty = seeded(0, &[], now);
        assert_eq!(&*ready(empty.want("t", 0, ticket("x"), now)).1, "{}");
    }

    #[test]
    fn a_join_ahead_of_the_copy_waits_for_its_own_diff() {
        let now = Instant::now();
        let mut replica = seeded(1, &[p("u1", "r1")], now);
        assert!(matches!(
            replica.want("t", 2, ticket("r2"), now),
            Wanted::Waiting
        ));
        let served = replica.apply_diff("t", 2, shapes::join_diff(&p("u2", "r2")).as_bytes(), now);
        assert_eq!(served.len(), 1);
        let (ticket, (version, json)) = &served[0];
        assert_eq!(ticket.phx_ref, "r2");
        assert_eq!(*version, 2);
        let state = state_of(json);
        assert_eq!(refs(&state, "u1"), ["r1"]);
        assert_eq!(refs(&state, "u2"), ["r2"]);
    }

    #[test]
    fn leaves_remove_metas_and_empty_keys_including_the_reapers_multi_leave() {
        let now = Instant::now();
        let mut replica = seeded(
            5,
            &[p("u1", "r1"), p("u1", "r2"), p("u2", "r3"), p("u3", "r4")],
            now,
        );
        replica.apply_diff("t", 6, shapes::leave_diff(&p("u1", "r1")).as_bytes(), now);
        // The reaper's shape: several keys, metas as cjson wrote them.
        let reaped = r#"{"joins":{},"leaves":{"u2":{"metas":[{"phx_ref":"r3","online_at":1}]},"u3":{"metas":[{"online_at":1,"phx_ref":"r4"}]}}}"#;
        replica.apply_diff("t", 7, reaped.as_bytes(), now);
        let (version, json) = ready(replica.want("t", 7, ticket("x"), now));
        assert_eq!(version, 7);
        let state = state_of(&json);
        assert_eq!(refs(&state, "u1"), ["r2"]);
        assert!(state.get("u2").is_none() && state.get("u3").is_none());
    }

    #[test]
    fn diffs_that_arrive_while_seeding_are_applied_after_the_seed_and_old_ones_skipped() {
        let now = Instant::now();
        let mut replica = PresenceReplica::default();
        assert!(replica.prepare_join("t", now));
        assert!(!replica.prepare_join("t", now), "one seed per topic");
        assert!(matches!(
            replica.want("t", 3, ticket("r3"), now),
            Wanted::Waiting
        ));
        // Diff 2 is already in the seed; diff 3 is not.
        replica.apply_diff("t", 3, shapes::join_diff(&p("u3", "r3")).as_bytes(), now);
        replica.apply_diff("t", 2, shapes::join_diff(&p("u2", "r2")).as_bytes(), now);
        let stored = entries(&[p("u1", "r1"), p("u2", "r2")]);
        let served = replica.seed("t", 2, stored.iter().map(|e| e.as_bytes()), now);
        assert_eq!(served.len(), 1);
        let (version, json) = &served[0].1;
        assert_eq!(*version, 3);
        let state = state_of(json);
        assert_eq!(refs(&state, "u1"), ["r1"]);
        assert_eq!(refs(&state, "u2"), ["r2"]);
        assert_eq!(refs(&state, "u3"), ["r3"]);
    }

    #[test]
    fn a_missing_version_reseeds_and_keeps_the_waiters_for_the_snapshot() {
        let now = Instant::now();
        let mut replica = seeded(1, &[p("u1", "r1")], now);
        assert!(matches!(
            replica.want("t", 3, ticket("r3"), now),
            Wanted::Waiting
        ));
        // Version 2 never arrives.
        let served = replica.apply_diff("t", 3, shapes::join_diff(&p("u3", "r3")).as_bytes(), now);
        assert!(served.is_empty());
        assert!(replica.wants_snapshots());
        assert_eq!(replica.take_snapshot_requests(), ["t"]);
        assert!(!replica.wants_snapshots());
        let stored = entries(&[p("u1", "r1"), p("u2", "r2"), p("u3", "r3")]);
        let served = replica.seed("t", 3, stored.iter().map(|e| e.as_bytes()), now);
        assert_eq!(served.len(), 1);
        assert_eq!(refs(&state_of(&served[0].1 .1), "u2"), ["r2"]);
    }

    #[test]
    fn a_diff_that_does_not_parse_reseeds() {
        let now = Instant::now();
        let mut replica = seeded(1, &[], now);
        replica.apply_diff("t", 2, b"{\"joins\":[]}", now);
        assert_eq!(replica.take_snapshot_requests(), ["t"]);
        assert!(matches!(
            replica.want("t", 1, ticket("x"), now),
            Wanted::Waiting
        ));
    }

    #[test]
    fn a_join_for_a_topic_without_copy_asks_for_a_snapshot() {
        let now = Instant::now();
        let mut replica = PresenceReplica::default();
        assert!(matches!(
            replica.want("t", 4, ticket("r4"), now),
            Wanted::NeedsSnapshot
        ));
        assert_eq!(replica.take_snapshot_requests(), ["t"]);
        let stored = entries(&[p("u4", "r4")]);
        let served = replica.seed("t", 4, stored.iter().map(|e| e.as_bytes()), now);
        assert_eq!(served.len(), 1);
    }

    #[test]
    fn a_failed_seed_hands_back_its_waiters_but_a_live_copy_keeps_them() {
        let now = Instant::now();
        let mut replica = PresenceReplica::default();
        replica.prepare_join("t", now);
        replica.want("t", 2, ticket("r2"), now);
        let failed = replica.seed_failed("t");
        assert_eq!(failed.len(), 1);
        assert_eq!(replica.topics(), 0);

        let mut live = seeded(1, &[], now);
        live.want("t", 2, ticket("r2"), now);
        assert!(live.seed_failed("t").is_empty());
    }

    #[test]
    fn stuck_waiters_get_a_snapshot_and_idle_copies_go() {
        let now = Instant::now();
        let mut replica = seeded(1, &[], now);
        replica.want("t", 9, ticket("r9"), now);
        replica.expire(now + WAIT_LIMIT / 2);
        assert!(!replica.wants_snapshots());
        replica.expire(now + WAIT_LIMIT);
        assert_eq!(replica.take_snapshot_requests(), ["t"]);

        // Nothing fetched (Redis away): asked again every SEED_LIMIT, but held once.
        for i in 1..=100 {
            replica.expire(now + WAIT_LIMIT + SEED_LIMIT * i);
        }
        assert_eq!(
            replica.snapshot_requests.len(),
            1,
            "no growth while nothing is fetched"
        );
        assert_eq!(replica.take_snapshot_requests(), ["t"]);

        let mut idle = seeded(1, &[p("u1", "r1"), p("u1", "r2")], now);
        assert_eq!(idle.expire(now + IDLE_LIMIT / 2), 0);
        assert_eq!(idle.topics(), 1);
        assert_eq!(idle.expire(now + IDLE_LIMIT), 2, "two members dropped");
        assert_eq!(idle.topics(), 0);
    }

    #[test]
    fn an_unused_state_is_let_go_and_rebuilt_the_same() {
        let now = Instant::now();
        let mut replica = seeded(1, &[p("u1", "r1"), p("u2", "r2")], now);
        let cached = |r: &PresenceReplica| match &r.topics["t"].copy {
            CopyState::Live { state, .. } => state.is_some(),
            CopyState::Seeding { .. } => panic!("not live"),
        };
        let (_, first) = ready(replica.want("t", 1, ticket("r2"), now));
        assert!(cached(&replica));
        replica.expire(now + STATE_KEEP / 2);
        assert!(cached(&replica), "kept while joins may still use it");
        replica.expire(now + STATE_KEEP);
        assert!(!cached(&replica));
        assert_eq!(replica.topics(), 1, "the copy itself stays");
        let (_, again) = ready(replica.want("t", 1, ticket("r3"), now + STATE_KEEP));
        assert_eq!(again, first);
    }

    #[test]
    fn a_lost_subscription_drops_every_copy_and_reseeds_those_with_waiters() {
        let now = Instant::now();
        let mut replica = seeded(1, &[], now);
        replica.clear(now);
        assert_eq!(replica.topics(), 0);
        assert!(!replica.wants_snapshots());

        let mut waiting = seeded(1, &[], now);
        waiting.want("t", 5, ticket("r5"), now);
        waiting.clear(now);
        assert_eq!(waiting.take_snapshot_requests(), ["t"]);
        let served = waiting.seed("t", 5, std::iter::empty::<&[u8]>(), now);
        assert_eq!(served.len(), 1);
    }

    #[test]
    fn care_is_asked_for_exactly_while_there_is_something_to_expire() {
        let now = Instant::now();
        let mut replica = PresenceReplica::default();
        assert_eq!(
            replica.next_care(),
            None,
            "nothing held, nothing to wake for"
        );
        replica.prepare_join("t", now);
        assert!(replica.next_care().is_some_and(|at| at <= now + STATE_KEEP));
        // Seeding: its seed is asked again after SEED_LIMIT (and the copy idles out then too).
        replica.expire(now);
        assert_eq!(replica.next_care(), Some(now + SEED_LIMIT));
        replica.seed("t", 1, std::iter::empty::<&[u8]>(), now);
        // A waiter: checked exactly at WAIT_LIMIT.
        assert!(matches!(
            replica.want("t", 2, ticket("r2"), now),
            Wanted::Waiting
        ));
        replica.expire(now);
        assert_eq!(replica.next_care(), Some(now + WAIT_LIMIT));
        // Served (its state is built): the state goes after STATE_KEEP, the copy after
        // IDLE_LIMIT, and then nothing is left to wake for.
        let served = replica.apply_diff("t", 2, br#"{"joins":{},"leaves":{}}"#, now);
        assert_eq!(served.len(), 1);
        replica.expire(now);
        assert_eq!(replica.next_care(), Some(now + STATE_KEEP));
        replica.expire(now + STATE_KEEP);
        assert_eq!(replica.next_care(), Some(now + IDLE_LIMIT));
        assert_eq!(replica.expire(now + IDLE_LIMIT), 0);
        assert_eq!(replica.topics(), 0);
        assert_eq!(replica.next_care(), None);
    }
}
