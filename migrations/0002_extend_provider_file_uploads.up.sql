-- 0002 extend provider_file_uploads: what the queue's upload pipeline needs.
--
-- Applies over the table as 0001 leaves it: created fresh, or the original system's table with its
-- rows and perhaps columns of the original's later migrations (purpose, mime_type, deleted_at,
-- deletion_reason, metadata, reference_count...). Nothing is removed and no row is deleted.
--
-- Every change is recorded where the down migration can find it, so that rolling back undoes
-- exactly this migration and nothing that was there before it:
--   * a column added here carries `exai:added-by-0002` in its comment (a column the original
--     already had is left as it is, type and all, and is never dropped on the way down);
--   * a column whose type or nullability changes carries `exai:widened-by-0002` or
--     `exai:not-null-by-0002` as the first line of its comment, followed by its previous comment;
--   * the status CHECK constraint(s) replaced here are kept, definition and all, in the comment of
--     the new constraint;
--   * every row value changed here is copied first into provider_file_uploads_0002_backup.
--
-- Row statuses after this migration: uploading, storage_pending, completed, storage_failed,
-- failed, deleted, and the original's `pending`, which stays allowed so that existing rows stay
-- valid as they are (it is never written by the queue; a `pending` row counts as live).
--
-- A row is LIVE when it has a sha256, is not marked deleted and did not fail:
--     sha256 IS NOT NULL AND deleted_at IS NULL AND upload_status NOT IN ('deleted', 'failed')
-- At most one live row may exist per (provider, sha256): that is what sha256 dedup reuses, and the
-- unique index over it is what makes concurrent and re-run uploads converge on one row. This
-- predicate is repeated verbatim in exai_shared::db (the ON CONFLICT target must match it).

-- 1. Columns. Added only where missing; an existing column keeps its type, default and rows.
DO $migration$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT * FROM (VALUES
            ('storage_path', 'text',
             'Object path in Supabase Storage (kimi-uploads/{provider_file_id}) once pushed.'),
            ('storage_attempts', 'integer NOT NULL DEFAULT 0 CHECK (storage_attempts >= 0)',
             'Storage push attempts so far; the retry budget counts them.'),
            ('last_error', 'text',
             'The last error of a storage push attempt.'),
            ('mime_type', 'text',
             'MIME type of the file, when known.'),
            ('purpose', 'text NOT NULL DEFAULT ''file-extract''',
             'The Moonshot purpose the file was uploaded with.'),
            ('reference_count', 'integer NOT NULL DEFAULT 1 CHECK (reference_count >= 0)',
             'How many uploads resolved to this provider file (sha256 dedup).'),
            ('deleted_at', 'timestamptz',
             'When the row was marked deleted; rows are marked, never removed.'),
            ('deletion_reason', 'text',
             'Why the row was marked deleted.'),
            ('metadata', 'jsonb NOT NULL DEFAULT ''{}''::jsonb',
             'Free-form details about the upload.')
        ) AS c (name, definition, doc)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_attribute
            WHERE attrelid = 'provider_file_uploads'::regclass
              AND attname = col.name AND NOT attisdropped
        ) THEN
            EXECUTE format('ALTER TABLE provider_file_uploads ADD COLUMN %I %s',
                           col.name, col.definition);
            EXECUTE format('COMMENT ON COLUMN provider_file_uploads.%I IS %L',
                           col.name, col.doc || ' exai:added-by-0002');
        END IF;
    END LOOP;
END
$migration$;

-- 2. file_size_bytes: integer -> bigint. Widening is lossless. Where a view depends on the column
--    PostgreSQL refuses to change its type; the column then stays integer (files are capped at
--    100 MiB, far below its 2 GiB limit) with a warning, rather than failing the migration.
DO $migration$
DECLARE
    previous_comment text;
BEGIN
    IF (SELECT atttypid FROM pg_attribute
        WHERE attrelid = 'provider_file_uploads'::regclass
          AND attname = 'file_size_bytes' AND NOT attisdropped) = 'integer'::regtype::oid THEN
        previous_comment := col_description('provider_file_uploads'::regclass,
            (SELECT attnum FROM pg_attribute
             WHERE attrelid = 'provider_file_uploads'::regclass AND attname = 'file_size_bytes'));
        BEGIN
            ALTER TABLE provider_file_uploads ALTER COLUMN file_size_bytes TYPE bigint;
            EXECUTE format('COMMENT ON COLUMN provider_file_uploads.file_size_bytes IS %L',
                           concat_ws(E'\n', 'exai:widened-by-0002', previous_comment));
        EXCEPTION WHEN feature_not_supported THEN
            RAISE WARNING 'provider_file_uploads.file_size_bytes stays integer: %', SQLERRM;
        END;
    END IF;
END
$migration$;

-- 3. Values 0002 overwrites are copied here first, so that the down migration can give them back.
--    One row per changed provider_file_uploads row, holding its values from before 0002.
CREATE TABLE provider_file_uploads_0002_backup (
    id              uuid PRIMARY KEY,
    upload_status   text,
    deleted_at      timestamptz,
    deletion_reason text,
    -- The status 0002 gave the row; the down migration restores only rows that still have it.
    set_status      text NOT NULL,
    -- For a superseded duplicate: the live row kept for its (provider, sha256).
    superseded_by   uuid,
    changed_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE provider_file_uploads_0002_backup IS
    'Values of provider_file_uploads rows before migration 0002 changed them; dropped by its down migration.';

-- 4. A NULL status (possible in the original, whose column was nullable with default
--    'completed', the only value its code wrote) becomes that default, and the column NOT NULL.
INSERT INTO provider_file_uploads_0002_backup (id, upload_status, deleted_at, deletion_reason, set_status)
SELECT id, upload_status, deleted_at, deletion_reason, 'completed'
FROM provider_file_uploads
WHERE upload_status IS NULL;

UPDATE provider_file_uploads SET upload_status = 'completed' WHERE upload_status IS NULL;

DO $migration$
DECLARE
    status_attnum smallint;
BEGIN
    SELECT attnum INTO status_attnum FROM pg_attribute
    WHERE attrelid = 'provider_file_uploads'::regclass AND attname = 'upload_status';
    IF NOT (SELECT attnotnull FROM pg_attribute
            WHERE attrelid = 'provider_file_uploads'::regclass AND attnum = status_attnum) THEN
        ALTER TABLE provider_file_uploads ALTER COLUMN upload_status SET NOT NULL;
        EXECUTE format('COMMENT ON COLUMN provider_file_uploads.upload_status IS %L',
                       concat_ws(E'\n', 'exai:not-null-by-0002',
                                 col_description('provider_file_uploads'::regclass, status_attnum)));
    END IF;
END
$migration$;

-- 5. The status CHECK: the original's constraint(s) on upload_status are replaced by one that also
--    allows the queue's statuses. The replaced definitions are kept in the new constraint's comment.
DO $migration$
DECLARE
    replaced jsonb;
    unknown text;
    old record;
BEGIN
    SELECT string_agg(DISTINCT quote_literal(upload_status), ', ') INTO unknown
    FROM provider_file_uploads
    WHERE upload_status NOT IN ('pending', 'uploading', 'storage_pending', 'completed',
                                'storage_failed', 'failed', 'deleted');
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'provider_file_uploads has rows with unknown upload_status values: %', unknown
            USING HINT = 'decide what they mean and update them, then run the migration again';
    END IF;

    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'name', c.conname,
               'def', regexp_replace(pg_get_constraintdef(c.oid), '\s+NOT VALID$', ''),
               'validated', c.convalidated) ORDER BY c.conname), '[]'::jsonb)
    INTO replaced
    FROM pg_constraint c
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attname = 'upload_status'
    WHERE c.conrelid = 'provider_file_uploads'::regclass
      AND c.contype = 'c'
      AND c.conkey = ARRAY[a.attnum];

    FOR old IN SELECT * FROM jsonb_to_recordset(replaced) AS x (name text) LOOP
        EXECUTE format('ALTER TABLE provider_file_uploads DROP CONSTRAINT %I', old.name);
    END LOOP;

    ALTER TABLE provider_file_uploads ADD CONSTRAINT provider_file_uploads_exai_status_check
        CHECK (upload_status IN ('pending', 'uploading', 'storage_pending', 'completed',
                                 'storage_failed', 'failed', 'deleted'));
    EXECUTE format(
        'COMMENT ON CONSTRAINT provider_file_uploads_exai_status_check ON provider_file_uploads IS %L',
        'exai:added-by-0002 replaces=' || replaced::text);
END
$migration$;

-- 6. Duplicates. The original had no uniqueness on (provider, sha256): its dedup was a lookup, and
--    two concurrent uploads of the same file both inserted a row. Such rows would stop the unique
--    live index from being created. In each (provider, sha256) group of live rows one row is kept:
--    a completed one first, then one linked to a Storage object, then the most recently used, then
--    the newest. The others are NOT removed: they are marked deleted (deleted_at = now(),
--    deletion_reason = 'superseded duplicate'), their previous values copied to the backup table
--    with the id of the row that superseded them. Their provider files hold the same bytes as the
--    kept row's; the orphan sweep reclaims them after its grace period like any unreferenced file.
WITH ranked AS (
    SELECT id,
           first_value(id) OVER same_file AS keeper,
           row_number() OVER same_file AS rank
    FROM provider_file_uploads
    WHERE sha256 IS NOT NULL AND deleted_at IS NULL AND upload_status NOT IN ('deleted', 'failed')
    WINDOW same_file AS (
        PARTITION BY provider, sha256
        ORDER BY (upload_status = 'completed') DESC,
                 (supabase_file_id IS NOT NULL) DESC,
                 last_used DESC NULLS LAST,
                 created_at DESC NULLS LAST,
                 id
    )
)
INSERT INTO provider_file_uploads_0002_backup
    (id, upload_status, deleted_at, deletion_reason, set_status, superseded_by)
SELECT p.id, p.upload_status, p.deleted_at, p.deletion_reason, 'deleted', r.keeper
FROM ranked r
JOIN provider_file_uploads p ON p.id = r.id
WHERE r.rank > 1
-- A row already backed up in step 4 keeps its value from before 0002.
ON CONFLICT (id) DO UPDATE
    SET set_status = EXCLUDED.set_status, superseded_by = EXCLUDED.superseded_by;

UPDATE provider_file_uploads p
SET upload_status = 'deleted',
    deleted_at = now(),
    deletion_reason = 'superseded duplicate'
FROM provider_file_uploads_0002_backup b
WHERE b.id = p.id AND b.superseded_by IS NOT NULL;

-- 7. Indexes.
CREATE UNIQUE INDEX provider_file_uploads_live_sha256_key
    ON provider_file_uploads (provider, sha256)
    WHERE sha256 IS NOT NULL AND deleted_at IS NULL AND upload_status NOT IN ('deleted', 'failed');
COMMENT ON INDEX provider_file_uploads_live_sha256_key IS
    'At most one live row per (provider, sha256): the target of the upload upsert. exai:added-by-0002';

CREATE INDEX provider_file_uploads_status_updated_at_idx
    ON provider_file_uploads (upload_status, updated_at);
COMMENT ON INDEX provider_file_uploads_status_updated_at_idx IS
    'Rows by status, oldest change first (storage retries, sweeps, listings). exai:added-by-0002';
