//! `exai-worker files list`: the `provider_file_uploads` rows. Postgres only.

use clap::{Args, Subcommand};
use exai_shared::Config;
use exai_shared::db::{self, FileUpload, UploadStatus};
use serde::Serialize;

use super::{finish_table, or_dash, print_json, print_table, table};

/// The subcommands of `exai-worker files`.
#[derive(Subcommand, Debug)]
pub enum FilesCommand {
    /// Upload rows, newest first, optionally of one status.
    List(ListArgs),
}

/// Flags of `files list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only rows in this status: uploading, storage_pending, completed, storage_failed, failed,
    /// deleted or pending.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<UploadStatus>,
    /// The most rows to print.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_status(s: &str) -> Result<UploadStatus, String> {
    s.parse().map_err(|_| {
        let all: Vec<&str> = UploadStatus::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown status `{s}` (statuses: {})", all.join(", "))
    })
}

/// `files list --json`: `{"files":[row..]}` with every column of [`FileUpload`].
#[derive(Serialize)]
struct FilesReport {
    files: Vec<FileUpload>,
}

/// Runs one `files` subcommand.
pub async fn run(config: &Config, command: FilesCommand) -> anyhow::Result<()> {
    let FilesCommand::List(args) = command;
    let pool = db::connect(&config.database).await?;
    let rows = db::list_recent(&pool, args.status, i64::from(args.limit)).await;
    pool.close().await;
    let files = rows?;
    if args.json {
        return print_json(&FilesReport { files });
    }
    if files.is_empty() {
        match args.status {
            Some(s) => say!("no {s} files"),
            None => say!("no files"),
        }
        return Ok(());
    }
    let mut t = table([
        "ID",
        "PROVIDER",
        "FILE ID",
        "FILENAME",
        "BYTES",
        "STATUS",
        "PUSHES",
        "CREATED",
        "LAST ERROR",
    ]);
    for f in &files {
        t.add_row([
            f.id.to_string(),
            f.provider.clone(),
            f.provider_file_id.clone(),
            or_dash(f.filename.as_deref()),
            or_dash(f.file_size_bytes),
            f.status.to_string(),
            f.storage_attempts.to_string(),
            f.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            or_dash(
                f.last_error
                    .as_deref()
                    .or(f.error_message.as_deref())
                    .map(|e| e.replace(['\n', '\r'], " ")),
            ),
        ]);
    }
    finish_table(&mut t, &[4, 6]);
    print_table(&t);
    Ok(())
}
