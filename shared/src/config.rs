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
//!
//! The command-line tools also read the settings file of a stack that `scripts/up` started
//! ([`run_env`], `data/run/env`) before their configuration, so a second shell needs nothing
//! exported.

mod effective;
pub mod fairness;
mod legacy;
mod read;
pub mod run_env;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

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
    /// Cost accounting: how long token sums are kept, and the session token budget.
    pub usage: UsageConfig,
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
    /// A value of only whitespace is an error, never "no token".
    pub token: Option<SecretString>,
    /// `EXAI_ADMIN_TOKEN`: the admin API's token, separate from the clients' (at least
    /// [`MIN_TOKEN_LEN`] characters, not equal to `EXAI_WS_TOKEN`). Unset: the admin API is
    /// closed.
    pub admin_token: Option<SecretString>,
    /// `EXAI_WS_ALLOWED_ORIGINS` (empty): the web origins (`scheme://host[:port]`, normalised)
    /// whose pages may open a WebSocket or call the admin API. A request that carries an
    /// `Origin` header not listed gets 403; one without `Origin` (CLI, shim, MCP clients) is
    /// not affected.
    pub allowed_origins: Vec<String>,
    /// `EXAI_CLIENT_FILE_ADMIN` (false): whether clients may remove files through
    /// `kimi_manage_files` (`delete`, `cleanup_orphaned`, `cleanup_expired`); `list` is always
    /// allowed.
    pub client_file_admin: bool,
    /// `EXAI_WS_TLS_CERT` and `EXAI_WS_TLS_KEY` (unset): serve `wss://` with this certificate
    /// chain and private key (PEM files). Both or neither; unset = plain `ws://`.
    pub tls: Option<TlsFiles>,
    /// `EXAI_WS_MAX_BYTES` (32 MiB): the inbound frame limit.
    pub max_bytes: usize,
    /// `EXAI_WS_PING_INTERVAL` seconds (30).
    pub ping_interval: Duration,
    /// `EXAI_WS_PROGRESS_INTERVAL_SECS` (5).
    pub progress_interval: Duration,
    /// The daemon's connection limits and timeouts.
    pub limits: WsLimits,
    /// The MCP endpoint (`/mcp`) and its sessions.
    pub mcp: McpConfig,
    /// Fair share of the queued calls across sessions or tenants.
    pub fairness: fairness::FairnessConfig,
    /// Whether `DATABASE_URL` was set (not left to its default): only then does the daemon open
    /// a (lazy) Postgres pool, for the admin API's storage view.
    pub database_url_set: bool,
}

/// The PEM files the daemon serves TLS with (read by the daemon at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `EXAI_WS_TLS_CERT`: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// `EXAI_WS_TLS_KEY`: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The daemon's limits and timeouts. Every limit says what happens when it is hit.
#[derive(Debug, Clone, PartialEq)]
pub struct WsLimits {
    /// `EXAI_WS_MAX_CONNECTIONS` (1000; the original daemon's `MAX_CONNECTIONS`): open WebSocket
    /// connections in total (one more is closed at once with 1008), and open TCP connections in
    /// total, counted from the accept (one more is closed before anything is read).
    pub max_connections: usize,
    /// `EXAI_WS_MAX_CONNECTIONS_PER_IP` (10; the original's `MAX_CONNECTIONS_PER_IP`): open
    /// WebSocket connections from one IP address that have said hello, each counted until its
    /// socket is closed. One more is closed with 1008.
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
    /// `EXAI_WS_OUTBOX_MAX_BYTES` (16 MiB): bytes of frames queued for one connection's socket
    /// and not yet written. Senders wait beyond it (one larger frame is let through alone), so
    /// a client that does not read holds at most this much.
    pub outbox_max_bytes: usize,
    /// `EXAI_WS_WRITE_TIMEOUT_SECS` (30): the longest one socket write (a frame, a ping, the
    /// close) may take; a client that does not read for this long is dropped and its socket
    /// closed.
    pub write_timeout: Duration,
    /// `EXAI_WS_HELLO_MAX_BYTES` (65536): the size of a frame before the hello (checked from
    /// the frame header, before buffering). A bigger one is closed with 1009 unread.
    pub hello_max_bytes: usize,
    /// `EXAI_WS_MAX_PENDING_HELLO_PER_IP` (16): sockets from one IP address that have not said
    /// hello yet. They do not count against `EXAI_WS_MAX_CONNECTIONS_PER_IP`; one more closes the
    /// oldest of them with 1008, so silent sockets can never lock an address's clients out.
    pub max_pending_hello_per_ip: usize,
    /// `EXAI_HTTP_HEADER_TIMEOUT_SECS` (10): how long a TCP connection may take to send a
    /// request's headers, counted from the connection's start or from the end of the previous
    /// response (so it is also the keep-alive idle timeout). Then the connection is closed.
    pub http_header_timeout: Duration,
    /// `EXAI_MAX_ARGUMENT_BYTES` (1 MiB): the size of one call's arguments as JSON.
    /// A bigger call is a `VALIDATION_ERROR` naming the limit, refused before anything is
    /// enqueued. `kimi_upload_bytes`'s `content_base64` does not count: it is staged, not
    /// enqueued, and `EXAI_MAX_UPLOAD_BYTES` limits it.
    pub max_argument_bytes: usize,
    /// `EXAI_SESSION_MAX_QUEUED` (1000): one session's calls enqueued and not yet finished
    /// (queued, retrying or running), over all its connections and across disconnects, kept in
    /// Redis. One more is answered with `OVER_CAPACITY` and not enqueued.
    pub session_max_queued: usize,
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
            outbox_max_bytes: 16 * 1024 * 1024,
            write_timeout: Duration::from_secs(30),
            hello_max_bytes: 64 * 1024,
            max_pending_hello_per_ip: 16,
            http_header_timeout: Duration::from_secs(10),
            max_argument_bytes: 1024 * 1024,
            session_max_queued: 1000,
        }
    }
}

/// Settings of the daemon's MCP endpoint (`/mcp`, Streamable HTTP). Its calls are the
/// WebSocket's calls: `EXAI_WS_SESSION_MAX_INFLIGHT`, `EXAI_SESSION_MAX_QUEUED`,
/// `EXAI_MAX_ARGUMENT_BYTES` and `EXAI_WS_CALL_TIMEOUT_SECS` apply to an MCP session as they do
/// to a WebSocket session.
#[derive(Debug, Clone, PartialEq)]
pub struct McpConfig {
    /// `EXAI_MCP_MAX_BODY_BYTES` (32 MiB, as `EXAI_WS_MAX_BYTES`): the largest body of one POST
    /// to `/mcp`, counted while it is read; a bigger one is answered 413 unread.
    pub max_body_bytes: usize,
    /// `EXAI_MCP_MAX_SESSIONS` (1000): MCP sessions one daemon holds in memory. An `initialize`
    /// beyond it is answered 503 (`Retry-After`); idle sessions leave memory after the call
    /// timeout plus a minute and are restored from Redis on their next request.
    pub max_sessions: usize,
    /// `EXAI_MCP_SESSION_TTL_SECS` (86400): how long a session's record in Redis outlives its
    /// last request. Past it the session is unknown (404) and its client initializes anew.
    pub session_ttl: Duration,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_sessions: 1000,
            session_ttl: Duration::from_secs(24 * 3600),
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
    /// `mcp.<server>` → `EXAI_MCP_<NAME>_MAX_INFLIGHT` (8): the semaphores of the upstream MCP
    /// servers in `EXAI_MCP_SERVERS`.
    pub upstream_limits: Vec<(String, u32)>,
    /// Adaptive concurrency (AIMD) of the provider semaphores.
    pub aimd: AimdConfig,
    /// The providers' rate budgets (requests and tokens per minute, tokens per day).
    pub budgets: BudgetConfig,
}

/// Adaptive concurrency of the provider semaphores: the configured limit is the ceiling, and an
/// effective limit kept in Redis drops multiplicatively on the provider's congestion answers
/// and grows additively with successes (see docs/admission.md, "Adaptive concurrency").
#[derive(Debug, Clone, PartialEq)]
pub struct AimdConfig {
    /// `EXAI_AIMD_ENABLED` (true): adapt the effective limit; off, the configured limit applies.
    pub enabled: bool,
    /// `EXAI_AIMD_DECREASE_FACTOR` (0.5): the effective limit is multiplied by this on congestion
    /// (rounded down, always at least one less, never below 1). In (0, 1).
    pub decrease_factor: f64,
    /// `EXAI_AIMD_DECREASE_COOLDOWN_MS` (2000): at most one decrease per semaphore per this window,
    /// so one burst of 429s counts once.
    pub decrease_cooldown: Duration,
    /// `EXAI_AIMD_INCREASE_STEP` (1): permits added per increase.
    pub increase_step: u32,
    /// `EXAI_AIMD_INCREASE_EVERY` (10): successful provider calls per increase.
    pub increase_every: u32,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            decrease_factor: 0.5,
            decrease_cooldown: Duration::from_millis(2000),
            increase_step: 1,
            increase_every: 10,
        }
    }
}

/// The providers' rate budgets (see docs/admission.md, "Rate budgets"): what each provider
/// admits per minute and per day, reserved before a call and settled after it, fleet-wide.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// `EXAI_KIMI_RPM`, `EXAI_KIMI_TPM`, `EXAI_KIMI_TPD`, `EXAI_KIMI_MAX_COMPLETION_TOKENS`.
    pub kimi: ProviderBudget,
    /// `EXAI_GLM_RPM`, `EXAI_GLM_TPM`, `EXAI_GLM_TPD`, `EXAI_GLM_MAX_COMPLETION_TOKENS`.
    pub glm: ProviderBudget,
    /// `EXAI_BUDGET_MINUTE_MS` (60000): the provider's minute. Only an emulator with a shorter
    /// minute needs another value.
    pub minute: Duration,
    /// `EXAI_BUDGET_DAY_MS` (86400000): the provider's day.
    pub day: Duration,
    /// `EXAI_BUDGET_BURST_MS` (5000; `0`: requests are not paced): at most this long's worth of
    /// a provider's requests per minute go back to back; the rest are paced evenly over the
    /// minute, so a backlog does not spend the minute's requests in its first second and leave
    /// every other caller waiting out the rest.
    pub burst: Option<Duration>,
    /// `EXAI_BUDGET_SLACK_MS` (1000): added to both windows, so a request's network delay cannot
    /// put two requests the budget counted in different windows into one window of the provider.
    pub slack: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            kimi: ProviderBudget::default(),
            glm: ProviderBudget::default(),
            minute: Duration::from_millis(60_000),
            day: Duration::from_millis(86_400_000),
            burst: Some(Duration::from_millis(5000)),
            slack: Duration::from_millis(1000),
        }
    }
}

impl BudgetConfig {
    /// The budget of `provider` (`kimi`, `glm`), if it has one.
    pub fn of(&self, provider: &str) -> Option<&ProviderBudget> {
        match provider {
            "kimi" => Some(&self.kimi),
            "glm" => Some(&self.glm),
            _ => None,
        }
        .filter(|b| b.is_limited())
    }
}

/// One provider's rate limits (unset: unlimited) and the completion cap its calls are sent with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderBudget {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Tokens per day.
    pub tpd: Option<u64>,
    /// The `max_tokens` sent with every chat request (unset: none is sent, and a reservation
    /// assumes the provider's default of [`DEFAULT_COMPLETION_TOKENS`]).
    pub max_completion_tokens: Option<u32>,
}

/// The completion cap a provider applies to a request without one, as Moonshot documents it.
pub const DEFAULT_COMPLETION_TOKENS: u32 = 1024;

impl ProviderBudget {
    /// Whether any rate limit is set.
    pub fn is_limited(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.tpd.is_some()
    }

    /// The completion tokens a request is reserved (and, at Moonshot, charged) for.
    pub fn completion_reserve(&self) -> u64 {
        u64::from(
            self.max_completion_tokens
                .unwrap_or(DEFAULT_COMPLETION_TOKENS),
        )
    }
}

impl SemaphoreConfig {
    /// The configured default limit of each named semaphore.
    pub fn default_limits(&self) -> Vec<(String, u32)> {
        vec![
            ("global".to_owned(), self.global_limit),
            ("kimi".to_owned(), self.kimi_limit),
            ("glm".to_owned(), self.glm_limit),
        ]
        .into_iter()
        .chain(self.upstream_limits.iter().cloned())
        .collect()
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
    /// `EXAI_QUEUE_HISTORY` (true): the queue scripts keep each queue's per-minute history
    /// (counts and wait/run histograms, the last 24 hours) for the admin console.
    pub history: bool,
}

/// Cost accounting (see [`crate::usage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageConfig {
    /// `EXAI_USAGE_RETENTION_SECS` (604800, seven days): a session's, tool's or model's token
    /// sums are kept this long after the last call added to them.
    pub retention: Duration,
    /// `EXAI_SESSION_TOKEN_BUDGET` (0: no budget): once a session's recorded total tokens
    /// reach this, the daemon refuses its new provider calls with `BUDGET_EXCEEDED`.
    pub session_token_budget: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 86_400),
            session_token_budget: 0,
        }
    }
}

/// Settings of `exai-worker run`.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `EXAI_MCP_SERVERS` (unset: none): the file of upstream MCP servers whose tools the
    /// workers run (`mcpServers` or `servers`, as MCP clients write it; [`crate::upstream`]).
    pub mcp_servers_file: Option<PathBuf>,
    /// The servers of that file, checked at start-up (limits from `EXAI_MCP_<NAME>_MAX_INFLIGHT`).
    pub mcp_servers: Vec<crate::upstream::UpstreamServer>,
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

pub use read::read_dotenv_file;
