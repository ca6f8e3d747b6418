//! The measurements themselves: raw Redis round trips, enqueues, drains and latencies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use exai_shared::jobs::ToolResult;
use exai_shared::queue::{Ack, JobState, NewJob, Queue};
use exai_shared::redis::RedisHandle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::engine::Start;
use super::procs::WorkerProcs;
use super::tracker::Tracker;

/// One PING round trip.
async fn ping(conn: &mut RedisHandle) -> redis::RedisResult<()> {
    let _: redis::Value = redis::cmd("PING").query_async(conn).await?;
    Ok(())
}

/// Sequential PINGs on one connection for `dur`: returns (round trips, seconds).
pub async fn ping_sequential(conn: &RedisHandle, dur: Duration) -> anyhow::Result<(u64, f64)> {
    let mut conn = conn.clone();
    for _ in 0..200 {
        ping(&mut conn).await?;
    }
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < dur {
        for _ in 0..100 {
            ping(&mut conn).await?;
        }
        n += 100;
    }
    Ok((n, t0.elapsed().as_secs_f64()))
}

/// Measures sequential PING round trips for `dur` and records them as the run's baseline row
/// (`redis_roundtrips_per_s`, the denominator of the × raw RT column).
pub async fn sequential_baseline(
    conn: &RedisHandle,
    dur: Duration,
    report: &mut super::report::Report,
) -> anyhow::Result<()> {
    let (n, secs) = ping_sequential(conn, dur).await?;
    report.baseline.sequential_per_s = report.rate(
        "redis_roundtrips_per_s",
        "raw Redis: PING round trips, sequential, 1 connection".to_owned(),
        "ops/s",
        n,
        secs,
        None,
    );
    Ok(())
}

/// PINGs from `tasks` concurrent tasks sharing one multiplexed connection (which pipelines
/// what they send) for `dur`: returns (PINGs, seconds until the last task finished).
pub async fn ping_concurrent(
    conn: &RedisHandle,
    tasks: usize,
    dur: Duration,
) -> anyhow::Result<(u64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for _ in 0..tasks {
        let (mut conn, stop, count) = (conn.clone(), stop.clone(), count.clone());
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                ping(&mut conn).await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok((count.load(Ordering::Relaxed), t0.elapsed().as_secs_f64()))
}

/// Enqueues `n` jobs one `enqueue` call each, from `callers` concurrent tasks: returns seconds.
pub async fn enqueue_single(
    queue: &Queue,
    payload: &[u8],
    n: u64,
    callers: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let payload: Arc<[u8]> = payload.into();
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for _ in 0..callers {
        let (queue, next, payload) = (queue.clone(), next.clone(), payload.clone());
        set.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = queue.enqueue(&NewJob::new(payload.to_vec())).await?;
                anyhow::ensure!(r.is_created(), "enqueue of a fresh id was a duplicate");
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Enqueues `n` jobs with `enqueue_bulk` calls of `batch` jobs, from `producers` concurrent
/// tasks each with one call in flight: returns seconds.
pub async fn enqueue_bulk(
    queue: &Queue,
    payload: &[u8],
    n: u64,
    batch: usize,
    producers: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let payload: Arc<[u8]> = payload.into();
    let batch = batch as u64;
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for _ in 0..producers {
        let (queue, next, payload) = (queue.clone(), next.clone(), payload.clone());
        set.spawn(async move {
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= n {
                    break;
                }
                let len = batch.min(n - from) as usize;
                let jobs: Vec<NewJob> = (0..len).map(|_| NewJob::new(payload.to_vec())).collect();
                let out = queue.enqueue_bulk(&jobs).await?;
                anyhow::ensure!(
                    out.iter().all(|e| e.is_created()),
                    "bulk enqueue of fresh ids reported duplicates"
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// The protocol without the engine: `loops` tasks, each fetching up to `batch` jobs and
/// completing them with one `complete_many`, until the queue is empty: returns (jobs, seconds).
/// The result stored is what the no-op handler returns.
pub async fn fetch_complete_loop(
    queue: &Queue,
    batch: usize,
    loops: usize,
) -> anyhow::Result<(u64, f64)> {
    let result: Arc<[u8]> = serde_json::to_vec(&ToolResult::text("{}"))?.into();
    let done = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for i in 0..loops {
        let (queue, result, done) = (queue.clone(), result.clone(), done.clone());
        set.spawn(async move {
            let worker = format!("exai-bench-loop-{i}");
            loop {
                let jobs = queue.fetch(&worker, batch).await?;
                if jobs.is_empty() {
                    return anyhow::Ok(());
                }
                let items: Vec<_> = jobs.iter().map(|j| (&j.lease, &result[..])).collect();
                let acks = queue.complete_many(&items).await?;
                anyhow::ensure!(
                    acks.iter().all(|a| *a == Ack::Done),
                    "a fresh lease was lost"
                );
                done.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok((done.load(Ordering::Relaxed), t0.elapsed().as_secs_f64()))
}

/// Waits until `queue`'s completed counter reaches `target` (see [`wait_count`]; the stats
/// hash changes on every completion batch). Fails when a job went dead, a worker process
/// exited, or `limit` passed.
pub async fn wait_completed(
    queue: &Queue,
    stats: &mut Tracker,
    target: u64,
    workers: Option<&mut WorkerProcs>,
    limit: Duration,
) -> anyhow::Result<Instant> {
    wait_count(
        async || {
            let counts = queue.counts().await?;
            anyhow::ensure!(
                counts.dead == 0,
                "{} jobs went dead (the no-op handler failed?): {counts:?}",
                counts.dead
            );
            Ok(counts.completed)
        },
        stats,
        target,
        workers,
        limit,
    )
    .await
}

/// Waits until `count` reaches `target` and returns when that happened: the arrival of the
/// newest invalidation `tracker` received (it tracks the keys each completion changes),
/// capped by the moment the count was seen at `target`. The count is read every millisecond;
/// the result does not depend on that period. Fails when `count` fails, a worker process
/// exited, or `limit` passed.
pub async fn wait_count(
    mut count: impl AsyncFnMut() -> anyhow::Result<u64>,
    tracker: &mut Tracker,
    target: u64,
    mut workers: Option<&mut WorkerProcs>,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    let mut last_event = None;
    loop {
        let n = count().await?;
        if let Some(at) = tracker.latest() {
            last_event = Some(at);
        }
        if n >= target {
            let seen = Instant::now();
            // The push of the final change travels on another connection than the count's
            // reply: let it land.
            while let Some((at, _)) = tracker.next(Duration::from_millis(5)).await {
                last_event = Some(at);
            }
            return Ok(last_event.map_or(seen, |at| at.min(seen)));
        }
        if let Some(w) = workers.as_deref_mut() {
            w.check()?;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for {target} completions ({n} so far)"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The samples of one latency phase, in milliseconds.
#[derive(Debug, Default)]
pub struct Latency {
    /// The `enqueue` call, until its reply.
    pub enqueue_call: Vec<f64>,
    /// Until the handler started (in-process engine only).
    pub handler: Vec<f64>,
    /// Until Redis ran the completion.
    pub completed: Vec<f64>,
}

/// Jobs run before the measured ones, so scripts are loaded and connections warm.
const LATENCY_WARMUP: u64 = 20;

/// Enqueues `n` jobs one at a time onto idle workers, each after the previous one completed,
/// and times every step from just before the `enqueue` call: the call's reply, the completion,
/// and the handler's start when `starts` reports it. The completion is the arrival of the
/// invalidation of `done_key` — the queue's completed index, which only a completion writes —
/// so the observer is pushed nothing while the job is on its way, as a producer waiting for a
/// result would not be; the job's state is checked once that push came.
pub async fn latency(
    queue: &Queue,
    redis_url: &str,
    done_key: &str,
    payload: &[u8],
    n: u64,
    mut starts: Option<&mut mpsc::UnboundedReceiver<Start>>,
) -> anyhow::Result<Latency> {
    let mut tracker = Tracker::start(redis_url, &[done_key.to_owned()]).await?;
    let mut out = Latency::default();
    let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
    let run = uuid::Uuid::new_v4().simple().to_string();
    for i in 0..LATENCY_WARMUP + n {
        let id = format!("lat-{}-{i}", &run[..8]);
        tracker.clear();
        if let Some(s) = starts.as_deref_mut() {
            while s.try_recv().is_ok() {}
        }
        let job = NewJob::new(payload.to_vec()).with_id(id.clone());
        let t0 = Instant::now();
        let enqueued = queue.enqueue(&job).await?;
        let acked = Instant::now();
        anyhow::ensure!(enqueued.is_created(), "latency job {id} already existed");
        let wait_from = Instant::now();
        let done = loop {
            let event = tracker.next(Duration::from_millis(200)).await;
            // Only this job runs: a push is its completion, a quiet spell a stuck job. `result`
            // answers only for a finished job.
            let state = queue.result(&id).await?.map(|r| r.state);
            match (event, state) {
                (Some((at, keys)), Some(JobState::Completed))
                    if keys.iter().any(|k| k == done_key) =>
                {
                    break at;
                }
                (_, Some(state)) if state != JobState::Completed => {
                    anyhow::bail!("latency job {id} ended {state}")
                }
                _ => anyhow::ensure!(
                    wait_from.elapsed() < Duration::from_secs(10),
                    "latency job {id} did not complete within 10 s"
                ),
            }
        };
        let handler = match starts.as_deref_mut() {
            Some(s) => {
                let mut found = None;
                while let Ok((started, at)) = s.try_recv() {
                    if started == id {
                        found = Some(at);
                    }
                }
                Some(found.with_context(|| format!("no handler start seen for {id}"))?)
            }
            None => None,
        };
        if i < LATENCY_WARMUP {
            continue;
        }
        out.enqueue_call.push(ms(t0, acked));
        out.completed.push(ms(t0, done));
        if let Some(at) = handler {
            out.handler.push(ms(t0, at));
        }
    }
    Ok(out)
}
