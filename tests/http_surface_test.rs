//! docs/protocol.md "HTTP" (routes, upgrade query and subprotocol) and "Tokens" (`POST /token`) over raw HTTP:
//! exact statuses, JSON error bodies, CORS, and the tokens the endpoint mints.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::phoenix::*;
use common::{
    http_raw, http_request, mint_token_response, sign_token, ChannelServer, RedisServer,
    ServerOptions, TestSocket, TEST_JWT_SECRET,
};
use serde_json::{json, Value};

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// The claims of a JWT, checked to be HS256 with the test secret.
fn verified_claims(token: &str) -> Value {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = true;
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(TEST_JWT_SECRET.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("minted token is not an HS256 JWT of the test secret: {e}"))
    .claims
}

fn assert_json_error(response: &common::HttpResponse, status: u16) {
    assert_eq!(response.status, status, "body: {}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "error answers are JSON: {:?}",
        response.headers
    );
    let body = response.json();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error body says why: {body}"
    );
}

// --- routes ------------------------------------------------------------------------------

#[test]
fn unknown_route_is_404() {
    let s = Setup::new();
    for path in ["/", "/nope", "/websocket/", "/socket", "/tokens"] {
        let response = http_request(s.server.addr(), "GET", path, &[], b"");
        assert_json_error(&response, 404);
    }
}

#[test]
fn wrong_method_on_known_route_is_405() {
    let s = Setup::new();
    let response = http_request(s.server.addr(), "GET", "/token", &[], b"");
    assert_json_error(&response, 405);
    assert_eq!(response.header("allow"), Some("POST, OPTIONS"));
}

#[test]
fn healthz_is_200_when_redis_is_up() {
    let s = Setup::new();
    let response = http_request(s.server.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        json!({"status": "ok", "redis": "connected"})
    );
}

#[test]
fn healthz_is_503_when_redis_is_down() {
    // Nothing listens on this port: the server starts anyway and says so, part by part.
    let dead = format!("redis://127.0.0.1:{}", common::free_port());
    let mut server = ChannelServer::start_with_redis_url(&dead, ServerOptions::default());
    let response = http_request(server.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(response.status, 503);
    let body = response.json();
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["redis"], "disconnected", "{body}");
    // Each part that is down says so (the sharded subscriber too once it has a topic to
    // subscribe, which the permanent admin-stats topic gives it).
    let degraded = body["degraded"]
        .as_array()
        .expect("a list of degraded parts");
    for part in [
        "subscriber: disconnected (PSUBSCRIBE to:*)",
        "publisher: disconnected (pushes are refused)",
    ] {
        assert!(degraded.contains(&json!(part)), "{part} missing: {body}");
    }
    server.kill();
}

#[test]
fn malformed_request_gets_400_and_the_server_survives() {
    let s = Setup::new();
    for raw in [
        &b"HELLO\r\n\r\n"[..],
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ] {
        let answer = http_raw(s.server.addr(), raw);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 4"),
            "{:?} answered {text:?}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(s.healthz(), 200);
}

#[test]
fn oversized_http_head_is_refused_with_431() {
    let s = Setup::new();
    let big = "x".repeat(9000);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
    let answer = http_raw(s.server.addr(), request.as_bytes());
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "answered {text:?}");
    assert_eq!(s.healthz(), 200);
}

// --- upgrade -----------------------------------------------------------------------------

#[test]
fn socket_websocket_alias_upgrades() {
    let s = Setup::new();
    let url = format!(
        "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0",
        s.server.port()
    );
    let mut socket = TestSocket::connect(&url);
    join_ok_exact(&mut socket, "room:1", &s.token("room:1"));
}

#[test]
fn upgrade_without_vsn_speaks_v2() {
    let s = Setup::new();
    let url = format!("ws://127.0.0.1:{}/websocket", s.server.port());
    let mut socket = TestSocket::connect(&url);
    socket.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#);
    expect_text(&mut socket, &ok_reply(None, "1", "phoenix", "{}"));
}

#[test]
fn upgrade_with_phoenix_js_query_is_accepted() {
    // phoenix.js: `<endpoint>/websocket?<params>&vsn=2.0.0`.
    let s = Setup::new();
    let url = format!(
        "ws://127.0.0.1:{}/socket/websocket?foo=bar&vsn=2.0.0",
        s.server.port()
    );
    let mut socket = TestSocket::connect(&url);
    socket.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#);
    expect_text(&mut socket, &ok_reply(None, "1", "phoenix", "{}"));
}

#[test]
fn vsn_3_is_refused_before_upgrade() {
    let s = Setup::new();
    let (status, body) = TestSocket::connect_refused(&s.server.ws_url("3.0.0"));
    assert_eq!(status, 400, "body: {body}");
    assert!(body.contains("vsn"), "the body says why: {body}");
    assert!(body.contains("3.0.0"), "the body names the value: {body}");
}

#[test]
fn non_upgrade_get_of_websocket_is_400() {
    let s = Setup::new();
    let response = http_request(s.server.addr(), "GET", "/websocket?vsn=2.0.0", &[], b"");
    assert_json_error(&response, 400);
}

#[test]
fn invalid_user_token_refuses_upgrade_with_403() {
    let s = Setup::new();
    let url = format!("{}&userToken=not.a.token", s.server.ws_url("2.0.0"));
    let (status, body) = TestSocket::connect_refused(&url);
    assert_eq!(status, 403, "body: {body}");
}

#[test]
fn expired_user_token_refuses_upgrade_with_403() {
    let s = Setup::new();
    let token = sign_token(TEST_JWT_SECRET, "room:1", "alice", -60);
    let url = format!("{}&userToken={token}", s.server.ws_url("2.0.0"));
    let (status, _) = TestSocket::connect_refused(&url);
    assert_eq!(status, 403);
}

#[test]
fn user_token_of_other_secret_refuses_upgrade_with_403() {
    let s = Setup::new();
    let token = sign_token("another-secret-0123456789abcdefgh", "room:1", "alice", 600);
    let url = format!("{}&userToken={token}", s.server.ws_url("2.0.0"));
    let (status, _) = TestSocket::connect_refused(&url);
    assert_eq!(status, 403);
}

fn phoenix_protocol(token: &str) -> String {
    format!(
        "base64url.bearer.phx.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    )
}

#[test]
fn phoenix_subprotocol_token_is_accepted() {
    let s = Setup::new();
    let token = s.token("room:1");
    let (mut socket, response) = TestSocket::connect_with_protocols(
        &s.server.ws_url("2.0.0"),
        &["phoenix", &phoenix_protocol(&token)],
    );
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("phoenix")
    );
    // It is the socket's token: a join without one uses it.
    socket.send_text(r#"["1","1","room:1","phx_join",{}]"#);
    expect_text(&mut socket, &ok_reply(Some("1"), "1", "room:1", "{}"));
    socket.send_text(r#"["2","2","room:2","phx_join",{}]"#);
    expect_text(
        &mut socket,
        &error_reply(Some("2"), "2", "room:2", "unauthorized"),
    );
}

#[test]
fn invalid_phoenix_subprotocol_token_refuses_upgrade_with_403() {
    let s = Setup::new();
    let protocol = phoenix_protocol("not.a.token");
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(s.server.ws_url("2.0.0"))
            .expect("the URL is valid");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("phoenix, {protocol}")
            .parse()
            .expect("valid header"),
    );
    match TestSocket::try_connect(request) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
        Err(e) => panic!("expected an HTTP 403, got {e}"),
        Ok(_) => panic!("expected an HTTP 403, the upgrade succeeded"),
    }
}

// --- POST /token -------------------------------------------------------------------------

#[test]
fn token_endpoint_mints_a_channel_bound_token() {
    let s = Setup::with_channel_keys("jwt_expiration_secs = 600");
    let before = now();
    let response = mint_token_response(&s.server, &json!({"channel": "room:1", "id": "alice"}));
    assert_eq!(response.status, 200, "body: {}", response.text());
    let body = response.json();
    assert_eq!(body["id"], "alice");
    assert_eq!(body["channel"], "room:1");
    let token = body["token"].as_str().expect("token is a string");
    let header = jsonwebtoken::decode_header(token).expect("a JWT header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
    let claims = verified_claims(token);
    assert_eq!(claims["id"], "alice");
    assert_eq!(claims["channel"], "room:1");
    let iat = claims["iat"].as_i64().expect("iat is a number");
    let exp = claims["exp"].as_i64().expect("exp is a number");
    assert!(iat >= before - 1 && iat <= now() + 1, "iat {iat} is now");
    assert_eq!(exp, iat + 600, "exp = iat + jwt_expiration_secs");
    // It opens its channel and no other.
    let mut socket = s.v2();
    join_ok_exact(&mut socket, "room:1", token);
    socket.send_text(&format!(
        r#"["9","9","room:2","phx_join",{{"token":"{token}"}}]"#
    ));
    expect_text(
        &mut socket,
        &error_reply(Some("9"), "9", "room:2", "unauthorized"),
    );
}

#[test]
fn token_endpoint_makes_a_random_id_when_none_is_given() {
    let s = Setup::new();
    let first = mint_token_response(&s.server, &json!({"channel": "room:1"}));
    let second = mint_token_response(&s.server, &json!({"channel": "room:1"}));
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    let (a, b) = (first.json(), second.json());
    let id = a["id"].as_str().expect("id is a string");
    assert!(!id.is_empty());
    assert_ne!(a["id"], b["id"], "random ids differ");
    assert_eq!(
        verified_claims(a["token"].as_str().expect("token"))["id"],
        id
    );
}

#[test]
fn token_endpoint_rejects_bad_json_with_400() {
    let s = Setup::new();
    for body in [&b"{not json"[..], b"", b"[1,2]", b"\"room:1\""] {
        let response = http_request(
            s.server.addr(),
            "POST",
            "/token",
            &[("Content-Type", "application/json")],
            body,
        );
        assert_json_error(&response, 400);
    }
}

#[test]
fn token_endpoint_rejects_missing_channel_with_400() {
    let s = Setup::new();
    for body in [
        json!({}),
        json!({"id": "alice"}),
        json!({"channel": ""}),
        json!({"channel": null}),
        json!({"channel": 5}),
    ] {
        let response = mint_token_response(&s.server, &body);
        assert_json_error(&response, 400);
    }
}

#[test]
fn token_endpoint_rejects_oversized_body_with_413() {
    let s = Setup::new();
    let body = json!({"channel": "room:1", "id": "x".repeat(5000)}).to_string();
    let response = http_request(
        s.server.addr(),
        "POST",
        "/token",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_json_error(&response, 413);
    assert_eq!(s.healthz(), 200);
}

#[test]
fn token_endpoint_admin_needs_key_403() {
    // Without an admin key configured, never.
    let s = Setup::new();
    let response = mint_token_response(&s.server, &json!({"channel": "admin"}));
    assert_json_error(&response, 403);
    let response = http_request(
        s.server.addr(),
        "POST",
        "/token",
        &[("Authorization", &format!("Bearer {ADMIN_KEY}"))],
        br#"{"channel":"admin"}"#,
    );
    assert_json_error(&response, 403);
}

#[test]
fn token_endpoint_mints_admin_token_only_with_the_admin_key() {
    let s = Setup::with_channel_keys(&format!("admin_key = \"{ADMIN_KEY}\""));
    let post = |auth: Option<&str>| {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        http_request(
            s.server.addr(),
            "POST",
            "/token",
            &headers,
            br#"{"channel":"admin","id":"ops"}"#,
        )
    };
    assert_json_error(&post(None), 403);
    assert_json_error(&post(Some("Bearer wrong-key-0123456789abcdef")), 403);
    assert_json_error(&post(Some(ADMIN_KEY)), 403);
    let ok = post(Some(&format!("Bearer {ADMIN_KEY}")));
    assert_eq!(ok.status, 200, "body: {}", ok.text());
    let claims = verified_claims(ok.json()["token"].as_str().expect("token"));
    assert_eq!(claims["channel"], "admin");
    assert_eq!(claims["id"], "ops");
}

#[test]
fn token_endpoint_cors_preflight() {
    let s = Setup::new();
    let response = http_request(
        s.server.addr(),
        "OPTIONS",
        "/token",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type, authorization",
            ),
        ],
        b"",
    );
    assert!(
        response.status == 204 || response.status == 200,
        "preflight status {}",
        response.status
    );
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    let methods = response
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(methods.contains("POST"), "allow-methods {methods:?}");
    let headers = response
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        headers.contains("content-type") && headers.contains("authorization"),
        "allow-headers {headers:?}"
    );
}

#[test]
fn token_endpoint_answers_carry_cors_headers() {
    let s = Setup::new();
    let ok = mint_token_response(&s.server, &json!({"channel": "room:1"}));
    assert_eq!(ok.header("access-control-allow-origin"), Some("*"));
    let bad = mint_token_response(&s.server, &json!({}));
    assert_eq!(bad.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn server_started_while_redis_is_down_connects_when_it_comes_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let mut server = ChannelServer::start_with_redis_url(&redis.url(), ServerOptions::default());
    let healthz = || http_request(server.addr(), "GET", "/healthz", &[], b"").status;
    assert_eq!(healthz(), 503);
    redis.restart();
    wait_until(Duration::from_secs(15), "/healthz is 200", || {
        healthz() == 200
    });
    let mut socket = TestSocket::connect(&server.ws_url("2.0.0"));
    join_ok_exact(&mut socket, "room:1", &token_for("room:1"));
    wait_until(Duration::from_secs(5), "the server subscribed", || {
        redis.publish("to:room:1:ev", "1") > 0
    });
    expect_text(&mut socket, &broadcast_text("room:1", "ev", "1"));
    server.kill();
}

#[test]
fn user_token_and_subprotocol_token_that_differ_refuse_upgrade_with_400() {
    let s = Setup::new();
    let url = format!(
        "{}&userToken={}",
        s.server.ws_url("2.0.0"),
        s.token("room:1")
    );
    let protocol = phoenix_protocol(&s.token("room:2"));
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(url).expect("the URL is valid");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("phoenix, {protocol}")
            .parse()
            .expect("valid header"),
    );
    match TestSocket::try_connect(request) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 400),
        Err(e) => panic!("expected an HTTP 400, got {e}"),
        Ok(_) => panic!("expected an HTTP 400, the upgrade succeeded"),
    }
}
