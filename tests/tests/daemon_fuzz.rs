//! Fuzzing the protocol with arbitrary text and arbitrary JSON biased towards the protocol's
//! field names ([`protocol_json`]): the pure parsers (`exai_shared::protocol`) never panic, and
//! over a real socket the daemon never crashes nor closes a connection that said hello; the
//! connection answers a ping after every batch.

use exai_shared::protocol::{parse_hello, parse_request};
use exai_tests::TestStack;
use exai_tests::fuzz::protocol_json;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::json;

proptest! {
    #[test]
    fn arbitrary_text_never_panics_the_parsers(s in ".{0,256}") {
        let _ = parse_hello(&s);
        if let Err(e) = parse_request(&s) {
            let _ = e.reply().to_json();
        }
    }

    #[test]
    fn arbitrary_json_never_panics_the_parsers(v in protocol_json()) {
        let text = v.to_string();
        let _ = parse_hello(&text);
        match parse_request(&text) {
            Ok(m) => { let _ = m.single_frame(); }
            Err(e) => { let _ = e.reply().to_json(); }
        }
    }
}

#[tokio::test]
async fn arbitrary_frames_never_crash_the_daemon_or_drop_the_connection() {
    let mut stack = TestStack::with_daemon("d-fuzz", &[], 1).await;
    let (mut c, _) = stack.client(None).await;
    let mut runner = TestRunner::deterministic();
    let text = ".{0,200}";
    for batch in 0..8 {
        for _ in 0..25 {
            let frame = if batch % 2 == 0 {
                protocol_json()
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
        stack.daemon_mut().child.0.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    stack.cleanup().await;
}
