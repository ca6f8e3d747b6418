//! How a backend is tuned, and how it reports the end of every attempt.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;

/// Tuning of one backend (one queue in one worker process).
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// This process's worker id, recorded as the lease holder.
    pub worker_id: String,
    /// Jobs of this queue run at once in this process (also the fetch batch bound).
    pub concurrency: usize,
    /// The longest an idle driver waits without a wake-up before it fetches anyway.
    pub poll_fallback: Duration,
    /// How often in-flight leases are renewed; a third of the job lease.
    pub heartbeat: Duration,
    /// How often this process sweeps expired leases and due delayed jobs.
    pub sweep_every: Duration,
    /// How long running jobs may finish after shutdown begins before they are put back.
    pub grace: Duration,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
    /// Where to announce that a job started and finished (for queues whose results someone
    /// waits on, such as `tool_calls`); `None` publishes nothing. The fetch and complete
    /// scripts announce `Started` and a success's `Finished` themselves (no round trip of
    /// their own); this publisher announces the other outcomes.
    pub events: Option<EventPublisher>,
    /// Told how every attempt ended and how long it ran (metrics); `None` tells no one.
    pub observer: Option<Arc<dyn AttemptObserver>>,
}

impl BackendOptions {
    /// Options derived from the job lease: heartbeat at lease/3, sweep at lease/2 (≤ 5 s).
    pub fn new(worker_id: impl Into<String>, concurrency: usize, lease: Duration) -> Self {
        Self {
            worker_id: worker_id.into(),
            concurrency: concurrency.max(1),
            poll_fallback: Duration::from_secs(1),
            heartbeat: lease / 3,
            sweep_every: (lease / 2).min(Duration::from_secs(5)),
            grace: Duration::from_secs(10),
            shutdown: CancellationToken::new(),
            events: None,
            observer: None,
        }
    }
}

/// How the lease layer settled one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The result was stored: the job is completed.
    Completed,
    /// A transient failure with attempts left: the job waits out its backoff.
    Retrying,
    /// A permanent failure, or the last attempt failed: the job is dead.
    Dead,
    /// A requested cancel ended the job.
    Cancelled,
    /// The job went back to its queue without burning the attempt (no permit, shutdown).
    PutBack,
    /// The lease was lost before the outcome could be written; nothing was written.
    LeaseLost,
    /// Redis did not take the outcome; the lease expires and the sweep re-runs the job.
    Unsettled,
}

impl AttemptOutcome {
    /// A stable lowercase name (a metrics label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Retrying => "retrying",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
            Self::PutBack => "put_back",
            Self::LeaseLost => "lease_lost",
            Self::Unsettled => "unsettled",
        }
    }
}

/// Told of every attempt the lease layer settles, with the time from the handler's start to
/// the settled write (a worker's metrics implement it).
pub trait AttemptObserver: std::fmt::Debug + Send + Sync {
    /// An attempt of a job of `queue` ended with `outcome` after `elapsed`.
    fn attempt_settled(&self, queue: &str, outcome: AttemptOutcome, elapsed: Duration);
}
