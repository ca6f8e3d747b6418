//! A daemon served in the test's own process: the daemon's [`App`] on the test's Redis prefix,
//! each connection an in-memory pipe served by `exai_daemon::connection`, the same code a
//! daemon process runs after the WebSocket upgrade. For the checks that are pure protocol (the
//! hello, bad requests, frame and connection limits, timeouts): no process to spawn, no port.
//! Enqueueing still needs Redis, so it is the real one.

use std::net::SocketAddr;
use std::sync::Arc;

use exai_daemon::App;
use exai_shared::Config;
use tokio_util::sync::CancellationToken;

use crate::daemon::Client;

/// The bytes a pipe buffers in each direction before a writer waits.
const PIPE_BUFFER: usize = 64 * 1024;

/// A daemon in the test's process. Dropping it shuts the daemon down (every connection is
/// closed with 1001).
pub struct LocalDaemon {
    /// The daemon's shared state.
    pub app: Arc<App>,
    shutdown: CancellationToken,
}

impl LocalDaemon {
    /// Sets up the daemon's state from `config`, as `exai-daemon` does before it listens.
    pub async fn start(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let limits = config.ws.limits.clone();
        let app = App::connect(config, limits, shutdown.clone())
            .await
            .expect("the daemon's state");
        Self { app, shutdown }
    }

    /// A new connection from 127.0.0.1, served by the daemon (no hello yet).
    pub async fn connect(&self) -> Client {
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        tokio::spawn(exai_daemon::connection::serve_upgraded(
            self.app.clone(),
            theirs,
            peer,
        ));
        Client::over(ours).await
    }
}

impl Drop for LocalDaemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
