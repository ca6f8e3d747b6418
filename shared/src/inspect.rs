//! The operator views of a deployment, as the CLI (`exai-worker queue stats --json`, `queue
//! history --json`, `sem --json`), the daemon's `/admin/api/...` and the `/admin` page all
//! print them: one set of types, so the three can never disagree on a JSON shape.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::queue::history::{Histogram, MinuteHistory};
use crate::queue::{self, JobInfo, Queue, QueueError};
use crate::semaphore::{SemaphoreError, SemaphoreState, Semaphores};
use crate::worker_registry::WorkerRegistry;

/// A Unix time in milliseconds as RFC 3339 UTC (to the second when it is a whole second, else
/// to the millisecond); `None` for a time chrono cannot represent.
pub fn rfc3339_ms(ms: u64) -> Option<String> {
    let t = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)?;
    let format = if ms.is_multiple_of(1000) {
        chrono::SecondsFormat::Secs
    } else {
        chrono::SecondsFormat::Millis
    };
    Some(t.to_rfc3339_opts(format, true))
}

/// `{"queue":..,"minutes":n,"history":[..]}`: a queue's last minutes, oldest first, one entry
/// per minute (see [`crate::queue::history`] for what each number counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryReport {
    /// The queue.
    pub queue: String,
    /// How many minutes (entries) the report holds.
    pub minutes: u32,
    /// One entry per minute, oldest first, the current (unfinished) minute last.
    pub history: Vec<HistoryEntry>,
}

/// One minute of a [`HistoryReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// When the minute starts, RFC 3339 UTC (`2026-12-07T15:48:00Z`).
    pub minute: String,
    /// The same, in Unix seconds.
    pub ts: u64,
    /// Attempts that completed.
    pub completed: u64,
    /// Attempts that failed (handler error or expired lease).
    pub failed: u64,
    /// Of the failed attempts, those put back for another attempt.
    pub retried: u64,
    /// Of the failed attempts, those whose job went to the dead set.
    pub dead: u64,
    /// Wait (last due → start) of the attempts that started in the minute.
    pub wait_ms: Percentiles,
    /// Run time (start → end) of the attempts that ended in the minute.
    pub run_ms: Percentiles,
}

/// Two quantiles of a histogram, in whole milliseconds; `null` when nothing was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// The median.
    pub p50: Option<u64>,
    /// The 95th percentile.
    pub p95: Option<u64>,
}

impl From<&Histogram> for Percentiles {
    fn from(h: &Histogram) -> Self {
        Self {
            p50: h.percentile(0.5),
            p95: h.percentile(0.95),
        }
    }
}

impl From<&MinuteHistory> for HistoryEntry {
    fn from(m: &MinuteHistory) -> Self {
        Self {
            minute: rfc3339_ms(m.minute.saturating_mul(1000)).unwrap_or_default(),
            ts: m.minute,
            completed: m.completed,
            failed: m.failed,
            retried: m.retried,
            dead: m.dead,
            wait_ms: (&m.wait).into(),
            run_ms: (&m.run).into(),
        }
    }
}

impl HistoryReport {
    /// The last `minutes` minutes of `q` (1 to
    /// [`MAX_MINUTES`](crate::queue::history::MAX_MINUTES)), one script call.
    pub async fn collect(q: &Queue, minutes: u32) -> Result<Self, QueueError> {
        let history: Vec<HistoryEntry> = q.history(minutes).await?.iter().map(Into::into).collect();
        Ok(Self {
            queue: q.name().to_owned(),
            minutes: u32::try_from(history.len()).unwrap_or(u32::MAX),
            history,
        })
    }
}

/// `{"workers":[..]}`: the live worker processes, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkersReport {
    /// Each live worker process.
    pub workers: Vec<WorkerReport>,
    /// Whether a queue had more running attempts than were read
    /// ([`RUNNING_SCAN_MAX`](crate::queue::RUNNING_SCAN_MAX)): the `running` numbers are then
    /// lower bounds.
    pub running_cut: bool,
}

/// One live worker process, as it registered itself, and its running jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerReport {
    /// The worker id (host, pid, random suffix).
    pub id: String,
    /// The host name.
    pub host: String,
    /// The process id on that host.
    pub pid: u32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Jobs of each queue it runs at once.
    pub concurrency: usize,
    /// Its attempts running now, all queues together.
    pub running: u64,
    /// When it registered, RFC 3339 UTC (Redis clock).
    pub started_at: Option<String>,
    /// Its last renewal, RFC 3339 UTC (Redis clock); it is dropped when a renewal is a
    /// lease late.
    pub last_seen: Option<String>,
}

impl WorkersReport {
    /// The live workers of `registry` and their running attempts in `queues` (one script call
    /// per queue, each reading a bounded part of the active set).
    pub async fn collect(registry: &WorkerRegistry, queues: &[Queue]) -> Result<Self, QueueError> {
        let live = registry.live().await?;
        let mut running: BTreeMap<String, u64> = BTreeMap::new();
        let mut running_cut = false;
        for q in queues {
            let (by_holder, cut) = q.running_by_worker().await?;
            running_cut |= cut;
            // A worker fetches as `<worker id>/<queue>`.
            for (holder, n) in by_holder {
                let worker = holder
                    .rsplit_once('/')
                    .map_or(holder.as_str(), |(w, _)| w)
                    .to_owned();
                *running.entry(worker).or_default() += n;
            }
        }
        Ok(Self {
            workers: live
                .into_iter()
                .map(|w| WorkerReport {
                    running: running.get(&w.id).copied().unwrap_or(0),
                    started_at: w.started_at_ms.and_then(rfc3339_ms),
                    last_seen: w.last_seen_ms.and_then(rfc3339_ms),
                    id: w.id,
                    host: w.host,
                    pid: w.pid,
                    queues: w.queues,
                    concurrency: w.concurrency,
                })
                .collect(),
            running_cut,
        })
    }
}

/// `{"queues":{"<name>":{...}}}`: every queue's counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuesReport {
    /// Counts per queue name.
    pub queues: BTreeMap<String, QueueStats>,
}

/// One queue's counts (`completed` and `cancelled` count since the queue was created; the other
/// numbers are current sizes), as the queue engine reports them.
pub use crate::queue::QueueCounts as QueueStats;

impl QueuesReport {
    /// Reads the counts of `queues`, one round trip each.
    pub async fn collect(queues: &[Queue]) -> Result<Self, QueueError> {
        let mut out = BTreeMap::new();
        for q in queues {
            out.insert(q.name().to_owned(), q.counts().await?);
        }
        Ok(Self { queues: out })
    }
}

/// `{"semaphores":{"<name>":{"limit":n,"effective_limit":n,"in_use":n,"holders":[...]}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SemaphoresReport {
    /// Each semaphore by name.
    pub semaphores: BTreeMap<String, SemaphoreReport>,
}

/// One semaphore: its limit and its live leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SemaphoreReport {
    /// The configured limit, the ceiling of adaptive concurrency (runtime override, else the
    /// configured default; `null` when the name has none).
    pub limit: Option<u32>,
    /// The limit acquisitions use now: adaptive concurrency may hold it below `limit`.
    pub effective_limit: Option<u32>,
    /// Permits taken by live leases.
    pub in_use: usize,
    /// The live leases, earliest expiry first.
    pub holders: Vec<HolderReport>,
}

/// One live lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderReport {
    /// The lease token.
    pub lease: String,
    /// The holder (worker and slot).
    pub holder: Option<String>,
    /// The job the lease is for.
    pub job_id: Option<String>,
    /// Milliseconds until the lease expires unless renewed (Redis clock).
    pub expires_in_ms: u64,
}

impl From<SemaphoreState> for SemaphoreReport {
    fn from(s: SemaphoreState) -> Self {
        Self {
            limit: s.limit,
            effective_limit: s.effective_limit,
            in_use: s.in_use(),
            holders: s
                .holders
                .into_iter()
                .map(|h| HolderReport {
                    lease: h.token,
                    holder: h.holder,
                    job_id: h.job_id,
                    expires_in_ms: h.expires_in_ms,
                })
                .collect(),
        }
    }
}

impl SemaphoresReport {
    /// Reads every known semaphore.
    pub async fn collect(semaphores: &Semaphores) -> Result<Self, SemaphoreError> {
        let states = semaphores.inspect().await?;
        Ok(Self {
            semaphores: states
                .into_iter()
                .map(|s| (s.name.clone(), s.into()))
                .collect(),
        })
    }
}

/// Finds job `id` in whichever of `queues` holds it (job ids are unique across the queues
/// of a deployment: each queue's producer derives them from distinct inputs).
pub async fn find_job(queues: &[Queue], id: &str) -> Result<Option<JobInfo>, QueueError> {
    for q in queues {
        if let Some(job) = q.job(id).await? {
            return Ok(Some(job));
        }
    }
    Ok(None)
}

/// The queue handle named `name` among `queues`, or an error that lists the valid names.
pub fn queue_named<'a>(queues: &'a [Queue], name: &str) -> Result<&'a Queue, String> {
    queues.iter().find(|q| q.name() == name).ok_or_else(|| {
        format!(
            "unknown queue `{name}` (queues: {})",
            queue::ALL_QUEUES.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_serialize_to_the_documented_shapes() {
        let queues = QueuesReport {
            queues: BTreeMap::from([(
                "tool_calls".to_owned(),
                QueueStats {
                    queued: 1,
                    scheduled: 2,
                    running: 3,
                    retrying: 4,
                    dead: 5,
                    completed: 6,
                    cancelled: 7,
                    paused: true,
                    fair_keys: 0,
                },
            )]),
        };
        assert_eq!(
            serde_json::to_value(&queues).unwrap(),
            json!({"queues": {"tool_calls": {"queued": 1, "scheduled": 2, "running": 3,
                "retrying": 4, "dead": 5, "completed": 6, "cancelled": 7, "paused": true}}})
        );
        let sems = SemaphoresReport {
            semaphores: BTreeMap::from([(
                "kimi".to_owned(),
                SemaphoreReport {
                    limit: Some(6),
                    effective_limit: Some(3),
                    in_use: 1,
                    holders: vec![HolderReport {
                        lease: "t".into(),
                        holder: Some("w/1".into()),
                        job_id: Some("j".into()),
                        expires_in_ms: 900,
                    }],
                },
            )]),
        };
        assert_eq!(
            serde_json::to_value(&sems).unwrap(),
            json!({"semaphores": {"kimi": {"limit": 6, "effective_limit": 3, "in_use": 1, "holders": [
                {"lease": "t", "holder": "w/1", "job_id": "j", "expires_in_ms": 900}]}}})
        );
    }

    #[test]
    fn a_history_minute_serializes_to_the_documented_shape() {
        let mut m = MinuteHistory {
            minute: 1_796_658_480,
            completed: 3,
            failed: 2,
            retried: 1,
            dead: 1,
            ..MinuteHistory::default()
        };
        m.run.buckets[Histogram::bucket_of(100)] = 4;
        assert_eq!(
            serde_json::to_value(HistoryEntry::from(&m)).unwrap(),
            json!({"minute": "2026-12-07T15:48:00Z", "ts": 1_796_658_480u64, "completed": 3,
                   "failed": 2, "retried": 1, "dead": 1,
                   "wait_ms": {"p50": null, "p95": null}, "run_ms": {"p50": 96, "p95": 125}})
        );
        assert_eq!(
            rfc3339_ms(1_796_658_480_123).unwrap(),
            "2026-12-07T15:48:00.123Z"
        );
    }
}
