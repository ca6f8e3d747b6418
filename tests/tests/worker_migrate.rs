//! `exai-worker migrate` and the migrations `exai-worker run` applies at start, as real processes
//! against a fresh Postgres database each:
//!
//! - five `migrate` processes started at once all succeed, and each migration is applied by
//!   exactly one of them (sqlx's advisory lock makes them take turns);
//! - `migrate --revert` rolls back exactly one migration per invocation;
//! - `run` applies pending migrations, then stops cleanly on SIGTERM; with
//!   `EXAI_AUTO_MIGRATE=false` it leaves the database alone.

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::Duration;

use exai_shared::db;
use exai_tests::{ChildGuard, TestDb, bin_path, send_signal, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// The versions of every (up) migration in this build.
fn all_versions() -> Vec<i64> {
    db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect()
}

fn worker(database_url: &str) -> Command {
    let mut cmd = Command::new(bin_path("exai-worker"));
    // `run` also serves the queues: give it a key prefix of its own.
    cmd.env("DATABASE_URL", database_url)
        .env("REDIS_URL", exai_tests::redis_url())
        .env("EXAI_REDIS_PREFIX", exai_tests::unique_prefix("migrate"))
        .env("RUST_LOG", "info")
        .env("EXAI_LOG_FORMAT", "human")
        .env("EXAI_RUN_ENV", "")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn migrate_cli(database_url: &str, args: &[&str]) -> Output {
    let output = tokio::time::timeout(
        PROCESS_TIMEOUT,
        worker(database_url).arg("migrate").args(args).output(),
    )
    .await
    .expect("exai-worker migrate finishes")
    .expect("spawn exai-worker");
    assert!(
        output.status.success(),
        "exai-worker migrate {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `(version, success)` of every row of `_sqlx_migrations` (empty when the table is missing).
async fn recorded(pool: &sqlx::PgPool) -> Vec<(i64, bool)> {
    sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

async fn table_exists(pool: &sqlx::PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_migrate_processes_apply_each_migration_once() {
    let test_db = TestDb::new().await;
    let outputs = futures::future::join_all((0..5).map(|_| migrate_cli(&test_db.url, &[]))).await;

    // Every "applied NNNN ..." line across the five processes, by version.
    let mut applied_by: BTreeMap<i64, usize> = BTreeMap::new();
    for output in &outputs {
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some(rest) = line.strip_prefix("applied ") {
                let version: i64 = rest.split_whitespace().next().unwrap().parse().unwrap();
                *applied_by.entry(version).or_default() += 1;
            } else {
                assert_eq!(line, "database is up to date");
            }
        }
    }
    let expected: BTreeMap<i64, usize> = all_versions().into_iter().map(|v| (v, 1)).collect();
    assert_eq!(
        applied_by, expected,
        "each migration applied by exactly one process"
    );

    let pool = test_db.pool().await;
    assert_eq!(
        recorded(&pool).await,
        all_versions()
            .into_iter()
            .map(|v| (v, true))
            .collect::<Vec<_>>()
    );
    assert!(table_exists(&pool, "provider_file_uploads").await);
}

#[tokio::test]
async fn migrate_revert_rolls_back_exactly_one() {
    let test_db = TestDb::new().await;
    let pool = test_db.pool().await;
    migrate_cli(&test_db.url, &[]).await;
    let mut versions = all_versions();
    assert!(versions.len() >= 2);

    while let Some(latest) = versions.pop() {
        let output = migrate_cli(&test_db.url, &["--revert"]).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.starts_with(&format!("reverted {latest:04} ")),
            "{stdout}"
        );
        assert_eq!(
            recorded(&pool).await,
            versions.iter().map(|v| (*v, true)).collect::<Vec<_>>()
        );
    }
    assert!(!table_exists(&pool, "provider_file_uploads").await);

    let output = migrate_cli(&test_db.url, &["--revert"]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "no migration to revert"
    );

    // And forward again.
    let output = migrate_cli(&test_db.url, &[]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).lines().count(),
        all_versions().len()
    );
}

#[tokio::test]
async fn run_applies_pending_migrations_and_stops_on_sigterm() {
    let test_db = TestDb::new().await;
    let pool = test_db.pool().await;
    let mut child = ChildGuard(
        worker(&test_db.url)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn exai-worker run"),
    );

    let expected: Vec<(i64, bool)> = all_versions().into_iter().map(|v| (v, true)).collect();
    assert!(
        wait_until(PROCESS_TIMEOUT, || async {
            recorded(&pool).await == expected
        })
        .await,
        "exai-worker run applied the migrations"
    );

    send_signal(child.pid(), "TERM");
    let status = tokio::time::timeout(PROCESS_TIMEOUT, child.0.wait())
        .await
        .expect("exai-worker run exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn run_without_auto_migrate_leaves_the_database_alone() {
    let test_db = TestDb::new().await;
    let pool = test_db.pool().await;
    let mut child = ChildGuard(
        worker(&test_db.url)
            .arg("run")
            .env("EXAI_AUTO_MIGRATE", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exai-worker run"),
    );

    // Wait for the worker to say it started: by then it would have migrated.
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let started = tokio::time::timeout(PROCESS_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("exai-worker started") {
                return true;
            }
        }
        false
    })
    .await
    .expect("exai-worker run logs its start");
    assert!(started);
    assert!(!table_exists(&pool, "_sqlx_migrations").await);
    assert!(!table_exists(&pool, "provider_file_uploads").await);

    send_signal(child.pid(), "TERM");
    let status = tokio::time::timeout(PROCESS_TIMEOUT, child.0.wait())
        .await
        .expect("exai-worker run exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
