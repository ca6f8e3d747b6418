//! Job handlers: one async function per queue, each returning a [`JobError`] whose variant is the
//! retry policy. Handlers observe their job's cancellation through [`JobLease::cancel`]; the lease
//! layer also drops a handler whose token fires, so a handler that ignores it still stops.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::Data;
use exai_shared::backend::JobLease;
use exai_shared::jobs::{CleanupJob, JobError, ToolCallJob, ToolResult};

/// What every handler can reach; built once per process.
#[derive(Debug, Default)]
pub struct AppState {}

/// The longest `test_echo` may be asked to take (`delay_ms`).
pub const ECHO_MAX_DELAY_MS: u64 = 60_000;

/// Runs one tool call.
pub async fn tool_call(
    job: ToolCallJob,
    lease: Data<JobLease>,
    _state: Data<Arc<AppState>>,
) -> Result<ToolResult, JobError> {
    tracing::debug!(tool = %job.tool, job_id = %lease.lease.id, attempt = lease.lease.attempt, "tool call");
    match job.tool.as_str() {
        "test_echo" => test_echo(job.arguments, &lease).await,
        other => Err(JobError::Permanent(format!(
            "tool `{other}` is not available on this worker"
        ))),
    }
}

/// `test_echo`: returns its arguments as JSON text, after `delay_ms` if given.
async fn test_echo(arguments: serde_json::Value, lease: &JobLease) -> Result<ToolResult, JobError> {
    let delay = arguments
        .get("delay_ms")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
        .min(ECHO_MAX_DELAY_MS);
    if delay > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = lease.cancel.cancelled() => return Err(JobError::Cancelled("cancel requested".into())),
        }
    }
    Ok(ToolResult::text(arguments.to_string()))
}

/// Runs one orphan cleanup (the sweeps arrive with the cleanup issue; a tick is recorded).
pub async fn cleanup(
    job: CleanupJob,
    lease: Data<JobLease>,
) -> Result<serde_json::Value, JobError> {
    tracing::info!(tick = job.tick, dry_run = job.dry_run, job_id = %lease.lease.id, "cleanup run");
    Ok(serde_json::json!({ "tick": job.tick, "dry_run": job.dry_run }))
}
