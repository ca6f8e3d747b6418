//! Upstream MCP servers as tool providers: their configuration ([`config`], the file named by
//! `EXAI_MCP_SERVERS`), the catalogue of their tools that the workers publish in Redis and the
//! daemons list and validate from ([`catalogue`]), and the marks that keep a call with side
//! effects from running twice ([`SentMarks`]).
//!
//! A call of an upstream tool is a `tool_calls` job like any other; the worker connected to the
//! server runs it under the server's leased semaphore (`mcp.<name>`). At-least-once delivery
//! meets side effects here: before an attempt sends `tools/call` for a tool that is neither
//! read-only nor idempotent it marks the job sent, and clears the mark once the server answered. An attempt that finds the mark (its predecessor's
//! worker died mid-call) or loses the server mid-call runs the tool again only if the server
//! says the tool is read-only or idempotent; otherwise the call ends `INTERRUPTED`.

pub mod catalogue;
pub mod config;

use std::time::Duration;

use redis::AsyncCommands;

pub use catalogue::{Catalogue, CatalogueEntry, UpstreamTool, UpstreamToolEntry};
pub use config::{Transport, UpstreamServer};

use crate::keys::Keys;
use crate::redis::RedisHandle;

/// How long a sent mark outlives its call at most (a call's result is kept no longer).
pub const SENT_MARK_TTL: Duration = Duration::from_secs(24 * 3600);

/// The sent marks of upstream calls (`P:mcp:sent:<job id>`).
#[derive(Debug, Clone)]
pub struct SentMarks {
    conn: RedisHandle,
    keys: Keys,
}

impl SentMarks {
    /// The marks of the deployment of `keys`.
    pub fn new(conn: RedisHandle, keys: Keys) -> Self {
        Self { conn, keys }
    }

    /// Marks `job_id` sent; false when it was marked already (an earlier attempt sent it and
    /// never heard the answer).
    pub async fn mark(&self, job_id: &str) -> redis::RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.mcp_sent(job_id))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(SENT_MARK_TTL.as_millis() as u64)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Clears `job_id`'s mark (the server answered).
    pub async fn clear(&self, job_id: &str) -> redis::RedisResult<()> {
        self.conn
            .clone()
            .del::<_, ()>(self.keys.mcp_sent(job_id))
            .await
    }
}
