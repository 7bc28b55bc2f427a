//! HTTP responses before the upgrade: one value type and a builder per situation, so every
//! status code, body shape and CORS header is decided here and nowhere else.

use super::RequestHead;

/// Content type of every JSON body we send.
const JSON: &str = "application/json";

/// A complete, small HTTP/1.1 response. Every response closes the connection (`Connection:
/// close`): the only long-lived connection is the WebSocket, which answers with a 101 built by
/// [`super::accept_upgrade`] instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// `Content-Type` of the body; `None` for an empty body.
    pub content_type: Option<&'static str>,
    /// The body.
    pub body: Vec<u8>,
    /// Further headers (CORS, `Allow`, ...), written after the standard ones.
    pub headers: Vec<(&'static str, String)>,
}

/// The reason phrase for the status codes we send.
fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

impl HttpResponse {
    /// A response with a JSON body built from `value`.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        HttpResponse {
            status,
            content_type: Some(JSON),
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Adds the CORS headers of `/token`: any origin may mint tokens (the endpoint is
    /// anonymous by design; admin tokens need a bearer key, not a cookie, so `*` is safe).
    pub fn with_cors(self) -> Self {
        self.with_header("Access-Control-Allow-Origin", "*")
            .with_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            .with_header(
                "Access-Control-Allow-Headers",
                "Content-Type, Authorization",
            )
            .with_header("Access-Control-Max-Age", "86400")
    }

    /// Whether a header named `name` (any case) is already set.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The response as bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        if let Some(ct) = self.content_type {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(b"Connection: close\r\nCache-Control: no-store\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// `{"error": message}` with `status`.
pub fn error_response(status: u16, message: &str) -> HttpResponse {
    HttpResponse::json(status, &serde_json::json!({ "error": message }))
}

/// Adds the `/token` CORS headers to `response` unless it already has them (every answer of
/// [`crate::auth::handle_token_request`] does), so calling it twice is harmless.
pub fn add_cors(response: &mut HttpResponse) {
    if !response.has_header("Access-Control-Allow-Origin") {
        *response = std::mem::replace(response, error_response(500, "")).with_cors();
    }
}

/// 400 with a reason a human can act on.
pub fn bad_request(message: &str) -> HttpResponse {
    error_response(400, message)
}

/// 403: the caller checked a token (or key) and refused it. `reason` is shown to the client,
/// so keep details that help an attacker for the logs.
pub fn forbidden(reason: &str) -> HttpResponse {
    error_response(403, reason)
}

/// 404 for any path we do not serve.
pub fn not_found() -> HttpResponse {
    error_response(404, "not found")
}

/// 405 with the `Allow` header listing the methods the path accepts.
pub fn method_not_allowed(allow: &str) -> HttpResponse {
    error_response(405, "method not allowed").with_header("Allow", allow)
}

/// 413 for a `/token` body above `limit` bytes (CORS headers included, so a browser caller
/// can read the error).
pub fn payload_too_large(limit: usize) -> HttpResponse {
    error_response(413, &format!("request body larger than {limit} bytes")).with_cors()
}

/// 204 answer to the CORS preflight `OPTIONS /token`. The head is taken so that the answer can
/// depend on the request (it does not today: any origin is allowed, see
/// [`HttpResponse::with_cors`]).
pub fn preflight_response(_head: &RequestHead) -> HttpResponse {
    HttpResponse {
        status: 204,
        content_type: None,
        body: Vec::new(),
        headers: Vec::new(),
    }
    .with_cors()
}

/// `/healthz`: 200 when every part of the Redis core works, 503 otherwise (with one sentence
/// per degraded part: a lost connection, a cluster master that cannot be reached), so a load
/// balancer takes a process that cannot deliver every message out of rotation.
pub fn healthz_response(degraded: &[String]) -> HttpResponse {
    if degraded.is_empty() {
        HttpResponse::json(
            200,
            &serde_json::json!({"status": "ok", "redis": "connected"}),
        )
    } else {
        HttpResponse::json(
            503,
            &serde_json::json!({
                "status": "unavailable",
                "redis": "disconnected",
                "degraded": degraded,
            }),
        )
    }
}

/// `/metrics`: a Prometheus text exposition rendered by the caller.
pub fn metrics_response(exposition: String) -> HttpResponse {
    HttpResponse {
        status: 200,
        content_type: Some("text/plain; version=0.0.4; charset=utf-8"),
        body: exposition.into_bytes(),
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &HttpResponse) -> String {
        String::from_utf8_lossy(&r.to_bytes()).into_owned()
    }

    #[test]
    fn response_bytes_are_http11_with_length_and_close() {
        let r = error_response(400, "nope");
        assert_eq!(
            text(&r),
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
             Content-Length: 16\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n\
             {\"error\":\"nope\"}"
        );
    }

    #[test]
    fn healthz_reflects_redis() {
        let up = healthz_response(&[]);
        assert_eq!(up.status, 200);
        assert_eq!(up.body, br#"{"redis":"connected","status":"ok"}"#);
        let down = healthz_response(&["publisher: disconnected".to_owned()]);
        assert_eq!(down.status, 503);
        assert_eq!(
            down.body,
            br#"{"degraded":["publisher: disconnected"],"redis":"disconnected","status":"unavailable"}"#
        );
    }

    #[test]
    fn preflight_is_204_with_cors() {
        let head = match crate::http::parse_request_head(
            b"OPTIONS /token HTTP/1.1\r\nOrigin: http://a.example\r\n\r\n",
            8192,
        ) {
            Ok(Some(h)) => h,
            other => panic!("{other:?}"),
        };
        let mut r = preflight_response(&head);
        add_cors(&mut r);
        let t = text(&r);
        assert_eq!(t.matches("Access-Control-Allow-Origin").count(), 1, "{t}");
        assert!(t.starts_with("HTTP/1.1 204 No Content\r\n"), "{t}");
        assert!(t.contains("Content-Length: 0\r\n"), "{t}");
        assert!(t.contains("Access-Control-Allow-Origin: *\r\n"), "{t}");
        assert!(
            t.contains("Access-Control-Allow-Methods: POST, OPTIONS\r\n"),
            "{t}"
        );
        assert!(
            t.contains("Access-Control-Allow-Headers: Content-Type, Authorization\r\n"),
            "{t}"
        );
        assert!(t.ends_with("\r\n\r\n"), "{t}");
    }

    #[test]
    fn method_not_allowed_lists_allowed_methods() {
        assert!(text(&method_not_allowed("GET")).contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn payload_too_large_is_413_json_with_cors() {
        let r = payload_too_large(4096);
        let mut plain = error_response(400, "x");
        assert!(!plain.has_header("access-control-allow-origin"));
        add_cors(&mut plain);
        assert!(plain.has_header("access-control-allow-origin"));
        assert_eq!(r.status, 413);
        assert!(text(&r).contains("Access-Control-Allow-Origin: *"));
        assert!(String::from_utf8_lossy(&r.body).contains("4096"));
    }
}
