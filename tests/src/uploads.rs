//! What the upload and tool suites do with a [`TestStack`]: tool calls enqueued and run to the
//! end, the `provider_file_uploads` rows, files under the upload root, and what the sim holds.

use std::path::PathBuf;

use exai_shared::db::{self, FileUpload};
use exai_shared::jobs::{ToolCallJob, ToolResult};
use exai_shared::queue::{self, JobResult, JobState, NewJob};
use serde_json::Value;

use crate::stack::WAIT;
use crate::{TestStack, wait_until};

impl TestStack {
    /// Enqueues a tool call under `id`.
    pub async fn enqueue_tool(&self, id: &str, tool: &str, arguments: Value) {
        let job = NewJob::json(&ToolCallJob {
            tool: tool.to_owned(),
            arguments,
            session_id: "s".to_owned(),
            request_id: Some(id.to_owned()),
            deadline_ms: None,
            staged: None,
        })
        .unwrap()
        .with_id(id);
        self.queue(queue::TOOL_CALLS).enqueue(&job).await.unwrap();
    }

    /// Waits for job `id` of `queue` to finish.
    pub async fn finished(&self, queue_name: &str, id: &str) -> JobResult {
        let q = self.queue(queue_name);
        let done = wait_until(WAIT, || {
            let q = q.clone();
            async move { q.result(id).await.unwrap().is_some() }
        })
        .await;
        assert!(done, "job {id} of {queue_name} did not finish");
        q.result(id).await.unwrap().unwrap()
    }

    /// Runs a tool call to the end: its text, or its error message.
    pub async fn call(&self, tool: &str, arguments: Value) -> Result<String, String> {
        let id = format!("call-{}", uuid::Uuid::new_v4().simple());
        self.enqueue_tool(&id, tool, arguments).await;
        tool_outcome(self.finished(queue::TOOL_CALLS, &id).await)
    }

    /// Every row of `provider_file_uploads` (any status), oldest first.
    pub async fn rows(&self) -> Vec<FileUpload> {
        // One statement, one snapshot: a row changing status meanwhile (a storage push
        // finishing) is seen once.
        let mut rows = db::list_recent(self.pool(), None, 10_000).await.unwrap();
        rows.sort_by_key(|r| r.created_at);
        rows
    }

    /// The row of a Moonshot file.
    pub async fn row(&self, file_id: &str) -> FileUpload {
        db::find_by_provider_file_id(self.pool(), "kimi", file_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no row for {file_id}"))
    }

    /// Waits until the row of `file_id` is in `status`; returns it.
    pub async fn wait_status(&self, file_id: &str, status: db::UploadStatus) -> FileUpload {
        let ok = wait_until(WAIT, || async { self.row(file_id).await.status == status }).await;
        let row = self.row(file_id).await;
        assert!(
            ok,
            "row of {file_id} stayed {} (wanted {status}): {row:?}",
            row.status
        );
        row
    }

    /// Writes a file under the upload root; returns its path.
    pub fn write_file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.root().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, data).unwrap();
        path
    }

    /// The Moonshot files the sim holds: `(id, sha256)`.
    pub fn moonshot_files(&self) -> Vec<(String, String)> {
        self.sim().state()["moonshot"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().unwrap().to_owned(),
                    f["sha256"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The Supabase object `path` of bucket `user-files`, as the sim describes it.
    pub fn object(&self, path: &str) -> Option<Value> {
        let v = &self.sim().state()["supabase"]["buckets"]["user-files"]["objects"][path];
        (!v.is_null()).then(|| v.clone())
    }

    /// How many requests of sim route `route` arrived.
    pub fn requests(&self, route: &str) -> usize {
        self.sim()
            .requests()
            .iter()
            .filter(|r| r.route == route)
            .count()
    }
}

/// A finished tool call's text, or its error.
pub fn tool_outcome(r: JobResult) -> Result<String, String> {
    match r.state {
        JobState::Completed => {
            let result: ToolResult =
                serde_json::from_slice(&r.result.expect("a completed job has a result")).unwrap();
            Ok(result.joined_text())
        }
        other => Err(format!("{other}: {}", r.error.unwrap_or_default())),
    }
}

/// Lowercase hex sha256.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}
