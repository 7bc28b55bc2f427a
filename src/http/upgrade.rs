//! Validation of the WebSocket upgrade request (RFC 6455 §4.2.1) and of Phoenix's query and
//! subprotocol conventions, producing the 101 response or the 4xx that refuses it.
//!
//! Token *validity* is not checked here (that needs the [`crate::auth::TokenAuthority`]); this
//! only extracts the token so the caller can verify it and answer [`super::forbidden`].

use base64::Engine as _;

use super::query::query_param;
use super::response::{bad_request, HttpResponse};
use super::RequestHead;

/// The Phoenix serializer chosen by the `vsn` query parameter (the protocol's own type, so the
/// connection passes it straight to the codec).
pub use crate::protocol::Vsn;

/// The subprotocol phoenix.js offers (and we select) when it carries an `authToken`.
pub const PHOENIX_SUBPROTOCOL: &str = "phoenix";
/// phoenix.js puts its `authToken` in a subprotocol named this prefix + base64url(token).
pub const PHOENIX_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// An accepted upgrade: what the connection needs to know, and the bytes to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The serializer the socket speaks.
    pub vsn: Vsn,
    /// The socket-level token: the `userToken` query parameter or the phoenix.js `authToken`
    /// subprotocol (both may be given only if equal). The caller must verify it before writing
    /// `response_101` and refuse with 403 if it is invalid; joins without a token use it.
    pub user_token: Option<String>,
    /// The complete `101 Switching Protocols` response, including `Sec-WebSocket-Accept` and,
    /// when the client offered it, `Sec-WebSocket-Protocol: phoenix`.
    pub response_101: Vec<u8>,
}

impl Upgrade {
    /// Adds a header to the 101 response (before the blank line that ends it).
    pub fn add_header(&mut self, name: &str, value: &str) {
        let end = self.response_101.len().saturating_sub(2);
        self.response_101
            .splice(end..end, format!("{name}: {value}\r\n").into_bytes());
    }
}

fn has_token(head: &RequestHead, header: &str, token: &str) -> bool {
    head.header_tokens(header)
        .any(|t| t.eq_ignore_ascii_case(token))
}

/// Checks that `head` (already routed to [`super::Route::WebSocket`]) is a valid WebSocket
/// upgrade and a valid Phoenix socket request. `Err` is the response to send before closing.
pub fn accept_upgrade(head: &RequestHead) -> Result<Upgrade, HttpResponse> {
    if !has_token(head, "upgrade", "websocket") {
        return Err(bad_request(
            "this endpoint only accepts WebSocket upgrades (missing `Upgrade: websocket`)",
        ));
    }
    if !has_token(head, "connection", "upgrade") {
        return Err(bad_request(
            "WebSocket upgrade without `Connection: Upgrade`",
        ));
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Err(super::error_response(
            426,
            "unsupported WebSocket version; only 13 is supported",
        )
        .with_header("Sec-WebSocket-Version", "13"));
    }
    let key = head
        .header("sec-websocket-key")
        .ok_or_else(|| bad_request("WebSocket upgrade without `Sec-WebSocket-Key`"))?;
    let key_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16);
    if !key_ok {
        return Err(bad_request(
            "`Sec-WebSocket-Key` must be 16 bytes in base64",
        ));
    }

    let vsn = match query_param(&head.query, "vsn").transpose() {
        Ok(value) => Vsn::from_query(value.as_deref()).map_err(|e| bad_request(&e.to_string()))?,
        Err(why) => return Err(bad_request(&format!("bad `vsn` parameter: {why}"))),
    };

    let query_token = match query_param(&head.query, "userToken") {
        None => None,
        Some(Ok(t)) if t.is_empty() => None,
        Some(Ok(t)) => Some(t),
        Some(Err(why)) => return Err(bad_request(&format!("bad `userToken` parameter: {why}"))),
    };

    let mut offered_phoenix = false;
    let mut protocol_token = None;
    for p in head.header_tokens("sec-websocket-protocol") {
        if p == PHOENIX_SUBPROTOCOL {
            offered_phoenix = true;
        } else if let Some(encoded) = p.strip_prefix(PHOENIX_TOKEN_PREFIX) {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    bad_request("the phoenix auth token subprotocol is not valid base64url UTF-8")
                })?;
            protocol_token = Some(token);
        }
    }

    let user_token = match (query_token, protocol_token) {
        (Some(q), Some(p)) if q != p => {
            return Err(bad_request(
                "`userToken` and the phoenix auth token differ; send one of them",
            ))
        }
        (q, p) => q.or(p),
    };

    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if offered_phoenix {
        response.push_str("Sec-WebSocket-Protocol: phoenix\r\n");
    }
    response.push_str("\r\n");

    Ok(Upgrade {
        vsn,
        user_token,
        response_101: response.into_bytes(),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_added_header_ends_up_inside_the_head() {
        let mut upgrade = Upgrade {
            vsn: Vsn::V2,
            user_token: None,
            response_101: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
                .to_vec(),
        };
        upgrade.add_header("x-channel-shard", "1");
        assert_eq!(
            upgrade.response_101,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nx-channel-shard: 1\r\n\r\n"
        );
    }
    use super::*;
    use crate::http::parse_request_head;

    /// The handshake example of RFC 6455 §1.3.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn upgrade_request(target: &str, extra: &str) -> RequestHead {
        let raw = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost:2347\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        match parse_request_head(raw.as_bytes(), 8192) {
            Ok(Some(h)) => h,
            other => panic!("test request must parse: {other:?}"),
        }
    }

    fn accepted(target: &str, extra: &str) -> Upgrade {
        match accept_upgrade(&upgrade_request(target, extra)) {
            Ok(u) => u,
            Err(r) => panic!("refused: {}", String::from_utf8_lossy(&r.to_bytes())),
        }
    }

    fn refused(target: &str, extra: &str) -> HttpResponse {
        match accept_upgrade(&upgrade_request(target, extra)) {
            Ok(u) => panic!("accepted: {u:?}"),
            Err(r) => r,
        }
    }

    #[test]
    fn phoenix_js_upgrade_is_accepted_with_rfc_accept_key() {
        let u = accepted("/socket/websocket?userToken=a.b.c&vsn=2.0.0", "");
        assert_eq!(u.vsn, Vsn::V2);
        assert_eq!(u.user_token.as_deref(), Some("a.b.c"));
        assert_eq!(
            String::from_utf8_lossy(&u.response_101),
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
            )
        );
    }

    #[test]
    fn absent_vsn_is_v2_and_1_0_0_is_v1() {
        assert_eq!(accepted("/websocket", "").vsn, Vsn::V2);
        assert_eq!(accepted("/websocket?vsn=1.0.0", "").vsn, Vsn::V1);
        assert_eq!(accepted("/websocket", "").user_token, None);
    }

    #[test]
    fn vsn_3_is_refused_with_reason() {
        let r = refused("/websocket?vsn=3.0.0", "");
        assert_eq!(r.status, 400);
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("3.0.0") && body.contains("2.0.0"), "{body}");
    }

    #[test]
    fn user_token_is_percent_decoded() {
        let u = accepted("/websocket?userToken=ab%2Ecd%3D&vsn=2.0.0", "");
        assert_eq!(u.user_token.as_deref(), Some("ab.cd="));
        assert_eq!(refused("/websocket?userToken=%zz", "").status, 400);
    }

    #[test]
    fn phoenix_subprotocol_token_is_accepted() {
        // phoenix.js: protocols = ["phoenix", "base64url.bearer.phx." + base64url(authToken)]
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("hdr.claims.sig");
        let u = accepted(
            "/websocket?vsn=2.0.0",
            &format!("Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.{encoded}\r\n"),
        );
        assert_eq!(u.user_token.as_deref(), Some("hdr.claims.sig"));
        let text = String::from_utf8_lossy(&u.response_101);
        assert!(
            text.contains("\r\nSec-WebSocket-Protocol: phoenix\r\n"),
            "{text}"
        );
    }

    #[test]
    fn subprotocol_is_only_answered_when_offered() {
        let u = accepted("/websocket", "Sec-WebSocket-Protocol: chat\r\n");
        assert!(!String::from_utf8_lossy(&u.response_101).contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn bad_subprotocol_token_is_400() {
        let r = refused(
            "/websocket",
            "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.!!!\r\n",
        );
        assert_eq!(r.status, 400);
    }

    #[test]
    fn conflicting_tokens_are_refused() {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("one");
        let r = refused(
            "/websocket?userToken=two",
            &format!("Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.{encoded}\r\n"),
        );
        assert_eq!(r.status, 400);
    }

    #[test]
    fn plain_get_without_upgrade_is_400() {
        let head = match parse_request_head(b"GET /websocket HTTP/1.1\r\nHost: x\r\n\r\n", 8192) {
            Ok(Some(h)) => h,
            other => panic!("{other:?}"),
        };
        assert_eq!(accept_upgrade(&head).map_err(|r| r.status), Err(400));
    }

    #[test]
    fn wrong_websocket_version_is_426() {
        let raw = format!(
            "GET /websocket HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
        );
        let head = match parse_request_head(raw.as_bytes(), 8192) {
            Ok(Some(h)) => h,
            other => panic!("{other:?}"),
        };
        let r = accept_upgrade(&head).expect_err("version 8");
        assert_eq!(r.status, 426);
        assert!(String::from_utf8_lossy(&r.to_bytes()).contains("Sec-WebSocket-Version: 13"));
    }

    #[test]
    fn bad_key_is_400() {
        let raw = "GET /websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let head = match parse_request_head(raw.as_bytes(), 8192) {
            Ok(Some(h)) => h,
            other => panic!("{other:?}"),
        };
        assert_eq!(accept_upgrade(&head).map_err(|r| r.status), Err(400));
    }
}
