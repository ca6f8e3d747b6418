//! Sessions: what the connections of one `session_id` share in this daemon process.
//!
//! A session outlives its connections in Redis (its calls' job ids derive from the session id,
//! so a reconnecting client finds them), but in the daemon it is only a counter of calls in
//! flight, shared by all the session's open connections and dropped with the last of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One session as seen by this daemon.
#[derive(Debug)]
pub struct Session {
    /// The session id (client-chosen or generated).
    pub id: String,
    /// Calls of this session whose result the daemon is waiting for, over all its connections.
    inflight: AtomicUsize,
}

impl Session {
    /// Takes a call slot unless `max` calls are in flight; dropping the slot gives it back.
    pub fn try_reserve(self: &Arc<Self>, max: usize) -> Option<CallSlot> {
        let mut current = self.inflight.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match self.inflight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(CallSlot(self.clone())),
                Err(now) => current = now,
            }
        }
    }
}

/// One call's place in its session's in-flight count.
#[derive(Debug)]
pub struct CallSlot(Arc<Session>);

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The sessions with at least one open connection.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Session id → the session while a connection holds it. Dead entries are pruned when the
    /// map has grown past twice its live size, so it never outgrows the open connections much.
    map: Mutex<HashMap<String, Weak<Session>>>,
}

impl Sessions {
    /// The session `id`, shared with the other open connections of the same id.
    pub fn join(&self, id: &str) -> Arc<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(id).and_then(Weak::upgrade) {
            return s;
        }
        let session = Arc::new(Session {
            id: id.to_owned(),
            inflight: AtomicUsize::new(0),
        });
        map.insert(id.to_owned(), Arc::downgrade(&session));
        if map.len() > 64 {
            let live = map.values().filter(|w| w.strong_count() > 0).count();
            if map.len() > 2 * live {
                map.retain(|_, w| w.strong_count() > 0);
            }
        }
        session
    }

    /// Sessions with an open connection now.
    pub fn live(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_of_one_session_share_its_slots() {
        let sessions = Sessions::default();
        let a = sessions.join("s-1");
        let b = sessions.join("s-1");
        let one = a.try_reserve(2).unwrap();
        let two = b.try_reserve(2).unwrap();
        assert!(a.try_reserve(2).is_none());
        drop(one);
        assert!(b.try_reserve(2).is_some());
        assert_eq!(sessions.live(), 1);
        // A call slot keeps its session alive.
        drop((a, b));
        assert_eq!(sessions.live(), 1);
        drop(two);
        assert_eq!(sessions.live(), 0);
    }
}
