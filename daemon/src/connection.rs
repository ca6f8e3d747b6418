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
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use exai_shared::protocol::{
    self, CLOSE_GOING_AWAY, CLOSE_HELLO_TIMEOUT, CLOSE_INTERNAL, CLOSE_INVALID_MESSAGE,
    CLOSE_MISSING_HELLO, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_UNAUTHORIZED, HelloAck,
    HelloDetail, HelloError, HelloFrame, ServerMessage,
};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::app::App;
use crate::caller::Caller;
use crate::calls;
use crate::limits::{ConnectionPermit, Refused};
use crate::outbox::{Inbox, Outbound, Outbox};
use crate::resume;
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
/// Until the hello, at most `EXAI_WS_HELLO_MAX_BYTES` (plus one read chunk) are read from the
/// socket: a bigger first frame is refused with 1009 without being read whole.
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
    let gate = HelloGate::new(app.limits.hello_max_bytes);
    let io = Gated {
        io,
        gate: gate.clone(),
        scratch: Vec::new(),
    };
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    serve_gated(app, socket, peer, Some(gate)).await;
}

/// Serves one WebSocket from `peer` until it closes: the connection limits, the hello, then the
/// requests.
pub async fn serve<S: Transport>(app: Arc<App>, socket: S, peer: SocketAddr) {
    serve_gated(app, socket, peer, None).await;
}

/// [`serve`], opening `gate` (the cap on what is read before the hello) once the hello is
/// accepted.
async fn serve_gated<S: Transport>(
    app: Arc<App>,
    socket: S,
    peer: SocketAddr,
    gate: Option<HelloGate>,
) {
    let (sink, mut stream) = socket.split();
    let (out, inbox) = Outbox::new(app.limits.outbox_max_bytes, app.metrics.clone());
    let ping = app.config.ws.ping_interval;
    let writer = tokio::spawn(write_loop(
        sink,
        inbox,
        (!ping.is_zero()).then_some(ping),
        app.limits.write_timeout,
    ));

    if let Err(refused) = app.connections.check(peer.ip()) {
        refuse_over_limit(&app, &out, peer, refused);
        finish(out, writer, stream, End::Closed).await;
        return;
    }
    let pending = app.connections.pending(peer.ip());
    let (session, _permit, tenant) = match hello(&app, &out, &mut stream, &pending, peer).await {
        Ok(accepted) => accepted,
        Err(end) => {
            drop(pending);
            finish(out, writer, stream, end).await;
            return;
        }
    };
    drop(pending);
    if let Some(gate) = gate {
        gate.open();
    }
    let _open = app.metrics.connection_opened();
    tracing::debug!(peer = %peer, session_id = %session.id, "hello accepted");

    let conn = Arc::new(Caller::new(app.clone(), session, out.clone()).with_tenant(tenant));
    let end = read_loop(&conn, &mut stream).await;
    conn.cancel.cancel();
    conn.tasks.close();
    conn.tasks.wait().await;
    drop(conn);
    // The permit (`_permit`) is given back only after `finish` has closed the socket.
    finish(out, writer, stream, end).await;
}

/// Closes a connection over a limit with 1008.
fn refuse_over_limit(app: &App, out: &Outbox, peer: SocketAddr, refused: Refused) {
    app.metrics.connection_refused(match refused {
        Refused::Total => "total_limit",
        Refused::PerIp { .. } => "ip_limit",
    });
    tracing::info!(peer = %peer, reason = %refused, "connection refused");
    out.close(CLOSE_POLICY, &refused.to_string());
}

/// The cap on the bytes read from a socket before its hello is accepted; shared by the socket's
/// reader ([`Gated`]) and the connection, which opens it after the hello.
#[derive(Debug, Clone)]
struct HelloGate(Arc<AtomicU64>);

/// Bytes a socket may still read before its hello; this value means "no cap".
const GATE_OPEN: u64 = u64::MAX;

impl HelloGate {
    /// A cap of the first frame's limit, plus a read chunk (a client may send its first
    /// request right behind its hello) and the largest frame header.
    fn new(hello_max_bytes: usize) -> Self {
        let cap = u64::try_from(hello_max_bytes)
            .unwrap_or(u64::MAX)
            .saturating_add((WS_IO_BUFFER + 14) as u64)
            .min(GATE_OPEN - 1);
        Self(Arc::new(AtomicU64::new(cap)))
    }

    fn open(&self) {
        self.0.store(GATE_OPEN, Ordering::Relaxed);
    }
}

/// The error a [`Gated`] socket's read returns once the bytes allowed before the hello are
/// spent: the first frame is too big.
#[derive(Debug, thiserror::Error)]
#[error("the frame before the hello is too big")]
struct HelloTooBig;

/// A byte stream that reads at most its [`HelloGate`]'s bytes until the gate opens.
struct Gated<T> {
    io: T,
    gate: HelloGate,
    /// What a capped read reads into (a read must not fill more than the cap).
    scratch: Vec<u8>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Gated<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let left = this.gate.0.load(Ordering::Relaxed);
        if left == GATE_OPEN {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, HelloTooBig)));
        }
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(buf.remaining())
            .min(WS_IO_BUFFER);
        this.scratch.resize(n, 0);
        let mut capped = ReadBuf::new(&mut this.scratch);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut capped))?;
        let read = capped.filled();
        buf.put_slice(read);
        let _ = this
            .gate
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left != GATE_OPEN).then(|| left.saturating_sub(read.len() as u64))
            });
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gated<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Whether a read error is a [`Gated`] socket's refusal of a too-big first frame.
fn is_hello_too_big(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<HelloTooBig>()))
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

/// Drops our sender and gives the writer [`CLOSE_WAIT`] to flush (each of its writes is bounded
/// by `EXAI_WS_WRITE_TIMEOUT_SECS`); a writer still busy then is aborted, and waited for, so its
/// half of the socket is gone. Then ends the connection as `end` says: after our close frame,
/// reads until the client answers it (bounded by [`CLOSE_WAIT`]); after an oversized frame,
/// discards the unread rest at the byte level (its frame must not be parsed, let alone
/// buffered), so the client can finish sending and read our 1009 instead of meeting a reset.
/// When this returns, the socket is closed.
async fn finish<S: Transport>(
    out: Outbox,
    mut writer: JoinHandle<Option<SplitSink<S, Message>>>,
    mut stream: SplitStream<S>,
    end: End,
) {
    drop(out);
    let sink = match tokio::time::timeout(CLOSE_WAIT, &mut writer).await {
        Ok(done) => done.ok().flatten(),
        Err(_) => {
            writer.abort();
            let _ = writer.await;
            None
        }
    };
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

/// The most frames the writer takes from the queue before it flushes them.
const WRITE_BATCH: usize = 64;

/// Sends queued frames and keepalive pings until asked to close or every sender is gone; every
/// write is bounded by `write_timeout`, and one that fails or times out ends the writer (and so
/// fails every sender). Returns the sink after a close frame, so an oversized frame's rest can be
/// discarded.
async fn write_loop<S: Transport>(
    mut sink: SplitSink<S, Message>,
    mut inbox: Inbox,
    ping: Option<Duration>,
    write_timeout: Duration,
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
            msg = inbox.recv() => match msg {
                Some(Outbound::Text(text, budget)) => {
                    // The frames queued meanwhile go out with it, in one write where they fit:
                    // a call's ack, progress and result often queue together.
                    let mut written = vec![budget];
                    let mut close = None;
                    let batch = async {
                        sink.feed(Message::Text(text.into())).await?;
                        while written.len() < WRITE_BATCH {
                            match inbox.try_recv() {
                                Some(Outbound::Text(text, budget)) => {
                                    written.push(budget);
                                    sink.feed(Message::Text(text.into())).await?;
                                }
                                Some(Outbound::Close(code, reason)) => {
                                    close = Some((code, reason));
                                    break;
                                }
                                None => break,
                            }
                        }
                        sink.flush().await
                    };
                    let sent = matches!(tokio::time::timeout(write_timeout, batch).await, Ok(Ok(())));
                    drop(written);
                    if !sent {
                        tracing::debug!("websocket write failed or timed out");
                        return None;
                    }
                    if let Some((code, reason)) = close {
                        send_close(&mut sink, code, reason, write_timeout).await;
                        return Some(sink);
                    }
                }
                Some(Outbound::Close(code, reason)) => {
                    send_close(&mut sink, code, reason, write_timeout).await;
                    return Some(sink);
                }
                None => {
                    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
                    return None;
                }
            },
            _ = tick => {
                let sent = tokio::time::timeout(
                    write_timeout,
                    sink.send(Message::Ping(Default::default())),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::debug!("websocket ping failed or timed out");
                    return None;
                }
            }
        }
    }
}

/// Sends a close frame (`code`, `reason`), within `write_timeout`; a failure is the peer's loss.
async fn send_close<S: Transport>(
    sink: &mut SplitSink<S, Message>,
    code: u16,
    reason: String,
    write_timeout: Duration,
) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await;
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
            out.close(CLOSE_TOO_BIG, "message too big");
            Err(End::TooBig)
        }
        Some(Err(e)) if is_hello_too_big(&e) => {
            app.metrics.connection_refused("frame_too_big");
            tracing::info!(
                max_bytes = app.limits.hello_max_bytes,
                "frame before the hello too big; closing"
            );
            out.close(CLOSE_TOO_BIG, "message too big");
            Err(End::TooBig)
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "websocket read failed");
            Err(End::Gone)
        }
    }
}

/// Waits for the hello and answers it. On success returns the session and the connection's
/// slot under the per-address limit. A socket pushed out by newer ones from its address that
/// have not said hello either (`pending`) is closed with 1008.
async fn hello<S: Transport>(
    app: &App,
    out: &Outbox,
    stream: &mut SplitStream<S>,
    pending: &crate::limits::Pending,
    peer: SocketAddr,
) -> Result<(Arc<Session>, ConnectionPermit, Option<String>), End> {
    let deadline = Instant::now() + app.limits.hello_timeout;
    let text = loop {
        let next = tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => {
                out.close(CLOSE_GOING_AWAY, "server shutting down");
                return Err(End::Closed);
            }
            _ = pending.evicted.cancelled() => {
                app.metrics.connection_refused("pending_hello_limit");
                tracing::info!(peer = %peer, "socket without hello pushed out by newer ones");
                out.close(CLOSE_POLICY, "Too many connections waiting for hello from your IP");
                return Err(End::Closed);
            }
            _ = out.gone() => return Err(End::Gone),
            r = tokio::time::timeout_at(deadline, next_text(app, out, stream)) => r,
        };
        match next {
            Err(_elapsed) => {
                app.metrics.connection_refused("hello_timeout");
                out.close(CLOSE_HELLO_TIMEOUT, "hello timeout or disconnect");
                return Err(End::Closed);
            }
            Ok(Err(end)) => return Err(end),
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(text))) => break text,
        }
    };
    app.metrics.frame_in();
    let refuse = |error: HelloError, detail: Option<HelloDetail>| {
        ServerMessage::HelloAck(HelloAck {
            ok: false,
            session_id: None,
            resume_secret: None,
            error: Some(error.as_str().to_owned()),
            detail: detail.map(|d| d.as_str().to_owned()),
        })
    };
    let hello = match protocol::parse_hello(&text) {
        HelloFrame::Hello(h) => h,
        HelloFrame::NotJson => {
            app.metrics.connection_refused("invalid_message");
            out.close(CLOSE_INVALID_MESSAGE, "invalid message");
            return Err(End::Closed);
        }
        HelloFrame::NotHello => {
            app.metrics.connection_refused("missing_hello");
            let _ = out.send(&refuse(HelloError::MissingHello, None)).await;
            out.close(CLOSE_MISSING_HELLO, "unrecognized protocol");
            return Err(End::Closed);
        }
    };
    if !app.token_matches(hello.token.as_deref().unwrap_or("")) {
        app.metrics.connection_refused("unauthorized");
        // Saying which case it is tells nothing about the token, and tells a user what to fix.
        let detail = match hello.token.as_deref().map(str::trim) {
            None | Some("") => HelloDetail::TokenMissing,
            Some(_) => HelloDetail::TokenWrong,
        };
        tracing::info!(detail = detail.as_str(), "hello refused");
        let _ = out
            .send(&refuse(HelloError::Unauthorized, Some(detail)))
            .await;
        out.close(CLOSE_UNAUTHORIZED, "unauthorized");
        return Err(End::Closed);
    }
    if let Some(tenant) = hello.tenant.as_deref()
        && !exai_shared::config::fairness::valid_tenant(tenant)
    {
        app.metrics.connection_refused("invalid_message");
        let _ = out.send(&refuse(HelloError::InvalidTenant, None)).await;
        out.close(CLOSE_INVALID_MESSAGE, "invalid tenant");
        return Err(End::Closed);
    }
    let permit = match app.connections.try_acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(refused) => {
            refuse_over_limit(app, out, peer, refused);
            return Err(End::Closed);
        }
    };
    let opened = match resume::open(
        app,
        hello.session_id.as_deref(),
        hello.resume_secret.as_deref(),
    )
    .await
    {
        Ok(opened) => opened,
        Err(e) => {
            app.metrics.connection_refused("redis");
            tracing::warn!(error = %e, "hello failed: the session could not be opened");
            out.close(CLOSE_INTERNAL, "session store unavailable");
            return Err(End::Closed);
        }
    };
    if hello.session_id.is_some() && !opened.resumed {
        tracing::debug!(session_id = %opened.session_id, "hello opened a new session");
    }
    let session = app.sessions.join(&opened.session_id);
    let ack = ServerMessage::HelloAck(HelloAck {
        ok: true,
        session_id: Some(opened.session_id),
        resume_secret: Some(opened.secret),
        error: None,
        detail: None,
    });
    out.send(&ack).await.map_err(|_| End::Gone)?;
    Ok((session, permit, hello.tenant))
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
            let handled = async {
                match parsed {
                    Ok(inbound) => calls::dispatch(&conn, inbound).await,
                    Err(e) => conn.out.send(&e.reply()).await,
                }
            };
            let sent = tokio::select! {
                r = handled => r,
                _ = conn.cancel.cancelled() => return,
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
                conn.out.close(CLOSE_GOING_AWAY, "server shutting down");
                return End::Closed;
            }
            _ = conn.out.gone() => return End::Gone,
            next = next_text(app, &conn.out, stream) => next,
            _ = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                if keepalive.is_some_and(|k| now >= last_seen + k) {
                    tracing::info!(session_id = %conn.session.id, "keepalive timeout");
                    conn.out.close(CLOSE_INTERNAL, "keepalive ping timeout");
                    return End::Closed;
                }
                if now >= idle_at {
                    if conn.following_any() {
                        last_request = now;
                    } else {
                        conn.out.close(CLOSE_NORMAL, "idle timeout");
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
