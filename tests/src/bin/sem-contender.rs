//! `sem-contender`: many tasks of one OS process competing for the fleet-wide semaphores, for the
//! multi-process tests in `tests/tests/semaphore.rs`.
//!
//! Each contender acquires the named semaphores, holds them for `--hold-ms`, releases, and does it
//! again for `--rounds` rounds (`0` holds the first lease forever, for crash tests). With
//! `--counter-key`, each contender also keeps an independent count of concurrent holders: it
//! INCRs the key right after acquiring (a result above `--limit` is a violation), and DECRs it
//! right before releasing.
//!
//! The last line on stdout is `RESULT <json>` (see [`Report`]); the exit status is 0 unless Redis
//! failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use exai_shared::Config;
use exai_shared::semaphore::{Acquire, HolderInfo, Semaphores};
use tokio_util::sync::CancellationToken;

/// Command-line arguments.
#[derive(Debug, Parser)]
struct Args {
    /// The Redis key prefix (the test's own namespace).
    #[arg(long)]
    prefix: String,
    /// The Redis server.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// How many concurrent contenders this process runs.
    #[arg(long, default_value_t = 50)]
    contenders: u32,
    /// The semaphores each contender acquires together, comma-separated.
    #[arg(long, default_value = "kimi", value_delimiter = ',')]
    names: Vec<String>,
    /// How long each contender holds its lease per round.
    #[arg(long, default_value_t = 10)]
    hold_ms: u64,
    /// Rounds per contender; 0 holds the first lease forever.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// The lease TTL (`EXAI_SEMAPHORE_LEASE_MS`).
    #[arg(long, default_value_t = 30_000)]
    lease_ms: u64,
    /// How long one acquire waits before it times out and is retried (and counted).
    #[arg(long, default_value_t = 30_000)]
    wait_ms: u64,
    /// A key for the independent concurrency count; none disables the check.
    #[arg(long)]
    counter_key: Option<String>,
    /// The most concurrent holders the independent check allows.
    #[arg(long, default_value_t = 6)]
    limit: i64,
}

/// What one process reports on its `RESULT` line.
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    pid: u32,
    contenders: u32,
    rounds: u32,
    /// Contenders that finished all their rounds.
    completed: u64,
    /// Leases granted.
    acquired: u64,
    /// Acquires that timed out (and were retried).
    timeouts: u64,
    /// Times the independent counter exceeded the limit.
    violations: u64,
    /// The highest independent count seen by this process.
    max_seen: u64,
    /// Leases reported lost while held.
    lost: u64,
}

/// Counters shared by the contenders of this process.
#[derive(Debug, Default)]
struct Tally {
    completed: AtomicU64,
    acquired: AtomicU64,
    timeouts: AtomicU64,
    violations: AtomicU64,
    max_seen: AtomicU64,
    lost: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::from_vars([
        ("REDIS_URL", args.redis_url.clone()),
        ("EXAI_REDIS_PREFIX", args.prefix.clone()),
        ("EXAI_SEMAPHORE_LEASE_MS", args.lease_ms.to_string()),
    ])?;
    let semaphores = Semaphores::from_config(&config)
        .await
        .context("set up semaphores")?;
    let counter = match &args.counter_key {
        Some(_) => Some(
            redis::Client::open(args.redis_url.as_str())?
                .get_multiplexed_async_connection()
                .await
                .context("connect the counter connection")?,
        ),
        None => None,
    };

    let args = Arc::new(args);
    let tally = Arc::new(Tally::default());
    let pid = std::process::id();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.contenders {
        tasks.spawn(contend(
            index,
            Arc::clone(&args),
            semaphores.clone(),
            counter.clone(),
            Arc::clone(&tally),
        ));
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("contender panicked")??;
    }

    let report = Report {
        pid,
        contenders: args.contenders,
        rounds: args.rounds,
        completed: tally.completed.load(Ordering::Relaxed),
        acquired: tally.acquired.load(Ordering::Relaxed),
        timeouts: tally.timeouts.load(Ordering::Relaxed),
        violations: tally.violations.load(Ordering::Relaxed),
        max_seen: tally.max_seen.load(Ordering::Relaxed),
        lost: tally.lost.load(Ordering::Relaxed),
    };
    println!("RESULT {}", serde_json::to_string(&report)?);
    Ok(())
}

/// One contender: `rounds` acquire-hold-release cycles, or one acquire held forever.
async fn contend(
    index: u32,
    args: Arc<Args>,
    semaphores: Semaphores,
    mut counter: Option<redis::aio::MultiplexedConnection>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let names: Vec<&str> = args.names.iter().map(String::as_str).collect();
    let pid = std::process::id();
    let never = CancellationToken::new();
    let mut round = 0;
    while args.rounds == 0 || round < args.rounds {
        let holder = HolderInfo::new(
            format!("contender-{pid}-{index}"),
            format!("job-{pid}-{index}-{round}"),
            1,
        );
        let guard = match semaphores
            .acquire(&names, &holder, Duration::from_millis(args.wait_ms), &never)
            .await?
        {
            Acquire::Acquired(guard) => guard,
            Acquire::TimedOut => {
                tally.timeouts.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Acquire::Cancelled => unreachable!("the cancellation token is never cancelled"),
        };
        tally.acquired.fetch_add(1, Ordering::Relaxed);

        if let (Some(conn), Some(key)) = (counter.as_mut(), args.counter_key.as_deref()) {
            let now: i64 = redis::cmd("INCR").arg(key).query_async(conn).await?;
            tally
                .max_seen
                .fetch_max(u64::try_from(now).unwrap_or(0), Ordering::Relaxed);
            if now > args.limit {
                tally.violations.fetch_add(1, Ordering::Relaxed);
                eprintln!("violation: {now} concurrent holders (limit {})", args.limit);
            }
        }

        if args.rounds == 0 {
            // Hold forever: the crash test kills this process while it holds.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(args.hold_ms)).await;

        if guard.is_lost() {
            tally.lost.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(conn), Some(key)) = (counter.as_mut(), args.counter_key.as_deref()) {
            let _: i64 = redis::cmd("DECR").arg(key).query_async(conn).await?;
        }
        guard.release().await?;
        round += 1;
    }
    tally.completed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
