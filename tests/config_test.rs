//! The binary's outside contract: `channel check-config` and `channel token`, run as a process,
//! with a clean environment so the developer's `CHANNEL_*` variables cannot leak in.

use std::path::PathBuf;
use std::process::{Command, Output};

use channel::auth::TokenAuthority;

const TANGRAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tangram.toml");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/channel.toml");

fn channel(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_channel"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CHANNEL_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the channel binary: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A file in the temp dir, unique to this test process and `name`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "channel-config-test-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0
            .to_str()
            .unwrap_or_else(|| panic!("temp path is UTF-8"))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn check_config_accepts_unmodified_tangram_toml_and_masks_the_secret() {
    let out = channel(&["check-config", "--config", TANGRAM]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("host = \"0.0.0.0\""), "{text}");
    assert!(text.contains("port = 2347"), "{text}");
    assert!(
        text.contains("redis_url = \"redis://localhost:6379\""),
        "{text}"
    );
    assert!(text.contains("jwt_secret = \"<redacted>\""), "{text}");
    assert!(
        !text.contains("a-better-secret-than-this"),
        "secret leaked: {text}"
    );
}

#[test]
fn check_config_accepts_the_documented_example() {
    let out = channel(&["check-config", "--config", EXAMPLE]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
}

#[test]
fn check_config_output_is_itself_a_valid_config() {
    let out = channel(&["check-config", "--config", TANGRAM]);
    let printed = TempFile::new("roundtrip", &stdout(&out));
    let again = channel(&["check-config", "--config", printed.path()]);
    // The redacted secret is a valid (if useless) secret, so the round trip succeeds.
    assert!(again.status.success(), "stderr: {}", stderr(&again));
}

#[test]
fn check_config_names_unknown_key_and_fails() {
    let file = TempFile::new(
        "unknown",
        "[channel]\nport = 4000\nmax_channel_per_socket = 5\n",
    );
    let out = channel(&["check-config", "--config", file.path()]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("`max_channel_per_socket`"), "{err}");
    assert!(
        err.contains("max_channels_per_socket"),
        "hint expected: {err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn check_config_names_bad_value_and_expected_form() {
    let file = TempFile::new("badvalue", "[channel]\nidle_timeout_secs = \"1m\"\n");
    let out = channel(&["check-config", "--config", file.path()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("`idle_timeout_secs`") && err.contains("a number of seconds"),
        "{err}"
    );
}

#[test]
fn check_config_reports_missing_file() {
    let out = channel(&["check-config", "--config", "/nonexistent/channel.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/channel.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn env_beats_file_in_check_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_channel"))
        .args(["check-config", "--config", TANGRAM])
        .env("CHANNEL_PORT", "5555")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the channel binary: {e}"));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("port = 5555"), "{}", stdout(&out));
}

#[test]
fn token_is_printed_and_verifies_with_the_configured_secret() {
    let out = channel(&[
        "token",
        "--channel",
        "weather:wind",
        "--id",
        "alice",
        "--config",
        TANGRAM,
    ]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let token = stdout(&out);
    let token = token.trim_end();
    assert_eq!(token.matches('.').count(), 2, "a JWT: {token}");
    let authority = TokenAuthority::new("a-better-secret-than-this", 60);
    let claims = authority
        .verify_for_channel(token, "weather:wind")
        .unwrap_or_else(|e| panic!("token must verify: {e}"));
    assert_eq!(claims.id, "alice");
    assert_eq!(claims.exp - claims.iat, 315_360_000, "Tangram's expiration");
}

#[test]
fn admin_token_can_be_minted_offline() {
    let out = channel(&["token", "--channel", "admin", "--jwt-secret", "s3cret"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let claims = TokenAuthority::new("s3cret", 60)
        .verify_for_channel(stdout(&out).trim_end(), "admin")
        .unwrap_or_else(|e| panic!("admin token must verify: {e}"));
    assert_eq!(claims.id.len(), 8, "random id of the default id_length");
}

#[test]
fn jwt_secret_flag_beats_file() {
    let out = channel(&[
        "token",
        "--channel",
        "c",
        "--config",
        TANGRAM,
        "--jwt-secret",
        "flag",
    ]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(TokenAuthority::new("flag", 60)
        .verify(stdout(&out).trim_end())
        .is_ok());
}

#[test]
fn token_without_secret_fails_with_advice() {
    let out = channel(&["token", "--channel", "c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("jwt_secret"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn check_config_warns_when_listening_beyond_loopback_with_access_open() {
    // Tangram's example listens on 0.0.0.0 and sets neither control.
    let out = channel(&["check-config", "--config", TANGRAM]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning") && err.contains("allowed_origins") && err.contains("token_mint"),
        "{err}"
    );
    assert_eq!(
        err.matches("token_mint = \"open\"").count(),
        1,
        "one warning: {err}"
    );
    let text = stdout(&out);
    assert!(text.contains("allowed_origins = [\"*\"]"), "{text}");
    assert!(text.contains("token_mint = \"open\""), "{text}");

    // Either control closed: no warning.
    for closed in [
        "allowed_origins = [\"https://app.example.com\"]",
        "token_mint = \"off\"",
    ] {
        let file = TempFile::new(
            "closed",
            &format!("[channel]\nhost = \"0.0.0.0\"\njwt_secret = \"s\"\n{closed}\n"),
        );
        let out = channel(&["check-config", "--config", file.path()]);
        assert!(out.status.success(), "stderr: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("token_mint"),
            "{closed}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn check_config_masks_the_mint_key() {
    let file = TempFile::new(
        "mintkey",
        "[channel]\njwt_secret = \"s\"\ntoken_mint = \"key\"\nmint_key = \"mint-key-0123456789abcdef\"\n",
    );
    let out = channel(&["check-config", "--config", file.path()]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("mint_key = \"<redacted>\""), "{text}");
    assert!(!text.contains("mint-key-0123456789abcdef"), "{text}");
    assert!(!stderr(&out).contains("mint-key-0123456789abcdef"));
}

#[test]
fn check_config_prints_the_redis_deployment_mode() {
    let out = channel(&["check-config", "--config", TANGRAM]);
    assert!(
        stdout(&out).contains("# redis deployment: single (redis://localhost:6379)"),
        "{}",
        stdout(&out)
    );
    let file = TempFile::new(
        "sentinel",
        "[channel]\nredis_sentinels = [\"127.0.0.1:26379\", \"redis://u:hunter2@127.0.0.1:26380\"]\n\
         redis_sentinel_master = \"mymaster\"\n",
    );
    let out = channel(&["check-config", "--config", file.path()]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains("# redis deployment: sentinel (master \"mymaster\" via redis://127.0.0.1:26379, redis://u:<redacted>@127.0.0.1:26380)"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
    let file = TempFile::new(
        "cluster",
        "[channel]\nredis_cluster = [\"127.0.0.1:7000\"]\n",
    );
    let out = channel(&["check-config", "--config", file.path()]);
    assert!(
        stdout(&out).contains("# redis deployment: cluster (seeds redis://127.0.0.1:7000)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_config_refuses_two_redis_deployments_naming_the_keys() {
    let file = TempFile::new(
        "clash",
        "[channel]\nredis_url = \"redis://127.0.0.1:6380\"\nredis_cluster = [\"127.0.0.1:7000\"]\n",
    );
    let out = channel(&["check-config", "--config", file.path()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("`redis_url`")
            && err.contains("`redis_cluster`")
            && err.contains("exactly one"),
        "{err}"
    );
}
