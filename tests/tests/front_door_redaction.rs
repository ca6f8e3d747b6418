//! Provider error bodies that echo a key never reach a client or a job record with the key in
//! them: against a real `exai-daemon`, a real `exai-worker` and `exai-sim` on real Redis, a
//! Moonshot error whose message carries an `sk-…` token, a `Bearer` value and the configured
//! `KIMI_API_KEY` reaches the client's `call_tool_res` and the dead job (admin API) as
//! `[redacted]`.

use exai_tests::stack::{SIM_KEY, TestStack};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-redaction-0123";
/// An `sk-` token that is not configured anywhere: redacted by its shape.
const STRANGER_KEY: &str = "sk-Zx81nq0PLkWm3vT5yR7uQ2aE";
/// A bearer value: redacted because it follows `Bearer`.
const BEARER_VALUE: &str = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.s1gn4ture";

fn assert_clean(what: &str, text: &str) {
    for secret in [SIM_KEY, STRANGER_KEY, BEARER_VALUE] {
        assert!(!text.contains(secret), "{what} carries {secret}: {text}");
    }
    assert!(
        text.contains("[redacted]"),
        "{what} shows no redaction: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_error_that_echoes_keys_is_redacted_for_the_client_and_the_job_record() {
    let stack = TestStack::builder("redaction")
        .uploads()
        .env("EXAI_ADMIN_TOKEN", ADMIN_TOKEN)
        .daemon()
        .workers(1)
        .start()
        .await;
    stack
        .sim()
        .add_fault(json!({
            "route": "moonshot.chat",
            "action": "fail",
            "status": 401,
            "message": format!(
                "Invalid key {STRANGER_KEY}; sent Authorization: Bearer {BEARER_VALUE}; \
                 configured key {SIM_KEY}"
            ),
        }))
        .expect("fault");

    let (mut client, _) = stack.client(None).await;
    let (res, _) = client.call("r-1", "chat", json!({"prompt": "hi"})).await;
    let error = res["error"].to_string();
    assert!(error.contains("401"), "{res}");
    assert_clean("the client's error", &error);

    let http = reqwest::Client::new();
    let list: Value = http
        .get(format!(
            "http://{}/admin/api/queues/tool_calls/jobs?state=dead",
            stack.daemon().addr
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin list")
        .json()
        .await
        .expect("json");
    let record = list.to_string();
    assert!(record.contains("401"), "no dead job: {list}");
    assert_clean("the job record", &record);
    stack.cleanup().await;
}
