//! `exai-worker usage [--session S] [--json] [--limit N]`: the recorded token sums (cost
//! accounting) per session, per tool and per model, or one session's. Redis only.
//!
//! JSON: without `--session`, [`UsageReport`] (`retention_secs`, `total`, `sessions`, `tools`,
//! `models`, each line `{name, calls, prompt_tokens, completion_tokens, cached_tokens,
//! total_tokens, last_ms}`, models with their `provider`); with `--session`, that session's line
//! (all zeros and `last_ms` 0 when nothing is recorded for it).

use anyhow::Context;
use clap::Args;
use exai_shared::Config;
use exai_shared::keys::Keys;
use exai_shared::redis::RedisHandle;
use exai_shared::usage::{Usage, UsageEntry, UsageLedger, UsageReport};

use super::{finish_table, format_ms, print_json, print_table, table};

/// Flags of `exai-worker usage`.
#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Show only this session's sums.
    #[arg(long)]
    pub session: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// The most sessions, tools and models listed (most recently used first; at most 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// Prints the sums.
pub async fn run(config: &Config, args: &UsageArgs) -> anyhow::Result<()> {
    let conn = RedisHandle::connect(&config.redis)
        .await
        .context("connect to redis")?;
    let ledger = UsageLedger::new(
        conn,
        Keys::new(&config.redis.prefix),
        config.usage.retention,
    );
    if let Some(session) = &args.session {
        let entry = ledger
            .session(session)
            .await
            .context("read the session's usage")?
            .unwrap_or_else(|| UsageEntry {
                name: session.clone(),
                provider: None,
                usage: Usage::default(),
                last_ms: 0,
            });
        if args.json {
            return print_json(&entry);
        }
        print_entries("SESSION", &[entry]);
        return Ok(());
    }
    let report = ledger
        .report(args.limit)
        .await
        .context("read the usage sums")?;
    if args.json {
        return print_json(&report);
    }
    print_report(&report);
    Ok(())
}

/// The three tables of a report, then the total.
fn print_report(report: &UsageReport) {
    for (title, entries) in [
        ("SESSION", &report.sessions),
        ("TOOL", &report.tools),
        ("MODEL", &report.models),
    ] {
        if entries.is_empty() {
            say!("no {} usage recorded", title.to_lowercase());
        } else {
            print_entries(title, entries);
        }
        say!();
    }
    let t = &report.total;
    say!(
        "total: {} calls, {} tokens ({} prompt, {} cached, {} completion); sums kept {} s after their last call",
        t.calls,
        t.total_tokens,
        t.prompt_tokens,
        t.cached_tokens,
        t.completion_tokens,
        report.retention_secs
    );
}

/// One table of report lines, headed `title`.
fn print_entries(title: &str, entries: &[UsageEntry]) {
    let mut t = table([
        title,
        "CALLS",
        "PROMPT",
        "CACHED",
        "COMPLETION",
        "TOTAL",
        "LAST CALL",
    ]);
    for e in entries {
        let name = match &e.provider {
            Some(p) => format!("{} ({p})", e.name),
            None => e.name.clone(),
        };
        t.add_row([
            name,
            e.usage.calls.to_string(),
            e.usage.prompt_tokens.to_string(),
            e.usage.cached_tokens.to_string(),
            e.usage.completion_tokens.to_string(),
            e.usage.total_tokens.to_string(),
            if e.last_ms == 0 {
                "-".to_owned()
            } else {
                format_ms(e.last_ms)
            },
        ]);
    }
    finish_table(&mut t, &[1, 2, 3, 4, 5]);
    print_table(&t);
}
