//! `exai-bench admission`: chat calls from heavy and light clients against a small Moonshot
//! account (exai-sim with a tier), with provider-aware admission on — adaptive concurrency,
//! rate budgets, fair share — and then with static limits as before, in one run.
//!
//! Each mode starts its own exai-sim (so its bill is the mode's), `workers` × `exai-worker run`
//! and one `exai-daemon`, under its own key prefix:
//!
//! - **admission**: `EXAI_AIMD_ENABLED=true`, `EXAI_KIMI_RPM`/`EXAI_KIMI_TPM` set to the tier,
//!   fair share by session (`EXAI_FAIRNESS_KEY=session`);
//! - **static**: `EXAI_AIMD_ENABLED=false`, no budgets, FIFO (`EXAI_FAIRNESS_KEY=none`): the
//!   configured limits (24 global, 6 kimi) as they are.
//!
//! In both, `heavy_clients` WebSocket clients (one session each) send `heavy_calls` chat calls at
//! once, and one light client sends one call every `light_every_ms` until the heavy calls are
//! done. Every call asks for the same completion cap (`EXAI_KIMI_MAX_COMPLETION_TOKENS`).
//!
//! Measured per mode: calls whose result was an error (`client_errors`), the 429s the emulator
//! sent (`provider_429s`), completed provider calls per minute ÷ the tier's RPM from the first
//! to the last (`rpm_utilisation`), p99 of each call's wait — from when the client sent it until
//! the provider began answering it (its first streamed text, less the emulator's fixed latency) —
//! for the light and the heavy clients, and the
//! tokens recorded by the workers' cost accounting ÷ the tokens the emulator billed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use exai_shared::Config;
use exai_shared::keys::Keys;
use exai_shared::redis::RedisHandle;
use exai_shared::usage::UsageLedger;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::measure::{self, percentile, sorted};
use super::procs::{DaemonProc, TOKEN, WorkerProcs};
use super::progress;
use super::report::Report;

/// The emulator's key.
const SIM_KEY: &str = "sk-exai-sim-admission";

/// How the numbers of `exai-bench admission` were taken.
pub const ADMISSION_LEGEND: &[&str] = &[
    "calls: chat (prompt of ~40 bytes, the completion cap of EXAI_KIMI_MAX_COMPLETION_TOKENS) through \
     the WebSocket daemon, one session per client; heavy clients send all their calls at once, the \
     light client one call every light_every_ms until the heavy calls are done.",
    "admission: adaptive concurrency on, EXAI_KIMI_RPM and EXAI_KIMI_TPM set to the tier, fair share \
     by session. static: adaptive concurrency off, no budgets, FIFO — the configured 24/6 permits.",
    "client errors: call_tool_res frames with an error. provider 429s: chat requests exai-sim \
     answered 429. RPM utilisation: provider calls admitted per minute, from the first to the last (over \
     at least one minute), ÷ the tier's RPM.",
    "wait: call_tool sent → its first stream_chunk, less exai-sim's chat latency: until the provider \
     began answering (successful calls), p99. \
     tokens accounted: tokens the workers recorded ÷ tokens exai-sim billed (prompt + completion).",
];

/// What `exai-bench admission` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Redis (single node).
    pub redis_url: String,
    /// Heavy clients.
    pub heavy_clients: usize,
    /// Calls per heavy client.
    pub heavy_calls: usize,
    /// The light client's interval between calls.
    pub light_every: Duration,
    /// The light client's calls outstanding at most: a tick that finds this many unanswered
    /// sends its call when the next answer comes (`None`: every tick sends).
    pub light_in_flight: Option<usize>,
    /// The tier: calls in flight.
    pub tier_concurrency: u64,
    /// The tier: requests per minute.
    pub tier_rpm: u64,
    /// The tier: tokens per minute.
    pub tier_tpm: u64,
    /// The emulator's and the budgets' minute.
    pub minute: Duration,
    /// How long exai-sim takes to answer a chat call.
    pub chat_latency: Duration,
    /// The completion cap of every call.
    pub completion_tokens: u64,
    /// Worker processes.
    pub workers: usize,
    /// Jobs at once per worker process.
    pub concurrency: usize,
    /// The binaries.
    pub worker_bin: PathBuf,
    /// The daemon.
    pub daemon_bin: PathBuf,
    /// The emulator.
    pub sim_bin: PathBuf,
}

/// One mode's figures.
#[derive(Debug, Default)]
struct Outcome {
    client_errors: u64,
    provider_429s: u64,
    rpm_utilisation: f64,
    light_wait_p50_ms: f64,
    light_wait_p99_ms: f64,
    heavy_wait_p99_ms: f64,
    light_calls: u64,
    tokens_accounted_ratio: f64,
    calls: u64,
    secs: f64,
}

/// Runs both modes under sub-prefixes of `prefix`; keys are left for the caller's cleanup.
pub async fn run(opts: Options, prefix: String) -> anyhow::Result<Report> {
    let config = Config::from_vars([
        ("REDIS_URL", opts.redis_url.as_str()),
        ("EXAI_REDIS_PREFIX", prefix.as_str()),
    ])?;
    let mut conn = RedisHandle::connect(&config.redis)
        .await
        .context("connect to redis")?;
    let machine = measure::machine(&mut conn).await?;
    let params = json!({
        "heavy_clients": opts.heavy_clients,
        "heavy_calls": opts.heavy_calls,
        "light_every_ms": opts.light_every.as_millis() as u64,
        "light_in_flight": opts.light_in_flight,
        "tier": {"concurrency": opts.tier_concurrency, "rpm": opts.tier_rpm, "tpm": opts.tier_tpm},
        "minute_ms": opts.minute.as_millis() as u64,
        "chat_latency_ms": opts.chat_latency.as_millis() as u64,
        "completion_tokens": opts.completion_tokens,
        "workers": opts.workers,
        "concurrency": opts.concurrency,
        "prefix": prefix,
    });
    let mut report =
        Report::new(machine, params).with_heading("exai-bench admission", ADMISSION_LEGEND);
    progress("admission on: adaptive concurrency, rate budgets, fair share");
    let on = mode(&opts, &format!("{prefix}-on"), true).await?;
    progress("static limits");
    let off = mode(&opts, &format!("{prefix}-static"), false).await?;
    for (key_prefix, what, o) in [("", "admission", &on), ("static_", "static", &off)] {
        let key = |k: &str| format!("{key_prefix}admission_{k}");
        report.amount(
            &key("client_errors"),
            format!("{what}: rate errors that reached a client"),
            "calls",
            o.client_errors as f64,
        );
        report.amount(
            &key("provider_429s"),
            format!("{what}: 429s the provider sent"),
            "responses",
            o.provider_429s as f64,
        );
        report.ratio(
            &key("rpm_utilisation"),
            format!("{what}: provider calls per minute ÷ the tier's RPM"),
            o.rpm_utilisation,
        );
        report.millis(
            &key("light_wait_p50_ms"),
            format!("{what}: light client's wait until the provider answers, p50"),
            o.light_wait_p50_ms,
        );
        report.millis(
            &key("light_wait_p99_ms"),
            format!("{what}: light client's wait until the provider answers, p99"),
            o.light_wait_p99_ms,
        );
        report.millis(
            &key("heavy_wait_p99_ms"),
            format!("{what}: heavy clients' wait until the provider answers, p99"),
            o.heavy_wait_p99_ms,
        );
        report.ratio(
            &key("tokens_accounted_ratio"),
            format!("{what}: tokens recorded ÷ tokens the provider billed"),
            o.tokens_accounted_ratio,
        );
        report.notes.push(format!(
            "{what}: {} calls ({} from the light client) in {:.1} s",
            o.calls, o.light_calls, o.secs
        ));
    }
    Ok(report)
}

/// One mode, under key prefix `prefix`.
async fn mode(opts: &Options, prefix: &str, admission: bool) -> anyhow::Result<Outcome> {
    let minute_ms = opts.minute.as_millis().to_string();
    let (sim, sim_url) =
        super::procs::spawn_sim(&opts.sim_bin, &["--key", SIM_KEY], prefix).await?;
    let http = reqwest::Client::new();
    http.post(format!("{sim_url}/_sim/config"))
        .json(&json!({
            "tier": {"concurrency": opts.tier_concurrency, "rpm": opts.tier_rpm,
                     "tpm": opts.tier_tpm},
            "rate_window_minute_ms": opts.minute.as_millis() as u64,
            "chat_latency_ms": opts.chat_latency.as_millis() as u64,
        }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("configure exai-sim")?;

    let rpm = opts.tier_rpm.to_string();
    let tpm = opts.tier_tpm.to_string();
    let cap = opts.completion_tokens.to_string();
    let moonshot = format!("{sim_url}/v1");
    let mut env: Vec<(&str, &str)> = vec![
        ("KIMI_API_URL", &moonshot),
        ("KIMI_API_KEY", SIM_KEY),
        ("EXAI_KIMI_MAX_COMPLETION_TOKENS", &cap),
        ("EXAI_BUDGET_MINUTE_MS", &minute_ms),
        ("EXAI_WS_CALL_TIMEOUT_SECS", "3600"),
        ("EXAI_SESSION_MAX_QUEUED", "100000"),
        ("EXAI_WS_SESSION_MAX_INFLIGHT", "100000"),
        ("KIMI_SEMAPHORE_TIMEOUT", "30"),
    ];
    if admission {
        env.extend([
            ("EXAI_AIMD_ENABLED", "true"),
            ("EXAI_KIMI_RPM", rpm.as_str()),
            ("EXAI_KIMI_TPM", tpm.as_str()),
            ("EXAI_FAIRNESS_KEY", "session"),
        ]);
    } else {
        env.extend([
            ("EXAI_AIMD_ENABLED", "false"),
            ("EXAI_FAIRNESS_KEY", "none"),
        ]);
    }
    let mut workers = WorkerProcs::spawn_env(
        &opts.worker_bin,
        opts.workers,
        opts.concurrency,
        &opts.redis_url,
        prefix,
        &env,
    )?;
    let daemon_env: Vec<(&str, String)> = env
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .chain([("EXAI_WS_TOKEN", TOKEN.to_owned())])
        .collect();
    let mut daemon =
        DaemonProc::spawn(&opts.daemon_bin, &opts.redis_url, prefix, &daemon_env).await?;
    let url = format!("ws://{}/", daemon.addr);

    let started = Instant::now();
    let heavy_done = Arc::new(AtomicBool::new(false));
    let mut heavy = tokio::task::JoinSet::new();
    for c in 0..opts.heavy_clients {
        let url = url.clone();
        let n = opts.heavy_calls;
        heavy.spawn(async move { client(&url, &format!("heavy{c}"), n, None).await });
    }
    let light = {
        let pace = Pace {
            every: opts.light_every,
            in_flight: opts.light_in_flight,
            stop: heavy_done.clone(),
        };
        let url = url.clone();
        tokio::spawn(async move { client(&url, "light", usize::MAX, Some(pace)).await })
    };
    let mut heavy_calls = Vec::new();
    while let Some(done) = heavy.join_next().await {
        heavy_calls.extend(done.context("a heavy client")??);
        workers.check()?;
        daemon.check()?;
    }
    heavy_done.store(true, Ordering::Relaxed);
    let light_calls = light.await.context("the light client")??;
    let secs = started.elapsed().as_secs_f64();

    // The provider starts answering after its latency: the wait is the rest.
    let latency_ms = opts.chat_latency.as_secs_f64() * 1000.0;
    let wait_at = |calls: &[Call], q: f64| {
        let waits = calls
            .iter()
            .filter(|c| c.error.is_none())
            .filter_map(|c| c.first.map(|f| f.duration_since(c.sent)))
            .map(|d| (d.as_secs_f64() * 1000.0 - latency_ms).max(0.0))
            .collect();
        percentile(&sorted(waits), q)
    };
    let light_wait = wait_at(&light_calls, 0.99);
    let heavy_wait = wait_at(&heavy_calls, 0.99);
    let config = Config::from_vars([
        ("REDIS_URL", opts.redis_url.as_str()),
        ("EXAI_REDIS_PREFIX", prefix),
    ])?;
    let conn = RedisHandle::connect(&config.redis).await?;

    let bill: Value = http
        .get(format!("{sim_url}/_sim/usage"))
        .send()
        .await?
        .json()
        .await?;
    // The emulator keeps its last 10,000 requests: far more than a run's.
    let records: Vec<Value> = http
        .get(format!("{sim_url}/_sim/requests?route=moonshot.chat"))
        .send()
        .await?
        .json()
        .await?;
    let chat: Vec<&Value> = records
        .iter()
        .filter(|r| r["route"] == "moonshot.chat")
        .collect();
    let provider_429s = chat.iter().filter(|r| r["status"] == 429).count() as u64;
    let ok_times: Vec<i64> = chat
        .iter()
        .filter(|r| r["status"] == 200)
        .filter_map(|r| r["time_ms"].as_i64())
        .collect();
    // Calls per minute from the first admitted call to the last, over at least one minute (a run
    // whose calls all failed within seconds got one window's worth through, not more).
    let minute_ms = opts.minute.as_millis() as f64;
    let rpm_utilisation = match (ok_times.iter().min(), ok_times.iter().max()) {
        (Some(first), Some(last)) if opts.tier_rpm > 0 => {
            let span = ((last - first) as f64).max(minute_ms);
            (ok_times.len() - 1) as f64 / span * minute_ms / opts.tier_rpm as f64
        }
        _ => 0.0,
    };
    let billed: u64 = bill["keys"]
        .as_object()
        .map(|keys| {
            keys.values()
                .map(|k| k["billed"]["total_tokens"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    let recorded = recorded_tokens(&conn, prefix).await?;
    let all: Vec<&Call> = heavy_calls.iter().chain(&light_calls).collect();
    let outcome = Outcome {
        client_errors: all.iter().filter(|c| c.error.is_some()).count() as u64,
        provider_429s,
        rpm_utilisation,
        light_wait_p50_ms: wait_at(&light_calls, 0.5),
        light_wait_p99_ms: light_wait,
        light_calls: light_calls.len() as u64,
        heavy_wait_p99_ms: heavy_wait,
        tokens_accounted_ratio: if billed > 0 {
            recorded as f64 / billed as f64
        } else {
            0.0
        },
        calls: all.len() as u64,
        secs,
    };
    let errors: HashMap<String, usize> =
        all.iter()
            .filter_map(|c| c.error.clone())
            .fold(HashMap::new(), |mut m, e| {
                *m.entry(e).or_default() += 1;
                m
            });
    if !errors.is_empty() {
        progress(&format!("errors that reached clients: {errors:?}"));
    }
    daemon.stop(Duration::from_secs(5)).await?;
    workers.stop(Duration::from_secs(10)).await?;
    sim.stop(Duration::from_secs(5)).await?;
    Ok(outcome)
}

/// The tokens the workers' cost accounting recorded under `prefix`, in all (the sum over the
/// models, as `exai-worker usage` reports it).
async fn recorded_tokens(conn: &RedisHandle, prefix: &str) -> anyhow::Result<u64> {
    let ledger = UsageLedger::new(conn.clone(), Keys::new(prefix), Duration::from_secs(86_400));
    let report = ledger
        .report(1000)
        .await
        .context("read the recorded usage")?;
    Ok(report.total.total_tokens)
}

/// One call of a client.
#[derive(Debug, Clone)]
struct Call {
    /// When it was sent.
    sent: Instant,
    /// When its first streamed text (or its result) arrived.
    first: Option<Instant>,
    /// The error code of its result, if it failed.
    error: Option<String>,
}

impl Call {
    fn new() -> Self {
        Self {
            sent: Instant::now(),
            first: None,
            error: None,
        }
    }
}

/// How the light client sends: one call every `every`, with at most `in_flight` unanswered,
/// until `stop` is set.
struct Pace {
    every: Duration,
    in_flight: Option<usize>,
    stop: Arc<AtomicBool>,
}

/// A client: says hello (its own session), sends `n` calls at once — or, with `pace`, one every
/// `pace.every`, holding a tick's call while `pace.in_flight` calls are unanswered — and collects
/// every call's timings until all are answered.
async fn client(url: &str, name: &str, n: usize, pace: Option<Pace>) -> anyhow::Result<Vec<Call>> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connect to {url}"))?;
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text(
        json!({"op": "hello", "token": TOKEN, "clientInfo": {"name": name}}).to_string(),
    ))
    .await?;
    let call = |i: usize| {
        Message::text(
            json!({"op": "call_tool", "request_id": format!("{name}-{i}"), "name": "chat",
                   "arguments": {"prompt": format!("{name} asks question number {i:06} of the bench")}})
            .to_string(),
        )
    };
    let mut calls: HashMap<String, Call> = HashMap::new();
    let mut sent = 0usize;
    let mut done = 0usize;
    // A tick's call held back while `in_flight` calls are unanswered.
    let mut owed = false;
    let mut tick =
        tokio::time::interval(pace.as_ref().map_or(Duration::from_secs(3600), |p| p.every));
    let mut hello = false;
    let stopped = |pace: &Option<Pace>| {
        pace.as_ref()
            .is_some_and(|p| p.stop.load(Ordering::Relaxed))
    };
    loop {
        let stop_sending = match &pace {
            Some(p) => p.stop.load(Ordering::Relaxed),
            None => sent >= n,
        };
        if hello && stop_sending && done == sent {
            break;
        }
        let mut send_now = false;
        tokio::select! {
            frame = rx.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => anyhow::bail!("{name}: the daemon closed: {f:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e).context("read a frame"),
                    None => anyhow::bail!("{name}: the daemon ended the connection"),
                };
                let v: Value = serde_json::from_str(text.as_str())?;
                let rid = v["request_id"].as_str().unwrap_or_default().to_owned();
                match v["op"].as_str() {
                    Some("hello_ack") => {
                        anyhow::ensure!(v["ok"] == true, "{name}: hello refused: {v}");
                        hello = true;
                        if pace.is_none() {
                            for i in 0..n {
                                tx.send(call(i)).await?;
                                calls.insert(format!("{name}-{i}"), Call::new());
                            }
                            sent = n;
                        }
                    }
                    Some("stream_chunk") => {
                        if let Some(c) = calls.get_mut(&rid) {
                            c.first.get_or_insert_with(Instant::now);
                        }
                    }
                    Some("call_tool_res") => {
                        if let Some(c) = calls.get_mut(&rid) {
                            c.first.get_or_insert_with(Instant::now);
                            c.error = v.get("error").map(|e| {
                                e["code"].as_str().unwrap_or("ERROR").to_owned()
                            });
                        }
                        done += 1;
                        send_now = std::mem::take(&mut owed);
                    }
                    _ => {}
                }
            }
            // Also wakes the loop to see the flag once every call is answered.
            _ = tick.tick(), if hello && pace.is_some() => {
                let room = pace
                    .as_ref()
                    .and_then(|p| p.in_flight)
                    .is_none_or(|max| sent - done < max);
                if room { send_now = true } else { owed = true }
            }
        }
        if send_now && !stopped(&pace) {
            tx.send(call(sent)).await?;
            calls.insert(format!("{name}-{sent}"), Call::new());
            sent += 1;
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    Ok(calls.into_values().collect())
}
