//! The processes a benchmark starts — `exai-worker run`, `exai-daemon`, `exai-sim` — spawned
//! with a clean environment pointing at the bench's prefix, watched for early exits, stopped
//! with SIGTERM at the end, and killed by their guards if the bench fails first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use exai_shared::queue::TOOL_CALLS;
use exai_tests::ChildGuard;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The client token of every daemon a benchmark starts (`EXAI_WS_TOKEN`).
pub const TOKEN: &str = "exai-bench-token-0123456789";

/// Raises this process's soft limit on open files to its hard limit (a benchmark that opens
/// thousands of sockets needs them; the processes it spawns inherit the limit) and fails,
/// saying what to do, when even that leaves fewer than `needed`. Returns the limit.
pub fn raise_open_files_limit(needed: u64) -> anyhow::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some() && limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).context("raise RLIMIT_NOFILE to its hard limit")?;
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    anyhow::ensure!(
        now >= needed,
        "the open-files limit ({now}, the hard limit) is below the {needed} this run needs: raise \
         it (ulimit -Hn) or ask for fewer connections"
    );
    Ok(now)
}

/// Where `exai-worker` is when nobody says (see [`default_bin`]).
pub fn default_worker_bin() -> anyhow::Result<PathBuf> {
    default_bin("exai-worker")
}

/// Where binary `name` of the workspace is when nobody says: next to this executable
/// (`target/<profile>/`), or one level up when this runs from `target/<profile>/deps/`.
pub fn default_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the current executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", exe.display()))?;
    let here = dir.join(name);
    if !here.exists()
        && dir.ends_with("deps")
        && let Some(up) = dir.parent()
    {
        return Ok(up.join(name));
    }
    Ok(here)
}

/// Fails unless `bin` exists, saying how to build it; warns when it is older than this
/// executable.
pub fn ensure_built(bin: &Path, flag: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        bin.exists(),
        "{} does not exist: build it first (cargo build --release -p exai-daemon -p exai-worker \
         -p exai-tests) or pass {flag}",
        bin.display()
    );
    warn_if_older(bin);
    Ok(())
}

/// A command for `bin` with a clean environment (`PATH`, `HOME`, `RUST_LOG` and
/// `TOKIO_WORKER_THREADS`, which sizes a spawned process's runtime, kept), run from
/// the temporary directory, its standard output and error going to `log`.
fn clean_command(bin: &Path, log: &Path) -> anyhow::Result<tokio::process::Command> {
    let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear()
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out));
    for var in ["PATH", "HOME", "RUST_LOG", "TOKIO_WORKER_THREADS"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    Ok(cmd)
}

/// [`clean_command`] serving `prefix` on `redis_url`.
fn command(
    bin: &Path,
    redis_url: &str,
    prefix: &str,
    log: &Path,
) -> anyhow::Result<tokio::process::Command> {
    let mut cmd = clean_command(bin, log)?;
    cmd.env("REDIS_URL", redis_url)
        .env("EXAI_REDIS_PREFIX", prefix);
    Ok(cmd)
}

/// Sends SIGTERM to `pid`.
fn sigterm(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// Fails when `guard`'s process has exited, with the end of `log`.
fn check_alive(guard: &mut ChildGuard, what: &str, log: &Path) -> anyhow::Result<()> {
    if let Some(status) = guard.0.try_wait()? {
        anyhow::bail!(
            "{what} exited early ({status}); its log, {}, ends with:\n{}",
            log.display(),
            tail(log, 20)
        );
    }
    Ok(())
}

/// Waits up to `grace` for `guard`'s process to exit, then kills it.
async fn wait_or_kill(guard: &mut ChildGuard, grace: Duration) -> anyhow::Result<()> {
    if tokio::time::timeout(grace, guard.0.wait()).await.is_err() {
        guard.0.kill().await?;
    }
    Ok(())
}

/// A running `exai-daemon` and the address it printed. Dropping it kills it (SIGKILL);
/// [`DaemonProc::stop`] is the orderly way.
pub struct DaemonProc {
    guard: ChildGuard,
    log: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl DaemonProc {
    /// Spawns `exai-daemon` on a free loopback port serving `prefix` on `redis_url`, with
    /// `env` on top, and waits (up to 20 s) for the `listening on ADDR` line it prints once it
    /// is ready. Its log goes to a file, kept when something fails.
    pub async fn spawn(
        bin: &Path,
        redis_url: &str,
        prefix: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        ensure_built(bin, "--daemon-bin")?;
        let log = std::env::temp_dir().join(format!("{prefix}-daemon.log"));
        let mut cmd = command(bin, redis_url, prefix, &log)?;
        cmd.stdout(Stdio::piped())
            .env("EXAI_WS_HOST", "127.0.0.1")
            .env("EXAI_WS_PORT", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().context("the daemon's stdout")?;
        let mut guard = ChildGuard(child);
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            _ => {
                check_alive(&mut guard, "exai-daemon", &log)?;
                anyhow::bail!(
                    "exai-daemon printed no address within 20 s (log: {})",
                    log.display()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .with_context(|| {
                format!("exai-daemon's first line is not `listening on ADDR`: {line}")
            })?;
        // Keep the pipe open (and drained) for the daemon's lifetime.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { guard, log, addr })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.guard.0.id()
    }

    /// Fails when the daemon has exited, with the end of its log.
    pub fn check(&mut self) -> anyhow::Result<()> {
        check_alive(&mut self.guard, "exai-daemon", &self.log)
    }

    /// Stops the daemon with SIGTERM (killing it when still running after `grace`) and removes
    /// its log.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            sigterm(pid);
        }
        wait_or_kill(&mut self.guard, grace).await?;
        let _ = std::fs::remove_file(&self.log);
        Ok(())
    }
}

/// One worker process and the file its output goes to.
struct WorkerProc {
    guard: ChildGuard,
    log: PathBuf,
    name: String,
}

/// The worker processes of a run. Dropping them kills them (SIGKILL); [`WorkerProcs::stop`] is
/// the orderly way.
pub struct WorkerProcs {
    procs: Vec<WorkerProc>,
}

impl WorkerProcs {
    /// Spawns `n` × `exai-worker run --queues tool_calls --concurrency <concurrency>` serving
    /// `prefix` on `redis_url`, with migrations off (the bench has no database). Their output
    /// goes to a log file each, kept when something fails.
    pub fn spawn(
        bin: &Path,
        n: usize,
        concurrency: usize,
        redis_url: &str,
        prefix: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn_env(bin, n, concurrency, redis_url, prefix, &[])
    }

    /// [`WorkerProcs::spawn`] with `extra` variables in the workers' environment.
    pub fn spawn_env(
        bin: &Path,
        n: usize,
        concurrency: usize,
        redis_url: &str,
        prefix: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        ensure_built(bin, "--worker-bin")?;
        let concurrency = concurrency.to_string();
        let mut env = vec![
            ("REDIS_URL", redis_url),
            ("EXAI_REDIS_PREFIX", prefix),
            ("EXAI_AUTO_MIGRATE", "false"),
        ];
        env.extend_from_slice(extra);
        Self::spawn_with(
            bin,
            n,
            &["run", "--queues", TOOL_CALLS, "--concurrency", &concurrency],
            &env,
            &format!("{prefix}-worker"),
        )
    }

    /// Spawns `n` × `bin args…` with a clean environment plus `env` (and what
    /// [`clean_command`] keeps); process `i` writes its output to `<tmp>/<log_stem>-<i>.log`.
    pub fn spawn_with(
        bin: &Path,
        n: usize,
        args: &[&str],
        env: &[(&str, &str)],
        log_stem: &str,
    ) -> anyhow::Result<Self> {
        ensure_built(bin, "its --…-bin flag")?;
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            let log = std::env::temp_dir().join(format!("{log_stem}-{i}.log"));
            let mut cmd = clean_command(bin, &log)?;
            cmd.args(args).envs(env.iter().copied());
            let child = cmd
                .spawn()
                .with_context(|| format!("spawn {}", bin.display()))?;
            procs.push(WorkerProc {
                guard: ChildGuard(child),
                log,
                name: name.clone(),
            });
        }
        Ok(Self { procs })
    }

    /// The process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.guard.0.id()).collect()
    }

    /// Fails when a worker has exited, with the end of its log.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            check_alive(&mut p.guard, &p.name, &p.log)?;
        }
        Ok(())
    }

    /// Stops the workers with SIGTERM (killing any still running after `grace`) and removes
    /// their logs.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        for p in &self.procs {
            if let Some(pid) = p.guard.0.id() {
                sigterm(pid);
            }
        }
        for p in &mut self.procs {
            wait_or_kill(&mut p.guard, grace).await?;
            let _ = std::fs::remove_file(&p.log);
        }
        Ok(())
    }
}

/// Spawns `exai-sim` on a free loopback port with `args` (besides `--port`) and waits (up to
/// 20 s) until it answers; returns it and its base URL (`http://127.0.0.1:<port>`).
pub async fn spawn_sim(
    bin: &Path,
    args: &[&str],
    prefix: &str,
) -> anyhow::Result<(WorkerProcs, String)> {
    let port = exai_tests::free_port().to_string();
    let mut all = vec!["--port", port.as_str()];
    all.extend_from_slice(args);
    let mut sim = WorkerProcs::spawn_with(bin, 1, &all, &[], &format!("{prefix}-sim"))?;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answered = http
            .get(format!("{url}/_sim/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if answered {
            return Ok((sim, url));
        }
        sim.check()?;
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "exai-sim did not answer on {url} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints a warning when the worker binary is older than this executable: it may predate the
/// code being measured.
fn warn_if_older(bin: &Path) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let exe = std::env::current_exe().ok();
    if let (Some(worker), Some(bench)) = (modified(bin), exe.as_deref().and_then(modified))
        && worker < bench
    {
        eprintln!(
            "exai-bench: note: {} is older than this exai-bench; rebuild both if the engine changed \
             (cargo build --release -p exai-daemon -p exai-worker -p exai-tests)",
            bin.display()
        );
    }
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
