//! `exai-bench idle`: the daemon's memory with many idle WebSocket sessions.
//!
//! Starts an `exai-daemon` (next to this executable) on a free port with connection limits
//! above `connections`, reads its resident set size (VmRSS) once it listens — the baseline —,
//! opens `connections` WebSockets that each complete the hello (authenticated, idle sessions),
//! and reads it again; the difference over the connections is the cost of one idle session.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use exai_shared::redis::RedisHandle;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::measure::{self, proc_status_mib};
use super::procs::{self, DaemonProc, TOKEN};
use super::report::Report;
use super::{config, progress};

/// What the rows mean.
const LEGEND: &[&str] = &[
    "RSS: VmRSS of the exai-daemon process (/proc/<pid>/status) once it listens (idle) and once every \
     connection has said hello and got its hello_ack; per connection = the difference ÷ connections.",
    "Each connection is a real WebSocket from this process over loopback, authenticated, with no call \
     in flight; the daemon's per-connection state is its socket, its task and the session's relay.",
];

/// What to run (see the flags of `exai-bench idle`).
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// The Redis server the daemon uses.
    pub redis_url: String,
    /// Idle connections to open.
    pub connections: usize,
    /// Connections opened at once.
    pub parallel: usize,
    /// The `exai-daemon` binary.
    pub daemon_bin: PathBuf,
}

/// Runs the idle-connection benchmark under `prefix`.
pub async fn run(opts: IdleOptions, prefix: String) -> anyhow::Result<Report> {
    let n = opts.connections;
    procs::raise_open_files_limit(n as u64 + 200)?;
    let base = config(&opts.redis_url, &prefix)?;
    let mut info = RedisHandle::connect(&base.redis)
        .await
        .context("connect to redis")?;
    let machine = measure::machine(&mut info).await?;
    let mut report = Report::new(machine, json!({"connections": n, "prefix": prefix}));
    report.title =
        "exai-bench idle — daemon memory with idle WebSocket sessions, one run".to_owned();
    report.legend = LEGEND;

    progress("starting exai-daemon");
    let limit = (n + 100).to_string();
    let env = [
        ("EXAI_WS_TOKEN", TOKEN.to_owned()),
        ("EXAI_WS_MAX_CONNECTIONS", limit.clone()),
        ("EXAI_WS_MAX_CONNECTIONS_PER_IP", limit.clone()),
        ("EXAI_WS_MAX_PENDING_HELLO_PER_IP", limit),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let daemon = DaemonProc::spawn(&opts.daemon_bin, &opts.redis_url, &prefix, &env).await?;
    let pid = daemon.pid().context("daemon pid")?;
    let addr = daemon.addr;
    let url = format!("ws://{addr}/");

    let idle = proc_status_mib(pid, "VmRSS")?;
    report.amount(
        "daemon_rss_idle_mib",
        "daemon RSS, listening, no connection".to_owned(),
        "MiB",
        idle,
    );

    progress(&format!("opening {n} idle connections"));
    let t0 = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    let mut opened = 0;
    while opened < n {
        let batch = opts.parallel.min(n - opened);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let url = url.clone();
            set.spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
                let hello = json!({"op": "hello", "token": TOKEN});
                ws.send(Message::text(hello.to_string())).await?;
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str().contains("\"ok\":true") => Ok(ws),
                    other => anyhow::bail!("no hello_ack: {other:?}"),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            sockets.push(r??);
        }
        opened += batch;
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let loaded = proc_status_mib(pid, "VmRSS")?;
    report.rate(
        "daemon_connections_per_s",
        format!(
            "connect + hello, {} at a time (the bench opens them)",
            opts.parallel
        ),
        "conns/s",
        n as u64,
        open_secs,
        None,
    );
    report.amount(
        "daemon_rss_idle_connections_mib",
        format!("daemon RSS with {n} idle, authenticated connections"),
        "MiB",
        loaded,
    );
    report.amount(
        "daemon_rss_per_connection_kib",
        "daemon RSS per idle connection".to_owned(),
        "KiB",
        (loaded - idle).max(0.0) * 1024.0 / n as f64,
    );
    report.ratio(
        "daemon_rss_loaded_vs_idle",
        format!("daemon RSS with {n} connections ÷ idle"),
        loaded / idle,
    );
    drop(sockets);
    daemon.stop(Duration::from_secs(10)).await?;
    Ok(report)
}
