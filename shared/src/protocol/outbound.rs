//! What the daemon sends: [`ServerMessage`] and its frames.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;
use crate::jobs::ToolContent;
use crate::usage::Usage;

// ----- outbound -------------------------------------------------------------------------------

/// The ids a reply echoes: the request's `request_id`, and `id` for single-frame clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The request's `request_id` (in single-frame call replies: the job id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The request's `id`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

impl ReplyTo {
    /// A reply to `request_id`.
    pub fn request(request_id: impl Into<String>) -> Self {
        Self {
            request_id: Some(request_id.into()),
            id: None,
        }
    }
}

/// Every frame the daemon sends, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to the hello.
    HelloAck(HelloAck),
    /// The tool listing.
    ListToolsRes(ListToolsRes),
    /// A call is durable in Redis.
    CallToolAck(CallToolAck),
    /// A call's progress (started, waiting, heartbeat).
    Progress(Progress),
    /// A piece of streamed model output.
    StreamChunk(StreamChunk),
    /// A call's result or error.
    CallToolRes(CallToolRes),
    /// A call's state.
    JobStatusRes(JobStatusRes),
    /// A cancel was carried out.
    Cancelled(Cancelled),
    /// The answer to `ping`.
    Pong(Pong),
    /// The answer to `health`.
    HealthRes(HealthRes),
    /// The answer to `queue_stats`.
    QueueStatsRes(QueueStatsRes),
    /// An error that is not a call's.
    Error(ErrorFrame),
}

impl ServerMessage {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // These types contain only strings, numbers and JSON values: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"op":"error","error":{{"code":"INTERNAL_ERROR","message":"{e}"}}}}"#)
        })
    }

    /// The frame's `op`.
    pub fn op(&self) -> ServerOp {
        match self {
            Self::HelloAck(_) => ServerOp::HelloAck,
            Self::ListToolsRes(_) => ServerOp::ListToolsRes,
            Self::CallToolAck(_) => ServerOp::CallToolAck,
            Self::Progress(_) => ServerOp::Progress,
            Self::StreamChunk(_) => ServerOp::StreamChunk,
            Self::CallToolRes(_) => ServerOp::CallToolRes,
            Self::JobStatusRes(_) => ServerOp::JobStatusRes,
            Self::Cancelled(_) => ServerOp::Cancelled,
            Self::Pong(_) => ServerOp::Pong,
            Self::HealthRes(_) => ServerOp::HealthRes,
            Self::QueueStatsRes(_) => ServerOp::QueueStatsRes,
            Self::Error(_) => ServerOp::Error,
        }
    }

    /// The `request_id` the frame carries, if any.
    pub fn request_id(&self) -> Option<&str> {
        let to = match self {
            Self::HelloAck(_) => return None,
            Self::ListToolsRes(m) => &m.reply_to,
            Self::CallToolAck(m) => &m.reply_to,
            Self::Progress(m) => &m.reply_to,
            Self::StreamChunk(m) => &m.reply_to,
            Self::CallToolRes(m) => &m.reply_to,
            Self::JobStatusRes(m) => &m.reply_to,
            Self::Cancelled(m) => &m.reply_to,
            Self::Pong(m) => &m.reply_to,
            Self::HealthRes(m) => &m.reply_to,
            Self::QueueStatsRes(m) => &m.reply_to,
            Self::Error(m) => &m.reply_to,
        };
        to.request_id.as_deref()
    }
}

/// `hello_ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    /// Whether the hello was accepted.
    pub ok: bool,
    /// The session (as given, or generated) when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When accepted: the secret that resumes this session (a later hello sends it with
    /// `session_id`). Issued with each new session; a resumed session keeps its secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_secret: Option<String>,
    /// Why the hello was refused (a [`HelloError`]: `unauthorized` or `missing_hello`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `unauthorized`: which token problem it was (a [`HelloDetail`]: `token_missing` or
    /// `token_wrong`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `list_tools_res`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListToolsRes {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// `{name, description, inputSchema}` per tool.
    pub tools: Vec<Value>,
}

/// `call_tool_ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallToolAck {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// Always true (a refused call gets a `call_tool_res` with an error instead).
    pub accepted: bool,
    /// The job id (for `get_result` by job id, and operators).
    pub job_id: String,
    /// Seconds until the call's deadline.
    pub timeout: f64,
    /// The tool (normalised name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// True when the request id had been used before in this session: the call attached to
    /// the existing job instead of creating one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// A human-readable note.
    #[serde(default)]
    pub message: String,
    /// `queued`, `running`, `waiting`, `retrying`, … (the call's state as the daemon sees it).
    #[serde(default)]
    pub state: String,
    /// When (Unix seconds).
    #[serde(default)]
    pub t: f64,
}

/// `stream_chunk`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// The text.
    pub chunk: String,
}

/// `call_tool_res`: `outputs`, `result` (the same items) and `text` (joined), or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallToolRes {
    /// The request's ids (single-frame: `id`, and the job id as `request_id`).
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// The content items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<ToolContent>>,
    /// The same items (what the stdio shim reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Vec<ToolContent>>,
    /// The items' texts joined by newlines (what older clients prefer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Why the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    /// The job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The text was cut to keep the frame under 1 MiB; `get_result` returns all of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The result as one JSON value, when the tool returned one (an upstream MCP tool's
    /// `structuredContent`).
    #[serde(
        default,
        rename = "structuredContent",
        skip_serializing_if = "Option::is_none"
    )]
    pub structured_content: Option<serde_json::Value>,
    /// The tokens the call's provider calls consumed, when it made any that reported usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl CallToolRes {
    /// The same result with `structuredContent`.
    pub fn with_structured(mut self, structured: Option<serde_json::Value>) -> Self {
        self.structured_content = structured;
        self
    }

    /// The same result with `usage`.
    pub fn with_usage(mut self, usage: Option<Usage>) -> Self {
        self.usage = usage;
        self
    }

    /// A successful result.
    pub fn success(reply_to: ReplyTo, outputs: Vec<ToolContent>) -> Self {
        let text = outputs
            .iter()
            .map(|o| o.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        Self {
            reply_to,
            result: Some(outputs.clone()),
            outputs: Some(outputs),
            text: Some(text),
            error: None,
            job_id: None,
            truncated: false,
            structured_content: None,
            usage: None,
        }
    }

    /// A failed call.
    pub fn failed(reply_to: ReplyTo, error: WireError) -> Self {
        Self {
            reply_to,
            outputs: None,
            result: None,
            text: None,
            error: Some(error),
            job_id: None,
            truncated: false,
            structured_content: None,
            usage: None,
        }
    }

    /// Sets the job id.
    pub fn with_job_id(mut self, job_id: impl Into<String>) -> Self {
        self.job_id = Some(job_id.into());
        self
    }
}

/// The state of a call as `job_status_res` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Waiting to run (queued, scheduled, or waiting out a retry backoff).
    Queued,
    /// Running on a worker.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished with an error (dead).
    Failed,
    /// Cancelled.
    Cancelled,
    /// Still queued past its deadline: ended without running.
    Expired,
    /// No such call in this session (never made, or expired).
    Unknown,
}

every_variant!(CallState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Expired,
    Unknown,
});

/// `job_status_res`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatusRes {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// The call's state.
    pub state: CallState,
    /// Attempts started so far.
    #[serde(default)]
    pub attempt: u32,
    /// The job id, when there is a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// A queued job's place in line: 1 for the next job a worker takes. Absent when the job is
    /// not waiting, or deeper than the bounded search (`queue::POSITION_SCAN_MAX` jobs).
    /// For a call of a session or tenant whose calls take turns (fair share): the most jobs
    /// that start before it, counting one job per waiting key each turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    /// A completed call's token usage, when its provider calls reported any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Fair share: the call's place among its own key's waiting calls (1 = its key's next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position_in_key: Option<u64>,
    /// Fair share: the keys served before the call's key takes its next turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_keys_ahead: Option<u64>,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelWas {
    /// The job was waiting and is now cancelled.
    Queued,
    /// The job was running; its worker was told to stop.
    Running,
    /// The job had already finished.
    Finished,
}

every_variant!(CancelWas {
    Queued,
    Running,
    Finished,
});

/// `cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// What the cancel found.
    pub was: CancelWas,
    /// The job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// `pong`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
}

/// `health_res`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRes {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// Whether the daemon can serve calls (Redis answered).
    pub ok: bool,
    /// Queues, semaphores, connections, uptime.
    pub health: Value,
}

/// `queue_stats_res`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatsRes {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// Counts per state of every queue, by queue name.
    pub queues: Value,
    /// Limit and use of every semaphore, by name.
    pub semaphores: Value,
}

/// `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The request's ids.
    #[serde(flatten)]
    pub reply_to: ReplyTo,
    /// What went wrong.
    pub error: WireError,
}
