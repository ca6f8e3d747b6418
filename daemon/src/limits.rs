//! The daemon's own limits and timeouts, and the connection counter that enforces two of them.
//!
//! These settings concern only the daemon, so they live here rather than in the shared
//! [`Config`](exai_shared::Config) (which holds `EXAI_WS_HOST`, `EXAI_WS_PORT`, `EXAI_WS_TOKEN`,
//! `EXAI_WS_MAX_BYTES`, `EXAI_WS_PING_INTERVAL` and `EXAI_WS_PROGRESS_INTERVAL_SECS`). They are
//! read the same way: a value that does not parse is a [`ConfigError`] naming the variable, never
//! a silent fallback. Every limit says what happens when it is hit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exai_shared::config::ConfigError;

/// The daemon-only settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonLimits {
    /// `EXAI_WS_MAX_CONNECTIONS` (1000): open WebSocket connections in total. One more is
    /// closed at once with 1008.
    pub max_connections: usize,
    /// `EXAI_WS_MAX_CONNECTIONS_PER_IP` (10): open WebSocket connections from one IP address.
    /// One more is closed at once with 1008.
    pub max_connections_per_ip: usize,
    /// `EXAI_WS_SESSION_MAX_INFLIGHT` (100): calls of one session (over all its connections)
    /// whose result the daemon is still waiting for. One more is answered with
    /// `OVER_CAPACITY` and not enqueued.
    pub max_inflight_per_session: usize,
    /// `EXAI_WS_HELLO_TIMEOUT` seconds (15): how long a new connection may take to say hello
    /// before it is closed with 4002.
    pub hello_timeout: Duration,
    /// `EXAI_WS_IDLE_TIMEOUT_SECS` (3600): a connection that sends no request and has no call in
    /// flight for this long is closed with 1000.
    pub idle_timeout: Duration,
    /// `EXAI_WS_PING_TIMEOUT` seconds (10): a client that sends nothing at all (not even the
    /// pong to the daemon's ping) for `EXAI_WS_PING_INTERVAL` plus this long is closed with 1011.
    pub ping_timeout: Duration,
    /// `EXAI_WS_CALL_TIMEOUT_SECS` (300): a call's deadline, from its enqueue. A call still not
    /// finished then is cancelled and answered with `TIMEOUT`.
    pub call_timeout: Duration,
    /// `EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS` (55): how long a single-frame client (the stdio shim,
    /// which gives up after 60 s and then reads the late reply as the answer to its next
    /// request) is kept waiting. Then it gets one `TIMEOUT` frame naming the job id, and the
    /// job goes on; `get_result` with the job id fetches it later.
    pub single_frame_timeout: Duration,
    /// `EXAI_WS_SHUTDOWN_GRACE_SECS` (5): how long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
}

impl Default for DaemonLimits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_connections_per_ip: 10,
            max_inflight_per_session: 100,
            hello_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(3600),
            ping_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(300),
            single_frame_timeout: Duration::from_secs(55),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl DaemonLimits {
    /// Reads the limits from the process environment (call after
    /// [`Config::from_env`](exai_shared::Config::from_env), which loads `.env`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the limits from `(name, value)` pairs; names not given take their default.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let get = |name: &str| {
            vars.get(name)
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let d = Self::default();
        Ok(Self {
            max_connections: positive(
                "EXAI_WS_MAX_CONNECTIONS",
                get("EXAI_WS_MAX_CONNECTIONS"),
                d.max_connections,
            )?,
            max_connections_per_ip: positive(
                "EXAI_WS_MAX_CONNECTIONS_PER_IP",
                get("EXAI_WS_MAX_CONNECTIONS_PER_IP"),
                d.max_connections_per_ip,
            )?,
            max_inflight_per_session: positive(
                "EXAI_WS_SESSION_MAX_INFLIGHT",
                get("EXAI_WS_SESSION_MAX_INFLIGHT"),
                d.max_inflight_per_session,
            )?,
            hello_timeout: seconds(
                "EXAI_WS_HELLO_TIMEOUT",
                get("EXAI_WS_HELLO_TIMEOUT"),
                d.hello_timeout,
            )?,
            idle_timeout: seconds(
                "EXAI_WS_IDLE_TIMEOUT_SECS",
                get("EXAI_WS_IDLE_TIMEOUT_SECS"),
                d.idle_timeout,
            )?,
            ping_timeout: seconds(
                "EXAI_WS_PING_TIMEOUT",
                get("EXAI_WS_PING_TIMEOUT"),
                d.ping_timeout,
            )?,
            call_timeout: seconds(
                "EXAI_WS_CALL_TIMEOUT_SECS",
                get("EXAI_WS_CALL_TIMEOUT_SECS"),
                d.call_timeout,
            )?,
            single_frame_timeout: seconds(
                "EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS",
                get("EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS"),
                d.single_frame_timeout,
            )?,
            shutdown_grace: seconds(
                "EXAI_WS_SHUTDOWN_GRACE_SECS",
                get("EXAI_WS_SHUTDOWN_GRACE_SECS"),
                d.shutdown_grace,
            )?,
        })
    }
}

fn error(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

fn positive<T>(var: &'static str, raw: Option<String>, default: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Default,
    T::Err: std::fmt::Display,
{
    let Some(raw) = raw else {
        return Ok(default);
    };
    let value: T = raw
        .parse()
        .map_err(|e| error(var, format!("`{raw}`: {e}")))?;
    if value <= T::default() {
        return Err(error(var, "must be greater than zero"));
    }
    Ok(value)
}

/// A positive number of seconds (fractions allowed, so tests can use short timeouts).
fn seconds(
    var: &'static str,
    raw: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let secs: f64 = raw
        .parse()
        .map_err(|e| error(var, format!("`{raw}`: {e}")))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(error(var, "must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

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
    fn defaults_and_bad_values_name_their_variable() {
        let none: [(&str, &str); 0] = [];
        assert_eq!(
            DaemonLimits::from_vars(none).unwrap(),
            DaemonLimits::default()
        );
        for (var, value) in [
            ("EXAI_WS_MAX_CONNECTIONS", "lots"),
            ("EXAI_WS_MAX_CONNECTIONS_PER_IP", "0"),
            ("EXAI_WS_SESSION_MAX_INFLIGHT", "-1"),
            ("EXAI_WS_HELLO_TIMEOUT", "soon"),
            ("EXAI_WS_IDLE_TIMEOUT_SECS", "0"),
            ("EXAI_WS_PING_TIMEOUT", "inf"),
            ("EXAI_WS_CALL_TIMEOUT_SECS", "-3"),
            ("EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS", "NaN"),
            ("EXAI_WS_SHUTDOWN_GRACE_SECS", "x"),
        ] {
            let err = DaemonLimits::from_vars([(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains(var), "{err}");
        }
        let l = DaemonLimits::from_vars([("EXAI_WS_HELLO_TIMEOUT", "0.25")]).unwrap();
        assert_eq!(l.hello_timeout, Duration::from_millis(250));
    }

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
