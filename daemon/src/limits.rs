//! The connection counter that enforces the daemon's connection limits: TCP connections in
//! total, WebSockets in total and per address, and sockets waiting for their hello per address.
//!
//! The limits themselves are read with the rest of the configuration, by
//! [`exai_shared::config`] (its [`WsLimits`], in `Config::ws.limits`), so every variable — and
//! every name the original daemon used for it — is resolved in one place.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub use exai_shared::config::WsLimits;
use tokio_util::sync::CancellationToken;

/// The daemon's limits and timeouts, as the daemon calls them.
pub type DaemonLimits = WsLimits;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// [`DaemonLimits::max_connections`] connections are open.
    #[error("Server overloaded - global connection limit reached")]
    Total,
    /// [`DaemonLimits::max_connections_per_ip`] connections from this address are open.
    #[error("Too many connections from your IP ({open}/{max})")]
    PerIp {
        /// Connections open from the address.
        open: usize,
        /// The limit.
        max: usize,
    },
}

/// Counts open connections: TCP connections in total (from the accept), WebSockets that said
/// hello in total and per IP address, and sockets still waiting for their hello per IP address.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    inner: Arc<LimiterInner>,
}

#[derive(Debug)]
struct LimiterInner {
    max_total: usize,
    max_per_ip: usize,
    max_pending_per_ip: usize,
    /// Held only for a few instructions, never across an await.
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// WebSockets that said hello, in total.
    total: usize,
    /// WebSockets that said hello, per address (an address leaves the map at zero).
    per_ip: HashMap<IpAddr, usize>,
    /// TCP connections accepted and not yet closed.
    tcp: usize,
    /// Sockets waiting for their hello, per address, oldest first (an address leaves the map
    /// when it has none).
    pending: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
    /// The id of the next pending socket.
    next_pending: u64,
}

impl ConnectionLimiter {
    /// A limiter with these limits.
    pub fn new(max_total: usize, max_per_ip: usize, max_pending_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(LimiterInner {
                max_total,
                max_per_ip,
                max_pending_per_ip: max_pending_per_ip.max(1),
                open: Mutex::new(Counts::default()),
            }),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a TCP slot for a connection just accepted, unless `max_total` TCP connections are
    /// open; dropping the slot (every clone of it) gives it back.
    pub fn try_accept(&self) -> Option<TcpSlot> {
        let mut open = self.counts();
        if open.tcp >= self.inner.max_total {
            return None;
        }
        open.tcp += 1;
        Some(TcpSlot {
            limiter: self.inner.clone(),
        })
    }

    /// Whether a WebSocket from `ip` would be refused now (checked when it opens, before its
    /// hello, so a client over a limit learns it at once).
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let open = self.counts();
        self.inner.refusal(&open, ip).map_or(Ok(()), Err)
    }

    /// Takes a slot for a WebSocket from `ip` that said hello; dropping the permit gives it
    /// back.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionPermit, Refused> {
        let mut open = self.counts();
        if let Some(refused) = self.inner.refusal(&open, ip) {
            return Err(refused);
        }
        open.total += 1;
        *open.per_ip.entry(ip).or_insert(0) += 1;
        Ok(ConnectionPermit {
            limiter: self.inner.clone(),
            ip,
        })
    }

    /// Registers a socket from `ip` that has not said hello yet. Beyond the per-address limit
    /// of such sockets, the oldest of them is told to go (its [`Pending::evicted`] fires), so
    /// silent sockets can never keep an address's clients out. Dropping the value unregisters.
    pub fn pending(&self, ip: IpAddr) -> Pending {
        let mut open = self.counts();
        let id = open.next_pending;
        open.next_pending += 1;
        let evicted = CancellationToken::new();
        let queue = open.pending.entry(ip).or_default();
        while queue.len() >= self.inner.max_pending_per_ip {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.cancel();
            }
        }
        queue.push_back((id, evicted.clone()));
        Pending {
            limiter: self.inner.clone(),
            ip,
            id,
            evicted,
        }
    }

    /// WebSockets open now that said hello.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// TCP connections open now.
    pub fn open_tcp(&self) -> usize {
        self.counts().tcp
    }
}

impl LimiterInner {
    fn refusal(&self, open: &Counts, ip: IpAddr) -> Option<Refused> {
        if open.total >= self.max_total {
            return Some(Refused::Total);
        }
        let per_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        (per_ip >= self.max_per_ip).then_some(Refused::PerIp {
            open: per_ip,
            max: self.max_per_ip,
        })
    }
}

/// One WebSocket's slot; given back when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<LimiterInner>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

/// One TCP connection's slot, held by the HTTP connection and, after an upgrade, by its
/// WebSocket until the socket is closed; given back when dropped.
#[derive(Debug)]
pub struct TcpSlot {
    limiter: Arc<LimiterInner>,
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        open.tcp = open.tcp.saturating_sub(1);
    }
}

/// A socket waiting for its hello; unregistered when dropped.
#[derive(Debug)]
pub struct Pending {
    limiter: Arc<LimiterInner>,
    ip: IpAddr,
    id: u64,
    /// Fires when newer sockets from the same address pushed this one out.
    pub evicted: CancellationToken,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = open.pending.get_mut(&self.ip) {
            queue.retain(|(id, _)| *id != self.id);
            if queue.is_empty() {
                open.pending.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_counts_per_ip_and_in_total() {
        let l = ConnectionLimiter::new(3, 2, 1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(
            l.try_acquire(a).unwrap_err(),
            Refused::PerIp { open: 2, max: 2 }
        );
        let _p3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), Refused::Total);
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.try_acquire(a).unwrap();
    }

    #[test]
    fn the_oldest_pending_socket_of_an_address_is_evicted() {
        let l = ConnectionLimiter::new(10, 10, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = l.pending(a);
        let second = l.pending(a);
        let other = l.pending(b);
        assert!(!first.evicted.is_cancelled());
        let _third = l.pending(a);
        assert!(first.evicted.is_cancelled());
        assert!(!second.evicted.is_cancelled() && !other.evicted.is_cancelled());
        // Pending sockets do not count against the per-address limit.
        assert!(l.check(a).is_ok());
    }

    #[test]
    fn tcp_slots_are_counted_until_every_clone_is_gone() {
        let l = ConnectionLimiter::new(1, 1, 1);
        let slot = Arc::new(l.try_accept().unwrap());
        assert!(l.try_accept().is_none());
        let held = slot.clone();
        drop(slot);
        assert_eq!(l.open_tcp(), 1);
        drop(held);
        assert!(l.try_accept().is_some());
    }
}
