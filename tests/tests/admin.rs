//! The admin API and page of a real `exai-daemon` process, against real Redis and Postgres and
//! a real headless Chromium: token checks, every endpoint's JSON against a seeded state (jobs
//! in every state, a dead job, a held semaphore lease, upload rows, a cleanup report), the
//! actions (retry, kill, pause, resume), and the page rendering that state in a browser.

use std::path::Path;
use std::time::Duration;

use exai_shared::queue::{self, FailKind, FailOutcome, JobState, NewJob, Queue};
use exai_shared::semaphore::{HolderInfo, LeaseGuard, Semaphores};
use exai_tests::daemon::{Client, TOKEN, spawn_daemon};
use exai_tests::{PrefixGuard, TestStack, redis_url, unique_prefix};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The dead job of the seeded state.
const DEAD: &str = "job-dead-1";
/// The running job.
const RUNNING: &str = "job-running-1";
/// The queued jobs.
const QUEUED: [&str; 3] = ["job-queued-1", "job-queued-2", "job-queued-3"];
/// The admin token (`EXAI_ADMIN_TOKEN`); the client token (`TOKEN`) does not open the API.
const ADMIN_TOKEN: &str = "admin-token-of-the-admin-tests";
/// The semaphore holder.
const HOLDER: &str = "worker-admin-test/3";
/// The job the semaphore lease is for.
const LEASE_JOB: &str = "job-with-lease";

/// A daemon on a test stack, with the seeded state around it.
struct Admin {
    http: reqwest::Client,
    tool_calls: Queue,
    storage_push: Queue,
    /// The lease the seeded state holds (released when dropped).
    _lease: Option<LeaseGuard>,
    _semaphores: Semaphores,
    /// Last, so the daemon is killed before the keys go.
    stack: TestStack,
}

impl Admin {
    /// Seeds the state and starts a daemon; with a migrated database (and its rows) when
    /// `database` is true, else without `DATABASE_URL`.
    async fn start(test: &str, database: bool) -> Self {
        let builder = TestStack::builder(test).env("EXAI_ADMIN_TOKEN", ADMIN_TOKEN);
        let mut stack = if database {
            builder.database()
        } else {
            builder
        }
        .start()
        .await;
        let config = stack.config();
        let tool_calls = stack.queue(queue::TOOL_CALLS);
        let storage_push = stack.queue(queue::STORAGE_PUSH);

        // tool_calls: 1 dead, 1 running, 1 completed, 1 scheduled, 3 queued.
        enqueue(&tool_calls, DEAD, &[]).await;
        let fetched = tool_calls.fetch("admin-test", 1).await.expect("fetch");
        assert_eq!(fetched[0].id(), DEAD);
        let outcome = tool_calls
            .fail(&fetched[0].lease, "provider said no", FailKind::Permanent)
            .await
            .expect("fail");
        assert_eq!(outcome, FailOutcome::Dead);
        enqueue(&tool_calls, "job-done-1", &[]).await;
        let fetched = tool_calls.fetch("admin-test", 1).await.expect("fetch");
        tool_calls
            .complete(&fetched[0].lease, br#"{"ok":true}"#)
            .await
            .expect("complete");
        enqueue(&tool_calls, RUNNING, &[]).await;
        let fetched = tool_calls.fetch("admin-test", 1).await.expect("fetch");
        assert_eq!(fetched[0].id(), RUNNING);
        tool_calls
            .enqueue(
                &NewJob::json(&json!({"n": "later"}))
                    .unwrap()
                    .with_id("job-scheduled-1")
                    .with_delay(Duration::from_secs(3600)),
            )
            .await
            .expect("enqueue delayed");
        for id in QUEUED {
            enqueue(&tool_calls, id, &[]).await;
        }
        // storage_push: 2 queued.
        enqueue(&storage_push, "push-1", &[]).await;
        enqueue(&storage_push, "push-2", &[]).await;

        // One live lease on `kimi` (renewed in the background while the test runs).
        let semaphores = Semaphores::from_config(&config).await.expect("semaphores");
        let lease = semaphores
            .try_acquire(&["kimi"], &HolderInfo::new(HOLDER, LEASE_JOB, 1))
            .await
            .expect("acquire")
            .expect("a free permit");

        if database {
            seed_uploads(stack.pool()).await;
        }
        stack.start_daemon().await;
        Self {
            http: reqwest::Client::new(),
            tool_calls,
            storage_push,
            _lease: Some(lease),
            _semaphores: semaphores,
            stack,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.stack.daemon().addr)
    }

    /// `GET /admin/api/<path>` with the token: status and JSON body.
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(&format!("/admin/api/{path}"))))
            .await
    }

    /// `POST /admin/api/<path>` with the token: status and JSON body.
    async fn post(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(&format!("/admin/api/{path}"))))
            .await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        json_of(req.bearer_auth(ADMIN_TOKEN).send().await.expect("request")).await
    }

    async fn set_cleanup_report(&self, report: &Value) {
        let _: () = redis::cmd("SET")
            .arg(self.stack.keys.cleanup_last())
            .arg(report.to_string())
            .query_async(&mut self.stack.conn.clone())
            .await
            .expect("set the cleanup report");
    }
}

/// Status and JSON body of a response (the body must be JSON).
async fn json_of(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text}"));
    (status, body)
}

async fn enqueue(q: &Queue, id: &str, extra: &[(&str, &str)]) {
    let mut payload = json!({"job": id});
    for (k, v) in extra {
        payload[*k] = json!(v);
    }
    let done = q
        .enqueue(&NewJob::json(&payload).unwrap().with_id(id))
        .await
        .expect("enqueue");
    assert!(done.is_created(), "{id} enqueued twice");
}

/// Upload rows: 2 completed, 1 storage_pending, 1 storage_failed, 1 deleted.
async fn seed_uploads(pool: &sqlx::PgPool) {
    let rows = [
        ("file-a", "completed"),
        ("file-b", "completed"),
        ("file-c", "storage_pending"),
        ("file-d", "storage_failed"),
        ("file-e", "deleted"),
    ];
    for (i, (file_id, status)) in rows.into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO provider_file_uploads \
             (provider, provider_file_id, sha256, filename, file_size_bytes, upload_status) \
             VALUES ('kimi', $1, $2, $3, 10, $4)",
        )
        .bind(file_id)
        .bind(format!("{i:064x}"))
        .bind(format!("{file_id}.txt"))
        .bind(status)
        .execute(pool)
        .await
        .expect("insert an upload row");
    }
}

#[tokio::test]
async fn the_api_refuses_requests_without_the_right_token() {
    let admin = Admin::start("admin_auth", false).await;
    let queues = admin.url("/admin/api/queues");
    let retry = admin.url(&format!("/admin/api/jobs/{DEAD}/retry"));
    let cases = [
        admin.http.get(&queues),
        admin
            .http
            .get(&queues)
            .bearer_auth("wrong-token-0123456789"),
        admin
            .http
            .get(&queues)
            .bearer_auth(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        admin.http.get(&queues).header("Authorization", ADMIN_TOKEN),
        admin
            .http
            .get(&queues)
            .basic_auth("admin", Some(ADMIN_TOKEN)),
        admin.http.get(&queues).bearer_auth(TOKEN),
        admin.http.post(&retry).bearer_auth(TOKEN),
        admin.http.post(&retry),
        admin
            .http
            .post(&retry)
            .bearer_auth("wrong-token-0123456789"),
        admin.http.get(admin.url("/admin/api/no-such-endpoint")),
    ];
    for req in cases {
        let (status, body) = json_of(req.send().await.expect("request")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    // The refused retry did nothing.
    let dead = admin
        .tool_calls
        .job(DEAD)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(dead.state, JobState::Dead);

    // With the token: 200; the page itself needs no token and holds no data.
    let (status, _) = admin.get("queues").await;
    assert_eq!(status, StatusCode::OK);
    let page = admin
        .http
        .get(admin.url("/admin"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/admin/admin.js"), "{html}");
    assert!(!html.contains(DEAD));
    for asset in ["/admin/admin.js", "/admin/admin.css"] {
        let res = admin.http.get(admin.url(asset)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{asset}");
    }

    // A WebSocket upgrade still works on any path, /admin paths included.
    let mut ws = Client::connect(&format!(
        "ws://{}/admin/api/queues",
        admin.stack.daemon().addr
    ))
    .await;
    let ack = ws.hello(json!({"op": "hello", "token": TOKEN})).await;
    assert_eq!(ack["ok"], true, "{ack}");
}

#[tokio::test]
async fn the_api_reports_the_seeded_state() {
    let admin = Admin::start("admin_report", true).await;

    let (status, body) = admin.get("queues").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["queues"]["tool_calls"],
        json!({"queued": 3, "scheduled": 1, "running": 1, "retrying": 0, "dead": 1,
               "completed": 1, "cancelled": 0, "paused": false})
    );
    assert_eq!(body["queues"]["storage_push"]["queued"], 2);
    let names: Vec<&String> = body["queues"].as_object().unwrap().keys().collect();
    assert_eq!(names.len(), queue::ALL_QUEUES.len(), "{names:?}");

    let (status, body) = admin.get("semaphores").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kimi = &body["semaphores"]["kimi"];
    assert_eq!(kimi["limit"], 6, "{body}");
    assert_eq!(kimi["effective_limit"], 6, "{body}");
    assert_eq!(kimi["in_use"], 1, "{body}");
    let holder = &kimi["holders"][0];
    assert_eq!(holder["holder"], HOLDER);
    assert_eq!(holder["job_id"], LEASE_JOB);
    assert!(holder["lease"].as_str().unwrap().starts_with(LEASE_JOB));
    let left = holder["expires_in_ms"].as_u64().expect("expires_in_ms");
    assert!(left > 0 && left <= 30_000, "{left}");
    assert_eq!(body["semaphores"]["glm"]["in_use"], 0);

    let (status, body) = admin.get(&format!("jobs/{DEAD}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job"]["id"], DEAD);
    assert_eq!(body["job"]["queue"], "tool_calls");
    assert_eq!(body["job"]["state"], "dead");
    assert_eq!(body["job"]["payload"], json!({"job": DEAD}));
    assert_eq!(body["job"]["errors"][0]["error"], "provider said no");
    let (status, body) = admin.get("jobs/push-2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job"]["queue"], "storage_push");
    let (status, body) = admin.get("jobs/no-such-job").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no-such-job"));
    let (status, body) = admin.get(&format!("jobs/{}", "x".repeat(600))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Listing: each state, paging, and bad input.
    let ids = |body: &Value| -> Vec<String> {
        body["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = admin.get("queues/tool_calls/jobs?state=queued").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), QUEUED, "queued jobs in the order they run");
    assert_eq!(body["state"], "queued");
    let (_, body) = admin
        .get("queues/tool_calls/jobs?state=queued&limit=1&offset=1")
        .await;
    assert_eq!(ids(&body), [QUEUED[1]]);
    let (_, body) = admin.get("queues/tool_calls/jobs?state=dead").await;
    assert_eq!(ids(&body), [DEAD]);
    assert_eq!(body["jobs"][0]["errors"][0]["kind"], "permanent", "{body}");
    let (_, body) = admin.get("queues/tool_calls/jobs?state=running").await;
    assert_eq!(ids(&body), [RUNNING]);
    assert_eq!(body["jobs"][0]["worker"], "admin-test");
    let (_, body) = admin.get("queues/tool_calls/jobs?state=scheduled").await;
    assert_eq!(ids(&body), ["job-scheduled-1"]);
    let (_, body) = admin.get("queues/tool_calls/jobs?state=completed").await;
    assert_eq!(ids(&body), ["job-done-1"]);
    let (_, body) = admin.get("queues/cleanup/jobs?state=queued").await;
    assert_eq!(ids(&body), Vec::<String>::new());
    // No state: queued, as in the CLI.
    let (status, body) = admin.get("queues/tool_calls/jobs").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body), QUEUED, "{body}");
    for (path, want) in [
        (
            "queues/tool_calls/jobs?state=exploded",
            StatusCode::BAD_REQUEST,
        ),
        (
            "queues/tool_calls/jobs?state=queued&limit=-1",
            StatusCode::BAD_REQUEST,
        ),
        (
            "queues/tool_calls/jobs?state=queued&limit=1001",
            StatusCode::BAD_REQUEST,
        ),
        (
            "queues/tool_calls/jobs?state=queued&offset=x",
            StatusCode::BAD_REQUEST,
        ),
        (
            "queues/no_such_queue/jobs?state=queued",
            StatusCode::NOT_FOUND,
        ),
        ("nothing/here", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
    let (_, body) = admin.get("queues/tool_calls/jobs?state=exploded").await;
    assert!(body["error"].as_str().unwrap().contains("dead"), "{body}");
    let (_, body) = admin.get("queues/no_such_queue/jobs?state=queued").await;
    assert!(
        body["error"].as_str().unwrap().contains("tool_calls"),
        "{body}"
    );

    // Storage: rows per upload_status, every status present.
    let (status, body) = admin.get("storage").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"statuses": {"completed": 2, "storage_pending": 1, "storage_failed": 1,
               "deleted": 1, "uploading": 0, "failed": 0, "pending": 0}, "total": 5})
    );

    // Cleanup: null until a report is stored, then the report as stored.
    let (status, body) = admin.get("cleanup").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"report": null}));
    // The shape the worker stores (exai_shared::cleanup_report::StoredReport).
    let none = json!({"found": 0, "removed": 0, "bytes": 0});
    let report = json!({"stored_at": "2026-09-21T12:00:01Z", "tick": 1_790_000_000u64,
        "report": {"dry_run": false, "started_at": "2026-09-21T12:00:00Z",
            "finished_at": "2026-09-21T12:00:01Z",
            "sweeps": {"supabase_orphans": {"found": 4, "removed": 3, "bytes": 3072,
                                            "errors": ["delete object x: 500"]},
                       "moonshot_orphans": {"found": 1, "removed": 1, "bytes": 10},
                       "rows_missing_file": none, "rows_expired": none,
                       "quota": {"found": 0, "removed": 0, "bytes": 0,
                                 "skipped": "Moonshot is not configured"},
                       "staging_orphans": none}}});
    admin.set_cleanup_report(&report).await;
    let (status, body) = admin.get("cleanup").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "report": report }));
}

#[tokio::test]
async fn the_api_retries_kills_pauses_and_resumes() {
    let admin = Admin::start("admin_actions", false).await;

    // Retry: only a dead job, which goes back to queued.
    let (status, body) = admin.post(&format!("jobs/{}/retry", QUEUED[0])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("queued"), "{body}");
    let (status, body) = admin.post(&format!("jobs/{DEAD}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job"]["state"], "queued");
    let job = admin.tool_calls.job(DEAD).await.unwrap().expect("job");
    assert_eq!(job.state, JobState::Queued);
    let counts = admin.tool_calls.counts().await.unwrap();
    assert_eq!((counts.dead, counts.queued), (0, 4));
    let (status, _) = admin.post(&format!("jobs/{DEAD}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = admin.post("jobs/no-such-job/retry").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Kill: a waiting job is cancelled at once; a running one is asked to stop.
    let (status, body) = admin.post(&format!("jobs/{}/kill", QUEUED[1])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "cancelled");
    let job = admin.tool_calls.job(QUEUED[1]).await.unwrap().expect("job");
    assert_eq!(job.state, JobState::Cancelled);
    let (status, body) = admin.post(&format!("jobs/{}/kill", QUEUED[1])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cancelled"),
        "{body}"
    );
    let (status, body) = admin.post(&format!("jobs/{RUNNING}/kill")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "cancel_requested");
    let job = admin.tool_calls.job(RUNNING).await.unwrap().expect("job");
    assert!(job.cancel_requested, "{job:?}");
    let (status, _) = admin.post("jobs/push-1/kill").await;
    assert_eq!(status, StatusCode::OK);
    let job = admin
        .storage_push
        .job("push-1")
        .await
        .unwrap()
        .expect("job");
    assert_eq!(job.state, JobState::Cancelled);
    let (status, _) = admin.post("jobs/no-such-job/kill").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Pause and resume.
    let (status, body) = admin.post("queues/storage_push/pause").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"queue": "storage_push", "paused": true}));
    assert!(admin.storage_push.is_paused().await.unwrap());
    let (_, body) = admin.get("queues").await;
    assert_eq!(body["queues"]["storage_push"]["paused"], true);
    assert_eq!(body["queues"]["tool_calls"]["paused"], false);
    let fetched = admin
        .storage_push
        .fetch_batch("admin-test", 10)
        .await
        .unwrap();
    assert!(fetched.paused && fetched.jobs.is_empty(), "{fetched:?}");
    let (status, body) = admin.post("queues/storage_push/resume").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"queue": "storage_push", "paused": false}));
    assert!(!admin.storage_push.is_paused().await.unwrap());
    let (status, _) = admin.post("queues/no_such_queue/pause").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Wrong methods get a JSON 405.
    let (status, body) = admin.get(&format!("jobs/{DEAD}/retry")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (status, _) = admin.post("queues").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn storage_without_a_database_is_503_and_nothing_else_is() {
    let admin = Admin::start("admin_nodb", false).await;
    let (status, body) = admin.get("storage").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("DATABASE_URL"),
        "{body}"
    );
    for path in ["queues", "semaphores", "cleanup"] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}

#[tokio::test]
async fn a_daemon_without_a_token_keeps_the_admin_api_closed() {
    let prefix = unique_prefix("admin_notoken");
    let _keys = PrefixGuard::new(prefix.clone(), redis_url());
    let env: Vec<(String, String)> = vec![
        ("REDIS_URL".into(), redis_url()),
        ("EXAI_REDIS_PREFIX".into(), prefix),
        ("EXAI_WS_PORT".into(), "0".into()),
    ];
    let daemon = spawn_daemon(&env).await;
    let http = reqwest::Client::new();
    for path in ["queues", "semaphores", "jobs/x"] {
        let res = http
            .get(format!("http://{}/admin/api/{path}", daemon.addr))
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(res).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("EXAI_ADMIN_TOKEN"),
            "{body}"
        );
    }
}

// ----- the page in a real browser ------------------------------------------------------------

/// The element that starts with `open` (an exact opening tag prefix) up to its `close` tag.
fn element<'a>(dom: &'a str, open: &str, close: &str) -> &'a str {
    let start = dom
        .find(open)
        .unwrap_or_else(|| panic!("the page has no `{open}`:\n{dom}"));
    let rest = &dom[start..];
    let end = rest.find(close).map_or(rest.len(), |i| i + close.len());
    &rest[..end]
}

#[tokio::test]
async fn the_page_shows_queues_dead_jobs_and_semaphore_holders_in_a_browser() {
    let admin = Admin::start("admin_page", true).await;
    let report = json!({"stored_at": "2026-09-21T12:00:01Z", "tick": 0,
        "report": {"dry_run": true, "started_at": "2026-09-21T12:00:00Z",
            "finished_at": "2026-09-21T12:00:01Z",
            "sweeps": {"staging_orphans": {"found": 7, "removed": 7, "bytes": 2048}}}});
    admin.set_cleanup_report(&report).await;
    // The token and a job to open come in the fragment.
    let url = admin.url(&format!("/admin#token={ADMIN_TOKEN}&job={DEAD}"));

    let dom = exai_tests::chromium::run(
        &url,
        &["--virtual-time-budget=8000".into(), "--dump-dom".into()],
    )
    .await;
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page never finished a refresh:\n{dom}"
    );
    assert!(!dom.contains("unauthorized"), "{dom}");

    // Queue counts.
    let row = element(&dom, r#"<tr data-queue="tool_calls">"#, "</tr>");
    for (field, n) in [
        ("queued", 3),
        ("scheduled", 1),
        ("running", 1),
        ("dead", 1),
        ("completed", 1),
    ] {
        assert!(
            row.contains(&format!(r#"data-field="{field}">{n}<"#)),
            "tool_calls {field} should be {n}: {row}"
        );
    }
    let row = element(&dom, r#"<tr data-queue="storage_push">"#, "</tr>");
    assert!(row.contains(r#"data-field="queued">2<"#), "{row}");

    // The dead job, with its retry button.
    let dead = element(&dom, "<table id=\"dead\">", "</table>");
    let row = element(
        dead,
        &format!(r#"<tr class="clickable" data-job-id="{DEAD}""#),
        "</tr>",
    );
    assert!(row.contains("provider said no"), "{row}");
    assert!(
        row.contains(&format!(
            r#"<button type="button" class="retry" data-job-id="{DEAD}">retry</button>"#
        )),
        "{row}"
    );

    // The jobs of the default view (tool_calls, queued), each with a kill button.
    let jobs = element(&dom, "<table id=\"jobs\">", "</table>");
    for id in QUEUED {
        assert!(
            jobs.contains(&format!(r#"class="kill" data-job-id="{id}">kill</button>"#)),
            "{id}: {jobs}"
        );
    }

    // The drill-down: the job named in the fragment, in full.
    let detail = element(&dom, "<div id=\"job-detail\"", "</div>");
    assert!(
        !detail.contains("hidden"),
        "the job details are open: {detail}"
    );
    assert!(detail.contains(&format!(r#""id": "{DEAD}""#)), "{detail}");
    assert!(detail.contains(r#""state": "dead""#), "{detail}");
    assert!(detail.contains("provider said no"), "{detail}");

    // The semaphore holder with its countdown.
    let sems = element(&dom, "<table id=\"semaphores\">", "</table>");
    let row = element(sems, r#"<tr data-semaphore="kimi""#, "</tr>");
    assert!(row.contains(HOLDER) && row.contains(LEASE_JOB), "{row}");
    assert!(row.contains(" s</td>"), "a lease countdown: {row}");
    assert!(
        row.contains(r#"data-field="limit">6<"#)
            && row.contains(r#"data-field="effective_limit">6<"#),
        "configured and effective limits: {row}"
    );

    // Storage counts and the cleanup report.
    let storage = element(&dom, "<table id=\"storage\">", "</table>");
    assert!(
        storage.contains(r#"<tr data-status="completed"><td>completed</td><td class="num" data-field="count">2</td></tr>"#),
        "{storage}"
    );
    assert!(storage.contains(r#"data-field="total">5<"#), "{storage}");
    let cleanup = element(&dom, "<table id=\"cleanup\">", "</table>");
    assert!(
        cleanup.contains(r#"data-sweep="staging_orphans""#),
        "{cleanup}"
    );
    assert!(cleanup.contains(r#"data-field="found">7<"#), "{cleanup}");
    assert!(dom.contains("dry run"), "{dom}");
    assert!(dom.contains("run by hand"), "{dom}");

    // A screenshot of the overview, for the operator's eyes.
    let shot = exai_tests::bin_path("exai-daemon")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("admin-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    exai_tests::chromium::run(
        &admin.url(&format!("/admin#token={ADMIN_TOKEN}")),
        &[
            "--virtual-time-budget=8000".into(),
            "--window-size=1280,1000".into(),
            format!("--screenshot={}", shot.display()),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!("admin page screenshot: {}", shot.display());
}
