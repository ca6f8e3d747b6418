//! Typed configuration, read once from the environment at start-up.
//!
//! Every variable has one name (kept from the original daemon where one existed), one default and
//! one parser. [`Config::from_env`] loads an optional `.env` first; [`Config::from_vars`] takes any
//! set of pairs, so tests never touch the process environment. A value that does not parse is a
//! [`ConfigError`] naming the variable — never a silent fallback (the original daemon silently
//! disabled auth for a short token).
//!
//! The original daemon's settings under other names (`MAX_CONNECTIONS`, `LOG_LEVEL`,
//! `REDIS_PASSWORD`, …) are resolved first, in [`legacy`]: converted and used when the new name
//! is not set, each one reported as a [`LegacyNotice`] for the process to log at start-up.
//! [`Config::settings`] lists the effective value of every variable, secrets redacted.

mod effective;
mod legacy;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub use effective::Setting;
pub use legacy::LegacyNotice;

/// The minimum length of `EXAI_WS_TOKEN` when it is set.
pub const MIN_TOKEN_LEN: usize = 16;

/// `REDIS_URL` when it is not set.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The host name of the provider emulator in `docker-compose.yml` (`--profile sim`).
pub const EMULATOR_HOST: &str = "exai-sim";

/// The key the provider emulator accepts in `docker-compose.yml` (`--profile sim`).
pub const EMULATOR_KEY: &str = "sim-key";

/// A configuration value that could not be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

impl ConfigError {
    fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for terminals.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "human" | "pretty" | "text" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!("expected `human` or `json`, got `{other}`")),
        }
    }
}

/// The whole configuration of one process.
#[derive(Debug, Clone)]
pub struct Config {
    /// WebSocket daemon settings.
    pub ws: WsConfig,
    /// Redis connection and key layout.
    pub redis: RedisConfig,
    /// Fleet-wide semaphore limits, lease and wait settings.
    pub semaphores: SemaphoreConfig,
    /// Job queue settings.
    pub jobs: JobConfig,
    /// Moonshot (Kimi) provider.
    pub kimi: ProviderConfig,
    /// GLM provider.
    pub glm: ProviderConfig,
    /// Supabase Storage.
    pub supabase: SupabaseConfig,
    /// Postgres.
    pub database: DatabaseConfig,
    /// Upload staging and allowed roots.
    pub uploads: UploadConfig,
    /// Orphan cleanup.
    pub cleanup: CleanupConfig,
    /// Worker process settings.
    pub worker: WorkerConfig,
    /// Timeouts of the provider HTTP clients (Moonshot, GLM).
    pub provider_timeouts: ProviderTimeouts,
    /// `EXAI_REQUIRE_REAL_PROVIDERS` (false): when true, start-up fails unless Moonshot (and
    /// Supabase Storage, when uploads are pushed there) are configured and none of them is the
    /// emulator (host [`EMULATOR_HOST`] or key [`EMULATOR_KEY`]).
    pub require_real_providers: bool,
    /// `EXAI_LOG_FORMAT` (`human`).
    pub log_format: LogFormat,
    /// `RUST_LOG` (`info`): the log filter (`tracing` `EnvFilter` syntax). The original
    /// daemon's `LOG_LEVEL` stands in for it when it is unset.
    pub log_filter: String,
    /// The original daemon's settings found in the environment and what became of each; the
    /// processes log them as warnings at start-up ([`Config::log_legacy_notices`]).
    pub legacy: Vec<LegacyNotice>,
}

/// Settings of the WebSocket daemon.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// `EXAI_WS_HOST` (127.0.0.1).
    pub host: IpAddr,
    /// `EXAI_WS_PORT` (8079).
    pub port: u16,
    /// `EXAI_WS_TOKEN`: at least [`MIN_TOKEN_LEN`] characters when set; required off loopback.
    pub token: Option<SecretString>,
    /// `EXAI_WS_MAX_BYTES` (32 MiB): the inbound frame limit.
    pub max_bytes: usize,
    /// `EXAI_WS_PING_INTERVAL` seconds (30).
    pub ping_interval: Duration,
    /// `EXAI_WS_PROGRESS_INTERVAL_SECS` (5).
    pub progress_interval: Duration,
    /// The daemon's connection limits and timeouts.
    pub limits: WsLimits,
    /// Whether `DATABASE_URL` was set (not left to its default): only then does the daemon open
    /// a (lazy) Postgres pool, for the admin API's storage view.
    pub database_url_set: bool,
}

/// The daemon's limits and timeouts. Every limit says what happens when it is hit.
#[derive(Debug, Clone, PartialEq)]
pub struct WsLimits {
    /// `EXAI_WS_MAX_CONNECTIONS` (1000; the original daemon's `MAX_CONNECTIONS`): open WebSocket
    /// connections in total. One more is closed at once with 1008.
    pub max_connections: usize,
    /// `EXAI_WS_MAX_CONNECTIONS_PER_IP` (10; the original's `MAX_CONNECTIONS_PER_IP`): open
    /// WebSocket connections from one IP address. One more is closed at once with 1008.
    pub max_connections_per_ip: usize,
    /// `EXAI_WS_SESSION_MAX_INFLIGHT` (100): calls of one session (over all its connections)
    /// whose result the daemon is still waiting for. One more is answered with
    /// `OVER_CAPACITY` and not enqueued.
    pub max_inflight_per_session: usize,
    /// `EXAI_WS_HELLO_TIMEOUT` seconds (15): how long a new connection may take to say hello
    /// before it is closed with 4002.
    pub hello_timeout: Duration,
    /// `EXAI_WS_IDLE_TIMEOUT_SECS` (3600; the original's `SESSION_TIMEOUT_SECS`): a connection
    /// that sends no request and has no call in flight for this long is closed with 1000.
    pub idle_timeout: Duration,
    /// `EXAI_WS_PING_TIMEOUT` seconds (10): a client that sends nothing at all (not even the
    /// pong to the daemon's ping) for `EXAI_WS_PING_INTERVAL` plus this long is closed with 1011.
    pub ping_timeout: Duration,
    /// `EXAI_WS_CALL_TIMEOUT_SECS` (300; the original's `WORKFLOW_TOOL_TIMEOUT_SECS`): a call's
    /// deadline, from its enqueue. A call still not finished then is cancelled and answered
    /// with `TIMEOUT`.
    pub call_timeout: Duration,
    /// `EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS` (55): how long a single-frame client (the stdio shim,
    /// which gives up after 60 s and then reads the late reply as the answer to its next
    /// request) is kept waiting. Then it gets one `TIMEOUT` frame naming the job id, and the
    /// job goes on; `get_result` with the job id fetches it later.
    pub single_frame_timeout: Duration,
    /// `EXAI_WS_SHUTDOWN_GRACE_SECS` (5): how long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_connections_per_ip: 10,
            max_inflight_per_session: 100,
            hello_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(3600),
            ping_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(300),
            single_frame_timeout: Duration::from_secs(55),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Timeouts of the provider HTTP clients. A request that hits one fails with a transient
/// provider error, so its job is retried with backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProviderTimeouts {
    /// `EXAI_PROVIDER_CONNECT_TIMEOUT_SECS` (10): establishing a connection.
    pub connect: Duration,
    /// `EXAI_PROVIDER_READ_TIMEOUT_SECS` (300): the longest pause between two reads of a
    /// response; a stalled stream (a streamed chat included) fails after it.
    pub read: Duration,
    /// `EXAI_PROVIDER_REQUEST_TIMEOUT_SECS` (60): a whole small JSON call to Moonshot's files
    /// API (list, get, delete).
    pub request: Duration,
    /// `KIMI_FILES_FETCH_TIMEOUT_SECS` (120; the original daemon's name): a whole read of a
    /// file's extracted text (`/files/{id}/content`).
    pub file_content: Duration,
    /// `KIMI_FILES_UPLOAD_TIMEOUT_SECS` (120; the original daemon's name, where it was read but
    /// unused): the fixed part of a whole upload's timeout, see [`Self::upload`].
    pub upload_base: Duration,
    /// `KIMI_FILES_UPLOAD_MIN_BYTES_PER_SEC` (262144, 256 KiB/s): the slowest transfer an upload
    /// is allowed on top of its fixed part, see [`Self::upload`].
    pub upload_min_bytes_per_sec: u64,
    /// `KIMI_TIMEOUT_SECS` (600; the original daemon's name, whose default was 40): a whole
    /// non-streamed Moonshot chat completion. Streamed ones are bounded by [`Self::read`]
    /// between chunks instead.
    pub kimi_chat: Duration,
    /// `GLM_TIMEOUT_SECS` (600; the original daemon's name, whose default was 30): the same for
    /// GLM.
    pub glm_chat: Duration,
}

impl Default for ProviderTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(300),
            request: Duration::from_secs(60),
            file_content: Duration::from_secs(120),
            upload_base: Duration::from_secs(120),
            upload_min_bytes_per_sec: 256 * 1024,
            kimi_chat: Duration::from_secs(600),
            glm_chat: Duration::from_secs(600),
        }
    }
}

impl ProviderTimeouts {
    /// The whole-request timeout of uploading `size` bytes: the fixed part plus one second per
    /// [`upload_min_bytes_per_sec`](Self::upload_min_bytes_per_sec) bytes. With the defaults, a
    /// 100 MB file gets about nine minutes before it is called stuck.
    pub fn upload(&self, size: u64) -> Duration {
        self.upload_base + Duration::from_secs(size / self.upload_min_bytes_per_sec.max(1))
    }
}

/// Where Redis is and how keys are named.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_URL` (redis://127.0.0.1:6379), used unless cluster seeds are given. May hold a password.
    pub url: SecretString,
    /// `REDIS_CLUSTER_NODES`: comma-separated `redis://host:port` seeds; switches to cluster mode.
    pub cluster_nodes: Vec<SecretString>,
    /// `EXAI_REDIS_PREFIX` (`exai`): every key of this deployment starts with it.
    pub prefix: String,
}

/// Limits and timing of the leased semaphores.
#[derive(Debug, Clone)]
pub struct SemaphoreConfig {
    /// `EXAI_WS_GLOBAL_MAX_INFLIGHT` (24): permits of the `global` semaphore.
    pub global_limit: u32,
    /// `EXAI_WS_KIMI_MAX_INFLIGHT` (6): permits of the `kimi` semaphore.
    pub kimi_limit: u32,
    /// `EXAI_WS_GLM_MAX_INFLIGHT` (4): permits of the `glm` semaphore.
    pub glm_limit: u32,
    /// `EXAI_SEMAPHORE_LEASE_MS` (30000): lease TTL; a crashed holder's permit is free after it.
    pub lease: Duration,
    /// `EXAI_SEMAPHORE_TIMEOUT` seconds (10): how long a job without a provider waits for `global`.
    pub global_wait: Duration,
    /// `KIMI_SEMAPHORE_TIMEOUT` seconds (10): how long a Kimi job waits before it is put back.
    pub kimi_wait: Duration,
    /// `GLM_SEMAPHORE_TIMEOUT` seconds (10): how long a GLM job waits before it is put back.
    pub glm_wait: Duration,
}

impl SemaphoreConfig {
    /// The configured default limit of each named semaphore.
    pub fn default_limits(&self) -> Vec<(String, u32)> {
        vec![
            ("global".to_owned(), self.global_limit),
            ("kimi".to_owned(), self.kimi_limit),
            ("glm".to_owned(), self.glm_limit),
        ]
    }

    /// How long a job for `provider` (`None` for no provider) may wait for its permits.
    pub fn wait_for(&self, provider: Option<&str>) -> Duration {
        match provider {
            Some("kimi") => self.kimi_wait,
            Some("glm") => self.glm_wait,
            _ => self.global_wait,
        }
    }
}

/// Job queue settings.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// `EXAI_JOB_LEASE_MS` (30000): how long a fetched job is ours without a heartbeat.
    pub lease: Duration,
    /// `EXAI_RESULT_TTL_SECS` (3600): how long results and completed jobs are kept.
    pub result_ttl: Duration,
    /// `EXAI_AUTO_MIGRATE` (true): `exai-worker run` applies pending migrations at start.
    pub auto_migrate: bool,
}

/// Settings of `exai-worker run`.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `EXAI_WORKER_METRICS_ADDR` (unset: off): where `exai-worker run` serves Prometheus
    /// metrics on `/metrics`, e.g. `127.0.0.1:9464`.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// An HTTP provider (Moonshot or GLM).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// `*_API_KEY`.
    pub api_key: Option<SecretString>,
    /// `*_API_URL`, the OpenAI-compatible base URL ending in the API version.
    pub api_url: String,
}

/// Supabase Storage settings.
#[derive(Debug, Clone)]
pub struct SupabaseConfig {
    /// `SUPABASE_URL`: the project URL (Storage lives under `/storage/v1`).
    pub url: Option<String>,
    /// `SUPABASE_SERVICE_ROLE_KEY`.
    pub service_role_key: Option<SecretString>,
    /// `SUPABASE_BUCKET` (`user-files`).
    pub bucket: String,
    /// `KIMI_UPLOAD_TO_SUPABASE` (true): push uploaded bytes to Storage.
    pub upload_enabled: bool,
    /// `KIMI_SUPABASE_TIMEOUT` seconds (30): per-attempt timeout of a push.
    pub timeout: Duration,
    /// `EXAI_STORAGE_RETRY_MAX_ATTEMPTS` (8): push attempts before `storage_failed`.
    pub retry_max_attempts: u32,
    /// `EXAI_STORAGE_RETRY_MAX_SECS` (3600): total time budget of a push before `storage_failed`.
    pub retry_max: Duration,
    /// `EXAI_STORAGE_RETRY_BASE_MS` (1000): the backoff after the first failed push attempt;
    /// it doubles per attempt (capped at 300 s) plus up to 100 % jitter.
    pub retry_base: Duration,
}

/// Postgres settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL` (postgres://postgres@127.0.0.1:5432/exai).
    pub url: SecretString,
}

/// Upload staging and allowed roots.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// `EXAI_UPLOAD_ROOTS`: directories (`:` or `,` separated) whose files may be uploaded by path.
    pub roots: Vec<PathBuf>,
    /// `EXAI_STAGING_DIR` (`./data/staging`): the content-addressed staging store.
    pub staging_dir: PathBuf,
    /// `EXAI_MAX_UPLOAD_BYTES` (104857600, Moonshot's 100 MB per file): larger files are refused
    /// before a byte is read.
    pub max_bytes: u64,
    /// `EXAI_DOWNLOAD_MAX_BYTES` (10485760): the largest file `kimi_download_file` returns
    /// inline (base64 in its JSON result); larger ones are refused with a clear error.
    pub download_max_bytes: u64,
}

/// Orphan cleanup settings.
#[derive(Debug, Clone)]
pub struct CleanupConfig {
    /// `EXAI_CLEANUP_CRON` (`0 0 * * * *`, hourly; seconds field first).
    pub cron: String,
    /// `EXAI_ORPHAN_GRACE_SECS` (86400): nothing younger is ever removed.
    pub orphan_grace: Duration,
    /// `EXAI_FILE_RETENTION_DAYS` (30): a file unused for this long is removed (Moonshot,
    /// Supabase Storage) and its row marked `deleted`.
    pub file_retention: Duration,
    /// `EXAI_STORAGE_QUOTA_BYTES` (unset: no quota): above it, least-recently-used completed
    /// files are removed until under.
    pub storage_quota_bytes: Option<u64>,
}

impl Config {
    /// Reads `.env` (when present, without overriding the environment), then the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is worth a clear error.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(ConfigError::new("DOTENV", e.to_string())),
        }
        Self::from_vars(std::env::vars())
    }

    /// Builds the configuration from `(name, value)` pairs; names not given take their default.
    /// The original daemon's names are resolved first (see [`legacy`]).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let resolved = legacy::resolve(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )?;
        let mut config = Self::read(&Vars::new(&resolved.vars)).map_err(|e| resolved.explain(e))?;
        config.legacy = resolved.notices;
        config.check_token_off_loopback()?;
        config.check_real_providers()?;
        Ok(config)
    }

    /// Logs each of the original daemon's settings found in the environment as a warning: which
    /// old variable, which new name, and how its value was converted (or why it was ignored).
    /// Call once tracing is up.
    pub fn log_legacy_notices(&self) {
        for notice in &self.legacy {
            tracing::warn!(
                legacy = notice.legacy,
                new = notice.new.unwrap_or("-"),
                "{notice}"
            );
        }
    }

    /// Reads every variable (the old names already resolved).
    fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let token = v.secret("EXAI_WS_TOKEN");
        if let Some(t) = &token {
            let len = t.expose_secret().chars().count();
            if len < MIN_TOKEN_LEN {
                return Err(ConfigError::new(
                    "EXAI_WS_TOKEN",
                    format!("must be at least {MIN_TOKEN_LEN} characters when set (got {len})"),
                ));
            }
        }

        let prefix = v.string("EXAI_REDIS_PREFIX", "exai");
        if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
            return Err(ConfigError::new(
                "EXAI_REDIS_PREFIX",
                "must be non-empty and contain no braces or spaces",
            ));
        }

        let cluster_nodes = v
            .get("REDIS_CLUSTER_NODES")
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        if s.starts_with("redis://") || s.starts_with("rediss://") {
                            Ok(SecretString::from(s.to_owned()))
                        } else {
                            Err(ConfigError::new(
                                "REDIS_CLUSTER_NODES",
                                format!("`{s}` is not a redis:// URL"),
                            ))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();

        let redis_url = v.string("REDIS_URL", DEFAULT_REDIS_URL);
        if !(redis_url.starts_with("redis://")
            || redis_url.starts_with("rediss://")
            || redis_url.starts_with("unix://"))
        {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must start with redis://, rediss:// or unix://",
            ));
        }

        let semaphores = SemaphoreConfig {
            global_limit: v.positive("EXAI_WS_GLOBAL_MAX_INFLIGHT", 24)?,
            kimi_limit: v.positive("EXAI_WS_KIMI_MAX_INFLIGHT", 6)?,
            glm_limit: v.positive("EXAI_WS_GLM_MAX_INFLIGHT", 4)?,
            lease: v.millis("EXAI_SEMAPHORE_LEASE_MS", 30_000)?,
            global_wait: v.seconds("EXAI_SEMAPHORE_TIMEOUT", 10.0)?,
            kimi_wait: v.seconds("KIMI_SEMAPHORE_TIMEOUT", 10.0)?,
            glm_wait: v.seconds("GLM_SEMAPHORE_TIMEOUT", 10.0)?,
        };

        Ok(Self {
            ws: WsConfig {
                host: v.parse("EXAI_WS_HOST", "127.0.0.1".parse().expect("literal ip"))?,
                port: v.parse("EXAI_WS_PORT", 8079)?,
                token,
                max_bytes: v.positive("EXAI_WS_MAX_BYTES", 32 * 1024 * 1024)?,
                ping_interval: v.seconds("EXAI_WS_PING_INTERVAL", 30.0)?,
                progress_interval: v.seconds("EXAI_WS_PROGRESS_INTERVAL_SECS", 5.0)?,
                limits: {
                    let d = WsLimits::default();
                    WsLimits {
                        max_connections: v
                            .positive("EXAI_WS_MAX_CONNECTIONS", d.max_connections)?,
                        max_connections_per_ip: v
                            .positive("EXAI_WS_MAX_CONNECTIONS_PER_IP", d.max_connections_per_ip)?,
                        max_inflight_per_session: v
                            .positive("EXAI_WS_SESSION_MAX_INFLIGHT", d.max_inflight_per_session)?,
                        hello_timeout: v
                            .positive_seconds("EXAI_WS_HELLO_TIMEOUT", d.hello_timeout)?,
                        idle_timeout: v
                            .positive_seconds("EXAI_WS_IDLE_TIMEOUT_SECS", d.idle_timeout)?,
                        ping_timeout: v.positive_seconds("EXAI_WS_PING_TIMEOUT", d.ping_timeout)?,
                        call_timeout: v
                            .positive_seconds("EXAI_WS_CALL_TIMEOUT_SECS", d.call_timeout)?,
                        single_frame_timeout: v.positive_seconds(
                            "EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS",
                            d.single_frame_timeout,
                        )?,
                        shutdown_grace: v
                            .positive_seconds("EXAI_WS_SHUTDOWN_GRACE_SECS", d.shutdown_grace)?,
                    }
                },
                database_url_set: v.get("DATABASE_URL").is_some(),
            },
            redis: RedisConfig {
                url: SecretString::from(redis_url),
                cluster_nodes,
                prefix,
            },
            semaphores,
            jobs: JobConfig {
                lease: v.millis("EXAI_JOB_LEASE_MS", 30_000)?,
                result_ttl: Duration::from_secs(v.positive("EXAI_RESULT_TTL_SECS", 3600)?),
                auto_migrate: v.parse("EXAI_AUTO_MIGRATE", Bool(true))?.0,
            },
            kimi: ProviderConfig {
                api_key: v.secret("KIMI_API_KEY"),
                api_url: v.url("KIMI_API_URL", "https://api.moonshot.ai/v1")?,
            },
            glm: ProviderConfig {
                api_key: v.secret("GLM_API_KEY"),
                api_url: v.url("GLM_API_URL", "https://api.z.ai/api/paas/v4")?,
            },
            supabase: SupabaseConfig {
                url: v
                    .get("SUPABASE_URL")
                    .map(|_| v.url("SUPABASE_URL", ""))
                    .transpose()?,
                service_role_key: v.secret("SUPABASE_SERVICE_ROLE_KEY"),
                bucket: v.string("SUPABASE_BUCKET", "user-files"),
                upload_enabled: v.parse("KIMI_UPLOAD_TO_SUPABASE", Bool(true))?.0,
                timeout: v.seconds("KIMI_SUPABASE_TIMEOUT", 30.0)?,
                retry_max_attempts: v.positive("EXAI_STORAGE_RETRY_MAX_ATTEMPTS", 8)?,
                retry_max: Duration::from_secs(v.positive("EXAI_STORAGE_RETRY_MAX_SECS", 3600)?),
                retry_base: v.millis("EXAI_STORAGE_RETRY_BASE_MS", 1000)?,
            },
            database: DatabaseConfig {
                url: SecretString::from(
                    v.string("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/exai"),
                ),
            },
            uploads: UploadConfig {
                roots: v
                    .get("EXAI_UPLOAD_ROOTS")
                    .map(|s| {
                        s.split([':', ','])
                            .filter(|p| !p.trim().is_empty())
                            .map(|p| PathBuf::from(p.trim()))
                            .collect()
                    })
                    .unwrap_or_default(),
                staging_dir: PathBuf::from(v.string("EXAI_STAGING_DIR", "./data/staging")),
                max_bytes: v.positive("EXAI_MAX_UPLOAD_BYTES", 100 * 1024 * 1024)?,
                download_max_bytes: v.positive("EXAI_DOWNLOAD_MAX_BYTES", 10 * 1024 * 1024)?,
            },
            cleanup: CleanupConfig {
                cron: {
                    let expr = v.string("EXAI_CLEANUP_CRON", "0 0 * * * *");
                    cron::Schedule::from_str(&expr).map_err(|e| {
                        ConfigError::new("EXAI_CLEANUP_CRON", format!("`{expr}`: {e}"))
                    })?;
                    expr
                },
                orphan_grace: Duration::from_secs(v.parse("EXAI_ORPHAN_GRACE_SECS", 86_400u64)?),
                file_retention: {
                    let days: u64 = v.positive("EXAI_FILE_RETENTION_DAYS", 30)?;
                    days.checked_mul(86_400)
                        .filter(|secs| *secs <= i64::MAX as u64 / 1000)
                        .map(Duration::from_secs)
                        .ok_or_else(|| {
                            ConfigError::new(
                                "EXAI_FILE_RETENTION_DAYS",
                                format!("`{days}` is too large"),
                            )
                        })?
                },
                storage_quota_bytes: v
                    .get("EXAI_STORAGE_QUOTA_BYTES")
                    .map(|_| v.positive("EXAI_STORAGE_QUOTA_BYTES", 1u64))
                    .transpose()?,
            },
            worker: WorkerConfig {
                metrics_addr: v
                    .get("EXAI_WORKER_METRICS_ADDR")
                    .map(|raw| {
                        raw.parse().map_err(|e| {
                            ConfigError::new(
                                "EXAI_WORKER_METRICS_ADDR",
                                format!("`{raw}`: {e} (expected host:port, e.g. 127.0.0.1:9464)"),
                            )
                        })
                    })
                    .transpose()?,
            },
            provider_timeouts: {
                let d = ProviderTimeouts::default();
                ProviderTimeouts {
                    connect: v.positive_seconds("EXAI_PROVIDER_CONNECT_TIMEOUT_SECS", d.connect)?,
                    read: v.positive_seconds("EXAI_PROVIDER_READ_TIMEOUT_SECS", d.read)?,
                    request: v.positive_seconds("EXAI_PROVIDER_REQUEST_TIMEOUT_SECS", d.request)?,
                    file_content: v
                        .positive_seconds("KIMI_FILES_FETCH_TIMEOUT_SECS", d.file_content)?,
                    upload_base: v
                        .positive_seconds("KIMI_FILES_UPLOAD_TIMEOUT_SECS", d.upload_base)?,
                    upload_min_bytes_per_sec: v.positive(
                        "KIMI_FILES_UPLOAD_MIN_BYTES_PER_SEC",
                        d.upload_min_bytes_per_sec,
                    )?,
                    kimi_chat: v.positive_seconds("KIMI_TIMEOUT_SECS", d.kimi_chat)?,
                    glm_chat: v.positive_seconds("GLM_TIMEOUT_SECS", d.glm_chat)?,
                }
            },
            require_real_providers: v.parse("EXAI_REQUIRE_REAL_PROVIDERS", Bool(false))?.0,
            log_format: v.parse("EXAI_LOG_FORMAT", LogFormat::Human)?,
            log_filter: {
                let filter = v.string("RUST_LOG", "info");
                tracing_subscriber::EnvFilter::try_new(&filter)
                    .map_err(|e| ConfigError::new("RUST_LOG", format!("`{filter}`: {e}")))?;
                filter
            },
            legacy: Vec::new(),
        })
    }

    /// No token off loopback: a daemon listening on an address other machines can reach must
    /// authenticate its clients, so `EXAI_WS_TOKEN` is required unless `EXAI_WS_HOST` is a
    /// loopback address.
    fn check_token_off_loopback(&self) -> Result<(), ConfigError> {
        if self.ws_is_loopback() || self.ws.token.is_some() {
            return Ok(());
        }
        Err(ConfigError::new(
            "EXAI_WS_TOKEN",
            format!(
                "required when EXAI_WS_HOST ({}) is not a loopback address",
                self.ws.host
            ),
        ))
    }

    /// With `EXAI_REQUIRE_REAL_PROVIDERS` on: an error naming every provider variable that is
    /// missing or points at the emulator.
    fn check_real_providers(&self) -> Result<(), ConfigError> {
        if !self.require_real_providers {
            return Ok(());
        }
        let mut problems = Vec::new();
        let mut key = |var: &str, key: &Option<SecretString>, required: bool| match key {
            None if required => problems.push(format!("{var} is not set")),
            Some(k) if k.expose_secret() == EMULATOR_KEY => {
                problems.push(format!("{var} is the emulator's key ({EMULATOR_KEY})"))
            }
            _ => {}
        };
        key("KIMI_API_KEY", &self.kimi.api_key, true);
        key(
            "SUPABASE_SERVICE_ROLE_KEY",
            &self.supabase.service_role_key,
            self.supabase.upload_enabled,
        );
        key("GLM_API_KEY", &self.glm.api_key, false);
        let mut url = |var: &str, url: Option<&str>, required: bool| match url {
            None if required => problems.push(format!("{var} is not set")),
            Some(u) if is_emulator_url(u) => problems.push(format!(
                "{var} points at the emulator (host {EMULATOR_HOST})"
            )),
            _ => {}
        };
        url("KIMI_API_URL", Some(&self.kimi.api_url), true);
        url(
            "SUPABASE_URL",
            self.supabase.url.as_deref(),
            self.supabase.upload_enabled,
        );
        url("GLM_API_URL", Some(&self.glm.api_url), false);
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConfigError::new(
            "EXAI_REQUIRE_REAL_PROVIDERS",
            format!("real providers are required, but {}", problems.join("; ")),
        ))
    }

    /// Whether the daemon's listen address is loopback (auth is then optional).
    pub fn ws_is_loopback(&self) -> bool {
        self.ws.host.is_loopback()
    }
}

/// Whether `url`'s host is the provider emulator's.
fn is_emulator_url(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.eq_ignore_ascii_case(EMULATOR_HOST)))
        .unwrap_or(false)
}

/// The `(name, value)` pairs of a `.env` file, read the way the processes read `.env`
/// (`dotenvy`), without touching the process environment. An error names the file.
pub fn read_dotenv_file(path: &std::path::Path) -> Result<Vec<(String, String)>, ConfigError> {
    let bad = |e: dotenvy::Error| ConfigError::new("DOTENV", format!("{}: {e}", path.display()));
    dotenvy::from_path_iter(path)
        .map_err(bad)?
        .map(|item| item.map_err(bad))
        .collect()
}

/// A boolean that accepts the spellings operators use in `.env` files.
#[derive(Debug, Clone, Copy)]
struct Bool(bool);

impl FromStr for Bool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Bool(true)),
            "0" | "false" | "no" | "off" => Ok(Bool(false)),
            other => Err(format!("expected true or false, got `{other}`")),
        }
    }
}

/// The raw variables, with typed getters that name the variable in every error.
struct Vars<'a> {
    vars: &'a HashMap<String, String>,
    /// Every name asked for, so a test can hold [`Config::settings`] to the names read.
    read: RefCell<BTreeSet<&'static str>>,
}

impl<'a> Vars<'a> {
    fn new(vars: &'a HashMap<String, String>) -> Self {
        Self {
            vars,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    /// A set, non-empty value (an empty value counts as unset, as in the original daemon).
    fn get(&self, name: &'static str) -> Option<&'a str> {
        self.read.borrow_mut().insert(name);
        self.vars
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    fn string(&self, name: &'static str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    fn secret(&self, name: &'static str) -> Option<SecretString> {
        self.get(name).map(|s| SecretString::from(s.to_owned()))
    }

    fn parse<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| ConfigError::new(name, format!("`{raw}`: {e}"))),
        }
    }

    fn positive<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Default,
        T::Err: std::fmt::Display,
    {
        let value = self.parse(name, default)?;
        if value <= T::default() {
            return Err(ConfigError::new(name, "must be greater than zero"));
        }
        Ok(value)
    }

    fn millis(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(self.positive(name, default)?))
    }

    fn seconds(&self, name: &'static str, default: f64) -> Result<Duration, ConfigError> {
        let secs: f64 = self.parse(name, default)?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(ConfigError::new(
                name,
                "must be a non-negative number of seconds",
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// A positive number of seconds (fractions allowed, so tests can use short timeouts).
    fn positive_seconds(
        &self,
        name: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let secs: f64 = self.parse(name, default.as_secs_f64())?;
        if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
            return Err(ConfigError::new(
                name,
                "must be a positive number of seconds",
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn url(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let raw = self.string(name, default);
        if !(raw.starts_with("http://") || raw.starts_with("https://")) {
            return Err(ConfigError::new(
                name,
                format!("`{raw}` is not an http(s) URL"),
            ));
        }
        Ok(raw.trim_end_matches('/').to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (*k, *v)))
    }

    #[test]
    fn defaults_match_the_original_daemon() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.ws.port, 8079);
        assert_eq!(c.semaphores.global_limit, 24);
        assert_eq!(c.semaphores.kimi_limit, 6);
        assert_eq!(c.semaphores.glm_limit, 4);
        assert_eq!(c.redis.prefix, "exai");
        assert_eq!(c.jobs.lease, Duration::from_secs(30));
        assert_eq!(c.supabase.bucket, "user-files");
        assert_eq!(c.supabase.timeout, Duration::from_secs(30));
        assert!(c.supabase.upload_enabled);
        assert!(c.jobs.auto_migrate);
        assert!(c.ws.token.is_none());
        assert_eq!(c.uploads.max_bytes, 100 * 1024 * 1024);
        assert_eq!(c.supabase.retry_base, Duration::from_secs(1));
        assert_eq!(c.cleanup.file_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.cleanup.storage_quota_bytes, None);
        let c = cfg(&[("EXAI_STORAGE_QUOTA_BYTES", "1000")]).unwrap();
        assert_eq!(c.cleanup.storage_quota_bytes, Some(1000));
        assert!(c.worker.metrics_addr.is_none());
        let on = cfg(&[("EXAI_WORKER_METRICS_ADDR", "127.0.0.1:9464")]).unwrap();
        assert_eq!(
            on.worker.metrics_addr,
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (var, value) in [
            ("EXAI_WS_PORT", "eighty"),
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "0"),
            ("EXAI_SEMAPHORE_LEASE_MS", "-5"),
            ("KIMI_SEMAPHORE_TIMEOUT", "soon"),
            ("KIMI_UPLOAD_TO_SUPABASE", "maybe"),
            ("EXAI_WS_HOST", "not-an-ip"),
            ("KIMI_API_URL", "ftp://x"),
            ("REDIS_URL", "localhost:6379"),
            ("REDIS_CLUSTER_NODES", "redis://a:1,b:2"),
            ("EXAI_REDIS_PREFIX", "a{b}"),
            ("EXAI_LOG_FORMAT", "xml"),
            ("EXAI_CLEANUP_CRON", "every hour"),
            ("EXAI_MAX_UPLOAD_BYTES", "0"),
            ("EXAI_DOWNLOAD_MAX_BYTES", "lots"),
            ("EXAI_STORAGE_RETRY_BASE_MS", "0"),
            ("EXAI_FILE_RETENTION_DAYS", "0"),
            ("EXAI_FILE_RETENTION_DAYS", "99999999999999"),
            ("EXAI_STORAGE_QUOTA_BYTES", "0"),
            ("EXAI_STORAGE_QUOTA_BYTES", "10GB"),
            ("EXAI_WORKER_METRICS_ADDR", "localhost"),
        ] {
            let err = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn a_short_token_is_an_error_not_auth_off() {
        let err = cfg(&[("EXAI_WS_TOKEN", "short")]).unwrap_err();
        assert_eq!(err.var, "EXAI_WS_TOKEN");
        assert!(
            !err.to_string().contains("short"),
            "the token must not be echoed"
        );
        let ok = cfg(&[("EXAI_WS_TOKEN", "0123456789abcdef")]).unwrap();
        assert_eq!(ok.ws.token.unwrap().expose_secret(), "0123456789abcdef");
    }

    #[test]
    fn a_non_loopback_address_needs_a_token() {
        let err = cfg(&[("EXAI_WS_HOST", "0.0.0.0")]).unwrap_err();
        assert_eq!(err.var, "EXAI_WS_TOKEN");
        assert_eq!(
            err.to_string(),
            "invalid configuration: EXAI_WS_TOKEN: required when EXAI_WS_HOST (0.0.0.0) is not a loopback address"
        );
        cfg(&[
            ("EXAI_WS_HOST", "0.0.0.0"),
            ("EXAI_WS_TOKEN", "0123456789abcdef"),
        ])
        .unwrap();
        cfg(&[("EXAI_WS_HOST", "::1")]).unwrap();
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let c = cfg(&[
            ("EXAI_WS_TOKEN", "super-secret-token-123"),
            ("KIMI_API_KEY", "sk-kimi-secret"),
            ("SUPABASE_SERVICE_ROLE_KEY", "service-role-secret"),
            ("DATABASE_URL", "postgres://u:pg-password@h/db"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        for secret in [
            "super-secret-token-123",
            "sk-kimi-secret",
            "service-role-secret",
            "pg-password",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked into {shown}");
        }
    }

    #[test]
    fn lists_and_durations_parse() {
        let c = cfg(&[
            ("EXAI_UPLOAD_ROOTS", "/a:/b,/c"),
            ("KIMI_SEMAPHORE_TIMEOUT", "0.25"),
            (
                "REDIS_CLUSTER_NODES",
                "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
            ),
            ("KIMI_UPLOAD_TO_SUPABASE", "false"),
        ])
        .unwrap();
        assert_eq!(c.uploads.roots.len(), 3);
        assert_eq!(c.semaphores.kimi_wait, Duration::from_millis(250));
        assert_eq!(c.redis.cluster_nodes.len(), 2);
        assert!(!c.supabase.upload_enabled);
        assert_eq!(
            c.semaphores.wait_for(Some("kimi")),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn daemon_limits_have_defaults_and_bad_values_name_their_variable() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.ws.limits, WsLimits::default());
        assert!(!c.ws.database_url_set);
        assert!(
            cfg(&[("DATABASE_URL", "postgres://h/db")])
                .unwrap()
                .ws
                .database_url_set
        );
        for (var, value) in [
            ("EXAI_WS_MAX_CONNECTIONS", "lots"),
            ("EXAI_WS_MAX_CONNECTIONS_PER_IP", "0"),
            ("EXAI_WS_SESSION_MAX_INFLIGHT", "-1"),
            ("EXAI_WS_HELLO_TIMEOUT", "soon"),
            ("EXAI_WS_IDLE_TIMEOUT_SECS", "0"),
            ("EXAI_WS_PING_TIMEOUT", "inf"),
            ("EXAI_WS_CALL_TIMEOUT_SECS", "-3"),
            ("EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS", "NaN"),
            ("EXAI_WS_SHUTDOWN_GRACE_SECS", "x"),
            ("EXAI_PROVIDER_CONNECT_TIMEOUT_SECS", "0"),
            ("EXAI_PROVIDER_READ_TIMEOUT_SECS", "slow"),
            ("EXAI_PROVIDER_REQUEST_TIMEOUT_SECS", "-1"),
            ("KIMI_FILES_FETCH_TIMEOUT_SECS", "0"),
            ("KIMI_FILES_UPLOAD_TIMEOUT_SECS", "never"),
            ("KIMI_FILES_UPLOAD_MIN_BYTES_PER_SEC", "0"),
            ("KIMI_TIMEOUT_SECS", "0"),
            ("GLM_TIMEOUT_SECS", "1e99"),
            ("EXAI_REQUIRE_REAL_PROVIDERS", "perhaps"),
            ("RUST_LOG", "info,[unclosed"),
        ] {
            let err = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{var}={value}: {err}");
            assert!(err.to_string().contains(var), "{err}");
        }
        let c = cfg(&[("EXAI_WS_HELLO_TIMEOUT", "0.25")]).unwrap();
        assert_eq!(c.ws.limits.hello_timeout, Duration::from_millis(250));
    }

    #[test]
    fn provider_timeouts_default_to_the_former_constants_and_are_settings() {
        let t = cfg(&[]).unwrap().provider_timeouts;
        assert_eq!(t, ProviderTimeouts::default());
        assert_eq!(t.connect, Duration::from_secs(10));
        assert_eq!(t.read, Duration::from_secs(300));
        assert_eq!(t.request, Duration::from_secs(60));
        assert_eq!(t.file_content, Duration::from_secs(120));
        assert_eq!(t.kimi_chat, Duration::from_secs(600));
        assert_eq!(t.glm_chat, Duration::from_secs(600));
        // Two minutes plus one second per 256 KiB.
        assert_eq!(t.upload(0), Duration::from_secs(120));
        assert_eq!(t.upload(100 * 1024 * 1024), Duration::from_secs(520));
        let t = cfg(&[
            ("KIMI_TIMEOUT_SECS", "40"),
            ("GLM_TIMEOUT_SECS", "30"),
            ("KIMI_FILES_UPLOAD_TIMEOUT_SECS", "90"),
            ("KIMI_FILES_UPLOAD_MIN_BYTES_PER_SEC", "1048576"),
            ("EXAI_PROVIDER_CONNECT_TIMEOUT_SECS", "2.5"),
        ])
        .unwrap()
        .provider_timeouts;
        assert_eq!(t.kimi_chat, Duration::from_secs(40));
        assert_eq!(t.glm_chat, Duration::from_secs(30));
        assert_eq!(t.upload(10 * 1024 * 1024), Duration::from_secs(100));
        assert_eq!(t.connect, Duration::from_millis(2500));
    }

    #[test]
    fn original_names_take_effect_and_the_new_names_win() {
        let c = cfg(&[
            ("MAX_CONNECTIONS", "50"),
            ("MAX_CONNECTIONS_PER_IP", "3"),
            ("EXAI_WS_MAX_CONNECTIONS_PER_IP", "4"),
            ("RESULT_TTL_SECS", "600"),
            ("WORKFLOW_TOOL_TIMEOUT_SECS", "180"),
            ("SESSION_TIMEOUT_SECS", "1800"),
            ("FILE_RETENTION_DAYS", "7"),
            ("CLEANUP_INTERVAL_HOURS", "24"),
            ("KIMI_FILES_MAX_SIZE_MB", "20"),
            ("LOG_LEVEL", "WARNING"),
            ("REDIS_PASSWORD", "s3cret"),
        ])
        .unwrap();
        assert_eq!(c.ws.limits.max_connections, 50);
        assert_eq!(c.ws.limits.max_connections_per_ip, 4);
        assert_eq!(c.jobs.result_ttl, Duration::from_secs(600));
        assert_eq!(c.ws.limits.call_timeout, Duration::from_secs(180));
        assert_eq!(c.ws.limits.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.cleanup.file_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.cleanup.cron, "0 0 0 * * *");
        assert_eq!(c.uploads.max_bytes, 20 * 1024 * 1024);
        assert_eq!(c.log_filter, "warn");
        assert_eq!(
            c.redis.url.expose_secret(),
            "redis://:s3cret@127.0.0.1:6379"
        );
        assert_eq!(c.legacy.len(), 10);
        assert!(!format!("{:?}", c.legacy).contains("s3cret"));
        let c = cfg(&[("LOG_LEVEL", "DEBUG"), ("RUST_LOG", "exai=trace")]).unwrap();
        assert_eq!(c.log_filter, "exai=trace");
        assert_eq!(cfg(&[]).unwrap().log_filter, "info");
        assert!(cfg(&[]).unwrap().legacy.is_empty());
    }

    #[test]
    fn a_bad_original_value_names_the_original_variable() {
        for (var, value) in [
            ("MAX_CONNECTIONS", "0"),
            ("MAX_CONNECTIONS_PER_IP", "many"),
            ("WORKFLOW_TOOL_TIMEOUT_SECS", "-1"),
            ("FILE_RETENTION_DAYS", "0"),
            ("REDIS_PASSWORD", "x"),
        ] {
            let mut pairs = vec![(var, value)];
            if var == "REDIS_PASSWORD" {
                // A password put into a valid URL stays valid: break the URL another way.
                pairs.push(("REDIS_CLUSTER_NODES", "redis://a:1,b:2"));
            }
            let err = cfg(&pairs).unwrap_err();
            assert_eq!(err.var, var, "{err}");
            assert!(err.to_string().contains("read as"), "{err}");
        }
    }

    #[test]
    fn real_providers_are_required_only_when_asked_and_every_problem_is_named() {
        let sim = [
            ("KIMI_API_URL", "http://exai-sim:9000/v1"),
            ("KIMI_API_KEY", "sim-key"),
            ("SUPABASE_URL", "http://exai-sim:9000"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sim-key"),
        ];
        assert!(cfg(&sim).is_ok());
        assert!(cfg(&[]).is_ok());
        let mut on = sim.to_vec();
        on.push(("EXAI_REQUIRE_REAL_PROVIDERS", "true"));
        let err = cfg(&on).unwrap_err();
        assert_eq!(err.var, "EXAI_REQUIRE_REAL_PROVIDERS");
        for var in [
            "KIMI_API_URL",
            "KIMI_API_KEY",
            "SUPABASE_URL",
            "SUPABASE_SERVICE_ROLE_KEY",
        ] {
            assert!(err.message.contains(var), "{var}: {err}");
        }
        let err = cfg(&[("EXAI_REQUIRE_REAL_PROVIDERS", "true")]).unwrap_err();
        for var in ["KIMI_API_KEY", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"] {
            assert!(err.message.contains(&format!("{var} is not set")), "{err}");
        }
        // Without the Supabase push, Supabase is not required.
        let err = cfg(&[
            ("EXAI_REQUIRE_REAL_PROVIDERS", "true"),
            ("KIMI_UPLOAD_TO_SUPABASE", "false"),
        ])
        .unwrap_err();
        assert!(!err.message.contains("SUPABASE"), "{err}");
        let real = [
            ("EXAI_REQUIRE_REAL_PROVIDERS", "true"),
            ("KIMI_API_KEY", "sk-real-key"),
            ("SUPABASE_URL", "https://project.supabase.co"),
            ("SUPABASE_SERVICE_ROLE_KEY", "service-role"),
        ];
        assert!(cfg(&real).unwrap().require_real_providers);
    }

    #[test]
    fn settings_list_every_variable_read_once_with_secrets_redacted() {
        let raw = HashMap::new();
        let vars = Vars::new(&raw);
        let c = Config::read(&vars).unwrap();
        let read = vars.read.borrow().clone();
        let settings = c.settings();
        let listed: BTreeSet<&str> = settings.iter().map(|s| s.var).collect();
        assert_eq!(listed.len(), settings.len(), "a variable is listed twice");
        assert_eq!(
            read, listed,
            "Config::settings must list exactly the variables read"
        );

        let c = cfg(&[
            ("EXAI_WS_TOKEN", "super-secret-token-123"),
            ("KIMI_API_KEY", "sk-kimi-secret"),
            ("DATABASE_URL", "postgres://u:pg-password@h/db"),
            ("REDIS_URL", "redis://:redis-password@h:1"),
        ])
        .unwrap();
        let shown = format!("{:?}", c.settings());
        for secret in [
            "super-secret-token-123",
            "sk-kimi-secret",
            "pg-password",
            "redis-password",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked into {shown}");
        }
    }

    #[test]
    fn settings_read_back_give_the_same_configuration() {
        let c = cfg(&[
            ("EXAI_WS_PING_INTERVAL", "0.25"),
            ("EXAI_UPLOAD_ROOTS", "/a:/b"),
            ("EXAI_STORAGE_QUOTA_BYTES", "1000"),
            (
                "REDIS_CLUSTER_NODES",
                "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
            ),
            ("SUPABASE_URL", "https://x.supabase.co"),
            ("EXAI_WORKER_METRICS_ADDR", "127.0.0.1:9464"),
            ("EXAI_LOG_FORMAT", "json"),
            ("CLEANUP_INTERVAL_HOURS", "6"),
        ])
        .unwrap();
        let pairs: Vec<(&str, String)> = c
            .settings()
            .into_iter()
            .filter_map(|s| s.value.map(|v| (s.var, v)))
            .collect();
        let again = Config::from_vars(pairs).unwrap();
        assert_eq!(again.settings(), c.settings());
        assert!(again.legacy.is_empty());
    }
}
