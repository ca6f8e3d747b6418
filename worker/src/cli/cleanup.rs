//! `exai-worker cleanup [--dry-run] [--json]`: the orphan cleanup run in this process, its
//! report stored like the scheduled job's and printed as a table or JSON.

use exai_shared::Config;
use exai_shared::cleanup_report::{self, CleanupReport, CleanupSweepReport};

use crate::cleanup::{self, Cleanup};

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
pub async fn run(config: &Config, args: &CleanupArgs) -> anyhow::Result<bool> {
    let ctx = Cleanup::connect(config).await?;
    let report = cleanup::run(&ctx, args.dry_run).await;
    let stored = cleanup_report::store_report(&ctx.redis, &ctx.keys, 0, &report).await;
    ctx.db.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report_table(&report));
    }
    stored?;
    Ok(report.is_ok())
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
