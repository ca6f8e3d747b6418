//! MCP on the daemon's port: `/mcp`, Streamable HTTP, served by the official Rust SDK (rmcp)
//! and answered by the same calls layer as the WebSocket. docs/mcp.md is the user's view.
//!
//! - [`Mcp`] and [`Mcp::handle`]: the endpoint; every request passes the daemon's `Host` rule
//!   (in `server`), then here the `Origin` allow-list (`EXAI_WS_ALLOWED_ORIGINS`, 403) and the
//!   bearer token (`EXAI_WS_TOKEN`, 401 with `WWW-Authenticate: Bearer`), then rmcp.
//! - `handler`: the MCP server — `tools/list`, `tools/call`, `notifications/cancelled`.
//! - `call`: one `tools/call` through the calls layer, and the frames it turns into MCP.
//! - `sessions`: the session manager (in memory, bounded, resumable from the job).
//! - `store`: the sessions' records in Redis, so any daemon serves any session.
//! - [`bridge`]: the stdio MCP server of `exai-mcp`, which forwards to a daemon's `/mcp`.
//!
//! Both eras are served on the one path: a client that sends `initialize` gets a session
//! (`Mcp-Session-Id`, required on its later requests, 2025-11-25 and what it negotiates down
//! to); a request that carries the 2026-07-28 per-request metadata is served statelessly.

pub mod bridge;
mod call;
mod handler;
mod sessions;
mod store;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use exai_shared::keys::Keys;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;

use crate::app::App;
use crate::origin;
use handler::McpHandler;
use sessions::McpSessions;
use store::RedisSessionStore;

/// The path of the endpoint.
pub const PATH: &str = "/mcp";

/// The MCP endpoint of one daemon.
#[derive(Clone)]
pub(crate) struct Mcp {
    app: Arc<App>,
    service: StreamableHttpService<McpHandler, McpSessions>,
    sessions: Arc<McpSessions>,
}

impl Mcp {
    /// The endpoint of `app`.
    pub(crate) fn new(app: Arc<App>) -> Self {
        let keys = Keys::new(app.config.redis.prefix.clone());
        let store = RedisSessionStore::new(app.redis.clone(), keys, app.config.ws.mcp.session_ttl);
        let sessions = Arc::new(McpSessions::new(app.clone(), store.clone()));
        let mut config = StreamableHttpServerConfig::default()
            .with_max_request_body_bytes(app.config.ws.mcp.max_body_bytes)
            .with_cancellation_token(app.shutdown.child_token())
            // The daemon's own Host rule has run (loopback names while it listens on
            // loopback, anything otherwise): rmcp's loopback-only default would refuse a
            // daemon reached by its name.
            .disable_allowed_hosts()
            // Checked before rmcp already; rmcp checks again, never less.
            .with_allowed_origins(app.config.ws.allowed_origins.clone())
            .enforce_origin_validation();
        config.session_store = Some(Arc::new(store));
        let handler_app = app.clone();
        let service = StreamableHttpService::new(
            move || {
                Ok(McpHandler {
                    app: handler_app.clone(),
                })
            },
            sessions.clone(),
            config,
        );
        Self {
            app,
            service,
            sessions,
        }
    }

    /// Serves one request to `/mcp`.
    pub(crate) async fn handle(&self, req: Request) -> Response {
        let app = &self.app;
        if let Err(refusal) =
            origin::check_origin(req.headers(), &app.config.ws.allowed_origins, false)
        {
            tracing::info!("mcp request refused: origin not allowed");
            return refusal.into_response();
        }
        if !self.authorized(req.headers()) {
            return unauthorized();
        }
        let req = match self.admit_session(req).await {
            Ok(req) => req,
            Err(response) => return response,
        };
        let delete = req.method() == Method::DELETE;
        let mut response = self.service.handle(req).await.map(Body::new);
        // rmcp answers a session's DELETE with 202; clients (the Python SDK among them) expect
        // a plain success.
        if delete && response.status() == StatusCode::ACCEPTED {
            *response.status_mut() = StatusCode::OK;
        }
        response
    }

    /// Whether the request carries the client token (`Authorization: Bearer …`); always true
    /// when the daemon has no token (loopback only).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        if self.app.token_digest.is_none() {
            return true;
        }
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let Ok(value) = value.to_str() else {
            return false;
        };
        match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                self.app.token_matches(token.trim())
            }
            _ => false,
        }
    }

    /// Refuses a new session (an `initialize` without `Mcp-Session-Id`) when the daemon holds
    /// `EXAI_MCP_MAX_SESSIONS` already: 503 with `Retry-After`. Looks at the body only then.
    async fn admit_session(&self, req: Request) -> Result<Request, Response> {
        if req.method() != Method::POST || req.headers().contains_key("mcp-session-id") {
            return Ok(req);
        }
        let max = self.app.config.ws.mcp.max_sessions;
        if self.sessions.count().await < max {
            return Ok(req);
        }
        let (parts, body) = req.into_parts();
        let limit = self.app.config.ws.mcp.max_body_bytes;
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Payload Too Large: request body exceeds {limit} bytes"),
            )
                .into_response());
        };
        let initialize = serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|v| v.get("method").and_then(|m| m.as_str()) == Some("initialize"));
        if initialize {
            tracing::warn!(max, "mcp initialize refused: session limit");
            let error = json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {"code": -32000, "message": format!(
                    "this daemon holds {max} MCP sessions (EXAI_MCP_MAX_SESSIONS); retry later")},
            });
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                axum::Json(error),
            )
                .into_response());
        }
        Ok(Request::from_parts(parts, Body::from(bytes)))
    }
}

/// 401, with the challenge RFC 6750 asks for (the daemon has a static token, not OAuth: no
/// resource metadata is advertised).
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "unauthorized: send Authorization: Bearer <EXAI_WS_TOKEN>",
    )
        .into_response()
}
