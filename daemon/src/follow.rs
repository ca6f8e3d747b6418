//! The follower of one enqueued call ([`Follow`]): relays the job's progress to the client and
//! produces the call's last frame.
//!
//! # Following a job
//! A follower subscribes to the job's events *first* and reads the job's durable state from
//! the queue *second*, so a result stored before the subscription is read rather than missed.
//! After that it re-reads on every `Finished` event (and after a relay reconnect), on every
//! progress tick, and at the call's deadline. Events in between become `progress` and
//! `stream_chunk` frames (streaming mode only); a tick while the job waits in a paused queue
//! says so (`queue tool_calls is paused; …`). The follower ends with exactly one
//! `call_tool_res`; if the connection goes first, the job goes on and its result stays in
//! Redis for `get_result`, a repeated `call_tool`, or another connection of the session.

use std::sync::Arc;
use std::time::Duration;

use exai_shared::events::JobEvent;
use exai_shared::jobs::ToolCallJob;
use exai_shared::protocol::{
    CallToolRes, ErrorCode, Progress, ReplyTo, ServerMessage, StreamChunk, WireError,
};
use exai_shared::queue::{CancelOutcome, JobInfo, JobState};
use serde_json::json;
use tokio::time::Instant;

use crate::answer::{Answer, call_error, finished, single_frame};
use crate::app::{App, unix_ms, unix_secs};
use crate::caller::Caller;
use crate::metrics::Outcome;
use crate::outbox::Closed;
use crate::relay::RelayEvent;
use crate::session::CallSlot;

/// The shortest progress interval honoured (a zero `EXAI_WS_PROGRESS_INTERVAL_SECS` would spin).
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// One call being waited on.
pub(crate) struct Follow {
    /// The call's job.
    pub(crate) job_id: String,
    /// The request's ids, echoed in streaming mode; in single-frame mode only `id` is echoed
    /// and the job id goes out as `request_id`.
    pub(crate) reply_to: ReplyTo,
    /// Whether the client gets exactly one frame (no ack, no progress).
    pub(crate) single: bool,
    /// The tool called (its registered or catalogued name).
    pub(crate) tool: Arc<str>,
    /// The call's place in the session's in-flight count, given back when the follow is
    /// dropped.
    pub(crate) _slot: CallSlot,
}

impl Follow {
    /// Follows the job until it ends or the connection goes; returns how the call ended and
    /// the call's last frame (none when the client left first).
    pub(crate) async fn run(&self, conn: &Caller) -> (Outcome, Option<String>) {
        match self.follow(conn).await {
            Ok((answer, outcome)) => (outcome, Some(self.last_frame(answer))),
            Err(Closed) => (Outcome::Detached, None),
        }
    }

    async fn progress(&self, conn: &Caller, message: &str, state: &str) -> Result<(), Closed> {
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

    /// The call's one `call_tool_res`.
    fn last_frame(&self, result: Answer) -> String {
        if !self.single {
            let res = match result {
                Ok(r) => CallToolRes::success(self.reply_to.clone(), r.outputs)
                    .with_structured(r.structured_content)
                    .with_usage(r.usage),
                Err(e) => CallToolRes::failed(self.reply_to.clone(), e),
            };
            return ServerMessage::CallToolRes(res.with_job_id(&self.job_id)).to_json();
        }
        let reply_to = ReplyTo {
            request_id: Some(self.job_id.clone()),
            id: self.reply_to.id.clone(),
        };
        match result {
            Ok(r) => single_frame(reply_to, r.outputs, &self.job_id),
            Err(e) => ServerMessage::CallToolRes(call_error(reply_to, true, e)).to_json(),
        }
    }

    /// Waits for the job to finish (see the module docs), relaying progress; returns the answer
    /// to deliver and how the call ended.
    async fn follow(&self, conn: &Caller) -> Result<(Answer, Outcome), Closed> {
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
                        "Tool execution in progress...".to_owned()
                    } else {
                        waiting_message(app).await
                    };
                    self.progress(conn, &message, announced).await?;
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

/// The heartbeat of a call that waits in its queue: why it waits when an operator paused the
/// queue (`queue tool_calls is paused; …`), else that it waits for a worker. Asked at each
/// progress tick only, so a call that runs at once costs no extra round trip.
async fn waiting_message(app: &App) -> String {
    match app.tool_calls.is_paused().await {
        Ok(true) => {
            let name = app.tool_calls.name();
            format!(
                "queue {name} is paused; the call waits until it is resumed (exai-worker queue resume {name})"
            )
        }
        Ok(false) => "Waiting for a worker...".to_owned(),
        Err(e) => {
            tracing::debug!(error = %e, "could not read whether the queue is paused");
            "Waiting for a worker...".to_owned()
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
