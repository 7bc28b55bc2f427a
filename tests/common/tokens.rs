//! Channel tokens for tests: minted by the server under test over `POST /token`, or signed
//! locally (for expired, foreign-secret or otherwise hand-made tokens).

use serde_json::json;

use super::channel_server::ChannelServer;
use super::http::{http_request, HttpResponse};

/// Mints a token for `channel` with identity `id` through the server's `POST /token`.
/// Panics with the response if the server does not answer 200 with a `token`.
pub fn mint_token(server: &ChannelServer, channel: &str, id: &str) -> String {
    let response = mint_token_response(server, &json!({ "channel": channel, "id": id }));
    if response.status != 200 {
        panic!(
            "POST /token for channel {channel:?} answered {}: {}",
            response.status,
            response.text()
        );
    }
    let body = response.json();
    match body.get("token").and_then(|t| t.as_str()) {
        Some(token) => token.to_string(),
        None => panic!("POST /token answered 200 without a string `token`: {body}"),
    }
}

/// `POST /token` with `body` as JSON; returns the response whatever its status.
pub fn mint_token_response(server: &ChannelServer, body: &serde_json::Value) -> HttpResponse {
    http_request(
        server.addr(),
        "POST",
        "/token",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Signs an HS256 token locally with claims `id`, `channel`, `iat` = now and
/// `exp` = now + `expires_in_secs` (negative for an already expired token).
pub fn sign_token(secret: &str, channel: &str, id: &str, expires_in_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64;
    let claims = json!({
        "id": id,
        "channel": channel,
        "iat": now,
        "exp": now + expires_in_secs,
    });
    sign_claims(secret, &claims)
}

/// Signs any JSON value as the claims of an HS256 token: a valid signature over whatever the
/// test wants to present (mistyped or missing claims).
pub fn sign_claims(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of JSON claims cannot fail")
}
