//! What the daemon says about its own health and the deployment's: `GET /health` (alive, open
//! connections, the live workers of the registry), `GET /ready` (Redis answers a PING), and the
//! report of the WebSocket `health` op and the parts `queue_stats` shares with it (counts per
//! state of every queue, limit and use of every semaphore).

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::app::{App, unix_secs};

/// The answer to `GET /health`: the daemon is up; how many connections are open and which
/// workers are live.
pub(crate) async fn http_health(app: &App) -> Response {
    let mut body = json!({
        "status": "healthy",
        "service": "exai-daemon",
        "timestamp": unix_secs(),
        "connections": app.connections.open(),
    });
    add_workers(app, &mut body).await;
    axum::Json(body).into_response()
}

/// The answer to `GET /ready`: 200 when Redis answers, 503 when it does not.
pub(crate) async fn http_ready(app: &App) -> Response {
    if redis_ready(app).await {
        axum::Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "error": "redis unreachable"})),
        )
            .into_response()
    }
}

/// Whether Redis answers a PING within two seconds.
async fn redis_ready(app: &App) -> bool {
    let mut conn = app.redis.clone();
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(&mut conn);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    )
}

/// Counts per state of every queue, by name.
pub(crate) async fn queue_counts(app: &App) -> Result<Value, exai_shared::queue::QueueError> {
    let mut out = serde_json::Map::new();
    for q in &app.queues {
        let counts = q.counts().await?;
        out.insert(
            q.name().to_owned(),
            serde_json::to_value(counts).unwrap_or(Value::Null),
        );
    }
    Ok(Value::Object(out))
}

/// Limit and use of every semaphore, by name.
pub(crate) async fn semaphore_states(
    app: &App,
) -> Result<Value, exai_shared::semaphore::SemaphoreError> {
    let mut out = serde_json::Map::new();
    for s in app.semaphores.inspect().await? {
        out.insert(
            s.name.clone(),
            json!({
                "limit": s.limit,
                "effective_limit": s.effective_limit,
                "default_limit": s.default_limit,
                "overridden": s.overridden,
                "in_use": s.in_use(),
            }),
        );
    }
    Ok(Value::Object(out))
}

/// The live worker processes (see `exai_shared::worker_registry`), under `workers` (and their number
/// under `worker_count`), or the error under `workers_error`, into `out`.
async fn add_workers(app: &App, out: &mut Value) -> bool {
    let live = tokio::time::timeout(Duration::from_secs(2), app.workers.live()).await;
    match live.unwrap_or_else(|_| {
        Err(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        )))
    }) {
        Ok(w) => {
            out["worker_count"] = json!(w.len());
            out["workers"] = serde_json::to_value(w).unwrap_or(Value::Null);
            true
        }
        Err(e) => {
            out["workers_error"] = json!(e.to_string());
            false
        }
    }
}

/// The body of `health_res.health` (the WebSocket `health` op), and whether all is well.
pub(crate) async fn report(app: &App) -> (bool, Value) {
    let queues = queue_counts(app).await;
    let semaphores = semaphore_states(app).await;
    let ok = queues.is_ok() && semaphores.is_ok();
    let mut health = json!({
        "t": unix_secs(),
        "uptime_secs": app.started.elapsed().as_secs_f64(),
        "connections": app.connections.open(),
        "sessions": app.sessions.live(),
        "tool_count": exai_shared::tools::all().len(),
        "redis": if ok { "ok" } else { "unavailable" },
    });
    match queues {
        Ok(q) => health["queues"] = q,
        Err(e) => health["queues_error"] = json!(e.to_string()),
    }
    match semaphores {
        Ok(s) => health["semaphores"] = s,
        Err(e) => health["semaphores_error"] = json!(e.to_string()),
    }
    let workers_ok = add_workers(app, &mut health).await;
    (ok && workers_ok, health)
}
