//! Push wake-ups: a release anywhere in the fleet wakes a local waiter within milliseconds.
//!
//! Every release (and every limit change) publishes the semaphore names on the release channel.
//! One listener task per [`Semaphores`](super::Semaphores) holds a dedicated pub/sub connection
//! and turns each message into a [`Notify::notify_one`] per released name, so each process wakes
//! one waiter per freed permit rather than all of them (no thundering herd on a busy semaphore).
//! A waiter that lost the race simply waits again; one that is dropped passes its wake-up on to
//! the next waiter (a property of `notify_one`).
//!
//! Messages published while the listener is disconnected are lost, so after every (re)subscription
//! the listener wakes every waiter once: they retry, and the expiry hint and the poll fallback of
//! [`Semaphores::acquire`](super::Semaphores::acquire) cover whatever pub/sub cannot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSub, PubSubSink};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the listener pings its pub/sub connection, to notice a half-open TCP connection that
/// would otherwise never deliver another message nor report an error.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// How long a ping may take before the connection is considered dead.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting and subscribing may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The first and the largest pause between reconnection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// The local waiters of one process, one [`Notify`] per semaphore name.
///
/// The map only grows by the names local code waits on, which are a handful of configured names.
#[derive(Debug, Default)]
pub(super) struct Wakers {
    by_name: Mutex<HashMap<String, Arc<Notify>>>,
    /// How many acquires of this process are currently between two tries.
    waiting: AtomicUsize,
}

impl Wakers {
    /// Counts one waiter until the returned guard is dropped.
    pub(super) fn enter_wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// How many acquires of this process are currently waiting between two tries.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The notifier of `name`, created on first use.
    pub(super) fn get(&self, name: &str) -> Arc<Notify> {
        let mut map = self.by_name.lock().expect("wakers lock poisoned");
        Arc::clone(map.entry(name.to_owned()).or_default())
    }

    /// Wakes one waiter of each name in `payload` (a comma-separated list from the channel).
    ///
    /// A name nobody here has ever waited on is skipped, so no stored wake-up accumulates for it.
    pub(super) fn released(&self, payload: &str) {
        let map = self.by_name.lock().expect("wakers lock poisoned");
        for name in payload.split(',') {
            if let Some(notify) = map.get(name) {
                notify.notify_one();
            }
        }
    }

    /// Wakes every current waiter of every name (after a gap in the subscription).
    pub(super) fn wake_all(&self) {
        let map = self.by_name.lock().expect("wakers lock poisoned");
        for notify in map.values() {
            notify.notify_waiters();
        }
    }
}

/// One waiting acquire, counted in [`Wakers::waiting`] while this value lives.
pub(super) struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Opens a pub/sub connection subscribed to `channel`, giving up after [`SUBSCRIBE_TIMEOUT`].
pub(super) async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<PubSub> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, connect).await {
        Ok(subscribed) => subscribed,
        Err(_elapsed) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribing to the semaphore release channel timed out",
        )
        .into()),
    }
}

/// Relays release messages to `wakers` until `stop` is cancelled, resubscribing after any
/// connection loss. `first` is the subscription made by the caller, so that wake-ups work from
/// the moment [`Semaphores::new`](super::Semaphores::new) returns.
pub(super) async fn listen(
    client: redis::Client,
    channel: String,
    wakers: Arc<Wakers>,
    first: PubSub,
    stop: CancellationToken,
) {
    let mut subscription = Some(first);
    let mut backoff = RECONNECT_MIN;
    loop {
        let pubsub = match subscription.take() {
            Some(pubsub) => pubsub,
            None => {
                // Pause before every reconnection, so a Redis that accepts and drops connections
                // is not hammered; the pause doubles while attempts keep failing.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                let attempt = tokio::select! {
                    _ = stop.cancelled() => return,
                    attempt = subscribe(&client, &channel) => attempt,
                };
                match attempt {
                    Ok(pubsub) => {
                        tracing::info!(%channel, "semaphore release channel resubscribed");
                        // Releases published during the gap were lost: let every waiter retry.
                        wakers.wake_all();
                        backoff = RECONNECT_MIN;
                        pubsub
                    }
                    Err(error) => {
                        tracing::warn!(%channel, %error, "semaphore release channel: subscribe failed");
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
        };

        let (sink, stream) = pubsub.split();
        if relay(sink, stream, &wakers, &stop).await.is_break() {
            return;
        }
        tracing::warn!(%channel, "semaphore release channel lost; resubscribing");
    }
}

/// Relays messages of one subscription. Returns `Break` when stopped and `Continue` when the
/// connection is gone.
async fn relay(
    mut sink: PubSubSink,
    mut stream: redis::aio::PubSubStream,
    wakers: &Wakers,
    stop: &CancellationToken,
) -> std::ops::ControlFlow<()> {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick of an interval is immediate; the connection was just checked by SUBSCRIBE.
    ping.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return std::ops::ControlFlow::Break(()),
            message = stream.next() => match message {
                Some(message) => match message.get_payload::<String>() {
                    Ok(payload) => wakers.released(&payload),
                    Err(error) => tracing::warn!(%error, "unreadable semaphore release message"),
                },
                None => return std::ops::ControlFlow::Continue(()),
            },
            _ = ping.tick() => {
                let alive = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                if !matches!(alive, Ok(Ok(_))) {
                    return std::ops::ControlFlow::Continue(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_release_wakes_one_waiter_per_name() {
        let wakers = Wakers::default();
        let kimi = wakers.get("kimi");
        let first = kimi.notified();
        let second = kimi.notified();
        tokio::pin!(first, second);
        first.as_mut().enable();
        second.as_mut().enable();

        wakers.released("global,kimi");
        // The first registered waiter is woken, the second is not.
        assert!(futures::poll!(first.as_mut()).is_ready());
        assert!(futures::poll!(second.as_mut()).is_pending());
    }

    #[tokio::test]
    async fn wake_all_wakes_everyone() {
        let wakers = Wakers::default();
        let glm = wakers.get("glm");
        let first = glm.notified();
        let second = glm.notified();
        tokio::pin!(first, second);
        wakers.wake_all();
        assert!(futures::poll!(first.as_mut()).is_ready());
        assert!(futures::poll!(second.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn unknown_names_store_nothing() {
        let wakers = Wakers::default();
        wakers.released("nobody-waits-here");
        assert!(wakers.by_name.lock().unwrap().is_empty());
    }
}
