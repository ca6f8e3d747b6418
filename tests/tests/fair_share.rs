//! Fair share end to end (real daemon and worker): a light session's call starts before a
//! heavy session's backlog drains; `job_status` reports a waiting call's place within its key
//! and the keys ahead; a hello's `tenant` is the key, and an invalid one is refused.

use exai_tests::TestStack;
use exai_tests::daemon::Client;
use serde_json::{Value, json};

/// Calls the heavy session queues before the light one calls.
const HEAVY_CALLS: usize = 30;

/// Sends a `test_echo` call taking `delay_ms` and waits for its ack.
async fn queue_echo(c: &mut Client, rid: &str, delay_ms: u64) {
    c.send(
        json!({"op": "call_tool", "request_id": rid, "name": "test_echo",
                  "arguments": {"delay_ms": delay_ms}}),
    )
    .await;
    let (ack, _) = c.until("call_tool_ack", rid).await;
    assert_eq!(ack["accepted"], true, "{ack}");
}

/// The `job_status_res` of call `rid`.
async fn status_of(c: &mut Client, rid: &str) -> Value {
    c.send(json!({"op": "job_status", "request_id": rid})).await;
    c.until("job_status_res", rid).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_sessions_call_runs_before_a_heavy_sessions_backlog_drains() {
    let stack = TestStack::builder("fair-e2e").daemon().start().await;
    let (mut heavy, _) = stack.client(None).await;
    let (mut light, _) = stack.client(None).await;
    for i in 0..HEAVY_CALLS {
        queue_echo(&mut heavy, &format!("h{i}"), 50).await;
    }
    queue_echo(&mut light, "l0", 0).await;

    // Before any worker: the light call is second in line, its key after the heavy one's.
    let status = status_of(&mut light, "l0").await;
    assert_eq!(status["state"], "queued", "{status}");
    assert_eq!(status["queue_position"], 2, "{status}");
    assert_eq!(status["queue_position_in_key"], 1, "{status}");
    assert_eq!(status["queue_keys_ahead"], 1, "{status}");
    let status = status_of(&mut heavy, "h9").await;
    assert_eq!(status["queue_position_in_key"], 10, "{status}");
    assert_eq!(status["queue_keys_ahead"], 0, "{status}");
    // Heavy's tenth call waits for nine of its own and, each turn before, one of light's.
    assert_eq!(status["queue_position"], 19, "{status}");

    // One worker running one call at a time.
    let _worker = stack.spawn_worker(&["--queues", "tool_calls", "--concurrency", "1"]);
    let (res, _) = light.until("call_tool_res", "l0").await;
    assert!(res.get("error").is_none(), "{res}");
    let queued = stack.queue("tool_calls").counts().await.unwrap().queued;
    assert!(
        queued >= 20,
        "the light call finished while the heavy backlog still had {queued} calls queued"
    );
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_one_tenant_share_a_key_and_an_invalid_tenant_is_refused() {
    let stack = TestStack::builder("fair-tenant").daemon().start().await;
    let hello = |tenant: Value| json!({"op": "hello", "token": exai_tests::daemon::TOKEN, "tenant": tenant});
    let mut a = stack.connect().await;
    assert_eq!(a.hello(hello(json!("acme"))).await["ok"], true);
    let mut b = stack.connect().await;
    assert_eq!(b.hello(hello(json!("acme"))).await["ok"], true);
    let (mut other, _) = stack.client(None).await;
    queue_echo(&mut a, "a0", 0).await;
    queue_echo(&mut b, "b0", 0).await;
    queue_echo(&mut other, "o0", 0).await;
    // a0 and b0 share the tenant's key: b0 is second within it, one key (other's) behind.
    let status = status_of(&mut b, "b0").await;
    assert_eq!(status["queue_position_in_key"], 2, "{status}");
    assert_eq!(status["queue_keys_ahead"], 0, "{status}");
    let status = status_of(&mut other, "o0").await;
    assert_eq!(status["queue_position_in_key"], 1, "{status}");
    assert_eq!(status["queue_keys_ahead"], 1, "{status}");
    assert_eq!(status["queue_position"], 2, "{status}");

    for bad in [json!("has space"), json!("x".repeat(65))] {
        let mut c = stack.connect().await;
        let ack = c.hello(hello(bad)).await;
        assert_eq!(ack["ok"], false, "{ack}");
        assert_eq!(ack["error"], "invalid_tenant", "{ack}");
        assert_eq!(c.closed().await.0, 4000);
    }
    stack.cleanup().await;
}
