//! Redis connections.
//!
//! [`RedisHandle`] hides whether the deployment runs one Redis or a Redis Cluster: both speak
//! through [`redis::aio::ConnectionLike`], so scripts and commands are written once. Keys are
//! built by [`Keys`](crate::keys::Keys) (see [`crate::keys`] for the layout); pub/sub goes
//! through the process's one [`Subscriber`](crate::subscriber::Subscriber), on a connection
//! from [`RedisHandle::pubsub_client`].

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

    /// A client for the process's dedicated pub/sub connection (see
    /// [`Subscriber::connect`](crate::subscriber::Subscriber::connect)). In cluster mode, classic `PUBLISH` reaches
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
