//! The processes a benchmark starts (`exai-worker run`, `exai-sim`): spawned with a clean
//! environment pointing at the bench's prefix, watched for early exits, stopped with SIGTERM at
//! the end, and killed by their guards if the bench fails first.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use exai_shared::queue::TOOL_CALLS;
use exai_tests::ChildGuard;

/// Where `exai-worker` is when nobody says: see [`default_bin`].
pub fn default_worker_bin() -> anyhow::Result<PathBuf> {
    default_bin("exai-worker")
}

/// Where the workspace binary `name` is when nobody says: next to this executable
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

/// One process and the file its output goes to.
struct WorkerProc {
    guard: ChildGuard,
    log: PathBuf,
    name: String,
}

/// The processes of a run (worker processes, or the emulator). Dropping them kills them
/// (SIGKILL); [`WorkerProcs::stop`] is the orderly way.
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
        let concurrency = concurrency.to_string();
        Self::spawn_with(
            bin,
            n,
            &["run", "--queues", TOOL_CALLS, "--concurrency", &concurrency],
            &[
                ("REDIS_URL", redis_url),
                ("EXAI_REDIS_PREFIX", prefix),
                ("EXAI_AUTO_MIGRATE", "false"),
            ],
            &format!("{prefix}-worker"),
        )
    }

    /// Spawns `n` × `bin args…` with a clean environment plus `env` (and `PATH`, `HOME`,
    /// `RUST_LOG`); process `i` writes its output to `<tmp>/<log_stem>-<i>.log`.
    pub fn spawn_with(
        bin: &Path,
        n: usize,
        args: &[&str],
        env: &[(&str, &str)],
        log_stem: &str,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bin.exists(),
            "{} does not exist: build it first (cargo build --release -p exai-worker -p exai-tests) \
             or pass its path",
            bin.display()
        );
        warn_if_older(bin);
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            let log = std::env::temp_dir().join(format!("{log_stem}-{i}.log"));
            let out =
                std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
            let mut cmd = tokio::process::Command::new(bin);
            cmd.args(args)
                .env_clear()
                .current_dir(std::env::temp_dir())
                .kill_on_drop(true)
                .stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone()?))
                .stderr(Stdio::from(out))
                .envs(env.iter().copied());
            for var in ["PATH", "HOME", "RUST_LOG"] {
                if let Ok(v) = std::env::var(var) {
                    cmd.env(var, v);
                }
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("spawn {}", bin.display()))?;
            procs.push(WorkerProc {
                guard: ChildGuard(child),
                log,
                name: bin
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            });
        }
        Ok(Self { procs })
    }

    /// The process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.guard.0.id()).collect()
    }

    /// Fails when a process has exited, with the end of its log.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.guard.0.try_wait()? {
                anyhow::bail!(
                    "{} exited early ({status}); its log, {}, ends with:\n{}",
                    p.name,
                    p.log.display(),
                    tail(&p.log, 20)
                );
            }
        }
        Ok(())
    }

    /// Stops the processes with SIGTERM (killing any still running after `grace`) and removes
    /// their logs.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        for p in &self.procs {
            if let Some(pid) = p.guard.0.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
        }
        for p in &mut self.procs {
            if tokio::time::timeout(grace, p.guard.0.wait()).await.is_err() {
                p.guard.0.kill().await?;
            }
            let _ = std::fs::remove_file(&p.log);
        }
        Ok(())
    }
}

/// Prints a warning when a binary is older than this executable: it may predate the code being
/// measured.
fn warn_if_older(bin: &Path) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let exe = std::env::current_exe().ok();
    if let (Some(worker), Some(bench)) = (modified(bin), exe.as_deref().and_then(modified))
        && worker < bench
    {
        eprintln!(
            "exai-bench: note: {} is older than this exai-bench; rebuild both if the engine changed \
             (cargo build --release -p exai-worker -p exai-tests)",
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
