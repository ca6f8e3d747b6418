//! The daemon's front door against sockets that try to exhaust it, each attack against a real
//! `exai-daemon` process, real Redis and real TCP sockets:
//!
//! - silent sockets: authenticated clients that never read and send pings with huge ids and
//!   requests with big replies — the daemon closes them within its keepalive and write
//!   timeouts, its memory and descriptors come back near their baseline, and the per-address
//!   limit holds while they are open; an id over 256 bytes is refused, not echoed;
//! - before the hello: a big first frame is refused with 1009 without being read whole; sockets
//!   that never say hello cannot lock a client of the same address out;
//! - plain TCP: idle connections and slow request heads are closed by the header timeout, and
//!   TCP connections count against `EXAI_WS_MAX_CONNECTIONS` from the accept.

use std::net::SocketAddr;
use std::time::Duration;

use exai_tests::{
    ChildGuard, PrefixGuard, free_port, redis_url, spawn_bin, unique_prefix, wait_until,
};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

const TOKEN: &str = "front-door-sockets-token-0123456789";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A daemon process of the test's own, on a port of its own, with its Redis prefix removed
/// when the test ends.
struct Daemon {
    child: ChildGuard,
    addr: SocketAddr,
    _prefix: PrefixGuard,
}

impl Daemon {
    async fn start(test: &str, env: &[(&str, &str)]) -> Self {
        let prefix = unique_prefix(test);
        let port = free_port();
        let mut vars: Vec<(&str, String)> = vec![
            ("REDIS_URL", redis_url()),
            ("EXAI_REDIS_PREFIX", prefix.clone()),
            ("EXAI_WS_PORT", port.to_string()),
            ("EXAI_WS_TOKEN", TOKEN.to_owned()),
        ];
        vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let child = spawn_bin("exai-daemon", &[], &vars);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let daemon = Self {
            child,
            addr,
            _prefix: PrefixGuard::new(prefix, redis_url()),
        };
        let up = wait_until(Duration::from_secs(20), || async {
            daemon.get("/health").await.is_some()
        })
        .await;
        assert!(up, "the daemon did not come up on {addr}");
        daemon
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// One `GET` on a connection of its own, closed afterwards: the status line, or `None` when
    /// the connection was refused or closed without an answer.
    async fn get(&self, path: &str) -> Option<String> {
        let mut tcp = TcpStream::connect(self.addr).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&answer);
        text.lines()
            .next()
            .filter(|l| l.starts_with("HTTP/"))
            .map(str::to_owned)
    }

    /// The daemon's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.pid()))
            .expect("read the daemon's status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The daemon's open descriptors.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.pid()))
            .expect("list the daemon's descriptors")
            .count()
    }
}

/// Connects and says hello; returns the socket and the ack.
async fn hello(url: &str) -> (Ws, Value) {
    let (mut ws, _) = connect_async(url).await.expect("connect");
    ws.send(Message::Text(
        json!({"op": "hello", "token": TOKEN}).to_string().into(),
    ))
    .await
    .expect("send hello");
    let ack = next_json(&mut ws).await;
    (ws, ack)
}

/// The next text frame as JSON; panics on anything else.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("json"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the socket closes: the close code, or `None` when it ended without a close
/// frame.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    ended.expect("the socket closes in time")
}

#[tokio::test]
async fn an_id_over_256_bytes_is_refused_and_not_echoed() {
    let daemon = Daemon::start("fds-id", &[]).await;
    let (mut ws, ack) = hello(&daemon.url()).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let long = "i".repeat(300);
    ws.send(Message::Text(
        json!({"op": "ping", "id": long}).to_string().into(),
    ))
    .await
    .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["error"]["code"], "VALIDATION_ERROR", "{reply}");
    assert!(!reply.to_string().contains(&long), "{reply}");
    ws.send(Message::Text(
        json!({"op": "ping", "request_id": long}).to_string().into(),
    ))
    .await
    .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["error"]["code"], "VALIDATION_ERROR", "{reply}");
    assert!(reply.get("request_id").is_none(), "{reply}");
}

#[tokio::test]
async fn silent_sockets_are_closed_and_give_back_memory_descriptors_and_slots() {
    const SOCKETS: usize = 4;
    const PINGS: usize = 8;
    const MAX_BYTES: usize = 4 * 1024 * 1024;
    let daemon = Daemon::start(
        "fds-silent",
        &[
            ("EXAI_WS_MAX_BYTES", &MAX_BYTES.to_string()),
            ("EXAI_WS_MAX_CONNECTIONS_PER_IP", &SOCKETS.to_string()),
            ("EXAI_WS_PING_INTERVAL", "1"),
            ("EXAI_WS_PING_TIMEOUT", "1"),
            ("EXAI_WS_WRITE_TIMEOUT_SECS", "1"),
            ("EXAI_WS_OUTBOX_MAX_BYTES", "1048576"),
        ],
    )
    .await;
    // The baseline, after one ordinary client came and went.
    let (mut warm, ack) = hello(&daemon.url()).await;
    assert_eq!(ack["ok"], true, "{ack}");
    warm.close(None).await.unwrap();
    let _ = close_code(&mut warm).await;
    drop(warm);
    let fds_before = daemon.fds();
    let rss_before = daemon.rss_kib();

    // Each socket sends pings with ids just under the frame limit, then requests with
    // replies of a few KiB, and never reads.
    let id = "x".repeat(MAX_BYTES - 64);
    let ping = json!({"op": "ping", "id": id}).to_string();
    let list = json!({"op": "list_tools"}).to_string();
    let mut attackers = Vec::new();
    for _ in 0..SOCKETS {
        let (mut ws, ack) = hello(&daemon.url()).await;
        assert_eq!(ack["ok"], true, "{ack}");
        let ping = ping.clone();
        let list = list.clone();
        attackers.push(tokio::spawn(async move {
            for _ in 0..PINGS {
                if ws.send(Message::Text(ping.clone().into())).await.is_err() {
                    return ws;
                }
            }
            for _ in 0..5_000 {
                if ws.send(Message::Text(list.clone().into())).await.is_err() {
                    return ws;
                }
            }
            ws
        }));
    }
    // While they are open, the per-address limit holds.
    let (mut extra, _) = connect_async(&daemon.url()).await.expect("connect");
    assert_eq!(close_code(&mut extra).await, Some(1008));

    // The daemon closes them (keepalive and write timeouts) and gives everything back.
    let released = wait_until(Duration::from_secs(60), || async {
        daemon.fds() <= fds_before
    })
    .await;
    assert!(
        released,
        "descriptors: {} before, {} now",
        fds_before,
        daemon.fds()
    );
    let margin_kib = 64 * 1024;
    let rss_back = wait_until(Duration::from_secs(30), || async {
        daemon.rss_kib() <= rss_before + margin_kib
    })
    .await;
    assert!(
        rss_back,
        "RSS: {rss_before} KiB before, {} KiB now",
        daemon.rss_kib()
    );
    for attacker in attackers {
        attacker.abort();
        let _ = attacker.await;
    }
    // The slots are free again.
    let (_ws, ack) = hello(&daemon.url()).await;
    assert_eq!(ack["ok"], true, "{ack}");
}

#[tokio::test]
async fn a_big_first_frame_is_refused_with_1009_unread() {
    let daemon = Daemon::start("fds-first", &[]).await;
    let rss_before = daemon.rss_kib();
    let pad = "p".repeat(16 * 1024 * 1024);
    let (mut ws, _) = connect_async(&daemon.url()).await.expect("connect");
    let frame = json!({"op": "hello", "token": TOKEN, "pad": pad}).to_string();
    // The daemon may close while the frame is still being sent.
    let _ = ws.send(Message::Text(frame.into())).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));
    // Not buffered: the daemon's memory did not grow by the frame's size.
    let grown_kib = daemon.rss_kib().saturating_sub(rss_before);
    assert!(grown_kib < 8 * 1024, "RSS grew by {grown_kib} KiB");
    // A small hello still works.
    let (_ws, ack) = hello(&daemon.url()).await;
    assert_eq!(ack["ok"], true, "{ack}");
}

#[tokio::test]
async fn sockets_that_never_say_hello_cannot_lock_out_a_client() {
    let daemon = Daemon::start(
        "fds-pending",
        &[
            ("EXAI_WS_MAX_CONNECTIONS_PER_IP", "10"),
            ("EXAI_WS_MAX_PENDING_HELLO_PER_IP", "4"),
        ],
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        let (ws, _) = connect_async(&daemon.url()).await.expect("connect");
        silent.push(ws);
    }
    let (_ws, ack) = hello(&daemon.url()).await;
    assert_eq!(ack["ok"], true, "{ack}");
    // The oldest silent sockets were pushed out with 1008.
    assert_eq!(close_code(&mut silent[0]).await, Some(1008));
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed() {
    let daemon = Daemon::start("fds-http", &[("EXAI_HTTP_HEADER_TIMEOUT_SECS", "1")]).await;
    let mut idle = TcpStream::connect(daemon.addr).await.unwrap();
    let mut slow = TcpStream::connect(daemon.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    for (name, tcp) in [("idle", &mut idle), ("slow", &mut slow)] {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the {name} connection is still open");
    }
}

#[tokio::test]
async fn tcp_connections_count_against_the_connection_limit() {
    let daemon = Daemon::start(
        "fds-tcp",
        &[
            ("EXAI_WS_MAX_CONNECTIONS", "3"),
            ("EXAI_HTTP_HEADER_TIMEOUT_SECS", "600"),
        ],
    )
    .await;
    // Three keep-alive connections, each served once, hold every slot.
    let mut held = Vec::new();
    while held.len() < 3 {
        let mut tcp = TcpStream::connect(daemon.addr).await.unwrap();
        let _ = tcp
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        let mut buf = [0u8; 64];
        let served = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
        // A slot still held by a closing readiness probe refuses it: try again.
        if matches!(served, Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200")) {
            held.push(tcp);
        }
    }
    let refused = wait_until(Duration::from_secs(20), || async {
        daemon.get("/health").await.is_none()
    })
    .await;
    assert!(refused, "a fourth connection was served");
    held.pop();
    let served = wait_until(Duration::from_secs(20), || async {
        daemon.get("/health").await.is_some()
    })
    .await;
    assert!(served, "no connection served after one slot was freed");
}
