//! The `[soak]` table of a `kind = "soak"` scenario: its fields, their defaults and their checks.
//! It owns no behaviour of the soak itself (that is `soak/`) and must never import it.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The `[soak]` table of a `kind = "soak"` scenario. The scenario's own fields are used too:
/// `clients` (churning clients), `topics`, `rate` (fan-out publishes/s over the topics),
/// `message_bytes`, `duration`, `drain`, `join_timeout`, `heartbeat`, `event`, `topic_prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoakParams {
    /// Pushes per second over all joined churn clients.
    #[serde(default = "d_push_rate")]
    pub push_rate: f64,
    /// Seconds a churn client stays joined: uniform in [hold_min, hold_max].
    #[serde(default = "d_hold_min")]
    pub hold_min: f64,
    #[serde(default = "d_hold_max")]
    pub hold_max: f64,
    /// Clients that stop reading (on their own topic `<prefix>:slow`).
    #[serde(default = "d_slow_clients")]
    pub slow_clients: usize,
    /// Publishes per second to the slow topic, and their size.
    #[serde(default = "d_slow_rate")]
    pub slow_rate: f64,
    #[serde(default = "d_slow_bytes")]
    pub slow_message_bytes: usize,
    /// Seconds a slow client reads before it stops, and seconds it stops for.
    #[serde(default = "d_slow_read_for")]
    pub slow_read_for: f64,
    #[serde(default = "d_slow_stall")]
    pub slow_stall: f64,
    /// Seconds between Redis restarts (0: never).
    #[serde(default)]
    pub restart_every: f64,
    /// Run with `sh -c` to restart Redis; must return once the restart is under way.
    #[serde(default)]
    pub restart_command: String,
    /// Seconds after Redis answers again during which downstream loss counts as "near a restart".
    #[serde(default = "d_restart_grace")]
    pub restart_grace: f64,
    /// Seconds between RSS samples.
    #[serde(default = "d_rss_every")]
    pub rss_every: f64,
    /// Seconds at each end of a join not counted in downstream expectations (join/leave races).
    #[serde(default = "d_edge_margin")]
    pub edge_margin: f64,
    /// An `ok` push is verifiable only if the subscriber stayed up this long after the reply.
    #[serde(default = "d_ack_guard")]
    pub ack_guard: f64,
}

fn d_push_rate() -> f64 {
    50.0
}
fn d_hold_min() -> f64 {
    2.0
}
fn d_hold_max() -> f64 {
    10.0
}
fn d_slow_clients() -> usize {
    3
}
fn d_slow_rate() -> f64 {
    40.0
}
fn d_slow_bytes() -> usize {
    16_000
}
fn d_slow_read_for() -> f64 {
    1.0
}
fn d_slow_stall() -> f64 {
    20.0
}
fn d_restart_grace() -> f64 {
    5.0
}
fn d_rss_every() -> f64 {
    3.0
}
fn d_edge_margin() -> f64 {
    0.3
}
fn d_ack_guard() -> f64 {
    1.0
}

impl Default for SoakParams {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl SoakParams {
    pub fn validate(&self) -> Result<()> {
        for (n, v) in [
            ("push_rate", self.push_rate),
            ("slow_rate", self.slow_rate),
            ("restart_every", self.restart_every),
            ("restart_grace", self.restart_grace),
            ("edge_margin", self.edge_margin),
            ("ack_guard", self.ack_guard),
        ] {
            if v.is_nan() || v < 0.0 {
                bail!("[soak] {n} must be >= 0");
            }
        }
        if !(self.hold_min > 0.0 && self.hold_max >= self.hold_min) {
            bail!("[soak] needs 0 < hold_min <= hold_max");
        }
        if self.rss_every <= 0.0 || self.slow_stall <= 0.0 || self.slow_read_for < 0.0 {
            bail!("[soak] rss_every and slow_stall must be positive");
        }
        if self.restart_every > 0.0 && self.restart_command.trim().is_empty() {
            bail!("[soak] restart_every needs a restart_command");
        }
        if self.slow_message_bytes < crate::stamp::min_payload_bytes() {
            bail!("[soak] slow_message_bytes too small");
        }
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    use crate::scenario::Scenario;

    #[test]
    fn shipped_soak_scenario_has_valid_params() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/soak.toml");
        let sc = Scenario::load(&p).unwrap();
        sc.validate().unwrap();
        let sp = sc.soak.unwrap();
        sp.validate().unwrap();
        assert!(sp.restart_every > 0.0);
        assert!(SoakParams::default().validate().is_ok());
    }
}
