//! The provider tools end to end: `chat` streaming through job events, the fleet-wide provider
//! semaphores under load (the emulator records the peak concurrency it saw), GLM, and
//! `kimi_manage_files`.

use exai_shared::db::UploadStatus;
use exai_shared::events::JobEvent;
use exai_shared::queue::{self, JobState};
use exai_tests::TestStack;
use exai_tests::daemon::{Client, result_text};
use exai_tests::stack::WAIT;
use exai_tests::uploads::tool_outcome;
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_streams_its_answer_as_chunk_events() {
    let mut stack = TestStack::uploads("tools-stream", &[]).await;
    stack
        .sim()
        .configure(json!({"stream_chunk_delay_ms": 5}))
        .unwrap();
    stack.start_worker();
    let id = "chat-stream-1";
    // Subscribe before the job exists, so no chunk can be missed.
    let client = redis::Client::open(exai_tests::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(stack.keys.job_events(id)).await.unwrap();
    stack
        .enqueue_tool(
            id,
            "chat",
            json!({"prompt": "the quick brown fox jumps over the lazy dog"}),
        )
        .await;
    let mut chunks = Vec::new();
    let mut messages = pubsub.on_message();
    let collected = tokio::time::timeout(WAIT, async {
        while let Some(msg) = messages.next().await {
            let payload: String = msg.get_payload().unwrap();
            match serde_json::from_str::<JobEvent>(&payload).unwrap() {
                JobEvent::Chunk { chunk } => chunks.push(chunk),
                JobEvent::Finished => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(collected.is_ok(), "no Finished event");
    drop(messages);
    let r = stack.finished(queue::TOOL_CALLS, id).await;
    let text = tool_outcome(r).unwrap();
    assert!(chunks.len() > 5, "{chunks:?}");
    assert_eq!(chunks.concat(), text);
    assert!(
        text.contains("the quick brown fox jumps over the lazy dog"),
        "{text}"
    );
    // The request asked for a stream.
    let chat = stack
        .sim()
        .requests()
        .into_iter()
        .find(|r| r.route == "moonshot.chat")
        .unwrap();
    assert_eq!(
        chat.detail.as_ref().unwrap()["stream"],
        true,
        "{:?}",
        chat.detail
    );
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_chats_never_exceed_a_provider_limit_of_three() {
    let mut stack = TestStack::uploads(
        "tools-limit",
        &[
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "3"),
            ("KIMI_SEMAPHORE_TIMEOUT", "30"),
        ],
    )
    .await;
    stack
        .sim()
        .configure(json!({"chat_latency_ms": 150}))
        .unwrap();
    // Two worker processes' worth of slots: one in process, one spawned.
    stack.start_worker();
    let other = stack.spawn_worker(&["--queues", "tool_calls", "--concurrency", "16"]);
    let ids: Vec<String> = (0..20).map(|i| format!("chat-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        stack
            .enqueue_tool(id, "chat", json!({"prompt": format!("question {i}")}))
            .await;
    }
    for (i, id) in ids.iter().enumerate() {
        let r = stack.finished(queue::TOOL_CALLS, id).await;
        assert_eq!(r.attempts, 1, "waiting for a permit burnt an attempt");
        let text = tool_outcome(r).unwrap();
        assert!(text.contains(&format!("question {i}")), "{text}");
    }
    let chat = &stack.sim().state()["chat"];
    assert_eq!(chat["peak"], 3, "{chat}");
    assert_eq!(chat["completed"], 20, "{chat}");
    other.kill_and_wait().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_without_a_permit_in_time_is_put_back_without_burning_an_attempt() {
    let mut stack = TestStack::uploads(
        "tools-putback",
        &[
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "1"),
            ("KIMI_SEMAPHORE_TIMEOUT", "0.05"),
        ],
    )
    .await;
    stack
        .sim()
        .configure(json!({"chat_latency_ms": 300}))
        .unwrap();
    stack.start_worker();
    let ids: Vec<String> = (0..4).map(|i| format!("pb-{i}")).collect();
    for id in &ids {
        stack
            .enqueue_tool(id, "chat", json!({"prompt": "wait"}))
            .await;
    }
    for id in &ids {
        let r = stack.finished(queue::TOOL_CALLS, id).await;
        assert_eq!(r.state, JobState::Completed, "{:?}", r.error);
        assert_eq!(r.attempts, 1, "{id}: a put-back burnt an attempt");
    }
    assert_eq!(stack.sim().state()["chat"]["peak"], 1);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn glm_models_run_on_glm() {
    let mut stack = TestStack::uploads("tools-glm", &[("EXAI_WS_GLM_MAX_INFLIGHT", "1")]).await;
    stack.start_worker();
    let text = stack
        .call(
            "chat",
            json!({"prompt": "hello glm", "model": "glm-4.5", "system_prompt": "be brief", "temperature": 0.2}),
        )
        .await
        .unwrap();
    assert!(text.contains("hello glm"), "{text}");
    let req = stack
        .sim()
        .requests()
        .into_iter()
        .find(|r| r.route == "moonshot.chat")
        .unwrap();
    let body = req.detail.unwrap();
    assert_eq!(body["model"], "glm-4.5");
    assert_eq!(body["body"]["messages"][0]["role"], "system");
    assert_eq!(body["body"]["temperature"], 0.2);
    // A Moonshot file cannot be read by a GLM model.
    let err = stack
        .call(
            "chat",
            json!({"prompt": "x", "model": "glm-4.5", "file_ids": ["abc"]}),
        )
        .await
        .unwrap_err();
    assert!(err.contains("need a Kimi model"), "{err}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_auth_failure_is_permanent_and_clear() {
    let mut stack = TestStack::uploads("tools-auth", &[("KIMI_API_KEY", "sk-wrong")]).await;
    stack.start_worker();
    let id = "auth-1";
    stack
        .enqueue_tool(id, "chat", json!({"prompt": "hi"}))
        .await;
    let r = stack.finished(queue::TOOL_CALLS, id).await;
    assert_eq!(r.state, JobState::Dead);
    assert_eq!(r.attempts, 1);
    let error = r.error.unwrap();
    assert!(
        error.contains("401") && error.contains("Invalid Authentication"),
        "{error}"
    );
    assert!(!error.contains("sk-wrong"));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kimi_manage_files_lists_and_deletes() {
    let mut stack = TestStack::uploads("tools-manage", &[]).await;
    stack.start_worker();
    let path = stack.write_file("m.txt", b"manage me");
    let out = stack
        .call(
            "kimi_upload_files",
            json!({"files": [path.display().to_string()]}),
        )
        .await
        .unwrap();
    let items: Value = serde_json::from_str(&out).unwrap();
    let file_id = items[0]["file_id"].as_str().unwrap().to_owned();
    stack.wait_status(&file_id, UploadStatus::Completed).await;

    let list: Value = serde_json::from_str(
        &stack
            .call("kimi_manage_files", json!({"operation": "list"}))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(list["total"], 1);
    assert_eq!(list["files"][0]["file_id"], file_id.as_str());
    assert_eq!(list["files"][0]["recorded"]["status"], "completed");

    let dry: Value = serde_json::from_str(
        &stack
            .call(
                "kimi_manage_files",
                json!({"operation": "delete", "file_id": file_id, "dry_run": true}),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(dry["would_delete_from_moonshot"], true);
    assert_eq!(stack.moonshot_files().len(), 1);

    let done: Value = serde_json::from_str(
        &stack
            .call(
                "kimi_manage_files",
                json!({"operation": "delete", "file_id": file_id}),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(done["deleted_from_moonshot"], true);
    assert_eq!(done["storage_object_deleted"], true);
    assert!(stack.moonshot_files().is_empty());
    assert!(stack.object(&format!("kimi-uploads/{file_id}")).is_none());
    assert_eq!(stack.row(&file_id).await.status, UploadStatus::Deleted);

    // The cleanup operations run the orphan cleanup's sweeps: a Moonshot file no row holds,
    // two days old (past the default grace period), is found by `cleanup_orphaned` only.
    let providers = exai_shared::providers::Providers::from_config(&stack.config()).unwrap();
    let orphan_path = stack.write_file("orphan.txt", b"no row holds me");
    let orphan = providers
        .moonshot
        .upload_file(&orphan_path, "orphan.txt", 15, "file-extract", None)
        .await
        .unwrap();
    stack
        .sim()
        .backdate(
            std::time::Duration::from_secs(2 * 86_400),
            &[&orphan.id],
            &[],
        )
        .unwrap();
    let manage = |op: &'static str, dry_run: bool| {
        let stack = &stack;
        async move {
            let out = stack
                .call(
                    "kimi_manage_files",
                    json!({"operation": op, "dry_run": dry_run}),
                )
                .await
                .unwrap();
            serde_json::from_str::<Value>(&out).unwrap()
        }
    };
    let expired = manage("cleanup_expired", true).await;
    assert_eq!(expired["dry_run"], true, "{expired}");
    assert_eq!(
        expired["sweeps"]["moonshot_orphans"]["found"], 0,
        "{expired}"
    );
    let dry = manage("cleanup_orphaned", true).await;
    assert_eq!(dry["sweeps"]["moonshot_orphans"]["removed"], 1, "{dry}");
    assert_eq!(stack.moonshot_files().len(), 1, "a dry run removes nothing");
    let done = manage("cleanup_orphaned", false).await;
    assert_eq!(done["dry_run"], false, "{done}");
    assert_eq!(
        done["sweeps"]["moonshot_orphans"],
        dry["sweeps"]["moonshot_orphans"]
    );
    assert!(stack.moonshot_files().is_empty());
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_streaming_reaches_a_websocket_client_as_stream_chunk_frames() {
    let mut stack = TestStack::uploads("tools-ws-stream", &[]).await;
    stack
        .sim()
        .configure(json!({"stream_chunk_delay_ms": 5}))
        .unwrap();
    stack.start_worker();
    let daemon = stack.spawn_daemon().await;
    let (mut client, _) = Client::hello_at(&daemon.url(), None).await;
    let (res, frames) = client
        .call(
            "r-1",
            "chat",
            json!({"prompt": "one two three four five six"}),
        )
        .await;
    let text = result_text(&res);
    let chunks: Vec<&str> = frames
        .iter()
        .filter(|f| f["op"] == "stream_chunk")
        .map(|f| f["chunk"].as_str().unwrap())
        .collect();
    assert!(chunks.len() > 5, "{frames:?}");
    assert_eq!(chunks.concat(), text);
    assert!(text.contains("one two three four five six"), "{text}");
    drop(daemon);
    stack.cleanup().await;
}
