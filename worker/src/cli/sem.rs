//! `exai-worker sem`: every fleet-wide semaphore, its configured and effective (adaptive) limits
//! and its live leases, and the providers' rate budgets that are set. Redis only.

use anyhow::Context;
use clap::Args;
use exai_shared::Config;
use exai_shared::budget::{BudgetUsage, Budgets, Used};
use exai_shared::inspect::SemaphoresReport;
use exai_shared::keys::Keys;
use exai_shared::redis::RedisHandle;
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
    let budgets = budget_usage(config).await?;
    if args.json {
        let mut value = serde_json::to_value(&report).context("encode the report")?;
        value["budgets"] = serde_json::to_value(&budgets).context("encode the budgets")?;
        return print_json(&value);
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
    if !budgets.is_empty() {
        say!();
        let mut t = table(["BUDGET", "REQUESTS/MIN", "TOKENS/MIN", "TOKENS/DAY"]);
        let used = |u: Used| match u.limit {
            Some(l) => format!("{}/{l}", u.used),
            None => u.used.to_string(),
        };
        for b in budgets.values() {
            t.add_row([
                b.provider.clone(),
                used(b.requests_per_minute),
                used(b.tokens_per_minute),
                used(b.tokens_per_day),
            ]);
        }
        finish_table(&mut t, &[1, 2, 3]);
        print_table(&t);
    }
    Ok(())
}

/// What each provider with a rate budget has used of it now, by provider.
async fn budget_usage(
    config: &Config,
) -> anyhow::Result<std::collections::BTreeMap<String, BudgetUsage>> {
    let conn = RedisHandle::connect(&config.redis)
        .await
        .context("connect to redis")?;
    let budgets = Budgets::new(
        conn,
        Keys::new(config.redis.prefix.clone()),
        config.semaphores.budgets.clone(),
        config.semaphores.lease,
    );
    let mut out = std::collections::BTreeMap::new();
    for provider in ["kimi", "glm"] {
        if budgets.of(provider).is_some() {
            let usage = budgets
                .usage(provider)
                .await
                .context("read the rate budgets")?;
            out.insert(provider.to_owned(), usage);
        }
    }
    Ok(out)
}
