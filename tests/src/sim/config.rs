//! The emulator's settings: fixed at start-up ([`SimConfig`]) and, for the tunable part
//! ([`Tunables`]), changeable at run time through `POST /_sim/config`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::tiers::{self, Tier};

/// 100 MB, Moonshot's per-file limit (taken as MiB: 104,857,600 bytes).
pub const MOONSHOT_MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// 1,000, Moonshot's per-account file count limit.
pub const MOONSHOT_MAX_FILES: u64 = 1_000;
/// 10 GB, Moonshot's per-account total size limit (taken as GiB).
pub const MOONSHOT_MAX_TOTAL_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// 500 MiB, the global `UPLOAD_FILE_SIZE_LIMIT` of Supabase Storage's sample environment (a
/// bucket's own `file_size_limit` can lower it; the hosted free plan's 50 MB is a flag away).
pub const STORAGE_MAX_OBJECT_BYTES: u64 = 500 * 1024 * 1024;

/// The models `GET /v1/models` lists and chat completions accept by default: Moonshot's and, so
/// that an OpenAI-compatible GLM client can be pointed at the emulator too, Zhipu's.
pub const DEFAULT_MODELS: &[&str] = &[
    "kimi-k2-0711-preview",
    "kimi-k2-0905-preview",
    "kimi-k2-turbo-preview",
    "kimi-k2.5",
    "kimi-latest",
    "kimi-thinking-preview",
    "moonshot-v1-8k",
    "moonshot-v1-32k",
    "moonshot-v1-128k",
    "moonshot-v1-auto",
    "glm-4.5",
    "glm-4.5-air",
    "glm-4.5-flash",
    "glm-4.6",
];

/// Everything the emulator is started with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The bearer token every provider request must carry (`Authorization: Bearer <key>`); it
    /// is both the Moonshot API key and the Supabase service-role key.
    pub key: String,
    /// Further Moonshot API keys accepted on `/v1` (each its own account, with its own tier and
    /// bill); Supabase still takes only `key`.
    pub moonshot_keys: Vec<String>,
    /// When set, Supabase routes also require an `apikey` header equal to the key, as the hosted
    /// gateway does (missing: HTTP 401 `{"message":"No API key found in request"}`).
    pub require_apikey: bool,
    /// Buckets created (private) at start-up and after every `POST /_sim/reset`.
    pub buckets: Vec<String>,
    /// The run-time tunable settings' initial values (restored by `POST /_sim/reset`).
    pub tunables: Tunables,
}

impl SimConfig {
    /// A configuration with the given key, no pre-created buckets and the real limits.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            moonshot_keys: Vec::new(),
            require_apikey: false,
            buckets: Vec::new(),
            tunables: Tunables::default(),
        }
    }
}

/// Settings a test may change while the emulator runs (`GET`/`POST /_sim/config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tunables {
    /// Moonshot: most files per account (1,000).
    pub max_files: u64,
    /// Moonshot: largest file in bytes (100 MiB).
    pub max_file_bytes: u64,
    /// Moonshot: largest total of all files in bytes (10 GiB).
    pub max_total_bytes: u64,
    /// Supabase: largest object in bytes unless the bucket's `file_size_limit` is lower (500 MiB).
    pub storage_max_bytes: u64,
    /// Chat completions: how long the model "thinks" before the response (or the first chunk)
    /// is sent; in-flight calls are counted for this whole time, so concurrency can build up.
    pub chat_latency_ms: u64,
    /// Chat completions with `stream: true`: the pause between two content chunks.
    pub stream_chunk_delay_ms: u64,
    /// Chat completions: more in-flight calls than this (across all models) get Moonshot's 429
    /// `rate_limit_reached_error` "…max concurrency…"; `None` is unlimited.
    pub chat_max_concurrency: Option<u64>,
    /// The models listed and accepted; any other gets 404 `resource_not_found_error`.
    pub models: Vec<String>,
    /// The tier of every Moonshot key without one in `tiers`; `None` is unlimited.
    pub tier: Option<Tier>,
    /// Tiers per Moonshot key (overriding `tier`).
    pub tiers: BTreeMap<String, Tier>,
    /// The `max_completion_tokens` a chat request without one is charged for at admission.
    pub default_max_completion_tokens: u64,
    /// Length of the fixed RPM/TPM window (60 s).
    pub rate_window_minute_ms: u64,
    /// Length of the fixed TPD window (24 h).
    pub rate_window_day_ms: u64,
}

impl Tunables {
    /// The tier in force for a Moonshot key, if any.
    pub fn tier_of(&self, key: &str) -> Option<&Tier> {
        self.tiers.get(key).or(self.tier.as_ref())
    }

    /// The admission windows' lengths.
    pub fn windows(&self) -> tiers::Windows {
        tiers::Windows {
            minute: std::time::Duration::from_millis(self.rate_window_minute_ms),
            day: std::time::Duration::from_millis(self.rate_window_day_ms),
        }
    }
}

impl Default for Tunables {
    fn default() -> Self {
        Self {
            max_files: MOONSHOT_MAX_FILES,
            max_file_bytes: MOONSHOT_MAX_FILE_BYTES,
            max_total_bytes: MOONSHOT_MAX_TOTAL_BYTES,
            storage_max_bytes: STORAGE_MAX_OBJECT_BYTES,
            chat_latency_ms: 0,
            stream_chunk_delay_ms: 0,
            chat_max_concurrency: None,
            models: DEFAULT_MODELS.iter().map(|m| (*m).to_owned()).collect(),
            tier: None,
            tiers: BTreeMap::new(),
            default_max_completion_tokens: tiers::DEFAULT_MAX_COMPLETION_TOKENS,
            rate_window_minute_ms: tiers::MINUTE_MS,
            rate_window_day_ms: tiers::DAY_MS,
        }
    }
}

/// A partial [`Tunables`], as `POST /_sim/config` takes it: absent fields keep their value.
/// `chat_max_concurrency: 0` removes the concurrency limit. `tier` replaces the default tier
/// (`"unlimited"` lifts it); `tiers` is merged key by key, a `null` tier removing that key's own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunablesPatch {
    max_files: Option<u64>,
    max_file_bytes: Option<u64>,
    max_total_bytes: Option<u64>,
    storage_max_bytes: Option<u64>,
    chat_latency_ms: Option<u64>,
    stream_chunk_delay_ms: Option<u64>,
    chat_max_concurrency: Option<u64>,
    models: Option<Vec<String>>,
    tier: Option<Tier>,
    tiers: Option<BTreeMap<String, Option<Tier>>>,
    default_max_completion_tokens: Option<u64>,
    rate_window_minute_ms: Option<u64>,
    rate_window_day_ms: Option<u64>,
}

impl TunablesPatch {
    /// Writes the fields present into `t`.
    pub fn apply(self, t: &mut Tunables) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { t.$f = v; } )* };
        }
        set!(
            max_files,
            max_file_bytes,
            max_total_bytes,
            storage_max_bytes,
            chat_latency_ms,
            stream_chunk_delay_ms,
            models,
            default_max_completion_tokens,
            rate_window_minute_ms,
            rate_window_day_ms
        );
        if let Some(tier) = self.tier {
            t.tier = Some(tier);
        }
        for (key, tier) in self.tiers.unwrap_or_default() {
            match tier {
                Some(tier) => t.tiers.insert(key, tier),
                None => t.tiers.remove(&key),
            };
        }
        if let Some(n) = self.chat_max_concurrency {
            t.chat_max_concurrency = (n > 0).then_some(n);
        }
    }
}
