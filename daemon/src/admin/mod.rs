//! The operator's view of the deployment over HTTP, on the daemon's port: the JSON API under
//! `/admin/api/...` ([`api`]) and the `/admin` web page that reads it ([`page`]).
//!
//! Every API request needs `Authorization: Bearer <EXAI_ADMIN_TOKEN>`, the admin's own token,
//! checked in constant time (`App::admin_token_matches`); the clients' `EXAI_WS_TOKEN` is
//! refused like any wrong token, so a client cannot read every job's payload and result, kill or
//! retry. Without the admin token the answer is 401 with a JSON error. A daemon without
//! `EXAI_ADMIN_TOKEN` keeps the API closed: it can kill and retry jobs, so it is never open. The page's HTML, script and style
//! are served without the token: they are static, embedded in the binary, and hold no data; the
//! page sends the token the operator gives it with each API call.
//!
//! Errors are JSON bodies `{"error": "<message>"}` with the status that says what went wrong:
//! 400 bad input (a bad query parameter is named, with what it accepts), 401 no or wrong token,
//! 404 unknown job, queue or endpoint, 409 a job not in a state the action applies to, 415 a
//! bulk action's body that is not `application/json`, 503 Redis or Postgres unavailable (or
//! Postgres not configured).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::App;

pub mod api;
pub mod page;
mod params;

/// Whether `path` belongs to the admin API or page.
pub(crate) fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// Whether `path` belongs to the admin API (`/admin/api` and below).
pub(crate) fn is_api_path(path: &str) -> bool {
    path == "/admin/api" || path.starts_with("/admin/api/")
}

/// The router of everything under `/admin`, with the app as state.
pub(crate) fn router(app: Arc<App>) -> Router {
    let api = api::routes()
        .fallback(|| async { ApiError::not_found("no such admin API endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .nest("/admin/api", api)
        .merge(page::routes())
        .with_state(app)
}

/// Refuses an API request without the admin token (401, JSON error).
async fn require_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.admin_token_digest.is_none() {
        return ApiError::unauthorized(
            "the admin API needs its own token: start the daemon with EXAI_ADMIN_TOKEN set",
        )
        .into_response();
    }
    {
        match bearer(req.headers()) {
            Some(token) if app.admin_token_matches(token) => {}
            Some(_) => {
                tracing::info!("admin API request refused: wrong token");
                return ApiError::unauthorized("wrong token").into_response();
            }
            None => {
                return ApiError::unauthorized(
                    "missing token: send `Authorization: Bearer <EXAI_ADMIN_TOKEN>`",
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// An API error: a status and a message, answered as `{"error": "<message>"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no or wrong token.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 404: no such job, queue or endpoint.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the job is not in a state the action applies to.
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 503: a backing store is unavailable or not configured.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

impl From<exai_shared::queue::QueueError> for ApiError {
    fn from(e: exai_shared::queue::QueueError) -> Self {
        use exai_shared::queue::QueueError;
        match e {
            QueueError::InvalidId(_) => Self::bad_request(e.to_string()),
            QueueError::Redis(ref cause) => {
                tracing::warn!(error = %cause, "admin API: redis command failed");
                Self::unavailable(format!("redis unavailable: {cause}"))
            }
            other => {
                tracing::warn!(error = %other, "admin API: queue error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

impl From<exai_shared::semaphore::SemaphoreError> for ApiError {
    fn from(e: exai_shared::semaphore::SemaphoreError) -> Self {
        use exai_shared::semaphore::SemaphoreError;
        match e {
            SemaphoreError::Redis(ref cause) => {
                tracing::warn!(error = %cause, "admin API: redis command failed");
                Self::unavailable(format!("redis unavailable: {cause}"))
            }
            other => {
                tracing::warn!(error = %other, "admin API: semaphore error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn only_a_bearer_authorization_yields_a_token() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("abc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn admin_paths_are_the_page_and_everything_below_it() {
        assert!(is_admin_path("/admin"));
        assert!(is_admin_path("/admin/api/queues"));
        assert!(!is_admin_path("/administrator"));
        assert!(!is_admin_path("/health"));
    }
}
