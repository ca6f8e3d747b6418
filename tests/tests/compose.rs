//! `docker-compose.yml` is valid and says what the deployment needs, checked with Debian's
//! `docker-compose` (`config` parses and interpolates without a Docker engine; scripts/test
//! installs it). The normalised YAML is turned into JSON by the PyYAML that docker-compose itself
//! runs on.
//!
//! Every test runs compose in a temporary project directory holding its own `.env`, with a
//! cleared environment: the developer's `.env` and shell never take part. Debian's
//! docker-compose (v1) lists the services of every profile in `config`, so one `config` shows
//! both stacks; the tests still name the profile they are about.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use exai_tests::bin_path;
use serde_json::{Value, json};

const TOKEN: &str = "compose-test-token-0123456789";

/// The EXAI services of each profile (the ones that run an EXAI binary other than exai-sim).
const REAL_SERVICES: [&str; 3] = ["daemon", "migrations", "worker"];
const SIM_SERVICES: [&str; 3] = ["sim-daemon", "sim-migrations", "sim-worker"];

/// What compose owns in every EXAI service, whatever `.env` says.
const COMPOSE_OWNED: [(&str, &str); 6] = [
    ("REDIS_URL", "redis://redis:6379"),
    ("REDIS_CLUSTER_NODES", ""),
    // The original daemon's name: it would put a password into REDIS_URL.
    ("REDIS_PASSWORD", ""),
    ("DATABASE_URL", "postgres://exai:exai@postgres:5432/exai"),
    ("EXAI_STAGING_DIR", "/var/lib/exai/staging"),
    ("EXAI_UPLOAD_ROOTS", "/var/lib/exai/uploads"),
];
/// What compose owns in the daemons only (the token comes from the shell or `.env`).
const DAEMON_OWNED: [(&str, &str); 3] = [
    ("EXAI_WS_HOST", "0.0.0.0"),
    ("EXAI_WS_PORT", "8079"),
    ("EXAI_WS_URL", "ws://127.0.0.1:8079"),
];
/// What compose owns in the workers only: the migrations service applies the migrations.
const WORKER_OWNED: [(&str, &str); 1] = [("EXAI_AUTO_MIGRATE", "false")];

/// The provider variables and their values under the `sim` profile.
const SIM_PROVIDERS: [(&str, &str); 7] = [
    ("EXAI_REQUIRE_REAL_PROVIDERS", "false"),
    ("KIMI_API_URL", "http://exai-sim:9000/v1"),
    ("KIMI_API_KEY", "sim-key"),
    ("GLM_API_URL", "http://exai-sim:9000/v1"),
    ("GLM_API_KEY", "sim-key"),
    ("SUPABASE_URL", "http://exai-sim:9000"),
    ("SUPABASE_SERVICE_ROLE_KEY", "sim-key"),
];

/// Settings pointing at the real providers, as a user's `.env` for production holds them.
const REAL_PROVIDER_ENV: &str = "\
EXAI_REQUIRE_REAL_PROVIDERS=true
KIMI_API_URL=https://api.moonshot.ai/v1
KIMI_API_KEY=sk-real-moonshot-key
GLM_API_URL=https://api.z.ai/api/paas/v4
GLM_API_KEY=real-glm-key
SUPABASE_URL=https://project.supabase.co
SUPABASE_SERVICE_ROLE_KEY=real-service-role-key
";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// A temporary compose project directory holding the test's `.env` (none when `env` is `None`);
/// removed on drop.
struct Project {
    dir: PathBuf,
}

impl Project {
    fn new(env: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!("exai-compose-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(env) = env {
            std::fs::write(dir.join(".env"), env).unwrap();
        }
        Self { dir }
    }

    /// Runs `docker-compose` on the repository's file with this directory as the project
    /// directory, in an environment holding only PATH and `shell`.
    fn compose(&self, args: &[&str], shell: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("--project-directory")
            .arg(&self.dir)
            .arg("-f")
            .arg(repo_root().join("docker-compose.yml"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(shell.iter().copied());
        cmd.output()
            .expect("docker-compose is not installed: run scripts/test, which installs it")
    }

    /// `docker-compose [extra…] config` as JSON, with `EXAI_WS_TOKEN` and `shell` in the
    /// environment.
    fn config(&self, extra: &[&str], shell: &[(&str, &str)]) -> Value {
        let mut args = extra.to_vec();
        args.push("config");
        let mut env = vec![("EXAI_WS_TOKEN", TOKEN)];
        env.extend_from_slice(shell);
        let out = self.compose(&args, &env);
        assert!(
            out.status.success(),
            "docker-compose config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        yaml_to_json(&out.stdout)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn yaml_to_json(yaml: &[u8]) -> Value {
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (docker-compose's own runtime)");
    py.stdin.take().unwrap().write_all(yaml).unwrap();
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

/// A service's environment as strings (compose writes every value as a string; null is "").
fn environment(config: &Value, service: &str) -> BTreeMap<String, String> {
    config["services"][service]["environment"]
        .as_object()
        .unwrap_or_else(|| panic!("{service} has no environment"))
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn profiles(config: &Value, service: &str) -> Value {
    config["services"][service]["profiles"].clone()
}

/// The variable names `.env.example` lists: `NAME=value` lines, and `# NAME=value` lines (a
/// variable without a default, shown commented out).
fn env_example_names() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(".env.example")).unwrap();
    names_in(&text)
}

fn names_in(env_text: &str) -> Vec<String> {
    let mut names: Vec<String> = env_text
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('='))
        .map(|(name, _)| name.trim().trim_start_matches("export ").trim().to_owned())
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    names.dedup();
    names
}

/// The value compose gives `name` in `service`, when compose owns it there.
fn owned_value(service: &str, name: &str) -> Option<&'static str> {
    let mut owned: Vec<(&str, &str)> = COMPOSE_OWNED.to_vec();
    if service.ends_with("daemon") {
        owned.extend(DAEMON_OWNED);
    }
    if service.ends_with("worker") {
        owned.extend(WORKER_OWNED);
    }
    if SIM_SERVICES.contains(&service) {
        owned.extend(SIM_PROVIDERS);
    } else {
        owned.push(("EXAI_REQUIRE_REAL_PROVIDERS", "true"));
    }
    owned.into_iter().find(|(n, _)| *n == name).map(|(_, v)| v)
}

#[test]
fn the_compose_file_validates_and_wires_the_stack() {
    let project = Project::new(Some(""));
    let cfg = project.config(&["--profile", "real", "--profile", "sim"], &[]);
    assert_eq!(
        services(&cfg),
        [
            "daemon",
            "exai-sim",
            "migrations",
            "postgres",
            "redis",
            "sim-daemon",
            "sim-migrations",
            "sim-worker",
            "worker"
        ]
    );
    for svc in ["redis", "postgres"] {
        assert!(profiles(&cfg, svc).is_null(), "{svc} runs in every profile");
    }
    for svc in REAL_SERVICES {
        assert_eq!(profiles(&cfg, svc), json!(["real"]), "{svc}");
    }
    for svc in SIM_SERVICES.iter().chain(&["exai-sim"]) {
        assert_eq!(profiles(&cfg, svc), json!(["sim"]), "{svc}");
    }

    let redis = cfg["services"]["redis"]["command"].to_string();
    for flag in [
        "\"--appendonly\",\"yes\"",
        "\"--appendfsync\",\"everysec\"",
        "\"--maxmemory-policy\",\"noeviction\"",
    ] {
        assert!(redis.contains(flag), "redis command lacks {flag}: {redis}");
    }

    let staging = |svc: &Value| {
        svc["volumes"]
            .as_array()
            .unwrap()
            .iter()
            // Compose v1 prints `source:target`, v2 an object.
            .any(|v| {
                v.as_str().is_some_and(|v| v.starts_with("staging:")) || v["source"] == "staging"
            })
    };
    for (prefix, migrations) in [("", "migrations"), ("sim-", "sim-migrations")] {
        let daemon = &cfg["services"][format!("{prefix}daemon")];
        assert_eq!(daemon["command"], json!(["exai-daemon"]));
        // Compose v1 prints the published port as a number, v2 as a string.
        let published = &daemon["ports"][0]["published"];
        assert!(
            published == 3010 || published == "3010",
            "published port {published}"
        );
        assert_eq!(daemon["ports"][0]["target"], 8079);
        assert_eq!(daemon["environment"]["EXAI_WS_TOKEN"], TOKEN);
        assert_eq!(
            daemon["depends_on"][migrations]["condition"],
            "service_completed_successfully"
        );

        let worker = &cfg["services"][format!("{prefix}worker")];
        assert_eq!(worker["command"], json!(["exai-worker", "run"]));
        assert!(
            worker["container_name"].is_null() && worker["ports"].is_null(),
            "a worker must be scalable (no fixed name, no host port)"
        );
        assert_eq!(
            worker["depends_on"][migrations]["condition"],
            "service_completed_successfully"
        );
        // Daemon and workers share the staging directory.
        assert!(staging(daemon) && staging(worker));

        let migrations = &cfg["services"][migrations];
        assert_eq!(migrations["command"], json!(["exai-worker", "migrate"]));
        assert!(migrations["build"].is_object());
        assert_eq!(migrations["restart"], "no");
    }
}

#[test]
fn the_profiles_never_cross_wires() {
    let project = Project::new(Some(""));
    let cfg = project.config(&["--profile", "real", "--profile", "sim"], &[]);
    // A service depends only on services of its own profile or of every profile.
    for svc in services(&cfg) {
        let own = profiles(&cfg, &svc);
        let Some(deps) = cfg["services"][&svc]["depends_on"].as_object() else {
            continue;
        };
        for dep in deps.keys() {
            let theirs = profiles(&cfg, dep);
            assert!(
                theirs.is_null() || theirs == own,
                "{svc} ({own}) depends on {dep} ({theirs})"
            );
        }
    }
    // Only the sim profile knows the emulator.
    for svc in services(&cfg) {
        if profiles(&cfg, &svc) == json!(["sim"]) {
            continue;
        }
        let text = cfg["services"][&svc].to_string();
        assert!(
            !text.contains("exai-sim") && !text.contains("sim-key"),
            "{svc} mentions the emulator: {text}"
        );
    }
}

#[test]
fn every_env_setting_reaches_the_daemon_and_the_worker() {
    let names = env_example_names();
    for named in [
        "KIMI_UPLOAD_TO_SUPABASE",
        "KIMI_SUPABASE_TIMEOUT",
        "KIMI_SEMAPHORE_TIMEOUT",
        "EXAI_WS_GLOBAL_MAX_INFLIGHT",
        "EXAI_WS_KIMI_MAX_INFLIGHT",
        "EXAI_WS_GLM_MAX_INFLIGHT",
        "GLM_API_KEY",
        "EXAI_CLEANUP_CRON",
        "EXAI_STORAGE_QUOTA_BYTES",
    ] {
        assert!(
            names.iter().any(|n| n == named),
            ".env.example lacks {named}"
        );
    }

    // Realistic values for the settings issue reports named, a marker for every other one, and
    // a variable .env.example does not list.
    let realistic: BTreeMap<&str, &str> = [
        ("KIMI_UPLOAD_TO_SUPABASE", "false"),
        ("KIMI_SUPABASE_TIMEOUT", "45"),
        ("KIMI_SEMAPHORE_TIMEOUT", "7"),
        ("EXAI_WS_GLOBAL_MAX_INFLIGHT", "48"),
        ("EXAI_WS_KIMI_MAX_INFLIGHT", "12"),
        ("EXAI_WS_GLM_MAX_INFLIGHT", "3"),
        ("GLM_API_KEY", "glm-key-from-env-file"),
        ("EXAI_CLEANUP_CRON", "0 30 */2 * * *"),
        ("EXAI_STORAGE_QUOTA_BYTES", "1073741824"),
        ("EXAI_WS_TOKEN", TOKEN),
    ]
    .into_iter()
    .collect();
    let mut written: BTreeMap<String, String> = names
        .iter()
        .map(|name| {
            let value = realistic
                .get(name.as_str())
                .map(|v| (*v).to_owned())
                .unwrap_or_else(|| format!("from-env-file-{}", name.to_lowercase()));
            (name.clone(), value)
        })
        .collect();
    written.insert("RUST_LOG".into(), "exai_worker=debug,info".into());
    let env: String = written.iter().map(|(k, v)| format!("{k}={v}\n")).collect();

    let project = Project::new(Some(&env));
    let cfg = project.config(&["--profile", "real", "--profile", "sim"], &[]);
    for svc in REAL_SERVICES.iter().chain(&SIM_SERVICES) {
        let got = environment(&cfg, svc);
        for (name, value) in &written {
            let expected = owned_value(svc, name).unwrap_or(value);
            assert_eq!(
                got.get(name).map(String::as_str),
                Some(expected),
                "{svc}: {name} (the env file says `{value}`)"
            );
        }
    }
}

#[test]
fn compose_owned_values_win_over_the_env_file() {
    let project = Project::new(Some(
        "REDIS_URL=redis://10.0.0.5:6379\n\
         REDIS_CLUSTER_NODES=redis://10.0.0.6:7000\n\
         REDIS_PASSWORD=original-daemon-password\n\
         DATABASE_URL=postgres://me@10.0.0.7:5432/other\n\
         EXAI_STAGING_DIR=./data/staging\n\
         EXAI_UPLOAD_ROOTS=/home/me\n\
         EXAI_WS_HOST=127.0.0.1\n\
         EXAI_WS_PORT=9999\n\
         EXAI_WS_URL=ws://127.0.0.1:9999\n\
         EXAI_AUTO_MIGRATE=true\n",
    ));
    let cfg = project.config(&["--profile", "real", "--profile", "sim"], &[]);
    for svc in REAL_SERVICES.iter().chain(&SIM_SERVICES) {
        let env = environment(&cfg, svc);
        let mut owned: Vec<(&str, &str)> = COMPOSE_OWNED.to_vec();
        if svc.ends_with("daemon") {
            owned.extend(DAEMON_OWNED);
        }
        if svc.ends_with("worker") {
            owned.extend(WORKER_OWNED);
        }
        for (name, value) in owned {
            assert_eq!(
                env.get(name).map(String::as_str),
                Some(value),
                "{svc}: {name}"
            );
        }
    }
}

#[test]
fn the_sim_profile_sends_every_provider_call_to_the_emulator() {
    let project = Project::new(Some(REAL_PROVIDER_ENV));
    // The shell names real providers too: neither reaches the simulated stack.
    let shell = [
        ("KIMI_API_KEY", "sk-shell-moonshot-key"),
        ("KIMI_API_URL", "https://api.moonshot.ai/v1"),
        ("SUPABASE_URL", "https://shell.supabase.co"),
    ];
    let cfg = project.config(&["--profile", "sim"], &shell);
    assert_eq!(
        cfg["services"]["exai-sim"]["command"],
        json!([
            "exai-sim", "--host", "0.0.0.0", "--port", "9000", "--key", "sim-key"
        ])
    );
    let sim_services: Vec<String> = services(&cfg)
        .into_iter()
        .filter(|s| profiles(&cfg, s) == json!(["sim"]) && s != "exai-sim")
        .collect();
    assert_eq!(sim_services, SIM_SERVICES);
    for svc in &sim_services {
        let env = environment(&cfg, svc);
        for (name, value) in SIM_PROVIDERS {
            assert_eq!(
                env.get(name).map(String::as_str),
                Some(value),
                "{svc}: {name}"
            );
        }
        let text = cfg["services"][svc].to_string();
        for real in ["moonshot.ai", "z.ai", "supabase.co", "real-", "sk-"] {
            assert!(!text.contains(real), "{svc} carries `{real}`: {text}");
        }
    }
}

#[test]
fn the_real_profile_requires_real_providers_and_has_no_emulator_defaults() {
    // Nothing set: the providers stay unset (the processes then refuse to start).
    let project = Project::new(Some(""));
    let cfg = project.config(&["--profile", "real"], &[]);
    for svc in REAL_SERVICES {
        let env = environment(&cfg, svc);
        assert_eq!(
            env.get("EXAI_REQUIRE_REAL_PROVIDERS").map(String::as_str),
            Some("true"),
            "{svc}"
        );
        for (name, _) in &SIM_PROVIDERS[1..] {
            assert_eq!(
                env.get(*name).map(String::as_str),
                Some(""),
                "{svc}: {name}"
            );
        }
    }

    // Keys in the env file reach every real service; the shell's win over the file's.
    let project = Project::new(Some(REAL_PROVIDER_ENV));
    let shell = [("KIMI_API_KEY", "sk-shell-moonshot-key")];
    let cfg = project.config(&["--profile", "real"], &shell);
    for svc in REAL_SERVICES {
        let env = environment(&cfg, svc);
        let get = |name: &str| env.get(name).map(String::as_str);
        assert_eq!(get("EXAI_REQUIRE_REAL_PROVIDERS"), Some("true"), "{svc}");
        assert_eq!(get("KIMI_API_KEY"), Some("sk-shell-moonshot-key"), "{svc}");
        assert_eq!(
            get("KIMI_API_URL"),
            Some("https://api.moonshot.ai/v1"),
            "{svc}"
        );
        assert_eq!(get("GLM_API_KEY"), Some("real-glm-key"), "{svc}");
        assert_eq!(
            get("SUPABASE_URL"),
            Some("https://project.supabase.co"),
            "{svc}"
        );
        assert_eq!(
            get("SUPABASE_SERVICE_ROLE_KEY"),
            Some("real-service-role-key"),
            "{svc}"
        );
    }
}

/// Runs `bin args…` on the host with exactly the environment compose gives `service` (and a
/// working directory without `.env`, as in the image), until it exits.
async fn run_as(cfg: &Value, service: &str, bin: &str, args: &[&str]) -> Output {
    let workdir = Project::new(None);
    let mut cmd = tokio::process::Command::new(bin_path(bin));
    cmd.args(args)
        .current_dir(&workdir.dir)
        .env_clear()
        .envs(environment(cfg, service))
        .kill_on_drop(true);
    // A refusal is immediate; the deadline only keeps a process that went on from hanging.
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{bin} with {service}'s environment did not exit"))
        .unwrap()
}

#[tokio::test]
async fn the_real_profile_refuses_to_start_without_real_keys() {
    // No key at all: the migrations service refuses (so nothing else starts), and so does the
    // daemon, each naming the variables.
    let project = Project::new(Some(""));
    let cfg = project.config(&["--profile", "real"], &[]);
    for (service, bin, args) in [
        ("migrations", "exai-worker", &["migrate"][..]),
        ("daemon", "exai-daemon", &[][..]),
    ] {
        let out = run_as(&cfg, service, bin, args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{service} started: {err}");
        for var in [
            "EXAI_REQUIRE_REAL_PROVIDERS",
            "KIMI_API_KEY",
            "SUPABASE_URL",
            "SUPABASE_SERVICE_ROLE_KEY",
        ] {
            assert!(err.contains(var), "{service} does not name {var}: {err}");
        }
    }

    // A .env written for the emulator: the real stack refuses instead of calling it.
    let project = Project::new(Some(
        "KIMI_API_URL=http://exai-sim:9000/v1\n\
         KIMI_API_KEY=sim-key\n\
         SUPABASE_URL=http://exai-sim:9000\n\
         SUPABASE_SERVICE_ROLE_KEY=sim-key\n",
    ));
    let cfg = project.config(&["--profile", "real"], &[]);
    let out = run_as(&cfg, "migrations", "exai-worker", &["migrate"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "migrations started: {err}");
    for var in [
        "KIMI_API_URL",
        "KIMI_API_KEY",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
    ] {
        assert!(err.contains(var), "migrations does not name {var}: {err}");
    }
}

#[test]
fn the_daemon_needs_a_token() {
    let project = Project::new(Some(""));
    let out = project.compose(&["config", "-q"], &[]);
    assert!(!out.status.success(), "config without EXAI_WS_TOKEN passed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EXAI_WS_TOKEN"), "{err}");
}

#[test]
fn a_missing_env_file_is_named() {
    let project = Project::new(None);
    // With a profile, so that Compose v2 (which reads the env files of active services only)
    // reads it too.
    let out = project.compose(
        &["--profile", "sim", "config", "-q"],
        &[("EXAI_WS_TOKEN", TOKEN)],
    );
    assert!(!out.status.success(), "config without a .env passed");
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = project.dir.join(".env");
    assert!(err.contains(&*expected.to_string_lossy()), "{err}");
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
    // The image carries no provider setting: the emulator is the sim profile's alone.
    for needle in ["KIMI_", "GLM_", "SUPABASE_", "sim-key"] {
        assert!(!dockerfile.contains(needle), "the Dockerfile sets {needle}");
    }
}

#[test]
fn the_env_example_parser_reads_names_only() {
    let names = names_in(
        "# Prose: a=b, and redis://:PASSWORD@host (or ?pass=PASSWORD).\n\
         # KIMI_API_KEY=\n\
         A_B=1\n\
         \n\
         export C=2\n\
         lower=3\n\
         D=\n",
    );
    assert_eq!(names, ["KIMI_API_KEY", "A_B", "C", "D"]);
}
