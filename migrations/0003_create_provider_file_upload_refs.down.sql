-- Reverts 0003. The counts in provider_file_uploads.reference_count stay as they are.
DROP TABLE IF EXISTS provider_file_upload_refs;
