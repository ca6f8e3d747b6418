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
//! [`CleanupReport`] serializes as `{"dry_run", "started_at", "finished_at", "sweeps":
//! {"<sweep>": {"found", "removed", "bytes", "errors"?, "skipped"?}}}`. `found` counts the
//! candidates; `removed` and `bytes` count what was removed — in a dry run, what would be removed
//! (then `removed` = `found`); `skipped` says why a sweep did not run (then the counts are 0). The scheduled job and the CLI store each report in Redis
//! ([`store_report`]; [`last_report`], [`history`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use chrono::{DateTime, Utc};
use exai_shared::Config;
use exai_shared::db::{self, FileUpload, PgPool, UploadStatus};
use exai_shared::jobs::{CleanupJob, JobError, ToolCallJob, UploadJob};
use exai_shared::keys::Keys;
use exai_shared::providers::supabase::{KIMI_UPLOADS_PREFIX, kimi_object_path};
use exai_shared::providers::{FileObject, ListedObject, Providers};
use exai_shared::queue::{self, JobState, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_shared::staging::{Staging, StagingEntry};
use serde::{Deserialize, Serialize};

use crate::state::AppState;
use crate::uploads::KIMI;

/// The sweeps, in the order a run acts on them (and the report lists them).
pub const SWEEPS: [&str; 6] = [
    "rows_missing_file",
    "rows_expired",
    "quota",
    "moonshot_orphans",
    "supabase_orphans",
    "staging_orphans",
];

/// How many reports [`history`] keeps.
pub const HISTORY_LEN: isize = 100;

/// The most error messages one sweep reports (the rest are counted in a last message).
pub const MAX_ERRORS: usize = 20;

/// What one sweep found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Candidates found.
    pub found: u64,
    /// Candidates removed (in a dry run: that would be removed).
    pub removed: u64,
    /// Bytes of what was (would be) removed.
    pub bytes: u64,
    /// What went wrong; what failed is retried by the next run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Why the sweep did not run (its provider is not configured here); `None` when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl SweepReport {
    fn error(&mut self, message: impl std::fmt::Display) {
        tracing::warn!(error = %message, "cleanup sweep error");
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(message.to_string());
        } else if self.errors.len() == MAX_ERRORS {
            self.errors.push("further errors were left out".to_owned());
        }
    }

    fn removed(&mut self, bytes: u64) {
        self.removed += 1;
        self.bytes += bytes;
    }
}

/// The report of every sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sweeps {
    /// Rows whose Moonshot file is gone, marked `deleted`.
    pub rows_missing_file: SweepReport,
    /// Files unused for `EXAI_FILE_RETENTION_DAYS`.
    pub rows_expired: SweepReport,
    /// Least recently used files evicted above `EXAI_STORAGE_QUOTA_BYTES`.
    pub quota: SweepReport,
    /// Moonshot files no row holds.
    pub moonshot_orphans: SweepReport,
    /// Supabase objects under `kimi-uploads/` no row holds.
    pub supabase_orphans: SweepReport,
    /// Staged blobs no unfinished row or job refers to.
    pub staging_orphans: SweepReport,
}

impl Sweeps {
    /// `(name, report)` of every sweep, in [`SWEEPS`] order.
    pub fn iter(&self) -> [(&'static str, &SweepReport); 6] {
        [
            (SWEEPS[0], &self.rows_missing_file),
            (SWEEPS[1], &self.rows_expired),
            (SWEEPS[2], &self.quota),
            (SWEEPS[3], &self.moonshot_orphans),
            (SWEEPS[4], &self.supabase_orphans),
            (SWEEPS[5], &self.staging_orphans),
        ]
    }

    fn iter_mut(&mut self) -> [&mut SweepReport; 6] {
        [
            &mut self.rows_missing_file,
            &mut self.rows_expired,
            &mut self.quota,
            &mut self.moonshot_orphans,
            &mut self.supabase_orphans,
            &mut self.staging_orphans,
        ]
    }
}

/// The outcome of one cleanup run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// Nothing was removed: `removed` and `bytes` say what a real run would remove.
    pub dry_run: bool,
    /// Every sweep.
    pub sweeps: Sweeps,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

impl CleanupReport {
    /// Whether no sweep reported an error.
    pub fn is_ok(&self) -> bool {
        self.sweeps.iter().iter().all(|(_, s)| s.errors.is_empty())
    }

    /// The report as an aligned table, for people.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let took = (self.finished_at - self.started_at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        let _ = writeln!(
            out,
            "orphan cleanup{} started {} ({took:.1} s)",
            if self.dry_run { " (dry run)" } else { "" },
            self.started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let removed = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let _ = writeln!(
            out,
            "{:<18} {:>8} {:>13} {:>14} {:>7}",
            "sweep", "found", removed, "bytes", "errors"
        );
        let mut total = SweepReport::default();
        let mut errors = 0;
        for (name, s) in self.sweeps.iter() {
            if let Some(reason) = &s.skipped {
                let _ = writeln!(out, "{name:<18} skipped: {reason}");
                continue;
            }
            let _ = writeln!(
                out,
                "{name:<18} {:>8} {:>13} {:>14} {:>7}",
                s.found,
                s.removed,
                s.bytes,
                s.errors.len()
            );
            total.found += s.found;
            total.removed += s.removed;
            total.bytes += s.bytes;
            errors += s.errors.len();
        }
        let _ = writeln!(
            out,
            "{:<18} {:>8} {:>13} {:>14} {:>7}",
            "total", total.found, total.removed, total.bytes, errors
        );
        for (name, s) in self.sweeps.iter() {
            for e in &s.errors {
                let _ = writeln!(out, "error: {name}: {e}");
            }
        }
        out
    }
}

/// A report as stored in Redis: when, for which cron tick (0: a manual run), and the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReport {
    /// When it was stored.
    pub stored_at: DateTime<Utc>,
    /// The cron tick (unix seconds) of the run; 0 for a manual run (CLI).
    pub tick: u64,
    /// The report.
    pub report: CleanupReport,
}

/// The limits a cleanup run applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupSettings {
    /// Nothing younger is removed (`EXAI_ORPHAN_GRACE_SECS`).
    pub grace: Duration,
    /// Files unused this long are removed (`EXAI_FILE_RETENTION_DAYS`).
    pub retention: Duration,
    /// Above this many bytes held by rows, LRU files are evicted (`EXAI_STORAGE_QUOTA_BYTES`).
    pub quota_bytes: Option<u64>,
}

impl CleanupSettings {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            grace: config.cleanup.orphan_grace,
            retention: config.cleanup.file_retention,
            quota_bytes: config.cleanup.storage_quota_bytes,
        }
    }
}

/// What a cleanup run reaches: the rows, the providers, the staging store, the `uploads` queue
/// and Redis (for the reports). Cheap handles.
#[derive(Debug, Clone)]
pub struct Cleanup {
    /// Postgres.
    pub db: PgPool,
    /// Moonshot and Supabase Storage (`None` when not configured).
    pub providers: Providers,
    /// Whether Moonshot is configured (`KIMI_API_KEY` set); without it the sweeps that list or
    /// delete Moonshot files are skipped.
    pub moonshot_configured: bool,
    /// This machine's staging store.
    pub staging: Staging,
    /// The `uploads` queue, whose unfinished jobs keep their staged blobs.
    pub uploads_queue: Queue,
    /// The `tool_calls` queue (its calls may carry bytes the daemon staged).
    pub tool_calls_queue: Queue,
    /// Redis, where reports are stored.
    pub redis: RedisHandle,
    /// The key layout.
    pub keys: Keys,
    /// The limits.
    pub settings: CleanupSettings,
}

impl Cleanup {
    /// Connects what a run needs (Postgres, Redis) from the configuration; for the CLI.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let db = db::connect(&config.database)
            .await
            .context("connect to Postgres (DATABASE_URL)")?;
        let redis = RedisHandle::connect(&config.redis)
            .await
            .context("connect to Redis")?;
        let keys = Keys::new(&config.redis.prefix);
        Ok(Self {
            db,
            providers: Providers::from_config(config).context("build the HTTP clients")?,
            moonshot_configured: config.kimi.api_key.is_some(),
            staging: Staging::from_config(&config.uploads),
            uploads_queue: Queue::new(
                redis.clone(),
                &keys,
                queue::UPLOADS,
                QueuePolicy::from_config(&config.jobs),
            ),
            tool_calls_queue: Queue::new(
                redis.clone(),
                &keys,
                queue::TOOL_CALLS,
                QueuePolicy::from_config(&config.jobs),
            ),
            redis,
            keys,
            settings: CleanupSettings::from_config(config),
        })
    }

    /// The handles of a worker process.
    pub fn from_state(state: &AppState) -> Self {
        Self {
            db: state.db.clone(),
            providers: state.providers.clone(),
            moonshot_configured: state.config.kimi.api_key.is_some(),
            staging: state.staging.clone(),
            uploads_queue: Queue::new(
                state.redis.clone(),
                &state.keys,
                queue::UPLOADS,
                QueuePolicy::from_config(&state.config.jobs),
            ),
            tool_calls_queue: Queue::new(
                state.redis.clone(),
                &state.keys,
                queue::TOOL_CALLS,
                QueuePolicy::from_config(&state.config.jobs),
            ),
            redis: state.redis.clone(),
            keys: state.keys.clone(),
            settings: CleanupSettings::from_config(&state.config),
        }
    }
}

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

/// Stores `report` as the last one (and at the head of the history) under the deployment's
/// prefix, with the time and the cron tick (0: manual).
pub async fn store_report(
    redis: &RedisHandle,
    keys: &Keys,
    tick: u64,
    report: &CleanupReport,
) -> anyhow::Result<StoredReport> {
    let stored = StoredReport {
        stored_at: Utc::now(),
        tick,
        report: report.clone(),
    };
    let json = serde_json::to_string(&stored)?;
    let () = redis::pipe()
        .atomic()
        .set(keys.cleanup_last(), &json)
        .ignore()
        .lpush(keys.cleanup_history(), &json)
        .ignore()
        .ltrim(keys.cleanup_history(), 0, HISTORY_LEN - 1)
        .ignore()
        .query_async(&mut redis.clone())
        .await
        .context("store the cleanup report")?;
    Ok(stored)
}

/// The last stored report, if any run stored one.
pub async fn last_report(redis: &RedisHandle, keys: &Keys) -> anyhow::Result<Option<StoredReport>> {
    let raw: Option<String> = redis::cmd("GET")
        .arg(keys.cleanup_last())
        .query_async(&mut redis.clone())
        .await
        .context("read the last cleanup report")?;
    raw.map(|s| serde_json::from_str(&s).context("decode the last cleanup report"))
        .transpose()
}

/// Up to `limit` stored reports, newest first (at most [`HISTORY_LEN`] are kept).
pub async fn history(
    redis: &RedisHandle,
    keys: &Keys,
    limit: usize,
) -> anyhow::Result<Vec<StoredReport>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let stop = isize::try_from(limit).unwrap_or(HISTORY_LEN) - 1;
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(keys.cleanup_history())
        .arg(0)
        .arg(stop)
        .query_async(&mut redis.clone())
        .await
        .context("read the cleanup history")?;
    raw.iter()
        .map(|s| serde_json::from_str(s).context("decode a cleanup report"))
        .collect()
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
    store_report(&ctx.redis, &ctx.keys, job.tick, &report)
        .await
        .map_err(|e| JobError::Transient(format!("{e:#}")))?;
    serde_json::to_value(&report).map_err(JobError::permanent)
}

/// Flags of `exai-worker cleanup`.
#[derive(clap::Args, Debug, Clone)]
pub struct CleanupArgs {
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `exai-worker cleanup [--dry-run] [--json]`: runs the cleanup in this process, stores and
/// prints the report. Returns whether every sweep succeeded.
pub async fn cli(config: &Config, args: &CleanupArgs) -> anyhow::Result<bool> {
    let ctx = Cleanup::connect(config).await?;
    let report = run(&ctx, args.dry_run).await;
    let stored = store_report(&ctx.redis, &ctx.keys, 0, &report).await;
    ctx.db.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    stored?;
    Ok(report.is_ok())
}

/// What one run sees, read once.
struct Snapshot {
    /// `None`: Moonshot is not configured.
    moonshot: Result<Option<Vec<FileObject>>, String>,
    /// `None`: Supabase Storage is not configured.
    supabase: Result<Option<Vec<ListedObject>>, String>,
    staging: Result<Vec<StagingEntry>, String>,
    /// The sha256 of every blob an unfinished `uploads` job or tool call will read.
    queued: Result<HashSet<String>, String>,
    /// Every row that holds its files.
    rows: Result<Vec<FileUpload>, String>,
}

impl Snapshot {
    async fn take(ctx: &Cleanup) -> Self {
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

/// One sweep's candidates, or why it could not plan.
struct SweepPlan<T> {
    items: Vec<T>,
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

    fn report(&self) -> SweepReport {
        let mut r = SweepReport {
            found: self.items.len() as u64,
            skipped: self.skipped.clone(),
            ..SweepReport::default()
        };
        for e in &self.errors {
            r.error(e);
        }
        r
    }
}

/// Every sweep's candidates.
struct Plan {
    missing: SweepPlan<FileUpload>,
    expired: SweepPlan<FileUpload>,
    quota: SweepPlan<FileUpload>,
    moonshot: SweepPlan<FileObject>,
    supabase: SweepPlan<ListedObject>,
    staging: SweepPlan<StagingEntry>,
}

fn row_bytes(row: &FileUpload) -> u64 {
    row.file_size_bytes
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(0)
}

fn last_used(row: &FileUpload) -> DateTime<Utc> {
    row.last_used.unwrap_or(row.created_at)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    exai_shared::error_chain(e)
}

impl Plan {
    /// Plans every sweep from one snapshot; the sweeps whose provider is not configured are
    /// skipped.
    async fn make(ctx: &Cleanup, snap: &Snapshot, now: DateTime<Utc>) -> Self {
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
                    r.provider == KIMI
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
                    r.provider == KIMI
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
                        r.provider == KIMI
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
    fn keep_only(&mut self, only: &[&str]) {
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
    fn report_found(&self) -> Sweeps {
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
    fn bytes(&self) -> [u64; 6] {
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

    async fn execute(&self, ctx: &Cleanup, sweeps: &mut Sweeps, now: DateTime<Utc>) {
        let holding: Vec<UploadStatus> = UploadStatus::ALL
            .into_iter()
            .filter(|s| s.is_live())
            .collect();
        for row in &self.missing.items {
            let report = &mut sweeps.rows_missing_file;
            match db::mark_deleted_unused(&ctx.db, row.id, "moonshot file missing", &holding, now)
                .await
            {
                Ok(Some(_)) => report.removed(row_bytes(row)),
                Ok(None) => {}
                Err(e) => report.error(format!("mark row {} deleted: {}", row.id, error_chain(&e))),
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
                    report.error(format!("check file {}: {}", file.id, error_chain(&e)));
                    continue;
                }
            }
            match ctx.providers.moonshot.delete_file(&file.id).await {
                Ok(true) => report.removed(file.bytes),
                Ok(false) => {}
                Err(e) => report.error(format!("delete Moonshot file {}: {e}", file.id)),
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
                        report.error(format!("check object {}: {}", object.path, error_chain(&e)));
                        continue;
                    }
                }
                match storage.delete(&object.path).await {
                    Ok(true) => report.removed(object.size),
                    Ok(false) => {}
                    Err(e) => report.error(format!("delete object {}: {e}", object.path)),
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
                        report.error(format!("check blob {sha256}: {}", error_chain(&e)));
                        continue;
                    }
                }
            }
            match ctx.staging.remove_entry(entry).await {
                Ok(true) => report.removed(entry.size),
                Ok(false) => {}
                Err(e) => report.error(format!("remove {}: {e}", entry.path.display())),
            }
        }
    }
}

/// The file id an object path under `kimi-uploads/` names.
fn object_file_id(path: &str) -> &str {
    path.strip_prefix(KIMI_UPLOADS_PREFIX)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(path)
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
    report: &mut SweepReport,
) {
    match db::mark_deleted_unused(&ctx.db, row.id, reason, statuses, used_before).await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            report.error(format!("mark row {} deleted: {}", row.id, error_chain(&e)));
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
        report.error(format!(
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
                report.error(format!("delete object {path} of row {}: {e}", row.id));
                ok = false;
            }
        }
        None if row.storage_object().is_some() => {
            report.error(format!(
                "object {path} of row {} kept: Supabase Storage is not configured",
                row.id
            ));
            ok = false;
        }
        None => {}
    }
    if ok {
        report.removed(row_bytes(row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_serializes_with_every_sweep_by_name() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let mut report = CleanupReport {
            dry_run: true,
            sweeps: Sweeps::default(),
            started_at: at,
            finished_at: at,
        };
        report.sweeps.quota = SweepReport {
            found: 2,
            removed: 2,
            bytes: 10,
            ..SweepReport::default()
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["dry_run"], true);
        for name in SWEEPS {
            let sweep = json["sweeps"][name].as_object().unwrap();
            assert!(sweep.contains_key("found") && sweep.contains_key("removed"));
            assert!(sweep.contains_key("bytes") && !sweep.contains_key("errors"));
        }
        assert_eq!(json["sweeps"]["quota"]["bytes"], 10);
        let back: CleanupReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        assert!(report.to_table().contains("quota"));
    }

    #[test]
    fn a_skipped_sweep_says_why_in_json_and_in_the_table_and_is_not_an_error() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let mut report = CleanupReport {
            dry_run: true,
            sweeps: Sweeps::default(),
            started_at: at,
            finished_at: at,
        };
        report.sweeps.moonshot_orphans.skipped = Some(MOONSHOT_NOT_CONFIGURED.to_owned());
        assert!(report.is_ok());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["sweeps"]["moonshot_orphans"]["skipped"],
            MOONSHOT_NOT_CONFIGURED
        );
        assert!(json["sweeps"]["quota"].get("skipped").is_none());
        let table = report.to_table();
        let line = table
            .lines()
            .find(|l| l.starts_with("moonshot_orphans"))
            .unwrap();
        assert_eq!(
            line,
            format!("moonshot_orphans   skipped: {MOONSHOT_NOT_CONFIGURED}")
        );

        // A report stored before sweeps could be skipped still reads.
        let old = serde_json::json!({"dry_run": false, "started_at": at, "finished_at": at,
            "sweeps": {"rows_missing_file": {"found": 0, "removed": 0, "bytes": 0},
            "rows_expired": {"found": 0, "removed": 0, "bytes": 0},
            "quota": {"found": 0, "removed": 0, "bytes": 0},
            "moonshot_orphans": {"found": 1, "removed": 1, "bytes": 5},
            "supabase_orphans": {"found": 0, "removed": 0, "bytes": 0},
            "staging_orphans": {"found": 0, "removed": 0, "bytes": 0, "errors": ["x"]}}});
        let back: CleanupReport = serde_json::from_value(old).unwrap();
        assert_eq!(back.sweeps.moonshot_orphans.skipped, None);
        assert_eq!(back.sweeps.moonshot_orphans.bytes, 5);
    }

    #[test]
    fn every_provider_sweep_is_a_sweep() {
        for name in MOONSHOT_SWEEPS.iter().chain(&SUPABASE_SWEEPS) {
            assert!(SWEEPS.contains(name), "{name}");
        }
    }

    #[test]
    fn object_paths_name_their_file() {
        assert_eq!(object_file_id("kimi-uploads/abc"), "abc");
        assert_eq!(object_file_id("other/abc"), "other/abc");
    }
}
