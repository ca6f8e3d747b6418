//! The migrations of `migrations/` and the `provider_file_uploads` data access of
//! `exai_shared::db`, against a real Postgres (one fresh database per test):
//!
//! - up on an empty database: the table, its columns and indexes, one live row per
//!   (provider, sha256);
//! - up over the original system's table with its rows (with and without the columns of the
//!   original's later migrations): every row kept, same ids and values, duplicates superseded
//!   (marked, not removed), new columns defaulted, every status valid and decodable;
//! - down all the way and up again, from both kinds of start; over the original table, down
//!   leaves the table exactly as it was, rows and schema;
//! - the data-access functions: the insert-or-get race, reuse, re-runs, status transitions.

use std::collections::{BTreeMap, BTreeSet};

use exai_shared::db::{self, DbError, FileUpload, NewUpload, UploadStatus};
use exai_tests::TestDb;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const TABLE: &str = "provider_file_uploads";
const LIVE_INDEX: &str = "provider_file_uploads_live_sha256_key";

/// The versions of every (up) migration in this build.
fn all_versions() -> Vec<i64> {
    db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect()
}

async fn applied_versions(pool: &PgPool) -> Vec<i64> {
    db::applied_migrations(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.version)
        .collect()
}

async fn revert_all(pool: &PgPool) {
    let mut reverted = Vec::new();
    while let Some(m) = db::revert_one(pool).await.unwrap() {
        reverted.push(m.version);
    }
    let mut expected = all_versions();
    expected.reverse();
    assert_eq!(reverted, expected, "reverted newest first, each once");
    assert!(applied_versions(pool).await.is_empty());
}

async fn table_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn column_names(pool: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute \
         WHERE attrelid = 'provider_file_uploads'::regclass AND attnum > 0 AND NOT attisdropped",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Every schema fact of the table that a migration could change, one sorted line each.
async fn schema_fingerprint(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        r#"
        SELECT 'column ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               || coalesce(' comment ' || col_description(a.attrelid, a.attnum), '')
        FROM pg_attribute a
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = 'provider_file_uploads'::regclass AND a.attnum > 0
          AND NOT a.attisdropped
        UNION ALL
        SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
               || CASE WHEN convalidated THEN '' ELSE ' (not validated)' END
        FROM pg_constraint WHERE conrelid = 'provider_file_uploads'::regclass
        UNION ALL
        SELECT 'index ' || indexname || ' ' || indexdef
        FROM pg_indexes WHERE tablename = 'provider_file_uploads'
        UNION ALL
        SELECT 'trigger ' || tgname FROM pg_trigger
        WHERE tgrelid = 'provider_file_uploads'::regclass AND NOT tgisinternal
        UNION ALL
        SELECT 'table comment '
               || coalesce(obj_description('provider_file_uploads'::regclass, 'pg_class'), '')
        ORDER BY 1
        "#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every row, as `to_jsonb` sees it (all columns, whatever they are), by id.
async fn all_rows(pool: &PgPool) -> BTreeMap<Uuid, Value> {
    sqlx::query_as::<_, (Uuid, Value)>("SELECT id, to_jsonb(p) FROM provider_file_uploads p")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Asserts that `after` holds every row of `before` with the same value in each of `before`'s
/// columns, except the columns listed for that row in `changed`.
fn assert_rows_kept(
    before: &BTreeMap<Uuid, Value>,
    after: &BTreeMap<Uuid, Value>,
    changed: &BTreeMap<Uuid, Vec<&str>>,
) {
    for (id, old) in before {
        let new = after.get(id).unwrap_or_else(|| panic!("row {id} is gone"));
        for (column, old_value) in old.as_object().unwrap() {
            if changed
                .get(id)
                .is_some_and(|c| c.contains(&column.as_str()))
            {
                continue;
            }
            assert_eq!(
                new.get(column),
                Some(old_value),
                "row {id} column {column} changed: {new}"
            );
        }
    }
}

fn new_upload(sha256: &str, provider_file_id: &str) -> NewUpload {
    NewUpload {
        provider: "kimi".into(),
        provider_file_id: provider_file_id.into(),
        sha256: sha256.into(),
        filename: "notes.txt".into(),
        file_size_bytes: 3 * 1024 * 1024 * 1024, // 3 GiB: needs bigint
        mime_type: Some("text/plain".into()),
        purpose: "file-extract".into(),
        status: UploadStatus::StoragePending,
        reference: format!("job-{provider_file_id}"),
    }
}

async fn migrated_db() -> (TestDb, PgPool) {
    let test_db = TestDb::new().await;
    let pool = test_db.pool().await;
    db::migrate(&pool).await.unwrap();
    (test_db, pool)
}

// ---------------------------------------------------------------------------------------------
// The original system's table.

/// `provider_file_uploads` as the original system created it: definition A
/// (`20251017000000_add_provider_file_uploads.sql`) and `002_add_supabase_file_id_...sql`.
const ORIGINAL_SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

CREATE TABLE provider_file_uploads (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    provider TEXT NOT NULL CHECK (provider IN ('kimi', 'glm')),
    provider_file_id TEXT NOT NULL,
    sha256 TEXT,
    filename TEXT,
    file_size_bytes INTEGER,
    last_used TIMESTAMPTZ DEFAULT NOW(),
    upload_status TEXT DEFAULT 'completed'
        CHECK (upload_status IN ('pending', 'completed', 'failed', 'deleted')),
    error_message TEXT,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE(provider, provider_file_id)
);
CREATE INDEX idx_provider_file_uploads_last_used
    ON provider_file_uploads(last_used) WHERE upload_status = 'completed';
CREATE INDEX idx_provider_file_uploads_provider ON provider_file_uploads(provider);
CREATE INDEX idx_provider_file_uploads_sha256
    ON provider_file_uploads(sha256) WHERE sha256 IS NOT NULL;

CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER update_provider_file_uploads_updated_at
    BEFORE UPDATE ON provider_file_uploads
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TABLE file_deletion_jobs (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    provider TEXT NOT NULL,
    provider_file_id TEXT NOT NULL,
    status TEXT DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    attempts INTEGER DEFAULT 0,
    last_error TEXT,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

-- 002_add_supabase_file_id_to_provider_uploads.sql
ALTER TABLE provider_file_uploads ADD COLUMN IF NOT EXISTS supabase_file_id TEXT DEFAULT NULL;
CREATE INDEX IF NOT EXISTS idx_provider_file_uploads_supabase_file_id
    ON provider_file_uploads(supabase_file_id);
"#;

/// Columns the original's later migrations (and its code) added, some of which 0002 also wants.
const ORIGINAL_LATER_COLUMNS: &str = r#"
-- 20251022000000_enhance_file_schema.sql
ALTER TABLE provider_file_uploads
    ADD COLUMN purpose VARCHAR(20) NOT NULL DEFAULT 'file-extract'
        CHECK (purpose IN ('file-extract', 'agent', 'assistants', 'training', 'custom')),
    ADD COLUMN checksum_sha256 TEXT,
    ADD COLUMN custom_metadata JSONB,
    ADD COLUMN mime_type VARCHAR(100),
    ADD COLUMN file_updated_at TIMESTAMPTZ;
ALTER TABLE provider_file_uploads
    DROP CONSTRAINT provider_file_uploads_provider_check,
    ADD CONSTRAINT provider_file_uploads_provider_check
        CHECK (provider IN ('kimi', 'glm', 'openai', 'anthropic'));
-- 20251029_add_download_tracking.sql
ALTER TABLE provider_file_uploads
    ADD COLUMN download_count INT DEFAULT 0,
    ADD COLUMN last_downloaded_at TIMESTAMPTZ,
    ADD COLUMN cache_path VARCHAR(500),
    ADD COLUMN cache_expiry TIMESTAMPTZ,
    ADD COLUMN cache_size_bytes BIGINT,
    ADD COLUMN cache_hit_count INT;
-- 20251102_add_deletion_tracking.sql
ALTER TABLE provider_file_uploads
    ADD COLUMN deleted_at TIMESTAMPTZ,
    ADD COLUMN deletion_reason TEXT;
CREATE INDEX idx_provider_file_uploads_deleted_at
    ON provider_file_uploads(deleted_at) WHERE deleted_at IS NOT NULL;
-- written by the original code, created by hand
ALTER TABLE provider_file_uploads
    ADD COLUMN upload_method TEXT,
    ADD COLUMN reference_count INTEGER DEFAULT 1,
    ADD COLUMN metadata JSONB;
"#;

/// The ids of the original rows, by the role they play.
struct OriginalRows {
    /// `kimi`/`aaa`: three live completed duplicates; `a3` (linked to Storage) is kept.
    a1: Uuid,
    a2: Uuid,
    a3: Uuid,
    /// `kimi`/`aaa`, already deleted: not live, untouched.
    a4: Uuid,
    /// `kimi`/`bbb`: two `pending` duplicates; `b1` (used last) is kept.
    b1: Uuid,
    b2: Uuid,
    /// `kimi`/`ccc`: a failed row (not live) and a completed one.
    c1: Uuid,
    c2: Uuid,
    /// `glm`/`aaa`: another provider, no duplicate.
    g1: Uuid,
    /// No sha256 (two of them): not live, untouched.
    n1: Uuid,
    n2: Uuid,
    /// `kimi`/`ddd`: `s1` has a NULL status (becomes `completed`, is kept), `s2` is superseded.
    s1: Uuid,
    s2: Uuid,
}

impl OriginalRows {
    fn superseded(&self) -> [Uuid; 4] {
        [self.a1, self.a2, self.b2, self.s2]
    }
}

async fn create_original_table(pool: &PgPool, later_columns: bool) -> OriginalRows {
    sqlx::raw_sql(ORIGINAL_SCHEMA).execute(pool).await.unwrap();
    if later_columns {
        sqlx::raw_sql(ORIGINAL_LATER_COLUMNS)
            .execute(pool)
            .await
            .unwrap();
    }

    // (provider, file id, sha256, status, days since last use, supabase_file_id, size)
    #[allow(clippy::type_complexity)]
    let specs: [(
        &str,
        &str,
        Option<&str>,
        Option<&str>,
        i32,
        Option<&str>,
        i32,
    ); 12] = [
        ("kimi", "f-a1", Some("aaa"), Some("completed"), 3, None, 10),
        ("kimi", "f-a2", Some("aaa"), Some("completed"), 1, None, 10),
        (
            "kimi",
            "f-a3",
            Some("aaa"),
            Some("completed"),
            5,
            Some("sb-a3"),
            10,
        ),
        ("kimi", "f-a4", Some("aaa"), Some("deleted"), 9, None, 10),
        ("kimi", "f-b1", Some("bbb"), Some("pending"), 1, None, 20),
        ("kimi", "f-b2", Some("bbb"), Some("pending"), 2, None, 20),
        ("kimi", "f-c1", Some("ccc"), Some("failed"), 1, None, 30),
        ("kimi", "f-c2", Some("ccc"), Some("completed"), 2, None, 30),
        ("glm", "f-g1", Some("aaa"), Some("completed"), 1, None, 10),
        ("kimi", "f-n1", None, Some("completed"), 1, None, 40),
        ("kimi", "f-s1", Some("ddd"), None, 1, None, i32::MAX),
        (
            "kimi",
            "f-s2",
            Some("ddd"),
            Some("completed"),
            4,
            None,
            i32::MAX,
        ),
    ];
    let mut ids = Vec::new();
    for (provider, file_id, sha, status, days, supabase, size) in specs {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO provider_file_uploads \
                 (provider, provider_file_id, sha256, filename, file_size_bytes, upload_status, \
                  last_used, supabase_file_id, error_message) \
             VALUES ($1, $2, $3, $2 || '.pdf', $4, $5, now() - make_interval(days => $6), $7, \
                     CASE WHEN $5 = 'failed' THEN 'provider said no' END) \
             RETURNING id",
        )
        .bind(provider)
        .bind(file_id)
        .bind(sha)
        .bind(size)
        .bind(status)
        .bind(days)
        .bind(supabase)
        .fetch_one(pool)
        .await
        .unwrap();
        ids.push(id);
    }
    // One row with only the columns the original code always wrote, and an id from the
    // original default (uuid_generate_v4).
    let n2: Uuid = sqlx::query_scalar(
        "INSERT INTO provider_file_uploads (provider, provider_file_id) \
         VALUES ('kimi', 'f-n2') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();

    let rows = OriginalRows {
        a1: ids[0],
        a2: ids[1],
        a3: ids[2],
        a4: ids[3],
        b1: ids[4],
        b2: ids[5],
        c1: ids[6],
        c2: ids[7],
        g1: ids[8],
        n1: ids[9],
        s1: ids[10],
        s2: ids[11],
        n2,
    };

    if later_columns {
        sqlx::query(
            "UPDATE provider_file_uploads \
             SET purpose = 'agent', mime_type = 'application/pdf', reference_count = 3, \
                 metadata = '{\"source\": \"legacy\"}', download_count = 7, \
                 upload_method = 'direct' \
             WHERE id = $1",
        )
        .bind(rows.a3)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE provider_file_uploads SET reference_count = NULL, metadata = NULL \
             WHERE id = $1",
        )
        .bind(rows.a1)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE provider_file_uploads \
             SET deleted_at = now() - interval '8 days', deletion_reason = 'expired' \
             WHERE id = $1",
        )
        .bind(rows.a4)
        .execute(pool)
        .await
        .unwrap();
    }
    rows
}

/// The columns each original row may see changed by 0002 (everything else must be identical).
fn changed_by_up(rows: &OriginalRows) -> BTreeMap<Uuid, Vec<&'static str>> {
    let mut changed: BTreeMap<Uuid, Vec<&str>> = rows
        .superseded()
        .into_iter()
        .map(|id| {
            (
                id,
                vec![
                    "upload_status",
                    "updated_at",
                    "deleted_at",
                    "deletion_reason",
                ],
            )
        })
        .collect();
    changed.insert(rows.s1, vec!["upload_status", "updated_at"]);
    changed
}

/// After 0002 the restored rows only differ in `updated_at` (the trigger stamps each change).
fn changed_by_up_and_down(rows: &OriginalRows) -> BTreeMap<Uuid, Vec<&'static str>> {
    changed_by_up(rows)
        .into_keys()
        .map(|id| (id, vec!["updated_at"]))
        .collect()
}

async fn assert_migrated_original(
    pool: &PgPool,
    rows: &OriginalRows,
    before: &BTreeMap<Uuid, Value>,
) {
    let after = all_rows(pool).await;
    assert_eq!(after.len(), before.len(), "no row added or removed");
    assert_rows_kept(before, &after, &changed_by_up(rows));

    for id in rows.superseded() {
        let row = db::find_by_id(pool, id).await.unwrap().unwrap();
        assert_eq!(row.status, UploadStatus::Deleted, "{id}");
        assert_eq!(row.deletion_reason.as_deref(), Some("superseded duplicate"));
        assert!(row.deleted_at.is_some());
    }
    // The kept row of each group, and every other row, keeps its status.
    let expect = [
        (rows.a3, UploadStatus::Completed),
        (rows.a4, UploadStatus::Deleted),
        (rows.b1, UploadStatus::Pending),
        (rows.c1, UploadStatus::Failed),
        (rows.c2, UploadStatus::Completed),
        (rows.g1, UploadStatus::Completed),
        (rows.n1, UploadStatus::Completed),
        (rows.n2, UploadStatus::Completed),
        (rows.s1, UploadStatus::Completed),
    ];
    for (id, status) in expect {
        let row = db::find_by_id(pool, id).await.unwrap().unwrap();
        assert_eq!(row.status, status, "{id}");
    }
    assert_eq!(
        db::find_live(pool, "kimi", "aaa")
            .await
            .unwrap()
            .unwrap()
            .id,
        rows.a3
    );
    assert_eq!(
        db::find_live(pool, "kimi", "bbb")
            .await
            .unwrap()
            .unwrap()
            .id,
        rows.b1
    );
    assert_eq!(
        db::find_live(pool, "kimi", "ddd")
            .await
            .unwrap()
            .unwrap()
            .id,
        rows.s1
    );
    assert_eq!(
        db::find_live(pool, "glm", "aaa").await.unwrap().unwrap().id,
        rows.g1
    );

    // Every row decodes, with a valid status, and at most one is live per (provider, sha256).
    let mut live = BTreeSet::new();
    for id in before.keys() {
        let row: FileUpload = db::find_by_id(pool, *id).await.unwrap().unwrap();
        assert!(UploadStatus::ALL.contains(&row.status));
        if row.is_live() {
            assert!(
                live.insert((row.provider.clone(), row.sha256.clone())),
                "two live rows for {:?}",
                (row.provider, row.sha256)
            );
        }
    }
    // The widened size column holds the original sizes, the largest included.
    let s1 = db::find_by_id(pool, rows.s1).await.unwrap().unwrap();
    assert_eq!(s1.file_size_bytes, Some(i64::from(i32::MAX)));
}

// ---------------------------------------------------------------------------------------------
// Schema tests.

#[tokio::test]
async fn up_on_an_empty_database_creates_the_table() {
    let test_db = TestDb::new().await;
    let pool = test_db.pool().await;

    let applied = db::migrate(&pool).await.unwrap();
    assert_eq!(
        applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        all_versions()
    );
    assert!(
        db::migrate(&pool).await.unwrap().is_empty(),
        "a second run applies nothing"
    );

    let columns = column_names(&pool).await;
    for column in [
        "id",
        "provider",
        "provider_file_id",
        "sha256",
        "filename",
        "file_size_bytes",
        "last_used",
        "upload_status",
        "error_message",
        "created_at",
        "updated_at",
        "supabase_file_id",
        "storage_path",
        "storage_attempts",
        "last_error",
        "mime_type",
        "purpose",
        "reference_count",
        "deleted_at",
        "deletion_reason",
        "metadata",
    ] {
        assert!(columns.contains(column), "missing column {column}");
    }
    let size_type: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'provider_file_uploads'::regclass AND attname = 'file_size_bytes'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(size_type, "bigint");

    // The live index is unique and partial; the Storage link is indexed.
    let (unique, partial): (bool, bool) = sqlx::query_as(
        "SELECT i.indisunique, i.indpred IS NOT NULL FROM pg_index i \
         WHERE i.indexrelid = to_regclass($1)",
    )
    .bind(LIVE_INDEX)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(unique && partial);
    assert!(table_exists(&pool, "idx_provider_file_uploads_supabase_file_id").await);

    // Defaults, the id default included.
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO provider_file_uploads (provider, provider_file_id, sha256, upload_status) \
         VALUES ('kimi', 'f-1', 'same', 'storage_pending') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let row = db::find_by_id(&pool, id).await.unwrap().unwrap();
    assert_eq!(row.status, UploadStatus::StoragePending);
    assert_eq!(row.purpose, "file-extract");
    assert_eq!(row.storage_attempts, 0);
    assert_eq!(row.reference_count, 1);
    assert_eq!(row.metadata, json!({}));
    assert!(row.is_live());

    // A second live row for the same (provider, sha256) is refused by the live index...
    let err = sqlx::query(
        "INSERT INTO provider_file_uploads (provider, provider_file_id, sha256, upload_status) \
         VALUES ('kimi', 'f-2', 'same', 'completed')",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    let db_err = err.as_database_error().expect("a database error");
    assert!(db_err.is_unique_violation());
    assert_eq!(db_err.constraint(), Some(LIVE_INDEX));
    // ...but not for another provider, nor once the first is marked deleted.
    sqlx::query(
        "INSERT INTO provider_file_uploads (provider, provider_file_id, sha256, upload_status) \
         VALUES ('glm', 'g-1', 'same', 'completed')",
    )
    .execute(&pool)
    .await
    .unwrap();
    db::mark_deleted(&pool, id, "test").await.unwrap();
    sqlx::query(
        "INSERT INTO provider_file_uploads (provider, provider_file_id, sha256, upload_status) \
         VALUES ('kimi', 'f-2', 'same', 'completed')",
    )
    .execute(&pool)
    .await
    .unwrap();

    // Unknown statuses are refused; updated_at follows updates.
    let err = sqlx::query(
        "INSERT INTO provider_file_uploads (provider, provider_file_id, upload_status) \
         VALUES ('kimi', 'f-3', 'bogus')",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23514"),
        "check violation"
    );
    let before = db::find_by_id(&pool, id).await.unwrap().unwrap();
    sqlx::query("UPDATE provider_file_uploads SET filename = 'renamed' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let after = db::find_by_id(&pool, id).await.unwrap().unwrap();
    assert!(after.updated_at > before.updated_at);
}

#[tokio::test]
async fn up_over_the_original_table_keeps_every_row() {
    let test_db = TestDb::new().await;
    let pool = test_db.pool().await;
    let original = create_original_table(&pool, false).await;
    let before = all_rows(&pool).await;

    db::migrate(&pool).await.unwrap();
    assert_migrated_original(&pool, &original, &before).await;

    // New columns take their defaults on the original rows.
    for id in before.keys() {
        let row = db::find_by_id(&pool, *id).await.unwrap().unwrap();
        assert_eq!(row.storage_attempts, 0);
        assert_eq!(row.reference_count, 1);
        assert_eq!(row.purpose, "file-extract");
        assert_eq!(row.metadata, json!({}));
        assert_eq!(row.storage_path, None);
        assert_eq!(row.mime_type, None);
    }
    // The superseded rows are recorded with the row that superseded them.
    let backup: Vec<(Uuid, Option<String>, Option<Uuid>)> = sqlx::query_as(
        "SELECT id, upload_status, superseded_by FROM provider_file_uploads_0002_backup \
         ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let backup: BTreeMap<_, _> = backup
        .into_iter()
        .map(|(id, s, by)| (id, (s, by)))
        .collect();
    assert_eq!(backup.len(), 5, "4 superseded rows and 1 NULL status");
    assert_eq!(
        backup[&original.a1],
        (Some("completed".into()), Some(original.a3))
    );
    assert_eq!(
        backup[&original.b2],
        (Some("pending".into()), Some(original.b1))
    );
    assert_eq!(backup[&original.s1], (None, None));
}

#[tokio::test]
async fn up_over_the_original_table_with_its_later_columns_keeps_them() {
    let test_db = TestDb::new().await;
    let pool = test_db.pool().await;
    let original = create_original_table(&pool, true).await;
    let before = all_rows(&pool).await;
    let columns_before = column_names(&pool).await;

    db::migrate(&pool).await.unwrap();
    assert_migrated_original(&pool, &original, &before).await;

    // The original's own columns keep their values and types; 0002 added only what was missing.
    let a3 = db::find_by_id(&pool, original.a3).await.unwrap().unwrap();
    assert_eq!(a3.purpose, "agent");
    assert_eq!(a3.mime_type.as_deref(), Some("application/pdf"));
    assert_eq!(a3.reference_count, 3);
    assert_eq!(a3.metadata, json!({"source": "legacy"}));
    // NULLs in the original's nullable columns read as their defaults.
    let a1 = db::find_by_id(&pool, original.a1).await.unwrap().unwrap();
    assert_eq!(a1.reference_count, 1);
    assert_eq!(a1.metadata, json!({}));
    // The row the original had already deleted keeps its own deletion.
    let a4 = db::find_by_id(&pool, original.a4).await.unwrap().unwrap();
    assert_eq!(a4.deletion_reason.as_deref(), Some("expired"));

    let purpose_type: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'provider_file_uploads'::regclass AND attname = 'purpose'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(purpose_type, "character varying(20)");
    let added: BTreeSet<String> = column_names(&pool)
        .await
        .difference(&columns_before)
        .cloned()
        .collect();
    assert_eq!(
        added,
        ["last_error", "storage_attempts", "storage_path"]
            .map(String::from)
            .into()
    );
}

#[tokio::test]
async fn down_and_up_again_on_an_empty_database() {
    let (_test_db, pool) = migrated_db().await;
    let row = db::insert_or_get(&pool, &new_upload("abc", "file-1"))
        .await
        .unwrap()
        .row;
    assert_eq!(row.status, UploadStatus::StoragePending);

    revert_all(&pool).await;
    assert!(
        !table_exists(&pool, TABLE).await,
        "0001 created it, so 0001 down drops it"
    );
    let function_left: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'provider_file_uploads_set_updated_at')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!function_left);

    let fresh = TestDb::new().await;
    let fresh_pool = fresh.pool().await;
    db::migrate(&fresh_pool).await.unwrap();
    let fresh_schema = schema_fingerprint(&fresh_pool).await;

    assert_eq!(
        db::migrate(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.version)
            .collect::<Vec<_>>(),
        all_versions()
    );
    assert_eq!(
        schema_fingerprint(&pool).await,
        fresh_schema,
        "up after down gives the schema of a first up"
    );
    db::insert_or_get(&pool, &new_upload("abc", "file-1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn down_over_the_original_table_restores_it_exactly() {
    for later_columns in [false, true] {
        let test_db = TestDb::new().await;
        let pool = test_db.pool().await;
        let original = create_original_table(&pool, later_columns).await;
        let schema_before = schema_fingerprint(&pool).await;
        let before = all_rows(&pool).await;

        db::migrate(&pool).await.unwrap();
        revert_all(&pool).await;

        assert!(table_exists(&pool, TABLE).await, "the original table stays");
        assert!(table_exists(&pool, "file_deletion_jobs").await);
        assert!(!table_exists(&pool, "provider_file_uploads_0002_backup").await);
        assert_eq!(
            schema_fingerprint(&pool).await,
            schema_before,
            "schema restored (later columns: {later_columns})"
        );
        let after = all_rows(&pool).await;
        assert_eq!(after.len(), before.len());
        assert_rows_kept(&before, &after, &changed_by_up_and_down(&original));
        // Same columns as before: nothing of 0001/0002 is left in the rows.
        for (id, row) in &after {
            let keys: BTreeSet<_> = row.as_object().unwrap().keys().collect();
            let old_keys: BTreeSet<_> = before[id].as_object().unwrap().keys().collect();
            assert_eq!(keys, old_keys);
        }

        // And up again: the same result as the first time.
        db::migrate(&pool).await.unwrap();
        assert_migrated_original(&pool, &original, &before).await;
    }
}

#[tokio::test]
async fn up_and_down_over_the_original_table_without_its_002() {
    // Definition A alone: the original's 002 (supabase_file_id) was never applied.
    let test_db = TestDb::new().await;
    let pool = test_db.pool().await;
    let definition_a = ORIGINAL_SCHEMA
        .split("-- 002_add_supabase_file_id_to_provider_uploads.sql")
        .next()
        .unwrap();
    sqlx::raw_sql(definition_a).execute(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO provider_file_uploads (provider, provider_file_id, sha256, file_size_bytes) \
         VALUES ('kimi', 'f-1', 'aaa', 5)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let schema_before = schema_fingerprint(&pool).await;
    let before = all_rows(&pool).await;

    db::migrate(&pool).await.unwrap();
    assert!(column_names(&pool).await.contains("supabase_file_id"));
    assert!(table_exists(&pool, "idx_provider_file_uploads_supabase_file_id").await);
    let row = db::find_live(&pool, "kimi", "aaa").await.unwrap().unwrap();
    assert_eq!(row.supabase_file_id, None);

    revert_all(&pool).await;
    assert_eq!(schema_fingerprint(&pool).await, schema_before);
    assert_eq!(all_rows(&pool).await, before);
}

#[tokio::test]
async fn down_keeps_rows_written_with_the_new_statuses() {
    let test_db = TestDb::new().await;
    let pool = test_db.pool().await;
    create_original_table(&pool, false).await;
    let schema_before = schema_fingerprint(&pool).await;
    db::migrate(&pool).await.unwrap();
    let upload = NewUpload {
        file_size_bytes: 1024,
        ..new_upload("new-bytes", "file-new")
    };
    let new = db::insert_or_get(&pool, &upload).await.unwrap().row;

    revert_all(&pool).await;

    // The row stays, with its status; the original CHECK is back, but NOT VALID, since this row
    // does not satisfy it: it holds for new writes, and nothing was changed to make it fit.
    let status: String =
        sqlx::query_scalar("SELECT upload_status FROM provider_file_uploads WHERE id = $1")
            .bind(new.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "storage_pending");
    let validated: bool = sqlx::query_scalar(
        "SELECT convalidated FROM pg_constraint \
         WHERE conrelid = 'provider_file_uploads'::regclass \
           AND conname = 'provider_file_uploads_upload_status_check'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!validated);
    // The sizes still fit integer, so the column went back to integer.
    let schema_after = schema_fingerprint(&pool).await;
    let differences: Vec<_> = schema_after
        .iter()
        .filter(|line| !schema_before.contains(line))
        .collect();
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert!(differences[0].contains("NOT VALID"), "{differences:?}");

    // Up again works over that state, and down restores it the same way.
    db::migrate(&pool).await.unwrap();
    assert_eq!(
        db::find_by_id(&pool, new.id).await.unwrap().unwrap().status,
        UploadStatus::StoragePending
    );
    revert_all(&pool).await;
    assert_eq!(schema_fingerprint(&pool).await, schema_after);
}

// ---------------------------------------------------------------------------------------------
// Data access.

#[tokio::test]
async fn concurrent_insert_or_get_for_the_same_bytes_makes_one_row() {
    let (_test_db, pool) = migrated_db().await;
    const RACERS: usize = 16;
    let uploads: Vec<NewUpload> = (0..RACERS)
        .map(|i| new_upload("same-bytes", &format!("file-{i}")))
        .collect();
    let outcomes = futures::future::join_all(uploads.iter().map(|u| db::insert_or_get(&pool, u)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();

    let ids: BTreeSet<Uuid> = outcomes.iter().map(|o| o.row.id).collect();
    assert_eq!(ids.len(), 1, "every racer got the same row");
    assert_eq!(outcomes.iter().filter(|o| o.created).count(), 1);
    let winner = outcomes.iter().find(|o| o.created).unwrap();
    let losers = uploads
        .iter()
        .filter(|u| outcomes[0].lost_race(&u.provider_file_id))
        .count();
    assert_eq!(losers, RACERS - 1);

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_file_uploads")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    let row = db::find_by_id(&pool, winner.row.id).await.unwrap().unwrap();
    assert_eq!(row.reference_count, RACERS as i64);
    assert_eq!(row.status, UploadStatus::StoragePending);
    assert_eq!(row.file_size_bytes, Some(3 * 1024 * 1024 * 1024));
}

#[tokio::test]
async fn a_rerun_finds_its_own_row_without_counting_a_reference() {
    let (_test_db, pool) = migrated_db().await;
    let upload = new_upload("bytes", "file-1");
    let first = db::insert_or_get(&pool, &upload).await.unwrap();
    assert!(first.created);
    let rerun = db::insert_or_get(&pool, &upload).await.unwrap();
    assert!(!rerun.created);
    assert!(!rerun.lost_race("file-1"));
    assert_eq!(rerun.row.id, first.row.id);
    assert_eq!(rerun.row.reference_count, 1);
    // A completed row stays completed when the job that created it runs again.
    db::mark_completed(&pool, first.row.id, "obj-1", "kimi-uploads/file-1")
        .await
        .unwrap();
    let rerun = db::insert_or_get(&pool, &upload).await.unwrap();
    assert_eq!(rerun.row.status, UploadStatus::Completed);

    let err = db::insert_or_get(
        &pool,
        &NewUpload {
            status: UploadStatus::Failed,
            ..new_upload("other", "file-2")
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(
        err,
        DbError::InvalidInitialStatus(UploadStatus::Failed)
    ));
}

#[tokio::test]
async fn reuse_bumps_the_reference_count_of_live_rows_only() {
    let (_test_db, pool) = migrated_db().await;
    let created = db::insert_or_get(&pool, &new_upload("bytes", "file-1"))
        .await
        .unwrap()
        .row;
    assert!(
        db::find_live(&pool, "kimi", "other")
            .await
            .unwrap()
            .is_none()
    );
    let live = db::find_live(&pool, "kimi", "bytes")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live, created);
    assert_eq!(
        db::find_by_provider_file_id(&pool, "kimi", "file-1")
            .await
            .unwrap()
            .unwrap(),
        created
    );

    let reused = db::record_reuse(&pool, live.id, "call-2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reused.reference_count, 2);
    assert!(reused.last_used > created.last_used);
    let reused = db::record_reuse(&pool, live.id, "call-3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reused.reference_count, 3);
    // A job that runs again counts once: neither a reuser nor the creator is counted twice.
    for again in ["call-3", "call-2", "job-file-1"] {
        let reused = db::record_reuse(&pool, live.id, again)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reused.reference_count, 3, "{again}");
    }

    db::mark_deleted(&pool, live.id, "expired").await.unwrap();
    assert!(
        db::record_reuse(&pool, live.id, "call-4")
            .await
            .unwrap()
            .is_none()
    );
    let refs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM provider_file_upload_refs WHERE upload_id = $1")
            .bind(live.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(refs, 3, "a row no longer live records no reference");
    assert!(
        db::find_live(&pool, "kimi", "bytes")
            .await
            .unwrap()
            .is_none()
    );

    // The same bytes uploaded again make a new live row; the deleted one is kept.
    let again = db::insert_or_get(&pool, &new_upload("bytes", "file-2"))
        .await
        .unwrap();
    assert!(again.created);
    assert_ne!(again.row.id, live.id);
    assert!(db::find_by_id(&pool, live.id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_deleted_provider_file_uploaded_again_is_revived_not_duplicated() {
    let (_test_db, pool) = migrated_db().await;
    let first = db::insert_or_get(&pool, &new_upload("bytes", "file-1"))
        .await
        .unwrap()
        .row;
    db::mark_deleted(&pool, first.id, "moonshot file gone")
        .await
        .unwrap();

    // The provider hands out the same file id again (or a job re-runs after the row was swept).
    let revived = db::insert_or_get(&pool, &new_upload("bytes", "file-1"))
        .await
        .unwrap();
    assert!(revived.created);
    assert_eq!(revived.row.id, first.id);
    assert!(revived.row.is_live());
    // The revived row counts only the upload that revived it.
    assert_eq!(revived.row.reference_count, 1);
    assert_eq!(revived.row.status, UploadStatus::StoragePending);
    assert_eq!(revived.row.deletion_reason, None);

    // The same provider file id for other bytes, while live: refused, nothing written.
    let err = db::insert_or_get(&pool, &new_upload("other-bytes", "file-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DbError::ProviderFileIdTaken { .. }),
        "{err:?}"
    );
    assert!(
        db::find_live(&pool, "kimi", "other-bytes")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn status_transitions_follow_the_state_machine() {
    let (_test_db, pool) = migrated_db().await;
    let id = db::insert_or_get(&pool, &new_upload("bytes", "file-1"))
        .await
        .unwrap()
        .row
        .id;

    // Attempts are counted; an error is kept.
    let row = db::record_storage_attempt(&pool, id, None).await.unwrap();
    assert_eq!((row.storage_attempts, row.last_error.as_deref()), (1, None));
    let row = db::record_storage_attempt(&pool, id, Some("timeout"))
        .await
        .unwrap();
    assert_eq!(row.storage_attempts, 2);
    assert_eq!(row.last_error.as_deref(), Some("timeout"));
    assert_eq!(row.status, UploadStatus::StoragePending);

    let row = db::mark_storage_failed(&pool, id, "budget spent")
        .await
        .unwrap();
    assert_eq!(row.status, UploadStatus::StorageFailed);
    assert_eq!(row.error_message.as_deref(), Some("budget spent"));
    assert!(row.is_live(), "the provider file is still usable");

    let row = db::mark_completed(&pool, id, "obj-1", "kimi-uploads/file-1")
        .await
        .unwrap();
    assert_eq!(row.status, UploadStatus::Completed);
    assert_eq!(row.supabase_file_id.as_deref(), Some("obj-1"));
    assert_eq!(row.storage_path.as_deref(), Some("kimi-uploads/file-1"));
    assert_eq!(row.error_message, None);
    assert_eq!(
        db::list_by_status(&pool, UploadStatus::Completed, 10)
            .await
            .unwrap(),
        vec![row.clone()]
    );

    // A late failure never demotes a completed row, and writes nothing.
    let err = db::mark_storage_failed(&pool, id, "late")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        DbError::InvalidTransition {
            from: UploadStatus::Completed,
            to: UploadStatus::StorageFailed,
            ..
        }
    ));
    assert!(
        db::record_storage_attempt(&pool, id, Some("late"))
            .await
            .is_err()
    );
    assert_eq!(db::find_by_id(&pool, id).await.unwrap().unwrap(), row);

    // Deleted is final; deleting twice keeps the first reason.
    let deleted = db::mark_deleted(&pool, id, "expired").await.unwrap();
    assert_eq!(deleted.status, UploadStatus::Deleted);
    assert!(deleted.deleted_at.is_some());
    let again = db::mark_deleted(&pool, id, "other reason").await.unwrap();
    assert_eq!(again.deletion_reason.as_deref(), Some("expired"));
    let err = db::mark_completed(&pool, id, "obj-2", "p")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        DbError::InvalidTransition {
            from: UploadStatus::Deleted,
            to: UploadStatus::Completed,
            ..
        }
    ));

    let missing = Uuid::new_v4();
    for err in [
        db::mark_completed(&pool, missing, "o", "p")
            .await
            .unwrap_err(),
        db::mark_storage_failed(&pool, missing, "e")
            .await
            .unwrap_err(),
        db::mark_deleted(&pool, missing, "r").await.unwrap_err(),
        db::record_storage_attempt(&pool, missing, None)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(err, DbError::NotFound { id } if id == missing),
            "{err:?}"
        );
        assert!(!err.is_transient());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_committed_push_writes_answer_each_row_as_the_one_row_writes_do() {
    let (_test_db, pool) = migrated_db().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let new = new_upload(&format!("bytes-{i}"), &format!("file-{i}"));
        ids.push(db::insert_or_get(&pool, &new).await.unwrap().row.id);
    }
    // Row 0 is completed already and row 1 deleted: both are refused; row 2 is asked twice.
    db::mark_completed(&pool, ids[0], "obj-0", "kimi-uploads/file-0")
        .await
        .unwrap();
    db::mark_deleted(&pool, ids[1], "gone").await.unwrap();
    let missing = Uuid::new_v4();
    let writes = db::PushWrites::spawn(pool.clone());

    // Every attempt at once, so that the writer gathers them into batches.
    let mut asked: Vec<Uuid> = ids.clone();
    asked.push(ids[2]);
    asked.push(missing);
    let attempts =
        futures::future::join_all(asked.iter().map(|id| writes.record_storage_attempt(*id))).await;
    for (id, result) in asked.iter().zip(&attempts) {
        match result {
            Ok(row) => assert_eq!(row.id, *id),
            Err(DbError::InvalidTransition {
                id: refused, from, ..
            }) => {
                assert_eq!(refused, id);
                assert!(
                    *id == ids[0] && *from == UploadStatus::Completed
                        || *id == ids[1] && *from == UploadStatus::Deleted,
                    "{id} refused from {from}"
                );
            }
            Err(DbError::NotFound { id: not_found }) => assert_eq!(*not_found, missing),
            Err(e) => panic!("{id}: {e:?}"),
        }
    }
    assert_eq!(attempts.iter().filter(|r| r.is_err()).count(), 3);
    let row = |id: Uuid| {
        let pool = pool.clone();
        async move { db::find_by_id(&pool, id).await.unwrap().unwrap() }
    };
    // Each attempt counted once per ask: twice for row 2, never for the refused rows.
    assert_eq!(row(ids[2]).await.storage_attempts, 2);
    assert_eq!(row(ids[3]).await.storage_attempts, 1);
    assert_eq!(row(ids[0]).await.storage_attempts, 0);

    // Completions: each row linked to its own object; the deleted row refused.
    let links: Vec<(Uuid, String, String)> = ids[1..]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                *id,
                format!("obj-{}", i + 1),
                format!("kimi-uploads/file-{}", i + 1),
            )
        })
        .collect();
    let completed = futures::future::join_all(
        links
            .iter()
            .map(|(id, object, path)| writes.mark_completed(*id, object, path)),
    )
    .await;
    for ((id, object, path), result) in links.iter().zip(&completed) {
        if *id == ids[1] {
            assert!(matches!(
                result,
                Err(DbError::InvalidTransition {
                    from: UploadStatus::Deleted,
                    to: UploadStatus::Completed,
                    ..
                })
            ));
            continue;
        }
        let done = result.as_ref().unwrap();
        assert_eq!(done.id, *id);
        assert_eq!(done.status, UploadStatus::Completed);
        assert_eq!(done.supabase_file_id.as_deref(), Some(object.as_str()));
        assert_eq!(done.storage_path.as_deref(), Some(path.as_str()));
        assert_eq!(&row(*id).await, done);
    }
    assert_eq!(row(ids[1]).await.status, UploadStatus::Deleted);
}

#[tokio::test]
async fn list_by_status_returns_the_oldest_changes_first() {
    let (_test_db, pool) = migrated_db().await;
    let mut pending = Vec::new();
    for i in 0..3 {
        let row = db::insert_or_get(&pool, &new_upload(&format!("bytes-{i}"), &format!("f-{i}")))
            .await
            .unwrap()
            .row;
        pending.push(row.id);
    }
    db::insert_or_get(
        &pool,
        &NewUpload {
            status: UploadStatus::Completed,
            ..new_upload("stored-off", "f-x")
        },
    )
    .await
    .unwrap();

    let listed: Vec<Uuid> = db::list_by_status(&pool, UploadStatus::StoragePending, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, pending[..2]);
    assert_eq!(
        db::list_by_status(&pool, UploadStatus::Completed, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        db::list_by_status(&pool, UploadStatus::Failed, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
