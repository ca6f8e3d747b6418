//! `exai-worker`: the worker process and the operator CLI.

use clap::{Parser, Subcommand};
use exai_shared::{Config, shutdown, telemetry};

/// EXAI Queue worker and operator commands. Settings come from the environment (and `.env`).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a worker until SIGINT or SIGTERM.
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_env()?;
    telemetry::init(config.log_format);
    match cli.command {
        Command::Run => {
            let shutdown = shutdown::on_signal();
            tracing::info!("exai-worker started");
            shutdown.cancelled().await;
            tracing::info!("exai-worker stopped");
        }
    }
    Ok(())
}
