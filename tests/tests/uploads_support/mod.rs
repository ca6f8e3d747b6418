//! The stack the upload and tool suites run against: `exai-sim` in process (Moonshot and
//! Supabase Storage), real Redis under a fresh prefix, a fresh Postgres database with the
//! migrations applied, an upload root and a staging directory of the test's own, and a worker —
//! in process (`exai_worker::runtime::run` with a cancellation token) or as a spawned
//! `exai-worker run` process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use exai_shared::Config;
use exai_shared::db::{self, FileUpload, PgPool};
use exai_shared::jobs::{ToolCallJob, ToolResult};
use exai_shared::keys::Keys;
use exai_shared::queue::{self, JobResult, JobState, NewJob, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_tests::sim::{Sim, SimConfig};
use exai_tests::{
    ChildGuard, PrefixGuard, TestDb, spawn_bin, test_config, unique_prefix, wait_until,
};
use exai_worker::runtime::{self, WorkerOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The sim's bearer key (Moonshot key and Supabase service-role key).
pub const KEY: &str = "sk-test-uploads";

/// How long a test waits for a job or a state before failing.
pub const WAIT: Duration = Duration::from_secs(30);

/// One test's stack.
pub struct Stack {
    /// The emulator.
    pub sim: Sim,
    /// The test's database (dropped with the stack).
    pub db: TestDb,
    /// A pool on it.
    pub pool: PgPool,
    /// The Redis key prefix.
    pub prefix: String,
    /// The key layout.
    pub keys: Keys,
    /// A Redis connection.
    pub conn: RedisHandle,
    /// The scratch directory (upload root and staging live below it).
    pub dir: PathBuf,
    /// The allowed upload root.
    pub root: PathBuf,
    /// The worker environment (on top of the test defaults).
    pub env: Vec<(String, String)>,
    worker: Option<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    /// Deletes the test's keys when the stack is dropped, also after a failed assertion.
    _keys: PrefixGuard,
}

impl Stack {
    /// A stack whose worker gets `extra` environment variables besides the defaults (fast
    /// retries, short leases, the sim's URLs and key, the test's database and directories).
    pub async fn new(test: &str, extra: &[(&str, &str)]) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            exai_shared::telemetry::init(exai_shared::config::LogFormat::Human);
        }
        let sim = Sim::start(SimConfig::new(KEY)).await.expect("start sim");
        let db = TestDb::new().await;
        let pool = db.pool().await;
        db::migrate(&pool).await.expect("migrate");
        let prefix = unique_prefix(test);
        let dir = std::env::temp_dir().join(format!("exai-{test}-{}", uuid::Uuid::new_v4()));
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let mut env: Vec<(String, String)> = [
            ("KIMI_API_URL", sim.moonshot_url()),
            ("KIMI_API_KEY", KEY.to_owned()),
            ("GLM_API_URL", sim.moonshot_url()),
            ("GLM_API_KEY", KEY.to_owned()),
            ("SUPABASE_URL", sim.url()),
            ("SUPABASE_SERVICE_ROLE_KEY", KEY.to_owned()),
            ("DATABASE_URL", db.url.clone()),
            ("EXAI_UPLOAD_ROOTS", root.display().to_string()),
            (
                "EXAI_STAGING_DIR",
                dir.join("staging").display().to_string(),
            ),
            ("EXAI_STORAGE_RETRY_BASE_MS", "20".to_owned()),
            ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let config = test_config(&prefix, &[]);
        let conn = RedisHandle::connect(&config.redis).await.expect("redis");
        let keys_guard = PrefixGuard::new(prefix.clone(), exai_tests::redis_url());
        Self {
            sim,
            db,
            pool,
            keys: Keys::new(&prefix),
            prefix,
            conn,
            dir,
            root,
            env,
            worker: None,
            _keys: keys_guard,
        }
    }

    /// The configuration the worker runs with.
    pub fn config(&self) -> Config {
        let pairs: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        test_config(&self.prefix, &pairs)
    }

    /// Starts a worker in this process serving every queue.
    pub fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "one in-process worker per stack");
        let config = self.config();
        let stop = CancellationToken::new();
        let options = WorkerOptions {
            concurrency: 32,
            grace: Duration::from_secs(2),
            poll_fallback: Duration::from_millis(100),
            ..WorkerOptions::default()
        };
        let token = stop.clone();
        let task = tokio::spawn(async move { runtime::run(&config, options, token).await });
        self.worker = Some((stop, task));
    }

    /// Stops the in-process worker and waits for it to drain.
    pub async fn stop_worker(&mut self) {
        if let Some((stop, task)) = self.worker.take() {
            stop.cancel();
            task.await.expect("worker task").expect("worker run");
        }
    }

    /// Spawns `exai-worker run <args>` with the stack's environment.
    pub fn spawn_worker(&self, args: &[&str]) -> ChildGuard {
        let mut env: Vec<(&str, String)> = vec![
            ("REDIS_URL", exai_tests::redis_url()),
            ("EXAI_REDIS_PREFIX", self.prefix.clone()),
        ];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        spawn_bin("exai-worker", &full, &env)
    }

    /// Runs `exai-worker <args>` to completion; returns (success, stdout and stderr).
    pub async fn worker_command(&self, args: &[&str]) -> (bool, String) {
        let (ok, stdout, stderr) = self.worker_output(args).await;
        (ok, stdout + &stderr)
    }

    /// Runs `exai-worker <args>` to completion; returns (success, stdout, stderr).
    pub async fn worker_output(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = tokio::process::Command::new(exai_tests::bin_path("exai-worker"));
        cmd.args(args)
            .env_clear()
            .env("REDIS_URL", exai_tests::redis_url())
            .env("EXAI_REDIS_PREFIX", &self.prefix)
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.expect("run exai-worker");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A handle on one of the stack's queues.
    pub fn queue(&self, name: &str) -> Queue {
        Queue::new(
            self.conn.clone(),
            &self.keys,
            name,
            QueuePolicy::from_config(&self.config().jobs),
        )
    }

    /// Enqueues a tool call under `id`.
    pub async fn enqueue_tool(&self, id: &str, tool: &str, arguments: Value) {
        let job = NewJob::json(&ToolCallJob {
            tool: tool.to_owned(),
            arguments,
            session_id: "s".to_owned(),
            request_id: Some(id.to_owned()),
            deadline_ms: None,
            staged: None,
        })
        .unwrap()
        .with_id(id);
        self.queue(queue::TOOL_CALLS).enqueue(&job).await.unwrap();
    }

    /// Waits for job `id` of `queue` to finish.
    pub async fn finished(&self, queue_name: &str, id: &str) -> JobResult {
        let q = self.queue(queue_name);
        let done = wait_until(WAIT, || {
            let q = q.clone();
            async move { q.result(id).await.unwrap().is_some() }
        })
        .await;
        assert!(done, "job {id} of {queue_name} did not finish");
        q.result(id).await.unwrap().unwrap()
    }

    /// Runs a tool call to the end: its text, or its error message.
    pub async fn call(&self, tool: &str, arguments: Value) -> Result<String, String> {
        let id = format!("call-{}", uuid::Uuid::new_v4().simple());
        self.enqueue_tool(&id, tool, arguments).await;
        tool_outcome(self.finished(queue::TOOL_CALLS, &id).await)
    }

    /// Every row of `provider_file_uploads` (any status), oldest first.
    pub async fn rows(&self) -> Vec<FileUpload> {
        // One statement, one snapshot: a row changing status meanwhile (a storage push
        // finishing) is seen once.
        let mut rows = db::list_recent(&self.pool, None, 10_000).await.unwrap();
        rows.sort_by_key(|r| r.created_at);
        rows
    }

    /// The row of a Moonshot file.
    pub async fn row(&self, file_id: &str) -> FileUpload {
        db::find_by_provider_file_id(&self.pool, "kimi", file_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no row for {file_id}"))
    }

    /// Waits until the row of `file_id` is in `status`; returns it.
    pub async fn wait_status(&self, file_id: &str, status: db::UploadStatus) -> FileUpload {
        let ok = wait_until(WAIT, || async { self.row(file_id).await.status == status }).await;
        let row = self.row(file_id).await;
        assert!(
            ok,
            "row of {file_id} stayed {} (wanted {status}): {row:?}",
            row.status
        );
        row
    }

    /// Writes a file under the upload root; returns its path.
    pub fn write_file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, data).unwrap();
        path
    }

    /// The Moonshot files the sim holds: `(id, sha256)`.
    pub fn moonshot_files(&self) -> Vec<(String, String)> {
        self.sim.state()["moonshot"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().unwrap().to_owned(),
                    f["sha256"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The Supabase object `path` of bucket `user-files`, as the sim describes it.
    pub fn object(&self, path: &str) -> Option<Value> {
        let v = &self.sim.state()["supabase"]["buckets"]["user-files"]["objects"][path];
        (!v.is_null()).then(|| v.clone())
    }

    /// How many requests of sim route `route` arrived.
    pub fn requests(&self, route: &str) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.route == route)
            .count()
    }

    /// Removes the stack's Redis keys and files.
    pub async fn cleanup(mut self) {
        self.stop_worker().await;
        let client = redis::Client::open(exai_tests::redis_url()).unwrap();
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            exai_tests::delete_prefix(&mut conn, &self.prefix).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A finished tool call's text, or its error.
pub fn tool_outcome(r: JobResult) -> Result<String, String> {
    match r.state {
        JobState::Completed => {
            let result: ToolResult =
                serde_json::from_slice(&r.result.expect("a completed job has a result")).unwrap();
            Ok(result.joined_text())
        }
        other => Err(format!("{other}: {}", r.error.unwrap_or_default())),
    }
}

/// Lowercase hex sha256.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}
