//! The requests of a connection: the simple ones answered at once, and the ones about jobs —
//! `call_tool` (validate, stage `kimi_upload_bytes` content, enqueue durably, ack, then follow
//! the job until its result), and `get_result`, `job_status`, `cancel`, which find a session's
//! call by its request id.
//!
//! Following an enqueued call until its result is [`crate::follow`]'s; what the client is told
//! at the end is [`crate::answer`]'s. However a call ends — refused, answered, or its client
//! gone — its outcome is counted once, by `end_call`.
//!
//! # Finding a call
//! Streaming calls have the job id `call_job_id(session, request_id)`, so a session finds its
//! calls by request id and never another session's. A single-frame call's job id is random and
//! is sent to its client as `request_id`; `get_result` with that id finds it from any session
//! (the id is the capability: it is unguessable and only ever sent to the caller).

use std::sync::Arc;

use exai_shared::events::JobEvent;
use exai_shared::jobs::{StagedRef, ToolCallJob};
use exai_shared::protocol::{
    self, CallState, CallTool, CallToolAck, CallToolRes, CancelWas, Cancelled, ClientOp, ErrorCode,
    ErrorFrame, HealthRes, Inbound, JobStatusRes, ListToolsRes, Pong, QueueStatsRes, ReplyTo,
    Request, ServerMessage, WireError,
};
use exai_shared::queue::{CancelOutcome, JobInfo, JobState, NewJob, QueueError};
use exai_shared::staging::{self, StagingError};
use exai_shared::tools;
use exai_shared::upstream::UpstreamTool;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::answer::{call_error, finished};
use crate::app::{App, unix_ms};
use crate::caller::Caller;
use crate::file_admin;
use crate::follow::Follow;
use crate::health;
use crate::metrics::Outcome;
use crate::outbox::Closed;

/// Handles one request. Fails only when the connection is gone.
pub(crate) async fn dispatch(conn: &Arc<Caller>, inbound: Inbound) -> Result<(), Closed> {
    let app = &conn.app;
    let Inbound {
        op,
        reply_to,
        request,
    } = inbound;
    let error = |code: ErrorCode, message: String| {
        ServerMessage::Error(ErrorFrame {
            reply_to: reply_to.clone(),
            error: WireError::new(code, message),
        })
    };
    let reply = match request {
        Request::ListTools => ServerMessage::ListToolsRes(ListToolsRes {
            reply_to,
            tools: tool_listing(app).await,
        }),
        Request::Ping => ServerMessage::Pong(Pong { reply_to }),
        Request::Hello => error(
            ErrorCode::ProtocolError,
            "hello was already received on this connection".to_owned(),
        ),
        Request::Unknown(op) => error(
            ErrorCode::InvalidRequest,
            format!("Unknown operation: {op}"),
        ),
        Request::Health => {
            let (ok, health) = health::report(app).await;
            ServerMessage::HealthRes(HealthRes {
                reply_to,
                ok,
                health,
            })
        }
        Request::QueueStats => match (
            health::queue_counts(app).await,
            health::semaphore_states(app).await,
        ) {
            (Ok(queues), Ok(semaphores)) => ServerMessage::QueueStatsRes(QueueStatsRes {
                reply_to,
                queues,
                semaphores,
            }),
            (Err(e), _) => error(ErrorCode::ServiceUnavailable, format!("queues: {e}")),
            (_, Err(e)) => error(ErrorCode::ServiceUnavailable, format!("semaphores: {e}")),
        },
        Request::CallTool(call) => return call_tool(conn, reply_to, call).await,
        Request::JobStatus | Request::GetResult | Request::Cancel => {
            let Some(request_id) = reply_to.request_id.clone() else {
                return conn
                    .out
                    .send(&error(
                        ErrorCode::InvalidRequest,
                        format!("Invalid message: {op} needs a request_id"),
                    ))
                    .await;
            };
            match about_call(conn, reply_to.clone(), &request_id, request).await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::warn!(error = %e, op, "queue read failed");
                    error(
                        ErrorCode::ServiceUnavailable,
                        format!("the queue could not be read: {e}"),
                    )
                }
            }
        }
    };
    conn.out.send(&reply).await
}

/// The tools a client may call, as `list_tools` shows them (`{name, description, inputSchema,
/// annotations, outputSchema?}`): the built-in tools, then the upstream MCP servers' tools
/// (their own listings under their prefixed names). The one catalogue the WebSocket's
/// `list_tools` and MCP's `tools/list` both answer with.
pub(crate) async fn tool_listing(app: &App) -> Vec<Value> {
    let upstream = app.upstream.snapshot().await;
    tools::all()
        .iter()
        .map(tools::Tool::listing)
        .chain(upstream.tools().iter().map(|t| t.entry.listing.clone()))
        .collect()
}

/// A tool a client may call: built in, or an upstream MCP server's.
#[derive(Debug, Clone)]
pub(crate) enum Callable {
    /// A tool of the registry ([`exai_shared::tools`]).
    Builtin(&'static tools::Tool),
    /// A tool of the upstream catalogue ([`exai_shared::upstream`]).
    Upstream(Arc<UpstreamTool>),
}

impl Callable {
    /// The name it is called by.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Builtin(t) => t.name,
            Self::Upstream(t) => t.name(),
        }
    }

    /// Checks a call's arguments against its input schema.
    fn validate(&self, arguments: &Value) -> Result<(), tools::ArgumentError> {
        match self {
            Self::Builtin(t) => t.validate(arguments),
            Self::Upstream(t) => t.validate(arguments),
        }
    }

    /// The built-in tool, if it is one.
    fn builtin(&self) -> Option<&'static tools::Tool> {
        match self {
            Self::Builtin(t) => Some(t),
            Self::Upstream(_) => None,
        }
    }
}

/// The tool called `name` (normalised first): a built-in one, else an upstream one. A name the
/// catalogue snapshot lacks is looked up once more in a fresh read (a server just connected).
pub(crate) async fn find_tool(app: &App, name: &str) -> Option<Callable> {
    let name = tools::normalize_name(name);
    if let Some(tool) = tools::find(name) {
        return Some(Callable::Builtin(tool));
    }
    if let Some(tool) = app.upstream.snapshot().await.find(name) {
        return Some(Callable::Upstream(Arc::clone(tool)));
    }
    app.upstream
        .snapshot_within(std::time::Duration::ZERO)
        .await
        .find(name)
        .map(|t| Callable::Upstream(Arc::clone(t)))
}

/// How the admission of a call ended.
enum Admission {
    /// The job is enqueued and acked; the follower waits for its result.
    Following(Follow),
    /// This connection already follows the call: it was acked again.
    Reacked,
    /// Refused before its job was enqueued (or the enqueue failed): how the call ended and the
    /// error its client is told.
    Refused(Outcome, WireError),
}

/// `call_tool`: admit the call (validate, stage, enqueue durably, ack), then follow it in a
/// task of its own; either way, [`end_call`] records how it ended and sends its last frame.
async fn call_tool(conn: &Arc<Caller>, reply_to: ReplyTo, call: CallTool) -> Result<(), Closed> {
    // Streaming iff the request has a request_id; anything else gets exactly one frame.
    let single = reply_to.request_id.is_none();
    let name = call.name.clone();
    let follow = match admit(conn, &reply_to, single, call).await? {
        Admission::Following(follow) => follow,
        Admission::Reacked => return Ok(()),
        Admission::Refused(outcome, error) => {
            // Only names of tools label the metrics: an unknown name counts as `unknown`.
            let label = if error.code == ErrorCode::ToolNotFound {
                "unknown"
            } else {
                tools::normalize_name(&name)
            };
            let last = ServerMessage::CallToolRes(call_error(reply_to, single, error)).to_json();
            return end_call(conn, label, outcome, Some(last)).await;
        }
    };
    let task_conn = conn.clone();
    conn.tasks.spawn(async move {
        let _in_flight = task_conn.app.metrics.call_in_flight();
        let (outcome, last) = follow.run(&task_conn).await;
        if end_call(&task_conn, &follow.tool, outcome, last)
            .await
            .is_err()
        {
            tracing::debug!(job_id = %follow.job_id, "the client left before the answer");
        }
        task_conn.stop_following(&follow.job_id);
    });
    Ok(())
}

/// Ends a call: records how it ended (`tool`: the tool's name, or `unknown`), then sends its last frame,
/// if there is a client to send it to. The one place a call's outcome is counted; counted before
/// the frame is sent, so a client that saw the answer sees the count.
async fn end_call(
    conn: &Caller,
    tool: &str,
    outcome: Outcome,
    last: Option<String>,
) -> Result<(), Closed> {
    conn.app.metrics.call(tool, outcome);
    match last {
        Some(frame) => conn.out.send_text(frame).await,
        None => Ok(()),
    }
}

/// The `TOOL_NOT_FOUND` answer to a call of `asked`: names the closest tools, or every tool when
/// none is close, and says so when the name is an op (`list_tools`) rather than a tool.
/// `details`: `closest` and `tools`, the names.
async fn tool_not_found(app: &App, asked: &str) -> WireError {
    let name = tools::normalize_name(asked);
    let upstream = app.upstream.snapshot().await;
    let all: Vec<&str> = tools::all()
        .iter()
        .map(|t| t.name)
        .chain(upstream.tools().iter().map(|t| t.name()))
        .collect();
    let closest = tools::closest_in(name, all.iter().copied());
    let hint = if ClientOp::from_wire(name).is_some() {
        format!(
            "{name} is an op, not a tool: send {{\"op\":\"{name}\"}}; the tools are {}",
            all.join(", ")
        )
    } else if closest.is_empty() {
        format!("the tools are {}", all.join(", "))
    } else {
        format!("did you mean {}?", closest.join(" or "))
    };
    WireError::new(
        ErrorCode::ToolNotFound,
        format!("Tool not found: {name} ({hint})"),
    )
    .with_details(json!({"closest": closest, "tools": all}))
}

/// Validates the call, stages `kimi_upload_bytes` content, enqueues the job durably and acks it
/// (streaming mode). Fails only when the connection is gone.
async fn admit(
    conn: &Caller,
    reply_to: &ReplyTo,
    single: bool,
    call: CallTool,
) -> Result<Admission, Closed> {
    let app = &conn.app;
    let Some(tool) = find_tool(app, &call.name).await else {
        return Ok(Admission::Refused(
            Outcome::Invalid,
            tool_not_found(app, &call.name).await,
        ));
    };
    // The arguments are enqueued as they are: their size is capped before anything else is done
    // with them (upload content excepted: it is staged, not enqueued, and limited on its own).
    let max = app.limits.max_argument_bytes;
    let size = argument_bytes(tool.name(), &call.arguments);
    if size > max {
        return Ok(Admission::Refused(
            Outcome::Invalid,
            WireError::new(
                ErrorCode::ValidationError,
                format!(
                    "Invalid arguments for {}: the arguments are {size} bytes of JSON, over the \
                     limit of {max} (EXAI_MAX_ARGUMENT_BYTES)",
                    tool.name()
                ),
            )
            .with_details(json!({"path": "/", "limit": max, "size": size})),
        ));
    }
    if let Err(e) = tool.validate(&call.arguments) {
        let errors: Vec<Value> = e
            .all
            .iter()
            .map(|(path, message)| json!({"path": if path.is_empty() { "/" } else { path }, "message": message}))
            .collect();
        return Ok(Admission::Refused(
            Outcome::Invalid,
            WireError::new(
                ErrorCode::ValidationError,
                format!(
                    "Invalid arguments for {}: {}: {}",
                    tool.name(),
                    e.path,
                    e.message
                ),
            )
            .with_details(json!({"path": e.path, "errors": errors})),
        ));
    }
    if let Some(error) = file_admin::refusal(
        app.config.ws.client_file_admin,
        tool.name(),
        &call.arguments,
    ) {
        return Ok(Admission::Refused(Outcome::Invalid, error));
    }
    // A session that has spent its token budget makes no more provider calls. Without a budget
    // nothing is read.
    let provider = tool.builtin().and_then(|t| t.provider(&call.arguments));
    if provider.is_some()
        && let Some(error) = crate::budget::refusal(app, &conn.session.id).await
    {
        return Ok(Admission::Refused(Outcome::OverCapacity, error));
    }

    let job_id = match (&reply_to.request_id, single) {
        (Some(rid), false) => protocol::call_job_id(&conn.session.id, rid),
        _ => protocol::fresh_call_job_id(),
    };
    let timeout = app.limits.call_timeout;
    let ack = |duplicate: bool| {
        ServerMessage::CallToolAck(CallToolAck {
            reply_to: reply_to.clone(),
            accepted: true,
            job_id: job_id.clone(),
            timeout: timeout.as_secs_f64(),
            name: Some(tool.name().to_owned()),
            duplicate,
        })
    };
    if !conn.start_following(&job_id) {
        // This connection already waits on the call: its result will come once.
        conn.out.send(&ack(true)).await?;
        return Ok(Admission::Reacked);
    }
    let Some(slot) = conn
        .session
        .try_reserve(app.limits.max_inflight_per_session)
    else {
        conn.stop_following(&job_id);
        let max = app.limits.max_inflight_per_session;
        return Ok(Admission::Refused(
            Outcome::OverCapacity,
            WireError::new(
                ErrorCode::OverCapacity,
                format!(
                    "Session concurrency limit reached ({max} calls in flight); retry when one finishes"
                ),
            )
            .with_details(json!({"limit": max, "retry_after": 1})),
        ));
    };

    // The session's unfinished calls, over all its connections and across disconnects, are
    // capped at `EXAI_SESSION_MAX_QUEUED`: counted by the enqueue itself (one round trip), or —
    // for a call that stages bytes first — before the staging, so a refused call stages nothing.
    let max_queued = app.limits.session_max_queued;
    let session_full = || {
        Admission::Refused(
            Outcome::OverCapacity,
            WireError::new(
                ErrorCode::OverCapacity,
                format!(
                    "Session queue limit reached ({max_queued} calls enqueued and not \
                     finished, EXAI_SESSION_MAX_QUEUED); retry when one finishes"
                ),
            )
            .with_details(json!({"limit": max_queued, "retry_after": 1})),
        )
    };
    let stages = tool
        .builtin()
        .is_some_and(|t| t.name == tools::KIMI_UPLOAD_BYTES);
    if stages {
        match crate::session_calls::admit(app, &conn.session.id, &job_id, max_queued).await {
            Ok(true) => {}
            Ok(false) => {
                conn.stop_following(&job_id);
                return Ok(session_full());
            }
            Err(e) => {
                conn.stop_following(&job_id);
                tracing::error!(error = %e, job_id, "the session's calls could not be counted");
                return Ok(Admission::Refused(
                    Outcome::Error,
                    WireError::new(
                        ErrorCode::ServiceUnavailable,
                        format!("the call could not be admitted: {e}"),
                    ),
                ));
            }
        }
    }

    // Inline upload bytes go to the staging store now, once the call holds its slot (a refused
    // call stages nothing); the job carries only their hash.
    let mut arguments = call.arguments;
    let staged = if stages {
        match stage_inline(app, &mut arguments).await {
            Ok(staged) => Some(staged),
            Err(error) => {
                conn.stop_following(&job_id);
                crate::session_calls::forget(app, &conn.session.id, &job_id).await;
                let outcome = if error.code == ErrorCode::ValidationError {
                    Outcome::Invalid
                } else {
                    Outcome::Error
                };
                return Ok(Admission::Refused(outcome, error));
            }
        }
    } else {
        None
    };

    let job = ToolCallJob {
        tool: tool.name().to_owned(),
        arguments,
        staged,
        session_id: conn.session.id.clone(),
        request_id: if single {
            None
        } else {
            reply_to.request_id.clone()
        },
        deadline_ms: Some(unix_ms().saturating_add(timeout.as_millis() as u64)),
    };
    let started = Instant::now();
    let enqueued = match NewJob::json(&job).map(|new| new.with_id(job_id.clone())) {
        // A staged call was counted already: the grouped enqueue finds it a member and admits
        // it again, and it waits under its fairness key like any call.
        Ok(new) => {
            crate::session_calls::enqueue(
                app,
                &conn.session.id,
                conn.fairness_key(),
                &new,
                max_queued,
            )
            .await
        }
        Err(e) => Err(e),
    };
    app.metrics.enqueue_took(started.elapsed().as_secs_f64());
    let enqueued = match enqueued {
        Ok(Some(e)) => e,
        Ok(None) => {
            conn.stop_following(&job_id);
            return Ok(session_full());
        }
        Err(e) => {
            conn.stop_following(&job_id);
            if stages {
                crate::session_calls::forget(app, &conn.session.id, &job_id).await;
            }
            tracing::error!(error = %e, job_id, "enqueue failed");
            return Ok(Admission::Refused(
                Outcome::Error,
                WireError::new(
                    ErrorCode::ServiceUnavailable,
                    format!("the call could not be enqueued: {e}"),
                ),
            ));
        }
    };
    tracing::debug!(
        job_id,
        tool = tool.name(),
        created = enqueued.is_created(),
        "call enqueued"
    );
    if !single && let Err(closed) = conn.out.send(&ack(!enqueued.is_created())).await {
        conn.stop_following(&job_id);
        return Err(closed);
    }
    Ok(Admission::Following(Follow {
        job_id,
        reply_to: reply_to.clone(),
        single,
        tool: Arc::from(tool.name()),
        _slot: slot,
    }))
}

/// The size of `arguments` as JSON, as the job would carry them: without `kimi_upload_bytes`'s
/// `content_base64`, which is staged instead.
fn argument_bytes(tool: &str, arguments: &Value) -> usize {
    let size = json_bytes(arguments);
    match arguments.get("content_base64") {
        Some(content) if tool == tools::KIMI_UPLOAD_BYTES => {
            size.saturating_sub(json_bytes(content))
        }
        _ => size,
    }
}

/// The length of `value`'s compact JSON, counted without building the text.
fn json_bytes(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, nor can a `Value` fail to serialize.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// `kimi_upload_bytes`: checks the file name and the size (from the length of the base64 text,
/// before decoding), decodes the content and writes it to the staging store. `content_base64`
/// leaves the arguments; the returned reference takes its place in the job. A repeated call
/// stages the same blob again, which changes nothing (the store is content-addressed).
async fn stage_inline(app: &App, arguments: &mut Value) -> Result<StagedRef, WireError> {
    let invalid = |path: &str, e: StagingError| {
        WireError::new(
            ErrorCode::ValidationError,
            format!(
                "Invalid arguments for {}: {path}: {e}",
                tools::KIMI_UPLOAD_BYTES
            ),
        )
        .with_details(json!({"path": path}))
    };
    // The schema made both strings; anything else is refused the same way.
    let field = |arguments: &Value, name: &str| {
        arguments
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let filename = staging::plain_filename(&field(arguments, "filename"))
        .map_err(|e| invalid("/filename", e))?;
    let encoded = field(arguments, "content_base64");
    let max = app.config.uploads.max_bytes;
    let name = filename.clone();
    let bytes = tokio::task::spawn_blocking(move || staging::decode_inline(&name, &encoded, max))
        .await
        .map_err(|e| {
            WireError::new(
                ErrorCode::InternalError,
                format!("decoding content_base64 failed: {e}"),
            )
        })?
        .map_err(|e| invalid("/content_base64", e))?;
    let blob = app
        .staging
        .stage_bytes(&filename, bytes)
        .await
        .map_err(|e| {
            if e.is_transient() {
                tracing::error!(error = %exai_shared::error_chain(&e), "staging failed");
                WireError::new(
                    ErrorCode::ServiceUnavailable,
                    format!("the upload could not be staged: {e}"),
                )
            } else {
                invalid("/content_base64", e)
            }
        })?;
    if let Some(object) = arguments.as_object_mut() {
        object.remove("content_base64");
    }
    tracing::debug!(sha256 = %blob.sha256, size = blob.size, "inline upload staged");
    Ok(StagedRef {
        sha256: blob.sha256,
        size_bytes: blob.size,
    })
}

/// Finds the call `request_id` of this session: by the derived job id, or — for the random ids
/// of single-frame calls — by the job id itself.
async fn resolve(conn: &Caller, request_id: &str) -> Result<Option<(String, JobInfo)>, QueueError> {
    let queue = &conn.app.tool_calls;
    let derived = protocol::call_job_id(&conn.session.id, request_id);
    if let Some(info) = queue.job(&derived).await? {
        return Ok(Some((derived, info)));
    }
    if protocol::is_call_job_id(request_id)
        && let Some(info) = queue.job(request_id).await?
    {
        let owner = serde_json::from_slice::<ToolCallJob>(&info.payload).ok();
        let allowed =
            owner.is_some_and(|j| j.session_id == conn.session.id || j.request_id.is_none());
        if allowed {
            return Ok(Some((request_id.to_owned(), info)));
        }
    }
    Ok(None)
}

/// `job_status`, `get_result` and `cancel`.
async fn about_call(
    conn: &Caller,
    reply_to: ReplyTo,
    request_id: &str,
    request: Request,
) -> Result<ServerMessage, QueueError> {
    let found = resolve(conn, request_id).await?;
    // A waiting job's place in line (a bounded search: see `Queue::position`).
    let position = match (&request, &found) {
        (Request::JobStatus | Request::GetResult, Some((id, info)))
            if info.state == JobState::Queued =>
        {
            conn.app.tool_calls.position(id).await?
        }
        _ => None,
    };
    let status = |found: Option<&(String, JobInfo)>| {
        ServerMessage::JobStatusRes(JobStatusRes {
            reply_to: reply_to.clone(),
            state: found.map_or(CallState::Unknown, |(_, info)| call_state(info)),
            attempt: found.map_or(0, |(_, info)| info.attempts),
            job_id: found.map(|(id, _)| id.clone()),
            queue_position: position.map(|p| p.position),
            queue_position_in_key: position.and_then(|p| p.in_key),
            queue_keys_ahead: position.and_then(|p| p.keys_ahead),
            usage: found.and_then(|(_, info)| crate::answer::usage_of(info)),
        })
    };
    Ok(match request {
        Request::JobStatus => status(found.as_ref()),
        Request::GetResult => match found
            .as_ref()
            .and_then(|(id, info)| Some((id, finished(info)?)))
        {
            Some((job_id, (result, _))) => {
                let res = match result {
                    Ok(r) => CallToolRes::success(reply_to.clone(), r.outputs)
                        .with_structured(r.structured_content)
                        .with_usage(r.usage),
                    Err(e) => CallToolRes::failed(reply_to.clone(), e),
                };
                ServerMessage::CallToolRes(res.with_job_id(job_id.clone()))
            }
            None => status(found.as_ref()),
        },
        _ => {
            let not_found = || {
                ServerMessage::Error(ErrorFrame {
                    reply_to: reply_to.clone(),
                    error: WireError::new(
                        ErrorCode::NotFound,
                        format!("no call with request_id {request_id} in this session"),
                    ),
                })
            };
            let Some((job_id, _)) = found else {
                return Ok(not_found());
            };
            let was = match conn.app.tool_calls.cancel(&job_id).await? {
                CancelOutcome::Removed => {
                    // Nobody else will announce it: wake every follower of the job.
                    conn.app.events.publish(&job_id, &JobEvent::Finished).await;
                    CancelWas::Queued
                }
                CancelOutcome::Signalled => CancelWas::Running,
                CancelOutcome::AlreadyFinished => CancelWas::Finished,
                CancelOutcome::NotFound => return Ok(not_found()),
            };
            tracing::info!(job_id, was = ?was, "call cancelled");
            ServerMessage::Cancelled(Cancelled {
                reply_to: reply_to.clone(),
                was,
                job_id: Some(job_id),
            })
        }
    })
}

/// The call state `job_status_res` reports for a job.
fn call_state(info: &JobInfo) -> CallState {
    match info.state {
        JobState::Queued | JobState::Scheduled | JobState::Retrying => CallState::Queued,
        JobState::Running => CallState::Running,
        JobState::Completed => CallState::Completed,
        JobState::Dead if crate::answer::expired(info) => CallState::Expired,
        JobState::Dead => CallState::Failed,
        JobState::Cancelled => CallState::Cancelled,
    }
}
