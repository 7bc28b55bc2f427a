//! Shared support for the integration tests: a private `redis-server`, the `channel` binary as a
//! child process, a small HTTP client, a synchronous WebSocket client, a Redis subscriber, the
//! Node side of the phoenix.js tests, and the deployments shared by the tests of one binary (a
//! Sentinel deployment, `sentinel.rs`; a six-node Redis Cluster, `cluster.rs`).
//!
//! Every test file includes it with `mod common;`. It owns processes and sockets for the length
//! of one test and must never leave one behind: every child is killed on `Drop` (a shared
//! deployment's, which lives in a `static`, by the kernel when the test process ends:
//! `whole_process.rs`), and every receive has a deadline so that a test fails instead of
//! hanging. It never touches the Redis on port 6379.
#![allow(dead_code, unused_imports)]

pub mod channel_server;
pub mod cluster;
pub mod failover;
pub mod http;
pub mod node;
pub mod phoenix;
pub mod redis_process;
pub mod redis_server;
pub mod relay;
pub mod sentinel;
pub mod socket;
pub mod tokens;
pub mod whole_process;

pub use channel_server::{ChannelServer, ServerOptions, TEST_JWT_SECRET};
pub use http::{http_raw, http_request, try_http_raw, HttpResponse};
pub use redis_server::{RedisMessage, RedisMonitor, RedisServer, RedisSubscriber};
pub use relay::TcpRelay;
pub use socket::{decode_binary_broadcast, encode_binary_push, Frame, TestSocket};
pub use tokens::{mint_token, mint_token_response, sign_claims, sign_token};

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long any single receive waits by default before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test waits to be sure that nothing arrives.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Where `free_port` looks: below Linux's ephemeral range (32768–60999 by default), so that no
/// outgoing connection of this machine (a Node client, a channel process's Redis link, a
/// parallel test's sockets) can take a port between the moment it is chosen and the moment its
/// server binds it. CI failed once on exactly that: a cluster node's bus port, picked by binding
/// port 0, was taken by another test's outgoing connection before redis-server bound it.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port on 127.0.0.1 that was free a moment ago and that no other call in this test process
/// has handed out: ports are walked from an offset chosen by the process id, each probed by
/// binding it. Outside the ephemeral range (`TEST_PORTS`), so only another process choosing
/// the same port on purpose could race for it.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    let span = (TEST_PORTS.end - TEST_PORTS.start) as usize;
    let _ = NEXT.compare_exchange(
        usize::MAX,
        (std::process::id() as usize).wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = TEST_PORTS.start + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port left in {TEST_PORTS:?}")
}

/// A fresh directory under cargo's per-target temporary directory, unique to this process and
/// call, for logs and config files of one child process.
pub fn scratch_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("channel-tests")
        .join(format!("{label}-{}-{n}", std::process::id()));
    // A leftover from an earlier run with the same pid is stale: start clean.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the cargo target tmp dir is writable");
    dir
}

/// The last `max_lines` lines of a log file, for failure messages.
pub fn log_tail(path: &std::path::Path, max_lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}
