//! The daemon as the suites see it: an `exai-daemon` process and the address it printed, and a
//! WebSocket client that speaks the protocol, to a daemon process over TCP or to a
//! [`TestStack`](crate::TestStack)'s in-process daemon over an in-memory pipe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::{ChildGuard, bin_path};

/// The token every test daemon requires.
pub const TOKEN: &str = "test-token-0123456789";

/// The resume secrets the daemons issued to this process's clients, by session id: a client
/// that says hello with a session id sends its secret, as a real client that kept it would.
static RESUME_SECRETS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, String>>> =
    std::sync::LazyLock::new(Default::default);

/// The resume secret issued with `session` to a client of this process, if any.
pub fn resume_secret(session: &str) -> Option<String> {
    RESUME_SECRETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(session)
        .cloned()
}

/// How long any single expected frame may take before a test fails.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

/// A running `exai-daemon` and the address it printed.
pub struct Daemon {
    /// The process (killed when dropped).
    pub child: ChildGuard,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Daemon {
    /// The daemon's WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

/// Spawns `exai-daemon` with a clean environment plus `env`, and reads the address it prints.
pub async fn spawn_daemon(env: &[(String, String)]) -> Daemon {
    let mut cmd = tokio::process::Command::new(bin_path("exai-daemon"));
    cmd.env_clear()
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for var in ["PATH", "HOME", "RUST_LOG"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    if std::env::var_os("TEST_LOG").is_some() {
        cmd.stderr(Stdio::inherit());
    } else {
        cmd.stderr(Stdio::null());
    }
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut child = ChildGuard(cmd.spawn().expect("spawn exai-daemon"));
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the daemon prints its address")
        .expect("read stdout")
        .expect("a first line");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .expect("an address");
    // Keep the pipe open (and drained) for the daemon's lifetime.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Daemon { child, addr }
}

/// What the client saw instead of the frame it wanted.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// The socket ended without a close frame.
    Ended,
}

/// The byte stream under a [`Client`]: a TCP connection to a daemon process or an in-memory pipe
/// to an in-process daemon.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket client speaking JSON frames: over TCP to a daemon process, or over an in-memory
/// pipe to a [`TestStack`](crate::TestStack)'s in-process daemon.
pub struct Client {
    /// The socket.
    pub ws: WebSocketStream<Box<dyn Io>>,
}

impl Client {
    /// Connects to `url` (`ws://host:port/`), no hello yet.
    pub async fn connect(url: &str) -> Self {
        let host = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("not a ws:// URL: {url}"));
        let tcp = TcpStream::connect(host)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let io: Box<dyn Io> = Box::new(tcp);
        let (ws, _) = tokio_tungstenite::client_async(url, io)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Self { ws }
    }

    /// Speaks the client side of a WebSocket over `io`, whose handshake is done.
    pub async fn over(io: impl Io + 'static) -> Self {
        let io: Box<dyn Io> = Box::new(io);
        let ws = WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        Self { ws }
    }

    /// Connects and says hello with the right token (and `session`, when given); returns the
    /// client and its session id.
    pub async fn hello_at(url: &str, session: Option<&str>) -> (Self, String) {
        Self::connect(url).await.say_hello(session).await
    }

    /// Says hello with the right token (and `session` with the resume secret this process was
    /// given for it, when given); returns the client and its session id.
    pub async fn say_hello(mut self, session: Option<&str>) -> (Self, String) {
        let secret = session.and_then(resume_secret);
        let ack = self
            .hello(json!({"op": "hello", "token": TOKEN, "session_id": session,
                          "resume_secret": secret}))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
        let session = ack["session_id"].as_str().expect("session id").to_owned();
        let secret = ack["resume_secret"].as_str().expect("resume secret");
        RESUME_SECRETS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.clone(), secret.to_owned());
        (self, session)
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// Sends a hello and returns the hello_ack.
    pub async fn hello(&mut self, hello: Value) -> Value {
        self.send(hello).await;
        self.recv().await
    }

    /// The next text frame as JSON, or what came instead.
    pub async fn next(&mut self) -> Result<Value, Seen> {
        let wait = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Ok(serde_json::from_str(t.as_str()).expect("the daemon sends JSON"));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f: CloseFrame| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        return Err(Seen::Close(code, reason));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Err(Seen::Ended),
                }
            }
        };
        tokio::time::timeout(FRAME_WAIT, wait)
            .await
            .expect("a frame within the wait")
    }

    /// The next text frame as JSON; panics on a close.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(v) => v,
            Err(seen) => panic!("expected a frame, got {seen:?}"),
        }
    }

    /// Frames until a close: returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Ok(_) => continue,
                Err(Seen::Close(code, reason)) => return (code, reason),
                Err(Seen::Ended) => panic!("the socket ended without a close frame"),
            }
        }
    }

    /// Frames until one with `op` and `request_id` (others are returned in the second value).
    pub async fn until(&mut self, op: &str, request_id: &str) -> (Value, Vec<Value>) {
        let mut others = Vec::new();
        loop {
            let v = self.recv().await;
            if v["op"] == op && v["request_id"] == request_id {
                return (v, others);
            }
            others.push(v);
        }
    }

    /// A streaming call: sends it, returns the `call_tool_res` and every frame before it.
    pub async fn call(&mut self, request_id: &str, tool: &str, args: Value) -> (Value, Vec<Value>) {
        self.send(
            json!({"op": "call_tool", "request_id": request_id, "name": tool, "arguments": args}),
        )
        .await;
        self.until("call_tool_res", request_id).await
    }

    /// Sends `{op, request_id}` (plus `extra` fields) and returns the next frame.
    pub async fn op(&mut self, op: &str, request_id: &str) -> Value {
        self.send(json!({"op": op, "request_id": request_id})).await;
        self.recv().await
    }
}

/// The text of a `call_tool_res`, checking that `outputs`, `result` and `text` agree.
pub fn result_text(res: &Value) -> String {
    assert!(res.get("error").is_none(), "the call failed: {res}");
    let outputs = res["outputs"].as_array().expect("outputs");
    assert_eq!(res["result"], res["outputs"], "result repeats outputs");
    let joined = outputs
        .iter()
        .map(|o| {
            assert_eq!(o["type"], "text");
            o["text"].as_str().unwrap().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(text) = res.get("text") {
        assert_eq!(text.as_str().unwrap(), joined);
    }
    joined
}

/// The echoed arguments of a `test_echo` result.
pub fn echoed(res: &Value) -> Value {
    serde_json::from_str(&result_text(res)).expect("test_echo returns JSON")
}
