//! The tower layer that settles every attempt with fenced writes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use serde::Serialize;
use tokio::sync::oneshot;
use tower_layer::Layer;
use tower_service::Service;

use super::TaskLease;
use super::job::{CancelReason, RunningJob};
use super::options::AttemptOutcome;
use super::shared::{AckRequest, SettleError, Shared};
use crate::error_chain;
use crate::events::JobEvent;
use crate::jobs::JobError;
use crate::queue::{Ack, FailKind, FailOutcome, QueueError};

/// The tower layer that settles every attempt with fenced writes (see the module docs).
#[derive(Clone)]
pub struct LeaseLayer {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for LeaseLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLayer")
            .field("queue", &self.shared.queue.name())
            .finish()
    }
}

impl<S> Layer<S> for LeaseLayer {
    type Service = LeaseService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LeaseService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`LeaseLayer`] wraps around the handler.
#[derive(Clone)]
pub struct LeaseService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, Args, Res> Service<Task<Args>> for LeaseService<S>
where
    S: Service<Task<Args>, Response = Res>,
    S::Error: Into<BoxDynError>,
    S::Future: Send + 'static,
    Res: Serialize + Send + Sync + 'static,
{
    type Response = Res;
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<Res, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let job = task.parts_job_lease();
        let fut = self.inner.call(task);
        let shared = self.shared.clone();
        let started_at = Instant::now();
        Box::pin(async move {
            let Some(job) = job else {
                // Not one of ours (cannot happen with this backend): just run it.
                return fut.await.map_err(Into::into);
            };
            let events = shared.options.events.as_ref();
            let outcome = tokio::select! {
                r = fut => r.map_err(Into::into),
                _ = job.cancel.cancelled() => Err(Box::new(JobError::Cancelled(
                    match job.cancel_reason() {
                        Some(CancelReason::LeaseLost) => "lease lost",
                        Some(CancelReason::Shutdown) => "worker shutting down",
                        _ => "cancel requested",
                    }
                    .to_owned(),
                )) as BoxDynError),
            };
            let settled = match settle(&shared, &job, &outcome).await {
                Ok(settled) => settled,
                Err(e) => {
                    tracing::error!(queue = %job.queue, job_id = %job.lease.id, error = %error_chain(&e), "could not settle the attempt; its lease will expire and the sweep will re-run it");
                    AttemptOutcome::Unsettled
                }
            };
            shared.settle(&job.lease.id);
            if let Some(observer) = &shared.options.observer {
                observer.attempt_settled(&job.queue, settled, started_at.elapsed());
            }
            // A completion's `Finished` went out with its result, from the script.
            if let Some(events) = events.filter(|_| settled != AttemptOutcome::Completed) {
                events.publish(&job.lease.id, &JobEvent::Finished).await;
            }
            outcome
        })
    }
}

/// Records the outcome of one attempt in Redis and says what became of the job.
async fn settle<Res: Serialize>(
    shared: &Shared,
    job: &RunningJob,
    outcome: &Result<Res, BoxDynError>,
) -> Result<AttemptOutcome, SettleError> {
    let queue = &shared.queue;
    let lease = &job.lease;
    match outcome {
        Ok(res) => {
            let result = serde_json::to_vec(res).map_err(QueueError::from)?;
            if shared.driver_idle.load(Ordering::Relaxed) {
                let ack = queue.complete(lease, &result).await?;
                return Ok(match ack {
                    Ack::Done => AttemptOutcome::Completed,
                    Ack::LeaseLost => {
                        tracing::warn!(queue = %job.queue, job_id = %lease.id, "result discarded: the lease was lost");
                        AttemptOutcome::LeaseLost
                    }
                });
            }
            let (tx, rx) = oneshot::channel();
            shared
                .acks
                .send(AckRequest {
                    lease: lease.clone(),
                    result,
                    done: tx,
                })
                .map_err(|_| SettleError::Ack("acknowledger stopped".to_owned()))?;
            let ack = rx
                .await
                .map_err(|_| SettleError::Ack("acknowledger stopped".to_owned()))??;
            if ack == Ack::LeaseLost {
                tracing::warn!(queue = %job.queue, job_id = %lease.id, "result discarded: the lease was lost");
                return Ok(AttemptOutcome::LeaseLost);
            }
            Ok(AttemptOutcome::Completed)
        }
        Err(e) => {
            let error = e.downcast_ref::<JobError>();
            let message = e.to_string();
            let put_back = |ack| match ack {
                Ack::Done => AttemptOutcome::PutBack,
                Ack::LeaseLost => AttemptOutcome::LeaseLost,
            };
            let failed = match error {
                Some(JobError::PutBack { after, .. }) => {
                    return Ok(put_back(queue.release(lease, *after).await?));
                }
                Some(JobError::Cancelled(_)) => match job.cancel_reason() {
                    Some(CancelReason::LeaseLost) => return Ok(AttemptOutcome::LeaseLost),
                    Some(CancelReason::Shutdown) => {
                        return Ok(put_back(queue.release(lease, Duration::ZERO).await?));
                    }
                    // A requested cancel ends the job as cancelled whatever the kind.
                    _ => queue.fail(lease, &message, FailKind::Permanent).await?,
                },
                Some(JobError::Permanent(_)) => {
                    queue.fail(lease, &message, FailKind::Permanent).await?
                }
                Some(JobError::RetryAfter { after, .. }) => {
                    queue
                        .fail(lease, &message, FailKind::RetryAfter(*after))
                        .await?
                }
                Some(JobError::Transient(_)) | None => {
                    queue.fail(lease, &message, FailKind::Transient).await?
                }
            };
            Ok(match failed {
                FailOutcome::Dead => {
                    tracing::warn!(queue = %job.queue, job_id = %lease.id, attempt = lease.attempt, error = %message, "job dead");
                    AttemptOutcome::Dead
                }
                FailOutcome::Retrying { at_ms } => {
                    tracing::info!(queue = %job.queue, job_id = %lease.id, attempt = lease.attempt, retry_at_ms = at_ms, error = %message, "job will retry");
                    AttemptOutcome::Retrying
                }
                FailOutcome::Cancelled => AttemptOutcome::Cancelled,
                FailOutcome::LeaseLost => AttemptOutcome::LeaseLost,
            })
        }
    }
}
