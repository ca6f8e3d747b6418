//! The relay: one Redis pub/sub connection per daemon, shared by every socket, through which
//! the job events that workers publish reach the calls waiting for them.
//!
//! A waiter asks for a [`Watch`] on a job; the relay subscribes to the job's channel
//! ([`Keys::job_events`]) and returns once Redis has confirmed the subscription. Only *then*
//! does the waiter read the job's durable state from the queue, so an event published before
//! the subscription is never needed: whatever it announced is already in the state read after
//! it. Pub/sub is at-most-once, so events only prompt a re-read; waiters also re-read on a
//! timer.
//!
//! One task owns the subscription. Watches register their route in a shared map and send
//! subscribe/unsubscribe commands to the task, which applies them in order (a channel is
//! subscribed while at least one watch wants it), batching whatever queued up into one
//! `SUBSCRIBE` and one `UNSUBSCRIBE`. When the connection drops, the task reconnects with
//! backoff, resubscribes every wanted channel, and sends every watch [`RelayEvent::Resync`]:
//! events may have been lost meanwhile, so each waiter re-reads its job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exai_shared::events::JobEvent;
use exai_shared::keys::Keys;
use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long [`Relay::watch`] waits for Redis to confirm a subscription before it returns
/// anyway (the waiter then relies on its re-read timer until the relay catches up).
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// What a watch receives.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEvent {
    /// An event the job's worker published.
    Job(JobEvent),
    /// The subscription was re-established after a connection loss: events may be missing, so
    /// re-read the job.
    Resync,
}

/// The shared subscription of one daemon. Cheap to clone; the task stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
    _stop: Arc<DropGuard>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

/// The watches of one channel: (watch id, where its events go).
type Routes = Vec<(u64, mpsc::UnboundedSender<RelayEvent>)>;

/// What watches and the task share.
struct Inner {
    keys: Keys,
    /// Channel → the watches on it (watch id, sender). Locked only to insert, remove or clone
    /// senders, never across an await.
    routes: Mutex<HashMap<String, Routes>>,
    next_id: AtomicU64,
    /// Commands to the subscription task, applied in the order sent.
    commands: mpsc::UnboundedSender<Command>,
}

enum Command {
    /// One more watch wants the channel; answer once Redis confirmed it is subscribed.
    Subscribe(String, oneshot::Sender<()>),
    /// One watch fewer wants the channel.
    Unsubscribe(String),
}

impl Relay {
    /// Opens the dedicated pub/sub connection (an error here is reported, not degraded) and
    /// spawns the subscription task.
    pub async fn connect(client: redis::Client, keys: Keys) -> redis::RedisResult<Self> {
        let pubsub = client.get_async_pubsub().await?;
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            keys,
            routes: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            commands,
        });
        let stop = CancellationToken::new();
        tokio::spawn(run(
            client,
            Arc::downgrade(&inner),
            rx,
            pubsub,
            stop.clone(),
        ));
        Ok(Self {
            inner,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// Watches the events of `job_id`; returns once subscribed (or after [`SUBSCRIBE_WAIT`]).
    pub async fn watch(&self, job_id: &str) -> Watch {
        let channel = self.inner.keys.job_events(job_id);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel.clone())
            .or_default()
            .push((id, tx));
        let (ack, acked) = oneshot::channel();
        let watch = Watch {
            inner: self.inner.clone(),
            channel: channel.clone(),
            id,
            rx,
        };
        if self
            .inner
            .commands
            .send(Command::Subscribe(channel, ack))
            .is_ok()
            && tokio::time::timeout(SUBSCRIBE_WAIT, acked).await.is_err()
        {
            tracing::warn!(
                job_id,
                "job event subscription not confirmed in time; polling"
            );
        }
        watch
    }
}

/// One waiter's subscription to one job's events; unsubscribes when dropped.
pub struct Watch {
    inner: Arc<Inner>,
    channel: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<RelayEvent>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("channel", &self.channel)
            .finish()
    }
}

impl Watch {
    /// The next event; `None` once the relay has stopped (the waiter then polls).
    pub async fn next(&mut self) -> Option<RelayEvent> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut routes = self.inner.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = routes.get_mut(&self.channel) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                routes.remove(&self.channel);
            }
        }
        drop(routes);
        let _ = self
            .inner
            .commands
            .send(Command::Unsubscribe(self.channel.clone()));
    }
}

/// Hands a message to every watch of its channel.
fn dispatch(inner: &Inner, channel: &str, event: RelayEvent) {
    let senders: Vec<mpsc::UnboundedSender<RelayEvent>> = inner
        .routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(channel)
        .map(|list| list.iter().map(|(_, tx)| tx.clone()).collect())
        .unwrap_or_default();
    for tx in senders {
        let _ = tx.send(event.clone());
    }
}

/// Tells every watch to re-read its job.
fn resync_all(inner: &Inner) {
    let senders: Vec<mpsc::UnboundedSender<RelayEvent>> = inner
        .routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .flat_map(|list| list.iter().map(|(_, tx)| tx.clone()))
        .collect();
    for tx in senders {
        let _ = tx.send(RelayEvent::Resync);
    }
}

/// The subscription task: applies commands, dispatches messages, reconnects.
async fn run(
    client: redis::Client,
    inner: std::sync::Weak<Inner>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    first: redis::aio::PubSub,
    stop: CancellationToken,
) {
    // Channel → number of watches that want it. A channel is subscribed iff its count is > 0.
    let mut wanted: HashMap<String, usize> = HashMap::new();
    // Subscribe acks that wait for a (re)connection.
    let mut pending_acks: Vec<oneshot::Sender<()>> = Vec::new();
    let mut conn = Some(first.split());
    let mut delay = Duration::from_millis(50);
    loop {
        let (mut sink, mut stream): (PubSubSink, PubSubStream) = match conn.take() {
            Some(c) => c,
            None => {
                let reconnect = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    let channels: Vec<&String> = wanted.keys().collect();
                    if !channels.is_empty() {
                        pubsub.subscribe(channels).await?;
                    }
                    redis::RedisResult::Ok(pubsub)
                };
                let attempt = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = reconnect => r,
                };
                match attempt {
                    Ok(pubsub) => {
                        delay = Duration::from_millis(50);
                        tracing::info!("job event subscription re-established");
                        for ack in pending_acks.drain(..) {
                            let _ = ack.send(());
                        }
                        match inner.upgrade() {
                            Some(inner) => resync_all(&inner),
                            None => return,
                        }
                        pubsub.split()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "job event subscription failed");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(2));
                        // Commands keep queueing meanwhile; the counts are applied below.
                        drain_counts(&mut commands, &mut wanted, &mut pending_acks);
                        continue;
                    }
                }
            }
        };
        // Serve this connection until it drops.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut batch = vec![cmd];
                    while let Ok(more) = commands.try_recv() {
                        batch.push(more);
                    }
                    if apply(&mut sink, &mut wanted, batch, &mut pending_acks).await.is_err() {
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("job event subscription lost; reconnecting");
                        break;
                    };
                    let Some(inner) = inner.upgrade() else { return };
                    let channel = msg.get_channel_name().to_owned();
                    let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                    match serde_json::from_slice::<JobEvent>(&payload) {
                        Ok(event) => dispatch(&inner, &channel, RelayEvent::Job(event)),
                        // An event this version does not know: re-reading the job is always safe.
                        Err(_) => dispatch(&inner, &channel, RelayEvent::Resync),
                    }
                }
            }
        }
    }
}

/// Applies queued commands to the counts only (while disconnected: the reconnect subscribes
/// whatever is wanted then).
fn drain_counts(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    wanted: &mut HashMap<String, usize>,
    pending_acks: &mut Vec<oneshot::Sender<()>>,
) {
    while let Ok(cmd) = commands.try_recv() {
        match cmd {
            Command::Subscribe(channel, ack) => {
                *wanted.entry(channel).or_insert(0) += 1;
                pending_acks.push(ack);
            }
            Command::Unsubscribe(channel) => release(wanted, &channel),
        }
    }
}

fn release(wanted: &mut HashMap<String, usize>, channel: &str) {
    if let Some(n) = wanted.get_mut(channel) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            wanted.remove(channel);
        }
    }
}

/// Applies a batch of commands: one `SUBSCRIBE` for the channels that became wanted, one
/// `UNSUBSCRIBE` for those no longer wanted, then the acks. An error means the connection is
/// gone; the acks then wait for the reconnect.
async fn apply(
    sink: &mut PubSubSink,
    wanted: &mut HashMap<String, usize>,
    batch: Vec<Command>,
    pending_acks: &mut Vec<oneshot::Sender<()>>,
) -> redis::RedisResult<()> {
    let before: Vec<String> = batch
        .iter()
        .map(|c| match c {
            Command::Subscribe(ch, _) | Command::Unsubscribe(ch) => ch.clone(),
        })
        .collect();
    let was: HashMap<String, bool> = before
        .iter()
        .map(|ch| (ch.clone(), wanted.contains_key(ch)))
        .collect();
    let mut acks = Vec::new();
    for cmd in batch {
        match cmd {
            Command::Subscribe(channel, ack) => {
                *wanted.entry(channel).or_insert(0) += 1;
                acks.push(ack);
            }
            Command::Unsubscribe(channel) => release(wanted, &channel),
        }
    }
    let mut subscribe = Vec::new();
    let mut unsubscribe = Vec::new();
    for (channel, was_wanted) in was {
        let now_wanted = wanted.contains_key(&channel);
        if now_wanted && !was_wanted {
            subscribe.push(channel);
        } else if !now_wanted && was_wanted {
            unsubscribe.push(channel);
        }
    }
    let result = async {
        if !subscribe.is_empty() {
            sink.subscribe(&subscribe).await?;
        }
        if !unsubscribe.is_empty() {
            sink.unsubscribe(&unsubscribe).await?;
        }
        redis::RedisResult::Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            for ack in acks {
                let _ = ack.send(());
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "job event subscribe failed; reconnecting");
            pending_acks.extend(acks);
            Err(e)
        }
    }
}
