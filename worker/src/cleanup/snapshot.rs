//! [`Snapshot`]: what one cleanup run sees, read once — the remote lists before the rows, so a
//! file uploaded after its list was read is young and never a candidate.

use std::collections::HashSet;

use exai_shared::db::{self, FileUpload};
use exai_shared::error_chain;
use exai_shared::jobs::{ToolCallJob, UploadJob};
use exai_shared::providers::supabase::KIMI_UPLOADS_PREFIX;
use exai_shared::providers::{FileObject, ListedObject};
use exai_shared::queue::{self, JobState, Queue};
use exai_shared::staging::StagingEntry;

use super::Cleanup;

/// What one run sees, read once.
pub struct Snapshot {
    /// `None`: Moonshot is not configured.
    pub(super) moonshot: Result<Option<Vec<FileObject>>, String>,
    /// `None`: Supabase Storage is not configured.
    pub(super) supabase: Result<Option<Vec<ListedObject>>, String>,
    pub(super) staging: Result<Vec<StagingEntry>, String>,
    /// The sha256 of every blob an unfinished `uploads` job or tool call will read.
    pub(super) queued: Result<HashSet<String>, String>,
    /// Every row that holds its files.
    pub(super) rows: Result<Vec<FileUpload>, String>,
}

impl Snapshot {
    /// Reads every list and the rows, in that order; what fails is recorded per source.
    pub async fn take(ctx: &Cleanup) -> Self {
        let moonshot = if ctx.moonshot_configured {
            ctx.providers
                .moonshot
                .list_files()
                .await
                .map(Some)
                .map_err(|e| format!("list Moonshot files: {e}"))
        } else {
            Ok(None)
        };
        let supabase = match &ctx.providers.supabase {
            Some(storage) => storage
                .list_objects(KIMI_UPLOADS_PREFIX)
                .await
                .map(Some)
                .map_err(|e| format!("list Supabase objects: {e}")),
            None => Ok(None),
        };
        let staging = ctx
            .staging
            .entries()
            .await
            .map_err(|e| format!("list the staging store: {e}"));
        let queued = match unfinished_staged_hashes(&ctx.uploads_queue).await {
            Ok(mut hashes) => unfinished_staged_hashes(&ctx.tool_calls_queue)
                .await
                .map(|more| {
                    hashes.extend(more);
                    hashes
                })
                .map_err(|e| format!("list unfinished tool calls: {e}")),
            Err(e) => Err(format!("list unfinished uploads jobs: {e}")),
        };
        let rows = db::list_holding(&ctx.db)
            .await
            .map_err(|e| format!("read provider_file_uploads: {}", error_chain(&e)));
        Self {
            moonshot,
            supabase,
            staging,
            queued,
            rows,
        }
    }
}

/// The staged blobs (sha256) that jobs of `q` which may still run (queued, scheduled, running,
/// retrying) will read: an `uploads` job's content, a tool call's bytes the daemon staged.
async fn unfinished_staged_hashes(q: &Queue) -> Result<HashSet<String>, queue::QueueError> {
    let counts = q.counts().await?;
    let mut hashes = HashSet::new();
    for (state, count) in [
        (JobState::Queued, counts.queued),
        (JobState::Scheduled, counts.scheduled),
        (JobState::Running, counts.running),
        (JobState::Retrying, counts.retrying),
    ] {
        let mut offset = 0usize;
        // Pages may come back short (entries that moved on are skipped), so go by the count.
        while (offset as u64) < count {
            let page = q.list(state, offset, queue::MAX_PAGE).await?;
            for job in &page {
                if let Ok(upload) = serde_json::from_slice::<UploadJob>(&job.payload) {
                    hashes.insert(upload.sha256);
                } else if let Ok(call) = serde_json::from_slice::<ToolCallJob>(&job.payload)
                    && let Some(staged) = call.staged
                {
                    hashes.insert(staged.sha256);
                }
            }
            offset += queue::MAX_PAGE;
        }
    }
    Ok(hashes)
}
