//! How a queue retries, leases and retains its jobs.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::JobConfig;

/// Exponential backoff with jitter between failed attempts, computed with `backon`.
///
/// The delay after attempt `n` (1-based) is `min(min · factorⁿ⁻¹, max)`, plus, when `jitter`
/// is on, a random extra of up to 100 % of that delay (so at most `2 · max`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay after the first failed attempt.
    pub min: Duration,
    /// The growth factor per attempt (≥ 1).
    pub factor: f32,
    /// The cap of the delay before jitter.
    pub max: Duration,
    /// Add random jitter, so jobs that failed together do not retry together.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(300),
            jitter: true,
        }
    }
}

impl Backoff {
    /// The delay before the retry that follows failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.min)
            .with_factor(self.factor.max(1.0))
            .with_max_delay(self.max)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        // The delay stops growing at `max`, so 64 steps cover every reachable value.
        let steps = attempt.clamp(1, 64) as usize;
        let delay = builder.build().nth(steps - 1).unwrap_or(self.max);
        // backon computes in f32; round to the millisecond the queue stores anyway.
        Duration::from_millis((delay.as_secs_f64() * 1000.0).round() as u64)
    }
}

/// The rules one queue runs by. Every process serving a queue should use the same policy; the
/// job's own `max_attempts` is stored with it at enqueue time, so that one cannot disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Attempts a job gets unless it was enqueued with its own limit. Every start counts,
    /// crash re-runs included; [`Queue::release`](super::Queue::release) gives one back.
    pub max_attempts: u32,
    /// The delay between a transient failure and the next attempt.
    pub backoff: Backoff,
    /// How long a fetched job stays ours without a heartbeat (`EXAI_JOB_LEASE_MS`). A worker
    /// should heartbeat at a third of it; a job whose lease expires is re-run after a sweep.
    pub lease: Duration,
    /// How long completed and cancelled jobs, with their results, are kept
    /// (`EXAI_RESULT_TTL_SECS`).
    pub result_ttl: Duration,
    /// Dead jobs kept for inspection; beyond it the oldest are deleted.
    pub dead_max: usize,
    /// Entries of the completed-jobs index kept for listing (newest first, at least 1), and
    /// of the cancelled-jobs index likewise; older entries are dropped from the index (their
    /// jobs still expire on their own after `result_ttl`).
    pub completed_index_max: usize,
    /// Error records kept per job (the newest).
    pub errors_kept: usize,
    /// How long a fired cron tick is remembered, so a second fire of the same tick is refused
    /// even after the job and its result have expired. Ticks older than the newest fired tick
    /// minus this window are refused as already fired. Must exceed two schedule intervals.
    pub cron_dedup_window: Duration,
    /// Due delayed or retrying jobs moved to the wait list per sorted set per fetch or sweep
    /// step, bounding the work of one script call.
    pub promote_chunk: usize,
    /// Whether the complete, fail and sweep scripts add to the queue's per-minute history
    /// (`EXAI_QUEUE_HISTORY`, see [`crate::queue::history`]).
    pub history: bool,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff: Backoff::default(),
            lease: Duration::from_secs(30),
            result_ttl: Duration::from_secs(3600),
            dead_max: 10_000,
            completed_index_max: 10_000,
            errors_kept: 5,
            cron_dedup_window: Duration::from_secs(7 * 24 * 3600),
            promote_chunk: 1000,
            history: true,
        }
    }
}

impl QueuePolicy {
    /// The default policy with the lease and retention of the configuration.
    pub fn from_config(jobs: &JobConfig) -> Self {
        Self {
            lease: jobs.lease,
            result_ttl: jobs.result_ttl,
            history: jobs.history,
            ..Self::default()
        }
    }

    /// The policy's lease in whole milliseconds (at least 1).
    pub(crate) fn lease_ms(&self) -> u64 {
        millis(self.lease).max(1)
    }

    /// The scripts' "write the history" argument.
    pub(crate) fn history_flag(&self) -> &'static str {
        if self.history { "1" } else { "0" }
    }

    /// The retention in whole milliseconds (at least 1).
    pub(crate) fn result_ttl_ms(&self) -> u64 {
        millis(self.result_ttl).max(1)
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            min: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(1),
            jitter: false,
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(400));
        assert_eq!(b.delay(10), Duration::from_secs(1));
        assert_eq!(b.delay(10_000), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_one_delay() {
        let b = Backoff {
            min: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(1),
            jitter: true,
        };
        for _ in 0..100 {
            let d = b.delay(2);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
        }
    }
}
