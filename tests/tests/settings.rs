//! Settings end to end: `.env.example` loads unchanged through the processes' dotenv reader and
//! through a shell (`set -a; . ./.env.example`) and every value reaches `Config`; it lists
//! exactly the variables the configuration reads; an original-daemon environment starts the
//! real daemon and worker, which log what became of each old name and behave accordingly; and
//! `EXAI_REQUIRE_REAL_PROVIDERS` stops the real worker when a provider is missing or emulated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use exai_shared::Config;
use exai_shared::config::read_dotenv_file;
use exai_tests::daemon::{Client, Seen, TOKEN, echoed};
use exai_tests::{ChildGuard, PrefixGuard, bin_path, send_signal, unique_prefix};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Variables in `.env.example` that the daemon and the worker do not read, and a file of the
/// tool that does.
const TOOL_VARIABLES: [(&str, &str); 4] = [
    ("EXAI_WS_URL", "daemon/src/bin/exai-call.rs"),
    ("EXAI_UP_DIR", "scripts/up"),
    ("EXAI_TEST_PG_ADMIN_URL", "tests/src/lib.rs"),
    ("EXAI_CHAOS_JOBS", "tests/tests/chaos.rs"),
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_owned()
}

/// What a shell exports after `set -a; . ./.env.example` (run from the repository root, on an
/// empty environment), as `(name, value)` pairs.
async fn shell_exports(shell: &str) -> BTreeMap<String, String> {
    let out = tokio::process::Command::new(shell)
        .args(["-c", "set -a; . ./.env.example; env -0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {shell}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{shell} could not source .env.example: {:?} {stderr}",
        out.status
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 environment")
        .split('\0')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The names `.env.example` lists, and whether each is commented out (`# NAME=value`).
fn listed_names() -> BTreeMap<String, bool> {
    let text = std::fs::read_to_string(repo_root().join(".env.example")).unwrap();
    let mut names = BTreeMap::new();
    for line in text.lines() {
        let (commented, rest) = match line.strip_prefix("# ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some((name, _)) = rest.split_once('=') else {
            continue;
        };
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if is_name {
            let before = names.insert(name.to_owned(), commented);
            assert!(before.is_none(), ".env.example lists {name} twice");
        }
    }
    names
}

#[tokio::test]
async fn env_example_loads_the_same_through_dotenv_and_a_shell_and_reaches_config() {
    let file = read_dotenv_file(&repo_root().join(".env.example"))
        .expect("the processes' dotenv reader accepts .env.example");
    assert!(file.len() > 40, "{file:?}");
    let config = Config::from_vars(file.clone()).expect("a valid configuration");
    assert!(config.legacy.is_empty(), "{:?}", config.legacy);
    let settings: BTreeMap<&str, Option<String>> = config
        .settings()
        .into_iter()
        .map(|s| (s.var, s.value))
        .collect();
    let tools: BTreeSet<&str> = TOOL_VARIABLES.iter().map(|(v, _)| *v).collect();
    for shell in ["bash", "sh"] {
        let exported = shell_exports(shell).await;
        for (name, value) in &file {
            assert_eq!(
                exported.get(name),
                Some(value),
                "{shell} and dotenv disagree on {name}"
            );
        }
    }
    for (name, value) in &file {
        if tools.contains(name.as_str()) {
            continue;
        }
        assert_eq!(
            settings.get(name.as_str()),
            Some(&Some(value.clone())),
            "{name}={value} does not reach Config"
        );
    }
}

#[test]
fn env_example_lists_exactly_the_variables_the_configuration_reads() {
    let listed = listed_names();
    let defaults = Config::from_vars(Vec::<(String, String)>::new()).unwrap();
    let mut read = BTreeSet::new();
    for setting in defaults.settings() {
        read.insert(setting.var);
        let commented = listed
            .get(setting.var)
            .unwrap_or_else(|| panic!(".env.example lacks {}", setting.var));
        assert_eq!(
            *commented,
            setting.value.is_none(),
            "{} must be commented out exactly when it has no default",
            setting.var
        );
    }
    for (var, reader) in TOOL_VARIABLES {
        assert_eq!(listed.get(var), Some(&false), "{var}");
        let text = std::fs::read_to_string(repo_root().join(reader)).unwrap();
        assert!(text.contains(var), "{reader} does not read {var}");
    }
    for name in listed.keys() {
        assert!(
            read.contains(name.as_str()) || TOOL_VARIABLES.iter().any(|(v, _)| v == name),
            ".env.example lists {name}, which nothing reads"
        );
    }
}

/// A process whose standard output and error lines (JSON logs) are collected.
struct Logged {
    child: ChildGuard,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Logged {
    /// Waits until a line satisfies `want`; returns it.
    async fn wait_line(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| want(l)) {
            return line.clone();
        }
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if want(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no line {what}; saw:\n{}", self.seen.join("\n")),
        }
    }

    /// Waits until a JSON log line satisfies `want`; returns it.
    async fn wait_log(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let line = self
            .wait_line(what, |l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| want(&v))
            })
            .await;
        serde_json::from_str(&line).unwrap()
    }

    /// The start-up warning about the original daemon's variable `legacy`; checks the new
    /// name it names and that its message says `says`.
    async fn legacy_warning(&mut self, legacy: &str, new: &str, says: &str) {
        let v = self
            .wait_log(&format!("warning of {legacy}"), |v| {
                v["level"] == "WARN" && v["legacy"] == legacy
            })
            .await;
        assert_eq!(v["new"], new, "{v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{legacy}: {message}");
    }
}

/// Spawns `bin` on a clean environment plus `env`, its output lines collected.
fn spawn_logged(bin: &str, args: &[&str], env: &[(&str, String)]) -> Logged {
    let mut cmd = tokio::process::Command::new(bin_path(bin));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = ChildGuard(cmd.spawn().expect("spawn"));
    let (tx, lines) = mpsc::unbounded_channel();
    let stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let out_tx = tx.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = out_tx.send(line);
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    Logged {
        child,
        lines,
        seen: Vec::new(),
    }
}

/// An environment written for the original daemon, on top of the test's Redis namespace.
fn original_environment(prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", exai_tests::redis_url()),
        ("EXAI_REDIS_PREFIX", prefix.to_owned()),
        ("EXAI_LOG_FORMAT", "json".to_owned()),
        ("MAX_CONNECTIONS", "100".to_owned()),
        ("MAX_CONNECTIONS_PER_IP", "2".to_owned()),
        ("WORKFLOW_TOOL_TIMEOUT_SECS", "123".to_owned()),
        ("SESSION_TIMEOUT_SECS", "1800".to_owned()),
        ("RESULT_TTL_SECS", "600".to_owned()),
        ("FILE_RETENTION_DAYS", "7".to_owned()),
        ("CLEANUP_INTERVAL_HOURS", "6".to_owned()),
        ("KIMI_FILES_MAX_SIZE_MB", "20".to_owned()),
        ("LOG_LEVEL", "DEBUG".to_owned()),
        ("SESSION_CLEANUP_INTERVAL", "300".to_owned()),
        // Set under both names: the new one wins.
        ("EXAI_RESULT_TTL_SECS", "900".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_daemon_environment_starts_the_daemon_and_the_worker_and_takes_effect() {
    let prefix = unique_prefix("settings-legacy");
    let _keys = PrefixGuard::new(prefix.clone(), exai_tests::redis_url());
    let original = original_environment(&prefix);

    let mut env = original.clone();
    env.extend([
        ("EXAI_WS_PORT", "0".to_owned()),
        ("EXAI_WS_TOKEN", TOKEN.to_owned()),
    ]);
    let mut daemon = spawn_logged("exai-daemon", &[], &env);
    let line = daemon
        .wait_line("listening on", |l| l.starts_with("listening on "))
        .await;
    let url = format!("ws://{}/", line.trim_start_matches("listening on ").trim());
    for (legacy, new, says) in [
        (
            "MAX_CONNECTIONS",
            "EXAI_WS_MAX_CONNECTIONS",
            "EXAI_WS_MAX_CONNECTIONS=100",
        ),
        (
            "MAX_CONNECTIONS_PER_IP",
            "EXAI_WS_MAX_CONNECTIONS_PER_IP",
            "EXAI_WS_MAX_CONNECTIONS_PER_IP=2",
        ),
        (
            "WORKFLOW_TOOL_TIMEOUT_SECS",
            "EXAI_WS_CALL_TIMEOUT_SECS",
            "EXAI_WS_CALL_TIMEOUT_SECS=123",
        ),
        (
            "SESSION_TIMEOUT_SECS",
            "EXAI_WS_IDLE_TIMEOUT_SECS",
            "EXAI_WS_IDLE_TIMEOUT_SECS=1800",
        ),
        (
            "RESULT_TTL_SECS",
            "EXAI_RESULT_TTL_SECS",
            "RESULT_TTL_SECS=600 ignored: EXAI_RESULT_TTL_SECS=900 is set and wins",
        ),
        (
            "CLEANUP_INTERVAL_HOURS",
            "EXAI_CLEANUP_CRON",
            "EXAI_CLEANUP_CRON=0 0 */6 * * *",
        ),
        (
            "KIMI_FILES_MAX_SIZE_MB",
            "EXAI_MAX_UPLOAD_BYTES",
            "EXAI_MAX_UPLOAD_BYTES=20971520",
        ),
        ("LOG_LEVEL", "RUST_LOG", "RUST_LOG=debug"),
        ("SESSION_CLEANUP_INTERVAL", "-", "no meaning here"),
    ] {
        daemon.legacy_warning(legacy, new, says).await;
    }

    // MAX_CONNECTIONS_PER_IP=2: a third connection from this address is refused with 1008.
    let mut first = Client::connect(&url).await;
    let ack = first.hello(json!({"op": "hello", "token": TOKEN})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let mut second = Client::connect(&url).await;
    let ack = second.hello(json!({"op": "hello", "token": TOKEN})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let mut third = Client::connect(&url).await;
    match third.next().await {
        Err(Seen::Close(code, reason)) => {
            assert_eq!(code, 1008, "{reason}");
            assert!(reason.contains("(2/2)"), "{reason}");
        }
        other => panic!("the third connection was not refused: {other:?}"),
    }
    // LOG_LEVEL=DEBUG: the daemon's debug lines are written.
    daemon
        .wait_log("at DEBUG level", |v| {
            v["level"] == "DEBUG" && v["message"] == "hello accepted"
        })
        .await;
    // WORKFLOW_TOOL_TIMEOUT_SECS=123 is the call deadline the acknowledgement announces.
    first
        .send(
            json!({"op": "call_tool", "request_id": "r1", "name": "test_echo",
                     "arguments": {"text": "hi"}}),
        )
        .await;
    let (ack, _) = first.until("call_tool_ack", "r1").await;
    assert_eq!(ack["timeout"], 123.0, "{ack}");

    // The worker, with the same environment, starts and logs the same warnings.
    let mut env = original;
    env.extend([
        ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        // No cleanup run may reach a real database.
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/exai_absent_settings".to_owned(),
        ),
    ]);
    let mut worker = spawn_logged("exai-worker", &["run", "--queues", "tool_calls"], &env);
    for (legacy, new, says) in [
        (
            "FILE_RETENTION_DAYS",
            "EXAI_FILE_RETENTION_DAYS",
            "EXAI_FILE_RETENTION_DAYS=7",
        ),
        (
            "CLEANUP_INTERVAL_HOURS",
            "EXAI_CLEANUP_CRON",
            "EXAI_CLEANUP_CRON=0 0 */6 * * *",
        ),
        ("LOG_LEVEL", "RUST_LOG", "RUST_LOG=debug"),
    ] {
        worker.legacy_warning(legacy, new, says).await;
    }
    worker
        .wait_line("exai-worker serving", |l| l.contains("exai-worker serving"))
        .await;
    // The call enqueued above runs on it.
    let (res, _) = first.until("call_tool_res", "r1").await;
    assert!(res.get("error").is_none(), "{res}");
    assert_eq!(echoed(&res)["text"], "hi", "{res}");

    for process in [&mut worker, &mut daemon] {
        send_signal(process.child.pid(), "TERM");
        let status = process.child.wait_exit(Duration::from_secs(20)).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }
}

/// `exai-worker run` with `env` (and nothing else) until it exits; its stderr.
async fn worker_refusal(env: &[(&str, &str)]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin_path("exai-worker"))
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("EXAI_AUTO_MIGRATE", "false")
            .envs(env.iter().copied())
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the worker exits by itself")
    .expect("spawn exai-worker");
    assert!(!out.status.success(), "the worker started with {env:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_worker_refuses_the_emulator_or_missing_keys_when_real_providers_are_required() {
    // The emulator, as the compose sim profile wires it.
    let stderr = worker_refusal(&[
        ("EXAI_REQUIRE_REAL_PROVIDERS", "true"),
        ("KIMI_API_URL", "http://exai-sim:9000/v1"),
        ("KIMI_API_KEY", "sim-key"),
        ("SUPABASE_URL", "http://exai-sim:9000"),
        ("SUPABASE_SERVICE_ROLE_KEY", "sim-key"),
    ])
    .await;
    for named in [
        "EXAI_REQUIRE_REAL_PROVIDERS",
        "KIMI_API_URL points at the emulator",
        "KIMI_API_KEY is the emulator's key",
        "SUPABASE_URL points at the emulator",
        "SUPABASE_SERVICE_ROLE_KEY is the emulator's key",
    ] {
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    // Nothing configured.
    let stderr = worker_refusal(&[("EXAI_REQUIRE_REAL_PROVIDERS", "true")]).await;
    for named in [
        "KIMI_API_KEY is not set",
        "SUPABASE_URL is not set",
        "SUPABASE_SERVICE_ROLE_KEY is not set",
    ] {
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    // A real key but an emulated storage: only that is named.
    let stderr = worker_refusal(&[
        ("EXAI_REQUIRE_REAL_PROVIDERS", "true"),
        ("KIMI_API_KEY", "sk-a-real-looking-key"),
        ("SUPABASE_URL", "http://exai-sim:9000"),
        (
            "SUPABASE_SERVICE_ROLE_KEY",
            "a-real-looking-service-role-key",
        ),
    ])
    .await;
    assert!(
        stderr.contains("SUPABASE_URL points at the emulator"),
        "{stderr}"
    );
    assert!(!stderr.contains("KIMI_API_KEY"), "{stderr}");
    assert!(
        !stderr.contains("sk-a-real-looking-key") && !stderr.contains("service-role-key"),
        "a key leaked: {stderr}"
    );
}

#[tokio::test]
async fn the_worker_starts_with_real_providers_required_and_configured() {
    let prefix = unique_prefix("settings-real");
    let _keys = PrefixGuard::new(prefix.clone(), exai_tests::redis_url());
    let env = [
        ("REDIS_URL", exai_tests::redis_url()),
        ("EXAI_REDIS_PREFIX", prefix.clone()),
        ("EXAI_LOG_FORMAT", "json".to_owned()),
        ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/exai_absent_settings".to_owned(),
        ),
        ("EXAI_REQUIRE_REAL_PROVIDERS", "true".to_owned()),
        ("KIMI_API_KEY", "sk-a-real-looking-key".to_owned()),
        ("SUPABASE_URL", "https://project.supabase.co".to_owned()),
        ("SUPABASE_SERVICE_ROLE_KEY", "a-service-role-key".to_owned()),
    ];
    let mut worker = spawn_logged("exai-worker", &["run", "--queues", "tool_calls"], &env);
    worker
        .wait_line("exai-worker serving", |l| l.contains("exai-worker serving"))
        .await;
    send_signal(worker.child.pid(), "TERM");
    let status = worker.child.wait_exit(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
