//! The backend's background tasks besides the driver: the heartbeat, the sweeper, the cancel
//! listener and the shutdown grace timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::job::{CancelReason, RunningJob};
use super::shared::{EARLY_CANCEL_KEPT, Shared};
use crate::error_chain;
use crate::queue::{JobLease, LeaseState, Waker};

/// Renews every in-flight lease once per period, with one script call.
pub(super) async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let period = shared.options.heartbeat.max(Duration::from_millis(10));
    let lease_len = period * 3;
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Keep renewing during the shutdown grace period: only fetching stops at once.
            _ = stop.cancelled(), if shared.inflight().is_empty() => return,
            _ = tick.tick() => {}
            _ = shared.check_leases.notified() => {}
        }
        let jobs: Vec<RunningJob> = shared.inflight().values().map(|f| f.job.clone()).collect();
        if jobs.is_empty() {
            last_ok = Instant::now();
            if stop.is_cancelled() {
                return;
            }
            continue;
        }
        let leases: Vec<JobLease> = jobs.iter().map(|j| j.lease.clone()).collect();
        match shared.queue.heartbeat(&leases).await {
            Ok(states) => {
                last_ok = Instant::now();
                for (job, state) in jobs.iter().zip(states) {
                    match state {
                        LeaseState::Held => {}
                        LeaseState::CancelRequested => job.cancel_with(CancelReason::Requested),
                        LeaseState::Lost => {
                            tracing::warn!(queue = %job.queue, job_id = %job.lease.id, "lease lost; stopping the job");
                            job.cancel_with(CancelReason::LeaseLost);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(queue = shared.queue.name(), error = %error_chain(&e), "heartbeat failed");
                if last_ok.elapsed() >= lease_len {
                    // Another worker may already be running these jobs: stop ours.
                    shared.cancel_all(CancelReason::LeaseLost);
                }
            }
        }
    }
}

/// Returns expired leases and promotes due jobs, in bounded steps, every sweep interval.
pub(super) async fn sweeper(shared: Arc<Shared>, stop: CancellationToken) {
    use rand::Rng;
    loop {
        // Jitter so a fleet started at once does not sweep in lockstep.
        let jitter = rand::rng().random_range(0.8..1.2);
        let wait = shared.options.sweep_every.mul_f64(jitter);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        for _ in 0..100 {
            match shared.queue.sweep(1000).await {
                Ok(report) if report.more => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(queue = shared.queue.name(), error = %error_chain(&e), "sweep failed");
                    break;
                }
            }
        }
    }
}

/// Cancels in-flight jobs named on the queue's cancel channel.
pub(super) async fn cancel_listener(shared: Arc<Shared>, waker: Waker, stop: CancellationToken) {
    let mut rx = waker.cancellations();
    loop {
        let signal = tokio::select! {
            _ = stop.cancelled() => return,
            s = rx.recv() => s,
        };
        match signal {
            Ok(s) if s.queue == shared.queue.name() => {
                let inflight = shared.inflight();
                match inflight.get(&s.job_id) {
                    Some(f) => f.job.cancel_with(CancelReason::Requested),
                    None => {
                        // Perhaps leased by us with the reply still on its way: remember it
                        // for a while, so the lease is checked as soon as it registers.
                        let mut early = shared.early_cancels();
                        early.retain(|_, at| at.elapsed() < EARLY_CANCEL_KEPT);
                        early.insert(s.job_id, Instant::now());
                    }
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// After shutdown begins, gives running jobs `grace`, then cancels them to be put back.
pub(super) async fn grace_timer(shared: Arc<Shared>, shutdown: CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(shared.options.grace).await;
    shared.cancel_all(CancelReason::Shutdown);
}
