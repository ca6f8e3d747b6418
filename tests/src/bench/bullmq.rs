//! The engine we measure ourselves against, in the same run: the official BullMQ Rust port
//! (`bullmq-official`), driven with our workload so the two are compared side by side.
//!
//! 1. **Enqueue, bulk**: the same `jobs` no-op payloads (the `test_echo` job as JSON data) in
//!    `Queue::add_bulk` calls of `batch`, one call in flight.
//! 2. **Process, cold**: `workers` × `exai-bench bullmq-worker` processes (a BullMQ `Worker`
//!    with a no-op processor at `concurrency`, its default options otherwise) spawned on that
//!    backlog; timed from the spawn until the completed set holds every job (its last
//!    invalidation, as for ours).
//! 3. **Latency**: on those workers now idle, jobs added one at a time, each after the previous
//!    completed; enqueue → completed is the arrival of the invalidation of the queue's
//!    completed set, which only a completion writes (the job's `finishedOn` then checked) —
//!    the same clock and the same observer as our latency rows.
//!
//! Its keys live under `<run prefix>-bull` (BullMQ's own key prefix), so the run's cleanup
//! deletes them with ours.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bullmq::options::RedisConnectionOptions;
use bullmq::{BulkJob, Queue, QueueOptions, Worker, WorkerOptions};

use super::measure::{Meter, percentile, proc_cpu_secs, procs_cpu_secs, sorted};
use super::phases::wait_count;
use super::procs::WorkerProcs;
use super::report::Report;
use super::tracker::Tracker;
use super::{Ctx, drain_limit, progress};

/// The queue's name (BullMQ's keys are `<prefix>:<name>:…`).
const QUEUE: &str = "bench";

/// Jobs run before the measured ones of the latency phase.
const WARMUP: u64 = 20;

/// What the baseline measured, for the side-by-side ratios.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// Bulk enqueue, jobs/s.
    pub enqueue_bulk_per_s: f64,
    /// Cold drain by the worker processes, jobs/s.
    pub process_per_s: f64,
    /// Enqueue → completed on idle workers, p50 and p99 (ms).
    pub latency_p50_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: f64,
}

fn options(redis_url: &str, prefix: &str) -> QueueOptions {
    QueueOptions {
        connection: connection(redis_url),
        prefix: prefix.to_owned(),
        ..QueueOptions::default()
    }
}

fn connection(redis_url: &str) -> RedisConnectionOptions {
    RedisConnectionOptions {
        url: redis_url.to_owned(),
        ..RedisConnectionOptions::default()
    }
}

/// Runs the three phases under `<prefix>-bull` with the worker processes of `bench_bin`
/// (`exai-bench` itself), adding rows to `report`.
pub(super) async fn run(
    ctx: &mut Ctx,
    report: &mut Report,
    prefix: &str,
    bench_bin: &Path,
) -> anyhow::Result<Baseline> {
    let o = ctx.opts.clone();
    let bull_prefix = format!("{prefix}-bull");
    let queue = Queue::with_options(QUEUE, options(&o.redis_url, &bull_prefix))
        .await
        .context("BullMQ queue")?;
    let data: serde_json::Value = serde_json::from_slice(&ctx.payload)?;

    progress(&format!(
        "BullMQ Rust port: enqueue, bulk: {} jobs, batches of {}",
        o.jobs, o.batch
    ));
    let meter = Meter::start(&mut ctx.info, proc_cpu_secs(None)).await?;
    let t0 = Instant::now();
    let mut left = o.jobs;
    while left > 0 {
        let n = left.min(o.batch as u64);
        let jobs = (0..n).map(|_| BulkJob::new("noop", data.clone())).collect();
        queue.add_bulk(jobs).await.context("BullMQ add_bulk")?;
        left -= n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let usage = meter.stop(&mut ctx.info, proc_cpu_secs(None)).await?;
    let enqueue_bulk_per_s = report.rate(
        "bullmq_enqueue_bulk_per_s",
        format!(
            "BullMQ Rust port: enqueue, bulk: {} jobs per add_bulk",
            o.batch
        ),
        "jobs/s",
        o.jobs,
        secs,
        Some(usage),
    );

    progress(&format!(
        "BullMQ Rust port: process, cold: {} worker processes × {} on a backlog of {}",
        o.workers, o.concurrency, o.jobs
    ));
    let completed_key = format!("{bull_prefix}:{QUEUE}:completed");
    let mut done_tracker =
        Tracker::start(&o.redis_url, std::slice::from_ref(&completed_key)).await?;
    let meter = Meter::start(&mut ctx.info, 0.0).await?;
    let t0 = Instant::now();
    let concurrency = o.concurrency.to_string();
    let mut workers = WorkerProcs::spawn_with(
        bench_bin,
        o.workers,
        &[
            "bullmq-worker",
            "--redis-url",
            &o.redis_url,
            "--prefix",
            &bull_prefix,
            "--concurrency",
            &concurrency,
        ],
        &[],
        &format!("{prefix}-bullmq-worker"),
    )?;
    let done = wait_count(
        async || Ok(queue.get_completed_count().await?),
        &mut done_tracker,
        o.jobs,
        Some(&mut workers),
        drain_limit(o.jobs),
    )
    .await?;
    let usage = meter
        .stop(&mut ctx.info, procs_cpu_secs(&workers.pids()))
        .await?;
    let process_per_s = report.rate(
        "bullmq_process_per_s",
        format!(
            "BullMQ Rust port: process, cold: {} worker processes × {}, spawn → last of {} done",
            o.workers, o.concurrency, o.jobs
        ),
        "jobs/s",
        o.jobs,
        (done - t0).as_secs_f64(),
        Some(usage),
    );
    drop(done_tracker);

    progress(&format!(
        "BullMQ Rust port: latency: {} jobs one at a time",
        o.latency_jobs
    ));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let id_prefix = format!("lat-{}-", &run[..8]);
    // Timed like ours: by the invalidation of the completed set, which only a completion
    // writes, then the job's `finishedOn` checked.
    let mut tracker = Tracker::start(&o.redis_url, std::slice::from_ref(&completed_key)).await?;
    let mut conn = ctx.conn.clone();
    let mut samples = Vec::with_capacity(o.latency_jobs as usize);
    for i in 0..WARMUP + o.latency_jobs {
        let id = format!("{id_prefix}{i}");
        let key = format!("{bull_prefix}:{QUEUE}:{id}");
        tracker.clear();
        let t0 = Instant::now();
        queue
            .add("noop", data.clone())
            .job_id(id.clone())
            .await
            .context("BullMQ add")?;
        let wait_from = Instant::now();
        let finished = loop {
            let event = tracker.next(Duration::from_millis(200)).await;
            let finished: bool = redis::cmd("HEXISTS")
                .arg(&key)
                .arg("finishedOn")
                .query_async(&mut conn)
                .await?;
            match event {
                Some((at, keys)) if finished && keys.contains(&completed_key) => break at,
                _ => {}
            }
            workers.check()?;
            anyhow::ensure!(
                wait_from.elapsed() < Duration::from_secs(10),
                "BullMQ latency job {id} did not complete within 10 s"
            );
        };
        if i >= WARMUP {
            samples.push((finished - t0).as_secs_f64() * 1e3);
        }
    }
    let s = sorted(samples);
    let (p50, p99) = (percentile(&s, 0.5), percentile(&s, 0.99));
    let who = format!("{} idle worker processes", o.workers);
    report.millis(
        "bullmq_latency_p50_ms",
        format!("BullMQ Rust port: latency p50, enqueue → completed, {who}"),
        p50,
    );
    report.millis(
        "bullmq_latency_p99_ms",
        format!("BullMQ Rust port: latency p99, enqueue → completed, {who}"),
        p99,
    );
    ctx.workers_cpu += procs_cpu_secs(&workers.pids());
    workers.stop(Duration::from_secs(5)).await?;
    Ok(Baseline {
        enqueue_bulk_per_s,
        process_per_s,
        latency_p50_ms: p50,
        latency_p99_ms: p99,
    })
}

/// `exai-bench bullmq-worker`: one BullMQ worker process with a no-op processor, until SIGTERM
/// or Ctrl-C.
pub async fn worker(redis_url: &str, prefix: &str, concurrency: usize) -> anyhow::Result<()> {
    let opts = WorkerOptions {
        connection: connection(redis_url),
        prefix: prefix.to_owned(),
        concurrency,
        ..WorkerOptions::default()
    };
    let worker = Worker::with_options(
        QUEUE,
        |_job: bullmq::Job, _token| async move { Ok(serde_json::Value::Null) },
        opts,
    )
    .await
    .context("BullMQ worker")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    worker
        .close(5_000)
        .await
        .context("close the BullMQ worker")?;
    Ok(())
}
