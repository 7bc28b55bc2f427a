//! The downstream tally: per join of a churn client, the publishes Redis accepted for its topic
//! against the ones the client received, with misses classified as near a Redis restart or not.
//! Pure and unit-tested: it never touches a socket or a clock.

use serde::Serialize;

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
#[cfg(test)]
mod tests {
    use super::*;

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
}
