//! The soak's report: tallies the ledger and the downstream log once every piece has stopped,
//! builds `summary.json` (and `rss.svg`, `rss.csv`) from them and the counters. It runs after the
//! soak and never touches a socket except to read the server's slow-consumer closes.

use super::downstream::downstream_tally;
use super::ledger::PushTally;
use super::shared::Shared;
use crate::slow;
use anyhow::{anyhow, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

#[derive(Debug, Serialize)]
struct Rss {
    /// `[seconds since start, MiB]`.
    series: Vec<(f64, f64)>,
    min_mib: Option<f64>,
    max_mib: Option<f64>,
    first_mib: Option<f64>,
    last_mib: Option<f64>,
}

/// The summary and the push figures the caller decides on.
pub(super) struct Summary {
    pub(super) json: serde_json::Value,
    pub(super) pushes: PushTally,
}

/// Tallies a finished soak. `slow_closes_before`: the server's slow-consumer closes at the start.
pub(super) fn summarize(
    sh: &Shared,
    rss: &[(f64, f64)],
    slow_closes_before: Option<BTreeMap<String, u64>>,
) -> Result<Summary> {
    let restarts = sh.restarts.lock().map(|r| r.clone()).unwrap_or_default();
    let grace = (sh.p.restart_grace * 1e6) as u64;
    let windows: Vec<(u64, u64)> = restarts
        .iter()
        .map(|r| (r.from_us.saturating_sub(500_000), r.to_us + grace))
        .collect();
    let (pushes, outages) = {
        let l = sh.ledger.lock().map_err(|_| anyhow!("ledger poisoned"))?;
        (l.tally((sh.p.ack_guard * 1e6) as u64), l.outages(sh.t0))
    };
    let mut down = {
        let mut published = sh
            .published
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .clone();
        for v in &mut published {
            v.sort_unstable();
        }
        let sessions = sh.sessions.lock().map_err(|_| anyhow!("poisoned"))?;
        downstream_tally(
            &published,
            &sessions,
            &windows,
            (sh.p.edge_margin * 1e6) as u64,
        )
    };
    down.publish_unconfirmed = sh.c.publish_unconfirmed.load(Relaxed);
    let c = &sh.c;
    let errors = sh
        .errors
        .lock()
        .map(|e| (e.count, e.first.clone()))
        .unwrap_or_default();
    let json = serde_json::json!({
        "scenario": sh.sc.name,
        "kind": "soak",
        "params": sh.sc,
        "duration_s": sh.sc.duration,
        "pushes": pushes,
        "downstream": down,
        "churn": {
            "clients": sh.sc.clients,
            "sockets_opened": c.sockets_opened.load(Relaxed),
            "connect_failed": c.connect_failed.load(Relaxed),
            "joins_ok": c.joins_ok.load(Relaxed),
            "join_failed": c.join_failed.load(Relaxed),
            "leaves_ok": c.leaves_ok.load(Relaxed),
            "leave_unanswered": c.leave_unanswered.load(Relaxed),
            "unexpected_drops": c.unexpected_drops.load(Relaxed),
            "reconnects": c.reconnects.load(Relaxed),
            "close_codes": *sh.close_codes.lock().map_err(|_| anyhow!("poisoned"))?,
        },
        "slow": {
            "clients": sh.p.slow_clients,
            "published": c.slow_published.load(Relaxed),
            "stalls": c.slow_cycles.load(Relaxed),
            "closed_1013": c.slow_1013.load(Relaxed),
            "closed_other": *sh.slow_other.lock().map_err(|_| anyhow!("poisoned"))?,
            "eof_without_close": c.slow_eof.load(Relaxed),
            "not_closed": c.slow_not_closed.load(Relaxed),
            "server_slow_consumer_closes": slow_closes_before
                .zip(slow::server_closes(sh.addr, &sh.host))
                .map(|(a, b)| slow::closes_since(&a, &b).values().sum::<u64>()),
        },
        "redis": {
            "restarts": restarts,
            "subscriber_reconnects": c.subscriber_reconnects.load(Relaxed),
            "subscriber_outages_s": outages,
        },
        "rss": rss_figures(rss),
        "errors": {"count": errors.0, "first": errors.1},
    });
    Ok(Summary { json, pushes })
}

fn rss_figures(rss: &[(f64, f64)]) -> Rss {
    let mm = |f: fn(f64, f64) -> f64| rss.iter().map(|r| r.1).reduce(f);
    Rss {
        min_mib: mm(f64::min),
        max_mib: mm(f64::max),
        first_mib: rss.first().map(|r| r.1),
        last_mib: rss.last().map(|r| r.1),
        series: rss
            .iter()
            .map(|&(t, m)| ((t * 10.0).round() / 10.0, (m * 100.0).round() / 100.0))
            .collect(),
    }
}

/// Writes `summary.json` and, when the server's RSS was sampled, `rss.svg` and `rss.csv`.
pub(super) fn write(
    out: &Path,
    sh: &Shared,
    summary: &serde_json::Value,
    rss: &[(f64, f64)],
) -> Result<()> {
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(summary)?,
    )?;
    if !rss.is_empty() {
        let title = format!("server RSS during the soak ({} s)", sh.sc.duration);
        std::fs::write(
            out.join("rss.svg"),
            crate::timeline::svg(&title, "RSS (MiB)", rss),
        )?;
        std::fs::write(out.join("rss.csv"), crate::timeline::csv("rss_mib", rss))?;
    }
    Ok(())
}
