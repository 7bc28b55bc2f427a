//! Conformance with the official `phoenix@1.8.16` JavaScript client, run under Node with the
//! `ws` package as its transport (`tests/js/conformance.test.mjs`).
//!
//! Run twice: against one process on a private Redis, and against two processes on a real
//! Redis Cluster (tests/common/cluster.rs). Each run starts its deployment, installs the npm packages of `tests/js`
//! when they are missing (`npm ci`), and runs `node --test` against them. Node's output is
//! printed when it fails.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::RedisCluster;
use common::node::{ensure_npm_packages, js_dir, node_version, Captured};
use common::{ChannelServer, RedisServer, ServerOptions};

/// The whole Node run, installs excluded, must finish within this.
const NODE_SUITE_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn official_phoenix_js_client_round_trips_through_redis() {
    let redis = RedisServer::start();
    // Two shards: the client may land on either, and must not notice.
    let server = ChannelServer::start(&redis, ServerOptions::default().shards(2));
    run_suite(&[&server], &redis.url());
}

/// The same suite against two processes on a real Redis Cluster (issue 13): sockets alternate
/// between them, so presence and disconnects cross processes and masters.
#[test]
fn official_phoenix_js_client_round_trips_through_a_redis_cluster_pair() {
    let cluster = RedisCluster::shared();
    let args = cluster.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = ChannelServer::start_with_redis_args(&args, ServerOptions::default().shards(2));
    let b = ChannelServer::start_with_redis_args(&args, ServerOptions::default().shards(1));
    // The suite publishes and subscribes on this node; a cluster propagates PUBLISH to every
    // node, and the processes' readers sit on the first seed, so PUBLISH counts them here.
    let first_seed = RedisCluster::node_url(cluster.ports()[0]);
    run_suite(&[&a, &b], &first_seed);
}

fn run_suite(servers: &[&ChannelServer], redis_url: &str) {
    let (major, minor) = node_version();
    ensure_npm_packages();
    let mut node = Command::new("node");
    node.arg("--test").arg("--test-reporter=spec");
    // --test-force-exit (Node >= 20.14) keeps a stray open handle from hanging the run.
    if major > 20 || (major == 20 && minor >= 14) {
        node.arg("--test-force-exit");
    }
    node.arg("conformance.test.mjs")
        .current_dir(js_dir())
        .env("CHANNEL_URL", servers[0].url())
        .env("REDIS_URL", redis_url)
        .env("NO_COLOR", "1");
    if let Some(second) = servers.get(1) {
        node.env("CHANNEL_URL_B", second.url());
    }
    let (status, output) = Captured::spawn(node, "node").finish(NODE_SUITE_TIMEOUT);
    println!("{output}");
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    assert!(
        status.is_some_and(|s| s.success()),
        "the phoenix.js conformance suite failed against {urls:?} (Redis {redis_url}):\n{output}"
    );
}
