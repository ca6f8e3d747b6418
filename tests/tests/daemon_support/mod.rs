//! The harness of the daemon suites: a test's stack (its Redis prefix, a real `exai-daemon` on
//! port 0, real `exai-worker` processes), a daemon served in the test's own process
//! ([`local::LocalStack`], for the checks that are pure protocol), and a WebSocket client that speaks
//! the protocol.

#![allow(dead_code)]

pub mod local;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use exai_shared::keys::Keys;
use exai_shared::queue::{JobInfo, JobState, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_tests::{ChildGuard, PrefixGuard, bin_path, test_config, unique_prefix, wait_until};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The token every test daemon requires.
pub const TOKEN: &str = "test-token-0123456789";

/// How long any single expected frame may take before a test fails.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

/// A running `exai-daemon` and the address it printed.
pub struct Daemon {
    pub child: ChildGuard,
    pub addr: SocketAddr,
}

/// One test's namespace and processes.
pub struct Stack {
    pub prefix: String,
    pub redis_url: String,
    pub daemon: Daemon,
    pub daemon_env: Vec<(String, String)>,
    pub workers: Vec<ChildGuard>,
    pub queue: Queue,
    /// Deletes the test's keys when the stack is dropped, even after a failed assertion; last,
    /// so the processes are killed first.
    _keys: PrefixGuard,
}

impl Stack {
    /// A daemon with `env` on top of the test defaults, and `workers` worker processes.
    pub async fn start(test: &str, env: &[(&str, &str)], workers: usize) -> Self {
        Self::start_on(test, &exai_tests::redis_url(), env, workers).await
    }

    /// The same on a given Redis.
    pub async fn start_on(
        test: &str,
        redis_url: &str,
        env: &[(&str, &str)],
        workers: usize,
    ) -> Self {
        let prefix = unique_prefix(test);
        let mut daemon_env: Vec<(String, String)> = vec![
            ("REDIS_URL".into(), redis_url.to_owned()),
            ("EXAI_REDIS_PREFIX".into(), prefix.clone()),
            ("EXAI_WS_PORT".into(), "0".into()),
            ("EXAI_WS_TOKEN".into(), TOKEN.into()),
            ("EXAI_WS_PROGRESS_INTERVAL_SECS".into(), "0.2".into()),
        ];
        for (k, v) in env {
            daemon_env.retain(|(name, _)| name != k);
            daemon_env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let config = test_config(&prefix, &[("REDIS_URL", redis_url)]);
        let conn = RedisHandle::connect(&config.redis)
            .await
            .expect("connect to redis");
        let queue = Queue::new(
            conn,
            &Keys::new(&prefix),
            exai_shared::queue::TOOL_CALLS,
            QueuePolicy::from_config(&config.jobs),
        );
        let daemon = spawn_daemon(&daemon_env).await;
        let mut stack = Self {
            _keys: PrefixGuard::new(prefix.clone(), redis_url),
            prefix,
            redis_url: redis_url.to_owned(),
            daemon,
            daemon_env,
            workers: Vec::new(),
            queue,
        };
        for _ in 0..workers {
            stack.start_worker();
        }
        stack
    }

    /// Starts one more `exai-worker run --queues tool_calls`.
    pub fn start_worker(&mut self) {
        self.start_worker_with(&[]);
    }

    /// The same with `extra` variables in its environment.
    pub fn start_worker_with(&mut self, extra: &[(&str, &str)]) {
        let mut env = vec![
            ("REDIS_URL", self.redis_url.clone()),
            ("EXAI_REDIS_PREFIX", self.prefix.clone()),
            ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        self.workers.push(exai_tests::spawn_bin(
            "exai-worker",
            &["run", "--queues", "tool_calls", "--concurrency", "16"],
            &env,
        ));
    }

    /// Starts a new daemon (the old one must be gone) and returns its address.
    pub async fn restart_daemon(&mut self) -> SocketAddr {
        self.daemon = spawn_daemon(&self.daemon_env).await;
        self.daemon.addr
    }

    /// The daemon's WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.daemon.addr)
    }

    /// A client that said hello with the right token (and `session`, when given).
    pub async fn client(&self, session: Option<&str>) -> (Client, String) {
        let mut c = Client::connect(&self.url()).await;
        let ack = c
            .hello(json!({"op": "hello", "token": TOKEN, "session_id": session}))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
        let session = ack["session_id"].as_str().expect("session id").to_owned();
        (c, session)
    }

    /// The job, as the queue sees it.
    pub async fn job(&self, id: &str) -> Option<JobInfo> {
        self.queue.job(id).await.expect("read job")
    }

    /// Waits until the job is in `state`.
    pub async fn wait_state(&self, id: &str, state: JobState) -> bool {
        wait_until(Duration::from_secs(20), || async {
            self.job(id).await.map(|j| j.state) == Some(state)
        })
        .await
    }

    /// Stops the processes and deletes the test's keys (what dropping the stack does).
    pub async fn cleanup(self) {
        drop(self);
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

/// A WebSocket client speaking JSON frames: over TCP to a daemon process, or over an in-memory
/// pipe to a [`LocalStack`].
pub struct Client<S = MaybeTlsStream<TcpStream>> {
    pub ws: WebSocketStream<S>,
}

impl Client {
    /// Connects (no hello yet).
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Self { ws }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
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
