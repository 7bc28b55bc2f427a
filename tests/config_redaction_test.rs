//! Secrets in configuration errors. The config module promises never to print a secret, and
//! `describe()` masks the password of `redis_url`; a `redis_url` that is *refused* must not
//! print its password either: the error goes to stderr and into whatever collects the logs.
//! Found while writing the `config_load` fuzz target (docs/reliability.md, "Hostile input").

use channel::config::{Config, Overrides};

fn load_error(toml: &str) -> String {
    let no_env = |_: &str| -> Option<String> { None };
    match Config::load_str(toml, "test.toml", &no_env, &Overrides::default()) {
        Ok(config) => panic!("expected {toml:?} to be refused, got {config:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn valid_redis_url_is_described_without_its_password() {
    // The control case: the accepted URL is masked by describe().
    let no_env = |_: &str| -> Option<String> { None };
    let config = Config::load_str(
        "[channel]\nredis_url = \"redis://user:hunter2@127.0.0.1:6379\"\n",
        "test.toml",
        &no_env,
        &Overrides::default(),
    )
    .expect("a valid redis_url loads");
    assert!(
        !config.describe().contains("hunter2"),
        "{}",
        config.describe()
    );
}

#[test]
fn invalid_redis_url_error_does_not_show_its_password() {
    // A trailing space makes the URL invalid; the error must still mask the password.
    for toml in [
        "[channel]\nredis_url = \"redis://user:hunter2@127.0.0.1:6379 \"\n",
        "[core]\nredis_url = \"redis://:hunter2@127.0.0.1:6379/0 x\"\n",
    ] {
        let error = load_error(toml);
        assert!(
            !error.contains("hunter2"),
            "the error shows the Redis password: {error}"
        );
    }
}

#[test]
fn redis_password_containing_a_slash_is_redacted() {
    // Found by the config_load fuzz check (fuzz/src/lib.rs, `assert_no_password`).
    let toml = "[channel]\nredis_url = \"redis://user:pa/ss@127.0.0.1:6379\"\n";
    let no_env = |_: &str| -> Option<String> { None };
    let config = Config::load_str(toml, "test.toml", &no_env, &Overrides::default())
        .expect("the URL has an accepted scheme");
    assert!(
        !config.describe().contains("pa/ss"),
        "describe() shows the password: {}",
        config.describe()
    );
    let error = load_error("[channel]\nredis_url = \"redis://user:pa/ss@127.0.0.1:6379 \"\n");
    assert!(
        !error.contains("pa/ss"),
        "the error shows the password: {error}"
    );
}
