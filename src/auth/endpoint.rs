//! `POST /token` as a pure function from the request to the response (docs/protocol.md, "Tokens").
//! The caller reads at most `max_token_body_bytes` of body (413 beyond, see
//! [`crate::http::payload_too_large`]) and writes what this returns.

use serde::{Deserialize, Serialize};

use super::{random_id, TokenAuthority, ADMIN_CHANNEL};
use crate::config::Secret;
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

/// Answers `POST /token`: mints a token for `{"channel", "id"?}`.
///
/// - 400 for a body that is not a JSON object, a missing/empty/non-string channel, or a bad id;
/// - 403 for the `admin` channel unless `authorization` is `Bearer <admin_key>` (compared in
///   constant time); with no admin key configured, admin tokens are never minted over HTTP;
/// - 200 `{"id","channel","token"}` otherwise.
///
/// Every answer carries the CORS headers, so browsers on another origin can read it.
pub fn handle_token_request(
    authority: &TokenAuthority,
    admin_key: Option<&Secret>,
    authorization: Option<&str>,
    body: &[u8],
    id_length: usize,
) -> HttpResponse {
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
        None => random_id(id_length),
        Some(id) if id.is_empty() => return error(400, "\"id\" must not be empty when given"),
        Some(id) if id.len() > MAX_ID_LEN => {
            return error(400, &format!("\"id\" longer than {MAX_ID_LEN} bytes"))
        }
        Some(id) => id,
    };
    if channel == ADMIN_CHANNEL {
        let Some(admin_key) = admin_key else {
            return error(
                403,
                "admin tokens are not minted over HTTP on this server (no admin_key configured)",
            );
        };
        let presented = bearer(authorization).unwrap_or("");
        if !admin_key.matches(presented.as_bytes()) {
            return error(
                403,
                "admin tokens require `Authorization: Bearer <admin_key>`",
            );
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

    const ADMIN_KEY: &str = "0123456789abcdef-admin";

    fn authority() -> TokenAuthority {
        TokenAuthority::new("test-secret", 900)
    }

    fn call(admin_key: Option<&str>, authorization: Option<&str>, body: &str) -> HttpResponse {
        let key = admin_key.map(Secret::new);
        handle_token_request(
            &authority(),
            key.as_ref(),
            authorization,
            body.as_bytes(),
            8,
        )
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
