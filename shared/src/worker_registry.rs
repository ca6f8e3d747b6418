//! The registry of live worker processes, which the daemon's `/health` lists.
//!
//! Two keys under one hash tag (`{P:workers}`): a sorted set of worker ids scored by when their
//! registration expires, and a hash of id → JSON [`WorkerInfo`]. A worker registers at start,
//! renews every third of its TTL ([`run_heartbeat`]) and removes itself on a clean stop. A worker
//! that dies without a word (SIGKILL, lost machine) stops renewing and drops out of the list
//! once its TTL has passed; its entry is deleted by the next registration or listing. Every
//! time is Redis's own clock (`TIME` in the scripts), so the hosts' clocks do not matter.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::keys::Keys;
use crate::redis::RedisHandle;

/// Most expired entries one script call deletes (the rest go on the next call).
const PURGE_BATCH: usize = 100;

/// The longest a stopping worker waits to deregister.
const DEREGISTER_WAIT: Duration = Duration::from_secs(2);

/// Upsert: `KEYS` 1 live set, 2 info hash; `ARGV` 1 id, 2 JSON info (without the stamps),
/// 3 TTL in ms, 4 purge batch. Stamps `last_seen_ms` and `started_at_ms` (kept from the first
/// registration) with Redis time, and deletes up to a batch of expired entries.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
-- ARGV[2] is a JSON object without the two stamps; they are appended before its closing brace.
local started = now
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local prev = string.match(old, '"started_at_ms":(%d+)')
  if prev then started = tonumber(prev) end
end
local body = string.sub(ARGV[2], 1, -2)
redis.call('HSET', KEYS[2], ARGV[1], string.format('%s,"started_at_ms":%d,"last_seen_ms":%d}', body, started, now))
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return now
"#,
    )
});

/// Live entries: `KEYS` 1 live set, 2 info hash; `ARGV` 1 purge batch. Deletes up to a batch of
/// expired entries, then returns the JSON info of every live one and Redis's time.
static LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local out = {now}
for _, id in ipairs(ids) do
  local info = redis.call('HGET', KEYS[2], id)
  if info then table.insert(out, info) end
end
return out
"#,
    )
});

/// One worker process, as it registered itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker id (host, pid, random suffix), also the lease holder of its jobs.
    pub id: String,
    /// The host name.
    pub host: String,
    /// The process id on that host.
    pub pid: u32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Jobs of each queue it runs at once.
    pub concurrency: usize,
    /// How long its registration lasts without a renewal, in milliseconds.
    pub ttl_ms: u64,
    /// When it first registered (Unix ms, Redis clock); set by the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// Its last renewal (Unix ms, Redis clock); set by the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
}

/// The registry of one deployment.
#[derive(Debug, Clone)]
pub struct WorkerRegistry {
    conn: RedisHandle,
    live: String,
    info: String,
}

impl WorkerRegistry {
    /// The registry under `keys`' prefix.
    pub fn new(conn: RedisHandle, keys: &Keys) -> Self {
        Self {
            conn,
            live: keys.workers_live(),
            info: keys.workers_info(),
        }
    }

    /// Registers `worker`, or renews its registration, for `worker.ttl_ms` from now.
    pub async fn heartbeat(&self, worker: &WorkerInfo) -> redis::RedisResult<()> {
        let mut info = worker.clone();
        info.started_at_ms = None;
        info.last_seen_ms = None;
        let json = serde_json::to_string(&info).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "encode worker info",
                e.to_string(),
            ))
        })?;
        let _: i64 = HEARTBEAT
            .key(&self.live)
            .key(&self.info)
            .arg(&worker.id)
            .arg(json)
            .arg(worker.ttl_ms.max(1))
            .arg(PURGE_BATCH)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Removes worker `id` (a clean stop).
    pub async fn deregister(&self, id: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .zrem(&self.live, id)
            .ignore()
            .hdel(&self.info, id)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Every worker whose registration has not expired, oldest first.
    pub async fn live(&self) -> redis::RedisResult<Vec<WorkerInfo>> {
        let reply: Vec<redis::Value> = LIVE
            .key(&self.live)
            .key(&self.info)
            .arg(PURGE_BATCH)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let mut out: Vec<WorkerInfo> = reply
            .iter()
            .skip(1)
            .filter_map(|v| match v {
                redis::Value::BulkString(b) => serde_json::from_slice(b).ok(),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| {
            a.started_at_ms
                .cmp(&b.started_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }
}

/// Registers `worker`, renews every third of its TTL until `stop` fires, then deregisters it.
/// Redis errors are logged and retried at the next period: the registry is for operators, and
/// never stops a worker.
pub async fn run_heartbeat(registry: WorkerRegistry, worker: WorkerInfo, stop: CancellationToken) {
    let period = Duration::from_millis((worker.ttl_ms / 3).max(10));
    loop {
        // A heartbeat stuck on an unreachable Redis never delays the stop.
        tokio::select! {
            _ = stop.cancelled() => break,
            r = registry.heartbeat(&worker) => if let Err(e) = r {
                tracing::warn!(worker_id = %worker.id, error = %e, "worker registry heartbeat failed");
            },
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
    }
    // Best effort, and short: without it the entry still expires after its TTL.
    match tokio::time::timeout(DEREGISTER_WAIT, registry.deregister(&worker.id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(worker_id = %worker.id, error = %e, "worker registry: deregister failed")
        }
        Err(_) => tracing::warn!(worker_id = %worker.id, "worker registry: deregister timed out"),
    }
}
