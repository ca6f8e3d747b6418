//! When did Redis change a key? Server-assisted client-side caching answers without polling:
//! a RESP3 connection with `CLIENT TRACKING ON BCAST PREFIX …` receives an `invalidate` push
//! naming every key under the prefixes that any client modified. Redis sends these pushes at the
//! end of the event-loop iteration that ran the write — when the write's own reply goes out — so
//! the push's arrival time is when the change became visible, give or take one one-way trip.
//!
//! The bench uses it to time the end of a drain (the stats hash changes on every completion
//! batch) and the steps of one job (its hash changes at enqueue, at the fetch that leases it,
//! and at completion) without adding polling load to the Redis it measures.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::mpsc;

/// A client for `url` whose connections speak RESP3, so they can receive pushes.
pub fn resp3_client(url: &str) -> anyhow::Result<redis::Client> {
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Ok(redis::Client::open(info.set_redis_settings(settings))?)
}

/// One invalidation: when it arrived, and the keys it names.
pub type Event = (Instant, Vec<String>);

/// A tracking connection and the invalidations it received. Tracking stops when it is dropped
/// (the connection closes).
pub struct Tracker {
    /// Kept open: tracking lives as long as this connection.
    _conn: MultiplexedConnection,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Tracker {
    /// Opens a RESP3 connection to `url` tracking every key that starts with one of `prefixes`.
    pub async fn start(url: &str, prefixes: &[String]) -> anyhow::Result<Self> {
        let client = resp3_client(url)?;
        let (tx, rx) = mpsc::unbounded_channel();
        // Timestamped on arrival, in the connection's reader: nothing queues before the stamp.
        let sender = move |push: PushInfo| -> Result<(), ()> {
            if push.kind == PushKind::Invalidate {
                let mut keys = Vec::new();
                collect_keys(push.data, &mut keys);
                let _ = tx.send((Instant::now(), keys));
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new().set_push_sender(sender);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("TRACKING").arg("ON").arg("BCAST");
        for p in prefixes {
            cmd.arg("PREFIX").arg(p);
        }
        let () = cmd.query_async(&mut conn).await?;
        Ok(Self { _conn: conn, rx })
    }

    /// Forgets every invalidation received so far.
    pub fn clear(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// The arrival time of the newest invalidation received so far (consuming them all).
    pub fn latest(&mut self) -> Option<Instant> {
        let mut last = None;
        while let Ok((at, _)) = self.rx.try_recv() {
            last = Some(at);
        }
        last
    }

    /// The next invalidation, waiting at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

/// The key names in an `invalidate` push (an array of keys, or nil when everything was
/// flushed).
fn collect_keys(values: Vec<redis::Value>, out: &mut Vec<String>) {
    for v in values {
        match v {
            redis::Value::Array(items) | redis::Value::Set(items) => collect_keys(items, out),
            redis::Value::BulkString(b) => out.push(String::from_utf8_lossy(&b).into_owned()),
            redis::Value::SimpleString(s) => out.push(s),
            _ => {}
        }
    }
}
