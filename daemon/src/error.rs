//! [`DaemonError`]: why the daemon could not start, or stopped with an error.

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Redis could not be reached at start-up.
    #[error("could not connect to redis")]
    Redis(#[source] redis::RedisError),
    /// The semaphore inspector could not be set up.
    #[error("could not set up the semaphore inspector")]
    Semaphores(#[source] exai_shared::semaphore::SemaphoreError),
    /// `DATABASE_URL` is set but unusable.
    #[error("invalid database configuration")]
    Database(#[source] exai_shared::db::DbError),
    /// The listener failed.
    #[error("the listener failed")]
    Io(#[source] std::io::Error),
    /// `EXAI_WS_TLS_CERT` or `EXAI_WS_TLS_KEY` names a file that is no usable certificate or key.
    #[error("{var}: {message}")]
    Tls {
        /// The variable naming the file.
        var: &'static str,
        /// What is wrong with it.
        message: String,
    },
}
