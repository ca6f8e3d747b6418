//! `exai-bench queue`: the phases of one run (`exai-bench ws` is in [`ws`]), in order, and what each number measures.
//!
//! 1. **Raw Redis** (the baseline every ratio is taken against): sequential PING round trips on
//!    one connection, then PINGs from `concurrency` tasks on one multiplexed connection (which
//!    pipelines them) — the same client stack (`RedisHandle`) the queue uses.
//! 2. **Enqueue, single**: `single_jobs` jobs, one `Queue::enqueue` call each, from
//!    `concurrency` concurrent callers, on a queue nobody serves.
//! 3. **Protocol only**: the queue API without apalis, per batch size (see
//!    [`phases::fetch_complete_loop`]).
//! 4. **Retention** ([`retention`]): `retention_jobs` jobs enqueued and completed through the
//!    protocol in chunks, with results kept [`RETENTION_TTL`]: Redis memory sampled as it goes
//!    and once the results expired.
//! 5. **Enqueue, bulk**: `jobs` jobs in `Queue::enqueue_bulk` calls of `batch`, one call in
//!    flight per producer. These jobs are the backlog of phase 6.
//! 6. **Process, cold**: `workers` × `exai-worker run --queues tool_calls --concurrency C` are
//!    spawned on that backlog; timed from the spawn until the last completion.
//! 7. **Latency**, on those workers now idle: first its floor, keys relayed through a process
//!    of their own with plain commands ([`relay`]), then jobs enqueued one at a time (see
//!    [`phases::latency`]).
//! 8. **Backlog**: with the same workers, warm: queue paused, a small backlog enqueued, timed
//!    from RESUME to the last completion (`small_rounds` times, summed); then the same with a
//!    backlog of `large_backlog` (default `jobs`). Their per-job time ratio should be ≈ 1.
//! 9. **The BullMQ Rust port** ([`bullmq`]), the baseline engine: the same bulk enqueue, cold
//!    drain by as many worker processes at the same concurrency, and latency; then our rows ÷
//!    theirs.
//! 10. **In-process engine** ([`engine`]): the same warm drain of `jobs` and the same latency
//!     phase through one apalis worker in this process, which also stamps the handler's start.
//! 11. **History cost** (with `--history-cost`, [`history_cost`]): first the engine-shaped
//!     protocol loop on `protocol_jobs`, `history_rounds` times with the queue's per-minute
//!     history on and off (Redis CPU and script time per job, free of process scheduling);
//!     then the cold process phase again, `history_rounds` times each with the history on and
//!     off (`EXAI_QUEUE_HISTORY`), alternating which goes first, each on a fresh backlog of
//!     `jobs`: both rates, their ratio and the Redis CPU per job of each.
//!
//! Each phase's Redis CPU (from `INFO cpu`) and client CPU (`/proc`) is recorded with it. Every
//! key lives under the run's prefix; [`cleanup`] deletes them.

pub mod abuse;
pub mod admission;
pub mod bullmq;
pub mod engine;
pub mod idle;
pub mod mcp;
pub mod measure;
pub mod phases;
pub mod procs;
pub mod relay;
pub mod report;
pub mod sem;
pub mod tracker;
pub mod uploads;
pub mod ws;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use exai_shared::Config;
use exai_shared::jobs::ToolCallJob;
use exai_shared::keys::{Keys, QueueKeys};
use exai_shared::queue::{Queue, QueuePolicy, TOOL_CALLS};
use exai_shared::redis::RedisHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use measure::{Meter, RunMeter, Usage, percentile, proc_cpu_secs, procs_cpu_secs, sorted};
use procs::WorkerProcs;
use report::Report;
use tracker::Tracker;

/// What to run (see the flags of `exai-bench queue`).
#[derive(Debug, Clone)]
pub struct Options {
    /// The Redis server.
    pub redis_url: String,
    /// Jobs of the bulk, process and large-backlog phases.
    pub jobs: u64,
    /// Jobs at once per worker process; concurrent callers of the single enqueue and PINGs.
    pub concurrency: usize,
    /// Worker processes.
    pub workers: usize,
    /// Jobs of the single-enqueue phase.
    pub single_jobs: u64,
    /// The large backlog of the per-job cost comparison.
    pub large_backlog: u64,
    /// Jobs per bulk call.
    pub batch: usize,
    /// Concurrent bulk producers.
    pub bulk_producers: usize,
    /// Jobs per latency phase.
    pub latency_jobs: u64,
    /// The small backlog.
    pub small_backlog: u64,
    /// Rounds of the small backlog.
    pub small_rounds: u64,
    /// Jobs per batch size of the protocol-only phase.
    pub protocol_jobs: u64,
    /// The batch sizes of the protocol-only phase (none skips it).
    pub protocol_batches: Vec<usize>,
    /// Jobs of the retention phase (0 skips it).
    pub retention_jobs: u64,
    /// How long each raw baseline runs.
    pub raw_for: Duration,
    /// Run the in-process engine phases.
    pub in_process: bool,
    /// `exai-bench` itself, whose `bullmq-worker` command serves the BullMQ baseline; `None`
    /// skips the baseline.
    pub bullmq_bin: Option<PathBuf>,
    /// The `exai-worker` binary.
    pub worker_bin: PathBuf,
    /// Rounds of the history-cost phase, each a cold drain with the history on and one with it
    /// off (0 skips the phase).
    pub history_rounds: u64,
}

/// How long one drain may take before the run gives up: generous, so a slow engine still ends
/// with a message rather than a hang.
fn drain_limit(jobs: u64) -> Duration {
    Duration::from_secs(60 + jobs / 500)
}

/// Prints progress to stderr (stdout carries only the table or the JSON).
fn progress(what: &str) {
    eprintln!("exai-bench: {what}");
}

/// A configuration for key prefix `prefix` on `redis_url`, otherwise the defaults the worker
/// processes run with (lease, result retention).
fn config(redis_url: &str, prefix: &str) -> anyhow::Result<Config> {
    Ok(Config::from_vars([
        ("REDIS_URL", redis_url),
        ("EXAI_REDIS_PREFIX", prefix),
    ])?)
}

/// The `tool_calls` queue of `prefix`, on `conn`, with the workers' default policy.
fn queue(conn: &RedisHandle, config: &Config) -> (Queue, QueueKeys) {
    let keys = Keys::new(&config.redis.prefix);
    let q = Queue::new(
        conn.clone(),
        &keys,
        TOOL_CALLS,
        QueuePolicy::from_config(&config.jobs),
    );
    (q, keys.queue(TOOL_CALLS))
}

/// The no-op job's payload: `test_echo` with arguments `{}`.
fn noop_payload() -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&ToolCallJob {
        tool: "test_echo".to_owned(),
        arguments: json!({}),
        session_id: "bench".to_owned(),
        request_id: None,
        deadline_ms: None,
        staged: None,
    })?)
}

/// The connections of a run.
struct Ctx {
    opts: Options,
    /// The producers' connection (also the raw baseline's).
    conn: RedisHandle,
    /// A second connection for `INFO` samples, so they never queue behind producer traffic.
    info: RedisHandle,
    payload: Vec<u8>,
    /// CPU seconds used by worker processes already stopped.
    workers_cpu: f64,
}

/// Runs every phase under key prefix `prefix` and returns the report. Keys are left for
/// [`cleanup`]; worker processes are stopped (or killed, on error, by their guards); the
/// in-process engine stops with `stop` or when dropped.
pub async fn run(opts: Options, prefix: String, stop: CancellationToken) -> anyhow::Result<Report> {
    let base = config(&opts.redis_url, &prefix)?;
    let conn = RedisHandle::connect(&base.redis)
        .await
        .context("connect to redis")?;
    let mut info = RedisHandle::connect(&base.redis)
        .await
        .context("connect to redis")?;
    progress("machine and Redis background load");
    let machine = measure::machine(&mut info).await?;
    let params = json!({
        "jobs": opts.jobs,
        "concurrency": opts.concurrency,
        "workers": opts.workers,
        "single_jobs": opts.single_jobs,
        "large_backlog": opts.large_backlog,
        "batch": opts.batch,
        "bulk_producers": opts.bulk_producers,
        "latency_jobs": opts.latency_jobs,
        "small_backlog": opts.small_backlog,
        "small_rounds": opts.small_rounds,
        "protocol_jobs": opts.protocol_jobs,
        "protocol_batches": opts.protocol_batches,
        "retention_jobs": opts.retention_jobs,
        "history_rounds": opts.history_rounds,
        "redis_url": redact(&opts.redis_url),
        "prefix": prefix,
        "worker_bin": opts.worker_bin.display().to_string(),
    });
    let mut report = Report::new(machine, params);
    let run_meter = RunMeter::start(&mut info).await?;
    let mut ctx = Ctx {
        payload: noop_payload()?,
        opts,
        conn,
        info,
        workers_cpu: 0.0,
    };
    raw(&mut ctx, &mut report).await?;
    enqueue_single(&mut ctx, &mut report, &prefix).await?;
    protocol(&mut ctx, &mut report, &prefix).await?;
    if ctx.opts.retention_jobs > 0 {
        retention(&mut ctx, &mut report, &prefix).await?;
    }
    worker_processes(&mut ctx, &mut report, &prefix).await?;
    if ctx.opts.history_rounds > 0 {
        history_cost(&mut ctx, &mut report, &prefix).await?;
    }
    if let Some(bin) = ctx.opts.bullmq_bin.clone() {
        let theirs = bullmq::run(&mut ctx, &mut report, &prefix, &bin).await?;
        side_by_side(&mut report, &theirs);
    }
    if ctx.opts.in_process {
        in_process(&mut ctx, &mut report, &prefix, &stop).await?;
    }
    report.load = Some(run_meter.stop(&mut ctx.info, ctx.workers_cpu).await?);
    if let Some(l) = &report.load
        && l.other_cores > 0.25
    {
        report.notes.push(format!(
            "other processes kept {:.2} of {} cores busy during the run: rates and tail latencies \
             are pessimistic, per-job CPU costs much less so",
            l.other_cores, report.machine.nproc
        ));
    }
    Ok(report)
}

/// The ratios of our worker-process rows to the BullMQ Rust port's, measured in this run.
fn side_by_side(report: &mut Report, theirs: &bullmq::Baseline) {
    let ours = |key: &str| report.value(key).unwrap_or(f64::NAN);
    let rows = [
        (
            "vs_bullmq_enqueue_bulk_ratio",
            "EXAI ÷ BullMQ Rust port: bulk enqueue rate",
            ours("enqueue_bulk_per_s") / theirs.enqueue_bulk_per_s,
        ),
        (
            "vs_bullmq_process_ratio",
            "EXAI ÷ BullMQ Rust port: process rate, cold, worker processes",
            ours("process_per_s") / theirs.process_per_s,
        ),
        (
            "vs_bullmq_latency_p50_ratio",
            "EXAI ÷ BullMQ Rust port: latency p50, enqueue → completed (lower is better)",
            ours("latency_p50_ms") / theirs.latency_p50_ms,
        ),
        (
            "vs_bullmq_latency_p99_ratio",
            "EXAI ÷ BullMQ Rust port: latency p99, enqueue → completed (lower is better)",
            ours("latency_p99_ms") / theirs.latency_p99_ms,
        ),
    ];
    for (key, label, value) in rows {
        report.ratio(key, label.to_owned(), value);
    }
}

/// Deletes every key of the run (prefix `prefix`, all its phases).
pub async fn cleanup(redis_url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    exai_tests::delete_prefix(&mut conn, prefix).await;
    Ok(())
}

/// A URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Phase 1: the raw Redis baselines.
async fn raw(ctx: &mut Ctx, report: &mut Report) -> anyhow::Result<()> {
    let c = ctx.opts.concurrency;
    progress("raw Redis: sequential PING");
    let meter = Meter::start(&mut ctx.info, proc_cpu_secs(None)).await?;
    let (n, secs) = phases::ping_sequential(&ctx.conn, ctx.opts.raw_for).await?;
    let usage = meter.stop(&mut ctx.info, proc_cpu_secs(None)).await?;
    report.baseline.sequential_per_s = report.rate(
        "redis_roundtrips_per_s",
        "raw Redis: PING round trips, sequential, 1 connection".to_owned(),
        "ops/s",
        n,
        secs,
        Some(usage),
    );
    progress("raw Redis: concurrent PING");
    let meter = Meter::start(&mut ctx.info, proc_cpu_secs(None)).await?;
    let (n, secs) = phases::ping_concurrent(&ctx.conn, c, ctx.opts.raw_for).await?;
    let usage = meter.stop(&mut ctx.info, proc_cpu_secs(None)).await?;
    report.baseline.pipelined_per_s = report.rate(
        "redis_pipelined_per_s",
        format!("raw Redis: PING, {c} concurrent tasks on 1 multiplexed connection"),
        "ops/s",
        n,
        secs,
        Some(usage),
    );
    Ok(())
}

/// Phase 2: single enqueues, on a queue of their own (deleted right after, to keep Redis small).
async fn enqueue_single(ctx: &mut Ctx, report: &mut Report, prefix: &str) -> anyhow::Result<()> {
    let (c, n) = (ctx.opts.concurrency, ctx.opts.single_jobs);
    progress(&format!("enqueue, single: {n} jobs, {c} callers"));
    let cfg = config(&ctx.opts.redis_url, &format!("{prefix}-single"))?;
    let (q, _) = queue(&ctx.conn, &cfg);
    let meter = Meter::start(&mut ctx.info, proc_cpu_secs(None)).await?;
    let secs = phases::enqueue_single(&q, &ctx.payload, n, c).await?;
    let usage = meter.stop(&mut ctx.info, proc_cpu_secs(None)).await?;
    report.rate(
        "enqueue_per_s",
        format!("enqueue, single: 1 job per call, {c} concurrent callers"),
        "jobs/s",
        n,
        secs,
        Some(usage),
    );
    cleanup(&ctx.opts.redis_url, &cfg.redis.prefix).await
}

/// Phase 3: the protocol alone, per batch size, on a queue of its own (deleted after).
async fn protocol(ctx: &mut Ctx, report: &mut Report, prefix: &str) -> anyhow::Result<()> {
    let o = ctx.opts.clone();
    let cfg = config(&o.redis_url, &format!("{prefix}-protocol"))?;
    let (q, _) = queue(&ctx.conn, &cfg);
    // Each listed batch size with one task, then the engine's shape: one task per worker
    // process, each fetching up to `concurrency` — the protocol's ceiling for the process rows.
    let shapes: Vec<(usize, usize)> = o
        .protocol_batches
        .iter()
        .map(|&b| (b, 1))
        .chain((!o.protocol_batches.is_empty()).then_some((o.concurrency.min(1000), o.workers)))
        .collect();
    for (batch, tasks) in shapes {
        progress(&format!(
            "protocol only: {} jobs, {tasks} task(s) × fetch + complete_many of {batch}",
            o.protocol_jobs
        ));
        phases::enqueue_bulk(&q, &ctx.payload, o.protocol_jobs, o.batch, 1).await?;
        let meter = Meter::start(&mut ctx.info, proc_cpu_secs(None)).await?;
        let (jobs, secs) = phases::fetch_complete_loop(&q, batch, tasks).await?;
        let usage = meter.stop(&mut ctx.info, proc_cpu_secs(None)).await?;
        anyhow::ensure!(
            jobs == o.protocol_jobs,
            "the protocol loop drained {jobs} of {} jobs",
            o.protocol_jobs
        );
        let (key, label) = if tasks == 1 {
            (
                format!("protocol_batch_{batch}_per_s"),
                format!("protocol only: fetch ≤ {batch} + complete_many, 1 task"),
            )
        } else {
            (
                "protocol_engine_shape_per_s".to_owned(),
                format!("protocol only: {tasks} tasks × (fetch ≤ {batch} + complete_many)"),
            )
        };
        report.rate(&key, label, "jobs/s", jobs, secs, Some(usage));
    }
    cleanup(&o.redis_url, &cfg.redis.prefix).await
}

/// Results are kept this long in the retention phase, so they expire while it runs.
pub const RETENTION_TTL: Duration = Duration::from_secs(1);

/// Jobs per chunk of the retention phase: enqueued in bulk, then completed.
const RETENTION_CHUNK: u64 = 10_000;

/// How long the retention phase waits for its last results to expire (Redis expires keys in
/// the background, a slice of its time at a time).
const RETENTION_EXPIRY_LIMIT: Duration = Duration::from_secs(120);

/// Phase 4: Redis memory over `retention_jobs` completed jobs. On a queue of its own with a
/// [`RETENTION_TTL`] result retention, chunks of [`RETENTION_CHUNK`] jobs are enqueued in bulk
/// and completed by the engine-shaped protocol loop; `used_memory` is sampled after each chunk.
/// Flat means the second half's median is about the first's (what is alive is the last TTL's
/// results, however many jobs ran before) and, once the last results expired, Redis holds
/// little more than before the phase.
async fn retention(ctx: &mut Ctx, report: &mut Report, prefix: &str) -> anyhow::Result<()> {
    let o = ctx.opts.clone();
    let n = o.retention_jobs;
    progress(&format!(
        "retention: {n} jobs completed in chunks of {RETENTION_CHUNK}, results kept {} s",
        RETENTION_TTL.as_secs_f64()
    ));
    let cfg = config(&o.redis_url, &format!("{prefix}-retention"))?;
    let keys = Keys::new(&cfg.redis.prefix);
    let policy = QueuePolicy {
        result_ttl: RETENTION_TTL,
        ..QueuePolicy::from_config(&cfg.jobs)
    };
    let q = Queue::new(ctx.conn.clone(), &keys, TOOL_CALLS, policy);
    let start = measure::redis_footprint(&mut ctx.info).await?;
    let mib = |bytes: u64| bytes.saturating_sub(start.used_memory) as f64 / (1024.0 * 1024.0);
    let (mut first_half, mut second_half) = (Vec::new(), Vec::new());
    let mut done = 0;
    let meter = Meter::start(&mut ctx.info, proc_cpu_secs(None)).await?;
    let t0 = Instant::now();
    while done < n {
        let chunk = RETENTION_CHUNK.min(n - done);
        phases::enqueue_bulk(&q, &ctx.payload, chunk, o.batch, 1).await?;
        let (ran, _) =
            phases::fetch_complete_loop(&q, o.concurrency.min(1000), o.workers.max(1)).await?;
        anyhow::ensure!(
            ran == chunk,
            "a retention chunk completed {ran} of {chunk} jobs"
        );
        done += chunk;
        let now = measure::redis_footprint(&mut ctx.info).await?.used_memory;
        if done * 2 <= n {
            first_half.push(mib(now));
        } else {
            second_half.push(mib(now));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let usage = meter.stop(&mut ctx.info, proc_cpu_secs(None)).await?;
    let completed = q.counts().await?.completed;
    anyhow::ensure!(
        completed == n,
        "the retention queue counts {completed} completed jobs, not {n}"
    );
    // Wait for the last results to expire: the key count back to where it was, give or take the
    // queue's own few keys, or no longer falling.
    let expiry_from = Instant::now();
    let (mut last, mut falling_at) = (u64::MAX, Instant::now());
    let end = loop {
        let f = measure::redis_footprint(&mut ctx.info).await?;
        if f.keys < last {
            (last, falling_at) = (f.keys, Instant::now());
        }
        if f.keys <= start.keys + 16
            || falling_at.elapsed() > Duration::from_secs(5)
            || expiry_from.elapsed() > RETENTION_EXPIRY_LIMIT
        {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    report.rate(
        "retention_per_s",
        format!(
            "retention: {n} jobs enqueued and completed (protocol, {} task(s) × {}), results kept {} s",
            o.workers.max(1),
            o.concurrency.min(1000),
            RETENTION_TTL.as_secs_f64()
        ),
        "jobs/s",
        n,
        secs,
        Some(usage),
    );
    // A chunk's sample lands anywhere in the expiry cycle of the results before it: the median
    // of each half says whether memory grows with the jobs run, the peak how high it got.
    let (first_half, second_half) = (sorted(first_half), sorted(second_half));
    report.amount(
        "retention_first_half_median_mib",
        "retention: Redis memory above the start, median over the first half of the jobs"
            .to_owned(),
        "MiB",
        percentile(&first_half, 0.5),
    );
    report.amount(
        "retention_second_half_median_mib",
        "retention: Redis memory above the start, median over the second half of the jobs"
            .to_owned(),
        "MiB",
        percentile(&second_half, 0.5),
    );
    report.amount(
        "retention_peak_mib",
        "retention: Redis memory above the start, peak".to_owned(),
        "MiB",
        first_half
            .last()
            .copied()
            .unwrap_or(0.0)
            .max(second_half.last().copied().unwrap_or(0.0)),
    );
    report.amount(
        "retention_after_expiry_mib",
        format!(
            "retention: Redis memory above the start once the results expired ({:.1} s after the last)",
            expiry_from.elapsed().as_secs_f64()
        ),
        "MiB",
        mib(end.used_memory),
    );
    report.amount(
        "retention_keys_left",
        format!("retention: keys left of {n} completed jobs once the results expired"),
        "keys",
        end.keys.saturating_sub(start.keys) as f64,
    );
    cleanup(&o.redis_url, &cfg.redis.prefix).await
}

/// Phases 5 to 8: bulk enqueue, then the worker processes: cold drain, latency, backlogs.
async fn worker_processes(ctx: &mut Ctx, report: &mut Report, prefix: &str) -> anyhow::Result<()> {
    let o = ctx.opts.clone();
    let cfg = config(&o.redis_url, &format!("{prefix}-proc"))?;
    let (q, keys) = queue(&ctx.conn, &cfg);

    progress(&format!(
        "enqueue, bulk: {} jobs, batches of {}, {} producer(s)",
        o.jobs, o.batch, o.bulk_producers
    ));
    let meter = Meter::start(&mut ctx.info, proc_cpu_secs(None)).await?;
    let secs = phases::enqueue_bulk(&q, &ctx.payload, o.jobs, o.batch, o.bulk_producers).await?;
    let usage = meter.stop(&mut ctx.info, proc_cpu_secs(None)).await?;
    report.rate(
        "enqueue_bulk_per_s",
        format!(
            "enqueue, bulk: {} jobs per call, {} producer(s)",
            o.batch, o.bulk_producers
        ),
        "jobs/s",
        o.jobs,
        secs,
        Some(usage),
    );

    progress(&format!(
        "process, cold: {} exai-worker processes × {} on a backlog of {}",
        o.workers, o.concurrency, o.jobs
    ));
    let mut stats = Tracker::start(&o.redis_url, &[keys.stats()]).await?;
    let before = q.counts().await?.completed;
    stats.clear();
    let meter = Meter::start(&mut ctx.info, 0.0).await?;
    let t0 = Instant::now();
    let mut workers = WorkerProcs::spawn(
        &o.worker_bin,
        o.workers,
        o.concurrency,
        &o.redis_url,
        &cfg.redis.prefix,
    )?;
    let done = phases::wait_completed(
        &q,
        &mut stats,
        before + o.jobs,
        Some(&mut workers),
        drain_limit(o.jobs),
    )
    .await?;
    let usage = meter
        .stop(&mut ctx.info, procs_cpu_secs(&workers.pids()))
        .await?;
    report.rate(
        "process_per_s",
        format!(
            "process, cold: {} worker processes × {}, spawn → last of {} done",
            o.workers, o.concurrency, o.jobs
        ),
        "jobs/s",
        o.jobs,
        (done - t0).as_secs_f64(),
        Some(usage),
    );

    // The latency phases watch the job's own hash only, as BullMQ's does: a tracker on the
    // stats hash would be pushed to at every enqueue and completion, waking this process twice
    // per job while it measures.
    drop(stats);
    progress(&format!(
        "latency floor: {} keys relayed one at a time",
        o.latency_jobs
    ));
    let bench_bin = std::env::current_exe().context("locate exai-bench")?;
    let floor = relay::measure(
        &mut ctx.info,
        &o.redis_url,
        prefix,
        &bench_bin,
        o.latency_jobs,
    )
    .await?;
    let floor_label = "raw Redis relay: PUBLISH → another process → SET, until its invalidation \
                       (the floor of enqueue → completed)";
    report.millis("relay_p50_ms", format!("{floor_label}, p50"), floor.p50());
    report.millis("relay_p99_ms", format!("{floor_label}, p99"), floor.p99());

    progress(&format!("latency: {} jobs one at a time", o.latency_jobs));
    let lat = phases::latency(
        &q,
        &o.redis_url,
        &keys.completed(),
        &ctx.payload,
        o.latency_jobs,
        None,
    )
    .await?;
    workers.check()?;
    let who = format!("{} idle worker processes", o.workers);
    latency_rows(report, "", &who, lat);
    for (tag, floor) in [("p50", floor.p50()), ("p99", floor.p99())] {
        let ours = report
            .value(&format!("latency_{tag}_ms"))
            .unwrap_or(f64::NAN);
        report.ratio(
            &format!("vs_relay_latency_{tag}_ratio"),
            format!("latency {tag}, enqueue → completed ÷ the relay floor's {tag}"),
            ours / floor,
        );
    }

    progress(&format!(
        "backlog: {} × {} jobs, then {} jobs, warm",
        o.small_rounds, o.small_backlog, o.large_backlog
    ));
    let mut stats = Tracker::start(&o.redis_url, &[keys.stats()]).await?;
    let pids = workers.pids();
    let mut small = (0.0, Usage::default());
    for _ in 0..o.small_rounds {
        let (secs, usage) =
            warm_drain(ctx, &q, &mut stats, o.small_backlog, &pids, &mut workers).await?;
        small.0 += secs;
        small.1 += usage;
    }
    let small_jobs = o.small_backlog * o.small_rounds;
    let small_rate = report.rate(
        "process_small_backlog_per_s",
        format!(
            "process, warm: {} worker processes, backlog {} ({} rounds)",
            o.workers, o.small_backlog, o.small_rounds
        ),
        "jobs/s",
        small_jobs,
        small.0,
        Some(small.1),
    );
    let (secs, usage) =
        warm_drain(ctx, &q, &mut stats, o.large_backlog, &pids, &mut workers).await?;
    let large_rate = report.rate(
        "process_warm_per_s",
        format!(
            "process, warm: {} worker processes, backlog {}",
            o.workers, o.large_backlog
        ),
        "jobs/s",
        o.large_backlog,
        secs,
        Some(usage),
    );
    report.ratio(
        "backlog_cost_ratio",
        format!(
            "per-job time at backlog {} ÷ at backlog {}",
            o.large_backlog, o.small_backlog
        ),
        ratio(small_rate, large_rate),
    );
    report.ratio(
        "backlog_redis_cpu_ratio",
        format!(
            "Redis CPU per job at backlog {} ÷ at backlog {}",
            o.large_backlog, o.small_backlog
        ),
        ratio(
            usage.redis_us_per(o.large_backlog),
            small.1.redis_us_per(small_jobs),
        ),
    );
    progress("stopping the worker processes");
    ctx.workers_cpu += procs_cpu_secs(&pids);
    workers.stop(Duration::from_secs(15)).await
}

/// Phase 11: what the per-minute history costs the cold process rate. Each round drains a
/// fresh backlog of `jobs` through `workers` new worker processes once with
/// `EXAI_QUEUE_HISTORY=true` and once with `false` (which goes first alternates), each on a
/// prefix of its own; the rows are each mode's jobs over its summed drain time, the ratio
/// on ÷ off, and the Redis CPU per job of each. A drain with the history on must leave every
/// job in the history, one with it off none.
async fn history_cost(ctx: &mut Ctx, report: &mut Report, prefix: &str) -> anyhow::Result<()> {
    let o = ctx.opts.clone();
    history_cost_protocol(ctx, report, prefix).await?;
    let mut totals = [(0u64, 0.0f64, Usage::default()); 2];
    for round in 0..o.history_rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            let mode = if on { "on" } else { "off" };
            progress(&format!(
                "history cost, round {}/{}: process, cold, history {mode}: {} exai-worker processes × {} on a backlog of {}",
                round + 1,
                o.history_rounds,
                o.workers,
                o.concurrency,
                o.jobs
            ));
            let cfg = config(&o.redis_url, &format!("{prefix}-hist{round}{mode}"))?;
            let (q, keys) = queue(&ctx.conn, &cfg);
            phases::enqueue_bulk(&q, &ctx.payload, o.jobs, o.batch, 1).await?;
            let mut stats = Tracker::start(&o.redis_url, &[keys.stats()]).await?;
            stats.clear();
            let meter = Meter::start(&mut ctx.info, 0.0).await?;
            let t0 = Instant::now();
            let mut workers = WorkerProcs::spawn_env(
                &o.worker_bin,
                o.workers,
                o.concurrency,
                &o.redis_url,
                &cfg.redis.prefix,
                &[("EXAI_QUEUE_HISTORY", if on { "true" } else { "false" })],
            )?;
            let done = phases::wait_completed(
                &q,
                &mut stats,
                o.jobs,
                Some(&mut workers),
                drain_limit(o.jobs),
            )
            .await?;
            let pids = workers.pids();
            let usage = meter.stop(&mut ctx.info, procs_cpu_secs(&pids)).await?;
            ctx.workers_cpu += procs_cpu_secs(&pids);
            workers.stop(Duration::from_secs(15)).await?;
            drop(stats);
            let recorded: u64 = q
                .history(o.drain_minutes())
                .await?
                .iter()
                .map(|m| m.completed)
                .sum();
            let want = if on { o.jobs } else { 0 };
            anyhow::ensure!(
                recorded == want,
                "history {mode}: {recorded} completions in the history, expected {want}"
            );
            let secs = (done - t0).as_secs_f64();
            progress(&format!(
                "history {mode}: {:.0} jobs/s, {:.1} µs Redis CPU and {:.2} commands per job, \
                 {:.1} jobs per script call",
                o.jobs as f64 / secs,
                usage.redis_us_per(o.jobs),
                usage.commands_per(o.jobs),
                1.0 / usage.script_calls_per(o.jobs).max(f64::MIN_POSITIVE)
            ));
            let slot = &mut totals[usize::from(!on)];
            slot.0 += o.jobs;
            slot.1 += secs;
            slot.2 += usage;
            cleanup(&o.redis_url, &cfg.redis.prefix).await?;
        }
    }
    let label = |mode: &str| {
        format!(
            "process, cold, history {mode}: {} worker processes × {}, {} × {} jobs",
            o.workers, o.concurrency, o.history_rounds, o.jobs
        )
    };
    let [
        (on_jobs, on_secs, on_usage),
        (off_jobs, off_secs, off_usage),
    ] = totals;
    let on = report.rate(
        "process_history_on_per_s",
        label("on"),
        "jobs/s",
        on_jobs,
        on_secs,
        Some(on_usage),
    );
    let off = report.rate(
        "process_history_off_per_s",
        label("off"),
        "jobs/s",
        off_jobs,
        off_secs,
        Some(off_usage),
    );
    report.ratio(
        "history_process_ratio",
        "process rate, cold: history on ÷ history off (1.0 = free)".to_owned(),
        ratio(on, off),
    );
    report.ratio(
        "history_redis_cpu_ratio",
        "Redis CPU per job: history on ÷ history off".to_owned(),
        ratio(
            on_usage.redis_us_per(on_jobs),
            off_usage.redis_us_per(off_jobs),
        ),
    );
    Ok(())
}

/// The history's cost to Redis alone, without processes to schedule: after a warm-up round,
/// `history_rounds` times, `protocol_jobs` jobs through the engine-shaped protocol loop (one
/// task per worker process, fetch ≤ concurrency + complete_many) on a queue whose policy writes
/// the history, and as many on one whose policy does not (alternating which goes first). Rows:
/// Redis CPU and script time per job each way, and their ratios.
async fn history_cost_protocol(
    ctx: &mut Ctx,
    report: &mut Report,
    prefix: &str,
) -> anyhow::Result<()> {
    let o = ctx.opts.clone();
    let mut totals = [(0u64, 0.0f64, Usage::default()); 2];
    let (batch, tasks) = (o.concurrency.clamp(1, 1000), o.workers.max(1));
    // Round 0 warms up (both ways, unreported): the first drain after the worker processes
    // ran pays for Redis and this process settling back into the loop (in one run its script
    // time per job was twice the others').
    for round in 0..=o.history_rounds {
        for on in [round % 2 == 0, round % 2 == 1] {
            let mode = if on { "on" } else { "off" };
            let cfg = config(&o.redis_url, &format!("{prefix}-histp{round}{mode}"))?;
            let q = Queue::new(
                ctx.conn.clone(),
                &Keys::new(&cfg.redis.prefix),
                TOOL_CALLS,
                QueuePolicy {
                    history: on,
                    ..QueuePolicy::from_config(&cfg.jobs)
                },
            );
            phases::enqueue_bulk(&q, &ctx.payload, o.protocol_jobs, o.batch, 1).await?;
            let meter = Meter::start(&mut ctx.info, proc_cpu_secs(None)).await?;
            let (jobs, secs) = phases::fetch_complete_loop(&q, batch, tasks).await?;
            let usage = meter.stop(&mut ctx.info, proc_cpu_secs(None)).await?;
            anyhow::ensure!(
                jobs == o.protocol_jobs,
                "the protocol loop drained {jobs} jobs"
            );
            cleanup(&o.redis_url, &cfg.redis.prefix).await?;
            if round == 0 {
                continue;
            }
            progress(&format!(
                "history cost, protocol only, history {mode}: {:.1} µs Redis CPU, {:.1} µs in \
                 scripts per job",
                usage.redis_us_per(jobs),
                usage.script_us_per(jobs)
            ));
            let slot = &mut totals[usize::from(!on)];
            slot.0 += jobs;
            slot.1 += secs;
            slot.2 += usage;
        }
    }
    let [
        (on_jobs, on_secs, on_usage),
        (off_jobs, off_secs, off_usage),
    ] = totals;
    for (key, mode, jobs, secs, usage) in [
        (
            "protocol_history_on_per_s",
            "on",
            on_jobs,
            on_secs,
            on_usage,
        ),
        (
            "protocol_history_off_per_s",
            "off",
            off_jobs,
            off_secs,
            off_usage,
        ),
    ] {
        report.rate(
            key,
            format!(
                "protocol only, history {mode}: {tasks} task(s) × (fetch ≤ {batch} + complete_many), {} × {} jobs",
                o.history_rounds, o.protocol_jobs
            ),
            "jobs/s",
            jobs,
            secs,
            Some(usage),
        );
    }
    report.ratio(
        "history_protocol_redis_cpu_ratio",
        "protocol only: Redis CPU per job, history on ÷ off".to_owned(),
        ratio(
            on_usage.redis_us_per(on_jobs),
            off_usage.redis_us_per(off_jobs),
        ),
    );
    report.ratio(
        "history_protocol_script_ratio",
        "protocol only: time in scripts per job, history on ÷ off".to_owned(),
        ratio(
            on_usage.script_us_per(on_jobs),
            off_usage.script_us_per(off_jobs),
        ),
    );
    Ok(())
}

impl Options {
    /// Minutes of history that cover one drain of `jobs` (the drain limit, and one more for
    /// the minute it started in), at most a day.
    fn drain_minutes(&self) -> u32 {
        u32::try_from(drain_limit(self.jobs).as_secs() / 60 + 2)
            .unwrap_or(u32::MAX)
            .min(exai_shared::queue::history::MAX_MINUTES)
    }
}

/// `a ÷ b`, 0 when `b` is not positive.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Pauses `q`, enqueues `jobs` (untimed), then times from RESUME to the last completion; the
/// usage's client CPU is that of `pids`.
async fn warm_drain(
    ctx: &mut Ctx,
    q: &Queue,
    stats: &mut Tracker,
    jobs: u64,
    pids: &[u32],
    workers: &mut WorkerProcs,
) -> anyhow::Result<(f64, Usage)> {
    q.pause().await?;
    let o = &ctx.opts;
    phases::enqueue_bulk(q, &ctx.payload, jobs, o.batch, 1).await?;
    let counts = q.counts().await?;
    anyhow::ensure!(
        counts.queued >= jobs && counts.running == 0,
        "the paused queue should hold the backlog and nothing running: {counts:?}"
    );
    let limit = drain_limit(jobs);
    stats.clear();
    let meter = Meter::start(&mut ctx.info, procs_cpu_secs(pids)).await?;
    let t0 = Instant::now();
    q.resume().await?;
    let done =
        phases::wait_completed(q, stats, counts.completed + jobs, Some(workers), limit).await?;
    let usage = meter.stop(&mut ctx.info, procs_cpu_secs(pids)).await?;
    Ok(((done - t0).as_secs_f64(), usage))
}

/// The latency rows of one latency phase; `key` prefixes the JSON names (`""` for the worker
/// processes, whose end-to-end numbers are `latency_p50_ms` and `latency_p99_ms`).
fn latency_rows(report: &mut Report, key: &str, who: &str, lat: phases::Latency) {
    let mut add = |name: &str, what: &str, samples: Vec<f64>| {
        if samples.is_empty() {
            return;
        }
        let s = sorted(samples);
        for (q, tag) in [(0.5, "p50"), (0.99, "p99")] {
            report.millis(
                &format!("{key}{name}_{tag}_ms"),
                format!("latency {tag}, {what}, {who}"),
                percentile(&s, q),
            );
        }
    };
    add(
        "enqueue_call",
        "enqueue call (until its reply)",
        lat.enqueue_call,
    );
    add("handler_start", "enqueue → handler start", lat.handler);
    add("latency", "enqueue → completed", lat.completed);
}

/// Phase 10: the engine in this process — warm drain of `jobs`, then latency.
async fn in_process(
    ctx: &mut Ctx,
    report: &mut Report,
    prefix: &str,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let o = ctx.opts.clone();
    let cfg = config(&o.redis_url, &format!("{prefix}-inproc"))?;
    let (q, keys) = queue(&ctx.conn, &cfg);
    progress(&format!(
        "in-process engine: 1 apalis worker × {}, backlog {}, warm",
        o.concurrency, o.jobs
    ));
    let mut engine = engine::Engine::start(&cfg, o.concurrency, stop).await?;
    let mut stats = Tracker::start(&o.redis_url, &[keys.stats()]).await?;
    q.pause().await?;
    phases::enqueue_bulk(&q, &ctx.payload, o.jobs, o.batch, 1).await?;
    let before = q.counts().await?.completed;
    stats.clear();
    let meter = Meter::start(&mut ctx.info, proc_cpu_secs(None)).await?;
    let t0 = Instant::now();
    q.resume().await?;
    let done =
        phases::wait_completed(&q, &mut stats, before + o.jobs, None, drain_limit(o.jobs)).await?;
    let usage = meter.stop(&mut ctx.info, proc_cpu_secs(None)).await?;
    report.rate(
        "process_inproc_per_s",
        format!(
            "process, warm: in-process engine, 1 apalis worker × {}, backlog {}",
            o.concurrency, o.jobs
        ),
        "jobs/s",
        o.jobs,
        (done - t0).as_secs_f64(),
        Some(usage),
    );

    drop(stats);
    progress(&format!(
        "in-process latency: {} jobs one at a time",
        o.latency_jobs
    ));
    engine.record_starts(true);
    let lat = phases::latency(
        &q,
        &o.redis_url,
        &keys.completed(),
        &ctx.payload,
        o.latency_jobs,
        Some(&mut engine.starts),
    )
    .await?;
    engine.record_starts(false);
    latency_rows(report, "inproc_", "in-process engine, idle", lat);
    engine.stop(Duration::from_secs(15)).await
}
