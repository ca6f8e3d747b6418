//! The server: one port for WebSocket upgrades (any path) and plain HTTP (`GET /health`, which
//! lists the live workers, `GET /ready`, `GET /metrics`, the admin API and page under `/admin`),
//! the state every connection shares ([`App`]), and the run loop with its graceful shutdown.
//!
//! Why axum plus tokio-tungstenite: axum serves the HTTP endpoints on the same listener and
//! `serve(..).with_graceful_shutdown` stops accepting on the shutdown token; the WebSocket
//! handshake is done here (a few header checks and the accept key) and the upgraded connection
//! is handed to tokio-tungstenite directly rather than through axum's wrapper, because after an
//! oversized frame the daemon must reach the raw socket to discard the frame's unread rest (see
//! `connection`), which axum's wrapper hides. tungstenite enforces `EXAI_WS_MAX_BYTES` from the
//! frame header, before buffering, and answers pings. Upgraded sockets are not tracked by axum,
//! so [`App`] keeps its own task tracker and each socket closes itself with 1001 when the token
//! fires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use exai_shared::Config;
use exai_shared::events::EventPublisher;
use exai_shared::keys::Keys;
use exai_shared::queue::{self, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_shared::semaphore::Semaphores;
use exai_shared::staging::Staging;
use exai_shared::subscriber::Subscriber;
use exai_shared::worker_registry::WorkerRegistry;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::connection;
use crate::limits::{ConnectionLimiter, DaemonLimits};
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::session::Sessions;

/// An upgraded WebSocket connection.
pub(crate) type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Redis could not be reached at start-up.
    #[error("could not connect to redis")]
    Redis(#[source] redis::RedisError),
    /// The semaphore inspector could not be set up.
    #[error("could not set up the semaphore inspector")]
    Semaphores(#[source] exai_shared::semaphore::SemaphoreError),
    /// `DATABASE_URL` is set but unusable.
    #[error("invalid database configuration")]
    Database(#[source] exai_shared::db::DbError),
    /// The listener failed.
    #[error("the listener failed")]
    Io(#[source] std::io::Error),
}

/// What every connection and HTTP handler shares; built once per process.
pub struct App {
    /// The process configuration.
    pub(crate) config: Config,
    /// The daemon's own limits.
    pub(crate) limits: DaemonLimits,
    /// The shared multiplexed Redis connection (never used for blocking commands).
    pub(crate) redis: RedisHandle,
    /// The `tool_calls` queue, where every call is enqueued.
    pub(crate) tool_calls: Queue,
    /// Every queue, for `health` and `queue_stats`.
    pub(crate) queues: Vec<Queue>,
    /// Read-only use: `inspect` for `health` and `queue_stats`. The daemon never acquires.
    pub(crate) semaphores: Semaphores,
    /// The live worker processes, for `health` and `/health`.
    pub(crate) workers: WorkerRegistry,
    /// The shared job-event subscription.
    pub(crate) relay: Relay,
    /// Publishes `Finished` for jobs the daemon cancels while they wait, so every waiter
    /// (in this daemon or another) hears of it at once.
    pub(crate) events: EventPublisher,
    /// The Prometheus metrics.
    pub(crate) metrics: Metrics,
    /// Open connections, in total and per IP.
    pub(crate) connections: ConnectionLimiter,
    /// Sessions with an open connection.
    pub(crate) sessions: Sessions,
    /// The Postgres pool for the admin API's storage view; `None` when `DATABASE_URL` is not
    /// set for the daemon (the daemon needs no database for anything else). Lazy: the first
    /// query opens the first connection.
    pub(crate) db: Option<exai_shared::db::PgPool>,
    /// SHA-256 of `EXAI_WS_TOKEN`, compared in constant time with the digest of the token a
    /// client sends (digests hide the length too); `None` when auth is off (loopback only).
    pub(crate) token_digest: Option<[u8; 32]>,
    /// Fires on shutdown; every connection watches it.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for the 1001 closes to go out.
    pub(crate) tasks: TaskTracker,
    /// When the daemon started.
    pub(crate) started: Instant,
    /// The staging store (`EXAI_STAGING_DIR`), where `kimi_upload_bytes` content is written
    /// before its job is enqueued.
    pub(crate) staging: Staging,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a token.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl App {
    /// Connects to Redis and sets up the shared parts. When `DATABASE_URL` was set (in the
    /// environment or `.env`), a lazy Postgres pool is built for the admin API's storage view;
    /// an unusable URL is an error now, an unreachable server only fails that view.
    pub async fn connect(
        config: Config,
        limits: DaemonLimits,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, DaemonError> {
        let redis = RedisHandle::connect(&config.redis)
            .await
            .map_err(DaemonError::Redis)?;
        let keys = Keys::new(config.redis.prefix.clone());
        let policy = QueuePolicy::from_config(&config.jobs);
        let queues: Vec<Queue> = queue::ALL_QUEUES
            .iter()
            .map(|name| Queue::new(redis.clone(), &keys, name, policy.clone()))
            .collect();
        let tool_calls = Queue::new(redis.clone(), &keys, queue::TOOL_CALLS, policy);
        let pubsub = RedisHandle::pubsub_client(&config.redis).map_err(DaemonError::Redis)?;
        let subscriber = Subscriber::connect(pubsub)
            .await
            .map_err(DaemonError::Redis)?;
        let relay = Relay::new(subscriber.clone(), keys.clone());
        let semaphores =
            Semaphores::new(redis.clone(), &subscriber, keys.clone(), &config.semaphores)
                .await
                .map_err(DaemonError::Semaphores)?;
        let token_digest = config.ws.token.as_ref().map(|t| digest(t.expose_secret()));
        let db = config
            .ws
            .database_url_set
            .then(|| exai_shared::db::connect_lazy(&config.database))
            .transpose()
            .map_err(DaemonError::Database)?;
        let staging = Staging::from_config(&config.uploads);
        Ok(Arc::new(Self {
            connections: ConnectionLimiter::new(
                limits.max_connections,
                limits.max_connections_per_ip,
            ),
            workers: WorkerRegistry::new(redis.clone(), &keys),
            events: EventPublisher::new(redis.clone(), keys),
            config,
            limits,
            redis,
            tool_calls,
            queues,
            semaphores,
            relay,
            metrics: Metrics::new(),
            sessions: Sessions::default(),
            db,
            token_digest,
            shutdown,
            tasks: TaskTracker::new(),
            started: Instant::now(),
            staging,
        }))
    }

    /// Whether `given` is the configured token, compared in constant time on the SHA-256
    /// digests (which hide the length too). Always `true` when auth is off (no token
    /// configured, loopback only).
    pub(crate) fn token_matches(&self, given: &str) -> bool {
        match &self.token_digest {
            Some(expected) => bool::from(expected.ct_eq(&digest(given))),
            None => true,
        }
    }

    /// Whether Redis answers a PING within two seconds.
    pub(crate) async fn redis_ready(&self) -> bool {
        let mut conn = self.redis.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ping).await,
            Ok(Ok(_))
        )
    }

    /// Counts per state of every queue, by name.
    pub(crate) async fn queue_counts(&self) -> Result<Value, exai_shared::queue::QueueError> {
        let mut out = serde_json::Map::new();
        for q in &self.queues {
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
        &self,
    ) -> Result<Value, exai_shared::semaphore::SemaphoreError> {
        let mut out = serde_json::Map::new();
        for s in self.semaphores.inspect().await? {
            out.insert(
                s.name.clone(),
                json!({
                    "limit": s.limit,
                    "default_limit": s.default_limit,
                    "overridden": s.overridden,
                    "in_use": s.in_use(),
                }),
            );
        }
        Ok(Value::Object(out))
    }

    /// The live worker processes (see `exai_shared::worker_registry`), under `workers` (and their
    /// number under `worker_count`), or the error under `workers_error`, into `out`.
    pub(crate) async fn add_workers(&self, out: &mut Value) -> bool {
        let live = tokio::time::timeout(Duration::from_secs(2), self.workers.live()).await;
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

    /// The body of `health_res.health` and of the WebSocket `health` op.
    pub(crate) async fn health(&self) -> (bool, Value) {
        let queues = self.queue_counts().await;
        let semaphores = self.semaphore_states().await;
        let ok = queues.is_ok() && semaphores.is_ok();
        let mut health = json!({
            "t": unix_secs(),
            "uptime_secs": self.started.elapsed().as_secs_f64(),
            "connections": self.connections.open(),
            "sessions": self.sessions.live(),
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
        let workers_ok = self.add_workers(&mut health).await;
        (ok && workers_ok, health)
    }
}

/// Unix time in seconds, as a float.
pub(crate) fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Unix time in milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Serves `listener` until `shutdown` fires: stops accepting, closes every socket with 1001,
/// waits up to the shutdown grace for them, and returns. Queued jobs stay in Redis.
pub async fn run(
    listener: TcpListener,
    config: Config,
    limits: DaemonLimits,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let app = App::connect(config, limits, shutdown.clone()).await?;
    serve(listener, app).await
}

/// Serves `listener` with an already built [`App`] (see [`run`]).
pub async fn serve(listener: TcpListener, app: Arc<App>) -> Result<(), DaemonError> {
    let admin = crate::admin::router(app.clone());
    let router = Router::new()
        .fallback(
            move |state: State<Arc<App>>, peer: ConnectInfo<SocketAddr>, req: Request| {
                handle(state, peer, admin.clone(), req)
            },
        )
        .with_state(app.clone());
    let stop = app.shutdown.clone();
    // A call's ack, progress and result are small frames written one after the other: with
    // Nagle's algorithm on, each waits for the client's delayed ACK (about 40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await
    .map_err(DaemonError::Io)?;
    app.tasks.close();
    if tokio::time::timeout(app.limits.shutdown_grace, app.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = app.tasks.len(),
            "connections still open after the shutdown grace"
        );
    }
    Ok(())
}

/// Every request: a WebSocket upgrade on any path, else the admin API and page under
/// `/admin`, else the HTTP endpoints.
async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut admin: Router,
    req: Request,
) -> Response {
    if wants_websocket(req.method(), req.headers()) {
        return upgrade(app, req, peer);
    }
    if crate::admin::is_admin_path(req.uri().path()) {
        return match admin.call(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    match req.uri().path() {
        "/health" => {
            let mut body = json!({
                "status": "healthy",
                "service": "exai-daemon",
                "timestamp": unix_secs(),
                "connections": app.connections.open(),
            });
            app.add_workers(&mut body).await;
            axum::Json(body).into_response()
        }
        "/ready" => {
            if app.redis_ready().await {
                axum::Json(json!({"ready": true})).into_response()
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"ready": false, "error": "redis unreachable"})),
                )
                    .into_response()
            }
        }
        "/metrics" => {
            app.metrics.refresh(&app.queues, &app.semaphores).await;
            (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                app.metrics.render(),
            )
                .into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Whether a header list names a token (comma-separated, case-insensitive).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A WebSocket opening handshake (RFC 6455 §4.2.1): `GET` with `Upgrade: websocket` and
/// `Connection: Upgrade`.
fn wants_websocket(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && header_has(headers, header::UPGRADE, "websocket")
        && header_has(headers, header::CONNECTION, "upgrade")
}

/// Answers the handshake with 101 and serves the upgraded connection in a tracked task.
/// Read chunk and write batching size of each WebSocket.
const WS_IO_BUFFER: usize = 8 * 1024;

fn upgrade(app: Arc<App>, mut req: Request, peer: SocketAddr) -> Response {
    let headers = req.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
        )
            .into_response();
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max = app.config.ws.max_bytes;
    // Small I/O buffers: most sessions sit idle, and the 128 KiB defaults made an idle
    // connection cost ~146 KiB; a large frame still reads fine (the buffer grows to fit it).
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_IO_BUFFER)
        .write_buffer_size(WS_IO_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let tasks = app.tasks.clone();
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                connection::serve(app, socket, peer).await;
            }
            Err(e) => tracing::debug!(peer = %peer, error = %e, "websocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
