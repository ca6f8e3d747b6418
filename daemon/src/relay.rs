//! The relay: through the process's one pub/sub [`Subscriber`], the job events that workers
//! publish reach the calls waiting for them.
//!
//! A waiter asks for a [`Watch`] on a job; the relay routes the job's channel
//! ([`Keys::job_events`]) to it and returns once Redis has confirmed the subscription. Only
//! *then* does the waiter read the job's durable state from the queue, so an event published
//! before the subscription is never needed: whatever it announced is already in the state read
//! after it. Pub/sub is at-most-once, so events only prompt a re-read; waiters also re-read on a
//! timer.
//!
//! A channel is subscribed while at least one watch wants it (the subscriber applies the
//! requests in order and batches them). When the connection drops, the subscriber reconnects
//! with backoff, resubscribes every wanted channel, and every watch receives
//! [`RelayEvent::Resync`]: events may have been lost meanwhile, so each waiter re-reads its job.

use std::sync::Arc;

use exai_shared::events::JobEvent;
use exai_shared::keys::Keys;
use exai_shared::subscriber::{Route, Subscriber, Subscription};
use tokio::sync::mpsc;

/// What a watch receives.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEvent {
    /// An event the job's worker published.
    Job(JobEvent),
    /// The subscription was re-established after a connection loss: events may be missing, so
    /// re-read the job.
    Resync,
}

/// The job events of one daemon, over the process's subscriber. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    subscriber: Subscriber,
    keys: Keys,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay of the deployment whose keys are `keys`, over the process's `subscriber`.
    pub fn new(subscriber: Subscriber, keys: Keys) -> Self {
        Self { subscriber, keys }
    }

    /// Watches the events of `job_id`; returns once subscribed (or after
    /// [`SUBSCRIBE_WAIT`](exai_shared::subscriber::SUBSCRIBE_WAIT)).
    pub async fn watch(&self, job_id: &str) -> Watch {
        let channel = self.keys.job_events(job_id);
        let (tx, rx) = mpsc::unbounded_channel();
        let route: Arc<dyn Route> = Arc::new(WatchRoute(tx));
        let subscription = self.subscriber.subscribe([(channel.clone(), route)]).await;
        if !subscription.is_confirmed() {
            tracing::warn!(
                job_id,
                "job event subscription not confirmed in time; polling"
            );
        }
        Watch {
            channel,
            _subscription: subscription,
            rx,
        }
    }
}

/// Where one watch's events go.
struct WatchRoute(mpsc::UnboundedSender<RelayEvent>);

impl Route for WatchRoute {
    fn message(&self, payload: &[u8]) {
        let event = match serde_json::from_slice::<JobEvent>(payload) {
            Ok(event) => RelayEvent::Job(event),
            // An event this version does not know: re-reading the job is always safe.
            Err(_) => RelayEvent::Resync,
        };
        let _ = self.0.send(event);
    }

    fn resync(&self) {
        let _ = self.0.send(RelayEvent::Resync);
    }
}

/// One waiter's subscription to one job's events; unsubscribes when dropped.
pub struct Watch {
    channel: String,
    /// The route of this watch; dropping it unsubscribes the channel if no other watch wants it.
    _subscription: Subscription,
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
