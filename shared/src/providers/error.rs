//! [`ProviderError`]: what went wrong talking to Moonshot, GLM or Supabase Storage, classified
//! once, where the response is read, into **transient** (worth another attempt, perhaps after a
//! wait the other side named) or **permanent** (no attempt can succeed).
//!
//! The classification follows `reference/provider-apis.md`:
//!
//! | what | kind |
//! |---|---|
//! | timeout, connection refused/reset, a body cut short | transient |
//! | HTTP 5xx (Moonshot `server_error`, `server_unavailable`; Supabase `InternalError`, gateway 502-504) | transient |
//! | Moonshot 429 `rate_limit_reached_error` "…please try again after N seconds" | transient, after N s |
//! | Moonshot 429 `engine_overloaded_error` (and any 429 with `Retry-After`) | transient (after the header's wait, if any) |
//! | Moonshot 429 `exceeded_current_quota_error`, or a TPD limit (resets tomorrow) | permanent |
//! | Moonshot 400/401/403/404 | permanent |
//! | Supabase HTTP 400 whose body `statusCode` is "4xx" (403 `AccessDenied`, 404, 409, 413, …) | permanent |
//! | Supabase HTTP 429 (`too_many_connections`) | transient |
//!
//! [`ProviderError::into_job_error`] maps the kind onto [`JobError`], whose variant is the queue's
//! retry policy.
//!
//! Every message and code is passed through [`redact`] when the error is built, so text from the
//! other side (an error body that echoes a key or a bearer value) reaches neither a client nor a
//! job record with a secret in it.

use std::time::Duration;

use crate::jobs::JobError;
use crate::redact::redact;

/// Whether another attempt can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth another attempt; not before `retry_after` when the other side named a wait.
    Transient {
        /// The wait the provider asked for (a Moonshot message or a `Retry-After` header).
        retry_after: Option<Duration>,
    },
    /// No attempt can succeed (auth, bad request, quota, missing configuration).
    Permanent,
}

/// A failed provider call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider} {operation}: {message}")]
pub struct ProviderError {
    /// `moonshot`, `glm` or `supabase`.
    pub provider: &'static str,
    /// What was being done (`upload`, `chat`, `push`, …).
    pub operation: &'static str,
    /// Transient or permanent.
    pub kind: ErrorKind,
    /// The HTTP status, when a response arrived. For Supabase's HTTP 400 envelopes this is the
    /// *real* status from the body's `statusCode` (e.g. 403, 404).
    pub status: Option<u16>,
    /// The provider's error type or code (`rate_limit_reached_error`, `NoSuchBucket`, …).
    pub code: Option<String>,
    /// A one-line description, without secrets.
    pub message: String,
}

impl ProviderError {
    /// A transient error without a response (timeout, connection).
    pub fn transient(
        provider: &'static str,
        operation: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            operation,
            kind: ErrorKind::Transient { retry_after: None },
            status: None,
            code: None,
            message: redact(&message.into()),
        }
    }

    /// A permanent error without a response (bad input, missing configuration).
    pub fn permanent(
        provider: &'static str,
        operation: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            operation,
            kind: ErrorKind::Permanent,
            status: None,
            code: None,
            message: redact(&message.into()),
        }
    }

    /// The error of a `reqwest` failure before or while reading a response: timeouts,
    /// connection errors and cut bodies are transient; a request that could not even be built
    /// is permanent.
    pub fn from_reqwest(
        provider: &'static str,
        operation: &'static str,
        e: &reqwest::Error,
    ) -> Self {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else if e.is_body() || e.is_decode() {
            "response body failed"
        } else if e.is_request() {
            "request failed"
        } else {
            "HTTP error"
        };
        let message = format!("{what}: {}", crate::error_chain(e));
        if e.is_builder() {
            Self::permanent(provider, operation, message)
        } else {
            Self::transient(provider, operation, message)
        }
    }

    /// Whether another attempt can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient { .. })
    }

    /// Whether the provider said the thing asked for does not exist (HTTP 404, or Supabase's
    /// `statusCode` "404").
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }

    /// Whether Supabase said the bucket does not exist.
    pub fn is_no_such_bucket(&self) -> bool {
        self.code.as_deref() == Some("NoSuchBucket")
            || (self.status == Some(404) && self.message.contains("Bucket not found"))
    }

    /// Whether the provider said it is congested, the signal adaptive concurrency lowers the
    /// effective limit on: Moonshot 429 `rate_limit_reached_error` for concurrency or RPM (not
    /// TPM/TPD, which are token budgets) and 429 `engine_overloaded_error` (treated as congestion,
    /// inferred per provider-limits.md §1.4); GLM 429 codes 1302 (concurrency), 1303 (frequency)
    /// and 1305 (rate limit / overload). Quota and balance errors (`exceeded_current_quota_error`,
    /// GLM 1113) are not congestion.
    pub fn is_congestion(&self) -> bool {
        if self.status != Some(429) {
            return false;
        }
        match self.code.as_deref() {
            Some("engine_overloaded_error") => true,
            Some("rate_limit_reached_error") => {
                let m = self.message.to_ascii_lowercase();
                m.contains("concurrency") || m.contains("rpm") || m.contains("max request")
            }
            Some("1302" | "1303" | "1305") => true,
            _ => false,
        }
    }

    /// The wait the provider named, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            ErrorKind::Transient { retry_after } => retry_after,
            ErrorKind::Permanent => None,
        }
    }

    /// The [`JobError`] that makes the queue do the right thing: `RetryAfter` for a named wait,
    /// `Transient` for the backoff, `Permanent` for dead.
    pub fn into_job_error(self) -> JobError {
        let message = redact(&self.to_string());
        match self.kind {
            ErrorKind::Transient {
                retry_after: Some(after),
            } => JobError::RetryAfter { message, after },
            ErrorKind::Transient { retry_after: None } => JobError::Transient(message),
            ErrorKind::Permanent => JobError::Permanent(message),
        }
    }
}

impl From<ProviderError> for JobError {
    fn from(e: ProviderError) -> Self {
        e.into_job_error()
    }
}

/// The most bytes of an error body kept in a message.
const MAX_BODY_IN_MESSAGE: usize = 300;

/// A body shortened for a log line or an error message (on a character boundary).
pub(crate) fn snippet(body: &str) -> String {
    let body = body.trim();
    if body.len() <= MAX_BODY_IN_MESSAGE {
        return body.to_owned();
    }
    let mut end = MAX_BODY_IN_MESSAGE;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &body[..end])
}

/// The seconds of a `Retry-After` header (delta-seconds only; an HTTP date is ignored).
pub(crate) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_seconds(raw.trim())
}

fn parse_seconds(raw: &str) -> Option<Duration> {
    let secs: f64 = raw.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// The wait a Moonshot rate-limit message names: "…please try again after 3 seconds".
pub fn moonshot_named_wait(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    let at = lower.find("try again after")? + "try again after".len();
    let rest = lower[at..].trim_start();
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let value = parse_seconds(&number)?;
    let unit = rest[number.len()..].trim_start();
    if unit.starts_with("ms") || unit.starts_with("milli") {
        Some(value / 1000)
    } else if unit.starts_with("min") {
        Some(value * 60)
    } else {
        Some(value)
    }
}

/// Classifies a non-success Moonshot (or OpenAI-compatible) response:
/// `{"error":{"type","message"}}` with the HTTP status.
pub(crate) fn classify_openai(
    provider: &'static str,
    operation: &'static str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> ProviderError {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let code = error
        .and_then(|e| e.get("type").or_else(|| e.get("code")))
        .and_then(|t| match t {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| snippet(body));
    let header_wait = retry_after_header(headers);
    let kind = match status {
        429 => match code.as_deref() {
            Some("exceeded_current_quota_error") => ErrorKind::Permanent,
            // A daily token limit resets tomorrow: no retry within a job's life helps.
            _ if message.contains("TPD") => ErrorKind::Permanent,
            _ => ErrorKind::Transient {
                retry_after: moonshot_named_wait(&message).or(header_wait),
            },
        },
        // 499: the server saw the client go away; 408: request timeout.
        408 | 499 => ErrorKind::Transient {
            retry_after: header_wait,
        },
        s if s >= 500 => ErrorKind::Transient {
            retry_after: header_wait,
        },
        _ => ErrorKind::Permanent,
    };
    ProviderError {
        provider,
        operation,
        kind,
        status: Some(status),
        code: code.map(|c| redact(&c)),
        message: redact(&format!("HTTP {status}: {message}")),
    }
}

/// Classifies a non-success Supabase Storage response. Handled errors arrive as HTTP 400 with
/// the real status in the body's `statusCode` string; 500 stays 500; the gateway answers
/// 401/502/503/504 with `{"message"}`; a database slowdown is HTTP 429.
pub(crate) fn classify_supabase(
    operation: &'static str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> ProviderError {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    };
    let real_status = field("statusCode")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(status);
    let code = field("code").or_else(|| field("error"));
    let message = field("message").unwrap_or_else(|| snippet(body));
    let header_wait = retry_after_header(headers);
    let kind = if status == 429 || real_status == 429 || status >= 500 || real_status >= 500 {
        ErrorKind::Transient {
            retry_after: header_wait,
        }
    } else if real_status == 408 {
        ErrorKind::Transient { retry_after: None }
    } else {
        ErrorKind::Permanent
    };
    let code_part = code.as_deref().map(|c| format!(" {c}")).unwrap_or_default();
    ProviderError {
        provider: "supabase",
        operation,
        kind,
        status: Some(real_status),
        code: code.map(|c| redact(&c)),
        message: redact(&format!(
            "HTTP {status} (status {real_status}{code_part}): {message}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    fn moonshot(status: u16, kind: &str, message: &str) -> ProviderError {
        let body = serde_json::json!({"error": {"type": kind, "message": message}}).to_string();
        classify_openai("moonshot", "chat", status, &HeaderMap::new(), &body)
    }

    #[test]
    fn a_rate_limit_waits_what_its_message_names() {
        let e = moonshot(
            429,
            "rate_limit_reached_error",
            "Your account org<ak> request reached organization max RPM: 3, please try again after 7 seconds",
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(matches!(
            e.clone().into_job_error(),
            JobError::RetryAfter { after, .. } if after == Duration::from_secs(7)
        ));
        assert_eq!(e.code.as_deref(), Some("rate_limit_reached_error"));
        assert_eq!(
            moonshot_named_wait("please try again after 1.5 seconds"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(moonshot_named_wait("no wait here"), None);
    }

    #[test]
    fn congestion_is_concurrency_rpm_and_overload_not_quota_or_tokens() {
        let congested = [
            moonshot(
                429,
                "rate_limit_reached_error",
                "Your account org-x<ak-y> request reached max organization concurrency: 1, please try again after 1 seconds",
            ),
            moonshot(
                429,
                "rate_limit_reached_error",
                "Your account org-x<ak-y> request reached organization max RPM: 3, please try again after 1 seconds",
            ),
            moonshot(
                429,
                "engine_overloaded_error",
                "The engine is currently overloaded, please try again later",
            ),
        ];
        for e in congested {
            assert!(e.is_congestion(), "{e}");
        }
        let not = [
            moonshot(
                429,
                "exceeded_current_quota_error",
                "suspended due to insufficient balance",
            ),
            moonshot(403, "exceeded_current_quota_error", "not active"),
            moonshot(
                429,
                "rate_limit_reached_error",
                "request reached project TPM rate limit, current: 1410, limit: 100",
            ),
            moonshot(
                429,
                "rate_limit_reached_error",
                "request reached organization TPD rate limit, current: 1526210, limit: 1500000",
            ),
            moonshot(500, "server_error", "boom"),
        ];
        for e in not {
            assert!(!e.is_congestion(), "{e}");
        }
        let glm = |code: &str, message: &str| {
            let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
            classify_openai("glm", "chat", 429, &HeaderMap::new(), &body)
        };
        assert!(
            glm(
                "1302",
                "High concurrency usage of this API, please reduce concurrency"
            )
            .is_congestion()
        );
        assert!(glm("1305", "The API has triggered a rate limit.").is_congestion());
        assert!(
            !glm(
                "1113",
                "Insufficient balance or no resource package. Please recharge."
            )
            .is_congestion()
        );
    }

    #[test]
    fn quota_and_client_errors_are_permanent_overload_and_5xx_transient() {
        let quota = moonshot(
            429,
            "exceeded_current_quota_error",
            "You exceeded your current token quota",
        );
        assert_eq!(quota.kind, ErrorKind::Permanent);
        let tpd = moonshot(
            429,
            "rate_limit_reached_error",
            "request reached organization TPD rate limit, current:1, limit:1",
        );
        assert_eq!(tpd.kind, ErrorKind::Permanent);
        let overloaded = moonshot(429, "engine_overloaded_error", "overloaded");
        assert!(overloaded.is_congestion());
        assert_eq!(overloaded.kind, ErrorKind::Transient { retry_after: None });
        for status in [400, 401, 403, 404] {
            assert_eq!(moonshot(status, "x", "y").kind, ErrorKind::Permanent);
        }
        for status in [500, 502, 503, 504] {
            assert!(moonshot(status, "server_error", "y").is_transient());
        }
        assert!(moonshot(404, "resource_not_found_error", "File not found").is_not_found());
    }

    #[test]
    fn a_retry_after_header_is_honoured() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        let e = classify_openai(
            "moonshot",
            "upload",
            429,
            &headers,
            r#"{"error":{"type":"engine_overloaded_error","message":"busy"}}"#,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn supabase_envelopes_use_the_status_in_the_body() {
        let h = HeaderMap::new();
        let denied = classify_supabase(
            "push",
            400,
            &h,
            r#"{"statusCode":"403","error":"Unauthorized","code":"AccessDenied","message":"Invalid Compact JWS"}"#,
        );
        assert_eq!(denied.kind, ErrorKind::Permanent);
        assert_eq!(denied.status, Some(403));
        let bucket = classify_supabase(
            "push",
            400,
            &h,
            r#"{"statusCode":"404","error":"Bucket not found","code":"NoSuchBucket","message":"Bucket not found"}"#,
        );
        assert!(bucket.is_no_such_bucket());
        assert!(bucket.is_not_found());
        let internal = classify_supabase(
            "push",
            500,
            &h,
            r#"{"statusCode":"500","error":"InternalError","code":"InternalError","message":"Internal server error"}"#,
        );
        assert!(internal.is_transient());
        let gateway = classify_supabase("push", 503, &h, r#"{"message":"unavailable"}"#);
        assert!(gateway.is_transient());
        let slow = classify_supabase("push", 429, &h, r#"{"message":"too_many_connections"}"#);
        assert!(slow.is_transient());
    }
}
