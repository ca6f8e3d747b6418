//! `exai-daemon`: loads its configuration (whose validation refuses unsafe settings, such as a
//! non-loopback address without a token), binds its port, connects to Redis, prints
//! `listening on <addr>` as the first line of standard output once it is ready (so a supervisor
//! or a test that asked for port 0 learns the port), and serves until SIGINT or SIGTERM.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use exai_shared::{Config, shutdown, telemetry};

/// The EXAI Queue WebSocket daemon. All settings come from the environment (and `.env`); see
/// `.env.example`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    let config = Config::from_env()?;
    telemetry::init_with_filter(config.log_format, &config.log_filter);
    config.log_legacy_notices();
    if config.ws.token.is_none() {
        tracing::warn!("EXAI_WS_TOKEN is not set: clients are not authenticated (loopback only)");
    }
    if config.ws.admin_token.is_none() {
        tracing::info!("EXAI_ADMIN_TOKEN is not set: the admin API is closed");
    }
    let shutdown = shutdown::on_signal();
    let listener = tokio::net::TcpListener::bind((config.ws.host, config.ws.port))
        .await
        .with_context(|| format!("bind {}:{}", config.ws.host, config.ws.port))?;
    let addr = listener.local_addr().context("listener address")?;
    let limits = config.ws.limits.clone();
    let app = exai_daemon::App::connect(config, limits, shutdown)
        .await
        .context("exai-daemon")?;
    {
        let mut stdout = std::io::stdout().lock();
        // Best effort: a closed standard output must not stop the daemon.
        let _ = writeln!(stdout, "listening on {addr}");
        let _ = stdout.flush();
    }
    tracing::info!(%addr, "exai-daemon started");
    exai_daemon::server::serve(listener, app)
        .await
        .context("exai-daemon")?;
    tracing::info!("exai-daemon stopped");
    Ok(())
}
