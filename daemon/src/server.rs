//! The server: one port for WebSocket upgrades (any path) and plain HTTP (`GET /health`, which
//! lists the live workers, `GET /ready`, `GET /metrics`, the admin API and page under `/admin`,
//! MCP at `/mcp`),
//! routing, the WebSocket upgrade, and the run loop with its graceful shutdown.
//!
//! Why axum plus tokio-tungstenite: axum routes the HTTP endpoints on the same listener, served
//! by hyper from our own accept loop (see [`serve`]); the WebSocket
//! handshake is done here (a few header checks and the accept key) and the upgraded connection
//! is handed to tokio-tungstenite directly rather than through axum's wrapper, because after an
//! oversized frame the daemon must reach the raw socket to discard the frame's unread rest (see
//! `connection`), which axum's wrapper hides. tungstenite enforces `EXAI_WS_MAX_BYTES` from the
//! frame header, before buffering, and answers pings. Upgraded sockets are not tracked by axum,
//! so [`App`] keeps its own task tracker and each socket closes itself with 1001 when the token
//! fires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use exai_shared::Config;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::app::App;
use crate::error::DaemonError;
use crate::limits::{DaemonLimits, TcpSlot};
use crate::mcp::{self, Mcp};
use crate::{admin, connection, health, origin};

/// Serves `listener` until `shutdown` fires: stops accepting, closes every socket with 1001,
/// waits up to the shutdown grace for them, and returns. Queued jobs stay in Redis.
pub async fn run(
    listener: TcpListener,
    config: Config,
    limits: DaemonLimits,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let app = App::connect(config, limits, shutdown.clone()).await?;
    serve(listener, app).await
}

/// Serves `listener` with an already built [`App`] (see [`run`]).
///
/// The accept loop is ours rather than `axum::serve`'s, for two limits: every TCP connection
/// takes a slot under `EXAI_WS_MAX_CONNECTIONS` from the accept (one more is closed unread), held
/// by the HTTP connection and, after an upgrade, by its WebSocket until the socket is closed;
/// and hyper's header-read timeout (`EXAI_HTTP_HEADER_TIMEOUT_SECS`, which needs a timer that
/// `axum::serve` does not set) closes a connection that sends no complete request head in time,
/// on a fresh connection and between keep-alive requests alike.
pub async fn serve(listener: TcpListener, app: Arc<App>) -> Result<(), DaemonError> {
    let admin = admin::router(app.clone());
    let mcp = Mcp::new(app.clone());
    let router = Router::new()
        .fallback(
            move |state: State<Arc<App>>, peer: ConnectInfo<SocketAddr>, req: Request| {
                handle(state, peer, admin.clone(), mcp.clone(), req)
            },
        )
        .with_state(app.clone());
    let stop = app.shutdown.clone();
    let http = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to be closed.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(slot) = app.connections.try_accept() else {
            app.metrics.connection_refused("tcp_limit");
            tracing::debug!(peer = %peer, "tcp connection refused: connection limit");
            drop(tcp);
            continue;
        };
        // A call's ack, progress and result are small frames written one after the other: with
        // Nagle's algorithm on, each waits for the client's delayed ACK (about 40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let slot = Arc::new(slot);
        let router = router.clone();
        let stop = stop.clone();
        let header_timeout = app.limits.http_header_timeout;
        let tls = app.tls.clone();
        http.spawn(async move {
            let conn = HttpConn {
                peer,
                slot,
                router,
                stop,
                header_timeout,
            };
            match tls {
                None => conn.serve(tcp).await,
                // The handshake is part of the request head: under the same timeout, holding
                // the connection's slot.
                Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => conn.serve(stream).await,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "tls handshake failed");
                    }
                    Err(_) => tracing::debug!(peer = %peer, "tls handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    http.close();
    app.tasks.close();
    let grace = app.limits.shutdown_grace;
    if tokio::time::timeout(grace, async {
        http.wait().await;
        app.tasks.wait().await;
    })
    .await
    .is_err()
    {
        tracing::warn!(
            open = app.tasks.len(),
            "connections still open after the shutdown grace"
        );
    }
    Ok(())
}

/// One accepted connection, served as HTTP/1.1 with upgrades over plain TCP or TLS.
struct HttpConn {
    peer: SocketAddr,
    /// Its slot under `EXAI_WS_MAX_CONNECTIONS`, handed to an upgraded socket.
    slot: Arc<TcpSlot>,
    router: Router,
    stop: CancellationToken,
    header_timeout: Duration,
}

impl HttpConn {
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            slot,
            router,
            stop,
            header_timeout,
        } = self;
        let service = service_fn(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(slot.clone());
            let mut router = router.clone();
            async move { router.call(req).await }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        let served = tokio::select! {
            served = conn.as_mut() => served,
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = served {
            tracing::debug!(peer = %peer, error = %e, "http connection ended");
        }
    }
}

/// How long the accept loop waits after a failed accept (no descriptor left, most likely).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Every request: the `Host` and `Origin` checks (see `origin`), then a WebSocket upgrade on
/// any path, else MCP at `/mcp`, else the admin API and page under `/admin`, else the HTTP
/// endpoints.
async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut admin: Router,
    mcp: Mcp,
    req: Request,
) -> Response {
    if let Err(refusal) = origin::check_host(req.headers(), app.config.ws_is_loopback()) {
        tracing::info!(peer = %peer, "request refused: Host is not a loopback name");
        return refusal.into_response();
    }
    let allowed = &app.config.ws.allowed_origins;
    if wants_websocket(req.method(), req.headers()) {
        if let Err(refusal) = origin::check_origin(req.headers(), allowed, false) {
            tracing::info!(peer = %peer, "websocket upgrade refused: origin not allowed");
            return refusal.into_response();
        }
        return upgrade(app, req, peer);
    }
    if req.uri().path() == mcp::PATH {
        return mcp.handle(req).await;
    }
    if admin::is_api_path(req.uri().path())
        && let Err(refusal) = origin::check_origin(req.headers(), allowed, true)
    {
        tracing::info!(peer = %peer, "admin API request refused: origin not allowed");
        return refusal.into_response();
    }
    if admin::is_admin_path(req.uri().path()) {
        return match admin.call(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    match req.uri().path() {
        "/health" => health::http_health(&app).await,
        "/ready" => health::http_ready(&app).await,
        "/metrics" => {
            app.metrics.refresh(&app.queues, &app.semaphores).await;
            (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                app.metrics.render(),
            )
                .into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Whether a header list names a token (comma-separated, case-insensitive).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A WebSocket opening handshake (RFC 6455 §4.2.1): `GET` with `Upgrade: websocket` and
/// `Connection: Upgrade`.
fn wants_websocket(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && header_has(headers, header::UPGRADE, "websocket")
        && header_has(headers, header::CONNECTION, "upgrade")
}

/// Answers the handshake with 101 and serves the upgraded connection in a tracked task.
fn upgrade(app: Arc<App>, mut req: Request, peer: SocketAddr) -> Response {
    let headers = req.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
        )
            .into_response();
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The connection's TCP slot stays taken until the upgraded socket is closed.
    let slot = req.extensions().get::<Arc<TcpSlot>>().cloned();
    let tasks = app.tasks.clone();
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => connection::serve_upgraded(app, TokioIo::new(upgraded), peer).await,
            Err(e) => tracing::debug!(peer = %peer, error = %e, "websocket upgrade failed"),
        }
        drop(slot);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
