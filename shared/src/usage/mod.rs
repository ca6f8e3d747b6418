//! Cost accounting: what each provider call consumed, and the sums kept in Redis.
//!
//! [`Usage`] is the token count of one call (or of a job's calls, summed), read from the
//! provider's `usage` object by [`Usage::from_provider`]: `prompt_tokens`, `completion_tokens`,
//! `total_tokens`, and the cached part of the prompt, which Moonshot reports as
//! `usage.cached_tokens` and GLM (and some Kimi models) as
//! `usage.prompt_tokens_details.cached_tokens`.
//!
//! [`ledger`] records each call's usage in Redis — summed per session, per tool and per model,
//! each sum kept for `EXAI_USAGE_RETENTION_SECS` after its last call — in one script run, and
//! reads the sums back for `exai-worker usage`, the admin API and the session token budget
//! (`EXAI_SESSION_TOKEN_BUDGET`).

pub mod ledger;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use ledger::{REPORT_MAX, UsageCall, UsageEntry, UsageLedger, UsageReport, UsageTotals};

/// The tokens one provider call (or a job's calls together) consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt (cached ones included).
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Tokens of the prompt served from the provider's cache (a part of `prompt_tokens`).
    #[serde(default)]
    pub cached_tokens: u64,
    /// All tokens of the call: the provider's `total_tokens`, else prompt + completion.
    #[serde(default)]
    pub total_tokens: u64,
    /// Provider calls summed in this value.
    #[serde(default)]
    pub calls: u64,
}

impl Usage {
    /// The usage of one call from the provider's `usage` object; `None` when it is not an
    /// object or carries no token count at all.
    pub fn from_provider(usage: &Value) -> Option<Self> {
        let object = usage.as_object()?;
        let count = |v: Option<&Value>| v.and_then(Value::as_u64);
        let prompt = count(object.get("prompt_tokens"));
        let completion = count(object.get("completion_tokens"));
        let total = count(object.get("total_tokens"));
        if prompt.is_none() && completion.is_none() && total.is_none() {
            return None;
        }
        let prompt_tokens = prompt.unwrap_or(0);
        let completion_tokens = completion.unwrap_or(0);
        let cached_tokens = count(object.get("cached_tokens"))
            .or_else(|| count(usage.pointer("/prompt_tokens_details/cached_tokens")))
            .unwrap_or(0);
        Some(Self {
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            total_tokens: total.unwrap_or(prompt_tokens + completion_tokens),
            calls: 1,
        })
    }

    /// The sum of two usages (a job that made several calls).
    pub fn plus(self, other: Self) -> Self {
        Self {
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            completion_tokens: self.completion_tokens + other.completion_tokens,
            cached_tokens: self.cached_tokens + other.cached_tokens,
            total_tokens: self.total_tokens + other.total_tokens,
            calls: self.calls + other.calls,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn moonshot_reports_cached_tokens_at_the_top_of_usage() {
        let u = Usage::from_provider(&json!({
            "prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150, "cached_tokens": 100
        }))
        .unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 120,
                completion_tokens: 30,
                cached_tokens: 100,
                total_tokens: 150,
                calls: 1
            }
        );
    }

    #[test]
    fn glm_reports_cached_tokens_in_the_prompt_details() {
        let u = Usage::from_provider(&json!({
            "prompt_tokens": 9, "completion_tokens": 21, "total_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 4}
        }))
        .unwrap();
        assert_eq!(u.cached_tokens, 4);
        assert_eq!(u.total_tokens, 30);
    }

    #[test]
    fn the_top_level_cached_count_wins_when_both_are_present() {
        let u = Usage::from_provider(&json!({
            "prompt_tokens": 50, "completion_tokens": 5, "cached_tokens": 40,
            "prompt_tokens_details": {"cached_tokens": 39}
        }))
        .unwrap();
        assert_eq!(u.cached_tokens, 40);
        assert_eq!(
            u.total_tokens, 55,
            "total is prompt + completion when not reported"
        );
    }

    #[test]
    fn no_usage_without_a_token_count() {
        assert_eq!(Usage::from_provider(&json!(null)), None);
        assert_eq!(Usage::from_provider(&json!({})), None);
        assert_eq!(
            Usage::from_provider(&json!({"prompt_tokens": "many"})),
            None
        );
        let u = Usage::from_provider(&json!({"prompt_tokens": 3})).unwrap();
        assert_eq!(
            (u.completion_tokens, u.cached_tokens, u.total_tokens),
            (0, 0, 3)
        );
    }

    #[test]
    fn usages_add_up() {
        let a = Usage::from_provider(&json!({"prompt_tokens": 3, "completion_tokens": 4})).unwrap();
        let b = Usage::from_provider(
            &json!({"prompt_tokens": 10, "completion_tokens": 1, "cached_tokens": 2}),
        )
        .unwrap();
        assert_eq!(
            a.plus(b),
            Usage {
                prompt_tokens: 13,
                completion_tokens: 5,
                cached_tokens: 2,
                total_tokens: 18,
                calls: 2
            }
        );
    }
}
