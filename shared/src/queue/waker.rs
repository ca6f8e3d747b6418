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
//! One [`Waker`] per process holds one dedicated RESP3 connection (never the shared multiplexed
//! one): it subscribes once, and the connection's reader hands each message straight to the
//! [`WakeSignal`]s and cancel receivers it concerns (no task hop in between). In cluster mode, classic `PUBLISH` reaches every node, so one subscription to any
//! node hears every queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use super::error::QueueError;
use super::job::Fetched;
use crate::keys::Keys;

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

/// Where a channel's messages go.
enum Route {
    Wake(watch::Sender<u64>),
    /// A worker's own channel: an empty message wakes it, any other is a hand-off.
    Own(watch::Sender<u64>, TakerSlot, String),
    Cancel(String),
}

/// The subscription shared by all clones of a [`Waker`]; the task ends when the last clone
/// is dropped.
struct Shared {
    /// The wake counter of each queue, bumped on every wake message.
    wakes: HashMap<String, watch::Sender<u64>>,
    /// The hand-off taker of each queue.
    takers: HashMap<String, TakerSlot>,
    /// The current subscription connection (replaced on reconnect), for [`Waker::sync`].
    conn: Arc<Mutex<Option<MultiplexedConnection>>>,
    cancels: broadcast::Sender<CancelSignal>,
    task: JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
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
    /// Subscribes to the wake and cancel channels of each `(queue, worker id)` of `queues` —
    /// the wake channel every worker hears and the one of that worker id alone (the id its
    /// fetches register under) — on a dedicated connection from `client` (see
    /// [`RedisHandle::pubsub_client`](crate::redis::RedisHandle::pubsub_client)). Returns once
    /// subscribed, so no wake-up published afterwards is missed; the subscription then
    /// reconnects by itself with backoff.
    pub async fn connect(
        client: redis::Client,
        keys: &Keys,
        queues: &[(&str, &str)],
    ) -> Result<Self, QueueError> {
        let mut wakes = HashMap::new();
        let mut takers = HashMap::new();
        let mut routes = HashMap::new();
        let mut channels = Vec::new();
        for &(queue, worker) in queues {
            let qk = keys.queue(queue);
            let (tx, _) = watch::channel(0u64);
            let taker = TakerSlot::default();
            routes.insert(qk.wake_channel(), Route::Wake(tx.clone()));
            routes.insert(
                qk.wake_channel_of(worker),
                Route::Own(tx.clone(), taker.clone(), queue.to_owned()),
            );
            takers.insert(queue.to_owned(), taker);
            routes.insert(qk.cancel_channel(), Route::Cancel(queue.to_owned()));
            channels.push(qk.wake_channel());
            channels.push(qk.wake_channel_of(worker));
            channels.push(qk.cancel_channel());
            wakes.insert(queue.to_owned(), tx);
        }
        let (cancels, _) = broadcast::channel(CANCEL_CAPACITY);
        let routes = Arc::new(routes);
        let first = subscribe(&client, &channels, &routes, &cancels).await?;
        let conn = Arc::new(Mutex::new(Some(first.conn.clone())));
        let task = tokio::spawn(run(
            client,
            channels,
            routes,
            cancels.clone(),
            first,
            conn.clone(),
        ));
        Ok(Self {
            shared: Arc::new(Shared {
                wakes,
                takers,
                conn,
                cancels,
                task,
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

    /// Returns once every message published before this call has been delivered (a round
    /// trip on the subscription's own connection, whose reply follows those messages) — e.g.
    /// so a worker that withdrew its idle registration has seen every hand-off made before.
    pub async fn sync(&self) -> Result<(), QueueError> {
        let conn = self
            .shared
            .conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match conn {
            Some(mut conn) => {
                let _: Value = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
            None => Err(QueueError::Protocol(
                "the wake-up subscription is reconnecting".into(),
            )),
        }
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

/// The subscription's connection: RESP3, so messages arrive as pushes that the connection's
/// own reader hands to [`route`] the moment they are read — no task in between — and a lost
/// connection is reported through `lost`.
struct Subscription {
    conn: MultiplexedConnection,
    lost: Arc<Notify>,
}

async fn subscribe(
    client: &redis::Client,
    channels: &[String],
    routes: &Arc<HashMap<String, Route>>,
    cancels: &broadcast::Sender<CancelSignal>,
) -> Result<Subscription, QueueError> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let lost = Arc::new(Notify::new());
    let sender = {
        let (routes, cancels, lost) = (routes.clone(), cancels.clone(), lost.clone());
        move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            match push.kind {
                PushKind::Message => route(&routes, &cancels, push.data),
                PushKind::Disconnection => lost.notify_one(),
                _ => {}
            }
            Ok(())
        }
    };
    let config = AsyncConnectionConfig::new().set_push_sender(sender);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    if !channels.is_empty() {
        conn.subscribe(channels).await?;
    }
    Ok(Subscription { conn, lost })
}

/// Delivers one pub/sub message (`[channel, payload]`) to its wake counter or as a cancel.
fn route(
    routes: &HashMap<String, Route>,
    cancels: &broadcast::Sender<CancelSignal>,
    data: Vec<Value>,
) {
    let mut it = data.into_iter();
    let (Some(channel), payload) = (it.next(), it.next()) else {
        return;
    };
    let Ok(channel) = String::from_redis_value(channel) else {
        return;
    };
    match routes.get(&channel) {
        Some(Route::Wake(tx)) => tx.send_modify(|v| *v += 1),
        Some(Route::Own(tx, taker, queue)) => {
            let msg = payload.and_then(|p| Vec::<u8>::from_redis_value(p).ok());
            match msg.filter(|m| !m.is_empty()) {
                None => tx.send_modify(|v| *v += 1),
                Some(msg) => hand_off(taker, queue, &msg),
            }
        }
        Some(Route::Cancel(queue)) => {
            if let Some(Ok(job_id)) = payload.map(String::from_redis_value) {
                let _ = cancels.send(CancelSignal {
                    queue: queue.clone(),
                    job_id,
                });
            }
        }
        None => {}
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

/// Keeps the subscription up until the task is aborted: when the connection drops it
/// reconnects with backoff, and after each reconnect marks every queue woken (messages may
/// have been lost meanwhile).
async fn run(
    client: redis::Client,
    channels: Vec<String>,
    routes: Arc<HashMap<String, Route>>,
    cancels: broadcast::Sender<CancelSignal>,
    first: Subscription,
    conn: Arc<Mutex<Option<MultiplexedConnection>>>,
) {
    let mut current = first;
    let mut delay = Duration::from_millis(50);
    loop {
        current.lost.notified().await;
        *conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::warn!("queue wake-up subscription lost; reconnecting");
        current = loop {
            match subscribe(&client, &channels, &routes, &cancels).await {
                Ok(sub) => break sub,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "queue wake-up subscription failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        delay = Duration::from_millis(50);
        *conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(current.conn.clone());
        for route in routes.values() {
            if let Route::Wake(tx) = route {
                tx.send_modify(|v| *v += 1);
            }
        }
    }
}
