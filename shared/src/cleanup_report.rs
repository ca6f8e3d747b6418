//! The orphan cleanup's report, one contract between the worker that writes it and the daemon's
//! admin API that reads it: [`CleanupReport`] (what each sweep found and removed) and its storage
//! in Redis, [`store_report`] under `{P:cleanup}:last` and at the head of the capped list
//! `{P:cleanup}:history` (one `MULTI`), read back by [`last_report`] and [`history`].
//!
//! [`CleanupReport`] serializes as `{"dry_run", "started_at", "finished_at", "sweeps":
//! {"<sweep>": {"found", "removed", "bytes", "errors"?, "skipped"?}}}`. `found` counts the
//! candidates; `removed` and `bytes` count what was removed — in a dry run, what would be removed
//! (then `removed` = `found`); `skipped` says why a sweep did not run (then the counts are 0).
//! A stored report ([`StoredReport`]) adds when it was stored and the cron tick of its run (0 for
//! the CLI).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::keys::Keys;
use crate::redis::RedisHandle;

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
pub struct CleanupSweepReport {
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

impl CleanupSweepReport {
    /// Records an error (logged; kept up to [`MAX_ERRORS`], the rest counted in a last message).
    pub fn record_error(&mut self, message: impl std::fmt::Display) {
        tracing::warn!(error = %message, "cleanup sweep error");
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(message.to_string());
        } else if self.errors.len() == MAX_ERRORS {
            self.errors.push("further errors were left out".to_owned());
        }
    }

    /// Counts one removed candidate of `bytes` bytes.
    pub fn record_removed(&mut self, bytes: u64) {
        self.removed += 1;
        self.bytes += bytes;
    }
}

/// The report of every sweep. A stored report that lacks a sweep reads as that sweep having
/// found nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sweeps {
    /// Rows whose Moonshot file is gone, marked `deleted`.
    pub rows_missing_file: CleanupSweepReport,
    /// Files unused for `EXAI_FILE_RETENTION_DAYS`.
    pub rows_expired: CleanupSweepReport,
    /// Least recently used files evicted above `EXAI_STORAGE_QUOTA_BYTES`.
    pub quota: CleanupSweepReport,
    /// Moonshot files no row holds.
    pub moonshot_orphans: CleanupSweepReport,
    /// Supabase objects under `kimi-uploads/` no row holds.
    pub supabase_orphans: CleanupSweepReport,
    /// Staged blobs no unfinished row or job refers to.
    pub staging_orphans: CleanupSweepReport,
}

impl Sweeps {
    /// `(name, report)` of every sweep, in [`SWEEPS`] order.
    pub fn iter(&self) -> [(&'static str, &CleanupSweepReport); 6] {
        [
            (SWEEPS[0], &self.rows_missing_file),
            (SWEEPS[1], &self.rows_expired),
            (SWEEPS[2], &self.quota),
            (SWEEPS[3], &self.moonshot_orphans),
            (SWEEPS[4], &self.supabase_orphans),
            (SWEEPS[5], &self.staging_orphans),
        ]
    }

    /// Every sweep's report, mutable, in [`SWEEPS`] order.
    pub fn iter_mut(&mut self) -> [&mut CleanupSweepReport; 6] {
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

/// Why a cleanup report could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum CleanupReportError {
    /// Redis refused or could not be reached.
    #[error("{context}")]
    Redis {
        /// What was being done.
        context: &'static str,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// A report that is not the JSON of a [`StoredReport`].
    #[error("{context}")]
    Json {
        /// What was being done.
        context: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl CleanupReportError {
    fn redis(context: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| Self::Redis { context, source }
    }

    fn json(context: &'static str) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| Self::Json { context, source }
    }
}

/// Stores `report` as the last one (and at the head of the history) under the deployment's
/// prefix, with the time and the cron tick (0: manual).
pub async fn store_report(
    redis: &RedisHandle,
    keys: &Keys,
    tick: u64,
    report: &CleanupReport,
) -> Result<StoredReport, CleanupReportError> {
    let stored = StoredReport {
        stored_at: Utc::now(),
        tick,
        report: report.clone(),
    };
    let json = serde_json::to_string(&stored)
        .map_err(CleanupReportError::json("encode the cleanup report"))?;
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
        .map_err(CleanupReportError::redis("store the cleanup report"))?;
    Ok(stored)
}

/// The last stored report, if any run stored one.
pub async fn last_report(
    redis: &RedisHandle,
    keys: &Keys,
) -> Result<Option<StoredReport>, CleanupReportError> {
    let raw: Option<String> = redis::cmd("GET")
        .arg(keys.cleanup_last())
        .query_async(&mut redis.clone())
        .await
        .map_err(CleanupReportError::redis("read the last cleanup report"))?;
    raw.map(|s| {
        serde_json::from_str(&s).map_err(CleanupReportError::json("decode the last cleanup report"))
    })
    .transpose()
}

/// Up to `limit` stored reports, newest first (at most [`HISTORY_LEN`] are kept).
pub async fn history(
    redis: &RedisHandle,
    keys: &Keys,
    limit: usize,
) -> Result<Vec<StoredReport>, CleanupReportError> {
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
        .map_err(CleanupReportError::redis("read the cleanup history"))?;
    raw.iter()
        .map(|s| {
            serde_json::from_str(s).map_err(CleanupReportError::json("decode a cleanup report"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_at(at: DateTime<Utc>) -> CleanupReport {
        CleanupReport {
            dry_run: true,
            sweeps: Sweeps::default(),
            started_at: at,
            finished_at: at,
        }
    }

    #[test]
    fn the_report_serializes_with_every_sweep_by_name() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let mut report = report_at(at);
        report.sweeps.quota = CleanupSweepReport {
            found: 2,
            removed: 2,
            bytes: 10,
            ..CleanupSweepReport::default()
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
    }

    #[test]
    fn a_skipped_sweep_says_why_and_is_not_an_error() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let mut report = report_at(at);
        report.sweeps.moonshot_orphans.skipped = Some("not configured".to_owned());
        assert!(report.is_ok());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["sweeps"]["moonshot_orphans"]["skipped"],
            "not configured"
        );
        assert!(json["sweeps"]["quota"].get("skipped").is_none());

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
        assert!(!back.is_ok());
    }

    #[test]
    fn a_report_without_some_sweep_reads_as_that_sweep_finding_nothing() {
        let partial = serde_json::json!({"dry_run": false, "started_at": "2026-09-21T12:00:00Z",
            "finished_at": "2026-09-21T12:00:01Z",
            "sweeps": {"quota": {"found": 1, "removed": 1, "bytes": 7}}});
        let back: CleanupReport = serde_json::from_value(partial).unwrap();
        assert_eq!(back.sweeps.quota.bytes, 7);
        assert_eq!(back.sweeps.rows_expired, CleanupSweepReport::default());
    }
}
