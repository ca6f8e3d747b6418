//! The control API under `/_sim/`: reset, records, state, tunables, fault rules, down/up.
//! It needs no credentials and is never recorded, delayed or failed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::TunablesPatch;
use super::faults::{Down, DownMode, RuleSpec};
use super::server::Conn;
use super::state::{Shared, lock};

/// The `/_sim` routes.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/_sim/reset", post(reset))
        .route("/_sim/requests", get(requests).delete(clear_requests))
        .route("/_sim/state", get(state))
        .route("/_sim/config", get(get_config).post(set_config))
        .route("/_sim/usage", get(usage))
        .route(
            "/_sim/faults",
            get(list_faults).post(add_faults).delete(clear_faults),
        )
        .route("/_sim/faults/{id}", delete(remove_fault))
        .route("/_sim/down", post(go_down))
        .route("/_sim/up", post(come_up))
        .route("/_sim/backdate", post(backdate))
}

fn bad_request(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": message.to_string()})),
    )
        .into_response()
}

async fn reset(State(sh): State<Arc<Shared>>) -> Json<Value> {
    sh.reset();
    Json(json!({"ok": true}))
}

/// Filters of `GET /_sim/requests`.
#[derive(Debug, Deserialize)]
struct RequestFilter {
    /// A route name or glob (`supabase.*`).
    route: Option<String>,
    /// Only records with a larger `seq`.
    since: Option<u64>,
}

async fn requests(State(sh): State<Arc<Shared>>, Query(f): Query<RequestFilter>) -> Json<Value> {
    let records = lock(&sh.records);
    let list: Vec<Value> = records
        .iter()
        .filter(|r| f.since.is_none_or(|s| r.seq > s))
        .filter(|r| {
            f.route
                .as_deref()
                .is_none_or(|g| super::faults::glob(g, r.route))
        })
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    Json(Value::Array(list))
}

async fn clear_requests(State(sh): State<Arc<Shared>>) -> Json<Value> {
    *lock(&sh.records) = Default::default();
    Json(json!({"ok": true}))
}

/// The whole observable state (see the module docs of `sim`).
///
/// The store is copied under its lock (cheap: bytes are reference-counted) and hashed after
/// the lock is released, so a first hash of a large object never stalls the handlers.
pub(crate) fn snapshot(sh: &Shared) -> Value {
    let (files, buckets) = {
        let store = lock(&sh.store);
        (store.files.clone(), store.buckets.clone())
    };
    let total: usize = files.iter().map(|f| f.data.len()).sum();
    let file_rows: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({"id": f.id, "filename": f.filename, "purpose": f.purpose,
                   "bytes": f.data.len(), "sha256": f.sha256.get(&f.data),
                   "created_at": f.created_at})
        })
        .collect();
    let bucket_rows: BTreeMap<&str, Value> = buckets
        .values()
        .map(|b| {
            let objects: BTreeMap<&str, Value> = b
                .objects
                .iter()
                .map(|(name, o)| {
                    let row = json!({"size": o.data.len(), "sha256": o.sha256.get(&o.data),
                                     "content_type": o.mimetype, "cache_control": o.cache_control});
                    (name.as_str(), row)
                })
                .collect();
            let row = json!({"public": b.public, "file_size_limit": b.file_size_limit,
                             "objects": objects});
            (b.id.as_str(), row)
        })
        .collect();
    let files = json!({"files": file_rows, "file_count": files.len(), "total_bytes": total});
    let buckets = json!({ "buckets": bucket_rows });
    let chat = lock(&sh.chat).clone();
    let (down, faults) = {
        let mut f = lock(&sh.faults);
        let down = f.down().map(|d| {
            json!({"mode": d.mode, "status": d.status,
                   "remaining_ms": d.until.map(|u| u.saturating_duration_since(Instant::now()).as_millis() as u64)})
        });
        (down, serde_json::to_value(f.rules()).unwrap_or(Value::Null))
    };
    json!({
        "moonshot": files,
        "supabase": buckets,
        "chat": chat,
        "down": down,
        "faults": faults,
    })
}

async fn state(State(sh): State<Arc<Shared>>) -> Json<Value> {
    Json(snapshot(&sh))
}

/// The bill: per key, the tier in force, requests admitted and refused per limit kind, tokens
/// reserved at admission, tokens billed (prompt + actual completion) in all and per model, and
/// the current windows.
pub(crate) fn usage_view(sh: &Shared) -> Value {
    let t = sh.tunables();
    lock(&sh.accounts).view(|key| t.tier_of(key).cloned(), t.windows())
}

async fn usage(State(sh): State<Arc<Shared>>) -> Json<Value> {
    Json(usage_view(&sh))
}

async fn get_config(State(sh): State<Arc<Shared>>) -> Json<Value> {
    Json(serde_json::to_value(sh.tunables()).unwrap_or(Value::Null))
}

async fn set_config(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let patch: TunablesPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let mut t = sh.tunables.write().unwrap_or_else(|e| e.into_inner());
    patch.apply(&mut t);
    Json(serde_json::to_value(&*t).unwrap_or(Value::Null)).into_response()
}

async fn list_faults(State(sh): State<Arc<Shared>>) -> Json<Value> {
    Json(serde_json::to_value(lock(&sh.faults).rules()).unwrap_or(Value::Null))
}

/// `POST /_sim/faults`: one rule (answers `{"id"}`) or an array of rules (`{"ids"}`).
async fn add_faults(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(RuleSpec),
        Many(Vec<RuleSpec>),
    }
    let specs = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(_)) => serde_json::from_slice::<Vec<RuleSpec>>(&body).map(OneOrMany::Many),
        Ok(_) => serde_json::from_slice::<RuleSpec>(&body).map(OneOrMany::One),
        Err(e) => Err(e),
    };
    let mut faults = lock(&sh.faults);
    match specs {
        Ok(OneOrMany::One(spec)) => Json(json!({"id": faults.add(spec)})).into_response(),
        Ok(OneOrMany::Many(specs)) => {
            let ids: Vec<u64> = specs.into_iter().map(|s| faults.add(s)).collect();
            Json(json!({ "ids": ids })).into_response()
        }
        Err(e) => bad_request(e),
    }
}

async fn clear_faults(State(sh): State<Arc<Shared>>) -> Json<Value> {
    lock(&sh.faults).clear();
    Json(json!({"ok": true}))
}

async fn remove_fault(State(sh): State<Arc<Shared>>, Path(id): Path<u64>) -> Response {
    if lock(&sh.faults).remove(id) {
        Json(json!({"ok": true})).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such rule"})),
        )
            .into_response()
    }
}

/// The body of `POST /_sim/down`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DownRequest {
    #[serde(default = "default_mode")]
    mode: DownMode,
    #[serde(default = "default_status")]
    status: u16,
    for_ms: Option<u64>,
}

fn default_mode() -> DownMode {
    DownMode::Close
}

fn default_status() -> u16 {
    503
}

/// `POST /_sim/down`: starts an outage and closes every open connection but this one.
async fn go_down(
    State(sh): State<Arc<Shared>>,
    Extension(conn): Extension<Conn>,
    body: Bytes,
) -> Response {
    let request: DownRequest = if body.is_empty() {
        DownRequest {
            mode: default_mode(),
            status: default_status(),
            for_ms: None,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_request(e),
        }
    };
    lock(&sh.faults).set_down(Down {
        mode: request.mode,
        status: request.status,
        until: request
            .for_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms)),
    });
    if request.mode != DownMode::Status {
        lock(&sh.conns).kill_all_but(conn.id);
    }
    sh.down_changed.send_modify(|v| *v += 1);
    Json(json!({"ok": true, "mode": request.mode})).into_response()
}

/// `POST /_sim/up`: ends the outage.
async fn come_up(State(sh): State<Arc<Shared>>) -> Json<Value> {
    lock(&sh.faults).set_up();
    sh.down_changed.send_modify(|v| *v += 1);
    Json(json!({"ok": true}))
}

/// The body of `POST /_sim/backdate`: make Moonshot files and Supabase objects `age_secs` old.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackdateRequest {
    /// The age to give them, in seconds (their creation time becomes now minus this).
    pub age_secs: u64,
    /// Moonshot file ids.
    #[serde(default)]
    pub files: Vec<String>,
    /// Supabase objects as `bucket/name` (the bucket id is the first path segment).
    #[serde(default)]
    pub objects: Vec<String>,
}

/// Sets the creation time of the named files, and the creation and update times of the named
/// objects, to now minus `age_secs`. Names nothing that does not exist: when one is missing,
/// nothing changes and the error names it.
pub(crate) fn apply_backdate(sh: &Shared, request: &BackdateRequest) -> Result<usize, String> {
    let secs = i64::try_from(request.age_secs).map_err(|_| "age_secs is too large".to_owned())?;
    let at = chrono::Utc::now() - chrono::Duration::seconds(secs);
    let mut store = lock(&sh.store);
    for id in &request.files {
        if store.file(id).is_none() {
            return Err(format!("no such file: {id}"));
        }
    }
    let mut objects = Vec::with_capacity(request.objects.len());
    for full in &request.objects {
        let (bucket, name) = full
            .split_once('/')
            .ok_or_else(|| format!("`{full}` is not bucket/name"))?;
        let exists = store
            .buckets
            .get(bucket)
            .is_some_and(|b| b.objects.contains_key(name));
        if !exists {
            return Err(format!("no such object: {full}"));
        }
        objects.push((bucket.to_owned(), name.to_owned()));
    }
    for file in store.files.iter_mut() {
        if request.files.contains(&file.id) {
            file.created_at = at.timestamp();
        }
    }
    for (bucket, name) in &objects {
        if let Some(o) = store
            .buckets
            .get_mut(bucket)
            .and_then(|b| b.objects.get_mut(name))
        {
            o.created_at = at;
            o.updated_at = at;
        }
    }
    Ok(request.files.len() + objects.len())
}

/// `POST /_sim/backdate` `{"age_secs", "files"?, "objects"?}` → `{"ok":true,"changed":n}`; an
/// unknown file or object is a 404 and changes nothing.
async fn backdate(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: BackdateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    match apply_backdate(&sh, &request) {
        Ok(changed) => Json(json!({"ok": true, "changed": changed})).into_response(),
        Err(e) if e.starts_with("no such") => {
            (StatusCode::NOT_FOUND, Json(json!({"error": e}))).into_response()
        }
        Err(e) => bad_request(e),
    }
}
