//! Our Redis queue as an apalis 1.0 backend, so workers stay ordinary apalis workers
//! (`WorkerBuilder`, `Monitor`, tower layers) while the queue protocol is ours.
//!
//! # How a job flows
//! 1. A **driver** task owns the queue round trips. It holds the free slots (a local semaphore
//!    of `concurrency` permits) and the completions waiting to be acknowledged, and whenever
//!    either is non-empty it sends both in one [`Queue::complete_and_fetch`] call: the
//!    completions are stored (fenced) and the free slots, the completed attempts' own
//!    included, are refilled. Each leased job is registered in the **in-flight table** (lease,
//!    cancellation token, slot permit) and handed to apalis through a channel that
//!    [`Backend::poll_next`] reads. A short fetch makes the driver wait for the queue's push
//!    wake-up ([`WakeSignal`](crate::queue::WakeSignal)), the poll fallback, or the next
//!    delayed job's due time, whichever is first; completions meanwhile are acknowledged alone. Its queue handle takes
//!    **hand-offs** ([`Queue::with_hand_offs`]): a lone job enqueued while this worker is
//!    registered idle arrives already leased on the wake-up subscription, and the taker
//!    installed on the [`Waker`] starts it right there (a free slot, the in-flight table, the
//!    channel to apalis) with no fetch; the driver then registers idle again. A hand-off that
//!    finds no free slot, or a stopping backend, goes back to the queue unstarted.
//! 2. The **lease layer** ([`LeaseLayer`], returned by [`BackendConfig::middleware`]) runs the
//!    handler raced against the job's cancellation token, then settles the attempt with fenced
//!    writes: a result goes to the driver, which acknowledges it in its next round trip (or,
//!    while the driver waits for work and has nothing to batch it with, the layer acknowledges
//!    it itself, one hand-off sooner); a [`JobError`](crate::jobs::JobError) decides between
//!    retry, dead, put-back and cancel. Settling removes the job from the in-flight table,
//!    which frees its slot; the options' [`AttemptObserver`] (metrics) is then told the
//!    [`AttemptOutcome`] and duration.
//! 3. A **heartbeat** task renews every in-flight lease with one script call per period
//!    (lease/3). A lease reported lost, or not renewed for a whole lease period (Redis
//!    unreachable), cancels the handler; its result is never written. A cancel request — heard on
//!    the queue's cancel channel or reported by a heartbeat — cancels the handler too. A cancel
//!    heard before its job's fetch reply arrived makes the heartbeat renew as soon as the job
//!    registers, so Redis decides whether this attempt was the one cancelled.
//! 4. A **sweeper** task returns expired leases of crashed workers and promotes due delayed
//!    jobs, every sweep interval, in bounded steps.
//! 5. On shutdown the driver stops fetching at once (it still acknowledges); running handlers
//!    get `grace` to finish; then they are cancelled and their jobs put back without burning an
//!    attempt, as are jobs fetched but not yet started.
//!
//! The files: `driver` (1), `hand_off` (the hand-offs of 1), `dispatch` (a leased job into the
//! in-flight table and on to apalis, for both), `lease_layer` (2), `tasks` (3, 4
//! and the grace timer of 5), `shared` (the in-flight table and what the tasks share), `job`
//! (what a handler sees: [`RunningJob`]) and `options` ([`BackendOptions`], the observer).
//!
//! # Where we step outside apalis
//! apalis's [`Backend`] yields one task at a time and has no notion of leases, fenced
//! acknowledgement or batched fetch; its `Acknowledge` hook cannot see the lease. So leases,
//! heartbeats, sweeping, batching and cancellation live in the tasks above and in
//! [`LeaseLayer`]; apalis drives the handler service, its concurrency and its lifecycle.

mod dispatch;
mod driver;
mod hand_off;
mod job;
mod lease_layer;
mod options;
mod shared;
mod tasks;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use job::{CancelReason, RunningJob};
pub use lease_layer::{LeaseLayer, LeaseService};
pub use options::{AttemptObserver, AttemptOutcome, BackendOptions};

use crate::queue::{Queue, QueueError, Waker};
use driver::{DriverChannels, driver};
use hand_off::take_hand_off;
use shared::Shared;
use tasks::{cancel_listener, grace_timer, heartbeat, sweeper};

/// One queue of our Redis engine as an apalis backend emitting `Task<Args>`.
pub struct RedisBackend<Args> {
    queue: Queue,
    waker: Waker,
    options: BackendOptions,
    running: Option<Running<Args>>,
    layer: Option<LeaseLayer>,
    closing: Option<BoxFuture<'static, ()>>,
    _marker: PhantomData<fn() -> Args>,
}

struct Running<Args> {
    rx: mpsc::Receiver<Task<Args>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl<Args> std::fmt::Debug for RedisBackend<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("queue", &self.queue.name())
            .field("options", &self.options)
            .finish()
    }
}

impl<Args> RedisBackend<Args>
where
    Args: DeserializeOwned + Send + 'static,
{
    /// A backend for `queue`, woken by `waker` (which must listen to this queue).
    pub fn new(queue: Queue, waker: Waker, options: BackendOptions) -> Self {
        // `Started` and a success's `Finished` are published by the fetch and complete
        // scripts themselves; the layer publishes only the other outcomes' `Finished`.
        let queue = match &options.events {
            Some(events) => queue.with_job_events(events.channel_prefix()),
            None => queue,
        }
        .with_hand_offs();
        let mut backend = Self {
            queue,
            waker,
            options,
            running: None,
            layer: None,
            closing: None,
            _marker: PhantomData,
        };
        backend.start();
        backend
    }

    fn start(&mut self) {
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (hand_off_tx, hand_off_rx) = mpsc::unbounded_channel();
        let stop = self.options.shutdown.child_token();
        let shared = Arc::new(Shared {
            queue: self.queue.clone(),
            options: self.options.clone(),
            slots: Arc::new(Semaphore::new(self.options.concurrency)),
            stop: stop.clone(),
            hand_offs: hand_off_tx,
            refresh_idle: Notify::new(),
            inflight: Mutex::new(HashMap::new()),
            early_cancels: Mutex::new(HashMap::new()),
            check_leases: Notify::new(),
            driver_idle: AtomicBool::new(false),
            acks: ack_tx,
        });
        let (tx, rx) = mpsc::channel(self.options.concurrency);
        let signal = self
            .waker
            .signal(self.queue.name())
            .expect("the waker listens to the backend's queue");
        {
            let (shared, tx) = (shared.clone(), tx.clone());
            self.waker.on_hand_off(self.queue.name(), move |job| {
                take_hand_off(&shared, &tx, job);
            });
        }
        let channels = DriverChannels {
            tasks: tx,
            acks: ack_rx,
            hand_offs: hand_off_rx,
        };
        tokio::spawn(driver(shared.clone(), channels, signal, self.waker.clone()));
        tokio::spawn(heartbeat(shared.clone(), stop.clone()));
        tokio::spawn(sweeper(shared.clone(), stop.clone()));
        tokio::spawn(cancel_listener(
            shared.clone(),
            self.waker.clone(),
            stop.clone(),
        ));
        tokio::spawn(grace_timer(shared.clone(), self.options.shutdown.clone()));
        self.layer = Some(LeaseLayer {
            shared: shared.clone(),
        });
        self.running = Some(Running { rx, shared, stop });
    }
}

impl<Args> Backend for RedisBackend<Args>
where
    Args: DeserializeOwned + Send + 'static,
{
    type Task = Task<Args>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        match self.running.as_mut() {
            Some(r) => r.rx.poll_recv(cx).map(|t| t.map(Ok)),
            None => Poll::Ready(None),
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            let Some(mut running) = self.running.take() else {
                return Poll::Ready(Ok(()));
            };
            self.closing = Some(Box::pin(async move {
                running.stop.cancel();
                // Jobs fetched but never started go back without burning their attempt.
                running.rx.close();
                while let Some(task) = running.rx.recv().await {
                    if let Some(job) = task.parts_job_lease() {
                        running.shared.settle(&job.lease.id);
                        let _ = running
                            .shared
                            .queue
                            .release(&job.lease, Duration::ZERO)
                            .await;
                    }
                }
            }));
        }
        let fut = self.closing.as_mut().expect("set above");
        match fut.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads the [`RunningJob`] a task carries.
trait TaskLease {
    fn parts_job_lease(&self) -> Option<RunningJob>;
}

impl<Args> TaskLease for Task<Args> {
    fn parts_job_lease(&self) -> Option<RunningJob> {
        self.ctx().data().get::<RunningJob>().cloned()
    }
}

impl<Args> BackendConfig for RedisBackend<Args> {
    type Args = Args;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = BackendOptions;
    type Layer = LeaseLayer;

    fn config(&self) -> &Self::Config {
        &self.options
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        self.layer
            .clone()
            .expect("the backend starts when it is constructed")
    }
}
