//! `exai-bench`: benchmarks of EXAI Queue, printed as a table with ratios against a baseline
//! measured in the same run (habit 13: a program, never a timed test).
//!
//! ```text
//! cargo build --release -p exai-daemon -p exai-worker -p exai-tests
//! cargo run --release -p exai-tests --bin exai-bench -- queue [--jobs N] [--concurrency C] [--workers W] [--json]
//! cargo run --release -p exai-tests --bin exai-bench -- ws [--clients N] [--inflight K] [--calls T] [--workers W] [--json]
//! ```
//!
//! `queue` measures, on `REDIS_URL`, raw Redis round trips (the baseline), enqueue rates
//! (single and bulk), the process rate of no-op jobs through `exai-worker` processes and through
//! the engine in this process, enqueue→start and enqueue→completed latency, and the per-job cost
//! at a small and a large backlog, with the Redis CPU each job costs. `ws` measures streaming
//! `test_echo` calls through a real `exai-daemon` (calls/s, client-seen latency, one at a time and
//! under load) next to the queue alone (enqueue → completed) and raw Redis round trips, on the
//! same Redis and worker processes. See `tests/src/bench/` for what each number measures exactly.
//!
//! Everything lives under a key prefix of its own (`bench-<uuid>`), deleted at the end — also on
//! error or Ctrl-C — after the worker processes it started are stopped.

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Benchmarks of EXAI Queue against raw Redis, measured in one run.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The job queue: enqueue, process and latency, against raw Redis round trips.
    Queue(QueueArgs),
    /// The WebSocket daemon: streaming calls/s and latency, against the queue alone and raw
    /// Redis round trips.
    Ws(WsArgs),
}

/// Flags of `exai-bench ws`.
#[derive(Debug, Clone, clap::Args)]
struct WsArgs {
    /// The Redis server (single node).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// WebSocket clients of the throughput phase, each on its own connection and session.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=900))]
    clients: u64,
    /// Calls each client keeps in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    inflight: u64,
    /// Calls of the throughput phase, all clients together (also the jobs of the queue
    /// throughput phase).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    calls: u64,
    /// Calls of the one-at-a-time phase (also the jobs of the queue latency phase).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    seq_calls: u64,
    /// `exai-worker` processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Jobs run at once per worker process.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Seconds the raw Redis baselines run each.
    #[arg(long, default_value_t = 1.0)]
    raw_secs: f64,
    /// The `exai-worker` binary (default: next to this executable).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// The `exai-daemon` binary (default: next to this executable).
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

impl WsArgs {
    fn options(&self) -> anyhow::Result<bench::ws::WsOptions> {
        anyhow::ensure!(
            self.raw_secs.is_finite() && self.raw_secs > 0.0,
            "--raw-secs must be a positive number"
        );
        let worker_bin = match &self.worker_bin {
            Some(p) => p.clone(),
            None => bench::procs::default_bin("exai-worker")?,
        };
        let daemon_bin = match &self.daemon_bin {
            Some(p) => p.clone(),
            None => bench::procs::default_bin("exai-daemon")?,
        };
        bench::procs::ensure_built(&worker_bin, "--worker-bin")?;
        bench::procs::ensure_built(&daemon_bin, "--daemon-bin")?;
        Ok(bench::ws::WsOptions {
            redis_url: self.redis_url.clone(),
            clients: self.clients as usize,
            inflight: self.inflight as usize,
            calls: self.calls,
            seq_calls: self.seq_calls,
            workers: self.workers as usize,
            concurrency: self.concurrency as usize,
            raw_for: Duration::from_secs_f64(self.raw_secs),
            worker_bin,
            daemon_bin,
        })
    }
}

/// Flags of `exai-bench queue`.
#[derive(Debug, Clone, clap::Args)]
struct QueueArgs {
    /// The Redis server (single node).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Jobs of the bulk-enqueue, process and large-backlog phases.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    jobs: u64,
    /// Jobs run at once per worker process (and in the in-process engine); also the number of
    /// concurrent producers of the single-enqueue phase and of the raw concurrent PINGs.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// `exai-worker` processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Jobs of the single-enqueue phase (one `enqueue` call per job).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    single_jobs: u64,
    /// Jobs per `enqueue_bulk` call.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,
    /// Concurrent producers of the bulk-enqueue phase, each sending one batch at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    bulk_producers: u64,
    /// Jobs of each latency phase, enqueued one at a time, each after the previous completed.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    latency_jobs: u64,
    /// The small backlog of the per-job cost comparison.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    small_backlog: u64,
    /// Rounds of the small backlog (their times are summed).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    small_rounds: u64,
    /// Jobs per batch size of the protocol-only phase.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    protocol_jobs: u64,
    /// Batch sizes of the protocol-only phase, comma-separated (each ≤ 1000; empty skips it).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    protocol_batches: Vec<usize>,
    /// Seconds the raw Redis baselines run each.
    #[arg(long, default_value_t = 1.0)]
    raw_secs: f64,
    /// Skip the in-process engine phases.
    #[arg(long)]
    no_in_process: bool,
    /// The `exai-worker` binary (default: next to this executable).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

impl QueueArgs {
    fn options(&self) -> anyhow::Result<bench::Options> {
        anyhow::ensure!(
            self.raw_secs.is_finite() && self.raw_secs > 0.0,
            "--raw-secs must be a positive number"
        );
        anyhow::ensure!(
            self.protocol_batches.iter().all(|b| (1..=1000).contains(b)),
            "--protocol-batches must be between 1 and 1000"
        );
        let worker_bin = match &self.worker_bin {
            Some(p) => p.clone(),
            None => bench::procs::default_worker_bin()?,
        };
        // Fail now rather than after the enqueue phases.
        anyhow::ensure!(
            worker_bin.exists(),
            "{} does not exist: build it first (cargo build --release -p exai-worker -p exai-tests) \
             or pass --worker-bin",
            worker_bin.display()
        );
        Ok(bench::Options {
            redis_url: self.redis_url.clone(),
            jobs: self.jobs,
            concurrency: self.concurrency as usize,
            workers: self.workers as usize,
            single_jobs: self.single_jobs,
            batch: self.batch as usize,
            bulk_producers: self.bulk_producers as usize,
            latency_jobs: self.latency_jobs,
            small_backlog: self.small_backlog,
            small_rounds: self.small_rounds,
            protocol_jobs: self.protocol_jobs,
            protocol_batches: self.protocol_batches.clone(),
            raw_for: Duration::from_secs_f64(self.raw_secs),
            in_process: !self.no_in_process,
            worker_bin,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Queue(args) => {
            let options = args.options()?;
            let redis_url = options.redis_url.clone();
            run_mode(&redis_url, args.json, |prefix, stop| {
                bench::run(options, prefix, stop)
            })
            .await
        }
        Command::Ws(args) => {
            let options = args.options()?;
            let redis_url = options.redis_url.clone();
            run_mode(&redis_url, args.json, |prefix, _stop| {
                bench::ws::run(options, prefix)
            })
            .await
        }
    }
}

/// Runs one benchmark in a task of its own under a fresh key prefix, then — whatever happened
/// to it, Ctrl-C included — stops what it started, deletes its keys and prints the report.
async fn run_mode<F, Fut>(redis_url: &str, json: bool, start: F) -> anyhow::Result<()>
where
    F: FnOnce(String, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<bench::report::Report>> + Send + 'static,
{
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let stop = CancellationToken::new();
    let mut task = tokio::spawn(start(prefix.clone(), stop.clone()));
    let outcome = tokio::select! {
        joined = &mut task => joined.context("the benchmark panicked").and_then(|r| r),
        _ = tokio::signal::ctrl_c() => {
            task.abort();
            let _ = (&mut task).await;
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    // Engines still running (after an error) stop on this; worker processes were killed when
    // the task's guards dropped. Give both a moment before the keys go.
    stop.cancel();
    if outcome.is_err() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bench::cleanup(redis_url, &prefix)
        .await
        .with_context(|| format!("delete the benchmark's keys (prefix {prefix})"))?;
    let report = outcome?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
