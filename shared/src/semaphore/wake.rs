//! Push wake-ups: a release anywhere in the fleet wakes a local waiter within milliseconds.
//!
//! Every release (and every limit change) publishes the semaphore names on the release channel.
//! Each [`Semaphores`](super::Semaphores) routes that channel, through the process's
//! [`Subscriber`](crate::subscriber::Subscriber), to a [`ReleaseRoute`], which turns each message
//! into a [`Notify::notify_one`] per released name, so each process wakes
//! one waiter per freed permit rather than all of them (no thundering herd on a busy semaphore).
//! A waiter that lost the race simply waits again; one that is dropped passes its wake-up on to
//! the next waiter (a property of `notify_one`).
//!
//! Messages published while the subscriber is disconnected are lost, so after every
//! resubscription the route wakes every waiter once: they retry, and the expiry hint and the poll fallback of
//! [`Semaphores::acquire`](super::Semaphores::acquire) cover whatever pub/sub cannot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::subscriber::Route;

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

/// The release channel's route: a message wakes one waiter of each name it carries, a resync
/// every waiter.
pub(super) struct ReleaseRoute(pub(super) Arc<Wakers>);

impl Route for ReleaseRoute {
    fn message(&self, payload: &[u8]) {
        match std::str::from_utf8(payload) {
            Ok(names) => self.0.released(names),
            Err(error) => tracing::warn!(%error, "unreadable semaphore release message"),
        }
    }

    fn resync(&self) {
        // Releases published during the gap were lost: let every waiter retry.
        self.0.wake_all();
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
