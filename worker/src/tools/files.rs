//! The file tools: `kimi_upload_files`, `kimi_upload_bytes`, `kimi_download_file`,
//! `kimi_manage_files`.
//!
//! Uploads check everything before anything leaves the machine: every path must lie beneath
//! `EXAI_UPLOAD_ROOTS` with no symlink and no `..` beneath the root, be a regular file and have
//! 1 byte to `EXAI_MAX_UPLOAD_BYTES` (from `fstat` on the one descriptor opened, before any byte
//! is read); that descriptor is what gets staged, and the staged blob what Moonshot gets. Inline bytes arrive
//! staged by the daemon (the job carries their sha256); a job that still carries
//! `content_base64` (enqueued by something else) has it bounded before it is decoded and staged
//! here. A call with one bad file uploads none. The files are then
//! staged (content-addressed, atomically), and uploaded to Moonshot by the same code the
//! `uploads` queue runs ([`uploads::upload_staged`]), which holds the call's permits around each
//! Moonshot request and nothing else; the call returns per file
//! `{filename, file_id, sha256, size_bytes, deduplicated, storage_status}` as soon as Moonshot has
//! it, while the push to Supabase Storage continues as a `storage_push` job.

use base64::Engine as _;
use exai_shared::db::{self, FileUpload, UploadStatus};
use exai_shared::jobs::{JobError, ToolResult, UploadJob, UploadedFile};
use exai_shared::providers::guess_mime;
use exai_shared::providers::supabase::kimi_object_path;
use exai_shared::staging::{StagingError, decode_inline, open_upload_path, plain_filename};
use exai_shared::tools::Provider;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;

use super::{ToolCtx, json_result};
use crate::uploads::{self, Permits};
use crate::{cleanup, permits};

#[derive(Debug, Deserialize)]
struct UploadFilesArgs {
    files: Vec<String>,
    #[serde(default)]
    purpose: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UploadBytesArgs {
    filename: String,
    #[serde(default)]
    content_base64: Option<String>,
    #[serde(default)]
    purpose: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DownloadArgs {
    #[serde(default)]
    file_id: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ManageArgs {
    operation: String,
    #[serde(default)]
    file_id: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    dry_run: bool,
}

/// `kimi_upload_files`: returns a JSON array, one item per file, in the order given.
pub async fn upload_files(ctx: &ToolCtx<'_>) -> Result<ToolResult, JobError> {
    let args: UploadFilesArgs = ctx.args()?;
    let purpose = purpose(args.purpose.as_deref())?;
    let uploads_config = &ctx.state.config.uploads;
    let mut checked = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let file = open_upload_path(path, &uploads_config.roots, uploads_config.max_bytes)
            .await
            .map_err(StagingError::into_job_error)?;
        checked.push(file);
    }
    let mut jobs = Vec::with_capacity(checked.len());
    for file in checked {
        let blob = ctx
            .state
            .staging
            .stage_file(&file.filename, file.file)
            .await?;
        jobs.push(UploadJob {
            sha256: blob.sha256,
            size_bytes: blob.size,
            mime_type: Some(guess_mime(&file.filename)),
            filename: file.filename,
            purpose: purpose.clone(),
            provider: Provider::Kimi.as_str().to_owned(),
        });
    }
    let mut results: Vec<UploadedFile> = Vec::with_capacity(jobs.len());
    for job in &jobs {
        results.push(
            uploads::upload_staged(ctx.state, job, ctx.job_id(), Permits::PerCall(ctx.lease))
                .await?,
        );
    }
    json_result(&results)
}

/// `kimi_upload_bytes`: returns one JSON object. The bytes are the blob the daemon staged, or
/// the job's own `content_base64`.
pub async fn upload_bytes(ctx: &ToolCtx<'_>) -> Result<ToolResult, JobError> {
    let args: UploadBytesArgs = ctx.args()?;
    let purpose = purpose(args.purpose.as_deref())?;
    let filename = plain_filename(&args.filename)?;
    let (sha256, size_bytes) = match (&ctx.staged, &args.content_base64) {
        (Some(staged), _) => (staged.sha256.clone(), staged.size_bytes),
        (None, Some(encoded)) => {
            let bytes = decode_inline(&filename, encoded, ctx.state.config.uploads.max_bytes)?;
            let blob = ctx.state.staging.stage_bytes(&filename, bytes).await?;
            (blob.sha256, blob.size)
        }
        (None, None) => {
            return Err(JobError::Permanent(
                "kimi_upload_bytes needs content_base64".to_owned(),
            ));
        }
    };
    let job = UploadJob {
        sha256,
        size_bytes,
        mime_type: Some(guess_mime(&filename)),
        filename,
        purpose,
        provider: Provider::Kimi.as_str().to_owned(),
    };
    let result =
        uploads::upload_staged(ctx.state, &job, ctx.job_id(), Permits::PerCall(ctx.lease)).await?;
    json_result(&result)
}

/// The purpose argument, checked against what Moonshot accepts.
fn purpose(requested: Option<&str>) -> Result<String, JobError> {
    uploads::moonshot_purpose(requested.unwrap_or("file-extract")).map(str::to_owned)
}

/// `kimi_download_file`: the bytes of an uploaded file, read from Supabase Storage (the durable
/// copy) and checked against the recorded sha256, as JSON
/// `{file_id, filename, sha256, size_bytes, content_base64}`.
///
/// The copy is the row's `storage_path`; a row the original daemon wrote has none, and its copy
/// is where the original's storage fix put it, `kimi-uploads/{file_id}` in the configured bucket
/// ([`FileUpload::storage_object`]). A finished row that links no object is looked for there too.
pub async fn download_file(ctx: &ToolCtx<'_>) -> Result<ToolResult, JobError> {
    let args: DownloadArgs = ctx.args()?;
    let db = &ctx.state.db;
    let row = match (&args.file_id, &args.sha256) {
        (Some(id), _) => db::find_by_provider_file_id(db, Provider::Kimi.as_str(), id)
            .await
            .map_err(JobError::from)?
            .ok_or_else(|| {
                JobError::Permanent(format!("no upload is recorded for file_id {id}"))
            })?,
        (None, Some(sha)) => db::find_live(db, Provider::Kimi.as_str(), sha)
            .await
            .map_err(JobError::from)?
            .ok_or_else(|| JobError::Permanent(format!("no live upload has sha256 {sha}")))?,
        (None, None) => {
            return Err(JobError::Permanent(
                "kimi_download_file needs file_id or sha256".to_owned(),
            ));
        }
    };
    let copy = durable_copy(&row)?;
    let size = row
        .file_size_bytes
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0);
    let max = ctx.state.config.uploads.download_max_bytes;
    if size > max {
        return Err(JobError::Permanent(format!(
            "file {} is {size} bytes, over the inline download limit of {max} bytes (EXAI_DOWNLOAD_MAX_BYTES)",
            row.provider_file_id
        )));
    }
    let Some(storage) = ctx.state.providers.supabase.as_ref() else {
        return Err(match copy {
            DurableCopy::Guessed(path) => no_linked_copy(&row, &path, None),
            DurableCopy::Recorded(_) => JobError::Permanent(
                "Supabase Storage is not configured (SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY)"
                    .to_owned(),
            ),
        });
    };
    let path = copy.path();
    let resp = match storage.download(path).await {
        Ok(resp) => resp,
        Err(e) if e.is_no_such_bucket() => {
            return Err(JobError::Permanent(format!(
                "the copy of file {} cannot be read: bucket {} does not exist (SUPABASE_BUCKET)",
                row.provider_file_id,
                storage.bucket()
            )));
        }
        Err(e) if e.is_not_found() => {
            return Err(match &copy {
                DurableCopy::Recorded(path) => missing_copy(&row, path, storage.bucket()),
                DurableCopy::Guessed(path) => no_linked_copy(&row, path, Some(storage.bucket())),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut body = resp.bytes_stream();
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut hasher = sha2::Sha256::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            exai_shared::providers::ProviderError::from_reqwest("supabase", "download", &e)
        })?;
        if (bytes.len() + chunk.len()) as u64 > max {
            return Err(JobError::Permanent(format!(
                "the stored object of {} is over the inline download limit of {max} bytes",
                row.provider_file_id
            )));
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    let sha256 = exai_shared::staging::hex(&hasher.finalize());
    if let Some(expected) = row.sha256.as_deref()
        && expected != sha256
    {
        return Err(JobError::Transient(format!(
            "the stored object of {} hashes to {sha256}, expected {expected}",
            row.provider_file_id
        )));
    }
    json_result(&json!({
        "file_id": row.provider_file_id,
        "filename": row.filename,
        "sha256": sha256,
        "size_bytes": bytes.len(),
        "content_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
    }))
}

/// Where a download looks for a row's durable copy.
#[derive(Debug, PartialEq, Eq)]
enum DurableCopy {
    /// The row records its copy: `storage_path`, or the object the original daemon's fix wrote
    /// (`supabase_file_id` set).
    Recorded(String),
    /// A finished row that links no object: the copy, if any, is at the conventional path.
    Guessed(String),
}

impl DurableCopy {
    fn path(&self) -> &str {
        match self {
            Self::Recorded(path) | Self::Guessed(path) => path,
        }
    }
}

/// Where the row's durable copy is, or why there is none (yet).
fn durable_copy(row: &FileUpload) -> Result<DurableCopy, JobError> {
    if let Some(path) = row.storage_object() {
        return Ok(DurableCopy::Recorded(path));
    }
    let id = &row.provider_file_id;
    match row.status {
        UploadStatus::Completed => Ok(DurableCopy::Guessed(kimi_object_path(id))),
        // A reused `pending` row (the original's) gets a push too, like `storage_pending`.
        UploadStatus::StoragePending | UploadStatus::Uploading | UploadStatus::Pending => {
            Err(JobError::Transient(format!(
                "file {id} is not in storage yet (storage_pending); try again shortly"
            )))
        }
        UploadStatus::StorageFailed => Err(JobError::Permanent(format!(
            "file {id} never reached storage: {} (re-drive with `exai-worker storage redrive --id {}`)",
            row.last_error.as_deref().unwrap_or("storage push failed"),
            row.id
        ))),
        UploadStatus::Deleted | UploadStatus::Failed => Err(JobError::Permanent(format!(
            "file {id} is {} and has no copy in storage",
            row.status
        ))),
    }
}

/// The error of a recorded copy that is not in the bucket.
fn missing_copy(row: &FileUpload, path: &str, bucket: &str) -> JobError {
    let id = &row.provider_file_id;
    JobError::Permanent(if row.is_original_with_copy() {
        format!(
            "the copy of file {id} is missing from storage: the original daemon recorded one \
             (supabase_file_id {}) written to {path}, but bucket {bucket} has no object {path}",
            row.supabase_file_id.as_deref().unwrap_or_default()
        )
    } else {
        format!(
            "the copy of file {id} is missing from storage: bucket {bucket} has no object {path} \
             (the row's storage_path)"
        )
    })
}

/// The error of a finished row that links no object, when none is at the conventional path
/// either (`bucket` is `None` when Supabase Storage is not configured to look).
fn no_linked_copy(row: &FileUpload, path: &str, bucket: Option<&str>) -> JobError {
    let id = &row.provider_file_id;
    let looked = match bucket {
        Some(bucket) => format!("bucket {bucket} has no object {path}"),
        None => format!(
            "{path} cannot be looked for: Supabase Storage is not configured \
             (SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY)"
        ),
    };
    JobError::Permanent(format!(
        "file {id} has no copy in storage: its row links no object (no storage_path, no \
         supabase_file_id: uploaded while KIMI_UPLOAD_TO_SUPABASE=false, or by the original \
         daemon without a storage copy) and {looked}"
    ))
}

/// `kimi_manage_files`.
pub async fn manage_files(ctx: &ToolCtx<'_>) -> Result<ToolResult, JobError> {
    let args: ManageArgs = ctx.args()?;
    match args.operation.as_str() {
        "list" => {
            let limit = args.limit.unwrap_or(100).clamp(1, 1000);
            let guard = ctx.permits().await?;
            permits::holding(ctx.state, guard, list(ctx, limit)).await
        }
        "delete" => {
            let id = args.file_id.as_deref().ok_or_else(|| {
                JobError::Permanent("operation `delete` needs file_id".to_owned())
            })?;
            let guard = ctx.permits().await?;
            permits::holding(ctx.state, guard, delete(ctx, id, args.dry_run)).await
        }
        op @ ("cleanup_orphaned" | "cleanup_expired") => {
            let sweeps: &[&str] = if op == "cleanup_orphaned" {
                &cleanup::ORPHAN_SWEEPS
            } else {
                &["rows_expired"]
            };
            let guard = ctx.permits().await?;
            permits::holding(ctx.state, guard, async {
                let runner = cleanup::Cleanup::from_state(ctx.state);
                json_result(&cleanup::run_only(&runner, args.dry_run, sweeps).await)
            })
            .await
        }
        other => Err(JobError::Permanent(format!(
            "unknown operation `{other}` (list, delete, cleanup_orphaned, cleanup_expired)"
        ))),
    }
}

/// Moonshot's files (newest last, at most `limit`), each with its row when one is recorded.
async fn list(ctx: &ToolCtx<'_>, limit: usize) -> Result<ToolResult, JobError> {
    let files = ctx.state.providers.moonshot.list_files().await?;
    let total = files.len();
    let mut items = Vec::with_capacity(total.min(limit));
    for file in files.into_iter().rev().take(limit).rev() {
        let row = db::find_by_provider_file_id(&ctx.state.db, Provider::Kimi.as_str(), &file.id)
            .await
            .map_err(JobError::from)?;
        items.push(json!({
            "file_id": file.id,
            "filename": file.filename,
            "bytes": file.bytes,
            "created_at": file.created_at,
            "purpose": file.purpose,
            "recorded": row.as_ref().map(row_summary),
        }));
    }
    json_result(&json!({"total": total, "files": items}))
}

fn row_summary(row: &FileUpload) -> Value {
    json!({
        "row_id": row.id,
        "status": row.status.as_str(),
        "sha256": row.sha256,
        "storage_path": row.storage_path,
        "reference_count": row.reference_count,
        "last_used": row.last_used,
    })
}

/// Deletes a Moonshot file and marks its row deleted; its storage copy (also the original
/// daemon's, see [`FileUpload::storage_object`]) is removed too.
async fn delete(ctx: &ToolCtx<'_>, id: &str, dry_run: bool) -> Result<ToolResult, JobError> {
    let row = db::find_by_provider_file_id(&ctx.state.db, Provider::Kimi.as_str(), id)
        .await
        .map_err(JobError::from)?;
    if dry_run {
        let on_moonshot = match ctx.state.providers.moonshot.get_file(id).await {
            Ok(_) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        return json_result(&json!({
            "operation": "delete",
            "dry_run": true,
            "file_id": id,
            "would_delete_from_moonshot": on_moonshot,
            "recorded": row.as_ref().map(row_summary),
            "would_delete_storage_object": row.as_ref().and_then(FileUpload::storage_object),
        }));
    }
    let deleted = ctx.state.providers.moonshot.delete_file(id).await?;
    let mut storage_deleted = None;
    if let Some(row) = &row {
        if let (Some(path), Some(storage)) =
            (row.storage_object(), ctx.state.providers.supabase.as_ref())
        {
            storage_deleted = Some(storage.delete(&path).await?);
        }
        db::mark_deleted(&ctx.state.db, row.id, "deleted by kimi_manage_files")
            .await
            .map_err(JobError::from)?;
    }
    json_result(&json!({
        "operation": "delete",
        "file_id": id,
        "deleted_from_moonshot": deleted,
        "row_marked_deleted": row.is_some(),
        "storage_object_deleted": storage_deleted,
    }))
}
