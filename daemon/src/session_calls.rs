//! A session's calls that may still be unfinished, counted in Redis so the cap
//! (`EXAI_SESSION_MAX_QUEUED`) holds over all the session's connections, across disconnects
//! and across daemons.
//!
//! The count is a capped group of the `tool_calls` queue ([`Queue::enqueue_in_group`]): the
//! script that enqueues a call also counts it and refuses it at the cap, in the one round trip
//! the enqueue costs anyway. The group is never trusted alone: at the cap, every job in it is
//! checked in the same script and the finished or vanished ones stop counting, so a job that
//! ended any way at all (completed, dead, cancelled, expired, its worker killed and the job
//! rescued to an end) stops counting. A call that must stage bytes before its enqueue
//! (`kimi_upload_bytes`) is counted first ([`admit`]) and enqueued after, so a refused call
//! stages nothing.
//!
//! [`Queue::enqueue_in_group`]: exai_shared::queue::Queue::enqueue_in_group

use std::time::Duration;

use exai_shared::queue::{Enqueued, Fairness, NewJob, QueueError};

use crate::app::App;

/// How long a session's group outlives its last admission. Its jobs end well before (their
/// deadline is `EXAI_WS_CALL_TIMEOUT_SECS`), so an expired group only forgets finished ids.
const GROUP_TTL: Duration = Duration::from_secs(24 * 3600);

/// Enqueues `job` (its id set) counted among `session`'s unfinished calls: `None` (nothing
/// enqueued) when the session already has `max`. With a fairness key (`EXAI_FAIRNESS_KEY`)
/// the call waits in that key's list and keys take turns (weights from
/// `EXAI_FAIRNESS_WEIGHTS`); without one it waits in the FIFO wait list.
pub(crate) async fn enqueue(
    app: &App,
    session: &str,
    fairness_key: Option<&str>,
    job: &NewJob,
    max: usize,
) -> Result<Option<Enqueued>, QueueError> {
    let weights = &app.config.ws.fairness.weights;
    let fairness = fairness_key.map(|key| Fairness {
        key,
        weight: weights.of(key),
    });
    app.tool_calls
        .enqueue_in_group(job, session, max, GROUP_TTL, fairness)
        .await
}

/// Counts `job_id` among `session`'s unfinished calls before its enqueue, if there is room
/// under `max`; `false` (and nothing counted) when the session already has `max` unfinished
/// calls. The job is then enqueued with a plain enqueue, or [`forget`]-ten.
pub(crate) async fn admit(
    app: &App,
    session: &str,
    job_id: &str,
    max: usize,
) -> Result<bool, QueueError> {
    app.tool_calls
        .admit_to_group(session, job_id, max, GROUP_TTL)
        .await
}

/// Stops counting `job_id` (its enqueue failed, or it has ended).
pub(crate) async fn forget(app: &App, session: &str, job_id: &str) {
    if let Err(e) = app.tool_calls.leave_group(session, job_id).await {
        tracing::debug!(error = %e, job_id, "could not forget a session's call");
    }
}
