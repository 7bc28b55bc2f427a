//! Conformance with the official `phoenix@1.8.16` JavaScript client, run under Node with the
//! `ws` package as its transport (`tests/js/conformance.test.mjs`).
//!
//! This test starts a private Redis and the server, installs the npm packages of `tests/js`
//! when they are missing (`npm ci`), and runs `node --test` against them. Node's output is
//! printed when it fails.

mod common;

use std::process::Command;
use std::time::Duration;

use common::node::{ensure_npm_packages, js_dir, node_version, Captured};
use common::{ChannelServer, RedisServer, ServerOptions};

/// The whole Node run, installs excluded, must finish within this.
const NODE_SUITE_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn official_phoenix_js_client_round_trips_through_redis() {
    let (major, minor) = node_version();
    ensure_npm_packages();

    let redis = RedisServer::start();
    // Two shards: the client may land on either, and must not notice.
    let server = ChannelServer::start(&redis, ServerOptions::default().shards(2));

    let mut node = Command::new("node");
    node.arg("--test").arg("--test-reporter=spec");
    // --test-force-exit (Node >= 20.14) keeps a stray open handle from hanging the run.
    if major > 20 || (major == 20 && minor >= 14) {
        node.arg("--test-force-exit");
    }
    node.arg("conformance.test.mjs")
        .current_dir(js_dir())
        .env("CHANNEL_URL", server.url())
        .env("REDIS_URL", redis.url())
        .env("NO_COLOR", "1");
    let (status, output) = Captured::spawn(node, "node").finish(NODE_SUITE_TIMEOUT);
    println!("{output}");
    assert!(
        status.is_some_and(|s| s.success()),
        "the phoenix.js conformance suite failed against {} (Redis {}):\n{output}",
        server.url(),
        redis.url()
    );
}
