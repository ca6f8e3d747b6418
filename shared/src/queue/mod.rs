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
//! | `{P:q:N}:scheduled` | zset | delayed jobs, score = due (ms) |
//! | `{P:q:N}:retry` | zset | jobs in retry backoff, score = due (ms) |
//! | `{P:q:N}:active` | zset | running attempts, member `<fence>:<id>`, score = lease expiry (ms, Redis clock) |
//! | `{P:q:N}:dead` | zset | dead jobs, score = time of death; trimmed to `dead_max` |
//! | `{P:q:N}:completed` | list | ids of recent completions, newest first; capped at `completed_index_max` |
//! | `{P:q:N}:stats` | hash | counters `completed`, `cancelled`, `ghosts`, `fence` |
//! | `{P:q:N}:paused` | string | present while paused |
//! | `{P:q:N}:j:<id>` | hash | the job: payload, state, attempts, fence, worker, timings, errors, result |
//! | `{P:q:N}:cron:<schedule>` | zset | cron ticks fired, for per-tick dedup |
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
//! # Cost per job
//!
//! Redis commands run per job inside the scripts (one script call per batch):
//! enqueue 2 (`EXISTS`, `HSET`) plus one `LPUSH` per batch; fetch 2 (`HMGET`, `HSET`) plus one
//! `RPOP`, one `ZADD` and a few constant checks per batch; complete 2 (`HSET`, `PEXPIRE`) plus
//! one `ZMSCORE` (the fence check), one `ZREM`, one `LPUSH`, one `LTRIM` and one `HINCRBY` per
//! batch.
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

mod error;
mod inspect;
mod job;
mod policy;
mod reply;
mod scripts;
mod waker;

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::{ScriptInvocation, Value};

pub use error::QueueError;
pub use inspect::{MAX_PAGE, POSITION_SCAN_MAX};
pub use job::{
    Ack, CancelOutcome, Enqueued, FailKind, FailOutcome, FetchBatch, Fetched, JobErrorRecord,
    JobInfo, JobLease, JobResult, JobState, LeaseState, NewJob, QueueCounts, RescueReport,
};
pub use policy::{Backoff, QueuePolicy};
pub use waker::{CancelSignal, HandOffTaker, Wake, WakeSignal, Waker};

use crate::keys::{Keys, QueueKeys};
use crate::redis::RedisHandle;
use policy::millis;

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

/// What one worker round trip ([`Queue::complete_and_fetch`]) did.
#[derive(Debug, Default)]
pub struct Cycle {
    /// One [`Ack`] per completion, in order.
    pub acks: Vec<Ack>,
    /// The jobs leased for the free slots.
    pub batch: FetchBatch,
    /// The call used up its budget on stale ids (a mass cancel): fetch again at once.
    pub more: bool,
}

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
    stats: String,
    paused: String,
    idle: String,
    hand_offs: String,
    job_prefix: String,
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
            stats: qk.stats(),
            paused: qk.paused(),
            idle: qk.idle(),
            hand_offs: qk.hand_offs(),
            job_prefix: qk.job_prefix(),
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

    // ----- enqueue -------------------------------------------------------------------------

    /// Enqueues one job. Idempotent by id: a job whose id exists is left alone and reported as
    /// [`Enqueued::Duplicate`].
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        let mut out = self.enqueue_bulk(std::slice::from_ref(job)).await?;
        out.pop()
            .ok_or_else(|| QueueError::Protocol("enqueue: empty reply".into()))
    }

    /// Enqueues a batch in one round trip, returning one outcome per job in order. Batches over
    /// [`MAX_BATCH`] are split into several script calls sent in one pipeline (batches over
    /// [`MAX_PIPELINE`] × [`MAX_BATCH`] in several); each call is atomic. A repeated id within
    /// the batch is a duplicate of its first occurrence.
    pub async fn enqueue_bulk(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids = jobs
            .iter()
            .map(|j| match &j.id {
                Some(id) => check_id(id).map(|()| id.clone()),
                None => Ok(uuid::Uuid::now_v7().to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut invocations = Vec::with_capacity(jobs.len().div_ceil(MAX_BATCH));
        for (chunk, chunk_ids) in jobs.chunks(MAX_BATCH).zip(ids.chunks(MAX_BATCH)) {
            let mut inv = scripts::ENQUEUE.prepare_invoke();
            inv.key(&self.inner.wait)
                .key(&self.inner.scheduled)
                .key(&self.inner.paused)
                .key(&self.inner.idle)
                .key(&self.inner.hand_offs)
                .key(&self.inner.active)
                .key(&self.inner.stats)
                .key(&self.inner.job_prefix)
                .arg(self.plen())
                .arg(&self.inner.wake_channel);
            for (job, id) in chunk.iter().zip(chunk_ids) {
                inv.key(self.job_key(id));
                self.job_args(&mut inv, job);
            }
            invocations.push(inv);
        }
        let replies = self.invoke_all(&invocations).await?;
        let mut out = Vec::with_capacity(jobs.len());
        let mut ids = ids.into_iter();
        for reply in replies {
            for flag in reply::array(reply, "enqueue")? {
                let id = ids
                    .next()
                    .ok_or_else(|| QueueError::Protocol("enqueue: too many results".into()))?;
                out.push(if reply::int(&flag, "enqueue")? == 1 {
                    Enqueued::Created(id)
                } else {
                    Enqueued::Duplicate(id)
                });
            }
        }
        if out.len() != jobs.len() {
            return Err(QueueError::Protocol("enqueue: too few results".into()));
        }
        Ok(out)
    }

    /// The four per-job arguments of the enqueue scripts.
    fn job_args(&self, inv: &mut ScriptInvocation<'_>, job: &NewJob) {
        inv.arg(&job.payload[..])
            .arg(job.delay.map(millis).unwrap_or(0))
            .arg(job.run_at_ms.unwrap_or(0))
            .arg(
                job.max_attempts
                    .unwrap_or(self.inner.policy.max_attempts)
                    .max(1),
            );
    }

    /// Enqueues the job of one tick of cron schedule `schedule`, exactly once per tick across
    /// the fleet however many processes call it: the job id is `cron:<schedule>:<tick secs>`,
    /// and the tick is also remembered for the policy's `cron_dedup_window`, so a late caller
    /// cannot fire it again after the job and its result expired. A tick older than the newest
    /// fired one minus the window is refused as already fired. A `chrono::DateTime<Utc>`
    /// (what apalis-cron yields) converts with `.into()`.
    pub async fn enqueue_tick(
        &self,
        schedule: &str,
        tick: SystemTime,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Enqueued, QueueError> {
        let secs = job::unix_ms(tick) / 1000;
        let id = format!("cron:{schedule}:{secs}");
        check_id(&id)?;
        let job = NewJob::new(payload).with_id(id.clone());
        let mut inv = scripts::ENQUEUE_TICK.prepare_invoke();
        inv.key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.paused)
            .key(self.inner.keys.cron_ticks(schedule))
            .key(&self.inner.idle)
            .key(&self.inner.hand_offs)
            .key(&self.inner.active)
            .key(&self.inner.stats)
            .key(&self.inner.job_prefix)
            .key(self.job_key(&id))
            .arg(self.plen())
            .arg(&self.inner.wake_channel)
            .arg(secs)
            .arg(self.inner.policy.cron_dedup_window.as_secs());
        self.job_args(&mut inv, &job);
        let reply: Value = inv.invoke_async(&mut self.conn.clone()).await?;
        let flags = reply::array(reply, "enqueue_tick")?;
        let created = flags
            .first()
            .map(|v| reply::int(v, "enqueue_tick"))
            .transpose()?
            == Some(1);
        Ok(if created {
            Enqueued::Created(id)
        } else {
            Enqueued::Duplicate(id)
        })
    }

    // ----- fetch and leases ----------------------------------------------------------------

    /// Leases up to `max` (at most [`MAX_BATCH`]) queued jobs for worker `worker`, oldest
    /// first, after promoting due delayed and retrying jobs. Returns nothing while paused.
    pub async fn fetch(&self, worker: &str, max: usize) -> Result<Vec<Fetched>, QueueError> {
        Ok(self.fetch_batch(worker, max).await?.jobs)
    }

    /// [`fetch`](Self::fetch), also telling whether the queue is paused and when the next
    /// delayed job is due — what an idle worker needs to choose how long to wait.
    pub async fn fetch_batch(&self, worker: &str, max: usize) -> Result<FetchBatch, QueueError> {
        self.fetch_batch_idle(worker, max, DEFAULT_IDLE_FOR).await
    }

    /// Withdraws `worker`'s idle registration (a worker that stops fetching: enqueues then wake
    /// someone else).
    pub async fn leave_idle(&self, worker: &str) -> Result<(), QueueError> {
        // Registration first: once it is gone no enqueue can take the terms.
        let _: (i64, i64) = redis::pipe()
            .zrem(&self.inner.idle, worker)
            .hdel(&self.inner.hand_offs, worker)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Registers `worker` as idle again, for `idle_for`, without fetching: for a worker whose
    /// registration a hand-off used up while it still has free slots. Safe without a fetch:
    /// whatever was enqueued while it was not registered woke another worker or every worker.
    pub async fn register_idle(&self, worker: &str, idle_for: Duration) -> Result<(), QueueError> {
        let _: Value = scripts::REGISTER_IDLE
            .key(&self.inner.idle)
            .key(&self.inner.hand_offs)
            .arg(worker)
            .arg(millis(idle_for.min(MAX_IDLE_FOR)))
            .arg(self.hand_offs_flag())
            .arg(self.inner.policy.lease_ms())
            .arg(self.inner.events.as_deref().unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// [`Queue::fetch_batch`] by a caller that, when the batch comes back short, waits at most
    /// `idle_for` before it fetches again: until then it is registered idle, and the next
    /// enqueue wakes it alone on [`QueueKeys::wake_channel_of`] (a [`Waker`] made for this
    /// worker hears it).
    pub async fn fetch_batch_idle(
        &self,
        worker: &str,
        max: usize,
        idle_for: Duration,
    ) -> Result<FetchBatch, QueueError> {
        let max = max.min(MAX_BATCH);
        if max == 0 {
            return Ok(FetchBatch::default());
        }
        // A call pops a bounded number of stale ids; with a very long run of them (a mass
        // cancel), it reports `more` and the next call continues.
        for _ in 0..1000 {
            let Cycle { batch, more, .. } = self
                .complete_and_fetch::<JobLease, &[u8]>(&[], worker, max, idle_for)
                .await?;
            if batch.jobs.is_empty() && more {
                continue;
            }
            return Ok(batch);
        }
        // Still only stale ids after many bounded steps: say "fetch again now".
        Ok(FetchBatch {
            next_due_in: Some(Duration::ZERO),
            ..FetchBatch::default()
        })
    }

    /// Renews the leases of a worker's running jobs in one script call (split per
    /// [`MAX_BATCH`], one round trip), returning one state per lease in order.
    pub async fn heartbeat(&self, leases: &[JobLease]) -> Result<Vec<LeaseState>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let lease_ms = self.inner.policy.lease_ms();
        let invocations: Vec<_> = leases
            .chunks(MAX_BATCH)
            .map(|chunk| {
                let mut inv = scripts::HEARTBEAT.prepare_invoke();
                inv.key(&self.inner.active).arg(lease_ms);
                for l in chunk {
                    inv.key(self.job_key(&l.id)).arg(l.member());
                }
                inv
            })
            .collect();
        let mut out = Vec::with_capacity(leases.len());
        for reply in self.invoke_all(&invocations).await? {
            let items = reply::array(reply, "heartbeat")?;
            for v in items.iter().skip(1) {
                out.push(match reply::int(v, "heartbeat")? {
                    1 => LeaseState::Held,
                    2 => LeaseState::CancelRequested,
                    _ => LeaseState::Lost,
                });
            }
        }
        check_len(out.len(), leases.len(), "heartbeat")?;
        Ok(out)
    }

    /// Completes one attempt: stores `result` and releases the lease atomically, only if the
    /// lease is still ours. The job and its result are kept for the policy's `result_ttl`.
    pub async fn complete(&self, lease: &JobLease, result: &[u8]) -> Result<Ack, QueueError> {
        let mut out = self.complete_many(&[(lease, result)]).await?;
        out.pop()
            .ok_or_else(|| QueueError::Protocol("complete: empty reply".into()))
    }

    /// Completes a batch of attempts in one round trip (one script call per [`MAX_BATCH`]),
    /// each fenced on its own; returns one [`Ack`] per item in order.
    pub async fn complete_many<L, R>(&self, items: &[(L, R)]) -> Result<Vec<Ack>, QueueError>
    where
        L: Borrow<JobLease>,
        R: AsRef<[u8]>,
    {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let policy = &self.inner.policy;
        let invocations: Vec<_> = items
            .chunks(MAX_BATCH)
            .map(|chunk| {
                let mut inv = scripts::COMPLETE.prepare_invoke();
                inv.key(&self.inner.active)
                    .key(&self.inner.completed)
                    .key(&self.inner.stats)
                    .arg(self.plen())
                    .arg(policy.result_ttl_ms())
                    .arg(policy.completed_index_max.max(1))
                    .arg(self.inner.events.as_deref().unwrap_or(""));
                for (lease, result) in chunk {
                    let lease = lease.borrow();
                    inv.key(self.job_key(&lease.id))
                        .arg(lease.member())
                        .arg(result.as_ref());
                }
                inv
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for reply in self.invoke_all(&invocations).await? {
            for v in reply::array(reply, "complete")? {
                out.push(if reply::int(&v, "complete")? == 1 {
                    Ack::Done
                } else {
                    Ack::LeaseLost
                });
            }
        }
        check_len(out.len(), items.len(), "complete")?;
        Ok(out)
    }

    /// One worker round trip, in one script call: completes `items` as
    /// [`Queue::complete_many`] does, then leases up to `free` jobs plus one for each attempt
    /// it completed (whose slot is now free) as [`Queue::fetch_batch`] does. A worker that
    /// acknowledges and refills in the same call needs one round trip per cycle instead of two.
    /// At most [`MAX_BATCH`] items; `free` is capped at [`MAX_BATCH`]; `idle_for` as in
    /// [`Queue::fetch_batch_idle`].
    pub async fn complete_and_fetch<L, R>(
        &self,
        items: &[(L, R)],
        worker: &str,
        free: usize,
        idle_for: Duration,
    ) -> Result<Cycle, QueueError>
    where
        L: Borrow<JobLease>,
        R: AsRef<[u8]>,
    {
        if items.len() > MAX_BATCH {
            return Err(QueueError::Protocol(format!(
                "complete_and_fetch: {} completions, at most {MAX_BATCH}",
                items.len()
            )));
        }
        let policy = &self.inner.policy;
        let events = self.inner.events.as_deref().unwrap_or("");
        let mut inv = scripts::COMPLETE_FETCH.prepare_invoke();
        inv.key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.active)
            .key(&self.inner.stats)
            .key(&self.inner.paused)
            .key(&self.inner.job_prefix)
            .key(&self.inner.completed)
            .key(&self.inner.idle)
            .key(&self.inner.hand_offs)
            .arg(free.min(MAX_BATCH))
            .arg(worker)
            .arg(policy.lease_ms())
            .arg(policy.promote_chunk.clamp(1, MAX_BATCH))
            .arg(events)
            .arg(self.plen())
            .arg(policy.result_ttl_ms())
            .arg(policy.completed_index_max.max(1))
            .arg(&self.inner.wake_channel)
            .arg(millis(idle_for.min(MAX_IDLE_FOR)))
            .arg(self.hand_offs_flag());
        for (lease, result) in items {
            let lease = lease.borrow();
            inv.key(self.job_key(&lease.id))
                .arg(lease.member())
                .arg(result.as_ref());
        }
        let reply = inv.invoke_async(&mut self.conn.clone()).await?;
        let mut items_out = reply::array(reply, "complete_and_fetch")?.into_iter();
        let n = items_out
            .next()
            .map(|v| reply::int(&v, "complete_and_fetch"))
            .transpose()?
            .unwrap_or(-1);
        check_len(
            usize::try_from(n).unwrap_or(usize::MAX),
            items.len(),
            "complete_and_fetch",
        )?;
        let mut acks = Vec::with_capacity(items.len());
        for v in items_out.by_ref().take(items.len()) {
            acks.push(if reply::int(&v, "complete_and_fetch")? == 1 {
                Ack::Done
            } else {
                Ack::LeaseLost
            });
        }
        check_len(acks.len(), items.len(), "complete_and_fetch")?;
        let (batch, more) = parse_fetch(Value::Array(items_out.collect()))?;
        Ok(Cycle { acks, batch, more })
    }

    /// Ends one attempt as failed, only if the lease is still ours. `Transient` retries after
    /// the policy's backoff for this attempt, `RetryAfter` after the given wait, while attempts
    /// remain; `Permanent`, or a failure of the last attempt, makes the job dead. A job whose
    /// cancel was requested ends as cancelled instead. The error is kept in the job's history.
    pub async fn fail(
        &self,
        lease: &JobLease,
        error: &str,
        kind: FailKind,
    ) -> Result<FailOutcome, QueueError> {
        let policy = &self.inner.policy;
        let (kind_name, delay) = match kind {
            FailKind::Transient => ("transient", policy.backoff.delay(lease.attempt)),
            FailKind::RetryAfter(d) => ("transient", d),
            FailKind::Permanent => ("permanent", Duration::ZERO),
        };
        let reply: Value = scripts::FAIL
            .key(self.job_key(&lease.id))
            .key(&self.inner.active)
            .key(&self.inner.retry)
            .key(&self.inner.dead)
            .key(&self.inner.stats)
            .key(&self.inner.job_prefix)
            .key(&self.inner.paused)
            .arg(self.plen())
            .arg(lease.member())
            .arg(truncate(error, MAX_ERROR_LEN))
            .arg(kind_name)
            .arg(millis(delay))
            .arg(policy.result_ttl_ms())
            .arg(policy.dead_max)
            .arg(policy.errors_kept)
            .arg(&self.inner.wake_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let items = reply::array(reply, "fail")?;
        let code = items
            .first()
            .map(|v| reply::int(v, "fail"))
            .transpose()?
            .unwrap_or(0);
        Ok(match code {
            1 => FailOutcome::Retrying {
                at_ms: items.get(1).and_then(reply::opt_u64).unwrap_or(0),
            },
            2 => FailOutcome::Dead,
            3 => FailOutcome::Cancelled,
            _ => FailOutcome::LeaseLost,
        })
    }

    /// Puts a running job back without burning its attempt — no permit within the wait, or
    /// the worker is shutting down — only if the lease is still ours. With a zero `delay` the
    /// job goes to the head of the wait list; otherwise it is scheduled `delay` from now. A job
    /// whose cancel was requested ends as cancelled instead (still [`Ack::Done`]).
    pub async fn release(&self, lease: &JobLease, delay: Duration) -> Result<Ack, QueueError> {
        let code: i64 = scripts::RELEASE
            .key(self.job_key(&lease.id))
            .key(&self.inner.active)
            .key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.stats)
            .key(&self.inner.paused)
            .arg(self.plen())
            .arg(lease.member())
            .arg(millis(delay))
            .arg(self.inner.policy.result_ttl_ms())
            .arg(&self.inner.wake_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(if code == 0 { Ack::LeaseLost } else { Ack::Done })
    }

    /// One sweep step, safe to run from every worker at once: up to `max` jobs whose lease
    /// expired go back to the head of the wait list (the crashed run counted as an attempt), or
    /// dead when that was their last attempt, or cancelled when a cancel was requested; then up
    /// to `max` due delayed and `max` due retrying jobs are promoted. When
    /// [`RescueReport::more`] is set, call again.
    pub async fn sweep(&self, max: usize) -> Result<RescueReport, QueueError> {
        let policy = &self.inner.policy;
        let reply: Value = scripts::SWEEP
            .key(&self.inner.active)
            .key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.dead)
            .key(&self.inner.stats)
            .key(&self.inner.paused)
            .key(&self.inner.job_prefix)
            .arg(max.clamp(1, MAX_BATCH))
            .arg(policy.result_ttl_ms())
            .arg(policy.dead_max)
            .arg(policy.errors_kept)
            .arg(&self.inner.wake_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let items = reply::array(reply, "sweep")?;
        let at = |i: usize| items.get(i).and_then(reply::opt_u64).unwrap_or(0);
        Ok(RescueReport {
            rescued: at(0),
            dead: at(1),
            cancelled: at(2),
            promoted: at(3),
            more: at(4) == 1,
        })
    }

    // ----- control -------------------------------------------------------------------------

    /// Cancels a job: a queued, scheduled or retrying job ends at once; a running job is
    /// flagged and its worker signalled on the cancel channel (and by its next heartbeat).
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, QueueError> {
        check_id(id)?;
        let code: i64 = scripts::CANCEL
            .key(self.job_key(id))
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.stats)
            .arg(id)
            .arg(self.inner.policy.result_ttl_ms())
            .arg(&self.inner.cancel_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match code {
            1 => CancelOutcome::Removed,
            2 => CancelOutcome::Signalled,
            3 => CancelOutcome::AlreadyFinished,
            _ => CancelOutcome::NotFound,
        })
    }

    /// Deletes a job in any state, with its index entries; a running job's worker is signalled
    /// and loses its lease. Returns whether the job existed.
    pub async fn remove(&self, id: &str) -> Result<bool, QueueError> {
        check_id(id)?;
        let code: i64 = scripts::REMOVE
            .key(self.job_key(id))
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.active)
            .key(&self.inner.dead)
            .key(&self.inner.stats)
            .arg(id)
            .arg(&self.inner.cancel_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(code == 1)
    }

    /// Puts a dead job back at the head of the wait list with a fresh attempt budget (its
    /// error history is kept). Returns whether the job was dead.
    pub async fn retry_dead(&self, id: &str) -> Result<bool, QueueError> {
        check_id(id)?;
        let code: i64 = scripts::RETRY_DEAD
            .key(self.job_key(id))
            .key(&self.inner.dead)
            .key(&self.inner.wait)
            .key(&self.inner.paused)
            .arg(id)
            .arg(&self.inner.wake_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(code == 1)
    }

    /// Pauses the queue: fetches return nothing until [`resume`](Self::resume); enqueues,
    /// heartbeats, acks and sweeps go on.
    pub async fn pause(&self) -> Result<(), QueueError> {
        let _: () = redis::cmd("SET")
            .arg(&self.inner.paused)
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Resumes a paused queue and wakes idle workers when jobs are waiting.
    pub async fn resume(&self) -> Result<(), QueueError> {
        let _: i64 = scripts::RESUME
            .key(&self.inner.paused)
            .key(&self.inner.wait)
            .arg(&self.inner.wake_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Whether the queue is paused.
    pub async fn is_paused(&self) -> Result<bool, QueueError> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&self.inner.paused)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
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

/// Parses a fetch reply into the batch and the "more stale ids to skip" flag.
fn parse_fetch(reply: Value) -> Result<(FetchBatch, bool), QueueError> {
    let items = reply::array(reply, "fetch")?;
    if items.len() < 4 || (items.len() - 4) % 6 != 0 {
        return Err(QueueError::Protocol(format!(
            "fetch: reply of {} items",
            items.len()
        )));
    }
    let paused = reply::int(&items[0], "fetch")? == 1;
    let next_due = reply::int(&items[1], "fetch")?;
    let more = reply::int(&items[2], "fetch")? == 1;
    let lease_until_ms = reply::opt_u64(&items[3]).unwrap_or(0);
    let mut jobs = Vec::with_capacity((items.len() - 4) / 6);
    let mut it = items.into_iter().skip(4);
    while let (Some(id), Some(payload), Some(a), Some(m), Some(e), Some(f)) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) {
        let attempt = reply::int(&a, "fetch attempt")?;
        jobs.push(Fetched {
            lease: JobLease {
                id: reply::string(id, "fetch id")?,
                fence: reply::opt_u64(&f)
                    .ok_or_else(|| QueueError::Protocol("fetch: bad fence".into()))?,
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            },
            payload: reply::opt_bytes(payload).unwrap_or_default(),
            max_attempts: reply::opt_u64(&m)
                .map(|m| u32::try_from(m).unwrap_or(u32::MAX))
                .unwrap_or(1),
            enqueued_at_ms: reply::opt_u64(&e).unwrap_or(0),
            lease_until_ms,
        });
    }
    let batch = FetchBatch {
        jobs,
        paused,
        next_due_in: u64::try_from(next_due).ok().map(Duration::from_millis),
    };
    Ok((batch, more))
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
