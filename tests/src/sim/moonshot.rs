//! The emulated Moonshot API: files and chat completions under `/v1`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Detail;
use super::body::{CollectError, collect, content_length, drain};
use super::config::Tunables;
use super::errors::{moonshot, moonshot_invalid, moonshot_tier_limit};
use super::server::bearer;
use super::state::{MoonFile, Shared, lock};
use super::tiers::{AccountIds, Refusal, Tier, estimate_prompt_tokens};

/// The purposes `POST /v1/files` accepts.
const PURPOSES: &[&str] = &["file-extract", "image", "video", "batch"];

/// The `/v1` routes.
pub fn routes() -> axum::Router<Arc<Shared>> {
    axum::Router::new()
        .route("/v1/files", post(upload).get(list))
        .route("/v1/files/{id}", get(retrieve).delete(delete))
        .route("/v1/files/{id}/content", get(content))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/tokenizers/estimate-token-count", post(estimate))
}

fn file_object(f: &MoonFile) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.data.len(),
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "ok",
        "status_details": "",
    })
}

fn not_found(id: &str) -> Response {
    moonshot(
        404,
        "resource_not_found_error",
        format!("File not found: {id}"),
    )
}

/// A size as Moonshot's messages write it (`100MB`).
fn human(bytes: u64) -> String {
    const UNITS: &[(u64, &str)] = &[(1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")];
    for (size, unit) in UNITS {
        if bytes >= *size && bytes.is_multiple_of(*size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

fn too_many_files(max: u64) -> Response {
    moonshot_invalid(format!(
        "The number of files you have uploaded exceeded the max file count {max}, please delete previous uploaded files"
    ))
}

fn too_large(max: u64) -> Response {
    moonshot_invalid(format!(
        "File size is too large, max file size is {}, please confirm and re-upload the file",
        human(max)
    ))
}

/// A new file id: 20 lowercase base32 characters, like `cn0bmk198onv4v01aafg`.
fn new_file_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut n = uuid::Uuid::new_v4().as_u128();
    (0..20)
        .map(|_| {
            let c = ALPHABET[(n & 31) as usize] as char;
            n >>= 5;
            c
        })
        .collect()
}

/// `POST /v1/files`: multipart `file` (with a filename) and `purpose`.
async fn upload(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let t = sh.tunables();
    let hint = content_length(req.headers());
    if lock(&sh.store).files.len() as u64 >= t.max_files {
        drain(req.into_body()).await;
        return too_many_files(t.max_files);
    }
    let mut multipart = match Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(e) => return moonshot_invalid(format!("Invalid request: {}", e.body_text())),
    };
    let mut purpose: Option<String> = None;
    let mut file = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return moonshot_invalid(format!("Invalid request: {e}")),
        };
        match field.name() {
            Some("purpose") => match field.text().await {
                Ok(p) => purpose = Some(p),
                Err(e) => return moonshot_invalid(format!("Invalid request: {e}")),
            },
            Some("file") if file.is_none() => {
                let filename = field.file_name().map(str::to_owned);
                file = Some((filename, collect(field, hint, t.max_file_bytes).await));
            }
            _ => {
                if let Err(CollectError::Stream(e)) = collect(field, None, 0).await {
                    return moonshot_invalid(format!("Invalid request: {e}"));
                }
            }
        }
    }
    let Some((filename, collected)) = file else {
        return moonshot_invalid("Invalid request: the multipart part 'file' is required");
    };
    let Some(filename) = filename.filter(|f| !f.is_empty()) else {
        return moonshot_invalid("Invalid request: the part 'file' must carry a filename");
    };
    let purpose = purpose.unwrap_or_default();
    if !PURPOSES.contains(&purpose.as_str()) {
        return moonshot_invalid(format!(
            "Invalid purpose: {purpose:?}, only 'file-extract', 'image', 'video' and 'batch' accepted"
        ));
    }
    let collected = match collected {
        Ok(c) => c,
        Err(CollectError::TooLarge) => return too_large(t.max_file_bytes),
        Err(CollectError::Stream(e)) => return moonshot_invalid(format!("Invalid request: {e}")),
    };
    if collected.data.is_empty() {
        return moonshot_invalid("File size is zero, please confirm and re-upload the file");
    }
    let size = collected.data.len() as u64;
    let file = MoonFile {
        id: new_file_id(),
        filename,
        purpose,
        data: collected.data,
        sha256: Default::default(),
        created_at: chrono::Utc::now().timestamp(),
    };
    {
        let mut store = lock(&sh.store);
        if store.files.len() as u64 >= t.max_files {
            return too_many_files(t.max_files);
        }
        if store.total_file_bytes() + size > t.max_total_bytes {
            return moonshot_invalid(format!(
                "The total size of files you have uploaded exceeded the max total size {}, please delete previous uploaded files",
                human(t.max_total_bytes)
            ));
        }
        store.files.push(file.clone());
    }
    let detail = json!({"file_id": file.id, "filename": file.filename, "purpose": file.purpose});
    (Detail(detail), Json(file_object(&file))).into_response()
}

/// `GET /v1/files`: every file (query parameters such as `limit` are ignored, as documented).
async fn list(State(sh): State<Arc<Shared>>) -> Response {
    let data: Vec<Value> = lock(&sh.store).files.iter().map(file_object).collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/files/{id}`.
async fn retrieve(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match lock(&sh.store).file(&id) {
        Some(f) => Json(file_object(f)).into_response(),
        None => not_found(&id),
    }
}

/// `DELETE /v1/files/{id}`.
async fn delete(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut store = lock(&sh.store);
    let before = store.files.len();
    store.files.retain(|f| f.id != id);
    if store.files.len() == before {
        return not_found(&id);
    }
    Json(json!({"id": id, "object": "file", "deleted": true})).into_response()
}

/// A content type from a file name's extension.
fn file_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" | "log" | "ini" | "conf" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "py" => "text/x-python",
        "rs" => "text/x-rust",
        "js" => "text/javascript",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        _ => "application/octet-stream",
    }
}

/// `GET /v1/files/{id}/content`: the JSON real responses have, with the bytes as (lossy UTF-8)
/// text standing in for the extraction.
async fn content(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(file) = lock(&sh.store).file(&id).cloned() else {
        return not_found(&id);
    };
    if file.purpose == "image" || file.purpose == "video" {
        return moonshot_invalid(format!(
            "Invalid request: file {id} has purpose {}, which has no extracted content",
            file.purpose
        ));
    }
    Json(json!({
        "content": String::from_utf8_lossy(&file.data),
        "file_type": file_type(&file.filename),
        "filename": file.filename,
        "title": "",
        "type": "file",
    }))
    .into_response()
}

/// `GET /v1/models`.
async fn models(State(sh): State<Arc<Shared>>) -> Response {
    let data: Vec<Value> = sh
        .tunables()
        .models
        .iter()
        .map(|m| {
            let owner = if m.starts_with("glm") {
                "zhipuai"
            } else {
                "moonshot"
            };
            json!({"id": m, "object": "model", "created": 1_735_785_600, "owned_by": owner})
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// The text of a message's `content` (a string, or the `text` of its parts).
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Counts one in-flight completion, globally and for its key; dropping it ends the count.
struct InFlight {
    shared: Arc<Shared>,
    key: String,
    model: String,
    finished: bool,
}

impl InFlight {
    /// Starts counting, or names the limit that refuses it: the global
    /// `chat_max_concurrency`, then the key's tier (concurrency, RPM, TPM, TPD), charging
    /// `cost` tokens against TPM and TPD when admitted.
    fn start(
        shared: &Arc<Shared>,
        key: &str,
        model: &str,
        t: &Tunables,
        cost: u64,
    ) -> Result<Self, Refusal> {
        let mut chat = lock(&shared.chat);
        if let Some(limit) = t.chat_max_concurrency.filter(|l| chat.in_flight >= *l) {
            chat.rejected += 1;
            let refusal = Refusal::Concurrency { limit };
            lock(&shared.accounts).refuse(key, refusal);
            return Err(refusal);
        }
        let limits = t.tier_of(key).map(Tier::limits).unwrap_or_default();
        if let Err(refusal) =
            lock(&shared.accounts).admit(key, limits, cost, t.windows(), Instant::now())
        {
            chat.rejected += 1;
            return Err(refusal);
        }
        chat.in_flight += 1;
        chat.peak = chat.peak.max(chat.in_flight);
        let n = chat.in_flight_by_model.entry(model.to_owned()).or_default();
        *n += 1;
        let n = *n;
        let peak = chat.peak_by_model.entry(model.to_owned()).or_default();
        *peak = (*peak).max(n);
        Ok(Self {
            shared: shared.clone(),
            key: key.to_owned(),
            model: model.to_owned(),
            finished: false,
        })
    }

    /// Bills the completion (prompt + the completion tokens sent) to its key.
    fn bill(&self, prompt: u64, completion: u64) {
        lock(&self.shared.accounts).bill(&self.key, &self.model, prompt, completion);
    }

    /// Marks the completion as fully answered.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut chat = lock(&self.shared.chat);
        chat.in_flight = chat.in_flight.saturating_sub(1);
        if let Some(n) = chat.in_flight_by_model.get_mut(&self.model) {
            *n = n.saturating_sub(1);
        }
        if self.finished {
            chat.completed += 1;
        }
        lock(&self.shared.accounts).leave(&self.key);
    }
}

/// The deterministic answer: `echo: <last user text>`, then one line per uploaded file whose
/// id or extracted text appears in the messages, so a test can see the file reached the model.
fn reply(shared: &Shared, messages: &[Value]) -> String {
    let texts: Vec<String> = messages.iter().map(message_text).collect();
    let last_user = messages
        .iter()
        .zip(&texts)
        .rev()
        .find(|(m, _)| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|(_, t)| t.as_str())
        .unwrap_or("");
    let mut out = format!("echo: {last_user}");
    let all = texts.join("\n");
    let files: Vec<MoonFile> = lock(&shared.store).files.clone();
    for f in files {
        let text = String::from_utf8_lossy(&f.data);
        let seen = all.contains(&f.id) || (!text.trim().is_empty() && all.contains(text.as_ref()));
        if seen {
            let preview: String = text.chars().take(200).collect();
            out.push_str(&format!("\n[file {} {}: {}]", f.id, f.filename, preview));
        }
    }
    out
}

/// Moonshot's gateway headers on every chat answer (reference §1.6): `Msh-Request-Id`,
/// `Msh-Org-Id`, `Msh-Project-Id`, `Msh-Uid`, `X-Msh-Trace-Id`, and `Msh-Gid` (the tier group,
/// inferred meaning) when the key has a tier. Never `Retry-After` or `X-RateLimit-*`, which
/// captured responses lack.
fn msh_headers(resp: &mut Response, key: &str, tier: Option<&Tier>) {
    let ids = AccountIds::of(key);
    let h = resp.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set("msh-request-id", uuid::Uuid::new_v4().simple().to_string());
    set("msh-org-id", ids.org);
    set("msh-project-id", ids.project);
    set("msh-uid", ids.uid);
    set("x-msh-trace-id", uuid::Uuid::new_v4().simple().to_string());
    if let Some(tier) = tier {
        set("msh-gid", tier.group());
    }
}

/// `POST /v1/chat/completions`, plain or `stream: true` (SSE), admitted by the key's tier.
async fn chat(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = bearer(&headers).unwrap_or_default().to_owned();
    let mut resp = chat_answer(sh.clone(), &key, body).await;
    msh_headers(&mut resp, &key, sh.tunables().tier_of(&key));
    resp
}

/// `POST /v1/tokenizers/estimate-token-count`: `{"data":{"total_tokens":N}}` for the prompt,
/// with the emulator's estimate (see `tiers::estimate_prompt_tokens`). It is not counted
/// against any limit (whether the real one is, is unconfirmed).
async fn estimate(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return moonshot_invalid("Invalid request: the body must be a JSON object"),
        Err(e) => return moonshot_invalid(format!("Invalid request: {e}")),
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return moonshot_invalid("Invalid request: model is required");
    };
    if !sh.tunables().models.iter().any(|m| m == model) {
        return moonshot(
            404,
            "resource_not_found_error",
            format!("Not found the model {model} or Permission denied"),
        );
    }
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return moonshot_invalid("Invalid request: messages is required");
    };
    let tokens = estimate_prompt_tokens(messages.iter().map(message_text));
    Json(json!({"data": {"total_tokens": tokens}})).into_response()
}

async fn chat_answer(sh: Arc<Shared>, key: &str, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return moonshot_invalid("Invalid request: the body must be a JSON object"),
        Err(e) => return moonshot_invalid(format!("Invalid request: {e}")),
    };
    let t = sh.tunables();
    let Some(model) = request
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return moonshot_invalid("Invalid request: model is required");
    };
    let messages = match request.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m.clone(),
        _ => return moonshot_invalid("Invalid request: messages is required"),
    };
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let detail = Detail(json!({"model": model, "stream": stream, "body": request}));
    if !t.models.contains(&model) {
        let not_found = moonshot(
            404,
            "resource_not_found_error",
            format!("Not found the model {model} or Permission denied"),
        );
        return (detail, not_found).into_response();
    }
    if let Some(temp) = request.get("temperature").and_then(Value::as_f64)
        && !(0.0..=1.0).contains(&temp)
    {
        return moonshot_invalid(format!(
            "Invalid request: temperature {temp} is out of range [0, 1]"
        ));
    }
    if request
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 5)
    {
        return moonshot_invalid("Invalid request: n must be at most 5");
    }
    let max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64);
    let prompt_tokens = estimate_prompt_tokens(messages.iter().map(message_text));
    // Moonshot's admission cost: the prompt plus the completion cap, whatever is generated.
    let cost = prompt_tokens + max_tokens.unwrap_or(t.default_max_completion_tokens);
    let guard = match InFlight::start(&sh, key, &model, &t, cost) {
        Ok(guard) => guard,
        Err(refusal) => {
            let refused = moonshot_tier_limit(&AccountIds::of(key), refusal);
            return (detail, refused).into_response();
        }
    };

    let text = reply(&sh, &messages);
    let mut pieces: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
    let mut finish_reason = "stop";
    if let Some(max) = max_tokens
        && pieces.len() as u64 > max
    {
        pieces.truncate(max as usize);
        finish_reason = "length";
    }
    let completion_tokens = pieces.len() as u64;
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();

    tokio::time::sleep(Duration::from_millis(t.chat_latency_ms)).await;

    if !stream {
        let response = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": pieces.concat()},
                "finish_reason": finish_reason,
            }],
            "usage": usage,
        });
        guard.bill(prompt_tokens, completion_tokens);
        guard.finish();
        return (detail, Json(response)).into_response();
    }

    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let chunk = |delta: Value, finish: Option<&str>, choice_usage: Option<&Value>| {
        let mut choice = json!({"index": 0, "delta": delta, "finish_reason": finish});
        if let Some(u) = choice_usage {
            choice["usage"] = u.clone();
        }
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [choice],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        None,
        None,
    )];
    events.extend(
        pieces
            .iter()
            .map(|p| chunk(json!({ "content": p }), None, None)),
    );
    events.push(chunk(json!({}), Some(finish_reason), Some(&usage)));
    if include_usage {
        events.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        }));
    }
    let delay = Duration::from_millis(t.stream_chunk_delay_ms);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let count = events.len();
        for (i, event) in events.into_iter().enumerate() {
            if i > 1 && i + 1 < count && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx
                .send(Bytes::from(format!("data: {event}\n\n")))
                .await
                .is_err()
            {
                // The client went away: the content chunks sent are billed (inferred), and
                // the guard ends the in-flight count.
                let sent = (i as u64).saturating_sub(1).min(completion_tokens);
                guard.bill(prompt_tokens, sent);
                return;
            }
        }
        guard.bill(prompt_tokens, completion_tokens);
        if tx
            .send(Bytes::from_static(b"data: [DONE]\n\n"))
            .await
            .is_ok()
        {
            guard.finish();
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    let mut resp = (detail, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
