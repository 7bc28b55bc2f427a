//! The HTTP/1.1 request head, parsed once per connection with httparse.

use super::response::{error_response, HttpResponse};

/// Most headers a request may carry. Browsers send about twenty; more is refused with 431.
pub const MAX_HEADERS: usize = 64;

/// A parsed request head. Names of headers are lower-cased; values are kept in order, repeats
/// included (a header may legally appear several times, e.g. `Sec-WebSocket-Protocol`).
/// Owned strings: this runs once per connection, not per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request method, as sent (`GET`, `POST`, ...).
    pub method: String,
    /// Path without the query string, not decoded (`/socket/websocket`).
    pub path: String,
    /// Raw query string after `?`, not decoded; empty when there is none.
    pub query: String,
    /// `(lower-cased name, value)` in the order received.
    pub headers: Vec<(String, String)>,
    /// Bytes of the buffer taken by the head; the body (if any) starts here.
    pub head_len: usize,
    /// The `Content-Length`, when given.
    pub content_length: Option<usize>,
}

impl RequestHead {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lower case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The comma-separated tokens of every `name` header, trimmed, empty ones dropped
    /// (`Connection: keep-alive, Upgrade` → `keep-alive`, `Upgrade`).
    pub fn header_tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.header_values(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }
}

/// Why a request head was refused. Each maps to a 4xx response via [`HttpError::response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head (or its header count) exceeds the configured limit: 431.
    #[error("request head larger than {limit} bytes or with more than {MAX_HEADERS} headers")]
    HeadTooLarge { limit: usize },
    /// Not parseable as HTTP/1.x: 400.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A body we cannot delimit (chunked, or conflicting or invalid Content-Length): 400.
    #[error("bad request body framing: {0}")]
    BadBodyFraming(String),
}

impl HttpError {
    /// The status code this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge { .. } => 431,
            HttpError::Malformed(_) | HttpError::BadBodyFraming(_) => 400,
        }
    }

    /// The response to send before closing the connection.
    pub fn response(&self) -> HttpResponse {
        error_response(self.status(), &self.to_string())
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: incomplete, read more bytes (unless `buf` already holds `max_head` bytes, which is
/// an error). `Err`: answer with [`HttpError::response`] and close.
pub fn parse_request_head(buf: &[u8], max_head: usize) -> Result<Option<RequestHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_head => {
            return Err(HttpError::HeadTooLarge { limit: max_head })
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(HttpError::HeadTooLarge { limit: max_head })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::HeadTooLarge { limit: max_head })
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HttpError::Malformed("missing method or target".into()));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut parsed = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed(format!("header {} is not valid UTF-8", h.name)))?;
        parsed.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let head = RequestHead {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: parsed,
        head_len,
        content_length: None,
    };
    if head.header("transfer-encoding").is_some() {
        return Err(HttpError::BadBodyFraming(
            "Transfer-Encoding is not supported; send Content-Length".into(),
        ));
    }
    let mut content_length = None;
    for v in head.header_values("content-length") {
        let n: usize = v
            .parse()
            .map_err(|_| HttpError::BadBodyFraming(format!("invalid Content-Length {v:?}")))?;
        if content_length.is_some_and(|m| m != n) {
            return Err(HttpError::BadBodyFraming(
                "conflicting Content-Length headers".into(),
            ));
        }
        content_length = Some(n);
    }
    Ok(Some(RequestHead {
        content_length,
        ..head
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &[u8] = b"GET /socket/websocket?vsn=2.0.0&userToken=abc HTTP/1.1\r\n\
        Host: localhost:2347\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";

    #[test]
    fn complete_head_is_parsed() {
        let head = parse_request_head(GET, 8192)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/socket/websocket");
        assert_eq!(head.query, "vsn=2.0.0&userToken=abc");
        assert_eq!(head.header("host"), Some("localhost:2347"));
        assert_eq!(
            head.header_tokens("connection").collect::<Vec<_>>(),
            ["keep-alive", "Upgrade"]
        );
        assert_eq!(head.head_len, GET.len());
        assert_eq!(head.content_length, None);
    }

    #[test]
    fn partial_head_needs_more_bytes() {
        for cut in [0, 1, 10, GET.len() - 1] {
            assert_eq!(parse_request_head(&GET[..cut], 8192), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn oversized_head_is_431() {
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        let err = parse_request_head(&big, 8192).expect_err("too large");
        assert_eq!(err.status(), 431);
        big.extend_from_slice(b"\r\n\r\n");
        let err = parse_request_head(&big, 8192).expect_err("complete but too large");
        assert_eq!(err.status(), 431);
        assert!(err.response().to_bytes().starts_with(b"HTTP/1.1 431 "));
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            req.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request_head(&req, 65536).map_err(|e| e.status()),
            Err(431)
        );
    }

    #[test]
    fn garbage_is_400() {
        let err = parse_request_head(b"\x16\x03\x01\x00\xa5\x01\r\n\r\n", 8192).expect_err("TLS");
        assert_eq!(err.status(), 400);
        let err = parse_request_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 8192)
            .expect_err("bad header");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn content_length_is_parsed_and_checked() {
        let head = parse_request_head(
            b"POST /token HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"channel\":\"x\"}",
            8192,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(head.content_length, Some(15));
        assert_eq!(
            head.head_len, 44,
            "the body starts right after the blank line"
        );
        for bad in [
            &b"POST /token HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"POST /token HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST /token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                parse_request_head(bad, 8192).map_err(|e| e.status()),
                Err(400)
            );
        }
    }
}
