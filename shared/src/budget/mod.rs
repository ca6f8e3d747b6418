//! Fleet-wide rate budgets of the providers: requests per minute, tokens per minute and per day.
//!
//! A provider that counts requests and tokens per window answers a call over its limit with a
//! 429; the call is lost and must wait anyway. Here a chat job reserves what the call will cost
//! before it is sent, and a job that finds the budget spent is put back with a not-before time
//! (no attempt spent) instead of collecting the 429.
//!
//! # Model
//! Each provider's budget is a sliding log in Redis, under the semaphores' hash tag
//! ([`Keys::budget`]): one member per admitted request (scored by its Redis time) and one per
//! request's tokens in a minute window and a day window, with running sums, so a reservation
//! costs O(log n) and is checked against every limit at once by one script (`reserve.lua`).
//! Every window is the provider's (`EXAI_BUDGET_MINUTE_MS`, `EXAI_BUDGET_DAY_MS`) plus a slack
//! (`EXAI_BUDGET_SLACK_MS`): no window of the provider's, fixed or sliding, can then hold more
//! than the budget admitted, whatever the network delay of each request.
//!
//! # Settling
//! A reservation is held under the lease token of the permits the job holds while it calls the
//! provider, and lives as long as that lease: the semaphores' renewal extends it, and when a
//! worker dies mid-call its reservation is returned once the lease expires (by the next
//! reservation's script). After the call, [`Budgets::settle`] charges what the provider counts:
//! Moonshot counts the prompt plus the completion cap at admission, whatever is generated
//! (reference §1.3), so the charge is the actual prompt tokens plus the cap; a provider that
//! counts actual usage is charged its `total_tokens`; a request the provider refused is taken
//! back whole.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};
use serde::Serialize;

use crate::config::{BudgetConfig, ProviderBudget};
use crate::keys::Keys;
use crate::redis::RedisHandle;

/// The reservation script: return lapsed reservations, prune the windows, check, reserve.
static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("reserve.lua")));
/// The settlement script.
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("settle.lua")));
/// The read-only usage script.
static USAGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("usage.lua")));

/// A budget operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// Redis could not be reached or refused a command.
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    /// A script answered something this code does not understand (a version mismatch).
    #[error("unexpected reply from the budget {script} script: {detail}")]
    Protocol {
        /// Which script.
        script: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
}

/// Which of a provider's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    /// Requests per minute.
    Rpm,
    /// Tokens per minute.
    Tpm,
    /// Tokens per day.
    Tpd,
}

impl Limit {
    /// The limit's name, as in the settings (`rpm`, `tpm`, `tpd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rpm => "rpm",
            Self::Tpm => "tpm",
            Self::Tpd => "tpd",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "rpm" => Some(Self::Rpm),
            "tpm" => Some(Self::Tpm),
            "tpd" => Some(Self::Tpd),
            _ => None,
        }
    }
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved: the request and its tokens are counted until settled (or the lease lapses).
    Reserved,
    /// Reserved for a paced turn: the request is to be sent after this wait (the turns are
    /// handed out in the order of the reservations).
    Scheduled {
        /// How long until its turn.
        after: Duration,
    },
    /// A limit has no room; nothing was reserved.
    Refused {
        /// How long until the windows alone make room.
        retry_in: Duration,
        /// The limit without room.
        limit: Limit,
        /// Its value.
        value: u64,
        /// What it would have counted with this request.
        current: u64,
    },
    /// The request alone costs more than a limit: it can never be admitted.
    TooLarge {
        /// The limit.
        limit: Limit,
        /// Its value.
        value: u64,
    },
}

/// What a provider counted for a call, for [`Budgets::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// The provider counted this many tokens.
    Tokens(u64),
    /// The provider refused the request: neither it nor its tokens count.
    Refund,
}

/// What a provider's budget holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetUsage {
    /// The provider.
    pub provider: String,
    /// Requests in the current minute window.
    pub requests_per_minute: Used,
    /// Tokens in the current minute window.
    pub tokens_per_minute: Used,
    /// Tokens in the current day window.
    pub tokens_per_day: Used,
}

/// How much of one limit a window holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Used {
    /// Counted in the window now.
    pub used: u64,
    /// The limit (`null`: none).
    pub limit: Option<u64>,
}

/// The rate budgets of one deployment, as seen from one process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Budgets {
    conn: RedisHandle,
    keys: Keys,
    config: BudgetConfig,
    /// How long a reservation holds unless renewed: the semaphores' lease TTL.
    hold: Duration,
}

impl Budgets {
    /// The budgets of `config`, whose reservations hold as long as a permit's lease (`hold`).
    pub fn new(conn: RedisHandle, keys: Keys, config: BudgetConfig, hold: Duration) -> Self {
        Self {
            conn,
            keys,
            config,
            hold,
        }
    }

    /// The settings.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// The budget of `provider`, when it has a limit.
    pub fn of(&self, provider: &str) -> Option<&ProviderBudget> {
        self.config.of(provider)
    }

    fn minute_ms(&self) -> u64 {
        (self.config.minute + self.config.slack).as_millis() as u64
    }

    /// How many requests of `budget` may go back to back (`EXAI_BUDGET_BURST_MS` worth at its
    /// rate, at least one), or -1 when they are not paced.
    fn burst(&self, budget: &ProviderBudget) -> i64 {
        let (Some(rpm), Some(burst)) = (budget.rpm, self.config.burst) else {
            return -1;
        };
        let minute = self.config.minute.as_millis().max(1);
        let n = (u128::from(rpm) * burst.as_millis()).div_ceil(minute);
        i64::try_from(n.max(1)).unwrap_or(i64::MAX)
    }

    fn day_ms(&self) -> u64 {
        (self.config.day + self.config.slack).as_millis() as u64
    }

    /// Reserves one request and `tokens` tokens of `provider`'s budget under lease `token` (the
    /// permits the call is made under). A provider without a budget always reserves.
    /// A paced turn due within `patience` is reserved ([`Reservation::Scheduled`]) rather than
    /// refused.
    pub async fn reserve(
        &self,
        provider: &str,
        token: &str,
        tokens: u64,
        patience: Duration,
    ) -> Result<Reservation, BudgetError> {
        let Some(budget) = self.of(provider) else {
            return Ok(Reservation::Reserved);
        };
        let limit = |l: Option<u64>| l.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
        let mut invocation = RESERVE.prepare_invoke();
        invocation
            .key(self.keys.budget(provider, "req"))
            .key(self.keys.budget(provider, "tpm"))
            .key(self.keys.budget(provider, "tpd"))
            .key(self.keys.budget(provider, "sums"))
            .key(self.keys.budget_held())
            .key(self.keys.budget_terms())
            .key(self.keys.budget_prefix())
            .arg(token)
            .arg(tokens)
            .arg(self.hold.as_millis() as u64)
            .arg(limit(budget.rpm))
            .arg(limit(budget.tpm))
            .arg(limit(budget.tpd))
            .arg(self.minute_ms())
            .arg(self.day_ms())
            .arg(provider)
            .arg(self.burst(budget))
            .arg(patience.as_millis() as u64);
        let reply: Vec<Value> = invocation.invoke_async(&mut self.conn.clone()).await?;
        decode_reserve(&reply)
    }

    /// Settles the reservation held under lease `token`. Returns whether there was one (there
    /// is none when it was settled already, or returned after its lease lapsed).
    pub async fn settle(&self, token: &str, charge: Charge) -> Result<bool, BudgetError> {
        let charge = match charge {
            Charge::Tokens(n) => n.min(i64::MAX as u64) as i64,
            Charge::Refund => -1,
        };
        let settled: i64 = SETTLE
            .key(self.keys.budget_held())
            .key(self.keys.budget_terms())
            .key(self.keys.budget_prefix())
            .arg(token)
            .arg(charge)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(settled == 1)
    }

    /// What `provider`'s budget holds now (its windows as the next reservation sees them).
    pub async fn usage(&self, provider: &str) -> Result<BudgetUsage, BudgetError> {
        let reply: Vec<u64> = USAGE
            .key(self.keys.budget(provider, "req"))
            .key(self.keys.budget(provider, "tpm"))
            .key(self.keys.budget(provider, "tpd"))
            .arg(self.minute_ms())
            .arg(self.day_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        let [req, tpm, tpd] = reply[..] else {
            return Err(BudgetError::Protocol {
                script: "usage",
                detail: format!("expected three numbers, got {reply:?}"),
            });
        };
        let budget = self.config.of(provider).cloned().unwrap_or_default();
        Ok(BudgetUsage {
            provider: provider.to_owned(),
            requests_per_minute: Used {
                used: req,
                limit: budget.rpm,
            },
            tokens_per_minute: Used {
                used: tpm,
                limit: budget.tpm,
            },
            tokens_per_day: Used {
                used: tpd,
                limit: budget.tpd,
            },
        })
    }
}

/// Decodes the reserve script's reply.
fn decode_reserve(reply: &[Value]) -> Result<Reservation, BudgetError> {
    let bad = |detail: &str| BudgetError::Protocol {
        script: "reserve",
        detail: format!("{detail}: {reply:?}"),
    };
    let int = |i: usize| match reply.get(i) {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    let limit = |i: usize| match reply.get(i) {
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().and_then(Limit::parse),
        Some(Value::SimpleString(s)) => Limit::parse(s),
        _ => None,
    };
    match reply.first() {
        Some(Value::Int(1)) => Ok(Reservation::Reserved),
        Some(Value::Int(2)) => Ok(Reservation::Scheduled {
            after: Duration::from_millis(int(2).ok_or_else(|| bad("no wait"))?),
        }),
        Some(Value::Int(0)) => Ok(Reservation::Refused {
            retry_in: Duration::from_millis(int(1).ok_or_else(|| bad("no wait"))?),
            limit: limit(2).ok_or_else(|| bad("no limit name"))?,
            value: int(3).ok_or_else(|| bad("no limit value"))?,
            current: int(4).ok_or_else(|| bad("no current count"))?,
        }),
        Some(Value::Int(-1)) => Ok(Reservation::TooLarge {
            limit: limit(1).ok_or_else(|| bad("no limit name"))?,
            value: int(2).ok_or_else(|| bad("no limit value"))?,
        }),
        _ => Err(bad("unknown status")),
    }
}

/// A prompt's token estimate before the call: the UTF-8 bytes of its messages ÷ 4, rounded up
/// (about four bytes a token in English; the settlement corrects it with the provider's count).
pub fn estimate_prompt_tokens<'a>(texts: impl IntoIterator<Item = &'a str>) -> u64 {
    let bytes: usize = texts.into_iter().map(str::len).sum();
    (bytes.div_ceil(4) as u64).max(1)
}
