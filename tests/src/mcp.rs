//! The official MCP Python SDK as a test peer: a virtual environment with the pinned
//! `tests/mcp/requirements.txt` (the SDK `mcp` and its dependencies), created on first use under
//! the target directory and reused while the requirements are unchanged, and the driver scripts
//! of `tests/mcp/`, each run as a process that prints one JSON object per line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::bin_path;

/// How long one driver script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// `tests/mcp/`: the driver scripts and the requirements.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp")
}

/// The Python of the SDK's virtual environment, created (once per requirements file) when
/// missing: `python3 -m venv`, then `pip install -r tests/mcp/requirements.txt`. Panics with
/// what to install when Python or its `venv` module is missing.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(create_venv).clone()
}

fn create_venv() -> PathBuf {
    let requirements = scripts_dir().join("requirements.txt");
    let text = std::fs::read(&requirements).expect("tests/mcp/requirements.txt");
    let digest: String = Sha256::digest(&text)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // target/<profile>/exai-daemon → target/mcp-venv-<digest>
    let target = bin_path("exai-daemon")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    let venv = target.join(format!("mcp-venv-{digest}"));
    let python = venv.join("bin").join("python");
    if python.exists() {
        return python;
    }
    // One test process builds it (the one that creates the lock directory); the others wait
    // for it to appear. A builder that fails removes the lock as it unwinds, so the next one
    // tries at once; a lock left by a process that died is taken over after the wait.
    let lock = target.join(format!("mcp-venv-{digest}.lock"));
    let deadline = std::time::Instant::now() + VENV_WAIT;
    loop {
        if python.exists() {
            return python;
        }
        if std::fs::create_dir(&lock).is_ok() || std::time::Instant::now() >= deadline {
            let _held = LockDir(lock);
            return build_venv(&target, &digest, &requirements, &venv);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The venv's lock directory, removed when its builder is done, succeeded or not.
struct LockDir(PathBuf);

impl Drop for LockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// How long a test waits for another process to build the environment.
const VENV_WAIT: Duration = Duration::from_secs(600);

fn build_venv(target: &Path, digest: &str, requirements: &Path, venv: &Path) -> PathBuf {
    let python = venv.join("bin").join("python");
    // Built aside and renamed into place, so a concurrent test process never sees half of it.
    let building = target.join(format!("mcp-venv-{digest}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let run = |cmd: &mut std::process::Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed (scripts/test installs python3 and python3-venv):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&building),
        "python3 -m venv",
    );
    run(
        std::process::Command::new(building.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(requirements),
        "pip install -r tests/mcp/requirements.txt",
    );
    if std::fs::rename(&building, venv).is_err() {
        // Another test process finished first: use its environment.
        let _ = std::fs::remove_dir_all(&building);
    }
    assert!(python.exists(), "{} was not created", python.display());
    python
}

/// A driver script running, its JSON lines read as they come.
pub struct Driver {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line read so far.
    pub seen: Vec<Value>,
}

impl Driver {
    /// Starts `tests/mcp/<script>` with `args` (killed when dropped).
    pub fn start(script: &str, args: &[&str]) -> Self {
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(scripts_dir().join(script))
            .args(args)
            .current_dir(scripts_dir())
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if std::env::var_os("TEST_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawn the python driver");
        let stdout = child.stdout.take().expect("stdout");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// The next line whose `step` is `step`, skipping others; panics after [`SCRIPT_TIMEOUT`]
    /// or when the script ends first.
    pub async fn step(&mut self, step: &str) -> Value {
        let found = tokio::time::timeout(SCRIPT_TIMEOUT, async {
            loop {
                let line = self.lines.next_line().await.ok().flatten()?;
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                self.seen.push(value.clone());
                if value["step"] == step {
                    return Some(value);
                }
            }
        })
        .await
        .ok()
        .flatten();
        found.unwrap_or_else(|| {
            panic!(
                "the driver printed no step {step:?} (saw {:?}); run with TEST_LOG=1 for its stderr",
                self.seen
            )
        })
    }

    /// Waits for the script to exit; panics unless it succeeded.
    pub async fn finish(mut self) {
        let status = tokio::time::timeout(SCRIPT_TIMEOUT, self.child.wait())
            .await
            .expect("the driver exits")
            .expect("wait for the driver");
        assert!(
            status.success(),
            "the driver failed ({status}) after {:?}; run with TEST_LOG=1 for its stderr",
            self.seen
        );
    }
}

/// Runs `tests/mcp/<script>` with `args` to its end and returns its `step` lines by step.
pub async fn run(script: &str, args: &[&str]) -> std::collections::HashMap<String, Value> {
    let mut driver = Driver::start(script, args);
    let read_all = async {
        while let Ok(Some(line)) = driver.lines.next_line().await {
            if let Ok(value) = serde_json::from_str::<Value>(&line) {
                driver.seen.push(value);
            }
        }
    };
    if tokio::time::timeout(SCRIPT_TIMEOUT, read_all)
        .await
        .is_err()
    {
        panic!("{script} did not finish in {SCRIPT_TIMEOUT:?}");
    }
    let seen = driver.seen.clone();
    driver.finish().await;
    seen.into_iter()
        .filter_map(|v| Some((v["step"].as_str()?.to_owned(), v)))
        .collect()
}
