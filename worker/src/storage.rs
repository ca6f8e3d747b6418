//! The upload pipeline's second half: the `storage_push` job, which copies an uploaded file's
//! bytes to Supabase Storage (DESIGN.md, "Upload pipeline", step 3), and the re-drive of pushes
//! that gave up.
//!
//! # One attempt
//! The row must still want a push (`storage_pending`, or `storage_failed` when re-driven); the
//! attempt is counted on the row first (`record_storage_attempt`), so a push that crashes its
//! worker every time still spends its budget. The staged bytes are streamed to
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
//! `KIMI_UPLOAD_TO_SUPABASE=false` when a push runs: the row becomes `storage_failed` ("storage
//! disabled"), so a re-drive can push it once storage is enabled again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exai_shared::Config;
use exai_shared::backend::RunningJob;
use exai_shared::db::{self, FileUpload, PgPool, UploadStatus};
use exai_shared::error_chain;
use exai_shared::jobs::{JobError, StoragePushJob};
use exai_shared::providers::supabase::kimi_object_path;
use exai_shared::providers::{ProviderError, guess_mime};
use exai_shared::queue::Queue;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::PushOutcome;
use crate::state::AppState;
use crate::uploads::{db_error, enqueue_push};

/// Runs one `storage_push` attempt and counts its outcome in the worker's metrics.
pub async fn push(
    state: &AppState,
    lease: &RunningJob,
    job: &StoragePushJob,
) -> Result<Value, JobError> {
    let result = push_once(state, lease, job).await;
    let outcome = match &result {
        Ok(v) => match v["outcome"].as_str() {
            Some("pushed") => Some(PushOutcome::Pushed),
            Some("storage disabled") => Some(PushOutcome::Failed),
            _ => Some(PushOutcome::Skipped),
        },
        Err(JobError::Permanent(_)) => Some(PushOutcome::Failed),
        Err(JobError::Transient(_) | JobError::RetryAfter { .. }) => Some(PushOutcome::Retry),
        Err(_) => None,
    };
    if let Some(outcome) = outcome {
        state.metrics.storage_push(outcome);
    }
    result
}

async fn push_once(
    state: &AppState,
    lease: &RunningJob,
    job: &StoragePushJob,
) -> Result<Value, JobError> {
    let row = db::find_by_id(&state.db, job.row_id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| JobError::Permanent(format!("file upload row {} not found", job.row_id)))?;
    match row.status {
        UploadStatus::Completed | UploadStatus::Deleted | UploadStatus::Failed => {
            return Ok(outcome(&row, "nothing to push"));
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
        return Ok(outcome(&row, "storage disabled"));
    }
    let Some(storage) = state.providers.supabase.as_ref() else {
        let message =
            "Supabase Storage is not configured (SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY)";
        fail_row(state, &row, message).await?;
        return Err(JobError::Permanent(message.to_owned()));
    };
    let row = db::record_storage_attempt(&state.db, row.id, None)
        .await
        .map_err(db_error)?;

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
            let row = db::mark_completed(&state.db, row.id, &object.id, &object.path)
                .await
                .map_err(db_error)?;
            tracing::info!(row_id = %row.id, path = %object.path, attempt = lease.attempt(), "pushed to storage");
            Ok(outcome(&row, "pushed"))
        }
        Err(e) => {
            let last = !e.is_transient() || is_last_attempt(state, lease, &e);
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

/// Whether a failed transient attempt is the job's last: no attempts left, or even the earliest
/// retry (the backoff without jitter, or the wait the provider named) would start after the time
/// budget, counted from the job's enqueue.
fn is_last_attempt(state: &AppState, lease: &RunningJob, e: &ProviderError) -> bool {
    if lease.attempt() >= lease.max_attempts {
        return true;
    }
    let mut earliest = state.storage_backoff;
    earliest.jitter = false;
    let next = e
        .retry_after()
        .unwrap_or_else(|| earliest.delay(lease.attempt()));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let elapsed = Duration::from_millis(now_ms.saturating_sub(lease.enqueued_at_ms));
    elapsed + next > state.config.supabase.retry_max
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
            .map_err(db_error)?
            .ok_or_else(|| JobError::Permanent(format!("file upload row {} vanished", row.id))),
        Err(e) => Err(db_error(e)),
    }
}

fn outcome(row: &FileUpload, what: &str) -> Value {
    json!({
        "row_id": row.id,
        "file_id": row.provider_file_id,
        "status": row.status.as_str(),
        "storage_path": row.storage_path,
        "outcome": what,
    })
}

/// Which rows to re-drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redrive {
    /// Every `storage_failed` row (up to a limit).
    AllFailed {
        /// The most rows re-driven in one run.
        limit: i64,
    },
    /// One row, `storage_failed` or `storage_pending` (a push lost to a crash on its last
    /// attempt leaves a row pending).
    Row(Uuid),
}

/// One re-driven row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Redriven {
    /// The row.
    pub row_id: Uuid,
    /// The push job enqueued (or already there).
    pub job_id: String,
}

/// Enqueues a fresh push for the rows `which` names, each with a full retry budget (see
/// [`redrive_row`]).
pub async fn redrive(
    pool: &PgPool,
    queue: &Queue,
    config: &Config,
    which: Redrive,
) -> Result<Vec<Redriven>, JobError> {
    let rows = redrive_rows(pool, which).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(redrive_row(queue, config, row).await?);
    }
    Ok(out)
}

/// The rows `which` names: every `storage_failed` row up to the limit, least recently changed
/// first, or the one row (an error unless it is `storage_failed` or `storage_pending`).
pub async fn redrive_rows(pool: &PgPool, which: Redrive) -> Result<Vec<FileUpload>, JobError> {
    Ok(match which {
        Redrive::AllFailed { limit } => {
            db::list_by_status(pool, UploadStatus::StorageFailed, limit)
                .await
                .map_err(db_error)?
        }
        Redrive::Row(id) => {
            let row = db::find_by_id(pool, id)
                .await
                .map_err(db_error)?
                .ok_or_else(|| JobError::Permanent(format!("file upload row {id} not found")))?;
            if !matches!(
                row.status,
                UploadStatus::StorageFailed | UploadStatus::StoragePending
            ) {
                return Err(JobError::Permanent(format!(
                    "row {id} is {}: only storage_failed or storage_pending rows are re-driven",
                    row.status
                )));
            }
            vec![row]
        }
    })
}

/// Enqueues a fresh push of `row` with a full retry budget. The job id is
/// `push-<row id>-r<attempts so far>`, so re-driving twice before the push runs enqueues one job.
pub async fn redrive_row(
    queue: &Queue,
    config: &Config,
    row: &FileUpload,
) -> Result<Redriven, JobError> {
    let job_id = StoragePushJob::redrive_job_id(row.id, row.storage_attempts);
    enqueue_push(queue, config, row.id, job_id.clone()).await?;
    Ok(Redriven {
        row_id: row.id,
        job_id,
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
