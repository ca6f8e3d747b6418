//! The token sums in Redis: per session, per tool and per model.
//!
//! Each sum is a hash of counters (`calls`, `prompt`, `completion`, `cached`, `total`) under the
//! `{P:usage}` hash tag (see [`Keys`]), so the one script that records a call
//! (`record.lua`) touches a single cluster slot. A sum expires `EXAI_USAGE_RETENTION_SECS` after
//! the last call added to it: the sums are of the calls made since a name was last idle for a
//! whole retention period. Each dimension has an index (a sorted set of names by last call)
//! through which the sums are listed; a record prunes the index of names that expired.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::Usage;
use crate::keys::Keys;
use crate::redis::RedisHandle;

/// The record script.
static RECORD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("record.lua")));

/// The most names of one dimension a report lists.
pub const REPORT_MAX: usize = 1000;

/// The sums of one session, tool or model.
pub type UsageTotals = Usage;

/// One line of a report: a name and its sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    /// The session id, tool name or model name.
    pub name: String,
    /// The model's provider (`kimi`, `glm`); models only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The sums.
    #[serde(flatten)]
    pub usage: UsageTotals,
    /// When the last call was recorded (Unix ms, Redis clock).
    #[serde(default)]
    pub last_ms: u64,
}

/// The sums of every dimension, most recently used first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// How long a sum is kept after its last call, in seconds.
    pub retention_secs: u64,
    /// The sums over every model listed (every call recorded, when no model was left out).
    pub total: UsageTotals,
    /// Per session.
    pub sessions: Vec<UsageEntry>,
    /// Per tool.
    pub tools: Vec<UsageEntry>,
    /// Per model.
    pub models: Vec<UsageEntry>,
}

/// Which session, tool and model a call belongs to.
#[derive(Debug, Clone, Copy)]
pub struct UsageCall<'a> {
    /// The client session (empty: counted per tool and model only).
    pub session: &'a str,
    /// The tool's registered name.
    pub tool: &'a str,
    /// The model that answered.
    pub model: &'a str,
    /// The model's provider (`kimi`, `glm`).
    pub provider: &'a str,
}

/// The token sums of one deployment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UsageLedger {
    redis: RedisHandle,
    keys: Keys,
    /// `EXAI_USAGE_RETENTION_SECS`: how long a sum is kept after its last call.
    retention: Duration,
}

impl UsageLedger {
    /// The ledger of the deployment whose keys are `keys`, keeping sums for `retention`.
    pub fn new(redis: RedisHandle, keys: Keys, retention: Duration) -> Self {
        Self {
            redis,
            keys,
            retention,
        }
    }

    /// Adds one call's usage to its session's, tool's and model's sums (one script run);
    /// returns the session's total tokens afterwards.
    pub async fn record(&self, call: UsageCall<'_>, usage: &Usage) -> redis::RedisResult<u64> {
        let k = &self.keys;
        let mut invocation = RECORD.prepare_invoke();
        invocation
            .key(k.usage_session(call.session))
            .key(k.usage_tool(call.tool))
            .key(k.usage_model(call.model))
            .key(k.usage_index("sessions"))
            .key(k.usage_index("tools"))
            .key(k.usage_index("models"))
            .arg(call.session)
            .arg(call.tool)
            .arg(call.model)
            .arg(call.provider)
            .arg(usage.prompt_tokens)
            .arg(usage.completion_tokens)
            .arg(usage.cached_tokens)
            .arg(usage.total_tokens)
            .arg(usage.calls.max(1))
            .arg(self.retention.as_millis().max(1) as u64);
        invocation.invoke_async(&mut self.redis.clone()).await
    }

    /// Session `session`'s total tokens (0 when nothing is recorded): one `HGET`.
    pub async fn session_total(&self, session: &str) -> redis::RedisResult<u64> {
        let total: Option<u64> = self
            .redis
            .clone()
            .hget(self.keys.usage_session(session), "total")
            .await?;
        Ok(total.unwrap_or(0))
    }

    /// Session `session`'s sums, when any are kept.
    pub async fn session(&self, session: &str) -> redis::RedisResult<Option<UsageEntry>> {
        let mut conn = self.redis.clone();
        let last: Option<f64> = conn
            .zscore(self.keys.usage_index("sessions"), session)
            .await?;
        let sums: Vec<(String, String)> = conn.hgetall(self.keys.usage_session(session)).await?;
        if sums.is_empty() {
            return Ok(None);
        }
        Ok(Some(entry(session.to_owned(), last.unwrap_or(0.0), sums)))
    }

    /// The sums of every dimension, at most `limit` names each (most recently used first).
    pub async fn report(&self, limit: usize) -> redis::RedisResult<UsageReport> {
        let limit = limit.clamp(1, REPORT_MAX);
        let sessions = self
            .dimension("sessions", limit, |k, n| k.usage_session(n))
            .await?;
        let tools = self
            .dimension("tools", limit, |k, n| k.usage_tool(n))
            .await?;
        let models = self
            .dimension("models", limit, |k, n| k.usage_model(n))
            .await?;
        let total = models
            .iter()
            .fold(Usage::default(), |sum, m| sum.plus(m.usage));
        Ok(UsageReport {
            retention_secs: self.retention.as_secs(),
            total,
            sessions,
            tools,
            models,
        })
    }

    /// The live names of one dimension and their sums: the index read, then the sums in one
    /// pipeline (all keys share one slot).
    async fn dimension(
        &self,
        dimension: &str,
        limit: usize,
        key: impl Fn(&Keys, &str) -> String,
    ) -> redis::RedisResult<Vec<UsageEntry>> {
        let mut conn = self.redis.clone();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let since = now_ms.saturating_sub(self.retention.as_millis() as u64);
        let names: Vec<(String, f64)> = conn
            .zrevrangebyscore_limit_withscores(
                self.keys.usage_index(dimension),
                "+inf",
                since,
                0,
                limit as isize,
            )
            .await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (name, _) in &names {
            pipe.hgetall(key(&self.keys, name));
        }
        let sums: Vec<Vec<(String, String)>> = pipe.query_async(&mut conn).await?;
        Ok(names
            .into_iter()
            .zip(sums)
            .filter(|(_, sums)| !sums.is_empty())
            .map(|((name, last), sums)| entry(name, last, sums))
            .collect())
    }
}

/// A report line from a sums hash.
fn entry(name: String, last_ms: f64, sums: Vec<(String, String)>) -> UsageEntry {
    let mut usage = Usage::default();
    let mut provider = None;
    for (field, value) in sums {
        let n = || value.parse::<u64>().unwrap_or(0);
        match field.as_str() {
            "calls" => usage.calls = n(),
            "prompt" => usage.prompt_tokens = n(),
            "completion" => usage.completion_tokens = n(),
            "cached" => usage.cached_tokens = n(),
            "total" => usage.total_tokens = n(),
            "provider" => provider = Some(value),
            _ => {}
        }
    }
    UsageEntry {
        name,
        provider,
        usage,
        last_ms: last_ms as u64,
    }
}
