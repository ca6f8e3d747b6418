//! Provider permits: the leased semaphores a job holds while it calls a provider.
//!
//! A job asks for every permit it needs at once (`global` plus its provider's, all or nothing),
//! waits at most its provider's wait (`KIMI_SEMAPHORE_TIMEOUT`, `GLM_SEMAPHORE_TIMEOUT`,
//! `EXAI_SEMAPHORE_TIMEOUT`), and publishes a `waiting` progress event when it has to wait. When
//! the wait runs out the job is put back ([`JobError::PutBack`]) without burning an attempt. The
//! permits are held by a [`LeaseGuard`] that renews them; [`holding`] runs the provider work and
//! stops it if the lease is lost (another job may then hold the permit), releasing at the end.

use std::future::Future;

use exai_shared::backend::RunningJob;
use exai_shared::jobs::JobError;
use exai_shared::providers::ProviderError;
use exai_shared::semaphore::{Acquire, HolderInfo, LeaseGuard};

use crate::metrics::WaitOutcome;
use crate::state::AppState;

/// How long a job that found no permit waits before it runs again (its attempt is not counted).
pub const PUT_BACK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes a permit of every semaphore in `names` for the job of `lease`; `None` when `names` is
/// empty (a job that calls no provider).
pub async fn acquire(
    state: &AppState,
    lease: &RunningJob,
    names: &[&str],
    provider: Option<&str>,
) -> Result<Option<LeaseGuard>, JobError> {
    if names.is_empty() {
        return Ok(None);
    }
    let holder = HolderInfo::new(&state.worker_id, lease.id(), lease.attempt());
    let failed = |e: exai_shared::semaphore::SemaphoreError| {
        JobError::Transient(format!("semaphores: {}", exai_shared::error_chain(&e)))
    };
    if let Some(guard) = state
        .semaphores
        .try_acquire(names, &holder)
        .await
        .map_err(failed)?
    {
        return Ok(Some(guard));
    }
    let wait = state.config.semaphores.wait_for(provider);
    let what = names.join(" + ");
    state
        .progress(
            lease.id(),
            "waiting",
            format!("waiting for provider capacity ({what})"),
        )
        .await;
    let acquired = state
        .semaphores
        .acquire(names, &holder, wait, &lease.cancel)
        .await
        .map_err(failed)?;
    let waited = match &acquired {
        Acquire::Acquired(_) => WaitOutcome::Acquired,
        Acquire::TimedOut => WaitOutcome::TimedOut,
        Acquire::Cancelled => WaitOutcome::Cancelled,
    };
    state.metrics.semaphore_wait(names, waited);
    match acquired {
        Acquire::Acquired(guard) => {
            state
                .progress(lease.id(), "running", "provider capacity acquired")
                .await;
            Ok(Some(guard))
        }
        Acquire::TimedOut => Err(JobError::PutBack {
            reason: format!("no {what} permit within {wait:?}"),
            after: PUT_BACK_AFTER,
        }),
        Acquire::Cancelled => Err(JobError::Cancelled(
            "cancelled while waiting for a permit".to_owned(),
        )),
    }
}

/// Runs `work` while `guard` holds its permits, then releases them. If the lease is lost
/// meanwhile, `work` is dropped, the loss is counted in the metrics, and the attempt fails
/// transiently (it is retried; nothing it would have returned is written).
pub async fn holding<T>(
    state: &AppState,
    guard: Option<LeaseGuard>,
    work: impl Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    let Some(guard) = guard else {
        return work.await;
    };
    let lost = guard.lost().clone();
    let outcome = tokio::select! {
        r = work => r,
        _ = lost.cancelled() => {
            state.metrics.semaphore_lease_lost(guard.names());
            Err(JobError::Transient(
                "the provider permit's lease was lost; stopping".to_owned(),
            ))
        }
    };
    if let Err(e) = guard.release().await {
        tracing::warn!(error = %exai_shared::error_chain(&e), "permit release failed; it expires with its lease");
    }
    outcome
}

/// Adaptive concurrency: tells the semaphores how a provider call through semaphore `name` (the
/// provider's, e.g. `kimi`) ended. A congestion answer (429 for concurrency or rate, overload)
/// lowers the fleet's effective limit; a success counts towards raising it; any other error
/// (quota, bad request, a server error) changes nothing. Failures to record are logged, never
/// fail the job.
pub async fn observe<T>(state: &AppState, name: Option<&str>, outcome: &Result<T, ProviderError>) {
    let Some(name) = name else {
        return;
    };
    let step = match outcome {
        Ok(_) => state.semaphores.success(name).await,
        Err(e) if e.is_congestion() => state.semaphores.congestion(name).await,
        Err(_) => return,
    };
    match step {
        Ok(Some(change)) => {
            state
                .metrics
                .semaphore_limit_changed(name, change.decreased);
            tracing::info!(
                semaphore = name,
                effective = change.effective,
                ceiling = change.ceiling,
                decreased = change.decreased,
                "adaptive concurrency changed the effective limit"
            );
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(semaphore = name, error = %exai_shared::error_chain(&e), "adaptive concurrency step failed");
        }
    }
}
