//! Push wake-ups for idle workers, and cancel signals for running jobs, over Redis pub/sub.
//!
//! An enqueue wakes **one** idle worker: a worker whose fetch came back short registers itself
//! in the queue's idle set ([`QueueKeys::idle`](crate::keys::QueueKeys::idle)) for as long as it will
//! wait, and the enqueue script pops the most recent live registration and publishes on that
//! worker's own channel ([`QueueKeys::wake_channel_of`](crate::keys::QueueKeys::wake_channel_of)).
//! A worker that takes a full batch and leaves jobs behind wakes the next idle one the same way,
//! so a burst spreads over as many workers as it needs, and an idle fleet of N workers costs one
//! fetch per enqueue, not N. With nobody registered idle, and for the rarer events (release,
//! rescue, promotion, retry of a dead job, resume), the queue's wake channel reaches every
//! worker. Either way an idle worker starts a new job within milliseconds instead of at its
//! next poll. Pub/sub is at-most-once — a message published while the subscription reconnects is
//! lost — so a worker always waits with a timeout (the poll fallback), and the subscription
//! marks every queue as woken after each reconnect.
//!
//! A worker whose fetches take **hand-offs** ([`Queue::with_hand_offs`](super::Queue::with_hand_offs))
//! may receive, on its own channel, not a wake-up but a job already leased to it by the
//! enqueue: the waker passes it to the taker the worker installed ([`Waker::on_hand_off`]).
//!
//! One [`Waker`] per process routes its channels through the process's
//! [`Subscriber`]: it subscribes once, and the subscription's reader hands each message straight
//! to the [`WakeSignal`]s and cancel receivers it concerns (no task hop in between).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::error::QueueError;
use super::job::Fetched;
use crate::keys::Keys;
use crate::subscriber::{Route, Subscriber, Subscription};

/// A cancel request for a running job, as published by [`Queue::cancel`](super::Queue::cancel)
/// or [`Queue::remove`](super::Queue::remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelSignal {
    /// The queue's name.
    pub queue: String,
    /// The job to stop.
    pub job_id: String,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Jobs were pushed since the signal was last observed: fetch now.
    Notified,
    /// Nothing was heard within the timeout: fetch anyway (poll fallback).
    TimedOut,
}

/// Capacity of the cancel broadcast; a receiver that lags loses the oldest signals (heartbeats
/// still report the cancel).
const CANCEL_CAPACITY: usize = 1024;

/// Receives the jobs handed off to this process's worker of one queue (see
/// [`Waker::on_hand_off`]). It runs on the subscription's reader: it must not block.
pub type HandOffTaker = Arc<dyn Fn(Fetched) + Send + Sync>;

/// The taker of one queue's hand-offs, once installed.
type TakerSlot = Arc<Mutex<Option<HandOffTaker>>>;

/// The queue's wake channel, heard by every worker: each message bumps the queue's wake
/// counter, and so does a resync (wake-ups may have been lost).
struct WakeRoute(watch::Sender<u64>);

impl Route for WakeRoute {
    fn message(&self, _payload: &[u8]) {
        self.0.send_modify(|v| *v += 1);
    }

    fn resync(&self) {
        self.0.send_modify(|v| *v += 1);
    }
}

/// A worker's own channel: an empty message wakes it, any other is a hand-off. A resync is
/// covered by the queue's [`WakeRoute`], which shares the counter.
struct OwnRoute {
    wakes: watch::Sender<u64>,
    taker: TakerSlot,
    queue: String,
}

impl Route for OwnRoute {
    fn message(&self, payload: &[u8]) {
        if payload.is_empty() {
            self.wakes.send_modify(|v| *v += 1);
        } else {
            hand_off(&self.taker, &self.queue, payload);
        }
    }

    fn resync(&self) {}
}

/// The queue's cancel channel: each message names a running job to stop. A lost cancel is
/// still reported by the job's next heartbeat.
struct CancelRoute {
    queue: String,
    cancels: broadcast::Sender<CancelSignal>,
}

impl Route for CancelRoute {
    fn message(&self, payload: &[u8]) {
        if let Ok(job_id) = std::str::from_utf8(payload)
            && !job_id.is_empty()
        {
            let _ = self.cancels.send(CancelSignal {
                queue: self.queue.clone(),
                job_id: job_id.to_owned(),
            });
        }
    }

    fn resync(&self) {}
}

/// What all clones of a [`Waker`] share; the routes are removed when the last clone is
/// dropped.
struct Shared {
    /// The wake counter of each queue, bumped on every wake message.
    wakes: HashMap<String, watch::Sender<u64>>,
    /// The hand-off taker of each queue.
    takers: HashMap<String, TakerSlot>,
    subscriber: Subscriber,
    cancels: broadcast::Sender<CancelSignal>,
    _subscription: Subscription,
}

/// The wake-up and cancel listener of one process. Cheap to clone.
#[derive(Clone)]
pub struct Waker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waker")
            .field("queues", &self.shared.wakes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Waker {
    /// Subscribes, through the process's `subscriber`, to the wake and cancel channels of each
    /// `(queue, worker id)` of `queues` — the wake channel every worker hears and the one of
    /// that worker id alone (the id its fetches register under). Returns once subscribed, so
    /// no wake-up published afterwards is missed; an unconfirmed subscription is an error.
    pub async fn new(
        subscriber: &Subscriber,
        keys: &Keys,
        queues: &[(&str, &str)],
    ) -> Result<Self, QueueError> {
        let mut wakes = HashMap::new();
        let mut takers = HashMap::new();
        let mut routes: Vec<(String, Arc<dyn Route>)> = Vec::new();
        let (cancels, _) = broadcast::channel(CANCEL_CAPACITY);
        for &(queue, worker) in queues {
            let qk = keys.queue(queue);
            let (tx, _) = watch::channel(0u64);
            let taker = TakerSlot::default();
            routes.push((qk.wake_channel(), Arc::new(WakeRoute(tx.clone()))));
            routes.push((
                qk.wake_channel_of(worker),
                Arc::new(OwnRoute {
                    wakes: tx.clone(),
                    taker: taker.clone(),
                    queue: queue.to_owned(),
                }),
            ));
            routes.push((
                qk.cancel_channel(),
                Arc::new(CancelRoute {
                    queue: queue.to_owned(),
                    cancels: cancels.clone(),
                }),
            ));
            takers.insert(queue.to_owned(), taker);
            wakes.insert(queue.to_owned(), tx);
        }
        let subscription = subscriber.subscribe(routes).await;
        if !subscription.is_confirmed() {
            return Err(QueueError::Protocol(
                "the wake-up subscription was not confirmed".into(),
            ));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                wakes,
                takers,
                subscriber: subscriber.clone(),
                cancels,
                _subscription: subscription,
            }),
        })
    }

    /// Installs `taker` as the receiver of the jobs handed off to this process's worker of
    /// `queue` (replacing any earlier one); returns false when this waker does not listen to
    /// `queue`. The taker runs on the subscription's reader, so it must not block; a job it
    /// cannot start must be released, or it runs again only once its lease expires.
    pub fn on_hand_off(
        &self,
        queue: &str,
        taker: impl Fn(Fetched) + Send + Sync + 'static,
    ) -> bool {
        match self.shared.takers.get(queue) {
            Some(slot) => {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(taker));
                true
            }
            None => false,
        }
    }

    /// Returns once every message published before this call has been delivered (see
    /// [`Subscriber::sync`]) — e.g. so a worker that withdrew its idle registration has seen
    /// every hand-off made before.
    pub async fn sync(&self) -> Result<(), QueueError> {
        Ok(self.shared.subscriber.sync().await?)
    }

    /// The wake signal of `queue`, or `None` when this waker does not listen to it. Each
    /// signal remembers what it has observed: take one per worker loop and keep it.
    pub fn signal(&self, queue: &str) -> Option<WakeSignal> {
        self.shared
            .wakes
            .get(queue)
            .map(|tx| WakeSignal { rx: tx.subscribe() })
    }

    /// Cancel requests for running jobs of the subscribed queues, from now on.
    pub fn cancellations(&self) -> broadcast::Receiver<CancelSignal> {
        self.shared.cancels.subscribe()
    }
}

/// One worker loop's view of a queue's wake-ups.
///
/// Use it as: fetch; if the batch came back short, `wait(timeout)`; fetch again. A wake-up
/// published at any time since the previous `wait` returned — during the fetch included —
/// makes the next `wait` return at once, so none is lost between fetch and wait.
#[derive(Debug, Clone)]
pub struct WakeSignal {
    rx: watch::Receiver<u64>,
}

impl WakeSignal {
    /// Waits until a wake-up not yet observed arrives, or `timeout` passes.
    pub async fn wait(&mut self, timeout: Duration) -> Wake {
        match tokio::time::timeout(timeout, self.rx.changed()).await {
            Ok(Ok(())) => Wake::Notified,
            Ok(Err(_)) => {
                // The waker is gone: behave as a plain poll.
                tokio::time::sleep(timeout).await;
                Wake::TimedOut
            }
            Err(_) => Wake::TimedOut,
        }
    }

    /// Whether a wake-up not yet observed has arrived (without waiting or observing it).
    pub fn woken(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// Marks every wake-up so far as observed.
    pub fn mark_seen(&mut self) {
        self.rx.mark_unchanged();
    }
}

/// Gives a hand-off to the queue's taker.
fn hand_off(taker: &TakerSlot, queue: &str, msg: &[u8]) {
    let Some(job) = Fetched::from_hand_off(msg) else {
        tracing::warn!(
            queue,
            "undecodable hand-off ignored; its job runs again once its lease expires"
        );
        return;
    };
    let taker = taker.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match taker {
        Some(take) => take(job),
        None => {
            tracing::warn!(queue, job_id = %job.lease.id, "hand-off with no taker; the job runs again once its lease expires");
        }
    }
}
