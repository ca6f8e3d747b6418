//! The worker runtime: one apalis worker per queue on our Redis backend, the `cleanup` cron
//! scheduler, all under one apalis `Monitor`, until the shutdown token fires.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_cron::{CronScheduler, Tick};
use exai_shared::Config;
use exai_shared::backend::{BackendOptions, RedisBackend};
use exai_shared::events::EventPublisher;
use exai_shared::jobs::{CleanupJob, JobError};
use exai_shared::keys::Keys;
use exai_shared::queue::{self, Queue, QueuePolicy, Waker};
use exai_shared::redis::RedisHandle;
use exai_shared::subscriber::Subscriber;
use exai_shared::worker_registry::{self, WorkerInfo, WorkerRegistry};
use tokio_util::sync::CancellationToken;

use crate::handlers::{self, AppState};
use crate::metrics::WorkerMetrics;

/// The name under which the `cleanup` queue's cron ticks are deduplicated.
pub const CLEANUP_SCHEDULE: &str = "cleanup";

/// What `exai-worker run` was asked to do.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The queues this process serves.
    pub queues: Vec<String>,
    /// Jobs of each queue run at once in this process.
    pub concurrency: usize,
    /// How long running jobs may finish after SIGTERM before they are put back.
    pub grace: Duration,
    /// The longest an idle worker waits for a push wake-up before it polls anyway.
    pub poll_fallback: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            queues: queue::ALL_QUEUES.iter().map(|q| (*q).to_owned()).collect(),
            concurrency: 16,
            grace: Duration::from_secs(10),
            poll_fallback: Duration::from_secs(1),
        }
    }
}

/// This machine's host name (`/etc/hostname`), or `host` when it has none.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

/// A unique id for this worker process: host, pid and a random suffix.
pub fn worker_id() -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", host_name(), std::process::id(), &suffix[..8])
}

/// Serves the queues until `shutdown` is cancelled, then drains (see
/// [`BackendOptions::grace`](exai_shared::backend::BackendOptions)).
pub async fn run(
    config: &Config,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for q in &options.queues {
        anyhow::ensure!(
            queue::ALL_QUEUES.contains(&q.as_str()),
            "unknown queue `{q}` (known: {})",
            queue::ALL_QUEUES.join(", ")
        );
    }
    let conn = RedisHandle::connect(&config.redis)
        .await
        .context("connect to redis")?;
    let keys = Keys::new(&config.redis.prefix);
    let queue_names: Vec<&str> = options.queues.iter().map(String::as_str).collect();
    let worker_id = worker_id();
    // Each queue's backend fetches (and registers idle) as `<worker id>/<queue>`.
    let fetchers: Vec<(&str, String)> = queue_names
        .iter()
        .map(|&q| (q, format!("{worker_id}/{q}")))
        .collect();
    let listens: Vec<(&str, &str)> = fetchers.iter().map(|(q, w)| (*q, w.as_str())).collect();
    // The process's one pub/sub connection, shared by the queue wake-ups and the semaphores.
    let subscriber = Subscriber::connect(RedisHandle::pubsub_client(&config.redis)?)
        .await
        .context("connect the pub/sub subscriber")?;
    let waker = Waker::new(&subscriber, &keys, &listens)
        .await
        .context("subscribe to queue wake-ups")?;
    let policy = QueuePolicy::from_config(&config.jobs);
    let storage_policy = crate::storage::StoragePushPolicy::from_config(config);
    let metrics = WorkerMetrics::new();
    let semaphore_names: Vec<String> = config
        .semaphores
        .default_limits()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    metrics.register_names(
        &queue_names,
        &semaphore_names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let state = Arc::new(
        AppState::build(
            config,
            conn.clone(),
            &subscriber,
            keys.clone(),
            &worker_id,
            storage_policy.clone(),
            metrics.clone(),
        )
        .await?,
    );
    if let Some(addr) = config.worker.metrics_addr {
        crate::metrics::serve(
            addr,
            metrics.clone(),
            crate::cli::queue_handles(config, conn.clone()),
            state.semaphores.clone(),
            shutdown.clone(),
        )
        .await?;
    }
    if options.queues.iter().any(|q| q == queue::TOOL_CALLS) && !state.upstreams.is_empty() {
        state
            .upstreams
            .spawn(conn.clone(), keys.clone(), shutdown.clone());
    }
    if options.queues.iter().any(|q| q == queue::STORAGE_PUSH) {
        crate::storage::spawn_ensure_bucket(state.clone(), shutdown.clone());
    }
    tracing::info!(worker_id = %worker_id, queues = ?options.queues, concurrency = options.concurrency, "exai-worker serving");

    let backend_options = |name: &str| {
        let mut o = BackendOptions::new(
            format!("{worker_id}/{name}"),
            options.concurrency,
            config.jobs.lease,
        );
        o.grace = options.grace;
        o.poll_fallback = options.poll_fallback;
        o.shutdown = shutdown.clone();
        o.observer = Some(Arc::new(metrics.clone()));
        o
    };

    let mut monitor = Monitor::new().shutdown_timeout(options.grace + Duration::from_secs(5));
    for name in &options.queues {
        let queue_policy = if name == queue::STORAGE_PUSH {
            storage_policy.queue.clone()
        } else {
            policy.clone()
        };
        let q = Queue::new(conn.clone(), &keys, name, queue_policy);
        let bo = backend_options(name);
        let waker = waker.clone();
        let worker_name = format!("{worker_id}/{name}");
        let concurrency = options.concurrency;
        match name.as_str() {
            queue::TOOL_CALLS => {
                let state = state.clone();
                // Someone (the daemon) waits on every tool call: announce starts and ends.
                let mut bo = bo;
                bo.events = Some(EventPublisher::new(conn.clone(), keys.clone()));
                monitor = monitor.register(move |_| {
                    WorkerBuilder::new(worker_name.clone())
                        .backend(RedisBackend::new(q.clone(), waker.clone(), bo.clone()))
                        .data(state.clone())
                        .concurrency(concurrency)
                        .build(handlers::tool_call)
                });
            }
            queue::CLEANUP => {
                let cron_queue = q.clone();
                let cron_name = format!("{worker_id}/cleanup-cron");
                let state = state.clone();
                monitor = monitor.register(move |_| {
                    WorkerBuilder::new(worker_name.clone())
                        .backend(RedisBackend::new(q.clone(), waker.clone(), bo.clone()))
                        .data(state.clone())
                        .concurrency(1)
                        .build(handlers::cleanup)
                });
                let schedule =
                    cron::Schedule::from_str(&config.cleanup.cron).context("EXAI_CLEANUP_CRON")?;
                monitor = monitor.register(move |_| {
                    let q = cron_queue.clone();
                    WorkerBuilder::new(cron_name.clone())
                        .backend(CronScheduler::new(schedule.clone()))
                        .build(move |tick: Tick| {
                            let q = q.clone();
                            async move { fire_cleanup_tick(&q, tick.get_timestamp()).await }
                        })
                });
            }
            queue::UPLOADS => {
                let state = state.clone();
                // The daemon may wait on uploads too: announce starts and ends.
                let mut bo = bo;
                bo.events = Some(EventPublisher::new(conn.clone(), keys.clone()));
                monitor = monitor.register(move |_| {
                    WorkerBuilder::new(worker_name.clone())
                        .backend(RedisBackend::new(q.clone(), waker.clone(), bo.clone()))
                        .data(state.clone())
                        .concurrency(concurrency)
                        .build(handlers::upload)
                });
            }
            queue::STORAGE_PUSH => {
                let state = state.clone();
                monitor = monitor.register(move |_| {
                    WorkerBuilder::new(worker_name.clone())
                        .backend(RedisBackend::new(q.clone(), waker.clone(), bo.clone()))
                        .data(state.clone())
                        .concurrency(concurrency)
                        .build(handlers::storage_push)
                });
            }
            other => anyhow::bail!("queue `{other}` has no handler"),
        }
    }

    // Listed by the daemon's /health while it runs (one job lease without a renewal and it is
    // gone); removed once drained.
    let registered = CancellationToken::new();
    let registry = tokio::spawn(worker_registry::run_heartbeat(
        WorkerRegistry::new(conn.clone(), &keys),
        WorkerInfo {
            id: worker_id.clone(),
            host: host_name(),
            pid: std::process::id(),
            queues: options.queues.clone(),
            concurrency: options.concurrency,
            ttl_ms: u64::try_from(config.jobs.lease.as_millis()).unwrap_or(u64::MAX),
            started_at_ms: None,
            last_seen_ms: None,
        },
        registered.clone(),
    ));

    let stop = shutdown.clone();
    let ran = monitor
        .run_with_signal(async move {
            stop.cancelled().await;
            Ok(())
        })
        .await
        .context("worker monitor");
    registered.cancel();
    let _ = registry.await;
    ran?;
    tracing::info!("exai-worker drained");
    Ok(())
}

/// Enqueues the cleanup job of one cron tick; every process does this, the queue keeps one.
async fn fire_cleanup_tick(q: &Queue, tick_secs: u64) -> Result<(), JobError> {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(tick_secs);
    let payload = serde_json::to_vec(&CleanupJob {
        tick: tick_secs,
        dry_run: false,
    })
    .map_err(JobError::permanent)?;
    let outcome = q
        .enqueue_tick(CLEANUP_SCHEDULE, at, payload)
        .await
        .map_err(JobError::transient)?;
    tracing::debug!(
        tick = tick_secs,
        created = outcome.is_created(),
        "cleanup tick"
    );
    Ok(())
}
