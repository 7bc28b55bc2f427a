//! Who may connect and who may mint, against the real server (docs/configuration.md "Access
//! control"): `allowed_origins` and `allow_missing_origin` on the WebSocket upgrade (403,
//! counted on `/metrics`), and `token_mint` = open / key / off with `mint_key` and
//! `mint_open_topics` on `POST /token`.

mod common;

use common::phoenix::*;
use common::{http_request, mint_token_response, TestSocket};
use serde_json::json;
use tungstenite::client::IntoClientRequest;

const MINT_KEY: &str = "mint-key-0123456789abcdef";
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

/// A server that admits `https://app.example.com` and the subdomains of `example.org`.
fn origins_setup(extra: &str) -> Setup {
    Setup::with_channel_keys(&format!(
        "allowed_origins = [\"https://app.example.com\", \"*.example.org\"]\n{extra}"
    ))
}

/// Upgrades with `Origin: origin` (none when `None`); the status of the answer (101 or the
/// refusal's) and its body.
fn upgrade_with_origin(s: &Setup, origin: Option<&str>) -> (u16, String) {
    let mut request = s
        .server
        .ws_url("2.0.0")
        .into_client_request()
        .expect("the URL is valid");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("a valid header value"));
    }
    match TestSocket::try_connect(request) {
        Ok((mut socket, response)) => {
            // The socket works, not just the handshake.
            socket.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#);
            expect_text(&mut socket, &ok_reply(None, "1", "phoenix", "{}"));
            (response.status().as_u16(), String::new())
        }
        Err(tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        ),
        Err(e) => panic!("expected an HTTP answer to the upgrade, got {e}"),
    }
}

/// `channel_origin_refusals_total`, summed over shards.
fn origin_refusals(s: &Setup) -> u64 {
    let text = http_request(s.server.addr(), "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter(|l| l.starts_with("channel_origin_refusals_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn upgrade_from_an_origin_not_allowed_is_403_and_counted() {
    let s = origins_setup("");
    assert_eq!(origin_refusals(&s), 0);
    for origin in [
        "https://evil.example.net",
        "http://app.example.com",
        "https://app.example.com.evil.net",
        "https://example.org",
        "null",
    ] {
        let (status, body) = upgrade_with_origin(&s, Some(origin));
        assert_eq!(status, 403, "{origin}: {body}");
        assert!(
            body.contains("allowed_origins"),
            "the body says why: {body}"
        );
    }
    assert_eq!(origin_refusals(&s), 5);
}

#[test]
fn upgrade_from_a_matching_origin_or_pattern_is_accepted() {
    let s = origins_setup("");
    for origin in [
        "https://app.example.com",
        "https://APP.example.com",
        "https://a.example.org",
        "http://b.c.example.org:8080",
    ] {
        assert_eq!(upgrade_with_origin(&s, Some(origin)).0, 101, "{origin}");
    }
    assert_eq!(origin_refusals(&s), 0);
}

#[test]
fn upgrade_without_origin_is_accepted_unless_configured_otherwise() {
    let s = origins_setup("");
    assert_eq!(upgrade_with_origin(&s, None).0, 101);

    let strict = origins_setup("allow_missing_origin = false");
    let (status, body) = upgrade_with_origin(&strict, None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allow_missing_origin"), "{body}");
    assert_eq!(origin_refusals(&strict), 1);
    assert_eq!(
        upgrade_with_origin(&strict, Some("https://app.example.com")).0,
        101
    );
}

#[test]
fn default_server_accepts_any_origin_and_does_not_warn_on_loopback() {
    let s = Setup::new();
    assert_eq!(
        upgrade_with_origin(&s, Some("https://anything.example")).0,
        101
    );
    assert_eq!(upgrade_with_origin(&s, None).0, 101);
    assert!(
        !s.server.log().contains("token_mint"),
        "no open-access warning for 127.0.0.1:\n{}",
        s.server.log()
    );
}

fn key_mode() -> Setup {
    Setup::with_channel_keys(&format!(
        "token_mint = \"key\"\nmint_key = \"{MINT_KEY}\"\nadmin_key = \"{ADMIN_KEY}\"\n\
         mint_open_topics = [\"system\", \"public:*\"]"
    ))
}

fn post_token(
    s: &Setup,
    authorization: Option<&str>,
    body: &serde_json::Value,
) -> common::HttpResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = authorization {
        headers.push(("Authorization", auth));
    }
    http_request(
        s.server.addr(),
        "POST",
        "/token",
        &headers,
        body.to_string().as_bytes(),
    )
}

#[test]
fn key_mode_requires_the_mint_key() {
    let s = key_mode();
    let body = json!({"channel": "room:1", "id": "alice"});
    for auth in [
        None,
        Some("Bearer wrong-key-0123456789abcdef".to_string()),
        Some(format!("Bearer {ADMIN_KEY}")),
    ] {
        let r = post_token(&s, auth.as_deref(), &body);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("mint_key")));
    }
    let r = post_token(&s, Some(&format!("Bearer {MINT_KEY}")), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    // The token it minted opens its channel.
    let token = r.json()["token"].as_str().expect("a token").to_string();
    let mut socket = s.v2();
    join_ok_exact(&mut socket, "room:1", &token);
}

#[test]
fn key_mode_mints_open_topics_for_anyone_and_admin_keeps_its_key() {
    let s = key_mode();
    for channel in ["system", "public:news"] {
        let r = mint_token_response(&s.server, &json!({"channel": channel}));
        assert_eq!(r.status, 200, "{channel}: {}", r.text());
        assert_eq!(r.json()["channel"], channel);
    }
    assert_eq!(
        mint_token_response(&s.server, &json!({"channel": "public"})).status,
        401
    );
    let admin = json!({"channel": "admin"});
    assert_eq!(
        post_token(&s, Some(&format!("Bearer {MINT_KEY}")), &admin).status,
        403
    );
    assert_eq!(
        post_token(&s, Some(&format!("Bearer {ADMIN_KEY}")), &admin).status,
        200
    );
}

#[test]
fn off_mode_refuses_every_mint_with_a_clear_body() {
    let s = Setup::with_channel_keys(&format!(
        "token_mint = \"off\"\nadmin_key = \"{ADMIN_KEY}\""
    ));
    for (auth, body) in [
        (None, json!({"channel": "system"})),
        (
            Some(format!("Bearer {ADMIN_KEY}")),
            json!({"channel": "admin"}),
        ),
    ] {
        let r = post_token(&s, auth.as_deref(), &body);
        assert_eq!(r.status, 403, "{body}");
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("minting is off"), "{error}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }
    // Tokens from elsewhere (the backend, `channel token`) still open their channel.
    let mut socket = s.v2();
    join_ok_exact(&mut socket, "room:1", &token_for("room:1"));
}

#[test]
fn open_mode_is_the_default_and_mints_for_anyone() {
    let s = Setup::new();
    let r = mint_token_response(&s.server, &json!({"channel": "room:1"}));
    assert_eq!(r.status, 200, "{}", r.text());
}
