//! MCP sessions in Redis ([`RedisSessionStore`], rmcp's `SessionStore`): a session's
//! `initialize` parameters under `P:mcp:session:<sha256 of id>`, with the TTL
//! `EXAI_MCP_SESSION_TTL_SECS`. A daemon that meets a session id it does not hold in memory
//! (another daemon issued it, or this one restarted) loads the record and rmcp replays the
//! handshake, so the client goes on without initializing again.

use std::time::Duration;

use exai_shared::keys::Keys;
use exai_shared::redis::RedisHandle;
use redis::AsyncCommands;
use rmcp::transport::streamable_http_server::session::{
    SessionState, SessionStore, SessionStoreError,
};
use sha2::{Digest, Sha256};

/// The sessions' records in Redis.
#[derive(Clone)]
pub(crate) struct RedisSessionStore {
    redis: RedisHandle,
    keys: Keys,
    ttl: Duration,
}

impl RedisSessionStore {
    /// A store in `redis` under `keys`' prefix, whose records live `ttl` past their last use.
    pub(crate) fn new(redis: RedisHandle, keys: Keys, ttl: Duration) -> Self {
        Self { redis, keys, ttl }
    }

    fn key(&self, session_id: &str) -> String {
        let digest = Sha256::digest(session_id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.keys.mcp_session(&hex)
    }

    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    /// Renews the record of `session_id` for another TTL; `false` when there is none.
    pub(crate) async fn touch(&self, session_id: &str) -> redis::RedisResult<bool> {
        let mut redis = self.redis.clone();
        redis
            .expire(self.key(session_id), self.ttl_secs() as i64)
            .await
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisSessionStore {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let mut redis = self.redis.clone();
        let key = self.key(session_id);
        let (text, _): (Option<String>, bool) = redis::pipe()
            .get(&key)
            .expire(&key, self.ttl_secs() as i64)
            .query_async(&mut redis)
            .await?;
        Ok(match text {
            Some(text) => Some(serde_json::from_str(&text)?),
            None => None,
        })
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let mut redis = self.redis.clone();
        let text = serde_json::to_string(state)?;
        let () = redis
            .set_ex(self.key(session_id), text, self.ttl_secs())
            .await?;
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        let mut redis = self.redis.clone();
        let _: usize = redis.del(self.key(session_id)).await?;
        Ok(())
    }
}
