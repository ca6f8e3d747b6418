//! The operator CLI (`exai-worker queue …`, `sem`, `files list`, `storage retry-failed`) and the
//! worker's metrics endpoint, with the real `exai-worker` binary against real Redis and Postgres.
//!
//! Every test seeds its own key prefix (and database) through the library APIs, runs the
//! command, and checks both the table and the `--json` output. Commands that only read Redis run
//! with an unreachable `DATABASE_URL`, which proves they never touch Postgres.

use std::time::Duration;

use exai_shared::db::{self, NewUpload, UploadStatus};
use exai_shared::jobs::ToolCallJob;
use exai_shared::queue::{self, FailKind, FailOutcome, Fetched, JobState, NewJob, Queue};
use exai_shared::semaphore::{HolderInfo, Semaphores};
use exai_tests::{TestStack, free_port, test_config, wait_until};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A `DATABASE_URL` nothing listens on.
const NO_POSTGRES: &str = "postgres://postgres@127.0.0.1:1/none";
/// The worker id the seeded running job is leased to.
const TEST_WORKER: &str = "cli-test-worker";
const WAIT: Duration = Duration::from_secs(30);

/// A stack for commands that only read Redis: an unreachable `DATABASE_URL`.
async fn stack(test: &str) -> TestStack {
    TestStack::builder(test)
        .env("DATABASE_URL", NO_POSTGRES)
        .start()
        .await
}

/// A stack with a migrated database of its own.
async fn stack_with_db(test: &str) -> TestStack {
    TestStack::builder(test).database().start().await
}

/// The stack's queue `name`, as the CLI builds it.
fn queue_of(ctx: &TestStack, name: &str) -> Queue {
    exai_worker::cli::queue_handles(&ctx.config(), ctx.conn.clone())
        .into_iter()
        .find(|q| q.name() == name)
        .expect("a known queue")
}

/// `tool_calls` with one job in each state: `job-done` (completed with `{"ok":true}`),
/// `job-dead` (a permanent error), `job-running` (leased to [`TEST_WORKER`]; its lease is
/// returned), `job-queued`, and `job-later` (scheduled an hour ahead).
async fn seed(ctx: &TestStack) -> Fetched {
    let q = queue_of(ctx, queue::TOOL_CALLS);
    for id in ["job-done", "job-dead", "job-running", "job-queued"] {
        q.enqueue(&echo(id)).await.unwrap();
    }
    q.enqueue(&echo("job-later").with_delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let done = fetch_one(&q, "job-done").await;
    q.complete(&done.lease, br#"{"ok":true}"#).await.unwrap();
    let dead = fetch_one(&q, "job-dead").await;
    let failed = q
        .fail(
            &dead.lease,
            "boom: the provider said no",
            FailKind::Permanent,
        )
        .await
        .unwrap();
    assert_eq!(failed, FailOutcome::Dead);
    fetch_one(&q, "job-running").await
}

fn echo(id: &str) -> NewJob {
    NewJob::json(&ToolCallJob {
        tool: "test_echo".into(),
        arguments: json!({ "n": id }),
        session_id: "s".into(),
        request_id: None,
        deadline_ms: None,
        staged: None,
    })
    .unwrap()
    .with_id(id)
}

async fn fetch_one(q: &Queue, expected: &str) -> Fetched {
    let mut jobs = q.fetch(TEST_WORKER, 1).await.unwrap();
    let job = jobs.pop().expect("a queued job");
    assert_eq!(job.id(), expected, "jobs are fetched in enqueue order");
    job
}

async fn state_of(q: &Queue, id: &str) -> JobState {
    q.job(id).await.unwrap().expect("the job exists").state
}

#[tokio::test]
async fn queue_stats_prints_every_queue_as_a_table_and_as_json() {
    let ctx = stack("cli-stats").await;
    let _running = seed(&ctx).await;

    let report = ctx
        .worker_cli(&["queue", "stats", "--json"], &[])
        .await
        .json();
    assert_eq!(
        report["queues"]["tool_calls"],
        json!({"queued": 1, "scheduled": 1, "running": 1, "retrying": 0, "dead": 1,
               "completed": 1, "cancelled": 0, "paused": false})
    );
    let names: Vec<&str> = report["queues"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["cleanup", "storage_push", "tool_calls", "uploads"]);
    assert_eq!(report["queues"]["uploads"]["queued"], 0);

    let table = ctx.worker_cli(&["queue", "stats"], &[]).await;
    assert!(table.ok(), "{table:?}");
    assert_eq!(
        table.row("QUEUE"),
        [
            "QUEUE",
            "QUEUED",
            "SCHEDULED",
            "RUNNING",
            "RETRYING",
            "DEAD",
            "COMPLETED",
            "CANCELLED",
            "PAUSED"
        ]
    );
    assert_eq!(
        table.row("tool_calls"),
        ["tool_calls", "1", "1", "1", "0", "1", "1", "0", "no"]
    );
    // Aligned: numbers are right-aligned under their headers.
    let header = table.stdout.lines().next().unwrap();
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with("tool_calls"))
        .unwrap();
    let dead_end = header.find("DEAD").unwrap() + "DEAD".len();
    assert_eq!(&line[dead_end - 1..dead_end], "1", "{}", table.stdout);
}

#[tokio::test]
async fn queue_list_pages_one_state_in_order() {
    let ctx = stack("cli-list").await;
    let _running = seed(&ctx).await;
    let q = queue_of(&ctx, queue::TOOL_CALLS);

    let queued = ctx
        .worker_cli(&["queue", "list", "tool_calls", "--json"], &[])
        .await
        .json();
    assert_eq!(queued["queue"], "tool_calls");
    assert_eq!(queued["state"], "queued", "queued is the default state");
    let ids = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&queued), ["job-queued"]);
    assert_eq!(queued["jobs"][0]["payload"]["arguments"]["n"], "job-queued");

    for (state, id) in [
        ("scheduled", "job-later"),
        ("running", "job-running"),
        ("dead", "job-dead"),
        ("completed", "job-done"),
    ] {
        let page = ctx
            .worker_cli(
                &["queue", "list", "tool_calls", "--state", state, "--json"],
                &[],
            )
            .await
            .json();
        assert_eq!(ids(&page), [id], "{state}");
        assert_eq!(page["jobs"][0]["state"], state);
    }
    let dead = ctx
        .worker_cli(
            &["queue", "list", "tool_calls", "--state", "dead", "--json"],
            &[],
        )
        .await
        .json();
    assert_eq!(dead["jobs"][0]["errors"][0]["kind"], "permanent");
    let running = ctx
        .worker_cli(
            &[
                "queue",
                "list",
                "tool_calls",
                "--state",
                "running",
                "--json",
            ],
            &[],
        )
        .await
        .json();
    assert_eq!(running["jobs"][0]["worker"], TEST_WORKER);
    assert!(running["jobs"][0]["lease_until_ms"].as_u64().unwrap() > 0);

    // The table: one line per job, the last error on the dead one.
    let table = ctx
        .worker_cli(&["queue", "list", "tool_calls", "--state", "dead"], &[])
        .await;
    assert!(table.ok(), "{table:?}");
    assert_eq!(table.row("ID")[..3], ["ID", "STATE", "ATTEMPTS"]);
    let row = table.row("job-dead");
    assert_eq!(row[1..3], ["dead", "1/5"]);
    assert!(table.stdout.contains("boom: the provider said no"));
    let empty = ctx
        .worker_cli(&["queue", "list", "uploads", "--state", "retrying"], &[])
        .await;
    assert!(empty.ok() && empty.stdout.contains("no retrying jobs in uploads"));

    // Paging: queued jobs in the order they will run.
    for i in 0..5 {
        q.enqueue(&echo(&format!("page-{i}"))).await.unwrap();
    }
    let first = ctx
        .worker_cli(
            &["queue", "list", "tool_calls", "--limit", "2", "--json"],
            &[],
        )
        .await
        .json();
    assert_eq!(ids(&first), ["job-queued", "page-0"]);
    let second = ctx
        .worker_cli(
            &[
                "queue",
                "list",
                "tool_calls",
                "--limit",
                "2",
                "--offset",
                "2",
                "--json",
            ],
            &[],
        )
        .await
        .json();
    assert_eq!(ids(&second), ["page-1", "page-2"]);
}

#[tokio::test]
async fn queue_show_prints_attempts_errors_worker_timings_and_result() {
    let ctx = stack("cli-show").await;
    let _running = seed(&ctx).await;

    let dead = ctx
        .worker_cli(&["queue", "show", "job-dead", "--json"], &[])
        .await
        .json();
    assert_eq!(dead["queue"], "tool_calls");
    assert_eq!(dead["state"], "dead");
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["errors"][0]["attempt"], 1);
    assert_eq!(dead["errors"][0]["kind"], "permanent");
    assert_eq!(dead["errors"][0]["error"], "boom: the provider said no");
    assert!(dead["finished_at_ms"].as_u64().unwrap() >= dead["started_at_ms"].as_u64().unwrap());

    let done = ctx
        .worker_cli(&["queue", "show", "job-done", "--json"], &[])
        .await
        .json();
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"], json!({"ok": true}));

    let table = ctx.worker_cli(&["queue", "show", "job-running"], &[]).await;
    assert!(table.ok(), "{table:?}");
    assert_eq!(table.row("state"), ["state", "running"]);
    assert_eq!(table.row("worker"), ["worker", TEST_WORKER]);
    assert_eq!(table.row("attempts"), ["attempts", "1/5"]);
    assert_eq!(table.row("lease")[..2], ["lease", "until"]);

    let dead_table = ctx.worker_cli(&["queue", "show", "job-dead"], &[]).await;
    assert!(dead_table.ok(), "{dead_table:?}");
    let error_row = dead_table.row("1");
    assert_eq!(error_row[2..4], ["permanent", "boom:"]);
    assert_eq!(dead_table.row("result"), ["result", "-"]);
}

#[tokio::test]
async fn queue_retry_puts_one_or_every_dead_job_back() {
    let ctx = stack("cli-retry").await;
    let _running = seed(&ctx).await;
    let q = queue_of(&ctx, queue::TOOL_CALLS);

    let one = ctx
        .worker_cli(&["queue", "retry", "job-dead", "--json"], &[])
        .await
        .json();
    assert_eq!(one, json!({"queue": "tool_calls", "retried": ["job-dead"]}));
    assert_eq!(state_of(&q, "job-dead").await, JobState::Queued);

    let refused = ctx.worker_cli(&["queue", "retry", "job-queued"], &[]).await;
    refused.assert_error(1, "job `job-queued` is queued: only dead jobs are retried");

    // Three dead jobs of `uploads`, retried at once (plain lines: stdout is not a terminal).
    let uploads = queue_of(&ctx, queue::UPLOADS);
    for i in 0..3 {
        let id = format!("dead-{i}");
        uploads.enqueue(&echo(&id)).await.unwrap();
        let f = uploads.fetch(TEST_WORKER, 1).await.unwrap().pop().unwrap();
        let out = uploads
            .fail(&f.lease, "no", FailKind::Permanent)
            .await
            .unwrap();
        assert_eq!(out, FailOutcome::Dead);
    }
    let all = ctx
        .worker_cli(&["queue", "retry", "--all-dead", "uploads"], &[])
        .await;
    assert!(all.ok(), "{all:?}");
    for i in 0..3 {
        assert!(
            all.stdout.contains(&format!("retried dead-{i}\n")),
            "{all:?}"
        );
    }
    assert!(
        all.stdout.contains("retried 3 dead jobs of uploads"),
        "{all:?}"
    );
    let counts = uploads.counts().await.unwrap();
    assert_eq!((counts.dead, counts.queued), (0, 3));

    let none = ctx
        .worker_cli(&["queue", "retry", "--all-dead", "uploads", "--json"], &[])
        .await
        .json();
    assert_eq!(none, json!({"queue": "uploads", "retried": []}));
}

#[tokio::test]
async fn queue_kill_cancels_waiting_jobs_and_stops_running_ones() {
    let ctx = stack("cli-kill").await;
    let running = seed(&ctx).await;
    let q = queue_of(&ctx, queue::TOOL_CALLS);

    let queued = ctx
        .worker_cli(&["queue", "kill", "job-queued", "--json"], &[])
        .await
        .json();
    assert_eq!(
        queued,
        json!({"job_id": "job-queued", "queue": "tool_calls", "was": "queued",
               "outcome": "cancelled"})
    );
    assert_eq!(state_of(&q, "job-queued").await, JobState::Cancelled);

    let later = ctx.worker_cli(&["queue", "kill", "job-later"], &[]).await;
    assert!(later.ok(), "{later:?}");
    assert!(later.stdout.contains("cancelled job-later (was scheduled)"));
    assert_eq!(state_of(&q, "job-later").await, JobState::Cancelled);

    // A running job is told to stop; it ends cancelled when its worker lets go.
    let stopping = ctx
        .worker_cli(&["queue", "kill", "job-running", "--json"], &[])
        .await
        .json();
    assert_eq!(stopping["outcome"], "stopping");
    assert_eq!(stopping["was"], "running");
    let job = q.job("job-running").await.unwrap().unwrap();
    assert!(job.cancel_requested);
    let ended = q
        .fail(&running.lease, "stopped", FailKind::Transient)
        .await
        .unwrap();
    assert_eq!(ended, FailOutcome::Cancelled);
    assert_eq!(state_of(&q, "job-running").await, JobState::Cancelled);

    ctx.worker_cli(&["queue", "kill", "job-done"], &[])
        .await
        .assert_error(1, "job `job-done` already finished (completed)");
    ctx.worker_cli(&["queue", "kill", "no-such-job"], &[])
        .await
        .assert_error(1, "no job `no-such-job` in any queue");
    let stats = ctx
        .worker_cli(&["queue", "stats", "--json"], &[])
        .await
        .json();
    assert_eq!(stats["queues"]["tool_calls"]["cancelled"], 3);
}

#[tokio::test]
async fn queue_pause_and_resume_stop_and_restart_fetching() {
    let ctx = stack("cli-pause").await;
    let q = queue_of(&ctx, queue::UPLOADS);
    q.enqueue(&echo("waiting")).await.unwrap();

    let paused = ctx
        .worker_cli(&["queue", "pause", "uploads", "--json"], &[])
        .await
        .json();
    assert_eq!(paused, json!({"queue": "uploads", "paused": true}));
    assert!(q.is_paused().await.unwrap());
    assert!(q.fetch(TEST_WORKER, 1).await.unwrap().is_empty());
    let stats = ctx.worker_cli(&["queue", "stats"], &[]).await;
    assert_eq!(stats.row("uploads").last().unwrap(), "yes");

    let resumed = ctx.worker_cli(&["queue", "resume", "uploads"], &[]).await;
    assert!(
        resumed.ok() && resumed.stdout.contains("resumed uploads"),
        "{resumed:?}"
    );
    assert!(!q.is_paused().await.unwrap());
    assert_eq!(q.fetch(TEST_WORKER, 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn sem_lists_limits_permits_in_use_and_live_holders() {
    let ctx = stack("cli-sem").await;
    let semaphores = Semaphores::from_config(&ctx.config()).await.unwrap();
    let guard = semaphores
        .try_acquire(
            &["global", "kimi"],
            &HolderInfo::new("holder-a", "job-sem", 1),
        )
        .await
        .unwrap()
        .expect("free permits");

    let report = ctx.worker_cli(&["sem", "--json"], &[]).await.json();
    let kimi = &report["semaphores"]["kimi"];
    assert_eq!(kimi["limit"], 6);
    assert_eq!(kimi["in_use"], 1);
    let holder = &kimi["holders"][0];
    assert_eq!(holder["lease"], guard.token());
    assert_eq!(holder["job_id"], "job-sem");
    assert!(holder["holder"].as_str().unwrap().contains("holder-a"));
    let expires = holder["expires_in_ms"].as_u64().unwrap();
    assert!(expires > 0 && expires <= 30_000, "{expires}");
    assert_eq!(report["semaphores"]["global"]["in_use"], 1);
    assert_eq!(
        report["semaphores"]["glm"],
        json!({"limit": 4, "effective_limit": 4, "in_use": 0, "holders": []})
    );
    assert_eq!(kimi["effective_limit"], 6);

    let table = ctx.worker_cli(&["sem"], &[]).await;
    assert!(table.ok(), "{table:?}");
    assert_eq!(table.row("kimi"), ["kimi", "6", "6", "1"]);
    assert_eq!(table.row("glm"), ["glm", "4", "4", "0"]);
    // Adaptive concurrency lowers kimi's effective limit; the configured one stays.
    let change = semaphores
        .congestion("kimi")
        .await
        .unwrap()
        .expect("lowered");
    assert_eq!(change.effective, 3);
    let lowered = ctx.worker_cli(&["sem"], &[]).await;
    assert_eq!(lowered.row("kimi"), ["kimi", "6", "3", "1"]);
    let lowered = ctx.worker_cli(&["sem", "--json"], &[]).await.json();
    assert_eq!(lowered["semaphores"]["kimi"]["limit"], 6);
    assert_eq!(lowered["semaphores"]["kimi"]["effective_limit"], 3);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains(guard.token()) && l.contains("job-sem")),
        "{}",
        table.stdout
    );

    guard.release().await.unwrap();
    let after = ctx.worker_cli(&["sem", "--json"], &[]).await.json();
    assert_eq!(after["semaphores"]["kimi"]["in_use"], 0);
    let empty = ctx.worker_cli(&["sem"], &[]).await;
    assert!(empty.stdout.contains("no live leases"), "{empty:?}");
}

#[tokio::test]
async fn bad_input_is_a_clear_error_and_a_non_zero_exit() {
    let ctx = stack("cli-bad").await;
    for args in [
        &["queue", "list", "nope"][..],
        &["queue", "pause", "nope"],
        &["queue", "resume", "nope"],
        &["queue", "retry", "--all-dead", "nope"],
    ] {
        ctx.worker_cli(args, &[])
            .await
            .assert_error(1, "unknown queue `nope`");
    }
    ctx.worker_cli(&["queue", "show", "missing"], &[])
        .await
        .assert_error(1, "no job `missing` in any queue");
    ctx.worker_cli(&["queue", "retry", "missing"], &[])
        .await
        .assert_error(1, "no job `missing` in any queue");
    ctx.worker_cli(&["queue", "list", "tool_calls", "--state", "bogus"], &[])
        .await
        .assert_error(2, "unknown state `bogus`");
    let cancelled = ctx
        .worker_cli(
            &["queue", "list", "tool_calls", "--state", "cancelled"],
            &[],
        )
        .await;
    assert!(cancelled.ok(), "cancelled jobs are listed: {cancelled}");
    ctx.worker_cli(&["queue", "list", "tool_calls", "--limit", "0"], &[])
        .await
        .assert_error(2, "--limit");
    ctx.worker_cli(&["queue", "retry"], &[])
        .await
        .assert_error(2, "required");
    ctx.worker_cli(&["files", "list", "--status", "bogus"], &[])
        .await
        .assert_error(2, "unknown status `bogus`");
    // Postgres is needed by files and storage commands, and its absence is said plainly.
    ctx.worker_cli(&["files", "list"], &[])
        .await
        .assert_error(1, "cannot connect to Postgres");
}

fn upload(file_id: &str, status: UploadStatus) -> NewUpload {
    NewUpload {
        provider: "kimi".into(),
        provider_file_id: file_id.into(),
        sha256: format!("{:x}", Sha256::digest(file_id.as_bytes())),
        filename: format!("{file_id}.txt"),
        file_size_bytes: 42,
        mime_type: Some("text/plain".into()),
        purpose: "file-extract".into(),
        status,
        reference: format!("job-{file_id}"),
    }
}

#[tokio::test]
async fn files_list_prints_upload_rows_by_status() {
    let ctx = stack_with_db("cli-files").await;
    let pool = ctx.pool();
    db::insert_or_get(pool, &upload("file-a", UploadStatus::StoragePending))
        .await
        .unwrap();
    db::insert_or_get(pool, &upload("file-b", UploadStatus::Completed))
        .await
        .unwrap();
    let c = db::insert_or_get(pool, &upload("file-c", UploadStatus::StoragePending))
        .await
        .unwrap();
    db::mark_storage_failed(pool, c.row.id, "storage down")
        .await
        .unwrap();

    // Postgres only: an unreachable Redis does not matter.
    let no_redis = [("REDIS_URL", "redis://127.0.0.1:1")];
    let all = ctx
        .worker_cli(&["files", "list", "--json"], &no_redis)
        .await
        .json();
    let mut ids: Vec<&str> = all["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["provider_file_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["file-a", "file-b", "file-c"]);

    let failed = ctx
        .worker_cli(
            &["files", "list", "--status", "storage_failed", "--json"],
            &no_redis,
        )
        .await
        .json();
    let files = failed["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["provider_file_id"], "file-c");
    assert_eq!(files[0]["status"], "storage_failed");
    assert_eq!(files[0]["last_error"], "storage down");
    assert_eq!(files[0]["id"], c.row.id.to_string());

    let one = ctx
        .worker_cli(&["files", "list", "--limit", "1", "--json"], &no_redis)
        .await
        .json();
    assert_eq!(one["files"].as_array().unwrap().len(), 1);

    let table = ctx.worker_cli(&["files", "list"], &no_redis).await;
    assert!(table.ok(), "{table:?}");
    assert_eq!(table.row("ID")[..3], ["ID", "PROVIDER", "FILE"]);
    let row = table.row(&c.row.id.to_string());
    assert_eq!(
        row[1..7],
        ["kimi", "file-c", "file-c.txt", "42", "storage_failed", "0"]
    );
    assert!(row.join(" ").ends_with("storage down"), "{row:?}");

    let none = ctx
        .worker_cli(&["files", "list", "--status", "deleted"], &no_redis)
        .await;
    assert!(
        none.ok() && none.stdout.contains("no deleted files"),
        "{none:?}"
    );
}

#[tokio::test]
async fn storage_retry_failed_enqueues_a_push_for_every_failed_row() {
    let ctx = stack_with_db("cli-retry-failed").await;
    let pool = ctx.pool();
    let mut failed = Vec::new();
    for id in ["file-x", "file-y"] {
        let up = db::insert_or_get(pool, &upload(id, UploadStatus::StoragePending))
            .await
            .unwrap();
        db::mark_storage_failed(pool, up.row.id, "storage down")
            .await
            .unwrap();
        failed.push(up.row.id);
    }
    db::insert_or_get(pool, &upload("file-ok", UploadStatus::Completed))
        .await
        .unwrap();
    let pushes = queue_of(&ctx, queue::STORAGE_PUSH);

    let out = ctx.worker_cli(&["storage", "retry-failed"], &[]).await;
    assert!(out.ok(), "{out:?}");
    for row in &failed {
        assert!(
            out.stdout.contains(&format!("re-driven {row} as job ")),
            "{out:?}"
        );
    }
    assert!(out.stdout.contains("re-drove 2 rows"), "{out:?}");
    assert_eq!(pushes.counts().await.unwrap().queued, 2);

    // Again, as JSON: the same jobs (a re-drive before the push ran enqueues nothing new).
    let again = ctx
        .worker_cli(&["storage", "retry-failed", "--json"], &[])
        .await
        .json();
    let redriven = again["redriven"].as_array().unwrap();
    assert_eq!(redriven.len(), 2);
    for r in redriven {
        let job = pushes
            .job(r["job_id"].as_str().unwrap())
            .await
            .unwrap()
            .expect("the push job exists");
        assert_eq!(job.state, JobState::Queued);
        let payload: Value = serde_json::from_slice(&job.payload).unwrap();
        assert_eq!(payload["row_id"], r["row_id"]);
    }
    assert_eq!(pushes.counts().await.unwrap().queued, 2);

    // The older spelling still works.
    let legacy = ctx.worker_cli(&["storage", "redrive", "--all"], &[]).await;
    assert!(
        legacy.ok() && legacy.stdout.contains("re-driven"),
        "{legacy:?}"
    );
}

/// The value of the series `series` (name and labels, exactly as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn scrape(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("scrape")
        .error_for_status()
        .expect("200")
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn worker_metrics_report_jobs_queues_and_semaphores() {
    let ctx = stack("cli-metrics").await;
    let port = free_port();
    let closed = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let metrics_addr = format!("127.0.0.1:{port}");
    let kimi_url = format!("http://127.0.0.1:{closed}/v1");
    let _worker = ctx.spawn_worker_with(
        &["--queues", "tool_calls"],
        &[
            ("EXAI_WORKER_METRICS_ADDR", metrics_addr.as_str()),
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "1"),
            ("KIMI_SEMAPHORE_TIMEOUT", "0.1"),
            ("KIMI_API_KEY", "sk-test"),
            // Nothing listens there: every chat attempt fails with a transient connection error.
            ("KIMI_API_URL", kimi_url.as_str()),
        ],
    );
    let q = queue_of(&ctx, queue::TOOL_CALLS);

    // Three echo jobs complete; an unknown tool is dead at once.
    for i in 0..3 {
        q.enqueue(&echo(&format!("ok-{i}"))).await.unwrap();
    }
    let bad = NewJob::json(&ToolCallJob {
        tool: "no_such_tool".into(),
        arguments: json!({}),
        session_id: "s".into(),
        request_id: None,
        deadline_ms: None,
        staged: None,
    })
    .unwrap()
    .with_id("bad");
    q.enqueue(&bad).await.unwrap();
    let settled = wait_until(WAIT, || {
        let url = url.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(r) => {
                    let text = r.text().await.unwrap_or_default();
                    sample(
                        &text,
                        r#"exai_worker_job_duration_seconds_count{queue="tool_calls",outcome="completed"}"#,
                    ) == Some(3.0)
                        && sample(
                            &text,
                            r#"exai_worker_job_duration_seconds_count{queue="tool_calls",outcome="dead"}"#,
                        ) == Some(1.0)
                }
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(settled, "the jobs settle and the endpoint reports them");
    let text = scrape(&url).await;
    for (series, value) in [
        (
            r#"exai_worker_queue_jobs{queue="tool_calls",state="completed"}"#,
            3.0,
        ),
        (
            r#"exai_worker_queue_jobs{queue="tool_calls",state="dead"}"#,
            1.0,
        ),
        (
            r#"exai_worker_queue_jobs{queue="tool_calls",state="queued"}"#,
            0.0,
        ),
        (
            r#"exai_worker_queue_jobs{queue="uploads",state="queued"}"#,
            0.0,
        ),
        (r#"exai_worker_queue_paused{queue="tool_calls"}"#, 0.0),
        (r#"exai_worker_jobs_dead_total{queue="tool_calls"}"#, 1.0),
        (r#"exai_worker_job_retries_total{queue="tool_calls"}"#, 0.0),
        (r#"exai_worker_semaphore_limit{semaphore="kimi"}"#, 1.0),
        (r#"exai_worker_semaphore_limit{semaphore="global"}"#, 24.0),
        (
            r#"exai_worker_semaphore_effective_limit{semaphore="kimi"}"#,
            1.0,
        ),
        (
            r#"exai_worker_semaphore_effective_limit{semaphore="global"}"#,
            24.0,
        ),
        (r#"exai_worker_semaphore_in_use{semaphore="kimi"}"#, 0.0),
        (
            r#"exai_worker_semaphore_limit_decreases_total{semaphore="kimi"}"#,
            0.0,
        ),
        (
            r#"exai_worker_semaphore_leases_lost_total{semaphore="kimi"}"#,
            0.0,
        ),
        ("exai_worker_scrape_errors_total", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(text.contains("# TYPE exai_worker_job_duration_seconds histogram"));

    // The test holds the only kimi permit: a chat job waits, times out and is put back.
    let semaphores = Semaphores::from_config(&test_config(
        &ctx.prefix,
        &[("EXAI_WS_KIMI_MAX_INFLIGHT", "1")],
    ))
    .await
    .unwrap();
    let guard = semaphores
        .try_acquire(&["global", "kimi"], &HolderInfo::new("test", "held", 1))
        .await
        .unwrap()
        .expect("the kimi permit is free");
    assert_eq!(
        sample(
            &scrape(&url).await,
            r#"exai_worker_semaphore_in_use{semaphore="kimi"}"#
        ),
        Some(1.0)
    );
    let chat = NewJob::json(&ToolCallJob {
        tool: "chat".into(),
        arguments: json!({"prompt": "hi", "model": "kimi-k2-0905-preview"}),
        session_id: "s".into(),
        request_id: None,
        deadline_ms: None,
        staged: None,
    })
    .unwrap()
    .with_id("chat")
    .with_max_attempts(2);
    q.enqueue(&chat).await.unwrap();
    let waited = wait_until(WAIT, || {
        let url = url.clone();
        async move {
            let text = scrape(&url).await;
            sample(
                &text,
                r#"exai_worker_semaphore_waits_total{semaphore="kimi",outcome="timed_out"}"#,
            )
            .is_some_and(|n| n >= 1.0)
                && sample(
                    &text,
                    r#"exai_worker_job_duration_seconds_count{queue="tool_calls",outcome="put_back"}"#,
                )
                .is_some_and(|n| n >= 1.0)
        }
    })
    .await;
    assert!(waited, "the wait and the put-back are counted");

    // With the permit back, the chat runs, fails transiently, retries once, and is dead.
    guard.release().await.unwrap();
    let dead = wait_until(WAIT, || {
        let q = q.clone();
        async move { q.job("chat").await.unwrap().unwrap().state == JobState::Dead }
    })
    .await;
    assert!(dead, "the chat job ends dead after its two attempts");
    let job = q.job("chat").await.unwrap().unwrap();
    assert_eq!(job.attempts, 2, "put-backs burnt no attempt: {job:?}");
    let text = scrape(&url).await;
    for (series, value) in [
        (r#"exai_worker_job_retries_total{queue="tool_calls"}"#, 1.0),
        (r#"exai_worker_jobs_dead_total{queue="tool_calls"}"#, 2.0),
        (
            r#"exai_worker_job_duration_seconds_count{queue="tool_calls",outcome="retrying"}"#,
            1.0,
        ),
        (
            r#"exai_worker_job_duration_seconds_count{queue="tool_calls",outcome="dead"}"#,
            2.0,
        ),
        (
            r#"exai_worker_queue_jobs{queue="tool_calls",state="dead"}"#,
            2.0,
        ),
        (r#"exai_worker_semaphore_in_use{semaphore="kimi"}"#, 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_metrics_count_storage_push_outcomes() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let addr = format!("127.0.0.1:{port}");
    let stack = TestStack::uploads(
        "cli-push-metrics",
        &[
            ("EXAI_WORKER_METRICS_ADDR", addr.as_str()),
            ("EXAI_STORAGE_RETRY_MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    let worker = stack.spawn_worker(&[]);
    let upload = |name: &'static str, data: &'static [u8]| {
        let path = stack.write_file(name, data);
        let stack = &stack;
        async move {
            let text = stack
                .call(
                    "kimi_upload_files",
                    json!({"files": [path.display().to_string()]}),
                )
                .await
                .expect("the upload succeeds");
            let items: Value = serde_json::from_str(&text).unwrap();
            items[0]["file_id"].as_str().unwrap().to_owned()
        }
    };

    // Storage is down: the push is retried once, then gives up.
    stack
        .sim()
        .add_fault(json!({"route": "supabase.object.upload", "action": "fail", "status": 503}))
        .unwrap();
    let down = upload("down.txt", b"bytes storage never gets").await;
    stack.wait_status(&down, UploadStatus::StorageFailed).await;
    // Storage is back: the next push succeeds.
    let cleared = reqwest::Client::new()
        .delete(format!("{}/_sim/faults", stack.sim().url()))
        .send()
        .await
        .unwrap();
    assert!(cleared.status().is_success());
    let up = upload("up.txt", b"bytes storage keeps").await;
    stack.wait_status(&up, UploadStatus::Completed).await;

    let expected = [
        (r#"exai_worker_storage_pushes_total{outcome="retry"}"#, 1.0),
        (r#"exai_worker_storage_pushes_total{outcome="failed"}"#, 1.0),
        (r#"exai_worker_storage_pushes_total{outcome="pushed"}"#, 1.0),
        (
            r#"exai_worker_job_retries_total{queue="storage_push"}"#,
            1.0,
        ),
        (r#"exai_worker_jobs_dead_total{queue="storage_push"}"#, 1.0),
        (
            r#"exai_worker_queue_jobs{queue="storage_push",state="dead"}"#,
            1.0,
        ),
        (
            r#"exai_worker_queue_jobs{queue="storage_push",state="completed"}"#,
            1.0,
        ),
    ];
    // The last push settles just after its row is written: wait for the counts to catch up.
    let all_there = wait_until(WAIT, || {
        let url = url.clone();
        async move {
            let text = scrape(&url).await;
            expected
                .iter()
                .all(|(series, value)| sample(&text, series) == Some(*value))
        }
    })
    .await;
    let text = scrape(&url).await;
    assert!(all_there, "expected {expected:?} in\n{text}");
    worker.kill_and_wait().await;
    stack.cleanup().await;
}

// ----- a second shell: the settings file of a scripts/up stack, quiet reads, one-line errors ----

/// A directory removed when the test ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `exai-worker <args>` in `cwd` with only `PATH` and `env` in its environment.
async fn bare_cli(
    args: &[&str],
    cwd: &std::path::Path,
    env: &[(&str, &str)],
) -> exai_tests::command::CommandOutput {
    let out = tokio::process::Command::new(exai_tests::bin_path("exai-worker"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .output();
    tokio::time::timeout(WAIT, out)
        .await
        .expect("the command finishes")
        .expect("run exai-worker")
        .into()
}

/// Whether `tool_calls` is paused, as `queue stats --json` printed it.
fn tool_calls_paused(out: &exai_tests::command::CommandOutput) -> bool {
    out.json()["queues"]["tool_calls"]["paused"]
        .as_bool()
        .expect("a paused flag")
}

#[tokio::test]
async fn a_second_shell_reads_the_stacks_settings_file() {
    use std::os::unix::fs::PermissionsExt;
    let ctx = stack("cli-runenv").await;
    queue_of(&ctx, queue::TOOL_CALLS).pause().await.unwrap();
    let dir = TempDir(std::env::temp_dir().join(format!("exai-runenv-{}", uuid::Uuid::new_v4())));
    let run = dir.0.join("data/run");
    let sub = dir.0.join("some/where");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&sub).unwrap();
    let file = run.join("env");
    // What scripts/up writes: KEY='value' lines, mode 0600.
    std::fs::write(
        &file,
        format!(
            "# a comment\nREDIS_URL='{}'\nEXAI_REDIS_PREFIX='{}'\nDATABASE_URL='{NO_POSTGRES}'\n",
            ctx.redis_url, ctx.prefix
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stats = ["queue", "stats", "--json"];

    // Found from a subdirectory, no variable set: the stack's prefix, where tool_calls is paused.
    let out = bare_cli(&stats, &sub, &[]).await;
    assert!(tool_calls_paused(&out), "{out}");
    assert_eq!(out.stderr, "", "a read is quiet: {out}");

    // Named by EXAI_RUN_ENV from anywhere; a variable set in the environment wins over it.
    let path = file.display().to_string();
    let tmp = std::env::temp_dir();
    let out = bare_cli(&stats, &tmp, &[("EXAI_RUN_ENV", &path)]).await;
    assert!(tool_calls_paused(&out), "{out}");
    let other = exai_tests::unique_prefix("cli-runenv-other");
    let out = bare_cli(&stats, &sub, &[("EXAI_REDIS_PREFIX", &other)]).await;
    assert!(!tool_calls_paused(&out), "the environment's prefix: {out}");
    // EXAI_RUN_ENV empty: no file is read.
    let out = bare_cli(
        &["queue", "stats", "-v"],
        &sub,
        &[
            ("EXAI_RUN_ENV", ""),
            ("REDIS_URL", &ctx.redis_url),
            ("EXAI_REDIS_PREFIX", &other),
        ],
    )
    .await;
    assert!(out.ok(), "{out}");
    assert!(!out.stderr.contains("settings read from"), "{out}");

    // -v (or RUST_LOG) shows the info lines, which say where the settings came from.
    let out = bare_cli(&["queue", "stats", "-v"], &sub, &[]).await;
    assert!(out.ok(), "{out}");
    assert!(out.stderr.contains("settings read from"), "{out}");
    assert!(out.stderr.contains(&path), "{out}");
    let out = bare_cli(&["sem"], &sub, &[("RUST_LOG", "info")]).await;
    assert!(out.stderr.contains("settings read from"), "{out}");
    let out = bare_cli(&["sem"], &sub, &[]).await;
    assert_eq!(out.stderr, "", "{out}");

    // A file others may read: one warning line, and the command still works.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bare_cli(&stats, &sub, &[]).await;
    assert!(tool_calls_paused(&out), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(
        out.stderr.contains("readable by other users (mode 0644)")
            && out.stderr.contains("chmod 600"),
        "{out}"
    );

    // A file that is named and missing is an error, in one line.
    let out = bare_cli(&stats, &tmp, &[("EXAI_RUN_ENV", "/nonexistent/run/env")]).await;
    out.assert_error(1, "EXAI_RUN_ENV");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
}

#[tokio::test]
async fn a_user_error_is_one_line_without_a_backtrace() {
    let ctx = stack("cli-oneline").await;
    let backtrace = [("RUST_BACKTRACE", "1")];
    for (args, extra, needle) in [
        (
            &["queue", "list", "nope"][..],
            &[][..],
            "unknown queue `nope`",
        ),
        (
            &["queue", "show", "missing"],
            &[],
            "no job `missing` in any queue",
        ),
        (&["files", "list"], &[], "cannot connect to Postgres"),
        (
            &["queue", "stats"],
            &[("REDIS_URL", "http://not-redis")][..],
            "REDIS_URL",
        ),
        (
            &["queue", "stats"],
            &[("EXAI_WS_PORT", "many")],
            "EXAI_WS_PORT",
        ),
    ] {
        let mut env = backtrace.to_vec();
        env.extend_from_slice(extra);
        let out = ctx.worker_cli(args, &env).await;
        out.assert_error(1, needle);
        assert_eq!(out.stderr.lines().count(), 1, "one line: {out}");
        assert!(out.stderr.starts_with("error: "), "{out}");
        assert!(!out.stderr.contains("Stack backtrace"), "{out}");
        assert!(!out.stderr.contains("Caused by"), "{out}");
    }
}

#[tokio::test]
async fn a_cleanup_run_missing_the_workers_settings_keeps_the_last_report() {
    use exai_shared::cleanup_report::{self, CleanupReport, Sweeps};
    let ctx = stack_with_db("cli-cleanup-kept").await;
    // The workers' last scheduled run ran every sweep (they have Moonshot and Supabase).
    let at = chrono::Utc::now();
    let scheduled = CleanupReport {
        dry_run: false,
        sweeps: Sweeps::default(),
        started_at: at,
        finished_at: at,
    };
    cleanup_report::store_report(&ctx.conn, &ctx.keys, 1_700_000_000, &scheduled)
        .await
        .unwrap();

    // A shell without KIMI_API_KEY or Supabase: the report is printed, not stored, and says why.
    let out = ctx
        .worker_cli(
            &["cleanup", "--dry-run", "--json"],
            &[("RUST_BACKTRACE", "1")],
        )
        .await;
    assert_eq!(out.code, Some(1), "{out}");
    let printed: Value = serde_json::from_str(&out.stdout).expect("the report is printed");
    assert!(printed["sweeps"]["moonshot_orphans"]["skipped"].is_string());
    let last_line = out.stderr.lines().last().unwrap_or_default();
    assert!(last_line.starts_with("error: report not stored"), "{out}");
    assert!(last_line.contains("moonshot_orphans"), "{out}");
    assert!(last_line.contains("KIMI_API_KEY is not set"), "{out}");
    assert!(last_line.contains("data/run/env"), "{out}");
    let last = cleanup_report::last_report(&ctx.conn, &ctx.keys)
        .await
        .unwrap()
        .expect("a stored report");
    assert_eq!(last.tick, 1_700_000_000, "the scheduled run's report stays");
    assert_eq!(
        cleanup_report::history(&ctx.conn, &ctx.keys, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}
