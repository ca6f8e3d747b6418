//! The generator of arbitrary JSON biased towards the protocol's shape (its ops, field names
//! and tool names), shared by the parser's property tests and the daemon's fuzz test.

use proptest::prelude::*;
use serde_json::{Value, json};

/// Arbitrary JSON values whose strings and object keys are often the protocol's own words.
pub fn protocol_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
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
            "op",
            "name",
            "tool",
            "arguments",
            "request_id",
            "id",
            "token",
            "session_id",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
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
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
