//! The effective configuration of the server: one [`Config`] value, built once at start-up from
//! defaults, a TOML file, `CHANNEL_*` environment variables and command-line flags, in that order
//! of increasing precedence.
//!
//! What this module owns:
//! - the list of keys ([`KEYS`]): for each, how it is read, how `check-config` shows it, its
//!   accepted form and its environment variable: one table drives the file, the environment,
//!   the flags and the description alike, so a key can never be accepted in one place and
//!   unknown (or unshown) in another. The struct fields and `Default` hold the values;
//!   `every_key_is_described_once_and_reads_back_as_itself` pins the table to them;
//! - compatibility with an unmodified Tangram `tangram.toml`: the `[channel]` table holds both
//!   Tangram's keys and ours, Redis comes from `[core] redis_url` (overridden by
//!   `[channel] redis_url`), every other table is ignored;
//! - human-readable errors that name the offending key, where it came from and what was expected.
//!
//! What it must never do: read the process environment on its own (the caller passes a lookup
//! function, so loading is testable), or print a secret (see [`Secret`]).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::access::{OriginPattern, TokenMint, TopicPattern};

/// A configuration value that must never appear in logs or in `check-config` output.
///
/// Debug and Display print `<redacted>`; the value is only reachable through
/// [`Secret::expose`], which makes every use greppable.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the few places that need it (signing keys, comparisons).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares `candidate` with the secret in time independent of where they differ, so that
    /// a network caller cannot learn the secret byte by byte from response times.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        // The length is allowed to leak (it leaks through many other channels anyway); the
        // content is not: every byte is folded in even after a mismatch. An empty secret
        // matches nothing.
        if secret.is_empty() || secret.len() != candidate.len() {
            return false;
        }
        let diff = secret
            .iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Per-connection and per-request limits (docs/configuration.md, "Our keys"). Every one is a defence against a
/// peer that is slow, large or hostile; each has a documented default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest inbound WebSocket message; larger ones close the socket with 1009.
    pub max_frame_bytes: usize,
    /// Topics one socket may have joined at once; beyond, joins are refused.
    pub max_channels_per_socket: usize,
    /// A socket that sends nothing (not even a heartbeat) for this long is closed.
    pub idle_timeout_secs: u64,
    /// Hard cap on the bytes pending for one connection (queued or being written); past it
    /// the connection is closed with 1013 "slow consumer" at once. Broadcast frames are shared
    /// between receivers, so this counts bytes the connection refers to, not bytes it owns.
    pub outbound_queue_bytes: usize,
    /// A connection whose oldest unwritten frame has waited this long (milliseconds) while
    /// the socket takes nothing is a slow consumer and is closed with 1013.
    pub slow_consumer_lag_ms: u64,
    /// Time allowed from TCP accept to a completed WebSocket upgrade.
    pub handshake_timeout_secs: u64,
    /// Largest HTTP request head (request line and headers); larger is refused with 431.
    pub http_head_bytes: usize,
    /// Largest `POST /token` body; larger is refused with 413.
    pub max_token_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 65_536,
            max_channels_per_socket: 100,
            idle_timeout_secs: 60,
            // A burst of 2,000 frames of 1 KB pending for every subscriber of a topic is ~2 MiB
            // each and costs one shared copy; 16 MiB leaves room for bursts eight times that
            // (docs/reliability.md, "How memory is bounded").
            outbound_queue_bytes: 16 << 20,
            slow_consumer_lag_ms: 5_000,
            handshake_timeout_secs: 10,
            http_head_bytes: 8_192,
            max_token_body_bytes: 4_096,
        }
    }
}

impl Limits {
    /// [`Limits::idle_timeout_secs`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// [`Limits::slow_consumer_lag_ms`] as a duration.
    pub fn slow_consumer_lag(&self) -> Duration {
        Duration::from_millis(self.slow_consumer_lag_ms)
    }

    /// [`Limits::handshake_timeout_secs`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}

/// The effective configuration. Built by [`Config::load`]; `Default` gives the documented
/// defaults (useful in tests: `Config { port: 0, ..Config::default() }`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (Tangram key).
    pub host: String,
    /// Port to listen on (Tangram key). 0 lets the OS choose (tests only: with several
    /// shards each listener would get its own port).
    pub port: u16,
    /// Public base URL of this service when behind a reverse proxy (Tangram key; informative).
    pub public_url: Option<String>,
    /// Redis to bridge to: `[channel] redis_url`, else Tangram's `[core] redis_url`. Used in
    /// single mode only (see [`Config::redis_deployment`]).
    pub redis_url: String,
    /// Sentinel mode: the sentinels' addresses (`redis://host:port` each, normalised).
    pub redis_sentinels: Vec<String>,
    /// Sentinel mode: the name of the master the sentinels watch.
    pub redis_sentinel_master: Option<String>,
    /// Cluster mode: seed nodes (`redis://host:port` each, normalised).
    pub redis_cluster: Vec<String>,
    /// Where each deployment key was set, for the error when two modes are given (public so
    /// that `Config { .., ..Config::default() }` works outside this module; its contents are
    /// this module's).
    pub deployment_origins: DeploymentOrigins,
    /// HS256 key for channel tokens (Tangram key). `None`: the binary generates a random one.
    pub jwt_secret: Option<Secret>,
    /// Lifetime of minted tokens, in seconds (Tangram key; Tangram's default is 10 years).
    pub jwt_expiration_secs: u64,
    /// Length of random client ids minted by `POST /token` (Tangram key).
    pub id_length: usize,
    /// Number of shards (executors); 0 = one per available core. See [`Config::effective_shards`].
    pub shards: usize,
    /// Bearer key required to mint `admin` tokens over HTTP. `None`: never over HTTP.
    pub admin_key: Option<Secret>,
    /// Pages (`Origin`s) whose WebSocket upgrades are accepted; `*` (the default) admits all.
    pub allowed_origins: Vec<OriginPattern>,
    /// Whether an upgrade without an `Origin` header (a non-browser client) is accepted.
    pub allow_missing_origin: bool,
    /// Who may mint tokens over `POST /token`.
    pub token_mint: TokenMint,
    /// Bearer key that mints non-admin tokens when `token_mint = "key"`.
    pub mint_key: Option<Secret>,
    /// Topics anyone may mint for when `token_mint = "key"`.
    pub mint_open_topics: Vec<TopicPattern>,
    /// Connection and request limits.
    pub limits: Limits,
    /// Capacity, in messages, of each shard's inbox from the Redis core.
    pub shard_inbox_capacity: usize,
    /// Capacity, in payload bytes of the broadcasts waiting, of each shard's inbox.
    pub shard_inbox_bytes: usize,
    /// Capacity, in messages, of the queue from the shards to the Redis publisher.
    pub publisher_queue_capacity: usize,
    /// Period of the `system` channel's `datetime` event, in milliseconds; 0 disables it.
    pub datetime_interval_ms: u64,
    /// Period of the `admin` channel's `stats` push, in seconds; 0 disables it.
    pub admin_stats_interval_secs: u64,
    /// Presences of a process that stopped refreshing them are removed after this long (the
    /// refresh runs every third of it); with the default, a killed process's members leave
    /// within 10 s in the worst case (docs/presence.md, "How fast a dead process's members
    /// leave").
    pub presence_ttl_secs: u64,
    /// Presence on every topic (`presence_state` / `presence_diff`); `false` turns it off for
    /// broadcast-only deployments (joins then cost no Redis round trip).
    pub presence_enabled: bool,
    /// Presence diffs of a topic arriving within this many milliseconds go out merged as one
    /// `presence_diff` (like Phoenix.Tracker's broadcast period); 0 sends each at once.
    pub presence_batch_ms: u64,
    /// Newest messages the publish function keeps per topic for recovery on join (PROTOCOL
    /// §12); 0 keeps none: no positions, no recovery, joins answered at once.
    pub history_size: u64,
    /// Seconds a topic's history lives after its last publish.
    pub history_ttl_secs: u64,
}

/// Default `host`, as in Tangram.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Default `port`, as in Tangram.
pub const DEFAULT_PORT: u16 = 2347;
/// Default `redis_url`, as in Tangram's `[core]`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default token lifetime: Tangram's (`315360000` s, ten years), so that a Tangram deployment
/// behaves the same after the switch. Operators should lower it.
pub const DEFAULT_JWT_EXPIRATION_SECS: u64 = 315_360_000;
/// Default length of generated client ids, as in Tangram.
pub const DEFAULT_ID_LENGTH: usize = 8;

impl Default for Config {
    fn default() -> Self {
        Config {
            host: DEFAULT_HOST.to_string(),
            port: DEFAULT_PORT,
            public_url: None,
            redis_url: DEFAULT_REDIS_URL.to_string(),
            redis_sentinels: Vec::new(),
            redis_sentinel_master: None,
            redis_cluster: Vec::new(),
            deployment_origins: DeploymentOrigins::default(),
            jwt_secret: None,
            jwt_expiration_secs: DEFAULT_JWT_EXPIRATION_SECS,
            id_length: DEFAULT_ID_LENGTH,
            shards: 0,
            admin_key: None,
            allowed_origins: vec![OriginPattern::parse("*").expect("`*` is a valid pattern")],
            allow_missing_origin: true,
            token_mint: TokenMint::Open,
            mint_key: None,
            mint_open_topics: Vec::new(),
            limits: Limits::default(),
            shard_inbox_capacity: 65_536,
            shard_inbox_bytes: 32 << 20,
            publisher_queue_capacity: 65_536,
            datetime_interval_ms: 1_000,
            admin_stats_interval_secs: 5,
            presence_ttl_secs: 6,
            presence_enabled: true,
            presence_batch_ms: 100,
            history_size: 100,
            history_ttl_secs: 300,
        }
    }
}

/// Values given on the command line; they beat everything else. `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub redis_url: Option<String>,
    /// `--redis-sentinel HOST:PORT[,HOST:PORT…]`.
    pub redis_sentinels: Option<String>,
    /// `--redis-sentinel-master NAME`.
    pub redis_sentinel_master: Option<String>,
    /// `--redis-cluster HOST:PORT[,HOST:PORT…]`.
    pub redis_cluster: Option<String>,
    pub jwt_secret: Option<String>,
    pub shards: Option<usize>,
}

/// Why a configuration could not be loaded. Messages are for the operator reading stderr:
/// they name the key, where the value came from, and what form is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("`{section}` in {origin} must be a table (`[{section}]`)")]
    NotATable { section: String, origin: String },
    #[error("unknown key `{key}` in [channel] of {origin}{hint}")]
    UnknownKey {
        key: String,
        origin: String,
        hint: String,
    },
    #[error(
        "`{first}` ({first_origin}) and `{second}` ({second_origin}) choose two Redis \
         deployments; give exactly one of redis_url (single), redis_sentinels + \
         redis_sentinel_master (Sentinel) or redis_cluster (Cluster)"
    )]
    DeploymentClash {
        first: &'static str,
        first_origin: String,
        second: &'static str,
        second_origin: String,
    },
    #[error("`{given}` ({origin}) needs `{missing}` too: Sentinel mode is redis_sentinels + redis_sentinel_master")]
    SentinelIncomplete {
        given: &'static str,
        origin: String,
        missing: &'static str,
    },
    #[error("invalid value for `{key}` ({origin}): expected {expected}, got {got}")]
    InvalidValue {
        key: String,
        origin: String,
        expected: &'static str,
        got: String,
    },
    /// Keys that are each valid but do not make sense together.
    #[error("{0}")]
    Inconsistent(String),
}

/// A value before it is interpreted: typed when it comes from TOML, text from env and flags.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Toml(&'a toml::Value),
    Text(&'a str),
}

impl Raw<'_> {
    fn text(&self) -> Option<&str> {
        match self {
            Raw::Toml(toml::Value::String(s)) => Some(s),
            Raw::Text(s) => Some(s),
            Raw::Toml(_) => None,
        }
    }

    fn integer(&self) -> Option<i128> {
        match self {
            Raw::Toml(toml::Value::Integer(i)) => Some(i128::from(*i)),
            Raw::Text(s) => s.trim().parse().ok(),
            Raw::Toml(_) => None,
        }
    }

    /// A TOML array of strings, or comma-separated text (the environment's form of a list).
    fn list(&self) -> Option<Vec<String>> {
        match self {
            Raw::Toml(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect(),
            Raw::Text(s) => Some(
                s.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            Raw::Toml(_) => None,
        }
    }

    fn boolean(&self) -> Option<bool> {
        match self {
            Raw::Toml(toml::Value::Boolean(b)) => Some(*b),
            Raw::Text(s) => match s.trim() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            Raw::Toml(_) => None,
        }
    }

    /// What was given, for error messages (never called for secrets).
    fn shown(&self) -> String {
        match self {
            Raw::Toml(toml::Value::String(s)) => format!("{s:?}"),
            Raw::Toml(v) => format!("{} `{v}`", v.type_str()),
            Raw::Text(s) => format!("{s:?}"),
        }
    }
}

fn int_in<T: TryFrom<i128>>(raw: Raw<'_>, min: i128, max: i128) -> Option<T> {
    let v = raw.integer()?;
    if v < min || v > max {
        return None;
    }
    T::try_from(v).ok()
}

fn non_empty(raw: Raw<'_>) -> Option<String> {
    let s = raw.text()?;
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return None;
    }
    Some(s.to_string())
}

fn url_with_scheme(raw: Raw<'_>, schemes: &[&str]) -> Option<String> {
    let s = non_empty(raw)?;
    let (scheme, rest) = s.split_once("://")?;
    if rest.is_empty() || !schemes.iter().any(|w| scheme.eq_ignore_ascii_case(w)) {
        return None;
    }
    Some(s)
}

/// A list of strings: a TOML array of strings, or comma-separated text (environment, flags).
fn string_list(raw: Raw<'_>) -> Option<Vec<String>> {
    let items: Vec<String> = match raw {
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()?,
        _ => raw
            .text()?
            .split(',')
            .map(|e| e.trim().to_owned())
            .collect(),
    };
    (!items.is_empty()).then_some(items)
}

/// A list of Redis node addresses, each `host:port` or `redis://[user:password@]host:port`
/// (or `rediss://`), normalised to URLs so the redis crate takes them as they are.
fn node_list(raw: Raw<'_>) -> Option<Vec<String>> {
    string_list(raw)?.iter().map(|e| node_entry(e)).collect()
}

/// One node address (see [`node_list`]).
fn node_entry(entry: &str) -> Option<String> {
    if entry.is_empty() || entry.chars().any(char::is_whitespace) {
        return None;
    }
    let (scheme, rest) = match entry.split_once("://") {
        Some((scheme, rest)) if scheme == "redis" || scheme == "rediss" => (scheme, rest),
        Some(_) => return None,
        None => ("redis", entry),
    };
    // The user info ends at the last `@` (a password may hold `/`, `:` or `@`).
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
    let (host, port) = host_port.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || port == 0 || host.contains('/') {
        return None;
    }
    Some(format!("{scheme}://{rest}"))
}

/// A Sentinel master name: what `SENTINEL get-master-addr-by-name` takes.
fn master_name(raw: Raw<'_>) -> Option<String> {
    let s = non_empty(raw)?;
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        .then_some(s)
}

/// One configuration key: its name in `[channel]` (and, upper-cased, after `CHANNEL_` in the
/// environment), the accepted form in words, and how it is applied.
pub struct Key {
    /// Name in the `[channel]` table.
    pub name: &'static str,
    /// The accepted form, as shown in error messages.
    pub expected: &'static str,
    /// Values of this key are masked in errors and in [`Config::describe`].
    pub secret: bool,
    /// The key's effective value as TOML (secrets masked; `# …` when unset), for
    /// [`Config::describe`].
    show: fn(&Config) -> String,
    apply: fn(&mut Config, Raw<'_>) -> Option<()>,
}

impl Key {
    /// The environment variable that sets this key: `CHANNEL_` + the name in upper case.
    pub fn env_var(&self) -> String {
        format!("CHANNEL_{}", self.name.to_ascii_uppercase())
    }
}

const U32_MAX: i128 = u32::MAX as i128;

/// Every key of the `[channel]` table. The order is the order of `check-config` output.
pub static KEYS: &[Key] = &[
    Key {
        name: "host",
        expected: "an address or host name to listen on, e.g. \"0.0.0.0\"",
        secret: false,
        show: |c| shown_quoted(&c.host),
        apply: |c, r| {
            c.host = non_empty(r)?;
            Some(())
        },
    },
    Key {
        name: "port",
        expected: "an integer between 0 and 65535",
        secret: false,
        show: |c| c.port.to_string(),
        apply: |c, r| {
            c.port = int_in(r, 0, 65_535)?;
            Some(())
        },
    },
    Key {
        name: "public_url",
        expected: "an http://, https://, ws:// or wss:// URL",
        secret: false,
        show: |c| {
            c.public_url
                .as_deref()
                .map_or("# not set".to_string(), shown_quoted)
        },
        apply: |c, r| {
            c.public_url = Some(url_with_scheme(r, &["http", "https", "ws", "wss"])?);
            Some(())
        },
    },
    Key {
        name: "redis_url",
        expected: "a redis://, rediss:// or unix:// URL",
        secret: false,
        show: |c| shown_quoted(&c.redis_url_redacted()),
        apply: |c, r| {
            c.redis_url = url_with_scheme(r, &["redis", "rediss", "unix", "redis+unix"])?;
            Some(())
        },
    },
    Key {
        name: "redis_sentinels",
        expected:
            "a list of sentinels, each \"host:port\" or \"redis://[user:password@]host:port\" \
                   (comma-separated in the environment and on the command line)",
        secret: false,
        show: |c| shown_nodes(&c.redis_sentinels),
        apply: |c, r| {
            c.redis_sentinels = node_list(r)?;
            Some(())
        },
    },
    Key {
        name: "redis_sentinel_master",
        expected: "the name of the master the sentinels watch (letters, digits, `-`, `_`, `.`)",
        secret: false,
        show: |c| {
            c.redis_sentinel_master
                .as_deref()
                .map_or("# not set".to_string(), shown_quoted)
        },
        apply: |c, r| {
            c.redis_sentinel_master = Some(master_name(r)?);
            Some(())
        },
    },
    Key {
        name: "redis_cluster",
        expected: "a list of cluster seed nodes, each \"host:port\" or \
                   \"redis://[user:password@]host:port\" (comma-separated in the environment and \
                   on the command line)",
        secret: false,
        show: |c| shown_nodes(&c.redis_cluster),
        apply: |c, r| {
            c.redis_cluster = node_list(r)?;
            Some(())
        },
    },
    Key {
        name: "jwt_secret",
        expected: "a non-empty string",
        secret: true,
        show: |c| shown_secret(&c.jwt_secret),
        apply: |c, r| {
            let s = r.text()?;
            if s.is_empty() {
                return None;
            }
            c.jwt_secret = Some(Secret::new(s));
            Some(())
        },
    },
    Key {
        name: "jwt_expiration_secs",
        expected: "a number of seconds between 1 and 4294967295",
        secret: false,
        show: |c| c.jwt_expiration_secs.to_string(),
        apply: |c, r| {
            c.jwt_expiration_secs = int_in(r, 1, U32_MAX)?;
            Some(())
        },
    },
    Key {
        name: "id_length",
        expected: "an integer between 1 and 128",
        secret: false,
        show: |c| c.id_length.to_string(),
        apply: |c, r| {
            c.id_length = int_in(r, 1, 128)?;
            Some(())
        },
    },
    Key {
        name: "shards",
        expected: "an integer between 0 (one per core) and 1024",
        secret: false,
        show: |c| format!("{}  # effective: {}", c.shards, c.effective_shards()),
        apply: |c, r| {
            c.shards = int_in(r, 0, 1024)?;
            Some(())
        },
    },
    Key {
        name: "admin_key",
        expected: "a string of at least 16 characters",
        secret: true,
        show: |c| shown_secret(&c.admin_key),
        apply: |c, r| {
            let s = r.text()?;
            if s.chars().count() < 16 {
                return None;
            }
            c.admin_key = Some(Secret::new(s));
            Some(())
        },
    },
    Key {
        name: "allowed_origins",
        expected:
            "a list of origins (\"https://app.example.com\", \"*.example.com\", \"*\" for any)",
        secret: false,
        show: |c| shown_list(&c.allowed_origins),
        apply: |c, r| {
            c.allowed_origins = r
                .list()?
                .iter()
                .map(|p| OriginPattern::parse(p))
                .collect::<Option<_>>()?;
            Some(())
        },
    },
    Key {
        name: "allow_missing_origin",
        expected: "true or false",
        secret: false,
        show: |c| c.allow_missing_origin.to_string(),
        apply: |c, r| {
            c.allow_missing_origin = r.boolean()?;
            Some(())
        },
    },
    Key {
        name: "token_mint",
        expected: "\"open\", \"key\" or \"off\"",
        secret: false,
        show: |c| shown_quoted(c.token_mint.as_str()),
        apply: |c, r| {
            c.token_mint = TokenMint::parse(r.text()?)?;
            Some(())
        },
    },
    Key {
        name: "mint_key",
        expected: "a string of at least 16 characters",
        secret: true,
        show: |c| shown_secret(&c.mint_key),
        apply: |c, r| {
            let s = r.text()?;
            if s.chars().count() < 16 {
                return None;
            }
            c.mint_key = Some(Secret::new(s));
            Some(())
        },
    },
    Key {
        name: "mint_open_topics",
        expected: "a list of topics, each exact or a prefix ending in `*` (\"public:*\")",
        secret: false,
        show: |c| shown_list(&c.mint_open_topics),
        apply: |c, r| {
            c.mint_open_topics = r
                .list()?
                .iter()
                .map(|p| TopicPattern::parse(p))
                .collect::<Option<_>>()?;
            Some(())
        },
    },
    Key {
        name: "max_frame_bytes",
        expected: "a number of bytes between 1024 and 67108864",
        secret: false,
        show: |c| c.limits.max_frame_bytes.to_string(),
        apply: |c, r| {
            c.limits.max_frame_bytes = int_in(r, 1024, 64 << 20)?;
            Some(())
        },
    },
    Key {
        name: "max_channels_per_socket",
        expected: "an integer between 1 and 100000",
        secret: false,
        show: |c| c.limits.max_channels_per_socket.to_string(),
        apply: |c, r| {
            c.limits.max_channels_per_socket = int_in(r, 1, 100_000)?;
            Some(())
        },
    },
    Key {
        name: "idle_timeout_secs",
        expected: "a number of seconds between 1 and 86400",
        secret: false,
        show: |c| c.limits.idle_timeout_secs.to_string(),
        apply: |c, r| {
            c.limits.idle_timeout_secs = int_in(r, 1, 86_400)?;
            Some(())
        },
    },
    Key {
        name: "outbound_queue_bytes",
        expected: "a number of bytes between 1024 and 1073741824",
        secret: false,
        show: |c| c.limits.outbound_queue_bytes.to_string(),
        apply: |c, r| {
            c.limits.outbound_queue_bytes = int_in(r, 1024, 1 << 30)?;
            Some(())
        },
    },
    Key {
        name: "slow_consumer_lag_ms",
        expected: "a number of milliseconds between 100 and 600000",
        secret: false,
        show: |c| c.limits.slow_consumer_lag_ms.to_string(),
        apply: |c, r| {
            c.limits.slow_consumer_lag_ms = int_in(r, 100, 600_000)?;
            Some(())
        },
    },
    Key {
        name: "handshake_timeout_secs",
        expected: "a number of seconds between 1 and 3600",
        secret: false,
        show: |c| c.limits.handshake_timeout_secs.to_string(),
        apply: |c, r| {
            c.limits.handshake_timeout_secs = int_in(r, 1, 3600)?;
            Some(())
        },
    },
    Key {
        name: "http_head_bytes",
        expected: "a number of bytes between 1024 and 1048576",
        secret: false,
        show: |c| c.limits.http_head_bytes.to_string(),
        apply: |c, r| {
            c.limits.http_head_bytes = int_in(r, 1024, 1 << 20)?;
            Some(())
        },
    },
    Key {
        name: "max_token_body_bytes",
        expected: "a number of bytes between 64 and 1048576",
        secret: false,
        show: |c| c.limits.max_token_body_bytes.to_string(),
        apply: |c, r| {
            c.limits.max_token_body_bytes = int_in(r, 64, 1 << 20)?;
            Some(())
        },
    },
    Key {
        name: "shard_inbox_capacity",
        expected: "a number of messages between 16 and 16777216",
        secret: false,
        show: |c| c.shard_inbox_capacity.to_string(),
        apply: |c, r| {
            c.shard_inbox_capacity = int_in(r, 16, 1 << 24)?;
            Some(())
        },
    },
    Key {
        name: "shard_inbox_bytes",
        expected: "a number of bytes between 65536 and 17179869184",
        secret: false,
        show: |c| c.shard_inbox_bytes.to_string(),
        apply: |c, r| {
            c.shard_inbox_bytes = int_in(r, 1 << 16, 1 << 34)?;
            Some(())
        },
    },
    Key {
        name: "publisher_queue_capacity",
        expected: "a number of messages between 16 and 16777216",
        secret: false,
        show: |c| c.publisher_queue_capacity.to_string(),
        apply: |c, r| {
            c.publisher_queue_capacity = int_in(r, 16, 1 << 24)?;
            Some(())
        },
    },
    Key {
        name: "datetime_interval_ms",
        expected: "a number of milliseconds between 0 (disabled) and 86400000",
        secret: false,
        show: |c| c.datetime_interval_ms.to_string(),
        apply: |c, r| {
            c.datetime_interval_ms = int_in(r, 0, 86_400_000)?;
            Some(())
        },
    },
    Key {
        name: "admin_stats_interval_secs",
        expected: "a number of seconds between 0 (disabled) and 86400",
        secret: false,
        show: |c| c.admin_stats_interval_secs.to_string(),
        apply: |c, r| {
            c.admin_stats_interval_secs = int_in(r, 0, 86_400)?;
            Some(())
        },
    },
    Key {
        name: "presence_ttl_secs",
        expected: "a number of seconds between 1 and 86400",
        secret: false,
        show: |c| c.presence_ttl_secs.to_string(),
        apply: |c, r| {
            c.presence_ttl_secs = int_in(r, 1, 86_400)?;
            Some(())
        },
    },
    Key {
        name: "presence_enabled",
        expected: "true or false",
        secret: false,
        show: |c| c.presence_enabled.to_string(),
        apply: |c, r| {
            c.presence_enabled = r.boolean()?;
            Some(())
        },
    },
    Key {
        name: "presence_batch_ms",
        expected: "a number of milliseconds between 0 and 10000",
        secret: false,
        show: |c| c.presence_batch_ms.to_string(),
        apply: |c, r| {
            c.presence_batch_ms = int_in(r, 0, 10_000)?;
            Some(())
        },
    },
    Key {
        name: "history_size",
        expected: "a number of messages between 0 (no history) and 100000",
        secret: false,
        show: |c| c.history_size.to_string(),
        apply: |c, r| {
            c.history_size = int_in(r, 0, 100_000)?;
            Some(())
        },
    },
    Key {
        name: "history_ttl_secs",
        expected: "a number of seconds between 1 and 2592000",
        secret: false,
        show: |c| c.history_ttl_secs.to_string(),
        apply: |c, r| {
            c.history_ttl_secs = int_in(r, 1, 2_592_000)?;
            Some(())
        },
    },
];

fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The keys that choose a Redis deployment (exactly one mode may be given).
const DEPLOYMENT_KEYS: [&str; 4] = [
    "redis_url",
    "redis_sentinels",
    "redis_sentinel_master",
    "redis_cluster",
];

/// A string as a TOML value.
fn shown_quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A list as a TOML array of strings.
fn shown_list<T: fmt::Display>(items: &[T]) -> String {
    toml::Value::Array(
        items
            .iter()
            .map(|i| toml::Value::String(i.to_string()))
            .collect(),
    )
    .to_string()
}

/// Redis node addresses as a TOML array, passwords masked; `# not set` when empty.
fn shown_nodes(nodes: &[String]) -> String {
    if nodes.is_empty() {
        return "# not set".to_string();
    }
    let masked: Vec<String> = nodes.iter().map(|n| redact_url_password(n)).collect();
    shown_list(&masked)
}

/// A secret, masked; `# not set` when absent.
fn shown_secret(s: &Option<Secret>) -> String {
    match s {
        Some(_) => "\"<redacted>\"".to_string(),
        None => "# not set".to_string(),
    }
}

fn apply(cfg: &mut Config, key: &Key, raw: Raw<'_>, origin: &str) -> Result<(), ConfigError> {
    (key.apply)(cfg, raw).ok_or_else(|| ConfigError::InvalidValue {
        key: key.name.to_string(),
        origin: origin.to_string(),
        expected: key.expected,
        got: if key.secret {
            "<redacted>".to_string()
        } else if DEPLOYMENT_KEYS.contains(&key.name) {
            // A URL may carry a password even when it is invalid.
            shown_without_passwords(raw)
        } else {
            raw.shown()
        },
    })?;
    if let Some(name) = DEPLOYMENT_KEYS.iter().find(|n| **n == key.name) {
        cfg.deployment_origins.0.retain(|(n, _)| n != name);
        cfg.deployment_origins.0.push((name, origin.to_string()));
    }
    Ok(())
}

/// What was given for a deployment key, every URL's password masked.
fn shown_without_passwords(raw: Raw<'_>) -> String {
    match string_list(raw) {
        Some(items) if items.len() > 1 || matches!(raw, Raw::Toml(toml::Value::Array(_))) => {
            let items: Vec<String> = items
                .iter()
                .map(|i| format!("{:?}", redact_url_password(i)))
                .collect();
            format!("[{}]", items.join(", "))
        }
        _ => redact_url_password(&raw.shown()),
    }
}

fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The password may itself contain `/`: the user info ends at the last `@` (a Redis URL's
    // path is a database number, never an `@`).
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let user = rest[..at].split(':').next().unwrap_or("");
    format!("{scheme}://{user}:<redacted>{}", &rest[at..])
}

/// Levenshtein distance, for "did you mean" hints on misspelt keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn hint_for(unknown: &str) -> String {
    KEYS.iter()
        .map(|k| (edit_distance(unknown, k.name), k.name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, name)| format!(" (did you mean `{name}`?)"))
        .unwrap_or_default()
}

/// Where each Redis deployment key was set. `[core] redis_url` is not recorded: every
/// tangram.toml has it, so it never clashes.
#[derive(Debug, Clone, Default)]
pub struct DeploymentOrigins(Vec<(&'static str, String)>);

/// The three ways to reach Redis (docs/operations.md, "Redis deployments"): exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisDeployment {
    /// One Redis at `url` (`redis_url`; the default).
    Single {
        /// The Redis URL.
        url: String,
    },
    /// A master found through sentinels, followed across failovers.
    Sentinel {
        /// The sentinels, `redis://[user:password@]host:port` each.
        sentinels: Vec<String>,
        /// The master's name in the sentinels.
        master: String,
    },
    /// A Redis Cluster, discovered from seed nodes.
    Cluster {
        /// The seed nodes, `redis://[user:password@]host:port` each.
        seeds: Vec<String>,
    },
}

impl RedisDeployment {
    /// The mode's name, as `check-config` and the start-up log print it.
    pub fn mode(&self) -> &'static str {
        match self {
            RedisDeployment::Single { .. } => "single",
            RedisDeployment::Sentinel { .. } => "sentinel",
            RedisDeployment::Cluster { .. } => "cluster",
        }
    }

    /// One line for logs and `check-config`: the mode and where it points, passwords masked.
    pub fn describe(&self) -> String {
        let nodes = |list: &[String]| {
            list.iter()
                .map(|n| redact_url_password(n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            RedisDeployment::Single { url } => format!("single ({})", redact_url_password(url)),
            RedisDeployment::Sentinel { sentinels, master } => {
                format!("sentinel (master {master:?} via {})", nodes(sentinels))
            }
            RedisDeployment::Cluster { seeds } => format!("cluster (seeds {})", nodes(seeds)),
        }
    }
}

impl Config {
    /// Loads the configuration: defaults, then `file` (if any), then the environment as seen
    /// through `env` (`CHANNEL_<KEY>`; empty values count as unset), then `overrides`.
    ///
    /// `env` is a function rather than the process environment so tests need not mutate
    /// global state; the binary passes `&|k| std::env::var(k).ok()`.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => Some((
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
                path.display().to_string(),
            )),
            None => None,
        };
        Self::load_from(
            text.as_ref().map(|(t, o)| (t.as_str(), o.as_str())),
            env,
            overrides,
        )
    }

    /// Like [`Config::load`], with the TOML text given directly (`origin` names it in errors).
    pub fn load_str(
        toml_text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        Self::load_from(Some((toml_text, origin)), env, overrides)
    }

    fn load_from(
        file: Option<(&str, &str)>,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some((text, origin)) = file {
            cfg.apply_file(text, origin)?;
        }
        for k in KEYS {
            let var = k.env_var();
            if let Some(value) = env(&var).filter(|v| !v.is_empty()) {
                apply(
                    &mut cfg,
                    k,
                    Raw::Text(&value),
                    &format!("environment variable {var}"),
                )?;
            }
        }
        cfg.apply_overrides(overrides)?;
        cfg.check_consistency()?;
        cfg.check_deployment()?;
        Ok(cfg)
    }

    /// Exactly one Redis deployment: the keys of two modes clash, half a Sentinel setting is
    /// incomplete. Single mode needs nothing (its default URL is Tangram's).
    fn check_deployment(&self) -> Result<(), ConfigError> {
        let origin = |name: &str| {
            self.deployment_origins
                .0
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, o)| o.clone())
        };
        let mode_of = |name: &str| match name {
            "redis_url" => 0,
            "redis_cluster" => 2,
            _ => 1,
        };
        let given = &self.deployment_origins.0;
        if let Some((first, first_origin)) = given.first() {
            if let Some((second, second_origin)) =
                given.iter().find(|(n, _)| mode_of(n) != mode_of(first))
            {
                return Err(ConfigError::DeploymentClash {
                    first,
                    first_origin: first_origin.clone(),
                    second,
                    second_origin: second_origin.clone(),
                });
            }
        }
        for (given, missing) in [
            ("redis_sentinels", "redis_sentinel_master"),
            ("redis_sentinel_master", "redis_sentinels"),
        ] {
            if let (Some(origin), None) = (origin(given), origin(missing)) {
                return Err(ConfigError::SentinelIncomplete {
                    given,
                    origin,
                    missing,
                });
            }
        }
        Ok(())
    }

    /// Rules between keys, checked once every source has been applied.
    fn check_consistency(&self) -> Result<(), ConfigError> {
        if self.token_mint == TokenMint::Key && self.mint_key.is_none() {
            return Err(ConfigError::Inconsistent(
                "token_mint = \"key\" needs `mint_key` (at least 16 characters): the key callers \
                 present as `Authorization: Bearer <mint_key>`"
                    .to_string(),
            ));
        }
        Ok(())
    }

    /// The Redis deployment this configuration chooses.
    pub fn redis_deployment(&self) -> RedisDeployment {
        if !self.redis_cluster.is_empty() {
            return RedisDeployment::Cluster {
                seeds: self.redis_cluster.clone(),
            };
        }
        match &self.redis_sentinel_master {
            Some(master) if !self.redis_sentinels.is_empty() => RedisDeployment::Sentinel {
                sentinels: self.redis_sentinels.clone(),
                master: master.clone(),
            },
            _ => RedisDeployment::Single {
                url: self.redis_url.clone(),
            },
        }
    }

    fn apply_file(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                origin: origin.to_string(),
                message: e.to_string().trim_end().to_string(),
            })?;
        let table = |section: &str| -> Result<Option<&toml::Table>, ConfigError> {
            match doc.get(section) {
                None => Ok(None),
                Some(toml::Value::Table(t)) => Ok(Some(t)),
                Some(_) => Err(ConfigError::NotATable {
                    section: section.to_string(),
                    origin: origin.to_string(),
                }),
            }
        };
        // Tangram keeps Redis in [core]; every other [core] key is Tangram's business.
        if let Some(core) = table("core")? {
            if let (Some(v), Some(k)) = (core.get("redis_url"), key("redis_url")) {
                apply(self, k, Raw::Toml(v), &format!("[core] of {origin}"))?;
                // Tangram's own setting: never a clash with a Sentinel or Cluster choice.
                self.deployment_origins.0.retain(|(n, _)| *n != "redis_url");
            }
        }
        if let Some(channel) = table("channel")? {
            for (name, value) in channel {
                let k = key(name).ok_or_else(|| ConfigError::UnknownKey {
                    key: name.clone(),
                    origin: origin.to_string(),
                    hint: hint_for(name),
                })?;
                apply(self, k, Raw::Toml(value), &format!("[channel] of {origin}"))?;
            }
        }
        Ok(())
    }

    fn apply_overrides(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let given: [(&str, &str, Option<String>); 8] = [
            ("host", "--host", o.host.clone()),
            ("port", "--port", o.port.map(|p| p.to_string())),
            ("redis_url", "--redis-url", o.redis_url.clone()),
            (
                "redis_sentinels",
                "--redis-sentinel",
                o.redis_sentinels.clone(),
            ),
            (
                "redis_sentinel_master",
                "--redis-sentinel-master",
                o.redis_sentinel_master.clone(),
            ),
            ("redis_cluster", "--redis-cluster", o.redis_cluster.clone()),
            ("jwt_secret", "--jwt-secret", o.jwt_secret.clone()),
            ("shards", "--shards", o.shards.map(|s| s.to_string())),
        ];
        for (name, flag, value) in given {
            if let (Some(value), Some(k)) = (value, key(name)) {
                apply(
                    self,
                    k,
                    Raw::Text(&value),
                    &format!("command-line flag {flag}"),
                )?;
            }
        }
        Ok(())
    }

    /// The number of shards to start: `shards`, or the available cores when it is 0.
    pub fn effective_shards(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }

    /// `host:port` in a form `std::net` and socket2 accept (IPv6 hosts get brackets).
    pub fn listen_addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL browsers use to reach us: `public_url`, else derived from host and port the way
    /// Tangram does (`0.0.0.0` becomes `localhost`).
    pub fn public_url_or_default(&self) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => {
                let host = if self.host == "0.0.0.0" {
                    "localhost"
                } else {
                    &self.host
                };
                format!("http://{host}:{}", self.port)
            }
        }
    }

    /// `redis_url` with any password replaced by `<redacted>`, for logs and `check-config`
    /// (`redis://user:pw@host` → `redis://user:<redacted>@host`).
    pub fn redis_url_redacted(&self) -> String {
        redact_url_password(&self.redis_url)
    }

    /// Token lifetime as a duration.
    /// Period of the `system` channel's `datetime` event; `None` when disabled.
    pub fn datetime_interval(&self) -> Option<Duration> {
        (self.datetime_interval_ms > 0).then(|| Duration::from_millis(self.datetime_interval_ms))
    }

    /// Period of the `admin` channel's `stats` push; `None` when disabled.
    pub fn admin_stats_interval(&self) -> Option<Duration> {
        (self.admin_stats_interval_secs > 0)
            .then(|| Duration::from_secs(self.admin_stats_interval_secs))
    }

    /// The presence diff batching window; `None` when diffs go out one by one.
    pub fn presence_batch(&self) -> Option<Duration> {
        (self.presence_batch_ms > 0).then(|| Duration::from_millis(self.presence_batch_ms))
    }

    /// The warning `serve` logs once at start when it listens beyond this host with both access
    /// controls open (every page may connect and anyone may mint); `None` otherwise.
    pub fn open_access_warning(&self) -> Option<String> {
        let any_origin = self.allowed_origins.iter().any(OriginPattern::is_any);
        if !any_origin || self.token_mint != TokenMint::Open || self.listens_on_loopback_only() {
            return None;
        }
        Some(format!(
            "listening on {} with allowed_origins = [\"*\"] and token_mint = \"open\": any web \
             page can connect and anyone can mint a token for any non-admin topic. Set \
             allowed_origins and token_mint (docs/configuration.md, \"Access control\") unless \
             every topic is meant to be public",
            self.listen_addr()
        ))
    }

    /// True when `host` is a loopback address (or `localhost`): nothing off this machine can
    /// connect.
    fn listens_on_loopback_only(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        }
    }

    /// Lifetime of presences a dead process left behind.
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_secs(self.presence_ttl_secs)
    }

    /// The effective configuration as a `[channel]` TOML table, secrets masked: what
    /// `channel check-config` prints, and what the server logs at start-up.
    pub fn describe(&self) -> String {
        let lines = KEYS.iter().map(|key| (key.name, (key.show)(self)));
        let mut out = format!(
            "# redis deployment: {}\n[channel]\n",
            self.redis_deployment().describe()
        );
        for (name, value) in lines {
            if value.starts_with('#') {
                out.push_str(&format!("# {name} = {}\n", value.trim_start_matches("# ")));
            } else {
                out.push_str(&format!("{name} = {value}\n"));
            }
        }
        out
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::load_str(text, "test.toml", &no_env, &Overrides::default())
    }

    const TANGRAM: &str = include_str!("../tests/fixtures/tangram.toml");

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 2347);
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.jwt_expiration_secs, 315_360_000);
        assert_eq!(c.id_length, 8);
        assert_eq!(c.limits.max_frame_bytes, 65_536);
        assert_eq!(c.limits.http_head_bytes, 8_192);
        assert!(c.jwt_secret.is_none());
        assert_eq!(c.datetime_interval(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn unmodified_tangram_toml_loads() {
        let c = load(TANGRAM).expect("the Tangram example must load");
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(c.port, 2347);
        assert_eq!(c.redis_url, "redis://localhost:6379");
        assert_eq!(
            c.jwt_secret.as_ref().map(Secret::expose),
            Some("a-better-secret-than-this")
        );
        assert_eq!(c.jwt_expiration_secs, 315_360_000);
    }

    #[test]
    fn all_tangram_channel_keys_are_accepted() {
        let c = load(
            "[channel]\nhost = \"::1\"\nport = 4000\npublic_url = \"https://t.example.com\"\n\
             jwt_secret = \"s\"\njwt_expiration_secs = 60\nid_length = 12\n",
        )
        .expect("Tangram keys");
        assert_eq!(c.public_url.as_deref(), Some("https://t.example.com"));
        assert_eq!(c.id_length, 12);
        assert_eq!(c.listen_addr(), "[::1]:4000");
    }

    #[test]
    fn channel_redis_url_beats_core_redis_url() {
        let c = load(
            "[core]\nredis_url = \"redis://core:6379\"\n[channel]\nredis_url = \"redis://ours:6379\"\n",
        )
        .expect("valid");
        assert_eq!(c.redis_url, "redis://ours:6379");
    }

    #[test]
    fn unknown_channel_key_is_named_in_error() {
        let err = load("[channel]\nport = 1\nmax_frame_byte = 10\n")
            .expect_err("unknown key must be refused")
            .to_string();
        assert!(err.contains("`max_frame_byte`"), "{err}");
        assert!(err.contains("did you mean `max_frame_bytes`"), "{err}");
        assert!(err.contains("test.toml"), "{err}");
    }

    #[test]
    fn unknown_keys_outside_channel_are_ignored() {
        let c = load(
            "[server]\nwhatever = 1\n[core]\nplugins = []\nlog_level = \"x\"\n[map]\nzoom = 3\n",
        )
        .expect("other sections are Tangram's");
        assert_eq!(c.port, 2347);
    }

    #[test]
    fn bad_value_names_key_and_expected_form() {
        let err = load("[channel]\nport = \"lots\"\n")
            .expect_err("bad")
            .to_string();
        assert!(err.contains("`port`"), "{err}");
        assert!(err.contains("an integer between 0 and 65535"), "{err}");
        assert!(err.contains("\"lots\""), "{err}");
        let err = load("[channel]\nport = 70000\n")
            .expect_err("range")
            .to_string();
        assert!(err.contains("70000"), "{err}");
    }

    #[test]
    fn bad_secret_value_is_not_echoed() {
        let err = load("[channel]\nadmin_key = \"short-key\"\n")
            .expect_err("too short")
            .to_string();
        assert!(err.contains("`admin_key`"), "{err}");
        assert!(!err.contains("short-key"), "{err}");
    }

    #[test]
    fn bad_redis_url_is_refused() {
        let err = load("[core]\nredis_url = \"localhost:6379\"\n")
            .expect_err("no scheme")
            .to_string();
        assert!(err.contains("redis_url") && err.contains("[core]"), "{err}");
    }

    #[test]
    fn toml_syntax_error_is_reported_with_origin() {
        let err = load("[channel\nport = 1").expect_err("syntax").to_string();
        assert!(err.starts_with("test.toml is not valid TOML"), "{err}");
    }

    #[test]
    fn channel_that_is_not_a_table_is_refused() {
        let err = load("channel = 3\n").expect_err("not a table").to_string();
        assert!(err.contains("must be a table"), "{err}");
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let file = "[channel]\nport = 1000\nhost = \"10.0.0.1\"\nshards = 3\n";
        let env: HashMap<&str, &str> = [("CHANNEL_PORT", "2000"), ("CHANNEL_HOST", "10.0.0.2")]
            .into_iter()
            .collect();
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let overrides = Overrides {
            port: Some(3000),
            ..Overrides::default()
        };
        let c = Config::load_str(file, "f", &lookup, &overrides).expect("valid");
        assert_eq!(c.port, 3000, "flag beats env");
        assert_eq!(c.host, "10.0.0.2", "env beats file");
        assert_eq!(c.shards, 3, "file beats default");
        assert_eq!(c.redis_url, DEFAULT_REDIS_URL, "default when nothing given");
    }

    #[test]
    fn every_key_has_an_env_var() {
        for k in KEYS {
            let var = k.env_var();
            let value = match k.name {
                "host" => "h",
                "public_url" => "https://x",
                "redis_url" => "redis://x",
                "redis_sentinels" | "redis_cluster" => "redis://h:7000",
                "redis_sentinel_master" => "mymaster",
                "jwt_secret" | "admin_key" | "mint_key" => "0123456789abcdef0",
                "allowed_origins" => "https://x.example.com",
                "allow_missing_origin" => "false",
                "token_mint" => "off",
                "mint_open_topics" => "public:*",
                "id_length" | "shards" => "100",
                "presence_enabled" => "false",
                "shard_inbox_bytes" => "1048576",
                _ => "1024",
            };
            // Half a Sentinel setting is refused: the other half comes along.
            let partner = match k.name {
                "redis_sentinels" => Some(("CHANNEL_REDIS_SENTINEL_MASTER", "m")),
                "redis_sentinel_master" => Some(("CHANNEL_REDIS_SENTINELS", "s:1")),
                _ => None,
            };
            let lookup = |name: &str| {
                if name == var {
                    return Some(value.to_string());
                }
                partner.and_then(|(p, v)| (p == name).then(|| v.to_string()))
            };
            let c = Config::load(None, &lookup, &Overrides::default()).expect("valid");
            let described = c.describe();
            let line = described
                .lines()
                .find(|l| l.starts_with(&format!("{} = ", k.name)))
                .unwrap_or_else(|| panic!("{} missing from describe", k.name));
            if !k.secret {
                assert!(line.contains(value), "{var} not applied: {line}");
            }
        }
    }

    #[test]
    fn env_error_names_the_variable() {
        let lookup = |k: &str| (k == "CHANNEL_SHARDS").then(|| "many".to_string());
        let err = Config::load(None, &lookup, &Overrides::default())
            .expect_err("bad")
            .to_string();
        assert!(
            err.contains("CHANNEL_SHARDS") && err.contains("`shards`"),
            "{err}"
        );
    }

    #[test]
    fn empty_env_var_counts_as_unset() {
        let lookup = |k: &str| (k == "CHANNEL_PORT").then(String::new);
        let c = Config::load(None, &lookup, &Overrides::default()).expect("valid");
        assert_eq!(c.port, 2347);
    }

    #[test]
    fn describe_masks_secrets() {
        let c = Config {
            jwt_secret: Some(Secret::new("hunter2-hunter2")),
            admin_key: Some(Secret::new("admin-admin-admin")),
            ..Config::default()
        };
        let text = c.describe();
        assert!(
            !text.contains("hunter2") && !text.contains("admin-admin"),
            "{text}"
        );
        assert!(text.contains("jwt_secret = \"<redacted>\""), "{text}");
        assert!(!format!("{c:?}").contains("hunter2"));
        // The description is itself a valid configuration file.
        let round: toml::Table = text.parse().expect("describe is TOML");
        assert!(round.contains_key("channel"));
    }

    #[test]
    fn every_key_is_described_once_and_reads_back_as_itself() {
        // Not the defaults, so that a key whose `show` printed another key's value (or the
        // default) would read back differently.
        let text = "[channel]\nport = 4000\nid_length = 9\nshards = 3\nidle_timeout_secs = 61\n\
                    presence_batch_ms = 7\nallowed_origins = [\"https://a.example\"]\n\
                    slow_consumer_lag_ms = 1234\npresence_enabled = false\n";
        let c = load(text).expect("a valid configuration");
        let described = c.describe();
        for key in KEYS {
            let lines = described
                .lines()
                .filter(|l| {
                    l.trim_start_matches("# ")
                        .split(" = ")
                        .next()
                        .is_some_and(|name| name == key.name)
                })
                .count();
            assert_eq!(lines, 1, "`{}` in:\n{described}", key.name);
        }
        for set in text.lines().skip(1) {
            let found = described
                .lines()
                .any(|l| l.split("  #").next() == Some(set));
            assert!(found, "`{set}` in:\n{described}");
        }
        let again = load(&described).expect("describe reads back");
        assert_eq!(again.limits, c.limits);
        assert_eq!(again.describe(), described);
    }

    #[test]
    fn redis_password_is_redacted() {
        let c = Config {
            redis_url: "redis://default:pa:ss@r.example:6379/0".into(),
            ..Config::default()
        };
        assert_eq!(
            c.redis_url_redacted(),
            "redis://default:<redacted>@r.example:6379/0"
        );
        assert!(!c.describe().contains("pa:ss"));
        let c = Config {
            redis_url: "rediss://:secretpw@r:6380".into(),
            ..Config::default()
        };
        assert_eq!(c.redis_url_redacted(), "rediss://:<redacted>@r:6380");
        assert_eq!(Config::default().redis_url_redacted(), DEFAULT_REDIS_URL);
    }

    #[test]
    fn unmodified_tangram_toml_means_single_mode() {
        let c = load(TANGRAM).expect("the Tangram example must load");
        assert_eq!(
            c.redis_deployment(),
            RedisDeployment::Single {
                url: "redis://localhost:6379".into()
            }
        );
        assert!(c.describe().starts_with("# redis deployment: single ("));
    }

    #[test]
    fn sentinel_mode_from_file_env_and_flags() {
        let c = load(
            "[channel]\nredis_sentinels = [\"127.0.0.1:26379\", \"redis://:pw@s2:26380\"]\n\
             redis_sentinel_master = \"mymaster\"\n",
        )
        .expect("valid");
        assert_eq!(
            c.redis_deployment(),
            RedisDeployment::Sentinel {
                sentinels: vec![
                    "redis://127.0.0.1:26379".into(),
                    "redis://:pw@s2:26380".into()
                ],
                master: "mymaster".into()
            }
        );
        let env = |k: &str| match k {
            "CHANNEL_REDIS_SENTINELS" => Some("a:1, b:2".to_string()),
            "CHANNEL_REDIS_SENTINEL_MASTER" => Some("m".to_string()),
            _ => None,
        };
        let c = Config::load(None, &env, &Overrides::default()).expect("valid");
        assert_eq!(c.redis_deployment().mode(), "sentinel");
        assert_eq!(c.redis_sentinels, vec!["redis://a:1", "redis://b:2"]);
        let flags = Overrides {
            redis_cluster: Some("c1:7000,redis://u:p@c2:7001".into()),
            ..Overrides::default()
        };
        let c = Config::load(None, &no_env, &flags).expect("valid");
        assert_eq!(
            c.redis_deployment(),
            RedisDeployment::Cluster {
                seeds: vec!["redis://c1:7000".into(), "redis://u:p@c2:7001".into()]
            }
        );
    }

    #[test]
    fn two_deployment_modes_are_refused_naming_both_keys() {
        let err = load("[channel]\nredis_url = \"redis://r:6379\"\nredis_cluster = [\"c:7000\"]\n")
            .expect_err("two modes")
            .to_string();
        assert!(
            err.contains("`redis_url` ([channel] of test.toml)")
                && err.contains("`redis_cluster` ([channel] of test.toml)")
                && err.contains("exactly one"),
            "{err}"
        );
        let env = |k: &str| (k == "CHANNEL_REDIS_CLUSTER").then(|| "c:7000".to_string());
        let flags = Overrides {
            redis_sentinels: Some("s:26379".into()),
            redis_sentinel_master: Some("m".into()),
            ..Overrides::default()
        };
        let err = Config::load(None, &env, &flags)
            .expect_err("two modes")
            .to_string();
        assert!(
            err.contains("environment variable CHANNEL_REDIS_CLUSTER")
                && err.contains("command-line flag --redis-sentinel"),
            "{err}"
        );
    }

    #[test]
    fn tangram_core_redis_url_does_not_clash_with_sentinel() {
        let text = TANGRAM.replace(
            "[channel]",
            "[channel]\nredis_sentinels = [\"s:26379\"]\nredis_sentinel_master = \"m\"",
        );
        let c = load(&text).expect("[core] redis_url is Tangram's, not a choice");
        assert_eq!(c.redis_deployment().mode(), "sentinel");
    }

    #[test]
    fn half_a_sentinel_setting_is_refused() {
        let err = load("[channel]\nredis_sentinels = [\"s:26379\"]\n")
            .expect_err("no master name")
            .to_string();
        assert!(
            err.contains("`redis_sentinels`") && err.contains("needs `redis_sentinel_master`"),
            "{err}"
        );
        let err = load("[channel]\nredis_sentinel_master = \"m\"\n")
            .expect_err("no sentinels")
            .to_string();
        assert!(err.contains("needs `redis_sentinels`"), "{err}");
    }

    #[test]
    fn bad_node_entries_are_refused_without_their_password() {
        for bad in [
            "[\"nohostport\"]",
            "[\"h:0\"]",
            "[\"h:99999\"]",
            "[\"http://h:1\"]",
            "[]",
            "[1]",
            "[\"redis://user:hunter2@\"]",
        ] {
            let err = load(&format!("[channel]\nredis_cluster = {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("`redis_cluster`"), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "{bad}: {err}");
        }
        let c = load(
            "[channel]\nredis_sentinels = [\"redis://user:hunter2@s:26379\"]\n\
             redis_sentinel_master = \"m\"\n",
        )
        .expect("valid");
        let described = c.describe();
        assert!(!described.contains("hunter2"), "{described}");
        assert!(
            described.contains("redis_sentinels = [\"redis://user:<redacted>@s:26379\"]"),
            "{described}"
        );
        assert!(!c.redis_deployment().describe().contains("hunter2"));
        let err =
            load("[channel]\nredis_sentinel_master = \"bad name\"\nredis_sentinels = [\"s:1\"]\n")
                .expect_err("space in name")
                .to_string();
        assert!(err.contains("`redis_sentinel_master`"), "{err}");
    }

    #[test]
    fn secret_matches_only_itself() {
        let s = Secret::new("abcdef");
        assert!(s.matches(b"abcdef"));
        assert!(!s.matches(b"abcdeg"));
        assert!(!s.matches(b"abcde"));
        assert!(!s.matches(b"abcdefg"));
        assert!(!s.matches(b""));
        assert!(!Secret::new("").matches(b"x"));
    }

    #[test]
    fn access_controls_default_to_open() {
        let c = Config::default();
        assert_eq!(c.allowed_origins.len(), 1);
        assert!(c.allowed_origins[0].is_any());
        assert!(c.allow_missing_origin);
        assert_eq!(c.token_mint, TokenMint::Open);
        assert!(c.mint_key.is_none() && c.mint_open_topics.is_empty());
        let tangram = load(TANGRAM).expect("Tangram file");
        assert_eq!(tangram.token_mint, TokenMint::Open);
        assert!(tangram.allowed_origins[0].is_any());
    }

    #[test]
    fn access_controls_load_from_file_and_env() {
        let c = load(
            "[channel]\nallowed_origins = [\"https://app.example.com\", \"*.example.org\"]\n\
             allow_missing_origin = false\ntoken_mint = \"key\"\n\
             mint_key = \"mint-key-0123456789\"\nmint_open_topics = [\"system\", \"public:*\"]\n",
        )
        .expect("valid");
        assert_eq!(c.allowed_origins.len(), 2);
        assert!(c.allowed_origins[1].matches("https://a.example.org"));
        assert!(!c.allow_missing_origin);
        assert_eq!(c.token_mint, TokenMint::Key);
        assert!(c.mint_open_topics[1].matches("public:news"));
        let text = c.describe();
        assert!(
            text.contains("allowed_origins = [\"https://app.example.com\", \"*.example.org\"]"),
            "{text}"
        );
        assert!(text.contains("mint_key = \"<redacted>\""), "{text}");
        assert!(!text.contains("mint-key-0123456789"), "{text}");
        assert!(!format!("{c:?}").contains("mint-key-0123456789"));

        let env: HashMap<&str, &str> = [
            (
                "CHANNEL_ALLOWED_ORIGINS",
                " https://a.example.com , *.b.example.com",
            ),
            ("CHANNEL_TOKEN_MINT", "off"),
        ]
        .into_iter()
        .collect();
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let c = Config::load(None, &lookup, &Overrides::default()).expect("valid");
        assert_eq!(c.allowed_origins.len(), 2);
        assert!(c.allowed_origins[1].matches("https://x.b.example.com"));
        assert_eq!(c.token_mint, TokenMint::Off);
    }

    #[test]
    fn bad_access_values_name_their_key() {
        for (text, key) in [
            (
                "allowed_origins = \"https://a.example.com\"",
                "allowed_origins",
            ),
            ("allowed_origins = [\"https://a.*.com\"]", "allowed_origins"),
            ("allowed_origins = [5]", "allowed_origins"),
            ("token_mint = \"closed\"", "token_mint"),
            ("mint_open_topics = [\"a*b\"]", "mint_open_topics"),
        ] {
            let err = load(&format!("[channel]\n{text}\n"))
                .expect_err(text)
                .to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
        let err = load("[channel]\nmint_key = \"short\"\n")
            .expect_err("short key")
            .to_string();
        assert!(
            err.contains("`mint_key`") && !err.contains("short\""),
            "{err}"
        );
    }

    #[test]
    fn key_mode_without_mint_key_is_refused() {
        let err = load("[channel]\ntoken_mint = \"key\"\n")
            .expect_err("no mint_key")
            .to_string();
        assert!(err.contains("mint_key"), "{err}");
    }

    #[test]
    fn open_access_is_warned_about_only_off_loopback() {
        let open_on = |host: &str| Config {
            host: host.to_string(),
            ..Config::default()
        };
        for host in ["0.0.0.0", "::", "192.0.2.7", "channel.example.com"] {
            let warning = open_access_warning_of(&open_on(host));
            assert!(warning.contains("token_mint"), "{host}: {warning}");
        }
        for host in ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"] {
            assert_eq!(open_on(host).open_access_warning(), None, "{host}");
        }
        let origins_closed = Config {
            allowed_origins: vec![OriginPattern::parse("https://a.example.com").expect("valid")],
            ..open_on("0.0.0.0")
        };
        assert_eq!(origins_closed.open_access_warning(), None);
        let mint_off = Config {
            token_mint: TokenMint::Off,
            ..open_on("0.0.0.0")
        };
        assert_eq!(mint_off.open_access_warning(), None);
    }

    fn open_access_warning_of(c: &Config) -> String {
        c.open_access_warning()
            .unwrap_or_else(|| panic!("{} must be warned about", c.host))
    }

    #[test]
    fn zero_shards_means_one_per_core() {
        let c = Config::default();
        assert!(c.effective_shards() >= 1);
        let c = Config {
            shards: 3,
            ..Config::default()
        };
        assert_eq!(c.effective_shards(), 3);
    }
}
