//! `docker-compose.yml` is valid and says what the deployment needs, checked with Debian's
//! `docker-compose` (`config` parses and interpolates without a Docker engine; scripts/test
//! installs it). The normalised YAML is turned into JSON by the PyYAML that docker-compose itself
//! runs on.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const TOKEN: &str = "compose-test-token-0123456789";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn compose(args: &[&str], token: Option<&str>) -> Output {
    let root = repo_root();
    let mut cmd = Command::new("docker-compose");
    cmd.arg("--project-directory")
        .arg(&root)
        .arg("-f")
        .arg(root.join("docker-compose.yml"))
        .args(args)
        // Only what the test sets: no .env of the developer, no variables of the shell.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    if let Some(token) = token {
        cmd.env("EXAI_WS_TOKEN", token);
    }
    cmd.output()
        .expect("docker-compose is not installed: run scripts/test, which installs it")
}

/// `docker-compose config` of the file (with `extra` flags before `config`) as JSON.
fn config(extra: &[&str]) -> Value {
    let mut args = extra.to_vec();
    args.push("config");
    let out = compose(&args, Some(TOKEN));
    assert!(
        out.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (docker-compose's own runtime)");
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let converted = py.wait_with_output().unwrap();
    assert!(
        converted.status.success(),
        "PyYAML could not read the config"
    );
    serde_json::from_slice(&converted.stdout).unwrap()
}

fn services(config: &Value) -> Vec<String> {
    let mut names: Vec<String> = config["services"]
        .as_object()
        .expect("services")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[test]
fn the_compose_file_validates_and_wires_the_stack() {
    let cfg = config(&[]);
    assert_eq!(
        services(&cfg),
        [
            "daemon",
            "exai-sim",
            "migrations",
            "postgres",
            "redis",
            "worker"
        ]
    );
    assert_eq!(
        cfg["services"]["exai-sim"]["profiles"],
        serde_json::json!(["sim"]),
        "exai-sim only runs in its profile"
    );

    let redis = cfg["services"]["redis"]["command"].to_string();
    for flag in [
        "\"--appendonly\",\"yes\"",
        "\"--appendfsync\",\"everysec\"",
        "\"--maxmemory-policy\",\"noeviction\"",
    ] {
        assert!(redis.contains(flag), "redis command lacks {flag}: {redis}");
    }

    let daemon = &cfg["services"]["daemon"];
    assert_eq!(daemon["ports"][0]["published"], 3010);
    assert_eq!(daemon["ports"][0]["target"], 8079);
    assert_eq!(daemon["environment"]["EXAI_WS_TOKEN"], TOKEN);
    assert_eq!(daemon["environment"]["EXAI_WS_HOST"], "0.0.0.0");
    assert_eq!(
        daemon["depends_on"]["migrations"]["condition"],
        "service_completed_successfully"
    );

    let worker = &cfg["services"]["worker"];
    assert_eq!(worker["command"], serde_json::json!(["exai-worker", "run"]));
    assert!(
        worker["container_name"].is_null() && worker["ports"].is_null(),
        "a worker must be scalable (no fixed name, no host port)"
    );
    // Daemon and workers share the staging directory.
    let staging = |svc: &Value| {
        svc["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.starts_with("staging:")))
    };
    assert!(staging(daemon) && staging(worker));

    assert_eq!(
        cfg["services"]["migrations"]["command"],
        serde_json::json!(["exai-worker", "migrate"])
    );
    assert!(cfg["services"]["migrations"]["build"].is_object());
}

#[test]
fn the_sim_profile_points_the_stack_at_the_emulator() {
    let cfg = config(&["--profile", "sim"]);
    assert_eq!(
        cfg["services"]["exai-sim"]["command"],
        serde_json::json!([
            "exai-sim", "--host", "0.0.0.0", "--port", "9000", "--key", "sim-key"
        ])
    );
    let worker_env = &cfg["services"]["worker"]["environment"];
    assert_eq!(worker_env["KIMI_API_URL"], "http://exai-sim:9000/v1");
    assert_eq!(worker_env["SUPABASE_URL"], "http://exai-sim:9000");
}

#[test]
fn the_daemon_needs_a_token() {
    let out = compose(&["config", "-q"], None);
    assert!(!out.status.success(), "config without EXAI_WS_TOKEN passed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EXAI_WS_TOKEN"), "{err}");
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_unprivileged() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let stages = dockerfile
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .count();
    assert!(stages >= 2, "expected a build and a runtime stage");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER line");
    assert!(!user.starts_with("root") && !user.starts_with('0'));
    for bin in ["exai-daemon", "exai-worker", "exai-sim"] {
        assert!(dockerfile.contains(bin), "the image lacks {bin}");
    }
}
