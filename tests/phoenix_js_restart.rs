//! A restart seen by the official `phoenix@1.8.16` client under Node
//! (`tests/js/restart.test.mjs`): the client joins, this test stops the server with SIGTERM and
//! starts a new one on the same port with the same JWT secret and Redis, and phoenix.js must
//! reconnect and rejoin by itself (the JS code never calls join again) and receive a message
//! published after the restart.
//!
//! Node is killed when a deadline passes, and its output is printed when the test fails.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::node::{ensure_npm_packages, js_dir, Captured};
use common::{scratch_dir, ChannelServer, RedisServer, ServerOptions};

/// The Node side must have joined within this of being started.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// The old server must have exited within this of SIGTERM (docs/operations.md: 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(6);

/// From the new server answering to Node having received a message through it.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls until `condition` or `deadline`, failing early if Node exits first.
fn wait_for(node: &mut Captured, deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline || node.exited().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails the test with `what` and everything Node wrote.
fn fail(node: Captured, what: String) -> ! {
    let (status, output) = node.finish(Duration::from_secs(1));
    panic!("{what}\n--- node ({status:?}) ---\n{output}");
}

#[test]
fn phoenix_js_rejoins_a_restarted_server_without_user_code() {
    ensure_npm_packages();
    let redis = RedisServer::start();
    let opts = ServerOptions::default().shards(2);
    let mut old = ChannelServer::start(&redis, opts.clone());
    let port = old.port();
    let dir = scratch_dir("phoenix-js-restart");
    let joined_file = dir.join("joined");
    let received_file = dir.join("received");

    let mut command = Command::new("node");
    command
        .arg("restart.test.mjs")
        .current_dir(js_dir())
        .env("CHANNEL_URL", old.url())
        .env("JOINED_FILE", &joined_file)
        .env("RECEIVED_FILE", &received_file)
        .env("NO_COLOR", "1");
    let mut node = Captured::spawn(command, "node");
    let mut topic = String::new();
    let joined = wait_for(
        &mut node,
        Instant::now() + JOIN_TIMEOUT,
        || match std::fs::read_to_string(&joined_file) {
            Ok(text) if !text.is_empty() => {
                topic = text;
                true
            }
            _ => false,
        },
    );
    if !joined {
        fail(
            node,
            format!("phoenix.js did not join within {JOIN_TIMEOUT:?}"),
        );
    }

    let signalled = Instant::now();
    let status = old.terminate(STOP_TIMEOUT);
    if !status.is_some_and(|s| s.success()) {
        let log = old.log();
        fail(
            node,
            format!(
                "the old server did not exit successfully within {STOP_TIMEOUT:?} of SIGTERM \
                 ({status:?}); its log:\n{log}"
            ),
        );
    }
    let stopped_after = signalled.elapsed();
    let new = ChannelServer::start_on_port(&redis, port, opts);
    let restarted = Instant::now();

    // Publish until Node has it: the rejoin's moment is phoenix.js's to choose.
    let channel = format!("to:{topic}:after");
    let mut publishes = 0;
    while !received_file.exists() && node.exited().is_none() && restarted.elapsed() < REJOIN_TIMEOUT
    {
        redis.publish(&channel, r#"{"generation":"restarted"}"#);
        publishes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let rejoined_after = restarted.elapsed();
    let received = received_file.exists();
    // Node's own exit (its HTTP keep-alive, the test report) is not part of the bound.
    let (status, output) = node.finish(Duration::from_secs(10));
    println!("{output}");
    let context = format!(
        "node {status:?}; old server stopped {stopped_after:?} after SIGTERM; {publishes} \
         publishes to {channel}; {rejoined_after:?} after the restart"
    );
    assert!(
        received,
        "phoenix.js did not get a message through the restarted server within \
         {REJOIN_TIMEOUT:?} ({context})\n--- node ---\n{output}\n--- new server ---\n{}",
        new.log()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the phoenix.js side failed ({context})\n--- node ---\n{output}\n--- new server ---\n{}",
        new.log()
    );
    println!("{context}");
}
