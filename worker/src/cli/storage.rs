//! `exai-worker storage retry-failed` (and `storage redrive`): enqueue a fresh Supabase Storage
//! push, with a full retry budget, for rows whose push gave up. Needs Postgres and Redis.

use anyhow::Context;
use clap::Args;
use exai_shared::Config;
use exai_shared::db;
use exai_shared::keys::Keys;
use exai_shared::redis::RedisHandle;
use serde::Serialize;

use super::{Progress, print_json};
use crate::storage::{self, PushQueue, Redrive, Redriven, StoragePushPolicy};

/// Flags of `exai-worker storage retry-failed`.
#[derive(Args, Debug)]
pub struct RetryFailedArgs {
    /// The most rows re-driven in one run (least recently changed first).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `storage retry-failed --json`: `{"redriven":[{"row_id":..,"job_id":..}]}`.
#[derive(Serialize)]
struct RedriveReport {
    redriven: Vec<Redriven>,
}

/// `exai-worker storage retry-failed`: every `storage_failed` row, up to `--limit`.
pub async fn retry_failed(config: &Config, args: &RetryFailedArgs) -> anyhow::Result<()> {
    redrive(
        config,
        Redrive::AllFailed {
            limit: i64::from(args.limit),
        },
        args.json,
    )
    .await
}

/// Re-drives the rows `which` names, reporting progress per row.
pub async fn redrive(config: &Config, which: Redrive, json: bool) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    let outcome = redrive_with(&pool, config, which, json).await;
    pool.close().await;
    let redriven = outcome?;
    if json {
        return print_json(&RedriveReport { redriven });
    }
    if redriven.is_empty() {
        say!("no storage_failed rows to re-drive");
    } else {
        say!("re-drove {} rows", redriven.len());
    }
    Ok(())
}

async fn redrive_with(
    pool: &db::PgPool,
    config: &Config,
    which: Redrive,
    json: bool,
) -> anyhow::Result<Vec<Redriven>> {
    let conn = RedisHandle::connect(&config.redis)
        .await
        .context("connect to redis")?;
    let keys = Keys::new(&config.redis.prefix);
    let push_queue = PushQueue::new(conn, &keys, StoragePushPolicy::from_config(config));
    let rows = storage::redrive_rows(pool, which)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let progress = Progress::new(rows.len() as u64, "re-driving storage pushes", json);
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let r = storage::redrive_row(&push_queue, row)
            .await
            .map_err(|e| anyhow::anyhow!("re-drive row {}: {e}", row.id))?;
        progress.item(|| format!("re-driven {} as job {}", r.row_id, r.job_id));
        out.push(r);
    }
    progress.finish();
    Ok(out)
}
