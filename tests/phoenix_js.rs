//! Conformance with the official `phoenix@1.8.16` JavaScript client, run under Node with the
//! `ws` package as its transport (`tests/js/conformance.test.mjs`).
//!
//! This test starts a private Redis and the server, installs the npm packages of `tests/js`
//! when they are missing (`npm ci`), and runs `node --test` against them. Node's output is
//! printed when it fails.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChannelServer, RedisServer, ServerOptions};

/// The whole Node run, installs excluded, must finish within this.
const NODE_SUITE_TIMEOUT: Duration = Duration::from_secs(120);

/// `npm ci` must finish within this.
const NPM_INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// `(major, minor)` of the installed Node; panics with an install hint if there is none.
fn node_version() -> (u32, u32) {
    let output = match Command::new("node").arg("--version").output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "node not found: install Node.js 18 or later (apt-get install nodejs npm) to run \
             the phoenix.js conformance suite"
        ),
        Err(e) => panic!("cannot run `node --version`: {e}"),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.trim().trim_start_matches('v').split('.');
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    assert!(
        major >= 18,
        "Node.js {} is too old for `node --test`: install 18 or later",
        text.trim()
    );
    (major, minor)
}

/// Runs `command` with its output captured, killing it after `timeout`.
/// Returns (success, combined stdout and stderr).
fn run_with_timeout(mut command: Command, timeout: Duration, what: &str) -> (bool, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr = child.stderr.take().expect("stderr was piped");
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let (success, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.success(), false),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break (false, true);
            }
        }
    };
    let mut output = out_reader.join().unwrap_or_default();
    output.push_str(&err_reader.join().unwrap_or_default());
    if timed_out {
        output.push_str(&format!("\n<{what} killed after {timeout:?}>\n"));
    }
    (success, output)
}

/// Installs `tests/js/node_modules` from the lock file unless both packages are there.
fn ensure_npm_packages() {
    let dir = js_dir();
    let installed = ["phoenix", "ws"].iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    });
    if installed {
        return;
    }
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir);
    let (ok, output) = run_with_timeout(npm, NPM_INSTALL_TIMEOUT, "npm ci");
    assert!(ok, "`npm ci` in {} failed:\n{output}", dir.display());
}

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
    let (ok, output) = run_with_timeout(node, NODE_SUITE_TIMEOUT, "node --test");
    println!("{output}");
    assert!(
        ok,
        "the phoenix.js conformance suite failed against {} (Redis {}):\n{output}",
        server.url(),
        redis.url()
    );
}
