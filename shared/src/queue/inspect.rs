//! Inspection: counts per state, pages of jobs, one job, one result. Every call costs in
//! proportion to what it returns (plus the offset of a page), never to the size of the queue.

use std::collections::HashMap;

use redis::Value;

use super::error::QueueError;
use super::job::{JobErrorRecord, JobInfo, JobResult, JobState, QueueCounts, QueuePosition};
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

/// The most index entries one [`Queue::search`] reads, all states together.
pub const SEARCH_SCAN_MAX: usize = 10_000;

/// The most payload bytes one [`Queue::search`] reads, all states together: a scan of large
/// payloads stops here rather than hold Redis for long.
pub const SEARCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The most running attempts [`Queue::running_by_worker`] reads.
pub const RUNNING_SCAN_MAX: usize = 10_000;

/// What a [`Queue::search`] found, and how much it read to find it.
#[derive(Debug, Clone, Default)]
pub struct SearchResult {
    /// The job whose id is the text, if there is one (in the state searched, when one was
    /// named), then the jobs whose payload contains it, each state's newest first as
    /// [`Queue::list`] orders them.
    pub jobs: Vec<JobInfo>,
    /// Whether the first job is the one whose id is the text.
    pub by_id: bool,
    /// Index entries read.
    pub scanned: u64,
    /// Whether the scan stopped before the end of the indexes searched (the entry or byte
    /// bound, or enough matches): more matches may exist.
    pub cut: bool,
}

/// How a state's index is read by the list and search scripts.
fn index_of(q: &Queue, state: JobState) -> (&str, &'static str) {
    let i = &q.inner;
    match state {
        JobState::Queued => (&i.wait, "wait"),
        JobState::Scheduled => (&i.scheduled, "asc"),
        JobState::Retrying => (&i.retry, "asc"),
        JobState::Running => (&i.active, "active"),
        JobState::Dead => (&i.dead, "desc"),
        JobState::Completed => (&i.completed, "list"),
        JobState::Cancelled => (&i.cancelled, "list"),
    }
}

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
            .key(&self.inner.fair_ring)
            .key(&self.inner.fair_fresh)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let items = reply::array(reply, "counts")?;
        let at = |i: usize| items.get(i).and_then(reply::opt_u64).unwrap_or(0);
        Ok(QueueCounts {
            queued: (at(0) + at(9)).saturating_sub(at(7)),
            fair_keys: at(10),
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
        Ok(self.position(id).await?.map(|p| p.position))
    }

    /// Where queued job `id` stands, as [`wait_position`](Self::wait_position) says, and for a
    /// job with a fairness key also its place within its key's list and the keys ahead of its
    /// key (each list searched as far as [`POSITION_SCAN_MAX`] entries). Three `LPOS` with
    /// `MAXLEN` at most.
    pub async fn position(&self, id: &str) -> Result<Option<QueuePosition>, QueueError> {
        check_id(id)?;
        let reply: Value = scripts::POSITION
            .key(&self.inner.wait)
            .key(&self.inner.fair_prefix)
            .key(self.job_key(id))
            .arg(id)
            .arg(POSITION_SCAN_MAX)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let items = reply::array(reply, "position")?;
        let at = |i: usize| items.get(i).and_then(reply::opt_int).unwrap_or(-1);
        let Some(position) = u64::try_from(at(0)).ok().filter(|p| *p > 0) else {
            return Ok(None);
        };
        let in_key = u64::try_from(at(1)).ok().filter(|p| *p > 0);
        Ok(Some(QueuePosition {
            position,
            in_key,
            keys_ahead: in_key.and(u64::try_from(at(2)).ok()),
        }))
    }

    /// One page of the jobs in `state`, `limit` (at most [`MAX_PAGE`]) from `offset` (a page
    /// beyond [`MAX_OFFSET`] is empty):
    /// queued jobs in the order the lists are served (the wait list in the order its jobs will
    /// run, then fair share's key lists key by key from the ring's head, each in its own order,
    /// not interleaved as the round-robin runs them), scheduled and retrying ones by due time,
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
        let (index, how) = index_of(self, state);
        let limit = limit.min(MAX_PAGE);
        if limit == 0 || offset > MAX_OFFSET {
            return Ok(Vec::new());
        }
        let reply: Value = scripts::LIST
            .key(index)
            .key(&self.inner.job_prefix)
            .key(&self.inner.fair_prefix)
            .arg(how)
            .arg(offset)
            .arg(limit)
            .arg(state.as_str())
            .invoke_async(&mut self.conn.clone())
            .await?;
        self.parse_jobs(reply::array(reply, "list")?, state)
    }

    /// The jobs of a list or search reply: per job its id, its index score and the
    /// [`LIST_FIELDS`]. A running job's score is its lease expiry.
    fn parse_jobs(&self, items: Vec<Value>, state: JobState) -> Result<Vec<JobInfo>, QueueError> {
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

    /// Searches the queue for `text`: first a job whose id is `text`, then, within a bounded
    /// scan of the index of `state` (or of every state in turn, queued first, when `state` is
    /// `None`), jobs whose payload contains `text` (plain, case-sensitive), up to `limit` jobs
    /// in all (at most [`MAX_PAGE`]). The scan reads at most `scan` index entries (at most
    /// [`SEARCH_SCAN_MAX`]) and [`SEARCH_BYTES_MAX`] payload bytes; the result says how many it
    /// read and whether it stopped before the end.
    pub async fn search(
        &self,
        text: &str,
        state: Option<JobState>,
        scan: usize,
        limit: usize,
    ) -> Result<SearchResult, QueueError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut out = SearchResult::default();
        if check_id(text).is_ok()
            && let Some(job) = self.job(text).await?
            && state.is_none_or(|s| s == job.state)
        {
            out.jobs.push(job);
            out.by_id = true;
        }
        let states: Vec<JobState> = match state {
            Some(s) => vec![s],
            None => JobState::ALL.to_vec(),
        };
        let mut entries = scan.min(SEARCH_SCAN_MAX);
        let mut bytes = SEARCH_BYTES_MAX;
        for state in &states {
            let want = limit.saturating_sub(out.jobs.len());
            if want == 0 || entries == 0 || bytes == 0 {
                // Stopped with indexes left unread.
                out.cut = true;
                break;
            }
            let (index, how) = index_of(self, *state);
            let reply: Value = scripts::SEARCH
                .key(index)
                .key(&self.inner.job_prefix)
                .key(&self.inner.fair_prefix)
                .key(&self.inner.stats)
                .arg(how)
                .arg(entries)
                .arg(state.as_str())
                .arg(text)
                .arg(want)
                .arg(bytes)
                .invoke_async(&mut self.conn.clone())
                .await?;
            let mut items = reply::array(reply, "search")?.into_iter();
            let mut next = || items.next().as_ref().and_then(reply::opt_u64).unwrap_or(0);
            let (scanned, len, read) = (next(), next(), next());
            out.scanned += scanned;
            out.cut = out.cut || scanned < len;
            entries = entries.saturating_sub(usize::try_from(scanned).unwrap_or(usize::MAX));
            bytes = bytes.saturating_sub(usize::try_from(read).unwrap_or(usize::MAX));
            for job in self.parse_jobs(items.collect(), *state)? {
                if !(out.by_id && job.id == out.jobs[0].id) {
                    out.jobs.push(job);
                }
            }
        }
        out.jobs.truncate(limit);
        Ok(out)
    }

    /// The running attempts of the queue per lease holder (`<worker id>/<queue>`, as the
    /// workers fetch), from at most [`RUNNING_SCAN_MAX`] of them; and whether that bound cut
    /// the count short.
    pub async fn running_by_worker(&self) -> Result<(HashMap<String, u64>, bool), QueueError> {
        let reply: Value = scripts::RUNNING
            .key(&self.inner.active)
            .key(&self.inner.job_prefix)
            .arg(RUNNING_SCAN_MAX)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let mut items = reply::array(reply, "running")?.into_iter();
        let read = items.next().as_ref().and_then(reply::opt_u64).unwrap_or(0);
        let total = items.next().as_ref().and_then(reply::opt_u64).unwrap_or(0);
        let mut out = HashMap::new();
        while let (Some(w), Some(n)) = (items.next(), items.next()) {
            if let (Some(w), Some(n)) = (reply::opt_string(w), reply::opt_u64(&n)) {
                out.insert(w, n);
            }
        }
        Ok((out, read < total))
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
