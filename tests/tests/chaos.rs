//! Proof under fire: real worker processes, real Redis and Postgres, exai-sim in place of
//! Moonshot and Supabase, and a driver that breaks things while jobs run.
//!
//! Each scenario prints one `chaos:` line with its figures (run with `--no-capture` to see
//! them). `EXAI_CHAOS_JOBS` scales the worker-kill scenario (default 10,000 jobs) for a longer
//! soak, e.g. `EXAI_CHAOS_JOBS=200000 scripts/test -E 'test(chaos)' --no-capture`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use exai_shared::db;
use exai_shared::jobs::ToolCallJob;
use exai_shared::queue::{self, JobState, NewJob, Queue};
use exai_shared::semaphore::Semaphores;
use exai_tests::{ChildGuard, TestStack, wait_until};
use rand::Rng;
use serde_json::json;

/// Jobs of the worker-kill scenario.
fn chaos_jobs() -> usize {
    std::env::var("EXAI_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// A tool call job with a fixed id.
fn tool_job(id: &str, tool: &str, arguments: serde_json::Value) -> NewJob {
    NewJob::json(&ToolCallJob {
        tool: tool.to_owned(),
        arguments,
        session_id: "chaos".to_owned(),
        request_id: Some(id.to_owned()),
        deadline_ms: None,
        staged: None,
    })
    .unwrap()
    .with_id(id)
}

/// How many of `ids` have finished (completed, dead or cancelled).
async fn finished_count(q: &Queue, ids: &[String]) -> usize {
    let mut n = 0;
    for id in ids {
        if q.result(id).await.unwrap().is_some() {
            n += 1;
        }
    }
    n
}

/// What the semaphore sampler saw: the highest `in_use` per name, the limits, the samples.
#[derive(Debug, Default)]
struct Sampled {
    peaks: BTreeMap<String, usize>,
    limits: BTreeMap<String, u32>,
    samples: u64,
}

/// Samples the semaphores every few milliseconds until `stop`.
fn sample_semaphores(sems: Semaphores, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Sampled> {
    tokio::spawn(async move {
        let mut peak = BTreeMap::new();
        let mut limits = BTreeMap::new();
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(states) = sems.inspect().await {
                samples += 1;
                for s in states {
                    let p = peak.entry(s.name.clone()).or_insert(0);
                    *p = (*p).max(s.in_use());
                    if let Some(limit) = s.limit {
                        limits.insert(s.name, limit);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Sampled {
            peaks: peak,
            limits,
            samples,
        }
    })
}

/// SIGKILLs the worker processes and waits for them to exit, so none re-creates a key (its
/// registration, a job) after the test's keys are deleted.
async fn stop_workers(workers: Vec<ChildGuard>) {
    for mut w in workers {
        if w.0.try_wait().ok().flatten().is_none() {
            exai_tests::send_signal(w.pid(), "KILL");
        }
        let _ = w.wait_exit(Duration::from_secs(10)).await;
    }
}

/// Waits until no semaphore has a live lease; returns how long that took.
async fn wait_no_holders(sems: &Semaphores, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let ok = wait_until(within, || async {
        sems.inspect()
            .await
            .map(|states| states.iter().all(|s| s.in_use() == 0))
            .unwrap_or(false)
    })
    .await;
    ok.then(|| t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_sigkilled_at_random_lose_nothing() {
    const LEASE_MS: u64 = 1500;
    const WORKERS: usize = 3;
    const FILES: usize = 40;
    let lease = LEASE_MS.to_string();
    let stack = TestStack::uploads(
        "chaos-kill",
        &[
            ("EXAI_JOB_LEASE_MS", &lease),
            ("EXAI_SEMAPHORE_LEASE_MS", &lease),
            ("EXAI_WS_GLOBAL_MAX_INFLIGHT", "10"),
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "4"),
            ("EXAI_SEMAPHORE_TIMEOUT", "30"),
            ("KIMI_SEMAPHORE_TIMEOUT", "30"),
        ],
    )
    .await;
    stack
        .sim()
        .configure(json!({"chat_latency_ms": 5}))
        .expect("configure the sim");
    let config = stack.config();
    let sems = Semaphores::from_config(&config).await.unwrap();

    // The mix: mostly echo, a quarter chat through the kimi semaphore, 5% uploads of 40 files
    // (each file uploaded by many calls, so dedup is under fire too).
    let n = chaos_jobs();
    let paths: Vec<String> = (0..FILES)
        .map(|i| {
            let body = format!("chaos file {i}\n").repeat(64 + i);
            stack
                .write_file(&format!("f{i}.txt"), body.as_bytes())
                .display()
                .to_string()
        })
        .collect();
    let mut rng = rand::rng();
    let mut jobs = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("chaos-{i}");
        let roll = rng.random_range(0..100);
        let job = if roll < 5 {
            let path = &paths[rng.random_range(0..FILES)];
            tool_job(&id, "kimi_upload_files", json!({"files": [path]}))
        } else if roll < 30 {
            tool_job(&id, "chat", json!({"prompt": format!("question {i}")}))
        } else {
            tool_job(
                &id,
                "test_echo",
                json!({"i": i, "delay_ms": rng.random_range(0..20)}),
            )
        };
        jobs.push(job);
        ids.push(id);
    }
    let q = stack.queue(queue::TOOL_CALLS);
    for chunk in jobs.chunks(1000) {
        let created = q.enqueue_bulk(chunk).await.unwrap();
        assert!(created.iter().all(|e| e.is_created()));
    }

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_semaphores(sems.clone(), stop_sampling.clone());

    let mut workers: Vec<ChildGuard> = (0..WORKERS)
        .map(|_| stack.spawn_worker(&["--concurrency", "16", "--poll-secs", "0.2"]))
        .collect();
    let started = Instant::now();
    let mut kills = 0;
    let deadline = started + Duration::from_secs(240);
    loop {
        let pause = Duration::from_millis(rng.random_range(1000..=3000));
        tokio::time::sleep(pause).await;
        let done = q.counts().await.unwrap();
        if done.completed + done.dead >= n as u64 || Instant::now() > deadline {
            break;
        }
        let victim = rng.random_range(0..WORKERS);
        exai_tests::send_signal(workers[victim].pid(), "KILL");
        let _ = workers[victim].wait_exit(Duration::from_secs(10)).await;
        workers[victim] = stack.spawn_worker(&["--concurrency", "16", "--poll-secs", "0.2"]);
        kills += 1;
    }
    let all_done = wait_until(Duration::from_secs(120), || async {
        finished_count(&q, &ids).await == n
    })
    .await;
    let elapsed = started.elapsed();
    let leak_free = wait_no_holders(&sems, Duration::from_millis(LEASE_MS + 1000)).await;
    stop_sampling.store(true, Ordering::Relaxed);
    let Sampled {
        peaks,
        limits,
        samples,
    } = sampler.await.unwrap();

    // Every job finished: completed, or dead with a reason. None lost.
    let mut completed = 0;
    let mut dead = Vec::new();
    let mut lost = Vec::new();
    for id in &ids {
        match q.result(id).await.unwrap() {
            Some(r) if r.state == JobState::Completed => completed += 1,
            Some(r) if r.state == JobState::Dead => {
                assert!(
                    r.error.as_deref().is_some_and(|e| !e.is_empty()),
                    "dead job {id} has no reason"
                );
                dead.push((id.clone(), r.error.unwrap_or_default()));
            }
            _ => lost.push(id.clone()),
        }
    }
    let counts = q.counts().await.unwrap();

    // The uploads: one live row per content, every row's Moonshot file present; Moonshot files
    // beyond the rows are the orphans of uploads killed between Moonshot and the row.
    let rows = stack.rows().await;
    let live: Vec<_> = rows
        .iter()
        .filter(|r| r.status != db::UploadStatus::Deleted)
        .collect();
    let mut by_sha: HashMap<&str, usize> = HashMap::new();
    for r in &live {
        *by_sha
            .entry(r.sha256.as_deref().unwrap_or_default())
            .or_default() += 1;
    }
    let duplicate_rows: usize = by_sha.values().map(|c| c - 1).sum();
    let moonshot = stack.moonshot_files();
    let row_files: HashSet<&str> = live.iter().map(|r| r.provider_file_id.as_str()).collect();
    let missing: Vec<_> = row_files
        .iter()
        .filter(|f| !moonshot.iter().any(|(id, _)| id == *f))
        .collect();
    let orphans = moonshot
        .iter()
        .filter(|(id, _)| !row_files.contains(id.as_str()))
        .count();
    let mut shas: HashMap<&str, usize> = HashMap::new();
    for (_, sha) in &moonshot {
        *shas.entry(sha.as_str()).or_default() += 1;
    }

    println!(
        "chaos: workers_sigkilled jobs={n} completed={completed} dead={} lost={} kills={kills} \
         restarts={kills} elapsed_s={:.1} rows={} duplicate_rows={duplicate_rows} \
         moonshot_files={} crash_orphans={orphans} leak_free_after_ms={} semaphore_samples={samples} \
         peaks={peaks:?} limits={limits:?}",
        dead.len(),
        lost.len(),
        elapsed.as_secs_f64(),
        live.len(),
        moonshot.len(),
        leak_free.map_or(-1, |d| d.as_millis() as i64),
    );

    assert!(all_done, "not every job finished: {} lost", lost.len());
    assert!(
        lost.is_empty(),
        "lost jobs: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert_eq!(completed + dead.len(), n);
    assert_eq!(
        (
            counts.queued,
            counts.running,
            counts.retrying,
            counts.scheduled
        ),
        (0, 0, 0, 0),
        "nothing left in flight: {counts:?}"
    );
    // Dead jobs are the ones whose every attempt was killed (crash re-runs count as attempts).
    for (id, why) in &dead {
        assert!(
            why.contains("attempt") || why.contains("lease"),
            "job {id} died of something other than the kills: {why}"
        );
    }
    assert!(kills > 0, "the driver killed no worker");
    assert!(
        leak_free.is_some(),
        "semaphore leases still held one lease after the last job"
    );
    assert!(samples > 0);
    for (name, peak) in &peaks {
        if let Some(limit) = limits.get(name) {
            assert!(
                *peak <= *limit as usize,
                "semaphore {name} had {peak} holders over its limit {limit}"
            );
        }
    }
    assert_eq!(duplicate_rows, 0, "two live rows for one content");
    assert!(
        missing.is_empty(),
        "rows whose Moonshot file is gone: {missing:?}"
    );
    assert_eq!(live.len(), by_sha.len());
    assert!(
        live.len() <= FILES,
        "more rows ({}) than distinct files ({FILES})",
        live.len()
    );
    // A content has one Moonshot file, plus at most the orphans left by kills mid-upload.
    assert!(
        moonshot.len() - orphans == live.len(),
        "Moonshot files named by rows ≠ rows"
    );
    stop_workers(workers).await;
    stack.cleanup().await;
}

/// A WebSocket client that survives what the chaos does to the daemon: every failure (refused
/// connection, dropped socket, a result that does not come) is answered by reconnecting with the
/// same session and sending the same `request_id` again, which attaches to the same job (or
/// returns its stored result) and never runs it twice.
struct SturdyClient {
    url: Arc<std::sync::Mutex<String>>,
    session: String,
    /// The resume secret the first hello_ack issued for `session`.
    secret: Option<String>,
    ws: Option<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
    /// Job id and local Unix ms of every `call_tool_ack` seen.
    acks: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    /// Failed attempts (a reconnect followed).
    retries: u64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl SturdyClient {
    fn new(
        url: Arc<std::sync::Mutex<String>>,
        session: String,
        acks: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    ) -> Self {
        Self {
            url,
            session,
            secret: None,
            ws: None,
            acks,
            retries: 0,
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        use futures::{SinkExt, StreamExt};
        let url = self.url.lock().unwrap().clone();
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let hello = json!({"op": "hello", "token": exai_tests::daemon::TOKEN,
            "session_id": self.session, "resume_secret": self.secret});
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            hello.to_string(),
        ))
        .await
        .map_err(|e| format!("hello: {e}"))?;
        let ack = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| "no hello_ack".to_owned())?;
        let ack: serde_json::Value = match ack {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                serde_json::from_str(t.as_str()).map_err(|e| format!("hello_ack: {e}"))?
            }
            other => return Err(format!("hello refused: {other:?}")),
        };
        if ack["ok"] != true {
            return Err(format!("hello refused: {ack}"));
        }
        // The session resumes (its secret matched) or, the first time, is claimed as named.
        assert_eq!(ack["session_id"], self.session.as_str(), "{ack}");
        self.secret = ack["resume_secret"].as_str().map(str::to_owned);
        self.ws = Some(ws);
        Ok(())
    }

    /// One attempt: sends the call and reads frames until its result.
    async fn attempt(
        &mut self,
        request_id: &str,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        use futures::{SinkExt, StreamExt};
        if self.ws.is_none() {
            self.connect().await?;
        }
        let ws = self.ws.as_mut().unwrap();
        let call = json!({"op": "call_tool", "request_id": request_id, "name": tool,
            "arguments": args});
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            call.to_string(),
        ))
        .await
        .map_err(|e| format!("send: {e}"))?;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(15), ws.next())
                .await
                .map_err(|_| "no result within 15 s".to_owned())?;
            let text = match frame {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => t,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => {
                    return Err(format!("closed: {c:?}"));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("socket: {e}")),
                None => return Err("socket ended".to_owned()),
            };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            if v["request_id"] != request_id {
                continue;
            }
            match v["op"].as_str() {
                Some("call_tool_ack") => {
                    let job = v["job_id"].as_str().unwrap_or_default().to_owned();
                    self.acks.lock().unwrap().entry(job).or_insert_with(unix_ms);
                }
                // Not enqueued (Redis unreachable): nothing was acknowledged; try again.
                Some("call_tool_res") if v["error"]["code"] == "SERVICE_UNAVAILABLE" => {
                    return Err(format!("not enqueued: {v}"));
                }
                Some("call_tool_res") => return Ok(v),
                Some("error") => return Err(format!("error frame: {v}")),
                _ => {}
            }
        }
    }

    /// Calls until a result arrives (or `deadline` passes).
    async fn call(
        &mut self,
        request_id: &str,
        tool: &str,
        args: serde_json::Value,
        deadline: Instant,
    ) -> serde_json::Value {
        loop {
            match self.attempt(request_id, tool, &args).await {
                Ok(v) => return v,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "call {request_id} never got a result (last failure: {e})"
                    );
                    self.ws = None;
                    self.retries += 1;
                    // Give a restarting peer a moment before the next connect.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Runs `clients` sturdy clients, each making `calls` test_echo calls one after another, and
/// calls `disrupt` once `trigger` results have arrived. Returns every result by request id, the
/// acks, and the retries.
async fn echo_load<F, Fut>(
    url: Arc<std::sync::Mutex<String>>,
    clients: usize,
    calls: usize,
    delay_ms: u64,
    trigger: usize,
    disrupt: F,
) -> (
    HashMap<String, serde_json::Value>,
    HashMap<String, u64>,
    u64,
)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let acks = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.clone();
        let acks = acks.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = SturdyClient::new(url, format!("chaos-client-{c}"), acks);
            let mut results = Vec::new();
            for k in 0..calls {
                let rid = format!("c{c}-k{k}");
                let res = client
                    .call(
                        &rid,
                        "test_echo",
                        json!({"c": c, "k": k, "delay_ms": delay_ms}),
                        deadline,
                    )
                    .await;
                done.fetch_add(1, Ordering::Relaxed);
                results.push((rid, res));
            }
            (results, client.retries)
        }));
    }
    let reached = wait_until(Duration::from_secs(60), || async {
        done.load(Ordering::Relaxed) >= trigger
    })
    .await;
    assert!(reached, "the load did not get going");
    disrupt().await;
    let mut results = HashMap::new();
    let mut retries = 0;
    for t in tasks {
        let (r, n) = t.await.expect("a client task");
        results.extend(r);
        retries += n;
    }
    let acks = acks.lock().unwrap().clone();
    (results, acks, retries)
}

/// Every result echoes its own call's arguments.
fn assert_own_results(results: &HashMap<String, serde_json::Value>) {
    for (rid, res) in results {
        let echoed = exai_tests::daemon::echoed(res);
        let (c, k) = rid[1..].split_once("-k").unwrap();
        assert_eq!(echoed["c"].to_string(), c, "{rid} got {res}");
        assert_eq!(echoed["k"].to_string(), k, "{rid} got {res}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_sigkilled_with_calls_in_flight_clients_collect_every_result() {
    const CLIENTS: usize = 50;
    const CALLS: usize = 4;
    let stack = Arc::new(tokio::sync::Mutex::new(
        TestStack::with_daemon("chaos-daemon", &[], 2).await,
    ));
    let url = Arc::new(std::sync::Mutex::new(stack.lock().await.url()));
    let queue = stack.lock().await.queue(queue::TOOL_CALLS);

    let kill_url = url.clone();
    let kill_stack = stack.clone();
    let killed_at = Arc::new(std::sync::Mutex::new(None));
    let killed = killed_at.clone();
    let (results, acks, retries) = echo_load(url, CLIENTS, CALLS, 300, CLIENTS, || async move {
        let mut s = kill_stack.lock().await;
        exai_tests::send_signal(s.daemon().child.pid(), "KILL");
        let _ = s
            .daemon_mut()
            .child
            .wait_exit(Duration::from_secs(10))
            .await;
        *killed.lock().unwrap() = Some(Instant::now());
        s.start_daemon().await;
        *kill_url.lock().unwrap() = s.url();
    })
    .await;

    assert_eq!(results.len(), CLIENTS * CALLS, "every call got its result");
    assert_own_results(&results);
    // Each job ran once: one attempt, whatever the reconnects.
    let mut reruns = 0;
    for job in acks.keys() {
        let info = queue.job(job).await.unwrap().expect("the job");
        assert_eq!(info.state, JobState::Completed);
        if info.attempts != 1 {
            reruns += 1;
        }
    }
    println!(
        "chaos: daemon_sigkilled clients={CLIENTS} calls={} collected={} lost=0 \
         reconnects={retries} reruns={reruns}",
        CLIENTS * CALLS,
        results.len()
    );
    assert!(retries > 0, "the kill interrupted no client");
    assert_eq!(reruns, 0, "a job ran more than once");
    assert!(killed_at.lock().unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_mid_load_loses_no_acknowledged_job() {
    const CLIENTS: usize = 10;
    const CALLS: usize = 40;
    let redis = Arc::new(tokio::sync::Mutex::new(
        exai_tests::RedisServer::start(true).await,
    ));
    let redis_url = redis.lock().await.url();
    let stack = TestStack::builder("chaos-redis")
        .redis(&redis_url)
        .daemon()
        .workers(2)
        .start()
        .await;
    let url = Arc::new(std::sync::Mutex::new(stack.url()));

    let restarted = Arc::new(std::sync::Mutex::new(0u64));
    let (r2, at) = (redis.clone(), restarted.clone());
    let (results, acks, retries) = echo_load(url, CLIENTS, CALLS, 20, 100, || async move {
        let mut server = r2.lock().await;
        *at.lock().unwrap() = unix_ms();
        server.restart_gracefully().await;
    })
    .await;

    assert_eq!(results.len(), CLIENTS * CALLS);
    assert_own_results(&results);
    // An acknowledged job that Redis lost would have been enqueued afresh by the client's
    // retry: its job would be younger than its first ack.
    // The test's own connection broke with the restart; its first command reconnects it.
    let reconnected = wait_until(Duration::from_secs(10), || async {
        stack.queue(queue::TOOL_CALLS).counts().await.is_ok()
    })
    .await;
    assert!(reconnected);
    let mut lost = Vec::new();
    for (job, acked_ms) in &acks {
        let info = stack
            .queue(queue::TOOL_CALLS)
            .job(job)
            .await
            .unwrap()
            .expect("the job");
        assert_eq!(info.state, JobState::Completed, "{job}");
        if info.enqueued_at_ms > *acked_ms + 1000 {
            lost.push(job.clone());
        }
    }
    println!(
        "chaos: redis_restarted calls={} completed={} acknowledged={} lost={} reconnects={retries}",
        CLIENTS * CALLS,
        results.len(),
        acks.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged jobs lost: {lost:?}");
    assert!(*restarted.lock().unwrap() > 0);
    // The daemon and the workers are still the processes the test started.
    let mut stack = stack;
    assert!(
        stack.daemon_mut().child.0.try_wait().unwrap().is_none(),
        "the daemon died"
    );
    for w in &mut stack.workers {
        assert!(w.0.try_wait().unwrap().is_none(), "a worker died");
    }
}

/// Enqueues one `kimi_upload_files` call per path; returns the call ids.
async fn enqueue_uploads(
    stack: &TestStack,
    tag: &str,
    paths: &[std::path::PathBuf],
) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let id = format!("{tag}-{i}");
        stack
            .enqueue_tool(&id, "kimi_upload_files", json!({"files": [path]}))
            .await;
        ids.push(id);
    }
    ids
}

/// Distinct files under the stack's upload root.
fn distinct_files(stack: &TestStack, tag: &str, n: usize) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let body = format!("{tag} file {i}\n").repeat(200 + i);
            stack.write_file(&format!("{tag}-{i}.txt"), body.as_bytes())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_for_20s_mid_load_uploads_wait_and_resume() {
    const OUTAGE: Duration = Duration::from_secs(20);
    let pg = exai_tests::PgServer::start().await;
    let pg_config = exai_shared::config::DatabaseConfig {
        url: pg.url().into(),
    };
    let pool = db::connect(&pg_config)
        .await
        .expect("connect to the test's Postgres");
    db::migrate(&pool).await.unwrap();
    let stack = TestStack::uploads(
        "chaos-pg",
        &[
            ("DATABASE_URL", &pg.url()),
            ("EXAI_STORAGE_RETRY_MAX_ATTEMPTS", "3"),
        ],
    )
    .await;
    // Pushes take a while, so some are in flight when Postgres goes away.
    stack
        .sim()
        .add_fault(json!({"route": "supabase.object.upload", "action": "delay", "delay_ms": 300}))
        .unwrap();
    let workers: Vec<ChildGuard> = (0..2)
        .map(|_| stack.spawn_worker(&["--concurrency", "8", "--poll-secs", "0.2"]))
        .collect();

    let before = distinct_files(&stack, "before", 20);
    let during = distinct_files(&stack, "during", 20);
    let mut ids = enqueue_uploads(&stack, "before", &before).await;
    let some_rows = wait_until(Duration::from_secs(60), || async {
        db::list_by_status(&pool, db::UploadStatus::StoragePending, 100)
            .await
            .is_ok_and(|rows| rows.len() >= 3)
    })
    .await;
    assert!(some_rows, "no upload reached its row before the outage");

    pg.stop();
    let down_at = Instant::now();
    ids.extend(enqueue_uploads(&stack, "during", &during).await);
    // The outage is the scenario's input: Postgres stays down this long, whatever happens.
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    pg.start_again().await;

    let q = stack.queue(queue::TOOL_CALLS);
    let all_done = wait_until(Duration::from_secs(120), || async {
        finished_count(&q, &ids).await == ids.len()
    })
    .await;
    assert!(all_done, "calls did not finish after Postgres came back");
    let mut failed = Vec::new();
    for id in &ids {
        let r = q.result(id).await.unwrap().unwrap();
        if r.state != JobState::Completed {
            failed.push((id.clone(), r.error));
        }
    }
    let pool = db::connect(&pg_config).await.unwrap();
    let rows_done = wait_until(Duration::from_secs(120), || async {
        db::list_by_status(&pool, db::UploadStatus::Completed, 1000)
            .await
            .is_ok_and(|rows| rows.len() == 40)
    })
    .await;
    let mut statuses = BTreeMap::new();
    for status in db::UploadStatus::ALL {
        let n = db::list_by_status(&pool, status, 1000).await.unwrap().len();
        if n > 0 {
            statuses.insert(status.to_string(), n);
        }
    }
    let moonshot = stack.moonshot_files();
    println!(
        "chaos: postgres_stopped outage_s={} calls={} failed={} rows={statuses:?} \
         moonshot_files={}",
        OUTAGE.as_secs(),
        ids.len(),
        failed.len(),
        moonshot.len()
    );
    assert!(failed.is_empty(), "calls failed by the outage: {failed:?}");
    assert!(rows_done, "rows after the outage: {statuses:?}");
    assert_eq!(statuses.get("storage_failed"), None);
    stop_workers(workers).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_down_past_the_budget_then_redriven_to_completed() {
    const FILES: usize = 30;
    let stack =
        TestStack::uploads("chaos-storage", &[("EXAI_STORAGE_RETRY_MAX_ATTEMPTS", "3")]).await;
    let fault = stack
        .sim()
        .add_fault(json!({"route": "supabase.object.upload", "action": "fail", "status": 503}))
        .unwrap();
    let workers: Vec<ChildGuard> = (0..2)
        .map(|_| stack.spawn_worker(&["--concurrency", "8", "--poll-secs", "0.2"]))
        .collect();
    let paths = distinct_files(&stack, "s", FILES);
    let ids = enqueue_uploads(&stack, "storage", &paths).await;
    let q = stack.queue(queue::TOOL_CALLS);
    let failed_rows = wait_until(Duration::from_secs(120), || async {
        db::list_by_status(stack.pool(), db::UploadStatus::StorageFailed, 1000)
            .await
            .is_ok_and(|rows| rows.len() == FILES)
    })
    .await;
    assert!(failed_rows, "rows did not all end storage_failed");
    // The calls themselves succeeded: Moonshot has every file, once.
    for id in &ids {
        let r = q.result(id).await.unwrap().expect("the call finished");
        assert_eq!(r.state, JobState::Completed, "{id}: {:?}", r.error);
    }
    assert_eq!(stack.moonshot_files().len(), FILES);

    // Storage is back; the operator re-drives.
    reqwest::Client::new()
        .delete(format!("{}/_sim/faults/{fault}", stack.sim().url()))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let (ok, out) = stack.worker_command(&["storage", "redrive", "--all"]).await;
    assert!(ok, "{out}");
    let completed = wait_until(Duration::from_secs(120), || async {
        db::list_by_status(stack.pool(), db::UploadStatus::Completed, 1000)
            .await
            .is_ok_and(|rows| rows.len() == FILES)
    })
    .await;
    let rows = stack.rows().await;
    for row in &rows {
        let object = stack
            .object(&format!("kimi-uploads/{}", row.provider_file_id))
            .expect("the object");
        assert_eq!(object["sha256"].as_str(), row.sha256.as_deref());
    }
    println!(
        "chaos: storage_down files={FILES} storage_failed={FILES} redriven_completed={}",
        rows.iter()
            .filter(|r| r.status == db::UploadStatus::Completed)
            .count()
    );
    assert!(completed);
    stop_workers(workers).await;
    stack.cleanup().await;
}
