//! The test harness shared by the suites in `tests/tests/`, and the home of the `exai-sim`
//! emulator and the `exai-bench` benchmark binaries.
//!
//! Every test gets its own namespace: a fresh Redis key prefix ([`unique_prefix`]) and, when it
//! needs Postgres, a fresh database ([`TestDb`]) that is dropped afterwards. Nothing here flushes
//! a shared Redis or touches another test's keys. Waiting is done on conditions with a deadline
//! ([`wait_until`]), never with a bare sleep.
#![warn(missing_docs)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use exai_shared::Config;

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
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
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
        use sqlx::Connection;
        let name = format!("exai_t_{}", uuid::Uuid::new_v4().simple());
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to the Postgres maintenance database");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let url = match admin.rfind('/') {
            Some(i) => format!("{}/{name}", &admin[..i]),
            None => panic!("EXAI_TEST_PG_ADMIN_URL has no database part"),
        };
        Self { name, url }
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
