//! Proof under fire: real worker processes, real Redis and Postgres, exai-sim in place of
//! Moonshot and Supabase, and a driver that breaks things while jobs run.
//!
//! Each scenario prints one `chaos:` line with its figures (run with `--no-capture` to see
//! them). `EXAI_CHAOS_JOBS` scales the worker-kill scenario (default 10,000 jobs) for a longer
//! soak, e.g. `EXAI_CHAOS_JOBS=200000 scripts/test -E 'test(chaos)' --no-capture`.

#[path = "uploads_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use exai_shared::db;
use exai_shared::jobs::ToolCallJob;
use exai_shared::queue::{self, JobState, NewJob, Queue};
use exai_shared::semaphore::Semaphores;
use exai_tests::{ChildGuard, wait_until};
use rand::Rng;
use serde_json::json;
use support::Stack;

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

/// Samples the semaphores every few milliseconds until `stop`; returns the highest `in_use`
/// seen per name and the limits.
fn sample_semaphores(
    sems: Semaphores,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(BTreeMap<String, usize>, BTreeMap<String, u32>, u64)> {
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
        (peak, limits, samples)
    })
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
    let stack = Stack::new(
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
        .sim
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
    let (peaks, limits, samples) = sampler.await.unwrap();

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
    stack.cleanup().await;
}
