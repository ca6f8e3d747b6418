//! Privilege separation at the daemon's front door, each case against a real `exai-daemon`
//! process, a real `exai-worker` and exai-sim on real Redis and Postgres:
//!
//! - a `file_id` that is not `^[A-Za-z0-9_-]{1,128}$` (`.`, `..`, `a/b`, 129 characters) is a
//!   `VALIDATION_ERROR` naming the field, in every tool that takes file ids, and never reaches
//!   exai-sim; a job that carries one anyway (enqueued past the daemon) is refused by the
//!   worker's Moonshot client before any request;
//! - `kimi_manage_files` `delete`, `cleanup_orphaned` and `cleanup_expired` need
//!   `EXAI_CLIENT_FILE_ADMIN=true`; `list` is open either way;
//! - resuming a session needs the `resume_secret` its `hello_ack` issued: without it, or with
//!   a wrong one, a client gets a fresh session that can neither read the other's results nor
//!   cancel its calls.

use exai_shared::db::UploadStatus;
use exai_shared::protocol::call_job_id;
use exai_shared::queue::JobState;
use exai_tests::daemon::{Client, echoed, result_text};
use exai_tests::{ChildGuard, TestStack};
use serde_json::{Value, json};

/// Sim routes that act on one Moonshot file by id.
const FILE_ID_ROUTES: [&str; 3] = [
    "moonshot.files.get",
    "moonshot.files.delete",
    "moonshot.files.content",
];

/// Requests exai-sim saw on the routes that take a file id.
fn file_id_requests(stack: &TestStack) -> Vec<String> {
    stack
        .sim()
        .requests()
        .iter()
        .filter(|r| FILE_ID_ROUTES.contains(&r.route) || r.method == "DELETE")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// A stack with the sim, a database, upload roots, a daemon process and a worker process that
/// serves every queue (the tool calls and the storage pushes).
async fn stack(test: &str, env: &[(&str, &str)]) -> (TestStack, ChildGuard) {
    let stack = TestStack::builder(test)
        .uploads()
        .envs(env)
        .daemon()
        .start()
        .await;
    let worker = stack.spawn_worker(&[]);
    (stack, worker)
}

/// The error of a refused call: its code and the failing path.
fn refused(res: &Value) -> (String, String) {
    let error = &res["error"];
    assert!(error.is_object(), "the call was not refused: {res}");
    (
        error["code"].as_str().unwrap_or_default().to_owned(),
        error["details"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Uploads `name` through the daemon and waits until its row is completed; returns its file id.
async fn upload(stack: &TestStack, client: &mut Client, name: &str) -> String {
    let path = stack.write_file(name, b"privileged bytes");
    let (res, _) = client
        .call(
            &format!("up-{name}"),
            "kimi_upload_files",
            json!({"files": [path.display().to_string()]}),
        )
        .await;
    let items: Value = serde_json::from_str(&result_text(&res)).unwrap();
    let file_id = items[0]["file_id"].as_str().unwrap().to_owned();
    stack.wait_status(&file_id, UploadStatus::Completed).await;
    file_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_ids_that_are_not_one_plain_segment_never_reach_the_provider() {
    let (stack, _worker) = stack("privs-file-id", &[("EXAI_CLIENT_FILE_ADMIN", "true")]).await;
    let (mut client, _) = stack.client(None).await;
    let long = "a".repeat(129);
    let mut n = 0;
    for bad in [".", "..", "a/b", long.as_str()] {
        let calls = [
            ("kimi_download_file", json!({"file_id": bad}), "/file_id"),
            (
                "kimi_manage_files",
                json!({"operation": "delete", "file_id": bad}),
                "/file_id",
            ),
            (
                "kimi_manage_files",
                json!({"operation": "delete", "file_id": bad, "dry_run": true}),
                "/file_id",
            ),
            (
                "kimi_chat_with_files",
                json!({"prompt": "p", "file_ids": ["fine", bad]}),
                "/file_ids/1",
            ),
            (
                "chat",
                json!({"prompt": "p", "file_ids": [bad]}),
                "/file_ids/0",
            ),
        ];
        for (tool, args, path) in calls {
            n += 1;
            let (res, _) = client.call(&format!("bad-{n}"), tool, args).await;
            let (code, at) = refused(&res);
            assert_eq!(code, "VALIDATION_ERROR", "{tool} {bad:?}: {res}");
            assert_eq!(at, path, "{tool} {bad:?}: {res}");
        }
    }
    // A well-formed call after them runs: the refused ones were never enqueued, and exai-sim
    // saw no request on a route that takes a file id.
    let (res, _) = client
        .call("list", "kimi_manage_files", json!({"operation": "list"}))
        .await;
    result_text(&res);
    assert_eq!(file_id_requests(&stack), Vec::<String>::new());

    // Defence in depth: a job that carries `..` past the daemon (written to the queue
    // directly) fails in the worker's Moonshot client; `DELETE /v1/files` is never sent.
    let err = stack
        .call(
            "kimi_manage_files",
            json!({"operation": "delete", "file_id": ".."}),
        )
        .await
        .unwrap_err();
    assert!(err.contains("file_id"), "{err}");
    assert_eq!(file_id_requests(&stack), Vec::<String>::new());
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_files_needs_client_file_admin() {
    let (stack, worker) = stack("privs-file-admin-off", &[]).await;
    let (mut client, _) = stack.client(None).await;
    let file_id = upload(&stack, &mut client, "keep.txt").await;
    let removing = [
        json!({"operation": "delete", "file_id": file_id}),
        json!({"operation": "delete", "file_id": file_id, "dry_run": true}),
        json!({"operation": "cleanup_orphaned"}),
        json!({"operation": "cleanup_expired", "dry_run": true}),
    ];
    for (i, args) in removing.into_iter().enumerate() {
        let (res, _) = client
            .call(&format!("rm-{i}"), "kimi_manage_files", args.clone())
            .await;
        let (code, path) = refused(&res);
        assert_eq!(code, "VALIDATION_ERROR", "{args}: {res}");
        assert_eq!(path, "/operation", "{args}: {res}");
        let message = res["error"]["message"].as_str().unwrap();
        assert!(message.contains("EXAI_CLIENT_FILE_ADMIN"), "{message}");
    }
    // Listing stays open, and the file is still there.
    let (res, _) = client
        .call("list", "kimi_manage_files", json!({"operation": "list"}))
        .await;
    let list: Value = serde_json::from_str(&result_text(&res)).unwrap();
    assert_eq!(list["files"][0]["file_id"], file_id.as_str(), "{list}");
    assert_eq!(stack.moonshot_files().len(), 1);
    assert_eq!(file_id_requests(&stack), Vec::<String>::new());
    assert_eq!(stack.row(&file_id).await.status, UploadStatus::Completed);
    drop(worker);
    stack.cleanup().await;

    let (stack, _worker) = stack_with_admin().await;
    let (mut client, _) = stack.client(None).await;
    let file_id = upload(&stack, &mut client, "remove.txt").await;
    let (res, _) = client
        .call(
            "rm",
            "kimi_manage_files",
            json!({"operation": "delete", "file_id": file_id}),
        )
        .await;
    let done: Value = serde_json::from_str(&result_text(&res)).unwrap();
    assert_eq!(done["deleted_from_moonshot"], true, "{done}");
    assert!(stack.moonshot_files().is_empty());
    assert_eq!(stack.row(&file_id).await.status, UploadStatus::Deleted);
    let (res, _) = client
        .call(
            "sweep",
            "kimi_manage_files",
            json!({"operation": "cleanup_orphaned", "dry_run": true}),
        )
        .await;
    let report: Value = serde_json::from_str(&result_text(&res)).unwrap();
    assert_eq!(report["dry_run"], true, "{report}");
    stack.cleanup().await;
}

/// A stack whose daemon lets clients remove files.
async fn stack_with_admin() -> (TestStack, ChildGuard) {
    stack("privs-file-admin-on", &[("EXAI_CLIENT_FILE_ADMIN", "true")]).await
}

/// Says hello on a new connection with `session_id` and `resume_secret` as given (either may
/// be absent); returns the client and its hello_ack.
async fn hello_as(stack: &TestStack, session: &str, secret: Option<&str>) -> (Client, Value) {
    let mut c = stack.connect().await;
    let ack = c
        .hello(json!({"op": "hello", "token": exai_tests::daemon::TOKEN,
                      "session_id": session, "resume_secret": secret}))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    (c, ack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_a_session_needs_its_resume_secret() {
    let mut stack = TestStack::with_daemon("privs-resume", &[], 0).await;
    // The owner: a fresh session and its secret; two calls that wait (no worker yet).
    let mut owner = stack.connect().await;
    let ack = owner
        .hello(json!({"op": "hello", "token": exai_tests::daemon::TOKEN}))
        .await;
    let session = ack["session_id"].as_str().unwrap().to_owned();
    let secret = ack["resume_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 32, "{ack}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{ack}");
    for r in ["r-1", "r-2"] {
        owner
            .send(
                json!({"op": "call_tool", "request_id": r, "name": "test_echo",
                         "arguments": {"who": "owner", "r": r}}),
            )
            .await;
        assert_eq!(
            owner.until("call_tool_ack", r).await.0["op"],
            "call_tool_ack"
        );
    }
    drop(owner);
    let r1 = call_job_id(&session, "r-1");
    let r2 = call_job_id(&session, "r-2");

    // Intruders that know the session id: no secret, a wrong one, an empty one.
    let wrong = "0".repeat(32);
    for (n, given) in [None, Some(wrong.as_str()), Some("")]
        .into_iter()
        .enumerate()
    {
        let (mut c, ack) = hello_as(&stack, &session, given).await;
        assert_ne!(ack["session_id"], session.as_str(), "{given:?}: {ack}");
        assert_ne!(ack["resume_secret"], secret.as_str(), "{given:?}: {ack}");
        assert_eq!(c.op("get_result", "r-1").await["state"], "unknown");
        c.send(json!({"op": "cancel", "request_id": "r-2"})).await;
        let (res, _) = c.until("error", "r-2").await;
        assert_eq!(res["error"]["code"], "NOT_FOUND", "intruder {n}: {res}");
        let status = c.op("job_status", "r-1").await;
        assert!(
            status["state"] == "unknown" || status["error"]["code"] == "NOT_FOUND",
            "intruder {n}: {status}"
        );
    }
    assert_eq!(stack.job(&r2).await.unwrap().state, JobState::Queued);

    // The owner, with its secret, resumes: it cancels r-2 and collects r-1.
    let (mut c, ack) = hello_as(&stack, &session, Some(&secret)).await;
    assert_eq!(ack["session_id"], session.as_str(), "{ack}");
    assert_eq!(ack["resume_secret"], secret.as_str(), "{ack}");
    c.send(json!({"op": "cancel", "request_id": "r-2"})).await;
    assert_eq!(c.until("cancelled", "r-2").await.0["was"], "queued");
    stack.add_worker();
    assert!(stack.wait_state(&r1, JobState::Completed).await);
    let (mut other, _) = hello_as(&stack, &session, None).await;
    assert_eq!(other.op("get_result", "r-1").await["state"], "unknown");
    let (res, _) = c
        .call("r-1", "test_echo", json!({"who": "owner", "r": "r-1"}))
        .await;
    assert_eq!(echoed(&res)["who"], "owner");
    let res = c.op("get_result", "r-1").await;
    assert_eq!(echoed(&res)["r"], "r-1");
    assert_eq!(stack.job(&r2).await.unwrap().state, JobState::Cancelled);

    // A session id nobody holds is still taken as named, with a secret of its own.
    let (_c, ack) = hello_as(&stack, "named-session_1", None).await;
    assert_eq!(ack["session_id"], "named-session_1");
    assert_eq!(ack["resume_secret"].as_str().unwrap().len(), 32);
    stack.cleanup().await;
}
