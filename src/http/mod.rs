//! Everything that happens on a connection before the WebSocket upgrade, as pure functions:
//! parsing the request head, choosing the route, validating the upgrade, and building every
//! HTTP response the server sends.
//!
//! What this module owns: the shape of HTTP on the wire (status lines, headers, CORS, the 101
//! response with `Sec-WebSocket-Accept`). What it must never do: I/O, blocking, or panicking on
//! input: the async socket glue (in `shard`) feeds it bytes and writes what it returns.

mod query;
mod request;
mod response;
mod route;
mod upgrade;

pub use query::{percent_decode, query_param};
pub use request::{parse_request_head, HttpError, RequestHead, MAX_HEADERS};
pub use response::{
    add_cors, bad_request, error_response, forbidden, healthz_response, method_not_allowed,
    metrics_response, not_found, payload_too_large, preflight_response, HttpResponse,
};
pub use route::{allowed_methods, route, Route};
pub use upgrade::{accept_upgrade, Upgrade, Vsn, PHOENIX_SUBPROTOCOL, PHOENIX_TOKEN_PREFIX};
