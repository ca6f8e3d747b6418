//! The operator commands of `exai-worker`: queue inspection and control (`queue …`), the
//! semaphores (`sem`), the storage re-drive (`storage retry-failed`) and the upload rows
//! (`files list`).
//!
//! Every read prints an aligned table, or with `--json` the JSON shape of
//! [`exai_shared::inspect`] (queues, semaphores) or of the value named in each command's docs.
//! A long operation shows a progress bar when stderr is a terminal and one plain line per item
//! otherwise. Commands that only touch Redis never open a Postgres connection.
//!
//! - [`cleanup`]: `cleanup [--dry-run] [--json]`, the orphan cleanup run in this process.
//! - [`queue`]: `queue stats | list | history | show | retry | kill | pause | resume`.
//! - [`sem`]: `sem`, the fleet-wide semaphores and their live leases.
//! - [`usage`]: `usage [--session S]`, the recorded token sums (cost accounting).
//! - [`storage`]: `storage retry-failed` (and the older `storage redrive`).
//! - [`files`]: `files list`, the `provider_file_uploads` rows.
//! - [`tools`]: `tools doc`, docs/tools.md from the tool registry.
//!
//! The commands that only read log only warnings unless `-v` or `RUST_LOG` asks for more, and
//! every error is one line on stderr (`error: …`), exit status 1 (2 for a bad flag).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use comfy_table::{CellAlignment, Table};
use exai_shared::Config;
use exai_shared::keys::Keys;
use exai_shared::queue::{ALL_QUEUES, Queue, QueuePolicy, STORAGE_PUSH};
use exai_shared::redis::RedisHandle;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// `println!` for command output: a closed stdout (`exai-worker queue list … | head`) ends the
/// process quietly instead of panicking.
macro_rules! say {
    () => {
        $crate::cli::emit(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::emit(format_args!($($arg)*))
    };
}

pub mod cleanup;
pub mod files;
pub mod queue;
pub mod sem;
pub mod storage;
pub mod tools;
pub mod usage;

/// Connects to Redis and returns a handle on every queue of the deployment, each with the
/// policy its workers use.
pub async fn queues(config: &Config) -> anyhow::Result<Vec<Queue>> {
    let conn = RedisHandle::connect(&config.redis)
        .await
        .context("connect to redis")?;
    Ok(queue_handles(config, conn))
}

/// A handle on every queue of the deployment over `conn`.
pub fn queue_handles(config: &Config, conn: RedisHandle) -> Vec<Queue> {
    let keys = Keys::new(&config.redis.prefix);
    ALL_QUEUES
        .iter()
        .map(|name| Queue::new(conn.clone(), &keys, name, policy_of(config, name)))
        .collect()
}

/// The policy the workers of queue `name` use.
fn policy_of(config: &Config, name: &str) -> QueuePolicy {
    if name == STORAGE_PUSH {
        crate::storage::StoragePushPolicy::from_config(config).queue
    } else {
        QueuePolicy::from_config(&config.jobs)
    }
}

/// Writes one line to stdout. When stdout is closed (the reader went away) the process exits
/// with status 0: there is no one left to tell.
pub fn emit(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    say!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An aligned, borderless table with `headers` that never wraps (operators grep and cut this
/// output); finish it with [`finish_table`].
pub fn table<const N: usize>(headers: [&str; N]) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers);
    t
}

/// Right-aligns columns `cols` of `t` and sets the padding of every column to two spaces
/// between columns (none before the first); call after adding the rows.
pub fn finish_table(t: &mut Table, right: &[usize]) {
    let n = t.column_count();
    for i in 0..n {
        if let Some(col) = t.column_mut(i) {
            col.set_padding((0, if i + 1 == n { 0 } else { 2 }));
            if right.contains(&i) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
}

/// Prints a table, trimming the trailing spaces of every line.
pub fn print_table(t: &Table) {
    for line in t.lines() {
        say!("{}", line.trim_end());
    }
}

/// `Some(v)` as a string, `None` as `-`.
pub fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A Unix time in milliseconds as an RFC 3339 UTC time (to the millisecond).
pub fn format_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || ms.to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
}

/// A duration in milliseconds, short (`850ms`, `12.3s`, `4m05s`).
pub fn format_duration_ms(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// Reports the items of a long operation: a progress bar on a terminal (stderr), one plain
/// line per item on stdout otherwise, nothing in `--json` mode.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
}

impl Progress {
    /// Starts reporting `len` items of an operation described by `what`.
    pub fn new(len: u64, what: &str, json: bool) -> Self {
        if json {
            return Self {
                bar: None,
                lines: false,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(len);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(what.to_owned());
            Self {
                bar: Some(bar),
                lines: false,
            }
        } else {
            Self {
                bar: None,
                lines: true,
            }
        }
    }

    /// One item is done; `line` describes it.
    pub fn item(&self, line: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        } else if self.lines {
            say!("{}", line());
        }
    }

    /// The operation is over.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
