//! Job payloads (what is serialized into a queue) and the error type every handler returns.
//!
//! Payloads are JSON. New fields get `#[serde(default)]` so that a worker of the next version
//! reads jobs enqueued by this one and the other way round.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::usage::Usage;

/// A tool call, enqueued on `tool_calls` by the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallJob {
    /// The tool's registered name (suffixes such as `_EXAI-WS` already stripped).
    pub tool: String,
    /// The arguments, already validated against the tool's input schema.
    #[serde(default)]
    pub arguments: serde_json::Value,
    /// The client session that made the call.
    #[serde(default)]
    pub session_id: String,
    /// The client's request id, when it sent one.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Unix milliseconds after which the result is of no use to anyone.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Upload bytes the daemon already wrote to the staging store (`kimi_upload_bytes`): the
    /// arguments then carry no `content_base64`, and the worker reads the blob by its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<StagedRef>,
}

/// A reference to a blob of the staging store: what travels in a job instead of the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRef {
    /// Lowercase hex sha256 of the bytes: the blob's name.
    pub sha256: String,
    /// Size in bytes (checked against the blob when it is read).
    pub size_bytes: u64,
}

/// A scheduled or manual orphan cleanup, enqueued on `cleanup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanupJob {
    /// The cron tick (unix seconds) this run belongs to; 0 for a manual run.
    #[serde(default)]
    pub tick: u64,
    /// Report what would be removed without removing anything.
    #[serde(default)]
    pub dry_run: bool,
}

/// An upload of staged bytes to a provider, enqueued on `uploads` (by the daemon once the bytes
/// are in the staging store, or by a worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadJob {
    /// Lowercase hex sha256 of the bytes: the staged blob's name.
    pub sha256: String,
    /// The name to upload the file as.
    pub filename: String,
    /// Size in bytes (checked against the staged blob).
    pub size_bytes: u64,
    /// The provider purpose (`file-extract`).
    #[serde(default = "default_purpose")]
    pub purpose: String,
    /// The provider (`kimi`: Moonshot is the only file provider).
    #[serde(default = "default_provider")]
    pub provider: String,
    /// The MIME type, when known (else guessed from the filename).
    #[serde(default)]
    pub mime_type: Option<String>,
}

fn default_purpose() -> String {
    "file-extract".to_owned()
}

fn default_provider() -> String {
    "kimi".to_owned()
}

/// A push of an uploaded file's bytes to Supabase Storage, enqueued on `storage_push` with the
/// id [`StoragePushJob::job_id`] so that re-enqueueing it cannot create a second job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoragePushJob {
    /// The `provider_file_uploads` row whose bytes to push.
    pub row_id: uuid::Uuid,
}

impl StoragePushJob {
    /// The deterministic job id of the first push of a row: `push-<row id>`.
    pub fn job_id(row_id: uuid::Uuid) -> String {
        format!("push-{row_id}")
    }

    /// The job id of a re-drive of a row that has already spent `storage_attempts` attempts:
    /// `push-<row id>-r<attempts>`, so re-driving twice before it runs enqueues one job.
    pub fn redrive_job_id(row_id: uuid::Uuid, storage_attempts: i32) -> String {
        format!("push-{row_id}-r{storage_attempts}")
    }
}

/// What an upload returns, per file (the `uploads` job's result, and each item of the
/// `kimi_upload_files` / `kimi_upload_bytes` tool results).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadedFile {
    /// The file's name.
    pub filename: String,
    /// The provider's file id (Moonshot `file.id`).
    pub file_id: String,
    /// Lowercase hex sha256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Whether an earlier upload of the same bytes was reused.
    pub deduplicated: bool,
    /// The row's status: `storage_pending` (the push continues in the background),
    /// `completed`, or `storage_failed`.
    pub storage_status: String,
    /// The `provider_file_uploads` row.
    #[serde(default)]
    pub row_id: Option<uuid::Uuid>,
}

/// Why a job did not succeed; the variant *is* the retry policy.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt after the queue's backoff (timeouts, 5xx, connection errors).
    #[error("{0}")]
    Transient(String),
    /// Worth another attempt, but not before the given wait (a 429 that names its wait).
    #[error("{message} (retry after {after:?})")]
    RetryAfter {
        /// What happened.
        message: String,
        /// The wait the other side asked for.
        after: Duration,
    },
    /// No attempt can succeed (bad input, auth, 4xx, quota): the job goes dead at once.
    #[error("{0}")]
    Permanent(String),
    /// The job could not start (no semaphore permit within its wait, or the worker is shutting
    /// down): put it back after `after` without counting the attempt.
    #[error("put back: {reason}")]
    PutBack {
        /// Why it was put back.
        reason: String,
        /// How long before it may run again.
        after: Duration,
    },
    /// The job was cancelled (by a client, or because its lease was lost).
    #[error("cancelled: {0}")]
    Cancelled(String),
}

/// How the reason of a job that expired before it ran begins (see [`JobError::expired`]).
pub const EXPIRED_REASON: &str = "expired:";

/// Whether a dead job's reason (or its last error) says it expired before it ran. The queue
/// records a permanent error's reason as `permanent error: <message>`.
pub fn is_expired_reason(reason: &str) -> bool {
    reason
        .strip_prefix("permanent error: ")
        .unwrap_or(reason)
        .starts_with(EXPIRED_REASON)
}

/// How the reason of an upstream MCP call that was interrupted begins (see
/// [`JobError::interrupted`]).
pub const INTERRUPTED_REASON: &str = "interrupted:";

/// Whether a dead job's reason (or its last error) says its call was interrupted.
pub fn is_interrupted_reason(reason: &str) -> bool {
    reason
        .strip_prefix("permanent error: ")
        .unwrap_or(reason)
        .starts_with(INTERRUPTED_REASON)
}

impl JobError {
    /// An upstream MCP call that an earlier attempt (or this one) may have run, of a tool that is
    /// neither read-only nor idempotent: it is not run again, and its job ends at once with a
    /// reason [`is_interrupted_reason`] recognises.
    pub fn interrupted(why: impl std::fmt::Display) -> Self {
        Self::Permanent(format!("{INTERRUPTED_REASON} {why}"))
    }

    /// A tool call taken `late_ms` past its deadline: it is not run, and its job ends at once
    /// (no retry) with a reason [`is_expired_reason`] recognises.
    pub fn expired(late_ms: u64) -> Self {
        Self::Permanent(format!(
            "{EXPIRED_REASON} the call's deadline passed {late_ms} ms before a worker took it; it was not run"
        ))
    }

    /// A transient error from anything displayable.
    pub fn transient(e: impl std::fmt::Display) -> Self {
        Self::Transient(e.to_string())
    }

    /// A permanent error from anything displayable.
    pub fn permanent(e: impl std::fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }
}

/// What a tool call returns: MCP content items (the daemon relays them as `outputs`), and for an
/// upstream MCP tool its `structuredContent` and whether it reported a failure (`isError`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The content items, in order.
    pub outputs: Vec<ToolContent>,
    /// The result as one JSON value, when the tool returned one (`structuredContent`).
    #[serde(
        default,
        rename = "structuredContent",
        skip_serializing_if = "Option::is_none"
    )]
    pub structured_content: Option<serde_json::Value>,
    /// The tool ran and reported a failure (MCP `isError`); the items say what went wrong.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
    /// The tokens the job's provider calls consumed (summed over its calls), when it made any
    /// that reported usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ToolResult {
    /// A result of one text item.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            outputs: vec![ToolContent::text(text)],
            structured_content: None,
            is_error: false,
            usage: None,
        }
    }

    /// The same result carrying `usage`.
    pub fn with_usage(mut self, usage: Option<Usage>) -> Self {
        self.usage = usage;
        self
    }

    /// The result of an MCP `tools/call` (`{content, structuredContent?, isError?}`): every
    /// content block kept as it is (a text block's `text` in [`ToolContent::text`], the fields of
    /// other blocks — `data`, `mimeType`, `resource`, … — alongside).
    pub fn from_mcp(result: serde_json::Value) -> Self {
        let outputs = result
            .get("content")
            .and_then(serde_json::Value::as_array)
            .map(|blocks| {
                blocks
                    .iter()
                    .filter_map(|b| serde_json::from_value::<ToolContent>(b.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        Self {
            outputs,
            structured_content: result
                .get("structuredContent")
                .filter(|v| !v.is_null())
                .cloned(),
            is_error: result
                .get("isError")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            usage: None,
        }
    }

    /// The texts of all items joined by newlines.
    pub fn joined_text(&self) -> String {
        self.outputs
            .iter()
            .map(|o| o.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One content item of a tool result: `{"type": "text", "text"}` for every built-in tool; an
/// upstream MCP tool's other blocks (`image`, `audio`, `resource_link`, `resource`) keep their
/// own fields, with `text` empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolContent {
    /// `text`, or the MCP block type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text (empty for a block that is not text).
    #[serde(default)]
    pub text: String,
    /// The block's other fields (`data`, `mimeType`, `annotations`, …), as they came.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ToolContent {
    /// A text item.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: "text".to_owned(),
            text: text.into(),
            extra: serde_json::Map::new(),
        }
    }
}
