//! The upload pipeline's second half: the `storage_push` job, which copies an uploaded file's
//! bytes to Supabase Storage (DESIGN.md, "Upload pipeline", step 3), and the re-drive of pushes
//! that gave up.
//!
//! # One attempt
//! The row must still want a push (`storage_pending`, or `storage_failed` when re-driven); the
//! attempt is counted on the row first (`record_storage_attempt`, which also reads the row), so
//! a push that crashes its worker every time still spends its budget. The count and the final
//! `completed` are group-committed with the other pushes running in the process
//! ([`PushWrites`](exai_shared::db::PushWrites)): one commit per batch, not per file. The staged bytes are streamed to
//! `{bucket}/kimi-uploads/{provider_file_id}` with `x-upsert: true` (a re-run overwrites its own
//! object) within `KIMI_SUPABASE_TIMEOUT`. Success → `completed` with `supabase_file_id` (the
//! object id) and `storage_path`. A missing bucket is created and the upload tried once more.
//!
//! # Retries are jobs, not sleeps
//! A transient failure returns [`JobError::Transient`] (or `RetryAfter` for a named wait) and the
//! **queue** schedules the next attempt with exponential backoff and jitter
//! (`EXAI_STORAGE_RETRY_BASE_MS`, doubling): no worker slot is held while waiting. The budget is
//! the job's attempts (`EXAI_STORAGE_RETRY_MAX_ATTEMPTS`, set at enqueue) and a time budget
//! (`EXAI_STORAGE_RETRY_MAX_SECS`) counted from the job's enqueue — the row's creation for the
//! first push, the re-drive for a re-driven one. When this attempt is the last (no attempts
//! left, or even the earliest retry would land past the time budget) or the error is permanent
//! (403, 404, 413, …), the row becomes `storage_failed` with `last_error` and the job ends dead
//! with the same error. Moonshot's file is never touched: its upload stands.
//!
//! The schedule and the budget are [`StoragePushPolicy`] ([`policy`]), which is also where a
//! push is enqueued ([`PushQueue`]); re-drives are [`redrive`].
//!
//! `KIMI_UPLOAD_TO_SUPABASE=false` when a push runs: the row becomes `storage_failed` ("storage
//! disabled"), so a re-drive can push it once storage is enabled again.

use std::time::Duration;

use exai_shared::backend::RunningJob;
use exai_shared::db::{self, FileUpload, UploadStatus};
use exai_shared::error_chain;
use exai_shared::jobs::{JobError, StoragePushJob};
use exai_shared::providers::guess_mime;
use exai_shared::providers::supabase::kimi_object_path;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::metrics::PushAttempt;
use crate::state::AppState;

pub mod policy;
pub mod redrive;

pub use policy::{PushQueue, StoragePushPolicy};
pub use redrive::{Redrive, Redriven, redrive_row, redrive_rows};

/// How a push attempt that did not fail ended: the job result's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The bytes reached Supabase Storage; the row is `completed`.
    Pushed,
    /// The row wanted no push any more (completed, deleted or failed meanwhile).
    NothingToPush,
    /// Storage was disabled (`KIMI_UPLOAD_TO_SUPABASE=false`) when the push ran; the row is
    /// `storage_failed`, for a re-drive once storage is enabled again.
    StorageDisabled,
}

impl PushOutcome {
    /// The outcome's name in the job result.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pushed => "pushed",
            Self::NothingToPush => "nothing to push",
            Self::StorageDisabled => "storage disabled",
        }
    }

    /// How the attempt counts in the worker's metrics.
    pub fn attempt(self) -> PushAttempt {
        match self {
            Self::Pushed => PushAttempt::Pushed,
            Self::NothingToPush => PushAttempt::Skipped,
            Self::StorageDisabled => PushAttempt::Failed,
        }
    }
}

/// Runs one `storage_push` attempt and counts its outcome in the worker's metrics.
pub async fn push(
    state: &AppState,
    lease: &RunningJob,
    job: &StoragePushJob,
) -> Result<Value, JobError> {
    let result = push_once(state, lease, job).await;
    let attempt = match &result {
        Ok((_, outcome)) => Some(outcome.attempt()),
        Err(JobError::Permanent(_)) => Some(PushAttempt::Failed),
        Err(JobError::Transient(_) | JobError::RetryAfter { .. }) => Some(PushAttempt::Retry),
        Err(_) => None,
    };
    if let Some(attempt) = attempt {
        state.metrics.storage_push(attempt);
    }
    result.map(|(row, outcome)| outcome_json(&row, outcome))
}

async fn push_once(
    state: &AppState,
    lease: &RunningJob,
    job: &StoragePushJob,
) -> Result<(FileUpload, PushOutcome), JobError> {
    let storage = match state.providers.supabase.as_ref() {
        Some(storage) if state.config.supabase.upload_enabled => storage,
        _ => return push_without_storage(state, job).await,
    };
    // Counting the attempt is also how the row is read: a row that wants no push any more is
    // refused, and then read for the job's result.
    let row = match state.push_writes.record_storage_attempt(job.row_id).await {
        Ok(row) => row,
        Err(db::DbError::InvalidTransition {
            from: UploadStatus::Completed | UploadStatus::Deleted | UploadStatus::Failed,
            ..
        }) => return Ok((find_row(state, job).await?, PushOutcome::NothingToPush)),
        Err(db::DbError::NotFound { id }) => {
            return Err(JobError::Permanent(format!(
                "file upload row {id} not found"
            )));
        }
        Err(e) => return Err(JobError::from(e)),
    };

    let Some(sha256) = row.sha256.as_deref() else {
        let message = "the row has no sha256: its bytes cannot be found";
        fail_row(state, &row, message).await?;
        return Err(JobError::Permanent(message.to_owned()));
    };
    let expected_size = row.file_size_bytes.and_then(|s| u64::try_from(s).ok());
    let blob = match state.staging.get(sha256, expected_size).await {
        Ok(blob) => blob,
        Err(e) if e.is_transient() => return Err(e.into_job_error()),
        Err(e) => {
            let message = format!("the staged bytes are not available: {e}");
            fail_row(state, &row, &message).await?;
            return Err(JobError::Permanent(message));
        }
    };
    let path = kimi_object_path(&row.provider_file_id);
    let mime = row.mime_type.clone().unwrap_or_else(|| {
        guess_mime(
            row.filename
                .as_deref()
                .unwrap_or(row.provider_file_id.as_str()),
        )
    });

    let mut result = storage
        .upload_file(&path, &blob.path, blob.size, &mime)
        .await;
    if let Err(e) = &result
        && e.is_no_such_bucket()
    {
        tracing::warn!(bucket = storage.bucket(), "bucket missing; creating it");
        storage.ensure_bucket().await?;
        result = storage
            .upload_file(&path, &blob.path, blob.size, &mime)
            .await;
    }
    match result {
        Ok(object) => {
            let row = state
                .push_writes
                .mark_completed(row.id, &object.id, &object.path)
                .await
                .map_err(JobError::from)?;
            tracing::info!(row_id = %row.id, path = %object.path, attempt = lease.attempt(), "pushed to storage");
            Ok((row, PushOutcome::Pushed))
        }
        Err(e) => {
            let last = !e.is_transient()
                || state.storage_push.policy().is_last_attempt(
                    lease.attempt(),
                    lease.max_attempts,
                    lease.enqueued_at_ms,
                    e.retry_after(),
                );
            if last {
                let message = if e.is_transient() {
                    format!("retry budget spent after {} attempts: {e}", lease.attempt())
                } else {
                    e.to_string()
                };
                fail_row(state, &row, &message).await?;
                Err(JobError::Permanent(message))
            } else {
                Err(e.into_job_error())
            }
        }
    }
}

/// The row of `job`; a missing row is a permanent error.
async fn find_row(state: &AppState, job: &StoragePushJob) -> Result<FileUpload, JobError> {
    db::find_by_id(&state.db, job.row_id)
        .await
        .map_err(JobError::from)?
        .ok_or_else(|| JobError::Permanent(format!("file upload row {} not found", job.row_id)))
}

/// A push attempt when storage is disabled (`KIMI_UPLOAD_TO_SUPABASE=false`) or not configured:
/// a row that still wants a push becomes `storage_failed`, without counting an attempt.
async fn push_without_storage(
    state: &AppState,
    job: &StoragePushJob,
) -> Result<(FileUpload, PushOutcome), JobError> {
    let row = find_row(state, job).await?;
    match row.status {
        UploadStatus::Completed | UploadStatus::Deleted | UploadStatus::Failed => {
            return Ok((row, PushOutcome::NothingToPush));
        }
        _ => {}
    }
    if !state.config.supabase.upload_enabled {
        let row = fail_row(
            state,
            &row,
            "storage disabled (KIMI_UPLOAD_TO_SUPABASE=false) when the push ran",
        )
        .await?;
        return Ok((row, PushOutcome::StorageDisabled));
    }
    let message = "Supabase Storage is not configured (SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY)";
    fail_row(state, &row, message).await?;
    Err(JobError::Permanent(message.to_owned()))
}

/// Marks the row `storage_failed` with `message` (a row that completed meanwhile is left alone).
async fn fail_row(
    state: &AppState,
    row: &FileUpload,
    message: &str,
) -> Result<FileUpload, JobError> {
    tracing::warn!(row_id = %row.id, file_id = %row.provider_file_id, error = message, "storage push failed for good");
    match db::mark_storage_failed(&state.db, row.id, message).await {
        Ok(row) => Ok(row),
        Err(db::DbError::InvalidTransition { .. }) => db::find_by_id(&state.db, row.id)
            .await
            .map_err(JobError::from)?
            .ok_or_else(|| JobError::Permanent(format!("file upload row {} vanished", row.id))),
        Err(e) => Err(JobError::from(e)),
    }
}

/// The job's result: the row as the push left it, and the outcome.
fn outcome_json(row: &FileUpload, outcome: PushOutcome) -> Value {
    json!({
        "row_id": row.id,
        "file_id": row.provider_file_id,
        "status": row.status.as_str(),
        "storage_path": row.storage_path,
        "outcome": outcome.as_str(),
    })
}

/// Creates the bucket (private) when it is missing, in the background: retried with a growing
/// pause (up to a minute) until it succeeds, storage turns out not to be configured, or
/// `shutdown` fires. A push that finds the bucket missing creates it too.
pub fn spawn_ensure_bucket(state: std::sync::Arc<AppState>, shutdown: CancellationToken) {
    if !state.config.supabase.upload_enabled {
        return;
    }
    let Some(storage) = state.providers.supabase.clone() else {
        tracing::warn!(
            "KIMI_UPLOAD_TO_SUPABASE is on but SUPABASE_URL or SUPABASE_SERVICE_ROLE_KEY is unset: pushes will fail"
        );
        return;
    };
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(200);
        loop {
            match storage.ensure_bucket().await {
                Ok(created) => {
                    tracing::info!(bucket = storage.bucket(), created, "storage bucket ready");
                    return;
                }
                Err(e) if !e.is_transient() => {
                    tracing::error!(bucket = storage.bucket(), error = %error_chain(&e), "cannot create the storage bucket");
                    return;
                }
                Err(e) => {
                    tracing::warn!(bucket = storage.bucket(), error = %error_chain(&e), "storage bucket check failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    });
}
