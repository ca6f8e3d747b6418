//! A daemon served in the test's own process: the daemon's [`App`] on the test's Redis prefix,
//! each connection an in-memory pipe served by `exai_daemon::connection`, the same code a
//! daemon process runs after the WebSocket upgrade. For the checks that are pure protocol (the
//! hello, bad requests, frame and connection limits, timeouts): no process to spawn, no port.
//! Enqueueing still needs Redis, so it is the real one.

use std::net::SocketAddr;
use std::sync::Arc;

use exai_daemon::App;
use exai_shared::keys::Keys;
use exai_shared::queue::{JobInfo, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_tests::{PrefixGuard, test_config, unique_prefix};
use serde_json::json;
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::{Client, TOKEN};

/// The bytes a pipe buffers in each direction before a writer waits.
const PIPE_BUFFER: usize = 64 * 1024;

/// One test's namespace and its in-process daemon. Dropping it shuts the daemon down (every
/// connection is closed with 1001) and deletes the test's keys.
pub struct LocalStack {
    pub prefix: String,
    pub app: Arc<App>,
    pub queue: Queue,
    shutdown: CancellationToken,
    /// Deletes the test's keys when the stack is dropped, even after a failed assertion.
    _keys: PrefixGuard,
}

impl LocalStack {
    /// A daemon configured as the process stack's (token, short progress interval), with `env`
    /// on top.
    pub async fn start(test: &str, env: &[(&str, &str)]) -> Self {
        let prefix = unique_prefix(test);
        let staging = std::env::temp_dir().join("data").join("staging");
        let staging = staging.to_string_lossy().into_owned();
        let mut vars: Vec<(&str, &str)> = vec![
            ("EXAI_WS_TOKEN", TOKEN),
            ("EXAI_WS_PROGRESS_INTERVAL_SECS", "0.2"),
            ("EXAI_STAGING_DIR", &staging),
        ];
        for (k, v) in env {
            vars.retain(|(name, _)| name != k);
            vars.push((k, v));
        }
        let config = test_config(&prefix, &vars);
        let redis = RedisHandle::connect(&config.redis)
            .await
            .expect("connect to redis");
        let queue = Queue::new(
            redis,
            &Keys::new(&prefix),
            exai_shared::queue::TOOL_CALLS,
            QueuePolicy::from_config(&config.jobs),
        );
        let shutdown = CancellationToken::new();
        let limits = config.ws.limits.clone();
        let app = App::connect(config, limits, shutdown.clone())
            .await
            .expect("the daemon's state");
        Self {
            _keys: PrefixGuard::new(prefix.clone(), exai_tests::redis_url()),
            prefix,
            app,
            queue,
            shutdown,
        }
    }

    /// A new connection from 127.0.0.1, served by the daemon (no hello yet).
    pub async fn connect(&self) -> Client<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        tokio::spawn(exai_daemon::connection::serve_upgraded(
            self.app.clone(),
            theirs,
            peer,
        ));
        let ws = WebSocketStream::from_raw_socket(ours, Role::Client, None).await;
        Client { ws }
    }

    /// A client that said hello with the right token (and `session`, when given).
    pub async fn client(&self, session: Option<&str>) -> (Client<DuplexStream>, String) {
        let mut c = self.connect().await;
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

    /// Shuts the daemon down and deletes the test's keys (what dropping the stack does).
    pub async fn cleanup(self) {
        drop(self);
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
