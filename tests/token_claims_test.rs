//! The time claims of a token through a real join and a real upgrade (docs/protocol.md
//! "Tokens"): `exp`, `nbf` and `iat` of the wrong JSON type, negative, or (for `exp` and `iat`)
//! absent are refused `unauthorized`, never read as "absent" (CVE-2026-25537). Each token here
//! carries a valid signature of the server's secret, so only its claims decide.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::phoenix::*;
use common::{sign_claims, TestSocket, RECV_TIMEOUT, TEST_JWT_SECRET};
use serde_json::{json, Value};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// Valid claims for `room:1`, with `claim` set to `value` (removed when `None`).
fn claims_with(claim: &str, value: Option<Value>) -> Value {
    let mut claims = json!({
        "id": "alice",
        "channel": "room:1",
        "iat": now(),
        "exp": now() + 600,
    });
    let object = claims.as_object_mut().expect("a JSON object");
    match value {
        Some(v) => object.insert(claim.to_string(), v),
        None => object.remove(claim),
    };
    claims
}

/// Sends a join of `room:1` with `token` and returns the reply frame.
fn join_reply(socket: &mut TestSocket, token: &str) -> Value {
    let r = socket.next_ref();
    socket.send_json(&json!([r, r, "room:1", "phx_join", {"token": token}]));
    // Presence frames of an earlier successful join may come first.
    let (reply, _presence) = socket.recv_json_until(RECV_TIMEOUT, |frame| {
        frame[3] == "phx_reply" && frame[1] == r.as_str()
    });
    reply
}

#[test]
fn join_with_mistyped_or_missing_time_claim_is_unauthorized() {
    let s = Setup::new();
    let mut socket = s.v2();
    for claim in ["exp", "nbf", "iat"] {
        // A time that passes as an integer (`exp` ahead, `nbf` behind): only the type decides.
        let time = if claim == "nbf" {
            now() - 600
        } else {
            now() + 600
        };
        let control = sign_claims(TEST_JWT_SECRET, &claims_with(claim, Some(json!(time))));
        let reply = join_reply(&mut socket, &control);
        assert_eq!(reply[4]["status"], "ok", "{claim} = {time}: {reply}");

        let mut bad = vec![
            ("a string", Some(json!(time.to_string()))),
            ("a float", Some(json!(time as f64 + 0.5))),
            ("negative", Some(json!(-time))),
            ("null", Some(json!(null))),
        ];
        if claim != "nbf" {
            bad.push(("absent", None));
        }
        for (what, value) in bad {
            let token = sign_claims(TEST_JWT_SECRET, &claims_with(claim, value));
            let reply = join_reply(&mut socket, &token);
            assert_eq!(
                reply[4],
                json!({"status": "error", "response": {"reason": "unauthorized"}}),
                "{claim} as {what}"
            );
        }
    }
    // The socket survived every refusal: a valid token still joins on it.
    let valid = sign_claims(TEST_JWT_SECRET, &claims_with("iat", Some(json!(now()))));
    assert_eq!(join_reply(&mut socket, &valid)[4]["status"], "ok");
}

#[test]
fn join_with_nbf_in_the_future_is_unauthorized() {
    let s = Setup::new();
    let mut socket = s.v2();
    let token = sign_claims(
        TEST_JWT_SECRET,
        &claims_with("nbf", Some(json!(now() + 3600))),
    );
    let reply = join_reply(&mut socket, &token);
    assert_eq!(reply[4]["response"]["reason"], "unauthorized", "{reply}");
}

#[test]
fn user_token_with_string_exp_refuses_upgrade_with_403() {
    let s = Setup::new();
    let token = sign_claims(
        TEST_JWT_SECRET,
        &claims_with("exp", Some(json!("99999999999"))),
    );
    let url = format!("{}&userToken={token}", s.server.ws_url("2.0.0"));
    let (status, _) = TestSocket::connect_refused(&url);
    assert_eq!(status, 403);
}
