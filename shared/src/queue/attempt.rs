//! The worker's side of an attempt: fetch under a lease, idle registrations, heartbeat, the
//! fenced complete, fail and release, and the sweep that rescues the jobs of dead workers.

use std::borrow::Borrow;
use std::time::Duration;

use redis::Value;

use super::error::QueueError;
use super::job::{
    Ack, FailKind, FailOutcome, FetchBatch, Fetched, JobLease, LeaseState, RescueReport,
};
use super::policy::millis;
use super::{
    DEFAULT_IDLE_FOR, MAX_BATCH, MAX_ERROR_LEN, MAX_IDLE_FOR, Queue, check_len, reply, scripts,
    truncate,
};

/// What one worker round trip ([`Queue::complete_and_fetch`]) did.
#[derive(Debug, Default)]
pub struct Cycle {
    /// One [`Ack`] per completion, in order.
    pub acks: Vec<Ack>,
    /// The jobs leased for the free slots.
    pub batch: FetchBatch,
    /// The call used up its budget on stale ids (a mass cancel): fetch again at once.
    pub more: bool,
}

impl Queue {
    /// Leases up to `max` (at most [`MAX_BATCH`]) queued jobs for worker `worker`, oldest
    /// first, after promoting due delayed and retrying jobs. Returns nothing while paused.
    pub async fn fetch(&self, worker: &str, max: usize) -> Result<Vec<Fetched>, QueueError> {
        Ok(self.fetch_batch(worker, max).await?.jobs)
    }

    /// [`fetch`](Self::fetch), also telling whether the queue is paused and when the next
    /// delayed job is due — what an idle worker needs to choose how long to wait.
    pub async fn fetch_batch(&self, worker: &str, max: usize) -> Result<FetchBatch, QueueError> {
        self.fetch_batch_idle(worker, max, DEFAULT_IDLE_FOR).await
    }

    /// Withdraws `worker`'s idle registration (a worker that stops fetching: enqueues then wake
    /// someone else).
    pub async fn leave_idle(&self, worker: &str) -> Result<(), QueueError> {
        // Registration first: once it is gone no enqueue can take the terms.
        let _: (i64, i64) = redis::pipe()
            .zrem(&self.inner.idle, worker)
            .hdel(&self.inner.hand_offs, worker)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Registers `worker` as idle again, for `idle_for`, without fetching: for a worker whose
    /// registration a hand-off used up while it still has free slots. Safe without a fetch:
    /// whatever was enqueued while it was not registered woke another worker or every worker.
    pub async fn register_idle(&self, worker: &str, idle_for: Duration) -> Result<(), QueueError> {
        let _: Value = scripts::REGISTER_IDLE
            .key(&self.inner.idle)
            .key(&self.inner.hand_offs)
            .arg(worker)
            .arg(millis(idle_for.min(MAX_IDLE_FOR)))
            .arg(self.hand_offs_flag())
            .arg(self.inner.policy.lease_ms())
            .arg(self.inner.events.as_deref().unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// [`Queue::fetch_batch`] by a caller that, when the batch comes back short, waits at most
    /// `idle_for` before it fetches again: until then it is registered idle, and the next
    /// enqueue wakes it alone on
    /// [`QueueKeys::wake_channel_of`](crate::keys::QueueKeys::wake_channel_of) (a
    /// [`Waker`](super::Waker) made for this worker hears it).
    pub async fn fetch_batch_idle(
        &self,
        worker: &str,
        max: usize,
        idle_for: Duration,
    ) -> Result<FetchBatch, QueueError> {
        let max = max.min(MAX_BATCH);
        if max == 0 {
            return Ok(FetchBatch::default());
        }
        // A call pops a bounded number of stale ids; with a very long run of them (a mass
        // cancel), it reports `more` and the next call continues.
        for _ in 0..1000 {
            let Cycle { batch, more, .. } = self
                .complete_and_fetch::<JobLease, &[u8]>(&[], worker, max, idle_for)
                .await?;
            if batch.jobs.is_empty() && more {
                continue;
            }
            return Ok(batch);
        }
        // Still only stale ids after many bounded steps: say "fetch again now".
        Ok(FetchBatch {
            next_due_in: Some(Duration::ZERO),
            ..FetchBatch::default()
        })
    }

    /// Renews the leases of a worker's running jobs in one script call (split per
    /// [`MAX_BATCH`], one round trip), returning one state per lease in order.
    pub async fn heartbeat(&self, leases: &[JobLease]) -> Result<Vec<LeaseState>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let lease_ms = self.inner.policy.lease_ms();
        let invocations: Vec<_> = leases
            .chunks(MAX_BATCH)
            .map(|chunk| {
                let mut inv = scripts::HEARTBEAT.prepare_invoke();
                inv.key(&self.inner.active).arg(lease_ms);
                for l in chunk {
                    inv.key(self.job_key(&l.id)).arg(l.member());
                }
                inv
            })
            .collect();
        let mut out = Vec::with_capacity(leases.len());
        for reply in self.invoke_all(&invocations).await? {
            let items = reply::array(reply, "heartbeat")?;
            for v in items.iter().skip(1) {
                out.push(match reply::int(v, "heartbeat")? {
                    1 => LeaseState::Held,
                    2 => LeaseState::CancelRequested,
                    _ => LeaseState::Lost,
                });
            }
        }
        check_len(out.len(), leases.len(), "heartbeat")?;
        Ok(out)
    }

    /// Completes one attempt: stores `result` and releases the lease atomically, only if the
    /// lease is still ours. The job and its result are kept for the policy's `result_ttl`.
    pub async fn complete(&self, lease: &JobLease, result: &[u8]) -> Result<Ack, QueueError> {
        let mut out = self.complete_many(&[(lease, result)]).await?;
        out.pop()
            .ok_or_else(|| QueueError::Protocol("complete: empty reply".into()))
    }

    /// Completes a batch of attempts in one round trip (one script call per [`MAX_BATCH`]),
    /// each fenced on its own; returns one [`Ack`] per item in order.
    pub async fn complete_many<L, R>(&self, items: &[(L, R)]) -> Result<Vec<Ack>, QueueError>
    where
        L: Borrow<JobLease>,
        R: AsRef<[u8]>,
    {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let policy = &self.inner.policy;
        let invocations: Vec<_> = items
            .chunks(MAX_BATCH)
            .map(|chunk| {
                let mut inv = scripts::COMPLETE.prepare_invoke();
                inv.key(&self.inner.active)
                    .key(&self.inner.completed)
                    .key(&self.inner.stats)
                    .key(&self.inner.history)
                    .arg(self.plen())
                    .arg(policy.result_ttl_ms())
                    .arg(policy.completed_index_max.max(1))
                    .arg(self.inner.events.as_deref().unwrap_or(""))
                    .arg(policy.history_flag());
                for (lease, result) in chunk {
                    let lease = lease.borrow();
                    inv.key(self.job_key(&lease.id))
                        .arg(lease.member())
                        .arg(result.as_ref())
                        .arg(lease.started_ms);
                }
                inv
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for reply in self.invoke_all(&invocations).await? {
            for v in reply::array(reply, "complete")? {
                out.push(if reply::int(&v, "complete")? == 1 {
                    Ack::Done
                } else {
                    Ack::LeaseLost
                });
            }
        }
        check_len(out.len(), items.len(), "complete")?;
        Ok(out)
    }

    /// One worker round trip, in one script call: completes `items` as
    /// [`Queue::complete_many`] does, then leases up to `free` jobs plus one for each attempt
    /// it completed (whose slot is now free) as [`Queue::fetch_batch`] does. A worker that
    /// acknowledges and refills in the same call needs one round trip per cycle instead of two.
    /// At most [`MAX_BATCH`] items; `free` is capped at [`MAX_BATCH`]; `idle_for` as in
    /// [`Queue::fetch_batch_idle`].
    pub async fn complete_and_fetch<L, R>(
        &self,
        items: &[(L, R)],
        worker: &str,
        free: usize,
        idle_for: Duration,
    ) -> Result<Cycle, QueueError>
    where
        L: Borrow<JobLease>,
        R: AsRef<[u8]>,
    {
        if items.len() > MAX_BATCH {
            return Err(QueueError::Protocol(format!(
                "complete_and_fetch: {} completions, at most {MAX_BATCH}",
                items.len()
            )));
        }
        let policy = &self.inner.policy;
        let events = self.inner.events.as_deref().unwrap_or("");
        let mut inv = scripts::COMPLETE_FETCH.prepare_invoke();
        inv.key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.active)
            .key(&self.inner.stats)
            .key(&self.inner.paused)
            .key(&self.inner.job_prefix)
            .key(&self.inner.completed)
            .key(&self.inner.idle)
            .key(&self.inner.hand_offs)
            .key(&self.inner.history)
            .key(&self.inner.fair_prefix)
            .arg(free.min(MAX_BATCH))
            .arg(worker)
            .arg(policy.lease_ms())
            .arg(policy.promote_chunk.clamp(1, MAX_BATCH))
            .arg(events)
            .arg(self.plen())
            .arg(policy.result_ttl_ms())
            .arg(policy.completed_index_max.max(1))
            .arg(&self.inner.wake_channel)
            .arg(millis(idle_for.min(MAX_IDLE_FOR)))
            .arg(self.hand_offs_flag())
            .arg(policy.history_flag());
        for (lease, result) in items {
            let lease = lease.borrow();
            inv.key(self.job_key(&lease.id))
                .arg(lease.member())
                .arg(result.as_ref())
                .arg(lease.started_ms);
        }
        let reply = inv.invoke_async(&mut self.conn.clone()).await?;
        let mut items_out = reply::array(reply, "complete_and_fetch")?.into_iter();
        let n = items_out
            .next()
            .map(|v| reply::int(&v, "complete_and_fetch"))
            .transpose()?
            .unwrap_or(-1);
        check_len(
            usize::try_from(n).unwrap_or(usize::MAX),
            items.len(),
            "complete_and_fetch",
        )?;
        let mut acks = Vec::with_capacity(items.len());
        for v in items_out.by_ref().take(items.len()) {
            acks.push(if reply::int(&v, "complete_and_fetch")? == 1 {
                Ack::Done
            } else {
                Ack::LeaseLost
            });
        }
        check_len(acks.len(), items.len(), "complete_and_fetch")?;
        let (batch, more) = parse_fetch(Value::Array(items_out.collect()), policy.lease_ms())?;
        Ok(Cycle { acks, batch, more })
    }

    /// Ends one attempt as failed, only if the lease is still ours. `Transient` retries after
    /// the policy's backoff for this attempt, `RetryAfter` after the given wait, while attempts
    /// remain; `Permanent`, or a failure of the last attempt, makes the job dead. A job whose
    /// cancel was requested ends as cancelled instead. The error is kept in the job's history.
    pub async fn fail(
        &self,
        lease: &JobLease,
        error: &str,
        kind: FailKind,
    ) -> Result<FailOutcome, QueueError> {
        let policy = &self.inner.policy;
        let (kind_name, delay) = match kind {
            FailKind::Transient => ("transient", policy.backoff.delay(lease.attempt)),
            FailKind::RetryAfter(d) => ("transient", d),
            FailKind::Permanent => ("permanent", Duration::ZERO),
        };
        let reply: Value = scripts::FAIL
            .key(self.job_key(&lease.id))
            .key(&self.inner.active)
            .key(&self.inner.retry)
            .key(&self.inner.dead)
            .key(&self.inner.stats)
            .key(&self.inner.job_prefix)
            .key(&self.inner.paused)
            .key(&self.inner.cancelled)
            .key(&self.inner.history)
            .arg(self.plen())
            .arg(lease.member())
            .arg(truncate(error, MAX_ERROR_LEN))
            .arg(kind_name)
            .arg(millis(delay))
            .arg(policy.result_ttl_ms())
            .arg(policy.dead_max)
            .arg(policy.errors_kept)
            .arg(&self.inner.wake_channel)
            .arg(policy.completed_index_max.max(1))
            .arg(policy.history_flag())
            .invoke_async(&mut self.conn.clone())
            .await?;
        let items = reply::array(reply, "fail")?;
        let code = items
            .first()
            .map(|v| reply::int(v, "fail"))
            .transpose()?
            .unwrap_or(0);
        Ok(match code {
            1 => FailOutcome::Retrying {
                at_ms: items.get(1).and_then(reply::opt_u64).unwrap_or(0),
            },
            2 => FailOutcome::Dead,
            3 => FailOutcome::Cancelled,
            _ => FailOutcome::LeaseLost,
        })
    }

    /// Puts a running job back without burning its attempt — no permit within the wait, or
    /// the worker is shutting down — only if the lease is still ours. With a zero `delay` the
    /// job goes to the head of the wait list; otherwise it is scheduled `delay` from now. A job
    /// whose cancel was requested ends as cancelled instead (still [`Ack::Done`]).
    pub async fn release(&self, lease: &JobLease, delay: Duration) -> Result<Ack, QueueError> {
        let code: i64 = scripts::RELEASE
            .key(self.job_key(&lease.id))
            .key(&self.inner.active)
            .key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.stats)
            .key(&self.inner.paused)
            .key(&self.inner.cancelled)
            .key(&self.inner.fair_prefix)
            .arg(self.plen())
            .arg(lease.member())
            .arg(millis(delay))
            .arg(self.inner.policy.result_ttl_ms())
            .arg(&self.inner.wake_channel)
            .arg(self.inner.policy.completed_index_max.max(1))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(if code == 0 { Ack::LeaseLost } else { Ack::Done })
    }

    /// One sweep step, safe to run from every worker at once: up to `max` jobs whose lease
    /// expired go back to the head of the wait list (the crashed run counted as an attempt), or
    /// dead when that was their last attempt, or cancelled when a cancel was requested; then up
    /// to `max` due delayed and `max` due retrying jobs are promoted. When
    /// [`RescueReport::more`] is set, call again.
    pub async fn sweep(&self, max: usize) -> Result<RescueReport, QueueError> {
        let policy = &self.inner.policy;
        let reply: Value = scripts::SWEEP
            .key(&self.inner.active)
            .key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.dead)
            .key(&self.inner.stats)
            .key(&self.inner.paused)
            .key(&self.inner.job_prefix)
            .key(&self.inner.cancelled)
            .key(&self.inner.history)
            .key(&self.inner.fair_prefix)
            .arg(max.clamp(1, MAX_BATCH))
            .arg(policy.result_ttl_ms())
            .arg(policy.dead_max)
            .arg(policy.errors_kept)
            .arg(&self.inner.wake_channel)
            .arg(policy.completed_index_max.max(1))
            .arg(policy.history_flag())
            .invoke_async(&mut self.conn.clone())
            .await?;
        let items = reply::array(reply, "sweep")?;
        let at = |i: usize| items.get(i).and_then(reply::opt_u64).unwrap_or(0);
        Ok(RescueReport {
            rescued: at(0),
            dead: at(1),
            cancelled: at(2),
            promoted: at(3),
            more: at(4) == 1,
        })
    }
}

/// Parses a fetch reply into the batch and the "more stale ids to skip" flag; `lease_ms` is
/// the lease the fetch gave (its jobs started at the lease's end minus it).
fn parse_fetch(reply: Value, lease_ms: u64) -> Result<(FetchBatch, bool), QueueError> {
    let items = reply::array(reply, "fetch")?;
    if items.len() < 4 || (items.len() - 4) % 6 != 0 {
        return Err(QueueError::Protocol(format!(
            "fetch: reply of {} items",
            items.len()
        )));
    }
    let paused = reply::int(&items[0], "fetch")? == 1;
    let next_due = reply::int(&items[1], "fetch")?;
    let more = reply::int(&items[2], "fetch")? == 1;
    let lease_until_ms = reply::opt_u64(&items[3]).unwrap_or(0);
    let mut jobs = Vec::with_capacity((items.len() - 4) / 6);
    let mut it = items.into_iter().skip(4);
    while let (Some(id), Some(payload), Some(a), Some(m), Some(e), Some(f)) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) {
        let attempt = reply::int(&a, "fetch attempt")?;
        jobs.push(Fetched {
            lease: JobLease {
                id: reply::string(id, "fetch id")?,
                fence: reply::opt_u64(&f)
                    .ok_or_else(|| QueueError::Protocol("fetch: bad fence".into()))?,
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                started_ms: lease_until_ms.saturating_sub(lease_ms),
            },
            payload: reply::opt_bytes(payload).unwrap_or_default(),
            max_attempts: reply::opt_u64(&m)
                .map(|m| u32::try_from(m).unwrap_or(u32::MAX))
                .unwrap_or(1),
            enqueued_at_ms: reply::opt_u64(&e).unwrap_or(0),
            lease_until_ms,
        });
    }
    let batch = FetchBatch {
        jobs,
        paused,
        next_due_in: u64::try_from(next_due).ok().map(Duration::from_millis),
    };
    Ok((batch, more))
}
