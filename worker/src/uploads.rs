//! The upload pipeline's first half: staged bytes → Moonshot → a `provider_file_uploads` row →
//! a `storage_push` job (DESIGN.md, "Upload pipeline", steps 2 and 4).
//!
//! [`upload_staged`] is what the `uploads` queue runs, and what the upload tools run inline, so
//! a tool call returns as soon as Moonshot has the file while the push to Supabase Storage
//! continues as its own job.
//!
//! # Permits around Moonshot calls only
//! The Moonshot permits (`global` + `kimi`, [`Permits`]) bound concurrent calls to Moonshot, so
//! they are held around each Moonshot call and nothing else: the dedup query runs before the
//! permits are taken, and the row and the push's enqueue are written after they are given back.
//! A permit held across database writes would let commit latency, not Moonshot, set how many
//! uploads run at once.
//!
//! # Idempotence
//! - **Dedup first.** A live row for `(kimi, sha256)` is reused (`record_reuse` bumps
//!   `last_used`, and `reference_count` once per asking job) after checking that Moonshot still
//!   has its file; a row whose file Moonshot lost is marked deleted and the bytes are uploaded
//!   afresh.
//! - **One reference per job.** The job's id (the tool call's, or the `uploads` job's) is the
//!   reference a row counts, recorded with the count in one statement; a call re-run after a
//!   crash, which finds the rows it recorded before, leaves their counts as they were.
//! - **One row per content.** `insert_or_get` is one upsert on the unique live index, so two
//!   workers racing on the same bytes, or a re-run, end with one row. The loser of a race
//!   deletes its now redundant Moonshot file.
//! - **A crash between the Moonshot upload and the row** leaves a Moonshot file that no row
//!   names: the re-run uploads again and records one row; the orphan is what the orphan sweep
//!   finds (a Moonshot file without a row) and removes after its grace period.
//! - **One push per row.** The push job's id is `push-<row id>`, so enqueueing it again (a
//!   re-run, a dedup of a row whose push was never enqueued because of a crash) is a no-op.

use exai_shared::backend::RunningJob;
use exai_shared::db::{self, FileUpload, NewUpload, UploadStatus};
use exai_shared::error_chain;
use exai_shared::jobs::{JobError, UploadJob, UploadedFile};
use exai_shared::providers::moonshot::{PURPOSE_FILE_EXTRACT, PURPOSES};
use exai_shared::providers::{ProviderError, guess_mime};
use exai_shared::tools::Provider;
use futures::StreamExt;

use crate::permits;
use crate::state::AppState;

/// How an upload holds the Moonshot permits (`global` + `kimi`) around its Moonshot calls.
#[derive(Debug, Clone, Copy)]
pub enum Permits<'a> {
    /// The caller holds them for the whole upload (a chat restoring a file Moonshot lost, within
    /// the permits of its chat call).
    Held,
    /// Taken for each Moonshot call on behalf of the job of this lease (waiting as
    /// [`permits::acquire`] does) and given back as soon as Moonshot answers.
    PerCall(&'a RunningJob),
}

impl Permits<'_> {
    /// Runs `call` (one Moonshot request) under the permits.
    pub async fn around<T>(
        self,
        state: &AppState,
        call: impl Future<Output = Result<T, JobError>>,
    ) -> Result<T, JobError> {
        match self {
            Self::Held => call.await,
            Self::PerCall(lease) => {
                let moonshot = Provider::Kimi.as_str();
                let guard = permits::acquire(
                    state,
                    lease,
                    &[exai_shared::tools::GLOBAL_SEMAPHORE, moonshot],
                    Some(moonshot),
                )
                .await?;
                permits::holding(state, guard, call).await
            }
        }
    }
}

/// Runs one `uploads` job: [`upload_staged`], with the Moonshot permits around each Moonshot
/// call.
pub async fn run_job(
    state: &AppState,
    lease: &RunningJob,
    job: &UploadJob,
) -> Result<UploadedFile, JobError> {
    upload_staged(state, job, lease.id(), Permits::PerCall(lease)).await
}

/// The purpose sent to Moonshot for a requested one (empty means `file-extract`); one Moonshot
/// refuses (such as the original tool's `assistants`) is a permanent error.
pub fn moonshot_purpose(requested: &str) -> Result<&'static str, JobError> {
    match requested {
        "" => Ok(PURPOSE_FILE_EXTRACT),
        p => PURPOSES
            .iter()
            .copied()
            .find(|known| *known == p)
            .ok_or_else(|| {
                JobError::Permanent(format!(
                    "purpose `{p}` is not accepted by Moonshot (use one of {})",
                    PURPOSES.join(", ")
                ))
            }),
    }
}

/// Uploads the staged blob of `job` to Moonshot unless a live row already holds the same bytes,
/// records the row, and enqueues its storage push. `reference` is the id of the job asking (a
/// tool call or an `uploads` job): the row counts it once however often the job runs. Each
/// Moonshot call runs under `permits`.
pub async fn upload_staged(
    state: &AppState,
    job: &UploadJob,
    reference: &str,
    permits: Permits<'_>,
) -> Result<UploadedFile, JobError> {
    let moonshot = Provider::Kimi.as_str();
    if job.provider != moonshot {
        return Err(JobError::Permanent(format!(
            "provider `{}` takes no file uploads (only `{moonshot}` does)",
            job.provider
        )));
    }
    let purpose = moonshot_purpose(&job.purpose)?;
    let blob = state.staging.get(&job.sha256, Some(job.size_bytes)).await?;

    if let Some(row) = db::find_live(&state.db, Provider::Kimi.as_str(), &job.sha256)
        .await
        .map_err(JobError::from)?
    {
        if permits
            .around(state, provider_has_file(state, &row))
            .await?
        {
            if let Some(row) = db::record_reuse(&state.db, row.id, reference)
                .await
                .map_err(JobError::from)?
            {
                ensure_push(state, &row).await?;
                tracing::info!(row_id = %row.id, file_id = %row.provider_file_id, sha256 = %job.sha256, "upload deduplicated");
                return Ok(uploaded(&row, &job.filename, true));
            }
        } else {
            tracing::warn!(row_id = %row.id, file_id = %row.provider_file_id, "moonshot no longer has the file; uploading again");
            db::mark_deleted(&state.db, row.id, "moonshot file missing; uploaded again")
                .await
                .map_err(JobError::from)?;
        }
    }

    let mime = job
        .mime_type
        .clone()
        .unwrap_or_else(|| guess_mime(&job.filename));
    let object = permits
        .around(state, async {
            Ok(state
                .providers
                .moonshot
                .upload_file(&blob.path, &job.filename, blob.size, purpose, Some(&mime))
                .await?)
        })
        .await?;
    tracing::info!(file_id = %object.id, sha256 = %job.sha256, size = blob.size, "uploaded to moonshot");
    let sent = Sent {
        file_id: &object.id,
        purpose,
        mime: &mime,
        size: blob.size,
    };
    record(state, job, reference, &sent, permits).await
}

/// A file Moonshot has just accepted.
struct Sent<'a> {
    file_id: &'a str,
    purpose: &'a str,
    mime: &'a str,
    size: u64,
}

/// Records a Moonshot file just uploaded, and enqueues its push. A file made redundant by a
/// race is deleted under `permits`.
async fn record(
    state: &AppState,
    job: &UploadJob,
    reference: &str,
    sent: &Sent<'_>,
    permits: Permits<'_>,
) -> Result<UploadedFile, JobError> {
    let &Sent {
        file_id,
        purpose,
        mime,
        size,
    } = sent;
    let status = if state.config.supabase.upload_enabled {
        UploadStatus::StoragePending
    } else {
        UploadStatus::Completed
    };
    let new = NewUpload {
        provider: Provider::Kimi.as_str().to_owned(),
        provider_file_id: file_id.to_owned(),
        sha256: job.sha256.clone(),
        filename: job.filename.clone(),
        file_size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        mime_type: Some(mime.to_owned()),
        purpose: purpose.to_owned(),
        status,
        reference: reference.to_owned(),
    };
    let upserted = db::insert_or_get(&state.db, &new).await.map_err(|e| {
        // The Moonshot file stays, with no row: the orphan sweep will find it.
        tracing::warn!(file_id, error = %error_chain(&e), "moonshot file uploaded but not recorded");
        JobError::from(e)
    })?;
    let lost_race = upserted.lost_race(file_id);
    if lost_race {
        // Another upload of the same bytes recorded its file first: ours is redundant.
        let delete = async { Ok(state.providers.moonshot.delete_file(file_id).await?) };
        match permits.around(state, delete).await {
            Ok(_) => {
                tracing::info!(file_id, kept = %upserted.row.provider_file_id, "duplicate moonshot file deleted")
            }
            Err(e) => {
                tracing::warn!(file_id, error = %e, "duplicate moonshot file not deleted; the orphan sweep will")
            }
        }
    }
    ensure_push(state, &upserted.row).await?;
    Ok(uploaded(&upserted.row, &job.filename, lost_race))
}

/// Whether Moonshot still has the row's file. A missing file (404) is `false`; other errors
/// fail the attempt as the provider classified them.
async fn provider_has_file(state: &AppState, row: &FileUpload) -> Result<bool, JobError> {
    match state
        .providers
        .moonshot
        .get_file(&row.provider_file_id)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Enqueues the row's storage push if it still needs one ([`crate::storage::PushQueue::ensure`]).
async fn ensure_push(state: &AppState, row: &FileUpload) -> Result<(), JobError> {
    state
        .storage_push
        .ensure(row, state.config.supabase.upload_enabled)
        .await
}

/// The per-file answer for `row`.
pub fn uploaded(row: &FileUpload, filename: &str, deduplicated: bool) -> UploadedFile {
    UploadedFile {
        filename: filename.to_owned(),
        file_id: row.provider_file_id.clone(),
        sha256: row.sha256.clone().unwrap_or_default(),
        size_bytes: row
            .file_size_bytes
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
        deduplicated,
        storage_status: row.status.as_str().to_owned(),
        row_id: Some(row.id),
    }
}

/// Puts a file Moonshot has lost back on Moonshot from its durable copy in Supabase Storage:
/// the copy is streamed into the staging store (its sha256 checked against the row), uploaded
/// again, the old row marked deleted and a new row recorded (whose push copies the bytes under
/// the new file id). Returns the new file; `reference` is the id of the job asking. The caller
/// holds the Moonshot permits.
pub async fn restore_from_storage(
    state: &AppState,
    row: &FileUpload,
    reference: &str,
) -> Result<UploadedFile, JobError> {
    let (Some(path), Some(sha256)) = (row.storage_object(), row.sha256.as_deref()) else {
        return Err(JobError::Permanent(format!(
            "moonshot no longer has file {} and it has no copy in storage (status {})",
            row.provider_file_id, row.status
        )));
    };
    let storage = state.providers.supabase.as_ref().ok_or_else(|| {
        JobError::Permanent(
            "moonshot lost the file and Supabase Storage is not configured (SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY)"
                .to_owned(),
        )
    })?;
    let filename = row
        .filename
        .clone()
        .unwrap_or_else(|| row.provider_file_id.clone());
    let resp = storage.download(&path).await?;
    let body = resp
        .bytes_stream()
        .map(|chunk| chunk.map_err(|e| ProviderError::from_reqwest("supabase", "download", &e)));
    let blob = state
        .staging
        .stage_stream(&filename, body, Some(sha256))
        .await?;
    tracing::info!(old_file_id = %row.provider_file_id, sha256, "restoring a lost moonshot file from storage");
    db::mark_deleted(
        &state.db,
        row.id,
        "moonshot file missing; restored from storage",
    )
    .await
    .map_err(JobError::from)?;
    let job = UploadJob {
        sha256: blob.sha256.clone(),
        filename,
        size_bytes: blob.size,
        purpose: row.purpose.clone(),
        provider: Provider::Kimi.as_str().to_owned(),
        mime_type: row.mime_type.clone(),
    };
    upload_staged(state, &job, reference, Permits::Held).await
}
