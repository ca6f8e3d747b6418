//! The effective value of every variable [`Config`] reads, in the variable's own unit and
//! spelling, secrets redacted: what a `--print-config` diagnostic prints, and what the tests
//! hold `.env.example` to.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{Config, LogFormat};

/// What a redacted secret shows.
pub const REDACTED: &str = "[redacted]";

/// What a redacted password inside a URL shows (no characters that need escaping there).
const URL_REDACTED: &str = "redacted";

/// One variable and its effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The variable's name.
    pub var: &'static str,
    /// Its effective value as it would be written in `.env` (secrets shown as `[redacted]`,
    /// passwords in URLs too); `None` when it is unset and has no default.
    pub value: Option<String>,
}

impl Config {
    /// Every variable this configuration reads, with its effective value, in the order of
    /// `.env.example`. The original daemon's names are not listed: their values show under the
    /// new names.
    pub fn settings(&self) -> Vec<Setting> {
        let ws = &self.ws;
        let l = &ws.limits;
        let s = &self.semaphores;
        let t = &self.provider_timeouts;
        let sb = &self.supabase;
        let list: Vec<(&'static str, Option<String>)> = vec![
            ("EXAI_WS_HOST", Some(ws.host.to_string())),
            ("EXAI_WS_PORT", Some(ws.port.to_string())),
            ("EXAI_WS_TOKEN", secret(ws.token.as_ref())),
            ("EXAI_ADMIN_TOKEN", secret(ws.admin_token.as_ref())),
            (
                "EXAI_WS_ALLOWED_ORIGINS",
                (!ws.allowed_origins.is_empty()).then(|| ws.allowed_origins.join(",")),
            ),
            (
                "EXAI_CLIENT_FILE_ADMIN",
                Some(ws.client_file_admin.to_string()),
            ),
            (
                "EXAI_WS_TLS_CERT",
                ws.tls.as_ref().map(|t| t.cert.display().to_string()),
            ),
            (
                "EXAI_WS_TLS_KEY",
                ws.tls.as_ref().map(|t| t.key.display().to_string()),
            ),
            ("EXAI_WS_MAX_BYTES", Some(ws.max_bytes.to_string())),
            ("EXAI_WS_PING_INTERVAL", Some(secs(ws.ping_interval))),
            (
                "EXAI_WS_PROGRESS_INTERVAL_SECS",
                Some(secs(ws.progress_interval)),
            ),
            ("EXAI_WS_PING_TIMEOUT", Some(secs(l.ping_timeout))),
            (
                "EXAI_WS_MAX_CONNECTIONS",
                Some(l.max_connections.to_string()),
            ),
            (
                "EXAI_WS_MAX_CONNECTIONS_PER_IP",
                Some(l.max_connections_per_ip.to_string()),
            ),
            (
                "EXAI_WS_SESSION_MAX_INFLIGHT",
                Some(l.max_inflight_per_session.to_string()),
            ),
            (
                "EXAI_MAX_ARGUMENT_BYTES",
                Some(l.max_argument_bytes.to_string()),
            ),
            (
                "EXAI_SESSION_MAX_QUEUED",
                Some(l.session_max_queued.to_string()),
            ),
            ("EXAI_FAIRNESS_KEY", Some(ws.fairness.key.to_string())),
            (
                "EXAI_FAIRNESS_WEIGHTS",
                Some(ws.fairness.weights.to_string()).filter(|w| !w.is_empty()),
            ),
            ("EXAI_WS_HELLO_TIMEOUT", Some(secs(l.hello_timeout))),
            ("EXAI_WS_IDLE_TIMEOUT_SECS", Some(secs(l.idle_timeout))),
            ("EXAI_WS_CALL_TIMEOUT_SECS", Some(secs(l.call_timeout))),
            (
                "EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS",
                Some(secs(l.single_frame_timeout)),
            ),
            ("EXAI_WS_SHUTDOWN_GRACE_SECS", Some(secs(l.shutdown_grace))),
            (
                "EXAI_WS_OUTBOX_MAX_BYTES",
                Some(l.outbox_max_bytes.to_string()),
            ),
            ("EXAI_WS_WRITE_TIMEOUT_SECS", Some(secs(l.write_timeout))),
            (
                "EXAI_WS_HELLO_MAX_BYTES",
                Some(l.hello_max_bytes.to_string()),
            ),
            (
                "EXAI_WS_MAX_PENDING_HELLO_PER_IP",
                Some(l.max_pending_hello_per_ip.to_string()),
            ),
            (
                "EXAI_HTTP_HEADER_TIMEOUT_SECS",
                Some(secs(l.http_header_timeout)),
            ),
            (
                "EXAI_MCP_MAX_BODY_BYTES",
                Some(ws.mcp.max_body_bytes.to_string()),
            ),
            (
                "EXAI_MCP_MAX_SESSIONS",
                Some(ws.mcp.max_sessions.to_string()),
            ),
            ("EXAI_MCP_SESSION_TTL_SECS", Some(secs(ws.mcp.session_ttl))),
            (
                "EXAI_WS_GLOBAL_MAX_INFLIGHT",
                Some(s.global_limit.to_string()),
            ),
            ("EXAI_WS_KIMI_MAX_INFLIGHT", Some(s.kimi_limit.to_string())),
            ("EXAI_WS_GLM_MAX_INFLIGHT", Some(s.glm_limit.to_string())),
            ("EXAI_SEMAPHORE_LEASE_MS", Some(millis(s.lease))),
            ("EXAI_SEMAPHORE_TIMEOUT", Some(secs(s.global_wait))),
            ("KIMI_SEMAPHORE_TIMEOUT", Some(secs(s.kimi_wait))),
            ("GLM_SEMAPHORE_TIMEOUT", Some(secs(s.glm_wait))),
            ("EXAI_AIMD_ENABLED", Some(s.aimd.enabled.to_string())),
            (
                "EXAI_AIMD_DECREASE_FACTOR",
                Some(s.aimd.decrease_factor.to_string()),
            ),
            (
                "EXAI_AIMD_DECREASE_COOLDOWN_MS",
                Some(millis(s.aimd.decrease_cooldown)),
            ),
            (
                "EXAI_AIMD_INCREASE_STEP",
                Some(s.aimd.increase_step.to_string()),
            ),
            (
                "EXAI_AIMD_INCREASE_EVERY",
                Some(s.aimd.increase_every.to_string()),
            ),
            ("EXAI_KIMI_RPM", s.budgets.kimi.rpm.map(|n| n.to_string())),
            ("EXAI_KIMI_TPM", s.budgets.kimi.tpm.map(|n| n.to_string())),
            ("EXAI_KIMI_TPD", s.budgets.kimi.tpd.map(|n| n.to_string())),
            (
                "EXAI_KIMI_MAX_COMPLETION_TOKENS",
                s.budgets.kimi.max_completion_tokens.map(|n| n.to_string()),
            ),
            ("EXAI_GLM_RPM", s.budgets.glm.rpm.map(|n| n.to_string())),
            ("EXAI_GLM_TPM", s.budgets.glm.tpm.map(|n| n.to_string())),
            ("EXAI_GLM_TPD", s.budgets.glm.tpd.map(|n| n.to_string())),
            (
                "EXAI_GLM_MAX_COMPLETION_TOKENS",
                s.budgets.glm.max_completion_tokens.map(|n| n.to_string()),
            ),
            ("EXAI_BUDGET_MINUTE_MS", Some(millis(s.budgets.minute))),
            ("EXAI_BUDGET_DAY_MS", Some(millis(s.budgets.day))),
            (
                "EXAI_BUDGET_BURST_MS",
                Some(s.budgets.burst.map_or_else(|| "0".to_owned(), millis)),
            ),
            ("EXAI_BUDGET_SLACK_MS", Some(millis(s.budgets.slack))),
            (
                "REDIS_URL",
                Some(redact_url(self.redis.url.expose_secret())),
            ),
            (
                "REDIS_CLUSTER_NODES",
                (!self.redis.cluster_nodes.is_empty()).then(|| {
                    self.redis
                        .cluster_nodes
                        .iter()
                        .map(|n| redact_url(n.expose_secret()))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            ),
            ("EXAI_REDIS_PREFIX", Some(self.redis.prefix.clone())),
            ("EXAI_JOB_LEASE_MS", Some(millis(self.jobs.lease))),
            ("EXAI_RESULT_TTL_SECS", Some(secs(self.jobs.result_ttl))),
            (
                "EXAI_AUTO_MIGRATE",
                Some(self.jobs.auto_migrate.to_string()),
            ),
            ("EXAI_QUEUE_HISTORY", Some(self.jobs.history.to_string())),
            (
                "EXAI_USAGE_RETENTION_SECS",
                Some(secs(self.usage.retention)),
            ),
            (
                "EXAI_SESSION_TOKEN_BUDGET",
                Some(self.usage.session_token_budget.to_string()),
            ),
            (
                "EXAI_MCP_SERVERS",
                self.worker
                    .mcp_servers_file
                    .as_ref()
                    .map(|p| p.display().to_string()),
            ),
            (
                "EXAI_WORKER_METRICS_ADDR",
                self.worker.metrics_addr.map(|a| a.to_string()),
            ),
            (
                "DATABASE_URL",
                Some(redact_url(self.database.url.expose_secret())),
            ),
            ("KIMI_API_KEY", secret(self.kimi.api_key.as_ref())),
            ("KIMI_API_URL", Some(self.kimi.api_url.clone())),
            ("GLM_API_KEY", secret(self.glm.api_key.as_ref())),
            ("GLM_API_URL", Some(self.glm.api_url.clone())),
            (
                "EXAI_REQUIRE_REAL_PROVIDERS",
                Some(self.require_real_providers.to_string()),
            ),
            ("EXAI_PROVIDER_CONNECT_TIMEOUT_SECS", Some(secs(t.connect))),
            ("EXAI_PROVIDER_READ_TIMEOUT_SECS", Some(secs(t.read))),
            ("EXAI_PROVIDER_REQUEST_TIMEOUT_SECS", Some(secs(t.request))),
            ("KIMI_TIMEOUT_SECS", Some(secs(t.kimi_chat))),
            ("GLM_TIMEOUT_SECS", Some(secs(t.glm_chat))),
            ("KIMI_FILES_FETCH_TIMEOUT_SECS", Some(secs(t.file_content))),
            ("KIMI_FILES_UPLOAD_TIMEOUT_SECS", Some(secs(t.upload_base))),
            (
                "KIMI_FILES_UPLOAD_MIN_BYTES_PER_SEC",
                Some(t.upload_min_bytes_per_sec.to_string()),
            ),
            ("SUPABASE_URL", sb.url.clone()),
            (
                "SUPABASE_SERVICE_ROLE_KEY",
                secret(sb.service_role_key.as_ref()),
            ),
            ("SUPABASE_BUCKET", Some(sb.bucket.clone())),
            (
                "KIMI_UPLOAD_TO_SUPABASE",
                Some(sb.upload_enabled.to_string()),
            ),
            ("KIMI_SUPABASE_TIMEOUT", Some(secs(sb.timeout))),
            (
                "EXAI_STORAGE_RETRY_MAX_ATTEMPTS",
                Some(sb.retry_max_attempts.to_string()),
            ),
            ("EXAI_STORAGE_RETRY_MAX_SECS", Some(secs(sb.retry_max))),
            ("EXAI_STORAGE_RETRY_BASE_MS", Some(millis(sb.retry_base))),
            (
                "EXAI_UPLOAD_ROOTS",
                (!self.uploads.roots.is_empty()).then(|| {
                    self.uploads
                        .roots
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                }),
            ),
            (
                "EXAI_MAX_UPLOAD_BYTES",
                Some(self.uploads.max_bytes.to_string()),
            ),
            (
                "EXAI_DOWNLOAD_MAX_BYTES",
                Some(self.uploads.download_max_bytes.to_string()),
            ),
            (
                "EXAI_STAGING_DIR",
                Some(self.uploads.staging_dir.display().to_string()),
            ),
            ("EXAI_CLEANUP_CRON", Some(self.cleanup.cron.clone())),
            (
                "EXAI_ORPHAN_GRACE_SECS",
                Some(secs(self.cleanup.orphan_grace)),
            ),
            (
                "EXAI_FILE_RETENTION_DAYS",
                Some((self.cleanup.file_retention.as_secs() / 86_400).to_string()),
            ),
            (
                "EXAI_STORAGE_QUOTA_BYTES",
                self.cleanup.storage_quota_bytes.map(|b| b.to_string()),
            ),
            (
                "EXAI_LOG_FORMAT",
                Some(
                    match self.log_format {
                        LogFormat::Human => "human",
                        LogFormat::Json => "json",
                    }
                    .to_owned(),
                ),
            ),
            ("RUST_LOG", Some(self.log_filter.clone())),
        ];
        list.into_iter()
            .map(|(var, value)| Setting { var, value })
            .collect()
    }
}

/// Seconds as written in `.env`: `30`, `0.25`.
fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// Milliseconds as written in `.env`.
fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

fn secret(s: Option<&SecretString>) -> Option<String> {
    s.map(|_| REDACTED.to_owned())
}

/// `url` with its password (user-info password or `pass` query pair) replaced by `redacted`; a
/// URL that does not parse is redacted whole.
fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return REDACTED.to_owned();
    };
    let mut changed = false;
    if parsed.password().is_some() {
        if parsed.set_password(Some(URL_REDACTED)).is_err() {
            return REDACTED.to_owned();
        }
        changed = true;
    }
    if parsed.query_pairs().any(|(k, _)| k == "pass") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "pass" {
                    URL_REDACTED.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:redacted@h:5432/db"
        );
        assert_eq!(
            redact_url("unix:///run/r.sock?db=1&pass=pw"),
            "unix:///run/r.sock?db=1&pass=redacted"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("not a url"), REDACTED);
    }
}
