//! `provider_file_uploads`: one row per file uploaded to a provider, and its state machine.
//!
//! A row is **live** when it has a sha256, is not marked deleted and did not fail. At most one
//! live row exists per `(provider, sha256)` (a partial unique index, migration 0002); that row is
//! what sha256 dedup reuses, and the upsert of [`insert_or_get`] targets it, so two workers racing
//! on the same bytes, or a job re-run after a crash, end with one row.
//!
//! Statuses and the functions that move a row between them:
//!
//! ```text
//!             insert_or_get                         mark_completed
//!  (no row) ─────────────────▶ storage_pending ─────────────────────────▶ completed
//!     │                          │      ▲    │ record_storage_attempt        ▲
//!     │                          │      └────┘ (status unchanged)            │ mark_completed
//!     │                          │ mark_storage_failed                       │ (a later push
//!     │                          ▼                                           │  succeeded)
//!     │                     storage_failed ──────────────────────────────────┘
//!     │ insert_or_get, storage disabled
//!     └──────────────────────────────────────────────────────────────────▶ completed
//!
//!  any status but deleted ── mark_deleted ──▶ deleted   (final; rows are never removed)
//! ```
//!
//! `uploading` and the original system's `pending` behave like `storage_pending`; `failed` (a
//! provider upload that did not happen) can only be deleted. A change the machine does not allow
//! is [`DbError::InvalidTransition`] and writes nothing: a late storage failure cannot demote a
//! completed row, and nothing revives a deleted one except a fresh upload of the same provider
//! file through [`insert_or_get`].
//!
//! Rows written by the original system decode too: the column list casts the columns its later
//! migrations created with other types, and gives NULLs the values the columns default to.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::DbError;
use crate::providers::supabase::kimi_object_path;

/// The columns of a [`FileUpload`], as a `SELECT` list (also used in `RETURNING`).
macro_rules! upload_columns {
    () => {
        "id, provider, provider_file_id, sha256, filename, \
         file_size_bytes::bigint AS file_size_bytes, \
         mime_type::text AS mime_type, \
         coalesce(purpose, 'file-extract')::text AS purpose, \
         upload_status, supabase_file_id, storage_path, \
         coalesce(storage_attempts, 0)::integer AS storage_attempts, \
         last_error, error_message, \
         coalesce(reference_count, 1)::bigint AS reference_count, \
         last_used, created_at, updated_at, deleted_at, \
         deletion_reason::text AS deletion_reason, \
         coalesce(to_jsonb(metadata), '{}'::jsonb) AS metadata"
    };
}

/// [`upload_columns`] of the table aliased `u` (for statements that join another relation).
macro_rules! qualified_upload_columns {
    () => {
        "u.id, u.provider, u.provider_file_id, u.sha256, u.filename, \
         u.file_size_bytes::bigint AS file_size_bytes, \
         u.mime_type::text AS mime_type, \
         coalesce(u.purpose, 'file-extract')::text AS purpose, \
         u.upload_status, u.supabase_file_id, u.storage_path, \
         coalesce(u.storage_attempts, 0)::integer AS storage_attempts, \
         u.last_error, u.error_message, \
         coalesce(u.reference_count, 1)::bigint AS reference_count, \
         u.last_used, u.created_at, u.updated_at, u.deleted_at, \
         u.deletion_reason::text AS deletion_reason, \
         coalesce(to_jsonb(u.metadata), '{}'::jsonb) AS metadata"
    };
}

/// The live-row predicate, verbatim from the partial unique index of migration 0002 (an
/// `ON CONFLICT` target must match the index's predicate).
macro_rules! live {
    () => {
        "sha256 IS NOT NULL AND deleted_at IS NULL AND upload_status NOT IN ('deleted', 'failed')"
    };
}

/// The partial unique index over live rows (migration 0002).
const LIVE_INDEX: &str = "provider_file_uploads_live_sha256_key";

/// How many times [`insert_or_get`] goes round when concurrent writers keep changing the rows it
/// conflicts with; each round makes progress, so this is only a guard against a livelock.
const UPSERT_ROUNDS: usize = 4;

/// The status of a row (`upload_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadStatus {
    /// Being uploaded to the provider.
    Uploading,
    /// On the provider; the bytes still have to reach Supabase Storage.
    StoragePending,
    /// On the provider, and in Supabase Storage unless storage is disabled.
    Completed,
    /// On the provider; the storage push spent its retry budget or hit a permanent error.
    StorageFailed,
    /// The provider upload failed; the row is kept for the record and is not live.
    Failed,
    /// Marked deleted (`deleted_at`, `deletion_reason`); kept, never removed, not live.
    Deleted,
    /// The original system's status for a row whose upload had not finished. Kept valid so its
    /// rows stay as they were; the queue never writes it.
    Pending,
}

impl UploadStatus {
    /// Every status.
    pub const ALL: [UploadStatus; 7] = [
        UploadStatus::Uploading,
        UploadStatus::StoragePending,
        UploadStatus::Completed,
        UploadStatus::StorageFailed,
        UploadStatus::Failed,
        UploadStatus::Deleted,
        UploadStatus::Pending,
    ];

    /// The value stored in `upload_status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            UploadStatus::Uploading => "uploading",
            UploadStatus::StoragePending => "storage_pending",
            UploadStatus::Completed => "completed",
            UploadStatus::StorageFailed => "storage_failed",
            UploadStatus::Failed => "failed",
            UploadStatus::Deleted => "deleted",
            UploadStatus::Pending => "pending",
        }
    }

    /// Whether a row in this status can be live (reused by sha256 dedup), given a sha256 and
    /// no `deleted_at`.
    pub const fn is_live(self) -> bool {
        !matches!(self, UploadStatus::Deleted | UploadStatus::Failed)
    }

    /// Whether a row in this status may still read its staged bytes: its upload or its storage
    /// push is not finished (`storage_failed` included: a re-drive pushes from staging).
    pub const fn needs_staged_bytes(self) -> bool {
        matches!(
            self,
            UploadStatus::Uploading
                | UploadStatus::StoragePending
                | UploadStatus::StorageFailed
                | UploadStatus::Pending
        )
    }

    /// Whether the state machine (see the [module docs](self)) lets a row go from `self` to
    /// `next`. Staying in `completed` or `storage_failed` is allowed, so that a job re-run after
    /// a crash can repeat its last write.
    pub const fn can_become(self, next: UploadStatus) -> bool {
        use UploadStatus::*;
        match next {
            Completed => matches!(
                self,
                Uploading | Pending | StoragePending | StorageFailed | Completed
            ),
            StorageFailed => matches!(self, Uploading | Pending | StoragePending | StorageFailed),
            Deleted => !matches!(self, Deleted),
            Uploading | StoragePending | Failed | Pending => false,
        }
    }

    /// The statuses from which a row may become `next`, as stored strings (for `= ANY($n)`).
    fn sources(next: UploadStatus) -> Vec<&'static str> {
        Self::ALL
            .into_iter()
            .filter(|s| s.can_become(next))
            .map(UploadStatus::as_str)
            .collect()
    }
}

impl fmt::Display for UploadStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the [`UploadStatus`] values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown upload status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for UploadStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl TryFrom<String> for UploadStatus {
    type Error = UnknownStatus;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// One row of `provider_file_uploads`.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct FileUpload {
    /// Primary key.
    pub id: Uuid,
    /// `kimi` (Moonshot) or `glm`.
    pub provider: String,
    /// The provider's file id (Moonshot `file.id`); unique per provider.
    pub provider_file_id: String,
    /// Hex sha256 of the bytes; `None` only on some rows of the original system.
    pub sha256: Option<String>,
    /// The client's file name.
    pub filename: Option<String>,
    /// Size in bytes.
    pub file_size_bytes: Option<i64>,
    /// MIME type, when known.
    pub mime_type: Option<String>,
    /// The purpose the file was uploaded with (`file-extract`).
    pub purpose: String,
    /// Where the row is in its life (see the [module docs](self)).
    #[sqlx(rename = "upload_status", try_from = "String")]
    pub status: UploadStatus,
    /// The Supabase Storage object id, once the bytes are there.
    pub supabase_file_id: Option<String>,
    /// The Supabase Storage object path, once the bytes are there.
    pub storage_path: Option<String>,
    /// Storage push attempts counted so far.
    pub storage_attempts: i32,
    /// The last storage push error.
    pub last_error: Option<String>,
    /// Why the row failed (`failed`, `storage_failed`), for people.
    pub error_message: Option<String>,
    /// How many uploads resolved to this provider file.
    pub reference_count: i64,
    /// When the file was last uploaded or reused.
    pub last_used: Option<DateTime<Utc>>,
    /// When the row was inserted.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
    /// When the row was marked deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Why the row was marked deleted.
    pub deletion_reason: Option<String>,
    /// Free-form details (`{}` when none).
    pub metadata: serde_json::Value,
}

impl FileUpload {
    /// Whether this is the live row of its `(provider, sha256)`: the one dedup reuses.
    pub fn is_live(&self) -> bool {
        self.sha256.is_some() && self.deleted_at.is_none() && self.status.is_live()
    }

    /// Whether the original daemon wrote this row after its storage fix: it recorded the
    /// Supabase object it made (`supabase_file_id`) but never a `storage_path`, which only the
    /// queue's pushes set (together with `supabase_file_id`).
    pub fn is_original_with_copy(&self) -> bool {
        self.storage_path.is_none() && self.supabase_file_id.is_some()
    }

    /// Where the row's copy in Supabase Storage is, if it has one: its `storage_path`, or for a
    /// row the original daemon wrote ([`Self::is_original_with_copy`]) the object its fix wrote,
    /// `kimi-uploads/{provider_file_id}` in the configured bucket.
    pub fn storage_object(&self) -> Option<String> {
        match &self.storage_path {
            Some(path) => Some(path.clone()),
            None if self.supabase_file_id.is_some() => {
                Some(kimi_object_path(&self.provider_file_id))
            }
            None => None,
        }
    }
}

/// What [`insert_or_get`] records after a successful provider upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpload {
    /// `kimi` or `glm`.
    pub provider: String,
    /// The id the provider gave the file.
    pub provider_file_id: String,
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// The client's file name.
    pub filename: String,
    /// Size in bytes.
    pub file_size_bytes: i64,
    /// MIME type, when known.
    pub mime_type: Option<String>,
    /// The purpose the file was uploaded with (`file-extract`).
    pub purpose: String,
    /// [`UploadStatus::StoragePending`], or [`UploadStatus::Completed`] when storage is disabled.
    pub status: UploadStatus,
    /// Who this upload answers: the id of the job that made it (a tool call or an `uploads`
    /// job). A row counts each reference once in `reference_count`, so a re-run is not a new
    /// reference.
    pub reference: String,
}

/// The outcome of [`insert_or_get`].
#[derive(Debug, Clone, PartialEq)]
pub struct Upserted {
    /// The live row for the upload's `(provider, sha256)`.
    pub row: FileUpload,
    /// `true` when this call made the row live (inserted it, or revived the deleted row of the
    /// same provider file); `false` when a live row already existed (another worker's upload, or
    /// this job's own row from before a crash). The caller acts on `row.status` either way: a
    /// `storage_pending` row needs a storage push, whoever created it.
    pub created: bool,
}

impl Upserted {
    /// Whether the returned row names another provider file than the one just uploaded: the
    /// upload lost a race, and its provider file is a duplicate that no row accounts for (the
    /// caller may delete it; the orphan sweep otherwise reclaims it after its grace period).
    pub fn lost_race(&self, provider_file_id: &str) -> bool {
        self.row.provider_file_id != provider_file_id
    }
}

#[derive(FromRow)]
struct UpsertRow {
    #[sqlx(flatten)]
    row: FileUpload,
    created: bool,
}

/// The live row of `(provider, sha256)`, if any.
pub async fn find_live(
    pool: &PgPool,
    provider: &str,
    sha256: &str,
) -> Result<Option<FileUpload>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        upload_columns!(),
        " FROM provider_file_uploads WHERE provider = $1 AND sha256 = $2 AND ",
        live!()
    );
    Ok(sqlx::query_as(SQL)
        .bind(provider)
        .bind(sha256)
        .fetch_optional(pool)
        .await?)
}

/// The row with this id, in any status.
pub async fn find_by_id(pool: &PgPool, id: Uuid) -> Result<Option<FileUpload>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        upload_columns!(),
        " FROM provider_file_uploads WHERE id = $1"
    );
    Ok(sqlx::query_as(SQL).bind(id).fetch_optional(pool).await?)
}

/// The row of this provider file, in any status (`(provider, provider_file_id)` is unique).
pub async fn find_by_provider_file_id(
    pool: &PgPool,
    provider: &str,
    provider_file_id: &str,
) -> Result<Option<FileUpload>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        upload_columns!(),
        " FROM provider_file_uploads WHERE provider = $1 AND provider_file_id = $2"
    );
    Ok(sqlx::query_as(SQL)
        .bind(provider)
        .bind(provider_file_id)
        .fetch_optional(pool)
        .await?)
}

/// Records that an upload was answered with this existing row (sha256 dedup): bumps
/// `last_used`, and `reference_count` when `reference` (the id of the job asking) has not been
/// counted on this row before, so a job that runs again after a crash counts once. Returns `None`
/// when the row is no longer live (deleted in the meantime): the caller then uploads the bytes
/// afresh.
pub async fn record_reuse(
    pool: &PgPool,
    id: Uuid,
    reference: &str,
) -> Result<Option<FileUpload>, DbError> {
    // The reference is recorded and counted in one statement; a concurrent insert of the same
    // (row, reference) waits for this one and then counts nothing.
    const SQL: &str = concat!(
        "WITH claimed AS ( \
             INSERT INTO provider_file_upload_refs (upload_id, reference) \
             SELECT id, $2 FROM provider_file_uploads WHERE id = $1 AND ",
        live!(),
        "    ON CONFLICT DO NOTHING RETURNING upload_id) \
         UPDATE provider_file_uploads \
         SET last_used = now(), \
             reference_count = coalesce(reference_count, 1) + (SELECT count(*) FROM claimed), \
             updated_at = now() \
         WHERE id = $1 AND ",
        live!(),
        " RETURNING ",
        upload_columns!()
    );
    Ok(sqlx::query_as(SQL)
        .bind(id)
        .bind(reference)
        .fetch_optional(pool)
        .await?)
}

/// Counts `reference` on row `id` inside `tx`, unless it is counted already; returns the row.
async fn claim_reference(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    reference: &str,
) -> Result<FileUpload, sqlx::Error> {
    const SQL: &str = concat!(
        "WITH claimed AS ( \
             INSERT INTO provider_file_upload_refs (upload_id, reference) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING RETURNING upload_id) \
         UPDATE provider_file_uploads \
         SET reference_count = coalesce(reference_count, 1) + (SELECT count(*) FROM claimed) \
         WHERE id = $1 RETURNING ",
        upload_columns!()
    );
    sqlx::query_as(SQL)
        .bind(id)
        .bind(reference)
        .fetch_one(tx)
        .await
}

/// Records a successful provider upload, or returns the live row that already holds the same
/// bytes. One statement (an upsert on the live `(provider, sha256)` index) decides, so two
/// workers racing on the same bytes get the same row, and a job re-run after a crash finds the
/// row it wrote before instead of adding one.
///
/// When the row already exists it is returned as it is (its status and provider file are kept)
/// with `last_used` bumped. `reference_count` counts `new.reference` once per row: the row and
/// its reference are written in one transaction, so a job re-run after a crash, which finds its
/// own row, is not a new reference. When the provider file is already recorded on a row that is
/// not live (deleted, failed, or without sha256), that row is brought back for this upload rather
/// than a second row added: `(provider, provider_file_id)` stays unique.
pub async fn insert_or_get(pool: &PgPool, new: &NewUpload) -> Result<Upserted, DbError> {
    if !matches!(
        new.status,
        UploadStatus::StoragePending | UploadStatus::Completed
    ) {
        return Err(DbError::InvalidInitialStatus(new.status));
    }
    let mut last_error = None;
    for _ in 0..UPSERT_ROUNDS {
        match upsert_live(pool, new).await {
            Ok(row) => return Ok(row),
            Err(e) if is_unique_violation_outside_live_index(&e) => {
                // No live row for the sha256 existed, but the provider file id is taken.
                match revive(pool, new).await {
                    Ok(Some(row)) => return Ok(row),
                    Ok(None) => {
                        if let Some(row) =
                            find_by_provider_file_id(pool, &new.provider, &new.provider_file_id)
                                .await?
                            && row.is_live()
                            && row.sha256.as_deref() != Some(new.sha256.as_str())
                        {
                            return Err(DbError::ProviderFileIdTaken {
                                provider: new.provider.clone(),
                                provider_file_id: new.provider_file_id.clone(),
                            });
                        }
                        // The row changed under us; go round again.
                    }
                    // Another worker made a row live for this sha256 in the meantime: the next
                    // round's upsert returns it.
                    Err(e) if is_unique_violation(&e) => last_error = Some(e),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_error.map_or_else(
        || DbError::ProviderFileIdTaken {
            provider: new.provider.clone(),
            provider_file_id: new.provider_file_id.clone(),
        },
        DbError::Query,
    ))
}

async fn upsert_live(pool: &PgPool, new: &NewUpload) -> Result<Upserted, sqlx::Error> {
    // `xmax = 0` holds for a row version this statement inserted, not for one it updated. A new
    // row starts with this upload's reference counted, and its `provider_file_upload_refs` row is
    // added in the same transaction (no second write of the new row); an existing row counts
    // the reference through `claim_reference`, once.
    const SQL: &str = concat!(
        "INSERT INTO provider_file_uploads AS u \
             (provider, provider_file_id, sha256, filename, file_size_bytes, mime_type, purpose, \
              upload_status, reference_count, last_used) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, now()) \
         ON CONFLICT (provider, sha256) WHERE ",
        live!(),
        " DO UPDATE SET last_used = now(), updated_at = now() \
         RETURNING ",
        upload_columns!(),
        ", (xmax = 0) AS created"
    );
    let mut tx = pool.begin().await?;
    let row: UpsertRow = sqlx::query_as(SQL)
        .bind(&new.provider)
        .bind(&new.provider_file_id)
        .bind(&new.sha256)
        .bind(&new.filename)
        .bind(new.file_size_bytes)
        .bind(&new.mime_type)
        .bind(&new.purpose)
        .bind(new.status.as_str())
        .fetch_one(&mut *tx)
        .await?;
    let counted = if row.created {
        sqlx::query(
            "INSERT INTO provider_file_upload_refs (upload_id, reference) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(row.row.id)
        .bind(&new.reference)
        .execute(&mut *tx)
        .await?;
        row.row
    } else {
        claim_reference(&mut tx, row.row.id, &new.reference).await?
    };
    tx.commit().await?;
    Ok(Upserted {
        row: counted,
        created: row.created,
    })
}

/// Brings the non-live row of this provider file back as the live row of this upload; the
/// references of its earlier life are forgotten and this upload's is counted.
async fn revive(pool: &PgPool, new: &NewUpload) -> Result<Option<Upserted>, sqlx::Error> {
    const SQL: &str = concat!(
        "UPDATE provider_file_uploads \
         SET sha256 = $3, filename = $4, file_size_bytes = $5, mime_type = $6, purpose = $7, \
             upload_status = $8, supabase_file_id = NULL, storage_path = NULL, \
             storage_attempts = 0, last_error = NULL, error_message = NULL, \
             reference_count = 0, last_used = now(), deleted_at = NULL, \
             deletion_reason = NULL, updated_at = now() \
         WHERE provider = $1 AND provider_file_id = $2 AND NOT (",
        live!(),
        ") RETURNING id"
    );
    let mut tx = pool.begin().await?;
    let id: Option<Uuid> = sqlx::query_scalar(SQL)
        .bind(&new.provider)
        .bind(&new.provider_file_id)
        .bind(&new.sha256)
        .bind(&new.filename)
        .bind(new.file_size_bytes)
        .bind(&new.mime_type)
        .bind(&new.purpose)
        .bind(new.status.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let Some(id) = id else {
        return Ok(None);
    };
    sqlx::query("DELETE FROM provider_file_upload_refs WHERE upload_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let row = claim_reference(&mut tx, id, &new.reference).await?;
    tx.commit().await?;
    Ok(Some(Upserted { row, created: true }))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_unique_violation_outside_live_index(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.is_unique_violation() && db.constraint() != Some(LIVE_INDEX))
}

/// Counts one storage push attempt (`storage_attempts + 1`) and, when given, records its error
/// in `last_error`. Counting before an attempt, with `None`, makes a push that crashes its worker
/// every time still spend its budget. Allowed while the row is `storage_pending` or
/// `storage_failed`, and the status does not change; in any other status nothing is written and
/// the refusal is reported as [`DbError::InvalidTransition`] to `storage_pending`.
pub async fn record_storage_attempt(
    pool: &PgPool,
    id: Uuid,
    error: Option<&str>,
) -> Result<FileUpload, DbError> {
    const SQL: &str = concat!(
        "UPDATE provider_file_uploads \
         SET storage_attempts = coalesce(storage_attempts, 0) + 1, \
             last_error = coalesce($2, last_error), \
             updated_at = now() \
         WHERE id = $1 AND upload_status IN ('storage_pending', 'storage_failed') \
         RETURNING ",
        upload_columns!()
    );
    let row = sqlx::query_as(SQL)
        .bind(id)
        .bind(error)
        .fetch_optional(pool)
        .await?;
    match row {
        Some(row) => Ok(row),
        None => Err(refusal(pool, id, UploadStatus::StoragePending).await),
    }
}

/// The bytes reached Supabase Storage: the row becomes `completed`, linked to its object.
/// Repeating it on a completed row (a re-run) rewrites the link; a deleted or failed row is
/// refused.
pub async fn mark_completed(
    pool: &PgPool,
    id: Uuid,
    supabase_file_id: &str,
    storage_path: &str,
) -> Result<FileUpload, DbError> {
    const SQL: &str = concat!(
        "UPDATE provider_file_uploads \
         SET upload_status = 'completed', supabase_file_id = $3, storage_path = $4, \
             error_message = NULL, updated_at = now() \
         WHERE id = $1 AND upload_status = ANY($2) \
         RETURNING ",
        upload_columns!()
    );
    let to = UploadStatus::Completed;
    let row = sqlx::query_as(SQL)
        .bind(id)
        .bind(UploadStatus::sources(to))
        .bind(supabase_file_id)
        .bind(storage_path)
        .fetch_optional(pool)
        .await?;
    match row {
        Some(row) => Ok(row),
        None => Err(refusal(pool, id, to).await),
    }
}

/// [`record_storage_attempt`] (with no error) of every row in `ids`, in one statement: the rows
/// counted, in no particular order. A row missing from the answer was refused (not
/// `storage_pending` nor `storage_failed`, or absent); `ids` should hold each row once.
pub async fn record_storage_attempts(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<Vec<FileUpload>, DbError> {
    const SQL: &str = concat!(
        "UPDATE provider_file_uploads \
         SET storage_attempts = coalesce(storage_attempts, 0) + 1, \
             updated_at = now() \
         WHERE id = ANY($1) AND upload_status IN ('storage_pending', 'storage_failed') \
         RETURNING ",
        upload_columns!()
    );
    Ok(sqlx::query_as(SQL).bind(ids).fetch_all(pool).await?)
}

/// [`mark_completed`] of every `(id, supabase_file_id, storage_path)` in `links`, in one
/// statement: the rows completed, in no particular order. A row missing from the answer was
/// refused (deleted, failed, or absent); `links` should hold each row once.
pub async fn mark_completed_many(
    pool: &PgPool,
    links: &[(Uuid, String, String)],
) -> Result<Vec<FileUpload>, DbError> {
    // The target's columns are qualified: `unnest` brings an `id` of its own.
    const SQL: &str = concat!(
        "UPDATE provider_file_uploads AS u \
         SET upload_status = 'completed', supabase_file_id = l.supabase_file_id, \
             storage_path = l.storage_path, error_message = NULL, updated_at = now() \
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS l(row_id, supabase_file_id, storage_path) \
         WHERE u.id = l.row_id AND u.upload_status = ANY($4) \
         RETURNING ",
        qualified_upload_columns!()
    );
    let ids: Vec<Uuid> = links.iter().map(|l| l.0).collect();
    let objects: Vec<&str> = links.iter().map(|l| l.1.as_str()).collect();
    let paths: Vec<&str> = links.iter().map(|l| l.2.as_str()).collect();
    Ok(sqlx::query_as(SQL)
        .bind(ids)
        .bind(objects)
        .bind(paths)
        .bind(UploadStatus::sources(UploadStatus::Completed))
        .fetch_all(pool)
        .await?)
}

/// Why a write of a batch left row `id` out: its refusal, as the one-row function reports it.
pub async fn refused(pool: &PgPool, id: Uuid, to: UploadStatus) -> DbError {
    refusal(pool, id, to).await
}

/// The storage push gave up (budget spent, or a permanent error): the row becomes
/// `storage_failed` with the error in `last_error` and `error_message`. The provider upload is
/// not undone: the row stays live. A completed row is refused (a late failure never demotes it).
pub async fn mark_storage_failed(
    pool: &PgPool,
    id: Uuid,
    error: &str,
) -> Result<FileUpload, DbError> {
    const SQL: &str = concat!(
        "UPDATE provider_file_uploads \
         SET upload_status = 'storage_failed', last_error = $3, error_message = $3, \
             updated_at = now() \
         WHERE id = $1 AND upload_status = ANY($2) \
         RETURNING ",
        upload_columns!()
    );
    let to = UploadStatus::StorageFailed;
    let row = sqlx::query_as(SQL)
        .bind(id)
        .bind(UploadStatus::sources(to))
        .bind(error)
        .fetch_optional(pool)
        .await?;
    match row {
        Some(row) => Ok(row),
        None => Err(refusal(pool, id, to).await),
    }
}

/// Marks the row deleted (`deleted_at = now()`, `deletion_reason`); the row is kept. Marking an
/// already deleted row changes nothing and returns it (its first reason stays).
pub async fn mark_deleted(pool: &PgPool, id: Uuid, reason: &str) -> Result<FileUpload, DbError> {
    const SQL: &str = concat!(
        "UPDATE provider_file_uploads \
         SET upload_status = 'deleted', deleted_at = now(), deletion_reason = $3, \
             updated_at = now() \
         WHERE id = $1 AND upload_status = ANY($2) \
         RETURNING ",
        upload_columns!()
    );
    let to = UploadStatus::Deleted;
    let row = sqlx::query_as(SQL)
        .bind(id)
        .bind(UploadStatus::sources(to))
        .bind(reason)
        .fetch_optional(pool)
        .await?;
    match row {
        Some(row) => Ok(row),
        None => match find_by_id(pool, id).await? {
            Some(row) if row.status == UploadStatus::Deleted => Ok(row),
            Some(row) => Err(DbError::InvalidTransition {
                id,
                from: row.status,
                to,
            }),
            None => Err(DbError::NotFound { id }),
        },
    }
}

/// Up to `limit` rows in `status`, least recently changed first.
pub async fn list_by_status(
    pool: &PgPool,
    status: UploadStatus,
    limit: i64,
) -> Result<Vec<FileUpload>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        upload_columns!(),
        " FROM provider_file_uploads WHERE upload_status = $1 \
         ORDER BY updated_at, id LIMIT $2"
    );
    Ok(sqlx::query_as(SQL)
        .bind(status.as_str())
        .bind(limit.max(0))
        .fetch_all(pool)
        .await?)
}

/// How many rows are in each `upload_status`, every known status included (with 0), plus any
/// status a foreign writer left in the table. One `GROUP BY` over the table.
pub async fn count_by_status(pool: &PgPool) -> Result<BTreeMap<String, u64>, DbError> {
    const SQL: &str = "SELECT coalesce(upload_status, 'completed') AS status, count(*) AS n \
                       FROM provider_file_uploads GROUP BY 1";
    let rows: Vec<(String, i64)> = sqlx::query_as(SQL).fetch_all(pool).await?;
    let mut out: BTreeMap<String, u64> = UploadStatus::ALL
        .into_iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for (status, n) in rows {
        *out.entry(status).or_default() += u64::try_from(n).unwrap_or(0);
    }
    Ok(out)
}

/// The predicate of a row that still holds its files: not marked deleted and not failed. Wider
/// than [`live!`] (rows of the original system without a sha256 count too), so the orphan sweep
/// never removes anything such a row names.
macro_rules! holding {
    () => {
        "deleted_at IS NULL AND upload_status NOT IN ('deleted', 'failed')"
    };
}

/// Every row that still holds its files (not deleted, not failed), in any provider: what the
/// orphan sweep keeps.
pub async fn list_holding(pool: &PgPool) -> Result<Vec<FileUpload>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        upload_columns!(),
        " FROM provider_file_uploads WHERE ",
        holding!(),
        " ORDER BY created_at, id"
    );
    Ok(sqlx::query_as(SQL).fetch_all(pool).await?)
}

/// Whether a row that still holds its files names this provider file id or storage path.
pub async fn is_file_held(
    pool: &PgPool,
    provider_file_id: Option<&str>,
    storage_path: Option<&str>,
) -> Result<bool, DbError> {
    const SQL: &str = concat!(
        "SELECT EXISTS (SELECT 1 FROM provider_file_uploads WHERE ",
        holding!(),
        " AND (provider_file_id = $1 OR storage_path = $2))"
    );
    Ok(sqlx::query_scalar(SQL)
        .bind(provider_file_id)
        .bind(storage_path)
        .fetch_one(pool)
        .await?)
}

/// Whether a row whose work is not finished (see [`UploadStatus::needs_staged_bytes`]) has
/// this sha256: its staged bytes may still be read.
pub async fn is_sha256_pending(pool: &PgPool, sha256: &str) -> Result<bool, DbError> {
    const SQL: &str = "SELECT EXISTS (SELECT 1 FROM provider_file_uploads \
                       WHERE sha256 = $1 AND deleted_at IS NULL AND upload_status = ANY($2))";
    let pending: Vec<&str> = UploadStatus::ALL
        .into_iter()
        .filter(|s| s.needs_staged_bytes())
        .map(UploadStatus::as_str)
        .collect();
    Ok(sqlx::query_scalar(SQL)
        .bind(sha256)
        .bind(pending)
        .fetch_one(pool)
        .await?)
}

/// Marks the row deleted (`deleted_at = now()`, `deletion_reason`) only if it is still in one
/// of `statuses`, not deleted, and not used since `used_before` (`last_used`, else
/// `created_at`). `None` when the guard refused: the row changed, or was used again, since it
/// was chosen. One statement, so a concurrent reuse either happens first (and the row is kept)
/// or finds the row deleted (and uploads afresh).
pub async fn mark_deleted_unused(
    pool: &PgPool,
    id: Uuid,
    reason: &str,
    statuses: &[UploadStatus],
    used_before: DateTime<Utc>,
) -> Result<Option<FileUpload>, DbError> {
    const SQL: &str = concat!(
        "UPDATE provider_file_uploads \
         SET upload_status = 'deleted', deleted_at = now(), deletion_reason = $2, \
             updated_at = now() \
         WHERE id = $1 AND deleted_at IS NULL AND upload_status = ANY($3) \
           AND coalesce(last_used, created_at) <= $4 \
         RETURNING ",
        upload_columns!()
    );
    let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    Ok(sqlx::query_as(SQL)
        .bind(id)
        .bind(reason)
        .bind(statuses)
        .bind(used_before)
        .fetch_optional(pool)
        .await?)
}

/// Up to `limit` rows, in `status` when given, newest first (for operators: `files list`).
pub async fn list_recent(
    pool: &PgPool,
    status: Option<UploadStatus>,
    limit: i64,
) -> Result<Vec<FileUpload>, DbError> {
    const SQL: &str = concat!(
        "SELECT ",
        upload_columns!(),
        " FROM provider_file_uploads WHERE ($1::text IS NULL OR upload_status = $1) \
         ORDER BY created_at DESC, id DESC LIMIT $2"
    );
    Ok(sqlx::query_as(SQL)
        .bind(status.map(UploadStatus::as_str))
        .bind(limit.max(0))
        .fetch_all(pool)
        .await?)
}

/// Why a guarded update matched no row: the row is missing, or its status forbids the change.
async fn refusal(pool: &PgPool, id: Uuid, to: UploadStatus) -> DbError {
    match find_by_id(pool, id).await {
        Ok(Some(row)) => DbError::InvalidTransition {
            id,
            from: row.status,
            to,
        },
        Ok(None) => DbError::NotFound { id },
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_stored_names() {
        for status in UploadStatus::ALL {
            assert_eq!(status.as_str().parse::<UploadStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(
            "bogus".parse::<UploadStatus>(),
            Err(UnknownStatus("bogus".into()))
        );
    }

    #[test]
    fn the_state_machine_never_leaves_deleted_nor_demotes_completed() {
        use UploadStatus::*;
        for status in UploadStatus::ALL {
            assert!(!Deleted.can_become(status), "deleted -> {status}");
        }
        assert!(!Completed.can_become(StorageFailed));
        assert!(!Failed.can_become(Completed));
        assert!(StoragePending.can_become(Completed));
        assert!(StorageFailed.can_become(Completed));
        assert!(Completed.can_become(Completed));
        assert!(Completed.can_become(Deleted));
        assert_eq!(
            UploadStatus::sources(StorageFailed),
            ["uploading", "storage_pending", "storage_failed", "pending"]
        );
    }

    #[test]
    fn a_row_of_the_original_finds_its_copy_where_the_original_wrote_it() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let row = |supabase_file_id: Option<&str>, storage_path: Option<&str>| FileUpload {
            id: Uuid::nil(),
            provider: "kimi".to_owned(),
            provider_file_id: "file-1".to_owned(),
            sha256: None,
            filename: None,
            file_size_bytes: None,
            mime_type: None,
            purpose: "file-extract".to_owned(),
            status: UploadStatus::Completed,
            supabase_file_id: supabase_file_id.map(str::to_owned),
            storage_path: storage_path.map(str::to_owned),
            storage_attempts: 0,
            last_error: None,
            error_message: None,
            reference_count: 1,
            last_used: None,
            created_at: at,
            updated_at: at,
            deleted_at: None,
            deletion_reason: None,
            metadata: serde_json::Value::Null,
        };
        let ours = row(Some("obj-id"), Some("kimi-uploads/file-1"));
        assert_eq!(
            ours.storage_object().as_deref(),
            Some("kimi-uploads/file-1")
        );
        assert!(!ours.is_original_with_copy());
        let original = row(Some("files-row-uuid"), None);
        assert_eq!(
            original.storage_object().as_deref(),
            Some("kimi-uploads/file-1")
        );
        assert!(original.is_original_with_copy());
        let no_copy = row(None, None);
        assert_eq!(no_copy.storage_object(), None);
        assert!(!no_copy.is_original_with_copy());
    }
}
