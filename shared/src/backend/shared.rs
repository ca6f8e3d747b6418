//! The state a backend's tasks and its layer share: the in-flight table, the free slots,
//! the completions waiting for acknowledgement and the early cancels.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::job::{CancelReason, RunningJob};
use super::options::BackendOptions;
use crate::queue::{Ack, Fetched, JobLease, Queue, QueueError};

/// How many completions one round trip may carry (at most [`crate::queue::MAX_BATCH`]).
pub(super) const ACK_BATCH: usize = 512;
/// How long a cancel heard for a job not in flight is kept, in case its fetch reply is late.
pub(super) const EARLY_CANCEL_KEPT: Duration = Duration::from_secs(5);
/// How often a stopping backend checks whether its last jobs have settled.
pub(super) const STOPPING_POLL: Duration = Duration::from_millis(50);

/// A fetched job, until its attempt is settled. Holding `_slot` keeps one unit of the
/// process's concurrency for this queue taken.
pub(super) struct InFlight {
    pub(super) job: RunningJob,
    pub(super) slot: OwnedSemaphorePermit,
}

/// State shared by the backend's tasks and its layer.
pub(super) struct Shared {
    pub(super) queue: Queue,
    pub(super) options: BackendOptions,
    /// The process's concurrency for this queue: a running job holds one permit. The driver
    /// holds the free ones while it fetches and returns them while it waits for work, so a
    /// hand-off can take one without waiting for the driver.
    pub(super) slots: Arc<Semaphore>,
    /// Cancelled when the backend stops fetching.
    pub(super) stop: CancellationToken,
    /// Hand-offs the taker could not start itself (no free slot, stopping): the driver
    /// starts or releases them.
    pub(super) hand_offs: mpsc::UnboundedSender<Fetched>,
    /// A hand-off consumed the idle registration: the driver registers again.
    pub(super) refresh_idle: Notify,
    pub(super) inflight: Mutex<HashMap<String, InFlight>>,
    pub(super) acks: mpsc::UnboundedSender<AckRequest>,
    /// Cancel requests heard for jobs not (yet) in flight, and when: the fetch script marks a
    /// job running before its reply reaches us, so a cancel can overtake it. Always locked
    /// after `inflight`, never alone around a registration.
    pub(super) early_cancels: Mutex<HashMap<String, Instant>>,
    /// Asks the heartbeat to renew (and so check) every lease now rather than at its tick.
    pub(super) check_leases: Notify,
    /// The driver is waiting for work (its last fetch came back short): a result has nothing
    /// to share a round trip with, so the layer acknowledges it itself, one hand-off sooner.
    pub(super) driver_idle: AtomicBool,
}

impl Shared {
    pub(super) fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn early_cancels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.early_cancels.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn settle(&self, id: &str) {
        self.inflight().remove(id);
    }

    pub(super) fn cancel_all(&self, reason: CancelReason) {
        for f in self.inflight().values() {
            f.job.cancel_with(reason);
        }
    }
}

pub(super) struct AckRequest {
    pub(super) lease: JobLease,
    pub(super) result: Vec<u8>,
    pub(super) done: oneshot::Sender<Result<Ack, SettleError>>,
}

/// Why an attempt's outcome could not be recorded (its lease then expires and the sweep re-runs
/// it, so nothing is lost).
#[derive(Debug, thiserror::Error)]
pub(super) enum SettleError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("acknowledgement failed: {0}")]
    Ack(String),
}
