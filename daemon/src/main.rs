//! `exai-daemon`: the WebSocket + HTTP server. At this stage it loads its configuration, refuses
//! unsafe settings, and waits for SIGINT or SIGTERM.

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
    telemetry::init(config.log_format);
    if !config.ws_is_loopback() && config.ws.token.is_none() {
        anyhow::bail!(
            "invalid configuration: EXAI_WS_TOKEN: required when EXAI_WS_HOST ({}) is not a loopback address",
            config.ws.host
        );
    }
    let shutdown = shutdown::on_signal();
    tracing::info!(host = %config.ws.host, port = config.ws.port, "exai-daemon started");
    shutdown.cancelled().await;
    tracing::info!("exai-daemon stopped");
    Ok(())
}
