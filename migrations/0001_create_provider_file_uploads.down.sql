-- Reverts 0001: removes only what 0001 created or added, as recorded by its marks.
--
-- The table is dropped only when its comment says 0001 created it; a table of the original system
-- keeps its rows and loses only the `supabase_file_id` column and index, and only if 0001 added them.

DO $migration$
BEGIN
    IF to_regclass('provider_file_uploads') IS NULL THEN
        RETURN;
    END IF;

    IF coalesce(obj_description('provider_file_uploads'::regclass, 'pg_class'), '')
           LIKE '%exai:created-by-0001%' THEN
        DROP TABLE provider_file_uploads;
        DROP FUNCTION IF EXISTS provider_file_uploads_set_updated_at();
        RETURN;
    END IF;

    IF to_regclass('idx_provider_file_uploads_supabase_file_id') IS NOT NULL
       AND coalesce(obj_description('idx_provider_file_uploads_supabase_file_id'::regclass, 'pg_class'), '')
           LIKE '%exai:added-by-0001%' THEN
        DROP INDEX idx_provider_file_uploads_supabase_file_id;
    END IF;

    IF EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'provider_file_uploads'::regclass
          AND attname = 'supabase_file_id' AND NOT attisdropped
          AND coalesce(col_description(attrelid, attnum), '') LIKE '%exai:added-by-0001%'
    ) THEN
        ALTER TABLE provider_file_uploads DROP COLUMN supabase_file_id;
    END IF;
END
$migration$;
