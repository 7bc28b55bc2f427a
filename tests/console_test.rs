//! The operator console (`GET /console`, issue 15) in a real headless Chromium, driven by
//! `playwright-core` from Node (`tests/js/console.test.mjs`), against two server processes
//! sharing one private Redis: login refused and accepted, a phoenix.js client's join in the
//! topics panel and on the topic's page within 2 s, the live tail, the publish form, the
//! disconnect, hostile names shown as text, both processes in the overview. The run takes a
//! screenshot of each panel, into `<target>/console-screenshots/`, or into the directory
//! `CONSOLE_SCREENSHOTS` names: `CONSOLE_SCREENSHOTS=docs/console cargo test --test
//! console_test` retakes the ones the README shows (a plain test run leaves the tree clean).
//!
//! Needs Debian's `chromium` (`apt-get install chromium`; `CHROMIUM` names another binary) and
//! the npm packages of tests/js (installed from the lock file when missing). One browser is
//! shared by every test of the Node file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::node::{ensure_npm_packages, js_dir, node_version, Captured};
use common::{ChannelServer, RedisServer, ServerOptions};

/// The whole Node run, installs excluded, must finish within this.
const SUITE_TIMEOUT: Duration = Duration::from_secs(180);
/// The admin key both processes are configured with.
const ADMIN_KEY: &str = "console-test-admin-key-0123456789";

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium (apt-get install chromium) or set CHROMIUM",
        path.display()
    );
    path
}

#[test]
fn the_console_shows_and_controls_the_deployment_in_a_real_browser() {
    let (major, minor) = node_version();
    ensure_npm_packages();
    let browser = chromium();

    let redis = RedisServer::start();
    let options = || {
        ServerOptions::default().shards(2).config(&format!(
            "[channel]\nadmin_key = \"{ADMIN_KEY}\"\nadmin_stats_interval_secs = 1\n"
        ))
    };
    let first = ChannelServer::start(&redis, options());
    let second = ChannelServer::start(&redis, options());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let screenshots = match std::env::var_os("CONSOLE_SCREENSHOTS") {
        Some(dir) => root.join(dir),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
    };

    let mut node = Command::new("node");
    node.arg("--test").arg("--test-reporter=spec");
    if major > 20 || (major == 20 && minor >= 14) {
        node.arg("--test-force-exit");
    }
    node.arg("console.test.mjs")
        .current_dir(js_dir())
        .env("CONSOLE_URL", first.url())
        .env("SECOND_URL", second.url())
        .env("REDIS_URL", redis.url())
        .env("ADMIN_KEY", ADMIN_KEY)
        .env("JWT_SECRET", common::TEST_JWT_SECRET)
        .env("CHROMIUM", &browser)
        .env("SCREENSHOT_DIR", &screenshots)
        .env("NO_COLOR", "1");
    let (status, output) = Captured::spawn(node, "node").finish(SUITE_TIMEOUT);
    println!("{output}");
    assert!(
        status.is_some_and(|s| s.success()),
        "the console suite failed against {} and {} (Redis {}):\n{output}\n--- first server's log:\n{}",
        first.url(),
        second.url(),
        redis.url(),
        first.log()
    );
}
