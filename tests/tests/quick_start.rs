//! `scripts/up`, run for real: it brings the stack up with no keys configured, prints how to
//! connect, writes its settings file (`data/run/env`, mode 0600) that a second shell's
//! `exai-call` and `exai-worker` read by themselves, serves a call, and SIGINT or SIGTERM stops
//! every process it started — in the foreground (Ctrl-C) and started in the background in its
//! own session (`setsid scripts/up &`, where SIGINT arrives ignored) — clearing its pid and
//! settings files and saying what stopped in its last line. The Redis it starts keeps its data
//! (append-only) under `data/redis`: a restart of the whole stack mid-queue loses no job.
//!
//! The binaries are the ones `scripts/test` built (`--no-build`, `CARGO_TARGET_DIR`); Redis (a
//! key prefix, or a server of the test's own), Postgres, the port and the data directory are
//! each test's own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use exai_shared::Config;
use exai_shared::config::read_dotenv_file;
use exai_shared::keys::Keys;
use exai_shared::queue::{JobState, Queue, QueuePolicy, TOOL_CALLS};
use exai_shared::redis::RedisHandle;
use exai_tests::daemon::Client;
use exai_tests::{
    PrefixGuard, TestDb, bin_path, free_port, pg_admin_url, redis_url, unique_prefix, wait_until,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long scripts/up may take to come up (it applies migrations and starts five processes on
/// a loaded 2-core machine).
const UP_WAIT: Duration = Duration::from_secs(120);
/// How long it may take to stop everything.
const STOP_WAIT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The cargo target directory and profile flag of the binaries the tests run.
fn target() -> (PathBuf, Option<&'static str>) {
    let bin = bin_path("exai-worker");
    let profile_dir = bin.parent().expect("target/<profile>");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    (
        profile_dir.parent().expect("target").to_path_buf(),
        release.then_some("--release"),
    )
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("exai-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether process `pid` runs (a zombie does not: a background scripts/up's parent is gone and
/// nobody may reap it at once).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The pids in a scripts/up pid file.
fn read_pids(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("a pid per line"))
        .collect()
}

/// The environment of a scripts/up run: a clean one with the test's services, port and data
/// directory, and the binaries the tests run.
fn up_env(cmd: &mut tokio::process::Command, redis: &str, db: &TestDb, port: u16, up_dir: &Path) {
    let (target_dir, _) = target();
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("REDIS_URL", redis)
        .env("EXAI_TEST_PG_ADMIN_URL", pg_admin_url())
        .env("DATABASE_URL", &db.url)
        .env("EXAI_WS_PORT", port.to_string())
        .env("EXAI_UP_DIR", up_dir)
        .env("CARGO_TARGET_DIR", target_dir);
}

/// scripts/up's flags for these tests.
fn up_args() -> Vec<String> {
    let mut args = vec![
        repo_root().join("scripts/up").display().to_string(),
        "--no-build".to_owned(),
    ];
    args.extend(target().1.map(str::to_owned));
    args
}

/// Runs a workspace binary to completion in `cwd` with only `PATH` (and `env`) set — a second
/// shell in which nothing was exported.
async fn second_shell(bin: &str, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let out = tokio::process::Command::new(bin_path(bin))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap_or_else(|_| panic!("{bin} {args:?} finishes"))
        .unwrap();
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[derive(Debug)]
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// The settings file: its pairs as the processes' dotenv reader reads them, checked to be what
/// a shell loads from it too (`set -a; . FILE; set +a`), and its mode.
async fn settings_file(file: &Path) -> (Vec<(String, String)>, u32) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
    let pairs = read_dotenv_file(file).expect("the dotenv reader loads it");
    let script = format!("set -a; . '{}'; set +a; env -0", file.display());
    let out = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    let shell = String::from_utf8(out.stdout).unwrap();
    for (name, value) in &pairs {
        assert!(
            shell.split('\0').any(|kv| kv == format!("{name}={value}")),
            "the shell and dotenv disagree on {name}"
        );
    }
    (pairs, mode)
}

fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn scripts_up_starts_the_stack_a_second_shell_uses_it_and_ctrl_c_stops_it() {
    let db = TestDb::new().await;
    let prefix = unique_prefix("up");
    let _keys = PrefixGuard::new(&prefix, redis_url());
    let port = free_port();
    let dir = TempDir::new("up");
    let up_dir = dir.path().join("data");
    let elsewhere = dir.path().join("work/sub");
    std::fs::create_dir_all(&elsewhere).unwrap();

    let mut up = tokio::process::Command::new("bash");
    up.args(up_args());
    up_env(&mut up, &redis_url(), &db, port, &up_dir);
    up.env("EXAI_REDIS_PREFIX", &prefix)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut up = up.spawn().expect("run scripts/up");
    let script_pid = up.id().unwrap();

    // Its banner, up to the line that says how to stop it.
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let read = tokio::time::timeout(UP_WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("stops everything");
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
    assert!(
        banner_text.contains("Ctrl-C or SIGTERM stops everything"),
        "{banner_text}"
    );

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

    // The settings file: the one line that loads it is printed; mode 0600; a shell and the
    // processes' reader load the same; it says how to reach this stack.
    let file = up_dir.join("run/env");
    let load = format!("set -a; . {}; set +a", file.display());
    assert!(
        banner.iter().any(|l| l.trim() == load),
        "the line that loads {}:\n{banner_text}",
        file.display()
    );
    let (settings, mode) = settings_file(&file).await;
    assert_eq!(mode, 0o600, "{mode:o}");
    assert_eq!(get(&settings, "EXAI_WS_TOKEN"), Some(token.as_str()));
    assert_eq!(get(&settings, "EXAI_ADMIN_TOKEN"), Some(admin_token));
    assert_eq!(get(&settings, "EXAI_WS_URL"), Some(ws.as_str()));
    assert_eq!(get(&settings, "EXAI_REDIS_PREFIX"), Some(prefix.as_str()));
    assert_eq!(get(&settings, "DATABASE_URL"), Some(db.url.as_str()));
    let sim_url = get(&settings, "KIMI_API_URL").expect("the emulator's URL");
    assert!(sim_url.starts_with("http://127.0.0.1:"), "{sim_url}");
    assert!(get(&settings, "KIMI_API_KEY").is_some_and(|k| k.starts_with("sim-")));

    // The example call works against the stack it started (workers, daemon, queue).
    let call = tokio::process::Command::new(bin_path("exai-call"))
        .args(["--url", &ws, "test_echo", r#"{"text":"hello from up"}"#])
        .env_clear()
        .env("EXAI_WS_TOKEN", &token)
        .current_dir(std::env::temp_dir())
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

    // A second shell under the directory, nothing exported: exai-call and exai-worker find
    // the stack through data/run/env.
    let call = second_shell(
        "exai-call",
        &["test_echo", r#"{"text":"from a second shell"}"#],
        &elsewhere,
        &[],
    )
    .await;
    assert!(
        call.ok && call.stdout.contains("from a second shell"),
        "{call:?}"
    );
    let stats = second_shell(
        "exai-worker",
        &["queue", "stats", "--json"],
        &elsewhere,
        &[],
    )
    .await;
    assert!(stats.ok, "{stats:?}");
    assert_eq!(stats.stderr, "", "a read is quiet");
    let stats: Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(
        stats["queues"]["tool_calls"]["completed"], 2,
        "the stack's own queue: {stats}"
    );
    let cleanup = second_shell(
        "exai-worker",
        &["cleanup", "--dry-run", "--json"],
        &elsewhere,
        &[],
    )
    .await;
    assert!(cleanup.ok, "{cleanup:?}");
    let report: Value = serde_json::from_str(&cleanup.stdout).unwrap();
    for sweep in ["moonshot_orphans", "supabase_orphans"] {
        assert!(
            report["sweeps"][sweep].get("skipped").is_none(),
            "the emulator's settings came from data/run/env: {report}"
        );
    }

    // The README's lines for a second shell: the first loads the file (from the directory above
    // data/), the last opens the admin page it names — the one the banner printed, served.
    let (load_line, open_line) = readme_second_shell_lines();
    assert_eq!(load_line, "set -a; . data/run/env; set +a");
    assert_eq!(open_line, r#"xdg-open "$EXAI_ADMIN_URL""#);
    let shell = tokio::process::Command::new("bash")
        .args(["-c", &format!("{load_line}\nprintf %s \"$EXAI_ADMIN_URL\"")])
        .env_clear()
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let admin_url = String::from_utf8_lossy(&shell.stdout).into_owned();
    assert_eq!(
        admin_url,
        format!("http://127.0.0.1:{port}/admin#token={admin_token}")
    );
    assert!(banner_text.contains(&format!("Admin page: {admin_url}")));
    let page = reqwest::get(admin_url.split('#').next().unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    let pids = read_pids(&up_dir.join("run/pids"));
    assert_eq!(pids.len(), 4, "exai-sim, two workers and the daemon");
    assert!(pids.iter().all(|&p| alive(p)));

    exai_tests::send_signal(script_pid, "INT");
    let status = tokio::time::timeout(STOP_WAIT, up.wait())
        .await
        .expect("scripts/up exits on Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    let mut rest = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push(line);
    }
    let last = rest.last().cloned().unwrap_or_default();
    assert!(last.starts_with("stopped: exai-daemon (pid "), "{rest:?}");
    assert!(last.contains("2 exai-worker (pids "), "{last}");
    assert!(last.contains("exai-sim (pid "), "{last}");
    let left: Vec<u32> = pids.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    assert!(!up_dir.join("run/pids").exists(), "the pid file is cleared");
    assert!(!file.exists(), "the settings file is removed");
}

/// The first and last command lines of the README's block for a second shell (after "Then, in a
/// second shell"), without their comments.
fn readme_second_shell_lines() -> (String, String) {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let after = readme
        .split_once("Then, in a second shell")
        .expect("the README's second-shell block")
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a sh block")
        .0;
    let commands: Vec<String> = block
        .lines()
        .map(|l| {
            l.split_once(" # ")
                .map_or(l, |(cmd, _)| cmd)
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(commands.len(), 3, "three lines: {commands:?}");
    assert!(
        commands[1].ends_with("exai-worker queue history tool_calls"),
        "{commands:?}"
    );
    (commands[0].clone(), commands[2].clone())
}

/// A scripts/up started the way `setsid scripts/up &` in a script starts it: in the background
/// of a non-interactive shell (SIGINT ignored on entry), in a session of its own. Its output
/// goes to a log file. Stops what it started when dropped, whatever the test did.
struct Background {
    pid: u32,
    log: PathBuf,
    pid_file: PathBuf,
    redis_port: u16,
    /// Whether [`stop`](Self::stop) saw everything gone (then dropping it does nothing).
    stopped: std::cell::Cell<bool>,
}

impl Background {
    async fn start(redis: &str, db: &TestDb, port: u16, up_dir: &Path, log: PathBuf) -> Self {
        let args: Vec<String> = up_args().iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "setsid bash {} >'{}' 2>&1 & echo $!",
            args.join(" "),
            log.display()
        );
        let mut sh = tokio::process::Command::new("bash");
        sh.args(["-c", &script]);
        up_env(&mut sh, redis, db, port, up_dir);
        let out = sh.stdin(Stdio::null()).output().await.unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the background pid");
        let redis_port = redis.rsplit(':').next().unwrap().parse().unwrap();
        let up = Self {
            pid,
            log,
            pid_file: up_dir.join("run/pids"),
            redis_port,
            stopped: std::cell::Cell::new(false),
        };
        let came_up = exai_tests::wait_until(UP_WAIT, || async {
            up.output().contains("stops everything") || !alive(up.pid)
        })
        .await;
        assert!(
            came_up && alive(up.pid),
            "scripts/up did not come up:\n{}",
            up.output()
        );
        up
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits until the script and every process it started are gone;
    /// returns its last output line.
    async fn stop(&self, signal: &str) -> String {
        let pids = read_pids(&self.pid_file);
        assert!(!pids.is_empty(), "its processes are recorded");
        exai_tests::send_signal(self.pid, signal);
        let gone = wait_until(STOP_WAIT, || async {
            !alive(self.pid) && pids.iter().all(|&p| !alive(p))
        })
        .await;
        let output = self.output();
        assert!(gone, "still running after SIG{signal}:\n{output}");
        self.stopped.set(true);
        assert!(
            !self.pid_file.exists(),
            "the pid file is cleared:\n{output}"
        );
        output.lines().last().unwrap_or_default().to_owned()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.stopped.get() {
            return;
        }
        for pid in read_pids(&self.pid_file)
            .into_iter()
            .chain([self.pid])
            .filter(|&p| alive(p))
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &self.redis_port.to_string(), "shutdown", "nosave"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The `tool_calls` queue of the Redis at `url` (the default key prefix).
async fn tool_calls(url: &str) -> Queue {
    let config = Config::from_vars([("REDIS_URL", url)]).unwrap();
    let conn = RedisHandle::connect(&config.redis).await.unwrap();
    Queue::new(
        conn,
        &Keys::new(&config.redis.prefix),
        TOOL_CALLS,
        QueuePolicy::from_config(&config.jobs),
    )
}

#[tokio::test]
async fn a_restarted_stack_loses_no_queued_job_and_either_signal_stops_it_in_the_background() {
    let db = TestDb::new().await;
    let port = free_port();
    // A Redis port nothing answers on: scripts/up starts a Redis of its own there.
    let redis_port = free_port();
    let redis = format!("redis://127.0.0.1:{redis_port}");
    let dir = TempDir::new("up-restart");
    let up_dir = dir.path().join("data");
    let shell = dir.path();

    let up = Background::start(&redis, &db, port, &up_dir, dir.path().join("up-1.log")).await;
    assert!(
        up.output()
            .contains(&format!("starting redis on 127.0.0.1:{redis_port}")),
        "{}",
        up.output()
    );
    assert!(up_dir.join("redis/appendonlydir").is_dir(), "append-only");
    let (settings, _) = settings_file(&up_dir.join("run/env")).await;
    let token = get(&settings, "EXAI_WS_TOKEN").unwrap().to_owned();

    // Nothing consumes: the queue is paused from a second shell. Then 20 calls are enqueued
    // (each acknowledged once it is durable in Redis).
    let paused = second_shell("exai-worker", &["queue", "pause", "tool_calls"], shell, &[]).await;
    assert!(paused.ok, "{paused:?}");
    let mut client = Client::connect(&format!("ws://127.0.0.1:{port}/")).await;
    let ack = client.hello(json!({"op": "hello", "token": token})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let mut jobs = Vec::new();
    for i in 0..20 {
        let request_id = format!("r-{i}");
        client
            .send(
                json!({"op": "call_tool", "request_id": request_id, "name": "test_echo",
                         "arguments": {"n": i}}),
            )
            .await;
        let (ack, _) = client.until("call_tool_ack", &request_id).await;
        jobs.push(ack["job_id"].as_str().unwrap().to_owned());
    }
    let q = tool_calls(&redis).await;
    assert_eq!(q.counts().await.unwrap().queued, 20);

    // SIGTERM: everything stops, the Redis it started included.
    let last = up.stop("TERM").await;
    assert!(last.starts_with("stopped: exai-daemon (pid "), "{last}");
    assert!(last.ends_with(", redis-server"), "{last}");
    assert!(!up_dir.join("run/env").exists());
    let down = std::process::Command::new("redis-cli")
        .args(["-p", &redis_port.to_string(), "ping"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&down.stdout).contains("PONG"),
        "the Redis stopped with the stack"
    );
    drop(client);

    // Started again: a new Redis process reads the append-only file; every job is still queued.
    let up = Background::start(&redis, &db, port, &up_dir, dir.path().join("up-2.log")).await;
    assert!(up.output().contains("starting redis"), "{}", up.output());
    let stats = second_shell("exai-worker", &["queue", "stats", "--json"], shell, &[]).await;
    assert!(stats.ok, "{stats:?}");
    let stats: Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(stats["queues"]["tool_calls"]["queued"], 20, "{stats}");
    assert_eq!(stats["queues"]["tool_calls"]["paused"], true, "{stats}");

    // Resumed: each of them completes, with its own answer.
    let resumed = second_shell(
        "exai-worker",
        &["queue", "resume", "tool_calls"],
        shell,
        &[],
    )
    .await;
    assert!(resumed.ok, "{resumed:?}");
    let q = tool_calls(&redis).await;
    let done = wait_until(Duration::from_secs(60), || async {
        let mut all = true;
        for id in &jobs {
            all &= q
                .job(id)
                .await
                .ok()
                .flatten()
                .is_some_and(|j| j.state == JobState::Completed);
        }
        all
    })
    .await;
    assert!(done, "every queued job completes after the restart");
    for (i, id) in jobs.iter().enumerate() {
        let job = q.job(id).await.unwrap().unwrap();
        let result = String::from_utf8_lossy(job.result.as_deref().unwrap_or_default());
        assert!(
            result.contains(&format!("\\\"n\\\":{i}}}")),
            "{id}: {result}"
        );
    }

    // SIGINT reaches a scripts/up started in the background too.
    let last = up.stop("INT").await;
    assert!(last.starts_with("stopped: exai-daemon (pid "), "{last}");
    assert!(last.contains("2 exai-worker (pids "), "{last}");
    assert!(last.ends_with(", redis-server"), "{last}");
}
