//! The emulator's in-memory state: Moonshot files, Supabase buckets and objects, chat
//! concurrency, the request log, faults, and the live connections.
//!
//! Every lock here is a `std::sync::Mutex` held for a few statements and never across an
//! `.await`. File and object bytes are [`Bytes`]: stored once, handed out by reference count.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::{SimConfig, Tunables};
use super::faults::{Down, DownMode, Faults};
use super::tiers::Accounts;

/// The most request records kept; older ones are forgotten first.
pub const MAX_RECORDS: usize = 10_000;

/// A file uploaded to the emulated Moonshot.
#[derive(Debug, Clone)]
pub struct MoonFile {
    /// The opaque id (20 lowercase base32 characters, like the real ones).
    pub id: String,
    /// The multipart part's filename.
    pub filename: String,
    /// The form field `purpose`.
    pub purpose: String,
    /// The bytes.
    pub data: Bytes,
    /// Their sha256, computed when first asked for.
    pub sha256: LazyHash,
    /// Unix seconds.
    pub created_at: i64,
}

/// A Supabase Storage bucket and its objects.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The bucket id (the path segment).
    pub id: String,
    /// Its name (equal to the id unless created with both).
    pub name: String,
    /// Whether `/object/public/...` serves it without a JWT.
    pub public: bool,
    /// The bucket's own size limit in bytes.
    pub file_size_limit: Option<u64>,
    /// The mime types allowed (`image/*` wildcards), none meaning any.
    pub allowed_mime_types: Option<Vec<String>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update time.
    pub updated_at: DateTime<Utc>,
    /// Objects by full name, sorted.
    pub objects: BTreeMap<String, Object>,
}

/// A stored Supabase object.
#[derive(Debug, Clone)]
pub struct Object {
    /// The row id; kept when the object is overwritten.
    pub id: uuid::Uuid,
    /// Changes on every write.
    pub version: uuid::Uuid,
    /// The bytes.
    pub data: Bytes,
    /// Their sha256, computed when first asked for.
    pub sha256: LazyHash,
    /// The stored content type.
    pub mimetype: String,
    /// The stored `Cache-Control`.
    pub cache_control: String,
    /// `user_metadata` (multipart `metadata` field or `x-metadata` header).
    pub user_metadata: Option<Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write time.
    pub updated_at: DateTime<Utc>,
}

impl Object {
    /// The quoted ETag the emulator sends (the version: opaque, new on every write).
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version.simple())
    }

    /// The `metadata` column as the server writes it.
    pub fn metadata(&self) -> Value {
        serde_json::json!({
            "eTag": self.etag(),
            "size": self.data.len(),
            "mimetype": self.mimetype,
            "cacheControl": self.cache_control,
            "lastModified": self.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "contentLength": self.data.len(),
            "httpStatusCode": 200,
        })
    }

    /// The object row (`objectSchema`) the bulk delete returns.
    pub fn row(&self, bucket: &str, name: &str) -> Value {
        serde_json::json!({
            "bucket_id": bucket,
            "name": name,
            "owner": null,
            "owner_id": null,
            "id": self.id,
            "version": self.version,
            "updated_at": ts(self.updated_at),
            "created_at": ts(self.created_at),
            "last_accessed_at": ts(self.updated_at),
            "metadata": self.metadata(),
            "user_metadata": self.user_metadata,
        })
    }
}

/// The lowercase hex sha256 of some bytes, computed on first use and shared by clones.
///
/// Uploads are not hashed on the way in: only tests that look at `GET /_sim/state` pay for it
/// (which matters for 100 MB bodies in unoptimised test builds).
#[derive(Debug, Clone, Default)]
pub struct LazyHash(Arc<OnceLock<String>>);

impl LazyHash {
    /// The hash of `data`, which must be the bytes this hash belongs to.
    pub fn get(&self, data: &[u8]) -> &str {
        self.0.get_or_init(|| {
            use sha2::Digest;
            format!("{:x}", sha2::Sha256::digest(data))
        })
    }
}

/// A timestamp as the Storage API renders it.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Files and objects: the provider-visible state.
#[derive(Debug, Default)]
pub struct Store {
    /// Moonshot files in upload order.
    pub files: Vec<MoonFile>,
    /// Supabase buckets by id.
    pub buckets: BTreeMap<String, Bucket>,
}

impl Store {
    /// The Moonshot total of all file sizes.
    pub fn total_file_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.data.len() as u64).sum()
    }

    /// A Moonshot file by id.
    pub fn file(&self, id: &str) -> Option<&MoonFile> {
        self.files.iter().find(|f| f.id == id)
    }

    /// Creates a private bucket with default settings, if missing.
    pub fn ensure_bucket(&mut self, id: &str) {
        let now = Utc::now();
        self.buckets.entry(id.to_owned()).or_insert_with(|| Bucket {
            id: id.to_owned(),
            name: id.to_owned(),
            public: false,
            file_size_limit: None,
            allowed_mime_types: None,
            created_at: now,
            updated_at: now,
            objects: BTreeMap::new(),
        });
    }
}

/// Live and peak counts of in-flight chat completions.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ChatStats {
    /// In flight now, all models.
    pub in_flight: u64,
    /// The most ever in flight at once, all models.
    pub peak: u64,
    /// In flight now, per model.
    pub in_flight_by_model: BTreeMap<String, u64>,
    /// The most ever in flight at once, per model.
    pub peak_by_model: BTreeMap<String, u64>,
    /// Completions answered (fully streamed, for `stream: true`).
    pub completed: u64,
    /// Calls refused by `chat_max_concurrency` or a tier limit.
    pub rejected: u64,
}

/// One request the emulator received on a provider route.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Sequence number, from 1, in arrival order.
    pub seq: u64,
    /// Arrival time, unix milliseconds.
    pub time_ms: i64,
    /// The method.
    pub method: String,
    /// The path (percent-encoded as received).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The route name (`moonshot.files.upload`, …, or `unknown`).
    pub route: &'static str,
    /// The HTTP status sent; `None` when the connection was dropped.
    pub status: Option<u16>,
    /// `ok` (the handler answered), `auth` (refused for its credentials), `fault` (a rule
    /// answered), `dropped` (closed without a response) or `down`.
    pub outcome: &'static str,
    /// The id of the fault rule that decided the answer.
    pub fault: Option<u64>,
    /// Latency added by delay rules.
    pub delay_ms: u64,
    /// Request body bytes read.
    pub request_bytes: u64,
    /// Time from arrival to the response head (or the drop).
    pub duration_ms: u64,
    /// Route-specific facts: the uploaded file id, the object key, the chat request body…
    pub detail: Option<Value>,
}

/// The request log.
#[derive(Debug, Default)]
pub struct Records {
    next_seq: u64,
    list: VecDeque<Record>,
}

impl Records {
    /// Appends a record, giving it its sequence number.
    pub fn push(&mut self, mut record: Record) {
        self.next_seq += 1;
        record.seq = self.next_seq;
        if self.list.len() == MAX_RECORDS {
            self.list.pop_front();
        }
        self.list.push_back(record);
    }

    /// The records, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.list.iter()
    }
}

/// The live connections, so that going down can close them.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: u64,
    live: HashMap<u64, CancellationToken>,
}

impl Connections {
    /// Registers a connection; its token closes it.
    pub fn open(&mut self) -> (u64, CancellationToken) {
        self.next_id += 1;
        let token = CancellationToken::new();
        self.live.insert(self.next_id, token.clone());
        (self.next_id, token)
    }

    /// Forgets a closed connection.
    pub fn close(&mut self, id: u64) {
        self.live.remove(&id);
    }

    /// Closes every connection but `keep`.
    pub fn kill_all_but(&mut self, keep: u64) {
        for (id, token) in &self.live {
            if *id != keep {
                token.cancel();
            }
        }
    }
}

/// Everything the handlers share, behind one `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// The start-up configuration (immutable).
    pub config: SimConfig,
    /// The tunables in force.
    pub tunables: RwLock<Tunables>,
    /// Files and objects.
    pub store: Mutex<Store>,
    /// Chat concurrency counters.
    pub chat: Mutex<ChatStats>,
    /// Per-key admission (tiers) and bills. Locked after `chat` when both are held.
    pub accounts: Mutex<Accounts>,
    /// The request log.
    pub records: Mutex<Records>,
    /// Fault rules and the down switch.
    pub faults: Mutex<Faults>,
    /// Live connections.
    pub conns: Mutex<Connections>,
    /// Bumped whenever the down switch changes, to wake the accept loop.
    pub down_changed: watch::Sender<u64>,
}

impl Shared {
    /// Fresh state for `config`.
    pub fn new(config: SimConfig) -> Self {
        let tunables = config.tunables.clone();
        let shared = Self {
            config,
            tunables: RwLock::new(tunables),
            store: Mutex::default(),
            chat: Mutex::default(),
            accounts: Mutex::default(),
            records: Mutex::default(),
            faults: Mutex::default(),
            conns: Mutex::default(),
            down_changed: watch::Sender::new(0),
        };
        shared.reset();
        shared
    }

    /// Back to the start-up state: no files, the configured buckets (empty), no records, no
    /// faults, up, counters zeroed, tunables as configured.
    pub fn reset(&self) {
        *self.tunables.write().unwrap_or_else(|e| e.into_inner()) = self.config.tunables.clone();
        {
            let mut store = lock(&self.store);
            *store = Store::default();
            for bucket in &self.config.buckets {
                store.ensure_bucket(bucket);
            }
        }
        // In-flight calls keep decrementing their own counters, so only the history is cleared.
        {
            let mut chat = lock(&self.chat);
            chat.peak = chat.in_flight;
            chat.peak_by_model = chat.in_flight_by_model.clone();
            chat.completed = 0;
            chat.rejected = 0;
        }
        lock(&self.accounts).reset();
        *lock(&self.records) = Records::default();
        {
            let mut faults = lock(&self.faults);
            *faults = Faults::default();
        }
        self.down_changed.send_modify(|v| *v += 1);
    }

    /// A copy of the tunables in force.
    pub fn tunables(&self) -> Tunables {
        self.tunables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The outage in force, if any.
    pub fn down(&self) -> Option<Down> {
        lock(&self.faults).down()
    }

    /// Whether the listening socket should be closed now, and until when.
    pub fn refusing(&self) -> Option<Option<std::time::Instant>> {
        self.down()
            .filter(|d| d.mode == DownMode::Refuse)
            .map(|d| d.until)
    }
}

/// Locks a mutex, ignoring poisoning (a panicking handler must not wedge the emulator).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
