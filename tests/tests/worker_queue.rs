//! The queue engine with real worker processes: crashes, backlogs, cron, shutdown, Redis restarts.
//!
//! Every test has its own key prefix; workers are real `exai-worker run` processes.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;

use exai_shared::jobs::{CleanupJob, ToolCallJob, ToolResult};
use exai_shared::queue::{self, JobState, NewJob, Queue};
use exai_tests::{ChildGuard, RedisServer, TestStack, send_signal, wait_until};

/// A stack on the Redis at `redis_url` whose workers get `env`. Their cleanup runs must never
/// reach a real database or staging store: a database that does not exist makes every sweep
/// fail harmlessly, and the staging directory is the stack's own.
async fn stack(test: &str, redis_url: &str, env: &[(&str, &str)]) -> TestStack {
    TestStack::builder(test)
        .redis(redis_url)
        .upload_dirs()
        .env("DATABASE_URL", &absent_database())
        .envs(env)
        .start()
        .await
}

/// The URL of a Postgres database that does not exist.
fn absent_database() -> String {
    format!(
        "postgres://postgres@127.0.0.1:5432/exai_absent_{}",
        uuid::Uuid::new_v4().simple()
    )
}

fn echo(args: serde_json::Value) -> NewJob {
    NewJob::json(&ToolCallJob {
        tool: "test_echo".into(),
        arguments: args,
        session_id: "s".into(),
        request_id: None,
        deadline_ms: None,
        staged: None,
    })
    .unwrap()
}

async fn state_of(q: &Queue, id: &str) -> Option<JobState> {
    q.job(id).await.unwrap().map(|j| j.state)
}

async fn wait_state(q: &Queue, id: &str, state: JobState, timeout: Duration) -> bool {
    wait_until(timeout, || async { state_of(q, id).await == Some(state) }).await
}

#[tokio::test]
async fn a_sigkilled_workers_job_is_completed_by_another_worker() {
    let ctx = stack(
        "wq-kill",
        &exai_tests::redis_url(),
        &[("EXAI_JOB_LEASE_MS", "1000")],
    )
    .await;
    let q = ctx.queue(queue::TOOL_CALLS);
    let mut first = ctx.spawn_worker(&["--queues", "tool_calls", "--concurrency", "2"]);
    let id = q
        .enqueue(&echo(serde_json::json!({"delay_ms": 1500, "n": 1})))
        .await
        .unwrap()
        .id()
        .to_owned();
    assert!(wait_state(&q, &id, JobState::Running, Duration::from_secs(20)).await);
    let holder = q.job(&id).await.unwrap().unwrap().worker;
    send_signal(first.pid(), "KILL");
    first.wait_exit(Duration::from_secs(5)).await;

    let _second = ctx.spawn_worker(&["--queues", "tool_calls", "--concurrency", "2"]);
    assert!(wait_state(&q, &id, JobState::Completed, Duration::from_secs(30)).await);
    let info = q.job(&id).await.unwrap().unwrap();
    assert_eq!(info.attempts, 2, "the crashed run counts as an attempt");
    assert_ne!(info.worker, holder, "another worker completed it");
    let result: ToolResult =
        serde_json::from_slice(&q.result(&id).await.unwrap().unwrap().result.unwrap()).unwrap();
    assert!(result.joined_text().contains("\"n\":1"));
}

#[tokio::test]
async fn a_job_that_crashes_its_worker_every_time_ends_dead() {
    let ctx = stack(
        "wq-crashloop",
        &exai_tests::redis_url(),
        &[("EXAI_JOB_LEASE_MS", "600")],
    )
    .await;
    let q = ctx.queue(queue::TOOL_CALLS);
    let id = q
        .enqueue(&echo(serde_json::json!({"delay_ms": 60000})).with_max_attempts(2))
        .await
        .unwrap()
        .id()
        .to_owned();
    // Kill whichever worker runs the job, every time it runs.
    for attempt in 1..=2u32 {
        let mut w = ctx.spawn_worker(&["--queues", "tool_calls"]);
        let started = wait_until(Duration::from_secs(30), || async {
            let job = q.job(&id).await.unwrap().unwrap();
            job.state == JobState::Running && job.attempts == attempt
        })
        .await;
        assert!(started, "attempt {attempt} started");
        send_signal(w.pid(), "KILL");
        w.wait_exit(Duration::from_secs(5)).await;
    }
    // A live worker's sweep finds the last lease expired: out of attempts, the job is dead.
    let _sweeper = ctx.spawn_worker(&["--queues", "tool_calls"]);
    assert!(wait_state(&q, &id, JobState::Dead, Duration::from_secs(30)).await);
    let info = q.job(&id).await.unwrap().unwrap();
    assert_eq!(info.attempts, 2);
    assert!(
        info.errors.iter().any(|e| e.kind == "lease"),
        "the dead job says why: {:?}",
        info.errors
    );
}

#[tokio::test]
async fn a_backlog_of_20000_jobs_enqueued_with_no_worker_drains() {
    let ctx = stack("wq-backlog", &exai_tests::redis_url(), &[]).await;
    let q = ctx.queue(queue::TOOL_CALLS);
    let total = 20_000;
    for chunk in 0..(total / 1000) {
        let jobs: Vec<NewJob> = (0..1000)
            .map(|i| echo(serde_json::json!({"i": chunk * 1000 + i})))
            .collect();
        q.enqueue_bulk(&jobs).await.unwrap();
    }
    assert_eq!(q.counts().await.unwrap().queued, total as u64);
    let _a = ctx.spawn_worker(&["--queues", "tool_calls", "--concurrency", "50"]);
    let _b = ctx.spawn_worker(&["--queues", "tool_calls", "--concurrency", "50"]);
    let drained = wait_until(Duration::from_secs(120), || async {
        let c = q.counts().await.unwrap();
        c.completed == total as u64 && c.queued == 0 && c.running == 0
    })
    .await;
    let counts = q.counts().await.unwrap();
    assert!(drained, "backlog drained: {counts:?}");
    assert_eq!(counts.dead, 0);
    assert_eq!(counts.retrying, 0);
}

#[tokio::test]
async fn cron_fires_once_per_tick_across_three_workers() {
    let ctx = stack(
        "wq-cron",
        &exai_tests::redis_url(),
        &[("EXAI_CLEANUP_CRON", "* * * * * *")],
    )
    .await;
    let q = ctx.queue(queue::CLEANUP);
    let workers: Vec<ChildGuard> = (0..3)
        .map(|_| ctx.spawn_worker(&["--queues", "cleanup"]))
        .collect();
    let fired = wait_until(Duration::from_secs(30), || async {
        q.counts().await.unwrap().completed >= 4
    })
    .await;
    assert!(fired, "ticks fired");
    for w in &workers {
        send_signal(w.pid(), "TERM");
    }
    for mut w in workers {
        w.wait_exit(Duration::from_secs(20)).await;
    }
    let jobs = q.list(JobState::Completed, 0, 1000).await.unwrap();
    let mut ticks = HashSet::new();
    for job in &jobs {
        assert_eq!(job.attempts, 1, "each tick's job ran once: {job:?}");
        let payload: CleanupJob = serde_json::from_slice(&job.payload).unwrap();
        assert!(
            ticks.insert(payload.tick),
            "tick {} fired twice",
            payload.tick
        );
        assert_eq!(job.id, format!("cron:cleanup:{}", payload.tick));
    }
    let counts = q.counts().await.unwrap();
    assert_eq!(counts.completed as usize, ticks.len(), "one job per tick");
    assert_eq!(counts.queued + counts.running + counts.dead, 0);
}

#[tokio::test]
async fn sigterm_drains_and_puts_unfinished_jobs_back_without_burning_an_attempt() {
    let ctx = stack("wq-term", &exai_tests::redis_url(), &[]).await;
    let q = ctx.queue(queue::TOOL_CALLS);
    let mut w = ctx.spawn_worker(&["--queues", "tool_calls", "--grace-secs", "0.3"]);
    let quick = q
        .enqueue(&echo(serde_json::json!({"delay_ms": 50})))
        .await
        .unwrap();
    let slow = q
        .enqueue(&echo(serde_json::json!({"delay_ms": 60000})))
        .await
        .unwrap();
    assert!(wait_state(&q, slow.id(), JobState::Running, Duration::from_secs(20)).await);
    assert!(wait_state(&q, quick.id(), JobState::Completed, Duration::from_secs(20)).await);
    send_signal(w.pid(), "TERM");
    let status = w
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("worker exits");
    assert!(status.success(), "clean exit: {status:?}");
    let info = q.job(slow.id()).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Queued, "put back");
    assert_eq!(info.attempts, 0, "the interrupted attempt was given back");
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_handler() {
    let ctx = stack("wq-cancel", &exai_tests::redis_url(), &[]).await;
    let q = ctx.queue(queue::TOOL_CALLS);
    let _w = ctx.spawn_worker(&["--queues", "tool_calls"]);
    let job = q
        .enqueue(&echo(serde_json::json!({"delay_ms": 60000})))
        .await
        .unwrap();
    assert!(wait_state(&q, job.id(), JobState::Running, Duration::from_secs(20)).await);
    assert_eq!(
        q.cancel(job.id()).await.unwrap(),
        queue::CancelOutcome::Signalled
    );
    assert!(wait_state(&q, job.id(), JobState::Cancelled, Duration::from_secs(10)).await);
    // The worker is free again: the next job runs.
    let next = q.enqueue(&echo(serde_json::json!({}))).await.unwrap();
    assert!(wait_state(&q, next.id(), JobState::Completed, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn an_idle_worker_starts_a_new_job_at_once() {
    let ctx = stack("wq-wake", &exai_tests::redis_url(), &[]).await;
    let q = ctx.queue(queue::TOOL_CALLS);
    let _w = ctx.spawn_worker(&["--queues", "tool_calls", "--poll-secs", "30"]);
    // The first job proves the worker is up and subscribed.
    let warm = q.enqueue(&echo(serde_json::json!({}))).await.unwrap();
    assert!(wait_state(&q, warm.id(), JobState::Completed, Duration::from_secs(20)).await);
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let job = q.enqueue(&echo(serde_json::json!({}))).await.unwrap();
        assert!(wait_state(&q, job.id(), JobState::Completed, Duration::from_secs(20)).await);
        latencies.push(start.elapsed());
    }
    // With a 30 s poll fallback, completion within a small fraction of it proves a push wake-up.
    let worst = latencies.iter().max().unwrap();
    assert!(
        *worst < Duration::from_secs(3),
        "wake-up came from polling: {latencies:?}"
    );
}

#[tokio::test]
async fn a_hand_off_to_a_busy_worker_goes_back_without_burning_an_attempt() {
    let ctx = stack("wq-hand-off", &exai_tests::redis_url(), &[]).await;
    let q = ctx.queue(queue::TOOL_CALLS);
    let qk = ctx.keys.queue(queue::TOOL_CALLS);
    let _w = ctx.spawn_worker(&["--queues", "tool_calls", "--concurrency", "1"]);
    // The worker registers idle, taking hand-offs.
    let mut conn = ctx.conn.clone();
    let registered = async || -> Option<(String, String)> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(qk.hand_offs())
            .query_async(&mut ctx.conn.clone())
            .await
            .unwrap();
        all.into_iter().next()
    };
    assert!(
        wait_until(Duration::from_secs(20), || async {
            registered().await.is_some()
        })
        .await
    );
    let (worker, terms) = registered().await.unwrap();
    let client = redis::Client::open(exai_tests::redis_url()).unwrap();
    let mut watch = client.get_async_pubsub().await.unwrap();
    watch.subscribe(qk.wake_channel_of(&worker)).await.unwrap();
    let mut heard = watch.on_message();
    let mut next_hand_off = async || -> String {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), heard.next())
                .await
                .expect("a message on the worker's channel")
                .unwrap();
            let body: Vec<u8> = msg.get_payload().unwrap();
            if let Some(job) = queue::Fetched::from_hand_off(&body) {
                return job.lease.id;
            }
        }
    };

    // A lone job goes straight to the idle worker, which runs it on its only slot.
    let busy = q
        .enqueue(&echo(serde_json::json!({"delay_ms": 1500})))
        .await
        .unwrap();
    assert_eq!(next_hand_off().await, busy.id());
    assert!(wait_state(&q, busy.id(), JobState::Running, Duration::from_secs(10)).await);

    // Registered again as if idle (a stale registration): the next job is handed to it while
    // its slot is taken, so it gives the job back, without burning the attempt.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 10_000;
    let _: () = redis::pipe()
        .zadd(qk.idle(), &worker, until)
        .ignore()
        .hset(qk.hand_offs(), &worker, &terms)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let next = q.enqueue(&echo(serde_json::json!({}))).await.unwrap();
    assert_eq!(next_hand_off().await, next.id());
    assert!(wait_state(&q, next.id(), JobState::Completed, Duration::from_secs(20)).await);
    assert!(wait_state(&q, busy.id(), JobState::Completed, Duration::from_secs(20)).await);
    for id in [busy.id(), next.id()] {
        let info = q.job(id).await.unwrap().unwrap();
        assert_eq!(info.attempts, 1, "{id} ran on its first attempt");
    }
}

#[tokio::test]
async fn the_worker_keeps_running_through_a_redis_restart() {
    let mut redis = RedisServer::start(true).await;
    let ctx = stack("wq-restart", &redis.url(), &[]).await;
    let q = ctx.queue(queue::TOOL_CALLS);
    let mut w = ctx.spawn_worker(&["--queues", "tool_calls"]);
    let before = q
        .enqueue(&echo(serde_json::json!({"n": "before"})))
        .await
        .unwrap();
    assert!(
        wait_state(
            &q,
            before.id(),
            JobState::Completed,
            Duration::from_secs(20)
        )
        .await
    );

    redis.restart().await;

    // Our own handle reconnects too; the enqueue is retried until Redis answers.
    let after_id = "after-restart";
    let enqueued = wait_until(Duration::from_secs(20), || async {
        q.enqueue(&echo(serde_json::json!({"n": "after"})).with_id(after_id))
            .await
            .is_ok()
    })
    .await;
    assert!(enqueued);
    assert!(wait_state(&q, after_id, JobState::Completed, Duration::from_secs(30)).await);
    assert!(
        w.0.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
}
