//! The state every connection and HTTP handler shares ([`App`]), built once per process: the
//! configuration, the Redis handle and queues, the relay, the metrics, the connection and session
//! counters, the staging store, and the token checks (constant-time compares of SHA-256 digests):
//! the client token for the hello, the admin token for the admin API. Also the wall-clock helpers the replies stamp.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use exai_shared::Config;
use exai_shared::events::EventPublisher;
use exai_shared::keys::Keys;
use exai_shared::queue::{self, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_shared::semaphore::Semaphores;
use exai_shared::staging::Staging;
use exai_shared::subscriber::Subscriber;
use exai_shared::worker_registry::WorkerRegistry;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::error::DaemonError;
use crate::limits::{ConnectionLimiter, DaemonLimits};
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::session::Sessions;

/// What every connection and HTTP handler shares; built once per process.
pub struct App {
    /// The process configuration.
    pub(crate) config: Config,
    /// The daemon's own limits.
    pub(crate) limits: DaemonLimits,
    /// The shared multiplexed Redis connection (never used for blocking commands).
    pub(crate) redis: RedisHandle,
    /// The `tool_calls` queue, where every call is enqueued.
    pub(crate) tool_calls: Queue,
    /// Every queue, for `health` and `queue_stats`.
    pub(crate) queues: Vec<Queue>,
    /// Read-only use: `inspect` for `health` and `queue_stats`. The daemon never acquires.
    pub(crate) semaphores: Semaphores,
    /// The live worker processes, for `health` and `/health`.
    pub(crate) workers: WorkerRegistry,
    /// The token sums per session, tool and model (cost accounting): read for the session token
    /// budget and the admin API.
    pub(crate) usage: exai_shared::usage::UsageLedger,
    /// The shared job-event subscription.
    pub(crate) relay: Relay,
    /// The tools of the upstream MCP servers, as the workers published them.
    pub(crate) upstream: exai_shared::upstream::Catalogue,
    /// Publishes `Finished` for jobs the daemon cancels while they wait, so every waiter
    /// (in this daemon or another) hears of it at once.
    pub(crate) events: EventPublisher,
    /// The Prometheus metrics.
    pub(crate) metrics: Metrics,
    /// Open connections, in total and per IP.
    pub(crate) connections: ConnectionLimiter,
    /// Sessions with an open connection.
    pub(crate) sessions: Sessions,
    /// The Postgres pool for the admin API's storage view; `None` when `DATABASE_URL` is not
    /// set for the daemon (the daemon needs no database for anything else). Lazy: the first
    /// query opens the first connection.
    pub(crate) db: Option<exai_shared::db::PgPool>,
    /// SHA-256 of `EXAI_WS_TOKEN`, compared in constant time with the digest of the token a
    /// client sends (digests hide the length too); `None` when auth is off (loopback only).
    pub(crate) token_digest: Option<[u8; 32]>,
    /// SHA-256 of `EXAI_ADMIN_TOKEN`, the admin API's token; `None` keeps the admin API closed.
    pub(crate) admin_token_digest: Option<[u8; 32]>,
    /// Fires on shutdown; every connection watches it.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for the 1001 closes to go out.
    pub(crate) tasks: TaskTracker,
    /// When the daemon started.
    pub(crate) started: Instant,
    /// The staging store (`EXAI_STAGING_DIR`), where `kimi_upload_bytes` content is written
    /// before its job is enqueued.
    pub(crate) staging: Staging,
    /// The TLS acceptor when `EXAI_WS_TLS_CERT`/`EXAI_WS_TLS_KEY` are set (else plain ws).
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a token.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl App {
    /// Connects to Redis and sets up the shared parts. When `DATABASE_URL` was set (in the
    /// environment or `.env`), a lazy Postgres pool is built for the admin API's storage view;
    /// an unusable URL is an error now, an unreachable server only fails that view.
    pub async fn connect(
        config: Config,
        limits: DaemonLimits,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, DaemonError> {
        let tls = config
            .ws
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()?;
        let redis = RedisHandle::connect(&config.redis)
            .await
            .map_err(DaemonError::Redis)?;
        let keys = Keys::new(config.redis.prefix.clone());
        let policy = QueuePolicy::from_config(&config.jobs);
        let queues: Vec<Queue> = queue::ALL_QUEUES
            .iter()
            .map(|name| Queue::new(redis.clone(), &keys, name, policy.clone()))
            .collect();
        let tool_calls = Queue::new(redis.clone(), &keys, queue::TOOL_CALLS, policy);
        let pubsub = RedisHandle::pubsub_client(&config.redis).map_err(DaemonError::Redis)?;
        let subscriber = Subscriber::connect(pubsub)
            .await
            .map_err(DaemonError::Redis)?;
        let relay = Relay::new(subscriber.clone(), keys.clone());
        let semaphores =
            Semaphores::new(redis.clone(), &subscriber, keys.clone(), &config.semaphores)
                .await
                .map_err(DaemonError::Semaphores)?;
        let token_digest = config.ws.token.as_ref().map(|t| digest(t.expose_secret()));
        let admin_token_digest = config
            .ws
            .admin_token
            .as_ref()
            .map(|t| digest(t.expose_secret()));
        let db = config
            .ws
            .database_url_set
            .then(|| exai_shared::db::connect_lazy(&config.database))
            .transpose()
            .map_err(DaemonError::Database)?;
        let staging = Staging::from_config(&config.uploads);
        Ok(Arc::new(Self {
            connections: ConnectionLimiter::new(
                limits.max_connections,
                limits.max_connections_per_ip,
                limits.max_pending_hello_per_ip,
            ),
            workers: WorkerRegistry::new(redis.clone(), &keys),
            usage: exai_shared::usage::UsageLedger::new(
                redis.clone(),
                keys.clone(),
                config.usage.retention,
            ),
            upstream: exai_shared::upstream::Catalogue::new(redis.clone(), keys.clone()),
            events: EventPublisher::new(redis.clone(), keys),
            config,
            limits,
            redis,
            tool_calls,
            queues,
            semaphores,
            relay,
            metrics: Metrics::new(),
            sessions: Sessions::default(),
            db,
            token_digest,
            admin_token_digest,
            shutdown,
            tasks: TaskTracker::new(),
            started: Instant::now(),
            staging,
            tls,
        }))
    }

    /// Whether `given` is the configured token, compared in constant time on the SHA-256
    /// digests (which hide the length too). Always `true` when auth is off (no token
    /// configured, loopback only).
    pub(crate) fn token_matches(&self, given: &str) -> bool {
        match &self.token_digest {
            Some(expected) => bool::from(expected.ct_eq(&digest(given))),
            None => true,
        }
    }

    /// Whether `given` is the admin token (`EXAI_ADMIN_TOKEN`), compared the same way. Always
    /// `false` when no admin token is configured: the admin API is then closed. The client
    /// token never matches (the configuration refuses an admin token equal to it).
    pub(crate) fn admin_token_matches(&self, given: &str) -> bool {
        self.admin_token_digest
            .as_ref()
            .is_some_and(|expected| bool::from(expected.ct_eq(&digest(given))))
    }
}

/// Unix time in seconds, as a float.
pub(crate) fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Unix time in milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
