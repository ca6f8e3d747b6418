//! The work one session can make the daemon hold, each case against a real `exai-daemon`
//! process, real Redis and real sockets:
//!
//! - a call refused for the session's in-flight limit stages nothing (`kimi_upload_bytes`
//!   content reaches the staging store only once the call holds its slot).

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
