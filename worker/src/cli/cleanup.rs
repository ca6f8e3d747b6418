//! `exai-worker cleanup [--dry-run] [--json]`: the orphan cleanup run in this process, its
//! report stored like the scheduled job's and printed as a table or JSON.
//!
//! # A shell without the workers' settings
//! A sweep whose provider is not configured is skipped (not an error: a deployment may have no
//! Supabase). But when the workers' last scheduled run *ran* a sweep that this run skipped, the
//! provider is configured for the fleet and only this shell lacks it (a second shell that did
//! not load the stack's settings): the report says nothing about the deployment, so it is
//! printed but not stored — the last stored report, which the admin page shows, stays — and the
//! command fails, naming the sweeps and what to load.

use exai_shared::Config;
use exai_shared::cleanup_report::{self, CleanupReport, CleanupSweepReport, StoredReport};

use crate::cleanup::{self, Cleanup};

/// How many stored reports are searched for the workers' last scheduled run.
const SCHEDULED_SEARCH: usize = 20;

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
/// prints the report. Returns whether every sweep succeeded; an error when the report was not
/// stored (see the module docs).
pub async fn run(config: &Config, args: &CleanupArgs) -> anyhow::Result<bool> {
    let ctx = Cleanup::connect(config).await?;
    let report = cleanup::run(&ctx, args.dry_run).await;
    let scheduled = cleanup_report::history(&ctx.redis, &ctx.keys, SCHEDULED_SEARCH)
        .await
        .ok()
        .and_then(|h| h.into_iter().find(|stored| stored.tick > 0));
    let missing = skipped_here_only(&report, scheduled.as_ref());
    let stored = if missing.is_empty() {
        Some(cleanup_report::store_report(&ctx.redis, &ctx.keys, 0, &report).await)
    } else {
        None
    };
    ctx.db.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report_table(&report));
    }
    if !missing.is_empty() {
        let sweeps: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
        let mut reasons: Vec<&str> = missing.iter().map(|(_, why)| *why).collect();
        reasons.dedup();
        anyhow::bail!(
            "report not stored (the last stored report is kept): {} skipped here ({}), but the \
             workers' last scheduled run ran them, so this shell lacks the workers' settings; \
             load them (for a stack scripts/up started: set -a; . data/run/env; set +a) and run \
             again",
            sweeps.join(", "),
            reasons.join("; ")
        );
    }
    stored.transpose()?;
    Ok(report.is_ok())
}

/// The sweeps `report` skipped that `scheduled` (the workers' last scheduled run) ran, with the
/// reason each was skipped here.
fn skipped_here_only<'a>(
    report: &'a CleanupReport,
    scheduled: Option<&StoredReport>,
) -> Vec<(&'static str, &'a str)> {
    let Some(scheduled) = scheduled else {
        return Vec::new();
    };
    report
        .sweeps
        .iter()
        .into_iter()
        .zip(scheduled.report.sweeps.iter())
        .filter_map(
            |((name, here), (_, there))| match (&here.skipped, &there.skipped) {
                (Some(why), None) => Some((name, why.as_str())),
                _ => None,
            },
        )
        .collect()
}

/// The report as an aligned table, for people.
pub fn report_table(report: &CleanupReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let took = (report.finished_at - report.started_at)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    let _ = writeln!(
        out,
        "orphan cleanup{} started {} ({took:.1} s)",
        if report.dry_run { " (dry run)" } else { "" },
        report
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let removed = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let _ = writeln!(
        out,
        "{:<18} {:>8} {:>13} {:>14} {:>7}",
        "sweep", "found", removed, "bytes", "errors"
    );
    let mut total = CleanupSweepReport::default();
    let mut errors = 0;
    for (name, s) in report.sweeps.iter() {
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
    for (name, s) in report.sweeps.iter() {
        for e in &s.errors {
            let _ = writeln!(out, "error: {name}: {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cleanup::MOONSHOT_NOT_CONFIGURED;
    use chrono::{DateTime, Utc};
    use exai_shared::cleanup_report::Sweeps;

    #[test]
    fn only_sweeps_the_workers_ran_and_this_run_skipped_keep_the_report_out() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let report = |skipped: &[&str]| {
            let mut r = CleanupReport {
                dry_run: true,
                sweeps: Sweeps::default(),
                started_at: at,
                finished_at: at,
            };
            for name in skipped {
                match *name {
                    "moonshot_orphans" => {
                        r.sweeps.moonshot_orphans.skipped = Some(MOONSHOT_NOT_CONFIGURED.into())
                    }
                    "supabase_orphans" => r.sweeps.supabase_orphans.skipped = Some("no".into()),
                    other => panic!("{other}"),
                }
            }
            r
        };
        let here = report(&["moonshot_orphans", "supabase_orphans"]);
        let scheduled = StoredReport {
            stored_at: at,
            tick: 1,
            report: report(&["supabase_orphans"]),
        };
        assert_eq!(
            skipped_here_only(&here, Some(&scheduled)),
            [("moonshot_orphans", MOONSHOT_NOT_CONFIGURED)]
        );
        assert!(skipped_here_only(&here, None).is_empty());
        assert!(skipped_here_only(&report(&[]), Some(&scheduled)).is_empty());
    }

    #[test]
    fn the_table_lists_every_sweep_and_says_why_one_was_skipped() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let mut report = CleanupReport {
            dry_run: true,
            sweeps: Sweeps::default(),
            started_at: at,
            finished_at: at,
        };
        report.sweeps.moonshot_orphans.skipped = Some(MOONSHOT_NOT_CONFIGURED.to_owned());
        let table = report_table(&report);
        assert!(table.contains("quota"));
        let line = table
            .lines()
            .find(|l| l.starts_with("moonshot_orphans"))
            .unwrap();
        assert_eq!(
            line,
            format!("moonshot_orphans   skipped: {MOONSHOT_NOT_CONFIGURED}")
        );
    }
}
