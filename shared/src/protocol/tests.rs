//! Unit tests of the protocol types.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::*;
use crate::jobs::ToolContent;

#[test]
fn job_ids_are_per_session_and_deterministic() {
    let a = call_job_id("sess-a", "r-1");
    assert_eq!(a, call_job_id("sess-a", "r-1"));
    assert_ne!(a, call_job_id("sess-b", "r-1"));
    assert_ne!(a, call_job_id("sess-a", "r-2"));
    // The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert_ne!(call_job_id("ab", "c"), call_job_id("a", "bc"));
    assert!(is_call_job_id(&a), "{a}");
    assert!(is_call_job_id(&fresh_call_job_id()));
    assert_ne!(fresh_call_job_id(), fresh_call_job_id());
    assert!(!is_call_job_id("call-xyz"));
    assert!(!is_call_job_id("r-1"));
}

#[test]
fn session_ids() {
    assert!(valid_session_id("abc"));
    assert!(valid_session_id("A-b_9"));
    assert!(!valid_session_id("ab"));
    assert!(!valid_session_id("mcp_0123456789abcdef"));
    assert!(!valid_session_id(&"a".repeat(65)));
    assert!(!valid_session_id("a b c"));
    assert!(!valid_session_id("é-é"));
    assert!(valid_session_id(&new_session_id()));
}

#[test]
fn the_shims_hello_with_extra_fields_parses() {
    let text = r#"{"op":"hello","protocolVersion":"2024-11-05","capabilities":{},
        "clientInfo":{"name":"exai-mcp-shim","version":"1.0.0"},"token":"t0k3n"}"#;
    let HelloFrame::Hello(h) = parse_hello(text) else {
        panic!("not a hello")
    };
    assert_eq!(h.token.as_deref(), Some("t0k3n"));
    assert!(
        !format!("{h:?}").contains("t0k3n"),
        "the token never reaches a log line"
    );
    assert_eq!(h.session_id, None);
    assert_eq!(parse_hello("nope"), HelloFrame::NotJson);
    assert_eq!(parse_hello(r#"{"op":"list_tools"}"#), HelloFrame::NotHello);
    assert_eq!(parse_hello("[1,2]"), HelloFrame::NotHello);
    let HelloFrame::Hello(h) = parse_hello(r#"{"op":"hello","token":5,"session_id":[]}"#) else {
        panic!("a hello with odd field types is still a hello")
    };
    assert_eq!((h.token, h.session_id), (None, None));
    let HelloFrame::Hello(h) =
        parse_hello(r#"{"op":"hello","session_id":"s-1","resume_secret":"s3cr3t"}"#)
    else {
        panic!("not a hello")
    };
    assert_eq!(h.resume_secret.as_deref(), Some("s3cr3t"));
    assert!(!format!("{h:?}").contains("s3cr3t"), "nor does the secret");
    assert_eq!(new_resume_secret().len(), 32);
    assert_ne!(new_resume_secret(), new_resume_secret());
}

#[test]
fn both_call_shapes_parse() {
    let a = parse_request(
        r#"{"op":"call_tool","request_id":"r-1","name":"chat","arguments":{"prompt":"hi"}}"#,
    )
    .unwrap();
    let b = parse_request(r#"{"op":"tool_call","request_id":"r-1","tool":{"name":"chat"},"arguments":{"prompt":"hi"}}"#).unwrap();
    let c = parse_request(
        r#"{"op":"tool_call","request_id":"r-1","tool":"chat","arguments":{"prompt":"hi"}}"#,
    )
    .unwrap();
    for m in [&a, &b, &c] {
        assert_eq!(
            m.request,
            Request::CallTool(CallTool {
                name: "chat".into(),
                arguments: json!({"prompt": "hi"})
            })
        );
        assert!(!m.single_frame());
    }
    let shim = parse_request(r#"{"op":"call_tool","id":"call_1","name":"test_echo"}"#).unwrap();
    assert!(shim.single_frame());
    assert_eq!(shim.reply_to.id, Some(json!("call_1")));
    let Request::CallTool(c) = shim.request else {
        panic!()
    };
    assert_eq!(c.arguments, json!({}));
}

#[test]
fn malformed_requests_say_why_and_echo_what_they_can() {
    let e = parse_request("{nope").unwrap_err();
    assert_eq!(e.error.code, ErrorCode::ValidationError);
    assert_eq!(
        serde_json::to_value(e.reply()).unwrap()["op"],
        json!("error")
    );
    let e = parse_request(r#"{"op":"call_tool","request_id":"r","arguments":[]}"#).unwrap_err();
    assert_eq!(e.error.code, ErrorCode::InvalidRequest);
    let reply = serde_json::to_value(e.reply()).unwrap();
    assert_eq!(reply["op"], "call_tool_res");
    assert_eq!(reply["request_id"], "r");
    let e = parse_request(r#"{"request_id":"r"}"#).unwrap_err();
    assert_eq!(e.reply_to.request_id.as_deref(), Some("r"));
    let e = parse_request(r#"{"op":"ping","request_id":7}"#).unwrap_err();
    assert_eq!(e.error.code, ErrorCode::InvalidRequest);
    let m = parse_request(r#"{"op":"frobnicate","request_id":"x"}"#).unwrap();
    assert_eq!(m.request, Request::Unknown("frobnicate".into()));
}

#[test]
fn ids_longer_than_256_bytes_are_refused_and_not_echoed() {
    let ok = "é".repeat(128);
    let text = json!({"op":"ping","request_id": ok, "id": ok}).to_string();
    assert!(parse_request(&text).is_ok());
    let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
    for text in [
        json!({"op":"ping","id": long}),
        json!({"op":"ping","id": [long]}),
        json!({"op":"ping","request_id": long, "id": 1}),
        json!({"op":"ping","request_id": "é".repeat(129)}),
    ] {
        let e = parse_request(&text.to_string()).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::ValidationError, "{text}");
        assert!(e.reply_to.request_id.is_none(), "{text}");
        assert!(!e.reply().to_json().contains(&long), "{text}");
    }
}

#[test]
fn server_messages_have_the_wire_shape() {
    let res = ServerMessage::CallToolRes(CallToolRes::success(
        ReplyTo {
            request_id: Some("job".into()),
            id: Some(json!("call_1")),
        },
        vec![ToolContent::text("a"), ToolContent::text("b")],
    ));
    let v = serde_json::to_value(&res).unwrap();
    assert_eq!(
        v,
        json!({"op":"call_tool_res","request_id":"job","id":"call_1",
               "outputs":[{"type":"text","text":"a"},{"type":"text","text":"b"}],
               "result":[{"type":"text","text":"a"},{"type":"text","text":"b"}],
               "text":"a\nb"})
    );
    let back: ServerMessage = serde_json::from_value(v).unwrap();
    assert_eq!(back, res);
    let err = ServerMessage::Error(ErrorFrame {
        reply_to: ReplyTo::request("r"),
        error: WireError::new(ErrorCode::InvalidRequest, "Unknown operation: x"),
    });
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        json!({"op":"error","request_id":"r","error":{"code":"INVALID_REQUEST","message":"Unknown operation: x"}})
    );
    let ack = ServerMessage::HelloAck(HelloAck {
        ok: false,
        session_id: None,
        resume_secret: None,
        error: Some("unauthorized".into()),
        detail: Some(HelloDetail::TokenWrong.as_str().into()),
    });
    assert_eq!(
        ack.to_json(),
        r#"{"op":"hello_ack","ok":false,"error":"unauthorized","detail":"token_wrong"}"#
    );
}

/// One frame of each op. The `match` has no wildcard, so a new op needs a sample here.
fn sample(op: ServerOp) -> ServerMessage {
    let to = || ReplyTo::request("r-1");
    match op {
        ServerOp::HelloAck => ServerMessage::HelloAck(HelloAck {
            ok: true,
            session_id: Some("s-1".into()),
            resume_secret: Some("0123456789abcdef0123456789abcdef".into()),
            error: None,
            detail: None,
        }),
        ServerOp::ListToolsRes => ServerMessage::ListToolsRes(ListToolsRes {
            reply_to: to(),
            tools: vec![json!({"name": "test_echo"})],
        }),
        ServerOp::CallToolAck => ServerMessage::CallToolAck(CallToolAck {
            reply_to: to(),
            accepted: true,
            job_id: call_job_id("s-1", "r-1"),
            timeout: 300.0,
            name: Some("test_echo".into()),
            duplicate: false,
        }),
        ServerOp::Progress => ServerMessage::Progress(Progress {
            reply_to: to(),
            message: "Waiting for a worker...".into(),
            state: "queued".into(),
            t: 1.5,
        }),
        ServerOp::StreamChunk => ServerMessage::StreamChunk(StreamChunk {
            reply_to: to(),
            chunk: "Hel".into(),
        }),
        ServerOp::CallToolRes => {
            ServerMessage::CallToolRes(CallToolRes::success(to(), vec![ToolContent::text("hi")]))
        }
        ServerOp::JobStatusRes => ServerMessage::JobStatusRes(JobStatusRes {
            reply_to: to(),
            state: CallState::Queued,
            attempt: 0,
            job_id: None,
            queue_position: Some(1),
            usage: None,
            queue_position_in_key: Some(1),
            queue_keys_ahead: Some(0),
        }),
        ServerOp::Cancelled => ServerMessage::Cancelled(Cancelled {
            reply_to: to(),
            was: CancelWas::Queued,
            job_id: None,
        }),
        ServerOp::Pong => ServerMessage::Pong(Pong { reply_to: to() }),
        ServerOp::HealthRes => ServerMessage::HealthRes(HealthRes {
            reply_to: to(),
            ok: true,
            health: json!({}),
        }),
        ServerOp::QueueStatsRes => ServerMessage::QueueStatsRes(QueueStatsRes {
            reply_to: to(),
            queues: json!({}),
            semaphores: json!({}),
        }),
        ServerOp::Error => ServerMessage::Error(ErrorFrame {
            reply_to: to(),
            error: WireError::new(ErrorCode::InvalidRequest, "Unknown operation: x"),
        }),
    }
}

#[test]
fn every_server_op_is_the_op_its_frame_is_serialized_with() {
    for &op in ServerOp::ALL {
        let msg = sample(op);
        assert_eq!(msg.op(), op);
        let v = serde_json::to_value(&msg).unwrap();
        assert_eq!(v["op"], op.as_str(), "{op:?}");
        assert_eq!(serde_json::from_value::<ServerMessage>(v).unwrap(), msg);
    }
    let names: HashSet<&str> = ServerOp::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(names.len(), ServerOp::ALL.len());
}

#[test]
fn every_client_op_is_understood_by_the_parser() {
    for &op in ClientOp::ALL {
        assert_eq!(ClientOp::from_wire(op.as_str()), Some(op));
        let text = json!({"op": op.as_str(), "request_id": "r", "name": "test_echo"});
        let parsed = parse_request(&text.to_string()).unwrap();
        assert!(
            !matches!(parsed.request, Request::Unknown(_)),
            "{op:?} parses as an unknown op"
        );
        assert_eq!(
            matches!(parsed.request, Request::CallTool(_)),
            op.is_call(),
            "{op:?}"
        );
    }
    assert_eq!(ClientOp::from_wire("CALL_TOOL"), None);
    assert_eq!(ClientOp::from_wire("rotate_token"), None);
    let names: HashSet<&str> = ClientOp::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(names.len(), ClientOp::ALL.len());
    // No op is spelled the same in both directions.
    assert!(ServerOp::ALL.iter().all(|o| !names.contains(o.as_str())));
}

#[test]
fn codes_have_distinct_wire_names_and_numbers() {
    for &code in ErrorCode::ALL {
        assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        assert_eq!(
            serde_json::from_value::<ErrorCode>(json!(code.as_str())).unwrap(),
            code
        );
    }
    let codes: HashSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes.len(), ErrorCode::ALL.len());

    for &close in CloseCode::ALL {
        assert_eq!(CloseCode::from_code(close.code()), Some(close));
    }
    let numbers: HashSet<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
    assert_eq!(numbers.len(), CloseCode::ALL.len());
    assert_eq!(CloseCode::from_code(1005), None);
    assert_eq!(
        [
            CLOSE_NORMAL,
            CLOSE_POLICY,
            CLOSE_TOO_BIG,
            CLOSE_UNAUTHORIZED
        ],
        [1000, 1008, 1009, 4003]
    );

    let refusals: HashSet<&str> = HelloError::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(refusals.len(), HelloError::ALL.len());
    for d in HelloDetail::ALL {
        assert_eq!(HelloDetail::from_wire(d.as_str()), Some(*d));
    }
    for states in [
        CallState::ALL
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect::<Vec<_>>(),
        CancelWas::ALL
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect(),
    ] {
        let distinct: HashSet<String> = states.iter().map(Value::to_string).collect();
        assert_eq!(distinct.len(), states.len());
    }
}
