//! [`Plan`]: every sweep's candidates, planned from one [`Snapshot`]; each item belongs to one
//! sweep only (a row missing its file is not also expired). A dry run reports the plan; a real
//! run acts on it ([`super::act`]).

use std::collections::HashSet;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use exai_shared::cleanup_report::{CleanupSweepReport, SWEEPS, Sweeps};
use exai_shared::db::{FileUpload, UploadStatus};
use exai_shared::providers::supabase::KIMI_UPLOADS_PREFIX;
use exai_shared::providers::{FileObject, ListedObject};
use exai_shared::staging::StagingEntry;
use exai_shared::tools::Provider;

use super::snapshot::Snapshot;
use super::{
    Cleanup, MOONSHOT_NOT_CONFIGURED, MOONSHOT_SWEEPS, SUPABASE_NOT_CONFIGURED, SUPABASE_SWEEPS,
};

/// One sweep's candidates, or why it could not plan.
pub struct SweepPlan<T> {
    /// The candidates.
    pub(super) items: Vec<T>,
    errors: Vec<String>,
    /// Why the sweep does not run at all.
    skipped: Option<String>,
}

impl<T> SweepPlan<T> {
    fn of(items: Vec<T>) -> Self {
        Self {
            items,
            errors: Vec::new(),
            skipped: None,
        }
    }

    fn failed(errors: Vec<String>) -> Self {
        Self {
            items: Vec::new(),
            errors,
            skipped: None,
        }
    }

    /// Drops the candidates and errors: the sweep does not run, for `reason`.
    fn skip(&mut self, reason: &str) {
        self.items.clear();
        self.errors.clear();
        self.skipped = Some(reason.to_owned());
    }

    fn report(&self) -> CleanupSweepReport {
        let mut r = CleanupSweepReport {
            found: self.items.len() as u64,
            skipped: self.skipped.clone(),
            ..CleanupSweepReport::default()
        };
        for e in &self.errors {
            r.record_error(e);
        }
        r
    }
}

/// Every sweep's candidates.
pub struct Plan {
    pub(super) missing: SweepPlan<FileUpload>,
    pub(super) expired: SweepPlan<FileUpload>,
    pub(super) quota: SweepPlan<FileUpload>,
    pub(super) moonshot: SweepPlan<FileObject>,
    pub(super) supabase: SweepPlan<ListedObject>,
    pub(super) staging: SweepPlan<StagingEntry>,
}

pub(super) fn row_bytes(row: &FileUpload) -> u64 {
    row.file_size_bytes
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(0)
}

pub(super) fn last_used(row: &FileUpload) -> DateTime<Utc> {
    row.last_used.unwrap_or(row.created_at)
}

impl Plan {
    /// Plans every sweep from one snapshot; the sweeps whose provider is not configured are
    /// skipped.
    pub async fn make(ctx: &Cleanup, snap: &Snapshot, now: DateTime<Utc>) -> Self {
        let mut plan = Self::plan(ctx, snap, now).await;
        if !ctx.moonshot_configured {
            for name in MOONSHOT_SWEEPS {
                plan.skip(name, MOONSHOT_NOT_CONFIGURED);
            }
        }
        if ctx.providers.supabase.is_none() {
            for name in SUPABASE_SWEEPS {
                plan.skip(name, SUPABASE_NOT_CONFIGURED);
            }
        }
        plan
    }

    /// Marks sweep `name` skipped for `reason`.
    fn skip(&mut self, name: &str, reason: &str) {
        match name {
            "rows_missing_file" => self.missing.skip(reason),
            "rows_expired" => self.expired.skip(reason),
            "quota" => self.quota.skip(reason),
            "moonshot_orphans" => self.moonshot.skip(reason),
            "supabase_orphans" => self.supabase.skip(reason),
            "staging_orphans" => self.staging.skip(reason),
            other => unreachable!("unknown cleanup sweep {other}"),
        }
    }

    async fn plan(ctx: &Cleanup, snap: &Snapshot, now: DateTime<Utc>) -> Self {
        let grace = chrono::Duration::from_std(ctx.settings.grace).unwrap_or(chrono::Duration::MAX);
        let retention =
            chrono::Duration::from_std(ctx.settings.retention).unwrap_or(chrono::Duration::MAX);
        let grace_cutoff = now
            .checked_sub_signed(grace)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let retention_cutoff = now
            .checked_sub_signed(retention)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
            .min(grace_cutoff);
        let staging_cutoff = SystemTime::now()
            .checked_sub(ctx.settings.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);

        let rows = match &snap.rows {
            Ok(rows) => rows,
            Err(e) => {
                let fail = || vec![e.clone()];
                return Self {
                    missing: SweepPlan::failed(fail()),
                    expired: SweepPlan::failed(fail()),
                    quota: SweepPlan::failed(fail()),
                    moonshot: SweepPlan::failed(fail()),
                    supabase: SweepPlan::failed(fail()),
                    staging: SweepPlan::failed(fail()),
                };
            }
        };
        let old_row = |r: &FileUpload| r.created_at <= grace_cutoff && last_used(r) <= grace_cutoff;
        let held_ids: HashSet<&str> = rows.iter().map(|r| r.provider_file_id.as_str()).collect();
        let held_paths: HashSet<&str> = rows
            .iter()
            .filter_map(|r| r.storage_path.as_deref())
            .collect();

        // rows_missing_file: absent from the list, and confirmed missing one by one.
        let missing = match &snap.moonshot {
            Err(e) => SweepPlan::failed(vec![e.clone()]),
            // Skipped (see `make`).
            Ok(None) => SweepPlan::of(Vec::new()),
            Ok(Some(files)) => {
                let listed: HashSet<&str> = files.iter().map(|f| f.id.as_str()).collect();
                let mut plan = SweepPlan::of(Vec::new());
                for row in rows.iter().filter(|r| {
                    r.provider == Provider::Kimi.as_str()
                        && r.created_at <= grace_cutoff
                        && !listed.contains(r.provider_file_id.as_str())
                }) {
                    match ctx.providers.moonshot.get_file(&row.provider_file_id).await {
                        Err(e) if e.is_not_found() => plan.items.push(row.clone()),
                        Ok(_) => {}
                        Err(e) => plan.errors.push(format!(
                            "check Moonshot file {} of row {}: {e}",
                            row.provider_file_id, row.id
                        )),
                    }
                }
                plan
            }
        };
        let missing_ids: HashSet<uuid::Uuid> = missing.items.iter().map(|r| r.id).collect();

        // rows_expired: finished rows unused for the retention period.
        let expired = SweepPlan::of(
            rows.iter()
                .filter(|r| {
                    r.provider == Provider::Kimi.as_str()
                        && matches!(
                            r.status,
                            UploadStatus::Completed | UploadStatus::StorageFailed
                        )
                        && !missing_ids.contains(&r.id)
                        && r.created_at <= grace_cutoff
                        && last_used(r) <= retention_cutoff
                })
                .cloned()
                .collect(),
        );
        let expired_ids: HashSet<uuid::Uuid> = expired.items.iter().map(|r| r.id).collect();

        // quota: least recently used completed rows until the rest fits.
        let quota = match ctx.settings.quota_bytes {
            None => SweepPlan::of(Vec::new()),
            Some(limit) => {
                let mut held: u64 = rows
                    .iter()
                    .filter(|r| !missing_ids.contains(&r.id) && !expired_ids.contains(&r.id))
                    .map(row_bytes)
                    .sum();
                let mut lru: Vec<&FileUpload> = rows
                    .iter()
                    .filter(|r| {
                        r.provider == Provider::Kimi.as_str()
                            && r.status == UploadStatus::Completed
                            && !missing_ids.contains(&r.id)
                            && !expired_ids.contains(&r.id)
                            && old_row(r)
                    })
                    .collect();
                lru.sort_by_key(|r| (last_used(r), r.created_at, r.id));
                let mut evict = Vec::new();
                for row in lru {
                    if held <= limit {
                        break;
                    }
                    held = held.saturating_sub(row_bytes(row));
                    evict.push(row.clone());
                }
                SweepPlan::of(evict)
            }
        };

        // moonshot_orphans: files no row holds.
        let moonshot = match &snap.moonshot {
            Err(e) => SweepPlan::failed(vec![e.clone()]),
            Ok(None) => SweepPlan::of(Vec::new()),
            Ok(Some(files)) => SweepPlan::of(
                files
                    .iter()
                    .filter(|f| {
                        f.created_at > 0
                            && f.created_at <= grace_cutoff.timestamp()
                            && !held_ids.contains(f.id.as_str())
                    })
                    .cloned()
                    .collect(),
            ),
        };

        // supabase_orphans: objects under kimi-uploads/ no row holds.
        let supabase = match &snap.supabase {
            Err(e) => SweepPlan::failed(vec![e.clone()]),
            // Skipped (see `make`).
            Ok(None) => SweepPlan::of(Vec::new()),
            Ok(Some(objects)) => SweepPlan::of(
                objects
                    .iter()
                    .filter(|o| {
                        let file_id = object_file_id(&o.path);
                        o.last_written().is_some_and(|t| t <= grace_cutoff)
                            && !held_paths.contains(o.path.as_str())
                            && !held_ids.contains(file_id)
                    })
                    .cloned()
                    .collect(),
            ),
        };

        // staging_orphans: blobs no unfinished row or job refers to; stale partial writes.
        let staging = match (&snap.staging, &snap.queued) {
            (Err(e), _) | (_, Err(e)) => SweepPlan::failed(vec![e.clone()]),
            (Ok(entries), Ok(queued)) => {
                let pending: HashSet<&str> = rows
                    .iter()
                    .filter(|r| r.status.needs_staged_bytes())
                    .filter_map(|r| r.sha256.as_deref())
                    .chain(queued.iter().map(String::as_str))
                    .collect();
                SweepPlan::of(
                    entries
                        .iter()
                        .filter(|e| {
                            e.modified <= staging_cutoff
                                && e.sha256.as_deref().is_none_or(|s| !pending.contains(s))
                        })
                        .cloned()
                        .collect(),
                )
            }
        };

        Self {
            missing,
            expired,
            quota,
            moonshot,
            supabase,
            staging,
        }
    }

    /// Drops the candidates and errors of the sweeps not named in `only`.
    pub fn keep_only(&mut self, only: &[&str]) {
        fn clear<T>(plan: &mut SweepPlan<T>) {
            plan.items.clear();
            plan.errors.clear();
            plan.skipped = None;
        }
        let on = |name: &str| only.contains(&name);
        if !on(SWEEPS[0]) {
            clear(&mut self.missing);
        }
        if !on(SWEEPS[1]) {
            clear(&mut self.expired);
        }
        if !on(SWEEPS[2]) {
            clear(&mut self.quota);
        }
        if !on(SWEEPS[3]) {
            clear(&mut self.moonshot);
        }
        if !on(SWEEPS[4]) {
            clear(&mut self.supabase);
        }
        if !on(SWEEPS[5]) {
            clear(&mut self.staging);
        }
    }

    /// The reports with `found` and the planning errors.
    pub fn report_found(&self) -> Sweeps {
        Sweeps {
            rows_missing_file: self.missing.report(),
            rows_expired: self.expired.report(),
            quota: self.quota.report(),
            moonshot_orphans: self.moonshot.report(),
            supabase_orphans: self.supabase.report(),
            staging_orphans: self.staging.report(),
        }
    }

    /// The bytes of every sweep's candidates, in [`SWEEPS`] order.
    pub fn bytes(&self) -> [u64; 6] {
        let rows = |p: &SweepPlan<FileUpload>| p.items.iter().map(row_bytes).sum();
        [
            rows(&self.missing),
            rows(&self.expired),
            rows(&self.quota),
            self.moonshot.items.iter().map(|f| f.bytes).sum(),
            self.supabase.items.iter().map(|o| o.size).sum(),
            self.staging.items.iter().map(|e| e.size).sum(),
        ]
    }
}

/// The file id an object path under `kimi-uploads/` names.
pub(super) fn object_file_id(path: &str) -> &str {
    path.strip_prefix(KIMI_UPLOADS_PREFIX)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_name_their_file() {
        assert_eq!(object_file_id("kimi-uploads/abc"), "abc");
        assert_eq!(object_file_id("other/abc"), "other/abc");
    }
}
