//! Job handlers: one async function per queue, each returning a [`JobError`] whose variant is the
//! retry policy. Handlers observe their job's cancellation through [`RunningJob::cancel`]; the lease
//! layer also drops a handler whose token fires, so a handler that ignores it still stops (and
//! dropping it releases any semaphore permit it held).
//!
//! | queue | handler | does |
//! |---|---|---|
//! | `tool_calls` | [`tool_call`] | runs a tool ([`crate::tools`]) under its provider permits |
//! | `uploads` | [`upload`] | staged bytes → Moonshot → row → push job ([`crate::uploads`]) |
//! | `storage_push` | [`storage_push`] | staged bytes → Supabase Storage → row `completed` ([`crate::storage`]) |
//! | `cleanup` | [`cleanup`] | the orphan cleanup of one cron tick, its report stored ([`crate::cleanup`]) |

use std::sync::Arc;

use apalis::prelude::Data;
use exai_shared::backend::RunningJob;
use exai_shared::jobs::{
    CleanupJob, JobError, StoragePushJob, ToolCallJob, ToolResult, UploadJob, UploadedFile,
};

pub use crate::state::AppState;

/// The longest `test_echo` may be asked to take (`delay_ms`).
pub const ECHO_MAX_DELAY_MS: u64 = exai_shared::tools::ECHO_MAX_DELAY_MS;

/// Runs one tool call.
#[tracing::instrument(skip_all, fields(job_id = %lease.id(), tool = %job.tool, attempt = lease.attempt()))]
pub async fn tool_call(
    job: ToolCallJob,
    lease: Data<RunningJob>,
    state: Data<Arc<AppState>>,
) -> Result<ToolResult, JobError> {
    tracing::debug!("tool call");
    crate::tools::run(job, &lease, &state).await
}

/// Runs one `uploads` job.
#[tracing::instrument(skip_all, fields(job_id = %lease.id(), sha256 = %job.sha256, attempt = lease.attempt()))]
pub async fn upload(
    job: UploadJob,
    lease: Data<RunningJob>,
    state: Data<Arc<AppState>>,
) -> Result<UploadedFile, JobError> {
    crate::uploads::run_job(&state, &lease, &job).await
}

/// Runs one `storage_push` attempt.
#[tracing::instrument(skip_all, fields(job_id = %lease.id(), row_id = %job.row_id, attempt = lease.attempt()))]
pub async fn storage_push(
    job: StoragePushJob,
    lease: Data<RunningJob>,
    state: Data<Arc<AppState>>,
) -> Result<serde_json::Value, JobError> {
    crate::storage::push(&state, &lease, &job).await
}

/// Runs the orphan cleanup of one cron tick and stores its report.
#[tracing::instrument(skip_all, fields(job_id = %lease.id(), tick = job.tick, dry_run = job.dry_run))]
pub async fn cleanup(
    job: CleanupJob,
    lease: Data<RunningJob>,
    state: Data<Arc<AppState>>,
) -> Result<serde_json::Value, JobError> {
    crate::cleanup::run_job(&state, &job).await
}
