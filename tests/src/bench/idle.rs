//! `exai-bench idle`: the daemon's memory with many idle WebSocket sessions.
//!
//! Starts an `exai-daemon` (next to this executable) on a free port with connection limits
//! above `connections`, reads its resident set size (VmRSS) once it listens — the baseline —,
//! opens `connections` WebSockets that each complete the hello (authenticated, idle sessions),
//! and reads it again; the difference over the connections is the cost of one idle session.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use exai_shared::redis::RedisHandle;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use super::measure;
use super::report::Report;
use super::{config, progress};

/// The token of the bench's daemon.
const TOKEN: &str = "bench-token-0123456789abcdef";

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

/// The soft limit on open files of this process.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// VmRSS of `pid`, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// Runs the idle-connection benchmark under `prefix`.
pub async fn run(opts: IdleOptions, prefix: String) -> anyhow::Result<Report> {
    let n = opts.connections;
    if let Some(limit) = open_files_limit() {
        anyhow::ensure!(
            limit as usize > n + 200,
            "the open-files limit ({limit}) is too low for {n} connections: raise it (ulimit -n) \
             or pass a smaller --connections"
        );
    }
    anyhow::ensure!(
        opts.daemon_bin.exists(),
        "{} does not exist: build it first (cargo build --release -p exai-daemon -p exai-tests)",
        opts.daemon_bin.display()
    );
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
    let mut daemon = tokio::process::Command::new(&opts.daemon_bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", &opts.redis_url)
        .env("EXAI_REDIS_PREFIX", &prefix)
        .env("EXAI_WS_PORT", "0")
        .env("EXAI_WS_TOKEN", TOKEN)
        .env("EXAI_WS_MAX_CONNECTIONS", &limit)
        .env("EXAI_WS_MAX_CONNECTIONS_PER_IP", &limit)
        .env("EXAI_WS_MAX_PENDING_HELLO_PER_IP", &limit)
        .env("EXAI_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn exai-daemon")?;
    let pid = daemon.id().context("daemon pid")?;
    let mut lines = BufReader::new(daemon.stdout.take().context("daemon stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("the daemon did not print its address")??
        .context("the daemon exited")?;
    let addr = first
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line: {first}"))?
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("ws://{addr}/");

    let idle = rss_mib(pid)?;
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
    let loaded = rss_mib(pid)?;
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
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;
    Ok(report)
}
