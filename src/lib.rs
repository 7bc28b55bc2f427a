//! `channel`: a sharded, thread-per-core Phoenix Channels server that bridges browsers
//! (WebSocket, phoenix.js) to backend services through Redis pub/sub.
//!
//! Layout, one concept per module:
//! - [`config`]   the effective configuration (TOML file, environment, flags).
//! - [`access`]   who may connect (`allowed_origins`) and who may mint (`token_mint`).
//! - [`auth`]     channel-bound JWTs: minting (`POST /token`, `channel token`) and verification.
//! - [`http`]     everything before the WebSocket upgrade: request heads, routes, responses.
//! - [`protocol`] the wire: WebSocket framing and the Phoenix V1/V2/binary serializers.
//! - [`shard`]    one glommio executor per core: listener, connections, local topic table.
//! - [`redis`]    the Redis core: the `PSUBSCRIBE to:*` reader and the pipelined publisher.
//! - [`system`]   the `system` channel: the process's own `datetime` tick.
//! - [`metrics`]  Prometheus metrics for `GET /metrics`.

pub mod access;
pub mod auth;
pub mod config;
pub mod heap;
pub mod http;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod redis;
pub mod shard;
pub mod system;
