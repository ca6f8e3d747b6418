//! The floor under every enqueue → completed latency: the same four hops with no queue in them.
//!
//! A job's trip is bench → Redis (enqueue) → worker process (push) → Redis (completion) →
//! bench (the invalidation that times it). The relay makes exactly those hops with one plain
//! command each: the bench PUBLISHes a key name, `exai-bench relay` (its own process, the same
//! client stack and push path as the worker's wake-ups: a RESP3 subscription whose reader hands
//! the message on) SETs that key, and the SET's invalidation reaches the bench's tracker. What
//! an engine adds on top of this, on the same machine at the same moment, is its own cost;
//! the rest is the machine (process wake-ups, loopback, the scheduler).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};
use tokio::sync::mpsc;

use super::measure::{percentile, sorted};
use super::procs::WorkerProcs;
use super::tracker::{Tracker, resp3_client};

/// Rounds run before the measured ones.
const WARMUP: u64 = 20;

/// `exai-bench relay`: subscribes to `channel` and SETs every key name published on it, until
/// killed.
pub async fn serve(redis_url: &str, channel: &str) -> anyhow::Result<()> {
    let client = resp3_client(redis_url)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let sender = move |push: PushInfo| -> Result<(), ()> {
        if push.kind == PushKind::Message
            && let Some(redis::Value::BulkString(key)) = push.data.into_iter().nth(1)
        {
            let _ = tx.send(key);
        }
        Ok(())
    };
    let config = AsyncConnectionConfig::new().set_push_sender(sender);
    let mut sub = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    sub.subscribe(channel).await?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    while let Some(key) = rx.recv().await {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

/// The relay's round trips, in ms, from just before the PUBLISH to the arrival of the SET's
/// invalidation.
#[derive(Debug, Default)]
pub struct Floor {
    /// Sorted.
    pub samples: Vec<f64>,
}

impl Floor {
    pub fn p50(&self) -> f64 {
        percentile(&self.samples, 0.5)
    }

    pub fn p99(&self) -> f64 {
        percentile(&self.samples, 0.99)
    }
}

/// Spawns one `bench_bin relay` process under `prefix`, waits until it is subscribed, then
/// times `n` relayed keys one at a time (after [`WARMUP`] unreported ones) and stops it.
pub async fn measure(
    conn: &mut exai_shared::redis::RedisHandle,
    redis_url: &str,
    prefix: &str,
    bench_bin: &Path,
    n: u64,
) -> anyhow::Result<Floor> {
    let channel = format!("{prefix}-relay:ch");
    let key_prefix = format!("{prefix}-relay:k:");
    let mut relay = WorkerProcs::spawn_with(
        bench_bin,
        1,
        &["relay", "--redis-url", redis_url, "--channel", &channel],
        &[],
        &format!("{prefix}-relay"),
    )?;
    let subscribed_by = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, subscribers): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(conn)
            .await?;
        if subscribers > 0 {
            break;
        }
        relay.check()?;
        anyhow::ensure!(
            Instant::now() < subscribed_by,
            "the relay did not subscribe within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut tracker = Tracker::start(redis_url, std::slice::from_ref(&key_prefix)).await?;
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..WARMUP + n {
        let key = format!("{key_prefix}{i}");
        tracker.clear();
        let t0 = Instant::now();
        let heard: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&key)
            .query_async(conn)
            .await?;
        anyhow::ensure!(heard == 1, "the relay did not hear key {i}");
        let at = loop {
            let (at, keys) = tracker
                .next(Duration::from_secs(10))
                .await
                .with_context(|| format!("key {i} was not relayed within 10 s"))?;
            if keys.contains(&key) {
                break at;
            }
        };
        if i >= WARMUP {
            samples.push(at.saturating_duration_since(t0).as_secs_f64() * 1e3);
        }
    }
    relay.stop(Duration::from_secs(5)).await?;
    Ok(Floor {
        samples: sorted(samples),
    })
}
