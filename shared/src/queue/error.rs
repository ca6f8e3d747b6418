//! The error type of every queue operation.

/// Why a queue operation could not be carried out.
///
/// Outcomes that are part of the protocol — a lost lease, a duplicate id, a job not found — are
/// not errors: they are variants of each operation's result type.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached or answered with an error.
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    /// A payload or a stored record could not be (de)serialized.
    #[error("job payload serialization failed")]
    Serialization(#[from] serde_json::Error),
    /// Redis answered with a shape this protocol version does not expect (a script from
    /// another version, or keys written by something else).
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// A job id that cannot be used: empty, or longer than [`MAX_ID_LEN`](super::MAX_ID_LEN).
    #[error("invalid job id `{0}`")]
    InvalidId(String),
}
