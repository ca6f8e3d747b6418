//! The daemon's MCP session manager ([`McpSessions`]): rmcp's in-memory
//! `LocalSessionManager`, bounded (`EXAI_MCP_MAX_SESSIONS`), with the sessions' Redis records
//! kept alive while they are used, and a resume that survives the daemon.
//!
//! # Resuming a dropped stream
//! A handshake session's `tools/call` answers on an SSE stream whose events carry ids; a client
//! whose stream dropped sends `GET` with `Last-Event-ID` to get the rest. Disconnecting is not
//! cancelling (the spec's rule for handshake sessions): the call goes on. rmcp's session keeps
//! the recent events of its streams in memory, which serves a resume at the same daemon while
//! the session lives. Every event id of a `tools/call` stream is rewritten to also carry what a
//! resume needs anywhere else — `x1.<base64url of {"r": JSON-RPC id, "p": progress token,
//! "n": the last progress sent}>.<rmcp's id>` — so when the daemon that gets the resume does not
//! have the stream (another daemon, a restart, an evicted cache), it follows the call's job
//! itself: the job id derives from the session and the JSON-RPC id, so nothing runs again;
//! progress goes on above `n` and the answer is built from the stored result. No event is
//! written to Redis for this: the result is durable already, and an event log would store every
//! result twice. (rmcp's `EventStore` is not used for that reason, and because with one the
//! stateless revision would no longer treat a closed stream as cancellation.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use exai_shared::jobs::ToolCallJob;
use exai_shared::protocol::ReplyTo;
use futures::{Stream, StreamExt};
use rmcp::model::{
    ClientJsonRpcMessage, ClientRequest, GetMeta, JsonRpcNotification, Notification,
    ProgressNotificationParam, ProgressToken, RequestId, ServerJsonRpcMessage, ServerNotification,
    ServerResult,
};
use rmcp::transport::WorkerTransport;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError, LocalSessionWorker, SessionConfig,
};
use rmcp::transport::streamable_http_server::session::{
    EventStream, RestoreOutcome, ServerSseMessage, SessionId, SessionManager,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::call::{Running, Step, Target, translate};
use super::store::RedisSessionStore;
use crate::app::App;
use crate::follow::Follow;

/// Why the session manager refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum McpSessionError {
    /// `EXAI_MCP_MAX_SESSIONS` sessions are held already.
    #[error("too many MCP sessions ({0}, EXAI_MCP_MAX_SESSIONS)")]
    Full(usize),
    /// rmcp's session manager failed.
    #[error(transparent)]
    Local(#[from] LocalSessionManagerError),
}

/// The MCP sessions this daemon holds.
pub(crate) struct McpSessions {
    inner: LocalSessionManager,
    app: Arc<App>,
    store: RedisSessionStore,
    /// When each held session's Redis record was last renewed; renewed at most every quarter
    /// TTL. Entries leave with their session.
    touched: Mutex<HashMap<SessionId, Instant>>,
}

impl McpSessions {
    /// The manager of `app`'s MCP sessions, whose records `store` keeps.
    pub(crate) fn new(app: Arc<App>, store: RedisSessionStore) -> Self {
        let mut config = SessionConfig::default();
        // A session with a call in flight must outlive the call (the answer resets the
        // clock): past the call timeout, the follower has answered.
        config.keep_alive = Some(app.limits.call_timeout + Duration::from_secs(60));
        // The events kept per stream for a resume at this daemon.
        config.channel_capacity = 64;
        let mut inner = LocalSessionManager::default();
        inner.session_config = config;
        Self {
            inner,
            app,
            store,
            touched: Mutex::new(HashMap::new()),
        }
    }

    /// Sessions held now.
    pub(crate) async fn count(&self) -> usize {
        self.inner.sessions.read().await.len()
    }

    async fn check_room(&self) -> Result<(), McpSessionError> {
        let max = self.app.config.ws.mcp.max_sessions;
        if self.count().await >= max {
            return Err(McpSessionError::Full(max));
        }
        Ok(())
    }

    /// Renews the Redis record of `id` unless that was done less than a quarter TTL ago.
    fn touch(&self, id: &SessionId) {
        let every = self.app.config.ws.mcp.session_ttl / 4;
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match touched.get(id) {
                Some(at) if now.duration_since(*at) < every => return,
                _ => {
                    touched.insert(id.clone(), now);
                }
            }
        }
        let store = self.store.clone();
        let id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch(&id).await {
                tracing::debug!(error = %e, "an MCP session's record could not be renewed");
            }
        });
    }
}

type Local = LocalSessionManager;

impl SessionManager for McpSessions {
    type Error = McpSessionError;
    type Transport = WorkerTransport<LocalSessionWorker>;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.check_room().await?;
        Ok(<Local as SessionManager>::create_session(&self.inner).await?)
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.inner.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        let has = self.inner.has_session(id).await?;
        if has {
            self.touch(id);
        }
        Ok(has)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(self.inner.close_session(id).await?)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let tag = match &message {
            ClientJsonRpcMessage::Request(request)
                if matches!(request.request, ClientRequest::CallToolRequest(_)) =>
            {
                Some(Tag {
                    r: request.id.clone(),
                    p: request.request.get_meta().get_progress_token(),
                    n: 0.0,
                })
            }
            _ => None,
        };
        let stream = self.inner.create_stream(id, message).await?;
        Ok(match tag {
            Some(tag) => tagged(stream, tag),
            None => Box::pin(stream) as EventStream,
        })
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        Ok(self.inner.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_standalone_stream(id).await?)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let Some((tag, rmcp_id)) = Tag::parse(&last_event_id) else {
            let stream = self.inner.resume(id, last_event_id).await?;
            return Ok(Box::pin(stream) as EventStream);
        };
        match self.inner.resume(id, rmcp_id.to_owned()).await {
            Ok(stream) => Ok(tagged(stream, tag)),
            Err(e) => {
                tracing::debug!(error = %e, "resuming an MCP call from its job");
                Ok(follow_job(self.app.clone(), id.clone(), tag))
            }
        }
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.check_room().await?;
        Ok(self.inner.restore_session(id).await?)
    }
}

/// What a `tools/call` stream's event ids carry (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tag {
    /// The JSON-RPC id of the call.
    r: RequestId,
    /// Its progress token, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<ProgressToken>,
    /// The last `progress` value sent.
    #[serde(default)]
    n: f64,
}

/// The prefix of the event ids [`Tag`] writes.
const TAG_PREFIX: &str = "x1.";

impl Tag {
    fn event_id(&self, rmcp_id: &str) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{TAG_PREFIX}{}.{rmcp_id}", URL_SAFE_NO_PAD.encode(json))
    }

    /// The tag and rmcp's own id in a `Last-Event-ID`; `None` when it is not one of ours.
    fn parse(event_id: &str) -> Option<(Self, &str)> {
        let (encoded, rmcp_id) = event_id.strip_prefix(TAG_PREFIX)?.split_once('.')?;
        let json = URL_SAFE_NO_PAD.decode(encoded).ok()?;
        Some((serde_json::from_slice(&json).ok()?, rmcp_id))
    }
}

/// `stream` with every event id tagged; the tag follows the progress sent.
fn tagged(
    stream: impl Stream<Item = ServerSseMessage> + Send + Sync + 'static,
    mut tag: Tag,
) -> EventStream {
    Box::pin(stream.map(move |mut event| {
        if let Some(ServerJsonRpcMessage::Notification(JsonRpcNotification {
            notification: ServerNotification::ProgressNotification(Notification { params, .. }),
            ..
        })) = event.message.as_deref()
        {
            tag.n = params.progress;
        }
        if let Some(id) = event.event_id.take() {
            event.event_id = Some(tag.event_id(&id));
        }
        event
    }))
}

/// A stream fed by a channel (`Sync`, as rmcp's streams must be).
struct ChannelStream(mpsc::Receiver<ServerSseMessage>);

impl Stream for ChannelStream {
    type Item = ServerSseMessage;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The rest of the call `tag` of session `session`, from its job: progress above `tag.n`, then
/// the answer built from the stored result.
fn follow_job(app: Arc<App>, session: SessionId, mut tag: Tag) -> EventStream {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let target = Target::in_session(&session, &tag.r);
        let job_id = target.job_id();
        // The job's tool passed the daemon's lookup when it was enqueued.
        let tool: Arc<str> = match app.tool_calls.job(&job_id).await {
            Ok(Some(info)) => serde_json::from_slice::<ToolCallJob>(&info.payload)
                .ok()
                .map(|job| Arc::from(job.tool)),
            _ => None,
        }
        .unwrap_or_else(|| Arc::from("unknown"));
        let mut running = Running::new(&app, &target);
        let caller = running.caller().clone();
        // A resumed call counts in its session's in-flight calls, but is never refused: it is
        // already in the queue.
        let Some(slot) = caller.session.try_reserve(usize::MAX) else {
            return;
        };
        let follow = Follow {
            job_id,
            reply_to: ReplyTo::request(&target.request_id),
            single: false,
            tool: Arc::clone(&tool),
            _slot: slot,
        };
        let mut last = tokio::spawn(async move { follow.run(&caller).await.1 });
        let mut seq = 0u64;
        let mut send = |message: ServerJsonRpcMessage, tag: &Tag| {
            seq += 1;
            let event = ServerSseMessage::new(tag.event_id(&format!("f{seq}")), message);
            let tx = tx.clone();
            async move { tx.send(event).await.is_ok() }
        };
        let answer = loop {
            tokio::select! {
                frame = running.next() => {
                    let Some(frame) = frame else { continue };
                    if let (Step::Progress(message), Some(token)) = (translate(frame, &tool), tag.p.clone()) {
                        tag.n = tag.n.floor() + 1.0;
                        let param = ProgressNotificationParam::new(token, tag.n).with_message(message);
                        let note = ServerJsonRpcMessage::notification(
                            ServerNotification::ProgressNotification(Notification::new(param)),
                        );
                        if !send(note, &tag).await {
                            break None;
                        }
                    }
                }
                frame = &mut last => break frame.ok().flatten(),
            }
        };
        running.detach();
        let Some(frame) = answer.and_then(|text| serde_json::from_str(&text).ok()) else {
            return;
        };
        let message = match translate(frame, &tool) {
            Step::Done(Ok(result)) => {
                ServerJsonRpcMessage::response(ServerResult::CallToolResult(result), tag.r.clone())
            }
            Step::Done(Err(error)) => ServerJsonRpcMessage::error(error, Some(tag.r.clone())),
            _ => return,
        };
        send(message, &tag).await;
    });
    Box::pin(ChannelStream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_carry_the_call_and_rmcps_id() {
        let tag = Tag {
            r: RequestId::Number(3),
            p: Some(ProgressToken(RequestId::String("tok".into()))),
            n: 2.0,
        };
        let id = tag.event_id("4/17");
        assert!(id.starts_with(TAG_PREFIX));
        assert!(!id.contains('\n'));
        let (back, rmcp_id) = Tag::parse(&id).unwrap();
        assert_eq!(rmcp_id, "4/17");
        assert_eq!(back.r, RequestId::Number(3));
        assert_eq!(back.n, 2.0);
        assert!(back.p.is_some());
        assert!(Tag::parse("0/1").is_none());
        assert!(Tag::parse("x1.???.0").is_none());
    }
}
