//! The sending side of a connection: a queue of frames to the connection's writer task, shared
//! by the request handler and every call task of the connection, so any number of them can send
//! at once. The queue is bounded in bytes (`EXAI_WS_OUTBOX_MAX_BYTES`): a frame takes its size
//! from a byte budget and gives it back once written, so a full queue makes senders wait
//! (backpressure on a slow reader) and a client that never reads holds at most the budget. A
//! queue whose writer is gone fails with [`Closed`], waiting senders included.

use std::sync::Arc;

use exai_shared::protocol::ServerMessage;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::metrics::Metrics;

/// What the writer is asked to send.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A text frame, with its share of the byte budget (given back when the frame is written).
    Text(String, OwnedSemaphorePermit),
    /// A close frame; the writer stops after it.
    Close(u16, String),
}

/// The sending side of a connection, shared by the read loop and the call tasks.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Outbound>,
    budget: Arc<Semaphore>,
    max_bytes: u32,
    metrics: Metrics,
}

/// The connection is gone: nothing more can be sent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// The receiving end of an outbox, drained by the connection's writer. Dropping it (the writer
/// ends) fails every sender, waiting ones included.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<Outbound>,
    budget: Arc<Semaphore>,
}

impl Inbox {
    /// The next frame to write; `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        self.rx.recv().await
    }

    /// The next frame if one is queued already, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.budget.close();
    }
}

impl Outbox {
    /// A new outbox holding at most `max_bytes` of unwritten frames, counting the frames it
    /// sends in `metrics`, and the receiving end its writer drains.
    pub(crate) fn new(max_bytes: usize, metrics: Metrics) -> (Self, Inbox) {
        let max_bytes = u32::try_from(max_bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        let budget = Arc::new(Semaphore::new(max_bytes as usize));
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                tx,
                budget: budget.clone(),
                max_bytes,
                metrics,
            },
            Inbox { rx, budget },
        )
    }

    /// Queues a frame; fails only when the connection is gone.
    pub(crate) async fn send(&self, msg: &ServerMessage) -> Result<(), Closed> {
        self.send_text(msg.to_json()).await
    }

    /// Queues an already serialized frame, once the byte budget has room for it (a frame
    /// larger than the whole budget waits for all of it).
    pub(crate) async fn send_text(&self, text: String) -> Result<(), Closed> {
        let cost = u32::try_from(text.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Outbound::Text(text, permit))
            .map_err(|_| Closed)?;
        self.metrics.frame_out();
        Ok(())
    }

    /// Resolves once the writer is gone (it failed, timed out or stopped after a close).
    pub(crate) async fn gone(&self) {
        self.tx.closed().await;
    }

    /// Asks the writer to send a close frame with `code` and `reason`, and then stop. Never
    /// waits: a close takes no budget.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        let _ = self.tx.send(Outbound::Close(code, reason.to_owned()));
    }
}
