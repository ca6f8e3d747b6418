//! The upstream tools catalogue in Redis: what the workers connected to each upstream MCP server
//! last listed, and the daemon's in-memory snapshot of it.
//!
//! A worker writes one [`CatalogueEntry`] per server (`P:mcp:catalogue`, field = server name)
//! when it connects, when the server says its tools changed, and every
//! [`RENEW_EVERY`] while connected; each entry carries its own expiry ([`ENTRY_TTL`]), so the
//! tools of a server no worker reaches drop out of the listings. The daemon reads the whole hash
//! (one `HGETALL`) when its snapshot is older than [`Catalogue::max_age`], or at once when a call
//! names a tool it does not know, and compiles each tool's input schema once per change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::keys::Keys;
use crate::redis::RedisHandle;
use crate::tools::ArgumentError;

/// How long an entry is listed after the last worker connected to its server renewed it.
pub const ENTRY_TTL: Duration = Duration::from_secs(90);
/// How often a connected worker renews its servers' entries.
pub const RENEW_EVERY: Duration = Duration::from_secs(30);
/// How old the daemon's snapshot may be before a listing reads the catalogue again.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(2);

/// One upstream server's tools, as a worker listed them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogueEntry {
    /// The server's name in `EXAI_MCP_SERVERS`.
    pub server: String,
    /// When the entry stops counting (Unix ms), unless renewed.
    pub expires_ms: u64,
    /// Its tools.
    pub tools: Vec<UpstreamToolEntry>,
}

/// One upstream tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamToolEntry {
    /// The name clients call it by (`<prefix><upstream name>`).
    pub name: String,
    /// Its name on the upstream server.
    pub upstream: String,
    /// How `tools/list` shows it: the upstream's own listing with `name` replaced.
    pub listing: Value,
}

impl UpstreamToolEntry {
    /// `annotations.readOnlyHint` (default false).
    pub fn read_only(&self) -> bool {
        self.hint("readOnlyHint")
    }

    /// `annotations.idempotentHint` (default false).
    pub fn idempotent(&self) -> bool {
        self.hint("idempotentHint")
    }

    /// Whether an attempt may run the tool again after an earlier one may have run it: only
    /// when the server says calling it is read-only or idempotent.
    pub fn rerunnable(&self) -> bool {
        self.read_only() || self.idempotent()
    }

    fn hint(&self, name: &str) -> bool {
        self.listing
            .get("annotations")
            .and_then(|a| a.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// The current time as Unix ms.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `entry` (a worker, after listing the server's tools).
pub async fn publish(
    conn: &RedisHandle,
    keys: &Keys,
    entry: &CatalogueEntry,
) -> redis::RedisResult<()> {
    let json = serde_json::to_string(entry).expect("a catalogue entry serialises");
    conn.clone()
        .hset::<_, _, _, ()>(keys.mcp_catalogue(), &entry.server, json)
        .await
}

/// A fresh entry for `server`'s `tools`, expiring [`ENTRY_TTL`] from now.
pub fn entry(server: &str, tools: Vec<UpstreamToolEntry>) -> CatalogueEntry {
    CatalogueEntry {
        server: server.to_owned(),
        expires_ms: unix_ms() + ENTRY_TTL.as_millis() as u64,
        tools,
    }
}

/// Every unexpired entry, by server name; expired ones are removed.
pub async fn read(conn: &RedisHandle, keys: &Keys) -> redis::RedisResult<Vec<CatalogueEntry>> {
    let raw: HashMap<String, String> = conn.clone().hgetall(keys.mcp_catalogue()).await?;
    let now = unix_ms();
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for (server, json) in raw {
        match serde_json::from_str::<CatalogueEntry>(&json) {
            Ok(e) if e.expires_ms > now => live.push(e),
            _ => expired.push(server),
        }
    }
    if !expired.is_empty() {
        // Best effort: a worker that renews meanwhile writes it again.
        let _: redis::RedisResult<()> = conn.clone().hdel(keys.mcp_catalogue(), expired).await;
    }
    live.sort_by(|a, b| a.server.cmp(&b.server));
    Ok(live)
}

/// One upstream tool as the daemon checks and lists it.
pub struct UpstreamTool {
    /// Its entry.
    pub entry: UpstreamToolEntry,
    /// The server's name.
    pub server: String,
    validator: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for UpstreamTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTool")
            .field("name", &self.entry.name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl UpstreamTool {
    fn new(server: &str, entry: UpstreamToolEntry) -> Self {
        // A schema this validator cannot compile is left to the upstream to enforce.
        let validator = entry
            .listing
            .get("inputSchema")
            .and_then(|s| jsonschema::validator_for(s).ok());
        Self {
            entry,
            server: server.to_owned(),
            validator,
        }
    }

    /// The name clients call it by.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Checks `arguments` against the upstream's input schema.
    pub fn validate(&self, arguments: &Value) -> Result<(), ArgumentError> {
        match &self.validator {
            Some(v) => crate::tools::check(v, &self.entry.name, arguments),
            None => Ok(()),
        }
    }
}

/// A snapshot of the catalogue: the tools by name, in listing order.
#[derive(Debug, Default)]
pub struct Snapshot {
    tools: Vec<Arc<UpstreamTool>>,
    by_name: HashMap<String, Arc<UpstreamTool>>,
}

impl Snapshot {
    fn from_entries(entries: Vec<CatalogueEntry>) -> Self {
        let mut snapshot = Self::default();
        for entry in entries {
            for tool in entry.tools {
                if snapshot.by_name.contains_key(&tool.name) {
                    continue;
                }
                let tool = Arc::new(UpstreamTool::new(&entry.server, tool));
                snapshot
                    .by_name
                    .insert(tool.entry.name.clone(), Arc::clone(&tool));
                snapshot.tools.push(tool);
            }
        }
        snapshot
    }

    /// The tool called `name`.
    pub fn find(&self, name: &str) -> Option<&Arc<UpstreamTool>> {
        self.by_name.get(name)
    }

    /// Every tool, servers in name order, each server's tools in its order.
    pub fn tools(&self) -> &[Arc<UpstreamTool>] {
        &self.tools
    }
}

/// The daemon's view of the catalogue: a snapshot, read again when older than
/// [`max_age`](Self::max_age) (one reader at a time; the others use the snapshot they have).
#[derive(Debug)]
pub struct Catalogue {
    conn: RedisHandle,
    keys: Keys,
    max_age: Duration,
    current: std::sync::RwLock<(Instant, Option<Arc<Snapshot>>)>,
    reading: Mutex<()>,
}

impl Catalogue {
    /// A catalogue read through `conn`; nothing is read until it is asked for.
    pub fn new(conn: RedisHandle, keys: Keys) -> Self {
        Self {
            conn,
            keys,
            max_age: SNAPSHOT_MAX_AGE,
            current: std::sync::RwLock::new((Instant::now(), None)),
            reading: Mutex::new(()),
        }
    }

    /// How old a snapshot may be before it is read again.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The snapshot as last read, however old (empty before the first read); never waits.
    pub fn current(&self) -> Arc<Snapshot> {
        let current = self.current.read().expect("catalogue lock");
        current.1.clone().unwrap_or_default()
    }

    fn cached(&self, max_age: Duration) -> Option<Arc<Snapshot>> {
        let current = self.current.read().expect("catalogue lock");
        match &current.1 {
            Some(s) if current.0.elapsed() <= max_age => Some(Arc::clone(s)),
            _ => None,
        }
    }

    /// The snapshot, read again first when it is older than [`max_age`](Self::max_age). When
    /// Redis cannot be read, the last snapshot (or an empty one) is used and the error logged.
    pub async fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot_within(self.max_age).await
    }

    /// The snapshot, read again when it is older than `max_age` (zero: read now, unless another
    /// caller is reading it right now, whose result is used).
    pub async fn snapshot_within(&self, max_age: Duration) -> Arc<Snapshot> {
        if let Some(s) = self.cached(max_age) {
            return s;
        }
        let asked = Instant::now();
        let _reading = self.reading.lock().await;
        {
            let current = self.current.read().expect("catalogue lock");
            if let Some(s) = &current.1
                && current.0 >= asked
            {
                return Arc::clone(s);
            }
        }
        let read_at = Instant::now();
        let snapshot = match read(&self.conn, &self.keys).await {
            Ok(entries) => Arc::new(Snapshot::from_entries(entries)),
            Err(e) => {
                tracing::warn!(error = %e, "the upstream tools catalogue could not be read");
                let current = self.current.read().expect("catalogue lock");
                current.1.clone().unwrap_or_default()
            }
        };
        *self.current.write().expect("catalogue lock") = (read_at, Some(Arc::clone(&snapshot)));
        snapshot
    }
}
