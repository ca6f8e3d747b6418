//! The values that cross the queue API: jobs going in, leases coming out, and the outcome of
//! each protocol step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::QueueError;

/// The state of a job (see the diagram in [`crate::queue`]). Stored in the job hash under
/// these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// In the wait list, ready to run.
    Queued,
    /// Waiting for its run-at time (enqueued with a delay, or released with one).
    Scheduled,
    /// Leased by a worker.
    Running,
    /// Waiting out the backoff after a transient failure.
    Retrying,
    /// Finished successfully; kept `result_ttl`.
    Completed,
    /// Out of attempts or failed permanently; kept up to `dead_max`.
    Dead,
    /// Cancelled before or while running; kept `result_ttl`.
    Cancelled,
}

impl JobState {
    /// Every state, in pipeline order.
    pub const ALL: [JobState; 7] = [
        Self::Queued,
        Self::Scheduled,
        Self::Running,
        Self::Retrying,
        Self::Completed,
        Self::Dead,
        Self::Cancelled,
    ];

    /// The name stored in Redis and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Completed => "completed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the job will not run again by itself.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Dead | Self::Cancelled)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewJob {
    /// The job id; a fresh UUIDv7 when `None`. Enqueueing an id that exists is a no-op.
    pub id: Option<String>,
    /// The payload, opaque to the queue (JSON by convention, see [`NewJob::json`]).
    pub payload: Vec<u8>,
    /// Run no earlier than this long after the enqueue (measured on the Redis clock).
    pub delay: Option<Duration>,
    /// Run no earlier than this Unix time in milliseconds; `delay` wins when both are set.
    pub run_at_ms: Option<u64>,
    /// Attempts for this job instead of the queue policy's.
    pub max_attempts: Option<u32>,
}

impl NewJob {
    /// A job with this payload and a generated id.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// A job whose payload is `value` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, QueueError> {
        Ok(Self::new(serde_json::to_vec(value)?))
    }

    /// Sets the id, which makes the enqueue idempotent.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Delays the first run.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Runs no earlier than `at`.
    pub fn with_run_at(mut self, at: SystemTime) -> Self {
        self.run_at_ms = Some(unix_ms(at));
        self
    }

    /// Overrides the queue's attempt limit for this job.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job with this id was created.
    Created(String),
    /// A job with this id already existed (or the cron tick already fired): nothing changed.
    Duplicate(String),
}

impl Enqueued {
    /// The job id.
    pub fn id(&self) -> &str {
        match self {
            Self::Created(id) | Self::Duplicate(id) => id,
        }
    }

    /// Whether a new job was created.
    pub fn is_created(&self) -> bool {
        matches!(self, Self::Created(_))
    }
}

/// The right to act on one attempt of a job: complete, fail, release or renew it.
///
/// The fence is unique per attempt (a queue-wide counter taken at fetch); every acting script
/// checks it against the job's current one, so a worker whose lease was lost — the job was
/// rescued and fetched again — can never overwrite the new attempt or its result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobLease {
    /// The job id.
    pub id: String,
    /// The attempt's fencing token.
    pub fence: u64,
    /// The attempt number (1-based); every start counts.
    pub attempt: u32,
    /// When the attempt started (Unix ms, Redis clock: the fetch's or the hand-off's time),
    /// from which the completion measures its run time for the history.
    pub started_ms: u64,
}

impl JobLease {
    /// The attempt's member in the queue's active set: `<fence>:<id>`.
    pub(crate) fn member(&self) -> String {
        format!("{}:{}", self.fence, self.id)
    }
}

/// A job handed to a worker by [`Queue::fetch`](super::Queue::fetch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The lease of this attempt.
    pub lease: JobLease,
    /// The payload as enqueued.
    pub payload: Vec<u8>,
    /// The job's attempt limit.
    pub max_attempts: u32,
    /// When the job was enqueued (Unix ms, Redis clock).
    pub enqueued_at_ms: u64,
    /// When the lease expires unless renewed (Unix ms, Redis clock).
    pub lease_until_ms: u64,
}

impl Fetched {
    /// The job id.
    pub fn id(&self) -> &str {
        &self.lease.id
    }

    /// The attempt number (1-based).
    pub fn attempt(&self) -> u32 {
        self.lease.attempt
    }

    /// Whether a failure of this attempt makes the job dead.
    pub fn is_last_attempt(&self) -> bool {
        self.lease.attempt >= self.max_attempts
    }

    /// The payload deserialized from JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, QueueError> {
        Ok(serde_json::from_slice(&self.payload)?)
    }

    /// Decodes a hand-off as an enqueue publishes it on an idle worker's own channel:
    /// `<fence> <attempt> <max attempts> <enqueued ms> <lease until ms> <id length>\n<id><payload>`
    /// (see [`Queue::with_hand_offs`](super::Queue::with_hand_offs)). `None` when `msg` is not
    /// one (an empty message is a plain wake-up).
    pub fn from_hand_off(msg: &[u8]) -> Option<Self> {
        let nl = msg.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&msg[..nl]).ok()?;
        let mut nums = head.split(' ').map(|n| n.parse::<u64>().ok());
        let mut next = || nums.next().flatten();
        let (fence, attempt, max, enqueued, until, id_len) =
            (next()?, next()?, next()?, next()?, next()?, next()?);
        let rest = &msg[nl + 1..];
        let id_len = usize::try_from(id_len).ok().filter(|&l| l <= rest.len())?;
        let id = std::str::from_utf8(&rest[..id_len]).ok()?.to_owned();
        Some(Self {
            lease: JobLease {
                id,
                fence,
                attempt: u32::try_from(attempt).ok()?,
                // A hand-off starts the job in the enqueue that creates it.
                started_ms: enqueued,
            },
            payload: rest[id_len..].to_vec(),
            max_attempts: u32::try_from(max).ok()?,
            enqueued_at_ms: enqueued,
            lease_until_ms: until,
        })
    }
}

/// The result of one fetch call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchBatch {
    /// The leased jobs, oldest first; at most the `max` asked for.
    pub jobs: Vec<Fetched>,
    /// The queue is paused: nothing was fetched.
    pub paused: bool,
    /// When fewer jobs than asked were found: how long until the earliest delayed or retrying
    /// job is due, if any. An idle worker waits at most this long before fetching again (zero:
    /// fetch again at once).
    pub next_due_in: Option<Duration>,
}

/// The outcome of a fenced complete or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Done: the fence was still the job's.
    Done,
    /// The lease is no longer ours (expired and rescued, removed): nothing was written.
    LeaseLost,
}

/// How an attempt failed, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// Worth another attempt after the policy's backoff.
    Transient,
    /// Worth another attempt, but not before this wait (a 429 that names its wait).
    RetryAfter(Duration),
    /// No attempt can succeed: dead at once.
    Permanent,
}

/// What a fenced fail did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// The job will run again at this Unix time in milliseconds (Redis clock).
    Retrying {
        /// The retry's due time.
        at_ms: u64,
    },
    /// The job is dead (permanent error, or out of attempts).
    Dead,
    /// A cancel had been requested: the job ended as cancelled instead of retrying.
    Cancelled,
    /// The lease is no longer ours: nothing was written.
    LeaseLost,
}

/// The state of one lease after a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed.
    Held,
    /// Renewed, but an operator asked the job to stop: cancel the handler, then `fail` or
    /// `release` (either ends the job as cancelled).
    CancelRequested,
    /// Not ours any more: stop the handler and do not write its result.
    Lost,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was waiting (queued, scheduled or retrying) and is now cancelled.
    Removed,
    /// The job is running: its worker was signalled (pub/sub, and heartbeats report
    /// [`LeaseState::CancelRequested`]).
    Signalled,
    /// The job had already finished (completed, dead or cancelled).
    AlreadyFinished,
    /// No such job.
    NotFound,
}

/// The sizes of a queue per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct QueueCounts {
    /// Jobs ready to run.
    pub queued: u64,
    /// Jobs waiting for their run-at time.
    pub scheduled: u64,
    /// Jobs leased by workers.
    pub running: u64,
    /// Jobs waiting out a retry backoff.
    pub retrying: u64,
    /// Dead jobs kept (at most `dead_max`).
    pub dead: u64,
    /// Jobs completed since the queue was created (a counter; their data expires).
    pub completed: u64,
    /// Jobs cancelled since the queue was created (a counter).
    pub cancelled: u64,
    /// Whether the queue is paused.
    pub paused: bool,
    /// Fairness keys with queued jobs (fair share); `queued` counts their jobs.
    #[serde(skip_serializing_if = "is_zero")]
    pub fair_keys: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a queued job stands ([`Queue::position`](super::Queue::position)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct QueuePosition {
    /// 1 for the next job a worker takes, 2 for the one after, and so on. For a job with a
    /// fairness key, the most jobs that run before it with equal weights plus one: the wait
    /// list, then one job per waiting key for each job ahead of it within its key, then the
    /// keys ahead of its key.
    pub position: u64,
    /// For a job with a fairness key: 1 for its key's next job, 2 for the one after, …
    pub in_key: Option<u64>,
    /// For a job with a fairness key: the keys served before its key's next turn.
    pub keys_ahead: Option<u64>,
}

/// What one sweep step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RescueReport {
    /// Jobs whose lease expired, put back in the wait list.
    pub rescued: u64,
    /// Jobs whose lease expired on their last attempt, now dead.
    pub dead: u64,
    /// Jobs whose lease expired after a cancel was requested, now cancelled.
    pub cancelled: u64,
    /// Delayed and retrying jobs that came due and moved to the wait list.
    pub promoted: u64,
    /// The step hit its bound: more expired leases may be waiting; sweep again.
    pub more: bool,
}

/// One failed attempt, as recorded in the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobErrorRecord {
    /// The attempt that failed.
    pub attempt: u32,
    /// When (Unix ms, Redis clock).
    #[serde(rename = "at")]
    pub at_ms: u64,
    /// `transient`, `permanent` or `lease` (the lease expired: the worker died or stalled).
    pub kind: String,
    /// The error message.
    #[serde(rename = "error")]
    pub message: String,
}

/// Everything known about one job, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    /// The job id.
    pub id: String,
    /// The queue's name.
    pub queue: String,
    /// The current state.
    pub state: JobState,
    /// The payload (serialized as JSON when it is JSON, else as a lossy string).
    #[serde(serialize_with = "payload_as_json")]
    pub payload: Vec<u8>,
    /// Attempts started so far (released attempts given back).
    pub attempts: u32,
    /// The attempt limit.
    pub max_attempts: u32,
    /// When it was enqueued (Unix ms).
    pub enqueued_at_ms: u64,
    /// When it is (or was last) due, for delayed and retried jobs (Unix ms).
    pub run_at_ms: Option<u64>,
    /// When its latest attempt started (Unix ms).
    pub started_at_ms: Option<u64>,
    /// When it finished (Unix ms).
    pub finished_at_ms: Option<u64>,
    /// The worker holding (or that last held) the lease.
    pub worker: Option<String>,
    /// The fence of the latest attempt.
    pub fence: Option<u64>,
    /// When the running attempt's lease expires (Unix ms).
    pub lease_until_ms: Option<u64>,
    /// An operator asked the running job to stop.
    pub cancel_requested: bool,
    /// Why it is dead.
    pub dead_reason: Option<String>,
    /// The last few failed attempts, oldest first.
    pub errors: Vec<JobErrorRecord>,
    /// The result stored by `complete` (only from [`Queue::job`](super::Queue::job)).
    #[serde(serialize_with = "opt_payload_as_json")]
    pub result: Option<Vec<u8>>,
}

/// The outcome of a finished job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// `Completed`, `Dead` or `Cancelled`.
    pub state: JobState,
    /// What `complete` stored.
    pub result: Option<Vec<u8>>,
    /// The last error (dead jobs: the reason).
    pub error: Option<String>,
    /// Attempts used.
    pub attempts: u32,
    /// When it finished (Unix ms).
    pub finished_at_ms: Option<u64>,
}

/// Unix milliseconds of `t` (0 before the epoch).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(super::policy::millis)
        .unwrap_or(0)
}

fn payload_as_json<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(&String::from_utf8_lossy(bytes)),
    }
}

fn opt_payload_as_json<S: serde::Serializer>(
    bytes: &Option<Vec<u8>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => payload_as_json(b, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_off_decodes_with_any_bytes_in_id_and_payload() {
        let msg = b"42 1 3 1700000000000 1700000030000 6\nid 1\n2{\"a\":\"b c\"}\n";
        let job = Fetched::from_hand_off(msg).expect("a hand-off");
        assert_eq!(
            job.lease,
            JobLease {
                id: "id 1\n2".into(),
                fence: 42,
                attempt: 1,
                started_ms: 1_700_000_000_000,
            }
        );
        assert_eq!(job.payload, b"{\"a\":\"b c\"}\n");
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.enqueued_at_ms, 1_700_000_000_000);
        assert_eq!(job.lease_until_ms, 1_700_000_030_000);
    }

    #[test]
    fn anything_else_is_not_a_hand_off() {
        for msg in [
            &b""[..],
            b"42 1 3 1 2\nid",
            b"42 1 3 1 2 9\nshort",
            b"x 1 3 1 2 2\nid",
            b"42 1 3 1 2 2 id",
        ] {
            assert_eq!(Fetched::from_hand_off(msg), None, "{msg:?}");
        }
    }
}
