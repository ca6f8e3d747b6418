//! The embedded migrations, applied and reverted under sqlx's migration lock.
//!
//! Concurrency: sqlx's Postgres migrator (`sqlx-postgres` 0.8, `migrate.rs`) takes a session-level
//! `pg_advisory_lock` keyed by the database name around a whole run (and around `undo`), and
//! applies each migration and its `_sqlx_migrations` row in one transaction. Many workers starting
//! at once therefore queue on the lock, and each later one finds the migrations already recorded:
//! every migration is applied exactly once. We rely on that lock rather than taking another.
//!
//! We do take the *same* lock once more around the run, on the same session (advisory locks are
//! re-entrant per session), so that listing `_sqlx_migrations` before and after the run sees no
//! other migrator in between: the difference is exactly what this call applied. The session is a
//! connection detached from the pool and closed afterwards: sqlx does not release its lock when a
//! migration fails, and closing the session is what guarantees the lock never outlives the call.

use std::collections::BTreeSet;

use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Connection, PgConnection, PgPool};

use super::DbError;

/// Every migration of `migrations/`, embedded at compile time (`shared/build.rs` rebuilds the
/// crate when that directory changes).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// One migration, as reported by [`migrate`], [`revert_one`] and [`applied_migrations`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationInfo {
    /// The number its file name starts with (`0002_…` → 2).
    pub version: i64,
    /// The rest of its file name, in words (`extend provider file uploads`).
    pub description: String,
}

impl MigrationInfo {
    fn of(version: i64) -> Self {
        let description = MIGRATOR
            .iter()
            .find(|m| m.version == version)
            .map(|m| m.description.to_string())
            .unwrap_or_else(|| "(not in this build)".to_owned());
        Self {
            version,
            description,
        }
    }
}

impl std::fmt::Display for MigrationInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04} {}", self.version, self.description)
    }
}

/// Applies every pending migration; returns those this call applied, oldest first (empty when the
/// database was up to date, e.g. because another process got there first).
pub async fn migrate(pool: &PgPool) -> Result<Vec<MigrationInfo>, DbError> {
    let mut conn = migration_session(pool).await?;
    let outcome = migrate_locked(&mut conn).await;
    // Closing the session releases the advisory lock even if a migration failed half-way.
    let _ = conn.close().await;
    outcome
}

async fn migrate_locked(conn: &mut PgConnection) -> Result<Vec<MigrationInfo>, DbError> {
    conn.lock().await?;
    conn.ensure_migrations_table().await?;
    let before = applied_versions(conn).await?;
    MIGRATOR.run(&mut *conn).await?;
    let after = applied_versions(conn).await?;
    conn.unlock().await?;
    Ok(after
        .difference(&before)
        .map(|v| MigrationInfo::of(*v))
        .collect())
}

/// Reverts the most recently applied migration; returns it, or `None` when none is applied.
pub async fn revert_one(pool: &PgPool) -> Result<Option<MigrationInfo>, DbError> {
    let mut conn = migration_session(pool).await?;
    let outcome = revert_locked(&mut conn).await;
    let _ = conn.close().await;
    outcome
}

async fn revert_locked(conn: &mut PgConnection) -> Result<Option<MigrationInfo>, DbError> {
    conn.lock().await?;
    conn.ensure_migrations_table().await?;
    let applied = applied_versions(conn).await?;
    let Some(&latest) = applied.last() else {
        conn.unlock().await?;
        return Ok(None);
    };
    let reversible = MIGRATOR
        .iter()
        .any(|m| m.version == latest && m.migration_type.is_down_migration());
    if !reversible {
        conn.unlock().await?;
        return Err(DbError::Irreversible { version: latest });
    }
    // `undo` reverts every applied migration above the target: the target is the one below.
    let target = applied.range(..latest).next_back().copied().unwrap_or(0);
    MIGRATOR.undo(&mut *conn, target).await?;
    conn.unlock().await?;
    Ok(Some(MigrationInfo::of(latest)))
}

/// The migrations recorded as applied in `_sqlx_migrations`, oldest first.
pub async fn applied_migrations(pool: &PgPool) -> Result<Vec<MigrationInfo>, DbError> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !table_exists {
        return Ok(Vec::new());
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?;
    Ok(versions.into_iter().map(MigrationInfo::of).collect())
}

/// A session of its own for one migrator run: a pool connection detached from the pool, closed
/// by the caller. Routine notices ("relation already exists, skipping") are silenced; warnings
/// raised by a migration still reach the log.
async fn migration_session(pool: &PgPool) -> Result<PgConnection, DbError> {
    let mut conn = pool.acquire().await.map_err(DbError::Connect)?.detach();
    sqlx::query("SET client_min_messages = warning")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

async fn applied_versions(conn: &mut PgConnection) -> Result<BTreeSet<i64>, DbError> {
    Ok(conn
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|m| m.version)
        .collect())
}
