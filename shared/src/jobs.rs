//! Job payloads (what is serialized into a queue) and the error type every handler returns.
//!
//! Payloads are JSON. New fields get `#[serde(default)]` so that a worker of the next version
//! reads jobs enqueued by this one and the other way round.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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

impl JobError {
    /// A transient error from anything displayable.
    pub fn transient(e: impl std::fmt::Display) -> Self {
        Self::Transient(e.to_string())
    }

    /// A permanent error from anything displayable.
    pub fn permanent(e: impl std::fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }
}

/// What a tool call returns: MCP-style content items (the daemon relays them as `outputs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The content items, in order.
    pub outputs: Vec<ToolContent>,
}

impl ToolResult {
    /// A result of one text item.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            outputs: vec![ToolContent::text(text)],
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

/// One content item of a tool result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolContent {
    /// Always `text` today.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
}

impl ToolContent {
    /// A text item.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: "text".to_owned(),
            text: text.into(),
        }
    }
}
