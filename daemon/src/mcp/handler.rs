//! The MCP server itself ([`McpHandler`]): `tools/list` answers with the WebSocket's
//! catalogue (`calls::tool_listing`), `tools/call` runs the call through the calls layer
//! ([`super::call`]), `notifications/cancelled` cancels the job the way the WebSocket `cancel`
//! does. rmcp builds one handler per session (per request for the stateless revision); they
//! share the [`App`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::request::Parts;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelledNotificationParam, Extensions,
    Implementation, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ResultType,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use super::call::{self, Target};
use crate::app::App;
use crate::calls;

/// The MCP server of one session (or of one stateless request).
#[derive(Clone)]
pub(crate) struct McpHandler {
    pub(crate) app: Arc<App>,
}

/// What the server tells clients about itself at `initialize`.
const INSTRUCTIONS: &str = "EXAI Queue runs each tool call as a durable job: it is queued, run \
by a worker under fleet-wide limits, retried on transient failures, and its result is kept. \
Progress notifications say where a call is (queued, running, retrying).";

/// The `Mcp-Session-Id` of the HTTP request a message came in, if any.
fn session_id(extensions: &Extensions) -> Option<String> {
    extensions
        .get::<Parts>()?
        .headers
        .get("mcp-session-id")?
        .to_str()
        .ok()
        .map(str::to_owned)
}

/// The tools, as MCP `Tool`s, from the one catalogue.
pub(crate) async fn tools(app: &App) -> Vec<Tool> {
    as_mcp_tools(calls::tool_listing(app).await)
}

/// Listings as MCP `Tool`s (a listing that is not one is logged and left out).
fn as_mcp_tools(listings: Vec<Value>) -> Vec<Tool> {
    listings
        .into_iter()
        .filter_map(|listing| match serde_json::from_value::<Tool>(listing) {
            Ok(tool) => Some(tool),
            Err(e) => {
                tracing::error!(error = %e, "a tool's listing is not an MCP tool");
                None
            }
        })
        .collect()
}

impl ServerHandler for McpHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("exai-queue", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools(&self.app).await))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        // Synchronous: the built-in tools, and the upstream ones of the last catalogue read.
        let listing = match exai_shared::tools::find(name) {
            Some(tool) => tool.listing(),
            None => self
                .app
                .upstream
                .current()
                .find(name)?
                .entry
                .listing
                .clone(),
        };
        as_mcp_tools(vec![listing]).pop()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let target = match session_id(&context.extensions) {
            Some(session) => Target::in_session(&session, &context.id),
            None => Target::stateless(),
        };
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let token = context.meta.get_progress_token();
        let peer = context.peer.clone();
        // `progress` must increase with every notification.
        let count = Arc::new(AtomicU64::new(0));
        let progress = move |message: String| -> futures::future::BoxFuture<'static, ()> {
            let (Some(token), peer, count) = (token.clone(), peer.clone(), count.clone()) else {
                return Box::pin(async {});
            };
            Box::pin(async move {
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                let param = ProgressNotificationParam::new(token, n as f64).with_message(message);
                if let Err(e) = peer.notify_progress(param).await {
                    tracing::debug!(error = %e, "a progress notification was not sent");
                }
            })
        };
        let name = request.name.into_owned();
        let mut result =
            call::run(&self.app, &target, name, arguments, context.ct, progress).await?;
        // rmcp drops it again for a peer of a revision before 2026-07-28.
        result.result_type = Some(ResultType::COMPLETE);
        Ok(CallToolResponse::from(result))
    }

    async fn on_cancelled(
        &self,
        notification: CancelledNotificationParam,
        context: NotificationContext<RoleServer>,
    ) {
        let (Some(session), Some(id)) = (session_id(&context.extensions), notification.request_id)
        else {
            return;
        };
        let target = Target::in_session(&session, &id);
        tracing::info!(job_id = %target.job_id(), "mcp call cancelled by its client");
        call::cancel(&self.app, &target).await;
    }
}
