//! One call of an upstream tool: a `tool_calls` job whose tool name carries a server's prefix.
//!
//! The call holds a permit of the server's semaphore (`mcp.<name>`) for as long as it runs, like
//! a provider call; progress notifications become the job's progress events; a cancelled job
//! sends the server `notifications/cancelled`. The answer maps onto the job as the spec's two
//! error channels suggest: a result (also one with `isError: true`, which the client sees as the
//! tool's failure) completes the job; a JSON-RPC error fails it for good.
//!
//! Side effects and at-least-once delivery meet here (see [`exai_shared::upstream`]): the job is
//! marked sent before the request leaves, and the mark is cleared once the server answered. An
//! attempt that finds the mark, or whose server went away mid-call, runs the tool again only if
//! it is read-only or idempotent; otherwise the call ends `INTERRUPTED`, never silently twice.

use std::sync::Arc;
use std::time::Duration;

use exai_shared::backend::{CancelReason, RunningJob};
use exai_shared::jobs::{JobError, ToolCallJob, ToolResult};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientRequest, ServerResult,
};
use rmcp::service::{PeerRequestOptions, ServiceError};

use super::Upstream;
use crate::permits;
use crate::state::AppState;

/// How long a call waits for its server's session before it is put back (no attempt counted).
const SESSION_WAIT: Duration = Duration::from_secs(5);

/// Runs `job`, a call of a tool of `upstream`.
pub async fn run(
    state: &Arc<AppState>,
    lease: &RunningJob,
    upstream: &Upstream,
    job: ToolCallJob,
) -> Result<ToolResult, JobError> {
    let semaphore = upstream.config.semaphore();
    let guard = permits::acquire(state, lease, &[semaphore.as_str()], None).await?;
    permits::holding(state, guard, call(state, lease, upstream, job)).await
}

async fn call(
    state: &Arc<AppState>,
    lease: &RunningJob,
    upstream: &Upstream,
    job: ToolCallJob,
) -> Result<ToolResult, JobError> {
    let server = &upstream.config.name;
    let Some(session) = upstream.session(SESSION_WAIT).await else {
        return Err(JobError::PutBack {
            reason: format!("the upstream MCP server `{server}` is not connected"),
            after: permits::PUT_BACK_AFTER,
        });
    };
    let Some(tool) = session.tools.get(&job.tool) else {
        return Err(JobError::Permanent(format!(
            "the upstream MCP server `{server}` does not list `{}` (any more)",
            job.tool
        )));
    };
    let rerunnable = tool.rerunnable();
    let job_id = lease.id();
    // Only a call that must not run twice needs its mark: any attempt may run the others.
    let marks = Marks {
        state,
        job_id,
        on: !rerunnable,
    };
    if !marks.mark().await? {
        marks.clear().await;
        return Err(JobError::interrupted(format!(
            "an earlier attempt sent this call to `{server}` and its worker stopped before the \
             answer; `{}` is not idempotent, so it is not run again",
            tool.upstream
        )));
    }
    let arguments = match job.arguments {
        serde_json::Value::Object(map) => Some(map),
        serde_json::Value::Null => None,
        other => {
            marks.clear().await;
            return Err(JobError::Permanent(format!(
                "the arguments must be an object, got {other}"
            )));
        }
    };
    let mut params = CallToolRequestParams::new(tool.upstream.clone());
    params.arguments = arguments;
    let handle = match session
        .peer
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
    {
        Ok(h) => h,
        Err(e) => {
            // Not sent: nothing ran.
            upstream.session_broken();
            marks.clear().await;
            return Err(JobError::PutBack {
                reason: format!("the upstream MCP server `{server}`: {e}"),
                after: permits::PUT_BACK_AFTER,
            });
        }
    };
    let token = handle.progress_token.clone();
    upstream.progress_routes().add(token.clone(), job_id);
    // However this attempt stops before the answer — its job cancelled, its lease lost, the
    // worker shutting down, the handler dropped — the server hears `notifications/cancelled`.
    let mut pending = Pending {
        peer: handle.peer.clone(),
        request_id: Some(handle.id.clone()),
        lease: lease.clone(),
        server: server.clone(),
    };
    let answer = tokio::select! {
        answer = handle.await_response() => Some(answer),
        _ = lease.cancel.cancelled() => None,
    };
    upstream.progress_routes().remove(&token);
    let Some(answer) = answer else {
        let reason = stop_reason(lease);
        drop(pending);
        return Err(match lease.cancel_reason() {
            Some(CancelReason::Requested) => JobError::Cancelled(reason.to_owned()),
            // The mark stays: the next attempt knows this one may have run the tool.
            _ => JobError::Transient(reason.to_owned()),
        });
    };
    pending.request_id = None;
    match answer {
        Ok(ServerResult::CallToolResult(result)) => {
            marks.clear().await;
            serde_json::to_value(&result)
                .map(ToolResult::from_mcp)
                .map_err(JobError::permanent)
        }
        Ok(other) => {
            marks.clear().await;
            Err(JobError::Permanent(format!(
                "`{server}` answered tools/call with {other:?}"
            )))
        }
        Err(ServiceError::McpError(e)) => {
            marks.clear().await;
            Err(JobError::Permanent(format!(
                "`{server}` refused the call: {} ({})",
                e.message, e.code.0
            )))
        }
        Err(e) => {
            // The session broke mid-call: the server may or may not have run the tool.
            upstream.session_broken();
            marks.clear().await;
            if rerunnable {
                Err(JobError::Transient(format!(
                    "the upstream MCP server `{server}` went away mid-call ({e}); `{}` is \
                     idempotent, so it runs again",
                    tool.upstream
                )))
            } else {
                Err(JobError::interrupted(format!(
                    "the upstream MCP server `{server}` went away mid-call ({e}); `{}` is not \
                     idempotent, so it is not run again",
                    tool.upstream
                )))
            }
        }
    }
}

/// Why an attempt stopped before its answer.
fn stop_reason(lease: &RunningJob) -> &'static str {
    match lease.cancel_reason() {
        Some(CancelReason::Requested) => "cancelled by the client",
        Some(CancelReason::Shutdown) => "the worker is shutting down",
        Some(CancelReason::LeaseLost) => "the worker lost the job's lease",
        None => "the attempt stopped",
    }
}

/// A request sent and not answered: dropped while `request_id` is set, it sends the server
/// `notifications/cancelled` for it (from a task of its own, as a drop cannot wait).
struct Pending {
    peer: rmcp::service::Peer<rmcp::RoleClient>,
    request_id: Option<rmcp::model::RequestId>,
    lease: RunningJob,
    server: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(id) = self.request_id.take() else {
            return;
        };
        let reason = stop_reason(&self.lease).to_owned();
        let peer = self.peer.clone();
        let server = self.server.clone();
        tokio::spawn(async move {
            let cancel = CancelledNotificationParam::new(Some(id), Some(reason));
            if let Err(e) = peer.notify_cancelled(cancel).await {
                tracing::warn!(server = %server, error = %e, "the cancellation could not be forwarded");
            }
        });
    }
}

/// The sent mark of one call, kept only for a tool that must not run twice.
struct Marks<'a> {
    state: &'a AppState,
    job_id: &'a str,
    on: bool,
}

impl Marks<'_> {
    /// Marks the call sent; false when an earlier attempt had marked it (and never heard the
    /// answer).
    async fn mark(&self) -> Result<bool, JobError> {
        if !self.on {
            return Ok(true);
        }
        self.state
            .sent
            .mark(self.job_id)
            .await
            .map_err(JobError::transient)
    }

    /// Clears the mark (the server answered, or the call ends here).
    async fn clear(&self) {
        if self.on
            && let Err(e) = self.state.sent.clear(self.job_id).await
        {
            tracing::debug!(error = %e, "a sent mark was not cleared; it expires");
        }
    }
}
