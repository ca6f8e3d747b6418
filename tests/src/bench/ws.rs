//! `exai-bench ws`: the WebSocket daemon end to end, next to the queue alone and raw Redis, in
//! one run on one Redis with the same worker processes.
//!
//! 1. **Raw Redis**: sequential PINGs on one connection (the baseline of every ratio), and
//!    PINGs from `clients` tasks on one multiplexed connection.
//! 2. `workers` × `exai-worker run --queues tool_calls --concurrency C` are spawned.
//! 3. **Queue latency**: `test_echo` jobs enqueued one at a time through the queue API, each
//!    after the previous completed ([`phases::latency`]): enqueue → completed.
//! 4. **Queue throughput**: `calls` jobs enqueued by `clients × inflight` concurrent callers
//!    (one `enqueue` call each), timed until the last completion.
//! 5. An `exai-daemon` is spawned (token set, a free loopback port, connection limits raised
//!    for the clients), then:
//! 6. **WebSocket, one call at a time**: one client, `seq_calls` streaming `call_tool`s of
//!    `test_echo`, each sent once the previous result arrived.
//! 7. **WebSocket throughput**: `clients` connections (each its own session, hello done before
//!    the clock starts), each keeping `inflight` streaming calls in flight, `calls` in all.
//!
//! With a baseline daemon binary, steps 5–7 are a round, run `rounds` times against each
//! binary, alternating (baseline, current, current, baseline, …), on the same Redis and worker
//! processes; each daemon's rounds are pooled and the current ÷ baseline ratios added.
//!
//! A call's latency is taken by the client: from just before its `call_tool` frame is sent to
//! the arrival of its `call_tool_res`. Every key lives under the run's prefix; the caller
//! deletes them with [`super::cleanup`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::measure::{self, Meter, RunMeter, percentile, procs_cpu_secs, sorted};
use super::procs::{DaemonProc, TOKEN, WorkerProcs};
use super::report::{Report, thousands};
use super::tracker::Tracker;
use super::{config, noop_payload, phases, progress, queue, redact};

/// What to run (see the flags of `exai-bench ws`).
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// The Redis server.
    pub redis_url: String,
    /// WebSocket clients of the throughput phase.
    pub clients: usize,
    /// Calls each client keeps in flight.
    pub inflight: usize,
    /// Calls of the throughput phase (all clients together), and jobs of the queue throughput
    /// phase.
    pub calls: u64,
    /// Calls of the one-at-a-time phase, and jobs of the queue latency phase.
    pub seq_calls: u64,
    /// Worker processes.
    pub workers: usize,
    /// Jobs at once per worker process.
    pub concurrency: usize,
    /// How long each raw baseline runs.
    pub raw_for: Duration,
    /// The `exai-worker` binary.
    pub worker_bin: PathBuf,
    /// The `exai-daemon` binary.
    pub daemon_bin: PathBuf,
    /// Another `exai-daemon` binary to run the WebSocket phases against too, in the same run
    /// (the same Redis and worker processes), alternating with `daemon_bin`.
    pub baseline_daemon_bin: Option<PathBuf>,
    /// Rounds of the WebSocket phases per daemon when there is a baseline: in order baseline,
    /// current, then current, baseline, and so on (A B B A for 2), so a drift of the machine
    /// weighs on both alike.
    pub rounds: usize,
}

/// Calls each client makes before the clock starts (connections warm, scripts loaded).
pub(super) const WARMUP_CALLS: u64 = 20;

/// How long one expected frame may take before the run gives up.
const FRAME_WAIT: Duration = Duration::from_secs(30);

const LEGEND_CPU: &str = "client CPU/job of the ws and queue throughput rows: the exai-daemon and \
     exai-worker processes; the bench's WebSocket clients and producers are not counted.";
const LEGEND_QUEUE_LATENCY: &str = "queue latency: test_echo jobs ({tool: test_echo, arguments: {}}) \
     enqueued one at a time through the queue API onto the idle workers, each once the previous \
     completed, 20 warm-up jobs unreported; completed = Redis ran its completion (the invalidation push \
     of the queue's completed index).";
const LEGEND_QUEUE_RATE: &str = "queue throughput: the same jobs, one enqueue call each, from clients × \
     inflight concurrent callers, timed from the first enqueue until the last completion.";
const LEGEND_WS: &str = "ws: streaming call_tool of test_echo with arguments {} (request_id set); \
     latency = from just before the call_tool frame is sent until its call_tool_res arrives, as the \
     client sees it (ack and progress frames in between). One at a time: one client, each call sent once \
     the previous result arrived, 20 warm-up calls. Throughput: clients connections, each its own session \
     (hello and 20 warm-up calls before the clock), each keeping inflight calls in flight; timed from the \
     first call until the last result. The daemon is started for these phases, after the queue's.";
const LEGEND_RATIOS: &str =
    "ratios: ws ÷ queue of the same run, same Redis, same worker processes.";
const LEGEND_BASELINE: &str = "baseline: the ws phases run against two daemon binaries in turn, \
     each started afresh for its round with the same environment (token, connection limits raised for \
     the clients), on the same Redis and the same worker processes, in the order baseline, current, \
     current, baseline (and so on): each daemon's rows pool its rounds (calls ÷ summed time, latencies \
     merged); current ÷ baseline is the cost of what changed between them. The rate of every round, in \
     order, is in the notes.";

/// How the numbers of `exai-bench ws` were taken.
pub const WS_LEGEND: &[&str] = &[
    LEGEND_CPU,
    LEGEND_QUEUE_LATENCY,
    LEGEND_QUEUE_RATE,
    LEGEND_WS,
    LEGEND_RATIOS,
];

/// [`WS_LEGEND`] of a run with a baseline daemon.
pub const WS_BASELINE_LEGEND: &[&str] = &[
    LEGEND_CPU,
    LEGEND_QUEUE_LATENCY,
    LEGEND_QUEUE_RATE,
    LEGEND_WS,
    LEGEND_RATIOS,
    LEGEND_BASELINE,
];

/// Which daemon binary a round of the WebSocket phases runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// `--daemon-bin`, the code being measured.
    Current,
    /// `--baseline-daemon-bin`.
    Baseline,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Current => "current",
            Which::Baseline => "baseline",
        }
    }
}

/// The order of the rounds: the current daemon once without a baseline; with one, `rounds`
/// pairs alternating which goes first (baseline, current, current, baseline, …).
fn round_order(baseline: bool, rounds: usize) -> Vec<Which> {
    if !baseline {
        return vec![Which::Current];
    }
    (0..rounds.max(1))
        .flat_map(|i| {
            if i % 2 == 0 {
                [Which::Baseline, Which::Current]
            } else {
                [Which::Current, Which::Baseline]
            }
        })
        .collect()
}

/// What one round of the WebSocket phases measured.
struct Round {
    /// One-at-a-time latencies, ms.
    seq: Vec<f64>,
    /// Seconds of the one-at-a-time phase.
    seq_secs: f64,
    /// Seconds and cost of the throughput phase.
    rate: (f64, measure::Usage),
    /// Throughput latencies, ms.
    lat: Vec<f64>,
    /// CPU seconds the round's daemon used in all.
    daemon_cpu: f64,
}

/// The rounds of one daemon, pooled.
#[derive(Default)]
struct Pooled {
    seq: Vec<f64>,
    seq_secs: f64,
    seq_calls: u64,
    secs: f64,
    usage: measure::Usage,
    calls: u64,
    lat: Vec<f64>,
}

impl Pooled {
    fn add(&mut self, r: Round, opts: &WsOptions) {
        self.seq.extend(r.seq);
        self.seq_secs += r.seq_secs;
        self.seq_calls += opts.seq_calls;
        self.secs += r.rate.0;
        self.usage += r.rate.1;
        self.calls += opts.calls;
        self.lat.extend(r.lat);
    }

    /// Adds this daemon's rows under `prefix` (`""` for the current daemon, whose keys are the
    /// ones `exai-bench ws` always had); returns (seq p50, seq p99, calls/s, p50, p99).
    fn rows(self, report: &mut Report, prefix: &str, who: &str, opts: &WsOptions) -> [f64; 5] {
        let seq = sorted(self.seq);
        let seq_p = [0.5, 0.99].map(|p| percentile(&seq, p));
        report.rate(
            &format!("{prefix}ws_seq_calls_per_s"),
            format!("ws{who}: one client, one call at a time"),
            "calls/s",
            self.seq_calls,
            self.seq_secs,
            None,
        );
        for (v, tag) in seq_p.iter().zip(["p50", "p99"]) {
            report.millis(
                &format!("{prefix}ws_seq_latency_{tag}_ms"),
                format!(
                    "ws{who} latency {tag}, call_tool sent → call_tool_res received, one at a time"
                ),
                *v,
            );
        }
        let rate = report.rate(
            &format!("{prefix}ws_calls_per_s"),
            format!(
                "ws{who}: {} clients × {} calls in flight, {} worker processes",
                opts.clients, opts.inflight, opts.workers
            ),
            "calls/s",
            self.calls,
            self.secs,
            Some(self.usage),
        );
        let lat = sorted(self.lat);
        let p = [0.5, 0.99].map(|q| percentile(&lat, q));
        for (v, tag) in p.iter().zip(["p50", "p99"]) {
            report.millis(
                &format!("{prefix}ws_latency_{tag}_ms"),
                format!(
                    "ws{who} latency {tag}, call_tool sent → call_tool_res received, {} clients × {}",
                    opts.clients, opts.inflight
                ),
                *v,
            );
        }
        [seq_p[0], seq_p[1], rate, p[0], p[1]]
    }
}

/// Runs every phase under key prefix `prefix` and returns the report. Keys are left for
/// [`super::cleanup`]; the processes are stopped (or killed by their guards, on error).
pub async fn run(opts: WsOptions, prefix: String) -> anyhow::Result<Report> {
    let base = config(&opts.redis_url, &prefix)?;
    let conn = exai_shared::redis::RedisHandle::connect(&base.redis)
        .await
        .context("connect to redis")?;
    let mut info = exai_shared::redis::RedisHandle::connect(&base.redis)
        .await
        .context("connect to redis")?;
    progress("machine and Redis background load");
    let machine = measure::machine(&mut info).await?;
    let mut params = json!({
        "clients": opts.clients,
        "inflight": opts.inflight,
        "calls": opts.calls,
        "seq_calls": opts.seq_calls,
        "workers": opts.workers,
        "concurrency": opts.concurrency,
        "redis_url": redact(&opts.redis_url),
        "prefix": prefix,
        "daemon_bin": opts.daemon_bin.display().to_string(),
        "worker_bin": opts.worker_bin.display().to_string(),
    });
    let legend = match &opts.baseline_daemon_bin {
        Some(b) => {
            params["baseline_daemon_bin"] = json!(b.display().to_string());
            params["rounds"] = json!(opts.rounds);
            WS_BASELINE_LEGEND
        }
        None => WS_LEGEND,
    };
    let mut report = Report::new(machine, params).with_heading(
        "exai-bench ws — the WebSocket daemon against the queue alone and raw Redis, one run",
        legend,
    );
    let run_meter = RunMeter::start(&mut info).await?;

    progress("raw Redis: sequential PING");
    phases::sequential_baseline(&conn, opts.raw_for, &mut report).await?;
    progress("raw Redis: concurrent PING");
    let (n, secs) = phases::ping_concurrent(&conn, opts.clients, opts.raw_for).await?;
    report.baseline.pipelined_per_s = report.rate(
        "redis_pipelined_per_s",
        format!(
            "raw Redis: PING, {} concurrent tasks on 1 multiplexed connection",
            opts.clients
        ),
        "ops/s",
        n,
        secs,
        None,
    );

    progress(&format!(
        "starting {} exai-worker processes × {}",
        opts.workers, opts.concurrency
    ));
    let (q, keys) = queue(&conn, &base);
    let mut workers = WorkerProcs::spawn(
        &opts.worker_bin,
        opts.workers,
        opts.concurrency,
        &opts.redis_url,
        &prefix,
    )?;
    let pids = workers.pids();
    let payload = noop_payload()?;

    progress(&format!(
        "queue latency: {} jobs one at a time",
        opts.seq_calls
    ));
    let lat = phases::latency(
        &q,
        &opts.redis_url,
        &keys.completed(),
        &payload,
        opts.seq_calls,
        None,
    )
    .await?;
    workers.check()?;
    let queue_p = [0.5, 0.99].map(|p| percentile(&sorted(lat.completed.clone()), p));
    super::latency_rows(
        &mut report,
        "queue_",
        &format!("{} idle worker processes", opts.workers),
        lat,
    );

    let callers = opts.clients * opts.inflight;
    progress(&format!(
        "queue throughput: {} jobs from {callers} concurrent callers",
        opts.calls
    ));
    let mut stats = Tracker::start(&opts.redis_url, &[keys.stats()]).await?;
    let before = q.counts().await?.completed;
    stats.clear();
    let meter = Meter::start(&mut info, procs_cpu_secs(&pids)).await?;
    let t0 = Instant::now();
    phases::enqueue_single(&q, &payload, opts.calls, callers).await?;
    let done = phases::wait_completed(
        &q,
        &mut stats,
        before + opts.calls,
        Some(&mut workers),
        super::drain_limit(opts.calls),
    )
    .await?;
    let usage = meter.stop(&mut info, procs_cpu_secs(&pids)).await?;
    let queue_rate = report.rate(
        "queue_calls_per_s",
        format!(
            "queue: enqueue → completed, {callers} concurrent callers, {} worker processes",
            opts.workers
        ),
        "jobs/s",
        opts.calls,
        (done - t0).as_secs_f64(),
        Some(usage),
    );

    let conns = (opts.clients + 10).to_string();
    // What both daemons need: a daemon ignores the variables it does not know.
    let daemon_env = [
        ("EXAI_WS_TOKEN", TOKEN.to_owned()),
        ("EXAI_WS_MAX_CONNECTIONS", conns.clone()),
        ("EXAI_WS_MAX_CONNECTIONS_PER_IP", conns.clone()),
        ("EXAI_WS_MAX_PENDING_HELLO_PER_IP", conns),
        (
            "EXAI_WS_SESSION_MAX_INFLIGHT",
            opts.inflight.max(100).to_string(),
        ),
        ("EXAI_AUTO_MIGRATE", "false".to_owned()),
    ];
    let mut current = Pooled::default();
    let mut baseline = Pooled::default();
    let mut daemons_cpu = 0.0;
    let mut rates = Vec::new();
    let order = round_order(opts.baseline_daemon_bin.is_some(), opts.rounds);
    for (i, which) in order.iter().enumerate() {
        let bin = match (which, &opts.baseline_daemon_bin) {
            (Which::Baseline, Some(b)) => b,
            _ => &opts.daemon_bin,
        };
        progress(&format!(
            "ws round {} of {}: the {} daemon ({})",
            i + 1,
            order.len(),
            which.name(),
            bin.display()
        ));
        let r = ws_round(
            &opts,
            bin,
            &daemon_env,
            &prefix,
            &mut info,
            &pids,
            &mut workers,
        )
        .await?;
        daemons_cpu += r.daemon_cpu;
        rates.push(format!(
            "{} {}",
            which.name(),
            thousands(opts.calls as f64 / r.rate.0.max(1e-9))
        ));
        match which {
            Which::Current => current.add(r, &opts),
            Which::Baseline => baseline.add(r, &opts),
        }
    }
    let [seq50, seq99, ws_rate, p50, p99] = current.rows(&mut report, "", "", &opts);
    for (v, queue, tag) in [(seq50, queue_p[0], "p50"), (seq99, queue_p[1], "p99")] {
        report.ratio(
            &format!("ws_vs_queue_latency_{tag}_ratio"),
            format!("latency {tag}: ws one at a time ÷ queue enqueue → completed"),
            ratio(v, queue),
        );
    }
    report.ratio(
        "ws_vs_queue_rate_ratio",
        "throughput: ws calls/s ÷ queue jobs/s (same concurrency)".to_owned(),
        ratio(ws_rate, queue_rate),
    );
    if opts.baseline_daemon_bin.is_some() {
        let theirs = baseline.rows(&mut report, "baseline_", " (baseline daemon)", &opts);
        let ours = [seq50, seq99, ws_rate, p50, p99];
        let rows = [
            (
                2,
                "vs_baseline_ws_calls_ratio",
                "throughput: current ÷ baseline daemon, calls/s",
            ),
            (
                3,
                "vs_baseline_ws_latency_p50_ratio",
                "latency p50 under load: current ÷ baseline daemon",
            ),
            (
                4,
                "vs_baseline_ws_latency_p99_ratio",
                "latency p99 under load: current ÷ baseline daemon",
            ),
            (
                0,
                "vs_baseline_ws_seq_latency_p50_ratio",
                "latency p50 one at a time: current ÷ baseline daemon",
            ),
            (
                1,
                "vs_baseline_ws_seq_latency_p99_ratio",
                "latency p99 one at a time: current ÷ baseline daemon",
            ),
        ];
        for (i, key, label) in rows {
            report.ratio(key, label.to_owned(), ratio(ours[i], theirs[i]));
        }
        report.notes.push(format!(
            "ws throughput of each round, in order (calls/s): {}",
            rates.join(", ")
        ));
    }

    progress("stopping the worker processes");
    let spent = procs_cpu_secs(&pids) + daemons_cpu;
    workers.stop(Duration::from_secs(15)).await?;
    report.load = Some(run_meter.stop(&mut info, spent).await?);
    if let Some(l) = &report.load
        && l.other_cores > 0.25
    {
        report.notes.push(format!(
            "other processes kept {:.2} of {} cores busy during the run: rates and tail latencies \
             are pessimistic",
            l.other_cores, report.machine.nproc
        ));
    }
    Ok(report)
}

/// One round of the WebSocket phases against a daemon of `bin`, started for it and stopped
/// after it: one call at a time, then the throughput phase.
async fn ws_round(
    opts: &WsOptions,
    bin: &std::path::Path,
    env: &[(&str, String)],
    prefix: &str,
    info: &mut exai_shared::redis::RedisHandle,
    worker_pids: &[u32],
    workers: &mut WorkerProcs,
) -> anyhow::Result<Round> {
    let mut daemon = DaemonProc::spawn(bin, &opts.redis_url, prefix, env).await?;
    let url = format!("ws://{}/", daemon.addr);
    let mut pids = worker_pids.to_vec();
    pids.extend(daemon.pid());

    progress(&format!("ws: {} calls one at a time", opts.seq_calls));
    let mut client = connect(&url, 0).await?;
    client.calls(WARMUP_CALLS, 1, None).await?;
    let t0 = Instant::now();
    let seq = client.calls(opts.seq_calls, 1, None).await?;
    let seq_secs = t0.elapsed().as_secs_f64();
    client.close().await;
    daemon.check()?;

    progress(&format!(
        "ws throughput: {} clients × {} in flight, {} calls",
        opts.clients, opts.inflight, opts.calls
    ));
    let (rate, lat) = throughput(opts, &url, info, &pids).await?;
    daemon.check()?;
    workers.check()?;
    let daemon_cpu = measure::proc_cpu_secs(daemon.pid());
    daemon.stop(Duration::from_secs(15)).await?;
    Ok(Round {
        seq,
        seq_secs,
        rate,
        lat,
        daemon_cpu,
    })
}

/// `a ÷ b`, 0 when `b` is not positive.
pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The throughput phase: connects every client and warms it up, then times `calls` calls
/// spread over the clients. Returns ((seconds, usage), latencies in ms).
pub(super) async fn throughput(
    opts: &WsOptions,
    url: &str,
    info: &mut exai_shared::redis::RedisHandle,
    pids: &[u32],
) -> anyhow::Result<((f64, measure::Usage), Vec<f64>)> {
    throughput_of(opts, url, "test_echo", info, pids).await
}

/// [`throughput`] of calls of `tool` (arguments `{}`).
pub(super) async fn throughput_of(
    opts: &WsOptions,
    url: &str,
    tool: &str,
    info: &mut exai_shared::redis::RedisHandle,
    pids: &[u32],
) -> anyhow::Result<((f64, measure::Usage), Vec<f64>)> {
    let mut clients = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        clients.push(connect(url, i + 1).await?.calling(tool));
    }
    let mut warm = JoinSet::new();
    for mut c in clients {
        warm.spawn(async move {
            c.calls(WARMUP_CALLS, 1, None).await?;
            anyhow::Ok(c)
        });
    }
    let mut clients = Vec::with_capacity(opts.clients);
    while let Some(c) = warm.join_next().await {
        clients.push(c??);
    }
    let left = Arc::new(AtomicU64::new(opts.calls));
    let meter = Meter::start(info, procs_cpu_secs(pids)).await?;
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for mut c in clients {
        let (left, inflight) = (left.clone(), opts.inflight);
        set.spawn(async move {
            let samples = c.calls(u64::MAX, inflight, Some(&left)).await?;
            c.close().await;
            anyhow::Ok(samples)
        });
    }
    let mut latencies = Vec::with_capacity(opts.calls as usize);
    while let Some(r) = set.join_next().await {
        latencies.extend(r??);
    }
    let secs = t0.elapsed().as_secs_f64();
    let usage = meter.stop(info, procs_cpu_secs(pids)).await?;
    anyhow::ensure!(
        latencies.len() as u64 == opts.calls,
        "{} of {} calls returned a result",
        latencies.len(),
        opts.calls
    );
    Ok(((secs, usage), latencies))
}

/// One WebSocket client of the bench, past its hello.
pub(super) struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Distinguishes the client's request ids in messages.
    name: String,
    /// The next request id's number.
    next: u64,
    /// The tool its calls call (`test_echo` unless [`WsClient::calling`] says otherwise).
    tool: String,
}

/// Connects to `url` and says hello with the bench's token.
pub(super) async fn connect(url: &str, index: usize) -> anyhow::Result<WsClient> {
    // Small frames, sent at once (no Nagle delay), as an interactive client would.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .with_context(|| format!("connect to {url}"))?;
    let mut c = WsClient {
        ws,
        name: format!("c{index}"),
        next: 0,
        tool: "test_echo".to_owned(),
    };
    c.send(&json!({"op": "hello", "token": TOKEN, "clientInfo": {"name": "exai-bench"}}))
        .await?;
    let ack = c.recv().await?;
    anyhow::ensure!(
        ack["op"] == "hello_ack" && ack["ok"] == true,
        "hello refused: {ack}"
    );
    Ok(c)
}

impl WsClient {
    /// Sends one JSON frame.
    async fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .context("send a frame")
    }

    /// The next JSON frame (pings are answered by the library), failing after [`FRAME_WAIT`].
    async fn recv(&mut self) -> anyhow::Result<Value> {
        loop {
            let msg = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .map_err(|_| anyhow::anyhow!("no frame from the daemon for {FRAME_WAIT:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str()).context("a frame that is not JSON");
                }
                Some(Ok(Message::Close(frame))) => anyhow::bail!("the daemon closed: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e).context("read a frame"),
                None => anyhow::bail!("the daemon ended the connection"),
            }
        }
    }

    /// The same client, its calls calling `tool` (with arguments `{}`).
    pub(super) fn calling(mut self, tool: &str) -> Self {
        self.tool = tool.to_owned();
        self
    }

    /// The tools the daemon lists, by name.
    pub(super) async fn tool_names(&mut self) -> anyhow::Result<Vec<String>> {
        let id = format!("{}-{}", self.name, self.next);
        self.next += 1;
        self.send(&json!({"op": "list_tools", "request_id": id}))
            .await?;
        loop {
            let frame = self.recv().await?;
            if frame["op"] == "list_tools_res" && frame["request_id"] == id.as_str() {
                let names = frame["tools"].as_array().cloned().unwrap_or_default();
                return Ok(names
                    .iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_owned))
                    .collect());
            }
        }
    }

    /// Makes streaming calls of its tool (`test_echo` unless [`WsClient::calling`] said
    /// otherwise), keeping up to `inflight` in flight: `n` of them, or —
    /// when `left` is given — as long as taking one from `left` succeeds. Returns each call's
    /// latency in milliseconds. A call that fails ends the run.
    pub(super) async fn calls(
        &mut self,
        n: u64,
        inflight: usize,
        left: Option<&AtomicU64>,
    ) -> anyhow::Result<Vec<f64>> {
        let mut pending: HashMap<String, Instant> = HashMap::with_capacity(inflight);
        let mut out = Vec::new();
        let mut sent = 0u64;
        let take = |sent: u64| match left {
            Some(l) => l
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok(),
            None => sent < n,
        };
        loop {
            while pending.len() < inflight && take(sent) {
                let id = format!("{}-{}", self.name, self.next);
                self.next += 1;
                sent += 1;
                let call = json!({"op": "call_tool", "request_id": id, "name": self.tool, "arguments": {}});
                pending.insert(id, Instant::now());
                self.send(&call).await?;
            }
            if pending.is_empty() {
                return Ok(out);
            }
            let frame = self.recv().await?;
            match frame["op"].as_str() {
                Some("call_tool_res") => {
                    let id = frame["request_id"].as_str().unwrap_or_default();
                    let Some(t0) = pending.remove(id) else {
                        anyhow::bail!("a result for a call not in flight: {frame}");
                    };
                    let at = Instant::now();
                    anyhow::ensure!(frame.get("error").is_none(), "a call failed: {frame}");
                    out.push(at.duration_since(t0).as_secs_f64() * 1e3);
                }
                Some("call_tool_ack") => {
                    anyhow::ensure!(frame["accepted"] == true, "a call was refused: {frame}");
                }
                Some("progress" | "stream_chunk") => {}
                _ => anyhow::bail!("unexpected frame: {frame}"),
            }
        }
    }

    /// Closes the connection politely.
    pub(super) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
