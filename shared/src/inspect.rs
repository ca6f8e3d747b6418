//! The operator views of a deployment, as the CLI (`exai-worker queue stats --json`, `sem
//! --json`), the daemon's `/admin/api/...` and the `/admin` page all print them: one set of
//! types, so the three can never disagree on a JSON shape.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::queue::{self, JobInfo, Queue, QueueError};
use crate::semaphore::{SemaphoreError, SemaphoreState, Semaphores};

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

/// `{"semaphores":{"<name>":{"limit":n,"in_use":n,"holders":[...]}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SemaphoresReport {
    /// Each semaphore by name.
    pub semaphores: BTreeMap<String, SemaphoreReport>,
}

/// One semaphore: its limit and its live leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SemaphoreReport {
    /// The effective limit (`null` when the name has none).
    pub limit: Option<u32>,
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
            json!({"semaphores": {"kimi": {"limit": 6, "in_use": 1, "holders": [
                {"lease": "t", "holder": "w/1", "job_id": "j", "expires_in_ms": 900}]}}})
        );
    }
}
