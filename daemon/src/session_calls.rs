//! A session's calls that may still be unfinished, counted in Redis so the cap
//! (`EXAI_SESSION_MAX_QUEUED`) holds over all the session's connections, across disconnects
//! and across daemons.
//!
//! The set holds job ids (score: when each was enqueued). It is never trusted alone: when it
//! reaches the cap, every id in it is checked against the queue and the finished or vanished
//! ones are removed, so a job that ended any way at all (completed, dead, cancelled, expired,
//! its worker killed and the job rescued to an end) stops counting. Admission adds first and
//! counts after, so concurrent admissions can only refuse too much, never admit too many.

use exai_shared::keys::Keys;
use redis::AsyncCommands;

use crate::app::{App, unix_ms};

/// How long a session's set outlives its last admission. Its jobs end well before (their
/// deadline is `EXAI_WS_CALL_TIMEOUT_SECS`), so an expired set only forgets finished ids.
const SET_TTL_SECS: i64 = 24 * 3600;

/// Counts `job_id` among `session`'s unfinished calls if there is room under `max`; `false`
/// (and nothing counted) when the session already has `max` unfinished calls.
pub(crate) async fn admit(
    app: &App,
    session: &str,
    job_id: &str,
    max: usize,
) -> redis::RedisResult<bool> {
    let key = Keys::new(app.config.redis.prefix.clone()).session_calls(session);
    let mut redis = app.redis.clone();
    let (count,): (usize,) = redis::pipe()
        .zadd(&key, job_id, unix_ms())
        .ignore()
        .expire(&key, SET_TTL_SECS)
        .ignore()
        .zcard(&key)
        .query_async(&mut redis)
        .await?;
    if count <= max {
        return Ok(true);
    }
    // At the cap: forget the calls that have ended, then count again.
    let members: Vec<String> = redis.zrange(&key, 0, -1).await?;
    let mut ended = Vec::new();
    for member in members.iter().filter(|m| m.as_str() != job_id) {
        let live = match app.tool_calls.job(member).await {
            Ok(Some(info)) => !info.state.is_finished(),
            Ok(None) => false,
            // Unknown: keep counting it.
            Err(_) => true,
        };
        if !live {
            ended.push(member.clone());
        }
    }
    if !ended.is_empty() {
        let _: usize = redis.zrem(&key, &ended).await?;
    }
    let count: usize = redis.zcard(&key).await?;
    if count <= max {
        return Ok(true);
    }
    let _: usize = redis.zrem(&key, job_id).await?;
    Ok(false)
}

/// Stops counting `job_id` (its enqueue failed, or it has ended).
pub(crate) async fn forget(app: &App, session: &str, job_id: &str) {
    let key = Keys::new(app.config.redis.prefix.clone()).session_calls(session);
    let mut redis = app.redis.clone();
    if let Err(e) = redis.zrem::<_, _, usize>(&key, job_id).await {
        tracing::debug!(error = %e, job_id, "could not forget a session's call");
    }
}
