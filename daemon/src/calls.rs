//! The requests of a connection: the simple ones answered at once, and the ones about jobs —
//! `call_tool` (validate, stage `kimi_upload_bytes` content, enqueue durably, ack, then follow
//! the job until its result), and
//! `get_result`, `job_status`, `cancel`, which find a session's call by its request id.
//!
//! # Following a job
//! A follower subscribes to the job's events *first* and reads the job's durable state from
//! the queue *second*, so a result stored before the subscription is read rather than missed.
//! After that it re-reads on every `Finished` event (and after a relay reconnect), on every
//! progress tick, and at the call's deadline. Events in between become `progress` and
//! `stream_chunk` frames (streaming mode only). The follower ends with exactly one
//! `call_tool_res`; if the connection goes first, the job goes on and its result stays in
//! Redis for `get_result`, a repeated `call_tool`, or another connection of the session.
//!
//! # Finding a call
//! Streaming calls have the job id `call_job_id(session, request_id)`, so a session finds its
//! calls by request id and never another session's. A single-frame call's job id is random and
//! is sent to its client as `request_id`; `get_result` with that id finds it from any session
//! (the id is the capability: it is unguessable and only ever sent to the caller).

use std::sync::Arc;
use std::time::Duration;

use exai_shared::events::JobEvent;
use exai_shared::jobs::{StagedRef, ToolCallJob, ToolContent, ToolResult};
use exai_shared::protocol::{
    self, CallState, CallTool, CallToolAck, CallToolRes, CancelWas, Cancelled, ErrorCode,
    ErrorFrame, HealthRes, Inbound, JobStatusRes, ListToolsRes, Pong, Progress, QueueStatsRes,
    ReplyTo, Request, ServerMessage, StreamChunk, WireError,
};
use exai_shared::queue::{CancelOutcome, JobInfo, JobState, NewJob, QueueError};
use exai_shared::staging::{self, StagingError};
use exai_shared::tools;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::connection::{Closed, Conn};
use crate::metrics::Outcome;
use crate::relay::RelayEvent;
use crate::server::{App, unix_ms, unix_secs};
use crate::session::CallSlot;

/// The largest frame a single-frame reply may be: under the stdio shim's 1 MiB message limit,
/// with room to spare.
pub const SINGLE_FRAME_MAX_BYTES: usize = 1_000_000;

/// The shortest progress interval honoured (a zero `EXAI_WS_PROGRESS_INTERVAL_SECS` would spin).
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Handles one request. Fails only when the connection is gone.
pub(crate) async fn dispatch(conn: &Arc<Conn>, inbound: Inbound) -> Result<(), Closed> {
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
            tools: tools::all().iter().map(tools::Tool::listing).collect(),
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
            let (ok, health) = app.health().await;
            ServerMessage::HealthRes(HealthRes {
                reply_to,
                ok,
                health,
            })
        }
        Request::QueueStats => match (app.queue_counts().await, app.semaphore_states().await) {
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

/// An error reply to a call: a `call_tool_res` with `error`; a single-frame client also gets the
/// error as `result` text, since that is all the stdio shim reads.
fn call_error(reply_to: ReplyTo, single: bool, error: WireError) -> CallToolRes {
    let mut res = CallToolRes::failed(reply_to, error.clone());
    if single {
        let items = vec![ToolContent::text(format!(
            "Error: {}: {}",
            error.code, error.message
        ))];
        res.outputs = Some(items.clone());
        res.result = Some(items);
    }
    res
}

/// `call_tool`: validate, enqueue durably, ack (streaming), then follow in a task of its own.
async fn call_tool(conn: &Arc<Conn>, reply_to: ReplyTo, call: CallTool) -> Result<(), Closed> {
    let app = &conn.app;
    // Streaming iff the request has a request_id; anything else gets exactly one frame.
    let single = reply_to.request_id.is_none();
    let refuse =
        |error: WireError| ServerMessage::CallToolRes(call_error(reply_to.clone(), single, error));
    let Some(tool) = tools::find(&call.name) else {
        app.metrics.call(&call.name, Outcome::Invalid);
        return conn
            .out
            .send(&refuse(WireError::new(
                ErrorCode::ToolNotFound,
                format!("Tool not found: {}", tools::normalize_name(&call.name)),
            )))
            .await;
    };
    if let Err(e) = tool.validate(&call.arguments) {
        app.metrics.call(tool.name, Outcome::Invalid);
        let errors: Vec<Value> = e
            .all
            .iter()
            .map(|(path, message)| json!({"path": if path.is_empty() { "/" } else { path }, "message": message}))
            .collect();
        return conn
            .out
            .send(&refuse(
                WireError::new(
                    ErrorCode::ValidationError,
                    format!(
                        "Invalid arguments for {}: {}: {}",
                        tool.name, e.path, e.message
                    ),
                )
                .with_details(json!({"path": e.path, "errors": errors})),
            ))
            .await;
    }

    // Inline upload bytes go to the staging store now; the job carries only their hash.
    let mut arguments = call.arguments;
    let staged = if tool.name == tools::KIMI_UPLOAD_BYTES {
        match stage_inline(app, &mut arguments).await {
            Ok(staged) => Some(staged),
            Err(error) => {
                let outcome = if error.code == ErrorCode::ValidationError {
                    Outcome::Invalid
                } else {
                    Outcome::Error
                };
                app.metrics.call(tool.name, outcome);
                return conn.out.send(&refuse(error)).await;
            }
        }
    } else {
        None
    };

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
            name: Some(tool.name.to_owned()),
            duplicate,
        })
    };
    if !conn.start_following(&job_id) {
        // This connection already waits on the call: its result will come once.
        return conn.out.send(&ack(true)).await;
    }
    let Some(slot) = conn
        .session
        .try_reserve(app.limits.max_inflight_per_session)
    else {
        conn.stop_following(&job_id);
        app.metrics.call(tool.name, Outcome::OverCapacity);
        let max = app.limits.max_inflight_per_session;
        return conn
            .out
            .send(&refuse(
                WireError::new(
                    ErrorCode::OverCapacity,
                    format!(
                        "Session concurrency limit reached ({max} calls in flight); retry when one finishes"
                    ),
                )
                .with_details(json!({"limit": max, "retry_after": 1})),
            ))
            .await;
    };

    let job = ToolCallJob {
        tool: tool.name.to_owned(),
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
    let enqueued = match NewJob::json(&job) {
        Ok(new) => app.tool_calls.enqueue(&new.with_id(job_id.clone())).await,
        Err(e) => Err(e),
    };
    app.metrics.enqueue_took(started.elapsed().as_secs_f64());
    let enqueued = match enqueued {
        Ok(e) => e,
        Err(e) => {
            conn.stop_following(&job_id);
            app.metrics.call(tool.name, Outcome::Error);
            tracing::error!(error = %e, job_id, "enqueue failed");
            return conn
                .out
                .send(&refuse(WireError::new(
                    ErrorCode::ServiceUnavailable,
                    format!("the call could not be enqueued: {e}"),
                )))
                .await;
        }
    };
    tracing::debug!(
        job_id,
        tool = tool.name,
        created = enqueued.is_created(),
        "call enqueued"
    );
    if !single && let Err(closed) = conn.out.send(&ack(!enqueued.is_created())).await {
        conn.stop_following(&job_id);
        return Err(closed);
    }
    let follow = Follow {
        job_id,
        reply_to,
        single,
        tool: tool.name,
        _slot: slot,
    };
    let task_conn = conn.clone();
    conn.tasks.spawn(async move { follow.run(task_conn).await });
    Ok(())
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

/// What a call's `call_tool_res` carries: the outputs, or the error.
type Answer = Result<Vec<ToolContent>, WireError>;

/// One call being waited on.
struct Follow {
    job_id: String,
    /// The request's ids, echoed in streaming mode; in single-frame mode only `id` is echoed
    /// and the job id goes out as `request_id`.
    reply_to: ReplyTo,
    single: bool,
    tool: &'static str,
    /// The call's place in the session's in-flight count, given back when the follow ends.
    _slot: CallSlot,
}

impl Follow {
    async fn run(self, conn: Arc<Conn>) {
        let _in_flight = conn.app.metrics.call_in_flight();
        match self.follow(&conn).await {
            Ok((answer, outcome)) => {
                // Counted before it is sent, so a client that saw the answer sees the count.
                conn.app.metrics.call(self.tool, outcome);
                if self.deliver(&conn, answer).await.is_err() {
                    tracing::debug!(job_id = %self.job_id, "the client left before the answer");
                }
            }
            Err(Closed) => conn.app.metrics.call(self.tool, Outcome::Detached),
        }
        conn.stop_following(&self.job_id);
    }

    async fn progress(&self, conn: &Conn, message: &str, state: &str) -> Result<(), Closed> {
        if self.single {
            return Ok(());
        }
        conn.out
            .send(&ServerMessage::Progress(Progress {
                reply_to: self.reply_to.clone(),
                message: message.to_owned(),
                state: state.to_owned(),
                t: unix_secs(),
            }))
            .await
    }

    /// Sends the call's one `call_tool_res`.
    async fn deliver(&self, conn: &Conn, result: Answer) -> Result<(), Closed> {
        if !self.single {
            let res = match result {
                Ok(outputs) => CallToolRes::success(self.reply_to.clone(), outputs),
                Err(e) => CallToolRes::failed(self.reply_to.clone(), e),
            };
            return conn
                .out
                .send(&ServerMessage::CallToolRes(res.with_job_id(&self.job_id)))
                .await;
        }
        let reply_to = ReplyTo {
            request_id: Some(self.job_id.clone()),
            id: self.reply_to.id.clone(),
        };
        let text = match result {
            Ok(outputs) => single_frame(reply_to, outputs, &self.job_id),
            Err(e) => ServerMessage::CallToolRes(call_error(reply_to, true, e)).to_json(),
        };
        conn.out.send_text(text).await
    }

    /// Waits for the job to finish (see the module docs), relaying progress; returns the answer
    /// to deliver and how the call ended.
    async fn follow(&self, conn: &Conn) -> Result<(Answer, Outcome), Closed> {
        let app = &conn.app;
        let mut watch = Some(app.relay.watch(&self.job_id).await);
        let start = Instant::now();
        let single_deadline = self.single.then(|| start + app.limits.single_frame_timeout);
        let every = app.config.ws.progress_interval.max(MIN_PROGRESS_INTERVAL);
        let mut ticker = tokio::time::interval_at(start + every, every);
        // The state last announced to the client; the ack said "queued".
        let mut announced = "queued";
        let mut deadline_ms: Option<u64> = None;
        let mut recheck = true;
        let mut heartbeat = false;
        loop {
            if recheck {
                recheck = false;
                match app.tool_calls.job(&self.job_id).await {
                    Ok(None) => {
                        let gone = WireError::new(
                            ErrorCode::NotFound,
                            "the call's job no longer exists (it expired or was removed)",
                        );
                        return Ok((Err(gone), Outcome::Lost));
                    }
                    Ok(Some(info)) => {
                        if let Some(done) = finished(&info) {
                            return Ok(done);
                        }
                        if deadline_ms.is_none() {
                            deadline_ms = serde_json::from_slice::<ToolCallJob>(&info.payload)
                                .ok()
                                .and_then(|j| j.deadline_ms);
                        }
                        if deadline_ms.is_some_and(|d| unix_ms() >= d) {
                            match app.tool_calls.cancel(&self.job_id).await {
                                Ok(CancelOutcome::AlreadyFinished) => {
                                    // It just finished: deliver that instead.
                                    recheck = true;
                                    continue;
                                }
                                Ok(CancelOutcome::Removed) => {
                                    app.events.publish(&self.job_id, &JobEvent::Finished).await;
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, job_id = %self.job_id, "could not cancel a call past its deadline");
                                }
                            }
                            let secs = app.limits.call_timeout.as_secs_f64();
                            let late = WireError::new(
                                ErrorCode::Timeout,
                                format!(
                                    "call_tool exceeded its {secs}s deadline and was cancelled"
                                ),
                            );
                            return Ok((Err(late), Outcome::Timeout));
                        }
                        let state = progress_state(info.state);
                        if state != announced {
                            announced = state;
                            heartbeat = false;
                            self.progress(conn, &state_message(&info), state).await?;
                        }
                    }
                    Err(e) => {
                        // Redis is unreachable for now: try again at the next tick.
                        tracing::warn!(error = %e, job_id = %self.job_id, "could not read a followed job");
                    }
                }
                if heartbeat {
                    heartbeat = false;
                    let message = if announced == "running" {
                        "Tool execution in progress..."
                    } else {
                        "Waiting for a worker..."
                    };
                    self.progress(conn, message, announced).await?;
                }
            }
            let deadline_at = deadline_ms
                .map(|d| Instant::now() + Duration::from_millis(d.saturating_sub(unix_ms())));
            let event = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = conn.cancel.cancelled() => return Err(Closed),
                event = event => match event {
                    Some(RelayEvent::Job(JobEvent::Started { attempt })) => {
                        if announced != "running" {
                            announced = "running";
                            self.progress(conn, &format!("Tool execution started (attempt {attempt})"), "running").await?;
                        }
                    }
                    Some(RelayEvent::Job(JobEvent::Progress { message, state })) => {
                        self.progress(conn, &message, &state).await?;
                    }
                    Some(RelayEvent::Job(JobEvent::Chunk { chunk })) => {
                        if !self.single {
                            conn.out
                                .send(&ServerMessage::StreamChunk(StreamChunk {
                                    reply_to: self.reply_to.clone(),
                                    chunk,
                                }))
                                .await?;
                        }
                    }
                    Some(RelayEvent::Job(JobEvent::Finished) | RelayEvent::Resync) => recheck = true,
                    None => {
                        // The relay stopped (the daemon is shutting down): poll on the ticker.
                        watch = None;
                    }
                },
                _ = ticker.tick() => {
                    recheck = true;
                    heartbeat = true;
                }
                _ = sleep_until_opt(deadline_at) => recheck = true,
                _ = sleep_until_opt(single_deadline) => {
                    let secs = app.limits.single_frame_timeout.as_secs_f64();
                    let waited = WireError::new(
                        ErrorCode::Timeout,
                        format!(
                            "The call is still running after {secs}s. Its job id is {id}; fetch the result later with {{\"op\":\"get_result\",\"request_id\":\"{id}\"}}",
                            id = self.job_id
                        ),
                    )
                    .with_details(json!({"job_id": self.job_id, "still_running": true}));
                    return Ok((Err(waited), Outcome::Timeout));
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The state a `progress` frame reports for a job that has not finished.
fn progress_state(state: JobState) -> &'static str {
    match state {
        JobState::Running => "running",
        JobState::Retrying => "retrying",
        _ => "queued",
    }
}

fn state_message(info: &JobInfo) -> String {
    match info.state {
        JobState::Running => format!("Tool execution started (attempt {})", info.attempts),
        JobState::Retrying => format!(
            "The tool failed; retrying (attempt {} of {}): {}",
            info.attempts,
            info.max_attempts,
            info.errors
                .last()
                .map(|e| e.message.as_str())
                .unwrap_or("error")
        ),
        _ => "Waiting for a worker...".to_owned(),
    }
}

/// The outcome of a finished job: its outputs, or the error to send.
fn finished(info: &JobInfo) -> Option<(Answer, Outcome)> {
    let last_error = || {
        info.dead_reason
            .clone()
            .or_else(|| info.errors.last().map(|e| e.message.clone()))
    };
    match info.state {
        JobState::Completed => Some((Ok(outputs_of(info.result.as_deref())), Outcome::Completed)),
        JobState::Dead => Some((
            Err(WireError::new(
                ErrorCode::ToolExecutionError,
                format!(
                    "Tool execution failed: {}",
                    last_error().unwrap_or_else(|| "unknown error".to_owned())
                ),
            )
            .with_details(json!({"attempts": info.attempts}))),
            Outcome::Failed,
        )),
        JobState::Cancelled => Some((
            Err(WireError::new(
                ErrorCode::Cancelled,
                match last_error() {
                    Some(e) => format!("The call was cancelled ({e})"),
                    None => "The call was cancelled".to_owned(),
                },
            )),
            Outcome::Cancelled,
        )),
        _ => None,
    }
}

/// The content items of a stored result: a [`ToolResult`], or any other JSON as one text item.
fn outputs_of(stored: Option<&[u8]>) -> Vec<ToolContent> {
    let Some(bytes) = stored else {
        return Vec::new();
    };
    if let Ok(r) = serde_json::from_slice::<ToolResult>(bytes) {
        return r.outputs;
    }
    let text = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    vec![ToolContent::text(text)]
}

/// The single-frame reply (`result` and `outputs`, no `text`), cut to [`SINGLE_FRAME_MAX_BYTES`]
/// with a note saying how to fetch all of it.
fn single_frame(reply_to: ReplyTo, outputs: Vec<ToolContent>, job_id: &str) -> String {
    let frame = |items: Vec<ToolContent>, truncated: bool| {
        let mut res = CallToolRes::success(reply_to.clone(), items).with_job_id(job_id);
        res.text = None;
        res.truncated = truncated;
        ServerMessage::CallToolRes(res).to_json()
    };
    let whole = frame(outputs.clone(), false);
    if whole.len() <= SINGLE_FRAME_MAX_BYTES {
        return whole;
    }
    let full: String = outputs
        .iter()
        .map(|o| o.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let note = format!(
        "\n\n[Result cut to fit one frame: {} bytes in all. Fetch the whole result with {{\"op\":\"get_result\",\"request_id\":\"{job_id}\"}}]",
        full.len()
    );
    // The text appears twice (result and outputs); JSON escaping may grow it, so shrink until
    // the frame fits.
    let mut budget = SINGLE_FRAME_MAX_BYTES / 2;
    loop {
        let mut end = budget.min(full.len());
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        let text = format!("{}{note}", &full[..end]);
        let out = frame(vec![ToolContent::text(text)], true);
        if out.len() <= SINGLE_FRAME_MAX_BYTES || end == 0 {
            return out;
        }
        let ratio = SINGLE_FRAME_MAX_BYTES as f64 / out.len() as f64;
        budget = ((end as f64) * ratio * 0.98) as usize;
    }
}

/// Finds the call `request_id` of this session: by the derived job id, or — for the random ids
/// of single-frame calls — by the job id itself.
async fn resolve(conn: &Conn, request_id: &str) -> Result<Option<(String, JobInfo)>, QueueError> {
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
    conn: &Conn,
    reply_to: ReplyTo,
    request_id: &str,
    request: Request,
) -> Result<ServerMessage, QueueError> {
    let found = resolve(conn, request_id).await?;
    // A waiting job's place in line (a bounded search: see `Queue::wait_position`).
    let queue_position = match (&request, &found) {
        (Request::JobStatus | Request::GetResult, Some((id, info)))
            if info.state == JobState::Queued =>
        {
            conn.app.tool_calls.wait_position(id).await?
        }
        _ => None,
    };
    let status = |found: Option<&(String, JobInfo)>| {
        ServerMessage::JobStatusRes(JobStatusRes {
            reply_to: reply_to.clone(),
            state: found.map_or(CallState::Unknown, |(_, info)| call_state(info.state)),
            attempt: found.map_or(0, |(_, info)| info.attempts),
            job_id: found.map(|(id, _)| id.clone()),
            queue_position,
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
                    Ok(outputs) => CallToolRes::success(reply_to.clone(), outputs),
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

/// The call state `job_status_res` reports for a job state.
fn call_state(state: JobState) -> CallState {
    match state {
        JobState::Queued | JobState::Scheduled | JobState::Retrying => CallState::Queued,
        JobState::Running => CallState::Running,
        JobState::Completed => CallState::Completed,
        JobState::Dead => CallState::Failed,
        JobState::Cancelled => CallState::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_single_frame_result_is_cut_under_the_limit_with_a_note() {
        let reply_to = ReplyTo {
            request_id: Some("call-x".into()),
            id: Some(json!("call_1")),
        };
        // Quotes double in JSON: the worst case for the size estimate.
        let long = "\"é".repeat(600_000);
        let out = single_frame(reply_to.clone(), vec![ToolContent::text(long)], "call-x");
        assert!(out.len() <= SINGLE_FRAME_MAX_BYTES, "{}", out.len());
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["truncated"], true);
        assert_eq!(v["id"], "call_1");
        let text = v["result"][0]["text"].as_str().unwrap();
        assert!(text.contains(r#"{"op":"get_result","request_id":"call-x"}"#));
        assert_eq!(v["result"], v["outputs"]);

        let short = single_frame(reply_to, vec![ToolContent::text("hi")], "call-x");
        let v: Value = serde_json::from_str(&short).unwrap();
        assert_eq!(v["result"][0]["text"], "hi");
        assert!(v.get("truncated").is_none());
        assert!(v.get("text").is_none());
    }

    #[test]
    fn stored_results_of_any_shape_become_outputs() {
        let r = serde_json::to_vec(&ToolResult::text("x")).unwrap();
        assert_eq!(outputs_of(Some(&r)), vec![ToolContent::text("x")]);
        assert_eq!(
            outputs_of(Some(br#"{"a":1}"#)),
            vec![ToolContent::text(r#"{"a":1}"#)]
        );
        assert_eq!(outputs_of(Some(b"\"s\"")), vec![ToolContent::text("s")]);
        assert!(outputs_of(None).is_empty());
    }
}
