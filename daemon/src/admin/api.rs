//! The admin JSON API (`/admin/api/...`). Reads use the queue, semaphore and database
//! inspection of `exai-shared` and answer in the shapes of [`exai_shared::inspect`]; actions
//! (retry a dead job, kill a job, pause and resume a queue, bulk retry and delete) go through
//! the queue API. A bad query parameter is a 400 naming it and what it accepts ([`Params`]);
//! `state` defaults to `queued` wherever a state is taken, as in the CLI.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET queues` | [`QueuesReport`]: counts per state of every queue, and whether it is paused |
//! | `GET semaphores` | [`SemaphoresReport`]: limit, permits in use and live leases of each |
//! | `GET workers` | [`WorkersReport`]: the live worker processes (host, pid, queues, concurrency, running jobs, last seen) |
//! | `GET jobs/{id}` | `{"job": JobInfo}`, 404 when no queue holds the job |
//! | `GET queues/{queue}/jobs?state=S&limit=N&offset=M` | one page of the jobs in state `S` (default `queued`; `limit` 0 to 1000, default 50; `offset` 0 to 2^53 - 1001) |
//! | `GET queues/{queue}/history?minutes=N` | [`HistoryReport`]: the last `N` minutes (1 to 1440, default 60), one entry per minute |
//! | `GET queues/{queue}/search?q=T&state=S&scan=N&limit=L` | the job whose id is `T`, then jobs whose payload contains `T`, within a scan of at most `N` index entries (1 to 10000, default 1000) of state `S` (default: every state) |
//! | `POST jobs/{id}/retry` | a dead job back to `queued` with a fresh attempt budget |
//! | `POST jobs/{id}/kill` | cancels the job: a waiting one at once, a running one is signalled |
//! | `POST queues/{queue}/pause`, `.../resume` | workers stop (resume) taking jobs from it |
//! | `POST queues/{queue}/dead/retry` | body `{"ids": [..]}`, or none for every dead job: up to 1000 dead jobs back to `queued`; counts |
//! | `POST queues/{queue}/jobs/delete` | body `{"state": S, "ids": [..]}`, or `{"state": S}` for every job in `S`: up to 1000 jobs deleted; counts |
//! | `GET storage` | `provider_file_uploads` rows per `upload_status`; 503 without Postgres |
//! | `GET cleanup` | `{"report": <the last cleanup report> or null}` |
//! | `GET usage?limit=N` | [`UsageReport`]: the token sums per session, tool and model (at most `N` of each, most recently used first; 1 to 1000, default 50) and their total |
//! | `GET usage?session=S` | `{"session": <S's line> or null}`: one session's token sums |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, http::StatusCode};
use exai_shared::cleanup_report::{self, CleanupReportError};
use exai_shared::inspect::{
    HistoryReport, QueuesReport, SemaphoresReport, WorkersReport, find_job, queue_named,
};
use exai_shared::keys::Keys;
use exai_shared::queue::history::MAX_MINUTES;
use exai_shared::queue::{
    CancelOutcome, JobState, MAX_BULK, MAX_OFFSET, MAX_PAGE, Queue, Removed, SEARCH_SCAN_MAX,
};
use exai_shared::usage::{REPORT_MAX, UsageReport};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::params::{Params, parse_state};
use crate::app::App;

/// The page size when a listing names none.
pub const DEFAULT_PAGE: usize = 50;

/// The minutes of history when a request names none.
pub const DEFAULT_MINUTES: u32 = 60;

/// The index entries a search reads when the request names no `scan`.
pub const DEFAULT_SCAN: usize = 1000;

/// The longest search text.
pub const MAX_SEARCH_TEXT: usize = 256;

/// The API's routes, relative to `/admin/api`.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/queues", get(queues))
        .route("/semaphores", get(semaphores))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/retry", post(retry))
        .route("/jobs/{id}/kill", post(kill))
        .route("/workers", get(workers))
        .route("/queues/{queue}/jobs", get(list))
        .route("/queues/{queue}/history", get(history))
        .route("/queues/{queue}/search", get(search))
        .route("/queues/{queue}/pause", post(pause))
        .route("/queues/{queue}/resume", post(resume))
        .route("/queues/{queue}/dead/retry", post(bulk_retry))
        .route("/queues/{queue}/jobs/delete", post(bulk_delete))
        .route("/storage", get(storage))
        .route("/cleanup", get(cleanup))
        .route("/usage", get(usage))
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// The one path parameter, or a 400 that says what was wrong with it.
fn param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The queue named `name`, or a 404 that lists the queues.
fn queue<'a>(app: &'a App, name: &str) -> Result<&'a Queue, ApiError> {
    queue_named(&app.queues, name).map_err(ApiError::not_found)
}

/// The queue that holds job `id`, and the job's current state; 404 when none does.
async fn locate<'a>(app: &'a App, id: &str) -> Result<(&'a Queue, JobState), ApiError> {
    let job = find_job(&app.queues, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job `{id}`")))?;
    Ok((queue(app, &job.queue)?, job.state))
}

/// `GET /admin/api/queues`.
async fn queues(State(app): State<Arc<App>>, params: Params) -> ApiResult<Json<QueuesReport>> {
    params.only(&[])?;
    Ok(Json(QueuesReport::collect(&app.queues).await?))
}

/// `GET /admin/api/semaphores`.
async fn semaphores(
    State(app): State<Arc<App>>,
    params: Params,
) -> ApiResult<Json<SemaphoresReport>> {
    params.only(&[])?;
    Ok(Json(SemaphoresReport::collect(&app.semaphores).await?))
}

/// `GET /admin/api/workers`.
async fn workers(State(app): State<Arc<App>>, params: Params) -> ApiResult<Json<WorkersReport>> {
    params.only(&[])?;
    Ok(Json(
        WorkersReport::collect(&app.workers, &app.queues).await?,
    ))
}

/// `GET /admin/api/jobs/{id}`.
async fn job(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    params: Params,
) -> ApiResult {
    params.only(&[])?;
    let id = param(id)?;
    match find_job(&app.queues, &id).await? {
        Some(job) => Ok(Json(json!({ "job": job }))),
        None => Err(ApiError::not_found(format!("no job `{id}`"))),
    }
}

/// `GET /admin/api/queues/{queue}/jobs?state=S&limit=N&offset=M`.
async fn list(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    params: Params,
) -> ApiResult {
    let name = param(name)?;
    params.only(&["state", "limit", "offset"])?;
    let q = queue(&app, &name)?;
    let state = params.state(JobState::Queued)?;
    let limit = params.int("limit", 0, MAX_PAGE as u64, DEFAULT_PAGE as u64)? as usize;
    let offset = params.int("offset", 0, MAX_OFFSET as u64, 0)? as usize;
    let jobs = q.list(state, offset, limit).await?;
    Ok(Json(json!({
        "queue": q.name(),
        "state": state,
        "offset": offset,
        "limit": limit,
        "jobs": jobs,
    })))
}

/// `GET /admin/api/queues/{queue}/history?minutes=N`.
async fn history(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    params: Params,
) -> ApiResult<Json<HistoryReport>> {
    let name = param(name)?;
    params.only(&["minutes"])?;
    let q = queue(&app, &name)?;
    let minutes = params.int(
        "minutes",
        1,
        u64::from(MAX_MINUTES),
        u64::from(DEFAULT_MINUTES),
    )?;
    let minutes = u32::try_from(minutes).unwrap_or(MAX_MINUTES);
    Ok(Json(HistoryReport::collect(q, minutes).await?))
}

/// `GET /admin/api/queues/{queue}/search?q=TEXT&state=S&scan=N&limit=L`.
async fn search(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    params: Params,
) -> ApiResult {
    let name = param(name)?;
    params.only(&["q", "state", "scan", "limit"])?;
    let q = queue(&app, &name)?;
    let text = params.text("q", MAX_SEARCH_TEXT)?;
    let state = params.opt_state()?;
    let scan = params.int("scan", 1, SEARCH_SCAN_MAX as u64, DEFAULT_SCAN as u64)? as usize;
    let limit = params.int("limit", 1, MAX_PAGE as u64, DEFAULT_PAGE as u64)? as usize;
    let found = q.search(text, state, scan, limit).await?;
    Ok(Json(json!({
        "queue": q.name(),
        "q": text,
        "state": state,
        "scan": scan,
        "scanned": found.scanned,
        "cut": found.cut,
        "by_id": found.by_id,
        "jobs": found.jobs,
    })))
}

/// The body of a bulk action: which jobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    /// The state the jobs must be in (bulk delete; required there).
    state: Option<String>,
    /// The jobs; absent: every job of the state (at most [`MAX_BULK`] per request).
    ids: Option<Vec<String>>,
}

/// The body of a bulk action: empty (no selection), or JSON with `Content-Type:
/// application/json` — which a cross-site form cannot send without the browser asking first,
/// on top of the token and the `Origin` check every API request passes.
fn bulk_body(headers: &HeaderMap, body: &Bytes) -> Result<BulkBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(BulkBody::default());
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with `Content-Type: application/json`",
        ));
    }
    let parsed: BulkBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid body: {e} (expected {{\"state\": \"<state>\", \"ids\": [\"<job id>\", …]}})"
        ))
    })?;
    if let Some(ids) = &parsed.ids
        && (ids.is_empty() || ids.len() > MAX_BULK)
    {
        return Err(ApiError::bad_request(format!(
            "invalid field `ids`: expected 1 to {MAX_BULK} job ids, got {}",
            ids.len()
        )));
    }
    Ok(parsed)
}

/// The jobs of a bulk action: the ids given, or the first [`MAX_BULK`] of `state` (and whether
/// more may be left).
async fn selection(
    q: &Queue,
    state: JobState,
    ids: Option<Vec<String>>,
) -> Result<(Vec<String>, bool), ApiError> {
    if let Some(ids) = ids {
        return Ok((ids, false));
    }
    let page = q.list(state, 0, MAX_BULK).await?;
    let full = page.len() == MAX_BULK;
    Ok((page.into_iter().map(|j| j.id).collect(), full))
}

/// `POST /admin/api/queues/{queue}/dead/retry`: dead jobs back to their queue, the ids given
/// or every dead job (up to [`MAX_BULK`] per request).
async fn bulk_retry(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    params: Params,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let name = param(name)?;
    params.only(&[])?;
    let q = queue(&app, &name)?;
    let body = bulk_body(&headers, &body)?;
    if let Some(s) = body.state.as_deref()
        && parse_state(s)? != JobState::Dead
    {
        return Err(ApiError::bad_request(format!(
            "invalid field `state`: only dead jobs are retried, got `{s}`"
        )));
    }
    let (ids, more) = selection(q, JobState::Dead, body.ids).await?;
    let done = q.retry_dead_many(&ids).await?;
    let retried = done.iter().filter(|d| **d).count();
    tracing::info!(queue = q.name(), retried, "admin: dead jobs retried");
    Ok(Json(json!({
        "queue": q.name(),
        "retried": retried,
        "skipped": ids.len() - retried,
        "more": more,
        "dead": q.counts().await?.dead,
    })))
}

/// `POST /admin/api/queues/{queue}/jobs/delete`: deletes jobs of one state, the ids given (each
/// only if still in that state) or every job of the state (up to [`MAX_BULK`] per request).
async fn bulk_delete(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    params: Params,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let name = param(name)?;
    params.only(&[])?;
    let q = queue(&app, &name)?;
    let body = bulk_body(&headers, &body)?;
    let Some(state) = body.state.as_deref() else {
        return Err(ApiError::bad_request(format!(
            "missing field `state`: the state of the jobs to delete (one of {})",
            JobState::ALL.map(JobState::as_str).join(", ")
        )));
    };
    let state = parse_state(state)?;
    let (ids, more) = selection(q, state, body.ids).await?;
    let outcomes = q.remove_many(&ids, Some(state)).await?;
    let count = |want: Removed| outcomes.iter().filter(|o| **o == want).count();
    let deleted = count(Removed::Deleted);
    tracing::info!(queue = q.name(), %state, deleted, "admin: jobs deleted");
    Ok(Json(json!({
        "queue": q.name(),
        "state": state,
        "deleted": deleted,
        "other_state": count(Removed::OtherState),
        "not_found": count(Removed::NotFound),
        "more": more,
    })))
}

/// `POST /admin/api/jobs/{id}/retry`: a dead job back to its queue.
async fn retry(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    params: Params,
) -> ApiResult {
    params.only(&[])?;
    let id = param(id)?;
    let (q, state) = locate(&app, &id).await?;
    if state != JobState::Dead {
        return Err(ApiError::conflict(format!(
            "job `{id}` is {state}; only a dead job can be retried"
        )));
    }
    if !q.retry_dead(&id).await? {
        return Err(ApiError::conflict(format!(
            "job `{id}` is no longer dead; only a dead job can be retried"
        )));
    }
    tracing::info!(job_id = %id, queue = q.name(), "admin: dead job retried");
    let job = q.job(&id).await?;
    Ok(Json(json!({ "retried": true, "job": job })))
}

/// `POST /admin/api/jobs/{id}/kill`: cancels a job.
async fn kill(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    params: Params,
) -> ApiResult {
    params.only(&[])?;
    let id = param(id)?;
    let (q, _) = locate(&app, &id).await?;
    let outcome = match q.cancel(&id).await? {
        CancelOutcome::Removed => "cancelled",
        CancelOutcome::Signalled => "cancel_requested",
        CancelOutcome::AlreadyFinished => {
            let state = q
                .job(&id)
                .await?
                .map(|j| j.state.as_str())
                .unwrap_or("gone");
            return Err(ApiError::conflict(format!(
                "job `{id}` has already finished ({state})"
            )));
        }
        CancelOutcome::NotFound => return Err(ApiError::not_found(format!("no job `{id}`"))),
    };
    tracing::info!(job_id = %id, queue = q.name(), outcome, "admin: job killed");
    let job = q.job(&id).await?;
    Ok(Json(json!({ "outcome": outcome, "job": job })))
}

/// `POST /admin/api/queues/{queue}/pause`.
async fn pause(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    params: Params,
) -> ApiResult {
    params.only(&[])?;
    let q = queue(&app, &param(name)?)?;
    q.pause().await?;
    tracing::info!(queue = q.name(), "admin: queue paused");
    Ok(Json(json!({ "queue": q.name(), "paused": true })))
}

/// `POST /admin/api/queues/{queue}/resume`.
async fn resume(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    params: Params,
) -> ApiResult {
    params.only(&[])?;
    let q = queue(&app, &param(name)?)?;
    q.resume().await?;
    tracing::info!(queue = q.name(), "admin: queue resumed");
    Ok(Json(json!({ "queue": q.name(), "paused": false })))
}

/// `GET /admin/api/storage`: `{"statuses": {"<upload_status>": n, ...}, "total": n}`.
async fn storage(State(app): State<Arc<App>>, params: Params) -> ApiResult {
    params.only(&[])?;
    let Some(pool) = &app.db else {
        return Err(ApiError::unavailable(
            "storage status needs Postgres: DATABASE_URL is not configured for the daemon",
        ));
    };
    let statuses: BTreeMap<String, u64> =
        exai_shared::db::count_by_status(pool).await.map_err(|e| {
            tracing::warn!(error = %e, "admin API: database query failed");
            ApiError::unavailable(format!("database unavailable: {e}"))
        })?;
    let total: u64 = statuses.values().sum();
    Ok(Json(json!({ "statuses": statuses, "total": total })))
}

/// `GET /admin/api/cleanup`: the last cleanup report, or `null` when no cleanup has run.
async fn cleanup(State(app): State<Arc<App>>, params: Params) -> ApiResult {
    params.only(&[])?;
    let keys = Keys::new(app.config.redis.prefix.clone());
    let stored = cleanup_report::last_report(&app.redis, &keys)
        .await
        .map_err(|e| match e {
            CleanupReportError::Redis { source, .. } => {
                tracing::warn!(error = %source, "admin API: redis command failed");
                ApiError::unavailable(format!("redis unavailable: {source}"))
            }
            CleanupReportError::Json { source, .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the stored cleanup report is not JSON: {source}"),
            ),
        })?;
    Ok(Json(json!({ "report": stored })))
}

/// `GET /admin/api/usage?limit=N` ([`UsageReport`]) or `GET /admin/api/usage?session=S`
/// (`{"session": line or null}`).
async fn usage(State(app): State<Arc<App>>, params: Params) -> ApiResult {
    params.only(&["session", "limit"])?;
    let unavailable = |e: redis::RedisError| {
        tracing::warn!(error = %e, "admin API: redis command failed");
        ApiError::unavailable(format!("redis unavailable: {e}"))
    };
    if params.get("session").is_some() {
        let session = params.text("session", exai_shared::protocol::MAX_SESSION_ID_LEN)?;
        let line = app.usage.session(session).await.map_err(unavailable)?;
        return Ok(Json(json!({ "session": line })));
    }
    let limit = params.int("limit", 1, REPORT_MAX as u64, DEFAULT_PAGE as u64)? as usize;
    let report: UsageReport = app.usage.report(limit).await.map_err(unavailable)?;
    Ok(Json(json!(report)))
}
