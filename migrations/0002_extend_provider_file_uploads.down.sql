-- Reverts 0002, guided by what its up migration recorded (see the header of the up migration).
--
-- Columns 0002 added are dropped with their values: that is what reverting them means. Rows are
-- never deleted. Columns the table had before 0002 stay, whatever 0002 did with them.

-- 7. Indexes.
DROP INDEX IF EXISTS provider_file_uploads_status_updated_at_idx;
DROP INDEX IF EXISTS provider_file_uploads_live_sha256_key;

-- 4 (nullability first, so that a NULL status can be given back below).
DO $migration$
DECLARE
    status_attnum smallint;
    note text;
BEGIN
    SELECT attnum INTO status_attnum FROM pg_attribute
    WHERE attrelid = 'provider_file_uploads'::regclass AND attname = 'upload_status';
    note := col_description('provider_file_uploads'::regclass, status_attnum);
    IF note LIKE 'exai:not-null-by-0002%' THEN
        ALTER TABLE provider_file_uploads ALTER COLUMN upload_status DROP NOT NULL;
        EXECUTE format('COMMENT ON COLUMN provider_file_uploads.upload_status IS %L',
                       nullif(substr(note, length('exai:not-null-by-0002') + 2), ''));
    END IF;
END
$migration$;

-- 4 and 6. Give back the values 0002 overwrote (NULL statuses, superseded duplicates), on the rows
-- still as 0002 left them; a row the queue has changed since keeps its newer state.
UPDATE provider_file_uploads p
SET upload_status = b.upload_status,
    deleted_at = b.deleted_at,
    deletion_reason = b.deletion_reason
FROM provider_file_uploads_0002_backup b
WHERE b.id = p.id
  AND p.upload_status = b.set_status
  AND (b.superseded_by IS NULL OR p.deletion_reason IS NOT DISTINCT FROM 'superseded duplicate');

DROP TABLE provider_file_uploads_0002_backup;

-- 5. The status CHECK: the replaced constraint(s) come back from the new one's comment. Each is
--    validated again when the data allows; when rows written since 0002 carry a status it does
--    not allow (e.g. storage_pending), it comes back NOT VALID instead: enforced for new writes,
--    and no row is changed or lost.
DO $migration$
DECLARE
    note text;
    old record;
BEGIN
    SELECT obj_description(oid, 'pg_constraint') INTO note
    FROM pg_constraint
    WHERE conrelid = 'provider_file_uploads'::regclass
      AND conname = 'provider_file_uploads_exai_status_check';

    ALTER TABLE provider_file_uploads DROP CONSTRAINT IF EXISTS provider_file_uploads_exai_status_check;

    FOR old IN
        SELECT * FROM jsonb_to_recordset(
            coalesce(substring(note FROM 'replaces=(.*)$')::jsonb, '[]'::jsonb)
        ) AS x (name text, def text, validated boolean)
    LOOP
        EXECUTE format('ALTER TABLE provider_file_uploads ADD CONSTRAINT %I %s NOT VALID',
                       old.name, old.def);
        IF old.validated THEN
            BEGIN
                EXECUTE format('ALTER TABLE provider_file_uploads VALIDATE CONSTRAINT %I', old.name);
            EXCEPTION WHEN check_violation THEN
                RAISE WARNING 'constraint % restored NOT VALID: some rows have a status it does not allow', old.name;
            END;
        END IF;
    END LOOP;
END
$migration$;

-- 2. file_size_bytes back to integer when 0002 widened it and every value still fits.
DO $migration$
DECLARE
    size_attnum smallint;
    note text;
BEGIN
    SELECT attnum INTO size_attnum FROM pg_attribute
    WHERE attrelid = 'provider_file_uploads'::regclass AND attname = 'file_size_bytes';
    note := col_description('provider_file_uploads'::regclass, size_attnum);
    IF note LIKE 'exai:widened-by-0002%' THEN
        IF EXISTS (SELECT 1 FROM provider_file_uploads
                   WHERE file_size_bytes NOT BETWEEN -2147483648 AND 2147483647) THEN
            RAISE WARNING 'provider_file_uploads.file_size_bytes stays bigint: some sizes do not fit integer';
        ELSE
            ALTER TABLE provider_file_uploads ALTER COLUMN file_size_bytes TYPE integer;
            EXECUTE format('COMMENT ON COLUMN provider_file_uploads.file_size_bytes IS %L',
                           nullif(substr(note, length('exai:widened-by-0002') + 2), ''));
        END IF;
    END IF;
END
$migration$;

-- 1. Columns 0002 added.
DO $migration$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT attname FROM pg_attribute
        WHERE attrelid = 'provider_file_uploads'::regclass
          AND attnum > 0 AND NOT attisdropped
          AND col_description(attrelid, attnum) LIKE '%exai:added-by-0002%'
    LOOP
        EXECUTE format('ALTER TABLE provider_file_uploads DROP COLUMN %I', col.attname);
    END LOOP;
END
$migration$;
