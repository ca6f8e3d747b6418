//! The worker's connections to the upstream MCP servers of `EXAI_MCP_SERVERS`
//! ([`exai_shared::upstream`]): one supervised session per server, and the calls of their tools
//! ([`call`]).
//!
//! Each server has a supervisor task: it starts the server (a stdio child, its environment only
//! [`INHERITED_ENV`](exai_shared::upstream::config::INHERITED_ENV) plus the entry's `env`) or
//! opens a Streamable HTTP session (rmcp re-initialises one the server forgot, on its 404),
//! lists the tools, publishes them to the catalogue, renews that entry while connected,
//! lists again when the server sends `notifications/tools/list_changed`, and when the session
//! ends starts over after a backoff (exponential with jitter, 0.5 s to 30 s, reset after a
//! session that lasted a minute).

pub mod call;
mod http;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use exai_shared::events::{EventPublisher, JobEvent};
use exai_shared::keys::Keys;
use exai_shared::redis::RedisHandle;
use exai_shared::upstream::catalogue::{self, UpstreamToolEntry};
use exai_shared::upstream::{Transport, UpstreamServer};
use rmcp::model::{ClientConfig, Implementation, ProgressNotificationParam, ProgressToken};
use rmcp::service::{NotificationContext, Peer, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How long connecting and listing may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Every upstream server of this worker.
#[derive(Debug, Default)]
pub struct Upstreams {
    servers: Vec<Arc<Upstream>>,
}

impl Upstreams {
    /// The servers of `config` (none connected yet; see [`spawn`](Self::spawn)).
    pub fn new(servers: &[UpstreamServer], events: EventPublisher) -> Self {
        Self {
            servers: servers
                .iter()
                .map(|s| Arc::new(Upstream::new(s.clone(), events.clone())))
                .collect(),
        }
    }

    /// Whether any server is configured.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Starts every server's supervisor; they stop when `shutdown` fires.
    pub fn spawn(&self, conn: RedisHandle, keys: Keys, shutdown: CancellationToken) {
        for upstream in &self.servers {
            let upstream = Arc::clone(upstream);
            let conn = conn.clone();
            let keys = keys.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { upstream.supervise(conn, keys, shutdown).await });
        }
    }

    /// The server whose prefix `tool` starts with (the longest such prefix).
    pub fn server_of(&self, tool: &str) -> Option<&Arc<Upstream>> {
        self.servers
            .iter()
            .filter(|u| tool.starts_with(&u.config.prefix) && tool.len() > u.config.prefix.len())
            .max_by_key(|u| u.config.prefix.len())
    }
}

/// One live session with a server.
#[derive(Clone)]
pub struct Session {
    /// The client side of the session.
    pub peer: Peer<RoleClient>,
    /// Its tools by the name clients call them.
    pub tools: Arc<HashMap<String, UpstreamToolEntry>>,
}

/// One upstream server: its configuration and its current session, if any.
pub struct Upstream {
    /// The server's entry in `EXAI_MCP_SERVERS`.
    pub config: UpstreamServer,
    session: watch::Sender<Option<Session>>,
    progress: Arc<ProgressRoutes>,
    changed: Arc<Notify>,
    broken: Notify,
    events: EventPublisher,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("server", &self.config.name)
            .field("connected", &self.session.borrow().is_some())
            .finish()
    }
}

/// Where progress notifications go: the progress token of a call → its job id.
#[derive(Default)]
pub(crate) struct ProgressRoutes(Mutex<HashMap<ProgressToken, String>>);

impl ProgressRoutes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProgressToken, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add(&self, token: ProgressToken, job_id: &str) {
        self.lock().insert(token, job_id.to_owned());
    }

    pub(crate) fn remove(&self, token: &ProgressToken) {
        self.lock().remove(token);
    }
}

/// The client handler of a session: routes progress to the calls' jobs and notices tool changes.
struct Handler {
    progress: Arc<ProgressRoutes>,
    changed: Arc<Notify>,
    events: EventPublisher,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info = Implementation::new("exai-worker", env!("CARGO_PKG_VERSION"));
        info
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let job = self.progress.lock().get(&params.progress_token).cloned();
        if let Some(job_id) = job {
            let message = progress_message(&params);
            let event = JobEvent::Progress {
                message,
                state: "running".to_owned(),
            };
            self.events.publish(&job_id, &event).await;
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }
}

/// A progress notification as a note: `progress[/total][: message]`.
fn progress_message(p: &ProgressNotificationParam) -> String {
    let number = |x: f64| {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            format!("{}", x as i64)
        } else {
            format!("{x}")
        }
    };
    let mut note = match p.total {
        Some(total) => format!("{}/{}", number(p.progress), number(total)),
        None => number(p.progress),
    };
    if let Some(message) = p.message.as_deref().filter(|m| !m.is_empty()) {
        note.push_str(": ");
        note.push_str(message);
    }
    note
}

impl Upstream {
    fn new(config: UpstreamServer, events: EventPublisher) -> Self {
        Self {
            config,
            session: watch::channel(None).0,
            progress: Arc::default(),
            changed: Arc::default(),
            broken: Notify::new(),
            events,
        }
    }

    /// Says the current session failed a request at the transport (an HTTP server that forgot
    /// the session and answers 400, say): the supervisor closes it and connects anew.
    pub(crate) fn session_broken(&self) {
        self.broken.notify_one();
    }

    /// The current session, waiting up to `wait` for one.
    pub async fn session(&self, wait: Duration) -> Option<Session> {
        let mut rx = self.session.subscribe();
        let found = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match found {
            Ok(Ok(s)) => s.clone(),
            _ => None,
        }
    }

    pub(crate) fn progress_routes(&self) -> &ProgressRoutes {
        &self.progress
    }

    /// Connects, serves and reconnects until `shutdown` fires.
    async fn supervise(&self, conn: RedisHandle, keys: Keys, shutdown: CancellationToken) {
        let name = self.config.name.clone();
        let backoff = || {
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        loop {
            let started = tokio::time::Instant::now();
            let connected = tokio::select! {
                c = tokio::time::timeout(CONNECT_TIMEOUT, self.connect()) => c,
                _ = shutdown.cancelled() => return,
            };
            match connected {
                Ok(Ok(service)) => {
                    tracing::info!(server = %name, transport = self.config.transport.kind(), "upstream MCP server connected");
                    let ended = self.serve(service, &conn, &keys, &shutdown).await;
                    self.session.send_replace(None);
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tracing::warn!(server = %name, reason = %ended, "upstream MCP session ended; reconnecting");
                    if started.elapsed() >= STABLE_AFTER {
                        delays = backoff();
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(server = %name, error = %e, "upstream MCP server could not be reached")
                }
                Err(_) => {
                    tracing::warn!(server = %name, "upstream MCP server did not answer within {CONNECT_TIMEOUT:?}")
                }
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Starts the stdio child or opens the HTTP session, and initialises it.
    async fn connect(&self) -> anyhow::Result<RunningService<RoleClient, Handler>> {
        let handler = Handler {
            progress: Arc::clone(&self.progress),
            changed: Arc::clone(&self.changed),
            events: self.events.clone(),
        };
        match &self.config.transport {
            Transport::Stdio {
                command, args, cwd, ..
            } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args)
                    .env_clear()
                    .envs(self.config.transport.child_env(&|k| std::env::var(k).ok()));
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                let (transport, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| anyhow::anyhow!("cannot start `{command}`: {e}"))?;
                if let Some(stderr) = stderr {
                    let server = self.config.name.clone();
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(stderr).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            tracing::debug!(server = %server, "{line}");
                        }
                    });
                }
                Ok(handler.serve(transport).await?)
            }
            Transport::Http { url, headers } => {
                // reqwest's rustls is built without a crypto provider: install ring's.
                let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
                let mut map = HashMap::new();
                for (k, v) in headers {
                    use secrecy::ExposeSecret;
                    let name = ::http::HeaderName::try_from(k.as_str())
                        .map_err(|e| anyhow::anyhow!("header `{k}`: {e}"))?;
                    let value = ::http::HeaderValue::try_from(v.expose_secret())
                        .map_err(|e| anyhow::anyhow!("header `{k}`: {e}"))?;
                    map.insert(name, value);
                }
                let config =
                    StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(map);
                let client = http::SessionAware::new()?;
                Ok(handler
                    .serve(StreamableHttpClientTransport::with_client(client, config))
                    .await?)
            }
        }
    }

    /// Lists, publishes and renews until the session ends or `shutdown` fires; says why it ended.
    async fn serve(
        &self,
        service: RunningService<RoleClient, Handler>,
        conn: &RedisHandle,
        keys: &Keys,
        shutdown: &CancellationToken,
    ) -> String {
        let peer = service.peer().clone();
        let ct = service.cancellation_token();
        let mut running = tokio::spawn(service.waiting());
        let mut renew = tokio::time::interval(catalogue::RENEW_EVERY);
        let mut tools: Option<Arc<HashMap<String, UpstreamToolEntry>>> = None;
        let mut list_now = true;
        loop {
            if list_now {
                list_now = false;
                match tokio::time::timeout(CONNECT_TIMEOUT, peer.list_all_tools()).await {
                    Ok(Ok(listed)) => {
                        let entries = self.entries(listed);
                        tracing::info!(server = %self.config.name, tools = entries.len(), "upstream tools listed");
                        let map: HashMap<String, UpstreamToolEntry> =
                            entries.into_iter().map(|e| (e.name.clone(), e)).collect();
                        let map = Arc::new(map);
                        tools = Some(Arc::clone(&map));
                        self.session.send_replace(Some(Session {
                            peer: peer.clone(),
                            tools: map,
                        }));
                        renew.reset_immediately();
                    }
                    Ok(Err(e)) => {
                        ct.cancel();
                        return format!("tools/list failed: {e}");
                    }
                    Err(_) => {
                        ct.cancel();
                        return "tools/list timed out".to_owned();
                    }
                }
            }
            tokio::select! {
                quit = &mut running => return format!("{quit:?}"),
                _ = shutdown.cancelled() => {
                    ct.cancel();
                    let _ = running.await;
                    return "shutting down".to_owned();
                }
                _ = self.changed.notified() => list_now = true,
                _ = self.broken.notified() => {
                    ct.cancel();
                    let _ = running.await;
                    return "a request failed at the transport".to_owned();
                }
                _ = renew.tick() => {
                    if let Some(tools) = &tools {
                        let mut listed: Vec<UpstreamToolEntry> = tools.values().cloned().collect();
                        listed.sort_by(|a, b| a.name.cmp(&b.name));
                        let entry = catalogue::entry(&self.config.name, listed);
                        if let Err(e) = catalogue::publish(conn, keys, &entry).await {
                            tracing::warn!(server = %self.config.name, error = %e, "the upstream tools could not be published");
                        }
                    }
                }
            }
        }
    }

    /// The catalogue entries of a server's listed tools: names prefixed; tools whose prefixed
    /// name is not a valid tool name, or that a built-in tool's name shadows, left out (and
    /// logged). rmcp's `Tool` does not carry `execution`, so a tool that only runs as a task is
    /// listed; calling it ends with the server's refusal.
    fn entries(&self, listed: Vec<rmcp::model::Tool>) -> Vec<UpstreamToolEntry> {
        let mut out = Vec::new();
        for tool in listed {
            let Ok(mut listing) = serde_json::to_value(&tool) else {
                continue;
            };
            let upstream = tool.name.to_string();
            let name = format!("{}{upstream}", self.config.prefix);
            let valid = name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !valid || exai_shared::tools::find(&name).is_some() {
                tracing::warn!(server = %self.config.name, tool = %upstream, "upstream tool not offered: its prefixed name is not a valid tool name or is a built-in tool's");
                continue;
            }
            listing["name"] = Value::String(name.clone());
            out.push(UpstreamToolEntry {
                name,
                upstream,
                listing,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_notes_read_like_counts() {
        let mut p = ProgressNotificationParam::new(
            ProgressToken(rmcp::model::NumberOrString::Number(1)),
            2.0,
        );
        assert_eq!(progress_message(&p), "2");
        p.total = Some(5.0);
        assert_eq!(progress_message(&p), "2/5");
        p.message = Some("halfway".to_owned());
        assert_eq!(progress_message(&p), "2/5: halfway");
        p.progress = 2.5;
        assert_eq!(progress_message(&p), "2.5/5: halfway");
    }
}
