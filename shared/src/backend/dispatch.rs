//! A fetched job into apalis: registered in the in-flight table on its slot and built into an
//! apalis task, or recorded dead when its payload cannot decode. Used by the driver for fetched
//! jobs and by the hand-off path for jobs handed to this worker.

use std::sync::{Arc, OnceLock};

use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::job::RunningJob;
use super::shared::{InFlight, Shared};
use crate::error_chain;
use crate::queue::{FailKind, Fetched};

/// Registers `job` in flight on `slot` and hands it to apalis, or records it as dead when its
/// payload does not decode. False once apalis has stopped taking tasks.
pub(super) async fn dispatch<Args: DeserializeOwned>(
    shared: &Shared,
    tasks: &mpsc::Sender<Task<Args>>,
    job: Fetched,
    slot: OwnedSemaphorePermit,
) -> bool {
    match into_task::<Args>(shared, &job, slot) {
        Ok(task) => tasks.send(task).await.is_ok(),
        Err(message) => {
            shared.settle(&job.lease.id);
            if let Err(e) = shared
                .queue
                .fail(&job.lease, &message, FailKind::Permanent)
                .await
            {
                tracing::error!(job_id = %job.lease.id, error = %error_chain(&e), "could not record an undecodable job");
            }
            true
        }
    }
}

/// Registers a fetched job as in flight and builds its apalis task; a payload that does not
/// decode is returned as an error message (it can never succeed).
pub(super) fn into_task<Args: DeserializeOwned>(
    shared: &Shared,
    job: &Fetched,
    slot: OwnedSemaphorePermit,
) -> Result<Task<Args>, String> {
    let args: Args = serde_json::from_slice(&job.payload).map_err(|e| {
        format!(
            "payload does not decode as a {} job: {e}",
            shared.queue.name()
        )
    })?;
    let lease = RunningJob {
        queue: shared.queue.name().to_owned(),
        lease: job.lease.clone(),
        max_attempts: job.max_attempts,
        enqueued_at_ms: job.enqueued_at_ms,
        cancel: CancellationToken::new(),
        reason: Arc::new(OnceLock::new()),
    };
    {
        let mut inflight = shared.inflight();
        if shared.early_cancels().remove(&job.lease.id).is_some() {
            // The cancel may concern an earlier job of the same id: the heartbeat asks Redis,
            // which knows whether this attempt's cancel was requested.
            shared.check_leases.notify_one();
        }
        inflight.insert(
            job.lease.id.clone(),
            InFlight {
                job: lease.clone(),
                slot,
            },
        );
    }
    Ok(TaskBuilder::new(args)
        .task_id(TaskId::from_string(job.lease.id.clone()))
        .attempt(job.lease.attempt as usize)
        .max_attempts(job.max_attempts as usize)
        .lock_by(Some(shared.options.worker_id.clone()))
        .data(lease)
        .build())
}
