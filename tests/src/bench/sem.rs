//! `exai-bench sem`: the leased semaphores against raw Redis round trips, in one run.
//!
//! 1. **Raw Redis**: sequential PINGs on one connection (the baseline of every ratio).
//! 2. **Acquire + release**: `tasks` concurrent tasks, each taking one permit of `global` +
//!    `kimi` (the pair a Kimi call holds; limits high enough that nobody waits) and releasing it
//!    at once, for `secs`: pairs per second, and the latency of one acquire + release.
//! 3. **Wake-up**: limit 1; a holder releases while a waiter is parked in `acquire` (its poll
//!    fallback set to 10 s, so only the pushed release can wake it): the time from the start of
//!    the release call to the waiter's grant, p50/p99 over `wakeups` hand-overs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use exai_shared::keys::Keys;
use exai_shared::redis::RedisHandle;
use exai_shared::semaphore::{Acquire, HolderInfo, Semaphores};
use exai_shared::subscriber::Subscriber;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::measure::{self, Meter, percentile, proc_cpu_secs, sorted};
use super::report::Report;
use super::{config, phases, progress};

/// What the rows mean.
const LEGEND: &[&str] = &[
    "acquire + release: each task takes one lease on `global` and `kimi` together (one Lua script, \
     all or nothing, fencing token, holder record) and releases it (one script that also publishes \
     the release), limits high enough that nobody waits; Redis CPU/job and cmds/job are per pair.",
    "wake-up: limit 1, a waiter parked in acquire after one refusal, its poll fallback 10 s; timed \
     from the start of the holder's release call to the waiter's grant (release script, PUBLISH, \
     the listener's wake, the waiter's acquire script); 10 warm-up rounds unreported.",
];

/// What to run (see the flags of `exai-bench sem`).
#[derive(Debug, Clone)]
pub struct SemOptions {
    /// The Redis server.
    pub redis_url: String,
    /// Concurrent acquire/release tasks.
    pub tasks: usize,
    /// How long the acquire/release phase runs.
    pub duration: Duration,
    /// Hand-overs of the wake-up phase.
    pub wakeups: usize,
}

/// Runs the semaphore benchmark under `prefix`.
pub async fn run(opts: SemOptions, prefix: String) -> anyhow::Result<Report> {
    let base = config(&opts.redis_url, &prefix)?;
    let conn = RedisHandle::connect(&base.redis)
        .await
        .context("connect to redis")?;
    let mut info = RedisHandle::connect(&base.redis)
        .await
        .context("connect to redis")?;
    let machine = measure::machine(&mut info).await?;
    let mut report = Report::new(
        machine,
        json!({"tasks": opts.tasks, "secs": opts.duration.as_secs_f64(),
            "wakeups": opts.wakeups, "prefix": prefix}),
    );
    report.title = "exai-bench sem — leased semaphores against raw Redis, one run".to_owned();
    report.legend = LEGEND;

    progress("raw Redis: sequential PING");
    phases::sequential_baseline(&conn, Duration::from_secs(1), &mut report).await?;

    let subscriber = Subscriber::connect(RedisHandle::pubsub_client(&base.redis)?).await?;
    let sems = Semaphores::new(conn, &subscriber, Keys::new(&prefix), &base.semaphores)
        .await?
        .with_poll_interval(Duration::from_secs(10));
    let names = ["global", "kimi"];
    for name in names {
        sems.set_limit(name, 1_000_000).await?;
    }

    progress(&format!("acquire + release: {} tasks", opts.tasks));
    let meter = Meter::start(&mut info, proc_cpu_secs(None)).await?;
    let (pairs, secs, mut lat) = acquire_release(&sems, &names, opts.tasks, opts.duration).await?;
    let usage = meter.stop(&mut info, proc_cpu_secs(None)).await?;
    report.rate(
        "sem_acquire_release_per_s",
        format!(
            "semaphore: acquire(global + kimi) + release, {} concurrent tasks",
            opts.tasks
        ),
        "pairs/s",
        pairs,
        secs,
        Some(usage),
    );
    lat = sorted(lat);
    report.millis(
        "sem_acquire_release_p50_ms",
        "semaphore: one acquire + release, p50".to_owned(),
        percentile(&lat, 0.50),
    );
    report.millis(
        "sem_acquire_release_p99_ms",
        "semaphore: one acquire + release, p99".to_owned(),
        percentile(&lat, 0.99),
    );

    progress(&format!("wake-up: {} hand-overs", opts.wakeups));
    sems.set_limit("kimi", 1).await?;
    let wake = sorted(wakeups(&sems, opts.wakeups).await?);
    report.millis(
        "sem_wakeup_p50_ms",
        "semaphore: release → parked waiter granted (push wake-up), p50".to_owned(),
        percentile(&wake, 0.50),
    );
    report.millis(
        "sem_wakeup_p99_ms",
        "semaphore: release → parked waiter granted (push wake-up), p99".to_owned(),
        percentile(&wake, 0.99),
    );
    report.notes.push(
        "semaphore rows: the waiter's poll fallback is 10 s, so every wake-up measured came from \
         the pushed release signal"
            .to_owned(),
    );
    Ok(report)
}

/// Phase 2: returns (pairs, seconds, per-pair latencies in ms).
async fn acquire_release(
    sems: &Semaphores,
    names: &[&'static str],
    tasks: usize,
    dur: Duration,
) -> anyhow::Result<(u64, f64, Vec<f64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for t in 0..tasks {
        let (sems, stop, count, names) =
            (sems.clone(), stop.clone(), count.clone(), names.to_vec());
        set.spawn(async move {
            let holder = HolderInfo::new(format!("bench/{t}"), format!("job-{t}"), 1);
            let never = CancellationToken::new();
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                let guard = match sems
                    .acquire(&names, &holder, Duration::ZERO, &never)
                    .await?
                {
                    Acquire::Acquired(g) => g,
                    other => anyhow::bail!("a permit was refused below the limit: {other:?}"),
                };
                guard.release().await?;
                lat.push(s.elapsed().as_secs_f64() * 1e3);
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(lat)
        });
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    Ok((
        count.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
        all,
    ))
}

/// Phase 3: each round, a holder takes the only permit, a waiter parks on it, the holder
/// releases; returns the release-start → grant times in ms.
async fn wakeups(sems: &Semaphores, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let never = CancellationToken::new();
    let holder = HolderInfo::new("bench/holder", "job-holder", 1);
    let mut out = Vec::with_capacity(rounds);
    for r in 0..rounds + 10 {
        let guard = match sems.try_acquire(&["kimi"], &holder).await? {
            Some(g) => g,
            None => anyhow::bail!("the permit was not free at the start of round {r}"),
        };
        let (granted_tx, granted_rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let sems = sems.clone();
            let never = never.clone();
            tokio::spawn(async move {
                let who = HolderInfo::new("bench/waiter", "job-waiter", 1);
                let got = sems
                    .acquire(&["kimi"], &who, Duration::from_secs(30), &never)
                    .await?;
                let at = Instant::now();
                let Acquire::Acquired(g) = got else {
                    anyhow::bail!("the waiter was not granted: {got:?}");
                };
                let _ = granted_tx.send(at);
                g.release().await?;
                anyhow::Ok(())
            })
        };
        // Release only once the waiter is parked (refused once, waiting for the push).
        let parked = Instant::now();
        while sems.waiters() == 0 {
            anyhow::ensure!(
                parked.elapsed() < Duration::from_secs(10),
                "the waiter never parked"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let t0 = Instant::now();
        guard.release().await?;
        let granted = granted_rx.await.context("the waiter task failed")?;
        waiter.await??;
        if r >= 10 {
            out.push(granted.duration_since(t0).as_secs_f64() * 1e3);
        }
    }
    Ok(out)
}
