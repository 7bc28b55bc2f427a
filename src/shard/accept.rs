//! One accepted TCP connection before the WebSocket upgrade: read the HTTP request head
//! (bounded in size and time), route it, answer plain HTTP requests, or upgrade.
//!
//! Parsing and responses are [`crate::http`]'s; this module only does the socket I/O. It never
//! panics on input: every malformed or oversized request gets a 4xx and the socket is closed.

use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tracing::debug;

use super::connection;
use super::context::ShardContext;
use crate::access::check_origin;
use crate::auth::handle_token_request;
use crate::http::{self, HttpResponse, RequestHead, Route};

/// Serves one accepted connection to its end.
pub async fn serve(ctx: Rc<ShardContext>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let limits = &ctx.shared.config.limits;
    let deadline = limits.handshake_timeout();
    let head = futures_lite::future::or(
        async { Some(read_head(&mut stream, limits.http_head_bytes).await) },
        async {
            glommio::timer::sleep(deadline).await;
            None
        },
    )
    .await;
    let (head, buffer) = match head {
        None => {
            debug!(shard = ctx.id, "handshake timed out");
            let _ = respond(
                &mut stream,
                &http::error_response(408, "request head not received in time"),
            )
            .await;
            return;
        }
        Some(Err(response)) => {
            let _ = respond(&mut stream, &response).await;
            return;
        }
        Some(Ok(parsed)) => parsed,
    };
    let leftover = buffer[head.head_len..].to_vec();
    drop(buffer);

    match http::route(&head) {
        Route::WebSocket => upgrade(ctx, stream, &head, leftover).await,
        Route::Token => {
            let response = token(&ctx, &mut stream, &head, leftover).await;
            let _ = respond(&mut stream, &response).await;
        }
        Route::TokenPreflight => {
            let _ = respond(&mut stream, &http::preflight_response(&head)).await;
        }
        Route::Healthz => {
            let degraded = ctx.shared.redis.status.degraded();
            let _ = respond(&mut stream, &http::healthz_response(&degraded)).await;
        }
        Route::Metrics => {
            let exposition = crate::metrics::render(&ctx.shared.metrics, &ctx.shared.scrape());
            let _ = respond(&mut stream, &http::metrics_response(exposition)).await;
        }
        Route::Console => {
            let response =
                crate::console::asset_response(&head.path).unwrap_or_else(http::not_found);
            let _ = respond(&mut stream, &response).await;
        }
        Route::ConsoleLogin => {
            let response = console_login(&ctx, &mut stream, &head, leftover).await;
            let _ = respond(&mut stream, &response).await;
        }
        Route::NotFound => {
            let _ = respond(&mut stream, &http::error_response(404, "not found")).await;
        }
        Route::MethodNotAllowed => {
            let allow = http::allowed_methods(&head.path).unwrap_or("GET");
            let _ = respond(&mut stream, &http::method_not_allowed(allow)).await;
        }
    }
}

/// Reads until a complete request head is buffered. Returns the head and everything read.
async fn read_head(
    stream: &mut TcpStream,
    max_head: usize,
) -> Result<(RequestHead, Vec<u8>), HttpResponse> {
    // Read straight into the heap buffer: a stack array here would live in every
    // connection's task for its whole life.
    let mut buffer = Vec::new();
    loop {
        let filled = buffer.len();
        buffer.resize(filled + 1024, 0);
        let read = stream.read(&mut buffer[filled..]).await;
        let n = match read {
            Ok(n) => n,
            Err(_) => return Err(http::error_response(400, "connection error")),
        };
        buffer.truncate(filled + n);
        if n == 0 {
            return Err(http::error_response(
                400,
                "connection closed before the request head",
            ));
        }
        match http::parse_request_head(&buffer, max_head) {
            Ok(Some(head)) => return Ok((head, buffer)),
            Ok(None) => continue,
            Err(err) => return Err(err.response()),
        }
    }
}

async fn upgrade(
    ctx: Rc<ShardContext>,
    mut stream: TcpStream,
    head: &RequestHead,
    leftover: Vec<u8>,
) {
    let mut upgrade = match http::accept_upgrade(head) {
        Ok(upgrade) => upgrade,
        Err(response) => {
            let _ = respond(&mut stream, &response).await;
            return;
        }
    };
    // Before the token: a page that may not connect learns nothing about tokens.
    let config = &ctx.shared.config;
    let origin = head.header("origin");
    if let Err(refusal) = check_origin(&config.allowed_origins, config.allow_missing_origin, origin)
    {
        ctx.metrics().origin_refusals.inc();
        debug!(shard = ctx.id, %refusal, "upgrade refused");
        let _ = respond(&mut stream, &http::forbidden(&refusal.to_string())).await;
        return;
    }
    let mut user_id = None;
    if let Some(token) = &upgrade.user_token {
        match ctx.shared.authority.verify(token) {
            Ok(claims) => user_id = Some(claims.id),
            Err(err) => {
                debug!(shard = ctx.id, %err, "socket token refused");
                let _ = respond(&mut stream, &http::forbidden("invalid socket token")).await;
                return;
            }
        }
    }
    if ctx.shutting_down.get() {
        let _ = respond(&mut stream, &http::error_response(503, "shutting down")).await;
        return;
    }
    // Operators and tests can tell which shard a socket landed on.
    upgrade.add_header("x-channel-shard", &ctx.id.to_string());
    if stream.write_all(&upgrade.response_101).await.is_err() {
        return;
    }
    let counted = Rc::clone(&ctx);
    counted.metrics().connections_opened.inc();
    connection::run(
        ctx,
        stream,
        upgrade.vsn,
        upgrade.user_token,
        user_id,
        leftover,
    )
    .await;
    counted.metrics().connections_closed.inc();
}

async fn token(
    ctx: &ShardContext,
    stream: &mut TcpStream,
    head: &RequestHead,
    body: Vec<u8>,
) -> HttpResponse {
    let shared = &ctx.shared;
    let body = match read_body(ctx, stream, head, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut response = handle_token_request(
        &shared.authority,
        &shared.config,
        head.header("authorization"),
        &body,
    );
    http::add_cors(&mut response);
    response
}

/// `POST /console/login`, limited by the client's address.
async fn console_login(
    ctx: &ShardContext,
    stream: &mut TcpStream,
    head: &RequestHead,
    body: Vec<u8>,
) -> HttpResponse {
    let body = match read_body(ctx, stream, head, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Ok(peer) = stream.peer_addr() else {
        return http::error_response(400, "connection error");
    };
    let shared = &ctx.shared;
    crate::console::handle_login(
        &shared.authority,
        &shared.config,
        &shared.console_logins,
        peer.ip(),
        &body,
    )
}

/// The request body after `leftover` (at most `max_token_body_bytes`, as `Content-Length`
/// says), or the error to answer.
async fn read_body(
    ctx: &ShardContext,
    stream: &mut TcpStream,
    head: &RequestHead,
    mut body: Vec<u8>,
) -> Result<Vec<u8>, HttpResponse> {
    let max = ctx.shared.config.limits.max_token_body_bytes;
    let length = head.content_length.unwrap_or(body.len());
    if length > max {
        return Err(http::payload_too_large(max));
    }
    while body.len() < length {
        let filled = body.len();
        body.resize(length, 0);
        match stream.read(&mut body[filled..]).await {
            Ok(0) | Err(_) => {
                return Err(http::error_response(
                    400,
                    "body shorter than Content-Length",
                ))
            }
            Ok(n) => body.truncate(filled + n),
        }
    }
    body.truncate(length);
    Ok(body)
}

async fn respond(stream: &mut TcpStream, response: &HttpResponse) -> std::io::Result<()> {
    stream.write_all(&response.to_bytes()).await?;
    stream.close().await
}
