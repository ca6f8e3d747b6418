//! The queue engine inside the bench process: one apalis worker on our `RedisBackend` under a
//! `Monitor`, built as `exai-worker`'s runtime builds it, with a no-op handler shaped like
//! `test_echo` (decode the `ToolCallJob`, return its arguments as text). It isolates the engine
//! from process start-up, and its handler can stamp the instant it starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use apalis::prelude::{Data, Monitor, WorkerBuilder, WorkerBuilderExt};
use exai_shared::Config;
use exai_shared::backend::{BackendOptions, RedisBackend, RunningJob};
use exai_shared::jobs::{JobError, ToolCallJob, ToolResult};
use exai_shared::keys::Keys;
use exai_shared::queue::{Queue, QueuePolicy, TOOL_CALLS, Waker};
use exai_shared::redis::RedisHandle;
use exai_shared::subscriber::Subscriber;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// What the handler reports while [`Engine::record_starts`] is on: job id and the instant the
/// handler began.
pub type Start = (String, Instant);

/// Shared with every handler call through apalis `Data`.
struct Probe {
    on: AtomicBool,
    tx: mpsc::UnboundedSender<Start>,
}

/// A running in-process engine; stopped by [`Engine::stop`], or when dropped (its token fires).
pub struct Engine {
    probe: Arc<Probe>,
    /// Handler start instants, while recording is on.
    pub starts: mpsc::UnboundedReceiver<Start>,
    task: JoinHandle<anyhow::Result<()>>,
    stop: DropGuard,
}

impl Engine {
    /// Starts serving `tool_calls` of `config`'s prefix with `concurrency` jobs at once; stops
    /// when `parent` is cancelled too.
    pub async fn start(
        config: &Config,
        concurrency: usize,
        parent: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let conn = RedisHandle::connect(&config.redis)
            .await
            .context("connect to redis")?;
        let keys = Keys::new(&config.redis.prefix);
        let name = format!("exai-bench-{}/{TOOL_CALLS}", std::process::id());
        let subscriber = Subscriber::connect(RedisHandle::pubsub_client(&config.redis)?)
            .await
            .context("connect the pub/sub subscriber")?;
        let waker = Waker::new(&subscriber, &keys, &[(TOOL_CALLS, &name)])
            .await
            .context("subscribe to queue wake-ups")?;
        let queue = Queue::new(
            conn,
            &keys,
            TOOL_CALLS,
            QueuePolicy::from_config(&config.jobs),
        );
        let shutdown = parent.child_token();
        let mut options = BackendOptions::new(name.clone(), concurrency, config.jobs.lease);
        options.shutdown = shutdown.clone();
        let (tx, starts) = mpsc::unbounded_channel();
        let probe = Arc::new(Probe {
            on: AtomicBool::new(false),
            tx,
        });
        let data = probe.clone();
        let monitor = Monitor::new()
            .shutdown_timeout(Duration::from_secs(5))
            .register(move |_| {
                WorkerBuilder::new(name.clone())
                    .backend(RedisBackend::new(
                        queue.clone(),
                        waker.clone(),
                        options.clone(),
                    ))
                    .data(data.clone())
                    .concurrency(concurrency)
                    .build(noop)
            });
        let signal = shutdown.clone();
        let task = tokio::spawn(async move {
            monitor
                .run_with_signal(async move {
                    signal.cancelled().await;
                    Ok(())
                })
                .await
                .context("in-process monitor")
        });
        Ok(Self {
            probe,
            starts,
            task,
            stop: shutdown.drop_guard(),
        })
    }

    /// Turns the handler's start stamps on or off.
    pub fn record_starts(&self, on: bool) {
        self.probe.on.store(on, Ordering::Relaxed);
    }

    /// Shuts the engine down and waits for it (at most `limit`).
    pub async fn stop(self, limit: Duration) -> anyhow::Result<()> {
        let Self { task, stop, .. } = self;
        drop(stop);
        tokio::time::timeout(limit, task)
            .await
            .context("the in-process engine did not stop in time")?
            .context("the in-process engine panicked")?
    }
}

/// The no-op job: what `test_echo` with arguments `{}` does, plus a start stamp when asked.
async fn noop(
    job: ToolCallJob,
    lease: Data<RunningJob>,
    probe: Data<Arc<Probe>>,
) -> Result<ToolResult, JobError> {
    if probe.on.load(Ordering::Relaxed) {
        let _ = probe.tx.send((lease.id().to_owned(), Instant::now()));
    }
    Ok(ToolResult::text(job.arguments.to_string()))
}
