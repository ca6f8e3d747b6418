//! The admin JSON API (`/admin/api/...`). Reads use the queue, semaphore and database
//! inspection of `exai-shared` and answer in the shapes of [`exai_shared::inspect`]; actions
//! (retry a dead job, kill a job, pause and resume a queue) go through the queue API.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET queues` | [`QueuesReport`]: counts per state of every queue, and whether it is paused |
//! | `GET semaphores` | [`SemaphoresReport`]: limit, permits in use and live leases of each |
//! | `GET jobs/{id}` | `{"job": JobInfo}`, 404 when no queue holds the job |
//! | `GET queues/{queue}/jobs?state=S&limit=N&offset=M` | one page of the jobs in state `S` (`limit` 0 to 1000, `offset` 0 to 2^53 - 1001, else 400) |
//! | `POST jobs/{id}/retry` | a dead job back to `queued` with a fresh attempt budget |
//! | `POST jobs/{id}/kill` | cancels the job: a waiting one at once, a running one is signalled |
//! | `POST queues/{queue}/pause`, `.../resume` | workers stop (resume) taking jobs from it |
//! | `GET storage` | `provider_file_uploads` rows per `upload_status`; 503 without Postgres |
//! | `GET cleanup` | `{"report": <the last cleanup report> or null}` |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, http::StatusCode};
use exai_shared::cleanup_report::{self, CleanupReportError};
use exai_shared::inspect::{QueuesReport, SemaphoresReport, find_job, queue_named};
use exai_shared::keys::Keys;
use exai_shared::queue::{CancelOutcome, JobState, MAX_OFFSET, MAX_PAGE, Queue};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::app::App;

/// The page size when a listing names none.
pub const DEFAULT_PAGE: usize = 50;

/// The API's routes, relative to `/admin/api`.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/queues", get(queues))
        .route("/semaphores", get(semaphores))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/retry", post(retry))
        .route("/jobs/{id}/kill", post(kill))
        .route("/queues/{queue}/jobs", get(list))
        .route("/queues/{queue}/pause", post(pause))
        .route("/queues/{queue}/resume", post(resume))
        .route("/storage", get(storage))
        .route("/cleanup", get(cleanup))
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
async fn queues(State(app): State<Arc<App>>) -> ApiResult<Json<QueuesReport>> {
    Ok(Json(QueuesReport::collect(&app.queues).await?))
}

/// `GET /admin/api/semaphores`.
async fn semaphores(State(app): State<Arc<App>>) -> ApiResult<Json<SemaphoresReport>> {
    Ok(Json(SemaphoresReport::collect(&app.semaphores).await?))
}

/// `GET /admin/api/jobs/{id}`.
async fn job(State(app): State<Arc<App>>, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = param(id)?;
    match find_job(&app.queues, &id).await? {
        Some(job) => Ok(Json(json!({ "job": job }))),
        None => Err(ApiError::not_found(format!("no job `{id}`"))),
    }
}

/// The query of a job listing.
#[derive(Debug, Deserialize)]
struct ListParams {
    /// The state to list (required).
    state: Option<String>,
    /// Page size, at most [`MAX_PAGE`] ([`DEFAULT_PAGE`] when absent).
    limit: Option<usize>,
    /// Jobs to skip, at most [`MAX_OFFSET`].
    offset: Option<usize>,
}

/// `GET /admin/api/queues/{queue}/jobs?state=S&limit=N&offset=M`.
async fn list(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult {
    let name = param(name)?;
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(format!(
            "{} (`limit` is 0 to {MAX_PAGE}, `offset` 0 to {MAX_OFFSET})",
            e.body_text()
        ))
    })?;
    let q = queue(&app, &name)?;
    let states = || {
        JobState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let state = match params.state.as_deref() {
        None => {
            return Err(ApiError::bad_request(format!(
                "missing `state` (one of: {})",
                states()
            )));
        }
        Some(s) => JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!("unknown state `{s}` (one of: {})", states()))
        })?,
    };
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "`limit` is 0 to {MAX_PAGE} (got {limit})"
        )));
    }
    let offset = params.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::bad_request(format!(
            "`offset` is 0 to {MAX_OFFSET} (got {offset})"
        )));
    }
    let jobs = q.list(state, offset, limit).await?;
    Ok(Json(json!({
        "queue": q.name(),
        "state": state,
        "offset": offset,
        "limit": limit,
        "jobs": jobs,
    })))
}

/// `POST /admin/api/jobs/{id}/retry`: a dead job back to its queue.
async fn retry(State(app): State<Arc<App>>, id: Result<Path<String>, PathRejection>) -> ApiResult {
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
async fn kill(State(app): State<Arc<App>>, id: Result<Path<String>, PathRejection>) -> ApiResult {
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
) -> ApiResult {
    let q = queue(&app, &param(name)?)?;
    q.pause().await?;
    tracing::info!(queue = q.name(), "admin: queue paused");
    Ok(Json(json!({ "queue": q.name(), "paused": true })))
}

/// `POST /admin/api/queues/{queue}/resume`.
async fn resume(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let q = queue(&app, &param(name)?)?;
    q.resume().await?;
    tracing::info!(queue = q.name(), "admin: queue resumed");
    Ok(Json(json!({ "queue": q.name(), "paused": false })))
}

/// `GET /admin/api/storage`: `{"statuses": {"<upload_status>": n, ...}, "total": n}`.
async fn storage(State(app): State<Arc<App>>) -> ApiResult {
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
async fn cleanup(State(app): State<Arc<App>>) -> ApiResult {
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
