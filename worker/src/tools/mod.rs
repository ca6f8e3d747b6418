//! The tools a `tool_calls` job runs (docs/protocol.md, "Tools"), looked up in the shared registry
//! ([`exai_shared::tools`]) by name.
//!
//! Every tool follows the same shape: decode and check its arguments (a bad argument is a
//! permanent error naming it), do whatever needs no provider (resolve paths, stage bytes), then
//! take the permits the registry says the call needs ([`ToolCtx::permits`]: `global` plus the
//! model's provider) and call the provider while holding them. Results are JSON or plain text
//! items of a [`ToolResult`].
//!
//! - [`chat`]: `chat` and `kimi_chat_with_files`, streamed as `Chunk` events.
//! - [`files`]: `kimi_upload_files`, `kimi_upload_bytes`, `kimi_download_file`,
//!   `kimi_manage_files`.

pub mod chat;
pub mod files;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exai_shared::backend::RunningJob;
use exai_shared::events::JobEvent;
use exai_shared::jobs::{JobError, StagedRef, ToolCallJob, ToolResult};
use exai_shared::semaphore::LeaseGuard;
use exai_shared::tools::{self, Tool};
use exai_shared::usage::Usage;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::permits;
use crate::state::AppState;

/// One running tool call: its job, lease, tool and state.
pub struct ToolCtx<'a> {
    /// The process state.
    pub state: &'a Arc<AppState>,
    /// The job's lease (id, attempt, cancellation).
    pub lease: &'a RunningJob,
    /// The registered tool.
    pub tool: &'static Tool,
    /// The call's arguments.
    pub arguments: serde_json::Value,
    /// The bytes the daemon staged for this call (`kimi_upload_bytes`), if any.
    pub staged: Option<StagedRef>,
    /// The client session that made the call (empty for a job enqueued without one).
    pub session_id: String,
    /// The usage of the job's provider calls so far, summed ([`crate::usage::record`] adds to
    /// it; [`run`] puts it on the result).
    usage: Mutex<Option<Usage>>,
}

impl ToolCtx<'_> {
    /// The job id (what events are published under).
    pub fn job_id(&self) -> &str {
        self.lease.id()
    }

    /// The arguments decoded as `T`; a mismatch is a permanent error.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.arguments.clone()).map_err(|e| {
            JobError::Permanent(format!("invalid arguments for {}: {e}", self.tool.name))
        })
    }

    /// Takes the permits this call needs (`global` plus the provider's), waiting at most the
    /// provider's wait; `None` for a tool that calls no provider.
    pub async fn permits(&self) -> Result<Option<LeaseGuard>, JobError> {
        let names = self.tool.semaphores(&self.arguments);
        let provider = self.tool.provider(&self.arguments).map(|p| p.as_str());
        permits::acquire(self.state, self.lease, &names, provider).await
    }

    /// The provider's semaphore of this call (`kimi`, `glm`), whose effective limit adaptive
    /// concurrency moves; `None` for a tool that calls no provider.
    pub fn provider_semaphore(&self) -> Option<&'static str> {
        self.tool.provider(&self.arguments).map(|p| p.as_str())
    }

    /// A callback publishing each piece of streamed output as a `Chunk` event (owned, so the
    /// futures it returns borrow nothing).
    pub fn chunk_sink(&self) -> impl FnMut(String) -> BoxFuture<'static, ()> + Send + use<> {
        let events = self.state.events.clone();
        let job_id: Arc<str> = Arc::from(self.job_id());
        move |chunk| {
            let events = events.clone();
            let job_id = job_id.clone();
            Box::pin(async move {
                events.publish(&job_id, &JobEvent::Chunk { chunk }).await;
            })
        }
    }

    /// Adds one provider call's usage to the job's.
    pub fn add_usage(&self, usage: Usage) {
        let mut sum = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        *sum = Some(sum.map_or(usage, |s| s.plus(usage)));
    }

    /// The usage of the job's provider calls so far.
    pub fn usage(&self) -> Option<Usage> {
        *self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a progress note while the tool runs.
    pub async fn progress(&self, message: impl Into<String>) {
        self.state.progress(self.job_id(), "running", message).await;
    }
}

/// Runs one tool call.
pub async fn run(
    job: ToolCallJob,
    lease: &RunningJob,
    state: &Arc<AppState>,
) -> Result<ToolResult, JobError> {
    if let Some(deadline) = job.deadline_ms {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        if now > deadline {
            return Err(JobError::expired(now - deadline));
        }
    }
    let Some(tool) = tools::find(&job.tool) else {
        return match state.upstreams.server_of(&job.tool) {
            Some(upstream) if job.staged.is_none() => {
                crate::upstream::call::run(state, lease, upstream, job).await
            }
            _ => Err(JobError::Permanent(format!(
                "tool `{}` is not available on this worker",
                job.tool
            ))),
        };
    };
    // The daemon validated the arguments already; a job enqueued some other way is checked too.
    // Staged bytes stand for `content_base64`, which the daemon took out of the arguments: the
    // tool itself checks what is left (file name, purpose).
    match &job.staged {
        None => tool
            .validate(&job.arguments)
            .map_err(|e| JobError::Permanent(e.to_string()))?,
        Some(_) if tool.name == tools::KIMI_UPLOAD_BYTES => {}
        Some(_) => {
            return Err(JobError::Permanent(format!(
                "tool `{}` takes no staged bytes",
                tool.name
            )));
        }
    }
    let ctx = ToolCtx {
        state,
        lease,
        tool,
        arguments: job.arguments,
        staged: job.staged,
        session_id: job.session_id,
        usage: Mutex::new(None),
    };
    let result = match tool.name {
        tools::CHAT => chat::chat(&ctx).await,
        tools::KIMI_CHAT_WITH_FILES => chat::chat_with_files(&ctx).await,
        tools::KIMI_UPLOAD_FILES => files::upload_files(&ctx).await,
        tools::KIMI_UPLOAD_BYTES => files::upload_bytes(&ctx).await,
        tools::KIMI_DOWNLOAD_FILE => files::download_file(&ctx).await,
        tools::KIMI_MANAGE_FILES => files::manage_files(&ctx).await,
        tools::TEST_ECHO => test_echo(&ctx).await,
        other => Err(JobError::Permanent(format!(
            "tool `{other}` is not available on this worker"
        ))),
    };
    result.map(|r| r.with_usage(ctx.usage()))
}

/// `test_echo`: returns its arguments as JSON text, after `delay_ms` if given.
async fn test_echo(ctx: &ToolCtx<'_>) -> Result<ToolResult, JobError> {
    let delay = ctx
        .arguments
        .get("delay_ms")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
        .min(tools::ECHO_MAX_DELAY_MS);
    if delay > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = ctx.lease.cancel.cancelled() => return Err(JobError::Cancelled("cancel requested".into())),
        }
    }
    Ok(ToolResult::text(ctx.arguments.to_string()))
}

/// A value as JSON text (pretty enough for people, exact for programs).
pub fn json_result(value: &impl serde::Serialize) -> Result<ToolResult, JobError> {
    serde_json::to_string(value)
        .map(ToolResult::text)
        .map_err(JobError::permanent)
}
