//! [`Cleanup`]: what a cleanup run reaches (the rows, the providers, the staging store, the
//! queues whose unfinished jobs keep their blobs, Redis for the reports), and
//! [`CleanupSettings`], the limits it applies.

use std::time::Duration;

use anyhow::Context;
use exai_shared::Config;
use exai_shared::db::{self, PgPool};
use exai_shared::keys::Keys;
use exai_shared::providers::Providers;
use exai_shared::queue::{self, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_shared::staging::Staging;

use crate::state::AppState;

/// The limits a cleanup run applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupSettings {
    /// Nothing younger is removed (`EXAI_ORPHAN_GRACE_SECS`).
    pub grace: Duration,
    /// Files unused this long are removed (`EXAI_FILE_RETENTION_DAYS`).
    pub retention: Duration,
    /// Above this many bytes held by rows, LRU files are evicted (`EXAI_STORAGE_QUOTA_BYTES`).
    pub quota_bytes: Option<u64>,
}

impl CleanupSettings {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            grace: config.cleanup.orphan_grace,
            retention: config.cleanup.file_retention,
            quota_bytes: config.cleanup.storage_quota_bytes,
        }
    }
}

/// What a cleanup run reaches: the rows, the providers, the staging store, the `uploads` queue
/// and Redis (for the reports). Cheap handles.
#[derive(Debug, Clone)]
pub struct Cleanup {
    /// Postgres.
    pub db: PgPool,
    /// Moonshot and Supabase Storage (`None` when not configured).
    pub providers: Providers,
    /// Whether Moonshot is configured (`KIMI_API_KEY` set); without it the sweeps that list or
    /// delete Moonshot files are skipped.
    pub moonshot_configured: bool,
    /// This machine's staging store.
    pub staging: Staging,
    /// The `uploads` queue, whose unfinished jobs keep their staged blobs.
    pub uploads_queue: Queue,
    /// The `tool_calls` queue (its calls may carry bytes the daemon staged).
    pub tool_calls_queue: Queue,
    /// Redis, where reports are stored.
    pub redis: RedisHandle,
    /// The key layout.
    pub keys: Keys,
    /// The limits.
    pub settings: CleanupSettings,
}

impl Cleanup {
    /// Connects what a run needs (Postgres, Redis) from the configuration; for the CLI.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let db = db::connect(&config.database)
            .await
            .context("connect to Postgres (DATABASE_URL)")?;
        let redis = RedisHandle::connect(&config.redis)
            .await
            .context("connect to Redis")?;
        Ok(Self::with(
            config,
            db,
            Providers::from_config(config).context("build the HTTP clients")?,
            Staging::from_config(&config.uploads),
            redis,
            Keys::new(&config.redis.prefix),
        ))
    }

    /// The handles of a worker process.
    pub fn from_state(state: &AppState) -> Self {
        Self::with(
            &state.config,
            state.db.clone(),
            state.providers.clone(),
            state.staging.clone(),
            state.redis.clone(),
            state.keys.clone(),
        )
    }

    /// A run over these handles, with the queues and limits of `config`.
    fn with(
        config: &Config,
        db: PgPool,
        providers: Providers,
        staging: Staging,
        redis: RedisHandle,
        keys: Keys,
    ) -> Self {
        let queue_named = |name| {
            Queue::new(
                redis.clone(),
                &keys,
                name,
                QueuePolicy::from_config(&config.jobs),
            )
        };
        Self {
            db,
            providers,
            moonshot_configured: config.kimi.api_key.is_some(),
            staging,
            uploads_queue: queue_named(queue::UPLOADS),
            tool_calls_queue: queue_named(queue::TOOL_CALLS),
            settings: CleanupSettings::from_config(config),
            redis,
            keys,
        }
    }
}
