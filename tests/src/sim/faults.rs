//! Fault injection: the rules `POST /_sim/faults` adds and the "down" switch.
//!
//! A [`Rule`] matches requests by route name (exact, or a prefix ending in `*`), method and path
//! glob; it applies to the next `count` matching requests (or to all of them while it exists).
//! For each request every matching `delay` rule adds its latency and is used up by one; then the
//! first matching terminal rule (`fail`, `drop`, `rate_limit`) decides the answer and is used up
//! by one. A rule with no uses left is removed.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a rule does to a request it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Answer with `status` and the provider's matching error body (see the module docs of
    /// `sim` for the bodies); the request body is read and discarded first.
    Fail {
        /// The status the provider means (for Supabase 4xx this goes into the body's
        /// `statusCode`, and the HTTP status is 400 as on the real server).
        status: u16,
        /// Moonshot only: overrides the `error.type` derived from `status`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_type: Option<String>,
        /// Overrides the error message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Forces the HTTP status (e.g. a Supabase 403 sent as a real HTTP 403).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
        /// Adds a `Retry-After: <secs>` header.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
    /// Wait `delay_ms` before handling the request (combines with the other rules).
    Delay {
        /// The added latency.
        delay_ms: u64,
    },
    /// Close the connection without any response, before reading the request body.
    Drop,
    /// Answer with a 429: Moonshot's `rate_limit_reached_error` (or the type `kind` names),
    /// Supabase's 429 `too_many_connections`.
    RateLimit {
        /// `rpm` (default), `concurrency`, `tpm`, `tpd`, `overloaded` (`engine_overloaded_error`)
        /// or `quota` (`exceeded_current_quota_error`, not retryable).
        #[serde(default = "default_kind")]
        kind: String,
        /// The wait named in the message ("please try again after {t} seconds"), 1 by default.
        #[serde(default = "default_retry_after")]
        retry_after_secs: u64,
        /// Also send a `Retry-After` header (real Moonshot responses do not).
        #[serde(default)]
        retry_after_header: bool,
    },
}

fn default_kind() -> String {
    "rpm".to_owned()
}

fn default_retry_after() -> u64 {
    1
}

/// A rule as `POST /_sim/faults` takes it.
#[derive(Debug, Clone, Deserialize)]
pub struct RuleSpec {
    /// A route name (`moonshot.files.upload`), a prefix glob (`supabase.*`) or `*`; absent
    /// matches every provider route.
    #[serde(default)]
    pub route: Option<String>,
    /// An HTTP method, case-insensitive; absent matches any.
    #[serde(default)]
    pub method: Option<String>,
    /// A path glob where `*` matches any run of characters (`/storage/v1/object/user-files/*`).
    #[serde(default)]
    pub path: Option<String>,
    /// How many matching requests the rule applies to; absent means until it is removed.
    #[serde(default)]
    pub count: Option<u64>,
    /// What it does.
    #[serde(flatten)]
    pub action: Action,
}

/// An installed rule.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    /// Its id (for `DELETE /_sim/faults/{id}`).
    pub id: u64,
    /// See [`RuleSpec::route`].
    pub route: Option<String>,
    /// See [`RuleSpec::method`].
    pub method: Option<String>,
    /// See [`RuleSpec::path`].
    pub path: Option<String>,
    /// Uses left; `None` is unlimited.
    pub remaining: Option<u64>,
    /// How many requests it has applied to.
    pub hits: u64,
    /// What it does.
    #[serde(flatten)]
    pub action: Action,
}

impl Rule {
    fn matches(&self, route: &str, method: &str, path: &str) -> bool {
        self.route.as_deref().is_none_or(|r| glob(r, route))
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path.as_deref().is_none_or(|p| glob(p, path))
    }
}

/// How the emulator behaves while it is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownMode {
    /// Provider requests get their connection closed without a response (control routes work).
    Close,
    /// The listening socket is closed, so connections are refused; the control API is
    /// unreachable too, hence this mode needs `for_ms` (or [`super::Sim::up`] in process).
    Refuse,
    /// Provider requests get `status` with the provider's error body.
    Status,
}

/// The current outage.
#[derive(Debug, Clone)]
pub struct Down {
    /// How requests are refused.
    pub mode: DownMode,
    /// For [`DownMode::Status`].
    pub status: u16,
    /// When the emulator comes back by itself.
    pub until: Option<Instant>,
}

/// What the rules decided for one request.
#[derive(Debug, Default)]
pub struct Decision {
    /// Latency to add before anything else.
    pub delay: Duration,
    /// The terminal action, with its rule id.
    pub terminal: Option<(u64, Action)>,
}

/// The installed rules and the down switch; behind the shared state's mutex.
#[derive(Debug, Default)]
pub struct Faults {
    next_id: u64,
    rules: Vec<Rule>,
    down: Option<Down>,
}

impl Faults {
    /// Installs a rule and returns its id.
    pub fn add(&mut self, spec: RuleSpec) -> u64 {
        self.next_id += 1;
        self.rules.push(Rule {
            id: self.next_id,
            route: spec.route,
            method: spec.method,
            path: spec.path,
            remaining: spec.count,
            hits: 0,
            action: spec.action,
        });
        self.next_id
    }

    /// The installed rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Removes one rule; false when there was none with that id.
    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.id != id);
        self.rules.len() != before
    }

    /// Removes every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// Evaluates (and uses up) the rules for one request.
    pub fn decide(&mut self, route: &str, method: &str, path: &str) -> Decision {
        let mut decision = Decision::default();
        for rule in &mut self.rules {
            if rule.remaining == Some(0) || !rule.matches(route, method, path) {
                continue;
            }
            let applies = match &rule.action {
                Action::Delay { delay_ms } => {
                    decision.delay += Duration::from_millis(*delay_ms);
                    true
                }
                terminal if decision.terminal.is_none() => {
                    decision.terminal = Some((rule.id, terminal.clone()));
                    true
                }
                _ => false,
            };
            if applies {
                rule.hits += 1;
                if let Some(n) = rule.remaining.as_mut() {
                    *n -= 1;
                }
            }
        }
        self.rules.retain(|r| r.remaining != Some(0));
        decision
    }

    /// Starts an outage.
    pub fn set_down(&mut self, down: Down) {
        self.down = Some(down);
    }

    /// Ends the outage.
    pub fn set_up(&mut self) {
        self.down = None;
    }

    /// The outage in force now (an expired one is ended here).
    pub fn down(&mut self) -> Option<Down> {
        if let Some(until) = self.down.as_ref().and_then(|d| d.until)
            && Instant::now() >= until
        {
            self.down = None;
        }
        self.down.clone()
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("supabase.*", "supabase.object.upload"));
        assert!(!glob("supabase.*", "moonshot.chat"));
        assert!(glob("moonshot.chat", "moonshot.chat"));
        assert!(glob(
            "/storage/v1/object/*/kimi-*",
            "/storage/v1/object/b/kimi-x"
        ));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn counted_rules_are_used_up_in_order() {
        let mut f = Faults::default();
        let spec = |count, action| RuleSpec {
            route: Some("moonshot.*".into()),
            method: None,
            path: None,
            count,
            action,
        };
        f.add(spec(Some(2), Action::Drop));
        f.add(spec(None, Action::Delay { delay_ms: 5 }));
        let d = f.decide("moonshot.chat", "POST", "/v1/chat/completions");
        assert_eq!(d.delay, Duration::from_millis(5));
        assert_eq!(d.terminal, Some((1, Action::Drop)));
        assert!(f.decide("moonshot.chat", "POST", "/").terminal.is_some());
        assert!(f.decide("moonshot.chat", "POST", "/").terminal.is_none());
        assert!(f.decide("supabase.x", "POST", "/").delay.is_zero());
        assert_eq!(f.rules().len(), 1);
    }
}
