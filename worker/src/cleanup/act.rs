//! The real run's actions on a [`Plan`], sweep after sweep. Each orphan is re-checked against
//! the rows just before it is deleted; a row is marked `deleted` by a guarded update *before*
//! its copies are deleted, so no live row ever points at a deleted file.

use chrono::{DateTime, Utc};
use exai_shared::cleanup_report::{CleanupSweepReport, Sweeps};
use exai_shared::db::{self, FileUpload, UploadStatus};
use exai_shared::error_chain;
use exai_shared::providers::supabase::kimi_object_path;

use super::Cleanup;
use super::plan::{Plan, last_used, object_file_id, row_bytes};

impl Plan {
    /// Removes every planned candidate, counting what was removed and what failed in `sweeps`.
    pub async fn execute(&self, ctx: &Cleanup, sweeps: &mut Sweeps, now: DateTime<Utc>) {
        let holding: Vec<UploadStatus> = UploadStatus::ALL
            .into_iter()
            .filter(|s| s.is_live())
            .collect();
        for row in &self.missing.items {
            let report = &mut sweeps.rows_missing_file;
            match db::mark_deleted_unused(&ctx.db, row.id, "moonshot file missing", &holding, now)
                .await
            {
                Ok(Some(_)) => report.record_removed(row_bytes(row)),
                Ok(None) => {}
                Err(e) => {
                    report.record_error(format!("mark row {} deleted: {}", row.id, error_chain(&e)))
                }
            }
        }

        let retention_days = ctx.settings.retention.as_secs() / 86_400;
        let reason = format!("unused for {retention_days} days");
        for row in &self.expired.items {
            let statuses = [UploadStatus::Completed, UploadStatus::StorageFailed];
            remove_row(
                ctx,
                row,
                &reason,
                &statuses,
                last_used(row),
                &mut sweeps.rows_expired,
            )
            .await;
        }
        for row in &self.quota.items {
            remove_row(
                ctx,
                row,
                "evicted over the storage quota",
                &[UploadStatus::Completed],
                last_used(row),
                &mut sweeps.quota,
            )
            .await;
        }

        for file in &self.moonshot.items {
            let report = &mut sweeps.moonshot_orphans;
            match db::is_file_held(&ctx.db, Some(&file.id), None).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    report.record_error(format!("check file {}: {}", file.id, error_chain(&e)));
                    continue;
                }
            }
            match ctx.providers.moonshot.delete_file(&file.id).await {
                Ok(true) => report.record_removed(file.bytes),
                Ok(false) => {}
                Err(e) => report.record_error(format!("delete Moonshot file {}: {e}", file.id)),
            }
        }

        if let Some(storage) = &ctx.providers.supabase {
            for object in &self.supabase.items {
                let report = &mut sweeps.supabase_orphans;
                let file_id = object_file_id(&object.path);
                match db::is_file_held(&ctx.db, Some(file_id), Some(&object.path)).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        report.record_error(format!(
                            "check object {}: {}",
                            object.path,
                            error_chain(&e)
                        ));
                        continue;
                    }
                }
                match storage.delete(&object.path).await {
                    Ok(true) => report.record_removed(object.size),
                    Ok(false) => {}
                    Err(e) => report.record_error(format!("delete object {}: {e}", object.path)),
                }
            }
        }

        for entry in &self.staging.items {
            let report = &mut sweeps.staging_orphans;
            if let Some(sha256) = &entry.sha256 {
                match db::is_sha256_pending(&ctx.db, sha256).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        report.record_error(format!("check blob {sha256}: {}", error_chain(&e)));
                        continue;
                    }
                }
            }
            match ctx.staging.remove_entry(entry).await {
                Ok(true) => report.record_removed(entry.size),
                Ok(false) => {}
                Err(e) => report.record_error(format!("remove {}: {e}", entry.path.display())),
            }
        }
    }
}

/// Marks a row deleted (guarded), then deletes its Moonshot file and its Supabase object. A row
/// used since it was chosen is kept (not counted, not an error). A failed remote delete is an
/// error; the copy left behind is an orphan the next run removes.
async fn remove_row(
    ctx: &Cleanup,
    row: &FileUpload,
    reason: &str,
    statuses: &[UploadStatus],
    used_before: DateTime<Utc>,
    report: &mut CleanupSweepReport,
) {
    match db::mark_deleted_unused(&ctx.db, row.id, reason, statuses, used_before).await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            report.record_error(format!("mark row {} deleted: {}", row.id, error_chain(&e)));
            return;
        }
    }
    let mut ok = true;
    if let Err(e) = ctx
        .providers
        .moonshot
        .delete_file(&row.provider_file_id)
        .await
    {
        report.record_error(format!(
            "delete Moonshot file {} of row {}: {e}",
            row.provider_file_id, row.id
        ));
        ok = false;
    }
    let path = row
        .storage_path
        .clone()
        .unwrap_or_else(|| kimi_object_path(&row.provider_file_id));
    match &ctx.providers.supabase {
        Some(storage) => {
            if let Err(e) = storage.delete(&path).await {
                report.record_error(format!("delete object {path} of row {}: {e}", row.id));
                ok = false;
            }
        }
        None if row.storage_object().is_some() => {
            report.record_error(format!(
                "object {path} of row {} kept: Supabase Storage is not configured",
                row.id
            ));
            ok = false;
        }
        None => {}
    }
    if ok {
        report.record_removed(row_bytes(row));
    }
}
