//! Start-up of the real binaries: a bad setting stops the process with a message naming the
//! variable, secrets never appear in that message, and SIGTERM ends a process cleanly.

use std::process::{Output, Stdio};
use std::time::Duration;

use exai_tests::{bin_path, send_signal, unique_prefix};

async fn run_to_exit(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(bin_path(bin));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the process exits by itself")
        .expect("spawn")
}

#[tokio::test]
async fn a_bad_setting_is_a_start_up_error_naming_the_variable() {
    let cases: [(&str, &[&str], &str, &str); 4] = [
        ("exai-worker", &["run"], "EXAI_WS_KIMI_MAX_INFLIGHT", "six"),
        ("exai-worker", &["run"], "EXAI_CLEANUP_CRON", "hourly-ish"),
        ("exai-daemon", &[], "EXAI_WS_PORT", "99999"),
        ("exai-daemon", &[], "EXAI_WS_TOKEN", "short-secret"),
    ];
    for (bin, args, var, value) in cases {
        let out = run_to_exit(bin, args, &[(var, value)]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} started with {var}={value}");
        assert!(
            stderr.contains(var),
            "{bin}: the error names {var}: {stderr}"
        );
        if var == "EXAI_WS_TOKEN" {
            assert!(!stderr.contains(value), "the token leaked: {stderr}");
        }
    }
}

#[tokio::test]
async fn the_daemon_refuses_a_non_loopback_address_without_a_token() {
    let out = run_to_exit("exai-daemon", &[], &[("EXAI_WS_HOST", "0.0.0.0")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("EXAI_WS_TOKEN"), "{stderr}");
}

#[tokio::test]
async fn sigterm_stops_the_daemon_and_an_idle_worker_cleanly() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let prefix = unique_prefix("startup");
    let env = [
        ("REDIS_URL", exai_tests::redis_url()),
        ("EXAI_REDIS_PREFIX", prefix),
        ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        // No cleanup run may reach a real database.
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/exai_absent_startup".to_owned(),
        ),
        ("EXAI_WS_PORT", "0".to_owned()),
        ("EXAI_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    for (bin, args, ready) in [
        ("exai-worker", &["run"][..], "exai-worker serving"),
        ("exai-daemon", &[][..], "exai-daemon started"),
    ] {
        let mut cmd = tokio::process::Command::new(bin_path(bin));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = exai_tests::ChildGuard(cmd.spawn().expect("spawn"));
        // Once it logs that it is ready, its signal handlers are installed.
        let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
        let up = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(ready) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(up, Ok(true), "{bin} logged {ready:?}");
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        send_signal(child.pid(), "TERM");
        let status = child
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("exits after SIGTERM");
        assert!(status.success(), "{bin} exited cleanly: {status:?}");
    }
}
