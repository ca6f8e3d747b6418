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
//!    wake-up ([`WakeSignal`]), the poll fallback, or the next delayed job's due time,
//!    whichever is first; completions meanwhile are acknowledged alone. Its queue handle takes
//!    **hand-offs** ([`Queue::with_hand_offs`]): a lone job enqueued while this worker is
//!    registered idle arrives already leased on the wake-up subscription, and the taker
//!    installed on the [`Waker`] starts it right there (a free slot, the in-flight table, the
//!    channel to apalis) with no fetch; the driver then registers idle again. A hand-off that
//!    finds no free slot, or a stopping backend, goes back to the queue unstarted.
//! 2. The **lease layer** ([`LeaseLayer`], returned by [`BackendConfig::middleware`]) runs the
//!    handler raced against the job's cancellation token, then settles the attempt with fenced
//!    writes: a result goes to the driver, which acknowledges it in its next round trip (or,
//!    while the driver waits for work and has nothing to batch it with, the layer acknowledges
//!    it itself, one hand-off sooner); a
//!    [`JobError`] decides between retry, dead, put-back and cancel. Settling removes the job
//!    from the in-flight table, which frees its slot; the options' [`AttemptObserver`]
//!    (metrics) is then told the [`AttemptOutcome`] and duration.
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
//! # Where we step outside apalis
//! apalis's [`Backend`] yields one task at a time and has no notion of leases, fenced
//! acknowledgement or batched fetch; its `Acknowledge` hook cannot see the lease. So leases,
//! heartbeats, sweeping, batching and cancellation live in the tasks above and in
//! [`LeaseLayer`]; apalis drives the handler service, its concurrency and its lifecycle.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::{RandomId, TaskId};
use apalis_core::worker::context::WorkerContext;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tower_layer::Layer;
use tower_service::Service;

use crate::events::{EventPublisher, JobEvent};
use crate::jobs::JobError;
use crate::queue::{
    Ack, Cycle, FailKind, FailOutcome, Fetched, Lease, LeaseState, Queue, QueueError,
};
use crate::queue::{WakeSignal, Waker};

/// How many completions one round trip may carry (at most [`crate::queue::MAX_BATCH`]).
const ACK_BATCH: usize = 512;
/// How long a cancel heard for a job not in flight is kept, in case its fetch reply is late.
const EARLY_CANCEL_KEPT: Duration = Duration::from_secs(5);
/// How often a stopping backend checks whether its last jobs have settled.
const STOPPING_POLL: Duration = Duration::from_millis(50);

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

/// What a handler can see of its job: injected into every task's data, so a handler takes it
/// as `Data<JobLease>`.
#[derive(Debug, Clone)]
pub struct JobLease {
    /// The queue's name.
    pub queue: String,
    /// The attempt's lease (job id, fence, attempt number).
    pub lease: Lease,
    /// The job's attempt limit.
    pub max_attempts: u32,
    /// When the job was enqueued (Unix ms).
    pub enqueued_at_ms: u64,
    /// Fires when the job must stop; [`JobLease::cancel_reason`] says why.
    pub cancel: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl JobLease {
    /// Why the job was cancelled, once it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.reason.get().copied()
    }

    fn cancel_with(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }
}

/// A fetched job, until its attempt is settled. Holding `_slot` keeps one unit of the
/// process's concurrency for this queue taken.
struct InFlight {
    job: JobLease,
    slot: OwnedSemaphorePermit,
}

/// State shared by the backend's tasks and its layer.
struct Shared {
    queue: Queue,
    options: BackendOptions,
    /// The process's concurrency for this queue: a running job holds one permit. The driver
    /// holds the free ones while it fetches and returns them while it waits for work, so a
    /// hand-off can take one without waiting for the driver.
    slots: Arc<Semaphore>,
    /// Cancelled when the backend stops fetching.
    stop: CancellationToken,
    /// Hand-offs the taker could not start itself (no free slot, stopping): the driver
    /// starts or releases them.
    hand_offs: mpsc::UnboundedSender<Fetched>,
    /// A hand-off consumed the idle registration: the driver registers again.
    refresh_idle: Notify,
    inflight: Mutex<HashMap<String, InFlight>>,
    acks: mpsc::UnboundedSender<AckRequest>,
    /// Cancel requests heard for jobs not (yet) in flight, and when: the fetch script marks a
    /// job running before its reply reaches us, so a cancel can overtake it. Always locked
    /// after `inflight`, never alone around a registration.
    early_cancels: Mutex<HashMap<String, Instant>>,
    /// Asks the heartbeat to renew (and so check) every lease now rather than at its tick.
    check_leases: Notify,
    /// The driver is waiting for work (its last fetch came back short): a result has nothing
    /// to share a round trip with, so the layer acknowledges it itself, one hand-off sooner.
    driver_idle: AtomicBool,
}

impl Shared {
    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn early_cancels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.early_cancels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, id: &str) {
        self.inflight().remove(id);
    }

    fn cancel_all(&self, reason: CancelReason) {
        for f in self.inflight().values() {
            f.job.cancel_with(reason);
        }
    }
}

struct AckRequest {
    lease: Lease,
    result: Vec<u8>,
    done: oneshot::Sender<Result<Ack, SettleError>>,
}

/// Why an attempt's outcome could not be recorded (its lease then expires and the sweep re-runs
/// it, so nothing is lost).
#[derive(Debug, thiserror::Error)]
enum SettleError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("acknowledgement failed: {0}")]
    Ack(String),
}

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

/// The driver's channels: tasks to apalis, results to acknowledge, hand-offs to start.
struct DriverChannels<Args> {
    tasks: mpsc::Sender<Task<Args>>,
    acks: mpsc::UnboundedReceiver<AckRequest>,
    hand_offs: mpsc::UnboundedReceiver<Fetched>,
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
async fn driver<Args: DeserializeOwned + Send + 'static>(
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
        let items: Vec<(Lease, &[u8])> = acks
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

/// Registers `job` in flight on `slot` and hands it to apalis, or records it as dead when its
/// payload does not decode. False once apalis has stopped taking tasks.
async fn dispatch<Args: DeserializeOwned>(
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

/// Starts a job handed off by an enqueue (see [`Queue::with_hand_offs`]), on the wake-up
/// subscription's reader: with a free slot it goes straight to apalis (no hop through the
/// driver); otherwise, or while stopping, the driver takes it ([`start_hand_off`]).
fn take_hand_off<Args: DeserializeOwned + Send + 'static>(
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
async fn start_hand_off<Args: DeserializeOwned>(
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

/// Registers a fetched job as in flight and builds its apalis task; a payload that does not
/// decode is returned as an error message (it can never succeed).
fn into_task<Args: DeserializeOwned>(
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
    let lease = JobLease {
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

/// Renews every in-flight lease once per period, with one script call.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
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
        let jobs: Vec<JobLease> = shared.inflight().values().map(|f| f.job.clone()).collect();
        if jobs.is_empty() {
            last_ok = Instant::now();
            if stop.is_cancelled() {
                return;
            }
            continue;
        }
        let leases: Vec<Lease> = jobs.iter().map(|j| j.lease.clone()).collect();
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
async fn sweeper(shared: Arc<Shared>, stop: CancellationToken) {
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
async fn cancel_listener(shared: Arc<Shared>, waker: Waker, stop: CancellationToken) {
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
async fn grace_timer(shared: Arc<Shared>, shutdown: CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(shared.options.grace).await;
    shared.cancel_all(CancelReason::Shutdown);
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

/// Reads the [`JobLease`] a task carries.
trait TaskLease {
    fn parts_job_lease(&self) -> Option<JobLease>;
}

impl<Args> TaskLease for Task<Args> {
    fn parts_job_lease(&self) -> Option<JobLease> {
        self.ctx().data().get::<JobLease>().cloned()
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

/// The tower layer that settles every attempt with fenced writes (see the module docs).
#[derive(Clone)]
pub struct LeaseLayer {
    shared: Arc<Shared>,
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
    job: &JobLease,
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

/// An error with its sources, `outer: inner: innermost`, for log lines.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
