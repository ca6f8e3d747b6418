//! One test's stack: its Redis prefix (always), and what else the test asks its [`StackBuilder`]
//! for — a migrated Postgres database, the `exai-sim` emulator, an upload root and a staging
//! directory, an `exai-daemon` process or a daemon in the test's process, `exai-worker`
//! processes or a worker in the test's process — all configured from one environment: the
//! parts' defaults with the test's overrides on top.
//!
//! Dropping the stack stops its processes and deletes its keys, database and directories, also
//! when the test fails; [`TestStack::cleanup`] does the same and first lets an in-process worker
//! drain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use exai_shared::Config;
use exai_shared::db::{self, PgPool};
use exai_shared::keys::Keys;
use exai_shared::queue::{self, JobInfo, JobState, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_shared::subscriber::Subscriber;
use exai_worker::runtime::{self, WorkerOptions};
use tokio_util::sync::CancellationToken;

use crate::command::CommandOutput;
use crate::daemon::{self, Client, Daemon, TOKEN};
use crate::local_daemon::LocalDaemon;
use crate::sim::{Sim, SimConfig};
use crate::{ChildGuard, PrefixGuard, TestDb, spawn_bin, test_config, unique_prefix, wait_until};

/// The sim's bearer key (Moonshot key and Supabase service-role key).
pub const SIM_KEY: &str = "sk-test-uploads";

/// How long a stack waits for a job, a state or a command before a test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long a stack waits for a job of the daemon suites to reach a state.
const STATE_WAIT: Duration = Duration::from_secs(20);

/// Which daemon a stack runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DaemonKind {
    /// An `exai-daemon` process on port 0.
    Process,
    /// The daemon's state in the test's process, connections over in-memory pipes.
    InProcess,
}

/// What a test asks of its [`TestStack`]; [`StackBuilder::start`] builds it.
#[must_use]
pub struct StackBuilder {
    test: String,
    redis_url: String,
    env: Vec<(String, String)>,
    database: bool,
    sim: bool,
    upload_dirs: bool,
    daemon: Option<DaemonKind>,
    workers: usize,
}

impl StackBuilder {
    /// The Redis server to use instead of the shared one (e.g. a test's own
    /// [`RedisServer`](crate::RedisServer)).
    pub fn redis(mut self, url: &str) -> Self {
        url.clone_into(&mut self.redis_url);
        self
    }

    /// Sets `name` to `value` in the stack's environment, over any default.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        set(&mut self.env, name, value);
        self
    }

    /// Sets every pair of `vars`, as [`env`](Self::env) does.
    pub fn envs(mut self, vars: &[(&str, &str)]) -> Self {
        for (name, value) in vars {
            set(&mut self.env, name, value);
        }
        self
    }

    /// A fresh Postgres database with the migrations applied, as `DATABASE_URL`.
    pub fn database(mut self) -> Self {
        self.database = true;
        self
    }

    /// `exai-sim` in the test's process as Moonshot (`KIMI_*`, `GLM_*`) and Supabase Storage.
    pub fn sim(mut self) -> Self {
        self.sim = true;
        self
    }

    /// A scratch directory of the test's own with the upload root (`EXAI_UPLOAD_ROOTS`) and the
    /// staging directory (`EXAI_STAGING_DIR`) below it.
    pub fn upload_dirs(mut self) -> Self {
        self.upload_dirs = true;
        self
    }

    /// What the upload and tool suites run against: the sim, a database, upload directories,
    /// fast storage-push retries and no automatic migration in the workers.
    pub fn uploads(self) -> Self {
        self.sim()
            .database()
            .upload_dirs()
            .env("EXAI_STORAGE_RETRY_BASE_MS", "20")
            .env("EXAI_AUTO_MIGRATE", "false")
    }

    /// An `exai-daemon` process on port 0 with the test token and a short progress interval.
    pub fn daemon(mut self) -> Self {
        self.daemon = Some(DaemonKind::Process);
        self
    }

    /// A daemon in the test's process, configured as the process would be.
    pub fn local_daemon(mut self) -> Self {
        self.daemon = Some(DaemonKind::InProcess);
        self
    }

    /// `n` worker processes serving `tool_calls` (see [`TestStack::add_worker`]).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Starts what was asked for.
    pub async fn start(self) -> TestStack {
        if std::env::var_os("TEST_LOG").is_some() {
            exai_shared::telemetry::init(exai_shared::config::LogFormat::Human);
        }
        let prefix = unique_prefix(&self.test);
        let keys_guard = PrefixGuard::new(prefix.clone(), self.redis_url.clone());
        let mut env = Vec::new();
        let sim = if self.sim {
            let sim = Sim::start(SimConfig::new(SIM_KEY))
                .await
                .expect("start sim");
            for (name, value) in [
                ("KIMI_API_URL", sim.moonshot_url()),
                ("KIMI_API_KEY", SIM_KEY.to_owned()),
                ("GLM_API_URL", sim.moonshot_url()),
                ("GLM_API_KEY", SIM_KEY.to_owned()),
                ("SUPABASE_URL", sim.url()),
                ("SUPABASE_SERVICE_ROLE_KEY", SIM_KEY.to_owned()),
            ] {
                set(&mut env, name, &value);
            }
            Some(sim)
        } else {
            None
        };
        let (db, pool) = if self.database {
            let db = TestDb::new().await;
            let pool = db.pool().await;
            db::migrate(&pool).await.expect("migrate");
            set(&mut env, "DATABASE_URL", &db.url);
            (Some(db), Some(pool))
        } else {
            (None, None)
        };
        let dir = self.upload_dirs.then(|| {
            let dir =
                std::env::temp_dir().join(format!("exai-{}-{}", self.test, uuid::Uuid::new_v4()));
            let root = dir.join("root");
            std::fs::create_dir_all(&root).expect("create the upload root");
            set(&mut env, "EXAI_UPLOAD_ROOTS", &root.display().to_string());
            set(
                &mut env,
                "EXAI_STAGING_DIR",
                &dir.join("staging").display().to_string(),
            );
            dir
        });
        for (name, value) in &self.env {
            set(&mut env, name, value);
        }
        let mut pairs: Vec<(&str, &str)> = vec![("REDIS_URL", self.redis_url.as_str())];
        pairs.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let conn = RedisHandle::connect(&test_config(&prefix, &pairs).redis)
            .await
            .expect("connect to redis");
        let mut stack = TestStack {
            worker: None,
            local: None,
            daemon: None,
            workers: Vec::new(),
            sim,
            pool,
            db,
            keys: Keys::new(&prefix),
            prefix,
            redis_url: self.redis_url,
            conn,
            env,
            dir,
            _keys: keys_guard,
        };
        match self.daemon {
            Some(DaemonKind::Process) => stack.daemon = Some(stack.spawn_daemon().await),
            Some(DaemonKind::InProcess) => {
                let staging = std::env::temp_dir().join("data").join("staging");
                let mut vars = vec![
                    ("EXAI_WS_TOKEN".to_owned(), TOKEN.to_owned()),
                    (
                        "EXAI_WS_PROGRESS_INTERVAL_SECS".to_owned(),
                        "0.2".to_owned(),
                    ),
                    (
                        "EXAI_STAGING_DIR".to_owned(),
                        staging.to_string_lossy().into_owned(),
                    ),
                ];
                for (name, value) in &stack.env {
                    set(&mut vars, name, value);
                }
                stack.local = Some(LocalDaemon::start(stack.config_with(&vars)).await);
            }
            None => {}
        }
        for _ in 0..self.workers {
            stack.add_worker();
        }
        stack
    }
}

/// Sets `name` to `value` in `env`, replacing an earlier value.
fn set(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    env.retain(|(n, _)| n != name);
    env.push((name.to_owned(), value.to_owned()));
}

/// One test's namespace and the parts it asked for (see the module documentation).
pub struct TestStack {
    /// The worker running in the test's process, and what stops it.
    worker: Option<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    local: Option<LocalDaemon>,
    daemon: Option<Daemon>,
    /// The worker processes started by [`workers`](StackBuilder::workers) and
    /// [`add_worker`](Self::add_worker).
    pub workers: Vec<ChildGuard>,
    sim: Option<Sim>,
    pool: Option<PgPool>,
    db: Option<TestDb>,
    /// The Redis key prefix no other test uses.
    pub prefix: String,
    /// The Redis server.
    pub redis_url: String,
    /// The key layout under the prefix.
    pub keys: Keys,
    /// A Redis connection.
    pub conn: RedisHandle,
    /// The environment of the stack's configuration and processes, on top of the test
    /// defaults: the parts' variables, then the test's overrides.
    pub env: Vec<(String, String)>,
    dir: Option<PathBuf>,
    /// Deletes the test's keys when the stack is dropped, even after a failed assertion; last,
    /// so the processes are gone first.
    _keys: PrefixGuard,
}

impl TestStack {
    /// A stack for `test`: only its Redis prefix until the builder asks for more.
    pub fn builder(test: &str) -> StackBuilder {
        StackBuilder {
            test: test.to_owned(),
            redis_url: crate::redis_url(),
            env: Vec::new(),
            database: false,
            sim: false,
            upload_dirs: false,
            daemon: None,
            workers: 0,
        }
    }

    /// A stack with only a Redis prefix.
    pub async fn start(test: &str) -> Self {
        Self::builder(test).start().await
    }

    /// A stack with an `exai-daemon` process and `workers` worker processes, `env` on top of
    /// the defaults.
    pub async fn with_daemon(test: &str, env: &[(&str, &str)], workers: usize) -> Self {
        Self::builder(test)
            .envs(env)
            .daemon()
            .workers(workers)
            .start()
            .await
    }

    /// A stack with a daemon in the test's process, `env` on top of the defaults.
    pub async fn with_local_daemon(test: &str, env: &[(&str, &str)]) -> Self {
        Self::builder(test).envs(env).local_daemon().start().await
    }

    /// The stack of the upload and tool suites ([`StackBuilder::uploads`]) with `extra` on top.
    pub async fn uploads(test: &str, extra: &[(&str, &str)]) -> Self {
        Self::builder(test).uploads().envs(extra).start().await
    }

    /// The configuration the stack's processes run with.
    pub fn config(&self) -> Config {
        self.config_with(&self.env)
    }

    fn config_with(&self, env: &[(String, String)]) -> Config {
        let mut pairs: Vec<(&str, &str)> = vec![("REDIS_URL", self.redis_url.as_str())];
        pairs.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        test_config(&self.prefix, &pairs)
    }

    /// A handle on one of the stack's queues, with the configured policy.
    pub fn queue(&self, name: &str) -> Queue {
        self.queue_with(name, QueuePolicy::from_config(&self.config().jobs))
    }

    /// A handle on one of the stack's queues with `policy`.
    pub fn queue_with(&self, name: &str, policy: QueuePolicy) -> Queue {
        Queue::new(self.conn.clone(), &self.keys, name, policy)
    }

    /// A tool call job, as the queue sees it.
    pub async fn job(&self, id: &str) -> Option<JobInfo> {
        self.queue(queue::TOOL_CALLS)
            .job(id)
            .await
            .expect("read job")
    }

    /// Waits until the tool call job `id` is in `state`.
    pub async fn wait_state(&self, id: &str, state: JobState) -> bool {
        wait_until(STATE_WAIT, || async {
            self.job(id).await.map(|j| j.state) == Some(state)
        })
        .await
    }

    /// A Redis subscriber of the stack's own, as a process holds one.
    pub async fn subscriber(&self) -> Subscriber {
        let client = RedisHandle::pubsub_client(&self.config().redis).expect("pubsub client");
        Subscriber::connect(client).await.expect("subscriber")
    }

    /// The test's database.
    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("a stack built with a database")
    }

    /// A pool on the test's database.
    pub fn pool(&self) -> &PgPool {
        self.pool.as_ref().expect("a stack built with a database")
    }

    /// The emulator.
    pub fn sim(&self) -> &Sim {
        self.sim.as_ref().expect("a stack built with the sim")
    }

    /// The scratch directory (the upload root and staging live below it).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_deref()
            .expect("a stack built with upload directories")
    }

    /// The allowed upload root.
    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    /// Spawns an `exai-daemon` with the stack's environment (not kept by the stack).
    pub async fn spawn_daemon(&self) -> Daemon {
        let mut env: Vec<(String, String)> = vec![
            ("REDIS_URL".into(), self.redis_url.clone()),
            ("EXAI_REDIS_PREFIX".into(), self.prefix.clone()),
            ("EXAI_WS_PORT".into(), "0".into()),
            ("EXAI_WS_TOKEN".into(), TOKEN.into()),
            ("EXAI_WS_PROGRESS_INTERVAL_SECS".into(), "0.2".into()),
        ];
        for (name, value) in &self.env {
            set(&mut env, name, value);
        }
        daemon::spawn_daemon(&env).await
    }

    /// The stack's daemon process.
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("a stack built with a daemon")
    }

    /// The stack's daemon process, to wait on it.
    pub fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("a stack built with a daemon")
    }

    /// Starts the stack's daemon process (a previous one must be gone) and returns its address.
    pub async fn start_daemon(&mut self) -> std::net::SocketAddr {
        let daemon = self.spawn_daemon().await;
        let addr = daemon.addr;
        self.daemon = Some(daemon);
        addr
    }

    /// The daemon process's WebSocket URL.
    pub fn url(&self) -> String {
        self.daemon().url()
    }

    /// A new connection to the stack's daemon, in process or not (no hello yet).
    pub async fn connect(&self) -> Client {
        match &self.local {
            Some(local) => local.connect().await,
            None => Client::connect(&self.url()).await,
        }
    }

    /// A client that said hello with the right token (and `session`, when given).
    pub async fn client(&self, session: Option<&str>) -> (Client, String) {
        self.connect().await.say_hello(session).await
    }

    /// Starts one more `exai-worker run --queues tool_calls --concurrency 16`.
    pub fn add_worker(&mut self) {
        self.add_worker_with(&[]);
    }

    /// The same with `extra` variables in its environment.
    pub fn add_worker_with(&mut self, extra: &[(&str, &str)]) {
        let worker =
            self.spawn_worker_with(&["--queues", "tool_calls", "--concurrency", "16"], extra);
        self.workers.push(worker);
    }

    /// Spawns `exai-worker run <args>` with the stack's environment.
    pub fn spawn_worker(&self, args: &[&str]) -> ChildGuard {
        self.spawn_worker_with(args, &[])
    }

    /// Spawns `exai-worker run <args>` with the stack's environment and `extra` on top.
    pub fn spawn_worker_with(&self, args: &[&str], extra: &[(&str, &str)]) -> ChildGuard {
        let mut env: Vec<(&str, String)> = vec![
            ("REDIS_URL", self.redis_url.clone()),
            ("EXAI_REDIS_PREFIX", self.prefix.clone()),
            ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        ];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        spawn_bin("exai-worker", &full, &env)
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

    /// Runs `exai-worker <args>` to completion with the stack's environment and `extra` on
    /// top (stdin not a terminal), and collects its output. No settings file of a stack
    /// `scripts/up` started is read (`EXAI_RUN_ENV` empty) unless `extra` names one.
    pub async fn worker_cli(&self, args: &[&str], extra: &[(&str, &str)]) -> CommandOutput {
        let mut cmd = tokio::process::Command::new(crate::bin_path("exai-worker"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDIS_URL", &self.redis_url)
            .env("EXAI_REDIS_PREFIX", &self.prefix)
            .env("EXAI_RUN_ENV", "")
            .stdin(std::process::Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(WAIT, cmd.output())
            .await
            .expect("the command finishes")
            .expect("run exai-worker");
        let out = CommandOutput::from(out);
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("$ exai-worker {}\n{out}", args.join(" "));
        }
        out
    }

    /// Runs `exai-call <args>` against the stack's daemon process (`EXAI_WS_URL`) to completion,
    /// with `extra` as its only other environment (no token unless `extra` has
    /// `EXAI_WS_TOKEN`; no settings file), and collects its output.
    pub async fn exai_call(&self, args: &[&str], extra: &[(&str, &str)]) -> CommandOutput {
        let mut cmd = tokio::process::Command::new(crate::bin_path("exai-call"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("EXAI_WS_URL", self.url())
            .env("EXAI_RUN_ENV", "")
            .envs(extra.iter().copied())
            .current_dir(std::env::temp_dir())
            .stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(WAIT, cmd.output())
            .await
            .expect("exai-call finishes")
            .expect("run exai-call");
        CommandOutput::from(out)
    }

    /// Runs `exai-worker <args>` to completion; returns (success, stdout and stderr).
    pub async fn worker_command(&self, args: &[&str]) -> (bool, String) {
        let (ok, stdout, stderr) = self.worker_output(args).await;
        (ok, stdout + &stderr)
    }

    /// Runs `exai-worker <args>` to completion; returns (success, stdout, stderr).
    pub async fn worker_output(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.worker_cli(args, &[]).await;
        (out.ok(), out.stdout, out.stderr)
    }

    /// Stops the processes, lets an in-process worker drain, and deletes the test's keys,
    /// database and directories (what dropping the stack does, without the drain).
    pub async fn cleanup(mut self) {
        self.stop_worker().await;
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.worker {
            stop.cancel();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
