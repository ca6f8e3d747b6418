//! [`AppState`]: what every handler can reach, built once per worker process.

use std::time::Duration;

use anyhow::Context;
use exai_shared::Config;
use exai_shared::db::{self, PgPool};
use exai_shared::events::{EventPublisher, JobEvent};
use exai_shared::keys::Keys;
use exai_shared::providers::Providers;
use exai_shared::queue::{self, Backoff, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_shared::semaphore::Semaphores;
use exai_shared::staging::Staging;
use exai_shared::subscriber::Subscriber;

use crate::metrics::WorkerMetrics;

/// What every handler can reach. Shared by all jobs of the process behind one `Arc`; every field
/// is a cheap handle (pools, clients), so nothing here is locked while a job runs.
#[derive(Debug)]
pub struct AppState {
    /// The process's configuration.
    pub config: Config,
    /// Postgres (`provider_file_uploads`); connected lazily, so a process that never touches
    /// the database (a `tool_calls`-only worker running `test_echo`) never needs one.
    pub db: PgPool,
    /// The fleet-wide leased semaphores that bound provider calls.
    pub semaphores: Semaphores,
    /// Moonshot, GLM and Supabase Storage clients.
    pub providers: Providers,
    /// The staging store of upload bytes.
    pub staging: Staging,
    /// Publishes job events (progress, streamed chunks) for whoever waits on a job.
    pub events: EventPublisher,
    /// The `storage_push` queue, for enqueueing pushes after uploads.
    pub storage_queue: Queue,
    /// The backoff of `storage_push` retries, to predict whether a retry would land past the
    /// time budget.
    pub storage_backoff: Backoff,
    /// This process's worker id, recorded as the holder of its semaphore leases.
    pub worker_id: String,
    /// The Redis connection (for what handlers record besides job results: cleanup reports).
    pub redis: RedisHandle,
    /// The deployment's key layout.
    pub keys: Keys,
    /// The process's metrics (semaphore waits, lost leases, storage pushes, cleanup).
    pub metrics: WorkerMetrics,
}

impl AppState {
    /// Builds the state: a lazy Postgres pool, the semaphores (subscribed to release
    /// wake-ups through the process's `subscriber`), the provider clients and the queue handles.
    pub async fn build(
        config: &Config,
        conn: RedisHandle,
        subscriber: &Subscriber,
        keys: Keys,
        worker_id: &str,
        storage_policy: QueuePolicy,
        metrics: WorkerMetrics,
    ) -> anyhow::Result<Self> {
        let db = db::connect_lazy(&config.database).context("DATABASE_URL")?;
        let semaphores =
            Semaphores::new(conn.clone(), subscriber, keys.clone(), &config.semaphores)
                .await
                .context("set up the semaphores")?;
        let providers = Providers::from_config(config).context("build the HTTP clients")?;
        Ok(Self {
            config: config.clone(),
            db,
            semaphores,
            providers,
            staging: Staging::from_config(&config.uploads),
            events: EventPublisher::new(conn.clone(), keys.clone()),
            storage_backoff: storage_policy.backoff,
            storage_queue: Queue::new(conn.clone(), &keys, queue::STORAGE_PUSH, storage_policy),
            worker_id: worker_id.to_owned(),
            redis: conn,
            keys,
            metrics,
        })
    }

    /// Publishes a progress note for `job_id`.
    pub async fn progress(&self, job_id: &str, state: &str, message: impl Into<String>) {
        let event = JobEvent::Progress {
            message: message.into(),
            state: state.to_owned(),
        };
        self.events.publish(job_id, &event).await;
    }
}

/// The queue policy of `storage_push`: the jobs' policy with the configured retry backoff
/// (`EXAI_STORAGE_RETRY_BASE_MS`, doubling, capped at 300 s, with jitter).
pub fn storage_policy(config: &Config) -> QueuePolicy {
    let mut policy = QueuePolicy::from_config(&config.jobs);
    policy.max_attempts = config.supabase.retry_max_attempts;
    policy.backoff.min = config.supabase.retry_base;
    policy.backoff.max = policy.backoff.max.max(config.supabase.retry_base);
    policy
}

/// How long a job that found no permit waits before it runs again (its attempt is not counted).
pub const PUT_BACK_AFTER: Duration = Duration::from_secs(1);
