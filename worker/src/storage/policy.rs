//! The storage-push retry schedule in one place: [`StoragePushPolicy`] (the `storage_push`
//! queue's attempts and backoff, the time budget, and the rule that says an attempt is the last)
//! and [`PushQueue`], the one way a push is enqueued, with that budget as its attempts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exai_shared::Config;
use exai_shared::db::{FileUpload, UploadStatus};
use exai_shared::error_chain;
use exai_shared::jobs::{JobError, StoragePushJob};
use exai_shared::keys::Keys;
use exai_shared::queue::{self, NewJob, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;

/// How pushes to Supabase Storage are retried. Retries are jobs, not sleeps: a transient
/// failure goes back to the queue, which schedules the next attempt with [`Self::queue`]'s
/// backoff; [`Self::is_last_attempt`] says when to give up instead.
#[derive(Debug, Clone)]
pub struct StoragePushPolicy {
    /// The policy of the `storage_push` queue: the jobs' policy with
    /// `EXAI_STORAGE_RETRY_MAX_ATTEMPTS` attempts and a backoff starting at
    /// `EXAI_STORAGE_RETRY_BASE_MS`, doubling, capped at 300 s (or the base, if larger), with
    /// jitter.
    pub queue: QueuePolicy,
    /// `EXAI_STORAGE_RETRY_MAX_SECS`: how long after its enqueue a push may still be retried.
    pub time_budget: Duration,
}

impl StoragePushPolicy {
    /// The policy of `config`.
    pub fn from_config(config: &Config) -> Self {
        let mut queue = QueuePolicy::from_config(&config.jobs);
        queue.max_attempts = config.supabase.retry_max_attempts;
        queue.backoff.min = config.supabase.retry_base;
        queue.backoff.max = queue.backoff.max.max(config.supabase.retry_base);
        Self {
            queue,
            time_budget: config.supabase.retry_max,
        }
    }

    /// The attempts a push job is enqueued with.
    pub fn max_attempts(&self) -> u32 {
        self.queue.max_attempts
    }

    /// Whether a failed transient attempt (number `attempt` of `max_attempts`, of a job enqueued
    /// at `enqueued_at_ms`) is the job's last: no attempts left, or even the earliest retry (the
    /// backoff without jitter, or `retry_after`, the wait the provider named) would start after
    /// the time budget, counted from the job's enqueue.
    pub fn is_last_attempt(
        &self,
        attempt: u32,
        max_attempts: u32,
        enqueued_at_ms: u64,
        retry_after: Option<Duration>,
    ) -> bool {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.is_last_attempt_at(attempt, max_attempts, enqueued_at_ms, retry_after, now_ms)
    }

    /// [`Self::is_last_attempt`] at `now_ms` (Unix ms).
    fn is_last_attempt_at(
        &self,
        attempt: u32,
        max_attempts: u32,
        enqueued_at_ms: u64,
        retry_after: Option<Duration>,
        now_ms: u64,
    ) -> bool {
        if attempt >= max_attempts {
            return true;
        }
        let mut earliest = self.queue.backoff;
        earliest.jitter = false;
        let next = retry_after.unwrap_or_else(|| earliest.delay(attempt));
        let elapsed = Duration::from_millis(now_ms.saturating_sub(enqueued_at_ms));
        elapsed + next > self.time_budget
    }
}

/// The `storage_push` queue with its policy: where pushes are enqueued. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PushQueue {
    queue: Queue,
    policy: StoragePushPolicy,
}

impl PushQueue {
    /// The deployment's `storage_push` queue over `conn`, with `policy`.
    pub fn new(conn: RedisHandle, keys: &Keys, policy: StoragePushPolicy) -> Self {
        Self {
            queue: Queue::new(conn, keys, queue::STORAGE_PUSH, policy.queue.clone()),
            policy,
        }
    }

    /// The retry policy of the pushes.
    pub fn policy(&self) -> &StoragePushPolicy {
        &self.policy
    }

    /// Enqueues the row's push if it still needs one (idempotent: the job id is
    /// `push-<row id>`). Does nothing when storage is disabled (`upload_enabled` false).
    pub async fn ensure(&self, row: &FileUpload, upload_enabled: bool) -> Result<(), JobError> {
        let needs_push = matches!(
            row.status,
            UploadStatus::StoragePending | UploadStatus::Uploading | UploadStatus::Pending
        );
        if !needs_push || !upload_enabled {
            return Ok(());
        }
        self.enqueue(row.id, StoragePushJob::job_id(row.id)).await
    }

    /// Enqueues a push of row `row_id` under `job_id`, with the storage retry budget
    /// (`EXAI_STORAGE_RETRY_MAX_ATTEMPTS`) as its attempts.
    pub async fn enqueue(&self, row_id: uuid::Uuid, job_id: String) -> Result<(), JobError> {
        let job = NewJob::json(&StoragePushJob { row_id })
            .map_err(JobError::permanent)?
            .with_id(job_id)
            .with_max_attempts(self.policy.max_attempts());
        let outcome = self.queue.enqueue(&job).await.map_err(|e| {
            JobError::Transient(format!("enqueue storage push: {}", error_chain(&e)))
        })?;
        tracing::debug!(row_id = %row_id, job_id = outcome.id(), created = outcome.is_created(), "storage push enqueued");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exai_shared::queue::Backoff;

    fn policy() -> StoragePushPolicy {
        StoragePushPolicy {
            queue: QueuePolicy {
                max_attempts: 5,
                backoff: Backoff {
                    min: Duration::from_secs(10),
                    factor: 2.0,
                    max: Duration::from_secs(300),
                    jitter: true,
                },
                ..QueuePolicy::default()
            },
            time_budget: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_last_attempt_is_the_last_allowed_or_one_whose_retry_would_miss_the_budget() {
        let p = policy();
        let enqueued = 1_000_000;
        // Attempts left and the next retry (10 s) well within the budget.
        assert!(!p.is_last_attempt_at(1, 5, enqueued, None, enqueued));
        // No attempts left.
        assert!(p.is_last_attempt_at(5, 5, enqueued, None, enqueued));
        // 55 s spent: the next retry (10 s, no jitter) would start past the 60 s budget.
        assert!(p.is_last_attempt_at(1, 5, enqueued, None, enqueued + 55_000));
        // A wait the provider named counts instead of the backoff.
        assert!(p.is_last_attempt_at(1, 5, enqueued, Some(Duration::from_secs(61)), enqueued));
        assert!(!p.is_last_attempt_at(
            1,
            5,
            enqueued,
            Some(Duration::from_secs(1)),
            enqueued + 55_000
        ));
    }
}
