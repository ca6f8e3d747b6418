//! One MCP `tools/call`, carried out by the WebSocket's calls layer.
//!
//! An MCP call is a WebSocket `call_tool` in streaming mode: the same admission (tool lookup,
//! argument cap, schema validation, the session's in-flight and queued caps, staging), the same
//! enqueue, the same follower. The call is dispatched on a [`Caller`] of its own whose outbox is
//! read here instead of by a socket writer; each frame the calls layer would send a WebSocket
//! client is translated ([`translate`]): the ack and the progress frames become
//! `notifications/progress` (when the request carried a `progressToken`), the `call_tool_res`
//! becomes the `tools/call` result.
//!
//! # Which session, which job
//! A handshake session's calls belong to the WebSocket session [`ws_session`] derives from the
//! `Mcp-Session-Id`, and each call's request id is [`ws_request_id`] of its JSON-RPC id (which MCP
//! forbids a client to reuse within a session), so the job id is a function of (session, JSON-RPC
//! id) and any daemon — one restoring the session, one resuming its stream — finds the job. A
//! stateless (2026-07-28) request has no session: it gets a session and a request id of its own,
//! random, forgotten when the call ends.

use std::sync::Arc;

use exai_shared::protocol::{
    self, CallTool, CallToolRes, ErrorCode, Inbound, ReplyTo, Request, ServerMessage,
};
use exai_shared::tools;
use rmcp::ErrorData;
use rmcp::model::{CallToolResult, RequestId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::caller::Caller;
use crate::calls;
use crate::outbox::{Inbox, Outbound, Outbox};

/// The `_meta` key under which a result names its job.
pub(crate) const JOB_ID_META: &str = "exai/job_id";

/// The prefix of the WebSocket sessions that stand for MCP sessions (a WebSocket client cannot
/// name one: `protocol::valid_session_id` refuses it).
const SESSION_PREFIX: &str = protocol::MCP_SESSION_PREFIX;

/// The WebSocket session of the MCP session `mcp_session_id`: `mcp_` + 32 hex digits of a
/// SHA-256 of it, so the session id itself (the client's credential) is never written into a job.
pub(crate) fn ws_session(mcp_session_id: &str) -> String {
    let digest = Sha256::digest(format!("mcp\n{mcp_session_id}").as_bytes());
    let mut id = String::with_capacity(SESSION_PREFIX.len() + 32);
    id.push_str(SESSION_PREFIX);
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The WebSocket request id of the JSON-RPC request `id`: `mcp:` and the id as JSON.
pub(crate) fn ws_request_id(id: &RequestId) -> String {
    format!(
        "mcp:{}",
        serde_json::to_string(id).unwrap_or_else(|_| id.to_string())
    )
}

/// Where a call belongs: its WebSocket session and request id.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The WebSocket session (derived from the MCP session, or random for a stateless call).
    pub(crate) session: String,
    /// The WebSocket request id.
    pub(crate) request_id: String,
    /// Whether the call belongs to no session (a stateless request): its stream's close
    /// cancels it, and its session is forgotten when it ends.
    pub(crate) stateless: bool,
}

impl Target {
    /// The call `id` of the handshake session `mcp_session_id`.
    pub(crate) fn in_session(mcp_session_id: &str, id: &RequestId) -> Self {
        Self {
            session: ws_session(mcp_session_id),
            request_id: ws_request_id(id),
            stateless: false,
        }
    }

    /// A stateless call: a session and a request id of its own.
    pub(crate) fn stateless() -> Self {
        Self {
            session: format!("{SESSION_PREFIX}{}", protocol::new_session_id()),
            request_id: protocol::new_session_id(),
            stateless: true,
        }
    }

    /// The job id of the call (what the calls layer derives).
    pub(crate) fn job_id(&self) -> String {
        protocol::call_job_id(&self.session, &self.request_id)
    }
}

/// What one frame of the calls layer means for the MCP request.
#[derive(Debug)]
pub(crate) enum Step {
    /// Something to report as progress.
    Progress(String),
    /// The call's answer.
    Done(Result<CallToolResult, ErrorData>),
    /// Nothing for the MCP client (a streamed chunk: the result carries the whole text).
    Nothing,
}

/// A call on its way through the calls layer: the caller it was dispatched on and the frames
/// it sends.
pub(crate) struct Running {
    caller: Arc<Caller>,
    inbox: Inbox,
}

impl Running {
    /// A caller of `target`'s session whose frames come back here.
    pub(crate) fn new(app: &Arc<App>, target: &Target) -> Self {
        let session = app.sessions.join(&target.session);
        let (out, inbox) = Outbox::new(app.limits.outbox_max_bytes, app.metrics.clone());
        Self {
            caller: Arc::new(Caller::new(app.clone(), session, out)),
            inbox,
        }
    }

    /// The caller (for [`crate::follow::Follow::run`]).
    pub(crate) fn caller(&self) -> &Arc<Caller> {
        &self.caller
    }

    /// Dispatches `call_tool` for `name` with `arguments` as request `request_id`.
    pub(crate) async fn dispatch(&self, request_id: &str, name: String, arguments: Value) {
        let inbound = Inbound {
            op: "call_tool".to_owned(),
            reply_to: ReplyTo::request(request_id),
            request: Request::CallTool(CallTool { name, arguments }),
        };
        // The inbox is ours: the outbox cannot be closed.
        let _ = calls::dispatch(&self.caller, inbound).await;
    }

    /// The next frame the calls layer sent; `None` once none can come.
    pub(crate) async fn next(&mut self) -> Option<ServerMessage> {
        loop {
            match self.inbox.recv().await? {
                Outbound::Text(text, _budget) => match serde_json::from_str(&text) {
                    Ok(message) => return Some(message),
                    Err(e) => tracing::warn!(error = %e, "unreadable frame of an MCP call"),
                },
                Outbound::Close(..) => {}
            }
        }
    }

    /// Stops following the call (the job goes on).
    pub(crate) fn detach(&self) {
        self.caller.cancel.cancel();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.caller.cancel.cancel();
    }
}

/// Runs one call to its answer, reporting progress through `progress`. When `ct` fires first:
/// a stateless call's job is cancelled (closing its stream is its cancellation), a session's
/// call is only no longer waited for (`notifications/cancelled` cancels it, see
/// [`cancel`]); either way the answer is an error nobody reads.
pub(crate) async fn run(
    app: &Arc<App>,
    target: &Target,
    name: String,
    arguments: Value,
    ct: CancellationToken,
    mut progress: impl FnMut(String) -> futures::future::BoxFuture<'static, ()>,
) -> Result<CallToolResult, ErrorData> {
    let mut running = Running::new(app, target);
    running.dispatch(&target.request_id, name, arguments).await;
    let tool_name = |tool: &Option<String>| tool.clone().unwrap_or_default();
    let mut tool: Option<String> = None;
    let answer = loop {
        let frame = tokio::select! {
            frame = running.next() => frame,
            _ = ct.cancelled() => {
                running.detach();
                if target.stateless && !app.shutdown.is_cancelled() {
                    cancel(app, target).await;
                }
                break Err(ErrorData::internal_error("the request was cancelled", None));
            }
        };
        let Some(frame) = frame else {
            break Err(ErrorData::internal_error(
                "the call ended without an answer",
                None,
            ));
        };
        if let ServerMessage::CallToolAck(ack) = &frame {
            tool = ack.name.clone();
        }
        match translate(frame, &tool_name(&tool)) {
            Step::Progress(message) => progress(message).await,
            Step::Done(answer) => break answer,
            Step::Nothing => {}
        }
    };
    if target.stateless {
        crate::session_calls::forget(app, &target.session, &target.job_id()).await;
    }
    answer
}

/// Cancels `target`'s job exactly as the WebSocket `cancel` does.
pub(crate) async fn cancel(app: &Arc<App>, target: &Target) {
    let running = Running::new(app, target);
    let inbound = Inbound {
        op: "cancel".to_owned(),
        reply_to: ReplyTo::request(&target.request_id),
        request: Request::Cancel,
    };
    let _ = calls::dispatch(running.caller(), inbound).await;
}

/// What `frame` means for the MCP request of a call to `tool`.
pub(crate) fn translate(frame: ServerMessage, tool: &str) -> Step {
    match frame {
        ServerMessage::CallToolAck(ack) => Step::Progress(if ack.duplicate {
            format!("queued: attached to job {}", ack.job_id)
        } else {
            format!("queued: job {}", ack.job_id)
        }),
        ServerMessage::Progress(p) => Step::Progress(if p.message.is_empty() {
            p.state
        } else {
            format!("{}: {}", p.state, p.message)
        }),
        ServerMessage::StreamChunk(_) => Step::Nothing,
        ServerMessage::CallToolRes(res) => Step::Done(result(res, tool)),
        ServerMessage::Error(e) => Step::Done(Err(ErrorData::internal_error(
            format!("{}: {}", e.error.code, e.error.message),
            None,
        ))),
        other => {
            tracing::debug!(op = ?other.op(), "unexpected frame for an MCP call");
            Step::Nothing
        }
    }
}

/// The `tools/call` answer of a `call_tool_res`: a result (`isError` for a failed tool, a
/// refused argument or a full session), or a JSON-RPC error for an unknown tool or a daemon
/// that cannot reach Redis.
pub(crate) fn result(res: CallToolRes, tool: &str) -> Result<CallToolResult, ErrorData> {
    let job_id = res.job_id.clone();
    let meta = |job_id: &Option<String>| match job_id {
        Some(id) => json!({ JOB_ID_META: id }),
        None => json!({}),
    };
    if let Some(error) = res.error {
        let message = format!("{}: {}", error.code, error.message);
        return match error.code {
            ErrorCode::ToolNotFound | ErrorCode::InvalidRequest => {
                Err(ErrorData::invalid_params(message, error.details))
            }
            ErrorCode::ServiceUnavailable | ErrorCode::InternalError => {
                Err(ErrorData::internal_error(message, error.details))
            }
            _ => from_json(json!({
                "content": [{"type": "text", "text": message}],
                "isError": true,
                "_meta": meta(&job_id),
            })),
        };
    }
    let outputs = res.outputs.unwrap_or_default();
    // Text blocks as they are; an upstream tool's other blocks with their own fields.
    let content: Vec<Value> = outputs
        .iter()
        .map(|o| {
            let mut block = o.extra.clone();
            block.insert("type".to_owned(), Value::String(o.kind.clone()));
            if o.kind == "text" {
                block.insert("text".to_owned(), Value::String(o.text.clone()));
            }
            Value::Object(block)
        })
        .collect();
    let mut value = json!({"content": content, "isError": false, "_meta": meta(&job_id)});
    // An upstream tool's `structuredContent`; a built-in tool with an output schema returns its
    // object as the first text item.
    let structured = res.structured_content.or_else(|| {
        tools::find(tool)
            .and_then(|t| t.output_schema.as_ref())
            .and_then(|_| outputs.first())
            .and_then(|first| serde_json::from_str::<Value>(&first.text).ok())
            .filter(Value::is_object)
    });
    if let Some(structured) = structured {
        value["structuredContent"] = structured;
    }
    from_json(value)
}

fn from_json(value: Value) -> Result<CallToolResult, ErrorData> {
    serde_json::from_value(value)
        .map_err(|e| ErrorData::internal_error(format!("building the result: {e}"), None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use exai_shared::jobs::ToolContent;
    use exai_shared::protocol::WireError;

    #[test]
    fn sessions_and_request_ids_are_derived_and_distinct() {
        let a = ws_session("9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d");
        assert!(a.starts_with("mcp_") && a.len() == 36, "{a}");
        assert_ne!(a, ws_session("another"));
        assert_eq!(ws_request_id(&RequestId::Number(7)), "mcp:7");
        assert_eq!(ws_request_id(&RequestId::String("7".into())), "mcp:\"7\"");
        let t = Target::in_session("s", &RequestId::Number(1));
        assert_eq!(
            t.job_id(),
            Target::in_session("s", &RequestId::Number(1)).job_id()
        );
        assert_ne!(t.job_id(), Target::stateless().job_id());
    }

    #[test]
    fn results_errors_and_structured_content() {
        let ok = CallToolRes::success(ReplyTo::default(), vec![ToolContent::text(r#"{"a":1}"#)])
            .with_job_id("call-x");
        let r = serde_json::to_value(result(ok.clone(), tools::TEST_ECHO).unwrap()).unwrap();
        assert_eq!(r["structuredContent"], json!({"a": 1}));
        assert_eq!(r["content"][0]["text"], r#"{"a":1}"#);
        assert_eq!(r["_meta"][JOB_ID_META], "call-x");
        let r = serde_json::to_value(result(ok, tools::CHAT).unwrap()).unwrap();
        assert!(r.get("structuredContent").is_none());

        let failed = |code| CallToolRes::failed(ReplyTo::default(), WireError::new(code, "m"));
        let r = result(failed(ErrorCode::ValidationError), tools::TEST_ECHO).unwrap();
        assert_eq!(r.is_error, Some(true));
        let e = result(failed(ErrorCode::ToolNotFound), "nope").unwrap_err();
        assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
        let e = result(failed(ErrorCode::ServiceUnavailable), "x").unwrap_err();
        assert_eq!(e.code, rmcp::model::ErrorCode::INTERNAL_ERROR);
    }
}
