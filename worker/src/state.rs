//! [`AppState`]: what every handler can reach, built once per worker process.

use anyhow::Context;
use exai_shared::Config;
use exai_shared::budget::Budgets;
use exai_shared::db::{self, PgPool};
use exai_shared::events::{EventPublisher, JobEvent};
use exai_shared::keys::Keys;
use exai_shared::providers::Providers;
use exai_shared::redis::RedisHandle;
use exai_shared::semaphore::Semaphores;
use exai_shared::staging::Staging;
use exai_shared::subscriber::Subscriber;
use exai_shared::usage::UsageLedger;

use exai_shared::upstream::SentMarks;

use crate::metrics::WorkerMetrics;
use crate::storage::policy::{PushQueue, StoragePushPolicy};
use crate::upstream::Upstreams;

/// What every handler can reach. Shared by all jobs of the process behind one `Arc`; every field
/// is a cheap handle (pools, clients), so nothing here is locked while a job runs.
#[derive(Debug)]
pub struct AppState {
    /// The process's configuration.
    pub config: Config,
    /// Postgres (`provider_file_uploads`); connected lazily, so a process that never touches
    /// the database (a `tool_calls`-only worker running `test_echo`) never needs one.
    pub db: PgPool,
    /// The storage pushes' row writes (an attempt counted, a push completed), group-committed
    /// over `db`: concurrent pushes of this process share one commit per kind of write.
    pub push_writes: db::PushWrites,
    /// The fleet-wide leased semaphores that bound provider calls.
    pub semaphores: Semaphores,
    /// The providers' rate budgets (requests and tokens per minute and day).
    pub budgets: Budgets,
    /// Moonshot, GLM and Supabase Storage clients.
    pub providers: Providers,
    /// The staging store of upload bytes.
    pub staging: Staging,
    /// Publishes job events (progress, streamed chunks) for whoever waits on a job.
    pub events: EventPublisher,
    /// The `storage_push` queue and its retry policy: where uploads enqueue their pushes, and
    /// what a push attempt checks to know whether it is the last.
    pub storage_push: PushQueue,
    /// This process's worker id, recorded as the holder of its semaphore leases.
    pub worker_id: String,
    /// The Redis connection (for what handlers record besides job results: cleanup reports).
    pub redis: RedisHandle,
    /// The deployment's key layout.
    pub keys: Keys,
    /// The process's metrics (semaphore waits, lost leases, storage pushes, cleanup).
    pub metrics: WorkerMetrics,
    /// The upstream MCP servers of `EXAI_MCP_SERVERS` (connected once [`Upstreams::spawn`] ran).
    pub upstreams: Upstreams,
    /// The sent marks of upstream MCP calls.
    pub sent: SentMarks,
    /// The token sums per session, tool and model (cost accounting).
    pub usage: UsageLedger,
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
        storage_policy: StoragePushPolicy,
        metrics: WorkerMetrics,
    ) -> anyhow::Result<Self> {
        let db = db::connect_lazy(&config.database).context("DATABASE_URL")?;
        let push_writes = db::PushWrites::spawn(db.clone());
        let semaphores =
            Semaphores::new(conn.clone(), subscriber, keys.clone(), &config.semaphores)
                .await
                .context("set up the semaphores")?;
        let providers = Providers::from_config(config).context("build the HTTP clients")?;
        Ok(Self {
            config: config.clone(),
            db,
            push_writes,
            semaphores,
            budgets: Budgets::new(
                conn.clone(),
                keys.clone(),
                config.semaphores.budgets.clone(),
                config.semaphores.lease,
            ),
            providers,
            staging: Staging::from_config(&config.uploads),
            events: EventPublisher::new(conn.clone(), keys.clone()),
            storage_push: PushQueue::new(conn.clone(), &keys, storage_policy),
            worker_id: worker_id.to_owned(),
            upstreams: Upstreams::new(
                &config.worker.mcp_servers,
                EventPublisher::new(conn.clone(), keys.clone()),
            ),
            sent: SentMarks::new(conn.clone(), keys.clone()),
            usage: UsageLedger::new(conn.clone(), keys.clone(), config.usage.retention),
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
