//! Postgres access for `provider_file_uploads`, and the migrations.
