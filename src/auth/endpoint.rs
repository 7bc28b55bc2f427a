//! `POST /token` as a pure function from the request to the response (docs/protocol.md,
//! "Tokens"), with who may mint what (`token_mint`, `mint_key`, `mint_open_topics`, `admin_key`).
//! The caller reads at most `max_token_body_bytes` of body (413 beyond, see
//! [`crate::http::payload_too_large`]) and writes what this returns.

use serde::{Deserialize, Serialize};

use super::{random_id, TokenAuthority, ADMIN_CHANNEL};
use crate::access::TokenMint;
use crate::config::Config;
use crate::http::{error_response, HttpResponse};

/// Longest topic a token may name: binary frames carry the topic with a one-byte length.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Longest client id accepted from a caller (ids are presence keys, sent to every member).
pub const MAX_ID_LEN: usize = 128;

/// The body of `POST /token`. Other fields are ignored.
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    /// The topic the token will open.
    pub channel: Option<String>,
    /// The client's identity; a random one of `id_length` characters when absent or null.
    pub id: Option<String>,
}

/// The body of a `200` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenResponse {
    pub id: String,
    pub channel: String,
    pub token: String,
}

/// What a `POST /token` body must look like, for 400 answers.
const BODY_SHAPE: &str = r#"body must be a JSON object {"channel": "<topic>", "id"?: "<id>"}"#;

fn error(status: u16, message: &str) -> HttpResponse {
    error_response(status, message).with_cors()
}

/// The key in `Authorization: Bearer <key>`, if the header has that form.
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, key) = authorization?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Answers `POST /token`: mints a token for `{"channel", "id"?}`, by `config`'s rules.
///
/// - 403 for everything when `token_mint = "off"`, saying so;
/// - 400 for a body that is not a JSON object, a missing/empty/non-string channel, or a bad id;
/// - 403 for the `admin` channel unless `authorization` is `Bearer <admin_key>` (compared in
///   constant time), whatever `token_mint` says; with no admin key configured, admin tokens
///   are never minted over HTTP;
/// - with `token_mint = "key"`, 401 for any other channel that matches no `mint_open_topics`
///   unless `authorization` is `Bearer <mint_key>`;
/// - 200 `{"id","channel","token"}` otherwise.
///
/// Every answer carries the CORS headers, so browsers on another origin can read it.
pub fn handle_token_request(
    authority: &TokenAuthority,
    config: &Config,
    authorization: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    if config.token_mint == TokenMint::Off {
        return error(
            403,
            "token minting is off on this server (token_mint = \"off\"): tokens come from the \
             application's backend or `channel token`",
        );
    }
    let request: TokenRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(400, &format!("{BODY_SHAPE}: {e}")),
    };
    let channel = match request.channel {
        Some(c) if !c.is_empty() && c.len() <= MAX_CHANNEL_LEN => c,
        Some(c) if !c.is_empty() => {
            return error(400, &format!("channel longer than {MAX_CHANNEL_LEN} bytes"))
        }
        _ => return error(400, "missing or empty \"channel\""),
    };
    let id = match request.id {
        None => random_id(config.id_length),
        Some(id) if id.is_empty() => return error(400, "\"id\" must not be empty when given"),
        Some(id) if id.len() > MAX_ID_LEN => {
            return error(400, &format!("\"id\" longer than {MAX_ID_LEN} bytes"))
        }
        Some(id) => id,
    };
    let presented = bearer(authorization).unwrap_or("");
    if channel == ADMIN_CHANNEL {
        let Some(admin_key) = &config.admin_key else {
            return error(
                403,
                "admin tokens are not minted over HTTP on this server (no admin_key configured)",
            );
        };
        if !admin_key.matches(presented.as_bytes()) {
            return error(
                403,
                "admin tokens require `Authorization: Bearer <admin_key>`",
            );
        }
    } else if config.token_mint == TokenMint::Key
        && !config.mint_open_topics.iter().any(|p| p.matches(&channel))
    {
        // Config refuses `key` without a mint key; a missing one here matches nothing.
        let allowed = config
            .mint_key
            .as_ref()
            .is_some_and(|key| key.matches(presented.as_bytes()));
        if !allowed {
            return error(
                401,
                "minting a token for this channel requires `Authorization: Bearer <mint_key>` \
                 (token_mint = \"key\")",
            )
            .with_header("WWW-Authenticate", "Bearer");
        }
    }
    match authority.mint(&channel, &id) {
        Ok(token) => {
            let body = TokenResponse { id, channel, token };
            match serde_json::to_value(&body) {
                Ok(v) => HttpResponse::json(200, &v).with_cors(),
                Err(e) => error(500, &format!("cannot encode response: {e}")),
            }
        }
        Err(e) => error(500, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const ADMIN_KEY: &str = "0123456789abcdef-admin";

    fn authority() -> TokenAuthority {
        TokenAuthority::new("test-secret", 900)
    }

    fn call(admin_key: Option<&str>, authorization: Option<&str>, body: &str) -> HttpResponse {
        let config = Config {
            admin_key: admin_key.map(Secret::new),
            ..Config::default()
        };
        handle_token_request(&authority(), &config, authorization, body.as_bytes())
    }

    const MINT_KEY: &str = "0123456789abcdef-mint";

    /// `token_mint = "key"` with [`MINT_KEY`], [`ADMIN_KEY`] and `system`, `public:*` open.
    fn key_mode() -> Config {
        Config {
            token_mint: TokenMint::Key,
            mint_key: Some(Secret::new(MINT_KEY)),
            admin_key: Some(Secret::new(ADMIN_KEY)),
            mint_open_topics: ["system", "public:*"]
                .iter()
                .map(|p| crate::access::TopicPattern::parse(p).expect("valid pattern"))
                .collect(),
            ..Config::default()
        }
    }

    fn call_with(config: &Config, authorization: Option<&str>, body: &str) -> HttpResponse {
        handle_token_request(&authority(), config, authorization, body.as_bytes())
    }

    #[test]
    fn key_mode_needs_the_mint_key_outside_open_topics() {
        let c = key_mode();
        let body = r#"{"channel":"room:1","id":"alice"}"#;
        for auth in [None, Some("Bearer wrong-key-0123456789"), Some(MINT_KEY)] {
            let r = call_with(&c, auth, body);
            assert_eq!(r.status, 401, "{auth:?}");
            assert!(r.has_header("WWW-Authenticate"));
            assert!(String::from_utf8_lossy(&r.body).contains("mint_key"));
        }
        let ok = call_with(&c, Some(&format!("Bearer {MINT_KEY}")), body);
        assert_eq!(ok_body(&ok).channel, "room:1");
        // The admin key is not a mint key: each key does one thing.
        assert_eq!(
            call_with(&c, Some(&format!("Bearer {ADMIN_KEY}")), body).status,
            401
        );
    }

    #[test]
    fn key_mode_mints_open_topics_for_anyone() {
        let c = key_mode();
        for channel in ["system", "public:news", "public:"] {
            let r = call_with(&c, None, &format!(r#"{{"channel":"{channel}"}}"#));
            assert_eq!(ok_body(&r).channel, channel);
        }
        for channel in ["systems", "public", "room:public:x"] {
            let r = call_with(&c, None, &format!(r#"{{"channel":"{channel}"}}"#));
            assert_eq!(r.status, 401, "{channel}");
        }
    }

    #[test]
    fn admin_keeps_its_own_key_in_key_mode() {
        let mut c = key_mode();
        c.mint_open_topics = vec![crate::access::TopicPattern::parse("*").expect("valid")];
        let body = r#"{"channel":"admin"}"#;
        assert_eq!(
            call_with(&c, None, body).status,
            403,
            "`*` never opens admin"
        );
        assert_eq!(
            call_with(&c, Some(&format!("Bearer {MINT_KEY}")), body).status,
            403,
            "the mint key does not open admin"
        );
        let ok = call_with(&c, Some(&format!("Bearer {ADMIN_KEY}")), body);
        assert_eq!(ok_body(&ok).channel, "admin");
    }

    #[test]
    fn off_mode_mints_nothing_and_says_so() {
        let c = Config {
            token_mint: TokenMint::Off,
            ..key_mode()
        };
        for (auth, body) in [
            (None, r#"{"channel":"system"}"#),
            (
                Some(format!("Bearer {MINT_KEY}")),
                r#"{"channel":"room:1"}"#,
            ),
            (
                Some(format!("Bearer {ADMIN_KEY}")),
                r#"{"channel":"admin"}"#,
            ),
            (None, "not even json"),
        ] {
            let r = call_with(&c, auth.as_deref(), body);
            assert_eq!(r.status, 403, "{body}");
            let text = String::from_utf8_lossy(&r.body);
            assert!(text.contains("minting is off"), "{text}");
            assert!(r.has_header("Access-Control-Allow-Origin"));
        }
    }

    fn ok_body(r: &HttpResponse) -> TokenResponse {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        serde_json::from_slice(&r.body).expect("200 body is a TokenResponse")
    }

    #[test]
    fn token_is_minted_for_channel_and_id() {
        let r = call(None, None, r#"{"channel":"weather:wind","id":"alice"}"#);
        let body = ok_body(&r);
        assert_eq!(body.id, "alice");
        assert_eq!(body.channel, "weather:wind");
        let claims = authority()
            .verify_for_channel(&body.token, "weather:wind")
            .expect("minted token verifies");
        assert_eq!(claims.id, "alice");
        assert!(String::from_utf8_lossy(&r.to_bytes()).contains("Access-Control-Allow-Origin: *"));
    }

    #[test]
    fn missing_id_gets_random_id_of_configured_length() {
        for body in [
            r#"{"channel":"system"}"#,
            r#"{"channel":"system","id":null}"#,
        ] {
            let id = ok_body(&call(None, None, body)).id;
            assert_eq!(id.len(), 8);
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn bad_requests_are_400_with_reason() {
        for body in [
            "",
            "not json",
            "[]",
            r#"{"id":"a"}"#,
            r#"{"channel":""}"#,
            r#"{"channel":5}"#,
            r#"{"channel":"c","id":""}"#,
            r#"{"channel":"c","id":7}"#,
        ] {
            let r = call(None, None, body);
            assert_eq!(r.status, 400, "{body}");
            let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        }
        let long = format!(r#"{{"channel":"{}"}}"#, "x".repeat(MAX_CHANNEL_LEN + 1));
        assert_eq!(call(None, None, &long).status, 400);
    }

    #[test]
    fn admin_token_needs_admin_key() {
        let body = r#"{"channel":"admin","id":"ops"}"#;
        assert_eq!(call(None, None, body).status, 403, "no key configured");
        assert_eq!(
            call(None, Some("Bearer anything"), body).status,
            403,
            "no key configured: never over HTTP"
        );
        assert_eq!(call(Some(ADMIN_KEY), None, body).status, 403, "anonymous");
        assert_eq!(
            call(Some(ADMIN_KEY), Some("Bearer wrong"), body).status,
            403,
            "wrong key"
        );
        assert_eq!(
            call(Some(ADMIN_KEY), Some(ADMIN_KEY), body).status,
            403,
            "key without Bearer scheme"
        );
        let ok = call(Some(ADMIN_KEY), Some(&format!("bearer {ADMIN_KEY}")), body);
        assert_eq!(ok_body(&ok).channel, "admin");
        // Other channels need no key even when one is configured.
        assert_eq!(
            call(Some(ADMIN_KEY), None, r#"{"channel":"system"}"#).status,
            200
        );
    }
}
