//! Which handler a request head goes to. Routing looks at the method and the path only (the
//! query string is the upgrade's business).

use super::RequestHead;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /websocket` or `GET /socket/websocket`: validate with [`super::accept_upgrade`].
    WebSocket,
    /// `POST /token`: read the body (≤ `max_token_body_bytes`), then
    /// [`crate::auth::handle_token_request`].
    Token,
    /// `OPTIONS /token`: answer [`super::preflight_response`].
    TokenPreflight,
    /// `GET /healthz`: answer [`super::healthz_response`].
    Healthz,
    /// `GET /metrics`: answer [`super::metrics_response`].
    Metrics,
    /// `GET /console` or `GET /console/<file>`: the operator console's files
    /// (`console::asset_response`; 404 for a file it does not have).
    Console,
    /// `POST /console/login`: read the body (≤ `max_token_body_bytes`), then
    /// `console::handle_login`.
    ConsoleLogin,
    /// Unknown path: answer [`super::not_found`].
    NotFound,
    /// Known path, wrong method: answer [`super::method_not_allowed`] with
    /// [`allowed_methods`] of the path.
    MethodNotAllowed,
}

/// The methods a known path accepts (the `Allow` header of a 405); `None` for unknown paths.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/websocket" | "/socket/websocket" | "/healthz" | "/metrics" => Some("GET"),
        "/token" => Some("POST, OPTIONS"),
        "/console/login" => Some("POST"),
        "/console" => Some("GET"),
        path if path.starts_with("/console/") => Some("GET"),
        _ => None,
    }
}

/// Routes a request head (docs/protocol.md, "HTTP").
pub fn route(head: &RequestHead) -> Route {
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/websocket" | "/socket/websocket") => Route::WebSocket,
        ("POST", "/token") => Route::Token,
        ("OPTIONS", "/token") => Route::TokenPreflight,
        ("GET", "/healthz") => Route::Healthz,
        ("GET", "/metrics") => Route::Metrics,
        ("POST", "/console/login") => Route::ConsoleLogin,
        ("GET", "/console/login") => Route::MethodNotAllowed,
        ("GET", path) if path == "/console" || path.starts_with("/console/") => Route::Console,
        (_, path) if allowed_methods(path).is_some() => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str) -> RequestHead {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        match crate::http::parse_request_head(raw.as_bytes(), 8192) {
            Ok(Some(h)) => h,
            other => panic!("test request must parse: {other:?}"),
        }
    }

    #[test]
    fn known_routes_are_found() {
        assert_eq!(
            route(&head("GET", "/websocket?vsn=2.0.0")),
            Route::WebSocket
        );
        assert_eq!(route(&head("GET", "/socket/websocket")), Route::WebSocket);
        assert_eq!(route(&head("POST", "/token")), Route::Token);
        assert_eq!(route(&head("OPTIONS", "/token")), Route::TokenPreflight);
        assert_eq!(route(&head("GET", "/healthz")), Route::Healthz);
        assert_eq!(route(&head("GET", "/metrics?x=1")), Route::Metrics);
        assert_eq!(route(&head("GET", "/console")), Route::Console);
        assert_eq!(route(&head("GET", "/console/app.mjs")), Route::Console);
        assert_eq!(route(&head("POST", "/console/login")), Route::ConsoleLogin);
        assert_eq!(
            route(&head("GET", "/console/login")),
            Route::MethodNotAllowed
        );
        assert_eq!(route(&head("POST", "/console")), Route::MethodNotAllowed);
    }

    #[test]
    fn unknown_path_is_404_and_wrong_method_is_405() {
        assert_eq!(route(&head("GET", "/")), Route::NotFound);
        assert_eq!(route(&head("GET", "/websocket/")), Route::NotFound);
        assert_eq!(route(&head("POST", "/nope")), Route::NotFound);
        assert_eq!(route(&head("GET", "/token")), Route::MethodNotAllowed);
        assert_eq!(route(&head("POST", "/websocket")), Route::MethodNotAllowed);
        assert_eq!(route(&head("DELETE", "/healthz")), Route::MethodNotAllowed);
        assert_eq!(allowed_methods("/token"), Some("POST, OPTIONS"));
    }
}
