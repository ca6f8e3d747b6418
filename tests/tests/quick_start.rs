//! `scripts/up` brings the stack up with no keys configured, prints how to connect, serves a
//! call, and Ctrl-C (SIGINT) stops every process it started. The binaries are the ones
//! `scripts/test` built (`--no-build`); Redis, Postgres, the key prefix, the port and the data
//! directory are this test's own.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use exai_tests::{
    PrefixGuard, TestDb, bin_path, free_port, pg_admin_url, redis_url, unique_prefix,
};
use tokio::io::{AsyncBufReadExt, BufReader};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn scripts_up_starts_the_stack_and_ctrl_c_stops_it() {
    let db = TestDb::new().await;
    let prefix = unique_prefix("up");
    let _keys = PrefixGuard::new(&prefix, redis_url());
    let port = free_port();
    let dir = TempDir(std::env::temp_dir().join(format!("exai-up-{}", uuid::Uuid::new_v4())));

    let mut up = tokio::process::Command::new("bash");
    up.arg(repo_root().join("scripts/up"))
        .arg("--no-build")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("REDIS_URL", redis_url())
        .env("EXAI_TEST_PG_ADMIN_URL", pg_admin_url())
        .env("DATABASE_URL", &db.url)
        .env("EXAI_REDIS_PREFIX", &prefix)
        .env("EXAI_WS_PORT", port.to_string())
        .env("EXAI_UP_DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut up = up.spawn().expect("run scripts/up");
    let script_pid = up.id().unwrap();

    // Its banner, up to the line that says how to stop it.
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("Ctrl-C stops");
            banner.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    let banner_text = banner.join("\n");
    assert_eq!(read, Ok(true), "scripts/up did not come up:\n{banner_text}");

    let ws = format!("ws://127.0.0.1:{port}");
    assert!(
        banner_text.contains(&format!("WebSocket:  {ws}")),
        "{banner_text}"
    );
    let token = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("EXAI_WS_TOKEN="))
        .expect("the token line")
        .to_owned();
    assert!(token.len() >= 16, "a generated token of 16+ characters");
    let admin_token = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("EXAI_ADMIN_TOKEN="))
        .expect("the admin token line");
    assert!(
        admin_token.len() >= 16 && admin_token != token,
        "{admin_token}"
    );
    assert!(banner_text.contains(&format!("/admin#token={admin_token}")));
    assert!(banner_text.contains("exai-call"), "an example call");

    // The example call works against the stack it started (workers, daemon, queue).
    let call = tokio::process::Command::new(bin_path("exai-call"))
        .args(["--url", &ws, "test_echo", r#"{"text":"hello from up"}"#])
        .env_clear()
        .env("EXAI_WS_TOKEN", &token)
        .output();
    let call = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the call finishes")
        .unwrap();
    assert!(call.status.success(), "exai-call failed: {call:?}");
    assert!(
        String::from_utf8_lossy(&call.stdout).contains("hello from up"),
        "{call:?}"
    );

    let pids: Vec<u32> = std::fs::read_to_string(dir.path().join("run/pids"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 4, "exai-sim, two workers and the daemon");
    assert!(pids.iter().all(|&p| alive(p)));

    exai_tests::send_signal(script_pid, "INT");
    let status = tokio::time::timeout(Duration::from_secs(60), up.wait())
        .await
        .expect("scripts/up exits on Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    let left: Vec<u32> = pids.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
}
