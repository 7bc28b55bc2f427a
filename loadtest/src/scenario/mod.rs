//! Scenario files: what load to apply, read from TOML and adjusted by command-line overrides.
//!
//! Owns the defaults and the validation; a scenario that passes [`Scenario::validate`] can be run
//! without any further checks on its numbers. The tables of the soak and burst kinds live in
//! their own files. This module sits below every scenario runner and must never import one.

mod burst_params;
mod cluster_params;
mod soak_params;

pub use burst_params::{BurstParams, POSITIONS};
pub use cluster_params::{ClusterParams, PublishPath};
pub use soak_params::SoakParams;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The eight kinds of load the tool knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// C clients on one topic; Redis publishes at a fixed rate; publish → receive latency.
    Fanout,
    /// C clients spread over T topics; publishes spread over the topics.
    Topics,
    /// Clients push at a fixed total rate; push → Redis receive latency.
    Upstream,
    /// Connect + token + join as fast as `join_in_flight` allows; joins/s and join latency.
    JoinStorm,
    /// C joined clients held idle; the server's RSS per connection.
    Idle,
    /// Churn, fan-out, pushes, slow clients and Redis restarts for `duration` (see `soak.rs`).
    Soak,
    /// Pipelined bursts to one topic with reading clients and a few non-readers (`burst.rs`).
    Burst,
    /// As `topics`, over several server processes each serving 1/N of the topics, publishing
    /// through the publish function or classic PUBLISH (`[cluster]`); per-process received
    /// messages and per-master Redis CPU.
    Cluster,
}

impl Kind {
    /// Whether the measured messages flow from Redis to the clients.
    pub fn is_downstream(self) -> bool {
        matches!(self, Kind::Fanout | Kind::Topics | Kind::Cluster)
    }
}

/// Stepping the rate upward to find the highest sustainable one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Explicit rates to try, in order. When empty, `start`, `factor` and `max` make the list.
    #[serde(default)]
    pub rates: Vec<f64>,
    #[serde(default = "d_step_start")]
    pub start: f64,
    #[serde(default = "d_step_factor")]
    pub factor: f64,
    #[serde(default = "d_step_max")]
    pub max: f64,
    /// Seconds measured at each rate (the scenario's `warmup` runs before each step).
    #[serde(default = "d_step_duration")]
    pub duration: f64,
    /// A step is sustainable while p99 stays at or below this…
    #[serde(default = "d_step_p99")]
    pub max_p99_ms: f64,
    /// …and the lost fraction of the expected deliveries at or below this.
    #[serde(default)]
    pub max_loss_ratio: f64,
    /// Stop at the first unsustainable step.
    #[serde(default = "d_true")]
    pub stop_on_failure: bool,
}

impl Step {
    /// The rates to try, in order.
    pub fn rate_list(&self) -> Vec<f64> {
        if !self.rates.is_empty() {
            return self.rates.clone();
        }
        let mut v = Vec::new();
        let mut r = self.start;
        while r <= self.max * (1.0 + 1e-9) && v.len() < 64 {
            v.push(r);
            r *= self.factor;
        }
        v
    }
}

/// One load scenario. Every field has a default except `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in reports; defaults to the file name.
    #[serde(default)]
    pub name: String,
    pub kind: Kind,
    /// WebSocket clients.
    #[serde(default = "d_clients")]
    pub clients: usize,
    /// Topics the clients are spread over (client i joins topic i mod topics).
    #[serde(default = "d_one")]
    pub topics: usize,
    /// Topic names are `<topic_prefix>:<n>`.
    #[serde(default = "d_prefix")]
    pub topic_prefix: String,
    /// Event of the measured messages (`to:<topic>:<event>` / pushes / `from:<topic>:<event>`).
    #[serde(default = "d_event")]
    pub event: String,
    /// Messages per second: Redis publishes (fanout, topics) or client pushes (upstream), in total.
    #[serde(default = "d_rate")]
    pub rate: f64,
    /// Size of each measured JSON payload in bytes.
    #[serde(default = "d_message_bytes")]
    pub message_bytes: usize,
    /// Seconds measured (for idle: seconds held after the joins).
    #[serde(default = "d_duration")]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[serde(default = "d_warmup")]
    pub warmup: f64,
    /// Seconds to wait after the window for the last messages to arrive.
    #[serde(default = "d_drain")]
    pub drain: f64,
    /// Connect + token + join sequences in flight at once.
    #[serde(default = "d_in_flight")]
    pub join_in_flight: usize,
    /// Seconds one join may take before it counts as failed.
    #[serde(default = "d_join_timeout")]
    pub join_timeout: f64,
    /// Seconds between heartbeats of each client (phoenix.js sends one every 30 s).
    #[serde(default = "d_heartbeat")]
    pub heartbeat: f64,
    /// Load threads; 0 = one per available core.
    #[serde(default)]
    pub threads: usize,
    /// Idle: seconds to wait after the last join before sampling the server's RSS.
    #[serde(default = "d_settle")]
    pub settle: f64,
    /// Fanout: extra clients on the measured topic that read for `slow_read_for` s of the warmup,
    /// then stop reading for good, so that the server closes them as slow consumers (see
    /// `slow.rs`). Never counted in delivered, lost or latency figures.
    #[serde(default)]
    pub slow_clients: usize,
    /// Seconds of the warmup during which the slow clients still read (capped at `warmup`).
    #[serde(default = "d_slow_read_for")]
    pub slow_read_for: f64,
    /// Path (and query) of the WebSocket upgrade.
    #[serde(default = "d_ws_path")]
    pub ws_path: String,
    /// A `since` in every join's payload (issue 14): absent, none (the default); `"null"`,
    /// `"since": null`; any other string is sent as the position.
    #[serde(default)]
    pub join_since: Option<String>,
    /// Rate stepping (fanout, topics, upstream).
    #[serde(default)]
    pub step: Option<Step>,
    /// Soak settings (kind = "soak" only).
    #[serde(default)]
    pub soak: Option<SoakParams>,
    /// Burst settings (kind = "burst" only).
    #[serde(default)]
    pub burst: Option<BurstParams>,
    /// Processes and publish path (kind = "cluster" only; defaults when absent).
    #[serde(default)]
    pub cluster: Option<ClusterParams>,
}

fn d_clients() -> usize {
    1000
}
fn d_one() -> usize {
    1
}
fn d_prefix() -> String {
    "lt".into()
}
fn d_event() -> String {
    "msg".into()
}
fn d_rate() -> f64 {
    100.0
}
fn d_message_bytes() -> usize {
    200
}
fn d_duration() -> f64 {
    10.0
}
fn d_warmup() -> f64 {
    2.0
}
fn d_drain() -> f64 {
    3.0
}
fn d_in_flight() -> usize {
    200
}
fn d_join_timeout() -> f64 {
    30.0
}
fn d_heartbeat() -> f64 {
    30.0
}
fn d_settle() -> f64 {
    2.0
}
fn d_slow_read_for() -> f64 {
    0.5
}
fn d_ws_path() -> String {
    "/websocket?vsn=2.0.0".into()
}
fn d_step_start() -> f64 {
    50.0
}
fn d_step_factor() -> f64 {
    2.0
}
fn d_step_max() -> f64 {
    3200.0
}
fn d_step_duration() -> f64 {
    5.0
}
fn d_step_p99() -> f64 {
    50.0
}
fn d_true() -> bool {
    true
}

/// Command-line overrides of scenario fields (`None`: keep the file's value).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub clients: Option<usize>,
    pub topics: Option<usize>,
    pub rate: Option<f64>,
    pub message_bytes: Option<usize>,
    pub duration: Option<f64>,
    pub warmup: Option<f64>,
    pub join_in_flight: Option<usize>,
    pub threads: Option<usize>,
    pub slow_clients: Option<usize>,
    pub no_step: bool,
    /// Cluster: the publish path.
    pub publish: Option<PublishPath>,
}

impl Scenario {
    /// Parses scenario TOML; `default_name` is used when the file has no `name`.
    pub fn parse(text: &str, default_name: &str) -> Result<Scenario> {
        let mut s: Scenario = toml::from_str(text).context("invalid scenario")?;
        if s.name.is_empty() {
            s.name = default_name.to_string();
        }
        Ok(s)
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scenario");
        Scenario::parse(&text, stem).with_context(|| format!("in {}", path.display()))
    }

    /// Applies command-line overrides.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = o.clients {
            self.clients = v;
        }
        if let Some(v) = o.topics {
            self.topics = v;
        }
        if let Some(v) = o.rate {
            self.rate = v;
        }
        if let Some(v) = o.message_bytes {
            self.message_bytes = v;
        }
        if let Some(v) = o.duration {
            self.duration = v;
        }
        if let Some(v) = o.warmup {
            self.warmup = v;
        }
        if let Some(v) = o.join_in_flight {
            self.join_in_flight = v;
        }
        if let Some(v) = o.threads {
            self.threads = v;
        }
        if let Some(v) = o.slow_clients {
            self.slow_clients = v;
        }
        if o.no_step {
            self.step = None;
        }
        if let Some(p) = o.publish {
            if self.kind == Kind::Cluster {
                self.cluster
                    .get_or_insert_with(ClusterParams::default)
                    .publish = p;
            }
        }
    }

    /// Rejects numbers that cannot be run.
    pub fn validate(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("clients must be at least 1");
        }
        if self.topics == 0 || self.topics > self.clients {
            bail!(
                "topics must be between 1 and clients ({}), got {}",
                self.clients,
                self.topics
            );
        }
        if self.kind == Kind::Fanout && self.topics != 1 {
            bail!("fanout uses one topic; use kind = \"topics\" for several");
        }
        if self.event.is_empty() || self.event.contains(':') {
            bail!(
                "event must be non-empty and contain no ':' (got {:?})",
                self.event
            );
        }
        if self.topic_prefix.is_empty() {
            bail!("topic_prefix must not be empty");
        }
        let needs_rate = matches!(
            self.kind,
            Kind::Fanout | Kind::Topics | Kind::Upstream | Kind::Cluster
        );
        if needs_rate && (self.rate.is_nan() || self.rate <= 0.0) {
            bail!("rate must be positive");
        }
        if self.message_bytes < crate::stamp::min_payload_bytes() {
            bail!(
                "message_bytes must be at least {}",
                crate::stamp::min_payload_bytes()
            );
        }
        for (n, v) in [
            ("duration", self.duration),
            ("warmup", self.warmup),
            ("drain", self.drain),
            ("slow_read_for", self.slow_read_for),
        ] {
            if v.is_nan() || v < 0.0 {
                bail!("{n} must be >= 0");
            }
        }
        if self.join_in_flight == 0 {
            bail!("join_in_flight must be at least 1");
        }
        if self.heartbeat <= 0.0 || self.join_timeout <= 0.0 {
            bail!("heartbeat and join_timeout must be positive");
        }
        if self.slow_clients > 0 && self.kind != Kind::Fanout {
            bail!(
                "slow_clients applies to kind = \"fanout\" only (the soak has [soak] slow_clients)"
            );
        }
        if self.soak.is_some() && self.kind != Kind::Soak {
            bail!("[soak] applies to kind = \"soak\" only");
        }
        if self.burst.is_some() && self.kind != Kind::Burst {
            bail!("[burst] applies to kind = \"burst\" only");
        }
        if self.cluster.is_some() && self.kind != Kind::Cluster {
            bail!("[cluster] applies to kind = \"cluster\" only");
        }
        if self.kind == Kind::Cluster {
            self.cluster_params().validate(self.topics)?;
        }
        if let Some(step) = &self.step {
            if !needs_rate {
                bail!("[step] applies to fanout, topics, upstream and cluster only");
            }
            if step.rates.is_empty()
                && (step.start <= 0.0 || step.factor <= 1.0 || step.max < step.start)
            {
                bail!("[step] needs rates = [...] or start > 0, factor > 1, max >= start");
            }
            if step.rate_list().iter().any(|r| r.is_nan() || *r <= 0.0) {
                bail!("[step] rates must be positive");
            }
        }
        Ok(())
    }

    /// Topic of client `i`.
    pub fn topic_of(&self, client: usize) -> usize {
        client % self.topics
    }

    /// The `[cluster]` table, or its defaults.
    pub fn cluster_params(&self) -> ClusterParams {
        self.cluster.clone().unwrap_or_default()
    }

    /// Server processes the clients are spread over: `[cluster] processes` for the cluster
    /// kind, else 1.
    pub fn server_processes(&self) -> usize {
        if self.kind == Kind::Cluster {
            self.cluster_params().processes
        } else {
            1
        }
    }

    /// The server process (index into the server URLs) that serves topic `n`.
    pub fn server_of_topic(&self, n: usize) -> usize {
        n % self.server_processes()
    }

    /// Name of topic `n`.
    pub fn topic_name(&self, n: usize) -> String {
        format!("{}:{}", self.topic_prefix, n)
    }

    /// Clients joined to topic `n`.
    #[cfg(test)]
    pub fn clients_on_topic(&self, n: usize) -> usize {
        self.clients / self.topics + usize::from(n < self.clients % self.topics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_scenario_gets_defaults_and_file_name() {
        let s = Scenario::parse("kind = \"fanout\"", "fanout").unwrap();
        assert_eq!(s.name, "fanout");
        assert_eq!(s.kind, Kind::Fanout);
        assert_eq!(s.clients, 1000);
        assert_eq!(s.topics, 1);
        assert_eq!(s.message_bytes, 200);
        assert_eq!(s.ws_path, "/websocket?vsn=2.0.0");
        assert!(s.step.is_none());
        assert_eq!(s.slow_clients, 0);
        s.validate().unwrap();
    }

    #[test]
    fn slow_clients_are_read_overridden_and_refused_outside_fanout() {
        let mut s = Scenario::parse("kind = \"fanout\"\nslow_clients = 5", "x").unwrap();
        assert_eq!(s.slow_clients, 5);
        s.validate().unwrap();
        s.apply(&Overrides {
            slow_clients: Some(20),
            ..Default::default()
        });
        assert_eq!(s.slow_clients, 20);
        let t = Scenario::parse("kind = \"topics\"\nslow_clients = 1", "x").unwrap();
        assert!(t.validate().is_err());
    }

    #[test]
    fn step_table_is_parsed_and_expanded() {
        let s = Scenario::parse(
            "kind = \"fanout\"\n[step]\nstart = 25\nfactor = 2\nmax = 200\nmax_p99_ms = 20\n",
            "x",
        )
        .unwrap();
        let step = s.step.as_ref().unwrap();
        assert_eq!(step.rate_list(), vec![25.0, 50.0, 100.0, 200.0]);
        assert_eq!(step.max_p99_ms, 20.0);
        assert!(step.stop_on_failure);
        s.validate().unwrap();
        let s = Scenario::parse("kind = \"fanout\"\n[step]\nrates = [10, 30]\n", "x").unwrap();
        assert_eq!(s.step.unwrap().rate_list(), vec![10.0, 30.0]);
    }

    #[test]
    fn unknown_field_is_refused() {
        let e = Scenario::parse("kind = \"fanout\"\nclinets = 5\n", "x").unwrap_err();
        assert!(format!("{e:#}").contains("clinets"), "{e:#}");
    }

    #[test]
    fn unknown_kind_is_refused() {
        assert!(Scenario::parse("kind = \"storm\"", "x").is_err());
        let s = Scenario::parse("kind = \"join-storm\"", "x").unwrap();
        assert_eq!(s.kind, Kind::JoinStorm);
    }

    #[test]
    fn invalid_numbers_are_refused() {
        let bad = [
            "kind = \"fanout\"\nclients = 0",
            "kind = \"fanout\"\ntopics = 2",
            "kind = \"topics\"\nclients = 3\ntopics = 4",
            "kind = \"fanout\"\nrate = 0",
            "kind = \"fanout\"\nmessage_bytes = 10",
            "kind = \"fanout\"\nevent = \"a:b\"",
            "kind = \"idle\"\n[step]\nrates = [1]",
            "kind = \"fanout\"\n[step]\nstart = 10\nfactor = 1",
        ];
        for b in bad {
            assert!(Scenario::parse(b, "x").unwrap().validate().is_err(), "{b}");
        }
    }

    #[test]
    fn overrides_replace_file_values() {
        let mut s = Scenario::parse(
            "kind = \"topics\"\nclients = 100\ntopics = 10\n[step]\nrates=[1]",
            "x",
        )
        .unwrap();
        s.apply(&Overrides {
            clients: Some(50),
            rate: Some(7.5),
            no_step: true,
            ..Default::default()
        });
        assert_eq!(s.clients, 50);
        assert_eq!(s.rate, 7.5);
        assert_eq!(s.topics, 10);
        assert!(s.step.is_none());
    }

    #[test]
    fn clients_are_spread_evenly_over_topics() {
        let s = Scenario::parse("kind = \"topics\"\nclients = 10\ntopics = 3", "x").unwrap();
        let counts: Vec<usize> = (0..3).map(|t| s.clients_on_topic(t)).collect();
        assert_eq!(counts, vec![4, 3, 3]);
        for (t, n) in counts.iter().enumerate() {
            assert_eq!((0..10).filter(|&c| s.topic_of(c) == t).count(), *n);
        }
        assert_eq!(s.topic_name(2), "lt:2");
    }

    #[test]
    fn shipped_scenarios_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) == Some("toml") {
                Scenario::load(&p).unwrap().validate().unwrap();
                n += 1;
            }
        }
        assert!(n >= 5, "expected at least 5 scenarios in {}", dir.display());
    }

    #[test]
    fn cluster_table_spreads_topics_over_processes_and_takes_the_publish_override() {
        let mut s = Scenario::parse(
            "kind = \"cluster\"\nclients = 800\ntopics = 400\n[cluster]\npublish = \"publish\"\n",
            "cluster",
        )
        .unwrap();
        s.validate().unwrap();
        let c = s.cluster_params();
        assert_eq!(
            (c.processes, c.shards, c.publish),
            (4, 1, PublishPath::Publish)
        );
        assert_eq!(s.server_processes(), 4);
        assert_eq!(
            (0..8).map(|t| s.server_of_topic(t)).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 0, 1, 2, 3]
        );
        s.apply(&Overrides {
            publish: Some(PublishPath::Function),
            ..Default::default()
        });
        assert_eq!(s.cluster_params().publish, PublishPath::Function);
        // Without the table: the defaults; other kinds have one server process.
        let d = Scenario::parse("kind = \"cluster\"\nclients = 8\ntopics = 4\n", "c").unwrap();
        assert_eq!(d.cluster_params().publish, PublishPath::Function);
        assert_eq!(d.server_processes(), 4);
        let t = Scenario::parse("kind = \"topics\"\nclients = 8\ntopics = 4\n", "t").unwrap();
        assert_eq!((t.server_processes(), t.server_of_topic(3)), (1, 0));
        for bad in [
            "kind = \"cluster\"\nclients = 8\ntopics = 3\n",
            "kind = \"topics\"\nclients = 8\ntopics = 4\n[cluster]\nprocesses = 2\n",
            "kind = \"cluster\"\nclients = 8\ntopics = 4\n[cluster]\npublish = \"fcall\"\n",
        ] {
            assert!(
                Scenario::parse(bad, "x")
                    .and_then(|s| s.validate())
                    .is_err(),
                "{bad}"
            );
        }
    }
}
