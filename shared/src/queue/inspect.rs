//! Inspection: counts per state, pages of jobs, one job, one result. Every call costs in
//! proportion to what it returns (plus the offset of a page), never to the size of the queue.

use std::collections::HashMap;

use redis::Value;

use super::error::QueueError;
use super::job::{JobErrorRecord, JobInfo, JobResult, JobState, QueueCounts};
use super::{Queue, check_id, reply, scripts};

/// The job fields the list script returns, in order.
const LIST_FIELDS: [&str; 13] = [
    "s", "p", "a", "m", "e", "r", "f", "w", "t", "d", "c", "why", "errors",
];

/// The most jobs one page may hold.
pub const MAX_PAGE: usize = 1000;

/// The largest offset a page may start at: `offset + limit` stays an exact integer in the list
/// script (Lua numbers are doubles, exact up to 2^53). No queue holds that many jobs.
pub const MAX_OFFSET: usize = (1 << 53) - 1 - MAX_PAGE;

/// How many wait-list entries [`Queue::wait_position`] searches, from the end fetches take
/// from: a job deeper than this in a backlog has no known position.
pub const POSITION_SCAN_MAX: usize = 10_000;

impl Queue {
    /// The number of jobs per state, from one consistent snapshot. `completed` and
    /// `cancelled` are counters since the queue was created; the others are current sizes.
    pub async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let reply: Value = scripts::COUNTS
            .key(&self.inner.wait)
            .key(&self.inner.scheduled)
            .key(&self.inner.retry)
            .key(&self.inner.active)
            .key(&self.inner.dead)
            .key(&self.inner.stats)
            .key(&self.inner.paused)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let items = reply::array(reply, "counts")?;
        let at = |i: usize| items.get(i).and_then(reply::opt_u64).unwrap_or(0);
        Ok(QueueCounts {
            queued: at(0).saturating_sub(at(7)),
            scheduled: at(1),
            retrying: at(2),
            running: at(3),
            dead: at(4),
            completed: at(5),
            cancelled: at(6),
            paused: at(8) == 1,
        })
    }

    /// Where queued job `id` stands in the wait list: 1 for the next job a fetch takes, 2 for
    /// the one after, and so on (cancelled entries not yet dropped by a fetch count too).
    /// `None` when the id is not among the [`POSITION_SCAN_MAX`] entries nearest the fetch end —
    /// not waiting (scheduled, retrying, running, finished), or deeper in a larger backlog. One
    /// `LPOS` with `MAXLEN`: the cost is bounded by the scan, never by the backlog.
    pub async fn wait_position(&self, id: &str) -> Result<Option<u64>, QueueError> {
        check_id(id)?;
        let pos: i64 = scripts::POSITION
            .key(&self.inner.wait)
            .arg(id)
            .arg(POSITION_SCAN_MAX)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(u64::try_from(pos).ok().filter(|p| *p > 0))
    }

    /// One page of the jobs in `state`, `limit` (at most [`MAX_PAGE`]) from `offset` (a page
    /// beyond [`MAX_OFFSET`] is empty):
    /// queued jobs in the order they will run, scheduled and retrying ones by due time,
    /// running ones by lease expiry, dead, completed and cancelled ones newest first. Results
    /// are not included. Entries that just left the state, cancelled queued jobs and completed
    /// or cancelled jobs whose data expired are skipped, so a page may be shorter than
    /// `limit`. The completed and cancelled indexes keep the newest `completed_index_max`
    /// entries each.
    pub async fn list(
        &self,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<JobInfo>, QueueError> {
        let (index, how) = match state {
            JobState::Queued => (&self.inner.wait, "wait"),
            JobState::Scheduled => (&self.inner.scheduled, "asc"),
            JobState::Retrying => (&self.inner.retry, "asc"),
            JobState::Running => (&self.inner.active, "active"),
            JobState::Dead => (&self.inner.dead, "desc"),
            JobState::Completed => (&self.inner.completed, "list"),
            JobState::Cancelled => (&self.inner.cancelled, "list"),
        };
        let limit = limit.min(MAX_PAGE);
        if limit == 0 || offset > MAX_OFFSET {
            return Ok(Vec::new());
        }
        let reply: Value = scripts::LIST
            .key(index)
            .key(&self.inner.job_prefix)
            .arg(how)
            .arg(offset)
            .arg(limit)
            .arg(state.as_str())
            .invoke_async(&mut self.conn.clone())
            .await?;
        let items = reply::array(reply, "list")?;
        let stride = 2 + LIST_FIELDS.len();
        let mut out = Vec::with_capacity(items.len() / stride);
        let mut it = items.into_iter();
        while let Some(id) = it.next() {
            let id = reply::string(id, "list id")?;
            let score = it.next().as_ref().and_then(reply::opt_int);
            let mut fields = HashMap::with_capacity(LIST_FIELDS.len());
            for name in LIST_FIELDS {
                if let Some(v) = it.next().and_then(reply::opt_bytes) {
                    fields.insert(name.to_owned(), v);
                }
            }
            let mut info = self.job_info(id, fields)?;
            if state == JobState::Running {
                info.lease_until_ms = score.and_then(|s| u64::try_from(s).ok());
            }
            out.push(info);
        }
        Ok(out)
    }

    /// Everything known about one job, its result included; `None` when there is no such job
    /// (never enqueued, removed, or expired after `result_ttl`).
    pub async fn job(&self, id: &str) -> Result<Option<JobInfo>, QueueError> {
        check_id(id)?;
        let mut conn = self.conn.clone();
        let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.job_key(id))
            .query_async(&mut conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut info = self.job_info(id.to_owned(), fields)?;
        if let (JobState::Running, Some(fence)) = (info.state, info.fence) {
            let lease: Option<f64> = redis::cmd("ZSCORE")
                .arg(&self.inner.active)
                .arg(format!("{fence}:{id}"))
                .query_async(&mut conn)
                .await?;
            info.lease_until_ms = lease.map(|ms| ms as u64);
        }
        Ok(Some(info))
    }

    /// The outcome of a finished job — what `complete` stored, or the error that made it
    /// dead, or its cancellation; `None` while the job is not finished, or when it does not
    /// exist (any more: completed and cancelled jobs are kept `result_ttl`).
    pub async fn result(&self, id: &str) -> Result<Option<JobResult>, QueueError> {
        check_id(id)?;
        let values: Vec<Value> = redis::cmd("HMGET")
            .arg(self.job_key(id))
            .arg(&["s", "x", "why", "errors", "a", "d"])
            .query_async(&mut self.conn.clone())
            .await?;
        let mut it = values.into_iter();
        let mut next = || it.next().unwrap_or(Value::Nil);
        let Some(state) = reply::opt_string(next()).and_then(|s| JobState::parse(&s)) else {
            return Ok(None);
        };
        if !state.is_finished() {
            return Ok(None);
        }
        let result = reply::opt_bytes(next());
        let why = reply::opt_string(next());
        let errors = parse_errors(reply::opt_bytes(next()).as_deref());
        let attempts = reply::opt_u64(&next()).unwrap_or(0);
        let finished_at_ms = reply::opt_u64(&next());
        Ok(Some(JobResult {
            state,
            result: if state == JobState::Completed {
                result
            } else {
                None
            },
            error: why.or_else(|| errors.last().map(|e| e.message.clone())),
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            finished_at_ms,
        }))
    }

    /// Builds a [`JobInfo`] from the fields of a job hash.
    fn job_info(
        &self,
        id: String,
        mut fields: HashMap<String, Vec<u8>>,
    ) -> Result<JobInfo, QueueError> {
        let text = |v: &Vec<u8>| String::from_utf8_lossy(v).into_owned();
        let num = |v: &Vec<u8>| std::str::from_utf8(v).ok()?.parse::<u64>().ok();
        let state_name = fields.get("s").map(text).unwrap_or_default();
        let state = JobState::parse(&state_name).ok_or_else(|| {
            QueueError::Protocol(format!("job {id}: unknown state `{state_name}`"))
        })?;
        let get_num = |k: &str| fields.get(k).and_then(num);
        let as_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(JobInfo {
            queue: self.name().to_owned(),
            state,
            attempts: get_num("a").map(as_u32).unwrap_or(0),
            max_attempts: get_num("m").map(as_u32).unwrap_or(1),
            enqueued_at_ms: get_num("e").unwrap_or(0),
            run_at_ms: get_num("r"),
            started_at_ms: get_num("t"),
            finished_at_ms: get_num("d"),
            fence: get_num("f"),
            lease_until_ms: None,
            cancel_requested: fields.contains_key("c"),
            worker: fields.get("w").map(text),
            dead_reason: fields.get("why").map(text),
            errors: parse_errors(fields.get("errors").map(Vec::as_slice)),
            payload: fields.remove("p").unwrap_or_default(),
            result: fields.remove("x"),
            id,
        })
    }
}

/// The error history stored by the scripts (a JSON array); unreadable history is empty.
fn parse_errors(raw: Option<&[u8]>) -> Vec<JobErrorRecord> {
    raw.and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default()
}
