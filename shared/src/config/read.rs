//! Reading the configuration: [`Config::from_env`] and [`Config::from_vars`], the validation
//! rules, and the typed getters that name the variable in every error.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::fairness::{FairnessConfig, FairnessWeights};
use super::*;

/// `EXAI_WS_TLS_CERT` and `EXAI_WS_TLS_KEY`: both (TLS) or neither (plain ws).
fn tls_files(v: &Vars<'_>) -> Result<Option<TlsFiles>, ConfigError> {
    let cert = v
        .get("EXAI_WS_TLS_CERT")
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let key = v
        .get("EXAI_WS_TLS_KEY")
        .map(str::trim)
        .filter(|s| !s.is_empty());
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(
            "EXAI_WS_TLS_KEY",
            "must be set with EXAI_WS_TLS_CERT (both or neither)",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            "EXAI_WS_TLS_CERT",
            "must be set with EXAI_WS_TLS_KEY (both or neither)",
        )),
    }
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
        crate::redact::register_secrets(
            [
                &config.kimi.api_key,
                &config.glm.api_key,
                &config.supabase.service_role_key,
                &config.ws.token,
                &config.ws.admin_token,
            ]
            .into_iter()
            .flatten()
            .map(|s| s.expose_secret()),
        );
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
    pub(super) fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let token = v.token("EXAI_WS_TOKEN")?;
        let admin_token = v.token("EXAI_ADMIN_TOKEN")?;
        if let (Some(client), Some(admin)) = (&token, &admin_token)
            && client.expose_secret() == admin.expose_secret()
        {
            return Err(ConfigError::new(
                "EXAI_ADMIN_TOKEN",
                "must differ from EXAI_WS_TOKEN (clients must not hold the admin token)",
            ));
        }
        let allowed_origins = v
            .get("EXAI_WS_ALLOWED_ORIGINS")
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(|o| {
                        web_origin(o).ok_or_else(|| {
                            ConfigError::new(
                                "EXAI_WS_ALLOWED_ORIGINS",
                                format!(
                                    "`{o}` is not a web origin (expected scheme://host[:port], \
                                     e.g. http://127.0.0.1:3000)"
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();

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

        let mcp_servers_file = v.get("EXAI_MCP_SERVERS").map(PathBuf::from);
        let mcp_servers = match &mcp_servers_file {
            Some(path) => crate::upstream::config::load(path, &|name| {
                v.vars.get(name).map(|s| s.trim().to_owned())
            })
            .map_err(|e| ConfigError::new("EXAI_MCP_SERVERS", e))?,
            None => Vec::new(),
        };

        let semaphores = SemaphoreConfig {
            upstream_limits: mcp_servers
                .iter()
                .map(|s| (s.semaphore(), s.max_inflight))
                .collect(),
            global_limit: v.positive("EXAI_WS_GLOBAL_MAX_INFLIGHT", 24)?,
            kimi_limit: v.positive("EXAI_WS_KIMI_MAX_INFLIGHT", 6)?,
            glm_limit: v.positive("EXAI_WS_GLM_MAX_INFLIGHT", 4)?,
            lease: v.millis("EXAI_SEMAPHORE_LEASE_MS", 30_000)?,
            global_wait: v.seconds("EXAI_SEMAPHORE_TIMEOUT", 10.0)?,
            kimi_wait: v.seconds("KIMI_SEMAPHORE_TIMEOUT", 10.0)?,
            glm_wait: v.seconds("GLM_SEMAPHORE_TIMEOUT", 10.0)?,
            aimd: {
                let d = AimdConfig::default();
                let decrease_factor: f64 =
                    v.parse("EXAI_AIMD_DECREASE_FACTOR", d.decrease_factor)?;
                if !(decrease_factor > 0.0 && decrease_factor < 1.0) {
                    return Err(ConfigError::new(
                        "EXAI_AIMD_DECREASE_FACTOR",
                        "must be greater than 0 and less than 1",
                    ));
                }
                AimdConfig {
                    enabled: v.parse("EXAI_AIMD_ENABLED", Bool(d.enabled))?.0,
                    decrease_factor,
                    decrease_cooldown: Duration::from_millis(v.parse(
                        "EXAI_AIMD_DECREASE_COOLDOWN_MS",
                        d.decrease_cooldown.as_millis() as u64,
                    )?),
                    increase_step: v.positive("EXAI_AIMD_INCREASE_STEP", d.increase_step)?,
                    increase_every: v.positive("EXAI_AIMD_INCREASE_EVERY", d.increase_every)?,
                }
            },
            budgets: {
                let d = BudgetConfig::default();
                let provider = |rpm, tpm, tpd, cap| -> Result<ProviderBudget, ConfigError> {
                    Ok(ProviderBudget {
                        rpm: v.optional_positive(rpm)?,
                        tpm: v.optional_positive(tpm)?,
                        tpd: v.optional_positive(tpd)?,
                        max_completion_tokens: v.optional_positive(cap)?,
                    })
                };
                BudgetConfig {
                    kimi: provider(
                        "EXAI_KIMI_RPM",
                        "EXAI_KIMI_TPM",
                        "EXAI_KIMI_TPD",
                        "EXAI_KIMI_MAX_COMPLETION_TOKENS",
                    )?,
                    glm: provider(
                        "EXAI_GLM_RPM",
                        "EXAI_GLM_TPM",
                        "EXAI_GLM_TPD",
                        "EXAI_GLM_MAX_COMPLETION_TOKENS",
                    )?,
                    minute: Duration::from_millis(
                        v.positive("EXAI_BUDGET_MINUTE_MS", d.minute.as_millis() as u64)?,
                    ),
                    day: Duration::from_millis(
                        v.positive("EXAI_BUDGET_DAY_MS", d.day.as_millis() as u64)?,
                    ),
                    burst: match v.parse(
                        "EXAI_BUDGET_BURST_MS",
                        d.burst.map_or(0, |b| b.as_millis() as u64),
                    )? {
                        0 => None,
                        ms => Some(Duration::from_millis(ms)),
                    },
                    slack: Duration::from_millis(
                        v.parse("EXAI_BUDGET_SLACK_MS", d.slack.as_millis() as u64)?,
                    ),
                }
            },
        };

        Ok(Self {
            ws: WsConfig {
                host: v.parse("EXAI_WS_HOST", "127.0.0.1".parse().expect("literal ip"))?,
                port: v.parse("EXAI_WS_PORT", 8079)?,
                token,
                admin_token,
                allowed_origins,
                client_file_admin: v.parse("EXAI_CLIENT_FILE_ADMIN", Bool(false))?.0,
                tls: tls_files(v)?,
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
                        outbox_max_bytes: v
                            .positive("EXAI_WS_OUTBOX_MAX_BYTES", d.outbox_max_bytes)?,
                        write_timeout: v
                            .positive_seconds("EXAI_WS_WRITE_TIMEOUT_SECS", d.write_timeout)?,
                        hello_max_bytes: v
                            .positive("EXAI_WS_HELLO_MAX_BYTES", d.hello_max_bytes)?,
                        max_pending_hello_per_ip: v.positive(
                            "EXAI_WS_MAX_PENDING_HELLO_PER_IP",
                            d.max_pending_hello_per_ip,
                        )?,
                        http_header_timeout: v.positive_seconds(
                            "EXAI_HTTP_HEADER_TIMEOUT_SECS",
                            d.http_header_timeout,
                        )?,
                        max_argument_bytes: v
                            .positive("EXAI_MAX_ARGUMENT_BYTES", d.max_argument_bytes)?,
                        session_max_queued: v
                            .positive("EXAI_SESSION_MAX_QUEUED", d.session_max_queued)?,
                    }
                },
                mcp: {
                    let d = McpConfig::default();
                    McpConfig {
                        max_body_bytes: v.positive("EXAI_MCP_MAX_BODY_BYTES", d.max_body_bytes)?,
                        max_sessions: v.positive("EXAI_MCP_MAX_SESSIONS", d.max_sessions)?,
                        session_ttl: v
                            .positive_seconds("EXAI_MCP_SESSION_TTL_SECS", d.session_ttl)?,
                    }
                },
                fairness: FairnessConfig {
                    key: v.parse("EXAI_FAIRNESS_KEY", FairnessConfig::default().key)?,
                    weights: v.parse("EXAI_FAIRNESS_WEIGHTS", FairnessWeights::default())?,
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
                history: v.parse("EXAI_QUEUE_HISTORY", Bool(true))?.0,
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
            usage: {
                let d = UsageConfig::default();
                UsageConfig {
                    retention: Duration::from_secs(
                        v.positive("EXAI_USAGE_RETENTION_SECS", d.retention.as_secs())?,
                    ),
                    session_token_budget: v
                        .parse("EXAI_SESSION_TOKEN_BUDGET", d.session_token_budget)?,
                }
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
                mcp_servers_file,
                mcp_servers,
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

/// `raw` as the serialised web origin a browser sends in `Origin` (`http://host[:port]`, the
/// scheme and host lower-cased, a default port dropped); `None` unless `raw` is an http(s) URL
/// with a host and nothing after it but an optional `/`.
fn web_origin(raw: &str) -> Option<String> {
    let url = reqwest::Url::parse(raw).ok()?;
    let bare = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && !raw.trim_end_matches('/').ends_with(['?', '#']);
    bare.then(|| url.origin().ascii_serialization())
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
pub(super) struct Vars<'a> {
    vars: &'a HashMap<String, String>,
    /// Every name asked for, so a test can hold [`Config::settings`] to the names read.
    pub(super) read: RefCell<BTreeSet<&'static str>>,
}

impl<'a> Vars<'a> {
    pub(super) fn new(vars: &'a HashMap<String, String>) -> Self {
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

    /// A token: unset when absent or empty; at least [`MIN_TOKEN_LEN`] characters when set; a
    /// value of only whitespace is an error (it must never silently mean "no token").
    fn token(&self, name: &'static str) -> Result<Option<SecretString>, ConfigError> {
        let raw = self.vars.get(name).map(String::as_str).unwrap_or_default();
        let Some(token) = self.get(name) else {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(ConfigError::new(
                name,
                "is only whitespace: set a real token or leave it empty",
            ));
        };
        let len = token.chars().count();
        if len < MIN_TOKEN_LEN {
            return Err(ConfigError::new(
                name,
                format!("must be at least {MIN_TOKEN_LEN} characters when set (got {len})"),
            ));
        }
        Ok(Some(SecretString::from(token.to_owned())))
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

    /// A whole number greater than zero, or `None` when unset.
    fn optional_positive<T>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr + PartialOrd + Default,
        T::Err: std::fmt::Display,
    {
        if self.get(name).is_none() {
            return Ok(None);
        }
        self.positive(name, T::default()).map(Some)
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
