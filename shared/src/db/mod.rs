//! Postgres access for `provider_file_uploads`, and the migrations.
//!
//! This module is the only code that speaks SQL. Queries are built at run time (no `query!`
//! macros: there is no database at build time) and decoded with `FromRow`.
//!
//! - [`connect`] / [`connect_lazy`]: the pool, with bounded size and acquire timeout.
//! - [`migrate`] / [`revert_one`] and [`MIGRATOR`]: the embedded migrations of `migrations/`.
//! - [`uploads`]: the [`FileUpload`] rows of the upload pipeline and their state machine.
//! - [`push_writes`]: [`PushWrites`], the storage push's row writes, group-committed.
//! - [`DbError`]: what a caller branches on (not found, invalid transition, transient or not).

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
pub use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::config::DatabaseConfig;

mod migrate;
pub mod push_writes;
pub mod uploads;

pub use migrate::{MIGRATOR, MigrationInfo, applied_migrations, migrate, revert_one};
pub use push_writes::PushWrites;
pub use uploads::{
    FileUpload, NewUpload, UnknownStatus, UploadStatus, Upserted, count_by_status, find_by_id,
    find_by_provider_file_id, find_live, insert_or_get, is_file_held, is_sha256_pending,
    list_by_status, list_holding, list_recent, mark_completed, mark_completed_many, mark_deleted,
    mark_deleted_unused, mark_storage_failed, record_reuse, record_storage_attempt,
    record_storage_attempts,
};

/// The most connections one process opens. A worker's database work is a few short statements
/// per job, so this bounds the process's share of Postgres's `max_connections` without making
/// jobs queue for a connection in practice; a job that finds none waits up to
/// [`ACQUIRE_TIMEOUT`].
pub const MAX_CONNECTIONS: u32 = 10;

/// How long a query waits for a free connection (or for a new one to be established) before it
/// fails with [`sqlx::Error::PoolTimedOut`], which [`DbError::is_transient`] reports as
/// transient: the job is retried later instead of hanging.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `application_name` our sessions show in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "exai-queue";

/// What can go wrong talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` is not a usable Postgres URL (the URL itself is never echoed: it may hold a
    /// password).
    #[error("DATABASE_URL is not a valid postgres:// URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// No connection to Postgres could be opened (unreachable, refused, unknown database, bad
    /// credentials).
    #[error("cannot connect to Postgres")]
    Connect(#[source] sqlx::Error),
    /// A query failed: connection, timeout, constraint, decoding.
    #[error("database query failed")]
    Query(#[from] sqlx::Error),
    /// Applying or reverting migrations failed.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The latest applied migration has no down script (or is not in this build), so it cannot
    /// be reverted; nothing was changed.
    #[error("migration {version} cannot be reverted: no down migration in this build")]
    Irreversible {
        /// The migration's version.
        version: i64,
    },
    /// No `provider_file_uploads` row has this id.
    #[error("file upload {id} not found")]
    NotFound {
        /// The id looked for.
        id: Uuid,
    },
    /// The row exists but its status does not allow the requested change (e.g. a `deleted` row
    /// cannot become `completed`); nothing was written.
    #[error("file upload {id} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The row.
        id: Uuid,
        /// Its current status.
        from: UploadStatus,
        /// The status asked for.
        to: UploadStatus,
    },
    /// [`insert_or_get`] was asked to create a row in a status other than `storage_pending` or
    /// `completed`.
    #[error("a new upload row cannot start as {0}")]
    InvalidInitialStatus(UploadStatus),
    /// The provider file id is already recorded, live, for other content (another sha256): the
    /// provider returned one id for two different files. Nothing was written.
    #[error("provider file {provider}/{provider_file_id} is already recorded for other content")]
    ProviderFileIdTaken {
        /// The provider.
        provider: String,
        /// The provider's file id.
        provider_file_id: String,
    },
    /// The process's group-commit writer ([`PushWrites`]) is gone (the process is stopping);
    /// nothing was written by this request, or its answer was lost.
    #[error("the row writer has stopped")]
    WriterGone,
}

/// How long a job waits before it tries again when Postgres is out of reach.
pub const DB_UNAVAILABLE_WAIT: Duration = Duration::from_secs(2);

impl From<DbError> for crate::jobs::JobError {
    /// A database error as a job error. Postgres out of reach puts the job back without
    /// spending an attempt (an outage must not fail work that will succeed once it is over:
    /// uploads and pushes wait and resume); contention (deadlock, serialization) is retried as
    /// an attempt; the rest is final.
    fn from(e: DbError) -> Self {
        use crate::jobs::JobError;
        let message = format!("database: {}", crate::error_chain(&e));
        if e.is_unavailable() {
            JobError::PutBack {
                reason: message,
                after: DB_UNAVAILABLE_WAIT,
            }
        } else if e.is_transient() {
            JobError::Transient(message)
        } else {
            JobError::Permanent(message)
        }
    }
}

impl DbError {
    /// Whether Postgres itself is out of reach (lost or refused connections, pool timeouts, a
    /// server shutting down, starting or out of connections), as opposed to one statement
    /// failing. Jobs wait out an unavailable database without spending attempts.
    pub fn is_unavailable(&self) -> bool {
        let sqlx_error = match self {
            DbError::Query(e) | DbError::Connect(e) => e,
            DbError::WriterGone => return true,
            _ => return false,
        };
        match sqlx_error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08") || matches!(&*code, "53300" | "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        }
    }

    /// Whether retrying later may succeed: lost or refused connections, pool timeouts,
    /// serialization failures and deadlocks, a server shutting down or out of connections.
    /// Everything else (constraint violations, decoding errors, invalid transitions) is permanent.
    pub fn is_transient(&self) -> bool {
        let sqlx_error = match self {
            DbError::Query(e) | DbError::Connect(e) => e,
            DbError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => e,
            DbError::WriterGone => return true,
            _ => return false,
        };
        match sqlx_error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 40001 serialization failure; 40P01 deadlock;
                // 53300 too many connections; 57P01-57P03 admin/crash shutdown, cannot connect now.
                code.starts_with("08")
                    || matches!(
                        &*code,
                        "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03"
                    )
            }),
            _ => false,
        }
    }
}

/// The pool settings shared by [`connect`] and [`connect_lazy`].
fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // Idle connections are closed after a while, and every connection is replaced now and
        // then, so that a failover or a restarted pooler is picked up without a restart.
        .idle_timeout(Some(Duration::from_secs(10 * 60)))
        .max_lifetime(Some(Duration::from_secs(30 * 60)))
}

fn connect_options(config: &DatabaseConfig) -> Result<PgConnectOptions, DbError> {
    let url = config.url.expose_secret();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(DbError::InvalidUrl {
            reason: "it must start with postgres:// or postgresql://".to_owned(),
        });
    }
    // sqlx's parse errors name the faulty part (port, encoding), not the URL.
    let options = PgConnectOptions::from_str(url).map_err(|e| DbError::InvalidUrl {
        reason: e.to_string(),
    })?;
    Ok(options.application_name(APPLICATION_NAME))
}

/// Opens a pool and one connection, so that a wrong URL or an unreachable server is reported
/// now. A server still starting is retried for up to [`ACQUIRE_TIMEOUT`].
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    pool_options()
        .connect_with(connect_options(config)?)
        .await
        .map_err(DbError::Connect)
}

/// Builds a pool without connecting; the first query opens the first connection.
pub fn connect_lazy(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    Ok(pool_options().connect_lazy_with(connect_options(config)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retryable_failures_are_transient() {
        assert!(DbError::Query(sqlx::Error::PoolTimedOut).is_transient());
        assert!(
            DbError::Query(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()))
                .is_transient()
        );
        assert!(!DbError::Query(sqlx::Error::RowNotFound).is_transient());
        assert!(!DbError::Query(sqlx::Error::PoolClosed).is_transient());
        assert!(!DbError::NotFound { id: Uuid::nil() }.is_transient());
    }

    #[tokio::test]
    async fn a_bad_url_is_reported_without_echoing_it() {
        for url in [
            "mysql://user:hunter2@host/db",
            "postgres://user:hunter2@host:notaport/db",
        ] {
            let config = DatabaseConfig {
                url: url.to_owned().into(),
            };
            let err = connect_lazy(&config).unwrap_err();
            assert!(matches!(err, DbError::InvalidUrl { .. }), "{err:?}");
            assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        }
    }
}
