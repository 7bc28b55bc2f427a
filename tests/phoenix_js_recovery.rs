//! The README's client code, verbatim, under the official `phoenix@1.8.16` client in Node
//! (`tests/js/recovery.test.mjs`), recovering across a server restart (issue 14): it joins
//! `room:1` and receives message 1; this test stops the server with SIGTERM (1012), publishes
//! messages 2 and 3 with the function while no server runs, starts a new server on the same
//! port, and phoenix.js reconnects and rejoins by itself with `since`: it must get 2 and 3
//! replayed (`recovered: true`), then 4 published live, each once, in order, with no reload
//! after the first join.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::node::{ensure_npm_packages, js_dir, Captured};
use common::{scratch_dir, ChannelServer, RedisServer, ServerOptions};

/// Each step of the Node side must happen within this.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// The old server must exit within this of SIGTERM (docs/operations.md: 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(6);

fn publish(redis: &RedisServer, n: u32) -> String {
    let mut conn = redis.connection();
    redis::cmd("FCALL")
        .arg("channel_publish")
        .arg(1)
        .arg("room:1")
        .arg("msg")
        .arg(json!({ "n": n }).to_string())
        .query(&mut conn)
        .unwrap_or_else(|e| panic!("FCALL channel_publish failed: {e}"))
}

fn read_state(path: &Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null)
}

/// Waits until the Node side's state satisfies `condition`; `Err` with the last state if it
/// does not within [`STEP_TIMEOUT`] or Node exits first.
fn wait_for_state(
    node: &mut Captured,
    path: &Path,
    condition: impl Fn(&Value) -> bool,
) -> Result<Value, Value> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let state = read_state(path);
        if condition(&state) {
            return Ok(state);
        }
        if Instant::now() >= deadline || node.exited().is_some() {
            return Err(state);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails the test with `what`, the last state and everything Node wrote.
fn fail(node: Captured, what: &str, state: Value) -> ! {
    let (status, output) = node.finish(Duration::from_secs(1));
    panic!(
        "{what} not within {STEP_TIMEOUT:?}; state {state}\n--- node ({status:?}) ---\n{output}"
    );
}

fn received_numbers(state: &Value) -> Vec<u64> {
    state["received"]
        .as_array()
        .map(|r| r.iter().filter_map(|m| m["n"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn the_readme_client_recovers_what_was_published_while_the_server_restarted() {
    ensure_npm_packages();
    let redis = RedisServer::start();
    let opts = ServerOptions::default().shards(2);
    let mut old = ChannelServer::start(&redis, opts.clone());
    let port = old.port();
    let state_file = scratch_dir("phoenix-js-recovery").join("state.json");
    let mut command = Command::new("node");
    command
        .arg("recovery.test.mjs")
        .current_dir(js_dir())
        .env("CHANNEL_URL", old.url())
        .env("STATE_FILE", &state_file)
        .env("NO_COLOR", "1");
    let mut node = Captured::spawn(command, "node");

    let first = match wait_for_state(&mut node, &state_file, |s| s["joins"] == 1) {
        Ok(state) => state,
        Err(state) => fail(node, "the first join", state),
    };
    assert_eq!(
        first["replies"][0],
        json!({"position": null, "recovered": false})
    );
    let p1 = publish(&redis, 1);
    if let Err(s) = wait_for_state(&mut node, &state_file, |s| received_numbers(s) == [1]) {
        fail(node, "message 1", s);
    }

    let status = old.terminate(STOP_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the old server stops on SIGTERM: {status:?}"
    );
    let p2 = publish(&redis, 2);
    let p3 = publish(&redis, 3);
    let _new = ChannelServer::start_on_port(&redis, port, opts);
    let rejoined = match wait_for_state(&mut node, &state_file, |s| {
        s["joins"] == 2 && received_numbers(s).len() == 3
    }) {
        Ok(state) => state,
        Err(state) => fail(node, "the rejoin and the replay", state),
    };
    assert_eq!(
        rejoined["replies"][1],
        json!({"position": p3, "recovered": true})
    );
    let p4 = publish(&redis, 4);
    let last = match wait_for_state(&mut node, &state_file, |s| received_numbers(s).len() >= 4) {
        Ok(state) => state,
        Err(state) => fail(node, "message 4", state),
    };
    let (status, output) = node.finish(Duration::from_secs(10));
    println!("{output}");
    assert!(
        status.is_some_and(|s| s.success()),
        "node failed:\n{output}"
    );
    assert_eq!(
        last["received"],
        json!([
            {"n": 1, "position": p1},
            {"n": 2, "position": p2},
            {"n": 3, "position": p3},
            {"n": 4, "position": p4},
        ]),
        "every message once, in order, with its position"
    );
    assert_eq!(last["reloads"], 1, "only the first join (no since) reloads");
    assert_eq!(last["closes"][0], 1012, "the restart closes with 1012");
}
