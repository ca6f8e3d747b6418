-- 0001 create provider_file_uploads: the original daemon's table, as its code uses it.
--
-- This is "definition A" of the original system (its `20251017000000_add_provider_file_uploads.sql`
-- plus `002_add_supabase_file_id_to_provider_uploads.sql`), column for column (two deliberate
-- differences are listed below), so that a fresh database and a database of the original system
-- reach the same schema before 0002 extends it.
--
-- Over a database of the original system the table is already there, with its rows, and possibly
-- with columns of the original's later migrations. It is then left exactly as it is: only the
-- `supabase_file_id` column and its index are added when the original's 002 had not been applied.
--
-- Rollback safety: everything this migration creates is marked with a comment (`exai:created-by-0001`
-- on the table, `exai:added-by-0001` on a column or index added to an existing table). The down
-- migration removes only what carries a mark, so it never drops a table that existed before us.
--
-- Two deliberate differences from the original, both only where this migration creates the table:
-- the id default is gen_random_uuid(), built into PostgreSQL since 13 (the original used
-- uuid_generate_v4() from the uuid-ossp extension; where the table already exists its default is
-- left alone, and keeps working there because the extension is installed), and created_at and
-- updated_at are NOT NULL (the original filled them from their defaults and never wrote NULL).

DO $migration$
BEGIN
    IF to_regclass('provider_file_uploads') IS NULL THEN
        CREATE TABLE provider_file_uploads (
            id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            provider         text NOT NULL CHECK (provider IN ('kimi', 'glm')),
            provider_file_id text NOT NULL,
            sha256           text,
            filename         text,
            file_size_bytes  integer,
            last_used        timestamptz DEFAULT now(),
            upload_status    text DEFAULT 'completed'
                             CHECK (upload_status IN ('pending', 'completed', 'failed', 'deleted')),
            error_message    text,
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now(),
            UNIQUE (provider, provider_file_id)
        );

        COMMENT ON TABLE provider_file_uploads IS
            'Files uploaded to a provider (Moonshot), one row per provider file. exai:created-by-0001';

        -- The original's indexes.
        CREATE INDEX idx_provider_file_uploads_last_used
            ON provider_file_uploads (last_used) WHERE upload_status = 'completed';
        CREATE INDEX idx_provider_file_uploads_provider ON provider_file_uploads (provider);
        CREATE INDEX idx_provider_file_uploads_sha256
            ON provider_file_uploads (sha256) WHERE sha256 IS NOT NULL;

        -- updated_at follows every UPDATE, whoever writes the row.
        CREATE FUNCTION provider_file_uploads_set_updated_at() RETURNS trigger
            LANGUAGE plpgsql AS $fn$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END
        $fn$;
        CREATE TRIGGER provider_file_uploads_set_updated_at
            BEFORE UPDATE ON provider_file_uploads
            FOR EACH ROW EXECUTE FUNCTION provider_file_uploads_set_updated_at();
    END IF;

    -- The original's 002: the link to the Supabase Storage object.
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'provider_file_uploads'::regclass
          AND attname = 'supabase_file_id' AND NOT attisdropped
    ) THEN
        ALTER TABLE provider_file_uploads ADD COLUMN supabase_file_id text DEFAULT NULL;
        COMMENT ON COLUMN provider_file_uploads.supabase_file_id IS
            'The Supabase Storage object holding the same bytes. exai:added-by-0001';
    END IF;

    IF to_regclass('idx_provider_file_uploads_supabase_file_id') IS NULL THEN
        CREATE INDEX idx_provider_file_uploads_supabase_file_id
            ON provider_file_uploads (supabase_file_id);
        COMMENT ON INDEX idx_provider_file_uploads_supabase_file_id IS 'exai:added-by-0001';
    END IF;
END
$migration$;
