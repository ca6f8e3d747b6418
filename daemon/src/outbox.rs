//! The sending side of a connection: a bounded queue of frames to the connection's writer task,
//! shared by the request handler and every call task of the connection, so any number of them
//! can send at once. A full queue makes senders wait (backpressure on a slow reader); a queue
//! whose writer is gone fails with [`Closed`].

use exai_shared::protocol::ServerMessage;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Frames queued for the writer before senders wait (backpressure on a slow reader).
const OUTBOX_CAPACITY: usize = 1024;

/// What the writer is asked to send.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A text frame.
    Text(String),
    /// A close frame; the writer stops after it.
    Close(u16, String),
}

/// The sending side of a connection, shared by the read loop and the call tasks.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outbound>,
    metrics: Metrics,
}

/// The connection is gone: nothing more can be sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

impl Outbox {
    /// A new outbox, counting the frames it sends in `metrics`, and the receiving end its
    /// writer drains.
    pub(crate) fn new(metrics: Metrics) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        (Self { tx, metrics }, rx)
    }

    /// Queues a frame; fails only when the connection is gone.
    pub(crate) async fn send(&self, msg: &ServerMessage) -> Result<(), Closed> {
        self.send_text(msg.to_json()).await
    }

    /// Queues an already serialized frame.
    pub(crate) async fn send_text(&self, text: String) -> Result<(), Closed> {
        self.tx
            .send(Outbound::Text(text))
            .await
            .map_err(|_| Closed)?;
        self.metrics.frame_out();
        Ok(())
    }

    /// Asks the writer to send a close frame with `code` and `reason`, and then stop.
    pub(crate) async fn close(&self, code: u16, reason: &str) {
        let _ = self.tx.send(Outbound::Close(code, reason.to_owned())).await;
    }
}
