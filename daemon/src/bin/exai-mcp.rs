//! `exai-mcp`: a stdio MCP server for MCP clients that only launch commands (Claude Desktop,
//! editors). It forwards every request to a daemon's `/mcp` endpoint; see
//! `exai_daemon::mcp::bridge`.
//!
//! ```text
//! EXAI_WS_TOKEN=… exai-mcp --url http://127.0.0.1:8079/mcp
//! ```
//!
//! Standard output carries only MCP messages; logs go to standard error (`RUST_LOG`, default
//! `info`). Exits 0 when the client closes standard input, 2 when the daemon cannot be reached.

use std::process::ExitCode;

use clap::Parser;

/// Serves MCP on stdio, forwarding to an EXAI daemon's /mcp endpoint.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The daemon's MCP endpoint.
    #[arg(
        long,
        env = "EXAI_MCP_URL",
        default_value = "http://127.0.0.1:8079/mcp"
    )]
    url: String,
    /// The daemon's token (EXAI_WS_TOKEN), sent as `Authorization: Bearer`.
    #[arg(long, env = "EXAI_WS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // The telemetry subscriber writes to standard error only.
    exai_shared::telemetry::init(exai_shared::config::LogFormat::Human);
    let shutdown = exai_shared::shutdown::on_signal();
    match exai_daemon::mcp::bridge::run(&args.url, args.token.as_deref(), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exai-mcp stopped");
            eprintln!("exai-mcp: {e}");
            ExitCode::from(2)
        }
    }
}
