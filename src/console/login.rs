//! `POST /console/login`: the console's only HTTP call. The operator's `admin_key`, or an admin
//! token (`channel token --channel admin`), is exchanged for an admin token that lives
//! [`CONSOLE_TOKEN_SECS`]; the page keeps that token in memory and renews it over the admin
//! channel (`token`), so the key itself is sent once and stored nowhere.
//!
//! What it must never do: mint anything but an `admin` token, mint one without a valid key or
//! admin token, or say more about a wrong key than that it is wrong.

use std::net::IpAddr;
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;

use super::login_limiter::LoginLimiter;
use crate::auth::{random_id, TokenAuthority, ADMIN_CHANNEL};
use crate::config::Config;
use crate::http::{error_response, HttpResponse};

/// Lifetime of a console token: long enough for a page load and a reconnect, short enough that
/// a token copied out of a page is soon useless. The page renews it every few minutes.
pub const CONSOLE_TOKEN_SECS: u64 = 300;

/// The body of `POST /console/login`.
#[derive(Debug, Deserialize)]
struct LoginRequest {
    /// The `admin_key`, or an admin token.
    key: String,
}

/// Answers `POST /console/login` from `peer`:
///
/// - 429 (with `Retry-After`) after [`super::MAX_FAILURES`] wrong keys from that address within
///   [`super::WINDOW`];
/// - 400 for a body that is not `{"key": "<string>"}`;
/// - 200 `{"token", "id", "expires_in"}` when `key` is the `admin_key` (constant-time compare)
///   or a valid token for `admin` (its `id` is kept);
/// - 401 `{"error"}` otherwise, counted as a failure.
pub fn handle_login(
    authority: &TokenAuthority,
    config: &Config,
    limiter: &LoginLimiter,
    peer: IpAddr,
    body: &[u8],
) -> HttpResponse {
    let now = Instant::now();
    if let Err(wait) = limiter.check(peer, now) {
        return error_response(
            429,
            &format!("too many wrong keys from this address: try again in {wait} s"),
        )
        .with_header("Retry-After", wait.to_string());
    }
    let request: LoginRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(_) => return error_response(400, r#"body must be {"key": "<admin_key or token>"}"#),
    };
    let key = request.key.trim();
    let id = if let Ok(claims) = authority.verify_for_channel(key, ADMIN_CHANNEL) {
        Some(claims.id)
    } else if config
        .admin_key
        .as_ref()
        .is_some_and(|admin_key| admin_key.matches(key.as_bytes()))
    {
        Some(format!("console-{}", random_id(8)))
    } else {
        None
    };
    let Some(id) = id else {
        limiter.failed(peer, now);
        let message = if config.admin_key.is_some() {
            "wrong key: paste the server's admin_key or a valid admin token"
        } else {
            "wrong key: this server has no admin_key; paste an admin token made with \
             `channel token --channel admin --config <file>`"
        };
        return error_response(401, message);
    };
    limiter.succeeded(peer);
    match authority.mint_for(ADMIN_CHANNEL, &id, CONSOLE_TOKEN_SECS) {
        Ok(token) => HttpResponse::json(
            200,
            &json!({ "token": token, "id": id, "expires_in": CONSOLE_TOKEN_SECS }),
        ),
        Err(err) => error_response(500, &err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const KEY: &str = "0123456789abcdef-admin";

    fn config(admin_key: Option<&str>) -> Config {
        Config {
            admin_key: admin_key.map(Secret::new),
            ..Config::default()
        }
    }

    fn body(key: &str) -> Vec<u8> {
        json!({ "key": key }).to_string().into_bytes()
    }

    fn answer(response: &HttpResponse) -> serde_json::Value {
        serde_json::from_slice(&response.body).expect("every answer is JSON")
    }

    #[test]
    fn the_admin_key_is_exchanged_for_a_short_admin_token() {
        let authority = TokenAuthority::new("secret", 3600);
        let limiter = LoginLimiter::default();
        let peer: IpAddr = [127, 0, 0, 1].into();
        let response = handle_login(&authority, &config(Some(KEY)), &limiter, peer, &body(KEY));
        assert_eq!(response.status, 200);
        let token = answer(&response)["token"]
            .as_str()
            .expect("a token")
            .to_owned();
        let claims = authority
            .verify_for_channel(&token, ADMIN_CHANNEL)
            .expect("an admin token");
        assert_eq!(claims.exp - claims.iat, CONSOLE_TOKEN_SECS);
    }

    #[test]
    fn an_admin_token_is_exchanged_keeping_its_id_and_other_tokens_are_refused() {
        let authority = TokenAuthority::new("secret", 3600);
        let limiter = LoginLimiter::default();
        let peer: IpAddr = [127, 0, 0, 1].into();
        let admin = authority.mint(ADMIN_CHANNEL, "ops").expect("mint");
        let response = handle_login(&authority, &config(None), &limiter, peer, &body(&admin));
        assert_eq!(response.status, 200);
        assert_eq!(answer(&response)["id"], "ops");
        let other = authority.mint("news", "ops").expect("mint");
        let response = handle_login(&authority, &config(None), &limiter, peer, &body(&other));
        assert_eq!(response.status, 401);
        assert!(answer(&response)["error"]
            .as_str()
            .is_some_and(|e| e.contains("channel token --channel admin")));
    }

    #[test]
    fn wrong_keys_are_refused_then_rate_limited() {
        let authority = TokenAuthority::new("secret", 3600);
        let limiter = LoginLimiter::default();
        let peer: IpAddr = [127, 0, 0, 1].into();
        let config = config(Some(KEY));
        for _ in 0..super::super::MAX_FAILURES {
            let response = handle_login(&authority, &config, &limiter, peer, &body("guess"));
            assert_eq!(response.status, 401);
        }
        let response = handle_login(&authority, &config, &limiter, peer, &body(KEY));
        assert_eq!(response.status, 429, "even the right key waits");
        assert!(response.has_header("Retry-After"));
        assert_eq!(
            handle_login(&authority, &config, &limiter, peer, b"not json").status,
            429
        );
    }
}
