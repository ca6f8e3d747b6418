//! Producing jobs: enqueue one, a batch, or a cron tick (idempotent by id and by tick).

use std::time::{Duration, SystemTime};

use redis::{ScriptInvocation, Value};

use super::error::QueueError;
use super::job::{self, Enqueued, NewJob};
use super::policy::millis;
use super::{MAX_BATCH, Queue, check_id, reply, scripts};

/// The longest fairness key accepted (bytes).
pub const MAX_FAIRNESS_KEY_LEN: usize = 512;

/// A job's fairness key and that key's weight (see [`Queue::enqueue_in_group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fairness<'a> {
    /// Jobs of one key are taken in order; keys take turns. May be empty.
    pub key: &'a str,
    /// How many jobs the key gives per turn (at least 1).
    pub weight: u32,
}

impl Queue {
    /// Enqueues one job. Idempotent by id: a job whose id exists is left alone and reported as
    /// [`Enqueued::Duplicate`].
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        let mut out = self.enqueue_bulk(std::slice::from_ref(job)).await?;
        out.pop()
            .ok_or_else(|| QueueError::Protocol("enqueue: empty reply".into()))
    }

    /// Enqueues a batch in one round trip, returning one outcome per job in order. Batches over
    /// [`MAX_BATCH`] are split into several script calls sent in one pipeline (batches over
    /// [`MAX_PIPELINE`](super::MAX_PIPELINE) × [`MAX_BATCH`] in several); each call is atomic. A repeated id within
    /// the batch is a duplicate of its first occurrence.
    pub async fn enqueue_bulk(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids = jobs
            .iter()
            .map(|j| match &j.id {
                Some(id) => check_id(id).map(|()| id.clone()),
                None => Ok(uuid::Uuid::now_v7().to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut invocations = Vec::with_capacity(jobs.len().div_ceil(MAX_BATCH));
        for (chunk, chunk_ids) in jobs.chunks(MAX_BATCH).zip(ids.chunks(MAX_BATCH)) {
            let mut inv = scripts::ENQUEUE.prepare_invoke();
            self.enqueue_keys(&mut inv);
            inv.arg(self.plen())
                .arg(&self.inner.wake_channel)
                .arg(self.inner.policy.history_flag());
            for (job, id) in chunk.iter().zip(chunk_ids) {
                inv.key(self.job_key(id));
                self.job_args(&mut inv, job);
            }
            invocations.push(inv);
        }
        let replies = self.invoke_all(&invocations).await?;
        let mut out = Vec::with_capacity(jobs.len());
        let mut ids = ids.into_iter();
        for reply in replies {
            for flag in reply::array(reply, "enqueue")? {
                let id = ids
                    .next()
                    .ok_or_else(|| QueueError::Protocol("enqueue: too many results".into()))?;
                out.push(if reply::int(&flag, "enqueue")? == 1 {
                    Enqueued::Created(id)
                } else {
                    Enqueued::Duplicate(id)
                });
            }
        }
        if out.len() != jobs.len() {
            return Err(QueueError::Protocol("enqueue: too few results".into()));
        }
        Ok(out)
    }

    /// Enqueues `job` counted in group `group` of this queue (a session's calls), which may
    /// hold at most `max` unfinished jobs, in one atomic script call: `None` when the group is
    /// full (nothing enqueued). At the cap, the group's finished or vanished jobs stop counting
    /// first. The group expires `ttl` after its last admission. A duplicate id changes nothing.
    ///
    /// With a [`Fairness`] key the job waits in its key's list, and fetches take such jobs
    /// round-robin across keys (after the wait list's unkeyed jobs), a key of weight `w`
    /// giving up to `w` jobs per turn; without one it joins the wait list (FIFO).
    pub async fn enqueue_in_group(
        &self,
        job: &NewJob,
        group: &str,
        max: usize,
        ttl: Duration,
        fairness: Option<Fairness<'_>>,
    ) -> Result<Option<Enqueued>, QueueError> {
        let id = match &job.id {
            Some(id) => check_id(id).map(|()| id.clone())?,
            None => uuid::Uuid::now_v7().to_string(),
        };
        if let Some(f) = &fairness
            && f.key.len() > MAX_FAIRNESS_KEY_LEN
        {
            return Err(QueueError::InvalidId(format!(
                "fairness key longer than {MAX_FAIRNESS_KEY_LEN} bytes"
            )));
        }
        let mut inv = scripts::ENQUEUE_GROUPED.prepare_invoke();
        self.enqueue_keys(&mut inv);
        inv.key(self.inner.keys.group(group))
            .key(self.inner.keys.group_pending(group))
            .key(&self.inner.fair_prefix)
            .key(self.job_key(&id))
            .arg(self.plen())
            .arg(&self.inner.wake_channel)
            .arg(self.inner.policy.history_flag())
            .arg(max)
            .arg(ttl.as_secs().max(1));
        match &fairness {
            Some(f) => inv.arg(f.weight.max(1)).arg(f.key),
            None => inv.arg(0).arg(""),
        };
        self.job_args(&mut inv, job);
        let reply = self.invoke_all(std::slice::from_ref(&inv)).await?;
        let flag = reply
            .into_iter()
            .next()
            .ok_or_else(|| QueueError::Protocol("enqueue_grouped: empty reply".into()))?;
        Ok(match reply::int(&flag, "enqueue_grouped")? {
            1 => Some(Enqueued::Created(id)),
            0 => Some(Enqueued::Duplicate(id)),
            _ => None,
        })
    }

    /// Counts job `id` in group `group` (see [`Queue::enqueue_in_group`]) before it is
    /// enqueued with [`Queue::enqueue`]: for a job that needs something done between its
    /// admission and its enqueue. `false` when the group is full (not counted). A counted id
    /// without a job keeps counting for a minute (it is about to be enqueued), then stops; a
    /// job counted and then not enqueued should [`leave_group`](Queue::leave_group) at once.
    pub async fn admit_to_group(
        &self,
        group: &str,
        id: &str,
        max: usize,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        check_id(id)?;
        let mut inv = scripts::GROUP_ADMIT.prepare_invoke();
        inv.key(self.inner.keys.group(group))
            .key(self.inner.keys.group_pending(group))
            .key(&self.inner.job_prefix)
            .arg(id)
            .arg(max)
            .arg(ttl.as_secs().max(1));
        let reply = self.invoke_all(std::slice::from_ref(&inv)).await?;
        let flag = reply
            .into_iter()
            .next()
            .ok_or_else(|| QueueError::Protocol("group_admit: empty reply".into()))?;
        Ok(reply::int(&flag, "group_admit")? == 1)
    }

    /// Stops counting job `id` in group `group` (it was not enqueued after all, or it ended).
    pub async fn leave_group(&self, group: &str, id: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .srem(self.inner.keys.group(group), id)
            .ignore()
            .zrem(self.inner.keys.group_pending(group), id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The first nine keys of the enqueue scripts: wait, scheduled, paused, idle, hand-offs,
    /// active, stats, job prefix, history prefix.
    fn enqueue_keys(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.paused)
            .key(&self.inner.idle)
            .key(&self.inner.hand_offs)
            .key(&self.inner.active)
            .key(&self.inner.stats)
            .key(&self.inner.job_prefix)
            .key(&self.inner.history);
    }

    /// The four per-job arguments of the enqueue scripts.
    fn job_args(&self, inv: &mut ScriptInvocation<'_>, job: &NewJob) {
        inv.arg(&job.payload[..])
            .arg(job.delay.map(millis).unwrap_or(0))
            .arg(job.run_at_ms.unwrap_or(0))
            .arg(
                job.max_attempts
                    .unwrap_or(self.inner.policy.max_attempts)
                    .max(1),
            );
    }

    /// Enqueues the job of one tick of cron schedule `schedule`, exactly once per tick across
    /// the fleet however many processes call it: the job id is `cron:<schedule>:<tick secs>`,
    /// and the tick is also remembered for the policy's `cron_dedup_window`, so a late caller
    /// cannot fire it again after the job and its result expired. A tick older than the newest
    /// fired one minus the window is refused as already fired. A `chrono::DateTime<Utc>`
    /// (what apalis-cron yields) converts with `.into()`.
    pub async fn enqueue_tick(
        &self,
        schedule: &str,
        tick: SystemTime,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Enqueued, QueueError> {
        let secs = job::unix_ms(tick) / 1000;
        let id = format!("cron:{schedule}:{secs}");
        check_id(&id)?;
        let job = NewJob::new(payload).with_id(id.clone());
        let mut inv = scripts::ENQUEUE_TICK.prepare_invoke();
        inv.key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.paused)
            .key(self.inner.keys.cron_ticks(schedule))
            .key(&self.inner.idle)
            .key(&self.inner.hand_offs)
            .key(&self.inner.active)
            .key(&self.inner.stats)
            .key(&self.inner.job_prefix)
            .key(&self.inner.history)
            .key(self.job_key(&id))
            .arg(self.plen())
            .arg(&self.inner.wake_channel)
            .arg(secs)
            .arg(self.inner.policy.cron_dedup_window.as_secs())
            .arg(self.inner.policy.history_flag());
        self.job_args(&mut inv, &job);
        let reply: Value = inv.invoke_async(&mut self.conn.clone()).await?;
        let flags = reply::array(reply, "enqueue_tick")?;
        let created = flags
            .first()
            .map(|v| reply::int(v, "enqueue_tick"))
            .transpose()?
            == Some(1);
        Ok(if created {
            Enqueued::Created(id)
        } else {
            Enqueued::Duplicate(id)
        })
    }
}
