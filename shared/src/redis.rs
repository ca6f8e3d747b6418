//! Redis connections and the key layout.
//!
//! [`RedisHandle`] hides whether the deployment runs one Redis or a Redis Cluster: both speak
//! through [`redis::aio::ConnectionLike`], so scripts and commands are written once. Every key is
//! built by [`Keys`]; nothing else in the workspace formats a key string.
//!
//! Layout (prefix `P`, from `EXAI_REDIS_PREFIX`): each family of keys that one Lua script touches
//! shares one hash tag, so every script runs on a single cluster slot.
//!
//! | key | type | what |
//! |---|---|---|
//! | `{P:sem}:lease:<name>` | zset | live leases of semaphore `name`, score = expiry (ms, Redis clock) |
//! | `{P:sem}:holder` | hash | lease token → JSON holder info (holder id, job id, fence) |
//! | `{P:sem}:limits` | hash | name → limit, set at runtime; absent names take the config default |
//! | `{P:sem}:fence` | string | the monotonic fencing counter of all grants |
//! | `P:sem:released` | pub/sub channel | the names of a released semaphore lease (and limit changes) |
//! | `P:ev:<job id>` | pub/sub channel | the job's events ([`JobEvent`](crate::events::JobEvent)) |
//! | `{P:cleanup}:last` | string | the last orphan cleanup report (JSON, with its time and tick) |
//! | `{P:cleanup}:history` | list | the recent cleanup reports, newest first (capped) |
//! | `{P:q:<queue>}:…` | various | one queue's lists, sorted sets and job hashes: see [`crate::queue`] |
//! | `P:cleanup:last` | string | the JSON report of the last orphan cleanup run (with `finished_at_ms`) |

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use secrecy::ExposeSecret;

use crate::config::RedisConfig;

/// How long one command may take before the client gives up on it. Generous on purpose: a slow
/// Redis (a fork for AOF rewrite, a big script) must not kill a worker.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A cloneable, multiplexed, self-reconnecting connection to Redis or a Redis Cluster.
#[derive(Clone)]
pub enum RedisHandle {
    /// One Redis server, through a [`ConnectionManager`] that reconnects with backoff.
    Single(ConnectionManager),
    /// A Redis Cluster; the client follows MOVED/ASK and reconnects by itself.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("RedisHandle::Single"),
            Self::Cluster(_) => f.write_str("RedisHandle::Cluster"),
        }
    }
}

impl RedisHandle {
    /// Connects according to the configuration: cluster mode when seeds are given.
    pub async fn connect(config: &RedisConfig) -> redis::RedisResult<Self> {
        if config.cluster_nodes.is_empty() {
            let client = redis::Client::open(config.url.expose_secret())?;
            let manager_config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_number_of_retries(6)
                .set_max_delay(Duration::from_secs(2));
            let manager = ConnectionManager::new_with_config(client, manager_config).await?;
            Ok(Self::Single(manager))
        } else {
            let seeds: Vec<String> = config
                .cluster_nodes
                .iter()
                .map(|s| s.expose_secret().to_owned())
                .collect();
            let client = ClusterClientBuilder::new(seeds)
                .response_timeout(RESPONSE_TIMEOUT)
                .connection_timeout(CONNECT_TIMEOUT)
                .retries(6)
                .build()?;
            Ok(Self::Cluster(client.get_async_connection().await?))
        }
    }

    /// A client for a dedicated pub/sub connection. In cluster mode, classic `PUBLISH` reaches
    /// every node, so subscribing on the first seed hears publishes made anywhere.
    pub fn pubsub_client(config: &RedisConfig) -> redis::RedisResult<redis::Client> {
        let url = config
            .cluster_nodes
            .first()
            .unwrap_or(&config.url)
            .expose_secret()
            .to_owned();
        redis::Client::open(url)
    }
}

impl ConnectionLike for RedisHandle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis key layout of one deployment (one `EXAI_REDIS_PREFIX`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The layout under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The deployment's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The sorted set of live leases of semaphore `name`.
    pub fn sem_leases(&self, name: &str) -> String {
        format!("{{{}:sem}}:lease:{name}", self.prefix)
    }

    /// Lease token → JSON holder info, for every semaphore.
    pub fn sem_holders(&self) -> String {
        format!("{{{}:sem}}:holder", self.prefix)
    }

    /// Name → limit overrides set at runtime.
    pub fn sem_limits(&self) -> String {
        format!("{{{}:sem}}:limits", self.prefix)
    }

    /// The monotonic fencing counter.
    pub fn sem_fence(&self) -> String {
        format!("{{{}:sem}}:fence", self.prefix)
    }

    /// The set of every semaphore name ever acquired, for inspection.
    pub fn sem_names(&self) -> String {
        format!("{{{}:sem}}:names", self.prefix)
    }

    /// The pub/sub channel of one job's events (progress, chunks, finished).
    pub fn job_events(&self, job_id: &str) -> String {
        format!("{}:ev:{job_id}", self.prefix)
    }

    /// The pub/sub channel on which releases are announced.
    pub fn sem_released_channel(&self) -> String {
        format!("{}:sem:released", self.prefix)
    }

    /// The last orphan cleanup report (a JSON string: when, which tick, the report).
    pub fn cleanup_last(&self) -> String {
        format!("{{{}:cleanup}}:last", self.prefix)
    }

    /// The recent orphan cleanup reports, newest first (a capped list of the same JSON).
    pub fn cleanup_history(&self) -> String {
        format!("{{{}:cleanup}}:history", self.prefix)
    }

    /// The sorted set of registered worker processes: member = worker id, score = when its
    /// registration expires (Unix ms, Redis clock).
    pub fn workers_live(&self) -> String {
        format!("{{{}:workers}}:live", self.prefix)
    }

    /// Worker id → JSON description of the worker process (see [`crate::workers`]).
    pub fn workers_info(&self) -> String {
        format!("{{{}:workers}}:info", self.prefix)
    }

    /// The keys of queue `name`, all under the hash tag `{P:q:<name>}` (see
    /// [`crate::queue`] for the layout).
    pub fn queue(&self, name: &str) -> crate::queue::QueueKeys {
        crate::queue::QueueKeys::new(&self.prefix, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semaphore_keys_share_one_hash_tag() {
        let k = Keys::new("t1");
        let tag = |s: String| {
            let open = s.find('{').unwrap();
            let close = s.find('}').unwrap();
            s[open + 1..close].to_owned()
        };
        let tags = [
            tag(k.sem_leases("global")),
            tag(k.sem_leases("kimi")),
            tag(k.sem_holders()),
            tag(k.sem_limits()),
            tag(k.sem_fence()),
            tag(k.sem_names()),
        ];
        assert!(tags.iter().all(|t| t == "t1:sem"), "{tags:?}");
        assert_eq!(tag(k.workers_live()), tag(k.workers_info()));
    }

    #[test]
    fn the_cleanup_report_key_is_under_the_prefix() {
        assert_eq!(Keys::new("t1").cleanup_last(), "{t1:cleanup}:last");
    }
}
