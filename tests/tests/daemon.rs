//! The WebSocket daemon end to end: a real `exai-daemon`, real `exai-worker` processes and
//! Redis, each test in its own key prefix. What docs/protocol.md promises, checked on the wire.
//! The checks that are pure protocol (the hello, bad requests, frame, connection and call
//! limits, timeouts) run against a daemon served in the test's process ([`TestStack`] with a local daemon: the
//! same connection code over an in-memory pipe, and the real Redis); the ones about processes
//! (workers, restarts, signals, the HTTP endpoints) against the binaries.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use exai_shared::jobs::{ToolCallJob, ToolResult};
use exai_shared::protocol::call_job_id;
use exai_shared::queue::{JobState, NewJob, TOOL_CALLS};
use exai_tests::daemon::{Client, FRAME_WAIT, Seen, TOKEN, echoed};
use exai_tests::{TestStack, send_signal, wait_until};
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

// ----- handshake ----------------------------------------------------------------------------

#[tokio::test]
async fn hello_failures_close_with_the_protocols_codes() {
    let stack = TestStack::with_local_daemon("d-hello", &[]).await;

    // Wrong token: hello_ack unauthorized (token_wrong), then 4003.
    let mut c = stack.connect().await;
    let ack = c
        .hello(json!({"op": "hello", "token": "wrong-token-0123456789"}))
        .await;
    assert_eq!(
        ack,
        json!({"op": "hello_ack", "ok": false, "error": "unauthorized", "detail": "token_wrong"})
    );
    assert_eq!(c.closed().await.0, 4003);

    // No token at all, or an empty one: the same code, detail token_missing.
    for hello in [json!({"op": "hello"}), json!({"op": "hello", "token": " "})] {
        let mut c = stack.connect().await;
        let ack = c.hello(hello).await;
        assert_eq!(
            ack,
            json!({"op": "hello_ack", "ok": false, "error": "unauthorized", "detail": "token_missing"})
        );
        assert_eq!(c.closed().await.0, 4003);
    }

    // Not JSON: close 4000 without a frame.
    let mut c = stack.connect().await;
    c.send_text("hello?".into()).await;
    assert_eq!(
        c.next().await,
        Err(Seen::Close(4000, "invalid message".into()))
    );

    // JSON but not a hello: missing_hello, then 4001.
    let mut c = stack.connect().await;
    let ack = c.hello(json!({"op": "list_tools", "token": TOKEN})).await;
    assert_eq!(
        ack,
        json!({"op": "hello_ack", "ok": false, "error": "missing_hello"})
    );
    assert_eq!(c.closed().await.0, 4001);

    // The shim's hello, extra fields and all: accepted, a session id is generated.
    let mut c = stack.connect().await;
    let ack = c
        .hello(
            json!({"op": "hello", "protocolVersion": "2024-11-05", "capabilities": {},
                      "clientInfo": {"name": "exai-mcp-shim", "version": "1.0.0"}, "token": TOKEN}),
        )
        .await;
    assert_eq!(ack["ok"], true);
    assert_eq!(ack["session_id"].as_str().unwrap().len(), 32);

    // A chosen session id is kept; an invalid one is replaced.
    let (_c, session) = stack.client(Some("my-session_1")).await;
    assert_eq!(session, "my-session_1");
    let (_c, session) = stack.client(Some("no spaces allowed")).await;
    assert_ne!(session, "no spaces allowed");
    stack.cleanup().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4002() {
    let stack =
        TestStack::with_local_daemon("d-hello-timeout", &[("EXAI_WS_HELLO_TIMEOUT", "0.3")]).await;
    let mut c = stack.connect().await;
    assert_eq!(
        c.next().await,
        Err(Seen::Close(4002, "hello timeout or disconnect".into()))
    );
    stack.cleanup().await;
}

// ----- list_tools and call_tool -------------------------------------------------------------

#[tokio::test]
async fn list_tools_answers_in_both_modes() {
    let stack = TestStack::with_local_daemon("d-list", &[]).await;
    let (mut c, _) = stack.client(None).await;
    let res = c.op("list_tools", "l-1").await;
    assert_eq!(res["op"], "list_tools_res");
    assert_eq!(res["request_id"], "l-1");
    let names: Vec<&str> = res["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert!(t["description"].is_string());
            assert_eq!(t["inputSchema"]["type"], "object");
            t["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "chat",
            "kimi_upload_files",
            "kimi_upload_bytes",
            "kimi_chat_with_files",
            "kimi_download_file",
            "kimi_manage_files",
            "test_echo"
        ]
    );
    // The shim's style: `id`, one frame carrying `tools`.
    c.send(json!({"op": "list_tools", "id": "list_140"})).await;
    let res = c.recv().await;
    assert_eq!(res["id"], "list_140");
    assert_eq!(res["tools"].as_array().unwrap().len(), 7);
    stack.cleanup().await;
}

#[tokio::test]
async fn a_streaming_call_is_acked_reports_progress_and_answers() {
    let stack = TestStack::with_daemon("d-stream", &[], 1).await;
    let (mut c, session) = stack.client(None).await;
    let args = json!({"delay_ms": 600, "hello": "world"});
    let (res, before) = c.call("r-1", "test_echo", args.clone()).await;
    assert_eq!(echoed(&res), args);
    let job_id = call_job_id(&session, "r-1");
    assert_eq!(res["job_id"], job_id.as_str());

    let ack = &before[0];
    assert_eq!(
        ack["op"], "call_tool_ack",
        "the ack comes first: {before:?}"
    );
    assert_eq!(ack["accepted"], true);
    assert_eq!(ack["job_id"], job_id.as_str());
    assert_eq!(ack["timeout"], 300.0);
    let progress: Vec<&Value> = before.iter().filter(|f| f["op"] == "progress").collect();
    assert!(
        progress.iter().any(|p| p["state"] == "running"),
        "a progress frame says the job runs: {before:?}"
    );
    assert!(
        progress
            .iter()
            .all(|p| p["request_id"] == "r-1" && p["t"].is_number())
    );
    assert!(
        progress.len() >= 2,
        "heartbeats every 0.2 s during a 0.6 s job: {before:?}"
    );

    // The older shape and a suffixed name.
    c.send(
        json!({"op": "tool_call", "request_id": "r-2", "tool": {"name": "test_echo_EXAI-WS"},
                  "arguments": {"n": 2}}),
    )
    .await;
    let (res, _) = c.until("call_tool_res", "r-2").await;
    assert_eq!(echoed(&res), json!({"n": 2}));
    assert_eq!(stack.job(&job_id).await.unwrap().attempts, 1);
    stack.cleanup().await;
}

#[tokio::test]
async fn a_single_frame_call_gets_exactly_one_frame_under_1_mib() {
    // The big result below is made of a big argument: the argument limit is raised past it.
    let stack =
        TestStack::with_daemon("d-single", &[("EXAI_MAX_ARGUMENT_BYTES", "4194304")], 1).await;
    let mut c = Client::connect(&stack.url()).await;
    // Exactly what the stdio shim sends.
    let ack = c
        .hello(
            json!({"op": "hello", "protocolVersion": "2024-11-05", "capabilities": {},
                      "clientInfo": {"name": "exai-mcp-shim", "version": "1.0.0"}, "token": TOKEN}),
        )
        .await;
    assert_eq!(ack["ok"], true);
    c.send(json!({"op": "list_tools", "id": "list_1"})).await;
    assert_eq!(c.recv().await["tools"].as_array().unwrap().len(), 7);
    c.send(
        json!({"op": "call_tool", "id": "call_1", "name": "test_echo",
                  "arguments": {"delay_ms": 300, "x": 1}}),
    )
    .await;
    let res = c.recv().await;
    assert_eq!(
        res["op"], "call_tool_res",
        "the very next frame is the result: {res}"
    );
    assert_eq!(res["id"], "call_1");
    let job_id = res["request_id"].as_str().unwrap().to_owned();
    assert!(job_id.starts_with("call-"));
    assert_eq!(echoed(&res), json!({"delay_ms": 300, "x": 1}));
    // Nothing else was queued behind it: the next frame answers the next request.
    c.send(json!({"op": "ping", "id": "call_1"})).await;
    assert_eq!(c.recv().await, json!({"op": "pong", "id": "call_1"}));

    // The same `id` again is a new call, not the old result.
    c.send(json!({"op": "call_tool", "id": "call_1", "name": "test_echo", "arguments": {"x": 2}}))
        .await;
    let res = c.recv().await;
    assert_eq!(echoed(&res), json!({"x": 2}));
    assert_ne!(res["request_id"], job_id.as_str());

    // A result over 1 MiB is cut with a note; get_result with the job id returns all of it.
    let big = "z".repeat(1_500_000);
    c.send(
        json!({"op": "call_tool", "id": "call_1", "name": "test_echo", "arguments": {"big": big}}),
    )
    .await;
    let frame = tokio::time::timeout(FRAME_WAIT, futures::StreamExt::next(&mut c.ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = frame.into_text().unwrap();
    assert!(text.len() < 1024 * 1024, "frame of {} bytes", text.len());
    let res: Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(res["truncated"], true);
    let big_job = res["request_id"].as_str().unwrap().to_owned();
    let note = res["result"][0]["text"].as_str().unwrap();
    assert!(note.contains(&format!(
        r#"{{"op":"get_result","request_id":"{big_job}"}}"#
    )));
    let (mut other, _) = stack.client(None).await;
    let full = other.op("get_result", &big_job).await;
    assert_eq!(full["op"], "call_tool_res");
    assert_eq!(echoed(&full)["big"].as_str().unwrap().len(), 1_500_000);
    stack.cleanup().await;
}

#[tokio::test]
async fn a_hundred_concurrent_calls_on_one_socket_are_each_answered_once() {
    let stack = TestStack::with_daemon("d-100-one", &[], 1).await;
    let (mut c, _) = stack.client(None).await;
    for n in 0..100 {
        c.send(
            json!({"op": "call_tool", "request_id": format!("r-{n}"), "name": "test_echo",
                      "arguments": {"n": n, "delay_ms": (n % 7) * 20}}),
        )
        .await;
    }
    let mut answered = HashMap::new();
    while answered.len() < 100 {
        let f = c.recv().await;
        if f["op"] == "call_tool_res" {
            let rid = f["request_id"].as_str().unwrap().to_owned();
            let n = echoed(&f)["n"].as_u64().unwrap();
            assert_eq!(rid, format!("r-{n}"), "the reply matches its request");
            assert!(answered.insert(rid, n).is_none(), "answered once");
        }
    }
    // No stray result follows.
    assert_eq!(
        c.op("ping", "p").await,
        json!({"op": "pong", "request_id": "p"})
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_hundred_calls_over_fifty_sockets_are_each_answered_on_their_own_socket() {
    let stack = TestStack::with_daemon(
        "d-100-fifty",
        &[("EXAI_WS_MAX_CONNECTIONS_PER_IP", "100")],
        1,
    )
    .await;
    let mut tasks = Vec::new();
    for s in 0..50 {
        let (mut c, _) = stack.client(None).await;
        tasks.push(tokio::spawn(async move {
            for k in 0..2 {
                c.send(
                    json!({"op": "call_tool", "request_id": format!("r-{k}"), "name": "test_echo",
                              "arguments": {"socket": s, "k": k}}),
                )
                .await;
            }
            let mut seen = HashSet::new();
            while seen.len() < 2 {
                let f = c.recv().await;
                if f["op"] == "call_tool_res" {
                    let e = echoed(&f);
                    assert_eq!(e["socket"], s, "a reply for another socket");
                    assert_eq!(f["request_id"], format!("r-{}", e["k"]).as_str());
                    assert!(seen.insert(e["k"].as_u64().unwrap()));
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("every socket got its two answers");
    }
    stack.cleanup().await;
}

// ----- results are never lost ---------------------------------------------------------------

#[tokio::test]
async fn a_client_that_reconnects_collects_its_result() {
    let stack = TestStack::with_daemon("d-reconnect", &[], 1).await;
    let (mut c, session) = stack.client(Some("reconnecting-client")).await;
    c.send(
        json!({"op": "call_tool", "request_id": "r-1", "name": "test_echo",
                  "arguments": {"delay_ms": 500, "v": 1}}),
    )
    .await;
    let ack = c.recv().await;
    assert_eq!(ack["op"], "call_tool_ack");
    drop(c);

    // Reconnect; the same request id attaches to the job instead of running it again.
    let (mut c, again) = stack.client(Some(&session)).await;
    assert_eq!(again, session);
    let (res, before) = c
        .call("r-1", "test_echo", json!({"delay_ms": 500, "v": 1}))
        .await;
    assert_eq!(echoed(&res)["v"], 1);
    assert_eq!(before[0]["op"], "call_tool_ack");
    assert_eq!(before[0]["duplicate"], true);
    // And get_result returns the stored result.
    let res = c.op("get_result", "r-1").await;
    assert_eq!(res["op"], "call_tool_res");
    assert_eq!(echoed(&res)["v"], 1);
    let status = c.op("job_status", "r-1").await;
    assert_eq!(status["state"], "completed");
    assert_eq!(status["attempt"], 1);
    assert!(status.get("queue_position").is_none(), "{status}");
    let job = stack.job(&call_job_id(&session, "r-1")).await.unwrap();
    assert_eq!(job.attempts, 1, "the job ran once");
    stack.cleanup().await;
}

#[tokio::test]
async fn a_result_stored_before_anyone_listened_is_delivered() {
    let mut stack = TestStack::with_daemon("d-before", &[], 0).await;
    let session = "early-session";
    let job_id = call_job_id(session, "r-1");
    // The job is enqueued and finished before the client ever subscribes.
    let job = ToolCallJob {
        tool: "test_echo".into(),
        arguments: json!({"stored": "before"}),
        session_id: session.into(),
        request_id: Some("r-1".into()),
        deadline_ms: None,
        staged: None,
    };
    stack
        .queue(TOOL_CALLS)
        .enqueue(&NewJob::json(&job).unwrap().with_id(job_id.clone()))
        .await
        .unwrap();
    stack.add_worker();
    assert!(stack.wait_state(&job_id, JobState::Completed).await);

    let (mut c, _) = stack.client(Some(session)).await;
    let (res, _) = c.call("r-1", "test_echo", json!({"stored": "after"})).await;
    assert_eq!(
        echoed(&res),
        json!({"stored": "before"}),
        "the stored result, not a second run"
    );
    assert_eq!(stack.job(&job_id).await.unwrap().attempts, 1);
    stack.cleanup().await;
}

#[tokio::test]
async fn a_daemon_killed_mid_call_loses_nothing_and_the_job_runs_once() {
    let mut stack = TestStack::with_daemon("d-kill", &[], 1).await;
    let (mut c, session) = stack.client(None).await;
    c.send(
        json!({"op": "call_tool", "request_id": "r-1", "name": "test_echo",
                  "arguments": {"delay_ms": 1500, "v": "kept"}}),
    )
    .await;
    assert_eq!(c.recv().await["op"], "call_tool_ack");
    let job_id = call_job_id(&session, "r-1");
    assert!(stack.wait_state(&job_id, JobState::Running).await);

    send_signal(stack.daemon().child.pid(), "KILL");
    stack
        .daemon_mut()
        .child
        .wait_exit(Duration::from_secs(5))
        .await;
    // Frames sent before the kill may still be buffered; then the socket ends.
    while c.next().await.is_ok() {}

    stack.start_daemon().await;
    let (mut c, _) = stack.client(Some(&session)).await;
    let (res, _) = c
        .call("r-1", "test_echo", json!({"delay_ms": 1500, "v": "kept"}))
        .await;
    assert_eq!(echoed(&res)["v"], "kept");
    let job = stack.job(&job_id).await.unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempts, 1, "the job ran once");
    assert_eq!(stack.queue(TOOL_CALLS).counts().await.unwrap().completed, 1);
    stack.cleanup().await;
}

#[tokio::test]
async fn two_sessions_with_the_same_request_id_never_see_each_others_results() {
    let stack = TestStack::with_daemon("d-isolation", &[], 1).await;
    let (mut a, sa) = stack.client(Some("session-a")).await;
    let (mut b, sb) = stack.client(Some("session-b")).await;
    for (c, who) in [(&mut a, "a"), (&mut b, "b")] {
        c.send(
            json!({"op": "call_tool", "request_id": "r-1", "name": "test_echo",
                      "arguments": {"who": who, "delay_ms": 200}}),
        )
        .await;
    }
    let (ra, _) = a.until("call_tool_res", "r-1").await;
    let (rb, _) = b.until("call_tool_res", "r-1").await;
    assert_eq!(echoed(&ra)["who"], "a");
    assert_eq!(echoed(&rb)["who"], "b");
    assert_ne!(call_job_id(&sa, "r-1"), call_job_id(&sb, "r-1"));
    // Neither can collect the other's result by request id.
    let (mut c, _) = stack.client(Some("session-c")).await;
    assert_eq!(c.op("get_result", "r-1").await["state"], "unknown");
    // Anonymous single-frame clients all send the same id: each still gets its own result.
    let mut shims = Vec::new();
    for n in 0..4 {
        let (mut s, _) = stack.client(None).await;
        shims.push(tokio::spawn(async move {
            s.send(
                json!({"op": "call_tool", "id": "call_1", "name": "test_echo",
                          "arguments": {"n": n, "delay_ms": 100}}),
            )
            .await;
            let res = s.recv().await;
            assert_eq!(echoed(&res)["n"], n);
        }));
    }
    for s in shims {
        s.await.unwrap();
    }
    stack.cleanup().await;
}

// ----- job status ---------------------------------------------------------------------------

/// Sends `{op, request_id}` and returns its `job_status_res`, skipping the progress frames the
/// calls in flight keep sending meanwhile.
async fn status_of(c: &mut Client, op: &str, request_id: &str) -> Value {
    c.send(json!({"op": op, "request_id": request_id})).await;
    c.until("job_status_res", request_id).await.0
}

#[tokio::test]
async fn job_status_reports_a_waiting_calls_place_in_line() {
    // FIFO (no fairness key), so the unkeyed backlog below is in the calls' own line.
    let stack = TestStack::with_daemon("d-position", &[("EXAI_FAIRNESS_KEY", "none")], 0).await;
    let (mut c, _) = stack.client(None).await;
    for r in ["r-1", "r-2", "r-3"] {
        c.send(json!({"op": "call_tool", "request_id": r, "name": "test_echo", "arguments": {}}))
            .await;
        let (ack, _) = c.until("call_tool_ack", r).await;
        assert_eq!(ack["accepted"], true, "{ack}");
    }
    // First in, first out: r-1 is the next job a worker takes.
    for (r, place) in [("r-1", 1), ("r-2", 2), ("r-3", 3)] {
        let status = status_of(&mut c, "job_status", r).await;
        assert_eq!(status["op"], "job_status_res", "{status}");
        assert_eq!(status["state"], "queued", "{status}");
        assert_eq!(status["attempt"], 0, "{status}");
        assert_eq!(status["queue_position"], place, "{status}");
    }
    // get_result of an unfinished call answers with the same status.
    let res = status_of(&mut c, "get_result", "r-2").await;
    assert_eq!(res["op"], "job_status_res", "{res}");
    assert_eq!(res["queue_position"], 2, "{res}");

    // Behind a backlog deeper than the bounded search, a waiting call has no position (the
    // reply never costs a scan of the whole backlog); those ahead keep theirs.
    let payload = serde_json::to_vec(&ToolCallJob {
        tool: "test_echo".into(),
        arguments: json!({}),
        session_id: "backlog".into(),
        request_id: None,
        deadline_ms: None,
        staged: None,
    })
    .unwrap();
    let backlog = exai_shared::queue::POSITION_SCAN_MAX;
    for _ in 0..backlog / 1000 {
        let jobs: Vec<NewJob> = (0..1000).map(|_| NewJob::new(payload.clone())).collect();
        stack.queue(TOOL_CALLS).enqueue_bulk(&jobs).await.unwrap();
    }
    c.send(json!({"op": "call_tool", "request_id": "r-4", "name": "test_echo", "arguments": {}}))
        .await;
    c.until("call_tool_ack", "r-4").await;
    let status = status_of(&mut c, "job_status", "r-4").await;
    assert_eq!(status["state"], "queued", "{status}");
    assert!(status.get("queue_position").is_none(), "{status}");
    assert_eq!(
        status_of(&mut c, "job_status", "r-3").await["queue_position"],
        3
    );
    // Unknown calls have no position either.
    let status = status_of(&mut c, "job_status", "never-made").await;
    assert_eq!(status["state"], "unknown");
    assert!(status.get("queue_position").is_none(), "{status}");
    stack.cleanup().await;
}

// ----- cancel -------------------------------------------------------------------------------

/// The `cancelled` reply to a cancel of `request_id` and the call's `call_tool_res`, which may
/// come in either order (the result can overtake the reply).
async fn cancel_replies(c: &mut Client, request_id: &str) -> (Value, Value) {
    let (mut cancelled, mut res) = (None, None);
    while cancelled.is_none() || res.is_none() {
        let frame = c.recv().await;
        if frame["request_id"] != request_id {
            continue;
        }
        match frame["op"].as_str() {
            Some("cancelled") => cancelled = Some(frame),
            Some("call_tool_res") => res = Some(frame),
            _ => {}
        }
    }
    (cancelled.unwrap(), res.unwrap())
}

#[tokio::test]
async fn cancelling_a_queued_call_removes_it() {
    let stack = TestStack::with_daemon("d-cancel-queued", &[], 0).await;
    let (mut c, session) = stack.client(None).await;
    c.send(json!({"op": "call_tool", "request_id": "r-1", "name": "test_echo", "arguments": {}}))
        .await;
    assert_eq!(c.recv().await["op"], "call_tool_ack");
    assert_eq!(
        status_of(&mut c, "job_status", "r-1").await["state"],
        "queued"
    );
    c.send(json!({"op": "cancel", "request_id": "r-1"})).await;
    let (cancelled, res) = cancel_replies(&mut c, "r-1").await;
    assert_eq!(cancelled["was"], "queued");
    assert_eq!(res["error"]["code"], "CANCELLED");
    let job = stack.job(&call_job_id(&session, "r-1")).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.attempts, 0, "it never ran");
    // Cancelling again finds it finished; an unknown request id is NOT_FOUND. (Replies are
    // matched by op and request id: progress frames of the call may still be on their way.)
    c.send(json!({"op": "cancel", "request_id": "r-1"})).await;
    assert_eq!(c.until("cancelled", "r-1").await.0["was"], "finished");
    c.send(json!({"op": "cancel", "request_id": "nope"})).await;
    let (res, _) = c.until("error", "nope").await;
    assert_eq!(res["error"]["code"], "NOT_FOUND");
    stack.cleanup().await;
}

#[tokio::test]
async fn cancelling_a_running_call_stops_its_worker() {
    let stack = TestStack::with_daemon("d-cancel-running", &[], 1).await;
    let (mut c, session) = stack.client(None).await;
    c.send(
        json!({"op": "call_tool", "request_id": "r-1", "name": "test_echo",
                  "arguments": {"delay_ms": 30000}}),
    )
    .await;
    // Wait until the daemon reports the job running.
    loop {
        let f = c.recv().await;
        if f["op"] == "progress" && f["state"] == "running" {
            break;
        }
    }
    let started = std::time::Instant::now();
    c.send(json!({"op": "cancel", "request_id": "r-1"})).await;
    let (cancelled, res) = cancel_replies(&mut c, "r-1").await;
    assert_eq!(cancelled["was"], "running");
    assert_eq!(res["error"]["code"], "CANCELLED");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the worker stopped early"
    );
    let job = stack.job(&call_job_id(&session, "r-1")).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.attempts, 1);
    stack.cleanup().await;
}

// ----- errors -------------------------------------------------------------------------------

#[tokio::test]
async fn an_upload_purpose_moonshot_refuses_is_an_invalid_arguments_error() {
    let stack = TestStack::with_local_daemon("d-purpose", &[]).await;
    let (mut c, session) = stack.client(None).await;
    let calls = [
        (
            "p-bytes",
            "kimi_upload_bytes",
            json!({"filename": "a.txt", "content_base64": "aGk=", "purpose": "assistants"}),
        ),
        (
            "p-files",
            "kimi_upload_files",
            json!({"files": ["/tmp/a.txt"], "purpose": "assistants"}),
        ),
    ];
    for (request_id, tool, args) in calls {
        let (res, _) = c.call(request_id, tool, args).await;
        assert_eq!(res["error"]["code"], "VALIDATION_ERROR", "{res}");
        assert_eq!(res["error"]["details"]["path"], "/purpose", "{res}");
        // Nothing was enqueued.
        assert!(
            stack
                .job(&call_job_id(&session, request_id))
                .await
                .is_none()
        );
    }
    // The listed schema names exactly what Moonshot accepts.
    let tools = c.op("list_tools", "p-list").await;
    let upload = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "kimi_upload_bytes")
        .unwrap();
    assert_eq!(
        upload["inputSchema"]["properties"]["purpose"]["enum"],
        json!(["file-extract", "image", "video", "batch"])
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn bad_requests_get_the_protocols_errors_and_the_connection_stays_usable() {
    let stack = TestStack::with_local_daemon("d-errors", &[]).await;
    let (mut c, _) = stack.client(None).await;

    let res = c.op("frobnicate", "e-1").await;
    assert_eq!(
        res,
        json!({"op": "error", "request_id": "e-1",
               "error": {"code": "INVALID_REQUEST", "message": "Unknown operation: frobnicate"}})
    );

    c.send_text("{this is not json".into()).await;
    let res = c.recv().await;
    assert_eq!(res["op"], "error");
    assert_eq!(res["error"]["code"], "VALIDATION_ERROR");

    c.send_text("[1, 2, 3]".into()).await;
    assert_eq!(c.recv().await["error"]["code"], "INVALID_REQUEST");

    c.send(
        json!({"op": "call_tool", "request_id": "e-2", "name": "chat",
                  "arguments": {"prompt": "hi", "temperature": "hot"}}),
    )
    .await;
    let res = c.recv().await;
    assert_eq!(res["op"], "call_tool_res");
    assert_eq!(res["request_id"], "e-2");
    assert_eq!(res["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(res["error"]["details"]["path"], "/temperature");
    assert!(
        res["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/temperature")
    );

    c.send(json!({"op": "call_tool", "request_id": "e-3", "name": "chat", "arguments": {}}))
        .await;
    let res = c.recv().await;
    assert_eq!(res["error"]["code"], "VALIDATION_ERROR");
    assert!(res["error"]["message"].as_str().unwrap().contains("prompt"));

    c.send(json!({"op": "call_tool", "request_id": "e-4", "name": "no_such_tool"}))
        .await;
    let res = c.recv().await;
    assert_eq!(res["op"], "call_tool_res");
    assert_eq!(res["error"]["code"], "TOOL_NOT_FOUND");
    // Nothing is close: every tool is named.
    let every: Vec<&str> = exai_shared::tools::all().iter().map(|t| t.name).collect();
    assert_eq!(
        res["error"]["message"],
        format!(
            "Tool not found: no_such_tool (the tools are {})",
            every.join(", ")
        )
    );
    assert_eq!(res["error"]["details"]["tools"], json!(every));
    assert_eq!(res["error"]["details"]["closest"], json!([]));

    // A near miss names the closest tool; an op named as a tool says it is an op.
    c.send(
        json!({"op": "call_tool", "request_id": "e-4b", "name": "kimi_upload_file",
                  "arguments": {"files": ["/a"]}}),
    )
    .await;
    let res = c.recv().await;
    assert_eq!(
        res["error"]["message"],
        "Tool not found: kimi_upload_file (did you mean kimi_upload_files?)"
    );
    assert_eq!(
        res["error"]["details"]["closest"],
        json!(["kimi_upload_files"])
    );
    c.send(json!({"op": "call_tool", "request_id": "e-4c", "name": "list_tools"}))
        .await;
    let res = c.recv().await;
    let message = res["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(r#"Tool not found: list_tools (list_tools is an op, not a tool: send {"op":"list_tools"}"#),
        "{message}"
    );

    c.send(json!({"op": "call_tool", "request_id": "e-5", "arguments": {}}))
        .await;
    assert_eq!(c.recv().await["error"]["code"], "INVALID_REQUEST");

    c.send(json!({"op": "call_tool", "request_id": "e-6", "name": "test_echo", "arguments": [1]}))
        .await;
    assert_eq!(c.recv().await["error"]["code"], "INVALID_REQUEST");

    c.send(json!({"op": "get_result"})).await;
    assert_eq!(c.recv().await["error"]["code"], "INVALID_REQUEST");
    assert_eq!(c.op("job_status", "never-used").await["state"], "unknown");

    // A single-frame client gets its error as result text too (all the shim reads).
    c.send(json!({"op": "call_tool", "id": "call_9", "name": "no_such_tool"}))
        .await;
    let res = c.recv().await;
    assert_eq!(res["id"], "call_9");
    assert!(
        res["result"][0]["text"]
            .as_str()
            .unwrap()
            .contains("TOOL_NOT_FOUND")
    );

    // Nothing was enqueued, and the connection still works.
    assert_eq!(
        c.op("ping", "p").await,
        json!({"op": "pong", "request_id": "p"})
    );
    assert_eq!(stack.queue(TOOL_CALLS).counts().await.unwrap().queued, 0);
    stack.cleanup().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection_with_1009() {
    // A daemon process: what this checks (the client reads the close, not a reset) is about a
    // real TCP socket.
    let stack = TestStack::with_daemon("d-too-big", &[("EXAI_WS_MAX_BYTES", "65536")], 0).await;
    let (mut c, _) = stack.client(None).await;
    c.send(json!({"op": "ping", "request_id": "r", "pad": "y".repeat(60_000)}))
        .await;
    assert_eq!(
        c.recv().await["op"],
        "pong",
        "a frame under the limit is read"
    );
    // Far over the limit: the daemon refuses it from the frame header, discards the rest while
    // the client is still sending, and the client reads the 1009 rather than a reset.
    c.send_text(format!(
        r#"{{"op":"ping","pad":"{}"}}"#,
        "x".repeat(4 * 1024 * 1024)
    ))
    .await;
    assert_eq!(c.closed().await.0, 1009);
    stack.cleanup().await;
}

// ----- limits -------------------------------------------------------------------------------

#[tokio::test]
async fn connections_over_a_limit_are_closed_with_1008() {
    let stack =
        TestStack::with_local_daemon("d-conn-ip", &[("EXAI_WS_MAX_CONNECTIONS_PER_IP", "2")]).await;
    let (mut a, _) = stack.client(None).await;
    let (_b, _) = stack.client(None).await;
    let mut c = stack.connect().await;
    let (code, reason) = c.closed().await;
    assert_eq!(code, 1008);
    assert!(
        reason.contains("Too many connections from your IP"),
        "{reason}"
    );
    // A slot frees when a connection closes.
    a.ws.close(None).await.unwrap();
    drop(a);
    let freed = wait_until(Duration::from_secs(10), || async {
        // Until the daemon has seen the close, a new connection is still over the limit and
        // refused with 1008: that means "not yet", not a failure.
        let mut c = stack.connect().await;
        let hello = json!({"op": "hello", "token": TOKEN}).to_string();
        if c.ws.send(Message::Text(hello.into())).await.is_err() {
            return false;
        }
        matches!(c.next().await, Ok(ack) if ack.get("ok") == Some(&json!(true)))
    })
    .await;
    assert!(freed);
    stack.cleanup().await;

    let stack =
        TestStack::with_local_daemon("d-conn-total", &[("EXAI_WS_MAX_CONNECTIONS", "1")]).await;
    let (_a, _) = stack.client(None).await;
    let mut c = stack.connect().await;
    let (code, reason) = c.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("global connection limit"), "{reason}");
    stack.cleanup().await;
}

#[tokio::test]
async fn calls_in_flight_per_session_are_limited() {
    let stack =
        TestStack::with_local_daemon("d-inflight", &[("EXAI_WS_SESSION_MAX_INFLIGHT", "2")]).await;
    let (mut c, session) = stack.client(None).await;
    for n in 1..=2 {
        c.send(json!({"op": "call_tool", "request_id": format!("r-{n}"), "name": "test_echo", "arguments": {}}))
            .await;
        assert_eq!(c.recv().await["op"], "call_tool_ack");
    }
    // A second connection of the same session shares the limit.
    let (mut d, _) = stack.client(Some(&session)).await;
    let (res, _) = d.call("r-3", "test_echo", json!({})).await;
    assert_eq!(res["error"]["code"], "OVER_CAPACITY");
    assert!(
        stack.job(&call_job_id(&session, "r-3")).await.is_none(),
        "not enqueued"
    );
    // One finishes (cancelled): room again.
    c.send(json!({"op": "cancel", "request_id": "r-1"})).await;
    c.until("call_tool_res", "r-1").await;
    d.send(json!({"op": "call_tool", "request_id": "r-4", "name": "test_echo", "arguments": {}}))
        .await;
    assert_eq!(d.recv().await["op"], "call_tool_ack");
    stack.cleanup().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let stack =
        TestStack::with_local_daemon("d-idle", &[("EXAI_WS_IDLE_TIMEOUT_SECS", "0.5")]).await;
    let (mut c, _) = stack.client(None).await;
    assert_eq!(c.closed().await, (1000, "idle timeout".to_owned()));
    stack.cleanup().await;
}

#[tokio::test]
async fn a_call_past_its_deadline_times_out_and_is_cancelled() {
    let stack =
        TestStack::with_local_daemon("d-deadline", &[("EXAI_WS_CALL_TIMEOUT_SECS", "0.5")]).await;
    let (mut c, session) = stack.client(None).await;
    let (res, _) = c.call("r-1", "test_echo", json!({})).await;
    assert_eq!(res["error"]["code"], "TIMEOUT");
    let job = stack.job(&call_job_id(&session, "r-1")).await.unwrap();
    assert_eq!(
        job.state,
        JobState::Cancelled,
        "a call past its deadline is cancelled"
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_single_frame_client_is_not_kept_waiting() {
    // The call's own deadline stays far away, so only the single-frame wait can end it.
    let stack = TestStack::with_local_daemon(
        "d-single-wait",
        &[
            ("EXAI_WS_CALL_TIMEOUT_SECS", "60"),
            ("EXAI_WS_SINGLE_FRAME_TIMEOUT_SECS", "0.3"),
        ],
    )
    .await;
    let (mut c, _) = stack.client(None).await;
    // One TIMEOUT frame naming the job, which is still there to collect.
    c.send(json!({"op": "call_tool", "id": "call_1", "name": "test_echo", "arguments": {}}))
        .await;
    let res = c.recv().await;
    assert_eq!(res["id"], "call_1");
    assert_eq!(res["error"]["code"], "TIMEOUT");
    let job_id = res["request_id"].as_str().unwrap();
    assert!(res["result"][0]["text"].as_str().unwrap().contains(job_id));
    assert!(stack.job(job_id).await.is_some());
    stack.cleanup().await;
}

// ----- health, metrics, shutdown ------------------------------------------------------------

#[tokio::test]
async fn health_and_queue_stats_report_queues_and_semaphores() {
    let stack = TestStack::with_daemon("d-health-op", &[], 1).await;
    let (mut c, _) = stack.client(None).await;
    c.call("r-1", "test_echo", json!({})).await;
    let health = c.op("health", "h").await;
    assert_eq!(health["op"], "health_res");
    assert_eq!(health["ok"], true);
    assert_eq!(health["request_id"], "h");
    assert_eq!(health["health"]["queues"]["tool_calls"]["completed"], 1);
    assert_eq!(health["health"]["tool_count"], 7);
    let stats = c.op("queue_stats", "q").await;
    assert_eq!(stats["op"], "queue_stats_res");
    for q in ["tool_calls", "uploads", "storage_push", "cleanup"] {
        assert!(stats["queues"][q].is_object(), "{stats}");
    }
    assert_eq!(stats["semaphores"]["global"]["limit"], 24);
    assert_eq!(stats["semaphores"]["kimi"]["in_use"], 0);
    stack.cleanup().await;
}

/// The pids of the workers `/health` lists, and the whole reply.
async fn health_worker_pids(http: &reqwest::Client, base: &str) -> (Vec<u64>, Value) {
    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut pids: Vec<u64> = health["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers list: {health}"))
        .iter()
        .map(|w| w["pid"].as_u64().expect("a pid"))
        .collect();
    pids.sort_unstable();
    (pids, health)
}

#[tokio::test]
async fn health_lists_live_workers_and_forgets_a_killed_one_after_its_ttl() {
    let mut stack = TestStack::with_daemon("d-health-workers", &[], 0).await;
    // The registration lasts one job lease without a renewal.
    let lease = [("EXAI_JOB_LEASE_MS", "1500")];
    stack.add_worker_with(&lease);
    stack.add_worker_with(&lease);
    let pid = |i: usize| u64::from(stack.workers[i].pid());
    let mut both = vec![pid(0), pid(1)];
    both.sort_unstable();
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.daemon().addr);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            health_worker_pids(&http, &base).await.0 == both
        })
        .await,
        "both workers listed: {}",
        health_worker_pids(&http, &base).await.1
    );
    let (_, health) = health_worker_pids(&http, &base).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["worker_count"], 2, "{health}");
    for w in health["workers"].as_array().unwrap() {
        assert_eq!(w["queues"], json!(["tool_calls"]), "{w}");
        assert_eq!(w["concurrency"], 16, "{w}");
        assert_eq!(w["ttl_ms"], 1500, "{w}");
        assert!(!w["host"].as_str().unwrap().is_empty(), "{w}");
        assert!(
            w["id"].as_str().unwrap().contains(&w["pid"].to_string()),
            "{w}"
        );
        let (started, seen) = (w["started_at_ms"].as_u64(), w["last_seen_ms"].as_u64());
        assert!(started.is_some() && seen >= started, "{w}");
    }
    // The WebSocket health op lists the same workers.
    let (mut c, _) = stack.client(None).await;
    let op = c.op("health", "h").await;
    assert_eq!(op["ok"], true, "{op}");
    assert_eq!(op["health"]["worker_count"], 2, "{op}");

    // SIGKILL: no goodbye; the worker drops out once its TTL has passed, while the other one,
    // renewing, stays (by then more than a TTL has passed since it registered).
    send_signal(stack.workers[0].pid(), "KILL");
    let survivor = vec![pid(1)];
    assert!(
        wait_until(Duration::from_secs(20), || async {
            health_worker_pids(&http, &base).await.0 == survivor
        })
        .await,
        "only the survivor listed: {}",
        health_worker_pids(&http, &base).await.1
    );
    // SIGTERM: a clean stop deregisters at once.
    send_signal(stack.workers[1].pid(), "TERM");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            health_worker_pids(&http, &base).await.0.is_empty()
        })
        .await,
        "no worker listed: {}",
        health_worker_pids(&http, &base).await.1
    );
    assert_eq!(health_worker_pids(&http, &base).await.1["worker_count"], 0);
    stack.cleanup().await;
}

#[tokio::test]
async fn http_health_ready_and_metrics() {
    let redis = exai_tests::RedisServer::start(false).await;
    let stack = TestStack::builder("d-http")
        .redis(&redis.url())
        .daemon()
        .workers(1)
        .start()
        .await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.daemon().addr);

    let health: Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    let ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let (mut c, _) = stack.client(None).await;
    c.call("r-1", "test_echo", json!({})).await;
    c.send_text("not json".into()).await;
    c.recv().await;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "exai_daemon_connections 1",
        r#"exai_daemon_calls_total{tool="test_echo",outcome="completed"} 1"#,
        "exai_daemon_enqueue_seconds_count 1",
        r#"exai_daemon_frames_total{direction="in"}"#,
        // The fleet-wide gauges, read from Redis at the scrape.
        r#"exai_daemon_queue_jobs{queue="tool_calls",state="completed"} 1"#,
        r#"exai_daemon_queue_jobs{queue="tool_calls",state="queued"} 0"#,
        r#"exai_daemon_queue_paused{queue="uploads"} 0"#,
        r#"exai_daemon_semaphore_limit{semaphore="kimi"} 6"#,
        r#"exai_daemon_semaphore_in_use{semaphore="global"} 0"#,
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    assert_eq!(
        http.get(format!("{base}/nothing-here"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Redis gone: not ready, still alive.
    let mut redis = redis;
    redis.kill();
    let ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let alive = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(alive.status(), 200);
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_leaves_queued_jobs_in_redis() {
    let mut stack = TestStack::with_daemon("d-sigterm", &[], 0).await;
    let (mut c, session) = stack.client(None).await;
    c.send(
        json!({"op": "call_tool", "request_id": "r-1", "name": "test_echo", "arguments": {"v": 1}}),
    )
    .await;
    assert_eq!(c.recv().await["op"], "call_tool_ack");
    send_signal(stack.daemon().child.pid(), "TERM");
    assert_eq!(c.closed().await.0, 1001);
    let status = stack
        .daemon_mut()
        .child
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the daemon exits");
    assert!(status.success(), "{status:?}");
    let job_id = call_job_id(&session, "r-1");
    assert_eq!(stack.job(&job_id).await.unwrap().state, JobState::Queued);
    // A worker started later runs it, and the result waits for the client.
    stack.add_worker();
    assert!(stack.wait_state(&job_id, JobState::Completed).await);
    let stored = stack
        .queue(TOOL_CALLS)
        .result(&job_id)
        .await
        .unwrap()
        .unwrap();
    let result: ToolResult = serde_json::from_slice(&stored.result.unwrap()).unwrap();
    assert!(result.joined_text().contains("\"v\":1"));
    stack.cleanup().await;
}
