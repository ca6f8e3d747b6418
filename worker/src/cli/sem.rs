//! `exai-worker sem`: every fleet-wide semaphore, its configured and effective (adaptive) limits
//! and its live leases. Redis only.

use anyhow::Context;
use clap::Args;
use exai_shared::Config;
use exai_shared::inspect::SemaphoresReport;
use exai_shared::semaphore::Semaphores;

use super::{finish_table, format_duration_ms, or_dash, print_json, print_table, table};

/// Flags of `exai-worker sem`.
#[derive(Args, Debug)]
pub struct SemArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Prints [`SemaphoresReport`]: one table of the semaphores, then one of the live leases.
pub async fn run(config: &Config, args: &SemArgs) -> anyhow::Result<()> {
    let semaphores = Semaphores::from_config(config)
        .await
        .context("connect to redis")?;
    let report = SemaphoresReport::collect(&semaphores)
        .await
        .context("read the semaphores")?;
    if args.json {
        return print_json(&report);
    }
    let mut t = table(["SEMAPHORE", "LIMIT", "EFFECTIVE", "IN USE"]);
    for (name, s) in &report.semaphores {
        t.add_row([
            name.clone(),
            or_dash(s.limit),
            or_dash(s.effective_limit),
            s.in_use.to_string(),
        ]);
    }
    finish_table(&mut t, &[1, 2, 3]);
    print_table(&t);
    let mut holders = table(["SEMAPHORE", "LEASE", "HOLDER", "JOB", "EXPIRES IN"]);
    let mut any = false;
    for (name, s) in &report.semaphores {
        for h in &s.holders {
            any = true;
            holders.add_row([
                name.clone(),
                h.lease.clone(),
                or_dash(h.holder.as_deref()),
                or_dash(h.job_id.as_deref()),
                format_duration_ms(h.expires_in_ms),
            ]);
        }
    }
    say!();
    if any {
        finish_table(&mut holders, &[4]);
        print_table(&holders);
    } else {
        say!("no live leases");
    }
    Ok(())
}
