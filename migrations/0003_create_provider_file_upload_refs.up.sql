-- 0003 create provider_file_upload_refs: which job counted which file.
--
-- `provider_file_uploads.reference_count` counts the uploads that resolved to a row (sha256
-- dedup). Delivery is at-least-once, so a job may run again after a crash, and a multi-file call
-- re-run would count the files it had already recorded a second time. A reference is therefore
-- recorded once per (row, job): the count is bumped only by the statement that records a new
-- reference, in the same transaction. Rows counted before this migration keep their counts.

CREATE TABLE provider_file_upload_refs (
    upload_id  uuid NOT NULL REFERENCES provider_file_uploads (id) ON DELETE CASCADE,
    reference  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, reference)
);

COMMENT ON TABLE provider_file_upload_refs IS
    'One row per (upload, job) counted in provider_file_uploads.reference_count: a re-run job is not a new reference.';
COMMENT ON COLUMN provider_file_upload_refs.reference IS
    'Who referenced the file: the id of the tool call or uploads job.';
