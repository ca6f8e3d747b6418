//! Upstream MCP servers as tool providers (`EXAI_MCP_SERVERS`), against real peers: the official
//! reference server `@modelcontextprotocol/server-everything` (npm, run with node) over stdio and
//! over Streamable HTTP, and `mcp-fixture` (our rmcp server) for the faults the reference server
//! lacks, with real daemon and worker processes.
//!
//! - server-everything's tools listed under `everything__`, called
//!   through the WebSocket and through `/mcp`: text, structured content, daemon-side argument
//!   checks, progress relayed, a cancel forwarded as `notifications/cancelled` (read from what the
//!   worker wrote to the server's stdin), the child's environment free of the worker's secrets,
//!   the per-server semaphore;
//! - over Streamable HTTP, and after the server restarts (its sessions forgotten);
//! - a tool's own failure (`isError`) reported as the call's failure, not retried;
//! - an upstream killed mid-call: an idempotent tool runs again, one with side effects ends
//!   `INTERRUPTED`, run once;
//! - a worker killed mid-call: the next worker re-runs the idempotent call and interrupts the
//!   other (the sent mark).

use std::path::{Path, PathBuf};
use std::time::Duration;

use exai_tests::daemon::{Client, TOKEN, result_text};
use exai_tests::{ChildGuard, TestStack, bin_path, mcp, send_signal, wait_until};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

/// How long a catalogue may take to show a server's tools (start, initialize, list, publish).
const LISTED_WITHIN: Duration = Duration::from_secs(60);

/// A scratch directory of the test's own.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("exai-{test}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// Writes the servers file `servers` into `dir`.
fn servers_file(dir: &Path, servers: Value) -> String {
    let path = dir.join("mcp-servers.json");
    std::fs::write(&path, servers.to_string()).expect("write the servers file");
    path.display().to_string()
}

/// A stack with a daemon and one worker reading `servers` (plus `env`).
async fn stack(test: &str, servers: &str, env: &[(&str, &str)]) -> TestStack {
    let mut all = vec![
        ("EXAI_MCP_SERVERS", servers),
        ("EXAI_WS_PROGRESS_INTERVAL_SECS", "1"),
    ];
    all.extend_from_slice(env);
    TestStack::builder(test)
        .envs(&all)
        .daemon()
        .workers(1)
        .start()
        .await
}

/// The tools the daemon lists, once `tool` is among them (polled, as the catalogue is).
async fn listed_with(c: &mut Client, tool: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + LISTED_WITHIN;
    for n in 0.. {
        let rid = format!("list-{n}");
        c.send(json!({"op": "list_tools", "request_id": rid})).await;
        let (res, _) = c.until("list_tools_res", &rid).await;
        let tools = res["tools"].as_array().cloned().unwrap_or_default();
        if tools.iter().any(|t| t["name"] == tool) {
            return tools;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{tool} was not listed within {LISTED_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// The progress notes of the frames before a call's answer.
fn progress_notes(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["op"] == "progress")
        .filter_map(|f| f["message"].as_str().map(str::to_owned))
        .collect()
}

/// The lines of `path` that start with `prefix` (none while it does not exist).
fn lines_with(path: &Path, prefix: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn the_reference_servers_tools_run_through_the_queue_over_stdio() {
    let dir = scratch("mcp-up-stdio");
    let stdin_log = dir.join("stdin.jsonl");
    // What the worker writes to the server is kept, to check what it sends (a cancellation).
    let command = format!(
        "tee -a '{}' | exec '{}' '{}' stdio",
        stdin_log.display(),
        mcp::node().display(),
        mcp::everything().display()
    );
    let servers = servers_file(
        &dir,
        json!({"mcpServers": {"everything": {
            "command": "sh", "args": ["-c", command],
            "env": {"GREETING": "${EXAI_TEST_GREETING}"}
        }}}),
    );
    let stack = stack(
        "mcp-up-stdio",
        &servers,
        &[
            ("EXAI_TEST_GREETING", "hello-from-the-servers-file"),
            ("KIMI_API_KEY", "sk-worker-secret-not-for-upstreams"),
            ("EXAI_MCP_EVERYTHING_MAX_INFLIGHT", "3"),
        ],
    )
    .await;
    let (mut c, session) = stack.client(None).await;

    let tools = listed_with(&mut c, "everything__echo").await;
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    for builtin in exai_shared::tools::all() {
        assert!(names.contains(&builtin.name), "built-in tools stay listed");
    }
    for tool in ["everything__get-sum", "everything__get-structured-content"] {
        assert!(names.contains(&tool), "{tool} in {names:?}");
    }
    // A tool that only runs as an MCP task (rmcp's listing drops `execution`): listed, and a
    // plain call ends with the server's refusal, not with a hang.
    let (res, _) = c
        .call(
            "task",
            "everything__simulate-research-query",
            json!({"topic": "x"}),
        )
        .await;
    assert_eq!(res["error"]["code"], "TOOL_EXECUTION_ERROR", "{res}");
    let echo = tools
        .iter()
        .find(|t| t["name"] == "everything__echo")
        .unwrap();
    assert_eq!(echo["annotations"]["idempotentHint"], true);
    assert_eq!(echo["inputSchema"]["type"], "object");

    let (res, _) = c
        .call("e1", "everything__echo", json!({"message": "hi"}))
        .await;
    assert_eq!(result_text(&res), "Echo: hi");
    let (res, _) = c
        .call("s1", "everything__get-sum", json!({"a": 2, "b": 3}))
        .await;
    assert_eq!(result_text(&res), "The sum of 2 and 3 is 5.");
    // The daemon checks the arguments against the upstream's schema before anything is queued.
    let (res, _) = c
        .call("s2", "everything__get-sum", json!({"a": "two", "b": 3}))
        .await;
    assert_eq!(res["error"]["code"], "VALIDATION_ERROR", "{res}");
    let refused = exai_shared::protocol::call_job_id(&session, "s2");
    assert!(stack.job(&refused).await.is_none(), "nothing was enqueued");
    let (res, _) = c
        .call(
            "sc",
            "everything__get-structured-content",
            json!({"location": "Chicago"}),
        )
        .await;
    assert!(res.get("error").is_none(), "{res}");
    assert!(
        res["structuredContent"]["temperature"].is_number(),
        "structuredContent passes through: {res}"
    );
    // The child's environment: what a shell needs and the entry's own `env`, never the worker's.
    let (res, _) = c.call("env", "everything__get-env", json!({})).await;
    let env = result_text(&res);
    assert!(env.contains("hello-from-the-servers-file"), "{env}");
    assert!(
        !env.contains("sk-worker-secret"),
        "the worker's secrets stay out: {env}"
    );
    assert!(!env.contains("EXAI_REDIS_PREFIX"), "{env}");

    // Progress of the long-running operation reaches the client.
    let (res, frames) = c
        .call(
            "long",
            "everything__trigger-long-running-operation",
            json!({"duration": 2, "steps": 4}),
        )
        .await;
    assert!(res.get("error").is_none(), "{res}");
    let notes = progress_notes(&frames);
    assert!(
        notes.iter().any(|n| n.contains("/4")),
        "the server's progress is relayed: {notes:?}"
    );

    // A cancel reaches the server as notifications/cancelled; the client's call ends cancelled.
    c.send(json!({"op": "call_tool", "request_id": "cx", "name": "everything__trigger-long-running-operation",
                  "arguments": {"duration": 120, "steps": 120}}))
        .await;
    loop {
        let f = c.recv().await;
        if f["op"] == "progress"
            && f["request_id"] == "cx"
            && f["message"].as_str().is_some_and(|m| m.contains("/120"))
        {
            break;
        }
    }
    c.send(json!({"op": "cancel", "request_id": "cx"})).await;
    let (res, _) = c.until("call_tool_res", "cx").await;
    assert_eq!(res["error"]["code"], "CANCELLED", "{res}");
    let forwarded = wait_until(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&stdin_log).unwrap_or_default();
        async move { log.contains("notifications/cancelled") }
    })
    .await;
    assert!(forwarded, "the worker sent notifications/cancelled");

    // The server's semaphore, with its limit from EXAI_MCP_EVERYTHING_MAX_INFLIGHT.
    let out = stack.worker_cli(&["sem", "--json"], &[]).await;
    let report: Value = serde_json::from_str(&out.stdout).expect("sem --json");
    assert_eq!(
        report["semaphores"]["mcp.everything"]["limit"], 3,
        "{report}"
    );

    // /mcp lists and calls the same tools, structured content included.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let url = format!("http://{}/mcp", stack.daemon().addr);
    let client = ()
        .serve(StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(TOKEN),
        ))
        .await
        .expect("an MCP session with the daemon");
    let listed = client.list_all_tools().await.expect("tools/list");
    assert!(listed.iter().any(|t| t.name == "everything__get-sum"));
    let mut params = CallToolRequestParams::new("everything__get-structured-content");
    params.arguments = Some(json!({"location": "New York"}).as_object().unwrap().clone());
    let result = client.call_tool(params).await.expect("tools/call");
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let structured = result
        .structured_content
        .expect("structuredContent over /mcp");
    assert!(structured["humidity"].is_number(), "{structured}");
    let _ = client.cancel().await;
    stack.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A servers file with `mcp-fixture` as `fixture`, its log and pid file in `dir`.
fn fixture_servers(dir: &Path) -> (String, PathBuf, PathBuf) {
    let log = dir.join("calls.log");
    let pids = dir.join("pids");
    let servers = servers_file(
        dir,
        json!({"mcpServers": {"fixture": {
            "command": bin_path("mcp-fixture").display().to_string(),
            "env": {"FIXTURE_LOG": log.display().to_string(),
                    "FIXTURE_PID_FILE": pids.display().to_string()}
        }}}),
    );
    (servers, log, pids)
}

/// The pid of the fixture process that started last.
fn last_pid(pids: &Path) -> u32 {
    std::fs::read_to_string(pids)
        .expect("the fixture's pid file")
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid")
}

/// Waits until `log` has `n` lines starting with `prefix`.
async fn logged(log: &Path, prefix: &str, n: usize) {
    let seen = wait_until(Duration::from_secs(30), || {
        let count = lines_with(log, prefix);
        async move { count >= n }
    })
    .await;
    assert!(seen, "{n} × `{prefix}` in the fixture's log");
}

#[tokio::test]
async fn an_upstream_killed_mid_call_reruns_idempotent_tools_and_interrupts_the_others() {
    let dir = scratch("mcp-up-kill");
    let (servers, log, pids) = fixture_servers(&dir);
    let stack = stack("mcp-up-kill", &servers, &[]).await;
    let (mut c, session) = stack.client(None).await;
    listed_with(&mut c, "fixture__slow-write").await;

    // A tool that reports a failure (`isError`): the call fails for the client; the job
    // completed (the tool ran), so nothing retries it.
    let (res, _) = c.call("fail", "fixture__fail", json!({})).await;
    assert_eq!(res["error"]["code"], "TOOL_EXECUTION_ERROR", "{res}");
    assert!(
        res["error"]["message"]
            .as_str()
            .unwrap()
            .contains("it failed"),
        "{res}"
    );
    let job = stack
        .job(&exai_shared::protocol::call_job_id(&session, "fail"))
        .await
        .expect("the job");
    assert_eq!(job.state, exai_shared::queue::JobState::Completed);

    // Read-only: the server dies mid-call, the call runs again on the restarted server.
    c.send(
        json!({"op": "call_tool", "request_id": "read", "name": "fixture__slow-read",
                  "arguments": {"ms": 60000, "once": true}}),
    )
    .await;
    logged(&log, "slow-read ", 1).await;
    send_signal(last_pid(&pids), "KILL");
    let (res, _) = c.until("call_tool_res", "read").await;
    assert_eq!(result_text(&res), "slow-read done");
    assert_eq!(lines_with(&log, "slow-read "), 2, "run again, once");

    // With side effects: the server dies mid-call, the call is not run again.
    c.send(
        json!({"op": "call_tool", "request_id": "write", "name": "fixture__slow-write",
                  "arguments": {"ms": 60000, "once": true}}),
    )
    .await;
    logged(&log, "slow-write ", 1).await;
    send_signal(last_pid(&pids), "KILL");
    let (res, _) = c.until("call_tool_res", "write").await;
    assert_eq!(res["error"]["code"], "INTERRUPTED", "{res}");
    assert!(
        res["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not idempotent"),
        "{res}"
    );
    assert_eq!(lines_with(&log, "slow-write "), 1, "never run twice");
    stack.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_worker_killed_mid_call_reruns_idempotent_tools_and_interrupts_the_others() {
    let dir = scratch("mcp-up-worker");
    let (servers, log, _pids) = fixture_servers(&dir);
    // No standing worker: this test's own, killed mid-call, then another.
    let mut stack = TestStack::builder("mcp-up-worker")
        .envs(&[
            ("EXAI_MCP_SERVERS", servers.as_str()),
            ("EXAI_WS_PROGRESS_INTERVAL_SECS", "1"),
            ("EXAI_JOB_LEASE_MS", "1500"),
        ])
        .daemon()
        .start()
        .await;
    let first: ChildGuard = stack.spawn_worker(&["--queues", "tool_calls", "--concurrency", "4"]);
    let (mut c, _) = stack.client(None).await;
    listed_with(&mut c, "fixture__slow-write").await;
    for (rid, tool) in [
        ("read", "fixture__slow-read"),
        ("write", "fixture__slow-write"),
    ] {
        c.send(json!({"op": "call_tool", "request_id": rid, "name": tool,
                      "arguments": {"ms": 60000, "once": true}}))
            .await;
    }
    logged(&log, "slow-read ", 1).await;
    logged(&log, "slow-write ", 1).await;
    first.kill_and_wait().await;
    stack.add_worker();

    let (mut read, mut write) = (None, None);
    while read.is_none() || write.is_none() {
        let f = c.recv().await;
        if f["op"] != "call_tool_res" {
            continue;
        }
        match f["request_id"].as_str() {
            Some("read") => read = Some(f),
            Some("write") => write = Some(f),
            _ => {}
        }
    }
    let (read, write) = (read.unwrap(), write.unwrap());
    assert_eq!(result_text(&read), "slow-read done");
    assert_eq!(
        lines_with(&log, "slow-read "),
        2,
        "the idempotent call ran again"
    );
    assert_eq!(write["error"]["code"], "INTERRUPTED", "{write}");
    assert_eq!(
        lines_with(&log, "slow-write "),
        1,
        "the other never ran twice"
    );
    stack.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// server-everything over Streamable HTTP on `port`, once it accepts connections.
async fn everything_http(port: u16) -> ChildGuard {
    let child = tokio::process::Command::new(mcp::node())
        .arg(mcp::everything())
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start server-everything");
    let up = wait_until(Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "server-everything listens on {port}");
    ChildGuard(child)
}

#[tokio::test]
async fn an_http_upstream_is_called_and_reconnected_after_it_restarts() {
    let dir = scratch("mcp-up-http");
    let port = free_port();
    let server = everything_http(port).await;
    let servers = servers_file(
        &dir,
        json!({"servers": {"remote": {"type": "http", "url": format!("http://127.0.0.1:{port}/mcp"),
                                       "headers": {"X-Test": "1"}}}}),
    );
    let stack = stack("mcp-up-http", &servers, &[]).await;
    let (mut c, _) = stack.client(None).await;
    listed_with(&mut c, "remote__echo").await;
    let (res, _) = c
        .call("e1", "remote__echo", json!({"message": "one"}))
        .await;
    assert_eq!(result_text(&res), "Echo: one");

    // A restarted server has forgotten the session: the worker opens a new one and the call
    // (idempotent) goes through.
    server.kill_and_wait().await;
    let _server = everything_http(port).await;
    let (res, _) = c
        .call("e2", "remote__echo", json!({"message": "two"}))
        .await;
    assert_eq!(result_text(&res), "Echo: two");
    stack.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}
