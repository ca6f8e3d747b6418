//! The upload pipeline end to end: `kimi_upload_*` tool calls → Moonshot (exai-sim) → a
//! `provider_file_uploads` row in a real Postgres → a `storage_push` job → Supabase Storage
//! (exai-sim), with real Redis queues and semaphores, and workers in process or as real
//! processes (crash tests). Faults are injected into the emulator.

use base64::Engine as _;
use exai_shared::db::UploadStatus;
use exai_shared::jobs::ToolCallJob;
use exai_shared::protocol::call_job_id;
use exai_shared::queue::{self, JobState};
use exai_tests::daemon::{Client, result_text};
use exai_tests::stack::{SIM_KEY, WAIT};
use exai_tests::uploads::{sha256, tool_outcome};
use exai_tests::{TestStack, send_signal, wait_until};
use serde_json::{Value, json};

/// Deterministic pseudo-random bytes.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Uploads one file by path; returns the per-file answer.
async fn upload_path(stack: &TestStack, path: &std::path::Path) -> Value {
    let text = stack
        .call(
            "kimi_upload_files",
            json!({"files": [path.display().to_string()]}),
        )
        .await
        .expect("upload succeeds");
    let items: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(items.as_array().unwrap().len(), 1, "{items}");
    items[0].clone()
}

async fn remove_faults(stack: &TestStack) {
    let resp = reqwest::Client::new()
        .delete(format!("{}/_sim/faults", stack.sim().url()))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_reaches_moonshot_and_storage_with_the_same_bytes() {
    let mut stack = TestStack::uploads("up-basic", &[]).await;
    stack.start_worker();
    let data = bytes(300_000, 1);
    let path = stack.write_file("docs/report.pdf", &data);

    let item = upload_path(&stack, &path).await;
    let file_id = item["file_id"].as_str().unwrap().to_owned();
    assert_eq!(item["filename"], "report.pdf");
    assert_eq!(item["sha256"], sha256(&data));
    assert_eq!(item["size_bytes"], data.len());
    assert_eq!(item["deduplicated"], false);
    assert!(
        ["storage_pending", "completed"].contains(&item["storage_status"].as_str().unwrap()),
        "{item}"
    );

    // Moonshot has the file, with the same bytes.
    assert_eq!(stack.moonshot_files(), [(file_id.clone(), sha256(&data))]);
    // The push completes: the row links the object, whose bytes are the file's.
    let row = stack.wait_status(&file_id, UploadStatus::Completed).await;
    let object_path = format!("kimi-uploads/{file_id}");
    assert_eq!(row.storage_path.as_deref(), Some(object_path.as_str()));
    assert!(row.supabase_file_id.is_some());
    assert_eq!(row.mime_type.as_deref(), Some("application/pdf"));
    assert_eq!(row.reference_count, 1);
    let object = stack.object(&object_path).expect("the object exists");
    assert_eq!(object["sha256"], sha256(&data));
    assert_eq!(object["size"], data.len());
    // The worker created the bucket, private.
    let bucket = &stack.sim().state()["supabase"]["buckets"]["user-files"];
    assert_eq!(bucket["public"], false, "{bucket}");

    // The retrieval test of the seed: the durable copy comes back byte for byte.
    let text = stack
        .call("kimi_download_file", json!({"file_id": file_id}))
        .await
        .unwrap();
    let got: Value = serde_json::from_str(&text).unwrap();
    let content = base64::engine::general_purpose::STANDARD
        .decode(got["content_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(content, data);
    assert_eq!(got["sha256"], sha256(&data));
    // And by sha256.
    let text = stack
        .call("kimi_download_file", json!({"sha256": sha256(&data)}))
        .await
        .unwrap();
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["file_id"], file_id);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_bytes_twice_are_one_moonshot_file_with_two_references() {
    let mut stack = TestStack::uploads("up-dedup", &[]).await;
    stack.start_worker();
    let data = bytes(10_000, 2);
    let path = stack.write_file("a.txt", &data);
    let first = upload_path(&stack, &path).await;
    // The same bytes again, inline and under another name.
    let text = stack
        .call(
            "kimi_upload_bytes",
            json!({
                "filename": "copy-of-a.txt",
                "content_base64": base64::engine::general_purpose::STANDARD.encode(&data),
            }),
        )
        .await
        .unwrap();
    let second: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(second["file_id"], first["file_id"]);
    assert_eq!(second["deduplicated"], true);
    assert_eq!(second["filename"], "copy-of-a.txt");
    assert_eq!(stack.moonshot_files().len(), 1);
    assert_eq!(stack.requests("moonshot.files.upload"), 1);
    let rows = stack.rows().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].reference_count, 2);
    let file_id = first["file_id"].as_str().unwrap();
    stack.wait_status(file_id, UploadStatus::Completed).await;
    assert_eq!(stack.requests("supabase.object.upload"), 1);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_stages_inline_bytes_and_enqueues_only_their_hash() {
    let stack = TestStack::uploads("up-daemon", &[("EXAI_MAX_UPLOAD_BYTES", "65536")]).await;
    let worker = stack.spawn_worker(&["--concurrency", "4"]);
    let daemon = stack.spawn_daemon().await;
    let (mut c, session) = Client::hello_at(&daemon.url(), None).await;
    let staging = exai_shared::staging::Staging::from_config(&stack.config().uploads);
    let encode = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);

    let data = bytes(50_000, 31);
    let (res, _) = c
        .call(
            "b-1",
            "kimi_upload_bytes",
            json!({"filename": "notes/inline.txt", "content_base64": encode(&data)}),
        )
        .await;
    let item: Value = serde_json::from_str(&result_text(&res)).unwrap();
    assert_eq!(item["filename"], "inline.txt");
    assert_eq!(item["sha256"], sha256(&data));
    assert_eq!(item["size_bytes"], data.len());
    // The job carried the blob's hash, not the bytes.
    let job = stack
        .queue(queue::TOOL_CALLS)
        .job(&call_job_id(&session, "b-1"))
        .await
        .unwrap()
        .unwrap();
    assert!(job.payload.len() < 1024, "{} bytes", job.payload.len());
    let payload: ToolCallJob = serde_json::from_slice(&job.payload).unwrap();
    assert!(payload.arguments.get("content_base64").is_none());
    let staged = payload.staged.expect("a staged reference");
    assert_eq!(staged.sha256, sha256(&data));
    assert_eq!(staged.size_bytes, data.len() as u64);
    // The blob the daemon wrote is the one the worker uploaded and pushed.
    let blob = staging
        .get(&staged.sha256, Some(staged.size_bytes))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&blob.path).unwrap(), data);
    let file_id = item["file_id"].as_str().unwrap();
    assert_eq!(
        stack.moonshot_files(),
        [(file_id.to_owned(), sha256(&data))]
    );
    stack.wait_status(file_id, UploadStatus::Completed).await;
    let object = stack.object(&format!("kimi-uploads/{file_id}")).unwrap();
    assert_eq!(object["sha256"], sha256(&data));

    // Over EXAI_MAX_UPLOAD_BYTES, not base64, or no usable name: refused by the daemon before
    // anything is staged or enqueued.
    let blobs = || walk_files(&staging.dir().join("blobs"));
    let before = blobs();
    let cases = [
        (
            "b-2",
            json!({"filename": "big.bin", "content_base64": encode(&bytes(70_000, 32))}),
            "/content_base64",
            "over the upload limit of 65536 bytes",
        ),
        (
            "b-3",
            json!({"filename": "x.txt", "content_base64": "not base64!"}),
            "/content_base64",
            "not valid base64",
        ),
        (
            "b-4",
            json!({"filename": "..", "content_base64": encode(b"x")}),
            "/filename",
            "not a usable file name",
        ),
    ];
    for (request_id, args, path, message) in cases {
        let (res, _) = c.call(request_id, "kimi_upload_bytes", args).await;
        assert_eq!(res["error"]["code"], "VALIDATION_ERROR", "{res}");
        assert_eq!(res["error"]["details"]["path"], path, "{res}");
        let text = res["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{text}");
        assert!(
            stack
                .queue(queue::TOOL_CALLS)
                .job(&call_job_id(&session, request_id))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(blobs(), before, "nothing was staged");
    assert_eq!(stack.requests("moonshot.files.upload"), 1);
    drop(daemon);
    worker.kill_and_wait().await;
    stack.cleanup().await;
}

/// Every file below `dir`, sorted.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_multi_file_call_counts_each_file_once() {
    let mut stack = TestStack::uploads("up-refs", &[]).await;
    stack.start_worker();
    let (a, b, c) = (bytes(3_000, 21), bytes(3_000, 22), bytes(3_000, 23));
    let (pa, pb, pc) = (
        stack.write_file("a.txt", &a),
        stack.write_file("b.txt", &b),
        stack.write_file("c.txt", &c),
    );
    // An earlier call holds c.
    let earlier = upload_path(&stack, &pc).await;
    // The next call records a and b, then fails on c: Moonshot answers its check of c's file
    // with a 500 once, so the whole call runs again.
    stack
        .sim()
        .add_fault(
            json!({"route": "moonshot.files.get", "count": 1, "action": "fail", "status": 500}),
        )
        .unwrap();
    let files: Vec<String> = [&pa, &pb, &pc]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    stack
        .enqueue_tool("refs-call", "kimi_upload_files", json!({"files": files}))
        .await;
    let r = stack.finished(queue::TOOL_CALLS, "refs-call").await;
    assert_eq!(r.attempts, 2, "the call ran twice");
    let text = tool_outcome(r).expect("the second attempt succeeds");
    let items: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(items[2]["file_id"], earlier["file_id"]);
    assert_eq!(
        stack.requests("moonshot.files.upload"),
        3,
        "each content uploaded once"
    );

    // a and b were recorded by the first attempt and found again by the second: one reference
    // each, the call's. c has two: the earlier call's and this one's.
    for (data, expected) in [(&a, 1), (&b, 1), (&c, 2)] {
        let row = exai_shared::db::find_live(stack.pool(), "kimi", &sha256(data))
            .await
            .unwrap()
            .expect("a live row");
        assert_eq!(row.reference_count, expected, "{}", row.provider_file_id);
    }
    // Another call of the same content is another reference.
    stack
        .call(
            "kimi_upload_files",
            json!({"files": [pa.display().to_string()]}),
        )
        .await
        .unwrap();
    let row = exai_shared::db::find_live(stack.pool(), "kimi", &sha256(&a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.reference_count, 2, "another call is another reference");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_failing_five_times_then_recovering_completes_after_retries() {
    let mut stack = TestStack::uploads("up-retry", &[]).await;
    stack
        .sim()
        .add_fault(
            json!({"route": "supabase.object.upload", "count": 5, "action": "fail", "status": 503}),
        )
        .unwrap();
    stack.start_worker();
    let data = bytes(50_000, 3);
    let item = upload_path(&stack, &stack.write_file("r.bin", &data)).await;
    let file_id = item["file_id"].as_str().unwrap();
    let row = stack.wait_status(file_id, UploadStatus::Completed).await;
    assert_eq!(stack.requests("supabase.object.upload"), 6);
    assert_eq!(row.storage_attempts, 6);
    let object = stack.object(&format!("kimi-uploads/{file_id}")).unwrap();
    assert_eq!(object["sha256"], sha256(&data));
    // The retries were jobs of the queue: one push job, six attempts.
    let push = stack
        .finished(queue::STORAGE_PUSH, &format!("push-{}", row.id))
        .await;
    assert_eq!(push.state, JobState::Completed);
    assert_eq!(push.attempts, 6);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_down_past_the_budget_fails_the_row_keeps_moonshot_and_a_redrive_recovers() {
    let mut stack =
        TestStack::uploads("up-budget", &[("EXAI_STORAGE_RETRY_MAX_ATTEMPTS", "3")]).await;
    stack
        .sim()
        .add_fault(json!({"route": "supabase.object.upload", "action": "fail", "status": 503}))
        .unwrap();
    stack.start_worker();
    let data = bytes(20_000, 4);
    let item = upload_path(&stack, &stack.write_file("down.txt", &data)).await;
    let file_id = item["file_id"].as_str().unwrap().to_owned();
    let row = stack
        .wait_status(&file_id, UploadStatus::StorageFailed)
        .await;
    assert_eq!(stack.requests("supabase.object.upload"), 3);
    assert_eq!(row.storage_attempts, 3);
    let error = row.last_error.clone().unwrap();
    assert!(error.contains("503"), "{error}");
    assert!(error.contains("retry budget spent"), "{error}");
    // Moonshot's success is not undone.
    assert_eq!(stack.moonshot_files(), [(file_id.clone(), sha256(&data))]);
    let push = stack
        .finished(queue::STORAGE_PUSH, &format!("push-{}", row.id))
        .await;
    assert_eq!(push.state, JobState::Dead);

    // Storage comes back; an operator re-drives the failed rows.
    remove_faults(&stack).await;
    let (ok, out) = stack.worker_command(&["storage", "redrive", "--all"]).await;
    assert!(ok, "{out}");
    assert!(out.contains(&row.id.to_string()), "{out}");
    let row = stack.wait_status(&file_id, UploadStatus::Completed).await;
    assert_eq!(row.storage_attempts, 4);
    let object = stack.object(&format!("kimi-uploads/{file_id}")).unwrap();
    assert_eq!(object["sha256"], sha256(&data));
    // Nothing is left to re-drive.
    let (ok, out) = stack.worker_command(&["storage", "redrive", "--all"]).await;
    assert!(ok && out.contains("no storage_failed rows"), "{out}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_time_budget_stops_retries_too() {
    let mut stack = TestStack::uploads(
        "up-time-budget",
        &[
            ("EXAI_STORAGE_RETRY_MAX_ATTEMPTS", "1000"),
            ("EXAI_STORAGE_RETRY_MAX_SECS", "1"),
            ("EXAI_STORAGE_RETRY_BASE_MS", "100"),
        ],
    )
    .await;
    stack
        .sim()
        .add_fault(json!({"route": "supabase.object.upload", "action": "fail", "status": 500}))
        .unwrap();
    stack.start_worker();
    let item = upload_path(&stack, &stack.write_file("t.txt", b"time budget")).await;
    let row = stack
        .wait_status(
            item["file_id"].as_str().unwrap(),
            UploadStatus::StorageFailed,
        )
        .await;
    let attempts = stack.requests("supabase.object.upload");
    assert!((2..=6).contains(&attempts), "{attempts} attempts");
    assert!(row.last_error.unwrap().contains("retry budget spent"));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_attempt_past_kimi_supabase_timeout_is_cut_and_retried() {
    let mut stack = TestStack::uploads("up-timeout", &[("KIMI_SUPABASE_TIMEOUT", "0.3")]).await;
    stack
        .sim()
        .add_fault(json!({"route": "supabase.object.upload", "count": 1, "action": "delay", "delay_ms": 3000}))
        .unwrap();
    stack.start_worker();
    let data = bytes(8_000, 10);
    let item = upload_path(&stack, &stack.write_file("slow.txt", &data)).await;
    let file_id = item["file_id"].as_str().unwrap();
    let row = stack.wait_status(file_id, UploadStatus::Completed).await;
    assert_eq!(row.storage_attempts, 2);
    let push = stack
        .finished(queue::STORAGE_PUSH, &format!("push-{}", row.id))
        .await;
    assert_eq!(push.attempts, 2);
    let object = stack.object(&format!("kimi-uploads/{file_id}")).unwrap();
    assert_eq!(object["sha256"], sha256(&data));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_403_fails_the_row_at_once() {
    let mut stack = TestStack::uploads("up-403", &[]).await;
    stack
        .sim()
        .add_fault(json!({"route": "supabase.object.upload", "action": "fail", "status": 403}))
        .unwrap();
    stack.start_worker();
    let item = upload_path(&stack, &stack.write_file("x.txt", b"forbidden")).await;
    let file_id = item["file_id"].as_str().unwrap();
    let row = stack
        .wait_status(file_id, UploadStatus::StorageFailed)
        .await;
    assert_eq!(stack.requests("supabase.object.upload"), 1);
    assert_eq!(row.storage_attempts, 1);
    let error = row.last_error.unwrap();
    assert!(error.contains("403"), "{error}");
    assert_eq!(stack.moonshot_files().len(), 1);
    // The download tool says why there is no copy.
    let err = stack
        .call("kimi_download_file", json!({"file_id": file_id}))
        .await
        .unwrap_err();
    assert!(err.contains("never reached storage"), "{err}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_sharing_their_row_writes_end_each_row_right_when_one_fails() {
    let mut stack = TestStack::uploads("up-push-batch", &[]).await;
    // Every storage upload is held a while, so the pushes run together and their row writes
    // are committed in batches; the first upload to arrive is refused for good.
    for fault in [
        json!({"route": "supabase.object.upload", "action": "delay", "delay_ms": 300}),
        json!({"route": "supabase.object.upload", "action": "fail", "status": 403, "count": 1}),
    ] {
        stack.sim().add_fault(fault).unwrap();
    }
    stack.start_worker();
    let files: Vec<Vec<u8>> = (0..8u8)
        .map(|i| bytes(3000 + usize::from(i), 40 + i))
        .collect();
    let paths: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let path = stack.write_file(&format!("batch/f{i}.bin"), data);
            path.display().to_string()
        })
        .collect();
    let text = stack
        .call("kimi_upload_files", json!({"files": paths}))
        .await
        .expect("upload succeeds");
    let items: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(items.len(), files.len());

    let mut failed = Vec::new();
    for (item, data) in items.iter().zip(&files) {
        let file_id = item["file_id"].as_str().unwrap();
        let ended = wait_until(WAIT, || async {
            matches!(
                stack.row(file_id).await.status,
                UploadStatus::Completed | UploadStatus::StorageFailed
            )
        })
        .await;
        let row = stack.row(file_id).await;
        assert!(ended, "row of {file_id} never ended: {row:?}");
        assert_eq!(row.storage_attempts, 1, "{row:?}");
        if row.status == UploadStatus::StorageFailed {
            assert!(
                row.last_error.as_deref().unwrap().contains("403"),
                "{row:?}"
            );
            failed.push(file_id.to_owned());
            continue;
        }
        // A completed row names its own object, which holds its file's bytes.
        let path = format!("kimi-uploads/{file_id}");
        assert_eq!(row.storage_path.as_deref(), Some(path.as_str()));
        let object = stack.object(&path).expect("the object exists");
        assert_eq!(object["sha256"], sha256(data));
    }
    assert_eq!(failed.len(), 1, "exactly one push was refused: {failed:?}");
    assert_eq!(stack.requests("supabase.object.upload"), files.len());
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kimi_upload_to_supabase_toggles_the_push() {
    let mut stack = TestStack::uploads("up-toggle", &[("KIMI_UPLOAD_TO_SUPABASE", "false")]).await;
    stack.start_worker();
    let off = upload_path(&stack, &stack.write_file("off.txt", b"not pushed")).await;
    assert_eq!(off["storage_status"], "completed");
    let row = stack.row(off["file_id"].as_str().unwrap()).await;
    assert_eq!(row.status, UploadStatus::Completed);
    assert!(row.storage_path.is_none());
    assert_eq!(stack.requests("supabase.object.upload"), 0);
    let counts = stack.queue(queue::STORAGE_PUSH).counts().await.unwrap();
    assert_eq!(counts.queued + counts.scheduled + counts.completed, 0);
    let err = stack
        .call("kimi_download_file", json!({"file_id": off["file_id"]}))
        .await
        .unwrap_err();
    assert!(err.contains("KIMI_UPLOAD_TO_SUPABASE=false"), "{err}");
    stack.stop_worker().await;

    // Turned back on: the next upload is pushed.
    stack.env.retain(|(k, _)| k != "KIMI_UPLOAD_TO_SUPABASE");
    stack.start_worker();
    let on = upload_path(&stack, &stack.write_file("on.txt", b"pushed")).await;
    let file_id = on["file_id"].as_str().unwrap();
    stack.wait_status(file_id, UploadStatus::Completed).await;
    assert!(stack.object(&format!("kimi-uploads/{file_id}")).is_some());
    assert_eq!(stack.requests("supabase.object.upload"), 1);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_between_moonshot_and_the_row_leaves_one_row_and_a_detectable_orphan() {
    use sqlx::Connection;
    let mut stack = TestStack::uploads(
        "up-crash",
        &[
            ("EXAI_JOB_LEASE_MS", "1000"),
            ("EXAI_SEMAPHORE_LEASE_MS", "1000"),
        ],
    )
    .await;
    let data = bytes(40_000, 5);
    let path = stack.write_file("crash.bin", &data);
    // Hold writes to the table: the worker's upload reaches Moonshot, then its INSERT waits.
    let mut blocker = sqlx::PgConnection::connect(&stack.db().url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE provider_file_uploads IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();

    let worker = stack.spawn_worker(&["--concurrency", "4"]);
    stack
        .enqueue_tool(
            "crash-call",
            "kimi_upload_files",
            json!({"files": [path.display().to_string()]}),
        )
        .await;
    let uploaded = wait_until(WAIT, || async { stack.moonshot_files().len() == 1 }).await;
    assert!(uploaded, "the first attempt never reached Moonshot");
    // The row write is stuck behind the lock.
    let waiting = wait_until(WAIT, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&stack.db().name)
        .fetch_one(stack.pool())
        .await
        .unwrap();
        n > 0
    })
    .await;
    assert!(waiting, "the worker's row write is not waiting on the lock");
    send_signal(worker.pid(), "KILL");
    worker.kill_and_wait().await;
    // The dead worker's session goes with it (Postgres would notice the closed socket later).
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
    )
    .bind(&stack.db().name)
    .execute(stack.pool())
    .await
    .unwrap();
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    drop(blocker);
    assert!(stack.rows().await.is_empty());

    // Another worker re-runs the job once its lease expires.
    stack.start_worker();
    let r = stack.finished(queue::TOOL_CALLS, "crash-call").await;
    let text = tool_outcome(r).expect("the re-run succeeds");
    let item: Value = serde_json::from_str(&text).unwrap();
    let kept = item[0]["file_id"].as_str().unwrap().to_owned();

    let rows = stack.rows().await;
    assert_eq!(rows.len(), 1, "exactly one row: {rows:?}");
    assert_eq!(rows[0].provider_file_id, kept);
    let files = stack.moonshot_files();
    assert_eq!(
        files.len(),
        2,
        "the crashed attempt's file is still on Moonshot"
    );
    // The orphan is detectable: a Moonshot file no row names, holding the same bytes.
    let orphans: Vec<_> = files.iter().filter(|(id, _)| *id != kept).collect();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].1, sha256(&data));
    assert!(
        exai_shared::db::find_by_provider_file_id(stack.pool(), "kimi", &orphans[0].0)
            .await
            .unwrap()
            .is_none()
    );
    stack.wait_status(&kept, UploadStatus::Completed).await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moonshot_429_is_retried_after_the_wait_it_names() {
    let mut stack = TestStack::uploads("up-429", &[]).await;
    stack
        .sim()
        .add_fault(json!({"route": "moonshot.files.upload", "count": 1, "action": "rate_limit", "retry_after_secs": 1}))
        .unwrap();
    stack.start_worker();
    let id = "call-429";
    let path = stack.write_file("rl.txt", b"rate limited once");
    stack
        .enqueue_tool(
            id,
            "kimi_upload_files",
            json!({"files": [path.display().to_string()]}),
        )
        .await;
    let r = stack.finished(queue::TOOL_CALLS, id).await;
    assert_eq!(r.attempts, 2);
    tool_outcome(r).expect("the retry succeeds");
    let uploads: Vec<_> = stack
        .sim()
        .requests()
        .into_iter()
        .filter(|r| r.route == "moonshot.files.upload")
        .collect();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[0].status, Some(429));
    let waited = uploads[1].time_ms - uploads[0].time_ms;
    assert!(
        waited >= 1000,
        "retried after {waited} ms, not the 1 s named"
    );
    assert_eq!(stack.moonshot_files().len(), 1);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_paths_and_sizes_are_refused_and_nothing_is_uploaded() {
    let mut stack = TestStack::uploads("up-paths", &[("EXAI_MAX_UPLOAD_BYTES", "1024")]).await;
    stack.start_worker();
    let good = stack.write_file("good.txt", b"fine");
    std::fs::write(stack.dir().join("secret.txt"), b"top secret").unwrap();
    let escape = stack.root().join("escape.txt");
    std::os::unix::fs::symlink(stack.dir().join("secret.txt"), &escape).unwrap();
    let empty = stack.write_file("empty.txt", b"");
    let big = stack.write_file("big.bin", &bytes(2048, 6));
    let traversal = format!("{}/../secret.txt", stack.root().display());

    let cases: Vec<(String, &str)> = vec![
        (traversal, "outside the allowed upload roots"),
        (
            escape.display().to_string(),
            "passes through a symbolic link",
        ),
        (empty.display().to_string(), "empty (0 bytes)"),
        (
            big.display().to_string(),
            "over the upload limit of 1024 bytes",
        ),
        ("good.txt".to_owned(), "must be absolute"),
        (stack.root().display().to_string(), "not a regular file"),
        (
            format!("{}/missing.txt", stack.root().display()),
            "cannot be resolved",
        ),
    ];
    for (path, expected) in &cases {
        // A bad file next to a good one: the whole call is refused.
        let err = stack
            .call(
                "kimi_upload_files",
                json!({"files": [good.display().to_string(), path]}),
            )
            .await
            .unwrap_err();
        assert!(err.starts_with("dead"), "{path}: {err}");
        assert!(err.contains(expected), "{path}: {err}");
        assert!(!err.contains("top secret"));
    }
    let err = stack
        .call(
            "kimi_upload_bytes",
            json!({"filename": "big.bin", "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes(4096, 7))}),
        )
        .await
        .unwrap_err();
    assert!(err.contains("over the upload limit"), "{err}");
    assert_eq!(stack.requests("moonshot.files.upload"), 0);
    assert!(stack.moonshot_files().is_empty());
    assert!(stack.rows().await.is_empty());
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uploads_job_runs_the_same_pipeline() {
    let mut stack = TestStack::uploads("up-job", &[]).await;
    stack.start_worker();
    let data = bytes(5_000, 8);
    let staging = exai_shared::staging::Staging::from_config(&stack.config().uploads);
    let blob = staging
        .stage_bytes("staged.txt", data.clone().into())
        .await
        .unwrap();
    let job = exai_shared::jobs::UploadJob {
        sha256: blob.sha256.clone(),
        filename: "staged.txt".to_owned(),
        size_bytes: blob.size,
        purpose: "file-extract".to_owned(),
        provider: "kimi".to_owned(),
        mime_type: None,
    };
    let q = stack.queue(queue::UPLOADS);
    q.enqueue(
        &exai_shared::queue::NewJob::json(&job)
            .unwrap()
            .with_id("upload-1"),
    )
    .await
    .unwrap();
    let r = stack.finished(queue::UPLOADS, "upload-1").await;
    assert_eq!(r.state, JobState::Completed, "{:?}", r.error);
    let out: exai_shared::jobs::UploadedFile = serde_json::from_slice(&r.result.unwrap()).unwrap();
    assert_eq!(out.sha256, sha256(&data));
    assert!(!out.deduplicated);
    let row = stack
        .wait_status(&out.file_id, UploadStatus::Completed)
        .await;
    assert_eq!(row.mime_type.as_deref(), Some("text/plain"));
    // A job whose bytes were never staged fails permanently, naming them.
    let missing = exai_shared::jobs::UploadJob {
        sha256: "0".repeat(64),
        ..job
    };
    q.enqueue(
        &exai_shared::queue::NewJob::json(&missing)
            .unwrap()
            .with_id("upload-2"),
    )
    .await
    .unwrap();
    let r = stack.finished(queue::UPLOADS, "upload-2").await;
    assert_eq!(r.state, JobState::Dead);
    assert!(r.error.unwrap().contains("missing"));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_moonshot_lost_is_restored_from_storage() {
    let mut stack = TestStack::uploads("up-restore", &[]).await;
    stack.start_worker();
    let text = "The quarterly numbers are up eleven percent.";
    let item = upload_path(&stack, &stack.write_file("q.txt", text.as_bytes())).await;
    let old_id = item["file_id"].as_str().unwrap().to_owned();
    stack.wait_status(&old_id, UploadStatus::Completed).await;
    // Moonshot loses the file.
    let resp = reqwest::Client::new()
        .delete(format!("{}/files/{old_id}", stack.sim().moonshot_url()))
        .bearer_auth(SIM_KEY)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert!(stack.moonshot_files().is_empty());

    let new_id = chat_reuploads(
        &stack,
        &old_id,
        "what are the numbers?",
        "eleven percent",
        text.as_bytes(),
    )
    .await;
    // A later call with the old id uses the restored file without another upload.
    let again = stack
        .call(
            "kimi_chat_with_files",
            json!({"prompt": "again", "file_ids": [old_id]}),
        )
        .await
        .unwrap();
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["file_ids"][0], new_id.as_str());
    assert_eq!(stack.requests("moonshot.files.upload"), 2);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_push_creates_a_bucket_deleted_behind_its_back() {
    let mut stack = TestStack::uploads("up-bucket", &[]).await;
    stack.start_worker();
    let ok = wait_until(WAIT, || async {
        !stack.sim().state()["supabase"]["buckets"]["user-files"].is_null()
    })
    .await;
    assert!(ok, "the worker did not create the bucket at start");
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/storage/v1/bucket/user-files",
            stack.sim().url()
        ))
        .bearer_auth(SIM_KEY)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let item = upload_path(&stack, &stack.write_file("b.txt", b"bucket")).await;
    stack
        .wait_status(item["file_id"].as_str().unwrap(), UploadStatus::Completed)
        .await;
    stack.cleanup().await;
}

/// Inserts a row exactly as the original daemon's storage fix did (the seed's insert: `provider`,
/// `provider_file_id`, `supabase_file_id` naming its Supabase `files` row, `sha256`, `filename`,
/// `file_size_bytes`, `upload_status`; no `storage_path`, which only the queue writes).
async fn insert_original_row(stack: &TestStack, file_id: &str, data: &[u8]) {
    sqlx::query(
        "INSERT INTO provider_file_uploads (provider, provider_file_id, supabase_file_id, \
         sha256, filename, file_size_bytes, upload_status) \
         VALUES ('kimi', $1, $2, $3, $4, $5, 'completed')",
    )
    .bind(file_id)
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(sha256(data))
    .bind(format!("{file_id}.txt"))
    .bind(data.len() as i64)
    .execute(stack.pool())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_the_original_daemon_wrote_downloads_from_where_its_fix_put_the_bytes() {
    let mut stack = TestStack::uploads("up-original", &[]).await;
    let storage = exai_shared::providers::Providers::from_config(&stack.config())
        .unwrap()
        .supabase
        .unwrap();
    storage.ensure_bucket().await.unwrap();
    // The original's object, at kimi-uploads/{file_id} in the configured bucket.
    let data = bytes(50_000, 7);
    let file_id = "cv-original-0001";
    let object_path = format!("kimi-uploads/{file_id}");
    let disk = stack.dir().join("original.bin");
    std::fs::write(&disk, &data).unwrap();
    storage
        .upload_file(
            &object_path,
            &disk,
            data.len() as u64,
            "application/octet-stream",
        )
        .await
        .unwrap();
    insert_original_row(&stack, file_id, &data).await;
    let row = stack.row(file_id).await;
    assert!(row.storage_path.is_none() && row.supabase_file_id.is_some());
    stack.start_worker();

    for args in [
        json!({"file_id": file_id}),
        json!({"sha256": sha256(&data)}),
    ] {
        let text = stack.call("kimi_download_file", args).await.unwrap();
        let got: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got["file_id"], file_id);
        assert_eq!(got["sha256"], sha256(&data));
        let content = base64::engine::general_purpose::STANDARD
            .decode(got["content_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(content, data);
    }

    // A row in the same shape whose object is gone too: the error says what is missing, and
    // does not blame KIMI_UPLOAD_TO_SUPABASE.
    let lost = b"the original's object was removed";
    let lost_id = "cv-original-0002";
    insert_original_row(&stack, lost_id, lost).await;
    let err = stack
        .call("kimi_download_file", json!({"file_id": lost_id}))
        .await
        .unwrap_err();
    assert!(err.contains(&format!("kimi-uploads/{lost_id}")), "{err}");
    assert!(
        err.contains("missing") && err.contains("user-files"),
        "{err}"
    );
    assert!(!err.contains("KIMI_UPLOAD_TO_SUPABASE"), "{err}");
    // Nothing was uploaded or pushed for either row.
    assert_eq!(stack.requests("moonshot.files.upload"), 0);
    assert_eq!(stack.rows().await.len(), 2);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_moonshot_lost_is_restored_from_the_copy_the_original_daemon_wrote() {
    let mut stack = TestStack::uploads("up-original-restore", &[]).await;
    let storage = exai_shared::providers::Providers::from_config(&stack.config())
        .unwrap()
        .supabase
        .unwrap();
    storage.ensure_bucket().await.unwrap();
    // The original's row and object; Moonshot no longer has the file.
    let text = "The original daemon stored this report; the margin is nine percent.";
    let old_id = "cv-original-lost";
    let disk = stack.dir().join("original-lost.txt");
    std::fs::write(&disk, text).unwrap();
    storage
        .upload_file(
            &format!("kimi-uploads/{old_id}"),
            &disk,
            text.len() as u64,
            "text/plain",
        )
        .await
        .unwrap();
    insert_original_row(&stack, old_id, text.as_bytes()).await;
    stack.start_worker();

    chat_reuploads(
        &stack,
        old_id,
        "what is the margin?",
        "nine percent",
        text.as_bytes(),
    )
    .await;
    stack.cleanup().await;
}

/// Asks `kimi_chat_with_files` about `old_id`, a file Moonshot no longer has, and checks that it
/// was uploaded again from its storage copy: the answer names a new file whose text (`data`)
/// the model saw (`needle` in the answer), that file is the only one Moonshot holds, the old row
/// is deleted and the new one completes. Returns the new file id.
async fn chat_reuploads(
    stack: &TestStack,
    old_id: &str,
    prompt: &str,
    needle: &str,
    data: &[u8],
) -> String {
    let out = stack
        .call(
            "kimi_chat_with_files",
            json!({"prompt": prompt, "file_ids": [old_id]}),
        )
        .await
        .unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    let new_id = out["file_ids"][0].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    // The model saw the file's text.
    assert!(out["content"].as_str().unwrap().contains(needle), "{out}");
    assert_eq!(stack.moonshot_files(), [(new_id.clone(), sha256(data))]);
    assert_eq!(stack.row(old_id).await.status, UploadStatus::Deleted);
    stack.wait_status(&new_id, UploadStatus::Completed).await;
    new_id
}

/// The worker's peak resident set (`VmHWM`) in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_a_100_mb_file_keeps_the_worker_rss_bounded() {
    const SIZE: usize = 100 * 1024 * 1024;
    let stack = TestStack::uploads("up-rss", &[]).await;
    // The file is written in pieces, so the test itself never needs it whole either.
    let path = stack.root().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let piece = bytes(1024 * 1024, 9);
        for i in 0..SIZE / piece.len() {
            let mut p = piece.clone();
            p[0] = i as u8;
            f.write_all(&p).unwrap();
        }
        f.flush().unwrap();
    }
    let worker = stack.spawn_worker(&["--concurrency", "2"]);
    // A small upload first: the baseline of a worker that has done the whole pipeline once.
    let small = upload_path(&stack, &stack.write_file("small.txt", b"warm up")).await;
    stack
        .wait_status(small["file_id"].as_str().unwrap(), UploadStatus::Completed)
        .await;
    let baseline = peak_rss(worker.pid());
    let item = upload_path(&stack, &path).await;
    let file_id = item["file_id"].as_str().unwrap().to_owned();
    assert_eq!(item["size_bytes"], SIZE);
    stack.wait_status(&file_id, UploadStatus::Completed).await;
    let object = stack.object(&format!("kimi-uploads/{file_id}")).unwrap();
    assert_eq!(object["size"], SIZE);
    assert_eq!(object["sha256"], item["sha256"]);
    let peak = peak_rss(worker.pid());
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "worker peak RSS: {:.1} MiB after a small upload, {:.1} MiB after staging, uploading and pushing {} MiB",
        mib(baseline),
        mib(peak),
        SIZE >> 20
    );
    // Streaming 100 MiB costs the worker a few buffers, not the file.
    assert!(
        peak < baseline + 24 * 1024 * 1024,
        "peak RSS grew from {baseline} to {peak} bytes for a {SIZE}-byte file"
    );
    worker.kill_and_wait().await;
    stack.cleanup().await;
}
