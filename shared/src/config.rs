//! Typed configuration, read once from the environment at start-up.
//!
//! Every variable has one name (kept from the original daemon where one existed), one default and
//! one parser. [`Config::from_env`] loads an optional `.env` first; [`Config::from_vars`] takes any
//! set of pairs, so tests never touch the process environment. A value that does not parse is a
//! [`ConfigError`] naming the variable — never a silent fallback (the original daemon silently
//! disabled auth for a short token).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// The minimum length of `EXAI_WS_TOKEN` when it is set.
pub const MIN_TOKEN_LEN: usize = 16;

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
    /// Log output.
    pub log_format: LogFormat,
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
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let v = Vars(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );

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

        let redis_url = v.string("REDIS_URL", "redis://127.0.0.1:6379");
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
            log_format: v.parse("EXAI_LOG_FORMAT", LogFormat::Human)?,
        })
    }

    /// Whether the daemon's listen address is loopback (auth is then optional).
    pub fn ws_is_loopback(&self) -> bool {
        self.ws.host.is_loopback()
    }
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
struct Vars(HashMap<String, String>);

impl Vars {
    /// A set, non-empty value (an empty value counts as unset, as in the original daemon).
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    fn secret(&self, name: &str) -> Option<SecretString> {
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
}
