//! The test harness shared by the suites in `tests/tests/`, and the home of the `exai-sim`
//! emulator and the `exai-bench` benchmark binaries.
//!
//! Every test gets its own namespace: a fresh Redis key prefix ([`unique_prefix`]) and, when it
//! needs Postgres, a fresh database ([`TestDb`]) that is dropped afterwards. Nothing here flushes
//! a shared Redis or touches another test's keys. Waiting is done on conditions with a deadline
//! ([`wait_until`]), never with a bare sleep.
//!
//! A test builds what it needs as one [`TestStack`] ([`stack`]): its prefix, and on request a
//! database, the `exai-sim` emulator ([`sim`]), upload directories, a daemon (a process or in
//! the test's process, [`local_daemon`]) and workers. [`daemon`] holds the protocol client,
//! [`uploads`] what the upload suites read off a stack, [`command`] a finished command's output
//! and [`fuzz`] the generator of protocol-shaped JSON the fuzz tests share; [`mcp`] runs the
//! official MCP Python SDK's driver scripts (`tests/mcp/`) against `/mcp` and `exai-mcp`.
#![warn(missing_docs)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use exai_shared::Config;

pub mod chromium;
pub mod command;
pub mod daemon;
pub mod fuzz;
pub mod local_daemon;
pub mod mcp;
pub mod sim;
pub mod stack;
pub mod uploads;

pub use stack::{StackBuilder, TestStack};

/// The Redis server the tests use: `REDIS_URL`, or the local default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A connection URL to the Postgres maintenance database, used to create and drop test databases:
/// `EXAI_TEST_PG_ADMIN_URL`, or the local default (trust auth as `postgres`).
pub fn pg_admin_url() -> String {
    std::env::var("EXAI_TEST_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A Redis key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("t-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// A [`Config`] for a test: defaults, the test's Redis prefix and URL, plus `extra` pairs.
pub fn test_config(prefix: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("REDIS_URL".to_owned(), redis_url()),
        ("EXAI_REDIS_PREFIX".to_owned(), prefix.to_owned()),
    ];
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Config::from_vars(vars).expect("test configuration is valid")
}

/// The path of a workspace binary (`exai-worker`, `exai-daemon`, `exai-sim`, helper bins), built
/// by `cargo test` / `cargo nextest` next to the test executables.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests through scripts/test (cargo nextest run --workspace)",
        path.display()
    );
    path
}

/// Polls `condition` until it returns `true` or `timeout` passes; returns whether it held.
///
/// The poll step is short (5 ms): this waits on a condition, it does not sleep a guessed amount.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, || {
        let held = condition();
        async move { held.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `probe` until it yields a value or `timeout` passes; returns the value, if any.
///
/// The same poll as [`wait_until`], for a condition that finds something the test goes on with.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A Postgres database created for one test and dropped when the value is dropped.
pub struct TestDb {
    /// The database's name (`exai_t_<uuid>`).
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn new() -> Self {
        Self::try_new()
            .await
            .expect("create a test database on EXAI_TEST_PG_ADMIN_URL")
    }

    /// Creates an empty database with a unique name, or says why it could not.
    pub async fn try_new() -> anyhow::Result<Self> {
        use anyhow::Context;
        use sqlx::Connection;
        let name = format!("exai_t_{}", uuid::Uuid::new_v4().simple());
        let admin = pg_admin_url();
        let Some(slash) = admin.rfind('/') else {
            anyhow::bail!("EXAI_TEST_PG_ADMIN_URL has no database part");
        };
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .context("connect to the Postgres maintenance database (EXAI_TEST_PG_ADMIN_URL)")?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .with_context(|| format!("create database {name}"))?;
        let url = format!("{}/{name}", &admin[..slash]);
        Ok(Self { name, url })
    }

    /// A connection pool to the test database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = pg_admin_url();
        // Drop runs outside async; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing running.
pub struct ChildGuard(pub tokio::process::Child);

impl ChildGuard {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id().expect("child is running")
    }

    /// Kills the process (SIGKILL) and waits until it is gone, so nothing it does can land
    /// after what the test does next (such as deleting its keys).
    pub async fn kill_and_wait(mut self) {
        let _ = self.0.start_kill();
        let _ = self.0.wait().await;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// Sends `signal` (e.g. `"KILL"`, `"TERM"`) to process `pid` with the system `kill` command.
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Deletes every key under `prefix` (SCAN + UNLINK; only this test's keys, never FLUSHDB).
pub async fn delete_prefix(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("*{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("scan");
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(conn)
                .await
                .expect("unlink");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// A loopback port that was free a moment ago, below 55536 so that its Redis Cluster bus port
/// (port + 10000) is valid too; both are checked.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port: u16 = rng.random_range(20_000..55_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// A `redis-server` of the test's own, on its own port and directory (for tests that restart or
/// kill Redis, which must never touch the shared server). Killed when dropped.
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    /// Its working directory (AOF files live here).
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts a server with AOF (`appendfsync everysec`) when `aof` is true, and waits until it
    /// answers PING.
    pub async fn start(aof: bool) -> Self {
        Self::start_with(aof, &[]).await
    }

    /// Starts a server with extra command-line arguments (e.g. cluster flags).
    pub async fn start_with(aof: bool, extra: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("exai-redis-{port}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--dir".into(),
            dir.display().to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            if aof { "yes" } else { "no" }.into(),
            "--appendfsync".into(),
            "everysec".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut server = Self {
            port,
            dir,
            args,
            child: None,
        };
        server.spawn().await;
        server
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed? scripts/test installs it)");
        self.child = Some(child);
        let url = self.url();
        let up = wait_until(Duration::from_secs(10), || {
            let url = url.clone();
            async move { ping(&url).await }
        })
        .await;
        assert!(up, "redis-server on port {} did not come up", self.port);
    }

    /// SIGKILLs the server (data since the last fsync may be lost, as in a real crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with `SHUTDOWN` (it fsyncs its AOF first, as a planned restart does),
    /// then starts it again on the same port and directory.
    pub async fn restart_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "shutdown"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            let _ = child.wait();
        }
        self.spawn().await;
    }

    /// Starts the server again on the same port and directory (reloading its AOF if enabled).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}

/// A 3-master Redis Cluster on loopback ports, started by the test itself. Killed when dropped.
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`,
    /// then waits until the cluster reports `cluster_state:ok` on every node.
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(
                RedisServer::start_with(
                    false,
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"],
                )
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-replicas")
            .arg("0")
            .arg("--cluster-yes")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes };
        let urls = cluster.seeds();
        let ok = wait_until(Duration::from_secs(20), || {
            let urls = urls.clone();
            async move {
                for url in &urls {
                    let Ok(client) = redis::Client::open(url.as_str()) else {
                        return false;
                    };
                    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                        return false;
                    };
                    let info: String = match redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                    {
                        Ok(info) => info,
                        Err(_) => return false,
                    };
                    if !info.contains("cluster_state:ok") {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        assert!(ok, "the test Redis Cluster did not reach cluster_state:ok");
        cluster
    }

    /// The seed URLs, as `REDIS_CLUSTER_NODES` takes them.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The value for `REDIS_CLUSTER_NODES`.
    pub fn nodes_env(&self) -> String {
        self.seeds().join(",")
    }
}

/// Spawns a workspace binary (`exai-worker`, `exai-daemon`, …) with `args` and environment
/// `env`, on top of a clean environment (only `PATH`, `HOME` and `RUST_LOG` pass through, and
/// `EXAI_RUN_ENV` is empty: no settings file of a `scripts/up` stack is read), so the
/// developer's `.env`, shell or running stack never leaks into a test. Its logs go to stderr when `TEST_LOG`
/// is set and are discarded otherwise. Killed when the guard is dropped.
pub fn spawn_bin(name: &str, args: &[&str], env: &[(&str, String)]) -> ChildGuard {
    let mut cmd = tokio::process::Command::new(bin_path(name));
    cmd.args(args)
        .env_clear()
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    for var in ["PATH", "HOME", "RUST_LOG"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    cmd.env("EXAI_RUN_ENV", "");
    if std::env::var_os("TEST_LOG").is_some() {
        cmd.stderr(std::process::Stdio::inherit());
    } else {
        cmd.stderr(std::process::Stdio::null());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}")))
}

impl ChildGuard {
    /// Waits for the process to exit (up to `timeout`) and returns its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.0.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// Deletes every key under a test's prefix when dropped — also when the test panics — so no
/// test leaves keys behind in the shared Redis.
pub struct PrefixGuard {
    prefix: String,
    url: String,
}

impl PrefixGuard {
    /// Guards `prefix` on the Redis at `url`.
    pub fn new(prefix: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            url: url.into(),
        }
    }
}

impl Drop for PrefixGuard {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let url = self.url.clone();
        // Drop cannot await, and the test's runtime may be busy or gone: clean up from a thread
        // with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                let Ok(client) = redis::Client::open(url) else {
                    return;
                };
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    delete_prefix(&mut conn, &prefix).await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory, its own port), for
/// tests that stop and start Postgres, which must never touch the shared server. As root the
/// server runs as the `postgres` OS user (initdb refuses root). Stopped and removed when dropped.
pub struct PgServer {
    /// The port it listens on (loopback).
    pub port: u16,
    /// Its data directory.
    pub dir: PathBuf,
    bin: PathBuf,
}

impl PgServer {
    /// Creates a cluster (trust auth, superuser `postgres`) and starts it.
    pub async fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("initdb").exists())
                    .max()
            })
            .expect(
                "PostgreSQL server binaries under /usr/lib/postgresql (scripts/test installs them)",
            );
        let dir = std::env::temp_dir().join(format!("exai-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        let server = Self {
            port: free_port(),
            dir,
            bin,
        };
        if Self::as_root() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the data directory to postgres");
        }
        let data = server.dir.join("data");
        let init = server
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        server.start_again().await;
        server
    }

    fn as_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"))
    }

    fn command(&self, tool: &str) -> std::process::Command {
        let path = self.bin.join(tool);
        if Self::as_root() {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            std::process::Command::new(path)
        }
    }

    /// A superuser URL of database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub async fn start_again(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let out = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.join("log"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (fast shutdown: sessions are cut, as in an outage).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
