//! The admin API's list parameters at and beyond their ranges, against a real `exai-daemon` on
//! real Redis: an `offset` beyond 2^53 (where the list script's numbers stop being exact) used to
//! reach Redis and come back as a 503 showing the script's error and SHA; it is a 400 naming the
//! parameter and its range (`invalid parameter `offset`: expected an integer 0 to …, got `…``),
//! as are a `limit` over the page size and numbers that fit no integer. The CLI's `--offset`
//! and `--limit` refuse the same values before any request.

use exai_shared::queue::{self, NewJob};
use exai_tests::TestStack;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-params-0123456";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_parameters_out_of_range_are_a_400_naming_the_parameter_and_its_range() {
    let stack = TestStack::builder("admin-params")
        .env("EXAI_ADMIN_TOKEN", ADMIN_TOKEN)
        .daemon()
        .start()
        .await;
    // A queued job, so the list script has an index to page through.
    stack
        .queue(queue::TOOL_CALLS)
        .enqueue(
            &NewJob::json(&json!({"n": 1}))
                .unwrap()
                .with_id("job-params-1"),
        )
        .await
        .expect("enqueue");
    let http = reqwest::Client::new();
    let get = |query: &str| {
        let url = format!(
            "http://{}/admin/api/queues/tool_calls/jobs?state=queued&{query}",
            stack.daemon().addr
        );
        let req = http.get(url).bearer_auth(ADMIN_TOKEN);
        async move {
            let res = req.send().await.expect("request");
            let status = res.status();
            let body: Value = res.json().await.expect("json body");
            (status, body)
        }
    };

    let (status, body) = get("offset=0&limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["jobs"][0]["id"], "job-params-1", "{body}");
    let (status, body) = get("offset=9007199254739991").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the largest offset is served: {body}"
    );
    assert_eq!(body["jobs"], json!([]));

    for (query, param) in [
        ("offset=9007199254740993", "offset"),
        ("offset=18446744073709551615", "offset"),
        ("offset=99999999999999999999999", "offset"),
        ("offset=-1", "offset"),
        ("limit=1001", "limit"),
        ("limit=99999999999999999999999", "limit"),
    ] {
        let (status, body) = get(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error = body["error"].as_str().expect("error message");
        assert!(
            error.starts_with(&format!(
                "invalid parameter `{param}`: expected an integer 0 to "
            )),
            "{query}: {error}"
        );
        assert!(error.contains(param), "{query}: {error}");
        assert!(
            !error.to_ascii_lowercase().contains("script"),
            "{query}: {error}"
        );
    }

    for args in [["--offset", "9007199254740993"], ["--limit", "1001"]] {
        let mut argv = vec!["queue", "list", "tool_calls"];
        argv.extend(args);
        let (ok, stdout, stderr) = stack.worker_output(&argv).await;
        assert!(!ok, "{args:?} accepted: {stdout}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
    stack.cleanup().await;
}
