//! The connection counter that enforces two of the daemon's limits.
//!
//! The limits themselves are read with the rest of the configuration, by
//! [`exai_shared::config`] (its [`WsLimits`], in `Config::ws.limits`), so every variable — and
//! every name the original daemon used for it — is resolved in one place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub use exai_shared::config::WsLimits;

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

/// Counts open connections, in total and per IP address. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    inner: Arc<LimiterInner>,
}

#[derive(Debug)]
struct LimiterInner {
    max_total: usize,
    max_per_ip: usize,
    /// The total, and the count per address (an address leaves the map at zero). Held only
    /// for a few instructions, never across an await.
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnectionLimiter {
    /// A limiter with these limits.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(LimiterInner {
                max_total,
                max_per_ip,
                open: Mutex::new((0, HashMap::new())),
            }),
        }
    }

    /// Takes a slot for a connection from `ip`; dropping the permit gives it back.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionPermit, Refused> {
        let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.inner.max_total {
            return Err(Refused::Total);
        }
        let per_ip = open.1.get(&ip).copied().unwrap_or(0);
        if per_ip >= self.inner.max_per_ip {
            return Err(Refused::PerIp {
                open: per_ip,
                max: self.inner.max_per_ip,
            });
        }
        open.0 += 1;
        *open.1.entry(ip).or_insert(0) += 1;
        Ok(ConnectionPermit {
            limiter: self.inner.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

/// One connection's slot; given back when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<LimiterInner>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_counts_per_ip_and_in_total() {
        let l = ConnectionLimiter::new(3, 2);
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
}
