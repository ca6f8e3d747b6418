//! The orphan cleanup: removes what no row accounts for, files nobody used for a long time, and
//! (with a quota) the least recently used files, never anything a row still holds or anything
//! younger than the grace period (`EXAI_ORPHAN_GRACE_SECS`).
//!
//! | sweep | candidates (each older than the grace period) | action |
//! |---|---|---|
//! | `rows_missing_file` | rows holding a Moonshot file that Moonshot no longer has (absent from the list, and `GET /files/{id}` says 404) | row `deleted` |
//! | `rows_expired` | `completed` / `storage_failed` rows unused (`last_used`) for `EXAI_FILE_RETENTION_DAYS` | row `deleted`, then its Moonshot file and Supabase object deleted |
//! | `quota` | with `EXAI_STORAGE_QUOTA_BYTES` set and the bytes held by rows above it: `completed` rows, least recently used first, until under | as `rows_expired` |
//! | `moonshot_orphans` | Moonshot files no row holds | deleted |
//! | `supabase_orphans` | objects under `kimi-uploads/` no row holds (by `storage_path` or file id) | deleted |
//! | `staging_orphans` | staged blobs no unfinished row (`uploading`, `pending`, `storage_pending`, `storage_failed`) and no unfinished `uploads` job or tool call with daemon-staged bytes (queued, scheduled, running, retrying) refers to by sha256; partial writes (`tmp/*.part`) | deleted |
//!
//! A row *holds* its files while it is neither `deleted` nor `failed` (rows of the original
//! system without a sha256 included). A row the original daemon wrote after its storage fix
//! (`supabase_file_id` set, no `storage_path`) holds `kimi-uploads/{provider_file_id}`, where that
//! fix put the bytes: the orphan sweep keeps the object by its file id, and `rows_expired` and
//! `quota` delete it with the row.
//!
//! # Providers that are not configured
//! A sweep whose provider is not configured here is skipped, and its report says so and why
//! (`skipped`); it is not an error. Without `KIMI_API_KEY`, the four sweeps that list or delete
//! Moonshot files (`rows_missing_file`, `rows_expired`, `quota`, `moonshot_orphans`) are skipped;
//! without Supabase Storage (`SUPABASE_URL`, `SUPABASE_SERVICE_ROLE_KEY`), `supabase_orphans`.
//! The other sweeps run.
//!
//! # One plan, then the actions
//! A run first takes one snapshot (the Moonshot list, the Supabase list, the staging store, the
//! unfinished `uploads` jobs, then the rows — remote lists before rows, so a file uploaded after
//! its list was read is young and never a candidate) and plans every sweep from it; each item
//! belongs to one sweep only (a row missing its file is not also expired). A dry run stops
//! there: its report is exactly what a real run on the same state removes. A real run then
//! acts, sweep after sweep, and re-checks each orphan against the rows just before deleting it.
//!
//! # Failures
//! Each sweep's errors are in its report and never stop the other sweeps. Rows are marked
//! `deleted` *before* their remote copies are deleted, by a guarded update (still in the planned
//! status, not used since it was chosen): a concurrent reuse either comes first (the row is kept)
//! or finds the row deleted (and uploads afresh), so no live row ever points at a deleted file.
//! A run that stops after marking a row leaves copies that no row holds: the orphan sweeps of a
//! later run remove them. Deletes of things already gone count as done.
//!
//! # Reports
//! The report of a run is [`CleanupReport`] (`exai_shared::cleanup_report`, which also stores
//! and reads it: the scheduled job and the CLI store each report in Redis).
//!
//! # Modules
//! - [`context`]: [`Cleanup`], what a run reaches, and [`CleanupSettings`], the limits it applies.
//! - [`snapshot`]: what one run sees, read once.
//! - [`plan`]: every sweep's candidates, planned from the snapshot.
//! - [`act`]: the real run's deletes, re-checked against the rows.
//!
//! The command `exai-worker cleanup` is [`crate::cli::cleanup`].

use std::sync::Arc;

use chrono::Utc;
use exai_shared::cleanup_report::{self, CleanupReport, SWEEPS};
use exai_shared::jobs::{CleanupJob, JobError};

use crate::state::AppState;

pub mod act;
pub mod context;
pub mod plan;
pub mod snapshot;

pub use context::{Cleanup, CleanupSettings};
use plan::Plan;
use snapshot::Snapshot;

/// The sweeps that list or delete Moonshot files: skipped without `KIMI_API_KEY`.
pub const MOONSHOT_SWEEPS: [&str; 4] = [
    "rows_missing_file",
    "rows_expired",
    "quota",
    "moonshot_orphans",
];

/// The sweeps that need Supabase Storage: skipped when it is not configured.
pub const SUPABASE_SWEEPS: [&str; 1] = ["supabase_orphans"];

/// Why the [`MOONSHOT_SWEEPS`] are skipped.
pub const MOONSHOT_NOT_CONFIGURED: &str = "Moonshot is not configured (KIMI_API_KEY is not set)";

/// Why the [`SUPABASE_SWEEPS`] are skipped.
pub const SUPABASE_NOT_CONFIGURED: &str = "Supabase Storage is not configured (SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are not both set)";

/// The sweeps `kimi_manage_files` `cleanup_orphaned` runs: what no row accounts for.
pub const ORPHAN_SWEEPS: [&str; 4] = [
    "rows_missing_file",
    "moonshot_orphans",
    "supabase_orphans",
    "staging_orphans",
];

/// Runs every sweep (see the [module docs](self)) and reports. Never fails as a whole: what
/// went wrong is in the sweeps' `errors`.
pub async fn run(ctx: &Cleanup, dry_run: bool) -> CleanupReport {
    run_only(ctx, dry_run, &SWEEPS).await
}

/// Runs only the named sweeps (names of [`SWEEPS`]); the others report nothing found.
pub async fn run_only(ctx: &Cleanup, dry_run: bool, only: &[&str]) -> CleanupReport {
    let started_at = Utc::now();
    let snapshot = Snapshot::take(ctx).await;
    let mut plan = Plan::make(ctx, &snapshot, started_at).await;
    plan.keep_only(only);
    let mut sweeps = plan.report_found();
    if dry_run {
        for (plan_bytes, report) in plan.bytes().into_iter().zip(sweeps.iter_mut()) {
            report.removed = report.found;
            report.bytes = plan_bytes;
        }
    } else {
        plan.execute(ctx, &mut sweeps, started_at).await;
    }
    let report = CleanupReport {
        dry_run,
        sweeps,
        started_at,
        finished_at: Utc::now(),
    };
    for (name, s) in report.sweeps.iter() {
        if let Some(reason) = &s.skipped {
            tracing::info!(sweep = name, dry_run, reason = %reason, "cleanup sweep skipped");
            continue;
        }
        tracing::info!(
            sweep = name,
            dry_run,
            found = s.found,
            removed = s.removed,
            bytes = s.bytes,
            errors = s.errors.len(),
            "cleanup sweep"
        );
    }
    report
}

/// The `cleanup` job: one run, its report stored; the job's result is the report.
pub async fn run_job(
    state: &Arc<AppState>,
    job: &CleanupJob,
) -> Result<serde_json::Value, JobError> {
    let ctx = Cleanup::from_state(state);
    let report = run(&ctx, job.dry_run).await;
    if !report.dry_run {
        for (sweep, s) in report.sweeps.iter() {
            state.metrics.record_cleanup(sweep, s.removed, s.bytes);
        }
    }
    cleanup_report::store_report(&ctx.redis, &ctx.keys, job.tick, &report)
        .await
        .map_err(|e| JobError::Transient(exai_shared::error_chain(&e)))?;
    serde_json::to_value(&report).map_err(JobError::permanent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_sweep_is_a_sweep() {
        for name in MOONSHOT_SWEEPS.iter().chain(&SUPABASE_SWEEPS) {
            assert!(SWEEPS.contains(name), "{name}");
        }
    }
}
