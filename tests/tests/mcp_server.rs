//! The daemon as an MCP server (`/mcp`, Streamable HTTP) and `exai-mcp` (stdio), driven by real
//! peers: the official MCP Python SDK's clients (`tests/mcp/*.py`, in a virtual environment the
//! harness creates) against real daemon and worker processes.
//!
//! - the SDK's Streamable HTTP client lists the tools (annotations, output schema), calls
//!   `test_echo` with a progress callback (progress strictly increasing), gets a refused
//!   argument as an `isError` result and an unknown tool as a JSON-RPC error, and runs calls at
//!   once;
//! - a cancelled call (`notifications/cancelled`) cancels its job;
//! - one session served by two daemons: opened at one, used at the other (restored from
//!   Redis), and a stream dropped by a killed daemon resumed at the other with `Last-Event-ID`,
//!   the job run once;
//! - a wrong or missing token gets 401 with `WWW-Authenticate: Bearer`, a foreign `Origin` 403;
//! - the stateless 2026-07-28 revision on the same path, pinned and in the SDK's `auto` mode;
//! - `exai-mcp` under the SDK's stdio client: list, call with progress, cancel;
//! - the session limit (503), the body limit (413) and DELETE ending a session, with plain HTTP.

use exai_shared::queue::{JobState, TOOL_CALLS};
use exai_tests::daemon::TOKEN;
use exai_tests::mcp::{self, Driver};
use exai_tests::{TestStack, bin_path};
use serde_json::{Value, json};

/// The `/mcp` URL of a daemon at `addr`.
fn mcp_url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}/mcp")
}

/// A stack with a daemon process and one worker.
async fn stack(name: &str, env: &[(&str, &str)]) -> TestStack {
    TestStack::builder(name)
        .envs(env)
        .daemon()
        .workers(1)
        .start()
        .await
}

#[tokio::test]
async fn the_sdk_lists_and_calls_tools_with_progress_over_http() {
    let stack = stack("mcp_http", &[]).await;
    let url = mcp_url(stack.daemon().addr);
    let steps = mcp::run("http_calls.py", &[&url, TOKEN]).await;

    assert_eq!(steps["initialize"]["protocol"], "2025-11-25");
    let list = &steps["list"];
    let names: Vec<&str> = list["names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: Vec<&str> = exai_shared::tools::all().iter().map(|t| t.name).collect();
    assert_eq!(names, expected, "tools/list is the WebSocket's catalogue");
    assert_eq!(
        list["echo_annotations"],
        json!({"readOnlyHint": true, "destructiveHint": false, "idempotentHint": true, "openWorldHint": false})
    );
    assert_eq!(list["echo_output_schema"]["type"], "object");

    let call = &steps["call"];
    assert_eq!(call["is_error"], false);
    assert_eq!(
        call["structured"],
        json!({"text": "hello", "delay_ms": 1200})
    );
    let job_id = call["job_id"].as_str().expect("the result names its job");
    let job = stack.queue(TOOL_CALLS).job(job_id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    let progress: Vec<f64> = call["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert!(
        progress.len() >= 3,
        "queued, started and heartbeats: {progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[1] > w[0]),
        "progress increases: {progress:?}"
    );
    assert!(
        call["progress"][0]["message"]
            .as_str()
            .unwrap()
            .contains(job_id)
    );

    let invalid = &steps["invalid"];
    assert_eq!(invalid["is_error"], true, "{invalid}");
    assert!(
        invalid["text"]
            .as_str()
            .unwrap()
            .contains("VALIDATION_ERROR")
    );
    assert_eq!(steps["unknown"]["code"], -32602, "{}", steps["unknown"]);

    let texts = steps["concurrent"]["texts"].as_array().unwrap();
    for (i, text) in texts.iter().enumerate() {
        let echoed: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
        assert_eq!(echoed["i"], i);
    }
}

#[tokio::test]
async fn a_cancelled_call_cancels_its_job() {
    let stack = stack("mcp_cancel", &[]).await;
    let url = mcp_url(stack.daemon().addr);
    let steps = mcp::run("cancel.py", &[&url, TOKEN]).await;
    let job_id = steps["cancelled"]["job_id"].as_str().unwrap();
    assert_eq!(steps["cancelled"]["finished"], false);
    assert!(
        stack.wait_state(job_id, JobState::Cancelled).await,
        "the job of a cancelled MCP call is cancelled: {:?}",
        stack.job(job_id).await.map(|j| j.state)
    );
    assert_eq!(steps["after"]["is_error"], false);
}

#[tokio::test]
async fn a_session_is_served_by_a_second_daemon_and_a_dropped_stream_resumes_there() {
    let mut stack = stack("mcp_fleet", &[]).await;
    let b = stack.spawn_daemon().await;
    let url_a = mcp_url(stack.daemon().addr);
    let url_b = mcp_url(b.addr);
    let mut driver = Driver::start("two_daemons.py", &[&url_a, &url_b, TOKEN]);

    let at_a = driver.step("at_a").await;
    assert_eq!(at_a["is_error"], false, "{at_a}");
    let at_b = driver.step("at_b").await;
    assert_eq!(
        at_b["is_error"], false,
        "the session opened at A is served by B: {at_b}"
    );

    driver.step("kill_a").await;
    let a = stack.daemon_mut();
    a.child.0.kill().await.expect("kill daemon A");

    let resumed = driver.step("resumed").await;
    assert_eq!(resumed["is_error"], false, "{resumed}");
    let echoed: Value = serde_json::from_str(resumed["text"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["at"], "resumed");
    let job_id = resumed["job_id"].as_str().unwrap();
    let job = stack.job(job_id).await.expect("the job");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempts, 1, "resuming ran nothing again");
    driver.finish().await;
    drop(b);
}

#[tokio::test]
async fn a_wrong_token_gets_401_and_a_foreign_origin_403() {
    let stack = stack(
        "mcp_refusals",
        &[("EXAI_WS_ALLOWED_ORIGINS", "http://app.example:3000")],
    )
    .await;
    let url = mcp_url(stack.daemon().addr);
    let steps = mcp::run("refusals.py", &[&url, TOKEN]).await;
    assert_eq!(steps["bad_token"]["status"], 401);
    assert_eq!(steps["bad_token"]["challenge"], "Bearer");
    assert_eq!(steps["no_token"]["status"], 401);
    assert_eq!(steps["foreign_origin"]["status"], 403);
    assert_eq!(
        steps["sdk"],
        json!({"step": "sdk", "bad_token_fails": true, "foreign_origin_fails": true, "good_works": true})
    );

    // The listed origin passes.
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}});
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("origin", "http://app.example:3000")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("mcp-session-id"));
}

#[tokio::test]
async fn the_stateless_revision_is_served_on_the_same_path() {
    let stack = stack("mcp_stateless", &[]).await;
    let url = mcp_url(stack.daemon().addr);
    // Pinned to 2026-07-28, and the SDK's default `auto` (server/discover, then the newest
    // revision both know).
    for mode in ["2026-07-28", "auto"] {
        let steps = mcp::run("stateless.py", &[&url, TOKEN, mode]).await;
        let s = &steps["stateless"];
        assert_eq!(s["mode"], mode);
        assert_eq!(s["is_error"], false, "{s}");
        assert_eq!(s["text"], r#"{"stateless":true}"#);
        assert!(s["names"].as_array().unwrap().contains(&json!("test_echo")));
    }
}

#[tokio::test]
async fn exai_mcp_bridges_a_stdio_client_to_the_daemon() {
    let stack = stack("mcp_stdio", &[]).await;
    let url = mcp_url(stack.daemon().addr);
    let binary = bin_path("exai-mcp");
    let steps = mcp::run("stdio_bridge.py", &[binary.to_str().unwrap(), &url, TOKEN]).await;
    assert_eq!(steps["list"]["server"], "exai-mcp");
    assert!(
        steps["list"]["names"]
            .as_array()
            .unwrap()
            .contains(&json!("test_echo"))
    );
    let call = &steps["call"];
    assert_eq!(call["is_error"], false, "{call}");
    assert_eq!(call["structured"], json!({"via": "stdio", "delay_ms": 800}));
    let progress: Vec<f64> = call["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert!(
        !progress.is_empty() && progress.windows(2).all(|w| w[1] > w[0]),
        "{progress:?}"
    );
    let job_id = steps["cancelled"]["job_id"].as_str().unwrap();
    assert!(
        stack.wait_state(job_id, JobState::Cancelled).await,
        "a cancel through exai-mcp cancels the job"
    );
}

/// An `initialize` request body.
fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}})
}

#[tokio::test]
async fn sessions_and_bodies_are_bounded() {
    let stack = stack(
        "mcp_bounds",
        &[
            ("EXAI_MCP_MAX_SESSIONS", "1"),
            ("EXAI_MCP_MAX_BODY_BYTES", "4096"),
        ],
    )
    .await;
    let url = mcp_url(stack.daemon().addr);
    let http = reqwest::Client::new();
    let post = |body: String| {
        http.post(&url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = post(initialize().to_string()).await.unwrap();
    assert_eq!(first.status(), 200);
    let session = first.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let second = post(initialize().to_string()).await.unwrap();
    assert_eq!(second.status(), 503, "one session is the limit");
    assert!(second.headers().contains_key("retry-after"));

    // The session in Redis, named by a digest (not by the id itself).
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:mcp:session:*", stack.prefix))
        .query_async(&mut stack.conn.clone())
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains(&session));
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut stack.conn.clone())
        .await
        .unwrap();
    assert!(ttl > 0, "the record expires");

    let big = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "test_echo", "arguments": {"pad": "x".repeat(8192)}}});
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(big.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // Without the session header a request that is not initialize is refused (400).
    let orphan = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25")
        .body(orphan.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // DELETE ends the session: 200, its record gone, its id unknown (404).
    let response = http
        .delete(&url)
        .bearer_auth(TOKEN)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:mcp:session:*", stack.prefix))
        .query_async(&mut stack.conn.clone())
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(orphan.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}
