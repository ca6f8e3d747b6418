//! What a handler sees of the job it runs, and why a running job can be stopped.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::queue::JobLease;

/// Why a running job's cancellation token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// A client or operator cancelled the job.
    Requested,
    /// The lease was lost (expired and rescued, or Redis unreachable for a whole lease).
    LeaseLost,
    /// The worker is shutting down and the grace period is over.
    Shutdown,
}

/// What a handler can see of the job it runs: injected into every task's data, so a handler
/// takes it as `Data<RunningJob>`.
#[derive(Debug, Clone)]
pub struct RunningJob {
    /// The queue's name.
    pub queue: String,
    /// The attempt's lease (job id, fence, attempt number); read it through
    /// [`id`](Self::id), [`attempt`](Self::attempt) and [`lease`](Self::lease).
    pub(super) lease: JobLease,
    /// The job's attempt limit.
    pub max_attempts: u32,
    /// When the job was enqueued (Unix ms).
    pub enqueued_at_ms: u64,
    /// Fires when the job must stop; [`RunningJob::cancel_reason`] says why.
    pub cancel: CancellationToken,
    pub(super) reason: Arc<OnceLock<CancelReason>>,
}

impl RunningJob {
    /// The job's id.
    pub fn id(&self) -> &str {
        &self.lease.id
    }

    /// This attempt's number (1-based; every start counts).
    pub fn attempt(&self) -> u32 {
        self.lease.attempt
    }

    /// This attempt's fenced lease on the job.
    pub fn lease(&self) -> &JobLease {
        &self.lease
    }

    /// Why the job was cancelled, once it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.reason.get().copied()
    }

    pub(super) fn cancel_with(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }
}
