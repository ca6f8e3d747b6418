//! Each queue's per-minute history: what ended in each minute of the last day, and how long
//! it waited and ran — what the admin console charts and `exai-worker queue history` prints.
//!
//! The scripts that start and end attempts write it, in the same call, with one `HINCRBY`
//! per field and batch — no extra round trip, and no Redis command per job: `complete` and
//! `complete_and_fetch` (completions, and the starts of the jobs the fetch leases), `fail`
//! (handler errors), `sweep` (expired leases) and the enqueue of a job handed off to an idle
//! worker (its start). Each minute is one hash, `{P:q:N}:history:<minute start, Unix s>`
//! ([`QueueKeys::history`](crate::keys::QueueKeys::history)), which expires [`HISTORY_TTL`]
//! after its first write, so the history costs a bounded amount of memory per queue (at most
//! one small hash per minute of the last ~25 hours) whatever the traffic.
//! `EXAI_QUEUE_HISTORY=false` ([`QueuePolicy::history`](super::QueuePolicy::history)) turns the
//! writes off.
//!
//! What a minute counts, by the minute an attempt ended (Redis clock):
//!
//! - `completed` — attempts that completed (each a job that is now completed);
//! - `failed` — attempts that failed: the handler returned an error (`fail`) or the lease
//!   expired (`sweep`: the worker died or stalled), whatever happened to the job next;
//! - `retried` — of those, the attempts after which the job was put back for another one
//!   (retrying with backoff, or re-queued by the sweep);
//! - `dead` — of those, the attempts after which the job went to the dead set (a permanent
//!   error, or its last attempt). `failed − retried − dead` are failures of jobs whose cancel
//!   had been requested: they ended cancelled.
//!
//! And two histograms: **wait** — from when the job was last due (enqueued, or its delay,
//! retry backoff, rescue or manual retry ended) to the attempt's start, counted in the minute
//! the attempt started, for every attempt (from the job's own `e` and `r` fields, which the
//! fetch reads anyway) — and **run** — from the attempt's start to its end, counted in the
//! minute it ended, for the attempts that ended through `complete` or `fail` (an expired lease
//! has no known end; the start comes from the lease, [`JobLease::started_ms`](super::JobLease),
//! or the job's `t` field). Bucket 0 holds durations under 1 ms, bucket `b` (1 to 22)
//! `[2^(b-1), 2^b)` ms and bucket 23 everything from 2^22 ms (about 70 minutes) up;
//! [`Histogram::percentile`] interpolates within a bucket, so a p95 is right within its
//! bucket's factor of two and usually much closer.

use std::time::Duration;

use redis::Value;

use super::error::QueueError;
use super::{Queue, reply, scripts};

/// Buckets per histogram.
pub const BUCKETS: usize = 24;

/// The most minutes one read returns: the day the history covers.
pub const MAX_MINUTES: u32 = 1440;

/// How long a minute's hash lives after its first write: the day the history covers plus an
/// hour of slack. Fixed (the scripts hold it), since the history covers one day by definition.
pub const HISTORY_TTL: Duration = Duration::from_secs(90_000);

/// A histogram of durations in milliseconds (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Histogram {
    /// Count per bucket.
    pub buckets: [u64; BUCKETS],
}

impl Histogram {
    /// The bounds `[low, high)` of bucket `b`, in milliseconds (the last one's `high` is
    /// where its interpolation ends, twice its `low`).
    pub fn bounds(b: usize) -> (f64, f64) {
        if b == 0 {
            (0.0, 1.0)
        } else {
            let low = 2f64.powi(i32::try_from(b).unwrap_or(i32::MAX) - 1);
            (low, low * 2.0)
        }
    }

    /// The bucket a duration of `ms` falls in (what the scripts compute).
    pub fn bucket_of(ms: u64) -> usize {
        if ms < 1 {
            0
        } else {
            (64 - ms.leading_zeros() as usize).min(BUCKETS - 1)
        }
    }

    /// How many durations it holds.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The `q` quantile (0 to 1) in whole milliseconds, interpolated linearly within its
    /// bucket; `None` when the histogram is empty.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(f64::MIN_POSITIVE);
        let mut below = 0u64;
        for (b, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                if b == 0 {
                    return Some(0);
                }
                let (low, high) = Self::bounds(b);
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some((low + within * (high - low)).round() as u64);
            }
            below += n;
        }
        let (_, high) = Self::bounds(BUCKETS - 1);
        Some(high as u64)
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }
}

/// One minute of a queue's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinuteHistory {
    /// When the minute starts (Unix seconds, a multiple of 60; Redis clock).
    pub minute: u64,
    /// Attempts that completed.
    pub completed: u64,
    /// Attempts that failed (handler error or expired lease).
    pub failed: u64,
    /// Of the failed attempts, those whose job was put back for another attempt.
    pub retried: u64,
    /// Of the failed attempts, those whose job went to the dead set.
    pub dead: u64,
    /// From when the job was last due to the attempt's start.
    pub wait: Histogram,
    /// From the attempt's start to its end.
    pub run: Histogram,
}

impl MinuteHistory {
    /// The minute starting at `minute` from its hash's fields; unknown fields are ignored.
    fn from_fields(minute: u64, fields: Vec<Value>) -> Self {
        let mut out = Self {
            minute,
            ..Self::default()
        };
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let (Some(k), Some(n)) = (reply::opt_string(k), reply::opt_u64(&v)) else {
                continue;
            };
            let bucket = |rest: &str| rest.parse::<usize>().ok().filter(|b| *b < BUCKETS);
            match k.as_str() {
                "completed" => out.completed = n,
                "failed" => out.failed = n,
                "retried" => out.retried = n,
                "dead" => out.dead = n,
                other => {
                    if let Some(b) = other.strip_prefix("wait:").and_then(bucket) {
                        out.wait.buckets[b] = n;
                    } else if let Some(b) = other.strip_prefix("run:").and_then(bucket) {
                        out.run.buckets[b] = n;
                    }
                }
            }
        }
        out
    }
}

impl Queue {
    /// The last `minutes` minutes of the queue's history (1 to [`MAX_MINUTES`], clamped), the
    /// current minute included, oldest first, one entry per minute (zeros where nothing
    /// ended). One script call: the minutes are those of Redis's clock.
    pub async fn history(&self, minutes: u32) -> Result<Vec<MinuteHistory>, QueueError> {
        let minutes = minutes.clamp(1, MAX_MINUTES);
        let reply: Value = scripts::HISTORY
            .key(&self.inner.history)
            .arg(minutes)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let items = reply::array(reply, "history")?;
        let mut out = Vec::with_capacity(minutes as usize);
        let mut it = items.into_iter().skip(1);
        while let (Some(m), Some(fields)) = (it.next(), it.next()) {
            let minute = reply::opt_u64(&m)
                .ok_or_else(|| QueueError::Protocol("history: bad minute".into()))?;
            out.push(MinuteHistory::from_fields(
                minute,
                reply::array(fields, "history minute")?,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_double_from_one_millisecond() {
        assert_eq!(Histogram::bucket_of(0), 0);
        assert_eq!(Histogram::bucket_of(1), 1);
        assert_eq!(Histogram::bucket_of(2), 2);
        assert_eq!(Histogram::bucket_of(3), 2);
        assert_eq!(Histogram::bucket_of(4), 3);
        assert_eq!(Histogram::bucket_of(1023), 10);
        assert_eq!(Histogram::bucket_of(1024), 11);
        assert_eq!(Histogram::bucket_of(1 << 22), 23);
        assert_eq!(Histogram::bucket_of(u64::MAX), 23);
        for b in 1..BUCKETS {
            let (low, high) = Histogram::bounds(b);
            assert_eq!(Histogram::bucket_of(low as u64), b);
            if b < BUCKETS - 1 {
                assert_eq!(Histogram::bucket_of(high as u64 - 1), b);
            }
        }
    }

    #[test]
    fn percentiles_interpolate_within_the_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        // 100 durations in [64, 128) ms.
        h.buckets[Histogram::bucket_of(100)] = 100;
        assert_eq!(h.percentile(0.5), Some(96));
        assert_eq!(h.percentile(0.95), Some(125));
        // One slow outlier moves the p95 only if it is 5 % of the samples.
        h.buckets[Histogram::bucket_of(10_000)] = 1;
        assert!(h.percentile(0.95).unwrap() < 128);
        h.buckets[Histogram::bucket_of(10_000)] = 20;
        assert!(h.percentile(0.95).unwrap() >= 8192);
        let mut zero = Histogram::default();
        zero.buckets[0] = 3;
        assert_eq!(zero.percentile(0.5), Some(0));
    }

    #[test]
    fn a_minute_reads_its_counts_and_buckets_and_ignores_the_rest() {
        let v = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let m = MinuteHistory::from_fields(
            60,
            vec![
                v("completed"),
                v("5"),
                v("failed"),
                v("2"),
                v("retried"),
                v("1"),
                v("dead"),
                v("1"),
                v("wait:3"),
                v("4"),
                v("run:10"),
                v("6"),
                v("run:99"),
                v("1"),
                v("other"),
                v("7"),
            ],
        );
        assert_eq!((m.completed, m.failed, m.retried, m.dead), (5, 2, 1, 1));
        assert_eq!(m.wait.buckets[3], 4);
        assert_eq!(m.run.buckets[10], 6);
        assert_eq!(m.run.count(), 6);
    }
}
