//! `exai-bench mcp`: `test_echo` through the daemon's `/mcp` endpoint (the official Rust SDK's
//! Streamable HTTP client, one MCP session per client) against the same calls through the
//! WebSocket, in one run on one Redis with the same worker processes and the same daemon.
//!
//! 1. `workers` × `exai-worker run --queues tool_calls` and one `exai-daemon` are spawned.
//! 2. **WebSocket, one call at a time**, then **MCP, one call at a time**: `seq_calls` calls,
//!    each sent once the previous result arrived (20 warm-up calls each).
//! 3. **WebSocket throughput**, then **MCP throughput**: `clients` clients (connections,
//!    sessions), each keeping `inflight` calls in flight, `calls` in all.
//! 4. Ratios MCP ÷ WebSocket: what the MCP layer (HTTP request per call, SSE answer, JSON-RPC)
//!    adds on top of the same enqueue and follower.
//! 5. **An upstream MCP tool**: the workers run `mcp-fixture` (a stdio MCP server) as the
//!    upstream `fixture` of `EXAI_MCP_SERVERS`; its no-op tool `slow-read` (arguments `{}`) is
//!    called as `fixture__slow-read` through the WebSocket and through `/mcp`, and directly by an
//!    MCP client that starts its own `mcp-fixture` — one at a time, then `clients` × `inflight` at
//!    once (the direct client: one session per worker process, the same calls in flight in
//!    all). What the queue adds to a call of an upstream tool is the difference from the direct
//!    call.
//!
//! A call's latency is taken by the client: from just before the request is sent until its
//! result is read. Keys live under the run's prefix; the caller deletes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::json;
use tokio::task::JoinSet;

use super::measure::{self, Meter, RunMeter, percentile, procs_cpu_secs, sorted};
use super::procs::TOKEN;
use super::procs::{DaemonProc, WorkerProcs};
use super::report::Report;
use super::ws::{self, WARMUP_CALLS, WsOptions, ratio};
use super::{config, progress, redact};

/// The upstream tool the bench calls: `mcp-fixture`'s no-op `slow-read`, listed under `fixture__`.
const UPSTREAM_TOOL: &str = "slow-read";
const UPSTREAM_NAME: &str = "fixture__slow-read";
/// How long the workers may take to list the fixture's tools in the catalogue.
const UPSTREAM_LISTED_WITHIN: Duration = Duration::from_secs(60);

/// How the numbers of `exai-bench mcp` were taken.
pub const MCP_LEGEND: &[&str] = &[
    "mcp: tools/call of test_echo with arguments {} through /mcp, rmcp's Streamable HTTP client, \
     one MCP session (initialize handshake, 2025-11-25) per client; latency = from just before the \
     request is sent until its result is read (the SSE answer, progress notifications in between).",
    "ws: streaming call_tool of test_echo with arguments {}, as in exai-bench ws; latency = call_tool \
     sent → call_tool_res received.",
    "one at a time: one client, each call sent once the previous result arrived, 20 warm-up calls. \
     Throughput: clients clients (connections for ws, sessions for mcp), 20 warm-up calls each, each \
     keeping inflight calls in flight; timed from the first call until the last result.",
    "ratios: mcp ÷ ws of the same run, same Redis, same daemon, same worker processes.",
    "upstream: fixture__slow-read, mcp-fixture's no-op tool (rmcp stdio server, arguments {}), \
     called through ws and mcp as above (each worker runs its own mcp-fixture child, semaphore \
     mcp.fixture with 100000 permits), and directly: rmcp's stdio client starting its own \
     mcp-fixture, latency = tools/call sent → result read. Added = through the queue − direct.",
    "client CPU/call of the throughput rows: the exai-daemon and exai-worker processes.",
];

/// One MCP client of the bench: a session with the daemon.
type McpClient = RunningService<RoleClient, ()>;

/// Opens an MCP session at `url` with the bench's token, allowing `inflight` requests at once.
async fn mcp_connect(url: &str, inflight: usize) -> anyhow::Result<McpClient> {
    let config = StreamableHttpClientTransportConfig::with_uri(url)
        .auth_header(TOKEN)
        .max_concurrent_requests(inflight.max(1));
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .with_context(|| format!("open an MCP session at {url}"))
}

/// Starts `mcp-fixture` and opens a session with it over stdio (the direct upstream client).
async fn fixture_connect(fixture: &std::path::Path) -> anyhow::Result<McpClient> {
    let child = rmcp::transport::TokioChildProcess::new(tokio::process::Command::new(fixture))
        .with_context(|| format!("start {}", fixture.display()))?;
    ().serve(child)
        .await
        .context("open an MCP session with mcp-fixture")
}

/// Makes calls of `tool` (arguments `{}`) on `client`, `inflight` at once: `n` of them, or —
/// when `left` is given — as long as taking one from `left` succeeds. Returns each call's
/// latency in ms.
async fn mcp_calls(
    client: &McpClient,
    tool: &'static str,
    n: u64,
    inflight: usize,
    left: Option<Arc<AtomicU64>>,
) -> anyhow::Result<Vec<f64>> {
    let sent = Arc::new(AtomicU64::new(0));
    let mut lanes = JoinSet::new();
    for _ in 0..inflight.max(1) {
        let peer = client.peer().clone();
        let (sent, left) = (sent.clone(), left.clone());
        lanes.spawn(async move {
            let mut out = Vec::new();
            loop {
                let take = match &left {
                    Some(l) => l
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                        .is_ok(),
                    None => sent.fetch_add(1, Ordering::Relaxed) < n,
                };
                if !take {
                    return anyhow::Ok(out);
                }
                let t0 = Instant::now();
                let result = peer
                    .call_tool(CallToolRequestParams::new(tool))
                    .await
                    .context("tools/call")?;
                anyhow::ensure!(result.is_error != Some(true), "a call failed: {result:?}");
                out.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        });
    }
    let mut out = Vec::new();
    while let Some(lane) = lanes.join_next().await {
        out.extend(lane??);
    }
    Ok(out)
}

/// Runs every phase under key prefix `prefix` and returns the report.
pub async fn run(opts: WsOptions, prefix: String) -> anyhow::Result<Report> {
    // reqwest's rustls is built without a crypto provider: use ring, as the daemon does.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let base = config(&opts.redis_url, &prefix)?;
    let mut info = exai_shared::redis::RedisHandle::connect(&base.redis)
        .await
        .context("connect to redis")?;
    progress("machine and Redis background load");
    let machine = measure::machine(&mut info).await?;
    let params = json!({
        "clients": opts.clients,
        "inflight": opts.inflight,
        "calls": opts.calls,
        "seq_calls": opts.seq_calls,
        "workers": opts.workers,
        "concurrency": opts.concurrency,
        "redis_url": redact(&opts.redis_url),
        "prefix": prefix,
    });
    let mut report = Report::new(machine, params).with_heading(
        "exai-bench mcp — tools/call through /mcp against call_tool through the WebSocket, one run",
        MCP_LEGEND,
    );
    let run_meter = RunMeter::start(&mut info).await?;

    progress(&format!(
        "starting {} exai-worker processes × {} and exai-daemon",
        opts.workers, opts.concurrency
    ));
    let fixture = super::procs::default_bin("mcp-fixture")?;
    anyhow::ensure!(
        fixture.exists(),
        "{} is missing: cargo build --release -p exai-tests --bins",
        fixture.display()
    );
    let servers = std::env::temp_dir().join(format!("{prefix}-mcp-servers.json"));
    std::fs::write(
        &servers,
        json!({"mcpServers": {"fixture": {"command": fixture.display().to_string()}}}).to_string(),
    )
    .context("write the servers file")?;
    let servers_var = servers.display().to_string();
    let mut workers = WorkerProcs::spawn_env(
        &opts.worker_bin,
        opts.workers,
        opts.concurrency,
        &opts.redis_url,
        &prefix,
        &[
            ("EXAI_MCP_SERVERS", servers_var.as_str()),
            ("EXAI_MCP_FIXTURE_MAX_INFLIGHT", "100000"),
        ],
    )?;
    // An MCP client holds a connection per request in flight (and briefly one more while the
    // previous answer's stream is being closed) plus its GET stream.
    let conns = (opts.clients * (2 * opts.inflight + 2) + 50).to_string();
    let daemon_env = [
        ("EXAI_WS_TOKEN", TOKEN.to_owned()),
        ("EXAI_WS_MAX_CONNECTIONS", conns.clone()),
        ("EXAI_WS_MAX_CONNECTIONS_PER_IP", conns.clone()),
        ("EXAI_WS_MAX_PENDING_HELLO_PER_IP", conns),
        (
            "EXAI_WS_SESSION_MAX_INFLIGHT",
            opts.inflight.max(100).to_string(),
        ),
        ("EXAI_MCP_MAX_SESSIONS", (opts.clients + 10).to_string()),
        ("EXAI_AUTO_MIGRATE", "false".to_owned()),
    ];
    let mut daemon =
        DaemonProc::spawn(&opts.daemon_bin, &opts.redis_url, &prefix, &daemon_env).await?;
    let ws_url = format!("ws://{}/", daemon.addr);
    let mcp_url = format!("http://{}/mcp", daemon.addr);
    let mut pids = workers.pids();
    pids.extend(daemon.pid());

    // One at a time.
    progress(&format!("ws: {} calls one at a time", opts.seq_calls));
    let mut client = ws::connect(&ws_url, 0).await?;
    client.calls(WARMUP_CALLS, 1, None).await?;
    let t0 = Instant::now();
    let ws_seq = sorted(client.calls(opts.seq_calls, 1, None).await?);
    let ws_seq_secs = t0.elapsed().as_secs_f64();
    client.close().await;

    progress(&format!("mcp: {} calls one at a time", opts.seq_calls));
    let mcp = mcp_connect(&mcp_url, 1).await?;
    mcp_calls(&mcp, "test_echo", WARMUP_CALLS, 1, None).await?;
    let t0 = Instant::now();
    let mcp_seq = sorted(mcp_calls(&mcp, "test_echo", opts.seq_calls, 1, None).await?);
    let mcp_seq_secs = t0.elapsed().as_secs_f64();
    let _ = mcp.cancel().await;
    daemon.check()?;

    for (who, secs, lat) in [
        ("ws", ws_seq_secs, &ws_seq),
        ("mcp", mcp_seq_secs, &mcp_seq),
    ] {
        one_at_a_time(&mut report, "", who, opts.seq_calls, secs, lat);
    }

    // Throughput.
    progress(&format!(
        "ws throughput: {} clients × {} in flight, {} calls",
        opts.clients, opts.inflight, opts.calls
    ));
    let ((ws_secs, ws_usage), ws_lat) = ws::throughput(&opts, &ws_url, &mut info, &pids).await?;
    progress(&format!(
        "mcp throughput: {} sessions × {} in flight, {} calls",
        opts.clients, opts.inflight, opts.calls
    ));
    let (mcp_secs, mcp_usage, mcp_lat) = mcp_throughput(&opts, &mcp_url, &mut info, &pids).await?;
    daemon.check()?;
    workers.check()?;
    let mut rates = Vec::new();
    for (who, secs, usage, lat) in [
        ("ws", ws_secs, ws_usage, ws_lat),
        ("mcp", mcp_secs, mcp_usage, mcp_lat),
    ] {
        rates.push(report.rate(
            &format!("{who}_calls_per_s"),
            format!(
                "{who}: {} clients × {} calls in flight, {} worker processes",
                opts.clients, opts.inflight, opts.workers
            ),
            "calls/s",
            opts.calls,
            secs,
            Some(usage),
        ));
        let lat = sorted(lat);
        for (p, tag) in [(0.5, "p50"), (0.99, "p99")] {
            report.millis(
                &format!("{who}_latency_{tag}_ms"),
                format!(
                    "{who} latency {tag}, {} clients × {}",
                    opts.clients, opts.inflight
                ),
                percentile(&lat, p),
            );
        }
    }

    for (i, tag) in ["p50", "p99"].iter().enumerate() {
        let q = [0.5, 0.99][i];
        report.ratio(
            &format!("mcp_vs_ws_seq_latency_{tag}_ratio"),
            format!("latency {tag}: mcp ÷ ws, one at a time"),
            ratio(percentile(&mcp_seq, q), percentile(&ws_seq, q)),
        );
    }
    report.ratio(
        "mcp_vs_ws_rate_ratio",
        "throughput: mcp calls/s ÷ ws calls/s (same concurrency)".to_owned(),
        ratio(rates[1], rates[0]),
    );
    upstream(
        &opts,
        &mut report,
        &ws_url,
        &mcp_url,
        &fixture,
        &mut info,
        &pids,
    )
    .await?;
    daemon.check()?;
    workers.check()?;
    let _ = std::fs::remove_file(&servers);

    progress("stopping exai-daemon and the worker processes");
    let spent = procs_cpu_secs(&pids);
    daemon.stop(Duration::from_secs(15)).await?;
    workers.stop(Duration::from_secs(15)).await?;
    report.load = Some(run_meter.stop(&mut info, spent).await?);
    Ok(report)
}

/// The rows of a one-at-a-time phase: `<key><who>_seq_calls_per_s` and its latency p50 / p99
/// (`key` empty for `test_echo`, `upstream_` for the upstream tool).
fn one_at_a_time(report: &mut Report, key: &str, who: &str, calls: u64, secs: f64, lat: &[f64]) {
    let what = if key.is_empty() {
        who.to_owned()
    } else {
        format!("upstream tool, {who}")
    };
    report.rate(
        &format!("{key}{who}_seq_calls_per_s"),
        format!("{what}: one call at a time"),
        "calls/s",
        calls,
        secs,
        None,
    );
    for (p, tag) in [(0.5, "p50"), (0.99, "p99")] {
        report.millis(
            &format!("{key}{who}_seq_latency_{tag}_ms"),
            format!("{what} latency {tag}, one at a time"),
            percentile(lat, p),
        );
    }
}

/// Phase 5: an upstream MCP tool through the WebSocket, through `/mcp` and called directly.
async fn upstream(
    opts: &WsOptions,
    report: &mut Report,
    ws_url: &str,
    mcp_url: &str,
    fixture: &std::path::Path,
    info: &mut exai_shared::redis::RedisHandle,
    pids: &[u32],
) -> anyhow::Result<()> {
    progress("upstream: waiting for the workers to list mcp-fixture's tools");
    let mut client = ws::connect(ws_url, 0).await?.calling(UPSTREAM_NAME);
    let deadline = Instant::now() + UPSTREAM_LISTED_WITHIN;
    while !client
        .tool_names()
        .await?
        .iter()
        .any(|n| n == UPSTREAM_NAME)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{UPSTREAM_NAME} was not listed within {UPSTREAM_LISTED_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    progress(&format!(
        "upstream: {} calls one at a time, three ways",
        opts.seq_calls
    ));
    client.calls(WARMUP_CALLS, 1, None).await?;
    let t0 = Instant::now();
    let ws_seq = sorted(client.calls(opts.seq_calls, 1, None).await?);
    let ws_secs = t0.elapsed().as_secs_f64();
    client.close().await;
    let mcp = mcp_connect(mcp_url, 1).await?;
    mcp_calls(&mcp, UPSTREAM_NAME, WARMUP_CALLS, 1, None).await?;
    let t0 = Instant::now();
    let mcp_seq = sorted(mcp_calls(&mcp, UPSTREAM_NAME, opts.seq_calls, 1, None).await?);
    let mcp_secs = t0.elapsed().as_secs_f64();
    let _ = mcp.cancel().await;
    let direct = fixture_connect(fixture).await?;
    mcp_calls(&direct, UPSTREAM_TOOL, WARMUP_CALLS, 1, None).await?;
    let t0 = Instant::now();
    let direct_seq = sorted(mcp_calls(&direct, UPSTREAM_TOOL, opts.seq_calls, 1, None).await?);
    let direct_secs = t0.elapsed().as_secs_f64();
    let _ = direct.cancel().await;
    for (who, secs, lat) in [
        ("ws", ws_secs, &ws_seq),
        ("mcp", mcp_secs, &mcp_seq),
        ("direct", direct_secs, &direct_seq),
    ] {
        one_at_a_time(report, "upstream_", who, opts.seq_calls, secs, lat);
    }
    for (who, lat) in [("ws", &ws_seq), ("mcp", &mcp_seq)] {
        report.millis(
            &format!("upstream_{who}_added_p50_ms"),
            format!("upstream tool: what the queue adds to p50 ({who} − direct)"),
            percentile(lat, 0.5) - percentile(&direct_seq, 0.5),
        );
    }

    let total = opts.calls / 4;
    let inflight = opts.clients * opts.inflight;
    progress(&format!(
        "upstream throughput: {total} calls, {inflight} in flight, three ways"
    ));
    let small = WsOptions {
        calls: total,
        ..opts.clone()
    };
    let ((ws_secs, ws_usage), _) =
        ws::throughput_of(&small, ws_url, UPSTREAM_NAME, info, pids).await?;
    let (mcp_secs, mcp_usage, _) = clients_throughput(&small, info, pids, UPSTREAM_NAME, || {
        mcp_connect(mcp_url, opts.inflight)
    })
    .await?;
    let sessions = opts.workers.max(1);
    let direct_opts = WsOptions {
        clients: sessions,
        inflight: inflight.div_ceil(sessions),
        ..small.clone()
    };
    let (direct_secs, _, _) = clients_throughput(&direct_opts, info, &[], UPSTREAM_TOOL, || {
        fixture_connect(fixture)
    })
    .await?;
    let mut rates = Vec::new();
    for (who, secs, usage) in [
        ("ws", ws_secs, Some(ws_usage)),
        ("mcp", mcp_secs, Some(mcp_usage)),
        ("direct", direct_secs, None),
    ] {
        rates.push(report.rate(
            &format!("upstream_{who}_calls_per_s"),
            format!("upstream tool, {who}: {inflight} calls in flight"),
            "calls/s",
            total,
            secs,
            usage,
        ));
    }
    report.ratio(
        "upstream_ws_vs_direct_rate_ratio",
        "upstream tool throughput: ws ÷ direct".to_owned(),
        ratio(rates[0], rates[2]),
    );
    report.ratio(
        "upstream_mcp_vs_direct_rate_ratio",
        "upstream tool throughput: mcp ÷ direct".to_owned(),
        ratio(rates[1], rates[2]),
    );
    Ok(())
}

/// The MCP throughput phase: `clients` sessions, `inflight` calls each.
async fn mcp_throughput(
    opts: &WsOptions,
    url: &str,
    info: &mut exai_shared::redis::RedisHandle,
    pids: &[u32],
) -> anyhow::Result<(f64, measure::Usage, Vec<f64>)> {
    clients_throughput(opts, info, pids, "test_echo", || {
        mcp_connect(url, opts.inflight)
    })
    .await
}

/// A throughput phase of MCP clients: `clients` sessions opened by `connect`, `inflight` calls
/// of `tool` each, `calls` in all.
async fn clients_throughput<F, Fut>(
    opts: &WsOptions,
    info: &mut exai_shared::redis::RedisHandle,
    pids: &[u32],
    tool: &'static str,
    connect: F,
) -> anyhow::Result<(f64, measure::Usage, Vec<f64>)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<McpClient>>,
{
    let mut clients = Vec::with_capacity(opts.clients);
    for _ in 0..opts.clients {
        let c = connect().await?;
        mcp_calls(&c, tool, WARMUP_CALLS, 1, None).await?;
        clients.push(c);
    }
    let left = Arc::new(AtomicU64::new(opts.calls));
    let meter = Meter::start(info, procs_cpu_secs(pids)).await?;
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for c in clients {
        let (left, inflight) = (left.clone(), opts.inflight);
        set.spawn(async move {
            let samples = mcp_calls(&c, tool, u64::MAX, inflight, Some(left)).await?;
            let _ = c.cancel().await;
            anyhow::Ok(samples)
        });
    }
    let mut latencies = Vec::with_capacity(opts.calls as usize);
    while let Some(r) = set.join_next().await {
        latencies.extend(r??);
    }
    let secs = t0.elapsed().as_secs_f64();
    let usage = meter.stop(info, procs_cpu_secs(pids)).await?;
    anyhow::ensure!(latencies.len() as u64 == opts.calls, "mcp calls lost");
    Ok((secs, usage, latencies))
}
