//! `exai-mcp`'s stdio MCP server: for MCP clients that only launch commands. It is an MCP server
//! on standard input and output whose every request is forwarded to a daemon's `/mcp` with
//! rmcp's Streamable HTTP client (one session, the bearer token on every request), so there is
//! one MCP implementation — the daemon's — and the bridge only carries messages: `tools/list`
//! and `tools/call` go up, the answers come down; progress notifications come down under the
//! client's own progress token; a client's `notifications/cancelled` goes up as a cancellation
//! of the forwarded request (which cancels the job).
//!
//! Why `/mcp` rather than the WebSocket protocol: the bridge then translates nothing, and what
//! MCP clients get through it is exactly what they would get over HTTP. Standard output carries
//! only MCP messages; the binary logs to standard error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CancelledNotificationParam,
    ClientConfig, ClientRequest, Implementation, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, ServerCapabilities, ServerConfig, ServerResult,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RequestContext, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};
use tokio_util::sync::CancellationToken;

/// How many requests the bridge forwards at once (each is one POST to the daemon).
const MAX_CONCURRENT: usize = 256;

/// Why the bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The daemon could not be reached, refused the token, or broke the protocol.
    #[error("cannot open an MCP session at {url}: {message}")]
    Daemon {
        /// The daemon's `/mcp` URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The stdio side failed.
    #[error("stdio: {0}")]
    Stdio(String),
}

/// Where progress of a forwarded call goes: the daemon's progress token → the client's token
/// and the client.
#[derive(Default)]
struct Routes(Mutex<HashMap<ProgressToken, (ProgressToken, Peer<RoleServer>)>>);

impl Routes {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ProgressToken, (ProgressToken, Peer<RoleServer>)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The client side: the session with the daemon.
struct Upstream {
    routes: Arc<Routes>,
}

impl ClientHandler for Upstream {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info = Implementation::new("exai-mcp", env!("CARGO_PKG_VERSION"));
        info
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let route = self.routes.lock().get(&params.progress_token).cloned();
        if let Some((token, peer)) = route {
            let mut forwarded = params;
            forwarded.progress_token = token;
            if let Err(e) = peer.notify_progress(forwarded).await {
                tracing::debug!(error = %e, "progress not forwarded");
            }
        }
    }
}

/// The server side: what the launching client talks to.
struct Downstream {
    upstream: Peer<RoleClient>,
    routes: Arc<Routes>,
    instructions: Option<String>,
}

/// The MCP error of a failed forward.
fn forward_error(e: ServiceError) -> ErrorData {
    match e {
        ServiceError::McpError(e) => e,
        other => ErrorData::internal_error(format!("the daemon: {other}"), None),
    }
}

impl ServerHandler for Downstream {
    fn get_info(&self) -> ServerConfig {
        let info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("exai-mcp", env!("CARGO_PKG_VERSION")));
        match &self.instructions {
            Some(text) => info.with_instructions(text.clone()),
            None => info,
        }
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.upstream
            .list_tools(request)
            .await
            .map_err(forward_error)
    }

    async fn call_tool(
        &self,
        mut request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // The daemon gets a progress token of the session's own; the client's is mapped back.
        request.meta = None;
        let handle = self
            .upstream
            .send_cancellable_request(
                ClientRequest::CallToolRequest(CallToolRequest::new(request)),
                PeerRequestOptions::no_options(),
            )
            .await
            .map_err(forward_error)?;
        let upstream_token = handle.progress_token.clone();
        let upstream_id = handle.id.clone();
        if let Some(token) = context.meta.get_progress_token() {
            self.routes
                .lock()
                .insert(upstream_token.clone(), (token, context.peer.clone()));
        }
        let answer = tokio::select! {
            answer = handle.await_response() => answer.map_err(forward_error),
            _ = context.ct.cancelled() => {
                let cancel = CancelledNotificationParam::new(
                    Some(upstream_id),
                    Some("cancelled by the client".to_owned()),
                );
                if let Err(e) = self.upstream.notify_cancelled(cancel).await {
                    tracing::warn!(error = %e, "the cancellation could not be forwarded");
                }
                Err(ErrorData::internal_error("cancelled", None))
            }
        };
        self.routes.lock().remove(&upstream_token);
        match answer? {
            ServerResult::CallToolResult(result) => Ok(result.into()),
            other => Err(ErrorData::internal_error(
                format!("the daemon answered tools/call with {other:?}"),
                None,
            )),
        }
    }
}

/// Opens a session with the daemon at `url` (its `/mcp` endpoint; `token` is `EXAI_WS_TOKEN`)
/// and serves MCP on standard input and output until the client closes standard input or
/// `shutdown` fires.
pub async fn run(
    url: &str,
    token: Option<&str>,
    shutdown: CancellationToken,
) -> Result<(), BridgeError> {
    // reqwest's rustls is built without a crypto provider: the daemon's (ring) is the one.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let daemon = |message: String| BridgeError::Daemon {
        url: url.to_owned(),
        message,
    };
    let mut config =
        StreamableHttpClientTransportConfig::with_uri(url).max_concurrent_requests(MAX_CONCURRENT);
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    let routes = Arc::new(Routes::default());
    let upstream = Upstream {
        routes: routes.clone(),
    }
    .serve(StreamableHttpClientTransport::from_config(config))
    .await
    .map_err(|e| daemon(e.to_string()))?;
    let instructions = upstream.peer_info().and_then(|i| i.instructions.clone());
    tracing::info!(url, "connected to the daemon");
    let downstream = Downstream {
        upstream: upstream.peer().clone(),
        routes,
        instructions,
    }
    .serve(rmcp::transport::stdio())
    .await
    .map_err(|e| BridgeError::Stdio(e.to_string()))?;
    tokio::select! {
        quit = downstream.waiting() => {
            tracing::info!(reason = ?quit, "the client went away");
        }
        _ = shutdown.cancelled() => {}
    }
    if let Err(e) = upstream.cancel().await {
        tracing::debug!(error = %e, "closing the daemon session");
    }
    Ok(())
}
