//! The work one session can make the daemon hold, each case against a real `exai-daemon`
//! process, real Redis and real sockets:
//!
//! - a call refused for the session's in-flight limit stages nothing (`kimi_upload_bytes`
//!   content reaches the staging store only once the call holds its slot);
//! - a call's arguments are capped (`EXAI_MAX_ARGUMENT_BYTES`): a 2 MiB `test_echo` is a
//!   `VALIDATION_ERROR` naming the limit and is not enqueued, while a 2 MiB `kimi_upload_bytes`
//!   (its content is staged, not enqueued) is still accepted;
//! - a session's unfinished calls are capped (`EXAI_SESSION_MAX_QUEUED`) over all its
//!   connections and across disconnects; once its jobs finish there is room again;
//! - a call still queued past its deadline ends `expired` when a worker takes it, without
//!   running, and `get_result` and `job_status` say so.

use std::path::Path;

use base64::Engine;
use exai_tests::TestStack;
use serde_json::json;

/// Every file under `dir`, however deep (none when it does not exist).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A session at its in-flight limit sends three `kimi_upload_bytes`: each is `OVER_CAPACITY`
/// and the staging store holds no new blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_uploads_stage_nothing() {
    let stack = TestStack::builder("session_overcap_stage")
        .upload_dirs()
        .env("EXAI_WS_SESSION_MAX_INFLIGHT", "1")
        .daemon()
        .start()
        .await;
    let staging = stack.dir().join("staging");
    let (mut client, _) = stack.client(None).await;

    // No worker: this call stays queued and holds the session's one slot.
    client
        .send(
            json!({"op": "call_tool", "request_id": "hold", "name": "test_echo",
            "arguments": {"text": "hold"}}),
        )
        .await;
    let (ack, _) = client.until("call_tool_ack", "hold").await;
    assert_eq!(ack["accepted"], true, "{ack}");
    let before = files_under(&staging);

    for i in 0..3 {
        let content = base64::engine::general_purpose::STANDARD
            .encode(format!("over capacity upload {i} ").repeat(4096));
        let id = format!("up-{i}");
        let (res, _) = client
            .call(
                &id,
                "kimi_upload_bytes",
                json!({"filename": format!("over-{i}.txt"), "content_base64": content}),
            )
            .await;
        assert_eq!(res["error"]["code"], "OVER_CAPACITY", "{res}");
    }
    // The refusals were answered after the admission ended: nothing can still be staging.
    assert_eq!(
        files_under(&staging),
        before,
        "a refused call left a blob in the staging store"
    );
}

/// The number of jobs the `tool_calls` queue knows, whatever their state.
async fn tool_call_jobs(stack: &TestStack) -> usize {
    let counts = stack
        .queue("tool_calls")
        .counts()
        .await
        .expect("read the queue's counts");
    let c = counts;
    (c.queued + c.scheduled + c.running + c.retrying + c.dead + c.completed + c.cancelled) as usize
}

/// A 2 MiB `test_echo` argument is refused before anything is enqueued; a 2 MiB
/// `kimi_upload_bytes` is staged and accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_arguments_are_refused_before_the_queue() {
    let stack = TestStack::builder("session_argument_cap")
        .upload_dirs()
        .daemon()
        .start()
        .await;
    let (mut client, session) = stack.client(None).await;
    let two_mib = "x".repeat(2 * 1024 * 1024);

    client
        .send(
            json!({"op": "call_tool", "request_id": "big", "name": "test_echo",
            "arguments": {"text": two_mib}}),
        )
        .await;
    // The first answer to the call: an ack would mean it was accepted.
    let res = loop {
        let v = client.recv().await;
        if v["request_id"] == "big" && v["op"] != "progress" {
            break v;
        }
    };
    assert_eq!(res["op"], "call_tool_res", "the call was accepted: {res}");
    assert_eq!(res["error"]["code"], "VALIDATION_ERROR", "{res}");
    let message = res["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("EXAI_MAX_ARGUMENT_BYTES") && message.contains("1048576"),
        "the error names the limit: {message}"
    );
    let job_id = exai_shared::protocol::call_job_id(&session, "big");
    assert!(
        stack.job(&job_id).await.is_none(),
        "the refused call was enqueued"
    );
    assert_eq!(
        tool_call_jobs(&stack).await,
        0,
        "the refused call was enqueued"
    );

    let content = base64::engine::general_purpose::STANDARD.encode(vec![b'y'; 2 * 1024 * 1024]);
    client
        .send(
            json!({"op": "call_tool", "request_id": "upload", "name": "kimi_upload_bytes",
            "arguments": {"filename": "big.bin", "content_base64": content}}),
        )
        .await;
    let (ack, _) = client.until("call_tool_ack", "upload").await;
    assert_eq!(ack["accepted"], true, "{ack}");
    assert_eq!(tool_call_jobs(&stack).await, 1, "the upload was enqueued");
}

/// Three connections of one session, each closed right after its calls are answered, leave no
/// more than `EXAI_SESSION_MAX_QUEUED` jobs queued; once a worker runs them, there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_queued_calls_are_capped_across_reconnects() {
    const CAP: usize = 5;
    const PER_CONNECTION: usize = 4;
    let mut stack = TestStack::builder("session_max_queued")
        .env("EXAI_SESSION_MAX_QUEUED", &CAP.to_string())
        .daemon()
        .start()
        .await;
    let mut session: Option<String> = None;
    let mut accepted = 0;
    let mut refused = 0;
    for round in 0..3 {
        let (mut client, id) = stack.client(session.as_deref()).await;
        session = Some(id);
        for i in 0..PER_CONNECTION {
            let rid = format!("c{round}-{i}");
            client
                .send(
                    json!({"op": "call_tool", "request_id": rid, "name": "test_echo",
                    "arguments": {"n": i}}),
                )
                .await;
            let first = loop {
                let v = client.recv().await;
                if v["request_id"] == rid.as_str() && v["op"] != "progress" {
                    break v;
                }
            };
            if first["op"] == "call_tool_ack" {
                accepted += 1;
            } else {
                assert_eq!(first["error"]["code"], "OVER_CAPACITY", "{first}");
                refused += 1;
            }
        }
        // Closed right after the answers, the calls still queued.
        drop(client);
    }
    assert_eq!(accepted, CAP, "accepted calls");
    assert_eq!(refused, 3 * PER_CONNECTION - CAP, "refused calls");
    let counts = stack.queue("tool_calls").counts().await.unwrap();
    assert_eq!(counts.queued as usize, CAP, "{counts:?}");

    // A worker runs them: the session has room again.
    stack.add_worker();
    let queue = stack.queue("tool_calls");
    let drained = exai_tests::wait_until(exai_tests::stack::WAIT, || async {
        let c = queue.counts().await.unwrap();
        c.completed as usize == CAP && c.queued == 0 && c.running == 0
    })
    .await;
    assert!(drained, "the worker ran the session's calls");
    let (mut client, _) = stack.client(session.as_deref()).await;
    let (res, _) = client
        .call("again", "test_echo", json!({"again": true}))
        .await;
    assert!(
        res.get("error").is_none(),
        "room again after the jobs finished: {res}"
    );
}

/// Calls enqueued with a 1 s deadline while no worker runs, their client gone: once the
/// deadline has passed a worker takes them, ends them expired without running them, and a
/// reconnecting client is told so by `get_result` and `job_status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_past_their_deadline_end_expired() {
    let mut stack = TestStack::builder("session_expired_calls")
        .env("EXAI_WS_CALL_TIMEOUT_SECS", "1")
        .daemon()
        .start()
        .await;
    let (mut client, session) = stack.client(None).await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        let rid = format!("late-{i}");
        client
            .send(
                json!({"op": "call_tool", "request_id": rid, "name": "test_echo",
                "arguments": {"n": i}}),
            )
            .await;
        let (ack, _) = client.until("call_tool_ack", &rid).await;
        jobs.push((rid, ack["job_id"].as_str().unwrap().to_owned()));
    }
    drop(client);

    // Past every deadline (the jobs carry them), then a worker.
    let mut deadline = 0;
    for (_, job_id) in &jobs {
        let info = stack.job(job_id).await.expect("the job is queued");
        let job: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
        deadline = deadline.max(job["deadline_ms"].as_u64().expect("a deadline"));
    }
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let passed =
        exai_tests::wait_until(exai_tests::stack::WAIT, || async { now_ms() > deadline }).await;
    assert!(passed);
    stack.add_worker();

    let (mut client, _) = stack.client(Some(&session)).await;
    for (rid, job_id) in &jobs {
        assert!(
            stack
                .wait_state(job_id, exai_shared::queue::JobState::Dead)
                .await,
            "{job_id} ended"
        );
        let info = stack.job(job_id).await.unwrap();
        assert!(info.result.is_none(), "the expired call ran: {info:?}");
        assert!(
            info.attempts <= 1,
            "attempts burnt on a dead call: {info:?}"
        );
        let res = client.op("get_result", rid).await;
        assert_eq!(res["op"], "call_tool_res", "{res}");
        assert_eq!(res["error"]["code"], "TIMEOUT", "{res}");
        assert_eq!(res["error"]["details"]["expired"], true, "{res}");
        assert!(
            res["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expired"),
            "{res}"
        );
        let status = client.op("job_status", rid).await;
        assert_eq!(status["state"], "expired", "{status}");
    }
}
