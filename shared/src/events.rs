//! Job events: what a worker tells whoever waits on a job (the daemon) while it runs.
//!
//! Events are published on the job's own channel (`P:ev:<job id>`, see
//! [`Keys::job_events`]) so a daemon hears only the jobs it relays. Pub/sub is at-most-once: an
//! event published before anyone subscribed is gone. That is why events only *prompt*: the
//! durable truth is the job's state and stored result in the queue, which a listener reads after
//! it subscribes (a result published before subscription is therefore never lost) and again on
//! every [`JobEvent::Finished`].

use serde::{Deserialize, Serialize};

use crate::keys::Keys;
use crate::redis::RedisHandle;

/// One event of a running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    /// An attempt started on a worker.
    Started {
        /// The attempt number (1-based).
        attempt: u32,
    },
    /// A human-readable progress note (e.g. waiting for provider capacity).
    Progress {
        /// The note.
        message: String,
        /// A short machine-readable state (`running`, `waiting`, …).
        state: String,
    },
    /// A piece of streamed model output.
    Chunk {
        /// The text.
        chunk: String,
    },
    /// The job reached a final state or went back to waiting; read its state and result from
    /// the queue.
    Finished,
}

/// Publishes [`JobEvent`]s. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventPublisher {
    conn: RedisHandle,
    keys: Keys,
}

impl EventPublisher {
    /// A publisher on `conn` for the deployment whose keys are `keys`.
    pub fn new(conn: RedisHandle, keys: Keys) -> Self {
        Self { conn, keys }
    }

    /// The prefix of every job's event channel: the channel of job `id` is this followed by
    /// `id` (what [`Queue::with_job_events`](crate::queue::Queue::with_job_events) takes).
    pub fn channel_prefix(&self) -> String {
        self.keys.job_events("")
    }

    /// Publishes `event` for `job_id`. Best effort: a failure is logged, never returned, since the
    /// durable state in the queue is what listeners rely on.
    pub async fn publish(&self, job_id: &str, event: &JobEvent) {
        let payload = match serde_json::to_string(event) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "job event not serializable");
                return;
            }
        };
        let result: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(self.keys.job_events(job_id))
            .arg(payload)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = result {
            tracing::debug!(job_id, error = %e, "job event not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_a_stable_wire_shape() {
        let e = JobEvent::Chunk { chunk: "hi".into() };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"chunk","chunk":"hi"}"#
        );
        let f: JobEvent = serde_json::from_str(r#"{"event":"finished"}"#).unwrap();
        assert_eq!(f, JobEvent::Finished);
    }
}
