//! Fuzzing the daemon's message handling over a real socket: arbitrary text and arbitrary JSON
//! (biased towards the protocol's field names) never crash the daemon or close a connection
//! that said hello; the connection answers a ping after every batch. The pure parser is
//! fuzzed with proptest in `exai_shared::protocol`'s unit tests; this checks the whole path.

mod daemon_support;

use daemon_support::Stack;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,16}".prop_map(Value::String),
        prop::sample::select(vec![
            "call_tool",
            "tool_call",
            "list_tools",
            "cancel",
            "get_result",
            "job_status",
            "ping",
            "hello",
            "health",
            "queue_stats",
            "test_echo",
            "chat",
            "test_echo_EXAI-WS",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::hash_map(
                prop::sample::select(vec![
                    "op",
                    "name",
                    "tool",
                    "arguments",
                    "request_id",
                    "id",
                    "token",
                    "session_id",
                    "delay_ms",
                    "prompt",
                    "model",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[tokio::test]
async fn arbitrary_frames_never_crash_the_daemon_or_drop_the_connection() {
    let mut stack = Stack::start("d-fuzz", &[], 1).await;
    let (mut c, _) = stack.client(None).await;
    let mut runner = TestRunner::deterministic();
    let text = ".{0,200}";
    for batch in 0..8 {
        for _ in 0..25 {
            let frame = if batch % 2 == 0 {
                json_value()
                    .new_tree(&mut runner)
                    .unwrap()
                    .current()
                    .to_string()
            } else {
                text.new_tree(&mut runner).unwrap().current()
            };
            c.send_text(frame).await;
        }
        let rid = format!("ping-{batch}");
        c.send(json!({"op": "ping", "request_id": rid})).await;
        // Replies to the fuzz frames come first; the connection is alive if the pong arrives.
        let (pong, _) = c.until("pong", &rid).await;
        assert_eq!(pong["request_id"], rid.as_str());
    }
    assert!(
        stack.daemon.child.0.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    stack.cleanup().await;
}
