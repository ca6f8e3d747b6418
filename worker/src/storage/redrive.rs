//! Re-driving pushes that gave up: a fresh `storage_push` job, with a full retry budget, for
//! `storage_failed` rows (or one row, also `storage_pending`); `exai-worker storage
//! retry-failed` and `storage redrive` run it.

use exai_shared::db::{self, FileUpload, PgPool, UploadStatus};
use exai_shared::jobs::{JobError, StoragePushJob};
use uuid::Uuid;

use super::PushQueue;

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

/// The rows `which` names: every `storage_failed` row up to the limit, least recently changed
/// first, or the one row (an error unless it is `storage_failed` or `storage_pending`).
pub async fn redrive_rows(pool: &PgPool, which: Redrive) -> Result<Vec<FileUpload>, JobError> {
    Ok(match which {
        Redrive::AllFailed { limit } => {
            db::list_by_status(pool, UploadStatus::StorageFailed, limit)
                .await
                .map_err(JobError::from)?
        }
        Redrive::Row(id) => {
            let row = db::find_by_id(pool, id)
                .await
                .map_err(JobError::from)?
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
pub async fn redrive_row(queue: &PushQueue, row: &FileUpload) -> Result<Redriven, JobError> {
    let job_id = StoragePushJob::redrive_job_id(row.id, row.storage_attempts);
    queue.enqueue(row.id, job_id.clone()).await?;
    Ok(Redriven {
        row_id: row.id,
        job_id,
    })
}
