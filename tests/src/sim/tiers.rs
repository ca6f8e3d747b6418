//! Moonshot's account tiers: per-key concurrency, RPM, TPM and TPD limits, admission the way
//! Moonshot counts, and the bill (`GET /_sim/usage`).
//!
//! Facts from `shared/reference/provider-limits.md` §1 and `provider-apis.md` §1.8:
//! - The presets are the published tier table (Tier0 … Tier5). Real accounts see other numbers
//!   too, so explicit numbers override a preset.
//! - A chat request costs `prompt tokens + max_completion_tokens` (or `max_tokens`, default 1024)
//!   against TPM and TPD at admission, whatever it then generates (documented); there is no refund
//!   afterwards (inferred, conservative). RPM counts requests; concurrency counts requests in
//!   flight for their whole duration, a stream until its end (inferred).
//! - The limits are checked in the order concurrency, RPM, TPM, TPD (inferred); a refused
//!   request is charged nothing (not documented for Moonshot, inferred).
//! - The real windows are **not documented** (fixed or sliding, aligned or not, the day's time
//!   zone). The emulator uses fixed windows that open with the first request after the previous
//!   one closed: `rate_window_minute_ms` (60 s) and `rate_window_day_ms` (24 h) long (inferred).
//! - Real limits apply to the user/organisation, not to the key (documented); in the emulator each
//!   accepted key is its own account (organisation, project and key ids derived from the key).
//! - Billing is prompt tokens plus the tokens actually generated (documented).
//! - Prompt tokens are an **estimate**: the UTF-8 bytes of the messages' text divided by 4,
//!   rounded up, at least 1 (see [`estimate_prompt_tokens`]); completion tokens are the words
//!   of the answer. The real tokenizer differs.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `max_completion_tokens` assumed when a request names none ("a good integer like 1024").
pub const DEFAULT_MAX_COMPLETION_TOKENS: u64 = 1024;
/// Length of the fixed per-minute window, in ms.
pub const MINUTE_MS: u64 = 60_000;
/// Length of the fixed per-day window, in ms.
pub const DAY_MS: u64 = 86_400_000;

/// The limits in force for one account; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Requests in flight at once.
    pub concurrency: Option<u64>,
    /// Requests per minute window.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion cap) per minute window.
    pub tpm: Option<u64>,
    /// Tokens (prompt + completion cap) per day window.
    pub tpd: Option<u64>,
}

const fn limits(concurrency: u64, rpm: u64, tpm: u64, tpd: Option<u64>) -> Limits {
    Limits {
        concurrency: Some(concurrency),
        rpm: Some(rpm),
        tpm: Some(tpm),
        tpd,
    }
}

/// The published tier table (platform.moonshot.ai/docs/pricing/limits), plus `unlimited`.
pub const PRESETS: &[(&str, Limits)] = &[
    ("tier0", limits(1, 3, 500_000, Some(1_500_000))),
    ("tier1", limits(50, 200, 2_000_000, None)),
    ("tier2", limits(100, 500, 3_000_000, None)),
    ("tier3", limits(200, 5_000, 3_000_000, None)),
    ("tier4", limits(400, 5_000, 4_000_000, None)),
    ("tier5", limits(1_000, 10_000, 5_000_000, None)),
    (
        "unlimited",
        Limits {
            concurrency: None,
            rpm: None,
            tpm: None,
            tpd: None,
        },
    ),
];

/// An account's tier: a preset and/or explicit numbers (which win; 0 = unlimited).
///
/// In JSON either a preset name (`"tier2"`) or an object
/// `{"preset"?, "concurrency"?, "rpm"?, "tpm"?, "tpd"?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TierRepr")]
pub struct Tier {
    /// One of [`PRESETS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Overrides the preset's concurrency (0 = unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    /// Overrides the preset's RPM (0 = unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Overrides the preset's TPM (0 = unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Overrides the preset's TPD (0 = unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpd: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TierRepr {
    Preset(String),
    Explicit(TierFields),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFields {
    preset: Option<String>,
    concurrency: Option<u64>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    tpd: Option<u64>,
}

impl TryFrom<TierRepr> for Tier {
    type Error = String;

    fn try_from(repr: TierRepr) -> Result<Self, String> {
        let tier = match repr {
            TierRepr::Preset(p) => Tier {
                preset: Some(p),
                ..Tier::default()
            },
            TierRepr::Explicit(f) => Tier {
                preset: f.preset,
                concurrency: f.concurrency,
                rpm: f.rpm,
                tpm: f.tpm,
                tpd: f.tpd,
            },
        };
        if let Some(p) = &tier.preset
            && preset(p).is_none()
        {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown tier preset {p:?} (one of {})",
                names.join(", ")
            ));
        }
        Ok(tier)
    }
}

fn preset(name: &str) -> Option<Limits> {
    PRESETS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, l)| *l)
}

impl Tier {
    /// A preset by name, if it is one.
    pub fn preset(name: &str) -> Option<Self> {
        preset(name).map(|_| Tier {
            preset: Some(name.to_ascii_lowercase()),
            ..Tier::default()
        })
    }

    /// Parses a tier as the command line gives it: a preset name or the JSON object.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            serde_json::from_value(Value::String(text.to_owned())).map_err(|e| e.to_string())
        }
    }

    /// The limits in force: the preset's, overridden by the explicit numbers.
    pub fn limits(&self) -> Limits {
        let base = self.preset.as_deref().and_then(preset).unwrap_or_default();
        let pick = |explicit: Option<u64>, preset: Option<u64>| match explicit {
            Some(0) => None,
            Some(n) => Some(n),
            None => preset,
        };
        Limits {
            concurrency: pick(self.concurrency, base.concurrency),
            rpm: pick(self.rpm, base.rpm),
            tpm: pick(self.tpm, base.tpm),
            tpd: pick(self.tpd, base.tpd),
        }
    }

    /// The name `Msh-Gid` carries: the preset, or `custom` (the real header reads like
    /// `enterprise-tier-3`; its meaning is inferred).
    pub fn group(&self) -> String {
        let custom = self.concurrency.is_some()
            || self.rpm.is_some()
            || self.tpm.is_some()
            || self.tpd.is_some();
        match &self.preset {
            Some(p) if !custom => p.clone(),
            _ => "custom".to_owned(),
        }
    }
}

/// The prompt-token estimate: the UTF-8 bytes of the messages' text / 4, rounded up, at least 1.
/// An estimate (about 4 bytes a token for English), not Moonshot's tokenizer.
pub fn estimate_prompt_tokens(texts: impl IntoIterator<Item = impl AsRef<str>>) -> u64 {
    let bytes: usize = texts.into_iter().map(|t| t.as_ref().len()).sum();
    (bytes.div_ceil(4) as u64).max(1)
}

/// The limit a request was refused for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many in flight.
    Concurrency {
        /// The limit.
        limit: u64,
    },
    /// Too many requests this minute.
    Rpm {
        /// The limit.
        limit: u64,
    },
    /// Too many tokens this minute.
    Tpm {
        /// Tokens counted this window, including the refused request's own cost.
        current: u64,
        /// The limit.
        limit: u64,
    },
    /// Too many tokens today.
    Tpd {
        /// Tokens counted this window, including the refused request's own cost.
        current: u64,
        /// The limit.
        limit: u64,
    },
}

/// A fixed window that opens with the first request after the previous one closed.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    opened: Option<Instant>,
    requests: u64,
    tokens: u64,
}

impl Window {
    fn roll(&mut self, now: Instant, len: Duration) {
        if self.opened.is_none_or(|o| now.duration_since(o) >= len) {
            *self = Window {
                opened: Some(now),
                requests: 0,
                tokens: 0,
            };
        }
    }

    fn view(&self, now: Instant, len: Duration) -> Value {
        let open = self.opened.filter(|o| now.duration_since(*o) < len);
        match open {
            Some(o) => json!({
                "requests": self.requests,
                "tokens": self.tokens,
                "remaining_ms": (len - now.duration_since(o)).as_millis() as u64,
            }),
            None => json!({"requests": 0, "tokens": 0, "remaining_ms": null}),
        }
    }
}

/// Refusals per limit kind.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Refused {
    /// Over the tier's concurrency (or the global `chat_max_concurrency`).
    pub concurrency: u64,
    /// Over RPM.
    pub rpm: u64,
    /// Over TPM.
    pub tpm: u64,
    /// Over TPD.
    pub tpd: u64,
}

/// Tokens billed for one model.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelBill {
    /// Completions billed.
    pub requests: u64,
    /// Prompt tokens (estimated).
    pub prompt_tokens: u64,
    /// Completion tokens actually generated (sent).
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

/// One key's account: in-flight count, windows and bill.
#[derive(Debug, Default)]
pub struct Account {
    in_flight: u64,
    minute: Window,
    day: Window,
    admitted: u64,
    refused: Refused,
    reserved_tokens: u64,
    by_model: BTreeMap<String, ModelBill>,
}

/// Every key's account.
#[derive(Debug, Default)]
pub struct Accounts {
    map: HashMap<String, Account>,
}

/// Window lengths.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// The "minute".
    pub minute: Duration,
    /// The "day".
    pub day: Duration,
}

impl Accounts {
    /// Admits a request of `cost` tokens for `key` under `limits`, charging RPM, TPM and TPD
    /// and counting it in flight (until [`Accounts::leave`]), or names the limit it breaks
    /// (and counts the refusal).
    pub fn admit(
        &mut self,
        key: &str,
        limits: Limits,
        cost: u64,
        windows: Windows,
        now: Instant,
    ) -> Result<(), Refusal> {
        let a = self.map.entry(key.to_owned()).or_default();
        a.minute.roll(now, windows.minute);
        a.day.roll(now, windows.day);
        let refusal = if let Some(limit) = limits.concurrency.filter(|l| a.in_flight >= *l) {
            Some(Refusal::Concurrency { limit })
        } else if let Some(limit) = limits.rpm.filter(|l| a.minute.requests >= *l) {
            Some(Refusal::Rpm { limit })
        } else if let Some(limit) = limits.tpm.filter(|l| a.minute.tokens + cost > *l) {
            Some(Refusal::Tpm {
                current: a.minute.tokens + cost,
                limit,
            })
        } else if let Some(limit) = limits.tpd.filter(|l| a.day.tokens + cost > *l) {
            Some(Refusal::Tpd {
                current: a.day.tokens + cost,
                limit,
            })
        } else {
            None
        };
        if let Some(r) = refusal {
            a.count_refusal(r);
            return Err(r);
        }
        a.in_flight += 1;
        a.minute.requests += 1;
        a.minute.tokens += cost;
        a.day.requests += 1;
        a.day.tokens += cost;
        a.admitted += 1;
        a.reserved_tokens += cost;
        Ok(())
    }

    /// Counts a refusal decided elsewhere (the global concurrency limit).
    pub fn refuse(&mut self, key: &str, refusal: Refusal) {
        self.map
            .entry(key.to_owned())
            .or_default()
            .count_refusal(refusal);
    }

    /// Ends an admitted request's in-flight count.
    pub fn leave(&mut self, key: &str) {
        if let Some(a) = self.map.get_mut(key) {
            a.in_flight = a.in_flight.saturating_sub(1);
        }
    }

    /// Bills a completion: its prompt and the completion tokens actually sent.
    pub fn bill(&mut self, key: &str, model: &str, prompt: u64, completion: u64) {
        let a = self.map.entry(key.to_owned()).or_default();
        let m = a.by_model.entry(model.to_owned()).or_default();
        m.requests += 1;
        m.prompt_tokens += prompt;
        m.completion_tokens += completion;
        m.total_tokens += prompt + completion;
    }

    /// Forgets windows and bills; in-flight counts stay (their requests still end).
    pub fn reset(&mut self) {
        self.map.retain(|_, a| a.in_flight > 0);
        for a in self.map.values_mut() {
            *a = Account {
                in_flight: a.in_flight,
                ..Account::default()
            };
        }
    }

    /// The bill of every key that made a chat request (`GET /_sim/usage`).
    pub fn view(&self, tier_of: impl Fn(&str) -> Option<Tier>, windows: Windows) -> Value {
        let now = Instant::now();
        let mut keys = BTreeMap::new();
        for (key, a) in &self.map {
            let sum = |f: fn(&ModelBill) -> u64| a.by_model.values().map(f).sum::<u64>();
            let tier = tier_of(key).map(|t| {
                let l = t.limits();
                json!({"group": t.group(), "concurrency": l.concurrency, "rpm": l.rpm,
                       "tpm": l.tpm, "tpd": l.tpd})
            });
            keys.insert(
                key.clone(),
                json!({
                    "tier": tier,
                    "in_flight": a.in_flight,
                    "admitted": a.admitted,
                    "refused": a.refused,
                    "reserved_tokens": a.reserved_tokens,
                    "billed": {
                        "requests": sum(|m| m.requests),
                        "prompt_tokens": sum(|m| m.prompt_tokens),
                        "completion_tokens": sum(|m| m.completion_tokens),
                        "total_tokens": sum(|m| m.total_tokens),
                    },
                    "by_model": a.by_model,
                    "minute": a.minute.view(now, windows.minute),
                    "day": a.day.view(now, windows.day),
                }),
            );
        }
        json!({ "keys": keys })
    }
}

impl Account {
    fn count_refusal(&mut self, r: Refusal) {
        match r {
            Refusal::Concurrency { .. } => self.refused.concurrency += 1,
            Refusal::Rpm { .. } => self.refused.rpm += 1,
            Refusal::Tpm { .. } => self.refused.tpm += 1,
            Refusal::Tpd { .. } => self.refused.tpd += 1,
        }
    }
}

/// The ids Moonshot's messages and headers name for a key's account: `org-<32 hex>`,
/// `proj-<32 hex>` (shape inferred from `proj-xxxxxx`), `ak-<20 chars>`, and a user id.
#[derive(Debug, Clone)]
pub struct AccountIds {
    /// `org-…`
    pub org: String,
    /// `proj-…`
    pub project: String,
    /// `ak-…`
    pub ak: String,
    /// The `Msh-Uid` value.
    pub uid: String,
}

impl AccountIds {
    /// Derived from the key (stable, and never revealing it).
    pub fn of(key: &str) -> Self {
        use sha2::Digest;
        let hex = |salt: &str| format!("{:x}", sha2::Sha256::digest(format!("{salt}:{key}")));
        const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
        let b32: String = sha2::Sha256::digest(format!("ak:{key}"))
            .iter()
            .take(20)
            .map(|b| ALPHABET[(b & 31) as usize] as char)
            .collect();
        Self {
            org: format!("org-{}", &hex("org")[..32]),
            project: format!("proj-{}", &hex("proj")[..32]),
            ak: format!("ak-{b32}"),
            uid: hex("uid")[..20].to_owned(),
        }
    }
}
