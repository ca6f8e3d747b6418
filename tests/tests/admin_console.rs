//! The admin console against real Redis, real `exai-daemon` and `exai-worker` processes and a
//! real headless Chromium:
//!
//! - the per-minute history the queue scripts write (completed, failed, retried and dead
//!   counts that match what ran — a retried, a dead and a crashed attempt included — with
//!   wait and run percentiles), none with `EXAI_QUEUE_HISTORY=false`;
//! - `GET /admin/api/queues/{queue}/history` after jobs ran through real worker processes,
//!   and `exai-worker queue history` (table and `--json`); the validation of `minutes`;
//! - `GET /admin/api/workers` listing the running worker processes and their running jobs;
//! - search by id and by payload text within a bounded scan; bulk retry of dead jobs and bulk
//!   delete; cancelled jobs listed by the API and the CLI; a bad parameter's 400 naming it;
//!   `state` defaulting to `queued`; every new endpoint behind the token and the Origin check.

use std::time::Duration;

use exai_shared::jobs::ToolCallJob;
use exai_shared::queue::history::MinuteHistory;
use exai_shared::queue::{
    Ack, Backoff, FailKind, FailOutcome, JobState, NewJob, Queue, QueuePolicy, TOOL_CALLS,
};
use exai_tests::{TestStack, wait_for, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The admin token of these tests.
const ADMIN_TOKEN: &str = "admin-token-of-the-console-tests";

/// How long a condition may take before a test gives up on it.
const DEADLINE: Duration = Duration::from_secs(10);

/// Short leases and backoffs, two attempts per job.
fn fast_policy() -> QueuePolicy {
    QueuePolicy {
        max_attempts: 2,
        backoff: Backoff {
            min: Duration::from_millis(50),
            factor: 2.0,
            max: Duration::from_secs(1),
            jitter: false,
        },
        lease: Duration::from_millis(300),
        ..QueuePolicy::default()
    }
}

/// The history of the last `minutes` minutes, summed.
async fn summed(q: &Queue, minutes: u32) -> MinuteHistory {
    let history = q.history(minutes).await.expect("history");
    assert_eq!(history.len(), minutes as usize);
    let mut sum = MinuteHistory::default();
    for w in history.windows(2) {
        assert_eq!(
            w[1].minute,
            w[0].minute + 60,
            "consecutive minutes, oldest first"
        );
    }
    for m in &history {
        assert_eq!(m.minute % 60, 0);
        sum.completed += m.completed;
        sum.failed += m.failed;
        sum.retried += m.retried;
        sum.dead += m.dead;
        sum.wait.add(&m.wait);
        sum.run.add(&m.run);
    }
    sum
}

/// Runs the mixed workload of the history tests on `q`: four jobs complete, one fails once
/// (transient) and then completes, one fails permanently (dead), and one's worker "crashes"
/// on its only attempt (the sweep finds the expired lease: dead).
async fn mixed_workload(q: &Queue) {
    for id in ["ok-1", "ok-2", "ok-3", "ok-4", "flaky", "perm"] {
        q.enqueue(&NewJob::new(format!(r#"{{"job":"{id}"}}"#)).with_id(id))
            .await
            .expect("enqueue");
    }
    q.enqueue(&NewJob::new("{}").with_id("crash").with_max_attempts(1))
        .await
        .expect("enqueue");
    let fetched = q.fetch("w", 10).await.expect("fetch");
    assert_eq!(fetched.len(), 7);
    let lease = |id: &str| {
        fetched
            .iter()
            .find(|f| f.id() == id)
            .expect("fetched")
            .lease
            .clone()
    };
    let done: Vec<_> = ["ok-1", "ok-2", "ok-3", "ok-4"]
        .iter()
        .map(|id| (lease(id), b"ok".to_vec()))
        .collect();
    assert!(
        q.complete_many(&done)
            .await
            .unwrap()
            .iter()
            .all(|a| *a == Ack::Done)
    );
    let outcome = q
        .fail(&lease("flaky"), "try again", FailKind::Transient)
        .await
        .unwrap();
    assert!(
        matches!(outcome, FailOutcome::Retrying { .. }),
        "{outcome:?}"
    );
    let outcome = q
        .fail(&lease("perm"), "no", FailKind::Permanent)
        .await
        .unwrap();
    assert_eq!(outcome, FailOutcome::Dead);
    // The crashed attempt: its lease expires, the sweep makes the job dead.
    let swept = wait_for(DEADLINE, || async {
        let r = q.sweep(100).await.unwrap();
        (r.dead == 1).then_some(r)
    })
    .await;
    assert!(swept.is_some(), "the sweep never found the expired lease");
    // The flaky job's second attempt, once its backoff is over, completes through the
    // worker's round trip (complete_and_fetch).
    let again = wait_for(DEADLINE, || async {
        let f = q.fetch("w", 1).await.unwrap();
        f.into_iter().next()
    })
    .await
    .expect("the retry comes due");
    assert_eq!(again.id(), "flaky");
    let cycle = q
        .complete_and_fetch(&[(again.lease.clone(), &b"ok"[..])], "w", 0, DEADLINE)
        .await
        .unwrap();
    assert_eq!(cycle.acks, [Ack::Done]);
    assert_eq!(
        q.job("flaky").await.unwrap().unwrap().state,
        JobState::Completed
    );
}

#[tokio::test]
async fn the_scripts_that_end_attempts_write_the_history_of_each_minute() {
    let ctx = TestStack::start("console-history").await;
    let q = ctx.queue_with(TOOL_CALLS, fast_policy());
    let empty = summed(&q, 3).await;
    assert_eq!(
        (empty.completed, empty.failed, empty.run.count()),
        (0, 0, 0)
    );
    mixed_workload(&q).await;

    // The workload may straddle a minute: the last three minutes hold all of it.
    let sum = summed(&q, 3).await;
    assert_eq!(sum.completed, 5, "{sum:?}");
    assert_eq!(sum.failed, 3, "flaky's first attempt, perm, crash: {sum:?}");
    assert_eq!(sum.retried, 1, "{sum:?}");
    assert_eq!(sum.dead, 2, "{sum:?}");
    // The wait of every attempt that started (seven, and flaky's second), the run time of the
    // seven that ended by complete or fail (the crashed one has no known end).
    assert_eq!(sum.wait.count(), 8, "{sum:?}");
    assert_eq!(sum.run.count(), 7, "{sum:?}");
    assert!(sum.wait.percentile(0.5).is_some() && sum.run.percentile(0.95).is_some());
    // The flaky job waited out its backoff (≥ 50 ms) before its second attempt, but that wait
    // counts from when it came due, so no wait is anywhere near the 300 ms lease.
    assert!(sum.wait.percentile(0.95).unwrap() < 10_000, "{sum:?}");

    // One hash per minute, expiring within ~25 h.
    let history = q.history(3).await.unwrap();
    let minute = history
        .iter()
        .rev()
        .find(|m| m.completed > 0)
        .unwrap()
        .minute;
    let ttl: i64 = redis::cmd("TTL")
        .arg(ctx.keys.queue(TOOL_CALLS).history(minute))
        .query_async(&mut ctx.conn.clone())
        .await
        .unwrap();
    assert!(ttl > 24 * 3600 && ttl <= 25 * 3600, "ttl {ttl}");

    // A day at most, one entry per minute, the current one last.
    assert_eq!(q.history(5000).await.unwrap().len(), 1440);
    assert_eq!(q.history(0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn no_history_is_written_when_it_is_switched_off() {
    let ctx = TestStack::start("console-history-off").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            history: false,
            ..fast_policy()
        },
    );
    mixed_workload(&q).await;
    let sum = summed(&q, 3).await;
    assert_eq!(
        (sum.completed, sum.failed, sum.retried, sum.dead),
        (0, 0, 0, 0)
    );
    assert_eq!(sum.wait.count() + sum.run.count(), 0);
    // The jobs ran all the same.
    assert_eq!(q.counts().await.unwrap().completed, 5);
}

// ----- the API and the CLI, against real processes ------------------------------------------

/// A `test_echo` tool call with these arguments.
fn echo(id: &str, args: Value) -> NewJob {
    NewJob::json(&ToolCallJob {
        tool: "test_echo".into(),
        arguments: args,
        session_id: "console".into(),
        request_id: None,
        deadline_ms: None,
        staged: None,
    })
    .unwrap()
    .with_id(id)
}

/// An HTTP client of one stack's daemon, with the admin token.
struct Api<'a> {
    stack: &'a TestStack,
    http: reqwest::Client,
}

impl<'a> Api<'a> {
    fn new(stack: &'a TestStack) -> Self {
        Self {
            stack,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/admin/api/{path}", self.stack.daemon().addr)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.http.get(self.url(path)).bearer_auth(ADMIN_TOKEN)).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.post(self.url(path)).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        send(req).await
    }
}

/// Status and JSON body of a request.
async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let res = req.send().await.expect("request");
    let status = res.status();
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text}"));
    (status, body)
}

/// The ids of a listing or search answer.
fn ids(body: &Value) -> Vec<String> {
    body["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs: {body}"))
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The sum of a history answer's `field` over its minutes.
fn total(body: &Value, field: &str) -> u64 {
    body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[field].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_and_workers_after_a_run_of_jobs_through_real_worker_processes() {
    let stack = TestStack::builder("console-api-history")
        .env("EXAI_ADMIN_TOKEN", ADMIN_TOKEN)
        .daemon()
        .workers(2)
        .start()
        .await;
    let api = Api::new(&stack);
    let q = stack.queue(TOOL_CALLS);
    for i in 0..20 {
        q.enqueue(&echo(&format!("echo-{i}"), json!({"n": i})))
            .await
            .unwrap();
    }
    // Arguments the tool's schema refuses: a permanent error, dead at once.
    q.enqueue(&echo("echo-bad", json!({"delay_ms": "soon"})))
        .await
        .unwrap();
    let drained = wait_until(Duration::from_secs(30), || async {
        let c = q.counts().await.unwrap();
        c.completed == 20 && c.dead == 1
    })
    .await;
    assert!(drained, "{:?}", q.counts().await.unwrap());

    // The history: one entry per minute, oldest first, the counts of what ran.
    let (status, body) = api.get("queues/tool_calls/history?minutes=3").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["queue"], "tool_calls");
    assert_eq!(body["minutes"], 3);
    let minutes = body["history"].as_array().unwrap();
    assert_eq!(minutes.len(), 3);
    for m in minutes {
        let ts = m["ts"].as_u64().unwrap();
        assert_eq!(ts % 60, 0, "{m}");
        let minute = m["minute"].as_str().unwrap();
        assert!(minute.ends_with(":00Z") && minute.contains('T'), "{m}");
        for key in ["wait_ms", "run_ms"] {
            assert!(
                m[key].get("p50").is_some() && m[key].get("p95").is_some(),
                "{m}"
            );
        }
    }
    assert!(minutes[0]["ts"].as_u64() < minutes[2]["ts"].as_u64());
    assert_eq!(total(&body, "completed"), 20, "{body}");
    assert_eq!(total(&body, "failed"), 1, "{body}");
    assert_eq!(total(&body, "dead"), 1, "{body}");
    assert_eq!(total(&body, "retried"), 0, "{body}");
    let measured = minutes
        .iter()
        .filter(|m| m["completed"].as_u64() > Some(0))
        .all(|m| m["wait_ms"]["p95"].is_u64() && m["run_ms"]["p50"].is_u64());
    assert!(measured, "percentiles where jobs ran: {body}");
    // Every attempt's wait was measured — those the workers fetched and those an enqueue
    // handed straight to an idle worker — and every attempt's run time.
    let sum = summed(&q, 3).await;
    assert_eq!((sum.wait.count(), sum.run.count()), (21, 21), "{sum:?}");

    // `minutes`: 60 by default, 1 to 1440, else a 400 naming it.
    let (status, body) = api.get("queues/tool_calls/history").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["history"].as_array().unwrap().len(), 60);
    let (_, body) = api.get("queues/tool_calls/history?minutes=1440").await;
    assert_eq!(body["history"].as_array().unwrap().len(), 1440);
    for bad in ["0", "1441", "abc", "-5", ""] {
        let (status, body) = api
            .get(&format!("queues/tool_calls/history?minutes={bad}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(
            body["error"],
            format!("invalid parameter `minutes`: expected an integer 1 to 1440, got `{bad}`")
        );
    }
    let (status, _) = api.get("queues/no_such_queue/history").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The CLI prints the same history: a table with dates and times, and the same JSON.
    let out = stack
        .worker_cli(&["queue", "history", "tool_calls", "--minutes", "3"], &[])
        .await;
    assert!(out.ok(), "{out}");
    assert!(
        out.stdout.starts_with("MINUTE (UTC)") && out.stdout.contains("RUN P95"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("3 minutes of tool_calls: 20 completed, 1 failed (0 retried, 1 dead)"),
        "{out}"
    );
    let dated = |l: &&str| {
        l.get(..16)
            .is_some_and(|d| chrono::NaiveDateTime::parse_from_str(d, "%Y-%m-%d %H:%M").is_ok())
    };
    assert_eq!(
        out.stdout.lines().filter(dated).count(),
        3,
        "one line per minute, dated: {out}"
    );
    assert!(!out.stderr.contains("INFO"), "quiet: {out}");
    let json = stack
        .worker_cli(
            &["queue", "history", "tool_calls", "--minutes", "3", "--json"],
            &[],
        )
        .await
        .json();
    assert_eq!(json["minutes"], 3);
    assert_eq!(total(&json, "completed"), 20, "{json}");
    stack
        .worker_cli(
            &["queue", "history", "tool_calls", "--minutes", "1441"],
            &[],
        )
        .await
        .assert_error(2, "--minutes");

    // The workers: both processes, as they registered, with their running jobs.
    let (status, body) = api.get("workers").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let workers = body["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{body}");
    let mut pids: Vec<u64> = workers.iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    pids.sort_unstable();
    let mut want: Vec<u64> = stack.workers.iter().map(|w| u64::from(w.pid())).collect();
    want.sort_unstable();
    assert_eq!(pids, want, "{body}");
    for w in workers {
        assert_eq!(w["queues"], json!(["tool_calls"]), "{w}");
        assert_eq!(w["concurrency"], 16, "{w}");
        assert!(w["host"].as_str().is_some_and(|h| !h.is_empty()), "{w}");
        assert!(
            w["id"].as_str().unwrap().contains(&w["pid"].to_string()),
            "{w}"
        );
        let seen = w["last_seen"].as_str().unwrap();
        assert!(seen.ends_with('Z') && seen.contains('T'), "{w}");
        assert_eq!(w["running"], 0, "{w}");
    }
    // A job that runs a while shows as running on one of them.
    q.enqueue(&echo("echo-slow", json!({"delay_ms": 60_000})))
        .await
        .unwrap();
    let running = wait_for(Duration::from_secs(20), || async {
        let (_, body) = api.get("workers").await;
        let n: u64 = body["workers"]
            .as_array()?
            .iter()
            .map(|w| w["running"].as_u64().unwrap_or(0))
            .sum();
        (n == 1).then_some(body)
    })
    .await;
    assert!(running.is_some(), "the slow job never showed as running");
    let job = stack.job("echo-slow").await.unwrap();
    let holder = job.worker.unwrap();
    let body = running.unwrap();
    let runner = body["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["running"] == 1)
        .unwrap();
    assert!(
        holder.starts_with(runner["id"].as_str().unwrap()),
        "{holder}: {runner}"
    );

    // Without the token: refused, as every admin API request.
    for path in [
        "workers",
        "queues/tool_calls/history",
        "queues/tool_calls/search?q=x",
    ] {
        let (status, _) = send(api.http.get(api.url(path))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

/// A stack with a daemon and no workers, and `tool_calls` seeded: dead jobs `dead-0..4`
/// (permanent errors), queued jobs `q-0..2` whose payloads name a colour, a running one, a
/// completed one and a cancelled one.
async fn seeded(test: &str) -> (TestStack, Queue) {
    let stack = TestStack::builder(test)
        .env("EXAI_ADMIN_TOKEN", ADMIN_TOKEN)
        .daemon()
        .start()
        .await;
    let q = stack.queue(TOOL_CALLS);
    for i in 0..5 {
        q.enqueue(&echo(&format!("dead-{i}"), json!({"n": i})))
            .await
            .unwrap();
        let f = q.fetch("console-test", 1).await.unwrap();
        let outcome = q
            .fail(&f[0].lease, "provider said no", FailKind::Permanent)
            .await
            .unwrap();
        assert_eq!(outcome, FailOutcome::Dead);
    }
    q.enqueue(&echo("done-1", json!({"colour": "teal"})))
        .await
        .unwrap();
    let f = q.fetch("console-test", 1).await.unwrap();
    q.complete(&f[0].lease, b"{}").await.unwrap();
    q.enqueue(&echo("running-1", json!({"colour": "teal"})))
        .await
        .unwrap();
    q.fetch("console-test", 1).await.unwrap();
    for (i, colour) in ["red", "teal", "blue"].iter().enumerate() {
        q.enqueue(&echo(&format!("q-{i}"), json!({"colour": colour})))
            .await
            .unwrap();
    }
    q.enqueue(&echo("gone-1", json!({"colour": "teal"})))
        .await
        .unwrap();
    q.cancel("gone-1").await.unwrap();
    (stack, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_finds_by_id_and_by_payload_text_within_a_bounded_scan() {
    let (stack, _q) = seeded("console-search").await;
    let api = Api::new(&stack);

    // By id: the job itself, first, whatever its state.
    let (status, body) = api.get("queues/tool_calls/search?q=dead-3").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["by_id"], true, "{body}");
    assert_eq!(ids(&body), ["dead-3"], "{body}");

    // By text, every state: the teal jobs (queued, running, completed, cancelled).
    let (status, body) = api.get("queues/tool_calls/search?q=teal").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["by_id"], false);
    let mut found = ids(&body);
    found.sort();
    assert_eq!(found, ["done-1", "gone-1", "q-1", "running-1"], "{body}");
    assert_eq!(body["cut"], false, "{body}");
    // The cancelled job's stale wait-list entry and the other entries were read.
    assert!(body["scanned"].as_u64().unwrap() >= 11, "{body}");
    assert_eq!(body["scan"], 1000);

    // One state; a bounded scan says it was cut.
    let (_, body) = api
        .get("queues/tool_calls/search?q=teal&state=queued")
        .await;
    assert_eq!(ids(&body), ["q-1"], "{body}");
    let (_, body) = api
        .get("queues/tool_calls/search?q=colour&state=queued&scan=2")
        .await;
    assert_eq!(body["scanned"], 2, "{body}");
    assert_eq!(body["cut"], true, "{body}");
    assert_eq!(ids(&body).len(), 2, "{body}");
    let (_, body) = api
        .get("queues/tool_calls/search?q=teal&state=cancelled")
        .await;
    assert_eq!(ids(&body), ["gone-1"], "{body}");
    let (_, body) = api
        .get("queues/tool_calls/search?q=nothing-like-this")
        .await;
    assert_eq!(ids(&body), Vec::<String>::new());

    // Bad parameters name themselves.
    for (query, param) in [
        ("", "q"),
        ("q=", "q"),
        ("q=x&scan=0", "scan"),
        ("q=x&scan=10001", "scan"),
        ("q=x&state=lost", "state"),
        ("q=x&limit=abc", "limit"),
        ("q=x&colour=teal", "colour"),
    ] {
        let (status, body) = api.get(&format!("queues/tool_calls/search?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(&format!("`{param}`")), "{query}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_retry_of_dead_jobs_and_bulk_delete_answer_counts() {
    let (stack, q) = seeded("console-bulk").await;
    let api = Api::new(&stack);

    // Retry two named dead jobs (and one that is not dead), then every dead job left.
    let (status, body) = api
        .post(
            "queues/tool_calls/dead/retry",
            Some(json!({"ids": ["dead-0", "dead-1", "q-0"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["retried"], &body["skipped"], &body["dead"]),
        (&json!(2), &json!(1), &json!(3)),
        "{body}"
    );
    assert_eq!(
        q.job("dead-0").await.unwrap().unwrap().state,
        JobState::Queued
    );
    let (status, body) = api.post("queues/tool_calls/dead/retry", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["retried"], &body["dead"]),
        (&json!(3), &json!(0)),
        "{body}"
    );
    assert_eq!(body["more"], false);
    assert_eq!(q.counts().await.unwrap().dead, 0);

    // Delete: named jobs, each only if still in the state named.
    let (status, body) = api
        .post(
            "queues/tool_calls/jobs/delete",
            Some(json!({"state": "queued", "ids": ["dead-0", "dead-1", "running-1", "nope"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["deleted"], &body["other_state"], &body["not_found"]),
        (&json!(2), &json!(1), &json!(1)),
        "{body}"
    );
    assert!(q.job("dead-0").await.unwrap().is_none());
    assert_eq!(
        q.job("running-1").await.unwrap().unwrap().state,
        JobState::Running
    );
    // Every job of a state.
    let queued = q.counts().await.unwrap().queued;
    let (status, body) = api
        .post(
            "queues/tool_calls/jobs/delete",
            Some(json!({"state": "queued"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], queued, "{body}");
    let (_, body) = api.get("queues/tool_calls/jobs?state=queued").await;
    assert_eq!(ids(&body), Vec::<String>::new(), "{body}");
    let (_, body) = api
        .post(
            "queues/tool_calls/jobs/delete",
            Some(json!({"state": "cancelled"})),
        )
        .await;
    assert_eq!(body["deleted"], 1, "{body}");

    // Bad bodies and requests.
    for (path, body, want) in [
        ("queues/tool_calls/jobs/delete", json!({}), "`state`"),
        (
            "queues/tool_calls/jobs/delete",
            json!({"state": "lost"}),
            "`state`",
        ),
        (
            "queues/tool_calls/jobs/delete",
            json!({"state": "dead", "ids": []}),
            "`ids`",
        ),
        (
            "queues/tool_calls/dead/retry",
            json!({"state": "queued"}),
            "`state`",
        ),
        (
            "queues/tool_calls/dead/retry",
            json!({"ids": "dead-0"}),
            "invalid body",
        ),
    ] {
        let (status, answer) = api.post(path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(want),
            "{body}: {answer}"
        );
    }
    let many: Vec<String> = (0..1001).map(|i| format!("j{i}")).collect();
    let (status, _) = api
        .post("queues/tool_calls/dead/retry", Some(json!({"ids": many})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A form post (what a cross-site page could send without asking) is refused.
    let (status, _) = send(
        api.http
            .post(api.url("queues/tool_calls/jobs/delete"))
            .bearer_auth(ADMIN_TOKEN)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("state=dead"),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // No token: 401; a foreign Origin: 403 (before anything is read).
    let (status, _) = send(
        api.http
            .post(api.url("queues/tool_calls/dead/retry"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let res = api
        .http
        .post(api.url("queues/tool_calls/jobs/delete"))
        .bearer_auth(ADMIN_TOKEN)
        .header("Origin", "http://evil.example")
        .json(&json!({"state": "running"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        q.job("running-1").await.unwrap().unwrap().state,
        JobState::Running
    );
    // GET on an action: a JSON 405.
    let (status, _) = api.get("queues/tool_calls/dead/retry").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_jobs_are_listed_the_state_defaults_to_queued_and_bad_parameters_name_themselves()
{
    let (stack, q) = seeded("console-lists").await;
    let api = Api::new(&stack);
    q.cancel("q-2").await.unwrap();

    // Cancelled: newest first, in the API and the CLI alike.
    let (status, body) = api.get("queues/tool_calls/jobs?state=cancelled").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), ["q-2", "gone-1"], "{body}");
    assert_eq!(body["jobs"][0]["state"], "cancelled");
    assert!(body["jobs"][0]["finished_at_ms"].is_u64(), "{body}");
    let out = stack
        .worker_cli(
            &["queue", "list", "tool_calls", "--state", "cancelled"],
            &[],
        )
        .await;
    assert!(out.ok(), "{out}");
    assert_eq!(out.row("q-2")[1], "cancelled", "{out}");
    assert_eq!(out.row("gone-1")[1], "cancelled", "{out}");
    let json = stack
        .worker_cli(
            &[
                "queue",
                "list",
                "tool_calls",
                "--state",
                "cancelled",
                "--json",
            ],
            &[],
        )
        .await
        .json();
    assert_eq!(json["jobs"].as_array().unwrap().len(), 2, "{json}");

    // No state: queued, as the CLI.
    let (status, body) = api.get("queues/tool_calls/jobs").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "queued");
    assert_eq!(ids(&body), ["q-0", "q-1"], "{body}");

    // A bad parameter names itself and what it accepts.
    let (status, body) = api.get("queues/tool_calls/jobs?limit=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"],
        "invalid parameter `limit`: expected an integer 0 to 1000, got `abc`"
    );
    let (_, body) = api.get("queues/tool_calls/jobs?state=lost").await;
    assert_eq!(
        body["error"],
        "invalid parameter `state`: expected one of queued, scheduled, running, retrying, \
         completed, dead, cancelled, got `lost`"
    );
    let (_, body) = api.get("queues/tool_calls/jobs?offset=x").await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid parameter `offset`: expected an integer 0 to"),
        "{body}"
    );
    let (_, body) = api.get("queues/tool_calls/jobs?sate=dead").await;
    assert_eq!(
        body["error"],
        "unknown parameter `sate`: this endpoint takes `state`, `limit`, `offset`"
    );
    let (_, body) = api.get("queues?x=1").await;
    assert!(body["error"].as_str().unwrap().contains("`x`"), "{body}");
}

// ----- the page in a real browser ------------------------------------------------------------

/// The opening tag of the element whose `id` is `id`.
fn open_tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("the page has no #{id}:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

/// The value of attribute `name` in opening tag `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(r#" {name}=""#))? + name.len() + 3;
    Some(tag[at..at + tag[at..].find('"')?].to_owned())
}

/// The element with id `id`, from its opening tag to the first `close` after it.
fn element<'a>(dom: &'a str, id: &str, close: &str) -> &'a str {
    let tag = open_tag(dom, id);
    let start = dom.find(tag).unwrap();
    let rest = &dom[start..];
    &rest[..rest.find(close).map_or(rest.len(), |i| i + close.len())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_charts_the_history_and_lists_the_workers_in_a_browser() {
    let stack = TestStack::builder("console-page")
        .env("EXAI_ADMIN_TOKEN", ADMIN_TOKEN)
        .daemon()
        .workers(2)
        .start()
        .await;
    let q = stack.queue(TOOL_CALLS);
    for i in 0..30 {
        q.enqueue(&echo(&format!("page-{i}"), json!({"n": i})))
            .await
            .unwrap();
    }
    q.enqueue(&echo("page-bad", json!({"delay_ms": "soon"})))
        .await
        .unwrap();
    let drained = wait_until(Duration::from_secs(30), || async {
        let c = q.counts().await.unwrap();
        c.completed == 30 && c.dead == 1
    })
    .await;
    assert!(drained, "{:?}", q.counts().await.unwrap());
    // A dry run whose sweeps failed: the panel must say so, never "nothing removed".
    let report = json!({"stored_at": "2026-09-21T12:00:01Z", "tick": 0,
        "report": {"dry_run": true, "started_at": "2026-09-21T12:00:00Z",
            "finished_at": "2026-09-21T12:00:01Z",
            "sweeps": {"supabase_orphans": {"found": 0, "removed": 0, "bytes": 0,
                           "errors": ["list objects: 503", "list objects: timed out"]},
                       "staging_orphans": {"found": 2, "removed": 0, "bytes": 20}}}});
    let _: () = redis::cmd("SET")
        .arg(stack.keys.cleanup_last())
        .arg(report.to_string())
        .query_async(&mut stack.conn.clone())
        .await
        .unwrap();
    // One recorded provider call, for the usage panel.
    let ledger = exai_shared::usage::UsageLedger::new(
        stack.conn.clone(),
        stack.keys.clone(),
        stack.config().usage.retention,
    );
    let call = exai_shared::usage::UsageCall {
        session: "page-session",
        tool: "chat",
        model: "kimi-k2.5",
        provider: "kimi",
    };
    let usage = exai_shared::usage::Usage {
        prompt_tokens: 21,
        completion_tokens: 9,
        cached_tokens: 4,
        total_tokens: 30,
        calls: 1,
    };
    ledger.record(call, &usage).await.unwrap();

    let url = format!("http://{}/admin#token={ADMIN_TOKEN}", stack.daemon().addr);
    let dom = exai_tests::chromium::run(
        &url,
        &[
            "--virtual-time-budget=10000".into(),
            "--window-size=1280,2400".into(),
            "--dump-dom".into(),
        ],
    )
    .await;
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page never finished a refresh:\n{dom}"
    );
    assert!(
        !dom.contains("unauthorized") && !dom.contains("refresh failed"),
        "{dom}"
    );

    // The history chart: uPlot drew it (a canvas), over the hour's 60 minutes, holding the
    // 30 completions and the dead job.
    let history = element(&dom, "history-counts", "</canvas>");
    assert!(history.contains("<canvas"), "no chart drawn: {history}");
    assert!(
        history.contains("u-legend") || dom.contains("u-legend"),
        "{history}"
    );
    let tag = open_tag(&dom, "history-counts");
    assert_eq!(
        attr(tag, "data-queue").as_deref(),
        Some("tool_calls"),
        "{tag}"
    );
    assert_eq!(attr(tag, "data-points").as_deref(), Some("60"), "{tag}");
    assert_eq!(attr(tag, "data-completed").as_deref(), Some("30"), "{tag}");
    assert_eq!(attr(tag, "data-dead").as_deref(), Some("1"), "{tag}");
    let times = open_tag(&dom, "history-times");
    let measured: u64 = attr(times, "data-points").unwrap().parse().unwrap();
    assert!(measured >= 2, "wait and run percentiles plotted: {times}");
    assert!(element(&dom, "history-times", "</canvas>").contains("<canvas"));
    // The live throughput chart is drawn too.
    assert!(element(&dom, "throughput-chart", "</canvas>").contains("<canvas"));
    let summary = element(&dom, "history-summary", "</span>");
    assert!(summary.contains("30 completed"), "{summary}");

    // The workers panel: both processes, by pid, with their host and queues.
    let workers = element(&dom, "workers", "</table>");
    for w in &stack.workers {
        let row = workers
            .split("<tr ")
            .find(|r| r.contains(&format!(r#"data-pid="{}""#, w.pid())))
            .unwrap_or_else(|| panic!("worker {} not listed: {workers}", w.pid()));
        assert!(row.contains(r#"data-field="queues">tool_calls<"#), "{row}");
        assert!(row.contains(r#"data-field="concurrency">16<"#), "{row}");
        let seen = row.split(r#"data-field="last_seen">"#).nth(1).unwrap();
        assert!(
            seen.starts_with("20") && seen[..20].ends_with('Z'),
            "a UTC date and time: {row}"
        );
    }

    // Dates with times in the job tables; the cancelled state offered; bulk actions there.
    let jobs = element(&dom, "jobs-state", "</select>");
    assert!(jobs.contains("<option>cancelled</option>"), "{jobs}");
    assert!(
        dom.contains(r#"id="bulk-delete-all""#) && dom.contains("retry all…"),
        "{dom}"
    );
    let dead = element(&dom, "dead", "</table>");
    assert!(dead.contains("page-bad"), "{dead}");
    let year = chrono::Utc::now().format("%Y-").to_string();
    assert!(
        dead.contains(&format!("<td>{year}")),
        "the time of death with its date: {dead}"
    );

    // The cleanup panel shows the sweep errors, and not "nothing removed".
    let cleanup = element(&dom, "cleanup-summary", "</p>");
    assert!(
        cleanup.contains("2 errors in supabase_orphans"),
        "{cleanup}"
    );
    assert!(!cleanup.contains("nothing removed"), "{cleanup}");
    assert_eq!(
        attr(open_tag(&dom, "cleanup-summary"), "data-errors").as_deref(),
        Some("2")
    );
    let table = element(&dom, "cleanup", "</table>");
    assert!(table.contains("list objects: timed out"), "{table}");

    // The usage panel: the total, and a line per session, tool and model.
    let usage = element(&dom, "usage-summary", "</p>");
    assert!(
        usage.contains("1 calls, 30 tokens (21 prompt, 4 cached, 9 completion)"),
        "{usage}"
    );
    let table = element(&dom, "usage", "</table>");
    for name in ["page-session", "chat", "kimi-k2.5 (kimi)"] {
        assert!(
            table.contains(&format!("<td>{name}</td>")),
            "{name} in {table}"
        );
    }

    // The charting library comes from the daemon itself, under the page's CSP, with its licence.
    let http = reqwest::Client::new();
    for (asset, kind) in [
        ("uPlot.iife.min.js", "text/javascript"),
        ("uPlot.min.css", "text/css"),
        ("LICENSE", "text/plain"),
    ] {
        let res = http
            .get(format!(
                "http://{}/admin/vendor/uplot/{asset}",
                stack.daemon().addr
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{asset}");
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(kind), "{asset}");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{asset}: {csp}"
        );
        let body = res.text().await.unwrap();
        if asset == "LICENSE" {
            assert!(body.contains("MIT License"), "{body}");
        }
    }

    // Cancelled jobs are listed on the page too (`#state=cancelled` picks the view).
    q.enqueue(&echo("page-later", json!({})).with_delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    q.cancel("page-later").await.unwrap();
    let dom = exai_tests::chromium::run(
        &format!("{url}&state=cancelled"),
        &["--virtual-time-budget=8000".into(), "--dump-dom".into()],
    )
    .await;
    let jobs = element(&dom, "jobs", "</table>");
    assert!(
        jobs.contains(r#"data-job-id="page-later""#) && jobs.contains("<td>cancelled</td>"),
        "{jobs}"
    );

    // A screenshot, kept as the test's artifact.
    let dir = exai_tests::bin_path("exai-daemon")
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("admin-console.png");
    let _ = std::fs::remove_file(&shot);
    exai_tests::chromium::run(
        &url,
        &[
            "--virtual-time-budget=10000".into(),
            "--window-size=1280,2400".into(),
            format!("--screenshot={}", shot.display()),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!("admin console screenshot: {}", shot.display());
}
