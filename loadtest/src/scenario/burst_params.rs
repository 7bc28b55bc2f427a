//! The `[burst]` table of a `kind = "burst"` scenario: its fields, their defaults and their
//! checks. It owns no behaviour of the burst itself (that is `burst.rs`) and must never import it.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Stamps are `burst * POSITIONS + n`.
pub const POSITIONS: u64 = 1_000_000;

/// The `[burst]` table of a `kind = "burst"` scenario. The scenario's own fields are used too:
/// `clients` (reading clients), `message_bytes`, `topic_prefix`, `event`, `join_timeout`,
/// `join_in_flight`, `drain`, `ws_path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstParams {
    /// Messages in one burst (one pipeline of PUBLISH).
    #[serde(default = "d_messages")]
    pub messages: usize,
    /// Seconds from the start of one burst to the start of the next.
    #[serde(default = "d_every")]
    pub every: f64,
    /// Bursts in the run.
    #[serde(default = "d_bursts")]
    pub bursts: usize,
    /// Clients on the topic that never read after their join (4 KiB receive buffer, MSS 1460).
    #[serde(default = "d_non_readers")]
    pub non_readers: usize,
}

fn d_messages() -> usize {
    2000
}
fn d_every() -> f64 {
    2.0
}
fn d_bursts() -> usize {
    10
}
fn d_non_readers() -> usize {
    3
}

impl Default for BurstParams {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl BurstParams {
    pub fn validate(&self) -> Result<()> {
        if self.messages == 0 || self.messages as u64 >= POSITIONS {
            bail!("[burst] messages must be between 1 and {}", POSITIONS - 1);
        }
        if self.bursts == 0 {
            bail!("[burst] bursts must be at least 1");
        }
        if self.every.is_nan() || self.every <= 0.0 {
            bail!("[burst] every must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    #[test]
    fn shipped_burst_scenario_has_valid_params() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/burst.toml");
        let sc = Scenario::load(&path).unwrap();
        sc.validate().unwrap();
        let p = sc.burst.clone().expect("a [burst] table");
        p.validate().unwrap();
        assert_eq!(p.messages, 2000);
    }

    #[test]
    fn invalid_burst_params_are_refused() {
        for bad in [
            "messages = 0",
            "bursts = 0",
            "every = 0",
            "messages = 1000000",
        ] {
            let p: BurstParams = toml::from_str(bad).unwrap();
            assert!(p.validate().is_err(), "{bad}");
        }
    }
}
