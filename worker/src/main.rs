//! `exai-worker`: the worker process and the operator CLI.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

use exai_shared::config::run_env;
use exai_shared::{Config, db, queue, shutdown, telemetry};
use exai_worker::cli;
use exai_worker::runtime::{self, WorkerOptions};
use tokio_util::sync::CancellationToken;

/// EXAI Queue worker and operator commands. Settings come from the environment, then the
/// settings file of a stack scripts/up started (data/run/env, or EXAI_RUN_ENV), then `.env`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Log at info level even for the commands that only read (queue stats, list, show, sem,
    /// files list, tools), which otherwise log only warnings; RUST_LOG set in the shell decides
    /// too.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a worker until SIGINT or SIGTERM. Applies pending migrations first unless
    /// EXAI_AUTO_MIGRATE=false.
    Run(RunArgs),
    /// Apply pending database migrations and print what was applied. Safe to run from many
    /// processes at once: they take turns, and each migration is applied once.
    Migrate {
        /// Revert the most recently applied migration instead (one per invocation).
        #[arg(long)]
        revert: bool,
    },
    /// Run the orphan cleanup now, in this process, and print its report.
    Cleanup(cli::cleanup::CleanupArgs),
    /// Supabase Storage pushes.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// Inspect and steer the job queues (Redis only).
    Queue {
        #[command(subcommand)]
        command: cli::queue::QueueCommand,
    },
    /// The fleet-wide semaphores: limits, permits in use, live leases (Redis only).
    Sem(cli::sem::SemArgs),
    /// The recorded token usage per session, tool and model (Redis only).
    Usage(cli::usage::UsageArgs),
    /// The provider_file_uploads rows (Postgres only).
    Files {
        #[command(subcommand)]
        command: cli::files::FilesCommand,
    },
    /// The tools clients may call (from this build's registry; no daemon needed).
    Tools {
        #[command(subcommand)]
        command: cli::tools::ToolsCommand,
    },
}

impl Command {
    /// Whether the command only reads: it then logs only warnings unless asked (`-v`,
    /// `RUST_LOG`), so its output is what it printed.
    fn read_only(&self) -> bool {
        use cli::queue::QueueCommand as Q;
        match self {
            Self::Queue { command } => !matches!(
                command,
                Q::Retry(_) | Q::Kill(_) | Q::Pause(_) | Q::Resume(_)
            ),
            Self::Sem(_) | Self::Usage(_) | Self::Files { .. } | Self::Tools { .. } => true,
            Self::Run(_) | Self::Migrate { .. } | Self::Cleanup(_) | Self::Storage { .. } => false,
        }
    }
}

#[derive(Subcommand, Debug)]
enum StorageCommand {
    /// Enqueue a fresh push (with a full retry budget) for rows whose push gave up
    /// (`storage_failed`), or for one row (`storage_failed` or `storage_pending`).
    Redrive(RedriveArgs),
    /// Enqueue a fresh push (with a full retry budget) for every storage_failed row.
    RetryFailed(cli::storage::RetryFailedArgs),
}

/// Flags of `exai-worker storage redrive`.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct RedriveArgs {
    /// Every storage_failed row (up to --limit, least recently changed first).
    #[arg(long)]
    all: bool,
    /// One row, by its id.
    #[arg(long)]
    id: Option<uuid::Uuid>,
    /// The most rows --all re-drives in one run.
    #[arg(long, default_value_t = 1000, requires = "all")]
    limit: u32,
}

/// Flags of `exai-worker run`.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The queues to serve, comma-separated (default: all of them).
    #[arg(long, value_delimiter = ',', default_values_t = queue::ALL_QUEUES.map(String::from))]
    queues: Vec<String>,
    /// Jobs of each queue run at once in this process.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Seconds running jobs may finish after SIGTERM before they are put back in their queue.
    #[arg(long, default_value_t = 10.0)]
    grace_secs: f64,
    /// Seconds an idle worker waits for a push wake-up before it polls anyway.
    #[arg(long, default_value_t = 1.0)]
    poll_secs: f64,
}

impl RunArgs {
    fn options(&self) -> anyhow::Result<WorkerOptions> {
        let secs = |name: &str, v: f64| {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "--{name} must be a non-negative number"
            );
            Ok(Duration::from_secs_f64(v))
        };
        Ok(WorkerOptions {
            queues: self.queues.clone(),
            concurrency: usize::from(self.concurrency),
            grace: secs("grace-secs", self.grace_secs)?,
            poll_fallback: secs("poll-secs", self.poll_secs)?.max(Duration::from_millis(10)),
        })
    }
}

/// Runs the command; an error is printed as one line (`error: …`, its causes after colons,
/// never a backtrace) and exits with status 1. Flag errors exit with 2 (clap).
#[tokio::main]
async fn main() -> ExitCode {
    match run_command(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    if let Command::Tools { command } = &cli.command {
        // The registry needs no configuration.
        return cli::tools::run(command);
    }
    // A log filter the user set in the shell (not one `.env` carries, such as .env.example's
    // `RUST_LOG=info`).
    let filter_asked =
        std::env::var_os("RUST_LOG").is_some() || std::env::var_os("LOG_LEVEL").is_some();
    // The settings of a stack scripts/up started come before `.env` (they say what runs now).
    let run_file = run_env::load()?;
    if let Some(warning) = run_file.as_ref().and_then(run_env::RunEnv::warning) {
        eprintln!("{warning}");
    }
    let config = Config::from_env()?;
    let filter = if cli.command.read_only() && !cli.verbose && !filter_asked {
        "warn"
    } else {
        config.log_filter.as_str()
    };
    telemetry::init_with_filter(config.log_format, filter);
    config.log_legacy_notices();
    if let Some(file) = &run_file {
        tracing::info!(path = %file.path.display(), set = ?file.set, "settings read from the stack's settings file");
    }
    match cli.command {
        Command::Run(args) => run(config, args.options()?, shutdown::on_signal()).await,
        Command::Migrate { revert } => migrate(&config, revert).await,
        Command::Storage {
            command: StorageCommand::Redrive(args),
        } => storage_redrive(&config, &args).await,
        Command::Cleanup(args) => {
            let ok = cli::cleanup::run(&config, &args).await?;
            anyhow::ensure!(ok, "some cleanup sweeps failed (see the errors above)");
            Ok(())
        }
        Command::Storage {
            command: StorageCommand::RetryFailed(args),
        } => cli::storage::retry_failed(&config, &args).await,
        Command::Queue { command } => cli::queue::run(&config, command).await,
        Command::Sem(args) => cli::sem::run(&config, &args).await,
        Command::Usage(args) => cli::usage::run(&config, &args).await,
        Command::Files { command } => cli::files::run(&config, command).await,
        Command::Tools { command } => cli::tools::run(&command),
    }
}

/// The worker: migrations (unless disabled), then work until `shutdown` is cancelled.
async fn run(
    config: Config,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = db::connect_lazy(&config.database)?;
    if config.jobs.auto_migrate {
        // A signal while waiting for another worker's migration lock stops us cleanly: dropping
        // the future closes its session, which rolls back and releases the lock.
        tokio::select! {
            applied = db::migrate(&pool) => {
                for m in applied? {
                    tracing::info!(version = m.version, description = %m.description, "migration applied");
                }
            }
            () = shutdown.cancelled() => {
                tracing::info!("exai-worker stopped before migrations finished");
                return Ok(());
            }
        }
    }
    tracing::info!("exai-worker started");
    let served = runtime::run(&config, options, shutdown).await;
    pool.close().await;
    served?;
    tracing::info!("exai-worker stopped");
    Ok(())
}

/// `exai-worker migrate [--revert]`.
async fn migrate(config: &Config, revert: bool) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    if revert {
        match db::revert_one(&pool).await? {
            Some(m) => println!("reverted {m}"),
            None => println!("no migration to revert"),
        }
    } else {
        let applied = db::migrate(&pool).await?;
        if applied.is_empty() {
            println!("database is up to date");
        }
        for m in applied {
            println!("applied {m}");
        }
    }
    pool.close().await;
    Ok(())
}

/// `exai-worker storage redrive (--all [--limit N] | --id ID)`.
async fn storage_redrive(config: &Config, args: &RedriveArgs) -> anyhow::Result<()> {
    use exai_worker::storage::Redrive;
    let which = match args.id {
        Some(id) => Redrive::Row(id),
        None => Redrive::AllFailed {
            limit: i64::from(args.limit),
        },
    };
    cli::storage::redrive(config, which, false).await
}
