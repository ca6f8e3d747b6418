//! The one Redis pub/sub subscriber of a process, shared by everything that listens.
//!
//! Three parts of the system listen to Redis pub/sub: the semaphores' release wake-ups
//! ([`Semaphores`](crate::semaphore::Semaphores)), the queue's wake-ups, hand-offs and cancels
//! ([`Waker`](crate::queue::Waker)) and the daemon's relay of job events. They share one
//! [`Subscriber`]: one dedicated RESP3 connection (never the multiplexed command connection),
//! one table of routes, one reconnect policy and one resync signal.
//!
//! - **Routes.** [`Subscriber::subscribe`] registers a [`Route`] per channel and returns once
//!   Redis has confirmed the subscription, so nothing published afterwards is missed. A channel
//!   is subscribed while at least one [`Subscription`] wants it; dropping the last one
//!   unsubscribes it. Subscribe and unsubscribe requests are applied in the order made, and
//!   whatever queued up meanwhile goes in one `SUBSCRIBE` and one `UNSUBSCRIBE`.
//! - **Delivery.** A message is handed to its routes by the connection's own reader, the moment
//!   it is read: no task in between (a queue hand-off starts its job right there). A route
//!   therefore must not block.
//! - **Reconnection.** A lost connection (reported by the client, or a ping unanswered for
//!   [`PING_TIMEOUT`], which catches a half-open TCP connection) is replaced with exponential
//!   backoff (`backon`, 50 ms doubling to 2 s, with jitter), every wanted channel is subscribed
//!   again, and then every route is told to [`resync`](Route::resync): pub/sub is at-most-once,
//!   so messages published during the gap are lost, and each user covers them its own way (a
//!   waiter retries, a worker fetches, a call re-reads its job).
//!
//! In cluster mode, classic `PUBLISH` reaches every node, so one subscription to any node hears
//! every publisher (see [`RedisHandle::pubsub_client`](crate::redis::RedisHandle::pubsub_client)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::redis::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// How often the subscriber pings its connection, to notice a half-open TCP connection that
/// would otherwise never deliver another message nor report an error.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);

/// How long a ping may take before the connection is considered dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Subscriber::subscribe`] waits for Redis to confirm a subscription before it
/// returns an unconfirmed [`Subscription`] (which is confirmed later, once Redis is back).
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// The first pause before a reconnection attempt.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// The longest pause between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Where the messages of one channel go.
pub trait Route: Send + Sync + 'static {
    /// A message published on the channel (an empty payload when it carried none). Runs on the
    /// connection's reader: it must not block.
    fn message(&self, payload: &[u8]);

    /// The connection was lost and is back, subscribed again: messages of the channel may have
    /// been missed meanwhile.
    fn resync(&self);
}

/// Channel → its routes: (route id, route). Locked only to insert, remove or clone routes,
/// never across an await nor while a route runs.
type Routes = HashMap<String, Vec<(u64, Arc<dyn Route>)>>;

/// What the subscriber's handles, its task and its connection's reader share.
struct Shared {
    routes: Mutex<Routes>,
    /// The current connection, `None` while reconnecting (for [`Subscriber::sync`]).
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl Shared {
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_conn(&self, conn: Option<MultiplexedConnection>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }

    /// Hands one pub/sub message (`[channel, payload]`) to the routes of its channel.
    fn deliver(&self, data: Vec<Value>) {
        let mut it = data.into_iter();
        let (Some(channel), payload) = (it.next(), it.next()) else {
            return;
        };
        let Ok(channel) = String::from_redis_value(channel) else {
            return;
        };
        let routes: Vec<Arc<dyn Route>> = match self.routes().get(&channel) {
            Some(list) => list.iter().map(|(_, r)| r.clone()).collect(),
            None => return,
        };
        let payload: Vec<u8> = payload
            .and_then(|p| Vec::<u8>::from_redis_value(p).ok())
            .unwrap_or_default();
        for route in routes {
            route.message(&payload);
        }
    }

    /// Tells every route to resync (after a reconnection).
    fn resync_all(&self) {
        let routes: Vec<Arc<dyn Route>> = self
            .routes()
            .values()
            .flat_map(|list| list.iter().map(|(_, r)| r.clone()))
            .collect();
        for route in routes {
            route.resync();
        }
    }
}

/// A request to the subscription task, applied in the order sent.
enum Command {
    /// One more subscription wants the channel; answer once Redis confirmed it.
    Subscribe(String, oneshot::Sender<()>),
    /// One subscription fewer wants the channel.
    Unsubscribe(String),
}

/// What every clone of a [`Subscriber`] and every [`Subscription`] share; the task stops when
/// the last of them is dropped.
struct Inner {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    commands: mpsc::UnboundedSender<Command>,
    _stop: DropGuard,
}

/// The pub/sub subscriber of one process. Cheap to clone; create one per process and hand it
/// to every listener.
#[derive(Clone)]
pub struct Subscriber {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("channels", &self.inner.shared.routes().len())
            .finish()
    }
}

impl Subscriber {
    /// Opens the dedicated connection from `client` (see
    /// [`RedisHandle::pubsub_client`](crate::redis::RedisHandle::pubsub_client)) and spawns the
    /// task that keeps it up. An error here is reported, not degraded to polling. Must be
    /// called inside a Tokio runtime.
    pub async fn connect(client: redis::Client) -> redis::RedisResult<Self> {
        let shared = Arc::new(Shared {
            routes: Mutex::new(HashMap::new()),
            conn: Mutex::new(None),
        });
        let first = open(&client, &shared).await?;
        shared.set_conn(Some(first.conn.clone()));
        let (commands, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(run(client, shared.clone(), rx, first, stop.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                next_id: AtomicU64::new(1),
                commands,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// Routes the messages of each channel of `routes` to its route until the returned
    /// [`Subscription`] is dropped. Returns once Redis confirmed every subscription, or after
    /// [`SUBSCRIBE_WAIT`] with the subscription unconfirmed (see
    /// [`Subscription::is_confirmed`]); the routes are in place either way.
    pub async fn subscribe(
        &self,
        routes: impl IntoIterator<Item = (String, Arc<dyn Route>)>,
    ) -> Subscription {
        let mut entries = Vec::new();
        let mut acks = Vec::new();
        for (channel, route) in routes {
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            self.inner
                .shared
                .routes()
                .entry(channel.clone())
                .or_default()
                .push((id, route));
            let (ack, acked) = oneshot::channel();
            let _ = self
                .inner
                .commands
                .send(Command::Subscribe(channel.clone(), ack));
            acks.push(acked);
            entries.push((channel, id));
        }
        let confirmed = tokio::time::timeout(SUBSCRIBE_WAIT, async {
            for acked in acks {
                if acked.await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false);
        Subscription {
            inner: self.inner.clone(),
            entries,
            confirmed,
        }
    }

    /// Returns once every message published before this call has been delivered: a round trip
    /// on the subscription's own connection, whose reply follows those messages. An error
    /// means the connection is being re-established.
    pub async fn sync(&self) -> redis::RedisResult<()> {
        let conn = self
            .inner
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
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the pub/sub connection is reconnecting",
            )
            .into()),
        }
    }
}

/// The routes one [`Subscriber::subscribe`] call registered; dropping it removes them and
/// unsubscribes the channels nobody else wants.
pub struct Subscription {
    inner: Arc<Inner>,
    /// (channel, route id) of each route registered.
    entries: Vec<(String, u64)>,
    confirmed: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channels", &self.entries.len())
            .field("confirmed", &self.confirmed)
            .finish()
    }
}

impl Subscription {
    /// Whether Redis confirmed every channel before [`Subscriber::subscribe`] returned.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut routes = self.inner.shared.routes();
        for (channel, id) in &self.entries {
            if let Some(list) = routes.get_mut(channel) {
                list.retain(|(i, _)| i != id);
                if list.is_empty() {
                    routes.remove(channel);
                }
            }
        }
        drop(routes);
        for (channel, _) in self.entries.drain(..) {
            let _ = self.inner.commands.send(Command::Unsubscribe(channel));
        }
    }
}

/// One RESP3 connection: messages arrive as pushes that its reader hands to
/// [`Shared::deliver`], and its loss is reported through `lost`.
struct Connection {
    conn: MultiplexedConnection,
    lost: Arc<Notify>,
}

/// Opens a RESP3 connection whose reader delivers messages to the routes.
async fn open(client: &redis::Client, shared: &Arc<Shared>) -> redis::RedisResult<Connection> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let lost = Arc::new(Notify::new());
    let sender = {
        let (shared, lost) = (Arc::downgrade(shared), lost.clone());
        move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            match push.kind {
                PushKind::Message => {
                    if let Some(shared) = shared.upgrade() {
                        shared.deliver(push.data);
                    }
                }
                PushKind::Disconnection => lost.notify_one(),
                _ => {}
            }
            Ok(())
        }
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(sender);
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    Ok(Connection { conn, lost })
}

/// The subscription task: applies subscribe and unsubscribe requests in order, pings, and
/// replaces a lost connection (resubscribing, then resyncing every route) until stopped.
async fn run(
    client: redis::Client,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    first: Connection,
    stop: CancellationToken,
) {
    // Channel → how many subscriptions want it. A channel is subscribed iff its count is > 0.
    let mut wanted: HashMap<String, usize> = HashMap::new();
    // Confirmations that wait for a (re)connection.
    let mut pending: Vec<oneshot::Sender<()>> = Vec::new();
    let mut current = Some(first);
    loop {
        let mut conn = match current.take() {
            Some(conn) => conn,
            None => {
                let Some(conn) = reconnect(
                    &client,
                    &shared,
                    &mut commands,
                    &mut wanted,
                    &mut pending,
                    &stop,
                )
                .await
                else {
                    return;
                };
                conn
            }
        };
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval is immediate; the connection was just checked.
        ping.tick().await;
        // Serve this connection until it drops.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = conn.lost.notified() => break,
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut batch = vec![cmd];
                    while let Ok(more) = commands.try_recv() {
                        batch.push(more);
                    }
                    if apply(&mut conn.conn, &mut wanted, batch, &mut pending).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        PING_TIMEOUT,
                        redis::cmd("PING").query_async::<Value>(&mut conn.conn),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        shared.set_conn(None);
        tracing::warn!("pub/sub connection lost; reconnecting");
    }
}

/// Opens a new connection with backoff and subscribes every wanted channel, then confirms the
/// waiting subscriptions and resyncs every route. `None` once stopped.
async fn reconnect(
    client: &redis::Client,
    shared: &Arc<Shared>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    wanted: &mut HashMap<String, usize>,
    pending: &mut Vec<oneshot::Sender<()>>,
    stop: &CancellationToken,
) -> Option<Connection> {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN)
        .with_max_delay(RECONNECT_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        // Pause before every attempt, so a Redis that accepts and drops connections is not
        // hammered; requests keep queueing meanwhile and count towards what is wanted.
        let delay = backoff.next().unwrap_or(RECONNECT_MAX);
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        drain_counts(commands, wanted, pending);
        let attempt = async {
            let mut conn = open(client, shared).await?;
            let channels: Vec<&String> = wanted.keys().collect();
            if !channels.is_empty() {
                conn.conn.subscribe(channels).await?;
            }
            redis::RedisResult::Ok(conn)
        };
        let attempt = tokio::select! {
            _ = stop.cancelled() => return None,
            r = attempt => r,
        };
        match attempt {
            Ok(conn) => {
                tracing::info!("pub/sub connection re-established");
                shared.set_conn(Some(conn.conn.clone()));
                for ack in pending.drain(..) {
                    let _ = ack.send(());
                }
                // Messages published during the gap were lost.
                shared.resync_all();
                return Some(conn);
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "pub/sub reconnection failed");
            }
        }
    }
}

/// Applies queued requests to the counts only (while disconnected: the reconnection subscribes
/// whatever is wanted then).
fn drain_counts(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    wanted: &mut HashMap<String, usize>,
    pending: &mut Vec<oneshot::Sender<()>>,
) {
    while let Ok(cmd) = commands.try_recv() {
        match cmd {
            Command::Subscribe(channel, ack) => {
                *wanted.entry(channel).or_insert(0) += 1;
                pending.push(ack);
            }
            Command::Unsubscribe(channel) => release(wanted, &channel),
        }
    }
}

/// One subscription fewer wants `channel`.
fn release(wanted: &mut HashMap<String, usize>, channel: &str) {
    if let Some(n) = wanted.get_mut(channel) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            wanted.remove(channel);
        }
    }
}

/// Applies a batch of requests: one `SUBSCRIBE` for the channels that became wanted, one
/// `UNSUBSCRIBE` for those no longer wanted, then the confirmations. An error means the
/// connection is gone; the confirmations then wait for the reconnection.
async fn apply(
    conn: &mut MultiplexedConnection,
    wanted: &mut HashMap<String, usize>,
    batch: Vec<Command>,
    pending: &mut Vec<oneshot::Sender<()>>,
) -> redis::RedisResult<()> {
    let was: HashMap<String, bool> = batch
        .iter()
        .map(|c| match c {
            Command::Subscribe(ch, _) | Command::Unsubscribe(ch) => {
                (ch.clone(), wanted.contains_key(ch))
            }
        })
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
            conn.subscribe(&subscribe).await?;
        }
        if !unsubscribe.is_empty() {
            conn.unsubscribe(&unsubscribe).await?;
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
        Err(error) => {
            tracing::warn!(%error, "pub/sub subscribe failed; reconnecting");
            pending.extend(acks);
            Err(error)
        }
    }
}
