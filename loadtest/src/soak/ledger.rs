//! The push ledger: every push of the run, its reply, what the subscriber saw of it on `from:*`,
//! and when the subscriber was subscribed; `tally` turns that into the push figures. Pure and
//! unit-tested: it never touches a socket or a clock.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

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

impl Ledger {
    /// Whether the subscriber confirmed a subscription at least once.
    pub fn ever_subscribed(&self) -> bool {
        !self.sub_up.is_empty()
    }

    /// Pushes sent, answered `ok`, answered `error` (the progress line's figures).
    pub fn progress(&self) -> (usize, usize, usize) {
        let ok = self
            .pushes
            .values()
            .filter(|p| matches!(p.reply, Some((true, _))))
            .count();
        let err = self
            .pushes
            .values()
            .filter(|p| matches!(p.reply, Some((false, _))))
            .count();
        (self.pushes.len(), ok, err)
    }
}

/// The push id in a `from:*` payload of this run (`"soak":"<run>-<id>"`).
pub fn parse_push_id(payload: &[u8], run: &str) -> Option<u64> {
    let at = memchr::memmem::find(payload, b"\"soak\":\"")? + 8;
    let rest = payload.get(at..)?;
    let rest = rest.strip_prefix(run.as_bytes())?.strip_prefix(b"-")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
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
}
