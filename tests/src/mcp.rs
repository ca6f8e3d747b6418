//! The official MCP Python SDK as a test peer: a virtual environment with the pinned
//! `tests/mcp/requirements.txt` (the SDK `mcp` and its dependencies), created on first use under
//! the target directory and reused while the requirements are unchanged, and the driver scripts
//! of `tests/mcp/`, each run as a process that prints one JSON object per line; and the official
//! reference server `@modelcontextprotocol/server-everything`, installed with npm the same way
//! ([`everything`]).

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
    let venv = built_once(&format!("mcp-venv-{digest}"), "bin/python", |building| {
        run_to_end(
            std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(building),
            "python3 -m venv",
            "scripts/test installs python3 and python3-venv",
        );
        run_to_end(
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
                .arg(&requirements),
            "pip install -r tests/mcp/requirements.txt",
            "scripts/test installs python3 and python3-venv",
        );
    });
    venv.join("bin").join("python")
}

/// The version of the official reference server the tests run as an upstream.
pub const EVERYTHING_VERSION: &str = "2026.8.31";

/// The entry point of `@modelcontextprotocol/server-everything` ([`EVERYTHING_VERSION`]),
/// installed with npm (once per version) under the target directory: run it with [`node`].
pub fn everything() -> PathBuf {
    static ENTRY: OnceLock<PathBuf> = OnceLock::new();
    ENTRY
        .get_or_init(|| {
            let rel = "node_modules/@modelcontextprotocol/server-everything/dist/index.js";
            let dir = built_once(
                &format!("mcp-everything-{EVERYTHING_VERSION}"),
                rel,
                |building| {
                    std::fs::create_dir_all(building).expect("create the npm directory");
                    run_to_end(
                        std::process::Command::new("npm")
                            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                            .arg(building)
                            .arg(format!(
                                "@modelcontextprotocol/server-everything@{EVERYTHING_VERSION}"
                            )),
                        "npm install @modelcontextprotocol/server-everything",
                        "scripts/test installs nodejs and npm",
                    );
                },
            );
            dir.join(rel)
        })
        .clone()
}

/// The Node.js release the tests run server-everything with when the system's is too old.
pub const NODE_VERSION: &str = "22.23.5";

/// The oldest Node.js major release server-everything runs on (its HTTP server's dependencies
/// need 20; Debian bookworm's is 18).
const NODE_MIN_MAJOR: u32 = 20;

/// The `node` that runs server-everything: the system's when it is [`NODE_MIN_MAJOR`] or newer,
/// else Node.js [`NODE_VERSION`] from the npm registry (the official binaries, published as
/// `node-linux-<arch>`), installed once under the target directory.
pub fn node() -> PathBuf {
    static NODE: OnceLock<PathBuf> = OnceLock::new();
    NODE.get_or_init(|| {
        let system = std::process::Command::new("node")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| {
                v.trim()
                    .trim_start_matches('v')
                    .split('.')
                    .next()?
                    .parse::<u32>()
                    .ok()
            });
        if system.is_some_and(|major| major >= NODE_MIN_MAJOR) {
            return PathBuf::from("node");
        }
        let arch = match std::env::consts::ARCH {
            "aarch64" => "arm64",
            _ => "x64",
        };
        let package = format!("node-linux-{arch}");
        let rel = format!("node_modules/{package}/bin/node");
        let dir = built_once(&format!("mcp-node-{NODE_VERSION}"), &rel, |building| {
            std::fs::create_dir_all(building).expect("create the npm directory");
            run_to_end(
                std::process::Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                    .arg(building)
                    .arg(format!("{package}@{NODE_VERSION}")),
                "npm install node-linux",
                "scripts/test installs nodejs and npm",
            );
        });
        dir.join(rel)
    })
    .clone()
}

/// Runs `cmd` to completion; panics with its output and `hint` if it fails.
fn run_to_end(cmd: &mut std::process::Command, what: &str, hint: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} ({hint})"));
    assert!(
        out.status.success(),
        "{what} failed ({hint}):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `target/<name>`, built by `build` when `target/<name>/<ready>` is missing. One test process
/// builds it (the one that creates the lock directory) in a directory aside, renamed into place
/// when done, so a concurrent test process never sees half of it; the others wait for it to
/// appear. A builder that fails removes the lock as it unwinds, so the next one tries at once; a
/// lock left by a process that died is taken over after the wait.
fn built_once(name: &str, ready: &str, build: impl FnOnce(&Path)) -> PathBuf {
    // target/<profile>/exai-daemon → target/<name>
    let target = bin_path("exai-daemon")
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    let dir = target.join(name);
    if dir.join(ready).exists() {
        return dir;
    }
    let lock = target.join(format!("{name}.lock"));
    let deadline = std::time::Instant::now() + BUILD_WAIT;
    loop {
        if dir.join(ready).exists() {
            return dir;
        }
        if std::fs::create_dir(&lock).is_ok() || std::time::Instant::now() >= deadline {
            let _held = LockDir(lock);
            let building = target.join(format!("{name}.building-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&building);
            build(&building);
            if std::fs::rename(&building, &dir).is_err() {
                // Another test process finished first: use its directory.
                let _ = std::fs::remove_dir_all(&building);
            }
            assert!(
                dir.join(ready).exists(),
                "{} was not created",
                dir.join(ready).display()
            );
            return dir;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A lock directory, removed when its builder is done, succeeded or not.
struct LockDir(PathBuf);

impl Drop for LockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// How long a test waits for another process to build a directory.
const BUILD_WAIT: Duration = Duration::from_secs(600);

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
