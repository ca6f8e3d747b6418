//! `exai-bench`: benchmarks of EXAI Queue, printed as a table with ratios against a baseline
//! measured in the same run (habit 13: a program, never a timed test).
//!
//! ```text
//! cargo build --release -p exai-worker -p exai-tests
//! cargo run --release -p exai-tests --bin exai-bench -- queue [--jobs N] [--concurrency C] [--workers W] [--json]
//! ```
//!
//! `queue` measures, on `REDIS_URL`, raw Redis round trips (the baseline), enqueue rates
//! (single and bulk), the process rate of no-op jobs through `exai-worker` processes and through
//! the engine in this process, enqueue→start and enqueue→completed latency, and the per-job cost
//! at a small and a large backlog, with the Redis CPU each job costs. See `tests/src/bench/` for
//! what each number measures exactly.
//!
//! Everything lives under a key prefix of its own (`bench-<uuid>`), deleted at the end — also on
//! error or Ctrl-C — after the worker processes it started are stopped.

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bench::report::Printable;
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
    /// The leased semaphores: acquire + release rate and push wake-up latency.
    Sem(SemArgs),
    /// The daemon's memory with many idle WebSocket sessions.
    Idle(IdleArgs),
    /// The daemon's memory and descriptors under silent WebSockets and idle TCP connections,
    /// and after its timeouts closed them.
    Abuse(AbuseArgs),
    /// The WebSocket daemon: streaming calls/s and latency, against the queue alone and raw
    /// Redis round trips.
    Ws(WsArgs),
    /// MCP: tools/call through /mcp against call_tool through the WebSocket, same daemon, same
    /// workers, one run.
    Mcp(WsArgs),
    /// Uploads: files/s, MB/s and worker memory, against direct uploads to exai-sim.
    Uploads(UploadsArgs),
    /// Provider-aware admission: heavy and light clients' chat calls against a small Moonshot
    /// tier, with adaptive concurrency, rate budgets and fair share on, then with static limits.
    Admission(AdmissionArgs),
    /// Every benchmark in one run, each table in turn, then the headline numbers together.
    All(AllArgs),
    /// One BullMQ Rust port worker with a no-op processor, until SIGTERM (started by the
    /// queue benchmark for its baseline).
    #[command(hide = true)]
    BullmqWorker(BullmqWorkerArgs),
    /// The latency floor's relay: SETs every key name published on a channel (spawned by the
    /// queue benchmark).
    #[command(hide = true)]
    Relay(RelayArgs),
}

/// Flags of `exai-bench relay`.
#[derive(Debug, Clone, clap::Args)]
struct RelayArgs {
    /// The Redis server.
    #[arg(long)]
    redis_url: String,
    /// The channel whose messages are key names to SET.
    #[arg(long)]
    channel: String,
}

/// Flags of `exai-bench bullmq-worker`.
#[derive(Debug, Clone, clap::Args)]
struct BullmqWorkerArgs {
    /// The Redis server.
    #[arg(long)]
    redis_url: String,
    /// BullMQ's key prefix.
    #[arg(long)]
    prefix: String,
    /// Jobs at once.
    #[arg(long)]
    concurrency: usize,
}

/// Flags of `exai-bench all`.
#[derive(Debug, Clone, clap::Args)]
struct AllArgs {
    /// The Redis server (single node).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The large backlog of the queue's per-job cost comparison (against 1,000), and the jobs of
    /// its retention phase.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    large_backlog: u64,
    /// Idle WebSocket connections of the daemon-memory run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connections: u64,
    /// Print one JSON object (every run's, by name) instead of the tables.
    #[arg(long)]
    json: bool,
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
    /// Jobs of the retention phase: enqueued and completed in chunks with results kept 1 s,
    /// Redis memory sampled as they run and once the results expired (default: --jobs; 0 skips
    /// the phase).
    #[arg(long)]
    retention_jobs: Option<u64>,
    /// Seconds the raw Redis baselines run each.
    #[arg(long, default_value_t = 1.0)]
    raw_secs: f64,
    /// The `exai-worker` binary (default: next to this executable).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// The `exai-daemon` binary (default: next to this executable).
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// Another `exai-daemon` binary (e.g. an older build) to run the WebSocket phases against
    /// too, alternating with --daemon-bin on the same Redis and worker processes; adds its rows
    /// and the ratios current ÷ baseline.
    #[arg(long)]
    baseline_daemon_bin: Option<PathBuf>,
    /// With --baseline-daemon-bin: rounds of the WebSocket phases per daemon, in the order
    /// baseline, current, current, baseline, …
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=50))]
    rounds: u64,
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
        if let Some(b) = &self.baseline_daemon_bin {
            anyhow::ensure!(
                b.exists(),
                "{} does not exist (--baseline-daemon-bin)",
                b.display()
            );
        }
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
            baseline_daemon_bin: self.baseline_daemon_bin.clone(),
            rounds: self.rounds as usize,
        })
    }
}

/// Flags of `exai-bench uploads`.
#[derive(Debug, Clone, clap::Args)]
struct UploadsArgs {
    /// The Redis server (single node).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Files of the small-file phase, one tool call each.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    small_files: u64,
    /// Size of each small file, in bytes.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=MAX_UPLOAD))]
    small_bytes: u64,
    /// Files of the large-file phase.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    large_files: u64,
    /// Size of each large file, in bytes.
    #[arg(long, default_value_t = 20 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=MAX_UPLOAD))]
    large_bytes: u64,
    /// Size of the file whose upload the worker's peak memory is measured on, in bytes.
    #[arg(long, default_value_t = MAX_UPLOAD, value_parser = clap::value_parser!(u64).range(1..=MAX_UPLOAD))]
    rss_bytes: u64,
    /// `exai-worker` processes of the throughput phases.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    workers: u64,
    /// Jobs run at once per worker process (`exai-worker run --concurrency`).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1000))]
    concurrency: u64,
    /// Uploads in flight at once in the direct baseline (default: the `kimi` semaphore's
    /// permits, which bound the queue path too).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=1000))]
    baseline_concurrency: u64,
    /// The `exai-worker` binary (default: next to this executable).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// The `exai-sim` binary (default: next to this executable).
    #[arg(long)]
    sim_bin: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Flags of `exai-bench admission`.
#[derive(Debug, Clone, clap::Args)]
struct AdmissionArgs {
    /// The Redis server (single node).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Heavy clients, each sending all its calls at once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    heavy_clients: u64,
    /// Calls per heavy client.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    heavy_calls: u64,
    /// The light client's interval between calls, in ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    light_every_ms: u64,
    /// The light client's unanswered calls at most (1: an interactive client that waits for
    /// each answer): a tick that finds this many sends its call when the next answer comes.
    /// 0: no limit, every tick sends whatever is unanswered.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    light_in_flight: u64,
    /// The tier's calls in flight.
    #[arg(long, default_value_t = 4)]
    tier_concurrency: u64,
    /// The tier's requests per minute.
    #[arg(long, default_value_t = 120)]
    tier_rpm: u64,
    /// The tier's tokens per minute.
    #[arg(long, default_value_t = 40_000)]
    tier_tpm: u64,
    /// The length of the emulator's (and the budgets') minute, in ms: shorter runs the same
    /// scenario in less time.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1000..=600_000))]
    minute_ms: u64,
    /// How long exai-sim takes to answer a chat call, in ms.
    #[arg(long, default_value_t = 200)]
    chat_latency_ms: u64,
    /// The completion cap of every call (`EXAI_KIMI_MAX_COMPLETION_TOKENS`).
    #[arg(long, default_value_t = 256)]
    completion_tokens: u64,
    /// `exai-worker` processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    workers: u64,
    /// Jobs at once per worker process (the default, 2 × 2, holds as many calls in the workers
    /// as the default tier admits at once).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1000))]
    concurrency: u64,
    /// The `exai-worker` binary (default: next to this executable).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// The `exai-daemon` binary (default: next to this executable).
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// The `exai-sim` binary (default: next to this executable).
    #[arg(long)]
    sim_bin: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

impl AdmissionArgs {
    fn options(&self) -> anyhow::Result<bench::admission::Options> {
        let bin = |given: &Option<PathBuf>, name: &str| match given {
            Some(p) => Ok(p.clone()),
            None => bench::procs::default_bin(name),
        };
        Ok(bench::admission::Options {
            redis_url: self.redis_url.clone(),
            heavy_clients: self.heavy_clients as usize,
            heavy_calls: self.heavy_calls as usize,
            light_every: Duration::from_millis(self.light_every_ms),
            light_in_flight: (self.light_in_flight > 0).then_some(self.light_in_flight as usize),
            tier_concurrency: self.tier_concurrency,
            tier_rpm: self.tier_rpm,
            tier_tpm: self.tier_tpm,
            minute: Duration::from_millis(self.minute_ms),
            chat_latency: Duration::from_millis(self.chat_latency_ms),
            completion_tokens: self.completion_tokens,
            workers: self.workers as usize,
            concurrency: self.concurrency as usize,
            worker_bin: bin(&self.worker_bin, "exai-worker")?,
            daemon_bin: bin(&self.daemon_bin, "exai-daemon")?,
            sim_bin: bin(&self.sim_bin, "exai-sim")?,
        })
    }
}

/// The largest upload (`EXAI_MAX_UPLOAD_BYTES`'s default, Moonshot's limit): 100 MiB.
const MAX_UPLOAD: u64 = 100 * 1024 * 1024;

impl UploadsArgs {
    fn options(&self) -> anyhow::Result<bench::uploads::Options> {
        let bin = |given: &Option<PathBuf>, name: &str| match given {
            Some(p) => Ok(p.clone()),
            None => bench::procs::default_bin(name),
        };
        Ok(bench::uploads::Options {
            redis_url: self.redis_url.clone(),
            small_files: self.small_files,
            small_bytes: self.small_bytes,
            large_files: self.large_files,
            large_bytes: self.large_bytes,
            rss_bytes: self.rss_bytes,
            workers: self.workers as usize,
            concurrency: self.concurrency as usize,
            baseline_concurrency: self.baseline_concurrency as usize,
            worker_bin: bin(&self.worker_bin, "exai-worker")?,
            sim_bin: bin(&self.sim_bin, "exai-sim")?,
        })
    }
}

/// Flags of `exai-bench sem`.
#[derive(Debug, Clone, clap::Args)]
struct SemArgs {
    /// The Redis server (single node).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Concurrent acquire/release tasks.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    tasks: u64,
    /// Seconds the acquire/release phase runs.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Hand-overs of the wake-up phase.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    wakeups: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Flags of `exai-bench idle`.
#[derive(Debug, Clone, clap::Args)]
struct IdleArgs {
    /// The Redis server (single node) the daemon uses.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connections: u64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    parallel: u64,
    /// The `exai-daemon` binary (default: next to this executable).
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Flags of `exai-bench abuse`.
#[derive(Debug, Clone, clap::Args)]
struct AbuseArgs {
    /// The Redis server (single node) the daemon uses.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Silent WebSockets of each silent scenario (before and after hello, from one address and
    /// spread over many; 0 skips them).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=50_000))]
    silent: u64,
    /// TCP connections of the idle and the slow-header scenarios (0 skips them).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=50_000))]
    idle_tcp: u64,
    /// Pings (each with a 256-byte id) every silent socket sends after its hello, never reading
    /// the pongs.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pings: u64,
    /// Sockets opened at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    parallel: u64,
    /// The daemon's hello, HTTP header, keepalive (ping interval and ping timeout) and write
    /// timeouts during the run, in seconds (at least 2). Opening 1,000 sockets takes a few
    /// seconds (the daemon's accept queue holds 128: a burst beyond it waits for a SYN
    /// retransmit), and every socket should be open before the first times out.
    #[arg(long, default_value_t = 10.0)]
    timeout_secs: f64,
    /// The `exai-daemon` binary (default: next to this executable).
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

impl AbuseArgs {
    fn options(&self) -> anyhow::Result<bench::abuse::AbuseOptions> {
        anyhow::ensure!(
            self.timeout_secs.is_finite() && self.timeout_secs >= 2.0,
            "--timeout-secs must be at least 2 (the run counts the open sockets 1.5 s after the \
             peak, before any timeout)"
        );
        Ok(bench::abuse::AbuseOptions {
            redis_url: self.redis_url.clone(),
            silent: self.silent as usize,
            idle_tcp: self.idle_tcp as usize,
            pings: self.pings as usize,
            parallel: self.parallel as usize,
            timeout: Duration::from_secs_f64(self.timeout_secs),
            daemon_bin: match &self.daemon_bin {
                Some(p) => p.clone(),
                None => bench::procs::default_bin("exai-daemon")?,
            },
        })
    }
}

/// Flags of `exai-bench queue`.
#[derive(Debug, Clone, clap::Args)]
struct QueueArgs {
    /// The Redis server (single node).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Jobs of the bulk-enqueue and process phases (and the large backlog, unless
    /// --large-backlog says otherwise).
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
    /// The large backlog of the per-job cost comparison (default: --jobs).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    large_backlog: Option<u64>,
    /// Rounds of the small backlog (their times are summed).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    small_rounds: u64,
    /// Jobs per batch size of the protocol-only phase.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    protocol_jobs: u64,
    /// Batch sizes of the protocol-only phase, comma-separated (each ≤ 1000; the flag with no
    /// value skips the phase).
    #[arg(long, value_delimiter = ',', num_args = 0..=1, default_value = "1,10,100")]
    protocol_batches: Vec<usize>,
    /// Jobs of the retention phase: enqueued and completed in chunks with results kept 1 s,
    /// Redis memory sampled as they run and once the results expired (default: --jobs; 0 skips
    /// the phase).
    #[arg(long)]
    retention_jobs: Option<u64>,
    /// Seconds the raw Redis baselines run each.
    #[arg(long, default_value_t = 1.0)]
    raw_secs: f64,
    /// Skip the in-process engine phases.
    #[arg(long)]
    no_in_process: bool,
    /// Skip the BullMQ Rust port baseline.
    #[arg(long)]
    no_bullmq: bool,
    /// Also measure what the queue's per-minute history costs: the cold process phase again,
    /// --history-rounds times with EXAI_QUEUE_HISTORY=true and as many with false, printing
    /// both rates and their ratio.
    #[arg(long)]
    history_cost: bool,
    /// Rounds of --history-cost (each runs --protocol-jobs through the protocol loop and drains
    /// --jobs through worker processes, history on and history off).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=20))]
    history_rounds: u64,
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
            large_backlog: self.large_backlog.unwrap_or(self.jobs),
            batch: self.batch as usize,
            bulk_producers: self.bulk_producers as usize,
            latency_jobs: self.latency_jobs,
            small_backlog: self.small_backlog,
            small_rounds: self.small_rounds,
            protocol_jobs: self.protocol_jobs,
            protocol_batches: self.protocol_batches.clone(),
            retention_jobs: self.retention_jobs.unwrap_or(self.jobs),
            raw_for: Duration::from_secs_f64(self.raw_secs),
            in_process: !self.no_in_process,
            bullmq_bin: if self.no_bullmq {
                None
            } else {
                Some(std::env::current_exe().context("locate exai-bench")?)
            },
            worker_bin,
            history_rounds: if self.history_cost {
                self.history_rounds
            } else {
                0
            },
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Queue(args) => queue(args).await,
        Command::BullmqWorker(args) => {
            bench::bullmq::worker(&args.redis_url, &args.prefix, args.concurrency).await
        }
        Command::Relay(args) => bench::relay::serve(&args.redis_url, &args.channel).await,
        Command::Sem(args) => {
            anyhow::ensure!(
                args.secs.is_finite() && args.secs > 0.0,
                "--secs must be a positive number"
            );
            let options = bench::sem::SemOptions {
                redis_url: args.redis_url.clone(),
                tasks: args.tasks as usize,
                duration: Duration::from_secs_f64(args.secs),
                wakeups: args.wakeups as usize,
            };
            let redis_url = options.redis_url.clone();
            guarded(&redis_url, args.json, |prefix| {
                bench::sem::run(options, prefix)
            })
            .await
        }
        Command::Ws(args) => {
            let options = args.options()?;
            let redis_url = options.redis_url.clone();
            guarded(&redis_url, args.json, |prefix| {
                bench::ws::run(options, prefix)
            })
            .await
        }
        Command::Mcp(args) => {
            let options = args.options()?;
            let redis_url = options.redis_url.clone();
            guarded(&redis_url, args.json, |prefix| {
                bench::mcp::run(options, prefix)
            })
            .await
        }
        Command::Uploads(args) => {
            let options = args.options()?;
            let redis_url = options.redis_url.clone();
            guarded(&redis_url, args.json, |prefix| {
                bench::uploads::run(options, prefix)
            })
            .await
        }
        Command::Admission(args) => {
            let options = args.options()?;
            let redis_url = options.redis_url.clone();
            guarded(&redis_url, args.json, |prefix| {
                bench::admission::run(options, prefix)
            })
            .await
        }
        Command::All(args) => all(args).await,
        Command::Abuse(args) => {
            let options = args.options()?;
            let redis_url = options.redis_url.clone();
            guarded(&redis_url, args.json, |prefix| {
                bench::abuse::run(options, prefix)
            })
            .await
        }
        Command::Idle(args) => {
            let options = bench::idle::IdleOptions {
                redis_url: args.redis_url.clone(),
                connections: args.connections as usize,
                parallel: args.parallel as usize,
                daemon_bin: match &args.daemon_bin {
                    Some(p) => p.clone(),
                    None => bench::procs::default_bin("exai-daemon")?,
                },
            };
            let redis_url = options.redis_url.clone();
            guarded(&redis_url, args.json, |prefix| {
                bench::idle::run(options, prefix)
            })
            .await
        }
    }
}

/// Runs one benchmark under a fresh key prefix (see [`measured`]) and prints its report.
async fn guarded<R, F, Fut>(redis_url: &str, json: bool, run: F) -> anyhow::Result<()>
where
    R: Printable,
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    let report = measured(redis_url, run).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// `exai-bench all`: every benchmark with its defaults (the queue's large backlog and the
/// daemon's connections from the flags), one after the other, then a summary of the headline
/// numbers of all of them.
async fn all(args: AllArgs) -> anyhow::Result<()> {
    let url = args.redis_url.clone();
    let large = args.large_backlog.to_string();
    // The queue run's defaults, as `exai-bench queue --large-backlog N` would have them.
    let cli = Cli::try_parse_from([
        "exai-bench",
        "queue",
        "--large-backlog",
        large.as_str(),
        "--retention-jobs",
        large.as_str(),
    ])?;
    let Command::Queue(queue_args) = cli.command else {
        unreachable!("parsed as the queue command")
    };
    let mut queue_options = queue_args.options()?;
    queue_options.redis_url = url.clone();
    let mut reports: Vec<(&str, Box<dyn Printable>)> = Vec::new();
    let queue = measured(&url, move |prefix| queue_run(queue_options, prefix)).await?;
    reports.push(("queue", Box::new(queue)));
    let sem = bench::sem::SemOptions {
        redis_url: url.clone(),
        tasks: 50,
        duration: Duration::from_secs(3),
        wakeups: 500,
    };
    let sem = measured(&url, |prefix| bench::sem::run(sem, prefix)).await?;
    reports.push(("sem", Box::new(sem)));
    let cli = Cli::try_parse_from(["exai-bench", "uploads"])?;
    let Command::Uploads(uploads_args) = cli.command else {
        unreachable!("parsed as the uploads command")
    };
    let mut uploads_options = uploads_args.options()?;
    uploads_options.redis_url = url.clone();
    let cli = Cli::try_parse_from(["exai-bench", "ws"])?;
    let Command::Ws(ws_args) = cli.command else {
        unreachable!("parsed as the ws command")
    };
    let mut ws_options = ws_args.options()?;
    ws_options.redis_url = url.clone();
    let ws = measured(&url, |prefix| bench::ws::run(ws_options, prefix)).await?;
    reports.push(("ws", Box::new(ws)));
    let uploads = measured(&url, |prefix| bench::uploads::run(uploads_options, prefix)).await?;
    reports.push(("uploads", Box::new(uploads)));
    let idle = bench::idle::IdleOptions {
        redis_url: url.clone(),
        connections: args.connections as usize,
        parallel: 200,
        daemon_bin: bench::procs::default_bin("exai-daemon")?,
    };
    let idle = measured(&url, |prefix| bench::idle::run(idle, prefix)).await?;
    reports.push(("idle", Box::new(idle)));
    let cli = Cli::try_parse_from(["exai-bench", "abuse"])?;
    let Command::Abuse(abuse_args) = cli.command else {
        unreachable!("parsed as the abuse command")
    };
    let mut abuse_options = abuse_args.options()?;
    abuse_options.redis_url = url.clone();
    let abuse = measured(&url, |prefix| bench::abuse::run(abuse_options, prefix)).await?;
    reports.push(("abuse", Box::new(abuse)));

    if args.json {
        let all: serde_json::Map<String, serde_json::Value> = reports
            .iter()
            .map(|(name, r)| ((*name).to_owned(), r.json()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for (_, r) in &reports {
        print!("{}", r.table());
        println!();
    }
    print!("{}", bench::report::summary(&reports));
    Ok(())
}

/// Runs one benchmark under a fresh key prefix, then — whatever happened to it, Ctrl-C
/// included — deletes its keys and returns its report.
async fn measured<R, F, Fut>(redis_url: &str, run: F) -> anyhow::Result<R>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    // On Ctrl-C the run's future is dropped: its guards kill what it spawned.
    let outcome = tokio::select! {
        r = run(prefix.clone()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    bench::cleanup(redis_url, &prefix)
        .await
        .with_context(|| format!("delete the benchmark's keys (prefix {prefix})"))?;
    outcome
}

/// Runs the queue benchmark (see [`guarded`]).
async fn queue(args: QueueArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let redis_url = options.redis_url.clone();
    guarded(&redis_url, args.json, |prefix| queue_run(options, prefix)).await
}

/// The queue benchmark; the in-process engines it started stop when it ends, however it ends
/// (error, Ctrl-C), before its keys are deleted.
async fn queue_run(
    options: bench::Options,
    prefix: String,
) -> anyhow::Result<bench::report::Report> {
    let stop = CancellationToken::new();
    let _stop_engines = stop.clone().drop_guard();
    let outcome = bench::run(options, prefix, stop.clone()).await;
    if outcome.is_err() {
        stop.cancel();
        // Worker processes were killed when the run's guards dropped; give them and the
        // engines a moment before the keys go.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_batches_with_no_value_skip_the_phase() {
        let parse = |args: &[&str]| -> Vec<usize> {
            let mut full = vec!["exai-bench", "queue"];
            full.extend_from_slice(args);
            match Cli::try_parse_from(full).expect("parses").command {
                Command::Queue(q) => q.protocol_batches,
                _ => unreachable!("parsed as the queue command"),
            }
        };
        assert_eq!(parse(&[]), [1, 10, 100]);
        assert_eq!(parse(&["--protocol-batches", "5,50"]), [5, 50]);
        assert!(parse(&["--protocol-batches", "--no-bullmq"]).is_empty());
    }

    #[test]
    fn retention_jobs_default_to_the_jobs_and_zero_skips_the_phase() {
        let retention = |args: &[&str]| -> u64 {
            let mut full = vec!["exai-bench", "queue", "--worker-bin", "/bin/sh"];
            full.extend_from_slice(args);
            match Cli::try_parse_from(full).expect("parses").command {
                Command::Queue(q) => q.options().expect("valid options").retention_jobs,
                _ => unreachable!("parsed as the queue command"),
            }
        };
        assert_eq!(retention(&[]), 100_000);
        assert_eq!(retention(&["--jobs", "5000"]), 5000);
        assert_eq!(retention(&["--jobs", "5000", "--retention-jobs", "7"]), 7);
        assert_eq!(retention(&["--retention-jobs", "0"]), 0);
    }
}
