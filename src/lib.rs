//! `channel`: a sharded, thread-per-core Phoenix Channels server that bridges browsers
//! (WebSocket, phoenix.js) to backend services through Redis pub/sub.
//!
//! The layers point down only (docs/architecture.md; `tests/layers_test.rs` fails on a cycle):
//! - [`server`]   wiring: starts the shards, the broker, the tickers; signals and shutdown.
//! - [`shard`]    one glommio executor per core: listener, connections, sessions, topic table,
//!   fan-out.
//! - `admin`, `system`: the predefined channels' features (pure functions and their tickers).
//! - [`console`]  the operator console's page and login (a client of `admin`; no power of its own).
//! - [`broker`]   everything that talks to Redis: subscriber, publisher, presence store, admin
//!   queries, reconnects.
//! - [`presence`] the presence model and this process's copy of it (no Redis, no shard).
//! - `inbox`      the mailbox between the Redis core and the shards, shard masks.
//! - leaves: [`history`] (positions and history pages), [`protocol`] (the wire), [`http`] (before the upgrade), [`auth`] (tokens),
//!   [`access`] (who may connect and who may mint),
//!   [`config`], `metrics`, [`heap`] (the allocator), `bounded_queue` (the queues between
//!   threads whose memory grows with use).
//!
//! Only what the binary, the integration tests, the benches and the fuzz targets use is `pub`;
//! everything else is `pub(crate)`, so that rustc reports code nothing uses.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod access;
pub(crate) mod admin;
pub mod auth;
pub(crate) mod bounded_queue;
pub mod broker;
pub mod config;
pub mod console;
pub mod heap;
pub mod history;
pub mod http;
pub(crate) mod inbox;
pub(crate) mod metrics;
pub mod presence;
pub mod protocol;
pub mod server;
pub mod shard;
pub(crate) mod system;
