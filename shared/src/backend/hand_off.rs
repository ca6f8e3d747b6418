//! Hand-offs: jobs an enqueue leased straight to this worker, started from the wake-up
//! subscription's reader or, failing that, by the driver.

use std::sync::Arc;
use std::time::Duration;

use apalis_core::task::Task;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::dispatch::{dispatch, into_task};
use super::shared::Shared;
use crate::error_chain;
use crate::queue::Fetched;

/// Starts a job handed off by an enqueue (see [`Queue::with_hand_offs`]), on the wake-up
/// subscription's reader: with a free slot it goes straight to apalis (no hop through the
/// driver); otherwise, or while stopping, the driver takes it ([`start_hand_off`]).
pub(super) fn take_hand_off<Args: DeserializeOwned + Send + 'static>(
    shared: &Arc<Shared>,
    tasks: &mpsc::Sender<Task<Args>>,
    job: Fetched,
) {
    if !shared.stop.is_cancelled()
        && let Ok(slot) = shared.slots.clone().try_acquire_owned()
        && let Ok(place) = tasks.try_reserve()
        && let Ok(task) = into_task::<Args>(shared, &job, slot)
    {
        place.send(task);
        // The enqueue used up our idle registration.
        shared.refresh_idle.notify_one();
        return;
    }
    if let Err(mpsc::error::SendError(job)) = shared.hand_offs.send(job) {
        // The driver is gone: give the job back unstarted.
        let queue = shared.queue.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = queue.release(&job.lease, Duration::ZERO).await;
            });
        }
    }
}

/// Starts a hand-off the taker could not: on a free slot of the driver's or the semaphore's,
/// else (all slots busy, or stopping) it goes back to the queue without burning its attempt.
/// False once apalis has stopped taking tasks.
pub(super) async fn start_hand_off<Args: DeserializeOwned>(
    shared: &Shared,
    tasks: &mpsc::Sender<Task<Args>>,
    free: &mut Vec<OwnedSemaphorePermit>,
    job: Fetched,
    stopping: bool,
) -> bool {
    let slot = match stopping {
        true => None,
        false => free
            .pop()
            .or_else(|| shared.slots.clone().try_acquire_owned().ok()),
    };
    match slot {
        Some(slot) => dispatch(shared, tasks, job, slot).await,
        None => {
            if let Err(e) = shared.queue.release(&job.lease, Duration::ZERO).await {
                tracing::warn!(queue = shared.queue.name(), job_id = %job.lease.id, error = %error_chain(&e), "could not give back a hand-off; it runs again once its lease expires");
            }
            true
        }
    }
}
