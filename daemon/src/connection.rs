//! One WebSocket connection: the connection limits checked at accept, the hello, the read loop,
//! the request handler, and the writer task that owns the socket's sending half.
//!
//! Three tasks per connection: the read loop, the request handler, and the writer. The read
//! loop only reads — reading is also what answers the client's pings, so it never waits for
//! Redis — and hands parsed requests to the handler, which runs them one after another in the
//! order they came (each costs a Redis round trip or two). The wait for a call's result runs as
//! a task of its own (see `follow`). Replies go through an `Outbox` (a bounded
//! channel to the writer), so the handler and any number of call tasks can send at once.
//!
//! The socket is any [`Transport`]: the server hands over the upgraded TCP connection
//! ([`serve_upgraded`]), and a test can serve an in-memory pipe the same way.
//!
//! Closing: the read loop asks the writer to send a close frame and then reads until the client
//! answers it (bounded), so the close handshake completes — except after an oversized frame,
//! whose unread rest is never parsed: it is discarded as raw bytes (bounded in time and size),
//! so a client still sending it reads our 1009 instead of a connection reset.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use exai_shared::protocol::{
    self, CLOSE_GOING_AWAY, CLOSE_HELLO_TIMEOUT, CLOSE_INTERNAL, CLOSE_INVALID_MESSAGE,
    CLOSE_MISSING_HELLO, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_UNAUTHORIZED, HelloAck,
    HelloError, HelloFrame, ServerMessage,
};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::app::App;
use crate::caller::Caller;
use crate::calls;
use crate::limits::Refused;
use crate::outbox::{Outbound, Outbox};
use crate::session::Session;

/// How long a close waits for the client's answering close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// After an oversized frame: how long the unread rest is discarded at most, how long a pause in
/// it ends the discarding, and how many bytes are discarded at most.
const DISCARD_WAIT: Duration = Duration::from_secs(5);
const DISCARD_PAUSE: Duration = Duration::from_millis(250);
const DISCARD_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Read chunk and write batching size of each WebSocket.
const WS_IO_BUFFER: usize = 8 * 1024;

/// A WebSocket a connection can be served on: a stream of the client's messages (a frame over
/// `EXAI_WS_MAX_BYTES` arrives as [`WsError::Capacity`]) and a sink for ours. Implemented for
/// tokio-tungstenite's [`WebSocketStream`] over any byte stream: the upgraded TCP connection of
/// the server, or an in-memory pipe in a test.
pub trait Transport:
    Stream<Item = Result<Message, WsError>> + Sink<Message> + Unpin + Send + Sized + 'static
{
    /// After an oversized frame, discards its unread rest as raw bytes (its frame must not be
    /// parsed, let alone buffered), so a client still sending it can finish and read our 1009
    /// instead of meeting a reset. Bounded in time and size. A transport of whole messages has
    /// no rest: the default does nothing.
    fn discard_rest(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl<T> Transport for WebSocketStream<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn discard_rest(mut self) {
        let io = self.get_mut();
        let mut buf = vec![0u8; 64 * 1024];
        let mut discarded = 0u64;
        let _ = tokio::time::timeout(DISCARD_WAIT, async {
            while discarded < DISCARD_MAX_BYTES {
                match tokio::time::timeout(DISCARD_PAUSE, io.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => discarded += n as u64,
                    _ => break,
                }
            }
        })
        .await;
    }
}

/// Serves a connection whose WebSocket handshake is done (`io`, the raw byte stream after the
/// 101 answer) from `peer` until it closes, with the daemon's frame limit and buffer sizes.
pub async fn serve_upgraded<T>(app: Arc<App>, io: T, peer: SocketAddr)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max = app.config.ws.max_bytes;
    // Small I/O buffers: most sessions sit idle, and the 128 KiB defaults made an idle
    // connection cost ~146 KiB; a large frame still reads fine (the buffer grows to fit it).
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_IO_BUFFER)
        .write_buffer_size(WS_IO_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    serve(app, socket, peer).await;
}

/// Serves one WebSocket from `peer` until it closes: the connection limits, the hello, then the
/// requests.
pub async fn serve<S: Transport>(app: Arc<App>, socket: S, peer: SocketAddr) {
    let (sink, mut stream) = socket.split();
    let (out, rx) = Outbox::new(app.metrics.clone());
    let ping = app.config.ws.ping_interval;
    let writer = tokio::spawn(write_loop(sink, rx, (!ping.is_zero()).then_some(ping)));

    let _permit = match app.connections.try_acquire(peer.ip()) {
        Ok(p) => p,
        Err(refused) => {
            app.metrics.connection_refused(match refused {
                Refused::Total => "total_limit",
                Refused::PerIp { .. } => "ip_limit",
            });
            tracing::info!(peer = %peer, reason = %refused, "connection refused");
            out.close(CLOSE_POLICY, &refused.to_string()).await;
            finish(out, writer, stream, End::Closed).await;
            return;
        }
    };
    let _open = app.metrics.connection_opened();

    let session = match hello(&app, &out, &mut stream).await {
        Ok(session) => session,
        Err(end) => {
            finish(out, writer, stream, end).await;
            return;
        }
    };
    tracing::debug!(peer = %peer, session_id = %session.id, "hello accepted");

    let conn = Arc::new(Caller::new(app.clone(), session, out.clone()));
    let end = read_loop(&conn, &mut stream).await;
    conn.cancel.cancel();
    conn.tasks.close();
    conn.tasks.wait().await;
    drop(conn);
    finish(out, writer, stream, end).await;
}

/// How a phase of the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// We sent a close frame; read until the client answers it.
    Closed,
    /// We sent a close frame after an oversized frame; do not read again.
    TooBig,
    /// The client closed or the socket failed: nothing more to do.
    Gone,
}

/// Drops our sender and waits for the writer to flush, then ends the connection as `end` says:
/// after our close frame, reads until the client answers it (bounded by [`CLOSE_WAIT`]); after
/// an oversized frame, discards the unread rest at the byte level (its frame must not be
/// parsed, let alone buffered), so the client can finish sending and read our 1009 instead of
/// meeting a reset.
async fn finish<S: Transport>(
    out: Outbox,
    writer: JoinHandle<Option<SplitSink<S, Message>>>,
    mut stream: SplitStream<S>,
    end: End,
) {
    drop(out);
    let sink = tokio::time::timeout(CLOSE_WAIT, writer)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    match end {
        End::Gone => {}
        End::Closed => {
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(Ok(msg)) = stream.next().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        End::TooBig => {
            if let Some(Ok(socket)) = sink.map(|sink| stream.reunite(sink)) {
                socket.discard_rest().await;
            }
        }
    }
}

/// Sends queued frames and keepalive pings until asked to close or every sender is gone.
/// Returns the sink after a close frame, so an oversized frame's rest can be discarded.
async fn write_loop<S: Transport>(
    mut sink: SplitSink<S, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    ping: Option<Duration>,
) -> Option<SplitSink<S, Message>> {
    let mut ticker = ping.map(|p| tokio::time::interval_at(Instant::now() + p, p));
    loop {
        let tick = async {
            match ticker.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Outbound::Text(text)) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        return None;
                    }
                }
                Some(Outbound::Close(code, reason)) => {
                    let frame = CloseFrame { code: code.into(), reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return Some(sink);
                }
                None => {
                    let _ = sink.close().await;
                    return None;
                }
            },
            _ = tick => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// Reads one data frame as text: `Ok(Some(text))`, `Ok(None)` for control frames, or how the
/// connection ended.
async fn next_text<S: Transport>(
    app: &App,
    out: &Outbox,
    stream: &mut SplitStream<S>,
) -> Result<Option<String>, End> {
    match stream.next().await {
        None | Some(Ok(Message::Close(_))) => Err(End::Gone),
        Some(Ok(Message::Text(t))) => Ok(Some(t.as_str().to_owned())),
        Some(Ok(Message::Binary(b))) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(None),
        Some(Err(WsError::Capacity(_))) => {
            app.metrics.connection_refused("frame_too_big");
            tracing::info!(
                max_bytes = app.config.ws.max_bytes,
                "frame too big; closing"
            );
            out.close(CLOSE_TOO_BIG, "message too big").await;
            Err(End::TooBig)
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "websocket read failed");
            Err(End::Gone)
        }
    }
}

/// Waits for the hello and answers it. On success returns the session.
async fn hello<S: Transport>(
    app: &App,
    out: &Outbox,
    stream: &mut SplitStream<S>,
) -> Result<Arc<Session>, End> {
    let deadline = Instant::now() + app.limits.hello_timeout;
    let text = loop {
        let next = tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => {
                out.close(CLOSE_GOING_AWAY, "server shutting down").await;
                return Err(End::Closed);
            }
            r = tokio::time::timeout_at(deadline, next_text(app, out, stream)) => r,
        };
        match next {
            Err(_elapsed) => {
                app.metrics.connection_refused("hello_timeout");
                out.close(CLOSE_HELLO_TIMEOUT, "hello timeout or disconnect")
                    .await;
                return Err(End::Closed);
            }
            Ok(Err(end)) => return Err(end),
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(text))) => break text,
        }
    };
    app.metrics.frame_in();
    let refuse = |error: HelloError| {
        ServerMessage::HelloAck(HelloAck {
            ok: false,
            session_id: None,
            error: Some(error.as_str().to_owned()),
        })
    };
    let hello = match protocol::parse_hello(&text) {
        HelloFrame::Hello(h) => h,
        HelloFrame::NotJson => {
            app.metrics.connection_refused("invalid_message");
            out.close(CLOSE_INVALID_MESSAGE, "invalid message").await;
            return Err(End::Closed);
        }
        HelloFrame::NotHello => {
            app.metrics.connection_refused("missing_hello");
            let _ = out.send(&refuse(HelloError::MissingHello)).await;
            out.close(CLOSE_MISSING_HELLO, "unrecognized protocol")
                .await;
            return Err(End::Closed);
        }
    };
    if !app.token_matches(hello.token.as_deref().unwrap_or("")) {
        app.metrics.connection_refused("unauthorized");
        tracing::info!("hello refused: wrong token");
        let _ = out.send(&refuse(HelloError::Unauthorized)).await;
        out.close(CLOSE_UNAUTHORIZED, "unauthorized").await;
        return Err(End::Closed);
    }
    let session_id = hello
        .session_id
        .filter(|s| protocol::valid_session_id(s))
        .unwrap_or_else(protocol::new_session_id);
    let session = app.sessions.join(&session_id);
    let ack = ServerMessage::HelloAck(HelloAck {
        ok: true,
        session_id: Some(session_id),
        error: None,
    });
    out.send(&ack).await.map_err(|_| End::Gone)?;
    Ok(session)
}

/// Reads and handles requests until the connection ends; returns how.
async fn read_loop<S: Transport>(conn: &Arc<Caller>, stream: &mut SplitStream<S>) -> End {
    let (requests, handler) = spawn_handler(conn.clone());
    let end = read_requests(conn, stream, &requests).await;
    drop(requests);
    conn.cancel.cancel();
    let _ = handler.await;
    end
}

/// Requests parsed by the read loop and not yet handled; more make the read loop wait.
const PENDING_REQUESTS: usize = 64;

type Parsed = Result<protocol::Inbound, Box<protocol::RequestError>>;

/// The task that handles a connection's requests one after another, in the order they came,
/// so the read loop keeps reading (and answering pings) while a request waits on Redis.
fn spawn_handler(conn: Arc<Caller>) -> (mpsc::Sender<Parsed>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Parsed>(PENDING_REQUESTS);
    let handler = tokio::spawn(async move {
        while let Some(parsed) = rx.recv().await {
            let sent = match parsed {
                Ok(inbound) => tokio::select! {
                    r = calls::dispatch(&conn, inbound) => r,
                    _ = conn.cancel.cancelled() => return,
                },
                Err(e) => conn.out.send(&e.reply()).await,
            };
            if sent.is_err() {
                return;
            }
        }
    });
    (tx, handler)
}

/// Reads frames until the connection ends, handing requests to the handler task.
async fn read_requests<S: Transport>(
    conn: &Arc<Caller>,
    stream: &mut SplitStream<S>,
    requests: &mpsc::Sender<Parsed>,
) -> End {
    let app = &conn.app;
    let idle = app.limits.idle_timeout;
    let ping = app.config.ws.ping_interval;
    let keepalive = (!ping.is_zero()).then(|| ping + app.limits.ping_timeout);
    let mut last_request = Instant::now();
    let mut last_seen = Instant::now();
    loop {
        let idle_at = last_request + idle;
        let wake_at = match keepalive {
            Some(k) => idle_at.min(last_seen + k),
            None => idle_at,
        };
        let next = tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => {
                conn.out.close(CLOSE_GOING_AWAY, "server shutting down").await;
                return End::Closed;
            }
            next = next_text(app, &conn.out, stream) => next,
            _ = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                if keepalive.is_some_and(|k| now >= last_seen + k) {
                    tracing::info!(session_id = %conn.session.id, "keepalive timeout");
                    conn.out.close(CLOSE_INTERNAL, "keepalive ping timeout").await;
                    return End::Closed;
                }
                if now >= idle_at {
                    if conn.following_any() {
                        last_request = now;
                    } else {
                        conn.out.close(CLOSE_NORMAL, "idle timeout").await;
                        return End::Closed;
                    }
                }
                continue;
            }
        };
        last_seen = Instant::now();
        match next {
            Err(end) => return end,
            Ok(None) => {}
            Ok(Some(text)) => {
                last_request = last_seen;
                app.metrics.frame_in();
                if requests.send(protocol::parse_request(&text)).await.is_err() {
                    // The handler stopped: the connection's sending side is gone.
                    return End::Gone;
                }
            }
        }
    }
}
