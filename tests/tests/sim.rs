//! Tests of `exai-sim` itself: real HTTP over loopback against an emulator running in the test
//! process (and one against the spawned binary).

use std::sync::Arc;
use std::time::{Duration, Instant};

use exai_tests::sim::{Sim, SimConfig, SimProcess, Tunables};
use exai_tests::wait_until;
use futures::StreamExt;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const KEY: &str = "sk-test-key";

async fn start() -> (Sim, Client) {
    let mut config = SimConfig::new(KEY);
    config.buckets = vec!["user-files".to_owned()];
    let sim = Sim::start(config).await.expect("start exai-sim");
    (sim, Client::new())
}

fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

async fn json_of(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

async fn control(client: &Client, sim: &Sim, path: &str, body: Value) -> Value {
    let resp = client
        .post(format!("{}/_sim/{path}", sim.url()))
        .json(&body)
        .send()
        .await
        .expect("control request");
    let (status, value) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK, "control {path}: {value}");
    value
}

async fn upload_file(
    client: &Client,
    sim: &Sim,
    name: &str,
    data: Vec<u8>,
    purpose: &str,
) -> (StatusCode, Value) {
    let form = reqwest::multipart::Form::new()
        .text("purpose", purpose.to_owned())
        .part(
            "file",
            reqwest::multipart::Part::bytes(data).file_name(name.to_owned()),
        );
    let resp = client
        .post(format!("{}/files", sim.moonshot_url()))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    json_of(resp).await
}

async fn put_object(
    client: &Client,
    sim: &Sim,
    key: &str,
    data: &'static [u8],
    upsert: bool,
) -> (StatusCode, Value) {
    let resp = client
        .post(format!("{}/storage/v1/object/{key}", sim.url()))
        .bearer_auth(KEY)
        .header("content-type", "application/octet-stream")
        .header("x-upsert", if upsert { "true" } else { "false" })
        .body(data)
        .send()
        .await
        .expect("storage upload");
    json_of(resp).await
}

async fn chat(client: &Client, sim: &Sim, body: Value) -> Response {
    client
        .post(format!("{}/chat/completions", sim.moonshot_url()))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("chat request")
}

fn assert_storage_error(status: StatusCode, body: &Value, code: &str, error: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["statusCode"], code, "{body}");
    assert_eq!(body["error"], error, "{body}");
}

#[tokio::test]
async fn moonshot_rejects_missing_and_wrong_keys() {
    let (sim, client) = start().await;
    for auth in [None, Some("sk-wrong"), Some("")] {
        for (method, path) in [
            (reqwest::Method::GET, "/models"),
            (reqwest::Method::GET, "/files"),
            (reqwest::Method::POST, "/chat/completions"),
        ] {
            let mut req = client.request(method, format!("{}{path}", sim.moonshot_url()));
            if let Some(key) = auth {
                req = req.bearer_auth(key);
            }
            let (status, body) = json_of(req.send().await.unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(
                body,
                json!({"error": {"type": "invalid_authentication_error", "message": "Invalid Authentication"}})
            );
        }
    }
    let records = sim.requests();
    assert_eq!(records.len(), 9);
    assert!(records.iter().all(|r| r.outcome == "auth"));
}

#[tokio::test]
async fn supabase_rejects_missing_and_wrong_keys() {
    let (sim, client) = start().await;
    let url = format!("{}/storage/v1/object/user-files/a.txt", sim.url());
    let (status, body) = json_of(client.post(&url).body("x").send().await.unwrap()).await;
    assert_storage_error(status, &body, "403", "Unauthorized");
    assert_eq!(body["code"], "AccessDenied");
    assert_eq!(body["message"], "Invalid Compact JWS");
    let (status, body) = json_of(
        client
            .get(&url)
            .bearer_auth("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.c2ln")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_storage_error(status, &body, "403", "Unauthorized");
    assert_eq!(body["message"], "signature verification failed");
    assert!(
        sim.state()["supabase"]["buckets"]["user-files"]["objects"]
            .as_object()
            .unwrap()
            .is_empty()
    );

    // The hosted gateway's apikey check, when asked for.
    let mut config = SimConfig::new(KEY);
    config.require_apikey = true;
    let gated = Sim::start(config).await.unwrap();
    let bucket_url = format!("{}/storage/v1/bucket", gated.url());
    let (status, body) = json_of(
        client
            .get(&bucket_url)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({"message": "No API key found in request"}));
    let resp = client
        .get(&bucket_url)
        .bearer_auth(KEY)
        .header("apikey", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn moonshot_file_round_trip() {
    let (sim, client) = start().await;
    let data = b"the quick brown fox\njumps over the lazy dog\n".to_vec();
    let (status, file) =
        upload_file(&client, &sim, "notes.txt", data.clone(), "file-extract").await;
    assert_eq!(status, StatusCode::OK, "{file}");
    let id = file["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 20);
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], data.len());
    assert!(file["created_at"].is_i64());
    assert_eq!(file["filename"], "notes.txt");
    assert_eq!(file["purpose"], "file-extract");
    assert_eq!(file["status"], "ok");
    assert_eq!(file["status_details"], "");

    let base = sim.moonshot_url();
    let get = |path: String| client.get(path).bearer_auth(KEY).send();
    let (_, list) = json_of(get(format!("{base}/files?limit=100")).await.unwrap()).await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"], json!([file.clone()]));
    let (status, got) = json_of(get(format!("{base}/files/{id}")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, file);
    let (status, content) = json_of(get(format!("{base}/files/{id}/content")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        content,
        json!({"content": String::from_utf8(data.clone()).unwrap(), "file_type": "text/plain",
               "filename": "notes.txt", "title": "", "type": "file"})
    );

    let state = sim.state();
    assert_eq!(state["moonshot"]["file_count"], 1);
    assert_eq!(state["moonshot"]["files"][0]["sha256"], sha256(&data));

    let (status, deleted) = json_of(
        client
            .delete(format!("{base}/files/{id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        deleted,
        json!({"id": id, "object": "file", "deleted": true})
    );
    for path in [
        format!("{base}/files/{id}"),
        format!("{base}/files/{id}/content"),
    ] {
        let (status, body) = json_of(get(path).await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["type"], "resource_not_found_error");
    }
    assert_eq!(sim.state()["moonshot"]["file_count"], 0);
}

#[tokio::test]
async fn moonshot_upload_validation_errors() {
    let (sim, client) = start().await;
    let (status, body) = upload_file(&client, &sim, "empty.txt", Vec::new(), "file-extract").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(
        body["error"]["message"],
        "File size is zero, please confirm and re-upload the file"
    );
    let (status, body) = upload_file(&client, &sim, "a.txt", b"x".to_vec(), "fine-tune").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid purpose"),
        "{body}"
    );
    let form = reqwest::multipart::Form::new().text("purpose", "file-extract");
    let resp = client
        .post(format!("{}/files", sim.moonshot_url()))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(sim.state()["moonshot"]["file_count"], 0);
}

#[test]
fn default_limits_are_the_real_ones() {
    let t = Tunables::default();
    assert_eq!(t.max_files, 1_000);
    assert_eq!(t.max_file_bytes, 100 * 1024 * 1024);
    assert_eq!(t.max_total_bytes, 10 * 1024 * 1024 * 1024);
    assert_eq!(SimConfig::new("k").tunables, t);
}

#[tokio::test]
async fn moonshot_caps_the_account_at_1000_files() {
    let (sim, client) = start().await;
    let client = Arc::new(client);
    let sim = Arc::new(sim);
    let results: Vec<StatusCode> = futures::stream::iter(0..1000)
        .map(|i| {
            let (client, sim) = (client.clone(), sim.clone());
            async move {
                upload_file(
                    &client,
                    &sim,
                    &format!("f{i}.txt"),
                    vec![b'x'; 10],
                    "file-extract",
                )
                .await
                .0
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(results.iter().all(|s| *s == StatusCode::OK));
    let (status, body) = upload_file(
        &client,
        &sim,
        "one-too-many.txt",
        b"x".to_vec(),
        "file-extract",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(
        body["error"]["message"],
        "The number of files you have uploaded exceeded the max file count 1000, please delete previous uploaded files"
    );
    assert_eq!(sim.state()["moonshot"]["file_count"], 1000);
}

#[tokio::test]
async fn moonshot_rejects_a_streamed_file_over_100_mb() {
    let (sim, client) = start().await;
    // 100 MiB + 1 byte, streamed from one shared 1 MiB chunk: nothing large is allocated.
    let chunk = bytes::Bytes::from(vec![b'a'; 1024 * 1024]);
    let total: u64 = 100 * 1024 * 1024 + 1;
    let chunks = (0..100)
        .map(move |_| Ok::<_, std::io::Error>(chunk.clone()))
        .chain(std::iter::once(Ok(bytes::Bytes::from_static(b"a"))));
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        total,
    )
    .file_name("big.bin");
    let form = reqwest::multipart::Form::new()
        .text("purpose", "file-extract")
        .part("file", part);
    let resp = client
        .post(format!("{}/files", sim.moonshot_url()))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .expect("the error arrives after the whole body was sent");
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["message"],
        "File size is too large, max file size is 100MB, please confirm and re-upload the file"
    );
    assert_eq!(sim.state()["moonshot"]["file_count"], 0);
    assert!(sim.requests()[0].request_bytes > total);
}

#[tokio::test]
async fn moonshot_size_limits_are_configurable() {
    let (sim, client) = start().await;
    control(
        &client,
        &sim,
        "config",
        json!({"max_file_bytes": 1024, "max_total_bytes": 3000}),
    )
    .await;
    let (status, body) = upload_file(&client, &sim, "a.bin", vec![0; 1025], "file-extract").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["message"],
        "File size is too large, max file size is 1KB, please confirm and re-upload the file"
    );
    for _ in 0..2 {
        let (status, _) = upload_file(&client, &sim, "a.bin", vec![0; 1024], "file-extract").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, body) = upload_file(&client, &sim, "a.bin", vec![0; 1000], "file-extract").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeded the max total size"),
        "{body}"
    );
    control(&client, &sim, "reset", json!({})).await;
    let (_, config) = json_of(
        client
            .get(format!("{}/_sim/config", sim.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(config["max_file_bytes"], 100 * 1024 * 1024);
}

#[tokio::test]
async fn supabase_upload_upsert_update_and_download() {
    let (sim, client) = start().await;
    let (status, body) =
        put_object(&client, &sim, "user-files/kimi-uploads/f1", b"first", false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["Key"], "user-files/kimi-uploads/f1");
    let id = body["Id"].as_str().unwrap().to_owned();

    // Without upsert an existing key is a Duplicate (HTTP 400, 409 in the body).
    let (status, body) = put_object(
        &client,
        &sim,
        "user-files/kimi-uploads/f1",
        b"second",
        false,
    )
    .await;
    assert_storage_error(status, &body, "409", "Duplicate");
    assert_eq!(body["code"], "KeyAlreadyExists");
    assert_eq!(body["message"], "The resource already exists");

    let url = format!("{}/storage/v1/object/user-files/kimi-uploads/f1", sim.url());
    let download = || async {
        let resp = client.get(&url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.bytes().await.unwrap()
    };
    assert_eq!(&download().await[..], b"first");

    let (status, body) =
        put_object(&client, &sim, "user-files/kimi-uploads/f1", b"second", true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["Id"], id.as_str(), "an overwrite keeps the row");
    assert_eq!(&download().await[..], b"second");

    let resp = client
        .put(&url)
        .bearer_auth(KEY)
        .body("third")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&download().await[..], b"third");

    // Multipart, as storage3 sends it: the part's content type, cacheControl seconds.
    let form = reqwest::multipart::Form::new()
        .text("cacheControl", "3600")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"{\"a\":1}".to_vec())
                .file_name("doc.json")
                .mime_str("application/json")
                .unwrap(),
        );
    let resp = client
        .post(format!(
            "{}/storage/v1/object/user-files/docs/doc.json",
            sim.url()
        ))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .get(format!(
            "{}/storage/v1/object/authenticated/user-files/docs/doc.json",
            sim.url()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["cache-control"], "max-age=3600");
    assert!(resp.headers().contains_key("etag"));
    assert_eq!(&resp.bytes().await.unwrap()[..], b"{\"a\":1}");

    let objects = &sim.state()["supabase"]["buckets"]["user-files"]["objects"];
    assert_eq!(objects["kimi-uploads/f1"]["sha256"], sha256(b"third"));
    assert_eq!(objects["docs/doc.json"]["size"], 7);

    // Missing object and bucket.
    let (status, body) = json_of(
        client
            .get(format!("{}/storage/v1/object/user-files/nope", sim.url()))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_storage_error(status, &body, "404", "not_found");
    assert_eq!(body["message"], "Object not found");
    let (status, body) = put_object(&client, &sim, "no-bucket/a", b"x", false).await;
    assert_storage_error(status, &body, "404", "Bucket not found");

    let resp = client.delete(&url).bearer_auth(KEY).send().await.unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"message": "Successfully deleted"}));
    let (status, body) = json_of(client.delete(&url).bearer_auth(KEY).send().await.unwrap()).await;
    assert_storage_error(status, &body, "404", "not_found");
}

#[tokio::test]
async fn supabase_list_with_prefix() {
    let (sim, client) = start().await;
    for key in [
        "a/1.txt",
        "a/2.txt",
        "a/sub/3.txt",
        "a/sub/4.txt",
        "b/5.txt",
        "top.txt",
    ] {
        let (status, _) =
            put_object(&client, &sim, &format!("user-files/{key}"), b"x", false).await;
        assert_eq!(status, StatusCode::OK);
    }
    let list = |body: Value| {
        let client = client.clone();
        let url = format!("{}/storage/v1/object/list/user-files", sim.url());
        async move {
            let (status, rows) = json_of(
                client
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{rows}");
            rows.as_array().unwrap().clone()
        }
    };
    let names = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let rows = list(json!({"prefix": "a", "limit": 100, "offset": 0,
                           "sortBy": {"column": "name", "order": "asc"}}))
    .await;
    assert_eq!(names(&rows), ["1.txt", "2.txt", "sub"]);
    assert!(rows[0]["id"].is_string());
    assert_eq!(rows[0]["metadata"]["size"], 1);
    assert!(rows[2]["id"].is_null() && rows[2]["metadata"].is_null());
    assert_eq!(
        names(&list(json!({"prefix": ""})).await),
        ["a", "b", "top.txt"]
    );
    assert_eq!(
        names(&list(json!({"prefix": "a/sub/"})).await),
        ["3.txt", "4.txt"]
    );
    assert_eq!(
        names(&list(json!({"prefix": "a", "limit": 1, "offset": 1})).await),
        ["2.txt"]
    );
    assert_eq!(
        names(&list(json!({"prefix": "a", "sortBy": {"column": "name", "order": "desc"}})).await),
        ["sub", "2.txt", "1.txt"]
    );
    assert_eq!(
        names(&list(json!({"prefix": "a", "search": "2"})).await),
        ["2.txt"]
    );
    let (status, body) = json_of(
        client
            .post(format!("{}/storage/v1/object/list/user-files", sim.url()))
            .bearer_auth(KEY)
            .json(&json!({"limit": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_storage_error(status, &body, "400", "Bad Request");
}

#[tokio::test]
async fn supabase_bulk_delete() {
    let (sim, client) = start().await;
    for key in ["k/1", "k/2", "k/3"] {
        put_object(&client, &sim, &format!("user-files/{key}"), b"abc", false).await;
    }
    let url = format!("{}/storage/v1/object/user-files", sim.url());
    let (status, rows) = json_of(
        client
            .delete(&url)
            .bearer_auth(KEY)
            .json(&json!({"prefixes": ["k/1", "k/3", "k/missing"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "k/1");
    assert_eq!(rows[0]["bucket_id"], "user-files");
    assert_eq!(rows[1]["metadata"]["size"], 3);
    let objects = sim.state()["supabase"]["buckets"]["user-files"]["objects"].clone();
    assert_eq!(
        objects.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["k/2"]
    );

    let (status, rows) = json_of(
        client
            .delete(format!("{}/storage/v1/object/other-bucket", sim.url()))
            .bearer_auth(KEY)
            .json(&json!({"prefixes": ["x"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, rows), (StatusCode::OK, json!([])));
    let (status, body) = json_of(
        client
            .delete(&url)
            .bearer_auth(KEY)
            .json(&json!({"prefixes": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_storage_error(status, &body, "400", "Bad Request");
}

#[tokio::test]
async fn supabase_bucket_create_get_and_limits() {
    let (sim, client) = start().await;
    let url = format!("{}/storage/v1/bucket", sim.url());
    let create = |body: Value| client.post(&url).bearer_auth(KEY).json(&body).send();
    let (status, body) = json_of(
        create(
            json!({"name": "small", "public": false, "file_size_limit": "1KB",
                      "allowed_mime_types": ["text/*"]}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"name": "small"})));
    let (status, body) = json_of(create(json!({"name": "small"})).await.unwrap()).await;
    assert_storage_error(status, &body, "409", "Duplicate");
    assert_eq!(body["code"], "BucketAlreadyExists");
    let (status, body) = json_of(create(json!({"name": "bad/name"})).await.unwrap()).await;
    assert_storage_error(status, &body, "400", "Invalid Input");

    let (status, bucket) = json_of(
        client
            .get(format!("{url}/small"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bucket["id"], "small");
    assert_eq!(bucket["name"], "small");
    assert_eq!(bucket["public"], false);
    assert_eq!(bucket["file_size_limit"], 1000);
    assert_eq!(bucket["allowed_mime_types"], json!(["text/*"]));
    assert!(bucket["created_at"].is_string());
    let (status, body) = json_of(
        client
            .get(format!("{url}/missing"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_storage_error(status, &body, "404", "Bucket not found");
    assert_eq!(body["code"], "NoSuchBucket");

    // The bucket's limits apply to uploads.
    let upload = |data: Vec<u8>, mime: &'static str| {
        client
            .post(format!("{}/storage/v1/object/small/x", sim.url()))
            .bearer_auth(KEY)
            .header("content-type", mime)
            .body(data)
            .send()
    };
    let (status, body) = json_of(upload(vec![b'a'; 1001], "text/plain").await.unwrap()).await;
    assert_storage_error(status, &body, "413", "Payload too large");
    let (status, body) = json_of(upload(vec![b'a'; 10], "image/png").await.unwrap()).await;
    assert_storage_error(status, &body, "415", "invalid_mime_type");
    let (status, _) = json_of(upload(vec![b'a'; 1000], "text/plain").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = json_of(
        client
            .delete(format!("{url}/small"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_storage_error(status, &body, "409", "ResourceNotEmpty");
    let (_, list) = json_of(client.get(&url).bearer_auth(KEY).send().await.unwrap()).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn fail_next_n_then_recover() {
    let (sim, client) = start().await;
    control(
        &client,
        &sim,
        "faults",
        json!({"route": "supabase.object.upload", "action": "fail", "status": 503, "count": 2}),
    )
    .await;
    control(
        &client,
        &sim,
        "faults",
        json!({"route": "supabase.object.upload", "action": "fail", "status": 403, "count": 1}),
    )
    .await;
    control(
        &client,
        &sim,
        "faults",
        json!({"route": "moonshot.files.upload", "action": "fail", "status": 500, "count": 1,
               "message": "Failed to extract file: boom"}),
    )
    .await;
    for _ in 0..2 {
        let (status, body) = put_object(&client, &sim, "user-files/f", b"data", true).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["message"].is_string());
    }
    let (status, body) = put_object(&client, &sim, "user-files/f", b"data", true).await;
    assert_storage_error(status, &body, "403", "Unauthorized");
    let (status, body) = put_object(&client, &sim, "user-files/f", b"data", true).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = upload_file(&client, &sim, "a.txt", b"a".to_vec(), "file-extract").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        json!({"error": {"type": "server_error", "message": "Failed to extract file: boom"}})
    );
    let (status, _) = upload_file(&client, &sim, "a.txt", b"a".to_vec(), "file-extract").await;
    assert_eq!(status, StatusCode::OK);

    let uploads: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.route == "supabase.object.upload")
        .map(|r| (r.status, r.outcome))
        .collect();
    assert_eq!(
        uploads,
        [
            (Some(503), "fault"),
            (Some(503), "fault"),
            (Some(400), "fault"),
            (Some(200), "ok")
        ]
    );
    assert_eq!(
        sim.state()["faults"],
        json!([]),
        "used-up rules are removed"
    );
}

#[tokio::test]
async fn latency_is_added_per_route() {
    let (sim, client) = start().await;
    control(
        &client,
        &sim,
        "faults",
        json!({"route": "moonshot.models", "action": "delay", "delay_ms": 300, "count": 1}),
    )
    .await;
    let models = || {
        client
            .get(format!("{}/models", sim.moonshot_url()))
            .bearer_auth(KEY)
            .send()
    };
    let started = Instant::now();
    assert_eq!(models().await.unwrap().status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(models().await.unwrap().status(), StatusCode::OK);
    let delays: Vec<u64> = sim.requests().iter().map(|r| r.delay_ms).collect();
    assert_eq!(delays, [300, 0]);
}

#[tokio::test]
async fn drop_closes_the_connection_without_a_response() {
    let (sim, client) = start().await;
    control(
        &client,
        &sim,
        "faults",
        json!({"method": "POST", "path": "/storage/v1/object/user-files/*", "action": "drop", "count": 1}),
    )
    .await;
    let err = client
        .post(format!("{}/storage/v1/object/user-files/x", sim.url()))
        .bearer_auth(KEY)
        .body("payload")
        .send()
        .await
        .expect_err("no response");
    assert!(!err.is_status(), "{err}");
    let (status, _) = put_object(&client, &sim, "user-files/x", b"payload", false).await;
    assert_eq!(status, StatusCode::OK);
    let records = sim.requests();
    assert_eq!(records[0].outcome, "dropped");
    assert_eq!(records[0].status, None);
    assert_eq!(records[1].status, Some(200));
}

#[tokio::test]
async fn down_and_up() {
    let (sim, client) = start().await;
    let models = || async {
        client
            .get(format!("{}/models", sim.moonshot_url()))
            .bearer_auth(KEY)
            .send()
            .await
    };
    assert!(models().await.is_ok());

    // close: connections are closed without a response; control still answers.
    control(&client, &sim, "down", json!({})).await;
    assert!(models().await.is_err());
    assert_eq!(sim.state()["down"]["mode"], "close");
    control(&client, &sim, "up", json!({})).await;
    assert_eq!(models().await.unwrap().status(), StatusCode::OK);

    // status: every provider route answers the provider's error.
    control(
        &client,
        &sim,
        "down",
        json!({"mode": "status", "status": 503}),
    )
    .await;
    let (status, body) = json_of(models().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["type"], "server_unavailable");
    let (status, _) = put_object(&client, &sim, "user-files/x", b"x", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    control(&client, &sim, "up", json!({})).await;

    // refuse: the port is closed (connect errors), and comes back by itself.
    control(
        &client,
        &sim,
        "down",
        json!({"mode": "refuse", "for_ms": 400}),
    )
    .await;
    let fresh = Client::new();
    let refused = wait_until(Duration::from_secs(5), || {
        let fresh = fresh.clone();
        let url = format!("{}/_sim/health", sim.url());
        async move { fresh.get(url).send().await.is_err_and(|e| e.is_connect()) }
    })
    .await;
    assert!(refused, "connections are refused while down");
    let back = wait_until(Duration::from_secs(5), || async {
        matches!(models().await, Ok(r) if r.status() == StatusCode::OK)
    })
    .await;
    assert!(back, "the emulator came back after for_ms");

    // refuse without for_ms: only the in-process handle brings it back.
    control(&client, &sim, "down", json!({"mode": "refuse"})).await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            Client::new()
                .get(format!("{}/_sim/health", sim.url()))
                .send()
                .await
                .is_err()
        })
        .await
    );
    sim.up();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            matches!(models().await, Ok(r) if r.status() == StatusCode::OK)
        })
        .await
    );
}

#[tokio::test]
async fn rate_limit_has_moonshots_429_shape() {
    let (sim, client) = start().await;
    control(
        &client,
        &sim,
        "faults",
        json!([
            {"route": "moonshot.chat", "action": "rate_limit", "retry_after_secs": 7, "count": 1},
            {"route": "moonshot.chat", "action": "rate_limit", "kind": "overloaded",
             "retry_after_secs": 2, "retry_after_header": true, "count": 1},
            {"route": "supabase.*", "action": "rate_limit", "count": 1}
        ]),
    )
    .await;
    let body =
        json!({"model": "kimi-k2-0711-preview", "messages": [{"role": "user", "content": "hi"}]});
    let resp = chat(&client, &sim, body.clone()).await;
    assert!(resp.headers().get("retry-after").is_none());
    let (status, err) = json_of(resp).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(err["error"]["type"], "rate_limit_reached_error");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("please try again after 7 seconds"),
        "{message}"
    );

    let resp = chat(&client, &sim, body.clone()).await;
    assert_eq!(resp.headers()["retry-after"], "2");
    let (status, err) = json_of(resp).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(err["error"]["type"], "engine_overloaded_error");

    let (status, err) = put_object(&client, &sim, "user-files/x", b"x", false).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(err["statusCode"], "429");

    assert_eq!(chat(&client, &sim, body).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn chat_plain_and_streamed() {
    let (sim, client) = start().await;
    let resp = chat(
        &client,
        &sim,
        json!({"model": "kimi-k2-turbo-preview", "temperature": 0.3,
               "messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "hello there"}]}),
    )
    .await;
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["model"], "kimi-k2-turbo-preview");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello there"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let resp = chat(
        &client,
        &sim,
        json!({"model": "kimi-k2-turbo-preview", "stream": true,
               "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": [{"type": "text", "text": "stream me please"}]}]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("an SSE data line"))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: stream me please");
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(
        last["choices"][0]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].is_u64());
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );

    let (status, body) = json_of(
        chat(
            &client,
            &sim,
            json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "resource_not_found_error");
    assert_eq!(
        body["error"]["message"],
        "Not found the model no-such-model or Permission denied"
    );
    let (status, body) = json_of(chat(&client, &sim, json!({"model": "kimi-k2.5"})).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = json_of(
        chat(
            &client,
            &sim,
            json!({"model": "kimi-k2.5", "max_tokens": 2,
                                   "messages": [{"role": "user", "content": "one two three"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: one ");

    let (_, models) = json_of(
        client
            .get(format!("{}/models", sim.moonshot_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(models["object"], "list");
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "kimi-k2-0711-preview")
    );
}

#[tokio::test]
async fn chat_shows_that_file_text_reached_the_model() {
    let (sim, client) = start().await;
    let (_, file) = upload_file(
        &client,
        &sim,
        "facts.md",
        b"The answer is 42.".to_vec(),
        "file-extract",
    )
    .await;
    let id = file["id"].as_str().unwrap();
    let (_, content) = json_of(
        client
            .get(format!("{}/files/{id}/content", sim.moonshot_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let (_, body) = json_of(
        chat(
            &client,
            &sim,
            json!({"model": "kimi-k2-0711-preview", "messages": [
            {"role": "system", "content": content["content"]},
            {"role": "user", "content": "what is the answer?"}]}),
        )
        .await,
    )
    .await;
    let reply = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        reply,
        format!("echo: what is the answer?\n[file {id} facts.md: The answer is 42.]")
    );
}

#[tokio::test]
async fn records_show_what_was_received() {
    let (sim, client) = start().await;
    upload_file(&client, &sim, "a.txt", b"12345".to_vec(), "file-extract").await;
    put_object(&client, &sim, "user-files/obj", b"abc", false).await;
    chat(
        &client,
        &sim,
        json!({"model": "kimi-k2.5", "messages": [{"role": "user", "content": "q"}]}),
    )
    .await;
    let (_, all) = json_of(
        client
            .get(format!("{}/_sim/requests", sim.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let all = all.as_array().unwrap();
    let routes: Vec<&str> = all.iter().map(|r| r["route"].as_str().unwrap()).collect();
    assert_eq!(
        routes,
        [
            "moonshot.files.upload",
            "supabase.object.upload",
            "moonshot.chat"
        ]
    );
    assert!(
        all.iter()
            .all(|r| r["status"] == 200 && r["outcome"] == "ok")
    );
    assert!(all[0]["request_bytes"].as_u64().unwrap() > 5);
    assert_eq!(all[0]["detail"]["filename"], "a.txt");
    assert_eq!(all[1]["request_bytes"], 3);
    assert_eq!(all[1]["detail"]["key"], "obj");
    assert_eq!(all[2]["detail"]["body"]["messages"][0]["content"], "q");
    assert_eq!(all[2]["method"], "POST");
    assert_eq!(all[2]["path"], "/v1/chat/completions");

    let objects = &sim.state()["supabase"]["buckets"]["user-files"]["objects"];
    assert_eq!(objects["obj"]["sha256"], sha256(b"abc"));

    let (_, filtered) = json_of(
        client
            .get(format!(
                "{}/_sim/requests?route=moonshot.*&since=1",
                sim.url()
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    assert_eq!(filtered[0]["route"], "moonshot.chat");

    control(&client, &sim, "reset", json!({})).await;
    assert!(sim.requests().is_empty());
    let state = sim.state();
    assert_eq!(state["moonshot"]["file_count"], 0);
    assert_eq!(
        state["supabase"]["buckets"]["user-files"]["objects"],
        json!({})
    );
}

#[tokio::test]
async fn peak_concurrency_is_measured() {
    let (sim, client) = start().await;
    control(&client, &sim, "config", json!({"chat_latency_ms": 200})).await;
    let body =
        json!({"model": "kimi-k2-0711-preview", "messages": [{"role": "user", "content": "x"}]});

    // 20 calls through a client-side limit of 3, as the worker's semaphore would do.
    let limit = Arc::new(tokio::sync::Semaphore::new(3));
    let calls = (0..20).map(|_| {
        let (client, body, limit, url) = (
            client.clone(),
            body.clone(),
            limit.clone(),
            format!("{}/chat/completions", sim.moonshot_url()),
        );
        async move {
            let _permit = limit.acquire().await.unwrap();
            let resp = client
                .post(url)
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
    });
    futures::future::join_all(calls).await;
    let stats = sim.state()["chat"].clone();
    assert_eq!(stats["peak"], 3);
    assert_eq!(stats["peak_by_model"]["kimi-k2-0711-preview"], 3);
    assert_eq!(stats["completed"], 20);
    assert_eq!(stats["in_flight"], 0);

    // Unlimited: all 20 overlap. The latency is long so that they surely do.
    control(&client, &sim, "reset", json!({})).await;
    control(&client, &sim, "config", json!({"chat_latency_ms": 1500})).await;
    let calls = (0..20).map(|_| chat(&client, &sim, body.clone()));
    let responses = futures::future::join_all(calls).await;
    assert!(responses.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(sim.state()["chat"]["peak"], 20);

    // The provider's own concurrency limit.
    control(&client, &sim, "reset", json!({})).await;
    control(
        &client,
        &sim,
        "config",
        json!({"chat_latency_ms": 1500, "chat_max_concurrency": 2}),
    )
    .await;
    let calls = (0..4).map(|_| chat(&client, &sim, body.clone()));
    let statuses: Vec<StatusCode> = futures::future::join_all(calls)
        .await
        .iter()
        .map(Response::status)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 2);
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        2
    );
    assert_eq!(sim.state()["chat"]["rejected"], 2);
}

#[tokio::test]
async fn the_binary_prints_its_address_and_serves() {
    let sim = SimProcess::spawn("sk-bin", &["--bucket", "user-files"])
        .await
        .expect("spawn exai-sim");
    assert!(sim.url.starts_with("http://127.0.0.1:"), "{}", sim.url);
    let client = Client::new();
    let resp = client
        .get(format!("{}/models", sim.moonshot_url()))
        .bearer_auth("sk-bin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .get(format!("{}/storage/v1/bucket/user-files", sim.url))
        .bearer_auth("sk-bin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, health) = json_of(
        client
            .get(format!("{}/_sim/health", sim.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(health, json!({"ok": true}));
}

#[test]
fn the_binary_has_help() {
    let out = std::process::Command::new(exai_tests::bin_path("exai-sim"))
        .arg("--help")
        .output()
        .expect("run exai-sim --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port",
        "--key",
        "--host",
        "--chat-latency-ms",
        "--bucket",
        "--tier",
        "--key-tier",
        "--moonshot-key",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[tokio::test]
async fn the_in_process_handle_controls_the_emulator() {
    let (sim, client) = start().await;
    sim.add_fault(json!({"route": "moonshot.models", "action": "fail", "status": 502, "count": 1}))
        .unwrap();
    assert!(sim.add_fault(json!({"action": "explode"})).is_err());
    let models = || {
        client
            .get(format!("{}/models", sim.moonshot_url()))
            .bearer_auth(KEY)
            .send()
    };
    let (status, body) = json_of(models().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["type"], "server_error");

    sim.configure(json!({"models": ["only-model"]})).unwrap();
    let (_, list) = json_of(models().await.unwrap()).await;
    assert_eq!(list["data"][0]["id"], "only-model");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    sim.down(
        exai_tests::sim::faults::DownMode::Status,
        500,
        Some(Duration::from_millis(200)),
    );
    assert_eq!(
        models().await.unwrap().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let back = wait_until(Duration::from_secs(5), || async {
        models().await.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(back, "the outage ends by itself");
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn backdate_ages_files_and_objects_or_changes_nothing() {
    let (sim, client) = start().await;
    let (_, file) = upload_file(&client, &sim, "a.txt", b"abc".to_vec(), "file-extract").await;
    let id = file["id"].as_str().unwrap().to_owned();
    let (status, _) = put_object(&client, &sim, "user-files/kimi-uploads/x", b"x", false).await;
    assert_eq!(status, StatusCode::OK);
    let now = chrono::Utc::now().timestamp();

    // One unknown name: a 404 naming it, and nothing changes.
    let resp = client
        .post(format!("{}/_sim/backdate", sim.url()))
        .json(&json!({"age_secs": 7200, "files": [id], "objects": ["user-files/nope"]}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("user-files/nope"));
    let get_file = || async {
        let resp = client
            .get(format!("{}/files/{id}", sim.moonshot_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        json_of(resp).await.1
    };
    assert!(get_file().await["created_at"].as_i64().unwrap() >= now - 5);

    let done = control(
        &client,
        &sim,
        "backdate",
        json!({"age_secs": 7200, "files": [id], "objects": ["user-files/kimi-uploads/x"]}),
    )
    .await;
    assert_eq!(done["changed"], 2);
    let created = get_file().await["created_at"].as_i64().unwrap();
    assert!((now - 7205..=now - 7195).contains(&created), "{created}");
    let (_, rows) = json_of(
        client
            .post(format!("{}/storage/v1/object/list/user-files", sim.url()))
            .bearer_auth(KEY)
            .json(&json!({"prefix": "kimi-uploads"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let stamp = rows[0]["created_at"].as_str().unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(stamp)
        .unwrap()
        .timestamp();
    assert!((now - 7205..=now - 7195).contains(&at), "{stamp}");
    assert_eq!(rows[0]["updated_at"], rows[0]["created_at"]);
}

// ---------------------------------------------------------------------------------------------
// Moonshot account tiers: admission, 429 bodies, usage and the bill.

const KEY_B: &str = "sk-test-key-b";

/// An emulator accepting `KEY` and `KEY_B` as Moonshot keys.
async fn start_two_keys() -> (Sim, Client) {
    let mut config = SimConfig::new(KEY);
    config.moonshot_keys = vec![KEY_B.to_owned()];
    let sim = Sim::start(config).await.expect("start exai-sim");
    (sim, Client::new())
}

async fn chat_as(client: &Client, sim: &Sim, key: &str, body: Value) -> Response {
    client
        .post(format!("{}/chat/completions", sim.moonshot_url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("chat request")
}

/// A one-token prompt ("hi": 2 bytes) answered with two words ("echo: hi").
fn hi(max_completion_tokens: Option<u64>) -> Value {
    let mut body = json!({"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hi"}]});
    if let Some(n) = max_completion_tokens {
        body["max_completion_tokens"] = json!(n);
    }
    body
}

/// Asserts a tier 429: status, the exact compact body, no wait header, Moonshot's headers.
async fn assert_tier_429(resp: Response, key: &str, message: &str) {
    let ids = exai_tests::sim::tiers::AccountIds::of(key);
    let message = message
        .replace("{org}", &ids.org)
        .replace("{proj}", &ids.project)
        .replace("{ak}", &ids.ak);
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = resp.headers().clone();
    assert!(headers.get("retry-after").is_none(), "{headers:?}");
    assert!(
        headers
            .keys()
            .all(|h| !h.as_str().starts_with("x-ratelimit")),
        "{headers:?}"
    );
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    assert_eq!(headers["msh-org-id"], ids.org.as_str());
    assert_eq!(headers["msh-project-id"], ids.project.as_str());
    assert!(headers.contains_key("msh-request-id"));
    assert!(headers.contains_key("x-msh-trace-id"));
    assert!(headers.contains_key("msh-gid"));
    let text = resp.text().await.unwrap();
    assert_eq!(
        text,
        json!({"error": {"message": message, "type": "rate_limit_reached_error"}}).to_string()
    );
    // Key order as captured: `message`, then `type`, no `code`.
    assert!(
        text.starts_with(r#"{"error":{"message":"Your account "#),
        "{text}"
    );
}

#[tokio::test]
async fn each_tier_limit_answers_moonshots_own_429() {
    let (sim, client) = start_two_keys().await;
    // RPM 2 for KEY; KEY_B keeps the default (unlimited) until given its own tier.
    control(&client, &sim, "config", json!({"tier": {"rpm": 2}})).await;
    for _ in 0..2 {
        assert_eq!(
            chat(&client, &sim, hi(Some(10))).await.status(),
            StatusCode::OK
        );
    }
    assert_tier_429(
        chat(&client, &sim, hi(Some(10))).await,
        KEY,
        "Your account {org}<{ak}> request reached organization max RPM: 2, please try again after 1 seconds",
    )
    .await;

    // TPM 100: 41 tokens a request (1 prompt + 40 cap); the third would make 123.
    control(
        &client,
        &sim,
        "config",
        json!({"tiers": {KEY_B: {"tpm": 100}}}),
    )
    .await;
    for _ in 0..2 {
        let resp = chat_as(&client, &sim, KEY_B, hi(Some(40))).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_tier_429(
        chat_as(&client, &sim, KEY_B, hi(Some(40))).await,
        KEY_B,
        "Your account {org} / {proj} <{ak}> request reached organization TPM rate limit, current: 123, limit: 100",
    )
    .await;

    // TPD 50: 31 a request; the second would make 62.
    control(&client, &sim, "reset", json!({})).await;
    control(&client, &sim, "config", json!({"tier": {"tpd": 50}})).await;
    assert_eq!(
        chat(&client, &sim, hi(Some(30))).await.status(),
        StatusCode::OK
    );
    assert_tier_429(
        chat(&client, &sim, hi(Some(30))).await,
        KEY,
        "Your account {org} / {proj} <{ak}> request reached organization TPD rate limit, current: 62, limit: 50",
    )
    .await;

    // Concurrency 1: a stream holds its slot until its end.
    control(&client, &sim, "reset", json!({})).await;
    control(
        &client,
        &sim,
        "config",
        json!({"tier": "tier0", "stream_chunk_delay_ms": 300}),
    )
    .await;
    let mut body = hi(Some(10));
    body["stream"] = json!(true);
    let held = chat(&client, &sim, body).await;
    assert_eq!(held.status(), StatusCode::OK);
    assert_eq!(held.headers()["msh-gid"], "tier0");
    let mut stream = held.bytes_stream();
    stream.next().await.expect("a first chunk").unwrap();
    assert_tier_429(
        chat(&client, &sim, hi(Some(10))).await,
        KEY,
        "Your account {org}<{ak}> request reached max organization concurrency: 1, please try again after 1 seconds",
    )
    .await;
    while stream.next().await.is_some() {}
    assert!(
        wait_until(Duration::from_secs(5), || async {
            sim.usage()["keys"][KEY]["in_flight"] == 0
        })
        .await
    );
    assert_eq!(
        chat(&client, &sim, hi(Some(10))).await.status(),
        StatusCode::OK
    );

    let bill = sim.usage();
    assert_eq!(
        bill["keys"][KEY]["refused"],
        json!({"concurrency": 1, "rpm": 0, "tpm": 0, "tpd": 0})
    );
    assert_eq!(bill["keys"][KEY]["admitted"], 2);
    assert_eq!(bill["keys"][KEY]["tier"]["group"], "tier0");
    assert_eq!(bill["keys"][KEY]["tier"]["rpm"], 3);
}

#[tokio::test]
async fn tpm_counts_the_reservation_not_the_generation() {
    let (sim, client) = start().await;
    // Each call generates 2 tokens but reserves 1 + 1024 (no cap named: the default).
    control(&client, &sim, "config", json!({"tier": {"tpm": 2100}})).await;
    for _ in 0..2 {
        let (status, body) = json_of(chat(&client, &sim, hi(None)).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["usage"]["total_tokens"], 3);
    }
    assert_tier_429(
        chat(&client, &sim, hi(None)).await,
        KEY,
        "Your account {org} / {proj} <{ak}> request reached organization TPM rate limit, current: 3075, limit: 2100",
    )
    .await;
    // A smaller cap fits (2050 + 41), `max_tokens` counting like `max_completion_tokens`.
    let mut body = hi(None);
    body["max_tokens"] = json!(40);
    assert_eq!(chat(&client, &sim, body).await.status(), StatusCode::OK);
    let bill = sim.usage();
    let me = &bill["keys"][KEY];
    assert_eq!(me["reserved_tokens"], 2 * 1025 + 41);
    assert_eq!(me["minute"]["tokens"], 2 * 1025 + 41);
    assert_eq!(me["billed"]["total_tokens"], 9);
    assert_eq!(me["refused"]["tpm"], 1);

    // A new window: with a 300 ms "minute", the budget comes back by itself.
    control(
        &client,
        &sim,
        "config",
        json!({"rate_window_minute_ms": 300}),
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            chat(&client, &sim, hi(None)).await.status() == StatusCode::OK
        })
        .await
    );
}

#[tokio::test]
async fn a_tier_lowered_at_run_time_applies_to_the_next_request() {
    let (sim, client) = start_two_keys().await;
    for _ in 0..5 {
        assert_eq!(
            chat(&client, &sim, hi(Some(5))).await.status(),
            StatusCode::OK
        );
    }
    // Tier0 allows 3 requests a minute: 5 were already made in this window.
    let config = control(&client, &sim, "config", json!({"tier": "tier0"})).await;
    assert_eq!(config["tier"], json!({"preset": "tier0"}));
    assert_tier_429(
        chat(&client, &sim, hi(Some(5))).await,
        KEY,
        "Your account {org}<{ak}> request reached organization max RPM: 3, please try again after 1 seconds",
    )
    .await;
    // A key's own tier wins over the default; null removes it again.
    control(&client, &sim, "config", json!({"tiers": {KEY: "tier5"}})).await;
    assert_eq!(
        chat(&client, &sim, hi(Some(5))).await.status(),
        StatusCode::OK
    );
    control(&client, &sim, "config", json!({"tiers": {KEY: null}})).await;
    assert_eq!(
        chat(&client, &sim, hi(Some(5))).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The other key has its own windows: its first three pass under the same tier.
    for _ in 0..3 {
        let resp = chat_as(&client, &sim, KEY_B, hi(Some(5))).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(
        chat_as(&client, &sim, KEY_B, hi(Some(5))).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Lifted again.
    control(&client, &sim, "config", json!({"tier": "unlimited"})).await;
    assert_eq!(
        chat(&client, &sim, hi(Some(5))).await.status(),
        StatusCode::OK
    );
    // An unknown preset is refused and changes nothing.
    let resp = client
        .post(format!("{}/_sim/config", sim.url()))
        .json(&json!({"tier": "tier9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        chat(&client, &sim, hi(Some(5))).await.status(),
        StatusCode::OK
    );
}

/// The chunks of an SSE body, without `[DONE]` (which must end it).
async fn sse_chunks(resp: Response) -> Vec<Value> {
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("an SSE data line"))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[tokio::test]
async fn usage_comes_in_moonshots_three_shapes() {
    let (sim, client) = start().await;
    // "hello there": 11 bytes, 3 estimated prompt tokens; "echo: hello there": 3 words.
    let usage = json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6});
    let body =
        json!({"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hello there"}]});
    let (status, plain) = json_of(chat(&client, &sim, body.clone()).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(plain["usage"], usage);

    // Streaming without stream_options: inside the last chunk's choice, nowhere else.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = sse_chunks(chat(&client, &sim, streamed.clone()).await).await;
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["usage"], usage);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:?}"
    );
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"][0].get("usage").is_none())
    );

    // With include_usage: an extra `choices: []` chunk with top-level usage; `usage: null`
    // on every other chunk.
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = sse_chunks(chat(&client, &sim, streamed).await).await;
    let extra = chunks.last().unwrap();
    assert_eq!(extra["choices"], json!([]));
    assert_eq!(extra["usage"], usage);
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
}

#[tokio::test]
async fn the_bill_matches_the_usage_the_responses_reported() {
    let (sim, client) = start_two_keys().await;
    control(
        &client,
        &sim,
        "config",
        json!({"tiers": {KEY_B: {"rpm": 4}}}),
    )
    .await;
    let prompts = [
        "one",
        "two words",
        "a somewhat longer prompt of seven words",
    ];
    // (key, model) → (requests, prompt, completion) as the responses reported them.
    let mut reported: std::collections::BTreeMap<(&str, &str), (u64, u64, u64)> =
        Default::default();
    for (i, prompt) in prompts.iter().cycle().take(9).enumerate() {
        let key = if i % 2 == 0 { KEY } else { KEY_B };
        let model = if i % 3 == 0 {
            "kimi-k2.5"
        } else {
            "moonshot-v1-8k"
        };
        let mut body = json!({"model": model, "max_completion_tokens": 3 + i,
                              "messages": [{"role": "user", "content": prompt}]});
        let usage = match i % 3 {
            0 => {
                let (status, b) = json_of(chat_as(&client, &sim, key, body).await).await;
                assert_eq!(status, StatusCode::OK);
                b["usage"].clone()
            }
            1 => {
                body["stream"] = json!(true);
                let chunks = sse_chunks(chat_as(&client, &sim, key, body).await).await;
                chunks.last().unwrap()["choices"][0]["usage"].clone()
            }
            _ => {
                body["stream"] = json!(true);
                body["stream_options"] = json!({"include_usage": true});
                let chunks = sse_chunks(chat_as(&client, &sim, key, body).await).await;
                chunks.last().unwrap()["usage"].clone()
            }
        };
        let entry = reported.entry((key, model)).or_default();
        entry.0 += 1;
        entry.1 += usage["prompt_tokens"].as_u64().unwrap();
        entry.2 += usage["completion_tokens"].as_u64().unwrap();
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );
    }
    // KEY_B made 4 requests; a fifth is refused and billed nothing.
    assert_eq!(
        chat_as(&client, &sim, KEY_B, hi(Some(1))).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let (status, bill) = json_of(
        client
            .get(format!("{}/_sim/usage", sim.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for key in [KEY, KEY_B] {
        let mine = &bill["keys"][key];
        let mut totals = (0, 0, 0);
        for ((k, model), (requests, prompt, completion)) in &reported {
            if *k != key {
                continue;
            }
            let m = &mine["by_model"][*model];
            assert_eq!(m["requests"], *requests, "{key} {model}: {m}");
            assert_eq!(m["prompt_tokens"], *prompt, "{key} {model}: {m}");
            assert_eq!(m["completion_tokens"], *completion, "{key} {model}: {m}");
            assert_eq!(m["total_tokens"], prompt + completion);
            totals.0 += requests;
            totals.1 += prompt;
            totals.2 += completion;
        }
        assert_eq!(mine["billed"]["requests"], totals.0);
        assert_eq!(mine["billed"]["prompt_tokens"], totals.1);
        assert_eq!(mine["billed"]["completion_tokens"], totals.2);
        assert_eq!(mine["admitted"], totals.0);
        assert_eq!(mine["in_flight"], 0);
    }
    assert_eq!(
        bill["keys"][KEY_B]["refused"],
        json!({"concurrency": 0, "rpm": 1, "tpm": 0, "tpd": 0})
    );
    assert_eq!(bill["keys"][KEY]["tier"], Value::Null);
    assert_eq!(bill["keys"][KEY_B]["tier"]["group"], "custom");

    // Reset forgets the bill.
    control(&client, &sim, "reset", json!({})).await;
    assert_eq!(sim.usage(), json!({"keys": {}}));
}

#[tokio::test]
async fn the_token_estimate_endpoint_uses_the_same_estimate_and_costs_nothing() {
    let (sim, client) = start().await;
    control(&client, &sim, "config", json!({"tier": {"rpm": 1}})).await;
    let body =
        json!({"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hello there"}]});
    for _ in 0..3 {
        let (status, estimate) = json_of(
            client
                .post(format!(
                    "{}/tokenizers/estimate-token-count",
                    sim.moonshot_url()
                ))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(estimate, json!({"data": {"total_tokens": 3}}));
    }
    let (status, answer) = json_of(chat(&client, &sim, body).await).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn the_binary_takes_tiers_and_extra_keys() {
    let sim = SimProcess::spawn(
        "sk-bin",
        &["--moonshot-key", "sk-b", "--key-tier", "sk-b=tier0"],
    )
    .await
    .expect("spawn exai-sim");
    let client = Client::new();
    let send = |key: &'static str| {
        client
            .post(format!("{}/chat/completions", sim.moonshot_url()))
            .bearer_auth(key)
            .json(&hi(Some(5)))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(send("sk-b").await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        send("sk-b").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..4 {
        assert_eq!(send("sk-bin").await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        send("sk-other").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_stream_left_early_frees_its_slot_and_is_billed_for_what_was_sent() {
    let (sim, client) = start().await;
    control(
        &client,
        &sim,
        "config",
        json!({"tier": {"concurrency": 1}, "stream_chunk_delay_ms": 200}),
    )
    .await;
    let words = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10";
    let body = json!({"model": "kimi-k2.5", "stream": true, "max_completion_tokens": 50,
                      "messages": [{"role": "user", "content": words}]});
    let resp = chat(&client, &sim, body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    stream.next().await.expect("a first chunk").unwrap();
    assert_eq!(
        chat(&client, &sim, hi(Some(5))).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    drop(stream);
    // The slot comes back once the emulator notices the client left.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            sim.usage()["keys"][KEY]["in_flight"] == 0
        })
        .await
    );
    let billed = sim.usage()["keys"][KEY]["billed"].clone();
    assert_eq!(billed["requests"], 1, "{billed}");
    // "echo: w1 … w10" is 11 words; far fewer were sent before the client left.
    let completion = billed["completion_tokens"].as_u64().unwrap();
    assert!(completion < 11, "{billed}");
    assert_eq!(sim.state()["chat"]["completed"], 0);
    assert_eq!(
        chat(&client, &sim, hi(Some(5))).await.status(),
        StatusCode::OK
    );
}
