//! `exai-call`, the real binary, against a real `exai-daemon` and workers: it names itself,
//! lists the daemon's tools with their arguments (`--list`, `--json`, or the tool name
//! `list_tools`), says which token problem refused its hello and what to do, points to `--list`
//! on `TOOL_NOT_FOUND`, and a call waiting on a paused queue hears why in its progress.

use std::process::Stdio;
use std::time::Duration;

use exai_shared::queue::TOOL_CALLS;
use exai_shared::tools;
use exai_tests::daemon::TOKEN;
use exai_tests::{TestStack, bin_path};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn it_names_itself_in_help_and_version() {
    for (flag, want) in [
        ("--help", "Call one tool through an EXAI daemon"),
        ("-V", "exai-call "),
    ] {
        let out = std::process::Command::new(bin_path("exai-call"))
            .arg(flag)
            .env_clear()
            .output()
            .expect("run exai-call");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(text.contains(want), "{flag}: {text}");
        assert!(!text.contains("exai-daemon"), "{flag}: {text}");
    }
    let help = std::process::Command::new(bin_path("exai-call"))
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.starts_with("Call one tool"), "{help}");
    assert!(help.contains("Usage: exai-call"), "{help}");
    assert!(help.contains("--list"), "{help}");
}

#[tokio::test]
async fn list_prints_every_tool_with_its_arguments() {
    let stack = TestStack::with_daemon("call-list", &[], 0).await;
    let token = [("EXAI_WS_TOKEN", TOKEN)];

    let out = stack.exai_call(&["--list"], &token).await;
    assert!(out.ok(), "{out}");
    for tool in tools::all() {
        assert!(
            out.stdout.lines().any(|l| l == tool.name),
            "{} has a line of its own: {out}",
            tool.name
        );
        for arg in tools::doc::arguments(&tool.input_schema) {
            assert!(
                out.stdout.lines().any(|l| l
                    .split_whitespace()
                    .next()
                    .is_some_and(|first| first == arg.name)),
                "{}'s argument {} is listed: {out}",
                tool.name,
                arg.name
            );
        }
    }
    let files = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("files "))
        .expect("kimi_upload_files's files line");
    assert!(files.contains("array of string"), "{files}");
    assert!(files.contains("required"), "{files}");
    assert!(
        out.stdout
            .contains("At least one of `file_id`, `sha256` is required."),
        "{out}"
    );

    // `list_tools` as a tool name does the same; --json prints the daemon's answer.
    let same = stack.exai_call(&["list_tools"], &token).await;
    assert!(same.ok(), "{same}");
    assert_eq!(same.stdout, out.stdout);
    let json = stack.exai_call(&["--list", "--json"], &token).await.json();
    assert_eq!(json["op"], "list_tools_res");
    let names: Vec<&str> = json["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let registered: Vec<&str> = tools::all().iter().map(|t| t.name).collect();
    assert_eq!(names, registered);
    assert!(json["tools"][0]["inputSchema"]["properties"].is_object());

    // A tool that is not there: the daemon names the closest, exai-call points to --list.
    let miss = stack
        .exai_call(&["kimi_upload_file", r#"{"files":["/x"]}"#], &token)
        .await;
    assert_eq!(miss.code, Some(1), "{miss}");
    assert!(
        miss.stderr.contains("did you mean kimi_upload_files?"),
        "{miss}"
    );
    assert!(miss.stderr.contains("exai-call --list"), "{miss}");
    stack.cleanup().await;
}

#[tokio::test]
async fn a_refused_hello_says_whether_the_token_is_missing_or_wrong() {
    let stack = TestStack::with_daemon("call-token", &[], 1).await;

    let missing = stack.exai_call(&["test_echo"], &[]).await;
    assert_eq!(missing.code, Some(2), "{missing}");
    assert!(
        missing
            .stderr
            .contains("the daemon requires a token and none was sent"),
        "{missing}"
    );
    let wrong = stack
        .exai_call(
            &["test_echo"],
            &[("EXAI_WS_TOKEN", "not-the-token-0123456789")],
        )
        .await;
    assert_eq!(wrong.code, Some(2), "{wrong}");
    assert!(
        wrong.stderr.contains("the daemon refused the token"),
        "{wrong}"
    );
    for out in [&missing, &wrong] {
        assert!(out.stderr.contains("EXAI_WS_TOKEN"), "{out}");
        assert!(out.stderr.contains("data/run/env"), "{out}");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {out}");
    }
    assert_ne!(missing.stderr, wrong.stderr);

    let ok = stack
        .exai_call(
            &["test_echo", r#"{"text":"hi"}"#],
            &[("EXAI_WS_TOKEN", TOKEN)],
        )
        .await;
    assert!(ok.ok() && ok.stdout.contains("hi"), "{ok}");
    stack.cleanup().await;
}

#[tokio::test]
async fn a_call_on_a_paused_queue_hears_that_the_queue_is_paused() {
    // One worker; the daemon's progress tick is 0.2 s (the stack's default for daemons).
    let stack = TestStack::with_daemon("call-paused", &[], 1).await;
    let q = stack.queue(TOOL_CALLS);
    q.pause().await.unwrap();

    let mut call = tokio::process::Command::new(bin_path("exai-call"))
        .args(["test_echo", r#"{"text":"after the pause"}"#])
        .env_clear()
        .env("EXAI_WS_URL", stack.url())
        .env("EXAI_WS_TOKEN", TOKEN)
        .env("EXAI_RUN_ENV", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run exai-call");
    let mut progress = BufReader::new(call.stderr.take().unwrap()).lines();
    let heard = tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = Vec::new();
        while let Some(line) = progress.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains("queue tool_calls is paused") {
                return Ok(line);
            }
        }
        Err(seen)
    })
    .await
    .expect("a progress line within 20 s");
    let line = heard.unwrap_or_else(|seen| panic!("never heard of the pause: {seen:?}"));
    assert!(
        line.contains("exai-worker queue resume tool_calls"),
        "{line}"
    );
    assert_eq!(q.counts().await.unwrap().queued, 1, "the call waits");

    // Resumed: the call runs and answers; its progress no longer speaks of a pause.
    q.resume().await.unwrap();
    let rest = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = progress.next_line().await {
            lines.push(line);
        }
        lines
    });
    let out = tokio::time::timeout(Duration::from_secs(20), call.wait_with_output())
        .await
        .expect("the call ends once the queue is resumed")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let echoed: Value = serde_json::from_str(stdout.trim()).expect("the echo as JSON");
    assert_eq!(echoed["text"], "after the pause");
    let after = rest.await.unwrap();
    if let Some(started) = after.iter().position(|l| l.contains("execution started")) {
        assert!(
            !after[started..].iter().any(|l| l.contains("is paused")),
            "{after:?}"
        );
    }
    stack.cleanup().await;
}
