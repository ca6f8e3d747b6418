//! Fleet-wide leased semaphores (see DESIGN.md, "Leased semaphores").
//!
//! The original daemon held in-process semaphores and leaked a permit whenever a request died
//! between acquire and release; enough leaks and every request hung. Here a permit is a **lease**
//! with a TTL, so a holder that crashes loses its permit after at most one TTL, whatever happened
//! to it.
//!
//! # Model
//! A semaphore `name` is a Redis sorted set ([`Keys::sem_leases`]) whose members are lease tokens
//! and whose scores are expiry times in milliseconds, taken from Redis's own clock (`TIME`) inside
//! the scripts. A lease is live while its expiry is after Redis's "now"; only live leases count.
//! Three Lua scripts do all the work, each atomically:
//!
//! - **acquire** purges expired leases, reads each limit (a runtime override from
//!   [`Keys::sem_limits`], else the configured default) and grants a lease on *every* requested
//!   name or on none, so a job never holds `global` while it waits for `kimi`. A grant takes the
//!   next value of a fleet-wide fencing counter ([`LeaseGuard::fence`]) and records who holds it
//!   ([`Keys::sem_holders`]). A refusal takes nothing and says how long until lease expiry alone
//!   would make room.
//! - **renew** extends a lease only if it is still live in every set; otherwise the lease is
//!   **lost** and removed everywhere, so a late renewal never resurrects an expired lease.
//! - **release** removes the lease everywhere and publishes the names on the release channel.
//!   Releasing twice is harmless.
//!
//! # Waiting
//! [`Semaphores::acquire`] registers for a push wake-up *before* each try, then waits for the
//! first of: a release announced on the channel (see `wake`), the refused lease's expiry hint
//! (a crashed holder's lease lapsing), the poll fallback ([`Semaphores::with_poll_interval`]),
//! the caller's deadline or cancellation. Waiting happens outside any lock and per name set, so a
//! job waiting for `kimi` never holds up one that needs `glm`. When the wait runs out the caller
//! gets [`Acquire::TimedOut`] and puts the job back without counting an attempt.
//!
//! # Invariants
//! - At no instant of the Redis clock are there more live leases in a set than its limit at the
//!   time of the grants (lowering a limit does not evict holders; it only stops new grants).
//! - A lease not renewed for one TTL is gone for good.
//! - Fencing tokens strictly increase across grants, fleet-wide.

mod guard;
mod scripts;
mod wake;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use guard::LeaseGuard;
pub use scripts::Renewal;

use crate::config::{AimdConfig, Config, SemaphoreConfig};
use crate::keys::Keys;
use crate::redis::RedisHandle;
use crate::subscriber::{Route, Subscriber, Subscription};
use scripts::{AcquireReply, AdaptOp};
use wake::{ReleaseRoute, Wakers};

/// The default longest pause between two tries of a waiting [`Semaphores::acquire`], in case a
/// push wake-up is lost. Releases normally wake waiters within milliseconds; this only bounds the
/// damage of a missed message.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The longest semaphore name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A semaphore operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum SemaphoreError {
    /// Redis could not be reached or refused a command.
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    /// The release channel's subscription could not be set up.
    #[error("could not subscribe to the semaphore release channel")]
    Subscribe(#[source] redis::RedisError),
    /// An acquire named no semaphore.
    #[error("no semaphore names given")]
    NoNames,
    /// A name outside the accepted alphabet or length.
    #[error(
        "invalid semaphore name `{0}`: use 1 to {MAX_NAME_LEN} ASCII letters, digits, `-`, `_` or `.`"
    )]
    InvalidName(String),
    /// A name with neither a configured default limit nor a runtime override.
    #[error("semaphore `{0}` has no limit: neither a configured default nor a runtime override")]
    NoLimit(String),
    /// A script answered something this code does not understand (a version mismatch).
    #[error("unexpected reply from the {script} script: {detail}")]
    Protocol {
        /// Which script.
        script: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
}

impl SemaphoreError {
    fn protocol(script: &'static str, detail: &str) -> Self {
        Self::Protocol {
            script,
            detail: detail.to_owned(),
        }
    }
}

/// Who asks for a lease; recorded with the lease for inspection and woven into its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    /// The holder process or task, e.g. `worker-3f2a/7`.
    pub holder: String,
    /// The job the lease is for.
    pub job_id: String,
    /// The job's attempt number.
    pub attempt: u32,
}

impl HolderInfo {
    /// Describes a holder.
    pub fn new(holder: impl Into<String>, job_id: impl Into<String>, attempt: u32) -> Self {
        Self {
            holder: holder.into(),
            job_id: job_id.into(),
            attempt,
        }
    }

    /// A fresh lease token: job id, attempt and a random part, so that two grants never share one.
    fn new_token(&self) -> String {
        format!(
            "{}:{}:{}",
            self.job_id,
            self.attempt,
            uuid::Uuid::new_v4().simple()
        )
    }
}

/// The outcome of [`Semaphores::acquire`].
#[derive(Debug)]
pub enum Acquire {
    /// Every named semaphore granted a permit.
    Acquired(LeaseGuard),
    /// The wait ran out first: put the job back without counting an attempt.
    TimedOut,
    /// The caller's cancellation token fired first (shutdown).
    Cancelled,
}

/// One semaphore as seen by [`Semaphores::inspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SemaphoreState {
    /// The semaphore name.
    pub name: String,
    /// The configured limit, the ceiling (runtime override, else default); `None` when it has
    /// neither.
    pub limit: Option<u32>,
    /// The limit acquisitions use now: adaptive concurrency may hold it below
    /// [`limit`](Self::limit), never above and never below 1.
    pub effective_limit: Option<u32>,
    /// The configured default limit, if any.
    pub default_limit: Option<u32>,
    /// Whether [`limit`](Self::limit) is a runtime override set by [`Semaphores::set_limit`].
    pub overridden: bool,
    /// The live leases, earliest expiry first.
    pub holders: Vec<LeaseInfo>,
}

impl SemaphoreState {
    /// How many permits are taken by live leases.
    pub fn in_use(&self) -> usize {
        self.holders.len()
    }
}

/// One live lease as seen by [`Semaphores::inspect`]. The holder fields are `None` only if the
/// holder record is missing (it is written in the same script as the lease, so this means
/// outside tampering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    /// The lease token.
    pub token: String,
    /// Milliseconds until the lease expires unless renewed (Redis clock).
    pub expires_in_ms: u64,
    /// The holder id.
    pub holder: Option<String>,
    /// The job the lease is for.
    pub job_id: Option<String>,
    /// The job's attempt number.
    pub attempt: Option<u32>,
    /// The fencing token of the grant.
    pub fence: Option<u64>,
    /// When the lease was granted, in Unix milliseconds (Redis clock).
    pub acquired_at_ms: Option<u64>,
}

/// The holder record the acquire script stores as JSON in [`Keys::sem_holders`].
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HolderRecord {
    holder: Option<String>,
    job_id: Option<String>,
    attempt: Option<u32>,
    fence: Option<u64>,
    acquired_at_ms: Option<u64>,
}

/// What every [`Semaphores`] clone and every [`LeaseGuard`] it granted share.
#[derive(Debug)]
struct Core {
    /// The multiplexed connection all scripts run on.
    conn: RedisHandle,
    /// The key layout of the deployment.
    keys: Keys,
    /// The lease TTL: an unrenewed lease is gone this long after its grant or last renewal.
    lease: Duration,
    /// The configured default limit of each name; runtime overrides in Redis take precedence.
    defaults: HashMap<String, u32>,
    /// Adaptive concurrency parameters.
    aimd: AimdConfig,
}

/// A change of an effective limit made by adaptive concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitChange {
    /// The effective limit after the step.
    pub effective: u32,
    /// The ceiling (the configured limit) at the time of the step.
    pub ceiling: u32,
    /// Whether the step lowered (`true`) or raised the limit.
    pub decreased: bool,
}

/// The fleet-wide semaphores of one deployment, as seen from one process.
///
/// Cheap to clone: clones share the Redis connection and one route of the release channel on
/// the process's [`Subscriber`] (resubscribed after a connection loss). The route is removed
/// when the last clone is dropped; leases already granted keep renewing until released.
#[derive(Debug, Clone)]
pub struct Semaphores {
    core: Arc<Core>,
    /// Local waiters, woken by the release channel's route.
    wakers: Arc<Wakers>,
    /// The release channel's route, removed when the last clone is dropped.
    _subscription: Arc<Subscription>,
    /// The longest pause between two tries of a waiting acquire.
    poll: Duration,
}

impl Semaphores {
    /// Sets up the semaphores: routes the release channel through the process's `subscriber`
    /// (an unconfirmed subscription means push wake-ups cannot work, and is reported rather
    /// than degraded to polling). `config` supplies the default limits and the lease TTL.
    pub async fn new(
        conn: RedisHandle,
        subscriber: &Subscriber,
        keys: Keys,
        config: &SemaphoreConfig,
    ) -> Result<Self, SemaphoreError> {
        let wakers = Arc::new(Wakers::default());
        let route: Arc<dyn Route> = Arc::new(ReleaseRoute(Arc::clone(&wakers)));
        let subscription = subscriber
            .subscribe([(keys.sem_released_channel(), route)])
            .await;
        if !subscription.is_confirmed() {
            return Err(SemaphoreError::Subscribe(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "subscribing to the semaphore release channel timed out",
                )
                .into(),
            ));
        }
        Ok(Self {
            core: Arc::new(Core {
                conn,
                keys,
                lease: config.lease,
                defaults: config.default_limits().into_iter().collect(),
                aimd: config.aimd.clone(),
            }),
            wakers,
            _subscription: Arc::new(subscription),
            poll: DEFAULT_POLL_INTERVAL,
        })
    }

    /// Connects to the Redis of `config`, with a subscriber of its own, and sets up the
    /// semaphores with its settings (for a process whose only listener they are).
    pub async fn from_config(config: &Config) -> Result<Self, SemaphoreError> {
        let conn = RedisHandle::connect(&config.redis).await?;
        let subscriber = Subscriber::connect(RedisHandle::pubsub_client(&config.redis)?)
            .await
            .map_err(SemaphoreError::Subscribe)?;
        Self::new(
            conn,
            &subscriber,
            Keys::new(config.redis.prefix.clone()),
            &config.semaphores,
        )
        .await
    }

    /// Sets the poll fallback of [`acquire`](Self::acquire) (default
    /// [`DEFAULT_POLL_INTERVAL`]). A waiter normally wakes on a pushed release; this bounds how
    /// long it sleeps should a push be missed. Tests set it high to prove wake-ups are pushed.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// The poll fallback of [`acquire`](Self::acquire).
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }

    /// How many [`acquire`](Self::acquire) calls through this value (and its clones) are
    /// currently waiting for a permit, for metrics and tests.
    pub fn waiters(&self) -> usize {
        self.wakers.waiting()
    }

    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.core.lease
    }

    /// Tries once to take a permit of every semaphore in `names` (all or nothing). `None` means
    /// at least one was full and nothing was taken.
    pub async fn try_acquire(
        &self,
        names: &[&str],
        holder: &HolderInfo,
    ) -> Result<Option<LeaseGuard>, SemaphoreError> {
        let names = self.prepare(names)?;
        match self.attempt(&names, holder).await? {
            Attempt::Granted(guard) => Ok(Some(guard)),
            Attempt::Refused { .. } => Ok(None),
        }
    }

    /// Takes a permit of every semaphore in `names` (all or nothing), waiting up to `wait`.
    ///
    /// Between tries it waits for a pushed release, the expiry of the lease that blocks it, or
    /// the poll fallback, whichever comes first. Returns [`Acquire::TimedOut`] when `wait` runs
    /// out (a zero `wait` makes exactly one try) and [`Acquire::Cancelled`] as soon as `cancel`
    /// fires. Dropping the future mid-try may at worst leave a lease that nobody renews, which
    /// expires after one TTL.
    pub async fn acquire(
        &self,
        names: &[&str],
        holder: &HolderInfo,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Acquire, SemaphoreError> {
        let names = self.prepare(names)?;
        // A wait too long to represent (e.g. `Duration::MAX`) means "as long as it takes".
        let start = Instant::now();
        let deadline = start
            .checked_add(wait)
            .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600));
        let notifies: Vec<_> = names
            .iter()
            .map(|(name, _)| self.wakers.get(name))
            .collect();
        loop {
            if cancel.is_cancelled() {
                return Ok(Acquire::Cancelled);
            }
            // Register for wake-ups before trying: a release that lands between the refusal and
            // the wait below is then remembered instead of lost.
            let mut woken: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
            for notified in &mut woken {
                notified.as_mut().enable();
            }
            let retry_in = match self.attempt(&names, holder).await? {
                Attempt::Granted(guard) => return Ok(Acquire::Acquired(guard)),
                Attempt::Refused { retry_in, full } => {
                    tracing::trace!(?full, ?retry_in, "semaphore full; waiting");
                    retry_in
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Ok(Acquire::TimedOut);
            }
            let pause = next_pause(self.poll, retry_in, deadline - now);
            let _waiting = self.wakers.enter_wait();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(Acquire::Cancelled),
                _ = futures::future::select_all(woken) => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Sets the limit of `name` fleet-wide, overriding the configured default until
    /// [`clear_limit`](Self::clear_limit). Raising it wakes waiters at once; lowering it does not
    /// evict holders, it only stops new grants until the count falls below the new limit.
    pub async fn set_limit(&self, name: &str, limit: u32) -> Result<(), SemaphoreError> {
        validate_name(name)?;
        scripts::set_limit(&self.core.conn, &self.core.keys, name, Some(limit)).await
    }

    /// Removes the runtime limit of `name`, so the configured default applies again.
    pub async fn clear_limit(&self, name: &str) -> Result<(), SemaphoreError> {
        validate_name(name)?;
        scripts::set_limit(&self.core.conn, &self.core.keys, name, None).await
    }

    /// Adaptive concurrency: the provider behind semaphore `name` answered a congestion error
    /// (a 429 for concurrency or rate, an overload). Lowers the effective limit fleet-wide
    /// multiplicatively, at most once per cooldown; leases already held are not touched, new
    /// grants wait until fewer are live. Returns the change, if one was made; always `None` when
    /// adaptive concurrency is off.
    pub async fn congestion(&self, name: &str) -> Result<Option<LimitChange>, SemaphoreError> {
        self.adapt(name, AdaptOp::Decrease).await
    }

    /// Adaptive concurrency: a call through semaphore `name` succeeded. Every
    /// `EXAI_AIMD_INCREASE_EVERY` successes below the ceiling raise the effective limit by the
    /// step (and wake waiters). Returns the change, if one was made.
    pub async fn success(&self, name: &str) -> Result<Option<LimitChange>, SemaphoreError> {
        self.adapt(name, AdaptOp::Increase).await
    }

    /// The current effective limit of `name` (`None` when it has no limit).
    pub async fn effective_limit(&self, name: &str) -> Result<Option<u32>, SemaphoreError> {
        validate_name(name)?;
        let default = self.core.defaults.get(name).copied();
        let raw = scripts::inspect(
            &self.core.conn,
            &self.core.keys,
            &[(name.to_owned(), default)],
        )
        .await?;
        Ok(raw.into_iter().next().and_then(|s| {
            if self.core.aimd.enabled {
                s.effective
            } else {
                s.limit
            }
        }))
    }

    async fn adapt(&self, name: &str, op: AdaptOp) -> Result<Option<LimitChange>, SemaphoreError> {
        if !self.core.aimd.enabled {
            return Ok(None);
        }
        validate_name(name)?;
        let default = self.core.defaults.get(name).copied();
        let reply = scripts::adapt(
            &self.core.conn,
            &self.core.keys,
            name,
            default,
            op,
            &self.core.aimd,
        )
        .await?;
        Ok(match reply {
            Some((change, effective, ceiling)) if change != 0 => Some(LimitChange {
                effective,
                ceiling,
                decreased: change < 0,
            }),
            _ => None,
        })
    }

    /// Releases the lease `token` on `names`, whoever holds it; returns whether anything was
    /// removed. For operators clearing a lease by hand, and for tests; holders use
    /// [`LeaseGuard::release`].
    pub async fn release_token(&self, names: &[&str], token: &str) -> Result<bool, SemaphoreError> {
        let names: Vec<String> = self.prepare(names)?.into_iter().map(|(n, _)| n).collect();
        let removed = scripts::release(&self.core.conn, &self.core.keys, &names, token).await?;
        Ok(removed > 0)
    }

    /// The state of every known semaphore (configured, given a runtime limit, or ever acquired),
    /// sorted by name, read at one instant of the Redis clock. Only live leases are listed.
    pub async fn inspect(&self) -> Result<Vec<SemaphoreState>, SemaphoreError> {
        let known: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.core.keys.sem_names())
            .query_async(&mut self.core.conn.clone())
            .await?;
        let names: BTreeSet<String> = known
            .into_iter()
            .chain(self.core.defaults.keys().cloned())
            .filter(|name| validate_name(name).is_ok())
            .collect();
        let names: Vec<(String, Option<u32>)> = names
            .into_iter()
            .map(|name| {
                let default = self.core.defaults.get(&name).copied();
                (name, default)
            })
            .collect();
        let raw = scripts::inspect(&self.core.conn, &self.core.keys, &names).await?;
        Ok(names
            .into_iter()
            .zip(raw)
            .map(|((name, default_limit), state)| SemaphoreState {
                name,
                limit: state.limit,
                // With adaptive concurrency off, acquisitions use the configured limit.
                effective_limit: if self.core.aimd.enabled {
                    state.effective
                } else {
                    state.limit
                },
                default_limit,
                overridden: state.overridden,
                holders: state
                    .leases
                    .into_iter()
                    .map(|(token, expires_in_ms, json)| lease_info(token, expires_in_ms, json))
                    .collect(),
            })
            .collect())
    }

    /// Validates and deduplicates `names` (keeping their order) and pairs each with its default.
    fn prepare(&self, names: &[&str]) -> Result<Vec<(String, Option<u32>)>, SemaphoreError> {
        if names.is_empty() {
            return Err(SemaphoreError::NoNames);
        }
        let mut out: Vec<(String, Option<u32>)> = Vec::with_capacity(names.len());
        for name in names {
            validate_name(name)?;
            if !out.iter().any(|(seen, _)| seen == name) {
                out.push(((*name).to_owned(), self.core.defaults.get(*name).copied()));
            }
        }
        Ok(out)
    }

    /// One acquire script call.
    async fn attempt(
        &self,
        names: &[(String, Option<u32>)],
        holder: &HolderInfo,
    ) -> Result<Attempt, SemaphoreError> {
        let token = holder.new_token();
        let requested_at = Instant::now();
        let reply = scripts::acquire(
            &self.core.conn,
            &self.core.keys,
            names,
            &token,
            self.core.lease,
            holder,
            self.core.aimd.enabled,
        )
        .await?;
        Ok(match reply {
            AcquireReply::Granted { fence } => Attempt::Granted(LeaseGuard::start(
                Arc::clone(&self.core),
                token,
                fence,
                names.iter().map(|(name, _)| name.clone()).collect(),
                requested_at,
            )),
            AcquireReply::Refused { retry_in, full } => Attempt::Refused { retry_in, full },
        })
    }
}

/// The outcome of one acquire script call.
enum Attempt {
    Granted(LeaseGuard),
    Refused {
        retry_in: Option<Duration>,
        full: Vec<String>,
    },
}

/// Checks that `name` is 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9_.-]`: safe inside a key
/// and inside the comma-separated release messages.
fn validate_name(name: &str) -> Result<(), SemaphoreError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(SemaphoreError::InvalidName(name.to_owned()))
    }
}

/// How long a refused waiter sleeps at most before trying again: the poll fallback, cut short by
/// the expiry hint (plus a millisecond, so the lease is surely gone by Redis's clock) and by the
/// time left.
fn next_pause(poll: Duration, retry_in: Option<Duration>, remaining: Duration) -> Duration {
    let mut pause = poll.min(remaining);
    if let Some(hint) = retry_in {
        pause = pause.min(hint + Duration::from_millis(1));
    }
    pause
}

/// Builds a [`LeaseInfo`] from a lease and its holder JSON.
fn lease_info(token: String, expires_in_ms: u64, json: Option<String>) -> LeaseInfo {
    let record: HolderRecord = json
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    LeaseInfo {
        token,
        expires_in_ms,
        holder: record.holder,
        job_id: record.job_id,
        attempt: record.attempt,
        fence: record.fence,
        acquired_at_ms: record.acquired_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in [
            "global",
            "kimi",
            "glm-4.5",
            "a_b",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "kimi,glm",
            "a b",
            "{x}",
            "ü",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(
                matches!(validate_name(bad), Err(SemaphoreError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn tokens_name_the_job_and_never_repeat() {
        let holder = HolderInfo::new("worker-1", "job-9", 3);
        let a = holder.new_token();
        let b = holder.new_token();
        assert!(a.starts_with("job-9:3:"), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_pause_is_the_shortest_of_poll_hint_and_time_left() {
        let ms = Duration::from_millis;
        assert_eq!(next_pause(ms(250), None, ms(10_000)), ms(250));
        assert_eq!(next_pause(ms(250), Some(ms(40)), ms(10_000)), ms(41));
        assert_eq!(next_pause(ms(250), Some(ms(900)), ms(10_000)), ms(250));
        assert_eq!(next_pause(ms(250), Some(ms(40)), ms(5)), ms(5));
        assert_eq!(next_pause(ms(250), Some(ms(0)), ms(10_000)), ms(1));
    }

    #[test]
    fn holder_json_from_the_script_decodes() {
        // The shape cjson produces in acquire.lua (key order is not guaranteed).
        let json = r#"{"names":["global","kimi"],"fence":17,"job_id":"job-1","attempt":2,
            "holder":"w-1","token":"job-1:2:abc","acquired_at_ms":1700000000123}"#;
        let info = lease_info("job-1:2:abc".to_owned(), 1200, Some(json.to_owned()));
        assert_eq!(info.holder.as_deref(), Some("w-1"));
        assert_eq!(info.job_id.as_deref(), Some("job-1"));
        assert_eq!(info.attempt, Some(2));
        assert_eq!(info.fence, Some(17));
        assert_eq!(info.acquired_at_ms, Some(1_700_000_000_123));
        let missing = lease_info("t".to_owned(), 5, None);
        assert_eq!(missing.job_id, None);
    }

    #[test]
    fn error_messages_are_lowercase_without_trailing_period() {
        let errors = [
            SemaphoreError::NoNames,
            SemaphoreError::InvalidName("a b".to_owned()),
            SemaphoreError::NoLimit("x".to_owned()),
            SemaphoreError::protocol("acquire", "empty reply"),
        ];
        for error in errors {
            let text = error.to_string();
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}
