//! The driver: the backend's one loop of queue round trips (acknowledge completions, refill
//! free slots), and the registration of each leased job in the in-flight table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use apalis_core::task::Task;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::dispatch::dispatch;
use super::hand_off::start_hand_off;
use super::shared::{ACK_BATCH, AckRequest, STOPPING_POLL, SettleError, Shared};
use crate::error_chain;
use crate::queue::{Ack, Cycle, Fetched, JobLease, WakeSignal, Waker};

/// The driver's channels: tasks to apalis, results to acknowledge, hand-offs to start.
pub(super) struct DriverChannels<Args> {
    pub(super) tasks: mpsc::Sender<Task<Args>>,
    pub(super) acks: mpsc::UnboundedReceiver<AckRequest>,
    pub(super) hand_offs: mpsc::UnboundedReceiver<Fetched>,
}

/// The backend's one loop of queue round trips. Whenever completions are waiting or slots
/// are free, it acknowledges the completions and refills the free slots — the completed
/// attempts' own included — in one round trip ([`Queue::complete_and_fetch`]), and hands the
/// leased jobs to apalis. Whatever queued up while a round trip was in flight goes in the
/// next one, so batches grow with the load by themselves. When a fetch comes back short, it
/// fetches again only once woken by an enqueue, at the poll fallback, or when the next
/// delayed job is due, whichever is first; completions meanwhile are acknowledged alone, and
/// a hand-off (which used up the idle registration) makes it register again while a slot is
/// free, without leaving its idle state. Once stopped it fetches nothing more but keeps
/// acknowledging until no job is in flight.
pub(super) async fn driver<Args: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    mut ch: DriverChannels<Args>,
    mut signal: WakeSignal,
    waker: Waker,
) {
    let stop = shared.stop.clone();
    let slots = shared.slots.clone();
    // Free slots held by this loop while it fetches: taken from `slots`, or left by completed
    // attempts. While it waits for work it holds none (a hand-off takes one directly).
    let mut free: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut acks: Vec<AckRequest> = Vec::with_capacity(ACK_BATCH);
    // Set while the queue has nothing for us: fetch again once woken or at this instant.
    let mut idle_until: Option<Instant> = None;
    let mut error_delay = Duration::from_millis(50);
    let mut left_idle = false;
    loop {
        let stopping = stop.is_cancelled();
        if stopping && !left_idle {
            // No more fetches from here: enqueues must wake someone else, and every hand-off
            // made before the withdrawal is heard before we go on.
            left_idle = true;
            if let Err(e) = shared.queue.leave_idle(&shared.options.worker_id).await {
                tracing::debug!(queue = shared.queue.name(), error = %error_chain(&e), "could not withdraw the idle registration");
            }
            if let Err(e) = waker.sync().await {
                tracing::debug!(queue = shared.queue.name(), error = %error_chain(&e), "could not flush the hand-offs");
            }
        }
        while let Ok(job) = ch.hand_offs.try_recv() {
            if !start_hand_off(&shared, &ch.tasks, &mut free, job, stopping).await {
                return;
            }
        }
        if stopping {
            free.clear();
            if acks.is_empty() {
                if shared.inflight().is_empty() {
                    return;
                }
                let more =
                    tokio::time::timeout(STOPPING_POLL, ch.acks.recv_many(&mut acks, ACK_BATCH));
                if let Ok(0) = more.await {
                    return;
                }
                continue;
            }
        } else {
            if idle_until.is_some_and(|until| signal.woken() || Instant::now() >= until) {
                idle_until = None;
            }
            if idle_until.is_none() {
                while let Ok(p) = slots.clone().try_acquire_owned() {
                    free.push(p);
                }
            } else {
                free.clear();
            }
            while acks.len() < ACK_BATCH {
                match ch.acks.try_recv() {
                    Ok(a) => acks.push(a),
                    Err(_) => break,
                }
            }
        }
        let fetch = !stopping && idle_until.is_none();
        shared.driver_idle.store(!fetch, Ordering::Relaxed);
        let refill = fetch && !free.is_empty();
        if acks.is_empty() && !refill {
            let idle_for = idle_until.map(|u| u.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = stop.cancelled(), if !stopping => {}
                n = ch.acks.recv_many(&mut acks, ACK_BATCH) => if n == 0 {
                    return;
                },
                Some(job) = ch.hand_offs.recv() => {
                    if !start_hand_off(&shared, &ch.tasks, &mut free, job, stopping).await {
                        return;
                    }
                }
                _ = shared.refresh_idle.notified(), if idle_until.is_some() => {
                    // A hand-off used the idle registration up: register again while a slot
                    // is free (no fetch: anything enqueued meanwhile woke someone).
                    if slots.available_permits() > 0 {
                        let wait = idle_until.map_or(Duration::ZERO, |u| u.saturating_duration_since(Instant::now()));
                        if let Err(e) = shared.queue.register_idle(&shared.options.worker_id, wait).await {
                            tracing::debug!(queue = shared.queue.name(), error = %error_chain(&e), "could not register idle again");
                        }
                    }
                }
                p = slots.clone().acquire_owned(), if idle_until.is_none() => {
                    free.push(p.expect("slots are never closed"));
                }
                _ = signal.wait(idle_for.unwrap_or_default()), if idle_for.is_some() => {
                    idle_until = None;
                }
            }
            continue;
        }

        let asked = if fetch { free.len() } else { 0 };
        if fetch {
            // Wake-ups from now on are news for the next round.
            signal.mark_seen();
        }
        let items: Vec<(JobLease, &[u8])> = acks
            .iter()
            .map(|r| (r.lease.clone(), r.result.as_slice()))
            .collect();
        let outcome = if fetch {
            shared
                .queue
                .complete_and_fetch(
                    &items,
                    &shared.options.worker_id,
                    asked,
                    shared.options.poll_fallback,
                )
                .await
        } else {
            shared.queue.complete_many(&items).await.map(|acks| Cycle {
                acks,
                ..Cycle::default()
            })
        };
        drop(items);
        let cycle = match outcome {
            Ok(c) => {
                error_delay = Duration::from_millis(50);
                c
            }
            Err(e) => {
                let message = error_chain(&e);
                tracing::warn!(queue = shared.queue.name(), error = %message, "queue round trip failed; retrying");
                for req in acks.drain(..) {
                    let _ = req.done.send(Err(SettleError::Ack(message.clone())));
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(error_delay) => {}
                }
                error_delay = (error_delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };

        // The completed attempts' slots are free now: the jobs just leased take them.
        let completed = reclaim_slots(&shared, &acks, &cycle.acks, &mut free);
        for (req, ack) in acks.drain(..).zip(cycle.acks) {
            let _ = req.done.send(Ok(ack));
        }
        if !fetch {
            continue;
        }
        let got = cycle.batch.jobs.len();
        if cycle.batch.paused || (got < asked + completed && !cycle.more) {
            let mut wait = shared.options.poll_fallback;
            if let Some(due) = cycle.batch.next_due_in {
                wait = wait.min(due);
            }
            idle_until = Some(Instant::now() + wait);
        }
        for job in cycle.batch.jobs {
            let Some(slot) = free.pop() else {
                // More jobs than free slots (cannot happen while the table and Redis agree):
                // give this one back unstarted.
                let _ = shared.queue.release(&job.lease, Duration::ZERO).await;
                continue;
            };
            if !dispatch(&shared, &ch.tasks, job, slot).await {
                return;
            }
        }
    }
}

/// Moves the slots of the attempts Redis confirmed complete from the in-flight table into
/// `free`; returns how many there were.
fn reclaim_slots(
    shared: &Shared,
    requests: &[AckRequest],
    acks: &[Ack],
    free: &mut Vec<OwnedSemaphorePermit>,
) -> usize {
    let mut inflight = shared.inflight();
    let mut completed = 0;
    for (req, ack) in requests.iter().zip(acks) {
        if *ack != Ack::Done {
            continue;
        }
        completed += 1;
        let ours = inflight
            .get(&req.lease.id)
            .is_some_and(|f| f.job.lease.fence == req.lease.fence);
        if let Some(f) = ours.then(|| inflight.remove(&req.lease.id)).flatten() {
            free.push(f.slot);
        }
    }
    completed
}
