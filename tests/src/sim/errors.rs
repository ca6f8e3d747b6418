//! The providers' error envelopes, and the bodies injected faults answer with.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::faults::Action;
use super::tiers::{AccountIds, Refusal};

/// Which API a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `/v1/...`
    Moonshot,
    /// `/storage/v1/...`
    Supabase,
}

/// The organisation and key ids named in Moonshot's rate-limit messages.
const ACCOUNT: &str = "org-exaisim<ak-exaisim>";
/// The same with the project, as TPM and TPD messages write it.
const ACCOUNT_PROJECT: &str = "org-exaisim / proj-exaisim <ak-exaisim>";

fn json_response(status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Moonshot's `{"error":{"type","message"}}` with HTTP `status`.
pub fn moonshot(status: u16, error_type: &str, message: impl Into<String>) -> Response {
    json_response(
        status,
        json!({"error": {"type": error_type, "message": message.into()}}),
    )
}

/// Moonshot 400 `invalid_request_error`.
pub fn moonshot_invalid(message: impl Into<String>) -> Response {
    moonshot(400, "invalid_request_error", message)
}

/// Moonshot 401 for a missing or wrong key.
pub fn moonshot_unauthenticated() -> Response {
    moonshot(
        401,
        "invalid_authentication_error",
        "Invalid Authentication",
    )
}

/// Supabase Storage's handled error: `{"statusCode":"<status>","error","code","message"}` with
/// HTTP 400, except 500 which stays 500.
pub fn storage(status: u16, error: &str, code: &str, message: impl Into<String>) -> Response {
    let http = if status == 500 { 500 } else { 400 };
    storage_with_http(http, status, error, code, message)
}

fn storage_with_http(
    http: u16,
    status: u16,
    error: &str,
    code: &str,
    message: impl Into<String>,
) -> Response {
    json_response(
        http,
        json!({"statusCode": status.to_string(), "error": error, "code": code, "message": message.into()}),
    )
}

/// Supabase: the object does not exist.
pub fn no_such_key() -> Response {
    storage(404, "not_found", "NoSuchKey", "Object not found")
}

/// Supabase: the bucket does not exist.
pub fn no_such_bucket() -> Response {
    storage(404, "Bucket not found", "NoSuchBucket", "Bucket not found")
}

/// Supabase: the object is larger than the limit.
pub fn entity_too_large() -> Response {
    storage(
        413,
        "Payload too large",
        "EntityTooLarge",
        "The object exceeded the maximum allowed size",
    )
}

/// Supabase: a request body that fails validation.
pub fn storage_invalid(message: impl Into<String>) -> Response {
    storage(400, "Bad Request", "InvalidRequest", message)
}

/// Supabase: the JWT is missing or is not the service key (`AccessDenied` with jose's message).
pub fn storage_unauthenticated(token: Option<&str>) -> Response {
    let message = match token {
        Some(t) if t.split('.').count() == 3 => "signature verification failed",
        _ => "Invalid Compact JWS",
    };
    storage(403, "Unauthorized", "AccessDenied", message)
}

/// The gateway's 401 when `apikey` is required and missing or wrong.
pub fn gateway_no_apikey(present: bool) -> Response {
    let message = if present {
        "Invalid API key"
    } else {
        "No API key found in request"
    };
    json_response(401, json!({ "message": message }))
}

/// The error type Moonshot uses for an HTTP status.
fn moonshot_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "invalid_authentication_error",
        403 => "permission_denied_error",
        404 => "resource_not_found_error",
        429 => "engine_overloaded_error",
        499 => "client_closed_request",
        503 => "server_unavailable",
        _ => "server_error",
    }
}

fn moonshot_message(status: u16) -> &'static str {
    match status {
        400 => "Invalid request: injected by exai-sim",
        401 => "Invalid Authentication",
        403 => "The API you are accessing is not open",
        404 => "Not found the model or Permission denied",
        429 => "The engine is currently overloaded, please try again later",
        503 => "The service is temporarily unavailable",
        _ => "Internal server error",
    }
}

/// The `error`, `code`, `message` of a Supabase handled error with this status.
fn storage_parts(status: u16) -> (&'static str, &'static str, &'static str) {
    match status {
        401 | 403 => (
            "Unauthorized",
            "AccessDenied",
            "new row violates row-level security policy",
        ),
        404 => ("not_found", "NoSuchKey", "Object not found"),
        409 => (
            "Duplicate",
            "KeyAlreadyExists",
            "The resource already exists",
        ),
        413 => (
            "Payload too large",
            "EntityTooLarge",
            "The object exceeded the maximum allowed size",
        ),
        415 => (
            "invalid_mime_type",
            "InvalidMimeType",
            "mime type is not supported",
        ),
        500 => ("InternalError", "InternalError", "Internal server error"),
        _ => ("InvalidRequest", "InvalidRequest", "Invalid request"),
    }
}

/// What the hosted gateway in front of Storage answers when the app is unreachable.
fn gateway_message(status: u16) -> &'static str {
    match status {
        502 => "An invalid response was received from the upstream server",
        503 => "failure to get a peer from the ring-balancer",
        504 => "The upstream server is timing out",
        _ => "An unexpected error occurred",
    }
}

/// The answer of a `fail` fault (or of the `status` down mode) on a `provider` route.
///
/// Moonshot: HTTP `status` with the type of its table. Supabase: 502/503/504 are the
/// gateway's, with HTTP `status` and `{"message"}`; 429 keeps its HTTP status; any other status
/// is a handled error (HTTP 400, or 500) with `statusCode` in the body.
pub fn injected(provider: Provider, action: &Action) -> Response {
    let Action::Fail {
        status,
        error_type,
        message,
        http_status,
        retry_after_secs,
    } = action
    else {
        return rate_limited(provider, action);
    };
    let status = *status;
    let mut resp = match provider {
        Provider::Moonshot => moonshot(
            http_status.unwrap_or(status),
            error_type.as_deref().unwrap_or(moonshot_type(status)),
            message
                .clone()
                .unwrap_or_else(|| moonshot_message(status).to_owned()),
        ),
        Provider::Supabase if matches!(status, 502..=504) => json_response(
            http_status.unwrap_or(status),
            json!({"message": message.as_deref().unwrap_or(gateway_message(status))}),
        ),
        Provider::Supabase if status == 429 => storage_429(http_status.unwrap_or(429)),
        Provider::Supabase => {
            let (error, code, default_message) = storage_parts(status);
            let http = http_status.unwrap_or(if status == 500 { 500 } else { 400 });
            storage_with_http(
                http,
                status,
                error,
                code,
                message.as_deref().unwrap_or(default_message),
            )
        }
    };
    if let Some(secs) = retry_after_secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
    }
    resp
}

fn storage_429(http: u16) -> Response {
    storage_with_http(
        http,
        429,
        "too_many_connections",
        "SlowDown",
        "Too many connections issued to the database",
    )
}

/// The answer of a `rate_limit` fault.
pub fn rate_limited(provider: Provider, action: &Action) -> Response {
    let Action::RateLimit {
        kind,
        retry_after_secs: t,
        retry_after_header,
    } = action
    else {
        return moonshot(500, "server_error", "exai-sim: not a rate limit");
    };
    let mut resp = match provider {
        Provider::Supabase => storage_429(429),
        Provider::Moonshot => {
            let (ty, message) = match kind.as_str() {
                "concurrency" => (
                    "rate_limit_reached_error",
                    format!(
                        "Your account {ACCOUNT} request reached max organization concurrency: 1, please try again after {t} seconds"
                    ),
                ),
                "tpm" => (
                    "rate_limit_reached_error",
                    format!(
                        "Your account {ACCOUNT_PROJECT} request reached organization TPM rate limit, current: 500001, limit: 500000"
                    ),
                ),
                "tpd" => (
                    "rate_limit_reached_error",
                    format!(
                        "Your account {ACCOUNT_PROJECT} request reached organization TPD rate limit, current: 1500001, limit: 1500000"
                    ),
                ),
                "overloaded" => (
                    "engine_overloaded_error",
                    "The engine is currently overloaded, please try again later".to_owned(),
                ),
                "quota" => (
                    "exceeded_current_quota_error",
                    "You exceeded your current token quota: <org-exaisim> 0, please check your account balance".to_owned(),
                ),
                _ => (
                    "rate_limit_reached_error",
                    format!(
                        "Your account {ACCOUNT} request reached organization max RPM: 3, please try again after {t} seconds"
                    ),
                ),
            };
            moonshot(429, ty, message)
        }
    };
    if *retry_after_header {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*t));
    }
    resp
}

/// Moonshot's 429 for a request over one of its account's limits (reference §1.5: captured
/// wording, compact `{"error":{"message","type"}}`, no `Retry-After`).
///
/// Concurrency and RPM name the wait ("please try again after 1 seconds", always 1 in the
/// captures) and have no project; TPM and TPD carry ` / proj-…` and a space before `<ak-…>`, and
/// `current` includes the refused request's own cost (inferred from captures where it exceeds
/// `limit`). The captured TPM message is the *project* variant with a trailing
/// `, see https://platform.moonshot.cn/docs/pricing/limits`; tier limits are organisation limits,
/// so the emulator sends the organisation form the TPD capture shows (inferred for TPM).
pub fn moonshot_tier_limit(ids: &AccountIds, refusal: Refusal) -> Response {
    let AccountIds {
        org, project, ak, ..
    } = ids;
    let message = match refusal {
        Refusal::Concurrency { limit } => format!(
            "Your account {org}<{ak}> request reached max organization concurrency: {limit}, please try again after 1 seconds"
        ),
        Refusal::Rpm { limit } => format!(
            "Your account {org}<{ak}> request reached organization max RPM: {limit}, please try again after 1 seconds"
        ),
        Refusal::Tpm { current, limit } => format!(
            "Your account {org} / {project} <{ak}> request reached organization TPM rate limit, current: {current}, limit: {limit}"
        ),
        Refusal::Tpd { current, limit } => format!(
            "Your account {org} / {project} <{ak}> request reached organization TPD rate limit, current: {current}, limit: {limit}"
        ),
    };
    moonshot(429, "rate_limit_reached_error", message)
}

/// An unknown path: Moonshot's 404, or Fastify's raw 404 for Storage.
pub fn unknown_route(provider: Option<Provider>, method: &str, path: &str) -> Response {
    match provider {
        Some(Provider::Moonshot) => moonshot(
            404,
            "resource_not_found_error",
            format!("Not found: {method} {path}"),
        ),
        Some(Provider::Supabase) => json_response(
            404,
            json!({"message": format!("Route {method}:{path} not found"), "error": "Not Found", "statusCode": 404}),
        ),
        None => json_response(404, json!({"message": "exai-sim: no such route"})),
    }
}
