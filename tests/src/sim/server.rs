//! The accept loop, the per-connection task, and the front door every provider request passes:
//! route naming, the down switch, fault rules, bearer checks, then the handler, then the record.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Method, Request};
use axum::response::Response;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::Detail;
use super::body::drain;
use super::errors::{self, Provider};
use super::faults::{Action, DownMode};
use super::state::{Record, Shared, lock};
use super::{control, moonshot, supabase};

/// The connection a request arrived on, as a request extension (the control API uses it to
/// spare its own connection when it closes the others).
#[derive(Debug, Clone)]
pub struct Conn {
    /// The connection's id in [`super::state::Connections`].
    pub id: u64,
    /// Cancelling it closes the connection at once.
    pub kill: CancellationToken,
}

/// Serves `listener` with the state in `shared` until `shutdown` completes, then closes every
/// connection. While the emulator is down in `refuse` mode the listening socket is closed and
/// bound again to the same address when it comes back.
pub(crate) async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let router = router(shared.clone());
    let mut listener = Some(listener);
    let mut changes = shared.down_changed.subscribe();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if let Some(until) = shared.refusing() {
            if listener.take().is_some() {
                tracing::info!(%addr, "down: listener closed");
            }
            let wake = async move {
                match until {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                _ = changes.changed() => {}
                () = wake => {}
            }
            continue;
        }
        let current = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "up: listening again");
                    listener.insert(l)
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot bind again; retrying");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
            },
        };
        tokio::select! {
            () = &mut shutdown => break,
            _ = changes.changed() => {}
            accepted = current.accept() => match accepted {
                Ok((stream, _)) => spawn_connection(stream, shared.clone(), router.clone()),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    lock(&shared.conns).kill_all_but(0);
    Ok(())
}

/// Every route: the providers' and the control API.
fn router(shared: Arc<Shared>) -> Router {
    moonshot::routes()
        .merge(supabase::routes())
        .merge(control::routes())
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

fn spawn_connection(stream: TcpStream, shared: Arc<Shared>, router: Router) {
    let (id, kill) = lock(&shared.conns).open();
    let conn = Conn {
        id,
        kill: kill.clone(),
    };
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (shared, router, conn) = (service_shared.clone(), router.clone(), conn.clone());
        async move { Ok::<_, Infallible>(front_door(shared, router, conn, req).await) }
    });
    tokio::spawn(async move {
        let serving = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            result = serving => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            () = kill.cancelled() => {}
        }
        lock(&shared.conns).close(id);
    });
}

/// The route name of a request (see the module docs of `sim`), and its provider.
pub fn classify(method: &Method, path: &str) -> (Option<Provider>, &'static str) {
    let is = |m: &Method| method == m;
    let read = is(&Method::GET) || is(&Method::HEAD);
    if let Some(rest) = path.strip_prefix("/v1/") {
        let segs: Vec<&str> = rest.split('/').collect();
        let name = match segs.as_slice() {
            ["files"] if is(&Method::POST) => "moonshot.files.upload",
            ["files"] if read => "moonshot.files.list",
            ["files", _] if read => "moonshot.files.get",
            ["files", _] if is(&Method::DELETE) => "moonshot.files.delete",
            ["files", _, "content"] if read => "moonshot.files.content",
            ["chat", "completions"] if is(&Method::POST) => "moonshot.chat",
            ["models"] if read => "moonshot.models",
            ["tokenizers", "estimate-token-count"] if is(&Method::POST) => "moonshot.estimate",
            _ => "moonshot.unknown",
        };
        return (Some(Provider::Moonshot), name);
    }
    if let Some(rest) = path.strip_prefix("/storage/v1/") {
        let segs: Vec<&str> = rest.split('/').collect();
        let name = match segs.as_slice() {
            ["object", "list", _] if is(&Method::POST) => "supabase.object.list",
            ["object", "info", _, _, ..] if read => "supabase.object.info",
            ["object", "public", _, _, ..] if read => "supabase.object.public",
            ["object", "authenticated", _, _, ..] if read => "supabase.object.download",
            ["object", _] if is(&Method::DELETE) => "supabase.object.delete_many",
            ["object", _, _, ..] if is(&Method::POST) => "supabase.object.upload",
            ["object", _, _, ..] if is(&Method::PUT) => "supabase.object.update",
            ["object", _, _, ..] if read => "supabase.object.download",
            ["object", _, _, ..] if is(&Method::DELETE) => "supabase.object.delete",
            ["bucket"] if is(&Method::POST) => "supabase.bucket.create",
            ["bucket"] if read => "supabase.bucket.list",
            ["bucket", _] if read => "supabase.bucket.get",
            ["bucket", _] if is(&Method::PUT) => "supabase.bucket.update",
            ["bucket", _] if is(&Method::DELETE) => "supabase.bucket.delete",
            ["bucket", _, "empty"] if is(&Method::POST) => "supabase.bucket.empty",
            _ => "supabase.unknown",
        };
        return (Some(Provider::Supabase), name);
    }
    (None, "unknown")
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The provider's refusal when the request's credentials are not the key, if they are not.
fn check_auth(
    shared: &Shared,
    provider: Provider,
    route: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let key = shared.config.key.as_str();
    match provider {
        Provider::Moonshot => {
            let ok = bearer(headers)
                .is_some_and(|b| b == key || shared.config.moonshot_keys.iter().any(|k| k == b));
            (!ok).then(errors::moonshot_unauthenticated)
        }
        Provider::Supabase => {
            if shared.config.require_apikey {
                let apikey = headers.get("apikey").and_then(|v| v.to_str().ok());
                if apikey != Some(key) {
                    return Some(errors::gateway_no_apikey(apikey.is_some()));
                }
            }
            if route == "supabase.object.public" {
                return None;
            }
            let token = bearer(headers);
            (token != Some(key)).then(|| errors::storage_unauthenticated(token))
        }
    }
}

/// Closes the request's connection without a response; never returns.
async fn drop_connection(conn: &Conn) -> Response {
    conn.kill.cancel();
    std::future::pending().await
}

/// A record under construction.
struct Pending {
    record: Record,
    started: Instant,
}

impl Pending {
    fn finish(mut self, shared: &Shared, status: Option<u16>, bytes: &AtomicU64) {
        self.record.status = status;
        self.record.request_bytes = bytes.load(Ordering::Relaxed);
        self.record.duration_ms = self.started.elapsed().as_millis() as u64;
        lock(&shared.records).push(self.record);
    }
}

/// Handles one request: control routes go straight to their handlers; provider requests pass
/// the down switch, the fault rules and the bearer check, and are recorded.
async fn front_door(
    shared: Arc<Shared>,
    mut router: Router,
    conn: Conn,
    req: Request<Incoming>,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if path.starts_with("/_sim/") || path == "/_sim" {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(conn);
        return call(&mut router, req).await;
    }
    let (provider, route) = classify(&method, &path);
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = bytes.clone();
    let req = req.map(move |incoming| {
        Body::from_stream(Body::new(incoming).into_data_stream().map(move |chunk| {
            if let Ok(data) = &chunk {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            chunk
        }))
    });
    let mut pending = Pending {
        record: Record {
            seq: 0,
            time_ms: chrono::Utc::now().timestamp_millis(),
            method: method.to_string(),
            path: path.clone(),
            query: req.uri().query().map(str::to_owned),
            route,
            status: None,
            outcome: "ok",
            fault: None,
            delay_ms: 0,
            request_bytes: 0,
            duration_ms: 0,
            detail: None,
        },
        started: Instant::now(),
    };
    let Some(provider) = provider else {
        let resp = errors::unknown_route(None, method.as_str(), &path);
        pending.finish(&shared, Some(resp.status().as_u16()), &bytes);
        return resp;
    };

    // The down switch.
    if let Some(down) = shared.down() {
        pending.record.outcome = "down";
        if down.mode == DownMode::Status {
            drain(req.into_body()).await;
            let resp = errors::injected(
                provider,
                &Action::Fail {
                    status: down.status,
                    error_type: None,
                    message: None,
                    http_status: None,
                    retry_after_secs: None,
                },
            );
            pending.finish(&shared, Some(resp.status().as_u16()), &bytes);
            return resp;
        }
        pending.finish(&shared, None, &bytes);
        return drop_connection(&conn).await;
    }

    // Fault rules: delays first, then the terminal action.
    let decision = lock(&shared.faults).decide(route, method.as_str(), &path);
    if !decision.delay.is_zero() {
        pending.record.delay_ms = decision.delay.as_millis() as u64;
        tokio::time::sleep(decision.delay).await;
    }
    if let Some((rule, action)) = decision.terminal {
        pending.record.outcome = "fault";
        pending.record.fault = Some(rule);
        if action == Action::Drop {
            pending.record.outcome = "dropped";
            pending.finish(&shared, None, &bytes);
            return drop_connection(&conn).await;
        }
        drain(req.into_body()).await;
        let resp = errors::injected(provider, &action);
        pending.finish(&shared, Some(resp.status().as_u16()), &bytes);
        return resp;
    }

    // Credentials.
    if let Some(resp) = check_auth(&shared, provider, route, req.headers()) {
        pending.record.outcome = "auth";
        drain(req.into_body()).await;
        pending.finish(&shared, Some(resp.status().as_u16()), &bytes);
        return resp;
    }

    let mut resp = call(&mut router, req).await;
    if resp.status() == axum::http::StatusCode::NOT_FOUND
        && (route.ends_with(".unknown") || resp.headers().get("content-type").is_none())
    {
        resp = errors::unknown_route(Some(provider), method.as_str(), &path);
    }
    pending.record.detail = resp.extensions_mut().remove::<Detail>().map(|d| d.0);
    pending.finish(&shared, Some(resp.status().as_u16()), &bytes);
    resp
}

async fn call(router: &mut Router, req: Request<Body>) -> Response {
    match router.call(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}
