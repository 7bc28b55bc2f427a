//! The `[cluster]` table of a `kind = "cluster"` scenario: how many `channel` processes share the
//! topics, and how the backend publishes. It owns no behaviour of the run (that is `run.rs`,
//! `servers.rs` and `topology.rs`) and must never import them.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How the publisher hands a message to Redis (issue 13 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishPath {
    /// `FCALL channel_publish 1 <topic> <event> <payload>`: the server's publish function, which
    /// `SPUBLISH`es on the topic's sharded channel; only processes with subscribers to the topic
    /// receive it.
    Function,
    /// Classic `PUBLISH to:<topic>:<event> <payload>`: every process (`PSUBSCRIBE to:*`) receives
    /// every message.
    Publish,
}

impl std::str::FromStr for PublishPath {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "function" => Ok(PublishPath::Function),
            "publish" => Ok(PublishPath::Publish),
            other => bail!("--publish must be `function` or `publish`, got {other:?}"),
        }
    }
}

/// The `[cluster]` table. The scenario's own fields are used too: `clients` (client i joins
/// topic i mod `topics`, on process topic mod `processes`), `topics`, `rate`, `message_bytes`,
/// `warmup`, `duration`, `drain`, `[step]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterParams {
    /// `channel` processes; topic t is served by process t mod `processes` (each client of a
    /// topic connects to that process), so each process serves 1/`processes` of the topics.
    #[serde(default = "d_processes")]
    pub processes: usize,
    /// Shards (cores) of each spawned process (`--shards`).
    #[serde(default = "d_shards")]
    pub shards: usize,
    /// How messages are published.
    #[serde(default = "d_publish")]
    pub publish: PublishPath,
}

fn d_processes() -> usize {
    4
}
fn d_shards() -> usize {
    1
}
fn d_publish() -> PublishPath {
    PublishPath::Function
}

impl Default for ClusterParams {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl ClusterParams {
    /// Checks against the scenario's topic count.
    pub fn validate(&self, topics: usize) -> Result<()> {
        if self.processes == 0 || self.shards == 0 {
            bail!("[cluster] processes and shards must be at least 1");
        }
        if topics < self.processes {
            bail!(
                "[cluster] {} processes need at least as many topics (got {topics})",
                self.processes
            );
        }
        Ok(())
    }
}
