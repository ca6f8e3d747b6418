//! The operator's controls: cancel, remove, retry a dead job, pause and resume.

use super::error::QueueError;
use super::job::CancelOutcome;
use super::{Queue, check_id, scripts};

impl Queue {
    /// Cancels a job: a queued, scheduled or retrying job ends at once; a running job is
    /// flagged and its worker signalled on the cancel channel (and by its next heartbeat).
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, QueueError> {
        check_id(id)?;
        let code: i64 = scripts::CANCEL
            .key(self.job_key(id))
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.stats)
            .key(&self.inner.cancelled)
            .arg(id)
            .arg(self.inner.policy.result_ttl_ms())
            .arg(&self.inner.cancel_channel)
            .arg(self.inner.policy.completed_index_max.max(1))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match code {
            1 => CancelOutcome::Removed,
            2 => CancelOutcome::Signalled,
            3 => CancelOutcome::AlreadyFinished,
            _ => CancelOutcome::NotFound,
        })
    }

    /// Deletes a job in any state, with its index entries; a running job's worker is signalled
    /// and loses its lease. Returns whether the job existed.
    pub async fn remove(&self, id: &str) -> Result<bool, QueueError> {
        check_id(id)?;
        let code: i64 = scripts::REMOVE
            .key(self.job_key(id))
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.active)
            .key(&self.inner.dead)
            .key(&self.inner.stats)
            .arg(id)
            .arg(&self.inner.cancel_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(code == 1)
    }

    /// Puts a dead job back at the head of the wait list with a fresh attempt budget (its
    /// error history is kept). Returns whether the job was dead.
    pub async fn retry_dead(&self, id: &str) -> Result<bool, QueueError> {
        check_id(id)?;
        let code: i64 = scripts::RETRY_DEAD
            .key(self.job_key(id))
            .key(&self.inner.dead)
            .key(&self.inner.wait)
            .key(&self.inner.paused)
            .arg(id)
            .arg(&self.inner.wake_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(code == 1)
    }

    /// Pauses the queue: fetches return nothing until [`resume`](Self::resume); enqueues,
    /// heartbeats, acks and sweeps go on.
    pub async fn pause(&self) -> Result<(), QueueError> {
        let _: () = redis::cmd("SET")
            .arg(&self.inner.paused)
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Resumes a paused queue and wakes idle workers when jobs are waiting.
    pub async fn resume(&self) -> Result<(), QueueError> {
        let _: i64 = scripts::RESUME
            .key(&self.inner.paused)
            .key(&self.inner.wait)
            .arg(&self.inner.wake_channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Whether the queue is paused.
    pub async fn is_paused(&self) -> Result<bool, QueueError> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&self.inner.paused)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }
}
