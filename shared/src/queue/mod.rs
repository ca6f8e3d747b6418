//! The durable job queue: its Redis protocol, written as a handful of small Lua scripts.
//!
//! A [`Queue`] is a cheap, cloneable handle on one named queue. Producers [`enqueue`] jobs
//! (one at a time or in bulk, now or later, idempotently by id); workers [`fetch`] batches of
//! jobs under a lease, renew the leases with one [`heartbeat`] per worker, and end each attempt
//! with a fenced [`complete`], [`fail`] or [`release`]; any live worker's [`sweep`] re-runs the
//! jobs of a worker that died. A [`Waker`] wakes idle workers within milliseconds of an enqueue
//! (Redis pub/sub) with a poll fallback. Operators inspect and steer queues through [`counts`],
//! [`list`], [`job`], [`cancel`], [`retry_dead`], [`remove`], [`pause`] and [`resume`].
//!
//! # Job states
//!
//! ```text
//!                enqueue with a delay          release with a delay
//!                         │                             │
//!                         ▼                             │
//!                     scheduled ◄───────────────────────┘
//!                         │ due
//!                         ▼
//!   enqueue ─────────► queued ◄──── release · sweep: lease expired, attempts left
//!                         │         · retrying once due · retry_dead (from dead)
//!                         │ fetch: attempt + 1, new fence, lease
//!                         ▼
//!                      running ──┬── complete ───────────────────────────► completed
//!                                ├── fail: transient, attempts left ─────► retrying
//!                                ├── fail: permanent or last attempt;
//!                                │   lease expired on the last attempt ──► dead
//!                                └── cancel requested, then fail,
//!                                    release or lease expiry ────────────► cancelled
//!
//!   queued · scheduled · retrying ── cancel ──► cancelled
//!   completed and cancelled jobs are kept result_ttl; dead jobs up to dead_max
//! ```
//!
//! Every start of a job counts as an attempt (the counter is incremented at fetch), crash
//! re-runs included: a job whose worker dies every time ends dead after `max_attempts`.
//! [`release`] gives the attempt back (no permit within the wait, worker shutdown).
//!
//! # Fencing
//!
//! Each fetch gives the attempt a fence, unique per queue (a counter in the stats hash), and
//! records the running attempt in the active set as the member `<fence>:<id>`. Complete, fail,
//! release and heartbeat act only while that member is there — one `ZMSCORE` checks a whole
//! batch — so a worker whose lease expired (and whose job was rescued and fetched again) gets
//! [`Ack::LeaseLost`] and can never overwrite the new attempt or its result.
//!
//! # Keys
//!
//! All keys of queue `N` under prefix `P` share the hash tag `{P:q:N}` (one cluster slot);
//! see [`QueueKeys`]:
//!
//! | key | type | what |
//! |---|---|---|
//! | `{P:q:N}:wait` | list | ids ready to run; LPUSH at enqueue, RPOP at fetch (FIFO); due, rescued and released jobs are RPUSHed (run next) |
//! | `{P:q:N}:fair:k:<key>` | list | fair share: queued ids of fairness key `<key>`, LPUSH at enqueue, taken from the right; put-backs RPUSHed |
//! | `{P:q:N}:fair:ring` | list | fair share: each key with queued ids once; a fetch takes the right end's key, then moves it to the left end (or drops it when its list is empty) |
//! | `{P:q:N}:fair:weight` | hash | fair share: weights other than 1, key → weight |
//! | `{P:q:N}:fair:credit` | hash | fair share: jobs the ring's head key gave in a row (weighted keys) |
//! | `{P:q:N}:scheduled` | zset | delayed jobs, score = due (ms) |
//! | `{P:q:N}:retry` | zset | jobs in retry backoff, score = due (ms) |
//! | `{P:q:N}:active` | zset | running attempts, member `<fence>:<id>`, score = lease expiry (ms, Redis clock) |
//! | `{P:q:N}:dead` | zset | dead jobs, score = time of death; trimmed to `dead_max` |
//! | `{P:q:N}:completed` | list | ids of recent completions, newest first; capped at `completed_index_max` |
//! | `{P:q:N}:cancelled` | list | ids of recent cancellations, newest first; capped at `completed_index_max` |
//! | `{P:q:N}:history:<minute>` | hash | the minute's `completed`, `failed`, `retried`, `dead` and `wait:<b>`/`run:<b>` histogram buckets; expires after ~25 h (see [`history`]) |
//! | `{P:q:N}:stats` | hash | counters `completed`, `cancelled`, `ghosts`, `fence`, `fair` (ids in the key lists, ghosts included) |
//! | `{P:q:N}:paused` | string | present while paused |
//! | `{P:q:N}:j:<id>` | hash | the job: payload, state, attempts, fence, worker, timings, errors, result |
//! | `{P:q:N}:cron:<schedule>` | zset | cron ticks fired, for per-tick dedup |
//! | `{P:q:N}:group:<name>` | set | a capped group's jobs (a session's calls), counted and capped by the enqueue script, pruned of finished jobs at the cap; expires a day after its last admission |
//! | `{P:q:N}:group:<name>:pending` | zset | ids the group admitted before their job exists, score = when (ms); kept a minute |
//! | `{P:q:N}:idle` | zset | workers waiting for work, score = until when the registration holds (ms) |
//! | `{P:q:N}:handoff` | hash | hand-off terms of the idle workers that take hand-offs |
//! | `P:q:N:wake` | channel | published to every worker when the wait list becomes non-empty and no worker is registered idle (and on resume, release, rescue, retry) |
//! | `P:q:N:wake:<worker>` | channel | wakes that one idle worker, or carries a job handed off to it |
//! | `P:q:N:cancel` | channel | ids of running jobs asked to stop |
//!
//! Cancelling or removing a queued job does not `LREM` the wait list: the job hash changes state
//! and the stale id ("ghost", counted in `stats`) is dropped by the fetch that pops it, so every
//! operation costs the same with a backlog of ten jobs or ten million.
//!
//! # Fair share
//!
//! A job enqueued with a fairness key ([`Queue::enqueue_in_group`] with a [`Fairness`]) waits in
//! its key's list instead of the wait list. A fetch serves the wait list first, then takes keyed
//! jobs round-robin across the ring's keys, a key of weight w giving w in a row: a constant
//! number of commands per job (`LINDEX`, `RPOP`, `LLEN`, `LMOVE` or `RPOP` of the ring, plus a
//! `HGET` of the weight when some key has one), however many keys wait. Every path that
//! queues a job again puts a keyed one at the head of its key's list.
//!
//! # Cost per job
//!
//! Redis commands run per job inside the scripts (one script call per batch):
//! enqueue 2 (`EXISTS`, `HSET`) plus one `LPUSH` per batch; fetch 2 (`HMGET`, `HSET`) plus one
//! `RPOP`, one `ZADD` and a few constant checks per batch; complete 2 (`HSET`, `PEXPIRE`) plus
//! one `ZMSCORE` (the fence check), one `ZREM`, one `LPUSH`, one `LTRIM` and one `HINCRBY` per
//! batch. The [`history`] (on by default) adds no command per job: one `HINCRBY` per
//! distinct history field per script call, and an `EXPIRE … NX` when a minute's hash is new.
//!
//! [`enqueue`]: Queue::enqueue
//! [`fetch`]: Queue::fetch
//! [`heartbeat`]: Queue::heartbeat
//! [`complete`]: Queue::complete
//! [`fail`]: Queue::fail
//! [`release`]: Queue::release
//! [`sweep`]: Queue::sweep
//! [`counts`]: Queue::counts
//! [`list`]: Queue::list
//! [`job`]: Queue::job
//! [`cancel`]: Queue::cancel
//! [`retry_dead`]: Queue::retry_dead
//! [`remove`]: Queue::remove
//! [`pause`]: Queue::pause
//! [`resume`]: Queue::resume

mod attempt;
mod control;
mod enqueue;
mod error;
pub mod history;
mod inspect;
mod job;
mod policy;
mod reply;
mod scripts;
mod waker;

use std::sync::Arc;
use std::time::Duration;

use redis::{ScriptInvocation, Value};

pub use attempt::Cycle;
pub use control::{MAX_BULK, Removed};
pub use enqueue::{Fairness, MAX_FAIRNESS_KEY_LEN};
pub use error::QueueError;
pub use inspect::{
    MAX_OFFSET, MAX_PAGE, POSITION_SCAN_MAX, RUNNING_SCAN_MAX, SEARCH_BYTES_MAX, SEARCH_SCAN_MAX,
    SearchResult,
};
pub use job::{
    Ack, CancelOutcome, Enqueued, FailKind, FailOutcome, FetchBatch, Fetched, JobErrorRecord,
    JobInfo, JobLease, JobResult, JobState, LeaseState, NewJob, QueueCounts, QueuePosition,
    RescueReport,
};
pub use policy::{Backoff, QueuePolicy};
pub use waker::{CancelSignal, HandOffTaker, Wake, WakeSignal, Waker};

use crate::keys::{Keys, QueueKeys};
use crate::redis::RedisHandle;

/// The queue of tool calls, enqueued by the daemon.
pub const TOOL_CALLS: &str = "tool_calls";
/// The queue of file uploads to Moonshot.
pub const UPLOADS: &str = "uploads";
/// The queue of pushes of uploaded bytes to Supabase Storage.
pub const STORAGE_PUSH: &str = "storage_push";
/// The queue of scheduled orphan cleanups.
pub const CLEANUP: &str = "cleanup";
/// Every queue of the system.
pub const ALL_QUEUES: [&str; 4] = [TOOL_CALLS, UPLOADS, STORAGE_PUSH, CLEANUP];

/// The longest job id accepted.
pub const MAX_ID_LEN: usize = 512;
/// The most jobs one script call handles; larger batches are split into several calls sent
/// in one pipeline (one round trip), and a fetch returns at most this many jobs.
pub const MAX_BATCH: usize = 1000;
/// The most script calls sent in one pipeline (one round trip): a batch of up to
/// `MAX_PIPELINE × MAX_BATCH` jobs takes one round trip, a larger one several.
pub const MAX_PIPELINE: usize = 16;
/// How long a caller of [`Queue::fetch_batch`] is taken to wait, when its batch comes back
/// short, before it fetches again (its idle registration lasts that long, plus a second).
pub const DEFAULT_IDLE_FOR: Duration = Duration::from_secs(10);
/// The longest idle registration a fetch records.
const MAX_IDLE_FOR: Duration = Duration::from_secs(86_400);
/// Error messages longer than this (bytes) are truncated before they are stored.
pub const MAX_ERROR_LEN: usize = 4096;

/// A handle on one named queue. Cheap to clone: clones share the connection and key strings.
#[derive(Clone, Debug)]
pub struct Queue {
    /// The shared multiplexed connection; never used for blocking commands.
    conn: RedisHandle,
    inner: Arc<Inner>,
}

/// The key strings of the queue, formatted once, and its policy.
#[derive(Debug, Clone)]
struct Inner {
    keys: QueueKeys,
    policy: QueuePolicy,
    wait: String,
    scheduled: String,
    retry: String,
    active: String,
    dead: String,
    completed: String,
    cancelled: String,
    history: String,
    stats: String,
    paused: String,
    idle: String,
    hand_offs: String,
    job_prefix: String,
    fair_prefix: String,
    fair_ring: String,
    /// The fresh fair keys (served before the ring).
    fair_fresh: String,
    wake_channel: String,
    cancel_channel: String,
    /// Where job events go (`<prefix><job id>`), when the scripts announce them.
    events: Option<String>,
    /// Idle registrations of this handle take hand-offs (see [`Queue::with_hand_offs`]).
    takes_hand_offs: bool,
}

impl Queue {
    /// A handle on queue `name` of the deployment whose keys are `keys`.
    pub fn new(conn: RedisHandle, keys: &Keys, name: &str, policy: QueuePolicy) -> Self {
        let qk = keys.queue(name);
        let inner = Inner {
            wait: qk.wait(),
            scheduled: qk.scheduled(),
            retry: qk.retry(),
            active: qk.active(),
            dead: qk.dead(),
            completed: qk.completed(),
            cancelled: qk.cancelled(),
            history: qk.history_prefix(),
            stats: qk.stats(),
            paused: qk.paused(),
            idle: qk.idle(),
            hand_offs: qk.hand_offs(),
            job_prefix: qk.job_prefix(),
            fair_prefix: qk.fair_prefix(),
            fair_ring: qk.fair_ring(),
            fair_fresh: qk.fair_fresh(),
            wake_channel: qk.wake_channel(),
            cancel_channel: qk.cancel_channel(),
            events: None,
            takes_hand_offs: false,
            keys: qk,
            policy,
        };
        Self {
            conn,
            inner: Arc::new(inner),
        }
    }

    /// The same queue, whose fetches and completions also announce each job's
    /// [`JobEvent::Started`](crate::events::JobEvent) and, on success,
    /// [`JobEvent::Finished`](crate::events::JobEvent) on channel `<channel_prefix><job id>`,
    /// from inside their scripts: no extra round trip per job, and a `Finished` is published
    /// only together with the result it announces.
    pub fn with_job_events(&self, channel_prefix: impl Into<String>) -> Self {
        let mut inner = (*self.inner).clone();
        inner.events = Some(channel_prefix.into());
        Self {
            conn: self.conn.clone(),
            inner: Arc::new(inner),
        }
    }

    /// The same queue, whose idle registrations take **hand-offs**: while this worker is
    /// registered idle, an enqueue of a lone job with nothing queued ahead of it leases the
    /// job to this worker itself and publishes the lease and the payload on the worker's own
    /// channel (payloads up to 64 KiB), so the worker starts it without a fetch round trip.
    /// Only for a worker whose [`Waker`] delivers hand-offs to a taker
    /// ([`Waker::on_hand_off`]); a hand-off it cannot run must be released, and one received
    /// by a worker that then dies runs again once its lease expires, like a crashed attempt.
    ///
    /// An enqueue hands a job off only when the worker's subscription received the message
    /// (PUBLISH counts the receivers), so a worker that died or is reconnecting is never
    /// given one. On a Redis Cluster, where PUBLISH counts only the receiving node's
    /// subscribers, hand-offs are off and the worker is woken to fetch as usual.
    pub fn with_hand_offs(&self) -> Self {
        let mut inner = (*self.inner).clone();
        inner.takes_hand_offs = !matches!(self.conn, RedisHandle::Cluster(_));
        Self {
            conn: self.conn.clone(),
            inner: Arc::new(inner),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        self.inner.keys.name()
    }

    /// The queue's policy.
    pub fn policy(&self) -> &QueuePolicy {
        &self.inner.policy
    }

    /// The queue's keys and channels.
    pub fn keys(&self) -> &QueueKeys {
        &self.inner.keys
    }

    fn job_key(&self, id: &str) -> String {
        let mut k = String::with_capacity(self.inner.job_prefix.len() + id.len());
        k.push_str(&self.inner.job_prefix);
        k.push_str(id);
        k
    }

    /// The scripts' "takes hand-offs" argument.
    fn hand_offs_flag(&self) -> &'static str {
        if self.inner.takes_hand_offs { "1" } else { "0" }
    }

    fn plen(&self) -> usize {
        self.inner.job_prefix.len()
    }

    /// Runs script invocations in as few round trips as possible: one `EVALSHA`, or pipelines
    /// of up to [`MAX_PIPELINE`] of them (so a huge batch never holds one reply past the
    /// client's response timeout). A script Redis does not know yet (first use, or after a
    /// restart) is loaded and rerun.
    async fn invoke_all(
        &self,
        invocations: &[ScriptInvocation<'_>],
    ) -> Result<Vec<Value>, QueueError> {
        let mut conn = self.conn.clone();
        if let [one] = invocations {
            return Ok(vec![one.invoke_async(&mut conn).await?]);
        }
        let mut out = Vec::with_capacity(invocations.len());
        for group in invocations.chunks(MAX_PIPELINE) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for inv in group {
                pipe.invoke_script(inv);
            }
            let mut replies: Vec<Value> = pipe.query_async(&mut conn).await?;
            for (inv, reply) in group.iter().zip(replies.iter_mut()) {
                if let Value::ServerError(err) = reply {
                    if err.kind() == Some(redis::ServerErrorKind::NoScript) {
                        // `invoke_async` loads the script and runs this call again.
                        *reply = inv.invoke_async(&mut conn).await?;
                    } else {
                        return Err(QueueError::Redis(err.clone().into()));
                    }
                }
            }
            out.extend(replies);
        }
        Ok(out)
    }
}

/// Rejects ids that cannot be stored.
fn check_id(id: &str) -> Result<(), QueueError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(QueueError::InvalidId(truncate(id, 64).to_owned()));
    }
    Ok(())
}

fn check_len(got: usize, want: usize, what: &str) -> Result<(), QueueError> {
    if got == want {
        Ok(())
    } else {
        Err(QueueError::Protocol(format!(
            "{what}: {got} results for {want} items"
        )))
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
