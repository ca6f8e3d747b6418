//! The emulated Supabase Storage API under `/storage/v1`: objects and buckets.
//!
//! Helpers return `Result<_, Response>` whose error is the reply to send; its size does not
//! matter on this path, hence the `result_large_err` allowance.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine;
use chrono::Utc;
use serde_json::{Value, json};

use super::Detail;
use super::body::{CollectError, Collected, collect, content_length, drain};
use super::errors::{entity_too_large, no_such_bucket, no_such_key, storage, storage_invalid};
use super::state::{Bucket, Object, Shared, lock, ts};

/// The `/storage/v1` routes.
pub fn routes() -> axum::Router<Arc<Shared>> {
    axum::Router::new()
        .route(
            "/storage/v1/object/{bucket}/{*path}",
            post(create).put(update).get(download).delete(delete_one),
        )
        .route("/storage/v1/object/{bucket}", delete(delete_many))
        .route(
            "/storage/v1/object/authenticated/{bucket}/{*path}",
            get(download),
        )
        .route("/storage/v1/object/public/{bucket}/{*path}", get(public))
        .route("/storage/v1/object/info/{bucket}/{*path}", get(info))
        .route(
            "/storage/v1/object/info/authenticated/{bucket}/{*path}",
            get(info),
        )
        .route("/storage/v1/object/list/{bucket}", post(list))
        .route("/storage/v1/bucket", post(create_bucket).get(list_buckets))
        .route(
            "/storage/v1/bucket/{id}",
            get(get_bucket).put(update_bucket).delete(delete_bucket),
        )
        .route("/storage/v1/bucket/{id}/empty", post(empty_bucket))
}

/// Whether `key` is a valid object key (`src/storage/limits.ts`).
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_/!.*'() &$=@;:+,?-".contains(c))
}

/// Whether `name` is a valid bucket name: the key characters without `/`, 1–100 long.
fn valid_bucket_name(name: &str) -> bool {
    (1..=100).contains(&name.len()) && valid_key(name) && !name.contains('/')
}

fn duplicate(code: &str) -> Response {
    storage(409, "Duplicate", code, "The resource already exists")
}

fn invalid_key(key: &str) -> Response {
    storage(
        400,
        "InvalidKey",
        "InvalidKey",
        format!("Invalid key: {key}"),
    )
}

/// Whether `mime` is allowed by a bucket's list (entries may end in `/*`).
fn mime_allowed(allowed: Option<&[String]>, mime: &str) -> bool {
    let Some(allowed) = allowed.filter(|a| !a.is_empty()) else {
        return true;
    };
    let base = mime.split(';').next().unwrap_or("").trim();
    allowed.iter().any(|a| match a.strip_suffix("/*") {
        Some(kind) => base.split('/').next() == Some(kind),
        None => a.eq_ignore_ascii_case(base),
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What an upload carries besides the bytes.
struct UploadMeta {
    mimetype: String,
    cache_control: String,
    user_metadata: Option<Value>,
}

/// Reads an upload body: multipart (the first part with a filename is the file; fields
/// `cacheControl`, `contentType`, `metadata`) or raw bytes. `Err` is the reply to send.
async fn read_upload(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<(Collected, UploadMeta), Response> {
    let content_type = header_str(headers, "content-type")
        .unwrap_or("application/octet-stream")
        .to_owned();
    let header_metadata = header_str(headers, "x-metadata").and_then(|b64| {
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        serde_json::from_slice(&raw).ok()
    });
    let hint = content_length(headers);
    let too_large = |e| match e {
        CollectError::TooLarge => entity_too_large(),
        CollectError::Stream(e) => storage_invalid(format!("invalid body: {e}")),
    };
    if !content_type.starts_with("multipart/form-data") {
        let collected = collect(body.into_data_stream(), hint, limit)
            .await
            .map_err(too_large)?;
        let meta = UploadMeta {
            mimetype: content_type,
            cache_control: header_str(headers, "cache-control")
                .unwrap_or("no-cache")
                .to_owned(),
            user_metadata: header_metadata,
        };
        return Ok((collected, meta));
    }
    let mut request = Request::new(body);
    *request.headers_mut() = headers.clone();
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| storage_invalid(e.body_text()))?;
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut file: Option<(Collected, Option<String>)> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(storage_invalid(e.to_string())),
        };
        if field.file_name().is_some() && file.is_none() {
            let part_type = field.content_type().map(str::to_owned);
            let collected = collect(field, hint, limit).await.map_err(too_large)?;
            file = Some((collected, part_type));
        } else if let Some(name) = field.name().map(str::to_owned) {
            let value = field
                .text()
                .await
                .map_err(|e| storage_invalid(e.to_string()))?;
            fields.insert(name, value);
        }
    }
    let Some((collected, part_type)) = file else {
        return Err(storage(
            400,
            "InvalidRequest",
            "InvalidRequest",
            "No content provided",
        ));
    };
    let user_metadata = fields
        .get("metadata")
        .or_else(|| fields.get("userMetadata"))
        .and_then(|m| serde_json::from_str(m).ok())
        .or(header_metadata);
    let meta = UploadMeta {
        mimetype: fields
            .get("contentType")
            .cloned()
            .or(part_type)
            .unwrap_or_else(|| "text/plain;charset=UTF-8".to_owned()),
        cache_control: fields
            .get("cacheControl")
            .map(|s| format!("max-age={s}"))
            .unwrap_or_else(|| "no-cache".to_owned()),
        user_metadata,
    };
    Ok((collected, meta))
}

/// `POST /object/{bucket}/{path}`: create; an existing key is a 409 Duplicate unless
/// `x-upsert: true`.
async fn create(
    State(sh): State<Arc<Shared>>,
    Path((bucket, key)): Path<(String, String)>,
    req: Request,
) -> Response {
    let upsert =
        header_str(req.headers(), "x-upsert").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    put_object(sh, bucket, key, req, upsert).await
}

/// `PUT /object/{bucket}/{path}`: update (always upserts, as the current server does).
async fn update(
    State(sh): State<Arc<Shared>>,
    Path((bucket, key)): Path<(String, String)>,
    req: Request,
) -> Response {
    put_object(sh, bucket, key, req, true).await
}

async fn put_object(
    sh: Arc<Shared>,
    bucket: String,
    key: String,
    req: Request,
    upsert: bool,
) -> Response {
    let (parts, body) = req.into_parts();
    let global_limit = sh.tunables().storage_max_bytes;
    let early = (|| {
        if !valid_key(&key) {
            return Err(invalid_key(&key));
        }
        let store = lock(&sh.store);
        let Some(b) = store.buckets.get(&bucket) else {
            return Err(no_such_bucket());
        };
        let limit = b
            .file_size_limit
            .map_or(global_limit, |l| l.min(global_limit));
        let multipart = header_str(&parts.headers, "content-type")
            .is_some_and(|c| c.starts_with("multipart/form-data"));
        if !multipart && content_length(&parts.headers).is_some_and(|n| n > limit) {
            return Err(entity_too_large());
        }
        if !upsert && b.objects.contains_key(&key) {
            return Err(duplicate("KeyAlreadyExists"));
        }
        Ok((limit, b.allowed_mime_types.clone()))
    })();
    let (limit, allowed) = match early {
        Ok(v) => v,
        Err(reply) => {
            drain(body).await;
            return reply;
        }
    };
    let (collected, meta) = match read_upload(&parts.headers, body, limit).await {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    if !mime_allowed(allowed.as_deref(), &meta.mimetype) {
        return storage(
            415,
            "invalid_mime_type",
            "InvalidMimeType",
            format!("mime type {} is not supported", meta.mimetype),
        );
    }
    let size = collected.data.len();
    let id = {
        let mut store = lock(&sh.store);
        let Some(b) = store.buckets.get_mut(&bucket) else {
            return no_such_bucket();
        };
        let now = Utc::now();
        let previous = b.objects.get(&key);
        if previous.is_some() && !upsert {
            return duplicate("KeyAlreadyExists");
        }
        let object = Object {
            id: previous.map_or_else(uuid::Uuid::new_v4, |p| p.id),
            version: uuid::Uuid::new_v4(),
            data: collected.data,
            sha256: Default::default(),
            mimetype: meta.mimetype.clone(),
            cache_control: meta.cache_control,
            user_metadata: meta.user_metadata,
            created_at: previous.map_or(now, |p| p.created_at),
            updated_at: now,
        };
        let id = object.id;
        b.objects.insert(key.clone(), object);
        id
    };
    let detail = Detail(json!({
        "bucket": bucket, "key": key, "upsert": upsert, "size": size,
        "content_type": meta.mimetype,
    }));
    (
        detail,
        Json(json!({"Id": id, "Key": format!("{bucket}/{key}")})),
    )
        .into_response()
}

/// The response of a download: the bytes with the stored headers.
fn object_response(object: &Object, key: &str, query: &HashMap<String, String>) -> Response {
    let mut resp = Body::from(object.data.clone()).into_response();
    let h = resp.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert(header::CONTENT_TYPE, value(&object.mimetype));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(object.data.len()));
    h.insert(header::CACHE_CONTROL, value(&object.cache_control));
    h.insert(header::ETAG, value(&object.etag()));
    h.insert(
        header::LAST_MODIFIED,
        value(
            &object
                .updated_at
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        ),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(name) = query.get("download") {
        let name = if name.is_empty() {
            key.rsplit('/').next().unwrap_or(key)
        } else {
            name
        };
        h.insert(
            header::CONTENT_DISPOSITION,
            value(&format!("attachment; filename=\"{name}\"")),
        );
    }
    resp
}

/// `GET` (and `HEAD`) `/object/{bucket}/{path}` and `/object/authenticated/{bucket}/{path}`.
async fn download(
    State(sh): State<Arc<Shared>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let store = lock(&sh.store);
    match store.buckets.get(&bucket).and_then(|b| b.objects.get(&key)) {
        Some(object) => object_response(object, &key, &query),
        None => no_such_key(),
    }
}

/// `GET /object/public/{bucket}/{path}`: no JWT needed, public buckets only.
async fn public(
    State(sh): State<Arc<Shared>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let store = lock(&sh.store);
    match store
        .buckets
        .get(&bucket)
        .filter(|b| b.public)
        .and_then(|b| b.objects.get(&key))
    {
        Some(object) => object_response(object, &key, &query),
        None => no_such_key(),
    }
}

/// `GET /object/info/{bucket}/{path}`.
async fn info(
    State(sh): State<Arc<Shared>>,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    let store = lock(&sh.store);
    let Some(o) = store.buckets.get(&bucket).and_then(|b| b.objects.get(&key)) else {
        return no_such_key();
    };
    Json(json!({
        "id": o.id, "name": key, "version": o.version, "bucket_id": bucket,
        "size": o.data.len(), "content_type": o.mimetype, "cache_control": o.cache_control,
        "etag": o.etag(), "metadata": o.user_metadata, "last_modified": ts(o.updated_at),
        "created_at": ts(o.created_at),
    }))
    .into_response()
}

/// `DELETE /object/{bucket}/{path}`.
async fn delete_one(
    State(sh): State<Arc<Shared>>,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    let mut store = lock(&sh.store);
    match store
        .buckets
        .get_mut(&bucket)
        .and_then(|b| b.objects.remove(&key))
    {
        Some(_) => Json(json!({"message": "Successfully deleted"})).into_response(),
        None => no_such_key(),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body)
        .map_err(|e| storage_invalid(format!("body is not valid JSON: {e}")))
}

/// `DELETE /object/{bucket}` with `{"prefixes": [names]}`: the deleted rows; missing names
/// (and a missing bucket) are skipped.
async fn delete_many(
    State(sh): State<Arc<Shared>>,
    Path(bucket): Path<String>,
    body: Bytes,
) -> Response {
    let request = match parse_json(&body) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let Some(names) = request.get("prefixes").and_then(Value::as_array) else {
        return storage_invalid("body must have required property 'prefixes'");
    };
    if names.is_empty() {
        return storage_invalid("body/prefixes must NOT have fewer than 1 items");
    }
    let Some(names) = names.iter().map(Value::as_str).collect::<Option<Vec<_>>>() else {
        return storage_invalid("body/prefixes/0 must be string");
    };
    let mut store = lock(&sh.store);
    let mut deleted = Vec::new();
    if let Some(b) = store.buckets.get_mut(&bucket) {
        for name in names {
            if let Some(o) = b.objects.remove(name) {
                deleted.push(o.row(&bucket, name));
            }
        }
    }
    let detail = Detail(json!({"bucket": bucket, "deleted": deleted.len()}));
    (detail, Json(Value::Array(deleted))).into_response()
}

/// `POST /object/list/{bucket}`: one "directory level" under `prefix`, names relative to it,
/// sub-folders as rows with null fields.
async fn list(State(sh): State<Arc<Shared>>, Path(bucket): Path<String>, body: Bytes) -> Response {
    let request = match parse_json(&body) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let Some(prefix) = request.get("prefix").and_then(Value::as_str) else {
        return storage_invalid("body must have required property 'prefix'");
    };
    let limit = request.get("limit").and_then(Value::as_u64).unwrap_or(100) as usize;
    let offset = request.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let search = request
        .get("search")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_lowercase();
    let column = request
        .pointer("/sortBy/column")
        .and_then(Value::as_str)
        .unwrap_or("name");
    let desc = request
        .pointer("/sortBy/order")
        .and_then(Value::as_str)
        .is_some_and(|o| o.eq_ignore_ascii_case("desc"));
    if !["name", "updated_at", "created_at", "last_accessed_at"].contains(&column) {
        return storage_invalid(format!(
            "body/sortBy/column must be equal to one of the allowed values, got {column}"
        ));
    }
    let dir = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    };
    let store = lock(&sh.store);
    let Some(b) = store.buckets.get(&bucket) else {
        return Json(json!([])).into_response();
    };
    // (name, sort key, row); folders have no timestamps.
    let mut rows: Vec<(String, Option<String>, Value)> = Vec::new();
    let mut folders = BTreeSet::new();
    for (name, o) in b.objects.range(dir.clone()..) {
        let Some(rest) = name.strip_prefix(&dir) else {
            break;
        };
        if rest.is_empty() || !rest.to_lowercase().starts_with(&search) {
            continue;
        }
        match rest.split_once('/') {
            Some((folder, _)) => {
                if folders.insert(folder.to_owned()) {
                    rows.push((
                        folder.to_owned(),
                        None,
                        json!({"name": folder, "id": null, "updated_at": null, "created_at": null,
                               "last_accessed_at": null, "metadata": null}),
                    ));
                }
            }
            None => {
                let stamp = if column == "created_at" {
                    ts(o.created_at)
                } else {
                    ts(o.updated_at)
                };
                rows.push((
                    rest.to_owned(),
                    Some(stamp),
                    json!({"name": rest, "id": o.id, "updated_at": ts(o.updated_at),
                           "created_at": ts(o.created_at), "last_accessed_at": ts(o.updated_at),
                           "metadata": o.metadata()}),
                ));
            }
        }
    }
    drop(store);
    rows.sort_by(|a, b| {
        let ordering = if column == "name" {
            a.0.cmp(&b.0)
        } else {
            // Postgres: NULLS LAST ascending, NULLS FIRST descending (the reverse below).
            match (&a.1, &b.1) {
                (Some(x), Some(y)) => x.cmp(y).then_with(|| a.0.cmp(&b.0)),
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, None) => a.0.cmp(&b.0),
            }
        };
        if desc { ordering.reverse() } else { ordering }
    });
    let page: Vec<Value> = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(_, _, row)| row)
        .collect();
    Json(Value::Array(page)).into_response()
}

fn bucket_json(b: &Bucket) -> Value {
    json!({
        "id": b.id, "name": b.name, "owner": "", "public": b.public, "type": "STANDARD",
        "file_size_limit": b.file_size_limit, "allowed_mime_types": b.allowed_mime_types,
        "created_at": ts(b.created_at), "updated_at": ts(b.updated_at),
    })
}

/// A bucket's `file_size_limit`: bytes, or a string such as `"20MB"` (decimal units).
fn parse_size(v: &Value) -> Result<Option<u64>, Response> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_u64()),
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (n, unit) = s.split_at(split);
            let n: u64 = n
                .parse()
                .map_err(|_| storage_invalid(format!("invalid file size: {s}")))?;
            let factor = match unit.trim().to_ascii_uppercase().as_str() {
                "" | "B" => 1,
                "KB" => 1_000,
                "MB" => 1_000_000,
                "GB" => 1_000_000_000,
                _ => return Err(storage_invalid(format!("invalid file size: {s}"))),
            };
            Ok(Some(n * factor))
        }
        _ => Err(storage_invalid(
            "body/file_size_limit must be integer or string",
        )),
    }
}

fn mime_list(v: Option<&Value>) -> Result<Option<Vec<String>>, Response> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| m.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| storage_invalid("body/allowed_mime_types must be strings")),
        Some(_) => Err(storage_invalid("body/allowed_mime_types must be array")),
    }
}

/// `POST /bucket`.
async fn create_bucket(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let request = match parse_json(&body) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let Some(name) = request.get("name").and_then(Value::as_str) else {
        return storage_invalid("body must have required property 'name'");
    };
    let id = request.get("id").and_then(Value::as_str).unwrap_or(name);
    if !valid_bucket_name(name) || !valid_bucket_name(id) {
        return storage(
            400,
            "Invalid Input",
            "InvalidBucketName",
            "Bucket name invalid",
        );
    }
    let size_limit = match parse_size(request.get("file_size_limit").unwrap_or(&Value::Null)) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let mimes = match mime_list(request.get("allowed_mime_types")) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let mut store = lock(&sh.store);
    if store.buckets.contains_key(id) {
        return duplicate("BucketAlreadyExists");
    }
    let now = Utc::now();
    store.buckets.insert(
        id.to_owned(),
        Bucket {
            id: id.to_owned(),
            name: name.to_owned(),
            public: request
                .get("public")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            file_size_limit: size_limit,
            allowed_mime_types: mimes,
            created_at: now,
            updated_at: now,
            objects: Default::default(),
        },
    );
    Json(json!({ "name": name })).into_response()
}

/// `GET /bucket`.
async fn list_buckets(State(sh): State<Arc<Shared>>) -> Response {
    let store = lock(&sh.store);
    Json(Value::Array(
        store.buckets.values().map(bucket_json).collect(),
    ))
    .into_response()
}

/// `GET /bucket/{id}`.
async fn get_bucket(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match lock(&sh.store).buckets.get(&id) {
        Some(b) => Json(bucket_json(b)).into_response(),
        None => no_such_bucket(),
    }
}

/// `PUT /bucket/{id}`: `public`, `file_size_limit`, `allowed_mime_types`.
async fn update_bucket(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request = match parse_json(&body) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let size_limit = match request.get("file_size_limit").map(parse_size).transpose() {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let mimes = match mime_list(request.get("allowed_mime_types")) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let mut store = lock(&sh.store);
    let Some(b) = store.buckets.get_mut(&id) else {
        return no_such_bucket();
    };
    if let Some(public) = request.get("public").and_then(Value::as_bool) {
        b.public = public;
    }
    if let Some(limit) = size_limit {
        b.file_size_limit = limit;
    }
    if request.get("allowed_mime_types").is_some() {
        b.allowed_mime_types = mimes;
    }
    b.updated_at = Utc::now();
    Json(json!({"message": "Successfully updated"})).into_response()
}

/// `DELETE /bucket/{id}`: only an empty bucket.
async fn delete_bucket(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut store = lock(&sh.store);
    match store.buckets.get(&id) {
        None => no_such_bucket(),
        Some(b) if !b.objects.is_empty() => storage(
            409,
            "ResourceNotEmpty",
            "ResourceNotEmpty",
            "The bucket you tried to delete is not empty",
        ),
        Some(_) => {
            store.buckets.remove(&id);
            Json(json!({"message": "Successfully deleted"})).into_response()
        }
    }
}

/// `POST /bucket/{id}/empty` (done at once here, though the message says it is queued).
async fn empty_bucket(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut store = lock(&sh.store);
    let Some(b) = store.buckets.get_mut(&id) else {
        return no_such_bucket();
    };
    b.objects.clear();
    Json(json!({"message": "Empty bucket has been queued. Completion may take up to an hour."}))
        .into_response()
}
