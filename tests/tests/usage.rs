//! Cost accounting end to end, with a daemon process, a worker process and exai-sim:
//!
//! - after chat calls through the daemon on two providers' models, the recorded sums per session,
//!   per tool and per model equal what the emulator billed; each call's `call_tool_res`,
//!   `get_result` and `job_status` carry its usage; `exai-worker usage` prints the sums (tables
//!   and `--json`); the admin API answers `GET /admin/api/usage` with its token and refuses
//!   without it;
//! - with `EXAI_SESSION_TOKEN_BUDGET`, a session that has spent its budget gets
//!   `BUDGET_EXCEEDED` for its next provider call, while its calls that reach no provider and
//!   other sessions' calls go through.
//!
//! Each test works under its own key prefix (and its own emulator), deleted at the end.

use exai_tests::TestStack;
use exai_tests::daemon::{Client, result_text};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The admin token of these tests.
const ADMIN_TOKEN: &str = "admin-token-of-the-usage-tests";

/// Sends a streaming `chat` call and returns its `call_tool_res`.
async fn chat(client: &mut Client, request_id: &str, model: &str, prompt: &str) -> Value {
    let (res, _) = client
        .call(
            request_id,
            "chat",
            json!({"prompt": prompt, "model": model}),
        )
        .await;
    res
}

/// The counters of a usage line as `(calls, prompt, completion, total)`.
fn counts(line: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| line[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
    (
        n("calls"),
        n("prompt_tokens"),
        n("completion_tokens"),
        n("total_tokens"),
    )
}

/// The emulator's bill `(requests, prompt, completion, total)` from one of its bill objects.
fn billed(bill: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| bill[k].as_u64().unwrap_or_else(|| panic!("{k} in {bill}"));
    (
        n("requests"),
        n("prompt_tokens"),
        n("completion_tokens"),
        n("total_tokens"),
    )
}

/// The line named `name` of a list of usage lines.
fn line<'a>(lines: &'a Value, name: &str) -> &'a Value {
    lines
        .as_array()
        .expect("a list of lines")
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no line {name} in {lines}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recorded_usage_equals_the_emulators_bill_and_reaches_results_the_cli_and_the_admin_api() {
    let metrics_port = exai_tests::free_port();
    let stack = TestStack::builder("usage-bill")
        .sim()
        .env("EXAI_ADMIN_TOKEN", ADMIN_TOKEN)
        .env(
            "EXAI_WORKER_METRICS_ADDR",
            &format!("127.0.0.1:{metrics_port}"),
        )
        .daemon()
        .workers(1)
        .start()
        .await;
    let (mut a, session_a) = stack.client(None).await;
    let (mut b, session_b) = stack.client(None).await;

    // Session A: three Kimi calls and two GLM calls; session B: one Kimi call.
    let mut job_usage = Vec::new();
    for (i, model) in ["kimi-k2.5", "kimi-k2.5", "glm-4.5", "kimi-k2.5", "glm-4.5"]
        .iter()
        .enumerate()
    {
        let prompt = format!("question number {i} {}", "about tokens ".repeat(i * 3));
        let res = chat(&mut a, &format!("a-{i}"), model, &prompt).await;
        assert!(!result_text(&res).is_empty(), "{res}");
        let usage = res["usage"].clone();
        assert_eq!(usage["calls"], 1, "{res}");
        let (_, prompt_tokens, completion_tokens, total) = counts(&usage);
        assert!(prompt_tokens > 0 && completion_tokens > 0, "{usage}");
        assert_eq!(total, prompt_tokens + completion_tokens, "{usage}");
        job_usage.push(usage);
    }
    let res = chat(
        &mut b,
        "b-0",
        "kimi-k2.5",
        "a question from another session",
    )
    .await;
    let usage_b = res["usage"].clone();
    assert_eq!(usage_b["calls"], 1, "{res}");

    // get_result and job_status of a completed call carry the same usage.
    let got = a.op("get_result", "a-2").await;
    assert_eq!(got["op"], "call_tool_res", "{got}");
    assert_eq!(got["usage"], job_usage[2], "{got}");
    let status = a.op("job_status", "a-2").await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["usage"], job_usage[2], "{status}");
    // A call that reached no provider has none.
    let (echo, _) = a.call("echo", "test_echo", json!({"x": 1})).await;
    assert!(echo.get("usage").is_none(), "{echo}");
    let status = a.op("job_status", "echo").await;
    assert!(status.get("usage").is_none(), "{status}");

    // The sums equal the emulator's bill: in all, per model, and per session.
    let bill = stack.sim().usage();
    let bill = &bill["keys"][exai_tests::stack::SIM_KEY];
    let out = stack.worker_cli(&["usage", "--json"], &[]).await;
    assert!(out.ok(), "{out}");
    let report: Value = serde_json::from_str(&out.stdout).expect("usage --json is JSON");
    assert_eq!(
        counts(&report["total"]),
        billed(&bill["billed"]),
        "{report}"
    );
    for model in ["kimi-k2.5", "glm-4.5"] {
        let m = line(&report["models"], model);
        assert_eq!(counts(m), billed(&bill["by_model"][model]), "{model}: {m}");
    }
    assert_eq!(line(&report["models"], "glm-4.5")["provider"], "glm");
    assert_eq!(line(&report["models"], "kimi-k2.5")["provider"], "kimi");
    let sum_of = |usages: &[Value]| {
        usages.iter().map(counts).fold((0, 0, 0, 0), |s, c| {
            (s.0 + c.0, s.1 + c.1, s.2 + c.2, s.3 + c.3)
        })
    };
    assert_eq!(
        counts(line(&report["sessions"], &session_a)),
        sum_of(&job_usage)
    );
    assert_eq!(
        counts(line(&report["sessions"], &session_b)),
        sum_of(std::slice::from_ref(&usage_b))
    );
    assert_eq!(
        counts(line(&report["tools"], "chat")),
        billed(&bill["billed"])
    );
    assert_eq!(report["tools"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["retention_secs"], 604_800);

    // The worker process counted the same tokens, by provider, model and kind.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (provider, model) in [("kimi", "kimi-k2.5"), ("glm", "glm-4.5")] {
        let (_, prompt, completion, _) = billed(&bill["by_model"][model]);
        for (kind, expected) in [
            ("prompt", prompt),
            ("completion", completion),
            ("cached", 0),
        ] {
            let series = format!(
                r#"exai_worker_tokens_total{{provider="{provider}",model="{model}",kind="{kind}"}} "#
            );
            let value = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&series))
                .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
            assert_eq!(value.trim().parse::<u64>().unwrap(), expected, "{series}");
        }
    }

    // One session's line, as JSON and as a table.
    let out = stack
        .worker_cli(&["usage", "--session", &session_b, "--json"], &[])
        .await;
    assert!(out.ok(), "{out}");
    let one: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(one["name"], session_b.as_str());
    assert_eq!(counts(&one), counts(&usage_b));
    assert!(one["last_ms"].as_u64().unwrap() > 0, "{one}");
    let out = stack
        .worker_cli(&["usage", "--session", "nobody", "--json"], &[])
        .await;
    let none: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(counts(&none), (0, 0, 0, 0), "{none}");
    let out = stack.worker_cli(&["usage"], &[]).await;
    assert!(out.ok(), "{out}");
    let total = bill["billed"]["total_tokens"].as_u64().unwrap();
    for expected in [
        "SESSION".to_owned(),
        "MODEL".to_owned(),
        "glm-4.5 (glm)".to_owned(),
        session_a.clone(),
        format!("6 calls, {total} tokens"),
    ] {
        assert!(out.stdout.contains(&expected), "{expected} in\n{out}");
    }

    // The admin API: the same report with the admin token, 401 without it.
    let base = format!("http://{}/admin/api/usage", stack.daemon().addr);
    let http = reqwest::Client::new();
    let res = http
        .get(&base)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let api: Value = res.json().await.unwrap();
    assert_eq!(api["total"], report["total"], "{api}");
    assert_eq!(api["models"], report["models"], "{api}");
    let res = http
        .get(format!("{base}?session={session_b}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let api: Value = res.json().await.unwrap();
    assert_eq!(counts(&api["session"]), counts(&usage_b), "{api}");
    let res = http.get(&base).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = http
        .get(&base)
        .bearer_auth(exai_tests::daemon::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = http
        .get(format!("{base}?limit=0"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_past_its_token_budget_is_refused_and_other_sessions_are_not() {
    let stack = TestStack::builder("usage-budget")
        .sim()
        .env("EXAI_SESSION_TOKEN_BUDGET", "1")
        .daemon()
        .workers(1)
        .start()
        .await;
    let (mut spender, _) = stack.client(None).await;
    let (mut other, _) = stack.client(None).await;

    // Nothing spent yet: the first call runs, and spends more than the budget of one token.
    let first = chat(&mut spender, "first", "kimi-k2.5", "spend the budget").await;
    assert!(
        first["usage"]["total_tokens"].as_u64().unwrap() >= 1,
        "{first}"
    );
    let requests = stack.sim().usage()["keys"][exai_tests::stack::SIM_KEY]["billed"]["requests"]
        .as_u64()
        .unwrap();
    assert_eq!(requests, 1);

    // The next provider call of the session is refused before it is enqueued.
    for (id, model) in [("second", "kimi-k2.5"), ("third", "glm-4.5")] {
        let refused = chat(&mut spender, id, model, "one more").await;
        let error = &refused["error"];
        assert_eq!(error["code"], "BUDGET_EXCEEDED", "{refused}");
        assert_eq!(error["details"]["budget"], 1, "{refused}");
        assert!(
            error["details"]["spent"].as_u64().unwrap() >= 1,
            "{refused}"
        );
        assert!(refused.get("job_id").is_none(), "{refused}");
    }
    // A call that reaches no provider still runs.
    let (echo, _) = spender.call("echo", "test_echo", json!({"x": 1})).await;
    assert!(echo.get("error").is_none(), "{echo}");
    // Another session has its own budget.
    let fine = chat(&mut other, "other", "kimi-k2.5", "my own budget").await;
    assert!(!result_text(&fine).is_empty(), "{fine}");
    let requests = stack.sim().usage()["keys"][exai_tests::stack::SIM_KEY]["billed"]["requests"]
        .as_u64()
        .unwrap();
    assert_eq!(requests, 2, "the refused calls never reached the provider");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_expire_after_the_retention_and_their_index_is_pruned() {
    use exai_shared::usage::{Usage, UsageCall, UsageLedger};
    use std::time::Duration;

    let stack = TestStack::builder("usage-retention").start().await;
    let retention = Duration::from_millis(300);
    let ledger = UsageLedger::new(stack.conn.clone(), stack.keys.clone(), retention);
    let usage = Usage {
        prompt_tokens: 7,
        completion_tokens: 3,
        cached_tokens: 2,
        total_tokens: 10,
        calls: 1,
    };
    let call = |session| UsageCall {
        session,
        tool: "chat",
        model: "kimi-k2.5",
        provider: "kimi",
    };
    assert_eq!(ledger.record(call("old"), &usage).await.unwrap(), 10);
    assert_eq!(ledger.record(call("old"), &usage).await.unwrap(), 20);
    // A call without a session is counted per tool and model only.
    assert_eq!(ledger.record(call(""), &usage).await.unwrap(), 0);
    let report = ledger.report(10).await.unwrap();
    assert_eq!(report.sessions.len(), 1, "{report:?}");
    assert_eq!(report.tools[0].usage.calls, 3);
    assert_eq!(report.total.cached_tokens, 6);
    let mut conn = stack.conn.clone();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(stack.keys.usage_session("old"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 300, "ttl {ttl}");

    // Past the retention the sums are gone, and the next record prunes the index.
    let expired = exai_tests::wait_until(Duration::from_secs(5), || async {
        ledger.session("old").await.unwrap().is_none()
            && ledger.report(10).await.unwrap().tools.is_empty()
    })
    .await;
    assert!(expired, "the sums outlived their retention");
    assert_eq!(ledger.session_total("old").await.unwrap(), 0);
    ledger.record(call("new"), &usage).await.unwrap();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(stack.keys.usage_index("sessions"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, ["new"]);
    let report = ledger.report(10).await.unwrap();
    assert_eq!(report.tools[0].usage.calls, 1, "{report:?}");
    stack.cleanup().await;
}
