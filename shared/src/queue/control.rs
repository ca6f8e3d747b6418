//! The operator's controls: cancel, remove, retry a dead job, pause and resume.

use redis::ScriptInvocation;

use super::error::QueueError;
use super::job::{CancelOutcome, JobState};
use super::{Queue, check_id, reply, scripts};

/// The most jobs one bulk call ([`Queue::remove_many`], [`Queue::retry_dead_many`]) acts on.
pub const MAX_BULK: usize = 1000;

/// What [`Queue::remove_many`] did with one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The job was deleted.
    Deleted,
    /// The job is in another state than the one named: left alone.
    OtherState,
    /// No such job.
    NotFound,
}

/// Rejects a bulk call over [`MAX_BULK`] ids, or with an id that cannot be stored.
fn check_bulk(ids: &[String]) -> Result<(), QueueError> {
    if ids.len() > MAX_BULK {
        return Err(QueueError::Protocol(format!(
            "{} ids in one bulk call, at most {MAX_BULK}",
            ids.len()
        )));
    }
    ids.iter().try_for_each(|id| check_id(id))
}

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
        let code: i64 = self
            .remove_invocation(id, None)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(code == 1)
    }

    /// The removal of job `id`, only while it is in `state` when one is given.
    fn remove_invocation(&self, id: &str, state: Option<JobState>) -> ScriptInvocation<'static> {
        let mut inv = scripts::REMOVE.prepare_invoke();
        inv.key(self.job_key(id))
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.active)
            .key(&self.inner.dead)
            .key(&self.inner.stats)
            .arg(id)
            .arg(&self.inner.cancel_channel)
            .arg(state.map_or("", JobState::as_str));
        inv
    }

    /// Deletes the jobs `ids` (at most [`MAX_BULK`]), each only while it is in `state` when one
    /// is given (a job that moved on since it was listed is left alone), as [`remove`](Self::remove)
    /// does, in as few round trips as the pipeline allows. Returns one outcome per id.
    pub async fn remove_many(
        &self,
        ids: &[String],
        state: Option<JobState>,
    ) -> Result<Vec<Removed>, QueueError> {
        check_bulk(ids)?;
        let invocations: Vec<_> = ids
            .iter()
            .map(|id| self.remove_invocation(id, state))
            .collect();
        self.invoke_all(&invocations)
            .await?
            .iter()
            .map(|v| {
                Ok(match reply::int(v, "remove")? {
                    1 => Removed::Deleted,
                    2 => Removed::OtherState,
                    _ => Removed::NotFound,
                })
            })
            .collect()
    }

    /// Puts the dead jobs `ids` (at most [`MAX_BULK`]) back in the queue as
    /// [`retry_dead`](Self::retry_dead) does, in as few round trips as the pipeline allows.
    /// Returns, per id, whether it was dead (and is now queued).
    pub async fn retry_dead_many(&self, ids: &[String]) -> Result<Vec<bool>, QueueError> {
        check_bulk(ids)?;
        let invocations: Vec<_> = ids
            .iter()
            .map(|id| {
                let mut inv = scripts::RETRY_DEAD.prepare_invoke();
                inv.key(self.job_key(id))
                    .key(&self.inner.dead)
                    .key(&self.inner.wait)
                    .key(&self.inner.paused)
                    .key(&self.inner.stats)
                    .key(&self.inner.fair_prefix)
                    .arg(id)
                    .arg(&self.inner.wake_channel);
                inv
            })
            .collect();
        self.invoke_all(&invocations)
            .await?
            .iter()
            .map(|v| Ok(reply::int(v, "retry_dead")? == 1))
            .collect()
    }

    /// Puts a dead job back at the head of the wait list (a keyed job: of its key's list) with a fresh attempt budget (its
    /// error history is kept). Returns whether the job was dead.
    pub async fn retry_dead(&self, id: &str) -> Result<bool, QueueError> {
        check_id(id)?;
        let code: i64 = scripts::RETRY_DEAD
            .key(self.job_key(id))
            .key(&self.inner.dead)
            .key(&self.inner.wait)
            .key(&self.inner.paused)
            .key(&self.inner.stats)
            .key(&self.inner.fair_prefix)
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
            .key(&self.inner.stats)
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
